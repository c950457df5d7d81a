"""Suites (TOML), the case catalogue, the server profiles made from the PKI, and the report writers."""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET

import pytest
from cryptography import x509

from certs.authority import build_root_ca
from certs.keys import generate_private_key
from gateway.qualify.cases import CASE_RUNNERS
from gateway.qualify.catalogue import CASES
from gateway.qualify.device import DeviceEndpoint
from gateway.qualify.profiles import WRONG_NAME, ServerProfiles
from gateway.qualify.report import report_dict, write_html, write_json, write_junit
from gateway.qualify.runner import RunResult
from gateway.qualify.suite import BUILTIN_SUITES, SuiteError, load_suite, parse_suite
from gateway.qualify.verdict import CaseResult, Verdict

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def test_every_case_has_a_runner_and_the_full_suite_has_every_case():
    assert set(CASE_RUNNERS) == set(CASES)
    assert [c.id for c in load_suite("full").cases] == list(CASES)


def test_the_builtin_suites():
    for name in BUILTIN_SUITES:
        suite = load_suite(name)
        assert suite.name == name and suite.cases
    da = [c.id for c in load_suite("device-advisor-qualification").cases]
    assert da[:3] == ["TLS_Connect", "TLS_Incorrect_Subject_Name_Server_Cert", "TLS_Unsecure_Server_Cert"]
    assert "MQTT_Connect_Jitter_Backoff_Retries" in da
    assert all(CASES[c].device_advisor for c in da)  # only Device Advisor's own cases
    tls = load_suite("tls-only")
    assert all(c.info.group == "TLS" for c in tls.cases)
    assert tls.cases[0]["connect_timeout"] == 60.0 and tls.cases[1]["refusal_timeout"] == 60.0


def test_settings_defaults_and_overrides():
    suite = parse_suite({"settings": {"packet_timeout": 2, "topic": "cmd/{thing}/in"},
                         "cases": [{"id": "MQTT_Subscribe"}, {"id": "MQTT_Publish", "topic": "dt/{thing}/t", "qos": 1},
                                   {"id": "TLS_Connect"}]}, source="s.toml")
    sub, pub, tls = suite.cases
    assert sub["packet_timeout"] == 2.0 and sub["topic"] == "cmd/{thing}/in" and sub["qos"] is None
    assert pub["topic"] == "dt/{thing}/t" and pub["qos"] == 1
    assert "topic" not in tls.settings and tls["connect_timeout"] == 30.0


@pytest.mark.parametrize("data, message", [
    ({"cases": [{"id": "TLS_Conect"}]}, "cases[0].id: unknown case 'TLS_Conect'"),
    ({"cases": []}, "cases: a suite needs at least one"),
    ({"cases": [{"id": "TLS_Connect"}, {"id": "TLS_Connect"}]}, "cases[1].id: TLS_Connect appears twice"),
    ({"cases": [{"id": "TLS_Connect", "topic": "x"}]}, "cases[0].topic: unknown setting for TLS_Connect"),
    ({"cases": [{"id": "TLS_Connect", "connect_timeout": -1}]}, "cases[0].connect_timeout: must be a number of "
                                                                "seconds between 0.05 and 3600, not -1"),
    ({"cases": [{"id": "MQTT_Publish", "qos": 2}]}, "cases[0].qos: must be 0 or 1"),
    ({"cases": [{"id": "MQTT_Publish", "topic": "dt/#"}]}, "cases[0].topic: 'dt/#' is not a valid topic"),
    ({"cases": [{"id": "MQTT_Connect_Jitter_Backoff_Retries", "attempts": 3}]},
     "cases[0].attempts: must be a whole number between 4 and 10, not 3"),
    ({"cases": [{"id": "MQTT_Keep_Alive", "periods": True}]}, "cases[0].periods: must be a whole number"),
    ({"settings": {"bogus": 1}, "cases": [{"id": "TLS_Connect"}]}, "settings.bogus: no case has this setting"),
    ({"settings": {"packet_timeout": "10"}, "cases": [{"id": "MQTT_Connect"}]}, "settings.packet_timeout: must be"),
    ({"name": "", "cases": [{"id": "TLS_Connect"}]}, "name: must be a non-empty string"),
    ({"cases": [{"id": "TLS_Connect"}], "extra": 1}, "extra: unknown key"),
    ({"cases": ["TLS_Connect"]}, "cases[0]: must be a table"),
])
def test_suite_errors_name_the_key(data, message):
    with pytest.raises(SuiteError) as err:
        parse_suite(data, source="s.toml")
    assert message in str(err.value)


def test_suite_files(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[[cases]]\nid = "TLS_Connect"\n')
    suite = load_suite(str(path))
    assert suite.name == "mine" and suite.base_dir == tmp_path
    path.write_text("[[cases]\n")
    with pytest.raises(SuiteError, match="not valid TOML"):
        load_suite(str(path))
    with pytest.raises(SuiteError, match="no such suite file, and not a built-in suite"):
        load_suite(str(tmp_path / "missing.toml"))


# --------------------------------------------------------------------------------------------- profiles

@pytest.fixture(scope="module")
def profiles():
    root = build_root_ca(generate_private_key("ec-p256"), "Root", now=NOW)
    issuing = root.issue_ca(generate_private_key("ec-p256"), "Issuing", now=NOW)
    return issuing, ServerProfiles(issuing, ["gw.example", "localhost"], now=NOW)


def _sans(cert: x509.Certificate) -> list[str]:
    return [str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]


def test_server_profiles_from_the_pki_with_an_injected_clock(profiles):
    issuing, p = profiles
    good = p.get("good").certificate
    assert _sans(good) == ["gw.example", "localhost"] and good.issuer == issuing.certificate.subject
    assert good.not_valid_before_utc < NOW < good.not_valid_after_utc
    assert _sans(p.get("wrong-name").certificate) == [WRONG_NAME]
    untrusted = p.get("untrusted").certificate
    assert untrusted.issuer != issuing.certificate.subject and _sans(untrusted) == ["gw.example", "localhost"]
    expired = p.get("expired").certificate
    assert expired.not_valid_after_utc < NOW and expired.issuer == issuing.certificate.subject
    large = p.get("large", large_bytes=6000)
    assert large.der_size >= 6000 and _sans(large.certificate)[:2] == ["gw.example", "localhost"]
    assert p.get("legacy").legacy_tls and not p.get("good").legacy_tls
    assert p.get("good") is p.get("good")  # built once per run
    assert b"PRIVATE KEY" not in repr(p.get("good")).encode()


def test_profiles_follow_the_issuer_key_type():
    root = build_root_ca(generate_private_key("rsa-2048"), "Root", now=NOW)
    issuing = root.issue_ca(generate_private_key("rsa-2048"), "Issuing", now=NOW)
    cert = ServerProfiles(issuing, ["localhost"], now=NOW).get("good").certificate
    assert cert.public_key().key_size == 2048


# --------------------------------------------------------------------------------------------- reports

def _run() -> RunResult:
    suite = parse_suite({"name": "r", "cases": [{"id": c} for c in ("TLS_Connect", "TLS_Unsecure_Server_Cert",
                                                                     "MQTT_Keep_Alive", "MQTT_Connect",
                                                                     "MQTT_Subscribe")]}, source="r.toml")
    ev = ({"t": 0.01, "source": "device", "text": "sent <alert> & closed"},)
    results = (
        CaseResult("TLS_Connect", "TLS Connect", "TLS", Verdict.PASS, "completed", (), ev, {}, 0.0, 0.02,
                   "TLS_Connect"),
        CaseResult("TLS_Unsecure_Server_Cert", "Unsecure", "TLS", Verdict.FAIL, "accepted <evil>", (), ev),
        CaseResult("MQTT_Keep_Alive", "Keep alive", "MQTT", Verdict.SKIPPED, "keep alive 0"),
        CaseResult("MQTT_Connect", "Connect", "MQTT", Verdict.PASS_WITH_WARNINGS, "connected", ("keep alive 5 s",)),
    )
    return RunResult(suite, "command mosquitto_sub", DeviceEndpoint("127.0.0.1", 8883, "localhost", "/ca.pem"),
                     results, 1_780_000_000.0, 1.5)


def test_reports(tmp_path):
    run = _run()
    assert run.verdict is Verdict.ERROR  # MQTT_Subscribe never ran
    data = json.loads(write_json(tmp_path / "report.json", run).read_text())
    assert data["verdict"] == "error" and data["not_run"] == ["MQTT_Subscribe"]
    assert data["counts"]["fail"] == 1 and data["cases"][0]["device_advisor_id"] == "TLS_Connect"
    assert data == json.loads(json.dumps(report_dict(run)))
    root = ET.parse(write_junit(tmp_path / "junit.xml", run)).getroot()
    suite = root.find("testsuite")
    assert suite.get("tests") == "5" and suite.get("failures") == "1" and suite.get("errors") == "1"
    assert suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["TLS_Unsecure_Server_Cert"].find("failure").get("message") == "accepted <evil>"
    assert cases["MQTT_Keep_Alive"].find("skipped") is not None
    assert cases["MQTT_Subscribe"].find("error") is not None
    assert "warning: keep alive 5 s" in cases["MQTT_Connect"].find("system-out").text
    assert cases["TLS_Connect"].get("classname") == "iotgate.qualify.TLS"
    html = write_html(tmp_path / "report.html", run).read_text()
    assert "accepted &lt;evil&gt;" in html and "sent &lt;alert&gt; &amp; closed" in html and "<evil>" not in html


def test_the_shipped_example_suite():
    from pathlib import Path

    suite = load_suite(str(Path(__file__).parents[2] / "deploy" / "qualify" / "publisher.toml"))
    assert [c.id for c in suite.cases][-1] == "MQTT_Connect_Exponential_Backoff_Retries"
    assert suite.cases[1]["topic"] == "dt/{thing}/temperature" and suite.cases[1]["qos"] == 1


def test_passwords_in_a_device_command_are_not_reported(tmp_path):
    from gateway.qualify.device import CommandDevice

    device = CommandDevice("mosquitto_pub -u dev -P 's3cret pw' --password=hunter2 -t x", tmp_path)
    assert device.description == "command mosquitto_pub -u dev -P '***' '--password=***' -t x"
    assert device.expand(DeviceEndpoint("h", 1, "n", "c"))[4] == "s3cret pw"  # the device still gets it
