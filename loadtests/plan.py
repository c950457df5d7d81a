"""What a load test run needs, decided without I/O: endpoints, identity slices per worker, settings.

Identity slices. The home's device identities (sorted by thing name) are the *pool*. A run over K workers needs
``K * ceil(U / K)`` of them for U device users: Locust spreads users over workers evenly, and worker ``i`` takes
only the ``i``-th of K equal, disjoint slices, so no certificate is ever used by two users -- in one process or
across machines. Every worker checks that its home holds the same first identities as the master's (a digest of
their names), so workers on other machines with a different copy of the home stop instead of reusing or
mismatching identities.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import re
from collections.abc import Sequence

from certs.errors import IotgateError

__all__ = [
    "ATTACK_KINDS",
    "E2E_MODES",
    "TARGETS",
    "PlanError",
    "Settings",
    "attack_kinds_for",
    "identities_needed",
    "is_loopback",
    "names_digest",
    "parse_duration",
    "parse_endpoint",
    "probe_topic_filter",
    "worker_slice",
]

TARGETS = ("gateway", "mosquitto", "aws")
AUTH_KINDS = ("certificate", "token", "sigv4")   # how device users authenticate
E2E_MODES = ("observer", "self", "off")

# Attacks of the mix, in the order an attacker runs them. TLS kinds are refused by any broker that requires a
# client certificate of its CA; registry kinds need the gateway's registry (status, registration); policy kinds
# need AWS IoT policies.
TLS_ATTACKS = ("no-certificate", "foreign-ca", "expired")
REGISTRY_ATTACKS = ("unregistered", "revoked", "inactive")
POLICY_ATTACKS = ("client-id-spoof", "publish-outside-policy", "subscribe-outside-policy", "wildcard-subscribe")
ATTACK_KINDS = TLS_ATTACKS + REGISTRY_ATTACKS + POLICY_ATTACKS
# no certificate: custom-authorizer tokens and SigV4 signatures on the gateway's token listener (--token-port)
TOKEN_ATTACKS = ("expired-token", "foreign-audience-token", "replayed-signature", "wrong-secret-signature")
SIGV4_ATTACKS = ("replayed-signature", "wrong-secret-signature")


class PlanError(IotgateError):
    """A run that cannot start as asked; the message says what to change."""

    exit_code = 2


def parse_endpoint(text: str, default_port: int = 8883) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a bare name, IPv4 address or IPv6 address without a port
        host, port_text = text, ""
    if not host:
        raise PlanError(f"--endpoint {text!r}: give HOST or HOST:PORT")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise PlanError(f"--endpoint {text!r}: the port must be a number 1..65535")
    return host, int(port_text)


_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``2m``, ``1h30m``, ``1m30s`` -> seconds (Locust's --run-time forms)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise PlanError(f"--run-time {text!r}: write seconds or a span such as 90s, 2m, 1h30m")
    hours, minutes, seconds = match.groups()
    value = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)
    if value <= 0:
        raise PlanError(f"--run-time {text!r}: must be more than 0 s")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def identities_needed(users: int, workers: int) -> int:
    """Identities a run of ``users`` device users over ``workers`` workers needs (see the module docstring)."""
    if users < 0 or workers < 1:
        raise ValueError(f"users must be >= 0 and workers >= 1, not {users} / {workers}")
    return workers * math.ceil(users / workers)


def worker_slice(pool_size: int, workers: int, index: int) -> range:
    """The pool positions worker ``index`` (0-based) of ``workers`` may use: one of ``workers`` equal, disjoint
    slices (the remainder of an uneven pool is left unused)."""
    if not 0 <= index < workers:
        raise PlanError(f"worker index {index} is outside 0..{workers - 1}: this worker joined a run that expects "
                        f"{workers} worker(s) (--expect-workers); start the run with enough workers for all")
    per = pool_size // workers
    return range(index * per, (index + 1) * per)


def names_digest(names: Sequence[str]) -> str:
    """A short digest of an ordered list of thing names: equal on two machines iff the lists are equal."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def probe_topic_filter(token: str) -> str:
    """What a worker's observer subscribes to: the probes of that worker's devices, and only those."""
    return f"dt/+/telemetry/{token}"


def attack_kinds_for(target: str, token_port: int | None = None) -> tuple[tuple[str, ...], dict[str, str]]:
    """(kinds that run, {kind: why it is skipped}) on a target. Against AWS IoT Core the identities for registry
    and policy attacks would have to be registered there, and an expired certificate of the home's CA proves
    nothing about expiry (AWS does not know that CA): only the kinds that need no registration run. The token
    kinds run only against the gateway's token listener."""
    if target == "gateway" and token_port is not None:
        tokens: dict[str, str] = {}
    elif target == "gateway":
        tokens = {k: "needs the gateway's token listener: pass --token-port" for k in TOKEN_ATTACKS}
    elif target == "mosquitto":
        tokens = {k: "a plain broker has no custom authorizers and no SigV4 keys" for k in TOKEN_ATTACKS}
    else:
        tokens = {k: "the load test does not create custom authorizers or IAM keys in an AWS account"
                  for k in TOKEN_ATTACKS}
    runs = ATTACK_KINDS + tuple(k for k in TOKEN_ATTACKS if k not in tokens)
    if target == "aws":
        runs = ("no-certificate", "foreign-ca")
        why = "needs identities registered on the target (a local registry: gateway or mosquitto targets)"
        return runs, {**{k: why for k in ATTACK_KINDS if k not in runs}, **tokens}
    return runs, tokens


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """How every device user of a run behaves; read from Locust's options on each worker."""

    target: str = "gateway"
    host: str = "127.0.0.1"
    port: int = 8883
    server_name: str | None = None
    ca_file: str | None = None          # CA for the server instead of each identity's root-ca.pem (AWS)
    prefix: str = "device-"             # thing-name prefix of the pool
    pool_size: int = 0                  # identities the master counted (0: each worker counts its own)
    pool_digest: str = ""               # names_digest of those (empty: not checked)
    workers: int = 1                    # workers the identities are sliced over
    protocol_level: int = 5
    keep_alive: int = 60
    telemetry_interval: float = 10.0    # seconds between QoS 1 publishes of a device; 0: none (idle devices)
    payload_bytes: int = 64
    e2e: str = "observer"
    run_id: str = "run"
    connect_timeout: float = 10.0
    ack_timeout: float = 10.0           # PUBACK / SUBACK, and e2e delivery
    keep_contexts: bool = False
    attack_interval: float = 1.0        # seconds between two attacks of one attacker user
    token_port: int | None = None       # the gateway's token listener, for the token and SigV4 attackers
    auth: str = "certificate"           # device users: certificate, or token / sigv4 on the token listener

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise PlanError(f"--target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.e2e not in E2E_MODES:
            raise PlanError(f"--e2e must be one of {', '.join(E2E_MODES)}, not {self.e2e!r}")
        if self.protocol_level not in (4, 5):
            raise PlanError(f"--mqtt must be 3.1.1 or 5, not {self.protocol_level}")
        if self.telemetry_interval < 0 or self.payload_bytes < 16 or self.workers < 1:
            raise PlanError("telemetry interval must be >= 0, payload >= 16 bytes, workers >= 1")
        if not 0 < self.port < 65536:
            raise PlanError(f"port {self.port} is not 1..65535")
        if self.auth not in AUTH_KINDS:
            raise PlanError(f"--auth must be one of {', '.join(AUTH_KINDS)}, not {self.auth!r}")
        if self.auth != "certificate" and (self.target != "gateway" or self.token_port is None):
            raise PlanError(f"--auth {self.auth} needs --target gateway and its token listener (--token-port)")

    @property
    def endpoint_text(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def token(self, worker_index: int) -> str:
        """Topic level that tells one worker's probes from another's (and from other runs')."""
        return f"{self.run_id}-w{worker_index}"
