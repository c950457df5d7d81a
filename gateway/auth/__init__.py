"""Who is connecting: TLS termination (the transport seam), the registry view, x509 authentication.

The authenticator chain has one member today (X.509 client certificates); custom authorizers (JWT) and
SigV4 would add members that also return a Principal or an AuthRefusal.
"""

from gateway.auth.tls import HandshakeFailed, PeerTLS, StdlibTLSAcceptor, TLSAcceptor, server_context
from gateway.auth.view import AuthView, CertState, empty_view
from gateway.auth.x509 import AuthRefusal, Principal, X509Authenticator, certificate_id_of

__all__ = [
    "AuthRefusal",
    "AuthView",
    "CertState",
    "HandshakeFailed",
    "PeerTLS",
    "Principal",
    "StdlibTLSAcceptor",
    "TLSAcceptor",
    "X509Authenticator",
    "certificate_id_of",
    "empty_view",
    "server_context",
]
