"""Locust users of a device fleet: :class:`DeviceUser` (one provisioned identity per user) and
:class:`AttackerUser` (the attacker mix), with the per-process state they share (:class:`WorkerRun`).

A worker's life: on ``test_start`` it builds a :class:`WorkerRun` from the options the master forwarded --
its slice of the home's identities, the e2e observer, the attacker slots -- and on ``test_stop`` it ends it.
A problem found there (this worker's home differs from the master's, an index outside ``--expect-workers``)
is reported to the master, which stops the run with exit code 2; users that start anyway fail at once with
the reason instead of sharing or guessing identities.

DeviceUser: on start it takes the next free identity of its worker's slice, connects (``tcp_connect``,
``tls_handshake``, ``connack`` rows), subscribes to its command topic (``suback``), then publishes QoS 1
telemetry every ``telemetry_interval`` (``puback``; each publish is also an ``e2e`` probe when an observer or
the device itself reads it back). A connection the target ends is a ``connection`` failure and the device
reconnects with jittered backoff; in a reconnect storm the drop is the device's own and is not counted.
On stop it disconnects and gives its identity back to the slice.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import time
from pathlib import Path

import gevent
import gevent.event
import gevent.pool
from locust import LoadTestShape, User, constant, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from devices.backoff import Backoff
from devices.client import ClientOptions, DisconnectNotice
from devices.identity import DeviceIdentity
from devices.limits import raise_open_file_limit, source_addresses
from devices.token_attacks import TokenWorld, TokenWorldError
from devices.token_devices import CredentialTLS, SigV4Signer, TokenIdentity
from devices.transport import DeviceTLS, Endpoint
from gateway.mqtt import Publish

from .attacks import VerdictKind, run_attack
from .device import GeventDevice
from .events import AttackAccepted, AttackInconclusive, ConnectionLost, IdentityProblem, NotDelivered, Row, ack_row, \
    connect_rows
from .identities import LoadtestDirs, load_attack_slot, load_observer, pool_names
from .plan import TOKEN_ATTACKS, PlanError, Settings, attack_kinds_for, identities_needed, names_digest, probe_topic_filter, \
    worker_slice
from .preflight import check_pool, check_reachable
from .shapes import SHAPES, STORM_MESSAGE, ShapeParams, ShapeSpec, shape_spec, shape_tick

__all__ = ["AttackerUser", "DeviceUser", "IotgateShape", "WorkerRun", "current_run", "settings_from_options"]

logger = logging.getLogger("iotgate.loadtest")

ERROR_MESSAGE = "iotgate:worker-error"
_SEQ_DIGITS = 10
_MAX_PROBES = 500_000
_runs: dict[int, WorkerRun] = {}


def _fire(environment, row: Row, response_length: int = 0) -> None:
    environment.events.request.fire(request_type=row.request_type, name=row.name, response_time=row.ms,
                                    response_length=response_length, exception=row.exception, context={})


# --------------------------------------------------------------------------------------------- options

@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("iotgate", "Device fleet options (`iotgate loadtest` sets them all)")
    group.add_argument("--iotgate-target", choices=["gateway", "mosquitto", "aws"], default="gateway",
                       help="What the devices connect to")
    group.add_argument("--iotgate-endpoint", default="127.0.0.1:8883", metavar="HOST[:PORT]",
                       help="Where the devices connect")
    group.add_argument("--iotgate-server-name", default="", help="Name the server certificate must carry")
    group.add_argument("--iotgate-ca-file", default="", help="CA for the server instead of each root-ca.pem")
    group.add_argument("--iotgate-auth", default="certificate", help="device users: certificate, token or sigv4")
    group.add_argument("--iotgate-token-port", type=int, default=0,
                       help="the gateway's token listener, for the token and SigV4 attackers (0: none)")
    group.add_argument("--iotgate-prefix", default="device-", help="Thing-name prefix of the identity pool")
    group.add_argument("--iotgate-pool-size", type=int, default=0, help="Identities the master counted")
    group.add_argument("--iotgate-pool-digest", default="", help="Digest of their names")
    group.add_argument("--iotgate-shape", choices=list(SHAPES), default="ramp", help="Load shape")
    group.add_argument("--iotgate-attackers", type=int, default=0, help="Attacker users (attack-mix)")
    group.add_argument("--iotgate-storm-at", type=float, default=None, help="reconnect-storm: seconds in")
    group.add_argument("--iotgate-mqtt", choices=["3.1.1", "5"], default="5", help="MQTT version")
    group.add_argument("--iotgate-keepalive", type=int, default=60, help="MQTT keep alive, seconds")
    group.add_argument("--iotgate-telemetry-interval", type=float, default=-1.0,
                       help="Seconds between QoS 1 publishes of a device (0: none; default: the shape's)")
    group.add_argument("--iotgate-payload-bytes", type=int, default=64, help="Telemetry payload size")
    group.add_argument("--iotgate-e2e", choices=["auto", "observer", "self", "off"], default="auto",
                       help="Who reads the probes back: one observer per worker, each device itself, nobody")
    group.add_argument("--iotgate-run-id", default="", help="Topic level of this run's probes")
    group.add_argument("--iotgate-keep-contexts", action="store_true",
                       help="Keep each identity's SSLContext between connects (CPU for memory)")


def settings_from_options(options, workers: int) -> Settings:
    from .plan import parse_endpoint

    target = options.iotgate_target
    host, port = parse_endpoint(options.iotgate_endpoint)
    interval = options.iotgate_telemetry_interval
    if interval < 0:
        interval = SHAPES[options.iotgate_shape].telemetry_interval
    e2e = options.iotgate_e2e
    if e2e == "auto":
        e2e = {"gateway": "observer", "mosquitto": "self", "aws": "off"}[target]
    return Settings(target=target, host=host, port=port, server_name=options.iotgate_server_name or None,
                    ca_file=options.iotgate_ca_file or None, prefix=options.iotgate_prefix,
                    pool_size=options.iotgate_pool_size, pool_digest=options.iotgate_pool_digest,
                    workers=max(1, workers), protocol_level=5 if options.iotgate_mqtt == "5" else 4,
                    keep_alive=options.iotgate_keepalive, telemetry_interval=interval,
                    payload_bytes=options.iotgate_payload_bytes, e2e=e2e, run_id=options.iotgate_run_id or "run",
                    keep_contexts=options.iotgate_keep_contexts,
                    token_port=getattr(options, "iotgate_token_port", 0) or None,
                    auth=getattr(options, "iotgate_auth", "certificate") or "certificate")


def _home() -> Path:
    return Path(os.environ.get("IOTGATE_HOME") or ".iotgate")


# --------------------------------------------------------------------------------------------- probes

class Probes:
    """Probes in flight: (thing, seq) -> when written. Delivered ones become ``e2e`` successes, ones not
    delivered within ``timeout`` ``e2e`` failures (swept every second)."""

    def __init__(self, environment, timeout: float, clock=time.perf_counter) -> None:
        self.environment = environment
        self.timeout = timeout
        self.clock = clock
        self._pending: dict[tuple[str, int], float] = {}
        self.untracked = 0

    def sent(self, thing: str, seq: int) -> bool:
        if len(self._pending) >= _MAX_PROBES:
            self.untracked += 1
            return False
        self._pending[(thing, seq)] = self.clock()
        return True

    def cancel(self, thing: str, seq: int) -> None:
        self._pending.pop((thing, seq), None)

    def delivered(self, publish: Publish, token: str) -> None:
        parts = publish.topic.split("/")
        if len(parts) != 4 or parts[3] != token:
            return
        try:
            seq = int(bytes(publish.payload[:_SEQ_DIGITS]))
        except ValueError:
            return
        sent = self._pending.pop((parts[1], seq), None)
        if sent is not None:  # a duplicate, or one already counted as not delivered, is ignored
            _fire(self.environment, Row("MQTT", "e2e", (self.clock() - sent) * 1e3), len(publish.payload))

    def sweep(self) -> None:
        limit = self.clock() - self.timeout
        late = [key for key, sent in self._pending.items() if sent < limit]
        for key in late:
            del self._pending[key]
            _fire(self.environment, Row("MQTT", "e2e", self.timeout * 1e3,
                                        NotDelivered(f"not delivered within {self.timeout:g} s")))


# --------------------------------------------------------------------------------------------- worker state

DEVICE_TOKEN_LIFETIME = 86400   # seconds; a token is made for each connect, AWS's longest disconnectAfter

class WorkerRun:
    """What the users of one process share during one test: settings, the identity slice, sources, probes,
    the observer and attacker slots. Its greenlets (observer, probe sweeper) belong to its own group."""

    def __init__(self, environment, settings: Settings, index: int, home: Path, attackers: int = 0) -> None:
        self.environment = environment
        self.settings = settings
        self.index = index
        self.dirs = LoadtestDirs(home)
        self.token = settings.token(index)
        self.endpoint = Endpoint.aws(settings.host, settings.port) if settings.target == "aws" \
            else Endpoint(settings.host, settings.port, settings.server_name)
        self.options = ClientOptions(protocol_level=settings.protocol_level, keep_alive=settings.keep_alive,
                                     connect_timeout=settings.connect_timeout, max_resends=0)
        self.users: set[DeviceUser] = set()
        self.group = gevent.pool.Group()
        self.probes = Probes(environment, settings.ack_timeout)
        self.observer_ready = gevent.event.Event()
        self.error: str | None = None
        self.identities: list[DeviceIdentity] = []
        self.sources: list[str | None] = []
        self._free: list[int] = []
        self.attack_kinds, self.skipped_attacks = attack_kinds_for(settings.target, settings.token_port)
        self._token_world: TokenWorld | None = None
        self._device_world: TokenWorld | None = None
        self._free_slots: list[int] = []
        try:
            self._load_slice(home, attackers)
        except PlanError as exc:
            self.error = str(exc)

    def _load_slice(self, home: Path, attackers: int) -> None:
        s = self.settings
        names = pool_names(home / "devices", s.prefix)
        if s.pool_size:
            if len(names) < s.pool_size or names_digest(names[:s.pool_size]) != s.pool_digest:
                raise PlanError(f"worker {self.index}: {home / 'devices'} does not hold the master's identities "
                                f"({s.pool_size} named {s.prefix}*, digest {s.pool_digest}; here {len(names)}); "
                                "give every worker a copy of the master's devices/ directory")
            names = names[:s.pool_size]
        positions = worker_slice(len(names), s.workers, self.index)
        ca = s.ca_file
        self.identities = [DeviceIdentity.load(home / "devices" / names[i], ca_file=ca) for i in positions]
        self.sources = source_addresses(len(self.identities), s.host)
        self._free = list(range(len(self.identities)))[::-1]
        # attacker slots are sliced like identities: `iotgate loadtest` prepares identities_needed(attackers, K)
        self._free_slots = list(worker_slice(identities_needed(attackers, s.workers), s.workers, self.index))[::-1]
        raise_open_file_limit(len(self.identities) + 1024)

    def token_world(self) -> TokenWorld:
        """The token attackers' credentials, from ``loadtest/tokens/`` (made by `iotgate loadtest`)."""
        if self._token_world is None:
            try:
                self._token_world = TokenWorld.load(self.dirs.tokens)
            except TokenWorldError as exc:
                raise PlanError(str(exc)) from None
        return self._token_world

    def device(self, identity: DeviceIdentity) -> tuple[DeviceIdentity, Endpoint, DeviceTLS | None]:
        """What a device user connects with: its certificate, or (``--auth token|sigv4``) a credential of its own
        on the token listener."""
        s = self.settings
        if s.auth == "certificate":
            return identity, self.endpoint, None
        if self._device_world is None:
            try:
                self._device_world = TokenWorld.load(self.dirs.device_tokens)
            except TokenWorldError as exc:
                raise PlanError(str(exc)) from None
        world, thing = self._device_world, identity.thing_name
        if s.auth == "token":
            def credential(now, thing=thing):
                return world.username(world.token(thing, now, lifetime=DEVICE_TOKEN_LIFETIME))
        else:
            try:
                akid, secret = world.keys[thing]
            except KeyError:
                raise PlanError(f"{thing}: no SigV4 key in {self.dirs.device_tokens}; `iotgate loadtest --auth sigv4` "
                                "makes one per device user") from None
            credential = SigV4Signer(akid, secret, world.region, self.endpoint.sni)
        token = TokenIdentity(thing, "", "", identity.ca_file, auth=s.auth, port=s.token_port, credential=credential)
        endpoint = token.endpoint(self.endpoint)
        return token, endpoint, CredentialTLS(token, alpn=endpoint.alpn, keep=s.keep_contexts)

    # identities
    def take(self) -> int:
        if self.error:
            raise PlanError(self.error)
        if not self._free:
            raise PlanError(f"worker {self.index} has no identity left for another device user: its slice holds "
                            f"{len(self.identities)}; provision more (`iotgate fleet provision --count N`)")
        return self._free.pop()

    def release(self, position: int) -> None:
        self._free.append(position)

    def take_slot(self) -> int:
        if self.error:
            raise PlanError(self.error)
        if not self._free_slots:
            raise PlanError(f"worker {self.index}: no attacker slot left")
        return self._free_slots.pop()

    def release_slot(self, slot: int) -> None:
        self._free_slots.append(slot)

    # e2e
    @property
    def e2e_ready(self) -> bool:
        mode = self.settings.e2e
        return mode == "self" or (mode == "observer" and self.observer_ready.is_set())

    def on_probe(self, publish: Publish) -> None:
        self.probes.delivered(publish, self.token)

    def start(self) -> None:
        if self.error:
            return
        if self.settings.e2e != "off":
            self.group.spawn(self._sweep)
        if self.settings.e2e == "observer":
            self.group.spawn(self._observe)

    def stop(self) -> None:
        self.group.kill(block=True, timeout=5)

    def _sweep(self) -> None:
        while True:
            gevent.sleep(1.0)
            self.probes.sweep()

    def _observe(self) -> None:
        """The worker's observer: connected and subscribed to this worker's probes for the whole test."""
        try:
            identity = load_observer(self.dirs, self.index, self.settings.ca_file)
        except PlanError as exc:
            _fire(self.environment, Row("OBSERVER", "connect", 0.0, IdentityProblem(str(exc))))
            return
        lost = gevent.event.Event()

        def on_lost(notice: DisconnectNotice) -> None:
            self.observer_ready.clear()
            _fire(self.environment, Row("OBSERVER", "connect", 0.0,
                                        ConnectionLost(f"{notice.reason}: {notice.detail}".rstrip(": "))))
            lost.set()

        device = GeventDevice(identity, self.endpoint, options=self.options, on_message=self.on_probe,
                              on_lost=on_lost)
        backoff = Backoff(base=0.5, cap=10.0)
        try:
            while True:
                outcome = device.connect()
                rows = connect_rows(outcome)
                _fire(self.environment, Row("OBSERVER", "connect", sum(r.ms for r in rows), rows[-1].exception))
                if outcome.ok:
                    result = device.subscribe(probe_topic_filter(self.token), qos=1,
                                              timeout=self.settings.ack_timeout)
                    row = ack_row("suback", result)
                    _fire(self.environment, Row("OBSERVER", "subscribe", row.ms, row.exception))
                    if result.ok:
                        backoff.connected()
                        lost.clear()
                        self.observer_ready.set()
                        lost.wait()
                        backoff.disconnected()
                    else:
                        device.disconnect()
                gevent.sleep(backoff.next_delay())
        finally:
            self.observer_ready.clear()
            device.disconnect()


def current_run(environment) -> WorkerRun:
    run = _runs.get(id(environment))
    if run is None:
        raise StopUser()
    return run


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    runner = environment.runner
    if runner is None:
        return
    if isinstance(runner, MasterRunner):
        runner.register_message(ERROR_MESSAGE, _on_worker_error)
        return
    runner.register_message(STORM_MESSAGE, _on_storm)


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    options = environment.parsed_options
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        if not options.iotgate_pool_size:  # `iotgate loadtest` made these checks before starting Locust
            _master_preflight(environment)
        return
    workers = options.expect_workers if isinstance(runner, WorkerRunner) else 1
    index = max(0, getattr(runner, "worker_index", 0))
    try:
        settings = settings_from_options(options, workers)
    except PlanError as exc:
        _worker_failed(environment, str(exc))
        return
    if not isinstance(runner, WorkerRunner) and not settings.pool_size:
        _master_preflight(environment, settings)
    old = _runs.pop(id(environment), None)
    if old is not None:
        old.stop()
    run = _runs[id(environment)] = WorkerRun(environment, settings, index, _home(), options.iotgate_attackers)
    if run.error:
        _worker_failed(environment, run.error)
        return
    for kind, why in run.skipped_attacks.items():
        if options.iotgate_attackers:
            logger.warning("attack %s SKIPPED on target %s: %s", kind, settings.target, why)
    run.start()
    logger.info("worker %d: %d identities (%s...), e2e %s, target %s", index, len(run.identities),
                run.identities[0].thing_name if run.identities else "-", settings.e2e, settings.endpoint_text)


@events.test_stop.add_listener
def _on_test_stop(environment, **_kw) -> None:
    run = _runs.pop(id(environment), None)
    if run is not None:
        run.stop()


def _worker_failed(environment, message: str) -> None:
    logger.error("this worker cannot run: %s", message)
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message(ERROR_MESSAGE, {"index": runner.worker_index, "error": message})
    else:
        _stop_run(environment, message)


def _on_worker_error(environment, msg, **_kw) -> None:
    _stop_run(environment, f"worker {msg.data.get('index')}: {msg.data.get('error')}")


def _stop_run(environment, message: str) -> None:
    logger.error("stopping the run before it measures anything: %s", message)
    environment.process_exit_code = 2
    gevent.spawn(environment.runner.quit)


def _master_preflight(environment, settings: Settings | None = None) -> None:
    """The checks `iotgate loadtest` makes before starting Locust, for runs started with `locust` directly."""
    options = environment.parsed_options
    try:
        workers = options.expect_workers if isinstance(environment.runner, MasterRunner) else 1
        settings = settings or settings_from_options(options, workers)
        check_pool(_home(), settings.prefix, int(options.num_users or 0), settings.workers)
        check_reachable(settings.host, settings.port, settings.target)
    except Exception as exc:  # noqa: BLE001 - any of them stops the run, with its message
        _stop_run(environment, str(exc))


def _on_storm(environment, msg, **_kw) -> None:
    run = _runs.get(id(environment))
    if run is None:
        return
    logger.info("reconnect storm: dropping %d device connections", len(run.users))
    for user in list(run.users):
        user.drop()


# --------------------------------------------------------------------------------------------- users

class DeviceUser(User):
    """One device with its own provisioned identity (see the module docstring)."""

    wait_time = constant(0)  # a device waits inside its task, where a dropped connection can wake it

    def on_start(self) -> None:
        self.position: int | None = None
        self.device: GeventDevice | None = None
        run = self.run = current_run(self.environment)
        try:
            self.position = run.take()
        except PlanError as exc:
            _fire(self.environment, Row("DEVICE", "identity", 0.0, IdentityProblem(str(exc))))
            raise StopUser() from None
        try:
            identity, endpoint, tls = run.device(run.identities[self.position])
        except PlanError as exc:
            _fire(self.environment, Row("DEVICE", "identity", 0.0, IdentityProblem(str(exc))))
            raise StopUser() from None
        self.thing = identity.thing_name
        self.topic = f"dt/{self.thing}/telemetry/{run.token}"
        self.filters = [f"cmd/{self.thing}/#"] + ([self.topic] if run.settings.e2e == "self" else [])
        self.device = GeventDevice(identity, endpoint, options=run.options, local_addr=run.sources[self.position],
                                   keep_context=run.settings.keep_contexts, tls=tls,
                                   on_message=run.on_probe if run.settings.e2e == "self" else None,
                                   on_lost=self._on_lost)
        self.wake = gevent.event.Event()
        self.backoff = Backoff(base=0.5, cap=30.0)
        self.retry_at = 0.0
        self.next_publish = math.inf
        self.seq = 0
        self.dropping = False
        self.dropped = False   # the last connection ended by this device's own drop (reconnect storm)
        self.padding = b"-" * max(0, run.settings.payload_bytes - _SEQ_DIGITS)
        run.users.add(self)
        self._connect()

    def on_stop(self) -> None:
        run = getattr(self, "run", None)
        if run is None:
            return
        run.users.discard(self)
        if self.device is not None:
            self.device.disconnect()
        if self.position is not None:
            run.release(self.position)
            self.position = None

    @task
    def tick(self) -> None:
        device = self.device
        due = self.next_publish if device.connected else self.retry_at
        delay = due - time.monotonic()
        if delay > 0:
            self.wake.wait(delay)
            self.wake.clear()
            return
        if not device.connected:
            self._connect()
        else:
            self._publish()

    def _connect(self) -> None:
        outcome = self.device.connect()
        for row in connect_rows(outcome):
            _fire(self.environment, row)
        if not outcome.ok:
            self.retry_at = time.monotonic() + self.backoff.next_delay()
            return
        self.backoff.connected()
        self.dropped = False
        result = self.device.subscribe(*self.filters, qos=1, timeout=self.run.settings.ack_timeout)
        if not self._own_drop(result):
            _fire(self.environment, ack_row("suback", result))
        interval = self.run.settings.telemetry_interval
        self.next_publish = time.monotonic() + random.uniform(0, interval) if interval > 0 else math.inf

    def _publish(self) -> None:
        run = self.run
        self.seq += 1
        payload = b"%0*d" % (_SEQ_DIGITS, self.seq) + self.padding
        tracked = run.e2e_ready and run.probes.sent(self.thing, self.seq)
        result = self.device.publish(self.topic, payload, qos=1, timeout=run.settings.ack_timeout)
        if not self._own_drop(result):
            _fire(self.environment, ack_row("puback", result), len(payload))
        if tracked and not result.ok:
            run.probes.cancel(self.thing, self.seq)
        self.next_publish += run.settings.telemetry_interval
        if self.next_publish < time.monotonic():  # fell behind (a slow ack): no burst to catch up
            self.next_publish = time.monotonic() + run.settings.telemetry_interval

    def _own_drop(self, result) -> bool:
        """A request cut short by this device's own drop says nothing about the target: no row."""
        return not result.ok and result.reason == "connection-lost" and (self.dropping or self.dropped)

    def drop(self) -> None:
        """Reconnect storm: drop the connection (RST) as a crash would, and come back at once."""
        if self.device is not None and self.device.connected:
            self.dropping = True
            self.device.abort()

    def _on_lost(self, notice: DisconnectNotice) -> None:
        if self.dropping and notice.reason == "aborted":
            self.dropping = False
            self.dropped = True
            self.retry_at = 0.0
        else:
            detail = f"{notice.reason}: {notice.detail}" if notice.detail else notice.reason
            _fire(self.environment, Row("MQTT", "connection", 0.0, ConnectionLost(detail)))
            self.backoff.disconnected()
            self.retry_at = time.monotonic() + self.backoff.next_delay()
        self.wake.set()


class AttackerUser(User):
    """Runs the attacker mix: every kind in turn, one attempt every ``attack_interval`` seconds. A refusal is
    a success (``ATTACK <kind>``, timed to the refusal); an acceptance or no evidence is a failure."""

    fixed_count = 0  # set by the attack-mix shape

    def wait_time(self) -> float:
        return self.run.settings.attack_interval

    def on_start(self) -> None:
        self.slot_index: int | None = None
        run = self.run = current_run(self.environment)
        try:
            self.slot_index = run.take_slot()
            ca = run.settings.ca_file or str(run.dirs.home / "root-ca.pem")
            self.slot = load_attack_slot(run.dirs, self.slot_index, run.attack_kinds, ca)
            self.world = run.token_world() if any(k in TOKEN_ATTACKS for k in run.attack_kinds) else None
        except PlanError as exc:
            _fire(self.environment, Row("DEVICE", "identity", 0.0, IdentityProblem(str(exc))))
            raise StopUser() from None
        self.kinds = itertools.cycle(run.attack_kinds)

    def on_stop(self) -> None:
        if getattr(self, "slot_index", None) is not None:
            self.run.release_slot(self.slot_index)
            self.slot_index = None

    @task
    def attack(self) -> None:
        kind = next(self.kinds)
        started = time.perf_counter()
        verdict = run_attack(kind, self.slot, self.run.endpoint, self.run.options,
                             timeout=self.run.settings.ack_timeout, world=self.world,
                             token_port=self.run.settings.token_port)
        ms = (time.perf_counter() - started) * 1e3
        exception = None
        if verdict.kind is VerdictKind.ACCEPTED:
            exception = AttackAccepted(verdict.detail)
        elif verdict.kind is VerdictKind.INCONCLUSIVE:
            exception = AttackInconclusive(verdict.detail)
        _fire(self.environment, Row("ATTACK", kind, ms, exception))


# --------------------------------------------------------------------------------------------- shape

class IotgateShape(LoadTestShape):
    """Runs the shape named by ``--iotgate-shape`` with Locust's ``--users``/``--spawn-rate``/``--run-time``."""

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self._stormed = False

    def reset_time(self) -> None:
        super().reset_time()
        self._stormed = False

    def _params(self) -> tuple[ShapeSpec, ShapeParams]:
        options = self.runner.environment.parsed_options
        spec = shape_spec(getattr(options, "iotgate_shape", "ramp"))
        run_time = options.run_time or math.inf
        return spec, ShapeParams(int(options.num_users or 1), float(options.spawn_rate or 1), run_time,
                                 int(getattr(options, "iotgate_attackers", 0) or 0),
                                 getattr(options, "iotgate_storm_at", None))

    def tick(self):
        spec, params = self._params()
        tick = shape_tick(spec, params, self.get_run_time())
        if tick is None:
            return None
        if tick.storm and not self._stormed:
            self._stormed = True
            logger.info("reconnect storm: every device drops its connection and reconnects")
            self.runner.send_message(STORM_MESSAGE, {"at": self.get_run_time()})
        classes = [DeviceUser, AttackerUser] if tick.attackers else [DeviceUser]
        AttackerUser.fixed_count = tick.attackers
        return tick.users, tick.spawn_rate, classes
