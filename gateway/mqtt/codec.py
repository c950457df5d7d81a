"""Encoding and decoding of MQTT 3.1.1 (protocol level 4) and 5.0 (level 5) packets.

* :func:`decode` turns a :class:`Frame` (or the bytes of one packet) into a packet value and
  validates everything the specification lets a receiver check. CONNECT finds its protocol level
  itself; every other packet needs the level of the connection.
* :func:`peek_publish` reads only what a PUBLISH decision needs (topic, QoS, flags, packet id,
  topic alias) and leaves payload and other properties alone, so the frame can be forwarded as is.
* :func:`encode` turns a packet value into bytes, refusing with :class:`MQTTLocalError` anything
  that is not valid MQTT for the given level.
"""

from __future__ import annotations

import dataclasses

from gateway.mqtt.errors import MQTTLocalError, MQTTProtocolError
from gateway.mqtt.framer import Frame, split_packet
from gateway.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
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
from gateway.mqtt.properties import (
    NO_PROPERTIES,
    SPEC_BY_ID,
    WILL_PROPERTIES,
    Properties,
    PropertyId,
    PropertyType,
    decode_properties,
    encode_properties,
)
from gateway.mqtt.reason_codes import (
    ALLOWED_REASON_CODES,
    V3_SUBACK_RETURN_CODES,
    ConnectReturnCode,
    PacketType,
    ReasonCode,
)
from gateway.mqtt.topics import topic_filter_problem, topic_name_problem
from gateway.mqtt.wire import (
    MAX_VARINT,
    U16,
    clause,
    encode_binary,
    encode_string,
    encode_varint,
    malformed,
    protocol_error,
    read_binary,
    read_string,
    read_varint,
)

__all__ = [
    "PROTOCOL_LEVELS",
    "PublishHeader",
    "decode",
    "encode",
    "peek_publish",
    "rewrite_connect",
]

#: Protocol levels this codec speaks: 4 = MQTT 3.1.1, 5 = MQTT 5.0.
PROTOCOL_LEVELS = (4, 5)

_REASON_CODES = {int(r): r for r in ReasonCode}
_PUBLISH = PacketType.PUBLISH


# ---------------------------------------------------------------------------------------------
# Helpers


def _as_frame(data, level: int | None) -> Frame:
    if isinstance(data, Frame):
        return data
    return split_packet(data, level)


def _topic_name_error(problem: tuple[str, str], level: int | None) -> MQTTProtocolError:
    return MQTTProtocolError(
        problem[0], ReasonCode.TOPIC_NAME_INVALID, problem[1], protocol_level=level
    )


def _packet_id(buf, i: int, end: int, level: int, what: str, zero_clause: str) -> int:
    if i + 2 > end:
        raise malformed(f"{what}: packet identifier is cut short",
                        clause(level, "§2.3.1", "§2.2.1"), level)
    pid = (buf[i] << 8) | buf[i + 1]
    if pid == 0:
        raise protocol_error(f"{what} with packet identifier 0", zero_clause, level)
    return pid


def _reason(code: int, ptype: PacketType, level: int, section: str) -> ReasonCode:
    if code not in ALLOWED_REASON_CODES[ptype]:
        raise protocol_error(f"0x{code:02X} is not a {ptype.name} reason code", section, level)
    return _REASON_CODES[code]


def _trailing(i: int, end: int, what: str, section: str, level: int | None) -> None:
    if i != end:
        raise malformed(f"{what} has {end - i} unexpected bytes at its end", section, level)


def _need_level(level: int | None) -> int:
    if level not in PROTOCOL_LEVELS:
        raise MQTTLocalError(
            f"protocol level must be 4 (MQTT 3.1.1) or 5 (MQTT 5.0), not {level!r}")
    return level  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Decoding


def _decode_connect(buf, i: int, end: int, flags: int, _level: int | None) -> Connect:
    if i + 2 > end:
        raise malformed("CONNECT: protocol name is cut short", "§3.1.2.1", None)
    name_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
    if name_end + 4 > end:
        raise malformed("CONNECT: variable header is cut short", "§3.1.2", None)
    name = bytes(buf[i + 2 : name_end])
    level = buf[name_end]
    known = level if level in PROTOCOL_LEVELS else None
    if name != b"MQTT":
        if name == b"MQIsdp":
            raise MQTTProtocolError(
                f"MQTT 3.1 (protocol name 'MQIsdp', level {level}) is not supported",
                ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
                "[MQTT-3.1.2-2]",
                protocol_level=None,
            )
        raise MQTTProtocolError(
            f"CONNECT protocol name is {name[:16]!r}, not b'MQTT'",
            ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
            "[MQTT-3.1.2-1]",
            protocol_level=known,
        )
    if known is None:
        raise MQTTProtocolError(
            f"protocol level {level} is not supported (4 = MQTT 3.1.1, 5 = MQTT 5.0)",
            ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
            "[MQTT-3.1.2-2]",
            protocol_level=None,
        )
    v5 = level == 5
    cflags = buf[name_end + 1]
    keep_alive = (buf[name_end + 2] << 8) | buf[name_end + 3]
    i = name_end + 4
    if cflags & 0x01:
        raise malformed("CONNECT reserved flag is set", "[MQTT-3.1.2-3]", level)
    has_will = bool(cflags & 0x04)
    will_qos = (cflags >> 3) & 3
    will_retain = bool(cflags & 0x20)
    has_password = bool(cflags & 0x40)
    has_username = bool(cflags & 0x80)
    clean_start = bool(cflags & 0x02)
    if not has_will:
        if will_qos:
            raise malformed("CONNECT: Will QoS is set without a Will",
                            clause(level, "[MQTT-3.1.2-13]", "[MQTT-3.1.2-11]"), level)
        if will_retain:
            raise malformed("CONNECT: Will Retain is set without a Will",
                            clause(level, "[MQTT-3.1.2-15]", "[MQTT-3.1.2-13]"), level)
    elif will_qos == 3:
        raise malformed("CONNECT: Will QoS is 3",
                        clause(level, "[MQTT-3.1.2-14]", "[MQTT-3.1.2-12]"), level)
    if has_password and not has_username and not v5:
        raise malformed("CONNECT: password flag set without user name flag", "[MQTT-3.1.2-22]",
                        level)
    properties = NO_PROPERTIES
    if v5:
        properties, i = decode_properties(buf, i, end, PacketType.CONNECT, level)
        if properties.authentication_data is not None and properties.authentication_method is None:
            raise protocol_error("CONNECT has Authentication Data without Authentication Method",
                                 "§3.1.2.11.10", level)
    client_id, i = read_string(buf, i, end, level, "client identifier")
    if not client_id and not clean_start and not v5:
        raise MQTTProtocolError(
            "CONNECT with an empty client identifier must set Clean Session",
            ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
            "[MQTT-3.1.3-8]",
            protocol_level=level,
        )
    will = None
    if has_will:
        will_props = NO_PROPERTIES
        if v5:
            will_props, i = decode_properties(buf, i, end, WILL_PROPERTIES, level)
        will_topic, i = read_string(buf, i, end, level, "will topic")
        problem = topic_name_problem(will_topic, level)
        if problem is not None:
            raise _topic_name_error(("will " + problem[0], problem[1]), level)
        will_payload, i = read_binary(buf, i, end, level, "will payload")
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username = None
    if has_username:
        username, i = read_string(buf, i, end, level, "user name")
    password = None
    if has_password:
        password, i = read_binary(buf, i, end, level, "password")
    _trailing(i, end, "CONNECT", clause(level, "[MQTT-3.1.3-1]", "[MQTT-3.1.3-1]"), level)
    return Connect(client_id, level, clean_start, keep_alive, username, password, will, properties)


def _decode_connack(buf, i: int, end: int, flags: int, level: int) -> Connack:
    if end - i < 2:
        raise malformed("CONNACK is cut short", clause(level, "§3.2", "§3.2.2"), level)
    ack_flags = buf[i]
    code = buf[i + 1]
    if ack_flags & 0xFE:
        raise malformed("CONNACK acknowledge flags bits 7-1 are not 0",
                        clause(level, "§3.2.2.1", "[MQTT-3.2.2-1]"), level)
    session_present = bool(ack_flags & 1)
    if level == 4:
        if end - i != 2:
            raise malformed("CONNACK remaining length is not 2", "§3.2.1", level)
        if code > 5:
            raise protocol_error(f"CONNACK return code {code} is reserved", "§3.2.2.3", level)
        if code and session_present:
            raise protocol_error("CONNACK refuses but says session present", "[MQTT-3.2.2-4]",
                                 level)
        return Connack(session_present, ConnectReturnCode(code))
    reason = _reason(code, PacketType.CONNACK, level, "§3.2.2.2")
    if reason >= 0x80 and session_present:
        raise protocol_error("CONNACK refuses but says session present", "[MQTT-3.2.2-6]", level)
    props, i = decode_properties(buf, i + 2, end, PacketType.CONNACK, level)
    if props.authentication_data is not None and props.authentication_method is None:
        raise protocol_error("CONNACK has Authentication Data without Authentication Method",
                             "§3.2.2.3.18", level)
    _trailing(i, end, "CONNACK", "§3.2.3", level)
    return Connack(session_present, reason, props)


def _decode_publish(buf, i: int, end: int, flags: int, level: int) -> Publish:
    qos = (flags >> 1) & 3
    topic, i = read_string(buf, i, end, level, "topic name")
    if "+" in topic or "#" in topic:
        raise _topic_name_error((f"PUBLISH topic {topic!r} contains a wildcard",
                                 "[MQTT-3.3.2-2]"), level)
    packet_id = None
    if qos:
        packet_id = _packet_id(buf, i, end, level, "PUBLISH",
                               clause(level, "[MQTT-2.3.1-1]", "[MQTT-2.2.1-3]"))
        i += 2
    props = NO_PROPERTIES
    if level == 5:
        props, i = decode_properties(buf, i, end, PacketType.PUBLISH, level)
    if not topic:
        _empty_topic(level, props.topic_alias)
    return Publish(topic, bytes(buf[i:end]), qos, bool(flags & 1), bool(flags & 8), packet_id,
                   props)


def _empty_topic(level: int, topic_alias: int | None) -> None:
    if level == 4:
        raise _topic_name_error(("PUBLISH topic name is empty", "[MQTT-4.7.3-1]"), level)
    if topic_alias is None:
        raise protocol_error("PUBLISH has an empty topic name and no topic alias",
                             "§3.3.2.3.4", level)


_ACK_SECTIONS = {
    PacketType.PUBACK: "[MQTT-3.4.2-1]",
    PacketType.PUBREC: "[MQTT-3.5.2-1]",
    PacketType.PUBREL: "[MQTT-3.6.2-1]",
    PacketType.PUBCOMP: "[MQTT-3.7.2-1]",
}
_ACK_CLASSES = {
    PacketType.PUBACK: PubAck,
    PacketType.PUBREC: PubRec,
    PacketType.PUBREL: PubRel,
    PacketType.PUBCOMP: PubComp,
}


def _make_ack_decoder(ptype: PacketType):
    cls = _ACK_CLASSES[ptype]
    section = _ACK_SECTIONS[ptype]
    name = ptype.name

    def decode_ack(buf, i: int, end: int, flags: int, level: int):
        n = end - i
        pid_clause = clause(level, "§2.3.1", "§2.2.1")
        if level == 4 and n != 2:
            raise malformed(f"{name} remaining length is {n}, not 2", f"§3.{int(ptype)}.1", level)
        packet_id = _packet_id(buf, i, end, level, name, pid_clause)
        if n == 2:
            return cls(packet_id)
        reason = _reason(buf[i + 2], ptype, level, section)
        if n == 3:
            return cls(packet_id, reason)
        props, j = decode_properties(buf, i + 3, end, ptype, level)
        _trailing(j, end, name, f"§3.{int(ptype)}.2", level)
        return cls(packet_id, reason, props)

    return decode_ack


def _decode_subscribe(buf, i: int, end: int, flags: int, level: int) -> Subscribe:
    packet_id = _packet_id(buf, i, end, level, "SUBSCRIBE",
                           clause(level, "[MQTT-2.3.1-1]", "[MQTT-2.2.1-3]"))
    i += 2
    props = NO_PROPERTIES
    v5 = level == 5
    if v5:
        props, i = decode_properties(buf, i, end, PacketType.SUBSCRIBE, level)
    subs: list[Subscription] = []
    while i < end:
        topic_filter, i = read_string(buf, i, end, level, "topic filter")
        if i >= end:
            raise malformed(f"SUBSCRIBE: topic filter {topic_filter!r} has no options byte",
                            clause(level, "§3.8.3", "§3.8.3"), level)
        options = buf[i]
        i += 1
        qos = options & 0x03
        if not v5:
            if options & 0xFC or qos == 3:
                raise malformed(f"SUBSCRIBE: requested QoS byte 0x{options:02X} is invalid",
                                "[MQTT-3-8.3-4]", level)
            problem = topic_filter_problem(topic_filter, level)
            if problem is not None:
                raise MQTTProtocolError(problem[0], ReasonCode.TOPIC_FILTER_INVALID, problem[1],
                                        protocol_level=level)
            subs.append(Subscription(topic_filter, qos))
            continue
        if options & 0xC0:
            raise malformed(f"SUBSCRIBE: reserved option bits are set (0x{options:02X})",
                            "[MQTT-3.8.3-5]", level)
        if qos == 3:
            raise protocol_error("SUBSCRIBE: maximum QoS 3", "§3.8.3.1", level)
        retain_handling = (options >> 4) & 0x03
        if retain_handling == 3:
            raise protocol_error("SUBSCRIBE: retain handling 3", "§3.8.3.1", level)
        problem = topic_filter_problem(topic_filter, level)
        if problem is not None:
            raise MQTTProtocolError(problem[0], ReasonCode.TOPIC_FILTER_INVALID, problem[1],
                                    protocol_level=level)
        no_local = bool(options & 0x04)
        if no_local and topic_filter.startswith("$share/"):
            raise protocol_error(f"SUBSCRIBE: No Local on shared subscription {topic_filter!r}",
                                 "[MQTT-3.8.3-4]", level)
        subs.append(Subscription(topic_filter, qos, no_local, bool(options & 0x08),
                                 retain_handling))
    if not subs:
        raise protocol_error("SUBSCRIBE without any topic filter",
                             clause(level, "[MQTT-3.8.3-3]", "[MQTT-3.8.3-2]"), level)
    return Subscribe(packet_id, tuple(subs), props)


def _decode_suback(buf, i: int, end: int, flags: int, level: int) -> SubAck:
    packet_id = _packet_id(buf, i, end, level, "SUBACK", clause(level, "§2.3.1", "§2.2.1"))
    i += 2
    props = NO_PROPERTIES
    if level == 5:
        props, i = decode_properties(buf, i, end, PacketType.SUBACK, level)
        allowed = ALLOWED_REASON_CODES[PacketType.SUBACK]
    else:
        allowed = V3_SUBACK_RETURN_CODES
    codes = bytes(buf[i:end])
    if not codes:
        raise protocol_error("SUBACK without any return code", "§3.9.3", level)
    for code in codes:
        if code not in allowed:
            raise protocol_error(f"0x{code:02X} is not a SUBACK return code", "[MQTT-3.9.3-2]",
                                 level)
    return SubAck(packet_id, tuple(_REASON_CODES[c] for c in codes), props)


def _decode_unsubscribe(buf, i: int, end: int, flags: int, level: int) -> Unsubscribe:
    packet_id = _packet_id(buf, i, end, level, "UNSUBSCRIBE",
                           clause(level, "[MQTT-2.3.1-1]", "[MQTT-2.2.1-3]"))
    i += 2
    props = NO_PROPERTIES
    if level == 5:
        props, i = decode_properties(buf, i, end, PacketType.UNSUBSCRIBE, level)
    filters: list[str] = []
    while i < end:
        topic_filter, i = read_string(buf, i, end, level, "topic filter")
        problem = topic_filter_problem(topic_filter, level)
        if problem is not None:
            raise MQTTProtocolError(problem[0], ReasonCode.TOPIC_FILTER_INVALID, problem[1],
                                    protocol_level=level)
        filters.append(topic_filter)
    if not filters:
        raise protocol_error("UNSUBSCRIBE without any topic filter", "[MQTT-3.10.3-2]", level)
    return Unsubscribe(packet_id, tuple(filters), props)


def _decode_unsuback(buf, i: int, end: int, flags: int, level: int) -> UnsubAck:
    packet_id = _packet_id(buf, i, end, level, "UNSUBACK", clause(level, "§2.3.1", "§2.2.1"))
    i += 2
    if level == 4:
        _trailing(i, end, "UNSUBACK", "§3.11.1", level)
        return UnsubAck(packet_id)
    props, i = decode_properties(buf, i, end, PacketType.UNSUBACK, level)
    codes = bytes(buf[i:end])
    if not codes:
        raise protocol_error("UNSUBACK without any reason code", "§3.11.3", level)
    allowed = ALLOWED_REASON_CODES[PacketType.UNSUBACK]
    for code in codes:
        if code not in allowed:
            raise protocol_error(f"0x{code:02X} is not an UNSUBACK reason code",
                                 "[MQTT-3.11.3-2]", level)
    return UnsubAck(packet_id, tuple(_REASON_CODES[c] for c in codes), props)


def _decode_ping(cls, ptype: PacketType):
    def decode_ping(buf, i: int, end: int, flags: int, level: int):
        _trailing(i, end, ptype.name, f"§3.{int(ptype)}", level)
        return cls()

    return decode_ping


def _decode_disconnect(buf, i: int, end: int, flags: int, level: int) -> Disconnect:
    if level == 4:
        _trailing(i, end, "DISCONNECT", "§3.14", level)
        return Disconnect()
    if i == end:
        return Disconnect()
    reason = _reason(buf[i], PacketType.DISCONNECT, level, "[MQTT-3.14.2-1]")
    props = NO_PROPERTIES
    if end - i > 1:
        props, j = decode_properties(buf, i + 1, end, PacketType.DISCONNECT, level)
        _trailing(j, end, "DISCONNECT", "§3.14.2", level)
    return Disconnect(reason, props)


def _decode_auth(buf, i: int, end: int, flags: int, level: int) -> Auth:
    if level == 4:
        raise malformed("AUTH (packet type 15) is reserved in MQTT 3.1.1", "§2.2.1", level)
    if i == end:
        return Auth()
    reason = _reason(buf[i], PacketType.AUTH, level, "[MQTT-3.15.2-1]")
    props = NO_PROPERTIES
    if end - i > 1:
        props, j = decode_properties(buf, i + 1, end, PacketType.AUTH, level)
        _trailing(j, end, "AUTH", "§3.15.2", level)
        if props.authentication_data is not None and props.authentication_method is None:
            raise protocol_error("AUTH has Authentication Data without Authentication Method",
                                 "§3.15.2.2.3", level)
    return Auth(reason, props)


_DECODERS = {
    PacketType.CONNECT: _decode_connect,
    PacketType.CONNACK: _decode_connack,
    PacketType.PUBLISH: _decode_publish,
    PacketType.PUBACK: _make_ack_decoder(PacketType.PUBACK),
    PacketType.PUBREC: _make_ack_decoder(PacketType.PUBREC),
    PacketType.PUBREL: _make_ack_decoder(PacketType.PUBREL),
    PacketType.PUBCOMP: _make_ack_decoder(PacketType.PUBCOMP),
    PacketType.SUBSCRIBE: _decode_subscribe,
    PacketType.SUBACK: _decode_suback,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
    PacketType.UNSUBACK: _decode_unsuback,
    PacketType.PINGREQ: _decode_ping(PingReq, PacketType.PINGREQ),
    PacketType.PINGRESP: _decode_ping(PingResp, PacketType.PINGRESP),
    PacketType.DISCONNECT: _decode_disconnect,
    PacketType.AUTH: _decode_auth,
}


def decode(data: Frame | bytes | bytearray | memoryview,
           protocol_level: int | None = None) -> Packet:
    """Decode one complete packet.

    ``protocol_level`` is the level of the connection (4 or 5); a CONNECT determines its own and
    may be decoded with ``None``. Raises :class:`MQTTProtocolError` for anything malformed.
    """
    frame = _as_frame(data, protocol_level)
    ptype = frame.packet_type
    if ptype is not PacketType.CONNECT:
        _need_level(protocol_level)
    return _DECODERS[ptype](frame.data, frame.body_offset, len(frame.data), frame.flags,
                            protocol_level)


# ---------------------------------------------------------------------------------------------
# PUBLISH fast path


class PublishHeader:
    """What a PUBLISH decision needs, read without touching the payload.

    ``payload_offset`` indexes ``frame.data``: ``frame.data[payload_offset:]`` is the payload.
    ``topic`` is empty when an MQTT 5 sender uses ``topic_alias`` alone.
    """

    __slots__ = ("dup", "packet_id", "payload_offset", "qos", "retain", "topic", "topic_alias")

    def __init__(self, topic: str, qos: int, retain: bool, dup: bool, packet_id: int | None,
                 topic_alias: int | None, payload_offset: int) -> None:
        self.topic = topic
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.topic_alias = topic_alias
        self.payload_offset = payload_offset

    def _key(self) -> tuple:
        return (self.topic, self.qos, self.retain, self.dup, self.packet_id, self.topic_alias,
                self.payload_offset)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublishHeader):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"PublishHeader(topic={self.topic!r}, qos={self.qos}, retain={self.retain}, "
                f"dup={self.dup}, packet_id={self.packet_id}, topic_alias={self.topic_alias}, "
                f"payload_offset={self.payload_offset})")


_PUBLISH_PROPERTY_SPECS = tuple(
    spec if spec is not None and PacketType.PUBLISH in spec.packets else None
    for spec in SPEC_BY_ID
)
_SKIP_FIXED = {
    PropertyType.BYTE: 1,
    PropertyType.TWO_BYTE_INTEGER: 2,
    PropertyType.FOUR_BYTE_INTEGER: 4,
}


def _scan_publish_properties(buf, i: int, end: int, level: int) -> tuple[int | None, int]:
    """Walk PUBLISH properties checking their structure; return the topic alias and the index
    after them. Strings and binary values are skipped, not decoded."""
    length, i = read_varint(buf, i, end, level)
    stop = i + length
    if stop > end:
        raise malformed(f"PUBLISH: property length {length} runs past the end of the packet",
                        "§2.2.2.1", level)
    alias = None
    seen = 0
    while i < stop:
        pid = buf[i]
        spec = _PUBLISH_PROPERTY_SPECS[pid] if pid < 128 else None
        if spec is None:
            raise malformed(f"property 0x{pid:02X} is not valid in PUBLISH", "§2.2.2.2", level)
        i += 1
        ptype = spec.type
        if pid == PropertyId.TOPIC_ALIAS:
            if i + 2 > stop:
                raise malformed("topic_alias is cut short", "§2.2.2.2", level)
            alias = (buf[i] << 8) | buf[i + 1]
            if alias == 0:
                raise MQTTProtocolError("topic alias 0 is not permitted",
                                        ReasonCode.TOPIC_ALIAS_INVALID, "[MQTT-3.3.2-8]",
                                        protocol_level=level)
            i += 2
        elif ptype in _SKIP_FIXED:
            if pid == PropertyId.PAYLOAD_FORMAT_INDICATOR and i < stop and buf[i] > 1:
                raise protocol_error(f"payload_format_indicator is {buf[i]}, not 0 or 1",
                                     spec.section, level)
            i += _SKIP_FIXED[ptype]
            if i > stop:
                raise malformed(f"{spec.attr} is cut short", "§2.2.2.2", level)
        elif ptype is PropertyType.VARIABLE_BYTE_INTEGER:
            sub_id, i = read_varint(buf, i, stop, level)
            if sub_id == 0:
                raise protocol_error("subscription identifier 0", spec.section, level)
            continue
        else:
            if ptype is PropertyType.BINARY_DATA:
                section = clause(level, "§1.5.3", "§1.5.6")
            else:
                section = clause(level, "§1.5.3", "§1.5.4")
            for _ in range(2 if ptype is PropertyType.UTF8_STRING_PAIR else 1):
                if i + 2 > stop:
                    raise malformed(f"{spec.attr}: length is cut short", section, level)
                i += 2 + ((buf[i] << 8) | buf[i + 1])
                if i > stop:
                    raise malformed(f"{spec.attr} runs past the end of the packet", section,
                                    level)
            if ptype is PropertyType.UTF8_STRING_PAIR:
                continue
        bit = 1 << pid
        if seen & bit:
            raise protocol_error(f"{spec.attr} appears more than once in PUBLISH", spec.section,
                                 level)
        seen |= bit
    return alias, stop


def peek_publish(frame: Frame | bytes | bytearray | memoryview,
                 protocol_level: int) -> PublishHeader:
    """Topic, QoS, retain, dup, packet id and (MQTT 5) topic alias of a PUBLISH, validated, with
    the payload and the other properties left undecoded.

    The topic is checked as :func:`decode` checks it (UTF-8, no U+0000, no wildcard, empty only
    with a topic alias). The other MQTT 5 properties are walked for structure only: identifiers
    valid in PUBLISH, lengths within the packet, no forbidden repeats, 0/1 and non-zero rules;
    their strings are skipped, not decoded (:func:`decode` checks those too).
    """
    level = protocol_level
    if type(frame) is not Frame:
        frame = split_packet(frame, level)
    if frame.packet_type is not _PUBLISH:
        raise MQTTLocalError(f"peek_publish() needs a PUBLISH frame, not {frame.packet_type.name}")
    buf = frame.data
    i = frame.body_offset
    end = len(buf)
    j = i + 2
    if j <= end:
        j += (buf[i] << 8) | buf[i + 1]
    if j > end:
        read_string(buf, i, end, level, "PUBLISH topic name")  # raises the precise error
    try:
        topic = buf[i + 2 : j].tobytes().decode()
    except UnicodeDecodeError:
        read_string(buf, i, end, level, "PUBLISH topic name")  # raises the precise error
        raise
    if "+" in topic or "#" in topic or "\x00" in topic:
        if "\x00" in topic:
            read_string(buf, i, end, level, "PUBLISH topic name")
        raise _topic_name_error((f"PUBLISH topic {topic!r} contains a wildcard",
                                 "[MQTT-3.3.2-2]"), level)
    flags = frame.flags
    qos = (flags >> 1) & 3
    packet_id = None
    if qos:
        if j + 2 > end:
            raise malformed("PUBLISH: packet identifier is cut short",
                            clause(level, "§2.3.1", "§2.2.1"), level)
        packet_id = (buf[j] << 8) | buf[j + 1]
        if not packet_id:
            raise protocol_error("PUBLISH with packet identifier 0",
                                 clause(level, "[MQTT-2.3.1-1]", "[MQTT-2.2.1-3]"), level)
        j += 2
    alias = None
    if level == 5:
        if j < end and buf[j] == 0:
            j += 1
        else:
            alias, j = _scan_publish_properties(buf, j, end, level)
    elif level != 4:
        _need_level(level)
    if not topic:
        _empty_topic(level, alias)
    return PublishHeader(topic, qos, bool(flags & 1), bool(flags & 8), packet_id, alias, j)


# ---------------------------------------------------------------------------------------------
# Encoding


def _fixed_header(first_byte: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return bytes((first_byte, n)) + body
    if n > MAX_VARINT:
        raise MQTTLocalError(f"packet body of {n} bytes exceeds the MQTT limit of {MAX_VARINT}")
    return bytes((first_byte,)) + encode_varint(n) + body


def _check_props_v3(props: Properties, what: str, level: int) -> None:
    if level == 4 and props is not NO_PROPERTIES and props != NO_PROPERTIES:
        raise MQTTLocalError(f"{what} has properties, which MQTT 3.1.1 does not carry")


def _check_local_pid(packet_id, what: str) -> int:
    if not isinstance(packet_id, int) or not 1 <= packet_id <= 0xFFFF:
        raise MQTTLocalError(f"{what} packet identifier must be 1..65535, not {packet_id!r}")
    return packet_id


def _check_qos(qos, what: str) -> int:
    if qos not in (0, 1, 2):
        raise MQTTLocalError(f"{what} QoS must be 0, 1 or 2, not {qos!r}")
    return int(qos)


def _check_reason(code, allowed, what: str) -> int:
    if code not in allowed:
        raise MQTTLocalError(f"{what}: {code!r} is not a valid reason code here")
    return int(code)


def _encode_connect(p: Connect, level: int) -> bytes:
    if p.protocol_level not in PROTOCOL_LEVELS:
        raise MQTTLocalError(f"CONNECT protocol level must be 4 or 5, not {p.protocol_level!r}")
    level = p.protocol_level
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        flags |= 0x04 | (_check_qos(will.qos, "Will") << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        flags |= 0x40
        if p.username is None and level == 4:
            raise MQTTLocalError("MQTT 3.1.1 CONNECT cannot carry a password without a user name "
                                 "[MQTT-3.1.2-22]")
    if not 0 <= p.keep_alive <= 0xFFFF:
        raise MQTTLocalError(f"keep alive must be 0..65535 seconds, not {p.keep_alive!r}")
    if level == 4 and not p.client_id and not p.clean_start:
        raise MQTTLocalError("MQTT 3.1.1 CONNECT with an empty client id must set Clean Session "
                             "[MQTT-3.1.3-7]")
    parts = [b"\x00\x04MQTT", bytes((level, flags)), U16.pack(p.keep_alive)]
    if level == 5:
        parts.append(encode_properties(p.properties, PacketType.CONNECT))
    else:
        _check_props_v3(p.properties, "CONNECT", level)
    parts.append(encode_string(p.client_id, "client identifier"))
    if will is not None:
        if level == 5:
            parts.append(encode_properties(will.properties, WILL_PROPERTIES))
        else:
            _check_props_v3(will.properties, "Will", level)
        problem = topic_name_problem(will.topic, level)
        if problem is not None:
            raise MQTTLocalError(f"will topic: {problem[0]} {problem[1]}")
        parts.append(encode_string(will.topic, "will topic"))
        parts.append(encode_binary(will.payload, "will payload"))
    if p.username is not None:
        parts.append(encode_string(p.username, "user name"))
    if p.password is not None:
        parts.append(encode_binary(p.password, "password"))
    return _fixed_header(0x10, b"".join(parts))


def _encode_connack(p: Connack, level: int) -> bytes:
    if level == 4:
        code = _check_reason(p.reason_code, range(6), "MQTT 3.1.1 CONNACK return code")
        if code and p.session_present:
            raise MQTTLocalError("a refusing CONNACK must not set session present [MQTT-3.2.2-4]")
        _check_props_v3(p.properties, "CONNACK", level)
        return bytes((0x20, 2, 1 if p.session_present else 0, code))
    code = _check_reason(p.reason_code, ALLOWED_REASON_CODES[PacketType.CONNACK], "CONNACK")
    if code >= 0x80 and p.session_present:
        raise MQTTLocalError("a refusing CONNACK must not set session present [MQTT-3.2.2-6]")
    body = bytes((1 if p.session_present else 0, code)) + encode_properties(
        p.properties, PacketType.CONNACK)
    return _fixed_header(0x20, body)


def _encode_publish(p: Publish, level: int) -> bytes:
    qos = _check_qos(p.qos, "PUBLISH")
    topic = p.topic
    if topic or level == 4 or p.properties.topic_alias is None:
        problem = topic_name_problem(topic, level, "[MQTT-3.3.2-2]")
        if problem is not None:
            raise MQTTLocalError(f"PUBLISH topic: {problem[0]} {problem[1]}")
    first = 0x30 | (qos << 1) | (1 if p.retain else 0)
    if p.dup:
        if not qos:
            raise MQTTLocalError("a QoS 0 PUBLISH must not set DUP [MQTT-3.3.1-2]")
        first |= 0x08
    payload = p.payload
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MQTTLocalError(f"PUBLISH payload must be bytes, not {type(payload).__name__}")
    parts = [encode_string(topic, "topic name")]
    if qos:
        parts.append(U16.pack(_check_local_pid(p.packet_id, "PUBLISH")))
    elif p.packet_id is not None:
        raise MQTTLocalError("a QoS 0 PUBLISH has no packet identifier")
    if level == 5:
        parts.append(encode_properties(p.properties, PacketType.PUBLISH))
    else:
        _check_props_v3(p.properties, "PUBLISH", level)
    parts.append(payload)
    return _fixed_header(first, b"".join(parts))


def _encode_ack(p, level: int) -> bytes:
    ptype = p.packet_type
    first = (ptype << 4) | (0x02 if ptype is PacketType.PUBREL else 0)
    pid = U16.pack(_check_local_pid(p.packet_id, ptype.name))
    if level == 4:
        if p.reason_code != 0:
            raise MQTTLocalError(f"MQTT 3.1.1 {ptype.name} has no reason code")
        _check_props_v3(p.properties, ptype.name, level)
        return bytes((first, 2)) + pid
    code = _check_reason(p.reason_code, ALLOWED_REASON_CODES[ptype], ptype.name)
    if p.properties is NO_PROPERTIES or p.properties == NO_PROPERTIES:
        if code == 0:
            return bytes((first, 2)) + pid
        return bytes((first, 3)) + pid + bytes((code,))
    return _fixed_header(first, pid + bytes((code,)) + encode_properties(p.properties, ptype))


def _encode_subscribe(p: Subscribe, level: int) -> bytes:
    parts = [U16.pack(_check_local_pid(p.packet_id, "SUBSCRIBE"))]
    if level == 5:
        parts.append(encode_properties(p.properties, PacketType.SUBSCRIBE))
    else:
        _check_props_v3(p.properties, "SUBSCRIBE", level)
    if not p.subscriptions:
        raise MQTTLocalError("SUBSCRIBE needs at least one subscription")
    for sub in p.subscriptions:
        problem = topic_filter_problem(sub.topic_filter, level)
        if problem is not None:
            raise MQTTLocalError(f"SUBSCRIBE: {problem[0]} {problem[1]}")
        options = _check_qos(sub.qos, "SUBSCRIBE")
        if level == 5:
            if sub.retain_handling not in (0, 1, 2):
                raise MQTTLocalError(
                    f"retain handling must be 0, 1 or 2, not {sub.retain_handling!r}")
            if sub.no_local and sub.topic_filter.startswith("$share/"):
                raise MQTTLocalError("No Local cannot be set on a shared subscription "
                                     "[MQTT-3.8.3-4]")
            options |= ((0x04 if sub.no_local else 0) | (0x08 if sub.retain_as_published else 0)
                        | (sub.retain_handling << 4))
        elif sub.no_local or sub.retain_as_published or sub.retain_handling:
            raise MQTTLocalError("MQTT 3.1.1 SUBSCRIBE carries only a QoS per topic filter")
        parts.append(encode_string(sub.topic_filter, "topic filter"))
        parts.append(bytes((options,)))
    return _fixed_header(0x82, b"".join(parts))


def _encode_suback(p: SubAck, level: int) -> bytes:
    parts = [U16.pack(_check_local_pid(p.packet_id, "SUBACK"))]
    if level == 5:
        parts.append(encode_properties(p.properties, PacketType.SUBACK))
        allowed = ALLOWED_REASON_CODES[PacketType.SUBACK]
    else:
        _check_props_v3(p.properties, "SUBACK", level)
        allowed = V3_SUBACK_RETURN_CODES
    if not p.reason_codes:
        raise MQTTLocalError("SUBACK needs a reason code per subscription")
    parts.append(bytes(_check_reason(c, allowed, "SUBACK") for c in p.reason_codes))
    return _fixed_header(0x90, b"".join(parts))


def _encode_unsubscribe(p: Unsubscribe, level: int) -> bytes:
    parts = [U16.pack(_check_local_pid(p.packet_id, "UNSUBSCRIBE"))]
    if level == 5:
        parts.append(encode_properties(p.properties, PacketType.UNSUBSCRIBE))
    else:
        _check_props_v3(p.properties, "UNSUBSCRIBE", level)
    if not p.topic_filters or isinstance(p.topic_filters, str):
        raise MQTTLocalError("UNSUBSCRIBE needs a non-empty tuple of topic filters")
    for topic_filter in p.topic_filters:
        problem = topic_filter_problem(topic_filter, level)
        if problem is not None:
            raise MQTTLocalError(f"UNSUBSCRIBE: {problem[0]} {problem[1]}")
        parts.append(encode_string(topic_filter, "topic filter"))
    return _fixed_header(0xA2, b"".join(parts))


def _encode_unsuback(p: UnsubAck, level: int) -> bytes:
    pid = U16.pack(_check_local_pid(p.packet_id, "UNSUBACK"))
    if level == 4:
        if p.reason_codes:
            raise MQTTLocalError("MQTT 3.1.1 UNSUBACK carries no reason codes")
        _check_props_v3(p.properties, "UNSUBACK", level)
        return b"\xb0\x02" + pid
    if not p.reason_codes:
        raise MQTTLocalError("MQTT 5 UNSUBACK needs a reason code per topic filter")
    allowed = ALLOWED_REASON_CODES[PacketType.UNSUBACK]
    body = (pid + encode_properties(p.properties, PacketType.UNSUBACK)
            + bytes(_check_reason(c, allowed, "UNSUBACK") for c in p.reason_codes))
    return _fixed_header(0xB0, body)


def _encode_reason_only(p, level: int) -> bytes:
    ptype = p.packet_type
    first = ptype << 4
    if level == 4:
        if ptype is PacketType.AUTH:
            raise MQTTLocalError("AUTH does not exist in MQTT 3.1.1")
        if p.reason_code != 0:
            raise MQTTLocalError("MQTT 3.1.1 DISCONNECT has no reason code")
        _check_props_v3(p.properties, ptype.name, level)
        return bytes((first, 0))
    code = _check_reason(p.reason_code, ALLOWED_REASON_CODES[ptype], ptype.name)
    if p.properties is NO_PROPERTIES or p.properties == NO_PROPERTIES:
        if code == 0:
            return bytes((first, 0))
        if ptype is PacketType.DISCONNECT:
            return bytes((first, 1, code))
    return _fixed_header(first, bytes((code,)) + encode_properties(p.properties, ptype))


_PINGREQ = b"\xc0\x00"
_PINGRESP = b"\xd0\x00"

_ENCODERS = {
    Connect: _encode_connect,
    Connack: _encode_connack,
    Publish: _encode_publish,
    PubAck: _encode_ack,
    PubRec: _encode_ack,
    PubRel: _encode_ack,
    PubComp: _encode_ack,
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _encode_unsuback,
    PingReq: lambda p, level: _PINGREQ,
    PingResp: lambda p, level: _PINGRESP,
    Disconnect: _encode_reason_only,
    Auth: _encode_reason_only,
}


def encode(packet: Packet, protocol_level: int | None = None) -> bytes:
    """The bytes of ``packet`` for a connection at ``protocol_level`` (4 or 5).

    A :class:`Connect` carries its own level; ``protocol_level`` may then be omitted, and must
    match if given. Raises :class:`MQTTLocalError` for anything MQTT cannot carry.
    """
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise MQTTLocalError(f"cannot encode {type(packet).__name__}")
    if type(packet) is Connect:
        if protocol_level is not None and protocol_level != packet.protocol_level:
            raise MQTTLocalError(
                f"CONNECT says protocol level {packet.protocol_level}, encode() was given "
                f"{protocol_level}")
        return encoder(packet, packet.protocol_level)
    return encoder(packet, _need_level(protocol_level))


def rewrite_connect(connect: Connect, **changes) -> bytes:
    """Encode ``connect`` with ``changes`` applied, e.g. for the upstream broker::

        rewrite_connect(c, username=None, password=None, keep_alive=60, clean_start=True)
    """
    try:
        changed = dataclasses.replace(connect, **changes)
    except TypeError as exc:
        raise MQTTLocalError(f"cannot rewrite CONNECT: {exc}") from None
    return encode(changed)
