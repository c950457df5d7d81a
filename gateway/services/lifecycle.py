"""Lifecycle events as AWS IoT publishes them: a pure core (the shell passes the time, ids and versions).

    $aws/events/presence/connected/<clientId>        clientId, timestamp, eventType, sessionIdentifier,
                                                     principalIdentifier, ipAddress, versionNumber
    $aws/events/presence/disconnected/<clientId>     ... + clientInitiatedDisconnect, disconnectReason
    $aws/events/subscriptions/subscribed/<clientId>  clientId, timestamp, eventType, sessionIdentifier,
    $aws/events/subscriptions/unsubscribed/<clientId>  principalIdentifier, topics

``timestamp`` is epoch milliseconds; ``versionNumber`` grows with every connection of a client id, and the
disconnected event carries the version of its connected event (so a late event can be told from a new one).
"""

from __future__ import annotations

import dataclasses

import orjson

from gateway.services.base import Message

# How a gateway Close key reads as AWS's disconnectReason.
DISCONNECT_REASONS = {
    "disconnect": "CLIENT_INITIATED_DISCONNECT",
    "connection_lost": "CONNECTION_LOST",
    "session_taken_over": "DUPLICATE_CLIENTID",
    "keepalive_timeout": "MQTT_KEEP_ALIVE_TIMEOUT",
    "server_shutting_down": "SERVER_INITIATED_DISCONNECT",
    "upstream_lost": "SERVER_ERROR",
    "upstream_disconnect": "SERVER_ERROR",
    "upstream_protocol_error": "SERVER_ERROR",
    "internal_error": "SERVER_ERROR",
    "quota_exceeded": "THROTTLED",
    "device_not_reading": "THROTTLED",
    "receive_maximum_exceeded": "THROTTLED",
    "request_rate_exceeded": "THROTTLED",
    "disconnect_after": "CUSTOMAUTH_TTL_EXPIRATION",
    "publish_denied": "FORBIDDEN_ACCESS",
    "reserved_topic": "FORBIDDEN_ACCESS",
    "connect_denied": "AUTH_ERROR",
    "protocol_error": "CLIENT_ERROR",
    "malformed_packet": "CLIENT_ERROR",
    "packet_too_large": "CLIENT_ERROR",
    "payload_too_large": "CLIENT_ERROR",
    "qos_not_supported": "CLIENT_ERROR",
    "topic_alias_invalid": "CLIENT_ERROR",
    "topic_invalid": "CLIENT_ERROR",
    "subscription_identifiers": "CLIENT_ERROR",
}
AUTH_KEY_PREFIXES = ("certificate_", "ca_", "access_key_", "authorizer_", "policy_", "session_token_")


def disconnect_reason(key: str) -> str:
    if key in DISCONNECT_REASONS:
        return DISCONNECT_REASONS[key]
    if key.startswith(AUTH_KEY_PREFIXES):
        return "AUTH_ERROR"
    return "SERVER_INITIATED_DISCONNECT"


@dataclasses.dataclass(frozen=True, slots=True)
class Presence:
    """One connection, as its lifecycle events name it."""

    client_id: str
    session_id: str
    principal_id: str | None
    ip: str
    version: int


def _base(p: Presence, event: str, now_ms: int) -> dict:
    return {"clientId": p.client_id, "timestamp": now_ms, "eventType": event, "sessionIdentifier": p.session_id,
            "principalIdentifier": p.principal_id}


def connected(p: Presence, now_ms: int) -> Message:
    doc = _base(p, "connected", now_ms) | {"ipAddress": p.ip, "versionNumber": p.version}
    return Message(f"$aws/events/presence/connected/{p.client_id}", orjson.dumps(doc))


def disconnected(p: Presence, now_ms: int, close_key: str) -> Message:
    reason = disconnect_reason(close_key)
    doc = _base(p, "disconnected", now_ms) | {
        "ipAddress": p.ip, "versionNumber": p.version,
        "clientInitiatedDisconnect": reason == "CLIENT_INITIATED_DISCONNECT", "disconnectReason": reason}
    return Message(f"$aws/events/presence/disconnected/{p.client_id}", orjson.dumps(doc))


def subscriptions(p: Presence, now_ms: int, event: str, topics: list[str]) -> Message:
    doc = _base(p, event, now_ms) | {"topics": topics}
    return Message(f"$aws/events/subscriptions/{event}/{p.client_id}", orjson.dumps(doc))
