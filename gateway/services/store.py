"""Service state in the registry database (SQLAlchemy Core; SQLite or PostgreSQL): shadows, jobs and their
executions, lifecycle version numbers, and an outbox of messages for a gateway to publish.

These tables live beside the registry's but outside its change counter: a shadow update must not make every
gateway reload its view of certificates and policies. Tables are created on first use (``ensure``). Every
operation is one transaction; on SQLite writers take the write lock at BEGIN (the registry's
``iotgate_write`` option), on PostgreSQL rows read for a change are locked (``FOR UPDATE``).

The outbox carries messages made outside a gateway (``iotgate shadow update``, ``iotgate job create``): any
gateway of the fleet takes them (select and delete in one transaction, so exactly one publishes each) and
publishes them to the broker, which every gateway's subscribers share.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from gateway.registry.errors import RegistryError
from gateway.registry.schema import UTCDateTime
from gateway.services.jobs import Execution
from gateway.services.shadow import Shadow

metadata = sa.MetaData()
_ADVISORY_LOCK_KEY = 0x696F_7467_7376_6373  # "iotgsvcs": creating the service tables

shadows = sa.Table(
    "shadows",
    metadata,
    sa.Column("thing", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),  # "" for the classic shadow
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("present", sa.Boolean, nullable=False),  # False: deleted (the version carries on)
    sa.Column("document", sa.Text, nullable=False),  # JSON {desired, reported, meta_desired, meta_reported}
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),  # IN_PROGRESS, CANCELED, COMPLETED
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("targets", sa.Text, nullable=False),  # JSON list of thing names
    sa.Column("in_progress_timeout_minutes", sa.Integer, nullable=True),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

job_executions = sa.Table(
    "job_executions",
    metadata,
    sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.job_id", name="job_executions_job_fk",
                                                     ondelete="CASCADE"), primary_key=True),
    sa.Column("thing", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("status_details", sa.Text, nullable=True),
    sa.Column("queued_at", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=True),
    sa.Column("last_updated_at", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("execution_number", sa.BigInteger, nullable=False),
    sa.Column("step_timeout_at", sa.BigInteger, nullable=True),
    sa.Index("job_executions_thing", "thing"),
)

# Static thing groups (the targets of a job); a thing may be in several.
thing_groups = sa.Table(
    "thing_groups",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

thing_group_members = sa.Table(
    "thing_group_members",
    metadata,
    sa.Column("group_name", sa.String(128), sa.ForeignKey("thing_groups.name", name="thing_group_members_group_fk",
                                                          ondelete="CASCADE"), primary_key=True),
    sa.Column("thing", sa.String(128), primary_key=True),
    sa.Index("thing_group_members_thing", "thing"),
)

client_versions = sa.Table(
    "lifecycle_versions",
    metadata,
    sa.Column("client_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

outbox = sa.Table(
    "service_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(256), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)


@functools.cache
def _next_version_statement(backend: str):
    """Built once per backend (a connect storm calls it once per CONNECT): the upsert with a bound client id."""
    if backend == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(client_versions).values(client_id=sa.bindparam("client_id"), version=1)
    return statement.on_conflict_do_update(
        index_elements=[client_versions.c.client_id],
        set_={"version": client_versions.c.version + 1}).returning(client_versions.c.version)


class ServiceStore:
    """Transactions over the service tables of one registry database."""

    def __init__(self, engine: Engine, backend: str) -> None:
        self.engine = engine
        self.backend = backend
        self._ready = False

    @classmethod
    def of(cls, registry) -> "ServiceStore":
        return cls(registry.engine, registry.backend)

    def ensure(self) -> None:
        if not self._ready:
            with self._conn() as conn:
                if self.backend == "postgresql":  # gateways starting together: one creates, the others wait
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
                metadata.create_all(conn, checkfirst=True)
            self._ready = True

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(iotgate_write=True)
                with conn.begin():
                    yield conn
        except DBAPIError as exc:
            raise RegistryError(f"the service tables of the registry failed: {str(exc).splitlines()[0]}") from None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        self.ensure()
        with self._conn() as conn:
            yield conn

    def _lock(self, query):
        return query.with_for_update() if self.backend == "postgresql" else query

    # ------------------------------------------------------------------ shadows

    def _claim(self, conn: Connection, table: sa.Table, **key) -> None:
        """PostgreSQL: make sure the row exists before it is locked (FOR UPDATE locks no missing row, and two
        first writers would both insert). SQLite's writers are serialized by BEGIN IMMEDIATE already."""
        if self.backend == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            defaults = {"shadows": dict(version=0, present=False, document="{}", updated_at=_now()),
                        "lifecycle_versions": dict(version=0)}[table.name]
            conn.execute(insert(table).values(**key, **defaults).on_conflict_do_nothing())

    def load_shadow(self, conn: Connection, thing: str, name: str) -> Shadow:
        self._claim(conn, shadows, thing=thing, name=name)
        row = conn.execute(self._lock(sa.select(shadows.c.version, shadows.c.present, shadows.c.document).where(
            shadows.c.thing == thing, shadows.c.name == name))).first()
        if row is None:
            return Shadow()
        doc = orjson.loads(row.document)
        return Shadow(doc.get("desired"), doc.get("reported"), doc.get("meta_desired"), doc.get("meta_reported"),
                      row.version, bool(row.present))

    def save_shadow(self, conn: Connection, thing: str, name: str, shadow: Shadow) -> None:
        doc = orjson.dumps({"desired": shadow.desired, "reported": shadow.reported,
                            "meta_desired": shadow.meta_desired, "meta_reported": shadow.meta_reported}).decode()
        values = dict(version=shadow.version, present=shadow.exists, document=doc, updated_at=_now())
        done = conn.execute(sa.update(shadows).where(shadows.c.thing == thing, shadows.c.name == name)
                            .values(**values)).rowcount
        if not done:
            conn.execute(sa.insert(shadows).values(thing=thing, name=name, **values))

    def list_shadows(self, thing: str) -> list[tuple[str, int]]:
        with self.write() as conn:
            rows = conn.execute(sa.select(shadows.c.name, shadows.c.version).where(
                shadows.c.thing == thing, shadows.c.present.is_(True)).order_by(shadows.c.name)).all()
        return [(r.name, r.version) for r in rows]

    # ------------------------------------------------------------------ jobs

    def load_executions(self, conn: Connection, thing: str) -> list[Execution]:
        q = sa.select(job_executions, jobs.c.document, jobs.c.in_progress_timeout_minutes).join(
            jobs, jobs.c.job_id == job_executions.c.job_id).where(job_executions.c.thing == thing)
        return [_execution(r) for r in conn.execute(self._lock(q)).all()]

    def save_executions(self, conn: Connection, changed) -> None:
        touched = set()
        for e in changed:
            conn.execute(sa.update(job_executions).where(
                job_executions.c.job_id == e.job_id, job_executions.c.thing == e.thing).values(
                status=e.status, status_details=orjson.dumps(e.status_details).decode() if e.status_details else None,
                started_at=e.started_at, last_updated_at=e.last_updated_at, version=e.version,
                step_timeout_at=e.step_timeout_at))
            touched.add(e.job_id)
        for job_id in touched:
            self._complete_if_done(conn, job_id)

    def _complete_if_done(self, conn: Connection, job_id: str) -> None:
        pending = conn.execute(sa.select(sa.func.count()).select_from(job_executions).where(
            job_executions.c.job_id == job_id, job_executions.c.status.in_(("QUEUED", "IN_PROGRESS")))).scalar_one()
        if pending == 0:
            conn.execute(sa.update(jobs).where(jobs.c.job_id == job_id, jobs.c.status == "IN_PROGRESS")
                         .values(status="COMPLETED", updated_at=_now()))

    # ------------------------------------------------------------------ lifecycle, outbox

    def next_client_version(self, client_id: str) -> int:
        return self.next_client_versions([client_id])[0]

    def next_client_versions(self, client_ids: list[str]) -> list[int]:
        """Each client id's next lifecycle version, in order, in one transaction: one atomic upsert each (INSERT
        ... ON CONFLICT DO UPDATE ... RETURNING, on SQLite and PostgreSQL alike), so concurrent connects of one
        client id never share a number, and a client id twice in the list gets two."""
        statement = _next_version_statement(self.backend)
        with self.write() as conn:
            return [int(conn.execute(statement, {"client_id": c}).scalar_one()) for c in client_ids]

    def enqueue(self, conn: Connection, messages) -> None:
        rows = [dict(topic=m.topic, payload=m.payload, created_at=_now()) for m in messages]
        if rows:
            conn.execute(sa.insert(outbox), rows)

    def take_outbox(self, limit: int = 200) -> list[tuple[str, bytes]]:
        with self.write() as conn:
            rows = conn.execute(self._lock(sa.select(outbox.c.id, outbox.c.topic, outbox.c.payload)
                                           .order_by(outbox.c.id).limit(limit))).all()
            if rows:
                conn.execute(sa.delete(outbox).where(outbox.c.id.in_([r.id for r in rows])))
        return [(r.topic, bytes(r.payload)) for r in rows]


def _execution(r) -> Execution:
    return Execution(job_id=r.job_id, thing=r.thing, status=r.status, document=orjson.loads(r.document),
                     queued_at=r.queued_at, last_updated_at=r.last_updated_at, started_at=r.started_at,
                     status_details=orjson.loads(r.status_details) if r.status_details else None,
                     version=r.version, execution_number=r.execution_number, step_timeout_at=r.step_timeout_at,
                     in_progress_timeout_minutes=r.in_progress_timeout_minutes)


def _now() -> datetime:
    return datetime.now(timezone.utc)
