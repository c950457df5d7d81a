"""One simulated device for gevent (Locust): the project's MQTT core and memory-BIO TLS on gevent's event loop.

    device = GeventDevice(identity, Endpoint("127.0.0.1", 8883))
    outcome = device.connect()                 # ConnectOutcome with tcp / tls / connack seconds; never raises
    result = device.publish("dt/device-00001/t", b"21.5", qos=1)    # PublishResult, latency to the PUBACK
    device.disconnect()

The protocol is :class:`devices.client.ClientCore` (sans-IO) and the TLS is :class:`devices.transport.MemoryBIOLink`
(the same code the asyncio fleet simulator runs); only the shell is gevent's. Calls block the calling greenlet
only; everything a connection receives is handled by callbacks of gevent's loop (an I/O watcher per socket and a
keepalive timer), so an idle device costs no greenlet of its own -- only the Locust user's, asleep.

Each stage is timed where it happens: ``tcp`` from ``connect()`` to the socket becoming writable, ``tls`` from
the ClientHello to the end of the handshake, ``connack`` from writing CONNECT to reading CONNACK, and a PUBACK
or SUBACK from writing the request to reading its acknowledgement (the time is taken in the loop's callback, not
when the waiting greenlet next runs). The identity's SSLContext is built before the TCP connect and is not part
of any stage.

Verification cannot be turned off: the link verifies the server's chain and name against the identity's CA
(see :mod:`devices.transport`).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

import gevent
import gevent.event
import gevent.monkey
import gevent.socket

from devices.client import (
    DEFAULT_OPTIONS,
    ClientCore,
    ClientOptions,
    Connected,
    ConnectOutcome,
    ConnectRefused,
    ConnectTimings,
    DisconnectNotice,
    MessageReceived,
    PongReceived,
    ProtocolViolation,
    PublishAbandoned,
    PublishAcked,
    PublishResult,
    Reason,
    ServerDisconnected,
    State,
    Subscribed,
    SubscribeResult,
    Unsubscribed,
    keepalive_step,
)
from devices.client import _code_name, _exc_detail, _is_tls  # one wording of refusals for both shells
import dataclasses
import datetime as dt

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, RejectData,
                            Request)

from devices.identity import DeviceIdentity
from devices.limits import bind_source
from devices.token_devices import TokenIdentity
from devices.transport import DeviceTLS, Endpoint, LinkTimings, MemoryBIOLink, TransportError
from devices.transport import _is_ip, _os_error
from gateway.mqtt import Publish, Subscription

__all__ = ["GeventDevice"]

logger = logging.getLogger(__name__)

# The unpatched socket class: its non-blocking calls return EAGAIN instead of switching greenlets, which is what
# a callback of the loop (the hub) needs.
_socket_class = gevent.monkey.get_original("socket", "socket")
_READ = 1
_WRITE = 2
_RECV_SIZE = 64 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)


class _Future(gevent.event.AsyncResult):
    """An AsyncResult with the three methods of an asyncio future that MemoryBIOLink calls."""

    __slots__ = ()

    def done(self) -> bool:
        return self.ready()

    def set_result(self, value) -> None:
        self.set(value)


class _Stream:
    """The part of an asyncio transport MemoryBIOLink uses, over a connected non-blocking socket on gevent's loop.

    ``connection_lost`` is delivered from a loop callback, never from inside ``write``/``close``/``abort``.
    """

    __slots__ = ("_closed", "_closing", "_loop", "_out", "_protocol", "_reader", "_sock", "_writer")

    def __init__(self, sock: socket.socket, protocol) -> None:
        self._loop = gevent.get_hub().loop
        self._sock = sock
        self._protocol = protocol
        self._out: bytearray | None = None
        self._writer = None
        self._closing = False
        self._closed = False
        self._reader = self._loop.io(sock.fileno(), _READ)
        protocol.connection_made(self)
        if not self._closed:
            self._reader.start(self._readable)

    def _readable(self) -> None:
        try:
            data = self._sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        try:
            if data:
                self._protocol.data_received(data)
            else:
                self._protocol.eof_received()
                self._lose(None)
        except Exception as exc:  # a bug in one connection's handling ends that connection only, and says so
            logger.exception("device connection failed while handling received data")
            self._lose(exc, rst=True)

    def write(self, data: bytes) -> None:
        if self._closed or self._closing or not data:
            return
        if self._out is not None:
            self._out += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lose(exc)
            return
        if sent < len(data):
            self._out = bytearray(memoryview(data)[sent:])
            self._writer = self._loop.io(self._sock.fileno(), _WRITE)
            self._writer.start(self._writable)

    def _writable(self) -> None:
        out = self._out
        try:
            sent = self._sock.send(out) if out else 0
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        del out[:sent]
        if out:
            return
        self._out = None
        self._stop(self._writer)
        self._writer = None
        if self._closing:
            self._lose(None)

    def close(self) -> None:
        """Close once everything written is sent (FIN)."""
        if self._closed or self._closing:
            return
        self._closing = True
        self._reader.stop()
        if self._out is None:
            self._lose(None)

    def abort(self) -> None:
        """Drop at once (RST)."""
        self._lose(None, rst=True)

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def pause_reading(self) -> None:
        if not self._closed:
            self._reader.stop()

    def resume_reading(self) -> None:
        if not self._closed and not self._closing:
            self._reader.start(self._readable)

    def get_extra_info(self, name: str, default=None):
        return default

    @staticmethod
    def _stop(watcher) -> None:
        if watcher is not None:
            watcher.stop()
            watcher.close()

    def _lose(self, exc: BaseException | None, *, rst: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop(self._reader)
        self._stop(self._writer)
        self._writer = None
        self._out = None
        sock = self._sock
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            self._loop.closing_fd(sock.fileno())
        except OSError:
            pass
        sock.close()
        self._loop.run_callback(self._protocol.connection_lost, exc)


class _WebSocket:
    """MQTT in WebSocket binary frames (wsproto) between a TLS link and the device's sink; the signed upgrade
    first. It is the link's handler (bytes in) and, once upgraded, the device's link (bytes out)."""

    __slots__ = ("_body", "_status", "link", "sink", "upgraded", "ws")

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.upgraded = _Future()
        self.link = None
        self._status: int | None = None
        self._body = bytearray()

    def start(self, link, host: str, target: str) -> None:
        self.link = link
        link.write(self.ws.send(Request(host=host, target=target, subprotocols=["mqtt"])))

    # the TLS link's handler
    def on_data(self, data: bytes) -> None:
        self.ws.receive_data(data)
        out = bytearray()
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                if not self.upgraded.ready():
                    self.upgraded.set(None)
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
                self.link.write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.link.close()
        if out:
            self.sink.on_data(bytes(out))

    def _refused(self) -> None:
        if not self.upgraded.ready():
            body = bytes(self._body).decode("utf-8", "replace")[:300]
            self.upgraded.set_exception(TransportError("http", f"HTTP {self._status}", body))

    def on_close(self, exc: BaseException | None) -> None:
        if not self.upgraded.ready():
            self.upgraded.set_exception(TransportError("closed", "closed during the WebSocket upgrade",
                                                       str(exc) if exc else ""))
            return
        self.sink.on_close(exc)

    # the device's link
    def write(self, data: bytes) -> None:
        self.link.write(self.ws.send(BytesMessage(data=data)))

    def close(self) -> None:
        try:
            self.link.write(self.ws.send(CloseConnection(code=1000)))
        except Exception:  # noqa: BLE001 - not in a state to say goodbye: closed anyway
            pass
        self.link.close()

    def abort(self) -> None:
        self.link.abort()

    def pause_reading(self) -> None:
        self.link.pause_reading()

    def resume_reading(self) -> None:
        self.link.resume_reading()

    @property
    def tls_version(self) -> str | None:
        return self.link.tls_version


class _Sink:
    """Receives one link's events for the device; detached when the device gives that link up."""

    __slots__ = ("device",)

    def __init__(self, device: GeventDevice) -> None:
        self.device: GeventDevice | None = device

    def on_data(self, data: bytes) -> None:
        if self.device is not None:
            self.device._on_data(data)

    def on_close(self, exc: BaseException | None) -> None:
        device, self.device = self.device, None
        if device is not None:
            device._on_close(exc)


class GeventDevice:
    """One device: its identity, one TLS link at a time, the MQTT core. No reconnect logic: the caller decides.

    ``on_message(publish)`` is called from the loop for every PUBLISH received; ``on_lost(notice)`` when an
    accepted connection ends (also after :meth:`abort`, with reason ``aborted``; not after :meth:`disconnect`).
    ``keep_context``: keep the identity's SSLContext between connects (~30 KB per device, saves ~1-1.7 ms of CPU
    per connect); by default it is built for each connect and dropped after the handshake. ``tls`` replaces the
    identity's TLS material altogether (an attacker that presents no certificate).
    """

    __slots__ = ("_closing", "_connack", "_keepalive", "_last_write", "_link", "_loop", "_pending", "_ping_sent_at",
                 "_sink", "clock", "core", "endpoint", "local_addr", "on_lost", "on_message", "options", "tls")

    def __init__(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str | None = None,
                 options: ClientOptions = DEFAULT_OPTIONS, local_addr: str | None = None, keep_context: bool = False,
                 on_message: Callable[[Publish], None] | None = None,
                 on_lost: Callable[[DisconnectNotice], None] | None = None, tls: DeviceTLS | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.endpoint = endpoint
        self.options = options
        self.tls = tls or DeviceTLS(identity, alpn=endpoint.alpn, keep=keep_context)
        self.core = ClientCore(identity.thing_name if client_id is None else client_id, options)
        self.local_addr = local_addr
        self.on_message = on_message
        self.on_lost = on_lost
        self.clock = clock
        self._loop = gevent.get_hub().loop
        self._link: MemoryBIOLink | None = None
        self._sink: _Sink | None = None
        self._connack: _Future | None = None
        self._pending: dict[int, tuple[_Future, float]] = {}
        self._keepalive = None
        self._last_write = 0.0
        self._ping_sent_at: float | None = None
        self._closing: DisconnectNotice | None = None

    @property
    def client_id(self) -> str:
        return self.core.client_id

    @property
    def identity(self) -> DeviceIdentity:
        return self.tls.identity

    @property
    def connected(self) -> bool:
        return self.core.state is State.CONNECTED and self._link is not None

    # -------------------------------------------------------------------------------------- connect

    def connect(self) -> ConnectOutcome:
        """One attempt: TCP, TLS (mutual, server verified), CONNECT -> CONNACK, within ``connect_timeout``.
        Refusals and network failures are values (``ok`` false, ``reason``, ``stage``, ``detail``)."""
        if self._link is not None or self.core.state is not State.DISCONNECTED:
            raise RuntimeError(f"{self.client_id}: connect() while {self.core.state.value}")
        clock = self.clock
        started = clock()
        deadline = started + self.options.connect_timeout
        timings = LinkTimings()
        self._closing = None
        identity = self.tls.identity
        token = identity if isinstance(identity, TokenIdentity) else None
        if token is not None and token.auth == "token":   # a fresh token in each CONNECT
            self.core.options = dataclasses.replace(self.core.options, username=token.username(dt.datetime.now(dt.UTC)))
        try:
            context = self.tls.context()
            sock = self._tcp_connect(timings, deadline)
        except TransportError as exc:
            return self._outcome(False, Reason(exc.stage), _detail(exc), timings, started, stage=exc.stage)
        except TimeoutError:
            return self._timeout(timings, started)
        tls_started = clock()
        handshake = _Future()
        sink = self._sink = _Sink(self)
        websocket = _WebSocket(sink) if token is not None and token.auth == "sigv4" else None
        link = MemoryBIOLink(context, self.tls, self.endpoint, websocket or sink, handshake)
        _Stream(sock, link)
        try:
            handshake.get(timeout=max(0.0, deadline - clock()))
        except gevent.Timeout:
            sink.device = None
            link.abort()
            return self._timeout(timings, started)
        except TransportError as exc:
            sink.device = None
            return self._outcome(False, Reason.TLS, _detail(exc), timings, started, stage="tls")
        except BaseException:  # the greenlet was killed (the user stopped): nothing stays open
            sink.device = None
            link.abort()
            raise
        timings.tls = clock() - tls_started
        if websocket is not None:      # the signed upgrade, then MQTT in binary frames
            websocket.start(link, self.endpoint.sni, token.credential(dt.datetime.now(dt.UTC)))
            try:
                websocket.upgraded.get(timeout=max(0.0, deadline - clock()))
            except gevent.Timeout:
                sink.device = None
                link.abort()
                return self._timeout(timings, started)
            except TransportError as exc:
                sink.device = None
                link.abort()
                return self._outcome(False, Reason(exc.stage), _detail(exc), timings, started, stage=exc.stage)
            except BaseException:
                sink.device = None
                link.abort()
                raise
            link = websocket
        self._link = link
        connack = self._connack = _Future()
        self.core.connect()
        sent_at = clock()
        self._flush()
        try:
            kind, value = connack.get(timeout=max(0.0, deadline - clock()))
        except gevent.Timeout:
            self._drop_link()
            return self._timeout(timings, started)
        except BaseException:
            self._drop_link()
            raise
        finally:
            self._connack = None
        connack_s = clock() - sent_at if kind in ("connected", "refused") else None
        version = link.tls_version
        if kind == "connected":
            self._ping_sent_at = None
            self._arm_keepalive()
            return self._outcome(True, Reason.CONNECTED, "", timings, started, connack=connack_s, code=0,
                                 session_present=value.session_present, tls_version=version)
        self._drop_link()
        if kind == "refused":
            detail = _code_name(self.core.level, value.reason_code)
            if value.properties.reason_string:
                detail += f": {value.properties.reason_string}"
            return self._outcome(False, Reason.REFUSED, detail, timings, started, connack=connack_s,
                                 code=value.reason_code, tls_version=version)
        if kind == "server":
            return self._outcome(False, Reason.CLOSED, f"DISCONNECT {_code_name(5, value.reason_code)}", timings,
                                 started, code=value.reason_code, tls_version=version)
        if kind == "protocol":
            return self._outcome(False, Reason.PROTOCOL, str(value.error), timings, started, tls_version=version)
        reason = Reason.TLS if _is_tls(value) else Reason.CLOSED  # "closed": the link ended before CONNACK
        return self._outcome(False, reason, _exc_detail(value), timings, started, tls_version=version,
                             stage="tls" if reason is Reason.TLS else "mqtt")

    def _tcp_connect(self, timings: LinkTimings, deadline: float) -> socket.socket:
        clock = self.clock
        host, port = self.endpoint.host, self.endpoint.port
        started = clock()
        if _is_ip(host):
            infos = [(socket.AF_INET6 if ":" in host else socket.AF_INET, 0, 0, "", (host, port))]
        else:
            try:
                infos = gevent.socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise TransportError("dns", f"EAI_{exc.errno}", f"{host}: {exc.strerror}") from None
        timings.dns = clock() - started
        started = clock()
        error: TransportError | None = None
        for family, _, _, _, address in infos:
            try:
                sock = _socket_class(family, socket.SOCK_STREAM)
            except OSError as exc:  # EMFILE/ENFILE: out of descriptors (devices.limits raises the limit)
                raise _os_error("tcp", exc) from None
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.local_addr is not None:
                    bind_source(sock, self.local_addr)
                code = sock.connect_ex(address)
                if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                    gevent.socket.wait_write(sock.fileno(), timeout=max(0.0, deadline - clock()),
                                             timeout_exc=TimeoutError("tcp"))
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, f"{host}:{port}: {os.strerror(code)}")
            except OSError as exc:
                sock.close()
                if isinstance(exc, TimeoutError):
                    raise
                error = _os_error("tcp", exc)
                continue
            except BaseException:
                sock.close()
                raise
            timings.tcp = clock() - started
            return sock
        raise error or TransportError("tcp", "no-address", f"{host} resolved to no address")

    def _timeout(self, timings: LinkTimings, started: float) -> ConnectOutcome:
        stage = timings.stage
        what = "CONNACK" if stage == "mqtt" else stage.upper()
        return self._outcome(False, Reason.TIMEOUT, f"no {what} within {self.options.connect_timeout:g} s",
                             timings, started, stage=stage)

    def _outcome(self, ok: bool, reason: Reason, detail: str, timings: LinkTimings, started: float, *,
                 connack: float | None = None, code: int | None = None, session_present: bool = False,
                 tls_version: str | None = None, stage: str = "mqtt") -> ConnectOutcome:
        return ConnectOutcome(ok, reason, detail, code, session_present,
                              ConnectTimings(timings.dns, timings.tcp, timings.tls, connack, self.clock() - started),
                              tls_version, stage)

    # -------------------------------------------------------------------------------------- requests

    def publish(self, topic: str, payload: bytes = b"", qos: int = 1, *, retain: bool = False,
                timeout: float = 10.0) -> PublishResult:
        """QoS 0: written. QoS 1: waits for the PUBACK (``latency``: written -> PUBACK read)."""
        if not self.connected:
            return PublishResult(False, "not-connected")
        started = self.clock()
        pid = self.core.publish(topic, payload, qos, retain)
        if qos == 0:
            self._flush()
            return PublishResult(True, "sent")
        return self._wait(pid, started, timeout, PublishResult)

    def subscribe(self, *filters: str, qos: int = 1, timeout: float = 10.0) -> SubscribeResult:
        """SUBSCRIBE; waits for the SUBACK (``ok`` when every filter was granted)."""
        if not self.connected:
            return SubscribeResult(False, "not-connected")
        started = self.clock()
        pid = self.core.subscribe([Subscription(f, qos) for f in filters])
        return self._wait(pid, started, timeout, SubscribeResult)

    def _wait(self, pid: int, started: float, timeout: float, result_type):
        future = _Future()
        self._pending[pid] = (future, started)
        self._flush()
        try:
            return future.get(timeout=timeout)
        except gevent.Timeout:
            self._pending.pop(pid, None)
            return result_type(False, "timeout", packet_id=pid, latency=self.clock() - started)

    # -------------------------------------------------------------------------------------- closing

    def disconnect(self) -> None:
        """DISCONNECT, then TLS close_notify and FIN; ``on_lost`` is not called for it."""
        link = self._link
        if link is None:
            return
        self._closing = DisconnectNotice("client")
        self.core.disconnect()
        self._flush()
        self._drop_link(graceful=True)

    def abort(self) -> None:
        """Drop the connection at once (RST), as a crash or a pulled cable would; ``on_lost`` sees ``aborted``."""
        if self._link is not None:
            self._closing = DisconnectNotice("aborted")
            self._link.abort()

    def _drop_link(self, *, graceful: bool = False) -> None:
        link, self._link = self._link, None
        if self._sink is not None:
            self._sink.device = None
            self._sink = None
        self._cancel_keepalive()
        if self.core.state is not State.DISCONNECTED:
            self.core.connection_lost()
        self._fail_pending("connection-lost")
        if link is not None:
            link.close() if graceful else link.abort()

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        inflight = set(self.core.inflight)
        for pid, (future, started) in pending.items():
            result_type = PublishResult if pid in inflight else SubscribeResult
            future.set(result_type(False, reason, packet_id=pid, latency=self.clock() - started))

    # -------------------------------------------------------------------------------------- loop callbacks

    def _on_data(self, data: bytes) -> None:
        for event in self.core.receive_data(data):
            kind = type(event)
            if kind is MessageReceived:
                if self.on_message is not None:
                    self.on_message(event.publish)
            elif kind is PublishAcked:
                ok = event.reason_code < 0x80
                self._resolve(event.packet_id, PublishResult, ok, "acked" if ok else "refused",
                              reason_code=event.reason_code)
            elif kind is PublishAbandoned:
                self._resolve(event.packet_id, PublishResult, False, "abandoned")
            elif kind is Subscribed or kind is Unsubscribed:
                ok = all(code < 0x80 for code in event.reason_codes)
                self._resolve(event.packet_id, SubscribeResult, ok, "granted" if ok else "refused",
                              reason_codes=event.reason_codes)
            elif kind is PongReceived:
                self._ping_sent_at = None
            elif kind is Connected or kind is ConnectRefused:
                self._set_connack("connected" if kind is Connected else "refused", event)
            elif kind is ServerDisconnected:
                if not self._set_connack("server", event):
                    self._closing = DisconnectNotice("server", _code_name(5, event.reason_code), event.reason_code)
                    self._link.close()
            elif kind is ProtocolViolation:
                if not self._set_connack("protocol", event):
                    self._closing = DisconnectNotice("protocol", str(event.error))
                    self._flush()
                    self._link.close()
        self._flush()

    def _resolve(self, pid: int, result_type, ok: bool, reason: str, **fields) -> None:
        entry = self._pending.pop(pid, None)
        if entry is not None:
            future, started = entry
            future.set(result_type(ok, reason, packet_id=pid, latency=self.clock() - started, **fields))

    def _set_connack(self, kind: str, value) -> bool:
        connack = self._connack
        if connack is None or connack.ready():
            return False
        connack.set((kind, value))
        return True

    def _on_close(self, exc: BaseException | None) -> None:
        was_connected = self.core.state is State.CONNECTED
        self._link = None
        self._sink = None
        self._cancel_keepalive()
        self.core.connection_lost()
        self._fail_pending("connection-lost")
        if self._set_connack("closed", exc):
            return
        notice = self._closing
        self._closing = None
        if notice is None:
            if not was_connected:
                return
            notice = DisconnectNotice("tls" if _is_tls(exc) else "closed", _exc_detail(exc))
        if notice.reason != "client" and self.on_lost is not None:
            self.on_lost(notice)

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self._link is not None:
            self._link.write(data)
            self._last_write = self._loop.now()

    # -------------------------------------------------------------------------------------- keepalive

    def _arm_keepalive(self) -> None:
        keep_alive = self.core.keep_alive
        if keep_alive:
            self._last_write = self._loop.now()
            self._set_timer(keep_alive)

    def _set_timer(self, delay: float) -> None:
        self._cancel_keepalive()
        timer = self._keepalive = self._loop.timer(max(0.0, delay))
        timer.start(self._keepalive_due)

    def _cancel_keepalive(self) -> None:
        timer, self._keepalive = self._keepalive, None
        if timer is not None:
            timer.stop()
            timer.close()

    def _keepalive_due(self) -> None:
        if not self.connected:
            return
        now = self._loop.now()
        keep_alive = self.core.keep_alive
        ping_timeout = min(self.options.ping_timeout, keep_alive)
        action, when = keepalive_step(now, self._last_write, self._ping_sent_at, keep_alive, ping_timeout)
        if action == "timeout":
            self._closing = DisconnectNotice("keepalive", f"no PINGRESP within {ping_timeout:g} s")
            self._link.abort()
            return
        if action == "ping":
            self.core.ping()
            self._flush()
            self._ping_sent_at = now
        self._set_timer(when - now)

    def __repr__(self) -> str:
        return f"<GeventDevice {self.client_id} {self.core.state.value}>"


def _detail(exc: TransportError) -> str:
    return f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason
