"""The asyncio shell of the services: one worker thread for their database work, and the gateway's own
publisher link to the broker.

Requests and lifecycle notices from sessions run on one worker thread, in the order they came (a device's
update is answered before its next get); the messages they return are published on the services' link: one
MQTT connection per gateway to the upstream broker under the gateway's own identity (as the sessions'
links: mTLS or the unix socket, never anonymous). Through the broker they reach subscribers on every gateway
of the fleet, each delivery decided by iot:Receive in the subscriber's session. The outbox (messages made by
the CLI) is polled and published the same way.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import sys
import time
import uuid
from collections.abc import Callable

from gateway.mqtt import Connect, Framer, MQTTProtocolError, PacketType, Publish, decode, encode
from gateway.services.base import Caller, Dispatcher, Message, Request
from gateway.services.jobs_service import JobsService
from gateway.services.lifecycle import Presence, connected, disconnected, subscriptions
from gateway.services.provisioning import ProvisioningService
from gateway.services.shadow_service import ShadowService
from gateway.services.store import ServiceStore

PINGREQ = b"\xc0\x00"
MAX_INFLIGHT_PER_CONNECTION = 10  # AWS: more in-flight Device Shadow requests on one connection are refused (429)
MAX_INFLIGHT = 10_000  # for the whole gateway: beyond it requests are refused the same way


class _LinkProtocol(asyncio.Protocol):
    def __init__(self, link: "ServiceLink") -> None:
        self.link = link
        self.framer = Framer(1 << 20, protocol_level=4)

    def data_received(self, data: bytes) -> None:
        try:
            for frame in self.framer.feed(data):
                if frame.packet_type is PacketType.CONNACK:
                    self.link._on_connack(decode(frame, 4).reason_code)
        except MQTTProtocolError as exc:
            self.link._on_lost(f"malformed packet from the broker: {exc}")

    def connection_lost(self, exc) -> None:
        self.link._on_lost(str(exc) if exc else "closed by the broker")


class ServiceLink:
    """A QoS 0 publisher to the upstream broker that reconnects; what waits while it is down is bounded."""

    def __init__(self, connector, *, client_id: str | None = None, keepalive: int = 60, max_queue: int = 10_000,
                 log: Callable[[str], None] | None = None) -> None:
        self.connector = connector
        self.client_id = client_id or f"iotgate-services-{uuid.uuid4().hex[:12]}"
        self.keepalive = keepalive
        self.queue: collections.deque[bytes] = collections.deque(maxlen=max_queue)
        self.dropped = 0
        self.published = 0
        self.connected = asyncio.Event()
        self._transport = None
        self._connack: asyncio.Future | None = None
        self._gone: asyncio.Future | None = None
        self._log = log or (lambda text: print(f"iotgate gateway: services link: {text}", file=sys.stderr))

    def publish(self, topic: str, payload: bytes) -> None:
        data = encode(Publish(topic, payload), 4)
        if self._transport is not None and self.connected.is_set() and not self._transport.is_closing():
            self._transport.write(data)
            self.published += 1
            return
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(data)

    async def run(self) -> None:
        delay = 0.1
        failing = False
        loop = asyncio.get_running_loop()
        while True:
            self._connack = loop.create_future()
            self._gone = loop.create_future()
            try:
                self._transport = await self.connector.open(lambda: _LinkProtocol(self))
                self._transport.write(encode(Connect(
                    self.client_id, 4, True, self.keepalive, username=self.connector.username,
                    password=self.connector.password), 4))
                async with asyncio.timeout(self.connector.timeout):
                    code = await self._connack
                if code != 0:
                    raise ConnectionError(f"the broker refused the services' CONNECT (return code {int(code)})")
            except asyncio.CancelledError:
                self._close()
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: retry with backoff
                if not failing:  # once per outage, not once per attempt
                    self._log(f"cannot reach the broker ({exc or type(exc).__name__}); retrying, replies and "
                              f"events wait (at most {self.queue.maxlen})")
                failing = True
                self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            if failing:
                self._log("connected again")
            failing = False
            self.connected.set()
            while self.queue:
                self._transport.write(self.queue.popleft())
                self.published += 1
            try:
                while not self._gone.done():
                    try:
                        async with asyncio.timeout(self.keepalive / 2):
                            await asyncio.shield(self._gone)
                    except TimeoutError:
                        self._transport.write(PINGREQ)
            except asyncio.CancelledError:
                self._close()
                raise
            self._log(f"connection lost ({self._gone.result()}); reconnecting")
            self._close()

    def _on_connack(self, code) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(code)

    def _on_lost(self, detail: str) -> None:
        self.connected.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError(detail))
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(detail)

    def _close(self) -> None:
        self.connected.clear()
        if self._transport is not None:
            self._transport.abort()
            self._transport = None


#: how long a lifecycle event waits for others to share its transaction (see ServiceHub.connected)
LIFECYCLE_WINDOW = 0.005


class ServiceHub:
    """What the gateway holds: ``serves`` for sessions, ``request`` / ``connected`` / ``subscribed`` /
    ``disconnected`` from connections, ``run`` as one of its tasks."""

    def __init__(self, registry, connector, *, clock: Callable[[], float] = time.time,
                 on_error: Callable[[str, BaseException], None] | None = None, outbox_interval: float = 0.25,
                 issuer: Callable[[], object] | None = None, deliver: Callable[[int, str, bytes], None] | None = None,
                 account: str = "123456789012", region: str = "us-east-1") -> None:
        self.registry = registry  # for services that create things, certificates, policies
        self.store = ServiceStore.of(registry)
        self.shadow = ShadowService(self.store)
        self.jobs = JobsService(self.store)
        self.dispatcher = Dispatcher([self.shadow, self.jobs])
        if issuer is not None and deliver is not None:  # fleet provisioning answers its requester alone
            self.dispatcher.register(ProvisioningService(registry, self.store, issuer, account=account,
                                                         region=region))
        self._deliver = deliver
        self.link = ServiceLink(connector)
        self.clock = clock
        self.outbox_interval = outbox_interval
        self._on_error = on_error or (lambda where, exc: print(f"iotgate gateway: {where}: {exc}", file=sys.stderr))
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="iotgate-services")
        self._presence: dict[int, Presence] = {}  # touched on the worker thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._lifecycle: list[tuple[str, tuple]] = []  # events waiting for the worker thread (on the loop)
        self._lifecycle_busy = False
        self._inflight: dict[int, int] = {}  # connection key -> requests not yet answered
        self._inflight_total = 0
        self.requests = 0
        self.throttled = 0

    def serves(self, topic: str) -> bool:
        return self.dispatcher.serves(topic)

    def publish(self, message: Message) -> None:
        """Publish a message of the gateway's own (an event no request asked for), on the loop."""
        self.link.publish(message.topic, message.payload)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._supervise("services link", self.link.run), name="iotgate-services-link")
                tg.create_task(self._supervise("services outbox", self._drain_outbox), name="iotgate-services-outbox")
        finally:
            self._closed = True
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _supervise(self, what: str, part) -> None:
        """Run ``part`` until cancelled; a bug in it is logged and the part starts again (a second later)."""
        while True:
            try:
                await part()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the gateway serves on; the part is restarted
                self._on_error(what, exc)
            await asyncio.sleep(1.0)

    async def _drain_outbox(self) -> None:
        while True:  # the tables first: the registry may be away when the gateway starts
            try:
                await self._loop.run_in_executor(self._executor, self.store.ensure)
                break
            except Exception as exc:  # noqa: BLE001
                self._on_error("services tables", exc)
                await asyncio.sleep(2.0)
        while True:
            await asyncio.sleep(self.outbox_interval)
            await self.link.connected.wait()  # taken only when they can be published at once
            try:
                rows = await self._loop.run_in_executor(self._executor, self.store.take_outbox)
            except Exception as exc:  # noqa: BLE001 - the registry may be away for a while
                self._on_error("services outbox", exc)
                continue
            for topic, payload in rows:
                self.link.publish(topic, payload)

    # ------------------------------------------------------------------ from connections (on the loop)

    def request(self, key: int, caller: Caller, topic: str, payload: bytes) -> None:
        if self._closed or self._loop is None:
            return
        self.requests += 1
        request = Request(caller, topic, payload, self.clock())
        pending = self._inflight.get(key, 0)
        if pending >= MAX_INFLIGHT_PER_CONNECTION or self._inflight_total >= MAX_INFLIGHT:
            self.throttled += 1
            service = self.dispatcher.route(topic)
            refuse = getattr(service, "throttled", None)
            for message in (refuse(request) if refuse is not None else ()):
                self.link.publish(message.topic, message.payload)
            return
        self._inflight[key] = pending + 1
        self._inflight_total += 1
        future = self._loop.run_in_executor(self._executor, self._handle, request)
        future.add_done_callback(lambda f: self._answered(key, f))

    def _answered(self, key: int, future: asyncio.Future) -> None:
        left = self._inflight.pop(key, 1) - 1
        if left > 0:
            self._inflight[key] = left
        self._inflight_total -= 1
        self._publish(future)

    # Lifecycle events go through one ordered queue: an event waits on the loop for LIFECYCLE_WINDOW, or until
    # the worker thread is done with the batch before; the next batch takes them all, and its connects get their
    # versions in one transaction (a connect storm commits once per batch, not once per device). A connection's
    # own events stay in order.

    def connected(self, key: int, caller: Caller) -> None:
        self._lifecycle_event("connected", key, caller, self.clock())

    def subscribed(self, key: int, event: str, topics: list[str]) -> None:
        self._lifecycle_event("subscribed", key, event, topics, self.clock())

    def disconnected(self, key: int, close_key: str) -> None:
        self._lifecycle_event("disconnected", key, close_key, self.clock())

    def _lifecycle_event(self, kind: str, *args) -> None:
        if self._closed or self._loop is None:
            return
        self._lifecycle.append((kind, args))
        if not self._lifecycle_busy:
            self._lifecycle_busy = True
            self._loop.call_later(LIFECYCLE_WINDOW, self._next_lifecycle_batch)

    def _next_lifecycle_batch(self) -> None:
        if self._closed:
            return
        batch, self._lifecycle = self._lifecycle, []
        self._lifecycle_busy = True
        future = self._loop.run_in_executor(self._executor, self._lifecycle_batch, batch)
        future.add_done_callback(self._lifecycle_done)

    def _lifecycle_done(self, future: asyncio.Future) -> None:
        self._lifecycle_busy = False
        self._publish(future)
        if self._lifecycle and not self._closed:
            self._next_lifecycle_batch()

    def _publish(self, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._on_error("services worker", exc)
            return
        for message in future.result():
            if message.to is not None:
                if self._deliver is not None:
                    self._deliver(message.to, message.topic, message.payload)
            else:
                self.link.publish(message.topic, message.payload)

    # ------------------------------------------------------------------ on the worker thread

    def _handle(self, request: Request) -> list[Message]:
        service = self.dispatcher.route(request.topic)
        if service is None:
            return []
        try:
            return service.handle(request)
        except Exception as exc:  # noqa: BLE001 - one request's failure is logged; the others go on
            self._on_error(f"service {service.name} on {request.topic}", exc)
            return []

    def _lifecycle_batch(self, batch: list[tuple[str, tuple]]) -> list[Message]:
        connecting = [args[1].client_id for kind, args in batch if kind == "connected"]
        try:
            versions = iter(self.store.next_client_versions(connecting) if connecting else ())
        except Exception as exc:  # noqa: BLE001 - those connects get no event; the batch's other events still go
            self._on_error("lifecycle versions", exc)
            versions = None
        out: list[Message] = []
        for kind, args in batch:
            if kind == "connected":
                if versions is not None:
                    out += self._connected(*args, version=next(versions))
            elif kind == "subscribed":
                out += self._subscriptions(*args)
            else:
                out += self._disconnected(*args)
        return out

    def _connected(self, key: int, caller: Caller, now: float, *, version: int) -> list[Message]:
        p = self._presence[key] = Presence(caller.client_id, str(uuid.uuid4()), caller.principal_id,
                                           caller.source_ip, version)
        return [connected(p, int(now * 1000))]

    def _subscriptions(self, key: int, event: str, topics: list[str], now: float) -> list[Message]:
        p = self._presence.get(key)
        return [subscriptions(p, int(now * 1000), event, topics)] if p is not None else []

    def _disconnected(self, key: int, close_key: str, now: float) -> list[Message]:
        p = self._presence.pop(key, None)
        return [disconnected(p, int(now * 1000), close_key)] if p is not None else []
