"""`iotgate loadtest`: a Locust master and K local workers (Locust's own distributed mode) running device users,
each with its own identity from the home, against the gateway, a plain Mosquitto or AWS IoT Core.

Before anything starts it checks the pool of identities (enough for every user, disjoint per worker) and that
the target answers at all, and prepares the run's own identities (an e2e observer per worker, the attackers).
Locust writes its CSV and HTML reports; the exit code is the master's (``--exit-code-on-error`` when any request
failed), so a CI job can gate on it.

This process never imports Locust (which patches the interpreter for gevent): master and workers are child
processes running ``loadtests/locustfile.py``.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import shutil
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click
from cryptography import x509

from certs.authority import certificate_id
from gateway.registry import NotFound
from iotgate.context import AppContext, console, err_console, pass_app
from devices.provisioning import DEFAULT_POLICY_NAME, ensure_policy, register_certificate, rewrite_crl
from devices.token_attacks import DEVICE_TOKEN_POLICY, TokenWorld, device_key_policy
from loadtests.identities import LoadtestDirs, attacker_client_id, prepare
from loadtests.plan import (AUTH_KINDS, E2E_MODES, SIGV4_ATTACKS, TARGETS, TOKEN_ATTACKS, PlanError, Settings,
                            attack_kinds_for, identities_needed, is_loopback, parse_duration, parse_endpoint,
                            worker_slice)
from loadtests.preflight import check_pool, check_reachable
from loadtests.shapes import SHAPES, shape_spec

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"
DEFAULT_MASTER_PORT = 5557
MAX_USERS = 100_000
LOADTEST_AUTHORIZER = "iotgate-loadtest-jwt"      # the token attackers' authorizer and SigV4 keys' identity
LOADTEST_KEY_IDENTITY = "iotgate-loadtest"
LOADTEST_DEVICE_AUTHORIZER = "iotgate-loadtest-devices-jwt"   # --auth token|sigv4 device users
LOADTEST_DEVICE_KEY_IDENTITY = "iotgate-loadtest-devices"
ROWS = ("tcp_connect", "tls_handshake", "connack", "suback", "puback", "e2e")


class _Registrar:
    """loadtests.identities.Registrar over the registry and the provisioning service."""

    def __init__(self, registry, issuer) -> None:
        self.registry = registry
        self.issuer = issuer

    def ensure_policy(self, name: str, document: str) -> None:
        try:
            self.registry.get_policy(name)
        except NotFound:
            self.registry.create_policy(name, document)

    def ensure_thing(self, name: str) -> None:
        try:
            self.registry.get_thing(name)
        except NotFound:
            self.registry.create_thing(name)

    def status(self, certificate: x509.Certificate) -> str | None:
        try:
            return self.registry.get_certificate(certificate_id(certificate)).status
        except NotFound:
            return None

    def register(self, thing: str, certificate: x509.Certificate, pem: bytes, status: str,
                 policies: Sequence[str]) -> None:
        register_certificate(self.registry, thing, certificate, pem, self.issuer.ca_id, policies, status=status)


def _free_port(host: str) -> int:
    from gateway.upstream.mosquitto import free_port

    return free_port(host)


def _locust(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]


def _worker_cmd(master_host: str, master_port: int) -> list[str]:
    return _locust("--worker", "--master-host", master_host, "--master-port", str(master_port))


def _interrupt_on_sigterm() -> None:
    """SIGTERM (and SIGINT, also when started as a background job) end the run the way Ctrl-C does."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def _default_sigint() -> None:
    """Locust stops a run and writes its reports on SIGINT: make sure a child started from a shell that ignores
    it (a background job) still gets it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Children:
    """The Locust processes this command started; each is waited for, and ended by its own pid if it lingers."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict, log: Path | None = None) -> subprocess.Popen:
        out = open(log, "ab") if log is not None else None
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=out or None, stderr=subprocess.STDOUT if out else None,
                                    stdin=subprocess.DEVNULL, preexec_fn=_default_sigint)
        finally:
            if out is not None:
                out.close()
        self.procs.append((name, proc))
        return proc

    def wait(self, proc: subprocess.Popen) -> int:
        interrupts = 0
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # pass it on (a terminal's Ctrl-C reaches the children too; a kill does not)
                interrupts += 1
                err_console.print("interrupted: Locust stops the run and writes its reports"
                                  if interrupts == 1 else "interrupted again: ending Locust")
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT if interrupts == 1 else signal.SIGTERM)

    def finish(self, grace: float = 15.0) -> dict[str, int]:
        deadline = time.monotonic() + grace
        codes = {}
        for name, proc in self.procs:
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    codes[name] = proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    codes[name] = proc.wait()
        return codes


def _summary(csv_prefix: Path) -> list[dict]:
    path = Path(f"{csv_prefix}_stats.csv")
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("Name") != "Aggregated"]


def _print_summary(rows: list[dict], failures_csv: Path) -> None:
    from rich.table import Table

    table = Table(title="requests (ms; Locust rounds percentiles under 100 ms to whole ms)", title_justify="left")
    for column in ("type", "name", "count", "failures", "avg", "p50", "p99", "max", "per s"):
        table.add_column(column, justify="left" if column in ("type", "name") else "right")
    for r in rows:
        failed = int(r["Failure Count"])
        table.add_row(r["Type"], r["Name"], r["Request Count"], f"[bold red]{failed}[/]" if failed else "0",
                      f"{float(r['Average Response Time']):.2f}", r["50%"], r["99%"],
                      f"{float(r['Max Response Time']):.1f}", f"{float(r['Requests/s']):.1f}")
    console.print(table)
    if failures_csv.exists():
        with failures_csv.open(newline="") as f:
            for row in csv.DictReader(f):
                console.print(f"[bold red]failure[/] {row['Method']} {row['Name']} x{row['Occurrences']}: "
                              f"{row['Error']}", soft_wrap=True)


@click.command("loadtest")
@click.option("--users", type=click.IntRange(1, MAX_USERS), default=100, show_default=True,
              help="Device users: each connects with its own identity from the home.")
@click.option("--spawn-rate", type=click.FloatRange(min=0.1), default=50.0, show_default=True,
              help="Devices started per second (all workers together).")
@click.option("--run-time", default="60s", show_default=True, help="How long the run lasts: 90s, 5m, 1h30m.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Local Locust worker processes (one per core is about right).")
@click.option("--remote-workers", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Workers on other machines that will join this master (`iotgate loadtest --join`).")
@click.option("--shape", type=click.Choice(list(SHAPES)), default="ramp", show_default=True,
              help="Load shape: " + "; ".join(f"{s.name}: {s.summary}" for s in SHAPES.values()) + ".")
@click.option("--headless", is_flag=True, help="No web UI: start at once, stop after --run-time.")
@click.option("--target", type=click.Choice(TARGETS), default="gateway", show_default=True)
@click.option("--endpoint", default="127.0.0.1:8883", show_default=True, metavar="HOST[:PORT]")
@click.option("--server-name", default=None, help="Name the server certificate must carry (default: the host).")
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="CA for the server instead of the home's root (for AWS: Amazon Root CA 1).")
@click.option("--prefix", default="device-", show_default=True, help="Thing-name prefix of the identity pool.")
@click.option("--attackers", type=click.IntRange(0, 100), default=None,
              help="Attacker users of the attack-mix shape.  [default: 1]")
@click.option("--token-port", type=click.IntRange(1, 65535), default=None,
              help="The gateway's token listener (gateway run --token-port): adds the token and SigV4 attackers.")
@click.option("--auth", "auth", type=click.Choice(AUTH_KINDS), default="certificate", show_default=True,
              help="How device users authenticate: their certificate, or on the token listener a custom-authorizer "
                   "token (token) or a SigV4-signed WebSocket (sigv4), one credential per user.")
@click.option("--telemetry-interval", type=click.FloatRange(min=0), default=None,
              help="Seconds between QoS 1 publishes of a device; 0: none.  [default: the shape's]")
@click.option("--payload-bytes", type=click.IntRange(16, 128 * 1024), default=64, show_default=True)
@click.option("--mqtt", type=click.Choice(["3.1.1", "5"]), default="5", show_default=True)
@click.option("--e2e", type=click.Choice(["auto", *E2E_MODES]), default="auto", show_default=True,
              help="Who reads probes back for the e2e row: an observer per worker (gateway), each device itself "
                   "(mosquitto), nobody (aws).")
@click.option("--storm-at", type=click.FloatRange(min=0), default=None,
              help="reconnect-storm: seconds into the run (default: 40% into the hold).")
@click.option("--keep-contexts", is_flag=True,
              help="Keep each identity's SSLContext between connects: less CPU per reconnect, ~30 KB more a device.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where Locust's CSV and HTML reports go.  [default: loadtest/reports/<run> in the home]")
@click.option("--exit-code-on-error", type=click.IntRange(0, 255), default=1, show_default=True,
              help="Exit code when any request failed (Locust's option).")
@click.option("--web-host", default="127.0.0.1", show_default=True)
@click.option("--web-port", type=click.IntRange(1, 65535), default=8089, show_default=True)
@click.option("--master-bind-host", default="127.0.0.1", show_default=True,
              help="Where the master listens for workers (0.0.0.0 for workers on other machines).")
@click.option("--master-port", type=click.IntRange(1, 65535), default=None,
              help=f"Master port.  [default: {DEFAULT_MASTER_PORT} with --remote-workers, else a free port]")
@click.option("--join", "join", default=None, metavar="MASTER[:PORT]",
              help="Only start --workers workers joining the master at MASTER (on another machine).")
@click.option("--allow-remote", is_flag=True,
              help="Allow a gateway or mosquitto target that is not on this machine (you run that target).")
@pass_app
def loadtest(app: AppContext, users: int, spawn_rate: float, run_time: str, workers: int, remote_workers: int,
             shape: str, headless: bool, target: str, endpoint: str, server_name: str | None, ca_file: Path | None,
             prefix: str, attackers: int | None, token_port: int | None, auth: str,
             telemetry_interval: float | None,
             payload_bytes: int, mqtt: str,
             e2e: str, storm_at: float | None, keep_contexts: bool, report_dir: Path | None, exit_code_on_error: int,
             web_host: str, web_port: int, master_bind_host: str, master_port: int | None, join: str | None,
             allow_remote: bool) -> None:
    """Load-test device authentication with Locust: one identity per user, real handshake timings.

    Rows: tcp_connect, tls_handshake, connack, suback, puback, e2e (and ATTACK <kind> for the attack-mix shape,
    where a refusal is a success and an acceptance a failure). Exit code: Locust's.
    """
    home = app.home.resolve()
    env = {**os.environ, "IOTGATE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    if join is not None:
        host, port = parse_endpoint(join, DEFAULT_MASTER_PORT)
        _join(home, host, port, workers, env)
        return
    app.require_home()
    spec = shape_spec(shape)
    if attackers is not None and not spec.attackers:
        raise click.UsageError(f"--attackers is for the attack-mix shape, not {shape}")
    attackers = (1 if attackers is None else attackers) if spec.attackers else 0
    seconds = parse_duration(run_time)
    host, port = parse_endpoint(endpoint)
    if target != "aws" and not is_loopback(host) and not allow_remote:
        raise click.UsageError(f"--endpoint {host} is not on this machine; pass --allow-remote if you run that "
                               f"{target} (use --target aws for AWS IoT Core)")
    if target == "aws" and ca_file is None:
        raise click.UsageError("--target aws needs --ca-file (Amazon Root CA 1) to verify AWS IoT Core")
    total_workers = workers + remote_workers
    e2e_mode = e2e if e2e != "auto" else {"gateway": "observer", "mosquitto": "self", "aws": "off"}[target]
    if target == "aws" and e2e_mode == "observer":
        raise click.UsageError("--e2e observer needs an observer identity registered on the target; against AWS "
                               "IoT Core use --e2e self (the devices' policy must allow it) or off")
    run_id = dt.datetime.now(dt.UTC).strftime("lt%Y%m%dT%H%M%S")
    interval = spec.telemetry_interval if telemetry_interval is None else telemetry_interval
    Settings(target=target, host=host, port=port, e2e=e2e_mode, workers=total_workers,
             protocol_level=5 if mqtt == "5" else 4, telemetry_interval=interval, payload_bytes=payload_bytes,
             token_port=token_port, auth=auth)

    pool = check_pool(home, prefix, users, total_workers)
    check_reachable(host, port, target)
    kinds, skipped = attack_kinds_for(target, token_port)
    world = _prepare(app, target, observers=total_workers if e2e_mode == "observer" else 0,
                     attack_slots=identities_needed(attackers, total_workers) if attackers else 0,
                     kinds=kinds if attackers else ())
    try:
        devices_world = _prepare_devices(app, auth, prefix, _used_names(pool.names, users, total_workers))
    except BaseException:
        if world is not None:
            world.retire(app.registry())
        raise
    try:
        report_dir = (report_dir or home / "loadtest" / "reports" / run_id).resolve()
        report_dir.mkdir(parents=True, exist_ok=True)
        csv_prefix = report_dir / "locust"
        html = report_dir / "report.html"
        port_master = master_port or (DEFAULT_MASTER_PORT if remote_workers else _free_port(master_bind_host))

        iotgate_args = ["--iotgate-target", target, "--iotgate-endpoint", endpoint, "--iotgate-prefix", prefix,
                        "--iotgate-pool-size", str(len(pool.names)), "--iotgate-pool-digest", pool.digest,
                        "--iotgate-shape", shape, "--iotgate-attackers", str(attackers), "--iotgate-mqtt", mqtt,
                        "--iotgate-telemetry-interval", f"{interval:g}", "--iotgate-payload-bytes", str(payload_bytes),
                        "--iotgate-e2e", e2e_mode, "--iotgate-run-id", run_id]
        if server_name:
            iotgate_args += ["--iotgate-server-name", server_name]
        if ca_file:
            iotgate_args += ["--iotgate-ca-file", str(ca_file.resolve())]
        if storm_at is not None:
            iotgate_args += ["--iotgate-storm-at", f"{storm_at:g}"]
        if keep_contexts:
            iotgate_args.append("--iotgate-keep-contexts")
        if token_port is not None:
            iotgate_args += ["--iotgate-token-port", str(token_port), "--iotgate-auth", auth]
        master = _locust("--master", "--master-bind-host", master_bind_host, "--master-bind-port", str(port_master),
                         "--expect-workers", str(total_workers), "--users", str(users),
                         "--spawn-rate", f"{spawn_rate:g}", "--run-time", f"{math.ceil(seconds)}s",
                         "--csv", str(csv_prefix), "--csv-full-history", "--html", str(html), "--exit-code-on-error", str(exit_code_on_error),
                         *(["--headless"] if headless else ["--web-host", web_host, "--web-port", str(web_port)]),
                         *iotgate_args)

        console.print(f"[bold]{shape}[/] against {target} {endpoint}: {users} devices"
                      + (f" + {attackers} attacker(s)" if attackers else "")
                      + f", {spawn_rate:g}/s, {math.ceil(seconds)} s, {total_workers} worker(s); identities "
                        f"{pool.names[0]}.. ({pool.needed} of {len(pool.names)} used); e2e {e2e_mode}; telemetry "
                      + (f"every {interval:g} s" if interval else "off"))
        for kind, why in skipped.items():
            if attackers:
                console.print(f"attack {kind}: [yellow]SKIPPED[/] ({why})")
        if remote_workers:
            console.print(f"waiting for {remote_workers} remote worker(s): on each, run `iotgate --home HOME loadtest "
                          f"--join {master_bind_host}:{port_master} --workers N` (HOME: a copy of {home})")
        if not headless:
            console.print(f"web UI: http://{web_host}:{web_port}  (start the run there; Ctrl-C ends it)")

        _interrupt_on_sigterm()
        children = _Children()
        master_proc = children.start("master", master, env)
        for index in range(workers):
            children.start(f"worker {index}", _worker_cmd("127.0.0.1" if master_bind_host in ("0.0.0.0", "::")
                                                           else master_bind_host, port_master), env,
                           log=report_dir / f"worker-{index}.log")
        code = children.wait(master_proc)
        codes = children.finish()
    finally:
        dirs = LoadtestDirs(home)
        for made, directory in ((world, dirs.tokens), (devices_world, dirs.device_tokens)):
            if made is not None:   # the run's authorizers and keys never outlive it
                made.retire(app.registry())
                shutil.rmtree(directory, ignore_errors=True)
    rows = _summary(csv_prefix)
    _print_summary(rows, Path(f"{csv_prefix}_failures.csv"))
    crashed = [name for name, c in codes.items() if name != "master" and c not in (0, code)]
    for name in crashed:
        err_console.print(f"[bold red]{name} exited with {codes[name]}[/]: see {report_dir / (name.replace(' ', '-') + '.log')}")
    console.print(f"reports: {html}, {csv_prefix}_stats.csv (and _failures, _exceptions, _stats_history)")
    if code == 0 and crashed:
        code = 1
    verdict = "[bold green]PASS[/]" if code == 0 else f"[bold red]FAIL[/] (exit {code})"
    console.print(f"result: {verdict}")
    if code:
        raise SystemExit(code)


def _prepare(app: AppContext, target: str, *, observers: int, attack_slots: int,
             kinds: Sequence[str]) -> TokenWorld | None:
    """Make the run's identities; the token attackers' credentials too (returned: retired after the run)."""
    if not observers and not attack_slots:
        return None
    registrar = None
    issuer = app.issuer()
    registry = None
    if target != "aws":
        registry = app.registry()
        registrar = _Registrar(registry, issuer)
        ensure_policy(registry, None)
    report = prepare(LoadtestDirs(app.home.resolve()), issuer, app.store.root_pem(), registrar, observers=observers,
                     attack_slots=attack_slots, kinds=kinds, now=app.clock(), default_policy=DEFAULT_POLICY_NAME)
    if report.revoked and registry is not None:
        rewrite_crl(app.store, registry, issuer, app.clock())
    if report.made:
        console.print(f"load-test identities made: {', '.join(report.made)}", soft_wrap=True)
    if registry is None or not attack_slots or not any(k in TOKEN_ATTACKS for k in kinds):
        return None
    dirs = LoadtestDirs(app.home.resolve())
    world = TokenWorld.create(registry, dirs.home, dirs.tokens, authorizer=LOADTEST_AUTHORIZER,
                              identity=LOADTEST_KEY_IDENTITY)
    for slot in range(attack_slots):
        for kind in SIGV4_ATTACKS:
            if kind in kinds:
                world.add_key(attacker_client_id(kind, slot))
    world.save(dirs.tokens)
    return world


def _used_names(names: Sequence[str], users: int, workers: int) -> list[str]:
    """The pool identities the device users can take: the first ceil(U/K) of each worker's slice."""
    per_worker = math.ceil(users / workers) if users else 0
    used = []
    for index in range(workers):
        used.extend(names[i] for i in list(worker_slice(len(names), workers, index))[:per_worker])
    return used


def _prepare_devices(app: AppContext, auth: str, prefix: str, names: Sequence[str]) -> TokenWorld | None:
    """``--auth token|sigv4``: the device users' identity provider and authorizer, or one SigV4 key each."""
    if auth == "certificate":
        return None
    dirs = LoadtestDirs(app.home.resolve())
    world = TokenWorld.create(app.registry(), dirs.home, dirs.device_tokens, authorizer=LOADTEST_DEVICE_AUTHORIZER,
                              identity=LOADTEST_DEVICE_KEY_IDENTITY, policy=DEVICE_TOKEN_POLICY,
                              key_policy=device_key_policy(f"iotgate-loadtest-key-devices-{prefix}", prefix))
    if auth == "sigv4":
        for thing in names:
            world.add_key(thing)
    world.save(dirs.device_tokens)
    console.print(f"device users authenticate by {auth}: authorizer {world.authorizer}"
                  + (f", {len(names)} access key(s)" if auth == "sigv4" else ""))
    return world


def _join(home: Path, host: str, port: int, workers: int, env: dict) -> None:
    if not (home / "devices").is_dir():
        raise PlanError(f"{home / 'devices'}: no device identities here; copy the master's home (devices/ and "
                        "loadtest/) to this machine first")
    console.print(f"starting {workers} worker(s) joining the master at {host}:{port} (identities from {home})")
    _interrupt_on_sigterm()
    children = _Children()
    procs = [children.start(f"worker {i}", _worker_cmd(host, port), env) for i in range(workers)]
    codes = [children.wait(p) for p in procs]
    children.finish()
    if any(codes):
        raise SystemExit(max(codes))
