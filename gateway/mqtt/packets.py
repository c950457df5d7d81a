"""MQTT control packets as immutable values, the same for MQTT 3.1.1 and 5.0.

Fields that only exist in MQTT 5 (properties, reason codes of acknowledgements) keep their
defaults on 3.1.1. Reason codes decode to :class:`ReasonCode`; a 3.1.1 CONNACK return code
decodes to :class:`ConnectReturnCode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from gateway.mqtt.properties import NO_PROPERTIES, Properties
from gateway.mqtt.reason_codes import PacketType, ReasonCode

__all__ = [
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "Packet",
    "PingReq",
    "PingResp",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "Will",
]


@dataclass(frozen=True, slots=True)
class Will:
    """The Will Message of a CONNECT."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT. ``clean_start`` is MQTT 3.1.1's Clean Session flag (the same bit)."""

    client_id: str
    protocol_level: int = 4
    clean_start: bool = True
    keep_alive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = NO_PROPERTIES

    packet_type: ClassVar[PacketType] = PacketType.CONNECT


@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK. ``reason_code`` is a :class:`ConnectReturnCode` (0..5) on MQTT 3.1.1."""

    session_present: bool = False
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES

    packet_type: ClassVar[PacketType] = PacketType.CONNACK


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH. ``packet_id`` is ``None`` at QoS 0. On MQTT 5 ``topic`` may be empty when
    ``properties.topic_alias`` names a topic set earlier on the connection."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = NO_PROPERTIES

    packet_type: ClassVar[PacketType] = PacketType.PUBLISH


@dataclass(frozen=True, slots=True)
class _PublishResponse:
    packet_id: int
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES

    packet_type: ClassVar[PacketType]


@dataclass(frozen=True, slots=True)
class PubAck(_PublishResponse):
    packet_type: ClassVar[PacketType] = PacketType.PUBACK


@dataclass(frozen=True, slots=True)
class PubRec(_PublishResponse):
    packet_type: ClassVar[PacketType] = PacketType.PUBREC


@dataclass(frozen=True, slots=True)
class PubRel(_PublishResponse):
    packet_type: ClassVar[PacketType] = PacketType.PUBREL


@dataclass(frozen=True, slots=True)
class PubComp(_PublishResponse):
    packet_type: ClassVar[PacketType] = PacketType.PUBCOMP


@dataclass(frozen=True, slots=True)
class Subscription:
    """One topic filter of a SUBSCRIBE with its options (only ``qos`` exists on MQTT 3.1.1)."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES

    packet_type: ClassVar[PacketType] = PacketType.SUBSCRIBE


@dataclass(frozen=True, slots=True)
class SubAck:
    """SUBACK: one reason code per subscription (3.1.1: 0, 1, 2 or 0x80)."""

    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES

    packet_type: ClassVar[PacketType] = PacketType.SUBACK


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES

    packet_type: ClassVar[PacketType] = PacketType.UNSUBSCRIBE


@dataclass(frozen=True, slots=True)
class UnsubAck:
    """UNSUBACK: one reason code per topic filter on MQTT 5, none on MQTT 3.1.1."""

    packet_id: int
    reason_codes: tuple[int, ...] = ()
    properties: Properties = NO_PROPERTIES

    packet_type: ClassVar[PacketType] = PacketType.UNSUBACK


@dataclass(frozen=True, slots=True)
class PingReq:
    packet_type: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class PingResp:
    packet_type: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (reason and properties exist on MQTT 5 only)."""

    reason_code: int = ReasonCode.NORMAL_DISCONNECTION
    properties: Properties = NO_PROPERTIES

    packet_type: ClassVar[PacketType] = PacketType.DISCONNECT


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH (MQTT 5 only)."""

    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES

    packet_type: ClassVar[PacketType] = PacketType.AUTH


Packet = Union[
    Connect, Connack, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe, SubAck, Unsubscribe,
    UnsubAck, PingReq, PingResp, Disconnect, Auth,
]
