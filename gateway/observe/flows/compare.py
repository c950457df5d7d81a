"""The comparison, a pure core: declared flows + an observation -> what matches, what does not, and why.

Findings:
- an observed flow that no declared principal allows (an undeclared principal, or a topic outside its
  declared ones): an unintended channel;
- an identity that authenticated otherwise than its principal declares (method or CA);
- a declared flow never seen;
- refused attempts grouped by identity and reason: unauthorized access attempts;
- declared topics that are over-permissive, by the same rule as ``policy lint``.
Exit status: 1 when there is an unintended channel or an authentication mismatch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from gateway.observe.flows.log import Identity, Observation, auth_text
from gateway.observe.flows.model import ACTIONS, Declared, Principal, filter_covers, substitute, topic_matches
from gateway.policy.lint import overly_permissive

_DIRECTION = {"iot:Publish": "publish", "iot:RetainPublish": "publish", "iot:Subscribe": "subscribe",
              "iot:Receive": "receive"}
_SENTINEL = "\x00thing\x00"


@dataclasses.dataclass(frozen=True, slots=True)
class FlowRow:
    identity: str
    principal: str | None
    hop: str
    direction: str  # publish | subscribe | receive
    topic: str
    count: int
    bytes: int
    auth: str
    status: str  # declared | undeclared topic | undeclared principal
    nodes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class AuthMismatch:
    identity: str
    principal: str
    observed: str
    declared: str


@dataclasses.dataclass(frozen=True, slots=True)
class NeverSeen:
    principal: str
    hop: str
    direction: str
    topic: str


@dataclasses.dataclass(frozen=True, slots=True)
class RefusalRow:
    identity: str
    principal: str | None
    event: str
    kind: str
    count: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Permissive:
    principal: str
    direction: str
    topic: str
    code: str
    text: str
    severity: str


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    flows: tuple[FlowRow, ...]
    auth_mismatches: tuple[AuthMismatch, ...]
    never_seen: tuple[NeverSeen, ...]
    refusals: tuple[RefusalRow, ...]
    permissive: tuple[Permissive, ...]
    principals: dict[str, str | None]  # observed identity -> declared principal (None: undeclared)

    @property
    def undeclared(self) -> tuple[FlowRow, ...]:
        return tuple(f for f in self.flows if f.status != "declared")

    @property
    def passed(self) -> bool:
        return not self.undeclared and not self.auth_mismatches

    def to_json(self) -> dict:
        def rows(items):
            return [dataclasses.asdict(i) for i in items]
        return {"result": "PASS" if self.passed else "FAIL", "flows": rows(self.flows),
                "undeclared": rows(self.undeclared), "auth_mismatches": rows(self.auth_mismatches),
                "never_seen": rows(self.never_seen), "refused": rows(self.refusals),
                "over_permissive": rows(self.permissive), "principals": dict(sorted(self.principals.items()))}


def principal_for(declared: Declared, identity: Identity, thing_types: Mapping[str, str | None]) -> Principal | None:
    thing_type = thing_types.get(identity.thing) if identity.thing else None
    return next((p for p in declared.principals if p.matches(identity, thing_type)), None)


def allows(principal: Principal, identity: Identity, action: str, topic: str) -> bool:
    for flt in principal.topics(action):
        concrete = substitute(flt, identity.thing, identity.client_id)
        if concrete is None:
            continue
        if action == "iot:Subscribe" and filter_covers(concrete, topic):
            return True
        if action != "iot:Subscribe" and topic_matches(concrete, topic):
            return True
    return False


def _auth_ok(principal: Principal, auth: tuple[str, str | None], ca_aliases: Mapping[str, set[str]]) -> bool:
    method, detail = auth
    if method not in principal.auth:
        return False
    if method != "mtls" or not principal.ca:
        return True
    if detail is None:
        return False
    for entry in principal.ca:
        for value in ca_aliases.get(entry, {entry}):
            if detail == value or (len(value) >= 8 and detail.startswith(value)):
                return True
    return False


def compare(declared: Declared, obs: Observation, *, thing_types: Mapping[str, str | None] | None = None,
            ca_aliases: Mapping[str, set[str]] | None = None) -> Comparison:
    thing_types = thing_types or {}
    ca_aliases = ca_aliases or {}
    principals: dict[str, Principal | None] = {key: principal_for(declared, ident, thing_types)
                                                for key, ident in obs.identities.items()}
    flows = []
    seen: set[tuple[str, str, str]] = set()  # (principal, action group, declared filter)
    for (key, hop, action, topic), stat in sorted(obs.flows.items()):
        ident = obs.identities[key]
        principal = principals.get(key)
        auth = ", ".join(sorted(auth_text(a) for a in obs.auth.get(key, ()))) or "not logged"
        if principal is None:
            status = "undeclared principal"
        elif principal.hop != hop:
            status = "undeclared hop"
        elif allows(principal, ident, action, topic):
            status = "declared"
            for flt in principal.topics(action):
                if allows(dataclasses.replace(principal, publish=(flt,), subscribe=(flt,), receive=(flt,)),
                          ident, action, topic):
                    seen.add((principal.name, _DIRECTION[action], flt))
        else:
            status = "undeclared topic"
        flows.append(FlowRow(key, principal.name if principal else None, hop, _DIRECTION.get(action, action), topic,
                             stat.count, stat.bytes, auth, status, tuple(sorted(stat.nodes))))
    flowing = {f.identity for f in flows}
    for key, ident in sorted(obs.identities.items()):
        # an identity that got in and matches no principal is an unintended channel even if it sent nothing
        if principals.get(key) is None and key in obs.auth and key not in flowing and ident.method != "upstream":
            auth = ", ".join(sorted(auth_text(a) for a in obs.auth[key]))
            flows.append(FlowRow(key, None, "device-gateway", "connect", "", 1, 0, auth, "undeclared principal"))
    mismatches = []
    for key, auths in sorted(obs.auth.items()):
        principal = principals.get(key)
        if principal is None:
            continue
        for auth in sorted(auths, key=str):
            if not _auth_ok(principal, auth, ca_aliases):
                want = " or ".join(principal.auth) + (f", CA {' or '.join(principal.ca)}" if principal.ca else "")
                mismatches.append(AuthMismatch(key, principal.name, auth_text(auth), want))
    never = []
    for p in declared.principals:
        for direction in ACTIONS:
            for flt in getattr(p, direction):
                if (p.name, direction, flt) not in seen:
                    never.append(NeverSeen(p.name, p.hop, direction, flt))
    refusals = []
    for (key, event, kind), stat in sorted(obs.refusals.items(), key=lambda kv: (-kv[1].count, kv[0])):
        principal = principals.get(key)
        refusals.append(RefusalRow(key, principal.name if principal else None, event, kind, stat.count,
                                   stat.reasons.most_common(1)[0][0]))
    return Comparison(tuple(flows), tuple(mismatches), tuple(never), tuple(refusals), permissive(declared),
                      {k: (p.name if p else None) for k, p in principals.items()})


def permissive(declared: Declared) -> tuple[Permissive, ...]:
    """Declared topics that grant too much, by policy lint's rule (``overly_permissive``)."""
    out = []
    for p in declared.principals:
        for direction, action in ACTIONS.items():
            for flt in getattr(p, direction):
                concrete = flt.replace("{thing}", _SENTINEL).replace("{client_id}", _SENTINEL)

                def matches(resource: str, concrete=concrete, action=action) -> bool:
                    kind, _, name = resource.partition("/")
                    if kind == "topicfilter":
                        return filter_covers(concrete, name)
                    return topic_matches(concrete, name)

                for code, text, severity in overly_permissive(action, matches):
                    out.append(Permissive(p.name, direction, flt, code, f'"{flt}" {text}', severity))
    return tuple(out)
