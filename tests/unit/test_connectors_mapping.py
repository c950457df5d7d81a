"""Result mapping of the library connectors, without a network: CONNACK codes as sent on the wire, TLS failure
classification, aws-crt failures -> outcomes, and the option combinations each connector refuses."""

from __future__ import annotations

import ssl

import pytest
from awscrt import exceptions as crt_exceptions
from awscrt import mqtt as crt_mqtt

from devices.client import ClientOptions, Reason
from devices.connectors import UnknownConnector, get_connector
from devices.connectors._common import code_name, connack_code, is_tls_failure, tls_detail
from devices.connectors.awsiotsdk import check_options as aws_check, failure_outcome, ping_timeout_ms
from devices.connectors.paho import check_options as paho_check

# (paho's reason code for a 3.1.1 CONNACK, the return code on the wire)
PAHO_V3 = [(0x00, 0x00), (0x84, 0x01), (0x85, 0x02), (0x88, 0x03), (0x86, 0x04), (0x87, 0x05)]


@pytest.mark.parametrize("paho_reason,wire", PAHO_V3)
def test_paho_v311_connack_codes_map_back_to_the_wire(paho_reason, wire):
    assert connack_code(4, paho_reason) == wire


def test_paho_v5_connack_codes_are_the_wire_codes():
    assert connack_code(5, 0x87) == 0x87 and connack_code(5, 0x8C) == 0x8C


def test_an_unknown_v311_code_is_an_error():
    with pytest.raises(ValueError, match="0x99"):
        connack_code(4, 0x99)


@pytest.mark.parametrize("level,code,name", [(4, 5, "NOT_AUTHORIZED (0x05)"), (5, 0x87, "NOT_AUTHORIZED (0x87)"),
                                             (4, 0x42, "UNKNOWN (0x42)")])
def test_code_names(level, code, name):
    assert code_name(level, code) == name


def test_tls_alerts_are_tls_failures_and_a_bare_eof_is_not():
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    assert is_tls_failure(alert) and tls_detail(alert).startswith("TLSV1_ALERT_UNKNOWN_CA: ")
    assert not is_tls_failure(ssl.SSLEOFError(8, "EOF occurred"))
    assert not is_tls_failure(ConnectionResetError()) and not is_tls_failure(None)


def test_crt_connack_refusal_is_refused_with_the_return_code():
    reason, detail, code, stage = failure_outcome(Exception(crt_mqtt.ConnectReturnCode.NOT_AUTHORIZED))
    assert (reason, code, stage) == (Reason.REFUSED, 5, "mqtt") and "NOT_AUTHORIZED" in detail


@pytest.mark.parametrize("name,reason", [
    ("AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE", Reason.TLS),
    ("AWS_IO_DNS_INVALID_NAME", Reason.DNS),
    ("AWS_IO_SOCKET_CONNECTION_REFUSED", Reason.TCP),
    ("AWS_IO_SOCKET_TIMEOUT", Reason.TIMEOUT),
    ("AWS_IO_SOCKET_CLOSED", Reason.CLOSED),
    ("AWS_ERROR_MQTT_UNEXPECTED_HANGUP", Reason.CLOSED),
])
def test_crt_errors_map_to_reasons(name, reason):
    exc = crt_exceptions.AwsCrtError(code=1, name=name, message="m")
    got, detail, code, _ = failure_outcome(exc)
    assert got is reason and code is None and detail.startswith(name)


def test_crt_ping_timeout_stays_below_the_keep_alive():
    assert ping_timeout_ms(ClientOptions(keep_alive=60, ping_timeout=10)) == 10_000
    assert ping_timeout_ms(ClientOptions(keep_alive=5, ping_timeout=10)) == 4_999


@pytest.mark.parametrize("options,match", [
    (ClientOptions(keep_alive=0), "keep_alive 0"),
    (ClientOptions(max_inflight=10), "max_inflight"),
    (ClientOptions(max_resends=1), "max_resends"),
])
def test_awsiotsdk_refuses_what_it_cannot_honour(options, match):
    with pytest.raises(ValueError, match=match):
        aws_check(options)


def test_paho_connectors_refuse_max_resends():
    with pytest.raises(ValueError, match="max_resends"):
        paho_check(ClientOptions(max_resends=2), "paho")
    paho_check(ClientOptions(protocol_level=5, session_expiry=60), "paho")


@pytest.mark.parametrize("name", ["native", "paho", "aiomqtt", "awsiotsdk"])
def test_every_connector_is_found_by_name(name):
    assert get_connector(name).name == name


def test_an_unknown_connector_names_the_choices():
    with pytest.raises(UnknownConnector, match="native, paho, aiomqtt, awsiotsdk"):
        get_connector("mqttx")
