"""The device under test: a command started for every case, a coroutine (for devices written in Python), or an
external device that connects by itself.

A command gets the endpoint through placeholders in its arguments: ``{endpoint}`` (the name the server
certificate is issued for), ``{host}`` (the listening address), ``{port}``, ``{ca}`` (the CA file the device
should trust for the server). Its output goes to one log file per case; the tail of it is evidence when it ends
before the case saw what it needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from certs.errors import IotgateError

__all__ = ["CommandDevice", "CoroutineDevice", "DeviceEndpoint", "DeviceError", "DeviceExit", "DeviceUnderTest",
           "ExternalDevice", "PLACEHOLDERS"]

PLACEHOLDERS = ("{endpoint}", "{host}", "{port}", "{ca}")
STOP_GRACE = 3.0


class DeviceError(IotgateError):
    """The device under test could not be started (command not found, bad template)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceEndpoint:
    """Where the device should connect and what it should trust."""

    host: str
    port: int
    server_name: str
    ca_file: str


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceExit:
    code: int | None
    detail: str = ""

    def describe(self) -> str:
        how = "ended" if self.code is None else f"exited with code {self.code}"
        return f"the device {how}" + (f": {self.detail}" if self.detail else "")


class DeviceUnderTest(Protocol):
    description: str
    #: True when the runner starts the device for each case and stops it afterwards
    per_case: bool

    async def start(self, endpoint: DeviceEndpoint, case_id: str) -> None: ...

    async def stop(self) -> DeviceExit | None: ...

    @property
    def exited(self) -> asyncio.Future | None:
        """Resolves with a DeviceExit when the device ends on its own (None: never known)."""


class ExternalDevice:
    """A device started by someone else: it must connect, and reconnect between cases, by itself."""

    description = "an external device"
    per_case = False
    exited = None

    async def start(self, endpoint: DeviceEndpoint, case_id: str) -> None:
        return None

    async def stop(self) -> DeviceExit | None:
        return None


def _tail(path: Path, lines: int = 6, limit: int = 600) -> str:
    try:
        data = path.read_bytes()[-4096:]
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").strip().splitlines()[-lines:]
    joined = " | ".join(line.strip() for line in text if line.strip())
    return joined[-limit:]


_SECRET_FLAGS = frozenset({"-P", "--pw", "--password", "--pass", "--passwd", "--key-password"})


def redacted(argv: list[str]) -> list[str]:
    """The arguments with passwords masked (``-P secret``, ``--password=secret``): what reports may show."""
    out = []
    hide = False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in _SECRET_FLAGS and eq:
            out.append(f"{flag}=***")
        else:
            out.append(arg)
            hide = arg in _SECRET_FLAGS
    return out


class CommandDevice:
    """A command line started for every case (its own process group), stopped with SIGTERM then SIGKILL."""

    per_case = True

    def __init__(self, command: str, log_dir: Path) -> None:
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise DeviceError(f"--device-cmd: cannot split the command ({exc})") from None
        if not self.argv:
            raise DeviceError("--device-cmd is empty")
        self.command = command
        self.description = "command " + shlex.join(redacted(self.argv))
        self.log_dir = Path(log_dir)
        self._proc: asyncio.subprocess.Process | None = None
        self._waiter: asyncio.Task | None = None
        self._exited: asyncio.Future | None = None
        self._log: Path | None = None
        self._seq = 0
        self.logs: list[Path] = []

    @property
    def exited(self) -> asyncio.Future | None:
        return self._exited

    def expand(self, endpoint: DeviceEndpoint) -> list[str]:
        values = {"{endpoint}": endpoint.server_name, "{host}": endpoint.host, "{port}": str(endpoint.port),
                  "{ca}": endpoint.ca_file}
        out = []
        for arg in self.argv:
            for key, value in values.items():
                arg = arg.replace(key, value)
            out.append(arg)
        return out

    async def start(self, endpoint: DeviceEndpoint, case_id: str) -> None:
        argv = self.expand(endpoint)
        self._seq += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_dir / f"device-{self._seq:02d}-{case_id}.log"
        self.logs.append(self._log)
        loop = asyncio.get_running_loop()
        with open(self._log, "wb") as out:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True)
            except FileNotFoundError:
                raise DeviceError(f"--device-cmd: {argv[0]!r} not found (is it installed and on PATH?)") from None
            except PermissionError:
                raise DeviceError(f"--device-cmd: {argv[0]!r} cannot be run (permission denied)") from None
        exited = self._exited = loop.create_future()
        self._waiter = loop.create_task(self._proc.wait(), name=f"device {case_id}")
        self._waiter.add_done_callback(lambda task: self._ended(task, exited))

    def _ended(self, task: asyncio.Task, exited: asyncio.Future) -> None:
        if exited.done():
            return
        code = None if task.cancelled() or task.exception() else task.result()
        exited.set_result(DeviceExit(code, _tail(self._log) if self._log else ""))

    async def stop(self) -> DeviceExit | None:
        proc, waiter = self._proc, self._waiter
        if proc is None or waiter is None:
            return None
        self._proc = self._waiter = None
        if proc.returncode is None:
            self._signal(proc, signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await asyncio.shield(waiter)
            except TimeoutError:
                self._signal(proc, signal.SIGKILL)
        await waiter
        exit = self._exited.result() if self._exited is not None and self._exited.done() else None
        return exit

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the group the device was started in, and only that


class CoroutineDevice:
    """A device written as a coroutine ``run(endpoint, stop)``, started for every case: it should connect (and
    reconnect) until ``stop`` (an asyncio.Event) is set. Its task belongs to this object; :meth:`stop` awaits it."""

    per_case = True

    def __init__(self, run: Callable[[DeviceEndpoint, asyncio.Event], Awaitable[None]], *,
                 description: str = "a coroutine device") -> None:
        self.run = run
        self.description = description
        self._task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None
        self._exited: asyncio.Future | None = None

    @property
    def exited(self) -> asyncio.Future | None:
        return self._exited

    async def start(self, endpoint: DeviceEndpoint, case_id: str) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        exited = self._exited = loop.create_future()
        self._task = loop.create_task(self.run(endpoint, self._stop), name=f"device {case_id}")

        def ended(task: asyncio.Task) -> None:
            if exited.done():
                return
            if task.cancelled():
                exited.set_result(DeviceExit(None, "cancelled"))
            elif task.exception() is not None:
                exc = task.exception()
                exited.set_result(DeviceExit(1, f"{type(exc).__name__}: {exc}"))
            else:
                exited.set_result(DeviceExit(0, "returned"))

        self._task.add_done_callback(ended)

    async def stop(self) -> DeviceExit | None:
        task = self._task
        if task is None:
            return None
        self._task = None
        self._stop.set()
        try:
            async with asyncio.timeout(STOP_GRACE):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
        except Exception:  # noqa: BLE001 - the device's own failure is reported through ``exited``
            pass
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return self._exited.result() if self._exited is not None and self._exited.done() else None
