"""Durability benchmark: stages, boundaries and recovery, against raw sqlite3 and two peers.

Prints, from one run on one machine (so the ratios hold even when the machine is noisy):

* durable stages per second (each survives ``kill -9`` once ``stage`` returns) and boundary
  commits per second, with ``durability="full"`` and ``"normal"``;
* a whole agent turn (three staged updates + ``end_turn``) against raw ``sqlite3`` doing the same
  inserts with one FULL commit, LangGraph's ``SqliteSaver.put`` and the OpenAI Agents SDK's
  ``SQLiteSession.add_items`` writing the same turn (peers need ``pip install -e '.[bench]'``;
  a missing peer is reported, not faked);
* recovery replay: staged entries of a dead session validated and applied per second, and the
  re-application of committed-but-unapplied entries.

Run: ``python bench/durability.py [--turns N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clawvm_store as cvm

# bench/langgraph.py shadows the real package when this script runs: drop this directory.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

USER = "Please read payments.py and tell me where the idempotency check should go."
ASSISTANT = (
    "The handler validates the request and then stores the payment. The idempotency check "
    "belongs right after validation and before the insert, keyed by the Idempotency-Key header."
)
TOOL_OUTPUT = "\n".join(
    f"    value_{i} = normalise(request.json['field_{i}'])  # validated field {i}"
    for i in range(16)
)


def summarize(name: str, durations: list[float], unit: str = "turn") -> dict[str, float]:
    """Median, p95 and rate of per-operation durations (seconds)."""
    ordered = sorted(durations)
    median = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    rate = len(ordered) / sum(ordered)
    print(
        f"  {name:<46} median {median * 1e6:9.1f} µs   p95 {p95 * 1e6:9.1f} µs   "
        f"{rate:9.0f} {unit}s/s"
    )
    return {"median_us": median * 1e6, "p95_us": p95 * 1e6, "per_second": rate}


def timed(count: int, operation: Callable[[int], Any]) -> list[float]:
    """Run ``operation(i)`` ``count`` times and return each duration."""
    durations = []
    for i in range(count):
        start = time.perf_counter()
        operation(i)
        durations.append(time.perf_counter() - start)
    return durations


def bench_stages(root: Path, durability: str, count: int) -> dict[str, dict[str, float]]:
    results = {}
    with cvm.Store.open(root / f"stages-{durability}.db", durability=durability) as store:  # type: ignore[arg-type]
        sess = store.session("s", project="bench")
        results["stage"] = summarize(
            f"stage ({durability})",
            timed(
                count,
                lambda i: sess.stage(
                    f"conversation/turn-{i}",
                    type="conversation",
                    content=f"user: {USER}",
                    op="append",
                ),
            ),
            unit="stage",
        )
        sess.end_turn()

        def one_update_boundary(i: int) -> None:
            sess.stage(f"plan/p{i % 8}", type="plan", content=f"Goal: step {i}", op="append")
            sess.end_turn()

        results["boundary"] = summarize(
            f"stage + end_turn, 1 update ({durability})",
            timed(count, one_update_boundary),
            unit="boundary",
        )
    return results


def clawvm_turn(store: cvm.Store, durability: str, turns: int) -> dict[str, float]:
    sess = store.session(f"turns-{durability}", project="bench")

    # One conversation page per turn (a span), as a harness keeps them: appending every turn to
    # one ever-growing page would re-derive its fidelities from an ever longer text.
    def turn(i: int) -> None:
        span = f"conversation/turn-{i}"
        sess.stage(span, type="conversation", content=f"user: {USER}", op="append")
        sess.stage(span, type="conversation", content=f"assistant: {ASSISTANT}", op="append")
        sess.stage(
            f"evidence/read_file/{i}",
            type="evidence",
            content=TOOL_OUTPUT,
            provenance={"uri": "file:///srv/payments.py"},
        )
        sess.end_turn()

    return summarize(f"clawvm turn: 3 stages + end_turn ({durability})", timed(turns, turn))


def raw_sqlite_turn(root: Path, turns: int) -> dict[str, float]:
    conn = sqlite3.connect(root / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, session TEXT, kind TEXT, body TEXT)")

    def turn(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO items (session, kind, body) VALUES (?, ?, ?)",
            [("s", "user", USER), ("s", "assistant", ASSISTANT), ("s", "tool", TOOL_OUTPUT)],
        )
        conn.execute("COMMIT")

    try:
        return summarize("raw sqlite3: 3 inserts, one FULL commit", timed(turns, turn))
    finally:
        conn.close()


def langgraph_turn(root: Path, turns: int) -> dict[str, float] | None:
    try:
        from langgraph.checkpoint.base import empty_checkpoint
        from langgraph.checkpoint.sqlite import SqliteSaver
    except ImportError:
        print("  LangGraph SqliteSaver: not installed (pip install -e '.[bench]')")
        return None
    with SqliteSaver.from_conn_string(str(root / "langgraph.db")) as saver:
        config: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}

        def turn(i: int) -> None:
            nonlocal config
            checkpoint = empty_checkpoint()
            checkpoint["channel_values"] = {
                "messages": [
                    {"role": "user", "content": USER},
                    {"role": "assistant", "content": ASSISTANT},
                    {"role": "tool", "content": TOOL_OUTPUT},
                ]
            }
            config = saver.put(config, checkpoint, {"source": "loop", "step": i}, {})

        return summarize("LangGraph SqliteSaver.put", timed(turns, turn))


def agents_sdk_turn(root: Path, turns: int) -> dict[str, float] | None:
    try:
        from agents import SQLiteSession
    except ImportError:
        print("  Agents SDK SQLiteSession: not installed (pip install -e '.[bench]')")
        return None
    session = SQLiteSession("s", str(root / "agents.db"))
    loop = asyncio.new_event_loop()
    items: list[Any] = [
        {"role": "user", "content": USER},
        {"role": "assistant", "content": ASSISTANT},
        {"type": "function_call_output", "call_id": "c1", "output": TOOL_OUTPUT},
    ]
    try:
        return summarize(
            "Agents SDK SQLiteSession.add_items",
            timed(turns, lambda i: loop.run_until_complete(session.add_items(items))),
        )
    finally:
        session.close()
        loop.close()


def bench_recovery(root: Path, entries: int) -> dict[str, float]:
    path = root / "recovery.db"
    store = cvm.Store.open(path)
    sess = store.session("dead", project="bench")
    contents = {}
    for i in range(entries):
        content = f"Goal: replay {i}"
        contents[sess.stage(f"plan/p{i % 50}", type="plan", content=content, op="append").lsn] = (
            content
        )
    store.close()  # the owner is gone: its staged entries are recovery's to resolve
    store = cvm.Store.open(path, recover=False)
    start = time.perf_counter()
    report = store.recover()
    elapsed = time.perf_counter() - start
    resolved = sum(len(r.committed) + len(r.rejected) for r in report.recovered.values())
    assert resolved == entries, (resolved, entries)
    rate = entries / elapsed
    print(
        f"  {'recovery: staged entries validated + applied':<46} {entries} in {elapsed:.3f} s   {rate:9.0f} entries/s"
    )
    # Committed-but-unapplied: what a crash between commit and apply would leave.
    with store.db.transaction() as conn:
        conn.exec_driver_sql("DELETE FROM representations")
        conn.exec_driver_sql("DELETE FROM page_versions")
        conn.exec_driver_sql("DELETE FROM pages")
        conn.exec_driver_sql("UPDATE journal SET state = 'committed' WHERE state = 'applied'")
        # An entry keeps its content aside until it is applied (journal_content).
        conn.exec_driver_sql(
            "INSERT INTO journal_content (lsn, content) VALUES (?, ?)", list(contents.items())
        )
    start = time.perf_counter()
    report = store.recover()
    elapsed_reapply = time.perf_counter() - start
    assert len(report.reapplied) == entries
    reapply_rate = entries / elapsed_reapply
    print(
        f"  {'recovery: committed entries re-applied':<46} {entries} in {elapsed_reapply:.3f} s   {reapply_rate:9.0f} entries/s"
    )
    assert store.check().ok
    store.close()
    return {"replay_per_second": rate, "reapply_per_second": reapply_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--recovery-entries", type=int, default=3000)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp)
        print(f"stages and boundaries ({args.turns} each):")
        for durability in ("full", "normal"):
            figures[f"stages_{durability}"] = bench_stages(root, durability, args.turns)
        print(f"\nper turn ({args.turns} turns, same payload):")
        with cvm.Store.open(root / "turns-full.db") as store:
            figures["turn_clawvm_full"] = clawvm_turn(store, "full", args.turns)
        with cvm.Store.open(root / "turns-normal.db", durability="normal") as store:
            figures["turn_clawvm_normal"] = clawvm_turn(store, "normal", args.turns)
        figures["turn_raw_sqlite"] = raw_sqlite_turn(root, args.turns)
        figures["turn_langgraph"] = langgraph_turn(root, args.turns)
        figures["turn_agents_sdk"] = agents_sdk_turn(root, args.turns)
        print("\nratios (turns/s, clawvm at FULL over the other; > 1 means clawvm is faster):")
        ours = figures["turn_clawvm_full"]["per_second"]
        for name in ("turn_raw_sqlite", "turn_langgraph", "turn_agents_sdk"):
            other = figures.get(name)
            if other:
                print(f"  clawvm / {name[5:]:<20} {ours / other['per_second']:.2f}")
        print(f"\nrecovery ({args.recovery_entries} entries):")
        figures["recovery"] = bench_recovery(root, args.recovery_entries)
    print("\ngoals: >= 1,000 durable stages/s at FULL; >= 20,000 replayed entries/s; per turn at")
    print("least as fast as SqliteSaver.put and SQLiteSession.add_items while keeping FULL.")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
