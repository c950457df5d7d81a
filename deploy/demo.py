"""`make demo`: the whole story in a temporary home, through the real `iotgate` CLI.

Builds a PKI, provisions a fleet, checks an identity with the openssl tool, asks the policy engine what a
device may do, revokes a device and shows the CRL. Everything it makes lives in one temporary directory
that is removed at the end (pass --keep to look at it afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

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
        summary.append(("re-activate revoked", "refused as on AWS IoT", proc.stderr.strip().split(": ", 1)[-1][:60]))

        table = Table(title=f"iotgate demo: {time.perf_counter() - started:.1f} s", title_justify="left")
        for column in ("step", "what", "result"):
            table.add_column(column)
        for row in summary:
            table.add_row(*row)
        console.print()
        console.print(table)
        if opts.keep:
            console.print(f"demo home kept in {home}")
        return 0
    except DemoFailed as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    finally:
        if not opts.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
