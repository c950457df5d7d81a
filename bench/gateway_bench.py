"""Gateway vs Mosquitto, side by side in one run on the same PKI and the same machine.

1. Mosquitto alone: N devices connect straight to it over mTLS (require_certificate), each with its own
   identity. Measured: Mosquitto's CPU per accepted mTLS CONNECT, and its RSS per idle connection.
2. The gateway in front of Mosquitto: the same N devices connect to the gateway. Measured: the gateway's
   CPU per accepted mTLS CONNECT (device TLS + registry lookup + policy + its upstream mTLS connection),
   its RSS per idle device connection, and Mosquitto's share behind it.

CPU comes from /proc/<pid>/stat (user + system), memory from VmRSS; the client is a lean asyncio client
on the project's own codec, one SSLContext per device identity, built before the clock starts.

    .venv/bin/python bench/gateway_bench.py [--devices 500] [--tls-engines pyopenssl,stdlib] [--upstreams mtls,unix]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from certs.store import PKIStore
from gateway.mqtt import Connect, Framer, PacketType, decode, encode
from gateway.registry import Registry
from gateway.upstream.mosquitto import BrokerConfig, MosquittoProcess, free_port
from devices.provisioning import ensure_policy, provision_fleet, register_own_cas, thing_names

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def device_context(home: Path, thing: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(home / "root-ca.pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    d = home / "devices" / thing
    ctx.load_cert_chain(d / "device.pem", d / "device.key")
    return ctx


async def connect_device(host: str, port: int, ctx: ssl.SSLContext, client_id: str):
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
    writer.write(encode(Connect(client_id=client_id, protocol_level=4, clean_start=True, keep_alive=1200)))
    framer = Framer()
    while True:
        data = await reader.read(4096)
        if not data:
            raise ConnectionError(f"{client_id}: closed before CONNACK")
        for frame in framer.feed(data):
            if frame.packet_type is PacketType.CONNACK:
                connack = decode(frame, 4)
                if int(connack.reason_code) != 0:
                    raise ConnectionError(f"{client_id}: CONNACK {connack.reason_code!r}")
                return reader, writer


async def hold_fleet(host: str, port: int, contexts: dict[str, ssl.SSLContext], pid: int, concurrency: int = 20):
    """Connect every device (bounded concurrency), measure the server's CPU and RSS, then disconnect all."""
    rss0, cpu0 = rss_bytes(pid), cpu_seconds(pid)
    sem = asyncio.Semaphore(concurrency)
    conns = []

    async def one(thing: str, ctx: ssl.SSLContext):
        async with sem:
            conns.append(await connect_device(host, port, ctx, thing))

    started = time.perf_counter()
    await asyncio.gather(*(one(t, c) for t, c in contexts.items()))
    wall = time.perf_counter() - started
    await asyncio.sleep(1.0)  # let the server settle before reading its memory
    cpu, rss = cpu_seconds(pid) - cpu0, rss_bytes(pid) - rss0
    for _, writer in conns:
        writer.write(b"\xe0\x00")  # DISCONNECT
        writer.close()
    for _, writer in conns:
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass  # the server closed first: the connection is gone either way
    return cpu, rss, wall


class GatewayProcess:
    """`iotgate gateway run` as a user starts it, on a free port; ready once it accepts."""

    def __init__(self, home: Path, base: Path, upstream: str, tls_engine: str = "pyopenssl", *,
                 config_text: str | None = None, args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.log = base / "gateway.log"
        config = base / f"gateway-{tls_engine}.toml"
        config.write_text(config_text or f'[gateway]\ntls_engine = "{tls_engine}"\n')
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("iotgate")), "--home", str(home), "gateway", "run", "--workers", "1",
                 "--config", str(config), "--port", str(self.port), "--upstream", upstream, *args],
                stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise SystemExit(f"gateway did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _profiler(pid: int, base: Path, label: str) -> subprocess.Popen | None:
    """With IOTGATE_BENCH_PROFILE=DIR: py-spy samples the gateway while the fleet connects (collapsed stacks in
    DIR/<label>.txt; the profiler's own overhead inflates that run's figures)."""
    out = os.environ.get("IOTGATE_BENCH_PROFILE")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not out or not Path(spy).exists():
        return None
    target = Path(out) / (label.replace(" ", "-").replace(",", "") + ".txt")
    target.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--nonblocking",
                             "-o", str(target)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--tls-engines", default="pyopenssl,stdlib",
                        help="the gateway's device TLS engines to measure, comma-separated (gateway.tls_engine)")
    parser.add_argument("--upstreams", default="mtls,unix", help="upstream modes to measure: mtls, unix")
    opts = parser.parse_args()
    engines = [e for e in opts.tls_engines.split(",") if e]
    modes = [m for m in opts.upstreams.split(",") if m]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8 * opts.devices + 1024)), hard))
    base = Path(tempfile.mkdtemp(prefix="iotgate-gwbench-", dir=Path.cwd()))
    home = base / "home"
    store = PKIStore(home)
    now = dt.datetime.now(dt.UTC)
    store.init(now=now)
    names = thing_names("bench-", opts.devices)
    try:
        with Registry.open(f"sqlite:///{home / 'registry.db'}") as registry:
            issuer = store.load_issuer()
            register_own_cas(registry, store)
            provision_fleet(store, registry, issuer, names, policies=[ensure_policy(registry, None)],
                            key_type="ec-p256", workers=2, now=now, days=30)
        contexts = {name: device_context(home, name) for name in names}
        broker_cfg = BrokerConfig(store.paths, base / "broker", port=free_port(), unix_socket=True,
                                  clients="devices")  # the baseline connects devices to it directly
        mtls_url, unix_url = f"mqtts://{broker_cfg.host}:{broker_cfg.port}", f"unix://{broker_cfg.socket_path}"
        with MosquittoProcess(broker_cfg) as broker:
            cpu, rss, wall = asyncio.run(hold_fleet("127.0.0.1", broker_cfg.port, contexts, broker.pid))
            m_cpu, m_rss = cpu / opts.devices, rss / opts.devices
            print(f"Mosquitto direct, {opts.devices} mTLS devices: {m_cpu * 1e6:,.0f} us CPU per CONNECT, "
                  f"{m_rss / 1024:,.1f} KiB RSS per idle connection ({opts.devices / wall:,.0f} connects/s)")
            runs = [(engine, label, upstream) for engine in engines
                    for mode, label, upstream in (("mtls", "mTLS upstream", mtls_url),
                                                  ("unix", "unix-socket upstream", unix_url)) if mode in modes]
            for engine, label, upstream in runs:
                label = f"{engine} TLS, {label}"
                gateway = GatewayProcess(home, base, upstream, engine)
                profiler = _profiler(gateway.pid, base, label)
                try:
                    b_cpu0 = cpu_seconds(broker.pid)
                    cpu, rss, wall = asyncio.run(hold_fleet("127.0.0.1", gateway.port, contexts, gateway.pid))
                    b_cpu = cpu_seconds(broker.pid) - b_cpu0
                finally:
                    if profiler is not None:
                        profiler.send_signal(signal.SIGINT)
                        profiler.wait(30)
                    gateway.stop()
                g_cpu, g_rss = cpu / opts.devices, rss / opts.devices
                print(f"gateway ({label}), {opts.devices} mTLS devices: {g_cpu * 1e6:,.0f} us CPU per CONNECT "
                      f"(+ Mosquitto behind it {b_cpu / opts.devices * 1e6:,.0f} us), {g_rss / 1024:,.1f} KiB RSS "
                      f"per idle connection incl. its upstream link ({opts.devices / wall:,.0f} connects/s)")
                print(f"  ratio gateway/Mosquitto: CPU per CONNECT {g_cpu / m_cpu:.2f}x, idle memory per connection "
                      f"{g_rss / m_rss if m_rss > 0 else float('nan'):.2f}x")
        return 0
    finally:
        if os.environ.get("IOTGATE_BENCH_KEEP"):
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
