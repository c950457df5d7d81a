"""Service state in the registry database, on SQLite and PostgreSQL: shadows survive a reopen, the outbox
hands each message out once, concurrent updates lose nothing, jobs keep their executions."""

from __future__ import annotations

import threading

import orjson
import pytest

from gateway.registry import Registry
from gateway.registry.errors import AlreadyExists, InvalidValue, NotFound
from gateway.services.base import Caller, Request
from gateway.services.jobs_service import JobsService
from gateway.services.shadow_service import ShadowService
from gateway.services.store import ServiceStore

CALLER = Caller("t1", "ab" * 32, "t1", "127.0.0.1")


def test_shadow_survives_reopening_the_registry(registry_url):
    with Registry.open(registry_url) as reg:
        service = ShadowService(ServiceStore.of(reg))
        out = service.handle(Request(CALLER, "$aws/things/t1/shadow/name/cfg/update",
                                     b'{"state": {"desired": {"a": 1}}}', 100.0))
        assert [m.topic for m in out] == ["$aws/things/t1/shadow/name/cfg/update/accepted",
                                          "$aws/things/t1/shadow/name/cfg/update/delta",
                                          "$aws/things/t1/shadow/name/cfg/update/documents"]
        change = reg.change_counter()
    with Registry.open(registry_url, create=False) as reg:
        assert reg.change_counter() == change  # a shadow is not a registry change: no view reloads
        (msg,) = ShadowService(ServiceStore.of(reg)).handle(
            Request(CALLER, "$aws/things/t1/shadow/name/cfg/get", b"", 200.0))
        doc = orjson.loads(msg.payload)
        assert msg.topic.endswith("/get/accepted") and doc["version"] == 1 and doc["state"]["delta"] == {"a": 1}


def test_concurrent_updates_lose_nothing(registry):
    service = ShadowService(ServiceStore.of(registry))
    service.store.ensure()
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(15):
                service.run("t1", "", "update", orjson.dumps({"state": {"reported": {f"w{n}": i}}}), 100)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    (_, doc), = service.run("t1", "", "get", b"", 101).messages
    assert doc["version"] == 30 and doc["state"]["reported"] == {"w0": 14, "w1": 14}


def test_outbox_hands_each_message_out_once(registry):
    service = ShadowService(ServiceStore.of(registry))
    service.run("t1", "", "update", b'{"state": {"desired": {"x": 1}}}', 100, outbox=True)
    service.run("t1", "", "update", b'{"state": {"desired": 5}}', 100, outbox=True)  # refused: not queued
    first = service.store.take_outbox()
    assert [t for t, _ in first] == ["$aws/things/t1/shadow/update/accepted", "$aws/things/t1/shadow/update/delta",
                                     "$aws/things/t1/shadow/update/documents"]
    assert service.store.take_outbox() == []


def test_jobs_create_cancel_show(registry):
    jobs = JobsService(ServiceStore.of(registry))
    shown = jobs.create("j1", b'{"op": "reboot"}', ["t1", "t2", "t1"], now=100.0)
    assert [e["thingName"] for e in shown["executions"]] == ["t1", "t2"]
    assert shown["jobExecutionsCounts"] == {"QUEUED": 2}
    notices = sorted(t for t, _ in jobs.store.take_outbox())
    assert notices == ["$aws/things/t1/jobs/notify", "$aws/things/t1/jobs/notify-next",
                       "$aws/things/t2/jobs/notify", "$aws/things/t2/jobs/notify-next"]
    with pytest.raises(AlreadyExists):
        jobs.create("j1", b"{}", ["t1"], now=100.0)
    for bad, match in [(b"[]", "JSON object"), (b"{", "not valid JSON"), (b"x" * 40000, "at most")]:
        with pytest.raises(InvalidValue, match=match):
            jobs.create("j2", bad, ["t1"], now=100.0)
    jobs.handle(Request(Caller("t1", None, "t1"), "$aws/things/t1/jobs/start-next", b"", 110.0))
    canceled = jobs.cancel("j1", now=120.0)
    assert {e["thingName"]: e["status"] for e in canceled["executions"]} == {"t1": "IN_PROGRESS", "t2": "CANCELED"}
    assert canceled["status"] == "CANCELED"
    with pytest.raises(InvalidValue, match="only an IN_PROGRESS job"):
        jobs.cancel("j1", now=130.0)
    with pytest.raises(NotFound):
        jobs.show("nope")
    assert [j["jobId"] for j in jobs.list("CANCELED")] == ["j1"]


def test_lifecycle_versions_grow_per_client(registry):
    store = ServiceStore.of(registry)
    assert [store.next_client_version("c1") for _ in range(3)] == [1, 2, 3]
    assert store.next_client_version("c2") == 1
    # a batch of connects (one transaction): in order, a client id twice gets two numbers
    assert store.next_client_versions(["c3", "c1", "c3"]) == [1, 4, 2]


def test_concurrent_connects_of_one_client_never_share_a_version(registry):
    from concurrent.futures import ThreadPoolExecutor

    store = ServiceStore.of(registry)
    store.ensure()
    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(lambda _: store.next_client_version("busy"), range(40)))
    assert sorted(versions) == list(range(1, 41))
