"""The device client against a real Mosquitto (mTLS, certificate CN = username, per-device ACL) on an ephemeral
loopback port, over both transports and both protocol levels.

Devices are provisioned through the Python API into this module's own home; the brokers are this module's own
(the ACL lets each device use dt/<its CN>/#, cmd/<its CN>/# and the shared room/#). Nothing sleeps to wait:
every wait is on an event (a CONNACK, a message, a link closing) under a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import ssl
from collections.abc import Awaitable
from pathlib import Path

import pytest
import uvloop

from certs.store import PKIStore
from devices.backoff import Backoff
from devices.client import ClientOptions, DeviceClient, DisconnectNotice, Reason
from devices.identity import DeviceIdentity, make_key_and_csr, write_device_dir
from devices.limits import source_addresses
from devices.transport import Endpoint, session_context
from gateway.mqtt import ConnectReturnCode, PingReq, PingResp, Publish, ReasonCode, Will
from gateway.registry import Registry
from gateway.upstream.mosquitto import BrokerConfig, MosquittoProcess, free_port
from devices.provisioning import ensure_policy, provision_fleet, register_own_cas, thing_names

TRANSPORTS = ["membio", "stdlib"]
LEVELS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]
ACL = "pattern readwrite dt/%u/#\npattern readwrite cmd/%u/#\npattern readwrite room/#\n"
# clientid_prefixes: any other client id is refused with CONNACK "not authorized" (as AWS IoT Core refuses a
# client id its policy does not allow); max_keepalive: a v5 client asking for more is told the maximum
BROKER_SETTINGS = "clientid_prefixes dev-\nmax_keepalive 100\nset_tcp_nodelay true\n"
WAIT = 10.0
_ids = itertools.count(1)


@dataclasses.dataclass
class Home:
    store: PKIStore
    foreign: PKIStore
    now: dt.datetime

    def identity(self, thing: str) -> DeviceIdentity:
        return DeviceIdentity.load(self.store.paths.devices / thing)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    base = tmp_path_factory.mktemp("device-home")
    now = dt.datetime.now(dt.UTC)
    store = PKIStore(base / "home")
    store.init(now=now)
    registry = Registry.open(f"sqlite:///{base / 'registry.db'}")
    try:
        register_own_cas(registry, store)
        policy = ensure_policy(registry, None)
        provision_fleet(store, registry, store.load_issuer(), thing_names("dev-", 6), policies=[policy],
                        key_type="ec-p256", workers=1, now=now, days=1)
    finally:
        registry.close()
    # another PKI: its server certificate for an impostor broker, its issuer for an intruding device
    foreign = PKIStore(base / "foreign")
    foreign.init(now=now)
    key, csr = make_key_and_csr("intruder")
    issuer = foreign.load_issuer()
    cert = issuer.sign_device_csr(csr, "intruder", now=now)
    write_device_dir(store.paths.devices, "intruder", key, issuer.pem_with_chain(cert), store.root_pem())
    return Home(store, foreign, now)


def start_broker(store: PKIStore, directory: Path, port: int | None = None) -> MosquittoProcess:
    cfg = BrokerConfig(store.paths, directory, port=port or free_port(), acl_extra=ACL, clients="devices",
                       extra_config=BROKER_SETTINGS)
    return MosquittoProcess(cfg).start()


@pytest.fixture(scope="module")
def broker(home, tmp_path_factory):
    proc = start_broker(home.store, tmp_path_factory.mktemp("device-broker"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def impostor(home, tmp_path_factory):
    """A broker whose server certificate comes from another CA."""
    proc = start_broker(home.foreign, tmp_path_factory.mktemp("impostor-broker"))
    yield proc
    proc.stop()


def run(coro: Awaitable, timeout: float = 20.0):
    async def main():
        async with asyncio.timeout(timeout):
            return await coro
    return uvloop.run(main())


def device(home: Home, thing: str, port: int, *, transport: str = "membio", level: int = 4,
           client_id: str | None = None, endpoint: Endpoint | None = None, **kwargs) -> DeviceClient:
    options = kwargs.pop("options", None) or ClientOptions(protocol_level=level)
    return DeviceClient(home.identity(thing), endpoint or Endpoint("localhost", port), transport=transport,
                        client_id=client_id or f"{thing}-{next(_ids)}", options=options, **kwargs)


async def next_message(messages, timeout: float = WAIT) -> Publish:
    async with asyncio.timeout(timeout):
        return await anext(messages)


def disconnect_waiter(client: DeviceClient) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    client.on_disconnect = lambda notice: future.done() or future.set_result(notice)
    return future


# --------------------------------------------------------------------------------------------- connecting

@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_records_timings_and_disconnects(home, broker, transport, level) -> None:
    async def scenario():
        client = device(home, "dev-00001", broker.config.port, transport=transport, level=level)
        outcome = await client.connect()
        assert outcome.ok and outcome.reason is Reason.CONNECTED and outcome.code == 0, outcome
        assert not outcome.session_present
        assert outcome.tls_version in ("TLSv1.2", "TLSv1.3")
        t = outcome.timings
        assert all(v is not None and v >= 0 for v in (t.dns, t.tcp, t.tls, t.connack))
        assert t.total >= t.tcp + t.tls + t.connack
        assert client.connected
        closed = disconnect_waiter(client)
        await client.disconnect()
        assert (await closed).reason == "client" and not client.connected
    run(scenario())


@pytest.mark.parametrize("level,code,detail", [(4, ConnectReturnCode.NOT_AUTHORIZED, "NOT_AUTHORIZED (0x05)"),
                                               (5, ReasonCode.NOT_AUTHORIZED, "NOT_AUTHORIZED (0x87)")])
def test_connack_refusal_is_a_value(home, broker, level, code, detail) -> None:
    async def scenario():
        client = device(home, "dev-00001", broker.config.port, level=level, client_id="rogue-1")
        outcome = await client.connect()
        assert not outcome.ok and outcome.reason is Reason.REFUSED and outcome.code == code
        assert outcome.detail == detail and outcome.timings.connack is not None
        assert not client.connected
    run(scenario())


def test_v5_server_keep_alive_is_adopted(home, broker) -> None:
    async def scenario():
        client = device(home, "dev-00001", broker.config.port,
                        options=ClientOptions(protocol_level=5, keep_alive=200))
        assert (await client.connect()).ok
        assert client.core.keep_alive == 100
        await client.disconnect()
    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_keepalive_pings(home, broker, transport) -> None:
    async def scenario():
        pong = asyncio.get_running_loop().create_future()
        seen = []

        def trace(direction, packet):
            seen.append((direction, type(packet)))
            if isinstance(packet, PingResp) and not pong.done():
                pong.set_result(None)

        client = device(home, "dev-00002", broker.config.port, transport=transport, trace=trace,
                        options=ClientOptions(keep_alive=1, ping_timeout=1))
        assert (await client.connect()).ok
        await pong
        assert ("out", PingReq) in seen and client.connected
        await client.disconnect()
    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sni_alpn_and_the_devices_own_certificate_reach_the_server(home, transport) -> None:
    """What an AWS IoT Core endpoint on 443 sees: SNI = the endpoint name, ALPN x-amzn-mqtt-ca, and the
    device's certificate (here a local TLS server standing in for it)."""
    async def scenario():
        seen: dict = {}
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(home.store.paths.server_cert, home.store.paths.server_key)
        server_ctx.load_verify_locations(home.store.paths.chain)
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        server_ctx.set_alpn_protocols(["x-amzn-mqtt-ca"])
        server_ctx.sni_callback = lambda sslobj, name, ctx: seen.__setitem__("sni", name)

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                sslobj = transport.get_extra_info("ssl_object")
                seen["alpn"] = sslobj.selected_alpn_protocol()
                seen["subject"] = dict(x[0] for x in sslobj.getpeercert()["subject"])
                self.transport = transport

            def data_received(self, data):
                self.transport.write(b"\x20\x02\x00\x00")         # CONNACK accepted

        server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        endpoint = dataclasses.replace(Endpoint.aws("localhost", 443), host="127.0.0.1", port=port)
        assert endpoint.alpn == ("x-amzn-mqtt-ca",) and endpoint.sni == "localhost"
        client = device(home, "dev-00002", 0, transport=transport, endpoint=endpoint)
        assert (await client.connect()).ok
        assert seen == {"sni": "localhost", "alpn": "x-amzn-mqtt-ca", "subject": {"commonName": "dev-00002"}}
        client.abort()
        server.close()
    run(scenario())


@pytest.mark.parametrize("transport,keep_context,held", [("membio", None, False), ("membio", True, True),
                                                         ("stdlib", None, True)])
def test_identity_context_lifetime(home, broker, transport, keep_context, held) -> None:
    """membio lends the identity's SSLContext to the connection for the handshake only: afterwards the
    connection runs on the shared certificate-less session context and the device holds no context."""
    async def scenario():
        client = device(home, "dev-00001", broker.config.port, transport=transport, keep_context=keep_context)
        assert (await client.connect()).ok
        assert client.tls.holds_context is held
        if transport == "membio":
            link = client._link
            assert link._ssl.context is session_context()
            assert link._outgoing.pending == 0                      # the buffer-releasing empty write sent nothing
            assert (await client.publish("dt/dev-00001/t", b"after", qos=1)).ok
        await client.disconnect()
        if held:
            assert (await client.connect()).ok                      # reused across reconnects
            await client.disconnect()
    run(scenario())


# --------------------------------------------------------------------------------------------- messages

@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_publish_and_subscribe_between_two_devices(home, broker, transport, level) -> None:
    async def scenario():
        port = broker.config.port
        sender = device(home, "dev-00001", port, transport=transport, level=level)
        receiver = device(home, "dev-00002", port, transport=transport, level=level)
        assert (await sender.connect()).ok and (await receiver.connect()).ok
        messages = receiver.messages()
        sub = await receiver.subscribe("room/+/t", "cmd/dev-00002/#", qos=1)
        assert sub.ok and sub.reason_codes == (1, 1) and sub.latency > 0
        assert (await sender.publish("room/a/t", b"qos0", qos=0)).reason == "sent"
        first = await next_message(messages)
        assert (first.topic, first.payload, first.qos) == ("room/a/t", b"qos0", 0)
        result = await sender.publish("room/b/t", b"qos1" * 100, qos=1)
        assert result.ok and result.reason == "acked" and result.packet_id is not None and result.latency > 0
        second = await next_message(messages)
        assert (second.topic, second.payload, second.qos) == ("room/b/t", b"qos1" * 100, 1)
        unsub = await receiver.unsubscribe("room/+/t")
        assert unsub.ok and unsub.reason == "unsubscribed"
        assert unsub.reason_codes == ((0,) if level == 5 else ())
        await sender.disconnect()
        await receiver.disconnect()
    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_large_payloads_cross_intact(home, broker, transport) -> None:
    async def scenario():
        port = broker.config.port
        sender = device(home, "dev-00004", port, transport=transport)
        receiver = device(home, "dev-00005", port, transport=transport)
        assert (await sender.connect()).ok and (await receiver.connect()).ok
        messages = receiver.messages()
        assert (await receiver.subscribe("room/big")).ok
        payload = bytes(range(256)) * 400                           # 100 KiB: many TLS records
        assert (await sender.publish("room/big", payload, qos=1)).ok
        assert (await next_message(messages)).payload == payload
        await sender.disconnect()
        await receiver.disconnect()
    run(scenario())


def test_v5_publish_outside_the_acl_is_refused_with_its_reason_code(home, broker) -> None:
    async def scenario():
        client = device(home, "dev-00003", broker.config.port, level=5)
        assert (await client.connect()).ok
        refused = await client.publish("dt/dev-00001/spoof", b"x", qos=1)
        assert not refused.ok and refused.reason == "refused" and refused.reason_code == ReasonCode.NOT_AUTHORIZED
        assert (await client.publish("dt/dev-00003/t", b"x", qos=1)).ok
        await client.disconnect()
    run(scenario())


def test_v5_will_is_published_when_a_device_drops(home, broker) -> None:
    async def scenario():
        port = broker.config.port
        watcher = device(home, "dev-00004", port, level=5)
        assert (await watcher.connect()).ok
        messages = watcher.messages()
        assert (await watcher.subscribe("room/wills")).ok
        options = ClientOptions(protocol_level=5, will=Will("room/wills", b"dev-00005 gone", 1))
        dropping = device(home, "dev-00005", port, options=options)
        assert (await dropping.connect()).ok
        lost = disconnect_waiter(dropping)
        dropping.abort()
        assert (await lost).reason == "aborted"
        will = await next_message(messages)
        assert will.payload == b"dev-00005 gone"
        await watcher.disconnect()
    run(scenario())


# --------------------------------------------------------------------------------------------- sessions

@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unacknowledged_qos1_is_resent_with_dup_and_same_id_after_abrupt_loss(home, broker, transport,
                                                                              level) -> None:
    """[MQTT-4.4.0-1]: the PUBLISH reached the server (the subscriber got it) but its PUBACK was never read
    (the device stopped reading), then the connection died; the persistent session's re-send carries DUP=1
    and the original packet id, and the original publish() completes on the PUBACK of the re-send."""
    async def scenario():
        port = broker.config.port
        listener = device(home, "dev-00002", port, transport=transport, level=level)
        assert (await listener.connect()).ok
        messages = listener.messages()
        assert (await listener.subscribe("room/resend")).ok

        sent = []
        options = ClientOptions(protocol_level=level, clean_start=False,
                                session_expiry=60 if level == 5 else 0)
        publisher = device(home, "dev-00001", port, transport=transport, options=options,
                           trace=lambda d, p: sent.append(p) if d == "out" and isinstance(p, Publish) else None)
        assert (await publisher.connect()).ok
        publisher.pause_reading()
        pending = asyncio.ensure_future(publisher.publish("room/resend", b"m1", qos=1))
        assert (await next_message(messages)).payload == b"m1"     # the server has it
        assert not pending.done()                                   # ...but its PUBACK was not read
        lost = disconnect_waiter(publisher)
        publisher.abort()
        await lost
        assert publisher.core.inflight == (sent[0].packet_id,)

        outcome = await publisher.connect()
        assert outcome.ok and outcome.session_present
        result = await pending
        assert result.ok and result.packet_id == sent[0].packet_id
        first, again = sent
        assert (first.dup, again.dup) == (False, True)
        assert again.packet_id == first.packet_id and again.payload == first.payload
        assert (await next_message(messages)).payload == b"m1"     # at least once: delivered again
        assert publisher.core.inflight == ()
        await publisher.disconnect()
        await listener.disconnect()
    run(scenario())


@pytest.mark.parametrize("level", LEVELS)
def test_persistent_session_keeps_subscriptions_and_queues_messages(home, broker, level) -> None:
    async def scenario():
        port = broker.config.port
        options = ClientOptions(protocol_level=level, clean_start=False, session_expiry=60 if level == 5 else 0)
        sleeper = device(home, "dev-00003", port, options=options)
        assert (await sleeper.connect()).ok
        assert (await sleeper.subscribe("cmd/dev-00003/#", qos=1)).ok
        await sleeper.disconnect()

        sender = device(home, "dev-00003", port, level=level)  # same identity, its own client id
        assert (await sender.connect()).ok
        assert (await sender.publish("cmd/dev-00003/wake", b"queued", qos=1)).ok
        await sender.disconnect()

        messages = sleeper.messages()
        outcome = await sleeper.connect()                         # no SUBSCRIBE this time
        assert outcome.ok and outcome.session_present
        message = await next_message(messages)
        assert (message.topic, message.payload) == ("cmd/dev-00003/wake", b"queued")
        await sleeper.disconnect()
    run(scenario())


# --------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_certificate_from_another_ca_is_refused(home, impostor, transport) -> None:
    async def scenario():
        outcome = await device(home, "dev-00001", impostor.config.port, transport=transport).connect()
        assert not outcome.ok and outcome.reason is Reason.TLS and outcome.stage == "tls"
        assert outcome.detail.startswith("CERTIFICATE_VERIFY_FAILED")
        assert "unable to get local issuer certificate" in outcome.detail
        assert outcome.timings.tcp is not None and outcome.timings.tls is None
    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_name_mismatch_is_refused(home, broker, transport) -> None:
    async def scenario():
        endpoint = Endpoint("127.0.0.1", broker.config.port, server_name="iot.example.com")
        outcome = await device(home, "dev-00001", 0, transport=transport, endpoint=endpoint).connect()
        assert not outcome.ok and outcome.reason is Reason.TLS
        assert outcome.detail.startswith("CERTIFICATE_VERIFY_FAILED") and "mismatch" in outcome.detail.lower()
    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_certificate_from_an_unknown_ca_is_refused(home, broker, transport) -> None:
    async def scenario():
        outcome = await device(home, "intruder", broker.config.port, transport=transport).connect()
        assert not outcome.ok, outcome
        # TLS 1.3: the client's side of the handshake completes, then the server's alert arrives -- unless the
        # client's CONNECT crossed it and the server's reset discarded the alert: a close before CONNACK.
        if outcome.reason is Reason.CLOSED and "reset" in outcome.detail.lower():
            return
        assert outcome.reason is Reason.TLS, outcome
        assert outcome.detail.startswith("TLSV1_ALERT_UNKNOWN_CA") and outcome.stage == "tls"
    run(scenario())


def test_nothing_listening_is_a_tcp_outcome(home) -> None:
    async def scenario():
        outcome = await device(home, "dev-00001", free_port()).connect()
        assert not outcome.ok and outcome.reason is Reason.TCP and outcome.detail.startswith("ECONNREFUSED")
    run(scenario())


def test_missing_key_is_an_identity_outcome(home, tmp_path) -> None:
    async def scenario():
        identity = dataclasses.replace(home.identity("dev-00001"), key_file=str(tmp_path / "gone.key"))
        client = DeviceClient(identity, Endpoint("localhost", free_port()))
        outcome = await client.connect()
        assert not outcome.ok and outcome.reason is Reason.IDENTITY and "gone.key" in outcome.detail
    run(scenario())


# --------------------------------------------------------------------------------------------- reconnects

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reconnects_with_backoff_until_the_broker_is_back(home, tmp_path, transport) -> None:
    port = free_port()
    brokers: list[MosquittoProcess] = []

    async def scenario():
        outcomes = []
        failures = asyncio.get_running_loop().create_future()

        def on_outcome(outcome):
            outcomes.append(outcome)
            if sum(not o.ok for o in outcomes) >= 3 and not failures.done():
                failures.set_result(None)

        client = device(home, "dev-00006", port, transport=transport, on_outcome=on_outcome,
                        backoff=Backoff(base=0.02, cap=0.1, random=lambda: 1.0))
        client.start()
        await failures                                   # nobody listening: refused, backing off
        assert {o.reason for o in outcomes} == {Reason.TCP} and client.backoff.attempts >= 3
        brokers.append(start_broker(home.store, tmp_path / "b1", port))
        assert (await client.wait_connected()).ok
        lost = disconnect_waiter(client)
        brokers[0].kill()                                # the broker crashes under a live session
        notice: DisconnectNotice = await lost
        assert notice.reason == "closed", notice
        brokers.append(start_broker(home.store, tmp_path / "b2", port))
        assert (await client.wait_connected()).ok
        await client.disconnect()
        assert not client.connected and client._reconnect is None

    try:
        run(scenario())
    finally:
        for proc in brokers:
            proc.stop()


def test_devices_spread_over_loopback_source_addresses(home, broker) -> None:
    async def scenario():
        port = broker.config.port
        names = thing_names("dev-", 6)
        clients = [device(home, name, port, local_addr=addr)
                   for name, addr in zip(names, source_addresses(len(names), "127.0.0.1"))]
        outcomes = await asyncio.gather(*(c.connect() for c in clients))
        assert all(o.ok for o in outcomes)
        await asyncio.gather(*(c.disconnect() for c in clients))
    run(scenario())
    log = broker.log_path.read_text()
    for i in range(2, 8):
        assert f"New connection from 127.0.0.{i}:" in log
