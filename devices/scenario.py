"""Fleet scenarios: what a simulated fleet does and what each part of it is expected to meet. Pure: parsing,
validation and arithmetic only; no I/O beyond reading the TOML text given.

A scenario is a TOML document (``tomllib``)::

    name = "telemetry"
    duration = 30                 # seconds of traffic (the CLI's --duration wins)
    reconnect_within = 10         # a legitimate device must be back this long after chaos ended
    registry_propagation = 1.0    # registry change -> the gateway has it (seconds to wait)

    [session]                     # defaults for every group
    protocol = 5                  # 4 = MQTT 3.1.1, 5 = MQTT 5.0
    keep_alive = 60
    clean_start = true
    session_expiry = 0

    [[groups]]
    name = "sensors"
    weight = 1                    # share of --devices (or: count = 10)
    policy = "iotgate-device"     # attached when the simulator provisions the group's devices
    auth = "certificate"          # or "token" (custom authorizer JWT) / "sigv4" (WebSocket): the token listener
    expect = "allowed"            # "refused": every device of the group must be refused
    subscribe = ["cmd/{thing}/#"]
    [groups.publish]
    topic = "dt/{thing}/telemetry"
    interval = 1.0
    qos = 1
    payload = '{"thing":"{thing}","seq":{seq},"ts":{ts}}'
    size = 0                      # pad the payload to this many bytes
    [groups.commands]             # an operator sends commands, each device answers
    topic = "cmd/{thing}/reboot"
    response = "cmd/{thing}/resp/reboot"
    interval = 2.0

    [[attackers]]
    kind = "foreign-ca"           # see ATTACKER_KINDS
    count = 1
    # ca_cert = "old-vendor-ca.pem" # foreign-ca only: sign with this CA (and ca_key) instead of a new one

    [[chaos]]
    kind = "abort"                # disconnect | abort | upstream-kill
    at = 5.0
    fraction = 0.5

    [[rotations]]
    at = 4.0
    fraction = 0.2                # of every legitimate device
    spread = 0.0                  # seconds the rotations are spread over (0: a storm)

Errors name the key that is wrong: ``groups[0].publish.qos: must be 0 or 1, not 2``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from certs.errors import IotgateError

MAX_DEVICES = 10_000
MAX_DURATION = 3600.0
MAX_RATE = 2000.0
MAX_ATTACKERS_PER_GROUP = 100
MAX_FLOOD_CONNECTS = 500
MAX_PAYLOAD = 256 * 1024

DEFAULT_PAYLOAD = '{"thing":"{thing}","seq":{seq},"ts":{ts}}'
PLACEHOLDERS = ("{thing}", "{group}", "{seq}", "{ts}", "{n}")

ATTACKER_KINDS: dict[str, str] = {
    "no-certificate": "TLS without a client certificate",
    "foreign-ca": "certificate from a CA that is not registered",
    "expired": "certificate of our CA whose validity has ended",
    "revoked": "registered certificate with status REVOKED",
    "inactive": "registered certificate with status INACTIVE",
    "unregistered": "certificate of our CA that was never registered",
    "client-id-spoof": "valid certificate, client id of another thing",
    "publish-outside-policy": "publish to another thing's topic",
    "subscribe-outside-policy": "subscribe to another thing's commands",
    "wildcard-subscribe": "subscribe to #",
    "oversize-payload": "publish above the 128 KiB payload limit",
    "slow-handshake": "open TCP and never finish the TLS handshake",
    "connect-flood": "many CONNECTs with one client id at once",
    # no certificate: against the gateway's token listener (fleet run --token-port)
    "expired-token": "custom-authorizer JWT whose expiry has passed",
    "foreign-audience-token": "custom-authorizer JWT issued for another audience",
    "replayed-signature": "SigV4-signed WebSocket URL used a second time",
    "wrong-secret-signature": "SigV4 signature made with a secret that is not the key's",
}
CHAOS_KINDS = ("disconnect", "abort", "upstream-kill")
AUTH_KINDS = ("certificate", "token", "sigv4")
EXPECTATIONS = ("allowed", "refused")


class ScenarioError(IotgateError):
    """A scenario file or value is invalid; the message names the key."""


# --------------------------------------------------------------------------------------------- model

@dataclasses.dataclass(frozen=True, slots=True)
class SessionSettings:
    protocol: int = 5
    keep_alive: int = 60
    clean_start: bool = True
    session_expiry: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class PublishSpec:
    topic: str
    interval: float = 1.0
    qos: int = 1
    payload: str = DEFAULT_PAYLOAD
    size: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class CommandSpec:
    topic: str
    response: str
    interval: float = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class Group:
    name: str
    count: int | None = None
    weight: float = 1.0
    prefix: str = ""
    policy: str | None = None
    expect: str = "allowed"
    subscribe: tuple[str, ...] = ()
    publish: PublishSpec | None = None
    commands: CommandSpec | None = None
    session: SessionSettings = SessionSettings()
    auth: str = "certificate"          # certificate | token | sigv4

    @property
    def thing_prefix(self) -> str:
        return self.prefix or f"sim-{self.name}-"


@dataclasses.dataclass(frozen=True, slots=True)
class AttackerGroup:
    kind: str
    count: int = 1
    protocol: int = 5
    connects: int = 20          # connect-flood: CONNECTs fired at once
    timeout: float = 15.0       # how long an attacker waits for the refusal
    ca_cert: str = ""           # foreign-ca: sign with this CA (certificate and key files) instead of a new one
    ca_key: str = ""

    @property
    def name(self) -> str:
        return f"attacker:{self.kind}"


@dataclasses.dataclass(frozen=True, slots=True)
class Chaos:
    kind: str
    at: float
    fraction: float = 0.5
    downtime: float = 1.0       # upstream-kill: seconds before the broker is started again


@dataclasses.dataclass(frozen=True, slots=True)
class Rotation:
    at: float
    fraction: float = 0.1
    spread: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    groups: tuple[Group, ...]
    attackers: tuple[AttackerGroup, ...] = ()
    chaos: tuple[Chaos, ...] = ()
    rotations: tuple[Rotation, ...] = ()
    duration: float = 20.0
    rate: float | None = None
    reconnect_within: float = 10.0
    registry_propagation: float = 1.0
    drain: float = 5.0
    description: str = ""
    session: SessionSettings = SessionSettings()   # the [session] table: every group's defaults, the operator's

    @property
    def chaos_end(self) -> float | None:
        """When the last chaos action is over (seconds from the start), or None without chaos."""
        ends = [c.at + (c.downtime if c.kind == "upstream-kill" else 0.0) for c in self.chaos]
        ends += [r.at + r.spread for r in self.rotations]
        return max(ends) if ends else None


# --------------------------------------------------------------------------------------------- parsing

def _err(path: str, message: str) -> ScenarioError:
    return ScenarioError(f"{path}: {message}")


class _Reader:
    """Reads one table, remembering which keys were used, so unknown keys are reported by name."""

    def __init__(self, table: Any, path: str) -> None:
        if not isinstance(table, Mapping):
            raise _err(path or "scenario", f"must be a table, not {type(table).__name__}")
        self.table = table
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.table:
            if required:
                raise _err(self.key(name), "is required")
            return default
        value = self.table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool and (kind is int or kind is float):
            raise _err(self.key(name), f"must be a number, not {value!r}")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise _err(self.key(name), f"must be {_article(names)}, not {value!r}")
        return value

    def number(self, name: str, default: float | None, *, lo: float | None = None, hi: float | None = None,
               required: bool = False, lo_open: bool = False) -> float | None:
        value = self.get(name, float, default, required=required)
        if value is None:
            return None
        if not math.isfinite(value):
            raise _err(self.key(name), f"must be a finite number, not {value!r}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise _err(self.key(name), f"must be {'>' if lo_open else '>='} {lo:g}, not {value:g}")
        if hi is not None and value > hi:
            raise _err(self.key(name), f"must be <= {hi:g}, not {value:g}")
        return value

    def integer(self, name: str, default: int | None, *, lo: int | None = None, hi: int | None = None,
                choices: Sequence[int] | None = None) -> int | None:
        value = self.get(name, int, default)
        if value is None:
            return None
        if choices is not None and value not in choices:
            raise _err(self.key(name), f"must be {' or '.join(map(str, choices))}, not {value}")
        if lo is not None and value < lo:
            raise _err(self.key(name), f"must be >= {lo}, not {value}")
        if hi is not None and value > hi:
            raise _err(self.key(name), f"must be <= {hi}, not {value}")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str | None = None, *, required: bool = False) -> str:
        value = self.get(name, str, default, required=required)
        if value not in choices:
            raise _err(self.key(name), f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise _err(self.key(unknown[0]), f"unknown key (known here: {', '.join(sorted(self.used))})")


def _article(names: str) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "list": "a list", "dict": "a table"}.get(names, names)


def _topic(r: _Reader, name: str, *, required: bool = True, filter_: bool = False) -> str | None:
    value = r.get(name, str, None, required=required)
    if value is None:
        return None
    if not value or len(value.encode()) > 256:
        raise _err(r.key(name), "must be 1..256 bytes")
    stripped = value
    for p in PLACEHOLDERS:
        stripped = stripped.replace(p, "")
    unknown = re.search(r"\{[^}]*\}", stripped)
    if unknown:
        raise _err(r.key(name), f"unknown placeholder {unknown.group(0)} (known: {', '.join(PLACEHOLDERS)})")
    if not filter_ and ("+" in stripped or "#" in stripped):
        raise _err(r.key(name), f"a topic to publish to has no wildcards: {value!r}")
    return value


def _session(table: Any, path: str, base: SessionSettings) -> SessionSettings:
    r = _Reader(table, path)
    protocol = r.integer("protocol", base.protocol, choices=(4, 5))
    s = SessionSettings(
        protocol=protocol,
        keep_alive=r.integer("keep_alive", base.keep_alive, lo=0, hi=65535),
        clean_start=r.get("clean_start", bool, base.clean_start),
        session_expiry=r.integer("session_expiry", base.session_expiry, lo=0, hi=4_294_967_295),
    )
    r.done()
    if s.session_expiry and s.protocol != 5:
        raise _err(r.key("session_expiry"), "is MQTT 5 only (protocol = 5); MQTT 3.1.1 keeps a session with "
                                             "clean_start = false")
    return s


def _publish(table: Any, path: str) -> PublishSpec:
    r = _Reader(table, path)
    spec = PublishSpec(
        topic=_topic(r, "topic"),
        interval=r.number("interval", 1.0, lo=0.001, hi=3600),
        qos=r.integer("qos", 1, choices=(0, 1)),
        payload=r.get("payload", str, DEFAULT_PAYLOAD),
        size=r.integer("size", 0, lo=0, hi=MAX_PAYLOAD),
    )
    r.done()
    return spec


def _commands(table: Any, path: str) -> CommandSpec:
    r = _Reader(table, path)
    spec = CommandSpec(topic=_topic(r, "topic"), response=_topic(r, "response"),
                       interval=r.number("interval", 2.0, lo=0.01, hi=3600))
    r.done()
    return spec


def _group(table: Any, path: str, session: SessionSettings) -> Group:
    r = _Reader(table, path)
    name = r.get("name", str, required=True)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
        raise _err(r.key("name"), f"letters, digits, '-' and '_' only (1..40), not {name!r}")
    subscribe = r.get("subscribe", list, [])
    for i, item in enumerate(subscribe):
        if not isinstance(item, str) or not item:
            raise _err(f"{r.key('subscribe')}[{i}]", f"must be a topic filter string, not {item!r}")
    subs = _Reader({f"subscribe[{i}]": s for i, s in enumerate(subscribe)}, path)
    for i in range(len(subscribe)):
        _topic(subs, f"subscribe[{i}]", filter_=True)
    count = r.integer("count", None, lo=0, hi=MAX_DEVICES)
    group = Group(
        name=name,
        count=count,
        weight=r.number("weight", 1.0, lo=0.0),
        prefix=r.get("prefix", str, ""),
        policy=r.get("policy", str, None),
        expect=r.choice("expect", EXPECTATIONS, "allowed"),
        subscribe=tuple(subscribe),
        publish=_publish(r.get("publish", dict), r.key("publish")) if "publish" in r.table else None,
        commands=_commands(r.get("commands", dict), r.key("commands")) if "commands" in r.table else None,
        session=_session(r.get("session", dict), r.key("session"), session) if "session" in r.table else session,
        auth=r.choice("auth", AUTH_KINDS, "certificate"),
    )
    if group.auth != "certificate" and group.policy is not None:
        raise _err(r.key("policy"), f"a {group.auth} group's rights come from the run's {group.auth} policy "
                                    "(its own dt/ and cmd/ topics); policy is for certificate groups")
    r.used.update({"publish", "commands", "session"})
    r.done()
    return group


def _attacker(table: Any, path: str, session: SessionSettings) -> AttackerGroup:
    r = _Reader(table, path)
    a = AttackerGroup(
        kind=r.choice("kind", tuple(ATTACKER_KINDS), required=True),
        count=r.integer("count", 1, lo=1, hi=MAX_ATTACKERS_PER_GROUP),
        protocol=r.integer("protocol", session.protocol, choices=(4, 5)),  # default: the scenario's [session]
        connects=r.integer("connects", 20, lo=2, hi=MAX_FLOOD_CONNECTS),
        timeout=r.number("timeout", 15.0, lo=0.1, hi=300),
        ca_cert=r.get("ca_cert", str, ""),
        ca_key=r.get("ca_key", str, ""),
    )
    r.done()
    if (a.ca_cert or a.ca_key) and a.kind != "foreign-ca":
        raise _err(r.key("ca_cert" if a.ca_cert else "ca_key"), 'is for kind = "foreign-ca" only')
    if bool(a.ca_cert) != bool(a.ca_key):
        raise _err(r.key("ca_key" if a.ca_cert else "ca_cert"), "ca_cert and ca_key go together: the CA's "
                                                                  "certificate and its private key")
    return a


def _chaos(table: Any, path: str) -> Chaos:
    r = _Reader(table, path)
    c = Chaos(kind=r.choice("kind", CHAOS_KINDS, required=True), at=r.number("at", None, lo=0, required=True),
              fraction=r.number("fraction", 0.5, lo=0.0, hi=1.0), downtime=r.number("downtime", 1.0, lo=0, hi=600))
    r.done()
    return c


def _rotation(table: Any, path: str) -> Rotation:
    r = _Reader(table, path)
    rot = Rotation(at=r.number("at", None, lo=0, required=True), fraction=r.number("fraction", 0.1, lo=0, hi=1),
                   spread=r.number("spread", 0.0, lo=0, hi=3600))
    r.done()
    return rot


def _list(r: _Reader, name: str) -> list:
    value = r.get(name, list, [])
    return value


def parse_scenario(data: Mapping[str, Any], *, default_name: str = "scenario") -> Scenario:
    """A :class:`Scenario` from parsed TOML; :class:`ScenarioError` names the first wrong key."""
    r = _Reader(data, "")
    name = r.get("name", str, default_name)
    session = _session(r.get("session", dict, {}), "session", SessionSettings())
    groups = tuple(_group(t, f"groups[{i}]", session) for i, t in enumerate(_list(r, "groups")))
    attackers = tuple(_attacker(t, f"attackers[{i}]", session) for i, t in enumerate(_list(r, "attackers")))
    chaos = tuple(_chaos(t, f"chaos[{i}]") for i, t in enumerate(_list(r, "chaos")))
    rotations = tuple(_rotation(t, f"rotations[{i}]") for i, t in enumerate(_list(r, "rotations")))
    scenario = Scenario(
        name=name, groups=groups, attackers=attackers, chaos=chaos, rotations=rotations,
        duration=r.number("duration", 20.0, lo=0.1, hi=MAX_DURATION),
        rate=r.number("rate", None, lo=0.0, hi=MAX_RATE, lo_open=True),
        reconnect_within=r.number("reconnect_within", 10.0, lo=0.1, hi=600),
        registry_propagation=r.number("registry_propagation", 1.0, lo=0.0, hi=60),
        drain=r.number("drain", 5.0, lo=0.0, hi=120),
        description=r.get("description", str, ""),
        session=session,
    )
    r.done()
    if not groups and not attackers:
        raise _err("groups", "a scenario needs at least one device group or attacker group")
    names = [g.name for g in groups]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise _err(f"groups[{i}].name", f"{n!r} is used by groups[{names.index(n)}] already")
    prefixes = [g.thing_prefix for g in groups]
    for i, p in enumerate(prefixes):
        for j, q in enumerate(prefixes[:i]):
            if p.startswith(q) or q.startswith(p):
                raise _err(f"groups[{i}].prefix", f"{p!r} overlaps the prefix {q!r} of groups[{j}]")
    for i, c in enumerate(chaos):
        if c.at >= scenario.duration:
            raise _err(f"chaos[{i}].at", f"{c.at:g} s is not within the run's duration ({scenario.duration:g} s)")
    for i, rot in enumerate(rotations):
        if rot.at >= scenario.duration:
            raise _err(f"rotations[{i}].at", f"{rot.at:g} s is not within the run's duration "
                                             f"({scenario.duration:g} s)")
    return scenario


def loads_scenario(text: str, *, source: str = "scenario") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    try:
        return parse_scenario(data, default_name=Path(source).stem)
    except ScenarioError as exc:
        raise ScenarioError(f"{source}: {exc}") from None


def load_scenario(spec: str) -> Scenario:
    """A built-in scenario by name, or a TOML file."""
    if spec in BUILTIN:
        return loads_scenario(BUILTIN[spec], source=f"built-in scenario {spec!r}")
    path = Path(spec)
    if not path.is_file():
        raise ScenarioError(f"{spec}: no such scenario file and no built-in scenario of that name "
                            f"(built-in: {', '.join(BUILTIN)})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not UTF-8 text") from None
    scenario = loads_scenario(text, source=str(path))
    # files named by the scenario are relative to it
    attackers = tuple(dataclasses.replace(a, ca_cert=str(path.parent / a.ca_cert), ca_key=str(path.parent / a.ca_key))
                      if a.ca_cert else a for a in scenario.attackers)
    return dataclasses.replace(scenario, attackers=attackers)


# --------------------------------------------------------------------------------------------- arithmetic

def allocate(groups: Sequence[Group], total: int) -> dict[str, int]:
    """Devices per group: a group's ``count`` is taken as it is; ``total`` minus those is split by ``weight``
    (largest remainders, ties to the earlier group)."""
    fixed = {g.name: g.count for g in groups if g.count is not None}
    weighted = [g for g in groups if g.count is None]
    rest = max(0, total - sum(fixed.values()))
    weights = sum(g.weight for g in weighted)
    out = dict(fixed)
    if not weighted:
        return {g.name: out[g.name] for g in groups}
    if weights <= 0:
        shares = [0.0] * len(weighted)
    else:
        shares = [rest * g.weight / weights for g in weighted]
    floors = [int(s) for s in shares]
    left = rest - sum(floors) if weights > 0 else 0
    order = sorted(range(len(weighted)), key=lambda i: (-(shares[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    for g, n in zip(weighted, floors):
        out[g.name] = n
    return {g.name: out[g.name] for g in groups}


def render(template: str, *, thing: str, group: str = "", seq: int = 0, ts: float = 0.0, n: int = 0) -> str:
    """Fill a topic or payload template (plain replacement: JSON braces in payloads stay as they are)."""
    return (template.replace("{thing}", thing).replace("{group}", group).replace("{seq}", str(seq))
            .replace("{ts}", f"{ts:.6f}").replace("{n}", str(n)))


def payload(spec: PublishSpec, *, thing: str, group: str, seq: int, ts: float) -> bytes:
    data = render(spec.payload, thing=thing, group=group, seq=seq, ts=ts).encode()
    if spec.size > len(data):
        data += b" " * (spec.size - len(data))
    return data


def topic_filter(template: str) -> str:
    """The filter that matches a topic template for every thing: ``dt/{thing}/t`` -> ``dt/+/t``."""
    parts = []
    for level in template.split("/"):
        parts.append("+" if any(p in level for p in PLACEHOLDERS) else level)
    return "/".join(parts)


def thing_pattern(template: str) -> re.Pattern[str]:
    """A regex that recovers the thing name from a topic made from ``template``."""
    out = ""
    rest = template
    while rest:
        idx = [(rest.find(p), p) for p in PLACEHOLDERS if rest.find(p) >= 0]
        if not idx:
            out += re.escape(rest)
            break
        pos, p = min(idx)
        out += re.escape(rest[:pos]) + ("(?P<thing>[^/]+)" if p == "{thing}" and "(?P<thing>" not in out
                                        else "[^/]+")
        rest = rest[pos + len(p):]
    return re.compile(f"^{out}$")


def connect_schedule(count: int, rate: float | None) -> list[float]:
    """When each of ``count`` devices starts connecting (seconds from the start), ``rate`` per second."""
    if not rate:
        return [0.0] * count
    return [i / rate for i in range(count)]


# --------------------------------------------------------------------------------------------- built-ins

_TELEMETRY = """
name = "telemetry"
description = "Devices publish QoS 1 telemetry on dt/<thing>/telemetry and listen on their command topics."
duration = 20
[[groups]]
name = "sensors"
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 1.0
qos = 1
"""

_COMMAND_RESPONSE = """
name = "command-response"
description = "An operator sends commands on cmd/<thing>/reboot; each device answers on cmd/<thing>/resp/reboot."
duration = 20
[[groups]]
name = "actuators"
[groups.publish]
topic = "dt/{thing}/state"
interval = 5.0
qos = 1
[groups.commands]
topic = "cmd/{thing}/reboot"
response = "cmd/{thing}/resp/reboot"
interval = 2.0
"""

_RECONNECT_STORM = """
name = "reconnect-storm"
description = "Telemetry, then every device loses its connection at once and must come back."
duration = 20
reconnect_within = 15
[[groups]]
name = "sensors"
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 1.0
qos = 1
[[chaos]]
kind = "abort"
at = 5.0
fraction = 1.0
"""

BUILTIN: dict[str, str] = {
    "telemetry": _TELEMETRY,
    "command-response": _COMMAND_RESPONSE,
    "reconnect-storm": _RECONNECT_STORM,
}
