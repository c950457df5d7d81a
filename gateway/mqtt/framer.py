"""Incremental framing of an MQTT byte stream into complete packets.

:class:`Framer` takes bytes as they arrive and hands out :class:`Frame` objects, each the exact
original bytes of one complete packet (so the gateway can forward it unchanged) plus its type and
fixed-header flags. It never decodes more than the fixed header. Before a single byte of a body is
kept it checks the Remaining Length against ``max_packet_size`` and the fixed-header flags against
the specification, so an oversized or malformed packet is refused as soon as its header arrives.

Copies are avoided: a packet that arrives whole inside one chunk is a ``memoryview`` slice of that
chunk; only a packet split across chunks is assembled in a ``bytearray`` of its own, which the
resulting frame then owns (no compaction of a shared buffer is ever needed).
"""

from __future__ import annotations

from collections.abc import Iterator

from gateway.mqtt.errors import MQTTProtocolError
from gateway.mqtt.reason_codes import PacketType, ReasonCode
from gateway.mqtt.wire import MAX_VARINT, clause, malformed

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "MAX_PAYLOAD_SIZE",
    "Frame",
    "Framer",
    "split_packet",
]

#: AWS IoT Core's payload limit.
MAX_PAYLOAD_SIZE = 128 * 1024
#: AWS IoT Core's MQTT 5 maximum packet size: the 128 KiB payload plus headers and properties.
DEFAULT_MAX_PACKET_SIZE = 146 * 1024

_TYPES: tuple[PacketType | None, ...] = (None, *PacketType)


def _flag_rule(b0: int) -> tuple[str, str, str] | None:
    """Why a first byte of a fixed header is invalid: (message, 3.1.1 clause, 5.0 clause)."""
    ptype, flags = b0 >> 4, b0 & 0x0F
    if ptype == 0:
        return "packet type 0 is reserved", "§2.2.1", "§2.1.2"
    if ptype == PacketType.PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            return "PUBLISH with QoS 3", "[MQTT-3.3.1-4]", "[MQTT-3.3.1-4]"
        if qos == 0 and flags & 0x08:
            return "PUBLISH with QoS 0 and DUP set", "[MQTT-3.3.1-2]", "[MQTT-3.3.1-2]"
        return None
    name = PacketType(ptype).name
    if ptype in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE):
        if flags != 0b0010:
            number = {6: "3.6.1-1", 8: "3.8.1-1", 10: "3.10.1-1"}[ptype]
            return (
                f"{name} fixed header flags are 0b{flags:04b}, not 0b0010",
                f"[MQTT-{number}]",
                f"[MQTT-{number}]",
            )
        return None
    if flags:
        v5 = {14: "[MQTT-3.14.1-1]", 15: "[MQTT-3.15.1-1]"}.get(ptype, "[MQTT-2.1.3-1]")
        return f"{name} fixed header flags are 0b{flags:04b}, not 0", "[MQTT-2.2.2-1]", v5
    return None


_FLAG_RULES: tuple[tuple[str, str, str] | None, ...] = tuple(_flag_rule(b) for b in range(256))


def _check_first_byte(b0: int, level: int | None) -> None:
    rule = _FLAG_RULES[b0]
    if rule is not None:
        raise malformed(rule[0], clause(level, rule[1], rule[2]), level)
    if b0 >> 4 == PacketType.AUTH and level == 4:
        raise malformed("AUTH (packet type 15) is reserved in MQTT 3.1.1", "§2.2.1", level)


def _too_large(total: int, limit: int, level: int | None) -> MQTTProtocolError:
    return MQTTProtocolError(
        f"packet of {total} bytes exceeds the maximum packet size of {limit} bytes",
        ReasonCode.PACKET_TOO_LARGE,
        clause(level, "§2.2.3", "[MQTT-3.2.2-15]"),
        protocol_level=level,
    )


def _parse_length(buf, i: int, end: int, level: int | None) -> tuple[int, int] | None:
    """Remaining Length starting at ``i``: ``(value, index after it)``, or ``None`` if cut short."""
    value = 0
    shift = 0
    for _ in range(4):
        if i >= end:
            return None
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
    raise malformed(
        "remaining length is longer than four bytes", clause(level, "§2.2.3", "[MQTT-1.5.5-1]"),
        level,
    )


class Frame:
    """One complete packet: its type, fixed-header flags and original bytes.

    ``data`` is a read-only ``memoryview`` of the whole packet, fixed header included;
    ``body_offset`` is where the variable header starts (after the Remaining Length).
    """

    __slots__ = ("body_offset", "data", "flags", "packet_type")

    def __init__(self, packet_type: PacketType, flags: int, data: memoryview, body_offset: int):
        self.packet_type = packet_type
        self.flags = flags
        self.data = data
        self.body_offset = body_offset

    @property
    def remaining_length(self) -> int:
        return len(self.data) - self.body_offset

    def __len__(self) -> int:
        return len(self.data)

    def __bytes__(self) -> bytes:
        return self.data.tobytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return self.body_offset == other.body_offset and self.data == other.data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Frame({self.packet_type.name}, flags=0b{self.flags:04b}, "
            f"{len(self.data)} bytes, body at {self.body_offset})"
        )


def split_packet(data, protocol_level: int | None = None) -> Frame:
    """The :class:`Frame` of ``data``, which must hold exactly one complete packet."""
    view = memoryview(data)
    if view.format != "B":
        view = view.cast("B")
    if not view.readonly:
        view = view.toreadonly()
    n = len(view)
    if n == 0:
        raise malformed("empty packet", clause(protocol_level, "§2.2", "§2.1"), protocol_level)
    b0 = view[0]
    _check_first_byte(b0, protocol_level)
    parsed = _parse_length(view, 1, n, protocol_level)
    if parsed is None:
        raise malformed(
            "remaining length is cut short", clause(protocol_level, "§2.2.3", "§2.1.4"),
            protocol_level,
        )
    rl, hl = parsed
    if hl + rl != n:
        raise malformed(
            f"remaining length says {rl} bytes but {n - hl} follow the fixed header",
            clause(protocol_level, "§2.2.3", "§2.1.4"),
            protocol_level,
        )
    return Frame(_TYPES[b0 >> 4], b0 & 0x0F, view, hl)  # type: ignore[arg-type]


class Framer:
    """Turns a byte stream into :class:`Frame` objects.

    ``feed(data)`` returns an iterator of the complete frames; frames are parsed as the iterator
    is consumed, so a malformed packet raises :class:`MQTTProtocolError` exactly at its place in
    the stream, after every frame before it was handed out. Bytes not yet consumed stay in the
    framer for the next call. Once an error was raised the framer stays failed: the connection
    must be closed.

    ``protocol_level`` (4 or 5, ``None`` until the CONNECT is read) selects clause numbers and
    makes packet type 15 (AUTH) invalid on MQTT 3.1.1.
    """

    __slots__ = (
        "_chunk",
        "_error",
        "_need",
        "_partial",
        "_pos",
        "_view",
        "max_packet_size",
        "protocol_level",
    )

    def __init__(
        self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE, protocol_level: int | None = None
    ) -> None:
        if not 2 <= max_packet_size <= MAX_VARINT + 5:
            raise ValueError(f"max_packet_size {max_packet_size} is out of range")
        self.max_packet_size = max_packet_size
        self.protocol_level = protocol_level
        self._chunk = b""
        self._view = memoryview(b"")
        self._pos = 0
        self._partial: bytearray | None = None
        self._need = 0  # total size of the partial packet, 0 while its header is incomplete
        self._error: MQTTProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as frames."""
        partial = len(self._partial) if self._partial is not None else 0
        return partial + len(self._chunk) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Take bytes from the stream; nothing is parsed until frames are asked for."""
        if not data or self._error is not None:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._pos < len(self._chunk):
            data = self._chunk[self._pos :] + data
        self._chunk = data
        self._view = memoryview(data)
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Frame]:
        """``receive_data(data)``, then iterate over the frames now complete."""
        self.receive_data(data)
        return self._drain()

    def __iter__(self) -> Iterator[Frame]:
        return self._drain()

    def _drain(self) -> Iterator[Frame]:
        rules = _FLAG_RULES
        types = _TYPES
        while True:
            # Fast path: whole packets with a one-byte Remaining Length inside the current chunk.
            # Anything else (longer lengths, partial packets, errors) goes through next_frame().
            if self._partial is None and self._error is None:
                chunk = self._chunk
                view = self._view
                pos = self._pos
                end = len(chunk) - 1
                limit = self.max_packet_size
                while pos < end:
                    b0 = chunk[pos]
                    rl = chunk[pos + 1]
                    stop = pos + 2 + rl
                    if rl >= 0x80 or stop > end + 1 or rules[b0] is not None or b0 >= 0xF0 \
                            or rl + 2 > limit:
                        break
                    self._pos = stop
                    yield Frame(types[b0 >> 4], b0 & 0x0F, view[pos:stop], 2)  # type: ignore
                    if self._chunk is not chunk or self._pos != stop:  # changed meanwhile
                        break
                    pos = stop
            frame = self.next_frame()
            if frame is None:
                return
            yield frame

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` when more bytes are needed."""
        if self._error is not None:
            raise self._error
        try:
            if self._partial is not None:
                return self._continue_partial()
            pos = self._pos
            chunk = self._chunk
            end = len(chunk)
            if pos >= end:
                return None
            b0 = chunk[pos]
            if _FLAG_RULES[b0] is not None or b0 >= 0xF0:
                _check_first_byte(b0, self.protocol_level)
            if pos + 1 < end and chunk[pos + 1] < 0x80:
                rl = chunk[pos + 1]
                hl = 2
            else:
                parsed = _parse_length(chunk, pos + 1, end, self.protocol_level)
                if parsed is None:
                    self._stash(pos, 0)
                    return None
                rl, after = parsed
                hl = after - pos
            total = hl + rl
            if total > self.max_packet_size:
                raise _too_large(total, self.max_packet_size, self.protocol_level)
            stop = pos + total
            if stop > end:
                self._stash(pos, total)
                return None
            self._pos = stop
            return Frame(_TYPES[b0 >> 4], b0 & 0x0F, self._view[pos:stop], hl)  # type: ignore
        except MQTTProtocolError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: MQTTProtocolError) -> None:
        self._error = exc
        self._partial = None
        self._chunk = b""
        self._view = memoryview(b"")
        self._pos = 0

    def _stash(self, pos: int, total: int) -> None:
        self._partial = bytearray(self._view[pos:])
        self._need = total
        self._chunk = b""
        self._view = memoryview(b"")
        self._pos = 0

    def _continue_partial(self) -> Frame | None:
        partial = self._partial
        assert partial is not None
        chunk = self._chunk
        end = len(chunk)
        pos = self._pos
        level = self.protocol_level
        if not self._need:
            # Header incomplete: move bytes over until the Remaining Length is complete.
            while True:
                parsed = None
                if len(partial) > 1:
                    parsed = _parse_length(partial, 1, len(partial), level)
                if parsed is not None:
                    rl, hl = parsed
                    total = hl + rl
                    if total > self.max_packet_size:
                        raise _too_large(total, self.max_packet_size, level)
                    self._need = total
                    break
                if pos >= end:
                    self._pos = pos
                    return None
                partial.append(chunk[pos])
                pos += 1
        need = self._need
        take = min(need - len(partial), end - pos)
        if take > 0:
            partial += self._view[pos : pos + take]
            pos += take
        self._pos = pos
        if len(partial) < need:
            return None
        self._partial = None
        self._need = 0
        b0 = partial[0]
        hl = _parse_length(partial, 1, len(partial), level)[1]  # type: ignore[index]
        view = memoryview(partial).toreadonly()
        return Frame(_TYPES[b0 >> 4], b0 & 0x0F, view, hl)  # type: ignore[arg-type]
