"""Framework integrations benchmark, one run: ClawVMSession against the SDK's SQLiteSession.

Both sessions write to a file in the same temporary directory. Measured per call, median and
p95, on the items one Agents SDK step saves (a function call and its output, then the assistant's
message: the batch shapes ``Runner.run`` passes to ``add_items``):

* ``add_items``: the batches of a growing conversation, per call and per turn (the three calls
  together). SQLiteSession commits each batch at SQLite's default ``synchronous=FULL``;
  ClawVMSession stages each item at NORMAL (it survives ``kill -9`` at once) and journals the
  batch that ends a turn inside the turn's boundary, one FULL commit;
* ``get_items()``: the whole history (SQLiteSession, ClawVMSession without a budget);
* ``get_items()`` with ``budget=B``: the engine's assembly rendered as Responses items, against
  SQLiteSession's unbudgeted read (the goal: within 2x).

Ratios are ClawVMSession's rate over SQLiteSession's from this same run (> 1: ClawVMSession is
faster).

The Claude Agent SDK has no durable store of its own in the package: its ``SessionStore`` protocol
ships with ``InMemorySessionStore``, and the CLI keeps transcripts as JSONL files. So
``ClawVMSessionStore`` is measured against both: ``append`` of each turn's batch of transcript
entries (ours commits at FULL and projects the finished turn into pages and the tool ledger), and
``load`` of the whole transcript (the JSONL baseline reads and decodes the file, as a resume does).

Run: ``python bench/frameworks.py [--turns N] [--budget B]`` (needs ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

USER = "Please read payments.py and tell me where the idempotency check should go."
OUTPUT = "def charge(order):\n    ...\n" * 20
ANSWER = "The check belongs before the ledger write in charge(); here is why. " * 4


def batches(turn: int) -> list[list[dict[str, Any]]]:
    """The add_items batches of one agent turn (input, a tool step, the final message)."""
    call_id = f"call-{turn}"
    return [
        [{"role": "user", "content": f"{USER} ({turn})"}],
        [
            {
                "type": "function_call",
                "call_id": call_id,
                "name": "read_file",
                "arguments": '{"path": "payments.py"}',
                "id": f"fc-{turn}",
            },
            {"type": "function_call_output", "call_id": call_id, "output": OUTPUT},
        ],
        [
            {
                "id": f"msg-{turn}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": ANSWER, "annotations": []}],
            }
        ],
    ]


def stats(samples: list[float]) -> tuple[float, float]:
    """Median and p95, in milliseconds."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return statistics.median(ordered) * 1e3, p95 * 1e3


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    """Seconds one awaited call takes."""
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def measure(session: Any, turns: int) -> dict[str, list[float]]:
    """add_items over ``turns`` turns, then get_items() reads of the whole history."""
    adds: list[float] = []
    whole_turns: list[float] = []
    for turn in range(turns):
        spent = 0.0
        for batch in batches(turn):
            adds.append(await timed(lambda b=batch: session.add_items(b)))  # type: ignore[misc]
            spent += adds[-1]
        whole_turns.append(spent)
    reads = [await timed(session.get_items) for _ in range(max(5, turns // 4))]
    return {"add_items": adds, "turn": whole_turns, "get_items": reads}


def line(name: str, samples: list[float], base: list[float] | None = None) -> str:
    """One printed row: median, p95 and the ratio of rates against ``base``."""
    median, p95 = stats(samples)
    text = f"  {name:<44} median {median:8.3f} ms   p95 {p95:8.3f} ms"
    if base is not None:
        text += f"   ratio {stats(base)[0] / median:5.2f}x"
    return text


async def main(turns: int, budget: int) -> None:
    """Run both sessions and print the figures."""
    from agents import SQLiteSession

    import clawvm_store as cvm

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"frameworks benchmark: {turns} turns (3 add_items batches each), budget {budget}")
        print(f"SQLite {__import__('sqlite3').sqlite_version}, Python {sys.version.split()[0]}")
        sdk = SQLiteSession("bench", root / "sdk.db")
        base = await measure(sdk, turns)
        sdk.close()
        print("OpenAI Agents SDK")
        print(line("SQLiteSession.add_items", base["add_items"]))
        print(line("SQLiteSession, a turn's 3 add_items", base["turn"]))
        print(line("SQLiteSession.get_items()", base["get_items"]))
        from clawvm_store.integrations.openai_agents import ClawVMSession

        with cvm.Store.open(root / "clawvm.db") as store:
            ours = ClawVMSession("bench", store)
            got = await measure(ours, turns)
            ours.close()
            print(line("ClawVMSession.add_items", got["add_items"], base["add_items"]))
            print(line("ClawVMSession, a turn's 3 add_items", got["turn"], base["turn"]))
            print(line("ClawVMSession.get_items()", got["get_items"], base["get_items"]))
            budgeted = ClawVMSession("bench", store, budget=budget)
            reads = [await timed(budgeted.get_items) for _ in range(max(5, turns // 4))]
            budgeted.close()
            print(line(f"ClawVMSession(budget={budget}).get_items()", reads, base["get_items"]))
    print("Claude Agent SDK")
    for text in await claude(turns):
        print(text)


def transcript_turn(turn: int) -> list[dict[str, Any]]:
    """One turn of a Claude Code transcript (prompt, a Read call, its result, the answer)."""
    call_id = f"toolu_{turn:06d}"

    def entry(kind: str, n: int, content: Any) -> dict[str, Any]:
        return {
            "type": kind,
            "uuid": f"{turn:06d}-{n}",
            "sessionId": "bench",
            "timestamp": f"2026-01-01T00:00:00.{turn % 1000:03d}Z",
            "message": {"role": kind, "content": content},
        }

    read = {"type": "tool_use", "id": call_id, "name": "Read", "input": {"file_path": "/w/p.py"}}
    result = {"type": "tool_result", "tool_use_id": call_id, "content": OUTPUT}
    return [
        entry("user", 0, f"{USER} ({turn})"),
        entry("assistant", 1, [{"type": "text", "text": "Reading it."}, read]),
        entry("user", 2, [result]),
        entry("assistant", 3, [{"type": "text", "text": ANSWER}]),
    ]


class JsonlTranscripts:
    """Transcripts as JSONL files, one per session, the way the CLI keeps them on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: dict[str, str]) -> Path:
        return self.root / f"{key['project_key']}-{key['session_id']}.jsonl"

    async def append(self, key: dict[str, str], entries: list[dict[str, Any]]) -> None:
        """Append the entries as lines (flushed to the OS, as the CLI does: no fsync)."""
        with self._path(key).open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(entry) + "\n" for entry in entries))

    async def load(self, key: dict[str, str]) -> list[dict[str, Any]] | None:
        """Every entry of the transcript, decoded."""
        path = self._path(key)
        if not path.exists():
            return None
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


async def measure_store(store: Any, turns: int) -> dict[str, list[float]]:
    """append of each turn's batch over ``turns`` turns, then load() of the whole transcript."""
    key = {"project_key": "bench", "session_id": "bench"}
    appends = [
        await timed(lambda n=turn: store.append(key, transcript_turn(n)))  # type: ignore[misc]
        for turn in range(turns)
    ]
    loads = [await timed(lambda: store.load(key)) for _ in range(max(5, turns // 4))]
    loaded = await store.load(key)
    assert loaded is not None and len(loaded) == 4 * turns, "a store lost entries"
    return {"append": appends, "load": loads}


async def claude(turns: int) -> list[str]:
    """The Claude Agent SDK rows: InMemorySessionStore, JSONL files, ClawVMSessionStore."""
    from claude_agent_sdk import InMemorySessionStore

    from clawvm_store.integrations.claude_agent_sdk import ClawVMSessionStore

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        memory = await measure_store(InMemorySessionStore(), turns)
        jsonl = await measure_store(JsonlTranscripts(root), turns)
        with ClawVMSessionStore(root / "claude.db") as ours:
            got = await measure_store(ours, turns)
    return [
        line("InMemorySessionStore.append", memory["append"]),
        line("InMemorySessionStore.load", memory["load"]),
        line("JSONL transcript append", jsonl["append"]),
        line("JSONL transcript load", jsonl["load"]),
        line("ClawVMSessionStore.append (vs JSONL)", got["append"], jsonl["append"]),
        line("ClawVMSessionStore.load (vs JSONL)", got["load"], jsonl["load"]),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--budget", type=int, default=2000)
    options = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    asyncio.run(main(options.turns, options.budget))
