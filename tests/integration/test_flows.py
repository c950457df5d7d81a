"""Declared flows against a real run: a short fleet with attackers through the gateway (real Mosquitto, real mTLS),
then `iotgate flows check|draw|suggest` on its access log, and /metrics against the same log."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devices.client import Endpoint
from devices.fleet import FleetPlan, LocalPKI, run_fleet
from devices.reference import PahoDevice
from devices.scenario import loads_scenario
from gateway.config import GatewayConfig, Limits
from gateway.server import GatewayThread
from gateway.upstream.mosquitto import free_port

from .conftest import TEST_LIMITS, wait_until

IOTGATE = str(Path(sys.executable).with_name("iotgate"))

SCENARIO = """
name = "flows"
duration = 2
registry_propagation = 0.2
drain = 1
[[groups]]
name = "sensors"
prefix = "fl-sensor-"
count = 3
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 0.3
[[attackers]]
kind = "foreign-ca"
[[attackers]]
kind = "revoked"
[[attackers]]
kind = "no-certificate"
[[attackers]]
kind = "publish-outside-policy"
[[attackers]]
kind = "wildcard-subscribe"
"""

DECLARED = """
[[principals]]
name = "sensors"
things = ["fl-sensor-*"]
auth = "mtls"
ca = ["issuing"]
publish = ["dt/{thing}/+"]
subscribe = ["cmd/{thing}/#"]
receive = ["cmd/{thing}/#"]

[[principals]]
name = "operator"
kind = "operator"
things = ["sim-operator", "sim-probe"]
auth = "mtls"
ca = ["issuing"]
publish = ["cmd/+/reboot"]
subscribe = ["dt/+/+", "cmd/+/resp/#"]
receive = ["dt/+/+", "cmd/+/resp/#"]

[[principals]]
name = "attack-victims"
kind = "thing"
things = ["atk-victim-*"]
publish = ["dt/{thing}/+", "cmd/{thing}/+"]
subscribe = ["cmd/{thing}/#"]
receive = ["cmd/{thing}/#"]

[[principals]]
name = "attackers"
kind = "thing"
description = "the run's attacker identities: registered, so they may connect; every action is refused"
things = ["atk-*"]

[[principals]]
name = "gateway"
kind = "upstream"
auth = "mtls"
ca = ["upstream"]
publish = ["dt/+/+", "cmd/+/+", "cmd/+/resp/#"]
subscribe = ["cmd/+/#", "dt/+/+", "cmd/+/resp/#"]
receive = ["cmd/+/#", "dt/+/+"]
"""


@pytest.fixture(scope="module")
def run(fleet, broker, tmp_path_factory):
    """One fleet run with attackers, then an extra sensor that publishes where its policy allows and the
    declaration does not: (access log, the /metrics text scraped after the run, the extra thing, the directory)."""
    directory = tmp_path_factory.mktemp("flows")
    log = directory / "gateway-access.log"
    metrics_port = free_port()
    cfg = GatewayConfig(home=fleet.home, registry=fleet.url, host="127.0.0.1", port=0, upstream=broker.config.url,
                        access_log=str(log), metrics_port=metrics_port, limits=Limits(**TEST_LIMITS))
    thread = GatewayThread(cfg).start()
    try:
        plan = FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", thread.port, "localhost"), devices=3,
                         scenario=loads_scenario(SCENARIO),
                         local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now),
                         upstream=broker)
        result = run_fleet(plan)
        assert result.passed, result.report["mismatches"]
        thing, files, _ = fleet.device("fl-sensor-extra", policies=("room",))
        wait_until(lambda: thread.gateway.view.counter >= fleet.registry.change_counter())
        extra = PahoDevice(files, thread.port, thing)
        assert extra.connect() == 0
        assert extra.publish("room/extra", b"undeclared", qos=1) == 0
        extra.disconnect()
        extra.close()
        wait_until(lambda: any('"fl-sensor-extra' in line and '"flows"' in line for line in _lines(log, thread)))
        thread.call(thread.gateway.access.flush)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        logged = [json.loads(line) for line in log.read_text().splitlines()]
    finally:
        thread.stop()
    return log, metrics, logged, thing, directory


def _lines(log: Path, thread) -> list[str]:
    thread.call(thread.gateway.access.flush)
    return log.read_text().splitlines() if log.exists() else []


def _flows(fleet, *args, declared: Path | None = None):
    cmd = [IOTGATE, "--home", str(fleet.home), "flows", *args]
    if declared is not None:
        cmd[4:4] = []
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_check_reports_attackers_as_refused_and_the_extra_device_as_undeclared(fleet, run):
    log, _, _, extra, directory = run
    declared = directory / "flows.toml"
    declared.write_text(DECLARED)
    out = _flows(fleet, "check", "--declared", str(declared), "--log", str(log), "--json")
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["result"] == "FAIL"
    undeclared = {(f["identity"], f["hop"], f["direction"], f["topic"], f["status"]) for f in doc["undeclared"]}
    assert (extra, "device-gateway", "publish", "room/extra", "undeclared topic") in undeclared
    assert all(f[0] == extra or f[1] == "gateway-broker" and f[3] == "room/extra" for f in undeclared), undeclared
    refused = {(r["identity"], r["kind"]) for r in doc["refused"]}
    assert {r["principal"] for r in doc["refused"] if r["identity"].startswith("atk-")} == {"attackers"}
    kinds = {k for _, k in refused}
    assert {"no_client_certificate", "certificate_verify_failed", "certificate_revoked"} <= kinds, refused
    assert any(i.startswith("cert:") and "atk-revoked-01" in i and k == "certificate_revoked" for i, k in refused)
    assert any(i.startswith("atk-publish-outside-policy") and k == "publish_denied" for i, k in refused), refused
    assert any(i.startswith("atk-wildcard-subscribe") and k == "subscribe_denied" for i, k in refused), refused
    # every flow says how it was authenticated; the devices' by the home's issuing CA
    sensors = [f for f in doc["flows"] if f["principal"] == "sensors" and f["identity"] != extra]
    assert sensors and all(f["auth"].startswith("mtls, CA ") for f in sensors)
    gateway_rows = [f for f in doc["flows"] if f["hop"] == "gateway-broker"]
    assert gateway_rows and all(f["auth"].startswith("mtls, CA CN=") for f in gateway_rows)
    assert doc["auth_mismatches"] == []
    # the same run without the extra device's traffic is what was declared: exit 0
    out = _flows(fleet, "check", "--declared", str(declared), "--log", str(log), "--json")
    text = DECLARED.replace('publish = ["dt/{thing}/+"]', 'publish = ["dt/{thing}/+", "room/+"]').replace(
        'publish = ["dt/+/+", "cmd/+/+"', 'publish = ["dt/+/+", "room/+", "cmd/+/+"')
    (directory / "widened.toml").write_text(text)
    out = _flows(fleet, "check", "--declared", str(directory / "widened.toml"), "--log", str(log))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "result: PASS" in out.stdout and "refused: unauthorized access attempts" in out.stdout


def test_draw_names_every_principal(fleet, run):
    log, _, _, extra, directory = run
    declared = directory / "flows.toml"
    declared.write_text(DECLARED)
    svg = directory / "flows.svg"
    out = _flows(fleet, "draw", "--declared", str(declared), "--log", str(log), "--out", str(svg))
    assert out.returncode == 0, out.stderr
    text = svg.read_text()
    mmd = svg.with_suffix(".mmd").read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for name in ("sensors", "operator", "attack-victims", "attackers", "gateway", "broker"):
        assert name in mmd and name in text, name
    assert extra in mmd  # its undeclared flow is drawn from its principal and named
    assert "UNDECLARED" in mmd and "REFUSED" in mmd


def test_suggest_gives_least_privilege_policies_that_pass_their_own_check(fleet, run):
    log, _, _, _, directory = run
    out_dir = directory / "suggested"
    out = _flows(fleet, "suggest", "--log", str(log), "--out", str(out_dir))
    assert out.returncode == 0, out.stderr
    assert "policy lint" not in out.stderr, out.stderr
    flows_toml = (out_dir / "flows.toml").read_text()
    assert 'things = ["fl-sensor-*"]' in flows_toml or "fl-sensor-" in flows_toml
    policies = list((out_dir / "policies").glob("*.json"))
    assert policies
    for path in policies:
        lint = subprocess.run([IOTGATE, "--home", str(fleet.home), "policy", "lint", str(path)], capture_output=True,
                              text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout
    check = _flows(fleet, "check", "--declared", str(out_dir / "flows.toml"), "--log", str(log))
    assert check.returncode == 0, check.stdout


def test_metrics_match_the_access_log(run):
    _, metrics, logged, _, _ = run
    from_log = Counter((r["event"], r["decision"] or "", r["kind"] or "") for r in logged)
    scraped = Counter()
    for family in text_string_to_metric_families(metrics):
        if family.name == "iotgate_access_events":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    scraped[(labels["event"], labels["decision"], labels["kind"])] = int(sample.value)
    assert scraped == from_log
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    packets = Counter()
    for r in logged:
        for row in r.get("flows") or ():
            packets[row["action"]] += row["count"]
    assert {s.labels["action"]: int(s.value) for s in families["iotgate_flow_packets"].samples} == packets
    allowed = {s.labels["action"]: int(s.value) for s in families["iotgate_authorization_decisions"].samples
               if s.labels["outcome"] == "allowed"}
    assert allowed["iot:Connect"] == from_log[("connect", "allowed", "connected")]
    assert allowed["iot:Publish"] == packets["iot:Publish"]
    handshakes = next(s.value for s in families["iotgate_tls_handshake_seconds"].samples if s.name.endswith("_count"))
    # every connect event, allowed or refused, follows a completed handshake
    assert handshakes >= sum(n for (event, _, _), n in from_log.items() if event == "connect") > 0
    connacks = next(s.value for s in families["iotgate_connack_seconds"].samples if s.name.endswith("_count"))
    assert connacks == from_log[("connect", "allowed", "connected")]  # one CONNACK latency per accepted session
    # one forwarding round trip per QoS 1 publish the broker acknowledged (the extra device's is one of them)
    forwards = next(s.value for s in families["iotgate_forward_seconds"].samples if s.name.endswith("_count"))
    assert 1 <= forwards <= packets["iot:Publish"]
    # the gateway's own sessions with the broker: one full handshake, the rest resumed it
    upstream = {s.labels["session"]: s.value for s in families["iotgate_upstream_tls_handshakes"].samples}
    assert upstream["full"] >= 1 and upstream["full"] + upstream["resumed"] >= connacks and upstream["resumed"] >= 1
    per_worker = {s.labels["worker"]: s.value for s in families["iotgate_worker_connections_accepted"].samples}
    assert per_worker == {"0": from_log[("connect", "allowed", "connected")]}  # a gateway without workers is worker 0
    assert next(iter(families["iotgate_registry_version"].samples)).value > 0
    assert from_log[("tls", "refused", "no_client_certificate")] >= 1


def test_a_log_that_is_not_json_is_an_error_not_a_pass(fleet, run, tmp_path):
    log, _, _, _, directory = run
    broken = tmp_path / "broken.log"
    broken.write_text(log.read_text() + "{not json\n")
    (tmp_path / "flows.toml").write_text(DECLARED)
    out = _flows(fleet, "check", "--declared", str(tmp_path / "flows.toml"), "--log", str(broken))
    assert out.returncode == 2 and "not access-log JSON" in out.stderr
    empty = tmp_path / "empty.log"
    empty.write_text("")
    out = _flows(fleet, "check", "--declared", str(tmp_path / "flows.toml"), "--log", str(empty))
    assert out.returncode == 2 and "nothing to check" in out.stderr
