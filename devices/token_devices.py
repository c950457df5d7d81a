"""Legitimate devices without certificates, for the native client: a custom-authorizer token on ALPN ``mqtt``,
or SigV4-signed MQTT over WebSocket, both on the gateway's token listener.

* :class:`TokenIdentity` is a :class:`~devices.identity.DeviceIdentity` without key and certificate files: the
  thing name, the CA that verifies the server, the token listener's port, how it authenticates (``token`` or
  ``sigv4``) and its credential: a callable giving the CONNECT username (token) or the signed ``/mqtt?...``
  request target (SigV4) for a connection made at ``now``. A SigV4 signature is never used twice: two
  connections in the same second are signed a second apart (within the 5-minute window the server allows).
* :class:`CredentialTLS` verifies the server exactly as every device does and presents no client certificate.
* :class:`WebSocketTransport` is a :class:`~devices.transport.Transport` whose links carry MQTT in WebSocket
  binary frames (wsproto, sans-IO) after a signed upgrade; a refused upgrade is ``TransportError("http", ...)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ssl
import threading
from collections.abc import Callable
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, RejectData,
                            Request)

from devices.identity import DeviceIdentity
from devices.tokens import sigv4_target
from devices.transport import (DeviceTLS, Endpoint, LinkHandler, LinkTimings, Transport, TransportError,
                               _tcp_connect, _tls_error)

AUTH_KINDS = ("certificate", "token", "sigv4")


@dataclasses.dataclass(frozen=True, slots=True)
class TokenIdentity(DeviceIdentity):
    auth: str = "token"                                  # token | sigv4
    port: int = 0                                        # the token listener
    credential: Callable[[dt.datetime], str] | None = None
    # the same credential in the AWS IoT Device SDK builders' arguments: auth_authorizer_name,
    # auth_authorizer_signature, auth_token_key_name, auth_token_value (token); region, access_key_id, secret (sigv4)
    sdk_auth: Callable[[dt.datetime], dict] | None = None

    def username(self, now: dt.datetime) -> str | None:
        """The CONNECT username of a connection made at ``now``: a fresh token (custom authorizer), else None."""
        return self.credential(now) if self.auth == "token" and self.credential is not None else None

    def endpoint(self, endpoint: Endpoint) -> Endpoint:
        """Where this device connects: the token listener of ``endpoint``'s host, with its ALPN."""
        return Endpoint(endpoint.host, self.port, endpoint.server_name,
                        ("mqtt",) if self.auth == "token" else ("http/1.1",))


class SigV4Signer:
    """A device's access key: a fresh signature for every connection (never the same second twice)."""

    def __init__(self, access_key_id: str, secret: str, region: str, host: str) -> None:
        self.access_key_id = access_key_id
        self._secret = secret
        self.region = region
        self.host = host
        self._last: dt.datetime | None = None
        self._lock = threading.Lock()

    def __call__(self, now: dt.datetime) -> str:
        with self._lock:
            now = now.replace(microsecond=0)
            if self._last is not None and now <= self._last:
                now = self._last + dt.timedelta(seconds=1)
            self._last = now
        return sigv4_target(self.host, self.access_key_id, self._secret, self.region, now)

    def __repr__(self) -> str:   # never the secret
        return f"SigV4Signer({self.access_key_id})"


class CredentialTLS(DeviceTLS):
    """The server verified as always (chain and name, TLS 1.2+); no client certificate."""

    __slots__ = ()

    def context(self) -> ssl.SSLContext:
        ctx = self._context
        if ctx is None:
            ctx = ssl.create_default_context(cafile=self.identity.ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.alpn:
                ctx.set_alpn_protocols(list(self.alpn))
            if self.keep:
                self._context = ctx
        return ctx


class _WebSocketLink(asyncio.Protocol):
    """A :class:`~devices.transport.Link` over one TLS connection: the upgrade, then MQTT in binary frames."""

    def __init__(self, handler: LinkHandler, host: str, target: str) -> None:
        self._handler = handler
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._host = host
        self._target = target
        self._transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future = asyncio.get_running_loop().create_future()
        self._status: int | None = None
        self._body = bytearray()
        self._closed = False

    def connection_made(self, transport) -> None:
        self._transport = transport
        transport.write(self._ws.send(Request(host=self._host, target=self._target, subprotocols=["mqtt"])))

    def data_received(self, data: bytes) -> None:
        self._ws.receive_data(data)
        out = bytearray()
        for event in self._ws.events():
            if isinstance(event, AcceptConnection):
                if not self.upgraded.done():
                    self.upgraded.set_result(None)
            elif isinstance(event, RejectConnection):
                self._status = event.status_code
                if not event.has_body:
                    self._refused()
            elif isinstance(event, RejectData):
                self._body += event.data
                if event.body_finished:
                    self._refused()
            elif isinstance(event, BytesMessage):
                out += event.data
            elif isinstance(event, Ping):
                self._transport.write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._transport.close()
        if out:
            self._handler.on_data(bytes(out))

    def _refused(self) -> None:
        if not self.upgraded.done():
            body = bytes(self._body).decode("utf-8", "replace")
            self.upgraded.set_exception(TransportError("http", f"HTTP {self._status}", body[:300]))
        self._transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(TransportError("closed", "closed during the WebSocket upgrade",
                                                       str(exc) if exc else ""))
            return
        self._handler.on_close(exc)

    # Link
    def write(self, data: bytes) -> None:
        if not self._closed:
            self._transport.write(self._ws.send(BytesMessage(data=data)))

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            try:
                self._transport.write(self._ws.send(CloseConnection(code=1000)))
            except Exception:  # noqa: BLE001 - a connection not in a state to say goodbye is closed anyway
                pass
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    @property
    def tls_version(self) -> str | None:
        sslobj = self._transport.get_extra_info("ssl_object") if self._transport else None
        return sslobj.version() if sslobj is not None else None


class WebSocketTransport(Transport):
    """MQTT over WSS on ``/mqtt``, the upgrade signed with the device's SigV4 credential (one per connection)."""

    name = "websocket"
    keeps_context = True

    async def connect(self, endpoint: Endpoint, tls: DeviceTLS, handler: LinkHandler, timings: LinkTimings, *,
                      local_addr: str | None = None, clock=None) -> _WebSocketLink:
        identity: Any = tls.identity
        if not isinstance(identity, TokenIdentity) or identity.credential is None:
            raise TransportError("identity", "no-credential", f"{identity.thing_name}: no SigV4 credential")
        loop = asyncio.get_running_loop()
        clock = clock or loop.time
        ctx = tls.context()
        target = identity.credential(dt.datetime.now(dt.UTC))
        sock = await _tcp_connect(endpoint, local_addr, timings, clock)
        started = clock()
        try:
            _, link = await loop.create_connection(lambda: _WebSocketLink(handler, endpoint.sni, target), sock=sock,
                                                   ssl=ctx, server_hostname=endpoint.sni)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise _tls_error(exc) from None
        except BaseException:
            sock.close()
            raise
        timings.tls = clock() - started
        try:
            await link.upgraded
        except BaseException:
            link.abort()
            raise
        return link
