"""Fleet-run verdicts against set-ups broken on purpose by the tests themselves: each run must FAIL naming what
got in, a target that does not answer must end as an error (never PASS), and a correctly configured broker
passes what it can enforce, with what it cannot listed as skipped.

Brokers are real Mosquitto processes on ephemeral loopback ports, with configurations written here (what is
broken is visible in each one); the gateway is the in-process one of conftest.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from certs.authority import build_root_ca, cert_pem
from certs.keys import generate_private_key, private_key_pem, write_file, write_private_file
from devices.client import Endpoint
from devices.fleet import FleetPlan, LocalPKI, TargetError, run_fleet
from devices.provisioning import DEFAULT_POLICY_NAME, provision_fleet
from devices.scenario import load_scenario, loads_scenario
from gateway.upstream.mosquitto import find_mosquitto, free_port
from iotgate.cli import main

from .conftest import wait_until

# --------------------------------------------------------------------------------------------- brokers

# a payload above 128 KiB (AWS IoT's limit) is refused: Mosquitto drops it
BROKER = """per_listener_settings true
persistence false
log_dest stderr
log_type error
log_type warning
{user}
message_size_limit 131072
listener {port} 127.0.0.1
cafile {cafile}
certfile {certfile}
keyfile {keyfile}
tls_version tlsv1.2
require_certificate {require_certificate}
use_identity_as_username {identity_as_username}
allow_anonymous {anonymous}
{acl}
"""
# devices may use their own topics only, their own being what their certificate says (%u: its CN)
BOUND_ACL = "pattern readwrite dt/%u/#\npattern readwrite cmd/%u/#\n"
# the same rules keyed by the client id, which nothing binds to the certificate
CLIENT_ID_ACL = "pattern readwrite dt/%c/#\npattern readwrite cmd/%c/#\n"


@dataclasses.dataclass
class Broker:
    port: int
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def launch(conf: Path, port: int) -> Broker:
    """Mosquitto on a configuration file, once its listener accepts."""
    log = conf.with_name("mosquitto.log")
    with open(log, "wb") as out:
        process = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=out, stderr=out,
                                   stdin=subprocess.DEVNULL)
    broker = Broker(port, process, log)
    try:
        wait_until(lambda: process.poll() is not None or _accepting(port), timeout=10)
        assert process.poll() is None, log.read_text()
    except BaseException:
        broker.stop()
        raise
    return broker


@pytest.fixture
def mosquitto(fleet, tmp_path):
    """Start a Mosquitto with the given settings (``acl=None``: no ACL file at all; ``extra_ca``: PEM trusted
    for clients besides the home's CAs); all of them are stopped after the test."""
    started: list[Broker] = []

    def start(*, require_certificate: bool = True, anonymous: bool = False, acl: str | None = BOUND_ACL,
              extra_ca: bytes = b"") -> Broker:
        directory = tmp_path / f"broker-{len(started)}"
        directory.mkdir(mode=0o700)
        paths = fleet.store.paths
        cafile = directory / "client-cas.pem"
        write_file(cafile, paths.chain.read_bytes() + extra_ca)
        acl_line = ""
        if acl is not None:
            write_file(directory / "acl", acl.encode(), mode=0o600)
            acl_line = f"acl_file {directory / 'acl'}"
        port = free_port()
        conf = directory / "mosquitto.conf"
        conf.write_text(BROKER.format(
            user="user root" if os.geteuid() == 0 else "", port=port, cafile=cafile, certfile=paths.server_cert,
            keyfile=paths.server_key, require_certificate=str(require_certificate).lower(),
            identity_as_username=str(require_certificate).lower(), anonymous=str(anonymous).lower(), acl=acl_line))
        broker = launch(conf, port)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def scenario(*kinds: str, devices: bool = True, extra: str = "") -> str:
    text = """
name = "verdicts"
duration = 1
registry_propagation = 0.1
drain = 1
"""
    if devices:
        text += """
[[groups]]
name = "sensors"
prefix = "fv-sensors-"
count = 1
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 0.2
"""
    for kind in kinds:
        text += f'[[attackers]]\nkind = "{kind}"\ntimeout = 3\n' + (extra if kind == "foreign-ca" else "")
    return text


def mosquitto_plan(fleet, port: int, text: str, **kwargs) -> FleetPlan:
    return FleetPlan(target="mosquitto", endpoint=Endpoint("127.0.0.1", port, "localhost"), devices=1,
                     scenario=loads_scenario(text),
                     local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now), **kwargs)


def got_in(result, kind: str) -> list[str]:
    return [m for m in result.mismatches if m.startswith(f"attacker:{kind}: ") and " got in, expected refused" in m]


# --------------------------------------------------------------------------------------------- broken brokers

def test_a_listener_without_client_certificates_fails_the_run_naming_no_certificate(fleet, mosquitto):
    broker = mosquitto(require_certificate=False, anonymous=True)
    result = run_fleet(mosquitto_plan(fleet, broker.port, scenario("no-certificate", "foreign-ca")))
    assert not result.passed
    assert got_in(result, "no-certificate"), result.mismatches
    assert "CONNACK accepted without a client certificate" in got_in(result, "no-certificate")[0]
    assert result.report["verdict"].startswith("result: FAIL")


def test_a_broker_without_acls_fails_the_run_naming_each_policy_attack(fleet, mosquitto):
    broker = mosquitto(acl=None)
    kinds = ("publish-outside-policy", "subscribe-outside-policy", "wildcard-subscribe")
    result = run_fleet(mosquitto_plan(fleet, broker.port, scenario(*kinds)))
    assert not result.passed
    for kind in kinds:
        assert got_in(result, kind), (kind, result.mismatches)
    assert "delivered to atk-victim-01" in got_in(result, "publish-outside-policy")[0]
    assert "received atk-victim-01's message" in got_in(result, "wildcard-subscribe")[0]
    groups = {g["group"]: g for g in result.report["groups"]}
    assert groups["sensors"]["ok"] and groups["sensors"]["allowed"] == 1


def test_a_broker_that_trusts_a_foreign_ca_fails_the_run_naming_foreign_ca(fleet, mosquitto, tmp_path):
    foreign = build_root_ca(generate_private_key("ec-p256"), "Retired Vendor Root", now=fleet.now)
    write_file(tmp_path / "vendor-ca.pem", cert_pem(foreign.certificate))
    write_private_file(tmp_path / "vendor-ca.key", private_key_pem(foreign.key))
    broker = mosquitto(extra_ca=cert_pem(foreign.certificate))
    text = scenario("foreign-ca", extra=f'ca_cert = "{tmp_path / "vendor-ca.pem"}"\n'
                                        f'ca_key = "{tmp_path / "vendor-ca.key"}"\n')
    result = run_fleet(mosquitto_plan(fleet, broker.port, text))
    assert not result.passed
    assert got_in(result, "foreign-ca") == ["attacker:foreign-ca: atk-foreign-ca-01 got in, expected refused "
                                            "(connected)"]


def test_a_broker_that_does_not_bind_client_ids_fails_the_run_naming_client_id_spoof(fleet, mosquitto):
    broker = mosquitto(acl=CLIENT_ID_ACL)
    result = run_fleet(mosquitto_plan(fleet, broker.port, scenario("client-id-spoof", "publish-outside-policy")))
    assert not result.passed
    spoof = got_in(result, "client-id-spoof")
    assert spoof and "connected as atk-victim-02 and published and received on its topics" in spoof[0]
    assert not got_in(result, "publish-outside-policy")   # with its own client id it stays in its own topics


def test_a_correctly_configured_mosquitto_passes_what_it_can_enforce_and_lists_the_rest_as_skipped(fleet, mosquitto):
    broker = mosquitto()
    kinds = ("no-certificate", "foreign-ca", "expired", "client-id-spoof", "publish-outside-policy",
             "subscribe-outside-policy", "wildcard-subscribe", "oversize-payload", "revoked", "inactive",
             "unregistered")
    result = run_fleet(mosquitto_plan(fleet, broker.port, scenario(*kinds)))
    assert result.mismatches == [] and result.failures == [], (result.mismatches, result.failures)
    assert result.passed, result.verdict
    line = result.verdict
    assert line.startswith("result: PASS, ") and "checks skipped: " in line
    skipped = {s["check"] for s in result.report["skipped"]}
    assert {"attacker:revoked", "attacker:inactive", "attacker:unregistered"} <= skipped
    groups = {g["group"]: g for g in result.report["groups"]}
    for kind in ("revoked", "inactive", "unregistered"):
        assert groups[f"attacker:{kind}"]["result"] == "skipped" and not groups[f"attacker:{kind}"]["refused"]
    details = {k for g in groups.values() for k in g["details"]}
    assert "TLS alert TLSV13_ALERT_CERTIFICATE_REQUIRED" in details          # no-certificate, the alert named
    assert "PUBACK 0x87" in details                                         # publish-outside-policy (MQTT 5)
    assert any(d.startswith("client id atk-victim-02 accepted (a plain broker cannot bind it)") for d in details)
    assert "SUBACK granted for #, but nothing outside its policy was delivered" in details
    # the run-wide refusal table counts the same members the groups count as refused
    assert sum(result.report["refusals"].values()) == sum(g["refused"] for g in result.report["groups"])
    # --strict: a skipped check fails the run
    strict = run_fleet(mosquitto_plan(fleet, broker.port, scenario("revoked"), strict=True))
    assert not strict.passed and "(--strict)" in strict.verdict


# --------------------------------------------------------------------------------------------- dead targets

@pytest.fixture
def accept_and_close():
    """A TCP server that accepts every connection and closes it at once."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


ONLY_ATTACKERS = scenario("no-certificate", "foreign-ca", "revoked", "unregistered", devices=False)


def test_a_dead_port_is_an_error_never_a_pass(fleet):
    port = free_port()
    with pytest.raises(TargetError, match=f"127.0.0.1:{port} does not answer TCP"):
        run_fleet(FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", port, "localhost"), devices=0,
                            scenario=loads_scenario(ONLY_ATTACKERS),
                            local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now)))


def test_a_server_that_accepts_and_closes_is_an_error_never_a_pass(fleet, accept_and_close):
    with pytest.raises(TargetError, match="closed the connection during the TLS handshake"):
        run_fleet(FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", accept_and_close, "localhost"),
                            devices=0, scenario=loads_scenario(ONLY_ATTACKERS),
                            local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now)))


# --------------------------------------------------------------------------------------------- the CLI

@dataclasses.dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def iotgate(fleet, capsys, monkeypatch):
    """`iotgate --home <fleet> ...` in-process, as a user runs it."""
    def run(*args: str) -> Ran:
        capsys.readouterr()
        monkeypatch.setenv("COLUMNS", "200")
        try:
            main(["--home", str(fleet.home), *args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


COMMANDS = """
name = "commands"
duration = 1.5
registry_propagation = 0.2
drain = 2
[[groups]]
name = "actuators"
prefix = "fv-act-"
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/state"
interval = 0.2
[groups.commands]
topic = "cmd/{thing}/reboot"
response = "cmd/{thing}/resp/reboot"
interval = 0.3
[[chaos]]
kind = "disconnect"
at = 0.5
fraction = 0.5
[[rotations]]
at = 0.6
fraction = 0.5
""" + "".join(f'[[attackers]]\nkind = "{kind}"\n' for kind in (
    "no-certificate", "foreign-ca", "revoked", "unregistered", "client-id-spoof", "publish-outside-policy",
    "wildcard-subscribe"))


def test_the_gateway_passes_with_commands_answered_and_end_to_end_latency_in_the_report(fleet, gateway, iotgate,
                                                                                       tmp_path):
    (tmp_path / "commands.toml").write_text(COMMANDS)
    ran = iotgate("fleet", "run", "--target", "gateway", "--endpoint", f"127.0.0.1:{gateway.port}",
                  "--server-name", "localhost", "--devices", "2", "--scenario", str(tmp_path / "commands.toml"),
                  "--report", str(tmp_path / "report"), "--slo", "e2e_p99<2s,command_p99<2000ms,errors=0")
    assert ran.code == 0, ran.out + ran.err
    assert "result: PASS" in ran.out and "skipped:" not in ran.out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["passed"] and report["result"] == "PASS" and report["verdict"] == "result: PASS"
    assert report["summary"]["commands_answered"] > 0 and report["summary"]["commands_sent"] > 0
    assert report["latency"]["e2e"]["count"] > 0 and report["latency"]["command"]["count"] > 0
    assert {c["check"]: c["status"] for c in report["checks"]} == {
        "delivery of acknowledged QoS 1 messages": "passed", "end-to-end latency": "passed",
        "command round trips": "passed"}
    assert all(g["refused"] == 1 for g in report["groups"] if g["group"].startswith("attacker:"))
    # the run's own certificates are retired: the operator's broad policy is attached to no ACTIVE certificate
    for thing in ("sim-operator", "sim-probe", "atk-revoked-01", "atk-victim-01"):
        for cert in fleet.registry.list_thing_principals(thing):
            assert cert.status != "ACTIVE", (thing, cert.status)
            assert fleet.registry.list_attached_policies(cert.certificate_id) == []
    assert not (fleet.home / "fleet-run" / "identities").exists()


def test_a_target_that_does_not_answer_exits_2_and_replaces_an_old_report(fleet, iotgate, accept_and_close, tmp_path):
    (tmp_path / "attackers.toml").write_text(ONLY_ATTACKERS)
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "report.json").write_text('{"passed": true}')
    for port, reason in ((free_port(), "does not answer TCP"),
                         (accept_and_close, "closed the connection during the TLS handshake")):
        ran = iotgate("fleet", "run", "--target", "gateway", "--endpoint", f"127.0.0.1:{port}", "--devices", "0",
                      "--scenario", str(tmp_path / "attackers.toml"), "--report", str(report_dir))
        assert ran.code == 2, ran.out + ran.err
        assert f"127.0.0.1:{port}" in ran.err and reason in ran.err and "Traceback" not in ran.err
        assert "PASS" not in ran.out
        report = json.loads((report_dir / "report.json").read_text())
        assert report["passed"] is False and report["result"] == "ERROR"


INJECT = """
name = "inject"
duration = 1.2
registry_propagation = 0.1
drain = 1
[[groups]]
name = "sensors"
prefix = "fv-inject-"
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 0.1
[groups.commands]
topic = "cmd/{thing}/reboot"
response = "cmd/{thing}/resp/reboot"
interval = 0.2
[[rotations]]
at = 0.5
fraction = 1.0
[[chaos]]
kind = "disconnect"
at = 0.7
fraction = 0.5
[[attackers]]
kind = "revoked"
"""


def _boom(part: str):
    def boom(*args, **kwargs):
        raise RuntimeError(f"injected into {part}")

    async def aboom(*args, **kwargs):
        raise RuntimeError(f"injected into {part}")

    return boom, aboom


PARTS = [  # part named in the error, the function made to raise, whether it is a coroutine function
    ("setup", "devices.run_identities.RunIdentities.fleet", False),
    ("probe", "devices.fleet.prove_target", True),
    ("operator", "devices.operator.Operator._observe", True),
    ("devices", "devices.fleet_devices.DeviceFleet._subscribe", True),
    ("publishers", "devices.fleet_devices.DeviceFleet._publish_one", True),
    ("chaos", "devices.chaos.ChaosPart._disrupt", False),
    ("rotation", "devices.chaos.rotate_identity", False),
    ("attackers", "devices.attackers.attack", True),
    ("live display", "devices.fleet.FleetRunner.snapshot", False),
    ("report", "devices.fleet.build_result", False),
    ("cleanup", "devices.run_identities.RunIdentities.retire", False),
]


@pytest.mark.parametrize("part, target, is_async", PARTS, ids=[p[0] for p in PARTS])
def test_an_exception_in_any_part_ends_the_run_with_exit_3_naming_the_part(fleet, gateway, iotgate, monkeypatch,
                                                                          tmp_path, part, target, is_async):
    (tmp_path / "inject.toml").write_text(INJECT)
    boom, aboom = _boom(part)
    monkeypatch.setattr(target, aboom if is_async else boom)
    ran = iotgate("fleet", "run", "--target", "gateway", "--endpoint", f"127.0.0.1:{gateway.port}",
                  "--server-name", "localhost", "--devices", "2", "--scenario", str(tmp_path / "inject.toml"))
    assert ran.code == 3, ran.out + ran.err
    assert f"the fleet run failed in its {part} part: RuntimeError: injected into {part}" in ran.err
    assert "Traceback" not in ran.err and "PASS" not in ran.out


def test_a_device_whose_key_does_not_match_is_its_own_error_naming_the_file(fleet, gateway):
    issuer = fleet.store.load_issuer()
    provision_fleet(fleet.store, fleet.registry, issuer, ["fv-broken-00001"], policies=[DEFAULT_POLICY_NAME],
                    key_type="ec-p256", workers=1, now=fleet.now, days=3)
    key_file = fleet.store.paths.devices / "fv-broken-00001" / "device.key"
    key_file.unlink()
    write_private_file(key_file, private_key_pem(generate_private_key("ec-p256")))
    text = """
name = "broken-key"
duration = 0.5
registry_propagation = 0.1
drain = 0.5
[[groups]]
name = "broken"
prefix = "fv-broken-"
count = 1
"""
    result = run_fleet(FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", gateway.port, "localhost"),
                                 devices=1, scenario=loads_scenario(text),
                                 local=LocalPKI(fleet.store, fleet.registry, issuer, fleet.now)))
    assert not result.passed and result.mismatches == []
    [failure] = result.failures
    assert failure.startswith("broken: fv-broken-00001 device error (the device's own files:")
    assert str(key_file) in failure
    group = {g["group"]: g for g in result.report["groups"]}["broken"]
    assert (group["refused"], group["errors"]) == (0, 1)


def test_the_shipped_plain_broker_scenario_passes_against_broker_allow_devices(fleet, iotgate, tmp_path):
    """README: `iotgate broker run --allow-devices` + deploy/scenarios/plain-broker.toml passes, with the
    registry and operator checks skipped."""
    port = free_port()
    ran = iotgate("broker", "config", "--allow-devices", "--port", str(port), "--dir", str(tmp_path / "broker"))
    assert ran.code == 0, ran.err
    broker = launch(tmp_path / "broker" / "mosquitto.conf", port)
    try:
        path = Path(__file__).resolve().parents[2] / "deploy" / "scenarios" / "plain-broker.toml"
        text = path.read_text().replace("duration = 5", "duration = 1\nregistry_propagation = 0.1\ndrain = 1")
        result = run_fleet(mosquitto_plan(fleet, port, text))
    finally:
        broker.stop()
    assert result.passed, (result.verdict, result.mismatches, result.failures)
    assert result.verdict == ("result: PASS, 5 checks skipped: attacker:revoked, attacker:inactive, "
                              "attacker:unregistered, delivery of acknowledged QoS 1 messages, end-to-end latency")


def test_the_built_in_command_response_scenario_answers_commands(fleet, gateway):
    result = run_fleet(FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", gateway.port, "localhost"),
                                 devices=3, duration=3.0, scenario=load_scenario("command-response"),
                                 local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now)))
    assert result.passed, result.verdict
    summary = result.report["summary"]
    assert summary["commands_answered"] > 0 and result.report["latency"]["command"]["count"] > 0, summary
