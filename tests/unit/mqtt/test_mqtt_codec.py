"""The packet case table run through framer, decoder, peek and encoder."""

from __future__ import annotations

import re

import pytest

from gateway.mqtt import (
    Frame,
    Framer,
    MQTTProtocolError,
    PacketType,
    Publish,
    decode,
    encode,
    peek_publish,
    split_packet,
)
from tests.mqtt_cases import MALFORMED_CASES, VALID_CASES, MalformedCase, PacketCase

NEXT_PACKET = b"\xc0\x00"  # a PINGREQ: what follows a case on the wire


def _frames(chunks, level):
    framer = Framer(protocol_level=level)
    frames = []
    for chunk in chunks:
        frames.extend(framer.feed(chunk))
    return framer, frames


@pytest.mark.parametrize("case", VALID_CASES, ids=str)
def test_valid_case_decodes_whole(case: PacketCase) -> None:
    framer, frames = _frames([case.data], case.level)
    assert len(frames) == 1
    frame = frames[0]
    assert bytes(frame) == case.data
    assert frame.packet_type is case.packet.packet_type
    assert frame.flags == case.data[0] & 0x0F
    assert framer.buffered == 0
    assert decode(frame, case.level) == case.packet


@pytest.mark.parametrize("case", VALID_CASES, ids=str)
def test_valid_case_decodes_byte_at_a_time(case: PacketCase) -> None:
    data = case.data if len(case.data) < 2000 else case.data[:1000] + case.data[1000:1001]
    if len(case.data) >= 2000:  # large payloads: first bytes singly, then the rest in one go
        chunks = [case.data[i : i + 1] for i in range(1000)] + [case.data[1000:]]
    else:
        chunks = [data[i : i + 1] for i in range(len(data))]
    framer, frames = _frames(chunks, case.level)
    assert [bytes(f) for f in frames] == [case.data]
    assert decode(frames[0], case.level) == case.packet


@pytest.mark.parametrize("case", VALID_CASES, ids=str)
def test_valid_case_with_trailing_bytes(case: PacketCase) -> None:
    framer = Framer(protocol_level=case.level)
    frames = list(framer.feed(case.data + NEXT_PACKET[:1]))
    assert [bytes(f) for f in frames] == [case.data]
    assert framer.buffered == 1  # the trailing byte waits for the rest of its packet
    assert decode(frames[0], case.level) == case.packet
    more = list(framer.feed(NEXT_PACKET[1:] + case.data))
    assert [bytes(f) for f in more] == [NEXT_PACKET, case.data]
    assert framer.buffered == 0


@pytest.mark.parametrize("case", VALID_CASES, ids=str)
def test_valid_case_decodes_from_bytes(case: PacketCase) -> None:
    assert decode(case.data, case.level) == case.packet
    assert decode(bytearray(case.data), case.level) == case.packet


@pytest.mark.parametrize("case", VALID_CASES, ids=str)
def test_valid_case_encodes(case: PacketCase) -> None:
    encoded = encode(case.packet, case.level)
    if case.canonical:
        assert encoded == case.data
    assert decode(encoded, case.level) == case.packet


@pytest.mark.parametrize(
    "case", [c for c in VALID_CASES if c.packet.packet_type is PacketType.PUBLISH], ids=str
)
def test_peek_publish_agrees_with_decode(case: PacketCase) -> None:
    frame = split_packet(case.data)
    header = peek_publish(frame, case.level)
    packet = case.packet
    assert isinstance(packet, Publish)
    assert (header.topic, header.qos, header.retain, header.dup, header.packet_id) == (
        packet.topic, packet.qos, packet.retain, packet.dup, packet.packet_id,
    )
    assert header.topic_alias == packet.properties.topic_alias
    assert bytes(frame.data[header.payload_offset :]) == packet.payload


def _expect_error(case: MalformedCase, exc: MQTTProtocolError) -> None:
    assert (exc.reason_code, exc.clause) == (case.reason, case.clause), exc
    assert exc.clause in str(exc)


def _framer_then_decode(case: MalformedCase, chunks) -> MQTTProtocolError:
    framer = Framer(protocol_level=case.level)
    with pytest.raises(MQTTProtocolError) as info:
        for chunk in chunks:
            for frame in framer.feed(chunk):
                decode(frame, case.level)
                if frame.packet_type is PacketType.PUBLISH:
                    peek_publish(frame, case.level)
    return info.value


@pytest.mark.parametrize("case", MALFORMED_CASES, ids=str)
def test_malformed_case_refused_whole(case: MalformedCase) -> None:
    _expect_error(case, _framer_then_decode(case, [case.data]))


@pytest.mark.parametrize("case", MALFORMED_CASES, ids=str)
def test_malformed_case_refused_byte_at_a_time(case: MalformedCase) -> None:
    chunks = [case.data[i : i + 1] for i in range(len(case.data))]
    _expect_error(case, _framer_then_decode(case, chunks))


@pytest.mark.parametrize("case", MALFORMED_CASES, ids=str)
def test_malformed_case_refused_after_valid_packet(case: MalformedCase) -> None:
    """Frames before the bad one are handed out; the error comes at the bad one's place."""
    framer = Framer(protocol_level=case.level)
    seen = []
    with pytest.raises(MQTTProtocolError) as info:
        for frame in framer.feed(NEXT_PACKET + case.data + NEXT_PACKET):
            seen.append(bytes(frame))
            decode(frame, case.level)
    _expect_error(case, info.value)
    assert seen[0] == NEXT_PACKET
    assert NEXT_PACKET not in seen[2:]


@pytest.mark.parametrize(
    "case",
    [c for c in MALFORMED_CASES if c.data[0] >> 4 == PacketType.PUBLISH and c.reason != 0x95],
    ids=str,
)
def test_peek_publish_refuses_malformed_case(case: MalformedCase) -> None:
    try:
        frame = split_packet(case.data, case.level)
    except MQTTProtocolError as exc:  # refused by the fixed header already
        _expect_error(case, exc)
        return
    with pytest.raises(MQTTProtocolError) as info:
        peek_publish(frame, case.level)
    _expect_error(case, info.value)


@pytest.mark.parametrize(
    "case", [c for c in MALFORMED_CASES if c.data[0] >> 4 == PacketType.CONNECT], ids=str
)
def test_connect_errors_carry_a_protocol_level(case: MalformedCase) -> None:
    with pytest.raises(MQTTProtocolError) as info:
        decode(case.data)
    exc = info.value
    if case.reason == 0x84:  # the level is what is wrong: known only if it is 4 or 5
        assert exc.protocol_level in (None, 4, 5)
    elif "reserved-flags" in case.name or "truncated" in case.name:  # level not reached yet
        assert exc.protocol_level is None
    else:
        assert exc.protocol_level == case.level


def test_connect_decodes_its_own_protocol_level() -> None:
    for case in VALID_CASES:
        if case.packet.packet_type is PacketType.CONNECT:
            assert decode(case.data).protocol_level == case.level
            assert decode(case.data, 9 - case.level) == case.packet  # level argument ignored


def test_frame_is_a_view_of_the_received_chunk() -> None:
    data = VALID_CASES[0].data + NEXT_PACKET
    framer = Framer()
    first, second = framer.feed(data)
    assert isinstance(first, Frame) and first.data.obj is data and second.data.obj is data
    assert first.data.readonly


def test_case_table_covers_every_packet_type_and_level() -> None:
    covered = {(c.packet.packet_type, c.level) for c in VALID_CASES}
    for ptype in PacketType:
        for level in (4, 5):
            if ptype is PacketType.AUTH and level == 4:
                continue
            assert (ptype, level) in covered, (ptype, level)


def test_case_table_is_well_formed() -> None:
    for case in MALFORMED_CASES:
        assert re.fullmatch(r"\[MQTT-[0-9]+[.-][0-9.]+-[0-9]+\]|§[0-9.]+", case.clause), case
        assert case.reason >= 0x80, case
        assert case.level in (4, 5), case
    for case in VALID_CASES:
        assert case.level in (4, 5), case


def test_receive_data_and_next_frame() -> None:
    framer = Framer(protocol_level=5)
    framer.receive_data(VALID_CASES[0].data[:3])
    assert framer.next_frame() is None
    framer.receive_data(VALID_CASES[0].data[3:] + NEXT_PACKET)
    assert bytes(framer.next_frame()) == VALID_CASES[0].data
    assert bytes(framer.next_frame()) == NEXT_PACKET
    assert framer.next_frame() is None
