"""`make demo`: the whole story in a temporary home, through the real `iotgate` CLI.

1. Provisioning: builds a PKI, provisions a fleet, checks an identity with the openssl tool, asks the policy
   engine what a device may do, revokes a device and shows the CRL.
2. The stack: starts Mosquitto and the gateway on free loopback ports (`iotgate broker run`, `iotgate
   gateway run`), connects 20 devices that publish telemetry and receive commands through the gateway, and
   a set of attackers that must be refused; prints what was allowed and refused and why (from the
   gateway's access log), then stops everything it started.

Everything lives in one temporary directory that is removed at the end (--keep leaves it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from certs.authority import build_root_ca
from certs.keys import generate_private_key
from devices.identity import DeviceFiles, make_key_and_csr, write_device_dir
from devices.evidence import classify_tls_failure
from devices.reference import ClosedBeforeConnack, PahoDevice
from devices.report import Outcome
from gateway.upstream.mosquitto import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_report import write_report  # noqa: E402  (deploy/ is not a package)

DEPLOY = Path(__file__).resolve().parent
REPORT_DIR = Path("demo-report")

console = Console(highlight=False, width=max(100, shutil.get_terminal_size((120, 30)).columns))
IOTGATE = [str(Path(sys.executable).with_name("iotgate"))]


class DemoFailed(Exception):
    pass


def run(args: list[str], *, home: Path, expect: int | tuple[int, ...] = 0, show: bool = True,
        quiet: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [*IOTGATE, "--home", str(home), *args] if args[0] != "openssl" else args
    shown = ["iotgate", *args] if args[0] != "openssl" else args
    if show:
        console.print(f"\n[bold cyan]$ {shlex.join(shown)}[/]", soft_wrap=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    expected = (expect,) if isinstance(expect, int) else expect
    if not quiet:
        sys.stdout.write(proc.stdout)
    if proc.returncode not in expected:
        sys.stderr.write(proc.stderr)
        raise DemoFailed(f"`{shlex.join(shown)}` exited {proc.returncode}, expected {expected}")
    if proc.stderr and not quiet:
        sys.stdout.write(proc.stderr)
    return proc


# An operator console: sends commands to any device, reads all telemetry and command responses.
OPS_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect",
         "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
        {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/cmd/*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": ["arn:aws:iot:*:*:topicfilter/dt/*", "arn:aws:iot:*:*:topicfilter/cmd/*"]},
        {"Effect": "Allow", "Action": "iot:Receive",
         "Resource": ["arn:aws:iot:*:*:topic/dt/*", "arn:aws:iot:*:*:topic/cmd/*"]},
    ],
}
# What AWS's Device Shadow and Jobs samples need: their own thing's `$aws/things/<thing>/...` topics.
SERVICES_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/*"},
    ],
}
NOT_AUTHORIZED_V5, NOT_AUTHORIZED_V3, SUBACK_FAILURE_V3 = 135, 5, 128


class Background:
    """A long-running `iotgate` command (the broker or the gateway), ready once its port accepts."""

    def __init__(self, name: str, args: list[str], *, home: Path, port: int, logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        console.print(f"\n[bold cyan]$ {shlex.join(['iotgate', *args])} &[/]", soft_wrap=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([*IOTGATE, "--home", str(home), *args], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # Ready once it says it listens (both commands print that line only after their listener is up);
        # probing the port would itself show up in the gateway's access log as an aborted handshake.
        deadline = time.monotonic() + 15
        while "listening on" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise DemoFailed(f"{name} exited with {self.process.returncode}: {self.log.read_text()[-800:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise DemoFailed(f"{name} did not start listening on port {port}: {self.log.read_text()[-800:]}")
            time.sleep(0.05)
        console.print(f"  {name} ready on 127.0.0.1:{port} (pid {self.process.pid})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def attempt(fn) -> tuple[str, str]:
    """Run one attacker's action and read what the device saw as evidence.

    Only what the server did counts as "refused": a TLS alert or a close during the handshake, a refusal code
    (returned by ``fn``), the connection closed after CONNECT. TCP refused, a timeout, a server certificate
    that does not verify here or any other client-side error is "inconclusive", which fails the demo.
    """
    try:
        return fn()
    except ClosedBeforeConnack as exc:
        return "refused", f"closed by the gateway after CONNECT ({exc})"[:70]
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
        outcome, detail = classify_tls_failure(f"{type(exc).__name__}: {exc}")
        return ("refused" if outcome is Outcome.REFUSED_TLS else "inconclusive"), detail[:70]
    except Exception as exc:  # noqa: BLE001 - TCP failure, timeout, client error: nothing was proven
        return "inconclusive", f"{type(exc).__name__}: {exc or 'no answer'}"[:70]


def run_stack(home: Path, base: Path, things: list[str], revoked: str, summary: list[tuple[str, str, str]]) -> bool:
    ops_file = base / "ops-console.json"
    ops_file.write_text(json.dumps(OPS_POLICY, indent=2))
    run(["policy", "create", "ops-console", str(ops_file)], home=home)
    run(["fleet", "provision", "--count", "1", "--prefix", "ops-console-", "--policy", "ops-console"], home=home)
    ops_thing = "ops-console-00001"
    services_file = base / "device-services.json"
    services_file.write_text(json.dumps(SERVICES_POLICY, indent=2))
    run(["policy", "create", "device-services", str(services_file)], home=home)
    run(["policy", "attach", "device-services", "--thing", things[1]], home=home)
    files = lambda thing: DeviceFiles(home / "devices" / thing)  # noqa: E731
    broker_port, gateway_port = free_port(), free_port()
    broker = Background("mosquitto", ["broker", "run", "--port", str(broker_port)], home=home, port=broker_port,
                        logs=base)
    gateway = None
    clients: list[PahoDevice] = []
    rows: list[tuple[str, str, str, str, str]] = []
    ok = True

    def device(thing: str | None, client_id: str, version: int = 5, device_files: DeviceFiles | None = None):
        d = PahoDevice(device_files or (files(thing) if thing else None), gateway_port, client_id, version=version,
                       ca_file=home / "root-ca.pem")
        clients.append(d)
        return d

    def check(actor: str, what: str, expected: str, outcome: tuple[str, str]) -> None:
        nonlocal ok
        got, detail = outcome
        rows.append((actor, what, expected, got, detail))
        ok = ok and got == expected

    try:
        gateway = Background("gateway", ["gateway", "run", "--port", str(gateway_port), "--upstream",
                                         f"mqtts://127.0.0.1:{broker_port}"], home=home, port=gateway_port, logs=base)
        ops = device(ops_thing, ops_thing)
        check(ops_thing, "connect (MQTT 5)", "allowed",
              ("allowed" if ops.connect() == 0 else "refused", "operator console"))
        check(ops_thing, "subscribe dt/+/temperature, cmd/+/resp/#", "allowed",
              ("allowed" if ops.subscribe_many([("dt/+/temperature", 1), ("cmd/+/resp/#", 1)]) == [1, 1]
               else "refused", "SUBACK granted QoS 1"))

        fleet = things[1:21]
        connected, telemetry_acked, commands_answered = 0, 0, 0
        live: dict[str, PahoDevice] = {}
        for i, thing in enumerate(fleet):
            d = device(thing, thing, version=5 if i % 2 == 0 else 4)
            if d.connect() == 0 and d.subscribe(f"cmd/{thing}/#") == [1]:
                live[thing] = d
                connected += 1
        for thing, d in live.items():
            if d.publish(f"dt/{thing}/temperature", f'{{"celsius": {20 + len(thing) % 5}}}'.encode(), qos=1) == 0:
                telemetry_acked += 1
        seen_telemetry = {ops.message().topic for _ in range(telemetry_acked)}
        for thing, d in live.items():
            ops.publish(f"cmd/{thing}/reboot", b'{"after": 5}', qos=1)
            command = d.message()
            if d.publish(f"cmd/{thing}/resp/reboot", b'{"ok": true}', qos=1) == 0 and command.topic.endswith("reboot"):
                commands_answered += 1
        responses = {ops.message().topic for _ in range(commands_answered)}
        check(f"{len(fleet)} devices", "connect, MQTT 5 and 3.1.1 alternating", "allowed",
              ("allowed" if connected == len(fleet) else "refused", f"{connected}/{len(fleet)} connected"))
        check(f"{len(fleet)} devices", "publish dt/<thing>/temperature QoS 1", "allowed",
              ("allowed" if telemetry_acked == len(seen_telemetry) == len(fleet) else "refused",
               f"{telemetry_acked} PUBACKs, operator received {len(seen_telemetry)}"))
        check(f"{len(fleet)} devices", "receive cmd/<thing>/reboot, answer on .../resp", "allowed",
              ("allowed" if commands_answered == len(responses) == len(fleet) else "refused",
               f"{commands_answered} answered, operator received {len(responses)}"))
        check(things[21], "AWS IoT Device SDK (aws-crt) with its port-443 ALPN", "allowed",
              attempt(lambda: _sdk_alpn(files(things[21]), gateway_port, things[21])))

        # Device Shadow, answered by the gateway itself: the operator sets a desired state, the device gets the delta.
        lamp = live.get(things[1])
        if lamp is not None and lamp.subscribe(f"$aws/things/{things[1]}/shadow/update/delta") == [1]:
            run(["shadow", "update", things[1], "--payload", '{"state": {"desired": {"led": "on"}}}'], home=home,
                quiet=True)
            message = lamp.message()
            for _ in range(10):  # its own command answers (cmd/<thing>/#) may come first
                if message.topic.endswith("/shadow/update/delta"):
                    break
                message = lamp.message()
            delta = json.loads(message.payload)
            check(things[1], "shadow delta after `iotgate shadow update`", "allowed",
                  ("allowed" if delta["state"] == {"led": "on"} else "refused", f"version {delta['version']}"))
        else:
            check(things[1], "subscribe to its shadow's update/delta", "allowed", ("refused", "SUBACK refused"))

        # Attackers: each must be refused, and the gateway must say why.
        intruder = device(None, "intruder")
        check("no certificate", "TLS without a client certificate", "refused",
              attempt(lambda: ("allowed", "") if intruder.connect() == 0 else ("refused", "CONNACK")))
        check(revoked, "connect with its REVOKED certificate", "refused",
              attempt(lambda: _connack(device(revoked, revoked))))
        foreign_ca = build_root_ca(generate_private_key("ec-p256"), "Rogue Root CA", now=dt.datetime.now(dt.UTC))
        key, csr = make_key_and_csr("rogue-1")
        rogue_dir = base / "rogue"
        rogue_dir.mkdir()
        rogue_files = write_device_dir(rogue_dir, "rogue-1", key,
                                       foreign_ca.pem_with_chain(foreign_ca.sign_device_csr(csr, "rogue-1", now=dt.datetime.now(dt.UTC))),
                                       (home / "root-ca.pem").read_bytes())
        check("rogue-1", "certificate from a foreign CA", "refused",
              attempt(lambda: _connack(device(None, "rogue-1", device_files=rogue_files))))
        spoofer, victim = things[22], things[2]
        check(spoofer, f"connect as client id {victim}", "refused",
              attempt(lambda: _connack(device(spoofer, victim))))
        outsider = device(things[23], things[23])
        outsider.connect()
        check(things[23], f"publish dt/{things[2]}/temperature (MQTT 5)", "refused",
              attempt(lambda: _puback(outsider.publish(f"dt/{things[2]}/temperature", b"{}", qos=1))))
        outsider3 = device(things[24], things[24], version=4)
        outsider3.connect()
        check(things[24], f"publish cmd/{things[3]}/reboot (MQTT 3.1.1)", "refused",
              attempt(lambda: _v3_publish(outsider3, f"cmd/{things[3]}/reboot")))
        check(things[23], f"update the shadow of {things[1]}", "refused",
              attempt(lambda: _puback(outsider.publish(f"$aws/things/{things[1]}/shadow/update",
                                                       b'{"state": {"desired": {"led": "off"}}}', qos=1))))
        wildcard = device(things[25], things[25])
        wildcard.connect()
        check(things[25], "subscribe to # (everything)", "refused",
              attempt(lambda: _suback(wildcard.subscribe("#"))))
        for c in clients:
            c.close()
        # a short fleet run with every attacker kind: its latency figures go into the report
        proc = run(["fleet", "run", "--target", "gateway", "--endpoint", f"127.0.0.1:{gateway_port}", "--devices", "10",
                    "--duration", "5", "--scenario", str(DEPLOY / "scenarios" / "attackers.toml"), "--report",
                    str(base / "fleet-report")], home=home, expect=(0, 1), quiet=True)
        check("fleet run", "10 devices and 13 attacker kinds (deploy/scenarios/attackers.toml)", "allowed",
              ("allowed" if proc.returncode == 0 else "refused", proc.stdout.strip().splitlines()[-1][:80]
               if proc.stdout.strip() else "no output"))
    finally:
        for c in clients:
            c.close()
        if gateway is not None:
            gateway.stop()
        broker.stop()
        console.print("\nstopped the gateway and Mosquitto")

    table = Table(title="through the gateway: allowed and refused", title_justify="left")
    for column in ("who", "tried", "expected", "outcome", "seen by the device"):
        table.add_column(column, overflow="fold")
    for who, what, expected, got, detail in rows:
        colour = "green" if got == expected else "bold red"
        table.add_row(who, what, expected, f"[{colour}]{got}[/]", detail)
    console.print()
    console.print(table)
    print_access_log(home / "gateway-access.log")
    run(["gateway", "stats"], home=home)
    check_proc = run(["flows", "check", "--declared", str(DEPLOY / "flows.toml")], home=home, expect=(0, 1), quiet=True)
    console.print(check_proc.stdout.strip().splitlines()[-1] if check_proc.stdout.strip() else check_proc.stderr)
    report = write_report(REPORT_DIR.resolve(), declared_file=DEPLOY / "flows.toml",
                          access_log=home / "gateway-access.log", fleet_report=base / "fleet-report" / "report.json",
                          rows=rows)
    summary.append(("flows check", "deploy/flows.toml vs the access log", "PASS" if check_proc.returncode == 0
                    else "FAIL: undeclared flows (see the report)"))
    summary.append(("report", "flows diagram, latency plots, allowed/refused", str(report)))
    summary.append(("gateway stack", f"{sum(1 for r in rows if r[2] == 'allowed')} allowed, "
                                     f"{sum(1 for r in rows if r[2] == 'refused')} refused checks",
                    "as expected" if ok else "MISMATCH"))
    return ok and check_proc.returncode == 0  # the stack's own declared flows must match what it did


def _sdk_alpn(device_files: DeviceFiles, port: int, thing: str) -> tuple[str, str]:
    """The TLS options the SDK's builders set on AWS IoT Core's port 443 (ALPN x-amzn-mqtt-ca, TLS 1.2 minimum,
    mutual TLS) against the gateway's listener; a refused CONNACK raises."""
    from awscrt import io as crt_io
    from awscrt import mqtt as crt_mqtt

    options = crt_io.TlsContextOptions.create_client_with_mtls_from_path(str(device_files.cert), str(device_files.key))
    options.override_default_trust_store_from_path(None, str(device_files.root_ca))
    options.alpn_list = ["x-amzn-mqtt-ca"]
    options.min_tls_ver = crt_io.TlsVersion.TLSv1_2
    client = crt_mqtt.Client(crt_io.ClientBootstrap.get_or_create_static_default(), crt_io.ClientTlsContext(options))
    connection = crt_mqtt.Connection(client, "localhost", port, thing, clean_session=True, keep_alive_secs=30,
                                     ping_timeout_ms=3000)
    connection.connect().result(10)
    connection.disconnect().result(10)
    return "allowed", "offered ALPN x-amzn-mqtt-ca; MQTT 3.1.1 CONNACK 0"


def _connack(d: PahoDevice) -> tuple[str, str]:
    rc = d.connect()
    if rc == 0:
        return "allowed", "CONNACK 0"
    return "refused", f"CONNACK reason {rc:#04x}"


def _puback(rc: int | None) -> tuple[str, str]:
    return ("allowed", "PUBACK 0") if rc == 0 else ("refused", f"PUBACK reason {rc:#04x}")


def _v3_publish(d: PahoDevice, topic: str) -> tuple[str, str]:
    d.publish_nowait(topic, b"{}", qos=1)
    rc = d.wait_disconnect()
    return "refused", f"connection closed by the gateway ({rc})"


def _suback(codes: list[int]) -> tuple[str, str]:
    if codes and codes[0] < 0x80:
        return "allowed", f"SUBACK {codes}"
    return "refused", f"SUBACK {[hex(c) for c in codes]}"


def print_access_log(path: Path) -> None:
    """The gateway's own account: one JSON line per connection attempt and refused action."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    refused = [r for r in records if r.get("decision") in ("refused", "denied")]
    allowed = [r for r in records if r.get("event") == "connect" and r.get("decision") == "allowed"]
    table = Table(title=f"gateway access log ({path.name}): {len(allowed)} connections allowed, "
                        f"{len(refused)} refusals", title_justify="left")
    for column in ("event", "who", "action / resource", "reason"):
        table.add_column(column, overflow="fold")
    for r in refused:
        who = r.get("thing") or r.get("client_id") or (r.get("certificate_id") or "")[:16] or r.get("source")
        action = " ".join(x for x in (r.get("action"), r.get("resource")) if x) or "-"
        table.add_row(r.get("event", ""), str(who), action, f"{r.get('kind', '')}: {r.get('reason', '')}")
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the demo home")
    opts = parser.parse_args()
    if not shutil.which("openssl"):
        console.print("[red]the openssl tool is needed to show an independent check: apt-get install -y openssl")
        return 2
    base = Path(tempfile.mkdtemp(prefix="iotgate-demo-"))
    home = base / "home"
    summary: list[tuple[str, str, str]] = []
    try:
        started = time.perf_counter()
        run(["pki", "init", "--server-name", "gateway.local"], home=home)
        summary.append(("PKI", "root -> issuing CA -> server + gateway client", "created"))

        t0 = time.perf_counter()
        run(["fleet", "provision", "--count", str(opts.devices)], home=home)
        took = time.perf_counter() - t0
        summary.append(("fleet provision", f"{opts.devices} devices, own key + CSR each", f"{took:.1f} s"))

        run(["thing", "list", "--limit", "5"], home=home)
        things = json.loads(run(["thing", "list", "--json"], home=home, show=False, quiet=True).stdout)
        certs = json.loads(run(["cert", "list", "--json"], home=home, show=False, quiet=True).stdout)
        unique_keys = {(home / "devices" / t["thingName"] / "device.key").read_bytes() for t in things}
        summary.append(("registry", f"{len(things)} things, {len(certs)} certificates",
                        "ok" if len(things) == len(certs) == opts.devices else "MISMATCH"))
        summary.append(("distinct keys", f"{len(unique_keys)} of {len(things)}",
                        "ok" if len(unique_keys) == len(things) else "SHARED KEY"))

        first = things[0]["thingName"]
        device = home / "devices" / first
        mode = oct((device / "device.key").stat().st_mode & 0o777)
        run(["openssl", "verify", "-CAfile", str(home / "root-ca.pem"), "-untrusted", str(home / "issuing-ca.pem"),
             "-purpose", "sslclient", str(device / "device.pem")], home=home)
        summary.append(("openssl verify", f"{first}/device.pem against root-ca.pem", "OK"))
        summary.append(("device.key mode", f"{first}/device.key", mode))

        run(["policy", "show", "iotgate-device"], home=home)
        checks = [
            ("iot:Connect", f"client/{first}", None, 0),
            ("iot:Connect", f"client/{things[1]['thingName']}", None, 1),
            ("iot:Publish", f"topic/dt/{first}/temperature", None, 0),
            ("iot:Publish", f"topic/dt/{things[1]['thingName']}/temperature", None, 1),
            ("iot:Subscribe", "topicfilter/#", None, 1),
        ]
        for action, resource, client, expect in checks:
            args = ["policy", "test", "--thing", first, "--action", action, "--resource", resource]
            proc = run(args + (["--client-id", client] if client else []), home=home, expect=expect)
            verdict = "ALLOW" if proc.returncode == 0 else "DENY"
            summary.append((f"policy test {first}", f"{action} {resource}", verdict))

        run(["cert", "revoke", "--thing", first], home=home)
        run(["openssl", "crl", "-in", str(home / "crl.pem"), "-noout", "-text"], home=home, quiet=True)
        revoked = run(["cert", "list", "--status", "REVOKED", "--json"], home=home, show=False, quiet=True)
        summary.append(("revocation", f"{first}", f"{len(json.loads(revoked.stdout))} REVOKED, crl.pem rewritten"))
        proc = run(["cert", "activate", json.loads(revoked.stdout)[0]["certificateId"]], home=home, expect=2,
                   quiet=True)
        said = "REVOKED is final" if "final" in proc.stderr else proc.stderr.strip()[-60:]
        summary.append(("re-activate revoked", "iotgate cert activate", f"refused (exit 2): {said}"))

        stack_ok = run_stack(home, base, [t["thingName"] for t in things], first, summary)

        table = Table(title=f"iotgate demo: {time.perf_counter() - started:.1f} s", title_justify="left")
        for column in ("step", "what", "result"):
            table.add_column(column)
        for row in summary:
            table.add_row(*row)
        console.print()
        console.print(table)
        if opts.keep:
            console.print(f"demo home kept in {home}")
        report = REPORT_DIR.resolve() / "report.html"
        if report.exists():
            console.print(f"report: {report}")
        if not stack_ok:
            console.print("[bold red]demo failed:[/] an outcome differed from what was expected, or the flows "
                          "check failed (see above)")
            return 1
        return 0
    except DemoFailed as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    finally:
        if not opts.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
