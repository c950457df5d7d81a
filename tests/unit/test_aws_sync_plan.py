"""The pure half of `iotgate aws sync`: registry vs account -> actions."""

from __future__ import annotations

import json

from devices.aws_sync import (CertRef, Desired, LocalCA, LocalCert, LocalTemplate, LocalThing, Observed, RemoteCA,
                              RemotePolicy, RemoteTemplate, plan)

DOC = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect",
                                                           "Resource": "*"}]})
CA = "a" * 64
CERT = "b" * 64


def desired(**kw) -> Desired:
    base = dict(cas={CA: LocalCA(CA, "CA-PEM", "ACTIVE", False)},
                certificates={CERT: LocalCert(CERT, "PEM", "ACTIVE", CA)},
                things={"t1": LocalThing("t1", None, {"a": "1"})}, policies={"p": DOC},
                cert_policies={CERT: ("p",)}, cert_things={CERT: ("t1",)})
    base.update(kw)
    return Desired(**base)


def observed(**kw) -> Observed:
    base = dict(cas={CA: RemoteCA("ACTIVE", False, None, None)}, certificates={CERT: "ACTIVE"},
                things={"t1": LocalThing("t1", None, {"a": "1"})}, thing_types=frozenset(),
                policies={"p": RemotePolicy(json.dumps(json.loads(DOC), indent=2), (("1", True, ""),))},
                cert_policies={CERT: frozenset({"p"})}, thing_principals={"t1": frozenset({CERT})},
                all_policy_names=frozenset({"p"}))
    base.update(kw)
    return Observed(**base)


def ops(p) -> list[tuple[str, str]]:
    return [(a.operation, a.name) for a in p.actions]


def test_equal_states_plan_nothing_even_when_the_account_formats_the_json_differently():
    p = plan(desired(), observed())
    assert p.actions == () and p.conflicts == () and p.only_in_aws == {}


def test_an_empty_account_gets_everything_in_dependency_order():
    p = plan(desired(things={"t1": LocalThing("t1", "sensor", {})}),
             Observed({}, {}, {}, frozenset(), {}, {}, {}))
    assert [op for op, _ in ops(p)] == ["register_ca_certificate", "create_thing_type", "create_policy",
                                        "register_certificate", "create_thing", "attach_policy",
                                        "attach_thing_principal"]
    register = p.actions[3]
    assert register.params == {"certificatePem": "PEM", "caCertificatePem": "CA-PEM", "status": "ACTIVE"}
    assert p.actions[5].params["target"] == CertRef(CERT)
    assert p.actions[0].params["certificateMode"] == "SNI_ONLY"  # no verification certificate: key not here


def test_a_sixth_policy_version_first_deletes_the_oldest_non_default():
    versions = (("1", False, ""), ("2", True, ""), ("3", False, ""), ("4", False, ""), ("5", False, ""))
    other = json.dumps({"Version": "2012-10-17", "Statement": []})
    p = plan(desired(), observed(policies={"p": RemotePolicy(other, versions)}))
    assert ops(p) == [("delete_policy_version", "p v1"), ("create_policy_version", "p")]
    assert p.actions[1].params["setAsDefault"] is True


def test_attributes_removed_here_are_emptied_there_and_the_type_removed():
    p = plan(desired(), observed(things={"t1": LocalThing("t1", "old", {"a": "1", "gone": "x"})}))
    (action,) = p.actions
    assert action.operation == "update_thing"
    assert action.params == {"thingName": "t1", "removeThingType": True,
                             "attributePayload": {"attributes": {"gone": "", "a": "1"}, "merge": True}}


def test_revoked_here_and_absent_there_is_skipped_and_revoked_there_is_a_conflict():
    p = plan(desired(certificates={CERT: LocalCert(CERT, "PEM", "REVOKED", CA)}), observed(certificates={}))
    assert not any(a.kind == "certificate" for a in p.actions) and "REVOKED here" in p.skipped[0]
    p = plan(desired(), observed(certificates={CERT: "REVOKED"}))
    assert [c.name for c in p.conflicts] == [CERT]


def test_ca_auto_registration_and_template_changes_are_one_update():
    ca = LocalCA(CA, "CA-PEM", "ACTIVE", True, '{"Resources": {}}', "arn:aws:iam::1:role/r")
    p = plan(desired(cas={CA: ca}), observed())
    (action,) = p.actions
    assert action.params == {"certificateId": CA, "newAutoRegistrationStatus": "ENABLE",
                             "registrationConfig": {"templateBody": '{"Resources": {}}',
                                                    "roleArn": "arn:aws:iam::1:role/r"}}


def test_templates_created_updated_or_skipped_when_the_endpoint_lacks_the_api():
    tpl = LocalTemplate("fleet", '{"Resources": {}}', True, "", "arn:aws:iam::1:role/p", "FLEET_PROVISIONING")
    p = plan(desired(templates={"fleet": tpl}), observed())
    assert ops(p) == [("create_provisioning_template", "fleet")]
    remote = RemoteTemplate('{"Resources": {"x": 1}}', False, "", "arn:aws:iam::1:role/p", ((1, True),))
    p = plan(desired(templates={"fleet": tpl}), observed(templates={"fleet": remote}))
    assert ops(p) == [("create_provisioning_template_version", "fleet"), ("update_provisioning_template", "fleet")]
    p = plan(desired(templates={"fleet": tpl}), observed(templates_supported=False))
    assert p.actions == () and "provisioning template" in p.skipped[0]


def test_a_template_without_a_provisioning_role_is_skipped_with_what_to_do():
    tpl = LocalTemplate("fleet", '{"Resources": {}}', True, "", None, "FLEET_PROVISIONING")
    p = plan(desired(templates={"fleet": tpl}), observed())
    assert p.actions == () and "--role-arn" in p.skipped[0]
