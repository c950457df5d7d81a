"""`make bench`: the gateway against Mosquitto in one run, one table, results in bench/results/<date>.{json,md}.

Same machine, same PKI, same device identities (EC P-256, one certificate each), same lean client:

* connect storm -- every device connects over mTLS (CONNECT, CONNACK) from several client processes, each
  on its own source address (127.0.0.2, 127.0.0.3, ...), and stays connected. Server CPU per accepted CONNECT
  (user + system of the server process from /proc), connects/s, CONNACK latency p50/p99 (TCP connect to
  CONNACK, as the client saw it) and who saturated: the server (>= 0.9 of a core), the load generator, or
  neither (the client's concurrency bounds the rate).
* paced connects -- AWS IoT Core's default account connect rate (500/s) held for a few seconds: CONNACK p50/p99
  measured from when each connect was due (a client that falls behind counts as latency).
* idle memory -- RSS growth of the server per connected idle device, its upstream link included.
* forwarding -- one publisher device -> server -> one subscriber device, QoS 0 and QoS 1 (a window of
  in-flight PUBLISHes); CPU of every server process on the path per delivered message.
* the gateway in both upstream modes (its own mTLS session per device to Mosquitto, or a unix socket), with
  Mosquitto's share behind it stated; the TLS version, cipher and key-exchange group each server chose.
* bulk issuance (`iotgate fleet provision --count N`) and policy decisions/s (bench/policy_bench.py).

The gateway runs as one worker (`--workers 1`) so that its figures are one process's; its rate limits are
raised for the run (a benchmark of CPU, not of throttling). Benchmarks assert nothing.

    make bench                     # or: .venv/bin/python bench/suite.py [--devices 5000] [--issue 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import re
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from certs.store import PKIStore
from devices.provisioning import ensure_policy, provision_fleet, register_own_cas, thing_names
from gateway.mqtt import Connack, Connect, Framer, PubAck, Publish, SubAck, Subscribe, Subscription, decode, encode
from gateway.registry import Registry
from gateway.upstream.mosquitto import BrokerConfig, MosquittoProcess, free_port

from gateway_bench import GatewayProcess, cpu_seconds, device_context, rss_bytes  # bench/ is the script's dir

HERE = Path(__file__).resolve().parent
IOTGATE = str(Path(sys.executable).with_name("iotgate"))
BENCH_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/bench/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/bench/*"}
  ]
}
"""
GATEWAY_TOML = """[gateway]
tls_engine = "{engine}"
[limits]
max_connections = {maxconn}
connect_rate_per_source = 1000000.0
connect_rate_per_client_id = 1000.0
connect_burst_per_client_id = 1000
connect_burst_per_source = 1000000
publish_rate = 1000000.0
publish_burst = 1000000
publish_bytes_rate = 1000000000
"""


async def read_packet(reader: asyncio.StreamReader, framer: Framer, pending: list, version: int = 4):
    while not pending:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed by the server")
        pending.extend(framer.feed(data))
    return decode(pending.pop(0), version)


async def connect_device(host: str, port: int, ctx: ssl.SSLContext, client_id: str, source: str | None = None):
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost",
                                                   local_addr=(source, 0) if source else None)
    writer.write(encode(Connect(client_id=client_id, protocol_level=4, clean_start=True, keep_alive=1200)))
    framer, pending = Framer(), []
    packet = await read_packet(reader, framer, pending)
    if not isinstance(packet, Connack):
        raise ConnectionError(f"{client_id}: {type(packet).__name__} before CONNACK")
    if int(packet.reason_code) != 0:
        raise ConnectionError(f"{client_id}: CONNACK {packet.reason_code!r}")
    return reader, writer, framer, pending


# ------------------------------------------------------------------------------------- load generator

def _client_main(home: str, names: list[str], source: str, concurrency: int, conn) -> None:
    """One load-generator process: builds its identities' contexts, then on each command connects them all
    (holding the connections) or disconnects them, reporting latencies and its own CPU."""
    contexts = {n: device_context(Path(home), n) for n in names}
    conn.send(("ready", None))

    async def attempt(host: str, port: int, name: str, since: float, lat: list, errors: list, held: list):
        """Connect one device and hold it; its latency from ``since``; a failure is counted, never raised."""
        try:
            _, w, *_ = await connect_device(host, port, contexts[name], name, source)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            errors.append(f"{name}: {exc}")
            return None
        lat.append(time.perf_counter() - since)
        held.append(w)
        return w

    async def serve():
        held = []
        while True:
            cmd, arg = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            if cmd == "connect":
                host, port = arg
                sem, lat, errors = asyncio.Semaphore(concurrency), [], []
                cpu0 = time.process_time()

                async def one(name):
                    async with sem:
                        w = await attempt(host, port, name, time.perf_counter(), lat, errors, held)
                        if w is not None and not tls:
                            obj = w.get_extra_info("ssl_object")
                            tls.update(version=obj.version(), cipher=obj.cipher()[0])

                tls: dict = {}
                async with asyncio.TaskGroup() as tg:
                    for name in names:
                        tg.create_task(one(name))
                conn.send(("connected", {"latencies": lat, "errors": errors[:5], "failed": len(errors),
                                         "cpu": time.process_time() - cpu0, "tls": tls}))
            elif cmd == "paced":
                # connect i of this process is due at start + i / rate; its latency runs from when it was due (a
                # client that falls behind shows up as latency, not as a lower rate)
                host, port, rate, count = arg
                lat, errors, lag = [], [], []
                cpu0 = time.process_time()
                start = time.perf_counter() + 0.05

                async def due(i, name):
                    at = start + i / rate
                    await asyncio.sleep(max(0.0, at - time.perf_counter()))
                    lag.append(time.perf_counter() - at)
                    await attempt(host, port, name, at, lat, errors, held)

                async with asyncio.TaskGroup() as tg:
                    for i, name in enumerate(names[:count]):
                        tg.create_task(due(i, name))
                conn.send(("connected", {"latencies": lat, "errors": errors[:5], "failed": len(errors),
                                         "cpu": time.process_time() - cpu0, "lag": lag,
                                         "wall": time.perf_counter() - start}))
            elif cmd == "disconnect":
                for w in held:
                    w.write(b"\xe0\x00")
                    w.close()
                for w in held:
                    try:
                        await w.wait_closed()
                    except (OSError, ssl.SSLError):
                        pass  # the server closed first: the connection is gone either way
                held.clear()
                conn.send(("disconnected", None))
            elif cmd == "exit":
                return

    asyncio.run(serve())


class LoadGenerator:
    def __init__(self, home: Path, names: list[str], processes: int, concurrency: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes, self.procs = [], []
        for i in range(processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_client_main, args=(str(home), names[i::processes], f"127.0.0.{2 + i}",
                                                       concurrency, child), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)
        for pipe in self.pipes:
            self._expect(pipe, "ready", timeout=600)

    def _expect(self, pipe, what: str, timeout: float = 300):
        if not pipe.poll(timeout):
            raise RuntimeError(f"load generator: no {what!r} within {timeout:g} s")
        kind, payload = pipe.recv()
        if kind != what:
            raise RuntimeError(f"load generator: {kind!r} instead of {what!r}")
        return payload

    def connect(self, host: str, port: int) -> list[dict]:
        for pipe in self.pipes:
            pipe.send(("connect", (host, port)))
        return [self._expect(pipe, "connected") for pipe in self.pipes]

    def paced(self, host: str, port: int, rate: float, seconds: float) -> list[dict]:
        per = rate / len(self.pipes)
        for pipe in self.pipes:
            pipe.send(("paced", (host, port, per, int(per * seconds))))
        return [self._expect(pipe, "connected") for pipe in self.pipes]

    def disconnect(self) -> None:
        for pipe in self.pipes:
            pipe.send(("disconnect", None))
        for pipe in self.pipes:
            self._expect(pipe, "disconnected")

    def close(self) -> None:
        for pipe, p in zip(self.pipes, self.procs):
            try:
                pipe.send(("exit", None))
            except OSError:
                pass
            p.join(10)
            if p.is_alive():
                p.kill()


# ------------------------------------------------------------------------------------- servers

def start_gateway(home: Path, base: Path, upstream: str, devices: int) -> GatewayProcess:
    """`iotgate gateway run --workers 1` with the bench's limits, on a free port."""
    return GatewayProcess(home, base, upstream, config_text=GATEWAY_TOML.format(engine="pyopenssl",
                                                                              maxconn=devices + 100),
                          args=("--access-log", str(base / "access.log")))


def tls_group(home: Path, thing: str, port: int) -> str:
    """The key-exchange group the server chose for an OpenSSL 3.0 client's default offer (openssl s_client)."""
    d = home / "devices" / thing
    try:
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                              "-CAfile", str(home / "root-ca.pem"), "-cert", str(d / "device.pem"), "-key",
                              str(d / "device.key"), "-brief"], input="", capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    m = re.search(r"(?:Server Temp Key|Negotiated TLS1\.3 group|Peer Temp Key): *([^\n]+)", out.stdout + out.stderr)
    return m.group(1).strip() if m else "unknown"


def _gateway_openssl() -> str:
    from OpenSSL import SSL

    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def storm(gen: LoadGenerator, port: int, server_pid: int, behind_pid: int | None) -> dict:
    """Connect every device and hold; server CPU per CONNECT, rate, latency, then idle RSS per connection."""
    rss0, cpu0 = rss_bytes(server_pid), cpu_seconds(server_pid)
    b_rss0, b_cpu0 = (rss_bytes(behind_pid), cpu_seconds(behind_pid)) if behind_pid else (0, 0.0)
    t0 = time.perf_counter()
    parts = gen.connect("127.0.0.1", port)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(server_pid) - cpu0
    b_cpu = cpu_seconds(behind_pid) - b_cpu0 if behind_pid else 0.0
    time.sleep(1.5)  # let the server settle before reading its memory
    lat = [x for p in parts for x in p["latencies"]]
    n = len(lat)
    failed = sum(p["failed"] for p in parts)
    result = {
        "connected": n, "failed": failed, "errors": [e for p in parts for e in p["errors"]][:5],
        "wall_s": wall, "connects_per_s": n / wall if wall else 0.0,
        "cpu_per_connect_us": cpu / n * 1e6 if n else float("nan"),
        "behind_cpu_per_connect_us": b_cpu / n * 1e6 if n and behind_pid else None,
        "server_cores": cpu / wall, "client_cores": sum(p["cpu"] for p in parts) / wall,
        "connack_p50_ms": percentile(lat, 0.50) * 1e3, "connack_p99_ms": percentile(lat, 0.99) * 1e3,
        "rss_per_idle_kib": (rss_bytes(server_pid) - rss0) / n / 1024 if n else float("nan"),
        "behind_rss_per_idle_kib": (rss_bytes(behind_pid) - b_rss0) / n / 1024 if n and behind_pid else None,
        "tls": next((p["tls"] for p in parts if p["tls"]), {}),
    }
    cores = os.cpu_count() or 1
    if result["server_cores"] >= 0.9:
        result["saturated"] = "server (one core busy)"
    elif result["server_cores"] + result["client_cores"] >= 0.9 * cores:
        result["saturated"] = "load generator (machine's cores busy)"
    else:
        result["saturated"] = "neither (bounded by the clients' concurrency)"
    gen.disconnect()
    time.sleep(0.5)
    return result


def paced(gen: LoadGenerator, port: int, server_pid: int, rate: float, seconds: float) -> dict:
    """AWS IoT Core's default account connect rate, held for ``seconds``: is every CONNACK back in time?"""
    cpu0 = cpu_seconds(server_pid)
    t0 = time.perf_counter()
    parts = gen.paced("127.0.0.1", port, rate, seconds)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(server_pid) - cpu0
    lat = [x for p in parts for x in p["latencies"]]
    lag = [x for p in parts for x in p["lag"]]
    result = {"rate": rate, "seconds": seconds, "connected": len(lat), "failed": sum(p["failed"] for p in parts),
              "errors": [e for p in parts for e in p["errors"]][:5],
              "connack_p50_ms": percentile(lat, 0.50) * 1e3, "connack_p99_ms": percentile(lat, 0.99) * 1e3,
              "client_lag_p99_ms": percentile(lag, 0.99) * 1e3, "server_cores": cpu / wall}
    gen.disconnect()
    time.sleep(0.5)
    return result


async def _forward(port: int, ctxs: dict[str, ssl.SSLContext], pids: list[int], qos: int, count: int) -> dict:
    (pub_name, pub_ctx), (sub_name, sub_ctx) = list(ctxs.items())[:2]
    s_r, s_w, s_f, s_p = await connect_device("127.0.0.1", port, sub_ctx, sub_name)
    s_w.write(encode(Subscribe(packet_id=1, subscriptions=(Subscription("bench/fwd", qos),)), 4))
    suback = await read_packet(s_r, s_f, s_p)
    if not isinstance(suback, SubAck) or any(int(c) >= 0x80 for c in suback.reason_codes):
        raise RuntimeError(f"forwarding: subscribe refused: {suback!r}")
    p_r, p_w, p_f, p_p = await connect_device("127.0.0.1", port, pub_ctx, pub_name)
    payload = b"x" * 64
    await asyncio.sleep(0.3)
    cpu0 = sum(cpu_seconds(p) for p in pids)
    t0 = time.perf_counter()
    received = 0

    published = asyncio.Event()

    async def subscriber():
        # QoS 0 may be dropped on the way (a broker's queue limits): after the last publish, 3 s of silence ends
        # the count and the row says how many arrived
        nonlocal received
        while received < count:
            try:
                packet = await asyncio.wait_for(read_packet(s_r, s_f, s_p), 3 if published.is_set() else 30)
            except TimeoutError:
                if published.is_set():
                    return
                raise
            if isinstance(packet, Publish):
                received += 1
                if qos:
                    s_w.write(bytes([0x40, 2]) + packet.packet_id.to_bytes(2, "big"))

    async def publisher():
        window = asyncio.Semaphore(50)
        acks: list = []

        async def reader():
            while len(acks) < count:
                packet = await asyncio.wait_for(read_packet(p_r, p_f, p_p), 10)
                if isinstance(packet, PubAck):
                    acks.append(packet.packet_id)
                    window.release()

        async with asyncio.TaskGroup() as tg:
            if qos:
                tg.create_task(reader())
            for i in range(count):
                if qos:
                    await window.acquire()
                    p_w.write(encode(Publish(topic="bench/fwd", payload=payload, qos=1, packet_id=i % 65535 + 1), 4))
                else:
                    p_w.write(encode(Publish(topic="bench/fwd", payload=payload, qos=0), 4))
                if i % 200 == 0:
                    await p_w.drain()
            await p_w.drain()
        published.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(subscriber())
        tg.create_task(publisher())
    wall = time.perf_counter() - t0
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    if not received:
        raise RuntimeError(f"forwarding QoS {qos}: none of {count} messages arrived")
    for w in (p_w, s_w):
        w.write(b"\xe0\x00")
        w.close()
    return {"messages": received, "sent": count, "cpu_per_message_us": cpu / received * 1e6,
            "messages_per_s": received / wall}


def forward(port: int, home: Path, names: list[str], pids: list[int], qos: int, count: int,
            broker: MosquittoProcess | None = None) -> dict:
    ctxs = {n: device_context(home, n) for n in names[:2]}
    seen = broker.log_path.stat().st_size if broker is not None and broker.log_path.exists() else 0
    result = asyncio.run(_forward(port, ctxs, pids, qos, count))
    if broker is not None and broker.log_path.exists():  # who dropped what was lost: Mosquitto says so in its log
        with open(broker.log_path, "rb") as log:
            log.seek(seen)
            result["broker_dropped"] = b"Outgoing messages are being dropped" in log.read()
    return result


# ------------------------------------------------------------------------------------- other rows

def issuance(count: int, base: Path) -> dict:
    home = base / "issue-home"
    subprocess.run([IOTGATE, "--home", str(home), "pki", "init"], check=True, capture_output=True)
    t0 = time.perf_counter()
    out = subprocess.run([IOTGATE, "--home", str(home), "fleet", "provision", "--count", str(count), "--json"],
                         check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    report = json.loads(out.stdout)
    shutil.rmtree(home, ignore_errors=True)
    return {"count": report["issued"], "wall_s": wall, "workers": report.get("workers")}


def policy_rate(requests: int) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "policy_bench.py"), "--requests", str(requests)],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"uncached \(new topic each call\):\s+([\d,]+) decisions/s", out)
    c = re.search(r"cached \(DecisionCache, hit ([\d.]+)%\):\s+([\d,]+) decisions/s", out)
    return {"uncached_per_s": int(m.group(1).replace(",", "")) if m else None,
            "cached_per_s": int(c.group(2).replace(",", "")) if c else None}


# ------------------------------------------------------------------------------------- table

def fmt(v, unit: str = "", digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b) -> str:
    if a is None or b in (None, 0) or (isinstance(b, float) and b != b):
        return "-"
    return f"{a / b:.2f}x"


def verdict(value, target, better: str = "lower") -> str:
    if value is None or target is None:
        return ""
    met = value <= target if better == "lower" else value >= target
    return "met" if met else "NOT met"


def build_rows(r: dict) -> list[tuple[str, str, str, str, str, str]]:
    m, rows = r["mosquitto"], []
    for mode in ("mtls", "unix"):
        g = r.get(f"gateway_{mode}")
        if g is None:
            continue
        up = "mTLS upstream" if mode == "mtls" else "unix-socket upstream"
        s, ms = g["storm"], m["storm"]
        cpu_ratio = s["cpu_per_connect_us"] / ms["cpu_per_connect_us"]
        rows += [
            (f"CPU per mTLS CONNECT ({up}; Mosquitto behind it "
             f"{fmt(s['behind_cpu_per_connect_us'], ' us')})", fmt(s["cpu_per_connect_us"], " us"),
             fmt(ms["cpu_per_connect_us"], " us"), f"{cpu_ratio:.2f}x", "<= 1.0x (stretch 0.5x)",
             verdict(cpu_ratio, 1.0)),
            (f"connects/s, storm ({up}); saturated: {s['saturated']} / {ms['saturated']}",
             fmt(s["connects_per_s"]), fmt(ms["connects_per_s"]), ratio(s["connects_per_s"], ms["connects_per_s"]),
             "", ""),
            (f"CONNACK p50 / p99 in the storm ({up})",
             f"{fmt(s['connack_p50_ms'], '', 1)} / {fmt(s['connack_p99_ms'], ' ms', 1)}",
             f"{fmt(ms['connack_p50_ms'], '', 1)} / {fmt(ms['connack_p99_ms'], ' ms', 1)}",
             ratio(s["connack_p99_ms"], ms["connack_p99_ms"]), "", ""),
        ]
        pg, pm = g.get("paced"), m.get("paced")
        if pg and pm:
            rows.append((f"paced {pg['rate']:,.0f} connects/s for {pg['seconds']:g} s: CONNACK p50 / p99 ({up}; "
                         f"server cores {pg['server_cores']:.2f} / {pm['server_cores']:.2f}; client lag p99 "
                         f"{fmt(pg['client_lag_p99_ms'], '', 1)} / {fmt(pm['client_lag_p99_ms'], ' ms', 1)}"
                         + (f"; {pg['failed']} failed" if pg["failed"] else "") + ")",
                         f"{fmt(pg['connack_p50_ms'], '', 1)} / {fmt(pg['connack_p99_ms'], ' ms', 1)}",
                         f"{fmt(pm['connack_p50_ms'], '', 1)} / {fmt(pm['connack_p99_ms'], ' ms', 1)}",
                         ratio(pg["connack_p99_ms"], pm["connack_p99_ms"]), "p99 < 100 ms, none failed",
                         "met" if pg["connack_p99_ms"] < 100 and not pg["failed"] else "NOT met"))
        rss_ratio = s["rss_per_idle_kib"] / ms["rss_per_idle_kib"] if ms["rss_per_idle_kib"] > 0 else None
        rows.append((f"RSS per idle device, {s['connected']:,} devices ({up}; Mosquitto behind it "
                     f"{fmt(s['behind_rss_per_idle_kib'], ' KiB', 1)})", fmt(s["rss_per_idle_kib"], " KiB", 1),
                     fmt(ms["rss_per_idle_kib"], " KiB", 1), f"{rss_ratio:.2f}x" if rss_ratio else "-",
                     "<= 1.5x (stretch 1.0x)", verdict(rss_ratio, 1.5)))
        for qos in (0, 1):
            f, mf = g[f"qos{qos}"], m[f"qos{qos}"]
            fr = f["cpu_per_message_us"] / mf["cpu_per_message_us"]
            lost = "".join(f"; {x['sent'] - x['messages']:,} of {x['sent']:,} lost on {who}"
                           + (" (Mosquitto logged that it dropped outgoing messages: QoS 0 to a subscriber link "
                              "that fell behind)" if x.get("broker_dropped") else "")
                           for who, x in (("the gateway path", f), ("Mosquitto", mf)) if x["messages"] < x["sent"])
            rows.append((f"CPU per QoS {qos} message, device -> subscriber, all servers on the path ({up}){lost}",
                         fmt(f["cpu_per_message_us"], " us", 1), fmt(mf["cpu_per_message_us"], " us", 1),
                         f"{fr:.2f}x", "<= 1.2x", verdict(fr, 1.2)))
    if "issuance" in r:
        i = r["issuance"]
        per_100k = i["wall_s"] * 100_000 / i["count"]
        rows.append((f"fleet provision --count {i['count']:,} (EC P-256, {i['workers']} workers)"
                     + ("" if i["count"] == 100_000 else f"; {per_100k:.1f} s per 100k extrapolated"),
                     fmt(i["wall_s"], " s", 1), "-", "-", "<= 30 s per 100k (stretch 15 s)", verdict(per_100k, 30)))
    if "policy" in r:
        p = r["policy"]
        rows.append(("policy decisions/s, one core (uncached / with the decision cache)",
                     f"{fmt(p['uncached_per_s'])} / {fmt(p['cached_per_s'])}", "-", "-", ">= 200,000 uncached",
                     verdict(p["uncached_per_s"], 200_000, "higher")))
    return rows


def render(r: dict) -> str:
    rows = build_rows(r)
    head = ("row", "gateway", "Mosquitto", "ratio", "target", "")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(6)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(head, widths)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    tls = [f"{name}: {v['storm']['tls'].get('version', '?')} {v['storm']['tls'].get('cipher', '?')}, group "
           f"{v['group']}" for name, v in r.items() if isinstance(v, dict) and "storm" in v]
    return "\n".join(lines + ["", "TLS as each server negotiated it: " + "; ".join(tls), r["machine"]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5000, help="devices in the storm and the idle fleet")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes (one source address each)")
    parser.add_argument("--concurrency", type=int, default=32, help="connects in flight per client process")
    parser.add_argument("--paced-rate", type=float, default=500.0, help="connects/s of the paced row (0: skip)")
    parser.add_argument("--paced-seconds", type=float, default=5.0, help="how long the paced rate is held")
    parser.add_argument("--messages", type=int, default=30000, help="messages per forwarding row")
    parser.add_argument("--issue", type=int, default=100_000, help="identities for the issuance row (0: skip)")
    parser.add_argument("--policy-requests", type=int, default=200_000, help="policy bench requests (0: skip)")
    parser.add_argument("--upstreams", default="mtls,unix", help="gateway upstream modes: mtls, unix")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    opts = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * opts.devices + 1024)), hard))
    base = Path(tempfile.mkdtemp(prefix=".iotgate-bench-", dir=Path.cwd()))
    home = base / "home"
    started = time.perf_counter()
    results: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, "
                                f"{ssl.OPENSSL_VERSION} (client and Mosquitto), gateway TLS (devices and upstream): pyOpenSSL over "
                                f"{_gateway_openssl()}",
                     "devices": opts.devices, "clients": opts.clients, "concurrency": opts.concurrency}
    gen = None
    try:
        store = PKIStore(home)
        now = dt.datetime.now(dt.UTC)
        store.init(now=now)
        names = thing_names("bench-", opts.devices)
        policy_file = base / "bench-policy.json"
        policy_file.write_text(BENCH_POLICY)
        with Registry.open(f"sqlite:///{home / 'registry.db'}") as registry:
            register_own_cas(registry, store)
            provision_fleet(store, registry, store.load_issuer(), names,
                            policies=[ensure_policy(registry, str(policy_file))], key_type="ec-p256",
                            workers=os.cpu_count() or 1, now=now, days=30)
        print(f"{opts.devices:,} identities provisioned; starting {opts.clients} load-generator processes",
              flush=True)
        gen = LoadGenerator(home, names, opts.clients, opts.concurrency)
        phases = [("mosquitto", None)] + [(f"gateway_{m}", m) for m in opts.upstreams.split(",") if m]
        for phase, mode in phases:
            # a fresh Mosquitto per phase: its memory figure starts from an unused heap each time
            broker_cfg = BrokerConfig(store.paths, base / f"broker-{phase}", port=free_port(), unix_socket=True,
                                      clients="devices", acl_extra="pattern readwrite bench/#")
            with MosquittoProcess(broker_cfg) as broker:
                if mode is None:
                    print("Mosquitto direct: storm, idle, forwarding", flush=True)
                    r = {"storm": storm(gen, broker_cfg.port, broker.pid, None),
                         "group": tls_group(home, names[0], broker_cfg.port)}
                    if opts.paced_rate:
                        r["paced"] = paced(gen, broker_cfg.port, broker.pid, opts.paced_rate, opts.paced_seconds)
                    for qos in (0, 1):
                        r[f"qos{qos}"] = forward(broker_cfg.port, home, names, [broker.pid], qos, opts.messages,
                                                 broker)
                    results[phase] = r
                    continue
                upstream = (f"mqtts://{broker_cfg.host}:{broker_cfg.port}" if mode == "mtls"
                            else f"unix://{broker_cfg.socket_path}")
                print(f"gateway ({mode} upstream): storm, idle, forwarding", flush=True)
                gw = start_gateway(home, base, upstream, opts.devices)
                try:
                    r = {"storm": storm(gen, gw.port, gw.pid, broker.pid), "group": tls_group(home, names[0], gw.port)}
                    if opts.paced_rate:
                        r["paced"] = paced(gen, gw.port, gw.pid, opts.paced_rate, opts.paced_seconds)
                    for qos in (0, 1):
                        r[f"qos{qos}"] = forward(gw.port, home, names, [gw.pid, broker.pid], qos, opts.messages,
                                                 broker)
                    results[phase] = r
                finally:
                    gw.stop()
        gen.close()
        gen = None
        if opts.policy_requests:
            print("policy decisions", flush=True)
            results["policy"] = policy_rate(opts.policy_requests)
        if opts.issue:
            print(f"issuance of {opts.issue:,} identities", flush=True)
            results["issuance"] = issuance(opts.issue, base)
        results["seconds"] = time.perf_counter() - started
        table = render(results)
        print()
        print(table)
        for name, v in results.items():
            if isinstance(v, dict) and "storm" in v and v["storm"]["failed"]:
                print(f"{name}: {v['storm']['failed']} connects failed, e.g. {v['storm']['errors']}")
        opts.out.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
        (opts.out / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
        (opts.out / f"{stamp}.md").write_text(f"# iotgate bench {results['date']}\n\n```\n{table}\n```\n")
        print(f"\nwritten: {opts.out / stamp}.json and .md ({results['seconds']:.0f} s)")
        return 0
    finally:
        if gen is not None:
            gen.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
