"""The judges: observations in, a verdict with its reasons out. Pure (no sockets, no clocks), tested as tables.

Each function returns a :class:`Judgement`. The rules follow AWS IoT Core Device Advisor's documented outcomes
where it has the case ("Pass — The device under test closed the connection", "Pass with warnings — ... doesn't
send a TLS alert message", "If the device under test has a strictly exponential backoff delay, this test case
will pass with warnings", ...); the iotgate cases document their own.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence

from gateway.policy import Decision
from gateway.qualify.clienthello import AWS_IOT_RECOMMENDED, AWS_IOT_SUPPORTED, ClientHello, suite_name
from gateway.qualify.model import Handshake, HandshakeOutcome as H
from gateway.qualify.verdict import Verdict

__all__ = [
    "Judgement",
    "backoff_delays",
    "describe_decision",
    "judge_backoff",
    "judge_ciphers",
    "judge_client_id",
    "judge_keepalive",
    "judge_legacy_versions",
    "judge_permissions",
    "judge_refusal",
    "judge_tls_connect",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    summary: str
    warnings: tuple[str, ...] = ()
    details: dict = dataclasses.field(default_factory=dict)


def _with_warnings(summary: str, warnings: Sequence[str], details: dict | None = None) -> Judgement:
    verdict = Verdict.PASS_WITH_WARNINGS if warnings else Verdict.PASS
    return Judgement(verdict, summary, tuple(warnings), details or {})


def _handshake_failure(hs: Handshake) -> str:
    """What ended a handshake that did not complete, in words."""
    if hs.outcome is H.DEVICE_ALERT:
        return f"the device sent TLS alert {hs.alert}"
    if hs.outcome is H.DEVICE_CLOSED:
        return "the device closed the connection without a TLS alert"
    if hs.outcome is H.SERVER_REFUSED:
        return f"the endpoint refused the device: {hs.detail or hs.reason}"
    if hs.outcome is H.NOT_TLS:
        return f"the device did not speak TLS: {hs.detail}"
    if hs.outcome is H.NO_HELLO:
        return "the device closed the TCP connection before sending a ClientHello"
    if hs.outcome is H.TIMEOUT:
        return f"the handshake did not finish: {hs.detail}"
    return hs.detail or str(hs.outcome)


# --------------------------------------------------------------------------------------------- TLS

def judge_tls_connect(hs: Handshake, *, endpoint_name: str | None) -> Judgement:
    """TLS_Connect / TLS_Large_Size_Server_Cert: the handshake with a valid server certificate must complete."""
    if not hs.completed:
        hint = ""
        if hs.outcome is H.DEVICE_ALERT:
            hint = " (does the device trust the CA given as {ca}?)"
        return Judgement(Verdict.FAIL, f"TLS handshake failed: {_handshake_failure(hs)}{hint}")
    warnings = []
    hello = hs.hello
    if hello is not None and not hello.server_name:
        warnings.append("no SNI in the ClientHello: AWS IoT Core refuses connections without it (connect by the "
                        "endpoint's name, not its address)")
    elif hello is not None and endpoint_name and hello.server_name != endpoint_name:
        warnings.append(f"SNI {hello.server_name!r} is not the endpoint name {endpoint_name!r}")
    return _with_warnings(f"TLS handshake completed ({hs.version}, {hs.cipher})", warnings)


def judge_refusal(hs: Handshake, *, problem: str) -> Judgement:
    """TLS_Incorrect_Subject_Name_Server_Cert, TLS_Unsecure_Server_Cert, TLS_Expired_Server_Cert: the device must
    refuse a server certificate that ``problem`` describes. Only a refusal after the endpoint's certificate was sent
    counts; a handshake the endpoint itself broke off proves nothing about the device."""
    if hs.completed:
        return Judgement(Verdict.FAIL, f"the device accepted a server certificate {problem} and completed the TLS "
                                       f"handshake ({hs.version}): it would talk to an impostor")
    if hs.outcome is H.DEVICE_ALERT and hs.server_flight:
        return Judgement(Verdict.PASS, f"the device refused the server certificate {problem}: TLS alert {hs.alert}")
    if hs.outcome is H.DEVICE_CLOSED and hs.server_flight:
        return Judgement(Verdict.PASS_WITH_WARNINGS, f"the device closed the connection on the server certificate "
                                                     f"{problem}",
                         ("no TLS alert before closing: a device should tell the server why it gives up "
                          "(RFC 8446 §6.2)",))
    if hs.outcome is H.NOT_TLS:
        return Judgement(Verdict.FAIL, f"the device did not speak TLS: {hs.detail}")
    if hs.outcome is H.SERVER_REFUSED:
        return Judgement(Verdict.ERROR, f"inconclusive: {_handshake_failure(hs)} before the device showed whether "
                                        "it accepts the server certificate; fix the device's identity and run again")
    return Judgement(Verdict.ERROR, f"inconclusive: {_handshake_failure(hs)}")


def judge_ciphers(hello: ClientHello | None) -> Judgement:
    """TLS_Support_AWS_IoT_Cipher_Suites, on the suites of the ClientHello."""
    if hello is None:
        return Judgement(Verdict.ERROR, "no ClientHello was received")
    offered = hello.cipher_suites
    supported = [c for c in offered if c in AWS_IOT_SUPPORTED]
    recommended = [c for c in offered if c in AWS_IOT_RECOMMENDED]
    unsupported = [c for c in offered if c not in AWS_IOT_SUPPORTED]
    details = {"offered": [suite_name(c) for c in offered], "recommended": [suite_name(c) for c in recommended],
               "unsupported": [suite_name(c) for c in unsupported]}
    if not supported:
        return Judgement(Verdict.FAIL, f"none of the {len(offered)} offered cipher suites is supported by AWS IoT "
                                       f"Core: {', '.join(details['offered']) or 'none'}", (), details)
    warnings = []
    if not recommended:
        warnings.append("none of AWS IoT Core's recommended suites (ECDHE-ECDSA-AES128-GCM-SHA256, "
                        "ECDHE-RSA-AES128-GCM-SHA256) is offered")
    if unsupported:
        warnings.append(f"{len(unsupported)} offered suites are not supported by AWS IoT Core (verify they are "
                        f"safe): {', '.join(details['unsupported'])}")
    summary = (f"{len(offered)} cipher suites offered, {len(supported)} supported by AWS IoT Core"
               + (f", recommended: {', '.join(details['recommended'])}" if recommended else ""))
    return _with_warnings(summary, warnings, details)


def judge_legacy_versions(hs: Handshake) -> Judgement:
    """TLS 1.2 minimum: against an endpoint that speaks only TLS 1.0 and 1.1, the device must not connect."""
    hello = hs.hello
    if hello is None:
        return Judgement(Verdict.ERROR, f"no ClientHello was received: {_handshake_failure(hs)}")
    offered = ", ".join(hello.version_names())
    if hs.completed:
        return Judgement(Verdict.FAIL, f"the device completed a {hs.version} handshake: it accepts a version below "
                                       "TLS 1.2")
    if hello.offers_legacy_versions:
        return Judgement(Verdict.FAIL, f"the device offers versions below TLS 1.2 ({offered}); "
                                       f"{_handshake_failure(hs)}")
    if hs.outcome is H.DEVICE_ALERT:
        return Judgement(Verdict.PASS, f"the device refused the endpoint's TLS 1.1: TLS alert {hs.alert} "
                                       f"(offered {offered})")
    if hs.outcome is H.SERVER_REFUSED and hello.offers_legacy_versions is False:
        return Judgement(Verdict.PASS, f"the device offers only {offered}: no version below TLS 1.2 could be agreed")
    if hs.outcome is H.SERVER_REFUSED:
        return Judgement(Verdict.PASS_WITH_WARNINGS, f"no TLS 1.0/1.1 session could be agreed ({hs.reason})",
                         (f"the ClientHello ({offered}) does not state the device's minimum version, and it offered "
                          "no cipher suite the endpoint could use with TLS 1.1, so its refusal was not observed",))
    if hs.outcome is H.DEVICE_CLOSED and hs.server_flight:
        return Judgement(Verdict.PASS_WITH_WARNINGS, "the device closed the connection on the endpoint's TLS 1.1",
                         ("no TLS alert (protocol_version) before closing",))
    return Judgement(Verdict.ERROR, f"inconclusive: {_handshake_failure(hs)}")


# --------------------------------------------------------------------------------------------- backoff

def backoff_delays(attempts: Sequence[tuple[float, float | None]]) -> list[float]:
    """Reconnect delays from attempts ``(connected_at, ended_at)`` in order: the time from the end of one
    attempt (its close, by either side) to the next connection; an attempt still open when the next one arrived
    counts from its start."""
    delays = []
    for (start, end), (nxt, _) in zip(attempts, attempts[1:]):
        ref = end if end is not None and end <= nxt else start
        delays.append(max(0.0, nxt - ref))
    return delays


def _flat(delays: Sequence[float]) -> bool:
    """A fixed interval: every delay within a factor 1.5 of the shortest (20 ms of scheduling noise allowed)."""
    return max(delays) <= 1.5 * min(delays) + 0.02


def _growth_factor(rounds: Sequence[Sequence[float]], tolerance: float = 0.1) -> float:
    """The median ratio between consecutive delays that grew (over every round): the backoff factor if there is one."""
    grew = sorted(max(b, 1e-3) / max(a, 1e-3) for r in rounds for a, b in zip(r, r[1:])
                  if max(b, 1e-3) / max(a, 1e-3) > 1 + tolerance)
    return grew[len(grew) // 2] if grew else 1.0


def _deterministic(delays: Sequence[float], factor: float, tolerance: float = 0.1, noise: float = 0.03) -> bool:
    """No randomness: each delay is the previous one times ``factor`` (capped at the longest delay seen), or the same
    again, within ``tolerance`` and ``noise`` seconds of measurement noise (thread and timer scheduling)."""
    if len(delays) < 3:
        return False
    cap = max(delays)
    for a, b in zip(delays, delays[1:]):
        expected = min(factor * a, cap)
        grown = abs(b - expected) <= tolerance * expected + noise
        repeated = abs(b - a) <= tolerance * a + noise
        if not (grown or repeated):
            return False
    return True


def judge_backoff(rounds: Sequence[Sequence[float]], *, require_jitter: bool, min_growth: float = 1.5,
                  min_delay: float = 0.0) -> Judgement:
    """Reconnect delays of one or more rounds of failed attempts (seconds, in order).

    Five jittered samples cannot prove an exponential law, so the rules are ones a correct device cannot fail by
    chance and a fixed interval cannot pass:

    * fixed interval (every round's delays within a factor 1.5): FAIL;
    * growth: in some round the longest delay is ``min_growth`` times the first;
    * jitter: some round is not deterministic (a constant factor, or repeats at a cap);
    * growth with jitter: PASS; growth without jitter: PASS WITH WARNINGS when ``require_jitter`` (Device Advisor:
      "strictly exponential backoff ... will pass with warnings"), else PASS; jitter without growth: PASS WITH
      WARNINGS; delays that only shrink, or a deterministic sequence that does not grow: FAIL.
    ``min_delay``: every delay must be at least this (FAIL otherwise).
    """
    rounds = [list(r) for r in rounds if r]
    delays = [d for r in rounds for d in r]
    shown = "; ".join(", ".join(f"{d:.3g}" for d in r) for r in rounds)
    if len(delays) < 2 or all(len(r) < 2 for r in rounds):
        return Judgement(Verdict.ERROR, f"too few reconnects to judge a backoff ({len(delays)} delays: {shown} s)")
    growth = max(max(r) / max(r[0], 1e-3) for r in rounds if len(r) >= 2)
    factor = _growth_factor(rounds)
    jittered = any(len(r) >= 3 for r in rounds) and not all(_deterministic(r, factor) for r in rounds if len(r) >= 3)
    details = {"delays_s": [[round(d, 4) for d in r] for r in rounds], "growth": round(growth, 3),
               "jitter": jittered}
    too_soon = [d for d in delays if d < min_delay]
    if too_soon:
        return Judgement(Verdict.FAIL, f"the device reconnected after {min(too_soon):.3g} s, sooner than "
                                       f"{min_delay:g} s (delays {shown} s)", (), details)
    if all(_flat(r) for r in rounds):
        median = sorted(delays)[len(delays) // 2]
        return Judgement(Verdict.FAIL, f"no backoff: the device retries at a fixed interval of about {median:.3g} s "
                                       f"(delays {shown} s)", (), details)
    if all(len(r) >= 2 and r[-1] * 1.5 < r[0] and all(b <= a * 1.1 + 0.03 for a, b in zip(r, r[1:]))
           for r in rounds):
        return Judgement(Verdict.FAIL, f"no backoff: the delays shrink (delays {shown} s)", (), details)
    grows = growth >= min_growth
    if grows and jittered:
        return Judgement(Verdict.PASS, f"delays grow (x{growth:.1f} within a round) with jitter (delays {shown} s)",
                         (), details)
    if grows:
        summary = f"delays grow (x{growth:.1f} within a round) without jitter (delays {shown} s)"
        if not require_jitter:
            return Judgement(Verdict.PASS, summary, (), details)
        return Judgement(Verdict.PASS_WITH_WARNINGS, summary,
                         ("strictly exponential, no jitter: a fleet that lost its endpoint would come back in "
                          "synchronized waves (use full jitter)",), details)
    if jittered:
        return Judgement(Verdict.PASS_WITH_WARNINGS, f"delays vary but do not grow (delays {shown} s)",
                         (f"no round's longest delay reached {min_growth:g} times its first: jitter without "
                          "exponential backoff keeps the retry rate up while the endpoint is down",), details)
    return Judgement(Verdict.FAIL, f"no backoff: the delays do not grow (delays {shown} s)", (), details)


# --------------------------------------------------------------------------------------------- keepalive

def judge_keepalive(keep_alive: int, silences: Sequence[float], *, observed: float, max_wait: float,
                    slack: float = 0.25) -> Judgement:
    """The device must send a control packet at least every ``keep_alive`` seconds [MQTT-3.1.2-23]; a server
    closes the connection after 1.5 times that without one [MQTT-3.1.2-24]. ``silences``: the gaps between the
    device's packets during ``observed`` seconds, the last one running to the end of the observation."""
    if keep_alive == 0:
        return Judgement(Verdict.SKIPPED, "the device asked for no keep alive (0): nothing to check (AWS IoT Core "
                                          "applies 1200 s to such a connection)")
    if keep_alive * 1.5 > max_wait:
        return Judgement(Verdict.SKIPPED, f"keep alive {keep_alive} s needs {keep_alive * 1.5:g} s of observation, "
                                          f"more than max_wait {max_wait:g} s (raise it, or lower the device's "
                                          "keep alive)")
    longest = max(silences) if silences else observed
    details = {"keep_alive_s": keep_alive, "longest_silence_s": round(longest, 3), "observed_s": round(observed, 3)}
    if longest > keep_alive * 1.5:
        return Judgement(Verdict.FAIL, f"the device was silent for {longest:.2f} s with keep alive {keep_alive} s: a "
                                       f"server closes such a connection after {keep_alive * 1.5:g} s", (), details)
    if longest > keep_alive * 1.1 + slack:
        return Judgement(Verdict.PASS_WITH_WARNINGS, f"longest silence {longest:.2f} s (keep alive {keep_alive} s)",
                         (f"the device let {longest:.2f} s pass without a packet, longer than its keep alive "
                          f"{keep_alive} s [MQTT-3.1.2-23]",), details)
    return Judgement(Verdict.PASS, f"a packet at least every {longest:.2f} s with keep alive {keep_alive} s "
                                   f"(observed {observed:.1f} s)", (), details)


# --------------------------------------------------------------------------------------------- client id

_SECRET_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("a PEM block (key or certificate)", re.compile(r"-----BEGIN")),
    ("a JSON Web Token", re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),
    ("an AWS access key id", re.compile(r"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("a SigV4 signature or session token", re.compile(r"(?i)x-amz-(signature|security-token|credential)")),
    ("a secret as key=value", re.compile(
        r"(?i)(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)s?\s*[=:]")),
)
_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{32,}")


def _entropy(text: str) -> float:
    counts: dict[str, int] = {}
    for ch in text:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def judge_client_id(client_id: str, *, username: str | None, password: bytes | None) -> Judgement:
    """No credentials or secrets in the client id: it is logged, shown in lifecycle events and used in policy
    resources (``client/<id>``), so whatever it holds is public."""
    problems = []
    if password and len(password) >= 4:
        text = password.decode("utf-8", "replace")
        if text and text in client_id:
            problems.append("the CONNECT password")
    for what, pattern in _SECRET_PATTERNS:
        if pattern.search(client_id):
            problems.append(what)
    shown = client_id if len(client_id) <= 80 else client_id[:77] + "..."
    if problems:
        return Judgement(Verdict.FAIL, f"the client id {shown!r} contains {', '.join(problems)}")
    warnings = []
    for token in _TOKEN.findall(client_id):
        mixed = any(c.islower() for c in token) and any(c.isupper() for c in token) and any(c.isdigit() for c in token)
        if mixed and _entropy(token) > 4.0:
            warnings.append(f"the client id holds a {len(token)}-character random-looking token; make sure it is not "
                            "a secret")
    size = len(client_id.encode("utf-8"))
    if size > 128:
        warnings.append(f"the client id has {size} bytes; AWS IoT Core refuses more than 128")
    if not client_id:
        warnings.append("empty client id: AWS IoT Core needs one to apply iot:Connect on client/<id>")
    return _with_warnings(f"no password, key, token or signature found in the client id {shown!r}", warnings)


# --------------------------------------------------------------------------------------------- permissions

def describe_decision(decision: Decision) -> str:
    """The statement(s) that decided, e.g. ``policy 'sensor' version 1 Statement[2] (Deny)``."""
    if decision.decided_by:
        return "; ".join(f"policy {d.policy!r} version {d.version} Statement[{d.statement_index}] ({d.effect})"
                         for d in decision.decided_by)
    reason = "no statement allows it (implicit deny)"
    if decision.errors:
        reason += ": " + "; ".join(decision.errors)
    return reason


def judge_permissions(decisions: Iterable[tuple[str, str, Decision]], *, lint_findings: Sequence[str] = ()
                      ) -> Judgement:
    """Every action the device attempted, as the policy engine decided it: any denied one fails, naming what
    decided. Lint findings on the policies are warnings (Device Advisor's Security_Device_Policies idea)."""
    decisions = list(decisions)
    if not decisions:
        return Judgement(Verdict.ERROR, "the device attempted nothing the policy could decide (not even CONNECT)")
    denied = [(a, r, d) for a, r, d in decisions if not d.allowed]
    details = {"decisions": [{"action": a, "resource": r, "allowed": d.allowed, "decided_by": describe_decision(d)}
                             for a, r, d in decisions]}
    if denied:
        action, resource, decision = denied[0]
        more = f" (and {len(denied) - 1} more denied)" if len(denied) > 1 else ""
        why = f" by {describe_decision(decision)}" if decision.decided_by else f": {describe_decision(decision)}"
        return Judgement(Verdict.FAIL, f"{action} on {resource} denied{why}{more}", tuple(lint_findings), details)
    warnings = list(lint_findings)
    actions = sorted({a for a, _, _ in decisions})
    if actions == ["iot:Connect"]:
        warnings.append("the device only connected during the observation: nothing else was decided")
    return _with_warnings(f"{len(decisions)} attempted actions allowed by the policy ({', '.join(actions)})",
                          warnings, details)
