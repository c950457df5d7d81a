"""The gateway's TLS client to the broker, on both engines: the broker's chain and name are verified, and the
pyOpenSSL engine resumes the broker's session (a real Mosquitto) instead of a full handshake per device."""

from __future__ import annotations

import asyncio
import ssl
import struct

import pytest

from certs.authority import CertificateAuthority
from certs.keys import generate_private_key, private_key_pem
from certs.store import PKIPaths
from gateway.auth.tls_engine import certificate_matches_host
from gateway.upstream.link import UpstreamConnector, UpstreamError, parse_upstream_url

ENGINES = ["pyopenssl", "stdlib"]


def _connect_packet(client_id: str) -> bytes:
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(client_id)) + client_id.encode()
    return bytes([0x10, len(body)]) + body


class _Client(asyncio.Protocol):
    """Sends one MQTT CONNECT and waits for the first bytes back."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        transport.write(_connect_packet(self.client_id))

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def connection_lost(self, exc) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionError(f"closed: {exc}"))


async def _exchange(connector: UpstreamConnector, client_id: str) -> bytes:
    protocols: list[_Client] = []

    def factory() -> _Client:
        protocols.append(_Client(client_id))
        return protocols[-1]

    transport = await connector.open(factory)
    try:
        return await asyncio.wait_for(protocols[0].answer, 5)
    finally:
        transport.close()


def _server_files(tmp_path, issuer: CertificateAuthority, names: list[str], now) -> tuple:
    key = generate_private_key("ec-p256")
    cert = issuer.issue_server(key, names, now=now)
    cert_file, key_file = tmp_path / f"{names[0]}.pem", tmp_path / f"{names[0]}.key"
    cert_file.write_bytes(issuer.pem_with_chain(cert))
    key_file.write_bytes(private_key_pem(key))
    return cert_file, key_file


async def _with_tls_server(fleet, cert_file, key_file, run):
    """A TLS server on loopback that requires the gateway's client certificate and answers any bytes with b"ok"."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.load_verify_locations(str(fleet.store.paths.upstream_ca_cert))  # the CA of the gateway's client identity
    ctx.verify_mode = ssl.CERT_REQUIRED

    async def handle(reader, writer):
        try:
            await reader.read(100)
            writer.write(b"ok")
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await run(port)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", ["right name", "foreign CA", "wrong name"])
def test_the_broker_is_verified_by_its_chain_and_its_name(fleet, foreign_ca, tmp_path, engine, case):
    issuer = foreign_ca if case == "foreign CA" else fleet.store.load_issuer()
    names = ["elsewhere.example"] if case == "wrong name" else ["localhost", "127.0.0.1"]
    cert_file, key_file = _server_files(tmp_path, issuer, names, fleet.now)

    async def run(port):
        connector = UpstreamConnector(parse_upstream_url(f"mqtts://127.0.0.1:{port}"), PKIPaths(fleet.home),
                                      timeout=5, engine=engine)
        return await _exchange(connector, "probe")

    if case == "right name":
        assert asyncio.run(_with_tls_server(fleet, cert_file, key_file, run)) == b"ok"
        return
    with pytest.raises((UpstreamError, ssl.SSLError)) as caught:
        asyncio.run(_with_tls_server(fleet, cert_file, key_file, run))
    text = str(caught.value).lower()
    if case == "foreign CA":
        assert "verify failed" in text or "broker's certificate refused" in text, text
    else:
        assert "127.0.0.1" in text and ("not valid for" in text or "mismatch" in text), text


def test_the_pyopenssl_upstream_resumes_the_brokers_session(fleet, broker):
    connector = UpstreamConnector(parse_upstream_url(broker.config.url), PKIPaths(fleet.home), timeout=5,
                                  engine="pyopenssl")

    async def run():
        return [await _exchange(connector, f"resume-{i}") for i in range(4)]

    answers = asyncio.run(run())
    # a CONNACK accepting the gateway every time: on a resumed session Mosquitto still knows its certificate
    assert answers == [b"\x20\x02\x00\x00"] * 4
    sessions = connector.tls.sessions
    assert (sessions.full, sessions.resumed) == (1, 3)


@pytest.mark.parametrize("names,host,matches", [
    (["localhost", "127.0.0.1"], "localhost", True),
    (["localhost", "127.0.0.1"], "LOCALHOST.", True),
    (["localhost", "127.0.0.1"], "127.0.0.1", True),
    (["localhost", "127.0.0.1"], "127.0.0.2", False),
    (["localhost"], "127.0.0.1", False),                 # an address is never matched against DNS names
    (["127.0.0.1"], "localhost", False),
    (["::1"], "::1", True),
    (["*.brokers.example"], "a.brokers.example", True),
    (["*.brokers.example"], "a.b.brokers.example", False),  # a wildcard is one label
    (["*.brokers.example"], "brokers.example", False),
    (["*.example"], "a.example", False),                 # not for a name directly under a top-level label
    (["mosquitto"], "mosquitto", True),
    (["mosquitto"], "mosquitto-2", False),
])
def test_name_matching_table(fleet, names, host, matches):
    issuer = fleet.store.load_issuer()
    cert = issuer.issue_server(generate_private_key("ec-p256"), names, now=fleet.now)
    assert certificate_matches_host(cert, host) is matches


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("answer", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_a_broker_that_is_not_tls_is_an_error_at_once(fleet, engine, answer):
    """A listener that closes at once or answers in plaintext: an error well before the timeout, never a hang."""

    async def run():
        async def handle(reader, writer):
            await reader.read(10)
            writer.write(answer)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            connector = UpstreamConnector(parse_upstream_url(f"mqtts://127.0.0.1:{port}"), PKIPaths(fleet.home),
                                          timeout=5, engine=engine)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises((UpstreamError, OSError, ssl.SSLError)):
                await _exchange(connector, "probe")
            return loop.time() - started

    assert asyncio.run(run()) < 2.0
