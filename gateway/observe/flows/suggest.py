"""Least-privilege flows and AWS IoT policies from observed traffic, for a person to review.

What IAM Access Analyzer's policy generation and Device Defender's audits do for their worlds: every allowed flow
seen is kept, nothing else is granted. A topic level equal to the connection's thing name becomes ``{thing}``
(``${iot:Connection.Thing.ThingName}`` in the policy); things whose generalised flows are the same share one
principal, named by their common name prefix. Each suggested policy passes ``policy lint``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections import defaultdict

from gateway.observe.flows.log import Observation, auth_text
from gateway.policy.lint import lint

_DIRS = {"iot:Publish": "publish", "iot:RetainPublish": "publish", "iot:Subscribe": "subscribe",
         "iot:Receive": "receive"}
THING_VAR = "${iot:Connection.Thing.ThingName}"


def _generalise(topic: str, thing: str | None, things: set[str]) -> str:
    """A level naming the connection's own thing becomes {thing}; one naming another thing, '+'."""
    return "/".join("{thing}" if thing and level == thing else "+" if level in things else level
                    for level in topic.split("/"))


def suggest(obs: Observation) -> tuple[list[dict], dict[str, dict]]:
    """(principals as flows-file tables, {policy name: AWS IoT policy document})."""
    per_identity: dict[str, set[tuple[str, str]]] = defaultdict(set)
    things = {i.thing for i in obs.identities.values() if i.thing}
    upstream: set[tuple[str, str]] = set()
    for (key, hop, action, topic), _ in obs.flows.items():
        ident = obs.identities[key]
        if hop == "gateway-broker":
            levels = ["+" if level in things else level for level in topic.split("/")]
            upstream.add((_DIRS[action], "/".join(levels)))
        else:
            per_identity[key].add((_DIRS[action], _generalise(topic, ident.thing, things)))
    for key, ident in obs.identities.items():  # connected and sent nothing: a principal that may only connect
        if key in obs.auth and ident.method != "upstream":
            per_identity.setdefault(key, set())
    groups: dict[tuple, list[str]] = defaultdict(list)
    for key, flows in per_identity.items():
        ident = obs.identities[key]
        groups[(ident.method, ident.authorizer, frozenset(flows))].append(key)
    principals: list[dict] = []
    policies: dict[str, dict] = {}
    for (method, authorizer, flows), keys in sorted(groups.items(), key=lambda kv: sorted(kv[1])[0]):
        idents = [obs.identities[k] for k in sorted(keys)]
        table: dict = {}
        if method == "mtls" and all(i.thing for i in idents):
            names = [i.thing for i in idents]
            prefix = os.path.commonprefix(names)
            others = things - set(names)
            if len(names) == 1:
                patterns, base = names, names[0]
            elif len(prefix) >= 3 and not any(fnmatch.fnmatchcase(o, prefix + "*") for o in others):
                patterns, base = [prefix + "*"], prefix.rstrip("-_:")
            else:  # no pattern names this group alone: the names themselves
                patterns, base = sorted(names), f"group-{len(principals) + 1}"
            table.update(name=base, kind="thing", things=patterns)
        elif method == "custom_authorizer":
            table.update(name=f"authorizer-{authorizer}", kind="service", authorizers=[authorizer])
        elif method == "sigv4":
            table.update(name=f"keys-{idents[0].access_key}", kind="service",
                         access_keys=sorted(i.access_key for i in idents))
        else:
            table.update(name=f"certificates-{len(principals) + 1}", kind="thing",
                         client_ids=sorted(i.client_id for i in idents if i.client_id))
        while any(p["name"] == table["name"] for p in principals):
            table["name"] += "-2"
        table["auth"] = sorted({a[0] for k in keys for a in obs.auth.get(k, ()) if a[0] != "not logged"}) or ["mtls"]
        cas = sorted({a[1] for k in keys for a in obs.auth.get(k, ()) if a[0] == "mtls" and a[1]})
        if cas:
            table["ca"] = [c[:16] if len(c) == 64 else c for c in cas]
        for direction in ("publish", "subscribe", "receive"):
            topics = sorted(t for d, t in flows if d == direction)
            if topics:
                table[direction] = topics
        table["seen"] = f"{len(keys)} identit{'y' if len(keys) == 1 else 'ies'}: " + ", ".join(
            i.key for i in idents[:5]) + (" ..." if len(idents) > 5 else "")
        principals.append(table)
        if method == "mtls":
            policies[f"{table['name']}-least-privilege"] = policy_for(table)
    if upstream:
        gw = {"name": "gateway", "kind": "upstream", "hop": "gateway-broker"}
        gw_keys = [k for k, i in obs.identities.items() if i.method == "upstream"]
        gw["auth"] = sorted({a[0] for k in gw_keys for a in obs.auth.get(k, ()) if a[0] != "not logged"}) or ["mtls"]
        for direction in ("publish", "subscribe", "receive"):
            topics = sorted(t for d, t in upstream if d == direction)
            if topics:
                gw[direction] = topics
        principals.append(gw)
    return principals, policies


def _policy_topic(topic: str, kind: str) -> str:
    """A flows-file topic as a policy resource: in topic resources MQTT's '+' is written '*'."""
    levels = [THING_VAR if level == "{thing}" else level for level in topic.split("/")]
    if kind == "topic":
        levels = ["*" if level in ("+", "#") else level for level in levels]
    return "/".join(levels)


def policy_for(table: dict) -> dict:
    statements = [{"Effect": "Allow", "Action": "iot:Connect",
                   "Resource": f"arn:aws:iot:*:*:client/{THING_VAR}"}]
    for direction, action, kind in (("publish", "iot:Publish", "topic"), ("receive", "iot:Receive", "topic"),
                                    ("subscribe", "iot:Subscribe", "topicfilter")):
        topics = table.get(direction)
        if topics:
            statements.append({"Effect": "Allow", "Action": action,
                               "Resource": [f"arn:aws:iot:*:*:{kind}/{_policy_topic(t, kind)}" for t in topics]})
    return {"Version": "2012-10-17", "Statement": statements}


def lint_findings(policies: dict[str, dict]) -> dict[str, list[str]]:
    return {name: [f"{f.code}: {f.message}" for f in lint(json.dumps(doc))] for name, doc in policies.items()}


def to_toml(principals: list[dict], header: str = "") -> str:
    out = [f"# {line}" for line in header.splitlines()] + ([""] if header else [])
    for table in principals:
        out.append("[[principals]]")
        for key, value in table.items():
            if key == "seen":
                continue
            out.append(f"{key} = {json.dumps(value)}")
        if "seen" in table:
            out.append(f"# seen: {table['seen']}")
        out.append("")
    return "\n".join(out)


__all__ = ["auth_text", "lint_findings", "policy_for", "suggest", "to_toml"]
