"""Provisioning templates and CA registration configs in the registry, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from gateway.registry import AlreadyExists, InvalidValue, NotFound

BODY = json.dumps({"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "x"}}}})
CA_ID = "c" * 64


def test_templates_round_trip_and_version_with_their_body(registry):
    t = registry.create_provisioning_template("fleet", BODY, description="d", role_arn="arn:aws:iam::1:role/r",
                                              pre_provisioning_hook={"targetArn": "hook", "payloadVersion": "2020-04-01"})
    assert (t.version, t.enabled, t.template_type) == (1, True, "FLEET_PROVISIONING")
    with pytest.raises(AlreadyExists):
        registry.create_provisioning_template("fleet", BODY)
    other = json.dumps({"Resources": {"q": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "y"}}}})
    assert registry.update_provisioning_template("fleet", body=other).version == 2
    assert registry.update_provisioning_template("fleet", enabled=False).version == 2
    got = registry.get_provisioning_template("fleet")
    assert (got.body, got.enabled, got.pre_provisioning_hook["targetArn"]) == (other, False, "hook")
    assert registry.update_provisioning_template("fleet", pre_provisioning_hook=None).pre_provisioning_hook is None
    assert [t.name for t in registry.list_provisioning_templates()] == ["fleet"]
    registry.delete_provisioning_template("fleet")
    with pytest.raises(NotFound):
        registry.get_provisioning_template("fleet")


@pytest.mark.parametrize("name, body, message", [
    ("bad name!", BODY, "template name"),
    ("ok", "[1]", "not a JSON object"),
    ("ok", "{", "not JSON"),
    ("ok", json.dumps({"Resources": {}, "x": "y" * 11_000}), "at most 10240"),
])
def test_bad_templates_are_refused(registry, name, body, message):
    with pytest.raises(InvalidValue, match=message):
        registry.create_provisioning_template(name, body)


def test_a_cas_registration_config_names_a_body_or_a_jitp_template(registry):
    registry.register_ca(CA_ID, "PEM", "CN=f")
    assert registry.ca_registration_template(CA_ID) == (None, None)
    registry.set_ca_registration(CA_ID, auto_registration=True, template_body_text=BODY, role_arn="arn:r")
    assert registry.get_ca(CA_ID).auto_registration is True
    assert registry.ca_registration_template(CA_ID) == (BODY, "arn:r")
    registry.create_provisioning_template("jitp", BODY, template_type="JITP")
    registry.set_ca_registration(CA_ID, auto_registration=True, template="jitp")
    assert registry.ca_registration_configs() == {CA_ID: (BODY, None)}
    with pytest.raises(InvalidValue, match="JITP template of CA"):
        registry.delete_provisioning_template("jitp")
    registry.create_provisioning_template("claims", BODY)
    with pytest.raises(InvalidValue, match="of type FLEET_PROVISIONING"):
        registry.set_ca_registration(CA_ID, auto_registration=True, template="claims")
    registry.set_ca_registration(CA_ID, auto_registration=False)
    assert registry.get_ca(CA_ID).auto_registration is False and registry.ca_registration_configs() == {}
    registry.delete_provisioning_template("jitp")
