"""Gateway configuration: defaults that follow AWS IoT Core's quotas, an optional TOML file, CLI overrides.

    [gateway]
    host = "127.0.0.1"
    port = 8883
    token_port = 8443                        # optional: custom authorizers (ALPN mqtt) and MQTT over WebSocket
    upstream = "mqtts://127.0.0.1:8884"      # or "unix:///path/mqtt.sock"
    registry = "sqlite:////abs/registry.db"  # default: registry.db in the home
    proxy_protocol = false                   # true: PROXY protocol v2 headers from trusted_proxies name the device
    trusted_proxies = ["10.0.0.0/24"]        # addresses (CIDR) of the TCP load balancers allowed to send them
    region = "us-east-1"
    tls_engine = "pyopenssl"                 # device and upstream TLS: pyOpenSSL (memory BIOs) or "stdlib"

    [limits]                                 # every field of Limits, e.g.
    handshake_timeout = 10.0
    max_connections = 10000

    [observe]
    access_log = "gateway-access.log"        # "-" for standard output
    stats_file = "gateway-stats.json"
    metrics_port = 0                         # > 0: /metrics and /stats on metrics_host

Relative paths are resolved against the iotgate home. Every error names the key at fault and what it takes.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import tomllib
from pathlib import Path
from typing import Any

from certs.errors import IotgateError
from certs.store import GATEWAY_CLIENT_CN
from gateway.auth.tls import TLS_ENGINES
from gateway.mqtt import DEFAULT_MAX_PACKET_SIZE, MAX_PAYLOAD_SIZE

DEFAULT_PORT = 8883
DEFAULT_UPSTREAM = "mqtts://127.0.0.1:8884"
BROKER_DIR = "broker"


class ConfigError(IotgateError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Per-listener and per-connection limits (AWS IoT Core's quotas unless said otherwise)."""

    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    upstream_timeout: float = 10.0
    max_connections: int = 10_000
    max_payload: int = MAX_PAYLOAD_SIZE
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    connect_rate_per_client_id: float = 1.0
    connect_burst_per_client_id: int = 1
    connect_rate_per_source: float = 500.0  # generous: a fleet simulator connects from one address
    connect_burst_per_source: int = 1000
    publish_rate: float = 100.0
    publish_burst: int = 100
    publish_bytes_rate: int = 512 * 1024
    max_subscriptions: int = 50
    max_filters_per_subscribe: int = 8
    max_inflight: int = 100
    max_pending_packets: int = 32
    max_topic_bytes: int = 256
    max_topic_slashes: int = 7
    max_client_id_bytes: int = 128
    topic_alias_maximum: int = 8
    keepalive_min: int = 30
    keepalive_max: int = 1200
    session_expiry_max: int = 3600
    decision_cache_size: int = 1024
    registry_poll_interval: float = 0.2
    # seconds the gateway keeps admitting devices on its last registry view while the registry does not answer;
    # past it, new connections are refused until it answers again (live sessions are kept)
    registry_max_staleness: float = 30.0
    max_rate_keys: int = 100_000
    max_device_buffer: int = 1 << 20  # bytes waiting for a device that does not read: beyond, the session closes


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayConfig:
    home: Path
    registry: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # The listener without client certificates, as AWS IoT's 443: ALPN "mqtt" -> MQTT with a custom authorizer,
    # otherwise MQTT over WebSocket on /mqtt (SigV4 or a custom authorizer). None: not opened.
    token_port: int | None = None
    upstream: str = DEFAULT_UPSTREAM
    # the TLS engine of the device listeners and of the mqtts:// upstream: "pyopenssl" (the OpenSSL bundled with
    # cryptography, over memory BIOs; the upstream resumes the broker's session) or "stdlib" (the ssl module
    # through the event loop's TLS transport); both verify the same way
    tls_engine: str = "pyopenssl"
    upstream_username: str = GATEWAY_CLIENT_CN
    upstream_password_file: Path | None = None
    region: str = "us-east-1"
    account: str = "123456789012"
    # PROXY protocol v2 on the device listener: connections from these networks carry the device's address
    proxy_protocol: bool = False
    trusted_proxies: tuple[str, ...] = ()
    access_log: str | None = "gateway-access.log"
    stats_file: Path | None = None
    stats_interval: float = 1.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    limits: Limits = dataclasses.field(default_factory=Limits)
    # set by `gateway run --workers N` for each worker process: its number (access-log field), SO_REUSEPORT on
    # the listeners, and the file its Prometheus text goes to (the supervisor serves the sum)
    worker: int | None = None
    reuse_port: bool = False
    metrics_file: Path | None = None
    replay_dir: Path | None = None  # where the workers share the SigV4 signatures already used (one node)

    @property
    def registry_url(self) -> str:
        return self.registry or f"sqlite:///{self.home.resolve() / 'registry.db'}"

    @property
    def password_file(self) -> Path:
        """The gateway's upstream password (unix socket): configured, else the secret beside the socket that
        `iotgate broker config --unix-socket` writes."""
        if self.upstream_password_file is not None:
            return self.upstream_password_file
        if self.upstream.startswith("unix://"):
            from gateway.upstream.link import parse_upstream_url

            return Path(parse_upstream_url(self.upstream).path).parent / "gateway.secret"
        return self.home / BROKER_DIR / "gateway.secret"

    @property
    def stats_path(self) -> Path:
        path = self.stats_file or (self.home / "gateway-stats.json")
        return path if self.worker is None else path.with_name(f"{path.stem}.worker{self.worker}{path.suffix}")

    @property
    def access_log_target(self) -> str | Path | None:
        """``"-"`` for standard output, a path, or None (no access log)."""
        if self.access_log in (None, ""):
            return None
        if self.access_log == "-":
            return "-"
        path = Path(self.access_log)
        return path if path.is_absolute() else self.home / path

    def replace(self, **changes: Any) -> GatewayConfig:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------- loading

_SECTIONS = {
    "gateway": {
        "registry": "str", "host": "str", "port": "port", "token_port": "port0", "upstream": "str",
        "upstream_username": "str",
        "upstream_password_file": "path", "region": "str", "account": "str", "proxy_protocol": "bool",
        "trusted_proxies": "cidrs", "tls_engine": "engine",
    },
    "limits": {f.name: ("float" if f.type == "float" else "int") for f in dataclasses.fields(Limits)},
    "observe": {
        "access_log": "str?", "stats_file": "path", "stats_interval": "float", "metrics_host": "str",
        "metrics_port": "port0",
    },
}


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(choices))}"


def _check(source: str, section: str, key: str, kind: str, value: Any, home: Path) -> Any:
    where = f"{source}: {section}.{key}"
    if kind in ("str", "str?"):
        if not isinstance(value, str) or (kind == "str" and not value.strip()):
            raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if kind == "cidrs":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of addresses or networks, e.g. [\"10.0.0.0/24\"], "
                              f"got {value!r}")
        for v in value:
            try:
                ipaddress.ip_network(v.strip(), strict=False)
            except ValueError:
                raise ConfigError(f"{where}: {v!r} is not an IP address or network (CIDR)") from None
        return tuple(v.strip() for v in value)
    if kind == "engine":
        if value not in TLS_ENGINES:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, TLS_ENGINES))}, got {value!r}")
        return value
    if kind == "path":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} must be a file path (a string), got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else home / path
    if kind in ("port", "port0"):
        low = 0 if kind == "port0" else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
            raise ConfigError(f"{where} must be a TCP port number {low}..65535, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where} must be a whole number >= 0, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{where} must be a number > 0 (seconds or per second), got {value!r}")
        return float(value)
    raise AssertionError(kind)


def load_config(home: Path, path: Path | None = None, **overrides: Any) -> GatewayConfig:
    """Defaults, then the TOML file (if any), then the non-None ``overrides`` (CLI options)."""
    values: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: configuration file not found") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        for section, table in data.items():
            if section not in _SECTIONS:
                raise ConfigError(f"{source}: unknown section {section!r}{_suggest(section, _SECTIONS)}")
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: {section} must be a table (a [{section}] header), got {table!r}")
            for key, value in table.items():
                kinds = _SECTIONS[section]
                if key not in kinds:
                    raise ConfigError(f"{source}: {section}.{key}: unknown key{_suggest(key, kinds)}")
                checked = _check(source, section, key, kinds[key], value, home)
                (limits if section == "limits" else values)[key] = checked
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    try:
        cfg = GatewayConfig(home=home, limits=Limits(**limits), **values)
    except TypeError as exc:  # an override key that does not exist: a bug in the caller
        raise ConfigError(f"configuration: {exc}") from None
    validate(cfg, source=str(path) if path else "configuration")
    return cfg


def validate(cfg: GatewayConfig, *, source: str = "configuration") -> None:
    lim = cfg.limits
    if lim.keepalive_min > lim.keepalive_max:
        raise ConfigError(f"{source}: limits.keepalive_min ({lim.keepalive_min}) is above keepalive_max "
                          f"({lim.keepalive_max})")
    if not 1 <= lim.keepalive_max <= 65535:
        raise ConfigError(f"{source}: limits.keepalive_max must be 1..65535 seconds, got {lim.keepalive_max}")
    if lim.max_payload > lim.max_packet_size:
        raise ConfigError(f"{source}: limits.max_payload ({lim.max_payload}) is above max_packet_size "
                          f"({lim.max_packet_size}); a packet holds its payload")
    if lim.max_packet_size < 64:
        raise ConfigError(f"{source}: limits.max_packet_size must be at least 64 bytes, got {lim.max_packet_size}")
    for name in ("max_connections", "max_subscriptions", "max_filters_per_subscribe", "max_inflight",
                 "connect_burst_per_client_id", "connect_burst_per_source", "publish_burst", "max_client_id_bytes",
                 "max_rate_keys"):
        if getattr(lim, name) < 1:
            raise ConfigError(f"{source}: limits.{name} must be at least 1, got {getattr(lim, name)}")
    if not 1 <= lim.max_inflight <= 65535:
        raise ConfigError(f"{source}: limits.max_inflight must be 1..65535, got {lim.max_inflight}")
    if lim.topic_alias_maximum > 65535:
        raise ConfigError(f"{source}: limits.topic_alias_maximum must be 0..65535, got {lim.topic_alias_maximum}")
    if lim.max_device_buffer < lim.max_packet_size:
        raise ConfigError(f"{source}: limits.max_device_buffer ({lim.max_device_buffer}) is below max_packet_size "
                          f"({lim.max_packet_size}); one delivery must fit in it")
    if lim.decision_cache_size < 2:
        raise ConfigError(f"{source}: limits.decision_cache_size must be at least 2, got {lim.decision_cache_size}")
    if cfg.proxy_protocol and not cfg.trusted_proxies:
        raise ConfigError(f"{source}: gateway.proxy_protocol is on but gateway.trusted_proxies is empty: list the "
                          "addresses of the load balancers allowed to send PROXY headers")
    for value in cfg.trusted_proxies:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f"{source}: gateway.trusted_proxies: {value!r} is not an IP address or network "
                              "(CIDR)") from None
    if cfg.tls_engine not in TLS_ENGINES:
        raise ConfigError(f"{source}: gateway.tls_engine must be one of {', '.join(map(repr, TLS_ENGINES))}, "
                          f"got {cfg.tls_engine!r}")
    from gateway.upstream.link import UpstreamError, parse_upstream_url

    try:
        parse_upstream_url(cfg.upstream, what=f"{source}: gateway.upstream (--upstream)")
    except UpstreamError as exc:
        raise ConfigError(str(exc)) from None
