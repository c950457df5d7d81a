"""`iotgate aws sync` against moto's AWS IoT (offline: moto answers every boto3 call in-process)."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

REGION = "eu-west-1"


@pytest.fixture
def account(monkeypatch):
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    # certificate ids as AWS IoT computes them (SHA-256 of the DER), not moto's default hash of the PEM
    with mock_aws(config={"iot": {"use_valid_cert": True}}):
        yield boto3.client("iot", region_name=REGION)


def _cert_ids(iot) -> dict[str, str]:
    return {c["certificateId"]: c["status"] for c in iot.list_certificates()["certificates"]}


def test_sync_mirrors_the_registry_and_a_second_run_changes_nothing(pki_cli, account):
    iot = account
    pki_cli("fleet", "provision", "--count", "3")
    pki_cli("thing", "create", "gateway-1", "--type", "edge", "--attr", "site=lyon")
    local = pki_cli("cert", "list", "--json").json()
    cas = pki_cli("ca", "list", "--json").json()

    dry = pki_cli("aws", "sync", "--dry-run")
    assert "dry run:" in dry.out and "nothing was changed" in dry.out
    for ca in cas:
        assert f"+ register CA {ca['caCertificateId']}: ACTIVE, DEFAULT" in dry.out
    assert "+ create thing device-00002" in dry.out and "+ create thing type edge" in dry.out
    assert "+ create policy iotgate-device" in dry.out
    assert iot.list_things()["things"] == [] and iot.list_certificates()["certificates"] == []

    done = pki_cli("aws", "sync", "--json").json()
    assert done["applied"] == len(done["actions"]) > 0
    for ca in cas:
        desc = iot.describe_ca_certificate(certificateId=ca["caCertificateId"])["certificateDescription"]
        assert desc["status"] == "ACTIVE"
    assert _cert_ids(iot) == {c["certificateId"]: "ACTIVE" for c in local}
    things = {t["thingName"]: t for t in iot.list_things()["things"]}
    assert set(things) == {"device-00001", "device-00002", "device-00003", "gateway-1"}
    assert things["gateway-1"]["thingTypeName"] == "edge" and things["gateway-1"]["attributes"] == {"site": "lyon"}
    for cert in local:
        arn = iot.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]["certificateArn"]
        assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] == ["iotgate-device"]
    for n in (1, 2, 3):
        arns = iot.list_thing_principals(thingName=f"device-0000{n}")["principals"]
        assert len(arns) == 1
        cid = arns[0].rsplit("/", 1)[-1]
        assert iot.describe_certificate(certificateId=cid)["certificateDescription"]["certificatePem"].strip() in \
            (pki_cli.home / "devices" / f"device-0000{n}" / "device.pem").read_text()
    policy = iot.get_policy(policyName="iotgate-device")
    assert json.loads(policy["policyDocument"]) == json.loads(pki_cli("policy", "show", "iotgate-device", "--json")
                                                             .json()["policyDocument"])

    again = pki_cli("aws", "sync")
    assert "in sync" in again.out and "applied" not in again.out


def test_sync_updates_statuses_policy_versions_and_attributes(pki_cli, account, tmp_path):
    iot = account
    pki_cli("fleet", "provision", "--count", "2")
    pki_cli("aws", "sync")
    cid = pki_cli("cert", "list", "--thing", "device-00001", "--json").json()[0]["certificateId"]
    pki_cli("cert", "deactivate", cid)
    doc = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"}]}
    (tmp_path / "v2.json").write_text(json.dumps(doc))
    pki_cli("policy", "create-version", "iotgate-device", str(tmp_path / "v2.json"), "--set-as-default")

    dry = pki_cli("aws", "sync", "--dry-run")
    assert f"~ update certificate {cid}: ACTIVE -> INACTIVE" in dry.out
    assert "~ update policy iotgate-device: new default version" in dry.out
    assert iot.describe_certificate(certificateId=cid)["certificateDescription"]["status"] == "ACTIVE"

    pki_cli("aws", "sync")
    assert iot.describe_certificate(certificateId=cid)["certificateDescription"]["status"] == "INACTIVE"
    assert json.loads(iot.get_policy(policyName="iotgate-device")["policyDocument"]) == doc
    assert "in sync" in pki_cli("aws", "sync").out

    pki_cli("cert", "revoke", cid)
    pki_cli("aws", "sync")
    assert iot.describe_certificate(certificateId=cid)["certificateDescription"]["status"] == "REVOKED"


def test_a_certificate_revoked_in_the_account_is_a_conflict_not_an_update(pki_cli, account):
    iot = account
    pki_cli("fleet", "provision", "--count", "1")
    pki_cli("aws", "sync")
    cid = pki_cli("cert", "list", "--json").json()[0]["certificateId"]
    iot.update_certificate(certificateId=cid, newStatus="REVOKED")
    r = pki_cli("aws", "sync", expect=1)
    assert f"! certificate {cid}: REVOKED in the account, ACTIVE here" in r.out
    assert "1 conflict(s)" in r.err
    assert iot.describe_certificate(certificateId=cid)["certificateDescription"]["status"] == "REVOKED"


def test_what_exists_only_in_the_account_is_left_alone(pki_cli, account):
    iot = account
    iot.create_thing(thingName="cloud-only")
    iot.create_policy(policyName="cloud-policy", policyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "iot:*", "Resource": "*"}]}))
    pki_cli("fleet", "provision", "--count", "1")
    r = pki_cli("aws", "sync")
    assert "only in the account (left alone): 1 things, 1 policies" in r.out
    assert {t["thingName"] for t in iot.list_things()["things"]} == {"cloud-only", "device-00001"}


def test_without_credentials_or_region_the_sync_says_what_to_set(pki_cli, monkeypatch):
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    r = pki_cli("aws", "sync", "--dry-run", expect=1)
    assert "no AWS region" in r.err
    # no credentials: botocore stops before signing, so nothing is sent (and the endpoint is a closed loopback port)
    monkeypatch.setenv("AWS_ENDPOINT_URL_IOT", "http://127.0.0.1:9")
    r = pki_cli("aws", "sync", "--dry-run", "--region", REGION, expect=1)
    assert "no AWS credentials" in r.err


def test_templates_are_skipped_with_why_where_the_endpoint_lacks_their_api(pki_cli, account, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"Resources": {"p": {"Type": "AWS::IoT::Policy",
                                                                     "Properties": {"PolicyName": "iotgate-device"}}}}))
    pki_cli("template", "create", "fleet", str(tmp_path / "t.json"), "--role-arn", "arn:aws:iam::123456789012:role/p")
    r = pki_cli("aws", "sync", "--dry-run")
    # moto serves no provisioning-template API: the sync says so instead of failing or claiming success
    assert "- skipped 1 provisioning template(s): the endpoint does not serve the provisioning-template API" in r.out
