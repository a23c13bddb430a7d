"""Engine, per-connection settings, the one transaction primitive, and programmatic migrations.

SQLite's Python driver, left alone, opens transactions lazily and only before DML, so DDL runs
outside any transaction and a writer can fail half-way when it upgrades a shared lock. We take
the transaction boundaries away from the driver (SQLAlchemy's documented pysqlite recipe):
autocommit at the driver, and ``BEGIN IMMEDIATE`` (writers) or ``BEGIN`` (readers) emitted by us.
Every connection gets the same pragmas in :func:`_on_connect`, and every transaction goes
through :meth:`Database.transaction`.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from . import _crashpoints
from .errors import (
    ClawVMError,
    DatabaseError,
    InvalidInput,
    MigrationError,
    NotADatabase,
    ReadOnlyViolation,
    SchemaTooNew,
    translate_driver_error,
)

Durability = Literal["full", "normal"]
_DRIVER_ERRORS = (DBAPIError, SQLAlchemyError, sqlite3.Error, UnicodeDecodeError)
Sync = Literal["full", "normal"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MAX_ROWS = 2**31 - 1
"""The most rows a query may be limited to (SQLite's C int)."""
BUSY_TIMEOUT_MS = int(os.environ.get("CLAWVM_BUSY_TIMEOUT_MS", "5000"))
"""How long a writer waits for another writer's lock (env ``CLAWVM_BUSY_TIMEOUT_MS``)."""


def database_url(target: str | os.PathLike[str]) -> str:
    """An SQLAlchemy URL for a filesystem path or a URL that is already one."""
    text = os.fspath(target)
    if "://" in text:
        return text
    return f"sqlite+pysqlite:///{text}"


def _prepare_sqlite_file(path: str, *, create: bool) -> None:
    """Refuse unusable paths with a clear error; create a new database file with mode 0600."""
    if path in ("", ":memory:"):
        return
    file_path = Path(path)
    if file_path.is_dir():
        raise DatabaseError(f"cannot open database {path!r}: it is a directory")
    if file_path.exists():
        if not os.access(file_path, os.R_OK):
            raise DatabaseError(f"cannot open database {path!r}: permission denied")
        with file_path.open("rb") as handle:
            header = handle.read(16)
        if not header and not create:
            raise DatabaseError(
                f"{path!r} is an empty file, not a database (create one with `clawvm init`)"
            )
        if header and header != b"SQLite format 3\x00":
            raise NotADatabase(f"{path!r} is not an SQLite database")
        if header:
            _refuse_foreign_database(path)
        return
    if not create:
        raise DatabaseError(f"no database at {path!r} (create one with `clawvm init`)")
    parent = file_path.parent
    if not parent.is_dir():
        raise DatabaseError(
            f"cannot create database {path!r}: directory {str(parent)!r} does not exist"
        )
    try:
        fd = os.open(file_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:
        return
    except OSError as exc:
        raise DatabaseError(f"cannot create database {path!r}: {exc.strerror}") from None
    os.close(fd)


# Pragmas that only read: introspection ones take a table or index name as their argument;
# setting pragmas are allowed without an argument only (reading their value, never setting it).
_INTROSPECTION_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)
_VALUE_PRAGMAS = frozenset(
    {
        "database_list",
        "compile_options",
        "page_count",
        "page_size",
        "freelist_count",
        "encoding",
        "user_version",
        "schema_version",
        "data_version",
        "journal_mode",
        "synchronous",
        "function_list",
        "pragma_list",
        "collation_list",
    }
)
_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def _read_only_authorizer(
    action: int, first: str | None, second: str | None, database: str | None, trigger: str | None
) -> int:
    """SQLite authorizer for read-only SQL: reads yes, anything that could change state no."""
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and first:
        name = first.lower()
        if name in _INTROSPECTION_PRAGMAS or (name in _VALUE_PRAGMAS and second is None):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _lenient_text(data: bytes) -> str:
    """Decode a TEXT value; invalid UTF-8 becomes lone surrogates, which never verify."""
    return data.decode("utf-8", "surrogateescape")


def create_private_file(target: Path, purpose: str) -> int:
    """Create ``target`` (which must not exist yet) with mode 0600; returns its open descriptor.

    Backups and exports hold the agent's state: they get the database's own permissions, and
    never overwrite a file that is already there.
    """
    if target.exists():
        raise InvalidInput(f"{str(target)!r} already exists; choose a new file for {purpose}")
    if not target.parent.is_dir():
        raise InvalidInput(f"directory {str(target.parent)!r} does not exist")
    try:
        return os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, stat.S_IRUSR | stat.S_IWUSR)
    except OSError as exc:
        raise DatabaseError(f"cannot create {str(target)!r}: {exc.strerror}") from None


def _refuse_foreign_database(path: str) -> None:
    """Refuse, without writing a byte, an SQLite file that holds someone else's tables.

    The check runs on a read-only connection: our own connections switch the file to WAL the
    moment they open it, which must not happen to another program's database.
    """
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    try:
        probe = sqlite3.connect(uri, uri=True, timeout=1.0)
    except sqlite3.Error:
        return  # unreadable here; the real open reports it with the right error
    try:
        names = [
            row[0] for row in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise translate_driver_error(exc, context=path) from None
    finally:
        probe.close()
    ours = "alembic_version" in names
    foreign = sorted(
        name for name in names if name != "alembic_version" and not name.startswith("sqlite_")
    )
    if foreign and not ours:
        raise NotADatabase(
            f"{path!r} holds tables that are not clawvm-store's ({', '.join(foreign[:5])}); "
            "refusing to add ours to it"
        )


class Database:
    """An engine with clawvm-store's connection settings and its single transaction primitive."""

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        durability: Durability = "full",
        create: bool = True,
    ):
        if durability not in ("full", "normal"):
            raise DatabaseError(f"durability must be 'full' or 'normal', not {durability!r}")
        self.url = database_url(target)
        self.durability: Durability = durability
        url = make_url(self.url)
        self.dialect = url.get_backend_name()
        self.path: str | None = url.database if self.dialect == "sqlite" else None
        if self.dialect == "sqlite":
            _prepare_sqlite_file(self.path or "", create=create)
        try:
            self.engine: Engine = create_engine(self.url)
        except (SQLAlchemyError, ImportError) as exc:
            raise DatabaseError(f"cannot open {self.url!r}: {exc}") from None
        self._writer: Connection | None = None
        self._write_lock = threading.RLock()
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", self._on_connect)
            event.listen(self.engine, "begin", self._on_begin)

    # -- connection settings, applied to every new DBAPI connection in this one place ---------

    def _on_connect(self, dbapi_connection: sqlite3.Connection, record: Any) -> None:
        # Take transaction control away from the driver; we emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        # Damaged bytes must surface as a checksum or hash mismatch that check() and recovery
        # report, not as a decode error that makes the whole database unreadable.
        dbapi_connection.text_factory = _lenient_text
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA mmap_size = 0")
            cursor.execute(f"PRAGMA synchronous = {self.durability.upper()}")
        finally:
            cursor.close()
        record.info["synchronous"] = self.durability

    def _on_begin(self, conn: Connection) -> None:
        options = conn.get_execution_options()
        wanted: Sync = options.get("clawvm_sync", self.durability)
        if self.durability == "normal":
            wanted = "normal"  # the caller opted out of FULL for every commit
        info = conn.connection.info
        # Straight to the driver: these two run on every transaction, and going through
        # SQLAlchemy's statement machinery would cost more than the statements themselves.
        driver = conn.connection.dbapi_connection
        assert driver is not None
        if info.get("synchronous") != wanted:
            driver.execute(f"PRAGMA synchronous = {wanted.upper()}")
            info["synchronous"] = wanted
        driver.execute("BEGIN" if options.get("clawvm_read") else "BEGIN IMMEDIATE")

    # -- the transaction primitive -------------------------------------------------------------

    @contextmanager
    def transaction(self, *, write: bool = True, sync: Sync = "full") -> Iterator[Connection]:
        """Run the block in one transaction: ``BEGIN IMMEDIATE`` for writers, ``BEGIN`` for readers.

        Commits when the block returns, rolls back on any exception (and never commits in a
        ``finally``). ``sync="normal"`` lets a small write skip the fsync: its WAL frames already
        survive a process crash, and the next FULL commit makes them durable against power loss.
        Driver errors leave as :class:`ClawVMError` subclasses.
        """
        if write:
            with self._write_lock:
                if _crashpoints.ACTIVE:  # the crash-test kit's kill points (before, in, after)
                    _crashpoints.point("begin")
                try:
                    # One writer connection per process (DESIGN 2): kept open, so a write skips
                    # the pool's checkout and reset, and no two writers of ours ever race.
                    if self._writer is None or self._writer.closed or self._writer.invalidated:
                        self._writer = None
                        self._writer = self.engine.connect()
                except _DRIVER_ERRORS as exc:
                    raise translate_driver_error(exc) from exc
                yield from self._run(self._writer, read=False, sync=sync)
                if _crashpoints.ACTIVE:
                    _crashpoints.point("committed")
            return
        try:
            conn = self.engine.connect()
        except _DRIVER_ERRORS as exc:
            raise translate_driver_error(exc) from exc
        try:
            yield from self._run(conn, read=True, sync=sync)
        finally:
            conn.close()  # returns it to the pool (or discards it, if it was invalidated)

    def _run(self, conn: Connection, *, read: bool, sync: Sync) -> Iterator[Connection]:
        try:
            conn.execution_options(clawvm_read=read, clawvm_sync=sync)
            txn = conn.begin()
            try:
                yield conn
            except BaseException:
                self._abandon(conn, txn)
                raise
            if _crashpoints.ACTIVE and not read:
                _crashpoints.point("commit")
            try:
                txn.commit()
            except BaseException:
                # A failed COMMIT can leave SQLite's transaction open under a connection that
                # SQLAlchemy believes is finished: never reuse it.
                self._abandon(conn, txn, discard=True)
                raise
        except ClawVMError:
            raise
        except _DRIVER_ERRORS as exc:
            raise translate_driver_error(exc) from exc
        except (UnicodeEncodeError, OverflowError) as exc:
            # Raised while binding a value: text that is not valid Unicode (a lone surrogate) or
            # an integer beyond SQLite's 64 bits. Bad input, and nothing was written.
            raise InvalidInput(f"a value cannot be stored: {type(exc).__name__}: {exc}") from None

    def _abandon(self, conn: Connection, txn: Any, *, discard: bool = False) -> None:
        """Roll back; if that fails too (or ``discard``), throw the connection away."""
        try:
            if txn.is_active:
                txn.rollback()
        except Exception:
            discard = True
        if discard:
            conn.invalidate()
            if conn is self._writer:
                self._writer = None

    # -- read-only SQL, backups, vacuum ------------------------------------------------------------

    def query(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement; returns (column names, rows).

        Three locks keep it read-only whatever the text says: the file is opened ``mode=ro``,
        ``PRAGMA query_only`` is on, and an SQLite authorizer allows only reading (SELECT, reads
        of columns, functions, read-only pragmas): ATTACH, VACUUM, DDL, writes and pragmas that
        change state are refused before they run.
        """
        if self.dialect != "sqlite" or not self.path:
            raise ReadOnlyViolation("read-only SQL needs an SQLite database file")
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidInput("the SQL statement is empty")
        uri = f"{Path(self.path).resolve().as_uri()}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise translate_driver_error(exc, context=self.path) from None
        try:
            conn.text_factory = _lenient_text
            conn.execute("PRAGMA query_only = ON")
            conn.set_authorizer(_read_only_authorizer)
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_ROWS
            ):
                raise InvalidInput(f"limit must be an integer from 1 to {MAX_ROWS}")
            cursor = conn.execute(sql, params if params is not None else ())
            columns = [item[0] for item in cursor.description or ()]
            rows = cursor.fetchmany(limit) if limit is not None else cursor.fetchall()
            return columns, [tuple(row) for row in rows]
        except sqlite3.DatabaseError as exc:
            message = str(exc)
            refused = ("not authorized", "authorization denied", "readonly", "query_only")
            if any(word in message for word in refused):
                raise ReadOnlyViolation(
                    f"refused: `clawvm sql` and store.query() only read ({message})"
                ) from None
            if (
                isinstance(exc, sqlite3.ProgrammingError)
                or "syntax error" in message
                or "no such" in message
            ):
                raise InvalidInput(f"bad SQL: {message}") from None
            raise translate_driver_error(exc, context="query") from None
        except (
            sqlite3.Warning,
            sqlite3.ProgrammingError,
            ValueError,
            TypeError,
            OverflowError,
        ) as exc:
            raise InvalidInput(f"bad SQL or parameters: {exc}") from None
        finally:
            conn.close()

    def backup(self, destination: str | os.PathLike[str]) -> Path:
        """A consistent copy of the database at ``destination`` (``VACUUM INTO``), mode 0600.

        It reads one snapshot, so it is correct while other processes keep writing. The
        destination must not exist; a new file is created for it.
        """
        if self.dialect != "sqlite" or not self.path:
            raise DatabaseError("backup needs an SQLite database file")
        target = Path(destination)
        os.close(create_private_file(target, "the backup"))
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            try:
                conn.execute("VACUUM INTO ?", (str(target),))
            finally:
                conn.close()
        except sqlite3.Error as exc:
            target.unlink(missing_ok=True)
            raise translate_driver_error(exc, context="backup") from None
        return target

    def vacuum(self) -> tuple[int, int]:
        """Rebuild the database file to reclaim free pages; returns (bytes before, bytes after)."""
        if self.dialect != "sqlite" or not self.path:
            raise DatabaseError("vacuum needs an SQLite database file")
        before = os.path.getsize(self.path)
        with self._write_lock:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
                )
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("VACUUM")
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                raise translate_driver_error(exc, context="vacuum") from None
        return before, os.path.getsize(self.path)

    def dispose(self) -> None:
        """Close the writer connection and every pooled connection."""
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self.engine.dispose()

    def sqlite_version(self) -> str:
        """The SQLite library version the driver is linked against."""
        return sqlite3.sqlite_version

    # -- migrations ------------------------------------------------------------------------------

    def _alembic_config(self, script_location: Path | None = None) -> Config:
        config = Config()
        config.set_main_option("script_location", str(script_location or MIGRATIONS_DIR))
        return config

    def current_revision(self) -> str | None:
        """The schema revision recorded in the database, or ``None`` for a blank database."""
        with self.transaction(write=False) as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
        return heads[0] if heads else None

    def head_revision(self, script_location: Path | None = None) -> str:
        """The newest schema revision this code knows."""
        script = ScriptDirectory.from_config(self._alembic_config(script_location))
        head = script.get_current_head()
        if head is None:
            raise MigrationError("no schema revisions found; the installation is incomplete")
        return head

    def migrate(self, script_location: Path | None = None) -> None:
        """Bring the schema to the head revision, one atomic transaction per revision.

        A blank database is created from scratch; a database from a newer clawvm-store raises
        :class:`SchemaTooNew`; an SQLite file holding someone else's tables raises
        :class:`NotADatabase` rather than mixing our tables into it.
        """
        config = self._alembic_config(script_location)
        script = ScriptDirectory.from_config(config)
        with self.transaction(write=False) as conn:
            current = MigrationContext.configure(conn).get_current_heads()
            foreign = [
                name
                for name in inspect(conn).get_table_names()
                if name != "alembic_version" and not name.startswith("sqlite_")
            ]
        for revision in current:
            try:
                known = script.get_revision(revision)
            except Exception:
                known = None
            if known is None:
                raise SchemaTooNew(
                    f"the database schema is at revision {revision!r}, which this clawvm-store "
                    f"does not know (its newest is {script.get_current_head()!r}); upgrade clawvm-store"
                )
        if not current and foreign:
            raise NotADatabase(
                "the database holds tables that are not clawvm-store's "
                f"({', '.join(sorted(foreign)[:5])}); refusing to add ours to it"
            )
        head = script.get_current_head()
        if head is None:
            raise MigrationError(
                f"no schema revisions found in {config.get_main_option('script_location')}"
            )
        if list(current) == [head]:
            return
        try:
            with self.engine.connect() as conn:
                # A revision that rebuilds a table (batch mode's copy-and-move) must be able to
                # drop the old one while rows refer to it; foreign keys are checked per revision
                # instead (env.py), and switched back on before the connection is reused.
                # Likewise, a rebuild renames its copy into place: legacy ALTER semantics keep
                # SQLite from re-validating views mid-rebuild, when their table is briefly gone.
                driver = conn.connection.dbapi_connection
                if self.dialect == "sqlite" and driver is not None:
                    driver.execute("PRAGMA foreign_keys = OFF")
                    driver.execute("PRAGMA legacy_alter_table = ON")
                try:
                    config.attributes["connection"] = conn
                    command.upgrade(config, "head")
                finally:
                    if self.dialect == "sqlite" and driver is not None:
                        driver.execute("PRAGMA legacy_alter_table = OFF")
                        driver.execute("PRAGMA foreign_keys = ON")
        except MigrationError:
            raise
        except (DBAPIError, sqlite3.Error) as exc:
            translated = translate_driver_error(exc, context="migration")
            if type(translated) is DatabaseError:
                raise MigrationError(
                    f"schema migration failed and was rolled back: {translated}"
                ) from exc
            raise translated from exc
        except ClawVMError:
            raise
        except Exception as exc:
            raise MigrationError(f"schema migration failed and was rolled back: {exc}") from exc
