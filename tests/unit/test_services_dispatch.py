"""Which service answers which topic, the topic parsers, and lifecycle events' fields."""

from __future__ import annotations

import orjson
import pytest

from gateway.services import Dispatcher, Message
from gateway.services import jobs_service, lifecycle, shadow_service
from gateway.services.jobs_service import JobsService
from gateway.services.shadow_service import ShadowService

DISPATCH = [
    ("$aws/things/t1/shadow/get", "shadow"),
    ("$aws/things/t1/shadow/update", "shadow"),
    ("$aws/things/t1/shadow/name/cfg/delete", "shadow"),
    ("$aws/things/t1/shadow/update/accepted", None),  # a reply: the services publish it, devices do not
    ("$aws/things/t1/shadow/update/delta", None),
    ("$aws/things/t1/jobs/get", "jobs"),
    ("$aws/things/t1/jobs/start-next", "jobs"),
    ("$aws/things/t1/jobs/j-1/get", "jobs"),
    ("$aws/things/t1/jobs/j-1/update", "jobs"),
    ("$aws/things/t1/jobs/notify-next", None),
    ("$aws/events/presence/connected/c1", None),
    ("$aws/rules/r/t", None),
]


@pytest.mark.parametrize("topic,service", DISPATCH)
def test_dispatch(topic, service):
    d = Dispatcher([ShadowService(None), JobsService(None)])
    found = d.route(topic)
    assert (found.name if found else None) == service
    assert d.serves(topic) is (service is not None)


def test_a_service_may_only_claim_aws_topics():
    class Bad:
        name = "bad"
        filters = ("room/#",)

        def handle(self, request) -> list[Message]:
            return []

    with pytest.raises(ValueError, match="room/#"):
        Dispatcher([Bad()])


@pytest.mark.parametrize("topic,parsed", [
    ("$aws/things/t1/shadow/get", ("t1", "", "get")),
    ("$aws/things/t1/shadow/name/n_1/update", ("t1", "n_1", "update")),
    ("$aws/things/t1/shadow/name/bad name/update", None),
    ("$aws/things/t1/shadow/name/" + "x" * 65 + "/get", None),
    ("$aws/things/t1/shadow/patch", None),
])
def test_shadow_topics(topic, parsed):
    assert shadow_service.parse_topic(topic) == parsed


@pytest.mark.parametrize("topic,parsed", [
    ("$aws/things/t1/jobs/get", ("t1", "get", None)),
    ("$aws/things/t1/jobs/start-next", ("t1", "start-next", None)),
    ("$aws/things/t1/jobs/$next/get", ("t1", "describe", "$next")),
    ("$aws/things/t1/jobs/$next/update", None),
    ("$aws/things/t1/jobs/j1/update", ("t1", "update", "j1")),
    ("$aws/things/t1/jobs/j1/delete", None),
])
def test_jobs_topics(topic, parsed):
    assert jobs_service.parse_topic(topic) == parsed


P = lifecycle.Presence("c1", "5e1f0000-0000-4000-8000-000000000000", "ab" * 32, "192.0.2.1", 3)


def test_presence_events():
    c = lifecycle.connected(P, 1000)
    assert c.topic == "$aws/events/presence/connected/c1"
    assert orjson.loads(c.payload) == {"clientId": "c1", "timestamp": 1000, "eventType": "connected",
                                       "sessionIdentifier": P.session_id, "principalIdentifier": "ab" * 32,
                                       "ipAddress": "192.0.2.1", "versionNumber": 3}
    d = orjson.loads(lifecycle.disconnected(P, 2000, "keepalive_timeout").payload)
    assert (d["eventType"], d["clientInitiatedDisconnect"], d["disconnectReason"], d["versionNumber"]) == \
        ("disconnected", False, "MQTT_KEEP_ALIVE_TIMEOUT", 3)


@pytest.mark.parametrize("key,reason", [
    ("disconnect", "CLIENT_INITIATED_DISCONNECT"), ("connection_lost", "CONNECTION_LOST"),
    ("session_taken_over", "DUPLICATE_CLIENTID"), ("certificate_not_active", "AUTH_ERROR"),
    ("publish_denied", "FORBIDDEN_ACCESS"), ("malformed_packet", "CLIENT_ERROR"),
    ("disconnect_after", "CUSTOMAUTH_TTL_EXPIRATION"), ("server_shutting_down", "SERVER_INITIATED_DISCONNECT"),
    ("upstream_lost", "SERVER_ERROR"), ("quota_exceeded", "THROTTLED"),
])
def test_disconnect_reasons(key, reason):
    assert lifecycle.disconnect_reason(key) == reason
