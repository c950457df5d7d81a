"""The fleet runner: many simulated devices, attackers and chaos in one uvloop process, compared with what the
scenario expects.

    plan = FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", 8883), devices=100, scenario=scenario,
                     local=LocalPKI(store, registry, issuer, now))
    result = run_fleet(plan)                      # or: await FleetRunner(plan).run()
    result.passed, result.mismatches, result.report   # report: the JSON document

The runner composes parts with one job each, under one ``asyncio.TaskGroup``:

==============  ==========================================================  ==============================
part            what it does                                                module
==============  ==========================================================  ==============================
setup           the fleet's identities, the run's own (operator, probe,     :mod:`devices.run_identities`
                attackers, victims)
probe           proves the target answers a legitimate device, before and   :mod:`devices.probe`
                after the run
operator        observes telemetry, sends commands, times both              :mod:`devices.operator`
devices         every device's connections, subscriptions, command          :mod:`devices.fleet_devices`
                answers (``publishers``: its telemetry)
chaos           disconnects, aborts, upstream kills (``rotation``:          :mod:`devices.chaos`
                certificate rotations)
attackers       every attacker, with a victim device connected              :mod:`devices.attackers`
live display    the ``on_tick`` snapshots
report          the verdict and the report document                         :mod:`devices.verdict`
==============  ==========================================================  ==============================

An exception in any part ends the run with :class:`~devices.plan.RunPartError` naming the part (exit 3); a
target that does not prove it answers ends it with :class:`~devices.plan.TargetError` (exit 2). Either way the
run's own identities are retired (:meth:`RunIdentities.retire`). A run is bounded: at most
:data:`devices.scenario.MAX_DEVICES` devices, and a hard deadline of duration + drain + reconnect window +
attacker timeouts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import NamedTuple

from certs.authority import utcnow
from devices.attackers import VICTIM_KINDS, AttackerFactory, AttackersPart, Planned, plan_attackers
from devices.chaos import ChaosPart
from devices.connectors import get_connector
from devices.fleet_devices import DeviceFleet, SimDevice
from devices.identity import DeviceIdentity
from devices.operator import Operator, observable
from devices.plan import (TARGETS, FleetError, FleetPlan, LocalPKI, RunPartError, TargetError, UpstreamControl,
                          check_endpoint, parse_endpoint, parse_rate)
from devices.probe import prove_target
from devices.run_identities import OPERATOR_THING, RunIdentities
from devices.runtime import RunContext, guarded, guarded_call, part_error
from devices.scenario import connect_schedule
from devices.verdict import FleetResult, build_result

__all__ = ["TARGETS", "FleetError", "FleetPlan", "FleetResult", "FleetRunner", "LocalPKI", "RunPartError",
           "TargetError", "UpstreamControl", "check_endpoint", "parse_endpoint", "parse_rate", "run_fleet"]

OPERATOR_READY_TIMEOUT = 20.0


class Prepared(NamedTuple):
    probe: DeviceIdentity
    operator: DeviceIdentity | None
    attackers: list[Planned]
    victim: DeviceIdentity | None


class FleetRunner:
    def __init__(self, plan: FleetPlan, *, clock: Callable[[], float] = time.monotonic) -> None:
        plan.validate()
        self.plan = plan
        self.scenario = plan.scenario
        self.ctx = RunContext(clock=clock)
        self.rng = random.Random(plan.seed)
        self.connector = get_connector(plan.connector)
        self.identities = RunIdentities(plan)
        self.devices: list[SimDevice] = []
        self.errors: list[str] = []

    async def run(self) -> FleetResult:
        try:
            result = await guarded("runner", self._run())
        except BaseException as exc:
            try:
                await asyncio.to_thread(self.identities.retire)
            except Exception as cleanup:  # noqa: BLE001 - the run's own error is the one to report
                exc.add_note(f"retiring the run's own identities failed too: {type(cleanup).__name__}: {cleanup}")
            raise
        notes = await asyncio.to_thread(guarded_call, "cleanup", self.identities.retire)
        result.report["notes"].extend(notes)
        return result

    async def _run(self) -> FleetResult:
        plan, ctx, scenario = self.plan, self.ctx, self.scenario
        setup = await asyncio.to_thread(guarded_call, "setup", self._prepare)
        probe_identity, operator_identity, planned, victim = setup
        level = scenario.session.protocol
        # a CONNACK refusal of the probe is tried again for a while: the identities made above may not have
        # reached the target yet, and a target may throttle CONNECTs per client id (AWS IoT: 1/s)
        settle = max(2.0, 3 * scenario.registry_propagation)
        if plan.local is not None:
            await asyncio.sleep(scenario.registry_propagation)   # the target sees the identities made above
        await guarded("probe", prove_target(probe_identity, plan.endpoint, level=level, refused_for=settle))

        fleet = DeviceFleet(ctx, self.devices, connector=self.connector, endpoint=plan.endpoint, rng=self.rng,
                            reconnect_within=scenario.reconnect_within)
        operator = None
        if operator_identity is not None:
            operator = Operator(ctx, operator_identity, connector=self.connector, endpoint=plan.endpoint,
                                scenario=scenario, devices=self.devices, rng=self.rng, client_id=OPERATOR_THING)
        attackers = AttackersPart(ctx, planned, connector=self.connector, endpoint=plan.endpoint,
                                  ca_file=plan.server_ca, target=plan.target, victim=victim, level=level,
                                  propagation=scenario.registry_propagation, token_port=plan.token_port,
                                  token_world=self.identities.token_world)
        chaos = ChaosPart(ctx, scenario, fleet, identities=self.identities, upstream=plan.upstream, rng=self.rng,
                          ca_file=plan.ca_file, registry_enforced=plan.target != "mosquitto")
        rate = plan.rate if plan.rate is not None else scenario.rate
        schedule = connect_schedule(len(self.devices), rate)
        timeouts = [a.timeout * (2 if a.kind != "connect-flood" else 1) for a in scenario.attackers]
        deadline = (plan.run_duration + scenario.drain + scenario.reconnect_within + 2 * scenario.registry_propagation
                    + max(timeouts, default=0.0) + OPERATOR_READY_TIMEOUT + 60)
        ctx.start()
        try:
            async with asyncio.timeout(deadline):
                async with asyncio.TaskGroup() as tg:
                    if operator is not None:
                        tg.create_task(guarded("operator", operator.run()), name="operator")
                        await ctx.wait(operator.ready, timeout=OPERATOR_READY_TIMEOUT)
                    tg.create_task(guarded("devices", fleet.run(schedule)), name="devices")
                    tg.create_task(guarded("attackers", attackers.run()), name="attackers")
                    chaos_task = tg.create_task(guarded("chaos", chaos.run()), name="chaos")
                    tg.create_task(guarded("live display", self._ticker()), name="live display")
                    await self._timeline(chaos_task, attackers, operator)
        except TimeoutError:
            ctx.stop()
            self.errors.append(f"the run hit its hard deadline of {deadline:g} s (a part did not finish)")
        except BaseExceptionGroup as group:
            raise part_error("runner", group) from None
        elapsed = ctx.elapsed()
        if self.plan.on_tick is not None:
            guarded_call("live display", self.plan.on_tick, self.snapshot())
        await guarded("probe", prove_target(probe_identity, plan.endpoint, level=level, when="after the run",
                                            refused_for=settle))
        return guarded_call("report", build_result, plan, ctx, self.devices, operator, attackers.observations,
                            chaos.checks, elapsed=elapsed, errors=self.errors)

    def _prepare(self) -> Prepared:
        ids = self.identities
        plan = self.plan
        fleet = ids.fleet()
        self.devices = [SimDevice(f.thing, f.group, f.identity, f.directory, f.certificate_id) for f in fleet]
        probe = ids.probe(fleet)
        operator = ids.operator() if plan.target == "gateway" and plan.local is not None else None
        factory = AttackerFactory(ids, plan.local.now if plan.local else utcnow()) if plan.scenario.attackers else None
        planned = plan_attackers(plan.scenario.attackers, target=plan.target, factory=factory, ca_file=plan.ca_file,
                                 token_port=plan.token_port)
        victim = None
        if factory is not None and plan.local is not None and any(
                p.attacker is not None and p.attacker.kind in VICTIM_KINDS for p in planned):
            victim = factory.victim()
        return Prepared(probe, operator, planned, victim)

    async def _timeline(self, chaos_task: asyncio.Task, attackers: AttackersPart, operator: Operator | None) -> None:
        ctx, scenario = self.ctx, self.scenario
        await asyncio.sleep(max(0.0, self.plan.run_duration))
        ctx.publishing = False
        await asyncio.wait({chaos_task})
        await attackers.done.wait()
        await self._settle(scenario.chaos_end)
        await self._drain(operator)
        ctx.stop()

    async def _settle(self, chaos_end: float | None) -> None:
        """After chaos: wait until every legitimate device is back, at most until chaos end + reconnect_within."""
        if chaos_end is None:
            return
        ctx = self.ctx
        until = ctx.t0 + chaos_end + self.scenario.reconnect_within
        legit = [d for d in self.devices if d.legitimate and d.auth_refusal is None and not d.device_error]
        while ctx.clock() < until and not all(d.up.is_set() for d in legit):
            await asyncio.sleep(0.05)
        for d in legit:
            if not d.up.is_set():
                last = f" (last: {d.last_failure[1]})" if d.last_failure else ""
                d.problem(f"not reconnected within {self.scenario.reconnect_within:g} s after chaos ended{last}")

    async def _drain(self, operator: Operator | None) -> None:
        """Let QoS 1 publishes in flight finish, and the operator receive what was acknowledged."""
        ctx = self.ctx
        until = ctx.clock() + self.scenario.drain
        while ctx.clock() < until:
            pending = any(d.unacked for d in self.devices if d.legitimate)
            missing = operator is not None and operator.observing and any(
                operator.missing(d) for d in self.devices if d.legitimate and observable(d.group))
            if not pending and not missing:
                return
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ live display

    def snapshot(self) -> dict:
        s = self.ctx.stats
        return {"elapsed": self.ctx.elapsed(), "connected": s.connected, "devices": len(self.devices),
                "connects": s.connects, "attempts": s.connect_attempts, "messages": s.messages,
                "received": s.commands_received, "failures": dict(s.failures.most_common(8))}

    async def _ticker(self) -> None:
        while not self.ctx.stopped:
            if self.plan.on_tick is not None:
                self.plan.on_tick(self.snapshot())
            await self.ctx.sleep(self.plan.tick)


def run_fleet(plan: FleetPlan) -> FleetResult:
    """Run a plan on uvloop (a new event loop)."""
    import uvloop

    from devices.limits import raise_open_file_limit

    raise_open_file_limit(plan.devices * 2 + 1024)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(FleetRunner(plan).run())

