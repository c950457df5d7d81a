"""`iotgate flows`: the declared data-flow diagram checked against the gateways' access logs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from certs.keys import write_file
from gateway.observe.flows import compare, load_declared, observe, read_logs
from gateway.observe.flows.draw import mermaid, render
from gateway.observe.flows.home import home_ca_aliases
from gateway.observe.flows.log import parse_since
from gateway.observe.flows.model import FlowsError
from gateway.registry import NotFound
from gateway.observe.flows.suggest import lint_findings, suggest, to_toml
from iotgate.context import AppContext, console, emit_json, emit_table, err_console, pass_app


@click.group()
def flows() -> None:
    """Declared flows vs what the gateways saw: check, draw, suggest."""


def _logs_option(f):
    f = click.option("--since", metavar="T", help="Only events after T: ISO 8601 time or a duration (15m, 2h, 1d).")(f)
    return click.option("--log", "logs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                        help="A gateway access log (repeat for several nodes; default: the home's "
                             "gateway-access.log).")(f)


def _load(app: AppContext, logs: tuple[Path, ...], since: str | None):
    paths = list(logs) or [app.home / "gateway-access.log"]
    records, malformed = read_logs(paths)
    if malformed:
        raise FlowsError(f"{', '.join(map(str, paths))}: {malformed} line(s) are not access-log JSON; "
                         "a log that cannot be read whole cannot vouch for its flows")
    obs = observe(records, since=parse_since(since, time.time()))
    return paths, obs


def _context(app: AppContext, obs) -> tuple[dict, dict]:
    """Thing types of the things seen (registry), and the home's CA aliases: issuing, root, upstream."""
    thing_types: dict = {}
    aliases = home_ca_aliases(app.home)
    things = {i.thing for i in obs.identities.values() if i.thing}
    if things and (app.registry_url or (app.home / "registry.db").exists()):
        registry = app.registry()
        for name in things:
            try:
                thing_types[name] = registry.get_thing(name).thing_type
            except NotFound:  # a thing deleted since: no type
                thing_types[name] = None
    return thing_types, aliases


@flows.command("check")
@click.option("--declared", "declared_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The flows file (TOML, or YAML by its .yaml/.yml suffix).")
@_logs_option
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON here.")
@pass_app
def check(app: AppContext, declared_path: Path, logs, since, as_json: bool, report: Path | None) -> None:
    """Observed flows vs declared ones; exit 1 on an undeclared flow or authentication, 2 without evidence."""
    declared = load_declared(declared_path)
    paths, obs = _load(app, logs, since)
    if obs.records == 0:
        raise FlowsError(f"{', '.join(map(str, paths))}: no access-log events"
                         f"{' since ' + since if since else ''}: nothing to check (SKIPPED)")
    thing_types, aliases = _context(app, obs)
    if any(p.thing_types for p in declared.principals) and not thing_types and obs.identities:
        raise FlowsError(f"{declared_path}: principals by thing type need the registry (--home or --registry)")
    cmp = compare(declared, obs, thing_types=thing_types, ca_aliases=aliases)
    doc = cmp.to_json() | {"logs": [str(p) for p in paths], "nodes": obs.nodes, "events": obs.records,
                           "since": since, "flows_beyond_session_table": obs.overflow}
    if report is not None:
        write_file(report, json.dumps(doc, indent=2).encode() + b"\n", mode=0o640)
    if as_json:
        emit_json(doc)
    else:
        _print(cmp, obs)
    click.get_current_context().exit(0 if cmp.passed else 1)


def _print(cmp, obs) -> None:
    emit_table("observed flows", ["identity", "principal", "hop", "direction", "topic", "count", "authentication",
                                  "status"],
               [(f.identity, f.principal or "-", f.hop, f.direction, f.topic, f.count, f.auth, f.status)
                for f in cmp.flows])
    if cmp.auth_mismatches:
        emit_table("authentication not as declared", ["identity", "principal", "observed", "declared"],
                   [(m.identity, m.principal, m.observed, m.declared) for m in cmp.auth_mismatches])
    if cmp.refusals:
        emit_table("refused: unauthorized access attempts", ["identity", "principal", "event", "reason", "count",
                                                             "example"],
                   [(r.identity, r.principal or "-", r.event, r.kind, r.count, r.reason) for r in cmp.refusals])
    if cmp.never_seen:
        emit_table("declared, never seen", ["principal", "hop", "direction", "topic"],
                   [(n.principal, n.hop, n.direction, n.topic) for n in cmp.never_seen])
    for p in cmp.permissive:
        console.print(f"over-permissive: {p.principal} {p.direction} {p.code}: {p.text}", soft_wrap=True)
    verdict = "PASS" if cmp.passed else "FAIL"
    console.print(f"result: {verdict}: {len(cmp.undeclared)} undeclared flow(s), {len(cmp.auth_mismatches)} "
                  f"authentication mismatch(es), {sum(r.count for r in cmp.refusals)} refused attempt(s), "
                  f"{len(cmp.never_seen)} declared flow(s) never seen; {obs.records} events from "
                  f"{len(obs.nodes)} log(s)", soft_wrap=True)


@flows.command("draw")
@click.option("--declared", "declared_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@_logs_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the picture here (.svg or .png); the Mermaid text goes beside it (.mmd).")
@pass_app
def draw(app: AppContext, declared_path: Path, logs, since, out: Path | None) -> None:
    """The declared and observed flows as one diagram: Mermaid on standard output, SVG/PNG with --out."""
    declared = load_declared(declared_path)
    paths = list(logs) or [app.home / "gateway-access.log"]
    if any(p.exists() for p in paths) or logs:
        _, obs = _load(app, logs, since)
    else:
        obs = observe([])
    thing_types, aliases = _context(app, obs)
    cmp = compare(declared, obs, thing_types=thing_types, ca_aliases=aliases)
    text = mermaid(declared, cmp)
    if out is None:
        click.echo(text, nl=False)
        return
    if out.suffix.lower() not in (".svg", ".png"):
        raise FlowsError(f"--out {out}: the picture is .svg or .png")
    render(declared, cmp, out)
    write_file(out.with_suffix(".mmd"), text.encode(), mode=0o644)
    err_console.print(f"wrote {out} and {out.with_suffix('.mmd')}")


@flows.command("suggest")
@_logs_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write flows.toml and policies/<name>.json here (default: print the flows file).")
@pass_app
def suggest_cmd(app: AppContext, logs, since, out: Path | None) -> None:
    """A least-privilege flows file and AWS IoT policies from the flows seen, for review."""
    paths, obs = _load(app, logs, since)
    if not obs.flows:
        raise FlowsError(f"{', '.join(map(str, paths))}: no allowed flow seen: nothing to suggest")
    principals, policies = suggest(obs)
    header = (f"Suggested by `iotgate flows suggest` from {', '.join(map(str, paths))}"
              f"{' since ' + since if since else ''}: every allowed flow seen, nothing else. Review before use.")
    text = to_toml(principals, header)
    findings = lint_findings(policies)
    if out is None:
        click.echo(text, nl=False)
        for name, doc in policies.items():
            click.echo(f"# policy {name}:\n# " + json.dumps(doc))
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_file(out / "flows.toml", text.encode(), mode=0o644)
        (out / "policies").mkdir(exist_ok=True)
        for name, doc in policies.items():
            write_file(out / "policies" / f"{name}.json", json.dumps(doc, indent=2).encode() + b"\n", mode=0o644)
        err_console.print(f"wrote {out / 'flows.toml'} and {len(policies)} policy file(s) in {out / 'policies'}; "
                          f"create one with `iotgate policy create NAME FILE`")
    for name, items in findings.items():
        for item in items:
            err_console.print(f"policy lint {name}: {item}", soft_wrap=True)
