"""The registry: things, CAs, certificates, policies and their attachments, in SQLite or PostgreSQL.

Every mutation runs in one transaction that first increments `registry_state.change_counter`; that
serializes writers (a row lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite), so the checks made inside a
mutation (limits, existence) cannot race. A call that changes nothing is rolled back and leaves the
counter alone. On PostgreSQL the transaction also sends `NOTIFY iotgate_registry, '<counter>'`.
The same transaction writes the change log (`registry_changes`): which certificates, policies, CAs, things
and principals it touched. Readers poll `change_counter()` (or LISTEN), then read `changes_since(counter)`
and re-read only those entities; `snapshot()` reloads everything.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from . import changes as ch
from . import model as m
from . import schema as t
from .errors import (
    AlreadyExists,
    Conflict,
    InvalidTransition,
    InvalidValue,
    LimitExceeded,
    NotFound,
    RegistryError,
)
from .model import CA, Certificate, Policy, PolicyVersion, ProvisionItem, Snapshot, Thing
from .principals import PrincipalTables
from .templates import TemplateTables

log = logging.getLogger("gateway.registry")

NOTIFY_CHANNEL = "iotgate_registry"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
_IN_CHUNK = 500
_ADVISORY_LOCK_KEY = 0x10761A7E  # serializes concurrent schema creation on one PostgreSQL database
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_UNSET: Any = ...


def sqlite_url(path: str | Path) -> str:
    """The registry URL of an SQLite file (made absolute)."""
    return "sqlite:///" + str(Path(path).expanduser().resolve())


class _NoChange(Exception):
    """Raised inside a write transaction that changed nothing: roll it back, keep the counter."""


class _Tx:
    __slots__ = ("conn", "counter", "changed")

    def __init__(self, conn: Connection, counter: int):
        self.conn = conn
        self.counter = counter
        self.changed: dict[tuple[str, str], None] = {}

    def note(self, kind: str, key: str) -> None:
        """Record that this mutation touched one entity (a change-log row, written at commit)."""
        self.changed[(kind, key)] = None

    def note_many(self, kind: str, keys: Iterable[str]) -> None:
        for key in keys:
            self.changed[(kind, key)] = None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def _ids(values: Iterable[str], n: int = 5) -> str:
    values = list(values)
    shown = ", ".join(values[:n])
    return shown + (f" and {len(values) - n} more" if len(values) > n else "")


def _dump_attrs(attrs: dict[str, str]) -> str:
    return json.dumps(attrs, sort_keys=True, separators=(",", ":"))


def _limit(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidValue(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _version_id(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidValue(f"policy version id {value!r} is not valid: it is a positive integer")
    return value


def _row_thing(r) -> Thing:
    return Thing(r.name, r.thing_type, json.loads(r.attributes), r.created_at, r.version)


def _row_ca(r) -> CA:
    return CA(r.ca_id, r.pem, r.subject, r.status, bool(r.auto_registration), bool(r.is_own), r.created_at)


def _row_cert(r, pem: bool = True) -> Certificate:
    return Certificate(
        r.certificate_id,
        r.pem if pem else "",
        r.serial_number,
        r.subject_cn,
        r.ca_id,
        r.status,
        r.not_before,
        r.not_after,
        r.created_at,
        r.revoked_at,
    )


def _row_policy(r) -> Policy:
    return Policy(r.name, r.default_version_id, r.document, r.created_at)


_POLICY_SELECT = (
    sa.select(t.policies.c.name, t.policies.c.default_version_id, t.policies.c.created_at, t.policy_versions.c.document)
    .select_from(t.policies)
    .join(
        t.policy_versions,
        sa.and_(
            t.policy_versions.c.policy_name == t.policies.c.name,
            t.policy_versions.c.version_id == t.policies.c.default_version_id,
        ),
    )
)


class Registry(PrincipalTables, TemplateTables):
    """Things, CAs, certificates, policies and attachments; custom authorizers and SigV4 access keys
    (`PrincipalTables`). Open with `Registry.open(url)`."""

    def __init__(self, engine: Engine, *, backend: str, display_url: str, clock: Callable[[], datetime]):
        self._engine = engine
        self._backend = backend
        self._display = display_url
        self._clock = clock
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        url: str,
        *,
        create: bool = True,
        schema: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> "Registry":
        """Open the registry at `url`, creating its tables if `create` (else: error if there is none).

        `sqlite:////abs/path/registry.db` (see `sqlite_url`), `sqlite://` (in memory, one connection),
        `postgresql://user@host:port/db` or `postgresql+psycopg://...`; `?schema=NAME` or `schema=`
        selects a PostgreSQL schema. `clock` returns the timezone-aware time stamped on new rows.
        """
        if not isinstance(url, str) or not url.strip():
            raise InvalidValue(
                "registry URL is empty: use sqlite:////ABSOLUTE/PATH/registry.db or postgresql://USER@HOST:PORT/DB"
            )
        try:
            u = sa.engine.make_url(url.strip())
        except ArgumentError:
            raise InvalidValue(
                f"registry URL {url!r} is not valid: use sqlite:////ABSOLUTE/PATH/registry.db "
                "or postgresql://USER@HOST:PORT/DB"
            ) from None
        display = u.render_as_string(hide_password=True)
        query = dict(u.query)
        url_schema = query.pop("schema", None)
        if isinstance(url_schema, tuple):
            url_schema = url_schema[-1]
        if schema is not None and url_schema is not None and schema != url_schema:
            raise InvalidValue(f"registry URL {display} names schema {url_schema!r} but schema={schema!r} was passed")
        schema = schema if schema is not None else url_schema
        u = u.set(query=query)
        backend, _, driver = u.drivername.partition("+")
        clock = clock or (lambda: datetime.now(timezone.utc))

        if backend == "sqlite":
            if driver not in ("pysqlite", ""):
                raise InvalidValue(f"registry URL {display}: only the standard sqlite3 driver is supported (sqlite:///...)")
            if schema is not None:
                raise InvalidValue(f"registry URL {display}: a schema applies to PostgreSQL only")
            engine = cls._sqlite_engine(u, display, create)
        elif backend in ("postgresql", "postgres"):
            if driver not in ("psycopg", ""):
                raise InvalidValue(f"registry URL {display}: use postgresql:// or postgresql+psycopg:// (psycopg 3)")
            if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
                raise InvalidValue(
                    f"schema {schema!r} is not valid: use lower-case letters, digits and '_' (not first), at most 63"
                )
            engine = cls._pg_engine(u.set(drivername="postgresql+psycopg"), schema)
        else:
            raise InvalidValue(
                f"registry URL {display}: {backend!r} is not supported; use sqlite:////ABSOLUTE/PATH/registry.db "
                "or postgresql://USER@HOST:PORT/DB"
            )

        reg = cls(engine, backend="sqlite" if backend == "sqlite" else "postgresql", display_url=display, clock=clock)
        try:
            reg._init_schema(create=create, schema=schema)
        except BaseException:
            engine.dispose()
            raise
        return reg

    @staticmethod
    def _sqlite_engine(u: URL, display: str, create: bool) -> Engine:
        database = u.database or ""
        memory = database in ("", ":memory:") or database.startswith("file::memory:")
        if not memory:
            path = Path(database)
            if not path.exists():
                if not create:
                    raise RegistryError(f"no registry at {display}: the file {path} does not exist; create it first")
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise RegistryError(
                        f"cannot create the directory of the registry {path}: {exc.strerror}; "
                        "choose a writable location"
                    ) from None
        kwargs: dict[str, Any] = {
            "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        }
        if memory:
            kwargs["poolclass"] = StaticPool
        engine = sa.create_engine(u, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
            cur = dbapi_conn.cursor()
            try:
                cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
                cur.execute("PRAGMA foreign_keys = ON")
                if not memory and cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = FULL")
            finally:
                cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # noqa: ANN001
            # writers take the write lock up front: no lock upgrade, no SQLITE_BUSY_SNAPSHOT
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("iotgate_write") else "BEGIN")

        return engine

    @staticmethod
    def _pg_engine(u: URL, schema: str | None) -> Engine:
        connect_args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        if schema:
            connect_args["options"] = f"-c search_path={schema}"
        return sa.create_engine(u, connect_args=connect_args, pool_pre_ping=True)

    def _unreachable(self, exc: BaseException) -> RegistryError:
        reason = _first_line(exc)
        if self._backend == "postgresql":
            pw = self._engine.url.password
            if pw:
                reason = reason.replace(str(pw), "***")
            hint = (
                "check that PostgreSQL is running and accepts connections there, "
                "and that user, host, port and database in the URL are right"
            )
        else:
            hint = "check that the file's directory exists and is writable, and that no other program holds it locked"
        return RegistryError(f"cannot use the registry at {self._display}: {reason}; {hint}")

    def _init_schema(self, *, create: bool, schema: str | None) -> None:
        try:
            with self._engine.connect() as conn:
                conn.execution_options(iotgate_write=True)
                with conn.begin():
                    if self._backend == "postgresql":
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
                    exists = sa.inspect(conn).has_table("registry_state")
                    if not exists:
                        if not create:
                            where = f" (schema {schema})" if schema else ""
                            raise RegistryError(
                                f"no registry at {self._display}{where}: its tables do not exist; create it first"
                            )
                        if schema:
                            conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                        t.metadata.create_all(conn)
                        conn.execute(
                            sa.insert(t.registry_state).values(
                                id=1, change_counter=0, schema_version=t.SCHEMA_VERSION
                            )
                        )
                    else:
                        version = conn.execute(
                            sa.select(t.registry_state.c.schema_version).where(t.registry_state.c.id == 1)
                        ).scalar_one_or_none()
                        if version is None:
                            raise RegistryError(f"the registry at {self._display} is damaged: its state row is missing")
                        if version > t.SCHEMA_VERSION:
                            raise RegistryError(
                                f"the registry at {self._display} has schema version {version}, newer than this "
                                f"iotgate understands ({t.SCHEMA_VERSION}): upgrade iotgate"
                            )
                        if version < t.SCHEMA_VERSION:
                            # Every later version only added tables: create the missing ones, in place.
                            t.metadata.create_all(conn, checkfirst=True)
                            conn.execute(
                                sa.update(t.registry_state)
                                .where(t.registry_state.c.id == 1)
                                .values(schema_version=t.SCHEMA_VERSION)
                            )
        except RegistryError:
            raise
        except DBAPIError as exc:
            raise self._unreachable(exc) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self._display!r})"

    @property
    def url(self) -> str:
        """The URL this registry was opened with, password masked."""
        return self._display

    def listen_dsn(self) -> str:
        """The libpq URL (password included: never print it) of a PostgreSQL registry, for a LISTEN connection."""
        if self._backend != "postgresql":
            raise RegistryError(f"the registry at {self._display} is not PostgreSQL: it has no NOTIFY")
        return self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    @property
    def engine(self) -> Engine:
        """The database engine: the gateway's services keep their own tables in the same database."""
        return self._engine

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._backend

    # ------------------------------------------------------------------ transactions

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryError(f"the registry at {self._display} is closed; open it again")

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        """One mutation: bump the counter first (serializes writers), notify, commit; roll back on _NoChange."""
        self._check_open()
        try:
            with self._engine.connect() as conn:
                conn.execution_options(iotgate_write=True)
                with conn.begin():
                    counter = conn.execute(
                        sa.update(t.registry_state)
                        .where(t.registry_state.c.id == 1)
                        .values(change_counter=t.registry_state.c.change_counter + 1)
                        .returning(t.registry_state.c.change_counter)
                    ).scalar_one()
                    tx = _Tx(conn, counter)
                    yield tx
                    ch.log(conn, counter, tx.changed)
                    if self._backend == "postgresql":
                        conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, str(counter))))
        except _NoChange:
            pass
        except IntegrityError as exc:
            raise Conflict(f"the registry refused the change: {_first_line(exc)}") from None
        except OperationalError as exc:
            raise self._unreachable(exc) from None
        except DBAPIError as exc:
            raise RegistryError(f"the registry at {self._display} failed: {_first_line(exc)}") from None

    @contextmanager
    def _read(self, *, consistent: bool = False) -> Iterator[Connection]:
        self._check_open()
        try:
            with self._engine.connect() as conn:
                if consistent and self._backend == "postgresql":
                    conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise self._unreachable(exc) from None
        except DBAPIError as exc:
            raise RegistryError(f"the registry at {self._display} failed: {_first_line(exc)}") from None

    def _now(self) -> datetime:
        return m.aware(self._clock(), "the registry clock's time")

    # ------------------------------------------------------------------ lookups inside a transaction

    def _resolve_cert(self, conn: Connection, certificate_id: Any) -> str:
        return self._resolve(conn, t.certificates.c.certificate_id, certificate_id, "certificate")

    def _resolve_ca(self, conn: Connection, ca_id: Any) -> str:
        return self._resolve(conn, t.cas.c.ca_id, ca_id, "CA")

    @staticmethod
    def _resolve(conn: Connection, col: sa.Column, value: Any, what: str) -> str:
        ident = m.id_or_prefix(value, f"{what} id")
        if len(ident) == 64:
            if conn.execute(sa.select(col).where(col == ident)).first() is None:
                raise NotFound(f"{what} {ident} is not registered")
            return ident
        found = conn.execute(sa.select(col).where(col.startswith(ident)).order_by(col).limit(3)).scalars().all()
        if not found:
            raise NotFound(f"no {what} id starts with {ident}")
        if len(found) > 1:
            raise Conflict(
                f"{what} id prefix {ident} is ambiguous: it matches {', '.join(found[:2])}"
                f"{' and more' if len(found) > 2 else ''}; type more characters"
            )
        return found[0]

    @staticmethod
    def _thing_row(conn: Connection, name: str):
        row = conn.execute(sa.select(t.things).where(t.things.c.name == name)).first()
        if row is None:
            raise NotFound(f"thing {name!r} does not exist")
        return row

    @staticmethod
    def _policy_row(conn: Connection, name: str):
        row = conn.execute(sa.select(t.policies).where(t.policies.c.name == name)).first()
        if row is None:
            raise NotFound(f"policy {name!r} does not exist")
        return row

    @staticmethod
    def _policy(conn: Connection, name: str) -> Policy:
        row = conn.execute(_POLICY_SELECT.where(t.policies.c.name == name)).first()
        if row is None:
            raise NotFound(f"policy {name!r} does not exist")
        return _row_policy(row)

    @staticmethod
    def _cert(conn: Connection, certificate_id: str) -> Certificate:
        row = conn.execute(
            sa.select(t.certificates).where(t.certificates.c.certificate_id == certificate_id)
        ).first()
        return _row_cert(row)

    # ------------------------------------------------------------------ counter and snapshot

    def change_counter(self) -> int:
        """The number of committed mutations so far: cheap to poll."""
        with self._read() as conn:
            return conn.execute(
                sa.select(t.registry_state.c.change_counter).where(t.registry_state.c.id == 1)
            ).scalar_one()

    def changes_since(self, counter: int, *, max_entities: int = ch.MAX_ENTITIES) -> ch.ChangeSet | None:
        """What changed after `counter`, re-read in one consistent transaction; None when the change log cannot
        tell (its rows for the next counter were pruned, a mutation named no entity, or more than `max_entities`
        entities changed): then reload `snapshot()`."""
        with self._read(consistent=True) as conn:
            return ch.read(conn, counter, max_entities, self._principal_snapshot)

    def snapshot(self, *, certificate_pem: bool = True) -> Snapshot:
        """Everything, read in one consistent transaction. `certificate_pem=False` leaves Certificate.pem
        empty (the gateway identifies a peer by the certificate it presents: it needs no stored PEM)."""
        with self._read(consistent=True) as conn:
            counter = conn.execute(
                sa.select(t.registry_state.c.change_counter).where(t.registry_state.c.id == 1)
            ).scalar_one()
            things = {r.name: _row_thing(r) for r in conn.execute(sa.select(t.things))}
            cas = {r.ca_id: _row_ca(r) for r in conn.execute(sa.select(t.cas))}
            cols = [c for c in t.certificates.c if certificate_pem or c.name != "pem"]
            certificates = {
                r.certificate_id: _row_cert(r, certificate_pem) for r in conn.execute(sa.select(*cols))
            }
            policies = {r.name: _row_policy(r) for r in conn.execute(_POLICY_SELECT)}
            cp: dict[str, list[str]] = defaultdict(list)
            for cid, pname in conn.execute(
                sa.select(t.certificate_policies.c.certificate_id, t.certificate_policies.c.policy_name).order_by(
                    t.certificate_policies.c.certificate_id, t.certificate_policies.c.policy_name
                )
            ):
                cp[cid].append(pname)
            ct: dict[str, list[str]] = defaultdict(list)
            for cid, thing in conn.execute(
                sa.select(t.thing_principals.c.certificate_id, t.thing_principals.c.thing_name).order_by(
                    t.thing_principals.c.certificate_id, t.thing_principals.c.thing_name
                )
            ):
                ct[cid].append(thing)
            authorizers, access_keys = self._principal_snapshot(conn)
        return Snapshot(
            counter=counter,
            things=things,
            cas=cas,
            certificates=certificates,
            policies=policies,
            cert_policies={k: tuple(v) for k, v in cp.items()},
            cert_things={k: tuple(v) for k, v in ct.items()},
            authorizers=authorizers,
            access_keys=access_keys,
        )

    # ------------------------------------------------------------------ things

    def create_thing(self, name: str, thing_type: str | None = None, attributes: dict | None = None) -> Thing:
        name = m.thing_name(name)
        ttype = m.thing_type(thing_type)
        attrs = m.attributes(attributes)
        now = self._now()
        with self._write() as tx:
            if tx.conn.execute(sa.select(t.things.c.name).where(t.things.c.name == name)).first():
                raise AlreadyExists(f"thing {name!r} already exists")
            tx.conn.execute(
                sa.insert(t.things).values(
                    name=name, thing_type=ttype, attributes=_dump_attrs(attrs), created_at=now, version=1
                )
            )
            tx.note(ch.THING, name)
        return Thing(name, ttype, attrs, now, 1)

    def get_thing(self, name: str) -> Thing:
        name = m.thing_name(name)
        with self._read() as conn:
            return _row_thing(self._thing_row(conn, name))

    def list_things(self, *, prefix: str | None = None, limit: int | None = None, offset: int = 0) -> list[Thing]:
        limit, offset = _limit(limit, "limit"), _limit(offset, "offset")
        q = sa.select(t.things).order_by(t.things.c.name)
        if prefix:
            q = q.where(t.things.c.name.startswith(m.text_field(prefix, "thing name prefix"), autoescape=True))
        q = q.limit(limit).offset(offset or None)
        with self._read() as conn:
            return [_row_thing(r) for r in conn.execute(q)]

    def count_things(self) -> int:
        with self._read() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(t.things)).scalar_one()

    def update_thing(self, name: str, *, thing_type: Any = _UNSET, attributes: Any = _UNSET) -> Thing:
        """Set the type (None removes it) and/or replace the attributes; the version goes up by one."""
        name = m.thing_name(name)
        ttype = _UNSET if thing_type is _UNSET else m.thing_type(thing_type)
        attrs = _UNSET if attributes is _UNSET else m.attributes(attributes)
        result: Thing | None = None
        with self._write() as tx:
            cur = _row_thing(self._thing_row(tx.conn, name))
            new_type = cur.thing_type if ttype is _UNSET else ttype
            new_attrs = cur.attributes if attrs is _UNSET else attrs
            if new_type == cur.thing_type and new_attrs == cur.attributes:
                result = cur
                raise _NoChange
            tx.conn.execute(
                sa.update(t.things)
                .where(t.things.c.name == name)
                .values(thing_type=new_type, attributes=_dump_attrs(new_attrs), version=cur.version + 1)
            )
            result = Thing(name, new_type, new_attrs, cur.created_at, cur.version + 1)
            tx.note(ch.THING, name)
        return result

    def delete_thing(self, name: str) -> None:
        """Delete a thing; refused while certificates (principals) are attached to it."""
        name = m.thing_name(name)
        with self._write() as tx:
            self._thing_row(tx.conn, name)
            attached = (
                tx.conn.execute(
                    sa.select(t.thing_principals.c.certificate_id)
                    .where(t.thing_principals.c.thing_name == name)
                    .order_by(t.thing_principals.c.certificate_id)
                )
                .scalars()
                .all()
            )
            if attached:
                raise Conflict(
                    f"thing {name!r} still has {len(attached)} certificate(s) attached ({_ids(attached)}): "
                    "detach them first"
                )
            tx.conn.execute(sa.delete(t.things).where(t.things.c.name == name))
            tx.note(ch.THING, name)

    # ------------------------------------------------------------------ CAs

    def register_ca(
        self,
        ca_id: str,
        pem: str,
        subject: str,
        *,
        status: str = "ACTIVE",
        auto_registration: bool = False,
        is_own: bool = False,
    ) -> CA:
        ca_id = m.hex_id(ca_id, "CA id")
        pem = m.text_field(pem, "CA PEM")
        subject = m.text_field(subject, "CA subject")
        status = m.status(status, m.CA_STATUSES, "CA status")
        now = self._now()
        with self._write() as tx:
            if tx.conn.execute(sa.select(t.cas.c.ca_id).where(t.cas.c.ca_id == ca_id)).first():
                raise AlreadyExists(f"CA {ca_id} is already registered")
            tx.conn.execute(
                sa.insert(t.cas).values(
                    ca_id=ca_id,
                    pem=pem,
                    subject=subject,
                    status=status,
                    auto_registration=bool(auto_registration),
                    is_own=bool(is_own),
                    created_at=now,
                )
            )
            tx.note(ch.CA_KIND, ca_id)
        return CA(ca_id, pem, subject, status, bool(auto_registration), bool(is_own), now)

    def get_ca(self, ca_id: str) -> CA:
        """A CA by id, or by a unique prefix of at least 8 hex characters."""
        with self._read() as conn:
            ident = self._resolve_ca(conn, ca_id)
            return _row_ca(conn.execute(sa.select(t.cas).where(t.cas.c.ca_id == ident)).one())

    def list_cas(self) -> list[CA]:
        with self._read() as conn:
            return [_row_ca(r) for r in conn.execute(sa.select(t.cas).order_by(t.cas.c.created_at, t.cas.c.ca_id))]

    def set_ca_status(self, ca_id: str, status: str) -> CA:
        status = m.status(status, m.CA_STATUSES, "CA status")
        result: CA | None = None
        with self._write() as tx:
            ident = self._resolve_ca(tx.conn, ca_id)
            cur = _row_ca(tx.conn.execute(sa.select(t.cas).where(t.cas.c.ca_id == ident)).one())
            result = cur
            if cur.status == status:
                raise _NoChange
            tx.conn.execute(sa.update(t.cas).where(t.cas.c.ca_id == ident).values(status=status))
            tx.note(ch.CA_KIND, ident)
            result = CA(cur.ca_id, cur.pem, cur.subject, status, cur.auto_registration, cur.is_own, cur.created_at)
        return result

    # ------------------------------------------------------------------ certificates

    def _warn_inactive_ca(self, conn: Connection, certificate_id: str, ca_id: str | None) -> None:
        if ca_id is None:
            return
        ca_status = conn.execute(sa.select(t.cas.c.status).where(t.cas.c.ca_id == ca_id)).scalar_one_or_none()
        if ca_status == "INACTIVE":
            log.warning(
                "certificate %s is ACTIVE but its CA %s is INACTIVE: devices using it are refused "
                "until the CA is activated",
                certificate_id,
                ca_id,
            )

    def register_certificate(
        self,
        certificate_id: str,
        pem: str,
        serial_number: str,
        subject_cn: str,
        ca_id: str | None,
        not_before: datetime,
        not_after: datetime,
        *,
        status: str = "ACTIVE",
    ) -> Certificate:
        """Register a certificate. `ca_id` may be None for a certificate whose CA is not registered."""
        certificate_id = m.hex_id(certificate_id, "certificate id")
        pem = m.text_field(pem, "certificate PEM")
        serial = m.serial(serial_number)
        subject_cn = m.text_field(subject_cn, "certificate subject CN")
        ca_id = None if ca_id is None else m.hex_id(ca_id, "CA id")
        not_before = m.aware(not_before, "not_before")
        not_after = m.aware(not_after, "not_after")
        if not_after < not_before:
            raise InvalidValue(
                f"certificate {certificate_id}: not_after {not_after.isoformat()} is before "
                f"not_before {not_before.isoformat()}"
            )
        status = m.status(status, m.CERTIFICATE_STATUSES, "certificate status")
        now = self._now()
        revoked_at = now if status == "REVOKED" else None
        with self._write() as tx:
            if tx.conn.execute(
                sa.select(t.certificates.c.certificate_id).where(t.certificates.c.certificate_id == certificate_id)
            ).first():
                raise AlreadyExists(f"certificate {certificate_id} is already registered")
            if ca_id is not None and not tx.conn.execute(sa.select(t.cas.c.ca_id).where(t.cas.c.ca_id == ca_id)).first():
                raise NotFound(f"CA {ca_id} of certificate {certificate_id} is not registered: register the CA first")
            tx.conn.execute(
                sa.insert(t.certificates).values(
                    certificate_id=certificate_id,
                    pem=pem,
                    serial_number=serial,
                    subject_cn=subject_cn,
                    ca_id=ca_id,
                    status=status,
                    not_before=not_before,
                    not_after=not_after,
                    created_at=now,
                    revoked_at=revoked_at,
                )
            )
            tx.note(ch.CERTIFICATE, certificate_id)
            if status == "ACTIVE":
                self._warn_inactive_ca(tx.conn, certificate_id, ca_id)
        return Certificate(
            certificate_id, pem, serial, subject_cn, ca_id, status, not_before, not_after, now, revoked_at
        )

    def get_certificate(self, certificate_id: str) -> Certificate:
        """A certificate by id, or by a unique prefix of at least 8 hex characters (Conflict if ambiguous)."""
        with self._read() as conn:
            return self._cert(conn, self._resolve_cert(conn, certificate_id))

    def list_certificates(
        self,
        *,
        status: str | None = None,
        ca_id: str | None = None,
        thing: str | None = None,
        expiring_before: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Certificate]:
        """Certificates in registration order, filtered by status, CA, thing and/or not_after < expiring_before."""
        limit, offset = _limit(limit, "limit"), _limit(offset, "offset")
        c = t.certificates.c
        q = sa.select(t.certificates)
        if status is not None:
            q = q.where(c.status == m.status(status, m.CERTIFICATE_STATUSES, "certificate status"))
        if expiring_before is not None:
            q = q.where(c.not_after < m.aware(expiring_before, "expiring_before"))
        if thing is not None:
            q = q.join(t.thing_principals, t.thing_principals.c.certificate_id == c.certificate_id).where(
                t.thing_principals.c.thing_name == m.thing_name(thing)
            )
        q = q.order_by(c.created_at, c.certificate_id).limit(limit).offset(offset or None)
        with self._read() as conn:
            if ca_id is not None:
                q = q.where(c.ca_id == self._resolve_ca(conn, ca_id))
            return [_row_cert(r) for r in conn.execute(q)]

    def set_certificate_status(self, certificate_id: str, status: str) -> Certificate:
        """ACTIVE <-> INACTIVE, anything -> REVOKED (final). Activating under an INACTIVE CA is allowed
        and logged as a warning (the gateway checks both)."""
        status = m.status(status, m.CERTIFICATE_STATUSES, "certificate status")
        now = self._now()
        result: Certificate | None = None
        with self._write() as tx:
            ident = self._resolve_cert(tx.conn, certificate_id)
            cur = self._cert(tx.conn, ident)
            result = cur
            if cur.status == status:
                raise _NoChange
            if cur.status == "REVOKED":
                raise InvalidTransition(
                    f"certificate {ident} is REVOKED, and revocation is final: it cannot become {status}; "
                    "issue a new certificate instead"
                )
            if status == "PENDING_ACTIVATION":
                raise InvalidTransition(
                    f"certificate {ident} cannot be set to PENDING_ACTIVATION: that status is given only at "
                    "registration; use ACTIVE, INACTIVE or REVOKED"
                )
            revoked_at = now if status == "REVOKED" else None
            tx.conn.execute(
                sa.update(t.certificates)
                .where(t.certificates.c.certificate_id == ident)
                .values(status=status, revoked_at=revoked_at)
            )
            tx.note(ch.CERTIFICATE, ident)
            if status == "ACTIVE":
                self._warn_inactive_ca(tx.conn, ident, cur.ca_id)
            result = Certificate(
                cur.certificate_id,
                cur.pem,
                cur.serial_number,
                cur.subject_cn,
                cur.ca_id,
                status,
                cur.not_before,
                cur.not_after,
                cur.created_at,
                revoked_at,
            )
        return result

    def revoked_serials(self, ca_id: str) -> list[tuple[str, datetime]]:
        """(serial hex, revoked_at) of the REVOKED certificates issued by `ca_id`, oldest revocation first."""
        c = t.certificates.c
        with self._read() as conn:
            ident = self._resolve_ca(conn, ca_id)
            rows = conn.execute(
                sa.select(c.serial_number, c.revoked_at)
                .where(c.ca_id == ident, c.status == "REVOKED")
                .order_by(c.revoked_at, c.serial_number)
            )
            return [(r.serial_number, r.revoked_at) for r in rows]

    # ------------------------------------------------------------------ policies

    def create_policy(self, name: str, document: str) -> Policy:
        """A new policy whose version 1 (default) is `document`, stored as given."""
        name = m.policy_name(name)
        document = m.document(document)
        now = self._now()
        with self._write() as tx:
            if tx.conn.execute(sa.select(t.policies.c.name).where(t.policies.c.name == name)).first():
                raise AlreadyExists(f"policy {name!r} already exists: create a new version of it instead")
            tx.conn.execute(
                sa.insert(t.policies).values(name=name, default_version_id=1, last_version_id=1, created_at=now)
            )
            tx.conn.execute(
                sa.insert(t.policy_versions).values(policy_name=name, version_id=1, document=document, created_at=now)
            )
            tx.note(ch.POLICY, name)
        return Policy(name, 1, document, now)

    def get_policy(self, name: str) -> Policy:
        name = m.policy_name(name)
        with self._read() as conn:
            return self._policy(conn, name)

    def list_policies(self) -> list[Policy]:
        with self._read() as conn:
            return [_row_policy(r) for r in conn.execute(_POLICY_SELECT.order_by(t.policies.c.name))]

    def delete_policy(self, name: str) -> None:
        """Delete a policy and all its versions; refused while it is attached to certificates."""
        name = m.policy_name(name)
        with self._write() as tx:
            self._policy_row(tx.conn, name)
            targets = (
                tx.conn.execute(
                    sa.select(t.certificate_policies.c.certificate_id)
                    .where(t.certificate_policies.c.policy_name == name)
                    .order_by(t.certificate_policies.c.certificate_id)
                )
                .scalars()
                .all()
            )
            if targets:
                raise Conflict(
                    f"policy {name!r} is attached to {len(targets)} certificate(s) ({_ids(targets)}): "
                    "detach it from them first"
                )
            owners = self._principals_of_policy(tx.conn, name)
            if owners:
                raise Conflict(f"policy {name!r} is granted to {_ids(owners)}: delete those first")
            tx.conn.execute(sa.delete(t.policy_versions).where(t.policy_versions.c.policy_name == name))
            tx.conn.execute(sa.delete(t.policies).where(t.policies.c.name == name))
            tx.note(ch.POLICY, name)

    def create_policy_version(self, name: str, document: str, *, set_as_default: bool = False) -> PolicyVersion:
        name = m.policy_name(name)
        document = m.document(document)
        now = self._now()
        with self._write() as tx:
            row = self._policy_row(tx.conn, name)
            count = tx.conn.execute(
                sa.select(sa.func.count()).where(t.policy_versions.c.policy_name == name)
            ).scalar_one()
            if count >= m.MAX_POLICY_VERSIONS:
                raise LimitExceeded(
                    f"policy {name!r} already has {count} versions, the most allowed "
                    f"({m.MAX_POLICY_VERSIONS}): delete one that is not the default first"
                )
            vid = row.last_version_id + 1
            tx.conn.execute(
                sa.insert(t.policy_versions).values(policy_name=name, version_id=vid, document=document, created_at=now)
            )
            values: dict[str, Any] = {"last_version_id": vid}
            if set_as_default:
                values["default_version_id"] = vid
            tx.conn.execute(sa.update(t.policies).where(t.policies.c.name == name).values(**values))
            tx.note(ch.POLICY, name)
        return PolicyVersion(name, vid, document, bool(set_as_default), now)

    def list_policy_versions(self, name: str) -> list[PolicyVersion]:
        name = m.policy_name(name)
        pv = t.policy_versions.c
        with self._read() as conn:
            default = self._policy_row(conn, name).default_version_id
            rows = conn.execute(sa.select(t.policy_versions).where(pv.policy_name == name).order_by(pv.version_id))
            return [PolicyVersion(name, r.version_id, r.document, r.version_id == default, r.created_at) for r in rows]

    def get_policy_version(self, name: str, version_id: int) -> PolicyVersion:
        name = m.policy_name(name)
        vid = _version_id(version_id)
        with self._read() as conn:
            default = self._policy_row(conn, name).default_version_id
            return self._policy_version(conn, name, vid, default)

    @staticmethod
    def _policy_version(conn: Connection, name: str, vid: int, default: int) -> PolicyVersion:
        pv = t.policy_versions.c
        r = conn.execute(sa.select(t.policy_versions).where(pv.policy_name == name, pv.version_id == vid)).first()
        if r is None:
            raise NotFound(f"policy {name!r} has no version {vid}")
        return PolicyVersion(name, vid, r.document, vid == default, r.created_at)

    def set_default_policy_version(self, name: str, version_id: int) -> Policy:
        name = m.policy_name(name)
        vid = _version_id(version_id)
        result: Policy | None = None
        with self._write() as tx:
            row = self._policy_row(tx.conn, name)
            version = self._policy_version(tx.conn, name, vid, row.default_version_id)
            result = Policy(name, vid, version.document, row.created_at)
            if row.default_version_id == vid:
                raise _NoChange
            tx.conn.execute(sa.update(t.policies).where(t.policies.c.name == name).values(default_version_id=vid))
            tx.note(ch.POLICY, name)
        return result

    def delete_policy_version(self, name: str, version_id: int) -> None:
        name = m.policy_name(name)
        vid = _version_id(version_id)
        pv = t.policy_versions.c
        with self._write() as tx:
            row = self._policy_row(tx.conn, name)
            self._policy_version(tx.conn, name, vid, row.default_version_id)
            if row.default_version_id == vid:
                raise Conflict(
                    f"version {vid} is the default version of policy {name!r} and cannot be deleted: "
                    "make another version the default first, or delete the policy"
                )
            tx.conn.execute(sa.delete(t.policy_versions).where(pv.policy_name == name, pv.version_id == vid))
            tx.note(ch.POLICY, name)

    # ------------------------------------------------------------------ policy <-> certificate

    def attach_policy(self, policy_name: str, certificate_id: str) -> None:
        """Attach a policy to a certificate (at most 10 per certificate); attaching twice is a no-op."""
        policy_name = m.policy_name(policy_name)
        cp = t.certificate_policies.c
        with self._write() as tx:
            self._policy_row(tx.conn, policy_name)
            ident = self._resolve_cert(tx.conn, certificate_id)
            attached = tx.conn.execute(sa.select(cp.policy_name).where(cp.certificate_id == ident)).scalars().all()
            if policy_name in attached:
                raise _NoChange
            if len(attached) >= m.MAX_POLICIES_PER_CERTIFICATE:
                raise LimitExceeded(
                    f"certificate {ident} already has {len(attached)} policies attached, the most allowed "
                    f"({m.MAX_POLICIES_PER_CERTIFICATE}): detach one first or merge policies"
                )
            tx.conn.execute(sa.insert(t.certificate_policies).values(certificate_id=ident, policy_name=policy_name))
            tx.note(ch.CERTIFICATE, ident)

    def detach_policy(self, policy_name: str, certificate_id: str) -> None:
        policy_name = m.policy_name(policy_name)
        cp = t.certificate_policies.c
        with self._write() as tx:
            self._policy_row(tx.conn, policy_name)
            ident = self._resolve_cert(tx.conn, certificate_id)
            done = tx.conn.execute(
                sa.delete(t.certificate_policies).where(cp.certificate_id == ident, cp.policy_name == policy_name)
            )
            if done.rowcount == 0:
                raise NotFound(f"policy {policy_name!r} is not attached to certificate {ident}")
            tx.note(ch.CERTIFICATE, ident)

    def list_attached_policies(self, certificate_id: str) -> list[Policy]:
        cp = t.certificate_policies.c
        with self._read() as conn:
            ident = self._resolve_cert(conn, certificate_id)
            q = (
                _POLICY_SELECT.join(t.certificate_policies, cp.policy_name == t.policies.c.name)
                .where(cp.certificate_id == ident)
                .order_by(t.policies.c.name)
            )
            return [_row_policy(r) for r in conn.execute(q)]

    def list_policy_targets(self, policy_name: str) -> list[str]:
        """Ids of the certificates the policy is attached to."""
        policy_name = m.policy_name(policy_name)
        cp = t.certificate_policies.c
        with self._read() as conn:
            self._policy_row(conn, policy_name)
            return (
                conn.execute(
                    sa.select(cp.certificate_id).where(cp.policy_name == policy_name).order_by(cp.certificate_id)
                )
                .scalars()
                .all()
            )

    # ------------------------------------------------------------------ thing <-> certificate

    def attach_thing_principal(self, thing: str, certificate_id: str) -> None:
        """Attach a certificate to a thing; attaching twice is a no-op."""
        thing = m.thing_name(thing)
        tp = t.thing_principals.c
        with self._write() as tx:
            self._thing_row(tx.conn, thing)
            ident = self._resolve_cert(tx.conn, certificate_id)
            if tx.conn.execute(
                sa.select(tp.thing_name).where(tp.thing_name == thing, tp.certificate_id == ident)
            ).first():
                raise _NoChange
            tx.conn.execute(sa.insert(t.thing_principals).values(thing_name=thing, certificate_id=ident))
            tx.note(ch.CERTIFICATE, ident)

    def detach_thing_principal(self, thing: str, certificate_id: str) -> None:
        thing = m.thing_name(thing)
        tp = t.thing_principals.c
        with self._write() as tx:
            self._thing_row(tx.conn, thing)
            ident = self._resolve_cert(tx.conn, certificate_id)
            done = tx.conn.execute(
                sa.delete(t.thing_principals).where(tp.thing_name == thing, tp.certificate_id == ident)
            )
            if done.rowcount == 0:
                raise NotFound(f"certificate {ident} is not attached to thing {thing!r}")
            tx.note(ch.CERTIFICATE, ident)

    def list_thing_principals(self, thing: str) -> list[Certificate]:
        thing = m.thing_name(thing)
        c, tp = t.certificates.c, t.thing_principals.c
        with self._read() as conn:
            self._thing_row(conn, thing)
            q = (
                sa.select(t.certificates)
                .join(t.thing_principals, tp.certificate_id == c.certificate_id)
                .where(tp.thing_name == thing)
                .order_by(c.created_at, c.certificate_id)
            )
            return [_row_cert(r) for r in conn.execute(q)]

    def list_principal_things(self, certificate_id: str) -> list[str]:
        tp = t.thing_principals.c
        with self._read() as conn:
            ident = self._resolve_cert(conn, certificate_id)
            return (
                conn.execute(sa.select(tp.thing_name).where(tp.certificate_id == ident).order_by(tp.thing_name))
                .scalars()
                .all()
            )

    # ------------------------------------------------------------------ bulk

    @staticmethod
    def _existing(conn: Connection, col: sa.Column, values: Sequence[str]) -> set[str]:
        """Which of `values` are in column `col`: one `= ANY(array)` on PostgreSQL, chunked IN on SQLite."""
        if not values:
            return set()
        if conn.dialect.name == "postgresql":
            array = sa.bindparam("values", list(values), type_=postgresql.ARRAY(sa.String))
            return set(conn.execute(sa.select(col).where(col == sa.any_(array))).scalars())
        found: set[str] = set()
        for i in range(0, len(values), _IN_CHUNK):
            chunk = values[i : i + _IN_CHUNK]
            found.update(conn.execute(sa.select(col).where(col.in_(chunk))).scalars())
        return found

    def existing_things(self, names: Iterable[str]) -> set[str]:
        """Which of `names` are registered things."""
        wanted = sorted({m.text_field(n, "thing name") for n in names})
        if not wanted:
            return set()
        with self._read() as conn:
            return self._existing(conn, t.things.c.name, wanted)

    def _bulk_insert(self, conn: Connection, table: sa.Table, rows: list[tuple]) -> None:
        """Insert many rows (tuples in the table's column order) through the driver's fastest path:
        COPY on PostgreSQL, executemany on SQLite. Values must already be in storage form."""
        if not rows:
            return
        cols = ", ".join(c.name for c in table.columns)
        dbapi = self._engine.dialect.loaded_dbapi
        cur = conn.connection.driver_connection.cursor()
        try:
            if self._backend == "postgresql":
                with cur.copy(f"COPY {table.name} ({cols}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                marks = ", ".join("?" * len(table.columns))
                cur.executemany(f"INSERT INTO {table.name} ({cols}) VALUES ({marks})", rows)
        except dbapi.IntegrityError as exc:
            raise Conflict(f"the registry refused the change: {_first_line(exc)}") from None
        except dbapi.OperationalError as exc:
            raise self._unreachable(exc) from None
        finally:
            cur.close()

    def _storage_datetime(self) -> Callable[[datetime | None], Any]:
        """Aware datetime -> the value the driver stores (memoized: a batch repeats a few values)."""
        if self._backend == "postgresql":
            return lambda value: value
        dialect = self._engine.dialect
        process = t.UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        cache: dict[datetime, Any] = {}

        def convert(value: datetime | None) -> Any:
            if value is None:
                return None
            out = cache.get(value)
            if out is None:
                out = cache[value] = process(value)
            return out

        return convert

    def provision_batch(self, items: Sequence[ProvisionItem]) -> None:
        """Register new things and their new certificates, attach each certificate to its thing and to its
        policies: one transaction, all or nothing. Everything is checked before anything is written."""
        items = list(items)
        if not items:
            return
        now = self._now()
        dt = self._storage_datetime()
        stored_now = dt(now)
        thing_rows: list[tuple] = []
        cert_rows: list[tuple] = []
        principal_rows: list[tuple] = []
        policy_rows: list[tuple] = []
        seen_things: set[str] = set()
        seen_certs: set[str] = set()
        policy_names: set[str] = set()
        ca_ids: set[str] = set()
        for n, it in enumerate(items):
            if not isinstance(it, ProvisionItem):
                raise InvalidValue(f"provision item #{n} is a {type(it).__name__}, not a ProvisionItem")
            try:
                thing = m.thing_name(it.thing)
                cid = m.hex_id(it.certificate_id, "certificate id")
                ca_id = None if it.ca_id is None else m.hex_id(it.ca_id, "CA id")
                not_before = m.aware(it.not_before, "not_before")
                not_after = m.aware(it.not_after, "not_after")
                status = m.status(it.status, m.CERTIFICATE_STATUSES, "certificate status")
                pols = tuple(dict.fromkeys(m.policy_name(p) for p in it.policies))
                attrs = _dump_attrs(m.attributes(it.attributes)) if it.attributes else "{}"
                thing_row = (thing, m.thing_type(it.thing_type), attrs, stored_now, 1)
                cert_row = (
                    cid,
                    m.text_field(it.pem, "certificate PEM"),
                    m.serial(it.serial_number),
                    m.text_field(it.subject_cn, "certificate subject CN"),
                    ca_id,
                    status,
                    dt(not_before),
                    dt(not_after),
                    stored_now,
                    stored_now if status == "REVOKED" else None,
                )
            except InvalidValue as exc:
                raise InvalidValue(f"provision item #{n} (thing {it.thing!r}): {exc}") from None
            if len(pols) > m.MAX_POLICIES_PER_CERTIFICATE:
                raise LimitExceeded(
                    f"provision item #{n} (thing {thing!r}) lists {len(pols)} policies, the most allowed per "
                    f"certificate is {m.MAX_POLICIES_PER_CERTIFICATE}"
                )
            if thing in seen_things:
                raise InvalidValue(f"thing {thing!r} appears twice in the batch (item #{n})")
            if cid in seen_certs:
                raise InvalidValue(f"certificate {cid} appears twice in the batch (item #{n})")
            if not_after < not_before:
                raise InvalidValue(f"provision item #{n} (thing {thing!r}): not_after is before not_before")
            seen_things.add(thing)
            seen_certs.add(cid)
            policy_names.update(pols)
            if ca_id is not None:
                ca_ids.add(ca_id)
            thing_rows.append(thing_row)
            cert_rows.append(cert_row)
            principal_rows.append((thing, cid))
            policy_rows.extend((cid, p) for p in pols)

        with self._write() as tx:
            conn = tx.conn
            missing = sorted(policy_names - self._existing(conn, t.policies.c.name, sorted(policy_names)))
            if missing:
                raise NotFound(f"policy {_ids([repr(p) for p in missing])} does not exist: create it first")
            missing = sorted(ca_ids - self._existing(conn, t.cas.c.ca_id, sorted(ca_ids)))
            if missing:
                raise NotFound(f"CA {_ids(missing)} is not registered: register it first")
            present = sorted(self._existing(conn, t.things.c.name, sorted(seen_things)))
            if present:
                raise AlreadyExists(
                    f"{len(present)} thing(s) of the batch already exist ({_ids([repr(p) for p in present])}); "
                    "leave them out of the batch"
                )
            present = sorted(self._existing(conn, t.certificates.c.certificate_id, sorted(seen_certs)))
            if present:
                raise AlreadyExists(
                    f"{len(present)} certificate(s) of the batch are already registered ({_ids(present)})"
                )
            self._bulk_insert(conn, t.things, thing_rows)
            self._bulk_insert(conn, t.certificates, cert_rows)
            self._bulk_insert(conn, t.thing_principals, principal_rows)
            self._bulk_insert(conn, t.certificate_policies, policy_rows)
            tx.note_many(ch.THING, seen_things)
            tx.note_many(ch.CERTIFICATE, seen_certs)
