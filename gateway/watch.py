"""The registry watcher: keeps the gateway's view in step with the registry, and knows how stale it is.

One owner task per gateway. It wakes every poll interval (SQLite), or when PostgreSQL's NOTIFY says a mutation
committed (with a heartbeat poll every second), reads the change log after the view's counter in a worker
thread, applies it to the view there (``AuthView.updated``: only what changed is re-read and re-parsed), and hands
the new view to the gateway on the loop, which re-checks only the live sessions the changes touch. When the log
cannot tell what changed (pruned, or too much changed) the whole snapshot is reloaded, as before.

When the registry does not answer, the gateway keeps serving from its view: live sessions go on, new connections
are still judged against the last view. Past ``registry_max_staleness`` seconds without a successful read the
gateway fails closed for new connections (``refusing``) until the registry answers again; live sessions are kept.
The staleness is a gauge (``iotgate_registry_staleness_seconds``) and each change of state is one log line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.auth import AuthView
from gateway.registry import NOTIFY_CHANNEL, Registry, RegistryError

if TYPE_CHECKING:
    from gateway.server import Gateway

LISTEN_HEARTBEAT = 1.0  # seconds between polls while LISTEN is up (NOTIFY wakes the watcher in between)
LISTEN_BACKOFF_MAX = 5.0


class RegistryWatcher:
    def __init__(self, gateway: Gateway, registry: Registry, executor: concurrent.futures.Executor, *,
                 poll_interval: float, max_staleness: float, clock: Callable[[], float],
                 log: Callable[[str], None] | None = None) -> None:
        self.gateway = gateway
        self.registry = registry
        self.executor = executor
        self.poll_interval = poll_interval
        self.max_staleness = max_staleness
        self.clock = clock
        self.log = log or (lambda text: print(f"iotgate gateway: {text}", file=sys.stderr))
        self.last_ok = clock()
        self.failing: str | None = None  # the last error while the registry does not answer
        self.listening = False
        self.incremental = 0
        self.full_reloads = 0
        self._wake = asyncio.Event()
        self._refusing = False

    # ------------------------------------------------------------------ state

    def staleness(self) -> float:
        """Seconds since the registry last answered."""
        return max(0.0, self.clock() - self.last_ok)

    def refusing(self) -> bool:
        """True while new connections must be refused: the view is older than the staleness bound."""
        stale = self.failing is not None and self.staleness() > self.max_staleness
        if stale and not self._refusing:
            self.log(f"registry unreachable for {self.staleness():.1f} s, more than registry_max_staleness "
                     f"({self.max_staleness:g} s): refusing new connections until it answers; live sessions are "
                     f"kept ({self.failing})")
        self._refusing = stale
        return stale

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        """Until cancelled: follow the registry (and LISTEN on PostgreSQL, in a task of this one's group)."""
        async with asyncio.TaskGroup() as tg:
            if self.registry.backend == "postgresql":
                tg.create_task(self._listen(), name="iotgate-registry-listen")
            while True:
                interval = LISTEN_HEARTBEAT if self.listening else self.poll_interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
                self._wake.clear()
                await self.refresh()

    async def refresh(self) -> bool:
        """Bring the view up to date once; False when the registry did not answer (the view is kept)."""
        loop = asyncio.get_running_loop()
        current = self.gateway.view
        try:
            view, changes = await loop.run_in_executor(self.executor, self._next_view, current)
        except RegistryError as exc:
            if self.failing is None:
                self.log(f"registry unavailable, serving from the view at change {current.counter} "
                         f"(for at most registry_max_staleness = {self.max_staleness:g} s): {exc}")
            self.failing = str(exc)
            self._gauges()
            return False
        except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one bad snapshot
            self.gateway.internal_error("registry snapshot", exc)
            return False
        if self.failing is not None:
            self.log(f"registry answers again after {self.staleness():.1f} s")
            self.failing = None
            self._refusing = False
        self.last_ok = self.clock()
        if view is not None and self.gateway.view is current:
            self.gateway.apply_view(view, changes)
        self._gauges()
        return True

    def _next_view(self, current: AuthView):
        """(new view or None when nothing changed, the ChangeSet applied or None after a full reload)."""
        changes = self.registry.changes_since(current.counter)
        if changes is not None:
            if changes.empty:
                return None, None
            view, _ = current.updated(changes)
            self.incremental += 1
            return view, changes
        self.full_reloads += 1
        return AuthView(self.registry.snapshot(certificate_pem=False), current), None

    def _gauges(self) -> None:
        gauges = self.gateway.metrics.gauges
        gauges["registry_staleness_seconds"] = round(self.staleness(), 3)
        gauges["registry_available"] = 0 if self.failing else 1
        gauges["registry_refusing"] = 1 if self.refusing() else 0

    async def _listen(self) -> None:
        """LISTEN for the registry's NOTIFY on its own connection; reconnect with a backoff when it drops."""
        import psycopg

        backoff = 0.5
        dsn = self.registry.listen_dsn()
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening = True
                    backoff = 0.5
                    self.wake()  # catch up with what committed while nobody listened
                    async for _ in conn.notifies():
                        self.wake()
            except (psycopg.Error, OSError):
                pass
            if self.listening:
                self.wake()  # the connection dropped: see at once whether the registry still answers
            self.listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, LISTEN_BACKOFF_MAX)
