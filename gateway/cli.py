"""`iotgate gateway` (run, stats) and `iotgate broker` (config, run).

The groups read the home and the registry URL from the root command's context object (``home`` and
``registry_url`` attributes), so they work under `iotgate --home H ...` without importing the CLI package.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from certs.errors import IotgateError
from certs.store import PKIPaths, require_home

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_HOME = Path(".iotgate")


class StatsError(IotgateError):
    pass


def _home() -> Path:
    obj = click.get_current_context().obj
    return Path(getattr(obj, "home", None) or os.environ.get("IOTGATE_HOME") or DEFAULT_HOME)


def _registry_url() -> str | None:
    obj = click.get_current_context().obj
    return getattr(obj, "registry_url", None) or os.environ.get("IOTGATE_REGISTRY")


# --------------------------------------------------------------------------------------------- gateway

@click.group()
def gateway() -> None:
    """The mTLS gateway: authenticate every device, enforce its policies, forward to the broker."""


@gateway.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML configuration ([gateway], [limits], [observe]); options below override it.")
@click.option("--host", default=None, help="Listen address.  [default: 127.0.0.1]")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Listen port.  [default: 8883]")
@click.option("--token-port", type=click.IntRange(0, 65535), default=None,
              help="Also listen here without client certificates, as AWS IoT's 443: custom authorizers (ALPN mqtt) "
                   "and MQTT over WebSocket on /mqtt (SigV4 or an authorizer).  [default: off]")
@click.option("--upstream", metavar="URL", default=None,
              help="Broker: mqtts://HOST:PORT (mutual TLS) or unix:///PATH.sock.  [default: mqtts://127.0.0.1:8884]")
@click.option("--access-log", metavar="PATH|-", default=None,
              help="JSON access log file ('-' for standard output).  [default: gateway-access.log in the home]")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics (Prometheus) and /stats on 127.0.0.1:PORT (0: off).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Worker processes sharing the port (SO_REUSEPORT), each a full gateway.  [default: the number "
                   "of cores]")
def run(config_path: Path | None, host: str | None, port: int | None, token_port: int | None,
        upstream: str | None, access_log: str | None, metrics_port: int | None, workers: int | None) -> None:
    """Run the gateway until Ctrl-C (SIGINT) or SIGTERM, then drain live sessions; SIGHUP reloads the
    configuration file and the registry (sessions the new state refuses are closed)."""
    from gateway.config import load_config
    from gateway.server import run as run_gateway
    from gateway.workers import ConfigSource, Supervisor, default_workers

    home = _home()
    require_home(home)
    overrides = dict(host=host, port=port, token_port=token_port, upstream=upstream, access_log=access_log,
                     metrics_port=metrics_port, registry=_registry_url())
    source = ConfigSource(home, config_path, overrides)
    cfg = load_config(home, config_path, **overrides)
    workers = workers or default_workers()
    if workers > 1:
        supervisor = Supervisor(source, workers)

        def started(sup) -> None:
            err_console.print(f"iotgate gateway listening on [bold]{cfg.host}:{sup.port}[/] (TLS 1.2+, client "
                              f"certificate required; {workers} workers on the port, SO_REUSEPORT)"
                              + (f", tokens and WebSocket on {cfg.host}:{sup.token_port}" if sup.token_port else "")
                              + f"; access log {cfg.access_log_target or 'off'}"
                              + (f"; metrics http://{cfg.metrics_host}:{cfg.metrics_port}/metrics (summed)"
                                 if cfg.metrics_port else ""))

        raise SystemExit(supervisor.run(on_ready=started))

    def ready(gw) -> None:
        log = cfg.access_log_target or "off"
        err_console.print(f"iotgate gateway listening on [bold]{cfg.host}:{gw.port}[/] (TLS 1.2+, client "
                          f"certificate required)"
                          + (f", tokens and WebSocket on [bold]{cfg.host}:{gw.token_port}[/]" if gw.token_port else "")
                          + f"; upstream {gw.connector.target}; access log {log}; "
                          f"stats {cfg.stats_path}" + (f"; metrics http://{cfg.metrics_host}:{cfg.metrics_port}"
                                                       "/metrics" if cfg.metrics_port else ""))

    run_gateway(cfg, on_ready=ready, reload=lambda: source.load())


@gateway.command("stats")
@click.option("--url", metavar="URL", help="Read a running gateway's metrics endpoint (http://HOST:PORT) "
                                             "instead of its stats file.")
@click.option("--file", "stats_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Stats file to read.  [default: gateway-stats.json in the home]")
@click.option("--json", "as_json", is_flag=True, help="Print the stats document as JSON.")
def stats(url: str | None, stats_file: Path | None, as_json: bool) -> None:
    """Accepted and refused connections by reason, denied actions, messages, live sessions."""
    if url:
        target = url.rstrip("/")
        if not target.endswith("/stats"):
            target += "/stats"
        try:
            with urllib.request.urlopen(target, timeout=5) as response:  # noqa: S310 - an operator-given URL
                data = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise StatsError(f"{target}: cannot read the gateway's stats ({exc}); is it running with "
                             "--metrics-port?") from None
        source = target
    else:
        path = stats_file or (_home() / "gateway-stats.json")
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise StatsError(f"{path}: no stats file; start the gateway with `iotgate gateway run` "
                             "(it writes this file every second)") from None
        except ValueError:
            raise StatsError(f"{path}: not a stats document (invalid JSON)") from None
        source = str(path)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _print_stats(data, source)


def _print_stats(data: dict, source: str) -> None:
    age = time.time() - float(data.get("time", 0))
    if data.get("state") == "stopped":
        state = f"stopped ({age:.0f} s ago)"
    elif _alive(data.get("pid")) and age < 10:
        state = "running"
    else:
        state = f"not running (last written {age:.0f} s ago)"
    workers = f", {data['workers']} workers" if "workers" in data else ""
    console.print(f"gateway {data.get('listen', '?')} -> {data.get('upstream', '?')}: {state}{workers}  "
                  f"[dim]({source})[/]")
    conns = data.get("connections", {})
    console.print(f"sessions active {data.get('sessions_active', 0)}, connections open "
                  f"{data.get('connections_open', 0)}; accepted {conns.get('accepted', 0)}, refused "
                  f"{conns.get('refused', 0)}; uptime {data.get('uptime_seconds', 0):.0f} s")
    messages = data.get("messages", {})
    console.print(f"messages device->broker {messages.get('device_to_upstream', 0)}, broker->device "
                  f"{messages.get('upstream_to_device', 0)}")
    table = Table(title="refusals and denials by reason", title_justify="left")
    for column in ("what", "reason", "count"):
        table.add_column(column)
    for reason, n in data.get("refused_by_reason", {}).items():
        table.add_row("connection refused", reason, str(n))
    for event, reasons in data.get("denied", {}).items():
        for reason, n in reasons.items():
            table.add_row(f"{event} denied", reason, str(n))
    for reason, n in data.get("disconnects_by_reason", {}).items():
        table.add_row("session ended", reason, str(n))
    console.print(table)


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------- broker

def _broker_options(fn):
    fn = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                      help="Where the rendered configuration lives.  [default: broker/ in the home]")(fn)
    fn = click.option("--host", default="127.0.0.1", show_default=True, help="mTLS listener address.")(fn)
    fn = click.option("--port", type=click.IntRange(1, 65535), default=8884, show_default=True,
                      help="mTLS listener port.")(fn)
    fn = click.option("--unix-socket", is_flag=True,
                      help="Also listen on a unix socket (0700 directory) with the gateway's own password.")(fn)
    fn = click.option("--allow-devices", is_flag=True,
                      help="Also accept device certificates: a plain Mosquitto that devices reach directly (e.g. "
                           "`fleet run --target mosquitto`). Without it only the gateway's own identity connects.")(fn)
    return fn


def _broker_config(directory: Path | None, host: str, port: int, unix_socket: bool, allow_devices: bool = False):
    from gateway.upstream.mosquitto import BrokerConfig

    home = _home()
    require_home(home)
    pki = PKIPaths(home)
    for path in (pki.server_cert, pki.server_key, pki.chain, pki.upstream_ca_cert, pki.upstream_crl):
        if not path.exists():
            raise IotgateError(f"{path}: missing; run `iotgate --home {home} pki init` first")
    return BrokerConfig(pki, directory or home / "broker", host=host, port=port, unix_socket=unix_socket,
                        clients="devices" if allow_devices else "gateway",
                        # devices have no gateway before them to enforce AWS IoT's 128 KiB payload limit
                        message_size_limit=128 * 1024 if allow_devices else None,
                        # devices talking to the broker directly may use their own topics only
                        acl_extra="pattern readwrite dt/%u/#\npattern readwrite cmd/%u/#\n" if allow_devices else "")


@click.group()
def broker() -> None:
    """The upstream Mosquitto: only the gateway's own identity may use it."""


@broker.command("config")
@_broker_options
def broker_config(directory: Path | None, host: str, port: int, unix_socket: bool, allow_devices: bool) -> None:
    """Write the broker configuration (mosquitto.conf, ACL, password file for the unix socket)."""
    from gateway.upstream.mosquitto import write_config

    cfg = _broker_config(directory, host, port, unix_socket, allow_devices)
    path = write_config(cfg)
    console.print(f"broker configuration written to [bold]{path}[/]")
    console.print(f"  run it:      mosquitto -c {path}   (or `iotgate broker run`)")
    console.print(f"  gateway:     iotgate gateway run --upstream {cfg.url}")


@broker.command("run")
@_broker_options
def broker_run(directory: Path | None, host: str, port: int, unix_socket: bool, allow_devices: bool) -> None:
    """Render the configuration and run Mosquitto in the foreground until Ctrl-C."""
    from gateway.upstream.mosquitto import MosquittoProcess

    cfg = _broker_config(directory, host, port, unix_socket, allow_devices)

    def interrupt(signum, frame):  # SIGTERM (and SIGINT, even when started in the background) stop the broker
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    proc = MosquittoProcess(cfg).start()
    console.print(f"mosquitto (pid {proc.pid}) listening on mqtts://{host}:{port}"
                  + (f" and unix://{cfg.socket_path}" if unix_socket else "") + f"; log {proc.log_path}")
    console.print(f"start the gateway with: iotgate gateway run --upstream {cfg.url}")
    try:
        code = proc.process.wait()
    except KeyboardInterrupt:
        proc.stop()
        return
    raise IotgateError(f"mosquitto exited with {code}: {proc.log_tail()}")
