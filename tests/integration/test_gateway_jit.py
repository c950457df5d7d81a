"""Just-in-time registration (JITR) and provisioning (JITP) through the real gateway and Mosquitto: a device whose
certificate the registry has never seen, issued by a CA registered with auto-registration."""

from __future__ import annotations

import asyncio
import json
import queue

import paho.mqtt.client as mqtt
import pytest
import uvloop

from certs.authority import build_root_ca, cert_pem, certificate_id
from certs.keys import generate_private_key
from devices.client import ClientOptions, Reason
from devices.connectors import get_connector
from devices.identity import DeviceIdentity, make_key_and_csr, write_device_dir
from devices.transport import Endpoint
from gateway.mqtt import Connack, Connect, encode

WAIT = 5.0
NOT_AUTHORIZED_V311 = 0x05


class Operator:
    """A subscriber on the broker itself, with the gateway's own identity: sees what the gateway publishes."""

    def __init__(self, fleet, broker, topic: str) -> None:
        self.messages: queue.Queue = queue.Queue()
        paths = fleet.store.paths
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="operator-jit")
        self.client.tls_set(ca_certs=str(paths.root_cert), certfile=str(paths.client_cert),
                            keyfile=str(paths.client_key))
        subscribed = queue.Queue()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, json.loads(m.payload)))
        self.client.on_subscribe = lambda c, u, mid, codes, props: subscribed.put(codes)
        self.client.connect("localhost", broker.config.port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        codes = subscribed.get(timeout=WAIT)
        assert all(not c.is_failure for c in codes), codes

    def next(self) -> tuple[str, dict]:
        return self.messages.get(timeout=WAIT)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def auto_ca(fleet, gateway):
    """register(template_body=None) -> (CA authority, CA id): a new root CA with auto-registration."""
    made = []

    def register(template_body: str | None = None):
        authority = build_root_ca(generate_private_key("ec-p256"), f"JIT Root {len(made) + 1}", now=fleet.now)
        ca_id = certificate_id(authority.certificate)
        fleet.registry.register_ca(ca_id, cert_pem(authority.certificate).decode(),
                                   authority.certificate.subject.rfc4514_string())
        fleet.registry.set_ca_registration(ca_id, auto_registration=True, template_body_text=template_body)
        made.append(ca_id)
        gateway.sync(fleet.registry)
        return authority, ca_id

    yield register
    for ca_id in made:
        fleet.registry.set_ca_status(ca_id, "INACTIVE")


def device_of(fleet, authority, thing: str):
    key, csr = make_key_and_csr(thing)
    cert = authority.sign_device_csr(csr, thing, now=fleet.now)
    files = write_device_dir(fleet.store.paths.devices, thing, key, authority.pem_with_chain(cert),
                             fleet.store.root_pem())
    return files, certificate_id(cert)


def connack_of(raw, files, client_id: str) -> int | None:
    client = raw(files, level=4)
    client.send(encode(Connect(client_id=client_id, keep_alive=30), 4))
    packet = client.packet()
    return packet.reason_code if isinstance(packet, Connack) else None


def test_jitr_registers_pending_activation_publishes_the_event_and_refuses_until_activated(
        fleet, gateway, broker, raw, auto_ca):
    authority, ca_id = auto_ca()
    operator = Operator(fleet, broker, f"$aws/events/certificates/registered/{ca_id}")
    try:
        files, cid = device_of(fleet, authority, "jitr-0001")
        assert connack_of(raw, files, "jitr-0001") == NOT_AUTHORIZED_V311
        topic, event = operator.next()
        assert topic == f"$aws/events/certificates/registered/{ca_id}"
        assert set(event) == {"certificateId", "caCertificateId", "timestamp", "certificateStatus", "awsAccountId",
                              "certificateRegistrationTimestamp"}
        assert (event["certificateId"], event["caCertificateId"], event["certificateStatus"]) == (
            cid, ca_id, "PENDING_ACTIVATION")
        assert event["awsAccountId"] == gateway.gateway.config.account
        assert isinstance(event["timestamp"], int) and event["certificateRegistrationTimestamp"].isdigit()
        cert = fleet.registry.get_certificate(cid)
        assert (cert.status, cert.ca_id, cert.subject_cn) == ("PENDING_ACTIVATION", ca_id, "jitr-0001")
        logged = gateway.events.wait_for(event="jit", certificate_id=cid)
        assert logged["kind"] == "jitr" and logged["decision"] == "refused"
        gateway.events.wait_for(event="connect", certificate_id=cid, kind="certificate_pending_activation")

        # still pending: refused again, and the event again, with the same registration time
        gateway.sync(fleet.registry)
        assert connack_of(raw, files, "jitr-0001") == NOT_AUTHORIZED_V311
        _, again = operator.next()
        assert again["certificateRegistrationTimestamp"] == event["certificateRegistrationTimestamp"]
        assert again["timestamp"] >= event["timestamp"]

        # what an operator's program on the event does: activate, attach a thing and a policy
        fleet.registry.create_thing("jitr-0001")
        fleet.registry.attach_thing_principal("jitr-0001", cid)
        fleet.registry.attach_policy("room", cid)
        fleet.registry.set_certificate_status(cid, "ACTIVE")
        gateway.sync(fleet.registry)
        assert connack_of(raw, files, "jitr-0001") == 0
    finally:
        operator.close()


def test_a_ca_without_auto_registration_leaves_unknown_certificates_unregistered(fleet, gateway, raw, auto_ca):
    auto_ca()  # another CA registers automatically: this one's certificates must still not be registered
    authority = build_root_ca(generate_private_key("ec-p256"), "Plain Root", now=fleet.now)
    ca_id = certificate_id(authority.certificate)
    fleet.registry.register_ca(ca_id, cert_pem(authority.certificate).decode(), "CN=Plain Root")
    try:
        gateway.sync(fleet.registry)
        files, cid = device_of(fleet, authority, "plain-0001")
        assert connack_of(raw, files, "plain-0001") == NOT_AUTHORIZED_V311
        gateway.events.wait_for(event="connect", certificate_id=cid, kind="certificate_not_registered")
        assert fleet.registry.list_certificates(ca_id=ca_id) == []
        assert not gateway.events.find(event="jit", certificate_id=cid)
    finally:
        fleet.registry.set_ca_status(ca_id, "INACTIVE")


JITP_TEMPLATE = {
    "Parameters": {
        "AWS::IoT::Certificate::CommonName": {"Type": "String"},
        "AWS::IoT::Certificate::Id": {"Type": "String"},
    },
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"},
            "AttributePayload": {"certificate": {"Ref": "AWS::IoT::Certificate::Id"}, "batch": "b1"}}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "room"}},
        "own": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Publish",
                                                    "Resource": "arn:aws:iot:*:*:topic/jitp/*"}]})}},
    },
}


def test_jitp_provisions_from_the_cas_template_drops_the_first_connection_and_serves_the_next(
        fleet, gateway, auto_ca):
    """The AWS IoT Device SDK (MQTT 3.1.1 and 5, unchanged) as the device: refused once, then in."""
    authority, ca_id = auto_ca(json.dumps(JITP_TEMPLATE))
    for level in (4, 5):
        thing = f"jitp-000{level}"
        files, cid = device_of(fleet, authority, thing)
        identity = DeviceIdentity.load(files.directory)
        link = get_connector("awsiotsdk").link(identity, Endpoint("localhost", gateway.port), client_id=thing,
                                               options=ClientOptions(protocol_level=level, keep_alive=30,
                                                                     connect_timeout=WAIT))

        async def attempts():
            first = await link.connect()
            gateway.sync(fleet.registry)
            second = await link.connect()
            published = await link.publish(f"jitp/{thing}", b"hello", qos=1) if second.ok else None
            await link.disconnect()
            return first, second, published

        first, second, published = uvloop.run(asyncio.wait_for(attempts(), 20))
        assert not first.ok and first.reason in (Reason.REFUSED, Reason.CLOSED), first
        logged = gateway.events.wait_for(event="jit", certificate_id=cid)
        assert logged["kind"] == "jitp" and logged["thing"] == thing
        assert second.ok, second
        assert published is not None and published.ok, published  # allowed by the policy the template created
        cert = fleet.registry.get_certificate(cid)
        assert (cert.status, cert.ca_id) == ("ACTIVE", ca_id)
        t = fleet.registry.get_thing(thing)
        assert t.attributes == {"certificate": cid, "batch": "b1"}
        attached = [p.name for p in fleet.registry.list_attached_policies(cid)]
        assert "room" in attached and len(attached) == 2
        assert fleet.registry.list_principal_things(cid) == [thing]


def test_jitp_with_a_template_the_certificate_cannot_satisfy_leaves_it_pending(fleet, gateway, raw, auto_ca):
    body = json.loads(json.dumps(JITP_TEMPLATE))
    body["Parameters"]["AWS::IoT::Certificate::Country"] = {"Type": "String"}  # the subject has no C=
    body["Resources"]["thing"]["Properties"]["ThingName"] = {
        "Fn::Join": ["-", [{"Ref": "AWS::IoT::Certificate::Country"}, {"Ref": "AWS::IoT::Certificate::CommonName"}]]}
    authority, _ = auto_ca(json.dumps(body))
    files, cid = device_of(fleet, authority, "jitp-bad-1")
    assert connack_of(raw, files, "jitp-bad-1") == NOT_AUTHORIZED_V311
    logged = gateway.events.wait_for(event="jit", certificate_id=cid)
    assert logged["kind"] == "jitp_failed"
    assert "Parameters.AWS::IoT::Certificate::Country: no value given" in logged["reason"]
    assert fleet.registry.get_certificate(cid).status == "PENDING_ACTIVATION"
