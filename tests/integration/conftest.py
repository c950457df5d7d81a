"""Fixtures for the gateway tests: a fleet (PKI, registry, policies, per-device identities), a real Mosquitto on
an ephemeral loopback port, the gateway on its own uvloop thread, paho-mqtt devices and a raw TLS client.

Nothing sleeps to wait for readiness: fixtures and helpers wait on events (access-log records, paho callbacks,
socket reads) with deadlines.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from certs.authority import build_root_ca
from certs.keys import generate_private_key
from certs.store import PKIStore
from devices.identity import DeviceFiles, make_key_and_csr, write_device_dir
from devices.reference import PahoDevice
from gateway.config import GatewayConfig, Limits
from gateway.mqtt import Framer, decode
from gateway.registry import Registry
from gateway.server import GatewayThread
from gateway.upstream.mosquitto import BrokerConfig, MosquittoProcess, free_port
from devices.provisioning import DEFAULT_POLICY, DEFAULT_POLICY_NAME, register_certificate, register_own_cas

WAIT = 5.0

# A policy for the message-exchange tests: devices talk in room/*, and each its own dt/<thing>/*.
ROOM_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive", "iot:RetainPublish"],
     "Resource": ["arn:aws:iot:*:*:topic/room", "arn:aws:iot:*:*:topic/room/*",
                  "arn:aws:iot:*:*:topic/dt/${iot:Connection.Thing.ThingName}/*", "arn:aws:iot:*:*:topic/$aws/*"]},
    {"Effect": "Allow", "Action": "iot:Subscribe",
     "Resource": ["arn:aws:iot:*:*:topicfilter/room/*", "arn:aws:iot:*:*:topicfilter/room",
                  "arn:aws:iot:*:*:topicfilter/$aws/*"]},
    {"Effect": "Deny", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/room/secret"}
  ]
}"""

# Extra rights attached next to ROOM_POLICY, to be detached while a session is live.
EXTRA_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/extra/*"}
  ]
}"""


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.01) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def wait():
    return wait_until


# --------------------------------------------------------------------------------------------- events

class EventLog:
    """The gateway's access-log records, as they are written; tests wait for the ones they expect."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self._cond = threading.Condition()

    def __call__(self, record: dict) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def wait_for(self, timeout: float = WAIT, **match) -> dict:
        """The first record (in order) whose fields equal ``match``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self.records:
                    if all(record.get(k) == v for k, v in match.items()):
                        return record
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(str(r) for r in self.records[-8:])
                    raise AssertionError(f"no access-log record with {match} within {timeout} s; last:\n{tail}")
                self._cond.wait(left)

    def find(self, **match) -> list[dict]:
        with self._cond:
            return [r for r in self.records if all(r.get(k) == v for k, v in match.items())]


# --------------------------------------------------------------------------------------------- fleet

@dataclasses.dataclass
class Fleet:
    home: Path
    store: PKIStore
    registry: Registry
    now: dt.datetime
    _seq: itertools.count = dataclasses.field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return f"sqlite:///{self.home / 'registry.db'}"

    def files(self, thing: str) -> DeviceFiles:
        return DeviceFiles(self.store.paths.devices / thing)

    def device(self, prefix: str = "dev", *, policies: tuple[str, ...] = ("room",), status: str = "ACTIVE",
               register: bool = True, issuer=None) -> tuple[str, DeviceFiles, str]:
        """A new thing with its own key and certificate: (thing name, files, certificate id)."""
        thing = f"{prefix}-{next(self._seq):04d}"
        issuer = issuer or self.store.load_issuer()
        key, csr = make_key_and_csr(thing)
        cert = issuer.sign_device_csr(csr, thing, now=self.now)
        pem = issuer.pem_with_chain(cert)
        files = write_device_dir(self.store.paths.devices, thing, key, pem, self.store.root_pem())
        cert_id = ""
        if register:
            cert_id = register_certificate(self.registry, thing, cert, pem, issuer.ca_id, policies, status=status)
        return thing, files, cert_id


@pytest.fixture(scope="session")
def fleet(tmp_path_factory) -> Fleet:
    home = tmp_path_factory.mktemp("iotgate-home")
    now = dt.datetime.now(dt.UTC)
    store = PKIStore(home)
    store.init(now=now)
    registry = Registry.open(f"sqlite:///{home / 'registry.db'}")
    register_own_cas(registry, store)
    registry.create_policy(DEFAULT_POLICY_NAME, DEFAULT_POLICY)
    registry.create_policy("room", ROOM_POLICY)
    registry.create_policy("extra", EXTRA_POLICY)
    store.paths.devices.mkdir(mode=0o700, exist_ok=True)
    yield Fleet(home, store, registry, now)
    registry.close()


@pytest.fixture(scope="session")
def foreign_ca(fleet):
    return build_root_ca(generate_private_key("ec-p256"), "Foreign Root", now=fleet.now)


# --------------------------------------------------------------------------------------------- broker

def start_broker(fleet: Fleet, directory: Path, *, unix_socket: bool = False) -> MosquittoProcess:
    cfg = BrokerConfig(fleet.store.paths, directory, port=free_port(), unix_socket=unix_socket)
    return MosquittoProcess(cfg).start()


@pytest.fixture(scope="session")
def broker(fleet, tmp_path_factory):
    proc = start_broker(fleet, tmp_path_factory.mktemp("broker"))
    yield proc
    proc.stop()


# --------------------------------------------------------------------------------------------- gateway

TEST_LIMITS = dict(handshake_timeout=1.0, connect_timeout=1.0, upstream_timeout=3.0,
                   connect_burst_per_client_id=1000, connect_rate_per_source=10_000.0,
                   connect_burst_per_source=10_000, registry_poll_interval=0.05)


@dataclasses.dataclass
class RunningGateway:
    thread: GatewayThread
    events: EventLog

    @property
    def port(self) -> int:
        return self.thread.port

    @property
    def gateway(self):
        return self.thread.gateway

    def call(self, fn: Callable, *args):
        return self.thread.call(fn, *args)

    def sync(self, registry: Registry, timeout: float = WAIT) -> None:
        """Wait until the gateway's view includes every registry change made so far."""
        target = registry.change_counter()
        wait_until(lambda: self.gateway.view.counter >= target, timeout)


def start_gateway(fleet: Fleet, upstream: str, *, stats_dir: Path | None = None, token_port: int | None = None,
                  settings: dict | None = None, **limits) -> RunningGateway:
    """The gateway on its own thread; ``settings`` are further GatewayConfig fields (registry, proxy_protocol...)."""
    events = EventLog()
    cfg = GatewayConfig(**{"home": fleet.home, "registry": fleet.url, "host": "127.0.0.1", "port": 0,
                           "token_port": token_port, "upstream": upstream, "access_log": None,
                           "stats_file": (stats_dir / "stats.json") if stats_dir else None,
                           "limits": Limits(**{**TEST_LIMITS, **limits}), **(settings or {})})
    thread = GatewayThread(cfg)
    thread.start()
    thread.gateway.access.sinks.append(events)
    return RunningGateway(thread, events)


@pytest.fixture(scope="session")
def gateway(fleet, broker, tmp_path_factory) -> RunningGateway:
    running = start_gateway(fleet, broker.config.url, stats_dir=tmp_path_factory.mktemp("stats"))
    yield running
    running.thread.stop()


# --------------------------------------------------------------------------------------------- devices

Device = PahoDevice


@pytest.fixture
def devices(gateway, fleet):
    """Factory of connected-or-not paho devices on the shared gateway; all closed after the test."""
    made: list[Device] = []

    def make(files: DeviceFiles | None, client_id: str, *, port: int | None = None, **kwargs) -> Device:
        gateway.sync(fleet.registry)
        device = Device(files, port or gateway.port, client_id, **kwargs)
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


# --------------------------------------------------------------------------------------------- raw client

class RawClient:
    """A TLS socket speaking raw MQTT bytes: for malformed, oversize and abrupt cases paho cannot produce."""

    def __init__(self, port: int, files: DeviceFiles | None, *, root: Path, server_name: str | None = "localhost",
                 level: int = 5, source: str | None = None, prefix: bytes = b"") -> None:
        """``source``: the local address to connect from; ``prefix``: bytes sent before TLS (a PROXY header)."""
        ctx = ssl.create_default_context(cafile=str(root))
        ctx.check_hostname = server_name is not None
        if files is not None:
            ctx.load_cert_chain(str(files.cert), str(files.key))
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT,
                                       source_address=(source, 0) if source else None)
        if prefix:
            raw.sendall(prefix)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_name)
        self.framer = Framer(1 << 24, protocol_level=level)
        self.level = level
        self._frames: list = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def packet(self, timeout: float = WAIT):
        """The next packet from the gateway, decoded; None when the connection closed."""
        deadline = time.monotonic() + timeout
        while not self._frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no packet from the gateway")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError("no packet from the gateway") from None
            except (ssl.SSLError, ConnectionError):
                return None
            if not data:
                return None
            self._frames.extend(self.framer.feed(data))
        return decode(self._frames.pop(0), self.level)

    def closed(self, timeout: float = WAIT) -> bool:
        """True once the gateway closed the connection (packets still in flight are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.packet(deadline - time.monotonic()) is None:
                    return True
            except AssertionError:
                return False
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def raw(gateway, fleet):
    made: list[RawClient] = []

    def make(files: DeviceFiles | None, *, port: int | None = None, **kwargs) -> RawClient:
        gateway.sync(fleet.registry)
        client = RawClient(port or gateway.port, files, root=fleet.store.paths.root_cert, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
