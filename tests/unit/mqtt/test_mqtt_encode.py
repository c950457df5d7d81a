"""Encoding: what our own code may ask for, and what it is refused (MQTTLocalError)."""

from __future__ import annotations

import pytest

from gateway.mqtt import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    ConnectReturnCode,
    Disconnect,
    MQTTLocalError,
    MQTTProtocolError,
    PingReq,
    Properties,
    PubAck,
    PubRel,
    Publish,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    connect_return_code_for,
    decode,
    encode,
    rewrite_connect,
)

R = ReasonCode

LOCAL_ERRORS = [
    # (packet, level, words in the message)
    (Publish("a/+", b""), 5, "wildcard"),
    (Publish("", b""), 4, "empty"),
    (Publish("", b""), 5, "empty"),
    (Publish("a", b"", qos=3), 5, "QoS"),
    (Publish("a", b"", qos=1), 5, "packet identifier"),
    (Publish("a", b"", qos=1, packet_id=0), 5, "packet identifier"),
    (Publish("a", b"", qos=1, packet_id=65536), 5, "packet identifier"),
    (Publish("a", b"", packet_id=3), 5, "QoS 0"),
    (Publish("a", b"", dup=True), 5, "DUP"),
    (Publish("a", "text"), 5, "bytes"),  # type: ignore[arg-type]
    (Publish("a\x00b", b""), 5, "U+0000"),
    (Publish("a\ud800", b""), 5, "surrogate"),
    (Publish("a", b"", properties=Properties(topic_alias=1)), 4, "3.1.1"),
    (Publish("a", b"", properties=Properties(topic_alias=0)), 5, "must not be 0"),
    (Publish("a", b"", properties=Properties(session_expiry_interval=1)), 5,
     "not valid in PUBLISH"),
    (Publish("a", b"", properties=Properties(payload_format_indicator=2)), 5, "0 or 1"),
    (Publish("a", b"", properties=Properties(message_expiry_interval=2**32)), 5, "out of range"),
    (Publish("a", b"", properties=Properties(response_topic="r/#")), 5, "wildcard"),
    (Publish("a", b"", properties=Properties(user_properties=(("k",),))), 5, "pair"),
    (Publish("a", b"", properties=Properties(subscription_identifiers=(0,))), 5, "must not be 0"),
    (Publish("a", b"", properties=Properties(correlation_data="x")), 5, "bytes"),  # type: ignore
    (Publish("a", b"", properties=Properties(content_type=b"x")), 5, "str"),  # type: ignore
    (Connect("d", 3), None, "protocol level"),
    (Connect("d", 4, password=b"p"), None, "[MQTT-3.1.2-22]"),
    (Connect("", 4, clean_start=False), None, "[MQTT-3.1.3-7]"),
    (Connect("d", 4, keep_alive=70000), None, "keep alive"),
    (Connect("d", 4, will=Will("w/+")), None, "will topic"),
    (Connect("d", 4, will=Will("w", qos=3)), None, "QoS"),
    (Connect("d", 4, properties=Properties(session_expiry_interval=1)), None, "3.1.1"),
    (Connect("d", 5, properties=Properties(will_delay_interval=1)), None, "not valid in CONNECT"),
    (Connect("d", 5, will=Will("w", properties=Properties(receive_maximum=1))), None, "Will"),
    (Connack(False, 6), 4, "return code"),
    (Connack(True, ConnectReturnCode.NOT_AUTHORIZED), 4, "session present"),
    (Connack(True, R.NOT_AUTHORIZED), 5, "session present"),
    (Connack(False, R.NO_MATCHING_SUBSCRIBERS), 5, "reason code"),
    (Connack(properties=Properties(topic_alias=1)), 5, "not valid in CONNACK"),
    (PubAck(1, R.NOT_AUTHORIZED), 4, "3.1.1"),
    (PubAck(0), 5, "packet identifier"),
    (PubRel(1, R.NOT_AUTHORIZED), 5, "reason code"),
    (Subscribe(1, ()), 5, "at least one"),
    (Subscribe(1, (Subscription("a/#/b"),)), 5, "[MQTT-4.7.1-1]"),
    (Subscribe(1, (Subscription("a", 3),)), 5, "QoS"),
    (Subscribe(1, (Subscription("a", retain_handling=3),)), 5, "retain handling"),
    (Subscribe(1, (Subscription("$share/g/a", no_local=True),)), 5, "shared"),
    (Subscribe(1, (Subscription("a", no_local=True),)), 4, "only a QoS"),
    (Subscribe(1, (Subscription("a"),), Properties(subscription_identifiers=(1, 2))), 5,
     "at most one"),
    (SubAck(1, ()), 5, "reason code"),
    (SubAck(1, (R.NOT_AUTHORIZED,)), 4, "reason code"),
    (SubAck(1, (R.NO_MATCHING_SUBSCRIBERS,)), 5, "reason code"),
    (Unsubscribe(1, ()), 5, "non-empty"),
    (Unsubscribe(1, "a/b"), 5, "non-empty"),  # type: ignore[arg-type]
    (Unsubscribe(1, ("a+",)), 5, "whole level"),
    (UnsubAck(1, (R.SUCCESS,)), 4, "no reason codes"),
    (UnsubAck(1), 5, "reason code per topic filter"),
    (UnsubAck(1, (R.GRANTED_QOS_1,)), 5, "reason code"),
    (Disconnect(R.SESSION_TAKEN_OVER), 4, "reason code"),
    (Disconnect(R.CONTINUE_AUTHENTICATION), 5, "reason code"),
    (Auth(), 4, "AUTH"),
    (Auth(R.NOT_AUTHORIZED), 5, "reason code"),
    (PingReq(), 3, "protocol level"),
    (PingReq(), None, "protocol level"),
    ("not a packet", 5, "cannot encode"),
]


@pytest.mark.parametrize(("packet", "level", "words"), LOCAL_ERRORS, ids=repr)
def test_local_errors(packet, level, words: str) -> None:
    with pytest.raises(MQTTLocalError) as info:
        encode(packet, level)
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, MQTTProtocolError)


def test_connect_level_must_match() -> None:
    with pytest.raises(MQTTLocalError):
        encode(Connect("d", 5), 4)
    assert encode(Connect("d", 5), 5) == encode(Connect("d", 5))


def test_rewrite_connect_for_the_upstream_broker() -> None:
    device = Connect("thing-1", 5, False, 1200, "device-user", b"device-secret",
                     Will("lwt/thing-1", b"gone", 1),
                     Properties(session_expiry_interval=3600, authentication_method="X"))
    upstream = decode(rewrite_connect(
        device, username=None, password=None, keep_alive=60, clean_start=True,
        properties=Properties(session_expiry_interval=0)))
    assert upstream == Connect("thing-1", 5, True, 60, None, None, Will("lwt/thing-1", b"gone", 1),
                               Properties(session_expiry_interval=0))
    v3 = decode(rewrite_connect(Connect("t", 4, username="u", password=b"p"), password=None))
    assert v3 == Connect("t", 4, username="u")
    with pytest.raises(MQTTLocalError):
        rewrite_connect(device, no_such_field=1)
    with pytest.raises(MQTTLocalError):
        rewrite_connect(Connect("t", 4, username="u", password=b"p"), username=None)


def test_connack_with_aws_limits() -> None:
    connack = Connack(False, R.SUCCESS, Properties(
        maximum_qos=1, retain_available=1, topic_alias_maximum=8, maximum_packet_size=149504,
        receive_maximum=100, server_keep_alive=1200, assigned_client_identifier="gen-1",
        wildcard_subscription_available=1, subscription_identifier_available=0,
        shared_subscription_available=1))
    data = encode(connack, 5)
    assert decode(data, 5) == connack
    assert encode(Connack(), 4) == b"\x20\x02\x00\x00"
    assert encode(Connack(False, ConnectReturnCode.NOT_AUTHORIZED), 4) == b"\x20\x02\x00\x05"


def test_short_acknowledgement_forms() -> None:
    assert encode(PubAck(1), 5) == b"\x40\x02\x00\x01"
    assert encode(PubAck(1, R.NOT_AUTHORIZED), 5) == b"\x40\x03\x00\x01\x87"
    assert encode(Disconnect(), 5) == b"\xe0\x00"
    assert encode(Disconnect(R.SESSION_TAKEN_OVER), 5) == b"\xe0\x01\x8e"
    assert encode(Auth(R.CONTINUE_AUTHENTICATION), 5) == b"\xf0\x02\x18\x00"


def test_reason_codes_and_v3_return_codes() -> None:
    assert R.NOT_AUTHORIZED == 0x87 and R.SESSION_TAKEN_OVER == 0x8E
    assert R.SERVER_BUSY == 0x89 and R.ADMINISTRATIVE_ACTION == 0x98
    assert R.SERVER_UNAVAILABLE == 0x88 and R.PACKET_TOO_LARGE == 0x95
    assert R(0) is R.SUCCESS is R.NORMAL_DISCONNECTION is R.GRANTED_QOS_0
    assert R.NOT_AUTHORIZED.is_error and not R.GRANTED_QOS_2.is_error
    assert connect_return_code_for(R.NOT_AUTHORIZED) is ConnectReturnCode.NOT_AUTHORIZED
    assert connect_return_code_for(R.UNSUPPORTED_PROTOCOL_VERSION) == 0x01
    assert connect_return_code_for(R.CLIENT_IDENTIFIER_NOT_VALID) == 0x02
    assert connect_return_code_for(R.SERVER_BUSY) == 0x03
    assert connect_return_code_for(R.BAD_USER_NAME_OR_PASSWORD) == 0x04
    assert connect_return_code_for(R.MALFORMED_PACKET) is None
    assert [int(c) for c in ConnectReturnCode] == [0, 1, 2, 3, 4, 5]


def test_properties_value() -> None:
    props = Properties(reason_string="x", user_properties=(("a", "b"),))
    assert repr(props) == "Properties(reason_string='x', user_properties=(('a', 'b'),))"
    assert props and not NO_PROPERTIES
    assert Properties() == NO_PROPERTIES
    with pytest.raises(AttributeError):
        props.reason_string = "y"  # type: ignore[misc]


def test_protocol_error_text() -> None:
    exc = MQTTProtocolError("bad", R.PROTOCOL_ERROR, "[MQTT-3.8.3-2]", protocol_level=5)
    assert str(exc) == "bad [MQTT-3.8.3-2]"
    assert "PROTOCOL_ERROR" in repr(exc)
