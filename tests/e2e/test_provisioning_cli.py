"""The provisioning CLI as a fleet engineer uses it, including every bad input of the foundation."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs.authority import build_root_ca, cert_pem, load_certificates
from certs.keys import generate_private_key
from devices.identity import make_key_and_csr

CLI = Any


NOW = dt.datetime.now(dt.UTC)


def _counts(cli: CLI) -> tuple[int, int, int]:
    return (len(cli("thing", "list", "--json").json()), len(cli("cert", "list", "--json").json()),
            len(cli("policy", "list", "--json").json()))


def _csr_file(tmp_path: Path, cn: str, key=None) -> Path:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(key, hashes.SHA256()))
    path = tmp_path / f"{cn}.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def test_pki_init_registers_cas_and_refuses_a_second_init(cli, tree):
    cli("pki", "init", "--server-name", "gw.test")
    cas = cli("ca", "list", "--json").json()
    assert {c["status"] for c in cas} == {"ACTIVE"} and len(cas) == 2 and all(c["own"] for c in cas)
    before = tree(cli.home)
    r = cli("pki", "init", expect=2)
    assert "already exists" in r.err and "--force" in r.err and "Traceback" not in r.err
    assert tree(cli.home) == before
    shown = cli("pki", "show", "--json").json()
    assert [e["role"] for e in shown] == ["root CA", "issuing CA", "server", "upstream CA", "gateway client"]


def test_pki_init_force_retires_the_old_cas(cli):
    cli("pki", "init")
    old = {c["caCertificateId"] for c in cli("ca", "list", "--json").json()}
    cli("pki", "init", "--force", "--key-type", "ec-p384")
    cas = {c["caCertificateId"]: c["status"] for c in cli("ca", "list", "--json").json()}
    assert len(cas) == 4 and all(cas[i] == "INACTIVE" for i in old)


def test_missing_home_is_a_clear_error(cli):
    for args in (("thing", "list"), ("fleet", "provision", "--count", "1"), ("cert", "list")):
        r = cli(*args, expect=2)
        assert "no iotgate home" in r.err and "pki init" in r.err
    assert not cli.home.exists()


def test_fleet_provision_is_parallel_resumable_and_never_shares_keys(pki_cli):
    cli = pki_cli
    first = cli("fleet", "provision", "--count", "12", "--workers", "2", "--json").json()
    assert (first["issued"], first["skipped"]) == (12, 0)
    # a crash mid-run leaves a temporary directory and a device directory whose rows never landed
    devices = cli.home / "devices"
    (devices / ".device-00013.999.tmp").mkdir()
    (devices / "device-00013").mkdir()
    (devices / "device-00013" / "device.key").write_text("stale")
    second = cli("fleet", "provision", "--count", "20", "--workers", "2", "--json").json()
    assert (second["issued"], second["skipped"]) == (8, 12)
    things = cli("thing", "list", "--json").json()
    assert [t["thingName"] for t in things] == [f"device-{i:05d}" for i in range(1, 21)]
    keys = set()
    for t in things:
        d = devices / t["thingName"]
        assert sorted(p.name for p in d.iterdir()) == ["device.key", "device.pem", "root-ca.pem"]
        assert stat.S_IMODE((d / "device.key").stat().st_mode) == 0o600
        keys.add((d / "device.key").read_bytes())
        chain = load_certificates((d / "device.pem").read_bytes(), source="pem")
        assert len(chain) == 2 and chain[0].subject.rfc4514_string() == f"CN={t['thingName']}"
    assert len(keys) == 20
    certs = cli("cert", "list", "--json").json()
    assert len(certs) == 20 and {c["status"] for c in certs} == {"ACTIVE"}
    shown = cli("thing", "show", "device-00007", "--json").json()
    assert shown["certificates"][0]["policies"] == ["iotgate-device"]
    assert cli("fleet", "provision", "--count", "20", "--json").json()["issued"] == 0


def test_provisioned_device_verifies_with_openssl(pki_cli):
    pki_cli("fleet", "provision", "--count", "1", "--workers", "1")
    d = pki_cli.home / "devices" / "device-00001"
    out = subprocess.run(["openssl", "verify", "-CAfile", str(d / "root-ca.pem"), "-untrusted",
                          str(pki_cli.home / "issuing-ca.pem"), str(d / "device.pem")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr


def test_unknown_and_invalid_policies_write_nothing(pki_cli, tmp_path: Path, tree):
    cli = pki_cli
    before = tree(cli.home), _counts(cli)
    r = cli("fleet", "provision", "--count", "3", "--policy", "no-such-policy", expect=2)
    assert "unknown policy 'no-such-policy'" in r.err
    bad = tmp_path / "bad.json"
    bad.write_text('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Publsh", '
                   '"Resource": "*"}]}')
    r = cli("fleet", "provision", "--count", "3", "--policy", str(bad), expect=2)
    assert "Statement[0]" in r.err and "Action" in r.err
    r = cli("policy", "create", "bad", str(bad), expect=2)
    assert "Statement[0]" in r.err
    notjson = tmp_path / "notjson.json"
    notjson.write_text("{not json")
    r = cli("policy", "create", "nj", str(notjson), expect=2)
    assert "JSON" in r.err
    assert (tree(cli.home), _counts(cli)) == before


def test_policy_versions_attach_detach(pki_cli, tmp_path: Path):
    cli = pki_cli
    cli("fleet", "provision", "--count", "1")
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Publish",
                                                   "Resource": "arn:aws:iot:*:*:topic/x"}]}
    f = tmp_path / "p.json"
    f.write_text(json.dumps(doc))
    cli("policy", "create", "extra", str(f))
    r = cli("policy", "create", "extra", str(f), expect=2)
    assert "extra" in r.err and "exists" in r.err
    for _ in range(4):
        cli("policy", "create-version", "extra", str(f))
    r = cli("policy", "create-version", "extra", str(f), expect=2)
    assert "5" in r.err
    cli("policy", "set-default-version", "extra", "3")
    versions = cli("policy", "list-versions", "extra", "--json").json()
    assert [v["isDefaultVersion"] for v in versions].count(True) == 1
    cli("policy", "attach", "extra", "--thing", "device-00001")
    assert "extra" in cli("thing", "show", "device-00001", "--json").json()["certificates"][0]["policies"]
    r = cli("policy", "delete", "extra", expect=2)
    assert "attached" in r.err
    cli("policy", "detach", "extra", "--thing", "device-00001")
    cli("policy", "delete", "extra")


def test_sign_csr_checks_the_csr_and_leaves_nothing_on_refusal(pki_cli, tmp_path: Path, tree):
    cli = pki_cli
    before = tree(cli.home), _counts(cli)
    cases = [
        (_csr_file(tmp_path, "other"), "sensor-1", "must equal the thing name 'sensor-1'"),
        (_csr_file(tmp_path, "weak", rsa.generate_private_key(65537, 1024)), "weak", "RSA-1024 key refused"),
        (_csr_file(tmp_path, "p192", ec.generate_private_key(ec.SECP192R1())), "p192", "secp192r1 key refused"),
    ]
    garbage = tmp_path / "garbage.csr"
    garbage.write_text("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    cases.append((garbage, "g", "not a PEM or DER certificate signing request"))
    tampered = tmp_path / "tampered.csr"
    good = x509.load_pem_x509_csr(_csr_file(tmp_path, "t").read_bytes()).public_bytes(serialization.Encoding.DER)
    tampered.write_bytes(good[:-4] + bytes([good[-4] ^ 1]) + good[-3:])
    cases.append((tampered, "t", "signature does not verify"))
    for path, thing, message in cases:
        r = cli("cert", "sign-csr", "--thing", thing, str(path), expect=2)
        assert message in r.err and str(path) in r.err, r.err
    assert (tree(cli.home), _counts(cli)) == before
    out = tmp_path / "sensor.pem"
    cli("cert", "sign-csr", "--thing", "sensor-1", str(_csr_file(tmp_path, "sensor-1")), "--out", str(out))
    assert load_certificates(out.read_bytes(), source="out")[0].subject.rfc4514_string() == "CN=sensor-1"
    assert cli("thing", "show", "sensor-1", "--json").json()["certificates"][0]["status"] == "ACTIVE"


def test_duplicate_thing_refused(pki_cli):
    pki_cli("thing", "create", "lamp-1", "--type", "lamp", "--attr", "site=lab")
    r = pki_cli("thing", "create", "lamp-1", expect=2)
    assert "lamp-1" in r.err and "exists" in r.err
    t = pki_cli("thing", "show", "lamp-1", "--json").json()
    assert t["thingTypeName"] == "lamp" and t["attributes"] == {"site": "lab"}


def test_revoke_is_final_and_rewrites_the_crl(pki_cli):
    cli = pki_cli
    cli("fleet", "provision", "--count", "2")
    cert = cli("thing", "show", "device-00002", "--json").json()["certificates"][0]
    cli("cert", "revoke", "--thing", "device-00002")
    crl = x509.load_pem_x509_crl((cli.home / "crl.pem").read_bytes())
    serial = int(cli("cert", "show", cert["certificateId"], "--json").json()["serialNumber"], 16)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.is_signature_valid(load_certificates((cli.home / "issuing-ca.pem").read_bytes(), source="i")[0]
                                  .public_key())
    for verb in ("activate", "deactivate"):
        r = cli("cert", verb, cert["certificateId"], expect=2)
        assert "REVOKED" in r.err and "final" in r.err
    r = cli("cert", "revoke", cert["certificateId"][:12])
    assert r.code == 0 or "final" in r.err
    assert cli("cert", "list", "--status", "REVOKED", "--json").json()[0]["certificateId"] == cert["certificateId"]


def test_deactivate_activate_and_prefix_lookup(pki_cli):
    pki_cli("fleet", "provision", "--count", "1")
    cid = pki_cli("cert", "list", "--json").json()[0]["certificateId"]
    pki_cli("cert", "deactivate", cid[:10])
    assert pki_cli("cert", "show", cid, "--json").json()["status"] == "INACTIVE"
    pki_cli("cert", "activate", cid[:10])
    assert pki_cli("cert", "show", cid, "--json").json()["status"] == "ACTIVE"
    r = pki_cli("cert", "show", "0" * 64, expect=2)
    assert "0" * 16 in r.err


def test_rotate_keeps_both_active_until_the_old_is_deactivated(pki_cli):
    cli = pki_cli
    cli("fleet", "provision", "--count", "1")
    d = cli.home / "devices" / "device-00001"
    old_key = (d / "device.key").read_bytes()
    old = cli("cert", "list", "--json").json()[0]["certificateId"]
    cli("cert", "rotate", "--thing", "device-00001")
    certs = cli("thing", "show", "device-00001", "--json").json()["certificates"]
    assert len(certs) == 2 and {c["status"] for c in certs} == {"ACTIVE"}
    assert all(c["policies"] == ["iotgate-device"] for c in certs)
    assert (d / "device.previous.key").read_bytes() == old_key and (d / "device.key").read_bytes() != old_key
    assert stat.S_IMODE((d / "device.key").stat().st_mode) == 0o600
    cli("cert", "deactivate", old)
    statuses = {c["certificateId"]: c["status"] for c in cli("thing", "show", "device-00001", "--json").json()
                ["certificates"]}
    assert statuses[old] == "INACTIVE" and list(statuses.values()).count("ACTIVE") == 1


def test_expiring(pki_cli):
    pki_cli("fleet", "provision", "--count", "2", "--days", "10")
    pki_cli("fleet", "provision", "--count", "1", "--start", "3", "--days", "400")
    soon = pki_cli("cert", "expiring", "--days", "30", "--json").json()
    assert sorted(c["subject"] for c in soon) == ["device-00001", "device-00002"]
    assert len(pki_cli("cert", "expiring", "--days", "500", "--json").json()) == 3


def test_register_external_ca_and_certificate(pki_cli, tmp_path: Path):
    cli = pki_cli
    ext = build_root_ca(generate_private_key("ec-p256"), "Legacy Fleet CA", now=NOW)
    ca_file = tmp_path / "legacy-ca.pem"
    ca_file.write_bytes(cert_pem(ext.certificate))
    key, csr = make_key_and_csr("legacy-1")
    leaf = ext.sign_device_csr(csr, "legacy-1", now=NOW)
    leaf_file = tmp_path / "legacy-1.pem"
    leaf_file.write_bytes(cert_pem(leaf))
    r = cli("cert", "register", str(leaf_file), "--thing", "legacy-1", expect=2)
    assert "not issued by any registered CA" in r.err and "ca register" in r.err
    cli("ca", "register", str(ca_file))
    r = cli("ca", "register", str(ca_file), expect=2)
    assert "already registered" in r.err
    cli("cert", "register", str(leaf_file), "--thing", "legacy-1")
    shown = cli("thing", "show", "legacy-1", "--json").json()
    assert shown["certificates"][0]["status"] == "ACTIVE"
    r = cli("cert", "register", str(leaf_file), expect=2)
    assert "already registered" in r.err
    # a leaf is not a CA
    r = cli("ca", "register", str(leaf_file), expect=2)
    assert "not a CA certificate" in r.err


@pytest.mark.parametrize("content", [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nZm9v\n-----END CERTIFICATE-----\n"])
def test_malformed_pem_refused(pki_cli, tmp_path: Path, content: bytes, tree):
    f = tmp_path / "junk.pem"
    f.write_bytes(content)
    before = tree(pki_cli.home), _counts(pki_cli)
    for args in (("ca", "register", str(f)), ("cert", "register", str(f))):
        r = pki_cli(*args, expect=2)
        assert str(f) in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert (tree(pki_cli.home), _counts(pki_cli)) == before


def test_console_script_has_no_traceback(tmp_path: Path):
    exe = Path(sys.executable).with_name("iotgate")
    out = subprocess.run([str(exe), "--home", str(tmp_path / "nowhere"), "thing", "list"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "no iotgate home" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "fleet" in out.stdout and "policy" in out.stdout


@pytest.mark.postgres
def test_fleet_on_a_postgresql_registry(cli, postgres_url: str):
    cli("--registry", postgres_url, "pki", "init")
    report = cli("--registry", postgres_url, "fleet", "provision", "--count", "6", "--workers", "2", "--json").json()
    assert report["issued"] == 6
    assert len(cli("--registry", postgres_url, "cert", "list", "--json").json()) == 6
    assert not (cli.home / "registry.db").exists()
    cid = cli("--registry", postgres_url, "thing", "show", "device-00003", "--json").json()["certificates"][0]
    cli("--registry", postgres_url, "cert", "revoke", cid["certificateId"])
    crl = x509.load_pem_x509_crl((cli.home / "crl.pem").read_bytes())
    assert len(list(crl)) == 1


def test_policy_test_decides_with_exit_codes_and_testauthorization_json(pki_cli, tmp_path: Path):
    cli = pki_cli
    cli("fleet", "provision", "--count", "2")
    r = cli("policy", "test", "--thing", "device-00001", "--action", "iot:Publish", "--resource",
            "topic/dt/device-00001/temp")
    assert r.out.startswith("ALLOW") and "iotgate-device version 1 Statement[1]" in r.out
    r = cli("policy", "test", "--thing", "device-00001", "--action", "iot:Publish", "--resource",
            "topic/dt/device-00002/temp", expect=1)
    assert r.out.startswith("DENY") and "implicit deny" in r.out
    # another device's client id: the thing variable does not resolve, so Connect is denied
    cli("policy", "test", "--thing", "device-00001", "--action", "iot:Connect", "--resource", "client/device-00002",
        "--client-id", "device-00002", expect=1)
    deny = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "iot:Publish",
                                                    "Resource": "arn:aws:iot:*:*:topic/dt/*/secret"}]}
    f = tmp_path / "no-secret.json"
    f.write_text(json.dumps(deny))
    cli("policy", "create", "no-secret", str(f))
    cli("policy", "attach", "no-secret", "--thing", "device-00001")
    r = cli("policy", "test", "--thing", "device-00001", "--action", "iot:Publish", "--resource",
            "topic/dt/device-00001/secret", "--json", expect=1)
    result = r.json()["authResults"][0]
    assert result["authDecision"] == "EXPLICIT_DENY"
    assert [p["policyName"] for p in result["denied"]["explicitDeny"]["policies"]] == ["no-secret"]
    assert result["authInfo"] == {"actionType": "PUBLISH", "resources": [
        "arn:aws:iot:us-east-1:123456789012:topic/dt/device-00001/secret"]}
    r = cli("policy", "test", "--cert", cli("cert", "list", "--thing", "device-00001", "--json").json()[0]
            ["certificateId"], "--action", "iot:Subscribe", "--resource", "topicfilter/cmd/device-00001/#",
            "--json")
    assert r.json()["authResults"][0]["authDecision"] == "ALLOWED"


def test_policy_lint(pki_cli, tmp_path: Path):
    loose = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/*"},
    ]}
    f = tmp_path / "loose.json"
    f.write_text(json.dumps(loose))
    r = pki_cli("policy", "lint", str(f), "--json", expect=1)
    assert {finding["statement"] for finding in r.json()} == {0, 1}
    r = pki_cli("policy", "lint", str(f), expect=1)
    assert "Statement[0]" in r.out and "Statement[1]" in r.out
    pki_cli("fleet", "provision", "--count", "1")
    r = pki_cli("policy", "lint", "iotgate-device")
    assert "no overly permissive statement" in r.out
    r = pki_cli("policy", "lint", "nope", expect=2)
    assert "neither a policy file nor a registered policy" in r.err


def test_ca_deactivate_and_activate(pki_cli):
    issuing = [c for c in pki_cli("ca", "list", "--json").json() if "Issuing" in c["subject"]][0]["caCertificateId"]
    r = pki_cli("ca", "deactivate", issuing[:12])
    assert "INACTIVE" in r.out
    assert {c["caCertificateId"]: c["status"] for c in pki_cli("ca", "list", "--json").json()}[issuing] == "INACTIVE"
    pki_cli("ca", "activate", issuing)
    assert {c["caCertificateId"]: c["status"] for c in pki_cli("ca", "list", "--json").json()}[issuing] == "ACTIVE"


def test_revoke_without_the_ca_passphrase_still_revokes_and_says_what_to_do(cli, monkeypatch):
    monkeypatch.setenv("IOTGATE_CA_PASSPHRASE", "s3cret words")
    cli("pki", "init")
    cli("fleet", "provision", "--count", "1")
    monkeypatch.delenv("IOTGATE_CA_PASSPHRASE")
    cid = cli("cert", "list", "--json").json()[0]["certificateId"]
    r = cli("cert", "revoke", cid, expect=2)
    assert "REVOKED in the registry" in r.err and "iotgate pki crl" in r.err and "IOTGATE_CA_PASSPHRASE" in r.err
    assert cli("cert", "show", cid, "--json").json()["status"] == "REVOKED"
    monkeypatch.setenv("IOTGATE_CA_PASSPHRASE", "s3cret words")
    cli("pki", "crl")
    crl = x509.load_pem_x509_crl((cli.home / "crl.pem").read_bytes())
    assert len(list(crl)) == 1
