"""The services' shell without a broker: requests answered in order, at most 10 unanswered per connection
(the 11th is refused with 429 / RequestThrottled at once), lifecycle events in order with one session id."""

from __future__ import annotations

import asyncio
import threading

import orjson

from gateway.registry import Registry
from gateway.services.base import Caller
from gateway.services.runtime import MAX_INFLIGHT_PER_CONNECTION, ServiceHub


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict]] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, orjson.loads(payload)))


CALLER = Caller("t1", "ab" * 32, "t1", "127.0.0.1")


def run_hub(body) -> None:
    async def main():
        with Registry.open("sqlite://") as reg:
            hub = ServiceHub(reg, connector=None, clock=lambda: 1000.0)
            hub.link = Recorder()
            hub._loop = asyncio.get_running_loop()
            await hub._loop.run_in_executor(hub._executor, hub.store.ensure)
            try:
                await body(hub)
            finally:
                hub._executor.shutdown(wait=True)
    asyncio.run(main())


async def settle(hub: ServiceHub, count: int) -> None:
    async with asyncio.timeout(5):
        while len(hub.link.published) < count:
            await asyncio.sleep(0.005)


def test_eleventh_unanswered_request_is_throttled():
    async def body(hub: ServiceHub) -> None:
        gate = threading.Event()
        hub._executor.submit(gate.wait, 5)  # the worker is busy: requests wait
        for i in range(MAX_INFLIGHT_PER_CONNECTION + 1):
            hub.request(1, CALLER, "$aws/things/t1/shadow/update",
                        orjson.dumps({"state": {"reported": {"i": i}}, "clientToken": f"c{i}"}))
        hub.request(2, CALLER, "$aws/things/t1/jobs/get", b'{"clientToken": "j"}')  # another connection: fine
        assert hub.link.published == [("$aws/things/t1/shadow/update/rejected",
                                       {"code": 429, "message": "Too Many Requests", "timestamp": 1000,
                                        "clientToken": f"c{MAX_INFLIGHT_PER_CONNECTION}"})]
        gate.set()
        await settle(hub, 1 + MAX_INFLIGHT_PER_CONNECTION * 2 + 1)  # accepted + documents each, jobs reply
        accepted = [d["version"] for t, d in hub.link.published if t.endswith("/update/accepted")]
        assert accepted == list(range(1, MAX_INFLIGHT_PER_CONNECTION + 1))  # in order
        assert hub.link.published[-1][0] == "$aws/things/t1/jobs/get/accepted"
        # answered: the connection may ask again
        hub.request(1, CALLER, "$aws/things/t1/jobs/get", b"")
        await settle(hub, 2 + MAX_INFLIGHT_PER_CONNECTION * 2 + 1)
        assert hub.link.published[-1][0] == "$aws/things/t1/jobs/get/accepted"
    run_hub(body)


def test_jobs_throttling_answer():
    async def body(hub: ServiceHub) -> None:
        gate = threading.Event()
        hub._executor.submit(gate.wait, 5)
        for _ in range(MAX_INFLIGHT_PER_CONNECTION + 1):
            hub.request(1, CALLER, "$aws/things/t1/jobs/start-next", b'{"clientToken": "x"}')
        assert hub.link.published == [("$aws/things/t1/jobs/start-next/rejected",
                                       {"code": "RequestThrottled", "timestamp": 1000, "clientToken": "x",
                                        "message": "too many requests in flight on this connection"})]
        gate.set()
    run_hub(body)


def test_lifecycle_events_in_order_with_one_session():
    async def body(hub: ServiceHub) -> None:
        hub.connected(7, CALLER)
        hub.subscribed(7, "subscribed", ["a/b"])
        hub.disconnected(7, "connection_lost")
        hub.disconnected(7, "connection_lost")  # a second end of the same connection publishes nothing
        await settle(hub, 3)
        await asyncio.sleep(0.05)
        topics = [t for t, _ in hub.link.published]
        assert topics == ["$aws/events/presence/connected/t1", "$aws/events/subscriptions/subscribed/t1",
                          "$aws/events/presence/disconnected/t1"]
        ids = {d["sessionIdentifier"] for _, d in hub.link.published}
        assert len(ids) == 1
        assert hub.link.published[2][1]["disconnectReason"] == "CONNECTION_LOST"
    run_hub(body)


def test_a_part_that_raises_is_logged_and_restarted():
    errors: list[str] = []

    async def main():
        with Registry.open("sqlite://") as reg:
            hub = ServiceHub(reg, connector=None, on_error=lambda where, exc: errors.append(f"{where}: {exc}"))
            runs = []

            async def flaky():
                runs.append(1)
                if len(runs) == 1:
                    raise RuntimeError("boom")
                await asyncio.Event().wait()

            hub._loop = asyncio.get_running_loop()
            task = asyncio.create_task(hub._supervise("services link", flaky))
            async with asyncio.timeout(5):
                while len(runs) < 2:
                    await asyncio.sleep(0.01)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            hub._executor.shutdown()
    asyncio.run(main())
    assert errors == ["services link: boom"]


def test_lifecycle_events_behind_a_busy_worker_go_as_one_ordered_batch():
    async def body(hub: ServiceHub) -> None:
        calls: list[list[str]] = []
        versions = hub.store.next_client_versions

        def counted(ids):
            calls.append(list(ids))
            return versions(ids)

        hub.store.next_client_versions = counted
        gate = threading.Event()
        hub.connected(1, CALLER)  # the first batch: alone
        hub._executor.submit(gate.wait, 5)  # then the worker is busy
        await asyncio.sleep(0.05)
        for key in (2, 3, 4):  # they wait on the loop (the window, then the busy worker), and go as one batch
            hub.connected(key, Caller(f"t{key}", "cd" * 32, f"t{key}", "127.0.0.1"))
        hub.disconnected(3, "connection_lost")
        hub.connected(5, CALLER)  # the same client id again: a second number
        gate.set()
        await settle(hub, 6)
        assert calls == [["t1"], ["t2", "t3", "t4", "t1"]]  # one transaction for the connects that waited
        events = [(t.rsplit("/", 2)[-2], d["clientId"], d.get("versionNumber")) for t, d in hub.link.published]
        assert events == [("connected", "t1", 1), ("connected", "t2", 1), ("connected", "t3", 1),
                          ("connected", "t4", 1), ("disconnected", "t3", 1), ("connected", "t1", 2)]
    run_hub(body)


def test_a_failing_version_store_loses_the_connects_but_not_the_disconnects():
    async def body(hub: ServiceHub) -> None:
        errors: list[str] = []
        hub._on_error = lambda where, exc: errors.append(f"{where}: {exc}")
        hub.connected(1, CALLER)
        await settle(hub, 1)
        real = hub.store.next_client_versions

        def down(ids):
            raise RuntimeError("registry down")

        hub.store.next_client_versions = down
        hub.connected(2, Caller("t2", "cd" * 32, "t2", "127.0.0.1"))
        hub.disconnected(1, "connection_lost")
        await settle(hub, 2)
        assert [t for t, _ in hub.link.published] == ["$aws/events/presence/connected/t1",
                                                      "$aws/events/presence/disconnected/t1"]
        assert errors == ["lifecycle versions: registry down"]
        hub.store.next_client_versions = real
    run_hub(body)
