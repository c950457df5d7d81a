"""The gateway's `$aws/...` services driven by AWS's own device SDK (awsiotsdk: `awsiot.iotshadow`,
`awsiot.iotjobs` on an `mqtt_connection_builder.mtls_from_path` connection), unchanged, against the gateway
and a real Mosquitto: Device Shadow, Jobs from `iotgate job create` to SUCCEEDED, lifecycle events.

Every wait is on an SDK callback or future, under a deadline; nothing sleeps.
"""

from __future__ import annotations

import queue
import time

import orjson
import pytest
from awscrt import mqtt
from awsiot import iotjobs, iotshadow, mqtt_connection_builder

from gateway.registry.errors import AlreadyExists
from iotgate.cli import main
from .conftest import start_gateway

WAIT = 5.0
QOS = mqtt.QoS.AT_LEAST_ONCE

# What AWS's Shadow and Jobs samples need: their own thing's `$aws/things/<thing>/...` topics.
SERVICES_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
     "Resource": "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe",
     "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/*"}
  ]
}"""

# An operator watching lifecycle events (and nothing else).
EVENTS_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/$aws/events/*"},
    {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/$aws/events/*"}
  ]
}"""

# May read its shadow's answers but not ask for anything: every request is refused by policy.
READ_ONLY_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": ["iot:Subscribe", "iot:Receive"],
     "Resource": ["arn:aws:iot:*:*:topicfilter/$aws/things/*", "arn:aws:iot:*:*:topic/$aws/things/*"]}
  ]
}"""

# May subscribe to lifecycle events but not receive them.
DEAF_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/$aws/events/*"}
  ]
}"""

# An application that manages every thing's shadow.
SHADOW_OPERATOR_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/$aws/things/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/*"}
  ]
}"""


@pytest.fixture(scope="module")
def policies(fleet):
    for name, doc in (("services", SERVICES_POLICY), ("events", EVENTS_POLICY), ("read-only", READ_ONLY_POLICY),
                      ("deaf", DEAF_POLICY), ("shadow-operator", SHADOW_OPERATOR_POLICY)):
        try:
            fleet.registry.create_policy(name, doc)
        except AlreadyExists:
            pass


class Inbox:
    """SDK callbacks, by name, as queues."""

    def __init__(self) -> None:
        self.queues: dict[str, queue.Queue] = {}

    def __call__(self, name: str):
        q = self.queues.setdefault(name, queue.Queue())
        return q.put

    def get(self, name: str, timeout: float = WAIT):
        try:
            return self.queues.setdefault(name, queue.Queue()).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {name} message within {timeout} s") from None

    def empty(self, name: str) -> bool:
        return self.queues.setdefault(name, queue.Queue()).empty()


@pytest.fixture
def connect(fleet, gateway, policies):
    made: list[mqtt.Connection] = []

    def make(prefix: str, policy: str = "services", *, thing_files=None):
        if thing_files is None:
            thing, files, cert_id = fleet.device(prefix, policies=(policy,))
        else:
            thing, files, cert_id = thing_files
        gateway.sync(fleet.registry)
        conn = mqtt_connection_builder.mtls_from_path(
            endpoint="localhost", port=gateway.port, cert_filepath=str(files.cert), pri_key_filepath=str(files.key),
            ca_filepath=str(fleet.store.paths.root_cert), client_id=thing, clean_session=True, keep_alive_secs=30,
            enable_metrics_collection=False)
        conn.connect().result(WAIT)
        made.append(conn)
        return thing, conn, cert_id

    yield make
    for conn in made:
        try:
            conn.disconnect().result(WAIT)
        except Exception:  # noqa: BLE001 - already closed by the test
            pass


def subscribed(pair) -> None:
    future, _ = pair
    future.result(WAIT)


# --------------------------------------------------------------------------------------------- Device Shadow

def test_shadow_get_update_delta_delete_with_versions(connect, gateway):
    thing, conn, _ = connect("shadow")
    client = iotshadow.IotShadowClient(conn)
    inbox = Inbox()
    s = dict(thing_name=thing)
    subscribed(client.subscribe_to_get_shadow_accepted(iotshadow.GetShadowSubscriptionRequest(**s), QOS,
                                                       inbox("get")))
    subscribed(client.subscribe_to_get_shadow_rejected(iotshadow.GetShadowSubscriptionRequest(**s), QOS,
                                                       inbox("get-rejected")))
    subscribed(client.subscribe_to_update_shadow_accepted(iotshadow.UpdateShadowSubscriptionRequest(**s), QOS,
                                                          inbox("update")))
    subscribed(client.subscribe_to_update_shadow_rejected(iotshadow.UpdateShadowSubscriptionRequest(**s), QOS,
                                                          inbox("update-rejected")))
    subscribed(client.subscribe_to_shadow_delta_updated_events(
        iotshadow.ShadowDeltaUpdatedSubscriptionRequest(**s), QOS, inbox("delta")))
    subscribed(client.subscribe_to_shadow_updated_events(
        iotshadow.ShadowUpdatedSubscriptionRequest(**s), QOS, inbox("documents")))
    subscribed(client.subscribe_to_delete_shadow_accepted(iotshadow.DeleteShadowSubscriptionRequest(**s), QOS,
                                                          inbox("delete")))

    # No shadow yet: 404 with AWS's message, the client token echoed.
    client.publish_get_shadow(iotshadow.GetShadowRequest(client_token="g0", **s), QOS).result(WAIT)
    err = inbox.get("get-rejected")
    assert (err.code, err.message, err.client_token) == (404, f"No shadow exists with name: '{thing}'", "g0")

    before = int(time.time())
    client.publish_update_shadow(iotshadow.UpdateShadowRequest(
        state=iotshadow.ShadowState(desired={"color": "red", "power": "on"}), client_token="u1", **s), QOS).result(WAIT)
    accepted = inbox.get("update")
    assert accepted.version == 1 and accepted.client_token == "u1"
    assert accepted.state.desired == {"color": "red", "power": "on"}
    assert before <= accepted.metadata.desired["color"]["timestamp"] <= int(time.time())
    delta = inbox.get("delta")
    assert (delta.version, delta.state) == (1, {"color": "red", "power": "on"})
    assert set(delta.metadata) == {"color", "power"}
    docs = inbox.get("documents")
    assert docs.previous is None and docs.current.version == 1
    assert docs.current.state.desired == {"color": "red", "power": "on"}

    # The device reports: the delta shrinks to what still differs; no /delta for a reported-only update.
    client.publish_update_shadow(iotshadow.UpdateShadowRequest(
        state=iotshadow.ShadowState(reported={"color": "red", "power": "off"}), version=1, **s), QOS).result(WAIT)
    assert inbox.get("update").version == 2
    docs = inbox.get("documents")
    assert (docs.previous.version, docs.current.version) == (1, 2)
    assert docs.current.state.reported == {"color": "red", "power": "off"}
    client.publish_get_shadow(iotshadow.GetShadowRequest(client_token="g1", **s), QOS).result(WAIT)
    got = inbox.get("get")
    assert got.version == 2 and got.client_token == "g1"
    assert got.state.desired == {"color": "red", "power": "on"}
    assert got.state.reported == {"color": "red", "power": "off"}
    assert got.state.delta == {"power": "on"}
    assert "timestamp" in got.metadata.reported["power"]
    assert inbox.empty("delta")

    # A stale version is refused with 409, nothing changes.
    client.publish_update_shadow(iotshadow.UpdateShadowRequest(
        state=iotshadow.ShadowState(desired={"power": "off"}), version=1, client_token="u3", **s), QOS).result(WAIT)
    err = inbox.get("update-rejected")
    assert (err.code, err.message, err.client_token) == (409, "Version conflict", "u3")

    # null removes a key.
    client.publish_update_shadow(iotshadow.UpdateShadowRequest(
        state=iotshadow.ShadowState(desired={"power": None}), version=2, **s), QOS).result(WAIT)
    assert inbox.get("update").version == 3
    client.publish_get_shadow(iotshadow.GetShadowRequest(**s), QOS).result(WAIT)
    got = inbox.get("get")
    assert got.state.desired == {"color": "red"} and got.state.delta is None

    client.publish_delete_shadow(iotshadow.DeleteShadowRequest(client_token="d1", **s), QOS).result(WAIT)
    deleted = inbox.get("delete")
    assert (deleted.version, deleted.client_token) == (3, "d1")
    client.publish_get_shadow(iotshadow.GetShadowRequest(**s), QOS).result(WAIT)
    assert inbox.get("get-rejected").code == 404
    # A new shadow carries on from the deleted one's version.
    client.publish_update_shadow(iotshadow.UpdateShadowRequest(
        state=iotshadow.ShadowState(reported={"color": "green"}), **s), QOS).result(WAIT)
    assert inbox.get("update").version == 4
    messages = gateway.call(gateway.gateway.stats)["messages"]
    assert messages["service_requests"] >= 9 and messages["service_published"] >= 12


def test_named_shadow_and_bad_requests(connect):
    thing, conn, _ = connect("named")
    client = iotshadow.IotShadowClient(conn)
    inbox = Inbox()
    n = dict(thing_name=thing, shadow_name="config")
    subscribed(client.subscribe_to_update_named_shadow_accepted(
        iotshadow.UpdateNamedShadowSubscriptionRequest(**n), QOS, inbox("update")))
    subscribed(client.subscribe_to_update_named_shadow_rejected(
        iotshadow.UpdateNamedShadowSubscriptionRequest(**n), QOS, inbox("rejected")))
    subscribed(client.subscribe_to_get_named_shadow_accepted(
        iotshadow.GetNamedShadowSubscriptionRequest(**n), QOS, inbox("get")))
    client.publish_update_named_shadow(iotshadow.UpdateNamedShadowRequest(
        state=iotshadow.ShadowState(reported={"fw": "1.0"}), **n), QOS).result(WAIT)
    assert inbox.get("update").version == 1
    client.publish_get_named_shadow(iotshadow.GetNamedShadowRequest(**n), QOS).result(WAIT)
    assert inbox.get("get").state.reported == {"fw": "1.0"}

    topic = f"$aws/things/{thing}/shadow/name/config/update"
    for payload, code, message in [
        (b"not json", 400, "Invalid JSON"),
        (b'{"desired": {}}', 400, "Missing required node: state"),
        (b'{"state": {"desired": 1}}', 400, "Desired node must be an object"),
        (b'{"state": {"reported": {}}, "clientToken": "' + b"x" * 65 + b'"}', 400, "Invalid clientToken"),
        (orjson.dumps({"state": {"reported": {"blob": "x" * 9000}}}), 413,
         "The payload exceeds the maximum size allowed"),
        (orjson.dumps({"state": {"reported": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}}), 400,
         "JSON contains too many levels of nesting; maximum is 6"),
    ]:
        conn.publish(topic, payload, QOS)[0].result(WAIT)
        err = inbox.get("rejected")
        assert (err.code, err.message) == (code, message), payload[:40]


def test_shadow_request_outside_the_policy_is_refused(connect, gateway):
    thing, conn, _ = connect("readonly", "read-only")
    client = iotshadow.IotShadowClient(conn)
    inbox = Inbox()
    subscribed(client.subscribe_to_get_shadow_accepted(iotshadow.GetShadowSubscriptionRequest(thing_name=thing),
                                                       QOS, inbox("get")))
    # MQTT 3.1.1 has no negative PUBACK: AWS IoT (and the gateway) close the connection.
    client.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing), QOS)
    event = gateway.events.wait_for(event="publish", client_id=thing, kind="publish_denied")
    assert event["resource"] == f"topic/$aws/things/{thing}/shadow/get"


def test_another_things_shadow_answers_are_not_delivered(connect, gateway):
    owner, owner_conn, _ = connect("owner")
    other, other_conn, _ = connect("other")
    inbox = Inbox()
    # The other device may not subscribe to the owner's shadow topics: SUBACK failure.
    future, _ = iotshadow.IotShadowClient(other_conn).subscribe_to_update_shadow_accepted(
        iotshadow.UpdateShadowSubscriptionRequest(thing_name=owner), QOS, inbox("spy"))
    with pytest.raises(Exception):
        future.result(WAIT)
    client = iotshadow.IotShadowClient(owner_conn)
    subscribed(client.subscribe_to_update_shadow_accepted(
        iotshadow.UpdateShadowSubscriptionRequest(thing_name=owner), QOS, inbox("update")))
    client.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=owner, state=iotshadow.ShadowState(reported={"x": 1})), QOS).result(WAIT)
    assert inbox.get("update").version == 1
    assert inbox.empty("spy")


def test_shadows_are_shared_by_gateways_and_outlive_them(connect, fleet, broker):
    thing, conn, _ = connect("shared")
    inbox = Inbox()
    subscribed(iotshadow.IotShadowClient(conn).subscribe_to_shadow_delta_updated_events(
        iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing), QOS, inbox("delta")))
    app, app_files, _ = fleet.device("app", policies=("shadow-operator",))

    def through(running) -> iotshadow.IotShadowClient:
        running.sync(fleet.registry)
        c = mqtt_connection_builder.mtls_from_path(
            endpoint="localhost", port=running.port, cert_filepath=str(app_files.cert),
            pri_key_filepath=str(app_files.key), ca_filepath=str(fleet.store.paths.root_cert), client_id=app,
            clean_session=True, keep_alive_secs=30, enable_metrics_collection=False)
        c.connect().result(WAIT)
        return iotshadow.IotShadowClient(c)

    second = start_gateway(fleet, broker.config.url)
    try:
        # An application on another gateway sets the desired state: the device on the first one gets the delta.
        client = through(second)
        subscribed(client.subscribe_to_update_shadow_accepted(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), QOS, inbox("update")))
        client.publish_update_shadow(iotshadow.UpdateShadowRequest(
            thing_name=thing, state=iotshadow.ShadowState(desired={"on": True})), QOS).result(WAIT)
        assert inbox.get("update").version == 1
        assert inbox.get("delta").state == {"on": True}
    finally:
        second.thread.stop()
    # The gateway that stored it is gone; a new one reads it from the registry database.
    third = start_gateway(fleet, broker.config.url)
    try:
        client = through(third)
        subscribed(client.subscribe_to_get_shadow_accepted(
            iotshadow.GetShadowSubscriptionRequest(thing_name=thing), QOS, inbox("get")))
        client.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing), QOS).result(WAIT)
        got = inbox.get("get")
        assert got.version == 1 and got.state.delta == {"on": True}
        client.mqtt_connection.disconnect().result(WAIT)
    finally:
        third.thread.stop()


def test_operator_shadow_update_reaches_the_device_as_a_delta(connect, fleet, capsys):
    thing, conn, _ = connect("opshadow")
    client = iotshadow.IotShadowClient(conn)
    inbox = Inbox()
    subscribed(client.subscribe_to_shadow_delta_updated_events(
        iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing), QOS, inbox("delta")))
    cli(fleet, capsys, "shadow", "update", thing, "--payload", '{"state": {"desired": {"mode": "eco"}}}')
    delta = inbox.get("delta")
    assert delta.state == {"mode": "eco"} and delta.version == 1
    shown = orjson.loads(cli(fleet, capsys, "shadow", "get", thing))
    assert shown["state"]["delta"] == {"mode": "eco"} and shown["version"] == 1


def cli(fleet, capsys, *args: str) -> str:
    """Run `iotgate ARGS` on the fleet's home, as a user would; its standard output."""
    capsys.readouterr()
    try:
        main(["--home", str(fleet.home), *args])
    except SystemExit as exc:
        captured = capsys.readouterr()
        assert exc.code in (0, None), captured.err
        return captured.out
    return capsys.readouterr().out


# --------------------------------------------------------------------------------------------- Jobs

def test_job_from_iotgate_job_create_through_start_next_to_succeeded(connect, fleet, tmp_path, capsys):
    thing, conn, _ = connect("jobs")
    client = iotjobs.IotJobsClient(conn)
    inbox = Inbox()
    t = dict(thing_name=thing)
    subscribed(client.subscribe_to_next_job_execution_changed_events(
        iotjobs.NextJobExecutionChangedSubscriptionRequest(**t), QOS, inbox("notify-next")))
    subscribed(client.subscribe_to_job_executions_changed_events(
        iotjobs.JobExecutionsChangedSubscriptionRequest(**t), QOS, inbox("notify")))
    subscribed(client.subscribe_to_get_pending_job_executions_accepted(
        iotjobs.GetPendingJobExecutionsSubscriptionRequest(**t), QOS, inbox("pending")))
    subscribed(client.subscribe_to_start_next_pending_job_execution_accepted(
        iotjobs.StartNextPendingJobExecutionSubscriptionRequest(**t), QOS, inbox("started")))
    job_id = f"fw-{thing}"
    u = dict(thing_name=thing, job_id=job_id)
    subscribed(client.subscribe_to_update_job_execution_accepted(
        iotjobs.UpdateJobExecutionSubscriptionRequest(**u), QOS, inbox("updated")))
    subscribed(client.subscribe_to_update_job_execution_rejected(
        iotjobs.UpdateJobExecutionSubscriptionRequest(**u), QOS, inbox("update-rejected")))
    subscribed(client.subscribe_to_describe_job_execution_accepted(
        iotjobs.DescribeJobExecutionSubscriptionRequest(**u), QOS, inbox("described")))

    document = {"operation": "update-firmware", "url": "https://example.com/fw-2.bin", "version": "2.0"}
    path = tmp_path / "job.json"
    path.write_bytes(orjson.dumps(document))
    cli(fleet, capsys, "job", "create", job_id, "--document", str(path), "--targets", thing)

    # The gateway publishes what the CLI left in the outbox: the device learns of its new job.
    nxt = inbox.get("notify-next")
    assert (nxt.execution.job_id, nxt.execution.status, nxt.execution.version_number) == (job_id, "QUEUED", 1)
    assert nxt.execution.job_document == document
    assert inbox.get("notify").jobs["QUEUED"][0].job_id == job_id

    client.publish_get_pending_job_executions(iotjobs.GetPendingJobExecutionsRequest(client_token="p1", **t),
                                              QOS).result(WAIT)
    pending = inbox.get("pending")
    assert [j.job_id for j in pending.queued_jobs] == [job_id] and pending.in_progress_jobs == []
    assert pending.client_token == "p1"

    client.publish_start_next_pending_job_execution(iotjobs.StartNextPendingJobExecutionRequest(
        status_details={"step": "downloading"}, step_timeout_in_minutes=10, client_token="s1", **t), QOS).result(WAIT)
    started = inbox.get("started")
    e = started.execution
    assert (e.job_id, e.thing_name, e.status, e.version_number, e.execution_number) == \
        (job_id, thing, "IN_PROGRESS", 2, 1)
    assert e.job_document == document and e.status_details == {"step": "downloading"}
    assert e.started_at is not None and started.client_token == "s1"

    # A stale expectedVersion is refused with the execution's state.
    client.publish_update_job_execution(iotjobs.UpdateJobExecutionRequest(
        status=iotjobs.JobStatus.SUCCEEDED, expected_version=1, **u), QOS).result(WAIT)
    err = inbox.get("update-rejected")
    assert err.code == "VersionMismatch" and err.execution_state.version_number == 2

    client.publish_update_job_execution(iotjobs.UpdateJobExecutionRequest(
        status=iotjobs.JobStatus.SUCCEEDED, expected_version=2, status_details={"step": "done"},
        include_job_execution_state=True, client_token="u1", **u), QOS).result(WAIT)
    done = inbox.get("updated")
    assert (done.execution_state.status, done.execution_state.version_number) == ("SUCCEEDED", 3)
    assert done.execution_state.status_details == {"step": "done"} and done.client_token == "u1"
    assert inbox.get("notify-next").execution is None  # nothing left to run

    client.publish_describe_job_execution(iotjobs.DescribeJobExecutionRequest(**u), QOS).result(WAIT)
    assert inbox.get("described").execution.status == "SUCCEEDED"

    # A terminal execution stays terminal.
    client.publish_update_job_execution(iotjobs.UpdateJobExecutionRequest(
        status=iotjobs.JobStatus.IN_PROGRESS, **u), QOS).result(WAIT)
    assert inbox.get("update-rejected").code == "InvalidStateTransition"

    shown = orjson.loads(cli(fleet, capsys, "job", "show", job_id, "--json"))
    assert shown["status"] == "COMPLETED"
    assert shown["executions"][0]["status"] == "SUCCEEDED" and shown["executions"][0]["versionNumber"] == 3


def test_canceled_job_leaves_the_pending_list(connect, fleet, tmp_path, capsys):
    thing, conn, _ = connect("cancel")
    client = iotjobs.IotJobsClient(conn)
    inbox = Inbox()
    subscribed(client.subscribe_to_next_job_execution_changed_events(
        iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), QOS, inbox("notify-next")))
    path = tmp_path / "job.json"
    path.write_bytes(b'{"operation": "reboot"}')
    for job_id in ("first", "second"):
        cli(fleet, capsys, "job", "create", f"{job_id}-{thing}", "--document", str(path), "--targets", thing)
    assert inbox.get("notify-next").execution.job_id == f"first-{thing}"
    cli(fleet, capsys, "job", "cancel", f"first-{thing}")
    assert inbox.get("notify-next").execution.job_id == f"second-{thing}"
    listed = orjson.loads(cli(fleet, capsys, "job", "list", "--status", "CANCELED", "--json"))
    assert f"first-{thing}" in [j["jobId"] for j in listed]


# --------------------------------------------------------------------------------------------- lifecycle events

def test_lifecycle_events_field_by_field(connect, fleet, gateway):
    watcher, wconn, _ = connect("watcher", "events")
    events: queue.Queue = queue.Queue()
    wconn.subscribe("$aws/events/presence/+/+", QOS, lambda topic, payload, **_: events.put((topic, payload)))[0] \
        .result(WAIT)
    wconn.subscribe("$aws/events/subscriptions/+/+", QOS, lambda topic, payload, **_: events.put((topic, payload)))[0] \
        .result(WAIT)
    # Subscribe is allowed but Receive is not: this one must get nothing.
    deaf_thing, deaf_files, _ = fleet.device("deaf", policies=("deaf",))
    deaf_events: queue.Queue = queue.Queue()

    def next_event(client_id: str) -> tuple[str, dict]:
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no lifecycle event for {client_id}")
            try:
                topic, payload = events.get(timeout=left)
            except queue.Empty:
                continue
            doc = orjson.loads(payload)
            if doc["clientId"] == client_id:
                return topic, doc

    thing, conn, cert_id = connect("life")
    start_ms = int(time.time() * 1000)
    topic, c = next_event(thing)
    assert topic == f"$aws/events/presence/connected/{thing}"
    assert set(c) == {"clientId", "timestamp", "eventType", "sessionIdentifier", "principalIdentifier", "ipAddress",
                      "versionNumber"}
    assert (c["clientId"], c["eventType"], c["principalIdentifier"], c["ipAddress"]) == \
        (thing, "connected", cert_id, "127.0.0.1")
    assert abs(c["timestamp"] - start_ms) < 5000 and isinstance(c["versionNumber"], int)
    assert len(c["sessionIdentifier"]) == 36

    flt = f"$aws/things/{thing}/shadow/update/accepted"
    conn.subscribe(flt, QOS, lambda **_: None)[0].result(WAIT)
    topic, s = next_event(thing)
    assert topic == f"$aws/events/subscriptions/subscribed/{thing}"
    assert (s["eventType"], s["topics"], s["sessionIdentifier"], s["principalIdentifier"]) == \
        ("subscribed", [flt], c["sessionIdentifier"], cert_id)
    conn.unsubscribe(flt)[0].result(WAIT)
    topic, s = next_event(thing)
    assert (topic, s["eventType"], s["topics"]) == (f"$aws/events/subscriptions/unsubscribed/{thing}",
                                                   "unsubscribed", [flt])

    conn.disconnect().result(WAIT)
    topic, d = next_event(thing)
    assert topic == f"$aws/events/presence/disconnected/{thing}"
    assert (d["eventType"], d["clientInitiatedDisconnect"], d["disconnectReason"]) == \
        ("disconnected", True, "CLIENT_INITIATED_DISCONNECT")
    assert (d["sessionIdentifier"], d["versionNumber"], d["principalIdentifier"]) == \
        (c["sessionIdentifier"], c["versionNumber"], cert_id)

    # The next connection of the same client id has the next version and a new session.
    _, again, _ = connect("life", thing_files=(thing, fleet.files(thing), cert_id))
    _, c2 = next_event(thing)
    assert c2["versionNumber"] == c["versionNumber"] + 1 and c2["sessionIdentifier"] != c["sessionIdentifier"]

    _, deaf, _ = connect("deaf", thing_files=(deaf_thing, deaf_files, ""))
    deaf.subscribe("$aws/events/presence/+/+", QOS, lambda topic, payload, **_: deaf_events.put(topic))[0] \
        .result(WAIT)
    again.disconnect().result(WAIT)
    next_event(thing)  # the watcher got this disconnection; the subscriber without iot:Receive did not:
    gateway.events.wait_for(event="receive", client_id=deaf_thing, kind="receive_denied")
    assert deaf_events.empty()


def test_shadow_over_mqtt5_with_the_sdks_mqtt5_client(fleet, gateway, policies):
    """The same service client on `mqtt5_client_builder` (the SDK's MQTT 5 client)."""
    import threading

    from awscrt import mqtt5
    from awsiot import mqtt5_client_builder

    thing, files, _ = fleet.device("mqtt5", policies=("services",))
    gateway.sync(fleet.registry)
    up, down = threading.Event(), threading.Event()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint="localhost", port=gateway.port, cert_filepath=str(files.cert), pri_key_filepath=str(files.key),
        ca_filepath=str(fleet.store.paths.root_cert), client_id=thing, enable_metrics_collection=False,
        on_lifecycle_connection_success=lambda _: up.set(), on_lifecycle_stopped=lambda _: down.set())
    client.start()
    try:
        assert up.wait(WAIT)
        shadow = iotshadow.IotShadowClient(client)
        inbox = Inbox()
        s = dict(thing_name=thing)
        subscribed(shadow.subscribe_to_update_shadow_accepted(iotshadow.UpdateShadowSubscriptionRequest(**s), QOS,
                                                              inbox("update")))
        subscribed(shadow.subscribe_to_get_shadow_accepted(iotshadow.GetShadowSubscriptionRequest(**s), QOS,
                                                           inbox("get")))
        shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(
            state=iotshadow.ShadowState(reported={"proto": 5}), client_token="m5", **s), QOS).result(WAIT)
        assert inbox.get("update").client_token == "m5"
        shadow.publish_get_shadow(iotshadow.GetShadowRequest(**s), QOS).result(WAIT)
        assert inbox.get("get").state.reported == {"proto": 5}
    finally:
        client.stop(mqtt5.DisconnectPacket())
        down.wait(WAIT)
