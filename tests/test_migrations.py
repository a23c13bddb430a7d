"""Schema migrations, opening rules and connection settings (DESIGN.md sections 2 and 4).

Covers: a blank database migrates to head and re-opening is a no-op; the SQLAlchemy metadata and
the Alembic revisions cannot drift apart; a failing revision leaves schema and ``alembic_version``
exactly as they were (atomic per revision), while a good one applies; a schema from a newer
clawvm-store, a foreign SQLite file, a non-SQLite file and unusable paths are refused with precise
errors and without touching anything; new files are private; every connection carries the
documented pragmas; the one transaction primitive rolls back on error and takes the write lock
up front (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

import clawvm_store
from clawvm_store import DatabaseError, MigrationError, NotADatabase, SchemaTooNew, Store
from clawvm_store.db import MIGRATIONS_DIR, Database
from clawvm_store.schema import include_name, metadata

# The newest revision shipped in migrations/, read straight from the scripts (not through the
# code under test), and the id of the extra revision the atomicity tests append after it.
REAL_HEAD = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
NEXT = "9002"

# -- helpers ------------------------------------------------------------------------------------


def revisions(path: Path) -> tuple[str | None, str]:
    """(current, head) as the library reports them, with the engine released afterwards."""
    db = Database(path)
    try:
        return db.current_revision(), db.head_revision()
    finally:
        db.dispose()


def schema_rows(path: Path) -> list[tuple[str, str, str | None]]:
    """Every object in sqlite_master: (type, name, sql), in a stable order."""
    con = sqlite3.connect(path)
    try:
        return con.execute(
            "SELECT type, name, sql FROM sqlite_master ORDER BY type, name, sql"
        ).fetchall()
    finally:
        con.close()


def version_rows(path: Path) -> list[tuple[str, ...]]:
    """The rows of alembic_version, read with a plain sqlite3 connection."""
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT * FROM alembic_version ORDER BY 1").fetchall()
    finally:
        con.close()


def table_rows(path: Path, table: str) -> list[tuple[object, ...]]:
    """Every row of ``table``, sorted, read with a plain sqlite3 connection."""
    con = sqlite3.connect(path)
    try:
        return sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
    finally:
        con.close()


def column_names(path: Path, table: str) -> list[str]:
    """The column names of ``table`` in declaration order."""
    con = sqlite3.connect(path)
    try:
        return [row[1] for row in con.execute(f"PRAGMA table_info({table})")]
    finally:
        con.close()


def directory_snapshot(directory: Path) -> dict[str, bytes]:
    """Name -> bytes of every file in ``directory`` (catches stray -wal/-shm files too)."""
    return {entry.name: entry.read_bytes() for entry in sorted(directory.iterdir())}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store.open(db_path) as opened:
        yield opened


def migrate_to_head(path: Path) -> None:
    """Create (or migrate) a database with the real migrations and close it again."""
    Store.open(path).close()


# -- blank database, metadata vs migrations --------------------------------------------------------


def test_blank_database_migrates_to_head(db_path: Path) -> None:
    assert not db_path.exists()
    migrate_to_head(db_path)
    current, head = revisions(db_path)
    assert head == REAL_HEAD
    assert head is not None
    assert current == head
    assert version_rows(db_path) == [(head,)]
    tables = {name for kind, name, _ in schema_rows(db_path) if kind == "table"}
    assert {t for t in metadata.tables} | {"alembic_version"} <= tables


def test_reopening_a_migrated_database_is_a_no_op(db_path: Path) -> None:
    migrate_to_head(db_path)
    schema = schema_rows(db_path)
    versions = version_rows(db_path)
    meta = table_rows(db_path, "meta")
    assert [name for name, _ in meta] == ["created_at", "encoding"]

    migrate_to_head(db_path)

    assert schema_rows(db_path) == schema
    assert version_rows(db_path) == versions
    assert table_rows(db_path, "meta") == meta
    assert revisions(db_path) == (versions[0][0], versions[0][0])


def metadata_diff(path: Path, target: sa.MetaData, **opts: object) -> list[object]:
    """Alembic's autogenerate comparison of ``target`` against the migrated database."""
    engine = sa.create_engine(f"sqlite+pysqlite:///{path}")
    opts.setdefault("include_name", include_name)  # the FTS5 recall index is derived data
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn, opts=opts), target))
    finally:
        engine.dispose()


def test_schema_metadata_matches_the_migrations(db_path: Path) -> None:
    migrate_to_head(db_path)
    assert metadata_diff(db_path, metadata) == []


def test_schema_metadata_matches_the_migrations_including_server_defaults(db_path: Path) -> None:
    migrate_to_head(db_path)
    assert metadata_diff(db_path, metadata, compare_server_default=True) == []


def test_metadata_comparison_detects_drift(db_path: Path) -> None:
    # The comparison above must be able to fail: a column the migrations do not create shows up.
    migrate_to_head(db_path)
    drifted = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["pages"].append_column(sa.Column("not_migrated", sa.Integer, nullable=True))
    diff = metadata_diff(db_path, drifted)
    assert len(diff) == 1
    kind, _schema, table_name, column = diff[0]  # type: ignore[misc]
    assert (kind, table_name, column.name) == ("add_column", "pages", "not_migrated")


# -- atomic per revision -------------------------------------------------------------------------

FAILING_REVISION = '''\
"""a revision that does half its work and then fails"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "half_done",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("note", sa.Text(), nullable=True),
    )
    op.execute("INSERT INTO half_done (id, note) VALUES (1, 'should vanish')")
    with op.batch_alter_table("pages", recreate="{recreate}") as batch_op:
        batch_op.add_column(sa.Column("half_column", sa.Integer(), nullable=True))
    op.execute("UPDATE meta SET value = 'tampered' WHERE name = 'encoding'")
    raise RuntimeError("boom: revision {revision} failed half-way")


def downgrade() -> None:
    pass
'''

GOOD_REVISION = '''\
"""a revision that adds a nullable column in batch mode"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pages", recreate="{recreate}") as batch_op:
        batch_op.add_column(sa.Column("extra_note", sa.Text(), nullable=True))


def downgrade() -> None:
    pass
'''


def revision_source(template: str, *, recreate: str = "auto") -> str:
    """The source of revision NEXT, which follows the real head."""
    return (
        template.replace("{revision}", NEXT)
        .replace("{down_revision}", str(REAL_HEAD))
        .replace("{recreate}", recreate)
    )


def migrations_with(tmp_path: Path, filename: str, source: str) -> Path:
    """A copy of the real migrations directory with one more revision file in versions/."""
    location = tmp_path / "migrations_copy"
    shutil.copytree(MIGRATIONS_DIR, location, ignore=shutil.ignore_patterns("__pycache__"))
    assert (location / "env.py").is_file()
    assert (location / "script.py.mako").is_file()
    assert (location / "versions" / "0001_initial.py").is_file()
    assert "{" not in source, "unfilled placeholder in the revision template"
    (location / "versions" / filename).write_text(textwrap.dedent(source))
    return location


def seed_page(path: Path) -> None:
    """One row in ``pages`` so that a batch copy has data to carry (or lose)."""
    con = sqlite3.connect(path)
    try:
        con.execute(
            "INSERT INTO pages (project, session_id, key, type, scope, pin, priority, version,"
            " created_at, updated_at) VALUES ('p', '', 'plan/main', 'plan', 'project', 'none',"
            " 0.5, 1, 't0', 't0')"
        )
        con.commit()
    finally:
        con.close()


@pytest.mark.parametrize("recreate", ["auto", "always"])
def test_failing_revision_leaves_schema_and_version_untouched(
    tmp_path: Path, db_path: Path, recreate: str
) -> None:
    migrate_to_head(db_path)
    seed_page(db_path)
    location = migrations_with(
        tmp_path, "9002_fails.py", revision_source(FAILING_REVISION, recreate=recreate)
    )
    schema_before = schema_rows(db_path)
    versions_before = version_rows(db_path)
    pages_before = table_rows(db_path, "pages")
    meta_before = table_rows(db_path, "meta")
    assert versions_before == [(REAL_HEAD,)]

    db = Database(db_path)
    try:
        assert db.head_revision(location) == NEXT
        with pytest.raises(MigrationError) as caught:
            db.migrate(script_location=location)
    finally:
        db.dispose()

    assert not isinstance(caught.value, SchemaTooNew)
    assert f"boom: revision {NEXT} failed half-way" in str(caught.value)
    assert schema_rows(db_path) == schema_before
    assert version_rows(db_path) == versions_before
    assert table_rows(db_path, "pages") == pages_before
    assert table_rows(db_path, "meta") == meta_before
    assert "half_column" not in column_names(db_path, "pages")
    assert revisions(db_path) == (REAL_HEAD, REAL_HEAD)


def test_revision_failing_in_sql_is_rolled_back_and_reported_as_migration_error(
    tmp_path: Path, db_path: Path
) -> None:
    # The same half-done revision, but failing in the database (a statement SQLite rejects)
    # rather than in Python: equally atomic, and equally a MigrationError ("a schema migration
    # failed; the failed revision was rolled back as a whole"), not a generic DatabaseError.
    migrate_to_head(db_path)
    seed_page(db_path)
    source = revision_source(FAILING_REVISION).replace(
        f'raise RuntimeError("boom: revision {NEXT} failed half-way")',
        'op.execute("INSERT INTO no_such_table (id) VALUES (1)")',
    )
    assert "no_such_table" in source
    assert "RuntimeError" not in source
    location = migrations_with(tmp_path, "9002_fails_in_sql.py", source)
    schema_before = schema_rows(db_path)
    versions_before = version_rows(db_path)
    pages_before = table_rows(db_path, "pages")
    meta_before = table_rows(db_path, "meta")

    db = Database(db_path)
    try:
        with pytest.raises(clawvm_store.ClawVMError) as caught:
            db.migrate(script_location=location)
    finally:
        db.dispose()

    assert "no_such_table" in str(caught.value)
    assert schema_rows(db_path) == schema_before
    assert version_rows(db_path) == versions_before
    assert table_rows(db_path, "pages") == pages_before
    assert table_rows(db_path, "meta") == meta_before
    assert isinstance(caught.value, MigrationError), type(caught.value).__mro__


@pytest.mark.parametrize("recreate", ["auto", "always"])
def test_good_revision_applies_and_bumps_the_revision(
    tmp_path: Path, db_path: Path, recreate: str
) -> None:
    # The harness of the test above really runs revisions: the same setup with a revision that
    # does not fail changes the schema and the recorded revision, and keeps the data.
    migrate_to_head(db_path)
    seed_page(db_path)
    location = migrations_with(
        tmp_path, "9002_good.py", revision_source(GOOD_REVISION, recreate=recreate)
    )
    schema_before = schema_rows(db_path)
    pages_before = table_rows(db_path, "pages")

    db = Database(db_path)
    try:
        db.migrate(script_location=location)
        assert db.current_revision() == NEXT
        assert db.head_revision(location) == NEXT
    finally:
        db.dispose()

    assert version_rows(db_path) == [(NEXT,)]
    assert schema_rows(db_path) != schema_before
    assert column_names(db_path, "pages")[-1] == "extra_note"
    assert table_rows(db_path, "pages") == [(*row, None) for row in pages_before]
    # The real code does not know NEXT: the database is now "too new" for it.
    with pytest.raises(SchemaTooNew, match=NEXT):
        Store.open(db_path)


def test_table_rebuild_revision_applies_to_a_populated_database(
    tmp_path: Path, db_path: Path
) -> None:
    # SQLite cannot ALTER most things, so a future revision will rebuild a table (batch
    # "recreate": copy, DROP, RENAME). `pages` is referenced by page_versions, which is
    # referenced by representations; with rows in all three the rebuild must still apply
    # (SQLite's documented procedure: foreign_keys OFF around the migration, then
    # foreign_key_check before commit) and leave every row and reference intact.
    migrate_to_head(db_path)
    seed_page(db_path)
    con = sqlite3.connect(db_path)
    con.execute(
        "INSERT INTO page_versions (page_id, version, type, op, pin, priority, scope, lsn,"
        " committed_at) VALUES (1, 1, 'plan', 'set', 'none', 0.5, 'project', 1, 't0')"
    )
    con.execute(
        "INSERT INTO representations (page_id, version, fidelity, content, tokens, source)"
        " VALUES (1, 1, 'full', 'ship it', 2, 'write')"
    )
    con.commit()
    con.close()
    pages_before = table_rows(db_path, "pages")
    versions_before = table_rows(db_path, "page_versions")
    representations_before = table_rows(db_path, "representations")
    location = migrations_with(
        tmp_path, "9002_rebuild.py", revision_source(GOOD_REVISION, recreate="always")
    )

    db = Database(db_path)
    try:
        db.migrate(script_location=location)
        assert db.current_revision() == NEXT
        with db.transaction(write=False) as conn:
            # The migration must not leave foreign keys switched off for later connections.
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.dispose()

    assert column_names(db_path, "pages")[-1] == "extra_note"
    assert table_rows(db_path, "pages") == [(*row, None) for row in pages_before]
    assert table_rows(db_path, "page_versions") == versions_before
    assert table_rows(db_path, "representations") == representations_before


# -- refusing what is not ours ---------------------------------------------------------------------


def test_schema_newer_than_the_code_is_refused(db_path: Path) -> None:
    migrate_to_head(db_path)
    con = sqlite3.connect(db_path)
    con.execute("UPDATE alembic_version SET version_num = '9999_future'")
    con.commit()
    con.close()

    with pytest.raises(SchemaTooNew) as caught:
        Store.open(db_path)
    assert "9999_future" in str(caught.value)
    assert isinstance(caught.value, MigrationError)
    assert version_rows(db_path) == [("9999_future",)]


def test_foreign_sqlite_file_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "theirs.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    con.execute("INSERT INTO users (name) VALUES ('ada'), ('grace')")
    con.commit()
    con.close()
    before = directory_snapshot(tmp_path)
    assert list(before) == ["theirs.sqlite"]

    with pytest.raises(NotADatabase) as caught:
        Store.open(path)
    assert "users" in str(caught.value)

    after = directory_snapshot(tmp_path)
    assert sorted(after) == ["theirs.sqlite"], "stray -wal/-shm files were left next to it"
    # Header bytes 18-19 are the file format versions: 1 = rollback journal, 2 = WAL. Opening
    # someone else's file must not switch it to WAL (a persistent change to their database).
    assert tuple(after["theirs.sqlite"][18:20]) == tuple(before["theirs.sqlite"][18:20]) == (1, 1)
    assert schema_rows(path) == [
        ("table", "users", "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    ]
    # Byte for byte.
    assert after == before


def test_non_sqlite_file_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 10)
    before = directory_snapshot(tmp_path)

    with pytest.raises(NotADatabase):
        Store.open(path)

    assert directory_snapshot(tmp_path) == before


def test_directory_path_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "a_directory"
    directory.mkdir()
    with pytest.raises(DatabaseError) as caught:
        Store.open(directory)
    assert not isinstance(caught.value, NotADatabase)
    assert list(directory.iterdir()) == []


def test_missing_parent_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "store.db"
    with pytest.raises(DatabaseError) as caught:
        Store.open(path)
    assert "does not exist" in str(caught.value)
    assert not (tmp_path / "no").exists()


def test_create_false_on_missing_file_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(DatabaseError) as caught:
        Store.open(path, create=False)
    assert not isinstance(caught.value, NotADatabase)
    assert list(tmp_path.iterdir()) == []


def test_create_false_opens_an_existing_database(db_path: Path) -> None:
    migrate_to_head(db_path)
    with Store.open(db_path, create=False) as store:
        assert store.info().schema_revision == REAL_HEAD


def test_new_database_file_is_private(db_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        with Store.open(db_path):
            assert os.stat(db_path).st_mode & 0o777 == 0o600
            wal = db_path.with_name(db_path.name + "-wal")
            assert wal.exists()
            # SQLite gives the WAL the database file's permissions.
            assert os.stat(wal).st_mode & 0o777 == 0o600
    finally:
        os.umask(old_umask)
    assert os.stat(db_path).st_mode & 0o777 == 0o600


# -- connection settings and the transaction primitive --------------------------------------------


def test_pragmas_default_durability(store: Store) -> None:
    pragmas = store.info().pragmas
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["synchronous"] == "FULL"
    assert pragmas["foreign_keys"] == 1
    assert pragmas["busy_timeout"] == 5000
    assert pragmas["mmap_size"] == 0
    assert store.info().durability == "full"


def test_pragmas_normal_durability(db_path: Path) -> None:
    with Store.open(db_path, durability="normal") as store:
        info = store.info()
    assert info.durability == "normal"
    assert info.pragmas["synchronous"] == "NORMAL"
    assert info.pragmas["journal_mode"] == "wal"
    assert info.pragmas["foreign_keys"] == 1
    assert info.pragmas["busy_timeout"] == 5000
    assert info.pragmas["mmap_size"] == 0


def test_unknown_durability_is_refused(db_path: Path) -> None:
    with pytest.raises(DatabaseError, match="durability"):
        Store.open(db_path, durability="sometimes")  # type: ignore[arg-type]
    assert not db_path.exists()


def meta_value(store: Store, name: str) -> str | None:
    with store.db.transaction(write=False) as conn:
        value = conn.execute(text("SELECT value FROM meta WHERE name = :n"), {"n": name}).scalar()
    return None if value is None else str(value)


def test_transaction_rolls_back_on_exception(store: Store) -> None:
    with (
        pytest.raises(ValueError, match="abort the block"),
        store.db.transaction() as conn,
    ):
        conn.execute(text("INSERT INTO meta (name, value) VALUES ('probe', 'x')"))
        # Visible inside the transaction, so the insert itself did happen.
        assert conn.execute(text("SELECT value FROM meta WHERE name = 'probe'")).scalar() == "x"
        raise ValueError("abort the block")
    assert meta_value(store, "probe") is None


def test_transaction_commits_when_the_block_returns(store: Store) -> None:
    with store.db.transaction() as conn:
        conn.execute(text("INSERT INTO meta (name, value) VALUES ('probe', 'kept')"))
    assert meta_value(store, "probe") == "kept"
    # Committed for other connections too, not only in this pool.
    assert ("probe", "kept") in table_rows(Path(store.db.path or ""), "meta")


def try_begin_immediate(path: Path) -> str | None:
    """BEGIN IMMEDIATE from an independent connection that will not wait: the error, or None."""
    con = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return None
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        con.close()


def test_writer_transaction_begins_immediate(store: Store, db_path: Path) -> None:
    assert try_begin_immediate(db_path) is None
    with store.db.transaction():
        # No statement has run in the block yet: the write lock was taken at BEGIN.
        assert try_begin_immediate(db_path) == "database is locked"
    assert try_begin_immediate(db_path) is None


def test_reader_transaction_does_not_take_the_write_lock(store: Store, db_path: Path) -> None:
    with store.db.transaction(write=False) as conn:
        conn.execute(text("SELECT count(*) FROM meta")).scalar()
        assert try_begin_immediate(db_path) is None


def test_public_errors_are_exported() -> None:
    for name in ("MigrationError", "SchemaTooNew", "NotADatabase", "DatabaseError"):
        assert name in clawvm_store.__all__
    assert issubclass(SchemaTooNew, MigrationError)
    assert issubclass(NotADatabase, DatabaseError)
