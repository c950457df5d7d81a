"""Every case the endpoint can run: its id, title, group, the Device Advisor test it follows (if any) and the
settings a suite may give it. Pure data; the behaviour is in :mod:`gateway.qualify.cases`.

Ids are Device Advisor's test ids where it has the case (``TLS_Unsecure_Server_Cert``); the cases Device Advisor
does not have carry iotgate's own names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["CASES", "COMMON", "CaseInfo", "Param"]


@dataclasses.dataclass(frozen=True, slots=True)
class Param:
    kind: str                 # "seconds", "int", "str", "topic", "filter", "qos", "bool", "path"
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""


COMMON: dict[str, Param] = {
    "connect_timeout": Param("seconds", 30.0, 0.05, 3600, "wait this long for the device's connection"),
    "handshake_timeout": Param("seconds", 10.0, 0.05, 600, "the TLS handshake must finish within this"),
    "packet_timeout": Param("seconds", 10.0, 0.05, 3600, "wait this long for a packet the case needs"),
}

_REFUSAL = {"refusal_timeout": Param(
    "seconds", 60.0, 0.05, 600, "wait this long for the device to accept or refuse the server certificate (s2n, "
    "inside the AWS IoT Device SDK, closes only after a 10-30 s blinding delay)")}
_TOPIC = "cmd/{thing}/qualify"  # within the built-in device policy (subscribe and receive cmd/<thing>/*)
_BACKOFF = {
    "retry_timeout": Param("seconds", 150.0, 0.1, 3600, "wait this long for the next attempt"),
    "min_growth": Param("float", 1.5, 1.0, 100.0, "in some round the longest delay must be this times the first"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class CaseInfo:
    id: str
    title: str
    group: str
    device_advisor: bool
    params: dict[str, Param]
    summary: str

    def all_params(self) -> dict[str, Param]:
        return {**COMMON, **self.params}


def _case(id: str, title: str, group: str, summary: str, *, da: bool = True, **params: Param) -> CaseInfo:
    return CaseInfo(id, title, group, da, params, summary)


CASES: dict[str, CaseInfo] = {c.id: c for c in (
    _case("TLS_Connect", "TLS Connect", "TLS",
          "the device completes a TLS handshake with a valid server certificate"),
    _case("TLS_Incorrect_Subject_Name_Server_Cert", "TLS Incorrect Subject Name Server Cert", "TLS",
          "the device refuses a valid certificate issued for another host name", **_REFUSAL),
    _case("TLS_Unsecure_Server_Cert", "TLS Unsecure Server Cert (not signed by a recognized CA)", "TLS",
          "the device refuses a certificate from a CA it does not trust", **_REFUSAL),
    _case("TLS_Expired_Server_Cert", "TLS Expired Server Cert", "TLS",
          "the device refuses an expired certificate, with a TLS alert", **_REFUSAL),
    _case("TLS_Large_Size_Server_Cert", "TLS Large Size Server Cert", "TLS",
          "the device completes a handshake with a large server certificate",
          cert_bytes=Param("int", 8192, 1024, 65536, "bytes of DER of the large certificate")),
    _case("TLS_Receive_Maximum_Size_Fragments", "TLS Receive Maximum Size Fragments", "TLS",
          "the device subscribes, receives a QoS 1 message sent in 16 KiB TLS records and acknowledges it",
          topic=Param("topic", _TOPIC, help="the trigger topic the device subscribes to"),
          payload_bytes=Param("int", 32768, 16384, 131072, "payload size of the message")),
    _case("TLS_Support_AWS_IoT_Cipher_Suites", "TLS Device Support for AWS IoT recommended Cipher Suites", "TLS",
          "the ClientHello offers suites AWS IoT Core supports and recommends"),
    _case("TLS_Refuse_Legacy_Versions", "TLS 1.2 minimum (refuses a TLS 1.0/1.1 endpoint)", "TLS",
          "against an endpoint offering only TLS 1.0 and 1.1, the device does not connect", da=False, **_REFUSAL),
    _case("MQTT_Connect", "MQTT Connect", "MQTT", "the device sends a valid CONNECT"),
    _case("MQTT_Subscribe", "MQTT Subscribe", "MQTT", "the device subscribes (to the configured filter and QoS)",
          topic=Param("filter", "", help="the filter the device must subscribe to (empty: any)"),
          qos=Param("qos", None, help="the QoS it must ask for (absent: any)")),
    _case("MQTT_Publish", "MQTT Publish", "MQTT", "the device publishes (to the configured topic and QoS)",
          topic=Param("topic", "", help="the topic the device must publish to (empty: any)"),
          qos=Param("qos", None, help="the QoS it must use (absent: any)")),
    _case("MQTT_Client_Puback_Qos1", "MQTT Client PUBACK for QoS 1", "MQTT",
          "the device acknowledges a QoS 1 message sent to its subscription",
          topic=Param("topic", _TOPIC, help="the trigger topic the device subscribes to"),
          payload=Param("str", "iotgate qualify", help="the message")),
    _case("MQTT_Connect_Jitter_Backoff_Retries", "MQTT Connect Jitter Backoff Retries (no CONNACK)", "MQTT",
          "with CONNACK withheld, the device retries with exponentially growing, jittered delays",
          attempts=Param("int", 5, 4, 10, "withheld CONNACKs per round (fewer than 5 judges on less evidence)"),
          rounds=Param("int", 2, 1, 5, "rounds (each ends with one accepted connection)"),
          withhold=Param("seconds", 5.0, 0.05, 600, "how long the endpoint holds a connection without CONNACK"),
          **_BACKOFF),
    _case("MQTT_Connect_Exponential_Backoff_Retries", "MQTT Connect Exponential Backoff Retries (refused CONNACK)",
          "MQTT", "with CONNACK refused (server unavailable), the device retries with exponentially growing delays",
          attempts=Param("int", 5, 4, 10, "refused CONNACKs"), **_BACKOFF),
    _case("MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect", "MQTT Reconnect Backoff Retries On Server Disconnect",
          "MQTT", "disconnected by the server right after CONNACK, the device reconnects with backoff and jitter",
          reconnections=Param("int", 5, 4, 10, "server disconnects to observe"),
          min_delay=Param("seconds", 0.0, 0.0, 600, "every reconnect must wait at least this"),
          **_BACKOFF),
    _case("MQTT_Keep_Alive", "MQTT keep alive honoured", "MQTT",
          "the device sends a packet at least every keep-alive interval", da=False,
          max_wait=Param("seconds", 120.0, 0.1, 3600, "the longest observation the case may take"),
          periods=Param("int", 2, 1, 10, "keep-alive intervals to observe")),
    _case("MQTT_Client_Id_No_Secrets", "MQTT client id holds no credential or secret", "MQTT",
          "the CONNECT client id carries no password, key, token or signature", da=False),
    _case("Permissions_Least_Privilege", "Permissions: the device stays within its policy", "Permissions",
          "every action the device attempts is allowed by its AWS IoT policy", da=False,
          policy=Param("path", "", help="a policy document (JSON); empty: the certificate's policies in the "
                                        "registry"),
          observe=Param("seconds", 10.0, 0.05, 3600, "how long the device's actions are watched")),
)}
