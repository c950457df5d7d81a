"""Every case in tests/policy_cases/*.json: policies + identity + request -> decision and deciding statements."""

from __future__ import annotations

import pytest

import json
from pathlib import Path
from typing import Any

from gateway.policy import DecisionCache, Identity, Request, ThingInfo, compile_policies, evaluate, parse_policy

CASES_DIR = Path(__file__).resolve().parent.parent / "policy_cases"


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in sorted(CASES_DIR.glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8")):
            case["_file"] = path.name
            cases.append(case)
    return cases


def identity_of(case: dict[str, Any]) -> Identity:
    raw = dict(case.get("identity") or {})
    things = {
        name: ThingInfo(name=name, thing_type=t.get("thing_type"), attributes=t.get("attributes") or {})
        for name, t in (raw.pop("things", None) or {}).items()
    }
    return Identity(things=things, **raw)


def request_of(case: dict[str, Any]) -> Request:
    r = case["request"]
    return Request(
        action=r["action"],
        resource=r["resource"],
        client_id=r.get("client_id"),
        source_ip=r.get("source_ip"),
        connect_attributes=frozenset(r.get("connect_attributes") or ()),
        last_will_topic=r.get("last_will_topic"),
    )


def documents_of(case: dict[str, Any]):
    return [parse_policy(p["document"], name=p["name"], version=p.get("version", "1")) for p in case["policies"]]


CASES = load_cases()


def test_case_corpus_is_large_and_well_formed() -> None:
    assert len(CASES) >= 170
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for c in CASES:
        assert c.get("doc"), f"{c['name']}: every case cites the documentation it follows"
        assert isinstance(c["expected"]["allowed"], bool)
    assert any(c["expected"]["allowed"] for c in CASES) and any(not c["expected"]["allowed"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_policy_case(case) -> None:
    docs = documents_of(case)
    identity = identity_of(case)
    request = request_of(case)
    options = case.get("compile") or {}
    compiled = compile_policies(docs, identity, **options)

    decision = compiled.evaluate(request)

    expected = case["expected"]
    got = [{"policy": d.policy, "statement": d.statement_index} for d in decision.decided_by]
    want = [{"policy": d["policy"], "statement": d["statement"]} for d in expected["decided_by"]]
    assert decision.allowed is expected["allowed"], f"{case['_file']}: {case['doc']}; decision {decision}"
    assert got == want, f"{case['_file']}: deciding statements differ: {decision}"
    for d, w in zip(decision.decided_by, expected["decided_by"]):
        if "version" in w:
            assert d.version == w["version"]
    assert bool(decision.errors) is bool(expected.get("errors", False)), decision.errors
    effects = {d.effect for d in decision.decided_by}
    assert effects <= ({"Allow"} if decision.allowed else {"Deny"})

    # The same answer through the convenience function, a fresh compile and the per-connection cache.
    assert evaluate(docs, request, identity, **options) == decision
    cache = DecisionCache(compile_policies(docs, identity, **options), max_entries=4)
    assert cache.evaluate(request) == decision
    assert cache.evaluate(request) == decision
