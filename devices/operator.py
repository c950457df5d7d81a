"""The operator of a fleet run (``operator`` part): one connection with a broad policy of its own that

* observes every legitimate group's telemetry: end-to-end latency (the payload's ``ts`` to its arrival) and the
  sequence numbers delivered, so a QoS 1 message that was acknowledged but never delivered is found;
* sends each commanded device its commands and times the answers (command round trip).

It runs only where the simulator made it an identity and the target enforces its policy (the gateway with a
local registry). It is ready -- connected and subscribed -- before any device starts, so nothing a device
publishes is missed; what it could not do is reported (:attr:`Operator.failure`, :attr:`Operator.gap`), never
silently dropped.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import AsyncIterator, Sequence

import orjson

from devices.client import ClientOptions, DisconnectNotice, Endpoint
from devices.connectors import Connector, DeviceLink
from devices.evidence import connect_detail, subscribe_detail
from devices.fleet_devices import SimDevice, close_link
from devices.identity import DeviceIdentity
from devices.runtime import Flag, RunContext
from devices.scenario import Group, Scenario, render, topic_filter
from gateway.mqtt import Publish

OPERATOR_CLIENT_ID = "sim-operator"
MAX_PENDING_COMMANDS = 10_000


def observable(group: Group) -> bool:
    """The operator can check delivery of this group's telemetry: QoS 1 with thing and sequence in the payload."""
    return group.expect == "allowed" and group.publish is not None and group.publish.qos == 1 \
        and "{seq}" in group.publish.payload and "{thing}" in group.publish.payload


class Operator:
    def __init__(self, ctx: RunContext, identity: DeviceIdentity, *, connector: Connector, endpoint: Endpoint,
                 scenario: Scenario, devices: Sequence[SimDevice], rng: random.Random,
                 client_id: str = OPERATOR_CLIENT_ID) -> None:
        self.ctx = ctx
        self.identity = identity
        self.connector = connector
        self.endpoint = endpoint
        self.scenario = scenario
        self.devices = devices
        self.rng = rng
        self.client_id = client_id
        self.ready = Flag()                 # connected and subscribed (or failed: see failure)
        self.failure = ""                   # why it could not observe at all
        self.gap: float | None = None       # when it lost its connection (seconds into the run)
        self.observed: dict[str, set[int]] = collections.defaultdict(set)
        self.e2e_samples = 0
        self._sent: dict[str, float] = {}

    @property
    def observing(self) -> bool:
        """Connected and subscribed, and never lost since: its delivery check stands."""
        return self.ready.is_set() and not self.failure and self.gap is None

    def _filters(self) -> list[str]:
        filters = set()
        for group in self.scenario.groups:
            if group.expect == "allowed" and group.publish is not None:
                filters.add(topic_filter(group.publish.topic))
            if group.commands is not None:
                filters.add(topic_filter(group.commands.response))
        return sorted(filters)

    async def run(self) -> None:
        ctx = self.ctx
        # the scenario's protocol level: the operator speaks what every connector under test speaks
        options = ClientOptions(protocol_level=self.scenario.session.protocol, keep_alive=60)

        def on_disconnect(notice: DisconnectNotice) -> None:
            if not ctx.stopped and self.gap is None:
                self.gap = ctx.elapsed()

        link = self.connector.link(self.identity, self.endpoint, client_id=self.client_id, options=options,
                                   on_disconnect=on_disconnect)
        try:
            outcome = await link.connect()
            ctx.stats.connect(outcome)
            if not outcome.ok:
                self.failure = f"the operator could not connect ({connect_detail(outcome)})"
                return
            messages = link.messages()
            filters = self._filters()
            if filters:
                result = await link.subscribe(*filters, qos=1, timeout=10.0)
                if not result.ok:
                    self.failure = f"the operator's subscription to {', '.join(filters)} failed " \
                                   f"({subscribe_detail(result)})"
                    return
            self.ready.set()
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._commander(link, dev), name=f"command {dev.thing}")
                         for dev in self.devices if dev.group.commands is not None]
                tasks.append(tg.create_task(self._observe(messages), name="observe"))
                await ctx.end_at_stop(tasks)
        finally:
            self.ready.set()
            await close_link(link)

    async def _observe(self, messages: AsyncIterator[Publish]) -> None:
        stats = self.ctx.stats
        async for message in messages:
            now = time.time()
            try:
                body = orjson.loads(message.payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(body, dict):
                continue
            if "cmd" in body:
                sent = self._sent.pop(str(body["cmd"]), None)
                if sent is not None:
                    stats.commands_answered += 1
                    stats.sample("command", now - sent)
                continue
            ts, seq, thing = body.get("ts"), body.get("seq"), body.get("thing")
            if isinstance(ts, (int, float)) and not isinstance(ts, bool):
                stats.sample("e2e", now - ts)
                self.e2e_samples += 1
            if isinstance(seq, int) and isinstance(thing, str):
                self.observed[thing].add(seq)

    async def _commander(self, link: DeviceLink, dev: SimDevice) -> None:
        ctx = self.ctx
        commands = dev.group.commands
        topic = render(commands.topic, thing=dev.thing, group=dev.group.name)
        n = 0
        await ctx.sleep(self.rng.random() * commands.interval)
        while ctx.publishing and not ctx.stopped:
            if dev.up.is_set() and len(self._sent) < MAX_PENDING_COMMANDS:
                n += 1
                key = f"{dev.thing}:{n}"
                self._sent[key] = time.time()
                result = await link.publish(topic, orjson.dumps({"cmd": key}), qos=1, timeout=10.0)
                if result.ok:
                    ctx.stats.commands_sent += 1
                else:
                    self._sent.pop(key, None)
            await ctx.sleep(commands.interval)

    def missing(self, dev: SimDevice) -> set[int]:
        """Sequence numbers of ``dev`` acknowledged but not (yet) delivered to the operator."""
        return dev.acked - self.observed.get(dev.thing, set())
