"""Prompt assembly under a token budget: the floor first, then upgrades by utility per token.

Assembly is a multiple-choice knapsack with hard constraints (at most one fidelity per page). It
is solved greedily in two phases, as in the paper (DESIGN 1.3):

1. **Floor.** The fixed region (system prompt, tool schemas) plus every required page at its
   type's minimum fidelity: hard-pinned pages, bootstrap and constraint pages, and the pages the
   caller demands this turn. The floor is rendered and counted exactly; if it does not fit, that is
   physical insufficiency, reported page by page, never a silently dropped pin.
2. **Upgrades.** One step up a page's ladder at a time (absent → pointer → structured → ...),
   ranked by Δutility / Δtokens, ties broken by ``(key, fidelity)``; each upgrade that still fits
   is applied.

Utility of a page at a fidelity is ``base × q(fidelity) + w_rc × recompute_cost(type)`` (the
second term once the page is resident at all), where ``base`` adds the paper's terms: pins (hard
2.0, soft 0.6), bootstrap, plan, recency (0.6), session scope, demand, plus the page's own
priority. **Hysteresis** adds a bonus for being at or above the fidelity the page had in the
previous assembly, so a page only falls back when something else clearly needs its tokens and
residency does not flip from turn to turn.

Token costs per page come from the counts stored at write time plus a per-page header; the
rendered text is then counted as one string, and upgrades are undone (last first) until it fits,
so **the text never exceeds the budget**. Same inputs give byte-identical output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, bindparam
from sqlalchemy import select as sql_select

from . import schema as t
from .errors import FloorShortfall, InsufficientBudget, InvalidInput
from .journal import LATEST_EVENT, applied_since
from .pages import POLICIES, Fidelity, PageType, Pin, Scope
from .segments import read_texts
from .tokens import TokenCounter

Reason = Literal["floor", "pin", "demand", "upgrade", "evicted-for-budget"]

# Fidelity value as a fraction of the page's base utility, richest first.
QUALITY: dict[Fidelity, float] = {
    Fidelity.FULL: 1.0,
    Fidelity.COMPRESSED: 0.7,
    Fidelity.STRUCTURED: 0.45,
    Fidelity.POINTER: 0.15,
}
# How costly it is to get the content back once it has fallen out entirely (a tool re-run for
# evidence, a re-read for conversation); credited once the page is resident at any fidelity.
RECOMPUTE_COST: dict[PageType, float] = {
    PageType.EVIDENCE: 1.0,
    PageType.CONVERSATION: 0.5,
    PageType.PLAN: 0.5,
    PageType.PREFERENCE: 0.25,
    PageType.BOOTSTRAP: 0.25,
    PageType.CONSTRAINT: 0.25,
}
SECTION_ORDER: dict[PageType, int] = {
    PageType.BOOTSTRAP: 0,
    PageType.CONSTRAINT: 1,
    PageType.PLAN: 2,
    PageType.PREFERENCE: 3,
    PageType.EVIDENCE: 4,
    PageType.CONVERSATION: 5,
}
_HEADER_SUFFIX = {
    Fidelity.FULL: "",
    Fidelity.COMPRESSED: " (compressed)",
    Fidelity.STRUCTURED: " (structured)",
    Fidelity.POINTER: "",
}
SEPARATOR = "\n\n"
MAX_BUDGET = 100_000_000  # far past any context window; keeps arithmetic inside 64 bits


@dataclass(frozen=True)
class Weights:
    """Utility weights: the paper's reference values where it gives them, ours elsewhere."""

    hard_pin: float = 2.0
    soft_pin: float = 0.6
    recency: float = 0.6
    recompute: float = 0.4
    bootstrap: float = 1.0
    plan: float = 0.8
    session_scope: float = 0.2
    demand: float = 3.0
    hysteresis: float = 0.5


DEFAULT_WEIGHTS = Weights()


@dataclass(slots=True)
class Candidate:
    """One page in the in-memory page table: what selection needs, no text.

    ``costs`` and ``quality`` are aligned with ``ladder`` (cheapest rung first) and computed once
    when the page enters the table, so a turn's selection is arithmetic over tuples.
    """

    page_id: int
    key: str
    type: PageType
    version: int
    pin: Pin
    priority: float
    scope: Scope
    lsn: int
    tokens: dict[Fidelity, int]
    header_tokens: int
    ladder: tuple[Fidelity, ...]  # cheapest first
    sources: dict[Fidelity, Fidelity] = field(default_factory=dict)  # where each text came from
    costs: tuple[int, ...] = ()
    quality: tuple[float, ...] = ()
    floor_rung: int = 0
    required: Reason | None = None  # why it is in every floor (demand aside)
    rung_of: dict[Fidelity, int] = field(default_factory=dict)
    ranks: tuple[int, ...] = ()
    _static: tuple[Weights, float] | None = None

    def static_utility(self, weights: Weights) -> float:
        """The turn-independent part of the base utility, remembered per weights object."""
        cached = self._static
        if cached is None or cached[0] is not weights:
            cached = (weights, static_utility(self, weights))
            self._static = cached
        return cached[1]

    def finish(self) -> Candidate:
        """Compute the per-rung costs and qualities once all token counts are in."""
        self.costs = tuple(item_cost(self, fidelity) for fidelity in self.ladder)
        self.quality = tuple(QUALITY[fidelity] for fidelity in self.ladder)
        self.floor_rung = self.ladder.index(POLICIES[self.type].floor)
        self.rung_of = {fidelity: rung for rung, fidelity in enumerate(self.ladder)}
        self.ranks = tuple(fidelity.rank for fidelity in self.ladder)
        if self.pin is Pin.HARD:
            self.required = "pin"
        elif POLICIES[self.type].always_required:
            self.required = "floor"
        return self


@dataclass(frozen=True)
class AssembledPage:
    """A page as it went into the prompt (contract)."""

    key: str
    type: PageType
    fidelity: Fidelity
    version: int
    tokens: int
    text: str
    reason: Reason = "upgrade"


@dataclass(frozen=True)
class Decision:
    """Why a page is in the prompt at its fidelity, or why it left it."""

    key: str
    type: PageType
    fidelity: Fidelity | None
    tokens: int
    reason: Reason


@dataclass(frozen=True)
class Assembly:
    """An assembled prompt (contract): items, exact token count, text and chat messages."""

    items: list[AssembledPage]
    tokens: int
    budget: int
    feasible: bool
    text: str
    messages: list[dict[str, str]]
    decisions: list[Decision]
    effective_budget: int = 0
    fixed_tokens: int = 0
    missing: list[str] = field(default_factory=list)
    shortfall: InsufficientBudget | None = None
    assembly_id: int | None = None


@dataclass
class Selection:
    """The outcome of :func:`choose`: a fidelity per chosen page, in the order applied."""

    chosen: dict[int, Fidelity]
    reasons: dict[int, Reason]
    upgrades: list[tuple[int, Fidelity | None]]  # (page, fidelity before) for undo, in order
    floor_tokens: int
    feasible: bool
    shortfall: list[FloorShortfall]


def item_cost(candidate: Candidate, fidelity: Fidelity) -> int:
    """Estimated tokens of one rendered item: header (as rendered for the text's true source),
    text, separator. The exact count of the whole prompt has the last word."""
    source = candidate.sources.get(fidelity, fidelity)
    return candidate.header_tokens + _SUFFIX_TOKENS[source] + candidate.tokens[fidelity] + 1


_SUFFIX_TOKENS = {
    Fidelity.FULL: 0,
    Fidelity.COMPRESSED: 3,
    Fidelity.STRUCTURED: 3,
    Fidelity.POINTER: 0,
}


def is_required(candidate: Candidate, demand: frozenset[str]) -> Reason | None:
    """Why a page belongs to the floor (``None`` if it does not)."""
    if candidate.key in demand:
        return "demand"
    if candidate.pin is Pin.HARD:
        return "pin"
    if POLICIES[candidate.type].always_required:
        return "floor"
    return None


def static_utility(candidate: Candidate, weights: Weights) -> float:
    """The part of a page's base utility that does not change from turn to turn."""
    base = 1.0 + candidate.priority
    if candidate.pin is Pin.HARD:
        base += weights.hard_pin
    elif candidate.pin is Pin.SOFT:
        base += weights.soft_pin
    if candidate.type in (PageType.BOOTSTRAP, PageType.CONSTRAINT):
        base += weights.bootstrap
    elif candidate.type is PageType.PLAN:
        base += weights.plan
    if candidate.scope is Scope.SESSION:
        base += weights.session_scope
    return base


def recency_ranks(candidates: Sequence[Candidate]) -> list[float]:
    """Recency in (0, 1] by the LSN of each page's head version, newest = 1.0."""
    count = len(candidates)
    ranks = [0.0] * count
    for rank, index in enumerate(sorted(range(count), key=lambda i: candidates[i].lsn)):
        ranks[index] = (rank + 1) / count
    return ranks


def choose(
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
    """The two-phase greedy selection over an in-memory page table (no SQL, no text).

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


# -- the page table -----------------------------------------------------------------------------

# Page versions applied since a watermark. The watermark is the boundary event id: entries are
# applied inside boundaries, which commit one at a time in id order, whereas LSNs are assigned at
# staging and apply out of order across sessions.
# The pages a session can see whose head changed since the table's watermark.
_TABLE_QUERY = applied_since(
    t.pages.c.id,
    t.pages.c.key,
    t.pages.c.type,
    t.pages.c.version,
    t.pages.c.pin,
    t.pages.c.priority,
    t.pages.c.scope,
    t.pages.c.deleted,
    t.page_versions.c.lsn,
    t.representations.c.fidelity,
    t.representations.c.tokens,
    t.representations.c.source,
).where(
    t.pages.c.project == bindparam("b_project"),
    t.pages.c.session_id.in_([bindparam("b_session"), ""]),
)


class PageTable:
    """The pages one session can see, kept in memory and refreshed incrementally.

    A refresh reads only page versions written since the last one (by LSN), so a steady-state
    assembly costs one indexed query however many pages there are.
    """

    def __init__(self, project: str, session_id: str, counter: TokenCounter) -> None:
        self.project = project
        self.session_id = session_id
        self.counter = counter
        self.by_id: dict[int, Candidate] = {}
        self.since = 0
        self._ordered: tuple[list[Candidate], list[float]] | None = None

    def refresh(self, conn: Connection) -> None:
        """Bring the table up to date with the database."""
        newest = conn.execute(LATEST_EVENT).scalar() or 0
        if newest <= self.since:
            return
        rows = conn.execute(
            _TABLE_QUERY,
            {"b_project": self.project, "b_session": self.session_id, "b_since": self.since},
        ).all()
        fresh: dict[int, Candidate] = {}
        deleted: set[int] = set()
        for row in rows:
            if row.deleted:
                deleted.add(row.id)
                continue
            candidate = fresh.get(row.id)
            if candidate is None:
                page_type = PageType(row.type)
                candidate = Candidate(
                    page_id=row.id,
                    key=row.key,
                    type=page_type,
                    version=row.version,
                    pin=Pin(row.pin),
                    priority=float(row.priority),
                    scope=Scope(row.scope),
                    lsn=row.lsn,
                    tokens={},
                    header_tokens=self.counter.count(_header(row.key, Fidelity.FULL)),
                    ladder=tuple(reversed(POLICIES[page_type].ladder)),
                )
                fresh[row.id] = candidate
            if row.fidelity is not None:
                fidelity = Fidelity(row.fidelity)
                candidate.tokens[fidelity] = int(row.tokens)
                candidate.sources[fidelity] = Fidelity(row.source)
        for page_id in deleted:
            self.by_id.pop(page_id, None)
        for candidate in fresh.values():
            candidate.finish()
        self.by_id.update(fresh)
        self.since = newest
        if fresh or deleted:
            self._ordered = None

    def candidates(self) -> list[Candidate]:
        """The visible pages by key, a session's own page shadowing a project page's key."""
        return self._order()[0]

    def recency(self) -> list[float]:
        """Recency ranks aligned with :meth:`candidates` (cached until the table changes)."""
        return self._order()[1]

    def _order(self) -> tuple[list[Candidate], list[float]]:
        if self._ordered is None:
            by_key: dict[str, Candidate] = {}
            for candidate in self.by_id.values():
                existing = by_key.get(candidate.key)
                if existing is None or candidate.scope is Scope.SESSION:
                    by_key[candidate.key] = candidate
            ordered = [by_key[key] for key in sorted(by_key)]
            self._ordered = (ordered, recency_ranks(ordered))
        return self._ordered


def _header(key: str, fidelity: Fidelity) -> str:
    return f"### {key}{_HEADER_SUFFIX[fidelity]}\n"


# -- rendering ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderItem:
    """One page ready to render: its candidate, fidelity, text and reason."""

    candidate: Candidate
    fidelity: Fidelity
    text: str
    tokens: int
    reason: Reason
    source: Fidelity | None = None

    @property
    def header(self) -> str:
        """``### key`` plus what the text really is when it is not the full content."""
        return _header(self.candidate.key, self.source or self.fidelity)


def render_order(items: Iterable[RenderItem]) -> list[RenderItem]:
    """Sections in DESIGN order; keys sorted within, conversation in time (LSN) order."""
    return sorted(
        items,
        key=lambda item: (
            SECTION_ORDER[item.candidate.type],
            item.candidate.lsn if item.candidate.type is PageType.CONVERSATION else 0,
            item.candidate.key,
        ),
    )


def render(fixed: str, items: Sequence[RenderItem]) -> tuple[str, list[dict[str, str]]]:
    """The prompt text and its chat-style messages for ``items`` (already in render order)."""
    parts = [fixed] if fixed else []
    parts.extend(item.header + item.text for item in items)
    text = SEPARATOR.join(parts)
    messages: list[dict[str, str]] = []
    if fixed:
        messages.append({"role": "system", "content": fixed})
    section: list[str] = []
    section_type: PageType | None = None
    for item in items:
        rendered = item.header + item.text
        if item.candidate.type is PageType.CONVERSATION:
            if section:
                messages.append({"role": "system", "content": SEPARATOR.join(section)})
                section = []
            messages.append({"role": _conversation_role(item.text), "content": rendered})
            continue
        if section and item.candidate.type is not section_type:
            messages.append({"role": "system", "content": SEPARATOR.join(section)})
            section = []
        section.append(rendered)
        section_type = item.candidate.type
    if section:
        messages.append({"role": "system", "content": SEPARATOR.join(section)})
    return text, messages


def _conversation_role(text: str) -> str:
    roles = {line.split(":", 1)[0].strip().lower() for line in text.splitlines() if ":" in line}
    roles &= {"user", "assistant", "tool", "system"}
    return roles.pop() if len(roles) == 1 else "user"


def text_digest(text: str) -> str:
    """SHA-256 of a rendered prompt, stored with its assembly record."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_budget(budget: object) -> int:
    """A budget must be a positive integer."""
    if isinstance(budget, bool) or not isinstance(budget, int) or not 0 < budget <= MAX_BUDGET:
        raise InvalidInput(f"budget must be an integer from 1 to {MAX_BUDGET}, not {budget!r:.40}")
    return budget


def insufficiency(
    selection: Selection, budget: int, fixed_tokens: int, requested: int | None = None
) -> InsufficientBudget:
    """The error that reports exactly which pages the floor needs and the shortfall."""
    required = selection.floor_tokens
    margin_note = (
        f" ({requested} requested, less the learned safety margin)"
        if requested is not None and requested != budget
        else ""
    )
    pages = ", ".join(f"{p.key}@{p.fidelity}={p.tokens}" for p in selection.shortfall[:10])
    more = f" and {len(selection.shortfall) - 10} more" if len(selection.shortfall) > 10 else ""
    return InsufficientBudget(
        f"the floor needs {required} tokens (fixed region {fixed_tokens}; {pages}{more}) but the "
        f"budget is {budget}{margin_note}: short by {required - budget}",
        budget=budget,
        required=required,
        pages=selection.shortfall,
    )


def previous_fidelities(rows: Iterable[Any]) -> dict[int, Fidelity]:
    """Page id → fidelity from the items of the previous assembly record."""
    return {row.page_id: Fidelity(row.fidelity) for row in rows if row.fidelity is not None}


# -- orchestration ------------------------------------------------------------------------------

MARGIN_WINDOW = 20
_FIDELITY = {fidelity.value: fidelity for fidelity in Fidelity}
_TEXTS = (
    sql_select(
        t.representations.c.page_id,
        t.representations.c.version,
        t.representations.c.fidelity,
        t.representations.c.content,
        t.representations.c.source,
        t.representations.c.chain_start,
        t.representations.c.same_as,
    )
    .select_from(
        # Only the head version's rows: a page's older versions are never read to build a prompt.
        t.representations.join(
            t.pages,
            (t.pages.c.id == t.representations.c.page_id)
            & (t.pages.c.version == t.representations.c.version),
        )
    )
    .where(
        t.representations.c.page_id.in_(bindparam("b_ids", expanding=True)),
        t.representations.c.fidelity.in_(bindparam("b_fidelities", expanding=True)),
    )
)
MAX_MARGIN = 2.0

_PREVIOUS_ITEMS = sql_select(
    t.assembly_items.c.page_id, t.assembly_items.c.fidelity, t.assembly_items.c.version
).where(
    t.assembly_items.c.assembly_id
    == sql_select(t.assemblies.c.id)
    .where(t.assemblies.c.session_id == bindparam("b_session"))
    .order_by(t.assemblies.c.id.desc())
    .limit(1)
    .scalar_subquery()
)
_OBSERVED = (
    sql_select(t.assemblies.c.tokens, t.assemblies.c.observed_tokens)
    .where(
        t.assemblies.c.session_id == bindparam("b_session"),
        t.assemblies.c.observed_tokens.is_not(None),
    )
    .order_by(t.assemblies.c.id.desc())
    .limit(MARGIN_WINDOW)
)


def learned_margin(observations: Iterable[Any]) -> float:
    """How much the provider's counts exceed ours, at worst over the recent window (>= 1)."""
    ratios = [float(row.observed_tokens) / row.tokens for row in observations if row.tokens > 0]
    return float(min(MAX_MARGIN, max([1.0, *ratios])))


class Assembler:
    """Assembles prompts for one session, remembering its page table between turns."""

    def __init__(
        self,
        store: Any,
        project: str,
        session_id: str,
        *,
        weights: Weights | None = None,
        hysteresis: bool = True,
        pins: bool = True,
    ) -> None:
        self.store = store
        self.pins = pins
        self.project = project
        self.session_id = session_id
        self.weights = weights or Weights()
        self.hysteresis = hysteresis
        self.table = PageTable(project, session_id, store.counter)
        self._previous: dict[int, Fidelity] | None = None
        self._previous_versions: dict[int, int] = {}

    def assemble(
        self,
        budget: int,
        *,
        fixed: str = "",
        demand: Sequence[str] = (),
        on_insufficient: str = "raise",
        record: bool = True,
        turn: int = 0,
        observe: Callable[[Sequence[RenderItem], bool], list[dict[str, Any]]] | None = None,
        boost: Mapping[str, float] | None = None,
    ) -> Assembly:
        """Build the prompt; see the module docstring for the algorithm.

        ``observe(items, feasible)`` returns fault rows to record with the assembly, in the same
        transaction (the fault observer's hook).
        """
        budget = check_budget(budget)
        if not isinstance(fixed, str):
            raise InvalidInput("fixed must be a string")
        try:
            demand = list(demand) if not isinstance(demand, str) else [0]  # type: ignore[list-item]
        except TypeError:
            demand = [0]  # type: ignore[list-item]
        if not all(isinstance(key, str) for key in demand):
            raise InvalidInput("demand must be a list of page keys")
        if boost is not None and (
            not isinstance(boost, Mapping)
            or not all(
                isinstance(key, str)
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                for key, value in boost.items()
            )
        ):
            raise InvalidInput("boost must map page keys to numbers")
        if on_insufficient not in ("raise", "report"):
            raise InvalidInput("on_insufficient must be 'raise' or 'report'")
        wanted = frozenset(demand)
        counter: TokenCounter = self.store.counter
        with self.store.db.transaction(write=False) as conn:
            self.table.refresh(conn)
            if self._previous is None:
                self._load_previous(conn)
            margin = learned_margin(conn.execute(_OBSERVED, {"b_session": self.session_id}).all())
            candidates = self.table.candidates()
            recency = self.table.recency()
            effective = max(1, math.floor(budget / margin))
            fixed_tokens = counter.count(fixed) + (1 if fixed else 0)
            selection = choose(
                candidates,
                budget=effective,
                fixed_tokens=fixed_tokens,
                demand=wanted,
                previous=self._previous,
                weights=self.weights,
                hysteresis=self.hysteresis,
                recency=recency,
                boost=boost,
                pins=self.pins,
            )
            by_id = {candidate.page_id: candidate for candidate in candidates}
            texts = self._texts(conn, by_id, selection)
        items, text, messages, tokens = self._fit(fixed, by_id, selection, texts, effective)
        # Judged on the exact count: the per-page estimates only rank and pre-filter.
        feasible = tokens <= effective
        shortfall = None
        if not feasible:
            # Name every floor page, whichever way infeasibility was found (the estimate, or
            # only the exact count of the floor's text).
            selection.feasible = False
            selection.floor_tokens = tokens
            selection.shortfall = [
                FloorShortfall(c.key, c.ladder[c.floor_rung].value, c.costs[c.floor_rung])
                for c in candidates
                if c.key in wanted or c.required is not None
            ]
            shortfall = insufficiency(selection, effective, fixed_tokens, budget)
        present = {candidate.key for candidate in candidates}
        decisions = [
            Decision(
                item.candidate.key, item.candidate.type, item.fidelity, item.tokens, item.reason
            )
            for item in items
        ]
        chosen_ids = {item.candidate.page_id for item in items}
        evicted = [
            by_id[page_id]
            for page_id in sorted(self._previous or {})
            if page_id in by_id and page_id not in chosen_ids
        ]
        decisions.extend(Decision(c.key, c.type, None, 0, "evicted-for-budget") for c in evicted)
        assembly = Assembly(
            items=[
                AssembledPage(
                    key=item.candidate.key,
                    type=item.candidate.type,
                    fidelity=item.fidelity,
                    version=item.candidate.version,
                    tokens=item.tokens,
                    text=item.text,
                    reason=item.reason,
                )
                for item in items
            ],
            tokens=tokens,
            budget=budget,
            feasible=feasible,
            text=text,
            messages=messages,
            decisions=decisions,
            effective_budget=effective,
            fixed_tokens=fixed_tokens,
            missing=sorted(wanted - present),
            shortfall=shortfall,
        )
        if record:
            extra = observe(items, feasible) if observe is not None else []
            assembly = self._record(assembly, items, evicted, turn, extra)
            self._remember(items)
        if shortfall is not None:
            if record:
                self.store._on_insufficient(self.session_id, self.project, turn, shortfall)
            if on_insufficient == "raise":
                raise shortfall
        return assembly

    def _texts(
        self, conn: Connection, by_id: Mapping[int, Candidate], selection: Selection
    ) -> dict[tuple[int, Fidelity], tuple[str, Fidelity]]:
        """Text and true source of each chosen rung and of each rung an undo could fall back to.

        Read in the same snapshot as the page table, so versions always match.
        """
        wanted = {(page_id, fidelity) for page_id, fidelity in selection.chosen.items()}
        wanted.update((page_id, before) for page_id, before in selection.upgrades if before)
        if not wanted:
            return {}
        ids = sorted({page_id for page_id, _ in wanted})
        texts: dict[tuple[int, Fidelity], tuple[str, Fidelity]] = {}
        for start in range(0, len(ids), 500):
            rows = conn.execute(
                _TEXTS,
                {
                    "b_ids": ids[start : start + 500],
                    "b_fidelities": sorted({fidelity.value for _, fidelity in wanted}),
                },
            )
            current = [
                row
                for row in rows
                if (row.page_id, _FIDELITY[row.fidelity]) in wanted
                and row.version == by_id[row.page_id].version
            ]
            for (page_id, _, fidelity_value), found in read_texts(conn, current).items():
                texts[(page_id, _FIDELITY[fidelity_value])] = found
        return texts

    def _fit(
        self,
        fixed: str,
        by_id: Mapping[int, Candidate],
        selection: Selection,
        texts: Mapping[tuple[int, Fidelity], tuple[str, Fidelity]],
        budget: int,
    ) -> tuple[list[RenderItem], str, list[dict[str, str]], int]:
        """Render and count exactly; undo upgrades, last first, until the text fits."""
        chosen = dict(selection.chosen)
        undo = list(selection.upgrades)
        counter: TokenCounter = self.store.counter
        while True:
            items = render_order(
                RenderItem(
                    candidate=by_id[page_id],
                    fidelity=fidelity,
                    text=texts[(page_id, fidelity)][0],
                    tokens=by_id[page_id].tokens[fidelity],
                    reason=selection.reasons.get(page_id, "upgrade"),
                    source=texts[(page_id, fidelity)][1],
                )
                for page_id, fidelity in chosen.items()
            )
            text, messages = render(fixed, items)
            tokens = counter.count(text)
            if tokens <= budget or not undo:
                return items, text, messages, tokens
            page_id, before = undo.pop()
            if before is None:
                del chosen[page_id]
            else:
                chosen[page_id] = before

    def _record(
        self,
        assembly: Assembly,
        items: Sequence[RenderItem],
        evicted: Sequence[Candidate],
        turn: int,
        extra: Sequence[dict[str, Any]] = (),
    ) -> Assembly:
        store = self.store
        with store.db.transaction(sync="normal") as conn:
            result = conn.execute(
                t.assemblies.insert(),
                {
                    "session_id": self.session_id,
                    "project": self.project,
                    "turn": turn,
                    "budget": assembly.budget,
                    "effective_budget": assembly.effective_budget,
                    "fixed_tokens": assembly.fixed_tokens,
                    "tokens": assembly.tokens,
                    "feasible": int(assembly.feasible),
                    "observed_tokens": None,
                    "text_sha256": text_digest(assembly.text),
                    "at": store.clock(),
                },
            )
            assembly_id = int(result.inserted_primary_key[0])
            rows: list[dict[str, Any]] = [
                {
                    "assembly_id": assembly_id,
                    "position": position,
                    "page_id": item.candidate.page_id,
                    "key": item.candidate.key,
                    "version": item.candidate.version,
                    "fidelity": item.fidelity.value,
                    "tokens": item.tokens,
                    "reason": item.reason,
                }
                for position, item in enumerate(items)
            ]
            rows.extend(
                {
                    "assembly_id": assembly_id,
                    "position": len(items) + offset,
                    "page_id": candidate.page_id,
                    "key": candidate.key,
                    "version": candidate.version,
                    "fidelity": None,
                    "tokens": 0,
                    "reason": "evicted-for-budget",
                }
                for offset, candidate in enumerate(evicted)
            )
            if rows:
                conn.execute(t.assembly_items.insert(), rows)
            if extra:
                conn.execute(t.faults.insert(), list(extra))
        return dataclasses.replace(assembly, assembly_id=assembly_id)

    def record_external(
        self,
        resident: Mapping[str, Fidelity],
        budget: int,
        turn: int,
        fault_rows: Sequence[dict[str, Any]],
    ) -> None:
        """Record a prompt the harness built itself, so residency history covers it too."""
        by_key = {candidate.key: candidate for candidate in self.table.candidates()}
        items = [
            RenderItem(
                candidate=by_key[key],
                fidelity=fidelity,
                text="",
                tokens=by_key[key].tokens.get(fidelity, 0),
                reason="upgrade",
            )
            for key, fidelity in sorted(resident.items())
            if key in by_key and fidelity in by_key[key].tokens
        ]
        tokens = sum(item_cost(item.candidate, item.fidelity) for item in items)
        chosen = {item.candidate.page_id for item in items}
        evicted = [
            self.table.by_id[page_id]
            for page_id in sorted(self.previous())
            if page_id in self.table.by_id and page_id not in chosen
        ]
        external = Assembly(
            items=[],
            tokens=tokens,
            budget=budget,
            feasible=True,
            text="",
            messages=[],
            decisions=[],
            effective_budget=budget,
        )
        self._record(external, items, evicted, turn, fault_rows)
        self._remember(items)

    def previous(self) -> dict[int, Fidelity]:
        """Page id → fidelity in this session's last recorded prompt."""
        if self._previous is None:
            with self.store.db.transaction(write=False) as conn:
                self.table.refresh(conn)
                self._load_previous(conn)
        assert self._previous is not None
        return self._previous

    def previous_version(self, page_id: int) -> int | None:
        """The version of a page that the last recorded prompt held (None: absent)."""
        self.previous()
        return self._previous_versions.get(page_id)

    def _load_previous(self, conn: Connection) -> None:
        rows = conn.execute(_PREVIOUS_ITEMS, {"b_session": self.session_id}).all()
        self._previous = previous_fidelities(rows)
        self._previous_versions = {row.page_id: row.version for row in rows if row.fidelity}

    def _remember(self, items: Sequence[RenderItem]) -> None:
        self._previous = {item.candidate.page_id: item.fidelity for item in items}
        self._previous_versions = {item.candidate.page_id: item.candidate.version for item in items}

    def observe_usage(self, prompt_tokens: int) -> float:
        """Record the provider's count for the last recorded prompt; return the new margin."""
        if (
            isinstance(prompt_tokens, bool)
            or not isinstance(prompt_tokens, int)
            or prompt_tokens <= 0
        ):
            raise InvalidInput("prompt_tokens must be a positive integer")
        with self.store.db.transaction() as conn:
            last = conn.execute(
                sql_select(t.assemblies.c.id)
                .where(t.assemblies.c.session_id == self.session_id)
                .order_by(t.assemblies.c.id.desc())
                .limit(1)
            ).scalar()
            if last is None:
                raise InvalidInput("no assembly recorded for this session yet")
            conn.execute(
                t.assemblies.update()
                .where(t.assemblies.c.id == last)
                .values(observed_tokens=prompt_tokens)
            )
            return learned_margin(conn.execute(_OBSERVED, {"b_session": self.session_id}).all())
