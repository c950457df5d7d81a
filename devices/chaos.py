"""Chaos and identity lifecycle for a fleet run.

* ``disconnect``: a share of the connected devices sends DISCONNECT and connects again (after its backoff);
* ``abort``: a share of them drops its socket without a word (a crash, a pulled cable) and reconnects;
* ``upstream-kill``: the broker behind the gateway is killed (SIGKILL) and started again after ``downtime`` --
  only when the simulator was given the broker it may kill (:class:`UpstreamControl`);
* rotation: a device makes a new key and CSR, gets a certificate for it, reconnects with it, and its old
  certificate is then deactivated; many at once is a rotation storm.

Choosing who is hit is pure (:func:`pick`), with the random source passed in. :class:`ChaosPart` is the
``chaos`` part of a run (each rotation its ``rotation`` part); a chaos action it cannot perform on this target
is a skipped check with its reason, never a silent no-op.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import random as _random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from devices.client import ClientOptions
from devices.evidence import classify_connect
from devices.fleet_devices import DeviceFleet, SimDevice, close_link
from devices.identity import (PREVIOUS_CERT, PREVIOUS_KEY, DeviceIdentity, make_key_and_csr,
                              rotate_device_files)
from devices.plan import UpstreamControl
from devices.report import Check, CheckStatus, Outcome
from devices.runtime import RunContext, guarded

if TYPE_CHECKING:
    from devices.run_identities import RunIdentities
    from devices.scenario import Chaos, Rotation, Scenario

T = TypeVar("T")


def pick(members: Sequence[T], fraction: float, rng: _random.Random) -> list[T]:
    """``ceil(fraction * n)`` members chosen at random (none for fraction 0), in their original order."""
    if fraction <= 0 or not members:
        return []
    n = min(len(members), math.ceil(fraction * len(members)))
    chosen = set(rng.sample(range(len(members)), n))
    return [m for i, m in enumerate(members) if i in chosen]


def spread_offsets(count: int, spread: float) -> list[float]:
    """Start offsets (seconds) for ``count`` actions spread evenly over ``spread`` seconds (0: all at once)."""
    if count <= 1 or spread <= 0:
        return [0.0] * count
    return [spread * i / (count - 1) for i in range(count)]


@dataclasses.dataclass(frozen=True, slots=True)
class Rotated:
    identity: DeviceIdentity          # the new one, in the device's own directory
    previous: DeviceIdentity          # the old pair, kept as device.previous.* until retired
    new_certificate_id: str
    old_certificate_id: str | None


def rotate_identity(device_dir: Path, thing: str, *, issuer, register: Callable[..., str],
                    old_certificate_id: str | None, now: dt.datetime, ca_file: str | None = None) -> Rotated:
    """Device side: new key + CSR; issuer side: sign and register it (ACTIVE, same thing and policies);
    device side again: install it, keeping the old pair as ``device.previous.*``. Deactivating the old
    certificate is the caller's next step, once the device is connected with the new one."""
    key, csr = make_key_and_csr(thing)
    cert = issuer.sign_device_csr(csr, thing, now=now)
    pem = issuer.pem_with_chain(cert)
    new_id = register(thing, cert, pem)
    rotate_device_files(device_dir, key, pem)
    identity = DeviceIdentity.load(device_dir, ca_file=ca_file, thing_name=thing)
    previous = DeviceIdentity(thing, str(device_dir / PREVIOUS_CERT), str(device_dir / PREVIOUS_KEY),
                              identity.ca_file)
    return Rotated(identity, previous, new_id, old_certificate_id)


# --------------------------------------------------------------------------------------------- the part

class ChaosPart:
    """Chaos actions and rotations at their times in the scenario; each rotation runs as its own task."""

    def __init__(self, ctx: RunContext, scenario: Scenario, fleet: DeviceFleet, *, identities: RunIdentities | None,
                 upstream: UpstreamControl | None, rng: _random.Random, ca_file: str | None,
                 registry_enforced: bool = True) -> None:
        self.ctx = ctx
        self.scenario = scenario
        self.fleet = fleet
        self.identities = identities if identities is not None and identities.local is not None else None
        self.upstream = upstream
        self.rng = rng
        self.ca_file = ca_file
        self.registry_enforced = registry_enforced   # the target refuses what the registry deactivated
        self.checks: list[Check] = []

    async def run(self) -> None:
        events = sorted([(c.at, "chaos", c) for c in self.scenario.chaos]
                        + [(r.at, "rotation", r) for r in self.scenario.rotations], key=lambda e: e[0])
        ctx = self.ctx
        async with asyncio.TaskGroup() as tg:
            for at, what, action in events:
                await ctx.sleep(ctx.t0 + at - ctx.clock())
                if ctx.stopped:
                    return
                if what == "rotation":
                    self._rotation(tg, action)
                elif action.kind == "upstream-kill":
                    await self._upstream_kill(action)
                else:
                    self._disrupt(tg, action)

    async def _upstream_kill(self, action: Chaos) -> None:
        name = f"chaos upstream-kill at {action.at:g} s"
        if self.upstream is None:
            self.checks.append(Check(name, CheckStatus.SKIPPED, "the simulator did not start the broker, so it does "
                                                                "not kill it"))
            return
        await asyncio.to_thread(self.upstream.kill)
        await self.ctx.sleep(action.downtime)
        await asyncio.to_thread(self.upstream.start)
        self.ctx.notes.append(f"upstream killed at {action.at:g} s, started again after {action.downtime:g} s")

    def _nobody(self, name: str, fraction: float, chosen: list) -> bool:
        """A chaos action or rotation that found no connected device to act on is a check that did not run."""
        if chosen or fraction <= 0:
            return False
        self.checks.append(Check(name, CheckStatus.SKIPPED, "no legitimate device was connected at that time"))
        return True

    def _disrupt(self, tg: asyncio.TaskGroup, action: Chaos) -> None:
        chosen = pick(self.fleet.live(), action.fraction, self.rng)
        if self._nobody(f"chaos {action.kind} at {action.at:g} s", action.fraction, chosen):
            return
        for dev in chosen:
            if action.kind == "abort":
                dev.link.abort()
            else:
                tg.create_task(self._clean_disconnect(dev), name=f"disconnect {dev.thing}")
        self.ctx.notes.append(f"chaos {action.kind} at {action.at:g} s: {len(chosen)} device(s)")

    async def _clean_disconnect(self, dev: SimDevice) -> None:
        async with dev.lock:  # no publish in flight: a clean disconnect must not lose one
            await dev.link.disconnect()

    def _rotation(self, tg: asyncio.TaskGroup, rotation: Rotation) -> None:
        if self.identities is None:
            self.checks.append(Check(f"rotation at {rotation.at:g} s", CheckStatus.SKIPPED,
                                     "needs a local registry to issue the new certificates"))
            return
        # only devices with a certificate rotate one (token and SigV4 devices have no directory of files)
        chosen = pick([d for d in self.fleet.live() if d.directory is not None], rotation.fraction, self.rng)
        if self._nobody(f"rotation at {rotation.at:g} s", rotation.fraction, chosen):
            return
        offsets = spread_offsets(len(chosen), rotation.spread)
        for dev, offset in zip(chosen, offsets):
            tg.create_task(guarded("rotation", self._rotate(dev, offset)), name=f"rotate {dev.thing}")
        self.ctx.notes.append(f"rotation at {rotation.at:g} s: {len(chosen)} device(s)"
                              + (f" over {rotation.spread:g} s" if rotation.spread else " at once"))
        if not self.registry_enforced:
            self.checks.append(Check(f"rotation at {rotation.at:g} s: previous certificates refused once deactivated",
                                     CheckStatus.SKIPPED, "a plain broker keeps no registry of certificate statuses"))

    async def _rotate(self, dev: SimDevice, delay: float) -> None:
        ctx = self.ctx
        ids = self.identities
        local = ids.local
        await ctx.sleep(delay)
        policies = await asyncio.to_thread(ids.attached_policies, dev.certificate_id) if dev.certificate_id else ()
        policies = policies or (await asyncio.to_thread(ids.policy_for, dev.group),)
        async with dev.lock:
            dev.may_connect.clear()
            try:
                rotated = await asyncio.to_thread(
                    rotate_identity, dev.directory, dev.thing, issuer=local.issuer,
                    register=lambda thing, cert, pem: ids.register(thing, cert, pem, "ACTIVE", policies),
                    old_certificate_id=dev.certificate_id, now=local.now, ca_file=self.ca_file)
                await ctx.sleep(self.scenario.registry_propagation)
                await close_link(dev.link)
                dev.identity = rotated.identity
                dev.certificate_id = rotated.new_certificate_id
                dev.link = self.fleet.new_link(dev)
                dev.rotations += 1
            finally:
                dev.may_connect.set()
        if not await ctx.wait(dev.up, timeout=self.scenario.reconnect_within):
            if not ctx.stopped:
                dev.problem(f"not connected with its rotated certificate within "
                            f"{self.scenario.reconnect_within:g} s")
            return
        if rotated.old_certificate_id:
            await asyncio.to_thread(ids.set_status, rotated.old_certificate_id, "INACTIVE")
            if not self.registry_enforced:
                return
            await ctx.sleep(self.scenario.registry_propagation)
            probe = self.fleet.connector.link(rotated.previous, self.fleet.endpoint, client_id=dev.thing,
                                              options=ClientOptions(protocol_level=dev.group.session.protocol,
                                                                    max_resends=0, connect_timeout=5.0))
            outcome = await probe.connect()
            ctx.stats.connect(outcome)
            kind, detail = classify_connect(outcome)
            if kind is Outcome.ALLOWED:
                dev.problem("its deactivated previous certificate still connects")
                await close_link(probe)
            elif not kind.refused:
                dev.problem(f"could not check that its deactivated previous certificate is refused ({detail})")
