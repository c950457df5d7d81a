"""The declared flows: who may talk to whom, over which hop, with which authentication.

A flows file (TOML, or YAML with PyYAML) lists principals; each names how it is recognised in the access log and
the topics it may use per direction::

    [[principals]]
    name = "sensors"             # a label of your choosing
    kind = "thing"               # thing | operator | service | upstream
    things = ["device-*"]        # thing-name patterns (* and ?), and/or
    thing_types = ["sensor"]     # thing types (looked up in the registry), client_ids, authorizers, access_keys
    auth = ["mtls"]              # mtls | custom_authorizer | sigv4 | password
    ca = ["issuing"]             # for mtls: CA id prefixes, or "issuing" / "upstream" (the home's own CAs)
    hop = "device-gateway"       # device-gateway (default) | gateway-broker (kind upstream)
    publish = ["dt/{thing}/+"]   # MQTT topic filters; {thing} and {client_id} are the connection's own
    subscribe = ["cmd/{thing}/#"]
    receive = ["cmd/{thing}/#"]

The ``upstream`` principal is the gateway's own identity towards the broker; its flows are the device flows the
gateway forwarded. Errors name the principal and the field.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from pathlib import Path

from certs.errors import IotgateError

KINDS = ("thing", "operator", "service", "upstream")
AUTH_METHODS = ("mtls", "custom_authorizer", "sigv4", "password")
HOPS = ("device-gateway", "gateway-broker")
ACTIONS = {"publish": "iot:Publish", "subscribe": "iot:Subscribe", "receive": "iot:Receive"}
_MATCHERS = ("things", "thing_types", "client_ids", "authorizers", "access_keys")
_FIELDS = {"name", "kind", "auth", "ca", "hop", "description", *ACTIONS, *_MATCHERS}
_VARIABLES = re.compile(r"\{([a-z_]+)\}")


class FlowsError(IotgateError, ValueError):
    """A flows file that cannot be used; the message names the file, the principal and the field."""


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: str
    hop: str
    auth: tuple[str, ...]
    ca: tuple[str, ...] = ()
    things: tuple[str, ...] = ()
    thing_types: tuple[str, ...] = ()
    client_ids: tuple[str, ...] = ()
    authorizers: tuple[str, ...] = ()
    access_keys: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    receive: tuple[str, ...] = ()
    description: str = ""

    def topics(self, action: str) -> tuple[str, ...]:
        """The declared filters for an action (iot:Publish / iot:RetainPublish / iot:Subscribe / iot:Receive)."""
        if action in ("iot:Publish", "iot:RetainPublish"):
            return self.publish
        return self.subscribe if action == "iot:Subscribe" else self.receive

    def matches(self, identity, thing_type: str | None = None) -> bool:
        """Whether an observed identity (log.Identity) is this principal."""
        if self.kind == "upstream":
            return identity.method == "upstream"
        if identity.method == "upstream":
            return False
        checks = []
        if self.things:
            checks.append(identity.thing is not None and any(fnmatch.fnmatchcase(identity.thing, p) for p in self.things))
        if self.thing_types:
            checks.append(thing_type is not None and thing_type in self.thing_types)
        if self.client_ids:
            checks.append(identity.client_id is not None
                          and any(fnmatch.fnmatchcase(identity.client_id, p) for p in self.client_ids))
        if self.authorizers:
            checks.append(identity.authorizer is not None
                          and any(fnmatch.fnmatchcase(identity.authorizer, p) for p in self.authorizers))
        if self.access_keys:
            checks.append(identity.access_key is not None
                          and any(fnmatch.fnmatchcase(identity.access_key, p) for p in self.access_keys))
        return any(checks)


@dataclasses.dataclass(frozen=True, slots=True)
class Declared:
    principals: tuple[Principal, ...]
    source: str = "<flows>"

    def principal(self, name: str) -> Principal | None:
        return next((p for p in self.principals if p.name == name), None)


def load_declared(path: str | Path) -> Declared:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FlowsError(f"{path}: cannot read the flows file: {exc.strerror}") from None
    return parse_declared(text, source=str(path), yaml=path.suffix.lower() in (".yaml", ".yml"))


def parse_declared(text: str, *, source: str = "<flows>", yaml: bool = False) -> Declared:
    if yaml:
        import yaml as pyyaml

        try:
            data = pyyaml.safe_load(text)
        except pyyaml.YAMLError as exc:
            raise FlowsError(f"{source}: not valid YAML: {exc}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FlowsError(f"{source}: not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise FlowsError(f"{source}: expected a table with a 'principals' list")
    unknown = set(data) - {"principals", "name", "description"}
    if unknown:
        raise FlowsError(f"{source}: unknown top-level field(s) {', '.join(sorted(unknown))}")
    items = data.get("principals")
    if not isinstance(items, list) or not items:
        raise FlowsError(f"{source}: 'principals' must be a non-empty list of tables")
    principals = []
    names: set[str] = set()
    for i, item in enumerate(items):
        where = f"{source}: principals[{i}]"
        if not isinstance(item, dict):
            raise FlowsError(f"{where}: expected a table")
        principal = _principal(item, where)
        if principal.name in names:
            raise FlowsError(f"{where}.name: {principal.name!r} is declared twice")
        names.add(principal.name)
        principals.append(principal)
    return Declared(tuple(principals), source)


def _strings(item: dict, key: str, where: str) -> tuple[str, ...]:
    value = item.get(key, ())
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise FlowsError(f"{where}.{key}: expected a string or a list of non-empty strings")
    return tuple(value)


def _principal(item: dict, where: str) -> Principal:
    unknown = set(item) - _FIELDS
    if unknown:
        field = sorted(unknown)[0]
        close = [f for f in sorted(_FIELDS) if fnmatch.fnmatch(f, f"{field[:3]}*")]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FlowsError(f"{where}.{field}: unknown field{hint}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise FlowsError(f"{where}.name: required, a non-empty string")
    where = f"{where} ({name})"
    kind = item.get("kind", "thing")
    if kind not in KINDS:
        raise FlowsError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    hop = item.get("hop", "gateway-broker" if kind == "upstream" else "device-gateway")
    if hop not in HOPS:
        raise FlowsError(f"{where}.hop: {hop!r} is not one of {', '.join(HOPS)}")
    if (kind == "upstream") != (hop == "gateway-broker"):
        raise FlowsError(f"{where}.hop: only the upstream principal (the gateway's own identity) uses gateway-broker")
    auth = _strings(item, "auth", where) or (("mtls",))
    for method in auth:
        if method not in AUTH_METHODS:
            raise FlowsError(f"{where}.auth: {method!r} is not one of {', '.join(AUTH_METHODS)}")
    matchers = {key: _strings(item, key, where) for key in _MATCHERS}
    if kind != "upstream" and not any(matchers.values()):
        raise FlowsError(f"{where}: name how it is recognised: one of {', '.join(_MATCHERS)}")
    if kind == "upstream" and any(matchers.values()):
        raise FlowsError(f"{where}: the upstream principal is the gateway itself; it takes no {', '.join(_MATCHERS)}")
    topics = {}
    for key in ACTIONS:
        topics[key] = _strings(item, key, where)
        for flt in topics[key]:
            problem = _filter_problem(flt)
            if problem:
                raise FlowsError(f"{where}.{key}: {flt!r}: {problem}")
            for var in _VARIABLES.findall(flt):
                if var not in ("thing", "client_id"):
                    raise FlowsError(f"{where}.{key}: {flt!r}: unknown variable {{{var}}} (use {{thing}} or {{client_id}})")
                if kind == "upstream":
                    raise FlowsError(f"{where}.{key}: {flt!r}: the upstream principal has no {{{var}}}")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise FlowsError(f"{where}.description: expected a string")
    return Principal(name=name, kind=kind, hop=hop, auth=auth, ca=_strings(item, "ca", where), **matchers,
                     **topics, description=description)


def _filter_problem(flt: str) -> str | None:
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole last level"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def substitute(flt: str, thing: str | None, client_id: str | None) -> str | None:
    """A declared filter with {thing}/{client_id} replaced; None when the connection has no such value."""
    out = flt
    if "{thing}" in out:
        if not thing:
            return None
        out = out.replace("{thing}", thing)
    if "{client_id}" in out:
        if not client_id:
            return None
        out = out.replace("{client_id}", client_id)
    return out


def topic_matches(flt: str, topic: str) -> bool:
    """MQTT matching of a topic name by a filter ('+' one level, '#' the rest, including the parent)."""
    f, t = flt.split("/"), topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


def filter_covers(outer: str, inner: str) -> bool:
    """Whether every topic the filter ``inner`` can match is matched by ``outer`` (a subscription within a grant)."""
    o, n = outer.split("/"), inner.split("/")
    for i, level in enumerate(o):
        if level == "#":
            return True
        if i >= len(n):
            return False
        if n[i] == "#":
            return False
        if level == "+":
            continue
        if n[i] == "+" or level != n[i]:
            return False
    return len(o) == len(n)
