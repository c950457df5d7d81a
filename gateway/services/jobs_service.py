"""The Jobs service: device requests on ``$aws/things/<thing>/jobs/...`` run through the pure core
(``gateway.services.jobs``) on the thing's stored executions, in one transaction; the operator's side
(``iotgate job create|list|show|cancel``) with its notifications left in the outbox."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import orjson
import sqlalchemy as sa

from gateway.registry.errors import AlreadyExists, InvalidValue, NotFound
from gateway.services import jobs as core
from gateway.services.base import Message, Request
from gateway.services.shadow_service import THING_NAME
from gateway.services.store import ServiceStore, job_executions, jobs

JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_DOCUMENT_BYTES = 32 * 1024  # AWS: a job document is at most 32 KB


def parse_topic(topic: str) -> tuple[str, str, str | None] | None:
    """(thing, operation, job id) of a request topic; operation is get, start-next, describe or update."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[:2] != ["$aws", "things"] or parts[3] != "jobs" or not THING_NAME.fullmatch(parts[2]):
        return None
    thing = parts[2]
    if len(parts) == 5 and parts[4] in ("get", "start-next"):
        return thing, parts[4], None
    if len(parts) == 6 and parts[5] in ("get", "update") and (parts[4] == "$next" or JOB_ID.fullmatch(parts[4])):
        if parts[5] == "update" and parts[4] == "$next":
            return None
        return thing, "describe" if parts[5] == "get" else "update", parts[4]
    return None


class JobsService:
    name = "jobs"
    filters = ("$aws/things/+/jobs/get", "$aws/things/+/jobs/start-next", "$aws/things/+/jobs/+/get",
               "$aws/things/+/jobs/+/update")

    def __init__(self, store: ServiceStore) -> None:
        self.store = store

    def handle(self, request: Request) -> list[Message]:
        parsed = parse_topic(request.topic)
        if parsed is None:
            return []
        thing, op, job_id = parsed
        now = int(request.now)
        with self.store.write() as conn:
            executions = self.store.load_executions(conn, thing)
            outcome = core.handle(thing, op, job_id, executions, request.payload, now)
            self.store.save_executions(conn, outcome.changed)
        out = []
        for suffix, doc in outcome.messages:
            if suffix in ("accepted", "rejected"):
                topic = f"{request.topic}/{suffix}"
            else:
                topic = f"$aws/things/{thing}/jobs/{suffix}"
            out.append(Message(topic, orjson.dumps(doc)))
        return out

    def throttled(self, request: Request) -> list[Message]:
        if parse_topic(request.topic) is None:
            return []
        doc = {"code": "RequestThrottled", "message": "too many requests in flight on this connection",
               "timestamp": int(request.now)}
        try:
            token = orjson.loads(request.payload).get("clientToken")
        except (orjson.JSONDecodeError, AttributeError):
            token = None
        if isinstance(token, str):
            doc["clientToken"] = token
        return [Message(request.topic + "/rejected", orjson.dumps(doc))]

    # ------------------------------------------------------------------ operator side

    def create(self, job_id: str, document: bytes, targets: list[str], *, description: str | None = None,
               in_progress_timeout_minutes: int | None = None, now: float) -> dict:
        if not JOB_ID.fullmatch(job_id):
            raise InvalidValue(f"job id {job_id!r}: use 1..64 of a-z A-Z 0-9 _ -")
        if len(document) > MAX_DOCUMENT_BYTES:
            raise InvalidValue(f"the job document is {len(document)} bytes; at most {MAX_DOCUMENT_BYTES}")
        try:
            parsed = orjson.loads(document)
        except orjson.JSONDecodeError as exc:
            raise InvalidValue(f"the job document is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise InvalidValue("the job document must be a JSON object")
        if not targets:
            raise InvalidValue("a job needs at least one target thing")
        for thing in targets:
            if not THING_NAME.fullmatch(thing):
                raise InvalidValue(f"target {thing!r} is not a thing name")
        targets = list(dict.fromkeys(targets))
        if in_progress_timeout_minutes is not None and not 1 <= in_progress_timeout_minutes <= 10080:
            raise InvalidValue("the in-progress timeout must be 1..10080 minutes")
        stamp = int(now)
        with self.store.write() as conn:
            if conn.execute(sa.select(jobs.c.job_id).where(jobs.c.job_id == job_id)).first() is not None:
                raise AlreadyExists(f"job {job_id} already exists; choose another id")
            when = datetime.fromtimestamp(now, timezone.utc)
            conn.execute(sa.insert(jobs).values(
                job_id=job_id, status="IN_PROGRESS", document=orjson.dumps(parsed).decode(), description=description,
                targets=orjson.dumps(targets).decode(), in_progress_timeout_minutes=in_progress_timeout_minutes,
                created_at=when, updated_at=when))
            messages = []
            for thing in targets:
                before = self.store.load_executions(conn, thing)
                conn.execute(sa.insert(job_executions).values(
                    job_id=job_id, thing=thing, status="QUEUED", queued_at=stamp, last_updated_at=stamp, version=1,
                    execution_number=1))
                after = self.store.load_executions(conn, thing)
                messages += self._notices(thing, before, after, stamp)
            self.store.enqueue(conn, messages)
        return self.show(job_id)

    def cancel(self, job_id: str, *, force: bool = False, comment: str | None = None, now: float) -> dict:
        stamp = int(now)
        with self.store.write() as conn:
            row = conn.execute(self.store._lock(sa.select(jobs.c.status).where(jobs.c.job_id == job_id))).first()
            if row is None:
                raise NotFound(f"job {job_id} does not exist")
            if row.status != "IN_PROGRESS":
                raise InvalidValue(f"job {job_id} is {row.status}: only an IN_PROGRESS job can be canceled")
            statuses = ("QUEUED", "IN_PROGRESS") if force else ("QUEUED",)
            things = conn.execute(sa.select(job_executions.c.thing).where(
                job_executions.c.job_id == job_id, job_executions.c.status.in_(statuses))).scalars().all()
            messages = []
            for thing in things:
                before = self.store.load_executions(conn, thing)
                conn.execute(sa.update(job_executions).where(
                    job_executions.c.job_id == job_id, job_executions.c.thing == thing).values(
                    status="CANCELED", last_updated_at=stamp, version=job_executions.c.version + 1,
                    step_timeout_at=None))
                after = self.store.load_executions(conn, thing)
                messages += self._notices(thing, before, after, stamp)
            conn.execute(sa.update(jobs).where(jobs.c.job_id == job_id).values(
                status="CANCELED", comment=comment, updated_at=datetime.fromtimestamp(now, timezone.utc)))
            self.store.enqueue(conn, messages)
        return self.show(job_id)

    @staticmethod
    def _notices(thing: str, before, after, now: int) -> list[Message]:
        return [Message(f"$aws/things/{thing}/jobs/{suffix}", orjson.dumps(doc))
                for suffix, doc in core.notifications(thing, before, after, now)]

    def show(self, job_id: str) -> dict:
        with self.store.write() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.job_id == job_id)).first()
            if row is None:
                raise NotFound(f"job {job_id} does not exist")
            execs = conn.execute(sa.select(job_executions).where(job_executions.c.job_id == job_id)
                                 .order_by(job_executions.c.thing)).all()
        counts: dict[str, int] = {}
        for e in execs:
            counts[e.status] = counts.get(e.status, 0) + 1
        return {"jobId": row.job_id, "status": row.status, "description": row.description,
                "document": orjson.loads(row.document), "targets": orjson.loads(row.targets),
                "comment": row.comment, "createdAt": row.created_at.isoformat(),
                "lastUpdatedAt": row.updated_at.isoformat(),
                "jobExecutionsCounts": counts,
                "executions": [{"thingName": e.thing, "status": e.status, "versionNumber": e.version,
                                "executionNumber": e.execution_number,
                                "statusDetails": orjson.loads(e.status_details) if e.status_details else None,
                                "queuedAt": e.queued_at, "startedAt": e.started_at,
                                "lastUpdatedAt": e.last_updated_at} for e in execs]}

    def list(self, status: str | None = None) -> list[dict]:
        with self.store.write() as conn:
            q = sa.select(jobs.c.job_id, jobs.c.status, jobs.c.targets, jobs.c.created_at).order_by(jobs.c.created_at)
            if status:
                q = q.where(jobs.c.status == status)
            rows = conn.execute(q).all()
        return [{"jobId": r.job_id, "status": r.status, "targets": len(orjson.loads(r.targets)),
                 "createdAt": r.created_at.isoformat()} for r in rows]
