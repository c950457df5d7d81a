"""Fleet provisioning by claim through the real gateway: the AWS IoT Device SDK's own IotIdentityClient, unchanged,
with a claim certificate; CreateCertificateFromCsr, CreateKeysAndCertificate, RegisterThing; tokens, the hook."""

from __future__ import annotations

import datetime as dt
import json
import queue
import sys

import orjson
import paho.mqtt.client as mqtt
import pytest

from devices.fleet_claim import ClaimError, provision_by_claim
from gateway.mqtt import Connack, Connect, encode
from gateway.registry.errors import AlreadyExists
from gateway.services.base import Caller, Request
from gateway.services.provisioning import ProvisioningService
from gateway.services.store import ServiceStore

WAIT = 5.0

CLAIM_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/*"},
    {"Effect": "Allow", "Action": "iot:Publish", "Resource": [
        "arn:aws:iot:*:*:topic/$aws/certificates/create/json",
        "arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/json",
        "arn:aws:iot:*:*:topic/$aws/provisioning-templates/fleet/provision/json"]},
    {"Effect": "Allow", "Action": ["iot:Receive"], "Resource": [
        "arn:aws:iot:*:*:topic/$aws/certificates/create/json/*",
        "arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/json/*",
        "arn:aws:iot:*:*:topic/$aws/provisioning-templates/fleet/provision/json/*"]},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": [
        "arn:aws:iot:*:*:topicfilter/$aws/certificates/create/json/*",
        "arn:aws:iot:*:*:topicfilter/$aws/certificates/create-from-csr/json/*",
        "arn:aws:iot:*:*:topicfilter/$aws/provisioning-templates/fleet/provision/json/*"]}]})

TEMPLATE = json.dumps({
    "Parameters": {"SerialNumber": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Fn::Join": ["", ["sensor-", {"Ref": "SerialNumber"}]]},
            "AttributePayload": {"serial": {"Ref": "SerialNumber"}}}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "room"}}},
    "DeviceConfiguration": {"telemetryTopic": {"Fn::Sub": "dt/sensor-${SerialNumber}/t"}}})


@pytest.fixture(scope="module")
def claim(fleet, gateway):
    for make in (lambda: fleet.registry.create_policy("fleet-claim", CLAIM_POLICY),
                 lambda: fleet.registry.create_provisioning_template("fleet", TEMPLATE)):
        try:
            make()
        except AlreadyExists:
            pass
    thing, files, _ = fleet.device("claim", policies=("fleet-claim",))
    gateway.sync(fleet.registry)
    return files


def onboard(fleet, gateway, claim, serial: str, *, own_key: bool = True, client_id: str | None = None):
    return provision_by_claim(endpoint="localhost", port=gateway.port, ca_file=str(fleet.store.paths.root_cert),
                              claim_cert=str(claim.cert), claim_key=str(claim.key), template="fleet",
                              parameters={"SerialNumber": serial}, devices_dir=fleet.store.paths.devices / "claimed",
                              client_id=client_id or f"claim-{serial}", own_key=own_key)


def connack(raw, directory, client_id) -> int | None:
    from devices.identity import DeviceFiles

    client = raw(DeviceFiles(directory), level=4)
    client.send(encode(Connect(client_id=client_id, keep_alive=30), 4))
    packet = client.packet()
    return packet.reason_code if isinstance(packet, Connack) else None


@pytest.mark.parametrize("own_key", [True, False], ids=["create-from-csr", "create-keys-and-certificate"])
def test_a_device_onboards_from_the_claim_certificate_and_connects_with_its_own(fleet, gateway, claim, raw, own_key):
    serial = "1001" if own_key else "1002"
    done = onboard(fleet, gateway, claim, serial, own_key=own_key)
    assert done.thing == f"sensor-{serial}"
    assert dict(done.device_configuration) == {"telemetryTopic": f"dt/sensor-{serial}/t"}
    cert = fleet.registry.get_certificate(done.certificate_id)
    assert cert.status == "ACTIVE"
    assert fleet.registry.get_thing(done.thing).attributes == {"serial": serial}
    assert [p.name for p in fleet.registry.list_attached_policies(done.certificate_id)] == ["room"]
    assert (done.directory / "device.key").stat().st_mode & 0o777 == 0o600
    gateway.sync(fleet.registry)
    assert connack(raw, done.directory, done.thing) == 0


def test_replies_reach_only_the_connection_that_asked(fleet, gateway, claim):
    """Every device of a batch shares the claim certificate: a private key must not reach another one."""
    other = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="claim-listener")
    other.tls_set(ca_certs=str(claim.root_ca), certfile=str(claim.cert), keyfile=str(claim.key))
    got: queue.Queue = queue.Queue()
    subscribed: queue.Queue = queue.Queue()
    other.on_message = lambda c, u, m: got.put(orjson.loads(m.payload))
    other.on_subscribe = lambda c, u, mid, codes, props: subscribed.put(codes)
    other.connect("localhost", gateway.port)
    other.loop_start()
    try:
        other.subscribe("$aws/certificates/create/json/accepted", qos=1)
        assert not subscribed.get(timeout=WAIT)[0].is_failure
        first = onboard(fleet, gateway, claim, "2001", own_key=False)
        other.publish("$aws/certificates/create/json", b"{}", qos=1)
        mine = got.get(timeout=WAIT)
        assert mine["certificateId"] != first.certificate_id and "privateKey" in mine
        assert got.empty()
    finally:
        other.loop_stop()
        other.disconnect()


def test_a_template_without_the_claim_policys_topics_is_refused_by_the_policy(fleet, gateway, claim):
    with pytest.raises(ClaimError, match="subscription to .*other.*refused|no answer"):
        provision_by_claim(endpoint="localhost", port=gateway.port, ca_file=str(fleet.store.paths.root_cert),
                           claim_cert=str(claim.cert), claim_key=str(claim.key), template="other",
                           parameters={"SerialNumber": "9"}, devices_dir=fleet.store.paths.devices / "claimed",
                           client_id="claim-other", timeout=2.0)


# ------------------------------------------------------------------ the service's rules, request by request


@pytest.fixture
def service(fleet, claim):
    answers = {"allow": True}

    def hook(target, event):
        from gateway.services.provisioning import HookAnswer

        answers["event"] = event
        return HookAnswer(answers["allow"], {"SerialNumber": "from-hook"} if answers["allow"] else {})

    try:
        fleet.registry.create_provisioning_template("hooked", TEMPLATE, pre_provisioning_hook={
            "targetArn": "the-hook", "payloadVersion": "2020-04-01"})
    except AlreadyExists:
        pass
    svc = ProvisioningService(fleet.registry, ServiceStore.of(fleet.registry), fleet.store.load_issuer, hook=hook)
    svc.answers = answers
    return svc


def call(service, topic, body, now):
    caller = Caller("claim-x", "claimcert", None, "127.0.0.1", 7)
    (message,) = service.handle(Request(caller, topic, orjson.dumps(body), now.timestamp()))
    assert message.to == 7
    return message.topic.rsplit("/", 1)[1], orjson.loads(message.payload)


def test_tokens_expire_after_an_hour_and_are_used_once(service, fleet):
    now = dt.datetime.now(dt.UTC)
    kind, created = call(service, "$aws/certificates/create/json", {}, now)
    assert kind == "accepted" and set(created) == {"certificateId", "certificatePem", "privateKey",
                                                    "certificateOwnershipToken"}
    assert fleet.registry.get_certificate(created["certificateId"]).status == "PENDING_ACTIVATION"
    provision = "$aws/provisioning-templates/hooked/provision/json"
    request = {"certificateOwnershipToken": created["certificateOwnershipToken"], "parameters": {"SerialNumber": "x"}}
    kind, err = call(service, provision, request, now + dt.timedelta(hours=1, seconds=1))
    assert (kind, err["statusCode"], err["errorCode"]) == ("rejected", 400, "InvalidCertificateOwnershipToken")
    assert "expired" in err["errorMessage"]

    kind, created = call(service, "$aws/certificates/create/json", {}, now)
    request["certificateOwnershipToken"] = created["certificateOwnershipToken"]
    kind, ok = call(service, provision, request, now + dt.timedelta(minutes=59))
    assert kind == "accepted" and ok["thingName"] == "sensor-from-hook"  # the hook's parameterOverrides won
    kind, err = call(service, provision, request, now + dt.timedelta(minutes=59))
    assert (kind, err["errorCode"]) == ("rejected", "InvalidCertificateOwnershipToken")


def test_bad_requests_are_rejected_with_aws_shaped_errors(service):
    now = dt.datetime.now(dt.UTC)
    kind, err = call(service, "$aws/certificates/create-from-csr/json", {"certificateSigningRequest": "nope"}, now)
    assert (kind, err["statusCode"], err["errorCode"]) == ("rejected", 400, "InvalidCsr")
    kind, err = call(service, "$aws/provisioning-templates/missing/provision/json",
                     {"certificateOwnershipToken": "t"}, now)
    assert (kind, err["statusCode"], err["errorCode"]) == ("rejected", 404, "ResourceNotFound")
    kind, err = call(service, "$aws/provisioning-templates/fleet/provision/json", {"parameters": {}}, now)
    assert (kind, err["errorCode"]) == ("rejected", "InvalidPayload")


def test_a_hook_that_refuses_stops_provisioning_and_leaves_the_token_usable(service, fleet):
    now = dt.datetime.now(dt.UTC)
    _, created = call(service, "$aws/certificates/create/json", {}, now)
    request = {"certificateOwnershipToken": created["certificateOwnershipToken"], "parameters": {"SerialNumber": "7"}}
    service.answers["allow"] = False
    kind, err = call(service, "$aws/provisioning-templates/hooked/provision/json", request, now)
    assert (kind, err["statusCode"], err["errorCode"]) == ("rejected", 403, "AccessDenied")
    assert service.answers["event"]["certificateId"] == created["certificateId"]
    assert fleet.registry.get_certificate(created["certificateId"]).status == "PENDING_ACTIVATION"
    service.answers["allow"] = True
    kind, _ = call(service, "$aws/provisioning-templates/hooked/provision/json", request, now)
    assert kind == "accepted"


def test_a_hook_command_answers_as_a_lambda(tmp_path):
    from gateway.services.provisioning import Rejected, run_hook

    script = tmp_path / "hook.py"
    script.write_text("import json, sys\nevent = json.load(sys.stdin)\n"
                      "print(json.dumps({'allowProvisioning': event['parameters']['SerialNumber'] != 'bad',"
                      " 'parameterOverrides': {'Site': 'lyon'}}))\n")
    answer = run_hook(f"{sys.executable} {script}", {"parameters": {"SerialNumber": "1"}})
    assert answer.allow and answer.overrides == {"Site": "lyon"}
    assert not run_hook(f"{sys.executable} {script}", {"parameters": {"SerialNumber": "bad"}}).allow
    with pytest.raises(Rejected, match="exited with"):
        run_hook(f"{sys.executable} -c 'raise SystemExit(3)'", {})


def test_fleet_provision_by_claim_onboards_devices_through_the_gateway(fleet, gateway, claim, capsys):
    from iotgate.cli import main

    args = ["--home", str(fleet.home), "fleet", "provision", "--by-claim", "--count", "2", "--prefix", "clm-",
            "--start", "7", "--claim-cert", str(claim.cert), "--claim-key", str(claim.key), "--template", "fleet",
            "--param", "SerialNumber=3{n}", "--endpoint", f"localhost:{gateway.port}", "--json"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    rows = json.loads(out.out)
    assert [r["thingName"] for r in rows] == ["sensor-300007", "sensor-300008"]
    for row in rows:
        assert fleet.registry.get_certificate(row["certificateId"]).status == "ACTIVE"
        assert (fleet.store.paths.devices / row["thingName"] / "device.pem").is_file()

    with pytest.raises(SystemExit) as refused:
        main(["--home", str(fleet.home), "fleet", "provision", "--by-claim", "--count", "1", "--policy", "room",
              "--claim-cert", str(claim.cert), "--claim-key", str(claim.key), "--template", "fleet"])
    assert refused.value.code == 2 and "--policy does not apply to --by-claim" in capsys.readouterr().err
