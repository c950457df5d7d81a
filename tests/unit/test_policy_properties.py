"""Properties of the evaluator over generated policies and requests (hypothesis)."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.policy import DecisionCache, Identity, PolicyError, Request, ThingInfo, compile_policies, parse_policy

ARN = "arn:aws:iot:us-east-1:123456789012"
IDENTITY = Identity(
    certificate_id="ab" * 32,
    subject={"CommonName": ["dev1"], "Organization": ["acme", "beta"]},
    serial_number="42",
    things={"dev1": ThingInfo(name="dev1", thing_type="sensor", attributes={"site": "north"})},
)

SEGMENTS = ["a", "b", "dev1", "$aws", "+", "#", "*", "?", "a*", "d?v1", "${iot:ClientId}",
            "${iot:Connection.Thing.ThingName}", "${iot:Certificate.Subject.CommonName}", "${*}", "${iot:Nope}", "é"]
ACTIONS = ["iot:Connect", "iot:Publish", "iot:Subscribe", "iot:Receive", "iot:RetainPublish", "iot:*", "iot:Pub*", "*"]
REQUEST_ACTIONS = ["iot:Connect", "iot:Publish", "iot:Subscribe", "iot:Receive", "iot:RetainPublish", "iot:publish"]
TYPES = ["topic", "topicfilter", "client"]
CONDITIONS = [
    {"StringEquals": {"iot:ClientId": "dev1"}},
    {"StringNotEquals": {"iot:ClientId": ["dev1", "x"]}},
    {"StringLike": {"iot:Connection.Thing.ThingName": "d*"}},
    {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
    {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
    {"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
    {"ForAnyValue:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}},
    {"ForAllValues:StringEquals": {"iot:Certificate.Subject.Organization.List": ["acme"]}},
    {"StringEqualsIfExists": {"iot:Connection.Thing.Attributes[site]": "north"}},
    {"Null": {"iot:Connection.Thing.ThingTypeName": "false"}},
]

path = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map("/".join)
resource = st.one_of(
    st.just("*"),
    st.builds(lambda t, p: f"{ARN}:{t}/{p}", st.sampled_from(TYPES), path),
    st.builds(lambda t, p: f"arn:aws:iot:*:*:{t}/{p}", st.sampled_from(TYPES), path),
)


@st.composite
def statements(draw, effect=None):
    s = {
        "Effect": effect or draw(st.sampled_from(["Allow", "Deny"])),
        draw(st.sampled_from(["Action", "Action", "Action", "NotAction"])): draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=2)),
        draw(st.sampled_from(["Resource", "Resource", "Resource", "NotResource"])): draw(st.lists(resource, min_size=1, max_size=2)),
    }
    conds = draw(st.lists(st.sampled_from(CONDITIONS), max_size=2))
    if conds:
        merged: dict = {}
        for c in conds:
            for op, block in c.items():
                merged.setdefault(op, {}).update(block)
        s["Condition"] = merged
    return s


policy_sets = st.lists(st.lists(statements(), min_size=1, max_size=4), min_size=1, max_size=3)

req_segments = st.lists(st.sampled_from(["a", "b", "dev1", "$aws", "+", "#", "*", "?", "a*", "dvv1", "${iot:Nope}", "é"]),
                        min_size=1, max_size=3).map("/".join)
requests = st.builds(
    Request,
    action=st.sampled_from(REQUEST_ACTIONS),
    resource=st.one_of(
        st.builds(lambda t, p: f"{t}/{p}", st.sampled_from(TYPES), req_segments),
        st.builds(lambda t, p: f"{ARN}:{t}/{p}", st.sampled_from(TYPES), req_segments),
        st.builds(lambda t, p: f"arn:aws:iot:eu-west-1:123456789012:{t}/{p}", st.sampled_from(TYPES), req_segments),
        st.just("*"),
    ),
    client_id=st.sampled_from(["dev1", "dev2", "a*", "+", "#", None, ""]),
    source_ip=st.sampled_from(["10.1.2.3", "192.0.2.7", "2001:db8::1", None, "not-an-ip"]),
    connect_attributes=st.sets(st.sampled_from(["PersistentConnect", "LastWill"])),
)


def documents(raw_sets, prefix="p"):
    docs = []
    for i, stmts in enumerate(raw_sets):
        body = {"Version": "2012-10-17", "Statement": [dict(s, Sid=f"s{j}") for j, s in enumerate(stmts)]}
        docs.append(parse_policy(body, name=f"{prefix}{i}"))
    return docs


def decide(docs, req):
    return compile_policies(docs, IDENTITY).evaluate(req)


COMMON = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(policy_sets, statements(effect="Deny"), requests)
def test_an_added_deny_never_grants(raw, extra, req) -> None:
    base = documents(raw)
    with_deny = base + documents([[extra]], prefix="extra")
    before, after = decide(base, req), decide(with_deny, req)
    if after.allowed:
        assert before.allowed
    assert not (after.allowed and not before.allowed)


@COMMON
@given(policy_sets, statements(effect="Allow"), requests)
def test_an_added_allow_never_removes_access(raw, extra, req) -> None:
    base = documents(raw)
    before = decide(base, req)
    after = decide(base + documents([[extra]], prefix="extra"), req)
    if before.allowed:
        assert after.allowed


@COMMON
@given(policy_sets, requests, st.randoms(use_true_random=False))
def test_statement_and_policy_order_never_matter(raw, req, rnd: random.Random) -> None:
    docs = documents(raw)
    shuffled_raw = []
    for stmts in raw:
        order = list(range(len(stmts)))
        rnd.shuffle(order)
        shuffled_raw.append([(j, stmts[j]) for j in order])
    policy_order = list(range(len(raw)))
    rnd.shuffle(policy_order)
    shuffled = []
    for i in policy_order:
        body = {"Version": "2012-10-17", "Statement": [dict(s, Sid=f"s{j}") for j, s in shuffled_raw[i]]}
        shuffled.append(parse_policy(body, name=f"p{i}"))

    def deciders(ds, decision):
        by_name = {d.name: d for d in ds}
        return {(d.policy, by_name[d.policy].statements[d.statement_index].sid) for d in decision.decided_by}

    a, b = decide(docs, req), decide(shuffled, req)
    assert a.allowed == b.allowed
    assert deciders(docs, a) == deciders(shuffled, b)
    assert len(a.errors) == len(b.errors)


wild_text = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(list("ab/*?+#${}:é😀 \x00") + ["${iot:ClientId}", "arn:aws:iot:", "topic/", f"{ARN}:"]), max_size=12).map("".join),
)


@COMMON
@given(policy_sets, wild_text, wild_text, st.one_of(st.none(), wild_text), st.one_of(st.none(), wild_text),
       st.lists(wild_text, max_size=3), st.one_of(st.none(), wild_text))
def test_evaluation_never_raises_for_any_request_text(raw, action, res, cid, ip, attrs, will) -> None:
    docs = documents(raw)
    compiled = compile_policies(docs, IDENTITY)
    req = Request(action, res, cid, ip, attrs, will)
    decision = compiled.evaluate(req)
    assert isinstance(decision.allowed, bool)
    assert DecisionCache(compiled, 8).evaluate(req) == decision


@COMMON
@given(st.text(max_size=60))
def test_parse_never_raises_anything_but_policy_error(text) -> None:
    try:
        parse_policy(text)
    except PolicyError:
        pass


@COMMON
@given(policy_sets, st.lists(requests, min_size=1, max_size=60), st.integers(min_value=2, max_value=9))
def test_cache_agrees_with_uncached_and_stays_bounded(raw, reqs, size) -> None:
    compiled = compile_policies(documents(raw), IDENTITY)
    reference = compile_policies(documents(raw), IDENTITY)
    cache = DecisionCache(compiled, max_entries=size)
    for req in reqs + reqs[::-1] + reqs:
        assert cache.evaluate(req) == reference.evaluate(req)
        assert len(cache) <= size


@COMMON
@given(policy_sets, requests)
def test_one_compiled_set_serves_many_clients_consistently(raw, req) -> None:
    docs = documents(raw)
    shared = compile_policies(docs, IDENTITY)
    for cid in ["dev1", "dev2", None, "+", "dev1"]:
        r = req._replace(client_id=cid)
        assert shared.evaluate(r) == compile_policies(docs, IDENTITY).evaluate(r)


@COMMON
@given(policy_sets, requests)
def test_decided_by_matches_the_outcome(raw, req) -> None:
    d = decide(documents(raw), req)
    effects = {x.effect for x in d.decided_by}
    if d.allowed:
        assert effects == {"Allow"}
    else:
        assert effects <= {"Deny"}
