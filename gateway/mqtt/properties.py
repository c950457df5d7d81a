"""MQTT 5 properties (§2.2.2): identifiers, types, the packets each may appear in, and the
:class:`Properties` value every MQTT 5 packet carries.

Decoding refuses an identifier not valid for the packet (a Malformed Packet, §2.2.2.2), a
property repeated where only User Property (and Subscription Identifier in PUBLISH) may repeat
(a Protocol Error), and values the specification rules out (0 for Receive Maximum, Maximum
Packet Size, Topic Alias, Subscription Identifier; anything but 0/1 for the boolean bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import NamedTuple

from gateway.mqtt.errors import MQTTLocalError, MQTTProtocolError
from gateway.mqtt.reason_codes import PacketType, ReasonCode
from gateway.mqtt.topics import topic_name_problem
from gateway.mqtt.wire import (
    MAX_VARINT,
    U16,
    U32,
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
    "NO_PROPERTIES",
    "WILL_PROPERTIES",
    "Properties",
    "PropertyId",
    "PropertyType",
    "decode_properties",
    "encode_properties",
]

#: Pseudo packet type for the Will Properties inside a CONNECT payload.
WILL_PROPERTIES = 0


class PropertyId(IntEnum):
    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class PropertyType(IntEnum):
    BYTE = 1
    TWO_BYTE_INTEGER = 2
    FOUR_BYTE_INTEGER = 3
    VARIABLE_BYTE_INTEGER = 4
    BINARY_DATA = 5
    UTF8_STRING = 6
    UTF8_STRING_PAIR = 7


# Checks applied to a value after its type was read.
_ANY, _BOOL, _NONZERO, _TOPIC = 0, 1, 2, 3


class PropertySpec(NamedTuple):
    id: PropertyId
    attr: str
    type: PropertyType
    packets: frozenset[int]
    check: int
    section: str


_P = PacketType
_T = PropertyType
_W = WILL_PROPERTIES

_SPECS: tuple[PropertySpec, ...] = (
    PropertySpec(PropertyId.PAYLOAD_FORMAT_INDICATOR, "payload_format_indicator", _T.BYTE,
                 frozenset({_P.PUBLISH, _W}), _BOOL, "§3.3.2.3.2"),
    PropertySpec(PropertyId.MESSAGE_EXPIRY_INTERVAL, "message_expiry_interval",
                 _T.FOUR_BYTE_INTEGER, frozenset({_P.PUBLISH, _W}), _ANY, "§3.3.2.3.3"),
    PropertySpec(PropertyId.CONTENT_TYPE, "content_type", _T.UTF8_STRING,
                 frozenset({_P.PUBLISH, _W}), _ANY, "§3.3.2.3.9"),
    PropertySpec(PropertyId.RESPONSE_TOPIC, "response_topic", _T.UTF8_STRING,
                 frozenset({_P.PUBLISH, _W}), _TOPIC, "§3.3.2.3.5"),
    PropertySpec(PropertyId.CORRELATION_DATA, "correlation_data", _T.BINARY_DATA,
                 frozenset({_P.PUBLISH, _W}), _ANY, "§3.3.2.3.6"),
    PropertySpec(PropertyId.SUBSCRIPTION_IDENTIFIER, "subscription_identifiers",
                 _T.VARIABLE_BYTE_INTEGER, frozenset({_P.PUBLISH, _P.SUBSCRIBE}), _NONZERO,
                 "§3.8.2.1.2"),
    PropertySpec(PropertyId.SESSION_EXPIRY_INTERVAL, "session_expiry_interval",
                 _T.FOUR_BYTE_INTEGER, frozenset({_P.CONNECT, _P.CONNACK, _P.DISCONNECT}), _ANY,
                 "§3.1.2.11.2"),
    PropertySpec(PropertyId.ASSIGNED_CLIENT_IDENTIFIER, "assigned_client_identifier",
                 _T.UTF8_STRING, frozenset({_P.CONNACK}), _ANY, "§3.2.2.3.7"),
    PropertySpec(PropertyId.SERVER_KEEP_ALIVE, "server_keep_alive", _T.TWO_BYTE_INTEGER,
                 frozenset({_P.CONNACK}), _ANY, "§3.2.2.3.14"),
    PropertySpec(PropertyId.AUTHENTICATION_METHOD, "authentication_method", _T.UTF8_STRING,
                 frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH}), _ANY, "§3.1.2.11.9"),
    PropertySpec(PropertyId.AUTHENTICATION_DATA, "authentication_data", _T.BINARY_DATA,
                 frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH}), _ANY, "§3.1.2.11.10"),
    PropertySpec(PropertyId.REQUEST_PROBLEM_INFORMATION, "request_problem_information", _T.BYTE,
                 frozenset({_P.CONNECT}), _BOOL, "§3.1.2.11.7"),
    PropertySpec(PropertyId.WILL_DELAY_INTERVAL, "will_delay_interval", _T.FOUR_BYTE_INTEGER,
                 frozenset({_W}), _ANY, "§3.1.3.2.2"),
    PropertySpec(PropertyId.REQUEST_RESPONSE_INFORMATION, "request_response_information",
                 _T.BYTE, frozenset({_P.CONNECT}), _BOOL, "§3.1.2.11.6"),
    PropertySpec(PropertyId.RESPONSE_INFORMATION, "response_information", _T.UTF8_STRING,
                 frozenset({_P.CONNACK}), _ANY, "§3.2.2.3.15"),
    PropertySpec(PropertyId.SERVER_REFERENCE, "server_reference", _T.UTF8_STRING,
                 frozenset({_P.CONNACK, _P.DISCONNECT}), _ANY, "§3.2.2.3.16"),
    PropertySpec(PropertyId.REASON_STRING, "reason_string", _T.UTF8_STRING,
                 frozenset({_P.CONNACK, _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP, _P.SUBACK,
                            _P.UNSUBACK, _P.DISCONNECT, _P.AUTH}), _ANY, "§3.2.2.3.9"),
    PropertySpec(PropertyId.RECEIVE_MAXIMUM, "receive_maximum", _T.TWO_BYTE_INTEGER,
                 frozenset({_P.CONNECT, _P.CONNACK}), _NONZERO, "§3.1.2.11.3"),
    PropertySpec(PropertyId.TOPIC_ALIAS_MAXIMUM, "topic_alias_maximum", _T.TWO_BYTE_INTEGER,
                 frozenset({_P.CONNECT, _P.CONNACK}), _ANY, "§3.1.2.11.5"),
    PropertySpec(PropertyId.TOPIC_ALIAS, "topic_alias", _T.TWO_BYTE_INTEGER,
                 frozenset({_P.PUBLISH}), _NONZERO, "§3.3.2.3.4"),
    PropertySpec(PropertyId.MAXIMUM_QOS, "maximum_qos", _T.BYTE, frozenset({_P.CONNACK}), _BOOL,
                 "§3.2.2.3.4"),
    PropertySpec(PropertyId.RETAIN_AVAILABLE, "retain_available", _T.BYTE,
                 frozenset({_P.CONNACK}), _BOOL, "§3.2.2.3.5"),
    PropertySpec(PropertyId.USER_PROPERTY, "user_properties", _T.UTF8_STRING_PAIR,
                 frozenset({_P.CONNECT, _P.CONNACK, _P.PUBLISH, _P.PUBACK, _P.PUBREC, _P.PUBREL,
                            _P.PUBCOMP, _P.SUBSCRIBE, _P.SUBACK, _P.UNSUBSCRIBE, _P.UNSUBACK,
                            _P.DISCONNECT, _P.AUTH, _W}), _ANY, "§3.1.2.11.8"),
    PropertySpec(PropertyId.MAXIMUM_PACKET_SIZE, "maximum_packet_size", _T.FOUR_BYTE_INTEGER,
                 frozenset({_P.CONNECT, _P.CONNACK}), _NONZERO, "§3.1.2.11.4"),
    PropertySpec(PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE, "wildcard_subscription_available",
                 _T.BYTE, frozenset({_P.CONNACK}), _BOOL, "§3.2.2.3.11"),
    PropertySpec(PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                 "subscription_identifier_available", _T.BYTE, frozenset({_P.CONNACK}), _BOOL,
                 "§3.2.2.3.12"),
    PropertySpec(PropertyId.SHARED_SUBSCRIPTION_AVAILABLE, "shared_subscription_available",
                 _T.BYTE, frozenset({_P.CONNACK}), _BOOL, "§3.2.2.3.13"),
)

#: Property specifications by identifier (index 0..127; ``None`` where no property exists).
SPEC_BY_ID: tuple[PropertySpec | None, ...] = tuple(
    next((s for s in _SPECS if s.id == n), None) for n in range(128)
)
SPECS = _SPECS

@dataclass(frozen=True, slots=True, repr=False)
class Properties:
    """The MQTT 5 properties of one packet. ``None`` (or an empty tuple) means absent.

    ``user_properties`` keeps order and repeats, as the specification requires. Subscription
    Identifiers are a tuple because a PUBLISH from the server may carry several.
    """

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def __repr__(self) -> str:
        set_fields = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) not in (None, ())
        )
        return f"Properties({set_fields})"

    def __bool__(self) -> bool:
        return self != NO_PROPERTIES


NO_PROPERTIES = Properties()

_CONTEXT_NAMES = {WILL_PROPERTIES: "Will Properties", **{p: p.name for p in PacketType}}


def _context_name(context: int) -> str:
    return _CONTEXT_NAMES.get(context, str(context))


def decode_properties(
    buf, i: int, end: int, context: int, level: int | None = 5
) -> tuple[Properties, int]:
    """Read a Property Length and the properties it covers; return them and the next index."""
    if i < end and buf[i] == 0:
        return NO_PROPERTIES, i + 1
    length, i = read_varint(buf, i, end, level)
    stop = i + length
    if stop > end:
        raise malformed(
            f"{_context_name(context)}: property length {length} runs past the end of the packet",
            "§2.2.2.1",
            level,
        )
    values: dict[str, object] = {}
    user: list[tuple[str, str]] | None = None
    sub_ids: list[int] | None = None
    while i < stop:
        pid = buf[i]
        spec = SPEC_BY_ID[pid] if pid < 128 else None
        if spec is None or context not in spec.packets:
            what = f"property 0x{pid:02X}" if spec is None else spec.attr
            raise malformed(
                f"{what} is not valid in {_context_name(context)}", "§2.2.2.2", level
            )
        i += 1
        ptype = spec.type
        if ptype is _T.BYTE:
            if i >= stop:
                raise malformed(f"{spec.attr} is cut short", "§2.2.2.2", level)
            value: object = buf[i]
            i += 1
        elif ptype is _T.TWO_BYTE_INTEGER:
            if i + 2 > stop:
                raise malformed(f"{spec.attr} is cut short", "§2.2.2.2", level)
            value = (buf[i] << 8) | buf[i + 1]
            i += 2
        elif ptype is _T.FOUR_BYTE_INTEGER:
            if i + 4 > stop:
                raise malformed(f"{spec.attr} is cut short", "§2.2.2.2", level)
            value = U32.unpack_from(buf, i)[0]
            i += 4
        elif ptype is _T.VARIABLE_BYTE_INTEGER:
            value, i = read_varint(buf, i, stop, level)
        elif ptype is _T.BINARY_DATA:
            value, i = read_binary(buf, i, stop, level, spec.attr)
        elif ptype is _T.UTF8_STRING:
            value, i = read_string(buf, i, stop, level, spec.attr)
        else:
            key, i = read_string(buf, i, stop, level, "user property name")
            val, i = read_string(buf, i, stop, level, "user property value")
            if user is None:
                user = []
            user.append((key, val))
            continue
        check = spec.check
        if check:
            _check_value(spec, value, level)
        if ptype is _T.VARIABLE_BYTE_INTEGER:
            if sub_ids is None:
                sub_ids = []
            elif context != PacketType.PUBLISH:
                raise protocol_error(
                    "subscription identifier appears more than once", spec.section, level
                )
            sub_ids.append(value)  # type: ignore[arg-type]
            continue
        if spec.attr in values:
            raise protocol_error(
                f"{spec.attr} appears more than once in {_context_name(context)}",
                spec.section,
                level,
            )
        values[spec.attr] = value
    if user is not None:
        values["user_properties"] = tuple(user)
    if sub_ids is not None:
        values["subscription_identifiers"] = tuple(sub_ids)
    return Properties(**values), stop  # type: ignore[arg-type]


def _check_value(spec: PropertySpec, value, level: int | None) -> None:
    check = spec.check
    if check == _BOOL:
        if value not in (0, 1):
            raise protocol_error(f"{spec.attr} is {value}, not 0 or 1", spec.section, level)
    elif check == _NONZERO:
        if value == 0:
            if spec.id == PropertyId.TOPIC_ALIAS:
                raise MQTTProtocolError(
                    "topic alias 0 is not permitted",
                    ReasonCode.TOPIC_ALIAS_INVALID,
                    "[MQTT-3.3.2-8]",
                    protocol_level=level,
                )
            raise protocol_error(f"{spec.attr} is 0, which is not permitted", spec.section, level)
    elif check == _TOPIC:
        problem = topic_name_problem(value, level, "[MQTT-3.3.2-14]")
        if problem is not None:
            raise protocol_error(f"response topic: {problem[0]}", problem[1], level)


# ---------------------------------------------------------------------------------------------
# Encoding

_EMPTY_PROPERTIES = b"\x00"

_RANGES = {
    _T.BYTE: 0xFF,
    _T.TWO_BYTE_INTEGER: 0xFFFF,
    _T.FOUR_BYTE_INTEGER: 0xFFFF_FFFF,
    _T.VARIABLE_BYTE_INTEGER: MAX_VARINT,
}


def _encode_int(spec: PropertySpec, value) -> bytes:
    if not isinstance(value, int):
        raise MQTTLocalError(f"property {spec.attr} must be an int, not {value!r}")
    value = int(value)
    if not 0 <= value <= _RANGES[spec.type]:
        raise MQTTLocalError(f"property {spec.attr}={value} is out of range")
    if spec.check == _BOOL and value not in (0, 1):
        raise MQTTLocalError(f"property {spec.attr} must be 0 or 1, not {value}")
    if spec.check == _NONZERO and value == 0:
        raise MQTTLocalError(f"property {spec.attr} must not be 0")
    ptype = spec.type
    if ptype is _T.BYTE:
        return bytes((spec.id, value))
    if ptype is _T.TWO_BYTE_INTEGER:
        return bytes((spec.id,)) + U16.pack(value)
    if ptype is _T.FOUR_BYTE_INTEGER:
        return bytes((spec.id,)) + U32.pack(value)
    return bytes((spec.id,)) + encode_varint(value)


def encode_properties(props: Properties, context: int) -> bytes:
    """Property Length + properties, in identifier order (as paho-mqtt and most encoders do)."""
    if props is NO_PROPERTIES:
        return _EMPTY_PROPERTIES
    if not isinstance(props, Properties):
        raise MQTTLocalError(f"properties must be a Properties, not {type(props).__name__}")
    parts: list[bytes] = []
    for spec in _SPECS:
        value = getattr(props, spec.attr)
        if value is None or value == ():
            continue
        if context not in spec.packets:
            raise MQTTLocalError(f"property {spec.attr} is not valid in {_context_name(context)}")
        ptype = spec.type
        if ptype is _T.UTF8_STRING:
            if spec.check == _TOPIC:
                problem = topic_name_problem(value, 5, "[MQTT-3.3.2-14]")
                if problem is not None:
                    raise MQTTLocalError(f"response topic: {problem[0]} {problem[1]}")
            parts.append(bytes((spec.id,)) + encode_string(value, spec.attr))
        elif ptype is _T.BINARY_DATA:
            parts.append(bytes((spec.id,)) + encode_binary(value, spec.attr))
        elif ptype is _T.UTF8_STRING_PAIR:
            for pair in value:
                if len(pair) != 2:
                    raise MQTTLocalError(f"user property {pair!r} is not a (name, value) pair")
                parts.append(
                    b"\x26"
                    + encode_string(pair[0], "user property name")
                    + encode_string(pair[1], "user property value")
                )
        elif ptype is _T.VARIABLE_BYTE_INTEGER:
            if isinstance(value, int):
                raise MQTTLocalError("subscription_identifiers must be a tuple of ints")
            if context != PacketType.PUBLISH and len(value) > 1:
                raise MQTTLocalError(
                    f"{_context_name(context)} carries at most one subscription identifier"
                )
            for sub_id in value:
                parts.append(_encode_int(spec, sub_id))
        else:
            parts.append(_encode_int(spec, value))
    body = b"".join(parts)
    return encode_varint(len(body)) + body
