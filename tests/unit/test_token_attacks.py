"""Token and SigV4 attackers and devices without sockets: the two attempts of each attack, the judgement of what
came back (a table), fresh signatures, the JWTs and the credential files."""

from __future__ import annotations

import datetime as dt
import os
import stat
import urllib.parse

import jwt
import pytest

from devices.report import Outcome
from devices.token_attacks import AUDIENCE, AttackPlan, Attempt, TokenWorld, judge, plan_attack
from devices.token_devices import SigV4Signer, TokenIdentity
from devices.tokens import ConnectResult
from devices.transport import Endpoint

NOW = dt.datetime(2026, 12, 2, 7, 0, 0, tzinfo=dt.UTC)
ACCEPTED = ConnectResult("mqtt", 0, "CONNACK")
REFUSED = ConnectResult("mqtt", 0x87, "CONNACK")
FORBIDDEN = ConnectResult("http", 403, '{"message":"Forbidden"}')
SILENT = ConnectResult("timeout", None, "no CONNACK within 5 s")


@pytest.fixture(scope="module")
def world() -> TokenWorld:
    from cryptography.hazmat.primitives.asymmetric import rsa

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    w = TokenWorld(None, None, key(), key())
    w.keys["atk-a"] = ("AKIAEXAMPLE0000000001", "secret-a")
    return w


PLAN = AttackPlan(Attempt(username="good"), Attempt(username="bad"), "the good one was refused too", "bad token")


@pytest.mark.parametrize("control,bad,outcome,text", [
    (ACCEPTED, REFUSED, Outcome.REFUSED_MQTT, "bad token: CONNACK NOT_AUTHORIZED (0x87)"),
    (ACCEPTED, FORBIDDEN, Outcome.REFUSED_HTTP, "bad token: HTTP 403"),
    (ACCEPTED, ACCEPTED, Outcome.ALLOWED, "bad token: CONNACK accepted"),       # the hole
    (ACCEPTED, SILENT, Outcome.INCONCLUSIVE, "bad token: timeout"),            # no answer is never a refusal
    (REFUSED, None, Outcome.INCONCLUSIVE, "the good one was refused too"),      # a refusal from a closed door
    (SILENT, None, Outcome.INCONCLUSIVE, "the refusal would prove nothing"),
])
def test_judge(control, bad, outcome, text):
    got, detail = judge(PLAN, control, bad)
    assert got is outcome and text in detail


def test_each_attack_plans_a_good_and_a_bad_attempt(world):
    expired = plan_attack("expired-token", "atk-a", world, NOW)
    good, bad = (urllib.parse.parse_qs(a.username.split("?", 1)[1])["token"][0]
                 for a in (expired.control, expired.bad))
    claims = {t: jwt.decode(t, options={"verify_signature": False}) for t in (good, bad)}
    assert claims[good]["exp"] > NOW.timestamp() and claims[bad]["exp"] == NOW.timestamp() - 3600
    assert claims[good]["aud"] == claims[bad]["aud"] == AUDIENCE and claims[good]["sub"] == "atk-a"
    audience = plan_attack("foreign-audience-token", "atk-a", world, NOW)
    bad = urllib.parse.parse_qs(audience.bad.username.split("?", 1)[1])["token"][0]
    assert jwt.decode(bad, options={"verify_signature": False})["aud"] == "another-service"
    assert "x-amz-customauthorizer-signature=" in audience.bad.username    # signed like the good one
    replay = plan_attack("replayed-signature", "atk-a", world, NOW)
    assert replay.control.target == replay.bad.target and "X-Amz-Signature=" in replay.bad.target
    wrong = plan_attack("wrong-secret-signature", "atk-a", world, NOW)
    assert wrong.control.target != wrong.bad.target
    assert wrong.control.target.split("X-Amz-Signature=")[0] == wrong.bad.target.split("X-Amz-Signature=")[0]
    with pytest.raises(ValueError, match="unknown token attacker kind"):
        plan_attack("no-such", "atk-a", world, NOW)


def test_a_signer_never_signs_the_same_second_twice():
    signer = SigV4Signer("AKIAEXAMPLE0000000001", "s3cret", "us-east-1", "localhost")
    first, second, third = signer(NOW), signer(NOW), signer(NOW + dt.timedelta(milliseconds=300))
    dates = [urllib.parse.parse_qs(t.split("?", 1)[1])["X-Amz-Date"][0] for t in (first, second, third)]
    assert dates == ["20261202T070000Z", "20261202T070001Z", "20261202T070002Z"]
    assert len({first, second, third}) == 3
    assert "s3cret" not in repr(signer)


def test_a_token_identity_connects_to_the_token_listener():
    identity = TokenIdentity("app-1", "", "", "/ca.pem", auth="token", port=8443, credential=lambda now: "user")
    assert identity.endpoint(Endpoint("127.0.0.1", 8883, "localhost")) == Endpoint("127.0.0.1", 8443, "localhost",
                                                                                  ("mqtt",))
    assert identity.username(NOW) == "user"
    sigv4 = TokenIdentity("app-2", "", "", "/ca.pem", auth="sigv4", port=8443, credential=lambda now: "/mqtt?x")
    assert sigv4.endpoint(Endpoint("gw", 8883)).alpn == ("http/1.1",) and sigv4.username(NOW) is None


def test_credentials_files_are_private_and_load_back(world, tmp_path):
    world.save(tmp_path / "tokens")
    for name in ("idp.key", "signer.key", "world.json"):
        assert stat.S_IMODE(os.stat(tmp_path / "tokens" / name).st_mode) == 0o600
    loaded = TokenWorld.load(tmp_path / "tokens")
    assert loaded.keys == world.keys and loaded.authorizer == world.authorizer and loaded.registry is None
    token = loaded.token("atk-a", NOW)
    assert jwt.decode(token, world.idp.public_key(), algorithms=["RS256"], audience=AUDIENCE,
                      options={"verify_exp": False})["sub"] == "atk-a"
    with pytest.raises(ValueError, match="loaded from files"):
        loaded.add_key("atk-b")


def test_the_load_tests_know_the_same_token_attackers():
    from devices.token_attacks import TOKEN_ATTACKER_KINDS
    from loadtests.plan import SIGV4_ATTACKS, TOKEN_ATTACKS

    assert TOKEN_ATTACKS == tuple(TOKEN_ATTACKER_KINDS) and set(SIGV4_ATTACKS) < set(TOKEN_ATTACKS)
