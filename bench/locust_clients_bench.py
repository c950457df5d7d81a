"""Which MQTT client a Locust worker should drive: idle mTLS devices held by one gevent process, per client.

A Locust worker is one process running gevent (monkey-patched). For each client a fresh Mosquitto (mTLS,
client certificates of the fleet's CA required) is started and N devices -- each with its own key and
certificate -- connect from ONE fresh gevent process, spread over loopback source addresses 127.0.0.2..254:

  * lean:       loadtests.device.GeventDevice: the project's sans-IO MQTT core and memory-BIO TLS on gevent's
                loop (an I/O watcher per socket, no greenlet per device); the identity's SSLContext dropped after
                each handshake
  * lean-keep:  the same, keeping each identity's SSLContext between connects (less CPU per reconnect)
  * paho:       paho-mqtt 2 under gevent, as Locust's own MqttUser runs it: one Client per device with its own
                SSLContext (tls_set_context), loop_start() (a network "thread" = a greenlet per device)

Figures: KB per idle device (VmRSS growth / N, and after malloc_trim), connects/s of the ramp (`--concurrency`
connects in flight), client CPU per connect, connect time p50/p99 (greenlet start -> CONNACK), and for lean the
TLS handshake time alone (paho does not expose it).

    .venv/bin/python bench/locust_clients_bench.py [--devices 2000] [--client lean|lean-keep|paho|all]
"""

from __future__ import annotations

import sys

if "--json" in sys.argv:  # the measuring child: gevent first, as in a Locust worker
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devices_idle_bench import ACL, BROKER_SETTINGS, CACHE, PREFIX, cpu_seconds, ensure_fleet, malloc_trim, \
    rss_kb  # noqa: E402

from certs.store import PKIStore  # noqa: E402
from devices.client import ClientOptions  # noqa: E402
from devices.identity import load_identities  # noqa: E402
from devices.limits import raise_open_file_limit, source_addresses  # noqa: E402
from devices.transport import Endpoint, identity_context  # noqa: E402
from gateway.upstream.mosquitto import BrokerConfig, MosquittoProcess, free_port  # noqa: E402
from devices.provisioning import thing_names  # noqa: E402

CLIENTS = ("lean", "lean-keep", "paho")


def _ms(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None, None
    return statistics.median(values) * 1e3, values[min(len(values) - 1, int(len(values) * 0.99))] * 1e3


class _Lean:
    def __init__(self, identity, port: int, source: str | None, keep: bool) -> None:
        from loadtests.device import GeventDevice

        options = ClientOptions(keep_alive=300, connect_timeout=60, max_resends=0)
        self.device = GeventDevice(identity, Endpoint("localhost", port), options=options, local_addr=source,
                                   keep_context=keep)

    def connect(self) -> tuple[bool, str, float | None]:
        outcome = self.device.connect()
        return outcome.ok, f"{outcome.reason}: {outcome.detail[:80]}", outcome.timings.tls

    @property
    def connected(self) -> bool:
        return self.device.connected

    def close(self) -> None:
        self.device.disconnect()


class _Paho:
    def __init__(self, identity, port: int, source: str | None, keep: bool) -> None:
        import gevent.event
        import paho.mqtt.client as mqtt

        self.port = port
        self.source = source or ""
        self.done = gevent.event.AsyncResult()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=identity.thing_name,
                                  protocol=mqtt.MQTTv311)
        self.client.tls_set_context(identity_context(identity))
        self.client.on_connect = lambda c, u, flags, rc, props: self.done.set(rc)

    def connect(self) -> tuple[bool, str, float | None]:
        try:
            self.client.connect("localhost", self.port, keepalive=300, bind_address=self.source)
        except Exception as exc:  # noqa: BLE001 - any failure is a figure of the run
            return False, f"{type(exc).__name__}: {exc}"[:90], None
        self.client.loop_start()
        rc = self.done.get(timeout=60)
        return not rc.is_failure, str(rc), None

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def hold(store: PKIStore, port: int, count: int, client: str, concurrency: int, hold_s: float,
         broker_pid: int) -> dict:
    import gevent
    import gevent.queue

    gc.collect()
    before = rss_kb()
    identities = load_identities(store.paths.devices, thing_names(PREFIX, count))
    kind = _Paho if client == "paho" else _Lean
    clients = [kind(identity, port, source, client == "lean-keep")
               for identity, source in zip(identities, source_addresses(count, "127.0.0.1"))]
    del identities
    work = gevent.queue.Queue()
    for c in clients:
        work.put(c)
    results: list[tuple[bool, str, float | None, float]] = []

    def worker():
        while not work.empty():
            c = work.get()
            started = time.perf_counter()
            ok, detail, tls = c.connect()
            results.append((ok, detail, tls, time.perf_counter() - started))

    started = time.perf_counter()
    cpu_started, broker_cpu_started = time.process_time(), cpu_seconds(broker_pid)
    gevent.joinall([gevent.spawn(worker) for _ in range(min(concurrency, count))])
    ramp = time.perf_counter() - started
    cpu, broker_cpu = time.process_time() - cpu_started, cpu_seconds(broker_pid) - broker_cpu_started
    connected = sum(r[0] for r in results)
    gevent.sleep(hold_s)  # idle: every device connected, nothing in flight
    gc.collect()
    after = rss_kb()
    malloc_trim()
    trimmed = rss_kb()
    still = sum(c.connected for c in clients)
    ok = [r for r in results if r[0]]
    result = {
        "client": client, "devices": count, "connected": connected, "still_connected": still,
        "failures": dict(Counter(r[1] for r in results if not r[0]).most_common(3)),
        "ramp_s": ramp, "connects_per_s": connected / ramp if ramp else 0.0,
        "client_cpu_ms_per_connect": cpu / max(connected, 1) * 1e3,
        "broker_cpu_ms_per_connect": broker_cpu / max(connected, 1) * 1e3,
        "client_kb_per_device": (after - before) / max(still, 1),
        "client_kb_per_device_trimmed": (trimmed - before) / max(still, 1),
        "client_rss_mb": after / 1024,
        "connect_ms_p50_p99": _ms([r[3] for r in ok]),
        "tls_ms_p50_p99": _ms([r[2] for r in ok]),
    }
    for c in clients:
        try:
            c.close()
        except Exception:  # noqa: BLE001, S110 - the figures are taken; teardown only
            pass
    gevent.sleep(0.5)
    return result


def run_one(args) -> dict:
    limit = raise_open_file_limit(args.devices * 3 + 2048)  # paho holds a socket pair per client too
    if not limit.enough:
        print(limit.describe(), file=sys.stderr)
    store = PKIStore(CACHE)
    with tempfile.TemporaryDirectory(prefix="mosquitto-", dir=CACHE.parent) as directory:
        cfg = BrokerConfig(store.paths, Path(directory), port=free_port(), acl_extra=ACL, clients="devices",
                           extra_config=BROKER_SETTINGS)
        broker = MosquittoProcess(cfg).start()
        try:
            return hold(store, cfg.port, args.devices, args.client, args.concurrency, args.hold, broker.pid)
        finally:
            broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--client", choices=[*CLIENTS, "all"], default="all")
    parser.add_argument("--concurrency", type=int, default=64, help="connects in flight during the ramp")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds idle before measuring")
    parser.add_argument("--json", action="store_true", help="one JSON object per client (used internally)")
    args = parser.parse_args()

    if args.json:
        print(json.dumps(run_one(args)))
        return 0

    ensure_fleet(args.devices)
    results = []
    for client in CLIENTS if args.client == "all" else (args.client,):
        cmd = [sys.executable, __file__, "--json", "--client", client, "--devices", str(args.devices),
               "--concurrency", str(args.concurrency), "--hold", str(args.hold)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{client}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print(f"idle mTLS devices in one gevent process -> Mosquitto, {os.cpu_count()} cores, "
          f"{args.concurrency} connects in flight")
    print(f"{'client':<10} {'held':>6} {'conn/s':>7} {'KB/device':>10} {'(trimmed)':>9} {'CPU ms/conn':>12} "
          f"{'connect ms p50/p99':>19} {'TLS ms p50/p99':>15}")
    for r in results:
        c50, c99 = r["connect_ms_p50_p99"]
        t50, t99 = r["tls_ms_p50_p99"]
        tls = f"{t50:>7.1f}/{t99:<7.1f}" if t50 is not None else f"{'n/a':>15}"
        conn = f"{c50:>9.1f}/{c99:<9.1f}" if c50 is not None else f"{'n/a':>19}"
        print(f"{r['client']:<10} {r['still_connected']:>6} {r['connects_per_s']:>7.0f} "
              f"{r['client_kb_per_device']:>10.1f} {r['client_kb_per_device_trimmed']:>9.1f} "
              f"{r['client_cpu_ms_per_connect']:>12.2f} {conn} {tls}")
        if r["failures"]:
            print(f"  failures: {r['failures']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
