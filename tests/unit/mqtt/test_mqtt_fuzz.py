"""Property tests: arbitrary bytes only ever yield frames, packets or MQTTProtocolError; valid
packets round-trip through encode, framer and decode."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.mqtt import (
    Framer,
    MQTTProtocolError,
    PacketType,
    Publish,
    decode,
    encode,
    peek_publish,
)
from tests.mqtt_cases import MALFORMED_CASES, VALID_CASES
from tests.mqtt_strategies import packets

SEEDS = [c.data for c in VALID_CASES if len(c.data) < 1000] + [c.data for c in MALFORMED_CASES]
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

levels = st.sampled_from([4, 5])


def _mutate(data: bytes, draw) -> bytes:
    """Flip, drop, insert or cut bytes of a real packet: nearer the interesting edges than noise."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == 0 and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == 1 and buf:
            del buf[pos]
        elif op == 2:
            buf.insert(pos, draw(st.integers(0, 255)))
        else:
            del buf[pos:]
    return bytes(buf)


@st.composite
def streams(draw) -> bytes:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            parts.append(draw(st.binary(max_size=64)))
        elif kind == 1:
            parts.append(draw(st.sampled_from(SEEDS)))
        else:
            parts.append(_mutate(draw(st.sampled_from(SEEDS)), draw))
    return b"".join(parts)


def _consume(data: bytes, level: int, chunk: int) -> None:
    framer = Framer(max_packet_size=4096, protocol_level=level)
    try:
        for i in range(0, len(data), chunk):
            for frame in framer.feed(data[i : i + chunk]):
                if frame.packet_type is PacketType.PUBLISH:
                    peek_publish(frame, level)
                packet = decode(frame, level)
                if frame.packet_type is PacketType.CONNECT:
                    framer.protocol_level = packet.protocol_level
                    level = packet.protocol_level
    except MQTTProtocolError:
        pass


@FAST
@given(st.binary(max_size=300), levels, st.integers(1, 64))
@example(b"\x30\xff\xff\xff\xff\x7f", 5, 1)
@example(b"\x10\x00", 4, 1)
def test_arbitrary_bytes_yield_packets_or_protocol_errors(data: bytes, level: int, chunk: int):
    _consume(data, level, chunk)


@FAST
@given(streams(), levels, st.integers(1, 64))
def test_mutated_packets_yield_packets_or_protocol_errors(data: bytes, level: int, chunk: int):
    _consume(data, level, chunk)


@FAST
@given(st.binary(max_size=200), levels)
def test_decode_of_arbitrary_bytes(data: bytes, level: int) -> None:
    for candidate in (data, b"\x10" + bytes([len(data) & 0x7F]) + data[:127]):
        try:
            decode(candidate, level)
        except MQTTProtocolError:
            pass


leveled_packets = packets(4).map(lambda p: (4, p)) | packets(5).map(lambda p: (5, p))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leveled_packets)
def test_valid_packets_round_trip(leveled) -> None:
    level, packet = leveled
    encoded = encode(packet, level)
    framer = Framer(max_packet_size=1 << 20, protocol_level=level)
    frames = list(framer.feed(encoded))
    assert [bytes(f) for f in frames] == [encoded]
    decoded = decode(frames[0], level)
    assert decoded == packet
    assert encode(decoded, level) == encoded
    if isinstance(packet, Publish):
        header = peek_publish(frames[0], level)
        assert (header.topic, header.qos, header.retain, header.dup, header.packet_id,
                header.topic_alias) == (packet.topic, packet.qos, packet.retain, packet.dup,
                                        packet.packet_id, packet.properties.topic_alias)
        assert bytes(frames[0].data[header.payload_offset :]) == packet.payload


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), levels, st.integers(1, 7))
def test_packet_streams_survive_any_chunking(data, level: int, chunk: int) -> None:
    sent = data.draw(st.lists(packets(level), min_size=1, max_size=6))
    stream = b"".join(encode(p, level) for p in sent)
    framer = Framer(max_packet_size=1 << 20, protocol_level=level)
    received = [decode(f, level)
                for i in range(0, len(stream), chunk)
                for f in framer.feed(stream[i : i + chunk])]
    assert received == sent
    assert framer.buffered == 0
