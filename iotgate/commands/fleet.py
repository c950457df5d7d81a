"""`iotgate fleet`: provision many devices at once; run a simulated fleet against the gateway, Mosquitto or
AWS IoT Core."""

from __future__ import annotations

import re
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from certs.errors import IotgateError
from certs.keys import KeyType
from iotgate.context import AppContext, console, emit_json, pass_app
from devices.provisioning import default_workers, ensure_policy, provision_fleet, thing_names


class Interrupted(IotgateError):
    exit_code = 130


def _check_prefix(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9:_-]*", value):
        bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9:_-]", c)})
        raise click.BadParameter(f"{value!r} holds {' '.join(repr(c) for c in bad)}: thing names may hold letters, "
                                 "digits, ':', '_' and '-' only (each becomes a folder name under devices/)")
    if len(value) > 128 - 5:
        raise click.BadParameter(f"{value!r} is too long: a thing name is at most 128 characters")
    return value


@click.group()
def fleet() -> None:
    """Fleet operations: bulk provisioning and simulated runs."""


@fleet.command("provision")
@click.option("--count", type=click.IntRange(min=1, max=1_000_000), required=True, help="Number of devices.")
@click.option("--prefix", default="device-", show_default=True, callback=lambda ctx, param, value: _check_prefix(value),
              help="Thing names are PREFIX00001, ... (letters, digits, ':', '_' and '-').")
@click.option("--start", type=click.IntRange(min=0), default=1, show_default=True, help="First device number.")
@click.option("--policy", "policy", metavar="NAME|FILE",
              help="Policy to attach: a registered name or a JSON file (registered under its file name). "
                   "Default: the built-in least-privilege policy 'iotgate-device'.")
@click.option("--key-type", type=click.Choice([KeyType.EC_P256.value, KeyType.EC_P384.value,
                                               KeyType.RSA_2048.value, KeyType.RSA_3072.value]),
              default=KeyType.EC_P256.value, show_default=True, help="Device key type (made on the device side).")
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True, help="Certificate validity.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--by-claim", is_flag=True,
              help="Onboard through fleet provisioning by claim instead: each device connects with the claim "
                   "certificate and gets its own identity from the endpoint (the gateway or AWS IoT Core).")
@click.option("--claim-cert", type=click.Path(dir_okay=False, path_type=Path), help="--by-claim: claim certificate.")
@click.option("--claim-key", type=click.Path(dir_okay=False, path_type=Path), help="--by-claim: its private key.")
@click.option("--template", "template", metavar="NAME", help="--by-claim: the fleet provisioning template.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="--by-claim: a template parameter (repeatable); {thing} and {n} are the device's name and number.")
@click.option("--endpoint", default="localhost:8883", show_default=True, metavar="HOST:PORT",
              help="--by-claim: where to connect (HOST is also the TLS server name).")
@click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path),
              help="--by-claim: CA of the endpoint's certificate (default: the home's root-ca.pem).")
@click.option("--server-keys", is_flag=True,
              help="--by-claim: CreateKeysAndCertificate (the endpoint makes the key) instead of "
                   "CreateCertificateFromCsr (the key never leaves the device).")
@pass_app
@click.pass_context
def provision(ctx: click.Context, app: AppContext, count: int, prefix: str, start: int, policy: str | None,
              key_type: str, days: int, workers: int | None, as_json: bool, by_claim: bool, claim_cert: Path | None,
              claim_key: Path | None, template: str | None, params: tuple[str, ...], endpoint: str,
              ca_file: Path | None, server_keys: bool) -> None:
    """Make a key + CSR per device, sign it, write devices/<thing>/ and register thing, certificate and policy.

    Re-running is safe: things already registered are skipped and a half-finished run is completed.
    With --by-claim the devices onboard themselves through the endpoint's fleet provisioning API instead.
    """
    claim_only = ("claim_cert", "claim_key", "template", "params", "ca_file", "server_keys", "endpoint")
    given = {name for name in ctx.params if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE}
    if by_claim:
        local_only = sorted(given & {"policy", "key_type", "days", "workers"})
        if local_only:
            raise click.UsageError(f"--{local_only[0].replace('_', '-')} does not apply to --by-claim (the template "
                                   "decides policies; the device makes an EC P-256 key)")
        _provision_by_claim(app, count, prefix, start, claim_cert, claim_key, template, params, endpoint, ca_file,
                            server_keys, as_json)
        return
    stray = sorted(given & set(claim_only))
    if stray:
        raise click.UsageError(f"--{stray[0].replace('_', '-')} needs --by-claim")
    app.require_home()
    store = app.store
    issuer = app.issuer()
    registry = app.registry()
    policy_name = ensure_policy(registry, policy)
    names = thing_names(prefix, count, start)
    workers = workers or default_workers()
    registered = 0

    def advance(n: int) -> None:
        nonlocal registered
        registered += n
        progress.advance(task, n)

    try:
        with Progress(TextColumn("provisioning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console, transient=True, disable=as_json) as progress:
            task = progress.add_task("devices", total=len(names))
            report = provision_fleet(store, registry, issuer, names, policies=[policy_name], key_type=key_type,
                                     workers=workers, now=app.clock(), days=days, on_progress=advance)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {registered:,} of {len(names):,} device(s) registered; run the same command "
                          "again to finish (registered things are skipped; device folders written without their "
                          "registration are issued again)") from None
    rate = report.issued / report.seconds if report.seconds and report.issued else 0.0
    if as_json:
        emit_json({"requested": report.requested, "issued": report.issued, "skipped": report.skipped,
                   "seconds": round(report.seconds, 3), "perSecond": round(rate, 1), "policies": report.policies,
                   "devicesDir": str(store.paths.devices), "workers": workers})
        return
    console.print(f"{report.issued} device(s) issued, {report.skipped} already present, "
                  f"in {report.seconds:.1f} s ({rate:,.0f}/s, {workers} worker(s)); policy {policy_name}")
    console.print(f"identities in {store.paths.devices}/<thing>/ (device.pem, device.key 0600, root-ca.pem)")


def _provision_by_claim(app: AppContext, count: int, prefix: str, start: int, claim_cert: Path | None,
                        claim_key: Path | None, template: str | None, params: tuple[str, ...], endpoint: str,
                        ca_file: Path | None, server_keys: bool, as_json: bool) -> None:
    from devices.fleet_claim import check_claim_files, provision_by_claim

    missing = [name for name, value in (("--claim-cert", claim_cert), ("--claim-key", claim_key),
                                        ("--template", template)) if value is None]
    if missing:
        raise click.UsageError(f"--by-claim needs {', '.join(missing)}")
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise click.BadParameter(f"{endpoint!r} is not HOST:PORT", param_hint="--endpoint")
    pairs = {}
    for value in params:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", param_hint="--param")
        pairs[name] = text
    check_claim_files(claim_cert, claim_key)
    app.require_home()
    ca = ca_file or app.store.paths.root_cert
    if not Path(ca).is_file():
        raise click.BadParameter(f"{ca}: file not found", param_hint="--ca-file")
    done = []
    for thing in thing_names(prefix, count, start):
        n = thing[len(prefix):]
        values = {k: v.replace("{thing}", thing).replace("{n}", n) for k, v in pairs.items()}
        try:
            result = provision_by_claim(endpoint=host, port=int(port_text), ca_file=str(ca), claim_cert=str(claim_cert),
                                        claim_key=str(claim_key), template=template, parameters=values,
                                        devices_dir=app.store.paths.devices, client_id=thing,
                                        own_key=not server_keys)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted: {len(done)} of {count} device(s) onboarded") from None
        except IotgateError as exc:
            exc.add_note(f"{len(done)} of {count} device(s) were onboarded before this one ({thing})")
            raise
        done.append(result)
        if not as_json:
            console.print(f"{result.thing}: certificate {result.certificate_id[:16]}..., {result.directory}",
                          markup=False)
    if as_json:
        emit_json([{"thingName": r.thing, "certificateId": r.certificate_id, "directory": str(r.directory),
                    "deviceConfiguration": dict(r.device_configuration)} for r in done])
        return
    console.print(f"{len(done)} device(s) onboarded by claim through {endpoint} with template {template}")


# --------------------------------------------------------------------------------------------- run

def _live_table(snapshot: dict, previous: dict | None, interval: float):
    from rich.table import Table

    table = Table(title=f"fleet run: {snapshot['elapsed']:.1f} s", title_justify="left")
    for column in ("connected", "connects/s", "messages/s", "failed connects and drops by reason"):
        table.add_column(column)
    dt_ = max(snapshot["elapsed"] - (previous or {}).get("elapsed", 0.0), 1e-9) if previous else interval
    cps = (snapshot["connects"] - (previous or {}).get("connects", 0)) / dt_
    mps = (snapshot["messages"] - (previous or {}).get("messages", 0)) / dt_
    failures = "\n".join(f"{n:>5}  {reason}" for reason, n in snapshot["failures"].items()) or "-"
    table.add_row(f"{snapshot['connected']}/{snapshot['devices']}", f"{cps:,.1f}", f"{mps:,.1f}", failures)
    return table


@fleet.command("run")
@click.option("--target", type=click.Choice(["gateway", "mosquitto", "aws"]), required=True,
              help="What the devices connect to (gateway and mosquitto: loopback only).")
@click.option("--endpoint", required=True, metavar="HOST[:PORT]", help="Where to connect (port 8883 by default).")
@click.option("--devices", "device_count", type=click.IntRange(min=0, max=10_000), default=10, show_default=True,
              help="Legitimate devices, shared among the scenario's groups by weight.")
@click.option("--rate", default=None, metavar="R/s", help="New connections per second (default: the scenario's, "
                                                           "else all at once).")
@click.option("--duration", type=click.FloatRange(min=0.1, max=3600), default=None, metavar="S",
              help="Seconds of traffic (default: the scenario's).")
@click.option("--scenario", "scenario_spec", default="telemetry", show_default=True, metavar="FILE|NAME",
              help="A TOML scenario file or a built-in: telemetry, command-response, reconnect-storm.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Write report.json, report.html and latency.png here.")
@click.option("--connector", type=click.Choice(["native", "paho", "aiomqtt", "awsiotsdk"]), default="native",
              show_default=True, help="MQTT client stack every device uses.")
@click.option("--slo", default=None, metavar="GATES", help='Pass/fail gates, e.g. "connack_p99<500ms,errors=0".')
@click.option("--strict", is_flag=True, help="A check that could not run on this target fails the run.")
@click.option("--keep-identities", is_flag=True,
              help="Keep the run's own certificates (operator, probe, attackers) ACTIVE and their files, for a look "
                   "afterwards; by default they are detached and deactivated at the end.")
@click.option("--server-name", default=None, help="Name the server certificate must carry (default: the host).")
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="CA for the server (default: the home's root; for AWS: Amazon Root CA 1).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for chaos choices and jitter.")
@click.option("--token-port", type=click.IntRange(min=1, max=65535), default=None,
              help="The gateway's token listener (gateway run --token-port), for the token and SigV4 attackers.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@pass_app
def run(app: AppContext, target: str, endpoint: str, device_count: int, rate: str | None, duration: float | None,
        scenario_spec: str, report_dir: Path | None, connector: str, slo: str | None, strict: bool,
        keep_identities: bool, server_name: str | None, ca_file: Path | None, seed: int, token_port: int | None,
        as_json: bool) -> None:
    """Simulate a fleet: devices, attackers and chaos from a scenario; compare outcomes with expectations.

    Exit code 0: PASS, every group met its expectation on evidence and every --slo gate passed (skipped checks are
    listed; --strict fails them). 1: FAIL (a mismatch, an inconclusive outcome, a failed check or gate). 2: the run
    could not start, or the target did not prove it answers a legitimate device. 3: a part of the run failed
    (the error names it).
    """
    import sys

    from rich.live import Live

    from devices.client import Endpoint
    from devices.fleet import (FleetError, FleetPlan, LocalPKI, RunPartError, TargetError, check_endpoint,
                               parse_endpoint, parse_rate, run_fleet)
    from devices.report import parse_slo
    from devices.scenario import load_scenario

    try:
        host, port = parse_endpoint(endpoint)
        check_endpoint(target, host)
        gates = tuple(parse_slo(slo)) if slo else ()
        connects_per_s = parse_rate(rate) if rate else None
    except FleetError as exc:
        raise click.UsageError(str(exc)) from None
    scenario = load_scenario(scenario_spec)
    ep = Endpoint.aws(host, port) if target == "aws" else Endpoint(host, port, server_name)
    local = None
    devices_dir = None
    if target == "aws":
        devices_dir = app.store.paths.devices
        if ca_file is None:
            raise click.UsageError("--target aws needs --ca-file (Amazon Root CA 1) to verify AWS IoT Core")
    else:
        app.require_home()
        local = LocalPKI(app.store, app.registry(), app.issuer(), app.clock())
    live = None
    previous: dict = {}

    def on_tick(snapshot: dict) -> None:
        nonlocal previous
        if live is not None:
            live.update(_live_table(snapshot, previous, 0.5))
        previous = snapshot

    plan = FleetPlan(target=target, endpoint=ep, devices=device_count, scenario=scenario, duration=duration,
                     rate=connects_per_s, connector=connector, local=local, devices_dir=devices_dir,
                     ca_file=str(ca_file) if ca_file else None, slo=gates, seed=seed, strict=strict,
                     keep_identities=keep_identities, on_tick=on_tick, token_port=token_port)
    show_live = not as_json and sys.stdout.isatty()
    try:
        try:
            if show_live:
                with Live(console=console, refresh_per_second=4, transient=True) as live:
                    result = run_fleet(plan)
            else:
                result = run_fleet(plan)
        except FleetError as exc:
            raise click.UsageError(str(exc)) from None
    except (TargetError, RunPartError) as exc:
        if report_dir is not None:
            _write_error_report(report_dir, plan, exc)
        raise
    report = result.report
    if report_dir is not None:
        _write_report(report_dir, report, result.samples, scenario.name)
    if as_json:
        emit_json(report)
    else:
        _print_report(report)
    if not result.passed:
        raise SystemExit(1)


def _write_report(report_dir: Path, report: dict, samples: dict, name: str) -> None:
    from devices.report import write_histogram_png, write_html, write_json

    report_dir.mkdir(parents=True, exist_ok=True)
    png = write_histogram_png(report_dir / "latency.png", samples, f"{name}: latency")
    if png is None:
        (report_dir / "latency.png").unlink(missing_ok=True)
    report["files"] = {"json": str(report_dir / "report.json"), "html": str(report_dir / "report.html"),
                       "png": str(png) if png else None}
    write_json(report_dir / "report.json", report)
    write_html(report_dir / "report.html", report, png.name if png else None)


def _write_error_report(report_dir: Path, plan, exc: Exception) -> None:
    """A run without a verdict still replaces an earlier report: nobody may read an old PASS as this run's."""
    from devices.report import write_html, write_json

    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "latency.png").unlink(missing_ok=True)
    report = {"scenario": plan.scenario.name, "target": plan.target,
              "endpoint": f"{plan.endpoint.host}:{plan.endpoint.port}", "connector": plan.connector, "passed": False,
              "result": "ERROR", "verdict": f"result: ERROR: {exc}", "error": str(exc)}
    write_json(report_dir / "report.json", report)
    write_html(report_dir / "report.html", report, None)


_RESULT = {"ok": "[green]as expected[/]", "skipped": "[yellow]skipped[/]"}


def _print_report(report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    s = report["summary"]
    console.print(f"[bold]{escape(report['scenario'])}[/] against {report['target']} {report['endpoint']} "
                  f"({report['connector']}): {s['devices']} devices, {s['attackers']} attackers, "
                  f"{s['seconds']:.1f} s; {s['connects']} connects ({s['connects_per_s']:.1f}/s), "
                  f"{s['messages']} messages ({s['messages_per_s']:.1f}/s)"
                  + (f"; {s['commands_answered']} of {s['commands_sent']} commands answered"
                     if s["commands_sent"] else ""))
    table = Table(title="outcome versus expectation", title_justify="left")
    for column in ("group", "expected", "members", "allowed", "refused", "inconclusive", "skipped", "result", "seen"):
        table.add_column(column, overflow="fold")
    for g in report["groups"]:
        if g["result"] in _RESULT:
            result = _RESULT[g["result"]]
        elif g["mismatches"]:
            result = f"[bold red]{g['mismatches']} mismatch(es)[/]"
        else:
            result = f"[bold red]{g['inconclusive'] + g['errors']} inconclusive[/]"
        seen = "; ".join(f"{k} x{v}" for k, v in list(g["details"].items())[:2])
        table.add_row(g["group"], g["expect"], str(g["members"]), str(g["allowed"]), str(g["refused"]),
                      str(g["inconclusive"] + g["errors"]), str(g["skipped"]), result, escape(seen))
    console.print(table)
    lat = Table(title="latency (ms)", title_justify="left")
    for column in ("phase", "count", "p50", "p90", "p99", "max"):
        lat.add_column(column)
    for phase, v in report["latency"].items():
        if v["count"]:
            lat.add_row(phase, str(v["count"]), *(f"{v[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")))
    console.print(lat)
    for check in report["checks"]:
        if check["status"] == "skipped":
            console.print(f"[yellow]skipped:[/] {escape(check['check'])}: {escape(check['detail'])}", soft_wrap=True)
        elif check["status"] == "failed":
            console.print(f"[bold red]check failed:[/] {escape(check['check'])}: {escape(check['detail'])}",
                          soft_wrap=True)
    for gate in report["slo"]:
        mark = "[green]pass[/]" if gate["passed"] else "[bold red]FAIL[/]"
        console.print(f"slo {escape(gate['gate'])}: {mark} (value {gate['shown']})")
    for note in report["notes"]:
        console.print(f"note: {escape(note)}", soft_wrap=True)
    for m in report["mismatches"]:
        console.print(f"[bold red]mismatch:[/] {escape(m)}", soft_wrap=True)
    for f in report["failures"]:
        console.print(f"[bold red]inconclusive:[/] {escape(f)}", soft_wrap=True)
    for e in report["errors"]:
        console.print(f"[bold red]error:[/] {escape(e)}", soft_wrap=True)
    line = escape(report["verdict"])
    line = line.replace("result: PASS", "result: [bold green]PASS[/]", 1).replace("result: FAIL",
                                                                                  "result: [bold red]FAIL[/]", 1)
    console.print(line + (f"; report in {report['files']['html']}" if report.get("files") else ""), soft_wrap=True)
