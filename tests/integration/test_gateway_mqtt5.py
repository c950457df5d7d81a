"""MQTT 5 behaviour an interoperability suite checks, end to end: paho-mqtt devices, the gateway and a real
Mosquitto. Each case follows what AWS IoT Core documents (cited in docs/aws-differences.md): session expiry set
at DISCONNECT, Retain As Published, zero-length client ids."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ANY_CLIENT_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/anon/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/anon/*"}
  ]
}"""


def props(packet_type: int, **values) -> Properties:
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


@pytest.fixture(scope="module")
def any_client(fleet):
    """A device whose policy lets it connect under any client id (so an assigned one is allowed)."""
    if "any-client" not in {p.name for p in fleet.registry.list_policies()}:
        fleet.registry.create_policy("any-client", ANY_CLIENT_POLICY)
    return fleet.device("anon", policies=("any-client",))


# --------------------------------------------------------------------------------------------- session expiry

def test_session_expiry_raised_at_disconnect_keeps_the_session(gateway, devices, fleet):
    """1 s at CONNECT, 5 s at DISCONNECT: 2.5 s later the session is still there (AWS IoT: the DISCONNECT's value
    "will update the Session Expiry Interval of the current session")."""
    thing, files, _ = fleet.device("expiry")
    first = devices(files, thing)
    assert first.connect(properties=props(PacketTypes.CONNECT, SessionExpiryInterval=1)) == 0
    assert first.subscribe("room/expiry", qos=1) == [1]
    first.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=5))
    first.wait_disconnect()
    closed = gateway.events.wait_for(event="disconnect", client_id=thing, kind="disconnect")
    assert "lowered" not in closed["reason"]
    time.sleep(2.5)  # longer than the CONNECT's 1 s, shorter than the DISCONNECT's 5 s: what is tested is time

    again = devices(files, thing, clean=False)
    assert again.connect(properties=props(PacketTypes.CONNECT, SessionExpiryInterval=1)) == 0
    assert again.connack_flags.session_present
    # The subscription survived with the session: a message reaches the device without a new SUBSCRIBE.
    other, other_files, _ = fleet.device("expiry-pub")
    publisher = devices(other_files, other)
    assert publisher.connect() == 0
    assert publisher.publish("room/expiry", b"kept", qos=1) == 0
    assert again.message().payload == b"kept"


def test_session_expiry_beyond_the_maximum_at_disconnect_is_lowered_and_logged(gateway, devices, fleet):
    thing, files, _ = fleet.device("expiry-cap")
    device = devices(files, thing)
    assert device.connect(properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60)) == 0
    device.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=7200))
    device.wait_disconnect()
    closed = gateway.events.wait_for(event="disconnect", client_id=thing, kind="disconnect")
    assert "session expiry interval lowered from 7200 s to 3600 s (the maximum)" in closed["reason"]


def test_session_expiry_at_disconnect_after_none_at_connect_is_a_protocol_error(gateway, devices, fleet):
    thing, files, _ = fleet.device("expiry-zero")
    device = devices(files, thing)
    assert device.connect() == 0
    device.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=5))
    refused = gateway.events.wait_for(event="disconnect", client_id=thing, kind="protocol_error")
    assert "§3.14.2.2.2" in refused["reason"]
    again = devices(files, thing, clean=False)
    assert again.connect() == 0 and not again.connack_flags.session_present


# --------------------------------------------------------------------------------------------- Retain As Published

def test_retain_as_published_keeps_the_flag_and_wildcards_get_no_retained_message(gateway, devices, fleet):
    (pub_id, pub_files, _), (wild_id, wild_files, _), (exact_id, exact_files, _) = (
        fleet.device("rap-pub"), fleet.device("rap-wild"), fleet.device("rap-exact"))
    pub, wild, exact = devices(pub_files, pub_id), devices(wild_files, wild_id), devices(exact_files, exact_id)
    for device in (pub, wild, exact):
        assert device.connect() == 0
    try:
        assert pub.publish("room/rap/a", b"first", qos=1, retain=True) == 0
        assert wild.subscribe("room/rap/+", options=mqtt.SubscribeOptions(qos=1, retainAsPublished=True)) == [1]
        assert exact.subscribe("room/rap/a", options=mqtt.SubscribeOptions(qos=1)) == [1]
        at_subscription = exact.message()
        assert (at_subscription.payload, at_subscription.retain) == (b"first", True)

        assert pub.publish("room/rap/a", b"second", qos=1, retain=True) == 0
        # The wildcard filter got no retained message at subscription (AWS IoT), and Retain As Published keeps
        # the live message's RETAIN flag [MQTT-3.3.1-12]; without the option the flag is cleared [MQTT-3.3.1-13].
        live = wild.message()
        assert (live.topic, live.payload, live.retain) == ("room/rap/a", b"second", True)
        plain = exact.message()
        assert (plain.payload, plain.retain) == (b"second", False)
    finally:
        pub.publish("room/rap/a", b"", qos=1, retain=True)  # clears the retained message


# --------------------------------------------------------------------------------------------- empty client ids

def test_v3_empty_client_id_with_clean_session_gets_one_assigned(gateway, devices, any_client, wait):
    _, files, cert_id = any_client
    seen = len(gateway.events.find(event="connect", certificate_id=cert_id, decision="allowed"))
    device = devices(files, "", version=4, clean=True)
    assert device.connect() == 0
    wait(lambda: len(gateway.events.find(event="connect", certificate_id=cert_id, decision="allowed")) > seen)
    connect = gateway.events.find(event="connect", certificate_id=cert_id, decision="allowed")[-1]
    assert connect["client_id"].startswith("iotgate-")
    assert device.subscribe("anon/x", qos=1) == [1]
    assert device.publish("anon/x", b"hello", qos=1) == 0
    assert device.message().payload == b"hello"


def test_v5_empty_client_id_gets_one_assigned_in_connack(gateway, devices, any_client):
    _, files, _ = any_client
    device = devices(files, "", version=5)
    assert device.connect() == 0
    assigned = device.connack_properties.AssignedClientIdentifier
    assert assigned.startswith("iotgate-")
    gateway.events.wait_for(event="connect", client_id=assigned, decision="allowed")


def test_v3_empty_client_id_without_clean_session_is_identifier_rejected(gateway, raw, any_client):
    _, files, _ = any_client
    client = raw(files, level=4)
    client.send(b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x3c\x00\x00")  # Clean Session 0, client id ""
    connack = client.packet()
    assert int(connack.reason_code) == 0x02  # identifier rejected [MQTT-3.1.3-8]
    assert client.closed()


def test_v3_empty_client_id_is_still_subject_to_the_policy(gateway, devices, fleet):
    thing, files, _ = fleet.device("anon-room")  # the room policy names the thing as the only client id
    device = devices(files, "", version=4, clean=True)
    assert device.connect() == 135  # paho's name for 3.1.1's 0x05 "not authorized"
