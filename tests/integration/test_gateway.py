"""The gateway end to end: real TLS, a real Mosquitto upstream, paho-mqtt devices (MQTT 3.1.1 and 5.0), each
with its own provisioned identity. Message exchange first, then every refusal AWS IoT Core would give."""

from __future__ import annotations

import time

import pytest

from gateway.mqtt import Connect, Disconnect, PacketType, Publish, ReasonCode, Subscribe, Subscription, Will, encode

V5_NOT_AUTHORIZED = 0x87
PAHO_V3 = {"not_authorized": 135, "server_unavailable": 136}  # paho maps 3.1.1 return codes to MQTT 5 names


@pytest.fixture
def pair(fleet):
    """Two devices allowed to talk in room/*."""
    return fleet.device("alice"), fleet.device("bob")


# --------------------------------------------------------------------------------------------- exchange

@pytest.mark.parametrize("sub_version,pub_version", [(5, 4), (4, 5)])
def test_two_devices_exchange_qos0_and_qos1(gateway, devices, pair, sub_version, pub_version):
    (alice, alice_files, _), (bob, bob_files, _) = pair
    sub = devices(alice_files, alice, version=sub_version)
    pub = devices(bob_files, bob, version=pub_version)
    assert sub.connect() == 0
    assert pub.connect() == 0
    assert sub.subscribe("room/+", qos=1) == [1]

    pub.publish("room/a", b"qos0", qos=0)
    assert pub.publish("room/b", b"qos1", qos=1) == 0  # acknowledged after the broker acknowledged it
    first, second = sub.message(), sub.message()
    assert (first.topic, first.payload, first.qos) == ("room/a", b"qos0", 0)
    assert (second.topic, second.payload, second.qos) == ("room/b", b"qos1", 1)

    connect = gateway.events.wait_for(event="connect", client_id=alice, decision="allowed")
    assert connect["certificate_id"] and connect["thing"] == alice
    assert connect["statement"] == "room/v1/Statement[0]/Allow"
    assert connect["sni"] == "localhost" and connect["tls"] in ("TLSv1.2", "TLSv1.3")


def test_connack_carries_aws_limits(gateway, devices, pair):
    (alice, files, _), _ = pair
    device = devices(files, alice, version=5, keepalive=5)
    assert device.connect() == 0
    props = device.connack_properties
    assert props.MaximumQoS == 1
    assert props.TopicAliasMaximum == 8
    assert props.RetainAvailable == 1
    assert props.SubscriptionIdentifierAvailable == 0
    assert props.ServerKeepAlive == 30  # keepalive is clamped to 30..1200 s, as AWS IoT does
    assert props.MaximumPacketSize <= gateway.gateway.config.limits.max_packet_size


def test_retained_message_reaches_exact_filters_only(gateway, devices, fleet):
    (pub_id, pub_files, _) = fleet.device("retainer")
    (exact_id, exact_files, _) = fleet.device("exact")
    (wild_id, wild_files, _) = fleet.device("wild")
    pub = devices(pub_files, pub_id, version=4)
    assert pub.connect() == 0
    assert pub.publish("room/state", b"on", qos=1, retain=True) == 0

    exact = devices(exact_files, exact_id, version=5)
    wild = devices(wild_files, wild_id, version=5)
    assert exact.connect() == 0 and wild.connect() == 0
    assert wild.subscribe("room/#") == [1]
    assert exact.subscribe("room/state") == [1]
    message = exact.message()
    assert (message.topic, message.payload, message.retain) == ("room/state", b"on", True)
    # AWS IoT: a filter with a wildcard never receives retained messages; live ones it does.
    assert pub.publish("room/state", b"live", qos=1) == 0
    assert exact.message().payload == b"live"
    live = wild.message()
    assert (live.topic, live.payload) == ("room/state", b"live")
    assert pub.publish("room/state", b"", qos=1, retain=True) == 0  # clears the retained message


def test_hash_filter_does_not_match_its_parent(gateway, devices, pair):
    (alice, alice_files, _), (bob, bob_files, _) = pair
    sub = devices(alice_files, alice)
    pub = devices(bob_files, bob)
    assert sub.connect() == 0 and pub.connect() == 0
    assert sub.subscribe("room/#") == [1]
    assert pub.publish("room", b"parent", qos=1) == 0
    assert pub.publish("room/child", b"child", qos=1) == 0
    # Messages of one publisher arrive in order: the parent would have come first.
    assert sub.message().payload == b"child"
    assert sub.no_message()


def test_receive_denied_delivery_is_dropped_and_acknowledged(gateway, devices, pair):
    (alice, alice_files, _), (bob, bob_files, _) = pair
    sub = devices(alice_files, alice)
    pub = devices(bob_files, bob)
    assert sub.connect() == 0 and pub.connect() == 0
    assert sub.subscribe("room/+") == [1]
    for _ in range(3):  # more than one: the broker's inflight window must not stall on the dropped ones
        assert pub.publish("room/secret", b"hidden", qos=1) == 0
    assert pub.publish("room/open", b"visible", qos=1) == 0
    assert sub.message().payload == b"visible"
    record = gateway.events.wait_for(event="receive", client_id=alice, decision="denied")
    assert record["resource"] == "topic/room/secret"
    assert record["statement"] == "room/v1/Statement[3]/Deny"


def test_will_is_published_when_a_device_vanishes(gateway, devices, raw, fleet, pair):
    (alice, alice_files, _), (bob, bob_files, _) = pair
    watcher = devices(alice_files, alice)
    assert watcher.connect() == 0
    assert watcher.subscribe("room/will") == [1]
    client = raw(bob_files, level=4)
    client.send(encode(Connect(bob, protocol_level=4, will=Will("room/will", b"bob is gone", qos=1)), 4))
    assert client.packet().reason_code == 0
    client.close()  # no DISCONNECT: an unclean end
    message = watcher.message()
    assert (message.topic, message.payload) == ("room/will", b"bob is gone")


def test_will_outside_policy_is_dropped(gateway, devices, raw, fleet, pair):
    (alice, alice_files, _), (bob, bob_files, _) = pair
    watcher = devices(alice_files, alice)
    assert watcher.connect() == 0 and watcher.subscribe("room/#") == [1]
    client = raw(bob_files, level=5)
    client.send(encode(Connect(bob, protocol_level=5, will=Will("elsewhere/will", b"x")), 5))
    assert client.packet().reason_code == 0  # AWS IoT accepts the connection and drops the will
    record = gateway.events.wait_for(event="will", client_id=bob)
    assert record["decision"] == "denied" and record["resource"] == "topic/elsewhere/will"
    client.close()


# --------------------------------------------------------------------------------------------- authentication refusals

def test_no_client_certificate_is_refused_in_the_handshake(gateway, raw):
    client = raw(None)
    client.send(encode(Connect("anyone"), 4))
    assert client.packet() is None
    gateway.events.wait_for(event="tls", kind="no_client_certificate", decision="refused")


def test_certificate_from_a_foreign_ca_is_refused(gateway, raw, fleet, foreign_ca):
    thing, files, _ = fleet.device("foreign", issuer=foreign_ca, register=False)
    client = raw(files)
    client.send(encode(Connect(thing), 4))
    assert client.packet() is None
    record = gateway.events.wait_for(event="tls", kind="certificate_verify_failed")
    assert "unable to get local issuer certificate" in record["reason"]


@pytest.mark.parametrize("version", [5, 4])
@pytest.mark.parametrize("status,kind", [("REVOKED", "certificate_revoked"), ("INACTIVE", "certificate_inactive")])
def test_certificate_not_active_is_refused(gateway, devices, fleet, status, kind, version):
    thing, files, cert_id = fleet.device("bad", status=status)
    device = devices(files, thing, version=version)
    assert device.connect() == (V5_NOT_AUTHORIZED if version == 5 else PAHO_V3["not_authorized"])
    record = gateway.events.wait_for(event="connect", certificate_id=cert_id, decision="refused")
    assert record["kind"] == kind and record["client_id"] == thing


def test_unregistered_certificate_from_our_ca_is_refused(gateway, raw, fleet):
    thing, files, _ = fleet.device("stranger", register=False)
    client = raw(files, level=4)
    client.send(encode(Connect(thing, protocol_level=4), 4))
    connack = client.packet()
    assert connack.packet_type is PacketType.CONNACK and connack.reason_code == 0x05  # 3.1.1: not authorized
    assert client.closed()
    record = gateway.events.wait_for(event="connect", client_id=thing, decision="refused")
    assert record["kind"] == "certificate_not_registered" and len(record["certificate_id"]) == 64


def test_inactive_ca_refuses_its_certificates(gateway, devices, fleet, foreign_ca, wait):
    # A second, registered CA: its devices connect; deactivated, they are refused after the handshake, by id.
    from certs.authority import cert_pem

    ca = foreign_ca
    if ca.ca_id not in fleet.registry.snapshot().cas:
        fleet.registry.register_ca(ca.ca_id, cert_pem(ca.certificate).decode(), ca.certificate.subject.rfc4514_string())
    thing, files, cert_id = fleet.device("partner", issuer=ca)
    wait(lambda: gateway.call(lambda: ca.ca_id in gateway.gateway.view.ca_set))  # trust store rebuilt
    device = devices(files, thing)
    assert device.connect() == 0
    device.close()
    rebuilds = gateway.gateway.metrics.tls_context_rebuilds
    fleet.registry.set_ca_status(ca.ca_id, "INACTIVE")
    try:
        wait(lambda: gateway.call(lambda: gateway.gateway.view.cas.get(ca.ca_id) == "INACTIVE"))
        assert gateway.gateway.metrics.tls_context_rebuilds == rebuilds  # same CA set: the same SSLContext
        again = devices(files, thing)
        assert again.connect() == V5_NOT_AUTHORIZED
        record = gateway.events.wait_for(event="connect", certificate_id=cert_id, kind="ca_not_active")
        assert ca.ca_id in record["reason"]
    finally:
        fleet.registry.set_ca_status(ca.ca_id, "ACTIVE")


# --------------------------------------------------------------------------------------------- authorization refusals

@pytest.mark.parametrize("version", [5, 4])
def test_another_devices_client_id_is_refused(gateway, devices, pair, version):
    (alice, alice_files, _), (bob, _, _) = pair
    device = devices(alice_files, bob, version=version)
    assert device.connect() == (V5_NOT_AUTHORIZED if version == 5 else PAHO_V3["not_authorized"])
    record = gateway.events.wait_for(event="connect", client_id=bob, decision="refused")
    assert record["kind"] == "connect_denied" and record["thing"] == alice
    assert record["reason"] == "no policy statement allows it"


def test_publish_outside_policy_v5_gets_puback_0x87_and_stays(gateway, devices, pair):
    (alice, files, _), _ = pair
    device = devices(files, alice, version=5)
    assert device.connect() == 0
    assert device.publish("dt/someone-else/t", b"x", qos=1) == V5_NOT_AUTHORIZED
    assert device.publish(f"dt/{alice}/t", b"x", qos=1) == 0  # still connected, still allowed
    record = gateway.events.wait_for(event="publish", client_id=alice, decision="denied")
    assert record["action"] == "iot:Publish" and record["resource"] == "topic/dt/someone-else/t"


def test_publish_outside_policy_v3_closes_the_connection(gateway, devices, pair):
    (alice, files, _), _ = pair
    device = devices(files, alice, version=4)
    assert device.connect() == 0
    device.publish_nowait("dt/someone-else/t", b"x", qos=1)
    device.wait_disconnect()
    gateway.events.wait_for(event="publish", client_id=alice, decision="denied", kind="publish_denied")


@pytest.mark.parametrize("version,failure", [(5, 0x87), (4, 0x80)])
def test_hash_subscription_is_refused_per_filter(gateway, devices, pair, version, failure):
    (alice, files, _), _ = pair
    device = devices(files, alice, version=version)
    assert device.connect() == 0
    assert device.subscribe("#") == [failure]
    assert device.subscribe_many([("room/+", 1), ("#", 0), ("room/x", 0)]) == [1, failure, 0]
    record = gateway.events.wait_for(event="subscribe", client_id=alice, resource="topicfilter/#")
    assert record["decision"] == "denied"


def test_qos2_is_downgraded_on_subscribe_and_refused_on_publish(gateway, devices, raw, pair):
    (alice, files, _), _ = pair
    device = devices(files, alice, version=5)
    assert device.connect() == 0
    assert device.subscribe("room/q2", qos=2) == [1]
    device.close()
    client = raw(files, level=5)
    client.send(encode(Connect(alice, protocol_level=5), 5))
    assert client.packet().reason_code == 0
    client.send(encode(Publish("room/q2", b"x", qos=2, packet_id=7), 5))
    disconnect = client.packet()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == ReasonCode.QOS_NOT_SUPPORTED


def test_aws_topics_no_service_answers_are_refused(gateway, devices, pair):
    (alice, files, _), _ = pair
    device = devices(files, alice, version=5)
    assert device.connect() == 0
    # Even where the policy allows them: a reply topic is the services' to publish, and `$aws/rules/...` (Basic
    # Ingest) is not served; `$SYS` is the broker's own.
    assert device.publish("$aws/things/x/shadow/get/accepted", b"{}", qos=1) == 0x87
    gateway.events.wait_for(event="publish", client_id=alice, kind="reserved_topic")
    assert device.publish("$aws/rules/r1/t", b"{}", qos=1) == 0x87
    assert device.subscribe("$SYS/#") == [0x87]
    # A request topic the policy allows is answered (not refused), a reply filter it allows is granted.
    assert device.subscribe("$aws/things/x/shadow/get/accepted") == [1]
    assert device.publish("$aws/things/x/shadow/get", b"{}", qos=1) == 0


# --------------------------------------------------------------------------------------------- session lifecycle

def test_duplicate_client_id_takes_over_the_older_session(gateway, devices, fleet):
    thing, files, _ = fleet.device("twin")
    old = devices(files, thing, version=5)
    assert old.connect() == 0
    assert old.subscribe("room/twin") == [1]
    new = devices(files, thing, version=4)
    assert new.connect() == 0
    assert old.wait_disconnect() == ReasonCode.SESSION_TAKEN_OVER
    gateway.events.wait_for(event="disconnect", client_id=thing, kind="session_taken_over")
    assert new.publish("room/twin", b"still here", qos=1) == 0


def test_revoking_a_live_certificate_disconnects_within_one_second(gateway, devices, fleet):
    thing, files, cert_id = fleet.device("revokee")
    device = devices(files, thing, version=5)
    assert device.connect() == 0
    started = time.monotonic()
    fleet.registry.set_certificate_status(cert_id, "REVOKED")
    assert device.wait_disconnect(timeout=2) == ReasonCode.ADMINISTRATIVE_ACTION
    assert time.monotonic() - started < 1.0
    record = gateway.events.wait_for(event="disconnect", certificate_id=cert_id)
    assert record["kind"] == "certificate_revoked" and record["code"] == 0x98


def test_deactivating_a_live_certificate_disconnects_v3(gateway, devices, fleet):
    thing, files, cert_id = fleet.device("sleeper")
    device = devices(files, thing, version=4)
    assert device.connect() == 0
    fleet.registry.set_certificate_status(cert_id, "INACTIVE")
    device.wait_disconnect(timeout=2)
    gateway.events.wait_for(event="disconnect", certificate_id=cert_id, kind="certificate_inactive")


def test_detached_policy_applies_to_the_live_session(gateway, devices, fleet, wait):
    thing, files, cert_id = fleet.device("shrinking", policies=("room", "extra"))
    device = devices(files, thing, version=5)
    assert device.connect() == 0
    assert device.publish("extra/a", b"x", qos=1) == 0
    fleet.registry.detach_policy("extra", cert_id)
    wait(lambda: device.publish("extra/a", b"x", qos=1) == V5_NOT_AUTHORIZED, timeout=1.0, interval=0.02)
    assert device.publish("room/a", b"x", qos=1) == 0  # the session stays: its Connect is still allowed
    fleet.registry.detach_policy("room", cert_id)  # now nothing allows iot:Connect for it
    assert device.wait_disconnect(timeout=2) == V5_NOT_AUTHORIZED
    gateway.events.wait_for(event="disconnect", certificate_id=cert_id, kind="connect_denied")


def test_connection_without_sni_is_accepted_and_logged(gateway, raw, fleet, pair):
    (alice, files, _), _ = pair
    client = raw(files, server_name=None)
    client.send(encode(Connect(alice, protocol_level=5), 5))
    assert client.packet().reason_code == 0
    client.send(encode(Disconnect(), 5))
    record = gateway.events.wait_for(event="connect", client_id=alice, sni=None, decision="allowed")
    assert record["tls"]


def test_clean_disconnect_skips_the_will(gateway, devices, raw, pair):
    (alice, alice_files, _), (bob, bob_files, _) = pair
    watcher = devices(alice_files, alice)
    assert watcher.connect() == 0 and watcher.subscribe("room/will2") == [1]
    client = raw(bob_files, level=5)
    client.send(encode(Connect(bob, protocol_level=5, will=Will("room/will2", b"gone")), 5))
    assert client.packet().reason_code == 0
    client.send(encode(Disconnect(), 5))
    assert client.closed()
    gateway.events.wait_for(event="disconnect", client_id=bob, kind="disconnect")
    # a message published after the clean disconnect arrives alone: no will before it
    probe = devices(bob_files, bob)
    assert probe.connect() == 0 and probe.publish("room/will2", b"probe", qos=1) == 0
    assert watcher.message().payload == b"probe"


def test_stats_count_accepted_and_refused(gateway, devices, fleet, pair):
    (alice, files, _), _ = pair
    device = devices(files, alice)
    assert device.connect() == 0
    stats = gateway.call(gateway.gateway.stats)
    assert stats["connections"]["accepted"] >= 1
    assert stats["sessions_active"] >= 1
    assert "listen" in stats and "upstream" in stats


def test_subscription_table_is_bounded(gateway, devices, pair):
    (alice, files, _), _ = pair
    device = devices(files, alice, version=5)
    assert device.connect() == 0
    limit = gateway.gateway.config.limits.max_subscriptions
    for i in range(0, limit, 8):
        codes = device.subscribe_many([(f"room/s{j}", 0) for j in range(i, min(i + 8, limit))])
        assert codes == [0] * len(codes)
    assert device.subscribe("room/one-too-many") == [ReasonCode.QUOTA_EXCEEDED]
    # nine filters in one SUBSCRIBE: the ninth is refused (AWS: 8 per SUBSCRIBE)
    assert device.subscribe_many([(f"room/s{j}", 0) for j in range(9)])[-1] == ReasonCode.QUOTA_EXCEEDED


def test_unsubscribe_is_forwarded(gateway, devices, pair):
    (alice, alice_files, _), (bob, bob_files, _) = pair
    sub = devices(alice_files, alice)
    pub = devices(bob_files, bob)
    assert sub.connect() == 0 and pub.connect() == 0
    assert sub.subscribe("room/u") == [1]
    sub.client.unsubscribe("room/u")
    assert sub.subscribe("room/v") == [1]  # after the UNSUBACK (same connection, in order)
    assert pub.publish("room/u", b"u", qos=1) == 0
    assert pub.publish("room/v", b"v", qos=1) == 0
    assert sub.message().payload == b"v"


def test_v5_subscribe_with_subscription_identifier_is_refused(gateway, raw, pair):
    from gateway.mqtt import Properties

    (alice, files, _), _ = pair
    client = raw(files, level=5)
    client.send(encode(Connect(alice, protocol_level=5), 5))
    assert client.packet().reason_code == 0
    client.send(encode(Subscribe(1, (Subscription("room/x", 0),), Properties(subscription_identifiers=(4,))), 5))
    packet = client.packet()
    assert isinstance(packet, Disconnect) and packet.reason_code == ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED
