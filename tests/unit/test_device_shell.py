"""The asyncio shell of the device client over an in-memory transport: awaitables, flow control, timeouts,
disconnect notices and reconnect scheduling, with the test playing the server."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import uvloop

from devices.backoff import Backoff
from devices.client import ClientOptions, DeviceClient, Reason
from devices.identity import DeviceIdentity
from devices.transport import Endpoint, Transport, TransportError
from gateway.mqtt import (
    Connack,
    Connect,
    Disconnect,
    Framer,
    PingReq,
    Properties,
    PubAck,
    Publish,
    ReasonCode,
    decode,
    encode,
)

IDENTITY = DeviceIdentity("dev-1", "/nonexistent/device.pem", "/nonexistent/device.key", "/nonexistent/ca.pem")


class FakeLink:
    def __init__(self, sink, level: int) -> None:
        self.sink = sink
        self.framer = Framer(1 << 20, protocol_level=level)
        self.level = level
        self.packets: list = []
        self.closed = False
        self.paused = False
        self._written = asyncio.Event()
        self.tls_version = "TLSv1.3"

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.packets.extend(decode(f, self.level) for f in self.framer.feed(data))
        self._written.set()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.sink.on_close, None)

    close = abort = _close

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    # the server's side
    async def read(self, kind: type):
        """The next packet of ``kind`` the client wrote."""
        while True:
            for i, packet in enumerate(self.packets):
                if isinstance(packet, kind):
                    return self.packets.pop(i)
            self._written.clear()
            await self._written.wait()

    def send(self, packet) -> None:
        self.sink.on_data(encode(packet, self.level))


class FakeTransport(Transport):
    name = "fake"

    def __init__(self, level: int = 4, *, hang: bool = False, fail: TransportError | None = None) -> None:
        self.level = level
        self.hang = hang
        self.fail = fail
        self.links: list[FakeLink] = []
        self.linked = asyncio.Queue()

    async def connect(self, endpoint, tls, handler, timings, *, local_addr=None, clock=None):
        timings.dns = 0.0
        if self.fail is not None:
            raise self.fail
        if self.hang:
            await asyncio.Event().wait()
        timings.tcp = timings.tls = 0.0
        link = FakeLink(handler, self.level)
        self.links.append(link)
        self.linked.put_nowait(link)
        return link


def client_for(transport: FakeTransport, **options) -> DeviceClient:
    kwargs = {k: options.pop(k) for k in ("backoff", "on_disconnect", "on_outcome") if k in options}
    return DeviceClient(IDENTITY, Endpoint("localhost"), transport=transport,
                        options=ClientOptions(protocol_level=transport.level, **options), **kwargs)


async def accept(client: DeviceClient, transport: FakeTransport, **connack) -> FakeLink:
    """Run client.connect() against the fake server and answer CONNACK."""
    task = asyncio.ensure_future(client.connect())
    link = await transport.linked.get()
    await link.read(Connect)
    link.send(Connack(**connack))
    outcome = await task
    assert outcome.ok == (connack.get("reason_code", 0) == 0)
    return link


def run(coro, timeout: float = 5.0):
    async def main():
        async with asyncio.timeout(timeout):
            return await coro
    return uvloop.run(main())


# --------------------------------------------------------------------------------------------- tests

def test_publish_waits_for_a_free_inflight_slot() -> None:
    async def scenario():
        transport = FakeTransport()
        client = client_for(transport, max_inflight=1)
        link = await accept(client, transport)
        first = asyncio.ensure_future(client.publish("t", b"1", qos=1))
        second = asyncio.ensure_future(client.publish("t", b"2", qos=1))
        p1 = await link.read(Publish)
        await asyncio.sleep(0)
        assert not link.packets and not second.done()     # the second waits for the slot
        link.send(PubAck(p1.packet_id))
        p2 = await link.read(Publish)
        assert (p1.payload, p2.payload) == (b"1", b"2")
        link.send(PubAck(p2.packet_id))
        assert (await first).ok and (await second).ok
    run(scenario())


def test_publish_timeout_stops_waiting_not_delivery() -> None:
    async def scenario():
        transport = FakeTransport()
        client = client_for(transport)
        link = await accept(client, transport)
        result = await client.publish("t", b"x", qos=1, timeout=0.01)
        assert not result.ok and result.reason == "timeout"
        assert client.core.inflight == ((await link.read(Publish)).packet_id,)
    run(scenario())


def test_qos0_without_a_connection_is_a_value() -> None:
    async def scenario():
        client = client_for(FakeTransport())
        assert (await client.publish("t", b"x")).reason == "not-connected"
        assert (await client.subscribe("t")).reason == "not-connected"
    run(scenario())


def test_v5_server_disconnect_is_noticed_and_the_device_reconnects() -> None:
    async def scenario():
        transport = FakeTransport(level=5)
        notices = asyncio.Queue()
        client = client_for(transport, backoff=Backoff(random=lambda: 0.0), on_disconnect=notices.put_nowait)
        client.start()
        link = await transport.linked.get()
        await link.read(Connect)
        link.send(Connack())
        await client.wait_connected()
        link.send(Disconnect(ReasonCode.SESSION_TAKEN_OVER, Properties(reason_string="another")))
        notice = await notices.get()
        assert (notice.reason, notice.code) == ("server", 0x8E) and link.closed
        again = await transport.linked.get()                 # backoff delay 0: reconnecting
        await again.read(Connect)
        again.send(Connack())
        assert (await client.wait_connected()).ok
        await client.disconnect()
        assert isinstance(again.packets[-1], Disconnect) and again.closed
    run(scenario())


def test_protocol_violation_while_connected_closes_with_a_reason() -> None:
    async def scenario():
        transport = FakeTransport(level=5)
        notices = asyncio.Queue()
        client = client_for(transport, on_disconnect=notices.put_nowait)
        link = await accept(client, transport)
        link.sink.on_data(b"\x00\x00")                       # reserved packet type
        notice = await notices.get()
        assert notice.reason == "protocol" and "reserved" in notice.detail
        assert isinstance(link.packets[-1], Disconnect) and link.packets[-1].reason_code == 0x81
    run(scenario())


def test_tls_error_on_a_live_connection_is_noticed_as_tls() -> None:
    async def scenario():
        transport = FakeTransport()
        notices = asyncio.Queue()
        client = client_for(transport, on_disconnect=notices.put_nowait)
        link = await accept(client, transport)
        link.closed = True
        error = ssl.SSLError(1, "[SSL: CERTIFICATE_REVOKED] revoked")
        error.reason = "SSLV3_ALERT_CERTIFICATE_REVOKED"
        link.sink.on_close(error)
        notice = await notices.get()
        assert notice.reason == "tls" and notice.detail.startswith("SSLV3_ALERT_CERTIFICATE_REVOKED")
    run(scenario())


def test_missing_pingresp_drops_the_connection() -> None:
    async def scenario():
        transport = FakeTransport()
        notices = asyncio.Queue()
        client = client_for(transport, keep_alive=1, ping_timeout=0.05, on_disconnect=notices.put_nowait)
        link = await accept(client, transport)
        await link.read(PingReq)                             # after 1 s of silence; never answered
        notice = await notices.get()
        assert notice.reason == "keepalive" and "PINGRESP" in notice.detail
    run(scenario())


def test_messages_apply_backpressure_and_are_counted_when_nobody_listens() -> None:
    async def scenario():
        transport = FakeTransport()
        client = client_for(transport, inbox_size=2)
        link = await accept(client, transport)
        link.send(Publish("cmd/dev-1/a", b"dropped"))
        assert client.messages_dropped == 1
        messages = client.messages()
        pending = asyncio.ensure_future(anext(messages))     # the iterator now exists
        await asyncio.sleep(0)
        for i in range(3):
            link.send(Publish("cmd/dev-1/a", b"%d" % i, 1, packet_id=i + 1))
        assert link.paused                                   # inbox full: reading stops
        assert [(await pending).payload, (await anext(messages)).payload] == [b"0", b"1"]
        assert not link.paused
        assert (await anext(messages)).payload == b"2"
        assert [p.packet_id for p in link.packets if isinstance(p, PubAck)] == [1, 2, 3]
    run(scenario())


@pytest.mark.parametrize("hang,expected", [(True, ("tcp", "no TCP within 0.05 s")),
                                           (False, ("mqtt", "no CONNACK within 0.05 s"))])
def test_connect_timeout_names_the_stage(hang, expected) -> None:
    async def scenario():
        transport = FakeTransport(hang=hang)
        outcomes = []
        client = client_for(transport, connect_timeout=0.05, on_outcome=outcomes.append)
        outcome = await client.connect()
        assert not outcome.ok and outcome.reason is Reason.TIMEOUT
        assert (outcome.stage, outcome.detail) == expected and outcomes == [outcome]
        assert all(link.closed for link in transport.links)
        assert not client.connected
    run(scenario())


def test_transport_failure_is_a_value() -> None:
    async def scenario():
        client = client_for(FakeTransport(fail=TransportError("tcp", "ECONNREFUSED", "Connection refused")))
        outcome = await client.connect()
        assert (outcome.reason, outcome.stage, outcome.detail) == (Reason.TCP, "tcp",
                                                                   "ECONNREFUSED: Connection refused")
    run(scenario())


def test_connect_twice_is_a_programming_error() -> None:
    async def scenario():
        transport = FakeTransport()
        client = client_for(transport)
        await accept(client, transport)
        with pytest.raises(RuntimeError, match="connect\\(\\) while connected"):
            await client.connect()
    run(scenario())


def test_disconnect_ends_waiting_publishes_as_closed() -> None:
    async def scenario():
        transport = FakeTransport()
        client = client_for(transport)
        link = await accept(client, transport)
        pending = asyncio.ensure_future(client.publish("t", b"x", qos=1))
        await link.read(Publish)
        await client.disconnect()
        result = await pending
        assert not result.ok and result.reason == "closed"
        assert client.core.inflight == (result.packet_id,)   # still owed: session state
    run(scenario())


def test_a_publish_closed_on_every_time_is_abandoned_after_max_resends() -> None:
    async def scenario():
        transport = FakeTransport()
        notices = asyncio.Queue()
        client = client_for(transport, clean_start=False, max_resends=0, on_disconnect=notices.put_nowait)
        link = await accept(client, transport)
        pending = asyncio.ensure_future(client.publish("dt/other/t", b"x", qos=1))
        await link.read(Publish)
        link.close()                                         # the server drops the connection instead of a PUBACK
        await notices.get()
        again = await accept(client, transport, session_present=True)
        result = await pending
        assert not result.ok and result.reason == "abandoned" and client.core.inflight == ()
        assert not [p for p in again.packets if isinstance(p, Publish)]
    run(scenario())
