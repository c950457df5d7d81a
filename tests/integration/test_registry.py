"""Registry on SQLite and PostgreSQL: every method, status rules, limits, change counter, snapshot, bulk."""

from __future__ import annotations

import hashlib
import logging
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest

from certs.errors import IotgateError
from gateway.registry import (
    CA,
    AlreadyExists,
    Certificate,
    Conflict,
    InvalidTransition,
    InvalidValue,
    LimitExceeded,
    NotFound,
    Policy,
    PolicyVersion,
    ProvisionItem,
    Registry,
    RegistryError,
    Snapshot,
    Thing,
    sqlite_url,
)

UTC = timezone.utc
NB = datetime(2025, 1, 1, tzinfo=UTC)
NA = datetime(2027, 1, 1, tzinfo=UTC)
DOC = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}'


def cid(n: int | str) -> str:
    return hashlib.sha256(f"cert-{n}".encode()).hexdigest()


def caid(n: int = 0) -> str:
    return hashlib.sha256(f"ca-{n}".encode()).hexdigest()


def add_ca(reg: Registry, n: int = 0, **kw) -> CA:
    return reg.register_ca(caid(n), f"-----BEGIN CERTIFICATE-----\nCA{n}\n", f"CN=Test CA {n}", **kw)


def add_cert(reg: Registry, n: int | str, ca: int | None = 0, **kw) -> Certificate:
    return reg.register_certificate(
        cid(n), f"PEM-{n}", "0a1b", f"device-{n}", None if ca is None else caid(ca), NB, NA, **kw
    )


@contextmanager
def bumps(reg: Registry, n: int = 1):
    """Assert the change counter moved by exactly n over the block."""
    before = reg.change_counter()
    yield
    assert reg.change_counter() - before == n


class FixedClock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


# ---------------------------------------------------------------------------------------- open / URLs


def test_open_creates_and_reopens(registry_url):
    with Registry.open(registry_url) as reg:
        assert reg.change_counter() == 0
        reg.create_thing("a")
    with Registry.open(registry_url, create=False) as reg:
        assert reg.get_thing("a").name == "a"
        assert reg.change_counter() == 1
    reg.close()  # closing twice is fine
    with pytest.raises(RegistryError, match="closed"):
        reg.change_counter()


def test_open_without_create_refuses_missing_sqlite_file(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        Registry.open(sqlite_url(tmp_path / "none" / "registry.db"), create=False)
    assert not (tmp_path / "none").exists()


@pytest.mark.postgres
def test_open_without_create_refuses_missing_postgres_schema(postgres_url):
    with pytest.raises(RegistryError, match="no registry at .*create it first"):
        Registry.open(postgres_url, create=False)


def test_unusable_sqlite_file(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError, match="junk.db: file is not a database"):
        Registry.open(sqlite_url(tmp_path / "junk.db"))
    with pytest.raises(RegistryError, match="cannot use the registry at .*unable to open database file"):
        Registry.open(sqlite_url(tmp_path))  # a directory


def test_sqlite_pragmas(tmp_path):
    with Registry.open(sqlite_url(tmp_path / "home" / "registry.db")) as reg:
        with reg._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    assert (tmp_path / "home" / "registry.db").exists()


def test_sqlite_in_memory():
    with Registry.open("sqlite://") as reg:
        reg.create_thing("m")
        assert reg.count_things() == 1


def test_unreachable_postgres_names_url_masks_password():
    with pytest.raises(RegistryError) as ei:
        Registry.open("postgresql://iot:s3cret@127.0.0.1:1/fleet")
    msg = str(ei.value)
    assert "s3cret" not in msg
    assert "postgresql+psycopg" not in msg
    assert "iot:***@127.0.0.1:1/fleet" in msg
    assert "PostgreSQL is running" in msg
    assert isinstance(ei.value, IotgateError)


@pytest.mark.parametrize(
    "url, match",
    [
        ("mysql://u@h/db", "not supported"),
        ("postgresql+psycopg2://u@h/db", "psycopg 3"),
        ("sqlite+aiosqlite:///x.db", "standard sqlite3 driver"),
        ("", "empty"),
        ("::::", "not valid"),
        ("sqlite:///x.db?schema=a", "PostgreSQL only"),
        ("postgresql://u@h/db?schema=Bad-Name", "schema 'Bad-Name' is not valid"),
    ],
)
def test_bad_urls(url, match):
    with pytest.raises(InvalidValue, match=match):
        Registry.open(url)


@pytest.mark.postgres
def test_postgres_url_forms_and_schema_keyword(postgres_url):
    base, schema = postgres_url.split("?schema=")
    with Registry.open(base.replace("postgresql://", "postgresql+psycopg://", 1), schema=schema) as reg:
        reg.create_thing("kw")
        assert reg.backend == "postgresql"
    with Registry.open(postgres_url, create=False) as reg:
        assert reg.get_thing("kw").name == "kw"
    with pytest.raises(InvalidValue, match="names schema"):
        Registry.open(postgres_url, schema="other")


@pytest.mark.postgres
def test_postgres_notify_in_mutation_transaction(postgres_url):
    import psycopg

    base, schema = postgres_url.split("?schema=")
    with Registry.open(postgres_url) as reg, psycopg.connect(base, autocommit=True) as listener:
        listener.execute("LISTEN iotgate_registry")
        reg.create_thing("n1")
        with pytest.raises(NotFound):
            reg.delete_thing("nope")  # failed mutation: rolled back, no notification
        reg.create_thing("n2")
        got = [n.payload for n in listener.notifies(timeout=2, stop_after=2)]
        assert got == ["1", "2"]
        assert reg.change_counter() == 2


# ---------------------------------------------------------------------------------------- things


def test_things_crud(registry):
    with bumps(registry):
        t = registry.create_thing("sensor-1", "Thermo", {"room": "k1", "floor": "2"})
    assert t == Thing("sensor-1", "Thermo", {"room": "k1", "floor": "2"}, t.created_at, 1)
    assert t.created_at.tzinfo is not None and t.created_at.utcoffset() == timedelta(0)
    assert registry.get_thing("sensor-1") == t
    with pytest.raises(AlreadyExists, match="sensor-1"), bumps(registry, 0):
        registry.create_thing("sensor-1")
    with bumps(registry):
        u = registry.update_thing("sensor-1", attributes={"room": "k2"})
    assert (u.thing_type, u.attributes, u.version) == ("Thermo", {"room": "k2"}, 2)
    with bumps(registry):
        u = registry.update_thing("sensor-1", thing_type=None)
    assert (u.thing_type, u.version) == (None, 3)
    with bumps(registry, 0):
        assert registry.update_thing("sensor-1", attributes={"room": "k2"}) == u  # no change
        assert registry.update_thing("sensor-1") == u
    assert registry.get_thing("sensor-1") == u
    with bumps(registry):
        registry.delete_thing("sensor-1")
    with pytest.raises(NotFound, match="sensor-1"):
        registry.get_thing("sensor-1")
    with pytest.raises(NotFound):
        registry.update_thing("sensor-1", thing_type="X")
    with pytest.raises(NotFound):
        registry.delete_thing("sensor-1")


def test_list_and_count_things(registry):
    for name in ["b_1", "a", "bx1", "b_2", "c"]:
        registry.create_thing(name)
    assert registry.count_things() == 5
    assert [t.name for t in registry.list_things()] == ["a", "b_1", "b_2", "bx1", "c"]
    assert [t.name for t in registry.list_things(prefix="b_")] == ["b_1", "b_2"]  # '_' is not a wildcard
    assert [t.name for t in registry.list_things(limit=2, offset=1)] == ["b_1", "b_2"]
    assert [t.name for t in registry.list_things(offset=4)] == ["c"]
    with pytest.raises(InvalidValue, match="limit"):
        registry.list_things(limit=-1)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": "bad name"}, "thing name"),
        ({"name": ""}, "thing name"),
        ({"name": "x" * 129}, "thing name"),
        ({"name": "ok", "thing_type": "bad type"}, "thing type"),
        ({"name": "ok", "attributes": {"bad key": "v"}}, "attribute name"),
        ({"name": "ok", "attributes": {"k": 5}}, "attribute 'k'"),
        ({"name": "ok", "attributes": ["k"]}, "attributes"),
    ],
)
def test_thing_validation_names_field(registry, kwargs, field):
    with pytest.raises(InvalidValue, match=field), bumps(registry, 0):
        registry.create_thing(**kwargs)
    assert issubclass(InvalidValue, RegistryError)


def test_delete_thing_refused_while_principal_attached(registry):
    add_ca(registry)
    add_cert(registry, 1)
    registry.create_thing("t")
    registry.attach_thing_principal("t", cid(1))
    with pytest.raises(Conflict, match=f"thing 't' still has 1 certificate.*{cid(1)}.*detach"), bumps(registry, 0):
        registry.delete_thing("t")
    registry.detach_thing_principal("t", cid(1))
    registry.delete_thing("t")
    assert registry.count_things() == 0


# ---------------------------------------------------------------------------------------- CAs


def test_cas(registry):
    with bumps(registry):
        ca = add_ca(registry, auto_registration=True, is_own=True)
    assert ca == CA(caid(), ca.pem, "CN=Test CA 0", "ACTIVE", True, True, ca.created_at)
    assert registry.get_ca(caid()) == ca
    assert registry.get_ca(caid()[:10].upper()) == ca  # prefix, any case
    ca1 = add_ca(registry, 1, status="INACTIVE")
    assert (ca1.status, ca1.is_own, ca1.auto_registration) == ("INACTIVE", False, False)
    assert {c.ca_id for c in registry.list_cas()} == {caid(0), caid(1)}
    with pytest.raises(AlreadyExists):
        add_ca(registry)
    with bumps(registry):
        assert registry.set_ca_status(caid(), "inactive").status == "INACTIVE"
    with bumps(registry, 0):
        assert registry.set_ca_status(caid(), "INACTIVE").status == "INACTIVE"
    assert registry.get_ca(caid()).status == "INACTIVE"
    with pytest.raises(InvalidValue, match="CA status 'REVOKED'"):
        registry.set_ca_status(caid(), "REVOKED")
    with pytest.raises(InvalidValue, match="CA id"):
        registry.register_ca("xyz", "pem", "CN=x")
    with pytest.raises(NotFound):
        registry.get_ca(caid(9))


# ---------------------------------------------------------------------------------------- certificates


def test_register_and_get_certificate(registry):
    add_ca(registry)
    with bumps(registry):
        c = registry.register_certificate(cid(1).upper(), "PEM", "00:0A:1B", "dev-1", caid(), NB, NA)
    assert c == Certificate(cid(1), "PEM", "a1b", "dev-1", caid(), "ACTIVE", NB, NA, c.created_at, None)
    assert registry.get_certificate(cid(1)) == c
    assert registry.get_certificate(cid(1)[:8]) == c
    orphan = registry.register_certificate(cid(2), "PEM", "ff", "jitr", None, NB, NA, status="PENDING_ACTIVATION")
    assert (orphan.ca_id, orphan.status) == (None, "PENDING_ACTIVATION")
    with pytest.raises(AlreadyExists), bumps(registry, 0):
        add_cert(registry, 1)
    with pytest.raises(NotFound, match="register the CA first"), bumps(registry, 0):
        add_cert(registry, 3, ca=7)
    with pytest.raises(InvalidValue, match="certificate id"):
        registry.register_certificate("abc", "PEM", "1", "x", None, NB, NA)
    with pytest.raises(InvalidValue, match="serial number"):
        registry.register_certificate(cid(4), "PEM", "xyz", "x", None, NB, NA)
    with pytest.raises(InvalidValue, match="not_after .* is before"):
        registry.register_certificate(cid(4), "PEM", "1", "x", None, NA, NB)
    with pytest.raises(InvalidValue, match="no time zone"):
        registry.register_certificate(cid(4), "PEM", "1", "x", None, datetime(2025, 1, 1), NA)
    with pytest.raises(InvalidValue, match="certificate status"):
        add_cert(registry, 4, status="GONE")


def test_certificate_prefix_lookup(registry):
    # two ids sharing a 10-character prefix
    a = "abcdef0123" + "0" * 54
    b = "abcdef0123" + "1" * 54
    for x in (a, b):
        registry.register_certificate(x, "PEM", "1", "x", None, NB, NA)
    assert registry.get_certificate("ABCDEF01230").certificate_id == a
    assert registry.get_certificate(b[:11]).certificate_id == b
    with pytest.raises(Conflict, match="ambiguous.*type more"):
        registry.get_certificate("abcdef01")
    with pytest.raises(InvalidValue, match="at least 8"):
        registry.get_certificate("abcdef0")
    with pytest.raises(NotFound, match="no certificate id starts with 12345678"):
        registry.get_certificate("12345678")
    # prefixes work wherever a certificate id is taken
    registry.create_policy("p", DOC)
    registry.attach_policy("p", a[:11])
    assert registry.list_policy_targets("p") == [a]
    with pytest.raises(Conflict, match="ambiguous"):
        registry.set_certificate_status("abcdef0123", "REVOKED")


def test_certificate_status_rules(registry, caplog):
    add_ca(registry)
    add_cert(registry, 1)
    with bumps(registry):
        assert registry.set_certificate_status(cid(1), "INACTIVE").status == "INACTIVE"
    with bumps(registry, 0):
        registry.set_certificate_status(cid(1), "INACTIVE")
    registry.set_certificate_status(cid(1), "ACTIVE")
    with pytest.raises(InvalidTransition, match="PENDING_ACTIVATION"), bumps(registry, 0):
        registry.set_certificate_status(cid(1), "PENDING_ACTIVATION")
    with bumps(registry):
        r = registry.set_certificate_status(cid(1), "revoked")
    assert r.status == "REVOKED" and r.revoked_at is not None
    for status in ("ACTIVE", "INACTIVE", "PENDING_ACTIVATION"):
        with pytest.raises(InvalidTransition, match="REVOKED, and revocation is final"), bumps(registry, 0):
            registry.set_certificate_status(cid(1), status)
    assert registry.set_certificate_status(cid(1), "REVOKED") == r  # already revoked: no change
    assert registry.get_certificate(cid(1)) == r

    pending = add_cert(registry, 2, status="PENDING_ACTIVATION")
    assert pending.status == "PENDING_ACTIVATION"
    assert registry.set_certificate_status(cid(2), "ACTIVE").status == "ACTIVE"

    # activating under an INACTIVE CA is allowed, and noted
    registry.set_ca_status(caid(), "INACTIVE")
    registry.set_certificate_status(cid(2), "INACTIVE")
    with caplog.at_level(logging.WARNING, logger="gateway.registry"):
        assert registry.set_certificate_status(cid(2), "ACTIVE").status == "ACTIVE"
    assert "CA" in caplog.text and "INACTIVE" in caplog.text and cid(2) in caplog.text


def test_list_certificates_filters(registry_url):
    clock = FixedClock(datetime(2025, 6, 1, tzinfo=UTC))
    with Registry.open(registry_url, clock=clock) as reg:
        add_ca(reg, 0)
        add_ca(reg, 1)
        for n in range(6):
            clock.now += timedelta(seconds=1)
            reg.register_certificate(cid(n), "PEM", f"{n + 1:x}", f"d{n}", caid(n % 2), NB, NA + timedelta(days=n))
        reg.set_certificate_status(cid(3), "INACTIVE")
        reg.create_thing("t")
        reg.attach_thing_principal("t", cid(4))
        reg.attach_thing_principal("t", cid(2))

        def ids(**kw):
            return [c.certificate_id for c in reg.list_certificates(**kw)]

        assert ids() == [cid(n) for n in range(6)]
        assert ids(status="INACTIVE") == [cid(3)]
        assert ids(ca_id=caid(1)) == [cid(1), cid(3), cid(5)]
        assert ids(ca_id=caid(1)[:8], status="ACTIVE") == [cid(1), cid(5)]
        assert ids(thing="t") == [cid(2), cid(4)]
        assert ids(expiring_before=NA + timedelta(days=2)) == [cid(0), cid(1)]
        assert ids(limit=2, offset=3) == [cid(3), cid(4)]
        assert ids(thing="nobody") == []
        with pytest.raises(InvalidValue, match="expiring_before"):
            reg.list_certificates(expiring_before=datetime(2026, 1, 1))


def test_revoked_serials_and_fixed_clock(registry_url):
    clock = FixedClock(datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))))
    with Registry.open(registry_url, clock=clock) as reg:
        add_ca(reg, 0)
        add_ca(reg, 1)
        c = reg.register_certificate(cid(1), "PEM", "0x00FF", "a", caid(0), NB, NA)
        assert c.created_at == datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
        assert c.created_at.tzinfo == UTC
        reg.register_certificate(cid(2), "PEM", "10", "b", caid(0), NB, NA)
        reg.register_certificate(cid(3), "PEM", "11", "c", caid(1), NB, NA)
        reg.register_certificate(cid(4), "PEM", "12", "d", caid(0), NB, NA)
        clock.now = datetime(2025, 4, 1, tzinfo=UTC)
        reg.set_certificate_status(cid(2), "REVOKED")
        clock.now = datetime(2025, 5, 1, tzinfo=UTC)
        reg.set_certificate_status(cid(1), "REVOKED")
        reg.set_certificate_status(cid(3), "REVOKED")
        reg.set_certificate_status(cid(4), "INACTIVE")
        assert reg.revoked_serials(caid(0)) == [
            ("10", datetime(2025, 4, 1, tzinfo=UTC)),
            ("ff", datetime(2025, 5, 1, tzinfo=UTC)),
        ]
        assert reg.revoked_serials(caid(1)) == [("11", datetime(2025, 5, 1, tzinfo=UTC))]
        assert reg.get_certificate(cid(1)).revoked_at == datetime(2025, 5, 1, tzinfo=UTC)
        with pytest.raises(NotFound):
            reg.revoked_serials(caid(5))


# ---------------------------------------------------------------------------------------- policies


def test_policies_and_versions(registry):
    doc1 = '{\n  "Version": "2012-10-17",  "Statement": []\n}  '  # stored verbatim
    with bumps(registry):
        p = registry.create_policy("dev.policy+1@x=y,z", doc1)
    assert p == Policy("dev.policy+1@x=y,z", 1, doc1, p.created_at)
    assert registry.get_policy(p.name) == p
    with pytest.raises(AlreadyExists):
        registry.create_policy(p.name, DOC)
    with pytest.raises(InvalidValue, match="policy name"):
        registry.create_policy("bad/name", DOC)
    with pytest.raises(InvalidValue, match="policy name"):
        registry.create_policy("é", DOC)

    with bumps(registry):
        v2 = registry.create_policy_version(p.name, "doc2")
    assert v2 == PolicyVersion(p.name, 2, "doc2", False, v2.created_at)
    assert registry.get_policy(p.name).document == doc1
    v3 = registry.create_policy_version(p.name, "doc3", set_as_default=True)
    assert v3.is_default and registry.get_policy(p.name).document == "doc3"
    registry.create_policy_version(p.name, "doc4")
    registry.create_policy_version(p.name, "doc5")
    with pytest.raises(LimitExceeded, match="5 versions.*delete one"), bumps(registry, 0):
        registry.create_policy_version(p.name, "doc6")
    assert [(v.version_id, v.is_default) for v in registry.list_policy_versions(p.name)] == [
        (1, False), (2, False), (3, True), (4, False), (5, False)
    ]
    assert registry.get_policy_version(p.name, "4").document == "doc4"
    with pytest.raises(Conflict, match="default version .* cannot be deleted"), bumps(registry, 0):
        registry.delete_policy_version(p.name, 3)
    with bumps(registry):
        registry.delete_policy_version(p.name, 5)
    with pytest.raises(NotFound, match="no version 5"):
        registry.get_policy_version(p.name, 5)
    assert registry.create_policy_version(p.name, "doc6").version_id == 6  # ids are never reused
    with bumps(registry):
        assert registry.set_default_policy_version(p.name, 1) == Policy(p.name, 1, doc1, p.created_at)
    with bumps(registry, 0):
        registry.set_default_policy_version(p.name, 1)
    with pytest.raises(NotFound):
        registry.set_default_policy_version(p.name, 42)
    with pytest.raises(InvalidValue, match="version id"):
        registry.get_policy_version(p.name, 0)

    registry.create_policy("a", DOC)
    assert [x.name for x in registry.list_policies()] == ["a", p.name]
    with bumps(registry):
        registry.delete_policy(p.name)  # versions go with it
    with pytest.raises(NotFound):
        registry.get_policy(p.name)
    with pytest.raises(NotFound):
        registry.list_policy_versions(p.name)
    registry.create_policy(p.name, DOC)  # the name is free again
    assert [v.version_id for v in registry.list_policy_versions(p.name)] == [1]


def test_policy_attachments_and_limits(registry):
    add_ca(registry)
    add_cert(registry, 1)
    add_cert(registry, 2)
    for i in range(11):
        registry.create_policy(f"p{i:02d}", DOC)
    with bumps(registry):
        registry.attach_policy("p00", cid(1))
    with bumps(registry, 0):
        registry.attach_policy("p00", cid(1))  # already attached: no change
    registry.attach_policy("p00", cid(2))
    for i in range(1, 10):
        registry.attach_policy(f"p{i:02d}", cid(1))
    with pytest.raises(LimitExceeded, match="already has 10 policies"), bumps(registry, 0):
        registry.attach_policy("p10", cid(1))
    registry.attach_policy("p00", cid(1))  # re-attaching at the limit is still a no-op
    assert [p.name for p in registry.list_attached_policies(cid(1))] == [f"p{i:02d}" for i in range(10)]
    assert registry.list_attached_policies(cid(1))[0].document == DOC
    assert registry.list_policy_targets("p00") == sorted([cid(1), cid(2)])
    assert registry.list_policy_targets("p10") == []

    with pytest.raises(Conflict, match="attached to 2 certificate.*detach") as ei, bumps(registry, 0):
        registry.delete_policy("p00")
    assert cid(1) in str(ei.value) and cid(2) in str(ei.value)
    with bumps(registry):
        registry.detach_policy("p00", cid(1))
    with pytest.raises(NotFound, match="not attached"), bumps(registry, 0):
        registry.detach_policy("p00", cid(1))
    registry.attach_policy("p10", cid(1))
    with pytest.raises(NotFound, match="policy 'nope'"):
        registry.attach_policy("nope", cid(1))
    with pytest.raises(NotFound, match="certificate"):
        registry.attach_policy("p10", cid(99))
    with pytest.raises(NotFound):
        registry.list_policy_targets("nope")
    with pytest.raises(NotFound):
        registry.list_attached_policies(cid(99))


def test_thing_principals(registry):
    add_ca(registry)
    add_cert(registry, 1)
    add_cert(registry, 2)
    registry.create_thing("t1")
    registry.create_thing("t2")
    with bumps(registry):
        registry.attach_thing_principal("t1", cid(1))
    with bumps(registry, 0):
        registry.attach_thing_principal("t1", cid(1))
    registry.attach_thing_principal("t1", cid(2)[:12])
    registry.attach_thing_principal("t2", cid(1))
    assert [c.certificate_id for c in registry.list_thing_principals("t1")] == [cid(1), cid(2)]
    assert registry.list_thing_principals("t1")[0] == registry.get_certificate(cid(1))
    assert registry.list_principal_things(cid(1)) == ["t1", "t2"]
    with bumps(registry):
        registry.detach_thing_principal("t1", cid(1))
    with pytest.raises(NotFound, match="not attached"), bumps(registry, 0):
        registry.detach_thing_principal("t1", cid(1))
    assert registry.list_principal_things(cid(1)) == ["t2"]
    with pytest.raises(NotFound, match="thing 'zz'"):
        registry.attach_thing_principal("zz", cid(1))
    with pytest.raises(NotFound):
        registry.list_thing_principals("zz")
    with pytest.raises(NotFound):
        registry.list_principal_things(cid(99))


# ---------------------------------------------------------------------------------------- counter


def test_counter_moves_on_every_mutation_only(registry):
    def step(expect, fn, *args, **kw):
        before = registry.change_counter()
        fn(*args, **kw)
        assert registry.change_counter() == before + expect, fn.__name__

    step(1, registry.register_ca, caid(), "pem", "CN=ca")
    step(1, registry.set_ca_status, caid(), "INACTIVE")
    step(1, registry.register_certificate, cid(1), "pem", "1", "d", caid(), NB, NA)
    step(1, registry.set_certificate_status, cid(1), "INACTIVE")
    step(1, registry.create_thing, "t")
    step(1, registry.update_thing, "t", thing_type="T")
    step(1, registry.attach_thing_principal, "t", cid(1))
    step(1, registry.detach_thing_principal, "t", cid(1))
    step(1, registry.create_policy, "p", DOC)
    step(1, registry.create_policy_version, "p", "v2")
    step(1, registry.set_default_policy_version, "p", 2)
    step(1, registry.delete_policy_version, "p", 1)
    step(1, registry.attach_policy, "p", cid(1))
    step(1, registry.detach_policy, "p", cid(1))
    step(1, registry.delete_policy, "p")
    step(1, registry.delete_thing, "t")
    step(1, registry.provision_batch, [_item(50)])
    step(0, registry.provision_batch, [])
    # reads never move it
    for read in (
        registry.snapshot,
        registry.list_cas,
        registry.list_things,
        registry.count_things,
        registry.list_policies,
        registry.list_certificates,
        lambda: registry.get_certificate(cid(1)),
        lambda: registry.get_ca(caid()),
        lambda: registry.revoked_serials(caid()),
        lambda: registry.existing_things(["t", "thing-50"]),
        lambda: registry.list_principal_things(cid(1)),
    ):
        step(0, read)
    assert registry.change_counter() == 17


# ---------------------------------------------------------------------------------------- snapshot


def test_snapshot_contents(registry):
    empty = registry.snapshot()
    assert empty == Snapshot(0, {}, {}, {}, {}, {}, {})
    ca = add_ca(registry)
    c1 = add_cert(registry, 1)
    c2 = add_cert(registry, 2, ca=None, status="INACTIVE")
    t = registry.create_thing("t", attributes={"k": "v"})
    registry.create_policy("p", DOC)
    registry.create_policy_version("p", "v2", set_as_default=True)
    registry.create_policy("q", DOC)
    registry.attach_policy("q", cid(1))
    registry.attach_policy("p", cid(1))
    registry.attach_thing_principal("t", cid(1))
    snap = registry.snapshot()
    assert snap.counter == registry.change_counter() == 10
    assert snap.things == {"t": t}
    assert snap.cas == {ca.ca_id: ca}
    assert snap.certificates == {cid(1): c1, cid(2): c2}
    assert snap.policies["p"].document == "v2" and snap.policies["p"].default_version_id == 2
    assert set(snap.policies) == {"p", "q"}
    assert snap.cert_policies == {cid(1): ("p", "q")}
    assert snap.cert_things == {cid(1): ("t",)}
    lean = registry.snapshot(certificate_pem=False)
    assert lean.certificates[cid(1)].pem == "" and lean.certificates[cid(1)].status == "ACTIVE"


# ---------------------------------------------------------------------------------------- bulk


def _item(n: int, policies=(), **kw) -> ProvisionItem:
    return ProvisionItem(
        thing=f"thing-{n}",
        certificate_id=cid(n),
        pem=f"PEM-{n}",
        serial_number=f"{n + 1:x}",
        subject_cn=f"thing-{n}",
        ca_id=caid(),
        not_before=NB,
        not_after=NA,
        policies=tuple(policies),
        **kw,
    )


def test_existing_things_chunks(registry):
    names = [f"thing-{n}" for n in range(1200)]
    registry.register_ca(caid(), "pem", "CN=ca")
    registry.provision_batch([_item(n) for n in range(0, 1200, 2)])
    assert registry.existing_things(names) == set(names[::2])
    assert registry.existing_things(iter(["thing-0", "nope", "bad name"])) == {"thing-0"}
    assert registry.existing_things([]) == set()


def test_provision_batch(registry):
    add_ca(registry)
    registry.create_policy("telemetry", DOC)
    registry.create_policy("shadow", DOC)
    items = [_item(n, ("telemetry", "shadow"), thing_type="Sensor", attributes={"n": str(n)}) for n in range(300)]
    items.append(_item(300, ()))
    with bumps(registry):
        registry.provision_batch(items)
    assert registry.count_things() == 301
    t = registry.get_thing("thing-7")
    assert (t.thing_type, t.attributes, t.version) == ("Sensor", {"n": "7"}, 1)
    c = registry.get_certificate(cid(7))
    assert (c.status, c.ca_id, c.serial_number, c.subject_cn, c.not_after) == ("ACTIVE", caid(), "8", "thing-7", NA)
    assert registry.list_principal_things(cid(7)) == ["thing-7"]
    assert [p.name for p in registry.list_attached_policies(cid(7))] == ["shadow", "telemetry"]
    assert registry.list_attached_policies(cid(300)) == []
    assert len(registry.list_policy_targets("telemetry")) == 300
    snap = registry.snapshot()
    assert len(snap.certificates) == 301 and snap.cert_things[cid(0)] == ("thing-0",)


def _bad_item(kind: str) -> ProvisionItem:
    return {
        "unknown policy": lambda: _item(5, ("telemetry", "missing-policy")),
        "existing thing": lambda: ProvisionItem("thing-900", cid(5), "p", "1", "c", caid(), NB, NA, ()),
        "existing certificate": lambda: ProvisionItem("thing-5", cid(901), "p", "1", "c", caid(), NB, NA, ()),
        "unknown CA": lambda: ProvisionItem("thing-5", cid(5), "p", "1", "c", caid(77), NB, NA, ()),
        "twice in batch": lambda: _item(4),
        "11 policies": lambda: _item(5, tuple(f"x{i}" for i in range(11))),
        "bad thing name": lambda: ProvisionItem("bad name", cid(5), "p", "1", "c", None, NB, NA, ()),
    }[kind]()


@pytest.mark.parametrize(
    "kind, error, match",
    [
        ("unknown policy", NotFound, "'missing-policy' does not exist"),
        ("existing thing", AlreadyExists, "already exist.*'thing-900'"),
        ("existing certificate", AlreadyExists, "already registered"),
        ("unknown CA", NotFound, "CA .* is not registered"),
        ("twice in batch", InvalidValue, "appears twice"),
        ("11 policies", LimitExceeded, "11 policies"),
        ("bad thing name", InvalidValue, "item #5 .*thing name"),
    ],
)
def test_provision_batch_all_or_nothing(registry, kind, error, match):
    add_ca(registry)
    registry.create_policy("telemetry", DOC)
    registry.create_thing("thing-900")
    add_cert(registry, 901)
    items = [_item(n, ("telemetry",)) for n in range(5)] + [_bad_item(kind)]
    before = registry.snapshot()
    with pytest.raises(error, match=match):
        registry.provision_batch(items)
    assert registry.snapshot() == before


def test_provision_batch_rolls_back_a_failure_in_the_database(registry, monkeypatch):
    """If the database itself refuses a row after others were inserted, nothing stays written."""
    add_ca(registry)
    add_cert(registry, 3)
    real = Registry._existing

    def existing(conn, col, values):  # skip the pre-checks of things and certificates
        return set() if col.table.name in ("things", "certificates") else real(conn, col, values)

    monkeypatch.setattr(Registry, "_existing", staticmethod(existing))
    before = registry.snapshot()
    with pytest.raises(Conflict, match="refused"):
        registry.provision_batch([_item(n) for n in range(5)])  # cid(3) already registered
    assert registry.snapshot() == before
    assert registry.count_things() == 0


# ---------------------------------------------------------------------------------------- concurrency


def test_concurrent_writers_keep_counter_exact(registry_url):
    """Two Registry objects on the same database (two engines, own pools), writing at once."""
    n = 40
    with Registry.open(registry_url) as a, Registry.open(registry_url) as b:
        a.register_ca(caid(), "pem", "CN=ca")
        a.register_certificate(cid("shared"), "pem", "1", "x", caid(), NB, NA)
        for i in range(16):
            a.create_policy(f"p{i}", DOC)
        start = a.change_counter()
        errors: list[BaseException] = []
        limited: list[int] = []
        barrier = threading.Barrier(2)

        def work(reg: Registry, side: str) -> None:
            try:
                barrier.wait()
                for i in range(n):
                    reg.create_thing(f"{side}-{i}")
                    reg.update_thing(f"{side}-{i}", attributes={"i": str(i)})
                for i in range(8):  # both race for the 10 policy slots of one certificate
                    try:
                        reg.attach_policy(f"p{i + (8 if side == 'b' else 0)}", cid("shared"))
                    except LimitExceeded:
                        limited.append(i)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(r, s)) for r, s in ((a, "a"), (b, "b"))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert len(limited) == 6
        assert a.count_things() == 2 * n
        assert len(b.list_attached_policies(cid("shared"))) == 10
        assert a.change_counter() == b.change_counter() == start + 4 * n + 10
        assert b.snapshot().counter == start + 4 * n + 10
