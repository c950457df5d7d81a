"""`iotgate qualify`: a local Device Advisor. Act as the endpoint a device connects to, misbehave on purpose
(wrong server name, untrusted CA, expired certificate, withheld CONNACK, ...) and report what the device did."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import click

from iotgate.context import AppContext, console, emit_json, err_console, pass_app


@click.command("qualify")
@click.option("--suite", "suite_spec", default="device-advisor-qualification", show_default=True,
              metavar="NAME|FILE", help="A suite TOML file, or a built-in: device-advisor-qualification, tls-only, "
                                        "full.")
@click.option("--device-cmd", default=None, metavar="CMD",
              help="Start this device for every case; {endpoint}, {host}, {port} and {ca} are replaced. Without it, "
                   "wait for an external device to connect (and reconnect between cases).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8883, show_default=True,
              help="Port to listen on (0: a free one, shown at start).")
@click.option("--server-name", default="localhost", show_default=True,
              help="The endpoint's name: the valid server certificates are issued for it (and for localhost, "
                   "127.0.0.1, ::1); the device should connect by it.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write report.json, report.html, junit.xml and the device's logs here.")
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write JUnit XML to this file (for CI).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@pass_app
def qualify(app: AppContext, suite_spec: str, device_cmd: str | None, host: str, port: int, server_name: str,
            report_dir: Path | None, junit_file: Path | None, as_json: bool) -> None:
    """Qualify a device: TLS server authentication, MQTT behaviour, backoff, keep alive and policy, case by case.

    Exit code 0 when every case passed (with or without warnings), 1 when any failed, errored or was skipped.
    """
    from gateway.auth import AuthView
    from gateway.qualify.device import CommandDevice, ExternalDevice
    from gateway.qualify.policies import PolicySource
    from gateway.qualify.profiles import ServerProfiles
    from gateway.qualify.report import report_dict, write_junit, write_reports
    from gateway.qualify.runner import Qualification
    from gateway.qualify.suite import load_suite
    from gateway.qualify.tls import ContextFactory

    suite = load_suite(suite_spec)
    app.require_home()
    issuer = app.issuer()
    view = AuthView(app.registry().snapshot(certificate_pem=False))
    if not view.ca_pems:
        raise click.UsageError("the registry holds no CA to verify devices with; run `iotgate pki init` or "
                               "`iotgate ca register` first")
    names = [server_name, "localhost", "127.0.0.1", "::1"] + ([host] if host not in ("0.0.0.0", "::") else [])
    profiles = ServerProfiles(issuer, names, now=app.clock())
    ca_file = app.store.paths.root_cert.resolve()
    with tempfile.TemporaryDirectory(prefix="iotgate-qualify-") as scratch:
        log_dir = (report_dir / "device-logs") if report_dir else Path(scratch) / "logs"
        device = CommandDevice(device_cmd, log_dir) if device_cmd else ExternalDevice()
        total = len(suite.cases)
        done = []

        def on_ready(endpoint) -> None:
            if as_json:
                return
            who = device.description if device_cmd else "waiting for the device to connect"
            err_console.print(f"qualify: suite {suite.name} ({total} cases) on {endpoint.host}:{endpoint.port}, "
                              f"server name {endpoint.server_name}, devices trust {endpoint.ca_file}; {who}",
                              soft_wrap=True)

        def on_case(result) -> None:
            done.append(result)
            if not as_json:
                err_console.print(f"  [{len(done)}/{total}] {result.case_id}: {_mark(result.verdict)}", markup=True)

        qualification = Qualification(suite, device, profiles=profiles,
                                      contexts=ContextFactory(Path(scratch) / "tls", view.ca_pems),
                                      policies=PolicySource(view), host=host, port=port, server_name=server_name,
                                      ca_file=ca_file, on_ready=on_ready, on_case=on_case)
        result = asyncio.run(qualification.run())
    files = []
    if report_dir is not None:
        files = write_reports(report_dir, result)
    if junit_file is not None:
        files.append(write_junit(junit_file, result))
    if as_json:
        report = report_dict(result)
        report["files"] = [str(f) for f in files]
        emit_json(report)
    else:
        _print(result, files)
    if not result.verdict.passed:
        raise SystemExit(1)


def _mark(verdict) -> str:
    from gateway.qualify.verdict import Verdict

    colour = {Verdict.PASS: "green", Verdict.PASS_WITH_WARNINGS: "yellow", Verdict.FAIL: "bold red",
              Verdict.ERROR: "bold red", Verdict.SKIPPED: "magenta"}[verdict]
    return f"[{colour}]{verdict}[/]"


def _print(result, files) -> None:
    from rich.table import Table

    table = Table(title=f"iotgate qualify: {result.suite.name}", title_justify="left")
    for column in ("case", "verdict", "time", "what the device did"):
        table.add_column(column, overflow="fold")
    for r in result.results:
        text = r.summary + "".join(f"\n[yellow]warning:[/] {w}" for w in r.warnings)
        table.add_row(r.case_id, _mark(r.verdict), f"{r.duration:.1f} s", text)
    console.print(table)
    if result.error:
        console.print(f"[bold red]run error:[/] {result.error}", soft_wrap=True)
    where = f"; reports: {', '.join(str(f) for f in files)}" if files else ""
    console.print(f"result: {_mark(result.verdict)} ({len(result.results)} cases, {result.seconds:.1f} s){where}",
                  soft_wrap=True)
