"""Run reports, pure: latency statistics, outcomes against expectations, the run's verdict, SLO gates; and the
JSON, HTML and PNG writers.

    stats = LatencyStats.of(samples)            # count, min, mean, p50, p90, p99, max (seconds)
    Observation("attacker:revoked", "atk-revoked-01", "refused", Outcome.REFUSED_MQTT, "CONNACK ... (0x87)")
    verdict = run_verdict(observations, checks, slo_results, strict=False)   # .passed, .line
    gates = parse_slo("connack_p99<500ms,errors=0")
    results = check_slo(gates, metrics)         # [GateResult(gate, value, passed)]

An :class:`Outcome` is what the evidence says (got in, refused in TLS or MQTT, closed, inconclusive, the
device's own error, skipped); its :class:`Verdict` against the expectation is ok, a mismatch, inconclusive,
an error or skipped. Only ok passes; skipped is counted and fails under ``--strict``.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from certs.errors import IotgateError

PHASES = ("tcp", "tls", "connack", "suback", "puback", "e2e", "command")
PERCENTILES = (50, 90, 99)


class SLOError(IotgateError):
    """An --slo expression cannot be read; the message names the part."""


# --------------------------------------------------------------------------------------------- statistics

def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0..100) by linear interpolation between closest ranks; None when empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be 0..100, not {p}")
    if n == 1:
        return sorted_values[0]
    rank = (n - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


@dataclasses.dataclass(frozen=True, slots=True)
class LatencyStats:
    count: int
    min: float | None = None
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, samples: Iterable[float]) -> LatencyStats:
        values = sorted(samples)
        if not values:
            return cls(0)
        return cls(len(values), values[0], sum(values) / len(values), percentile(values, 50),
                   percentile(values, 90), percentile(values, 99), values[-1])

    def as_ms(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        for name in ("min", "mean", "p50", "p90", "p99", "max"):
            v = getattr(self, name)
            out[f"{name}_ms"] = None if v is None else round(v * 1000, 3)
        return out


def histogram(samples: Sequence[float], bins: int = 20) -> list[tuple[float, float, int]]:
    """Equal-width bins over [min, max]: (low, high, count)."""
    if not samples:
        return []
    lo, hi = min(samples), max(samples)
    if hi == lo:
        return [(lo, hi, len(samples))]
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in samples:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return [(lo + i * width, lo + (i + 1) * width, c) for i, c in enumerate(counts)]


# --------------------------------------------------------------------------------------------- outcomes

class Outcome(enum.StrEnum):
    """What one member of a run met, classified from the evidence its client saw."""

    ALLOWED = "allowed"              # got in: CONNACK accepted, PUBACK/SUBACK granted and delivered, handshake left open
    REFUSED_TLS = "refused-tls"      # a TLS alert, or the connection closed during the handshake
    REFUSED_MQTT = "refused-mqtt"    # a CONNACK / SUBACK / PUBACK / DISCONNECT code, or a message never delivered
    REFUSED_HTTP = "refused-http"    # the WebSocket upgrade answered 401/403 (a refused signature or token)
    CLOSED = "closed"                # the server closed the connection after CONNECT (or after the attack's packet)
    INCONCLUSIVE = "inconclusive"    # the target did not answer: TCP refused or unreachable, a timeout, no MQTT
    DEVICE_ERROR = "device-error"    # the device's own files (an unreadable or mismatched key), not the server
    SKIPPED = "skipped"              # not run on this target; ``Observation.skipped`` says why

    @property
    def refused(self) -> bool:
        """Only evidence from the server counts as a refusal."""
        return self in _REFUSED

    @property
    def label(self) -> str:
        return _LABELS[self]


_REFUSED = frozenset({Outcome.REFUSED_TLS, Outcome.REFUSED_MQTT, Outcome.REFUSED_HTTP, Outcome.CLOSED})
_LABELS = {Outcome.ALLOWED: "got in", Outcome.REFUSED_TLS: "refused in TLS", Outcome.REFUSED_MQTT: "refused in MQTT",
           Outcome.REFUSED_HTTP: "refused in the WebSocket upgrade",
           Outcome.CLOSED: "closed by the server", Outcome.INCONCLUSIVE: "inconclusive",
           Outcome.DEVICE_ERROR: "device error", Outcome.SKIPPED: "skipped"}
EXPECTATIONS = ("allowed", "refused")


class Verdict(enum.StrEnum):
    """One observation against its expectation."""

    OK = "ok"
    MISMATCH = "mismatch"            # got in where it had to be refused, refused where it had to get in, a problem
    INCONCLUSIVE = "inconclusive"    # nothing proves either way: a failure of the run
    ERROR = "error"                  # the simulated device itself failed: a failure of the run
    SKIPPED = "skipped"              # not run; counted, and a failure under --strict


@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    """What one member of a group met: a device or an attacker. ``expect`` is ``allowed`` or ``refused``;
    ``problems`` are what went wrong for a device that got in (a refused publish, a lost sequence number, ...);
    ``skipped`` says why the check was not run (then ``outcome`` is SKIPPED)."""

    group: str
    member: str
    expect: str
    outcome: Outcome
    detail: str = ""
    problems: tuple[str, ...] = ()
    skipped: str = ""

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"{self.group}: {self.member}: expect must be allowed or refused, not {self.expect!r}")
        if not isinstance(self.outcome, Outcome):
            raise TypeError(f"{self.group}: {self.member}: outcome must be an Outcome, not {self.outcome!r}")
        if (self.outcome is Outcome.SKIPPED) != bool(self.skipped):
            raise ValueError(f"{self.group}: {self.member}: a skipped observation needs its reason, and only it")

    @property
    def verdict(self) -> Verdict:
        outcome = self.outcome
        if outcome is Outcome.SKIPPED:
            return Verdict.SKIPPED
        if outcome is Outcome.INCONCLUSIVE:
            return Verdict.INCONCLUSIVE
        if outcome is Outcome.DEVICE_ERROR:
            return Verdict.ERROR
        if self.expect == "allowed":
            return Verdict.OK if outcome is Outcome.ALLOWED and not self.problems else Verdict.MISMATCH
        return Verdict.OK if outcome.refused else Verdict.MISMATCH


def mismatches(observations: Iterable[Observation]) -> list[str]:
    """One line per observation that differs from its expectation, naming group, member and what happened."""
    out = []
    for o in observations:
        if o.verdict is not Verdict.MISMATCH:
            continue
        if o.outcome is Outcome.ALLOWED and o.expect == "refused":
            out.append(f"{o.group}: {o.member} got in, expected refused" + (f" ({o.detail})" if o.detail else ""))
        elif o.outcome.refused and o.expect == "allowed":
            out.append(f"{o.group}: {o.member} was refused, expected allowed" + (f" ({o.detail})" if o.detail else ""))
        for problem in o.problems:
            out.append(f"{o.group}: {o.member}: {problem}")
    return out


def failures(observations: Iterable[Observation]) -> list[str]:
    """One line per observation that proves nothing (inconclusive) or whose own device failed."""
    return [f"{o.group}: {o.member} {o.outcome.label}" + (f" ({o.detail})" if o.detail else "")
            for o in observations if o.verdict in (Verdict.INCONCLUSIVE, Verdict.ERROR)]


def refusals(observations: Iterable[Observation]) -> dict[str, int]:
    """Refused members by what refused them, most frequent first: the same members the groups count as refused."""
    counts: collections.Counter[str] = collections.Counter(o.detail or o.outcome.label for o in observations
                                                           if o.outcome.refused)
    return dict(counts.most_common())


def group_summary(observations: Iterable[Observation]) -> list[dict[str, Any]]:
    """Per group: expectation, members, how many were allowed / refused / inconclusive / in error / skipped, and
    mismatches. ``ok`` when every member that ran met its expectation and none was inconclusive or in error;
    ``result`` is ``ok``, ``mismatch``, ``inconclusive`` or ``skipped`` (every member skipped)."""
    groups: dict[str, dict[str, Any]] = {}
    for o in observations:
        g = groups.setdefault(o.group, {"group": o.group, "expect": o.expect, "members": 0, "allowed": 0,
                                        "refused": 0, "inconclusive": 0, "errors": 0, "skipped": 0,
                                        "mismatches": 0, "details": {}})
        g["members"] += 1
        verdict = o.verdict
        if verdict is Verdict.SKIPPED:
            g["skipped"] += 1
            g["details"][o.skipped] = g["details"].get(o.skipped, 0) + 1
            continue
        if o.outcome is Outcome.ALLOWED:
            g["allowed"] += 1
        elif o.outcome.refused:
            g["refused"] += 1
        elif verdict is Verdict.INCONCLUSIVE:
            g["inconclusive"] += 1
        else:
            g["errors"] += 1
        if verdict is Verdict.MISMATCH:
            g["mismatches"] += 1
        if o.detail:
            g["details"][o.detail] = g["details"].get(o.detail, 0) + 1
    for g in groups.values():
        g["ok"] = g["mismatches"] == 0 and g["inconclusive"] == 0 and g["errors"] == 0
        g["result"] = ("skipped" if g["skipped"] == g["members"] else "mismatch" if g["mismatches"]
                       else "inconclusive" if g["inconclusive"] or g["errors"] else "ok")
        g["details"] = dict(sorted(g["details"].items(), key=lambda kv: -kv[1])[:5])
    return list(groups.values())


# --------------------------------------------------------------------------------------------- checks and verdict

class CheckStatus(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """A check of the run beyond one member's outcome (delivery, command round trips, a chaos action, an attacker
    group that was not run): its status and why."""

    name: str
    status: CheckStatus
    detail: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class RunVerdict:
    passed: bool
    line: str                        # "result: PASS, 3 checks skipped: ..." as printed
    skipped: tuple[Check, ...]


def run_verdict(observations: Sequence[Observation], checks: Sequence[Check], slo: Sequence[GateResult], *,
                errors: Sequence[str] = (), strict: bool = False) -> RunVerdict:
    """PASS only on evidence: no mismatch, nothing inconclusive, no failed check or SLO gate, no run error; a
    skipped check is counted in the line, and fails the run under ``strict``."""
    found = mismatches(observations)
    failed = failures(observations)
    failed_checks = [c for c in checks if c.status is CheckStatus.FAILED]
    skipped = tuple(c for c in checks if c.status is CheckStatus.SKIPPED)
    bad_gates = [r for r in slo if not r.passed]
    reasons = []
    if found:
        reasons.append(f"{len(found)} mismatch{'es' if len(found) != 1 else ''}")
    if failed:
        reasons.append(f"{len(failed)} inconclusive or in error")
    if failed_checks:
        reasons.append(f"{len(failed_checks)} check{'s' if len(failed_checks) != 1 else ''} failed")
    if bad_gates:
        reasons.append(f"{len(bad_gates)} SLO gate{'s' if len(bad_gates) != 1 else ''} failed")
    reasons.extend(errors)
    passed = not reasons and not (strict and skipped)
    line = "result: PASS" if passed else "result: FAIL"
    if reasons:
        line += " (" + ", ".join(reasons) + ")"
    if skipped:    # their reasons are in the report, one line each
        names = ", ".join(c.name for c in skipped)
        line += f", {len(skipped)} check{'s' if len(skipped) != 1 else ''} skipped" + (" (--strict)" if strict else "") \
            + f": {names}"
    return RunVerdict(passed, line, skipped)


# --------------------------------------------------------------------------------------------- SLO gates

_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "/s": 1.0, "%": 0.01}
_GATE = re.compile(r"^\s*(?P<metric>[a-z][a-z0-9_]*)\s*(?P<op><=|>=|==|=|<|>)\s*"
                   r"(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|us|µs|s|/s|%)?\s*$")
OPERATORS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
             ">=": lambda a, b: a >= b, "=": lambda a, b: a == b, "==": lambda a, b: a == b}
COUNT_METRICS = ("errors", "mismatches", "refusals", "lost", "connects", "messages")
RATE_METRICS = ("connects_per_s", "messages_per_s", "connected_ratio")


@dataclasses.dataclass(frozen=True, slots=True)
class Gate:
    metric: str
    op: str
    value: float                     # in the metric's base unit: seconds, a count, per second, a ratio
    text: str

    @property
    def unit(self) -> str:
        """The unit the gate was written in (``ms``, ``s``, ``/s``, ``%`` or none): values are shown in it."""
        m = _GATE.match(self.text)
        return (m.group("unit") or "") if m else ""

    def show(self, value: float | None) -> str:
        """A value of this gate's metric in the gate's own unit: ``12.3 ms`` next to ``connack_p99<500ms``."""
        if value is None:
            return "no samples"
        unit = self.unit
        return f"{value / _UNITS[unit]:.4g}{'' if unit in ('', '%', '/s') else ' '}{unit}"


@dataclasses.dataclass(frozen=True, slots=True)
class GateResult:
    gate: Gate
    value: float | None
    passed: bool

    @property
    def shown(self) -> str:
        return self.gate.show(self.value)


def known_metric(metric: str) -> bool:
    return metric in COUNT_METRICS or metric in RATE_METRICS or is_latency(metric)


def is_latency(metric: str) -> bool:
    m = re.fullmatch(r"([a-z0-9]+)_(p[0-9]{1,2}|mean|max|min)", metric)
    return bool(m and m.group(1) in PHASES)


def _unit_error(metric: str, unit: str, part: str) -> str | None:
    """Why ``unit`` does not fit ``metric`` (None when it does)."""
    if is_latency(metric):
        if unit in ("ms", "us", "µs", "s"):
            return None
        return f"{metric} is a duration: give its unit, e.g. {metric}<500ms or {metric}<0.5s (in {part!r})"
    allowed = {"connects_per_s": ("", "/s"), "messages_per_s": ("", "/s"), "connected_ratio": ("", "%")}
    if unit in allowed.get(metric, ("",)):
        return None
    if unit in ("ms", "us", "µs", "s"):
        return f"{metric} is not a duration; drop the unit in {part!r}"
    return f"{metric} takes no {unit!r}; drop it in {part!r}"


def parse_slo(text: str) -> list[Gate]:
    """``"connack_p99<500ms,errors=0"`` -> gates. Latency metrics are ``<phase>_<p50|p90|p99|mean|max|min>``
    (phases: tcp, tls, connack, suback, puback, e2e, command) and need a unit (ms, us, s); counts: errors,
    mismatches, refusals, lost, connects, messages; rates: connects_per_s, messages_per_s (``/s`` optional),
    connected_ratio (``%`` or a fraction)."""
    gates = []
    for part in (p for p in text.split(",") if p.strip()):
        m = _GATE.match(part)
        if not m:
            raise SLOError(f"--slo: cannot read {part.strip()!r}; write METRIC<VALUE[unit], e.g. connack_p99<500ms")
        metric = m.group("metric")
        if not known_metric(metric):
            raise SLOError(f"--slo: unknown metric {metric!r} in {part.strip()!r}; latency: "
                           f"<{'|'.join(PHASES)}>_<p50|p90|p99|mean|max>, others: "
                           f"{', '.join(COUNT_METRICS + RATE_METRICS)}")
        unit = m.group("unit") or ""
        problem = _unit_error(metric, unit, part.strip())
        if problem:
            raise SLOError(f"--slo: {problem}")
        value = float(m.group("value")) * _UNITS[unit]
        gates.append(Gate(metric, m.group("op"), value, part.strip()))
    if not gates:
        raise SLOError("--slo: no gate given")
    return gates


def metric_value(metric: str, metrics: Mapping[str, Any]) -> float | None:
    """A metric's value from a run's figures (``metrics``: ``latency`` {phase: LatencyStats}, counts, rates)."""
    if metric in metrics and not isinstance(metrics[metric], Mapping):
        return metrics[metric]
    phase, _, stat = metric.rpartition("_")
    stats = metrics.get("latency", {}).get(phase)
    if stats is None:
        return None
    if stat.startswith("p") and stat[1:].isdigit() and stat not in ("p50", "p90", "p99"):
        return percentile(sorted(metrics.get("samples", {}).get(phase, ())), float(stat[1:]))
    return getattr(stats, stat, None)


def check_slo(gates: Sequence[Gate], metrics: Mapping[str, Any]) -> list[GateResult]:
    """Each gate against the figures; a latency with no samples fails its gate (nothing proves it)."""
    out = []
    for gate in gates:
        value = metric_value(gate.metric, metrics)
        passed = value is not None and OPERATORS[gate.op](value, gate.value)
        out.append(GateResult(gate, value, passed))
    return out


# --------------------------------------------------------------------------------------------- writers

def write_json(path: Path, report: Mapping[str, Any]) -> Path:
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return path


def write_histogram_png(path: Path, samples: Mapping[str, Sequence[float]], title: str) -> Path | None:
    """One panel per phase that has samples: histogram of milliseconds with p50 / p99 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in PHASES if samples.get(p)]
    if not phases:
        return None
    fig, axes = plt.subplots(len(phases), 1, figsize=(8, 2.2 * len(phases)), squeeze=False)
    for ax, phase in zip(axes[:, 0], phases):
        values = sorted(v * 1000 for v in samples[phase])
        ax.hist(values, bins=min(50, max(5, len(values) // 5)), color="#4c72b0")
        for p, style in ((50, "--"), (99, ":")):
            v = percentile(values, p)
            ax.axvline(v, color="#c44e52", linestyle=style, label=f"p{p} {v:.2f} ms")
        ax.set_title(f"{phase} ({len(values)} samples)", fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in row)
                    + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_ROW_CLASS = {"ok": "good", "mismatch": "bad", "inconclusive": "bad", "skipped": "skipped"}
_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:90%}"
          ".bad{background:#fdd}.good{background:#efe}.skipped{background:#ffeebb}"
          "h1 .pass{color:#080}h1 .fail{color:#b00}h1 .error{color:#b00}")


def write_html(path: Path, report: Mapping[str, Any], png: str | None) -> Path:
    """The report as one page: verdict line, outcome versus expectation per group (skipped rows in their own
    colour), checks, mismatches and failures, SLO gates, latency, refusals, notes."""
    verdict = report.get("result") or ("PASS" if report["passed"] else "FAIL")
    title = f"iotgate fleet run: {html.escape(report['scenario'])} ({verdict})"
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{title}</title>",
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>fleet run {html.escape(report['scenario'])}: <span class='{verdict.lower()}'>{verdict}</span></h1>",
             f"<p>{html.escape(report.get('verdict') or verdict)}</p>"]
    if report.get("error"):
        parts.append(f"<p class='bad'>{html.escape(report['error'])}</p></body></html>")
        path.write_text("\n".join(parts), encoding="utf-8")
        return path
    s = report["summary"]
    parts.append(
        f"<p>target {html.escape(report['target'])} at {html.escape(report['endpoint'])}, connector "
        f"{html.escape(report['connector'])}, {s['devices']} devices and {s['attackers']} attackers, "
        f"{s['seconds']:.1f} s; {s['connects']} connects ({s['connects_per_s']:.1f}/s), "
        f"{s['messages']} messages ({s['messages_per_s']:.1f}/s)"
        + (f", {s['commands_answered']} of {s['commands_sent']} commands answered" if s.get("commands_sent") else "")
        + "</p>")
    groups = report["groups"]
    group_rows = [(g["group"], g["expect"], g["members"], g["allowed"], g["refused"], g.get("inconclusive", 0),
                   g["skipped"], g["mismatches"], "; ".join(f"{k} x{v}" for k, v in g["details"].items()))
                  for g in groups]
    parts += ["<h2>Outcome versus expectation</h2>",
              _table(("group", "expected", "members", "allowed", "refused", "inconclusive", "skipped", "mismatches",
                      "details"), group_rows,
                     [_ROW_CLASS.get(g.get("result", "ok" if g["ok"] else "mismatch"), "bad") for g in groups])]
    checks = report.get("checks", [])
    if checks:
        parts += ["<h2>Checks</h2>", _table(("check", "status", "detail"),
                                            ((c["check"], c["status"], c["detail"]) for c in checks),
                                            [{"passed": "good", "failed": "bad"}.get(c["status"], "skipped")
                                             for c in checks])]
    for key, heading in (("mismatches", "Mismatches"), ("failures", "Inconclusive and device errors"),
                         ("errors", "Run errors")):
        if report.get(key):
            parts.append(f"<h2>{heading}</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in report[key])
                         + "</ul>")
    slo_rows = [(r["gate"], r.get("shown", r["value"]), "pass" if r["passed"] else "FAIL") for r in report.get("slo", [])]
    if slo_rows:
        parts.append("<h2>SLO gates</h2>" + _table(("gate", "value", "result"), slo_rows,
                                                    ["good" if r[2] == "pass" else "bad" for r in slo_rows]))
    latency_rows = [(phase, v["count"], v["p50_ms"], v["p90_ms"], v["p99_ms"], v["max_ms"])
                    for phase, v in report["latency"].items()]
    refused = sorted(report["refusals"].items(), key=lambda kv: -kv[1])
    parts += ["<h2>Latency (ms)</h2>", _table(("phase", "count", "p50", "p90", "p99", "max"), latency_rows),
              "<h2>Refused members by reason</h2>", _table(("reason", "count"), refused)]
    if report.get("connect_failures"):
        parts += ["<h2>Failed connect attempts and dropped connections, by reason</h2>",
                  _table(("reason", "count"), sorted(report["connect_failures"].items(), key=lambda kv: -kv[1]))]
    if png:
        parts.append(f"<h2>Histograms</h2><img src='{html.escape(png)}' alt='latency histograms'>")
    if report.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
