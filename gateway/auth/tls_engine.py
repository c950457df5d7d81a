"""The gateway's TLS engine on pyOpenSSL: one ``SSL.Connection`` over memory BIOs, driven from a plain TCP
protocol, for the device listeners (``OpenSSLTLSAcceptor``) and for the gateway's own connections to the broker
(``OpenSSLTLSConnector``: its identity, the broker's chain and name checked, the broker's session resumed).

Why: the stdlib ``ssl`` module here links the system's OpenSSL 3.0, whose server handshakes cost much more CPU
than those of the OpenSSL the ``cryptography`` wheel bundles (which pyOpenSSL uses), and uvloop's TLS transport
keeps a 256 KiB read buffer per connection. Here the TCP side is a plain ``asyncio.Protocol`` (uvloop reads
plain TCP into one loop-wide buffer) and each connection owns only its SSL object, two memory BIOs and one
slotted Python object, which is both the TCP protocol and the transport the session writes to.

Verification is the stdlib engine's, check for check (``gateway.auth.tls``): TLS 1.2 minimum, the same TLS 1.2
cipher suites, no renegotiation, no compression; a client certificate is REQUIRED and its chain verified by
OpenSSL against every CA in the registry (whatever the CA's status: the registry decides after the handshake,
per connection, as with stdlib); the device listener negotiates ``x-amzn-mqtt-ca`` when offered and goes on
without ALPN otherwise; the token listener asks for no certificate and negotiates ``mqtt`` / ``http/1.1``.
There is no switch to turn verification off. The context is rebuilt when the CA set changes (a new SSL_CTX:
new session-ticket keys, an empty session cache, so nothing verified under the old CA set is resumed).

Unlike the stdlib path, a refused handshake sends its TLS alert (``unknown_ca``, ``certificate_expired``,
``certificate_required``, ...) before the connection is closed: the bytes OpenSSL queued are flushed first.

Memory choices: ``SSL_MODE_RELEASE_BUFFERS`` (OpenSSL frees a connection's record buffers while they are empty,
i.e. while it is idle); records go through the BIOs in slices of a few KiB because a memory BIO never shrinks
below the most it ever held; plaintext is read one TLS record at a time and handed to the protocol in batches of
up to 64 KiB (one call for the many small records of a busy peer).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL, crypto

from gateway.auth.tls import HandshakeFailed, PeerTLS, classify_reason

__all__ = ["OpenSSLTLSAcceptor", "OpenSSLTLSConnector", "TLSClientTransport", "TLSServerTransport", "client_context",
           "server_context"]

# CPython's server default for TLS 1.2 (Lib/ssl.py: PY_SSL_DEFAULT_CIPHER_STRING): forward secrecy, AEAD or
# SHA-2 MACs only. TLS 1.3 suites are OpenSSL's defaults in both engines.
TLS12_CIPHERS = b"@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
SESSION_ID_CONTEXT = b"iotgate"
_SLICE_IN = 4096    # ciphertext fed to the incoming BIO at a time
_SLICE_OUT = 4096   # plaintext encrypted at a time (the outgoing BIO holds about this much at most)
_READ_SIZE = 16384  # one TLS record's plaintext
_DELIVER_AT = 65536  # plaintext gathered from one read before it goes to the protocol (one record more at most)
_BIO_READ = 65536


def server_context(cert: Path, key: Path, ca_pems: Sequence[str], *, client_certificates: bool = True,
                   alpn: Sequence[str] = ()) -> SSL.Context:
    """The device-facing pyOpenSSL context (see ``gateway.auth.tls.server_context`` for the stdlib one)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_ALL | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_COMPRESSION)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_cipher_list(TLS12_CIPHERS)
    ctx.set_session_id(SESSION_ID_CONTEXT)  # required for stateful resumption with client certificates
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    ctx.check_privatekey()
    if client_certificates:
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)  # OpenSSL's own chain verification
        store = ctx.get_cert_store()
        for pem in ca_pems:
            store.add_cert(crypto.X509.from_cryptography(x509.load_pem_x509_certificate(pem.encode())))
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    if alpn:
        ctx.set_alpn_select_callback(_alpn_selector(tuple(p.encode() for p in alpn)))
    return ctx


def _alpn_selector(ours: tuple[bytes, ...]):
    # The server's preference order (as SSL_select_next_proto with the server's list first, which stdlib does);
    # no overlap: the handshake goes on without ALPN.
    def select(_conn, offered: list[bytes]):
        for proto in ours:
            if proto in offered:
                return proto
        return SSL.NO_OVERLAPPING_PROTOCOLS
    return select


def _reason(exc: SSL.Error) -> str:
    """OpenSSL's reason of the first queued error, as its macro name (``CERTIFICATE_VERIFY_FAILED``)."""
    errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    for entry in errors:
        if isinstance(entry, tuple) and len(entry) == 3 and entry[2]:
            return str(entry[2]).upper().replace(" ", "_")
    return ""


def _verify_message(conn: SSL.Connection) -> str | None:
    """X509_verify_cert_error_string of the failed chain verification (what stdlib calls verify_message).
    pyOpenSSL has no public accessor for SSL_get_verify_result; this reads it through the bindings pyOpenSSL
    itself uses, on the refusal path only."""
    try:
        from OpenSSL._util import ffi, lib

        code = lib.SSL_get_verify_result(conn._ssl)
        return ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace") if code else None
    except Exception:  # noqa: BLE001 - a binding that moved: the generic reason still refuses the certificate
        return None


def _classify(exc: BaseException, conn: SSL.Connection, peer: str = "client") -> HandshakeFailed:
    if isinstance(exc, SSL.SysCallError):
        return HandshakeFailed("handshake_aborted", "connection closed during the TLS handshake")
    if isinstance(exc, SSL.Error):
        reason = _reason(exc)
        verify = _verify_message(conn) if reason == "CERTIFICATE_VERIFY_FAILED" else None
        return classify_reason(reason or str(exc), verify, peer)
    return HandshakeFailed("handshake_failed", f"TLS handshake failed: {type(exc).__name__}: {exc}")


class TLSServerTransport(asyncio.Protocol, asyncio.Transport):
    """One device connection: the TCP protocol below, the transport the session writes plaintext to above."""

    __slots__ = ("_app", "_closing", "_factory", "_ssl", "_tcp", "_waiter")
    _PEER = "client"  # whose certificate a refused handshake refused

    def __init__(self, conn: SSL.Connection, protocol_factory: Callable[[], asyncio.Protocol],
                 waiter: asyncio.Future) -> None:
        self._ssl = conn
        self._factory = protocol_factory
        self._waiter: asyncio.Future | None = waiter  # set while the handshake runs
        self._tcp: asyncio.Transport | None = None
        self._app: asyncio.Protocol | None = None
        self._closing = False

    # ---------------------------------------------------------------- the TCP protocol

    def connection_made(self, transport) -> None:
        self._tcp = transport

    def data_received(self, data: bytes) -> None:
        ssl_conn = self._ssl
        if len(data) <= _SLICE_IN:
            ssl_conn.bio_write(data)
            self._handshake() if self._waiter is not None else self._read()
            return
        view = memoryview(data)
        for start in range(0, len(data), _SLICE_IN):
            if self._tcp is None or self._tcp.is_closing():
                return
            ssl_conn.bio_write(view[start:start + _SLICE_IN])
            self._handshake() if self._waiter is not None else self._read()

    def eof_received(self) -> bool:
        if self._waiter is not None:
            self._fail(HandshakeFailed("handshake_aborted", "connection closed during the TLS handshake"))
            return False
        app = self._app
        return bool(app.eof_received()) if app is not None else False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closing = True
        if self._waiter is not None:
            self._fail(HandshakeFailed("handshake_aborted", "connection closed during the TLS handshake"))
            return
        app, self._app = self._app, None
        if app is not None:
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # ---------------------------------------------------------------- TLS

    def _handshake(self) -> None:
        conn = self._ssl
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as exc:
            self._flush()  # the alert OpenSSL queued goes out before the close
            self._fail(_classify(exc, conn, self._PEER))
            return
        self._flush()
        try:
            peer = self._established()
        except HandshakeFailed as exc:
            self._fail(exc)
            return
        waiter, self._waiter = self._waiter, None
        self._factory, factory = None, self._factory
        if waiter.done():  # the deadline passed in the same loop iteration
            return
        app = self._app = factory()
        app.connection_made(self)
        waiter.set_result(peer)
        self._read()  # application data (or the client's close) that came with its last flight

    def _established(self) -> PeerTLS:
        """What the handshake established (the device's certificate, SNI, version, cipher, ALPN)."""
        conn = self._ssl
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) if (cert := conn.get_peer_certificate()) else b""
        sni = conn.get_servername()
        alpn = conn.get_alpn_proto_negotiated()
        return PeerTLS(der, sni.decode("ascii", "replace") if sni else None, conn.get_protocol_version_name(),
                       conn.get_cipher_name(), alpn.decode("ascii", "replace") if alpn else None)

    def _fail(self, error: HandshakeFailed) -> None:
        waiter, self._waiter = self._waiter, None
        self._closing = True
        tcp = self._tcp
        if tcp is not None and not tcp.is_closing():
            tcp.close()  # after the alert in its buffer
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def handshake_timed_out(self) -> None:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            self._closing = True
            if self._tcp is not None:
                self._tcp.abort()
            if not waiter.done():
                waiter.set_exception(HandshakeFailed("handshake_timeout",
                                                     "TLS handshake did not complete within the deadline"))

    def _read(self) -> bool:
        """Decrypt what came and give it to the protocol in one call per batch (a peer that sends one small record
        per MQTT packet would otherwise cost one session step and one write back per packet); True when some
        application data was delivered."""
        conn = self._ssl
        chunks: list[bytes] = []
        size = 0
        delivered = False
        ended = None
        try:
            while self._app is not None and not self._closing:
                chunk = conn.recv(_READ_SIZE)
                chunks.append(chunk)
                size += len(chunk)
                if size >= _DELIVER_AT:
                    self._deliver(chunks)
                    delivered, chunks, size = True, [], 0
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:  # the peer's close_notify: what came before it is delivered, then we close
            ended = self.close
        except SSL.Error:  # a bad record or the peer's alert: nothing more can be read
            ended = self.abort
        if chunks:
            self._deliver(chunks)
            delivered = True
        if ended is not None:
            self._flush()
            ended()
            return delivered
        self._flush()
        return delivered

    def _deliver(self, chunks: list[bytes]) -> None:
        app = self._app
        if app is not None and not self._closing:
            app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _flush(self) -> None:
        tcp = self._tcp
        if tcp is None or tcp.is_closing():
            return
        conn = self._ssl
        while True:
            try:
                data = conn.bio_read(_BIO_READ)
            except SSL.WantReadError:
                return
            tcp.write(data)
            if len(data) < _BIO_READ:
                return

    # ---------------------------------------------------------------- the transport the session sees

    def write(self, data) -> None:
        if self._closing or self._waiter is not None:
            return
        conn = self._ssl
        view = memoryview(data)
        try:
            while view:
                sent = conn.send(view[:_SLICE_OUT])
                view = view[sent:]
                if view:
                    self._flush()
        except SSL.Error:
            self.abort()
            return
        self._flush()

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            self._ssl.shutdown()  # queues close_notify; the device's own is not awaited
        except SSL.Error:
            pass
        self._flush()
        if self._tcp is not None:
            self._tcp.close()

    def abort(self) -> None:
        self._closing = True
        if self._tcp is not None:
            self._tcp.abort()

    def is_closing(self) -> bool:
        return self._closing or self._tcp is None or self._tcp.is_closing()

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        if self._tcp is not None and not self._tcp.is_closing():
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._tcp is not None and not self._tcp.is_closing():
            self._tcp.resume_reading()

    def is_reading(self) -> bool:
        return self._tcp is not None and self._tcp.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._tcp.get_write_buffer_size() if self._tcp is not None else 0

    def get_write_buffer_limits(self):
        return self._tcp.get_write_buffer_limits()

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            return self._ssl
        return self._tcp.get_extra_info(name, default) if self._tcp is not None else default

    def set_protocol(self, protocol) -> None:
        self._app = protocol

    def get_protocol(self):
        return self._app


class OpenSSLTLSAcceptor:
    """The pyOpenSSL engine behind the ``TLSAcceptor`` seam (``gateway.auth.tls``)."""

    name = "pyopenssl"

    def __init__(self, cert: Path, key: Path, ca_pems: Sequence[str] = (), *, handshake_timeout: float = 10.0,
                 client_certificates: bool = True, alpn: Sequence[str] = ()) -> None:
        self.cert = Path(cert)
        self.key = Path(key)
        self.handshake_timeout = handshake_timeout
        self.client_certificates = client_certificates
        self.alpn = tuple(alpn)
        self._cas: tuple[str, ...] = tuple(ca_pems) if client_certificates else ()
        self.context = self._context(self._cas)
        self.rebuilds = 0

    def _context(self, cas: tuple[str, ...]) -> SSL.Context:
        return server_context(self.cert, self.key, cas, client_certificates=self.client_certificates,
                              alpn=self.alpn)

    def set_trust(self, ca_pems: Sequence[str]) -> bool:
        cas = tuple(ca_pems)
        if not self.client_certificates or cas == self._cas:
            return False
        self.context = self._context(cas)
        self._cas = cas
        self.rebuilds += 1
        return True

    async def accept(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol]
                     ) -> tuple[asyncio.Transport, asyncio.Protocol, PeerTLS]:
        loop = asyncio.get_running_loop()
        conn = SSL.Connection(self.context, None)
        conn.set_accept_state()
        waiter = loop.create_future()
        tls = TLSServerTransport(conn, protocol_factory, waiter)
        try:
            await loop.connect_accepted_socket(lambda: tls, sock)
        except asyncio.CancelledError:
            sock.close()
            raise
        except OSError:
            sock.close()
            raise HandshakeFailed("handshake_aborted", "connection closed during the TLS handshake") from None
        timer = loop.call_later(self.handshake_timeout, tls.handshake_timed_out)
        try:
            peer = await waiter
        except asyncio.CancelledError:
            tls.abort()
            raise
        finally:
            timer.cancel()
        if not peer.der and self.client_certificates:  # VERIFY_FAIL_IF_NO_PEER_CERT makes this unreachable
            tls.abort()
            raise HandshakeFailed("no_client_certificate", "no client certificate presented")
        return tls, tls.get_protocol(), peer


# --------------------------------------------------------------------------------------------- the client side

def client_context(cert: Path, key: Path, cafile: Path) -> SSL.Context:
    """The gateway's upstream client context: its own identity, the broker's chain verified against ``cafile``
    (the broker's name is checked per connection, ``TLSClientTransport``). Sessions are kept for resumption."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_ALL | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_cipher_list(TLS12_CIPHERS)
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    ctx.check_privatekey()
    ctx.load_verify_locations(str(cafile))
    ctx.set_verify(SSL.VERIFY_PEER)  # OpenSSL's chain verification; a failure ends the handshake with its alert
    ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
    return ctx


def certificate_matches_host(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 as the stdlib checks it: an IP literal against the IP addresses of subjectAltName, a name against
    its DNS names (case-insensitive, a wildcard only as the whole leftmost label); no subjectAltName, no match
    (the subject's CN is never used)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return address in names.get_values_for_type(x509.IPAddress)
    wanted = host.rstrip(".").lower()
    first, _, parent = wanted.partition(".")
    for name in names.get_values_for_type(x509.DNSName):
        name = name.rstrip(".").lower()
        if name == wanted:
            return True
        if name.startswith("*.") and "*" not in name[2:] and first and parent == name[2:] and "." in parent:
            return True
    return False


class SessionStore:
    """The newest resumable session of one upstream: the gateway's next connections resume it (TLS 1.3 tickets
    or TLS 1.2 session ids), so the broker's certificate is verified once per ticket, not once per device."""

    __slots__ = ("session", "resumed", "full")

    def __init__(self) -> None:
        self.session: SSL.Session | None = None
        self.resumed = 0  # handshakes that resumed a session
        self.full = 0     # full handshakes


def _session_reused(conn: SSL.Connection) -> bool:
    """SSL_session_reused: pyOpenSSL has no accessor; read through its own bindings, for the count only."""
    try:
        from OpenSSL._util import lib

        return bool(lib.SSL_session_reused(conn._ssl))
    except Exception:  # noqa: BLE001 - a binding that moved: counted as a full handshake
        return False


class TLSClientTransport(TLSServerTransport):
    """The gateway's end of one upstream connection: the same memory-BIO transport, as a client that checks the
    broker's name once OpenSSL has verified its chain, and saves the session once the broker has spoken (a TLS 1.3
    ticket arrives after the handshake, before the broker's first application data)."""

    __slots__ = ("_host", "_store")
    _PEER = "the broker's"

    def __init__(self, conn: SSL.Connection, protocol_factory: Callable[[], asyncio.Protocol],
                 waiter: asyncio.Future, host: str, store: SessionStore | None) -> None:
        super().__init__(conn, protocol_factory, waiter)
        self._host = host
        self._store = store

    def _established(self) -> PeerTLS:
        cert = self._ssl.get_peer_certificate()
        if cert is None or not certificate_matches_host(cert.to_cryptography(), self._host):
            self.abort()
            raise HandshakeFailed("hostname_mismatch", f"the broker's certificate is not valid for {self._host!r}")
        store = self._store
        if store is not None:
            if _session_reused(self._ssl):
                store.resumed += 1
            else:
                store.full += 1
        return super()._established()

    def _read(self) -> bool:
        delivered = super()._read()
        if delivered and self._store is not None:
            session = self._ssl.get_session()
            if session is not None:
                self._store.session = session
            self._store = None  # once per connection
        return delivered


class OpenSSLTLSConnector:
    """Opens TLS client connections over pyOpenSSL memory BIOs (the gateway's upstream with ``tls_engine =
    "pyopenssl"``): TCP, the handshake with the stored session offered, the name check, then ``protocol_factory``'s
    protocol on the returned transport."""

    def __init__(self, cert: Path, key: Path, cafile: Path, *, resume: bool = True) -> None:
        self.context = client_context(cert, key, cafile)
        self.sessions = SessionStore() if resume else None

    async def connect(self, host: str, port: int, protocol_factory: Callable[[], asyncio.Protocol], *,
                      server_name: str | None = None) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        name = server_name or host
        conn = SSL.Connection(self.context, None)
        conn.set_connect_state()
        try:
            ipaddress.ip_address(name)
        except ValueError:
            conn.set_tlsext_host_name(name.encode("idna"))  # SNI carries names, never addresses (RFC 6066)
        store = self.sessions
        if store is not None and store.session is not None:
            conn.set_session(store.session)
        waiter = loop.create_future()
        tls = TLSClientTransport(conn, protocol_factory, waiter, name, store)
        await loop.create_connection(lambda: tls, host, port)
        tls._handshake()  # the ClientHello
        try:
            await waiter
        except BaseException:
            tls.abort()
            raise
        return tls
