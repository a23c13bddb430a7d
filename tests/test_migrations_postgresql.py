"""The same Alembic revisions on PostgreSQL: from blank, from every earlier revision, and back.

The SQLite file-level migration tests (byte-identical files, failing revisions rolled back,
foreign tables refused) live in test_migrations.py; these check what differs on PostgreSQL: the
revisions' SQL runs there (views, the text-search table in place of FTS5) and the result is
exactly the schema the code declares.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import run_alembic

from clawvm_store import Store
from clawvm_store.db import MIGRATIONS_DIR, Database
from clawvm_store.schema import include_name, metadata

REVISIONS = [script.revision for script in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()][
    ::-1
]
HEAD = REVISIONS[-1]
VIEWS = {"page_history", "resident_by_turn", "journal_outcomes", "fault_counts"}


def current(url: str) -> str | None:
    db = Database(url)
    try:
        return db.current_revision()
    finally:
        db.dispose()


def names(url: str) -> tuple[set[str], set[str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return set(inspector.get_table_names()), set(inspector.get_view_names())
    finally:
        engine.dispose()


def metadata_diff(url: str, **opts: object) -> list[object]:
    engine = sa.create_engine(url)
    opts.setdefault("include_name", include_name)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn, opts=opts), metadata))
    finally:
        engine.dispose()


def test_blank_database_migrates_to_head_and_matches_the_metadata(postgres_url: str) -> None:
    with Store.open(postgres_url) as store:
        assert store.info().schema_revision == HEAD
    tables, views = names(postgres_url)
    assert set(metadata.tables) | {"alembic_version", "pages_fts"} == tables
    assert views >= VIEWS  # (and the views of later revisions)
    assert metadata_diff(postgres_url) == []
    # Reopening is a no-op.
    with Store.open(postgres_url) as store:
        assert store.info().schema_revision == HEAD
    assert current(postgres_url) == HEAD


@pytest.mark.parametrize("start", REVISIONS[:-1])
def test_every_earlier_revision_upgrades_to_head(postgres_url: str, start: str) -> None:
    run_alembic(postgres_url, "upgrade", start)
    assert current(postgres_url) == start
    with Store.open(postgres_url) as store:
        page = store.put("pref/x", type="preference", content="Prefers tea.")
        assert page.version == 1
        assert store.check().ok
        found = store.session("s1").recall("tea")
        assert (found.reason, [p.key for p in found.pages]) == ("ok", ["pref/x"])
    assert current(postgres_url) == HEAD
    assert metadata_diff(postgres_url) == []


def test_downgrade_to_base_and_back(postgres_url: str) -> None:
    run_alembic(postgres_url, "upgrade", "head")
    run_alembic(postgres_url, "downgrade", "base")
    tables, views = names(postgres_url)
    assert tables == {"alembic_version"} and views == set()
    run_alembic(postgres_url, "upgrade", "head")
    assert current(postgres_url) == HEAD
    assert metadata_diff(postgres_url) == []
