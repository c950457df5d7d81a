"""The aiomqtt connector: aiomqtt 2 (paho-mqtt inside) as an application would use it.

``aiomqtt.Client(hostname, port, identifier=, tls_context=, protocol=, keepalive=, clean_session=/clean_start=,
will=, max_inflight_messages=, timeout=)`` and its context-manager connect; one ``SSLContext`` per identity,
built once and reused (TLS 1.2 minimum, verification on).

aiomqtt hides some of what a refusal says, so the link listens next to it on the paho client aiomqtt wraps
(``Client._client``, not part of aiomqtt's documented API):

* a PUBACK's reason code -- aiomqtt's ``publish()`` returns on any PUBACK, a v5 ``0x87`` included; the link
  records the code paho saw for the packet id of its own publish;
* a connection closed before CONNACK -- aiomqtt ignores that close and waits out its timeout; the link ends
  the attempt at once as ``Reason.CLOSED`` (``Reason.TLS`` with OpenSSL's reason when paho's read failed with
  a TLS alert, taken from paho's log record through the per-link ``logger`` aiomqtt accepts);
* a connection lost while a QoS 1 publish or a SUBSCRIBE waits -- aiomqtt would wait out its timeout; the
  link answers ``closed`` at once and reports a :class:`DisconnectNotice`.

Not reported: DNS, TCP and TLS timings (aiomqtt opens the connection in an executor thread, in paho's blocking
``connect()``; only ``total`` is measured), the TLS version, CONNACK/PUBACK/SUBACK
properties, the session-present flag (aiomqtt does not pass it on: always False). Options: ``protocol_level``,
``keep_alive``, ``clean_start``, ``session_expiry``, ``will``, ``username``/``password``, ``max_inflight``,
``connect_timeout``, ``max_resends`` 0 (the link never reconnects, so it never re-sends). Not supported:
other ``max_resends`` limits (refused), ``max_packet_size``, ``ping_timeout``;
``inbox_size`` does not bound aiomqtt's own queue (no backpressure on reading).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
import paho.mqtt.client as mqtt

from devices.client import (ClientOptions, ConnectOutcome, ConnectTimings, DisconnectNotice, Endpoint,
                            PublishResult, Reason, SubscribeResult)
from devices.connectors._common import LinkBase, Inbox, code_name, connack_code, is_tls_failure, tls_detail
from devices.connectors.paho import check_options, connect_properties
from devices.identity import DeviceIdentity
from gateway.mqtt import Publish

_publish_slot: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("_publish_slot", default=None)


class AiomqttConnector:
    name = "aiomqtt"

    def link(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str, options: ClientOptions,
             on_disconnect: Callable[[DisconnectNotice], None] | None = None) -> AiomqttLink:
        return AiomqttLink(identity, endpoint, client_id=client_id, options=options, on_disconnect=on_disconnect)


class _ErrorCatcher(logging.Handler):
    """Keeps the last socket error paho logged ("failed to receive on socket: %s", err)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        for arg in record.args or ():
            if isinstance(arg, BaseException):
                self.error = arg


def _exc_chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


class AiomqttLink(LinkBase):
    """One device on aiomqtt (see the module docstring). One connection per :meth:`connect`."""

    def __init__(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str, options: ClientOptions,
                 on_disconnect: Callable[[DisconnectNotice], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        check_options(options, "aiomqtt")
        super().__init__(identity, endpoint, client_id=client_id, options=options, on_disconnect=on_disconnect,
                         clock=clock)
        self._client: aiomqtt.Client | None = None
        self._closed: asyncio.Future | None = None
        self._closing: DisconnectNotice | None = None
        self._codes: dict[int, int] = {}
        self._inbox: Inbox | None = None
        self._pump: asyncio.Task | None = None
        self._errors = _ErrorCatcher()
        self._logger = logging.Logger(f"iotgate.aiomqtt.{client_id}", logging.ERROR)  # not registered globally
        self._logger.addHandler(self._errors)
        self._logger.propagate = False

    def _make_client(self) -> aiomqtt.Client:
        o = self.options
        v5 = o.protocol_level == 5
        will = None
        if o.will is not None:
            will = aiomqtt.Will(o.will.topic, o.will.payload, o.will.qos, o.will.retain)
        kwargs: dict = {"clean_start": o.clean_start, "properties": connect_properties(o)} if v5 \
            else {"clean_session": o.clean_start}
        if self.endpoint.server_name not in (None, self.endpoint.host):
            raise ValueError("aiomqtt: the server name must be the host name (paho sends the host as SNI)")
        client = aiomqtt.Client(
            self.endpoint.host, self.endpoint.port, identifier=self._client_id, tls_context=self.context(),
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            keepalive=o.keep_alive, will=will, username=o.username,
            password=o.password.decode() if o.password is not None else None,
            max_inflight_messages=o.max_inflight, timeout=o.connect_timeout, logger=self._logger, **kwargs)
        paho = client._client  # aiomqtt's paho client: see the module docstring
        aio_on_publish, aio_on_disconnect, paho_publish = paho.on_publish, paho.on_disconnect, paho.publish

        def on_publish(cl, userdata, mid, reason_code, properties):
            self._codes[mid] = int(reason_code.value)
            aio_on_publish(cl, userdata, mid, reason_code, properties)

        def on_disconnect(cl, userdata, flags, reason_code, properties):
            aio_on_disconnect(cl, userdata, flags, reason_code, properties)
            self._lost(flags, reason_code)

        def publish(*args, **kwargs):
            info = paho_publish(*args, **kwargs)
            slot = _publish_slot.get()
            if slot is not None:
                slot.append(info.mid)
            return info

        paho.on_publish = on_publish
        paho.on_disconnect = on_disconnect
        paho.publish = publish
        return client

    # -------------------------------------------------------------------------------------- connect

    async def connect(self) -> ConnectOutcome:
        if self._connected:
            raise RuntimeError(f"{self._client_id}: connect() while connected")
        loop = asyncio.get_running_loop()
        started = self.clock()
        o = self.options

        def outcome(ok: bool, reason: Reason, detail: str = "", *, code: int | None = None,
                    stage: str = "mqtt") -> ConnectOutcome:
            return ConnectOutcome(ok, reason, detail, code, False, ConnectTimings(total=self.clock() - started),
                                  None, stage)

        try:
            client = self._client = self._make_client()
        except (OSError, ssl.SSLError) as exc:
            return outcome(False, Reason.IDENTITY, f"{self.identity.cert_file}: {exc}", stage="identity")
        self._errors.error = None
        self._closing = None
        closed = self._closed = loop.create_future()
        enter = asyncio.ensure_future(client.__aenter__())
        try:
            async with asyncio.timeout(o.connect_timeout + 1.0):
                await asyncio.wait({enter, closed}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        if enter.done() and not enter.cancelled() and enter.exception() is None:
            self._connected = True
            self._pump = loop.create_task(self._pump_messages(client), name=f"messages {self._client_id}")
            return outcome(True, Reason.CONNECTED, code=0)
        if not enter.done():
            enter.cancel()
            try:
                await enter
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the attempt is over either way
                pass
            self._abort_socket()
            if closed.done():
                error = self._errors.error
                if is_tls_failure(error):
                    return outcome(False, Reason.TLS, tls_detail(error), stage="tls")
                return outcome(False, Reason.CLOSED, str(error) if error else "the server closed the connection")
            return outcome(False, Reason.TIMEOUT, f"no CONNACK within {o.connect_timeout:g} s")
        return self._failed(enter.exception(), outcome)

    def _failed(self, exc: BaseException | None, outcome) -> ConnectOutcome:
        level = self.options.protocol_level
        if isinstance(exc, MqttConnectError) and exc.rc is not None:
            code = connack_code(level, int(getattr(exc.rc, "value", exc.rc)))
            return outcome(False, Reason.REFUSED, code_name(level, code), code=code)
        for cause in _exc_chain(exc):
            if isinstance(cause, ssl.SSLError):
                if is_tls_failure(cause):
                    return outcome(False, Reason.TLS, tls_detail(cause), stage="tls")
                return outcome(False, Reason.CLOSED, tls_detail(cause), stage="tls")
            if isinstance(cause, socket.gaierror):
                return outcome(False, Reason.DNS, str(cause), stage="dns")
            if isinstance(cause, (ConnectionRefusedError, TimeoutError)) and cause is not exc:
                return outcome(False, Reason.TCP, str(cause), stage="tcp")
        if isinstance(exc, aiomqtt.MqttError) and "timed out" in str(exc):
            return outcome(False, Reason.TIMEOUT, f"no CONNACK within {self.options.connect_timeout:g} s")
        return outcome(False, Reason.CLOSED, str(exc))

    # -------------------------------------------------------------------------------------- ending

    def _lost(self, flags, reason_code) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result((flags, reason_code))
        was_connected, self._connected = self._connected, False
        if not was_connected:
            return
        notice, self._closing = self._closing, None
        if notice is None:
            error = self._errors.error
            if flags.is_disconnect_packet_from_server:
                notice = DisconnectNotice("server", code_name(5, reason_code.value), reason_code.value)
            elif is_tls_failure(error):
                notice = DisconnectNotice("tls", tls_detail(error))
            elif reason_code.value == 0x8D:
                notice = DisconnectNotice("keepalive", "no PINGRESP within the keep-alive interval")
            else:
                notice = DisconnectNotice("closed", str(error) if error else "the server closed the connection")
        if self.on_disconnect is not None:
            self.on_disconnect(notice)

    def _abort_socket(self) -> None:
        if self._client is None:
            return
        paho = self._client._client
        sock = paho.socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
        paho._sock_close()  # paho-mqtt 2: closes the socket (and aiomqtt's reader) without DISCONNECT

    async def disconnect(self) -> None:
        client = self._client
        if client is None:
            return
        if self._connected:
            self._closing = DisconnectNotice("client")
            try:
                async with asyncio.timeout(5.0):
                    await client.__aexit__(None, None, None)
            except (TimeoutError, aiomqtt.MqttError):
                self.abort()
        await self._stop_pump()

    def abort(self) -> None:
        was_connected = self._connected
        self._closing = DisconnectNotice("aborted")
        self._abort_socket()
        if was_connected:
            self._lost(mqtt.DisconnectFlags(False), mqtt.ReasonCode(mqtt.PacketTypes.DISCONNECT, "Unspecified error"))
        if self._client is not None and self._client._lock.locked():
            self._client._lock.release()  # the context manager cannot be exited any more

    async def _stop_pump(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            try:
                await pump
            except (asyncio.CancelledError, aiomqtt.MqttError):
                pass

    # -------------------------------------------------------------------------------------- publish / subscribe

    async def _until_closed(self, coro):
        """Run an aiomqtt call; (True, result) -- or (False, None) as soon as the connection is lost."""
        task = asyncio.ensure_future(coro)
        closed = self._closed
        await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[arg-type]
        if task.done():
            return True, task.result()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, aiomqtt.MqttError):
            pass
        return False, None

    async def _publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False) -> PublishResult:
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} is not offered (0 or 1; AWS IoT Core has no QoS 2)")
        if not self._connected or self._client is None:
            return PublishResult(False, "not-connected")
        started = self.clock()
        slot: list[int] = []
        token = _publish_slot.set(slot)
        try:
            done, _ = await self._until_closed(self._client.publish(topic, payload, qos, retain, timeout=math.inf))
        except aiomqtt.MqttCodeError:
            return PublishResult(False, "closed")
        finally:
            _publish_slot.reset(token)
        mid = slot[0] if slot else None
        latency = self.clock() - started
        if not done:
            return PublishResult(False, "closed", mid, latency=latency)
        if qos == 0:
            return PublishResult(True, "sent")
        code = self._codes.pop(mid, 0) if mid is not None else 0
        ok = code < 0x80
        return PublishResult(ok, "acked" if ok else "refused", mid, code, latency)

    async def _subscribe(self, *filters: str, qos: int = 1) -> SubscribeResult:
        if not self._connected or self._client is None:
            return SubscribeResult(False, "not-connected")
        started = self.clock()
        try:
            done, codes = await self._until_closed(
                self._client.subscribe([(f, qos) for f in filters], timeout=math.inf))
        except aiomqtt.MqttCodeError:
            return SubscribeResult(False, "closed")
        if not done:
            return SubscribeResult(False, "closed", latency=self.clock() - started)
        values = tuple(int(getattr(c, "value", c)) for c in codes)
        ok = all(v < 0x80 for v in values)
        return SubscribeResult(ok, "granted" if ok else "refused", values, None, self.clock() - started)

    # -------------------------------------------------------------------------------------- messages

    async def _pump_messages(self, client: aiomqtt.Client) -> None:
        inbox = self._inbox_for()
        try:
            async for m in client.messages:
                inbox.put(Publish(str(m.topic), bytes(m.payload) if m.payload is not None else b"", m.qos,
                                  bool(m.retain), False, m.mid if m.qos else None))
        except aiomqtt.MqttError:
            pass

    def _inbox_for(self) -> Inbox:
        if self._inbox is None:
            self._inbox = Inbox(self.options.inbox_size)
        return self._inbox

    def messages(self) -> AsyncIterator[Publish]:
        """Every message received while connected, in order (read from aiomqtt's ``Client.messages``)."""
        return aiter(self._inbox_for())

    def __repr__(self) -> str:
        return f"<AiomqttLink {self._client_id} {'connected' if self._connected else 'disconnected'}>"
