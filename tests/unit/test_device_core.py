"""The sans-IO device client core: bytes in -> events and bytes out.

One table of named cases; each is a script of steps run twice -- server bytes fed whole and byte by byte -- and
must give the same events and the same bytes out. Session behaviour across connections (re-send with DUP=1 and
the same packet id [MQTT-4.4.0-1]) follows as scripted sequences.
"""

from __future__ import annotations

import dataclasses

import pytest

from devices.client import (
    ClientCore,
    ClientOptions,
    Connected,
    ConnectRefused,
    InflightFull,
    MessageReceived,
    NotConnected,
    PongReceived,
    ProtocolViolation,
    PublishAbandoned,
    PublishAcked,
    ServerDisconnected,
    State,
    Subscribed,
    Unsubscribed,
    keepalive_step,
)
from gateway.mqtt import (
    Connack,
    Connect,
    ConnectReturnCode,
    Disconnect,
    MQTTLocalError,
    PingReq,
    PingResp,
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
    encode,
)

V4 = ClientOptions(protocol_level=4)
V5 = ClientOptions(protocol_level=5)
V4_PERSISTENT = ClientOptions(protocol_level=4, clean_start=False)
V5_PERSISTENT = ClientOptions(protocol_level=5, clean_start=False, session_expiry=300)


# --------------------------------------------------------------------------------------------- script steps

@dataclasses.dataclass(frozen=True)
class Call:
    """Call a core method; ``out`` is what it queues (None: not checked)."""

    method: str
    args: tuple = ()
    out: bytes | None = b""
    kwargs: tuple = ()


@dataclasses.dataclass(frozen=True)
class Recv:
    """Server bytes; ``events`` expected, ``out`` queued in answer."""

    data: bytes
    events: tuple = ()
    out: bytes = b""


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    options: ClientOptions
    steps: tuple
    state: State | None = None     # state at the end

    def __str__(self) -> str:
        return self.name


def connect_bytes(options: ClientOptions, client_id: str = "dev-1", *, clean: bool | None = None) -> bytes:
    props = Properties()
    if options.protocol_level == 5:
        props = Properties(session_expiry_interval=options.session_expiry or None,
                           maximum_packet_size=options.max_packet_size)
    return encode(Connect(client_id, options.protocol_level, options.clean_start if clean is None else clean,
                          options.keep_alive, options.username, options.password, options.will, props),
                  options.protocol_level)


def pub(topic: str, payload: bytes, qos: int, pid: int | None = None, level: int = 4, *, dup: bool = False,
        retain: bool = False, properties: Properties = Properties()) -> bytes:
    return encode(Publish(topic, payload, qos, retain, dup, pid, properties), level)


def ack(level: int, packet) -> bytes:
    return encode(packet, level)


CONNACK_V4 = b"\x20\x02\x00\x00"
CONNACK_V5 = encode(Connack(False, ReasonCode.SUCCESS), 5)


def connected(options: ClientOptions) -> tuple:
    """Steps that bring a core to CONNECTED (clean session)."""
    level = options.protocol_level
    return (Call("connect", out=connect_bytes(options)),
            Recv(CONNACK_V4 if level == 4 else CONNACK_V5, (Connected(False),)))


CASES = [
    Case("v3.1.1 CONNECT bytes and accepted CONNACK", V4, (
        # fixed header, "MQTT", level 4, Clean Session, keepalive 60, client id
        Call("connect", out=b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05dev-1"),
        Recv(b"\x20\x02\x00\x00", (Connected(False),)),
    ), State.CONNECTED),
    Case("v3.1.1 CONNACK refusal is an event with the return code", V4, (
        Call("connect", out=None),
        Recv(b"\x20\x02\x00\x05", (ConnectRefused(ConnectReturnCode.NOT_AUTHORIZED),)),
    ), State.DISCONNECTED),
    Case("v5 CONNECT carries Maximum Packet Size; CONNACK accepted", V5, (
        Call("connect", out=connect_bytes(V5)),
        Recv(CONNACK_V5, (Connected(False),)),
    ), State.CONNECTED),
    Case("v5 CONNACK 0x87 with a reason string", V5, (
        Call("connect", out=None),
        Recv(encode(Connack(False, ReasonCode.NOT_AUTHORIZED, Properties(reason_string="policy")), 5),
             (ConnectRefused(0x87, Properties(reason_string="policy")),)),
    ), State.DISCONNECTED),
    Case("v3.1.1 will, username and persistent session in CONNECT", dataclasses.replace(
        V4_PERSISTENT, will=Will("dt/dev-1/lwt", b"gone", 1, False), username="dev-1"), (
        Call("connect", out=encode(Connect("dev-1", 4, False, 60, "dev-1", None,
                                           Will("dt/dev-1/lwt", b"gone", 1, False)), 4)),
        Recv(CONNACK_V4, (Connected(False),)),
    ), State.CONNECTED),
    Case("QoS 0 publish goes out at once", V4, (
        *connected(V4),
        Call("publish", ("dt/dev-1/t", b"21.5", 0), out=b"\x30\x10\x00\x0adt/dev-1/t21.5"),
    ), State.CONNECTED),
    Case("QoS 1 publish, PUBACK -> acked", V4, (
        *connected(V4),
        Call("publish", ("dt/dev-1/t", b"x", 1), out=pub("dt/dev-1/t", b"x", 1, 1)),
        Recv(b"\x40\x02\x00\x01", (PublishAcked(1),)),
    ), State.CONNECTED),
    Case("v5 PUBACK 0x87 is a refused publish", V5, (
        *connected(V5),
        Call("publish", ("dt/other/t", b"x", 1), out=pub("dt/other/t", b"x", 1, 1, 5)),
        Recv(ack(5, PubAck(1, ReasonCode.NOT_AUTHORIZED)), (PublishAcked(1, 0x87),)),
    ), State.CONNECTED),
    Case("v5 PUBACK 0x10 no matching subscribers is a success code", V5, (
        *connected(V5),
        Call("publish", ("dt/dev-1/t", b"x", 1), out=None),
        Recv(ack(5, PubAck(1, ReasonCode.NO_MATCHING_SUBSCRIBERS)), (PublishAcked(1, 0x10),)),
    ), State.CONNECTED),
    Case("PUBACK for an unknown packet id is ignored", V4, (
        *connected(V4),
        Recv(b"\x40\x02\x00\x07", ()),
    ), State.CONNECTED),
    Case("incoming QoS 1 PUBLISH -> message and PUBACK", V4, (
        *connected(V4),
        Recv(pub("cmd/dev-1/go", b"on", 1, 9), (MessageReceived(Publish("cmd/dev-1/go", b"on", 1, False, False, 9)),),
             out=b"\x40\x02\x00\x09"),
    ), State.CONNECTED),
    Case("incoming QoS 0 PUBLISH -> message only", V5, (
        *connected(V5),
        Recv(pub("cmd/dev-1/go", b"on", 0, level=5), (MessageReceived(Publish("cmd/dev-1/go", b"on")),)),
    ), State.CONNECTED),
    Case("two packets in one chunk", V4, (
        *connected(V4),
        Call("publish", ("dt/dev-1/a", b"1", 1), out=None),
        Call("publish", ("dt/dev-1/b", b"2", 1), out=None),
        Recv(b"\x40\x02\x00\x01\x40\x02\x00\x02", (PublishAcked(1), PublishAcked(2))),
    ), State.CONNECTED),
    Case("SUBSCRIBE -> SUBACK granted and refused codes", V4, (
        *connected(V4),
        Call("subscribe", ((Subscription("cmd/dev-1/#", 1), Subscription("cmd/other/#", 1)),),
             out=encode(Subscribe(1, (Subscription("cmd/dev-1/#", 1), Subscription("cmd/other/#", 1))), 4)),
        Recv(b"\x90\x04\x00\x01\x01\x80", (Subscribed(1, (1, 0x80)),)),
    ), State.CONNECTED),
    Case("v3.1.1 UNSUBSCRIBE -> UNSUBACK without codes", V4, (
        *connected(V4),
        Call("unsubscribe", (("cmd/dev-1/#",),), out=encode(Unsubscribe(1, ("cmd/dev-1/#",)), 4)),
        Recv(b"\xb0\x02\x00\x01", (Unsubscribed(1),)),
    ), State.CONNECTED),
    Case("v5 UNSUBACK with a code per filter", V5, (
        *connected(V5),
        Call("unsubscribe", (("a/#", "b/#"),), out=None),
        Recv(ack(5, UnsubAck(1, (ReasonCode.SUCCESS, ReasonCode.NO_SUBSCRIPTION_EXISTED))),
             (Unsubscribed(1, (0, 0x11)),)),
    ), State.CONNECTED),
    Case("PINGREQ -> PINGRESP", V4, (
        *connected(V4),
        Call("ping", out=b"\xc0\x00"),
        Recv(b"\xd0\x00", (PongReceived(),)),
    ), State.CONNECTED),
    Case("v5 DISCONNECT from the server carries its reason", V5, (
        *connected(V5),
        Recv(ack(5, Disconnect(ReasonCode.SESSION_TAKEN_OVER)), (ServerDisconnected(0x8E),)),
    ), State.DISCONNECTED),
    Case("client DISCONNECT v3.1.1", V4, (
        *connected(V4),
        Call("disconnect", out=b"\xe0\x00"),
    ), State.DISCONNECTED),
    Case("client DISCONNECT v5 with a reason", V5, (
        *connected(V5),
        Call("disconnect", (ReasonCode.DISCONNECT_WITH_WILL_MESSAGE,), out=b"\xe0\x01\x04"),
    ), State.DISCONNECTED),
    Case("v5 CONNACK properties: server keepalive, receive maximum, max packet size, assigned id", V5, (
        Call("connect", out=None),
        Recv(encode(Connack(False, 0, Properties(server_keep_alive=30, receive_maximum=5,
                                                 maximum_packet_size=1000,
                                                 assigned_client_identifier="x")), 5),
             (Connected(False, Properties(server_keep_alive=30, receive_maximum=5, maximum_packet_size=1000,
                                          assigned_client_identifier="x")),)),
    ), State.CONNECTED),
]

VIOLATIONS = [
    # (name, options, steps before, server bytes, clause, bytes the core answers with)
    ("PUBLISH before CONNACK", V4, (Call("connect", out=None),), pub("a", b"", 0), "§4.8", b""),
    ("second CONNACK", V4, connected(V4), CONNACK_V4, "§4.8", b""),
    ("DISCONNECT from a v3.1.1 server", V4, connected(V4), b"\xe0\x00", "§3.14", b""),
    ("QoS 2 PUBLISH, v5 answers DISCONNECT 0x9B", V5, connected(V5), pub("a", b"", 2, 1, 5), "§3.8.4",
     b"\xe0\x01\x9b"),
    ("Topic Alias although none allowed", V5, connected(V5),
     pub("a", b"", 0, level=5, properties=Properties(topic_alias=1)), "§3.3.2.3.4", b"\xe0\x01\x94"),
    ("Session Present after Clean Session", V4, (Call("connect", out=None),), b"\x20\x02\x01\x00",
     "[MQTT-3.2.2-1]", b""),
    ("Session Present after Clean Start", V5, (Call("connect", out=None),), encode(Connack(True, 0), 5),
     "[MQTT-3.2.2-2]", b""),
    ("SUBACK with a code too few", V4, (*connected(V4), Call("subscribe", ((Subscription("a"),
                                                                             Subscription("b")),), out=None)),
     b"\x90\x03\x00\x01\x00", "[MQTT-3.9.3-1]", b""),
    ("reserved packet type 0", V5, connected(V5), b"\x00\x00", "§2.1.2", b"\xe0\x01\x81"),
    ("PUBLISH with QoS 3", V4, connected(V4), b"\x36\x03\x00\x01a", "[MQTT-3.3.1-4]", b""),
]


# --------------------------------------------------------------------------------------------- runner

def _chunks(data: bytes, mode: str):
    if mode == "whole":
        return [data]
    return [data[i:i + 1] for i in range(len(data))]


def run_steps(core: ClientCore, steps, mode: str = "whole") -> None:
    for step in steps:
        if isinstance(step, Call):
            getattr(core, step.method)(*step.args, **dict(step.kwargs))
            out = core.data_to_send()
            if step.out is not None:
                assert out == step.out, f"{step.method}: {out!r} != {step.out!r}"
        else:
            events = []
            for chunk in _chunks(step.data, mode):
                events.extend(core.receive_data(chunk))
            assert tuple(events) == step.events
            assert core.data_to_send() == step.out


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_core_case(case: Case, mode: str) -> None:
    core = ClientCore("dev-1", case.options)
    run_steps(core, case.steps, mode)
    if case.state is not None:
        assert core.state is case.state


@pytest.mark.parametrize("name,options,before,data,clause,answer", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_core_protocol_violation(name, options, before, data, clause, answer) -> None:
    core = ClientCore("dev-1", options)
    run_steps(core, before)
    events = core.receive_data(data)
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation), events
    assert events[0].error.clause == clause
    assert core.data_to_send() == answer
    assert core.state is State.DISCONNECTED


# --------------------------------------------------------------------------------------------- sessions

def test_persistent_v311_resends_unacked_with_dup_and_same_id() -> None:
    core = ClientCore("dev-1", V4_PERSISTENT)
    run_steps(core, (Call("connect", out=connect_bytes(V4_PERSISTENT)), Recv(CONNACK_V4, (Connected(False),))))
    assert core.publish("dt/dev-1/t", b"a", 1) == 1
    assert core.publish("dt/dev-1/t", b"b", 1) == 2
    core.data_to_send()
    run_steps(core, (Recv(b"\x40\x02\x00\x01", (PublishAcked(1),)),))
    assert core.connection_lost() == ()
    assert core.inflight == (2,)
    # reconnect: Clean Session 0 again; Session Present 1 -> PUBLISH 2 again, DUP=1, same packet id
    run_steps(core, (
        Call("connect", out=connect_bytes(V4_PERSISTENT)),
        Recv(b"\x20\x02\x01\x00", (Connected(True, resent=(2,)),),
             out=pub("dt/dev-1/t", b"b", 1, 2, dup=True)),
        Recv(b"\x40\x02\x00\x02", (PublishAcked(2),)),
    ))
    assert core.inflight == ()


def test_session_not_present_resends_as_new_publish() -> None:
    core = ClientCore("dev-1", V4_PERSISTENT)
    run_steps(core, (Call("connect", out=None), Recv(CONNACK_V4, (Connected(False),))))
    core.publish("dt/dev-1/t", b"a", 1)
    core.data_to_send()
    core.connection_lost()
    # the server lost the session: its state is discarded [MQTT 5.0 §3.2.2.1.1], the message is still owed
    run_steps(core, (Call("connect", out=None),
                     Recv(CONNACK_V4, (Connected(False, resent=()),), out=pub("dt/dev-1/t", b"a", 1, 1))))


def test_v5_persistent_reconnect_asks_to_resume() -> None:
    core = ClientCore("dev-1", dataclasses.replace(V5_PERSISTENT, clean_start=True))
    run_steps(core, (Call("connect", out=connect_bytes(V5_PERSISTENT, clean=True)),
                     Recv(CONNACK_V5, (Connected(False),))))
    core.publish("dt/dev-1/t", b"a", 1)
    core.data_to_send()
    core.connection_lost()
    run_steps(core, (Call("connect", out=connect_bytes(V5_PERSISTENT, clean=False)),
                     Recv(encode(Connack(True, 0), 5), (Connected(True, resent=(1,)),),
                          out=pub("dt/dev-1/t", b"a", 1, 1, 5, dup=True))))


def test_non_persistent_reconnect_starts_clean() -> None:
    core = ClientCore("dev-1", V4)
    run_steps(core, connected(V4))
    core.publish("dt/dev-1/t", b"a", 1)
    core.data_to_send()
    core.connection_lost()
    run_steps(core, (Call("connect", out=connect_bytes(V4, clean=True)),
                     Recv(CONNACK_V4, (Connected(False),), out=pub("dt/dev-1/t", b"a", 1, 1))))


def test_max_resends_abandons_a_publish_the_server_never_acknowledges() -> None:
    options = dataclasses.replace(V4_PERSISTENT, max_resends=1)
    core = ClientCore("dev-1", options)
    run_steps(core, (Call("connect", out=None), Recv(CONNACK_V4, (Connected(False),))))
    core.publish("dt/other/t", b"x", 1)
    core.data_to_send()
    core.connection_lost()                       # e.g. AWS closes on an unauthorized 3.1.1 publish
    run_steps(core, (Call("connect", out=None),
                     Recv(b"\x20\x02\x01\x00", (Connected(True, resent=(1,)),),
                          out=pub("dt/other/t", b"x", 1, 1, dup=True))))
    core.connection_lost()                       # and again: written twice, re-sent once -> given up
    run_steps(core, (Call("connect", out=None),
                     Recv(b"\x20\x02\x01\x00", (PublishAbandoned(1), Connected(True)))))
    assert core.inflight == ()


def test_qos1_publish_while_disconnected_is_queued_and_never_dup() -> None:
    core = ClientCore("dev-1", V4_PERSISTENT)
    assert core.publish("dt/dev-1/t", b"early", 1) == 1
    assert core.data_to_send() == b""
    run_steps(core, (Call("connect", out=None),
                     Recv(b"\x20\x02\x00\x00", (Connected(False),), out=pub("dt/dev-1/t", b"early", 1, 1))))


def test_qos0_and_subscribe_need_a_connection() -> None:
    core = ClientCore("dev-1", V4)
    with pytest.raises(NotConnected):
        core.publish("a", b"", 0)
    with pytest.raises(NotConnected):
        core.subscribe([Subscription("a")])
    with pytest.raises(NotConnected):
        core.unsubscribe(["a"])


def test_subscribe_and_unsubscribe_left_open_are_reported_on_loss() -> None:
    core = ClientCore("dev-1", V4)
    run_steps(core, connected(V4))
    sub = core.subscribe([Subscription("a")])
    unsub = core.unsubscribe(["b"])
    assert core.connection_lost() == (sub, unsub)


def test_receive_maximum_limits_publishes_on_the_wire() -> None:
    core = ClientCore("dev-1", V5)
    run_steps(core, (Call("connect", out=None),
                     Recv(encode(Connack(False, 0, Properties(receive_maximum=2)), 5),
                          (Connected(False, Properties(receive_maximum=2)),))))
    for payload in (b"1", b"2", b"3"):
        core.publish("t", payload, 1)
    assert core.data_to_send() == pub("t", b"1", 1, 1, 5) + pub("t", b"2", 1, 2, 5)
    run_steps(core, (Recv(ack(5, PubAck(1)), (PublishAcked(1),), out=pub("t", b"3", 1, 3, 5)),))


def test_inflight_is_bounded() -> None:
    core = ClientCore("dev-1", ClientOptions(max_inflight=2))
    core.publish("t", b"", 1)
    core.publish("t", b"", 1)
    assert core.inflight_full
    with pytest.raises(InflightFull):
        core.publish("t", b"", 1)


def test_packet_ids_wrap_and_skip_ids_in_use() -> None:
    core = ClientCore("dev-1", V4)
    run_steps(core, connected(V4))
    core._next_id = 65534
    assert core.publish("t", b"", 1) == 65534
    assert core.publish("t", b"", 1) == 65535
    assert core.publish("t", b"", 1) == 1
    core._next_id = 65534
    assert core.subscribe([Subscription("a")]) == 2  # 65534, 65535 and 1 are in use


def test_publish_larger_than_the_servers_maximum_packet_size_is_refused_locally() -> None:
    core = ClientCore("dev-1", V5)
    run_steps(core, (Call("connect", out=None),
                     Recv(encode(Connack(False, 0, Properties(maximum_packet_size=64)), 5),
                          (Connected(False, Properties(maximum_packet_size=64)),))))
    with pytest.raises(MQTTLocalError, match="Maximum Packet Size of 64"):
        core.publish("t", b"x" * 100, 1)
    assert core.inflight == ()


def test_qos2_and_bad_topics_are_local_errors() -> None:
    core = ClientCore("dev-1", V4)
    run_steps(core, connected(V4))
    with pytest.raises(MQTTLocalError, match="QoS 2"):
        core.publish("t", b"", 2)
    with pytest.raises(MQTTLocalError):
        core.publish("bad/#", b"", 0)
    with pytest.raises(MQTTLocalError):
        core.subscribe([Subscription("a", 2)])


def test_server_keep_alive_replaces_ours() -> None:
    core = ClientCore("dev-1", V5)
    run_steps(core, (Call("connect", out=None),
                     Recv(encode(Connack(False, 0, Properties(server_keep_alive=30)), 5),
                          (Connected(False, Properties(server_keep_alive=30)),))))
    assert core.keep_alive == 30


def test_trace_sees_packets_both_ways() -> None:
    seen = []
    core = ClientCore("dev-1", V4, trace=lambda d, p: seen.append((d, type(p).__name__)))
    run_steps(core, connected(V4) + (Call("ping", out=None), Recv(b"\xd0\x00", (PongReceived(),))))
    assert seen == [("out", "Connect"), ("in", "Connack"), ("out", "PingReq"), ("in", "PingResp")]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="protocol_level"):
        ClientOptions(protocol_level=3)
    with pytest.raises(ValueError, match="session_expiry is MQTT 5 only"):
        ClientOptions(protocol_level=4, session_expiry=10)
    with pytest.raises(ValueError, match="max_inflight"):
        ClientOptions(max_inflight=0)
    with pytest.raises(ValueError, match="max_resends"):
        ClientOptions(max_resends=-1)
    assert ClientOptions(clean_start=False).persistent
    assert not ClientOptions(protocol_level=5, clean_start=False).persistent
    assert ClientOptions(protocol_level=5, session_expiry=1).persistent


def test_connect_twice_is_a_local_error() -> None:
    core = ClientCore("dev-1", V4)
    core.connect()
    with pytest.raises(MQTTLocalError):
        core.connect()


def test_unused_packets_encode_like_the_codec() -> None:
    # the literals in the table are the codec's encoding, not a second opinion
    assert encode(PingReq(), 4) == b"\xc0\x00"
    assert encode(PingResp(), 4) == b"\xd0\x00"
    assert encode(SubAck(1, (1, 0x80)), 4) == b"\x90\x04\x00\x01\x01\x80"


# --------------------------------------------------------------------------------------------- keepalive

KEEPALIVE = [
    # now, last_write, ping_sent_at, keep_alive, ping_timeout -> action, next check
    ("idle, not yet due", 10.0, 0.0, None, 60, 10, (None, 60.0)),
    ("due: ping, check again at the PINGRESP deadline", 60.0, 0.0, None, 60, 10, ("ping", 70.0)),
    ("long overdue still pings once", 500.0, 0.0, None, 60, 10, ("ping", 510.0)),
    ("written recently: not due", 60.0, 30.0, None, 60, 10, (None, 90.0)),
    ("PINGRESP outstanding, before its deadline", 65.0, 60.0, 60.0, 60, 10, (None, 70.0)),
    ("PINGRESP overdue", 70.0, 60.0, 60.0, 60, 10, ("timeout", None)),
]


@pytest.mark.parametrize("name,now,last,ping,ka,timeout,expected", KEEPALIVE, ids=[k[0] for k in KEEPALIVE])
def test_keepalive_step(name, now, last, ping, ka, timeout, expected) -> None:
    assert keepalive_step(now, last, ping, ka, timeout) == expected
