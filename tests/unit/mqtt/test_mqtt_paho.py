"""Interoperability with paho-mqtt 2.x, both MQTT 3.1.1 and 5.0.

paho is the encoder for what a client sends (CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT,
acknowledgements): a paho ``Client`` whose outgoing packet queue is captured produces the bytes,
our codec decodes them and must re-encode exactly the same bytes. paho's own packet decoders read
what a server sends (CONNACK, PUBLISH, SUBACK, UNSUBACK, acknowledgements, DISCONNECT) as our codec
encodes it.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet as paho_packet
from paho.mqtt import client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.mqtt import (
    NO_PROPERTIES,
    Connack,
    Connect,
    ConnectReturnCode,
    Disconnect,
    Framer,
    PacketType,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
    decode,
    encode,
    peek_publish,
)
from gateway.mqtt.properties import SPECS, WILL_PROPERTIES
from tests.mqtt_strategies import connects, packets, properties, publishes, subscribes

PAHO_PROTOCOL = {4: paho.MQTTv311, 5: paho.MQTTv5}
PAHO_PACKET_TYPE = {
    PacketType.CONNECT: PacketTypes.CONNECT,
    PacketType.CONNACK: PacketTypes.CONNACK,
    PacketType.PUBLISH: PacketTypes.PUBLISH,
    PacketType.PUBACK: PacketTypes.PUBACK,
    PacketType.PUBREC: PacketTypes.PUBREC,
    PacketType.PUBREL: PacketTypes.PUBREL,
    PacketType.PUBCOMP: PacketTypes.PUBCOMP,
    PacketType.SUBSCRIBE: PacketTypes.SUBSCRIBE,
    PacketType.SUBACK: PacketTypes.SUBACK,
    PacketType.UNSUBSCRIBE: PacketTypes.UNSUBSCRIBE,
    PacketType.UNSUBACK: PacketTypes.UNSUBACK,
    PacketType.DISCONNECT: PacketTypes.DISCONNECT,
    PacketType.AUTH: PacketTypes.AUTH,
    WILL_PROPERTIES: PacketTypes.WILLMESSAGE,
}
_PAHO_NAMES = {ident: name.replace(" ", "") for name, ident in PahoProperties(1).names.items()}
PAHO_SETTINGS = settings(max_examples=60, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# Converting between paho's values and ours


def to_paho_properties(props: Properties, context: int) -> PahoProperties | None:
    if props is NO_PROPERTIES or props == NO_PROPERTIES:
        return None
    out = PahoProperties(PAHO_PACKET_TYPE[context])
    for spec in SPECS:
        value = getattr(props, spec.attr)
        if value is None or value == ():
            continue
        name = _PAHO_NAMES[spec.id]
        if spec.attr in ("user_properties", "subscription_identifiers"):
            for item in value:  # paho appends on each assignment of a repeatable property
                setattr(out, name, item)
        else:
            setattr(out, name, value)
    return out


def from_paho_properties(props: PahoProperties | None) -> Properties:
    if props is None:
        return NO_PROPERTIES
    values = {}
    for spec in SPECS:
        name = _PAHO_NAMES[spec.id]
        if hasattr(props, name):
            value = getattr(props, name)
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            elif isinstance(value, bytearray):
                value = bytes(value)
            values[spec.attr] = value
    return Properties(**values) if values else NO_PROPERTIES


class _NoSocket:
    def close(self) -> None:
        pass


class PahoWire:
    """A paho Client whose outgoing packets are captured instead of written to a socket."""

    def __init__(self, level: int, client_id: str = "paho-device", clean: bool = True) -> None:
        kwargs = {"clean_session": clean} if level == 4 else {}
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=PAHO_PROTOCOL[level], **kwargs)
        self.client._clean_start = clean
        self.sent: list[bytes] = []

        def capture(command, packet, mid, qos, info=None):
            self.sent.append(bytes(packet))
            return paho.MQTT_ERR_SUCCESS

        self.client._packet_queue = capture  # type: ignore[method-assign]
        self.client._sock = _NoSocket()  # _send_publish refuses to run without a socket

    def last(self) -> bytes:
        return self.sent[-1]


def paho_connect(connect: Connect) -> bytes:
    wire = PahoWire(connect.protocol_level, connect.client_id, connect.clean_start)
    client = wire.client
    if connect.username is not None:
        client.username_pw_set(connect.username, connect.password)
    if connect.will is not None:
        will = connect.will
        client.will_set(will.topic, will.payload, will.qos, will.retain,
                        to_paho_properties(will.properties, WILL_PROPERTIES))
    if connect.protocol_level == 5:
        client._connect_properties = to_paho_properties(connect.properties, PacketType.CONNECT)
    client._send_connect(connect.keep_alive)
    return wire.last()


def paho_publish(publish: Publish, level: int) -> bytes:
    wire = PahoWire(level)
    wire.client._send_publish(publish.packet_id or 0, publish.topic.encode(), publish.payload,
                              publish.qos, publish.retain, publish.dup, None,
                              to_paho_properties(publish.properties, PacketType.PUBLISH))
    return wire.last()


def paho_subscribe(subscribe: Subscribe, level: int) -> bytes:
    wire = PahoWire(level)
    wire.client._last_mid = subscribe.packet_id - 1
    if level == 4:
        topics = [(s.topic_filter.encode(), s.qos) for s in subscribe.subscriptions]
    else:
        topics = [(s.topic_filter.encode(),
                   SubscribeOptions(qos=s.qos, noLocal=s.no_local,
                                    retainAsPublished=s.retain_as_published,
                                    retainHandling=s.retain_handling))
                  for s in subscribe.subscriptions]
    wire.client._send_subscribe(False, topics,
                                to_paho_properties(subscribe.properties, PacketType.SUBSCRIBE))
    return wire.last()


def paho_unsubscribe(unsubscribe: Unsubscribe, level: int) -> bytes:
    wire = PahoWire(level)
    wire.client._last_mid = unsubscribe.packet_id - 1
    wire.client._send_unsubscribe(False, [t.encode() for t in unsubscribe.topic_filters],
                                  to_paho_properties(unsubscribe.properties,
                                                     PacketType.UNSUBSCRIBE))
    return wire.last()


def paho_disconnect(disconnect: Disconnect, level: int) -> bytes:
    wire = PahoWire(level)
    reason = None
    if level == 5 and (disconnect.reason_code or disconnect.properties):
        reason = PahoReasonCode(PacketTypes.DISCONNECT, identifier=int(disconnect.reason_code))
    wire.client._send_disconnect(reason,
                                 to_paho_properties(disconnect.properties, PacketType.DISCONNECT))
    return wire.last()


def _body(data: bytes) -> tuple[int, bytes]:
    frame = next(iter(Framer(max_packet_size=1 << 20).feed(data)))
    return data[0], bytes(frame.data[frame.body_offset :])


# ---------------------------------------------------------------------------------------------
# paho encodes, we decode and re-encode the same bytes


def _same_bytes_both_ways(packet, level: int, paho_bytes: bytes) -> None:
    assert decode(paho_bytes, level) == packet
    assert encode(packet, level) == paho_bytes


CONNECTS = [
    Connect("paho-device", 4),
    Connect("paho-device", 4, False, 600, "user", b"pw"),
    Connect("paho-device", 4, True, 15, "user", None, Will("lwt/paho", b"gone", 2, True)),
    Connect("", 4, True, 0),
    Connect("paho-device", 5),
    Connect("paho-device", 5, False, 30, "user", b"\x00\xffpw",
            Will("lwt/paho", b"gone", 1, False,
                 Properties(will_delay_interval=10, content_type="text/plain",
                            user_properties=(("a", "1"),))),
            Properties(session_expiry_interval=3600, receive_maximum=10, topic_alias_maximum=5,
                       maximum_packet_size=149504, request_problem_information=1,
                       user_properties=(("k", "v"), ("k", "w")))),
    Connect("paho-device", 5, True, 60, "", b"token"),
]


@pytest.mark.parametrize("connect", CONNECTS, ids=repr)
def test_paho_connect(connect: Connect) -> None:
    _same_bytes_both_ways(connect, connect.protocol_level, paho_connect(connect))


PUBLISHES = [
    Publish("a/b", b"hello"),
    Publish("devices/d1/telemetry", b'{"t":1}', 1, False, False, 77),
    Publish("state", b"", 2, True, True, 65535),
    Publish("ü/€", b"\x00" * 300, 1, packet_id=2),
]


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize("publish", PUBLISHES, ids=repr)
def test_paho_publish(publish: Publish, level: int) -> None:
    _same_bytes_both_ways(publish, level, paho_publish(publish, level))


def test_paho_publish_v5_properties() -> None:
    publish = Publish("cmd/dev", b"x", 1, packet_id=5, properties=Properties(
        payload_format_indicator=1, message_expiry_interval=30, content_type="json",
        response_topic="reply/dev", correlation_data=b"\x01\x02", topic_alias=3,
        user_properties=(("a", "b"),)))
    data = paho_publish(publish, 5)
    _same_bytes_both_ways(publish, 5, data)
    header = peek_publish(data, 5)
    assert (header.topic, header.packet_id, header.topic_alias) == ("cmd/dev", 5, 3)


SUBSCRIBES = {
    4: [Subscribe(1, (Subscription("a/+/c", 1),)),
        Subscribe(9, (Subscription("a/#", 0), Subscription("#", 2), Subscription("+", 1)))],
    5: [Subscribe(1, (Subscription("a/+/c", 1),)),
        Subscribe(300, (Subscription("cmd/#", 1, True, True, 2),
                        Subscription("$share/g/jobs/+", 2, False, False, 1)),
                  Properties(subscription_identifiers=(42,), user_properties=(("x", "y"),)))],
}


@pytest.mark.parametrize(("level", "subscribe"),
                         [(lv, s) for lv, subs in SUBSCRIBES.items() for s in subs], ids=repr)
def test_paho_subscribe(level: int, subscribe: Subscribe) -> None:
    _same_bytes_both_ways(subscribe, level, paho_subscribe(subscribe, level))


@pytest.mark.parametrize(("level", "unsubscribe"), [
    (4, Unsubscribe(1, ("a/+/c",))),
    (4, Unsubscribe(2, ("a/#", "b"))),
    (5, Unsubscribe(3, ("a/#", "$share/g/b"))),
    (5, Unsubscribe(4, ("x",), Properties(user_properties=(("k", "v"),)))),
], ids=repr)
def test_paho_unsubscribe(level: int, unsubscribe: Unsubscribe) -> None:
    _same_bytes_both_ways(unsubscribe, level, paho_unsubscribe(unsubscribe, level))


@pytest.mark.parametrize(("level", "disconnect"), [
    (4, Disconnect()),
    (5, Disconnect()),
    (5, Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE, Properties(session_expiry_interval=0))),
    (5, Disconnect(ReasonCode.NORMAL_DISCONNECTION, Properties(reason_string="bye"))),
], ids=repr)
def test_paho_disconnect(level: int, disconnect: Disconnect) -> None:
    _same_bytes_both_ways(disconnect, level, paho_disconnect(disconnect, level))


def test_paho_disconnect_with_reason_only() -> None:
    data = paho_disconnect(Disconnect(ReasonCode.SERVER_BUSY), 5)
    assert decode(data, 5) == Disconnect(ReasonCode.SERVER_BUSY)


@pytest.mark.parametrize("level", [4, 5])
def test_paho_acknowledgements(level: int) -> None:
    wire = PahoWire(level)
    wire.client._send_puback(10)
    wire.client._send_pubrec(11)
    wire.client._send_pubrel(12)
    wire.client._send_pubcomp(13)
    for data, packet in zip(wire.sent, [PubAck(10), PubRec(11), PubRel(12), PubComp(13)]):
        _same_bytes_both_ways(packet, level, data)


@PAHO_SETTINGS
@given(st.sampled_from([4, 5]).flatmap(connects).filter(
    lambda c: c.password is None or c.username is not None))  # paho sends no lone password
def test_paho_connect_generated(connect: Connect) -> None:
    # The spec allows a Maximum Packet Size up to 2**32-1; paho refuses values above the largest packet
    # MQTT can frame (268,435,455). Our codec is tested on the full range elsewhere.
    size = connect.properties.maximum_packet_size
    assume(size is None or size <= 268_435_455)
    _same_bytes_both_ways(connect, connect.protocol_level, paho_connect(connect))


@PAHO_SETTINGS
@given(st.sampled_from([4, 5]).flatmap(lambda lv: st.tuples(st.just(lv), publishes(lv))))
def test_paho_publish_generated(leveled) -> None:
    level, publish = leveled
    _same_bytes_both_ways(publish, level, paho_publish(publish, level))


@PAHO_SETTINGS
@given(st.sampled_from([4, 5]).flatmap(lambda lv: st.tuples(st.just(lv), subscribes(lv))))
def test_paho_subscribe_generated(leveled) -> None:
    level, subscribe = leveled
    _same_bytes_both_ways(subscribe, level, paho_subscribe(subscribe, level))


# ---------------------------------------------------------------------------------------------
# We encode what a server sends, paho decodes it


PROTO = {4: paho.MQTTv311, 5: paho.MQTTv5}


def _paho_reason(code) -> int:
    return code.value if isinstance(code, PahoReasonCode) else int(code)


@pytest.mark.parametrize(("level", "connack"), [
    (4, Connack()),
    (4, Connack(True)),
    (4, Connack(False, ConnectReturnCode.NOT_AUTHORIZED)),
    (5, Connack()),
    (5, Connack(True, ReasonCode.SUCCESS, Properties(
        maximum_qos=1, retain_available=1, topic_alias_maximum=8, maximum_packet_size=149504,
        receive_maximum=100, server_keep_alive=1200, assigned_client_identifier="gen-1",
        wildcard_subscription_available=1, subscription_identifier_available=0,
        shared_subscription_available=1, reason_string="hi", user_properties=(("a", "b"),)))),
    (5, Connack(False, ReasonCode.NOT_AUTHORIZED)),
    (5, Connack(False, ReasonCode.SERVER_BUSY, Properties(server_reference="gw-2"))),
], ids=repr)
def test_paho_reads_our_connack(level: int, connack: Connack) -> None:
    header, body = _body(encode(connack, level))
    result = paho_packet.decode_connack(header, body, PROTO[level])
    assert result.flags == int(connack.session_present)
    assert result.rc == connack.reason_code
    if level == 5:
        assert from_paho_properties(result.properties) == connack.properties


@PAHO_SETTINGS
@given(st.sampled_from([4, 5]).flatmap(lambda lv: st.tuples(st.just(lv), publishes(lv))))
def test_paho_reads_our_publish(leveled) -> None:
    level, publish = leveled
    header, body = _body(encode(publish, level))
    result = paho_packet.decode_publish(header, body, PROTO[level])
    assert (result.topic.decode(), bytes(result.payload), result.qos, result.retain, result.dup,
            result.mid or None) == (publish.topic, publish.payload, publish.qos, publish.retain,
                                    publish.dup, publish.packet_id)
    if level == 5:
        assert from_paho_properties(result.properties) == publish.properties


@PAHO_SETTINGS
@given(st.sampled_from([4, 5]).flatmap(lambda lv: st.tuples(st.just(lv), packets(lv))))
def test_paho_reads_our_server_packets(leveled) -> None:
    level, packet = leveled
    ptype = packet.packet_type
    decoders = {
        PacketType.SUBACK: paho_packet.decode_suback,
        PacketType.UNSUBACK: paho_packet.decode_unsuback,
        PacketType.PUBACK: paho_packet.decode_puback,
        PacketType.PUBREC: paho_packet.decode_pubrec,
        PacketType.PUBREL: paho_packet.decode_pubrel,
        PacketType.PUBCOMP: paho_packet.decode_pubcomp,
        PacketType.DISCONNECT: paho_packet.decode_disconnect,
    }
    if ptype not in decoders:
        return
    header, body = _body(encode(packet, level))
    result = decoders[ptype](header, body, PROTO[level])
    if ptype in (PacketType.SUBACK, PacketType.UNSUBACK):
        assert result.mid == packet.packet_id
        assert [_paho_reason(c) for c in result.reason_codes] == list(packet.reason_codes)
        if level == 5:
            assert from_paho_properties(result.properties) == packet.properties
    elif ptype is PacketType.DISCONNECT:
        if level == 5:
            assert _paho_reason(result.reason or 0) == packet.reason_code
            assert from_paho_properties(result.properties) == packet.properties
    else:
        assert result.mid == packet.packet_id
        if level == 5:
            assert _paho_reason(result.reason) == packet.reason_code
            assert from_paho_properties(result.properties) == packet.properties


def test_property_names_line_up_with_paho() -> None:
    assert sorted(_PAHO_NAMES) == sorted(int(s.id) for s in SPECS)
    for spec in SPECS:
        paho_type = PahoProperties(1).properties[int(spec.id)][0]
        assert paho_type == int(spec.type) - 1, spec.attr
        paho_packets = {p for p in PahoProperties(1).properties[int(spec.id)][1]}
        assert paho_packets == {PAHO_PACKET_TYPE[p] for p in spec.packets}, spec.attr


def test_paho_properties_strategy_smoke() -> None:
    # keeps the strategy import used and the converter honest for an empty value
    assert to_paho_properties(NO_PROPERTIES, PacketType.PUBLISH) is None
    assert from_paho_properties(None) == NO_PROPERTIES
    assert properties(PacketType.PUBLISH) is not None
