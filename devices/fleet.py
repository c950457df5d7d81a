"""The fleet runner: many simulated devices, attackers and chaos in one uvloop process, compared with what
the scenario expects.

    plan = FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", 8883), devices=100, scenario=scenario,
                     local=LocalPKI(store, registry, issuer, now))
    result = asyncio.run(FleetRunner(plan).run())     # or run_fleet(plan) on uvloop
    result.passed, result.mismatches, result.report   # report: the JSON document

Every device has its own identity (provisioned into the home when a local registry is given, else read from
the devices directory) and goes through ``get_connector(plan.connector).link(...)``. A run is bounded: at most
:data:`devices.scenario.MAX_DEVICES` devices, and an overall deadline of duration + drain + reconnect window.

Legitimate devices (group ``expect = "allowed"``) are mismatches when a CONNECT is refused for authorization
(CONNACK not authorized / bad credentials, TLS refusal) or they never connect, when a publish or subscription is
refused, when they are not back within ``reconnect_within`` seconds after the last chaos ended, or when a
QoS 1 sequence number is lost (never acknowledged, or acknowledged but never delivered to the observer).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509

from certs.authority import certificate_id
from devices.attackers import Attacker, AttackerFactory, attack, connect_detail, not_applicable
from devices.backoff import Backoff
from devices.chaos import UpstreamControl, pick, rotate_identity, spread_offsets
from devices.client import ClientOptions, ConnectOutcome, DisconnectNotice, Endpoint
from devices.connectors import get_connector
from devices.identity import DeviceIdentity, IdentityError
from devices.report import (PHASES, Gate, LatencyStats, Observation, check_slo, group_summary, mismatches)
from devices.scenario import (MAX_DEVICES, MAX_DURATION, MAX_RATE, Group, Scenario, allocate, connect_schedule,
                              payload, render, thing_pattern, topic_filter)

TARGETS = ("gateway", "mosquitto", "aws")
OPERATOR_THING = "sim-operator"
OPERATOR_POLICY_NAME = "iotgate-fleet-operator"
OPERATOR_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/cmd/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/*"},
    {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/*"}
  ]
}
"""
# CONNACK codes that mean "you may not" (not "not now"): a legitimate device meeting one is a mismatch
AUTH_REFUSALS_V3 = {0x04, 0x05}
AUTH_REFUSALS_V5 = {0x85, 0x86, 0x87, 0x8A, 0x8C}
MAX_SAMPLES = 200_000


class FleetError(Exception):
    """A run cannot start: the message says what to change."""


# --------------------------------------------------------------------------------------------- plan

def check_endpoint(target: str, host: str) -> None:
    """Refuse a non-loopback endpoint unless the target is AWS IoT Core."""
    if target not in TARGETS:
        raise FleetError(f"--target must be one of {', '.join(TARGETS)}, not {target!r}")
    if target == "aws":
        return
    if host == "localhost":
        return
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addresses = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except OSError as exc:
            raise FleetError(f"--endpoint {host}: cannot resolve it ({exc})") from None
    if not all(a.is_loopback for a in addresses):
        raise FleetError(f"--endpoint {host} is not a loopback address; a {target} target is simulated on this "
                         "machine only (use --target aws for AWS IoT Core)")


def parse_endpoint(text: str, default_port: int = 8883) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        return text.strip("[]"), default_port
    try:
        value = int(port)
    except ValueError:
        raise FleetError(f"--endpoint {text}: the port must be a number") from None
    if not 0 < value < 65536:
        raise FleetError(f"--endpoint {text}: the port must be 1..65535")
    return host.strip("[]"), value


def parse_rate(text: str) -> float:
    """``"50/s"``, ``"50"`` -> 50.0 connects per second."""
    raw = text.strip().removesuffix("/s")
    try:
        value = float(raw)
    except ValueError:
        raise FleetError(f"--rate {text}: write connects per second, e.g. 50/s") from None
    if not 0 < value <= MAX_RATE:
        raise FleetError(f"--rate {text}: must be more than 0 and at most {MAX_RATE:g}/s")
    return value


@dataclasses.dataclass
class LocalPKI:
    """The home's PKI and registry: lets the runner provision devices, attackers and rotations."""

    store: Any                        # certs.store.PKIStore
    registry: Any                     # gateway.registry.Registry
    issuer: Any                       # certs.authority.CertificateAuthority
    now: dt.datetime


@dataclasses.dataclass
class FleetPlan:
    target: str
    endpoint: Endpoint
    devices: int
    scenario: Scenario
    duration: float | None = None     # None: the scenario's
    rate: float | None = None         # connects per second; None: the scenario's (or all at once)
    connector: str = "native"
    local: LocalPKI | None = None
    devices_dir: Path | None = None   # identities when there is no local registry
    ca_file: str | None = None        # trust anchor for the server (AWS: Amazon Root CA 1)
    upstream: UpstreamControl | None = None
    slo: tuple[Gate, ...] = ()
    seed: int = 0
    on_tick: Callable[[dict], None] | None = None
    tick: float = 0.5

    def validate(self) -> None:
        check_endpoint(self.target, self.endpoint.host)
        if not 0 <= self.devices <= MAX_DEVICES:
            raise FleetError(f"--devices must be 0..{MAX_DEVICES}, not {self.devices}")
        if self.duration is not None and not 0 < self.duration <= MAX_DURATION:
            raise FleetError(f"--duration must be more than 0 and at most {MAX_DURATION:g} s")
        if self.local is None and self.devices_dir is None:
            raise FleetError("no identities: give a home with a registry, or a devices directory")


# --------------------------------------------------------------------------------------------- stats

class RunStats:
    """Counters and latency samples of one run (bounded)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.samples: dict[str, list[float]] = {p: [] for p in PHASES}
        self.refusals: collections.Counter[str] = collections.Counter()
        self.connect_attempts = 0
        self.connects = 0
        self.messages = 0            # publishes completed (QoS 1 acknowledged, QoS 0 written)
        self.received = 0
        self.errors = 0
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
            self.refusals[connect_detail(outcome)] += 1


@dataclasses.dataclass
class SimDevice:
    thing: str
    group: Group
    identity: DeviceIdentity
    directory: Path | None
    certificate_id: str | None
    link: Any = None
    up: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    lost: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    may_connect: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    backoff: Backoff = dataclasses.field(default_factory=lambda: Backoff(base=0.2, cap=3.0))
    ever_connected: bool = False
    auth_refusal: str = ""
    last_refusal: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)
    down_since: float | None = None
    seq: int = 0
    acked: set[int] = dataclasses.field(default_factory=set)
    unacked: set[int] = dataclasses.field(default_factory=set)
    responder: asyncio.Task | None = None
    rotations: int = 0

    def problem(self, text: str) -> None:
        if text not in self.problems and len(self.problems) < 5:
            self.problems.append(text)


@dataclasses.dataclass
class FleetResult:
    report: dict
    observations: list[Observation]
    mismatches: list[str]
    slo: list
    passed: bool
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def _cert_id_of(path: str) -> str | None:
    try:
        return certificate_id(x509.load_pem_x509_certificate(Path(path).read_bytes()))
    except (OSError, ValueError):
        return None


def _is_auth_refusal(outcome: ConnectOutcome, level: int) -> bool:
    if outcome.reason == "refused" and outcome.code is not None:
        return outcome.code in (AUTH_REFUSALS_V5 if level == 5 else AUTH_REFUSALS_V3)
    return outcome.reason in ("tls", "identity")


# --------------------------------------------------------------------------------------------- runner

class FleetRunner:
    def __init__(self, plan: FleetPlan, *, clock: Callable[[], float] = time.monotonic) -> None:
        plan.validate()
        self.plan = plan
        self.scenario = plan.scenario
        self.clock = clock
        self.stats = RunStats(clock)
        self.rng = random.Random(plan.seed)
        self.connector = get_connector(plan.connector)
        self.devices: list[SimDevice] = []
        self.observations: list[Observation] = []
        self.notes: list[str] = []
        self.stopping = asyncio.Event()
        self.publishing = True
        self.t0 = 0.0
        self.chaos_end_at: float | None = None
        self.observer = None
        self.observer_gap: float | None = None
        self.observed: dict[str, set[int]] = collections.defaultdict(set)
        self.command_ts: dict[str, float] = {}
        self._register_lock = asyncio.Lock()

    # ------------------------------------------------------------------ setup

    @property
    def duration(self) -> float:
        return self.plan.duration if self.plan.duration is not None else self.scenario.duration

    def _policy_for(self, group: Group) -> str:
        from devices.provisioning import ensure_policy

        return ensure_policy(self.plan.local.registry, group.policy)

    def _provision(self, names: list[str], policy: str) -> None:
        from devices.provisioning import default_workers, provision_fleet

        local = self.plan.local
        workers = 1 if len(names) < 200 else default_workers()
        provision_fleet(local.store, local.registry, local.issuer, names, policies=[policy], key_type="ec-p256",
                        workers=workers, now=local.now, days=30)

    def _identity(self, directory: Path, thing: str) -> DeviceIdentity:
        return DeviceIdentity.load(directory, ca_file=self.plan.ca_file, thing_name=thing)

    def setup(self) -> None:
        """Identities for every group (provisioned when a local registry is given)."""
        from devices.provisioning import thing_names

        counts = allocate(self.scenario.groups, self.plan.devices)
        total = sum(counts.values())
        if total > MAX_DEVICES:
            raise FleetError(f"the scenario asks for {total} devices; at most {MAX_DEVICES} per run")
        local = self.plan.local
        devices_dir = local.store.paths.devices if local else self.plan.devices_dir
        for group in self.scenario.groups:
            names = thing_names(group.thing_prefix, counts[group.name])
            if not names:
                continue
            if local is not None:
                self._provision(names, self._policy_for(group))
            for thing in names:
                directory = Path(devices_dir) / thing
                try:
                    identity = self._identity(directory, thing)
                except IdentityError as exc:
                    raise FleetError(f"group {group.name}: {exc}") from None
                self.devices.append(SimDevice(thing, group, identity, directory, _cert_id_of(identity.cert_file)))

    def _register(self, thing: str, cert, pem: bytes, status: str = "ACTIVE", policies: tuple[str, ...] = ()) -> str:
        from devices.provisioning import ensure_policy, register_certificate

        local = self.plan.local
        pols = list(policies) or [ensure_policy(local.registry, None)]
        return register_certificate(local.registry, thing, cert, pem, local.issuer.ca_id, pols, status=status)

    def _make_attackers(self) -> list[tuple[Attacker | None, Any, str]]:
        local = self.plan.local
        made: list[tuple[Attacker | None, Any, str]] = []
        factory = None
        if local is not None:
            factory = AttackerFactory(local.store.home / "fleet-run" / "attackers", local.store.root_pem(),
                                      local.issuer, self._register, local.now,
                                      victims=[d.thing for d in self.devices] or ["sim-victim-00001"])
        for group in self.scenario.attackers:
            skip = not_applicable(group.kind, self.plan.target, local is not None)
            for i in range(1, group.count + 1):
                if skip:
                    made.append((None, group, skip))
                    continue
                if factory is None:  # remote target: only identity-less attacks and a foreign CA
                    factory = AttackerFactory(Path.home() / ".iotgate-fleet-scratch", b"", None, None,
                                              dt.datetime.now(dt.UTC))
                attacker = factory.make(group, i)
                if attacker.identity is not None and self.plan.ca_file:
                    attacker = dataclasses.replace(
                        attacker, identity=dataclasses.replace(attacker.identity, ca_file=self.plan.ca_file))
                made.append((attacker, group, ""))
        return made

    def _ensure_operator(self) -> DeviceIdentity | None:
        """An operator identity (observes telemetry, sends commands) when the gateway and a registry are ours."""
        local = self.plan.local
        if local is None or self.plan.target != "gateway":
            return None
        from gateway.registry import NotFound

        registry = local.registry
        try:
            registry.get_policy(OPERATOR_POLICY_NAME)
        except NotFound:
            registry.create_policy(OPERATOR_POLICY_NAME, OPERATOR_POLICY)
        self._provision([OPERATOR_THING], OPERATOR_POLICY_NAME)
        return self._identity(local.store.paths.devices / OPERATOR_THING, OPERATOR_THING)

    # ------------------------------------------------------------------ devices

    def _options(self, group: Group) -> ClientOptions:
        s = group.session
        # max_resends None: unacknowledged QoS 1 publishes are re-sent on every reconnect [MQTT-4.4.0-1], which
        # is also what paho, aiomqtt and the CRT do, so one setting means the same through every connector.
        return ClientOptions(protocol_level=s.protocol, keep_alive=s.keep_alive, clean_start=s.clean_start,
                             session_expiry=s.session_expiry, connect_timeout=10.0)

    def _new_link(self, dev: SimDevice) -> Any:
        def on_disconnect(notice: DisconnectNotice, dev=dev) -> None:
            self._on_lost(dev, notice)

        return self.connector.link(dev.identity, self.plan.endpoint, client_id=dev.thing,
                                   options=self._options(dev.group), on_disconnect=on_disconnect)

    def _on_lost(self, dev: SimDevice, notice: DisconnectNotice) -> None:
        if dev.up.is_set():
            self.stats.connected -= 1
        dev.up.clear()
        dev.lost.set()
        if dev.down_since is None:
            dev.down_since = self.clock()
        if notice.reason not in ("client", "aborted"):
            self.stats.refusals[f"disconnected: {notice.reason} {notice.detail}".strip()[:70]] += 1

    async def _wait(self, event: asyncio.Event, timeout: float | None = None) -> bool:
        """Wait for ``event`` or the end of the run; True when the event is set."""
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return event.is_set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), max(0.0, seconds))

    async def _device_main(self, dev: SimDevice, delay: float) -> None:
        await self._sleep(delay)
        dev.may_connect.set()
        dev.link = self._new_link(dev)
        publisher = asyncio.create_task(self._publisher(dev), name=f"publish {dev.thing}") \
            if dev.group.publish else None
        try:
            while not self.stopping.is_set():
                if not await self._wait(dev.may_connect):
                    break
                dev.lost.clear()
                link = dev.link
                outcome = await link.connect()
                self.stats.connect(outcome)
                if not outcome.ok:
                    dev.last_refusal = connect_detail(outcome)
                    if _is_auth_refusal(outcome, dev.group.session.protocol) and not dev.auth_refusal:
                        dev.auth_refusal = dev.last_refusal
                    await self._sleep(dev.backoff.next_delay())
                    continue
                dev.backoff.connected()
                if dev.ever_connected:
                    self.stats.reconnects += 1
                dev.ever_connected = True
                dev.down_since = None
                self.stats.connected += 1
                dev.up.set()
                await self._subscribe(dev)
                await self._wait(dev.lost)
                dev.backoff.disconnected()
                if not self.stopping.is_set() and dev.may_connect.is_set():
                    await self._sleep(dev.backoff.next_delay())
        finally:
            if publisher is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher

    async def _subscribe(self, dev: SimDevice) -> None:
        group = dev.group
        filters = [render(f, thing=dev.thing, group=group.name) for f in group.subscribe]
        if group.commands is not None:
            command = render(group.commands.topic, thing=dev.thing, group=group.name)
            if command not in filters:
                filters.append(command)
            if dev.responder is None or dev.responder.done():
                dev.responder = asyncio.create_task(self._responder(dev, dev.link), name=f"respond {dev.thing}")
        if not filters:
            return
        result = await dev.link.subscribe(*filters, qos=1, timeout=10.0)
        self.stats.sample("suback", result.latency)
        if not result.ok and result.reason in ("refused", "granted"):
            codes = ",".join(f"0x{c:02X}" for c in result.reason_codes)
            self.stats.refusals[f"SUBACK {codes}"] += 1
            dev.problem(f"subscription refused (SUBACK {codes})")

    async def _publisher(self, dev: SimDevice) -> None:
        spec = dev.group.publish
        assert spec is not None
        next_at = self.clock() + self.rng.random() * spec.interval
        while self.publishing and not self.stopping.is_set():
            await self._sleep(next_at - self.clock())
            next_at += spec.interval
            if not self.publishing or self.stopping.is_set():
                break
            if not dev.up.is_set():
                if spec.qos == 0 or not await self._wait(dev.up, timeout=1.0):
                    continue
            async with dev.lock:
                dev.seq += 1
                seq = dev.seq
                topic = render(spec.topic, thing=dev.thing, group=dev.group.name, seq=seq)
                if spec.qos == 1:
                    dev.unacked.add(seq)
                while True:
                    data = payload(spec, thing=dev.thing, group=dev.group.name, seq=seq, ts=time.time())
                    result = await dev.link.publish(topic, data, qos=spec.qos, timeout=10.0)
                    if result.ok:
                        self.stats.messages += 1
                        if spec.qos == 1:
                            self.stats.sample("puback", result.latency)
                            dev.unacked.discard(seq)
                            dev.acked.add(seq)
                        break
                    if result.reason in ("refused", "abandoned"):
                        code = f" 0x{result.reason_code:02X}" if result.reason_code is not None else ""
                        self.stats.refusals[f"PUBACK{code} ({result.reason})"] += 1
                        dev.problem(f"publish to {topic} {result.reason}{code}")
                        dev.unacked.discard(seq)
                        break
                    if spec.qos == 0 or self.stopping.is_set():
                        break
                    # not confirmed (connection lost): the same sequence number again once connected
                    if not await self._wait(dev.up, timeout=self.scenario.reconnect_within):
                        break

    async def _responder(self, dev: SimDevice, link) -> None:
        commands = dev.group.commands
        assert commands is not None
        command = render(commands.topic, thing=dev.thing, group=dev.group.name)
        response = render(commands.response, thing=dev.thing, group=dev.group.name)
        async for message in link.messages():
            if message.topic == command:
                self.stats.received += 1
                result = await link.publish(response, message.payload, qos=1, timeout=10.0)
                if not result.ok and result.reason == "refused":
                    dev.problem(f"command response to {response} refused")

    # ------------------------------------------------------------------ operator

    async def _operator(self, identity: DeviceIdentity) -> None:
        # the scenario's protocol level, so the operator speaks what every connector under test speaks
        options = ClientOptions(protocol_level=self.scenario.session.protocol, keep_alive=60)

        def on_disconnect(notice: DisconnectNotice) -> None:
            if not self.stopping.is_set() and self.observer_gap is None:
                self.observer_gap = self.clock() - self.t0

        link = self.connector.link(identity, self.plan.endpoint, client_id=OPERATOR_THING, options=options,
                                   on_disconnect=on_disconnect)
        self.observer = link
        outcome = await link.connect()
        self.stats.connect(outcome)
        if not outcome.ok:
            self.notes.append(f"the observer could not connect ({connect_detail(outcome)}): end-to-end latency "
                              "and delivery were not measured")
            self.observer = None
            return
        filters = set()
        patterns = []
        for group in self.scenario.groups:
            if group.publish is not None and group.expect == "allowed":
                filters.add(topic_filter(group.publish.topic))
                patterns.append(thing_pattern(group.publish.topic))
            if group.commands is not None:
                filters.add(topic_filter(group.commands.response))
        if filters:
            result = await link.subscribe(*sorted(filters), qos=1, timeout=10.0)
            if not result.ok:
                self.notes.append(f"the observer's subscription was refused ({result.reason_codes})")
        commanders = [asyncio.create_task(self._commander(link, d)) for d in self.devices if d.group.commands]
        try:
            async for message in link.messages():
                now = time.time()
                try:
                    body = orjson.loads(message.payload)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(body, dict):
                    continue
                if "cmd" in body:
                    sent = self.command_ts.pop(str(body["cmd"]), None)
                    if sent is not None:
                        self.stats.sample("command", now - sent)
                    continue
                ts, seq, thing = body.get("ts"), body.get("seq"), body.get("thing")
                if isinstance(ts, (int, float)):
                    self.stats.sample("e2e", now - ts)
                if isinstance(seq, int) and isinstance(thing, str):
                    self.observed[thing].add(seq)
        finally:
            for task in commanders:
                task.cancel()

    async def _commander(self, link, dev: SimDevice) -> None:
        commands = dev.group.commands
        topic = render(commands.topic, thing=dev.thing, group=dev.group.name)
        n = 0
        await self._sleep(self.rng.random() * commands.interval)
        while self.publishing and not self.stopping.is_set():
            if dev.up.is_set() and len(self.command_ts) < 10_000:
                n += 1
                key = f"{dev.thing}:{n}"
                self.command_ts[key] = time.time()
                await link.publish(topic, orjson.dumps({"cmd": key}), qos=1, timeout=10.0)
            await self._sleep(commands.interval)

    # ------------------------------------------------------------------ chaos and rotation

    def _live(self) -> list[SimDevice]:
        return [d for d in self.devices if d.up.is_set() and d.group.expect == "allowed"]

    async def _chaos(self) -> None:
        events = sorted([(c.at, "chaos", c) for c in self.scenario.chaos]
                        + [(r.at, "rotation", r) for r in self.scenario.rotations], key=lambda e: e[0])
        for at, what, action in events:
            await self._sleep(self.t0 + at - self.clock())
            if self.stopping.is_set():
                return
            if what == "rotation":
                await self._rotation(action)
                continue
            if action.kind == "upstream-kill":
                if self.plan.upstream is None:
                    self.notes.append(f"chaos upstream-kill at {at:g} s skipped: the simulator did not start the "
                                      "broker, so it does not kill it")
                    continue
                await asyncio.to_thread(self.plan.upstream.kill)
                await self._sleep(action.downtime)
                await asyncio.to_thread(self.plan.upstream.start)
                self.notes.append(f"upstream killed at {at:g} s, started again after {action.downtime:g} s")
                continue
            chosen = pick(self._live(), action.fraction, self.rng)
            for dev in chosen:
                if action.kind == "abort":
                    dev.link.abort()
                else:
                    asyncio.create_task(self._clean_disconnect(dev))
            self.notes.append(f"chaos {action.kind} at {at:g} s: {len(chosen)} device(s)")

    async def _clean_disconnect(self, dev: SimDevice) -> None:
        async with dev.lock:  # no publish in flight: a clean disconnect must not lose one
            await dev.link.disconnect()

    async def _rotation(self, rotation) -> None:
        if self.plan.local is None:
            self.notes.append(f"rotation at {rotation.at:g} s skipped: needs a local registry")
            return
        chosen = pick(self._live(), rotation.fraction, self.rng)
        offsets = spread_offsets(len(chosen), rotation.spread)
        tasks = [asyncio.create_task(self._rotate(dev, off)) for dev, off in zip(chosen, offsets)]
        self.notes.append(f"rotation at {rotation.at:g} s: {len(chosen)} device(s)"
                          + (f" over {rotation.spread:g} s" if rotation.spread else " at once"))
        await asyncio.gather(*tasks)

    async def _rotate(self, dev: SimDevice, delay: float) -> None:
        await self._sleep(delay)
        local = self.plan.local
        policies = tuple(p.name for p in await asyncio.to_thread(local.registry.list_attached_policies,
                                                                  dev.certificate_id)) if dev.certificate_id else ()
        policies = policies or (self._policy_for(dev.group),)
        async with dev.lock:
            dev.may_connect.clear()
            try:
                async with self._register_lock:
                    rotated = await asyncio.to_thread(
                        rotate_identity, dev.directory, dev.thing, issuer=local.issuer,
                        register=lambda thing, cert, pem: self._register(thing, cert, pem, "ACTIVE", policies),
                        old_certificate_id=dev.certificate_id, now=local.now, ca_file=self.plan.ca_file)
                await self._sleep(self.scenario.registry_propagation)
                with contextlib.suppress(Exception):
                    await dev.link.disconnect()
                if dev.responder is not None:
                    dev.responder.cancel()
                    dev.responder = None
                dev.identity = rotated.identity
                dev.certificate_id = rotated.new_certificate_id
                dev.link = self._new_link(dev)
                dev.rotations += 1
            finally:
                dev.may_connect.set()
            if not await self._wait(dev.up, timeout=self.scenario.reconnect_within):
                dev.problem(f"not connected with its rotated certificate within "
                            f"{self.scenario.reconnect_within:g} s")
                return
        if rotated.old_certificate_id:
            await asyncio.to_thread(local.registry.set_certificate_status, rotated.old_certificate_id, "INACTIVE")
            await self._sleep(self.scenario.registry_propagation)
            probe = self.connector.link(rotated.previous, self.plan.endpoint, client_id=dev.thing,
                                        options=ClientOptions(protocol_level=dev.group.session.protocol,
                                                              max_resends=0, connect_timeout=5.0))
            outcome = await probe.connect()
            self.stats.connect(outcome)
            if outcome.ok:
                dev.problem("its deactivated previous certificate still connects")
                with contextlib.suppress(Exception):
                    await probe.disconnect()

    # ------------------------------------------------------------------ attackers

    async def _attackers(self, made) -> None:
        await self._sleep(self.scenario.registry_propagation)
        sem = asyncio.Semaphore(50)

        async def one(attacker: Attacker, group) -> Observation:
            async with sem:
                return await attack(attacker, group, connector=self.connector, endpoint=self.plan.endpoint,
                                    ca_file=self.plan.ca_file or attacker_ca(self.plan), record=self.stats.connect)

        tasks = []
        for attacker, group, skip in made:
            if attacker is None:
                self.observations.append(Observation(group.name, f"atk-{group.kind}", "refused", "refused",
                                                     skipped=skip))
            else:
                tasks.append(one(attacker, group))
        self.observations.extend(await asyncio.gather(*tasks))

    # ------------------------------------------------------------------ run

    def snapshot(self) -> dict:
        s = self.stats
        return {"elapsed": self.clock() - self.t0 if self.t0 else 0.0, "connected": s.connected,
                "devices": len(self.devices), "connects": s.connects, "attempts": s.connect_attempts,
                "messages": s.messages, "received": s.received, "refusals": dict(s.refusals.most_common(8))}

    async def _ticker(self) -> None:
        while not self.stopping.is_set():
            if self.plan.on_tick is not None:
                self.plan.on_tick(self.snapshot())
            await self._sleep(self.plan.tick)

    async def run(self) -> FleetResult:
        await asyncio.to_thread(self.setup)
        operator = await asyncio.to_thread(self._ensure_operator)
        made = await asyncio.to_thread(self._make_attackers)
        scenario = self.scenario
        rate = self.plan.rate if self.plan.rate is not None else scenario.rate
        schedule = connect_schedule(len(self.devices), rate)
        deadline = self.duration + scenario.drain + scenario.reconnect_within + scenario.registry_propagation + 60
        await asyncio.sleep(scenario.registry_propagation if self.plan.local else 0)
        self.t0 = self.clock()
        background = [asyncio.create_task(self._ticker(), name="ticker")]
        observer_task = asyncio.create_task(self._operator(operator), name="operator") if operator else None
        if observer_task is not None:
            await asyncio.sleep(0.2)
        tasks = [asyncio.create_task(self._device_main(d, delay), name=f"device {d.thing}")
                 for d, delay in zip(self.devices, schedule)]
        attackers = asyncio.create_task(self._attackers(made), name="attackers")
        chaos = asyncio.create_task(self._chaos(), name="chaos")
        chaos_end = scenario.chaos_end
        try:
            async with asyncio.timeout(deadline):
                await self._sleep(self.duration)
                self.publishing = False
                await chaos
                await attackers
                await self._settle(chaos_end)
                await self._drain()
        except TimeoutError:
            self.notes.append(f"the run hit its hard deadline of {deadline:g} s")
        finally:
            elapsed = self.clock() - self.t0
            self.stopping.set()
            for task in (attackers, chaos):
                task.cancel()
            await asyncio.gather(*tasks, attackers, chaos, return_exceptions=True)
            await asyncio.gather(*(self._close(d.link) for d in self.devices if d.link is not None))
            for d in self.devices:
                if d.responder is not None:
                    d.responder.cancel()
            if self.observer is not None:
                await self._close(self.observer)
            if observer_task is not None:
                observer_task.cancel()
                await asyncio.gather(observer_task, return_exceptions=True)
            for task in background:
                task.cancel()
            if self.plan.on_tick is not None:
                self.plan.on_tick(self.snapshot())
        return self._result(elapsed, chaos_end)

    async def _settle(self, chaos_end: float | None) -> None:
        """After chaos: wait until every legitimate device is back, at most until chaos end + reconnect_within."""
        if chaos_end is None:
            return
        until = self.t0 + chaos_end + self.scenario.reconnect_within
        legit = [d for d in self.devices if d.group.expect == "allowed" and not d.auth_refusal]
        while self.clock() < until and not all(d.up.is_set() for d in legit):
            await asyncio.sleep(0.05)
        self.chaos_end_at = until
        for d in legit:
            if not d.up.is_set():
                d.problem(f"not reconnected within {self.scenario.reconnect_within:g} s after chaos ended"
                          + (f" (last: {d.last_refusal})" if d.last_refusal else ""))

    async def _drain(self) -> None:
        """Let QoS 1 publishes in flight finish, and the observer receive what was acknowledged."""
        until = self.clock() + self.scenario.drain
        while self.clock() < until:
            pending = any(d.unacked for d in self.devices if d.group.expect == "allowed")
            missing = self.observer is not None and self.observer_gap is None and any(
                d.acked - self.observed.get(d.thing, set()) for d in self.devices
                if d.group.expect == "allowed" and _observable(d.group))
            if not pending and not missing:
                return
            await asyncio.sleep(0.05)

    async def _close(self, link) -> None:
        try:
            if link.connected:
                await asyncio.wait_for(link.disconnect(), 2.0)
        except Exception:  # noqa: BLE001 - closing at the end of a run: whatever state the link is in
            link.abort()

    def _result(self, elapsed: float, chaos_end: float | None) -> FleetResult:
        observations = list(self.observations)
        if self.observer_gap is not None:
            self.notes.append(f"the observer lost its connection at {self.observer_gap:.1f} s: delivery of "
                              "acknowledged messages was not checked (acknowledgements still were)")
        for d in self.devices:
            problems = list(d.problems)
            if d.group.expect == "allowed":
                if d.unacked:
                    problems.append(f"lost QoS 1 sequence number(s) {_ranges(d.unacked)} (never acknowledged)")
                if self.observer is not None and self.observer_gap is None and _observable(d.group):
                    missing = d.acked - self.observed.get(d.thing, set())
                    if missing:
                        problems.append(f"lost QoS 1 sequence number(s) {_ranges(missing)} (acknowledged, never "
                                        "delivered)")
            refused = bool(d.auth_refusal) or not d.ever_connected
            detail = d.auth_refusal or (d.last_refusal if not d.ever_connected else "")
            if d.rotations:
                detail = detail or f"rotated x{d.rotations}"
            observations.append(Observation(d.group.name, d.thing, d.group.expect,
                                            "refused" if refused else "allowed", detail,
                                            tuple(problems) if d.group.expect == "allowed" else ()))
        found = mismatches(observations)
        s = self.stats
        latency = {p: LatencyStats.of(v) for p, v in s.samples.items()}
        seconds = max(elapsed, 1e-9)
        legit = [d for d in self.devices if d.group.expect == "allowed"]
        metrics = {"latency": latency, "samples": s.samples, "errors": len(found), "mismatches": len(found),
                   "refusals": sum(s.refusals.values()), "lost": sum(len(d.unacked) for d in legit),
                   "connects": s.connects, "messages": s.messages, "connects_per_s": s.connects / seconds,
                   "messages_per_s": s.messages / seconds,
                   "connected_ratio": (sum(1 for d in legit if d.ever_connected) / len(legit)) if legit else 1.0}
        slo = check_slo(self.plan.slo, metrics)
        passed = not found and all(r.passed for r in slo)
        report = {
            "scenario": self.scenario.name, "target": self.plan.target,
            "endpoint": f"{self.plan.endpoint.host}:{self.plan.endpoint.port}", "connector": self.plan.connector,
            "passed": passed,
            "summary": {"devices": len(self.devices), "attackers": sum(1 for o in self.observations),
                        "seconds": round(elapsed, 3), "connects": s.connects, "connect_attempts": s.connect_attempts,
                        "connects_per_s": round(s.connects / seconds, 2), "messages": s.messages,
                        "messages_per_s": round(s.messages / seconds, 2), "received_commands": s.received,
                        "reconnects": s.reconnects, "lost": metrics["lost"],
                        "chaos_end_s": chaos_end, "reconnect_within_s": self.scenario.reconnect_within},
            "latency": {p: st.as_ms() for p, st in latency.items()},
            "refusals": dict(s.refusals.most_common()),
            "groups": group_summary(observations),
            "mismatches": found,
            "slo": [{"gate": r.gate.text, "value": r.value, "passed": r.passed} for r in slo],
            "notes": self.notes,
        }
        return FleetResult(report, observations, found, slo, passed, s.samples)


def _observable(group: Group) -> bool:
    return group.publish is not None and group.publish.qos == 1 and "{seq}" in group.publish.payload \
        and "{thing}" in group.publish.payload


def _ranges(values: set[int]) -> str:
    items = sorted(values)
    shown = ", ".join(map(str, items[:10]))
    return shown + (f" ... ({len(items)} in all)" if len(items) > 10 else "")


def attacker_ca(plan: FleetPlan) -> str:
    if plan.local is not None:
        return str(plan.local.store.paths.root_cert)
    raise FleetError("no CA file for the server: pass --ca-file")


def run_fleet(plan: FleetPlan) -> FleetResult:
    """Run a plan on uvloop (a new event loop)."""
    import uvloop

    from devices.limits import raise_open_file_limit

    raise_open_file_limit(plan.devices * 2 + 1024)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(FleetRunner(plan).run())
