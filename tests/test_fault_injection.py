"""Fail at step N, for every N: real driver errors injected into every write path.

An :class:`Injector` counts the steps the store takes on its SQLAlchemy engine: every BEGIN
(``begin`` event), every statement (``before_cursor_execute``) and every COMMIT (the dialect's
``do_commit``), and at the Nth step raises a genuine ``sqlite3.OperationalError`` ("disk I/O
error" or "database or disk is full"), where and as the driver would: SQLAlchemy wraps it exactly
as a real one. Each scenario runs once without faults to learn how many steps it takes (S) and
what the finished state looks like, then once per N = 1 .. S+1 from a byte-identical copy of a
template database. For every N the operation either raises a translated :class:`ClawVMError`
(never a raw sqlite3/SQLAlchemy error) and the database is exactly as it was before (every table
compared row by row), or it completes (only at N = S+1) and the database is exactly the state of
the fault-free run. After a failure the same objects retry and reach that same finished state.

A fixed clock makes every timestamp deterministic, so "exactly" means equal rows; only the
random owner token of a session is normalized to "has an owner".
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from clawvm_store import (
    ClawVMError,
    DatabaseError,
    DestructiveWrite,
    RecoveryReport,
    StorageFull,
    Store,
    WritebackResult,
)
from clawvm_store.representations import text_sha256

PROJECT = "proj"
FIXED_NOW = "2025-01-02T03:04:05.000006+00:00"

PLAN = "Goal: ship the payments fix\n- [x] read the handler\n- [ ] add the idempotency column"
PLAN_STEP = "- [ ] document the header"

# (message injected, the ClawVMError subclass it must arrive as)
FAULTS = [
    pytest.param("disk I/O error", DatabaseError, id="io-error"),
    pytest.param("database or disk is full", StorageFull, id="disk-full"),
]

Dump = dict[str, list[tuple[Any, ...]]]


def fixed_clock() -> str:
    return FIXED_NOW


def open_store(path: Path, *, recover: bool = True) -> Store:
    return Store.open(path, clock=fixed_clock, recover=recover)


# --- the injector ----------------------------------------------------------------------------


class Injector:
    """Counts BEGINs, statements and COMMITs on an engine; raises at step ``fail_at``."""

    last: Injector | None = None  # the most recent one armed, for failure messages

    def __init__(self, engine: Engine, fail_at: int | None, message: str) -> None:
        self.engine = engine
        self.fail_at = fail_at
        self.message = message
        self.steps: list[str] = []
        self.fired_at: str | None = None

    def _due(self, what: str) -> bool:
        self.steps.append(what)
        return self.fail_at is not None and len(self.steps) == self.fail_at

    def _fail(self, what: str) -> None:
        self.fired_at = what
        raise sqlite3.OperationalError(self.message)

    def _step(self, what: str) -> None:
        if self._due(what):
            self._fail(what)

    def _before_cursor_execute(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        self._step(" ".join(statement.split())[:80])

    def _begin(self, conn: Any) -> None:
        # SQLAlchemy ignores insert=True for connection events, so this runs after the library's
        # own "begin" listener has emitted BEGIN; undo it so that the failure leaves exactly
        # what a failed BEGIN statement leaves: no transaction.
        if self._due("BEGIN"):
            driver = conn.connection.dbapi_connection
            if driver.in_transaction:
                driver.execute("ROLLBACK")
            self._fail("BEGIN")

    def _do_commit(self, dbapi_connection: Any) -> None:
        # In place of the dialect's do_commit, so a failed COMMIT reaches SQLAlchemy exactly as
        # a driver error from ``connection.commit()`` would (and the transaction stays open).
        self._step("COMMIT")
        self._driver_commit(dbapi_connection)

    @property
    def fired(self) -> bool:
        return self.fired_at is not None

    def __enter__(self) -> Injector:
        Injector.last = self
        dialect = self.engine.dialect
        assert "do_commit" not in vars(dialect)
        self._driver_commit = dialect.do_commit
        event.listen(self.engine, "begin", self._begin)
        event.listen(self.engine, "before_cursor_execute", self._before_cursor_execute)
        dialect.do_commit = self._do_commit  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.engine.dialect.do_commit
        event.remove(self.engine, "before_cursor_execute", self._before_cursor_execute)
        event.remove(self.engine, "begin", self._begin)


def assert_translated(exc: BaseException, expected: type[ClawVMError], message: str) -> None:
    """A failure must arrive as the matching ClawVMError subclass, never as a driver error."""
    assert isinstance(exc, ClawVMError), f"untranslated {type(exc).__name__}: {exc}"
    assert not isinstance(exc, sqlite3.Error | SQLAlchemyError), type(exc).__mro__
    assert isinstance(exc, expected), f"{type(exc).__name__}: {exc}"
    assert message in str(exc), str(exc)


# --- database snapshots ----------------------------------------------------------------------


def dump(path: Path) -> Dump:
    """Every row of every table, read by a separate read-only connection, sorted."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [
            row[0]
            for row in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        out: Dump = {}
        for name in names:
            cursor = con.execute(f'SELECT * FROM "{name}"')
            columns = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
            if name == "sessions":  # the owner tag holds a random per-store token
                owner = columns.index("owner")
                rows = [(*r[:owner], r[owner] is not None, *r[owner + 1 :]) for r in rows]
            out[name] = sorted(rows, key=repr)
        return out
    finally:
        con.close()


def query(path: Path, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows (sqlite3.Row) of a read-only query on a separate connection."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(statement, params).fetchall()
    finally:
        con.close()


def journal_rows(path: Path, where: str = "1", params: tuple[Any, ...] = ()) -> list[Any]:
    # With the content an entry keeps aside until it is applied (NULL once applied).
    return query(
        path,
        "SELECT j.*, c.content AS content FROM journal j LEFT JOIN journal_content c "
        f"ON c.lsn = j.lsn WHERE {where} ORDER BY j.lsn",
        params,
    )


def page_exists(path: Path, key: str) -> bool:
    return bool(query(path, "SELECT 1 FROM pages WHERE key = ?", (key,)))


def fresh_copy(template: Path, directory: Path, name: str) -> Path:
    target = directory / f"{name}.db"
    shutil.copyfile(template, target)
    return target


def assert_closed_cleanly(path: Path) -> None:
    """A closed store leaves one self-contained file (WAL checkpointed and removed)."""
    assert path.exists()
    assert not Path(f"{path}-wal").exists()


# --- the driver loop -------------------------------------------------------------------------


@dataclass
class Sweep:
    """What one "every N" sweep exercised."""

    steps: int  # S: steps of the fault-free run
    failures: int  # N values that raised
    exercised: int  # N values tried (S + 1)


def explained(name: str, fail_at: int | None, run: Callable[[int | None], Any]) -> Any:
    """``run(fail_at)``, with any failure reported with its N and the step the fault hit."""
    try:
        return run(fail_at)
    except Exception as exc:
        injector = Injector.last
        step = injector.fired_at if injector is not None else None
        raise AssertionError(
            f"{name}, N={fail_at} (fault at {step!r}): {type(exc).__name__}: {exc}"
        ) from exc


def sweep(
    name: str,
    run: Callable[[int | None], Any],
) -> Sweep:
    """Call ``run(None)`` (fault-free) then ``run(N)`` for N = 1, 2, ...

    ``run(None)`` returns the number of steps S of the fault-free run; ``run(N)`` returns whether
    the fault fired. The loop stops at the first N whose run completed without reaching step N,
    which must be N = S + 1: every step of the operation was a fault point exactly once.
    """
    steps = explained(name, None, run)
    assert isinstance(steps, int) and not isinstance(steps, bool)
    failures = 0
    n = 0
    while True:
        n += 1
        assert n <= steps + 1, f"{name}: N={n} exceeds the fault-free step count {steps}"
        if not explained(name, n, run):
            break
        failures += 1
    assert n == steps + 1, f"{name}: completed at N={n}, fault-free run took {steps} steps"
    assert failures == steps
    print(f"{name}: {steps} steps, exercised N=1..{n} ({failures} injected failures)")
    assert n > 5, f"{name}: only {n} N values, the sweep is vacuous"
    return Sweep(steps=steps, failures=failures, exercised=n)


# --- templates -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault_injection")


@pytest.fixture(scope="module")
def base_template(workdir: Path) -> Path:
    """Committed pages only: pref/theme@1, pref/editor@2, boot/agents@1."""
    path = workdir / "base-template.db"
    store = open_store(path)
    store.put("pref/theme", type="preference", content="Prefers a dark theme.", project=PROJECT)
    store.put("pref/editor", type="preference", content="Uses vim.", project=PROJECT)
    store.put(
        "pref/editor",
        type="preference",
        content="Uses vim with relative line numbers.",
        project=PROJECT,
        expected_version=1,
    )
    store.put("boot/agents", type="bootstrap", content="# Rules\n- Run make test.", project=PROJECT)
    assert store.check().ok
    store.close()
    assert_closed_cleanly(path)
    return path


# --- Scenario A: a boundary writeback, validate + commit + apply -----------------------------

# Staged by session s1 before end_turn; index 3 is stale and must be rejected.
STAGES: list[dict[str, Any]] = [
    {"key": "plan/main", "type": "plan", "content": PLAN, "op": "set"},
    {"key": "plan/main", "type": "plan", "content": PLAN_STEP, "op": "append"},
    {
        "key": "pref/theme",
        "type": "preference",
        "content": "Prefers a light theme.",
        "op": "set",
        "expected_version": 1,
    },
    {
        "key": "pref/editor",
        "type": "preference",
        "content": "Uses emacs.",
        "op": "set",
        "expected_version": 1,  # stale: pref/editor is at version 2
    },
    {"key": "notes/conv", "type": "conversation", "content": "user: hello", "op": "set"},
    {"key": "notes/conv", "type": "conversation", "content": "assistant: hi", "op": "append"},
    {"key": "rules/git", "type": "constraint", "content": "Never push to main.", "op": "set"},
]
REJECTED_INDEX = 3

# key -> (page session, version, full content) once the boundary has happened
EXPECTED_PAGES = {
    "plan/main": ("s1", 2, f"{PLAN}\n{PLAN_STEP}"),
    "pref/theme": (None, 2, "Prefers a light theme."),
    "pref/editor": (None, 2, "Uses vim with relative line numbers."),
    "notes/conv": ("s1", 2, "user: hello\nassistant: hi"),
    "rules/git": ("s1", 1, "Never push to main."),
    "boot/agents": (None, 1, "# Rules\n- Run make test."),
}
# key -> (page session, version) before the boundary (None: no page yet)
PAGES_BEFORE = {
    "plan/main": None,
    "pref/theme": (None, 1),
    "pref/editor": (None, 2),
    "notes/conv": None,
    "rules/git": None,
    "boot/agents": (None, 1),
}


def assert_nothing_happened(store: Store, path: Path, lsns: list[int], before: Dump) -> None:
    """The boundary left no trace: entries still staged, no versions, no lifecycle event."""
    rows = journal_rows(path, "session_id = 's1'")
    assert [r["lsn"] for r in rows] == lsns
    assert [(r["state"], r["reason"], r["version"], r["event_id"]) for r in rows] == [
        ("staged", None, None, None)
    ] * len(lsns)
    assert query(path, "SELECT * FROM lifecycle_events WHERE session_id = 's1'") == []
    for key, head in PAGES_BEFORE.items():
        if head is None:
            assert not page_exists(path, key), key
        else:
            assert store.page(key, project=PROJECT, session="s1").version == head[1]
    assert dump(path) == before
    report = store.check()
    assert report.ok, report.findings


def assert_everything_happened(
    store: Store, path: Path, lsns: list[int], result: WritebackResult
) -> None:
    rejected = lsns[REJECTED_INDEX]
    accepted = [lsn for lsn in lsns if lsn != rejected]
    assert result.committed == accepted
    assert result.rejected == [(rejected, "DESTRUCTIVE_OP")]
    assert result.versions == dict(zip(accepted, [1, 2, 2, 1, 2, 1], strict=True))
    for key, (owner, version, content) in EXPECTED_PAGES.items():
        page = store.page(key, project=PROJECT, session="s1")
        assert (page.session, page.version, page.content) == (owner, version, content), key
    rows = journal_rows(path, "session_id = 's1'")
    assert [(r["lsn"], r["state"], r["reason"], r["version"]) for r in rows] == [
        (lsn, "rejected", "DESTRUCTIVE_OP", None)
        if lsn == rejected
        else (lsn, "applied", None, result.versions[lsn])
        for lsn in lsns
    ]
    assert "expected_version is 1" in rows[REJECTED_INDEX]["detail"]
    events = query(
        path,
        "SELECT boundary, turn, committed, rejected FROM lifecycle_events WHERE session_id = 's1'",
    )
    assert [tuple(e) for e in events] == [("turn_end", 0, 6, 1)]
    session = query(path, "SELECT state, turn FROM sessions WHERE id = 's1'")
    assert [tuple(r) for r in session] == [("open", 1)]
    report = store.check()
    assert report.ok, report.findings


@pytest.mark.parametrize(("message", "expected"), FAULTS)
def test_boundary_writeback_is_all_or_nothing_at_every_step(
    base_template: Path, workdir: Path, message: str, expected: type[ClawVMError]
) -> None:
    reference: dict[str, Any] = {}

    def run(fail_at: int | None) -> Any:
        path = fresh_copy(base_template, workdir, f"A-{expected.__name__}-{fail_at}")
        store = open_store(path)
        try:
            sess = store.session("s1", project=PROJECT)
            lsns = [sess.stage(**spec).lsn for spec in STAGES]
            before = dump(path)
            with Injector(store.db.engine, fail_at, message) as injector:
                try:
                    result = sess.end_turn()
                except Exception as exc:
                    failure: BaseException | None = exc
                else:
                    failure = None
            if failure is None:
                assert not injector.fired, f"fault at {injector.fired_at!r} was swallowed"
                assert_everything_happened(store, path, lsns, result)
                if fail_at is None:
                    reference.update(dump=dump(path), result=result)
                    return len(injector.steps)
                assert dump(path) == reference["dump"]
                assert result == reference["result"]
                return False
            assert injector.fired, f"failed without an injected fault: {failure!r}"
            assert_translated(failure, expected, message)
            assert_nothing_happened(store, path, lsns, before)
            # The store is usable and the same session retries the boundary to completion.
            retried = sess.end_turn()
            assert retried == reference["result"]
            assert dump(path) == reference["dump"]
            assert_everything_happened(store, path, lsns, retried)
            return True
        finally:
            store.close()

    swept = sweep(f"end_turn [{message}]", run)
    assert swept.failures > 5


# --- Scenario B: store.put (explicit boundary) and Session.stage ------------------------------


@pytest.mark.parametrize(("message", "expected"), FAULTS)
def test_put_is_all_or_nothing_at_every_step(
    base_template: Path, workdir: Path, message: str, expected: type[ClawVMError]
) -> None:
    reference: dict[str, Any] = {}

    def run(fail_at: int | None) -> Any:
        path = fresh_copy(base_template, workdir, f"B-put-{expected.__name__}-{fail_at}")
        store = open_store(path)
        try:
            before = dump(path)
            with Injector(store.db.engine, fail_at, message) as injector:
                try:
                    page = store.put(
                        "pref/theme",
                        type="preference",
                        content="Prefers a solarized theme.",
                        project=PROJECT,
                        expected_version=1,
                    )
                except Exception as exc:
                    failure: BaseException | None = exc
                else:
                    failure = None
            if failure is None:
                assert not injector.fired, f"fault at {injector.fired_at!r} was swallowed"
                assert (page.version, page.content) == (2, "Prefers a solarized theme.")
                rows = journal_rows(path, "key = 'pref/theme' AND version = 2")
                assert [(r["state"], r["reason"]) for r in rows] == [("applied", None)]
                assert store.check().ok
                if fail_at is None:
                    reference["dump"] = dump(path)
                    return len(injector.steps)
                assert dump(path) == reference["dump"]
                return False
            assert injector.fired, f"failed without an injected fault: {failure!r}"
            assert_translated(failure, expected, message)
            after = dump(path)
            assert after == before, f"put failed at step {fail_at} ({injector.fired_at}) " + (
                "but its write committed"
                if after == reference["dump"]
                else "and left a partial write"
            )
            assert store.page("pref/theme", project=PROJECT).version == 1
            assert store.check().ok
            # Retry succeeds and lands exactly where the fault-free run did.
            page = store.put(
                "pref/theme",
                type="preference",
                content="Prefers a solarized theme.",
                project=PROJECT,
                expected_version=1,
            )
            assert page.version == 2
            assert dump(path) == reference["dump"]
            return True
        finally:
            store.close()

    sweep(f"put [{message}]", run)


@pytest.mark.parametrize(("message", "expected"), FAULTS)
def test_rejected_put_is_all_or_nothing_at_every_step(
    base_template: Path, workdir: Path, message: str, expected: type[ClawVMError]
) -> None:
    """A put that validation rejects still writes its journal row: that too is atomic."""
    reference: dict[str, Any] = {}

    def attempt(store: Store) -> None:
        store.put(
            "pref/editor",
            type="preference",
            content="Uses nano.",
            project=PROJECT,
            expected_version=1,  # stale: the page is at version 2
        )

    def run(fail_at: int | None) -> Any:
        path = fresh_copy(base_template, workdir, f"B-rej-{expected.__name__}-{fail_at}")
        store = open_store(path)
        try:
            before = dump(path)
            with Injector(store.db.engine, fail_at, message) as injector:
                try:
                    attempt(store)
                except Exception as exc:
                    failure: BaseException = exc
                else:
                    raise AssertionError("a stale put was accepted")
            if isinstance(failure, DestructiveWrite):
                assert not injector.fired, f"fault at {injector.fired_at!r} was swallowed"
                assert failure.reason == "DESTRUCTIVE_OP"
                rows = journal_rows(path, "key = 'pref/editor' AND state = 'rejected'")
                assert [(r["lsn"], r["reason"]) for r in rows] == [(failure.lsn, "DESTRUCTIVE_OP")]
                assert store.page("pref/editor", project=PROJECT).version == 2
                assert store.check().ok
                if fail_at is None:
                    reference["dump"] = dump(path)
                    return len(injector.steps)
                assert dump(path) == reference["dump"]
                return False
            assert injector.fired, f"failed without an injected fault: {failure!r}"
            assert_translated(failure, expected, message)
            assert dump(path) == before
            assert store.check().ok
            with pytest.raises(DestructiveWrite):
                attempt(store)
            assert dump(path) == reference["dump"]
            return True
        finally:
            store.close()

    sweep(f"rejected put [{message}]", run)


# Three stages in a row; the injector counts across all of them, so every step of every stage
# is hit once (one stage alone is only BEGIN, INSERT, COMMIT).
STAGE_SEQUENCE: list[dict[str, Any]] = [
    {"key": "plan/main", "type": "plan", "content": PLAN, "op": "set"},
    {"key": "notes/conv", "type": "conversation", "content": "user: hello", "op": "append"},
    {
        "key": "pref/theme",
        "type": "preference",
        "content": "Prefers a light theme.",
        "op": "set",
        "expected_version": 1,
    },
]


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
@pytest.mark.parametrize(("message", "expected"), FAULTS)
def test_stage_is_all_or_nothing_at_every_step(
    base_template: Path,
    workdir: Path,
    message: str,
    expected: type[ClawVMError],
    idempotent: bool,
) -> None:
    reference: dict[str, Any] = {}
    tag = "idem" if idempotent else "plain"

    def idempotency_key(index: int) -> str | None:
        return f"turn-1/{index}" if idempotent else None

    def stage(sess: Any, index: int) -> Any:
        return sess.stage(**STAGE_SEQUENCE[index], idempotency_key=idempotency_key(index))

    def assert_staged(path: Path, receipts: list[Any]) -> None:
        """Exactly one staged journal row per acknowledged stage, and nothing else."""
        rows = journal_rows(path, "session_id = 's1'")
        assert [(r["lsn"], r["key"], r["op"], r["state"], r["idempotency_key"]) for r in rows] == [
            (receipt.lsn, spec["key"], spec["op"], "staged", idempotency_key(i))
            for i, (receipt, spec) in enumerate(zip(receipts, STAGE_SEQUENCE, strict=False))
        ]
        for row, spec in zip(rows, STAGE_SEQUENCE, strict=False):
            payload = json.loads(row["payload"])
            assert row["content"] == spec["content"]
            assert payload["content_sha256"] == text_sha256(spec["content"])
            assert payload.get("expected_version") == spec.get("expected_version")
        assert not any(receipt.duplicate for receipt in receipts)

    def run(fail_at: int | None) -> Any:
        path = fresh_copy(base_template, workdir, f"B-stage-{tag}-{expected.__name__}-{fail_at}")
        store = open_store(path)
        try:
            sess = store.session("s1", project=PROJECT)
            before = dump(path)
            receipts: list[Any] = []
            failure: BaseException | None = None
            with Injector(store.db.engine, fail_at, message) as injector:
                for index in range(len(STAGE_SEQUENCE)):
                    try:
                        receipts.append(stage(sess, index))
                    except Exception as exc:
                        failure = exc
                        break
            if failure is None:
                assert not injector.fired, f"fault at {injector.fired_at!r} was swallowed"
                assert_staged(path, receipts)
                if idempotent:  # a repeat is answered from the journal, not written again
                    again = stage(sess, 0)
                    assert (again.lsn, again.duplicate) == (receipts[0].lsn, True)
                if fail_at is None:
                    reference["dump"] = dump(path)
                    return len(injector.steps)
                assert dump(path) == reference["dump"]
                return False
            assert injector.fired, f"failed without an injected fault: {failure!r}"
            assert_translated(failure, expected, message)
            # The failed stage left no row; each acknowledged one left exactly one.
            assert_staged(path, receipts)
            after = dump(path)
            # A stage writes its journal row and the content it keeps aside, nothing else.
            staging = ("journal", "journal_content")
            assert {k: v for k, v in after.items() if k not in staging} == {
                k: v for k, v in before.items() if k not in staging
            }
            assert store.check().ok
            for index in range(len(receipts), len(STAGE_SEQUENCE)):
                receipts.append(stage(sess, index))
            assert_staged(path, receipts)
            assert dump(path) == reference["dump"]
            return True
        finally:
            store.close()

    sweep(f"stage/{tag} [{message}]", run)


# --- Scenario C: recovery --------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryFixture:
    path: Path
    valid: list[int]  # staged entries of the dead session that will commit
    stale: int  # staged entry of the dead session that will be rejected (DESTRUCTIVE_OP)
    corrupt: int  # staged entry of the dead session whose content no longer matches its hash
    unapplied: int  # committed-but-unapplied entry of another dead session


@pytest.fixture(scope="module")
def recovery_template(base_template: Path, workdir: Path) -> RecoveryFixture:
    """A crashed agent: staged entries of a dead session, one corrupt, one committed-unapplied."""
    path = workdir / "recovery-template.db"
    shutil.copyfile(base_template, path)
    store = open_store(path)
    dead = store.session("dead", project=PROJECT)
    valid = [
        dead.stage("plan/dead", type="plan", content=PLAN).lsn,
        dead.stage("plan/dead", type="plan", content=PLAN_STEP, op="append").lsn,
    ]
    stale = dead.stage("pref/theme", type="preference", content="Stale.", expected_version=7).lsn
    corrupt = dead.stage("notes/evil", type="conversation", content="harmless text").lsn
    valid.append(
        dead.stage("pref/theme", type="preference", content="Likes blue.", expected_version=1).lsn
    )
    crashed = store.session("crashed", project=PROJECT)
    unapplied = crashed.stage("notes/crashed", type="conversation", content="half done").lsn
    store.close()  # no boundary: both sessions die with their entries pending
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE sessions SET owner = NULL")
        con.execute(
            "UPDATE journal_content SET content = replace(content, 'harmless', 'malicious') "
            "WHERE lsn = ?",
            (corrupt,),
        )
        con.execute(
            "UPDATE journal SET state = 'committed', version = 1 WHERE lsn = ?", (unapplied,)
        )
    con.close()
    return RecoveryFixture(path, valid, stale, corrupt, unapplied)


def assert_recovered(store: Store, path: Path, fx: RecoveryFixture, report: RecoveryReport) -> None:
    assert report.quarantined == [(fx.corrupt, "content does not match its hash")]
    assert report.reapplied == [fx.unapplied]
    assert list(report.recovered) == ["dead"]
    result = report.recovered["dead"]
    assert result.boundary == "recovery"
    assert result.committed == fx.valid
    assert result.rejected == [(fx.stale, "DESTRUCTIVE_OP")]
    assert result.versions == dict(zip(fx.valid, [1, 2, 2], strict=True))
    states = {r["lsn"]: (r["state"], r["reason"]) for r in journal_rows(path)}
    assert states[fx.corrupt] == ("quarantined", "CORRUPT")
    assert states[fx.unapplied] == ("applied", None)
    assert states[fx.stale] == ("rejected", "DESTRUCTIVE_OP")
    assert all(states[lsn] == ("applied", None) for lsn in fx.valid)
    assert (
        store.page("plan/dead", project=PROJECT, session="dead").content == f"{PLAN}\n{PLAN_STEP}"
    )
    assert store.page("pref/theme", project=PROJECT).content == "Likes blue."
    assert store.page("notes/crashed", project=PROJECT, session="crashed").version == 1
    assert not page_exists(path, "notes/evil")
    report_check = store.check()
    assert report_check.ok, report_check.findings


@pytest.mark.parametrize(("message", "expected"), FAULTS)
def test_recovery_is_all_or_nothing_at_every_step(
    recovery_template: RecoveryFixture,
    workdir: Path,
    message: str,
    expected: type[ClawVMError],
) -> None:
    fx = recovery_template
    reference: dict[str, Any] = {}

    def finish(store: Store, path: Path) -> None:
        """After the attempt: a clean recover() completes the job; another changes nothing."""
        done = dump(path)
        again = store.recover()
        assert again == RecoveryReport()
        assert not again.changed
        assert dump(path) == done
        assert store.check().ok

    def run(fail_at: int | None) -> Any:
        path = fresh_copy(fx.path, workdir, f"C-{expected.__name__}-{fail_at}")
        store = open_store(path, recover=False)
        try:
            before = dump(path)
            findings_before = store.check().findings
            with Injector(store.db.engine, fail_at, message) as injector:
                try:
                    report = store.recover()
                except Exception as exc:
                    failure: BaseException | None = exc
                else:
                    failure = None
            if failure is None:
                assert not injector.fired, f"fault at {injector.fired_at!r} was swallowed"
                assert_recovered(store, path, fx, report)
                if fail_at is None:
                    reference.update(dump=dump(path), report=report)
                    finish(store, path)
                    return len(injector.steps)
                assert report == reference["report"]
                assert dump(path) == reference["dump"]
                finish(store, path)
                return False
            assert injector.fired, f"failed without an injected fault: {failure!r}"
            assert_translated(failure, expected, message)
            assert dump(path) == before
            assert store.check().findings == findings_before
            report = store.recover()
            assert report == reference["report"]
            assert dump(path) == reference["dump"]
            assert_recovered(store, path, fx, report)
            finish(store, path)
            return True
        finally:
            store.close()

    sweep(f"recover [{message}]", run)


def test_recovery_template_is_really_pending(recovery_template: RecoveryFixture) -> None:
    """Guard against a vacuous Scenario C: before recovery, check sees the damage and the work."""
    fx = recovery_template
    path = fresh_copy(fx.path, fx.path.parent, "C-guard")
    store = open_store(path, recover=False)
    try:
        codes = sorted((f.code, f.message) for f in store.check().findings)
        assert codes == [
            ("journal_checksum", f"journal lsn {fx.corrupt}: content does not match its hash"),
            ("journal_unapplied", f"journal lsn {fx.unapplied} is committed but not applied"),
        ]
        states = [r["state"] for r in journal_rows(path, "session_id = 'dead'")]
        assert states == ["staged"] * 5
    finally:
        store.close()


# --- Scenario D: end_turn(messages): a turn's last batch and its boundary in one transaction ---

TURN_MESSAGES = [
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call-1", "name": "read_file", "arguments": '{"path": "a.py"}'}],
    },
    {"role": "tool", "content": "def charge(order):\n    ...\n" * 8, "tool_call_id": "call-1"},
    {"role": "assistant", "content": "The check belongs before the ledger write."},
]


@pytest.mark.parametrize(("message", "expected"), FAULTS)
def test_end_turn_with_messages_is_all_or_nothing_at_every_step(
    base_template: Path, workdir: Path, message: str, expected: type[ClawVMError]
) -> None:
    reference: dict[str, Any] = {}

    def said(sess: Any) -> list[tuple[str, str, str | None]]:
        return [(m.role, m.content, m.tool_call_id) for m in sess.messages()]

    def run(fail_at: int | None) -> Any:
        path = fresh_copy(base_template, workdir, f"D-{expected.__name__}-{fail_at}")
        store = open_store(path)
        try:
            sess = store.session("s1", project=PROJECT)
            first = sess.append_message("user", "Where does the idempotency check go?")
            before = dump(path)
            with Injector(store.db.engine, fail_at, message) as injector:
                try:
                    result = sess.end_turn(TURN_MESSAGES)
                except Exception as exc:
                    failure: BaseException | None = exc
                else:
                    failure = None
            if failure is None:
                assert not injector.fired, f"fault at {injector.fired_at!r} was swallowed"
                staged = [receipt.lsn for receipt in result.staged]
                assert result.committed == [first.lsn, *staged]
                assert result.rejected == []
                assert len(staged) == len(TURN_MESSAGES)
                rows = journal_rows(path, "session_id = 's1'")
                assert [r["state"] for r in rows] == ["applied"] * 4
                if fail_at is None:
                    reference.update(dump=dump(path), said=said(sess))
                    assert [role for role, _, _ in reference["said"]] == [
                        "user",
                        "assistant",
                        "tool",
                        "assistant",
                    ]
                    return len(injector.steps)
                assert dump(path) == reference["dump"]
                return False
            assert injector.fired, f"failed without an injected fault: {failure!r}"
            assert_translated(failure, expected, message)
            # Neither the batch nor the boundary happened: the user message is still staged.
            assert dump(path) == before
            rows = journal_rows(path, "session_id = 's1'")
            assert [(r["lsn"], r["state"]) for r in rows] == [(first.lsn, "staged")]
            assert store.check().ok
            # The same session retries; message numbers once handed out are not reused, so
            # the retried batch says the same things under later keys.
            retried = sess.end_turn(TURN_MESSAGES)
            assert retried.rejected == []
            assert len(retried.committed) == 4
            assert said(sess) == reference["said"]
            assert store.check().ok
            return True
        finally:
            store.close()

    swept = sweep(f"end_turn(messages) [{message}]", run)
    assert swept.failures > 5
