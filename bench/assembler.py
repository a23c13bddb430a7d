"""Assembler benchmark: policy time per turn, full assembly at scale, memory and stability.

Prints, from one run:

* the policy's time per turn (selection only, over the in-memory page table) at the paper's
  scale (10 to 50 pages, budgets 120 to 500) as median / p95 / max, with the ratio to a
  recency-only greedy baseline timed the same way in the same process;
* the full ``Session.assemble`` (page-table refresh, text fetch, rendering, exact count and the
  record it writes) at 100, 1,000 and 10,000 pages, and its growth against n log n;
* peak Python memory of one assembly at the largest size (tracemalloc);
* a long-lived agent (issue 14): one new evidence page per turn on top of 100 or 10,000 pages of
  history, about 100 of them resident: ``Session.assemble`` per turn, and the 10,000/100 ratio;
* what the assembly records cost: ``assembly_items`` rows per assembly against the rows the full
  records held (``resident_by_turn``), and the time of "what did the agent see at turn N";
* paging stability: fidelity changes per resident page per turn, with and without hysteresis;
* prompt caches (issue 16): prefix reuse, tokens and input cost with Anthropic's cache on the
  issue's 60-turn session, without a cache preset and with one, and the time it costs.

Run: ``python bench/assembler.py [--sizes 100 1000 10000]``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import clawvm_store as cvm
from clawvm_store.assembler import (
    SECTION_ORDER,
    Assembler,
    Candidate,
    choose,
    item_cost,
    recency_ranks,
)

WORDS = [
    *[
        "agent",
        "tool",
        "result",
        "file",
        "read",
        "edit",
        "plan",
        "step",
        "goal",
        "user",
        "assistant",
        "test",
        "commit",
        "branch",
    ],
    *[
        "payment",
        "endpoint",
        "idempotency",
        "key",
        "column",
        "index",
        "handler",
        "request",
        "response",
        "schema",
    ],
    *[
        "value",
        "error",
        "retry",
        "budget",
        "token",
        "page",
        "pointer",
        "structured",
        "compressed",
        "context",
        "window",
    ],
]
TYPES = (
    cvm.PageType.EVIDENCE,
    cvm.PageType.EVIDENCE,
    cvm.PageType.EVIDENCE,
    cvm.PageType.CONVERSATION,
    cvm.PageType.CONVERSATION,
    cvm.PageType.PREFERENCE,
    cvm.PageType.PLAN,
)


def text(rng: random.Random, lines: int) -> str:
    """Deterministic pseudo-English lines."""
    return "\n".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "." for _ in range(lines)
    )


def populate(store: cvm.Store, session: cvm.Session, pages: int, seed: int) -> list[str]:
    """A bootstrap page, a constraint, and ``pages`` others of mixed types, committed."""
    rng = random.Random(seed)
    store.put(
        "bootstrap/agents",
        type="bootstrap",
        project=session.project,
        content="# Rules\n- Always run the tests.\n- Never edit vendor/.\n" + text(rng, 3),
    )
    session.stage("constraint/push", type="constraint", content="Never force-push to main.")
    keys = []
    for i in range(pages):
        page_type = TYPES[i % len(TYPES)]
        key = f"{page_type.value}/{i:05d}"
        session.stage(
            key,
            type=page_type,
            content=text(rng, rng.randint(2, 12)),
            provenance={"uri": f"file:///src/{i}.py"}
            if page_type is cvm.PageType.EVIDENCE
            else None,
        )
        keys.append(key)
        if i % 500 == 499:
            session.end_turn()
    session.end_turn()
    return keys


def figures(label: str, samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    result = {
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
    }
    print(
        f"  {label:<34} median {result['median'] * 1e6:8.1f} µs   p95 {result['p95'] * 1e6:8.1f} µs"
        f"   max {result['max'] * 1e6:8.1f} µs"
    )
    return result


def lru_baseline(
    candidates: Sequence[Candidate], budget: int, fixed_tokens: int
) -> dict[int, cvm.Fidelity]:
    """Recency-only greedy: floors first, then whole pages by recency at their richest fit."""
    chosen: dict[int, cvm.Fidelity] = {}
    used = fixed_tokens
    for candidate in candidates:
        if candidate.pin is cvm.Pin.HARD:
            floor = cvm.POLICIES[candidate.type].floor
            chosen[candidate.page_id] = floor
            used += item_cost(candidate, floor)
    for candidate in sorted(candidates, key=lambda c: -c.lsn):
        if candidate.page_id in chosen:
            continue
        for fidelity in reversed(candidate.ladder):
            cost = item_cost(candidate, fidelity)
            if used + cost <= budget:
                chosen[candidate.page_id] = fidelity
                used += cost
                break
    return chosen


def time_calls(call: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def bench_policy(root: Path) -> None:
    print("policy time per turn (selection only, in-memory page table):")
    with cvm.Store.open(root / "policy.db") as store:
        session = store.session("policy", project="bench")
        keys = populate(store, session, 48, seed=1)
        assembler = Assembler(store, "bench", "policy")
        with store.db.transaction(write=False) as conn:
            assembler.table.refresh(conn)
        everything = assembler.table.candidates()
        rng = random.Random(2)
        for size in (10, 25, 50):
            candidates = everything[:size]
            recency = recency_ranks(candidates)
            for budget in (120, 240, 500):
                # The floor of these sets is 100-400 tokens: the paper's budgets sit on top of it.
                total = budget + 400
                demand_sets = [frozenset(rng.sample(keys[: size - 2], 2)) for _ in range(64)]
                ours = time_turns(candidates, recency, total, demand_sets)
                growing = time_turns(candidates, recency, total, demand_sets, growing=True)
                baseline = time_calls(partial(lru_baseline, candidates, total, 20), 400)
                result = figures(f"{size:>2} pages, budget {total:>4}", ours)
                ratio = result["median"] / statistics.median(baseline)
                print(
                    f"  {'':<34} recency-only baseline median "
                    f"{statistics.median(baseline) * 1e6:.1f} µs; ratio {ratio:.2f}x"
                )
                figures("  ... a new page every turn", growing)


def time_turns(
    candidates: Sequence[Candidate],
    recency: Sequence[float],
    budget: int,
    demand_sets: Sequence[frozenset[str]],
    *,
    growing: bool = False,
) -> list[float]:
    """Time one selection per turn, each turn feeding the next its previous residency.

    ``growing``: as if a new page arrived every turn, so every page's recency (its rank over
    one more page) changes and no page's planned climb can be reused: the worst case.
    """
    previous: dict[int, cvm.Fidelity] = {}
    samples = []
    count = len(candidates)
    first = list(recency)
    for turn in range(400):
        if growing:
            # The same order, over count + turn + 1 pages: every value differs from last turn's.
            recency = [rank * count / (count + turn + 1) for rank in first]
        start = time.perf_counter()
        selection = choose(
            candidates,
            budget=budget,
            fixed_tokens=20,
            demand=demand_sets[turn % len(demand_sets)],
            previous=previous,
            recency=recency,
        )
        samples.append(time.perf_counter() - start)
        previous = selection.chosen
    return samples


def bench_full(root: Path, sizes: Sequence[int]) -> None:
    print("\nfull assemble (page-table refresh, text fetch, render, exact count, record):")
    medians: dict[int, float] = {}
    for size in sizes:
        with cvm.Store.open(root / f"full-{size}.db") as store:
            session = store.session("full", project="bench")
            start = time.perf_counter()
            keys = populate(store, session, size, seed=size)
            built = time.perf_counter() - start
            rng = random.Random(3)
            cold_start = time.perf_counter()
            session.assemble(4000, fixed="You are a careful agent.")
            cold = time.perf_counter() - cold_start
            samples = []
            for _ in range(30):
                demand = rng.sample(keys, 3)
                start = time.perf_counter()
                session.assemble(4000, fixed="You are a careful agent.", demand=demand)
                samples.append(time.perf_counter() - start)
            print(
                f"  {size:>6} pages (built in {built:.1f} s; first assembly {cold * 1e3:.1f} ms incl. page-table load)"
            )
            result = figures("    steady-state assemble", samples)
            medians[size] = result["median"]
            if size == sizes[-1]:
                tracemalloc.start()
                session.assemble(4000, fixed="You are a careful agent.", demand=rng.sample(keys, 3))
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                print(
                    f"  {'':<4}peak Python memory of one assembly at {size} pages: {peak / 1e6:.1f} MB"
                )
    base = sizes[0]
    for size in sizes[1:]:
        growth = medians[size] / medians[base]
        nlogn = (size * math.log(size)) / (base * math.log(base))
        print(f"  growth {base} -> {size} pages: {growth:.1f}x (n log n would be {nlogn:.1f}x)")
    print("  goal: <= 20 ms at 10,000 pages, growing no worse than n log n")


def bench_history(root: Path, sizes: Sequence[int], turns: int) -> None:
    print(
        "\nlong-lived agent: one new evidence page per turn over a history of N pages, about 100"
        "\nresident (Session.assemble only; the turn's boundary is not timed):"
    )
    medians: dict[int, float] = {}
    for size in sizes:
        with cvm.Store.open(root / f"history-{size}.db", durability="normal") as store:
            session = store.session("long", project="bench")
            keys = populate(store, session, size, seed=size)
            rng = random.Random(5)
            budget = 3000
            session.assemble(budget, fixed="You are a careful agent.")
            samples, resident = [], []
            for turn in range(turns):
                session.stage(
                    f"evidence/new-{turn:05d}",
                    type="evidence",
                    content=text(rng, rng.randint(2, 8)),
                    provenance={"uri": f"file:///new/{turn}"},
                )
                session.end_turn()
                demand = [*rng.sample(keys, 2), f"evidence/new-{turn:05d}"]
                start = time.perf_counter()
                result = session.assemble(budget, fixed="You are a careful agent.", demand=demand)
                samples.append(time.perf_counter() - start)
                resident.append(len(result.items))
            print(
                f"  {size:>6} pages of history, {statistics.median(resident):.0f} resident "
                f"(median of {turns} turns)"
            )
            medians[size] = figures("    assemble per turn", samples)["median"]
            full_rows, delta_rows = (
                store.query(query)[0]["n"]
                for query in (
                    "SELECT COUNT(*) AS n FROM resident_by_turn WHERE session = 'long'",
                    "SELECT COUNT(*) AS n FROM assembly_items i JOIN assemblies a "
                    "ON a.id = i.assembly_id WHERE a.session_id = 'long'",
                )
            )
            assemblies = turns + 1
            print(
                f"    records: {delta_rows / assemblies:.1f} assembly_items rows per assembly "
                f"(the full records: {full_rows / assemblies:.1f})"
            )
            seen = time_calls(
                partial(
                    store.query,
                    "SELECT position, key, fidelity, reason FROM resident_by_turn "
                    "WHERE session = :s AND turn = :t ORDER BY position",
                    {"s": "long", "t": session.turn - 1},
                ),
                20,
            )
            figures("    what the agent saw at turn N (SQL)", seen)
    base, top = sizes[0], sizes[-1]
    print(
        f"  ratio {top} / {base} pages of history: {medians[top] / medians[base]:.2f}x"
        f"   (goal: p50 <= 5 ms at 10,000 pages with ~100 resident)"
    )


def bench_stability(root: Path) -> None:
    print(
        "\npaging stability (40 turns, budget 900): a change is a page resident last turn that"
        "\nis now at another fidelity or evicted, per page resident last turn"
    )
    for hysteresis in (True, False):
        with cvm.Store.open(root / f"stability-{hysteresis}.db") as store:
            session = store.session("stable", project="bench")
            keys = populate(store, session, 30, seed=7)
            assembler = Assembler(store, "bench", "stable", hysteresis=hysteresis)
            rng = random.Random(11)
            previous: dict[str, cvm.Fidelity] = {}
            changes = resident = 0
            for turn in range(40):
                session.stage(
                    f"evidence/new-{turn}",
                    type="evidence",
                    content=text(rng, rng.randint(2, 8)),
                    provenance={"uri": f"file:///new/{turn}"},
                )
                session.end_turn()
                result = assembler.assemble(900, demand=rng.sample(keys, 2), record=True)
                current = {item.key: item.fidelity for item in result.items}
                changes += sum(1 for key, was in previous.items() if current.get(key) is not was)
                resident += len(previous)
                previous = current
            label = "with hysteresis" if hysteresis else "without hysteresis"
            print(
                f"  {label:<20} {changes / max(resident, 1):.3f} changes per resident page per "
                f"turn ({changes} of {resident})"
            )


def bench_cache(root: Path, turns: int = 60) -> None:
    """The issue 16 figures: the issue's 60-turn session (bootstrap, one constraint, one
    conversation page and a new evidence page per turn, budget 6,000, so pages get evicted),
    assembled without a cache and with the Anthropic preset, in the same process."""
    from clawvm_store.cache import CacheMeter

    print(
        f"\nprompt cache ({turns} turns, budget 6000, a new ~250-token result every turn):"
        "\n  reuse = median share of each prompt that is a prefix of the previous one"
    )
    timings: dict[str, list[float]] = {}
    for cache in ("none", "anthropic"):
        with cvm.Store.open(root / f"cache-{cache}.db") as store:
            session = store.session("cached", project="bench")
            session.configure_assembly(cache=cache)
            session.stage("bootstrap/agent", type="bootstrap", content="You are a careful agent.")
            session.stage("constraint/safety", type="constraint", content="Never delete data.")
            rng = random.Random(5)
            meter = CacheMeter()
            # The same prompts in the layout before issue 16 (DESIGN section order, keys
            # sorted within): the baseline, measured on the very same selections.
            old_layout = CacheMeter()
            samples: list[float] = []
            tokens: list[int] = []
            for turn in range(turns):
                session.stage(
                    "conversation/main",
                    type="conversation",
                    content=f"user: step {turn}\nassistant: done {turn}\n",
                    op="append",
                )
                session.stage(
                    f"evidence/result-{turn}",
                    type="evidence",
                    content=text(rng, 12),
                    provenance={"uri": f"file:///result/{turn}"},
                )
                session.end_turn()
                start = time.perf_counter()
                result = session.assemble(6000, demand=[f"evidence/result-{turn}"])
                samples.append(time.perf_counter() - start)
                meter.add(result.prompt_blocks)
                if cache == "none":  # one block per page: the same blocks, reordered
                    pairs = sorted(
                        zip(result.items, result.prompt_blocks, strict=True),
                        key=lambda pair: (SECTION_ORDER[pair[0].type], pair[0].key),
                    )
                    old_layout.add([block for _, block in pairs])
                tokens.append(result.tokens)
            timings[cache] = samples
            print(
                f"  cache={cache:<10} reuse {meter.median_reuse:6.1%}   tokens/prompt "
                f"{statistics.fmean(tokens):6.0f}   input cost with caching "
                f"{meter.cost_ratio:.3f}x of without   assemble median "
                f"{statistics.median(samples) * 1e3:.2f} ms   p95 "
                f"{sorted(samples)[int(0.95 * len(samples))] * 1e3:.2f} ms"
            )
            if cache == "none":
                print(
                    f"  {'old layout':<16} reuse {old_layout.median_reuse:6.1%}   (the same "
                    f"prompts in section and key order: {old_layout.cost_ratio:.3f}x)"
                )
    ratio = statistics.median(timings["anthropic"]) / statistics.median(timings["none"])
    print(f"  assemble time, cache-aware / plain (median): {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--history", type=int, nargs="+", default=[100, 10000])
    parser.add_argument("--turns", type=int, default=60, help="turns of the long-lived agent")
    parser.add_argument(
        "--only", choices=["policy", "full", "history", "stability", "cache"], action="append"
    )
    args = parser.parse_args()
    only = set(args.only or ["policy", "full", "history", "stability", "cache"])
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp)
        if "policy" in only:
            bench_policy(root)
        if "full" in only:
            bench_full(root, args.sizes)
        if "history" in only:
            bench_history(root, args.history, args.turns)
        if "stability" in only:
            bench_stability(root)
        if "cache" in only:
            bench_cache(root)
    print(
        "\npaper: policy median under 50 µs (18-44 µs), p95 under 60 µs, in pure Python;"
        "\ngoal (issue 14): selection <= 25 µs median at 10-50 pages"
    )


if __name__ == "__main__":
    main()
