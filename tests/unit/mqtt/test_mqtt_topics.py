"""Topic names, topic filters and matching (§4.7, §4.8.2)."""

from __future__ import annotations

import pytest

from gateway.mqtt import (
    MQTTProtocolError,
    ReasonCode,
    is_valid_topic_filter,
    is_valid_topic_name,
    split_shared_subscription,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

MATCHES = [
    # filter, topic, matches
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/b", "a/b/", False),
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/+", "a/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("a/#", "a", True),
    ("a/#", "a/b/c", True),
    ("a/#", "ab", False),
    ("#", "a/b/c", True),
    ("#", "/", True),
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+/#", "a/b", True),
    ("+/b/#", "x/b", True),
    ("+/b/#", "x/c/d", False),
    ("A/b", "a/b", False),
    # $-topics are not matched by filters that start with a wildcard [MQTT-4.7.2-1]
    ("#", "$SYS/broker/load", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$aws/things/+/shadow/#", "$aws/things/t1/shadow/update", True),
    ("#", "$aws/things/t1/shadow/update", False),
    ("a/#", "a/$x", True),
    # shared subscriptions match what their filter matches
    ("$share/g/a/+", "a/b", True),
    ("$share/g/#", "$SYS/x", False),
    ("$share/g/a", "$share/g/a", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCHES)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


VALID_FILTERS = ["a", "/", "a/b", "+", "#", "+/+", "a/+/c", "a/#", "+/#", "/#", "$SYS/#",
                 "$share/g/a/#", "sport/tennis/+", "😀/+", "a//b", "//"]
INVALID_FILTERS = [
    ("", "[MQTT-4.7.3-1]", "[MQTT-4.7.3-1]"),
    ("a\x00", "[MQTT-4.7.3-2]", "[MQTT-4.7.3-2]"),
    ("a/#/b", "[MQTT-4.7.1-2]", "[MQTT-4.7.1-1]"),
    ("#/", "[MQTT-4.7.1-2]", "[MQTT-4.7.1-1]"),
    ("a#", "[MQTT-4.7.1-2]", "[MQTT-4.7.1-1]"),
    ("##", "[MQTT-4.7.1-2]", "[MQTT-4.7.1-1]"),
    ("a/b+", "[MQTT-4.7.1-3]", "[MQTT-4.7.1-2]"),
    ("+a", "[MQTT-4.7.1-3]", "[MQTT-4.7.1-2]"),
    ("a/++/b", "[MQTT-4.7.1-3]", "[MQTT-4.7.1-2]"),
    ("x" * 65536, "[MQTT-4.7.3-3]", "[MQTT-4.7.3-3]"),
]


@pytest.mark.parametrize("topic_filter", VALID_FILTERS)
def test_valid_filters(topic_filter: str) -> None:
    for level in (4, 5):
        validate_topic_filter(topic_filter, level)
    assert is_valid_topic_filter(topic_filter)


@pytest.mark.parametrize(("topic_filter", "clause_v4", "clause_v5"), INVALID_FILTERS,
                         ids=lambda v: v[:20] if isinstance(v, str) else None)
def test_invalid_filters(topic_filter: str, clause_v4: str, clause_v5: str) -> None:
    for level, clause in ((4, clause_v4), (5, clause_v5)):
        with pytest.raises(MQTTProtocolError) as info:
            validate_topic_filter(topic_filter, level)
        assert info.value.reason_code is ReasonCode.TOPIC_FILTER_INVALID
        assert info.value.clause == clause
    assert not is_valid_topic_filter(topic_filter)


@pytest.mark.parametrize(
    ("topic_filter", "clause"),
    [("$share/", "[MQTT-4.8.2-1]"), ("$share//a", "[MQTT-4.8.2-1]"),
     ("$share/a#/b", "[MQTT-4.8.2-1]"), ("$share/g", "[MQTT-4.8.2-2]"),
     ("$share/g/", "[MQTT-4.8.2-2]"),
     ("$share/g/a/#/b", "[MQTT-4.7.1-1]")],
)
def test_invalid_shared_subscriptions_on_mqtt5(topic_filter: str, clause: str) -> None:
    with pytest.raises(MQTTProtocolError) as info:
        validate_topic_filter(topic_filter, 5)
    assert info.value.clause == clause


def test_shared_prefix_is_literal_on_mqtt_3_1_1() -> None:
    validate_topic_filter("$share/g", 4)
    validate_topic_filter("$share//a", 4)


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [("$share/g/a/b", ("g", "a/b")), ("$share/g/#", ("g", "#")), ("a/b", (None, "a/b")),
     ("$share/g", (None, "$share/g")), ("$share//a", (None, "$share//a"))],
)
def test_split_shared_subscription(topic_filter: str, expected) -> None:
    assert split_shared_subscription(topic_filter) == expected


@pytest.mark.parametrize("topic", ["a", "/", "a/b", "$aws/things/x/shadow/update", "a b", "ü/€"])
def test_valid_names(topic: str) -> None:
    validate_topic_name(topic, 4)
    validate_topic_name(topic, 5)
    assert is_valid_topic_name(topic)


@pytest.mark.parametrize(
    ("topic", "clause_v4", "clause_v5"),
    [("", "[MQTT-4.7.3-1]", "[MQTT-4.7.3-1]"), ("a/+", "[MQTT-4.7.1-1]", "[MQTT-4.7.0-1]"),
     ("#", "[MQTT-4.7.1-1]", "[MQTT-4.7.0-1]"), ("a+b", "[MQTT-4.7.1-1]", "[MQTT-4.7.0-1]"),
     ("\x00", "[MQTT-4.7.3-2]", "[MQTT-4.7.3-2]")],
)
def test_invalid_names(topic: str, clause_v4: str, clause_v5: str) -> None:
    for level, clause in ((4, clause_v4), (5, clause_v5)):
        with pytest.raises(MQTTProtocolError) as info:
            validate_topic_name(topic, level)
        assert info.value.reason_code is ReasonCode.TOPIC_NAME_INVALID
        assert info.value.clause == clause
    assert not is_valid_topic_name(topic)
