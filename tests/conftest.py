"""Shared fixtures.

Registry: `registry` (and `registry_url`) run a test on SQLite and on PostgreSQL. PostgreSQL is the server at
$IOTGATE_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test); each test gets a fresh schema,
dropped afterwards. When that server does not answer, the postgres tests fail (they never skip).
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import settings

# CI runs the same examples every time (a failure reproduces); both profiles drop the per-example deadline,
# which only measures how busy the machine is.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

PG_DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
_pg_state: dict[str, object] = {}


def _pg_base_url() -> str:
    return os.environ.get("IOTGATE_TEST_POSTGRES", PG_DEFAULT_URL)


def _pg_admin():
    """One autocommit psycopg connection for the session (creates/drops test schemas), or pytest.fail."""
    if "conn" not in _pg_state and "error" not in _pg_state:
        import psycopg

        url = _pg_base_url().replace("postgresql+psycopg://", "postgresql://", 1)
        try:
            _pg_state["conn"] = psycopg.connect(url, autocommit=True, connect_timeout=3)
        except psycopg.Error as exc:
            _pg_state["error"] = str(exc).strip().splitlines()[0]
    if "error" in _pg_state:
        from sqlalchemy.engine import make_url

        shown = make_url(_pg_base_url()).render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL for the tests does not answer at {shown} ({_pg_state['error']}). Start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, "
            "or set IOTGATE_TEST_POSTGRES to a server you can use.",
            pytrace=False,
        )
    return _pg_state["conn"]


def pytest_sessionfinish(session, exitstatus):
    conn = _pg_state.pop("conn", None)
    if conn is not None:
        conn.close()


@pytest.fixture
def postgres_url():
    """URL of a fresh, empty PostgreSQL schema (`?schema=...`), dropped after the test."""
    from sqlalchemy.engine import make_url

    admin = _pg_admin()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    url = make_url(_pg_base_url()).update_query_dict({"schema": schema})
    yield url.render_as_string(hide_password=False)
    admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry_url(request, tmp_path):
    """URL of an empty registry: an SQLite file in tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def registry(registry_url):
    """An open gateway.registry.Registry on each backend."""
    from gateway.registry import Registry

    reg = Registry.open(registry_url)
    yield reg
    reg.close()
