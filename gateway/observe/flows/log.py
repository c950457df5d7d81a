"""Access logs -> what was observed: identities, allowed flows per hop, refused attempts, event counts.

``read_logs`` is the shell (files, several gateway nodes, ``--since``); ``observe`` is pure: records in, an
Observation out. Allowed flows come from the ``flows`` list a session's last event carries; each one a device
sent or received through the gateway is also a flow of the gateway's upstream identity on the gateway -> broker
hop (the gateway forwards it over its own link, named by the node's ``upstream`` event).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import orjson

from gateway.observe.flows.model import FlowsError

REFUSED = ("refused", "denied", "throttled")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who an access-log record speaks for. ``key`` is the label reports use."""

    key: str
    method: str | None  # mtls | custom_authorizer | sigv4 | password | upstream | None (no identity shown)
    thing: str | None = None
    client_id: str | None = None
    certificate_id: str | None = None
    authorizer: str | None = None
    principal: str | None = None
    access_key: str | None = None


@dataclasses.dataclass
class FlowStat:
    count: int = 0
    bytes: int = 0
    nodes: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class RefusalStat:
    count: int = 0
    reasons: Counter = dataclasses.field(default_factory=Counter)
    nodes: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class Observation:
    identities: dict[str, Identity] = dataclasses.field(default_factory=dict)
    # identity key -> how it authenticated: {("mtls", ca id or issuer), ("custom_authorizer", name), ...}
    auth: dict[str, set[tuple[str, str | None]]] = dataclasses.field(default_factory=dict)
    # (identity key, hop, action, topic or filter) -> stats
    flows: dict[tuple[str, str, str, str], FlowStat] = dataclasses.field(default_factory=dict)
    # (identity key, event, kind) -> stats
    refusals: dict[tuple[str, str, str], RefusalStat] = dataclasses.field(default_factory=dict)
    events: Counter = dataclasses.field(default_factory=Counter)  # (event, decision, kind) -> count
    nodes: list[str] = dataclasses.field(default_factory=list)
    records: int = 0
    malformed: int = 0
    overflow: int = 0  # flows a session counted beyond its per-session table


def identity_of(record: dict) -> Identity:
    """The identity an access-log record names (the same function for every event)."""
    if record.get("event") == "upstream":
        return Identity(f"gateway ({record.get('identity') or 'upstream'})", "upstream",
                        certificate_id=record.get("certificate_id"))
    thing, client_id, cert = record.get("thing"), record.get("client_id"), record.get("certificate_id")
    authorizer, principal, akid = record.get("authorizer"), record.get("principal"), record.get("access_key")
    if akid:
        return Identity(f"key:{akid}", "sigv4", thing, client_id, access_key=akid)
    if authorizer:
        label = f"authorizer:{authorizer}/{principal}" if principal else f"authorizer:{authorizer}"
        return Identity(label, "custom_authorizer", thing, client_id, authorizer=authorizer, principal=principal)
    if cert:
        label = thing or (f"cert:{cert[:12]} as {client_id}" if client_id else f"cert:{cert[:12]}")
        return Identity(label, "mtls", thing, client_id, cert)
    source = (record.get("source") or "").rsplit(":", 1)[0]
    return Identity(f"no identity ({source or 'unknown source'})", None, None, client_id)


def auth_of(record: dict, identity: Identity) -> tuple[str, str | None]:
    """(method, detail): the CA id or issuer of a certificate, the authorizer's name, the access key."""
    method = record.get("auth") or identity.method or "none"
    if method == "mtls":
        return method, record.get("ca_id") or record.get("ca")
    if method == "custom_authorizer":
        return method, identity.authorizer
    if method == "sigv4":
        return method, identity.access_key
    return method, None


def auth_text(auth: tuple[str, str | None]) -> str:
    method, detail = auth
    if detail is None:
        return method
    if method == "mtls":
        return f"mtls, CA {detail[:12]}" if len(detail) == 64 else f"mtls, CA {detail}"
    return f"{method} {detail}"


def observe(records: Iterable[dict], *, since: float | None = None) -> Observation:
    """Pure: access-log records (with ``_node``, the log they came from) -> an Observation."""
    obs = Observation()
    upstream: dict[str, Identity] = {}
    for record in records:
        node = record.get("_node", "gateway")
        if node not in obs.nodes:
            obs.nodes.append(node)
        event = record.get("event") or ""
        if event == "upstream":  # the node's own identity: kept whatever --since says, it is said once at start
            ident = identity_of(record)
            upstream[node] = ident
            obs.identities[ident.key] = ident
            obs.auth.setdefault(ident.key, set()).add(auth_of(record, ident))
            continue
        if since is not None and _seconds(record.get("time")) < since:
            continue
        obs.records += 1
        decision, kind = record.get("decision") or "", record.get("kind") or ""
        obs.events[(event, decision, kind)] += 1
        ident = identity_of(record)
        if event == "connect" and decision == "allowed":
            obs.identities.setdefault(ident.key, ident)
            obs.auth.setdefault(ident.key, set()).add(auth_of(record, ident))
        if decision in REFUSED:
            stat = obs.refusals.setdefault((ident.key, event, kind), RefusalStat())
            stat.count += 1
            stat.reasons[record.get("reason") or kind] += 1
            stat.nodes.add(node)
            obs.identities.setdefault(ident.key, ident)
        for row in record.get("flows") or ():
            action, topic = row.get("action"), row.get("topic")
            if not action or not topic:
                obs.overflow += int(row.get("count") or 0)
                continue
            obs.identities.setdefault(ident.key, ident)
            _add(obs, (ident.key, "device-gateway", action, topic), row, node)
            gw = upstream.get(node)
            gw_key = gw.key if gw is not None else "gateway (upstream identity not logged)"
            if gw is None:
                obs.identities.setdefault(gw_key, Identity(gw_key, "upstream"))
                obs.auth.setdefault(gw_key, set()).add(("not logged", None))
            _add(obs, (gw_key, "gateway-broker", action, topic), row, node)
    return obs


def _add(obs: Observation, key: tuple, row: dict, node: str) -> None:
    stat = obs.flows.setdefault(key, FlowStat())
    stat.count += int(row.get("count") or 0)
    stat.bytes += int(row.get("bytes") or 0)
    stat.nodes.add(node)


def _seconds(text) -> float:
    if not isinstance(text, str):
        return 0.0
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def parse_since(text: str | None, now: float) -> float | None:
    """``--since``: an ISO 8601 time, or a duration back from now (90s, 15m, 2h, 1d)."""
    if text is None:
        return None
    m = _DURATION.match(text.strip())
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FlowsError(f"--since {text!r}: expected an ISO 8601 time (2026-12-02T07:00:00Z) or a duration "
                         "(90s, 15m, 2h, 1d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def read_logs(paths: Iterable[str | Path]) -> tuple[list[dict], int]:
    """Records of each access log, tagged with ``_node`` (the file's name); and how many lines were malformed."""
    records: list[dict] = []
    malformed = 0
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths]
    for path in paths:
        node = str(path) if names.count(path.name) > 1 else path.name
        try:
            with path.open("rb") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        record = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        malformed += 1
                        continue
                    if not isinstance(record, dict):
                        malformed += 1
                        continue
                    record["_node"] = node
                    records.append(record)
        except OSError as exc:
            raise FlowsError(f"{path}: cannot read the access log: {exc.strerror}") from None
    return records, malformed
