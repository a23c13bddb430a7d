"""A LangGraph program that tests/test_langgraph.py runs in a child process and kills with -9.

Usage: ``python langgraph_child.py GRAPH DB WORKDIR``, GRAPH being ``fanout`` or ``chain``.

Every node appends its name to ``WORKDIR/runs.txt`` when it runs (a side effect outside the
checkpointer, opened with O_APPEND so a line survives the kill), which is how the parent counts
executions. The program resumes a thread that already has a checkpoint (``invoke(None)``) and
starts it otherwise, so the parent just runs it again after a kill.

* ``fanout``: START -> (fast, slow) in parallel -> join -> END. On its first run, ``slow`` waits
  until ``fast``'s pending write is in the database, writes ``WORKDIR/ready`` and sleeps: the
  parent kills the process then, mid-super-step, with one task's writes saved and one in flight.
* ``chain``: a line of CHAIN_STEPS nodes, each adding one to a counter after a short sleep; the
  parent kills it at random instants.
"""

from __future__ import annotations

import operator
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from clawvm_store.integrations.langgraph import ClawVMSaver

CHAIN_STEPS = 30
THREAD = {"configurable": {"thread_id": "crash-thread"}}


class FanoutState(TypedDict):
    log: Annotated[list[str], operator.add]


class ChainState(TypedDict):
    count: int
    trail: Annotated[list[int], operator.add]


def record(workdir: Path, name: str) -> None:
    fd = os.open(workdir / "runs.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{name}\n".encode())
    finally:
        os.close(fd)


def fanout_graph(db: str, workdir: Path) -> Any:
    def fast(state: FanoutState) -> dict[str, Any]:
        record(workdir, "fast")
        return {"log": ["fast"]}

    def slow(state: FanoutState) -> dict[str, Any]:
        record(workdir, "slow")
        if not (workdir / "ready").exists():
            # Wait (on our own read-only connection) until fast's write is durable, then let the
            # parent kill us while this task is still running.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    rows = conn.execute(
                        "SELECT COUNT(*) FROM lg_writes WHERE channel = 'log'"
                    ).fetchone()[0]
                if rows:
                    break
                time.sleep(0.01)
            (workdir / "ready").write_text("ready")
            time.sleep(120)
        return {"log": ["slow"]}

    def join(state: FanoutState) -> dict[str, Any]:
        record(workdir, "join")
        return {"log": ["join"]}

    builder = StateGraph(FanoutState)
    builder.add_node("fast", fast)
    builder.add_node("slow", slow)
    builder.add_node("join", join)
    builder.add_edge(START, "fast")
    builder.add_edge(START, "slow")
    builder.add_edge(["fast", "slow"], "join")
    builder.add_edge("join", END)
    return builder


def chain_graph(workdir: Path) -> Any:
    builder = StateGraph(ChainState)

    def make(index: int) -> Any:
        def step(state: ChainState) -> dict[str, Any]:
            record(workdir, f"step{index}")
            time.sleep(0.02)
            return {"count": state["count"] + 1, "trail": [index]}

        return step

    previous = START
    for index in range(CHAIN_STEPS):
        name = f"step{index}"
        builder.add_node(name, make(index))
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    return builder


def main() -> None:
    kind, db, workdir_text = sys.argv[1:4]
    workdir = Path(workdir_text)
    with ClawVMSaver.from_path(db) as saver:
        if kind == "fanout":
            graph = fanout_graph(db, workdir).compile(checkpointer=saver)
            initial: dict[str, Any] = {"log": []}
        else:
            graph = chain_graph(workdir).compile(checkpointer=saver)
            initial = {"count": 0, "trail": []}
        (workdir / "started").write_text("started")
        started = saver.get_tuple(THREAD) is not None
        graph.invoke(None if started else initial, THREAD, durability="sync")


if __name__ == "__main__":
    main()
