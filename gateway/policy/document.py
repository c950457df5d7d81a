"""Parse and validate AWS IoT policy documents into immutable PolicyDocument values."""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from gateway.policy.errors import PolicyError
from gateway.policy.wildcard import MatcherSet, compile_text, has_wildcard

MAX_POLICY_CHARS = 2048
LANGUAGE_VERSIONS = ("2012-10-17", "2008-10-17")

# Data-plane actions an AWS IoT policy can name, by service prefix.
ACTIONS: dict[str, tuple[str, ...]] = {
    "iot": (
        "Connect",
        "DeleteConnection",
        "Publish",
        "Receive",
        "RetainPublish",
        "Subscribe",
        "GetRetainedMessage",
        "ListRetainedMessages",
        "DeleteThingShadow",
        "GetThingShadow",
        "UpdateThingShadow",
        "ListNamedShadowsForThing",
        "DescribeJobExecution",
        "GetPendingJobExecutions",
        "StartNextPendingJobExecution",
        "UpdateJobExecution",
        "AssumeRoleWithCertificate",
    ),
    "iotjobsdata": (
        "DescribeJobExecution",
        "GetPendingJobExecutions",
        "StartNextPendingJobExecution",
        "UpdateJobExecution",
    ),
}
CANONICAL_ACTIONS: dict[str, str] = {
    f"{svc}:{name}".lower(): f"{svc}:{name}" for svc, names in ACTIONS.items() for name in names
}
# Resource types that may follow the account in an AWS IoT ARN.
RESOURCE_TYPES = frozenset(
    {
        "client",
        "topic",
        "topicfilter",
        "thing",
        "thinggroup",
        "thingtype",
        "rolealias",
        "cert",
        "cacert",
        "policy",
        "job",
        "jobtemplate",
        "rule",
        "destination",
        "provisioningtemplate",
        "domainconfiguration",
        "authorizer",
        "tunnel",
        "stream",
        "otaupdate",
        "billinggroup",
        "dimension",
        "fleetmetric",
    }
)
_PARTITION = re.compile(r"aws(-[a-z]+)*\Z")

STRING_OPS = (
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
)
ARN_OPS = ("ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike")
IP_OPS = ("IpAddress", "NotIpAddress")
NUMERIC_OPS = (
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
)
BASE_OPERATORS = frozenset(STRING_OPS + ARN_OPS + IP_OPS + NUMERIC_OPS + ("Bool", "Null"))
NEGATED_OPERATORS = frozenset(
    {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike", "NotIpAddress", "NumericNotEquals"}
)
QUALIFIERS = ("ForAnyValue", "ForAllValues")
UNSUPPORTED_IAM_OPERATORS = frozenset(
    {
        "DateEquals",
        "DateNotEquals",
        "DateLessThan",
        "DateLessThanEquals",
        "DateGreaterThan",
        "DateGreaterThanEquals",
        "BinaryEquals",
    }
)

# A token of a policy string: ("lit", text) policy text, wildcards active;
# ("var", name) a ${name} policy variable; ("esc", ch) one of ${*} ${?} ${$}.
Token = tuple[str, str]


def tokenize(text: str, variables: bool) -> tuple[Token, ...]:
    if not variables or "${" not in text:
        return (("lit", text),)
    out: list[Token] = []
    i = 0
    while True:
        j = text.find("${", i)
        if j < 0:
            break
        k = text.find("}", j + 2)
        if k < 0:
            break
        if j > i:
            out.append(("lit", text[i:j]))
        name = text[j + 2 : k]
        out.append(("esc", name) if name in ("*", "?", "$") else ("var", name))
        i = k + 1
    if i < len(text):
        out.append(("lit", text[i:]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ArnPattern:
    """A Resource/NotResource entry: ``*`` or the six components of an ARN, each tokenized."""

    raw: str
    star: bool
    components: tuple[tuple[Token, ...], ...] = ()

    @property
    def resource_part(self) -> tuple[Token, ...]:
        return self.components[5] if not self.star else (("lit", "*"),)

    @property
    def resource_type(self) -> str | None:
        """``topic``, ``topicfilter``, ``client``... when written literally; None for ``*`` or a pattern."""
        if self.star:
            return None
        part = self.components[5]
        if not part or part[0][0] != "lit":
            return None
        head = part[0][1].split("/", 1)[0]
        if "/" not in part[0][1] or has_wildcard(head):
            return None
        return head


@dataclass(frozen=True, slots=True)
class Clause:
    """One condition test: ``operator`` (as written) over one ``key`` with one or more values."""

    operator: str
    base: str
    qualifier: str | None
    if_exists: bool
    key: str
    key_norm: str
    values: tuple[tuple[Token, ...], ...]
    raw_values: tuple[str, ...]

    @property
    def negated(self) -> bool:
        return self.base in NEGATED_OPERATORS


@dataclass(frozen=True)
class Statement:
    index: int
    effect: str
    sid: str | None
    actions: tuple[str, ...] | None
    not_actions: tuple[str, ...] | None
    resources: tuple[ArnPattern, ...] | None
    not_resources: tuple[ArnPattern, ...] | None
    conditions: tuple[Clause, ...]
    _action_set: MatcherSet = field(repr=False, compare=False)

    def applies_to(self, action: str) -> bool:
        """Whether this statement's Action/NotAction covers ``action`` (compared case-insensitively)."""
        hit = self._action_set.match(action.lower())
        return hit if self.actions is not None else not hit

    @property
    def resource_patterns(self) -> tuple[ArnPattern, ...]:
        return self.resources if self.resources is not None else self.not_resources  # type: ignore[return-value]


@dataclass(frozen=True)
class PolicyDocument:
    """A validated policy version. ``text`` is the document as compact JSON."""

    name: str
    version: str
    language_version: str
    statements: tuple[Statement, ...]
    text: str
    policy_id: str | None = None

    @property
    def variables_enabled(self) -> bool:
        """Policy variables are substituted only in language version 2012-10-17 (IAM rule)."""
        return self.language_version == "2012-10-17"

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.text)

    def __hash__(self) -> int:
        return hash((self.name, self.version, self.text))


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _count_chars(text: str) -> int:
    return sum(1 for ch in text if not ch.isspace())


def parse_policy(document: str | bytes | Mapping[str, Any], name: str = "p", version: str = "1") -> PolicyDocument:
    """Validate ``document`` (JSON text or an already-decoded mapping) and return a PolicyDocument.

    Raises PolicyError naming the statement and field at fault.
    """
    name = str(name)
    version = str(version)

    def fail(where: str, problem: str) -> PolicyError:
        return PolicyError(where, problem, policy=name)

    if isinstance(document, (bytes, bytearray)):
        try:
            document = document.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise fail("document", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if isinstance(document, str):
        size = _count_chars(document)
        if size > MAX_POLICY_CHARS:
            raise fail("document", f"{size} characters excluding whitespace; AWS IoT allows at most {MAX_POLICY_CHARS}")
        try:
            doc = json.loads(document, object_pairs_hook=_no_duplicates)
        except _DuplicateKey as exc:
            raise fail("document", f"duplicate key {exc.args[0]!r}; each key may appear once per object") from None
        except ValueError as exc:
            msg = getattr(exc, "msg", str(exc))
            where = f" (line {exc.lineno} column {exc.colno})" if hasattr(exc, "lineno") else ""
            raise fail("document", f"not valid JSON: {msg}{where}") from None
    elif isinstance(document, Mapping):
        doc = document
    else:
        raise fail("document", f"expected JSON text or a mapping, got {type(document).__name__}")
    if not isinstance(doc, Mapping):
        raise fail("document", "must be a JSON object with Version and Statement")
    try:
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise fail("document", f"not JSON-serializable: {exc}") from None
    size = _count_chars(text)
    if size > MAX_POLICY_CHARS:
        raise fail("document", f"{size} characters excluding whitespace; AWS IoT allows at most {MAX_POLICY_CHARS}")

    for key in doc:
        if key not in ("Version", "Statement", "Id"):
            raise fail(str(key), "unknown top-level field; a policy has Version, Statement and optionally Id")
    if "Version" not in doc:
        raise fail("Version", 'missing; add "Version": "2012-10-17"')
    lang = doc["Version"]
    if lang not in LANGUAGE_VERSIONS:
        raise fail("Version", f'unsupported {lang!r}; use "2012-10-17" (or the legacy "2008-10-17")')
    policy_id = doc.get("Id")
    if policy_id is not None and not isinstance(policy_id, str):
        raise fail("Id", "must be a string")
    if "Statement" not in doc:
        raise fail("Statement", "missing; a policy needs at least one statement")
    raw_statements = doc["Statement"]
    if isinstance(raw_statements, Mapping):
        raw_statements = [raw_statements]
    if not isinstance(raw_statements, list) or not raw_statements:
        raise fail("Statement", "must be a statement object or a non-empty list of them")
    variables = lang == "2012-10-17"
    statements = tuple(_parse_statement(i, st, variables, fail) for i, st in enumerate(raw_statements))
    return PolicyDocument(
        name=name, version=version, language_version=lang, statements=statements, text=text, policy_id=policy_id
    )


_STATEMENT_FIELDS = ("Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition")


def _string_list(where: str, value: Any, fail, allow_empty: bool = False) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise fail(where, "must be a string or a list of strings")
    if not value and not allow_empty:
        raise fail(where, "must not be empty")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise fail(where, f"entry {i} must be a string, got {json.dumps(v)}")
    return list(value)


def _parse_statement(index: int, st: Any, variables: bool, fail) -> Statement:
    at = f"Statement[{index}]"
    if not isinstance(st, Mapping):
        raise fail(at, "must be an object with Effect, Action and Resource")
    for key in st:
        if key in ("Principal", "NotPrincipal"):
            raise fail(f"{at}.{key}", "not used in AWS IoT policies: the principal is the certificate the policy is attached to")
        if key not in _STATEMENT_FIELDS:
            raise fail(f"{at}.{key}", f"unknown field; a statement has {', '.join(_STATEMENT_FIELDS)}")
    sid = st.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise fail(f"{at}.Sid", "must be a string")
    if "Effect" not in st:
        raise fail(f"{at}.Effect", 'missing; use "Allow" or "Deny"')
    effect = st["Effect"]
    if effect not in ("Allow", "Deny"):
        raise fail(f"{at}.Effect", f'unknown effect {json.dumps(effect)}; use "Allow" or "Deny"')

    if "Action" in st and "NotAction" in st:
        raise fail(f"{at}.NotAction", "a statement has either Action or NotAction, not both")
    if "Action" not in st and "NotAction" not in st:
        raise fail(f"{at}.Action", "missing; a statement needs Action (or NotAction)")
    action_field = "Action" if "Action" in st else "NotAction"
    action_list = _string_list(f"{at}.{action_field}", st[action_field], fail)
    patterns = [_check_action(f"{at}.{action_field}", a, fail) for a in action_list]

    if "Resource" in st and "NotResource" in st:
        raise fail(f"{at}.NotResource", "a statement has either Resource or NotResource, not both")
    if "Resource" not in st and "NotResource" not in st:
        raise fail(f"{at}.Resource", 'missing; name the ARNs this statement covers, or "*"')
    resource_field = "Resource" if "Resource" in st else "NotResource"
    resource_list = _string_list(f"{at}.{resource_field}", st[resource_field], fail)
    arns = tuple(_parse_arn(f"{at}.{resource_field}", r, variables, fail) for r in resource_list)

    conditions = _parse_conditions(f"{at}.Condition", st.get("Condition"), variables, fail) if "Condition" in st else ()

    return Statement(
        index=index,
        effect=effect,
        sid=sid,
        actions=tuple(action_list) if action_field == "Action" else None,
        not_actions=tuple(action_list) if action_field == "NotAction" else None,
        resources=arns if resource_field == "Resource" else None,
        not_resources=arns if resource_field == "NotResource" else None,
        conditions=conditions,
        _action_set=MatcherSet(compile_text(p) for p in patterns),
    )


def _check_action(where: str, action: str, fail) -> str:
    """Validate one Action entry and return its lower-case matching pattern."""
    if action == "*":
        return "*"
    service, sep, name = action.partition(":")
    if not sep or not service or not name:
        hint = f'; did you mean "iot:{action}"?' if action.lower() in {n.lower() for n in ACTIONS["iot"]} else ""
        raise fail(where, f'"{action}" is not an action; actions are written service:Name, e.g. "iot:Publish"{hint}')
    if has_wildcard(service):
        raise fail(where, f'"{action}": wildcards are not allowed in the service prefix; write iot:...')
    if service.lower() not in ACTIONS:
        raise fail(where, f'"{action}" is not an AWS IoT action; AWS IoT policies grant iot:* (and iotjobsdata:*) actions only')
    lowered = action.lower()
    if not has_wildcard(name) and lowered not in CANONICAL_ACTIONS:
        close = difflib.get_close_matches(lowered, list(CANONICAL_ACTIONS), n=1, cutoff=0.75)
        hint = f'; did you mean "{CANONICAL_ACTIONS[close[0]]}"?' if close else ""
        raise fail(where, f'unknown action "{action}"{hint}')
    return lowered


def _split_components(tokens: tuple[Token, ...]) -> list[list[Token]]:
    """Split tokens into at most six ARN components on the first five literal colons."""
    comps: list[list[Token]] = [[]]
    for kind, value in tokens:
        if kind != "lit" or len(comps) == 6:
            comps[-1].append((kind, value))
            continue
        pieces = value.split(":", 6 - len(comps))
        for j, piece in enumerate(pieces):
            if j:
                comps.append([])
            if piece:
                comps[-1].append(("lit", piece))
    return comps


def _literal(tokens: list[Token]) -> str | None:
    if all(k == "lit" for k, _ in tokens):
        return "".join(v for _, v in tokens)
    return None


def _parse_arn(where: str, raw: str, variables: bool, fail) -> ArnPattern:
    if raw == "*":
        return ArnPattern(raw=raw, star=True)
    tokens = tokenize(raw, variables)
    comps = _split_components(tokens)
    if len(comps) < 6 or _literal(comps[0]) != "arn":
        raise fail(where, f'"{raw}" is not an ARN; use "*" or arn:aws:iot:<region>:<account>:<type>/<name>')
    partition = _literal(comps[1])
    if partition is None or not (_PARTITION.match(partition) or partition == "*"):
        raise fail(where, f'"{raw}" has partition {partition or "?"!r}; expected aws, aws-cn or aws-us-gov')
    service = _literal(comps[2])
    if service != "iot":
        raise fail(where, f'"{raw}" is an ARN of service {service or "?"!r}; AWS IoT policies cover arn:...:iot:... resources')
    region = _literal(comps[3])
    if region is not None and not re.fullmatch(r"[a-z0-9*?-]*", region):
        raise fail(where, f'"{raw}" has region {region!r}; expected e.g. us-east-1 or *')
    account = _literal(comps[4])
    if account is not None and not re.fullmatch(r"[A-Za-z0-9*?]*", account):
        raise fail(where, f'"{raw}" has account {account!r}; expected a 12-digit account id or *')
    part = comps[5]
    if not part:
        raise fail(where, f'"{raw}" names no resource after the account; add e.g. topic/<name>')
    if part[0][0] == "lit":
        first = part[0][1]
        rtype, slash, _ = first.partition("/")
        if not has_wildcard(rtype):
            if not slash:
                raise fail(where, f'"{raw}": resource {first!r} must be <type>/<name>, e.g. topic/{first}')
            if rtype not in RESOURCE_TYPES:
                close = difflib.get_close_matches(rtype, sorted(RESOURCE_TYPES), n=1)
                hint = f'; did you mean "{close[0]}"?' if close else ""
                raise fail(where, f'"{raw}": unknown resource type {rtype!r}{hint}')
    return ArnPattern(raw=raw, star=False, components=tuple(tuple(c) for c in comps))


def _condition_value(where: str, v: Any, fail) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    if isinstance(v, str):
        return v
    raise fail(where, f"condition values are strings, numbers or booleans, got {json.dumps(v)}")


def parse_operator(op: str) -> tuple[str, str | None, bool] | None:
    """Split ``ForAnyValue:StringLikeIfExists`` into (base, qualifier, if_exists); None if unknown."""
    qualifier = None
    rest = op
    if ":" in op:
        qualifier, _, rest = op.partition(":")
        if qualifier not in QUALIFIERS:
            return None
    if_exists = rest.endswith("IfExists")
    base = rest[: -len("IfExists")] if if_exists else rest
    if base not in BASE_OPERATORS or (base == "Null" and (if_exists or qualifier)):
        return None
    return base, qualifier, if_exists


def normalize_key(key: str) -> str:
    """Condition keys compare case-insensitively, except a thing attribute name inside [...]."""
    i = key.find("[")
    if i < 0:
        return key.lower()
    return key[:i].lower() + key[i:]


def _parse_conditions(where: str, cond: Any, variables: bool, fail) -> tuple[Clause, ...]:
    if not isinstance(cond, Mapping):
        raise fail(where, 'must be an object: {"<Operator>": {"<key>": "<value>" or [values]}}')
    clauses: list[Clause] = []
    for op, block in cond.items():
        parsed = parse_operator(op)
        if parsed is None:
            bare = op.rpartition(":")[2].removesuffix("IfExists")
            if bare in UNSUPPORTED_IAM_OPERATORS:
                raise fail(where, f'condition operator "{op}" is not supported: no AWS IoT condition key holds a date or binary value')
            close = difflib.get_close_matches(op.rpartition(":")[2], sorted(BASE_OPERATORS), n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise fail(where, f'unknown condition operator "{op}"{hint}')
        base, qualifier, if_exists = parsed
        if not isinstance(block, Mapping) or not block:
            raise fail(f"{where}.{op}", 'must be a non-empty object of "<key>": value(s)')
        for key, raw in block.items():
            at = f"{where}.{op}[{json.dumps(key)}]"
            if not isinstance(key, str) or not key:
                raise fail(at, "condition key must be a non-empty string")
            raw_list = raw if isinstance(raw, list) else [raw]
            values = [_condition_value(at, v, fail) for v in raw_list]
            for v in values:
                _check_value(at, base, v, fail)
            clauses.append(
                Clause(
                    operator=op,
                    base=base,
                    qualifier=qualifier,
                    if_exists=if_exists,
                    key=key,
                    key_norm=normalize_key(key),
                    values=tuple(tokenize(v, variables and base not in ("Bool", "Null")) for v in values),
                    raw_values=tuple(values),
                )
            )
    return tuple(clauses)


def _check_value(at: str, base: str, v: str, fail) -> None:
    if base in ("Bool", "Null"):
        if v.lower() not in ("true", "false"):
            raise fail(at, f'{base} takes "true" or "false", got {json.dumps(v)}')
    elif base in IP_OPS:
        if "${" in v:
            return
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise fail(at, f"{json.dumps(v)} is not an IP address or CIDR block (e.g. 203.0.113.0/24, 2001:db8::/32)") from None
    elif base in NUMERIC_OPS:
        if "${" in v:
            return
        try:
            float(v)
        except ValueError:
            raise fail(at, f"{json.dumps(v)} is not a number") from None
    elif base in ARN_OPS:
        if v != "*" and not v.startswith("arn:") and "${" not in v:
            raise fail(at, f'{json.dumps(v)} is not an ARN; ARN operators compare arn:partition:service:region:account:resource')


# --------------------------------------------------------------------------------------------- requests

# The resource type an action is decided on (AWS IoT's data-plane actions).
ACTION_RESOURCE_TYPES = {
    "iot:connect": "client", "iot:deleteconnection": "client",
    "iot:publish": "topic", "iot:receive": "topic", "iot:retainpublish": "topic",
    "iot:getretainedmessage": "topic", "iot:listretainedmessages": "topic",
    "iot:subscribe": "topicfilter",
    "iot:deletethingshadow": "thing", "iot:getthingshadow": "thing", "iot:updatethingshadow": "thing",
    "iot:listnamedshadowsforthing": "thing",
    "iot:describejobexecution": "thing", "iot:getpendingjobexecutions": "thing",
    "iot:startnextpendingjobexecution": "thing", "iot:updatejobexecution": "thing",
    "iotjobsdata:describejobexecution": "thing", "iotjobsdata:getpendingjobexecutions": "thing",
    "iotjobsdata:startnextpendingjobexecution": "thing", "iotjobsdata:updatejobexecution": "thing",
    "iot:assumerolewithcertificate": "rolealias",
}


def check_request(action: str, resource: str) -> tuple[str, str]:
    """Validate one authorization question (``policy test``) as ``parse_policy`` validates a statement: the
    action must be a known AWS IoT action, and the resource ``<type>/<name>`` (or a full ARN) of the type that
    action is decided on. Returns the canonical action and the resource; PolicyError says what to write."""

    def fail(where: str, problem: str) -> PolicyError:
        return PolicyError(where, problem)

    if action == "*" or has_wildcard(action):
        raise fail("--action", f'"{action}": a request names one action, e.g. "iot:Publish"')
    lowered = _check_action("--action", action, fail)
    canonical = CANONICAL_ACTIONS[lowered]
    wanted = ACTION_RESOURCE_TYPES.get(lowered)
    if resource.startswith("arn:"):
        pattern = _parse_arn("--resource", resource, False, fail)
        part = _literal(list(pattern.components[5])) or ""
        rtype = part.partition("/")[0]
    else:
        rtype, slash, name = resource.partition("/")
        if not slash or rtype not in RESOURCE_TYPES:
            hint = f'; did you mean "{wanted}/{resource}"?' if wanted else ""
            close = difflib.get_close_matches(rtype, sorted(RESOURCE_TYPES), n=1) if slash else []
            if close and slash:
                hint = f'; did you mean "{close[0]}/{name}"?'
            raise fail("--resource", f'"{resource}" is not <type>/<name> of an AWS IoT resource (client/ID, '
                                     f"topic/NAME, topicfilter/FILTER, thing/NAME){hint}")
        if not name:
            raise fail("--resource", f'"{resource}" names no {rtype}')
    if wanted and rtype != wanted:
        name = resource.partition("/")[2] if not resource.startswith("arn:") else ""
        hint = f'; did you mean "{wanted}/{name}"?' if name else ""
        raise fail("--resource", f"{canonical} is decided on a {wanted} resource, not on {rtype} "
                                 f"(\"{resource}\"){hint}")
    return canonical, resource
