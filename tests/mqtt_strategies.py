"""Hypothesis strategies for valid MQTT packet values, per protocol level.

Shared by the codec property tests, the paho-mqtt comparisons and (later) session tests.
"""

from __future__ import annotations

from hypothesis import strategies as st

from gateway.mqtt import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    ConnectReturnCode,
    Disconnect,
    PacketType,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from gateway.mqtt.properties import SPECS, WILL_PROPERTIES, PropertyType
from gateway.mqtt.reason_codes import ALLOWED_REASON_CODES, V3_SUBACK_RETURN_CODES

#: Characters MQTT strings may carry: no U+0000, no surrogates.
mqtt_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
mqtt_text = st.text(mqtt_chars, max_size=12)
_level_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#/"), max_size=6
)

topic_names = st.lists(_level_text, min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def topic_filters(draw, shared: bool = False) -> str:
    levels = draw(st.lists(st.one_of(_level_text, st.just("+")), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    text = "/".join(levels)
    if not text or text.startswith("$share/"):
        text = "#"
    if shared and draw(st.booleans()):
        name = draw(_level_text.filter(bool))
        text = f"$share/{name}/{text}"
    return text


packet_ids = st.integers(1, 0xFFFF)
binary = st.binary(max_size=24)

_VALUES = {
    PropertyType.BYTE: st.integers(0, 1),
    PropertyType.TWO_BYTE_INTEGER: st.integers(0, 0xFFFF),
    PropertyType.FOUR_BYTE_INTEGER: st.integers(0, 0xFFFF_FFFF),
    PropertyType.BINARY_DATA: binary,
    PropertyType.UTF8_STRING: mqtt_text,
}


def _value_strategy(spec, context: int):
    if spec.attr == "user_properties":
        return st.lists(st.tuples(mqtt_text, mqtt_text), max_size=3).map(tuple)
    if spec.attr == "subscription_identifiers":
        ids = st.integers(1, 268_435_455)
        size = 3 if context == PacketType.PUBLISH else 1
        return st.lists(ids, min_size=1, max_size=size).map(tuple)
    if spec.attr == "response_topic":
        return topic_names
    if spec.attr in ("receive_maximum", "topic_alias"):
        return st.integers(1, 0xFFFF)
    if spec.attr == "maximum_packet_size":
        return st.integers(1, 0xFFFF_FFFF)
    return _VALUES[spec.type]


def properties(context: int, exclude: tuple[str, ...] = ()) -> st.SearchStrategy[Properties]:
    """Valid properties for a packet type (or ``WILL_PROPERTIES``)."""
    optional = {
        spec.attr: _value_strategy(spec, context)
        for spec in SPECS
        if context in spec.packets and spec.attr not in exclude
    }

    def build(values: dict) -> Properties:
        if "authentication_data" in values and "authentication_method" not in values:
            del values["authentication_data"]
        return Properties(**values)

    return st.just(NO_PROPERTIES) | st.fixed_dictionaries({}, optional=optional).map(build)


def _props(level: int, context: int, **kw):
    return properties(context, **kw) if level == 5 else st.just(NO_PROPERTIES)


def _reasons(ptype: PacketType):
    return st.sampled_from(sorted(ALLOWED_REASON_CODES[ptype]))


@st.composite
def connects(draw, level: int | None = None) -> Connect:
    level = level or draw(st.sampled_from([4, 5]))
    client_id = draw(mqtt_text)
    clean_start = draw(st.booleans()) or (level == 4 and not client_id)
    will = None
    if draw(st.booleans()):
        will = Will(draw(topic_names), draw(binary), draw(st.integers(0, 2)), draw(st.booleans()),
                    draw(_props(level, WILL_PROPERTIES)))
    username = draw(st.none() | mqtt_text)
    password = draw(st.none() | binary)
    if level == 4 and username is None:
        password = None
    return Connect(client_id, level, clean_start, draw(st.integers(0, 0xFFFF)), username, password,
                   will, draw(_props(level, PacketType.CONNECT)))


@st.composite
def publishes(draw, level: int) -> Publish:
    qos = draw(st.integers(0, 2))
    props = draw(_props(level, PacketType.PUBLISH))
    topic = draw(topic_names)
    if level == 5 and props.topic_alias is not None and draw(st.booleans()):
        topic = ""
    return Publish(topic, draw(st.binary(max_size=64)), qos, draw(st.booleans()),
                   bool(qos) and draw(st.booleans()), draw(packet_ids) if qos else None, props)


@st.composite
def subscribes(draw, level: int) -> Subscribe:
    subs = []
    for _ in range(draw(st.integers(1, 3))):
        topic_filter = draw(topic_filters(shared=level == 5))
        if level == 4:
            subs.append(Subscription(topic_filter, draw(st.integers(0, 2))))
        else:
            no_local = draw(st.booleans()) and not topic_filter.startswith("$share/")
            subs.append(Subscription(topic_filter, draw(st.integers(0, 2)), no_local,
                                     draw(st.booleans()), draw(st.integers(0, 2))))
    return Subscribe(draw(packet_ids), tuple(subs), draw(_props(level, PacketType.SUBSCRIBE)))


def _ack(cls, level: int):
    ptype = cls.packet_type
    if level == 4:
        return st.builds(cls, packet_ids)
    return st.builds(cls, packet_ids, _reasons(ptype), properties(ptype))


def packets(level: int) -> st.SearchStrategy:
    """Any valid packet for a connection at ``level``."""
    return _PACKETS[level]


def _packets(level: int) -> st.SearchStrategy:
    if level == 4:
        connack = st.builds(Connack, st.just(False), st.sampled_from(list(ConnectReturnCode))) | \
            st.builds(Connack, st.booleans(), st.just(ConnectReturnCode.ACCEPTED))
        suback = st.builds(SubAck, packet_ids,
                           st.lists(st.sampled_from(sorted(V3_SUBACK_RETURN_CODES)), min_size=1,
                                    max_size=4).map(tuple))
        unsuback = st.builds(UnsubAck, packet_ids)
        disconnect = st.just(Disconnect())
        extra = st.nothing()
    else:
        connack = st.builds(Connack, st.just(False), _reasons(PacketType.CONNACK),
                            properties(PacketType.CONNACK)) | \
            st.builds(Connack, st.booleans(), st.just(0), properties(PacketType.CONNACK))
        suback = st.builds(SubAck, packet_ids,
                           st.lists(_reasons(PacketType.SUBACK), min_size=1, max_size=4).map(tuple),
                           properties(PacketType.SUBACK))
        unsuback = st.builds(UnsubAck, packet_ids,
                             st.lists(_reasons(PacketType.UNSUBACK), min_size=1,
                                      max_size=4).map(tuple),
                             properties(PacketType.UNSUBACK))
        disconnect = st.builds(Disconnect, _reasons(PacketType.DISCONNECT),
                               properties(PacketType.DISCONNECT))
        extra = st.builds(Auth, _reasons(PacketType.AUTH), properties(PacketType.AUTH))
    return st.one_of(
        connects(level), connack, publishes(level),
        _ack(PubAck, level), _ack(PubRec, level), _ack(PubRel, level), _ack(PubComp, level),
        subscribes(level), suback,
        st.builds(Unsubscribe, packet_ids,
                  st.lists(topic_filters(shared=level == 5), min_size=1, max_size=3).map(tuple),
                  _props(level, PacketType.UNSUBSCRIBE)),
        unsuback, st.just(PingReq()), st.just(PingResp()), disconnect, extra,
    )


_PACKETS = {4: _packets(4), 5: _packets(5)}
