"""Device behaviour of a fleet run: every legitimate (or expected-refused) device connects, keeps reconnecting
with jittered backoff, subscribes, publishes its telemetry and answers the operator's commands.

One task per device (``devices`` part) owns its publisher (``publishers`` part) and, per connection, its command
responder; all of them belong to task groups, so an exception in any of them ends the run naming the part.

What a device met is kept on its :class:`SimDevice` as evidence (:mod:`devices.evidence`): whether it ever got
in, the first refusal that meant "this identity may not", the last failure, a device-side error (its own key
or certificate files), and problems (a refused publish or subscription, lost QoS 1 sequence numbers).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from devices.backoff import Backoff
from devices.client import ClientOptions, DisconnectNotice, Endpoint
from devices.connectors import Connector, DeviceLink
from devices.evidence import classify_connect, is_auth_refusal, subscribe_detail
from devices.identity import DeviceIdentity
from devices.report import Outcome
from devices.runtime import Flag, RunContext, guarded
from devices.scenario import Group, payload, render
from gateway.mqtt import Publish
from gateway.mqtt.topics import topic_matches


@dataclasses.dataclass(eq=False)
class SimDevice:
    thing: str
    group: Group
    identity: DeviceIdentity
    directory: Path | None
    certificate_id: str | None
    link: DeviceLink | None = None
    up: Flag = dataclasses.field(default_factory=Flag)
    lost: Flag = dataclasses.field(default_factory=Flag)
    may_connect: Flag = dataclasses.field(default_factory=Flag)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    backoff: Backoff = dataclasses.field(default_factory=lambda: Backoff(base=0.2, cap=3.0))
    ever_connected: bool = False
    auth_refusal: tuple[Outcome, str] | None = None    # the first "this identity may not"
    last_failure: tuple[Outcome, str] | None = None    # the last failed attempt
    device_error: str = ""                             # its own files: it stops trying
    problems: list[str] = dataclasses.field(default_factory=list)
    down_since: float | None = None
    seq: int = 0
    acked: set[int] = dataclasses.field(default_factory=set)
    unacked: set[int] = dataclasses.field(default_factory=set)
    rotations: int = 0

    @property
    def legitimate(self) -> bool:
        return self.group.expect == "allowed"

    def problem(self, text: str) -> None:
        if text not in self.problems and len(self.problems) < 5:
            self.problems.append(text)


def device_options(group: Group) -> ClientOptions:
    s = group.session
    # max_resends None: unacknowledged QoS 1 publishes are re-sent on every reconnect [MQTT-4.4.0-1], which is
    # also what paho, aiomqtt and the CRT do, so one setting means the same through every connector.
    return ClientOptions(protocol_level=s.protocol, keep_alive=s.keep_alive, clean_start=s.clean_start,
                         session_expiry=s.session_expiry, connect_timeout=10.0)


class DeviceFleet:
    """The ``devices`` part: runs every device until the run stops, then closes their links."""

    def __init__(self, ctx: RunContext, devices: Sequence[SimDevice], *, connector: Connector, endpoint: Endpoint,
                 rng: random.Random, reconnect_within: float) -> None:
        self.ctx = ctx
        self.devices = list(devices)
        self.connector = connector
        self.endpoint = endpoint
        self.rng = rng
        self.reconnect_within = reconnect_within

    def new_link(self, dev: SimDevice) -> DeviceLink:
        def on_disconnect(notice: DisconnectNotice, dev=dev) -> None:
            self._on_lost(dev, notice)

        return self.connector.link(dev.identity, self.endpoint, client_id=dev.thing, options=device_options(dev.group),
                                   on_disconnect=on_disconnect)

    def live(self) -> list[SimDevice]:
        """Legitimate devices connected now (what chaos and rotation choose from)."""
        return [d for d in self.devices if d.up.is_set() and d.legitimate]

    def _on_lost(self, dev: SimDevice, notice: DisconnectNotice) -> None:
        if dev.up.is_set():
            self.ctx.stats.connected -= 1
        dev.up.clear()
        dev.lost.set()
        if dev.down_since is None:
            dev.down_since = self.ctx.clock()
        if notice.reason not in ("client", "aborted"):
            self.ctx.stats.failures[f"disconnected: {notice.reason} {notice.detail}".strip()[:90]] += 1

    async def run(self, schedule: Sequence[float]) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._device(dev, delay), name=f"device {dev.thing}")
                         for dev, delay in zip(self.devices, schedule)]
                await self.ctx.end_at_stop(tasks)
        finally:
            async with asyncio.TaskGroup() as tg:
                for dev in self.devices:
                    if dev.link is not None:
                        tg.create_task(close_link(dev.link))

    async def _device(self, dev: SimDevice, delay: float) -> None:
        await self.ctx.sleep(delay)
        if self.ctx.stopped:
            return
        dev.may_connect.set()
        dev.link = self.new_link(dev)
        async with asyncio.TaskGroup() as tg:
            if dev.group.publish is not None:
                tg.create_task(guarded("publishers", self._publisher(dev)), name=f"publish {dev.thing}")
            await self._connections(dev)

    async def _connections(self, dev: SimDevice) -> None:
        ctx = self.ctx
        level = dev.group.session.protocol
        while not ctx.stopped:
            if not await ctx.wait(dev.may_connect):
                break
            dev.lost.clear()
            link = dev.link
            outcome = await link.connect()
            ctx.stats.connect(outcome)
            if not outcome.ok:
                dev.last_failure = classify_connect(outcome)
                if dev.last_failure[0] is Outcome.DEVICE_ERROR:
                    dev.device_error = dev.last_failure[1]
                    return              # its own files: trying again cannot help
                if dev.auth_refusal is None and is_auth_refusal(outcome, level):
                    dev.auth_refusal = dev.last_failure
                await ctx.sleep(dev.backoff.next_delay())
                continue
            dev.backoff.connected()
            if dev.ever_connected:
                ctx.stats.reconnects += 1
            dev.ever_connected = True
            dev.down_since = None
            ctx.stats.connected += 1
            dev.up.set()
            async with asyncio.TaskGroup() as tg:
                responder = None
                if dev.group.commands is not None:
                    responder = tg.create_task(self._respond(dev, link, link.messages()),
                                               name=f"respond {dev.thing}")
                await self._subscribe(dev, link)
                await ctx.wait(dev.lost)
                if responder is not None:
                    responder.cancel()
            dev.backoff.disconnected()
            if not ctx.stopped and dev.may_connect.is_set():
                await ctx.sleep(dev.backoff.next_delay())

    async def _subscribe(self, dev: SimDevice, link: DeviceLink) -> None:
        group = dev.group
        filters = [render(f, thing=dev.thing, group=group.name) for f in group.subscribe]
        if group.commands is not None:
            command = render(group.commands.topic, thing=dev.thing, group=group.name)
            if not any(topic_matches(f, command) for f in filters):   # one copy of each command, not two
                filters.append(command)
        if not filters:
            return
        result = await link.subscribe(*filters, qos=1, timeout=10.0)
        self.ctx.stats.sample("suback", result.latency)
        if not result.ok and result.reason in ("refused", "granted"):
            detail = subscribe_detail(result)
            self.ctx.stats.failures[detail] += 1
            dev.problem(f"subscription refused ({detail})")

    async def _publisher(self, dev: SimDevice) -> None:
        ctx = self.ctx
        spec = dev.group.publish
        assert spec is not None
        next_at = ctx.clock() + self.rng.random() * spec.interval
        while ctx.publishing and not ctx.stopped:
            await ctx.sleep(next_at - ctx.clock())
            next_at += spec.interval
            if not ctx.publishing or ctx.stopped:
                break
            if not dev.up.is_set():
                if spec.qos == 0 or not await ctx.wait(dev.up, timeout=1.0):
                    continue
            async with dev.lock:
                await self._publish_one(dev)

    async def _publish_one(self, dev: SimDevice) -> None:
        ctx = self.ctx
        spec = dev.group.publish
        dev.seq += 1
        seq = dev.seq
        topic = render(spec.topic, thing=dev.thing, group=dev.group.name, seq=seq)
        if spec.qos == 1:
            dev.unacked.add(seq)
        while True:
            data = payload(spec, thing=dev.thing, group=dev.group.name, seq=seq, ts=time.time())
            result = await dev.link.publish(topic, data, qos=spec.qos, timeout=10.0)
            if result.ok:
                ctx.stats.messages += 1
                if spec.qos == 1:
                    ctx.stats.sample("puback", result.latency)
                    dev.unacked.discard(seq)
                    dev.acked.add(seq)
                return
            if result.reason in ("refused", "abandoned"):
                code = f" 0x{result.reason_code:02X}" if result.reason_code is not None else ""
                ctx.stats.failures[f"PUBACK{code} ({result.reason})"] += 1
                dev.problem(f"publish to {topic} {result.reason}{code}")
                dev.unacked.discard(seq)
                return
            if spec.qos == 0 or ctx.stopped:
                return
            # not confirmed (connection lost): the same sequence number again once connected
            if not await ctx.wait(dev.up, timeout=self.reconnect_within):
                return

    async def _respond(self, dev: SimDevice, link: DeviceLink, messages: AsyncIterator[Publish]) -> None:
        commands = dev.group.commands
        assert commands is not None
        command = render(commands.topic, thing=dev.thing, group=dev.group.name)
        response = render(commands.response, thing=dev.thing, group=dev.group.name)
        async for message in messages:
            if message.topic == command:
                self.ctx.stats.commands_received += 1
                result = await link.publish(response, message.payload, qos=1, timeout=10.0)
                if not result.ok and result.reason == "refused":
                    dev.problem(f"command response to {response} refused")


async def close_link(link: DeviceLink) -> None:
    """Close a link at the end of a run or an attack, whatever state it is in."""
    try:
        if link.connected:
            await asyncio.wait_for(link.disconnect(), 2.0)
    except Exception:  # noqa: BLE001 - closing: the link only has to be gone
        link.abort()
