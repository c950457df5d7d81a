"""`gateway run --workers N`: N gateway processes on one port (SO_REUSEPORT), under one supervisor.

Each worker is a full gateway (its own event loop, registry view, TLS context, upstream connections); the kernel
spreads new connections over their listeners. The supervisor holds the ports (a bound, never-listening
SO_REUSEPORT socket each, so the port stays ours while a worker restarts), starts the workers as fresh
interpreters, restarts one that dies, forwards SIGTERM/SIGINT (every worker drains its sessions) and SIGHUP
(every worker reloads its configuration and the registry), and serves one ``/metrics`` and ``/stats`` summing
what the workers write to their metrics files.

What is global across workers, and how:
- a client id connected twice on two workers: both sessions reach the one upstream broker under that client id,
  the broker's own session takeover closes the older upstream connection, and its worker closes the device;
- the connect rate per client id is enforced by each worker on its own: with N workers a client id that lands
  on different workers may connect up to N times the configured rate (an approximation, said in the README);
- the access log is one file opened for appending by every worker; each line names its ``worker``.
"""

from __future__ import annotations

import http.server
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from certs.keys import write_file
from gateway.config import GatewayConfig

RESTART_BACKOFF = 0.5  # seconds before a dead worker is started again; doubles while workers keep dying fast
RESTART_BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0  # a worker that lived this long resets the backoff
READY_TIMEOUT = 30.0  # seconds the workers get to open their listeners before the supervisor reports what it has
STOP_GRACE = 15.0  # seconds the workers get to drain after SIGTERM before they are killed


@dataclass(frozen=True)
class ConfigSource:
    """How a worker builds (and on SIGHUP rebuilds) its configuration: the file, the CLI overrides, and what the
    supervisor fixes for it."""

    home: Path
    path: Path | None
    overrides: dict = field(default_factory=dict)

    def load(self, **fixed) -> GatewayConfig:
        from gateway.config import load_config

        return load_config(self.home, self.path, **{**self.overrides, **fixed})


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _hold_port(host: str, port: int, option: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another {option}") from None
    return sock


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.backoff = RESTART_BACKOFF
        self.due = 0.0  # when a dead worker is started again
        self.restarts = 0


class Supervisor:
    def __init__(self, source: ConfigSource, workers: int, *, log: Callable[[str], None] | None = None) -> None:
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        self.source = source
        self.n = workers
        self.log = log or (lambda text: print(f"iotgate gateway: {text}", file=sys.stderr, flush=True))
        self.config = source.load()
        self._held = [_hold_port(self.config.host, self.config.port, "--port")]
        self.port = self._held[0].getsockname()[1]
        self.token_port: int | None = None
        if self.config.token_port is not None:
            self._held.append(_hold_port(self.config.host, self.config.token_port, "--token-port"))
            self.token_port = self._held[1].getsockname()[1]
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="iotgate-metrics-"))
        self.workers = [_Worker(i) for i in range(workers)]
        self._stopping = False
        self._reload = False
        self._http: http.server.ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ workers

    def _fixed(self, worker: _Worker) -> dict:
        return {"port": self.port, "token_port": self.token_port, "worker": worker.index, "reuse_port": True,
                "metrics_port": 0, "metrics_file": self._metrics_file(worker),
                "replay_dir": self.metrics_dir / "sigv4-replay"}

    def _metrics_file(self, worker: _Worker) -> Path:
        return self.metrics_dir / f"worker-{worker.index}.prom"

    def _start(self, worker: _Worker) -> None:
        self._metrics_file(worker).unlink(missing_ok=True)  # a worker is ready once it writes its first one
        cmd = [sys.executable, "-m", "gateway.workers"]
        worker.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, start_new_session=False)
        worker.proc.stdin.write(pickle.dumps((self.source, self._fixed(worker))))
        worker.proc.stdin.close()
        worker.started = time.monotonic()

    def _check(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.proc is None:
                if now >= w.due:
                    self._start(w)
                continue
            code = w.proc.poll()
            if code is None:
                continue
            lived = now - w.started
            w.backoff = RESTART_BACKOFF if lived >= STABLE_AFTER else min(w.backoff * 2, RESTART_BACKOFF_MAX)
            w.due = now + w.backoff
            w.restarts += 1
            w.proc = None
            self.log(f"worker {w.index} exited with {code} after {lived:.1f} s: starting it again in "
                     f"{w.backoff:g} s")

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(sig)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def ready(self) -> int:
        """Workers running and serving (each writes its metrics file once it listens)."""
        return sum(1 for w in self.workers
                   if w.proc is not None and w.proc.poll() is None and self._metrics_file(w).exists())

    # ------------------------------------------------------------------ run

    def run(self, on_ready: Callable[[Supervisor], None] | None = None) -> int:
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            if self.config.metrics_port:
                self._serve_metrics()
            for w in self.workers:
                self._start(w)
            deadline = time.monotonic() + READY_TIMEOUT
            while self.ready() < self.n and not self._stopping and time.monotonic() < deadline:
                self._check()
                time.sleep(0.05)
            if self.ready() < self.n:
                self.log(f"only {self.ready()} of {self.n} workers started within {READY_TIMEOUT:g} s")
            if on_ready is not None:
                on_ready(self)
            last_stats = 0.0
            while not self._stopping:
                if self._reload:
                    self._reload = False
                    self._hup()
                self._check()
                if time.monotonic() - last_stats >= self.config.stats_interval:
                    last_stats = time.monotonic()
                    self._write_stats()
                time.sleep(0.1)
            code = self._drain()
            self._write_stats("stopped")
            return code
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
            for sock in self._held:
                sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_stop(self, *_args) -> None:
        self._stopping = True

    def _on_hup(self, *_args) -> None:
        self._reload = True

    def _hup(self) -> None:
        try:
            self.source.load()
        except Exception as exc:  # noqa: BLE001 - a bad file keeps the running configuration
            self.log(f"reload refused, the workers keep their configuration: {exc}")
            return
        self.log(f"reloading {len(self.pids())} workers")
        self._signal_all(signal.SIGHUP)

    def _drain(self) -> int:
        self.log(f"stopping: {len(self.pids())} workers drain their sessions")
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"worker {w.index} did not drain in {STOP_GRACE:g} s: killing it")
                w.proc.kill()
                w.proc.wait()
        return 0

    # ------------------------------------------------------------------ metrics

    def metrics_text(self) -> bytes:
        texts = []
        for path in sorted(self.metrics_dir.glob("worker-*.prom")):
            try:
                texts.append(path.read_text())
            except OSError:  # a restarting worker's file went away between the listing and the read
                continue
        return sum_metrics(texts, extra={"iotgate_workers": ("gauge", self.ready()),
                                  "iotgate_worker_restarts": ("counter", sum(w.restarts for w in self.workers))})

    def _serve_metrics(self) -> None:
        supervisor = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path = self.path.split("?")[0]
                if path == "/metrics":
                    body, ctype = supervisor.metrics_text(), "text/plain; version=0.0.4; charset=utf-8"
                elif path == "/stats":
                    body, ctype = orjson.dumps(supervisor.stats()) + b"\n", "application/json"
                else:
                    self.send_error(404, "try /metrics or /stats")
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self._http = http.server.ThreadingHTTPServer((self.config.metrics_host, self.config.metrics_port), Handler)
        threading.Thread(target=self._http.serve_forever, name="iotgate-metrics", daemon=True).start()

    def stats(self, state: str = "running") -> dict:
        """The workers' stats documents summed into one (the shape of a single gateway's, so `iotgate gateway
        stats` reads either), with the supervisor's pid and each worker's own document under ``per_worker``."""
        docs = []
        for w in self.workers:
            path = self.config.replace(worker=w.index).stats_path
            try:
                docs.append(orjson.loads(path.read_bytes()))
            except (OSError, ValueError):
                continue
        merged = sum_stats(docs)
        merged.update(time=time.time(), pid=os.getpid(), state=state, workers=self.ready(),
                      restarts=sum(w.restarts for w in self.workers), per_worker=docs)
        return merged

    def _write_stats(self, state: str = "running") -> None:
        path = self.config.stats_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file(path, orjson.dumps(self.stats(state), option=orjson.OPT_INDENT_2) + b"\n", mode=0o640)
        except OSError as exc:
            self.log(f"cannot write the stats file {path}: {exc}")


_NOT_SUMMED = ("time", "pid", "started", "uptime_seconds", "registry_change_counter", "worker")


def sum_stats(docs: list[dict]) -> dict:
    """Sum per-worker stats documents: numbers add up (nested counters too); the registry change counter and
    times are the workers' newest, the start the earliest; other values (listen, upstream) are the first's."""
    merged: dict = {}

    def add(into: dict, doc: dict) -> None:
        for key, value in doc.items():
            if isinstance(value, dict):
                add(into.setdefault(key, {}), value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in _NOT_SUMMED:
                into[key] = into.get(key, 0) + value
            else:
                into.setdefault(key, value)

    for doc in docs:
        add(merged, doc)
    if docs:
        merged["started"] = min(d.get("started", 0) for d in docs)
        merged["uptime_seconds"] = max(d.get("uptime_seconds", 0) for d in docs)
        merged["registry_change_counter"] = max(d.get("registry_change_counter", -1) for d in docs)
    merged.pop("worker", None)
    return merged


_MIN = ("_start_time_seconds", "_created", "registry_available")
_MAX = ("registry_staleness_seconds", "registry_refusing")


def sum_metrics(texts: list[str], extra: dict[str, tuple[str, float]] | None = None) -> bytes:
    """One Prometheus exposition from the workers': samples with the same name and labels are added (a start time
    is the earliest, staleness the worst); the iotgate_worker_* families carry each worker's number as a label, so
    they stay one series per worker."""
    from prometheus_client.parser import text_string_to_metric_families

    kinds: dict[str, tuple[str, str]] = {}
    values: dict[tuple[str, tuple], float] = defaultdict(float)
    seen: set[tuple[str, tuple]] = set()
    order: dict[str, list[tuple[str, tuple]]] = defaultdict(list)
    for text in texts:
        for family in text_string_to_metric_families(text):
            kinds.setdefault(family.name, (family.type, family.documentation))
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in seen:
                    seen.add(key)
                    order[family.name].append(key)
                    values[key] = sample.value
                elif sample.name.endswith(_MIN):
                    values[key] = min(values[key], sample.value)
                elif sample.name.endswith(_MAX):
                    values[key] = max(values[key], sample.value)
                else:
                    values[key] += sample.value
    lines = []
    for name, (kind, doc) in kinds.items():
        exposed = f"{name}_total" if kind == "counter" else name  # as prometheus-client names a counter
        lines.append(f"# HELP {exposed} {doc}")
        lines.append(f"# TYPE {exposed} {kind}")
        for sample_name, labels in order[name]:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sample_name}{{{label_text}}} {values[(sample_name, labels)]!r}" if labels
                         else f"{sample_name} {values[(sample_name, labels)]!r}")
    for name, (kind, value) in (extra or {}).items():
        exposed = f"{name}_total" if kind == "counter" else name
        lines.append(f"# TYPE {exposed} {kind}")
        lines.append(f"{exposed} {float(value)!r}")
    return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _worker_main() -> None:
    """A worker: read (ConfigSource, fixed settings) from stdin, run one gateway; SIGHUP reloads the file."""
    from gateway.server import run

    source, fixed = pickle.loads(sys.stdin.buffer.read())
    config = source.load(**fixed)
    run(config, reload=lambda: source.load(**fixed))


if __name__ == "__main__":
    _worker_main()
