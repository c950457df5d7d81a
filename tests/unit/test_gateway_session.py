"""gateway.session without sockets: packets in, effects out. Tables of named cases: what the device sends
after a successful CONNECT (and what the broker sends), and what must come out on each side."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.auth import AuthRefusal, CertState, Principal
from gateway.config import Limits
from gateway.mqtt import (
    Connack,
    Connect,
    Disconnect,
    Framer,
    PacketType,
    Properties,
    PubAck,
    Publish,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
    decode,
    encode,
)
from gateway.policy import Identity, ThingInfo, compile_policies, parse_policy
from gateway.session import (Peer, RateLimiter, ServiceRequest, Session, State, SubscriptionChange, TokenBucket,
                             keepalive_for, topic_problem)

R = ReasonCode
POLICY = parse_policy("""{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/room/*"},
    {"Effect": "Allow", "Action": "iot:RetainPublish", "Resource": "arn:aws:iot:*:*:topic/room/keep"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/room/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Subscribe"], "Resource": "arn:aws:iot:*:*:*/$aws/*"},
    {"Effect": "Deny", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/room/secret"}
  ]
}""", name="room")
NO_CONNECT = parse_policy("""{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}]}""", name="nothing")
CERT = "ab" * 32
LIMITS = Limits(connect_burst_per_client_id=100)
GATEWAY_PASSWORD = b"gateway-secret"


def principal(*docs, thing: str = "alice") -> Principal:
    identity = Identity(certificate_id=CERT, things={thing: ThingInfo(thing)})
    state = CertState("ACTIVE", None, None, tuple((d.name, d.version, d.text) for d in docs), ((thing, None, ()),))
    return Principal(CERT, None, (thing,), compile_policies(docs or (POLICY,), identity), state)


def frames(data) -> list:
    framer = Framer(1 << 24)
    return list(framer.feed(b"".join(bytes(d) for d in data)))


def packets(data, level) -> list:
    return [decode(f, level) for f in frames(data)]


def drain(session: Session) -> tuple[list, list, list]:
    out = session.out
    device = packets(out.device, session.level)
    upstream = packets(out.upstream, session.level)
    events = list(out.events)
    out.device.clear()
    out.upstream.clear()
    out.events.clear()
    return device, upstream, events


def connected(level: int = 5, auth=None, limits: Limits = LIMITS, connect: Connect | None = None,
              connack: Connack | None = None, serves=None) -> Session:
    """A session past CONNECT, upstream CONNECT and CONNACK, with its outputs drained."""
    session = Session(Peer("192.0.2.7", 40000, "localhost", "TLSv1.3"), auth or principal(), limits,
                      connect_limiter=RateLimiter(100, 100), upstream_username="iotgate-gateway",
                      upstream_password=GATEWAY_PASSWORD, assign_client_id=lambda: "assigned-1", serves=serves)
    connect = connect or Connect("alice", protocol_level=level, username="dev", password=b"device-pw")
    session.receive_device(encode(connect, level), 0.0)
    if session.closed:
        return session
    assert session.out.open_upstream and session.out.claim == connect.client_id or session.out.claim
    session.upstream_connected()
    session.receive_upstream(encode(connack or Connack(False, 0), level))
    return session


# --------------------------------------------------------------------------------------------- CONNECT

def test_upstream_connect_is_rewritten_with_the_gateways_own_credentials():
    session = Session(Peer("192.0.2.7", 1), principal(), LIMITS, upstream_username="iotgate-gateway",
                      upstream_password=GATEWAY_PASSWORD)
    props = Properties(topic_alias_maximum=20, session_expiry_interval=86400, receive_maximum=5)
    session.receive_device(encode(Connect("alice", protocol_level=5, username="dev", password=b"pw",
                                          keep_alive=5, clean_start=False, properties=props), 5), 0.0)
    session.upstream_connected()
    (upstream,) = packets(session.out.upstream, 5)
    assert upstream.client_id == "alice" and not upstream.clean_start
    assert (upstream.username, upstream.password) == ("iotgate-gateway", GATEWAY_PASSWORD)
    assert upstream.keep_alive == 30
    assert upstream.properties.topic_alias_maximum is None  # the broker never sends aliases we cannot check
    assert upstream.properties.session_expiry_interval == 3600
    assert upstream.properties.receive_maximum == 5
    session.receive_upstream(encode(Connack(True, 0), 5))
    (connack,) = packets(session.out.device, 5)
    assert connack.session_present and connack.reason_code == 0
    p = connack.properties
    assert (p.maximum_qos, p.topic_alias_maximum, p.server_keep_alive, p.session_expiry_interval) == (1, 8, 30, 3600)
    assert session.state is State.ACTIVE


@pytest.mark.parametrize("level,connect,auth,expected,kind", [
    (5, Connect("bob", protocol_level=5), None, R.NOT_AUTHORIZED, "connect_denied"),
    (4, Connect("bob", protocol_level=4), None, 0x05, "connect_denied"),
    (5, Connect("alice", protocol_level=5), AuthRefusal(CERT, "certificate_revoked", "certificate is REVOKED"),
     R.NOT_AUTHORIZED, "certificate_revoked"),
    (4, Connect("", protocol_level=4), None, 0x02, "client_id_invalid"),
    (5, Connect("a" * 129, protocol_level=5), None, R.CLIENT_IDENTIFIER_NOT_VALID, "client_id_invalid"),
    (5, Connect("alice", protocol_level=5, will=Will("room/w", qos=2)), None, R.QOS_NOT_SUPPORTED,
     "qos_not_supported"),
    (5, Connect("alice", protocol_level=5, properties=Properties(authentication_method="SCRAM")), None,
     R.BAD_AUTHENTICATION_METHOD, "auth_method"),
    (5, Connect("alice", protocol_level=5), principal(NO_CONNECT), R.NOT_AUTHORIZED, "connect_denied"),
], ids=["v5-other-client-id", "v3-other-client-id", "revoked", "v3-empty-id", "long-id", "will-qos2",
        "enhanced-auth", "no-connect-statement"])
def test_connect_refusals(level, connect, auth, expected, kind):
    session = Session(Peer("192.0.2.7", 1), auth or principal(), LIMITS)
    session.receive_device(encode(connect, level), 0.0)
    (connack,) = packets(session.out.device, level)
    assert connack.packet_type is PacketType.CONNACK and connack.reason_code == expected
    assert session.closed and session.out.close.key == kind and not session.out.open_upstream
    (event,) = session.out.events
    assert (event["event"], event["decision"], event["kind"], event["action"]) == ("connect", "refused", kind,
                                                                                   "iot:Connect")


def test_v3_refusal_without_a_return_code_just_closes():
    session = Session(Peer("192.0.2.7", 1), principal(), LIMITS)
    session.receive_device(encode(Connect("alice", protocol_level=4, will=Will("room/w", qos=2)), 4), 0.0)
    assert session.out.device == [] and session.closed


ANY_CLIENT = parse_policy('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", '
                          '"Resource": "*"}]}', name="any")


def test_v5_empty_client_id_gets_an_assigned_one():
    session = connected(5, principal(ANY_CLIENT), connect=Connect("", protocol_level=5))
    (connack,) = packets(session.out.device, 5)
    assert connack.properties.assigned_client_identifier == "assigned-1"
    assert session.client_id == "assigned-1"


def test_v3_empty_client_id_with_clean_session_gets_an_assigned_one():
    # [MQTT-3.1.3-6]: the server may assign one; the 3.1.1 CONNACK cannot carry it, a clean session needs none.
    session = connected(4, principal(ANY_CLIENT), connect=Connect("", protocol_level=4, clean_start=True))
    (connack,) = packets(session.out.device, 4)
    assert connack.reason_code == 0 and not connack.session_present
    assert session.client_id == "assigned-1" and session.state is State.ACTIVE
    (upstream,) = packets(session.out.upstream, 4)
    assert upstream.client_id == "assigned-1" and upstream.clean_start
    (event,) = session.out.events
    assert (event["event"], event["decision"], event["resource"]) == ("connect", "allowed", "client/assigned-1")


def test_v3_empty_client_id_without_clean_session_is_identifier_rejected():
    # [MQTT-3.1.3-8]: CONNACK 0x02 "identifier rejected", then close.
    session = Session(Peer("192.0.2.7", 1), principal(ANY_CLIENT), LIMITS, assign_client_id=lambda: "assigned-1")
    session.receive_device(b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x3c\x00\x00", 0.0)  # Clean Session 0, id ""
    assert session.out.device == [b"\x20\x02\x00\x02"]
    assert session.closed and session.out.close.key == "malformed_connect" and not session.out.open_upstream
    assert "[MQTT-3.1.3-8]" in session.out.events[0]["reason"]


def test_v3_empty_client_id_is_still_checked_by_the_policy():
    # The assigned id is what iot:Connect sees: a policy naming the thing refuses it, as any other id.
    session = connected(4, connect=Connect("", protocol_level=4))
    assert session.out.device == [b"\x20\x02\x00\x05"] and session.out.close.key == "connect_denied"
    assert session.out.events[0]["resource"] == "client/assigned-1"


def test_unauthorized_will_is_dropped_not_refused():
    session = Session(Peer("192.0.2.7", 1), principal(), LIMITS)
    session.receive_device(encode(Connect("alice", protocol_level=5, will=Will("elsewhere", b"bye")), 5), 0.0)
    session.upstream_connected()
    (upstream,) = packets(session.out.upstream, 5)
    assert upstream.will is None
    assert session.out.events[0]["event"] == "will" and session.out.events[0]["decision"] == "denied"


@pytest.mark.parametrize("level,code", [(5, R.SERVER_UNAVAILABLE), (4, 0x03)])
def test_upstream_unreachable_is_server_unavailable(level, code):
    session = Session(Peer("192.0.2.7", 1), principal(), LIMITS)
    session.receive_device(encode(Connect("alice", protocol_level=level), level), 0.0)
    session.upstream_failed("connection refused")
    (connack,) = packets(session.out.device, level)
    assert connack.reason_code == code and session.out.close.key == "upstream_unavailable"


def test_packets_before_connack_wait_for_it():
    session = Session(Peer("192.0.2.7", 1), principal(), LIMITS)
    session.receive_device(encode(Connect("alice", protocol_level=5), 5)
                           + encode(Publish("room/a", b"early", qos=1, packet_id=3), 5), 0.0)
    session.upstream_connected()
    assert len(session.out.upstream) == 1  # the CONNECT only
    session.out.upstream.clear()
    session.receive_upstream(encode(Connack(False, 0), 5))
    device, upstream, _ = drain(session)
    assert [p.packet_type for p in device] == [PacketType.CONNACK]
    assert upstream == [Publish("room/a", b"early", qos=1, packet_id=3)]


def test_first_packet_must_be_connect():
    session = Session(Peer("192.0.2.7", 1), principal(), LIMITS)
    session.receive_device(encode(Publish("room/a", b"x"), 4), 0.0)
    assert session.closed and session.out.close.key == "protocol_error" and session.out.device == []


# --------------------------------------------------------------------------------------------- packets, as a table

@dataclasses.dataclass
class Case:
    name: str
    level: int
    device_in: list = dataclasses.field(default_factory=list)
    upstream_in: list = dataclasses.field(default_factory=list)
    to_device: list = dataclasses.field(default_factory=list)
    to_upstream: list = dataclasses.field(default_factory=list)
    close: str | None = None
    events: list = dataclasses.field(default_factory=list)  # (event, decision, kind)


CASES = [
    Case("publish allowed is forwarded as is", 5,
         device_in=[Publish("room/a", b"t", qos=1, packet_id=9)],
         to_upstream=[Publish("room/a", b"t", qos=1, packet_id=9)]),
    Case("puback from the broker reaches the device", 5,
         device_in=[Publish("room/a", b"t", qos=1, packet_id=9)], upstream_in=[PubAck(9)],
         to_device=[PubAck(9)], to_upstream=[Publish("room/a", b"t", qos=1, packet_id=9)]),
    Case("no-matching-subscribers becomes success", 5,
         device_in=[Publish("room/a", b"t", qos=1, packet_id=9)], upstream_in=[PubAck(9, R.NO_MATCHING_SUBSCRIBERS)],
         to_device=[PubAck(9)], to_upstream=[Publish("room/a", b"t", qos=1, packet_id=9)]),
    Case("v5 publish denied gets PUBACK 0x87", 5,
         device_in=[Publish("elsewhere", b"t", qos=1, packet_id=4)], to_device=[PubAck(4, R.NOT_AUTHORIZED)],
         events=[("publish", "denied", "publish_denied")]),
    Case("v5 qos0 publish denied is dropped", 5,
         device_in=[Publish("elsewhere", b"t")], events=[("publish", "denied", "publish_denied")]),
    Case("v3 publish denied closes", 4,
         device_in=[Publish("elsewhere", b"t", qos=1, packet_id=4)], close="publish_denied",
         events=[("publish", "denied", "publish_denied")]),
    Case("retained publish needs RetainPublish", 5,
         device_in=[Publish("room/a", b"t", qos=1, retain=True, packet_id=5),
                    Publish("room/keep", b"t", qos=1, retain=True, packet_id=6)],
         to_device=[PubAck(5, R.NOT_AUTHORIZED)],
         to_upstream=[Publish("room/keep", b"t", qos=1, retain=True, packet_id=6)],
         events=[("publish", "denied", "publish_denied")]),
    Case("$aws publish never goes upstream", 5,
         device_in=[Publish("$aws/things/alice/shadow/get", b"", qos=1, packet_id=2)],
         to_device=[PubAck(2, R.NOT_AUTHORIZED)], events=[("publish", "denied", "reserved_topic")]),
    Case("topic with more than 7 slashes is invalid", 5,
         device_in=[Publish("room/1/2/3/4/5/6/7/8", b"", qos=1, packet_id=2)],
         to_device=[PubAck(2, R.TOPIC_NAME_INVALID)], events=[("publish", "denied", "topic_invalid")]),
    Case("QoS 2 publish is refused", 5,
         device_in=[Publish("room/a", b"t", qos=2, packet_id=1)], to_device=[Disconnect(R.QOS_NOT_SUPPORTED)],
         close="qos_not_supported", events=[("publish", "denied", "qos_not_supported")]),
    Case("topic alias resolved, full topic upstream", 5,
         device_in=[Publish("room/a", b"1", properties=Properties(topic_alias=2)),
                    Publish("", b"2", properties=Properties(topic_alias=2))],
         to_upstream=[Publish("room/a", b"1"), Publish("room/a", b"2")]),
    Case("unknown topic alias closes", 5,
         device_in=[Publish("", b"2", properties=Properties(topic_alias=3))],
         to_device=[Disconnect(R.PROTOCOL_ERROR)], close="topic_alias_invalid",
         events=[("disconnect", "disconnected", "topic_alias_invalid")]),
    Case("payload above 128 KiB closes", 5,
         device_in=[Publish("room/a", b"x" * (128 * 1024 + 1))], to_device=[Disconnect(R.PACKET_TOO_LARGE)],
         close="payload_too_large", events=[("publish", "denied", "payload_too_large")]),
    Case("subscribe: denied filters answered here, others upstream, QoS 2 -> 1", 5,
         device_in=[Subscribe(3, (Subscription("room/+", 2), Subscription("#", 0), Subscription("room/b", 1)))],
         upstream_in=[SubAck(3, (1, 1))],
         to_upstream=[Subscribe(3, (Subscription("room/+", 1, retain_handling=2), Subscription("room/b", 1)))],
         to_device=[SubAck(3, (1, R.NOT_AUTHORIZED, 1))], events=[("subscribe", "denied", "subscribe_denied")]),
    # AWS IoT sends retained messages at subscription only to exact, unshared filters: the broker is asked for
    # none on the others (Retain Handling 2), so the options the device chose, Retain As Published among them,
    # go upstream as they are.
    Case("subscribe options: Retain As Published and No Local go upstream", 5,
         device_in=[Subscribe(3, (Subscription("room/x", 1, no_local=True, retain_as_published=True,
                                               retain_handling=1),
                                  Subscription("room/#", 1, retain_as_published=True),
                                  Subscription("room/+", 0)))],
         upstream_in=[SubAck(3, (1, 1, 0))],
         to_upstream=[Subscribe(3, (Subscription("room/x", 1, no_local=True, retain_as_published=True,
                                                 retain_handling=1),
                                    Subscription("room/#", 1, retain_as_published=True, retain_handling=2),
                                    Subscription("room/+", 0, retain_handling=2)))],
         to_device=[SubAck(3, (1, 1, 0))]),
    Case("v3 subscribe has no options to rewrite", 4,
         device_in=[Subscribe(3, (Subscription("room/+", 1),))], upstream_in=[SubAck(3, (1,))],
         to_upstream=[Subscribe(3, (Subscription("room/+", 1),))], to_device=[SubAck(3, (1,))]),
    Case("v3 subscribe all denied: SUBACK 0x80 without the broker", 4,
         device_in=[Subscribe(3, (Subscription("#", 0),))], to_device=[SubAck(3, (0x80,))],
         events=[("subscribe", "denied", "subscribe_denied")]),
    Case("$aws subscribe refused", 5,
         device_in=[Subscribe(3, (Subscription("$aws/things/alice/shadow/#", 0),))],
         to_device=[SubAck(3, (R.NOT_AUTHORIZED,))], events=[("subscribe", "denied", "reserved_topic")]),
    Case("delivery allowed is forwarded", 5,
         upstream_in=[Publish("room/a", b"m", qos=1, packet_id=77)], to_device=[Publish("room/a", b"m", qos=1,
                                                                                      packet_id=77)]),
    Case("delivery denied is dropped and acknowledged upstream", 5,
         upstream_in=[Publish("room/secret", b"m", qos=1, packet_id=77)], to_upstream=[PubAck(77)],
         events=[("receive", "denied", "receive_denied")]),
    Case("v3 delivery denied qos0 dropped silently upstream", 4,
         upstream_in=[Publish("room/secret", b"m")], events=[("receive", "denied", "receive_denied")]),
    Case("pingreq answered locally", 5, device_in=[b"\xc0\x00"], to_device=[b"\xd0\x00"]),
    Case("device puback goes upstream", 5, device_in=[PubAck(77)], to_upstream=[PubAck(77)]),
    Case("unsubscribe forwarded", 5, device_in=[Unsubscribe(4, ("room/a",))],
         to_upstream=[Unsubscribe(4, ("room/a",))]),
    Case("device DISCONNECT forwarded, then closed", 5, device_in=[Disconnect()], to_upstream=[Disconnect()],
         close="disconnect", events=[("disconnect", "closed", "disconnect")]),
    Case("PUBREC from a device is a protocol error", 5, device_in=[b"\x50\x02\x00\x01"],
         to_device=[Disconnect(R.PROTOCOL_ERROR)], close="protocol_error",
         events=[("disconnect", "disconnected", "protocol_error")]),
    Case("malformed packet closes with 0x81", 5, device_in=[b"\x00\x00"],
         to_device=[Disconnect(R.MALFORMED_PACKET)], close="malformed_packet",
         events=[("disconnect", "disconnected", "malformed_packet")]),
    Case("malformed packet on 3.1.1 just closes", 4, device_in=[b"\x00\x00"], close="malformed_packet",
         events=[("disconnect", "disconnected", "malformed_packet")]),
    Case("second CONNECT is a protocol error", 5, device_in=[Connect("alice", protocol_level=5)],
         to_device=[Disconnect(R.PROTOCOL_ERROR)], close="protocol_error",
         events=[("disconnect", "disconnected", "protocol_error")]),
    Case("broker DISCONNECT closes the device session with 0x89", 5, upstream_in=[Disconnect(R.UNSPECIFIED_ERROR)],
         to_device=[Disconnect(R.SERVER_BUSY)], close="upstream_disconnect",
         events=[("disconnect", "disconnected", "upstream_disconnect")]),
]


def _wire(packet, level) -> bytes:
    return packet if isinstance(packet, bytes) else encode(packet, level)


def _expected(packet, level):
    return decode(packet, level) if isinstance(packet, bytes) else decode(encode(packet, level), level)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_session_table(case: Case):
    session = connected(case.level)
    drain(session)
    to_device, to_upstream, events = [], [], []
    for packet in case.device_in:
        session.receive_device(_wire(packet, case.level), 1.0)
    d, u, e = drain(session)
    to_device += d
    to_upstream += u
    events += e
    for packet in case.upstream_in:
        session.receive_upstream(_wire(packet, case.level))
    d, u, e = drain(session)
    to_device += d
    to_upstream += u
    events += e
    assert to_device == [_expected(p, case.level) for p in case.to_device]
    assert to_upstream == [_expected(p, case.level) for p in case.to_upstream]
    assert (session.out.close.key if session.out.close else None) == case.close
    assert [(e["event"], e["decision"], e["kind"]) for e in events] == case.events


def test_every_case_also_works_byte_at_a_time():
    for case in CASES:
        if case.close:
            continue
        session = connected(case.level)
        drain(session)
        data = b"".join(_wire(p, case.level) for p in case.device_in)
        for i in range(len(data)):
            session.receive_device(data[i:i + 1], 1.0)
        _, upstream, _ = drain(session)
        if not case.upstream_in:
            assert upstream == [_expected(p, case.level) for p in case.to_upstream], case.name


# --------------------------------------------------------------------------------------------- AWS delivery semantics

def subscribed(*filters: str, level: int = 5, retain_as_published: bool = False) -> Session:
    session = connected(level)
    session.receive_device(encode(Subscribe(1, tuple(Subscription(f, 1, retain_as_published=retain_as_published)
                                                     for f in filters)), level), 0.0)
    session.receive_upstream(encode(SubAck(1, tuple(1 for _ in filters)), level))
    drain(session)
    return session


@pytest.mark.parametrize("level,filters,topic,retain,delivered", [
    (5, ("room/#",), "room", False, False),          # AWS: `a/#` does not match its parent `a`
    (5, ("room/#", "room/+"), "room", False, False),
    (5, ("room/#",), "room/x", False, True),
    (5, ("room/x",), "room/x", True, True),          # retained: exact filter
    (5, ("room/+", "room/x"), "room/x", True, True),
    # MQTT 5: the broker sends a wildcard filter no retained message at subscription (Retain Handling 2), so a
    # retained delivery there is a live one kept as published [MQTT-3.3.1-12]
    (5, ("room/#",), "room/x", True, True),
    (5, ("room/#",), "room", True, False),           # ... and `a/#` still does not match `a`
    # MQTT 3.1.1 has no subscription options: RETAIN on a delivery means "sent at subscription", which AWS IoT
    # sends only to exact filters
    (4, ("room/#",), "room/x", True, False),
    (4, ("room/+", "room/x"), "room/x", True, True),
    (4, ("room/#",), "room", False, False),
])
def test_aws_matching_of_deliveries(level, filters, topic, retain, delivered):
    session = subscribed(*filters, level=level)
    session.receive_upstream(encode(Publish(topic, b"m", qos=1, retain=retain, packet_id=5), level))
    device, upstream, _ = drain(session)
    if delivered:
        assert [(p.topic, p.retain) for p in device] == [(topic, retain)] and upstream == []
    else:
        assert device == [] and upstream == [PubAck(5)]


def test_retain_as_published_delivery_keeps_its_bytes():
    session = subscribed("room/+", retain_as_published=True)
    wire = encode(Publish("room/x", b"live", qos=1, retain=True, packet_id=6), 5)
    session.receive_upstream(wire)
    assert session.out.device == [wire] and session.out.upstream == []


# --------------------------------------------------------------------------------------------- registry changes

def test_revoked_live_session_gets_administrative_action():
    session = connected(5)
    drain(session)
    session.update_auth(AuthRefusal(CERT, "certificate_revoked", "certificate is REVOKED"))
    device, _, events = drain(session)
    assert device == [Disconnect(R.ADMINISTRATIVE_ACTION)]
    assert session.out.close.key == "certificate_revoked" and not session.out.close.graceful_upstream
    assert events[0]["code"] == 0x98


def test_new_policy_set_applies_and_lost_connect_closes():
    session = connected(5)
    drain(session)
    narrower = parse_policy("""{"Version": "2012-10-17", "Statement": [
      {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}""", name="narrow")
    session.update_auth(principal(narrower))
    assert not session.closed
    session.receive_device(encode(Publish("room/a", b"t", qos=1, packet_id=1), 5), 2.0)
    device, _, _ = drain(session)
    assert device == [PubAck(1, R.NOT_AUTHORIZED)]
    session.update_auth(principal(NO_CONNECT))
    device, _, _ = drain(session)
    assert device == [Disconnect(R.NOT_AUTHORIZED)] and session.out.close.key == "connect_denied"


@pytest.mark.parametrize("method,code,key", [
    ("taken_over", R.SESSION_TAKEN_OVER, "session_taken_over"),
    ("shutdown", R.SERVER_SHUTTING_DOWN, "server_shutting_down"),
    ("keepalive_expired", R.KEEP_ALIVE_TIMEOUT, "keepalive_timeout"),
    ("upstream_lost", R.SERVER_BUSY, "upstream_lost"),
])
def test_server_side_closes(method, code, key):
    for level in (5, 4):
        session = connected(level)
        drain(session)
        getattr(session, method)()
        device, _, events = drain(session)
        assert device == ([Disconnect(code)] if level == 5 else [])
        assert session.out.close.key == key and events[0]["decision"] == "disconnected"


# --------------------------------------------------------------------------------------------- small rules

@pytest.mark.parametrize("requested,effective", [(0, 1200), (1, 30), (29, 30), (60, 60), (1200, 1200), (5000, 1200)])
def test_keepalive_is_clamped_as_aws_does(requested, effective):
    assert keepalive_for(requested, Limits()) == effective


@pytest.mark.parametrize("topic,is_filter,problem", [
    ("a/b", False, None),
    ("a/" * 7 + "x", False, None),
    ("a/" * 8 + "x", False, "more than 7 forward slashes"),
    ("x" * 257, False, "longer than 256 bytes"),
    ("$share/group/a/b/c/d/e/f/g/h", True, None),  # the share prefix does not count
])
def test_topic_rules(topic, is_filter, problem):
    found = topic_problem(topic, Limits(), is_filter=is_filter)
    assert (found is None) if problem is None else (problem in found)


def test_token_bucket_and_rate_limiter():
    bucket = TokenBucket(rate=1.0, burst=2, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(1.0) and not bucket.take(1.0)
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=2)
    assert limiter.allow("a", 0.0) and not limiter.allow("a", 0.5) and limiter.allow("a", 1.5)
    limiter.allow("b", 0.0)
    limiter.allow("c", 10.0)  # the table stays bounded
    assert len(limiter) <= 2


def test_publish_rate_limit_answers_quota_exceeded():
    session = connected(5, limits=dataclasses.replace(LIMITS, publish_rate=1.0, publish_burst=2))
    drain(session)
    for pid in (1, 2, 3):
        session.receive_device(encode(Publish("room/a", b"t", qos=1, packet_id=pid), 5), 0.0)
    device, upstream, events = drain(session)
    assert device == [PubAck(3, R.QUOTA_EXCEEDED)] and len(upstream) == 2
    assert events[0]["decision"] == "throttled"


def test_inflight_publishes_are_bounded():
    session = connected(5, limits=dataclasses.replace(LIMITS, max_inflight=2))
    drain(session)
    for pid in (1, 2, 3):
        session.receive_device(encode(Publish("room/a", b"t", qos=1, packet_id=pid), 5), 0.0)
    device, _, _ = drain(session)
    assert device == [Disconnect(R.RECEIVE_MAXIMUM_EXCEEDED)]


# --------------------------------------------------------------------------------------------- never raises

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.mqtt_cases import MALFORMED_CASES, VALID_CASES  # noqa: E402

SEEDS = [bytes(c.data) for c in VALID_CASES] + [bytes(c.data) for c in MALFORMED_CASES]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(level=st.sampled_from([4, 5]), chunks=st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(SEEDS)),
                                                      max_size=6),
       side=st.sampled_from(["device", "upstream", "both"]))
def test_arbitrary_bytes_never_raise(level, chunks, side):
    session = connected(level)
    drain(session)
    for i, chunk in enumerate(chunks):
        if side == "device" or (side == "both" and i % 2 == 0):
            session.receive_device(chunk, float(i))
        else:
            session.receive_upstream(chunk)
        drain(session)
    # after anything, the session is either still usable or closed with a reason
    assert session.state in (State.ACTIVE, State.CLOSED)
    if session.closed:
        assert session.out.close.key


@settings(max_examples=200, deadline=None)
@given(level=st.sampled_from([4, 5]), data=st.one_of(st.binary(max_size=128), st.sampled_from(SEEDS)))
def test_arbitrary_first_packet_never_raises(level, data):
    session = Session(Peer("192.0.2.7", 1), principal(), LIMITS)
    session.receive_device(data, 0.0)
    assert session.state in (State.AWAIT_CONNECT, State.UPSTREAM_PENDING, State.CLOSED)


# --------------------------------------------------------------------------------------------- request floods

@pytest.mark.parametrize("level,code", [(5, R.QUOTA_EXCEEDED), (4, 0x80)])
def test_subscribe_above_the_filter_limit_is_refused_whole_with_one_event(level, code):
    session = connected(level)
    drain(session)
    filters = tuple(Subscription(f"room/{i}", 1) for i in range(5000))
    session.receive_device(encode(Subscribe(7, filters), level), 1.0)
    device, upstream, events = drain(session)
    assert device == [SubAck(7, (code,) * 5000)] and upstream == []
    assert [(e["event"], e["decision"], e["kind"]) for e in events] == [("subscribe", "denied", "subscribe_quota")]
    assert not session.closed


def test_subscribe_at_the_filter_limit_still_goes_upstream():
    session = connected(5)
    drain(session)
    filters = tuple(Subscription(f"room/{i}", 1) for i in range(LIMITS.max_filters_per_subscribe))
    session.receive_device(encode(Subscribe(7, filters), 5), 1.0)
    _, upstream, events = drain(session)
    assert upstream == [Subscribe(7, filters)] and events == []


@pytest.mark.parametrize("level,code", [(5, R.QUOTA_EXCEEDED), (4, 0x80)])
def test_subscribes_share_the_publish_rate(level, code):
    session = connected(level, limits=dataclasses.replace(LIMITS, publish_rate=1.0, publish_burst=2))
    drain(session)
    session.receive_device(encode(Publish("room/a", b"t", qos=1, packet_id=1), level), 0.0)
    for pid in (2, 3, 4):
        session.receive_device(encode(Subscribe(pid, (Subscription("room/a", 1),)), level), 0.0)
    device, upstream, events = drain(session)
    assert device == [SubAck(3, (code,)), SubAck(4, (code,))] and len(upstream) == 2
    assert [(e["event"], e["decision"], e["kind"]) for e in events] == [
        ("subscribe", "throttled", "request_rate_exceeded")]  # one line per second, not one per packet


def test_unsubscribes_share_the_publish_rate():
    session = connected(5, limits=dataclasses.replace(LIMITS, publish_rate=1.0, publish_burst=1))
    drain(session)
    session.receive_device(encode(Unsubscribe(1, ("room/a",)), 5) + encode(Unsubscribe(2, ("room/a", "room/b")), 5),
                           0.0)
    device, upstream, events = drain(session)
    assert upstream == [Unsubscribe(1, ("room/a",))]
    assert [(p.packet_id, p.reason_codes) for p in device] == [(2, (R.UNSPECIFIED_ERROR, R.UNSPECIFIED_ERROR))]
    assert [e["decision"] for e in events] == ["throttled"] and not session.closed
    v3 = connected(4, limits=dataclasses.replace(LIMITS, publish_rate=1.0, publish_burst=1))
    drain(v3)
    v3.receive_device(encode(Unsubscribe(1, ("room/a",)), 4) + encode(Unsubscribe(2, ("room/a",)), 4), 0.0)
    device, upstream, _ = drain(v3)
    assert upstream == [Unsubscribe(1, ("room/a",))] and device == []
    assert v3.closed and v3.out.close.key == "request_rate_exceeded"


# --------------------------------------------------------------------------------------------- DISCONNECT

# AWS IoT: "Otherwise, the Session Expiry Interval on DISCONNECT packet will update the Session Expiry Interval of
# the current session", within the account's maximum (one hour by default).
@pytest.mark.parametrize("at_connect,at_disconnect,upstream_expiry,lowered", [
    (1, 5, 5, False),             # raised from a non-zero CONNECT value: allowed (§3.14.2.2.2)
    (600, 3600, 3600, False),     # up to the maximum
    (600, 0xFFFFFFFF, 3600, True),   # never beyond it: lowered, and the log says so
    (86400, 7200, 3600, True),    # the CONNECT's value was capped too
    (600, 60, 60, False),         # shorter is the device's right
    (600, 0, 0, False),           # 0 ends the session at DISCONNECT
    (600, None, None, False),     # absent: the CONNECT's value stands
    (None, 0, 0, False),
])
def test_disconnect_session_expiry_updates_the_session_up_to_the_maximum(at_connect, at_disconnect,
                                                                          upstream_expiry, lowered):
    connect = Connect("alice", protocol_level=5, properties=Properties(session_expiry_interval=at_connect))
    session = connected(5, connect=connect)
    drain(session)
    sent = encode(Disconnect(properties=Properties(session_expiry_interval=at_disconnect)), 5)
    session.receive_device(sent, 1.0)
    assert session.out.device == []
    if not lowered:
        assert session.out.upstream == [sent]  # forwarded as its original bytes
    device, upstream, events = drain(session)
    assert [p.properties.session_expiry_interval for p in upstream] == [upstream_expiry]
    assert session.out.close.key == "disconnect" and session.out.close.graceful_upstream
    (event,) = events
    assert (event["event"], event["decision"], event["kind"]) == ("disconnect", "closed", "disconnect")
    note = f"session expiry interval lowered from {at_disconnect} s to 3600 s (the maximum)"
    assert (note in event["reason"]) is lowered


def test_disconnect_session_expiry_after_none_at_connect_is_a_protocol_error():
    session = connected(5)
    drain(session)
    session.receive_device(encode(Disconnect(properties=Properties(session_expiry_interval=0xFFFFFFFF)), 5), 1.0)
    device, upstream, events = drain(session)
    assert device == [Disconnect(R.PROTOCOL_ERROR)] and upstream == []
    assert session.out.close.key == "protocol_error" and not session.out.close.graceful_upstream
    assert "§3.14.2.2.2" in events[0]["reason"]


def test_disconnect_session_expiry_after_zero_at_connect_is_a_protocol_error():
    session = connected(5, connect=Connect("alice", protocol_level=5,
                                           properties=Properties(session_expiry_interval=0)))
    drain(session)
    session.receive_device(encode(Disconnect(properties=Properties(session_expiry_interval=5)), 5), 1.0)
    device, upstream, _ = drain(session)
    assert device == [Disconnect(R.PROTOCOL_ERROR)] and upstream == []


# --------------------------------------------------------------------------------------------- PUBLISH accounting

@pytest.mark.parametrize("topic,kind", [
    ("$aws/things/alice/shadow/get", "reserved_topic"),
    ("room/1/2/3/4/5/6/7/8", "topic_invalid"),
    ("room/" + "x" * 300, "topic_invalid"),
])
def test_topic_alias_of_a_refused_topic_is_not_remembered(topic, kind):
    session = connected(5)
    drain(session)
    alias = Properties(topic_alias=1)
    session.receive_device(encode(Publish(topic, b"t", qos=1, packet_id=1, properties=alias), 5), 1.0)
    session.receive_device(encode(Publish("", b"t", qos=1, packet_id=2, properties=alias), 5), 1.0)
    device, upstream, events = drain(session)
    assert upstream == [] and device[1:] == [Disconnect(R.PROTOCOL_ERROR)]
    assert [e["kind"] for e in events] == [kind, "topic_alias_invalid"]


def test_byte_rate_counts_the_whole_packet_not_only_the_payload():
    limits = dataclasses.replace(LIMITS, publish_bytes_rate=300, max_payload=64, max_packet_size=300)
    session = connected(5, limits=limits)
    drain(session)
    topic = "room/" + "x" * 200
    for pid in (1, 2):
        session.receive_device(encode(Publish(topic, b"0123456789", qos=1, packet_id=pid), 5), 0.0)
    device, upstream, events = drain(session)
    assert len(upstream) == 1 and device == [PubAck(2, R.QUOTA_EXCEEDED)]
    assert [e["decision"] for e in events] == ["throttled"]


@pytest.mark.parametrize("level,device", [(5, [Connack(False, R.QUOTA_EXCEEDED)]), (4, [])])
def test_too_many_packets_before_connack(level, device):
    session = Session(Peer("192.0.2.7", 1), principal(), LIMITS)
    flood = b"".join(encode(Publish("room/a", b"early"), level) for _ in range(LIMITS.max_pending_packets + 1))
    session.receive_device(encode(Connect("alice", protocol_level=level), level) + flood, 0.0)
    assert packets(session.out.device, level) == device  # 3.1.1 has no return code for it: closed, no CONNACK
    assert session.closed and session.out.close.key == "quota_exceeded"


def test_shared_filters_ask_the_broker_for_no_retained_messages():
    # AWS IoT: "Shared subscriptions don't receive retained messages when subscribing to topic patterns".
    anything = parse_policy('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": '
                            '["iot:Connect", "iot:Subscribe"], "Resource": "*"}]}', name="anything")
    session = connected(5, principal(anything))
    drain(session)
    shared = Subscription("$share/g/room/y", 1, retain_as_published=True)
    session.receive_device(encode(Subscribe(2, (shared,)), 5), 0.0)
    _, upstream, _ = drain(session)
    assert upstream == [Subscribe(2, (dataclasses.replace(shared, retain_handling=2),))]


# --------------------------------------------------------------------------------------------- `$aws/` services

def _shadow_topics(topic: str) -> bool:
    return topic.startswith("$aws/things/") and topic.rsplit("/", 1)[-1] in ("get", "update", "delete")


SERVICE_CASES = [
    # (name, level, packet, services, expected to device, expected service effects, event kind)
    ("allowed request goes to the services, acknowledged", 5,
     Publish("$aws/things/alice/shadow/get", b"{}", qos=1, packet_id=4), _shadow_topics,
     [PubAck(4)], [ServiceRequest("$aws/things/alice/shadow/get", b"{}")], None),
    ("allowed request on 3.1.1", 4, Publish("$aws/things/alice/shadow/update", b"{}", qos=1, packet_id=4),
     _shadow_topics, [PubAck(4)], [ServiceRequest("$aws/things/alice/shadow/update", b"{}")], None),
    ("request outside the policy is refused", 5, Publish("$aws/things/bob/shadow/get", b"", qos=1, packet_id=5),
     _shadow_topics, [PubAck(5, R.NOT_AUTHORIZED)], [], "publish_denied"),
    ("topic no service answers is reserved", 5, Publish("$aws/things/alice/shadow/get/accepted", b"", qos=1,
                                                       packet_id=6),
     _shadow_topics, [PubAck(6, R.NOT_AUTHORIZED)], [], "reserved_topic"),
    ("retained request is refused", 5, Publish("$aws/things/alice/shadow/update", b"{}", qos=1, retain=True,
                                               packet_id=8),
     _shadow_topics, [PubAck(8, R.NOT_AUTHORIZED)], [], "reserved_topic"),
    ("without services every $aws topic is reserved", 5, Publish("$aws/things/alice/shadow/get", b"", qos=1,
                                                                packet_id=7),
     None, [PubAck(7, R.NOT_AUTHORIZED)], [], "reserved_topic"),
]

SERVICE_POLICY = parse_policy("""{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Subscribe"],
     "Resource": ["arn:aws:iot:*:*:topic/$aws/things/alice/*", "arn:aws:iot:*:*:topicfilter/$aws/things/alice/*"]}
  ]
}""", name="shadow")


@pytest.mark.parametrize("name,level,packet,services,to_device,effects,kind", SERVICE_CASES,
                         ids=[c[0] for c in SERVICE_CASES])
def test_service_requests(name, level, packet, services, to_device, effects, kind):
    session = connected(level, auth=principal(SERVICE_POLICY), serves=services)
    drain(session)
    session.receive_device(encode(packet, level), 1.0)
    device, upstream, events = drain(session)
    assert upstream == []  # never upstream
    assert session.out.service == effects
    if level == 4 and kind is not None:
        assert session.closed
    else:
        assert device == to_device
    assert [e["kind"] for e in events] == ([kind] if kind else [])


def test_reply_filters_are_held_upstream_and_reported_for_lifecycle_events():
    session = connected(5, auth=principal(SERVICE_POLICY), serves=_shadow_topics)
    drain(session)
    sub = Subscribe(9, (Subscription("$aws/things/alice/shadow/get/accepted", 1),
                        Subscription("$aws/things/bob/shadow/get/accepted", 1), Subscription("$SYS/broker", 0)))
    session.receive_device(encode(sub, 5), 1.0)
    device, upstream, _ = drain(session)
    assert device == [] and [s.topic_filter for s in upstream[0].subscriptions] == [
        "$aws/things/alice/shadow/get/accepted"]
    session.receive_upstream(encode(SubAck(9, (1,)), 5))
    device, _, _ = drain(session)
    assert device == [SubAck(9, (1, R.NOT_AUTHORIZED, R.NOT_AUTHORIZED))]
    assert session.out.service == [SubscriptionChange("subscribed", ["$aws/things/alice/shadow/get/accepted"])]
    session.out.service.clear()
    session.receive_device(encode(Unsubscribe(10, ("$aws/things/alice/shadow/get/accepted",)), 5), 2.0)
    assert session.out.service == [SubscriptionChange("unsubscribed", ["$aws/things/alice/shadow/get/accepted"])]


# --------------------------------------------------------------------------------------------- forwarding time

@pytest.mark.parametrize("level", [4, 5])
def test_a_qos1_publish_is_timed_from_the_device_to_the_brokers_puback(level):
    session = connected(level)
    session.receive_device(encode(Publish("room/a", b"t", qos=1, packet_id=9), level), 10.0)
    session.receive_device(encode(Publish("room/a", b"u", qos=1, packet_id=10), level), 10.5)
    session.receive_device(encode(Publish("room/a", b"v", qos=0), level), 10.6)  # QoS 0: nothing to time
    session.receive_upstream(encode(PubAck(10), level), 10.75)
    session.receive_upstream(encode(PubAck(9), level), 11.0)
    assert session.out.acked == [0.25, 1.0]
    session.receive_upstream(encode(PubAck(9), level), 12.0)  # a duplicate acknowledgement is not a second one
    assert session.out.acked == [0.25, 1.0]


def test_a_resent_publish_keeps_its_first_time_and_a_refused_one_is_not_timed():
    session = connected(5)
    session.receive_device(encode(Publish("room/a", b"t", qos=1, packet_id=3), 5), 1.0)
    session.receive_device(encode(Publish("room/a", b"t", qos=1, packet_id=3, dup=True), 5), 2.0)
    session.receive_device(encode(Publish("elsewhere", b"t", qos=1, packet_id=4), 5), 2.0)  # denied by policy
    session.receive_upstream(encode(PubAck(3), 5), 3.0)
    session.receive_upstream(encode(PubAck(4), 5), 3.0)
    assert session.out.acked == [2.0]
