"""PROXY protocol version 2 (HAProxy's binary header), sans-IO: bytes in, the original addresses out.

A TCP load balancer in passthrough mode (HAProxy ``send-proxy-v2``, AWS NLB, ...) writes this header before the
first byte of the device's TLS stream, so the gateway learns the device's address although the TCP connection
comes from the balancer. Layout (the PROXY protocol specification, section 2.2):

    12 bytes  signature  \\r\\n\\r\\n\\0\\r\\nQUIT\\n
    1 byte    version (high nibble, 2) and command (low: 0 LOCAL, 1 PROXY)
    1 byte    address family (high: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport (low: 1 STREAM, 2 DGRAM)
    2 bytes   length of what follows, network order
    addresses INET: src 4, dst 4, src port 2, dst port 2; INET6: 16, 16, 2, 2; UNIX: 108, 108
    TLVs      type 1 byte, length 2 bytes, value (ALPN, authority, CRC32C, ...): kept as bytes, unread

``parse`` never reads past the header (the TLS stream follows it) and never raises anything but
``ProxyProtocolError``. A LOCAL header (the balancer's own health check) carries no addresses: the connection is
served as coming from the balancer itself.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER_FIXED = 16  # signature, version/command, family/transport, length
MAX_HEADER = 4096  # addresses and TLVs: HAProxy sends well under 600 bytes; anything larger is refused

LOCAL = 0
PROXY = 1
_FAMILIES = {0x1: ("inet", 12), 0x2: ("inet6", 36), 0x3: ("unix", 216)}


class ProxyProtocolError(Exception):
    """A malformed PROXY header: the connection is refused (``kind`` names why, for the access log)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class ProxyHeader(NamedTuple):
    command: int  # LOCAL or PROXY
    family: str  # "unspec", "inet", "inet6", "unix"
    source: tuple[str, int] | None  # the device's address (None: LOCAL, UNSPEC or UNIX)
    destination: tuple[str, int] | None  # the address the device connected to, on the balancer
    tlvs: tuple[tuple[int, bytes], ...]
    length: int  # bytes of the header, to skip before the TLS stream


def is_prefix(data: bytes | memoryview) -> bool:
    """Whether these first bytes may still be the start of a PROXY v2 header (False: plain TLS or junk)."""
    n = min(len(data), len(SIGNATURE))
    return bytes(data[:n]) == SIGNATURE[:n]


def needed(data: bytes | memoryview) -> int:
    """How many bytes the whole header takes, once the fixed 16 are known (else 16)."""
    if len(data) < HEADER_FIXED:
        return HEADER_FIXED
    return HEADER_FIXED + struct.unpack_from("!H", data, 14)[0]


def parse(data: bytes | memoryview) -> ProxyHeader | None:
    """The header at the start of ``data``, or None when more bytes are needed. Raises ProxyProtocolError."""
    view = memoryview(data)
    if not is_prefix(view):
        raise ProxyProtocolError("proxy_header_invalid", "the connection did not start with a PROXY v2 header")
    if len(view) < HEADER_FIXED:
        return None
    ver_cmd, fam_proto, length = view[12], view[13], struct.unpack_from("!H", view, 14)[0]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("proxy_header_invalid", f"PROXY protocol version {ver_cmd >> 4}, expected 2")
    command = ver_cmd & 0x0F
    if command not in (LOCAL, PROXY):
        raise ProxyProtocolError("proxy_header_invalid", f"PROXY command {command} is neither LOCAL nor PROXY")
    if HEADER_FIXED + length > MAX_HEADER:
        raise ProxyProtocolError("proxy_header_invalid",
                                 f"PROXY header of {HEADER_FIXED + length} bytes, more than {MAX_HEADER}")
    if len(view) < HEADER_FIXED + length:
        return None
    body = view[HEADER_FIXED:HEADER_FIXED + length]
    family_code, transport = fam_proto >> 4, fam_proto & 0x0F
    if command == LOCAL:
        return ProxyHeader(LOCAL, "unspec", None, None, (), HEADER_FIXED + length)
    if family_code == 0:
        return ProxyHeader(PROXY, "unspec", None, None, (), HEADER_FIXED + length)
    if family_code not in _FAMILIES:
        raise ProxyProtocolError("proxy_header_invalid", f"PROXY address family {family_code} is not known")
    if transport != 1:
        raise ProxyProtocolError("proxy_header_invalid",
                                 f"PROXY transport {transport} is not STREAM: the device listener is TCP")
    family, size = _FAMILIES[family_code]
    if length < size:
        raise ProxyProtocolError("proxy_header_invalid",
                                 f"PROXY {family} addresses take {size} bytes, the header has {length}")
    source = destination = None
    if family == "inet":
        src, dst = ipaddress.IPv4Address(bytes(body[0:4])), ipaddress.IPv4Address(bytes(body[4:8]))
        sport, dport = struct.unpack_from("!HH", body, 8)
        source, destination = (str(src), sport), (str(dst), dport)
    elif family == "inet6":
        src, dst = ipaddress.IPv6Address(bytes(body[0:16])), ipaddress.IPv6Address(bytes(body[16:32]))
        sport, dport = struct.unpack_from("!HH", body, 32)
        mapped = src.ipv4_mapped
        source, destination = (str(mapped or src), sport), (str(dst.ipv4_mapped or dst), dport)
    tlvs = []
    rest = body[size:]
    while len(rest):
        if len(rest) < 3:
            raise ProxyProtocolError("proxy_header_invalid", "PROXY header ends inside a TLV")
        kind, tlv_len = rest[0], struct.unpack_from("!H", rest, 1)[0]
        if len(rest) < 3 + tlv_len:
            raise ProxyProtocolError("proxy_header_invalid", f"PROXY TLV 0x{kind:02x} runs past the header")
        tlvs.append((kind, bytes(rest[3:3 + tlv_len])))
        rest = rest[3 + tlv_len:]
    return ProxyHeader(PROXY, family, source, destination, tuple(tlvs), HEADER_FIXED + length)


def build(source: tuple[str, int], destination: tuple[str, int], tlvs: tuple[tuple[int, bytes], ...] = ()
          ) -> bytes:
    """A PROXY v2 header for a TCP connection (what HAProxy's send-proxy-v2 writes): for tests and tools."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of one address family")
    fam = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    body += b"".join(bytes([k]) + struct.pack("!H", len(v)) + v for k, v in tlvs)
    return SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def build_local() -> bytes:
    return SIGNATURE + bytes([0x20, 0x00]) + b"\x00\x00"
