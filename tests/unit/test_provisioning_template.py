"""The provisioning-template engine as tables: template + parameters -> resources, or the error and where it is."""

from __future__ import annotations

import json

import pytest

from gateway.provisioning.template import TemplateError, parse

JITP = {
    "Parameters": {
        "AWS::IoT::Certificate::CommonName": {"Type": "String"},
        "AWS::IoT::Certificate::SerialNumber": {"Type": "String"},
        "AWS::IoT::Certificate::Country": {"Type": "String", "Default": "FR"},
        "AWS::IoT::Certificate::Id": {"Type": "String"},
    },
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"},
            "AttributePayload": {"version": "v1", "serialNumber": {"Ref": "AWS::IoT::Certificate::SerialNumber"}},
            "ThingTypeName": "lightBulb-versionA",
            "ThingGroups": ["v1-lightbulbs", {"Ref": "AWS::IoT::Certificate::Country"}]},
            "OverrideSettings": {"AttributePayload": "MERGE", "ThingTypeName": "REPLACE", "ThingGroups": "DO_NOTHING"}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]})}},
    },
}

CERT_PARAMS = {"AWS::IoT::Certificate::CommonName": "bulb-7", "AWS::IoT::Certificate::SerialNumber": "1234",
               "AWS::IoT::Certificate::Id": "ab" * 32}


def test_the_aws_jitp_example_resolves_to_one_thing_one_certificate_one_policy():
    r = parse(json.dumps(JITP)).resolve(CERT_PARAMS)
    assert (r.thing.thing_name, r.thing.thing_type, dict(r.thing.attributes), r.thing.thing_groups) == (
        "bulb-7", "lightBulb-versionA", {"version": "v1", "serialNumber": "1234"}, ("v1-lightbulbs", "FR"))
    assert r.thing.overrides["AttributePayload"] == "MERGE"
    assert (r.certificate.certificate_id, r.certificate.status) == ("ab" * 32, "ACTIVE")
    (policy,) = r.policies
    assert policy.policy_name is None and json.loads(policy.document)["Statement"][0]["Action"] == "iot:Connect"


def _one(expr, params=None, **sections):
    """Resolve `expr` as a thing's ThingName."""
    doc = {"Parameters": {k: {"Type": "String"} for k in (params or {})},
           "Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": expr}}}, **sections}
    return parse(doc).resolve(params or {}).thing.thing_name


FLEET = {"SerialNumber": "123", "Site": "lyon-2", "Csv": "a,b,c"}
CONDITIONS = {"IsLyon": {"Fn::Equals": [{"Ref": "Site"}, "lyon-2"]},
              "NotLyon": {"Fn::Not": [{"Condition": "IsLyon"}]},
              "Both": {"Fn::And": [{"Condition": "IsLyon"}, {"Fn::Equals": ["1", "1"]}]},
              "Either": {"Fn::Or": [{"Condition": "NotLyon"}, {"Fn::Equals": ["1", "2"]}]}}


@pytest.mark.parametrize("expr, expected", [
    ({"Fn::Join": ["-", ["dev", {"Ref": "SerialNumber"}]]}, "dev-123"),
    ({"Fn::Sub": "dev-${SerialNumber}-${Site}"}, "dev-123-lyon-2"),
    ({"Fn::Sub": ["${Prefix}_${SerialNumber}", {"Prefix": {"Fn::Join": ["", ["x", "y"]]}}]}, "xy_123"),
    ({"Fn::Sub": "literal-${!Name}"}, "literal-${Name}"),
    ({"Fn::Select": [1, {"Fn::Split": [",", {"Ref": "Csv"}]}]}, "b"),
    ({"Fn::Select": ["2", {"Fn::Split": [",", {"Ref": "Csv"}]}]}, "c"),
    ({"Fn::If": ["IsLyon", "in-lyon", "elsewhere"]}, "in-lyon"),
    ({"Fn::If": ["NotLyon", "x", {"Fn::Join": ["", ["b", "oth"]]}]}, "both"),
    ({"Fn::If": ["Both", "both-true", "no"]}, "both-true"),
    ({"Fn::If": ["Either", "yes", "either-false"]}, "either-false"),
    ({"Fn::FindInMap": ["Sites", {"Ref": "Site"}, "Prefix"]}, "LY"),
    ({"Fn::Base64": "ab"}, "YWI="),
])
def test_intrinsic_functions(expr, expected):
    assert _one(expr, FLEET, Conditions=CONDITIONS, Mappings={"Sites": {"lyon-2": {"Prefix": "LY"}}}) == expected


@pytest.mark.parametrize("doc, where, message", [
    ({"Resources": {}}, "Resources", "at least one resource"),
    ({"Parameters": {}, "Resources": {"t": {"Type": "AWS::IoT::Bucket"}}}, "Resources.t.Type", "is not one of"),
    ({"Resorces": {}}, "Resorces", "unknown section"),
    ({"Parameters": {"A": {"Type": "Number"}}, "Resources": {"t": {"Type": "AWS::IoT::Policy",
                                                                   "Properties": {"PolicyName": "p"}}}},
     "Parameters.A.Type", "Type String"),
    ({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "Nope"}}}}},
     "Resources.t.Properties.ThingName", "names no parameter"),
    ({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::GetAtt": ["a", "b"]}}}}},
     "Resources.t.Properties.ThingName", "Fn::GetAtt is not supported"),
    ({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingNam": "x"}}}},
     "Resources.t.Properties.ThingNam", "unknown property"),
    ({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "x"},
                          "OverrideSettings": {"AttributePayload": "KEEP"}}}},
     "Resources.t.OverrideSettings.AttributePayload", "'KEEP' is not one of"),
    ({"Resources": {"a": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "x"}},
                    "b": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "y"}}}},
     "Resources", "at most one"),
    ({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::If": ["C", "a", "b"]}}}}},
     "Resources.t.Properties.ThingName", "Conditions section"),
])
def test_templates_that_cannot_be_used_are_refused_where_they_are_wrong(doc, where, message):
    with pytest.raises(TemplateError) as info:
        parse(doc)
    assert info.value.where == where and message in info.value.message


@pytest.mark.parametrize("expr, params, where, message", [
    ({"Ref": "SerialNumber"}, {}, "Parameters.SerialNumber", "no value given and no Default"),
    ({"Fn::Select": [5, ["a"]]}, {"SerialNumber": "1"}, "Resources.t.Properties.ThingName.Fn::Select",
     "out of range"),
    ({"Fn::Split": [",", ["a"]]}, {"SerialNumber": "1"}, "Resources.t.Properties.ThingName.Fn::Split[1]",
     "must resolve to a string"),
    ({"Fn::Sub": "x-${Missing}"}, {"SerialNumber": "1"}, "Resources.t.Properties.ThingName.Fn::Sub",
     "${Missing} names no parameter"),
    ({"Fn::Split": [",", "a,b"]}, {"SerialNumber": "1"}, "Resources.t.Properties.ThingName",
     "must resolve to a string, got list"),
])
def test_values_that_cannot_resolve_name_the_place(expr, params, where, message):
    doc = {"Parameters": {"SerialNumber": {"Type": "String"}},
           "Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": expr}}}}
    with pytest.raises(TemplateError) as info:
        parse(doc).resolve(params)
    assert info.value.where == where and message in info.value.message


def test_a_resource_under_a_false_condition_is_not_provisioned_and_device_configuration_is_resolved():
    doc = {"Parameters": {"Site": {"Type": "String"}},
           "Conditions": {"IsLyon": {"Fn::Equals": [{"Ref": "Site"}, "lyon"]}},
           "Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t1"}},
                         "p": {"Type": "AWS::IoT::Policy", "Condition": "IsLyon", "Properties": {"PolicyName": "lyon"}}},
           "DeviceConfiguration": {"site": {"Ref": "Site"}, "fallback": "8883"}}
    t = parse(doc)
    assert [p.policy_name for p in t.resolve({"Site": "lyon"}).policies] == ["lyon"]
    r = t.resolve({"Site": "paris"})
    assert r.policies == () and dict(r.device_configuration) == {"site": "paris", "fallback": "8883"}


def test_a_certificate_resource_names_exactly_one_source():
    doc = {"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"Status": "ACTIVE"}}}}
    with pytest.raises(TemplateError, match="exactly one of CertificateId"):
        parse(doc).resolve({})


def test_jitp_parameters_come_from_the_subject_only():
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from gateway.provisioning.template import certificate_parameters

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bulb-1"),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-778"),
                         x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(12345).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    assert certificate_parameters(cert, "ab" * 32) == {
        "AWS::IoT::Certificate::CommonName": "bulb-1", "AWS::IoT::Certificate::SerialNumber": "SN-778",
        "AWS::IoT::Certificate::Country": "FR", "AWS::IoT::Certificate::Id": "ab" * 32}
