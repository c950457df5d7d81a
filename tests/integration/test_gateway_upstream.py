"""The gateway's own channel to the broker: unreachable at CONNECT, lost mid-session, unix socket with a password."""

from __future__ import annotations

import os

import orjson
import pytest

from gateway.mqtt import Connect, Disconnect, ReasonCode, encode
from gateway.upstream.link import UpstreamConnector, UpstreamError, parse_upstream_url
from gateway.upstream.mosquitto import MosquittoProcess, free_port

from .conftest import Device, start_broker, start_gateway


@pytest.fixture
def own_gateway(fleet):
    """A gateway of the test's own (started by the test with the upstream it needs), stopped after."""
    made = []

    def make(upstream: str, **limits):
        running = start_gateway(fleet, upstream, **limits)
        made.append(running)
        return running

    yield make
    for running in made:
        running.thread.stop()


@pytest.fixture
def own_devices():
    made = []

    def make(files, client_id, port, **kwargs):
        device = Device(files, port, client_id, **kwargs)
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


def test_upstream_down_at_connect_is_server_unavailable(fleet, own_gateway, own_devices, raw):
    running = own_gateway(f"mqtts://127.0.0.1:{free_port()}")  # nothing listens there
    thing, files, _ = fleet.device("lonely")
    running.sync(fleet.registry)
    v5 = own_devices(files, thing, running.port, version=5)
    assert v5.connect() == ReasonCode.SERVER_UNAVAILABLE
    client = raw(files, port=running.port, level=4)
    client.send(encode(Connect(thing, protocol_level=4), 4))
    assert client.packet().reason_code == 0x03  # 3.1.1: server unavailable
    record = running.events.wait_for(event="connect", client_id=thing, kind="upstream_unavailable")
    assert record["decision"] == "refused"


def test_upstream_killed_mid_session_closes_device_sessions(fleet, own_gateway, own_devices, tmp_path):
    broker = start_broker(fleet, tmp_path / "broker")
    try:
        running = own_gateway(broker.config.url)
        (a, a_files, _), (b, b_files, _) = fleet.device("victim"), fleet.device("victim")
        running.sync(fleet.registry)
        v5 = own_devices(a_files, a, running.port, version=5)
        v3 = own_devices(b_files, b, running.port, version=4)
        assert v5.connect() == 0 and v3.connect() == 0
        broker.kill()
        assert v5.wait_disconnect() == ReasonCode.SERVER_BUSY
        v3.wait_disconnect()
        running.events.wait_for(event="disconnect", client_id=a, kind="upstream_lost")
        running.events.wait_for(event="disconnect", client_id=b, kind="upstream_lost")
        # the gateway itself lives on: a new device is told the broker is unavailable
        again = own_devices(a_files, a, running.port, version=5)
        assert again.connect() == ReasonCode.SERVER_UNAVAILABLE
    finally:
        broker.stop()


def test_unix_socket_upstream_with_the_gateways_own_password(fleet, own_gateway, own_devices, tmp_path):
    broker = start_broker(fleet, tmp_path / "ubroker", unix_socket=True)
    try:
        assert broker.config.url.startswith("unix://")
        assert os.stat(broker.config.directory).st_mode & 0o777 == 0o700
        running = own_gateway(broker.config.url)
        assert running.gateway.connector.password  # read from the broker directory's 0600 secret
        stored = broker.config.password_path.read_text()
        assert stored.startswith("iotgate-gateway:$") and running.gateway.connector.password.decode() not in stored
        assert os.stat(broker.config.password_path).st_mode & 0o777 == 0o600
        (a, a_files, _), (b, b_files, _) = fleet.device("local"), fleet.device("local")
        running.sync(fleet.registry)
        sub = own_devices(a_files, a, running.port, version=5)
        pub = own_devices(b_files, b, running.port, version=4)
        assert sub.connect() == 0 and pub.connect() == 0
        assert sub.subscribe("room/unix") == [1]
        assert pub.publish("room/unix", b"over the socket", qos=1) == 0
        assert sub.message().payload == b"over the socket"
        # The services' own link authenticates the same way: their answers come back over the socket too.
        assert sub.subscribe(f"$aws/things/{a}/shadow/get/rejected") == [1]
        assert sub.publish(f"$aws/things/{a}/shadow/get", b"{}", qos=1) == 0
        assert orjson.loads(sub.message().payload)["code"] == 404
    finally:
        broker.stop()


def test_wrong_gateway_password_is_server_unavailable(fleet, own_gateway, own_devices, tmp_path):
    broker = start_broker(fleet, tmp_path / "ubroker", unix_socket=True)
    try:
        wrong = tmp_path / "wrong.secret"
        wrong.write_bytes(b"not-the-password")
        wrong.chmod(0o600)
        from gateway.config import GatewayConfig, Limits
        from gateway.server import GatewayThread

        from .conftest import TEST_LIMITS, EventLog, RunningGateway

        events = EventLog()
        cfg = GatewayConfig(home=fleet.home, registry=fleet.url, port=0, upstream=broker.config.url,
                            upstream_password_file=wrong, access_log=None, limits=Limits(**TEST_LIMITS))
        thread = GatewayThread(cfg).start()
        thread.gateway.access.sinks.append(events)
        running = RunningGateway(thread, events)
        try:
            thing, files, _ = fleet.device("locked-out")
            running.sync(fleet.registry)
            device = own_devices(files, thing, running.port, version=5)
            assert device.connect() == ReasonCode.SERVER_UNAVAILABLE
            record = events.wait_for(event="connect", client_id=thing, kind="upstream_unavailable")
            assert "refused the gateway's CONNECT" in record["reason"]
        finally:
            thread.stop()
    finally:
        broker.stop()


def test_upstream_urls_are_checked():
    assert str(parse_upstream_url("mqtts://broker.local:8884")) == "mqtts://broker.local:8884"
    assert parse_upstream_url("unix:///run/iotgate/mqtt.sock").path == "/run/iotgate/mqtt.sock"
    with pytest.raises(UpstreamError, match="plaintext"):
        parse_upstream_url("mqtt://127.0.0.1:1883")
    with pytest.raises(UpstreamError, match="host and port"):
        parse_upstream_url("mqtts://127.0.0.1")
    with pytest.raises(UpstreamError, match="unsupported scheme"):
        parse_upstream_url("http://x:1")


def test_unix_socket_directory_must_be_private(fleet, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    secret = tmp_path / "secret"
    secret.write_bytes(b"pw")
    secret.chmod(0o600)
    target = parse_upstream_url(f"unix://{shared}/mqtt.sock")
    with pytest.raises(UpstreamError, match="0700"):
        UpstreamConnector(target, fleet.store.paths, username="iotgate-gateway", password_file=secret)
    shared.chmod(0o700)
    secret.chmod(0o644)
    with pytest.raises(UpstreamError, match="chmod 600"):
        UpstreamConnector(target, fleet.store.paths, username="iotgate-gateway", password_file=secret)


def test_device_disconnect_is_forwarded_so_no_will(fleet, gateway, raw):
    thing, files, _ = fleet.device("polite")
    client = raw(files, level=5)
    client.send(encode(Connect(thing, protocol_level=5), 5))
    assert client.packet().reason_code == 0
    client.send(encode(Disconnect(ReasonCode.NORMAL_DISCONNECTION), 5))
    assert client.closed()
    record = gateway.events.wait_for(event="disconnect", client_id=thing)
    assert record["kind"] == "disconnect" and record["decision"] == "closed"


def test_unix_socket_with_a_full_accept_backlog_is_retried(fleet, tmp_path):
    """A unix listener whose backlog is full answers EAGAIN at once; the connector waits and tries again."""
    import asyncio
    import os
    import socket

    sock_dir = tmp_path / "sockdir"
    sock_dir.mkdir(mode=0o700)
    secret = sock_dir / "gateway.secret"
    secret.write_text("s3cret")
    os.chmod(secret, 0o600)
    path = sock_dir / "mqtt.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    server.setblocking(False)
    queued = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    full = False
    for s in queued:
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError:
            full = True
            break
    assert full, "the backlog never filled"
    connector = UpstreamConnector(parse_upstream_url(f"unix://{path}"), fleet.store.paths,
                                  username="iotgate-gateway", password_file=secret, timeout=5)

    async def scenario():
        opening = asyncio.ensure_future(connector.open(asyncio.Protocol))
        await asyncio.sleep(0.05)
        assert not opening.done()  # refused with EAGAIN, retrying
        accepted = []
        while not opening.done():  # the broker catches up
            try:
                accepted.append(server.accept()[0])
            except BlockingIOError:
                pass
            await asyncio.sleep(0.005)
        transport = opening.result()
        transport.close()
        for conn in accepted:
            conn.close()

    try:
        import uvloop

        uvloop.run(scenario())  # the gateway's loop: it reports EAGAIN instead of waiting for writability
    finally:
        for s in queued:
            s.close()
        server.close()


def test_a_device_certificate_named_like_the_gateway_cannot_reach_the_broker(fleet, broker, tmp_path):
    """East-west trust is separate: the broker accepts only the upstream CA, whatever CN a device holds."""
    from devices.identity import make_key_and_csr, write_device_dir
    from devices.reference import PahoDevice

    issuer = fleet.store.load_issuer()
    key, csr = make_key_and_csr("iotgate-gateway")
    cert = issuer.sign_device_csr(csr, "iotgate-gateway", now=fleet.now)  # a valid thing name on our device CA
    files = write_device_dir(tmp_path, "iotgate-gateway", key, issuer.pem_with_chain(cert), fleet.store.root_pem())
    impostor = PahoDevice(files, broker.config.port, "impostor", host="127.0.0.1")
    try:
        with pytest.raises((ConnectionError, OSError)):
            if impostor.connect() == 0:
                raise AssertionError("a device certificate was accepted by the upstream broker")
    finally:
        impostor.close()
    # the gateway's own identity still gets in (its certificate comes from the upstream CA)
    gateway_files = type(files)(tmp_path / "gw")
    (tmp_path / "gw").mkdir()
    for name, source in (("device.pem", fleet.store.paths.client_cert), ("device.key", fleet.store.paths.client_key),
                         ("root-ca.pem", fleet.store.paths.root_cert)):
        (tmp_path / "gw" / name).write_bytes(source.read_bytes())
    gateway_client = PahoDevice(gateway_files, broker.config.port, "gateway-probe", host="127.0.0.1")
    try:
        assert gateway_client.connect() == 0
    finally:
        gateway_client.close()


def test_services_link_comes_back_with_the_broker(fleet, own_gateway, own_devices, tmp_path, wait):
    broker = start_broker(fleet, tmp_path / "broker")
    try:
        running = own_gateway(broker.config.url)
        link = running.gateway.services.link
        wait(link.connected.is_set)
        broker.kill()
        wait(lambda: not link.connected.is_set())
        broker = MosquittoProcess(broker.config).start()  # the same port and configuration
        wait(link.connected.is_set, timeout=10)
        (a, a_files, _), = (fleet.device("relink"),)
        running.sync(fleet.registry)
        device = own_devices(a_files, a, running.port, version=5)
        assert device.connect() == 0
        assert device.subscribe(f"$aws/things/{a}/shadow/get/rejected") == [1]
        assert device.publish(f"$aws/things/{a}/shadow/get", b"{}", qos=1) == 0
        assert orjson.loads(device.message().payload)["code"] == 404
    finally:
        broker.stop()
