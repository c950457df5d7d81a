"""The endpoint's side of TLS: one context per server profile, and a handshake that records what the device did.

Implementation choice: the Python standard library's ``ssl`` over memory BIOs (the same OpenSSL the gateway
terminates TLS with), driven from a plain non-blocking socket. Every byte the device sends passes through this
module before OpenSSL sees it, so the ClientHello is parsed here (:mod:`gateway.qualify.clienthello`) and the
records the endpoint sends are measured here (:class:`~gateway.qualify.clienthello.RecordScanner`); OpenSSL
reports the rest (a received alert is a distinct reason from the endpoint's own refusals). stdlib ``ssl`` can also
serve TLS 1.0/1.1 only (security level 0 on that one context), so no second TLS stack (pyOpenSSL) is needed.

Every context requires a client certificate verified against the registered CAs, as the gateway does; TLS session
tickets are off (AWS IoT Core does not support them), so every connection runs a full handshake.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from certs.keys import write_file, write_private_file
from gateway.qualify.clienthello import HelloReader, NotTLS, RecordScanner
from gateway.qualify.model import Handshake, HandshakeOutcome, alert_name
from gateway.qualify.profiles import ServerProfile
from gateway.qualify.verdict import Timeline

__all__ = ["ContextFactory", "TLSStream"]

_READ = 65536
_APPLICATION_DATA = 23

_SERVER_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the device presented no client certificate",
    "CERTIFICATE_REQUIRED": "the device presented no client certificate",
    "NO_SHARED_CIPHER": "no cipher suite in common",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common",
    "NO_PROTOCOLS_AVAILABLE": "no TLS version in common",
    "VERSION_TOO_LOW": "the device's TLS version is too low",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no signature algorithm in common",
    "NO_SUITABLE_KEY_SHARE": "no key exchange group in common",
}


class ContextFactory:
    """One server SSLContext per profile, built on first use; the files they load live in ``directory`` (created
    0700, keys 0600) and are removed by :meth:`cleanup`."""

    def __init__(self, directory: Path, ca_pems: Sequence[str]) -> None:
        if not ca_pems:
            raise ValueError("no CA to verify devices against: register the CA that issued the device's "
                             "certificate (`iotgate ca register` or `iotgate pki init`)")
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.cadata = "".join(p if p.endswith("\n") else p + "\n" for p in ca_pems)
        self._contexts: dict[int, ssl.SSLContext] = {}
        self._files: list[Path] = []

    def context(self, profile: ServerProfile) -> ssl.SSLContext:
        ctx = self._contexts.get(id(profile))
        if ctx is not None:
            return ctx
        cert = self.directory / f"{profile.name}-{len(self._contexts)}.pem"
        key = self.directory / f"{profile.name}-{len(self._contexts)}.key"
        write_file(cert, profile.chain_pem, mode=0o600)
        write_private_file(key, profile.key_pem)
        self._files += [cert, key]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if profile.legacy_tls:
            with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: this context exists to offer them
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert), str(key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.cadata)
        ctx.num_tickets = 0
        ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
        ctx.set_alpn_protocols(["x-amzn-mqtt-ca", "mqtt"])
        self._contexts[id(profile)] = ctx
        return ctx

    def cleanup(self) -> None:
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files.clear()
        self._contexts.clear()
        try:
            self.directory.rmdir()
        except OSError:
            pass


def _server_reason(exc: ssl.SSLError) -> tuple[str, str]:
    reason = exc.reason or type(exc).__name__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return reason, f"the device's certificate was refused: {exc.verify_message or reason}"
    return reason, _SERVER_REASONS.get(reason, f"TLS error {reason}")


class TLSStream:
    """One accepted connection: the server handshake, then plaintext reads and writes.

    The stream never raises for what the device does: :meth:`handshake` returns a :class:`Handshake`, :meth:`read`
    returns ``b""`` once the device is gone (``closed_at`` says when, ``close_detail`` how).
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, timeline: Timeline, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.timeline = timeline
        self.clock = clock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._hello = HelloReader()
        self._sent = RecordScanner()
        self.records_sent: list[tuple[int, int]] = []
        self.bytes_sent = 0
        self.closed_at: float | None = None
        self.close_detail = ""
        self._closed = False
        self._eof = False

    # ------------------------------------------------------------------ raw I/O

    async def _recv(self, timeout: float | None) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                data = await loop.sock_recv(self.sock, _READ)
        except (ConnectionError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                raise
            self._mark_closed(f"connection reset ({type(exc).__name__})")
            return b""
        if not data:
            self._mark_closed("the device closed the connection")
        return data

    async def _flush(self) -> int:
        data = self._out.read() if self._out.pending else b""
        if not data or self._closed:
            return 0
        self.records_sent += self._sent.feed(data)
        self.bytes_sent += len(data)
        try:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)
        except (ConnectionError, OSError):
            self._mark_closed("the connection broke while the endpoint was writing")
        return len(data)

    def _mark_closed(self, detail: str) -> None:
        if self.closed_at is None:
            self.closed_at = self.clock()
            self.close_detail = detail
        self._eof = True

    # ------------------------------------------------------------------ handshake

    async def handshake(self, timeout: float) -> Handshake:
        started = self.clock()
        deadline = started + timeout
        flight = False
        hello = None
        tl = self.timeline
        while True:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                sent = await self._flush()
                if sent and hello is not None and not flight:
                    flight = True
                    tl.endpoint(f"answered the ClientHello ({sent} bytes: ServerHello, certificate ...)")
                left = deadline - self.clock()
                if left <= 0:
                    return self._result(HandshakeOutcome.TIMEOUT, started, hello, flight,
                                        detail=f"no answer from the device within {timeout:g} s"
                                        + (" after the endpoint's certificate" if flight else ""))
                try:
                    data = await self._recv(left)
                except TimeoutError:
                    continue
                if not data:
                    if hello is None:
                        return self._result(HandshakeOutcome.NO_HELLO, started, hello, flight,
                                            detail="closed before a ClientHello")
                    if flight:
                        tl.device(f"closed the connection without a TLS alert ({self.close_detail})")
                        return self._result(HandshakeOutcome.DEVICE_CLOSED, started, hello, flight,
                                            detail=self.close_detail)
                    self._in.write_eof()
                    continue
                if not self._hello.done:
                    try:
                        hello = self._hello.feed(data)
                    except NotTLS as exc:
                        tl.device(f"sent bytes that are not TLS: {exc}")
                        return self._result(HandshakeOutcome.NOT_TLS, started, None, False, detail=str(exc))
                    if hello is not None:
                        tl.device(f"ClientHello: {hello.describe()}")
                self._in.write(data)
                continue
            except ssl.SSLZeroReturnError:
                await self._flush()
                tl.device("sent close_notify and closed during the handshake (no error alert)")
                return self._result(HandshakeOutcome.DEVICE_CLOSED if flight else HandshakeOutcome.NO_HELLO,
                                    started, hello, flight, detail="close_notify during the handshake")
            except ssl.SSLEOFError:
                await self._flush()
                tl.device("closed the connection during the handshake without a TLS alert")
                return self._result(HandshakeOutcome.DEVICE_CLOSED if flight else HandshakeOutcome.NO_HELLO,
                                    started, hello, flight, detail="closed during the handshake")
            except ssl.SSLError as exc:
                await self._flush()  # the endpoint's own alert, if any
                alert = alert_name(exc.reason)
                if alert is not None:
                    tl.device(f"sent TLS alert {alert} and stopped the handshake")
                    return self._result(HandshakeOutcome.DEVICE_ALERT, started, hello, flight, alert=alert,
                                        detail=f"TLS alert {alert}")
                reason, text = _server_reason(exc)
                tl.endpoint(f"refused the handshake: {text}")
                return self._result(HandshakeOutcome.SERVER_REFUSED, started, hello, flight, reason=reason,
                                    detail=text)
            break
        await self._flush()
        version = self._ssl.version()
        cipher = self._ssl.cipher()
        der = self._ssl.getpeercert(binary_form=True)
        self.records_sent.clear()
        tl.device(f"completed the TLS handshake: {version}, {cipher[0] if cipher else '?'}")
        return self._result(HandshakeOutcome.COMPLETED, started, hello, True, version=version,
                            cipher=cipher[0] if cipher else None, peer_der=der)

    def _result(self, outcome: HandshakeOutcome, started: float, hello, flight: bool, **kw) -> Handshake:
        return Handshake(outcome, hello=hello or self._hello.hello, server_flight=flight,
                         seconds=self.clock() - started, **kw)

    # ------------------------------------------------------------------ after the handshake

    async def read(self, timeout: float | None) -> bytes:
        """Plaintext from the device; ``b""`` once it closed (cleanly or not). Raises TimeoutError."""
        deadline = None if timeout is None else self.clock() + timeout
        while True:
            try:
                data = self._ssl.read(_READ)
                if data:
                    return data
                self._mark_closed("the device sent close_notify")
                return b""
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self._mark_closed("the device sent close_notify")
                return b""
            except ssl.SSLError as exc:
                alert = alert_name(exc.reason)
                self._mark_closed(f"TLS alert {alert}" if alert else f"TLS error {exc.reason or exc}")
                return b""
            await self._flush()
            if self._eof:
                return b""
            left = None if deadline is None else deadline - self.clock()
            if left is not None and left <= 0:
                raise TimeoutError
            raw = await self._recv(left)
            if not raw:
                self._in.write_eof()
                continue
            self._in.write(raw)

    async def write(self, data: bytes) -> bool:
        """Send plaintext; False when the device is gone."""
        if self._eof or self._closed:
            return False
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            self._mark_closed(f"TLS error while writing: {exc.reason or exc}")
            return False
        await self._flush()
        return not self._eof

    @property
    def application_records(self) -> list[int]:
        """Lengths of the application-data records sent since the handshake."""
        return [n for t, n in self.records_sent if t == _APPLICATION_DATA]

    async def close(self) -> None:
        """close_notify, then close the socket."""
        if self._closed:
            return
        if not self._eof:
            try:
                self._ssl.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            await self._flush()
        self.abort()

    def abort(self) -> None:
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass
