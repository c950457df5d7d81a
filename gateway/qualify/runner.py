"""Runs a suite: the listener, the device under test and the cases in order, in one structured task tree.

    qualification = Qualification(suite, device, profiles=..., contexts=..., policies=..., endpoint=...)
    result = await qualification.run()          # RunResult: case results, verdict, what failed in the run

The listener task and the cases live in one ``TaskGroup``; a device started for a case is stopped when the case
ends, whatever happened. A bug inside one case makes that case an ERROR (with the exception in its evidence);
the listener failing ends the run, named in ``RunResult.error``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from gateway.qualify.cases import CASE_RUNNERS, CaseContext, CaseEnd, RunFacts
from gateway.qualify.device import DeviceEndpoint, DeviceError, DeviceUnderTest
from gateway.qualify.endpoint import DeviceExited, Listener
from gateway.qualify.judge import Judgement
from gateway.qualify.peer import DeviceGone, MalformedPacket
from gateway.qualify.policies import PolicySource
from gateway.qualify.profiles import ServerProfiles
from gateway.qualify.suite import CaseSpec, Suite
from gateway.qualify.tls import ContextFactory
from gateway.qualify.verdict import CaseResult, Timeline, Verdict, run_verdict

__all__ = ["Qualification", "RunResult"]


@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    suite: Suite
    device: str
    endpoint: DeviceEndpoint
    results: tuple[CaseResult, ...]
    started_at: float             # wall clock (epoch seconds)
    seconds: float
    error: str | None = None      # a part of the run that failed (it ends the run as an error)

    @property
    def verdict(self) -> Verdict:
        if self.error is not None:
            return Verdict.ERROR
        if len(self.results) < len(self.suite.cases):
            return Verdict.ERROR
        return run_verdict(self.results)


class Qualification:
    def __init__(self, suite: Suite, device: DeviceUnderTest, *, profiles: ServerProfiles, contexts: ContextFactory,
                 policies: PolicySource, host: str = "127.0.0.1", port: int = 0, server_name: str = "localhost",
                 ca_file: str | Path = "", on_ready: Callable[[DeviceEndpoint], None] | None = None,
                 on_case: Callable[[CaseResult], None] | None = None) -> None:
        self.suite = suite
        self.device = device
        self.profiles = profiles
        self.contexts = contexts
        self.policies = policies
        self.listener = Listener(host, port)
        self.host = host
        self.server_name = server_name
        self.ca_file = str(ca_file)
        self.on_ready = on_ready
        self.on_case = on_case
        self.endpoint: DeviceEndpoint | None = None
        self.facts = RunFacts()
        self._t0 = 0.0

    async def run(self) -> RunResult:
        wall = time.time()
        self._t0 = time.monotonic()
        port = self.listener.open()
        self.endpoint = DeviceEndpoint(self.host, port, self.server_name, self.ca_file)
        results: list[CaseResult] = []
        error = None
        try:
            async with asyncio.TaskGroup() as group:
                serving = group.create_task(self.listener.serve(), name="qualify listener")
                try:
                    if self.on_ready is not None:
                        self.on_ready(self.endpoint)
                    for spec in self.suite.cases:
                        result = await self._run_case(spec)
                        results.append(result)
                        if self.on_case is not None:
                            self.on_case(result)
                finally:
                    self.listener.close()
                    serving.cancel()
        except* Exception as group_error:
            parts = "; ".join(f"{type(e).__name__}: {e}" for e in group_error.exceptions)
            error = f"the endpoint's listener failed: {parts}"
        finally:
            self.listener.close()
            self.contexts.cleanup()
        return RunResult(self.suite, self.device.description, self.endpoint, tuple(results), wall,
                         time.monotonic() - self._t0, error)

    async def _run_case(self, spec: CaseSpec) -> CaseResult:
        started = time.monotonic()
        timeline = Timeline(time.monotonic, started)
        ctx = CaseContext(spec, timeline=timeline, listener=self.listener, device=self.device,
                          profiles=self.profiles, contexts=self.contexts, policies=self.policies,
                          endpoint=self.endpoint, base_dir=self.suite.base_dir, facts=self.facts)
        judgement: Judgement
        try:
            if self.device.per_case:
                await self.device.start(self.endpoint, spec.id)
                timeline.note(f"started {self.device.description}")
            judgement = await CASE_RUNNERS[spec.id](ctx)
        except CaseEnd as end:
            judgement = end.judgement
        except DeviceError as exc:
            judgement = Judgement(Verdict.ERROR, f"the device could not be started: {exc}")
        except DeviceExited as exc:
            judgement = Judgement(Verdict.ERROR, f"{exc.exit.describe()} while the case waited for it")
        except DeviceGone as exc:
            judgement = Judgement(Verdict.FAIL, f"the device closed the connection before the case saw what it "
                                                f"needed ({exc})")
        except MalformedPacket as exc:
            judgement = Judgement(Verdict.FAIL, f"the device sent a malformed packet: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug in one case is that case's error, named, with its trace
            trace = traceback.format_exception(exc)
            timeline.note("internal error: " + "".join(trace[-3:]).strip())
            judgement = Judgement(Verdict.ERROR, f"internal error in case {spec.id}: {type(exc).__name__}: {exc}")
        finally:
            await ctx.close()
            if self.device.per_case:
                exit = await self.device.stop()
                if exit is not None:
                    timeline.note(f"stopped: {exit.describe()}")
            stray = self.listener.discard_pending()
            if stray:
                timeline.note(f"closed {stray} connection(s) nobody took")
        return CaseResult(spec.id, spec.info.title, spec.info.group, judgement.verdict, judgement.summary,
                          judgement.warnings, tuple(timeline.as_list()), judgement.details,
                          started - self._t0, time.monotonic() - started,
                          spec.id if spec.info.device_advisor else None)
