"""Device side of token and SigV4 authentication: what an app, a phone or a gateway without a certificate sends.

Building blocks for the fleet simulator and the load tests (one connection helper for both):

* ``sign_token`` / ``custom_auth_username`` build the CONNECT username exactly as the AWS IoT Device SDK's
  ``direct_with_custom_authorizer`` does (``?x-amz-customauthorizer-name=...&x-amz-customauthorizer-signature=
  <url-encoded>&<tokenKeyName>=<token>``);
* ``sigv4_target`` signs the WebSocket upgrade request as the SDK's ``websockets_with_default_aws_signing``
  does (service ``iotdevicegateway``, query-string form, session token appended after signing);
* ``TokenLink`` opens TLS with the right ALPN (``mqtt`` for a custom authorizer, ``http/1.1`` for WebSocket),
  performs the WebSocket upgrade (wsproto) when asked, and carries MQTT bytes; ``try_connect`` sends one
  CONNECT and classifies what came back (CONNACK code, HTTP refusal, closed, TLS failure) for verdicts.

The server certificate is always verified (the SSLContext comes from ``client_context``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import socket
import ssl
import urllib.parse
from datetime import datetime
from pathlib import Path

import h11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, RejectData,
                            Request)

from gateway.auth.sigv4 import presign
from gateway.mqtt import Connect, Framer, decode, encode


def sign_token(private_key: rsa.RSAPrivateKey | bytes, token: str) -> str:
    """base64 RSA SHA-256 signature of the token (``openssl dgst -sha256 -sign key | base64``)."""
    if isinstance(private_key, bytes):
        private_key = serialization.load_pem_private_key(private_key, password=None)
    return base64.b64encode(private_key.sign(token.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode()


def custom_auth_username(authorizer: str | None, token_key_name: str | None = None, token: str | None = None,
                         signature: str | None = None, username: str = "") -> str:
    """The CONNECT username carrying a custom authorizer's name, token signature and token (the SDK's form)."""
    params = []
    if authorizer is not None:
        params.append(f"x-amz-customauthorizer-name={authorizer}")
    if signature is not None:
        params.append(f"x-amz-customauthorizer-signature={urllib.parse.quote(signature, safe='')}")
    if token_key_name is not None and token is not None:
        params.append(f"{token_key_name}={token}")
    return username + ("?" + "&".join(params) if params else "")


def sigv4_target(host: str, access_key_id: str, secret: str, region: str, now: datetime, *,
                 session_token: str | None = None, expires: int | None = None) -> str:
    """The signed ``/mqtt?X-Amz-...`` request target (signed headers ``connection;host``, as the SDK signs)."""
    return presign(host, access_key_id, secret, region, now, session_token=session_token, expires=expires,
                   extra_headers=(("connection", "Upgrade"),))


def client_context(ca_file: Path, *, alpn: str | None) -> ssl.SSLContext:
    """A verifying client context (server certificate and name checked) with one ALPN protocol."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols([alpn])
    return ctx


class HttpRefused(Exception):
    """The WebSocket upgrade was answered with an HTTP error."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        self.status = status
        self.body = body


class TokenLink:
    """MQTT bytes over TLS, directly (ALPN ``mqtt``) or inside WebSocket binary frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: WSConnection | None) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = ws
        self._inbox = bytearray()

    @classmethod
    async def open(cls, host: str, port: int, ctx: ssl.SSLContext, *, server_name: str = "localhost",
                   websocket_target: str | None = None, headers: tuple[tuple[str, str], ...] = (),
                   timeout: float = 5.0) -> TokenLink:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_name), timeout)
        if websocket_target is None:
            return cls(reader, writer, None)
        ws = WSConnection(ConnectionType.CLIENT)
        writer.write(ws.send(Request(host=server_name, target=websocket_target, subprotocols=["mqtt"],
                                     extra_headers=list(headers))))
        status, body = None, b""
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                writer.close()
                raise ConnectionError("closed during the WebSocket upgrade")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return cls(reader, writer, ws)
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        writer.close()
                        raise HttpRefused(status, b"")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        writer.close()
                        raise HttpRefused(status or 0, body)

    async def send(self, data: bytes) -> None:
        self.writer.write(self.ws.send(BytesMessage(data=data)) if self.ws is not None else data)
        await self.writer.drain()

    async def receive(self, timeout: float = 5.0) -> bytes:
        """Some MQTT bytes; b'' when the connection closed."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data or self.ws is None:
                return data
            self.ws.receive_data(data)
            out = bytearray()
            for event in self.ws.events():
                if isinstance(event, BytesMessage):
                    out += event.data
                elif isinstance(event, Ping):
                    self.writer.write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    return bytes(out)
            if out:
                return bytes(out)

    def close(self) -> None:
        self.writer.close()


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectResult:
    """What one token or SigV4 connection attempt got: ``stage`` tcp | timeout | tls | http | mqtt | closed, and
    the code (the CONNACK's, or the HTTP status of a refused WebSocket upgrade)."""

    stage: str
    code: int | None
    detail: str

    @property
    def accepted(self) -> bool:
        return self.stage == "mqtt" and self.code == 0


async def try_connect(host: str, port: int, ca_file: Path, *, client_id: str, username: str | None = None,
                      password: bytes | None = None, websocket_target: str | None = None,
                      headers: tuple[tuple[str, str], ...] = (), protocol_level: int = 5,
                      timeout: float = 5.0) -> ConnectResult:
    """One CONNECT over a token link; the CONNACK's code, or where and why it was refused."""
    ctx = client_context(ca_file, alpn="http/1.1" if websocket_target is not None else "mqtt")
    try:
        link = await TokenLink.open(host, port, ctx, websocket_target=websocket_target, headers=headers,
                                    timeout=timeout)
    except HttpRefused as exc:
        return ConnectResult("http", exc.status, exc.body.decode("utf-8", "replace"))
    except ssl.SSLError as exc:
        return ConnectResult("tls", None, str(exc))
    except TimeoutError:
        return ConnectResult("timeout", None, f"no answer within {timeout:g} s")
    except ConnectionError as exc:
        if str(exc) == "closed during the WebSocket upgrade":
            return ConnectResult("closed", None, str(exc))
        return ConnectResult("tcp", None, f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        return ConnectResult("tcp", None, f"{type(exc).__name__}: {exc}")
    try:
        await link.send(encode(Connect(client_id, protocol_level=protocol_level, username=username,
                                       password=password, keep_alive=60)))
        framer = Framer(1 << 20, protocol_level=protocol_level)
        while True:
            data = await link.receive(timeout)
            if not data:
                return ConnectResult("closed", None, "closed without a CONNACK")
            for frame in framer.feed(data):
                return ConnectResult("mqtt", int(decode(frame, protocol_level).reason_code), "CONNACK")
    except TimeoutError:
        return ConnectResult("timeout", None, f"no CONNACK within {timeout:g} s")
    except ssl.SSLError as exc:
        return ConnectResult("tls", None, str(exc))
    except (ConnectionError, asyncio.IncompleteReadError, h11.RemoteProtocolError) as exc:
        return ConnectResult("closed", None, str(exc) or type(exc).__name__)
    finally:
        link.close()


def try_connect_blocking(host: str, port: int, ca_file: Path, *, client_id: str, username: str | None = None,
                         password: bytes | None = None, websocket_target: str | None = None,
                         headers: tuple[tuple[str, str], ...] = (), protocol_level: int = 5,
                         timeout: float = 5.0, server_name: str = "localhost") -> ConnectResult:
    """:func:`try_connect` with blocking sockets (cooperative where gevent patched them: the load tests)."""
    ctx = client_context(ca_file, alpn="http/1.1" if websocket_target is not None else "mqtt")
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return ConnectResult("timeout", None, f"no answer within {timeout:g} s")
    except OSError as exc:
        return ConnectResult("tcp", None, f"{type(exc).__name__}: {exc}")
    sock = None
    try:
        try:
            sock = ctx.wrap_socket(raw, server_hostname=server_name)  # takes over raw's file descriptor
        except ssl.SSLError as exc:
            return ConnectResult("tls", None, str(exc))
        ws = None
        if websocket_target is not None:
            ws = WSConnection(ConnectionType.CLIENT)
            sock.sendall(ws.send(Request(host=server_name, target=websocket_target, subprotocols=["mqtt"],
                                         extra_headers=list(headers))))
            status, body, accepted = None, b"", False
            while not accepted:
                data = sock.recv(65536)
                if not data:
                    return ConnectResult("closed", None, "closed during the WebSocket upgrade")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        accepted = True
                    elif isinstance(event, RejectConnection):
                        status = event.status_code
                        if not event.has_body:
                            return ConnectResult("http", status, "")
                    elif isinstance(event, RejectData):
                        body += event.data
                        if event.body_finished:
                            return ConnectResult("http", status or 0, body.decode("utf-8", "replace"))
        connect = encode(Connect(client_id, protocol_level=protocol_level, username=username, password=password,
                                 keep_alive=60))
        sock.sendall(ws.send(BytesMessage(data=connect)) if ws is not None else connect)
        framer = Framer(1 << 20, protocol_level=protocol_level)
        while True:
            data = sock.recv(65536)
            if not data:
                return ConnectResult("closed", None, "closed without a CONNACK")
            if ws is not None:
                ws.receive_data(data)
                data = b"".join(e.data for e in ws.events() if isinstance(e, BytesMessage))
            for frame in framer.feed(data):
                return ConnectResult("mqtt", int(decode(frame, protocol_level).reason_code), "CONNACK")
    except TimeoutError:
        return ConnectResult("timeout", None, f"no answer within {timeout:g} s")
    except ssl.SSLError as exc:
        return ConnectResult("tls", None, str(exc))
    except (OSError, h11.RemoteProtocolError) as exc:
        return ConnectResult("closed", None, str(exc) or type(exc).__name__)
    finally:
        (sock or raw).close()
