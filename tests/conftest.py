"""Backends for the shared contract suite: an SQLite file, and a PostgreSQL database per test.

PostgreSQL tests use the server named by ``CLAWVM_TEST_POSTGRES_URL`` (an SQLAlchemy URL of a
role that may create databases, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``;
``.ci/run`` starts one and sets it). Unset, they are skipped with that reason; set but
unreachable, they fail: CI must never pass by skipping its second backend.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def unapply_to_committed(conn: Any) -> None:
    """What a crash between commit and apply leaves: every applied entry back to committed,
    its content back in journal_content, and nothing materialized.

    The content is worked out from the version each entry made: its whole text, or what it
    added to the version before; the one whose SHA-256 the entry holds is the content.
    """
    from clawvm_store.representations import text_sha256
    from clawvm_store.segments import whole_texts

    texts = whole_texts(conn, "full")
    rows = conn.exec_driver_sql(
        "SELECT j.lsn, j.payload, v.page_id, v.version FROM journal j "
        "JOIN page_versions v ON v.lsn = j.lsn WHERE j.state = 'applied' ORDER BY j.lsn"
    ).all()
    for lsn, payload, page_id, version in rows:
        digest = json.loads(payload).get("content_sha256")
        if digest is None:
            continue
        whole, before = texts[(page_id, version)], texts.get((page_id, version - 1))
        candidates = [whole]
        if before is not None and whole.startswith(before + "\n"):
            candidates.append(whole[len(before) + 1 :])
        found = [text for text in candidates if text_sha256(text) == digest]
        assert found, f"lsn {lsn}: no text of version {version} has the entry's content hash"
        conn.exec_driver_sql(
            "INSERT INTO journal_content (lsn, content) VALUES (?, ?)", (lsn, found[0])
        )
    conn.exec_driver_sql("DELETE FROM representations")
    conn.exec_driver_sql("DELETE FROM page_versions")
    conn.exec_driver_sql("DELETE FROM pages")
    conn.exec_driver_sql("UPDATE journal SET state = 'committed' WHERE state = 'applied'")


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
