"""IAM condition semantics over compiled values.

- A missing key fails a positive operator and satisfies a negated one (``StringNotEquals`` ...),
  except ``...IfExists`` (missing -> true) and ``Null`` (tests presence).
- Several values for one key are OR-ed; negated operators hold when no value matches.
- ``ForAllValues:`` holds when every request value matches (vacuously true when there are none);
  ``ForAnyValue:`` when at least one does. A multivalued key used without a set operator behaves as
  ``ForAnyValue:`` for positive operators and ``ForAllValues:`` for negated ones.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Sequence

from gateway.policy.document import Clause
from gateway.policy.variables import is_multivalued
from gateway.policy.wildcard import Matcher, compile_pattern


class EvaluationError(Exception):
    """A value could not be interpreted while evaluating a statement."""


def _positive_base(base: str) -> str:
    return {
        "StringNotEquals": "StringEquals",
        "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
        "StringNotLike": "StringLike",
        "ArnNotEquals": "ArnEquals",
        "ArnNotLike": "ArnLike",
        "NotIpAddress": "IpAddress",
        "NumericNotEquals": "NumericEquals",
    }.get(base, base)


class ArnMatcher:
    """An ARN pattern matched component by component (wildcards never cross a colon before the resource)."""

    __slots__ = ("parts", "star")

    def __init__(self, parts: Sequence[Matcher] | None) -> None:
        self.star = parts is None
        self.parts = tuple(parts or ())

    def match(self, arn: str) -> bool:
        if self.star:
            return True
        comps = arn.split(":", 5)
        if len(comps) != 6:
            return False
        for m, c in zip(self.parts, comps):
            if not m.match(c):
                return False
        return True


def split_arn_segments(segments: Sequence[tuple[str, bool]]) -> list[list[tuple[str, bool]]]:
    """Split pattern segments into ARN components on the first five colons written in the policy."""
    comps: list[list[tuple[str, bool]]] = [[]]
    for text, wild in segments:
        if not wild or len(comps) == 6:
            comps[-1].append((text, wild))
            continue
        pieces = text.split(":", 6 - len(comps))
        for j, piece in enumerate(pieces):
            if j:
                comps.append([])
            if piece:
                comps[-1].append((piece, True))
    return comps


def _matcher_for(base: str, segments_list: list[list[tuple[str, bool]]]) -> Callable[[str], bool]:
    """Positive single-value test for one key value against all policy values of a clause."""
    texts = ["".join(t for t, _ in segs) for segs in segments_list]
    if base == "StringEquals":
        exact = frozenset(texts)
        return exact.__contains__
    if base == "StringEqualsIgnoreCase":
        folded = frozenset(t.casefold() for t in texts)
        return lambda v: v.casefold() in folded
    if base == "StringLike":
        matchers = [compile_pattern(segs) for segs in segments_list]
        return lambda v: any(m.match(v) for m in matchers)
    if base == "Bool":
        wanted = frozenset(t.lower() for t in texts)
        return lambda v: v.lower() in wanted
    if base == "IpAddress":
        nets = []
        for t in texts:
            try:
                nets.append(ipaddress.ip_network(t, strict=False))
            except ValueError:
                raise EvaluationError(f"IpAddress value {t!r} is not an IP address or CIDR block") from None

        def ip_test(v: str) -> bool:
            try:
                ip = ipaddress.ip_address(v)
            except ValueError:
                raise EvaluationError(f"request address {v!r} is not an IP address") from None
            return any(ip in n for n in nets if n.version == ip.version)

        return ip_test
    if base in ("ArnEquals", "ArnLike"):
        arns = []
        for segs in segments_list:
            if segs == [("*", True)]:
                arns.append(ArnMatcher(None))
                continue
            comps = split_arn_segments(segs)
            if len(comps) == 6:
                arns.append(ArnMatcher([compile_pattern(c) for c in comps]))
        return lambda v: any(a.match(v) for a in arns)
    if base.startswith("Numeric"):
        try:
            nums = [float(t) for t in texts]
        except ValueError:
            raise EvaluationError(f"{base} values {texts!r} are not all numbers") from None
        cmp = {
            "NumericEquals": lambda a, b: a == b,
            "NumericLessThan": lambda a, b: a < b,
            "NumericLessThanEquals": lambda a, b: a <= b,
            "NumericGreaterThan": lambda a, b: a > b,
            "NumericGreaterThanEquals": lambda a, b: a >= b,
        }[base]

        def num_test(v: str) -> bool:
            try:
                x = float(v)
            except ValueError:
                raise EvaluationError(f"{base}: request value {v!r} is not a number") from None
            return any(cmp(x, n) for n in nums)

        return num_test
    raise EvaluationError(f"operator {base} cannot be evaluated")


class CompiledClause:
    """A clause whose policy values have had their variables resolved."""

    __slots__ = ("clause", "positive", "negated", "multivalued", "null_wants")

    def __init__(self, clause: Clause, segments_list: list[list[tuple[str, bool]]]) -> None:
        self.clause = clause
        self.negated = clause.negated
        self.multivalued = is_multivalued(clause.key_norm)
        if clause.base == "Null":
            self.null_wants = frozenset("".join(t for t, _ in s).lower() == "true" for s in segments_list)
            self.positive = None
        else:
            self.null_wants = frozenset()
            self.positive = _matcher_for(_positive_base(clause.base), segments_list)

    def evaluate(self, values: tuple[str, ...] | None) -> bool:
        c = self.clause
        if c.base == "Null":
            return (values is None or len(values) == 0) in self.null_wants
        if values is None:
            if c.if_exists or c.qualifier == "ForAllValues":
                return True
            if c.qualifier == "ForAnyValue":
                return False
            return self.negated
        pos = self.positive
        if self.negated:
            single = lambda v: not pos(v)  # noqa: E731
        else:
            single = pos
        if c.qualifier == "ForAllValues":
            return all(single(v) for v in values)
        if c.qualifier == "ForAnyValue":
            return any(single(v) for v in values)
        if self.multivalued:
            hit = any(pos(v) for v in values)
            return not hit if self.negated else hit
        if not values:
            return self.negated
        return single(values[0])
