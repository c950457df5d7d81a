"""Hostile and broken clients: malformed and oversize packets, half-finished handshakes, missing CONNECT,
floods. Each ends its own connection only; the sessions of others carry on."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from gateway.mqtt import Connect, Disconnect, Framer, PacketType, Publish, ReasonCode, decode, encode

from .conftest import Device, start_gateway, wait_until


@pytest.fixture
def talking(gateway, devices, fleet):
    """Two devices mid-conversation; ``check()`` proves the conversation still works."""
    (a, a_files, _), (b, b_files, _) = fleet.device("bystander"), fleet.device("bystander")
    sub, pub = devices(a_files, a), devices(b_files, b, version=4)
    assert sub.connect() == 0 and pub.connect() == 0
    assert sub.subscribe("room/bystanders") == [1]
    counter = iter(range(1000))

    def check() -> None:
        payload = f"still fine {next(counter)}".encode()
        assert pub.publish("room/bystanders", payload, qos=1) == 0
        assert sub.message().payload == payload

    check()
    return check


def connected(raw, fleet, level=5):
    thing, files, _ = fleet.device("hostile")
    client = raw(files, level=level)
    client.send(encode(Connect(thing, protocol_level=level), level))
    assert client.packet().reason_code == 0
    return thing, client


@pytest.mark.parametrize("garbage", [
    b"\x00\x00",                       # packet type 0 is reserved
    b"\x30\xff\xff\xff\xff\x01",       # remaining length longer than four bytes
    b"\x32\x02\x00\x05",               # PUBLISH whose topic runs past the end of the packet
    b"\x82\x04\x00\x01\x00\x00",       # SUBSCRIBE with no topic filter
])
def test_malformed_packet_closes_only_that_connection(gateway, raw, fleet, talking, garbage):
    thing, client = connected(raw, fleet)
    client.send(garbage)
    packet = client.packet()
    if packet is not None:
        assert isinstance(packet, Disconnect) and packet.reason_code in (
            ReasonCode.MALFORMED_PACKET, ReasonCode.PROTOCOL_ERROR)
        assert client.closed()
    gateway.events.wait_for(event="disconnect", client_id=thing)
    talking()


def test_malformed_connect_is_closed(gateway, raw, fleet, talking):
    _, files, _ = fleet.device("hostile")
    client = raw(files)
    client.send(b"\x10\x05\x00\x04MQTX")  # a CONNECT whose protocol name is wrong, cut short
    assert client.closed()
    gateway.events.wait_for(event="connect", kind="malformed_connect")
    talking()


def test_oversize_packet_is_refused_before_it_is_buffered(gateway, raw, fleet, talking):
    thing, client = connected(raw, fleet)
    client.send(b"\x30\x80\x80\x80\x05")  # a PUBLISH announcing 10 MiB; not one byte of it follows
    packet = client.packet()
    assert isinstance(packet, Disconnect) and packet.reason_code == ReasonCode.PACKET_TOO_LARGE
    gateway.events.wait_for(event="disconnect", client_id=thing, kind="packet_too_large")
    talking()


def test_payload_above_128_kib_is_refused(gateway, raw, fleet, talking):
    thing, client = connected(raw, fleet)
    client.send(encode(Publish(f"dt/{thing}/big", b"x" * (128 * 1024 + 1), qos=0), 5))
    packet = client.packet()
    assert isinstance(packet, Disconnect) and packet.reason_code == ReasonCode.PACKET_TOO_LARGE
    gateway.events.wait_for(event="publish", client_id=thing, kind="payload_too_large")
    talking()


def test_payload_of_exactly_128_kib_passes(gateway, devices, fleet):
    (a, a_files, _), (b, b_files, _) = fleet.device("big"), fleet.device("big")
    sub, pub = devices(a_files, a), devices(b_files, b)
    assert sub.connect() == 0 and pub.connect() == 0
    assert sub.subscribe("room/big") == [1]
    assert pub.publish("room/big", b"y" * (128 * 1024), qos=1) == 0
    assert len(sub.message().payload) == 128 * 1024


def test_half_finished_handshake_times_out_and_others_carry_on(gateway, talking):
    stalled = socket.create_connection(("127.0.0.1", gateway.port))
    stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, then nothing
    aborted = socket.create_connection(("127.0.0.1", gateway.port))
    aborted.sendall(b"\x16\x03\x01")
    aborted.close()
    talking()  # while the stalled handshake waits for its deadline
    gateway.events.wait_for(event="tls", kind="handshake_aborted")
    gateway.events.wait_for(event="tls", kind="handshake_timeout")
    stalled.settimeout(5)
    assert stalled.recv(100) == b""  # closed by the gateway
    stalled.close()
    talking()


def test_no_connect_before_the_deadline_closes(gateway, raw, fleet):
    thing, files, _ = fleet.device("mute")
    client = raw(files)
    started = time.monotonic()
    assert client.closed()
    assert time.monotonic() - started < gateway.gateway.config.limits.connect_timeout + 2
    gateway.events.wait_for(event="connect", kind="connect_timeout")


def test_plaintext_mqtt_on_the_tls_port_is_refused(gateway, talking):
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(encode(Connect("plain"), 4))
    sock.settimeout(5)
    try:
        assert sock.recv(100) == b""  # no MQTT answer on the TLS port: the handshake failed
    except ConnectionResetError:
        pass
    sock.close()
    gateway.events.wait_for(event="tls", decision="refused", kind="not_tls")
    talking()


# --------------------------------------------------------------------------------------------- rate limits

@pytest.fixture
def strict_gateway(fleet, broker):
    made = []

    def make(**limits):
        running = start_gateway(fleet, broker.config.url, **limits)
        made.append(running)
        return running

    yield make
    for running in made:
        running.thread.stop()


def test_connect_rate_per_client_id_is_one_per_second(fleet, strict_gateway):
    running = strict_gateway(connect_burst_per_client_id=1, connect_rate_per_client_id=1.0)
    thing, files, _ = fleet.device("eager")
    running.sync(fleet.registry)
    first = Device(files, running.port, thing)
    second = Device(files, running.port, thing)
    try:
        assert first.connect() == 0
        assert second.connect() == ReasonCode.CONNECTION_RATE_EXCEEDED
        record = running.events.wait_for(event="connect", client_id=thing, kind="connect_rate_exceeded")
        assert record["decision"] == "refused"
    finally:
        first.close()
        second.close()


def test_max_connections_refuses_at_accept(fleet, strict_gateway, raw):
    running = strict_gateway(max_connections=1)
    thing, files, _ = fleet.device("crowd")
    running.sync(fleet.registry)
    holder = raw(files, port=running.port)
    holder.send(encode(Connect(thing, protocol_level=5), 5))
    assert holder.packet().reason_code == 0
    extra = socket.create_connection(("127.0.0.1", running.port))
    extra.settimeout(5)
    try:
        assert extra.recv(10) == b""
    except ConnectionResetError:
        pass
    extra.close()
    running.events.wait_for(event="tls", kind="server_busy")


def test_publish_rate_per_connection(fleet, strict_gateway):
    running = strict_gateway(publish_rate=2.0, publish_burst=3)
    thing, files, _ = fleet.device("chatty")
    running.sync(fleet.registry)
    device = Device(files, running.port, thing)
    try:
        assert device.connect() == 0
        codes = [device.publish(f"dt/{thing}/t", b"x", qos=1) for _ in range(6)]
        assert codes[:3] == [0, 0, 0]
        assert ReasonCode.QUOTA_EXCEEDED in codes[3:]
        running.events.wait_for(event="publish", client_id=thing, decision="throttled")
    finally:
        device.close()


def test_keepalive_is_enforced_at_one_and_a_half_times(fleet, strict_gateway, raw):
    running = strict_gateway(keepalive_min=1)
    thing, files, _ = fleet.device("sleepy")
    running.sync(fleet.registry)
    client = raw(files, port=running.port)
    client.send(encode(Connect(thing, protocol_level=5, keep_alive=1), 5))
    assert client.packet().reason_code == 0
    started = time.monotonic()
    packet = client.packet(timeout=5)  # no PINGREQ from us: the gateway gives up after 1.5 s
    assert isinstance(packet, Disconnect) and packet.reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT
    assert 1.4 <= time.monotonic() - started < 3
    running.events.wait_for(event="disconnect", client_id=thing, kind="keepalive_timeout")


def test_a_bug_in_one_session_ends_that_connection_only(gateway, raw, fleet, talking, monkeypatch):
    from gateway import session as session_module
    from gateway.mqtt import PacketType

    def broken(self, frame, now):
        raise RuntimeError("simulated bug")

    monkeypatch.setitem(session_module._ACTIVE_DEVICE, PacketType.PINGREQ, broken)
    thing, client = connected(raw, fleet)
    client.send(b"\xc0\x00")
    assert client.closed()
    gateway.events.wait_for(event="disconnect", client_id=thing, kind="internal_error")
    talking()


# --------------------------------------------------------------------------------------------- devices that do not read

def _device_buffers(running) -> list[int]:
    return running.call(lambda: [c.device.get_write_buffer_size() for c in running.gateway.connections
                                 if c.device is not None and not c.device.is_closing()])


def _tls_client(running, fleet, files, rcvbuf: int = 4096):
    """A TLS socket whose receive buffer is small, so what the device does not read stays at the gateway."""
    ctx = ssl.create_default_context(cafile=str(fleet.store.paths.root_cert))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", running.port))
    return ctx.wrap_socket(sock, server_hostname="localhost")


def _send_until_blocked(sock, data: bytes, total: int, block_timeout: float = 1.0) -> int:
    sock.settimeout(block_timeout)
    sent = 0
    try:
        while sent < total:
            sock.sendall(data)
            sent += len(data)
    except (TimeoutError, ssl.SSLError, OSError):
        pass
    return sent


def test_device_that_never_reads_does_not_grow_gateway_memory(fleet, strict_gateway):
    running = strict_gateway(keepalive_min=2)
    thing, files, _ = fleet.device("deaf")
    running.sync(fleet.registry)
    sock = _tls_client(running, fleet, files)
    try:
        sock.sendall(encode(Connect(thing, protocol_level=5, keep_alive=2), 5))
        framer = Framer(1 << 24, protocol_level=5)
        frames = []
        while not frames:
            frames.extend(framer.feed(sock.recv(4096)))
        assert decode(frames.pop(0), 5).reason_code == 0
        sent = _send_until_blocked(sock, b"\xc0\x00" * 32768, 64 << 20)  # PINGREQ, never reading, until blocked
        assert sent < 64 << 20, [(e["kind"], e["reason"]) for e in running.events.find(client_id=thing)]
        limit = running.gateway.config.limits.max_device_buffer
        assert max(_device_buffers(running), default=0) <= limit
        time.sleep(3.5)  # longer than 1.5 x keepalive, while the gateway does not read the device
        assert max(_device_buffers(running), default=0) <= limit
        # not a keepalive timeout: the gateway paused reading, the device did not fall silent
        assert not running.events.find(event="disconnect", client_id=thing), [
            (e["kind"], e["reason"]) for e in running.events.find(client_id=thing)]
        sock.settimeout(1.0)
        assert decode(next(iter(framer.feed(sock.recv(4096)))), 5).packet_type is PacketType.PINGRESP
    finally:
        sock.close()


def test_device_write_buffer_above_the_cap_closes_the_session(fleet, strict_gateway):
    # a cap below the transport's pause mark (server.DEVICE_WRITE_HIGH_WATER): the answers the gateway keeps
    # writing to a device that does not read cross it before reading from that device pauses, whatever the
    # size of each read; above the mark, backpressure alone bounds the buffer (the test below)
    running = strict_gateway(max_payload=16 * 1024, max_packet_size=16 * 1024, max_device_buffer=32 * 1024)
    thing, files, _ = fleet.device("deaf")
    running.sync(fleet.registry)
    sock = _tls_client(running, fleet, files)
    try:
        sock.sendall(encode(Connect(thing, protocol_level=5), 5))
        assert sock.recv(4096)[:1] == b"\x20"
        _send_until_blocked(sock, b"\xc0\x00" * 131072, 4 << 20)
        record = running.events.wait_for(event="disconnect", client_id=thing)
        assert record["kind"] == "device_not_reading" and record["code"] == ReasonCode.QUOTA_EXCEEDED
    finally:
        sock.close()


def test_exception_during_authentication_aborts_the_transport(fleet, strict_gateway, raw):
    running = strict_gateway()
    _, files, _ = fleet.device("unlucky")
    running.sync(fleet.registry)

    def broken(der, view):
        raise RuntimeError("simulated bug")

    running.gateway.authenticator.authenticate = broken
    client = raw(files, port=running.port)
    assert client.closed(timeout=3)  # aborted, not left open outside max_connections
    wait_until(lambda: not running.call(lambda: len(running.gateway.connections)))


def test_accept_loop_outlives_an_unexpected_error(fleet, strict_gateway, raw, capfd):
    running = strict_gateway()
    thing, files, _ = fleet.device("survivor")
    running.sync(fleet.registry)
    limiter = running.gateway.source_limiter
    calls = []

    def allow_but_fail_once(key, now):
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("simulated bug")
        return type(limiter).allow(limiter, key, now)

    limiter.allow = allow_but_fail_once
    first = socket.create_connection(("127.0.0.1", running.port))
    first.settimeout(5)
    try:
        assert first.recv(10) == b""  # closed, not left hanging
    except ConnectionResetError:
        pass
    first.close()
    client = raw(files, port=running.port)
    client.send(encode(Connect(thing, protocol_level=5), 5))
    assert client.packet().reason_code == 0  # accepting resumed
    assert "internal error in the accept loop" in capfd.readouterr().err
