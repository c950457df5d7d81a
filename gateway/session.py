"""One device connection as a sans-IO state machine: CONNECT -> authorized session -> packets -> close.

No sockets, no asyncio, no clock: the shell (gateway.server) feeds bytes from the device and from the
upstream broker, the time when it matters, and registry changes; the session answers with effects in
``session.out``:

    out.device      bytes to write to the device, in order
    out.upstream    bytes to write to the upstream broker (opened when ``out.open_upstream`` is set)
    out.events      access-log events (dicts without time; the shell stamps and writes them)
    out.claim       a client id this session now owns (the shell closes the older holder: takeover)
    out.close       a Close: the session is over; the shell flushes, then closes both sides
    out.service     for the gateway's `$aws/...` services (gateway.services): a ServiceRequest (an allowed request)
                    or a SubscriptionChange (granted or removed filters, for lifecycle events)
    out.acked       seconds from a device's QoS 1 PUBLISH to the broker's PUBACK relayed for it (the forwarding
                    round trip through the gateway and the broker; times from the shell's clock)

Packets are forwarded as their original bytes; only what a decision needs is decoded (topic, QoS, retain,
packet id). Packet ids are mirrored 1:1 because each device has its own upstream connection. A refusal is a
ReasonCode carried to ``_refuse_*``/``_close``: the one place that turns it into CONNACK / PUBACK / SUBACK /
DISCONNECT (or a silent close on MQTT 3.1.1, where those do not exist) plus one access-log event.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import NamedTuple

from gateway.auth import AuthRefusal, Principal
from gateway.config import Limits
from gateway.mqtt import (
    Connack,
    ConnectReturnCode,
    Disconnect,
    Frame,
    Framer,
    MQTTError,
    MQTTProtocolError,
    PacketType,
    Properties,
    PubAck,
    Publish,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    connect_return_code_for,
    decode,
    encode,
    peek_publish,
    rewrite_connect,
    split_shared_subscription,
    topic_matches,
)
from gateway.mqtt.reason_codes import ALLOWED_REASON_CODES
from gateway.policy import Decision, DecisionCache, Request

R = ReasonCode
PINGRESP = b"\xd0\x00"
PINGREQ = b"\xc0\x00"
UPSTREAM_MAX_PACKET = 4 * 1024 * 1024
MAX_FLOWS_PER_SESSION = 256  # distinct allowed (action, topic) rows one session logs; the rest are counted together

_AUTH_METHODS = {"x509": "mtls", "authorizer": "custom_authorizer", "sigv4": "sigv4"}


def auth_method(auth: Principal | AuthRefusal) -> str:
    """How a connection authenticated (or tried to): mtls, custom_authorizer or sigv4 (the access-log ``auth``)."""
    if isinstance(auth, Principal):
        return _AUTH_METHODS.get(auth.kind, auth.kind)
    fields = dict(auth.log)
    if "access_key" in fields:
        return "sigv4"
    if "authorizer" in fields:
        return "custom_authorizer"
    return "mtls"


class State(enum.Enum):
    AWAIT_CONNECT = "await-connect"
    UPSTREAM_PENDING = "upstream-pending"
    ACTIVE = "active"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True, slots=True)
class Peer:
    ip: str
    port: int
    server_name: str | None = None
    tls_version: str | None = None

    @property
    def source(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """How a session ends. ``graceful_upstream``: the upstream got a DISCONNECT (no will), else it is aborted."""

    key: str
    reason: str
    code: ReasonCode | None = None
    graceful_upstream: bool = False


class ServiceRequest(NamedTuple):
    topic: str
    payload: bytes


class SubscriptionChange(NamedTuple):
    event: str  # "subscribed" or "unsubscribed"
    filters: list[str]


class Output:
    __slots__ = ("device", "upstream", "events", "open_upstream", "claim", "close", "service", "acked")

    def __init__(self) -> None:
        self.device: list = []
        self.upstream: list = []
        self.events: list[dict] = []
        self.open_upstream = False
        self.claim: str | None = None
        self.close: Close | None = None
        self.service: list[ServiceRequest | SubscriptionChange] = []
        self.acked: list[float] = []


# --------------------------------------------------------------------------------------------- rate limits

class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved. Time is passed in."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= amount:
            self.tokens = tokens - amount
            return True
        self.tokens = tokens
        return False


class RateLimiter:
    """Token buckets keyed by a string (client id, source address); the table is bounded."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now)

    def _evict(self, now: float) -> None:
        # Buckets that have refilled carry no information: drop them; if none has, drop the oldest.
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


# --------------------------------------------------------------------------------------------- helpers

def statement_text(decision: Decision) -> str | None:
    if not decision.decided_by:
        return None
    return ", ".join(f"{d.policy}/v{d.version}/Statement[{d.statement_index}]/{d.effect}"
                     for d in decision.decided_by)


def decision_reason(decision: Decision) -> str:
    if decision.errors:
        return "; ".join(decision.errors)
    if decision.allowed:
        return "allowed by policy"
    return "explicitly denied by policy" if decision.explicit_deny else "no policy statement allows it"


def keepalive_for(requested: int, limits: Limits) -> int:
    """AWS IoT's rule: 0 means the maximum; anything else is clamped to [min, max]."""
    if requested == 0:
        return limits.keepalive_max
    return max(limits.keepalive_min, min(limits.keepalive_max, requested))


def topic_problem(topic: str, limits: Limits, *, is_filter: bool = False) -> str | None:
    """AWS IoT's size rules for topics and filters (the MQTT syntax itself is checked by the codec)."""
    share, rest = split_shared_subscription(topic) if is_filter else (None, topic)
    if len(rest.encode("utf-8")) > limits.max_topic_bytes:
        return f"longer than {limits.max_topic_bytes} bytes"
    if rest.count("/") > limits.max_topic_slashes:
        return f"more than {limits.max_topic_slashes} forward slashes"
    if share is not None and len(share) > 128:
        return "share name longer than 128 characters"
    return None


def is_reserved(topic: str) -> bool:
    """Topics starting with '$' are reserved: `$aws/...` is answered by the gateway's services, never upstream."""
    return topic[:1] == "$"


def is_service_topic(topic: str) -> bool:
    """`$aws/...`: requests go to the gateway's services; filters on their replies and events are held upstream."""
    return topic[:5] == "$aws/"


# --------------------------------------------------------------------------------------------- session

class Session:
    """The per-connection state machine. Call order: receive_device / receive_upstream / events; read ``out``."""

    __slots__ = (
        "peer", "limits", "out", "state", "level", "client_id", "keepalive", "last_device_rx", "packets_in",
        "published", "delivered", "_auth", "_cache", "_connect_limiter", "_up_user", "_up_pass",
        "_assign_client_id", "_framer", "_up_framer", "_connack_sent", "_attrs", "_will_topic",
        "_upstream_connect", "_connect_decision", "_requested_keepalive", "_assigned", "_session_expiry",
        "_expiry_granted",
        "_pending", "_pending_bytes", "_aliases", "_inflight", "_subs", "_reserved", "_hash_parents", "_subacks",
        "_pub_bucket", "_byte_bucket", "_throttle_logged", "_serves", "_flows",
    )

    def __init__(self, peer: Peer, auth: Principal | AuthRefusal, limits: Limits, *,
                 connect_limiter: RateLimiter | None = None,
                 upstream_username: str | None = None, upstream_password: bytes | None = None,
                 assign_client_id: Callable[[], str] | None = None, now: float = 0.0,
                 serves: Callable[[str], bool] | None = None) -> None:
        self.peer = peer
        self.limits = limits
        self.out = Output()
        self.state = State.AWAIT_CONNECT
        self.level: int | None = None
        self.client_id: str | None = None
        self.keepalive = 0
        self._auth = auth
        self._cache = DecisionCache(auth.compiled, limits.decision_cache_size) if isinstance(auth, Principal) \
            else None
        self._connect_limiter = connect_limiter
        self._up_user = upstream_username
        self._up_pass = upstream_password
        self._assign_client_id = assign_client_id
        self._framer = Framer(limits.max_packet_size)
        self._up_framer = Framer(UPSTREAM_MAX_PACKET)
        self._connack_sent = False
        self._attrs: frozenset[str] = frozenset()
        self._will_topic: str | None = None
        self._upstream_connect = b""
        self._connect_decision: Decision | None = None
        self._requested_keepalive = 0
        self._assigned: str | None = None
        self._session_expiry: int | None = None
        self._expiry_granted = 0  # the session expiry interval the upstream session was opened with
        self._pending: list[Frame] = []
        self._pending_bytes = 0
        self._aliases: dict[int, str] = {}
        self._inflight: dict[int, float] = {}  # QoS 1 publishes awaiting the broker's PUBACK: id -> received at
        self._subs: dict[str, int] = {}
        self._reserved: set[str] = set()
        self._hash_parents: frozenset[str] = frozenset()
        self._subacks: dict[int, tuple[list[int | None], list[str]]] = {}
        self._pub_bucket = TokenBucket(limits.publish_rate, limits.publish_burst, now)
        self._byte_bucket = TokenBucket(limits.publish_bytes_rate,
                                        max(limits.publish_bytes_rate, limits.max_packet_size), now)
        self._throttle_logged = -1.0
        self._serves = serves  # which `$aws/...` topics the gateway's services answer (None: no services)
        self.last_device_rx = now
        self.packets_in = 0
        self.published = 0  # publishes forwarded upstream
        self.delivered = 0  # deliveries forwarded to the device
        # allowed (action, topic or filter) -> [count, payload bytes]: logged once, with the session's last event
        self._flows: dict[tuple[str, str], list[int]] = {}

    # ------------------------------------------------------------------ identity

    @property
    def certificate_id(self) -> str | None:
        return self._auth.certificate_id

    @property
    def principal(self) -> Principal | None:
        return self._auth if isinstance(self._auth, Principal) else None

    @property
    def thing(self) -> str | None:
        return self._auth.thing_for(self.client_id) if isinstance(self._auth, Principal) else None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # ------------------------------------------------------------------ input: device bytes

    def receive_device(self, data: bytes, now: float) -> None:
        if self.state is State.CLOSED:
            return
        self.last_device_rx = now
        try:
            for frame in self._framer.feed(data):
                self.packets_in += 1
                self._DEVICE[self.state](self, frame, now)
                if self.state is State.CLOSED:
                    return
        except MQTTProtocolError as exc:
            self._protocol_error(exc)

    def _await_connect(self, frame: Frame, now: float) -> None:
        if frame.packet_type is not PacketType.CONNECT:
            self._close(Close("protocol_error", f"first packet is {frame.packet_type.name}, not CONNECT "
                                                "[MQTT-3.1.0-1]"), action="iot:Connect")
            return
        self._on_connect(frame, now)

    def _hold(self, frame: Frame, now: float) -> None:
        """Packets sent before our CONNACK wait (bounded) until the upstream has answered."""
        if frame.packet_type is PacketType.CONNECT:
            self._protocol_error(MQTTProtocolError("second CONNECT", R.PROTOCOL_ERROR, "[MQTT-3.1.0-2]"))
            return
        self._pending_bytes += len(frame)
        if len(self._pending) >= self.limits.max_pending_packets or self._pending_bytes > 256 * 1024:
            # MQTT 5 has CONNACK 0x97 for it; MQTT 3.1.1 has no return code that says so: the connection is closed.
            self._close(Close("quota_exceeded", "too many packets sent before CONNACK",
                              R.QUOTA_EXCEEDED if self.level == 5 else None))
            return
        self._pending.append(frame)

    def _active(self, frame: Frame, now: float) -> None:
        handler = _ACTIVE_DEVICE.get(frame.packet_type)
        if handler is None:
            name = frame.packet_type.name
            why = "QoS 2 flows are not supported" if frame.packet_type in (
                PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP) else "not valid from a client here"
            self._protocol_error(MQTTProtocolError(f"{name}: {why}", R.PROTOCOL_ERROR, protocol_level=self.level))
            return
        handler(self, frame, now)

    _DEVICE = {
        State.AWAIT_CONNECT: _await_connect,
        State.UPSTREAM_PENDING: _hold,
        State.ACTIVE: _active,
    }

    # ------------------------------------------------------------------ CONNECT

    def _on_connect(self, frame: Frame, now: float) -> None:
        try:
            connect = decode(frame)
        except MQTTProtocolError as exc:
            level = exc.protocol_level
            self.level = level if level in (4, 5) else None
            if exc.reason_code is R.UNSUPPORTED_PROTOCOL_VERSION and self.level is None:
                self.out.device.append(b"\x20\x02\x00\x01")  # 3.1.1 CONNACK "unacceptable protocol version"
            self._close(Close("malformed_connect", str(exc), exc.reason_code), action="iot:Connect")
            return
        self.level = connect.protocol_level
        self._framer.protocol_level = self.level
        self._up_framer.protocol_level = self.level
        lim = self.limits
        client_id = connect.client_id
        self.client_id = client_id or None
        resource = f"client/{client_id}"

        def refuse(code: ReasonCode, key: str, reason: str, decision: Decision | None = None) -> None:
            self._close(Close(key, reason, code), action="iot:Connect", resource=resource, decision=decision)

        if isinstance(self._auth, AuthRefusal):
            refuse(self._auth.code, self._auth.key, self._auth.reason)
            return
        props = connect.properties
        if self.level == 5 and props.authentication_method is not None:
            refuse(R.BAD_AUTHENTICATION_METHOD, "auth_method", "enhanced authentication (AUTH) is not supported")
            return
        if not client_id:
            # The server may assign one [MQTT-3.1.3-6], as AWS IoT does on MQTT 5 (Assigned Client Identifier);
            # a 3.1.1 CONNECT that also asks to keep the session never gets here (the codec: [MQTT-3.1.3-8]).
            if self._assign_client_id is None:
                refuse(R.CLIENT_IDENTIFIER_NOT_VALID, "client_id_invalid", "empty client id")
                return
            client_id = self._assigned = self._assign_client_id()
            self.client_id = client_id
            resource = f"client/{client_id}"
        if len(client_id.encode("utf-8")) > lim.max_client_id_bytes:
            refuse(R.CLIENT_IDENTIFIER_NOT_VALID, "client_id_invalid",
                   f"client id longer than {lim.max_client_id_bytes} bytes")
            return
        will = connect.will
        if will is not None and will.qos == 2:
            refuse(R.QOS_NOT_SUPPORTED, "qos_not_supported", "will QoS 2 is not supported (maximum QoS is 1)")
            return
        attrs = set()
        if not connect.clean_start:
            attrs.add("PersistentConnect")
        if will is not None:
            attrs.add("LastWill")
            self._will_topic = will.topic
        self._attrs = frozenset(attrs)
        decision = self._decide("iot:Connect", resource)
        if not decision.allowed:
            refuse(R.NOT_AUTHORIZED, "connect_denied", decision_reason(decision), decision)
            return
        # Counted after the Connect decision: attempts by others with this client id do not lock its owner out.
        if self._connect_limiter is not None and not self._connect_limiter.allow(client_id, now):
            refuse(R.CONNECTION_RATE_EXCEEDED, "connect_rate_exceeded",
                   f"more than {lim.connect_rate_per_client_id:g} connect(s)/s for this client id")
            return

        # The will goes upstream only if the device may publish it (AWS IoT drops an unauthorized will).
        if will is not None:
            problem = None
            will_resource = f"topic/{will.topic}"
            if is_reserved(will.topic):
                problem = ("will_denied", "reserved topic: never forwarded upstream", None)
            elif (why := topic_problem(will.topic, lim)) is not None:
                problem = ("will_denied", f"will topic {why}", None)
            else:
                wd = self._decide("iot:Publish", will_resource)
                if wd.allowed and will.retain:
                    wd = self._decide("iot:RetainPublish", will_resource)
                if not wd.allowed:
                    problem = ("will_denied", f"will message dropped: {decision_reason(wd)}", wd)
            if problem is not None:
                self._event("will", "iot:Publish", will_resource, "denied", problem[0], problem[1], problem[2])
                will = None

        self._requested_keepalive = connect.keep_alive
        self.keepalive = keepalive_for(connect.keep_alive, lim)
        changes: dict = dict(client_id=client_id, username=self._up_user, password=self._up_pass,
                             keep_alive=self.keepalive, will=will)
        if self.level == 5:
            expiry = props.session_expiry_interval
            if expiry is not None and expiry > lim.session_expiry_max:
                self._session_expiry = expiry = lim.session_expiry_max
            self._expiry_granted = expiry or 0
            changes["properties"] = dataclasses.replace(
                props, session_expiry_interval=expiry, topic_alias_maximum=None,
                authentication_method=None, authentication_data=None)
        try:
            self._upstream_connect = rewrite_connect(connect, **changes)
        except MQTTError as exc:
            refuse(R.UNSPECIFIED_ERROR, "malformed_connect", f"CONNECT cannot be forwarded: {exc}")
            return
        self._connect_decision = decision
        self.out.claim = client_id
        self.out.open_upstream = True
        self.state = State.UPSTREAM_PENDING

    def upstream_connected(self) -> None:
        """The shell opened the upstream transport: send the rewritten CONNECT."""
        if self.state is State.UPSTREAM_PENDING:
            self.out.upstream.append(self._upstream_connect)

    def upstream_failed(self, detail: str) -> None:
        """The upstream could not be reached: the device gets "server unavailable"."""
        if self.state is State.UPSTREAM_PENDING:
            self._close(Close("upstream_unavailable", f"upstream broker unavailable: {detail}",
                              R.SERVER_UNAVAILABLE), action="iot:Connect", resource=f"client/{self.client_id}")

    def _on_upstream_connack(self, frame: Frame) -> None:
        try:
            connack = decode(frame, self.level)
        except MQTTProtocolError as exc:
            self.upstream_failed(f"malformed CONNACK ({exc})")
            return
        if connack.packet_type is not PacketType.CONNACK:
            self.upstream_failed(f"{connack.packet_type.name} before CONNACK")
            return
        if connack.reason_code != 0:
            self.upstream_failed(f"it refused the gateway's CONNECT with reason 0x{int(connack.reason_code):02X}")
            return
        lim = self.limits
        if self.level == 5:
            up = connack.properties
            receive_max = min(lim.max_inflight, up.receive_maximum or 65535)
            max_packet = min(lim.max_packet_size, up.maximum_packet_size or lim.max_packet_size)
            props = Properties(
                maximum_qos=1, retain_available=1, receive_maximum=receive_max,
                topic_alias_maximum=lim.topic_alias_maximum or None, maximum_packet_size=max_packet,
                wildcard_subscription_available=1, subscription_identifier_available=0,
                shared_subscription_available=1,
                server_keep_alive=self.keepalive if self.keepalive != self._requested_keepalive else None,
                session_expiry_interval=self._session_expiry, assigned_client_identifier=self._assigned)
            self.out.device.append(encode(Connack(connack.session_present, R.SUCCESS, props), 5))
        else:
            self.out.device.append(encode(Connack(connack.session_present, ConnectReturnCode.ACCEPTED), 4))
        self._connack_sent = True
        self.state = State.ACTIVE
        self._event("connect", "iot:Connect", f"client/{self.client_id}", "allowed", "connected",
                    "session present" if connack.session_present else "new session", self._connect_decision)
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        try:
            for frame in pending:
                self._active(frame, self.last_device_rx)
                if self.state is State.CLOSED:
                    return
        except MQTTProtocolError as exc:  # the device's fault, not the broker's
            self._protocol_error(exc)

    # ------------------------------------------------------------------ device packets (ACTIVE)

    def _on_publish(self, frame: Frame, now: float) -> None:
        header = peek_publish(frame, self.level)
        qos = header.qos
        if qos == 2:
            self._close(Close("qos_not_supported", "PUBLISH with QoS 2 (maximum QoS is 1)", R.QOS_NOT_SUPPORTED),
                        event="publish", action="iot:Publish", resource=f"topic/{header.topic}", outcome="denied")
            return
        topic = header.topic
        alias = header.topic_alias
        if alias is not None:
            if alias > self.limits.topic_alias_maximum:
                self._close(Close("topic_alias_invalid", f"topic alias {alias} above the maximum "
                                  f"{self.limits.topic_alias_maximum}", R.TOPIC_ALIAS_INVALID))
                return
            if topic:
                # Only a topic that may be published is remembered: the refusal below answers this publish.
                if not is_reserved(topic) and topic_problem(topic, self.limits) is None:
                    self._aliases[alias] = topic
            else:
                topic = self._aliases.get(alias, "")
                if not topic:
                    self._close(Close("topic_alias_invalid", f"topic alias {alias} was never set",
                                      R.PROTOCOL_ERROR))
                    return
        resource = f"topic/{topic}"
        size = len(frame.data) - header.payload_offset
        if size > self.limits.max_payload:
            self._close(Close("payload_too_large", f"payload of {size} bytes exceeds {self.limits.max_payload}",
                              R.PACKET_TOO_LARGE), event="publish", action="iot:Publish", resource=resource,
                        outcome="denied")
            return
        if not (self._pub_bucket.take(now) and self._byte_bucket.take(now, len(frame.data))):
            self._throttled(header.packet_id, qos, resource, now)
            return
        if is_reserved(topic):
            if self._serves is not None and is_service_topic(topic) and self._serves(topic):
                self._service_request(frame, header, resource)
                return
            self._refuse_publish(header.packet_id, qos, R.NOT_AUTHORIZED, "reserved_topic",
                                 "reserved topic: never forwarded upstream", resource, None)
            return
        problem = topic_problem(topic, self.limits)
        if problem is not None:
            self._refuse_publish(header.packet_id, qos, R.TOPIC_NAME_INVALID, "topic_invalid",
                                 f"topic {problem}", resource, None)
            return
        action = "iot:Publish"
        decision = self._decide(action, resource)
        if decision.allowed and header.retain:
            action = "iot:RetainPublish"
            decision = self._decide(action, resource)
        if not decision.allowed:
            self._refuse_publish(header.packet_id, qos, R.NOT_AUTHORIZED, "publish_denied",
                                 decision_reason(decision), resource, decision, action)
            return
        if qos:
            pid = header.packet_id
            if pid not in self._inflight:
                if len(self._inflight) >= self.limits.max_inflight:
                    self._close(Close("receive_maximum_exceeded", f"more than {self.limits.max_inflight} QoS 1 "
                                      "publishes awaiting acknowledgement", R.RECEIVE_MAXIMUM_EXCEEDED))
                    return
                self._inflight[pid] = now
        if alias is not None:
            # Upstream never sees our topic aliases: the publish goes with its full topic.
            publish = decode(frame, self.level)
            publish = dataclasses.replace(publish, topic=topic,
                                          properties=dataclasses.replace(publish.properties, topic_alias=None))
            self.out.upstream.append(encode(publish, self.level))
        else:
            self.out.upstream.append(frame.data)
        self.published += 1
        self._flow(action, topic, len(frame.data))

    def _service_request(self, frame: Frame, header, resource: str) -> None:
        """A request to the gateway's services: decided by iot:Publish, acknowledged here, answered by them."""
        if header.retain:  # AWS IoT: "You can't publish to a reserved topic with the RETAIN flag set."
            self._refuse_publish(header.packet_id, header.qos, R.NOT_AUTHORIZED, "reserved_topic",
                                 "retained publish to a reserved topic", resource, None)
            return
        decision = self._decide("iot:Publish", resource)
        if not decision.allowed:
            self._refuse_publish(header.packet_id, header.qos, R.NOT_AUTHORIZED, "publish_denied",
                                 decision_reason(decision), resource, decision)
            return
        self.out.service.append(ServiceRequest(resource[6:], bytes(frame.data[header.payload_offset:])))
        if header.qos:
            self.out.device.append(encode(PubAck(header.packet_id), self.level))

    def _throttled(self, packet_id: int | None, qos: int, resource: str, now: float) -> None:
        if self.level == 5 and qos:
            self.out.device.append(encode(PubAck(packet_id, R.QUOTA_EXCEEDED), 5))
        if now - self._throttle_logged >= 1.0:  # one line per second at most: a flood must not flood the log
            self._throttle_logged = now
            self._event("publish", "iot:Publish", resource, "throttled", "publish_rate_exceeded",
                        f"more than {self.limits.publish_rate:g} publishes/s or "
                        f"{self.limits.publish_bytes_rate} bytes/s on this connection")

    def _rate_text(self) -> str:
        return f"more than {self.limits.publish_rate:g} publishes, subscribes and unsubscribes/s on this connection"

    def _throttled_request(self, event: str, action: str, resource: str, now: float) -> None:
        if now - self._throttle_logged >= 1.0:
            self._throttle_logged = now
            self._event(event, action, resource, "throttled", "request_rate_exceeded", self._rate_text())

    def _on_puback(self, frame: Frame, now: float) -> None:
        decode(frame, self.level)  # small: checked before it goes anywhere (raises on a malformed one)
        self.out.upstream.append(frame.data)  # acknowledges a delivery: the id belongs to the upstream

    def _on_subscribe(self, frame: Frame, now: float) -> None:
        packet = decode(frame, self.level)
        level = self.level
        lim = self.limits
        if packet.properties.subscription_identifiers:
            self._close(Close("subscription_identifiers", "subscription identifiers are not supported",
                              R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED))
            return
        pid = packet.packet_id
        fail = 0x80
        count = len(packet.subscriptions)
        if not self._pub_bucket.take(now):
            # Requests share the publish rate: each SUBSCRIBE costs the gateway a policy decision per filter.
            self.out.device.append(encode(SubAck(pid, (R.QUOTA_EXCEEDED if level == 5 else fail,) * count), level))
            self._throttled_request("subscribe", "iot:Subscribe", f"topicfilter/{packet.subscriptions[0].topic_filter}",
                                    now)
            return
        if count > lim.max_filters_per_subscribe:
            # The whole packet is refused, with one event: a SUBACK of many filters must not write as many lines.
            self.out.device.append(encode(SubAck(pid, (R.QUOTA_EXCEEDED if level == 5 else fail,) * count), level))
            self._event("subscribe", "iot:Subscribe", f"topicfilter/{packet.subscriptions[0].topic_filter}",
                        "denied", "subscribe_quota",
                        f"{count} filters in one SUBSCRIBE (more than {lim.max_filters_per_subscribe})")
            return
        if pid in self._subacks or len(self._subacks) >= lim.max_inflight:
            code = R.PACKET_IDENTIFIER_IN_USE if pid in self._subacks else R.QUOTA_EXCEEDED
            self.out.device.append(encode(SubAck(pid, tuple(code if level == 5 else fail
                                                            for _ in packet.subscriptions)), level))
            return
        codes: list[int | None] = []
        forward = []
        known = len(self._subs.keys() | self._reserved)
        for sub in packet.subscriptions:
            flt = sub.topic_filter
            resource = f"topicfilter/{flt}"
            _, bare = split_shared_subscription(flt)
            refusal = None
            if is_reserved(bare) and not (self._serves is not None and is_service_topic(bare)):
                refusal = (R.NOT_AUTHORIZED, "reserved_topic", "reserved topic filter: never forwarded upstream",
                           None)
            elif (problem := topic_problem(flt, lim, is_filter=True)) is not None:
                refusal = (R.TOPIC_FILTER_INVALID, "topic_filter_invalid", f"topic filter {problem}", None)
            else:
                decision = self._decide("iot:Subscribe", resource)
                if not decision.allowed:
                    refusal = (R.NOT_AUTHORIZED, "subscribe_denied", decision_reason(decision), decision)
                elif flt not in self._subs and flt not in self._reserved and known >= lim.max_subscriptions:
                    refusal = (R.QUOTA_EXCEEDED, "subscription_quota",
                               f"more than {lim.max_subscriptions} subscriptions on this connection", None)
            if refusal is not None:
                code, key, reason, decision = refusal
                self._event("subscribe", "iot:Subscribe", resource, "denied", key, reason, decision)
                codes.append(code if level == 5 else fail)
                continue
            if flt not in self._subs and flt not in self._reserved:
                known += 1
            self._reserved.add(flt)
            codes.append(None)
            forward.append(self._upstream_subscription(sub))
            self._flow("iot:Subscribe", flt, 0)
        if not forward:
            self.out.device.append(encode(SubAck(pid, tuple(codes)), level))
            return
        self._subacks[pid] = (codes, [s.topic_filter for s in forward])
        self.out.upstream.append(encode(Subscribe(pid, tuple(forward), packet.properties), level))

    def _upstream_subscription(self, sub: Subscription) -> Subscription:
        """The filter as the broker gets it: QoS at most 1; on MQTT 5 a wildcard or shared filter asks for no
        retained messages at subscription (AWS IoT sends them only to exact, unshared filters), so every
        retained delivery from the broker is one AWS IoT would send too, whatever Retain As Published says."""
        qos = min(sub.qos, 1)
        if self.level != 5:
            return dataclasses.replace(sub, qos=qos)
        share, bare = split_shared_subscription(sub.topic_filter)
        if share is not None or "+" in bare or "#" in bare:
            return dataclasses.replace(sub, qos=qos, retain_handling=2)
        return dataclasses.replace(sub, qos=qos)

    def _on_unsubscribe(self, frame: Frame, now: float) -> None:
        packet = decode(frame, self.level)
        if not self._pub_bucket.take(now):
            resource = f"topicfilter/{packet.topic_filters[0]}"
            if self.level != 5:  # MQTT 3.1.1 has no negative UNSUBACK: closed, as for a refused publish
                self._close(Close("request_rate_exceeded", self._rate_text()), event="subscribe",
                            action="iot:Subscribe", resource=resource, outcome="throttled")
                return
            self.out.device.append(encode(UnsubAck(packet.packet_id, (R.UNSPECIFIED_ERROR,) * len(
                packet.topic_filters)), 5))
            self._throttled_request("subscribe", "iot:Subscribe", resource, now)
            return
        for flt in packet.topic_filters:
            self._subs.pop(flt, None)
        self._subs_changed()
        self.out.upstream.append(frame.data)
        if self._serves is not None:
            self.out.service.append(SubscriptionChange("unsubscribed", list(packet.topic_filters)))

    def _on_pingreq(self, frame: Frame, now: float) -> None:
        if frame.remaining_length:
            raise MQTTProtocolError("PINGREQ with a body", R.MALFORMED_PACKET, "§3.12", protocol_level=self.level)
        self.out.device.append(PINGRESP)

    def _on_disconnect(self, frame: Frame, now: float) -> None:
        packet = decode(frame, self.level)
        data = frame.data
        expiry = packet.properties.session_expiry_interval if self.level == 5 else None
        note = ""
        if expiry is not None and expiry > 0:
            if self._expiry_granted == 0:
                raise MQTTProtocolError("DISCONNECT sets a session expiry interval after CONNECT set none",
                                        R.PROTOCOL_ERROR, "§3.14.2.2.2", protocol_level=5)
            # The DISCONNECT's value replaces the CONNECT's (AWS IoT and §3.14.2.2.2), up to the same maximum.
            cap = self.limits.session_expiry_max
            if expiry > cap:
                note = f"; session expiry interval lowered from {expiry} s to {cap} s (the maximum)"
                data = encode(dataclasses.replace(packet, properties=dataclasses.replace(
                    packet.properties, session_expiry_interval=cap)), 5)
        self.out.upstream.append(data)
        code = int(packet.reason_code)
        detail = "device disconnected" if code == 0 else f"device disconnected with reason 0x{code:02X}"
        detail += note
        self._close(Close("disconnect", detail, None, graceful_upstream=True), outcome="closed")

    # ------------------------------------------------------------------ input: upstream bytes

    def receive_upstream(self, data: bytes, now: float | None = None) -> None:
        """Bytes from the broker; ``now`` (the shell's clock, as for the device) times the acknowledgements."""
        if self.state is State.CLOSED:
            return
        try:
            for frame in self._up_framer.feed(data):
                if self.state is State.UPSTREAM_PENDING:
                    self._on_upstream_connack(frame)
                else:
                    handler = _ACTIVE_UPSTREAM.get(frame.packet_type)
                    if handler is None:
                        self._upstream_violation(f"unexpected {frame.packet_type.name} from the broker")
                    else:
                        handler(self, frame, now)
                if self.state is State.CLOSED:
                    return
        except MQTTProtocolError as exc:
            self._upstream_violation(f"malformed packet from the broker: {exc}")

    def deliver_local(self, topic: str, payload: bytes) -> None:
        """A message the gateway itself addresses to this device (a service's private answer): delivered as one
        from the broker would be, to a subscription of the device, decided by iot:Receive, at QoS 0."""
        if self.state is not State.ACTIVE or not self._aws_deliverable(topic, False):
            return
        for frame in Framer(protocol_level=self.level).feed(encode(Publish(topic, payload), self.level)):
            self._on_delivery(frame)

    def _upstream_violation(self, detail: str) -> None:
        if self.state is State.UPSTREAM_PENDING:
            self.upstream_failed(detail)
        else:
            self._close(Close("upstream_protocol_error", detail, R.UNSPECIFIED_ERROR))

    def _on_delivery(self, frame: Frame, now: float | None = None) -> None:
        header = peek_publish(frame, self.level)
        topic = header.topic
        if not topic:
            self._upstream_violation("the broker used a topic alias the gateway never allowed")
            return
        # On MQTT 5 the broker sends no retained message at subscription to a wildcard or shared filter (see
        # _upstream_subscription): a retained delivery is one AWS IoT sends too, Retain As Published included.
        retained = header.retain and self.level != 5
        if (retained or topic in self._hash_parents) and not self._aws_deliverable(topic, retained):
            self._drop_delivery(header.packet_id)
            return
        resource = f"topic/{topic}"
        decision = self._decide("iot:Receive", resource)
        if not decision.allowed:
            self._event("receive", "iot:Receive", resource, "denied", "receive_denied", decision_reason(decision),
                        decision)
            self._drop_delivery(header.packet_id)
            return
        self.out.device.append(frame.data)
        self.delivered += 1
        self._flow("iot:Receive", topic, len(frame.data))

    def _drop_delivery(self, packet_id: int | None) -> None:
        # The broker's inflight window must not stall: the gateway acknowledges a dropped QoS 1 delivery itself.
        if packet_id is not None:
            self.out.upstream.append(encode(PubAck(packet_id), self.level))

    def _aws_deliverable(self, topic: str, retained: bool) -> bool:
        """AWS IoT's matching: `a/#` does not match `a`; retained messages only reach exact, unshared filters."""
        for flt in self._subs:
            share, bare = split_shared_subscription(flt)
            if retained and (share is not None or "+" in bare or "#" in bare):
                continue
            if not topic_matches(bare, topic):
                continue
            if bare.endswith("/#") and topic == bare[:-2]:
                continue
            return True
        return False

    def _up_puback(self, frame: Frame, now: float | None = None) -> None:
        ack = decode(frame, self.level)
        sent = self._inflight.pop(ack.packet_id, None)
        if sent is not None and now is not None:
            self.out.acked.append(now - sent)
        data = frame.data
        if ack.reason_code == R.NO_MATCHING_SUBSCRIBERS:
            data = encode(PubAck(ack.packet_id), 5)  # AWS IoT acknowledges with success whether or not anyone listens
        self.out.device.append(data)

    def _up_suback(self, frame: Frame, now: float | None = None) -> None:
        packet = decode(frame, self.level)
        entry = self._subacks.pop(packet.packet_id, None)
        if entry is None:
            self._upstream_violation(f"SUBACK for unknown packet id {packet.packet_id}")
            return
        codes, filters = entry
        granted = list(packet.reason_codes)
        if len(granted) != len(filters):
            self._upstream_violation("SUBACK with the wrong number of reason codes")
            return
        it = iter(zip(filters, granted))
        subscribed = []
        for i, code in enumerate(codes):
            if code is None:
                flt, up = next(it)
                self._reserved.discard(flt)
                up = int(up)
                if up < 0x80:
                    self._subs[flt] = up
                    subscribed.append(flt)
                codes[i] = up
        self._subs_changed()
        if subscribed and self._serves is not None:
            self.out.service.append(SubscriptionChange("subscribed", subscribed))
        self.out.device.append(encode(SubAck(packet.packet_id, tuple(codes)), self.level))

    def _up_forward(self, frame: Frame, now: float | None = None) -> None:
        decode(frame, self.level)  # the broker is trusted less than that: a malformed packet never reaches a device
        self.out.device.append(frame.data)

    def _up_ignore(self, frame: Frame, now: float | None = None) -> None:
        return None

    def _up_disconnect(self, frame: Frame, now: float | None = None) -> None:
        try:
            code = int(decode(frame, self.level).reason_code)
        except MQTTProtocolError:
            code = R.UNSPECIFIED_ERROR
        passed = code if code in (R.SESSION_TAKEN_OVER, R.SERVER_SHUTTING_DOWN, R.ADMINISTRATIVE_ACTION) \
            else R.SERVER_BUSY
        self._close(Close("upstream_disconnect", f"upstream broker disconnected the session (0x{code:02X})",
                          ReasonCode(passed)))

    def _subs_changed(self) -> None:
        parents = set()
        for flt in self._subs:
            bare = split_shared_subscription(flt)[1]
            if bare.endswith("/#"):
                parents.add(bare[:-2])
        self._hash_parents = frozenset(parents)

    # ------------------------------------------------------------------ events from the shell

    def upstream_lost(self, detail: str = "connection lost") -> None:
        if self.state is State.UPSTREAM_PENDING:
            self.upstream_failed(detail)
        elif self.state is State.ACTIVE:
            self._close(Close("upstream_lost", f"upstream broker connection lost: {detail}", R.SERVER_BUSY))

    def device_lost(self, detail: str = "connection closed by the device") -> None:
        if self.state is State.AWAIT_CONNECT:
            self._close(Close("no_connect", f"{detail} before CONNECT"), action="iot:Connect")
        elif self.state is not State.CLOSED:
            self._close(Close("connection_lost", detail), outcome="closed")

    def connect_timeout(self) -> None:
        if self.state is State.AWAIT_CONNECT:
            self._close(Close("connect_timeout", "no CONNECT before the deadline"), action="iot:Connect")

    def keepalive_expired(self) -> None:
        if self.state is State.ACTIVE:
            self._close(Close("keepalive_timeout", f"nothing received for 1.5 x {self.keepalive} s",
                              R.KEEP_ALIVE_TIMEOUT))

    def device_not_reading(self, buffered_limit: int) -> None:
        """The device does not read what it is sent: more than ``buffered_limit`` bytes wait for it."""
        self._close(Close("device_not_reading", f"more than {buffered_limit} bytes waiting for the device to read",
                          R.QUOTA_EXCEEDED))

    def upstream_ping(self) -> None:
        if self.state is State.ACTIVE:
            self.out.upstream.append(PINGREQ)

    def taken_over(self) -> None:
        self._close(Close("session_taken_over", "another connection with this client id connected",
                          R.SESSION_TAKEN_OVER))

    def shutdown(self) -> None:
        self._close(Close("server_shutting_down", "gateway shutting down", R.SERVER_SHUTTING_DOWN))

    def update_auth(self, auth: Principal | AuthRefusal, cause: str = "registry change") -> None:
        """The registry (or a custom authorizer's refresh) changed what this principal may do: close or
        re-evaluate, at once. ``cause`` ends the log reason of a refusal."""
        if self.state is State.CLOSED or auth is self._auth:
            return
        if isinstance(auth, AuthRefusal):
            self._auth = auth
            if self.state is not State.AWAIT_CONNECT:
                self._close(Close(auth.key, f"{auth.reason} ({cause})", R.ADMINISTRATIVE_ACTION),
                            action="iot:Connect", resource=f"client/{self.client_id}")
            return
        self._auth = auth
        self._cache = DecisionCache(auth.compiled, self.limits.decision_cache_size)
        if self.state in (State.UPSTREAM_PENDING, State.ACTIVE):
            resource = f"client/{self.client_id}"
            decision = self._decide("iot:Connect", resource)
            if not decision.allowed:
                note = "policy change" if cause == "registry change" else cause
                self._close(Close("connect_denied", f"{decision_reason(decision)} ({note})",
                                  R.NOT_AUTHORIZED), action="iot:Connect", resource=resource, decision=decision)

    # ------------------------------------------------------------------ decisions, refusals, events

    def _decide(self, action: str, resource: str) -> Decision:
        return self._cache.evaluate(Request(action, resource, self.client_id, self.peer.ip, self._attrs,
                                            self._will_topic))

    def _refuse_publish(self, packet_id: int | None, qos: int, code: ReasonCode, key: str, reason: str,
                        resource: str, decision: Decision | None, action: str = "iot:Publish") -> None:
        if self.level == 5:
            self._event("publish", action, resource, "denied", key, reason, decision)
            if qos:
                self.out.device.append(encode(PubAck(packet_id, code), 5))
            return
        # MQTT 3.1.1 has no negative PUBACK: AWS IoT closes the connection.
        self._close(Close(key, reason), event="publish", action=action, resource=resource, decision=decision,
                    outcome="denied")

    def _protocol_error(self, exc: MQTTProtocolError) -> None:
        key = "packet_too_large" if exc.reason_code is R.PACKET_TOO_LARGE else "protocol_error"
        if exc.reason_code is R.MALFORMED_PACKET:
            key = "malformed_packet"
        if self.state is State.AWAIT_CONNECT:
            self._close(Close(key, str(exc), exc.reason_code if self.level == 5 else None), action="iot:Connect")
        else:
            self._close(Close(key, str(exc), exc.reason_code))

    def _close(self, close: Close, *, event: str | None = None, action: str | None = None,
               resource: str | None = None, decision: Decision | None = None, outcome: str | None = None) -> None:
        """The one exit: the refusal packet the protocol level allows, one event, then the close effect."""
        if self.state is State.CLOSED:
            return
        code = close.code
        if code is not None and self.level is not None:
            if not self._connack_sent:
                refusal = self._connack_refusal(code)
                if refusal:
                    self.out.device.append(refusal)
            elif self.level == 5 and code in ALLOWED_REASON_CODES[PacketType.DISCONNECT]:
                self.out.device.append(encode(Disconnect(code), 5))
        if not self._connack_sent:
            event = event or "connect"
            action = action or "iot:Connect"
            outcome = outcome or "refused"
        else:
            event = event or "disconnect"
            outcome = outcome or "disconnected"
        if action == "iot:Connect" and resource is None and self.client_id is not None:
            resource = f"client/{self.client_id}"
        self._event(event, action, resource, outcome, close.key, close.reason, decision,
                    code=None if code is None else int(code), flows=self._flow_summary())
        self.state = State.CLOSED
        self._pending.clear()
        self.out.close = close

    def _connack_refusal(self, code: ReasonCode) -> bytes:
        if code is R.ADMINISTRATIVE_ACTION:  # the registry changed before the CONNACK: plainly not authorized
            code = R.NOT_AUTHORIZED
        if self.level == 5:
            if code not in ALLOWED_REASON_CODES[PacketType.CONNACK]:
                code = R.SERVER_UNAVAILABLE if code in (R.SERVER_BUSY, R.SERVER_SHUTTING_DOWN) else R.UNSPECIFIED_ERROR
            return encode(Connack(False, code), 5)
        v3 = connect_return_code_for(code)
        return encode(Connack(False, v3), 4) if v3 is not None else b""

    def _flow(self, action: str, name: str, size: int) -> None:
        entry = self._flows.get((action, name))
        if entry is None:
            if len(self._flows) >= MAX_FLOWS_PER_SESSION:
                entry = self._flows.setdefault(("", ""), [0, 0])  # the overflow row
            else:
                entry = self._flows[(action, name)] = [0, 0]
        entry[0] += 1
        entry[1] += size

    def _flow_summary(self) -> list | None:
        """The allowed flows of this session, for its last access-log event (``flows`` there)."""
        if not self._flows:
            return None
        rows = [{"action": a, "topic": t, "count": n, "bytes": b} for (a, t), (n, b) in self._flows.items() if a]
        other = self._flows.get(("", ""))
        if other is not None:
            rows.append({"action": None, "topic": None, "count": other[0], "bytes": other[1]})
        self._flows.clear()
        return rows

    def _event(self, event: str, action: str | None, resource: str | None, decision: str, key: str, reason: str,
               policy_decision: Decision | None = None, **extra) -> None:
        record = {
            "event": event,
            "source": self.peer.source,
            "certificate_id": self.certificate_id,
            "thing": self.thing,
            "client_id": self.client_id,
            "action": action,
            "resource": resource,
            "decision": decision,
            "statement": statement_text(policy_decision) if policy_decision is not None else None,
            "kind": key,
            "reason": reason,
        }
        if self._auth.log:
            record.update(self._auth.log)
        if event == "connect":
            record["auth"] = auth_method(self._auth)
            if self._auth.certificate_id is not None:
                record["ca_id"] = getattr(self._auth, "ca_id", None)
        if extra:
            record.update({k: v for k, v in extra.items() if v is not None})
        self.out.events.append(record)


_ACTIVE_DEVICE: dict[PacketType, Callable] = {
    PacketType.PUBLISH: Session._on_publish,
    PacketType.PUBACK: Session._on_puback,
    PacketType.SUBSCRIBE: Session._on_subscribe,
    PacketType.UNSUBSCRIBE: Session._on_unsubscribe,
    PacketType.PINGREQ: Session._on_pingreq,
    PacketType.DISCONNECT: Session._on_disconnect,
}

_ACTIVE_UPSTREAM: dict[PacketType, Callable] = {
    PacketType.PUBLISH: Session._on_delivery,
    PacketType.PUBACK: Session._up_puback,
    PacketType.SUBACK: Session._up_suback,
    PacketType.UNSUBACK: Session._up_forward,
    PacketType.PINGRESP: Session._up_ignore,
    PacketType.DISCONNECT: Session._up_disconnect,
}
