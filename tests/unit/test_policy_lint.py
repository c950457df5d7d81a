"""lint(): Device Defender IOT_POLICY_OVERLY_PERMISSIVE-style findings, as a table."""

from __future__ import annotations

import pytest

from gateway.policy import Finding, lint, parse_policy

A = "arn:aws:iot:us-east-1:123456789012"


def d(*statements, version="2012-10-17"):
    return {"Version": version, "Statement": list(statements)}


def allow(action, resource, **extra):
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


TABLE = [
    ("iot:* on *", d(allow("iot:*", "*")), {"ALL_ACTIONS_ALL_RESOURCES"}),
    ("* on arn wildcard", d(allow("*", f"{A}:*")), {"ALL_ACTIONS_ALL_RESOURCES"}),
    ("connect client/*", d(allow("iot:Connect", f"{A}:client/*")), {"CONNECT_ANY_CLIENT"}),
    ("connect *", d(allow("iot:Connect", "*")), {"CONNECT_ANY_CLIENT"}),
    ("connect client/dev-*", d(allow("iot:Connect", f"{A}:client/dev-*")), {"CONNECT_ANY_CLIENT"}),
    ("connect client/${iot:ClientId}", d(allow("iot:Connect", f"{A}:client/${{iot:ClientId}}")), {"CONNECT_CLIENTID_VARIABLE"}),
    ("connect thing name with IsAttached", d(allow("iot:Connect", f"{A}:client/${{iot:Connection.Thing.ThingName}}",
                                                   Condition={"Bool": {"iot:Connection.Thing.IsAttached": "true"}})), set()),
    ("connect * with IsAttached", d(allow("iot:Connect", "*", Condition={"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}})), set()),
    ("connect named clients", d(allow("iot:Connect", [f"{A}:client/client1", f"{A}:client/client2"])), set()),
    ("subscribe #", d(allow("iot:Subscribe", f"{A}:topicfilter/#")), {"SUBSCRIBE_ALL_TOPICS"}),
    ("subscribe topicfilter/*", d(allow("iot:Subscribe", f"{A}:topicfilter/*")), {"SUBSCRIBE_ALL_TOPICS"}),
    ("subscribe shadow of every thing with +", d(allow("iot:Subscribe", f"{A}:topicfilter/$aws/things/+/shadow/update")), {"SUBSCRIBE_ANY_THING"}),
    ("subscribe $aws/things/*", d(allow("iot:Subscribe", f"{A}:topicfilter/$aws/things/*")), {"SUBSCRIBE_ANY_THING"}),
    ("subscribe own shadow", d(allow("iot:Subscribe", f"{A}:topicfilter/$aws/things/${{iot:Connection.Thing.ThingName}}/shadow/*")), set()),
    ("subscribe with client id variable", d(allow("iot:Subscribe", f"{A}:topicfilter/my/${{iot:ClientId}}/topic")), {"TOPICFILTER_CLIENTID_VARIABLE"}),
    ("publish topic/*", d(allow("iot:Publish", f"{A}:topic/*")), {"PUBLISH_ALL_TOPICS"}),
    ("publish every thing's shadow", d(allow("iot:Publish", f"{A}:topic/$aws/things/*/shadow/update")), {"PUBLISH_ANY_THING"}),
    ("publish own subtree", d(allow("iot:Publish", f"{A}:topic/${{iot:Connection.Thing.ThingName}}/*")), set()),
    ("receive topic/*", d(allow("iot:Receive", f"{A}:topic/*")), {"RECEIVE_ALL_TOPICS"}),
    ("receive $aws/things/* is compliant", d(allow("iot:Receive", f"{A}:topic/$aws/things/*")), set()),
    ("shadow actions on thing/*", d(allow(["iot:GetThingShadow", "iot:UpdateThingShadow"], f"{A}:thing/*")), {"THING_ANY"}),
    ("shadow actions on named things", d(allow("iot:GetThingShadow", [f"{A}:thing/MyThing1", f"{A}:thing/MyThing2"])), set()),
    ("Allow NotAction", d({"Effect": "Allow", "NotAction": "iot:Connect", "Resource": f"{A}:topic/a"}), {"ALLOW_WITH_NOT_ACTION"}),
    ("Allow NotResource", d({"Effect": "Allow", "Action": "iot:Receive", "NotResource": f"{A}:topic/a/restricted/*"}), {"ALLOW_WITH_NOT_RESOURCE"}),
    ("Subscribe on a topic resource", d(allow("iot:Subscribe", f"{A}:topic/$aws/events/jobExecution/*")), {"RESOURCE_TYPE_MISMATCH"}),
    ("Publish on a topicfilter resource", d(allow("iot:Publish", f"{A}:topicfilter/a/b")), {"RESOURCE_TYPE_MISMATCH"}),
    ("Publish and Subscribe on both kinds", d(allow(["iot:Publish", "iot:Subscribe"], [f"{A}:topic/a", f"{A}:topicfilter/a"])), set()),
    ("+ in a topic resource", d(allow("iot:Publish", f"{A}:topic/a/+/b")), {"MQTT_WILDCARD_IS_LITERAL"}),
    ("+ in a topicfilter is a fine literal", d(allow("iot:Subscribe", f"{A}:topicfilter/some/+/topic")), set()),
    ("unknown variable", d(allow("iot:Publish", f"{A}:topic/my/topic/${{iot:Thing.ThingName}}")), {"UNKNOWN_VARIABLE"}),
    ("unknown condition key", d(allow("iot:Publish", f"{A}:topic/a", Condition={"StringEquals": {"iot:Colour": "red"}})), {"UNKNOWN_CONDITION_KEY"}),
    ("Deny with a thing variable", d({"Effect": "Deny", "Action": "iot:Publish",
                                      "Resource": f"{A}:topic/${{iot:Connection.Thing.ThingName}}/bar"}), {"DENY_WITH_THING_VARIABLE"}),
    ("broad Deny is fine", d({"Effect": "Deny", "Action": "iot:*", "Resource": "*"}), set()),
    ("action pattern matching nothing", d(allow("iot:Frob*", f"{A}:topic/a")), {"ACTION_MATCHES_NOTHING"}),
    ("variables in a 2008 policy", d(allow("iot:Publish", f"{A}:topic/${{iot:ClientId}}"), version="2008-10-17"), {"VARIABLES_NEED_2012_10_17"}),
    ("least-privilege device policy", d(
        allow("iot:Connect", f"{A}:client/${{iot:Connection.Thing.ThingName}}", Condition={"Bool": {"iot:Connection.Thing.IsAttached": "true"}}),
        allow("iot:Publish", f"{A}:topic/dt/${{iot:Connection.Thing.ThingName}}/*"),
        allow("iot:Subscribe", f"{A}:topicfilter/cmd/${{iot:Connection.Thing.ThingName}}/*"),
        allow("iot:Receive", f"{A}:topic/cmd/${{iot:Connection.Thing.ThingName}}/*")), set()),
]


@pytest.mark.parametrize("document, codes", [(doc, codes) for _, doc, codes in TABLE], ids=[n for n, _, _ in TABLE])
def test_lint_table(document, codes) -> None:
    findings = lint(document)
    assert {f.code for f in findings} == codes
    for f in findings:
        assert isinstance(f, Finding) and f.message and f.severity in ("LOW", "MEDIUM", "HIGH", "CRITICAL")


def test_lint_points_at_the_statement() -> None:
    policy = parse_policy(d(allow("iot:Connect", f"{A}:client/c1"), allow("iot:Publish", f"{A}:topic/ok"), allow("iot:Subscribe", f"{A}:topicfilter/#")))
    findings = lint(policy)
    assert [(f.statement_index, f.code) for f in findings] == [(2, "SUBSCRIBE_ALL_TOPICS")]
    assert "topicfilter/#" in findings[0].message


def test_lint_accepts_text() -> None:
    assert lint('{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}}')[0].severity == "CRITICAL"
