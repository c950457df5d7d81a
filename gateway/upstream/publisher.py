"""The gateway's own messages to the broker (events it publishes, such as `$aws/events/certificates/registered/...`):
one short MQTT 3.1.1 connection over the gateway's authenticated upstream channel per batch, QoS 1, acknowledged.

The broker sees the gateway's identity (its client certificate, or its username on a unix socket), never a device's.
Devices receive these messages through the gateway like any other, subject to `iot:Subscribe` / `iot:Receive`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence

from gateway.mqtt import Connack, Connect, Disconnect, Framer, PubAck, Publish, decode, encode
from gateway.upstream.link import UpstreamConnector, UpstreamError


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.framer = Framer(protocol_level=4)
        self.packets: asyncio.Queue = asyncio.Queue()
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        try:
            for frame in self.framer.feed(data):
                self.packets.put_nowait(decode(frame, 4))
        except Exception as exc:  # noqa: BLE001 - a broker that sends garbage ends this connection
            if not self.lost.done():
                self.lost.set_exception(UpstreamError(f"the broker sent what is not MQTT: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_exception(UpstreamError(f"the broker closed the connection{f': {exc}' if exc else ''}"))


async def _next(proto: _Collect, kind: type):
    getter = asyncio.ensure_future(proto.packets.get())
    try:
        await asyncio.wait({getter, proto.lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if not getter.done() or getter.cancelled():
        proto.lost.result()  # raises why the connection ended
    packet = getter.result()
    if not isinstance(packet, kind):
        raise UpstreamError(f"the broker answered {type(packet).__name__} where {kind.__name__} was expected")
    return packet


async def publish(connector: UpstreamConnector, messages: Sequence[tuple[str, bytes]], *,
                  timeout: float = 5.0) -> None:
    """Publish (topic, payload) pairs at QoS 1; returns when the broker acknowledged all of them (UpstreamError,
    OSError or TimeoutError otherwise)."""
    if not messages:
        return
    proto: _Collect | None = None

    def factory() -> _Collect:
        nonlocal proto
        proto = _Collect()
        return proto

    async with asyncio.timeout(timeout):
        transport = await connector.open(factory)
        try:
            assert proto is not None
            transport.write(encode(Connect(client_id=f"iotgate-events-{secrets.token_hex(6)}", protocol_level=4,
                                           clean_start=True, keep_alive=60, username=connector.username,
                                           password=connector.password)))
            connack = await _next(proto, Connack)
            if connack.reason_code != 0:
                raise UpstreamError(f"the broker refused the gateway's event connection (CONNACK {connack.reason_code})")
            for packet_id, (topic, payload) in enumerate(messages, start=1):
                transport.write(encode(Publish(topic, payload, qos=1, packet_id=packet_id), 4))
                ack = await _next(proto, PubAck)
                if ack.packet_id != packet_id:
                    raise UpstreamError(f"the broker acknowledged packet {ack.packet_id}, not {packet_id}")
            transport.write(encode(Disconnect(), 4))
        finally:
            transport.close()
