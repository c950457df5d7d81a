"""The listener devices under test connect to: accepts TCP connections and hands them, in order, to the case
that is running. A connection that arrives while no case is waiting for one is queued (at most ``max_pending``,
further ones are closed); connections left over when a case ends are closed by the runner."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Callable

__all__ = ["Arrival", "DeviceExited", "Listener"]


@dataclasses.dataclass(slots=True)
class Arrival:
    sock: socket.socket
    address: tuple
    at: float

    @property
    def source(self) -> str:
        host, port = self.address[0], self.address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DeviceExited(Exception):
    """The device under test ended while a case waited for it; ``exit`` says how."""

    def __init__(self, exit) -> None:
        super().__init__(exit.describe())
        self.exit = exit


class Listener:
    def __init__(self, host: str, port: int, *, clock: Callable[[], float] = time.monotonic,
                 max_pending: int = 64) -> None:
        self.host = host
        self.requested_port = port
        self.clock = clock
        self.port = 0
        self.max_pending = max_pending
        self.accepted = 0
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._queue: asyncio.Queue[Arrival] = asyncio.Queue()
        self._closing = False

    def open(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {self.host}:{self.requested_port}: {exc.strerror}; choose another "
                          "--port (0 picks a free one)") from None
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        return self.port

    async def serve(self) -> None:
        """Accept until closed."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                sock, address = await loop.sock_accept(self._sock)
            except OSError:
                if self._closing:
                    return
                await asyncio.sleep(0.05)  # e.g. out of descriptors: back off instead of spinning
                continue
            self.accepted += 1
            if self._queue.qsize() >= self.max_pending:
                self.dropped += 1
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._queue.put_nowait(Arrival(sock, address, self.clock()))

    async def next(self, timeout: float | None, *, exited: asyncio.Future | None = None) -> Arrival:
        """The next connection; TimeoutError when none came in ``timeout`` seconds, DeviceExited when the device
        ended first (a connection that is already queued still wins)."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        getter = asyncio.ensure_future(self._queue.get())
        waiting = {getter} if exited is None else {getter, exited}
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
        if getter in done:
            return getter.result()
        if exited is not None and exited in done:
            raise DeviceExited(exited.result())
        raise TimeoutError

    def requeue(self, arrival: Arrival) -> None:
        """Put a connection back at the head of the queue (the next ``next`` returns it)."""
        items = [arrival]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        for item in items:
            self._queue.put_nowait(item)

    def discard_pending(self) -> int:
        """Close the connections nobody took; how many there were."""
        n = 0
        while not self._queue.empty():
            self._queue.get_nowait().sock.close()
            n += 1
        return n

    def close(self) -> None:
        self._closing = True
        self.discard_pending()
        if self._sock is not None:
            self._sock.close()
