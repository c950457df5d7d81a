"""The attacker mix: each attack is one attempt whose only acceptable outcome is a refusal.

:func:`classify_connect` and :func:`classify_step` turn what the attacker saw into a :class:`Verdict` without
any I/O (tests feed them tables); :func:`run_attack` makes the attempt with a :class:`GeventDevice`.

* ``refused``: the target said no -- a TLS alert or a close during or right after the handshake, a CONNACK
  failure code, a PUBACK/SUBACK failure code, or the connection closed on the forbidden request.
* ``accepted``: the target let it in -- CONNACK 0x00 for an identity that must not connect, a PUBACK or SUBACK
  success for a request outside the policy. The run fails.
* ``inconclusive``: no evidence either way -- the target could not be reached (TCP, DNS), did not answer in
  time, was throttling (a rate or quota code says nothing about the identity), or, for the policy attacks, the
  attacker could not even connect as itself. The run fails too: a check that did not run never passes.
"""

from __future__ import annotations

import dataclasses
import enum
import ssl

import datetime as dt

from devices.client import ClientOptions, ConnectOutcome, PublishResult, Reason, SubscribeResult
from devices.report import Outcome
from devices.token_attacks import TokenWorld, token_attack_blocking
from devices.transport import DeviceTLS, Endpoint

from .device import GeventDevice
from .events import ack_codes
from .identities import AttackSlot
from .plan import POLICY_ATTACKS, TOKEN_ATTACKS

__all__ = ["Verdict", "VerdictKind", "classify_connect", "classify_step", "run_attack"]

# CONNACK codes that say "not now", not "not you": the attempt proves nothing about the identity
THROTTLE_V5 = frozenset({0x88, 0x89, 0x97, 0x9F})   # server unavailable, busy, quota exceeded, rate exceeded
THROTTLE_V3 = frozenset({0x03})                     # server unavailable
_NETWORK = (Reason.TCP, Reason.DNS, Reason.TIMEOUT, Reason.IDENTITY, Reason.PROTOCOL)


class VerdictKind(enum.StrEnum):
    REFUSED = "refused"
    ACCEPTED = "accepted"
    INCONCLUSIVE = "inconclusive"


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    detail: str

    @property
    def refused(self) -> bool:
        return self.kind is VerdictKind.REFUSED


def _where(outcome: ConnectOutcome) -> str:
    return f"{outcome.stage}: {outcome.reason.value}" + (f" {outcome.detail}" if outcome.detail else "")


def classify_connect(outcome: ConnectOutcome, protocol_level: int) -> Verdict:
    """The verdict on a connect attempt by an identity that must not get in."""
    if outcome.ok:
        return Verdict(VerdictKind.ACCEPTED, f"CONNACK 0x00: connected (TLS {outcome.tls_version or '?'})")
    if outcome.reason is Reason.REFUSED:
        throttle = THROTTLE_V5 if protocol_level == 5 else THROTTLE_V3
        if outcome.code in throttle:
            return Verdict(VerdictKind.INCONCLUSIVE, f"throttled, not refused for its identity: {outcome.detail}")
        return Verdict(VerdictKind.REFUSED, f"CONNACK {outcome.detail}")
    if outcome.reason is Reason.TLS:
        return Verdict(VerdictKind.REFUSED, f"TLS {outcome.detail}")
    if outcome.reason is Reason.CLOSED:
        # closed after TCP connected: during the handshake, or after it without a CONNACK (AWS IoT's answer)
        return Verdict(VerdictKind.REFUSED, f"closed before CONNACK: {outcome.detail}")
    return Verdict(VerdictKind.INCONCLUSIVE, f"no answer to judge ({_where(outcome)})")


def classify_step(kind: str, connected: ConnectOutcome, result: PublishResult | SubscribeResult | None,
                  protocol_level: int) -> Verdict:
    """The verdict on a policy attack: connect as itself (must succeed), then the forbidden request."""
    if not connected.ok:
        return Verdict(VerdictKind.INCONCLUSIVE, f"could not connect as itself to try it ({_where(connected)})")
    assert result is not None
    publish = isinstance(result, PublishResult)
    what = "PUBACK" if publish else "SUBACK"
    if result.ok:
        return Verdict(VerdictKind.ACCEPTED, f"{what} {ack_codes(result)}: granted outside the policy")
    if result.reason == "refused":
        return Verdict(VerdictKind.REFUSED, f"{what} {ack_codes(result)}")
    if result.reason == "connection-lost":
        return Verdict(VerdictKind.REFUSED, f"connection closed on the {'PUBLISH' if publish else 'SUBSCRIBE'}")
    return Verdict(VerdictKind.INCONCLUSIVE, f"no {what}: {result.reason}")


class _NoCertificateTLS(DeviceTLS):
    """TLS that verifies the server as usual but presents no client certificate."""

    __slots__ = ()

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cafile=self.identity.ca_file)
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))
        return ctx


def _request(kind: str, device: GeventDevice, victim: str, timeout: float):
    if kind == "publish-outside-policy":
        return device.publish(f"dt/{victim}/telemetry", b"forged", qos=1, timeout=timeout)
    if kind == "subscribe-outside-policy":
        return device.subscribe(f"cmd/{victim}/#", qos=1, timeout=timeout)
    if kind == "wildcard-subscribe":
        return device.subscribe("#", qos=1, timeout=timeout)
    raise ValueError(f"{kind} is not a policy attack")


def verdict_of(outcome: Outcome, detail: str) -> Verdict:
    """The fleet simulator's evidence (:mod:`devices.evidence`) as a load-test verdict."""
    if outcome is Outcome.ALLOWED:
        return Verdict(VerdictKind.ACCEPTED, detail)
    if outcome.refused:
        return Verdict(VerdictKind.REFUSED, detail)
    return Verdict(VerdictKind.INCONCLUSIVE, detail)


def run_attack(kind: str, slot: AttackSlot, endpoint: Endpoint, options: ClientOptions, *,
               local_addr: str | None = None, timeout: float = 10.0, world: TokenWorld | None = None,
               token_port: int | None = None) -> Verdict:
    """One attempt of ``kind`` with the slot's identities; always closes what it opened."""
    if kind in TOKEN_ATTACKS:
        if world is None or token_port is None:
            return Verdict(VerdictKind.INCONCLUSIVE, "no token listener or credentials for the token attackers")
        return verdict_of(*token_attack_blocking(kind, slot.client_id(kind), world, host=endpoint.host,
                                                 port=token_port, ca_file=slot.ca_file, timeout=timeout,
                                                 now=dt.datetime.now(dt.UTC)))
    identity = slot.identities[kind]
    tls = None
    if identity is None:  # no-certificate: any identity's CA file for the server, no client certificate
        from devices.identity import DeviceIdentity

        identity = DeviceIdentity(slot.client_id(kind), "", "", slot.ca_file)
        tls = _NoCertificateTLS(identity, alpn=endpoint.alpn, keep=False)
    device = GeventDevice(identity, endpoint, client_id=slot.client_id(kind), options=options,
                          local_addr=local_addr, tls=tls)
    try:
        outcome = device.connect()
        if kind not in POLICY_ATTACKS or kind == "client-id-spoof":
            return classify_connect(outcome, options.protocol_level)
        result = _request(kind, device, slot.victim, timeout) if outcome.ok else None
        return classify_step(kind, outcome, result, options.protocol_level)
    finally:
        if device.connected:
            device.disconnect()
        else:
            device.abort()
