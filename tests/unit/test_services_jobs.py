"""The Jobs core as a table: a thing's executions + a device request -> messages and changed executions."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from gateway.services import jobs as core
from gateway.services.jobs import Execution

NOW = 1_700_000_000


def ex(job_id: str, status: str = "QUEUED", queued: int = 100, **kw) -> Execution:
    return Execution(job_id, "t1", status, {"op": job_id}, queued, queued, **kw)


def run(op: str, executions, payload: dict | None = None, job_id: str | None = None, now: int = NOW):
    return core.handle("t1", op, job_id, list(executions), orjson.dumps(payload) if payload is not None else b"",
                       now)


def test_start_next_takes_the_oldest_queued_and_says_so():
    out = run("start-next", [ex("b", queued=200), ex("a", queued=100)],
              {"statusDetails": {"step": "1"}, "clientToken": "c"})
    by = dict(out.messages)
    e = by["accepted"]["execution"]
    assert (e["jobId"], e["status"], e["versionNumber"], e["startedAt"], e["statusDetails"]) == \
        ("a", "IN_PROGRESS", 2, NOW, {"step": "1"})
    assert e["jobDocument"] == {"op": "a"} and by["accepted"]["clientToken"] == "c"
    assert [c.job_id for c in out.changed] == ["a"]
    # the pending list changed (a is now IN_PROGRESS); the next one (a) did not
    assert by["notify"]["jobs"] == {"IN_PROGRESS": [out.changed[0].summary()],
                                    "QUEUED": [ex("b", queued=200).summary()]}
    assert "notify-next" not in by


def test_start_next_prefers_an_execution_in_progress():
    running = ex("b", "IN_PROGRESS", queued=200, started_at=250, version=2)
    out = run("start-next", [ex("a"), running])
    assert dict(out.messages)["accepted"]["execution"]["jobId"] == "b" and out.changed == ()


def test_start_next_with_nothing_pending():
    out = run("start-next", [ex("a", "SUCCEEDED")], {"clientToken": "z"})
    assert out.messages == (("accepted", {"timestamp": NOW, "clientToken": "z"}),) and out.changed == ()


def test_get_pending_lists_both_kinds():
    out = run("get", [ex("a", "IN_PROGRESS", started_at=150), ex("b"), ex("c", "FAILED")])
    acc = dict(out.messages)["accepted"]
    assert [j["jobId"] for j in acc["inProgressJobs"]] == ["a"] and [j["jobId"] for j in acc["queuedJobs"]] == ["b"]
    assert acc["inProgressJobs"][0]["startedAt"] == 150


UPDATES = [
    # (name, execution, request, expected rejection code or None, expected status after)
    ("queued to succeeded", ex("a"), {"status": "SUCCEEDED"}, None, "SUCCEEDED"),
    ("in progress to failed", ex("a", "IN_PROGRESS", version=2), {"status": "FAILED"}, None, "FAILED"),
    ("rejected by the device", ex("a"), {"status": "REJECTED"}, None, "REJECTED"),
    ("in progress again", ex("a", "IN_PROGRESS", version=2), {"status": "IN_PROGRESS"}, None, "IN_PROGRESS"),
    ("a device cannot cancel", ex("a"), {"status": "CANCELED"}, "InvalidRequest", "QUEUED"),
    ("a device cannot queue", ex("a", "IN_PROGRESS"), {"status": "QUEUED"}, "InvalidRequest", "IN_PROGRESS"),
    ("no status", ex("a"), {}, "InvalidRequest", "QUEUED"),
    ("terminal stays terminal", ex("a", "SUCCEEDED", version=3), {"status": "IN_PROGRESS"},
     "InvalidStateTransition", "SUCCEEDED"),
    ("timed out stays so", ex("a", "TIMED_OUT", version=3), {"status": "SUCCEEDED"},
     "InvalidStateTransition", "TIMED_OUT"),
    ("expected version matches", ex("a", version=4), {"status": "SUCCEEDED", "expectedVersion": 4}, None,
     "SUCCEEDED"),
    ("expected version stale", ex("a", version=4), {"status": "SUCCEEDED", "expectedVersion": 3}, "VersionMismatch",
     "QUEUED"),
    ("status details not strings", ex("a"), {"status": "IN_PROGRESS", "statusDetails": {"p": 5}}, "InvalidRequest",
     "QUEUED"),
    ("step timeout out of range", ex("a"), {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 0}, "InvalidRequest",
     "QUEUED"),
]


@pytest.mark.parametrize("name,execution,request_,code,status", UPDATES, ids=[u[0] for u in UPDATES])
def test_update(name, execution, request_, code, status):
    out = run("update", [execution], {**request_, "includeJobExecutionState": True}
              if code is None else request_, job_id="a")
    by = dict(out.messages)
    if code is None:
        assert by["accepted"]["executionState"]["status"] == status
        assert by["accepted"]["executionState"]["versionNumber"] == execution.version + 1
        assert out.changed[0].status == status
    else:
        assert by["rejected"]["code"] == code and out.changed == ()
        assert by["rejected"]["executionState"]["status"] == status


def test_unknown_job_and_bad_json():
    assert dict(run("update", [ex("a")], {"status": "SUCCEEDED"}, job_id="zz").messages)["rejected"]["code"] == \
        "ResourceNotFound"
    out = core.handle("t1", "get", None, [], b"{", NOW)
    assert dict(out.messages)["rejected"]["code"] == "InvalidJson"


def test_describe_next_and_without_document():
    out = run("describe", [ex("a"), ex("b", queued=300)], {"includeJobDocument": False}, job_id="$next")
    e = dict(out.messages)["accepted"]["execution"]
    assert e["jobId"] == "a" and "jobDocument" not in e


def test_finishing_the_last_job_tells_notify_next_there_is_none():
    out = run("update", [ex("a", "IN_PROGRESS", version=2)], {"status": "SUCCEEDED"}, job_id="a")
    by = dict(out.messages)
    assert by["notify-next"] == {"timestamp": NOW} and by["notify"]["jobs"] == {}


def test_finishing_one_moves_notify_next_to_the_following():
    out = run("update", [ex("a", "IN_PROGRESS", version=2), ex("b", queued=300)], {"status": "FAILED"}, job_id="a")
    assert dict(out.messages)["notify-next"]["execution"]["jobId"] == "b"


def test_step_timeout_times_out_when_next_looked_at():
    started = run("start-next", [ex("a")], {"stepTimeoutInMinutes": 1}).changed[0]
    assert started.step_timeout_at == NOW + 60
    before = run("get", [started], now=NOW + 59)
    assert before.changed == ()
    later = run("get", [started], now=NOW + 60)
    assert [(c.status, c.version) for c in later.changed] == [("TIMED_OUT", 3)]
    by = dict(later.messages)
    assert by["accepted"]["inProgressJobs"] == [] and by["notify-next"] == {"timestamp": NOW + 60}
    # an update of a timed-out execution is refused
    assert dict(run("update", [later.changed[0]], {"status": "SUCCEEDED"}, job_id="a").messages)["rejected"][
        "code"] == "InvalidStateTransition"


def test_job_in_progress_timeout():
    e = ex("a", "IN_PROGRESS", started_at=NOW, version=2, in_progress_timeout_minutes=5)
    assert run("get", [e], now=NOW + 299).changed == ()
    assert run("get", [e], now=NOW + 300).changed[0].status == "TIMED_OUT"


def test_update_resets_the_step_timer():
    e = ex("a", "IN_PROGRESS", started_at=NOW, version=2, step_timeout_at=NOW + 60)
    out = run("update", [e], {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 10}, job_id="a", now=NOW + 30)
    assert out.changed[0].step_timeout_at == NOW + 30 + 600
    cleared = run("update", [e], {"status": "IN_PROGRESS", "stepTimeoutInMinutes": -1}, job_id="a", now=NOW + 30)
    assert cleared.changed[0].step_timeout_at is None
    assert dataclasses.replace(e).step_timeout_at == NOW + 60
