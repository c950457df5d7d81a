"""The dev stack: docker-compose.yml validated structurally (no Docker engine here), its iotgate commands run
natively from the same rendered configs, and every Grafana panel checked against a live /metrics."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import click
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.upstream.mosquitto import find_mosquitto, free_port
from iotgate.cli import cli
from iotgate.stack import render

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "iotgate.json"
IOTGATE = str(Path(sys.executable).with_name("iotgate"))
SERVICES = {"pki-init", "mosquitto", "gateway", "fleet", "locust-master", "locust-worker", "prometheus", "grafana"}
_DEFAULT = re.compile(r"\$\$?\{([A-Z_]+):[-?]([^}]*)\}")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _interpolate(text: str) -> str:
    """Compose's ${VAR:-default} (and the shell's $${VAR:-default}) with their defaults."""
    return _DEFAULT.sub(lambda m: "secret" if m.group(0).find(":?") > 0 else m.group(2), text)


def iotgate_commands(service: dict) -> list[list[str]]:
    """The iotgate invocations a service runs: its command (the image's entrypoint is iotgate) or its script."""
    if service.get("entrypoint") == ["sh", "-ec"]:
        script = _interpolate(service["command"][0])
        return [shlex.split(m.group(1)) for m in re.finditer(r"(?m)iotgate ([^|&;>\n]+)", script)]
    if service.get("image") == "iotgate:dev" and "entrypoint" not in service:
        return [[_interpolate(a) for a in service["command"]]]
    return []


def resolve(args: list[str]) -> click.Context:
    """Parse an iotgate command line as the CLI would, without running it (types, ranges, choices checked)."""
    ctx = cli.make_context("iotgate", list(args))
    command: click.Command = cli
    while isinstance(command, click.Group):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2 keeps the subcommand there
            rest = [*ctx.protected_args, *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def test_compose_services_volumes_ports_and_healthchecks():
    doc = compose()
    services = doc["services"]
    assert set(services) == SERVICES
    declared_volumes = set(doc["volumes"])
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, volume)
            else:
                assert source in declared_volumes, (name, volume)
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        image = svc.get("image")
        if image == "iotgate:dev":
            assert svc["build"] == "."
        else:
            assert image and ":" in image and not image.endswith(":latest"), (name, image)
    for name in ("mosquitto", "gateway", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    for name in ("locust-master", "locust-worker"):
        assert services[name]["profiles"] == ["load"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
        assert all(v.endswith(":ro") for v in services[name]["volumes"]) and not any(
            v.startswith("iotgate-home") for v in services[name]["volumes"]), "the metrics stack never sees a key"
    # the worker count the master waits for is the one --scale starts
    assert "${LOCUST_WORKERS:-2}" in services["locust-master"]["command"]
    assert "${GRAFANA_ADMIN_PASSWORD:?" in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


def test_the_image_builds_from_files_that_exist():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line
    packages = {"iotgate", "certs", "gateway", "devices", "loadtests"}
    assert all(f"COPY {p} ./{p}" in dockerfile for p in packages)


def test_every_compose_command_is_a_real_iotgate_command():
    seen = []
    for name, svc in compose()["services"].items():
        for args in iotgate_commands(svc):
            ctx = resolve(args)
            seen.append((name, ctx.command.name))
    assert {("pki-init", "init"), ("pki-init", "provision"), ("pki-init", "config"), ("pki-init", "render"),
            ("gateway", "run"), ("fleet", "run"), ("locust-master", "loadtest"),
            ("locust-worker", "loadtest")} <= set(seen), seen
    with pytest.raises(click.UsageError):
        resolve(["gateway", "run", "--no-such-option"])


def test_every_file_the_stack_reads_is_rendered(tmp_path):
    render(ROOT / "deploy", tmp_path, "compose")
    text = COMPOSE.read_text()
    for path in set(re.findall(r"/stack/[\w/.-]+\.\w+", text)):
        assert (tmp_path / path.removeprefix("/stack/")).is_file(), path
    for path in set(re.findall(r"/deploy/[\w/.-]+\.\w+", text)):
        assert (ROOT / "deploy" / path.removeprefix("/deploy/")).is_file(), path
    prom = yaml.safe_load((tmp_path / "prometheus/prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway:9464"]
    ds = yaml.safe_load((tmp_path / "grafana/provisioning/datasources/iotgate.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    uid = ds["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])
    provider = yaml.safe_load((tmp_path / "grafana/provisioning/dashboards/iotgate.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/stack/grafana/dashboards"


def _selectors(node) -> set[str]:
    names = set()
    if isinstance(node, promql_parser.VectorSelector):
        names.add(node.name)
    for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            names |= _selectors(child)
    for arg in getattr(node, "args", None) or ():
        names |= _selectors(arg)
    return names


@pytest.fixture(scope="module")
def native_stack(tmp_path_factory):
    """The compose stack's commands run natively: pki-init's script, Mosquitto, the gateway from the same template."""
    home = tmp_path_factory.mktemp("stack-home")
    base = [IOTGATE, "--home", str(home)]
    services = compose()["services"]
    broker_port, gateway_port, metrics_port = free_port(), free_port(), free_port()
    for args in iotgate_commands(services["pki-init"]):
        if args[:2] == ["pki", "show"]:
            continue
        if args[:2] == ["fleet", "provision"]:
            args = args + ["--count", "5"]
        if args[:2] == ["broker", "config"]:
            args = ["broker", "config", "--host", "127.0.0.1", "--port", str(broker_port)]
        if args[:2] == ["stack", "render"]:
            args = ["stack", "render", "--deploy", str(ROOT / "deploy"), "--out", str(home / "stack"),
                    "--profile", "native", "--set", f"upstream=mqtts://127.0.0.1:{broker_port}",
                    "--set", f"gateway_port={gateway_port}", "--set", f"metrics_port={metrics_port}"]
        subprocess.run(base + args, check=True, capture_output=True, timeout=120)
    mosquitto = subprocess.Popen([find_mosquitto(), "-c", str(home / "broker" / "mosquitto.conf")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway_args = [a.replace("/stack/", f"{home}/stack/") for a in services["gateway"]["command"]]
    gateway = subprocess.Popen(base + gateway_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = gateway.stderr.readline()
        assert "listening on" in line, line
        yield home, gateway_port, metrics_port, services
    finally:
        gateway.terminate()
        gateway.wait(15)
        mosquitto.terminate()
        mosquitto.wait(15)


def test_fleet_service_runs_natively_and_every_dashboard_panel_queries_an_exported_metric(native_stack):
    home, gateway_port, metrics_port, services = native_stack
    args = [a.replace("/deploy/", f"{ROOT}/deploy/").replace("/iotgate/", f"{home}/")
            .replace("127.0.0.1:8883", f"127.0.0.1:{gateway_port}") for a in services["fleet"]["command"]]
    # the service's command, bounded for a test (later options win)
    run = subprocess.run([IOTGATE, "--home", str(home)] + args + ["--devices", "4", "--duration", "3"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    deadline = time.monotonic() + 10
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        if "iotgate_flow_packets_total" in exported or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = _selectors(promql_parser.parse(target["expr"]))
            assert names, target["expr"]
            missing = names - exported
            assert not missing, f"panel {panel['title']!r}: {sorted(missing)} not in /metrics"


def test_a_panel_on_a_metric_that_does_not_exist_is_caught(native_stack):
    _, _, metrics_port, _ = native_stack
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    names = _selectors(promql_parser.parse('sum(rate(iotgate_handshakes_total{kind="x"}[1m])) / iotgate_sessions_active'))
    assert names == {"iotgate_handshakes_total", "iotgate_sessions_active"}
    assert names - exported == {"iotgate_handshakes_total"}
