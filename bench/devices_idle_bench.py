"""Idle mTLS devices held by one simulator process: memory per device and connect ramp rate, per transport.

For each transport a fresh Mosquitto (mTLS, client certificates from the fleet's CA required) is started and N
devices -- each with its own key and certificate -- connect from ONE process (uvloop), spread over loopback
source addresses 127.0.0.2..254. Once all are idle the figures are read:

  * client KB/device: the simulator's VmRSS growth / N (everything a device costs: identity, client objects,
    TLS state, socket), measured in a fresh process per transport so one run cannot lend freed memory to the
    next; "after trim" is the same after malloc_trim(0), i.e. what the process could give back
  * connects/s: N / wall time of the ramp (TCP + mutual TLS + CONNECT/CONNACK, `--concurrency` at once)
  * Mosquitto KB/connection: the broker's VmRSS growth / N, for comparison

Targets: <= 100 KB per idle device, stretch <= 40 KB; 10,000 devices in one process.

    .venv/bin/python bench/devices_idle_bench.py [--devices 10000] [--transport stdlib|membio|both]

The fleet (PKI + N identities) is provisioned once into bench/.cache/device-fleet and reused (more devices are
added when N grows). Both this process and Mosquitto get their open-file limit raised (Mosquitto inherits it).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime as dt
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402

from certs.store import PKIStore  # noqa: E402
from devices.client import ClientOptions, DeviceClient  # noqa: E402
from devices.identity import load_identities  # noqa: E402
from devices.limits import raise_open_file_limit, source_addresses  # noqa: E402
from devices.transport import Endpoint  # noqa: E402
from gateway.registry import Registry  # noqa: E402
from gateway.upstream.mosquitto import BrokerConfig, MosquittoProcess, free_port  # noqa: E402
from devices.provisioning import ensure_policy, provision_fleet, register_own_cas, thing_names  # noqa: E402

CACHE = ROOT / "bench" / ".cache" / "device-fleet"
PREFIX = "dev-"
ACL = "pattern readwrite dt/%u/#\npattern readwrite cmd/%u/#\n"
# Nagle off (else each CONNACK waits ~40 ms for the delayed ACK of the session tickets), no connection cap
BROKER_SETTINGS = "set_tcp_nodelay true\nmax_connections -1\n"


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------- fleet

def ensure_fleet(count: int) -> PKIStore:
    """The cached fleet with at least ``count`` devices (re-made when its certificates are about to expire)."""
    store = PKIStore(CACHE)
    now = dt.datetime.now(dt.UTC)
    if store.exists():
        first = store.paths.devices / thing_names(PREFIX, 1)[0] / "device.pem"
        stale = not first.exists() or \
            x509.load_pem_x509_certificate(first.read_bytes()).not_valid_after_utc < now + dt.timedelta(days=2)
        if stale:
            shutil.rmtree(CACHE)
    if not store.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        store.init(now=now)
    registry = Registry.open(f"sqlite:///{CACHE / 'registry.db'}")
    try:
        register_own_cas(registry, store)
        policy = ensure_policy(registry, None)
        started = time.perf_counter()
        report = provision_fleet(store, registry, store.load_issuer(), thing_names(PREFIX, count), policies=[policy],
                                 key_type="ec-p256", workers=os.cpu_count() or 1, now=now, days=365)
        if report.issued:
            print(f"provisioned {report.issued} devices in {time.perf_counter() - started:.1f} s into {CACHE}")
    finally:
        registry.close()
    return store


# --------------------------------------------------------------------------------------------- one run

async def hold_devices(store: PKIStore, port: int, count: int, transport: str, concurrency: int, hold: float,
                       broker_pid: int, level: int) -> dict:
    gc.collect()
    broker_before = rss_kb(broker_pid)
    before = rss_kb()
    identities = load_identities(store.paths.devices, thing_names(PREFIX, count))
    endpoint = Endpoint("localhost", port)
    options = ClientOptions(protocol_level=level, keep_alive=300, connect_timeout=60)
    clients = [DeviceClient(identity, endpoint, options=options, transport=transport, local_addr=addr)
               for identity, addr in zip(identities, source_addresses(count, "127.0.0.1"))]
    del identities
    outcomes = []
    queue = iter(clients)

    async def worker():
        for client in queue:
            outcomes.append(await client.connect())

    started = time.perf_counter()
    cpu_started, broker_cpu_started = time.process_time(), cpu_seconds(broker_pid)
    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    ramp = time.perf_counter() - started
    cpu, broker_cpu = time.process_time() - cpu_started, cpu_seconds(broker_pid) - broker_cpu_started
    connected = sum(o.ok for o in outcomes)
    await asyncio.sleep(hold)  # idle: every device connected, nothing in flight
    gc.collect()
    after = rss_kb()
    broker_after = rss_kb(broker_pid)
    malloc_trim()
    trimmed = rss_kb()
    still = sum(c.connected for c in clients)
    ok = [o for o in outcomes if o.ok]

    def ms(values):
        values = sorted(values)
        if not values:
            return None, None
        return statistics.median(values) * 1e3, values[min(len(values) - 1, int(len(values) * 0.99))] * 1e3

    result = {
        "transport": transport, "devices": count, "connected": connected, "still_connected": still,
        "failures": dict(Counter(f"{o.reason}: {o.detail[:80]}" for o in outcomes if not o.ok).most_common(3)),
        "ramp_s": ramp, "connects_per_s": connected / ramp if ramp else 0.0,
        "client_cpu_ms_per_connect": cpu / max(connected, 1) * 1e3,
        "broker_cpu_ms_per_connect": broker_cpu / max(connected, 1) * 1e3,
        "client_kb_per_device": (after - before) / max(still, 1),
        "client_kb_per_device_trimmed": (trimmed - before) / max(still, 1),
        "client_rss_mb": after / 1024,
        "broker_kb_per_connection": (broker_after - broker_before) / max(still, 1),
        "tls_ms_p50_p99": ms([o.timings.tls for o in ok]),
        "connack_ms_p50_p99": ms([o.timings.connack for o in ok]),
        "connect_ms_p50_p99": ms([o.timings.total for o in ok]),
        "tls_versions": dict(Counter(o.tls_version for o in ok)),
    }
    await asyncio.gather(*(c.disconnect() for c in clients))
    return result


def run_one(args) -> dict:
    import uvloop

    limit = raise_open_file_limit(args.devices + 2048)  # Mosquitto, started below, inherits it
    if not limit.enough:
        print(limit.describe(), file=sys.stderr)
    store = PKIStore(CACHE)
    with tempfile.TemporaryDirectory(prefix="mosquitto-", dir=CACHE.parent) as directory:
        cfg = BrokerConfig(store.paths, Path(directory), port=free_port(), acl_extra=ACL, clients="devices", extra_config=BROKER_SETTINGS)
        broker = MosquittoProcess(cfg).start()
        try:
            return uvloop.run(hold_devices(store, cfg.port, args.devices, args.transport, args.concurrency,
                                           args.hold, broker.pid, args.level))
        finally:
            broker.stop()


# --------------------------------------------------------------------------------------------- driver

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--transport", choices=["stdlib", "membio", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=128, help="connects in flight during the ramp")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds idle before measuring")
    parser.add_argument("--level", type=int, choices=[4, 5], default=4, help="MQTT protocol level")
    parser.add_argument("--json", action="store_true", help="one JSON object per transport (used internally)")
    args = parser.parse_args()

    if args.json:  # one measurement in this (fresh) process
        print(json.dumps(run_one(args)))
        return 0

    ensure_fleet(args.devices)
    transports = ["stdlib", "membio"] if args.transport == "both" else [args.transport]
    results = []
    for transport in transports:
        cmd = [sys.executable, __file__, "--json", "--transport", transport, "--devices", str(args.devices),
               "--concurrency", str(args.concurrency), "--hold", str(args.hold), "--level", str(args.level)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{transport}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print(f"idle mTLS devices in one process -> Mosquitto, MQTT level {args.level}, {os.cpu_count()} cores, "
          f"{args.concurrency} connects in flight")
    header = (f"{'transport':<9} {'devices':>8} {'conn/s':>7} {'KB/device':>10} {'(trimmed)':>9} "
              f"{'mosquitto KB/conn':>17} {'CPU ms/conn client|mosq':>24} {'connect ms p50/p99':>19} "
              f"{'TLS ms p50/p99':>15}")
    print(header)
    for r in results:
        c50, c99 = r["connect_ms_p50_p99"]
        t50, t99 = r["tls_ms_p50_p99"]
        print(f"{r['transport']:<9} {r['still_connected']:>8} {r['connects_per_s']:>7.0f} "
              f"{r['client_kb_per_device']:>10.1f} {r['client_kb_per_device_trimmed']:>9.1f} "
              f"{r['broker_kb_per_connection']:>17.1f} "
              f"{r['client_cpu_ms_per_connect']:>15.2f}|{r['broker_cpu_ms_per_connect']:<8.2f} "
              f"{c50:>9.1f}/{c99:<9.1f} {t50:>7.1f}/{t99:<7.1f}")
        if r["failures"]:
            print(f"  failures: {r['failures']}")
    if len(results) == 2:
        stdlib, membio = results
        ratio = membio["client_kb_per_device"] / stdlib["client_kb_per_device"]
        print(f"membio / stdlib memory per device: {ratio:.2f}; targets: <= 100 KB (stretch <= 40 KB) per idle device")
    return 0


if __name__ == "__main__":
    sys.exit(main())
