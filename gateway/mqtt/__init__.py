"""Sans-IO MQTT 3.1.1 + 5.0 codec shared by the gateway (server side) and the device client.

No sockets, no asyncio, no clocks: bytes in, frames and packet values out; packet values in, bytes
out.

    framer = Framer(max_packet_size=DEFAULT_MAX_PACKET_SIZE)
    for frame in framer.feed(data):               # raises MQTTProtocolError at a bad packet
        if frame.packet_type is PacketType.PUBLISH:
            header = peek_publish(frame, level)   # topic, qos, retain, dup, packet id, alias
            ...forward frame.data unchanged...
        else:
            packet = decode(frame, level)
"""

from gateway.mqtt.codec import (
    PROTOCOL_LEVELS,
    PublishHeader,
    decode,
    encode,
    peek_publish,
    rewrite_connect,
)
from gateway.mqtt.errors import MQTTError, MQTTLocalError, MQTTProtocolError
from gateway.mqtt.framer import (
    DEFAULT_MAX_PACKET_SIZE,
    MAX_PAYLOAD_SIZE,
    Frame,
    Framer,
    split_packet,
)
from gateway.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from gateway.mqtt.properties import NO_PROPERTIES, Properties, PropertyId
from gateway.mqtt.reason_codes import (
    ConnectReturnCode,
    PacketType,
    ReasonCode,
    connect_return_code_for,
)
from gateway.mqtt.topics import (
    is_valid_topic_filter,
    is_valid_topic_name,
    split_shared_subscription,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "MAX_PAYLOAD_SIZE",
    "NO_PROPERTIES",
    "PROTOCOL_LEVELS",
    "Auth",
    "Connack",
    "Connect",
    "ConnectReturnCode",
    "Disconnect",
    "Frame",
    "Framer",
    "MQTTError",
    "MQTTLocalError",
    "MQTTProtocolError",
    "Packet",
    "PacketType",
    "PingReq",
    "PingResp",
    "Properties",
    "PropertyId",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "PublishHeader",
    "ReasonCode",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "Will",
    "connect_return_code_for",
    "decode",
    "encode",
    "is_valid_topic_filter",
    "is_valid_topic_name",
    "peek_publish",
    "rewrite_connect",
    "split_packet",
    "split_shared_subscription",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]
