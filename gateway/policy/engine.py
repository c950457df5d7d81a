"""Compile policies for one identity and decide requests fast.

compile_policies() binds the attached policy documents to an identity, a region and an account.
Evaluation then works in two steps:

1. a *context* per (client id, source address) - only the parts the policies depend on - where every
   policy variable is substituted and every condition that does not depend on the request itself is
   decided once; statements whose conditions fail drop out, the rest keep one compiled matcher per
   statement (exact set, prefix tuple, globs) on the resource part after ``arn:...:<account>:``;
2. a *table* per (context, action) listing the Deny and Allow statements that cover the action.

A request then costs one resource prefix test, one matcher per candidate statement and one dict
lookup for the (shared) Decision object.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from gateway.policy.conditions import ArnMatcher, CompiledClause, EvaluationError
from gateway.policy.document import PolicyDocument, Statement, Token, normalize_key, parse_policy
from gateway.policy.model import DEFAULT_DENY, Decision, DecidedBy, Identity, Request
from gateway.policy.variables import (
    REQUEST_KEYS,
    SOURCE_KEYS,
    Scope,
    certificate_keys,
    depends_on_client,
)
from gateway.policy.wildcard import ANY, MatcherSet, compile_pattern

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"
MAX_CONTEXTS = 64
MAX_ACTION_TABLES = 64

_REGION = re.compile(r"[a-z0-9-]+\Z")
_ACCOUNT = re.compile(r"[A-Za-z0-9]+\Z")


def substitute(tokens: Sequence[Token], scope: Scope) -> list[tuple[str, bool]]:
    """Resolve variables: policy text stays wild; values, escapes and unresolved ``${...}`` are literal."""
    segments: list[tuple[str, bool]] = []
    for kind, value in tokens:
        if kind == "lit":
            segments.append((value, True))
        elif kind == "esc":
            segments.append((value, False))
        else:
            resolved = scope.variable(normalize_key(value))
            segments.append((resolved, False) if resolved is not None else ("${" + value + "}", False))
    return segments


class _Compiled:
    """One statement bound to a context."""

    __slots__ = ("sid", "effect", "statement", "negate", "fast", "slow", "residual", "error", "row")

    def __init__(self, sid: int, statement: Statement) -> None:
        self.sid = sid
        self.statement = statement
        self.effect = statement.effect
        self.negate = statement.resources is None
        self.fast = MatcherSet(())
        self.slow: tuple[ArnMatcher, ...] = ()
        self.residual: tuple[CompiledClause, ...] = ()
        self.error: str | None = None
        self.row: tuple = ()


def _residual_condition(clauses: tuple[CompiledClause, ...], topic_head: str):
    def condition(req: Request) -> bool:
        connect = isinstance(req.action, str) and req.action.lower() == "iot:connect"
        for cc in clauses:
            if cc.clause.key_norm == "iot:connectattributes":
                values = tuple(str(a) for a in req.connect_attributes) if connect else None
            else:
                topic = req.last_will_topic
                values = (topic_head + topic,) if connect and isinstance(topic, str) else None
            if not cc.evaluate(values):
                return False
        return True

    return condition


class _Table:
    """The statements covering one action in one context."""

    __slots__ = ("denies", "allows", "errored", "memo", "owner", "head", "hlen", "statements")

    def __init__(self, owner: "CompiledPolicies", statements: list[_Compiled]) -> None:
        self.owner = owner
        self.statements = tuple(statements)
        self.head = owner.arn_head
        self.hlen = len(owner.arn_head)
        self.denies = tuple(s.row for s in statements if s.error is None and s.effect == "Deny")
        self.allows = tuple(s.row for s in statements if s.error is None and s.effect == "Allow")
        self.errored = tuple(s for s in statements if s.error is not None)
        self.memo: dict[tuple[int, ...], Decision] = {}

    def evaluate(self, req: Request) -> Decision:
        res = req.resource
        if res.startswith("arn:"):
            if not res.startswith(self.head):
                return self._slow(req, res)
            part = res[self.hlen :]
        elif res == "*":
            return self._slow(req, res)
        else:
            part = res
        if self.errored:
            return self._slow(req, self.head + part)
        hits = _matching(self.denies, part, req)
        if not hits:
            hits = _matching(self.allows, part, req)
            if not hits:
                return DEFAULT_DENY
            decision = self.memo.get(hits)
            if decision is None:
                decision = self._remember(hits, True)
            return decision
        decision = self.memo.get(hits)
        if decision is None:
            decision = self._remember(hits, False)
        return decision

    def _remember(self, hits: tuple[int, ...], allowed: bool) -> Decision:
        decided = self.owner.decided_by
        decision = Decision(allowed, tuple(decided[i] for i in hits))
        if len(self.memo) < 256:
            self.memo[hits] = decision
        return decision

    def _slow(self, req: Request, arn: str) -> Decision:
        """Full-ARN evaluation: other region/account/partition, ``*``, or statements with errors."""
        deny: list[int] = []
        allow: list[int] = []
        errors: list[str] = []

        def covers(s: _Compiled) -> bool:
            m = any(a.match(arn) for a in s.slow)
            return m is not s.negate

        for s in self.statements:
            if not covers(s):
                continue
            if s.error is not None:
                errors.append(s.error)
                if s.effect == "Deny":
                    deny.append(s.sid)
                continue
            cond = s.row[6]
            if cond is not None and not cond(req):
                continue
            (deny if s.effect == "Deny" else allow).append(s.sid)
        decided = self.owner.decided_by
        if deny:
            return Decision(False, tuple(decided[i] for i in sorted(deny)), tuple(errors))
        if allow:
            return Decision(True, tuple(decided[i] for i in sorted(allow)), tuple(errors))
        return Decision(False, (), tuple(errors)) if errors else DEFAULT_DENY


class _Context:
    __slots__ = ("client_id", "source_ip", "statements", "tables")

    def __init__(self, client_id, source_ip, statements: list[_Compiled]) -> None:
        self.client_id = client_id
        self.source_ip = source_ip
        self.statements = statements
        self.tables: dict[str, _Table] = {}


class CompiledPolicies:
    """The policies attached to one certificate, bound to its identity, a region and an account."""

    def __init__(
        self,
        policies: Sequence[PolicyDocument],
        identity: Identity,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
        partition: str = "aws",
    ) -> None:
        if not _REGION.match(region or ""):
            raise ValueError(f"region {region!r} must look like us-east-1")
        if not _ACCOUNT.match(account or ""):
            raise ValueError(f"account {account!r} must be an account id like 123456789012")
        if not re.fullmatch(r"aws(-[a-z]+)*", partition or ""):
            raise ValueError(f"partition {partition!r} must be aws, aws-cn or aws-us-gov")
        self.policies = tuple(policies)
        self.identity = identity
        self.region = region
        self.account = account
        self.partition = partition
        self.arn_head = f"arn:{partition}:iot:{region}:{account}:"
        self._head_parts = ("arn", partition, "iot", region, account)
        self._cert = certificate_keys(identity)
        self._entries: list[tuple[PolicyDocument, Statement]] = []
        decided: list[DecidedBy] = []
        uses_client = uses_ip = uses_request = False
        for doc in self.policies:
            for st in doc.statements:
                self._entries.append((doc, st))
                decided.append(DecidedBy(doc.name, doc.version, st.index, st.effect))
                for name in _names_used(st):
                    uses_client = uses_client or depends_on_client(name)
                    uses_ip = uses_ip or name in SOURCE_KEYS
                    uses_request = uses_request or name in REQUEST_KEYS
        self.decided_by: tuple[DecidedBy, ...] = tuple(decided)
        self._uses_client = uses_client
        self._uses_ip = uses_ip
        fields = ["action", "resource"]
        if uses_client:
            fields.append("client_id")
        if uses_ip:
            fields.append("source_ip")
        if uses_request:
            fields += ["connect_attributes", "last_will_topic"]
        #: The request fields decisions depend on; others never change the answer.
        self.depends_on: frozenset[str] = frozenset(fields)
        self._contexts: dict[tuple, _Context] = {}
        self._last: _Context | None = None

    # -- evaluation -------------------------------------------------------------------------------

    def evaluate(self, req: Request) -> Decision:
        """Decide ``req``. Never raises: a failure is a deny carrying the error text."""
        try:
            ctx = self._last
            if (
                ctx is None
                or (self._uses_client and ctx.client_id != req.client_id)
                or (self._uses_ip and ctx.source_ip != req.source_ip)
            ):
                ctx = self._context(req.client_id, req.source_ip)
            table = ctx.tables.get(req.action)
            if table is None:
                table = self._table(ctx, req.action)
            return table.evaluate(req)
        except Exception as exc:  # a request that cannot be evaluated is refused, never allowed
            return Decision(False, (), (f"request could not be evaluated: {type(exc).__name__}: {exc}",))

    # -- building ---------------------------------------------------------------------------------

    def _context(self, client_id: Any, source_ip: Any) -> _Context:
        key = (client_id if self._uses_client else None, source_ip if self._uses_ip else None)
        ctx = self._contexts.get(key)
        if ctx is None:
            scope = Scope(self._cert, self.identity.things, key[0], key[1])
            compiled = []
            for sid, (doc, st) in enumerate(self._entries):
                c = self._compile_statement(sid, doc, st, scope)
                if c is not None:
                    compiled.append(c)
            ctx = _Context(key[0], key[1], compiled)
            if len(self._contexts) >= MAX_CONTEXTS:
                self._contexts.pop(next(iter(self._contexts)))
            self._contexts[key] = ctx
        self._last = ctx
        return ctx

    def _compile_statement(self, sid: int, doc: PolicyDocument, st: Statement, scope: Scope) -> _Compiled | None:
        c = _Compiled(sid, st)
        where = f"policy {doc.name!r} version {doc.version!r} Statement[{st.index}]"
        residual: list[CompiledClause] = []
        error: str | None = None
        for clause in st.conditions:
            try:
                cc = CompiledClause(clause, [substitute(v, scope) for v in clause.values])
                if clause.key_norm in REQUEST_KEYS:
                    residual.append(cc)
                    continue
                if not cc.evaluate(scope.key(clause.key_norm)):
                    return None
            except (EvaluationError, ValueError, TypeError) as exc:
                error = error or f"{where}.Condition.{clause.operator}[{clause.key!r}]: {exc}"
        fast = []
        slow = []
        for arn in st.resource_patterns:
            if arn.star:
                fast.append(ANY)
                slow.append(ArnMatcher(None))
                continue
            comps = [compile_pattern(substitute(comp, scope)) for comp in arn.components]
            slow.append(ArnMatcher(comps))
            if all(comps[i].match(self._head_parts[i]) for i in range(5)):
                fast.append(comps[5])
        c.fast = MatcherSet(fast)
        c.slow = tuple(slow)
        c.residual = tuple(residual)
        c.error = error
        cond = _residual_condition(c.residual, self.arn_head + "topic/") if residual else None
        m = c.fast
        c.row = (sid, m.any, m.exact, m.prefixes, m.globs, c.negate, cond)
        return c

    def _table(self, ctx: _Context, action: Any) -> _Table:
        if not isinstance(action, str):
            raise TypeError(f"action must be a string, got {type(action).__name__}")
        statements = [c for c in ctx.statements if c.statement.applies_to(action)]
        table = _Table(self, statements)
        if len(ctx.tables) < MAX_ACTION_TABLES:
            ctx.tables[action] = table
        return table


def _names_used(st: Statement) -> Iterable[str]:
    """Normalized condition keys and variable names a statement refers to."""
    for clause in st.conditions:
        yield clause.key_norm
        for tokens in clause.values:
            for kind, value in tokens:
                if kind == "var":
                    yield normalize_key(value)
    for arn in st.resource_patterns:
        for comp in arn.components:
            for kind, value in comp:
                if kind == "var":
                    yield normalize_key(value)


def _as_documents(policies: Iterable[PolicyDocument | str | Mapping[str, Any]]) -> list[PolicyDocument]:
    docs = []
    for i, p in enumerate(policies):
        docs.append(p if isinstance(p, PolicyDocument) else parse_policy(p, name=f"policy{i}"))
    return docs


def compile_policies(
    policies: Iterable[PolicyDocument | str | Mapping[str, Any]],
    identity: Identity | None = None,
    region: str = DEFAULT_REGION,
    account: str = DEFAULT_ACCOUNT,
    partition: str = "aws",
) -> CompiledPolicies:
    """Bind the policies attached to a certificate to its identity; do this once per identity."""
    return CompiledPolicies(_as_documents(policies), identity or Identity(), region, account, partition)


def evaluate(
    policies: Iterable[PolicyDocument | str | Mapping[str, Any]],
    request: Request,
    identity: Identity | None = None,
    region: str = DEFAULT_REGION,
    account: str = DEFAULT_ACCOUNT,
    partition: str = "aws",
) -> Decision:
    """Compile and decide one request (convenience; compile once per identity on a hot path)."""
    return compile_policies(policies, identity, region, account, partition).evaluate(request)


class DecisionCache:
    """Bounded per-connection memo of decisions, keyed by the whole request.

    A Request is a hashable tuple of every field that can change a decision (action, resource,
    client id, source address, connect attributes, last-will topic), so a hit is one dict lookup.
    Two generations approximate LRU: an entry found in the old generation is promoted; when the
    young one is full the old one is dropped. At most ``max_entries`` decisions are held.
    Build a new cache when the compiled set changes (policy, attachment or registry update).
    """

    __slots__ = ("compiled", "max_entries", "_half", "_young", "_old", "lookups", "misses")

    def __init__(self, compiled: CompiledPolicies, max_entries: int = 1024) -> None:
        if max_entries < 2:
            raise ValueError("max_entries must be at least 2")
        self.compiled = compiled
        self.max_entries = max_entries
        self._half = max_entries // 2
        self._young: dict[Request, Decision] = {}
        self._old: dict[Request, Decision] = {}
        self.lookups = 0  # counted on the slow path only: young-generation hits are not counted
        self.misses = 0

    def evaluate(self, req: Request) -> Decision:
        try:
            decision = self._young.get(req)
        except TypeError:  # a field that cannot be hashed: decide without caching
            return self.compiled.evaluate(req)
        if decision is not None:
            return decision
        return self._miss(req)

    def _miss(self, req: Request) -> Decision:
        self.lookups += 1
        decision = self._old.pop(req, None)
        if decision is None:
            self.misses += 1
            decision = self.compiled.evaluate(req)
        young = self._young
        if len(young) >= self._half:
            self._old = young
            self._young = young = {}
        young[req] = decision
        return decision

    def clear(self) -> None:
        self._young = {}
        self._old = {}

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


def _matching(statements, part: str, req) -> tuple[int, ...]:
    """Ids of the compiled statements (one effect) whose resource matcher and condition cover the request."""
    hits: tuple[int, ...] = ()
    for sid, any_, exact, prefixes, globs, negate, cond in statements:
        if any_ or part in exact or (prefixes and part.startswith(prefixes)):
            m = True
        elif globs:
            m = False
            for g in globs:
                if g.match(part):
                    m = True
                    break
        else:
            m = False
        if m is not negate and (cond is None or cond(req)):
            hits += (sid,)
    return hits
