"""AWS IoT Jobs, device side, as the Jobs device MQTT API documents it: a pure core.

The job executions of one thing in, the changed executions and the messages out; no I/O, ``now`` is epoch
seconds. Request topics (each answered on ``.../accepted`` or ``.../rejected``):

    $aws/things/<thing>/jobs/get                 GetPendingJobExecutions: inProgressJobs, queuedJobs
    $aws/things/<thing>/jobs/start-next          StartNextPendingJobExecution: execution (none when idle)
    $aws/things/<thing>/jobs/<jobId>/get         DescribeJobExecution (jobId ``$next``: the next pending one)
    $aws/things/<thing>/jobs/<jobId>/update      UpdateJobExecution: executionState, jobDocument

and ``.../jobs/notify`` (the pending list changed) and ``.../jobs/notify-next`` (the next pending execution
changed). Statuses: QUEUED and IN_PROGRESS are pending; SUCCEEDED, FAILED, REJECTED, CANCELED, TIMED_OUT and
REMOVED are terminal. A device may set IN_PROGRESS, SUCCEEDED, FAILED or REJECTED, from QUEUED or
IN_PROGRESS; every change adds one to ``versionNumber``; ``expectedVersion`` guards an update
(VersionMismatch); an IN_PROGRESS execution past its step timeout (``stepTimeoutInMinutes``) or the job's
in-progress timeout becomes TIMED_OUT when next looked at.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

PENDING = ("QUEUED", "IN_PROGRESS")
TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED")
DEVICE_STATUSES = ("IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED")
MAX_REQUEST_BYTES = 32 * 1024
MAX_STATUS_DETAILS = 10


@dataclasses.dataclass(frozen=True, slots=True)
class Execution:
    job_id: str
    thing: str
    status: str
    document: Any  # the job document (parsed JSON)
    queued_at: int
    last_updated_at: int
    started_at: int | None = None
    status_details: dict[str, str] | None = None
    version: int = 1
    execution_number: int = 1
    step_timeout_at: int | None = None
    in_progress_timeout_minutes: int | None = None

    @property
    def pending(self) -> bool:
        return self.status in PENDING

    def data(self, *, document: bool = True) -> dict:
        """JobExecutionData."""
        out: dict[str, Any] = {"jobId": self.job_id, "thingName": self.thing, "status": self.status,
                               "queuedAt": self.queued_at, "lastUpdatedAt": self.last_updated_at,
                               "versionNumber": self.version, "executionNumber": self.execution_number}
        if document:
            out["jobDocument"] = self.document
        if self.started_at is not None:
            out["startedAt"] = self.started_at
        if self.status_details:
            out["statusDetails"] = self.status_details
        return out

    def summary(self) -> dict:
        """JobExecutionSummary."""
        out = {"jobId": self.job_id, "queuedAt": self.queued_at, "lastUpdatedAt": self.last_updated_at,
               "versionNumber": self.version, "executionNumber": self.execution_number}
        if self.started_at is not None:
            out["startedAt"] = self.started_at
        return out

    def state(self) -> dict:
        """JobExecutionState."""
        out: dict[str, Any] = {"status": self.status, "versionNumber": self.version}
        if self.status_details:
            out["statusDetails"] = self.status_details
        return out


class JobsError(Exception):
    def __init__(self, code: str, message: str, execution: Execution | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.execution = execution


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """The executions that changed (to store) and the messages: (topic suffix under jobs/, payload)."""

    changed: tuple[Execution, ...]
    messages: tuple[tuple[str, dict], ...]


def _with_token(doc: dict, token: str | None) -> dict:
    if token is not None:
        doc["clientToken"] = token
    return doc


def ordered(executions: list[Execution]) -> list[Execution]:
    return sorted(executions, key=lambda e: (e.queued_at, e.job_id))


def next_pending(executions: list[Execution]) -> Execution | None:
    """The next execution a device should run: the oldest IN_PROGRESS one, else the oldest QUEUED one."""
    pend = ordered([e for e in executions if e.pending])
    for e in pend:
        if e.status == "IN_PROGRESS":
            return e
    return pend[0] if pend else None


def expire(executions: list[Execution], now: int) -> tuple[list[Execution], list[Execution]]:
    """IN_PROGRESS executions past a timeout become TIMED_OUT: (all executions, those that changed)."""
    out, changed = [], []
    for e in executions:
        due = None
        if e.status == "IN_PROGRESS":
            if e.step_timeout_at is not None:
                due = e.step_timeout_at
            if e.in_progress_timeout_minutes and e.started_at is not None:
                end = e.started_at + e.in_progress_timeout_minutes * 60
                due = end if due is None else min(due, end)
        if due is not None and due <= now:
            e = dataclasses.replace(e, status="TIMED_OUT", version=e.version + 1, last_updated_at=now,
                                    step_timeout_at=None)
            changed.append(e)
        out.append(e)
    return out, changed


def notifications(thing: str, before: list[Execution], after: list[Execution], now: int) -> list[tuple[str, dict]]:
    """``notify`` when the pending list changed, ``notify-next`` when the next pending execution changed."""
    messages: list[tuple[str, dict]] = []

    def pending_key(execs):
        return sorted((e.job_id, e.status) for e in execs if e.pending)

    if pending_key(before) != pending_key(after):
        jobs: dict[str, list] = {}
        for e in ordered([e for e in after if e.pending]):
            jobs.setdefault(e.status, []).append(e.summary())
        messages.append(("notify", {"jobs": jobs, "timestamp": now}))
    b, a = next_pending(before), next_pending(after)
    if (b.job_id if b else None) != (a.job_id if a else None):
        messages.append(("notify-next", {"execution": a.data(), "timestamp": now} if a else {"timestamp": now}))
    return messages


# --------------------------------------------------------------------------------------------- requests

def _parse(payload: bytes) -> tuple[dict, str | None]:
    if len(payload) > MAX_REQUEST_BYTES:
        raise JobsError("InvalidRequest", f"the request is larger than {MAX_REQUEST_BYTES} bytes")
    if not payload.strip():
        return {}, None
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise JobsError("InvalidJson", "the request is not valid JSON") from None
    if not isinstance(request, dict):
        raise JobsError("InvalidJson", "the request is not a JSON object")
    token = request.get("clientToken")
    if token is not None and (not isinstance(token, str) or len(token) > 64):
        raise JobsError("InvalidRequest", "clientToken must be a string of at most 64 characters")
    return request, token


def _status_details(request: dict) -> dict[str, str] | None:
    details = request.get("statusDetails")
    if details is None:
        return None
    if not isinstance(details, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in details.items()):
        raise JobsError("InvalidRequest", "statusDetails must be an object of string values")
    if len(details) > MAX_STATUS_DETAILS:
        raise JobsError("InvalidRequest", f"statusDetails holds more than {MAX_STATUS_DETAILS} entries")
    return details


def _step_timeout(request: dict, now: int) -> tuple[bool, int | None]:
    if "stepTimeoutInMinutes" not in request:
        return False, None
    minutes = request["stepTimeoutInMinutes"]
    if minutes == -1:
        return True, None  # cancels the step timer
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 10080:
        raise JobsError("InvalidRequest", "stepTimeoutInMinutes must be 1..10080 (or -1 to clear it)")
    return True, now + minutes * 60


def _flag(request: dict, name: str, default: bool) -> bool:
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise JobsError("InvalidRequest", f"{name} must be true or false")
    return value


def handle(thing: str, operation: str, job_id: str | None, executions: list[Execution], payload: bytes,
           now: int) -> Outcome:
    """One device request. ``operation``: ``get``, ``start-next``, ``describe`` or ``update``; the reply goes to
    the request topic + ``/accepted`` or ``/rejected``, which the caller knows; messages are keyed
    ``accepted`` / ``rejected`` / ``notify`` / ``notify-next``."""
    executions, timed_out = expire(executions, now)
    before = [*executions]
    token = None
    try:
        request, token = _parse(payload)
        if operation == "get":
            accepted = _with_token({
                "inProgressJobs": [e.summary() for e in ordered(executions) if e.status == "IN_PROGRESS"],
                "queuedJobs": [e.summary() for e in ordered(executions) if e.status == "QUEUED"],
                "timestamp": now}, token)
            changed: list[Execution] = []
        elif operation == "start-next":
            accepted, changed = _start_next(executions, request, token, now)
        elif operation == "describe":
            accepted, changed = _describe(executions, job_id, request, token, now), []
        elif operation == "update":
            accepted, changed = _update(executions, job_id, request, token, now)
        else:
            raise JobsError("InvalidTopic", f"no Jobs operation {operation!r}")
    except JobsError as exc:
        doc = _with_token({"code": exc.code, "message": exc.message, "timestamp": now}, token)
        if exc.execution is not None:
            doc["executionState"] = exc.execution.state()
        after = executions
        return Outcome(tuple(timed_out), (("rejected", doc), *notifications(thing, _unexpired(before, timed_out),
                                                                             after, now)))
    by_id = {e.job_id: e for e in executions}
    for e in changed:
        by_id[e.job_id] = e
    after = list(by_id.values())
    all_changed = {e.job_id: e for e in timed_out}
    all_changed.update({e.job_id: e for e in changed})
    return Outcome(tuple(all_changed.values()),
                   (("accepted", accepted), *notifications(thing, _unexpired(before, timed_out), after, now)))


def _unexpired(before: list[Execution], timed_out: list[Execution]) -> list[Execution]:
    """The pending list as devices last saw it: timed-out executions were still IN_PROGRESS."""
    ids = {e.job_id for e in timed_out}
    return [dataclasses.replace(e, status="IN_PROGRESS") if e.job_id in ids else e for e in before]


def _start_next(executions: list[Execution], request: dict, token: str | None, now: int):
    details = _status_details(request)
    has_step, step_at = _step_timeout(request, now)
    nxt = next_pending(executions)
    if nxt is None:
        return _with_token({"timestamp": now}, token), []
    if nxt.status == "QUEUED":
        nxt = dataclasses.replace(nxt, status="IN_PROGRESS", started_at=now, last_updated_at=now,
                                  version=nxt.version + 1,
                                  status_details=details if details is not None else nxt.status_details,
                                  step_timeout_at=step_at if has_step else nxt.step_timeout_at)
        changed = [nxt]
    else:
        changed = []  # already in progress: returned as it is (AWS does the same)
    return _with_token({"execution": nxt.data(), "timestamp": now}, token), changed


def _find(executions: list[Execution], job_id: str | None, request: dict) -> Execution:
    if job_id == "$next":
        e = next_pending(executions)
        if e is None:
            raise JobsError("ResourceNotFound", "no pending job execution for this thing")
        return e
    number = request.get("executionNumber")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
        raise JobsError("InvalidRequest", "executionNumber must be an integer")
    for e in executions:
        if e.job_id == job_id and (number is None or number == e.execution_number):
            return e
    raise JobsError("ResourceNotFound", f"job execution {job_id} not found for this thing")


def _describe(executions: list[Execution], job_id: str | None, request: dict, token: str | None, now: int) -> dict:
    e = _find(executions, job_id, request)
    return _with_token({"execution": e.data(document=_flag(request, "includeJobDocument", True)),
                        "timestamp": now}, token)


def _update(executions: list[Execution], job_id: str | None, request: dict, token: str | None, now: int):
    e = _find(executions, job_id, request)
    status = request.get("status")
    if status not in DEVICE_STATUSES:
        raise JobsError("InvalidRequest", f"status must be one of {', '.join(DEVICE_STATUSES)}", e)
    try:
        details = _status_details(request)
        has_step, step_at = _step_timeout(request, now)
        include_state = _flag(request, "includeJobExecutionState", False)
        include_doc = _flag(request, "includeJobDocument", False)
    except JobsError as exc:
        exc.execution = e  # a refusal names the state the execution stays in
        raise
    expected = request.get("expectedVersion")
    if expected is not None:
        if isinstance(expected, bool) or not isinstance(expected, int):
            raise JobsError("InvalidRequest", "expectedVersion must be an integer", e)
        if expected != e.version:
            raise JobsError("VersionMismatch", f"expectedVersion {expected} does not match the current version "
                                               f"{e.version}", e)
    if not e.pending:
        raise JobsError("InvalidStateTransition", f"the job execution is in the terminal state {e.status}", e)
    updated = dataclasses.replace(
        e, status=status, last_updated_at=now, version=e.version + 1,
        started_at=e.started_at if e.started_at is not None or status != "IN_PROGRESS" else now,
        status_details=details if details is not None else e.status_details,
        step_timeout_at=(step_at if has_step else e.step_timeout_at) if status == "IN_PROGRESS" else None)
    accepted: dict[str, Any] = {"timestamp": now}
    if include_state:
        accepted["executionState"] = updated.state()
    if include_doc:
        accepted["jobDocument"] = updated.document
    return _with_token(accepted, token), [updated]
