"""Query limits: ``store.query(..., timeout=)``, ``clawvm sql --timeout``, Ctrl-C, introspection.

A runaway read must end, on both backends, with one ``QueryTimeout`` line and its snapshot
released; Ctrl-C must end it cleanly (exit 130, one line); read-only schema introspection works.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import clawvm_store as cvm
from clawvm_store.cli import DEFAULT_SQL_TIMEOUT_S, app

RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"
# The same, reading a table too, so that it holds a read snapshot of the database.
RUNAWAY_READER = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c)"
    " SELECT count(*) FROM c, (SELECT count(*) FROM pages) AS p"
)
TIMEOUT_LINE = (
    "error: the query ran past its {limit} s time limit and was stopped; nothing was changed "
    "(allow it longer with timeout= or `clawvm sql --timeout SECONDS`)"
)


def invoke(target: str, *args: str) -> Any:
    return CliRunner().invoke(app, ["--db", target, *args])


def seeded(target: str) -> None:
    with cvm.Store.open(target) as store:
        store.put("policy/agents", type="bootstrap", content="Be careful.", project="p")


def test_query_timeout_is_a_clawvm_error_exported_with_the_others() -> None:
    assert issubclass(cvm.QueryTimeout, cvm.ClawVMError)
    assert "QueryTimeout" in cvm.__all__
    assert DEFAULT_SQL_TIMEOUT_S == 30.0


def test_a_runaway_query_stops_at_its_timeout(db_target: str) -> None:
    seeded(db_target)
    with cvm.Store.open(db_target) as store:
        started = time.monotonic()
        with pytest.raises(cvm.QueryTimeout) as caught:
            store.query(RUNAWAY, timeout=0.3)
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 3.0
        assert str(caught.value) == TIMEOUT_LINE.removeprefix("error: ").format(limit="0.3")
        # The store is fine afterwards, and a query within its limit still runs.
        assert store.query("SELECT count(*) AS n FROM pages", timeout=5) == [{"n": 1}]
        assert store.check().ok


@pytest.mark.parametrize("bad", [0, -1, True, "5", float("nan"), 10**7])
def test_a_bad_timeout_is_invalid_input(db_target: str, bad: Any) -> None:
    with cvm.Store.open(db_target) as store, pytest.raises(cvm.InvalidInput, match="timeout"):
        store.query("SELECT 1", timeout=bad)


def test_cli_sql_timeout_is_one_line_and_exit_1(db_target: str) -> None:
    seeded(db_target)
    result = invoke(db_target, "sql", RUNAWAY, "--timeout", "0.2")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == TIMEOUT_LINE.format(limit="0.2") + "\n"


def test_a_timed_out_query_releases_its_snapshot_for_checkpoints(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    seeded(str(db))
    with cvm.Store.open(db) as store:
        failure: list[BaseException] = []

        def run() -> None:
            try:
                store.query(RUNAWAY_READER, timeout=1.5)
            except BaseException as exc:
                failure.append(exc)

        store.put("policy/first", type="bootstrap", content="Be brief.", project="p")
        reader = threading.Thread(target=run)
        reader.start()
        time.sleep(0.4)  # the reader has its snapshot by now
        store.put("policy/more", type="bootstrap", content="And kind.", project="p")
        other = sqlite3.connect(db, timeout=0)  # a checkpoint that reports, never waits
        try:
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 1  # the running reader's snapshot pins the WAL
            reader.join(10)
            assert [type(exc) for exc in failure] == [cvm.QueryTimeout]
            assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
        finally:
            other.close()


def test_a_timeout_of_zero_means_no_limit_in_the_cli(tmp_path: Path) -> None:
    db = str(tmp_path / "agent.db")
    seeded(db)
    result = invoke(db, "sql", "SELECT count(*) AS n FROM pages", "--timeout", "0", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 1}]
    result = invoke(db, "sql", "SELECT 1", "--timeout", "-1")
    assert result.exit_code == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ctrl_c_ends_a_running_sql_in_one_line_with_exit_130(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = (
        str(tmp_path / "agent.db")
        if backend == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    seeded(target)
    command = [sys.executable, "-m", "clawvm_store.cli", "--db", target, "sql", RUNAWAY_READER]
    # A shell runs background jobs with SIGINT ignored and children inherit that: give this
    # one the default disposition, as a terminal's foreground job has.
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        time.sleep(3.0)  # past the imports: the query is running (its limit is 30 s)
        assert child.poll() is None
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        child.kill()
    assert (child.returncode, out, err) == (130, "", "error: interrupted\n")


# --- read-only introspection -------------------------------------------------------------------


def test_pragma_table_valued_functions_and_sqlite_schema_are_readable(tmp_path: Path) -> None:
    db = str(tmp_path / "agent.db")
    seeded(db)
    with cvm.Store.open(db) as store:
        columns = [
            row["name"] for row in store.query("SELECT name FROM pragma_table_info(?)", ["pages"])
        ]
        assert columns[:3] == ["id", "project", "session_id"]
        views = store.query(
            "SELECT name FROM sqlite_schema WHERE type = 'view' AND name = 'page_history'"
        )
        assert views == [{"name": "page_history"}]
        view_columns = store.query("SELECT name FROM pragma_table_info('page_history')")
        assert {"key", "version", "full_tokens"} <= {row["name"] for row in view_columns}
        indexes = store.query("SELECT count(*) AS n FROM pragma_index_list('pages')")
        assert indexes[0]["n"] >= 1
        keys = store.query("SELECT \"table\" FROM pragma_foreign_key_list('page_versions')")
        assert keys == [{"table": "pages"}]
        # Still read-only: the schema table cannot be changed, nor pragmas set through them.
        for statement in (
            "UPDATE sqlite_master SET sql = 'x'",
            "SELECT * FROM pragma_writable_schema(1)",
            "SELECT * FROM pragma_user_version(7)",
        ):
            with pytest.raises((cvm.ReadOnlyViolation, cvm.InvalidInput)):
                store.query(statement)
        assert store.check().ok


def test_cli_sql_schema_lists_tables_and_views_with_columns(db_target: str) -> None:
    seeded(db_target)
    result = invoke(db_target, "sql", "--schema", "--json")
    assert result.exit_code == 0, result.output
    objects = {item["name"]: item for item in json.loads(result.stdout)}
    assert objects["pages"]["type"] == "table"
    assert [column["name"] for column in objects["pages"]["columns"]][:3] == [
        "id",
        "project",
        "session_id",
    ]
    assert objects["page_history"]["type"] == "view"
    assert {"key", "version", "full_tokens"} <= {
        column["name"] for column in objects["page_history"]["columns"]
    }
    assert {"langgraph_threads", "journal_outcomes", "fault_counts"} <= set(objects)
    text = invoke(db_target, "sql", "--schema")
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0] == "name\ttype\tcolumns"
    assert any(line.startswith("pages\ttable\tid INTEGER, project VARCHAR") for line in lines)
    assert len(lines) == 1 + len(objects)


def test_cli_sql_needs_a_statement_or_schema(tmp_path: Path) -> None:
    db = str(tmp_path / "agent.db")
    seeded(db)
    missing = invoke(db, "sql")
    assert (missing.exit_code, missing.stderr) == (
        2,
        "error: missing the SQL statement (or --schema)\n",
    )
    both = invoke(db, "sql", "--schema", "SELECT 1")
    assert (both.exit_code, both.stderr) == (2, "error: --schema takes no statement or --param\n")
