"""The load test's pure parts as tables: identity slices, shapes, request rows, attack verdicts."""

from __future__ import annotations

import pytest

from devices.client import ConnectOutcome, ConnectTimings, PublishResult, Reason, SubscribeResult
from loadtests.attacks import VerdictKind, classify_connect, classify_step
from loadtests.events import (
    AckRefused,
    ClosedBeforeConnack,
    ConnackRefused,
    IdentityProblem,
    NoAck,
    Timeout,
    TLSRefused,
    Unreachable,
    ack_row,
    connect_rows,
)
from loadtests.plan import ATTACK_KINDS, PlanError, Settings, attack_kinds_for, identities_needed, names_digest, \
    parse_duration, parse_endpoint, worker_slice
from loadtests.shapes import SHAPES, ShapeParams, Tick, default_storm_at, shape_tick

# --------------------------------------------------------------------------------------------- slices


@pytest.mark.parametrize("users, workers, needed", [(100, 1, 100), (100, 2, 100), (101, 2, 102), (1, 4, 4),
                                                    (0, 3, 0), (2000, 3, 2001)])
def test_identities_needed(users, workers, needed):
    assert identities_needed(users, workers) == needed


@pytest.mark.parametrize("pool, workers", [(100, 1), (100, 2), (102, 2), (2001, 3), (7, 7), (10, 3)])
def test_worker_slices_are_disjoint_and_big_enough(pool, workers):
    slices = [set(worker_slice(pool, workers, i)) for i in range(workers)]
    assert all(not (a & b) for i, a in enumerate(slices) for b in slices[i + 1:])
    assert all(s <= set(range(pool)) for s in slices)
    assert all(len(s) == pool // workers for s in slices)


def test_a_pool_of_the_needed_size_gives_every_user_of_an_even_spread_an_identity():
    for users, workers in [(100, 2), (101, 2), (5, 3), (2000, 1)]:
        pool = identities_needed(users, workers)
        assert all(len(worker_slice(pool, workers, i)) >= -(-users // workers) for i in range(workers))


def test_worker_index_outside_the_expected_workers_is_refused():
    with pytest.raises(PlanError, match="expects 2 worker"):
        worker_slice(100, 2, 2)


def test_names_digest_tells_lists_apart():
    assert names_digest(["a", "b"]) == names_digest(["a", "b"])
    assert names_digest(["a", "b"]) != names_digest(["b", "a"])
    assert names_digest(["ab"]) != names_digest(["a", "b"])


@pytest.mark.parametrize("text, expected", [("127.0.0.1", ("127.0.0.1", 8883)), ("localhost:1883", ("localhost", 1883)),
                                            ("[::1]:8884", ("::1", 8884)), ("::1", ("::1", 8883)),
                                            ("x-ats.iot.eu-west-1.amazonaws.com:443",
                                             ("x-ats.iot.eu-west-1.amazonaws.com", 443))])
def test_parse_endpoint(text, expected):
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["", ":8883", "host:0", "host:x", "host:70000"])
def test_parse_endpoint_errors(text):
    with pytest.raises(PlanError):
        parse_endpoint(text)


@pytest.mark.parametrize("text, seconds", [("15", 15), ("15s", 15), ("2m", 120), ("1h30m", 5400), ("1m30s", 90)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_settings_refuse_bad_values():
    with pytest.raises(PlanError, match="--target"):
        Settings(target="broker")
    with pytest.raises(PlanError, match="--e2e"):
        Settings(e2e="both")


def test_attack_kinds_per_target():
    from loadtests.plan import TOKEN_ATTACKS

    runs, skipped = attack_kinds_for("gateway")
    assert runs == ATTACK_KINDS and set(skipped) == set(TOKEN_ATTACKS)
    assert all("--token-port" in why for why in skipped.values())
    assert attack_kinds_for("gateway", 8443) == (ATTACK_KINDS + TOKEN_ATTACKS, {})
    runs, skipped = attack_kinds_for("mosquitto", 8443)
    assert runs == ATTACK_KINDS   # a bare broker must be caught letting them in
    assert all("plain broker" in why for why in skipped.values())
    runs, skipped = attack_kinds_for("aws")
    assert runs == ("no-certificate", "foreign-ca")
    assert set(skipped) == (set(ATTACK_KINDS) | set(TOKEN_ATTACKS)) - set(runs)
    assert all("registered" in why for k, why in skipped.items() if k not in TOKEN_ATTACKS)


# --------------------------------------------------------------------------------------------- shapes

P = ShapeParams(devices=100, spawn_rate=20, run_time=30, attackers=2)
SHAPE_CASES = [
    ("ramp", 0, Tick(100, 20)),
    ("ramp", 29.9, Tick(100, 20)),
    ("ramp", 30, None),
    ("connect-storm", 0, Tick(100, 100)),
    ("telemetry", 5, Tick(100, 20)),
    ("attack-mix", 0, Tick(100, 20, 2)),
    ("reconnect-storm", 1, Tick(100, 20)),
    ("reconnect-storm", default_storm_at(P), Tick(100, 20, storm=True)),
    ("reconnect-storm", 31, None),
]


@pytest.mark.parametrize("name, elapsed, expected", SHAPE_CASES)
def test_shape_ticks(name, elapsed, expected):
    assert shape_tick(SHAPES[name], P, elapsed) == expected


def test_storm_comes_after_the_ramp_and_before_the_end():
    at = default_storm_at(P)
    assert P.devices / P.spawn_rate < at < P.run_time
    assert shape_tick(SHAPES["reconnect-storm"], ShapeParams(10, 10, 20, storm_at=3), 3).storm


def test_only_attack_mix_adds_attackers():
    assert [name for name, spec in SHAPES.items() if shape_tick(spec, P, 0).attackers] == ["attack-mix"]


# --------------------------------------------------------------------------------------------- rows

def outcome(ok, reason, *, tcp=None, tls=None, connack=None, total=0.5, detail="", code=None, stage="mqtt"):
    return ConnectOutcome(ok, reason, detail, code, False, ConnectTimings(0.0, tcp, tls, connack, total), "TLSv1.3",
                          stage)


ROW_CASES = [
    ("connected", outcome(True, Reason.CONNECTED, tcp=0.001, tls=0.004, connack=0.002, code=0),
     [("TCP", "tcp_connect", 1.0, None), ("TLS", "tls_handshake", 4.0, None), ("MQTT", "connack", 2.0, None)]),
    ("tcp refused", outcome(False, Reason.TCP, total=0.002, detail="ECONNREFUSED: 127.0.0.1:9: Connection refused",
                            stage="tcp"),
     [("TCP", "tcp_connect", 2.0, Unreachable)]),
    ("handshake alert", outcome(False, Reason.TLS, tcp=0.001, total=0.011, detail="CERTIFICATE_VERIFY_FAILED",
                                stage="tls"),
     [("TCP", "tcp_connect", 1.0, None), ("TLS", "tls_handshake", 10.0, TLSRefused)]),
    ("alert after the handshake (TLS 1.3 client certificate)",
     outcome(False, Reason.TLS, tcp=0.001, tls=0.004, total=0.010, detail="TLSV13_ALERT_CERTIFICATE_REQUIRED",
             stage="tls"),
     [("TCP", "tcp_connect", 1.0, None), ("TLS", "tls_handshake", 4.0, None), ("MQTT", "connack", 5.0, TLSRefused)]),
    ("connack refused", outcome(False, Reason.REFUSED, tcp=0.001, tls=0.004, connack=0.003, total=0.009,
                                detail="NOT_AUTHORIZED (0x87)", code=0x87),
     [("TCP", "tcp_connect", 1.0, None), ("TLS", "tls_handshake", 4.0, None), ("MQTT", "connack", 3.0, ConnackRefused)]),
    ("closed before connack", outcome(False, Reason.CLOSED, tcp=0.001, tls=0.004, total=0.006),
     [("TCP", "tcp_connect", 1.0, None), ("TLS", "tls_handshake", 4.0, None),
      ("MQTT", "connack", 1.0, ClosedBeforeConnack)]),
    ("no tls in time", outcome(False, Reason.TIMEOUT, tcp=0.001, total=10.001, stage="tls", detail="no TLS within 10 s"),
     [("TCP", "tcp_connect", 1.0, None), ("TLS", "tls_handshake", 10000.0, Timeout)]),
    ("own files", outcome(False, Reason.IDENTITY, total=0.0, stage="identity", detail="missing-file"),
     [("DEVICE", "identity", 0.0, IdentityProblem)]),
]


@pytest.mark.parametrize("outcome_, expected", [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES])
def test_connect_rows(outcome_, expected):
    rows = connect_rows(outcome_)
    assert [(r.request_type, r.name) for r in rows] == [e[:2] for e in expected]
    assert [r.ms for r in rows] == pytest.approx([e[2] for e in expected])
    assert [type(r.exception) if r.exception else None for r in rows] == [e[3] for e in expected]


def test_a_refusal_is_named_by_what_the_device_saw():
    rows = connect_rows(ROW_CASES[4][1])
    assert repr(rows[-1].exception) == "ConnackRefused('NOT_AUTHORIZED (0x87)')"
    assert "127.0.0.1:9" in str(connect_rows(ROW_CASES[1][1])[-1].exception)


@pytest.mark.parametrize("result, exception, text", [
    (PublishResult(True, "acked", 1, 0, 0.002), None, ""),
    (PublishResult(False, "refused", 1, 0x87, 0.002), AckRefused, "PUBACK 0x87"),
    (PublishResult(False, "timeout", 1, latency=10.0), NoAck, "timeout"),
    (SubscribeResult(False, "refused", (0x01, 0x87), 2, 0.003), AckRefused, "SUBACK 0x01, 0x87"),
    (SubscribeResult(False, "connection-lost", packet_id=2), NoAck, "connection-lost"),
])
def test_ack_rows(result, exception, text):
    row = ack_row("puback" if isinstance(result, PublishResult) else "suback", result)
    assert (type(row.exception) if row.exception else None) is exception
    assert text in (str(row.exception) if row.exception else "")


# --------------------------------------------------------------------------------------------- verdicts

REFUSED, ACCEPTED, INCONCLUSIVE = VerdictKind.REFUSED, VerdictKind.ACCEPTED, VerdictKind.INCONCLUSIVE
CONNECT_VERDICTS = [
    ("got in", outcome(True, Reason.CONNECTED, code=0), 5, ACCEPTED),
    ("tls alert", outcome(False, Reason.TLS, detail="TLSV13_ALERT_CERTIFICATE_REQUIRED"), 5, REFUSED),
    ("connack not authorized v5", outcome(False, Reason.REFUSED, code=0x87, detail="NOT_AUTHORIZED"), 5, REFUSED),
    ("connack not authorized v3", outcome(False, Reason.REFUSED, code=0x05, detail="NOT_AUTHORIZED"), 4, REFUSED),
    ("closed without connack", outcome(False, Reason.CLOSED), 5, REFUSED),
    ("rate exceeded is no refusal", outcome(False, Reason.REFUSED, code=0x9F), 5, INCONCLUSIVE),
    ("server busy is no refusal", outcome(False, Reason.REFUSED, code=0x89), 5, INCONCLUSIVE),
    ("server unavailable v3 is no refusal", outcome(False, Reason.REFUSED, code=0x03), 4, INCONCLUSIVE),
    ("unreachable is never refused", outcome(False, Reason.TCP, stage="tcp", detail="ECONNREFUSED"), 5, INCONCLUSIVE),
    ("dns", outcome(False, Reason.DNS, stage="dns"), 5, INCONCLUSIVE),
    ("no answer in time", outcome(False, Reason.TIMEOUT, stage="tls"), 5, INCONCLUSIVE),
    ("garbage", outcome(False, Reason.PROTOCOL), 5, INCONCLUSIVE),
]


@pytest.mark.parametrize("outcome_, level, kind", [c[1:] for c in CONNECT_VERDICTS], ids=[c[0] for c in CONNECT_VERDICTS])
def test_classify_connect(outcome_, level, kind):
    assert classify_connect(outcome_, level).kind is kind


CONNECTED = outcome(True, Reason.CONNECTED, code=0)
STEP_VERDICTS = [
    ("puback granted", CONNECTED, PublishResult(True, "acked", 1, 0), ACCEPTED),
    ("puback 0x87", CONNECTED, PublishResult(False, "refused", 1, 0x87), REFUSED),
    ("closed on publish (AWS, MQTT 3.1.1)", CONNECTED, PublishResult(False, "connection-lost", 1), REFUSED),
    ("no puback", CONNECTED, PublishResult(False, "timeout", 1), INCONCLUSIVE),
    ("suback granted", CONNECTED, SubscribeResult(True, "granted", (1,), 2), ACCEPTED),
    ("suback 0x80", CONNECTED, SubscribeResult(False, "refused", (0x80,), 2), REFUSED),
    ("could not connect as itself", outcome(False, Reason.REFUSED, code=0x87), None, INCONCLUSIVE),
]


@pytest.mark.parametrize("connected, result, kind", [c[1:] for c in STEP_VERDICTS], ids=[c[0] for c in STEP_VERDICTS])
def test_classify_step(connected, result, kind):
    verdict = classify_step("publish-outside-policy", connected, result, 5)
    assert verdict.kind is kind
    assert verdict.detail
