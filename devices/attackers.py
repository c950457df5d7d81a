"""Attackers: connections whose expected outcome is refusal, and the evidence of what each one met.

Identities are made for the run (:class:`~devices.run_identities.RunIdentities`, retired at its end), never among
the fleet's devices: a foreign CA and an expired certificate with :mod:`certs.authority` and an injected
``now``; revoked and INACTIVE certificates through the registry; an unregistered one signed by the home's CA
and never registered; valid things (default policy) for the attacks that need a legitimate identity to begin
with. Every attacker uses ``max_resends=0``: a refused publish is never sent twice.

Each attack returns one :class:`~devices.report.Observation` classified from evidence
(:mod:`devices.evidence`): got in, refused in TLS, refused in MQTT, closed by the server, or inconclusive (the
target did not answer: never counted as refused).

A SUBACK or PUBACK that says yes is not yet evidence that something got through: Mosquitto grants every
subscription and enforces its ACL when it delivers, and acknowledges a forbidden MQTT 3.1.1 publish that it then
drops. So the policy attacks test delivery against a *victim*, a legitimate device the run makes and connects
(:class:`Victim`): a publish outside the policy got in when the victim received it; a subscription outside the
policy got in when the attacker received what the victim published. A refusal by silence is counted only when a
control message that had to arrive did (the attacker's or the victim's own, on its own topics); otherwise the
attack is inconclusive.

* ``client-id-spoof``: a CONNECT with the victim's client id and the attacker's certificate. A target that binds
  client ids to certificates (the gateway, AWS IoT Core: ``iot:Connect`` on ``client/<id>``) must refuse the
  CONNECT. A plain broker cannot bind them; there the attack got in when the spoofed client id gave it the
  victim's rights (publish and receive on the victim's topics).
* ``publish-outside-policy``: a command published to another thing's command topic.
* ``subscribe-outside-policy`` / ``wildcard-subscribe``: another thing's command topics / ``#``.
* ``oversize-payload``: a PUBLISH above AWS IoT's 128 KiB payload limit (MQTT 3.1.1).
* ``connect-flood``: many CONNECTs with one client id at once: refused only when the server throttles it.
* ``slow-handshake``: TCP opened and nothing sent: refused when the server closes it before the attack's timeout.
* ``expired-token``, ``foreign-audience-token``, ``replayed-signature``, ``wrong-secret-signature``: no certificate,
  against the gateway's token listener (:mod:`devices.token_attacks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import errno
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from certs.authority import CertificateAuthority, build_root_ca, load_certificates
from certs.keys import generate_private_key, load_private_key
from devices.client import (ClientCore, ClientOptions, Connected, ConnectOutcome, ConnectRefused, Endpoint,
                            ProtocolViolation, PublishResult, ServerDisconnected)
from devices.connectors import Connector, DeviceLink
from devices.connectors._common import code_name
from devices.evidence import (THROTTLE_CODES_V3, THROTTLE_CODES_V5, classify_connect, classify_publish,
                              classify_subscribe, classify_tls_failure, connect_detail, publish_detail)
from devices.fleet_devices import close_link
from devices.identity import DeviceIdentity, make_key_and_csr
from devices.plan import FleetError
from devices.report import Observation, Outcome
from devices.run_identities import RunIdentities
from devices.runtime import Flag, RunContext, until, wait_any
from devices.scenario import ATTACKER_KINDS, AttackerGroup
from devices.token_attacks import SIGV4_KINDS, TOKEN_ATTACKER_KINDS, TokenWorld, token_attack
from gateway.mqtt import Publish

__all__ = ["ATTACKER_KINDS", "Attacker", "AttackerFactory", "AttackersPart", "Victim", "attack", "connect_detail",
           "not_applicable"]

OVERSIZE = 128 * 1024 + 1
VICTIM = "atk-victim-01"              # connected during the attacks: what publish and subscribe attacks aim at
SPOOFED = "atk-victim-02"             # registered, never connected: the client id the spoofer claims
# kinds defined by registry state (a status, a registration) that a broker without the registry never sees
REGISTRY_KINDS = ("revoked", "inactive", "unregistered")
# kinds that need identities made by this simulator (a local PKI and registry)
LOCAL_IDENTITY_KINDS = tuple(k for k in ATTACKER_KINDS if k not in ("no-certificate", "slow-handshake",
                                                                    "foreign-ca"))  # token kinds: a local registry
# kinds whose evidence may need the victim's connection
VICTIM_KINDS = ("publish-outside-policy", "subscribe-outside-policy", "wildcard-subscribe")
CONNECT_KINDS = ("foreign-ca", "expired", "revoked", "inactive", "unregistered")
ALERT_WAIT = 0.2                      # no-certificate: how long a TLS 1.3 server's alert may take after the handshake
GRACE = 0.5                           # after a control message arrived, how long a forbidden one may still come
MAX_CONCURRENT = 50


def not_applicable(kind: str, target: str, local: bool, token_port: int | None = None) -> str:
    """Why an attack is skipped on this target ("" when it runs)."""
    if kind in TOKEN_ATTACKER_KINDS:
        if target == "mosquitto":
            return "a plain broker has no custom authorizers and no SigV4 keys"
        if target == "aws":
            return "the simulator does not create custom authorizers or IAM keys in an AWS account"
        if not local:
            return "needs the run's authorizer and access key in a local registry"
        if token_port is None:
            return "needs the gateway's token listener: pass --token-port"
        return ""
    if target == "mosquitto" and kind in REGISTRY_KINDS:
        if kind == "revoked":
            return "a plain broker knows revocations only from the CRL it loaded at start, not from the registry"
        return "a plain broker keeps no registry of certificate statuses"
    if not local and kind in LOCAL_IDENTITY_KINDS:
        return "needs identities made in a local registry"
    return ""


@dataclasses.dataclass(frozen=True, slots=True)
class Attacker:
    kind: str
    member: str                      # attacker's name in the report
    identity: DeviceIdentity | None  # None: no certificate / no TLS at all
    client_id: str
    victim: str = ""                 # the thing whose rights it tries to use


# --------------------------------------------------------------------------------------------- identities

@dataclasses.dataclass
class AttackerFactory:
    """Makes attacker identities (and the victims) through the run's identities."""

    identities: RunIdentities
    now: dt.datetime
    _foreign: CertificateAuthority | None = None
    _given: dict[str, CertificateAuthority] = dataclasses.field(default_factory=dict)
    _spoofed: bool = False

    def make(self, group: AttackerGroup, index: int) -> Attacker:
        kind = group.kind
        name = f"atk-{kind}-{index:02d}"
        ids = self.identities
        if kind in ("no-certificate", "slow-handshake"):
            return Attacker(kind, name, None, name)
        if kind in TOKEN_ATTACKER_KINDS:
            world = ids.token_world()        # the authorizer and keys exist before the run's propagation wait
            if kind in SIGV4_KINDS:
                world.add_key(name)
            return Attacker(kind, name, None, name)
        if kind == "foreign-ca":
            foreign = self._foreign_ca(group)
            key, csr = make_key_and_csr(name)
            pem = foreign.pem_with_chain(foreign.sign_device_csr(csr, name, now=self.now))
            return Attacker(kind, name, ids.write(name, key, pem), name)
        if kind == "expired":
            # valid for one day, a year ago; registered ACTIVE so only its validity refuses it
            return Attacker(kind, name, ids.issue(name, not_before=self.now - dt.timedelta(days=365), days=1), name)
        if kind in ("revoked", "inactive"):
            return Attacker(kind, name, ids.issue(name, status=kind.upper()), name)
        if kind == "unregistered":
            return Attacker(kind, name, ids.issue(name, status=None), name)
        identity = ids.issue(name)
        if kind == "client-id-spoof":
            if not self._spoofed:        # the thing whose client id is claimed exists, as a real victim would
                ids.issue(SPOOFED)
                self._spoofed = True
            return Attacker(kind, name, identity, SPOOFED, SPOOFED)
        return Attacker(kind, name, identity, name, VICTIM)

    def _foreign_ca(self, group: AttackerGroup) -> CertificateAuthority:
        """The scenario's foreign CA (``ca_cert`` and ``ca_key``: one the target must not trust, e.g. a retired
        vendor CA), else one made for this run."""
        if group.ca_cert:
            if group.ca_cert not in self._given:
                self._given[group.ca_cert] = load_foreign_ca(group.ca_cert, group.ca_key)
            return self._given[group.ca_cert]
        if self._foreign is None:
            self._foreign = build_root_ca(generate_private_key("ec-p256"), "Foreign Root", now=self.now)
        return self._foreign

    def victim(self) -> DeviceIdentity:
        return self.identities.issue(VICTIM)


def load_foreign_ca(cert_path: str, key_path: str) -> CertificateAuthority:
    """A CA from its certificate and key files, to sign foreign-ca attackers with."""
    try:
        cert = load_certificates(Path(cert_path).read_bytes(), source=cert_path)[0]
        key = load_private_key(Path(key_path))
    except OSError as exc:
        raise FleetError(f"attackers: foreign-ca: cannot read {exc.filename or cert_path}: {exc.strerror}") from None
    return CertificateAuthority(key, cert)


# --------------------------------------------------------------------------------------------- evidence helpers

class Received:
    """Payloads one link received during an attack: evidence of delivery."""

    def __init__(self) -> None:
        self.payloads: set[bytes] = set()
        self._changed = Flag()

    async def collect(self, messages: AsyncIterator[Publish]) -> None:
        async for message in messages:
            data = bytes(message.payload)
            if data.startswith(MARKER_PREFIX):       # only markers: a "#" subscription may see a whole fleet
                self.payloads.add(data)
                self._changed.set()

    async def wait_for(self, *payloads: bytes, timeout: float) -> bool:
        """Wait until one of ``payloads`` arrived (True), at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not any(p in self.payloads for p in payloads):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            await wait_any((self._changed,), timeout=left)
        return True


@contextlib.asynccontextmanager
async def receiving(link: DeviceLink) -> AsyncIterator[Received]:
    """Collect what ``link`` receives while the block runs (the collector task is owned and cancelled here)."""
    received = Received()
    messages = link.messages()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(received.collect(messages), name=f"receive {link.client_id}")
        try:
            yield received
        finally:
            task.cancel()


MARKER_PREFIX = b'{"evidence":"'


def marker(attacker: Attacker, purpose: str) -> bytes:
    """A payload no one else sends (JSON without the fields the operator reads)."""
    return MARKER_PREFIX + f'{attacker.member}:{purpose}:{secrets.token_hex(6)}"}}'.encode()


class Victim:
    """A legitimate device connected with its own identity, subscribed to its own command topics
    (``cmd/<victim>/#``): what the attackers aim at, and the sender of the messages a forbidden subscription
    must not receive."""

    def __init__(self, identity: DeviceIdentity, *, connector: Connector, endpoint: Endpoint, level: int) -> None:
        self.thing = identity.thing_name
        self.link = connector.link(identity, endpoint, client_id=self.thing,
                                   options=ClientOptions(protocol_level=level, max_resends=0, keep_alive=60,
                                                         connect_timeout=15.0))
        self.ready = Flag()
        self.done = Flag()
        self.failure = ""
        self.received: Received | None = None

    @property
    def topic(self) -> str:
        return f"cmd/{self.thing}/#"

    async def run(self) -> None:
        try:
            outcome = await self.link.connect()
            if not outcome.ok:
                self.failure = f"the victim device could not connect ({connect_detail(outcome)})"
                return
            async with receiving(self.link) as received:
                result = await self.link.subscribe(self.topic, qos=1, timeout=15.0)
                if not result.ok:
                    self.failure = f"the victim device could not subscribe to {self.topic} ({result.reason})"
                    return
                self.received = received
                self.ready.set()
                await self.done.wait()
        finally:
            self.received = None
            self.ready.set()
            await close_link(self.link)

    async def publish(self, topic: str, data: bytes, timeout: float) -> bool:
        if self.received is None:
            return False
        return (await self.link.publish(topic, data, qos=1, timeout=timeout)).ok


# --------------------------------------------------------------------------------------------- attacks

def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0) or type(exc).__name__


async def _no_certificate(endpoint: Endpoint, ca_file: str, timeout: float, level: int) -> tuple[Outcome, str]:
    """TLS with the server verified but no client certificate, then a CONNECT."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if endpoint.alpn:
        ctx.set_alpn_protocols(list(endpoint.alpn))
    core = ClientCore("atk-no-certificate", ClientOptions(protocol_level=level))
    writer = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            except OSError as exc:
                return Outcome.INCONCLUSIVE, f"tcp: {_errno_name(exc)}"
            try:
                await writer.start_tls(ctx, server_hostname=endpoint.sni)
            except ssl.SSLError as exc:
                return classify_tls_failure(f"{exc.reason}: {exc}")
            except OSError as exc:
                return classify_tls_failure(f"{_errno_name(exc)}: {exc}")
            # TLS 1.3: the server judges the (missing) client certificate after the handshake; give its alert a
            # moment to arrive before CONNECT, or a close with CONNECT unread may reset the connection over it
            try:
                early = await asyncio.wait_for(reader.read(4096), ALERT_WAIT)
            except TimeoutError:
                early = None
            except ssl.SSLError as exc:
                return classify_tls_failure(f"{exc.reason}: {exc}")
            except OSError as exc:
                return Outcome.CLOSED, f"closed by the server after the TLS handshake ({_errno_name(exc)})"
            if early == b"":
                return Outcome.CLOSED, "closed by the server after the TLS handshake (EOF; no TLS alert received)"
            core.connect()
            writer.write(core.data_to_send())
            while True:
                try:
                    data = await reader.read(4096)
                except ssl.SSLError as exc:
                    return classify_tls_failure(f"{exc.reason}: {exc}")
                except OSError as exc:
                    data = b""
                    reset = _errno_name(exc)
                else:
                    reset = "EOF"
                if not data:
                    return Outcome.CLOSED, (f"closed by the server after CONNECT, before CONNACK ({reset}; no TLS "
                                            "alert sent)")
                for event in core.receive_data(data):
                    if isinstance(event, Connected):
                        return Outcome.ALLOWED, "CONNACK accepted without a client certificate"
                    if isinstance(event, ConnectRefused):
                        return Outcome.REFUSED_MQTT, f"CONNACK {code_name(level, event.reason_code)}"
                    if isinstance(event, ServerDisconnected):
                        return Outcome.REFUSED_MQTT, f"DISCONNECT {code_name(5, event.reason_code)}"
                    if isinstance(event, ProtocolViolation):
                        return Outcome.INCONCLUSIVE, f"protocol: {event.error}"
    except TimeoutError:
        return Outcome.INCONCLUSIVE, f"no answer within {timeout:g} s"
    finally:
        if writer is not None:
            writer.close()


async def _slow_handshake(endpoint: Endpoint, timeout: float) -> tuple[Outcome, str]:
    """Open TCP and send nothing: the server must close the connection at its handshake deadline."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    except OSError as exc:
        return Outcome.INCONCLUSIVE, f"tcp: {_errno_name(exc)}"
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
        return Outcome.CLOSED, f"closed by the server after {time.monotonic() - started:.1f} s"
    except TimeoutError:
        return Outcome.ALLOWED, f"handshake still open after {timeout:g} s"
    except OSError:
        return Outcome.CLOSED, f"reset by the server after {time.monotonic() - started:.1f} s"
    finally:
        writer.close()


async def _flood(attacker: Attacker, group: AttackerGroup, connector: Connector, endpoint: Endpoint,
                 options: ClientOptions, record: Callable[[ConnectOutcome], None]) -> tuple[Outcome, str]:
    links = [connector.link(attacker.identity, endpoint, client_id=attacker.client_id, options=options)
             for _ in range(group.connects)]
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(link.connect()) for link in links]
        outcomes = [t.result() for t in tasks]
    finally:
        async with asyncio.TaskGroup() as tg:
            for link in links:
                tg.create_task(close_link(link))
    for o in outcomes:
        record(o)
    throttled = THROTTLE_CODES_V5 if options.protocol_level == 5 else THROTTLE_CODES_V3
    limited = [o for o in outcomes if o.code in throttled and not o.ok]
    accepted = [o for o in outcomes if o.ok]
    reasons = sorted({connect_detail(o) for o in outcomes if not o.ok})
    seen = f" ({', '.join(reasons)})" if reasons else ""
    if limited:
        return Outcome.REFUSED_MQTT, f"{len(limited)} of {group.connects} CONNECTs throttled{seen}"
    if accepted:
        return Outcome.ALLOWED, f"none of {group.connects} CONNECTs throttled{seen}"
    return Outcome.INCONCLUSIVE, f"none of {group.connects} CONNECTs was answered{seen}"


async def _until_closed(publishing, closed: asyncio.Event) -> PublishResult:
    """A publish's result, or a closed-connection result as soon as the server drops the link (a refused
    publish on MQTT 3.1.1, an oversize packet)."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(publishing)
        waiter = tg.create_task(closed.wait())
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not task.done():
            task.cancel()
            return PublishResult(False, "closed")
    return task.result()


async def _silence(received: Received, forbidden: bytes, control: bytes, timeout: float, *,
                   refused: str, unproven: str) -> tuple[Outcome, str]:
    """After a forbidden message was sent: got in if it arrives; refused (by silence) only when the control
    message, sent after it on a path that had to deliver, arrived and the forbidden one did not."""
    await received.wait_for(forbidden, control, timeout=timeout)
    if forbidden in received.payloads or await received.wait_for(forbidden, timeout=GRACE):
        return Outcome.ALLOWED, ""
    if control in received.payloads:
        return Outcome.REFUSED_MQTT, refused
    return Outcome.INCONCLUSIVE, unproven


async def _publish_outside(attacker: Attacker, link: DeviceLink, closed: asyncio.Event, victim: Victim | None,
                           timeout: float) -> tuple[Outcome, str]:
    topic = f"cmd/{attacker.victim}/reboot"
    forbidden = marker(attacker, "command")
    result = await _until_closed(link.publish(topic, forbidden, qos=1, timeout=timeout), closed)
    refused = classify_publish(result)
    if refused is not None:
        return refused
    if victim is None or victim.received is None:
        return Outcome.INCONCLUSIVE, f"{publish_detail(result)} on {topic}; no victim connected to see whether " \
                                     f"it was delivered ({victim.failure if victim else 'none made'})"
    control = marker(attacker, "victim-control")
    if not await victim.publish(f"cmd/{victim.thing}/resp/control", control, timeout):
        return Outcome.INCONCLUSIVE, f"{publish_detail(result)}; the victim could not publish its control message"
    outcome, detail = await _silence(victim.received, forbidden, control, timeout,
                                     refused=f"{publish_detail(result)} but never delivered to {victim.thing} "
                                             "(dropped by the broker)",
                                     unproven=f"{publish_detail(result)}; the victim received neither it nor its "
                                              "own control message")
    return outcome, detail or f"delivered to {victim.thing} on {topic}"


async def _subscribe_outside(attacker: Attacker, link: DeviceLink, victim: Victim | None, timeout: float,
                             *, wildcard: bool) -> tuple[Outcome, str]:
    topic = "#" if wildcard else f"cmd/{attacker.victim}/#"
    async with receiving(link) as received:
        result = await link.subscribe(topic, qos=1, timeout=timeout)
        refused = classify_subscribe(result)
        if refused is not None:
            return refused
        granted = f"SUBACK granted for {topic}"
        if not wildcard:   # the control arrives through a subscription of its own, on its own topics
            own = await link.subscribe(f"cmd/{attacker.member}/#", qos=1, timeout=timeout)
            if not own.ok:
                return Outcome.INCONCLUSIVE, f"{granted}; its own cmd/{attacker.member}/# was refused, so " \
                                             "delivery cannot be checked"
        if victim is None or victim.received is None:
            return Outcome.INCONCLUSIVE, f"{granted}; no victim connected to publish what it must not receive " \
                                         f"({victim.failure if victim else 'none made'})"
        forbidden = marker(attacker, "victim-message")
        if not await victim.publish(f"cmd/{victim.thing}/resp/status", forbidden, timeout):
            return Outcome.INCONCLUSIVE, f"{granted}; the victim could not publish"
        control = marker(attacker, "own-control")
        if not (await link.publish(f"cmd/{attacker.member}/resp/control", control, qos=1, timeout=timeout)).ok:
            return Outcome.INCONCLUSIVE, f"{granted}; its control message on its own topic was refused"
        outcome, detail = await _silence(received, forbidden, control, timeout,
                                         refused=f"{granted}, but nothing outside its policy was delivered",
                                         unproven=f"{granted}; not even its own control message arrived")
        return outcome, detail or f"{granted} and received {victim.thing}'s message"


async def _oversize(attacker: Attacker, link: DeviceLink, closed: asyncio.Event, timeout: float
                    ) -> tuple[Outcome, str]:
    """A payload above 128 KiB on its own topic: got in when it comes back through its own subscription (a
    broker may acknowledge what it then drops)."""
    topic = f"cmd/{attacker.member}/resp/big"
    async with receiving(link) as received:
        own = await link.subscribe(f"cmd/{attacker.member}/#", qos=1, timeout=timeout)
        forbidden = marker(attacker, "oversize")
        forbidden += b" " * (OVERSIZE - len(forbidden))
        result = await _until_closed(link.publish(topic, forbidden, qos=1, timeout=timeout), closed)
        refused = classify_publish(result)
        if refused is not None:
            return refused
        if not own.ok:
            return Outcome.INCONCLUSIVE, f"{publish_detail(result)}; its own cmd/{attacker.member}/# was refused, so " \
                                         "delivery cannot be checked"
        control = marker(attacker, "own-control")
        await link.publish(topic, control, qos=1, timeout=timeout)
        outcome, detail = await _silence(received, forbidden, control, timeout,
                                         refused=f"{publish_detail(result)} but never delivered (dropped by the broker)",
                                         unproven=f"{publish_detail(result)}; not even its control message came back")
        return outcome, detail or f"{len(forbidden)} bytes of payload accepted and delivered"


async def _act_as(attacker: Attacker, link: DeviceLink, closed: asyncio.Event, timeout: float) -> tuple[Outcome, str]:
    """Connected with the victim's client id on a broker that cannot bind client ids: does it get the victim's
    rights? It subscribes to the victim's commands and publishes on the victim's response topic."""
    victim = attacker.victim
    async with receiving(link) as received:
        sub = await link.subscribe(f"cmd/{victim}/#", f"cmd/{attacker.member}/#", qos=1, timeout=timeout)
        if sub.reason not in ("granted", "refused"):
            return Outcome.INCONCLUSIVE, f"client id {victim} accepted; subscribe {sub.reason}"
        forbidden = marker(attacker, "as-victim")
        result = await _until_closed(link.publish(f"cmd/{victim}/resp/spoof", forbidden, qos=1, timeout=timeout),
                                     closed)
        refused = classify_publish(result)
        if refused is not None:
            outcome, detail = refused
            return outcome, f"client id {victim} accepted (a plain broker cannot bind it); as {victim}: {detail}"
        control = marker(attacker, "own-control")
        await link.publish(f"cmd/{attacker.member}/resp/control", control, qos=1, timeout=timeout)
        outcome, detail = await _silence(
            received, forbidden, control, timeout,
            refused=f"client id {victim} accepted (a plain broker cannot bind it), but its topics stayed closed to "
                    "this certificate",
            unproven=f"client id {victim} accepted; neither its message nor the control message came back")
        return outcome, detail or f"connected as {victim} and published and received on its topics"


async def attack(attacker: Attacker, group: AttackerGroup, *, connector: Connector, endpoint: Endpoint, ca_file: str,
                 binds_client_id: bool = True, victim: Victim | None = None,
                 record: Callable[[ConnectOutcome], None] = lambda o: None) -> Observation:
    """Run one attacker; the observation says what it met."""
    kind = attacker.kind
    base = dict(group=group.name, member=attacker.member, expect="refused")
    if kind == "no-certificate":
        outcome, detail = await _no_certificate(endpoint, ca_file, group.timeout, group.protocol)
        return Observation(outcome=outcome, detail=detail, **base)
    if kind == "slow-handshake":
        outcome, detail = await _slow_handshake(endpoint, group.timeout)
        return Observation(outcome=outcome, detail=detail, **base)
    level = 4 if kind == "oversize-payload" else group.protocol
    options = ClientOptions(protocol_level=level, max_resends=0, connect_timeout=group.timeout, keep_alive=60)
    if kind == "connect-flood":
        outcome, detail = await _flood(attacker, group, connector, endpoint, options, record)
        return Observation(outcome=outcome, detail=detail, **base)
    closed = asyncio.Event()
    link = connector.link(attacker.identity, endpoint, client_id=attacker.client_id, options=options,
                          on_disconnect=lambda notice: closed.set())
    try:
        connected = await link.connect()
        record(connected)
        if kind in CONNECT_KINDS or (kind == "client-id-spoof" and (binds_client_id or not connected.ok)):
            outcome, detail = classify_connect(connected)
            if kind == "client-id-spoof" and connected.ok:
                detail = f"CONNECT accepted with the client id of {attacker.victim}"
            return Observation(outcome=outcome, detail=detail, **base)
        if not connected.ok:
            # the attack needs a connection first: not getting one proves nothing about what it attacks
            return Observation(outcome=Outcome.INCONCLUSIVE, detail=f"could not connect with its own valid identity "
                                                                   f"to try ({connect_detail(connected)})", **base)
        if kind == "client-id-spoof":
            outcome, detail = await _act_as(attacker, link, closed, group.timeout)
        elif kind == "publish-outside-policy":
            outcome, detail = await _publish_outside(attacker, link, closed, victim, group.timeout)
        elif kind in ("subscribe-outside-policy", "wildcard-subscribe"):
            outcome, detail = await _subscribe_outside(attacker, link, victim, group.timeout,
                                                       wildcard=kind == "wildcard-subscribe")
        elif kind == "oversize-payload":
            outcome, detail = await _oversize(attacker, link, closed, group.timeout)
        else:
            raise ValueError(f"unknown attacker kind {kind!r}")
        return Observation(outcome=outcome, detail=detail, **base)
    finally:
        await close_link(link)


# --------------------------------------------------------------------------------------------- the part

@dataclasses.dataclass(frozen=True, slots=True)
class Planned:
    group: AttackerGroup
    member: str
    attacker: Attacker | None        # None: skipped
    skipped: str = ""


class AttackersPart:
    """The ``attackers`` part: every attacker group of the scenario, at most 50 attackers at once, with the victim
    connected while they run. Its observations are in :attr:`observations` once :attr:`done` is set."""

    def __init__(self, ctx: RunContext, planned: Sequence[Planned], *, connector: Connector, endpoint: Endpoint,
                 ca_file: str, target: str, victim: DeviceIdentity | None, level: int,
                 propagation: float, token_port: int | None = None,
                 token_world: Callable[[], TokenWorld] | None = None) -> None:
        self.ctx = ctx
        self.planned = list(planned)
        self.connector = connector
        self.endpoint = endpoint
        self.ca_file = ca_file
        self.target = target
        self.victim_identity = victim
        self.level = level
        self.propagation = propagation
        self.token_port = token_port
        self.token_world = token_world
        self.observations: list[Observation] = []
        self.done = Flag()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.done.set()

    async def _run(self) -> None:
        for p in self.planned:
            if p.attacker is None:
                self.observations.append(Observation(p.group.name, p.member, "refused", Outcome.SKIPPED,
                                                     skipped=p.skipped))
        runnable = [p for p in self.planned if p.attacker is not None]
        if not runnable:
            return
        await self.ctx.sleep(self.propagation)
        victim = None
        if self.victim_identity is not None and any(p.attacker.kind in VICTIM_KINDS for p in runnable):
            victim = Victim(self.victim_identity, connector=self.connector, endpoint=self.endpoint, level=self.level)
        sem = asyncio.Semaphore(MAX_CONCURRENT)

        async def one(p: Planned) -> None:
            async with sem:
                if p.attacker.kind in TOKEN_ATTACKER_KINDS:
                    self.observations.append(await self._token_attack(p))
                    return
                self.observations.append(await attack(
                    p.attacker, p.group, connector=self.connector, endpoint=self.endpoint, ca_file=self.ca_file,
                    binds_client_id=self.target != "mosquitto", victim=victim, record=self.ctx.stats.connect))

        async with asyncio.TaskGroup() as tg:
            if victim is not None:
                tg.create_task(until(victim.run(), self.ctx.stopping), name="victim")
                await self.ctx.wait(victim.ready)
            try:
                async with asyncio.TaskGroup() as attacks:
                    for p in runnable:
                        attacks.create_task(one(p), name=p.attacker.member)
            finally:
                if victim is not None:
                    victim.done.set()

    async def _token_attack(self, p: Planned) -> Observation:
        assert self.token_port is not None and self.token_world is not None
        world = await asyncio.to_thread(self.token_world)
        outcome, detail = await token_attack(p.attacker.kind, p.member, world, host=self.endpoint.host,
                                             port=self.token_port, ca_file=self.ca_file, timeout=p.group.timeout,
                                             now=dt.datetime.now(dt.UTC))
        return Observation(p.group.name, p.member, "refused", outcome, detail)


def plan_attackers(scenario_attackers: Sequence[AttackerGroup], *, target: str, factory: AttackerFactory | None,
                   ca_file: str | None, token_port: int | None = None) -> list[Planned]:
    """Every attacker of the scenario: made, or skipped with the reason."""
    out = []
    for group in scenario_attackers:
        skip = not_applicable(group.kind, target, factory is not None and factory.identities.local is not None,
                              token_port)
        for i in range(1, group.count + 1):
            member = f"atk-{group.kind}-{i:02d}"
            if skip or factory is None:
                out.append(Planned(group, member, None, skip or "no identities for attackers"))
                continue
            attacker = factory.make(group, i)
            if attacker.identity is not None and ca_file:
                attacker = dataclasses.replace(
                    attacker, identity=dataclasses.replace(attacker.identity, ca_file=ca_file))
            out.append(Planned(group, member, attacker))
    return out

