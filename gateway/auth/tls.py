"""Device-side TLS: the server context and the transport seam that turns an accepted socket into a TLS stream.

One server SSLContext at a time: TLS 1.2+, the gateway's server certificate, client certificate REQUIRED and
chain-verified by OpenSSL against every CA in the registry (whatever its status: the status is checked after
the handshake so a refusal is logged with the certificate id). The context is rebuilt only when the CA set
changes; a connection uses the context current when it was accepted.

``TLSAcceptor`` is the seam: ``accept(sock, protocol_factory)`` returns the transport wired to the protocol
and what the handshake established (peer certificate, SNI, version). The session code never sees which
implementation ran the handshake: stdlib ssl on the event loop (``StdlibTLSAcceptor``, here), or pyOpenSSL over
memory BIOs (``gateway.auth.tls_engine``, the default); ``make_acceptor`` picks one by name (``tls_engine``).

What the shell needs of the returned transport: ``writelines``, ``close`` (flush, then close_notify),
``abort``, ``is_closing``, ``pause_reading`` / ``resume_reading``; and it calls the protocol's
``data_received`` (plaintext), ``connection_lost``, ``pause_writing`` / ``resume_writing``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class PeerTLS:
    """What the handshake established about the peer."""

    der: bytes
    server_name: str | None
    version: str | None
    cipher: str | None
    alpn: str | None = None


class HandshakeFailed(Exception):
    """The TLS handshake did not complete; ``key`` is the metric label, ``reason`` the log text."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


class TLSAcceptor(Protocol):
    """The device TLS transport seam."""

    def set_trust(self, ca_pems: Sequence[str]) -> bool:
        """Trust exactly these CA certificates for new connections; True when the context was rebuilt."""

    async def accept(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol]
                     ) -> tuple[asyncio.Transport, asyncio.Protocol, PeerTLS]:
        """Run the server handshake on an accepted socket (raises HandshakeFailed)."""


def _sni(sslobj, server_name: str | None, _ctx) -> None:
    # Remember the SNI on the connection's SSL object; a client that sends none is accepted (and logged so).
    try:
        sslobj.iotgate_sni = server_name
    except AttributeError:  # pragma: no cover - an SSL object without a __dict__
        pass


# The device listener (X.509) negotiates AWS IoT's ALPN for MQTT with a client certificate on port 443, when the
# device offers it (the AWS IoT Device SDKs do on 443). A device that offers no ALPN, or others, still connects:
# the handshake goes on without one, as on 8883.
DEVICE_ALPN = ("x-amzn-mqtt-ca",)

# The token listener (custom authorizers, SigV4 over WebSocket) negotiates these, as AWS IoT does on 443: ``mqtt``
# for MQTT with a custom authorizer, ``http/1.1`` (or no ALPN) for MQTT over WebSocket.
TOKEN_ALPN = ("mqtt", "http/1.1")


def server_context(cert: Path, key: Path, ca_pems: Sequence[str], *, client_certificates: bool = True,
                   alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """The device-facing context. ``client_certificates=False`` is the token listener's: it asks for no client
    certificate because its devices authenticate by token or SigV4 (each checked before any MQTT flows)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED if client_certificates else ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    cadata = "".join(pem if pem.endswith("\n") else pem + "\n" for pem in ca_pems)
    if cadata and client_certificates:
        ctx.load_verify_locations(cadata=cadata)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    ctx.sni_callback = _sni
    return ctx


def classify_reason(reason: str, verify_message: str | None = None, peer: str = "client") -> HandshakeFailed:
    """A handshake failure from OpenSSL's reason (its macro name, e.g. ``CERTIFICATE_VERIFY_FAILED``) and, for a
    refused chain, the verification's message; shared by both engines so they log the same keys. ``peer`` names
    whose certificate was verified: the device's ("client") or, on the upstream, the broker's."""
    if reason == "CERTIFICATE_VERIFY_FAILED" or verify_message:
        detail = verify_message or reason
        key = "certificate_expired" if "expired" in detail else "certificate_verify_failed"
        return HandshakeFailed(key, f"{peer} certificate refused: {detail}")
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"):
        return HandshakeFailed("no_client_certificate", "no client certificate presented")
    if reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"):
        return HandshakeFailed("tls_version", f"TLS version refused ({reason}); TLS 1.2 or 1.3 is required")
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
                  "PACKET_LENGTH_TOO_LONG"):
        return HandshakeFailed("not_tls", f"not a TLS handshake ({reason}): plaintext on the TLS port?")
    return HandshakeFailed("handshake_failed", f"TLS handshake failed: {reason}")


def classify(exc: BaseException) -> HandshakeFailed:
    """A stdlib handshake failure as (metric label, reason text)."""
    if isinstance(exc, HandshakeFailed):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return classify_reason("CERTIFICATE_VERIFY_FAILED", exc.verify_message or exc.reason or str(exc))
    if isinstance(exc, ssl.SSLError):
        return classify_reason(exc.reason or str(exc))
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "taking longer" in str(exc):
        return HandshakeFailed("handshake_timeout", "TLS handshake did not complete within the deadline")
    if isinstance(exc, (ConnectionError, EOFError)):
        return HandshakeFailed("handshake_aborted", "connection closed during the TLS handshake")
    return HandshakeFailed("handshake_failed", f"TLS handshake failed: {type(exc).__name__}: {exc}")


class StdlibTLSAcceptor:
    """uvloop/asyncio + stdlib ssl: ``connect_accepted_socket`` with the current server context."""

    name = "stdlib"

    def __init__(self, cert: Path, key: Path, ca_pems: Sequence[str] = (), *, handshake_timeout: float = 10.0,
                 client_certificates: bool = True, alpn: Sequence[str] = ()) -> None:
        self.cert = Path(cert)
        self.key = Path(key)
        self.handshake_timeout = handshake_timeout
        self.client_certificates = client_certificates
        self.alpn = tuple(alpn)
        self._cas: tuple[str, ...] = tuple(ca_pems) if client_certificates else ()
        self.context = self._context(self._cas)
        self.rebuilds = 0

    def _context(self, cas: tuple[str, ...]) -> ssl.SSLContext:
        return server_context(self.cert, self.key, cas, client_certificates=self.client_certificates,
                              alpn=self.alpn)

    def set_trust(self, ca_pems: Sequence[str]) -> bool:
        cas = tuple(ca_pems)
        if not self.client_certificates or cas == self._cas:
            return False
        self.context = self._context(cas)
        self._cas = cas
        self.rebuilds += 1
        return True

    async def accept(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol]
                     ) -> tuple[asyncio.Transport, asyncio.Protocol, PeerTLS]:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.connect_accepted_socket(
                protocol_factory, sock, ssl=self.context, ssl_handshake_timeout=self.handshake_timeout)
        except asyncio.CancelledError:
            sock.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - every handshake failure is classified and logged
            sock.close()
            raise classify(exc) from None
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der and self.client_certificates:  # CERT_REQUIRED makes this unreachable; never accept one without
            transport.abort()
            raise HandshakeFailed("no_client_certificate", "no client certificate presented")
        cipher = sslobj.cipher()
        return transport, protocol, PeerTLS(der or b"", getattr(sslobj, "iotgate_sni", None), sslobj.version(),
                                            cipher[0] if cipher else None, sslobj.selected_alpn_protocol())


#: The engines ``tls_engine`` (gateway config) chooses from; pyOpenSSL is the default (gateway.auth.tls_engine).
TLS_ENGINES = ("pyopenssl", "stdlib")


def make_acceptor(engine: str, cert: Path, key: Path, ca_pems: Sequence[str] = (), **options) -> TLSAcceptor:
    """The acceptor of ``engine`` ("pyopenssl" or "stdlib"), with StdlibTLSAcceptor's options."""
    if engine == "stdlib":
        return StdlibTLSAcceptor(cert, key, ca_pems, **options)
    if engine == "pyopenssl":
        from gateway.auth.tls_engine import OpenSSLTLSAcceptor

        return OpenSSLTLSAcceptor(cert, key, ca_pems, **options)
    raise ValueError(f"unknown TLS engine {engine!r}: choose {' or '.join(TLS_ENGINES)}")
