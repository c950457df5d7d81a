"""Pieces the library connectors share: code names, paho's code translation, TLS reasons, an inbox.

paho-mqtt 2 (and aiomqtt, which is paho inside) reports an MQTT 3.1.1 CONNACK return code as the MQTT 5 reason
code of the same meaning (``5 NOT_AUTHORIZED`` arrives as ``0x87``); :func:`connack_code` gives the code the
server actually sent, so every connector reports what was on the wire.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator

from devices.client import PublishResult, SubscribeResult
from devices.transport import identity_context
from gateway.mqtt import ConnectReturnCode, Publish, ReasonCode

# paho's MQTT 5 reason code for each MQTT 3.1.1 CONNACK return code (paho.mqtt._packet.convert_connack_rc_to_reason_code)
_V3_RETURN_CODE_OF_PAHO_REASON = {
    0x00: ConnectReturnCode.ACCEPTED,
    0x84: ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION,
    0x85: ConnectReturnCode.IDENTIFIER_REJECTED,
    0x88: ConnectReturnCode.SERVER_UNAVAILABLE,
    0x86: ConnectReturnCode.BAD_USER_NAME_OR_PASSWORD,
    0x87: ConnectReturnCode.NOT_AUTHORIZED,
}


def connack_code(level: int, paho_reason: int) -> int:
    """The CONNACK code on the wire for the reason code paho reported (3.1.1: back to its return code)."""
    if level == 5:
        return int(paho_reason)
    try:
        return int(_V3_RETURN_CODE_OF_PAHO_REASON[int(paho_reason)])
    except KeyError:
        raise ValueError(f"paho reason code 0x{int(paho_reason):02X} stands for no MQTT 3.1.1 return code") from None


def code_name(level: int, code: int) -> str:
    """``NOT_AUTHORIZED (0x05)``: a CONNACK code by the name of its protocol level."""
    try:
        name = ConnectReturnCode(code).name if level == 4 else ReasonCode(code).name
    except ValueError:
        name = "UNKNOWN"
    return f"{name} (0x{code:02X})"


def is_tls_failure(exc: BaseException | None) -> bool:
    """A TLS refusal (an alert, a failed verification); a connection merely ended without close_notify is not."""
    return isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError)


def tls_detail(exc: BaseException) -> str:
    """``TLSV13_ALERT_CERTIFICATE_REQUIRED: [SSL: ...] ...``: OpenSSL's reason first, as the native client."""
    reason = getattr(exc, "reason", None)
    return f"{reason}: {exc}" if isinstance(reason, str) and reason else str(exc) or type(exc).__name__


def tls_version_of(sock) -> str | None:
    version = getattr(sock, "version", None)
    try:
        return version() if callable(version) else None
    except (OSError, ValueError):
        return None


class Inbox:
    """Received messages for :meth:`messages`, in order. ``on_full``/``on_drained`` pause and resume reading
    (backpressure instead of dropping): full at ``size``, drained at half of it."""

    __slots__ = ("_items", "_paused", "_waiter", "on_drained", "on_full", "size")

    def __init__(self, size: int, on_full=None, on_drained=None) -> None:
        self.size = size
        self.on_full = on_full
        self.on_drained = on_drained
        self._items: deque[Publish] = deque()
        self._waiter: asyncio.Future | None = None
        self._paused = False

    def put(self, publish: Publish) -> None:
        self._items.append(publish)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._items) >= self.size and not self._paused and self.on_full is not None:
            self._paused = True
            self.on_full()

    async def __aiter__(self) -> AsyncIterator[Publish]:
        items = self._items
        while True:
            while items:
                publish = items.popleft()
                if self._paused and len(items) <= self.size // 2:
                    self._paused = False
                    if self.on_drained is not None:
                        self.on_drained()
                yield publish
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class BoundedRequests:
    """``publish``/``subscribe`` of the DeviceLink contract, with its optional ``timeout``, over a link's own
    ``_publish``/``_subscribe``: a request not answered in time is a ``timeout`` result, as the native client
    reports it."""

    async def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False, *,
                      timeout: float | None = None) -> PublishResult:
        return await _bounded(self._publish(topic, payload, qos, retain), timeout, PublishResult(False, "timeout"))

    async def subscribe(self, *filters: str, qos: int = 1, timeout: float | None = None) -> SubscribeResult:
        return await _bounded(self._subscribe(*filters, qos=qos), timeout, SubscribeResult(False, "timeout"))


async def _bounded(request, timeout: float | None, expired):
    if timeout is None:
        return await request
    try:
        return await asyncio.wait_for(request, timeout)
    except TimeoutError:
        return expired


class LinkBase(BoundedRequests):
    """What every library-backed link keeps: identity, endpoint, options, disconnect callback, clock, and the
    SSLContext of its identity (built on first use, kept across connects)."""

    def __init__(self, identity, endpoint, *, client_id: str, options, on_disconnect, clock) -> None:
        self.identity = identity
        self.endpoint = endpoint
        self.options = options
        self.on_disconnect = on_disconnect
        self.clock = clock
        self._client_id = client_id
        self._connected = False
        self._context: ssl.SSLContext | None = None

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def connected(self) -> bool:
        return self._connected

    def context(self) -> ssl.SSLContext:
        """The identity's SSLContext: built once, reused by every connect of this link."""
        if self._context is None:
            self._context = identity_context(self.identity, self.endpoint.alpn)
        return self._context
