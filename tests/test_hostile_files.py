"""Hostile files: tampered journal rows, damaged rows, truncated, foreign and bit-flipped databases.

Whatever the bytes on disk, the library answers with a :class:`ClawVMError` subclass (one clear
line), a quarantined journal entry, or a check finding: never a raw sqlite3/SQLAlchemy/Python
exception, never a hang, never a corrupt entry applied, never a file it was refused on changed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.exc import SQLAlchemyError

from clawvm_store import (
    ClawVMError,
    CorruptDatabase,
    NotADatabase,
    NotFound,
    RecoveryReport,
    Store,
)
from clawvm_store.cli import app
from clawvm_store.journal import entry_checksum

PROJECT = "proj"
PLAN = "Goal: ship the payments fix\n- [x] read the handler\n- [ ] add the idempotency column"
PLAN_STEP = "- [ ] document the header"
NOTE = "original words from the agent"
THEME = "Prefers a dark theme in every editor."
FIXED_NOW = "2025-01-02T03:04:05.000006+00:00"


def fixed_clock() -> str:
    return FIXED_NOW


# --- helpers ---------------------------------------------------------------------------------


def sql(path: Path, statement: str, params: tuple[Any, ...] = ()) -> None:
    """Write to the database behind the library's back (what a hostile disk or user does)."""
    with closing(sqlite3.connect(path)) as con, con:
        con.execute(statement, params)


def rows(path: Path, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        con.row_factory = sqlite3.Row
        return con.execute(query, params).fetchall()


def journal_row(path: Path, lsn: int) -> Any:
    (row,) = rows(path, "SELECT * FROM journal WHERE lsn = ?", (lsn,))
    return row


def page_tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: [tuple(r) for r in rows(path, f"SELECT * FROM {name} ORDER BY 1, 2, 3")]
        for name in ("pages", "page_versions", "representations")
    }


def assert_clawvm_error(exc: BaseException) -> None:
    assert isinstance(exc, ClawVMError), f"raw {type(exc).__name__}: {exc}"
    assert not isinstance(exc, sqlite3.Error | SQLAlchemyError), type(exc).__mro__
    message = str(exc)
    assert message and "\n" not in message, repr(message)


def cli(db: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--db", str(db), *args], prog_name="clawvm")


def assert_cli_error(result: Result, *needles: str) -> str:
    """Exit 1, exactly one ``error: ...`` line on stderr, nothing on stdout, no traceback."""
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def sidecars(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f"{path.name}-"))


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM raises in the main thread after ``seconds``."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- tampered journal rows -------------------------------------------------------------------


@dataclass(frozen=True)
class Crashed:
    """A database left by an agent that died mid-turn (session ``dead``, owner gone)."""

    path: Path
    put: int  # lsn of an applied direct write (pref/theme@1)
    plan: int  # staged: set plan/dead
    note: int  # staged: set notes/dead (the one the tests tamper with)
    step: int  # staged: append to plan/dead


@pytest.fixture
def crashed(tmp_path: Path) -> Crashed:
    path = tmp_path / "crashed.db"
    store = Store.open(path)
    store.put("pref/theme", type="preference", content=THEME, project=PROJECT)
    (put,) = [entry.lsn for entry in store.journal_entries(state="applied")]
    dead = store.session("dead", project=PROJECT)
    plan = dead.stage("plan/dead", type="plan", content=PLAN).lsn
    note = dead.stage("notes/dead", type="conversation", content=NOTE).lsn
    step = dead.stage("plan/dead", type="plan", content=PLAN_STEP, op="append").lsn
    store.close()  # no boundary: the staged entries are left to recovery
    sql(path, "UPDATE sessions SET owner = NULL")
    assert [r["state"] for r in rows(path, "SELECT state FROM journal ORDER BY lsn")] == [
        "applied",
        "staged",
        "staged",
        "staged",
    ]
    return Crashed(path, put, plan, note, step)


def set_payload(path: Path, lsn: int, payload: str, *, checksummed: bool) -> None:
    """Replace an entry's payload; with ``checksummed`` also forge a matching checksum."""
    row = journal_row(path, lsn)
    checksum = row["checksum"]
    if checksummed:
        checksum = entry_checksum(
            project=row["project"],
            session_id=row["session_id"],
            key=row["key"],
            op=row["op"],
            page_type=row["page_type"],
            scope=row["scope"],
            payload_json=payload,
        )
    sql(
        path, "UPDATE journal SET payload = ?, checksum = ? WHERE lsn = ?", (payload, checksum, lsn)
    )


def assert_note_quarantined_rest_recovered(
    fx: Crashed, store: Store, report: RecoveryReport | None, problem: str
) -> None:
    """The tampered entry is quarantined and never applied; its siblings recover normally.

    ``report`` is None when the recovery ran inside ``Store.open``.
    """
    row = journal_row(fx.path, fx.note)
    assert (row["state"], row["reason"]) == ("quarantined", "CORRUPT")
    assert row["detail"].startswith(problem), row["detail"]
    assert row["detail"].endswith(" (was staged)"), row["detail"]
    assert rows(fx.path, "SELECT * FROM page_versions WHERE lsn = ?", (fx.note,)) == []
    assert rows(fx.path, "SELECT * FROM pages WHERE key = 'notes/dead'") == []
    with pytest.raises(NotFound):
        store.page("notes/dead", project=PROJECT, session="dead")
    if report is not None:
        assert report.quarantined == [(fx.note, row["detail"].removesuffix(" (was staged)"))]
        assert report.reapplied == []
        assert list(report.recovered) == ["dead"]
        assert report.recovered["dead"].committed == [fx.plan, fx.step]
        assert report.recovered["dead"].rejected == []
    plan = store.page("plan/dead", project=PROJECT, session="dead")
    assert (plan.version, plan.content) == (2, f"{PLAN}\n{PLAN_STEP}")
    states = rows(fx.path, "SELECT lsn, state, version FROM journal ORDER BY lsn")
    assert [tuple(r) for r in states] == [
        (fx.put, "applied", 1),
        (fx.plan, "applied", 1),
        (fx.note, "quarantined", None),
        (fx.step, "applied", 2),
    ]
    check = store.check()
    assert check.ok, check.findings
    assert store.recover() == RecoveryReport()  # idempotent: nothing left to do


@pytest.mark.parametrize("how", ["recover", "open"])
def test_checksum_mismatch_is_quarantined_never_applied(crashed: Crashed, how: str) -> None:
    fx = crashed
    # The content waits beside the row (journal_content); the row holds its SHA-256.
    (original,) = rows(fx.path, "SELECT content FROM journal_content WHERE lsn = ?", (fx.note,))
    evil = original["content"].replace("original words", "rm -rf / and other words")
    assert evil != original["content"] and evil.startswith("rm -rf")
    sql(fx.path, "UPDATE journal_content SET content = ? WHERE lsn = ?", (evil, fx.note))

    if how == "open":  # recovery on open (verify="pending")
        store = Store.open(fx.path)
        report = None
    else:
        store = Store.open(fx.path, recover=False)
        report = store.recover()
    try:
        problem = "content does not match its hash"
        assert journal_row(fx.path, fx.note)["detail"] == f"{problem} (was staged)"
        stored = json.dumps([tuple(r) for r in rows(fx.path, "SELECT * FROM representations")])
        assert "rm -rf" not in stored
        assert_note_quarantined_rest_recovered(fx, store, report, problem)
    finally:
        store.close()


PAYLOAD_CASES = [
    pytest.param('{"content":"original wo', False, "checksum mismatch", id="truncated"),
    pytest.param('{"content":"original wo', True, "undecodable entry", id="truncated-forged"),
    pytest.param("not json at all", True, "undecodable entry", id="text-forged"),
    pytest.param(
        "[1, 2, 3]", True, "undecodable entry: payload is not an object", id="array-forged"
    ),
    pytest.param("", True, "undecodable entry", id="empty-forged"),
]


@pytest.mark.parametrize(("payload", "checksummed", "problem"), PAYLOAD_CASES)
def test_undecodable_payload_is_quarantined(
    crashed: Crashed, payload: str, checksummed: bool, problem: str
) -> None:
    fx = crashed
    set_payload(fx.path, fx.note, payload, checksummed=checksummed)
    store = Store.open(fx.path, recover=False)
    try:
        report = store.recover()
        assert_note_quarantined_rest_recovered(fx, store, report, problem)
    finally:
        store.close()


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param("X'00ff504b0304'", id="blob"),
        pytest.param("CAST(X'7b22636f6e74656e74223a22ff227d' AS TEXT)", id="invalid-utf8-text"),
    ],
)
def test_payload_that_is_not_text_is_quarantined(crashed: Crashed, expression: str) -> None:
    """Bytes where JSON text belongs are a corrupt entry like any other: quarantine, go on.

    One such row must not make recovery (and so every ``Store.open``) fail for good.
    """
    fx = crashed
    sql(fx.path, f"UPDATE journal SET payload = {expression} WHERE lsn = ?", (fx.note,))
    store = Store.open(fx.path, recover=False)
    try:
        try:
            report = store.recover()
        except Exception as exc:
            raise AssertionError(
                f"recovery failed on one undecodable entry: {type(exc).__name__}: {exc}"
            ) from exc
        assert [lsn for lsn, _ in report.quarantined] == [fx.note]
        row = rows(fx.path, "SELECT state, reason FROM journal WHERE lsn = ?", (fx.note,))
        assert [tuple(r) for r in row] == [("quarantined", "CORRUPT")]
        assert rows(fx.path, "SELECT * FROM pages WHERE key = 'notes/dead'") == []
        assert report.recovered["dead"].committed == [fx.plan, fx.step]
        assert store.check().ok
    finally:
        store.close()
    Store.open(fx.path).close()  # and the store opens normally afterwards


def test_checksummed_but_invalid_payload_is_rejected_not_applied(crashed: Crashed) -> None:
    """A payload that verifies but breaks the schema goes through validation: SCHEMA_INVALID."""
    fx = crashed
    payload = json.loads(journal_row(fx.path, fx.note)["payload"])
    del payload["content_sha256"]
    payload["content"] = 42
    sql(fx.path, "DELETE FROM journal_content WHERE lsn = ?", (fx.note,))
    set_payload(fx.path, fx.note, json.dumps(payload), checksummed=True)
    store = Store.open(fx.path, recover=False)
    try:
        report = store.recover()
        assert report.quarantined == []
        assert report.recovered["dead"].committed == [fx.plan, fx.step]
        assert report.recovered["dead"].rejected == [(fx.note, "SCHEMA_INVALID")]
        row = journal_row(fx.path, fx.note)
        assert (row["state"], row["reason"], row["detail"]) == (
            "rejected",
            "SCHEMA_INVALID",
            "content must be text",
        )
        assert rows(fx.path, "SELECT * FROM pages WHERE key = 'notes/dead'") == []
        assert store.check().ok
    finally:
        store.close()


def test_corrupt_applied_entry_is_quarantined_by_full_verification(crashed: Crashed) -> None:
    fx = crashed
    store = Store.open(fx.path)  # recovers the dead session; pages are now final
    store.close()
    before = page_tables(fx.path)
    original = journal_row(fx.path, fx.put)["payload"]
    # An applied entry keeps its content as a SHA-256 (its version holds the text): flip that.
    assert '"content_sha256":"' in original and "dark" not in original
    sql(
        fx.path,
        "UPDATE journal SET payload = ? WHERE lsn = ?",
        (original.replace('"content_sha256":"', '"content_sha256":"0'), fx.put),
    )

    store = Store.open(fx.path)  # open verifies pending entries only: this one is applied
    try:
        assert journal_row(fx.path, fx.put)["state"] == "applied"
        check = store.check()
        assert not check.ok
        assert [(f.code, f.message) for f in check.findings] == [
            ("journal_checksum", f"journal lsn {fx.put}: checksum mismatch")
        ]
        report = store.recover()  # verify="all"
        assert report.quarantined == [(fx.put, "checksum mismatch")]
        assert (report.reapplied, report.recovered) == ([], {})
        row = journal_row(fx.path, fx.put)
        assert (row["state"], row["reason"], row["detail"]) == (
            "quarantined",
            "CORRUPT",
            "checksum mismatch (was applied)",
        )
        assert page_tables(fx.path) == before  # the pages it produced are untouched
        assert store.page("pref/theme", project=PROJECT).content == THEME
        assert store.check().ok
        assert store.recover() == RecoveryReport()
    finally:
        store.close()


# --- damaged rows outside the journal --------------------------------------------------------

DAMAGED_ROWS = [
    pytest.param("representations", "fidelity", "'fu' || char(31) || 'll'", id="fidelity"),
    pytest.param("representations", "tokens", "'many'", id="tokens"),
    pytest.param("page_versions", "type", "'bogus'", id="version-type"),
    pytest.param("page_versions", "op", "'bogus'", id="version-op"),
    pytest.param("page_versions", "fields", "'{not json'", id="version-fields"),
    pytest.param("pages", "type", "'bogus'", id="page-type"),
]


@pytest.fixture(scope="module")
def two_pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("damaged") / "two-pages.db"
    with Store.open(path, clock=fixed_clock) as store:
        store.put("pref/theme", type="preference", content=THEME, project=PROJECT)
        store.put("notes/a", type="conversation", content="hello world", project=PROJECT)
    return path


@pytest.mark.parametrize(("table", "column", "value"), DAMAGED_ROWS)
def test_damaged_row_is_a_finding_not_a_crash(
    two_pages: Path, tmp_path: Path, table: str, column: str, value: str
) -> None:
    """A row whose value no longer decodes: check() says so; reads raise ClawVMError or work."""
    path = tmp_path / "damaged.db"
    path.write_bytes(two_pages.read_bytes())
    where = {
        "pages": "id = 1",
        "page_versions": "page_id = 1",
        "representations": "page_id = 1 AND fidelity = 'full'",
    }[table]
    sql(path, f"UPDATE {table} SET {column} = {value} WHERE {where}")
    store = Store.open(path)
    problems: dict[str, str] = {}
    try:
        try:
            report = store.check()
        except ClawVMError as exc:
            assert_clawvm_error(exc)
        except Exception as exc:
            problems["check"] = f"raw {type(exc).__name__}: {exc}"
        else:
            if report.ok or not report.findings:
                problems["check"] = f"ok with {table}.{column} = {value}"
        reads: dict[str, Callable[[], object]] = {
            "page": lambda: store.page("pref/theme", project=PROJECT),
            "history": lambda: store.history("pref/theme", project=PROJECT),
            "pages": lambda: store.pages(project=PROJECT),
        }
        for name, read in reads.items():
            try:
                read()
            except ClawVMError as exc:
                assert_clawvm_error(exc)
            except Exception as exc:
                problems[name] = f"raw {type(exc).__name__}: {exc}"
    finally:
        store.close()
    assert not problems, problems


def test_check_detects_tampered_lower_fidelity(two_pages: Path, tmp_path: Path) -> None:
    """Editing a stored compressed/structured text (same token count) must not pass check()."""
    path = tmp_path / "tampered.db"
    path.write_bytes(two_pages.read_bytes())
    (row,) = rows(
        path,
        "SELECT r.content, r.tokens FROM representations r JOIN pages p ON p.id = r.page_id "
        "WHERE p.key = 'pref/theme' AND r.fidelity = 'compressed'",
    )
    tampered = row["content"].replace("dark", "pink")
    store = Store.open(path)
    try:
        assert tampered != row["content"]
        assert store.counter.count(tampered) == row["tokens"]  # the token recount cannot see it
    finally:
        store.close()
    sql(
        path,
        "UPDATE representations SET content = ? WHERE fidelity = 'compressed' AND page_id = "
        "(SELECT id FROM pages WHERE key = 'pref/theme')",
        (tampered,),
    )
    with Store.open(path) as store:
        report = store.check()
    assert not report.ok, "check() passed a database whose compressed text was rewritten"


def test_undecodable_schema_text_is_a_clawvm_error(two_pages: Path, tmp_path: Path) -> None:
    """A damaged byte in sqlite_master makes SQLite's own error message undecodable."""
    data = bytearray(two_pages.read_bytes())
    start = data.find(b"CREATE TABLE journal (")
    assert start > 0
    data[data.index(b"(", start)] = 0xB9
    path = tmp_path / "schema.db"
    path.write_bytes(bytes(data))
    with pytest.raises(Exception) as caught:
        Store.open(path).close()
    assert_clawvm_error(caught.value)
    assert isinstance(caught.value, CorruptDatabase), type(caught.value)
    assert path.read_bytes() == data
    result = cli(path, "check")
    assert_cli_error(result, "damaged")


# --- truncated, empty and foreign files ------------------------------------------------------


@pytest.fixture(scope="module")
def valid_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a closed, checkpointed database with 90 pages: enough that the data
    outweighs the nearly empty root page each of the fifty-odd tables and indexes has."""
    path = tmp_path_factory.mktemp("valid") / "valid.db"
    with Store.open(path, clock=fixed_clock) as store:  # same bytes on every run
        for i in range(90):
            store.put(
                f"notes/n{i:02d}",
                type="conversation",
                content=f"note {i}: " + "the agent read the handler and its tests. " * 12,
                project=PROJECT,
            )
        # Applied entries give their content up to their versions, which leaves free pages in
        # the file; without them every flipped byte lands in data someone vouches for.
        store.vacuum()
    assert sidecars(path) == []
    data = path.read_bytes()
    assert data[:16] == b"SQLite format 3\x00"
    return data


def page_size(data: bytes) -> int:
    size = int.from_bytes(data[16:18], "big")
    return 65536 if size == 1 else size


TRUNCATIONS = [
    pytest.param(lambda d: len(d) // 2, CorruptDatabase, "malformed", id="half"),
    pytest.param(page_size, CorruptDatabase, "malformed", id="first-page"),
    pytest.param(lambda d: 100, CorruptDatabase, "malformed", id="100-bytes"),
    pytest.param(lambda d: 16, NotADatabase, "not an SQLite database", id="header-only"),
]


@pytest.mark.parametrize(("cut", "error", "needle"), TRUNCATIONS)
def test_truncated_database_is_refused_with_one_line(
    valid_db: bytes,
    tmp_path: Path,
    cut: Callable[[bytes], int],
    error: type[ClawVMError],
    needle: str,
) -> None:
    data = valid_db[: cut(valid_db)]
    assert 0 < len(data) < len(valid_db)
    path = tmp_path / "truncated.db"
    path.write_bytes(data)
    with pytest.raises(ClawVMError) as caught:
        Store.open(path)
    assert_clawvm_error(caught.value)
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    assert needle in str(caught.value)
    assert path.read_bytes() == data
    assert_cli_error(cli(path, "check"), needle)
    assert path.read_bytes() == data


def test_empty_file_is_treated_as_a_new_database(tmp_path: Path) -> None:
    """SQLite's own rule: a zero-byte file is an empty database; Store.open creates the schema."""
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with Store.open(path) as store:
        info = store.info()
        assert info.schema_revision == info.head_revision
        assert store.pages() == []
        assert store.check().ok
    assert path.stat().st_size > 0
    # Commands that only read (everything but init and demo) refuse to turn an empty file into
    # a database: a typo in --db must not leave a fresh schema behind.
    other = tmp_path / "empty-cli.db"
    other.write_bytes(b"")
    result = cli(other, "check")
    assert_cli_error(result, "empty file")
    assert other.read_bytes() == b""


def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02" + bytes(
        64
    )


FOREIGN_FILES = [
    pytest.param(
        lambda: random.Random(7).randbytes(8192), "is not an SQLite database", id="random-bytes"
    ),
    pytest.param(
        lambda: b"hello, this is a text file\n" * 100, "is not an SQLite database", id="text"
    ),
    pytest.param(_png, "is not an SQLite database", id="png"),
    pytest.param(
        lambda: b"SQLite format 3\x00" + random.Random(8).randbytes(8176),
        "file is not a database",
        id="sqlite-header-then-noise",
    ),
]


@pytest.mark.parametrize(("make", "needle"), FOREIGN_FILES)
def test_file_that_is_not_sqlite_is_refused_untouched(
    tmp_path: Path, make: Callable[[], bytes], needle: str
) -> None:
    data = make()
    path = tmp_path / "notadb.db"
    path.write_bytes(data)
    with pytest.raises(ClawVMError) as caught:
        Store.open(path)
    assert_clawvm_error(caught.value)
    assert type(caught.value) is NotADatabase, f"{type(caught.value).__name__}: {caught.value}"
    assert needle in str(caught.value)
    assert path.read_bytes() == data
    assert sidecars(path) == []
    assert_cli_error(cli(path, "check"), needle)
    assert path.read_bytes() == data


def test_foreign_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "someone-elses.db"
    with closing(sqlite3.connect(path)) as con, con:
        con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO users VALUES (1, 'ada')")
    data = path.read_bytes()
    with pytest.raises(NotADatabase, match="users"):
        Store.open(path)
    assert path.read_bytes() == data
    assert_cli_error(cli(path, "check"), "users")
    assert path.read_bytes() == data


# --- random byte flips -----------------------------------------------------------------------

SEEDS = range(30)

# What check() vouches for: the pages, every stored fidelity, and the checksummed journal
# columns. A flip elsewhere (a timestamp, free space) may legitimately go unnoticed.
PROTECTED = {
    "pages": "id, project, session_id, key, type, scope, pin, priority, version, provenance, "
    "deleted",
    "page_versions": "page_id, version, type, op, pin, priority, scope, provenance, fields, "
    "content_hash, deleted, lsn",
    "representations": "page_id, version, fidelity, content, tokens",
    "journal": "lsn, session_id, project, key, op, page_type, scope, payload, checksum",
}


def protected_content(path: Path) -> dict[str, list[tuple[Any, ...]]] | str:
    """What check() vouches for, read by plain sqlite3; a string when it cannot be read."""
    try:
        return {
            table: sorted(
                (tuple(r) for r in rows(path, f"SELECT {columns} FROM {table}")), key=repr
            )
            for table, columns in PROTECTED.items()
        }
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        return f"unreadable: {type(exc).__name__}: {exc}"


def flip(data: bytes, seed: int) -> tuple[bytes, list[int]]:
    """XOR 1-4 bytes after the 100-byte header with random non-zero masks."""
    rng = random.Random(seed)
    damaged = bytearray(data)
    offsets = []
    for _ in range(1 + seed % 4):
        offset = rng.randrange(100, len(damaged))
        damaged[offset] ^= rng.randrange(1, 256)
        offsets.append(offset)
    return bytes(damaged), offsets


def test_random_byte_flips_never_escape_or_pass_silently(valid_db: bytes, tmp_path: Path) -> None:
    original = protected_content_of(valid_db, tmp_path / "original.db")
    assert isinstance(original, dict)
    outcomes: dict[str, list[int]] = {"error": [], "findings": [], "benign": []}
    problems: list[str] = []
    for seed in SEEDS:
        data, offsets = flip(valid_db, seed)
        assert data != valid_db
        path = tmp_path / f"flipped-{seed}.db"
        path.write_bytes(data)
        content = protected_content(path)
        changed = (
            [table for table in PROTECTED if content[table] != original[table]]
            if isinstance(content, dict)
            else [content]
        )
        where = f"seed {seed} (offsets {offsets})"
        try:
            with deadline(20):
                try:
                    store = Store.open(path)
                    try:
                        report = store.check()
                    finally:
                        store.close()
                except ClawVMError as exc:
                    assert_clawvm_error(exc)
                    outcomes["error"].append(seed)
                    continue
        except TimeoutError as exc:
            problems.append(f"{where}: hung ({exc})")
            continue
        except Exception as exc:
            problems.append(f"{where}: raw {type(exc).__name__}: {exc}")
            continue
        if not report.ok:
            assert report.findings
            outcomes["findings"].append(seed)
        elif not changed:
            outcomes["benign"].append(seed)  # the flip hit bytes check() does not vouch for
        else:
            problems.append(f"{where}: check() is ok but the stored content changed: {changed}")
    print({kind: len(seeds) for kind, seeds in outcomes.items()}, outcomes)
    assert not problems, "\n".join(problems)
    assert len(outcomes["error"]) + len(outcomes["findings"]) >= len(SEEDS) // 2


def protected_content_of(data: bytes, path: Path) -> dict[str, list[tuple[Any, ...]]] | str:
    path.write_bytes(data)
    try:
        return protected_content(path)
    finally:
        os.remove(path)
