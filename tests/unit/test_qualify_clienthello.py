"""ClientHello parsing and record scanning: real hellos from OpenSSL clients and hand-built ones, each fed whole,
byte at a time, split across TLS records and with trailing bytes; malformed input names what it looks like."""

from __future__ import annotations

import ssl
import struct

import pytest

from gateway.mqtt import Connect, encode
from gateway.qualify.clienthello import (AWS_IOT_RECOMMENDED, AWS_IOT_SUPPORTED, HelloReader, NotTLS,
                                         RecordScanner, is_grease, suite_name)
from tests.qualify_devices import tls_context


def openssl_hello(server_hostname: str | None = "localhost", *, minimum=ssl.TLSVersion.TLSv1_2, maximum=None,
                  alpn=None, ciphers=None) -> bytes:
    ctx = tls_context(None, "", verify=False, minimum=minimum, maximum=maximum, ciphers=ciphers)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(body)) + body


def built_hello(*, suites=(0x0A0A, 0xC02B, 0x1301, 0x00FF), versions=(0x2A2A, 0x0304, 0x0303), sni="dev.example",
                mfl: int | None = 2, rsl: int | None = 4096, legacy=0x0303) -> bytes:
    """A ClientHello record assembled by hand (GREASE, SCSV, max_fragment_length, record_size_limit)."""
    exts = b""
    if sni is not None:
        name = sni.encode()
        exts += _ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
    if versions is not None:
        vs = b"".join(struct.pack("!H", v) for v in versions)
        exts += _ext(43, bytes([len(vs)]) + vs)
    if mfl is not None:
        exts += _ext(1, bytes([mfl]))
    if rsl is not None:
        exts += _ext(28, struct.pack("!H", rsl))
    exts += _ext(0x1A1A, b"")  # a GREASE extension
    body = (struct.pack("!H", legacy) + b"\x11" * 32 + b"\x00" + struct.pack("!H", 2 * len(suites))
            + b"".join(struct.pack("!H", s) for s in suites) + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    handshake = bytes([1]) + len(body).to_bytes(3, "big") + body
    return bytes([22, 3, 1]) + struct.pack("!H", len(handshake)) + handshake


def refragment(record: bytes, at: int) -> bytes:
    """The same handshake message in two TLS records."""
    payload = record[5:]
    first, second = payload[:at], payload[at:]
    return (record[:3] + struct.pack("!H", len(first)) + first + record[:3] + struct.pack("!H", len(second)) + second)


def feed_whole(data: bytes):
    return HelloReader().feed(data)


def feed_bytewise(data: bytes):
    reader = HelloReader()
    hello = None
    for i in range(len(data)):
        hello = reader.feed(data[i:i + 1])
        if hello is not None:
            return hello
    return hello


FEEDS = {
    "whole": feed_whole,
    "byte-at-a-time": feed_bytewise,
    "two-records": lambda d: feed_whole(refragment(d, 40)),
    "trailing-bytes": lambda d: feed_whole(d + b"\x17\x03\x03\x00\x05hello"),
}


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
def test_an_openssl_tls13_hello(feed):
    hello = feed(openssl_hello("localhost", alpn=["x-amzn-mqtt-ca"]))
    assert hello.server_name == "localhost"
    assert hello.versions == (0x0304, 0x0303)
    assert hello.offers_legacy_versions is False
    assert hello.alpn == ("x-amzn-mqtt-ca",)
    assert 0x1301 in hello.cipher_suites and 0x00FF not in hello.cipher_suites
    assert hello.version_names() == ["TLS 1.3", "TLS 1.2"]


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
def test_a_hand_built_hello_with_grease_and_limits(feed):
    hello = feed(built_hello())
    assert hello.cipher_suites == (0xC02B, 0x1301)        # GREASE and the renegotiation SCSV dropped
    assert hello.versions == (0x0304, 0x0303)              # the GREASE version dropped
    assert hello.server_name == "dev.example"
    assert hello.max_fragment_length == 1024 and hello.record_size_limit == 4096
    assert 0x1A1A not in hello.extensions
    assert "max_fragment_length 1024" in hello.describe()


def test_versions_a_hello_cannot_state():
    tls12 = feed_whole(openssl_hello(maximum=ssl.TLSVersion.TLSv1_2))
    assert tls12.versions is None and tls12.legacy_version == 0x0303
    assert tls12.offers_legacy_versions is None            # a TLS 1.2 client's minimum is not in its hello
    assert tls12.version_names() == ["up to TLS 1.2"]
    legacy = feed_whole(openssl_hello(minimum=ssl.TLSVersion.TLSv1, ciphers="DEFAULT:@SECLEVEL=0"))
    assert legacy.offers_legacy_versions is True and 0x0301 in legacy.versions
    old = feed_whole(built_hello(versions=None, legacy=0x0302))
    assert old.offers_legacy_versions is True


def test_no_sni_for_an_address():
    assert feed_whole(openssl_hello("127.0.0.1")).server_name is None
    assert "no SNI" in feed_whole(built_hello(sni=None)).describe()


_SHORT_BODY = b"\x01\x00\x00\x03\x03\x03\x00"  # a ClientHello whose body ends inside its random
TRUNCATED = b"\x16\x03\x01" + struct.pack("!H", len(_SHORT_BODY)) + _SHORT_BODY


@pytest.mark.parametrize("data, words", [
    (encode(Connect("dev-1")), "plaintext MQTT"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "plaintext HTTP"),
    (b"\x16\x03\x03\x00\x00", "record of 0 bytes"),
    (b"\x16\x03\x03\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
    (b"\x16\x02\x00\x00\x04\x01\x00\x00\x00", "is not TLS"),
    (TRUNCATED, "cut short in random"),
], ids=["mqtt", "http", "empty-record", "server-hello", "ssl2-version", "truncated-body"])
def test_bytes_that_are_not_a_client_hello(data, words):
    reader = HelloReader()
    with pytest.raises(NotTLS, match=words):
        reader.feed(data)
    assert reader.done and reader.hello is None
    assert reader.feed(b"more") is None  # a failed reader stays failed and quiet


def test_suite_tables():
    assert AWS_IOT_RECOMMENDED <= AWS_IOT_SUPPORTED
    assert suite_name(0xC02B) == "ECDHE-ECDSA-AES128-GCM-SHA256" and suite_name(0xBEEF) == "0xBEEF"
    assert is_grease(0x0A0A) and is_grease(0xFAFA) and not is_grease(0x0A1A)


def test_record_scanner_across_any_split():
    stream = b"".join(bytes([23, 3, 3]) + struct.pack("!H", n) + b"x" * n for n in (16401, 3, 0, 300))
    for step in (1, 7, 5000, len(stream)):
        scanner = RecordScanner()
        records = []
        for i in range(0, len(stream), step):
            records += scanner.feed(stream[i:i + step])
        assert records == [(23, 16401), (23, 3), (23, 0), (23, 300)]
