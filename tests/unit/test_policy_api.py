"""The public surface others build on: Identity, Request, DecisionCache, TestAuthorization rendering, purity."""

from __future__ import annotations

import ast
import datetime
import hashlib
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.policy import (
    Decision,
    DecidedBy,
    DecisionCache,
    Identity,
    Request,
    ThingInfo,
    compile_policies,
    evaluate,
    parse_policy,
    test_authorization_response,
)

A = "arn:aws:iot:us-east-1:123456789012"
POLICY = parse_policy(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{A}:topic/${{iot:ClientId}}/*"},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": f"{A}:topic/*/secret"},
        ],
    },
    name="device",
    version="4",
)


def test_decision_values() -> None:
    compiled = compile_policies([POLICY], Identity())
    ok = compiled.evaluate(Request("iot:Publish", "topic/d1/t", "d1"))
    assert ok == Decision(True, (DecidedBy("device", "4", 0, "Allow"),))
    assert ok.auth_decision == "ALLOWED" and not ok.explicit_deny
    no = compiled.evaluate(Request("iot:Publish", "topic/d1/secret", "d1"))
    assert no.decided_by == (DecidedBy("device", "4", 1, "Deny"),) and no.auth_decision == "EXPLICIT_DENY"
    none = compiled.evaluate(Request("iot:Publish", "topic/d2/t", "d1"))
    assert none == Decision(False) and none.auth_decision == "IMPLICIT_DENY"
    # decisions with the same deciding statements are shared values
    assert compiled.evaluate(Request("iot:Publish", "topic/d1/u", "d1")) is ok


def test_request_is_a_hashable_key_and_normalizes_attributes() -> None:
    r = Request("iot:Connect", "client/c", "c", "10.0.0.1", ["LastWill"])
    assert r.connect_attributes == frozenset({"LastWill"})
    assert hash(r) == hash(Request("iot:Connect", "client/c", "c", "10.0.0.1", {"LastWill"}))
    assert r._replace(client_id="d").client_id == "d"


def test_depends_on_declares_the_request_fields_that_matter() -> None:
    plain = compile_policies([parse_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{A}:topic/a"}]})])
    assert plain.depends_on == {"action", "resource"}
    assert compile_policies([POLICY]).depends_on == {"action", "resource", "client_id"}
    rich = compile_policies([parse_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*",
         "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}, "ForAnyValue:StringEquals": {"iot:ConnectAttributes": "LastWill"}}}]})])
    assert rich.depends_on == {"action", "resource", "source_ip", "connect_attributes", "last_will_topic"}


def test_cache_is_bounded_and_keeps_recent_entries() -> None:
    compiled = compile_policies([POLICY])
    cache = DecisionCache(compiled, max_entries=8)
    hot = Request("iot:Publish", "topic/d1/hot", "d1")
    for i in range(100):
        cache.evaluate(Request("iot:Publish", f"topic/d1/{i}", "d1"))
        cache.evaluate(hot)
        assert len(cache) <= 8
    misses = cache.misses
    assert cache.evaluate(hot).allowed and cache.misses == misses  # a hot entry survives eviction
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        DecisionCache(compiled, max_entries=1)


def test_cache_key_covers_every_varying_field() -> None:
    policy = parse_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{A}:client/${{iot:ClientId}}",
         "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"},
                       "ForAllValues:StringEquals": {"iot:ConnectAttributes": ["LastWill"]}}}]})
    cache = DecisionCache(compile_policies([policy]), max_entries=16)
    base = Request("iot:Connect", "client/c1", "c1", "10.0.0.1", ["LastWill"])
    assert cache.evaluate(base).allowed
    assert not cache.evaluate(base._replace(source_ip="192.0.2.1")).allowed
    assert not cache.evaluate(base._replace(client_id="c2")).allowed
    assert not cache.evaluate(Request("iot:Connect", "client/c1", "c1", "10.0.0.1", ["PersistentConnect"])).allowed
    assert not cache.evaluate(base._replace(action="iot:Publish")).allowed
    assert cache.evaluate(base).allowed


@pytest.mark.parametrize(
    "req",
    [
        Request(None, None),  # type: ignore[arg-type]
        Request("iot:Publish", 17, client_id=["x"]),  # type: ignore[arg-type]
        Request("iot:Publish", "topic/a", client_id=b"bytes", source_ip=3),  # type: ignore[arg-type]
        Request("iot:Connect", "client/c", "c", connect_attributes=[1, None]),
        Request("iot:Publish", "arn:", "c"),
        Request("iot:Publish", "arn:aws:iot:us-east-1:123456789012", "c"),
    ],
)
def test_odd_requests_are_refused_not_raised(req) -> None:
    compiled = compile_policies([POLICY])
    decision = compiled.evaluate(req)
    assert decision.allowed is False
    assert DecisionCache(compiled).evaluate(req).allowed is False


def test_compile_checks_region_and_account() -> None:
    with pytest.raises(ValueError, match="region"):
        compile_policies([POLICY], region="US East")
    with pytest.raises(ValueError, match="account"):
        compile_policies([POLICY], account="")
    assert evaluate([POLICY], Request("iot:Publish", "arn:aws-cn:iot:cn-north-1:123456789012:topic/c/x", "c"),
                    region="cn-north-1", partition="aws-cn").allowed is False  # policy ARNs name partition aws


def test_identity_accepts_short_names_and_refuses_unknown_fields() -> None:
    ident = Identity(subject={"CN": "dev-1", "O": ["acme"], "serialNumber": "9"}, san={"DNS": ["d.example"], "IP": "10.0.0.1"})
    assert ident.subject["CommonName"] == ("dev-1",) and ident.subject["SerialNumber"] == ("9",)
    assert ident.san["DNSName"] == ("d.example",) and ident.san["IPAddress"] == ("10.0.0.1",)
    odd = Identity(subject={"Locality": "Seattle", "CN": "d"})  # kept, but AWS IoT has no Locality variable
    assert odd.subject["Locality"] == ("Seattle",)
    policy = parse_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{A}:topic/${{iot:Certificate.Subject.Locality}}"}]})
    assert not compile_policies([policy], odd).evaluate(Request("iot:Publish", "topic/Seattle", "c")).allowed
    t = Identity(things={"t1": {"thing_type": "lamp", "attributes": {"floor": 3}}}).things["t1"]
    assert t.name == "t1" and t.attributes["floor"] == "3"


def _certificate():
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "IoT Devices"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "LightBulb"),
        x509.NameAttribute(NameOID.COMMON_NAME, "LightBulb Device Cert"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Administrator"),
    ])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "IoT Devices Primary CA"), x509.NameAttribute(NameOID.INITIALS, "XY")])
    now = datetime.datetime(2024, 3, 26, 3, 25, 40, tzinfo=datetime.timezone.utc)
    san = x509.SubjectAlternativeName([
        x509.DNSName("example.com"),
        x509.IPAddress(ipaddress.ip_address("1.2.3.4")),
        x509.UniformResourceIdentifier("ResourceIdentifier001"),
        x509.RFC822Name("device1@example.com"),
        x509.DirectoryName(x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "IoT"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "SmartHome"),
            x509.NameAttribute(NameOID.COMMON_NAME, "LightBulbCert"),
        ])),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(0x921285CBB7A5E086)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=398))
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert


def test_identity_from_certificate() -> None:
    cert = _certificate()
    ident = Identity.from_certificate(cert, things=[ThingInfo("bulb1", "lamp")])
    assert ident.certificate_id == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert ident.serial_number == "10525622389124227206"  # AWS IoT's decimal form of 92:12:85:cb:b7:a5:e0:86
    assert ident.subject["CommonName"] == ("LightBulb Device Cert", "Administrator")
    assert ident.issuer["Initials"] == ("XY",)
    assert ident.san["DNSName"] == ("example.com",) and ident.san["IPAddress"] == ("1.2.3.4",)
    assert ident.san["DirectoryName"] == ("cn=LightBulbCert,ou=SmartHome,o=IoT,c=US",)
    assert ident.things["bulb1"].thing_type == "lamp"
    assert ident.not_after.year == 2025

    policy = parse_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{A}:client/${{iot:Certificate.SerialNumber}}"},
        {"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{A}:topic/admin/*",
         "Condition": {"StringEquals": {"iot:Certificate.Subject.CommonName.1": "Administrator"}}}]})
    compiled = compile_policies([policy], ident)
    assert compiled.evaluate(Request("iot:Connect", "client/10525622389124227206", "10525622389124227206")).allowed
    assert compiled.evaluate(Request("iot:Publish", "topic/admin/reboot", "x")).allowed


def test_authorization_response_shapes() -> None:
    other = parse_policy({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}, name="admin")
    policies = [POLICY, other]
    compiled = compile_policies(policies)

    req = Request("iot:Publish", "topic/d1/t", "d1")
    out = test_authorization_response(compiled.evaluate(req), req, policies)
    assert out == {
        "authInfo": {"actionType": "PUBLISH", "resources": [f"{A}:topic/d1/t"]},
        "allowed": {"policies": [
            {"policyName": "device", "policyArn": f"{A}:policy/device"},
            {"policyName": "admin", "policyArn": f"{A}:policy/admin"},
        ]},
        "denied": {"implicitDeny": {"policies": []}, "explicitDeny": {"policies": []}},
        "authDecision": "ALLOWED",
        "missingContextValues": [],
    }
    req = Request("iot:Publish", f"{A}:topic/d1/secret", "d1")
    out = test_authorization_response(compiled.evaluate(req), req, policies)
    assert out["authDecision"] == "EXPLICIT_DENY"
    assert out["denied"]["explicitDeny"]["policies"] == [{"policyName": "device", "policyArn": f"{A}:policy/device"}]
    assert out["allowed"]["policies"] == [] and out["authInfo"]["resources"] == [f"{A}:topic/d1/secret"]

    only = [POLICY]
    req = Request("iot:Subscribe", "topicfilter/d1/#", "d1")
    out = test_authorization_response(compile_policies(only).evaluate(req), req, only)
    assert out["authDecision"] == "IMPLICIT_DENY" and out["authInfo"]["actionType"] == "SUBSCRIBE"
    assert out["denied"]["implicitDeny"]["policies"] == [{"policyName": "device", "policyArn": f"{A}:policy/device"}]

    req = Request("iot:RetainPublish", "topic/x", "d1")
    assert test_authorization_response(Decision(False), req, only)["authInfo"]["actionType"] == "RETAINPUBLISH"


FORBIDDEN = {"os", "socket", "ssl", "asyncio", "subprocess", "selectors", "threading", "time", "pathlib", "io"}


def test_policy_package_is_pure() -> None:
    root = Path(__file__).resolve().parents[2] / "gateway" / "policy"
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not FORBIDDEN & set(names), f"{path.name} imports {FORBIDDEN & set(names)}"
