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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, bindparam
from sqlalchemy import select as sql_select

from . import schema as t
from .errors import FloorShortfall, InsufficientBudget, InvalidInput
from .pages import POLICIES, Fidelity, PageType, Pin, Scope
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
    hysteresis: float = 0.25


@dataclass(slots=True)
class Candidate:
    """One page in the in-memory page table: what selection needs, no text."""

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
    """Estimated tokens of one rendered item: header, text, separator."""
    return candidate.header_tokens + _SUFFIX_TOKENS[fidelity] + candidate.tokens[fidelity] + 1


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


def choose(
    candidates: Sequence[Candidate],
    *,
    budget: int,
    fixed_tokens: int,
    demand: frozenset[str] = frozenset(),
    previous: Mapping[int, Fidelity] | None = None,
    weights: Weights = Weights(),
    hysteresis: bool = True,
) -> Selection:
    """The two-phase greedy selection over an in-memory page table (no SQL, no text).

    Phase 1 installs every required page at its floor; phase 2 applies upgrades by
    Δutility/Δtokens while they fit. ``previous`` (page id → fidelity of the last assembly)
    drives hysteresis.
    """
    previous = previous or {}
    chosen: dict[int, Fidelity] = {}
    reasons: dict[int, Reason] = {}
    used = fixed_tokens
    shortfall: list[FloorShortfall] = []
    for candidate in candidates:
        reason = is_required(candidate, demand)
        if reason is None:
            continue
        floor = POLICIES[candidate.type].floor
        cost = item_cost(candidate, floor)
        chosen[candidate.page_id] = floor
        reasons[candidate.page_id] = reason
        used += cost
        shortfall.append(FloorShortfall(candidate.key, floor.value, cost))
    floor_tokens = used
    if used > budget:
        return Selection(chosen, reasons, [], floor_tokens, False, shortfall)

    # Recency: rank by the LSN of the head version, newest = 1.0.
    count = len(candidates)
    order = sorted(range(count), key=lambda i: candidates[i].lsn)
    recency = [0.0] * count
    for rank, index in enumerate(order):
        recency[index] = (rank + 1) / count
    heap: list[tuple[float, str, int, int, int]] = []
    bases: list[float] = [0.0] * count
    for index, candidate in enumerate(candidates):
        bases[index] = _base_utility(candidate, recency[index], demand, weights)
        _push_next(
            heap,
            index,
            candidate,
            chosen.get(candidate.page_id),
            bases[index],
            previous,
            weights,
            hysteresis,
        )
    upgrades: list[tuple[int, Fidelity | None]] = []
    while heap:
        _, _, _, index, rung = heapq.heappop(heap)
        candidate = candidates[index]
        current = chosen.get(candidate.page_id)
        target = candidate.ladder[rung]
        current_cost = item_cost(candidate, current) if current is not None else 0
        delta = item_cost(candidate, target) - current_cost
        if used + delta > budget:
            continue  # too dear now; a richer rung of the same page would cost more still
        chosen[candidate.page_id] = target
        reasons.setdefault(candidate.page_id, "upgrade")
        upgrades.append((candidate.page_id, current))
        used += delta
        _push_next(heap, index, candidate, target, bases[index], previous, weights, hysteresis)
    return Selection(chosen, reasons, upgrades, floor_tokens, True, [])


def _base_utility(
    candidate: Candidate, recency: float, demand: frozenset[str], weights: Weights
) -> float:
    base = 1.0 + candidate.priority + weights.recency * recency
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
    if candidate.key in demand:
        base += weights.demand
    return max(base, 0.0)


def _value(
    candidate: Candidate,
    fidelity: Fidelity | None,
    base: float,
    previous: Fidelity | None,
    weights: Weights,
    hysteresis: bool,
) -> float:
    if fidelity is None:
        return 0.0
    value = base * QUALITY[fidelity] + weights.recompute * RECOMPUTE_COST[candidate.type]
    # Hysteresis: keeping at least last turn's fidelity is worth a bonus, so a page falls back
    # only when something else clearly needs its tokens; climbing higher loses nothing.
    if hysteresis and previous is not None and fidelity.rank <= previous.rank:
        value += weights.hysteresis * base
    return value


def _push_next(
    heap: list[tuple[float, str, int, int, int]],
    index: int,
    candidate: Candidate,
    current: Fidelity | None,
    base: float,
    previous: Mapping[int, Fidelity],
    weights: Weights,
    hysteresis: bool,
) -> None:
    ladder = candidate.ladder
    rung = 0 if current is None else ladder.index(current) + 1
    if rung >= len(ladder):
        return
    target = ladder[rung]
    before = previous.get(candidate.page_id)
    gain = _value(candidate, target, base, before, weights, hysteresis) - _value(
        candidate, current, base, before, weights, hysteresis
    )
    if gain <= 0:
        return
    cost = item_cost(candidate, target) - (item_cost(candidate, current) if current else 0)
    ratio = math.inf if cost <= 0 else gain / cost
    # heapq is a min-heap: negate the ratio; ties by (key, fidelity rank) for determinism.
    heapq.heappush(heap, (-ratio, candidate.key, target.rank, index, rung))


# -- the page table -----------------------------------------------------------------------------

# Page versions applied since a watermark. The watermark is the boundary event id: entries are
# applied inside boundaries, which commit one at a time in id order, whereas LSNs are assigned at
# staging and apply out of order across sessions.
_TABLE_QUERY = (
    sql_select(
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
    )
    .select_from(
        t.journal.join(t.page_versions, t.page_versions.c.lsn == t.journal.c.lsn)
        .join(
            t.pages,
            (t.pages.c.id == t.page_versions.c.page_id)
            & (t.pages.c.version == t.page_versions.c.version),
        )
        .outerjoin(
            t.representations,
            (t.representations.c.page_id == t.pages.c.id)
            & (t.representations.c.version == t.pages.c.version),
        )
    )
    .where(
        t.journal.c.event_id > bindparam("b_since"),
        t.pages.c.project == bindparam("b_project"),
        t.pages.c.session_id.in_([bindparam("b_session"), ""]),
    )
)
_MAX_EVENT = sql_select(t.lifecycle_events.c.id).order_by(t.lifecycle_events.c.id.desc()).limit(1)


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

    def refresh(self, conn: Connection) -> None:
        """Bring the table up to date with the database."""
        newest = conn.execute(_MAX_EVENT).scalar() or 0
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
                candidate.tokens[Fidelity(row.fidelity)] = int(row.tokens)
        for page_id in deleted:
            self.by_id.pop(page_id, None)
        self.by_id.update(fresh)
        self.since = newest

    def candidates(self) -> list[Candidate]:
        """The visible pages, a session's own page shadowing a project page of the same key."""
        by_key: dict[str, Candidate] = {}
        for candidate in self.by_id.values():
            existing = by_key.get(candidate.key)
            if existing is None or candidate.scope is Scope.SESSION:
                by_key[candidate.key] = candidate
        return [by_key[key] for key in sorted(by_key)]


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
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise InvalidInput(f"budget must be a positive integer, not {budget!r}")
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
MAX_MARGIN = 2.0

_PREVIOUS_ITEMS = sql_select(t.assembly_items.c.page_id, t.assembly_items.c.fidelity).where(
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
    ) -> None:
        self.store = store
        self.project = project
        self.session_id = session_id
        self.weights = weights or Weights()
        self.hysteresis = hysteresis
        self.table = PageTable(project, session_id, store.counter)
        self._previous: dict[int, Fidelity] | None = None

    def assemble(
        self,
        budget: int,
        *,
        fixed: str = "",
        demand: Sequence[str] = (),
        on_insufficient: str = "raise",
        record: bool = True,
        turn: int = 0,
    ) -> Assembly:
        """Build the prompt; see the module docstring for the algorithm."""
        budget = check_budget(budget)
        if not isinstance(fixed, str):
            raise InvalidInput("fixed must be a string")
        if isinstance(demand, str) or not all(isinstance(key, str) for key in demand):
            raise InvalidInput("demand must be a list of page keys")
        if on_insufficient not in ("raise", "report"):
            raise InvalidInput("on_insufficient must be 'raise' or 'report'")
        wanted = frozenset(demand)
        counter: TokenCounter = self.store.counter
        with self.store.db.transaction(write=False) as conn:
            self.table.refresh(conn)
            if self._previous is None:
                self._previous = previous_fidelities(
                    conn.execute(_PREVIOUS_ITEMS, {"b_session": self.session_id}).all()
                )
            margin = learned_margin(conn.execute(_OBSERVED, {"b_session": self.session_id}).all())
            candidates = self.table.candidates()
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
            )
            by_id = {candidate.page_id: candidate for candidate in candidates}
            texts = self._texts(conn, by_id, selection.chosen)
        items, text, messages, tokens = self._fit(fixed, by_id, selection, texts, effective)
        # Judged on the exact count: the per-page estimates only rank and pre-filter.
        feasible = tokens <= effective
        shortfall = None
        if not feasible:
            selection.feasible = False
            selection.floor_tokens = tokens
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
            assembly = self._record(assembly, items, evicted, turn)
            self._previous = {item.candidate.page_id: item.fidelity for item in items}
        if shortfall is not None:
            self.store._on_insufficient(self.session_id, self.project, turn, shortfall)
            if on_insufficient == "raise":
                raise shortfall
        return assembly

    def _texts(
        self, conn: Connection, by_id: Mapping[int, Candidate], chosen: Mapping[int, Fidelity]
    ) -> dict[tuple[int, Fidelity], tuple[str, Fidelity]]:
        """Text and true source of every rung each chosen page may be rendered at."""
        wanted_ids = list(chosen)
        if not wanted_ids:
            return {}
        texts: dict[tuple[int, Fidelity], tuple[str, Fidelity]] = {}
        for start in range(0, len(wanted_ids), 500):
            chunk = wanted_ids[start : start + 500]
            rows = conn.execute(
                sql_select(
                    t.representations.c.page_id,
                    t.representations.c.version,
                    t.representations.c.fidelity,
                    t.representations.c.content,
                    t.representations.c.source,
                ).where(
                    t.representations.c.page_id.in_(chunk),
                    t.representations.c.fidelity.in_(
                        sorted(
                            {
                                f.value
                                for page_id in chunk
                                for f in _rungs_up_to(by_id[page_id], chosen[page_id])
                            }
                        )
                    ),
                )
            ).all()
            for row in rows:
                candidate = by_id[row.page_id]
                if row.version == candidate.version:
                    texts[(row.page_id, Fidelity(row.fidelity))] = (
                        row.content,
                        Fidelity(row.source),
                    )
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
        return dataclasses.replace(assembly, assembly_id=assembly_id)

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


def _rungs_up_to(candidate: Candidate, fidelity: Fidelity) -> list[Fidelity]:
    ladder = candidate.ladder
    return list(ladder[: ladder.index(fidelity) + 1])
