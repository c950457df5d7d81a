"""Findings on a policy document in the spirit of Device Defender's IOT_POLICY_OVERLY_PERMISSIVE audit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from gateway.policy.document import CANONICAL_ACTIONS, ArnPattern, PolicyDocument, Statement, normalize_key, parse_policy
from gateway.policy.engine import substitute
from gateway.policy.variables import Scope, is_known_key
from gateway.policy.wildcard import compile_pattern, compile_text

# An improbable name: a pattern matching it matches any name at that level.
_PROBE = "\x00probe\x00"

_EXPECTED_TYPE = {
    "iot:connect": "client",
    "iot:deleteconnection": "client",
    "iot:publish": "topic",
    "iot:receive": "topic",
    "iot:retainpublish": "topic",
    "iot:getretainedmessage": "topic",
    "iot:subscribe": "topicfilter",
    "iot:assumerolewithcertificate": "rolealias",
    "iot:listretainedmessages": "*",
    "iot:listnamedshadowsforthing": "*",
}
_THING_ACTIONS = (
    "iot:deletethingshadow",
    "iot:getthingshadow",
    "iot:updatethingshadow",
    "iot:describejobexecution",
    "iot:getpendingjobexecutions",
    "iot:startnextpendingjobexecution",
    "iot:updatejobexecution",
    "iotjobsdata:describejobexecution",
    "iotjobsdata:getpendingjobexecutions",
    "iotjobsdata:startnextpendingjobexecution",
    "iotjobsdata:updatejobexecution",
)
for _a in _THING_ACTIONS:
    _EXPECTED_TYPE[_a] = "thing"

_THING_VARIABLE_PREFIX = "iot:connection.thing."


@dataclass(frozen=True, slots=True)
class Finding:
    """One lint result. ``statement_index`` is None for document-level findings."""

    statement_index: int | None
    code: str
    message: str
    severity: str = "MEDIUM"


_NO_VALUES = Scope({}, {}, None, None)


def _part_matcher(arn: ArnPattern):
    if arn.star:
        return compile_pattern([("*", True)])
    return compile_pattern(substitute(arn.resource_part, _NO_VALUES))


def _variables(arn: ArnPattern) -> list[str]:
    return [normalize_key(v) for comp in arn.components for k, v in comp if k == "var"]


def _has_bool_attached(st: Statement) -> bool:
    for c in st.conditions:
        if c.base == "Bool" and c.key_norm == "iot:connection.thing.isattached" and "true" in (v.lower() for v in c.raw_values):
            return True
    return False


def _name_has_policy_wildcard(arn: ArnPattern, type_prefix: str) -> bool:
    """Whether the name after ``type_prefix`` has a ``*``/``?`` written in the policy."""
    if arn.star:
        return True
    text = ""
    for kind, value in arn.resource_part:
        if kind == "lit":
            text += value
        else:
            text += "\x01"
    if not text.startswith(type_prefix):
        rtype = text.split("/", 1)[0]
        return "*" in rtype or "?" in rtype
    name = text[len(type_prefix) :]
    return "*" in name or "?" in name


def overly_permissive(action: str, matches: Callable[[str], bool]) -> list[tuple[str, str, str]]:
    """The one notion of an over-permissive topic grant, shared by ``policy lint`` and ``flows check``.

    ``matches(resource)`` says whether the grant covers a resource (``topic/...`` or ``topicfilter/...``, with
    ``+``/``#`` as written in a filter). Returns (code, text, severity) for each finding: a grant of every topic,
    or of the reserved topics of every thing.
    """
    action = action.lower()
    probe = _PROBE
    if action == "iot:subscribe":
        if matches("topicfilter/#") or matches("topicfilter/" + probe):
            return [("SUBSCRIBE_ALL_TOPICS", 'allows subscribing to every topic ("#" or any filter)', "HIGH")]
        if matches("topicfilter/$aws/things/+/shadow/update") or matches(f"topicfilter/$aws/things/{probe}/shadow/update"):
            return [("SUBSCRIBE_ANY_THING", "allows subscribing to reserved topics of every thing", "HIGH")]
        return []
    if action in ("iot:publish", "iot:receive"):
        if matches("topic/" + probe):
            code = "PUBLISH_ALL_TOPICS" if action == "iot:publish" else "RECEIVE_ALL_TOPICS"
            return [(code, f"allows {action} on every topic", "HIGH" if action == "iot:publish" else "LOW")]
        if action == "iot:publish" and matches(f"topic/$aws/things/{probe}/shadow/update"):
            return [("PUBLISH_ANY_THING", "allows publishing to reserved topics of every thing", "HIGH")]
    return []


def lint(document: PolicyDocument | str | Mapping[str, Any]) -> list[Finding]:
    doc = document if isinstance(document, PolicyDocument) else parse_policy(document)
    findings: list[Finding] = []
    if not doc.variables_enabled and "${" in doc.text:
        findings.append(
            Finding(None, "VARIABLES_NEED_2012_10_17", 'policy variables are only substituted with "Version": "2012-10-17"', "HIGH")
        )
    for st in doc.statements:
        findings.extend(_lint_statement(st))
    return findings


def _lint_statement(st: Statement) -> list[Finding]:
    out: list[Finding] = []
    i = st.index

    def add(code: str, message: str, severity: str = "MEDIUM") -> None:
        out.append(Finding(i, code, message, severity))

    covered = [a for a in CANONICAL_ACTIONS if st.applies_to(a)]
    patterns = st.actions if st.actions is not None else st.not_actions
    for p in patterns or ():
        if ("*" in p or "?" in p) and p != "*":
            if not any(compile_text(p.lower()).match(a) for a in CANONICAL_ACTIONS):
                add("ACTION_MATCHES_NOTHING", f'action pattern "{p}" matches no AWS IoT action', "LOW")

    for arn in st.resource_patterns:
        for name in _variables(arn):
            if not is_known_key(name):
                add("UNKNOWN_VARIABLE", f'"{arn.raw}": ${{{name}}} is not an AWS IoT policy variable; it never resolves and stays literal')
    for clause in st.conditions:
        if not is_known_key(clause.key_norm):
            add("UNKNOWN_CONDITION_KEY", f'condition key "{clause.key}" is not an AWS IoT key; it is always absent', "LOW")

    if st.effect == "Deny":
        uses_thing = any(n.startswith(_THING_VARIABLE_PREFIX) for arn in st.resource_patterns for n in _variables(arn))
        if uses_thing:
            add(
                "DENY_WITH_THING_VARIABLE",
                "a Deny whose resource uses a thing variable does not apply when the client id is not a thing attached "
                "to the certificate; the variable stays unresolved and the Deny matches nothing",
            )
        return out

    if st.not_actions is not None:
        add("ALLOW_WITH_NOT_ACTION", "Allow with NotAction grants every other action, including ones added later", "HIGH")
    if st.not_resources is not None:
        add("ALLOW_WITH_NOT_RESOURCE", "Allow with NotResource grants every other resource", "HIGH")

    all_iot = all(st.applies_to(a) for a in CANONICAL_ACTIONS if a.startswith("iot:"))
    any_resource = any(arn.star or _part_matcher(arn).match(_PROBE) for arn in st.resource_patterns)
    if st.resources is not None and all_iot and any_resource:
        add("ALL_ACTIONS_ALL_RESOURCES", "allows every AWS IoT action on every resource", "CRITICAL")
        return out

    resources = st.resources or ()
    attached = _has_bool_attached(st)
    if "iot:connect" in covered and not attached:
        for arn in resources:
            vars_ = _variables(arn)
            if _name_has_policy_wildcard(arn, "client/") and not any(
                v.startswith(_THING_VARIABLE_PREFIX) or v.startswith("iot:certificate") for v in vars_
            ):
                add("CONNECT_ANY_CLIENT", f'"{arn.raw}" lets any client id connect; use client/${{iot:Connection.Thing.ThingName}}', "HIGH")
            elif not arn.star and [(k, v.lower()) for k, v in arn.resource_part] == [("lit", "client/"), ("var", "iot:clientid")]:
                add(
                    "CONNECT_CLIENTID_VARIABLE",
                    f'"{arn.raw}" matches every client id; add Bool iot:Connection.Thing.IsAttached "true" or use the thing name',
                    "HIGH",
                )
    if "iot:subscribe" in covered:
        for arn in resources:
            m = _part_matcher(arn)
            for code, text, severity in overly_permissive("iot:subscribe", lambda r, m=m: bool(m.match(r))):
                add(code, f'"{arn.raw}" {text}', severity)
            if "iot:clientid" in _variables(arn) and (arn.resource_type in (None, "topicfilter")):
                add(
                    "TOPICFILTER_CLIENTID_VARIABLE",
                    f'"{arn.raw}": a client connecting with id "+" or "#" subscribes to a wildcard filter; restrict iot:Connect',
                    "LOW",
                )
    for action in ("iot:publish", "iot:receive"):
        if action not in covered:
            continue
        for arn in resources:
            m = _part_matcher(arn)
            for found, text, severity in overly_permissive(action, lambda r, m=m: bool(m.match(r))):
                add(found, f'"{arn.raw}" {text}', severity)
    if any(a in covered for a in _THING_ACTIONS):
        for arn in resources:
            if _part_matcher(arn).match("thing/" + _PROBE):
                add("THING_ANY", f'"{arn.raw}" allows shadow and job actions on every thing', "HIGH")

    if st.actions is not None and not any("*" in a or "?" in a for a in st.actions):
        expected = {_EXPECTED_TYPE.get(a.lower()) for a in st.actions}
        for arn in resources:
            rtype = arn.resource_type
            if rtype is not None and rtype not in expected and None not in expected:
                names = ", ".join(st.actions)
                add(
                    "RESOURCE_TYPE_MISMATCH",
                    f'"{arn.raw}" is a {rtype} resource; {names} checks {" or ".join(sorted(e for e in expected if e))} resources, so it never matches',
                )
            if rtype == "topic":
                literal = "".join(v for k, v in arn.resource_part if k == "lit")
                if "+" in literal or "#" in literal:
                    add("MQTT_WILDCARD_IS_LITERAL", f'"{arn.raw}": "+" and "#" are literal characters in policies; use "*"', "LOW")
    return out
