"""`devices.fleet` against the local stack (real Mosquitto + the gateway on ephemeral ports): every attacker
group refused, chaos and rotation survived, and mismatches reported when an outcome differs from what the
scenario expects. One run of `iotgate fleet run` from the CLI against `iotgate gateway run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devices.attackers import ATTACKER_KINDS
from devices.client import Endpoint
from devices.fleet import FleetPlan, LocalPKI, run_fleet
from devices.report import parse_slo
from devices.scenario import loads_scenario

from .conftest import start_broker, start_gateway

ATTACKERS = "".join(f'[[attackers]]\nkind = "{kind}"\n' + ("timeout = 5\n" if kind == "slow-handshake" else "")
                    + ("connects = 8\n" if kind == "connect-flood" else "") for kind in ATTACKER_KINDS)

EVERYTHING = """
name = "everything"
duration = 3
registry_propagation = 0.2
drain = 3
reconnect_within = 6
[[groups]]
name = "sensors"
prefix = "fr-sensors-"
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 0.2
[groups.commands]
topic = "cmd/{thing}/reboot"
response = "cmd/{thing}/resp/reboot"
interval = 0.5
[[groups]]
name = "legacy"
prefix = "fr-legacy-"
count = 2
[groups.session]
protocol = 4
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 0.3
[[chaos]]
kind = "abort"
at = 1.2
fraction = 0.5
[[chaos]]
kind = "disconnect"
at = 1.6
fraction = 0.3
[[chaos]]
kind = "upstream-kill"
at = 2.0
downtime = 0.3
[[rotations]]
at = 1.0
fraction = 0.4
""" + ATTACKERS


@pytest.fixture(scope="module")
def stack(fleet, tmp_path_factory):
    """A broker this module may kill, and a gateway with AWS IoT's connect rate per client id (1/s, burst 1)."""
    broker = start_broker(fleet, tmp_path_factory.mktemp("fleet-broker"))
    running = start_gateway(fleet, broker.config.url, connect_burst_per_client_id=1, connect_rate_per_client_id=1.0,
                            token_port=0)
    yield broker, running
    running.thread.stop()
    broker.stop()


def plan(fleet, port: int, text: str, devices: int, **kwargs) -> FleetPlan:
    return FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", port, "localhost"), devices=devices,
                     scenario=loads_scenario(text), local=LocalPKI(fleet.store, fleet.registry,
                                                                   fleet.store.load_issuer(), fleet.now), **kwargs)


def test_every_attacker_is_refused_and_the_fleet_survives_chaos(fleet, stack):
    broker, running = stack
    result = run_fleet(plan(fleet, running.port, EVERYTHING, 5, upstream=broker, token_port=running.gateway.token_port))
    assert result.mismatches == [], result.report["mismatches"]
    assert result.passed
    groups = {g["group"]: g for g in result.report["groups"]}
    for kind in ATTACKER_KINDS:
        g = groups[f"attacker:{kind}"]
        assert (g["members"], g["refused"], g["allowed"], g["skipped"]) == (1, 1, 0, 0), g
    assert groups["sensors"]["allowed"] == 3 and groups["legacy"]["allowed"] == 2
    details = {k for g in groups.values() for k in g["details"]}
    assert any(d.startswith("CONNACK NOT_AUTHORIZED") for d in details)            # revoked, inactive, ...
    assert any("SUBACK 0x87" in d for d in details) and any("PUBACK 0x87" in d for d in details)
    assert any("CONNECTs throttled (" in d and "0x9F" in d for d in details)                            # the flood was throttled
    summary = result.report["summary"]
    assert summary["reconnects"] >= 2 and summary["lost"] == 0 and summary["messages"] > 0
    latency = result.report["latency"]
    for phase in ("tcp", "tls", "connack", "suback", "puback"):
        assert latency[phase]["count"] > 0, phase
    notes = " | ".join(result.report["notes"])
    assert "rotation at 1 s: 2 device(s)" in notes and "upstream killed" in notes
    # the rotated devices' old certificates were deactivated
    inactive = {c.certificate_id for c in fleet.registry.list_certificates(status="INACTIVE")}
    assert sum(1 for o in result.observations if o.detail.startswith("rotated")) == 2
    assert len(inactive) >= 2


NEGATIVE = """
name = "negative"
duration = 1.5
registry_propagation = 0.2
drain = 1
[[groups]]
name = "good"
prefix = "fr-good-"
count = 2
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 0.3
[[groups]]
name = "overreach"
prefix = "fr-over-"
count = 1
[groups.publish]
topic = "forbidden/{thing}/telemetry"
interval = 0.3
[[groups]]
name = "spoofers"
prefix = "fr-spoof-"
count = 1
expect = "refused"
[[attackers]]
kind = "connect-flood"
connects = 5
"""


def test_outcomes_that_differ_from_expectations_are_mismatches(fleet, gateway):
    # the shared test gateway allows a burst of 1000 CONNECTs per client id: the flood gets in
    result = run_fleet(plan(fleet, gateway.port, NEGATIVE, 0))
    assert not result.passed
    found = result.mismatches
    assert any(m.startswith("overreach: fr-over-00001: publish to forbidden/fr-over-00001/telemetry refused 0x87")
               for m in found), found
    assert "spoofers: fr-spoof-00001 got in, expected refused" in found
    assert any(m.startswith("attacker:connect-flood: atk-connect-flood-01 got in, expected refused") for m in found)
    assert not any(m.startswith("good:") for m in found)
    by = {g["group"]: g for g in result.report["groups"]}
    assert by["good"]["ok"] and not by["overreach"]["ok"]


def test_slo_gates_fail_a_run_without_mismatches(fleet, gateway):
    text = NEGATIVE.split('[[groups]]\nname = "overreach"')[0]
    result = run_fleet(plan(fleet, gateway.port, text, 0, slo=tuple(parse_slo("connack_p99<1us,errors=0"))))
    assert result.mismatches == []
    assert [(g["gate"], g["passed"]) for g in result.report["slo"]] == [("connack_p99<1us", False),
                                                                        ("errors=0", True)]
    assert not result.passed


CLI_SCENARIO = """
name = "cli"
duration = 2
registry_propagation = 0.5
drain = 2
[[groups]]
name = "sensors"
prefix = "fr-cli-"
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 0.25
[[attackers]]
kind = "foreign-ca"
[[attackers]]
kind = "wildcard-subscribe"
"""

IOTGATE = str(Path(sys.executable).with_name("iotgate"))


def test_cli_fleet_run_against_iotgate_gateway_run(fleet, broker, tmp_path):
    (tmp_path / "gw.toml").write_text('[limits]\nregistry_poll_interval = 0.05\n'
                                      f'[observe]\naccess_log = "{tmp_path / "access.log"}"\n')
    (tmp_path / "cli.toml").write_text(CLI_SCENARIO)
    gw = subprocess.Popen([IOTGATE, "--home", str(fleet.home), "gateway", "run", "--config", str(tmp_path / "gw.toml"),
                           "--port", "0", "--upstream", broker.config.url],
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        line = gw.stderr.readline()
        assert "iotgate gateway listening on" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        args = [IOTGATE, "--home", str(fleet.home), "fleet", "run", "--target", "gateway", "--endpoint",
                f"127.0.0.1:{port}", "--devices", "4", "--rate", "20/s", "--duration", "2", "--scenario",
                str(tmp_path / "cli.toml"), "--report", str(tmp_path / "report"), "--slo", "connack_p99<2s,errors=0"]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "160"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "result: PASS" in proc.stdout and "attacker:foreign-ca" in proc.stdout
        report = json.loads((tmp_path / "report" / "report.json").read_text())
        assert report["passed"] and report["summary"]["devices"] == 4 and report["mismatches"] == []
        assert (tmp_path / "report" / "latency.png").read_bytes()[:4] == b"\x89PNG"
        assert "PASS" in (tmp_path / "report" / "report.html").read_text()
        refused = subprocess.run([*args[:7], "--endpoint", "192.0.2.1:8883", "--duration", "1"], capture_output=True,
                                 text=True, timeout=30)
        assert refused.returncode == 2 and "not a loopback address" in refused.stderr
    finally:
        gw.terminate()
        gw.wait(10)


SAME_SCENARIO = """
name = "through-every-connector"
duration = 2
registry_propagation = 0.2
drain = 1
[session]
protocol = 4
[[groups]]
name = "sensors"
prefix = "fr-{connector}-"
count = 2
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 0.3
[groups.commands]
topic = "cmd/{thing}/reboot"
response = "cmd/{thing}/resp/reboot"
interval = 0.5
""" + "".join(f'[[attackers]]\nkind = "{kind}"\n' for kind in (
    "foreign-ca", "revoked", "unregistered", "client-id-spoof", "publish-outside-policy", "wildcard-subscribe"))


@pytest.mark.parametrize("connector", ["native", "paho", "aiomqtt", "awsiotsdk"])
def test_the_same_scenario_through_every_connector(fleet, stack, connector):
    """One scenario (MQTT 3.1.1: what every stack speaks, awsiotsdk included), the same expected outcomes."""
    _, running = stack
    text = SAME_SCENARIO.replace("{connector}", connector)
    # by name: paho, aiomqtt and the CRT send the host they connect to as SNI
    same = FleetPlan(target="gateway", endpoint=Endpoint("localhost", running.port), devices=2,
                     scenario=loads_scenario(text), connector=connector,
                     local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now))
    result = run_fleet(same)
    assert result.mismatches == [], result.report["mismatches"]
    groups = {g["group"]: g for g in result.report["groups"]}
    assert groups["sensors"]["allowed"] == 2
    assert all(g["refused"] == 1 for name, g in groups.items() if name.startswith("attacker:"))
    assert result.report["summary"]["messages"] > 0 and result.report["connector"] == connector
