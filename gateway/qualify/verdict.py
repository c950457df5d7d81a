"""Verdicts and the evidence behind them.

A case ends in exactly one :class:`Verdict`. Only evidence passes: PASS and PASS_WITH_WARNINGS need something
the device did (a TLS alert, a packet, an interval between connects); a case that could not observe what it
judges is ERROR (its precondition failed: no connection, the device command crashed) or SKIPPED (it could not
run here, with why). A run passes only when every case passed, with or without warnings.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["CaseResult", "Evidence", "Timeline", "Verdict", "run_verdict"]

MAX_EVIDENCE = 300


class Verdict(enum.StrEnum):
    PASS = "pass"
    PASS_WITH_WARNINGS = "pass with warnings"
    FAIL = "fail"
    ERROR = "error"
    SKIPPED = "skipped"

    @property
    def passed(self) -> bool:
        return self in (Verdict.PASS, Verdict.PASS_WITH_WARNINGS)


@dataclasses.dataclass(frozen=True, slots=True)
class Evidence:
    """One observation: seconds since the case started, who (device, endpoint, runner), what."""

    t: float
    source: str
    text: str

    def as_dict(self) -> dict:
        return {"t": round(self.t, 4), "source": self.source, "text": self.text}


class Timeline:
    """What happened during one case, in order; bounded (the first MAX_EVIDENCE entries and a count)."""

    __slots__ = ("_clock", "_start", "entries", "dropped")

    def __init__(self, clock, start: float | None = None) -> None:
        self._clock = clock
        self._start = clock() if start is None else start
        self.entries: list[Evidence] = []
        self.dropped = 0

    def now(self) -> float:
        return self._clock() - self._start

    def at(self, when: float) -> float:
        """A clock reading as seconds since the case started."""
        return when - self._start

    def add(self, source: str, text: str, *, when: float | None = None) -> None:
        if len(self.entries) >= MAX_EVIDENCE:
            self.dropped += 1
            return
        t = self.now() if when is None else self.at(when)
        self.entries.append(Evidence(t, source, text))

    def device(self, text: str, **kw) -> None:
        self.add("device", text, **kw)

    def endpoint(self, text: str, **kw) -> None:
        self.add("endpoint", text, **kw)

    def note(self, text: str, **kw) -> None:
        self.add("runner", text, **kw)

    def as_list(self) -> list[dict]:
        out = [e.as_dict() for e in self.entries]
        if self.dropped:
            out.append({"t": None, "source": "runner", "text": f"... {self.dropped} more entries not kept"})
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class CaseResult:
    """The verdict of one case with its one-line summary, warnings, evidence and measured details."""

    case_id: str
    title: str
    group: str
    verdict: Verdict
    summary: str
    warnings: tuple[str, ...] = ()
    evidence: tuple[dict, ...] = ()
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    started: float = 0.0          # seconds since the run started
    duration: float = 0.0
    reference: str | None = None  # the Device Advisor test id this case follows, if any

    def as_dict(self) -> dict:
        return {
            "id": self.case_id,
            "title": self.title,
            "group": self.group,
            "device_advisor_id": self.reference,
            "verdict": str(self.verdict),
            "summary": self.summary,
            "warnings": list(self.warnings),
            "started_s": round(self.started, 3),
            "duration_s": round(self.duration, 3),
            "details": self.details,
            "evidence": list(self.evidence),
        }


def run_verdict(results: Sequence[CaseResult]) -> Verdict:
    """The run's verdict: error if any case errored, else fail if any failed or was skipped, else pass (with
    warnings when any case had some). An empty run is an error: nothing was shown."""
    if not results:
        return Verdict.ERROR
    verdicts = [r.verdict for r in results]
    if Verdict.ERROR in verdicts:
        return Verdict.ERROR
    if Verdict.FAIL in verdicts or Verdict.SKIPPED in verdicts:
        return Verdict.FAIL
    if Verdict.PASS_WITH_WARNINGS in verdicts:
        return Verdict.PASS_WITH_WARNINGS
    return Verdict.PASS


def counts(results: Iterable[CaseResult]) -> dict[str, int]:
    out = {str(v): 0 for v in Verdict}
    for r in results:
        out[str(r.verdict)] += 1
    return out
