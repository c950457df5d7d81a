"""MQTT with the device under test, over a :class:`~gateway.qualify.tls.TLSStream`, on the gateway's codec.

The endpoint is a minimal broker for one device: it reads packets (every one described in the case's evidence),
and a case decides what to answer. :func:`describe` renders a packet as a line of evidence.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from gateway.mqtt import (
    DEFAULT_MAX_PACKET_SIZE,
    Connack,
    Connect,
    ConnectReturnCode,
    Disconnect,
    Framer,
    MQTTProtocolError,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    ReasonCode,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    decode,
    encode,
)
from gateway.qualify.tls import TLSStream
from gateway.qualify.verdict import Timeline

__all__ = ["DeviceGone", "MalformedPacket", "MqttPeer", "describe"]


class DeviceGone(Exception):
    """The device closed the connection."""


class MalformedPacket(Exception):
    """The device sent bytes that are not valid MQTT; ``error`` carries the clause."""

    def __init__(self, error: MQTTProtocolError) -> None:
        super().__init__(str(error))
        self.error = error


def _level_name(level: int | None) -> str:
    return {4: "MQTT 3.1.1", 5: "MQTT 5.0"}.get(level or 0, "MQTT ?")


def describe(packet: Packet) -> str:
    """One line of evidence for a packet."""
    if isinstance(packet, Connect):
        parts = [f"CONNECT client id {packet.client_id!r}", _level_name(packet.protocol_level),
                 f"keep alive {packet.keep_alive} s", "clean start" if packet.clean_start else "persistent session"]
        if packet.username is not None:
            parts.append(f"username {packet.username!r}")
        if packet.password is not None:
            parts.append(f"password ({len(packet.password)} bytes)")
        if packet.will is not None:
            parts.append(f"will on {packet.will.topic!r} QoS {packet.will.qos}")
        return ", ".join(parts)
    if isinstance(packet, Publish):
        flags = "".join((" retain" if packet.retain else "", " dup" if packet.dup else ""))
        pid = f" id {packet.packet_id}" if packet.packet_id is not None else ""
        return f"PUBLISH {packet.topic!r} QoS {packet.qos}{pid}{flags}, {len(packet.payload)} bytes"
    if isinstance(packet, Subscribe):
        filters = ", ".join(f"{s.topic_filter!r} QoS {s.qos}" for s in packet.subscriptions)
        return f"SUBSCRIBE id {packet.packet_id}: {filters}"
    if isinstance(packet, Unsubscribe):
        return f"UNSUBSCRIBE id {packet.packet_id}: {', '.join(repr(f) for f in packet.topic_filters)}"
    if isinstance(packet, PubAck):
        return f"PUBACK id {packet.packet_id} code 0x{int(packet.reason_code):02X}"
    if isinstance(packet, SubAck):
        return f"SUBACK id {packet.packet_id}: {', '.join(f'0x{int(c):02X}' for c in packet.reason_codes)}"
    if isinstance(packet, Connack):
        return f"CONNACK code 0x{int(packet.reason_code):02X}, session present {int(packet.session_present)}"
    if isinstance(packet, Disconnect):
        return f"DISCONNECT code 0x{int(packet.reason_code):02X}"
    return type(packet).__name__.upper()


class MqttPeer:
    """Packets from and to the device. ``level`` is known once the CONNECT was read."""

    def __init__(self, stream: TLSStream, timeline: Timeline, *, clock: Callable[[], float] = time.monotonic,
                 max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self.stream = stream
        self.timeline = timeline
        self.clock = clock
        self.framer = Framer(max_packet_size)
        self.level: int | None = None
        self.connect: Connect | None = None
        self.last_rx: float | None = None
        self._frames: list = []
        self._aliases: dict[int, str] = {}

    async def packet(self, timeout: float | None) -> Packet:
        """The next packet (raises TimeoutError, DeviceGone, MalformedPacket)."""
        deadline = None if timeout is None else self.clock() + timeout
        while not self._frames:
            left = None if deadline is None else deadline - self.clock()
            if left is not None and left <= 0:
                raise TimeoutError
            data = await self.stream.read(left)
            if not data:
                self.timeline.device(f"closed the connection ({self.stream.close_detail})",
                                     when=self.stream.closed_at)
                raise DeviceGone(self.stream.close_detail)
            try:
                self._frames.extend(self.framer.feed(data))
            except MQTTProtocolError as exc:
                self.timeline.device(f"sent a malformed packet: {exc}")
                raise MalformedPacket(exc) from None
        frame = self._frames.pop(0)
        try:
            packet = decode(frame, self.level)
        except MQTTProtocolError as exc:
            self.timeline.device(f"sent a malformed packet: {exc}")
            raise MalformedPacket(exc) from None
        if isinstance(packet, Connect):
            if self.connect is not None:
                exc = MQTTProtocolError("a second CONNECT on one connection", ReasonCode.PROTOCOL_ERROR,
                                        "[MQTT-3.1.0-2]", protocol_level=self.level)
                self.timeline.device(f"sent a malformed packet: {exc}")
                raise MalformedPacket(exc)
            self.connect = packet
            self.level = packet.protocol_level
            self.framer.protocol_level = packet.protocol_level
        elif self.connect is None:
            exc = MQTTProtocolError(f"{type(packet).__name__.upper()} before CONNECT", ReasonCode.PROTOCOL_ERROR,
                                    "[MQTT-3.1.0-1]")
            self.timeline.device(f"sent a malformed packet: {exc}")
            raise MalformedPacket(exc)
        elif isinstance(packet, Publish):
            packet = self._resolve_alias(packet)
        self.last_rx = self.clock()
        self.timeline.device(describe(packet))
        return packet

    def _resolve_alias(self, packet: Publish) -> Publish:
        alias = packet.properties.topic_alias if self.level == 5 else None
        if alias is None:
            return packet
        if packet.topic:
            self._aliases[alias] = packet.topic
            return packet
        topic = self._aliases.get(alias)
        if topic is None:
            return packet
        return dataclasses.replace(packet, topic=topic)

    async def send(self, packet: Packet) -> bool:
        """Encode and send; False when the device is gone."""
        self.timeline.endpoint(describe(packet))
        return await self.stream.write(encode(packet, self.level))

    # ------------------------------------------------------------------ the broker's usual answers

    def connack(self, *, refuse: bool = False) -> Connack:
        if not refuse:
            return Connack(False, ReasonCode.SUCCESS)
        code = ConnectReturnCode.SERVER_UNAVAILABLE if self.level == 4 else ReasonCode.SERVER_UNAVAILABLE
        return Connack(False, code)

    def not_authorized(self) -> Connack:
        return Connack(False, ConnectReturnCode.NOT_AUTHORIZED if self.level == 4 else ReasonCode.NOT_AUTHORIZED)

    def answer(self, packet: Packet, *, granted: Callable[[str], bool] | None = None) -> Packet | None:
        """What a broker sends back for ``packet`` (None: nothing). ``granted(filter)`` refuses filters."""
        if isinstance(packet, PingReq):
            return PingResp()
        if isinstance(packet, Subscribe):
            codes = []
            for sub in packet.subscriptions:
                if granted is not None and not granted(sub.topic_filter):
                    codes.append(0x80 if self.level == 4 else int(ReasonCode.NOT_AUTHORIZED))
                else:
                    codes.append(min(sub.qos, 1))
            return SubAck(packet.packet_id, tuple(codes))
        if isinstance(packet, Unsubscribe):
            codes = () if self.level == 4 else tuple(0 for _ in packet.topic_filters)
            return UnsubAck(packet.packet_id, codes)
        if isinstance(packet, Publish) and packet.qos == 1:
            return PubAck(packet.packet_id)
        return None
