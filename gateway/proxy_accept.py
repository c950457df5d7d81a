"""The device listener's PROXY protocol v2 step (config ``proxy_protocol``, ``trusted_proxies``).

It runs on the accepted socket before the TLS handshake and reads exactly the header's bytes (never into the TLS
stream). A connection from a trusted proxy must begin with a header; the address it names becomes the
connection's address (access log, rate limit per source, ``aws:SourceIp``). A connection from any other address
is served as a direct one, and refused if it begins with a header: only a trusted proxy may speak for a device.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from gateway import proxy_protocol as pp
from gateway.proxy_protocol import ProxyProtocolError


class ProxyAcceptor:
    def __init__(self, trusted: Sequence[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(net, strict=False) for net in trusted)

    def trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)

    async def resolve(self, sock: socket.socket, addr: tuple, timeout: float) -> tuple:
        """The device's address for this connection; raises ProxyProtocolError (refuse and log) or TimeoutError."""
        async with asyncio.timeout(timeout):
            if not self.trusted(addr[0]):
                first = await _peek(sock, len(pp.SIGNATURE))
                if first and pp.is_prefix(first):
                    raise ProxyProtocolError("proxy_untrusted",
                                             f"a PROXY header from {addr[0]}, which is not in trusted_proxies")
                return addr
            data = await _read_exactly(sock, pp.HEADER_FIXED)
            if not pp.is_prefix(data):
                raise ProxyProtocolError("proxy_header_missing",
                                         "a connection from a trusted proxy did not start with a PROXY v2 header")
            pp.parse(data)  # signature, version and size checked before reading the rest
            data += await _read_exactly(sock, pp.needed(data) - len(data))
            header = pp.parse(data)
        if header.source is None:  # LOCAL (the proxy's health check) or no address: the proxy itself
            return addr
        return header.source


async def _wait_readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _peek(sock: socket.socket, n: int) -> bytes:
    """Up to ``n`` first bytes without consuming them: returns as soon as they cannot be a PROXY header."""
    while True:
        try:
            data = sock.recv(n, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            data = None
        if data is None:
            await _wait_readable(sock)
        elif len(data) >= n or not data or not pp.is_prefix(data):
            return data
        else:  # the start of a header is here, the rest is on its way: readable would fire at once
            await asyncio.sleep(0.005)


async def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        try:
            data = sock.recv(left)
        except (BlockingIOError, InterruptedError):
            await _wait_readable(sock)
            continue
        if not data:
            raise ProxyProtocolError("proxy_header_invalid", "the proxy closed the connection inside its header")
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)
