"""Backends for the shared contract suite: an SQLite file, and a PostgreSQL database per test.

PostgreSQL tests use the server named by ``CLAWVM_TEST_POSTGRES_URL`` (an SQLAlchemy URL of a
role that may create databases, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``;
``.ci/run`` starts one and sets it). Unset, they are skipped with that reason; set but
unreachable, they fail: CI must never pass by skipping its second backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import clawvm_store as cvm

POSTGRES_ENV = "CLAWVM_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")


def postgres_admin_url() -> str | None:
    """The admin URL of the test server, or ``None`` when none is configured."""
    return os.environ.get(POSTGRES_ENV) or None


def admin_execute(admin_url: str, sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of a reachable PostgreSQL server (skip if unset, fail if unreachable)."""
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (set by .ci/run)")
    try:
        admin_execute(admin, "SELECT 1")
    except Exception as exc:  # any failure to reach it fails the run
        pytest.fail(f"{POSTGRES_ENV} is set but the server is unreachable: {exc}")
    return admin


def new_postgres_database(admin_url: str) -> tuple[str, str]:
    """Create an empty database on the test server; returns (its URL, its name)."""
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex}"
    admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name)
    return url.render_as_string(hide_password=False), name


def drop_postgres_database(admin_url: str, name: str) -> None:
    """Drop a test database, disconnecting whoever is still in it."""
    admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    url, name = new_postgres_database(postgres_server)
    try:
        yield url
    finally:
        drop_postgres_database(postgres_server, name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend a contract test runs against: ``sqlite`` or ``postgresql``."""
    return str(request.param)


@pytest.fixture
def db_target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """What ``Store.open`` gets for this backend: a file path, or a fresh PostgreSQL URL."""
    if backend == "sqlite":
        return str(tmp_path / "store.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db_path(backend: str, db_target: str) -> Path:
    """The SQLite file, for tests that look at or damage the file itself (SQLite only)."""
    if backend != "sqlite":
        pytest.skip("inspects or damages the SQLite file itself")
    return Path(db_target)


@pytest.fixture
def store(db_target: str) -> Iterator[cvm.Store]:
    """A store on this test's backend (a module may define its own ``store`` instead)."""
    with cvm.Store.open(db_target) as opened:
        yield opened


def run_alembic(target: str | Path, action: str, revision: str) -> None:
    """``alembic upgrade|downgrade <revision>`` through the library's own engine settings.

    On SQLite, as ``Database.migrate`` does: foreign keys off and legacy ALTER semantics, so a
    batch-mode rebuild can drop a table that others refer to.
    """
    from alembic import command

    from clawvm_store.db import Database

    db = Database(target)
    try:
        config = db._alembic_config()
        with db.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                driver = conn.connection.dbapi_connection
                assert driver is not None
                driver.execute("PRAGMA foreign_keys = OFF")
                driver.execute("PRAGMA legacy_alter_table = ON")
            config.attributes["connection"] = conn
            getattr(command, action)(config, revision)
    finally:
        db.dispose()
