"""Long-session benchmark (issue 14): per-turn cost and bytes on disk over thousands of turns.

The loop is the one a harness author writes after reading the README, on one session of one
``Store.open(path)``, after one bootstrap page written with ``store.put``. Every turn:

1. ``stage("conversation/main", op="append")``: one exchange, ``user: ...\\nassistant: ...``
   (300-600 bytes of deterministic seeded text);
2. ``stage(f"evidence/tool/{turn}")``: about 1 KB of tool output, a new evidence page per turn,
   with a ``file://`` provenance URI;
3. ``stage("plan/main", op="merge")``: ``- [x] step N`` appended and the plan's current step
   moved on (turn 0 creates the plan with ``op="set"``); every merge must commit;
4. ``end_turn()``;
5. ``assemble(8000, fixed="You are a coding agent.")``.

Printed, from one run in one process (ratios are within the run, never across machines):

* per-turn medians and p95 of *write* (the three stages + ``end_turn``) and *assemble*, in a
  window of turns ending at each checkpoint (100, 1,000, 5,000, 10,000 and the last turn; small
  runs use 10, N/10, N/2 and N), and each checkpoint's cost over the first checkpoint's;
* bytes on disk after ``PRAGMA wal_checkpoint(TRUNCATE)`` (from a separate sqlite3 connection),
  the raw content bytes staged so far (UTF-8), their ratio, and the bytes each window added per
  turn; at the end, the database size by table and index (SQLite's ``dbstat``);
* the same content written by two peers, each to its own SQLite file: LangGraph's
  ``SqliteSaver.put`` (one checkpoint per turn whose ``messages`` channel holds every message so
  far, as a message-list channel does) and the OpenAI Agents SDK's ``SQLiteSession.add_items``
  (the turn's four items). Peers run ``--peer-turns`` turns (default ``min(N, 2000)``; nothing is
  extrapolated) and are skipped with a note when not installed (``pip install -e '.[bench]'``);
* a summary of the issue's goals as ratios with PASS/MISS (printed only: timings are never
  asserted and the exit code does not depend on them).

Run: ``python bench/long_session.py [--turns 10000] [--peer-turns 2000] [--db PATH] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

# bench/langgraph.py is named like the package it measures: drop this script's directory from
# the import path, or ``import langgraph`` below would import that script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import clawvm_store as cvm  # noqa: E402

PROJECT = "long"
SESSION = "long-1"
BUDGET = 8000
FIXED = "You are a coding agent."
STANDARD_CHECKPOINTS = (100, 1_000, 5_000, 10_000)
WINDOW = 50
GOAL_COST_RATIO = 1.3
GOAL_DB_RATIO = 4.0
GOAL_GROWTH_RATIO = 1.3
SUMMARY_HEADER = "summary: issue 14 goals"
SUMMARY_COST = "  per-turn cost (write+assemble median)"
SUMMARY_DB = "  db bytes / raw content bytes"
SUMMARY_GROWTH = "  growth: bytes per turn, last window / first"

_BASE_TEXT = (
    "the a to of and in is for that it with on as this be are not we can should will file "
    "function test error value result call return line path read write edit plan step goal "
    "user assistant tool output request response handler payment endpoint idempotency key "
    "column index schema migration retry budget token page pointer context window commit "
    "branch module class method import config option default cache query table row session "
    "journal version fidelity structured compressed summary check fix bug patch diff build "
    "run pass fail assert expected actual before after because then when if else only also "
    "first next last each every new old same other more less large small fast slow"
)


def _vocabulary() -> tuple[list[str], list[float]]:
    """The base words plus synthetic identifiers, with Zipf-like cumulative weights."""
    rng = random.Random(1414)
    words = _BASE_TEXT.split()
    stems = ("get", "set", "load", "save", "parse", "check", "make", "find", "apply", "merge")
    nouns = ("page", "row", "key", "span", "entry", "item", "node", "spec", "plan", "turn")
    for _ in range(600):
        words.append(f"{rng.choice(stems)}_{rng.choice(nouns)}_{rng.randint(0, 99)}")
    rng.shuffle(words)
    weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(words))]
    return words, list(accumulate(weights))


WORDS, CUM_WEIGHTS = _vocabulary()


def _sentence(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(WORDS, cum_weights=CUM_WEIGHTS, k=rng.randint(low, high))
    return " ".join(words).capitalize() + "."


def _text(rng: random.Random, size: int, low: int = 6, high: int = 16) -> str:
    parts: list[str] = []
    length = 0
    while length < size:
        parts.append(_sentence(rng, low, high))
        length += len(parts[-1]) + 1
    return " ".join(parts)


@dataclass(frozen=True)
class TurnContent:
    """What one turn writes, the same for the engine and both peers."""

    turn: int
    user: str
    assistant: str
    tool_path: str
    tool_output: str

    @property
    def exchange(self) -> str:
        return f"user: {self.user}\nassistant: {self.assistant}"

    @property
    def uri(self) -> str:
        return f"file:///work/out/{self.turn}.txt"


def turn_content(seed: int, turn: int) -> TurnContent:
    """Deterministic text for ``turn``: an exchange of 300-600 bytes and ~1 KB of tool output."""
    rng = random.Random(seed * 1_000_003 + turn)
    size = rng.randint(300, 600) - len("user: \nassistant: ")
    user = _text(rng, size // 4, 5, 12)
    assistant = _text(rng, size - len(user) - 1)
    path = f"src/{rng.choice(WORDS)}/{rng.choice(WORDS)}.py".replace(" ", "_")
    lines: list[str] = []
    length = 0
    target = rng.randint(900, 1100)
    number = rng.randint(1, 400)
    while length < target:
        code = " ".join(rng.choices(WORDS, cum_weights=CUM_WEIGHTS, k=rng.randint(4, 9)))
        lines.append(f"{path}:{number}: {code}")
        length += len(lines[-1]) + 1
        number += rng.randint(1, 7)
    return TurnContent(turn, user, assistant, path, "\n".join(lines))


def plan_update(turn: int) -> dict[str, Any]:
    """The plan stage of ``turn``: a set on turn 0, then merges the engine accepts every turn."""
    if turn == 0:
        return {"op": "set", "content": "Goal: keep a long-lived agent fast\n- [ ] step 1"}
    # One line merged in: the finished step appended to the text and the plan's current step
    # moved on (a changed scalar, so the merge names the version it changes: turn N's merge
    # makes version N + 1). The fields stay the plan's invariant, goal + current step; a list
    # that grew by a step each turn would copy every earlier step into every version's fields.
    return {
        "op": "merge",
        "content": f"- [x] step {turn}",
        "structured": {"current_step": f"step {turn + 1}"},
        "expected_version": turn,
    }


BOOTSTRAP = (
    "# Agent rules\n- Always run the tests before committing.\n- Never edit vendor/.\n"
    "- Keep every change small and reviewed.\n- Record every tool output as evidence."
)


# --- measurement helpers -----------------------------------------------------------------


def checkpoints_for(turns: int, extra: Sequence[int] = ()) -> list[int]:
    """The turns to report at: the issue's (<= N) and N; for small runs 10, N/10, N/2, N."""
    chosen = {c for c in STANDARD_CHECKPOINTS if c <= turns} | {turns}
    if turns < STANDARD_CHECKPOINTS[0]:
        chosen = {c for c in (10, turns // 10, turns // 2, turns) if c >= min(10, turns)}
    elif len(chosen) < 3:
        chosen.add(turns // 2)
    chosen |= {c for c in extra if 0 < c <= turns}
    return sorted(chosen)


def window_for(checkpoints: Sequence[int]) -> int:
    """Turns per window: 50, or less so that windows never overlap."""
    gaps = [b - a for a, b in zip([0, *checkpoints], checkpoints, strict=False)]
    return max(1, min(WINDOW, *gaps))


def quantiles(values: Sequence[float]) -> tuple[float, float]:
    """Median and p95 (nearest rank)."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def db_bytes(path: Path) -> tuple[int, int]:
    """(database file bytes, WAL bytes) after a TRUNCATE checkpoint on a separate connection."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size, wal.stat().st_size if wal.exists() else 0


def table_sizes(path: Path) -> list[tuple[str, str, int, int | None]] | None:
    """(name, table/index, bytes, rows) per b-tree from ``dbstat``; ``None`` if unavailable."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        try:
            sizes = conn.execute(
                "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC, 1"
            ).fetchall()
        except sqlite3.OperationalError:
            return None
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_master").fetchall())
        result = []
        for name, size in sizes:
            kind = kinds.get(name, "table" if name.startswith("sqlite_") else "?")
            rows = None
            if kind == "table":
                rows = conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
            result.append((name, kind, int(size), rows))
        return result
    finally:
        conn.close()


@dataclass
class Series:
    """Per-turn durations of one writer plus the byte figures sampled at its checkpoints."""

    name: str
    turns: int
    checkpoints: list[int]
    durations: dict[str, list[float]] = field(default_factory=dict)
    samples: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # turn -> db, wal, raw

    def record(self, kind: str, seconds: float) -> None:
        self.durations.setdefault(kind, []).append(seconds)

    @property
    def window(self) -> int:
        return window_for(self.checkpoints)

    def sample_turns(self) -> set[int]:
        """Turns after which bytes are sampled: each checkpoint and its window's start."""
        return set(self.checkpoints) | {c - self.window for c in self.checkpoints}

    def sample(self, turn: int, path: Path, raw: int) -> None:
        db, wal = db_bytes(path)
        self.samples[turn] = (db, wal, raw)

    def window_stats(self, kind: str, checkpoint: int) -> tuple[float, float]:
        values = self.durations[kind][checkpoint - self.window : checkpoint]
        return quantiles(values)

    def bytes_per_turn(self, checkpoint: int) -> float:
        before = self.samples[checkpoint - self.window][0]
        return (self.samples[checkpoint][0] - before) / self.window

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"turns": self.turns, "window": self.window, "checkpoints": {}}
        for cp in self.checkpoints:
            row: dict[str, Any] = {}
            for kind in self.durations:
                median, p95 = self.window_stats(kind, cp)
                row[f"{kind}_median_us"] = median * 1e6
                row[f"{kind}_p95_us"] = p95 * 1e6
            db, wal, raw = self.samples[cp]
            row.update(
                db_bytes=db,
                wal_bytes=wal,
                content_bytes=raw,
                db_over_content=db / raw,
                bytes_per_turn_window=self.bytes_per_turn(cp),
            )
            out["checkpoints"][str(cp)] = row
        return out


def print_series(series: Series, kinds: Sequence[str]) -> None:
    w = series.window
    print(f"  per turn, the {w} turns ending at each checkpoint (median / p95, ms):")
    header = "".join(f"{kind:>22}" for kind in kinds)
    print(f"  {'turn':>7}{header}")
    for cp in series.checkpoints:
        cells = []
        for kind in kinds:
            median, p95 = series.window_stats(kind, cp)
            cells.append(f"{median * 1e3:>11.2f} / {p95 * 1e3:>7.2f}")
        print(f"  {cp:>7}" + "".join(f"{c:>22}" for c in cells))
    first, last = series.checkpoints[0], series.checkpoints[-1]
    ratios = []
    for kind in kinds:
        ratio = series.window_stats(kind, last)[0] / series.window_stats(kind, first)[0]
        ratios.append(f"{kind} {ratio:.2f}x")
    print(f"  median at turn {last} / turn {first}: " + ", ".join(ratios))
    print("  bytes on disk (after wal_checkpoint(TRUNCATE)):")
    print(
        f"  {'turn':>7} {'db bytes':>13} {'wal':>6} {'content bytes':>14} {'db/content':>11}"
        f" {'db/turn':>10} {'window bytes/turn':>18}"
    )
    for cp in series.checkpoints:
        db, wal, raw = series.samples[cp]
        print(
            f"  {cp:>7} {db:>13,} {wal:>6,} {raw:>14,} {db / raw:>10.2f}x"
            f" {db / cp:>10,.0f} {series.bytes_per_turn(cp):>18,.0f}"
        )


# --- the engine --------------------------------------------------------------------------


def run_engine(
    path: Path, turns: int, checkpoints: list[int], seed: int, profile_from: int | None
) -> tuple[Series, pstats.Stats | None]:
    series = Series("clawvm-store", turns, checkpoints)
    sampled = series.sample_turns()
    clock = time.perf_counter
    raw = 0
    profile: cProfile.Profile | None = None
    profile_turns = range(profile_from, profile_from + 200) if profile_from is not None else ()
    with cvm.Store.open(path) as store:
        store.put("bootstrap/agents", type="bootstrap", content=BOOTSTRAP, project=PROJECT)
        raw += len(BOOTSTRAP.encode())
        sess = store.session(SESSION, project=PROJECT, principal="agent")
        series.sample(0, path, raw)
        for turn in range(turns):
            content = turn_content(seed, turn)
            exchange = content.exchange
            plan = plan_update(turn)
            raw += sum(len(s.encode()) for s in (exchange, content.tool_output, plan["content"]))
            if turn in profile_turns:
                profile = profile or cProfile.Profile()
                profile.enable()
            start = clock()
            sess.stage("conversation/main", type="conversation", op="append", content=exchange)
            sess.stage(
                f"evidence/tool/{turn}",
                type="evidence",
                content=content.tool_output,
                provenance={"uri": content.uri},
            )
            sess.stage("plan/main", type="plan", **plan)
            result = sess.end_turn()
            middle = clock()
            sess.assemble(BUDGET, fixed=FIXED)
            end = clock()
            if profile is not None and turn in profile_turns:
                profile.disable()
            series.record("write", middle - start)
            series.record("assemble", end - middle)
            series.record("write+assemble", end - start)
            if result.rejected:
                print(f"turn {turn}: {len(result.rejected)} rejected: {result.rejected}")
                for lsn, _reason in result.rejected:
                    print(f"  lsn {lsn}: {result.details.get(lsn, '')}")
                raise SystemExit("the loop must commit every update; fix the benchmark")
            if turn + 1 in sampled:
                series.sample(turn + 1, path, raw)
    stats = pstats.Stats(profile) if profile is not None else None
    return series, stats


# --- peers ---------------------------------------------------------------------------------


def langgraph_messages(content: TurnContent) -> list[dict[str, Any]]:
    call_id = f"call_{content.turn}"
    return [
        {"role": "user", "content": content.user},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": call_id, "name": "read_file", "args": {"path": content.tool_path}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": content.tool_output},
        {"role": "assistant", "content": content.assistant},
    ]


def agents_items(content: TurnContent) -> list[Any]:
    call_id = f"call_{content.turn}"
    return [
        {"role": "user", "content": content.user},
        {
            "type": "function_call",
            "call_id": call_id,
            "name": "read_file",
            "arguments": json.dumps({"path": content.tool_path}),
        },
        {"type": "function_call_output", "call_id": call_id, "output": content.tool_output},
        {"role": "assistant", "content": content.assistant},
    ]


def peer_raw_bytes(content: TurnContent) -> int:
    return sum(len(s.encode()) for s in (content.user, content.assistant, content.tool_output))


def run_langgraph(path: Path, turns: int, checkpoints: list[int], seed: int) -> Series | None:
    try:
        from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint
        from langgraph.checkpoint.sqlite import SqliteSaver
    except ImportError as exc:
        print(f"  LangGraph SqliteSaver: skipped, not installed ({exc}; pip install -e '.[bench]')")
        return None
    series = Series("LangGraph SqliteSaver", turns, checkpoints)
    sampled = series.sample_turns()
    clock = time.perf_counter
    raw = 0
    with SqliteSaver.from_conn_string(str(path)) as saver:
        config: dict[str, Any] = {"configurable": {"thread_id": SESSION, "checkpoint_ns": ""}}
        checkpoint = empty_checkpoint()
        messages: list[dict[str, Any]] = []
        version: str | None = None
        series.sample(0, path, raw)
        for turn in range(turns):
            content = turn_content(seed, turn)
            raw += peer_raw_bytes(content)
            # A message-list channel (add_messages) checkpoints its whole value every step,
            # under a new channel version, which is what the loop's node updates and has seen.
            messages.extend(langgraph_messages(content))
            version = saver.get_next_version(version, None)
            checkpoint["channel_values"] = {"messages": messages}
            checkpoint["channel_versions"] = {"messages": version}
            checkpoint["versions_seen"] = {"agent": {"messages": version}}
            checkpoint = create_checkpoint(checkpoint, None, turn)
            metadata: dict[str, Any] = {"source": "loop", "step": turn, "parents": {}}
            start = clock()
            config = saver.put(config, checkpoint, metadata, {"messages": version})  # type: ignore[arg-type]
            series.record("put", clock() - start)
            if turn + 1 in sampled:
                series.sample(turn + 1, path, raw)
    return series


def run_agents_sdk(path: Path, turns: int, checkpoints: list[int], seed: int) -> Series | None:
    try:
        from agents import SQLiteSession
    except ImportError as exc:
        print(
            f"  Agents SDK SQLiteSession: skipped, not installed ({exc}; pip install -e '.[bench]')"
        )
        return None
    series = Series("Agents SDK SQLiteSession", turns, checkpoints)
    sampled = series.sample_turns()
    clock = time.perf_counter

    async def loop() -> None:
        raw = 0
        session = SQLiteSession(SESSION, str(path))
        await session.get_items()  # creates the schema
        series.sample(0, path, raw)
        try:
            for turn in range(turns):
                content = turn_content(seed, turn)
                raw += peer_raw_bytes(content)
                items = agents_items(content)
                start = clock()
                await session.add_items(items)
                series.record("add_items", clock() - start)
                if turn + 1 in sampled:
                    series.sample(turn + 1, path, raw)
        finally:
            session.close()

    asyncio.run(loop())
    return series


# --- report --------------------------------------------------------------------------------


def verdict(value: float, goal: float) -> str:
    return "PASS" if value <= goal else "MISS"


def print_table_sizes(path: Path, total: int) -> list[dict[str, Any]] | None:
    sizes = table_sizes(path)
    if sizes is None:
        print("  dbstat is not available in this SQLite build: breakdown skipped")
        return None
    print(f"  {'name':<44} {'kind':<6} {'bytes':>13} {'share':>7} {'rows':>9}")
    rows = []
    rest, rest_bytes = 0, 0
    for name, kind, size, count in sizes:
        share = size / total if total else 0.0
        if share >= 0.01:
            count_text = f"{count:,}" if count is not None else ""
            print(f"  {name:<44} {kind:<6} {size:>13,} {share:>6.1%} {count_text:>9}")
        else:
            rest, rest_bytes = rest + 1, rest_bytes + size
        rows.append({"name": name, "kind": kind, "bytes": size, "rows": count})
    if rest:
        share = rest_bytes / total if total else 0.0
        print(f"  {f'{rest} others, each under 1%':<51} {rest_bytes:>13,} {share:>6.1%}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10_000, help="engine turns (default 10,000)")
    parser.add_argument(
        "--peer-turns", type=int, default=None, help="peer turns (default min(N, 2000); 0 skips)"
    )
    parser.add_argument("--db", type=Path, default=None, help="engine database (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument(
        "--profile-from",
        type=int,
        default=None,
        help="cProfile 200 engine turns from this turn; prints the top 15 cumulative",
    )
    args = parser.parse_args(argv)
    turns: int = args.turns
    if turns < 1:
        parser.error("--turns must be at least 1")
    peer_turns = min(turns, 2000) if args.peer_turns is None else min(args.peer_turns, turns)
    # ``timeout`` sends SIGTERM: exit through the context managers so the temp dir goes too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    with tempfile.TemporaryDirectory(prefix="clawvm-bench-long-", dir=".") as tmp:
        if args.db is None:
            path = Path(tmp) / "engine.db"
        else:
            path = args.db
            if path.exists():
                parser.error(f"{path} exists: the benchmark needs a fresh database")
        peer_dir = Path(tmp)
        return report(args, path, peer_dir, turns, peer_turns)


def report(
    args: argparse.Namespace, path: Path, peer_dir: Path, turns: int, peer_turns: int
) -> int:
    figures: dict[str, Any] = {"turns": turns, "peer_turns": peer_turns, "seed": args.seed}
    checkpoints = checkpoints_for(turns, extra=[peer_turns] if peer_turns < turns else [])
    print(f"long session: {turns:,} turns on one session of one Store.open({path})")
    print(
        f"  SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, budget {BUDGET}, "
        f"checkpoints {', '.join(map(str, checkpoints))}"
    )
    started = time.perf_counter()
    engine, stats = run_engine(path, turns, checkpoints, args.seed, args.profile_from)
    elapsed = time.perf_counter() - started
    print(f"\nclawvm-store ({elapsed:.1f} s, 0 rejected updates):")
    print_series(engine, ("write", "assemble", "write+assemble"))
    figures["engine"] = engine.figures()
    final_db = engine.samples[turns][0]
    print(f"\n  database by table and index at turn {turns} (dbstat, {final_db:,} bytes):")
    figures["engine"]["tables"] = print_table_sizes(path, final_db)

    peers: list[Series] = []
    if peer_turns > 0:
        peer_checkpoints = checkpoints_for(peer_turns, extra=checkpoints)
        note = (
            "" if peer_turns == turns else f" (--peer-turns: the first {peer_turns:,} turns only)"
        )
        print(f"\npeers, same content, each on its own SQLite file{note}:")
        for name, runner, kind in (
            ("langgraph", run_langgraph, "put"),
            ("agents_sdk", run_agents_sdk, "add_items"),
        ):
            started = time.perf_counter()
            series = runner(peer_dir / f"{name}.db", peer_turns, peer_checkpoints, args.seed)
            if series is None:
                continue
            elapsed = time.perf_counter() - started
            print(f"\n{series.name} ({elapsed:.1f} s, {peer_turns:,} turns):")
            print_series(series, (kind,))
            figures[name] = series.figures()
            peers.append(series)
        if peers:
            print("\nclawvm-store against the peers, at each peer's last checkpoint (same turns):")
        for series in peers:
            cp = series.checkpoints[-1]
            kind = next(iter(series.durations))
            ours = statistics.median(engine.durations["write"][cp - series.window : cp])
            theirs = series.window_stats(kind, cp)[0]
            db_ratio = (
                engine.samples[cp][0] / series.samples[cp][0] if cp in engine.samples else None
            )
            db_text = f"{db_ratio:.2f}x" if db_ratio is not None else "n/a"
            print(
                f"  turn {cp}: clawvm write / {series.name} {kind} (median) {ours / theirs:.2f}x,"
                f" db bytes clawvm / {series.name} {db_text}"
            )

    first, last = engine.checkpoints[0], engine.checkpoints[-1]
    cost = (
        engine.window_stats("write+assemble", last)[0]
        / engine.window_stats("write+assemble", first)[0]
    )
    db, _wal, raw = engine.samples[last]
    growth = engine.bytes_per_turn(last) / engine.bytes_per_turn(first)
    print(f"\n{SUMMARY_HEADER} (ratios from this run; printed, never an exit code)")
    print(
        f"{SUMMARY_COST}, turn {last} / turn {first}: {cost:6.2f}x  "
        f"goal <= {GOAL_COST_RATIO:.2f}x  {verdict(cost, GOAL_COST_RATIO)}"
    )
    print(
        f"{SUMMARY_DB} at turn {last}: {db / raw:6.2f}x  "
        f"goal <= {GOAL_DB_RATIO:.2f}x  {verdict(db / raw, GOAL_DB_RATIO)}"
    )
    print(
        f"{SUMMARY_GROWTH} (turn {last} / turn {first}): {growth:6.2f}x  "
        f"goal <= {GOAL_GROWTH_RATIO:.2f}x (linear)  {verdict(growth, GOAL_GROWTH_RATIO)}"
    )
    figures["summary"] = {
        "cost_ratio": cost,
        "db_over_content": db / raw,
        "growth_ratio": growth,
    }
    if stats is not None:
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats("cumulative").print_stats(15)
        print(f"\ncProfile, 200 engine turns from turn {args.profile_from} (top 15 cumulative):")
        print(out.getvalue())
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
