"""Framer behaviour beyond the case table: limits, buffering, errors, copies."""

from __future__ import annotations

import pytest

from gateway.mqtt import (
    DEFAULT_MAX_PACKET_SIZE,
    MAX_PAYLOAD_SIZE,
    Framer,
    MQTTProtocolError,
    PacketType,
    Publish,
    ReasonCode,
    encode,
    split_packet,
)
from tests.mqtt_cases import pkt, s, u16, vbi

PING = b"\xc0\x00"


def test_default_limit_fits_the_largest_aws_publish() -> None:
    topic = "t" * 256
    biggest = encode(Publish(topic, b"x" * MAX_PAYLOAD_SIZE, 1, packet_id=1), 5)
    assert len(biggest) <= DEFAULT_MAX_PACKET_SIZE
    assert [bytes(f) for f in Framer().feed(biggest)] == [biggest]


def test_oversized_packet_refused_from_its_fixed_header_alone() -> None:
    framer = Framer(max_packet_size=128 * 1024 + 1024, protocol_level=5)
    header = b"\x30" + vbi(10 * 1024 * 1024)  # claims a 10 MiB PUBLISH; no body sent
    with pytest.raises(MQTTProtocolError) as info:
        list(framer.feed(header))
    assert info.value.reason_code is ReasonCode.PACKET_TOO_LARGE
    assert framer.buffered == 0


def test_oversized_packet_refused_when_header_arrives_byte_by_byte() -> None:
    framer = Framer(max_packet_size=1000)
    header = b"\x32" + vbi(5000)
    assert list(framer.feed(header[:1])) == []
    assert list(framer.feed(header[1:2])) == []
    with pytest.raises(MQTTProtocolError) as info:
        list(framer.feed(header[2:]))
    assert info.value.reason_code is ReasonCode.PACKET_TOO_LARGE
    assert framer.buffered == 0


def test_oversized_packet_refused_when_header_follows_a_partial_packet() -> None:
    framer = Framer(max_packet_size=1000)
    first = pkt(0x30, s("a"), b"x" * 10)
    assert list(framer.feed(first[:5])) == []
    with pytest.raises(MQTTProtocolError):
        list(framer.feed(first[5:] + b"\x30" + vbi(2000)))


def test_limit_is_inclusive() -> None:
    packet = pkt(0x30, s("a"), b"x" * 95)
    assert len(packet) == 100
    assert len(list(Framer(max_packet_size=100).feed(packet))) == 1
    with pytest.raises(MQTTProtocolError):
        list(Framer(max_packet_size=99).feed(packet))


def test_fifth_remaining_length_byte_refused_before_more_data() -> None:
    framer = Framer()
    with pytest.raises(MQTTProtocolError) as info:
        list(framer.feed(b"\x30\x80\x80\x80\x80"))
    assert info.value.clause == "[MQTT-1.5.5-1]"


def test_four_byte_remaining_length_accepted() -> None:
    body = s("t") + b"y" * 2_097_152
    packet = b"\x30" + vbi(len(body)) + body
    assert len(vbi(len(body))) == 4
    framer = Framer(max_packet_size=len(packet))
    chunks = [packet[i : i + 65536] for i in range(0, len(packet), 65536)]
    frames = [f for chunk in chunks for f in framer.feed(chunk)]
    assert len(frames) == 1 and frames[0].body_offset == 5 and bytes(frames[0]) == packet


def test_error_is_sticky() -> None:
    framer = Framer()
    with pytest.raises(MQTTProtocolError) as first:
        list(framer.feed(b"\xc1\x00"))
    with pytest.raises(MQTTProtocolError) as again:
        list(framer.feed(PING))
    assert again.value is first.value


def test_frames_before_an_error_are_handed_out_in_order() -> None:
    framer = Framer()
    it = framer.feed(PING + PING + b"\x00\x00" + PING)
    assert bytes(next(it)) == PING
    assert bytes(next(it)) == PING
    with pytest.raises(MQTTProtocolError):
        next(it)


def test_unconsumed_frames_wait_for_the_next_call() -> None:
    framer = Framer()
    it = framer.feed(PING * 3)
    assert bytes(next(it)) == PING
    del it
    assert framer.buffered == 4
    frames = list(framer.feed(b"\xd0"))
    assert [bytes(f) for f in frames] == [PING, PING]
    assert framer.buffered == 1
    assert [bytes(f) for f in framer.feed(b"\x00")] == [b"\xd0\x00"]


def test_many_packets_in_one_chunk_are_views_of_it() -> None:
    packets = [encode(Publish(f"t/{i}", bytes([i]) * i, 1, packet_id=i + 1), 4) for i in range(50)]
    data = b"".join(packets)
    frames = list(Framer().feed(data))
    assert [bytes(f) for f in frames] == packets
    assert all(f.data.obj is data for f in frames)


def test_split_packet_owns_its_bytes() -> None:
    packet = pkt(0x30, s("a/b"), b"payload")
    framer = Framer()
    assert list(framer.feed(packet[:4])) == []
    (frame,) = framer.feed(packet[4:] + PING[:1])
    assert bytes(frame) == packet
    assert frame.data.readonly
    list(framer.feed(PING[1:] + packet))
    assert bytes(frame) == packet  # later data never lands in an earlier frame


def test_mutable_input_is_not_aliased() -> None:
    data = bytearray(PING + PING)
    framer = Framer()
    frames = list(framer.feed(data))
    data[:] = b"\xff" * len(data)
    assert [bytes(f) for f in frames] == [PING, PING]


def test_memoryview_input() -> None:
    data = memoryview(bytearray(PING * 2))[2:]
    assert [bytes(f) for f in Framer().feed(data)] == [PING]


def test_auth_refused_once_level_is_known_as_3_1_1() -> None:
    framer = Framer()
    assert [f.packet_type for f in framer.feed(b"\xf0\x00")] == [PacketType.AUTH]
    framer.protocol_level = 4
    with pytest.raises(MQTTProtocolError) as info:
        list(framer.feed(b"\xf0\x00"))
    assert info.value.protocol_level == 4


def test_frame_attributes() -> None:
    packet = pkt(0x3B, s("a"), u16(7), b"xyz")
    frame = split_packet(packet)
    assert frame.packet_type is PacketType.PUBLISH
    assert frame.flags == 0x0B
    assert frame.body_offset == 2
    assert frame.remaining_length == len(packet) - 2
    assert len(frame) == len(packet)
    assert bytes(frame) == packet
    assert frame == split_packet(bytearray(packet))
    assert "PUBLISH" in repr(frame)


def test_empty_feed_and_empty_framer() -> None:
    framer = Framer()
    assert list(framer.feed(b"")) == []
    assert framer.next_frame() is None
    assert list(framer) == []


@pytest.mark.parametrize("limit", [0, 1, 268_435_461])
def test_max_packet_size_range(limit: int) -> None:
    with pytest.raises(ValueError):
        Framer(max_packet_size=limit)


def test_split_packet_refuses_partial_and_extra_bytes() -> None:
    packet = pkt(0x30, s("a"), b"x")
    with pytest.raises(MQTTProtocolError):
        split_packet(packet[:-1])
    with pytest.raises(MQTTProtocolError):
        split_packet(packet + b"\x00")
    with pytest.raises(MQTTProtocolError):
        split_packet(b"")
    with pytest.raises(MQTTProtocolError):
        split_packet(b"\x30\x80")
