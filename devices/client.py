"""A lean MQTT 3.1.1 / 5.0 device client: a sans-IO core and a thin asyncio shell.

:class:`ClientCore` is the protocol: ``connect()``, ``publish()``, ``subscribe()`` ... queue bytes
(``data_to_send()``); ``receive_data(bytes)`` returns events. No sockets, no clocks, no asyncio. Which packet
is acceptable in which state is one table (``_ACCEPTS``).

:class:`DeviceClient` is the shell: it opens a TLS link (:mod:`devices.transport`), feeds the core, resolves
awaitables, pings on keepalive, and reconnects with jittered exponential backoff (:mod:`devices.backoff`).

    client = DeviceClient(DeviceIdentity.load(dir), Endpoint("localhost", 8883))
    outcome = await client.connect()           # ConnectOutcome: refusals are values, never exceptions
    result = await client.publish("dt/dev-00001/t", b"21.5", qos=1)   # PublishResult, on PUBACK
    await client.disconnect()

Delivery guarantees. Unacknowledged QoS 1 publishes are the client's session state: they survive a lost
connection and are sent again on the next one -- with DUP=1 and their original packet identifier when the
server resumed the session (Session Present = 1) [MQTT-4.4.0-1], as new publishes (DUP=0) when it did not (the
old session state is discarded, MQTT 5.0 §3.2.2.1.1, but the application's messages are still owed at least
once). Packet identifiers are 1..65535, never two in use at once; at most ``max_inflight`` QoS 1 publishes
are outstanding (AWS IoT Core allows 100), further ``publish()`` calls wait for a slot. MQTT 5's Receive Maximum
of the server lowers how many are on the wire at once. QoS 2 is not offered (AWS IoT Core has none).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from devices.backoff import Backoff
from devices.identity import DeviceIdentity
from devices.token_devices import TokenIdentity
from devices.transport import DeviceTLS, Endpoint, Link, LinkTimings, Transport, TransportError, get_transport
from gateway.mqtt import (
    DEFAULT_MAX_PACKET_SIZE,
    NO_PROPERTIES,
    Connack,
    Connect,
    ConnectReturnCode,
    Disconnect,
    Frame,
    Framer,
    MQTTLocalError,
    MQTTProtocolError,
    Packet,
    PacketType,
    PingReq,
    Properties,
    PubAck,
    Publish,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    decode,
    encode,
    split_packet,
)

__all__ = [
    "ClientCore",
    "ClientOptions",
    "ConnectOutcome",
    "ConnectRefused",
    "ConnectTimings",
    "Connected",
    "DeviceClient",
    "DisconnectNotice",
    "InflightFull",
    "MessageReceived",
    "NotConnected",
    "PongReceived",
    "ProtocolViolation",
    "PublishAbandoned",
    "PublishAcked",
    "PublishResult",
    "Reason",
    "ServerDisconnected",
    "State",
    "SubscribeResult",
    "Subscribed",
    "UnsubscribeResult",
    "Unsubscribed",
    "keepalive_step",
]

MAX_PACKET_ID = 65535
_DUP = 0x08


# ============================================================================================ options

@dataclasses.dataclass(frozen=True, slots=True)
class ClientOptions:
    """How a device speaks MQTT; one value is shared by every device of a fleet.

    A session is *persistent* with MQTT 3.1.1 when ``clean_start`` is false (Clean Session = 0), with MQTT 5
    when ``session_expiry`` > 0 (seconds the server keeps it; AWS IoT Core: up to 1 h by default). Reconnects of
    a persistent session always ask to resume it (Clean Start = 0); ``clean_start`` applies to the first
    connect of a client object.

    ``max_resends`` bounds the at-least-once promise: a server that closes the connection instead of answering
    (AWS IoT Core does so for an unauthorized MQTT 3.1.1 publish) would otherwise see the same PUBLISH after
    every reconnect. A publish written on more than ``1 + max_resends`` connections without a PUBACK is dropped
    at the next CONNACK and reported as abandoned.
    """

    protocol_level: int = 4              # 4 = MQTT 3.1.1, 5 = MQTT 5.0
    keep_alive: int = 60                 # seconds; 0 = none (MQTT 5: the server may override it)
    clean_start: bool = True
    session_expiry: int = 0              # MQTT 5 Session Expiry Interval
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    max_inflight: int = 100              # outstanding QoS 1 publishes (AWS IoT Core: 100)
    max_resends: int | None = None       # give a QoS 1 publish up after this many re-sends (None: never)
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE  # largest packet accepted from the server
    connect_timeout: float = 10.0        # TCP + TLS + CONNACK of one attempt
    ping_timeout: float = 10.0           # PINGRESP must arrive within this (and within keep_alive)
    inbox_size: int = 1000               # messages() buffer; reading pauses while it is full

    def __post_init__(self) -> None:
        if self.protocol_level not in (4, 5):
            raise ValueError(f"protocol_level must be 4 (MQTT 3.1.1) or 5 (MQTT 5.0), not {self.protocol_level!r}")
        if not 0 <= self.keep_alive <= 65535:
            raise ValueError(f"keep_alive must be 0..65535 seconds, not {self.keep_alive}")
        if not 1 <= self.max_inflight <= MAX_PACKET_ID:
            raise ValueError(f"max_inflight must be 1..{MAX_PACKET_ID}, not {self.max_inflight}")
        if self.max_resends is not None and self.max_resends < 0:
            raise ValueError(f"max_resends must be >= 0 or None, not {self.max_resends}")
        if self.session_expiry and self.protocol_level != 5:
            raise ValueError("session_expiry is MQTT 5 only; MQTT 3.1.1 keeps a session with clean_start=False")

    @property
    def persistent(self) -> bool:
        return self.session_expiry > 0 if self.protocol_level == 5 else not self.clean_start


DEFAULT_OPTIONS = ClientOptions()


# ============================================================================================ events

@dataclasses.dataclass(frozen=True, slots=True)
class Connected:
    """CONNACK accepted. ``resent``: packet ids of QoS 1 publishes sent again with DUP=1 (session resumed)."""

    session_present: bool
    properties: Properties = NO_PROPERTIES
    resent: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectRefused:
    """CONNACK with a failure: a ConnectReturnCode (3.1.1) or ReasonCode (5.0)."""

    reason_code: int
    properties: Properties = NO_PROPERTIES


@dataclasses.dataclass(frozen=True, slots=True)
class PublishAcked:
    packet_id: int
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


@dataclasses.dataclass(frozen=True, slots=True)
class PublishAbandoned:
    """A QoS 1 publish dropped unacknowledged after ``max_resends`` re-sends (reported at a CONNACK)."""

    packet_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class Subscribed:
    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES


@dataclasses.dataclass(frozen=True, slots=True)
class Unsubscribed:
    packet_id: int
    reason_codes: tuple[int, ...] = ()
    properties: Properties = NO_PROPERTIES


@dataclasses.dataclass(frozen=True, slots=True)
class MessageReceived:
    publish: Publish


@dataclasses.dataclass(frozen=True, slots=True)
class PongReceived:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class ServerDisconnected:
    """An MQTT 5 DISCONNECT from the server."""

    reason_code: int
    properties: Properties = NO_PROPERTIES


@dataclasses.dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The server broke MQTT; the core queued a DISCONNECT (MQTT 5) and the connection must be closed."""

    error: MQTTProtocolError


Event = (Connected | ConnectRefused | PublishAcked | PublishAbandoned | Subscribed | Unsubscribed | MessageReceived
         | PongReceived | ServerDisconnected | ProtocolViolation)


class NotConnected(Exception):
    """The operation needs an accepted connection."""


class InflightFull(Exception):
    """``max_inflight`` QoS 1 publishes are outstanding."""


# ============================================================================================ core

class State(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"      # CONNECT sent, CONNACK awaited
    CONNECTED = "connected"


# Packets the server may send in each state; anything else is a protocol violation. DISCONNECT from the server
# exists in MQTT 5 only (checked in _on_disconnect).
_ACCEPTS: dict[State, dict[PacketType, str]] = {
    State.DISCONNECTED: {},
    State.CONNECTING: {PacketType.CONNACK: "_on_connack", PacketType.DISCONNECT: "_on_disconnect"},
    State.CONNECTED: {
        PacketType.PUBLISH: "_on_publish",
        PacketType.PUBACK: "_on_puback",
        PacketType.SUBACK: "_on_suback",
        PacketType.UNSUBACK: "_on_unsuback",
        PacketType.PINGRESP: "_on_pingresp",
        PacketType.DISCONNECT: "_on_disconnect",
    },
}


class _Outgoing:
    """One unacknowledged QoS 1 publish: its encoded bytes (DUP=0), on how many connections it was written,
    and whether it is on the wire of the current one."""

    __slots__ = ("data", "on_wire", "sends")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sends = 0
        self.on_wire = False


def _clause(level: int, v311: str, v5: str) -> str:
    return v5 if level == 5 else v311


class ClientCore:
    """The MQTT client protocol of one device, without I/O.

    ``trace(direction, packet)`` -- if given -- sees every packet value sent ("out") and received ("in").
    """

    __slots__ = ("_framer", "_inflight", "_next_id", "_on_wire", "_out", "_requests",
                 "_sent_clean_start", "assigned_client_id", "client_id", "connected_once", "keep_alive",
                 "options", "ping_outstanding", "send_quota", "server_max_packet", "server_max_qos", "state",
                 "trace", "unexpected_acks")

    def __init__(self, client_id: str, options: ClientOptions = DEFAULT_OPTIONS, *,
                 trace: Callable[[str, Packet], None] | None = None) -> None:
        self.client_id = client_id
        self.options = options
        self.trace = trace
        self.state = State.DISCONNECTED
        self.keep_alive = options.keep_alive
        self.connected_once = False
        self.assigned_client_id: str | None = None
        self.send_quota = options.max_inflight
        self.server_max_packet: int | None = None
        self.server_max_qos = 1
        self.ping_outstanding = False
        self.unexpected_acks = 0
        self._framer: Framer | None = None
        self._out: list[bytes] = []
        self._inflight: dict[int, _Outgoing] = {}
        self._on_wire = 0
        # SUBSCRIBE / UNSUBSCRIBE awaiting their ack: packet id -> (packet type, number of filters)
        self._requests: dict[int, tuple[PacketType, int]] = {}
        self._next_id = 1
        self._sent_clean_start = True

    # -------------------------------------------------------------------------------------- properties

    @property
    def level(self) -> int:
        return self.options.protocol_level

    @property
    def inflight(self) -> tuple[int, ...]:
        """Packet ids of unacknowledged QoS 1 publishes, oldest first."""
        return tuple(self._inflight)

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    @property
    def inflight_full(self) -> bool:
        return len(self._inflight) >= self.options.max_inflight

    # -------------------------------------------------------------------------------------- output

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _send(self, packet: Packet) -> None:
        self._send_bytes(encode(packet, self.level))

    def _send_bytes(self, data: bytes) -> None:
        self._out.append(data)
        if self.trace is not None:
            self.trace("out", decode(split_packet(data, self.level), self.level))

    # -------------------------------------------------------------------------------------- commands

    def connect(self) -> None:
        """Queue CONNECT for a new network connection."""
        if self.state is not State.DISCONNECTED:
            raise MQTTLocalError(f"connect() while {self.state.value}")
        o = self.options
        # reconnects of a persistent session resume it; a non-persistent session always starts clean
        clean = o.clean_start if not self.connected_once else not o.persistent
        properties = NO_PROPERTIES
        if self.level == 5:
            properties = Properties(session_expiry_interval=o.session_expiry or None,
                                    maximum_packet_size=o.max_packet_size)
        self._framer = Framer(o.max_packet_size, protocol_level=self.level)
        self._sent_clean_start = clean
        self.keep_alive = o.keep_alive
        self._send(Connect(client_id=self.client_id, protocol_level=self.level, clean_start=clean,
                           keep_alive=o.keep_alive, username=o.username, password=o.password, will=o.will,
                           properties=properties))
        self.state = State.CONNECTING

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                properties: Properties = NO_PROPERTIES) -> int | None:
        """Queue a PUBLISH. QoS 0 needs a connection (:class:`NotConnected`); QoS 1 is queued in the session
        even while disconnected and returns its packet id (:class:`InflightFull` at ``max_inflight``)."""
        if qos not in (0, 1):
            raise MQTTLocalError(f"QoS {qos} is not offered by this client (0 or 1; AWS IoT Core has no QoS 2)")
        if qos == 0:
            if self.state is not State.CONNECTED:
                raise NotConnected("QoS 0 publish without a connection")
            data = encode(Publish(topic, payload, 0, retain, properties=properties), self.level)
            self._check_size(data)
            self._send_bytes(data)
            return None
        if self.inflight_full:
            raise InflightFull(f"{len(self._inflight)} QoS 1 publishes are unacknowledged")
        if self.state is State.CONNECTED and self.server_max_qos < 1:
            raise MQTTLocalError("the server accepts QoS 0 only (CONNACK Maximum QoS = 0)")
        pid = self._allocate_id()
        data = encode(Publish(topic, payload, 1, retain, False, pid, properties), self.level)
        self._check_size(data)
        self._inflight[pid] = _Outgoing(data)
        if self.state is State.CONNECTED:
            self._pump(resume=False)
        return pid

    def subscribe(self, subscriptions: Sequence[Subscription], properties: Properties = NO_PROPERTIES) -> int:
        if self.state is not State.CONNECTED:
            raise NotConnected("SUBSCRIBE without a connection")
        if any(s.qos > 1 for s in subscriptions):
            raise MQTTLocalError("subscriptions are QoS 0 or 1 (AWS IoT Core has no QoS 2)")
        pid = self._allocate_id()
        self._send(Subscribe(pid, tuple(subscriptions), properties))
        self._requests[pid] = (PacketType.SUBACK, len(subscriptions))
        return pid

    def unsubscribe(self, topic_filters: Sequence[str], properties: Properties = NO_PROPERTIES) -> int:
        if self.state is not State.CONNECTED:
            raise NotConnected("UNSUBSCRIBE without a connection")
        pid = self._allocate_id()
        self._send(Unsubscribe(pid, tuple(topic_filters), properties))
        self._requests[pid] = (PacketType.UNSUBACK, len(topic_filters))
        return pid

    def ping(self) -> None:
        if self.state is State.CONNECTED:
            self._send(PingReq())
            self.ping_outstanding = True

    def disconnect(self, reason_code: int = ReasonCode.NORMAL_DISCONNECTION,
                   properties: Properties = NO_PROPERTIES) -> None:
        """Queue DISCONNECT (when connected); the connection is to be closed after it is written."""
        if self.state is State.CONNECTED:
            self._send(Disconnect(reason_code, properties) if self.level == 5 else Disconnect())
        self._lost(keep_output=True)

    def connection_lost(self) -> tuple[int, ...]:
        """The network connection ended. Returns the packet ids of SUBSCRIBE/UNSUBSCRIBE left unanswered (not
        session state: they are not sent again). Unacknowledged publishes stay for the next connection."""
        dropped = tuple(self._requests)
        self._lost()
        return dropped

    def _lost(self, *, keep_output: bool = False) -> None:
        """Back to DISCONNECTED; ``keep_output``: bytes still queued (a DISCONNECT) are to be written first."""
        self.state = State.DISCONNECTED
        self._framer = None
        if not keep_output:
            self._out.clear()
        self._requests.clear()
        self.ping_outstanding = False
        for entry in self._inflight.values():
            entry.on_wire = False
        self._on_wire = 0

    def _allocate_id(self) -> int:
        for _ in range(MAX_PACKET_ID):
            pid = self._next_id
            self._next_id = pid % MAX_PACKET_ID + 1
            if pid not in self._inflight and pid not in self._requests:
                return pid
        raise MQTTLocalError("all 65535 packet identifiers are in use")

    def _check_size(self, data: bytes) -> None:
        if self.server_max_packet is not None and len(data) > self.server_max_packet:
            raise MQTTLocalError(f"a {len(data)}-byte PUBLISH exceeds the server's Maximum Packet Size of "
                                 f"{self.server_max_packet} bytes")

    def _pump(self, *, resume: bool) -> list[int]:
        """Put queued QoS 1 publishes on the wire, oldest first, within the server's Receive Maximum."""
        resent = []
        for pid, entry in self._inflight.items():
            if self._on_wire >= self.send_quota:
                break
            if entry.on_wire:
                continue
            data = entry.data
            if resume and entry.sends:
                data = bytes((data[0] | _DUP,)) + data[1:]   # same packet id, DUP=1 [MQTT-4.4.0-1]
                resent.append(pid)
            entry.sends += 1
            entry.on_wire = True
            self._on_wire += 1
            self._send_bytes(data)
        return resent

    # -------------------------------------------------------------------------------------- input

    def receive_data(self, data: bytes) -> list[Event]:
        """Bytes from the server -> events (and queued answers such as PUBACK)."""
        events: list[Event] = []
        framer = self._framer
        if framer is None:
            return events
        try:
            for frame in framer.feed(data):
                handler = _ACCEPTS[self.state].get(frame.packet_type)
                if handler is None:
                    raise MQTTProtocolError(
                        f"{frame.packet_type.name} from the server while {self.state.value}",
                        ReasonCode.PROTOCOL_ERROR, _clause(self.level, "§4.8", "§4.13"), protocol_level=self.level)
                getattr(self, handler)(frame, events)
                if self.state is State.DISCONNECTED:
                    break
        except MQTTProtocolError as exc:
            events.append(self._violation(exc))
            return events
        if self._framer is framer and framer.buffered == 0:
            # nothing partial is pending: a fresh framer lets go of the last chunk it still references (an idle
            # device would otherwise keep its last received chunk, up to 16 KiB, for as long as it is idle)
            self._framer = Framer(self.options.max_packet_size, protocol_level=self.level)
        return events

    def _violation(self, exc: MQTTProtocolError) -> ProtocolViolation:
        if self.level == 5 and self.state is State.CONNECTED:
            code = exc.reason_code if exc.reason_code >= 0x80 else ReasonCode.PROTOCOL_ERROR
            self._send(Disconnect(code))
            self._lost(keep_output=True)
        else:
            self._lost()
        return ProtocolViolation(exc)

    def _decode(self, frame: Frame) -> Packet:
        packet = decode(frame, self.level)
        if self.trace is not None:
            self.trace("in", packet)
        return packet

    def _on_connack(self, frame: Frame, events: list[Event]) -> None:
        p: Connack = self._decode(frame)  # type: ignore[assignment]
        if p.reason_code != 0:
            self._lost()
            events.append(ConnectRefused(int(p.reason_code), p.properties))
            return
        if p.session_present and self._sent_clean_start:
            raise MQTTProtocolError("CONNACK says Session Present although Clean Start was set",
                                    ReasonCode.PROTOCOL_ERROR, _clause(self.level, "[MQTT-3.2.2-1]", "[MQTT-3.2.2-2]"),
                                    protocol_level=self.level)
        self.state = State.CONNECTED
        self.connected_once = True
        props = p.properties
        self.send_quota = self.options.max_inflight
        self.server_max_packet = None
        self.server_max_qos = 1
        if self.level == 5:
            if props.server_keep_alive is not None:
                self.keep_alive = props.server_keep_alive
            if props.receive_maximum is not None:
                self.send_quota = min(self.send_quota, props.receive_maximum)
            if props.maximum_packet_size is not None:
                self.server_max_packet = props.maximum_packet_size
            if props.maximum_qos is not None:
                self.server_max_qos = props.maximum_qos
            if props.assigned_client_identifier is not None:
                self.assigned_client_id = props.assigned_client_identifier
        limit = self.options.max_resends
        if limit is not None:
            for pid in [pid for pid, entry in self._inflight.items() if entry.sends > limit]:
                del self._inflight[pid]
                events.append(PublishAbandoned(pid))
        resent = self._pump(resume=p.session_present)
        events.append(Connected(p.session_present, props, tuple(resent)))

    def _on_publish(self, frame: Frame, events: list[Event]) -> None:
        p: Publish = self._decode(frame)  # type: ignore[assignment]
        if p.qos == 2:
            raise MQTTProtocolError("QoS 2 PUBLISH, although no subscription of this client grants QoS 2",
                                    ReasonCode.QOS_NOT_SUPPORTED if self.level == 5 else ReasonCode.PROTOCOL_ERROR,
                                    "§3.8.4", protocol_level=self.level)
        if p.properties.topic_alias is not None:
            raise MQTTProtocolError("PUBLISH with a Topic Alias, although this client allows none",
                                    ReasonCode.TOPIC_ALIAS_INVALID, "§3.3.2.3.4", protocol_level=self.level)
        events.append(MessageReceived(p))
        if p.qos == 1:
            self._send(PubAck(p.packet_id))  # type: ignore[arg-type]

    def _on_puback(self, frame: Frame, events: list[Event]) -> None:
        p: PubAck = self._decode(frame)  # type: ignore[assignment]
        entry = self._inflight.get(p.packet_id)
        if entry is None or not entry.on_wire:
            self.unexpected_acks += 1
            return
        del self._inflight[p.packet_id]
        self._on_wire -= 1
        events.append(PublishAcked(p.packet_id, int(p.reason_code), p.properties))
        self._pump(resume=False)

    def _on_suback(self, frame: Frame, events: list[Event]) -> None:
        p: SubAck = self._decode(frame)  # type: ignore[assignment]
        count = self._take_request(p.packet_id, PacketType.SUBACK)
        if count is None:
            return
        if len(p.reason_codes) != count:
            raise MQTTProtocolError(f"SUBACK has {len(p.reason_codes)} return codes for {count} topic filters",
                                    ReasonCode.PROTOCOL_ERROR, "[MQTT-3.9.3-1]", protocol_level=self.level)
        events.append(Subscribed(p.packet_id, tuple(int(c) for c in p.reason_codes), p.properties))

    def _on_unsuback(self, frame: Frame, events: list[Event]) -> None:
        p: UnsubAck = self._decode(frame)  # type: ignore[assignment]
        count = self._take_request(p.packet_id, PacketType.UNSUBACK)
        if count is None:
            return
        if self.level == 5 and len(p.reason_codes) != count:
            raise MQTTProtocolError(f"UNSUBACK has {len(p.reason_codes)} reason codes for {count} topic filters",
                                    ReasonCode.PROTOCOL_ERROR, "[MQTT-3.11.3-1]", protocol_level=self.level)
        events.append(Unsubscribed(p.packet_id, tuple(int(c) for c in p.reason_codes), p.properties))

    def _take_request(self, packet_id: int, ack: PacketType) -> int | None:
        """The filter count of the request ``ack`` answers, or None (counted) for an ack nobody asked for."""
        request = self._requests.get(packet_id)
        if request is None or request[0] is not ack:
            self.unexpected_acks += 1
            return None
        del self._requests[packet_id]
        return request[1]

    def _on_pingresp(self, frame: Frame, events: list[Event]) -> None:
        self._decode(frame)
        self.ping_outstanding = False
        events.append(PongReceived())

    def _on_disconnect(self, frame: Frame, events: list[Event]) -> None:
        if self.level != 5:
            raise MQTTProtocolError("DISCONNECT from the server (MQTT 3.1.1 servers close the connection instead)",
                                    ReasonCode.PROTOCOL_ERROR, "§3.14", protocol_level=self.level)
        p: Disconnect = self._decode(frame)  # type: ignore[assignment]
        self._lost()
        events.append(ServerDisconnected(int(p.reason_code), p.properties))


def keepalive_step(now: float, last_write: float, ping_sent_at: float | None, keep_alive: float,
                   ping_timeout: float) -> tuple[str | None, float | None]:
    """What the keepalive timer does at ``now``: ``("ping", next_check)``, ``("timeout", None)`` when a PINGRESP
    is overdue, or ``(None, next_check)``. A client must send some packet within every Keep Alive interval
    [MQTT-3.1.2-23]; ``ping_timeout`` is expected to be <= ``keep_alive``."""
    if ping_sent_at is not None:
        deadline = ping_sent_at + ping_timeout
        if now >= deadline:
            return "timeout", None
        return None, deadline
    due = last_write + keep_alive
    if now >= due:
        return "ping", now + ping_timeout
    return None, due


# ============================================================================================ results

class Reason(enum.StrEnum):
    """Why a connect attempt ended the way it did."""

    CONNECTED = "connected"
    REFUSED = "refused"            # CONNACK with a failure code
    IDENTITY = "identity"          # the device's own key/certificate files
    DNS = "dns"
    TCP = "tcp"                    # connection refused, unreachable, ...
    TLS = "tls"                    # handshake failure or TLS alert: server verification, client certificate
    CLOSED = "closed"              # the server closed the connection before CONNACK
    HTTP = "http"                  # the WebSocket upgrade was refused (an HTTP status: a refused signature)
    PROTOCOL = "protocol"          # the server sent something that is not MQTT
    TIMEOUT = "timeout"


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectTimings:
    """Seconds per stage of one connect attempt (``None``: not reached)."""

    dns: float | None = None
    tcp: float | None = None
    tls: float | None = None
    connack: float | None = None   # CONNECT written -> CONNACK read
    total: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectOutcome:
    """The result of one connect attempt. ``code`` is the CONNACK code when the server answered one."""

    ok: bool
    reason: Reason
    detail: str = ""
    code: int | None = None
    session_present: bool = False
    timings: ConnectTimings = ConnectTimings()
    tls_version: str | None = None
    stage: str = "mqtt"            # where it ended: identity | dns | tcp | tls | mqtt


@dataclasses.dataclass(frozen=True, slots=True)
class PublishResult:
    """``ok`` for QoS 0 once written, for QoS 1 on a PUBACK with a success code (< 0x80)."""

    ok: bool
    reason: str                    # sent | acked | refused | abandoned | not-connected | timeout | closed
    packet_id: int | None = None
    reason_code: int | None = None
    latency: float | None = None   # publish() -> PUBACK
    properties: Properties = NO_PROPERTIES


@dataclasses.dataclass(frozen=True, slots=True)
class SubscribeResult:
    """``ok`` when every filter was granted; ``reason_codes`` one per filter (granted QoS or failure >= 0x80)."""

    ok: bool
    reason: str                    # granted | refused | not-connected | connection-lost | timeout | closed
    reason_codes: tuple[int, ...] = ()
    packet_id: int | None = None
    latency: float | None = None
    properties: Properties = NO_PROPERTIES


UnsubscribeResult = SubscribeResult


@dataclasses.dataclass(frozen=True, slots=True)
class DisconnectNotice:
    """An accepted connection ended: ``reason`` is client | server (MQTT 5 DISCONNECT, ``code``) | closed |
    tls | keepalive | protocol | aborted."""

    reason: str
    detail: str = ""
    code: int | None = None


class _Sink:
    """Receives one link's events for the client; detached when the client gives that link up, so late events
    of an old link never touch a newer one."""

    __slots__ = ("client",)

    def __init__(self, client: DeviceClient) -> None:
        self.client: DeviceClient | None = client

    def on_data(self, data: bytes) -> None:
        client = self.client
        if client is not None:
            client._on_data(data)

    def on_close(self, exc: BaseException | None) -> None:
        client, self.client = self.client, None
        if client is not None:
            client._on_close(exc)


def _code_name(level: int, code: int) -> str:
    try:
        name = ConnectReturnCode(code).name if level == 4 else ReasonCode(code).name
    except ValueError:
        name = "UNKNOWN"
    return f"{name} (0x{code:02X})"


def _is_tls(exc: BaseException | None) -> bool:
    """A TLS-level refusal or failure (an alert, a bad record); a connection that merely ended without
    close_notify (a crashed or killed peer) is a plain close."""
    return isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError)


def _exc_detail(exc: BaseException | None) -> str:
    if exc is None:
        return "the server closed the connection"
    reason = getattr(exc, "reason", None)
    return f"{reason}: {exc}" if isinstance(reason, str) and reason else str(exc) or type(exc).__name__


# ============================================================================================ shell

class DeviceClient:
    """One simulated device: its identity, one TLS link at a time, the MQTT core, reconnects.

    ``transport``: ``"membio"`` (default, leanest) or ``"stdlib"`` (see :mod:`devices.transport`).
    ``keep_context``: keep the identity's SSLContext between connects (default: the transport's choice).
    ``on_message(publish)``: called for every PUBLISH received; without it, :meth:`messages` buffers them (once
    asked for), otherwise they are counted in ``messages_dropped``.
    ``on_outcome(outcome)``: every connect attempt; ``on_disconnect(notice)``: every accepted connection's end.
    """

    __slots__ = ("_connack", "_closed_waiters", "_connect_task", "_sink", "_inbox", "_inbox_waiter", "_keepalive",
                 "_last_write", "_link", "_loop", "_paused", "_pending", "_ping_sent_at", "_reconnect",
                 "_running", "_slot_waiters", "_connected_waiters", "_closing", "backoff", "clock",
                 "core", "endpoint", "last_disconnect", "last_outcome", "local_addr", "messages_dropped",
                 "on_disconnect", "on_message", "on_outcome", "options", "tls", "transport")

    def __init__(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str | None = None,
                 options: ClientOptions = DEFAULT_OPTIONS, transport: str | Transport = "membio",
                 keep_context: bool | None = None, backoff: Backoff | None = None, local_addr: str | None = None,
                 on_message: Callable[[Publish], None] | None = None,
                 on_outcome: Callable[[ConnectOutcome], None] | None = None,
                 on_disconnect: Callable[[DisconnectNotice], None] | None = None,
                 trace: Callable[[str, Packet], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter, tls: DeviceTLS | None = None) -> None:
        self.transport = get_transport(transport)
        self.endpoint = endpoint
        self.options = options
        keep = self.transport.keeps_context if keep_context is None else keep_context
        # ``tls``: other TLS material than the identity's certificate (a device that authenticates by token)
        self.tls = tls if tls is not None else DeviceTLS(identity, alpn=endpoint.alpn, keep=keep)
        self.core = ClientCore(identity.thing_name if client_id is None else client_id, options, trace=trace)
        self.backoff = backoff
        self.local_addr = local_addr
        self.on_message = on_message
        self.on_outcome = on_outcome
        self.on_disconnect = on_disconnect
        self.clock = clock
        self.last_outcome: ConnectOutcome | None = None
        self.last_disconnect: DisconnectNotice | None = None
        self.messages_dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: Link | None = None
        self._sink: _Sink | None = None
        self._connack: asyncio.Future | None = None
        self._pending: dict[int, tuple[asyncio.Future, float]] = {}
        self._slot_waiters: deque[asyncio.Future] | None = None  # made when publish() first has to wait
        self._connected_waiters: list[asyncio.Future] | None = None
        self._closed_waiters: list[asyncio.Future] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._last_write = 0.0
        self._ping_sent_at: float | None = None
        self._reconnect: asyncio.TimerHandle | None = None
        self._connect_task: asyncio.Task | None = None
        self._running = False
        self._closing: DisconnectNotice | None = None
        self._inbox: deque[Publish] | None = None
        self._inbox_waiter: asyncio.Future | None = None
        self._paused = False

    # -------------------------------------------------------------------------------------- state

    @property
    def client_id(self) -> str:
        return self.core.client_id

    @property
    def connected(self) -> bool:
        return self.core.state is State.CONNECTED

    @property
    def identity(self) -> DeviceIdentity:
        return self.tls.identity

    # -------------------------------------------------------------------------------------- connecting

    async def connect(self) -> ConnectOutcome:
        """One connect attempt: TCP, TLS (mutual, server verified), CONNECT -> CONNACK. Never raises for what
        the network or the server did; returns a :class:`ConnectOutcome`."""
        if self._connack is not None:
            raise RuntimeError(f"{self.client_id}: connect() while another connect is in progress")
        if self.core.state is not State.DISCONNECTED or self._link is not None:
            raise RuntimeError(f"{self.client_id}: connect() while {self.core.state.value}")
        loop = self._loop = asyncio.get_running_loop()
        clock = self.clock
        timings = LinkTimings()
        started = clock()
        connack_at: float | None = None
        sent_at: float | None = None
        connack = self._connack = loop.create_future()
        link: Link | None = None
        self._closing = None
        identity = self.tls.identity
        if isinstance(identity, TokenIdentity) and identity.auth == "token":   # a fresh token per connection
            self.core.options = dataclasses.replace(self.core.options,
                                                    username=identity.username(datetime.datetime.now(datetime.UTC)))
        sink = self._sink = _Sink(self)
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                link = await self.transport.connect(self.endpoint, self.tls, sink, timings,
                                                    local_addr=self.local_addr, clock=clock)
                self._link = link
                self.core.connect()
                sent_at = clock()
                self._flush()
                kind, value = await connack
                connack_at = clock()
        except TransportError as exc:
            outcome = self._outcome(False, Reason(exc.stage), f"{exc.reason}: {exc.detail}" if exc.detail
                                    else exc.reason, timings, started, stage=exc.stage)
            return self._finish_attempt(outcome)
        except TimeoutError:
            stage = timings.stage
            self._drop_link()
            outcome = self._outcome(False, Reason.TIMEOUT, f"no {'CONNACK' if stage == 'mqtt' else stage.upper()} "
                                    f"within {self.options.connect_timeout:g} s", timings, started, stage=stage)
            return self._finish_attempt(outcome)
        except BaseException:
            self._drop_link()
            raise
        finally:
            self._connack = None
        connack_s = connack_at - sent_at if connack_at is not None and sent_at is not None else None
        tls_version = link.tls_version if link is not None else None
        if kind == "connected":
            event: Connected = value
            outcome = self._outcome(True, Reason.CONNECTED, "", timings, started, connack=connack_s, code=0,
                                    session_present=event.session_present, tls_version=tls_version)
            self._ping_sent_at = None
            self._arm_keepalive()
            if self.backoff is not None:
                self.backoff.connected()
            self._wake_slots()
            waiters, self._connected_waiters = self._connected_waiters, None
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(outcome)
            return self._finish_attempt(outcome)
        self._drop_link()
        if kind == "refused":
            refused: ConnectRefused = value
            detail = _code_name(self.core.level, refused.reason_code)
            if refused.properties.reason_string:
                detail += f": {refused.properties.reason_string}"
            outcome = self._outcome(False, Reason.REFUSED, detail, timings, started, connack=connack_s,
                                    code=refused.reason_code, tls_version=tls_version)
        elif kind == "protocol":
            outcome = self._outcome(False, Reason.PROTOCOL, str(value.error), timings, started,
                                    tls_version=tls_version)
        elif kind == "server":
            disc: ServerDisconnected = value
            outcome = self._outcome(False, Reason.CLOSED, f"DISCONNECT {_code_name(5, disc.reason_code)}",
                                    timings, started, code=disc.reason_code, tls_version=tls_version)
        else:  # "closed": the link ended before CONNACK
            exc = value
            reason = Reason.TLS if _is_tls(exc) else Reason.CLOSED
            outcome = self._outcome(False, reason, _exc_detail(exc), timings, started, tls_version=tls_version,
                                    stage="tls" if reason is Reason.TLS else "mqtt")
        return self._finish_attempt(outcome)

    def _outcome(self, ok: bool, reason: Reason, detail: str, timings: LinkTimings, started: float, *,
                 connack: float | None = None, code: int | None = None, session_present: bool = False,
                 tls_version: str | None = None, stage: str = "mqtt") -> ConnectOutcome:
        return ConnectOutcome(ok, reason, detail, code, session_present,
                              ConnectTimings(timings.dns, timings.tcp, timings.tls, connack, self.clock() - started),
                              tls_version, stage)

    def _finish_attempt(self, outcome: ConnectOutcome) -> ConnectOutcome:
        self.last_outcome = outcome
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if self._sink is not None:
            self._sink.client = None
        self._cancel_keepalive()
        if self.core.state is not State.DISCONNECTED:
            self._fail_dropped(self.core.connection_lost())
        if link is not None:
            link.abort()

    def start(self) -> None:
        """Keep this device connected: connect now, and after any failure or loss wait ``backoff`` (jittered
        exponential) and connect again, until :meth:`disconnect`."""
        if self.backoff is None:
            self.backoff = Backoff()
        self._running = True
        if self._link is None and self._connect_task is None and self._reconnect is None:
            self._spawn_connect()

    def _spawn_connect(self) -> None:
        self._reconnect = None
        if not self._running:
            return
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        self._connect_task = loop.create_task(self._attempt(), name=f"connect {self.client_id}")

    async def _attempt(self) -> None:
        try:
            await self.connect()
        finally:
            self._connect_task = None
        if not self.connected:  # failed, or accepted and lost again before this task resumed
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if not self._running or self._reconnect is not None or self._connect_task is not None:
            return
        assert self.backoff is not None and self._loop is not None
        self._reconnect = self._loop.call_later(self.backoff.next_delay(), self._spawn_connect)

    async def wait_connected(self) -> ConnectOutcome:
        """The outcome of the next successful connect (immediately if connected now)."""
        if self.connected and self._connack is None and self.last_outcome is not None and self.last_outcome.ok:
            return self.last_outcome
        if self._connected_waiters is None:
            self._connected_waiters = []
        waiter = asyncio.get_running_loop().create_future()
        self._connected_waiters.append(waiter)
        return await waiter

    async def disconnect(self, reason_code: int = ReasonCode.NORMAL_DISCONNECTION, *,
                         timeout: float = 5.0) -> None:
        """Send DISCONNECT, close the link (TLS close_notify) and stop reconnecting. Unacknowledged QoS 1
        publishes stay in the session; their awaitables end with reason ``closed``."""
        self._running = False
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None
        task = self._connect_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        link = self._link
        if link is not None:
            self._closing = DisconnectNotice("client")
            self.core.disconnect(reason_code)
            self._flush()
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            if self._closed_waiters is None:
                self._closed_waiters = []
            self._closed_waiters.append(waiter)
            link.close()
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                link.abort()
        self._fail_all_pending("closed")

    def abort(self) -> None:
        """Drop the connection at once, without DISCONNECT (a crash, a pulled cable). With :meth:`start`, the
        device reconnects after its backoff delay."""
        if self._link is not None:
            self._closing = DisconnectNotice("aborted")
            self._link.abort()

    def pause_reading(self) -> None:
        """Stop reading from the server (a stalled device: acknowledgements and messages wait in the network)."""
        if self._link is not None:
            self._link.pause_reading()

    def resume_reading(self) -> None:
        if self._link is not None:
            self._link.resume_reading()

    # -------------------------------------------------------------------------------------- link events

    def _on_data(self, data: bytes) -> None:
        core = self.core
        for event in core.receive_data(data):
            kind = type(event)
            if kind is MessageReceived:
                self._deliver(event.publish)  # type: ignore[union-attr]
            elif kind is PublishAcked:
                self._acked(event)  # type: ignore[arg-type]
            elif kind is PublishAbandoned:
                self._abandoned(event.packet_id)  # type: ignore[union-attr]
            elif kind is Subscribed or kind is Unsubscribed:
                self._resolve_sub(event)  # type: ignore[arg-type]
            elif kind is PongReceived:
                self._ping_sent_at = None
            elif kind is Connected:
                self._set_connack("connected", event)
            elif kind is ConnectRefused:
                self._set_connack("refused", event)
            elif kind is ServerDisconnected:
                if not self._set_connack("server", event):
                    self._closing = DisconnectNotice("server", _code_name(5, event.reason_code),  # type: ignore
                                                     event.reason_code)  # type: ignore[union-attr]
                    self._close_link()
            elif kind is ProtocolViolation:
                if not self._set_connack("protocol", event):
                    self._closing = DisconnectNotice("protocol", str(event.error))  # type: ignore[union-attr]
                    self._flush()
                    self._close_link()
        self._flush()

    def _on_close(self, exc: BaseException | None) -> None:
        self._link = None
        self._paused = False
        self._cancel_keepalive()
        was_connected = self.core.state is State.CONNECTED
        self._fail_dropped(self.core.connection_lost())
        waiters, self._closed_waiters = self._closed_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)
        if self._set_connack("closed", exc):
            return
        if not was_connected and self._closing is None:
            return
        notice = self._closing
        if notice is None:
            notice = DisconnectNotice("tls" if _is_tls(exc) else "closed", _exc_detail(exc))
        self._closing = None
        self.last_disconnect = notice
        if self.backoff is not None:
            self.backoff.disconnected()
        if self.on_disconnect is not None:
            self.on_disconnect(notice)
        if self._running:
            self._schedule_reconnect()

    def _set_connack(self, kind: str, value) -> bool:
        connack = self._connack
        if connack is None or connack.done():
            return False
        connack.set_result((kind, value))
        return True

    def _close_link(self) -> None:
        if self._link is not None:
            self._link.close()

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self._link is not None:
            self._link.write(data)
            self._last_write = self._loop.time()  # type: ignore[union-attr]

    # -------------------------------------------------------------------------------------- keepalive

    def _arm_keepalive(self) -> None:
        keep_alive = self.core.keep_alive
        if keep_alive and self._loop is not None:
            self._keepalive = self._loop.call_at(self._last_write + keep_alive, self._keepalive_due)

    def _cancel_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _keepalive_due(self) -> None:
        self._keepalive = None
        if self._link is None or not self.connected:
            return
        loop = self._loop
        now = loop.time()  # type: ignore[union-attr]
        keep_alive = self.core.keep_alive
        action, when = keepalive_step(now, self._last_write, self._ping_sent_at, keep_alive,
                                      min(self.options.ping_timeout, keep_alive))
        if action == "timeout":
            self._closing = DisconnectNotice("keepalive", f"no PINGRESP within "
                                             f"{min(self.options.ping_timeout, keep_alive):g} s")
            self._link.abort()
            return
        if action == "ping":
            self.core.ping()
            self._flush()
            self._ping_sent_at = now
        self._keepalive = loop.call_at(when, self._keepalive_due)  # type: ignore[union-attr,arg-type]

    # -------------------------------------------------------------------------------------- publish

    async def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False, *,
                      properties: Properties = NO_PROPERTIES, timeout: float | None = None) -> PublishResult:
        """QoS 0: written (or ``not-connected``). QoS 1: completes on the PUBACK -- also one that arrives after
        reconnects; ``timeout`` stops the waiting (reason ``timeout``), not the delivery."""
        started = self.clock()
        if qos == 0:
            try:
                self.core.publish(topic, payload, 0, retain, properties)
            except NotConnected:
                return PublishResult(False, "not-connected")
            self._flush()
            return PublishResult(True, "sent")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while self.core.inflight_full:
                    if self._slot_waiters is None:
                        self._slot_waiters = deque()
                    waiter = loop.create_future()
                    self._slot_waiters.append(waiter)
                    await waiter
                pid = self.core.publish(topic, payload, 1, retain, properties)
                assert pid is not None
                future = loop.create_future()
                self._pending[pid] = (future, started)
                self._flush()
                return await asyncio.shield(future)
        except TimeoutError:
            return PublishResult(False, "timeout", latency=self.clock() - started)

    def _acked(self, event: PublishAcked) -> None:
        entry = self._pending.pop(event.packet_id, None)
        self._wake_slots()
        if entry is None:
            return
        future, started = entry
        if not future.done():
            ok = event.reason_code < 0x80
            future.set_result(PublishResult(ok, "acked" if ok else "refused", event.packet_id, event.reason_code,
                                            self.clock() - started, event.properties))

    def _abandoned(self, packet_id: int) -> None:
        entry = self._pending.pop(packet_id, None)
        self._wake_slots()
        if entry is not None and not entry[0].done():
            entry[0].set_result(PublishResult(False, "abandoned", packet_id, latency=self.clock() - entry[1]))

    def _wake_slots(self) -> None:
        waiters = self._slot_waiters
        free = self.options.max_inflight - self.core.inflight_count
        while free > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    # -------------------------------------------------------------------------------------- subscribe

    async def subscribe(self, *filters: str | Subscription, qos: int = 1, properties: Properties = NO_PROPERTIES,
                        timeout: float | None = None) -> SubscribeResult:
        """SUBSCRIBE to topic filters (plain strings get ``qos``); completes on the SUBACK."""
        subs = [f if isinstance(f, Subscription) else Subscription(f, qos) for f in filters]
        return await self._request(lambda: self.core.subscribe(subs, properties), timeout, "granted")

    async def unsubscribe(self, *topic_filters: str, properties: Properties = NO_PROPERTIES,
                          timeout: float | None = None) -> UnsubscribeResult:
        return await self._request(lambda: self.core.unsubscribe(topic_filters, properties), timeout,
                                   "unsubscribed")

    async def _request(self, send: Callable[[], int], timeout: float | None, success: str) -> SubscribeResult:
        started = self.clock()
        try:
            pid = send()
        except NotConnected:
            return SubscribeResult(False, "not-connected")
        future = asyncio.get_running_loop().create_future()
        self._pending[pid] = (future, started)
        self._flush()
        try:
            async with asyncio.timeout(timeout):
                result = await asyncio.shield(future)
        except TimeoutError:
            return SubscribeResult(False, "timeout", packet_id=pid, latency=self.clock() - started)
        if result.reason == "granted" and success != "granted":
            result = dataclasses.replace(result, reason=success)
        return result

    def _resolve_sub(self, event: Subscribed | Unsubscribed) -> None:
        entry = self._pending.pop(event.packet_id, None)
        if entry is None:
            return
        future, started = entry
        ok = all(code < 0x80 for code in event.reason_codes)
        if not future.done():
            future.set_result(SubscribeResult(ok, "granted" if ok else "refused", event.reason_codes,
                                              event.packet_id, self.clock() - started, event.properties))

    def _fail_dropped(self, packet_ids: tuple[int, ...]) -> None:
        for pid in packet_ids:
            entry = self._pending.pop(pid, None)
            if entry is not None and not entry[0].done():
                entry[0].set_result(SubscribeResult(False, "connection-lost", packet_id=pid))

    def _fail_all_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for pid, (future, started) in pending.items():
            if not future.done():
                result_type = PublishResult if pid in self.core.inflight else SubscribeResult
                future.set_result(result_type(False, reason, packet_id=pid))  # type: ignore[call-arg]
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.cancel()
        self._slot_waiters = None

    # -------------------------------------------------------------------------------------- messages

    def _deliver(self, publish: Publish) -> None:
        if self.on_message is not None:
            self.on_message(publish)
            return
        inbox = self._inbox
        if inbox is None:
            self.messages_dropped += 1
            return
        inbox.append(publish)
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(inbox) >= self.options.inbox_size and not self._paused and self._link is not None:
            self._paused = True
            self._link.pause_reading()

    def messages(self) -> AsyncIterator[Publish]:
        """Every PUBLISH received from this call on, in order. While ``inbox_size`` are unread, reading from
        the server pauses (TCP backpressure) instead of dropping messages."""
        if self._inbox is None:
            self._inbox = deque()
        return self._drain_inbox(self._inbox)

    async def _drain_inbox(self, inbox: deque[Publish]) -> AsyncIterator[Publish]:
        loop = asyncio.get_running_loop()
        while True:
            while inbox:
                publish = inbox.popleft()
                if self._paused and len(inbox) <= self.options.inbox_size // 2:
                    self._paused = False
                    if self._link is not None:
                        self._link.resume_reading()
                yield publish
            self._inbox_waiter = loop.create_future()
            try:
                await self._inbox_waiter
            finally:
                self._inbox_waiter = None

    def __repr__(self) -> str:
        return f"<DeviceClient {self.client_id} {self.core.state.value} via {self.transport.name}>"
