"""Custom authorizers as data: credentials parsing, settings, token signatures, JWT checks, Lambda responses."""

from __future__ import annotations

import json
import re

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devices.tokens import custom_auth_username, sign_token
from gateway.auth.authorizers import (AuthorizerConfigError, Credentials, JwtSettings, load_signing_key,
                                      parse_response, parse_settings, verify_jwt, verify_token_signature)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
NOW = 1_800_000_000


def pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def jwks(*pairs) -> jwt.PyJWKSet:
    keys = []
    for kid, key in pairs:
        algo = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        jwk = json.loads(algo.to_jwk(key.public_key()))
        jwk["kid"] = kid
        keys.append(jwk)
    return jwt.PyJWKSet.from_dict({"keys": keys})


SETTINGS = JwtSettings(None, "https://idp.example/jwks", None, "https://idp.example", ("iotgate",), ("RS256", "ES256"),
                       60, "sub")
KEYS = jwks(("r1", RSA_KEY), ("e1", EC_KEY))
CLAIMS = {"sub": "device-0001", "iss": "https://idp.example", "aud": "iotgate", "exp": NOW + 600, "iat": NOW,
          "groups": ["fleet", "beta"]}


def token(claims=None, key=RSA_KEY, alg="RS256", kid="r1", drop=()) -> str:
    body = {k: v for k, v in {**CLAIMS, **(claims or {})}.items() if k not in drop}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


# --------------------------------------------------------------------------------------------- credentials

def test_username_built_as_the_sdk_builds_it_is_read_back():
    sig = sign_token(RSA_KEY, "tok.en")
    username = custom_auth_username("my-auth", "token", "tok.en", sig, username="user")
    assert username.startswith("user?x-amz-customauthorizer-name=my-auth&x-amz-customauthorizer-signature=")
    assert "+" not in username.split("signature=")[1].split("&")[0] or "%2B" in username
    creds = Credentials(username=username + "&SDK=IoTDeviceSDK/Python&Metadata=(a=b;c=d)")
    assert creds.lookup("x-amz-customauthorizer-name") == "my-auth"
    assert creds.lookup("x-amz-customauthorizer-signature") == sig
    assert creds.lookup("token") == "tok.en"
    assert verify_token_signature("tok.en", creds.lookup("x-amz-customauthorizer-signature"),
                                  [load_signing_key(pem(RSA_KEY))])


def test_websocket_headers_win_over_query_and_username():
    creds = Credentials(username="?token=from-username", headers=(("token", "from-header"),),
                        query=(("token", "from-query"),))
    assert creds.lookup("token") == "from-header"
    assert Credentials(username="?token=u", query=(("token", "q"),)).lookup("token") == "q"
    event = Credentials(username="u", password=b"pw", client_id="c", server_name="localhost").event("t", True)
    assert event["protocolData"] == {"tls": {"serverName": "localhost"},
                                     "mqtt": {"username": "u", "password": "cHc=", "clientId": "c"}}
    assert event["token"] == "t" and event["signatureVerified"] is True and event["protocols"] == ["tls", "mqtt"]


def test_token_signature_checks():
    keys = [load_signing_key(pem(OTHER_RSA)), load_signing_key(pem(RSA_KEY))]
    sig = sign_token(RSA_KEY, "abc")
    assert verify_token_signature("abc", sig, keys)
    assert verify_token_signature("abc", sig.replace("+", " "), keys)  # a '+' decoded to a space by a query parser
    assert not verify_token_signature("abd", sig, keys)
    assert not verify_token_signature("abc", sign_token(OTHER_RSA, "abd"), keys)
    assert not verify_token_signature("abc", "not base64!", keys)
    with pytest.raises(AuthorizerConfigError, match="RSA public key of at least 2048"):
        load_signing_key(pem(EC_KEY))


# --------------------------------------------------------------------------------------------- settings

@pytest.mark.parametrize("kind, config, match", [
    ("jwt", {"issuer": "i", "audience": "a"}, "exactly one key source"),
    ("jwt", {"jwks_url": "http://idp.example/jwks", "issuer": "i", "audience": "a"}, "https is required"),
    ("jwt", {"jwks_url": "https://idp/jwks", "audience": "a"}, "issuer is required"),
    ("jwt", {"jwks_url": "https://idp/jwks", "issuer": "i"}, "audience is required"),
    ("jwt", {"jwks_url": "https://idp/jwks", "issuer": "i", "audience": "a", "algorithms": ["HS256"]},
     "'HS256' is not accepted"),
    ("jwt", {"jwks_url": "https://idp/jwks", "issuer": "i", "audience": "a", "algorithms": ["none"]},
     "'none' is not accepted"),
    ("jwt", {"jwks_url": "https://idp/jwks", "issuer": "i", "audience": "a", "leeway": 3600}, "leeway"),
    ("jwt", {"jwks_url": "https://idp/jwks", "issuer": "i", "audience": "a", "secret": "x"}, "unknown jwt setting"),
    ("command", {}, "exactly one of command"),
    ("command", {"command": "/bin/auth"}, "list of arguments"),
    ("command", {"url": "http://auth.example/"}, "on loopback"),
    ("command", {"command": ["a"], "timeout": 60}, "timeout"),
    ("lambda", {}, "not known"),
])
def test_bad_settings_name_the_field(kind, config, match):
    with pytest.raises(AuthorizerConfigError, match=match):
        parse_settings(kind, config)


def test_good_settings():
    jwt_settings = parse_settings("jwt", {"oidc_issuer": "http://127.0.0.1:9000/", "audience": ["a", "b"]})
    assert jwt_settings.issuer == "http://127.0.0.1:9000" and jwt_settings.audience == ("a", "b")
    assert jwt_settings.algorithms == ("RS256", "ES256") and jwt_settings.leeway == 60
    command = parse_settings("command", {"url": "http://localhost:8080/auth", "timeout": 2})
    assert command.url and command.timeout == 2.0


# --------------------------------------------------------------------------------------------- JWT

def test_valid_tokens_rsa_and_ec():
    for tok in (token(), token(key=EC_KEY, alg="ES256", kid="e1")):
        answer = verify_jwt(tok, SETTINGS, KEYS, NOW)
        assert answer.is_authenticated and answer.principal_id == "device-0001"
        assert answer.claims["groups"] == ["fleet", "beta"]
        assert answer.disconnect_after == 660  # exp + leeway


@pytest.mark.parametrize("tok, now, key", [
    (token(), NOW + 661, "token_expired"),
    (token(), NOW + 659, None),  # within the leeway
    (token({"nbf": NOW + 120}), NOW, "token_not_yet_valid"),
    (token({"iat": NOW + 120}), NOW, "token_not_yet_valid"),
    (token({"aud": "another-app"}), NOW, "token_audience"),
    (token({"iss": "https://evil.example"}), NOW, "token_issuer"),
    (token(drop=("exp",)), NOW, "token_claims"),
    (token(drop=("aud",)), NOW, "token_claims"),
    (token({"sub": 42}), NOW, "token_claims"),
    (token({"exp": "soon"}), NOW, "token_claims"),
    (token(key=OTHER_RSA), NOW, "token_signature"),
    (token(key=EC_KEY, alg="ES256", kid="r1"), NOW, "token_key"),  # an EC signature against the RSA key
    (token(alg="RS512"), NOW, "token_algorithm"),
    (jwt.encode(CLAIMS, "shared-secret-of-32-bytes-or-more!!", algorithm="HS256", headers={"kid": "r1"}), NOW,
     "token_algorithm"),
    (jwt.encode(CLAIMS, None, algorithm="none"), NOW, "token_algorithm"),
    (token(kid=None), NOW, "token_key"),  # no kid and two keys
    ("not-a-jwt", NOW, "token_malformed"),
], ids=["expired", "leeway", "nbf", "iat", "audience", "issuer", "no-exp", "no-aud", "sub-not-string",
        "exp-not-number", "wrong-key", "ec-for-rsa", "alg-not-allowed", "hs256", "alg-none", "no-kid",
        "garbage"])
def test_refused_tokens(tok, now, key):
    answer = verify_jwt(tok, SETTINGS, KEYS, now)
    if key is None:
        assert answer.is_authenticated
    else:
        assert not answer.is_authenticated and answer.key == key, answer.reason


def test_unknown_kid_asks_for_a_refresh():
    assert verify_jwt(token(kid="rotated"), SETTINGS, KEYS, NOW) == "unknown kid"


# --------------------------------------------------------------------------------------------- Lambda shape

DOC = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}
GOOD = {"isAuthenticated": True, "principalId": "abc123", "policyDocuments": [DOC],
        "disconnectAfterInSeconds": 3600, "refreshAfterInSeconds": 300}


def test_lambda_response_accepted_with_documents_as_objects_or_strings():
    answer = parse_response(GOOD, "cmd")
    assert answer.is_authenticated and answer.principal_id == "abc123"
    assert answer.parsed[0].name == "cmd.policyDocuments[0]"
    assert answer.to_aws() == {"isAuthenticated": True, "principalId": "abc123",
                               "policyDocuments": [json.dumps(DOC, separators=(",", ":"))],
                               "refreshAfterInSeconds": 300, "disconnectAfterInSeconds": 3600}
    assert parse_response({**GOOD, "policyDocuments": [json.dumps(DOC)]}, "cmd").is_authenticated


@pytest.mark.parametrize("change, key, match", [
    ({"isAuthenticated": False}, "token_rejected", "isAuthenticated: false"),
    ({"isAuthenticated": "yes"}, "authorizer_response_invalid", "isAuthenticated"),
    ({"principalId": "has space"}, "authorizer_response_invalid", "principalId"),
    ({"principalId": "x" * 129}, "authorizer_response_invalid", "principalId"),
    ({"disconnectAfterInSeconds": 60}, "authorizer_response_invalid", "disconnectAfterInSeconds"),
    ({"refreshAfterInSeconds": 90000}, "authorizer_response_invalid", "refreshAfterInSeconds"),
    ({"policyDocuments": []}, "authorizer_response_invalid", "1 to 10"),
    ({"policyDocuments": [DOC] * 11}, "authorizer_response_invalid", "1 to 10"),
    ({"policyDocuments": [{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect",
                                                                  "Resource": "x" * 2100}]}]},
     "authorizer_response_invalid", "2048"),
    ({"policyDocuments": [{"Statement": "nope"}]}, "authorizer_response_invalid", r"policyDocuments\[0\]"),
])
def test_invalid_lambda_responses_are_refusals(change, key, match):
    answer = parse_response({**GOOD, **change}, "cmd")
    assert not answer.is_authenticated and answer.key == key
    assert re.search(match, answer.reason)
    assert parse_response([GOOD], "cmd").key == "authorizer_response_invalid"
