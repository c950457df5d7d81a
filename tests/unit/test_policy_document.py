"""Documents refused at load: each message names the place (statement index and field) and the fault."""

from __future__ import annotations

import json

import pytest

from certs.errors import IotgateError
from gateway.policy import PolicyError, parse_policy

ARN = "arn:aws:iot:us-east-1:123456789012"
OK = {"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{ARN}:topic/a"}


def doc(*statements, **top):
    d = {"Version": "2012-10-17", "Statement": list(statements)}
    d.update(top)
    return d


def st(**fields):
    s = dict(OK)
    for k, v in fields.items():
        if v is None:
            s.pop(k, None)
        else:
            s[k] = v
    return s


INVALID = [
    ("not JSON", '{"Version": "2012-10-17", "Statement": [', "document: not valid JSON"),
    ("JSON array", "[]", "document: must be a JSON object"),
    ("trailing comma", '{"Version": "2012-10-17", "Statement": [],}', "not valid JSON"),
    ("duplicate key", '{"Version": "2012-10-17", "Version": "2012-10-17", "Statement": []}', "duplicate key 'Version'"),
    ("no Version", {"Statement": [OK]}, "Version: missing"),
    ("bad Version", {"Version": "2020-01-01", "Statement": [OK]}, "Version: unsupported '2020-01-01'"),
    ("Version as number", {"Version": 2012, "Statement": [OK]}, "Version: unsupported 2012"),
    ("no Statement", {"Version": "2012-10-17"}, "Statement: missing"),
    ("empty Statement", doc(), "Statement: must be a statement object or a non-empty list"),
    ("Statement a string", {"Version": "2012-10-17", "Statement": "x"}, "Statement: must be"),
    ("unknown top-level field", doc(OK, Extra=1), "Extra: unknown top-level field"),
    ("statement not an object", doc(OK, "x"), "Statement[1]: must be an object"),
    ("no Effect", doc(st(Effect=None)), "Statement[0].Effect: missing"),
    ("lower-case effect", doc(OK, st(Effect="allow")), 'Statement[1].Effect: unknown effect "allow"'),
    ("unknown effect", doc(st(Effect="Permit")), 'Statement[0].Effect: unknown effect "Permit"'),
    ("typo action", doc(OK, OK, st(Action="iot:Publsh")), 'Statement[2].Action: unknown action "iot:Publsh"; did you mean "iot:Publish"?'),
    ("unknown iot action", doc(st(Action=["iot:Publish", "iot:Teleport"])), 'Statement[0].Action: unknown action "iot:Teleport"'),
    ("foreign service", doc(st(Action="s3:GetObject")), 'Statement[0].Action: "s3:GetObject" is not an AWS IoT action'),
    ("no service prefix", doc(st(Action="Publish")), 'Statement[0].Action: "Publish" is not an action'),
    ("wildcard service", doc(st(Action="io*:Publish")), 'Statement[0].Action: "io*:Publish": wildcards are not allowed in the service prefix'),
    ("empty Action list", doc(st(Action=[])), "Statement[0].Action: must not be empty"),
    ("Action not a string", doc(st(Action=[1])), "Statement[0].Action: entry 0 must be a string"),
    ("Action and NotAction", doc(st(NotAction="iot:Receive")), "Statement[0].NotAction: a statement has either Action or NotAction"),
    ("no Action", doc(st(Action=None)), "Statement[0].Action: missing"),
    ("unknown NotAction", doc(st(Action=None, NotAction="iot:Recieve")), 'Statement[0].NotAction: unknown action "iot:Recieve"'),
    ("no Resource", doc(OK, st(Resource=None)), "Statement[1].Resource: missing"),
    ("Resource and NotResource", doc(st(NotResource="*")), "Statement[0].NotResource: a statement has either Resource or NotResource"),
    ("empty Resource", doc(st(Resource=[])), "Statement[0].Resource: must not be empty"),
    ("Resource object", doc(st(Resource={"a": 1})), "Statement[0].Resource: must be a string or a list"),
    ("not an ARN", doc(st(Resource="topic/a")), 'Statement[0].Resource: "topic/a" is not an ARN'),
    ("S3 ARN", doc(st(Resource="arn:aws:s3:::bucket/key")), "Statement[0].Resource: \"arn:aws:s3:::bucket/key\" is an ARN of service 's3'"),
    ("bad partition", doc(st(Resource="arn:amazon:iot:us-east-1:123456789012:topic/a")), "has partition 'amazon'"),
    ("short ARN", doc(st(Resource="arn:aws:iot:us-east-1:topic/a")), "is not an ARN"),
    ("bad region", doc(st(Resource="arn:aws:iot:US_EAST:123456789012:topic/a")), "has region 'US_EAST'"),
    ("bad account", doc(st(Resource="arn:aws:iot:us-east-1:12-34:topic/a")), "has account '12-34'"),
    ("unknown resource type", doc(st(Resource=f"{ARN}:topics/a")), "unknown resource type 'topics'; did you mean \"topic\"?"),
    ("resource without name", doc(st(Resource=f"{ARN}:topic")), "must be <type>/<name>"),
    ("empty resource part", doc(st(Resource=f"{ARN}:")), "names no resource"),
    ("NotResource bad ARN", doc(st(Resource=None, NotResource="arn:aws:sqs:us-east-1:1:q")), "Statement[0].NotResource"),
    ("Principal", doc(st(Principal={"AWS": "*"})), "Statement[0].Principal: not used in AWS IoT policies"),
    ("unknown statement field", doc(st(Conditions={})), "Statement[0].Conditions: unknown field"),
    ("Sid not a string", doc(st(Sid=1)), "Statement[0].Sid: must be a string"),
    ("Condition not an object", doc(st(Condition=["x"])), "Statement[0].Condition: must be an object"),
    ("unknown operator", doc(st(Condition={"StringEqual": {"iot:ClientId": "a"}})),
     'Statement[0].Condition: unknown condition operator "StringEqual"; did you mean "StringEquals"?'),
    ("unknown set qualifier", doc(st(Condition={"ForSomeValues:StringEquals": {"iot:ClientId": "a"}})),
     'unknown condition operator "ForSomeValues:StringEquals"'),
    ("NullIfExists", doc(st(Condition={"NullIfExists": {"iot:ClientId": "true"}})), 'unknown condition operator "NullIfExists"'),
    ("Date operators", doc(st(Condition={"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}})),
     'Statement[0].Condition: condition operator "DateLessThan" is not supported: no AWS IoT condition key holds a date'),
    ("Binary operator", doc(st(Condition={"BinaryEqualsIfExists": {"k": "QmluYXJ5"}})), 'condition operator "BinaryEqualsIfExists" is not supported'),
    ("operator block not an object", doc(st(Condition={"StringEquals": "x"})), "Statement[0].Condition.StringEquals: must be a non-empty object"),
    ("empty operator block", doc(st(Condition={"StringEquals": {}})), "Statement[0].Condition.StringEquals: must be a non-empty object"),
    ("value an object", doc(st(Condition={"StringEquals": {"iot:ClientId": {"a": 1}}})),
     'Statement[0].Condition.StringEquals["iot:ClientId"]: condition values are strings'),
    ("null value", doc(st(Condition={"StringEquals": {"iot:ClientId": None}})), "condition values are strings"),
    ("Bool not boolean", doc(st(Condition={"Bool": {"iot:Connection.Thing.IsAttached": "yes"}})), 'Bool takes "true" or "false"'),
    ("Null not boolean", doc(st(Condition={"Null": {"iot:ClientId": "maybe"}})), 'Null takes "true" or "false"'),
    ("bad CIDR", doc(st(Condition={"IpAddress": {"aws:SourceIp": "300.1.1.1/8"}})),
     'Statement[0].Condition.IpAddress["aws:SourceIp"]: "300.1.1.1/8" is not an IP address'),
    ("bad number", doc(st(Condition={"NumericLessThan": {"iot:Connection.Thing.Attributes[n]": "ten"}})), '"ten" is not a number'),
    ("ARN operator value not an ARN", doc(st(Condition={"ArnLike": {"iot:LastWillTopic": "topic/x"}})), '"topic/x" is not an ARN'),
    ("error in a later statement", doc(OK, OK, OK, st(Condition={"IpAddress": {"aws:SourceIp": "nope"}})), "Statement[3].Condition.IpAddress"),
    ("too long", doc(*[st(Resource=f"{ARN}:topic/{'x' * 200}/{i}") for i in range(10)]),
     "characters excluding whitespace; AWS IoT allows at most 2048"),
]


@pytest.mark.parametrize("document, fragment", [(d, f) for _, d, f in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_document_is_refused_with_its_place(document, fragment) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(document, name="device-policy")
    message = str(info.value)
    assert fragment in message
    assert message.startswith("policy 'device-policy': ")


def test_policy_error_is_an_iotgate_error() -> None:
    assert issubclass(PolicyError, IotgateError)
    with pytest.raises(IotgateError):
        parse_policy("nope")


def _sized(n: int) -> dict:
    """A document of exactly n characters excluding whitespace."""
    base = doc(st(Resource=f"{ARN}:topic/"))
    pad = n - len(json.dumps(base, separators=(",", ":")))
    return doc(st(Resource=f"{ARN}:topic/" + "x" * pad))


def test_length_limit_is_2048_characters_excluding_whitespace() -> None:
    at_limit = _sized(2048)
    assert len(json.dumps(at_limit, separators=(",", ":"))) == 2048
    parse_policy(json.dumps(at_limit, indent=8))  # indentation does not count
    parse_policy(at_limit)
    with pytest.raises(PolicyError, match="2049 characters excluding whitespace"):
        parse_policy(json.dumps(_sized(2049), indent=2))


VALID_DOCUMENTS = [
    ("minimal", doc(OK)),
    ("legacy version", {"Version": "2008-10-17", "Statement": [OK]}),
    ("single statement object", {"Version": "2012-10-17", "Statement": OK}),
    ("Id and Sid", {"Version": "2012-10-17", "Id": "fleet", "Statement": [st(Sid="pub")]}),
    ("resource star", doc(st(Resource="*"))),
    ("wildcard region and account", doc(st(Resource="arn:aws:iot:*:*:topic/a"))),
    ("wildcard resource type", doc(st(Resource="arn:aws:iot:us-east-1:123456789012:*"))),
    ("china partition", doc(st(Resource="arn:aws-cn:iot:cn-north-1:123456789012:topic/a"))),
    ("variable in ARN", doc(st(Resource=f"{ARN}:client/${{iot:Connection.Thing.ThingName}}"))),
    ("action wildcards", doc(st(Action=["iot:*", "iot:Pub*", "*"]))),
    ("iotjobsdata action", doc(st(Action="iotjobsdata:DescribeJobExecution", Resource=f"{ARN}:thing/t"))),
    ("empty condition list", doc(st(Condition={"ForAllValues:StringEquals": {"iot:ConnectAttributes": []}}))),
    ("condition JSON scalars", doc(st(Condition={"Bool": {"k": True}, "NumericEquals": {"n": 3}}))),
    ("IfExists and sets", doc(st(Condition={"ForAnyValue:StringLikeIfExists": {"iot:ClientId": ["a*", "b?"]}}))),
    ("IPv6", doc(st(Condition={"NotIpAddress": {"aws:SourceIp": ["2001:db8::/32", "192.0.2.1"]}}))),
    ("bytes", json.dumps(doc(OK)).encode()),
]


@pytest.mark.parametrize("document", [d for _, d in VALID_DOCUMENTS], ids=[n for n, _ in VALID_DOCUMENTS])
def test_valid_document_loads(document) -> None:
    policy = parse_policy(document, name="ok", version="2")
    assert policy.name == "ok" and policy.version == "2"
    assert policy.statements


def test_document_is_immutable_and_round_trips() -> None:
    policy = parse_policy(doc(OK, st(Effect="Deny", Resource=f"{ARN}:topic/b")))
    with pytest.raises(AttributeError):
        policy.name = "other"  # type: ignore[misc]
    assert parse_policy(policy.text).statements == policy.statements
    assert policy.as_dict()["Statement"][1]["Effect"] == "Deny"
    assert [s.index for s in policy.statements] == [0, 1]


def test_policy_error_carries_place_and_problem() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc(OK, st(Effect="Permit")), name="p1")
    assert info.value.where == "Statement[1].Effect" and info.value.policy == "p1"
    assert str(PolicyError("policy 'x' is not registered")) == "policy 'x' is not registered"
