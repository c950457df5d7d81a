"""`iotgate template` and `iotgate ca register|update --auto-registration` as a user types them."""

from __future__ import annotations

import json

from certs.authority import build_root_ca, cert_pem, certificate_id
from certs.keys import generate_private_key
from certs.authority import utcnow

TEMPLATE = {
    "Parameters": {"AWS::IoT::Certificate::CommonName": {"Type": "String"},
                   "AWS::IoT::Certificate::Id": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}},
        "certificate": {"Type": "AWS::IoT::Certificate",
                        "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}},
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "iotgate-device"}},
    },
}


def test_templates_are_checked_created_listed_updated_and_deleted(pki_cli, tmp_path):
    body = tmp_path / "jitp.json"
    body.write_text(json.dumps(TEMPLATE))
    pki_cli("template", "create", "factory", str(body), "--type", "JITP", "--description", "line 1")
    rows = pki_cli("template", "list", "--json").json()
    assert [(r["templateName"], r["type"], r["enabled"], r["defaultVersionId"]) for r in rows] == [
        ("factory", "JITP", True, 1)]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Resources": {"t": {"Type": "AWS::IoT::Thing",
                                                    "Properties": {"ThingName": {"Ref": "Serial"}}}}}))
    r = pki_cli("template", "create", "broken", str(bad), expect=2)
    assert "Resources.t.Properties.ThingName: Ref 'Serial' names no parameter" in r.err
    assert len(pki_cli("template", "list", "--json").json()) == 1
    changed = dict(TEMPLATE, Parameters={**TEMPLATE["Parameters"], "Site": {"Type": "String", "Default": "x"}})
    body.write_text(json.dumps(changed))
    r = pki_cli("template", "update", "factory", "--file", str(body), "--disabled")
    assert "version 2, disabled" in r.out
    assert pki_cli("template", "show", "factory", "--json").json()["enabled"] is False
    pki_cli("template", "delete", "factory")
    assert pki_cli("template", "list", "--json").json() == []


def test_a_ca_registered_with_auto_registration_and_a_jitp_template(pki_cli, tmp_path):
    authority = build_root_ca(generate_private_key("ec-p256"), "Factory Root", now=utcnow())
    (tmp_path / "ca.pem").write_bytes(cert_pem(authority.certificate))
    (tmp_path / "jitp.json").write_text(json.dumps(TEMPLATE))
    pki_cli("template", "create", "factory", str(tmp_path / "jitp.json"), "--type", "JITP")
    r = pki_cli("ca", "register", str(tmp_path / "ca.pem"), "--auto-registration", "--template", "factory")
    assert "auto-registration, JITP with template factory" in r.out
    ca_id = certificate_id(authority.certificate)
    row = next(c for c in pki_cli("ca", "list", "--json").json() if c["caCertificateId"] == ca_id)
    assert row["autoRegistration"] is True
    r = pki_cli("template", "delete", "factory", expect=2)
    assert f"JITP template of CA {ca_id}" in r.err
    r = pki_cli("ca", "update", ca_id, "--no-auto-registration")
    assert "no auto-registration" in r.out
    r = pki_cli("ca", "update", ca_id, "--auto-registration")
    assert "auto-registration (JITR)" in r.out
    r = pki_cli("ca", "update", ca_id, "--no-auto-registration", "--template", "factory", expect=2)
    assert "need --auto-registration" in r.err


def test_a_fleet_provisioning_template_cannot_be_a_cas_jitp_template(pki_cli, tmp_path):
    authority = build_root_ca(generate_private_key("ec-p256"), "Other Root", now=utcnow())
    (tmp_path / "ca.pem").write_bytes(cert_pem(authority.certificate))
    (tmp_path / "t.json").write_text(json.dumps(TEMPLATE))
    pki_cli("template", "create", "claims", str(tmp_path / "t.json"))
    r = pki_cli("ca", "register", str(tmp_path / "ca.pem"), "--status", "ACTIVE")
    ca_id = certificate_id(authority.certificate)
    r = pki_cli("ca", "update", ca_id, "--auto-registration", "--template", "claims", expect=2)
    assert "is of type FLEET_PROVISIONING" in r.err
