"""The paho connector: paho-mqtt 2 on the caller's asyncio loop, no thread per device.

paho runs in its external-loop mode: ``on_socket_open/close/register_write/unregister_write`` put its socket
on the event loop (``loop_read``/``loop_write`` as reader and writer callbacks, ``loop_misc`` once a second
for keepalive), paho's documented asyncio pattern. paho's own ``connect()`` would block the loop for TCP and
the TLS handshake, so the link opens the TLS connection itself -- DNS, TCP and the handshake awaited on the
loop, each timed -- and hands the finished socket to paho (:class:`_Client` overrides paho's socket factory,
``Client._create_socket``, a private method of paho-mqtt 2). paho then writes CONNECT and reads CONNACK.

TLS: one ``SSLContext`` per identity, built on the first connect and kept for reconnects (TLS 1.2 minimum,
server certificate and host name verified; there is no way to turn that off). A TLS alert that arrives after
the client finished its handshake (TLS 1.3: the server refuses the client certificate then) is caught where
paho reads, so it is reported as ``Reason.TLS`` with OpenSSL's reason rather than as a plain close.

Options: ``protocol_level`` 4/5, ``keep_alive``, ``clean_start``, ``session_expiry`` (MQTT 5), ``will``,
``username``/``password``, ``max_inflight`` (paho's inflight window; further publishes queue inside paho),
``connect_timeout`` (TCP + TLS + CONNACK), ``inbox_size``, ``max_resends`` 0 (paho re-sends unacknowledged
QoS 1 publishes itself on a reconnect of the same client object, without a limit; this link never reconnects,
so nothing is ever re-sent: 0 is what it does, any other limit is refused). Not supported:
``max_packet_size`` and ``ping_timeout`` (paho: a PINGRESP is awaited for one keep-alive interval).

Not reported: PUBACK/SUBACK/CONNACK properties and the properties of received messages (``Publish.properties``
is empty); ``dup`` and ``packet_id`` of received messages are paho's values.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from devices.client import (ClientOptions, ConnectOutcome, ConnectTimings, DisconnectNotice, Endpoint,
                            PublishResult, Reason, SubscribeResult)
from devices.connectors._common import (LinkBase, Inbox, code_name, connack_code, is_tls_failure, tls_detail,
                                        tls_version_of)
from devices.identity import DeviceIdentity
from gateway.mqtt import Publish


class PahoConnector:
    name = "paho"

    def link(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str, options: ClientOptions,
             on_disconnect: Callable[[DisconnectNotice], None] | None = None) -> PahoLink:
        return PahoLink(identity, endpoint, client_id=client_id, options=options, on_disconnect=on_disconnect)


def check_options(options: ClientOptions, library: str) -> None:
    """Refuse what a paho-based link cannot honour, rather than silently doing something else."""
    if options.max_resends not in (None, 0):
        raise ValueError(f"{library}: max_resends={options.max_resends} is not supported (the link never "
                         "reconnects, so it never re-sends: use 0 or leave it None)")


def paho_will(options: ClientOptions) -> dict | None:
    will = options.will
    if will is None:
        return None
    return dict(topic=will.topic, payload=will.payload, qos=will.qos, retain=will.retain)


def connect_properties(options: ClientOptions) -> PahoProperties | None:
    if options.protocol_level != 5 or not options.session_expiry:
        return None
    props = PahoProperties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = options.session_expiry
    return props


def publish_from_paho(message: mqtt.MQTTMessage) -> Publish:
    return Publish(message.topic, bytes(message.payload), message.qos, bool(message.retain), bool(message.dup),
                   message.mid if message.qos else None)


class _Client(mqtt.Client):
    """paho's client, handed an already open TLS socket, remembering the TLS error that ended a read."""

    prepared: ssl.SSLSocket | None = None
    read_error: BaseException | None = None

    def _create_socket(self):  # paho-mqtt 2: called by reconnect() for a new connection
        sock, self.prepared = self.prepared, None
        if sock is None:
            raise ConnectionError("no prepared TLS connection (the link connects, not paho)")
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:
        try:
            return super()._sock_recv(bufsize)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            raise
        except OSError as exc:
            self.read_error = exc
            raise


class _Stage(Exception):
    def __init__(self, stage: str, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.stage = stage
        self.reason = reason
        self.detail = detail


async def open_tls(loop: asyncio.AbstractEventLoop, endpoint: Endpoint, context: ssl.SSLContext,
                   times: dict[str, float | None], clock: Callable[[], float]) -> ssl.SSLSocket:
    """DNS, TCP and the TLS handshake of one connection on the loop, each stage timed into ``times``."""
    t = clock()
    try:
        infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _Stage("dns", Reason.DNS, f"{endpoint.host}: {exc}") from None
    times["dns"] = clock() - t
    t = clock()
    sock: socket.socket | None = None
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            break
        except OSError as exc:
            sock.close()
            sock, error = None, exc
    if sock is None:
        raise _Stage("tcp", Reason.TCP, f"{endpoint.host}:{endpoint.port}: {error}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times["tcp"] = clock() - t
    t = clock()
    tls = context.wrap_socket(sock, server_hostname=endpoint.sni, do_handshake_on_connect=False)
    fd = tls.fileno()
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                waiter = loop.create_future()
                loop.add_reader(fd, waiter.set_result, None)
                try:
                    await waiter
                finally:
                    loop.remove_reader(fd)
            except ssl.SSLWantWriteError:
                waiter = loop.create_future()
                loop.add_writer(fd, waiter.set_result, None)
                try:
                    await waiter
                finally:
                    loop.remove_writer(fd)
    except ssl.SSLError as exc:
        tls.close()
        if is_tls_failure(exc):
            raise _Stage("tls", Reason.TLS, tls_detail(exc)) from None
        raise _Stage("tls", Reason.CLOSED, tls_detail(exc)) from None
    except OSError as exc:
        tls.close()
        raise _Stage("tls", Reason.CLOSED, str(exc)) from None
    except BaseException:
        tls.close()
        raise
    times["tls"] = clock() - t
    return tls


class PahoLink(LinkBase):
    """One device on paho-mqtt 2 (see the module docstring for what it supports). One connection per
    :meth:`connect`; no automatic reconnect."""

    def __init__(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str, options: ClientOptions,
                 on_disconnect: Callable[[DisconnectNotice], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        check_options(options, "paho")
        super().__init__(identity, endpoint, client_id=client_id, options=options, on_disconnect=on_disconnect,
                         clock=clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._misc: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future | None = None
        self._closed: asyncio.Future | None = None
        self._closing: DisconnectNotice | None = None
        self._publishes: dict[int, tuple[asyncio.Future, float]] = {}
        self._subscribes: dict[int, tuple[asyncio.Future, float]] = {}
        self._inbox: Inbox | None = None
        self._client = self._make_client()

    def _make_client(self) -> _Client:
        o = self.options
        v5 = o.protocol_level == 5
        kwargs = {} if v5 else {"clean_session": o.clean_start}
        client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, reconnect_on_failure=False, **kwargs)
        client.max_inflight_messages_set(o.max_inflight)
        client.max_queued_messages_set(0)
        if o.will is not None:
            client.will_set(**paho_will(o))
        if o.username is not None or o.password is not None:
            client.username_pw_set(o.username, o.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    # -------------------------------------------------------------------------------------- state

    # -------------------------------------------------------------------------------------- connect

    async def connect(self) -> ConnectOutcome:
        if self._connack is not None or self._connected:
            raise RuntimeError(f"{self._client_id}: connect() while connecting or connected")
        loop = self._loop = asyncio.get_running_loop()
        clock = self.clock
        times: dict[str, float | None] = {"dns": None, "tcp": None, "tls": None}
        started = clock()
        o = self.options

        def outcome(ok: bool, reason: Reason, detail: str = "", *, code: int | None = None, connack=None,
                    session_present: bool = False, tls_version: str | None = None,
                    stage: str = "mqtt") -> ConnectOutcome:
            return ConnectOutcome(ok, reason, detail, code, session_present,
                                  ConnectTimings(times["dns"], times["tcp"], times["tls"], connack,
                                                 clock() - started), tls_version, stage)

        try:
            context = self.context()
        except (OSError, ssl.SSLError) as exc:
            return outcome(False, Reason.IDENTITY, f"{self.identity.cert_file}: {exc}", stage="identity")
        client = self._client
        client.read_error = None
        self._closing = None
        connack = self._connack = loop.create_future()
        self._closed = loop.create_future()
        sent_at: float | None = None
        tls_version = None
        try:
            async with asyncio.timeout(o.connect_timeout):
                sock = await open_tls(loop, self.endpoint, context, times, clock)
                tls_version = tls_version_of(sock)
                client.prepared = sock
                kwargs = {}
                if o.protocol_level == 5:
                    kwargs = {"clean_start": o.clean_start, "properties": connect_properties(o)}
                sent_at = clock()
                client.connect(self.endpoint.host, self.endpoint.port, keepalive=o.keep_alive, **kwargs)
                kind, value, session_present = await connack
        except _Stage as exc:
            self._connack = None
            return outcome(False, exc.reason, exc.detail, stage=exc.stage)
        except TimeoutError:
            self._connack = None
            self._drop()
            stage = next((s for s in ("dns", "tcp", "tls") if times[s] is None), "mqtt")
            what = "CONNACK" if stage == "mqtt" else stage.upper()
            return outcome(False, Reason.TIMEOUT, f"no {what} within {o.connect_timeout:g} s", stage=stage)
        except BaseException:
            self._connack = None
            self._drop()
            raise
        self._connack = None
        connack_s = clock() - sent_at if sent_at is not None else None
        if kind == "connected":
            self._connected = True
            self._schedule_misc()
            return outcome(True, Reason.CONNECTED, code=0, connack=connack_s, session_present=session_present,
                           tls_version=tls_version)
        self._drop()
        if kind == "refused":
            return outcome(False, Reason.REFUSED, code_name(o.protocol_level, value), code=value,
                           connack=connack_s, tls_version=tls_version)
        if kind == "server":  # MQTT 5 DISCONNECT instead of CONNACK
            return outcome(False, Reason.CLOSED, f"DISCONNECT {code_name(5, value)}", code=value,
                           tls_version=tls_version)
        error = client.read_error
        if is_tls_failure(error):
            return outcome(False, Reason.TLS, tls_detail(error), tls_version=tls_version, stage="tls")
        detail = str(error) if error is not None else "the server closed the connection"
        return outcome(False, Reason.CLOSED, detail, tls_version=tls_version)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        future = self._connack
        if future is None or future.done():
            return
        if reason_code.is_failure:
            future.set_result(("refused", connack_code(self.options.protocol_level, reason_code.value), False))
        else:
            future.set_result(("connected", None, bool(flags.session_present)))

    # -------------------------------------------------------------------------------------- paho's socket on the loop

    def _on_socket_open(self, client, userdata, sock) -> None:
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)  # type: ignore[union-attr]

    def _readable(self) -> None:
        client = self._client
        client.loop_read()
        sock = client.socket()
        # decrypted bytes may wait inside the SSL object, invisible to the selector
        while sock is not None and sock.pending() > 0 and client.socket() is sock:
            client.loop_read()

    def _on_socket_close(self, client, userdata, sock) -> None:
        if self._fd >= 0 and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = -1

    def _on_register_write(self, client, userdata, sock) -> None:
        if self._fd >= 0:
            self._loop.add_writer(self._fd, client.loop_write)  # type: ignore[union-attr]

    def _on_unregister_write(self, client, userdata, sock) -> None:
        if self._fd >= 0:
            self._loop.remove_writer(self._fd)  # type: ignore[union-attr]

    def _schedule_misc(self) -> None:
        if self._connected and self._loop is not None:
            self._misc = self._loop.call_later(1.0, self._misc_due)

    def _misc_due(self) -> None:
        self._misc = None
        if self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            self._schedule_misc()

    # -------------------------------------------------------------------------------------- ending

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        future = self._connack
        if future is not None and not future.done():
            if flags.is_disconnect_packet_from_server:
                future.set_result(("server", reason_code.value, False))
            else:
                future.set_result(("closed", None, False))
        self._ended(flags, reason_code)

    def _ended(self, flags=None, reason_code=None) -> None:
        was_connected, self._connected = self._connected, False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        self._fail_pending("closed")
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if not was_connected:
            return
        notice = self._closing
        if notice is None:
            error = self._client.read_error
            if flags is not None and flags.is_disconnect_packet_from_server:
                notice = DisconnectNotice("server", code_name(5, reason_code.value), reason_code.value)
            elif is_tls_failure(error):
                notice = DisconnectNotice("tls", tls_detail(error))
            elif reason_code is not None and reason_code.value == 0x8D:
                notice = DisconnectNotice("keepalive", "no PINGRESP within the keep-alive interval")
            else:
                notice = DisconnectNotice("closed", str(error) if error else "the server closed the connection")
        self._closing = None
        if self.on_disconnect is not None:
            self.on_disconnect(notice)

    def _fail_pending(self, reason: str) -> None:
        for table, kind in ((self._publishes, PublishResult), (self._subscribes, SubscribeResult)):
            pending = list(table.items())
            table.clear()
            for mid, (future, started) in pending:
                if not future.done():
                    future.set_result(kind(False, reason, packet_id=mid, latency=self.clock() - started))

    def _drop(self) -> None:
        """Give a connection up at once (no DISCONNECT): close paho's socket with a reset."""
        client = self._client
        sock = client.socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
        client._sock_close()  # paho-mqtt 2: closes the socket, on_socket_close; no on_disconnect
        prepared, client.prepared = client.prepared, None
        if prepared is not None:
            prepared.close()

    async def disconnect(self) -> None:
        """DISCONNECT and close; waits (5 s at most) for paho to close the socket, then drops it."""
        if not self._connected:
            self._drop()
            return
        self._closing = DisconnectNotice("client")
        self._client.disconnect()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(self._closed)  # type: ignore[arg-type]
        except TimeoutError:
            self._drop()
            self._ended()

    def abort(self) -> None:
        if self._connected:
            self._closing = DisconnectNotice("aborted")
            self._drop()
            self._ended()
        else:
            self._drop()

    # -------------------------------------------------------------------------------------- publish / subscribe

    async def _publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False) -> PublishResult:
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} is not offered (0 or 1; AWS IoT Core has no QoS 2)")
        if not self._connected:
            return PublishResult(False, "not-connected")
        started = self.clock()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return PublishResult(False, "not-connected" if info.rc == mqtt.MQTT_ERR_NO_CONN else "closed")
        if qos == 0:
            return PublishResult(True, "sent")
        future = asyncio.get_running_loop().create_future()
        self._publishes[info.mid] = (future, started)
        return await future

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        entry = self._publishes.pop(mid, None)
        if entry is None or entry[0].done():
            return
        future, started = entry
        code = int(reason_code.value)
        ok = code < 0x80
        future.set_result(PublishResult(ok, "acked" if ok else "refused", mid, code, self.clock() - started))

    async def _subscribe(self, *filters: str, qos: int = 1) -> SubscribeResult:
        if not self._connected:
            return SubscribeResult(False, "not-connected")
        started = self.clock()
        result, mid = self._client.subscribe([(f, qos) for f in filters])
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return SubscribeResult(False, "not-connected")
        future = asyncio.get_running_loop().create_future()
        self._subscribes[mid] = (future, started)
        return await future

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        entry = self._subscribes.pop(mid, None)
        if entry is None or entry[0].done():
            return
        future, started = entry
        codes = tuple(int(rc.value) for rc in reason_codes)
        ok = all(c < 0x80 for c in codes)
        future.set_result(SubscribeResult(ok, "granted" if ok else "refused", codes, mid, self.clock() - started))

    # -------------------------------------------------------------------------------------- messages

    def _on_message(self, client, userdata, message) -> None:
        if self._inbox is not None:
            self._inbox.put(publish_from_paho(message))

    def messages(self) -> AsyncIterator[Publish]:
        """Every message received from this call on; reading pauses while ``inbox_size`` are unread."""
        if self._inbox is None:
            self._inbox = Inbox(self.options.inbox_size, self._pause, self._resume)
        return aiter(self._inbox)

    def _pause(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)  # type: ignore[union-attr]

    def _resume(self) -> None:
        if self._fd >= 0:
            self._loop.add_reader(self._fd, self._readable)  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"<PahoLink {self._client_id} {'connected' if self._connected else 'disconnected'}>"
