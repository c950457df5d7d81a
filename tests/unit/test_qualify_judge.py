"""The qualification judges as tables: observations in, verdict and reasons out."""

from __future__ import annotations

import random

import pytest

from devices.backoff import Backoff
from gateway.policy import Decision, DecidedBy
from gateway.qualify.clienthello import ClientHello
from gateway.qualify.judge import (backoff_delays, judge_backoff, judge_ciphers, judge_client_id, judge_keepalive,
                                   judge_legacy_versions, judge_permissions, judge_refusal, judge_tls_connect)
from gateway.qualify.model import Handshake, HandshakeOutcome as H, alert_name
from gateway.qualify.verdict import CaseResult, Verdict, run_verdict

P, W, F, E, S = (Verdict.PASS, Verdict.PASS_WITH_WARNINGS, Verdict.FAIL, Verdict.ERROR, Verdict.SKIPPED)


def hello(suites=(0xC02B, 0x1301), versions=(0x0304, 0x0303), sni="localhost", legacy=0x0303) -> ClientHello:
    return ClientHello(legacy, versions, tuple(suites), sni, (), None, None, (), (), 100)


def hs(outcome, *, flight=True, **kw) -> Handshake:
    kw.setdefault("hello", hello())
    return Handshake(outcome, server_flight=flight, **kw)


DONE = hs(H.COMPLETED, version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256")


@pytest.mark.parametrize("handshake, verdict, words", [
    (hs(H.DEVICE_ALERT, alert="bad_certificate"), P, "TLS alert bad_certificate"),
    (hs(H.DEVICE_CLOSED), W, "closed the connection"),
    (DONE, F, "accepted a server certificate"),
    (hs(H.SERVER_REFUSED, reason="PEER_DID_NOT_RETURN_A_CERTIFICATE", detail="no client certificate"), E,
     "inconclusive"),
    (hs(H.DEVICE_ALERT, alert="unknown_ca", flight=False), E, "inconclusive"),  # an alert before our certificate
    (hs(H.TIMEOUT, detail="no answer"), E, "inconclusive"),
    (hs(H.NO_HELLO, flight=False, hello=None), E, "inconclusive"),
    (hs(H.NOT_TLS, flight=False, hello=None, detail="plaintext MQTT"), F, "did not speak TLS"),
], ids=["alert", "closed", "accepted", "endpoint-refused", "early-alert", "timeout", "no-hello", "plaintext"])
def test_refusal(handshake, verdict, words):
    judgement = judge_refusal(handshake, problem="for another name")
    assert judgement.verdict is verdict and words in judgement.summary


@pytest.mark.parametrize("handshake, name, verdict, words", [
    (DONE, "localhost", P, "TLS handshake completed"),
    (hs(H.COMPLETED, hello=hello(sni=None)), "localhost", W, "no SNI"),
    (hs(H.COMPLETED, hello=hello(sni="other")), "localhost", W, "is not the endpoint name"),
    (hs(H.DEVICE_ALERT, alert="unknown_ca"), "localhost", F, "does the device trust"),
    (hs(H.SERVER_REFUSED, detail="the device presented no client certificate"), "localhost", F, "no client"),
    (hs(H.TIMEOUT, detail="no answer"), "localhost", F, "did not finish"),
])
def test_tls_connect(handshake, name, verdict, words):
    judgement = judge_tls_connect(handshake, endpoint_name=name)
    assert judgement.verdict is verdict
    assert words in judgement.summary + " ".join(judgement.warnings)


@pytest.mark.parametrize("suites, verdict, words", [
    ((0xC02B, 0xC02F, 0x1301), P, "recommended: ECDHE-ECDSA-AES128-GCM-SHA256"),
    ((0x1301, 0x1302), W, "none of AWS IoT Core's recommended suites"),
    ((0xC02B, 0xCCA9), W, "not supported by AWS IoT Core"),
    ((0x009E, 0xCCA9), F, "none of the 2 offered cipher suites is supported"),
    ((), F, "none of the 0"),
])
def test_cipher_suites(suites, verdict, words):
    judgement = judge_ciphers(hello(suites))
    assert judgement.verdict is verdict and words in judgement.summary + " ".join(judgement.warnings)


def test_cipher_suites_without_a_hello_is_an_error():
    assert judge_ciphers(None).verdict is E


@pytest.mark.parametrize("handshake, verdict, words", [
    (hs(H.SERVER_REFUSED, reason="UNSUPPORTED_PROTOCOL"), P, "offers only TLS 1.3, TLS 1.2"),
    (hs(H.DEVICE_ALERT, alert="protocol_version", hello=hello(versions=None)), P, "alert protocol_version"),
    (hs(H.COMPLETED, version="TLSv1.1", hello=hello(versions=None)), F, "completed a TLSv1.1 handshake"),
    (hs(H.SERVER_REFUSED, reason="NO_SHARED_CIPHER", hello=hello(versions=(0x0303, 0x0302))), F,
     "offers versions below TLS 1.2"),
    (hs(H.SERVER_REFUSED, reason="NO_SHARED_CIPHER", hello=hello(versions=None)), W, "no TLS 1.0/1.1 session"),
    (hs(H.DEVICE_CLOSED, hello=hello(versions=None)), W, "closed the connection"),
    (hs(H.NO_HELLO, hello=None, flight=False), E, "no ClientHello"),
])
def test_legacy_versions(handshake, verdict, words):
    judgement = judge_legacy_versions(handshake)
    assert judgement.verdict is verdict and words in judgement.summary


def _backoff(jitter: str, seed: int, *, rounds=2, attempts=5, base=1.0, cap=120.0) -> list[list[float]]:
    b = Backoff(base=base, cap=cap, jitter=jitter, random=random.Random(seed).random)
    return [[b.next_delay() for _ in range(attempts)] for _ in range(rounds)]


@pytest.mark.parametrize("rounds, jitter_needed, verdict, words", [
    (_backoff("full", 7), True, P, "with jitter"),
    (_backoff("equal", 7), True, P, "with jitter"),
    (_backoff("none", 7), True, W, "without jitter"),
    (_backoff("none", 7), False, P, "without jitter"),
    ([[1, 2, 4, 8, 8], [8, 8, 8, 8, 8]], True, W, "without jitter"),      # capped exponential, no reset
    ([[0.3] * 5, [0.31, 0.29, 0.3, 0.3, 0.32]], True, F, "fixed interval of about 0.3"),
    ([[5, 4, 3, 2, 1]], True, F, "shrink"),
    ([[4, 2, 4, 2.5, 3]], True, W, "vary"),
    ([[0.9, 0.3, 0.8, 0.2, 0.7]], True, W, "vary but do not grow"),       # jitter without backoff
    ([[1.0]], True, E, "too few"),
    ([[]], True, E, "too few"),
], ids=["full-jitter", "equal-jitter", "exponential", "exponential-no-jitter-needed", "capped", "fixed",
        "shrinking", "wobbling", "jitter-only", "one-delay", "none"])
def test_backoff(rounds, jitter_needed, verdict, words):
    judgement = judge_backoff(rounds, require_jitter=jitter_needed)
    assert judgement.verdict is verdict, judgement
    assert words in judgement.summary


def test_backoff_minimum_delay():
    judgement = judge_backoff([[0.2, 0.5, 1.0, 2.0]], require_jitter=False, min_delay=1.0)
    assert judgement.verdict is F and "sooner than 1 s" in judgement.summary


def test_a_correct_full_jitter_device_is_never_failed_by_chance():
    """Device Advisor's shape (2 rounds of 5): over many seeds, full jitter never fails and almost always passes."""
    verdicts = [judge_backoff(_backoff("full", seed), require_jitter=True).verdict for seed in range(2000)]
    assert F not in verdicts and verdicts.count(P) >= 1990


def test_backoff_delays_from_attempts():
    # (connected, ended): the delay counts from the end of an attempt, or from its start if it was still open
    assert backoff_delays([(0.0, 1.0), (1.5, 2.0), (4.0, None), (4.5, None)]) == [0.5, 2.0, 0.5]
    assert backoff_delays([(0.0, 5.0), (1.0, None)]) == [1.0]


@pytest.mark.parametrize("keep_alive, silences, observed, verdict, words", [
    (2, [1.9, 2.0, 1.0], 4.9, P, "a packet at least every 2.00 s"),
    (2, [2.6, 1.0], 3.6, W, "longer than its keep alive"),
    (2, [3.2], 3.2, F, "silent for 3.20 s"),
    (0, [], 0.0, S, "no keep alive"),
    (100, [], 0.0, S, "needs 150 s of observation"),
])
def test_keepalive(keep_alive, silences, observed, verdict, words):
    judgement = judge_keepalive(keep_alive, silences, observed=observed, max_wait=120)
    assert judgement.verdict is verdict and words in judgement.summary + " ".join(judgement.warnings)


@pytest.mark.parametrize("client_id, password, verdict, words", [
    ("device-00001", None, P, "no password, key, token or signature found"),
    ("dev?password=hunter2", None, F, "a secret as key=value"),
    ("dev-s3cr3t-pw", b"s3cr3t-pw", F, "the CONNECT password"),
    ("AKIAIOSFODNN7EXAMPLE-dev", None, F, "an AWS access key id"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZXYifQ.sig", None, F, "a JSON Web Token"),
    ("dev-----BEGIN PRIVATE KEY", None, F, "a PEM block"),
    ("dev&X-Amz-Signature=abc", None, F, "SigV4"),
    ("dev-" + "Zq8xR2vLp9TfW3kNb7YcH4mJs6Ad1Eg5", None, W, "random-looking token"),
    ("a" * 129, None, W, "129 bytes"),
    ("", None, W, "empty client id"),
    ("0" * 64, None, P, "no password, key, token or signature found"),  # a certificate id is public
])
def test_client_id(client_id, password, verdict, words):
    judgement = judge_client_id(client_id, username=None, password=password)
    assert judgement.verdict is verdict, judgement
    assert words in judgement.summary + " ".join(judgement.warnings)


ALLOW = Decision(True, (DecidedBy("sensor", "1", 1, "Allow"),))
DENY = Decision(False, (DecidedBy("sensor", "1", 2, "Deny"),))
IMPLICIT = Decision(False)


@pytest.mark.parametrize("decisions, lint, verdict, words", [
    ([("iot:Connect", "client/d", ALLOW), ("iot:Publish", "topic/dt/d/t", ALLOW)], (), P, "2 attempted actions"),
    ([("iot:Connect", "client/d", ALLOW), ("iot:Publish", "topic/dt/d/secret", DENY)], (), F,
     "iot:Publish on topic/dt/d/secret denied by policy 'sensor' version 1 Statement[2] (Deny)"),
    ([("iot:Connect", "client/d", ALLOW), ("iot:Subscribe", "topicfilter/#", IMPLICIT)], (), F,
     "no statement allows it (implicit deny)"),
    ([("iot:Connect", "client/other", IMPLICIT)], (), F, "iot:Connect on client/other denied"),
    ([("iot:Connect", "client/d", ALLOW)], (), W, "only connected"),
    ([("iot:Connect", "client/d", ALLOW), ("iot:Publish", "topic/x", ALLOW)], ("policy 'p' Statement[0]: *",), W,
     "Statement[0]"),
    ([], (), E, "attempted nothing"),
])
def test_permissions(decisions, lint, verdict, words):
    judgement = judge_permissions(decisions, lint_findings=lint)
    assert judgement.verdict is verdict
    assert words in judgement.summary + " ".join(judgement.warnings)


def test_alert_names():
    assert alert_name("TLSV1_ALERT_UNKNOWN_CA") == "unknown_ca"
    assert alert_name("SSLV3_ALERT_CERTIFICATE_EXPIRED") == "certificate_expired"
    assert alert_name("TLSV13_ALERT_CERTIFICATE_REQUIRED") == "certificate_required"
    assert alert_name("PEER_DID_NOT_RETURN_A_CERTIFICATE") is None and alert_name(None) is None


def _result(verdict):
    return CaseResult("X", "x", "TLS", verdict, "")


@pytest.mark.parametrize("verdicts, run", [
    ([P, P], P), ([P, W], W), ([P, F], F), ([P, S], F), ([F, E], E), ([], E),
])
def test_run_verdict(verdicts, run):
    assert run_verdict([_result(v) for v in verdicts]) is run
