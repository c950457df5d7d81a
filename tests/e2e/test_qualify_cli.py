"""`iotgate qualify` as a user runs it, with Debian's mosquitto_sub as the device under test."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_sub") is None,
                                reason="needs mosquitto_sub (Debian's mosquitto-clients: `make system-deps`)")

FAST = """
[settings]
connect_timeout = 5
handshake_timeout = 3
packet_timeout = 3
refusal_timeout = 5
"""


def device_cmd(home) -> str:
    d = home / "devices" / "device-00001"
    return (f"mosquitto_sub -h {{endpoint}} -p {{port}} --cafile {{ca}} --cert {d}/device.pem --key {d}/device.key "
            "-i device-00001 -t cmd/device-00001/# -q 1 -k 5")


@pytest.fixture
def fleet_cli(pki_cli):
    pki_cli("fleet", "provision", "--count", "1")
    return pki_cli


def test_mosquitto_sub_passes_the_server_authentication_cases(fleet_cli, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(FAST + """
[[cases]]
id = "TLS_Connect"
[[cases]]
id = "TLS_Incorrect_Subject_Name_Server_Cert"
[[cases]]
id = "TLS_Unsecure_Server_Cert"
[[cases]]
id = "TLS_Expired_Server_Cert"
[[cases]]
id = "MQTT_Subscribe"
topic = "cmd/{thing}/#"
qos = 1
[[cases]]
id = "MQTT_Client_Puback_Qos1"
""")
    report = tmp_path / "report"
    result = fleet_cli("qualify", "--suite", str(suite), "--port", "0", "--report", str(report),
                       "--device-cmd", device_cmd(fleet_cli.home))
    assert "TLS_Unsecure_Server_Cert" in result.out and "result: pass" in result.out
    data = json.loads((report / "report.json").read_text())
    assert "refused the server certificate from a CA it was never given" in data["cases"][2]["summary"]
    assert data["verdict"] == "pass" and len(data["cases"]) == 6
    assert [c["verdict"] for c in data["cases"]] == ["pass"] * 6
    junit = ET.parse(report / "junit.xml").getroot().find("testsuite")
    assert junit.get("tests") == "6" and junit.get("failures") == "0" and junit.get("errors") == "0"
    assert (report / "report.html").read_text().count("<details") == 6
    assert len(list((report / "device-logs").iterdir())) == 6


def test_a_fixed_reconnect_interval_fails_the_run_and_the_junit_file(fleet_cli, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(FAST + """
[[cases]]
id = "MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect"
reconnections = 4
retry_timeout = 5
""")
    junit = tmp_path / "ci" / "qualify.xml"
    result = fleet_cli("qualify", "--suite", str(suite), "--port", "0", "--junit", str(junit), "--json",
                       "--device-cmd", device_cmd(fleet_cli.home), expect=1)
    data = result.json()
    assert data["verdict"] == "fail"
    assert "fixed interval of about 1" in data["cases"][0]["summary"]  # libmosquitto retries every second
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert "no backoff" in failure.get("message")


def test_usage_errors(fleet_cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[cases]]\nid = "MQTT_Subscribe"\nqos = 2\n')
    result = fleet_cli("qualify", "--suite", str(bad), expect=2)
    assert "cases[0].qos: must be 0 or 1" in result.err
    result = fleet_cli("qualify", "--suite", "no-such-suite", expect=2)
    assert "not a built-in suite" in result.err


def test_a_device_command_that_is_not_installed_is_an_error_per_case(fleet_cli, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(FAST + '[[cases]]\nid = "TLS_Connect"\n')
    result = fleet_cli("qualify", "--suite", str(suite), "--port", "0", "--json",
                       "--device-cmd", "no-such-device-binary --port {port}", expect=1)
    case = result.json()["cases"][0]
    assert case["verdict"] == "error" and "'no-such-device-binary' not found" in case["summary"]
