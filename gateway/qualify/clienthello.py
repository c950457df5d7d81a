"""What a device's TLS ClientHello offers: versions, cipher suites, SNI, ALPN, fragment limits. Pure.

The qualification endpoint reads the device's first bytes twice: once into the TLS library, once into
:class:`HelloReader`, which reassembles the ClientHello handshake message from TLS records (it may span several)
and parses it. A TLS library never tells a server everything a client offered (OpenSSL shows the negotiated
suite, not the list), and the verdicts of the cipher-suite and legacy-version cases are about the offer.

    reader = HelloReader()
    hello = reader.feed(first_bytes)    # None until the whole ClientHello arrived; raises NotTLS for other bytes

:class:`RecordScanner` reads TLS record headers (type and length, always in the clear) of a byte stream: the
endpoint uses it on what it sends, to prove that records of the maximum size (16384 bytes of plaintext) went out.

Cipher-suite facts follow AWS IoT Core's developer guide ("Transport security in AWS IoT Core"): the suites of
its default security policy (IoTSecurityPolicy_TLS13_1_2_2022_10) are "supported"; the two the guide marks
"recommended" are ECDHE-ECDSA-AES128-GCM-SHA256 and ECDHE-RSA-AES128-GCM-SHA256.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "AWS_IOT_RECOMMENDED",
    "AWS_IOT_SUPPORTED",
    "ClientHello",
    "HelloReader",
    "NotTLS",
    "RecordScanner",
    "SIGNALLING_SUITES",
    "is_grease",
    "suite_name",
    "version_name",
]

_SUITES: dict[int, str] = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
    0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
    0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
    0xC023: "ECDHE-ECDSA-AES128-SHA256",
    0xC027: "ECDHE-RSA-AES128-SHA256",
    0xC024: "ECDHE-ECDSA-AES256-SHA384",
    0xC028: "ECDHE-RSA-AES256-SHA384",
    0xC009: "ECDHE-ECDSA-AES128-SHA",
    0xC013: "ECDHE-RSA-AES128-SHA",
    0xC00A: "ECDHE-ECDSA-AES256-SHA",
    0xC014: "ECDHE-RSA-AES256-SHA",
    0x009C: "AES128-GCM-SHA256",
    0x009D: "AES256-GCM-SHA384",
    0x003C: "AES128-SHA256",
    0x003D: "AES256-SHA256",
    0x002F: "AES128-SHA",
    0x0035: "AES256-SHA",
    0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305",
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
    0xCCAA: "DHE-RSA-CHACHA20-POLY1305",
    0x009E: "DHE-RSA-AES128-GCM-SHA256",
    0x009F: "DHE-RSA-AES256-GCM-SHA384",
    0x0067: "DHE-RSA-AES128-SHA256",
    0x006B: "DHE-RSA-AES256-SHA256",
    0x0033: "DHE-RSA-AES128-SHA",
    0x0039: "DHE-RSA-AES256-SHA",
    0xC0AC: "ECDHE-ECDSA-AES128-CCM",
    0xC0AD: "ECDHE-ECDSA-AES256-CCM",
    0xC0AE: "ECDHE-ECDSA-AES128-CCM8",
    0xC0AF: "ECDHE-ECDSA-AES256-CCM8",
    0xC09C: "AES128-CCM",
    0xC09D: "AES256-CCM",
    0xC0A0: "AES128-CCM8",
    0xC0A1: "AES256-CCM8",
    0x000A: "DES-CBC3-SHA",
    0xC008: "ECDHE-ECDSA-DES-CBC3-SHA",
    0xC012: "ECDHE-RSA-DES-CBC3-SHA",
    0x0004: "RC4-MD5",
    0x0005: "RC4-SHA",
    0x00A8: "PSK-AES128-GCM-SHA256",
    0x00AE: "PSK-AES128-CBC-SHA256",
    0x00FF: "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
    0x5600: "TLS_FALLBACK_SCSV",
}

#: Code points that signal something and are not cipher suites (RFC 5746, RFC 7507).
SIGNALLING_SUITES = frozenset({0x00FF, 0x5600})

#: AWS IoT Core's default security policy: TLS 1.3 suites and the TLS 1.2 suites it lists.
AWS_IOT_SUPPORTED = frozenset({
    0x1301, 0x1302, 0x1303,
    0xC02B, 0xC02F, 0xC023, 0xC027, 0xC009, 0xC013, 0xC02C, 0xC030, 0xC024, 0xC028, 0xC014, 0xC00A,
    0x009C, 0x003C, 0x002F, 0x009D, 0x003D, 0x0035,
})
#: The suites AWS IoT Core's developer guide marks "recommended".
AWS_IOT_RECOMMENDED = frozenset({0xC02B, 0xC02F})

_VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_MAX_FRAGMENT_LENGTH = 1
_EXT_SUPPORTED_GROUPS = 10
_EXT_ALPN = 16
_EXT_RECORD_SIZE_LIMIT = 28
_EXT_SUPPORTED_VERSIONS = 43
_MAX_HELLO = 64 * 1024  # a ClientHello larger than this is refused (real ones are below 2 KiB)


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values (0x0A0A, 0x1A1A, ...): placeholders a client sends to keep servers tolerant."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def suite_name(code: int) -> str:
    return _SUITES.get(code, f"0x{code:04X}")


def version_name(code: int) -> str:
    return _VERSIONS.get(code, f"0x{code:04X}")


class NotTLS(ValueError):
    """The bytes are not a TLS ClientHello; the message says what they look like."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClientHello:
    """What the device offered. ``versions`` comes from the supported_versions extension (TLS 1.3 clients);
    without it the client offers every version up to ``legacy_version`` and says nothing of its minimum
    (``versions`` is then None)."""

    legacy_version: int
    versions: tuple[int, ...] | None
    cipher_suites: tuple[int, ...]       # as offered, GREASE and signalling values removed
    server_name: str | None
    alpn: tuple[str, ...]
    max_fragment_length: int | None      # bytes (RFC 6066), None when not asked for
    record_size_limit: int | None        # RFC 8449
    groups: tuple[int, ...]
    extensions: tuple[int, ...]
    size: int                            # bytes of the handshake message

    @property
    def highest_version(self) -> int:
        return max(self.versions) if self.versions else self.legacy_version

    @property
    def offers_legacy_versions(self) -> bool | None:
        """True when TLS 1.0/1.1 (or SSL 3.0) is offered, False when it is not, None when the hello cannot say
        (no supported_versions: a TLS 1.2 client's minimum is not in its hello)."""
        if self.versions is not None:
            return any(v < 0x0303 for v in self.versions)
        if self.legacy_version < 0x0303:
            return True
        return None

    def suite_names(self) -> list[str]:
        return [suite_name(c) for c in self.cipher_suites]

    def version_names(self) -> list[str]:
        if self.versions is not None:
            return [version_name(v) for v in self.versions]
        return [f"up to {version_name(self.legacy_version)}"]

    def describe(self) -> str:
        parts = [", ".join(self.version_names()), f"{len(self.cipher_suites)} cipher suites",
                 f"SNI {self.server_name!r}" if self.server_name else "no SNI"]
        if self.alpn:
            parts.append("ALPN " + ",".join(self.alpn))
        if self.max_fragment_length:
            parts.append(f"max_fragment_length {self.max_fragment_length}")
        if self.record_size_limit:
            parts.append(f"record_size_limit {self.record_size_limit}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {
            "versions": self.version_names(),
            "cipher_suites": self.suite_names(),
            "server_name": self.server_name,
            "alpn": list(self.alpn),
            "max_fragment_length": self.max_fragment_length,
            "record_size_limit": self.record_size_limit,
            "size": self.size,
        }


class _Cursor:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise NotTLS(f"ClientHello cut short in {what}")
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def vector(self, length_bytes: int, what: str) -> _Cursor:
        n = int.from_bytes(self.take(length_bytes, what), "big")
        start = self.pos
        self.take(n, what)
        return _Cursor(self.buf, start, start + n)

    @property
    def left(self) -> int:
        return self.end - self.pos


def _describe_start(data: bytes) -> str:
    b0 = data[0]
    if b0 == 0x10:
        return "plaintext MQTT (a CONNECT packet) on the TLS port"
    if data[:4] in (b"GET ", b"POST", b"HEAD", b"PUT "):
        return "plaintext HTTP on the TLS port"
    if b0 == 0x80 or b0 == 0x16:
        return "an SSL 2.0 or malformed TLS hello"
    return f"not TLS (first byte 0x{b0:02X})"


def parse_client_hello(body: bytes) -> ClientHello:
    """Parse the body of a ClientHello handshake message (after its 4-byte header)."""
    c = _Cursor(body)
    legacy_version = c.u16("legacy_version")
    c.take(32, "random")
    c.vector(1, "session_id")
    suites_raw = c.vector(2, "cipher_suites")
    if suites_raw.left % 2:
        raise NotTLS("ClientHello cipher_suites has an odd length")
    suites = [c for c in _codes(suites_raw, "cipher_suites") if c not in SIGNALLING_SUITES]
    c.vector(1, "compression_methods")
    server_name = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] | None = None
    mfl = None
    rsl = None
    groups: tuple[int, ...] = ()
    extensions = []
    if c.left:
        exts = c.vector(2, "extensions")
        while exts.left:
            ext_type = exts.u16("extension type")
            data = exts.vector(2, f"extension {ext_type}")
            if not is_grease(ext_type):
                extensions.append(ext_type)
            if ext_type == _EXT_SERVER_NAME and data.left:
                names = data.vector(2, "server_name list")
                while names.left:
                    kind = names.u8("server_name type")
                    raw = _read_vector(names, 2, "server_name")
                    if kind == 0 and server_name is None:
                        server_name = raw.decode("ascii", "replace")
            elif ext_type == _EXT_ALPN:
                protos = data.vector(2, "ALPN list")
                found = []
                while protos.left:
                    found.append(_read_vector(protos, 1, "ALPN protocol").decode("ascii", "replace"))
                alpn = tuple(found)
            elif ext_type == _EXT_SUPPORTED_VERSIONS:
                versions = _codes(data.vector(1, "supported_versions"), "supported_versions")
            elif ext_type == _EXT_MAX_FRAGMENT_LENGTH and data.left:
                code = data.u8("max_fragment_length")
                mfl = {1: 512, 2: 1024, 3: 2048, 4: 4096}.get(code)
            elif ext_type == _EXT_RECORD_SIZE_LIMIT and data.left >= 2:
                rsl = data.u16("record_size_limit")
            elif ext_type == _EXT_SUPPORTED_GROUPS:
                groups = _codes(data.vector(2, "supported_groups"), "supported_groups")
    return ClientHello(legacy_version, versions, tuple(suites), server_name, alpn, mfl, rsl, groups,
                       tuple(extensions), len(body) + 4)


def _codes(listed: _Cursor, what: str) -> tuple[int, ...]:
    """A list of 16-bit code points without its GREASE values."""
    found = []
    while listed.left >= 2:
        code = listed.u16(what)
        if not is_grease(code):
            found.append(code)
    return tuple(found)


def _read_vector(cursor: _Cursor, length_bytes: int, what: str) -> bytes:
    n = int.from_bytes(cursor.take(length_bytes, what), "big")
    return cursor.take(n, what)


class HelloReader:
    """Reassembles the first handshake message of a connection from TLS records and parses it."""

    __slots__ = ("_buffer", "_handshake", "hello", "error")

    def __init__(self) -> None:
        self._buffer = bytearray()     # record bytes not yet consumed
        self._handshake = bytearray()  # handshake bytes reassembled from records
        self.hello: ClientHello | None = None
        self.error: NotTLS | None = None

    @property
    def done(self) -> bool:
        return self.hello is not None or self.error is not None

    def feed(self, data: bytes) -> ClientHello | None:
        """The ClientHello once complete (then further bytes are ignored); raises NotTLS once for other bytes."""
        if self.done:
            return self.hello
        self._buffer += data
        try:
            return self._parse()
        except NotTLS as exc:
            self.error = exc
            raise

    def _parse(self) -> ClientHello | None:
        buf = self._buffer
        while len(buf) >= 5:
            if buf[0] != _HANDSHAKE:
                raise NotTLS(f"the first record is not a TLS handshake: {_describe_start(bytes(buf[:8]))}")
            if buf[1] != 0x03:
                raise NotTLS(f"record version 0x{buf[1]:02X}{buf[2]:02X} is not TLS: {_describe_start(bytes(buf[:8]))}")
            length = buf[3] << 8 | buf[4]
            if length == 0 or length > 16384 + 2048:
                raise NotTLS(f"TLS record of {length} bytes in a ClientHello")
            if len(buf) < 5 + length:
                return None
            self._handshake += buf[5:5 + length]
            del buf[:5 + length]
            hs = self._handshake
            if len(hs) >= 4:
                if hs[0] != _CLIENT_HELLO:
                    raise NotTLS(f"the first handshake message is type {hs[0]}, not a ClientHello")
                size = hs[1] << 16 | hs[2] << 8 | hs[3]
                if size > _MAX_HELLO:
                    raise NotTLS(f"ClientHello of {size} bytes")
                if len(hs) >= 4 + size:
                    self.hello = parse_client_hello(bytes(hs[4:4 + size]))
                    return self.hello
        if len(buf) >= 1 and buf[0] != _HANDSHAKE:
            raise NotTLS(_describe_start(bytes(buf[:8])))
        return None


class RecordScanner:
    """TLS record headers of one direction of a connection: ``feed(bytes)`` returns the (type, length) of every
    record completed by those bytes. Record headers are plaintext in every TLS version."""

    __slots__ = ("_need", "_header")

    def __init__(self) -> None:
        self._need = 0           # body bytes of the current record still to skip
        self._header = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        records = []
        view = memoryview(data)
        i = 0
        n = len(view)
        while i < n:
            if self._need:
                step = min(self._need, n - i)
                self._need -= step
                i += step
                continue
            take = min(5 - len(self._header), n - i)
            self._header += view[i:i + take]
            i += take
            if len(self._header) == 5:
                length = self._header[3] << 8 | self._header[4]
                records.append((self._header[0], length))
                self._need = length
                self._header.clear()
        return records
