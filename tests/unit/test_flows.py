"""The flows core as tables: declared file parsing, matching, and declared-vs-observed comparisons."""

from __future__ import annotations

import pytest

from gateway.observe.flows import FlowsError, compare, observe, parse_declared
from gateway.observe.flows.draw import mermaid
from gateway.observe.flows.log import parse_since
from gateway.observe.flows.model import filter_covers, topic_matches
from gateway.observe.flows.suggest import lint_findings, suggest

CA = "a" * 64
OTHER_CA = "b" * 64

DECLARED = """
[[principals]]
name = "sensors"
things = ["dev-*"]
auth = "mtls"
ca = ["issuing"]
publish = ["dt/{thing}/+"]
subscribe = ["cmd/{thing}/#"]
receive = ["cmd/{thing}/#"]

[[principals]]
name = "apps"
kind = "service"
authorizers = ["fleet-jwt"]
auth = "custom_authorizer"
publish = ["app/{client_id}/events"]

[[principals]]
name = "gateway"
kind = "upstream"
auth = "mtls"
ca = ["upstream"]
publish = ["dt/+/+", "app/+/events"]
subscribe = ["cmd/+/#"]
receive = ["cmd/+/#"]
"""
ALIASES = {"issuing": {CA}, "upstream": {"CN=iotgate upstream CA"}}


def upstream(ca="CN=iotgate upstream CA", node="gw1"):
    return {"event": "upstream", "decision": "configured", "kind": "mtls", "auth": "mtls", "ca": ca,
            "identity": "iotgate-gateway", "_node": node}


def connect(thing, ca=CA, **extra):
    return {"event": "connect", "decision": "allowed", "kind": "connected", "thing": thing, "client_id": thing,
            "certificate_id": thing.ljust(64, "0"), "auth": "mtls", "ca_id": ca, "_node": "gw1", **extra}


def session_end(thing, *flows, **extra):
    return {"event": "disconnect", "decision": "closed", "kind": "connection_lost", "thing": thing, "client_id": thing,
            "certificate_id": thing.ljust(64, "0"), "_node": "gw1",
            "flows": [{"action": a, "topic": t, "count": 3, "bytes": 30} for a, t in flows], **extra}


def refused(kind, **extra):
    return {"event": "connect", "decision": "refused", "kind": kind, "reason": kind.replace("_", " "),
            "source": "127.0.0.1:5000", "_node": "gw1", **extra}


GOOD = [upstream(), connect("dev-1"), session_end("dev-1", ("iot:Publish", "dt/dev-1/temp"),
                                                  ("iot:Subscribe", "cmd/dev-1/#"), ("iot:Receive", "cmd/dev-1/reboot"))]

# name, records, expected (passed, undeclared statuses, auth mismatches, refusal kinds)
CASES = [
    ("declared traffic passes", GOOD, (True, [], 0, [])),
    ("an undeclared thing that only connects", GOOD + [connect("cam-2")], (False, ["undeclared principal"], 0, [])),
    ("a topic outside the principal's", GOOD + [session_end("dev-1", ("iot:Publish", "dt/dev-2/temp"))],
     (False, ["undeclared topic", "declared"], 0, [])),
    ("a thing no principal declares", GOOD + [connect("cam-1"), session_end("cam-1", ("iot:Publish", "dt/cam-1/x"))],
     (False, ["undeclared principal"], 0, [])),
    ("another thing's command filter", GOOD + [session_end("dev-1", ("iot:Subscribe", "cmd/+/#"))],
     (False, ["undeclared topic", "declared"], 0, [])),
    ("a device certificate from another CA", [upstream(), connect("dev-1", ca=OTHER_CA),
                                              session_end("dev-1", ("iot:Publish", "dt/dev-1/t"))],
     (False, [], 1, [])),
    ("an upstream over a password", [upstream() | {"auth": "password", "ca": None}, connect("dev-1"),
                                     session_end("dev-1", ("iot:Publish", "dt/dev-1/t"))],
     (False, [], 1, [])),
    ("refusals are grouped, not flows", GOOD + [refused("certificate_revoked", thing="dev-9",
                                                        certificate_id="9" * 64),
                                                refused("certificate_revoked", thing="dev-9", certificate_id="9" * 64),
                                                {"event": "tls", "decision": "refused", "kind": "no_certificate",
                                                 "source": "127.0.0.1:1", "_node": "gw1"}],
     (True, [], 0, ["certificate_revoked", "no_certificate"])),
    ("a token principal", GOOD + [{"event": "connect", "decision": "allowed", "kind": "connected",
                                   "client_id": "app-7", "authorizer": "fleet-jwt", "principal": "u7",
                                   "auth": "custom_authorizer", "_node": "gw1"},
                                  {"event": "disconnect", "decision": "closed", "kind": "x", "client_id": "app-7",
                                   "authorizer": "fleet-jwt", "principal": "u7", "_node": "gw1",
                                   "flows": [{"action": "iot:Publish", "topic": "app/app-7/events", "count": 1,
                                              "bytes": 9}]}],
     (True, [], 0, [])),
    ("flows with no upstream line are not vouched for", [connect("dev-1"),
                                                         session_end("dev-1", ("iot:Publish", "dt/dev-1/t"))],
     (False, [], 1, [])),
]


@pytest.mark.parametrize("name,records,expected", CASES, ids=[c[0] for c in CASES])
def test_comparison_table(name, records, expected):
    passed, undeclared, mismatches, refusal_kinds = expected
    cmp = compare(parse_declared(DECLARED), observe(records), ca_aliases=ALIASES)
    assert cmp.passed is passed
    statuses = sorted({f.status for f in cmp.flows if f.hop == "device-gateway"} - {"declared"}) if undeclared else []
    assert statuses == sorted(set(undeclared) - {"declared"})
    assert len(cmp.auth_mismatches) == mismatches, cmp.auth_mismatches
    assert sorted({r.kind for r in cmp.refusals}) == refusal_kinds


def test_refused_attempts_name_the_identity_and_count():
    records = GOOD + [refused("certificate_revoked", thing="dev-9", certificate_id="9" * 64)] * 3
    cmp = compare(parse_declared(DECLARED), observe(records), ca_aliases=ALIASES)
    (row,) = cmp.refusals
    assert (row.identity, row.principal, row.count, row.reason) == ("dev-9", "sensors", 3, "certificate revoked")


def test_never_seen_and_since():
    cmp = compare(parse_declared(DECLARED), observe(GOOD), ca_aliases=ALIASES)
    assert ("apps", "publish", "app/{client_id}/events") in {(n.principal, n.direction, n.topic) for n in cmp.never_seen}
    assert ("sensors", "publish", "dt/{thing}/+") not in {(n.principal, n.direction, n.topic) for n in cmp.never_seen}
    old = [dict(r, time="2020-01-01T00:00:00.000Z") for r in GOOD]
    obs = observe(old, since=parse_since("2021-01-01T00:00:00Z", 0))
    assert obs.records == 0 and not obs.flows and obs.identities  # the upstream line stays
    assert parse_since("15m", 1000.0) == 100.0
    with pytest.raises(FlowsError, match="--since 'yesterday'"):
        parse_since("yesterday", 0)


def test_over_permissive_declarations_share_policy_lint_rule():
    text = DECLARED.replace('publish = ["dt/{thing}/+"]', 'publish = ["#"]').replace(
        'subscribe = ["cmd/{thing}/#"]', 'subscribe = ["$aws/things/+/shadow/update"]')
    found = {(p.principal, p.code) for p in compare(parse_declared(text), observe([])).permissive}
    assert ("sensors", "PUBLISH_ALL_TOPICS") in found and ("sensors", "SUBSCRIBE_ANY_THING") in found
    assert ("gateway", "SUBSCRIBE_ALL_TOPICS") not in found  # cmd/+/# is not every topic
    assert not compare(parse_declared(DECLARED), observe([])).permissive


BAD_FILES = [
    ('[[principals]]\nname = "x"\nthings = ["a"]\npublsh = ["a"]', r"principals\[0\]\.publsh: unknown field \(did you mean 'publish'\?\)"),
    ('[[principals]]\nname = "x"\npublish = ["a"]', "name how it is recognised"),
    ('[[principals]]\nname = "x"\nthings = ["a"]\npublish = ["a/#/b"]', "publish: 'a/#/b': '#' must be"),
    ('[[principals]]\nname = "x"\nthings = ["a"]\nauth = "tls"', "auth: 'tls' is not one of"),
    ('[[principals]]\nname = "x"\nthings = ["a"]\npublish = ["{thingname}/a"]', "unknown variable"),
    ('[[principals]]\nname = "x"\nkind = "upstream"\nthings = ["a"]', "the upstream principal is the gateway"),
    ('principals = []', "non-empty list"),
    ('[[principals]]\nname = "x"\nthings = ["a"]\n[[principals]]\nname = "x"\nthings = ["b"]', "declared twice"),
]


@pytest.mark.parametrize("text,message", BAD_FILES)
def test_bad_flows_files_name_the_field(text, message):
    with pytest.raises(FlowsError, match=message):
        parse_declared(text, source="f.toml")


def test_yaml_is_the_same_model():
    yaml_text = """
principals:
  - name: sensors
    things: ["dev-*"]
    publish: ["dt/{thing}/+"]
"""
    declared = parse_declared(yaml_text, yaml=True)
    assert declared.principals[0].publish == ("dt/{thing}/+",) and declared.principals[0].auth == ("mtls",)


@pytest.mark.parametrize("flt,topic,ok", [("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/#", "a", True),
                                          ("#", "$aws/x", False), ("a/b", "a/b", True), ("+/b", "a/c", False)])
def test_topic_matches(flt, topic, ok):
    assert topic_matches(flt, topic) is ok


@pytest.mark.parametrize("outer,inner,ok", [("cmd/d1/#", "cmd/d1/#", True), ("cmd/d1/#", "cmd/+/#", False),
                                            ("cmd/+/#", "cmd/d1/x", True), ("a/+", "a/#", False),
                                            ("#", "a/+/b", True), ("a/+/c", "a/+/c", True)])
def test_filter_covers(outer, inner, ok):
    assert filter_covers(outer, inner) is ok


def test_suggest_is_least_privilege_and_lint_clean():
    records = [upstream()] + [r for i in (1, 2, 3) for r in (
        connect(f"dev-{i}"), session_end(f"dev-{i}", ("iot:Publish", f"dt/dev-{i}/temp"),
                                         ("iot:Subscribe", f"cmd/dev-{i}/#")))]
    principals, policies = suggest(observe(records))
    things = next(p for p in principals if p["kind"] == "thing")
    assert things["things"] == ["dev-*"] and things["publish"] == ["dt/{thing}/temp"]
    assert things["subscribe"] == ["cmd/{thing}/#"]
    gw = next(p for p in principals if p["kind"] == "upstream")
    assert gw["publish"] == ["dt/+/temp"]
    assert lint_findings(policies) == {name: [] for name in policies}
    # the suggestion, used as the declaration, passes against the traffic it came from
    from gateway.observe.flows.suggest import to_toml
    cmp = compare(parse_declared(to_toml(principals)), observe(records))
    assert cmp.passed, cmp.undeclared


def test_mermaid_names_principals_and_marks_the_unintended():
    records = GOOD + [connect("cam-1"), session_end("cam-1", ("iot:Publish", "dt/cam-1/x")),
                      refused("certificate_revoked", thing="dev-9", certificate_id="9" * 64)]
    text = mermaid(parse_declared(DECLARED), compare(parse_declared(DECLARED), observe(records), ca_aliases=ALIASES))
    assert text.startswith("flowchart LR")
    for name in ("sensors", "apps", "cam-1", "gateway", "broker"):
        assert name in text
    assert "UNDECLARED" in text and "REFUSED" in text and "stroke:#d62728" in text


def test_demo_report_has_the_diagram_the_plots_and_the_tables(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("demo_report", Path(__file__).parents[2] / "deploy" / "demo_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    log = tmp_path / "gateway-access.log"
    records = GOOD + [connect("cam-1"), session_end("cam-1", ("iot:Publish", "dt/cam-1/x")),
                      refused("certificate_revoked", thing="dev-9", certificate_id="9" * 64)]
    log.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "_node"}) + "\n" for r in records))
    (tmp_path / "flows.toml").write_text(DECLARED)
    fleet = tmp_path / "report.json"
    phase = {"count": 3, "min_ms": 1.0, "p50_ms": 2.0, "p90_ms": 3.0, "p99_ms": 4.0, "max_ms": 5.0}
    fleet.write_text(json.dumps({"latency": {"tls": phase, "e2e": phase}}))
    path = module.write_report(tmp_path / "out", declared_file=tmp_path / "flows.toml", access_log=log,
                               fleet_report=fleet, rows=[("dev-9", "connect", "refused", "refused", "CONNACK 0x87")])
    text = path.read_text()
    assert text.count("<svg") == 3  # flows, handshake, end to end
    assert "class=FAIL" in text and "cam-1" in text and "certificate_revoked" in text and "CONNACK 0x87" in text
