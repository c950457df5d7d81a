"""Locust's token and SigV4 attackers (`iotgate loadtest --token-port`) against the gateway's token listener:
refused by a sound gateway, and each attack row failing, naming the hole, when the gateway is broken on purpose
(an authorizer that checks neither expiry nor audience, no replay memory, no signature check)."""

from __future__ import annotations

import dataclasses

import jwt
import pytest

from gateway.auth import access_keys, authorizers, sigv4
from loadtests.plan import TOKEN_ATTACKS

from .conftest import start_gateway
from .test_loadtest import LOADTEST_LIMITS, explain, failures, loadtest, pool, stats  # noqa: F401 - fixtures

RUN = ("--users", "2", "--workers", "1", "--spawn-rate", "10", "--run-time", "20", "--shape", "attack-mix",
       "--telemetry-interval", "2")


@pytest.fixture(scope="module")
def token_gateway(fleet, broker, pool):  # noqa: F811 - the pool fixture
    running = start_gateway(fleet, broker.config.url, token_port=0, **LOADTEST_LIMITS)
    yield running
    running.thread.stop()


def run(fleet, gw, tmp_path):
    gw.sync(fleet.registry)
    return loadtest(fleet, tmp_path, "--target", "gateway", "--endpoint", f"127.0.0.1:{gw.port}",
                    "--token-port", str(gw.gateway.token_port), *RUN)


def test_a_sound_token_listener_refuses_every_token_attack(fleet, token_gateway, tmp_path):
    proc = run(fleet, token_gateway, tmp_path)
    assert proc.returncode == 0, explain(proc)
    rows = stats(tmp_path)
    for kind in TOKEN_ATTACKS:
        row = rows[("ATTACK", kind)]
        assert int(row["Request Count"]) >= 1 and int(row["Failure Count"]) == 0, (kind, row)
    refused = {r["kind"] for r in token_gateway.events.find(decision="refused")}
    assert {"token_expired", "token_audience", "signature_replayed"} <= refused, refused
    # the run's authorizer and keys are deleted when it ends, and so are their files
    assert "iotgate-loadtest-jwt" not in {a.name for a in fleet.registry.list_authorizers()}
    assert fleet.registry.list_access_keys("iotgate-loadtest") == []
    assert not (fleet.home / "loadtest" / "tokens").exists()


def test_a_broken_token_listener_fails_each_attack_row_naming_the_hole(fleet, token_gateway, tmp_path, monkeypatch):
    original = authorizers.verify_jwt

    def lenient(token, settings, keys, now):   # checks the signature, but neither expiry nor audience
        claims = jwt.decode(token, options={"verify_signature": False})
        return original(token, dataclasses.replace(settings, audience=settings.audience + (claims["aud"],)), keys,
                        claims["exp"] - 1)

    monkeypatch.setattr(authorizers, "verify_jwt", lenient)
    monkeypatch.setattr(access_keys.ReplayCache, "first_use", lambda self, signature, valid_until, now: True)
    monkeypatch.setattr(sigv4, "verify", lambda req, secret: None)
    proc = run(fleet, token_gateway, tmp_path)
    assert proc.returncode == 1, explain(proc)
    rows = stats(tmp_path)
    for kind in TOKEN_ATTACKS:
        assert int(rows[("ATTACK", kind)]["Failure Count"]) >= 1, (kind, rows[("ATTACK", kind)])
    errors = {(f["Name"], f["Error"]) for f in failures(tmp_path)}
    expected = {"expired-token": "token expired an hour ago: CONNACK accepted",
                "foreign-audience-token": "token issued for audience another-service: CONNACK accepted",
                "replayed-signature": "the same signed URL again: CONNACK accepted",
                "wrong-secret-signature": "signed with a wrong secret for AKIA"}
    for kind, text in expected.items():
        assert any(name == kind and "AttackAccepted" in error and text in error for name, error in errors), \
            (kind, errors)
    assert "result: FAIL" in proc.stdout


# --------------------------------------------------------------------------------------------- device users

@pytest.mark.parametrize("auth,field", [("token", "authorizer"), ("sigv4", "access_key")])
def test_device_users_authenticate_by_token_or_signature(fleet, token_gateway, tmp_path, auth, field):
    token_gateway.sync(fleet.registry)
    proc = loadtest(fleet, tmp_path, "--target", "gateway", "--endpoint", f"127.0.0.1:{token_gateway.port}",
                    "--token-port", str(token_gateway.gateway.token_port), "--auth", auth, "--users", "4",
                    "--workers", "2", "--spawn-rate", "20", "--run-time", "8", "--telemetry-interval", "1")
    assert proc.returncode == 0, explain(proc)
    rows = stats(tmp_path)
    for name in ("connack", "suback", "puback", "e2e"):
        row = rows[("MQTT", name)]
        assert int(row["Request Count"]) >= (4 if name != "e2e" else 1) and int(row["Failure Count"]) == 0, \
            (name, row)
    allowed = [r for r in token_gateway.events.find(event="connect", decision="allowed")
               if (r["client_id"] or "").startswith("lt-") and r.get(field)]
    assert len({r["client_id"] for r in allowed}) == 4, allowed
    assert all(r["certificate_id"] is None for r in allowed)
    # one credential per user: four principals (tokens name the thing; keys are one per thing)
    assert len({r.get("principal") if auth == "token" else r["access_key"] for r in allowed}) == 4
    assert fleet.registry.list_access_keys("iotgate-loadtest-devices") == []
    assert not (fleet.home / "loadtest" / "device-tokens").exists()
