"""Attackers: connections whose expected outcome is refusal.

Identities are made in a scratch area of the home (``<home>/fleet-run/attackers``), never among the fleet's
devices: a foreign CA and an expired certificate with :mod:`certs.authority` and an injected ``now``; revoked
and INACTIVE certificates through the registry; an unregistered one signed by the home's CA and never
registered; and valid things (default policy) for the attacks that need a legitimate identity to begin with
(client-id spoofing, publish or subscribe outside the policy, wildcard subscription, oversize payload, connect
flood). Every attacker uses ``max_resends=0``: a refused publish is never sent twice.

Each attack returns one :class:`~devices.report.Observation` per attacker: ``allowed`` when it got in (a
CONNACK accepted, a PUBACK/SUBACK granted, a handshake left open), ``refused`` otherwise, with what the
attacker saw.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from certs.authority import build_root_ca
from certs.keys import generate_private_key
from devices.client import ClientOptions, ConnectOutcome, Endpoint, PublishResult
from devices.identity import DeviceIdentity, make_key_and_csr, write_device_dir
from devices.report import Observation
from devices.scenario import ATTACKER_KINDS, AttackerGroup
from gateway.mqtt import Connect, Framer, decode, encode

OVERSIZE = 128 * 1024 + 1
# a connect flood counts as refused only when the server throttles it (rate or quota), not for other failures
THROTTLE_CODES_V5 = {0x88, 0x89, 0x97, 0x9F}
THROTTLE_CODES_V3 = {0x03}
# kinds that a plain TLS broker (Mosquitto with require_certificate) refuses by itself; the rest are the
# gateway's registry and policy checks
TLS_KINDS = ("no-certificate", "foreign-ca", "expired", "slow-handshake")
# kinds that need identities made by this simulator (a local PKI and registry)
LOCAL_IDENTITY_KINDS = tuple(k for k in ATTACKER_KINDS if k not in ("no-certificate", "slow-handshake",
                                                                    "foreign-ca"))


def not_applicable(kind: str, target: str, local: bool) -> str:
    """Why an attack is skipped on this target ("" when it runs)."""
    if target == "mosquitto" and kind not in TLS_KINDS:
        return "not enforced by a bare broker (run it against the gateway)"
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
    """Makes attacker identities in ``scratch``; registry work goes through ``register(thing, cert, pem, status)``
    (None on targets without a local registry)."""

    scratch: Path
    root_pem: bytes
    issuer: object | None            # certs.authority.CertificateAuthority of the home
    register: Callable[..., str] | None
    now: dt.datetime
    victims: Sequence[str] = ()
    _foreign: object | None = None

    def _write(self, name: str, key, chain_pem: bytes) -> DeviceIdentity:
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_device_dir(self.scratch, name, key, chain_pem, self.root_pem)
        return DeviceIdentity.load(self.scratch / name)

    def _signed(self, name: str, *, now: dt.datetime | None = None, days: int = 30, status: str | None = "ACTIVE"):
        key, csr = make_key_and_csr(name)
        cert = self.issuer.sign_device_csr(csr, name, now=now or self.now, days=days)
        pem = self.issuer.pem_with_chain(cert)
        identity = self._write(name, key, pem)
        if status is not None and self.register is not None:
            self.register(name, cert, pem, status)
        return identity

    def make(self, group: AttackerGroup, index: int) -> Attacker:
        kind = group.kind
        name = f"atk-{kind}-{index:02d}"
        victim = self.victims[index % len(self.victims)] if self.victims else "sim-victim-00001"
        if kind in ("no-certificate", "slow-handshake"):
            return Attacker(kind, name, None, name)
        if kind == "foreign-ca":
            if self._foreign is None:
                self._foreign = build_root_ca(generate_private_key("ec-p256"), "Foreign Root", now=self.now)
            key, csr = make_key_and_csr(name)
            foreign = self._foreign
            pem = foreign.pem_with_chain(foreign.sign_device_csr(csr, name, now=self.now))
            return Attacker(kind, name, self._write(name, key, pem), name)
        if kind == "expired":
            # valid for one day, a year ago; registered ACTIVE so only its validity refuses it
            return Attacker(kind, name, self._signed(name, now=self.now - dt.timedelta(days=365), days=1), name)
        if kind == "revoked":
            return Attacker(kind, name, self._signed(name, status="REVOKED"), name)
        if kind == "inactive":
            return Attacker(kind, name, self._signed(name, status="INACTIVE"), name)
        if kind == "unregistered":
            return Attacker(kind, name, self._signed(name, status=None), name)
        identity = self._signed(name)
        client_id = victim if kind == "client-id-spoof" else name
        return Attacker(kind, name, identity, client_id, victim)


# --------------------------------------------------------------------------------------------- attacks

def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def connect_detail(outcome: ConnectOutcome) -> str:
    """A refusal as a short reason for reports: ``CONNACK NOT_AUTHORIZED (0x87)``, ``tls: ...``."""
    if outcome.ok:
        return "connected"
    if outcome.reason == "refused":
        return f"CONNACK {outcome.detail}"
    if outcome.reason == "closed":
        return "closed before CONNACK"
    return _short(f"{outcome.reason}: {outcome.detail.split(':')[0]}", 60)


async def _connected(link) -> tuple[bool, str]:
    outcome = await link.connect()
    return outcome.ok, connect_detail(outcome)


async def _close(link) -> None:
    try:
        if link.connected:
            await asyncio.wait_for(link.disconnect(), 2.0)
    except (TimeoutError, OSError):
        link.abort()
    except Exception:  # noqa: BLE001 - an attacker's link may end in any state; it only has to be gone
        link.abort()


async def _raw_no_certificate(endpoint: Endpoint, ca_file: str, timeout: float, level: int) -> tuple[bool, str]:
    """TLS with the server verified but no client certificate, then a CONNECT."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if endpoint.alpn:
        ctx.set_alpn_protocols(list(endpoint.alpn))
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port, ssl=ctx,
                                                           server_hostname=endpoint.sni)
            try:
                writer.write(encode(Connect("atk-no-certificate", protocol_level=level), level))
                await writer.drain()
                framer = Framer(1 << 16, protocol_level=level)
                while True:
                    data = await reader.read(4096)
                    if not data:
                        return False, "closed before CONNACK"
                    frames = framer.feed(data)
                    if frames:
                        packet = decode(frames[0], level)
                        code = getattr(packet, "reason_code", getattr(packet, "return_code", None))
                        return code == 0, f"CONNACK 0x{code:02X}" if code else "connected"
            finally:
                writer.close()
    except TimeoutError:
        return False, f"no answer within {timeout:g} s"
    except ssl.SSLError as exc:
        return False, _short(f"tls: {exc.reason or exc}", 60)
    except (ConnectionError, OSError) as exc:
        return False, _short(f"closed: {type(exc).__name__}", 60)


async def _raw_slow_handshake(endpoint: Endpoint, timeout: float) -> tuple[bool, str]:
    """Open TCP and send nothing: the server must close the connection at its handshake deadline."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    except OSError as exc:
        return False, _short(f"tcp: {exc}", 60)
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
        return False, f"closed by the server after {time.monotonic() - started:.1f} s"
    except TimeoutError:
        return True, f"handshake still open after {timeout:g} s"
    except (ConnectionError, OSError):
        return False, f"reset by the server after {time.monotonic() - started:.1f} s"
    finally:
        writer.close()


async def attack(attacker: Attacker, group: AttackerGroup, *, connector, endpoint: Endpoint, ca_file: str,
                 record: Callable[[ConnectOutcome], None] = lambda o: None) -> Observation:
    """Run one attacker; the observation says whether it got in."""
    kind = attacker.kind
    base = dict(group=group.name, member=attacker.member, expect="refused")
    if kind == "no-certificate":
        got_in, detail = await _raw_no_certificate(endpoint, ca_file, group.timeout, group.protocol)
        return Observation(outcome="allowed" if got_in else "refused", detail=detail, **base)
    if kind == "slow-handshake":
        got_in, detail = await _raw_slow_handshake(endpoint, group.timeout)
        return Observation(outcome="allowed" if got_in else "refused", detail=detail, **base)
    level = 4 if kind == "oversize-payload" else group.protocol
    options = ClientOptions(protocol_level=level, max_resends=0, connect_timeout=group.timeout, keep_alive=60)
    if kind == "connect-flood":
        links = [connector.link(attacker.identity, endpoint, client_id=attacker.client_id, options=options)
                 for _ in range(group.connects)]
        outcomes = await asyncio.gather(*(link.connect() for link in links), return_exceptions=True)
        throttled = THROTTLE_CODES_V5 if level == 5 else THROTTLE_CODES_V3
        refused = [o for o in outcomes if isinstance(o, ConnectOutcome) and not o.ok]
        limited = [o for o in refused if o.reason == "refused" and o.code in throttled]
        for o in outcomes:
            if isinstance(o, ConnectOutcome):
                record(o)
        await asyncio.gather(*(_close(link) for link in links))
        reasons = sorted({connect_detail(o) for o in refused})
        detail = (f"{len(limited)} of {group.connects} CONNECTs throttled" if limited
                  else f"none of {group.connects} CONNECTs throttled") + (f" ({', '.join(reasons)})" if reasons else "")
        return Observation(outcome="refused" if limited else "allowed", detail=detail, **base)
    closed = asyncio.Event()
    link = connector.link(attacker.identity, endpoint, client_id=attacker.client_id, options=options,
                          on_disconnect=lambda notice: closed.set())
    try:
        outcome = await link.connect()
        record(outcome)
        if kind in ("foreign-ca", "expired", "revoked", "inactive", "unregistered", "client-id-spoof"):
            return Observation(outcome="allowed" if outcome.ok else "refused", detail=connect_detail(outcome), **base)
        if not outcome.ok:
            # the attack needs a connection first: not getting one is a broken setup, not a refusal
            return Observation(outcome="refused", detail=connect_detail(outcome),
                               problems=(f"could not connect with its own valid identity to try "
                                         f"({connect_detail(outcome)})",), **base)
        if kind == "publish-outside-policy":
            result = await _until_closed(link.publish(f"dt/{attacker.victim}/telemetry", b'{"spoofed":true}',
                                                      qos=1, timeout=group.timeout), closed)
            detail = "PUBACK granted" if result.ok else _publish_detail(result)
            return Observation(outcome="allowed" if result.ok else "refused", detail=detail, **base)
        if kind in ("subscribe-outside-policy", "wildcard-subscribe"):
            topic = "#" if kind == "wildcard-subscribe" else f"cmd/{attacker.victim}/#"
            result = await link.subscribe(topic, qos=1, timeout=group.timeout)
            codes = ",".join(f"0x{c:02X}" for c in result.reason_codes)
            detail = f"SUBACK {codes}" if result.reason_codes else result.reason
            return Observation(outcome="allowed" if result.ok else "refused", detail=detail, **base)
        if kind == "oversize-payload":
            result = await _until_closed(link.publish(f"dt/{attacker.member}/big", b"x" * OVERSIZE, qos=1,
                                                      timeout=group.timeout), closed)
            detail = "PUBACK granted" if result.ok else _publish_detail(result)
            return Observation(outcome="allowed" if result.ok else "refused", detail=detail, **base)
        raise ValueError(f"unknown attacker kind {kind!r}")
    finally:
        await _close(link)


async def _until_closed(publishing, closed: asyncio.Event):
    """A publish's result, or a closed-connection result as soon as the server drops the link (a refused
    publish on MQTT 3.1.1, an oversize packet)."""
    task = asyncio.ensure_future(publishing)
    waiter = asyncio.ensure_future(closed.wait())
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return PublishResult(False, "closed")


def _publish_detail(result) -> str:
    if result.reason == "refused" and result.reason_code is not None:
        return f"PUBACK 0x{result.reason_code:02X}"
    return f"publish {result.reason}"
