"""What the endpoint does in each case, and how it turns what the device did into a Judgement.

A case is a coroutine ``case(ctx) -> Judgement``. It takes connections from the listener (``ctx.arrival``),
presents a server profile (``ctx.handshake``), speaks MQTT through :class:`Session`, records evidence in
``ctx.timeline`` and hands the observations to a judge (:mod:`gateway.qualify.judge`). A precondition that fails
(no connection, the device ended, the TLS handshake failed where the case needs a session) ends the case with
:class:`CaseEnd` carrying an ERROR: never a pass.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509

from certs.authority import common_name
from gateway.mqtt import (Connect, Disconnect, Packet, PubAck, Publish, ReasonCode, Subscribe, Unsubscribe, encode,
                          topic_matches)
from gateway.policy import Request, lint
from gateway.qualify.device import DeviceEndpoint, DeviceUnderTest
from gateway.qualify.endpoint import Arrival, DeviceExited, Listener
from gateway.qualify.judge import (
    Judgement,
    backoff_delays,
    describe_decision,
    judge_backoff,
    judge_ciphers,
    judge_client_id,
    judge_keepalive,
    judge_legacy_versions,
    judge_permissions,
    judge_refusal,
    judge_tls_connect,
)
from gateway.qualify.model import Handshake, HandshakeOutcome
from gateway.qualify.peer import DeviceGone, MalformedPacket, MqttPeer
from gateway.qualify.profiles import WRONG_NAME, ServerProfiles
from gateway.qualify.suite import CaseSpec
from gateway.qualify.tls import ContextFactory, TLSStream
from gateway.qualify.verdict import Timeline, Verdict

__all__ = ["CASE_RUNNERS", "CaseContext", "CaseEnd", "RunFacts", "Session"]

MAX_RECORD = 16384


class CaseEnd(Exception):
    """Ends a case early with this judgement (a failed precondition, or a verdict reached early)."""

    def __init__(self, verdict: Verdict, summary: str, **kw) -> None:
        super().__init__(summary)
        self.judgement = Judgement(verdict, summary, **kw)


def _error(summary: str) -> CaseEnd:
    return CaseEnd(Verdict.ERROR, summary)


@dataclasses.dataclass
class Session:
    """An MQTT session with the device: TLS done, CONNECT read."""

    arrival: Arrival
    stream: TLSStream
    peer: MqttPeer
    handshake: Handshake
    connect: Connect
    thing: str | None

    async def send(self, packet: Packet) -> bool:
        return await self.peer.send(packet)

    async def reply(self, packet: Packet, **kw) -> None:
        answer = self.peer.answer(packet, **kw)
        if answer is not None:
            await self.peer.send(answer)

    async def until(self, match: Callable[[Packet], bool], timeout: float) -> Packet | None:
        """Answer the device as a broker would until a packet satisfies ``match`` (returned, unanswered) or
        ``timeout`` passes (None). Raises DeviceGone and MalformedPacket."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                packet = await self.peer.packet(left)
            except TimeoutError:
                return None
            if match(packet):
                return packet
            await self.reply(packet)

    async def disconnect(self) -> float:
        """End the session from the server side (MQTT 5: DISCONNECT 0x8B first); when it closed."""
        if self.peer.level == 5:
            await self.peer.send(Disconnect(ReasonCode.SERVER_SHUTTING_DOWN))
        await self.stream.close()
        return time.monotonic()


@dataclasses.dataclass
class RunFacts:
    """What the run has established so far, for the cases that depend on it."""

    #: the device completed a handshake with a valid server certificate (so a refusal elsewhere is about the
    #: certificate, not about a device that cannot do TLS with this endpoint at all)
    accepted_valid_certificate: bool = False


class CaseContext:
    """What one case works with; everything it opens is closed by :meth:`close`."""

    def __init__(self, spec: CaseSpec, *, timeline: Timeline, listener: Listener, device: DeviceUnderTest,
                 profiles: ServerProfiles, contexts: ContextFactory, policies, endpoint: DeviceEndpoint,
                 base_dir: Path | None, facts: RunFacts | None = None) -> None:
        self.facts = facts if facts is not None else RunFacts()
        self.spec = spec
        self.timeline = timeline
        self.listener = listener
        self.device = device
        self.profiles = profiles
        self.contexts = contexts
        self.policies = policies
        self.endpoint = endpoint
        self.base_dir = base_dir
        self.streams: list[TLSStream] = []
        self.attempts = 0

    def __getitem__(self, key: str):
        return self.spec.settings[key]

    # ------------------------------------------------------------------ connections

    async def arrival(self, timeout: float | None = None, *, retry: bool = False) -> Arrival:
        """The device's next connection. The first one is a precondition (ERROR when missing); with ``retry``
        the caller handles TimeoutError and DeviceExited itself."""
        timeout = self["connect_timeout"] if timeout is None else timeout
        try:
            arrival = await self.listener.next(timeout, exited=self.device.exited)
        except TimeoutError:
            if retry:
                raise
            raise _error(f"the device did not connect within {timeout:g} s") from None
        except DeviceExited as exc:
            if retry:
                raise
            raise _error(f"{exc.exit.describe()}, before it connected") from None
        self.attempts += 1
        self.timeline.device(f"connected from {arrival.source} (TCP, attempt {self.attempts})", when=arrival.at)
        return arrival

    async def handshake(self, arrival: Arrival, profile_name: str, *, timeout: float | None = None
                        ) -> tuple[TLSStream, Handshake]:
        profile = self.profiles.get(profile_name, large_bytes=self.spec.settings.get("cert_bytes", 8192))
        ctx = self.contexts.context(profile)
        stream = TLSStream(arrival.sock, ctx, self.timeline)
        self.streams.append(stream)
        self.timeline.endpoint(f"server certificate {profile.describe()}")
        hs = await stream.handshake(self["handshake_timeout"] if timeout is None else timeout)
        if hs.completed and profile_name in ("good", "large"):
            self.facts.accepted_valid_certificate = True
        return stream, hs

    async def control(self, judgement: Judgement) -> Judgement:
        """A refusal passes only if this device accepts a valid certificate: unless it already did in this run, it
        is started again (an external device: its next attempt is awaited) and must complete a handshake with the
        valid certificate; otherwise the refusal proves nothing and the case is an ERROR."""
        if not judgement.verdict.passed or self.facts.accepted_valid_certificate:
            return judgement
        await self.close()
        if self.device.per_case:
            await self.device.stop()
            await self.device.start(self.endpoint, self.spec.id)
            self.timeline.note("started the device again for a control handshake with the valid certificate")
        try:  # a connection closed before its ClientHello (the refused attempt's leftover) is not the answer
            _, _, hs = await self.first_handshake("good")
        except CaseEnd:
            return Judgement(Verdict.ERROR, f"inconclusive: {judgement.summary}, but the device did not come back "
                                            "for a control handshake with a valid certificate")
        if hs.completed:
            self.timeline.note("control: the device completed a handshake with the valid certificate")
            return judgement
        return Judgement(Verdict.ERROR, f"inconclusive: the device also refused the valid certificate ({hs.outcome}: "
                                        f"{hs.detail}), so its refusal here says nothing about this certificate; "
                                        "see TLS_Connect")

    async def first_handshake(self, profile_name: str, *, timeout: float | None = None
                              ) -> tuple[Arrival, TLSStream, Handshake]:
        """The device's first TLS handshake in this case. A connection closed before any ClientHello shows nothing
        (a device that gave up on its TCP connection, a port probe): the device's next attempt is taken instead,
        until ``connect_timeout`` has passed."""
        deadline = time.monotonic() + self["connect_timeout"]
        while True:
            arrival = await self.arrival()
            stream, hs = await self.handshake(arrival, profile_name, timeout=timeout)
            left = deadline - time.monotonic()
            if hs.outcome is not HandshakeOutcome.NO_HELLO or left <= 0:
                return arrival, stream, hs
            self.timeline.note("no ClientHello on that connection: waiting for the device's next attempt")
            try:
                arrival = await self.listener.next(left, exited=self.device.exited)
            except (TimeoutError, DeviceExited):
                return arrival, stream, hs
            self.listener.requeue(arrival)

    async def session(self, arrival: Arrival | None = None, *, profile: str = "good", connack: bool = True
                      ) -> Session:
        """TLS with a valid certificate and the device's CONNECT (answered with CONNACK when ``connack``)."""
        if arrival is None:
            arrival, stream, hs = await self.first_handshake(profile)
        else:
            stream, hs = await self.handshake(arrival, profile)
        if not hs.completed:
            raise _error(f"precondition failed: the TLS handshake with a valid server certificate did not "
                         f"complete ({hs.outcome}: {hs.detail}); see TLS_Connect")
        peer = MqttPeer(stream, self.timeline)
        try:
            first = await peer.packet(self["packet_timeout"])
        except TimeoutError:
            raise _error(f"precondition failed: no CONNECT within {self['packet_timeout']:g} s of the TLS "
                         "handshake; see MQTT_Connect") from None
        except (DeviceGone, MalformedPacket) as exc:
            raise _error(f"precondition failed: no valid CONNECT ({exc}); see MQTT_Connect") from None
        thing = None
        if hs.peer_der:
            thing = common_name(x509.load_der_x509_certificate(hs.peer_der).subject)
        session = Session(arrival, stream, peer, hs, first, thing)
        if connack:
            await peer.send(peer.connack())
        return session

    def topic(self, pattern: str, session: Session) -> str:
        return pattern.replace("{thing}", session.thing or "").replace("{client_id}", session.connect.client_id)

    async def close(self) -> None:
        for stream in self.streams:
            await stream.close()
        self.streams.clear()


# --------------------------------------------------------------------------------------------- TLS

async def tls_connect(ctx: CaseContext) -> Judgement:
    _, stream, hs = await ctx.first_handshake("good")
    return judge_tls_connect(hs, endpoint_name=ctx.endpoint.server_name)


async def _refusal(ctx: CaseContext, profile: str, problem: str) -> Judgement:
    _, stream, hs = await ctx.first_handshake(profile, timeout=ctx["refusal_timeout"])
    judgement = judge_refusal(hs, problem=problem)
    if hs.completed:
        peer = MqttPeer(stream, ctx.timeline)
        try:
            packet = await peer.packet(min(2.0, ctx["packet_timeout"]))
        except (TimeoutError, DeviceGone, MalformedPacket):
            packet = None
        if isinstance(packet, Connect):
            secret = ", with a password" if packet.password else ""
            judgement = dataclasses.replace(judgement, summary=judgement.summary + f"; it then sent CONNECT as "
                                            f"{packet.client_id!r}{secret} to that server")
    return await ctx.control(judgement)


async def tls_incorrect_subject_name(ctx: CaseContext) -> Judgement:
    return await _refusal(ctx, "wrong-name", f"issued for {WRONG_NAME}, not for {ctx.endpoint.server_name}")


async def tls_unsecure_server_cert(ctx: CaseContext) -> Judgement:
    return await _refusal(ctx, "untrusted", "from a CA it was never given")


async def tls_expired_server_cert(ctx: CaseContext) -> Judgement:
    return await _refusal(ctx, "expired", "that expired a month ago")


async def tls_large_server_cert(ctx: CaseContext) -> Judgement:
    _, stream, hs = await ctx.first_handshake("large")
    profile = ctx.profiles.get("large", large_bytes=ctx["cert_bytes"])
    judgement = judge_tls_connect(hs, endpoint_name=ctx.endpoint.server_name)
    details = {**judgement.details, "certificate_bytes": profile.der_size, "chain_bytes": profile.chain_size}
    return dataclasses.replace(judgement, summary=f"{judgement.summary} with a {profile.der_size}-byte certificate",
                               details=details)


async def tls_cipher_suites(ctx: CaseContext) -> Judgement:
    _, stream, hs = await ctx.first_handshake("good")
    return judge_ciphers(hs.hello)


async def tls_legacy_versions(ctx: CaseContext) -> Judgement:
    _, stream, hs = await ctx.first_handshake("legacy", timeout=ctx["refusal_timeout"])
    judgement = judge_legacy_versions(hs)
    offered_only_modern = hs.hello is not None and hs.hello.offers_legacy_versions is False
    return judgement if offered_only_modern else await ctx.control(judgement)


async def _deliver_qos1(ctx: CaseContext, payload: bytes, what: str) -> tuple[Judgement, Session]:
    """Wait for the device's QoS 1 subscription to the trigger topic, send it ``payload`` at QoS 1 and wait for
    the PUBACK."""
    session = await ctx.session()
    topic = ctx.topic(ctx["topic"], session)
    seen: list[str] = []

    def subscribes(p: Packet) -> bool:
        if isinstance(p, Subscribe):
            seen.extend(f"{s.topic_filter} (QoS {s.qos})" for s in p.subscriptions)
            return any(topic_matches(s.topic_filter, topic) and s.qos >= 1 for s in p.subscriptions)
        return False

    sub = await session.until(subscribes, ctx["packet_timeout"])
    if sub is None:
        also = f"; it subscribed to {', '.join(seen)}" if seen else ""
        raise _error(f"precondition failed: the device did not subscribe to {topic!r} with QoS 1 within "
                     f"{ctx['packet_timeout']:g} s{also}")
    await session.reply(sub)
    packet_id = 1
    publish = Publish(topic, payload, qos=1, packet_id=packet_id)
    limit = session.connect.properties.maximum_packet_size if session.peer.level == 5 else None
    size = len(encode(publish, session.peer.level))
    if limit is not None and size > limit:
        raise CaseEnd(Verdict.SKIPPED, f"the device accepts packets of at most {limit} bytes (Maximum Packet Size in "
                                       f"its CONNECT); {what} takes {size}: lower payload_bytes")
    await session.send(publish)
    ctx.timeline.endpoint(f"sent {what} to {topic!r}")

    def acked(p: Packet) -> bool:
        return isinstance(p, PubAck) and p.packet_id == packet_id

    try:
        ack = await session.until(acked, ctx["packet_timeout"])
    except DeviceGone as exc:
        return Judgement(Verdict.FAIL, f"the device closed the connection after {what} ({exc}) instead of "
                                       "acknowledging it"), session
    if ack is None:
        return Judgement(Verdict.FAIL, f"no PUBACK for {what} within {ctx['packet_timeout']:g} s"), session
    return Judgement(Verdict.PASS, f"the device acknowledged {what} (PUBACK id {packet_id})"), session


async def tls_max_fragments(ctx: CaseContext) -> Judgement:
    size = ctx["payload_bytes"]
    payload = bytes((i * 7 + 13) % 251 for i in range(size))
    judgement, session = await _deliver_qos1(ctx, payload, f"a QoS 1 message of {size} bytes")
    records = session.stream.application_records
    largest = max(records) if records else 0
    details = {"records_sent": len(records), "largest_record_bytes": largest,
               "tls_version": session.handshake.version}
    hello = session.handshake.hello
    limit = hello.max_fragment_length or hello.record_size_limit if hello else None
    if judgement.verdict is Verdict.PASS:
        if largest <= MAX_RECORD:
            why = f" (the device asked for records of at most {limit} bytes)" if limit else ""
            return Judgement(Verdict.PASS_WITH_WARNINGS, judgement.summary,
                             (f"no maximum-size record was sent: the largest was {largest} bytes{why}",), details)
        return Judgement(Verdict.PASS, f"{judgement.summary}, sent in {len(records)} TLS records of up to "
                                       f"{largest} bytes ({MAX_RECORD} bytes of plaintext each)", (), details)
    return dataclasses.replace(judgement, details=details)


# --------------------------------------------------------------------------------------------- MQTT

async def mqtt_connect(ctx: CaseContext) -> Judgement:
    _, stream, hs = await ctx.first_handshake("good")
    if not hs.completed:
        raise _error(f"precondition failed: TLS handshake did not complete ({hs.outcome}: {hs.detail}); see "
                     "TLS_Connect")
    peer = MqttPeer(stream, ctx.timeline)
    timeout = ctx["packet_timeout"]
    try:
        packet = await peer.packet(timeout)
    except TimeoutError:
        return Judgement(Verdict.FAIL, f"no CONNECT within {timeout:g} s after the TLS handshake")
    except DeviceGone as exc:
        return Judgement(Verdict.FAIL, f"the device closed the connection without sending CONNECT ({exc})")
    except MalformedPacket as exc:
        return Judgement(Verdict.FAIL, f"the CONNECT is not valid MQTT: {exc}")
    assert isinstance(packet, Connect)
    await peer.send(peer.connack())
    warnings = []
    if packet.keep_alive and not 30 <= packet.keep_alive <= 1200:
        warnings.append(f"keep alive {packet.keep_alive} s: AWS IoT Core clamps it to 30..1200 s")
    if not packet.client_id:
        warnings.append("empty client id: AWS IoT Core needs one")
    level = "MQTT 5.0" if packet.protocol_level == 5 else "MQTT 3.1.1"
    summary = f"CONNECT {level} as {packet.client_id!r}, keep alive {packet.keep_alive} s"
    return Judgement(Verdict.PASS_WITH_WARNINGS if warnings else Verdict.PASS, summary, tuple(warnings),
                     {"client_id": packet.client_id, "protocol_level": packet.protocol_level,
                      "keep_alive": packet.keep_alive, "clean_start": packet.clean_start})


async def _expect(ctx: CaseContext, session: Session, kind: type, want: str, match, show) -> Packet | Judgement:
    """The first packet of ``kind`` that ``match`` accepts (answered as a broker would), or a FAIL saying what the
    device sent instead (``show`` renders a packet of that kind)."""
    seen: list[str] = []

    def accepts(p: Packet) -> bool:
        if not isinstance(p, kind):
            return False
        seen.append(show(p))
        return match(p)

    timeout = ctx["packet_timeout"]
    name = kind.__name__.upper()
    try:
        packet = await session.until(accepts, timeout)
        ended = f"within {timeout:g} s"
    except DeviceGone as exc:
        packet, ended = None, f"before it closed the connection ({exc})"
    if packet is None:
        distinct = list(dict.fromkeys(seen))
        also = f" (it sent {name} {'; '.join(distinct[:5])}, {len(seen)} in all)" if seen else f" (no {name} at all)"
        return Judgement(Verdict.FAIL, f"no {name} {want} {ended}{also}")
    await session.reply(packet)
    return packet


def _filters(packet: Subscribe) -> str:
    return ", ".join(f"{s.topic_filter!r} QoS {s.qos}" for s in packet.subscriptions)


async def mqtt_subscribe(ctx: CaseContext) -> Judgement:
    session = await ctx.session()
    wanted = ctx.topic(ctx["topic"], session) if ctx["topic"] else None
    qos = ctx["qos"]
    want = "to " + (f"{wanted!r}" if wanted else "any filter") + (f" with QoS {qos}" if qos is not None else "")
    packet = await _expect(ctx, session, Subscribe, want, lambda p: any(
        (wanted is None or s.topic_filter == wanted) and (qos is None or s.qos == qos) for s in p.subscriptions),
        _filters)
    if isinstance(packet, Judgement):
        return packet
    return Judgement(Verdict.PASS, f"SUBSCRIBE {_filters(packet)}", (), {"filters": _filters(packet)})


async def mqtt_publish(ctx: CaseContext) -> Judgement:
    session = await ctx.session()
    wanted = ctx.topic(ctx["topic"], session) if ctx["topic"] else None
    qos = ctx["qos"]
    want = "to " + (f"{wanted!r}" if wanted else "any topic") + (f" at QoS {qos}" if qos is not None else "")
    packet = await _expect(ctx, session, Publish, want,
                           lambda p: (wanted is None or p.topic == wanted) and (qos is None or p.qos == qos),
                           lambda p: f"{p.topic!r} QoS {p.qos}")
    if isinstance(packet, Judgement):
        return packet
    return Judgement(Verdict.PASS, f"PUBLISH {packet.topic!r} QoS {packet.qos}, {len(packet.payload)} bytes", (),
                     {"topic": packet.topic, "qos": packet.qos})


async def mqtt_puback_qos1(ctx: CaseContext) -> Judgement:
    judgement, _ = await _deliver_qos1(ctx, ctx["payload"].encode(), "a QoS 1 message")
    return judgement


async def _next_retry(ctx: CaseContext, attempts: list[tuple[float, float | None]]) -> Arrival:
    timeout = ctx["retry_timeout"]
    try:
        return await ctx.arrival(timeout, retry=True)
    except TimeoutError:
        raise CaseEnd(Verdict.FAIL, f"after attempt {len(attempts)} the device did not try again within "
                                    f"{timeout:g} s") from None
    except DeviceExited as exc:
        raise CaseEnd(Verdict.FAIL, f"after attempt {len(attempts)} the device did not retry: "
                                    f"{exc.exit.describe()}") from None


async def _hold_without_connack(ctx: CaseContext, session: Session, withhold: float) -> float:
    """Keep the connection open without CONNACK until the device gives up or ``withhold`` passes; the time it
    ended."""
    try:
        await session.until(lambda p: False, withhold)
    except (DeviceGone, MalformedPacket):
        ctx.timeline.device("gave up waiting for CONNACK", when=session.stream.closed_at)
        return session.stream.closed_at or time.monotonic()
    ctx.timeline.endpoint(f"closed the connection after {withhold:g} s without CONNACK")
    await session.stream.close()
    return time.monotonic()


async def _failing_rounds(ctx: CaseContext, *, rounds: int, attempts: int, fail) -> list[list[float]]:
    """``rounds`` times: ``attempts`` connections that ``fail`` (a coroutine returning when the attempt ended),
    then one accepted; the reconnect delays of each round."""
    delays = []
    history: list[tuple[float, float | None]] = []
    for r in range(rounds):
        times: list[tuple[float, float | None]] = []
        for n in range(attempts + 1):
            arrival = await ctx.arrival() if not history else await _next_retry(ctx, history)
            session = await ctx.session(arrival, connack=False)
            if n < attempts:
                ended = await fail(session)
                times.append((arrival.at, ended))
                history.append((arrival.at, ended))
                continue
            times.append((arrival.at, None))
            history.append((arrival.at, None))
            await session.send(session.peer.connack())
            if r < rounds - 1:
                ctx.timeline.endpoint(f"round {r + 1} done: accepted, then closed the connection to start round "
                                      f"{r + 2}")
                await session.disconnect()
        round_delays = backoff_delays(times)
        ctx.timeline.note(f"round {r + 1} reconnect delays: {', '.join(f'{d:.3f}' for d in round_delays)} s")
        delays.append(round_delays)
    return delays


async def mqtt_jitter_backoff(ctx: CaseContext) -> Judgement:
    withhold = ctx["withhold"]
    rounds = await _failing_rounds(ctx, rounds=ctx["rounds"], attempts=ctx["attempts"],
                                   fail=lambda s: _hold_without_connack(ctx, s, withhold))
    return judge_backoff(rounds, require_jitter=True, min_growth=ctx["min_growth"])


async def mqtt_exponential_backoff(ctx: CaseContext) -> Judgement:
    async def refuse(session: Session) -> float:
        await session.send(session.peer.connack(refuse=True))
        await session.stream.close()
        return time.monotonic()

    rounds = await _failing_rounds(ctx, rounds=1, attempts=ctx["attempts"], fail=refuse)
    return judge_backoff(rounds, require_jitter=False, min_growth=ctx["min_growth"])


async def mqtt_server_disconnect(ctx: CaseContext) -> Judgement:
    times: list[tuple[float, float | None]] = []
    for n in range(ctx["reconnections"] + 1):
        arrival = await ctx.arrival() if not times else await _next_retry(ctx, times)
        session = await ctx.session(arrival)
        if n == ctx["reconnections"]:
            times.append((arrival.at, None))
            break
        ended = await session.disconnect()
        ctx.timeline.endpoint("disconnected the device right after CONNACK")
        times.append((arrival.at, ended))
    delays = backoff_delays(times)
    return judge_backoff([delays], require_jitter=True, min_growth=ctx["min_growth"], min_delay=ctx["min_delay"])


async def mqtt_keep_alive(ctx: CaseContext) -> Judgement:
    session = await ctx.session()
    keep_alive = session.connect.keep_alive
    max_wait = ctx["max_wait"]
    if keep_alive == 0 or keep_alive * 1.5 > max_wait:
        return judge_keepalive(keep_alive, [], observed=0.0, max_wait=max_wait)
    observe = min(max_wait, keep_alive * (ctx["periods"] + 0.5))
    start = last = time.monotonic()
    end = start + observe
    silences = []
    while True:
        now = time.monotonic()
        left = min(end - now, last + keep_alive * 1.5 - now + 0.05)
        if left <= 0:
            break
        try:
            packet = await session.peer.packet(left)
        except TimeoutError:
            continue
        except (DeviceGone, MalformedPacket) as exc:
            raise _error(f"inconclusive: the device closed the connection after {time.monotonic() - start:.2f} s "
                         f"of the {observe:g} s observation ({exc})") from None
        now = time.monotonic()
        silences.append(now - last)
        last = now
        await session.reply(packet)
    now = time.monotonic()
    silences.append(now - last)
    if silences[-1] > keep_alive * 1.5:
        ctx.timeline.endpoint(f"closed the connection: no packet for {silences[-1]:.2f} s (1.5 x keep alive)")
    return judge_keepalive(keep_alive, silences, observed=now - start, max_wait=max_wait)


async def mqtt_client_id(ctx: CaseContext) -> Judgement:
    session = await ctx.session()
    c = session.connect
    return judge_client_id(c.client_id, username=c.username, password=c.password)


# --------------------------------------------------------------------------------------------- permissions

async def permissions(ctx: CaseContext) -> Judgement:
    session = await ctx.session(connack=False)
    arrival = session.arrival
    path = ctx["policy"]
    if path and ctx.base_dir is not None and not Path(path).is_absolute():
        path = str(ctx.base_dir / path)
    try:
        bound = ctx.policies.bind(session.handshake.peer_der, path or None)
    except LookupError as exc:
        raise _error(f"precondition failed: {exc}") from None
    ctx.timeline.note(f"deciding with {bound.description}")
    findings = [f"policy {name!r} Statement[{f.statement_index}]: {f.message}" if f.statement_index is not None
                else f"policy {name!r}: {f.message}" for name, doc in bound.documents for f in lint(doc)]
    c = session.connect
    source_ip = arrival.address[0]
    decisions = []

    def decide(action: str, resource: str, **extra):
        request = Request(action, resource, client_id=c.client_id, source_ip=source_ip, **extra)
        decision = bound.compiled.evaluate(request)
        decisions.append((action, resource, decision))
        word = "allowed" if decision.allowed else "DENIED"
        ctx.timeline.note(f"{action} on {resource}: {word} by {describe_decision(decision)}")
        return decision.allowed

    attributes = set()
    if not c.clean_start:
        attributes.add("PersistentConnect")
    if c.will is not None:
        attributes.add("LastWill")
    connect_ok = decide("iot:Connect", f"client/{c.client_id}", connect_attributes=attributes,
                        last_will_topic=c.will.topic if c.will else None)
    if c.will is not None:
        decide("iot:Publish", f"topic/{c.will.topic}")
        if c.will.retain:
            decide("iot:RetainPublish", f"topic/{c.will.topic}")
    if not connect_ok:
        await session.send(session.peer.not_authorized())
        return judge_permissions(decisions, lint_findings=findings)
    await session.send(session.peer.connack())
    deadline = time.monotonic() + ctx["observe"]
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            packet = await session.peer.packet(left)
        except TimeoutError:
            break
        except (DeviceGone, MalformedPacket):
            break
        if isinstance(packet, Subscribe):
            allowed = {s.topic_filter: decide("iot:Subscribe", f"topicfilter/{s.topic_filter}")
                       for s in packet.subscriptions}
            await session.reply(packet, granted=lambda f: allowed[f])
        elif isinstance(packet, Publish):
            ok = decide("iot:Publish", f"topic/{packet.topic}")
            if packet.retain:
                ok = decide("iot:RetainPublish", f"topic/{packet.topic}") and ok
            if ok:
                await session.reply(packet)
            elif session.peer.level == 5:
                if packet.qos == 1:
                    await session.send(PubAck(packet.packet_id, ReasonCode.NOT_AUTHORIZED))
            else:
                ctx.timeline.endpoint("closed the connection (AWS IoT Core's answer to an unauthorized MQTT 3.1.1 "
                                      "publish)")
                break
        elif isinstance(packet, Unsubscribe):
            await session.reply(packet)
        elif isinstance(packet, Disconnect):
            break
        else:
            await session.reply(packet)
    return judge_permissions(decisions, lint_findings=findings)


CASE_RUNNERS: dict[str, Callable[[CaseContext], Awaitable[Judgement]]] = {
    "TLS_Connect": tls_connect,
    "TLS_Incorrect_Subject_Name_Server_Cert": tls_incorrect_subject_name,
    "TLS_Unsecure_Server_Cert": tls_unsecure_server_cert,
    "TLS_Expired_Server_Cert": tls_expired_server_cert,
    "TLS_Large_Size_Server_Cert": tls_large_server_cert,
    "TLS_Receive_Maximum_Size_Fragments": tls_max_fragments,
    "TLS_Support_AWS_IoT_Cipher_Suites": tls_cipher_suites,
    "TLS_Refuse_Legacy_Versions": tls_legacy_versions,
    "MQTT_Connect": mqtt_connect,
    "MQTT_Subscribe": mqtt_subscribe,
    "MQTT_Publish": mqtt_publish,
    "MQTT_Client_Puback_Qos1": mqtt_puback_qos1,
    "MQTT_Connect_Jitter_Backoff_Retries": mqtt_jitter_backoff,
    "MQTT_Connect_Exponential_Backoff_Retries": mqtt_exponential_backoff,
    "MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect": mqtt_server_disconnect,
    "MQTT_Keep_Alive": mqtt_keep_alive,
    "MQTT_Client_Id_No_Secrets": mqtt_client_id,
    "Permissions_Least_Privilege": permissions,
}
