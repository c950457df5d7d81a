"""The gateway's own authenticated channel to the upstream broker: one connection per device session.

``mqtts://host:port``  mutual TLS with the gateway's client identity (gateway-client.pem), the broker's
                       certificate verified against the home's CA chain and its name checked. With the default
                       TLS engine (pyOpenSSL over memory BIOs, as on the device side) the gateway's connections
                       resume the broker's newest session (TLS 1.3 ticket or 1.2 session id): a broker that
                       issues tickets does one full handshake per ticket lifetime, not one per device, and a
                       ticket it no longer accepts is simply a full handshake. ``tls_engine = "stdlib"``: the
                       ssl module through the event loop, a full handshake each time.
``unix:///path.sock``  a co-located broker on a unix socket in a 0700 directory, authenticated with the
                       gateway's own username and password (read once from a 0600 file).

Never anonymous, never a device's credentials: the device's username and password are dropped from the
CONNECT before it goes upstream (see gateway.session).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from certs.errors import IotgateError
from certs.store import PKIPaths
from gateway.auth.tls import HandshakeFailed


class UpstreamError(IotgateError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamTarget:
    scheme: str  # "mqtts" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.scheme == "unix" else f"mqtts://{self.host}:{self.port}"


def parse_upstream_url(url: str, *, what: str = "upstream") -> UpstreamTarget:
    """``mqtts://host:port`` or ``unix:///absolute/path``; a clear error for anything else."""
    hint = "use mqtts://HOST:PORT (mutual TLS) or unix:///ABSOLUTE/PATH.sock"
    if not isinstance(url, str) or not url.strip():
        raise UpstreamError(f"{what}: empty URL; {hint}")
    parts = urlsplit(url.strip())
    if parts.scheme == "unix":
        path = parts.path if not parts.netloc else f"/{parts.netloc}{parts.path}"
        if not path.startswith("/"):
            raise UpstreamError(f"{what} {url!r}: the socket path must be absolute; {hint}")
        return UpstreamTarget("unix", path=path)
    if parts.scheme == "mqtts":
        try:
            port = parts.port
        except ValueError:
            raise UpstreamError(f"{what} {url!r}: the port is not a number 1..65535; {hint}") from None
        if not parts.hostname or not port:
            raise UpstreamError(f"{what} {url!r}: host and port are required; {hint}")
        return UpstreamTarget("mqtts", host=parts.hostname, port=port)
    if parts.scheme in ("mqtt", "tcp"):
        raise UpstreamError(f"{what} {url!r}: plaintext TCP to the broker is refused (east-west traffic is "
                            f"authenticated too); {hint}")
    raise UpstreamError(f"{what} {url!r}: unsupported scheme {parts.scheme!r}; {hint}")


def _check_identity(pki: PKIPaths) -> None:
    for path in (pki.client_cert, pki.client_key, pki.chain):
        if not path.exists():
            raise UpstreamError(f"{path}: missing; the gateway's upstream identity comes from "
                                f"`iotgate --home {pki.home} pki init`")


def client_context(pki: PKIPaths) -> ssl.SSLContext:
    """One stdlib TLS client context for every upstream connection: the gateway's identity, the home's CAs."""
    _check_identity(pki)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(pki.chain))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


def check_private_dir(path: Path) -> None:
    """The socket's directory must belong to us and be closed to others (0700)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UpstreamError(f"{path}: the directory of the upstream socket does not exist; start the broker "
                            "first (`iotgate broker run --unix-socket`)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UpstreamError(f"{path}: not a directory")
    if st.st_mode & 0o077 or st.st_uid != os.geteuid():
        raise UpstreamError(f"{path}: the directory of the upstream socket must be private to this user "
                            f"(mode 0700, found {stat.S_IMODE(st.st_mode):04o}); fix it with `chmod 700 {path}`")


def read_secret(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UpstreamError(f"{path}: the gateway's upstream password file is missing; `iotgate broker config "
                            "--unix-socket` writes it") from None
    if st.st_mode & 0o077:
        raise UpstreamError(f"{path}: the password file is readable by others (mode "
                            f"{stat.S_IMODE(st.st_mode):04o}); make it private with `chmod 600 {path}`")
    secret = path.read_bytes().strip()
    if not secret:
        raise UpstreamError(f"{path}: the password file is empty")
    return secret


class UpstreamConnector:
    """Opens the upstream connection of one device session (asyncio protocols, no streams)."""

    def __init__(self, target: UpstreamTarget, pki: PKIPaths, *, username: str | None = None,
                 password_file: Path | None = None, timeout: float = 10.0, engine: str = "pyopenssl") -> None:
        self.target = target
        self.timeout = timeout
        self.username: str | None = None
        self.password: bytes | None = None
        self._ssl: ssl.SSLContext | None = None
        self.tls = None  # the pyOpenSSL connector (gateway.auth.tls_engine.OpenSSLTLSConnector)
        if target.scheme == "mqtts":
            if engine == "pyopenssl":
                from gateway.auth.tls_engine import OpenSSLTLSConnector

                _check_identity(pki)
                self.tls = OpenSSLTLSConnector(pki.client_cert, pki.client_key, pki.chain)
            elif engine == "stdlib":
                self._ssl = client_context(pki)
            else:
                raise UpstreamError(f"tls_engine {engine!r}: use \"pyopenssl\" or \"stdlib\"")
        else:
            check_private_dir(Path(target.path).parent)
            if not username or password_file is None:
                raise UpstreamError(f"upstream {target}: a unix socket needs the gateway's username and password file")
            self.username = username
            self.password = read_secret(password_file)

    async def open(self, protocol_factory: Callable[[], asyncio.Protocol]) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        t = self.target
        async with asyncio.timeout(self.timeout):
            if self.tls is not None:
                try:
                    return await self.tls.connect(t.host, t.port, protocol_factory)
                except HandshakeFailed as exc:
                    raise UpstreamError(f"TLS with the broker {t}: {exc.reason}") from None
            if t.scheme != "unix":
                transport, _ = await loop.create_connection(protocol_factory, t.host, t.port, ssl=self._ssl,
                                                            server_hostname=t.host, ssl_handshake_timeout=self.timeout)
                return transport
            delay = 0.002
            while True:
                try:
                    transport, _ = await loop.create_unix_connection(protocol_factory, t.path)
                    return transport
                except BlockingIOError:
                    # A unix socket whose accept backlog is full refuses at once (EAGAIN) where TCP would queue
                    # the SYN: wait a little and try again, within the same deadline.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.1)
