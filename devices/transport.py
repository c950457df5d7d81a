"""The TLS link of a device: one small interface, two implementations.

    link = await transport.connect(endpoint, tls, handler, timings)   # TCP + TLS; handler.on_data/on_close
    link.write(data); link.close(); link.abort()

* ``stdlib`` -- ``loop.create_connection(ssl=context)``: the event loop's own TLS transport (uvloop's
  SSLProtocol under uvloop). One ``SSLContext`` per identity, built once and reused across reconnects.
* ``membio`` -- ``ssl.MemoryBIO`` + ``SSLObject`` driven from a plain TCP protocol. It exists for memory: an
  idle device costs half as much (bench/devices_idle_bench.py, 10,000 idle mTLS devices in one process against
  Mosquitto: ~80 KB RSS per device with ``stdlib``, ~38 KB with ``membio``), at the same connect rate.

Where the memory goes, and what ``membio`` does about it (OpenSSL 3.0, CPython 3.11, uvloop; malloc'd bytes):

* A per-identity ``SSLContext`` costs ~30 KB (13 KB bare SSL_CTX, 12 KB for the certificate chain and key,
  4 KB for the CA store), and a live SSL connection pins its SSL_CTX (both ``SSL.ctx`` and ``SSL.session_ctx``
  hold a reference), so caching it or not makes no difference while connected. ``membio`` therefore creates
  the SSL object from one shared context that has no certificate and no CA (the *session context*), *lends*
  the identity's context to it for the handshake only (``SSLObject.context = identity``: OpenSSL's
  ``SSL_set_SSL_CTX`` copies the certificate, key and chain into the connection and verification uses that
  context's CA store), then points it back at the session context. The identity's SSL_CTX is then freed:
  ~30 KB less per device. Rebuilding it for the next connect costs ~1-1.7 ms of CPU (OpenSSL 3.0's PEM and key
  decoding), measured against ~1.1 ms for the client's handshake itself; ``DeviceTLS(keep=True)`` keeps it
  instead, for reconnect storms where CPU matters more than memory.
* TLS 1.3 servers send session tickets after the handshake; OpenSSL allocates its 17 KB write buffer while
  handling them and, with ``SSL_MODE_RELEASE_BUFFERS`` (CPython sets it), frees it only after the next write.
  ``membio`` issues an empty ``SSLObject.write(b"")`` after reading, which frees it at once (no bytes are sent).
* A MemoryBIO never shrinks, so records go through both BIOs in slices of 1-2 KB: a large publish does not
  leave its size behind in every device that saw it.
* No per-connection read buffer: uvloop reads plain TCP into one loop-wide buffer, whereas its TLS transport
  keeps a 256 KiB buffer per connection (its touched pages stay resident).

What remains per ``membio`` device is ~35 KB inside OpenSSL (the SSL object and record layer, the session with
the server's certificate chain, the verified chain, cipher state) and ~4 KB of Python and uvloop objects.

Verification is never optional: both transports verify the server's chain against the identity's CA file and
the server's name (``check_hostname``) with TLS 1.2 as the minimum; there is no parameter to turn that off.
The session context holds no CA at all, so anything verified against it fails closed. No TLS session is ever
resumed across devices: client-side session caching stays off and no session is passed in, so every
connection authenticates with its own certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import os
import socket
import ssl
from typing import Protocol

from devices.identity import DeviceIdentity
from devices.limits import bind_source

__all__ = [
    "TRANSPORTS",
    "DeviceTLS",
    "Endpoint",
    "Link",
    "LinkHandler",
    "MemoryBIOLink",
    "LinkTimings",
    "MemoryBIOTransport",
    "StdlibTransport",
    "Transport",
    "TransportError",
    "get_transport",
    "identity_context",
    "session_context",
]

#: ALPN protocol AWS IoT Core expects for X.509 client certificates on port 443.
AWS_MTLS_ALPN = "x-amzn-mqtt-ca"
# One TLS record's plaintext at most: SSLObject.read() allocates the size asked for, then shrinks the result.
_READ_SIZE = 16 * 1024
# A MemoryBIO keeps the capacity of the most it ever held (OpenSSL's BUF_MEM only grows), so bytes go through
# the BIOs in slices: one 128 KiB publish would otherwise pin ~170 KB per device for the rest of its life.
_SLICE_IN = 1024
_SLICE_OUT = 2048


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """Where devices connect: host and port, the name the server's certificate must carry (also sent as SNI),
    and ALPN protocols (AWS IoT Core on 443 wants ``x-amzn-mqtt-ca``)."""

    host: str
    port: int = 8883
    server_name: str | None = None
    alpn: tuple[str, ...] = ()

    @property
    def sni(self) -> str:
        return self.server_name or self.host

    @classmethod
    def aws(cls, endpoint: str, port: int = 8883) -> Endpoint:
        """An AWS IoT Core data endpoint (``xxxx-ats.iot.<region>.amazonaws.com``) on 8883 or 443."""
        return cls(endpoint, port, endpoint, (AWS_MTLS_ALPN,) if port == 443 else ())


class TransportError(Exception):
    """A connection attempt failed below MQTT. ``stage`` is ``identity`` (the device's own files), ``dns``,
    ``tcp`` or ``tls``; ``reason`` a short code (``ECONNREFUSED``, ``CERTIFICATE_VERIFY_FAILED``, ...)."""

    def __init__(self, stage: str, reason: str, detail: str = "") -> None:
        self.stage = stage
        self.reason = reason
        self.detail = detail
        super().__init__(f"{stage}: {reason}" + (f" ({detail})" if detail else ""))


@dataclasses.dataclass(slots=True)
class LinkTimings:
    """Seconds spent per stage of one connection attempt; ``None`` for a stage not completed."""

    dns: float | None = None
    tcp: float | None = None
    tls: float | None = None

    @property
    def stage(self) -> str:
        """The stage an unfinished attempt was in."""
        if self.dns is None:
            return "dns"
        if self.tcp is None:
            return "tcp"
        if self.tls is None:
            return "tls"
        return "mqtt"


class LinkHandler(Protocol):
    """What a link reports to (the device client)."""

    def on_data(self, data: bytes) -> None: ...

    def on_close(self, exc: BaseException | None) -> None: ...


class Link(Protocol):
    """An established TLS connection. ``on_close`` is reported exactly once, also after ``close``/``abort``."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...          # TLS close_notify, then FIN once written

    def abort(self) -> None: ...          # drop at once (RST): what a crash or a pulled cable looks like

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    @property
    def tls_version(self) -> str | None: ...


# --------------------------------------------------------------------------------------------- contexts

def identity_context(identity: DeviceIdentity, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A client context for one identity: its certificate chain and key, its CA for the server, TLS >= 1.2,
    certificate and host name verification on (PROTOCOL_TLS_CLIENT's defaults, never turned off)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=identity.ca_file)
    ctx.load_cert_chain(identity.cert_file, identity.key_file)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


_session_contexts: dict[tuple[str, ...], ssl.SSLContext] = {}


def session_context(alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """The shared context ``membio`` connections are created from and return to after their handshake: the
    connection policy (TLS >= 1.2, CERT_REQUIRED, check_hostname, ALPN) without any certificate, key or CA."""
    ctx = _session_contexts.get(alpn)
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        _session_contexts[alpn] = ctx
    return ctx


class DeviceTLS:
    """One device's TLS material: its identity, ALPN, and whether its ``SSLContext`` is kept between connects
    (``keep``; otherwise it is built for each connect and dropped after the handshake)."""

    __slots__ = ("_context", "alpn", "identity", "keep")

    def __init__(self, identity: DeviceIdentity, *, alpn: tuple[str, ...] = (), keep: bool = True) -> None:
        self.identity = identity
        self.alpn = alpn
        self.keep = keep
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        ctx = self._context
        if ctx is None:
            try:
                ctx = identity_context(self.identity, self.alpn)
            except FileNotFoundError as exc:
                identity = self.identity
                missing = [f for f in (identity.cert_file, identity.key_file, identity.ca_file)
                           if not os.path.exists(f)] or [exc.filename or "?"]
                raise TransportError("identity", "missing-file", f"{', '.join(missing)}: {exc.strerror}") from None
            except ssl.SSLError as exc:
                raise TransportError("identity", exc.reason or "unusable",
                                     f"{self.identity.cert_file} / {self.identity.key_file}: {exc}") from None
            except OSError as exc:
                raise TransportError("identity", errno.errorcode.get(exc.errno or 0, "OSError"), str(exc)) from None
            if self.keep:
                self._context = ctx
        return ctx

    @property
    def holds_context(self) -> bool:
        return self._context is not None

    def forget(self) -> None:
        self._context = None


# --------------------------------------------------------------------------------------------- TCP

def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _os_error(stage: str, exc: OSError) -> TransportError:
    code = errno.errorcode.get(exc.errno or 0) if exc.errno else None
    return TransportError(stage, code or type(exc).__name__, exc.strerror or str(exc))


async def _tcp_connect(endpoint: Endpoint, local_addr: str | None, timings: LinkTimings,
                       clock) -> socket.socket:
    """A connected non-blocking socket (TCP_NODELAY), bound to ``local_addr`` when given."""
    loop = asyncio.get_running_loop()
    started = clock()
    family = 0
    if local_addr is not None:
        family = socket.AF_INET6 if ":" in local_addr else socket.AF_INET
    if _is_ip(endpoint.host):
        addresses = [(socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET, (endpoint.host, endpoint.port))]
    else:
        try:
            infos = await loop.getaddrinfo(endpoint.host, endpoint.port, family=family, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise TransportError("dns", f"EAI_{exc.errno}", f"{endpoint.host}: {exc.strerror}") from None
        addresses = [(info[0], info[4]) for info in infos]
    timings.dns = clock() - started
    started = clock()
    error: TransportError | None = None
    for fam, address in addresses:
        try:
            sock = socket.socket(fam, socket.SOCK_STREAM)
        except OSError as exc:  # EMFILE/ENFILE: out of descriptors (see devices.limits)
            raise _os_error("tcp", exc) from None
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if local_addr is not None:
                bind_source(sock, local_addr)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = _os_error("tcp", exc)
            continue
        except BaseException:
            sock.close()
            raise
        timings.tcp = clock() - started
        return sock
    raise error or TransportError("tcp", "no-address", f"{endpoint.host} resolved to no address")


def _tls_error(exc: BaseException) -> TransportError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransportError("tls", exc.reason or "CERTIFICATE_VERIFY_FAILED", exc.verify_message or str(exc))
    if isinstance(exc, ssl.SSLError):
        return TransportError("tls", exc.reason or type(exc).__name__, str(exc))
    if isinstance(exc, OSError):
        return _os_error("tls", exc)
    return TransportError("tls", type(exc).__name__, str(exc))


class Transport:
    """Opens links. Instances hold no per-connection state and are shared by every device of a process."""

    name = ""
    #: whether a device's SSLContext is kept between connects unless told otherwise
    keeps_context = True

    async def connect(self, endpoint: Endpoint, tls: DeviceTLS, handler: LinkHandler, timings: LinkTimings, *,
                      local_addr: str | None = None, clock=None) -> Link:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------- stdlib

class _StdlibLink(asyncio.Protocol):
    __slots__ = ("_closed", "_handler", "_transport")

    def __init__(self, handler: LinkHandler) -> None:
        self._handler = handler
        self._transport: asyncio.Transport | None = None
        self._closed = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._handler.on_data(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        self._handler.on_close(exc)

    # Link
    def write(self, data: bytes) -> None:
        if not self._closed:
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    @property
    def tls_version(self) -> str | None:
        sslobj = self._transport.get_extra_info("ssl_object") if self._transport else None
        return sslobj.version() if sslobj is not None else None


class StdlibTransport(Transport):
    """TLS by the event loop (``create_connection(ssl=...)``); one SSLContext per identity, reused."""

    name = "stdlib"
    keeps_context = True

    async def connect(self, endpoint: Endpoint, tls: DeviceTLS, handler: LinkHandler, timings: LinkTimings, *,
                      local_addr: str | None = None, clock=None) -> Link:
        loop = asyncio.get_running_loop()
        clock = clock or loop.time
        ctx = tls.context()
        sock = await _tcp_connect(endpoint, local_addr, timings, clock)
        started = clock()
        try:
            _, link = await loop.create_connection(lambda: _StdlibLink(handler), sock=sock, ssl=ctx,
                                                   server_hostname=endpoint.sni)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise _tls_error(exc) from None
        except BaseException:
            sock.close()
            raise
        timings.tls = clock() - started
        return link


# --------------------------------------------------------------------------------------------- membio

class _MemoryBIOLink(asyncio.Protocol):
    """TLS over memory BIOs on a plain TCP transport: handshake, then records in and out."""

    __slots__ = ("_closed", "_handler", "_handshake", "_incoming", "_outgoing", "_session_ctx", "_ssl", "_tls",
                 "_transport")

    def __init__(self, context: ssl.SSLContext, tls: DeviceTLS, endpoint: Endpoint, handler: LinkHandler,
                 handshake: asyncio.Future) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._session_ctx = session_context(endpoint.alpn)
        self._ssl = self._session_ctx.wrap_bio(self._incoming, self._outgoing, server_hostname=endpoint.sni)
        self._ssl.context = context  # the identity's context, lent for the handshake only
        self._tls = tls
        self._handler = handler
        self._handshake: asyncio.Future | None = handshake
        self._transport: asyncio.Transport | None = None
        self._closed = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self._transport = transport
        self._step_handshake()

    def data_received(self, data: bytes) -> None:
        if len(data) <= _SLICE_IN:
            self._incoming.write(data)
            self._step_handshake() if self._handshake is not None else self._read()
            return
        view = memoryview(data)
        for start in range(0, len(data), _SLICE_IN):
            if self._closed:
                return
            self._incoming.write(view[start:start + _SLICE_IN])
            self._step_handshake() if self._handshake is not None else self._read()

    def eof_received(self) -> bool:
        self._incoming.write_eof()
        if self._handshake is None:
            self._read()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        handshake = self._handshake
        if handshake is not None:
            self._handshake = None
            self._return_context()
            if not handshake.done():
                handshake.set_exception(_tls_error(exc) if exc else TransportError(
                    "tls", "closed", "the server closed the connection during the TLS handshake"))
            return
        self._handler.on_close(exc)

    # TLS
    def _step_handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush()  # the alert, if any, goes out before the connection is dropped
            self._fail_handshake(_tls_error(exc))
            return
        self._flush()
        handshake, self._handshake = self._handshake, None
        self._return_context()
        if handshake is not None and not handshake.done():
            handshake.set_result(None)
        if self._incoming.pending:
            self._read()  # post-handshake messages (session tickets) that came with the last flight

    def _return_context(self) -> None:
        self._ssl.context = self._session_ctx
        if not self._tls.keep:
            self._tls.forget()

    def _fail_handshake(self, error: TransportError) -> None:
        handshake, self._handshake = self._handshake, None
        self._closed = True
        self._handler = _Silent()  # the device never had this link
        self._return_context()
        if self._transport is not None:
            self._transport.abort()
        if handshake is not None and not handshake.done():
            handshake.set_exception(error)

    def _read(self) -> None:
        sslobj = self._ssl
        handler = self._handler
        try:
            while not self._closed:
                data = sslobj.read(_READ_SIZE)
                if not data:
                    self._peer_closed()
                    return
                handler.on_data(data)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._peer_closed()
            return
        except ssl.SSLError as exc:
            self._flush()
            self._closed = True
            if self._transport is not None:
                self._transport.abort()
            # connection_lost reports None after abort(); the TLS error is the real cause
            self._handler, handler = _Silent(), self._handler
            handler.on_close(exc)
            return
        if not self._closed:
            try:
                sslobj.write(b"")  # frees OpenSSL's write buffer, see the module docstring
            except ssl.SSLError:
                pass
        self._flush()

    def _peer_closed(self) -> None:
        self._flush()
        self.close()

    def _flush(self) -> None:
        transport = self._transport
        if self._outgoing.pending and transport is not None and not transport.is_closing():
            transport.write(self._outgoing.read())

    # Link
    def write(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            if len(data) <= _SLICE_OUT:
                self._ssl.write(data)
            else:
                view = memoryview(data)
                for start in range(0, len(data), _SLICE_OUT):
                    self._ssl.write(view[start:start + _SLICE_OUT])
                    self._flush()
        except ssl.SSLError as exc:
            self._closed = True
            self._transport.abort()
            self._handler, handler = _Silent(), self._handler
            handler.on_close(exc)
            return
        self._flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._ssl.unwrap()
        except (ssl.SSLError, ValueError):
            pass  # close_notify is queued; the peer's own is not awaited
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    @property
    def tls_version(self) -> str | None:
        return self._ssl.version()


class _Silent:
    """Handler of a link whose closing was already reported."""

    __slots__ = ()

    def on_data(self, data: bytes) -> None:
        pass

    def on_close(self, exc: BaseException | None) -> None:
        pass


class MemoryBIOTransport(Transport):
    """TLS by ``SSLObject`` over memory BIOs on a plain TCP transport (see the module docstring)."""

    name = "membio"
    keeps_context = False

    async def connect(self, endpoint: Endpoint, tls: DeviceTLS, handler: LinkHandler, timings: LinkTimings, *,
                      local_addr: str | None = None, clock=None) -> Link:
        loop = asyncio.get_running_loop()
        clock = clock or loop.time
        context = tls.context()  # identity problems surface before any packet is sent
        sock = await _tcp_connect(endpoint, local_addr, timings, clock)
        started = clock()
        handshake = loop.create_future()
        try:
            _, link = await loop.create_connection(
                lambda: _MemoryBIOLink(context, tls, endpoint, handler, handshake), sock=sock)
        except OSError as exc:
            sock.close()
            raise _tls_error(exc) from None
        except BaseException:
            sock.close()
            raise
        try:
            await handshake
        except BaseException:
            link.abort()
            raise
        timings.tls = clock() - started
        return link


#: The memory-BIO link on its own: an asyncio.Protocol whose transport only needs write / close / abort /
#: is_closing / pause_reading / resume_reading, and whose handshake future only done / set_result / set_exception.
#: loadtests/device.py drives it from gevent's loop.
MemoryBIOLink = _MemoryBIOLink


TRANSPORTS: dict[str, Transport] = {"stdlib": StdlibTransport(), "membio": MemoryBIOTransport()}


def get_transport(name: str | Transport) -> Transport:
    if isinstance(name, Transport):
        return name
    try:
        return TRANSPORTS[name]
    except KeyError:
        raise ValueError(f"unknown transport {name!r}: choose {' or '.join(TRANSPORTS)}") from None
