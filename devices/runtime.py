"""What the parts of one fleet run share: the clock, the stop signal, bounded waits, counters and notes; and the
guard that names the part an exception came from.

Every part runs as a task of the runner's ``asyncio.TaskGroup`` (or of a part's own), wrapped in
:func:`guarded`: an exception anywhere inside it becomes :class:`~devices.plan.RunPartError` naming the part
(the innermost name wins: a publisher's bug names ``publishers``, not ``devices``), the task group cancels the
other parts, and the run ends as an error (exit 3). Nothing is swallowed.

Waiting uses :class:`Flag` (an event that can be waited on together with the run's stop flag, without a task
per wait): a part blocked in :meth:`RunContext.wait` or :meth:`RunContext.sleep` returns as soon as the run stops.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TypeVar

from certs.errors import IotgateError
from devices.client import ConnectOutcome
from devices.evidence import connect_detail
from devices.plan import RunPartError
from devices.report import PHASES

T = TypeVar("T")
MAX_SAMPLES = 200_000


# --------------------------------------------------------------------------------------------- parts

def _part_error(exc: BaseException) -> IotgateError | None:
    if isinstance(exc, IotgateError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _part_error(inner)
            if found is not None:
                return found
    return None


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def part_error(part: str, exc: BaseException) -> IotgateError:
    """``exc`` as the error of ``part``, unless it already names an inner part."""
    return _part_error(exc) or RunPartError(part, _leaf(exc))


async def guarded(part: str, work: Awaitable[T]) -> T:
    """Await one part of the run; any exception it raises ends the run as an error naming the part (an
    :class:`IotgateError` already is a message for the user and passes as it is)."""
    try:
        return await work
    except IotgateError:
        raise
    except Exception as exc:  # noqa: BLE001 - every exception of a part is the run's error, named, never dropped
        raise part_error(part, exc) from exc


def guarded_call(part: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """A synchronous part (setup in a worker thread, the report): its exception names the part."""
    try:
        return fn(*args, **kwargs)
    except IotgateError:
        raise
    except Exception as exc:  # noqa: BLE001 - see guarded()
        raise part_error(part, exc) from exc


# --------------------------------------------------------------------------------------------- waiting

class Flag:
    """An ``asyncio.Event`` that :func:`wait_any` can wait on together with others, with one future per wait
    and no task."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        await wait_any((self,))


async def wait_any(flags: Iterable[Flag], timeout: float | None = None) -> None:
    """Return once any flag is set, or after ``timeout`` seconds."""
    flags = tuple(flags)
    if any(f.is_set() for f in flags):
        return
    fut = asyncio.get_running_loop().create_future()
    for f in flags:
        f._waiters.append(fut)
    try:
        if timeout is None:
            await fut
        else:
            try:
                async with asyncio.timeout(max(0.0, timeout)):
                    await fut
            except TimeoutError:
                pass
    finally:
        for f in flags:
            try:
                f._waiters.remove(fut)
            except ValueError:  # already handed out by set()
                pass


# --------------------------------------------------------------------------------------------- counters

class RunStats:
    """Counters and latency samples of one run (bounded). ``failures`` counts failed connect attempts and dropped
    connections by reason: every attempt, retries included (the per-member verdicts are in the report's groups)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {p: [] for p in PHASES}
        self.failures: collections.Counter[str] = collections.Counter()
        self.connect_attempts = 0
        self.connects = 0
        self.messages = 0            # publishes completed (QoS 1 acknowledged, QoS 0 written)
        self.commands_received = 0   # commands the devices received
        self.commands_sent = 0       # commands the operator sent
        self.commands_answered = 0   # responses the operator received
        self.connected = 0
        self.reconnects = 0

    def sample(self, phase: str, value: float | None) -> None:
        if value is not None:
            bucket = self.samples[phase]
            if len(bucket) < MAX_SAMPLES:
                bucket.append(value)

    def connect(self, outcome: ConnectOutcome) -> None:
        self.connect_attempts += 1
        t = outcome.timings
        self.sample("tcp", t.tcp)
        self.sample("tls", t.tls)
        if outcome.ok:
            self.connects += 1
            self.sample("connack", t.connack)
        else:
            self.failures[connect_detail(outcome)[:90]] += 1


# --------------------------------------------------------------------------------------------- context

@dataclasses.dataclass(eq=False)
class RunContext:
    """Shared by every part of one run."""

    clock: Callable[[], float] = time.monotonic
    stats: RunStats = dataclasses.field(default_factory=RunStats)
    stopping: Flag = dataclasses.field(default_factory=Flag)
    notes: list[str] = dataclasses.field(default_factory=list)
    t0: float = 0.0
    publishing: bool = True          # False once the traffic phase is over (draining)

    def start(self) -> None:
        self.t0 = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0 if self.t0 else 0.0

    def stop(self) -> None:
        self.publishing = False
        self.stopping.set()

    @property
    def stopped(self) -> bool:
        return self.stopping.is_set()

    async def sleep(self, seconds: float) -> None:
        """Sleep, or less when the run stops."""
        await wait_any((self.stopping,), timeout=max(0.0, seconds))

    async def wait(self, flag: Flag, timeout: float | None = None) -> bool:
        """Wait for ``flag`` or the end of the run; True when the flag is set."""
        await wait_any((flag, self.stopping), timeout=timeout)
        return flag.is_set()

    async def end_at_stop(self, tasks: Iterable[asyncio.Task]) -> None:
        """Wait for the end of the run, then cancel ``tasks`` (a part's own, still in a connect or a publish that
        would otherwise hold the run up to its timeout: everything that counts was measured before the stop)."""
        await self.stopping.wait()
        for task in tasks:
            task.cancel()

    async def until_stopped(self, work: Coroutine[None, None, None]) -> None:
        """Run ``work`` until it ends or the run stops (then it is cancelled); its exception propagates."""
        await until(work, self.stopping)


async def until(work: Coroutine[None, None, None], *flags: Flag) -> None:
    """Run ``work`` until it ends or one of ``flags`` is set (then it is cancelled); its exception propagates."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(work)
        done = Flag()
        task.add_done_callback(lambda _: done.set())

        async def cancel_when_flagged() -> None:
            await wait_any((*flags, done))
            task.cancel()

        tg.create_task(cancel_when_flagged())
