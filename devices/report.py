"""Run reports: latency statistics, outcome-versus-expectation, SLO gates (pure), and the JSON, HTML and PNG
writers.

    stats = LatencyStats.of(samples)            # count, min, mean, p50, p90, p99, max (seconds)
    gates = parse_slo("connack_p99<500ms,errors=0")
    results = check_slo(gates, metrics)         # [GateResult(gate, value, passed)]
"""

from __future__ import annotations

import dataclasses
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

@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    """What one member of a group met: a device or an attacker. ``outcome`` is ``allowed`` or ``refused``;
    ``problems`` are what went wrong for an allowed device (a refused publish, a lost sequence number, ...)."""

    group: str
    member: str
    expect: str
    outcome: str
    detail: str = ""
    problems: tuple[str, ...] = ()
    skipped: str = ""           # why the check was not run on this target (not a mismatch)


def mismatches(observations: Iterable[Observation]) -> list[str]:
    """One line per observation that differs from its expectation, naming group, member and what happened."""
    out = []
    for o in observations:
        if o.skipped:
            continue
        if o.outcome != o.expect:
            verb = "got in" if o.outcome == "allowed" else "was refused"
            out.append(f"{o.group}: {o.member} {verb}, expected {o.expect}" + (f" ({o.detail})" if o.detail else ""))
        for problem in o.problems:
            out.append(f"{o.group}: {o.member}: {problem}")
    return out


def group_summary(observations: Iterable[Observation]) -> list[dict[str, Any]]:
    """Per group: expectation, members, how many were allowed / refused / skipped, and mismatches."""
    groups: dict[str, dict[str, Any]] = {}
    for o in observations:
        g = groups.setdefault(o.group, {"group": o.group, "expect": o.expect, "members": 0, "allowed": 0,
                                        "refused": 0, "skipped": 0, "mismatches": 0, "details": {}})
        g["members"] += 1
        if o.skipped:
            g["skipped"] += 1
            g["details"][o.skipped] = g["details"].get(o.skipped, 0) + 1
            continue
        g[o.outcome] += 1
        if o.outcome != o.expect or o.problems:
            g["mismatches"] += 1
        if o.detail:
            g["details"][o.detail] = g["details"].get(o.detail, 0) + 1
    for g in groups.values():
        g["ok"] = g["mismatches"] == 0
        g["details"] = dict(sorted(g["details"].items(), key=lambda kv: -kv[1])[:5])
    return list(groups.values())


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
    value: float
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class GateResult:
    gate: Gate
    value: float | None
    passed: bool


def known_metric(metric: str) -> bool:
    if metric in COUNT_METRICS or metric in RATE_METRICS:
        return True
    m = re.fullmatch(r"([a-z0-9]+)_(p[0-9]{1,2}|mean|max|min)", metric)
    return bool(m and m.group(1) in PHASES)


def parse_slo(text: str) -> list[Gate]:
    """``"connack_p99<500ms,errors=0"`` -> gates. Latency metrics are ``<phase>_<p50|p90|p99|mean|max|min>``
    (phases: tcp, tls, connack, suback, puback, e2e, command); counts: errors, mismatches, refusals, lost,
    connects, messages; rates: connects_per_s, messages_per_s, connected_ratio."""
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
        if unit in ("ms", "us", "µs") and metric in COUNT_METRICS + RATE_METRICS:
            raise SLOError(f"--slo: {metric} is not a duration; drop the unit in {part.strip()!r}")
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


def write_html(path: Path, report: Mapping[str, Any], png: str | None) -> Path:
    s = report["summary"]
    verdict = "PASS" if report["passed"] else "FAIL"
    latency_rows = [(phase, v["count"], v["p50_ms"], v["p90_ms"], v["p99_ms"], v["max_ms"])
                    for phase, v in report["latency"].items()]
    groups = report["groups"]
    group_rows = [(g["group"], g["expect"], g["members"], g["allowed"], g["refused"], g["skipped"], g["mismatches"],
                   "; ".join(f"{k} x{v}" for k, v in g["details"].items())) for g in groups]
    refusals = sorted(report["refusals"].items(), key=lambda kv: -kv[1])
    slo_rows = [(r["gate"], r["value"], "pass" if r["passed"] else "FAIL") for r in report.get("slo", [])]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>iotgate fleet run: {html.escape(report['scenario'])} ({verdict})</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:90%}"
        ".bad{background:#fdd}.good{background:#efe}h1 .pass{color:#080}h1 .fail{color:#b00}</style></head><body>",
        f"<h1>fleet run {html.escape(report['scenario'])}: <span class='{verdict.lower()}'>{verdict}</span></h1>",
        f"<p>target {html.escape(report['target'])} at {html.escape(report['endpoint'])}, connector "
        f"{html.escape(report['connector'])}, {s['devices']} devices and {s['attackers']} attackers, "
        f"{s['seconds']:.1f} s; {s['connects']} connects ({s['connects_per_s']:.1f}/s), "
        f"{s['messages']} messages ({s['messages_per_s']:.1f}/s)</p>",
        "<h2>Outcome versus expectation</h2>",
        _table(("group", "expected", "members", "allowed", "refused", "skipped", "mismatches", "details"),
               group_rows, ["bad" if g["mismatches"] else "good" for g in groups]),
    ]
    if report["mismatches"]:
        parts.append("<h2>Mismatches</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in report["mismatches"])
                     + "</ul>")
    if slo_rows:
        parts.append("<h2>SLO gates</h2>" + _table(("gate", "value", "result"), slo_rows,
                                                    ["good" if r[2] == "pass" else "bad" for r in slo_rows]))
    parts += ["<h2>Latency (ms)</h2>", _table(("phase", "count", "p50", "p90", "p99", "max"), latency_rows),
              "<h2>Refusals by reason</h2>", _table(("reason", "count"), refusals)]
    if png:
        parts.append(f"<h2>Histograms</h2><img src='{html.escape(png)}' alt='latency histograms'>")
    if report.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
