"""`make loadtest`: a bounded headless Locust run against a local stack started here and stopped after.

In a temporary home: `iotgate pki init`, `iotgate fleet provision`, then Mosquitto (`iotgate broker run`) and the
gateway (`iotgate gateway run`) on free loopback ports, then `iotgate loadtest` -- a Locust master and two
workers, each device user with its own identity, the attacker mix alongside -- and finally the gateway's own
account of the run (distinct certificates that connected, refusals by reason). Exits with the load test's code.

    .venv/bin/python deploy/loadtest.py [--users 200] [--workers 2] [--run-time 20] [--shape attack-mix] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from demo import Background, DemoFailed, console, run

from gateway.upstream.mosquitto import free_port


def gateway_account(log: Path, prefix: str) -> None:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    allowed = [r for r in records if r.get("event") == "connect" and r.get("decision") == "allowed"]
    devices = {r["certificate_id"] for r in allowed if (r.get("thing") or "").startswith(prefix)}
    console.print(f"\n[bold]gateway access log[/]: {len(allowed)} connections allowed, {len(devices)} distinct "
                  f"device certificates ({prefix}*)")
    refused = Counter(f"{r['event']} {r['decision']}: {r['kind']}" for r in records
                      if r.get("decision") in ("refused", "denied"))
    for what, n in refused.most_common():
        console.print(f"  {n:>5}  {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-time", default="20s")
    parser.add_argument("--shape", default="attack-mix")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (reports are inside)")
    opts = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="iotgate-loadtest-"))
    home, logs = base / "home", base / "logs"
    logs.mkdir()
    background: list[Background] = []
    try:
        run(["pki", "init"], home=home)
        run(["fleet", "provision", "--count", str(opts.users)], home=home)
        broker_port, gateway_port, token_port = free_port(), free_port(), free_port()
        background.append(Background("broker", ["broker", "run", "--port", str(broker_port)], home=home,
                                     port=broker_port, logs=logs))
        # the token listener too: the attacker mix then has the token and SigV4 attackers
        background.append(Background("gateway", ["gateway", "run", "--port", str(gateway_port), "--upstream",
                                                  f"mqtts://127.0.0.1:{broker_port}", "--token-port", str(token_port)],
                                     home=home, port=gateway_port, logs=logs))
        proc = run(["loadtest", "--headless", "--users", str(opts.users), "--workers", str(opts.workers),
                    "--spawn-rate", "50", "--run-time", opts.run_time, "--shape", opts.shape,
                    "--endpoint", f"127.0.0.1:{gateway_port}", "--token-port", str(token_port),
                    "--report", str(base / "report")],
                   home=home, expect=(0, 1, 2))
        for b in background:
            b.stop()
        gateway_account(home / "gateway-access.log", "device-")
        console.print(f"\nLocust reports: {base / 'report' / 'report.html'}"
                      + ("" if opts.keep else " (removed at the end: --keep keeps them)"))
        return proc.returncode
    except DemoFailed as exc:
        console.print(f"[bold red]loadtest failed:[/] {exc}")
        return 1
    finally:
        for b in background:
            b.stop()
        if not opts.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
