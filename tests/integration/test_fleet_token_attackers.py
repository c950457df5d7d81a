"""The fleet simulator's token and SigV4 attackers against the gateway's token listener: refused by a sound set-up,
and each one's verdict naming the hole when the set-up is broken on purpose (an authorizer that accepts any
token, a gateway that forgets signatures, one that checks no signature)."""

from __future__ import annotations

import sys

import pytest
from cryptography.hazmat.primitives import serialization

from devices import token_attacks
from devices.client import Endpoint
from devices.fleet import FleetPlan, LocalPKI, run_fleet
from devices.report import Outcome
from devices.scenario import loads_scenario
from gateway.auth import access_keys, sigv4

from .conftest import start_gateway

KINDS = ("expired-token", "foreign-audience-token", "replayed-signature", "wrong-secret-signature")
ACCEPT_ANYTHING = """import json, sys
json.load(sys.stdin)
doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}
print(json.dumps({"isAuthenticated": True, "principalId": "anyone", "policyDocuments": [doc],
                  "disconnectAfterInSeconds": 3600, "refreshAfterInSeconds": 300}))
"""


@pytest.fixture(scope="module")
def tgw(fleet, broker):
    running = start_gateway(fleet, broker.config.url, token_port=0)
    yield running
    running.thread.stop()


def scenario(*kinds: str) -> str:
    text = 'name = "token-attackers"\nduration = 0.5\nregistry_propagation = 0.2\ndrain = 0.5\n'
    for kind in kinds:
        text += f'[[attackers]]\nkind = "{kind}"\ntimeout = 5\n'
    return text


def run(fleet, tgw, *kinds: str, token_port: int | None = -1):
    port = tgw.gateway.token_port if token_port == -1 else token_port
    return run_fleet(FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", tgw.port, "localhost"), devices=0,
                               scenario=loads_scenario(scenario(*kinds)), token_port=port,
                               local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now)))


def outcomes(result) -> dict[str, tuple[Outcome, str]]:
    return {o.group.removeprefix("attacker:"): (o.outcome, o.detail) for o in result.observations}


def test_a_sound_token_listener_refuses_every_token_and_signature_attacker(fleet, tgw):
    result = run(fleet, tgw, *KINDS)
    assert result.passed, (result.verdict, result.mismatches, result.failures)
    seen = outcomes(result)
    assert seen["expired-token"][0] is Outcome.REFUSED_MQTT and "0x87" in seen["expired-token"][1]
    assert seen["foreign-audience-token"][0] is Outcome.REFUSED_MQTT
    assert seen["replayed-signature"][0] is Outcome.REFUSED_HTTP and "403" in seen["replayed-signature"][1]
    assert seen["wrong-secret-signature"][0] is Outcome.REFUSED_HTTP
    # the run's authorizer and key are gone afterwards
    assert token_attacks.AUTHORIZER not in {a.name for a in fleet.registry.list_authorizers()}
    assert fleet.registry.list_access_keys(token_attacks.KEY_IDENTITY) == []
    refused = tgw.events.find(event="connect", authorizer=token_attacks.AUTHORIZER)
    assert any("expired" in (r.get("reason") or "").lower() for r in refused)


def test_without_a_token_listener_the_attackers_are_skipped_with_why(fleet, tgw):
    result = run(fleet, tgw, "expired-token", "replayed-signature", token_port=None)
    assert {o.outcome for o in result.observations} == {Outcome.SKIPPED}
    assert "pass --token-port" in result.observations[0].skipped
    assert not run_fleet_strict_passes(fleet, tgw)


def run_fleet_strict_passes(fleet, tgw) -> bool:
    plan = FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", tgw.port, "localhost"), devices=0,
                     scenario=loads_scenario(scenario("expired-token")), strict=True,
                     local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now))
    return run_fleet(plan).passed


@pytest.mark.parametrize("kind", ["expired-token", "foreign-audience-token"])
def test_an_authorizer_that_accepts_any_token_is_caught(fleet, tgw, monkeypatch, tmp_path, kind):
    """Broken on purpose: the run's authorizer is replaced by one that says yes to everything (its token signature
    still checked, so only the token's content is unguarded)."""
    script = tmp_path / "accept_anything.py"
    script.write_text(ACCEPT_ANYTHING)
    original = token_attacks.TokenWorld.create.__func__

    def broken(cls, registry, home, scratch, **kwargs):
        world = original(cls, registry, home, scratch, **kwargs)
        registry.delete_authorizer(world.authorizer)
        public = world.signer.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        registry.create_authorizer(world.authorizer, "command", config={"command": [sys.executable, str(script)]},
                                   token_key_name=token_attacks.TOKEN_KEY, signing_keys={"run": public})
        return world

    monkeypatch.setattr(token_attacks.TokenWorld, "create", classmethod(broken))
    result = run(fleet, tgw, kind)
    assert not result.passed
    [line] = result.mismatches
    assert line.startswith(f"attacker:{kind}: atk-{kind}-01 got in, expected refused")
    assert "CONNACK accepted" in line


def test_a_gateway_that_accepts_a_replayed_signature_is_caught(fleet, tgw, monkeypatch):
    monkeypatch.setattr(access_keys.ReplayCache, "first_use", lambda self, signature, valid_until, now: True)
    result = run(fleet, tgw, "replayed-signature")
    assert not result.passed
    [line] = result.mismatches
    assert line.startswith("attacker:replayed-signature: atk-replayed-signature-01 got in, expected refused")
    assert "the same signed URL again" in line


def test_a_gateway_that_checks_no_signature_is_caught(fleet, tgw, monkeypatch):
    monkeypatch.setattr(sigv4, "verify", lambda req, secret: None)
    result = run(fleet, tgw, "wrong-secret-signature")
    assert not result.passed
    [line] = result.mismatches
    assert line.startswith("attacker:wrong-secret-signature: atk-wrong-secret-signature-01 got in, expected refused")
    assert "signed with a wrong secret" in line


def test_a_listener_refusing_every_token_makes_the_attack_inconclusive_not_passed(fleet, tgw, monkeypatch):
    """A valid control credential refused too: the bad one's refusal proves nothing."""
    monkeypatch.setattr(sigv4, "verify", lambda req, secret: (_ for _ in ()).throw(
        sigv4.SigV4Error("signature_mismatch", "refused for the test")))
    result = run(fleet, tgw, "wrong-secret-signature")
    assert not result.passed and result.mismatches == []
    [failure] = result.failures
    assert "inconclusive" in failure and "the refusal would prove nothing" in failure


# --------------------------------------------------------------------------------------------- devices

DEVICES = """
name = "token-devices"
duration = 2
registry_propagation = 0.2
drain = 1
[[groups]]
name = "apps"
count = 2
auth = "token"
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 0.3
qos = 1
[[groups]]
name = "phones"
count = 2
auth = "sigv4"
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/telemetry"
interval = 0.3
qos = 1
"""


def run_devices(fleet, tgw, text: str = DEVICES):
    return run_fleet(FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", tgw.port, "localhost"), devices=4,
                               scenario=loads_scenario(text), token_port=tgw.gateway.token_port,
                               local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now)))


def test_token_and_sigv4_devices_connect_publish_and_are_delivered(fleet, tgw):
    result = run_devices(fleet, tgw)
    assert result.passed, (result.verdict, result.mismatches, result.failures)
    groups = {g["group"]: g for g in result.report["groups"]}
    assert groups["apps"]["allowed"] == 2 and groups["phones"]["allowed"] == 2
    checks = {c["check"]: c["status"] for c in result.report["checks"]}
    assert checks["delivery of acknowledged QoS 1 messages"] == "passed"
    allowed = tgw.events.find(event="connect", decision="allowed")
    assert {r["client_id"] for r in allowed if r.get("authorizer") == token_attacks.DEVICE_AUTHORIZER} == \
        {"sim-apps-00001", "sim-apps-00002"}
    assert {r["client_id"] for r in allowed if r.get("access_key")} >= {"sim-phones-00001", "sim-phones-00002"}
    assert token_attacks.DEVICE_AUTHORIZER not in {a.name for a in fleet.registry.list_authorizers()}
    assert fleet.registry.list_access_keys(token_attacks.DEVICE_KEY_IDENTITY) == []


def test_a_listener_refusing_good_signatures_fails_the_run_naming_the_devices(fleet, tgw, monkeypatch):
    def refuse(req, secret):
        raise sigv4.SigV4Error("signature_mismatch", "refused for the test")

    monkeypatch.setattr(sigv4, "verify", refuse)
    result = run_devices(fleet, tgw)
    assert not result.passed
    refused = [m for m in result.mismatches if m.startswith("phones: ")]
    assert len(refused) == 2 and all("was refused, expected allowed" in m and "HTTP 403" in m for m in refused), \
        result.mismatches
    assert not [m for m in result.mismatches if m.startswith("apps: ")]


def test_token_groups_need_the_token_listener(fleet, tgw):
    from devices.plan import FleetError

    with pytest.raises(FleetError, match="group apps: auth = 'token' needs the gateway's token listener"):
        run_fleet(FleetPlan(target="gateway", endpoint=Endpoint("127.0.0.1", tgw.port, "localhost"), devices=2,
                            scenario=loads_scenario(DEVICES),
                            local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now)))


def test_token_and_sigv4_devices_on_the_aws_iot_device_sdk_builders(fleet, tgw):
    """The same groups through the SDK's own builders (direct_with_custom_authorizer,
    websockets_with_default_aws_signing), as a team's app would run them."""
    result = run_fleet(FleetPlan(target="gateway", endpoint=Endpoint("localhost", tgw.port), devices=4,
                                 scenario=loads_scenario(DEVICES), connector="awsiotsdk",
                                 token_port=tgw.gateway.token_port,
                                 local=LocalPKI(fleet.store, fleet.registry, fleet.store.load_issuer(), fleet.now)))
    assert result.passed, (result.verdict, result.mismatches, result.failures)
    groups = {g["group"]: g for g in result.report["groups"]}
    assert groups["apps"]["allowed"] == 2 and groups["phones"]["allowed"] == 2


def test_the_cli_runs_token_devices_and_attackers_and_writes_the_reports(fleet, tgw, tmp_path, capsys, monkeypatch):
    import json

    from iotgate.cli import main

    (tmp_path / "tokens.toml").write_text(DEVICES + scenario(*KINDS).split("\n", 4)[4])
    monkeypatch.setenv("COLUMNS", "200")
    tgw.sync(fleet.registry)
    with pytest.raises(SystemExit) as exit_info:
        main(["--home", str(fleet.home), "fleet", "run", "--target", "gateway", "--endpoint",
              f"127.0.0.1:{tgw.port}", "--server-name", "localhost", "--token-port", str(tgw.gateway.token_port),
              "--devices", "4", "--scenario", str(tmp_path / "tokens.toml"), "--report", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None), out
    assert "result: PASS" in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["attacker:replayed-signature"]["refused"] == 1 and groups["phones"]["allowed"] == 2
    assert any("HTTP 403" in d for d in groups["attacker:replayed-signature"]["details"])
    assert (tmp_path / "report" / "report.html").is_file()
