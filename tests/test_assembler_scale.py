"""Issue 14, the assembler's share: per-turn cost bounded by what can matter, not by history.

* Selection: :func:`choose` (steps planned once per page and reused) gives exactly the decisions
  of the selection before issue 14, kept here as the oracle, on random page sets.
* The page table: its incrementally kept indexes (shadowing, key order, LSN order, required and
  favoured pages) equal a rebuild from every page after any sequence of writes and deletes, and
  recency is the rank among all visible pages.
* The pool: at the paper's scale it is every page; past the reserve it is exactly the required,
  demanded, resident, changed, newest and favoured pages.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping, Sequence

import pytest

import clawvm_store as cvm
from clawvm_store.assembler import (
    DEFAULT_WEIGHTS,
    RECOMPUTE_COST,
    RESERVE,
    Candidate,
    PageTable,
    Reason,
    Selection,
    Weights,
    choose,
    recency_ranks,
)
from clawvm_store.errors import FloorShortfall
from clawvm_store.pages import POLICIES, Fidelity, PageType, Pin, Scope

URI = {"uri": "file:///x"}


def reference_choose(
    candidates: Sequence[Candidate],
    *,
    budget: int,
    fixed_tokens: int,
    demand: frozenset[str] = frozenset(),
    previous: Mapping[int, Fidelity] | None = None,
    weights: Weights = DEFAULT_WEIGHTS,
    hysteresis: bool = True,
    recency: Sequence[float] | None = None,
    boost: Mapping[str, float] | None = None,
    pins: bool = True,
) -> Selection:
    """The selection as it was before issue 14 (the oracle): the same two-phase greedy.

    Phase 1 installs every required page at its floor; phase 2 applies upgrades one rung at a
    time by Δutility/Δtokens (ties by key, then fidelity) while they fit. ``previous`` (page id →
    fidelity in the last assembly) drives hysteresis; ``recency`` may be passed precomputed.
    """
    previous = previous or {}
    count = len(candidates)
    rungs = [-1] * count
    reasons: dict[int, Reason] = {}
    shortfall: list[FloorShortfall] = []
    used = fixed_tokens
    for index, candidate in enumerate(candidates):
        reason: Reason | None = (
            "demand" if candidate.key in demand else (candidate.required if pins else None)
        )
        if reason is None:
            continue
        rung = candidate.floor_rung
        rungs[index] = rung
        reasons[candidate.page_id] = reason
        cost = candidate.costs[rung]
        used += cost
        shortfall.append(FloorShortfall(candidate.key, candidate.ladder[rung].value, cost))
    floor_tokens = used
    if used > budget:
        floor = {c.page_id: c.ladder[rungs[i]] for i, c in enumerate(candidates) if rungs[i] >= 0}
        return Selection(floor, reasons, [], floor_tokens, False, shortfall)

    if recency is None:
        recency = recency_ranks(candidates)
    w_recency, w_demand = weights.recency, weights.demand
    w_recompute, eta = weights.recompute, (weights.hysteresis if hysteresis else 0.0)
    bases = [0.0] * count
    sticky = [-1] * count  # the rung a page had last turn (-1: it was not resident)
    for index, candidate in enumerate(candidates):
        base = candidate.static_utility(weights) + w_recency * recency[index]
        if candidate.key in demand:
            base += w_demand
        if boost:
            base += boost.get(candidate.key, 0.0)
        bases[index] = base
        before = previous.get(candidate.page_id)
        if before is not None:
            sticky[index] = candidate.rung_of.get(before, -1)
    heap: list[tuple[float, str, int, int, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    upgrades: list[tuple[int, Fidelity | None]] = []
    pending: Sequence[int] = range(count)  # pages whose next rung must be queued
    first_pass = True
    while True:
        # Queue each pending page's next rung, ranked by Δutility/Δtokens. A rung's value is
        # base × quality, plus w_rc × recompute_cost(type) once resident at all, plus the
        # hysteresis bonus eta × base spread evenly over the steps back up to last turn's rung
        # (climbing past it loses nothing; stopping below it forfeits part of the bonus).
        for index in pending:
            candidate = candidates[index]
            current = rungs[index]
            target = current + 1
            costs = candidate.costs
            if target >= len(costs):
                continue
            base = bases[index]
            quality = candidate.quality
            gain = base * quality[target]
            cost = costs[target]
            if current >= 0:
                gain -= base * quality[current]
                cost -= costs[current]
            else:
                gain += w_recompute * RECOMPUTE_COST[candidate.type]
            if target <= sticky[index]:
                gain += eta * base / (sticky[index] + 1)
            # Used tokens only grow, so a step dearer than what is left now never fits later.
            if gain > 0 and cost <= budget - used:
                ratio = math.inf if cost <= 0 else gain / cost
                # A min-heap: negate the ratio; ties by (key, fidelity rank) for determinism.
                entry = (-ratio, candidate.key, candidate.ranks[target], index, target)
                if first_pass:
                    heap.append(entry)
                else:
                    push(heap, entry)
        if first_pass:
            heapq.heapify(heap)  # one O(n) build instead of n pushes
            first_pass = False
        if not heap:
            break
        _, _, _, index, rung = pop(heap)
        candidate = candidates[index]
        current = rungs[index]
        costs = candidate.costs
        delta = costs[rung] - (costs[current] if current >= 0 else 0)
        if used + delta > budget:
            pending = ()  # too dear now; a richer rung of the same page would cost more still
            continue
        rungs[index] = rung
        upgrades.append((candidate.page_id, candidate.ladder[current] if current >= 0 else None))
        used += delta
        pending = (index,)
    chosen: dict[int, Fidelity] = {}
    for index, candidate in enumerate(candidates):
        if rungs[index] >= 0:
            chosen[candidate.page_id] = candidate.ladder[rungs[index]]
            reasons.setdefault(candidate.page_id, "upgrade")
    return Selection(chosen, reasons, upgrades, floor_tokens, True, [])


def random_candidate(rng: random.Random, page_id: int) -> Candidate:
    """A page with random type, pin, priority, scope, LSN and token counts."""
    page_type = rng.choice(list(PageType))
    ladder = tuple(reversed(POLICIES[page_type].ladder))
    sizes = sorted(rng.randint(1, 400) for _ in ladder)
    if rng.random() < 0.1:
        rng.shuffle(sizes)  # a richer rung may be cheaper: steps of zero or negative cost
    candidate = Candidate(
        page_id=page_id,
        key=f"{page_type.value}/{rng.randint(0, 10**6):07d}-{page_id}",
        type=page_type,
        version=rng.randint(1, 5),
        pin=rng.choice([Pin.NONE, Pin.NONE, Pin.NONE, Pin.SOFT, Pin.HARD]),
        priority=rng.choice([0.0, 0.0, 0.5, 2.0, -0.5, -3.0]),
        scope=rng.choice([Scope.SESSION, Scope.PROJECT]),
        lsn=rng.randint(1, 10**6),
        tokens=dict(zip(ladder, sizes, strict=True)),
        header_tokens=rng.randint(2, 8),
        ladder=ladder,
    )
    return candidate.finish()


def as_tuple(selection: Selection) -> tuple[object, ...]:
    return (
        dict(selection.chosen),
        dict(selection.reasons),
        list(selection.upgrades),
        selection.floor_tokens,
        selection.feasible,
        [(s.key, s.fidelity, s.tokens) for s in selection.shortfall],
    )


@pytest.mark.parametrize("seed", range(8))
def test_choose_gives_exactly_the_reference_decisions(seed: int) -> None:
    rng = random.Random(seed)
    weights = [DEFAULT_WEIGHTS, Weights(recency=0.0, hysteresis=1.5, demand=0.1)]
    compared = infeasible = 0
    for scenario in range(40):
        candidates = sorted(
            (random_candidate(rng, page_id) for page_id in range(rng.randint(1, 60))),
            key=lambda c: c.key,
        )
        chosen: dict[int, Fidelity] = {}
        # Several turns in a row over the same candidates: the planned steps are reused while a
        # page's inputs stay the same and replanned when its demand, rung or recency changes.
        for turn in range(6):
            keys = [c.key for c in candidates]
            options = dict(
                budget=rng.choice([1, 50, 200, 600, 2000, 20000]),
                fixed_tokens=rng.randint(0, 40),
                demand=frozenset(rng.sample(keys, min(len(keys), rng.randint(0, 3)))),
                previous=chosen if turn else None,
                weights=weights[scenario % 2],
                hysteresis=rng.random() < 0.8,
                recency=None if rng.random() < 0.5 else recency_ranks(candidates),
                boost={k: rng.uniform(-1, 3) for k in rng.sample(keys, min(2, len(keys)))}
                if rng.random() < 0.3
                else None,
                pins=rng.random() < 0.9,
            )
            ours = choose(candidates, **options)  # type: ignore[arg-type]
            reference = reference_choose(candidates, **options)  # type: ignore[arg-type]
            assert as_tuple(ours) == as_tuple(reference), (seed, scenario, turn)
            compared += 1
            infeasible += not ours.feasible
            if ours.feasible:
                chosen = ours.chosen
    # The comparison covered both outcomes.
    assert compared == 240
    assert 0 < infeasible < compared


# -- the page table ------------------------------------------------------------------------------


def rebuilt(table: PageTable) -> list[Candidate]:
    """The visible pages as the table computed them before issue 14: all pages, sorted."""
    by_key: dict[str, Candidate] = {}
    for candidate in table.by_id.values():
        existing = by_key.get(candidate.key)
        if existing is None or candidate.scope is Scope.SESSION:
            by_key[candidate.key] = candidate
    return [by_key[key] for key in sorted(by_key)]


def refreshed(store: cvm.Store, table: PageTable) -> None:
    with store.db.transaction(write=False) as conn:
        table.refresh(conn)


def test_incremental_table_equals_a_rebuild_after_writes_shadowing_and_deletes(
    store: cvm.Store,
) -> None:
    rng = random.Random(5)
    store.session("s", project="p")
    table = PageTable("p", "s", store.counter)
    keys = [f"k/{i:03d}" for i in range(40)]
    versions: dict[tuple[str | None, str], int] = {}  # (session or None, key) -> last version
    types: dict[tuple[str | None, str], str] = {}
    deletes = shadowing = 0
    for step in range(80):
        # A batch of writes (the first is a bulk load: the indexes are sorted once).
        for _ in range(45 if step == 0 else rng.randint(1, 4)):
            key = rng.choice(keys)
            session = rng.choice(["s", None])
            where = (session, key)
            if where in versions and types[where] != "constraint" and rng.random() < 0.3:
                # (A constraint is hard-pinned: it cannot be deleted.) A session page going away uncovers the project page of its key, if any.
                store.put(
                    key,
                    type=types[where],
                    content=None,
                    op="delete",
                    project="p",
                    session=session,
                    expected_version=versions.pop(where),
                )
                deletes += 1
                continue
            page_type = types.get(where) or rng.choice(
                ["evidence", "preference", "constraint", "plan"]
            )
            page = store.put(
                key,
                type=page_type,
                content=f"step {step} {key} " + "word " * rng.randint(1, 30),
                project="p",
                session=session,
                pin=rng.choice([None, "soft", "none"]),
                priority=rng.choice([0.0, 0.0, 1.0]),
                provenance=URI if page_type == "evidence" else None,
                expected_version=versions.get(where),
            )
            versions[where], types[where] = page.version, page_type
            shadowing += ("s", key) in versions and (None, key) in versions
        refreshed(store, table)
        expected = rebuilt(table)
        assert [c.page_id for c in table.candidates()] == [c.page_id for c in expected]
        assert table.recency() == recency_ranks(expected)
        assert [c.key for c in table.required()] == [c.key for c in expected if c.required]
        assert set(table.visible) == {c.key for c in expected}
    assert deletes > 10
    assert shadowing > 10


def test_pool_is_every_page_at_the_papers_scale_and_bounded_past_the_reserve(
    store: cvm.Store,
) -> None:
    sess = store.session("s", project="p")
    store.put("boot/agents", type="bootstrap", content="Always run the tests.", project="p")
    sess.stage("rule/push", type="constraint", content="Never force-push.")
    sess.stage("pref/old-soft", type="preference", content="Tabs.", pin="soft")
    sess.stage("pref/old-priority", type="preference", content="Short answers.", priority=1.0)
    for i in range(40):
        sess.stage(f"ev/{i:04d}", type="evidence", content=f"result {i}", provenance=URI)
    sess.end_turn()
    table = PageTable("p", "s", store.counter)
    refreshed(store, table)
    # 44 pages: the pool is the whole table, so the selection is the one over every page.
    assert table.pool(demand=["ev/0003"]) is table.candidates()
    assert len(table.candidates()) == 44

    for i in range(40, 40 + RESERVE + 60):
        sess.stage(f"ev/{i:04d}", type="evidence", content=f"result {i}", provenance=URI)
    sess.end_turn()
    refreshed(store, table)
    assert len(table.visible) == 44 + RESERVE + 60
    # A page changed since the last assembly, although older than the newest RESERVE.
    table.take_changed()
    sess.stage(
        "ev/0010", type="evidence", content="result 10, again", provenance=URI, expected_version=1
    )
    sess.end_turn()
    refreshed(store, table)
    changed = table.take_changed()
    assert changed == {"ev/0010"}
    resident = [table.visible["ev/0020"].page_id, table.visible["ev/0021"].page_id]
    pool = table.pool(demand=["ev/0001", "ev/none"], previous=resident, changed=changed)
    newest = {f"ev/{i:04d}" for i in range(40 + RESERVE + 60 - RESERVE + 1, 40 + RESERVE + 60)}
    assert [c.key for c in pool] == sorted(
        {"boot/agents", "rule/push", "pref/old-soft", "pref/old-priority"}
        | {"ev/0001", "ev/0020", "ev/0021", "ev/0010"}
        | newest
    )
    # Recency stays the rank among all visible pages: the newest page is 1.0, ev/0010 (just
    # rewritten) is the newest of all, and the oldest evidence in the pool is far below.
    recency = dict(zip((c.key for c in pool), table.recency(pool), strict=True))
    assert recency["ev/0010"] == 1.0
    order = [key for _, key in sorted((c.lsn, c.key) for c in table.candidates())]
    assert recency["ev/0001"] == (order.index("ev/0001") + 1) / len(order)
