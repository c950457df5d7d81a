"""Locust load tests end to end: `iotgate loadtest` (a master and local workers) against a local Mosquitto and
the gateway started here, and against deliberately broken set-ups it must fail on."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices.client import ClientOptions, Reason
from devices.identity import DeviceIdentity
from devices.transport import Endpoint
from gateway.upstream.mosquitto import BrokerConfig, MosquittoProcess, free_port
from devices.provisioning import DEFAULT_POLICY_NAME, provision_fleet, thing_names
from loadtests.plan import ATTACK_KINDS, POLICY_ATTACKS, TLS_ATTACKS

from .conftest import start_gateway

IOTGATE = str(Path(sys.executable).with_name("iotgate"))
PREFIX = "lt-"
DEVICES = 100
ROWS = ("tcp_connect", "tls_handshake", "connack", "suback", "puback", "e2e")
# the load is on a shared 2-core machine: deadlines for the gateway that measure nothing but slowness are wide
LOADTEST_LIMITS = dict(handshake_timeout=20.0, connect_timeout=20.0, upstream_timeout=20.0)


@pytest.fixture(scope="module")
def pool(fleet):
    provision_fleet(fleet.store, fleet.registry, fleet.store.load_issuer(), thing_names(PREFIX, DEVICES),
                    policies=[DEFAULT_POLICY_NAME], key_type="ec-p256", workers=2, now=fleet.now, days=30)
    return thing_names(PREFIX, DEVICES)


@pytest.fixture(scope="module")
def lt_gateway(fleet, broker, pool):
    running = start_gateway(fleet, broker.config.url, **LOADTEST_LIMITS)
    yield running
    running.thread.stop()


def loadtest(fleet, tmp_path: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = [IOTGATE, "--home", str(fleet.home), "loadtest", "--headless", "--prefix", PREFIX,
           "--report", str(tmp_path / "report"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def stats(tmp_path: Path) -> dict[tuple[str, str], dict]:
    with (tmp_path / "report" / "locust_stats.csv").open(newline="") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def failures(tmp_path: Path) -> list[dict]:
    with (tmp_path / "report" / "locust_failures.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-3000:]}"


# --------------------------------------------------------------------------------------------- the device shell

def test_gevent_device_connects_publishes_and_subscribes_with_real_timings(fleet, lt_gateway, pool):
    from loadtests.device import GeventDevice

    lt_gateway.sync(fleet.registry)
    identity = DeviceIdentity.load(fleet.store.paths.devices / pool[0])
    device = GeventDevice(identity, Endpoint("127.0.0.1", lt_gateway.port),
                          options=ClientOptions(protocol_level=5, max_resends=0))
    outcome = device.connect()
    assert outcome.ok, outcome
    assert outcome.timings.tcp > 0 and outcome.timings.tls > 0 and outcome.timings.connack > 0
    assert outcome.tls_version == "TLSv1.3"
    sub = device.subscribe(f"cmd/{pool[0]}/#")
    assert sub.ok and sub.latency > 0
    pub = device.publish(f"dt/{pool[0]}/telemetry", b"21.5", qos=1)
    assert pub.ok and pub.reason == "acked" and pub.latency > 0
    denied = device.publish(f"dt/{pool[1]}/telemetry", b"forged", qos=1)
    assert not denied.ok and denied.reason_code == 0x87
    device.disconnect()
    lt_gateway.events.wait_for(event="disconnect", thing=pool[0])


def test_gevent_device_unreachable_names_the_address():
    from loadtests.device import GeventDevice

    port = free_port()
    identity = DeviceIdentity("nobody", "/nonexistent.pem", "/nonexistent.key", "/nonexistent-ca.pem")
    device = GeventDevice(identity, Endpoint("127.0.0.1", port))
    outcome = device.connect()
    assert outcome.reason is Reason.IDENTITY  # the device's own files are checked before any packet
    from devices.transport import DeviceTLS

    class _Any(DeviceTLS):
        def context(self):
            import ssl

            return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    device = GeventDevice(identity, Endpoint("127.0.0.1", port), tls=_Any(identity))
    outcome = device.connect()
    assert outcome.reason is Reason.TCP and f"127.0.0.1:{port}" in outcome.detail and "ECONNREFUSED" in outcome.detail


# --------------------------------------------------------------------------------------------- distributed run

def test_distributed_run_against_the_gateway(fleet, lt_gateway, pool, tmp_path):
    """100 device users over 2 workers for 15 s with the attacker mix: every device connected with its own
    certificate, every row real, every attack refused."""
    lt_gateway.sync(fleet.registry)
    started = time.monotonic()
    proc = loadtest(fleet, tmp_path, "--target", "gateway", "--endpoint", f"127.0.0.1:{lt_gateway.port}",
                    "--users", str(DEVICES), "--workers", "2", "--spawn-rate", "100", "--run-time", "15",
                    "--shape", "attack-mix", "--telemetry-interval", "2")
    assert proc.returncode == 0, explain(proc)
    assert time.monotonic() - started < 60
    rows = stats(tmp_path)
    for name in ROWS:
        row = rows[("TLS" if name == "tls_handshake" else "TCP" if name == "tcp_connect" else "MQTT", name)]
        assert int(row["Failure Count"]) == 0, (name, row)
        assert int(row["Request Count"]) >= (DEVICES if name in ROWS[:4] else 1), (name, row)
        assert float(row["Average Response Time"]) > 0, (name, row)
    for name in ROWS[:4]:  # one connect and one subscribe per device: nobody was dropped and came back
        assert int(rows[("TCP" if name == "tcp_connect" else "TLS" if name == "tls_handshake" else "MQTT",
                         name)]["Request Count"]) == DEVICES
    handshake = rows[("TLS", "tls_handshake")]
    assert 0 < float(handshake["Min Response Time"]) <= float(handshake["Average Response Time"]) < 10_000
    assert ("MQTT", "connection") not in rows and ("DEVICE", "identity") not in rows
    for kind in ATTACK_KINDS:
        row = rows[("ATTACK", kind)]
        assert int(row["Request Count"]) >= 1 and int(row["Failure Count"]) == 0, (kind, row)
    assert failures(tmp_path) == []
    assert "result: PASS" in proc.stdout

    # the gateway's own account: one distinct certificate per user, and no attacker identity got in
    connected = lt_gateway.events.find(event="connect", decision="allowed")
    devices = {r["certificate_id"] for r in connected if (r["thing"] or "").startswith(PREFIX)}
    assert len(devices) == DEVICES
    assert {r["thing"] for r in connected if (r["thing"] or "").startswith(PREFIX)} == set(pool)
    intruders = {r["thing"] for r in connected if (r["thing"] or "").startswith("iotgate-loadtest-")
                 and "-attacker-" not in r["thing"] and "-observer-" not in r["thing"]}
    assert intruders == set()
    refused = lt_gateway.events.find(decision="refused")
    kinds = {r["kind"] for r in refused}
    assert {"certificate_not_registered", "certificate_revoked", "certificate_inactive"} <= kinds
    assert lt_gateway.events.find(event="publish", decision="denied")
    assert lt_gateway.events.find(event="subscribe", decision="denied")


# --------------------------------------------------------------------------------------------- broken set-ups

def test_a_plain_mosquitto_that_lets_attackers_in_fails_the_run(fleet, tmp_path, pool):
    """Mosquitto with require_certificate alone: TLS attacks are refused, but an unregistered or INACTIVE
    certificate of the CA gets in, and the run must say so and fail."""
    cfg = BrokerConfig(fleet.store.paths, tmp_path / "open-broker", port=free_port(), clients="devices",
                       acl_extra="pattern readwrite dt/%u/#\npattern readwrite cmd/%u/#\n")
    with MosquittoProcess(cfg):
        proc = loadtest(fleet, tmp_path, "--target", "mosquitto", "--endpoint", f"127.0.0.1:{cfg.port}",
                        "--users", "4", "--workers", "1", "--spawn-rate", "10", "--run-time", "12",
                        "--shape", "attack-mix", "--telemetry-interval", "2")
    assert proc.returncode == 1, explain(proc)
    rows = stats(tmp_path)
    for kind in ("unregistered", "inactive"):
        assert int(rows[("ATTACK", kind)]["Failure Count"]) >= 1, (kind, rows[("ATTACK", kind)])
    for kind in TLS_ATTACKS:
        assert int(rows[("ATTACK", kind)]["Failure Count"]) == 0, (kind, rows[("ATTACK", kind)])
    errors = {(f["Name"], f["Error"]) for f in failures(tmp_path)}
    assert any(name == "unregistered" and "AttackAccepted" in error and "CONNACK 0x00" in error
               for name, error in errors), errors
    for name in ("connack", "puback", "e2e"):  # the devices themselves were fine (e2e: each reads its own)
        assert int(rows[("MQTT", name)]["Failure Count"]) == 0
    assert "result: FAIL" in proc.stdout
    assert set(POLICY_ATTACKS) & {name for name, _ in errors}  # Mosquitto has no AWS IoT policies either


def test_an_unreachable_target_fails_fast_naming_the_address(fleet, tmp_path, pool):
    port = free_port()
    started = time.monotonic()
    proc = loadtest(fleet, tmp_path, "--endpoint", f"127.0.0.1:{port}", "--users", "10", "--run-time", "30")
    assert proc.returncode == 2, explain(proc)
    assert time.monotonic() - started < 15
    assert f"127.0.0.1:{port} is unreachable" in proc.stderr and "refused" not in proc.stderr.lower().split(
        "unreachable")[0]
    assert not (tmp_path / "report").exists()  # nothing ran, nothing was reported as measured


def test_a_home_with_too_few_identities_stops_before_the_run(fleet, tmp_path, pool):
    proc = loadtest(fleet, tmp_path, "--endpoint", "127.0.0.1:9", "--users", str(DEVICES + 1), "--workers", "2")
    assert proc.returncode == 2, explain(proc)
    message = " ".join(proc.stderr.split())
    assert f"holds {DEVICES} device identities named {PREFIX}*; this run needs {DEVICES + 2}" in message
    assert f"fleet provision --count {DEVICES + 2} --prefix {PREFIX}" in message


def test_a_refused_device_fails_the_run_with_what_it_saw(fleet, lt_gateway, tmp_path, pool):
    """A legitimate user whose certificate the gateway refuses is a failure named by the CONNACK."""
    bad = [fleet.device("ltbad", policies=(DEFAULT_POLICY_NAME,))[2] for _ in range(2)]
    fleet.registry.set_certificate_status(bad[0], "INACTIVE")
    lt_gateway.sync(fleet.registry)
    proc = subprocess.run([IOTGATE, "--home", str(fleet.home), "loadtest", "--headless", "--prefix", "ltbad-",
                           "--report", str(tmp_path / "report"), "--endpoint", f"127.0.0.1:{lt_gateway.port}",
                           "--users", "2", "--run-time", "4", "--e2e", "off", "--telemetry-interval", "1"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 1, explain(proc)
    errors = [(f["Name"], f["Error"]) for f in failures(tmp_path)]
    assert errors and all(name == "connack" for name, _ in errors), errors
    assert any("ConnackRefused" in e and "NOT_AUTHORIZED (0x87)" in e for _, e in errors), errors
    assert int(stats(tmp_path)[("MQTT", "puback")]["Failure Count"]) == 0


def test_a_worker_whose_home_holds_other_identities_stops_the_run(fleet, lt_gateway, tmp_path, pool):
    """A worker joining from another machine with a different copy of the home must not guess identities."""
    import shutil

    other = tmp_path / "other-home"
    shutil.copytree(fleet.store.paths.devices / pool[0], other / "devices" / f"{PREFIX}99999")
    port = free_port()
    master = subprocess.Popen([IOTGATE, "--home", str(fleet.home), "loadtest", "--headless", "--prefix", PREFIX,
                               "--report", str(tmp_path / "report"), "--endpoint", f"127.0.0.1:{lt_gateway.port}",
                               "--users", "4", "--workers", "1", "--remote-workers", "1", "--master-port", str(port),
                               "--run-time", "20", "--e2e", "off"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    joined = subprocess.run([IOTGATE, "--home", str(other), "loadtest", "--join", f"127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=60)
    out, _ = master.communicate(timeout=60)
    assert master.returncode == 2, out + joined.stdout + joined.stderr
    assert "does not hold the master's identities" in out + joined.stdout + joined.stderr


def test_reconnect_storm_drops_every_device_and_brings_it_back(fleet, lt_gateway, tmp_path, pool):
    lt_gateway.sync(fleet.registry)
    proc = loadtest(fleet, tmp_path, "--endpoint", f"127.0.0.1:{lt_gateway.port}", "--users", "20", "--workers", "1",
                    "--spawn-rate", "20", "--run-time", "7", "--shape", "reconnect-storm", "--storm-at", "3",
                    "--e2e", "off", "--telemetry-interval", "1")
    assert proc.returncode == 0, explain(proc)
    rows = stats(tmp_path)
    for request_type, name in (("TCP", "tcp_connect"), ("TLS", "tls_handshake"), ("MQTT", "connack")):
        assert int(rows[(request_type, name)]["Request Count"]) == 40, rows[(request_type, name)]
    assert ("MQTT", "connection") not in rows  # the drops were the devices' own, not the gateway's
    assert int(rows[("MQTT", "puback")]["Failure Count"]) == 0
