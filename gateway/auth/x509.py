"""X.509 authentication: the peer certificate (already chain-verified by OpenSSL) -> a Principal or a refusal.

The certificate id is AWS IoT's: SHA-256 of the DER. Only an ACTIVE certificate whose CA is ACTIVE is
accepted; its attached policies are compiled once for its identity and shared by its connections.
"""

from __future__ import annotations

import dataclasses
import hashlib

from cryptography import x509

from gateway.auth.view import AuthView, CertState, attached_documents
from gateway.mqtt import ReasonCode
from gateway.policy import CompiledPolicies, Identity, compile_policies


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Principal:
    """An authenticated identity with its compiled policies: a certificate (``kind`` "x509"), or a token checked by
    a custom authorizer ("authorizer") or a SigV4 access key ("sigv4"), which have no certificate id. ``state`` is
    the fingerprint of the registry rows it was built from; ``log`` the extra access-log fields naming it
    (authorizer, principal, access key); ``disconnect_after`` / ``refresh_after`` (seconds from connect) are a
    custom authorizer's disconnectAfterInSeconds / refreshAfterInSeconds."""

    certificate_id: str | None
    ca_id: str | None
    things: tuple[str, ...]
    compiled: CompiledPolicies
    state: CertState | tuple
    kind: str = "x509"
    log: tuple[tuple[str, str], ...] = ()
    disconnect_after: float | None = None
    refresh_after: float | None = None

    def thing_for(self, client_id: str | None) -> str | None:
        """The thing a connection speaks for: the client id when it names an attached thing, else the only one."""
        if client_id is not None and client_id in self.things:
            return client_id
        return self.things[0] if len(self.things) == 1 else None


@dataclasses.dataclass(frozen=True, slots=True)
class AuthRefusal:
    """Why a principal may not connect; ``key`` is the metric label, ``reason`` the log text."""

    certificate_id: str | None
    key: str
    reason: str
    code: ReasonCode = ReasonCode.NOT_AUTHORIZED
    log: tuple[tuple[str, str], ...] = ()  # as Principal.log: which authorizer or access key refused


_STATUS_KEYS = {
    "REVOKED": "certificate_revoked",
    "INACTIVE": "certificate_inactive",
    "PENDING_ACTIVATION": "certificate_pending_activation",
    "PENDING_TRANSFER": "certificate_pending_transfer",
    "REGISTER_INACTIVE": "certificate_register_inactive",
}


def certificate_id_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


class X509Authenticator:
    """Decides who a verified peer certificate is. Caches are bounded (parsed certificates, principals)."""

    def __init__(self, *, region: str = "us-east-1", account: str = "123456789012", cache_size: int = 4096) -> None:
        self.region = region
        self.account = account
        self.cache_size = cache_size
        self._certs: dict[str, x509.Certificate] = {}
        self._principals: dict[str, Principal] = {}

    def authenticate(self, der: bytes, view: AuthView) -> Principal | AuthRefusal:
        cert_id = certificate_id_of(der)
        return self.evaluate(cert_id, view, der)

    def evaluate(self, cert_id: str, view: AuthView, der: bytes | None = None) -> Principal | AuthRefusal:
        """The principal of ``cert_id`` under ``view`` (``der`` is needed the first time a certificate is seen)."""
        state = view.state(cert_id)
        if state is None:
            return AuthRefusal(cert_id, "certificate_not_registered",
                               "certificate is not registered (chain valid, but unknown to the registry)")
        if state.status != "ACTIVE":
            return AuthRefusal(cert_id, _STATUS_KEYS.get(state.status, "certificate_not_active"),
                               f"certificate is {state.status}")
        if state.ca_id is not None and state.ca_status != "ACTIVE":
            shown = state.ca_status or "not registered"
            return AuthRefusal(cert_id, "ca_not_active", f"its CA {state.ca_id} is {shown}")
        cached = self._principals.get(cert_id)
        if cached is not None and cached.state == state:
            return cached
        docs, problems = attached_documents(view, cert_id)
        if problems:
            return AuthRefusal(cert_id, "policy_invalid", "; ".join(problems))
        cert = self._certificate(cert_id, der)
        if cert is None:
            return AuthRefusal(cert_id, "certificate_unreadable", "certificate could not be read")
        infos = view.thing_infos(cert_id)
        identity = Identity.from_certificate(cert, things=infos)
        compiled = compile_policies(docs, identity, self.region, self.account)
        principal = Principal(cert_id, state.ca_id, tuple(t.name for t in infos), compiled, state)
        self._remember(self._principals, cert_id, principal)
        return principal

    def _certificate(self, cert_id: str, der: bytes | None) -> x509.Certificate | None:
        cert = self._certs.get(cert_id)
        if cert is None and der is not None:
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError:
                return None
            self._remember(self._certs, cert_id, cert)
        return cert

    def _remember(self, table: dict, key: str, value) -> None:
        if key not in table and len(table) >= self.cache_size:
            table.pop(next(iter(table)))
        table[key] = value
