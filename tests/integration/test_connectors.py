"""Every connector against the real stack (gateway on an ephemeral port, Mosquitto upstream, real mTLS): the same
exchange and the same refusals, reported in the same result types whichever client library ran them.

Levels: native, paho and aiomqtt speak MQTT 3.1.1 and 5.0; so does the awsiotsdk connector (mqtt_connection_builder, mqtt5_client_builder). Nothing sleeps
to wait: every wait is on an event (a CONNACK, a message, a closed link) under a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import pytest
import uvloop

from devices.client import ClientOptions, DisconnectNotice, Reason
from devices.connectors import DeviceLink, get_connector
from devices.identity import DeviceFiles, DeviceIdentity
from devices.transport import Endpoint
from gateway.registry.errors import AlreadyExists

WAIT = 5.0

# A device listens on cmd/<thing>; any device of the fleet may send to cmd/*; telemetry goes to dt/<thing>/*.
CMD_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Subscribe",
     "Resource": "arn:aws:iot:*:*:topicfilter/cmd/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Receive",
     "Resource": "arn:aws:iot:*:*:topic/cmd/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Publish",
     "Resource": ["arn:aws:iot:*:*:topic/cmd/*", "arn:aws:iot:*:*:topic/dt/${iot:Connection.Thing.ThingName}/*"]}
  ]
}"""

CASES = [
    pytest.param("native", 4, id="native-v311"),
    pytest.param("native", 5, id="native-v5"),
    pytest.param("paho", 4, id="paho-v311"),
    pytest.param("paho", 5, id="paho-v5"),
    pytest.param("aiomqtt", 4, id="aiomqtt-v311"),
    pytest.param("aiomqtt", 5, id="aiomqtt-v5"),
    pytest.param("awsiotsdk", 4, id="awsiotsdk-v311"),
    pytest.param("awsiotsdk", 5, id="awsiotsdk-v5"),
]


@pytest.fixture(scope="module")
def cmd_policy(fleet) -> str:
    try:
        fleet.registry.create_policy("connectors-cmd", CMD_POLICY)
    except AlreadyExists:
        pass
    return "connectors-cmd"


@pytest.fixture
def make(fleet, gateway, cmd_policy):
    """link(name, level, ...) -> (thing, DeviceLink); every link is disconnected after the test."""
    made: list[DeviceLink] = []

    def link(name: str, level: int, *, status: str = "ACTIVE", issuer=None, register: bool = True,
             client_id: str | None = None, notices: list | None = None,
             port: int | None = None, files=None) -> tuple[str, DeviceLink]:
        if files is None:
            thing, files, _ = fleet.device(name, policies=(cmd_policy,), status=status, issuer=issuer,
                                           register=register)
        else:
            thing = files.directory.name
        gateway.sync(fleet.registry)
        identity = DeviceIdentity.load(files.directory)
        options = ClientOptions(protocol_level=level, keep_alive=30, connect_timeout=WAIT)
        on_disconnect = notices.append if notices is not None else None
        device = get_connector(name).link(identity, Endpoint("localhost", port or gateway.port),
                                          client_id=client_id or thing, options=options, on_disconnect=on_disconnect)
        made.append(device)
        return thing, device

    yield link
    for device in made:
        device.abort()


def run(make_coro, timeout: float = 20.0):
    async def main():
        async with asyncio.timeout(timeout):
            return await make_coro()
    return uvloop.run(main())


def device_files(device) -> DeviceFiles:
    identity = device.identity
    return DeviceFiles(Path(identity.cert_file).parent)


async def within(awaitable: Awaitable, timeout: float = WAIT):
    async with asyncio.timeout(timeout):
        return await awaitable


@pytest.mark.parametrize("name,level", CASES)
def test_command_reaches_the_device_and_telemetry_is_acked(make, name, level):
    async def scenario():
        thing, device = make(name, level)
        sender_thing, sender = make(name, level)
        assert isinstance(device, DeviceLink)
        outcome = await device.connect()
        assert outcome.ok and outcome.reason is Reason.CONNECTED and outcome.code == 0, outcome
        assert outcome.timings.total > 0 and device.connected
        assert (await sender.connect()).ok
        messages = device.messages()
        sub = await device.subscribe(f"cmd/{thing}", qos=1)
        assert sub.ok and sub.reason == "granted" and sub.reason_codes == (1,), sub

        sent = await sender.publish(f"cmd/{thing}", b"reboot", qos=1)
        assert sent.ok and sent.reason == "acked" and sent.reason_code == 0, sent
        assert sent.packet_id or (name, level) == ("awsiotsdk", 5), sent  # the CRT's MQTT 5 client hides them
        message = await within(anext(messages))
        assert (message.topic, message.payload, message.qos) == (f"cmd/{thing}", b"reboot", 1)

        telemetry = await device.publish(f"dt/{thing}/temp", b"21.5", qos=1)
        assert telemetry.ok and telemetry.reason == "acked" and telemetry.latency >= 0, telemetry
        assert (await device.publish(f"dt/{thing}/temp", b"21.6", qos=0)).reason == "sent"
        await device.disconnect()
        await sender.disconnect()
        assert not device.connected
    run(scenario)


@pytest.mark.parametrize("name,level", CASES)
def test_revoked_certificate_is_refused(make, name, level):
    async def scenario():
        _, device = make(name, level, status="REVOKED")
        outcome = await device.connect()
        assert not outcome.ok and not device.connected
        if outcome.reason is Reason.REFUSED:
            assert outcome.code == (0x87 if level == 5 else 0x05), outcome
        else:
            assert outcome.reason is Reason.CLOSED, outcome
    run(scenario)


@pytest.mark.parametrize("name,level", [
    *(case for case in CASES if case.id != "awsiotsdk-v311"),
    pytest.param("awsiotsdk", 4, id="awsiotsdk-v311", marks=pytest.mark.xfail(
        strict=True, reason="aws-crt ends this attempt with AWS_ERROR_MQTT_PROTOCOL_ERROR instead of reporting "
                            "the gateway's CONNACK 0x05 (the revoked-certificate CONNACK 0x05 is reported)")),
])
def test_another_devices_client_id_is_refused(make, fleet, name, level):
    async def scenario():
        other, _, _ = fleet.device("other")
        _, device = make(name, level, client_id=other)
        outcome = await device.connect()
        assert not outcome.ok and outcome.reason is Reason.REFUSED, outcome
        assert outcome.code == (0x87 if level == 5 else 0x05)
        assert "NOT_AUTHORIZED" in outcome.detail
    run(scenario)


@pytest.mark.parametrize("name,level", CASES)
def test_publish_outside_policy(make, name, level):
    async def scenario():
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        notices: list[DisconnectNotice] = []

        def noticed(notice: DisconnectNotice) -> None:
            notices.append(notice)
            if not ended.done():
                ended.set_result(notice)

        thing, device = make(name, level, notices=None)
        device.on_disconnect = noticed
        assert (await device.connect()).ok
        publish = asyncio.ensure_future(device.publish("dt/someone-else/t", b"x", qos=1))
        if level == 5:  # AWS IoT: PUBACK 0x87, the connection stays
            result = await within(publish)
            assert not result.ok and result.reason == "refused" and result.reason_code == 0x87, result
            assert device.connected and not notices
            assert (await device.publish(f"dt/{thing}/t", b"ok", qos=1)).ok
            return
        # AWS IoT: MQTT 3.1.1 has no refusal in PUBACK; the connection is closed
        notice = await within(ended)
        assert notice.reason == "closed" and not device.connected, notice
        await device.disconnect()  # the native client keeps the publish for a reconnect until then
        result = await within(publish)
        assert not result.ok and result.reason == "closed", result
        assert [n.reason for n in notices] == ["closed"], notices
    run(scenario)


@pytest.mark.parametrize("name,level", CASES)
def test_hash_subscription_is_refused(make, name, level):
    async def scenario():
        _, device = make(name, level)
        assert (await device.connect()).ok
        result = await device.subscribe("#", qos=1)
        assert not result.ok and result.reason == "refused", result
        assert result.reason_codes == ((0x87,) if level == 5 else (0x80,))
        assert device.connected
    run(scenario)


@pytest.mark.parametrize("name,level", CASES)
def test_certificate_from_a_foreign_ca_fails_in_tls(make, gateway, broker, foreign_ca, name, level):
    """Mosquitto answers an unknown client CA with a TLS alert: Reason.TLS. The gateway refuses the certificate
    in its handshake too (logged as certificate_verify_failed) but closes without sending the alert, so under
    TLS 1.3 -- where the client's side of the handshake is complete by then -- a client sees a plain close
    before CONNACK."""
    async def scenario():
        _, device = make(name, level, issuer=foreign_ca, register=False)
        outcome = await device.connect()
        assert not outcome.ok and outcome.reason in (Reason.TLS, Reason.CLOSED), outcome
        _, direct_device = make(name, level, files=device_files(device), port=broker.config.port)
        direct = await direct_device.connect()
        assert not direct.ok, direct
        # TLS 1.3: the client's CONNECT can cross Mosquitto's alert; the peer's reset then discards the alert
        if not (direct.reason is Reason.CLOSED and "reset" in direct.detail.lower()):
            assert direct.reason is Reason.TLS and direct.stage == "tls" and direct.detail, direct
    run(scenario)


@pytest.mark.parametrize("level", [4, 5], ids=["v311", "v5"])
@pytest.mark.parametrize("legacy", [True, False], ids=["tls1.1-only", "tls1.2-control"])
def test_awsiotsdk_refuses_an_endpoint_below_tls_1_2(make, fleet, tmp_path, level, legacy):
    """aws-crt's default policy would agree TLS 1.1; the connector holds the SDK to TLS 1.2 and above. The control
    (the same endpoint at TLS 1.2) shows the handshake itself is fine: it is the version that is refused."""
    import socket
    import ssl
    import threading
    import warnings

    from certs.keys import private_key_pem, write_private_file
    from certs.keys import generate_private_key as new_key

    key = new_key("ec-p256")
    cert = fleet.store.load_issuer().issue_server(key, ["localhost"], now=fleet.now)
    (tmp_path / "server.pem").write_bytes(fleet.store.load_issuer().pem_with_chain(cert))
    write_private_file(tmp_path / "server.key", private_key_pem(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if legacy:
            ctx.minimum_version, ctx.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        else:
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tmp_path / "server.pem"), str(tmp_path / "server.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED  # s2n with a client certificate insists on being asked for it
    ctx.load_verify_locations(str(fleet.store.paths.chain))
    listener = socket.create_server(("127.0.0.1", 0))
    handshakes: list[str] = []

    def serve() -> None:  # one connection: record the handshake's result, then close (no MQTT behind it)
        listener.settimeout(WAIT)
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(WAIT)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    handshakes.append(tls.version() or "")
            except (ssl.SSLError, OSError) as exc:
                handshakes.append(f"failed: {exc}")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        _, device = make("awsiotsdk", level, port=listener.getsockname()[1])
        outcome = run(device.connect)
    finally:
        server.join(WAIT)
        listener.close()
    assert not outcome.ok
    if legacy:
        assert outcome.reason is Reason.TLS, outcome
        assert handshakes and handshakes[0].startswith("failed"), handshakes
    else:
        assert handshakes == ["TLSv1.2"], (handshakes, outcome)
