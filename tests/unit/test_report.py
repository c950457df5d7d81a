"""Report statistics, outcome comparison and SLO gates as tables; the writers produce their files."""

from __future__ import annotations

import json

import pytest

from devices.fleet import FleetError, check_endpoint, parse_endpoint, parse_rate
from devices.report import (Gate, LatencyStats, Observation, Outcome, SLOError, check_slo, group_summary, histogram,
                            mismatches, parse_slo, percentile, write_histogram_png, write_html, write_json)

PERCENTILES = [
    ([], 50, None),
    ([1.0], 99, 1.0),
    ([1.0, 2.0], 50, 1.5),
    ([1.0, 2.0, 3.0, 4.0, 5.0], 0, 1.0),
    ([1.0, 2.0, 3.0, 4.0, 5.0], 50, 3.0),
    ([1.0, 2.0, 3.0, 4.0, 5.0], 100, 5.0),
    (list(map(float, range(1, 101))), 99, 99.01),
]


@pytest.mark.parametrize("values, p, expected", PERCENTILES)
def test_percentile(values, p, expected):
    got = percentile(values, p)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_latency_stats():
    s = LatencyStats.of([0.003, 0.001, 0.002])
    assert (s.count, s.min, s.p50, s.max) == (3, 0.001, 0.002, 0.003)
    assert s.as_ms()["p50_ms"] == 2.0
    assert LatencyStats.of([]).as_ms() == {"count": 0, "min_ms": None, "mean_ms": None, "p50_ms": None,
                                           "p90_ms": None, "p99_ms": None, "max_ms": None}


def test_histogram():
    assert histogram([]) == []
    assert histogram([1.0, 1.0]) == [(1.0, 1.0, 2)]
    bins = histogram([0.0, 1.0, 2.0, 3.0], bins=2)
    assert [c for _, _, c in bins] == [2, 2]


SLOS = [
    ("connack_p99<500ms", [Gate("connack_p99", "<", 0.5, "connack_p99<500ms")]),
    ("errors=0", [Gate("errors", "=", 0.0, "errors=0")]),
    (" tls_p50 <= 2 s , messages_per_s>=10/s", [Gate("tls_p50", "<=", 2.0, "tls_p50 <= 2 s"),
                                                 Gate("messages_per_s", ">=", 10.0, "messages_per_s>=10/s")]),
    ("e2e_max<250us", [Gate("e2e_max", "<", 0.00025, "e2e_max<250us")]),
    ("connected_ratio>=99%", [Gate("connected_ratio", ">=", 0.99, "connected_ratio>=99%")]),
]


@pytest.mark.parametrize("text, gates", SLOS)
def test_parse_slo(text, gates):
    assert parse_slo(text) == gates


@pytest.mark.parametrize("text, message", [
    ("", "no gate"),
    ("connack_p99", "cannot read 'connack_p99'"),
    ("latency<5ms", "unknown metric 'latency'"),
    ("handshake_p99<5ms", "unknown metric"),
    ("errors<5ms", "errors is not a duration"),
    ("connack_p99<fast", "cannot read"),
])
def test_parse_slo_errors(text, message):
    with pytest.raises(SLOError, match=message):
        parse_slo(text)


def test_check_slo():
    metrics = {"latency": {"connack": LatencyStats.of([0.1, 0.2, 0.3]), "e2e": LatencyStats.of([])},
               "samples": {"connack": [0.1, 0.2, 0.3]}, "errors": 0, "messages_per_s": 12.0}
    results = check_slo(parse_slo("connack_p99<500ms,connack_p50>1s,errors=0,e2e_p99<1s,messages_per_s>=20,"
                                  "connack_p75<=0.25s"), metrics)
    assert [r.passed for r in results] == [True, False, True, False, False, True]
    assert results[3].value is None  # no samples: the gate fails, nothing proves it


OBS = [
    Observation("sensors", "d1", "allowed", Outcome.ALLOWED),
    Observation("sensors", "d2", "allowed", Outcome.REFUSED_MQTT, "CONNACK NOT_AUTHORIZED (0x87)"),
    Observation("sensors", "d3", "allowed", Outcome.ALLOWED, problems=("lost QoS 1 sequence number(s) 4",)),
    Observation("attacker:expired", "a1", "refused", Outcome.REFUSED_TLS, "tls: CERTIFICATE_EXPIRED"),
    Observation("attacker:revoked", "a2", "refused", Outcome.ALLOWED, "connected"),
    Observation("attacker:revoked", "a3", "refused", Outcome.SKIPPED, skipped="not enforced by a bare broker"),
]


def test_mismatches_name_each_member():
    assert mismatches(OBS) == [
        "sensors: d2 was refused, expected allowed (CONNACK NOT_AUTHORIZED (0x87))",
        "sensors: d3: lost QoS 1 sequence number(s) 4",
        "attacker:revoked: a2 got in, expected refused (connected)",
    ]


def test_group_summary():
    by = {g["group"]: g for g in group_summary(OBS)}
    assert by["sensors"] | {"details": None} == {"group": "sensors", "expect": "allowed", "members": 3, "allowed": 2,
                                                 "refused": 1, "inconclusive": 0, "errors": 0, "skipped": 0,
                                                 "mismatches": 2, "details": None, "ok": False, "result": "mismatch"}
    assert by["attacker:expired"]["ok"] and not by["attacker:revoked"]["ok"]
    assert by["attacker:revoked"]["skipped"] == 1


def test_writers(tmp_path):
    report = {"scenario": "s", "target": "gateway", "endpoint": "127.0.0.1:1", "connector": "native", "passed": False,
              "summary": {"devices": 1, "attackers": 1, "seconds": 1.0, "connects": 1, "connects_per_s": 1.0,
                          "messages": 2, "messages_per_s": 2.0},
              "latency": {"connack": LatencyStats.of([0.01, 0.02]).as_ms()}, "refusals": {"CONNACK 0x87": 1},
              "groups": group_summary(OBS), "mismatches": mismatches(OBS),
              "slo": [{"gate": "errors=0", "value": 3, "passed": False}], "notes": ["<b>n</b>"]}
    write_json(tmp_path / "r.json", report)
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False
    png = write_histogram_png(tmp_path / "l.png", {"connack": [0.01, 0.02, 0.03], "tls": []}, "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_histogram_png(tmp_path / "none.png", {}, "t") is None
    text = write_html(tmp_path / "r.html", report, "l.png").read_text()
    assert "FAIL" in text and "a2 got in" in text and "&lt;b&gt;n&lt;/b&gt;" in text and "l.png" in text


@pytest.mark.parametrize("target, host, ok", [
    ("gateway", "127.0.0.1", True), ("mosquitto", "localhost", True), ("gateway", "::1", True),
    ("gateway", "10.0.0.1", False), ("mosquitto", "8.8.8.8", False), ("aws", "8.8.8.8", True),
    ("cloud", "127.0.0.1", False),
])
def test_endpoint_is_loopback_unless_aws(target, host, ok):
    if ok:
        check_endpoint(target, host)
    else:
        with pytest.raises(FleetError):
            check_endpoint(target, host)


@pytest.mark.parametrize("text, expected", [("h", ("h", 8883)), ("h:1883", ("h", 1883)), ("[::1]:9", ("::1", 9))])
def test_parse_endpoint(text, expected):
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text, expected", [("50/s", 50.0), ("2.5", 2.5)])
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["0/s", "fast", "99999/s"])
def test_parse_rate_errors(text):
    with pytest.raises(FleetError):
        parse_rate(text)
