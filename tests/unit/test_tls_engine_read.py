"""The pyOpenSSL transport hands decrypted data to its protocol in batches: many small records in one read are one
``data_received``; data before the peer's close_notify is delivered before the close."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from OpenSSL import SSL

from certs.authority import cert_pem
from certs.keys import generate_private_key, private_key_pem
from certs.store import PKIStore
from gateway.auth.tls_engine import TLSServerTransport, server_context


class FakeTCP:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data) -> None:
        self.out.append(bytes(data))

    def take(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close


class App(asyncio.Protocol):
    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.calls.append(data)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    home = tmp_path_factory.mktemp("tls-read")
    now = dt.datetime.now(dt.UTC)
    store = PKIStore(home)
    store.init(now=now)
    issuer = store.load_issuer()
    key = generate_private_key("ec-p256")
    (home / "dev.pem").write_bytes(issuer.pem_with_chain(issuer.issue_client(key, "dev", now=now)))
    (home / "dev.key").write_bytes(private_key_pem(key))
    server = server_context(store.paths.server_cert, store.paths.server_key,
                            [cert_pem(store.root_certificate()).decode(), cert_pem(issuer.certificate).decode()])
    client = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client.use_certificate_chain_file(str(home / "dev.pem"))
    client.use_privatekey_file(str(home / "dev.key"))
    client.load_verify_locations(str(store.paths.root_cert))
    client.set_verify(SSL.VERIFY_PEER)
    return server, client


def _connected(pair):
    server_ctx, client_ctx = pair
    loop = asyncio.new_event_loop()
    conn = SSL.Connection(server_ctx, None)
    conn.set_accept_state()
    app = App()
    tls = TLSServerTransport(conn, lambda: app, loop.create_future())
    tcp = FakeTCP()
    tls.connection_made(tcp)
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except SSL.WantReadError:
            tls.data_received(client.bio_read(65536))
            client.bio_write(tcp.take())
    tls.data_received(client.bio_read(65536))  # the client's last flight: the server's handshake completes
    assert tls._waiter is None, "the server side did not complete the handshake"
    loop.close()
    return tls, tcp, app, client


def _records(client: SSL.Connection, *payloads: bytes) -> bytes:
    for payload in payloads:
        client.send(payload)  # one TLS record each
    return client.bio_read(1 << 20)


def test_many_small_records_are_one_delivery(pair):
    tls, tcp, app, client = _connected(pair)
    app.calls.clear()
    payloads = [bytes([i]) * 10 for i in range(50)]
    tls.data_received(_records(client, *payloads))
    assert app.calls == [b"".join(payloads)]


def test_data_before_close_notify_is_delivered_then_the_transport_closes(pair):
    tls, tcp, app, client = _connected(pair)
    app.calls.clear()
    client.send(b"last words")
    client.shutdown()
    tls.data_received(client.bio_read(1 << 20))
    assert app.calls == [b"last words"]
    assert tcp.closing and tls.is_closing()


def test_a_large_burst_is_delivered_whole_in_bounded_pieces(pair):
    tls, tcp, app, client = _connected(pair)
    app.calls.clear()
    payloads = [bytes([i]) * 3000 for i in range(100)]  # 300 KB of records in one read
    tls.data_received(_records(client, *payloads))
    assert b"".join(app.calls) == b"".join(payloads)
    assert len(app.calls) < len(payloads) and max(map(len, app.calls)) <= 65536 + 16384
