"""MQTT over WebSocket, server side, sans-IO: the HTTP upgrade request (h11), then binary frames (wsproto).

h11 parses the request head with a size cap and keeps every header as sent, which SigV4 needs (the SDK signs
``connection;host``: their exact values are part of the canonical request); wsproto then takes the parsed
request over (``initiate_upgrade_connection``) and does the framing: unmasking, fragmentation, ping/pong,
the closing handshake. Why wsproto: a sans-IO protocol object in the mould of h11/h2 (the style the MQTT codec
follows), no event loop of its own, and it hands message fragments on as they arrive instead of buffering a
whole (possibly huge) frame; the MQTT framer behind it enforces the packet size cap. A refusal is an HTTP
answer as AWS IoT gives it (403 with ``x-amzn-ErrorType: ForbiddenException`` and a JSON message).
"""

from __future__ import annotations

import dataclasses
import json

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

MAX_HEAD = 16 * 1024
PATH = "/mqtt"
_REASONS = {400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 426: b"Upgrade Required"}
_ERROR_TYPES = {400: "InvalidRequestException", 401: "UnauthorizedException", 403: "ForbiddenException",
                404: "NotFoundException", 426: "InvalidRequestException"}


class UpgradeError(Exception):
    """The upgrade request cannot be served: ``status`` is the HTTP answer, ``key``/``reason`` the log."""

    def __init__(self, status: int, key: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.key = key
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class UpgradeRequest:
    method: str
    target: str
    path: str
    headers: tuple[tuple[str, str], ...]  # lower-case names, values as sent

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class WebSocketServer:
    """One connection: ``receive_head`` until it returns the request, then ``accept`` or ``reject``; then
    ``receive`` (MQTT bytes in) and ``send`` (MQTT bytes out)."""

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._ws: WSConnection | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self.request: UpgradeRequest | None = None
        self.closed = False

    # ------------------------------------------------------------------ the upgrade

    def receive_head(self, data: bytes) -> UpgradeRequest | None:
        """Feed bytes of the request head; the request once complete (raises UpgradeError)."""
        self._http.receive_data(data)
        try:
            event = self._http.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpgradeError(400, "http_malformed", f"not an HTTP upgrade request: {exc}") from None
        if event is h11.NEED_DATA:
            return None
        if not isinstance(event, h11.Request):
            raise UpgradeError(400, "http_malformed", "not an HTTP upgrade request")
        target = event.target.decode("ascii", "replace")
        headers = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers)
        self._raw_headers = list(event.headers)
        self.request = UpgradeRequest(event.method.decode("ascii", "replace"), target, target.partition("?")[0],
                                      headers)
        if self.request.method != "GET":
            raise UpgradeError(400, "http_malformed", f"{self.request.method} {self.request.path}: only GET upgrades")
        if self.request.path != PATH:
            raise UpgradeError(404, "websocket_path", f"no WebSocket endpoint at {self.request.path} (use {PATH})")
        if (self.request.header("upgrade") or "").lower() != "websocket":
            raise UpgradeError(426, "websocket_upgrade_missing", "the request does not ask for a WebSocket upgrade")
        return self.request

    def accept(self) -> tuple[bytes, bytes]:
        """The 101 answer (``mqtt`` subprotocol when asked), and MQTT bytes that came with the request."""
        trailing, _ = self._http.trailing_data
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(self._raw_headers, self.request.target)
            events = list(ws.events())
        except (LocalProtocolError, RemoteProtocolError) as exc:
            raise UpgradeError(400, "websocket_malformed", f"not a valid WebSocket upgrade: {exc}") from None
        request = next((e for e in events if isinstance(e, Request)), None)
        if request is None:
            raise UpgradeError(400, "websocket_malformed", "not a valid WebSocket upgrade")
        subprotocol = "mqtt" if "mqtt" in request.subprotocols else None
        answer = ws.send(AcceptConnection(subprotocol=subprotocol))
        self._ws = ws
        payload, reply = self.receive(trailing) if trailing else (b"", b"")
        return answer + reply, payload

    def reject(self, status: int, message: str) -> bytes:
        """An HTTP refusal in AWS IoT's shape; the connection is closed after it."""
        body = json.dumps({"message": message}).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body))),
                   ("x-amzn-ErrorType", f"{_ERROR_TYPES.get(status, 'ForbiddenException')}:"),
                   ("connection", "close")]
        try:
            return (self._http.send(h11.Response(status_code=status, headers=headers,
                                                 reason=_REASONS.get(status, b"Error")))
                    + self._http.send(h11.Data(data=body)) + self._http.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # the head never parsed: answer by hand, as plainly
            reason = _REASONS.get(status, b"Error")
            head = f"HTTP/1.1 {status} ".encode() + reason + b"\r\n" + b"".join(
                f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"
            return head + body

    # ------------------------------------------------------------------ frames

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """(MQTT bytes received, bytes to answer with: pongs, the closing handshake). Sets ``closed``."""
        ws = self._ws
        try:
            ws.receive_data(data)
            payload = []
            reply = []
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    payload.append(event.data)
                elif isinstance(event, Ping):
                    reply.append(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if not self.closed:
                        reply.append(ws.send(event.response()))
                    self.closed = True
                elif isinstance(event, TextMessage):
                    reply.append(ws.send(CloseConnection(code=1003, reason="MQTT travels in binary frames")))
                    self.closed = True
        except (LocalProtocolError, RemoteProtocolError) as exc:
            self.closed = True
            return b"", self._close_bytes(1002, str(exc)[:100])
        return b"".join(payload), b"".join(reply)

    def send(self, payload: bytes) -> bytes:
        if self.closed or not payload:
            return b""
        return self._ws.send(BytesMessage(data=payload))

    def close(self, code: int = 1000) -> bytes:
        if self.closed or self._ws is None:
            return b""
        self.closed = True
        return self._close_bytes(code, "")

    def _close_bytes(self, code: int, reason: str) -> bytes:
        try:
            return self._ws.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            return b""


class WebSocketTransport:
    """The device transport as the session shell sees it, for a WebSocket connection: writes become binary
    frames on the TLS transport below; ``close`` sends the closing frame first."""

    __slots__ = ("inner", "ws")

    def __init__(self, inner, ws: WebSocketServer) -> None:
        self.inner = inner
        self.ws = ws

    def write(self, data: bytes) -> None:
        framed = self.ws.send(data)
        if framed:
            self.inner.write(framed)

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def close(self) -> None:
        if not self.inner.is_closing():
            closing = self.ws.close()
            if closing:
                self.inner.write(closing)
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.inner.set_write_buffer_limits(high, low)

    def get_extra_info(self, name, default=None):
        return self.inner.get_extra_info(name, default)
