"""`iotgate gateway run|stats` and `iotgate broker config` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
import urllib.request

import click
from prometheus_client.parser import text_string_to_metric_families
from click.testing import CliRunner

from gateway.cli import broker, gateway as gateway_group
from gateway.upstream.mosquitto import free_port

from .conftest import Device, start_gateway

# The groups as `iotgate` registers them (the root command gives the home through its context object).
ROOT_SCRIPT = """
import sys
import iotgate.cli as root
from gateway.cli import broker, gateway
root.cli.add_command(gateway)
root.cli.add_command(broker)
root.main(sys.argv[1:])
"""


def invoke(group: click.Group, home, *args: str):
    return CliRunner().invoke(group, list(args), obj=types.SimpleNamespace(home=home, registry_url=None),
                              catch_exceptions=False)


def test_broker_config_writes_a_private_directory(fleet, tmp_path):
    result = invoke(broker, fleet.home, "config", "--dir", str(tmp_path / "b"), "--port", "18884", "--unix-socket")
    assert result.exit_code == 0, result.output
    assert "iotgate gateway run --upstream unix://" in result.output
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "listener 18884 127.0.0.1" in conf
    assert os.stat(tmp_path / "b").st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "b" / "gateway.secret").st_mode & 0o777 == 0o600
    # the gateway's upstream broker trusts the upstream CA alone: no device certificate can reach it
    assert f"cafile {fleet.store.paths.upstream_ca_cert}\n" in conf
    assert f"crlfile {fleet.store.paths.upstream_crl}\n" in conf


def test_broker_config_for_devices_trusts_both_cas_and_their_crls(fleet, tmp_path):
    result = invoke(broker, fleet.home, "config", "--dir", str(tmp_path / "d"), "--allow-devices")
    assert result.exit_code == 0, result.output
    conf = (tmp_path / "d" / "mosquitto.conf").read_text()
    assert f"cafile {tmp_path / 'd' / 'client-cas.pem'}\n" in conf
    cas = (tmp_path / "d" / "client-cas.pem").read_bytes()
    paths = fleet.store.paths
    assert paths.issuing_cert.read_bytes() in cas and paths.upstream_ca_cert.read_bytes() in cas
    crls = (tmp_path / "d" / "client-crls.pem").read_bytes()
    assert paths.crl.read_bytes() in crls and paths.upstream_crl.read_bytes() in crls
    assert "pattern readwrite dt/%u/#" in (tmp_path / "d" / "acl").read_text()


def test_stats_from_the_file_and_from_the_endpoint(fleet, broker, tmp_path):
    port = free_port()
    running = start_gateway(fleet, broker.config.url, stats_dir=tmp_path)
    running.thread.stop()  # stopping writes the final stats file
    result = invoke(gateway_group, fleet.home, "stats", "--file", str(tmp_path / "stats.json"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["connections"] == {"accepted": 0, "refused": 0}
    table = invoke(gateway_group, fleet.home, "stats", "--file", str(tmp_path / "stats.json"))
    assert "stopped" in table.output  # the gateway that wrote it has stopped

    from gateway.config import GatewayConfig, Limits
    from gateway.server import GatewayThread

    from .conftest import TEST_LIMITS

    cfg = GatewayConfig(home=fleet.home, registry=fleet.url, port=0, upstream=broker.config.url, access_log=None,
                        stats_file=tmp_path / "live.json", metrics_port=port, limits=Limits(**TEST_LIMITS))
    thread = GatewayThread(cfg).start()
    try:
        thing, files, _ = fleet.device("metered")
        device = Device(files, thread.port, thing)
        from .conftest import wait_until

        wait_until(lambda: thread.gateway.view.counter >= fleet.registry.change_counter())
        assert device.connect() == 0
        result = invoke(gateway_group, fleet.home, "stats", "--url", f"http://127.0.0.1:{port}", "--json")
        stats = json.loads(result.output)
        assert stats["connections"]["accepted"] == 1 and stats["sessions_active"] == 1
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        key = ("iotgate_access_events_total", (("decision", "allowed"), ("event", "connect"), ("kind", "connected")))
        assert samples[key] == 1
        assert samples[("iotgate_sessions_active", ())] == 1
        device.close()
    finally:
        thread.stop()


def test_stats_without_a_gateway_says_what_to_do(tmp_path):
    result = CliRunner().invoke(gateway_group, ["stats"], obj=types.SimpleNamespace(home=tmp_path, registry_url=None))
    assert result.exit_code != 0
    assert "iotgate gateway run" in str(result.exception)


def test_gateway_run_serves_until_sigterm(fleet, broker, tmp_path):
    thing, files, _ = fleet.device("cli")
    stats = tmp_path / "s.json"
    (tmp_path / "gw.toml").write_text(f'[observe]\nstats_file = "{stats}"\naccess_log = "{tmp_path / "access.log"}"\n'
                                      '[limits]\nregistry_poll_interval = 0.05\n')
    proc = subprocess.Popen(
        [sys.executable, "-c", ROOT_SCRIPT, "--home", str(fleet.home), "gateway", "run", "--config",
         str(tmp_path / "gw.toml"), "--port", "0", "--upstream", broker.config.url, "--workers", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        line = proc.stderr.readline()
        assert "iotgate gateway listening on" in line, line + proc.stderr.read()
        port = int(line.split("127.0.0.1:")[1].split()[0])
        device = Device(files, port, thing)
        assert device.connect() == 0
        device.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        log = [json.loads(x) for x in (tmp_path / "access.log").read_text().splitlines()]
        assert any(r["event"] == "connect" and r["decision"] == "allowed" and r["client_id"] == thing for r in log)
        assert json.loads(stats.read_text())["connections"]["accepted"] == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_gateway_run_reports_a_bad_config(fleet, tmp_path):
    (tmp_path / "bad.toml").write_text("[limits]\nmax_conections = 3\n")
    proc = subprocess.run(
        [sys.executable, "-c", ROOT_SCRIPT, "--home", str(fleet.home), "gateway", "run", "--config",
         str(tmp_path / "bad.toml")], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "limits.max_conections: unknown key; did you mean 'max_connections'?" in proc.stderr
    assert "Traceback" not in proc.stderr
