"""LangGraph checkpointer benchmark: ClawVMSaver against LangGraph's own SqliteSaver, one run.

Both savers write to a file in the same temporary directory, in WAL mode with
``synchronous=FULL`` for a checkpoint (SqliteSaver's default; ClawVMSaver's ``put``), on the same
checkpoints: a conversation of three messages and a tool output in ``channel_values``, the
shape an agent graph stores every super-step. Measured per operation, median and p95:

* ``put``: one checkpoint on a growing thread (each one's parent is the previous);
* ``put_writes``: two pending writes of one task (ClawVMSaver commits these at NORMAL: they
  survive ``kill -9`` at once and power loss from the next ``put``; SqliteSaver commits at FULL);
* ``get_tuple``: the thread's latest checkpoint with its pending writes, and one by id;
* ``list(limit=10)``;
* a super-step: one ``put_writes`` plus one ``put``, what a graph writes for each step.

The two savers alternate in rounds (A, B, A, B, ...) so drift on a noisy machine hits both, and
every ratio is ClawVMSaver's rate over SqliteSaver's from this same run (> 1: ClawVMSaver is
faster). ClawVMSaver also verifies a SHA-256 over every row it reads and writes.

Run: ``python bench/langgraph.py [--ops N] [--rounds R]`` (needs ``pip install -e '.[bench,langgraph]'``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# This file is named like the package it measures: drop its own directory from the import path,
# or ``import langgraph`` would import this script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

USER = "Please read payments.py and tell me where the idempotency check should go."
ASSISTANT = (
    "The handler validates the request and then stores the payment. The idempotency check "
    "belongs right after validation and before the insert, keyed by the Idempotency-Key header."
)
TOOL_OUTPUT = "\n".join(
    f"    value_{i} = normalise(request.json['field_{i}'])  # validated field {i}"
    for i in range(16)
)


def checkpoint_for(step: int) -> Any:
    from langgraph.checkpoint.base import empty_checkpoint

    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {
        "messages": [
            {"role": "user", "content": USER},
            {"role": "assistant", "content": ASSISTANT},
            {"role": "tool", "content": TOOL_OUTPUT},
        ],
        "step": step,
    }
    checkpoint["channel_versions"] = {"messages": f"{step:032}.0", "step": f"{step:032}.0"}
    return checkpoint


@contextmanager
def saver_named(name: str, root: Path, round_no: int) -> Iterator[Any]:
    if name == "ClawVMSaver":
        from clawvm_store.integrations.langgraph import ClawVMSaver

        with ClawVMSaver.from_path(str(root / f"clawvm-{round_no}.db")) as saver:
            yield saver
    else:
        from langgraph.checkpoint.sqlite import SqliteSaver

        with SqliteSaver.from_conn_string(str(root / f"sqlite-{round_no}.db")) as saver:
            yield saver


def run_round(saver: Any, ops: int) -> dict[str, list[float]]:
    """One round on a fresh database: each operation ``ops`` times; durations in seconds."""
    durations: dict[str, list[float]] = {
        "put": [],
        "put_writes": [],
        "get_tuple latest": [],
        "get_tuple by id": [],
        "list limit=10": [],
    }
    thread: dict[str, Any] = {"configurable": {"thread_id": "bench", "checkpoint_ns": ""}}
    config = thread
    stored: list[Any] = []

    clock = time.perf_counter
    for step in range(ops):
        checkpoint = checkpoint_for(step)
        metadata = {"source": "loop", "step": step, "parents": {}}
        start = clock()
        config = saver.put(config, checkpoint, metadata, {})
        durations["put"].append(clock() - start)
        stored.append(config)
        writes = [("messages", {"role": "assistant", "content": ASSISTANT}), ("step", step)]
        start = clock()
        saver.put_writes(config, writes, f"task-{step}")
        durations["put_writes"].append(clock() - start)
    # What a graph does every super-step: one task's writes, then the checkpoint.
    durations["super-step"] = [
        put + writes for put, writes in zip(durations["put"], durations["put_writes"], strict=True)
    ]
    for step in range(ops):
        start = clock()
        saver.get_tuple(thread)
        durations["get_tuple latest"].append(clock() - start)
        by_id = stored[(step * 7919) % len(stored)]
        start = clock()
        saver.get_tuple(by_id)
        durations["get_tuple by id"].append(clock() - start)
        start = clock()
        list(saver.list(thread, limit=10))
        durations["list limit=10"].append(clock() - start)
    return durations


def summary(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    median = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return median, p95, len(ordered) / sum(ordered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300, help="operations of each kind per round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per saver")
    args = parser.parse_args()
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401

        import clawvm_store.integrations.langgraph  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"needs LangGraph's savers: pip install -e '.[bench,langgraph]' ({exc})"
        ) from None

    names = ("ClawVMSaver", "SqliteSaver")
    collected: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    with tempfile.TemporaryDirectory(prefix="clawvm-bench-lg-") as tmp:
        root = Path(tmp)
        for round_no in range(args.rounds):
            for name in names if round_no % 2 == 0 else reversed(names):
                with saver_named(name, root, round_no) as saver:
                    for op, values in run_round(saver, args.ops).items():
                        collected[name].setdefault(op, []).extend(values)

    print(f"LangGraph checkpointers, {args.rounds} alternating rounds x {args.ops} ops each")
    print(f"  {'operation':<18} {'saver':<12} {'median':>11} {'p95':>11} {'ops/s':>9}")
    for op in collected["ClawVMSaver"]:
        rates = {}
        for name in names:
            median, p95, rate = summary(collected[name][op])
            rates[name] = rate
            print(f"  {op:<18} {name:<12} {median * 1e6:8.1f} µs {p95 * 1e6:8.1f} µs {rate:9.0f}")
        print(
            f"  {op:<18} ratio ClawVMSaver / SqliteSaver: {rates[names[0]] / rates[names[1]]:.2f}x"
        )


if __name__ == "__main__":
    main()
