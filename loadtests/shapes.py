"""Load shapes: how many devices (and attackers) over time, as pure functions of the elapsed seconds.

=================  =====================================================================  ==================
shape              what it does                                                           telemetry default
=================  =====================================================================  ==================
ramp               ramp to N connected devices at R/s, hold until the run time            every 30 s
connect-storm      all N devices at once (spawn rate N/s), hold                           every 30 s
telemetry          ramp at R/s, then steady QoS 1 telemetry from every device             every 1 s
reconnect-storm    ramp, hold; at ``storm_at`` every device drops (TCP RST) and           every 30 s
                   reconnects at once, new handshakes and all
attack-mix         ramp plus the attacker users for the whole run: every attack must be   every 5 s
                   refused, any acceptance fails the run
=================  =====================================================================  ==================

Pure: no Locust here (importing Locust patches the process for gevent). ``loadtests.users.IotgateShape`` is the
Locust ``LoadTestShape`` that runs one of them (``--iotgate-shape``) with Locust's own ``--users`` (devices),
``--spawn-rate`` and ``--run-time``.
"""

from __future__ import annotations

import dataclasses

from .plan import PlanError

__all__ = ["SHAPES", "STORM_MESSAGE", "ShapeParams", "ShapeSpec", "Tick", "default_storm_at", "shape_spec",
           "shape_tick"]

STORM_MESSAGE = "iotgate:reconnect-storm"


@dataclasses.dataclass(frozen=True, slots=True)
class ShapeParams:
    devices: int
    spawn_rate: float
    run_time: float
    attackers: int = 0
    storm_at: float | None = None   # reconnect-storm: seconds after the start (None: default_storm_at)


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    devices: int
    spawn_rate: float
    attackers: int = 0
    storm: bool = False             # every device drops now and reconnects (sent once by IotgateShape)

    @property
    def users(self) -> int:
        return self.devices + self.attackers


@dataclasses.dataclass(frozen=True, slots=True)
class ShapeSpec:
    name: str
    summary: str
    telemetry_interval: float
    attackers: bool = False
    storm: bool = False
    all_at_once: bool = False


SHAPES: dict[str, ShapeSpec] = {s.name: s for s in (
    ShapeSpec("ramp", "ramp to N connected devices at R/s and hold", 30.0),
    ShapeSpec("connect-storm", "every device at once, then hold", 30.0, all_at_once=True),
    ShapeSpec("telemetry", "ramp, then steady QoS 1 telemetry every second from every device", 1.0),
    ShapeSpec("reconnect-storm", "ramp, hold; every device drops and reconnects at once", 30.0, storm=True),
    ShapeSpec("attack-mix", "ramp plus attackers whose every attempt must be refused", 5.0, attackers=True),
)}


def default_storm_at(params: ShapeParams) -> float:
    """Once the ramp is done, 40 % into the hold: the devices have settled and have time to come back."""
    ramp = params.devices / params.spawn_rate if params.spawn_rate > 0 else 0.0
    return ramp + max(1.0, (params.run_time - ramp) * 0.4)


def shape_tick(spec: ShapeSpec, params: ShapeParams, elapsed: float) -> Tick | None:
    """What the run should be at ``elapsed`` seconds: None once the run time is over."""
    if elapsed >= params.run_time:
        return None
    rate = float(max(params.devices, 1)) if spec.all_at_once else params.spawn_rate
    attackers = params.attackers if spec.attackers else 0
    storm = False
    if spec.storm:
        at = params.storm_at if params.storm_at is not None else default_storm_at(params)
        storm = elapsed >= at
    return Tick(params.devices, rate, attackers, storm)


def shape_spec(name: str) -> ShapeSpec:
    try:
        return SHAPES[name]
    except KeyError:
        raise PlanError(f"unknown shape {name!r}: choose one of {', '.join(SHAPES)}") from None
