"""ClawVMSaver, the LangGraph checkpointer: LangGraph's conformance suite, real graphs, kill -9.

Tests that take ``db_target`` run on both backends (SQLite and PostgreSQL, tests/conftest.py).

* LangGraph's own ``langgraph-checkpoint-conformance`` suite (``validate()`` on a
  ``@checkpointer_test`` factory) must report all five base and all three extended capabilities
  detected and passed.
* A real graph keeps its state across a reopen; its checkpoints show in the SQL views and in
  ``clawvm sql``; damaged rows are refused on read and reported by ``check()``.
* A graph killed with SIGKILL mid-super-step resumes from its last checkpoint with the finished
  task's pending write intact (that task is not run again); a chain of nodes killed at random
  instants always finishes with the exact state. ``CLAWVM_LANGGRAPH_KILLS`` sets how many
  random kills (default 8), ``CLAWVM_LANGGRAPH_SEED`` the seed.
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from click.testing import CliRunner
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import (
    BASE_CAPABILITIES,
    EXTENDED_CAPABILITIES,
)
from langgraph.graph import END, START, StateGraph
from langgraph_child import CHAIN_STEPS

import clawvm_store as cvm
from clawvm_store.cli import app
from clawvm_store.integrations.langgraph import ClawVMSaver

CHILD = Path(__file__).with_name("langgraph_child.py")
KILLS = int(os.environ.get("CLAWVM_LANGGRAPH_KILLS", "8"))
SEED = int(os.environ.get("CLAWVM_LANGGRAPH_SEED", "20261126"))


# -- LangGraph's conformance suite ------------------------------------------------------------


def test_conformance_suite_passes_every_capability(backend: str, db_target: str) -> None:
    suites = 0

    @checkpointer_test(name=f"ClawVMSaver on {backend}")
    async def clawvm_saver() -> Any:
        # One database for every capability suite: the suite names its threads with fresh uuids.
        nonlocal suites
        suites += 1
        with ClawVMSaver.from_path(db_target) as saver:
            yield saver

    report = asyncio.run(validate(clawvm_saver))

    wanted = {cap.value for cap in BASE_CAPABILITIES | EXTENDED_CAPABILITIES}
    assert set(report.results) == wanted
    for name, result in sorted(report.results.items()):
        assert result.detected, name
        assert result.failures == [], (name, result.failures)
        assert result.tests_failed == 0, name
        assert result.tests_passed > 0, name
        assert result.passed is True, name
    assert suites == len(wanted)
    with cvm.Store.open(db_target) as store:
        report_check = store.check()
        assert report_check.ok, report_check.findings
        assert report_check.checked["langgraph_checkpoints"] > 0


# -- a real graph -------------------------------------------------------------------------------


class Counter2(TypedDict):
    total: int
    seen: Annotated[list[str], operator.add]


def counting_graph() -> StateGraph[Any]:
    builder: StateGraph[Any] = StateGraph(Counter2)
    builder.add_node("double", lambda s: {"total": s["total"] * 2, "seen": ["double"]})
    builder.add_node("plus_one", lambda s: {"total": s["total"] + 1, "seen": ["plus_one"]})
    builder.add_edge(START, "double")
    builder.add_edge("double", "plus_one")
    builder.add_edge("plus_one", END)
    return builder


THREAD = {"configurable": {"thread_id": "t-1"}}


def test_graph_state_survives_reopen_and_shows_in_sql(db_target: str) -> None:
    db = db_target
    with ClawVMSaver.from_path(db) as saver:
        graph = counting_graph().compile(checkpointer=saver)
        assert graph.invoke({"total": 5, "seen": []}, THREAD) == {
            "total": 11,
            "seen": ["double", "plus_one"],
        }
        history = list(graph.get_state_history(THREAD))
    # input (-1), after START (0), double (1), plus_one (2): newest first.
    assert [snap.metadata["step"] for snap in history if snap.metadata] == [2, 1, 0, -1]

    with ClawVMSaver.from_path(db) as saver:
        graph = counting_graph().compile(checkpointer=saver)
        state = graph.get_state(THREAD)
        assert state.values == {"total": 11, "seen": ["double", "plus_one"]}
        assert state.next == ()
        # A second run on the same thread continues from the stored state.
        assert graph.invoke({"total": 1}, THREAD)["seen"] == ["double", "plus_one"] * 2

        threads = saver.store.query("SELECT * FROM langgraph_threads ORDER BY thread_id")
        assert len(threads) == 1
        (thread,) = threads
        assert thread["thread_id"] == "t-1"
        assert thread["checkpoint_ns"] == ""
        assert thread["checkpoints"] == 8
        assert thread["latest_step"] == 6
        assert thread["latest_source"] == "loop"
        latest = saver.get_tuple(THREAD)
        assert latest is not None
        assert thread["latest_checkpoint_id"] == latest.config["configurable"]["checkpoint_id"]

        rows = saver.store.query(
            "SELECT step, source, is_latest, parent_checkpoint_id, bytes "
            "FROM langgraph_checkpoints WHERE thread_id = ? ORDER BY checkpoint_id",
            ["t-1"],
        )
        assert [row["step"] for row in rows] == [-1, 0, 1, 2, 3, 4, 5, 6]
        assert [row["source"] for row in rows] == ["input", "loop", "loop", "loop"] * 2
        assert [row["is_latest"] for row in rows] == [0] * 7 + [1]
        assert rows[0]["parent_checkpoint_id"] is None
        assert all(row["parent_checkpoint_id"] for row in rows[1:])
        assert all(row["bytes"] > 0 for row in rows)
        report = saver.store.check()
        assert report.ok, report.findings
        assert report.checked["langgraph_checkpoints"] == 8

    result = CliRunner().invoke(
        app,
        [
            "--db",
            db,
            "sql",
            "SELECT thread_id, checkpoints, latest_step FROM langgraph_threads",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"thread_id": "t-1", "checkpoints": 8, "latest_step": 6}]


def test_async_graph_uses_the_async_methods(db_target: str) -> None:
    async def run() -> tuple[dict[str, Any], int]:
        with ClawVMSaver.from_path(db_target) as saver:
            graph = counting_graph().compile(checkpointer=saver)
            out = await graph.ainvoke({"total": 2, "seen": []}, THREAD)
            history = [snap async for snap in graph.aget_state_history(THREAD)]
            return out, len(history)

    out, checkpoints = asyncio.run(run())
    assert out == {"total": 5, "seen": ["double", "plus_one"]}
    assert checkpoints == 4


def a_checkpoint(checkpoint_id: str) -> Any:
    """A minimal, fixed checkpoint (ids sort as LangGraph's do)."""
    return {
        "v": 1,
        "id": checkpoint_id,
        "ts": "2026-11-26T00:00:00+00:00",
        "channel_values": {},
        "channel_versions": {},
        "versions_seen": {},
        "updated_channels": None,
    }


def test_pending_writes_are_idempotent_but_special_channels_are_replaced(db_target: str) -> None:
    with ClawVMSaver.from_path(db_target) as saver:
        config = saver.put(
            {"configurable": {"thread_id": "t", "checkpoint_ns": ""}},
            a_checkpoint("1f0-a"),
            {"source": "loop", "step": 0},
            {},
        )
        saver.put_writes(config, [("answer", 1), ("note", "first")], task_id="task-a")
        # A retried task writes again: ordinary channels keep what was recorded first.
        saver.put_writes(config, [("answer", 2), ("note", "second")], task_id="task-a")
        saver.put_writes(config, [("__error__", "boom")], task_id="task-b")
        saver.put_writes(config, [("__error__", "boom again")], task_id="task-b")
        stored = saver.get_tuple(config)
        assert stored is not None
        assert stored.pending_writes == [
            ("task-a", "answer", 1),
            ("task-a", "note", "first"),
            ("task-b", "__error__", "boom again"),
        ]


def test_checkpoint_commits_at_full_and_pending_writes_at_normal(tmp_path: Path) -> None:
    """The engine's group-commit protocol: writes are staged, a checkpoint is the boundary."""
    with ClawVMSaver.from_path(str(tmp_path / "s.db")) as saver:
        base = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        checkpoint = a_checkpoint("1f0-a")
        config = saver.put(base, checkpoint, {"step": 0}, {})
        writer = saver.store.db._writer
        assert writer is not None
        statements: list[str] = []
        writer.connection.dbapi_connection.set_trace_callback(statements.append)  # type: ignore[union-attr]
        saver.put_writes(config, [("x", 1)], task_id="t1")
        saver.put_writes(config, [("y", 2)], task_id="t2")
        saver.put(config, {**checkpoint, "id": "1f0-b"}, {"step": 1}, {})
        writer.connection.dbapi_connection.set_trace_callback(None)  # type: ignore[union-attr]
        control = [s for s in statements if s.startswith(("PRAGMA synchronous", "BEGIN", "COMMIT"))]
        assert control == [
            "PRAGMA synchronous = NORMAL",
            "BEGIN IMMEDIATE",
            "COMMIT",
            "BEGIN IMMEDIATE",
            "COMMIT",
            "PRAGMA synchronous = FULL",
            "BEGIN IMMEDIATE",
            "COMMIT",
        ]


def test_damaged_rows_are_refused_and_reported(tmp_path: Path) -> None:
    db = str(tmp_path / "d.db")
    with ClawVMSaver.from_path(db) as saver:
        graph = counting_graph().compile(checkpointer=saver)
        graph.invoke({"total": 1, "seen": []}, THREAD)
        saver.put_writes(
            saver.get_tuple(THREAD).config,  # type: ignore[union-attr]
            [("seen", ["pending"])],
            task_id="task-z",
        )
        latest = saver.get_tuple(THREAD)
        assert latest is not None
        latest_id = latest.config["configurable"]["checkpoint_id"]
    # Damage one byte of the latest checkpoint and of the pending write, behind the engine.
    with sqlite3.connect(db) as raw:
        raw.execute(
            "UPDATE lg_checkpoints SET metadata = replace(metadata, '\"loop\"', '\"lopp\"') "
            "WHERE checkpoint_id = ?",
            (latest_id,),
        )
        raw.execute("UPDATE lg_writes SET value = X'00' || value WHERE task_id = 'task-z'")
    with ClawVMSaver.from_path(db) as saver:
        with pytest.raises(cvm.CorruptDatabase, match="fails its check: checksum does not match"):
            saver.get_tuple(THREAD)
        report = saver.store.check()
        assert not report.ok
        kinds = sorted(finding.code for finding in report.findings)
        assert kinds == ["langgraph_checkpoint", "langgraph_write"]
        # Older checkpoints are untouched and still readable.
        older = list(saver.list(THREAD, before=latest.config, limit=1))
        assert len(older) == 1
        assert older[0].metadata["step"] == 1
    result = CliRunner().invoke(app, ["--db", db, "check"])
    assert result.exit_code != 0
    assert "langgraph_checkpoint" in result.output


def test_bad_config_is_a_clear_error(db_target: str) -> None:
    with ClawVMSaver.from_path(db_target) as saver:
        with pytest.raises(cvm.InvalidInput, match=r"configurable\.thread_id"):
            saver.get_tuple({"configurable": {}})
        with pytest.raises(cvm.InvalidInput, match="prune strategy"):
            saver.prune(["t"], strategy="everything")
        assert list(saver.list(None, limit=0)) == []


# -- kill -9 ------------------------------------------------------------------------------------


def run_child(kind: str, db: Path, workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), kind, str(db), str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(path: Path, child: subprocess.Popen[bytes], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if child.poll() is not None:
            _, err = child.communicate()
            pytest.fail(f"child exited {child.returncode} early: {err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"child never wrote {path.name}")
        time.sleep(0.01)


def finish(child: subprocess.Popen[bytes]) -> None:
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()[-3000:]


def runs(workdir: Path) -> Counter[str]:
    path = workdir / "runs.txt"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def test_graph_killed_mid_superstep_resumes_with_pending_writes(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    child = run_child("fanout", db, tmp_path)
    wait_for(tmp_path / "ready", child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert runs(tmp_path) == Counter({"fast": 1, "slow": 1})

    # What survived the kill: the last checkpoint, and fast's write pending against it.
    with ClawVMSaver.from_path(str(db)) as saver:
        state = saver.get_tuple({"configurable": {"thread_id": "crash-thread"}})
        assert state is not None
        assert state.metadata["step"] == 0
        pending = [(channel, value) for _, channel, value in state.pending_writes or []]
        assert ("log", ["fast"]) in pending
        assert all(value != ["slow"] for _, value in pending)
        assert saver.store.check().ok

    # Restart: the super-step finishes without running fast again.
    finish(run_child("fanout", db, tmp_path))
    assert runs(tmp_path) == Counter({"fast": 1, "slow": 2, "join": 1})
    with ClawVMSaver.from_path(str(db)) as saver:
        latest = saver.get_tuple({"configurable": {"thread_id": "crash-thread"}})
        assert latest is not None
        assert sorted(latest.checkpoint["channel_values"]["log"]) == ["fast", "join", "slow"]
        assert latest.checkpoint["channel_values"]["log"][-1] == "join"
        assert saver.store.check().ok


def test_chain_killed_at_random_instants_always_finishes_exactly(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    db = tmp_path / "chain.db"
    kills = 0
    while kills < KILLS:
        (tmp_path / "started").unlink(missing_ok=True)
        child = run_child("chain", db, tmp_path)
        wait_for(tmp_path / "started", child)
        time.sleep(rng.uniform(0.0, 0.25))
        if child.poll() is not None:
            break  # finished before this kill landed
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
        with cvm.Store.open(str(db)) as store:
            report = store.check()
            assert report.ok, (kills, report.findings)
    finish(run_child("chain", db, tmp_path))

    with ClawVMSaver.from_path(str(db)) as saver:
        latest = saver.get_tuple({"configurable": {"thread_id": "crash-thread"}})
        assert latest is not None
        values = latest.checkpoint["channel_values"]
        assert values["count"] == CHAIN_STEPS
        assert values["trail"] == list(range(CHAIN_STEPS))
        steps = [
            row["step"]
            for row in saver.store.query(
                "SELECT step FROM langgraph_checkpoints ORDER BY checkpoint_id"
            )
        ]
        # One checkpoint per super-step, never a step twice: a re-run replaced nothing.
        assert steps == list(range(-1, CHAIN_STEPS + 1))
    executed = runs(tmp_path)
    # Each node ran once, plus at most one re-run per kill (the node the kill interrupted).
    assert set(executed) == {f"step{i}" for i in range(CHAIN_STEPS)}
    assert sum(executed.values()) <= CHAIN_STEPS + kills
    assert kills >= 1
