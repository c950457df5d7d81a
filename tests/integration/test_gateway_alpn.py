"""Port 443's ALPN on the device listener: `x-amzn-mqtt-ca` (X.509 MQTT, what the AWS IoT Device SDKs offer on 443)
is negotiated when offered; a device that offers none or another still connects as on 8883. The listener runs on
an ephemeral port: the ALPN, not the port number, is what a device sees."""

from __future__ import annotations

import socket
import ssl

import pytest

from gateway.mqtt import Connect, encode

WAIT = 5.0
CONNACK_ACCEPTED_V311 = b"\x20\x02\x00\x00"


def _handshake(files, port: int, alpn: list[str] | None) -> tuple[str | None, bytes]:
    """(selected ALPN, the CONNACK's bytes) of one MQTT 3.1.1 CONNECT over mTLS offering `alpn`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(str(files.root_ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            selected = tls.selected_alpn_protocol()
            tls.sendall(encode(Connect(client_id=files.directory.name, keep_alive=30), 4))
            connack = b""
            while len(connack) < 4:
                chunk = tls.recv(4 - len(connack))
                if not chunk:
                    break
                connack += chunk
            return selected, connack


@pytest.mark.parametrize("offered, selected", [
    (["x-amzn-mqtt-ca"], "x-amzn-mqtt-ca"),
    (["http/1.1", "x-amzn-mqtt-ca"], "x-amzn-mqtt-ca"),
    (None, None),
    (["mqtt"], None),  # custom authorizers' ALPN belongs to the token listener: here the handshake goes on without
])
def test_the_device_listener_negotiates_aws_iot_alpn(gateway, fleet, offered, selected):
    thing, files, _ = fleet.device("alpn")
    gateway.sync(fleet.registry)
    got, connack = _handshake(files, gateway.port, offered)
    assert got == selected
    assert connack == CONNACK_ACCEPTED_V311


def test_the_aws_iot_device_sdk_connects_with_its_port_443_alpn(gateway, fleet):
    """aws-crt with the TLS options the SDK's builders set on port 443 (alpn_list ['x-amzn-mqtt-ca']; they set it
    only when the port is 443, which a test cannot bind), TLS 1.2 minimum, mutual TLS, MQTT 3.1.1 CONNACK."""
    from awscrt import io as crt_io
    from awscrt import mqtt as crt_mqtt

    thing, files, _ = fleet.device("alpn-sdk")
    gateway.sync(fleet.registry)
    options = crt_io.TlsContextOptions.create_client_with_mtls_from_path(str(files.cert), str(files.key))
    options.override_default_trust_store_from_path(None, str(files.root_ca))
    options.alpn_list = ["x-amzn-mqtt-ca"]
    options.min_tls_ver = crt_io.TlsVersion.TLSv1_2
    client = crt_mqtt.Client(crt_io.ClientBootstrap.get_or_create_static_default(), crt_io.ClientTlsContext(options))
    connection = crt_mqtt.Connection(client, "localhost", gateway.port, thing, clean_session=True, keep_alive_secs=30,
                                     ping_timeout_ms=3000)
    result = connection.connect().result(WAIT)  # a refused CONNACK raises here
    assert result["session_present"] is False
    connection.disconnect().result(WAIT)
    event = gateway.events.wait_for(event="connect", client_id=thing, decision="allowed")
    assert event["thing"] == thing


def test_the_sdks_default_port_path_on_port_443(fleet, broker):
    """`mqtt_connection_builder.mtls_from_path` without a port: the SDK dials 443 and offers x-amzn-mqtt-ca. Runs
    where this test may bind 127.0.0.1:443 (root, or CAP_NET_BIND_SERVICE) and the port is free; skipped otherwise."""
    import errno

    from awsiot import mqtt_connection_builder

    from gateway.config import GatewayConfig, Limits
    from gateway.server import GatewayThread
    from tests.integration.conftest import TEST_LIMITS

    probe = socket.socket()
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", 443))
    except OSError as exc:
        why = "port 443 is privileged here (not root, no CAP_NET_BIND_SERVICE)" if exc.errno == errno.EACCES \
            else f"127.0.0.1:443 is not free ({exc.strerror})"
        pytest.skip(why)
    finally:
        probe.close()
    thing, files, _ = fleet.device("port443")
    cfg = GatewayConfig(home=fleet.home, registry=fleet.url, host="127.0.0.1", port=443, upstream=broker.config.url,
                        access_log=None, limits=Limits(**TEST_LIMITS))
    running = GatewayThread(cfg).start()
    try:
        connection = mqtt_connection_builder.mtls_from_path(
            endpoint="localhost", cert_filepath=str(files.cert), pri_key_filepath=str(files.key),
            ca_filepath=str(files.root_ca), client_id=thing, clean_session=True, keep_alive_secs=30,
            enable_metrics_collection=False)
        assert connection.port == 443
        connection.connect().result(WAIT)
        connection.disconnect().result(WAIT)
    finally:
        running.stop()
