"""Topic names, topic filters and matching (MQTT 3.1.1 / 5.0 §4.7, shared subscriptions §4.8.2).

``validate_*`` raise :class:`MQTTProtocolError` (the text came from a peer); ``is_valid_*`` answer
with a bool. Clause numbers follow the protocol level given (3.1.1 numbers the wildcard rules
4.7.1-1..3, 5.0 numbers them 4.7.0-1 and 4.7.1-1..2).
"""

from __future__ import annotations

from gateway.mqtt.errors import MQTTProtocolError
from gateway.mqtt.reason_codes import ReasonCode
from gateway.mqtt.wire import clause

__all__ = [
    "SHARED_PREFIX",
    "is_valid_topic_filter",
    "is_valid_topic_name",
    "split_shared_subscription",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]

SHARED_PREFIX = "$share/"


def _common_problem(text: str, level: int | None, kind: str) -> tuple[str, str] | None:
    if not text:
        return f"{kind} is empty", "[MQTT-4.7.3-1]"
    if "\x00" in text:
        return f"{kind} contains U+0000", "[MQTT-4.7.3-2]"
    if len(text) > 16383 and len(text.encode("utf-8", "surrogatepass")) > 0xFFFF:
        return f"{kind} is longer than 65535 bytes of UTF-8", "[MQTT-4.7.3-3]"
    return None


def topic_name_problem(
    topic: str, protocol_level: int | None = 5, wildcard_clause: str | None = None
) -> tuple[str, str] | None:
    """``(message, clause)`` saying why ``topic`` is not a valid Topic Name, or ``None``."""
    problem = _common_problem(topic, protocol_level, "topic name")
    if problem is not None:
        return problem
    if "+" in topic or "#" in topic:
        return (
            f"topic name {topic!r} contains a wildcard",
            wildcard_clause or clause(protocol_level, "[MQTT-4.7.1-1]", "[MQTT-4.7.0-1]"),
        )
    return None


def topic_filter_problem(
    topic_filter: str, protocol_level: int | None = 5
) -> tuple[str, str] | None:
    """``(message, clause)`` saying why ``topic_filter`` is not a valid Topic Filter, or ``None``.

    On MQTT 5 a filter starting with ``$share/`` must be a well-formed shared subscription.
    """
    problem = _common_problem(topic_filter, protocol_level, "topic filter")
    if problem is not None:
        return problem
    text = topic_filter
    if protocol_level != 4 and topic_filter.startswith(SHARED_PREFIX):
        share_name, sep, text = topic_filter[len(SHARED_PREFIX) :].partition("/")
        if not share_name or "+" in share_name or "#" in share_name or not sep or not text:
            return (
                f"shared subscription {topic_filter!r} is not $share/<name>/<filter> with a "
                "name free of '/', '+', '#' and a non-empty filter",
                "[MQTT-4.8.2-1]" if not share_name or "+" in share_name or "#" in share_name
                else "[MQTT-4.8.2-2]",
            )
    if "+" not in text and "#" not in text:
        return None
    hash_pos = text.find("#")
    if hash_pos != -1 and (
        hash_pos != len(text) - 1 or (hash_pos > 0 and text[hash_pos - 1] != "/")
    ):
        return (
            f"topic filter {topic_filter!r}: '#' must be the last level, on its own",
            clause(protocol_level, "[MQTT-4.7.1-2]", "[MQTT-4.7.1-1]"),
        )
    if "+" in text:
        for level in text.split("/"):
            if "+" in level and level != "+":
                return (
                    f"topic filter {topic_filter!r}: '+' must occupy a whole level",
                    clause(protocol_level, "[MQTT-4.7.1-3]", "[MQTT-4.7.1-2]"),
                )
    return None


def validate_topic_name(topic: str, protocol_level: int | None = 5) -> None:
    """Raise :class:`MQTTProtocolError` (``TOPIC_NAME_INVALID``) unless ``topic`` is valid."""
    problem = topic_name_problem(topic, protocol_level)
    if problem is not None:
        raise MQTTProtocolError(
            problem[0], ReasonCode.TOPIC_NAME_INVALID, problem[1], protocol_level=protocol_level
        )


def validate_topic_filter(topic_filter: str, protocol_level: int | None = 5) -> None:
    """Raise :class:`MQTTProtocolError` (``TOPIC_FILTER_INVALID``) unless the filter is valid."""
    problem = topic_filter_problem(topic_filter, protocol_level)
    if problem is not None:
        raise MQTTProtocolError(
            problem[0], ReasonCode.TOPIC_FILTER_INVALID, problem[1], protocol_level=protocol_level
        )


def is_valid_topic_name(topic: str) -> bool:
    return topic_name_problem(topic) is None


def is_valid_topic_filter(topic_filter: str, protocol_level: int | None = 5) -> bool:
    return topic_filter_problem(topic_filter, protocol_level) is None


def split_shared_subscription(topic_filter: str) -> tuple[str | None, str]:
    """``("group", "a/b")`` for ``"$share/group/a/b"``; ``(None, topic_filter)`` otherwise."""
    if topic_filter.startswith(SHARED_PREFIX):
        share_name, sep, rest = topic_filter[len(SHARED_PREFIX) :].partition("/")
        if share_name and sep and rest:
            return share_name, rest
    return None, topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a valid ``topic_filter`` matches the topic name ``topic`` (§4.7).

    A filter starting with a wildcard never matches a topic starting with ``$`` [MQTT-4.7.2-1].
    A shared subscription ``$share/<name>/<filter>`` matches what ``<filter>`` matches.
    """
    if topic_filter.startswith(SHARED_PREFIX):
        topic_filter = split_shared_subscription(topic_filter)[1]
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    if topic[:1] == "$" and topic_filter[0] in "+#":
        return False
    if topic_filter == "#":
        return True
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    ntopic = len(tlevels)
    for i, flevel in enumerate(flevels):
        if flevel == "#":
            return True
        if i >= ntopic:
            return False
        if flevel != "+" and flevel != tlevels[i]:
            return False
    return len(flevels) == ntopic
