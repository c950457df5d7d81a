"""`iotgate gateway run --workers 2`: two real worker processes on one port (SO_REUSEPORT) under a supervisor.

Both workers serve; a client id taken over across workers closes the older session (the upstream broker's
takeover tells the older worker); one /metrics sums the workers; a killed worker is restarted; SIGHUP reloads the
configuration for new connections and keeps healthy sessions; SIGTERM drains every worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.upstream.mosquitto import free_port

from .conftest import Device, wait_until
from .test_gateway_cli import ROOT_SCRIPT

TOML = """[observe]
access_log = "{log}"
stats_file = "{stats}"
stats_interval = 0.2
[limits]
registry_poll_interval = 0.05
connect_burst_per_client_id = 1000
{extra}
"""


class Node:
    """One `iotgate gateway run --workers N` process and its access log."""

    def __init__(self, fleet, broker, tmp_path, workers: int = 2) -> None:
        self.tmp = tmp_path
        self.log = tmp_path / "access.log"
        self.stats = tmp_path / "stats.json"
        self.config = tmp_path / "gw.toml"
        self.write_config()
        self.metrics_port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ROOT_SCRIPT, "--home", str(fleet.home), "gateway", "run", "--config",
             str(self.config), "--port", "0", "--upstream", broker.config.url, "--workers", str(workers),
             "--metrics-port", str(self.metrics_port)],
            stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert f"{workers} workers on" in line, line
        self.port = int(line.split("127.0.0.1:")[1].split()[0])

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(TOML.format(log=self.log, stats=self.stats, extra=extra))

    def records(self) -> list[dict]:
        if not self.log.exists():
            return []
        # a worker may be writing while this reads: a last line without its newline is not complete yet
        lines = self.log.read_text().splitlines(keepends=True)
        return [json.loads(x) for x in lines if x.strip() and x.endswith("\n")]

    def record(self, **match) -> dict:
        found: list[dict] = []
        wait_until(lambda: found.extend(r for r in self.records() if all(r.get(k) == v for k, v in match.items()))
                   or bool(found), timeout=10)
        return found[0]

    def sync(self, registry, workers: int = 2) -> None:
        """Wait until every worker's view includes the registry changes made so far."""
        target = registry.change_counter()

        def synced(i):
            try:
                return json.loads(self.stats.with_name(f"stats.worker{i}.json").read_text())[
                    "registry_change_counter"] >= target
            except (OSError, ValueError, KeyError):
                return False

        wait_until(lambda: all(synced(i) for i in range(workers)), timeout=10)

    def worker_pid(self, index: int) -> int:
        path = self.stats.with_name(f"stats.worker{index}.json")
        wait_until(path.exists, timeout=10)
        return json.loads(path.read_text())["pid"]

    def metrics(self) -> dict[tuple, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def node(fleet, broker, tmp_path):
    n = Node(fleet, broker, tmp_path)
    yield n
    if n.proc.poll() is None:
        n.stop()


def connect_until(node, files, client_id, made, want=lambda r: True, attempts=40):
    """Connect new sessions under ``client_id`` until one's access-log record satisfies ``want``."""
    for _ in range(attempts):
        before = len(node.records())
        device = Device(files, node.port, client_id, version=5)
        made.append(device)
        code = device.connect()
        assert code == 0, (code, node.records()[before:])
        record = None

        def logged():
            nonlocal record
            new = [r for r in node.records()[before:] if r["event"] == "connect" and r["client_id"] == client_id]
            record = new[0] if new else None
            return record is not None

        wait_until(logged, timeout=10)
        if want(record):
            return device, record
    raise AssertionError(f"no connection satisfied the condition in {attempts} attempts")


def test_two_workers_share_the_port_take_over_across_workers_and_sum_metrics(node, fleet):
    made: list[Device] = []
    try:
        thing, files, _ = fleet.device("wk")
        node.sync(fleet.registry)
        first, rec = connect_until(node, files, thing, made)
        other = 1 - rec["worker"]
        # the next session under the same client id, on the other worker: the broker's takeover closes the first
        second, rec2 = connect_until(node, files, thing, made, want=lambda r: r["worker"] == other)
        for device in made[:-1]:
            device.wait_disconnect(timeout=10)
        node.record(event="disconnect", client_id=thing, worker=1 - other)
        assert second.publish("room/wk", b"after takeover", qos=1) == 0
        assert {r["worker"] for r in node.records() if r["event"] == "connect"} == {0, 1}

        allowed = sum(1 for r in node.records() if r["event"] == "connect" and r["decision"] == "allowed")
        key = ("iotgate_access_events_total", (("decision", "allowed"), ("event", "connect"), ("kind", "connected")))
        wait_until(lambda: node.metrics().get(key) == allowed, timeout=10)
        assert node.metrics()[("iotgate_connections_open", ())] >= 1
        # and each worker's own series stay apart, labelled with its number
        per = {dict(labels)["worker"]: v for (name, labels), v in node.metrics().items()
               if name == "iotgate_worker_connections_accepted_total"}
        assert set(per) == {"0", "1"} and sum(per.values()) == allowed and all(per.values())

        # the supervisor writes one summed stats file where a single gateway writes its own
        def summed():
            out = subprocess.run([sys.executable, "-c", ROOT_SCRIPT, "--home", str(fleet.home), "gateway", "stats",
                                  "--file", str(node.stats), "--json"], capture_output=True, text=True)
            return json.loads(out.stdout) if out.returncode == 0 else None

        wait_until(lambda: (summed() or {}).get("connections", {}).get("accepted") == allowed, timeout=10)
        doc = summed()
        assert doc["workers"] == 2 and len(doc["per_worker"]) == 2 and doc["state"] == "running"
        assert doc["connections_open"] == sum(w["connections_open"] for w in doc["per_worker"])

        pid = node.worker_pid(0)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: node.metrics().get(("iotgate_worker_restarts_total", ())) == 1, timeout=15)
        wait_until(lambda: node.worker_pid(0) != pid, timeout=15)
        assert node.metrics()[("iotgate_workers", ())] == 2
    finally:
        for device in made:
            device.close()


def test_sighup_reloads_for_new_connections_and_keeps_sessions_then_sigterm_drains(node, fleet):
    made: list[Device] = []
    try:
        thing, files, _ = fleet.device("hup")
        node.sync(fleet.registry)
        live, _ = connect_until(node, files, thing, made)
        node.config.write_text(node.config.read_text().replace(
            "[observe]", '[gateway]\nproxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]\n[observe]'))
        node.proc.send_signal(signal.SIGHUP)
        # both workers now want a PROXY header from 127.0.0.1: a direct device is refused, on either worker
        deadline = time.monotonic() + 15
        while len({r.get("worker") for r in node.records() if r.get("kind") == "proxy_header_missing"}) < 2:
            assert time.monotonic() < deadline, "the workers did not both reload"
            probe = Device(files, node.port, f"{thing}-probe", version=5)
            try:
                probe.connect()
            except OSError:
                pass
            finally:
                probe.close()
        assert live.publish("room/hup", b"still here", qos=1) == 0  # the healthy session was kept

        assert node.stop() == 0
        assert live.wait_disconnect(timeout=10) is not None  # drained, not left hanging
    finally:
        for device in made:
            device.close()
