"""What a client saw, read as evidence, and the run's verdict from it: tables of cases (pure)."""

from __future__ import annotations

import asyncio

import pytest

from devices.client import ConnectOutcome, ConnectTimings, PublishResult, Reason, SubscribeResult
from devices.evidence import classify_connect, classify_publish, classify_subscribe, is_auth_refusal
from devices.plan import RunPartError
from devices.report import (Check, CheckStatus, Gate, GateResult, Observation, Outcome, SLOError, Verdict, failures,
                            parse_slo, refusals, run_verdict)
from devices.runtime import guarded

O = Outcome
CONNECTS = [  # (reason, detail, code, stage) -> outcome, detail contains
    ((Reason.CONNECTED, "", 0, "mqtt"), O.ALLOWED, "connected"),
    ((Reason.REFUSED, "NOT_AUTHORIZED (0x87)", 0x87, "mqtt"), O.REFUSED_MQTT, "CONNACK NOT_AUTHORIZED (0x87)"),
    ((Reason.CLOSED, "DISCONNECT NOT_AUTHORIZED (0x87)", 0x87, "mqtt"), O.REFUSED_MQTT, "DISCONNECT"),
    ((Reason.CLOSED, "[Errno 104] Connection reset by peer", None, "mqtt"), O.CLOSED,
     "closed by the server after CONNECT, before CONNACK (ECONNRESET; no TLS alert received)"),
    ((Reason.TLS, "TLSV13_ALERT_CERTIFICATE_REQUIRED: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert", None,
      "tls"), O.REFUSED_TLS, "TLS alert TLSV13_ALERT_CERTIFICATE_REQUIRED"),
    ((Reason.TLS, "SSLV3_ALERT_CERTIFICATE_EXPIRED: sslv3 alert certificate expired", None, "tls"), O.REFUSED_TLS,
     "TLS alert SSLV3_ALERT_CERTIFICATE_EXPIRED"),
    ((Reason.TLS, "ECONNRESET: Connection reset by peer", None, "tls"), O.REFUSED_TLS,
     "closed by the server during the TLS handshake"),
    ((Reason.CLOSED, "EOF occurred in violation of protocol", None, "tls"), O.REFUSED_TLS, "during the TLS handshake"),
    # the server's certificate failing here, or a peer that is no TLS server, is not the server refusing us
    ((Reason.TLS, "CERTIFICATE_VERIFY_FAILED: certificate verify failed: unable to get local issuer", None, "tls"),
     O.INCONCLUSIVE, "on this side"),
    ((Reason.TLS, "WRONG_VERSION_NUMBER: wrong version number", None, "tls"), O.INCONCLUSIVE, "not a refusal"),
    ((Reason.TCP, "ECONNREFUSED: Connection refused", None, "tcp"), O.INCONCLUSIVE, "tcp: ECONNREFUSED"),
    ((Reason.DNS, "EAI_-2: no such host", None, "dns"), O.INCONCLUSIVE, "dns"),
    ((Reason.TIMEOUT, "no CONNACK within 10 s", None, "mqtt"), O.INCONCLUSIVE, "timeout"),
    ((Reason.PROTOCOL, "not MQTT", None, "mqtt"), O.INCONCLUSIVE, "protocol"),
    ((Reason.IDENTITY, "KEY_VALUES_MISMATCH: /d/device.pem / /d/device.key: key values mismatch", None, "identity"),
     O.DEVICE_ERROR, "/d/device.key"),
]


@pytest.mark.parametrize("fields, outcome, detail", CONNECTS, ids=[f"{c[0][0].value}-{i}" for i, c in
                                                                  enumerate(CONNECTS)])
def test_connect_outcomes_as_evidence(fields, outcome, detail):
    reason, text, code, stage = fields
    got = classify_connect(ConnectOutcome(reason is Reason.CONNECTED, reason, text, code, stage=stage,
                                          timings=ConnectTimings()))
    assert got[0] is outcome and detail in got[1], got
    assert got[0].refused == (outcome in (O.REFUSED_TLS, O.REFUSED_MQTT, O.CLOSED))


@pytest.mark.parametrize("code, level, auth", [(0x05, 4, True), (0x03, 4, False), (0x87, 5, True),
                                               (0x88, 5, False), (0x9F, 5, False)])
def test_auth_refusals_are_may_not_not_not_now(code, level, auth):
    assert is_auth_refusal(ConnectOutcome(False, Reason.REFUSED, "x", code), level) is auth


@pytest.mark.parametrize("result, expected", [
    (PublishResult(True, "acked", 1, 0), None),
    (PublishResult(False, "refused", 1, 0x87), (O.REFUSED_MQTT, "PUBACK 0x87")),
    (PublishResult(False, "closed"), (O.CLOSED, "closed by the server after the PUBLISH")),
    (PublishResult(False, "timeout"), (O.INCONCLUSIVE, "publish timeout")),
])
def test_publish_results_as_evidence(result, expected):
    assert classify_publish(result) == expected


@pytest.mark.parametrize("result, expected", [
    (SubscribeResult(True, "granted", (1,)), None),
    (SubscribeResult(False, "refused", (0x87,)), (O.REFUSED_MQTT, "SUBACK 0x87")),
    (SubscribeResult(False, "connection-lost"), (O.CLOSED, "closed by the server after the SUBSCRIBE")),
    (SubscribeResult(False, "timeout"), (O.INCONCLUSIVE, "subscribe timeout")),
])
def test_subscribe_results_as_evidence(result, expected):
    assert classify_subscribe(result) == expected


# --------------------------------------------------------------------------------------------- verdicts

def obs(outcome: Outcome, expect: str = "refused", member: str = "a1", **kw) -> Observation:
    return Observation(f"attacker:{member}", member, expect, outcome, **kw)


VERDICTS = [  # observations, checks, strict -> passed, line starts with
    ([obs(O.REFUSED_TLS), obs(O.ALLOWED, "allowed", "d1")], [], False, True, "result: PASS"),
    ([obs(O.INCONCLUSIVE, detail="tcp: ECONNREFUSED")], [], False, False, "result: FAIL (1 inconclusive"),
    ([obs(O.DEVICE_ERROR, "allowed", detail="key")], [], False, False, "result: FAIL (1 inconclusive or in error)"),
    ([obs(O.ALLOWED)], [], False, False, "result: FAIL (1 mismatch)"),
    ([obs(O.CLOSED), obs(O.SKIPPED, skipped="no registry")], [Check("attacker:revoked", CheckStatus.SKIPPED,
                                                                   "no registry")],
     False, True, "result: PASS, 1 check skipped: attacker:revoked"),
    ([obs(O.CLOSED)], [Check("attacker:revoked", CheckStatus.SKIPPED, "no registry")], True, False,
     "result: FAIL, 1 check skipped (--strict): attacker:revoked"),
    ([obs(O.CLOSED)], [Check("command round trips", CheckStatus.FAILED, "none answered")], False, False,
     "result: FAIL (1 check failed)"),
]


@pytest.mark.parametrize("observations, checks, strict, passed, line", VERDICTS)
def test_only_evidence_passes(observations, checks, strict, passed, line):
    verdict = run_verdict(observations, checks, [], strict=strict)
    assert verdict.passed is passed and verdict.line.startswith(line), verdict.line


def test_a_failed_gate_and_a_run_error_fail_the_run():
    gate = GateResult(Gate("errors", "=", 0.0, "errors=0"), 1.0, False)
    assert run_verdict([obs(O.REFUSED_MQTT)], [], [gate]).line == "result: FAIL (1 SLO gate failed)"
    assert run_verdict([], [], [], errors=["the run hit its hard deadline"]).line == \
        "result: FAIL (the run hit its hard deadline)"


def test_verdicts_of_observations():
    assert obs(O.CLOSED).verdict is Verdict.OK
    assert obs(O.ALLOWED, "allowed", problems=("lost 3",)).verdict is Verdict.MISMATCH
    assert obs(O.INCONCLUSIVE, "allowed").verdict is Verdict.INCONCLUSIVE
    assert failures([obs(O.INCONCLUSIVE, detail="tcp: ECONNREFUSED")]) == [
        "attacker:a1: a1 inconclusive (tcp: ECONNREFUSED)"]
    assert refusals([obs(O.CLOSED, detail="x"), obs(O.REFUSED_TLS, detail="x"), obs(O.ALLOWED)]) == {"x": 2}


@pytest.mark.parametrize("kwargs, error", [
    (dict(outcome="refused"), "must be an Outcome"),
    (dict(outcome=O.SKIPPED), "needs its reason"),
    (dict(outcome=O.CLOSED, skipped="why"), "needs its reason"),
    (dict(outcome=O.CLOSED, expect="maybe"), "allowed or refused"),
])
def test_an_observation_cannot_say_what_it_does_not_mean(kwargs, error):
    args = dict(group="g", member="m", expect="refused") | kwargs
    with pytest.raises((TypeError, ValueError), match=error):
        Observation(**args)


# --------------------------------------------------------------------------------------------- SLO units

@pytest.mark.parametrize("text, error", [
    ("connack_p99<500", "connack_p99 is a duration: give its unit"),
    ("e2e_max<2/s", "e2e_max is a duration"),
    ("errors=0s", "errors is not a duration"),
    ("messages=3%", "messages takes no '%'"),
])
def test_a_gate_needs_the_unit_of_its_metric(text, error):
    with pytest.raises(SLOError, match=error):
        parse_slo(text)


@pytest.mark.parametrize("text, value, shown", [
    ("connack_p99<500ms", 0.0123, "12.3 ms"), ("tls_p50<1s", 0.25, "0.25 s"), ("e2e_max<250us", 0.0001, "100 us"),
    ("connected_ratio>=99%", 0.995, "99.5%"), ("errors=0", 2, "2"), ("messages_per_s>=5/s", 7.5, "7.5/s"),
    ("connack_p99<500ms", None, "no samples"),
])
def test_values_are_shown_in_the_gates_unit(text, value, shown):
    [gate] = parse_slo(text)
    assert gate.show(value) == shown


# --------------------------------------------------------------------------------------------- parts

def test_an_exception_names_the_innermost_part():
    async def publisher():
        raise RuntimeError("bug")

    async def device():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(guarded("publishers", publisher()))

    with pytest.raises(RunPartError, match="failed in its publishers part: RuntimeError: bug") as info:
        asyncio.run(guarded("devices", device()))
    assert info.value.part == "publishers" and info.value.exit_code == 3


def test_a_skipped_check_has_its_own_colour_and_place_in_the_html_report(tmp_path):
    from devices.report import group_summary, write_html

    observations = [Observation("attacker:revoked", "r1", "refused", O.SKIPPED, skipped="no registry"), obs(O.CLOSED)]
    verdict = run_verdict(observations, [Check("attacker:revoked", CheckStatus.SKIPPED, "no registry")], [])
    report = {"scenario": "s", "target": "mosquitto", "endpoint": "127.0.0.1:1", "connector": "native",
              "passed": verdict.passed, "result": "PASS", "verdict": verdict.line,
              "summary": {"devices": 0, "attackers": 2, "seconds": 1.0, "connects": 1, "connects_per_s": 1.0,
                          "messages": 0, "messages_per_s": 0.0},
              "latency": {}, "refusals": refusals(observations), "groups": group_summary(observations),
              "checks": [{"check": "attacker:revoked", "status": "skipped", "detail": "no registry"}],
              "mismatches": [], "failures": [], "slo": [], "notes": []}
    text = write_html(tmp_path / "r.html", report, None).read_text()
    assert "<tr class=\"skipped\"><td>attacker:revoked</td>" in text and ".skipped{background:" in text
    assert "result: PASS, 1 check skipped: attacker:revoked" in text


TOKEN_CONNECTS = [  # try_connect's (stage, code, detail) -> outcome, detail contains
    (("mqtt", 0, "CONNACK"), O.ALLOWED, "CONNACK accepted"),
    (("mqtt", 0x87, "CONNACK"), O.REFUSED_MQTT, "CONNACK NOT_AUTHORIZED (0x87)"),
    (("mqtt", 0x05, "CONNACK"), O.REFUSED_MQTT, "0x05"),
    (("http", 403, '{"message": "Forbidden"}'), O.REFUSED_HTTP, "HTTP 403 on the WebSocket upgrade"),
    (("http", 401, ""), O.REFUSED_HTTP, "HTTP 401"),
    # a wrong path or a broken server is no refusal of the credential
    (("http", 404, "not found"), O.INCONCLUSIVE, "not a refusal"),
    (("http", 502, "bad gateway"), O.INCONCLUSIVE, "HTTP 502"),
    (("tls", None, "[SSL: TLSV1_ALERT_NO_APPLICATION_PROTOCOL] alert"), O.REFUSED_TLS, "TLSV1_ALERT_NO_APPLICATION"),
    (("tls", None, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), O.INCONCLUSIVE, "this side"),
    (("closed", None, "closed without a CONNACK"), O.CLOSED, "closed by the server"),
    (("tcp", None, "ConnectionRefusedError: refused"), O.INCONCLUSIVE, "tcp"),
    (("timeout", None, "no CONNACK within 5 s"), O.INCONCLUSIVE, "timeout"),
]


@pytest.mark.parametrize("seen,outcome,text", TOKEN_CONNECTS, ids=[f"{c[0][0]}-{c[0][1]}" for c in TOKEN_CONNECTS])
def test_token_connect_evidence(seen, outcome, text):
    from devices.evidence import classify_token_connect
    from devices.tokens import ConnectResult

    got, detail = classify_token_connect(ConnectResult(*seen))
    assert got is outcome and text in detail
    assert got.refused == (outcome in (O.REFUSED_MQTT, O.REFUSED_HTTP, O.REFUSED_TLS, O.CLOSED))
