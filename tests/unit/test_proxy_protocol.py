"""PROXY protocol v2 parser as a table: each case fed whole, byte at a time and with the TLS stream behind it."""

from __future__ import annotations

import struct

import pytest

from gateway.proxy_protocol import (
    LOCAL,
    MAX_HEADER,
    PROXY,
    SIGNATURE,
    ProxyProtocolError,
    build,
    build_local,
    is_prefix,
    needed,
    parse,
)

CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def raw(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", len(body)) + body


V4 = bytes([203, 0, 113, 7, 10, 0, 0, 1]) + struct.pack("!HH", 51234, 8883)
V6 = bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 40000, 8883)
V6_MAPPED = bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 9]) + bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]) \
    + struct.pack("!HH", 1, 2)

GOOD = [
    ("ipv4", raw(0x21, 0x11, V4), PROXY, ("203.0.113.7", 51234), ("10.0.0.1", 8883), ()),
    ("ipv6", raw(0x21, 0x21, V6), PROXY, ("::1", 40000), ("::2", 8883), ()),
    ("ipv4-mapped ipv6 reads as ipv4", raw(0x21, 0x21, V6_MAPPED), PROXY, ("198.51.100.9", 1), ("10.0.0.1", 2), ()),
    ("ipv4 with tlvs", raw(0x21, 0x11, V4 + b"\x01\x00\x04mqtt" + b"\x04\x00\x00"), PROXY,
     ("203.0.113.7", 51234), ("10.0.0.1", 8883), ((0x01, b"mqtt"), (0x04, b""))),
    ("local (health check)", raw(0x20, 0x00, b""), LOCAL, None, None, ()),
    ("local ignores its body", raw(0x20, 0x11, V4), LOCAL, None, None, ()),
    ("proxy unspec", raw(0x21, 0x00, b""), PROXY, None, None, ()),
    ("unix addresses are not ip", raw(0x21, 0x31, bytes(216)), PROXY, None, None, ()),
    ("builder v4", build(("192.0.2.1", 5), ("192.0.2.2", 6)), PROXY, ("192.0.2.1", 5), ("192.0.2.2", 6), ()),
    ("builder local", build_local(), LOCAL, None, None, ()),
]

BAD = [
    ("plain tls", CLIENT_HELLO + bytes(20), "did not start with a PROXY v2 header"),
    ("proxy v1 text", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "did not start"),
    ("version 1 in the binary form", raw(0x11, 0x11, V4), "version 1, expected 2"),
    ("unknown command", raw(0x22, 0x11, V4), "command 2"),
    ("unknown family", raw(0x21, 0x41, V4), "family 4"),
    ("datagram", raw(0x21, 0x12, V4), "not STREAM"),
    ("short ipv4 addresses", raw(0x21, 0x11, V4[:8]), "take 12 bytes"),
    ("short ipv6 addresses", raw(0x21, 0x21, V6[:20]), "take 36 bytes"),
    ("tlv cut in its header", raw(0x21, 0x11, V4 + b"\x01\x00"), "ends inside a TLV"),
    ("tlv longer than the header", raw(0x21, 0x11, V4 + b"\x01\x00\x09mqtt"), "runs past the header"),
    ("oversize", SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_HEADER), f"more than {MAX_HEADER}"),
]


@pytest.mark.parametrize("name,data,command,source,destination,tlvs", GOOD, ids=[c[0] for c in GOOD])
def test_good_headers(name, data, command, source, destination, tlvs):
    for fed in (data, data + CLIENT_HELLO):
        header = parse(fed)
        assert (header.command, header.source, header.destination, header.tlvs) == (command, source,
                                                                                     destination, tlvs)
        assert header.length == len(data) and fed[header.length:] == fed[len(data):]
    assert needed(data) == len(data) and needed(data[:10]) == 16
    for n in range(len(data)):  # byte at a time: "need more" until the last byte, never an error
        assert parse(data[:n]) is None, n
        assert is_prefix(data[:n])


@pytest.mark.parametrize("name,data,message", BAD, ids=[c[0] for c in BAD])
def test_bad_headers(name, data, message):
    with pytest.raises(ProxyProtocolError) as info:
        for n in range(1, len(data) + 1):
            parse(data[:n])
    assert message in info.value.reason and info.value.kind == "proxy_header_invalid"


def test_tls_is_told_apart_from_the_first_byte():
    assert not is_prefix(CLIENT_HELLO[:1])
    assert is_prefix(SIGNATURE[:1]) and is_prefix(b"")
