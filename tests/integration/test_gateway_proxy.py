"""PROXY protocol v2 on the device listener: the address a trusted proxy names reaches the access log and
aws:SourceIp; a header from anyone else is refused and logged; direct devices still connect."""

from __future__ import annotations

import ssl

import pytest

from gateway.mqtt import Connect, PacketType, encode
from gateway.proxy_protocol import build, build_local

from .conftest import RawClient, start_gateway

LAB_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/*",
     "Condition": {"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}}
  ]
}"""

TRUSTED = "127.0.0.1"
UNTRUSTED = "127.0.0.2"  # the rest of 127/8 is loopback too: a second local address that is not a proxy


@pytest.fixture(scope="module")
def proxied(fleet, broker):
    if "lab" not in {p.name for p in fleet.registry.list_policies()}:
        fleet.registry.create_policy("lab", LAB_POLICY)
    running = start_gateway(fleet, broker.config.url,
                            settings={"proxy_protocol": True, "trusted_proxies": (f"{TRUSTED}/32",)})
    yield running
    running.thread.stop()


def client(proxied, fleet, files, **kwargs) -> RawClient:
    proxied.sync(fleet.registry)
    return RawClient(proxied.port, files, root=fleet.store.paths.root_cert, **kwargs)


def connack(c: RawClient, client_id: str) -> int | None:
    c.send(encode(Connect(client_id, protocol_level=5), 5))
    packet = c.packet()
    assert packet is not None and packet.packet_type is PacketType.CONNACK
    return int(packet.reason_code)


def test_the_source_a_trusted_proxy_names_is_logged_and_decides_source_ip(proxied, fleet):
    thing, files, cert_id = fleet.device("lab", policies=("lab",))
    c = client(proxied, fleet, files, source=TRUSTED, prefix=build(("203.0.113.7", 51234), ("10.0.0.1", 8883)))
    assert connack(c, thing) == 0
    record = proxied.events.wait_for(event="connect", certificate_id=cert_id, decision="allowed")
    assert record["source"] == "203.0.113.7:51234"
    c.close()
    outside = client(proxied, fleet, files, source=TRUSTED, prefix=build(("198.51.100.1", 4000), ("10.0.0.1", 8883)))
    assert connack(outside, thing) == 0x87
    record = proxied.events.wait_for(event="connect", certificate_id=cert_id, decision="refused")
    assert record["source"] == "198.51.100.1:4000"
    outside.close()


def test_ipv6_source_reaches_the_log(proxied, fleet):
    thing, files, cert_id = fleet.device("lab6", policies=("room",))
    c = client(proxied, fleet, files, source=TRUSTED, prefix=build(("2001:db8::7", 1000), ("2001:db8::1", 8883)))
    assert connack(c, thing) == 0
    assert proxied.events.wait_for(event="connect", certificate_id=cert_id)["source"] == "[2001:db8::7]:1000"
    c.close()


def test_a_header_from_an_untrusted_address_is_refused_and_logged(proxied, fleet):
    thing, files, _ = fleet.device("spoof", policies=("lab",))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        c = client(proxied, fleet, files, source=UNTRUSTED, prefix=build(("203.0.113.9", 1), ("10.0.0.1", 8883)))
        connack(c, thing)
    record = proxied.events.wait_for(kind="proxy_untrusted")
    assert record["source"].startswith(UNTRUSTED + ":") and record["decision"] == "refused"


def test_a_direct_device_from_an_untrusted_address_connects_as_itself(proxied, fleet):
    thing, files, cert_id = fleet.device("direct", policies=("room",))
    c = client(proxied, fleet, files, source=UNTRUSTED)
    assert connack(c, thing) == 0
    assert proxied.events.wait_for(event="connect", certificate_id=cert_id)["source"].startswith(UNTRUSTED + ":")
    c.close()


def test_a_trusted_proxy_must_send_a_header(proxied, fleet):
    thing, files, _ = fleet.device("headerless", policies=("room",))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        c = client(proxied, fleet, files, source=TRUSTED)
        connack(c, thing)
    proxied.events.wait_for(kind="proxy_header_missing")


def test_a_local_header_is_the_proxy_itself(proxied, fleet):
    thing, files, cert_id = fleet.device("health", policies=("room",))
    c = client(proxied, fleet, files, source=TRUSTED, prefix=build_local())
    assert connack(c, thing) == 0
    assert proxied.events.wait_for(event="connect", certificate_id=cert_id)["source"].startswith(TRUSTED + ":")
    c.close()
