"""Wire primitives shared by the codec: variable byte integers, length-prefixed UTF-8 strings and
binary data, and the choice of specification clause per protocol version.

Readers take a buffer (``bytes`` or ``memoryview``), a start index and an end index they must not
read past, and return ``(value, next_index)``. They raise :class:`MQTTProtocolError` for malformed
input. Writers return ``bytes`` and raise :class:`MQTTLocalError` for values MQTT cannot carry.
"""

from __future__ import annotations

from struct import Struct

from gateway.mqtt.errors import MQTTLocalError, MQTTProtocolError
from gateway.mqtt.reason_codes import ReasonCode

__all__ = [
    "MAX_VARINT",
    "clause",
    "encode_binary",
    "encode_string",
    "encode_varint",
    "malformed",
    "protocol_error",
    "read_binary",
    "read_string",
    "read_varint",
]

#: Largest value a Variable Byte Integer can hold (four bytes).
MAX_VARINT = 268_435_455

U16 = Struct(">H")
U32 = Struct(">I")

_VARINT_1 = tuple(bytes((n,)) for n in range(128))


def clause(protocol_level: int | None, v311: str, v5: str) -> str:
    """The clause to name for a broken rule: the MQTT 3.1.1 number on a 3.1.1 connection, the 5.0
    number otherwise (5.0 is also used while the version is not yet known)."""
    return v311 if protocol_level == 4 else v5


def malformed(message: str, clause_: str | None, protocol_level: int | None) -> MQTTProtocolError:
    return MQTTProtocolError(
        message, ReasonCode.MALFORMED_PACKET, clause_, protocol_level=protocol_level
    )


def protocol_error(
    message: str, clause_: str | None, protocol_level: int | None
) -> MQTTProtocolError:
    return MQTTProtocolError(
        message, ReasonCode.PROTOCOL_ERROR, clause_, protocol_level=protocol_level
    )


def _varint_clause(level: int | None) -> str:
    return clause(level, "§2.2.3", "[MQTT-1.5.5-1]")


def read_varint(buf, i: int, end: int, level: int | None = 5) -> tuple[int, int]:
    """Read a Variable Byte Integer of at most four bytes."""
    if i < end:
        b = buf[i]
        if b < 0x80:
            return b, i + 1
    value = 0
    shift = 0
    for _ in range(4):
        if i >= end:
            raise malformed(
                "variable byte integer is cut short", clause(level, "§2.2.3", "§1.5.5"), level
            )
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
    raise malformed(
        "variable byte integer is longer than four bytes", _varint_clause(level), level
    )


def encode_varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _VARINT_1[value]
    if not 0 <= value <= MAX_VARINT:
        raise MQTTLocalError(f"{value} does not fit a variable byte integer (0..{MAX_VARINT})")
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _utf8_clauses(level: int | None) -> tuple[str, str]:
    if level == 4:
        return "[MQTT-1.5.3-1]", "[MQTT-1.5.3-2]"
    return "[MQTT-1.5.4-1]", "[MQTT-1.5.4-2]"


def read_string(buf, i: int, end: int, level: int | None, what: str) -> tuple[str, int]:
    """Read a UTF-8 Encoded String: well-formed UTF-8 without surrogates and without U+0000."""
    j = i + 2
    if j > end:
        raise malformed(f"{what}: length is cut short", clause(level, "§1.5.3", "§1.5.4"), level)
    j += (buf[i] << 8) | buf[i + 1]
    if j > end:
        raise malformed(
            f"{what}: string runs past the end of the packet",
            clause(level, "§1.5.3", "§1.5.4"),
            level,
        )
    try:
        s = str(buf[i + 2 : j], "utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(
            f"{what}: not well-formed UTF-8 ({exc.reason} at byte {exc.start})",
            _utf8_clauses(level)[0],
            level,
        ) from None
    if "\x00" in s:
        raise malformed(f"{what}: contains U+0000", _utf8_clauses(level)[1], level)
    return s, j


def read_binary(buf, i: int, end: int, level: int | None, what: str) -> tuple[bytes, int]:
    """Read Binary Data: a two byte length and that many bytes."""
    j = i + 2
    if j > end:
        raise malformed(f"{what}: length is cut short", clause(level, "§1.5.3", "§1.5.6"), level)
    j += (buf[i] << 8) | buf[i + 1]
    if j > end:
        raise malformed(
            f"{what}: data runs past the end of the packet",
            clause(level, "§1.5.3", "§1.5.6"),
            level,
        )
    return bytes(buf[i + 2 : j]), j


def encode_string(value: str, what: str) -> bytes:
    """Encode a UTF-8 Encoded String (two byte length + UTF-8)."""
    if not isinstance(value, str):
        raise MQTTLocalError(f"{what} must be a str, not {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise MQTTLocalError(
            f"{what} contains a lone surrogate, which UTF-8 cannot carry"
        ) from None
    if len(raw) > 0xFFFF:
        raise MQTTLocalError(f"{what} is {len(raw)} bytes of UTF-8; MQTT allows at most 65535")
    if "\x00" in value:
        raise MQTTLocalError(f"{what} contains U+0000, which MQTT forbids")
    return U16.pack(len(raw)) + raw


def encode_binary(value: bytes, what: str) -> bytes:
    """Encode Binary Data (two byte length + bytes)."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise MQTTLocalError(f"{what} must be bytes, not {type(value).__name__}")
    n = len(value)
    if n > 0xFFFF:
        raise MQTTLocalError(f"{what} is {n} bytes; MQTT allows at most 65535")
    return U16.pack(n) + bytes(value)
