"""`iotgate authorizer` and `iotgate identity` as a user runs them: TestInvokeAuthorizer's answers, keys whose
secret never reaches the registry."""

from __future__ import annotations

import base64
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devices.tokens import sign_token

POLICY = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}'


def setup_jwt(cli, tmp_path):
    idp = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp.public_key()))
    jwk["kid"] = "k"
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    (tmp_path / "signer.pem").write_bytes(signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "policy.json").write_text(POLICY)
    cli("policy", "create", "connect-any", str(tmp_path / "policy.json"))
    cli("authorizer", "create", "fleet", "--type", "jwt", "--jwks-file", str(tmp_path / "jwks.json"),
        "--issuer", "https://idp", "--audience", "iotgate", "--token-key-name", "token",
        "--signing-key", f"k1={tmp_path / 'signer.pem'}", "--policy", "connect-any")
    return idp, signer


def make_token(idp, **claims) -> str:
    body = {"sub": "dev1", "iss": "https://idp", "aud": "iotgate", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, idp, algorithm="RS256", headers={"kid": "k"})


def test_authorizer_lifecycle_and_test_invoke(pki_cli, tmp_path):
    cli = pki_cli
    idp, signer = setup_jwt(cli, tmp_path)
    shown = cli("authorizer", "show", "fleet", "--json").json()
    assert shown["authorizerArn"].endswith(":authorizer/fleet") and shown["signingDisabled"] is False
    assert shown["policies"] == ["connect-any"] and list(shown["tokenSigningPublicKeys"]) == ["k1"]
    assert [a["authorizerName"] for a in cli("authorizer", "list", "--json").json()] == ["fleet"]

    tok = make_token(idp)
    ok = cli("authorizer", "test", "fleet", "--token", tok, "--token-signature", sign_token(signer, tok))
    answer = ok.json()
    assert answer["isAuthenticated"] is True and answer["principalId"] == "dev1"
    assert json.loads(answer["policyDocuments"][0]) == json.loads(POLICY)
    assert 300 <= answer["disconnectAfterInSeconds"] <= 660 and answer["refreshAfterInSeconds"] == 86400

    bad = cli("authorizer", "test", "fleet", "--token", tok, "--token-signature", sign_token(signer, "x"), expect=1)
    assert bad.json()["isAuthenticated"] is False and "token_signature_invalid" in bad.err
    old = make_token(idp, exp=int(time.time()) - 3600)
    expired = cli("authorizer", "test", "fleet", "--token", old, "--token-signature", sign_token(signer, old),
                  expect=1)
    assert "token_expired" in expired.err
    other = make_token(idp, aud="other")
    assert "token_audience" in cli("authorizer", "test", "fleet", "--token", other, "--token-signature",
                                   sign_token(signer, other), expect=1).err
    # the username form a device sends, through --mqtt-context
    username = f"?x-amz-customauthorizer-name=fleet&x-amz-customauthorizer-signature=" \
               f"{sign_token(signer, tok).replace('+', '%2B')}&token={tok}"
    via_mqtt = cli("authorizer", "test", "fleet", "--mqtt-context", json.dumps({"username": username}))
    assert via_mqtt.json()["isAuthenticated"] is True

    cli("authorizer", "set-status", "fleet", "INACTIVE")
    cli("authorizer", "delete", "fleet")
    assert "does not exist" in cli("authorizer", "show", "fleet", expect=2).err


def test_command_authorizer_answers_in_the_lambda_shape(pki_cli, tmp_path):
    script = tmp_path / "auth.py"
    script.write_text("import json, sys\nevent = json.load(sys.stdin)\n"
                      "pw = event['protocolData']['mqtt'].get('password')\n"
                      "print(json.dumps({'isAuthenticated': pw == 'c2VjcmV0', 'principalId': 'p1',\n"
                      f"  'policyDocuments': [{POLICY}], 'disconnectAfterInSeconds': 600,"
                      " 'refreshAfterInSeconds': 300}))\n")
    pki_cli("authorizer", "create", "lam", "--type", "command", "--command", f"{sys.executable} {script}",
            "--signing-disabled")
    good = pki_cli("authorizer", "test", "lam", "--mqtt-context",
                   json.dumps({"username": "u", "password": base64.b64encode(b"secret").decode()}))
    assert good.json() == {"isAuthenticated": True, "principalId": "p1", "policyDocuments": [
        json.dumps(json.loads(POLICY), separators=(",", ":"))], "refreshAfterInSeconds": 300,
        "disconnectAfterInSeconds": 600}
    wrong = pki_cli("authorizer", "test", "lam", "--mqtt-context",
                    json.dumps({"password": base64.b64encode(b"guess").decode()}), expect=1)
    assert "token_rejected" in wrong.err


def test_create_refuses_bad_settings_with_the_field_named(pki_cli, tmp_path):
    err = pki_cli("authorizer", "create", "a", "--type", "jwt", "--jwks-url", "http://idp.example/jwks",
                  "--issuer", "i", "--audience", "a", "--signing-disabled", expect=2).err
    assert "https is required" in err
    err = pki_cli("authorizer", "create", "a", "--type", "jwt", "--jwks-url", "https://idp/jwks", "--issuer", "i",
                  "--audience", "a", expect=2).err
    assert "token key name and a token signing public key are required" in err
    assert pki_cli("authorizer", "list", "--json").json() == []


def test_identity_keys_keep_no_plaintext_secret(pki_cli, tmp_path):
    (tmp_path / "policy.json").write_text(POLICY)
    pki_cli("policy", "create", "apps", str(tmp_path / "policy.json"))
    created = pki_cli("identity", "create-key", "app1", "--policy", "apps", "--json").json()
    assert created["AccessKeyId"].startswith("AKIA") and len(created["SecretAccessKey"]) == 40
    temp = pki_cli("identity", "create-key", "app1", "--policy", "apps", "--session-duration", "900",
                   "--json").json()
    assert temp["AccessKeyId"].startswith("ASIA") and temp["SessionToken"] and temp["Expiration"]
    key_file = pki_cli.home / "secrets.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    database = (pki_cli.home / "registry.db").read_bytes() + b"".join(
        p.read_bytes() for p in pki_cli.home.glob("registry.db-*"))
    for secret in (created["SecretAccessKey"], temp["SecretAccessKey"], temp["SessionToken"]):
        assert secret.encode() not in database
    listed = pki_cli("identity", "list-keys", "--json").json()
    assert {k["AccessKeyId"] for k in listed} == {created["AccessKeyId"], temp["AccessKeyId"]}
    assert "SecretAccessKey" not in json.dumps(listed)
    pki_cli("identity", "set-key-status", created["AccessKeyId"], "INACTIVE")
    pki_cli("identity", "delete-key", created["AccessKeyId"])
    assert len(pki_cli("identity", "list-keys", "--json").json()) == 1
