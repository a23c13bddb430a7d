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
import random
import re
import sqlite3
import stat
import threading
import time
from collections import namedtuple
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
    Busy,
    ClawVMError,
    DatabaseError,
    InvalidInput,
    MigrationError,
    NotADatabase,
    QueryTimeout,
    ReadOnlyViolation,
    SchemaTooNew,
    is_busy,
    translate_driver_error,
)

Durability = Literal["full", "normal"]
_DRIVER_ERRORS = (DBAPIError, SQLAlchemyError, sqlite3.Error, UnicodeDecodeError)
Sync = Literal["full", "normal"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MAX_ROWS = 2**31 - 1
"""The most rows a query may be limited to (SQLite's C int)."""
MAX_QUERY_TIMEOUT_S = 2_000_000
"""A query's time limit stays below this many seconds (PostgreSQL's ``statement_timeout`` is
a 32-bit count of milliseconds)."""
_PROGRESS_STEPS = 4096
"""SQLite virtual-machine instructions between two checks of a query's time limit (well under a
millisecond of work, and cheap: one Python call per batch)."""
BUSY_TIMEOUT_MS = int(os.environ.get("CLAWVM_BUSY_TIMEOUT_MS", "5000"))
"""How long a writer waits for another writer's lock (env ``CLAWVM_BUSY_TIMEOUT_MS``).

It bounds the whole wait: SQLite's own busy handler plus our retries of ``BEGIN IMMEDIATE``
(or, on PostgreSQL, the wait for the writers' advisory lock)."""
BUSY_SLICE_MS = 100
"""How long one ``BEGIN IMMEDIATE`` attempt lets SQLite's busy handler wait before we retry.

SQLite's handler polls on a fixed schedule, so under contention the same process can lose the
lock again and again; short attempts separated by jittered exponential backoff spread the
writers out and keep any one of them from starving until its deadline."""
_BACKOFF_BASE_S = 0.002
_BACKOFF_CAP_S = 0.05
WRITER_LOCK_KEY = 0x636C6177766D
"""The PostgreSQL advisory lock every writer transaction holds (``pg_advisory_xact_lock``): one
writer at a time per database, as SQLite's ``BEGIN IMMEDIATE`` gives."""


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
_SCHEMA_COLUMNS = frozenset({"type", "name", "tbl_name", "rootpage", "sql"})
_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def _read_only_authorizer(
    action: int, first: str | None, second: str | None, database: str | None, trigger: str | None
) -> int:
    """SQLite authorizer for read-only SQL: reads yes, anything that could change state no."""
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if (
        action == sqlite3.SQLITE_UPDATE
        and first == "sqlite_master"
        and second in _SCHEMA_COLUMNS
        and database == "main"
        and trigger is None
    ):
        # SQLite asks this while it declares an eponymous virtual table (pragma_table_info(),
        # pragma_index_list(), ...) for a read. A real UPDATE of the schema table never gets
        # here: SQLite refuses it first ("may not be modified") unless writable_schema is set,
        # which this authorizer refuses, and query_only and mode=ro stop any write anyway.
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and first:
        name = first.lower()
        if name in _INTROSPECTION_PRAGMAS or (name in _VALUE_PRAGMAS and second is None):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _to_pyformat(
    sql: str, params: Sequence[Any] | Mapping[str, Any] | None
) -> tuple[str, Sequence[Any] | Mapping[str, Any]]:
    """SQLite-style placeholders (``?``, ``:name``) as psycopg's (``%s``, ``%(name)s``).

    ``store.query`` takes the same SQL on both backends. Quoted text is copied as it is, and a
    literal ``%`` is doubled, since psycopg always parses the statement for placeholders here.
    """
    out: list[str] = []
    i = 0
    while i < len(sql):
        char = sql[i]
        if char in "'\"":
            end = sql.find(char, i + 1)
            while end != -1 and sql[end + 1 : end + 2] == char:
                end = sql.find(char, end + 2)
            end = len(sql) - 1 if end == -1 else end
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
            continue
        if char == "%":
            out.append("%%")
        elif char == "?" and not isinstance(params, Mapping):
            out.append("%s")
        elif char == ":" and isinstance(params, Mapping) and sql[i + 1 : i + 2] != ":":
            name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", sql[i + 1 :])
            if name and (i == 0 or sql[i - 1] != ":"):
                out.append(f"%({name.group(0)})s")
                i += 1 + len(name.group(0))
                continue
            out.append(char)
        else:
            out.append(char)
        i += 1
    if params is None:
        return "".join(out), ()
    if isinstance(params, (str, bytes)):
        raise InvalidInput("parameters must be a sequence or a mapping, not a string")
    return "".join(out), params


def _timeout_message(timeout: float | None) -> str:
    limit = f"{timeout:g} s " if timeout is not None else ""
    return (
        f"the query ran past its {limit}time limit and was stopped; nothing was changed "
        "(allow it longer with timeout= or `clawvm sql --timeout SECONDS`)"
    )


def _type_name(value: Any) -> str:
    """A reflected column type as text; '' where the database records none (view columns)."""
    try:
        text = str(value)
    except Exception:  # a type SQLAlchemy reflects but cannot render
        return type(value).__name__
    return "" if text == "NULL" else text


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


def _hot_journal(path: str, exc: sqlite3.OperationalError) -> bool:
    """Whether a read-only open failed only because a crashed writer left a hot journal."""
    return "readonly" in str(exc) and Path(f"{path}-journal").exists()


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
        if not (isinstance(exc, sqlite3.OperationalError) and _hot_journal(path, exc)):
            raise translate_driver_error(exc, context=path) from None
        names = None
    finally:
        probe.close()
    if names is None:
        # A process died while it wrote the file in rollback-journal mode (a new database is
        # created so, before its first connection switches it to WAL): the hot journal must
        # be rolled back before anyone can read the file, and a read-only connection cannot.
        # Any SQLite client does this on open; it restores the file as it was before that
        # write, and changes nothing else (no WAL switch, no table of ours).
        try:
            rescue = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                names = [
                    row[0]
                    for row in rescue.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                ]
            finally:
                rescue.close()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise translate_driver_error(exc, context=path) from None
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
        self.display_url = url.render_as_string(hide_password=True)
        """The URL with any password masked, for reports and messages."""
        self.dialect = url.get_backend_name()
        self.path: str | None = url.database if self.dialect == "sqlite" else None
        if self.dialect not in ("sqlite", "postgresql"):
            raise DatabaseError(
                f"unsupported database {url.render_as_string(hide_password=True)!r}: "
                "use an SQLite file or a postgresql+psycopg:// URL"
            )
        connect_args: dict[str, Any] = {}
        if self.dialect == "sqlite":
            _prepare_sqlite_file(self.path or "", create=create)
        else:
            # The writers' advisory lock waits at most the busy timeout, then fails as Busy.
            # Text is UTF-8 whatever the server's default (an SQL_ASCII server would hand
            # back bytes).
            connect_args["options"] = (
                f"-c lock_timeout={int(BUSY_TIMEOUT_MS)} -c client_encoding=UTF8"
            )
        try:
            self.engine: Engine = create_engine(self.url, connect_args=connect_args)
        except (SQLAlchemyError, ImportError) as exc:
            raise DatabaseError(
                f"cannot open {url.render_as_string(hide_password=True)!r}: {exc}"
                + (
                    " (pip install 'clawvm-store[postgresql]')"
                    if isinstance(exc, ImportError)
                    else ""
                )
            ) from None
        self._writer: Connection | None = None
        self._write_lock = threading.RLock()
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", self._on_connect)
            event.listen(self.engine, "begin", self._on_begin)
        else:
            event.listen(self.engine, "begin", self._on_begin_postgresql)

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
        read = bool(options.get("clawvm_read"))
        # Readers keep the full busy timeout (they wait only while a crashed writer's WAL is
        # recovered); a writer's BEGIN IMMEDIATE waits in short slices, retried below.
        timeout = BUSY_TIMEOUT_MS if read else min(BUSY_SLICE_MS, BUSY_TIMEOUT_MS)
        if info.get("busy_timeout") != timeout:
            driver.execute(f"PRAGMA busy_timeout = {int(timeout)}")
            info["busy_timeout"] = timeout
        if read:
            driver.execute("BEGIN")
            return
        self._begin_immediate(driver)

    def _begin_immediate(self, driver: Any) -> None:
        """``BEGIN IMMEDIATE``, retried with jittered exponential backoff until the busy timeout.

        Nothing has run in the transaction yet, so a retry is always safe. Past the deadline
        the writer gets :class:`Busy` with one line saying how long it waited.
        """
        started = time.monotonic()
        deadline = started + BUSY_TIMEOUT_MS / 1000
        attempts = 0
        while True:
            attempts += 1
            try:
                driver.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                now = time.monotonic()
                if now >= deadline:
                    raise Busy(
                        f"the database is locked by another writer: gave up after "
                        f"{now - started:.1f}s and {attempts} attempts "
                        "(set CLAWVM_BUSY_TIMEOUT_MS to wait longer)"
                    ) from None
            ceiling = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** min(attempts, 16))
            time.sleep(min(max(deadline - now, 0.0), random.uniform(ceiling / 2, ceiling)))

    def _on_begin_postgresql(self, conn: Connection) -> None:
        # psycopg opens the transaction itself on the first statement (SQLAlchemy's do_begin is
        # a no-op for it), so the first statement we send here is the transaction's first.
        driver = conn.connection.dbapi_connection
        assert driver is not None
        cursor = driver.cursor()
        try:
            if conn.get_execution_options().get("clawvm_read"):
                # One snapshot for the whole read, as an SQLite read transaction has.
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            else:
                # READ COMMITTED plus one advisory lock: writers run one at a time, and every
                # statement after the lock sees everything committed before it was granted
                # (a REPEATABLE READ snapshot would be taken before the wait, and be stale).
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK_KEY,))
        except Exception as exc:
            driver.rollback()
            raise translate_driver_error(exc) from None
        finally:
            cursor.close()

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
            try:
                txn = conn.begin()
            except BaseException:
                # A BEGIN that failed (Busy after every retry) leaves SQLAlchemy's connection
                # state half-set: never reuse the connection.
                conn.invalidate()
                if conn is self._writer:
                    self._writer = None
                raise
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
        timeout: float | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement; returns (column names, rows).

        Three locks keep it read-only whatever the text says: the file is opened ``mode=ro``,
        ``PRAGMA query_only`` is on, and an SQLite authorizer allows only reading (SELECT, reads
        of columns, functions, read-only pragmas and their table-valued forms such as
        ``pragma_table_info('pages')``): ATTACH, VACUUM, DDL, writes and pragmas that change
        state are refused before they run.

        ``timeout`` (seconds, ``None`` for none) bounds the whole statement, fetching included:
        past it the statement stops with :class:`QueryTimeout` and its read snapshot is released
        (a reader held open forever would also stop WAL checkpoints). SQLite enforces it with a
        progress handler, PostgreSQL with ``statement_timeout``. A Ctrl-C (SIGINT) in the main
        thread stops a running statement the same way and raises ``KeyboardInterrupt``.
        """
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidInput("the SQL statement is empty")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_ROWS
        ):
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_ROWS}")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < MAX_QUERY_TIMEOUT_S
        ):
            raise InvalidInput(
                f"timeout must be a number of seconds above 0 and below {MAX_QUERY_TIMEOUT_S}"
            )
        if self.dialect == "postgresql":
            return self._query_postgresql(sql, params, limit=limit, timeout=timeout)
        if not self.path:
            raise ReadOnlyViolation("read-only SQL needs an SQLite database file")
        uri = f"{Path(self.path).resolve().as_uri()}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise translate_driver_error(exc, context=self.path) from None
        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out = False

        def progress() -> int:
            # Called every _PROGRESS_STEPS virtual-machine instructions, with the GIL: a nonzero
            # return aborts the statement ("interrupted"). Being Python code, it is also where a
            # pending SIGINT raises; SQLite then aborts the statement the same way.
            nonlocal timed_out
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                return 1
            return 0

        try:
            conn.text_factory = _lenient_text
            conn.execute("PRAGMA query_only = ON")
            conn.set_authorizer(_read_only_authorizer)
            conn.set_progress_handler(progress, _PROGRESS_STEPS)
            cursor = conn.execute(sql, params if params is not None else ())
            columns = [item[0] for item in cursor.description or ()]
            rows = cursor.fetchmany(limit) if limit is not None else cursor.fetchall()
            return columns, [tuple(row) for row in rows]
        except sqlite3.DatabaseError as exc:
            message = str(exc)
            if message == "interrupted" and not timed_out:
                # The progress handler swallowed the KeyboardInterrupt it raised; say it again.
                raise KeyboardInterrupt from None
            if timed_out:
                raise QueryTimeout(_timeout_message(timeout)) from None
            refused = (
                "not authorized",
                "authorization denied",
                "readonly",
                "query_only",
                "may not be modified",
            )
            if any(word in message for word in refused):
                raise ReadOnlyViolation(
                    f"refused: `clawvm sql` and store.query() only read ({message})"
                ) from None
            if (
                isinstance(exc, sqlite3.ProgrammingError)
                or "syntax error" in message
                or "no such" in message
                or "too many arguments" in message
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
            conn.close()  # ends the read transaction: its snapshot no longer pins the WAL

    def _query_postgresql(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None,
        *,
        limit: int | None,
        timeout: float | None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Read-only SQL on PostgreSQL: one statement in a ``READ ONLY`` transaction, rolled back.

        The statement is sent with the extended protocol, which takes exactly one statement, so
        no ``COMMIT; DELETE ...`` can leave the read-only transaction; the server refuses any
        write inside it. The connection is discarded afterwards, so a
        session setting the statement changed never reaches another caller.
        """
        statement, bound = _to_pyformat(sql, params)
        try:
            conn = self.engine.connect()
        except _DRIVER_ERRORS as exc:
            raise translate_driver_error(exc) from exc
        try:
            conn.execution_options(clawvm_read=True)
            txn = conn.begin()
            try:
                driver = conn.connection.dbapi_connection
                assert driver is not None
                cursor: Any = driver.cursor()
                # Read-only twice over: this transaction, and any the statement could start.
                cursor.execute("SET TRANSACTION READ ONLY")
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                if timeout is not None:
                    # Whole milliseconds, at least one (0 would mean "no limit" to the server).
                    milliseconds = max(1, round(timeout * 1000))
                    cursor.execute(
                        "SELECT set_config('statement_timeout', %s, true)", (str(milliseconds),)
                    )
                # prepare=True forces the extended protocol, whose Parse takes one statement:
                # without it, psycopg sends parameterless SQL as a simple query, which runs
                # "COMMIT; DELETE ..." as two statements.
                cursor.execute(statement, bound, prepare=True)
                if cursor.description is None:
                    return [], []  # a statement that returns no rows (and changed nothing)
                columns = [item[0] for item in cursor.description]
                rows = cursor.fetchmany(limit) if limit is not None else cursor.fetchall()
                return columns, [tuple(row) for row in rows]
            finally:
                txn.rollback()
        except ClawVMError:
            raise
        except Exception as exc:
            translated = translate_driver_error(exc, context="query")
            if isinstance(translated, QueryTimeout):
                raise QueryTimeout(_timeout_message(timeout)) from None
            if isinstance(translated, ReadOnlyViolation):
                raise ReadOnlyViolation(
                    f"refused: `clawvm sql` and store.query() only read ({exc})".splitlines()[0]
                ) from None
            if type(translated) is DatabaseError and isinstance(exc, (TypeError, ValueError)):
                raise InvalidInput(f"bad SQL or parameters: {exc}") from None
            raise translated from None
        finally:
            conn.invalidate()
            conn.close()

    def schema(self) -> list[tuple[str, str, list[tuple[str, str]]]]:
        """Every table and view: (name, ``table`` or ``view``, [(column, type), ...]), by name.

        Read through SQLAlchemy's inspector in one read transaction, so it means the same on
        both backends (PostgreSQL: the connection's default schema).
        """
        objects: list[tuple[str, str, list[tuple[str, str]]]] = []
        with self.transaction(write=False) as conn:
            inspector = inspect(conn)
            names = [(name, "table") for name in inspector.get_table_names()]
            names += [(name, "view") for name in inspector.get_view_names()]
            for name, kind in sorted(names):
                columns = [
                    (str(column["name"]), _type_name(column["type"]))
                    for column in inspector.get_columns(name)
                ]
                objects.append((name, kind, columns))
        return objects

    def backup(self, destination: str | os.PathLike[str]) -> Path:
        """A consistent copy of the database at ``destination`` (``VACUUM INTO``), mode 0600.

        It reads one snapshot, so it is correct while other processes keep writing. The
        destination must not exist; a new file is created for it.
        """
        if self.dialect != "sqlite" or not self.path:
            raise DatabaseError(
                "backup needs an SQLite database file; back up PostgreSQL with pg_dump"
            )
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
            raise DatabaseError(
                "vacuum needs an SQLite database file; PostgreSQL runs its own (autovacuum)"
            )
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

        Several processes may open a blank database at once: each revision is atomic, so the
        one that loses a race on a revision fails it without a trace, sees that the schema
        moved on, and continues from there.
        """
        attempts = 0
        while True:
            before = self._current_heads()
            try:
                self._migrate_once(script_location)
                return
            except MigrationError:
                attempts += 1
                if attempts >= 20 or self._current_heads() == before:
                    raise  # nobody else is migrating: a real failure
            time.sleep(random.uniform(0.01, 0.05) * attempts)

    def _current_heads(self) -> tuple[str, ...]:
        try:
            with self.transaction(write=False) as conn:
                return tuple(MigrationContext.configure(conn).get_current_heads())
        except ClawVMError:
            return ()

    def _migrate_once(self, script_location: Path | None = None) -> None:
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
            if type(translated) is DatabaseError or isinstance(translated, InvalidInput):
                raise MigrationError(
                    f"schema migration failed and was rolled back: {translated}"
                ) from exc
            raise translated from exc
        except ClawVMError:
            raise
        except Exception as exc:
            raise MigrationError(f"schema migration failed and was rolled back: {exc}") from exc


class Prepared:
    """A Core statement compiled once per dialect and run as driver SQL.

    Building and cache-keying a Core statement costs several times what SQLite takes to run a
    small one, and a turn runs a couple of dozen; the hot paths (stage, boundary, apply) run
    these instead, through ``exec_driver_sql``, so the engine's events (and the fault-injection
    tests that hook them) still see every statement. Run them only on a connection inside
    :meth:`Database.transaction`: driver errors then leave through it, translated. No expanding
    (IN-list) parameters.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._row: Any = None
        self._compiled: dict[str, tuple[str, bool, tuple[str, ...], dict[str, Any]]] = {}

    def _for(self, conn: Connection) -> tuple[str, bool, tuple[str, ...], dict[str, Any]]:
        name = conn.dialect.name
        found = self._compiled.get(name)
        if found is None:
            compiled = self.statement.compile(dialect=conn.dialect)
            found = (
                compiled.string,
                bool(compiled.positional),
                tuple(compiled.positiontup or ()),
                # Values fixed in the statement itself (a LIMIT) travel as bound parameters too.
                {k: v for k, v in compiled.params.items() if v is not None},
            )
            self._compiled[name] = found
        return found

    def _bound(self, conn: Connection, params: Mapping[str, Any]) -> tuple[str, Any]:
        sql, positional, order, fixed = self._for(conn)
        values = {**fixed, **params} if fixed else params
        return sql, (tuple(values[name] for name in order) if positional else dict(values))

    def _cursor(self, conn: Connection, sql: str, bound: Any, *, many: bool = False) -> Any:
        """Run ``sql`` and return the cursor: on SQLite straight on the driver's cursor.

        SQLAlchemy's per-statement machinery (execution context, result metadata) costs about
        ten times what SQLite takes to run a small statement. On SQLite these statements go to
        the transaction's own DBAPI connection, and the ``before_cursor_execute`` listeners of
        the connection and engine run first, exactly as SQLAlchemy calls them, so anything that
        watches statements (the fault-injection sweep) still sees every one. A driver error
        leaves raw and is translated by :meth:`Database.transaction`.
        """
        if conn.dialect.name != "sqlite":
            return None
        driver = conn.connection.dbapi_connection
        assert driver is not None
        cursor = driver.cursor()
        if conn._has_events or conn.engine._has_events:
            for listener in conn.dispatch.before_cursor_execute:
                sql, bound = listener(conn, cursor, sql, bound, None, many)
        if many:
            cursor.executemany(sql, bound)
        else:
            cursor.execute(sql, bound)
        return cursor

    def _row_type(self, cursor: Any) -> Any:
        if self._row is None:
            names = [column[0] for column in cursor.description]
            self._row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
        return self._row

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Every row (attribute access by column name)."""
        sql, bound = self._bound(conn, params)
        cursor = self._cursor(conn, sql, bound)
        if cursor is None:
            return list(conn.exec_driver_sql(sql, bound).all())
        try:
            found = cursor.fetchall()
            row = self._row_type(cursor)
            return [row._make(values) for values in found]
        finally:
            cursor.close()

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first row, or ``None``."""
        sql, bound = self._bound(conn, params)
        cursor = self._cursor(conn, sql, bound)
        if cursor is None:
            return conn.exec_driver_sql(sql, bound).first()
        try:
            values = cursor.fetchone()
            if values is None:
                return None
            # Read to the end, as SQLAlchemy's first() does: an INSERT ... RETURNING is only
            # done once its statement has run to completion.
            cursor.fetchall()
            return self._row_type(cursor)._make(values)
        finally:
            cursor.close()

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> None:
        """Run a write once."""
        sql, bound = self._bound(conn, params)
        cursor = self._cursor(conn, sql, bound)
        if cursor is None:
            conn.exec_driver_sql(sql, bound)
        else:
            cursor.close()

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a write once per row of parameters (one driver call)."""
        if not rows:
            return
        sql = self._bound(conn, rows[0])[0]
        bound = [self._bound(conn, row)[1] for row in rows]
        cursor = self._cursor(conn, sql, bound, many=True)
        if cursor is None:
            conn.exec_driver_sql(sql, bound)
        else:
            cursor.close()
