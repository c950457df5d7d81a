"""The report builder of a fleet run: what every device, attacker and check met, compared with what the scenario
expects, as the ``report.json`` document and the run's verdict.

Beside :mod:`devices.report` (pure statistics, outcome comparison, SLO gates and the writers), this module reads
the run's parts after they finished: devices (:class:`~devices.fleet_devices.SimDevice`), the operator, the
attackers' observations, chaos's checks and the counters.

A legitimate device is a mismatch when it was refused for authorization (a TLS refusal, a CONNACK that means
"you may not") or never got in, when a publish or subscription was refused, when it was not back within
``reconnect_within`` after the last chaos, or when a QoS 1 sequence number was lost (never acknowledged, or --
while the operator observed -- acknowledged and never delivered). A device that never got in because the target
did not answer is inconclusive, one whose own files failed is a device error: both fail the run, neither is
"refused".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from devices.fleet_devices import SimDevice
from devices.operator import Operator, observable
from devices.plan import FleetPlan
from devices.report import (Check, CheckStatus, GateResult, LatencyStats, Observation, Outcome, check_slo, failures,
                            group_summary, mismatches, refusals, run_verdict)
from devices.runtime import RunContext


@dataclasses.dataclass
class FleetResult:
    report: dict
    observations: list[Observation]
    mismatches: list[str]
    slo: list[GateResult]
    passed: bool
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    checks: list[Check] = dataclasses.field(default_factory=list)
    verdict: str = ""


def ranges(values: set[int]) -> str:
    items = sorted(values)
    shown = ", ".join(map(str, items[:10]))
    return shown + (f" ... ({len(items)} in all)" if len(items) > 10 else "")


def device_observation(dev: SimDevice, operator: Operator | None) -> Observation:
    """What one simulated device met, as evidence."""
    problems: list[str] = []
    if dev.legitimate:
        problems = list(dev.problems)
        if dev.unacked:
            problems.append(f"lost QoS 1 sequence number(s) {ranges(dev.unacked)} (never acknowledged)")
        if operator is not None and operator.observing and observable(dev.group):
            missing = operator.missing(dev)
            if missing:
                problems.append(f"lost QoS 1 sequence number(s) {ranges(missing)} (acknowledged, never delivered)")
    if dev.device_error:
        outcome, detail = Outcome.DEVICE_ERROR, dev.device_error
    elif dev.auth_refusal is not None:
        outcome, detail = dev.auth_refusal
    elif not dev.ever_connected:
        outcome, detail = dev.last_failure or (Outcome.INCONCLUSIVE, "never tried to connect: the run ended first")
    else:
        outcome, detail = Outcome.ALLOWED, f"rotated x{dev.rotations}" if dev.rotations else ""
    return Observation(dev.group.name, dev.thing, dev.group.expect, outcome, detail,
                       tuple(problems) if outcome is Outcome.ALLOWED or outcome.refused else ())


def observer_checks(plan: FleetPlan, devices: Sequence[SimDevice], operator: Operator | None,
                    stats) -> list[Check]:
    """Delivery, end-to-end latency and command round trips: checked by the operator, or skipped with why."""
    groups = {d.group.name: d.group for d in devices}.values()
    wanted = []
    if any(observable(g) for g in groups):
        wanted.append("delivery of acknowledged QoS 1 messages")
    if any(g.expect == "allowed" and g.publish is not None and "{ts}" in g.publish.payload for g in groups):
        wanted.append("end-to-end latency")
    if any(g.commands is not None for g in groups):
        wanted.append("command round trips")
    if not wanted:
        return []
    if operator is None:
        why = ("needs the simulator's operator, which runs only against the gateway with a local registry"
               if plan.target != "gateway" or plan.local is None else "no operator in this run")
        return [Check(name, CheckStatus.SKIPPED, why) for name in wanted]
    if operator.failure:
        return [Check(name, CheckStatus.FAILED, operator.failure) for name in wanted]
    out = []
    for name in wanted:
        if name.startswith("delivery"):
            if operator.gap is not None:
                out.append(Check(name, CheckStatus.SKIPPED, f"the operator lost its connection at {operator.gap:.1f} s"))
            else:
                checked = sum(len(d.acked) for d in devices if d.legitimate and observable(d.group))
                out.append(Check(name, CheckStatus.PASSED, f"{checked} acknowledged message(s) checked") if checked
                           else Check(name, CheckStatus.SKIPPED, "no message was acknowledged during the run"))
        elif name.startswith("end-to-end"):
            n = operator.e2e_samples
            if n:
                out.append(Check(name, CheckStatus.PASSED, f"{n} sample(s)"))
            elif stats.messages:
                out.append(Check(name, CheckStatus.FAILED, f"none of {stats.messages} published message(s) reached "
                                                           "the operator"))
            else:
                out.append(Check(name, CheckStatus.SKIPPED, "no message was published during the run"))
        else:
            sent, answered = stats.commands_sent, stats.commands_answered
            if not sent:
                out.append(Check(name, CheckStatus.SKIPPED, "no command was due while the devices were connected"))
            elif answered:
                out.append(Check(name, CheckStatus.PASSED, f"{answered} of {sent} command(s) answered"))
            else:
                out.append(Check(name, CheckStatus.FAILED, f"none of {sent} command(s) was answered"))
    return out


def attacker_checks(observations: Sequence[Observation]) -> list[Check]:
    """One skipped check per attacker group that was not run."""
    seen: dict[str, str] = {}
    for o in observations:
        if o.outcome is Outcome.SKIPPED and o.group not in seen:
            seen[o.group] = o.skipped
    return [Check(group, CheckStatus.SKIPPED, why) for group, why in seen.items()]


def build_result(plan: FleetPlan, ctx: RunContext, devices: Sequence[SimDevice], operator: Operator | None,
                 attacker_observations: Sequence[Observation], checks: Sequence[Check], *, elapsed: float,
                 errors: Sequence[str] = ()) -> FleetResult:
    scenario = plan.scenario
    s = ctx.stats
    attackers = list(attacker_observations)
    observations = attackers + [device_observation(d, operator) for d in devices]
    all_checks = attacker_checks(attackers) + list(checks) + observer_checks(plan, devices, operator, s)
    found = mismatches(observations)
    failed = failures(observations)
    refused = refusals(observations)
    latency = {p: LatencyStats.of(v) for p, v in s.samples.items()}
    seconds = max(elapsed, 1e-9)
    legit = [d for d in devices if d.legitimate]
    metrics: dict[str, Any] = {
        "latency": latency, "samples": s.samples, "errors": len(found) + len(failed), "mismatches": len(found),
        "refusals": sum(refused.values()), "lost": sum(len(d.unacked) for d in legit), "connects": s.connects,
        "messages": s.messages, "connects_per_s": s.connects / seconds, "messages_per_s": s.messages / seconds,
        "connected_ratio": (sum(1 for d in legit if d.ever_connected) / len(legit)) if legit else 1.0}
    slo = check_slo(plan.slo, metrics)
    verdict = run_verdict(observations, all_checks, slo, errors=errors, strict=plan.strict)
    report = {
        "scenario": scenario.name, "target": plan.target,
        "endpoint": f"{plan.endpoint.host}:{plan.endpoint.port}", "connector": plan.connector,
        "passed": verdict.passed, "result": "PASS" if verdict.passed else "FAIL", "verdict": verdict.line,
        "strict": plan.strict,
        "summary": {"devices": len(devices), "attackers": len(attackers), "seconds": round(elapsed, 3),
                    "connects": s.connects, "connect_attempts": s.connect_attempts,
                    "connects_per_s": round(s.connects / seconds, 2), "messages": s.messages,
                    "messages_per_s": round(s.messages / seconds, 2), "received_commands": s.commands_received,
                    "commands_sent": s.commands_sent, "commands_answered": s.commands_answered,
                    "reconnects": s.reconnects, "lost": metrics["lost"], "skipped": len(verdict.skipped),
                    "inconclusive": len(failed), "chaos_end_s": scenario.chaos_end,
                    "reconnect_within_s": scenario.reconnect_within},
        "latency": {p: st.as_ms() for p, st in latency.items()},
        "refusals": refused,
        "connect_failures": dict(s.failures.most_common()),
        "groups": group_summary(observations),
        "checks": [{"check": c.name, "status": c.status.value, "detail": c.detail} for c in all_checks],
        "skipped": [{"check": c.name, "reason": c.detail} for c in verdict.skipped],
        "mismatches": found,
        "failures": failed,
        "errors": list(errors),
        "slo": [{"gate": r.gate.text, "value": r.value, "shown": r.shown, "passed": r.passed} for r in slo],
        "notes": list(ctx.notes),
    }
    return FleetResult(report, observations, found, slo, verdict.passed, s.samples, failed, all_checks, verdict.line)
