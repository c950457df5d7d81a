"""One table of named MQTT packet cases, shared by the codec tests, the session tests and the fuzz
seeds.

``VALID_CASES``: the bytes of one packet, the packet value they decode to, and the protocol level
of the connection (for CONNECT, the level it declares). ``canonical`` says whether encoding the
value gives back exactly these bytes (some valid encodings are longer than needed).

``MALFORMED_CASES``: bytes a peer might send, the reason code the refusal carries and the clause
of the specification that was broken.

The bytes are written out with the small builders below, independent of the codec under test.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.mqtt import (
    Auth,
    Connack,
    Connect,
    ConnectReturnCode,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)

R = ReasonCode

# ---------------------------------------------------------------------------------------------
# Builders (deliberately naive)


def vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return u16(len(raw)) + raw


def pkt(first_byte: int, *body: bytes) -> bytes:
    data = b"".join(body)
    return bytes((first_byte,)) + vbi(len(data)) + data


def props(*items: bytes) -> bytes:
    data = b"".join(items)
    return vbi(len(data)) + data


def prop(pid: int, value: bytes) -> bytes:
    return bytes((pid,)) + value


def user(key: str, value: str) -> bytes:
    return prop(0x26, s(key) + s(value))


def connect_header(level: int, flags: int, keep_alive: int = 60, name: bytes = b"MQTT") -> bytes:
    return s(name) + bytes((level, flags)) + u16(keep_alive)


NO_PROPS = b"\x00"


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class PacketCase:
    name: str
    level: int
    data: bytes
    packet: Packet
    canonical: bool = True

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class MalformedCase:
    name: str
    level: int
    data: bytes
    reason: int
    clause: str

    def __str__(self) -> str:
        return self.name


C = PacketCase
M = MalformedCase

_ALL_PUBLISH_PROPS = Properties(
    payload_format_indicator=1,
    message_expiry_interval=3600,
    content_type="application/json",
    response_topic="replies/dev-1",
    correlation_data=b"\x01\x02\x03",
    subscription_identifiers=(1, 268_435_455),
    user_properties=(("trace", "abc"), ("trace", "def"), ("k", "")),
)
_ALL_PUBLISH_PROPS_BYTES = props(
    prop(0x01, b"\x01"),
    prop(0x02, u32(3600)),
    prop(0x03, s("application/json")),
    prop(0x08, s("replies/dev-1")),
    prop(0x09, s(b"\x01\x02\x03")),
    prop(0x0B, vbi(1)),
    prop(0x0B, vbi(268_435_455)),
    user("trace", "abc"),
    user("trace", "def"),
    user("k", ""),
)

_CONNECT_PROPS = Properties(
    session_expiry_interval=86400,
    authentication_method="SCRAM-SHA-256",
    authentication_data=b"client-first",
    request_problem_information=0,
    request_response_information=1,
    receive_maximum=20,
    topic_alias_maximum=10,
    user_properties=(("sdk", "iotgate"), ("sdk", "again")),
    maximum_packet_size=149504,
)
_CONNECT_PROPS_BYTES = props(
    prop(0x11, u32(86400)),
    prop(0x15, s("SCRAM-SHA-256")),
    prop(0x16, s(b"client-first")),
    prop(0x17, b"\x00"),
    prop(0x19, b"\x01"),
    prop(0x21, u16(20)),
    prop(0x22, u16(10)),
    user("sdk", "iotgate"),
    user("sdk", "again"),
    prop(0x27, u32(149504)),
)

_WILL_PROPS = Properties(
    payload_format_indicator=1,
    message_expiry_interval=60,
    content_type="text/plain",
    response_topic="will/replies",
    correlation_data=b"cd",
    will_delay_interval=30,
    user_properties=(("why", "gone"),),
)
_WILL_PROPS_BYTES = props(
    prop(0x01, b"\x01"),
    prop(0x02, u32(60)),
    prop(0x03, s("text/plain")),
    prop(0x08, s("will/replies")),
    prop(0x09, s(b"cd")),
    prop(0x18, u32(30)),
    user("why", "gone"),
)

_CONNACK_PROPS = Properties(
    session_expiry_interval=0,
    assigned_client_identifier="auto-7f3a",
    server_keep_alive=1200,
    response_information="resp/",
    server_reference="other.example",
    reason_string="welcome",
    receive_maximum=100,
    topic_alias_maximum=8,
    maximum_qos=1,
    retain_available=1,
    user_properties=(("node", "gw-1"),),
    maximum_packet_size=149504,
    wildcard_subscription_available=1,
    subscription_identifier_available=0,
    shared_subscription_available=1,
)
_CONNACK_PROPS_BYTES = props(
    prop(0x11, u32(0)),
    prop(0x12, s("auto-7f3a")),
    prop(0x13, u16(1200)),
    prop(0x1A, s("resp/")),
    prop(0x1C, s("other.example")),
    prop(0x1F, s("welcome")),
    prop(0x21, u16(100)),
    prop(0x22, u16(8)),
    prop(0x24, b"\x01"),
    prop(0x25, b"\x01"),
    user("node", "gw-1"),
    prop(0x27, u32(149504)),
    prop(0x28, b"\x01"),
    prop(0x29, b"\x00"),
    prop(0x2A, b"\x01"),
)

_BIG = bytes(range(256)) * 80  # 20480 bytes: a three-byte Remaining Length

VALID_CASES: tuple[PacketCase, ...] = (
    # CONNECT, MQTT 3.1.1
    C("connect-v4-minimal", 4, pkt(0x10, connect_header(4, 0x02), s("dev-1")), Connect("dev-1")),
    C("connect-v4-empty-client-id", 4, pkt(0x10, connect_header(4, 0x02, 0), s("")),
      Connect("", keep_alive=0)),
    C("connect-v4-persistent-session", 4, pkt(0x10, connect_header(4, 0x00, 300), s("dev-1")),
      Connect("dev-1", clean_start=False, keep_alive=300)),
    C("connect-v4-will-user-password", 4,
      pkt(0x10, connect_header(4, 0xC2 | 0x04 | (1 << 3) | 0x20, 30), s("thing-42"),
          s("lwt/thing-42"), s(b"offline\x00\xff"), s("alice"), s(b"s3cret\x00")),
      Connect("thing-42", 4, True, 30, "alice", b"s3cret\x00",
              Will("lwt/thing-42", b"offline\x00\xff", 1, True))),
    C("connect-v4-will-qos2", 4,
      pkt(0x10, connect_header(4, 0x02 | 0x04 | (2 << 3)), s("d"), s("w"), s(b"")),
      Connect("d", will=Will("w", b"", 2))),
    C("connect-v4-username-only", 4, pkt(0x10, connect_header(4, 0x82), s("d"), s("user")),
      Connect("d", username="user")),
    C("connect-v4-unicode-client-id", 4, pkt(0x10, connect_header(4, 0x02), s("gerät-ü-😀")),
      Connect("gerät-ü-😀")),
    C("connect-v4-bom-kept", 4, pkt(0x10, connect_header(4, 0x02), s("\ufeffdev")),
      Connect("\ufeffdev")),
    # CONNECT, MQTT 5
    C("connect-v5-minimal", 5, pkt(0x10, connect_header(5, 0x02), NO_PROPS, s("dev-1")),
      Connect("dev-1", 5)),
    C("connect-v5-properties", 5,
      pkt(0x10, connect_header(5, 0x02, 45), _CONNECT_PROPS_BYTES, s("dev-1")),
      Connect("dev-1", 5, keep_alive=45, properties=_CONNECT_PROPS)),
    C("connect-v5-will-properties", 5,
      pkt(0x10, connect_header(5, 0x04 | (1 << 3), 10), NO_PROPS, s("dev-2"), _WILL_PROPS_BYTES,
          s("lwt/dev-2"), s(b"bye")),
      Connect("dev-2", 5, False, 10, will=Will("lwt/dev-2", b"bye", 1, False, _WILL_PROPS))),
    C("connect-v5-password-without-username", 5,
      pkt(0x10, connect_header(5, 0x42), NO_PROPS, s("d"), s(b"token")),
      Connect("d", 5, password=b"token")),
    C("connect-v5-empty-client-id-no-clean-start", 5,
      pkt(0x10, connect_header(5, 0x00), NO_PROPS, s("")), Connect("", 5, clean_start=False)),
    # CONNACK
    C("connack-v4-accepted", 4, pkt(0x20, b"\x00\x00"), Connack()),
    C("connack-v4-session-present", 4, pkt(0x20, b"\x01\x00"), Connack(True)),
    C("connack-v4-not-authorized", 4, pkt(0x20, b"\x00\x05"),
      Connack(False, ConnectReturnCode.NOT_AUTHORIZED)),
    C("connack-v4-unacceptable-version", 4, pkt(0x20, b"\x00\x01"),
      Connack(False, ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION)),
    C("connack-v5-success", 5, pkt(0x20, b"\x00\x00", NO_PROPS), Connack()),
    C("connack-v5-aws-limits", 5, pkt(0x20, b"\x01\x00", _CONNACK_PROPS_BYTES),
      Connack(True, R.SUCCESS, _CONNACK_PROPS)),
    C("connack-v5-not-authorized", 5,
      pkt(0x20, b"\x00\x87", props(prop(0x1F, s("policy denies iot:Connect")))),
      Connack(False, R.NOT_AUTHORIZED, Properties(reason_string="policy denies iot:Connect"))),
    C("connack-v5-server-busy", 5, pkt(0x20, b"\x00\x89", NO_PROPS), Connack(False, R.SERVER_BUSY)),
    # PUBLISH, MQTT 3.1.1
    C("publish-v4-qos0", 4, pkt(0x30, s("a/b"), b"hello"), Publish("a/b", b"hello")),
    C("publish-v4-qos0-empty-payload", 4, pkt(0x30, s("a/b")), Publish("a/b")),
    C("publish-v4-qos1", 4, pkt(0x32, s("devices/d1/telemetry"), u16(1), b'{"t":21.5}'),
      Publish("devices/d1/telemetry", b'{"t":21.5}', 1, packet_id=1)),
    C("publish-v4-qos2-retain-dup", 4, pkt(0x3D, s("x"), u16(65535), b"\x00"),
      Publish("x", b"\x00", 2, True, True, 65535)),
    C("publish-v4-retain-clear", 4, pkt(0x31, s("state/lamp")), Publish("state/lamp", retain=True)),
    C("publish-v4-aws-reserved-topic", 4,
      pkt(0x32, s("$aws/things/t1/shadow/update"), u16(9), b"{}"),
      Publish("$aws/things/t1/shadow/update", b"{}", 1, packet_id=9)),
    C("publish-v4-unicode-topic", 4, pkt(0x30, s("capteurs/température/€"), b"1"),
      Publish("capteurs/température/€", b"1")),
    C("publish-v4-slash-only-topic", 4, pkt(0x30, s("/"), b"."), Publish("/", b".")),
    C("publish-v4-large-payload", 4, pkt(0x32, s("big"), u16(3), _BIG),
      Publish("big", _BIG, 1, packet_id=3)),
    # PUBLISH, MQTT 5
    C("publish-v5-qos0", 5, pkt(0x30, s("a/b"), NO_PROPS, b"hi"), Publish("a/b", b"hi")),
    C("publish-v5-qos1-topic-alias-set", 5,
      pkt(0x32, s("devices/d1/telemetry"), u16(10), props(prop(0x23, u16(1))), b"22"),
      Publish("devices/d1/telemetry", b"22", 1, packet_id=10,
              properties=Properties(topic_alias=1))),
    C("publish-v5-topic-alias-only", 5, pkt(0x32, s(""), u16(11), props(prop(0x23, u16(1))), b"23"),
      Publish("", b"23", 1, packet_id=11, properties=Properties(topic_alias=1))),
    C("publish-v5-all-properties", 5,
      pkt(0x34, s("cmd/dev-1"), u16(500), _ALL_PUBLISH_PROPS_BYTES, b"payload"),
      Publish("cmd/dev-1", b"payload", 2, packet_id=500, properties=_ALL_PUBLISH_PROPS)),
    C("publish-v5-large-payload", 5, pkt(0x30, s("big"), NO_PROPS, _BIG), Publish("big", _BIG)),
    # PUBACK / PUBREC / PUBREL / PUBCOMP
    C("puback-v4", 4, pkt(0x40, u16(1)), PubAck(1)),
    C("pubrec-v4", 4, pkt(0x50, u16(2)), PubRec(2)),
    C("pubrel-v4", 4, pkt(0x62, u16(3)), PubRel(3)),
    C("pubcomp-v4", 4, pkt(0x70, u16(65535)), PubComp(65535)),
    C("puback-v5-short", 5, pkt(0x40, u16(1)), PubAck(1)),
    C("puback-v5-not-authorized", 5, pkt(0x40, u16(7), b"\x87"), PubAck(7, R.NOT_AUTHORIZED)),
    C("puback-v5-no-subscribers", 5, pkt(0x40, u16(7), b"\x10"),
      PubAck(7, R.NO_MATCHING_SUBSCRIBERS)),
    C("puback-v5-reason-string", 5,
      pkt(0x40, u16(8), b"\x97", props(prop(0x1F, s("quota")), user("a", "b"))),
      PubAck(8, R.QUOTA_EXCEEDED,
             Properties(reason_string="quota", user_properties=(("a", "b"),)))),
    C("puback-v5-success-with-empty-properties", 5, pkt(0x40, u16(9), b"\x00", NO_PROPS), PubAck(9),
      canonical=False),
    C("puback-v5-success-reason-only", 5, pkt(0x40, u16(9), b"\x00"), PubAck(9), canonical=False),
    C("pubrec-v5-error", 5, pkt(0x50, u16(4), b"\x80"), PubRec(4, R.UNSPECIFIED_ERROR)),
    C("pubrel-v5-not-found", 5, pkt(0x62, u16(5), b"\x92"),
      PubRel(5, R.PACKET_IDENTIFIER_NOT_FOUND)),
    C("pubcomp-v5-short", 5, pkt(0x70, u16(6)), PubComp(6)),
    C("pubcomp-v5-properties", 5, pkt(0x70, u16(6), b"\x00", props(prop(0x1F, s("ok")))),
      PubComp(6, R.SUCCESS, Properties(reason_string="ok"))),
    # SUBSCRIBE
    C("subscribe-v4", 4,
      pkt(0x82, u16(10), s("a/+/c"), b"\x01", s("d/#"), b"\x00", s("#"), b"\x02"),
      Subscribe(10, (Subscription("a/+/c", 1), Subscription("d/#", 0), Subscription("#", 2)))),
    C("subscribe-v4-share-is-a-plain-filter", 4, pkt(0x82, u16(1), s("$share/g"), b"\x00"),
      Subscribe(1, (Subscription("$share/g"),))),
    C("subscribe-v5-options", 5,
      pkt(0x82, u16(11), props(prop(0x0B, vbi(200)), user("u", "v")),
          s("cmd/+"), bytes((0x01 | 0x04 | 0x08 | (2 << 4),)),
          s("$share/workers/jobs/#"), b"\x11"),
      Subscribe(11, (Subscription("cmd/+", 1, True, True, 2),
                     Subscription("$share/workers/jobs/#", 1, False, False, 1)),
                Properties(subscription_identifiers=(200,), user_properties=(("u", "v"),)))),
    C("subscribe-v5-plain", 5, pkt(0x82, u16(1), NO_PROPS, s("+"), b"\x00"),
      Subscribe(1, (Subscription("+"),))),
    # SUBACK
    C("suback-v4", 4, pkt(0x90, u16(10), b"\x01\x00\x80"),
      SubAck(10, (R.GRANTED_QOS_1, R.GRANTED_QOS_0, R.UNSPECIFIED_ERROR))),
    C("suback-v5", 5, pkt(0x90, u16(11), props(prop(0x1F, s("denied"))), b"\x01\x87\x9e\xa2"),
      SubAck(11, (R.GRANTED_QOS_1, R.NOT_AUTHORIZED, R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                  R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED), Properties(reason_string="denied"))),
    # UNSUBSCRIBE / UNSUBACK
    C("unsubscribe-v4", 4, pkt(0xA2, u16(12), s("a/+/c"), s("d/#")),
      Unsubscribe(12, ("a/+/c", "d/#"))),
    C("unsubscribe-v5", 5, pkt(0xA2, u16(13), props(user("k", "v")), s("x")),
      Unsubscribe(13, ("x",), Properties(user_properties=(("k", "v"),)))),
    C("unsuback-v4", 4, pkt(0xB0, u16(12)), UnsubAck(12)),
    C("unsuback-v5", 5, pkt(0xB0, u16(13), NO_PROPS, b"\x00\x11\x87"),
      UnsubAck(13, (R.SUCCESS, R.NO_SUBSCRIPTION_EXISTED, R.NOT_AUTHORIZED))),
    # PINGREQ / PINGRESP
    C("pingreq-v4", 4, b"\xc0\x00", PingReq()),
    C("pingresp-v4", 4, b"\xd0\x00", PingResp()),
    C("pingreq-v5", 5, b"\xc0\x00", PingReq()),
    C("pingresp-v5", 5, b"\xd0\x00", PingResp()),
    # DISCONNECT
    C("disconnect-v4", 4, b"\xe0\x00", Disconnect()),
    C("disconnect-v5-normal", 5, b"\xe0\x00", Disconnect()),
    C("disconnect-v5-session-taken-over", 5, pkt(0xE0, b"\x8e"), Disconnect(R.SESSION_TAKEN_OVER)),
    C("disconnect-v5-administrative-action", 5,
      pkt(0xE0, b"\x98", props(prop(0x1F, s("certificate revoked")))),
      Disconnect(R.ADMINISTRATIVE_ACTION, Properties(reason_string="certificate revoked"))),
    C("disconnect-v5-with-will", 5, pkt(0xE0, b"\x04", props(prop(0x11, u32(0)))),
      Disconnect(R.DISCONNECT_WITH_WILL_MESSAGE, Properties(session_expiry_interval=0))),
    C("disconnect-v5-server-moved", 5, pkt(0xE0, b"\x9d", props(prop(0x1C, s("gw-2.example")))),
      Disconnect(R.SERVER_MOVED, Properties(server_reference="gw-2.example"))),
    C("disconnect-v5-normal-explicit", 5, pkt(0xE0, b"\x00"), Disconnect(), canonical=False),
    # AUTH
    C("auth-v5-empty", 5, b"\xf0\x00", Auth()),
    C("auth-v5-continue", 5,
      pkt(0xF0, b"\x18", props(prop(0x15, s("SCRAM-SHA-256")), prop(0x16, s(b"server-first")))),
      Auth(R.CONTINUE_AUTHENTICATION,
           Properties(authentication_method="SCRAM-SHA-256", authentication_data=b"server-first"))),
    C("auth-v5-re-authenticate", 5, pkt(0xF0, b"\x19", props(prop(0x15, s("X")))),
      Auth(R.RE_AUTHENTICATE, Properties(authentication_method="X"))),
)


def _connect_v(level: int, flags: int, *payload: bytes) -> bytes:
    extra = (NO_PROPS,) if level == 5 else ()
    return pkt(0x10, connect_header(level, flags), *extra, *payload)


def _pub5(topic: bytes, properties: bytes, payload: bytes = b"x", qos_pid: bytes = b"") -> bytes:
    first = 0x32 if qos_pid else 0x30
    return pkt(first, topic, qos_pid, properties, payload)


def _sub(level: int, *payload: bytes, packet_id: int = 1) -> bytes:
    extra = (NO_PROPS,) if level == 5 else ()
    return pkt(0x82, u16(packet_id), *extra, *payload)


def _both(name: str, data_for, reason: int, clause_v4: str, clause_v5: str | None = None):
    return (
        M(f"{name}-v4", 4, data_for(4), reason, clause_v4),
        M(f"{name}-v5", 5, data_for(5), reason, clause_v5 or clause_v4),
    )


MALFORMED_CASES: tuple[MalformedCase, ...] = (
    # Fixed header
    *_both("reserved-flags-pingreq", lambda lv: b"\xc1\x00", R.MALFORMED_PACKET, "[MQTT-2.2.2-1]",
           "[MQTT-2.1.3-1]"),
    *_both("reserved-flags-puback", lambda lv: b"\x42\x02\x00\x01", R.MALFORMED_PACKET,
           "[MQTT-2.2.2-1]", "[MQTT-2.1.3-1]"),
    *_both("reserved-flags-connect", lambda lv: b"\x18\x00", R.MALFORMED_PACKET, "[MQTT-2.2.2-1]",
           "[MQTT-2.1.3-1]"),
    M("reserved-flags-disconnect-v5", 5, b"\xe2\x00", R.MALFORMED_PACKET, "[MQTT-3.14.1-1]"),
    M("reserved-flags-auth-v5", 5, b"\xf1\x00", R.MALFORMED_PACKET, "[MQTT-3.15.1-1]"),
    *_both("pubrel-flags", lambda lv: b"\x60\x02\x00\x01", R.MALFORMED_PACKET, "[MQTT-3.6.1-1]"),
    *_both("subscribe-flags", lambda lv: b"\x80\x06\x00\x01\x00\x01a\x00", R.MALFORMED_PACKET,
           "[MQTT-3.8.1-1]"),
    *_both("unsubscribe-flags", lambda lv: b"\xa0\x05\x00\x01\x00\x01a", R.MALFORMED_PACKET,
           "[MQTT-3.10.1-1]"),
    *_both("publish-qos3", lambda lv: b"\x36\x05\x00\x01a\x00\x01", R.MALFORMED_PACKET,
           "[MQTT-3.3.1-4]"),
    *_both("publish-qos0-dup", lambda lv: b"\x38\x03\x00\x01a", R.MALFORMED_PACKET,
           "[MQTT-3.3.1-2]"),
    *_both("packet-type-0", lambda lv: b"\x00\x00", R.MALFORMED_PACKET, "§2.2.1", "§2.1.2"),
    M("auth-in-v4", 4, b"\xf0\x00", R.MALFORMED_PACKET, "§2.2.1"),
    *_both("remaining-length-five-bytes", lambda lv: b"\x30\xff\xff\xff\xff\x01",
           R.MALFORMED_PACKET, "§2.2.3", "[MQTT-1.5.5-1]"),
    *_both("packet-too-large", lambda lv: b"\x30\x80\x80\x80\x05", R.PACKET_TOO_LARGE, "§2.2.3",
           "[MQTT-3.2.2-15]"),
    # CONNECT
    M("connect-bad-protocol-name", 4, pkt(0x10, connect_header(4, 0x02, name=b"MQTX"), s("d")),
      R.UNSUPPORTED_PROTOCOL_VERSION, "[MQTT-3.1.2-1]"),
    M("connect-mqtt31", 4, pkt(0x10, connect_header(3, 0x02, name=b"MQIsdp"), s("d")),
      R.UNSUPPORTED_PROTOCOL_VERSION, "[MQTT-3.1.2-2]"),
    M("connect-level-6", 5, pkt(0x10, connect_header(6, 0x02), NO_PROPS, s("d")),
      R.UNSUPPORTED_PROTOCOL_VERSION, "[MQTT-3.1.2-2]"),
    M("connect-level-3-named-mqtt", 4, pkt(0x10, connect_header(3, 0x02), s("d")),
      R.UNSUPPORTED_PROTOCOL_VERSION, "[MQTT-3.1.2-2]"),
    *_both("connect-reserved-flag", lambda lv: _connect_v(lv, 0x03, s("d")), R.MALFORMED_PACKET,
           "[MQTT-3.1.2-3]"),
    *_both("connect-will-qos-without-will", lambda lv: _connect_v(lv, 0x02 | 0x08, s("d")),
           R.MALFORMED_PACKET, "[MQTT-3.1.2-13]", "[MQTT-3.1.2-11]"),
    *_both("connect-will-retain-without-will", lambda lv: _connect_v(lv, 0x02 | 0x20, s("d")),
           R.MALFORMED_PACKET, "[MQTT-3.1.2-15]", "[MQTT-3.1.2-13]"),
    *_both("connect-will-qos-3",
           lambda lv: _connect_v(lv, 0x02 | 0x04 | 0x18, s("d"),
                                 *((NO_PROPS,) if lv == 5 else ()), s("w"), s(b"")),
           R.MALFORMED_PACKET, "[MQTT-3.1.2-14]", "[MQTT-3.1.2-12]"),
    M("connect-v4-password-without-username", 4, _connect_v(4, 0x42, s("d"), s(b"pw")),
      R.MALFORMED_PACKET, "[MQTT-3.1.2-22]"),
    M("connect-v4-empty-client-id-persistent", 4, _connect_v(4, 0x00, s("")),
      R.CLIENT_IDENTIFIER_NOT_VALID, "[MQTT-3.1.3-8]"),
    *_both("connect-client-id-invalid-utf8", lambda lv: _connect_v(lv, 0x02, s(b"\xc3\x28")),
           R.MALFORMED_PACKET, "[MQTT-1.5.3-1]", "[MQTT-1.5.4-1]"),
    *_both("connect-client-id-surrogate", lambda lv: _connect_v(lv, 0x02, s(b"a\xed\xa0\x80")),
           R.MALFORMED_PACKET, "[MQTT-1.5.3-1]", "[MQTT-1.5.4-1]"),
    *_both("connect-client-id-overlong", lambda lv: _connect_v(lv, 0x02, s(b"\xc0\xaf")),
           R.MALFORMED_PACKET, "[MQTT-1.5.3-1]", "[MQTT-1.5.4-1]"),
    *_both("connect-client-id-null", lambda lv: _connect_v(lv, 0x02, s(b"a\x00b")),
           R.MALFORMED_PACKET, "[MQTT-1.5.3-2]", "[MQTT-1.5.4-2]"),
    *_both("connect-username-null", lambda lv: _connect_v(lv, 0x82, s("d"), s(b"\x00")),
           R.MALFORMED_PACKET, "[MQTT-1.5.3-2]", "[MQTT-1.5.4-2]"),
    *_both("connect-will-topic-wildcard",
           lambda lv: _connect_v(lv, 0x06, s("d"), *((NO_PROPS,) if lv == 5 else ()), s("a/#"),
                                 s(b"")),
           R.TOPIC_NAME_INVALID, "[MQTT-4.7.1-1]", "[MQTT-4.7.0-1]"),
    *_both("connect-trailing-bytes", lambda lv: _connect_v(lv, 0x02, s("d"), b"\x00"),
           R.MALFORMED_PACKET, "[MQTT-3.1.3-1]"),
    *_both("connect-client-id-cut-short", lambda lv: _connect_v(lv, 0x02, b"\x00\x05ab"),
           R.MALFORMED_PACKET, "§1.5.3", "§1.5.4"),
    M("connect-missing-will-v4", 4, _connect_v(4, 0x06, s("d")), R.MALFORMED_PACKET, "§1.5.3"),
    M("connect-missing-will-v5", 5, _connect_v(5, 0x06, s("d")), R.MALFORMED_PACKET, "§1.5.5"),
    M("connect-truncated-header", 4, pkt(0x10, s("MQTT"), b"\x04"), R.MALFORMED_PACKET, "§3.1.2"),
    M("connect-v5-duplicate-property", 5,
      pkt(0x10, connect_header(5, 0x02), props(prop(0x11, u32(1)), prop(0x11, u32(2))), s("d")),
      R.PROTOCOL_ERROR, "§3.1.2.11.2"),
    M("connect-v5-topic-alias-property", 5,
      pkt(0x10, connect_header(5, 0x02), props(prop(0x23, u16(1))), s("d")),
      R.MALFORMED_PACKET, "§2.2.2.2"),
    M("connect-v5-unknown-property", 5,
      pkt(0x10, connect_header(5, 0x02), props(prop(0x7F, b"\x00")), s("d")),
      R.MALFORMED_PACKET, "§2.2.2.2"),
    M("connect-v5-receive-maximum-0", 5,
      pkt(0x10, connect_header(5, 0x02), props(prop(0x21, u16(0))), s("d")),
      R.PROTOCOL_ERROR, "§3.1.2.11.3"),
    M("connect-v5-maximum-packet-size-0", 5,
      pkt(0x10, connect_header(5, 0x02), props(prop(0x27, u32(0))), s("d")),
      R.PROTOCOL_ERROR, "§3.1.2.11.4"),
    M("connect-v5-request-problem-information-2", 5,
      pkt(0x10, connect_header(5, 0x02), props(prop(0x17, b"\x02")), s("d")),
      R.PROTOCOL_ERROR, "§3.1.2.11.7"),
    M("connect-v5-authentication-data-without-method", 5,
      pkt(0x10, connect_header(5, 0x02), props(prop(0x16, s(b"x"))), s("d")),
      R.PROTOCOL_ERROR, "§3.1.2.11.10"),
    M("connect-v5-property-length-past-end", 5,
      pkt(0x10, connect_header(5, 0x02), b"\x20", s("d")), R.MALFORMED_PACKET, "§2.2.2.1"),
    M("connect-v5-property-cut-short", 5,
      pkt(0x10, connect_header(5, 0x02), b"\x03\x11\x00\x00", s("d")), R.MALFORMED_PACKET,
      "§2.2.2.2"),
    M("connect-v5-will-property-in-connect", 5,
      pkt(0x10, connect_header(5, 0x02), props(prop(0x18, u32(5))), s("d")),
      R.MALFORMED_PACKET, "§2.2.2.2"),
    M("connect-v5-user-property-invalid-utf8", 5,
      pkt(0x10, connect_header(5, 0x02), props(prop(0x26, s(b"\xff") + s("v"))), s("d")),
      R.MALFORMED_PACKET, "[MQTT-1.5.4-1]"),
    # CONNACK
    M("connack-v4-reserved-code", 4, pkt(0x20, b"\x00\x06"), R.PROTOCOL_ERROR, "§3.2.2.3"),
    M("connack-v4-reserved-flags", 4, pkt(0x20, b"\x02\x00"), R.MALFORMED_PACKET, "§3.2.2.1"),
    M("connack-v4-refused-with-session", 4, pkt(0x20, b"\x01\x05"), R.PROTOCOL_ERROR,
      "[MQTT-3.2.2-4]"),
    M("connack-v4-too-long", 4, pkt(0x20, b"\x00\x00\x00"), R.MALFORMED_PACKET, "§3.2.1"),
    M("connack-v5-reserved-flags", 5, pkt(0x20, b"\x80\x00", NO_PROPS), R.MALFORMED_PACKET,
      "[MQTT-3.2.2-1]"),
    M("connack-v5-refused-with-session", 5, pkt(0x20, b"\x01\x87", NO_PROPS), R.PROTOCOL_ERROR,
      "[MQTT-3.2.2-6]"),
    M("connack-v5-puback-reason", 5, pkt(0x20, b"\x00\x10", NO_PROPS), R.PROTOCOL_ERROR,
      "§3.2.2.2"),
    M("connack-v5-maximum-qos-2", 5, pkt(0x20, b"\x00\x00", props(prop(0x24, b"\x02"))),
      R.PROTOCOL_ERROR, "§3.2.2.3.4"),
    M("connack-v5-missing-properties", 5, pkt(0x20, b"\x00\x00"), R.MALFORMED_PACKET, "§1.5.5"),
    # PUBLISH
    *_both("publish-topic-plus",
           lambda lv: pkt(0x30, s("a/+/c"), *((NO_PROPS,) if lv == 5 else ())),
           R.TOPIC_NAME_INVALID, "[MQTT-3.3.2-2]"),
    *_both("publish-topic-hash", lambda lv: pkt(0x30, s("a/#"), *((NO_PROPS,) if lv == 5 else ())),
           R.TOPIC_NAME_INVALID, "[MQTT-3.3.2-2]"),
    *_both("publish-packet-id-0",
           lambda lv: pkt(0x32, s("a"), u16(0), *((NO_PROPS,) if lv == 5 else ()), b"x"),
           R.PROTOCOL_ERROR, "[MQTT-2.3.1-1]", "[MQTT-2.2.1-3]"),
    *_both("publish-topic-invalid-utf8", lambda lv: pkt(0x30, s(b"a/\xfe"), b"\x00"),
           R.MALFORMED_PACKET, "[MQTT-1.5.3-1]", "[MQTT-1.5.4-1]"),
    *_both("publish-topic-null", lambda lv: pkt(0x30, s(b"a\x00"), b"\x00"),
           R.MALFORMED_PACKET, "[MQTT-1.5.3-2]", "[MQTT-1.5.4-2]"),
    *_both("publish-topic-past-end", lambda lv: pkt(0x30, b"\x00\x09abc"), R.MALFORMED_PACKET,
           "§1.5.3", "§1.5.4"),
    *_both("publish-no-topic-length", lambda lv: pkt(0x30, b"\x00"), R.MALFORMED_PACKET,
           "§1.5.3", "§1.5.4"),
    *_both("publish-packet-id-cut-short", lambda lv: pkt(0x32, s("a"), b"\x00"),
           R.MALFORMED_PACKET, "§2.3.1", "§2.2.1"),
    M("publish-v4-empty-topic", 4, pkt(0x30, s(""), b"x"), R.TOPIC_NAME_INVALID,
      "[MQTT-4.7.3-1]"),
    M("publish-v5-empty-topic-without-alias", 5, _pub5(s(""), NO_PROPS), R.PROTOCOL_ERROR,
      "§3.3.2.3.4"),
    M("publish-v5-topic-alias-0", 5, _pub5(s("a"), props(prop(0x23, u16(0)))),
      R.TOPIC_ALIAS_INVALID, "[MQTT-3.3.2-8]"),
    M("publish-v5-duplicate-topic-alias", 5,
      _pub5(s("a"), props(prop(0x23, u16(1)), prop(0x23, u16(2)))), R.PROTOCOL_ERROR,
      "§3.3.2.3.4"),
    M("publish-v5-duplicate-content-type", 5,
      _pub5(s("a"), props(prop(0x03, s("a")), prop(0x03, s("b")))), R.PROTOCOL_ERROR,
      "§3.3.2.3.9"),
    M("publish-v5-session-expiry-property", 5, _pub5(s("a"), props(prop(0x11, u32(1)))),
      R.MALFORMED_PACKET, "§2.2.2.2"),
    M("publish-v5-property-length-past-end", 5, _pub5(s("a"), b"\x09", b""), R.MALFORMED_PACKET,
      "§2.2.2.1"),
    M("publish-v5-property-cut-short", 5, _pub5(s("a"), b"\x02\x23\x00", b""),
      R.MALFORMED_PACKET, "§2.2.2.2"),
    M("publish-v5-string-property-past-end", 5, _pub5(s("a"), b"\x03\x03\x00\x05", b""),
      R.MALFORMED_PACKET, "§1.5.4"),
    M("publish-v5-payload-format-2", 5, _pub5(s("a"), props(prop(0x01, b"\x02"))),
      R.PROTOCOL_ERROR, "§3.3.2.3.2"),
    M("publish-v5-subscription-identifier-0", 5, _pub5(s("a"), props(prop(0x0B, b"\x00"))),
      R.PROTOCOL_ERROR, "§3.8.2.1.2"),
    M("publish-v5-property-varint-five-bytes", 5, _pub5(s("a"), b"\xff\xff\xff\xff\x01"),
      R.MALFORMED_PACKET, "[MQTT-1.5.5-1]"),
    M("publish-v5-missing-property-length", 5, pkt(0x32, s("a"), u16(1)), R.MALFORMED_PACKET,
      "§1.5.5"),
    # PUBACK and friends
    M("puback-v4-too-long", 4, pkt(0x40, u16(1), b"\x00"), R.MALFORMED_PACKET, "§3.4.1"),
    M("puback-v4-too-short", 4, pkt(0x40, b"\x01"), R.MALFORMED_PACKET, "§3.4.1"),
    *_both("puback-packet-id-0", lambda lv: pkt(0x40, u16(0)), R.PROTOCOL_ERROR, "§2.3.1",
           "§2.2.1"),
    M("puback-v5-bad-reason", 5, pkt(0x40, u16(1), b"\x05"), R.PROTOCOL_ERROR, "[MQTT-3.4.2-1]"),
    M("pubrec-v5-bad-reason", 5, pkt(0x50, u16(1), b"\x92"), R.PROTOCOL_ERROR, "[MQTT-3.5.2-1]"),
    M("pubrel-v5-bad-reason", 5, pkt(0x62, u16(1), b"\x10"), R.PROTOCOL_ERROR, "[MQTT-3.6.2-1]"),
    M("pubcomp-v5-bad-reason", 5, pkt(0x70, u16(1), b"\x87"), R.PROTOCOL_ERROR, "[MQTT-3.7.2-1]"),
    M("puback-v5-topic-alias-property", 5, pkt(0x40, u16(1), b"\x00", props(prop(0x23, u16(1)))),
      R.MALFORMED_PACKET, "§2.2.2.2"),
    M("puback-v5-duplicate-reason-string", 5,
      pkt(0x40, u16(1), b"\x00", props(prop(0x1F, s("a")), prop(0x1F, s("b")))),
      R.PROTOCOL_ERROR, "§3.2.2.3.9"),
    # SUBSCRIBE
    *_both("subscribe-empty", lambda lv: _sub(lv), R.PROTOCOL_ERROR, "[MQTT-3.8.3-3]",
           "[MQTT-3.8.3-2]"),
    *_both("subscribe-packet-id-0", lambda lv: _sub(lv, s("a"), b"\x00", packet_id=0),
           R.PROTOCOL_ERROR, "[MQTT-2.3.1-1]", "[MQTT-2.2.1-3]"),
    M("subscribe-v4-reserved-bits", 4, _sub(4, s("a"), b"\x04"), R.MALFORMED_PACKET,
      "[MQTT-3-8.3-4]"),
    M("subscribe-v4-qos-3", 4, _sub(4, s("a"), b"\x03"), R.MALFORMED_PACKET, "[MQTT-3-8.3-4]"),
    M("subscribe-v5-reserved-bits", 5, _sub(5, s("a"), b"\x40"), R.MALFORMED_PACKET,
      "[MQTT-3.8.3-5]"),
    M("subscribe-v5-qos-3", 5, _sub(5, s("a"), b"\x03"), R.PROTOCOL_ERROR, "§3.8.3.1"),
    M("subscribe-v5-retain-handling-3", 5, _sub(5, s("a"), b"\x30"), R.PROTOCOL_ERROR,
      "§3.8.3.1"),
    M("subscribe-v5-no-local-shared", 5, _sub(5, s("$share/g/a"), b"\x04"), R.PROTOCOL_ERROR,
      "[MQTT-3.8.3-4]"),
    *_both("subscribe-hash-not-last", lambda lv: _sub(lv, s("a/#/b"), b"\x00"),
           R.TOPIC_FILTER_INVALID, "[MQTT-4.7.1-2]", "[MQTT-4.7.1-1]"),
    *_both("subscribe-hash-in-level", lambda lv: _sub(lv, s("a/b#"), b"\x00"),
           R.TOPIC_FILTER_INVALID, "[MQTT-4.7.1-2]", "[MQTT-4.7.1-1]"),
    *_both("subscribe-plus-in-level", lambda lv: _sub(lv, s("a/b+/c"), b"\x00"),
           R.TOPIC_FILTER_INVALID, "[MQTT-4.7.1-3]", "[MQTT-4.7.1-2]"),
    *_both("subscribe-empty-filter", lambda lv: _sub(lv, s(""), b"\x00"), R.TOPIC_FILTER_INVALID,
           "[MQTT-4.7.3-1]"),
    *_both("subscribe-missing-options", lambda lv: _sub(lv, s("a")), R.MALFORMED_PACKET,
           "§3.8.3"),
    *_both("subscribe-filter-invalid-utf8", lambda lv: _sub(lv, s(b"\xe2\x82"), b"\x00"),
           R.MALFORMED_PACKET, "[MQTT-1.5.3-1]", "[MQTT-1.5.4-1]"),
    M("subscribe-v5-share-empty-name", 5, _sub(5, s("$share//a"), b"\x00"),
      R.TOPIC_FILTER_INVALID, "[MQTT-4.8.2-1]"),
    M("subscribe-v5-share-no-filter", 5, _sub(5, s("$share/g"), b"\x00"), R.TOPIC_FILTER_INVALID,
      "[MQTT-4.8.2-2]"),
    M("subscribe-v5-share-wildcard-name", 5, _sub(5, s("$share/g+/a"), b"\x00"),
      R.TOPIC_FILTER_INVALID, "[MQTT-4.8.2-1]"),
    M("subscribe-v5-two-subscription-identifiers", 5,
      pkt(0x82, u16(1), props(prop(0x0B, vbi(1)), prop(0x0B, vbi(2))), s("a"), b"\x00"),
      R.PROTOCOL_ERROR, "§3.8.2.1.2"),
    # SUBACK
    M("suback-v4-reserved-code", 4, pkt(0x90, u16(1), b"\x03"), R.PROTOCOL_ERROR,
      "[MQTT-3.9.3-2]"),
    M("suback-v5-bad-code", 5, pkt(0x90, u16(1), NO_PROPS, b"\x10"), R.PROTOCOL_ERROR,
      "[MQTT-3.9.3-2]"),
    *_both("suback-empty", lambda lv: pkt(0x90, u16(1), *((NO_PROPS,) if lv == 5 else ())),
           R.PROTOCOL_ERROR, "§3.9.3"),
    # UNSUBSCRIBE / UNSUBACK
    *_both("unsubscribe-empty",
           lambda lv: pkt(0xA2, u16(1), *((NO_PROPS,) if lv == 5 else ())),
           R.PROTOCOL_ERROR, "[MQTT-3.10.3-2]"),
    *_both("unsubscribe-bad-filter",
           lambda lv: pkt(0xA2, u16(1), *((NO_PROPS,) if lv == 5 else ()), s("a/#/b")),
           R.TOPIC_FILTER_INVALID, "[MQTT-4.7.1-2]", "[MQTT-4.7.1-1]"),
    *_both("unsubscribe-packet-id-0",
           lambda lv: pkt(0xA2, u16(0), *((NO_PROPS,) if lv == 5 else ()), s("a")),
           R.PROTOCOL_ERROR, "[MQTT-2.3.1-1]", "[MQTT-2.2.1-3]"),
    M("unsuback-v4-too-long", 4, pkt(0xB0, u16(1), b"\x00"), R.MALFORMED_PACKET, "§3.11.1"),
    M("unsuback-v5-bad-code", 5, pkt(0xB0, u16(1), NO_PROPS, b"\x01"), R.PROTOCOL_ERROR,
      "[MQTT-3.11.3-2]"),
    M("unsuback-v5-empty", 5, pkt(0xB0, u16(1), NO_PROPS), R.PROTOCOL_ERROR, "§3.11.3"),
    # PINGREQ / PINGRESP / DISCONNECT / AUTH
    *_both("pingreq-with-body", lambda lv: b"\xc0\x01\x00", R.MALFORMED_PACKET, "§3.12"),
    *_both("pingresp-with-body", lambda lv: b"\xd0\x01\x00", R.MALFORMED_PACKET, "§3.13"),
    M("disconnect-v4-with-body", 4, b"\xe0\x01\x00", R.MALFORMED_PACKET, "§3.14"),
    M("disconnect-v5-bad-reason", 5, b"\xe0\x01\x03", R.PROTOCOL_ERROR, "[MQTT-3.14.2-1]"),
    M("disconnect-v5-puback-reason", 5, b"\xe0\x01\x10", R.PROTOCOL_ERROR, "[MQTT-3.14.2-1]"),
    M("disconnect-v5-duplicate-session-expiry", 5,
      pkt(0xE0, b"\x00", props(prop(0x11, u32(1)), prop(0x11, u32(1)))), R.PROTOCOL_ERROR,
      "§3.1.2.11.2"),
    M("disconnect-v5-trailing-bytes", 5, pkt(0xE0, b"\x00", NO_PROPS, b"\x00"),
      R.MALFORMED_PACKET, "§3.14.2"),
    M("auth-v5-bad-reason", 5, pkt(0xF0, b"\x01", NO_PROPS), R.PROTOCOL_ERROR, "[MQTT-3.15.2-1]"),
    M("auth-v5-data-without-method", 5, pkt(0xF0, b"\x18", props(prop(0x16, s(b"x")))),
      R.PROTOCOL_ERROR, "§3.15.2.2.3"),
)

#: Cases by name, for other tests to pick from.
CASES_BY_NAME = {case.name: case for case in (*VALID_CASES, *MALFORMED_CASES)}
assert len(CASES_BY_NAME) == len(VALID_CASES) + len(MALFORMED_CASES), "case names must be unique"
