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

**Layout by stability, and provider prompt caches** (issue 16). The prompt renders the fixed
region, bootstrap, constraints, then every other page in the order it became resident: a page
that stays keeps its place and new or changed pages go after, so a change breaks a provider's
cached prefix only from its own block (:meth:`Assembler._layout`). The same inputs over the same
pages give the same prompt, byte for byte (the last selection is reused). With a cache preset
(:mod:`clawvm_store.cache`), prompts stay append-only between compaction-like steps that leave
headroom (:meth:`Assembler._select`).

**Per-turn cost follows the change, not the history** (issue 14). The :class:`PageTable` is kept
incrementally from what each boundary applied, and selection runs over a bounded
:meth:`PageTable.pool` (required, demanded, previously resident and changed pages, plus a reserve
of the newest and the favoured absent ones); at the paper's scale that is every page. Each
assembly records only what changed since the session's previous one, with a snapshot first and
every :data:`SNAPSHOT_EVERY`-th; the ``resident_by_turn`` view rebuilds the full records.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, func
from sqlalchemy import select as sql_select
from sqlalchemy import text as sql_text

from . import schema as t
from .cache import CachePricing, PromptBlock, cache_pricing
from .errors import FloorShortfall, InsufficientBudget, InvalidInput
from .journal import LATEST_EVENT
from .messages import key_seq
from .pages import POLICIES, Fidelity, PageType, Pin, Scope
from .render import (
    FORMS,
    Block,
    Conversation,
    Form,
    Partners,
    build_conversation,
    message_seq,
    rendered_tokens,
    to_anthropic,
    to_openai_chat,
    to_openai_responses,
)
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
    # A message page's provider envelope (role, tool calls, call id, name); the provider call
    # ids an evidence page is the result of. What the renderers pair calls and results by.
    envelope: dict[str, Any] | None = None
    answers: tuple[str, ...] = ()
    # Caches, not part of the page: never compared or shown (a climb's steps point back at it).
    _static: tuple[Weights, float] | None = field(default=None, compare=False, repr=False)
    _climb: _Climb | None = field(default=None, compare=False, repr=False)
    # Its rendered ``###`` header per true source: built once, not three times per turn.
    _headers: dict[Fidelity, str] = field(default_factory=dict, compare=False, repr=False)

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
    """Why a page is in the prompt at its fidelity, or why it left it.

    An evicted page (``reason="evicted-for-budget"``) names in ``won_by`` the page that won
    the space: the one that gained the most tokens in this assembly (it entered, or rose in
    fidelity); ``None`` when nothing gained (the budget itself shrank).
    """

    key: str
    type: PageType
    fidelity: Fidelity | None
    tokens: int
    reason: Reason
    won_by: str | None = None


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
    # The prompt as a provider conversation (clawvm_store.render); ``form`` is the one whose
    # rendered size ``tokens`` counts and the budget bounds ("text": the text form).
    conversation: Conversation = field(default_factory=lambda: Conversation((), ()))
    form: Form = "text"
    # The text form's blocks (fixed region, then each page), each as (identity, tokens): what
    # a provider's prefix cache compares from one prompt to the next (clawvm_store.cache).
    prompt_blocks: tuple[PromptBlock, ...] = ()
    # The OpenAI ``prompt_cache_key`` :meth:`openai_request` sends: the session id.
    cache_key: str = ""

    def to_openai_chat(self) -> list[dict[str, Any]]:
        """The prompt as OpenAI Chat Completions ``messages`` (contract).

        One system message (the fixed region and every page that is not a message), then the
        recorded messages; each assistant tool call is followed by exactly its result. See
        :mod:`clawvm_store.render` for the pairing rules.
        """
        return to_openai_chat(self.conversation)

    def to_openai_responses(self) -> list[dict[str, Any]]:
        """The prompt as OpenAI Responses ``input`` items (contract): messages,
        ``function_call`` and ``function_call_output`` items, every call followed by its output."""
        return to_openai_responses(self.conversation)

    def to_anthropic(self, *, cache_control: bool = True) -> dict[str, Any]:
        """The prompt as Anthropic Messages ``{"system": [...], "messages": [...]}`` (contract):
        user and assistant alternate, tool results are ``tool_result`` blocks answering the
        ``tool_use`` blocks of the message before. ``cache_control`` breakpoints (at most 4)
        mark the ends of the stable regions unless ``cache_control=False``."""
        return to_anthropic(self.conversation, cache_control=cache_control)

    def openai_request(
        self, api: str = "responses", *, prompt_cache_key: str | None = None
    ) -> dict[str, Any]:
        """The prompt as keyword arguments of an OpenAI request, with its cache key.

        ``api="responses"`` gives ``{"input": [...], "prompt_cache_key": ...}`` for
        ``client.responses.create``; ``api="chat"`` gives ``{"messages": [...],
        "prompt_cache_key": ...}`` for ``client.chat.completions.create``. The key (the
        session id unless given) routes the session's requests to the same cache.
        """
        key = self.cache_key if prompt_cache_key is None else prompt_cache_key
        if not isinstance(key, str) or not key:
            raise InvalidInput("prompt_cache_key must be a non-empty string")
        if api == "responses":
            return {"input": self.to_openai_responses(), "prompt_cache_key": key}
        if api == "chat":
            return {"messages": self.to_openai_chat(), "prompt_cache_key": key}
        raise InvalidInput(f"api must be 'responses' or 'chat', not {api!r:.40}")

    def rendered_tokens(self, form: Form, counter: TokenCounter) -> int:
        """What the prompt costs in ``form``, counted as the assembler counts it for a budget."""
        if form == "text":
            return counter.count(self.text)
        return rendered_tokens(self.conversation, form, counter)


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
    keep: Mapping[int, Fidelity] | None = None,
) -> Selection:
    """The two-phase greedy selection over an in-memory page table (no SQL, no text).

    Phase 1 installs every required page at its floor; phase 2 applies upgrades one rung at a
    time by Δutility/Δtokens (ties by key, then fidelity) while they fit. ``previous`` (page id →
    fidelity in the last assembly) drives hysteresis; ``recency`` may be passed precomputed.
    ``keep`` (page id → fidelity) installs those pages in phase 1 at exactly that fidelity (at
    least the floor) and never upgrades them: the cache-aware assembly's append-only pass.
    """
    previous = previous or {}
    keep = keep or {}
    count = len(candidates)
    rungs = [-1] * count
    reasons: dict[int, Reason] = {}
    floor: dict[int, Fidelity] = {}
    used = fixed_tokens
    kept: set[int] = set()
    for index, candidate in enumerate(candidates):
        reason: Reason | None = (
            "demand" if candidate.key in demand else (candidate.required if pins else None)
        )
        held = keep.get(candidate.page_id)
        if held is not None and held in candidate.rung_of:
            rung = max(candidate.rung_of[held], candidate.floor_rung if reason else 0)
            rungs[index] = rung
            kept.add(index)
            reasons[candidate.page_id] = reason or "upgrade"
            floor[candidate.page_id] = candidate.ladder[rung]
            used += candidate.costs[rung]
            continue
        if reason is None:
            continue
        rung = candidate.floor_rung
        rungs[index] = rung
        reasons[candidate.page_id] = reason
        floor[candidate.page_id] = candidate.ladder[rung]
        used += candidate.costs[rung]
    floor_tokens = used
    if used > budget:
        shortfall = [
            FloorShortfall(c.key, c.ladder[rungs[i]].value, c.costs[rungs[i]])
            for i, c in enumerate(candidates)
            if rungs[i] >= 0
        ]
        return Selection(floor, reasons, [], floor_tokens, False, shortfall)

    if recency is None:
        recency = recency_ranks(candidates)
    w_recency, w_demand = weights.recency, weights.demand
    eta = weights.hysteresis if hysteresis else 0.0
    w_recompute = weights.recompute
    # A step's value depends only on the page's base utility and last turn's rung, so each page's
    # climb (its steps so far) is kept on the candidate and reused while those stay the same. A
    # step is worked out the first time it is needed, so a page that never climbs costs one. The
    # step arithmetic is written out twice below (first steps, then each next one) rather than
    # called: this is the loop of every turn, and a call per step costs more than the step.
    #
    # A rung's value is base × quality, plus w_rc × recompute_cost(type) once resident at all,
    # plus the hysteresis bonus eta × base spread evenly over the steps back up to last turn's
    # rung (climbing past it loses nothing; stopping below it forfeits part of the bonus). A step
    # that gains nothing is never queued: the climb stops below it.
    queue: list[_Step] = []
    room = budget - used
    for index, candidate in enumerate(candidates):
        if index in kept:
            continue
        static = candidate._static
        base = (
            static[1]
            if static is not None and static[0] is weights
            else candidate.static_utility(weights)
        ) + w_recency * recency[index]
        key = candidate.key
        if key in demand:
            base += w_demand
        if boost:
            base += boost.get(key, 0.0)
        before = previous.get(candidate.page_id)
        sticky = -1 if before is None else candidate.rung_of.get(before, -1)
        climb = candidate._climb
        if (
            climb is None
            or climb[0] != base
            or climb[1] != sticky
            or climb[2] is not weights
            or climb[3] != eta
        ):
            if climb is not None:
                climb[4].clear()  # its steps point back at it: free them now, not at a GC pass
            climb = candidate._climb = (
                base,
                sticky,
                weights,
                eta,
                [_UNPLANNED] * len(candidate.costs),
                candidate,
            )
        target = rungs[index] + 1
        steps = climb[4]
        if target < len(steps):
            step = steps[target]
            if step is _UNPLANNED:
                costs, quality = candidate.costs, candidate.quality
                gain = base * quality[target]
                cost = costs[target]
                if target > 0:
                    gain -= base * quality[target - 1]
                    cost -= costs[target - 1]
                else:
                    gain += w_recompute * RECOMPUTE_COST[candidate.type]
                if target <= sticky:
                    gain += eta * base / (sticky + 1)
                step = steps[target] = (
                    None
                    if gain <= 0
                    else (
                        -(math.inf if cost <= 0 else gain / cost),
                        key,
                        candidate.ranks[target],
                        target,
                        cost,
                        candidate.page_id,
                        candidate.ladder[target - 1] if target > 0 else None,
                        candidate.ladder[target],
                        climb,
                    )
                )
            # Used tokens only grow, so a step dearer than what is left now never fits later.
            if step is not None and step[4] <= room:
                queue.append(step)
    # The queue is a sorted list read from the front, with each page's next step inserted behind
    # the read position: the same order as a heap (the smallest queued step first), with about
    # half the tuple comparisons (one sort, then a bisection per step taken; a heap pays two
    # sift paths per pop, and half the pops are steps that no longer fit).
    queue.sort()
    applied: list[_Step] = []
    insort = bisect.insort
    head = 0
    while head < len(queue):
        popped = queue[head]
        head += 1
        delta = popped[4]
        if used + delta > budget:
            continue  # too dear now; a richer rung of the same page would cost more still
        used += delta
        applied.append(popped)
        climb = popped[8]
        target = popped[3] + 1
        steps = climb[4]
        if target < len(steps):
            step = steps[target]
            if step is _UNPLANNED:
                base, sticky, candidate = climb[0], climb[1], climb[5]
                costs, quality = candidate.costs, candidate.quality
                gain = base * quality[target] - base * quality[target - 1]
                cost = costs[target] - costs[target - 1]
                if target <= sticky:
                    gain += eta * base / (sticky + 1)
                step = steps[target] = (
                    None
                    if gain <= 0
                    else (
                        -(math.inf if cost <= 0 else gain / cost),
                        candidate.key,
                        candidate.ranks[target],
                        target,
                        cost,
                        candidate.page_id,
                        candidate.ladder[target - 1],
                        candidate.ladder[target],
                        climb,
                    )
                )
            if step is not None and step[4] <= budget - used:
                insort(queue, step, lo=head)
    # The floor, then each upgraded page at the last rung it reached (the order means nothing).
    chosen = floor
    for step in applied:
        chosen[step[5]] = step[7]
        reasons.setdefault(step[5], "upgrade")
    upgrades = [(step[5], step[6]) for step in applied]
    return Selection(chosen, reasons, upgrades, floor_tokens, True, [])


def _copy(selection: Selection) -> Selection:
    """A selection the caller may change (an infeasible assembly rewrites its floor)."""
    return dataclasses.replace(
        selection,
        chosen=dict(selection.chosen),
        reasons=dict(selection.reasons),
        upgrades=list(selection.upgrades),
        shortfall=list(selection.shortfall),
    )


# One step up a page's ladder, ordered as the selection's queue orders it: by -Δutility/Δtokens,
# then key, then the fidelity's rank (deterministic ties). Then: the rung it reaches, its
# Δtokens, the page id, the fidelity it leaves (None: the page was absent) and reaches, and the
# page's climb. A page has at most one step queued at a time and keys are unique, so comparisons
# never go past the rank.
_Step = tuple[float, str, int, int, int, int, "Fidelity | None", Fidelity, Any]
# A page's climb for given inputs: (base, last turn's rung, weights, eta, steps by rung reached,
# candidate); a step is None when it gains nothing, _UNPLANNED until first needed.
_Climb = tuple[float, int, Weights, float, list[Any], "Candidate"]
_UNPLANNED: Any = object()


# -- the page table -----------------------------------------------------------------------------

# The pages a session can see whose head version was applied since the table's watermark: the
# query of journal.applied_since (the watermark is a boundary event id: entries are applied
# inside boundaries, which commit one at a time in id order, whereas LSNs are assigned at staging
# and apply out of order across sessions), with the join order fixed on SQLite. Left to itself,
# SQLite's planner starts from the pages index (project, session_id) and reads every page the
# session ever wrote, each turn (30 ms at 10,000 pages); CROSS JOIN makes it start from the
# journal entries of the boundaries since the watermark (ix_journal_event_id), which is this
# turn's change whatever the history (0.1 ms). PostgreSQL plans by statistics and has no CROSS
# JOIN ... ON, so it gets the plain join.
_TABLE_SQL = """
SELECT pages.id, pages.key, pages.type, pages.version, pages.pin, pages.priority, pages.scope,
       pages.deleted, page_versions.lsn, representations.fidelity, representations.tokens,
       representations.source,
       CASE WHEN pages.key LIKE 'conversation/m-%' THEN page_versions.fields END AS fields,
       CASE WHEN pages.type = 'evidence' THEN page_versions.provenance END AS provenance
FROM journal
{join} page_versions ON page_versions.lsn = journal.lsn
{join} pages ON pages.id = page_versions.page_id AND pages.version = page_versions.version
LEFT OUTER JOIN representations
     ON representations.page_id = pages.id AND representations.version = pages.version
WHERE journal.event_id > :b_since
  AND pages.project = :b_project
  AND pages.session_id IN (:b_session, '')
"""
_TABLE_QUERY = {
    dialect: sql_text(_TABLE_SQL.format(join=join))
    for dialect, join in (("sqlite", "CROSS JOIN"), ("postgresql", "JOIN"))
}


# Tokens a message costs in a provider form beyond its text (role, type and JSON punctuation), at
# least: what an undo that removes a page is counted to save besides the page's own tokens.
_MESSAGE_OVERHEAD = 4

# How many absent pages, beyond those that must or may matter (required, demanded, resident last
# time, changed since), a selection considers: the newest by LSN and the most favoured (soft pin
# or positive priority). At the paper's scale (10 to 50 pages) the pool is every visible page, so
# the decisions are exactly those of a selection over the whole table.
RESERVE = 96


class PageTable:
    """The pages one session can see, kept in memory and refreshed incrementally.

    A refresh reads only page versions applied since the last one (by boundary id), and every
    index the selection needs is updated from what that refresh brought, never rebuilt from all
    pages: key shadowing (a session page hides the project page of the same key), the visible
    keys in order, the visible pages by LSN (so recency is a rank among *all* visible pages,
    found by bisection), the required pages, the favoured ones, and the pages changed since
    :meth:`take_changed`. A steady-state turn costs what changed plus the bounded :meth:`pool`,
    however many pages the session has ever written.
    """

    def __init__(
        self,
        project: str,
        session_id: str,
        counter: TokenCounter,
        weights: Weights = DEFAULT_WEIGHTS,
    ) -> None:
        self.project = project
        self.session_id = session_id
        self.counter = counter
        self.weights = weights
        self.by_id: dict[int, Candidate] = {}  # every live page, shadowed ones included
        self.since = 0
        self.visible: dict[str, Candidate] = {}  # key -> the page this session sees
        self._shadowed: dict[str, Candidate] = {}  # key -> a project page a session page hides
        self._keys: list[str] = []  # visible keys, sorted
        self._by_lsn: list[tuple[int, str]] = []  # visible pages as (lsn, key), sorted
        self._required: dict[str, Candidate] = {}  # visible hard-pinned / bootstrap / constraint
        self._favoured: list[tuple[float, str]] = []  # (-static utility, key), soft pin or priority
        self._changed: set[str] = set()  # visible keys whose page changed since take_changed()
        # Grows whenever the visible pages change: equal generations mean the same pages, the
        # assembler's test for "nothing changed since the last prompt" (its fixed point).
        self.generation = 0
        self._listed: list[Candidate] | None = None
        # Provider call id -> the visible pages that make it, answer it with a ``tool`` message
        # (both as sorted (seq, key)) or are its linked result (keys): the renderers' lookups.
        self._callers: dict[str, list[tuple[int, str]]] = {}
        self._answers: dict[str, list[tuple[int, str]]] = {}
        self._linked: dict[str, list[str]] = {}

    def refresh(self, conn: Connection) -> None:
        """Bring the table up to date with the database."""
        newest = conn.execute(LATEST_EVENT).scalar() or 0
        if newest <= self.since:
            return
        rows = conn.execute(
            _TABLE_QUERY.get(conn.dialect.name, _TABLE_QUERY["postgresql"]),
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
                candidate.envelope, candidate.answers = _links(row.key, row.fields, row.provenance)
                fresh[row.id] = candidate
            if row.fidelity is not None:
                fidelity = Fidelity(row.fidelity)
                candidate.tokens[fidelity] = int(row.tokens)
                candidate.sources[fidelity] = Fidelity(row.source)
        touched: dict[str, list[int]] = {}  # key -> ids of its pages that may be live now
        for page_id in deleted:
            gone = self.by_id.pop(page_id, None)
            if gone is not None:
                touched.setdefault(gone.key, [])
        for candidate in fresh.values():
            candidate.finish()
            self.by_id[candidate.page_id] = candidate
            touched.setdefault(candidate.key, []).append(candidate.page_id)
        # A bulk load (the first refresh, an import) sorts the indexes once instead of
        # inserting into them one key at a time.
        bulk = len(touched) > max(64, len(self.visible) // 4)
        for key in sorted(touched):
            self._reindex(key, touched[key], bulk)
        if bulk:
            self._keys = sorted(self.visible)
            self._by_lsn = sorted((c.lsn, key) for key, c in self.visible.items())
            self._favoured = sorted(
                (-c.static_utility(self.weights), key)
                for key, c in self.visible.items()
                if _favoured(c)
            )
        self.since = newest

    def _reindex(self, key: str, arrived: list[int], bulk: bool = False) -> None:
        """Update shadowing and every index for one key a refresh touched.

        ``by_id`` is already current; the key has at most two live pages, the project's and
        the session's, and the session's is the one this session sees.
        """
        before = self.visible.get(key)
        ids = set(arrived)
        ids.update(c.page_id for c in (before, self._shadowed.get(key)) if c is not None)
        pages = [self.by_id[page_id] for page_id in sorted(ids) if page_id in self.by_id]
        session_page = next((c for c in pages if c.scope is Scope.SESSION), None)
        project_page = next((c for c in pages if c.scope is not Scope.SESSION), None)
        after = session_page or project_page
        if session_page is not None and project_page is not None:
            self._shadowed[key] = project_page
        else:
            self._shadowed.pop(key, None)
        if after is before:
            return
        self._listed = None
        self.generation += 1
        if before is not None:
            self._link(before, add=False)
            self._required.pop(key, None)
            if not bulk:
                _remove(self._by_lsn, (before.lsn, key))
                if _favoured(before):
                    _remove(self._favoured, (-before.static_utility(self.weights), key))
        if after is None:
            del self.visible[key]
            if not bulk:
                _remove(self._keys, key)
            self._changed.discard(key)
            return
        self.visible[key] = after
        self._link(after, add=True)
        if not bulk:
            if before is None:
                bisect.insort(self._keys, key)
            bisect.insort(self._by_lsn, (after.lsn, key))
            if _favoured(after):
                bisect.insort(self._favoured, (-after.static_utility(self.weights), key))
        if after.required is not None:
            self._required[key] = after
        self._changed.add(key)

    def _link(self, candidate: Candidate, *, add: bool) -> None:
        """Enter (or remove) a page in the call-id indexes."""
        envelope = candidate.envelope
        if envelope is not None:
            entry = (message_seq(candidate.key), candidate.key)
            targets = [
                (self._callers, str(call["id"])) for call in envelope.get("tool_calls") or ()
            ]
            if envelope.get("role") == "tool" and envelope.get("tool_call_id"):
                targets.append((self._answers, str(envelope["tool_call_id"])))
            for index, call_id in targets:
                entries = index.setdefault(call_id, [])
                if add:
                    bisect.insort(entries, entry)
                else:
                    _remove(entries, entry)
                    if not entries:
                        del index[call_id]
        for call_id in candidate.answers:
            keys = self._linked.setdefault(call_id, [])
            if add:
                keys.append(candidate.key)
            else:
                if candidate.key in keys:
                    keys.remove(candidate.key)
                if not keys:
                    del self._linked[call_id]

    def result_of(self, call_id: str, after_seq: int) -> Candidate | None:
        """The page holding the result of ``call_id`` made at message ``after_seq``: the first
        ``tool`` message after it answering the call, else the newest evidence page linked."""
        for seq, key in self._answers.get(call_id, ()):
            if seq > after_seq:
                return self.visible[key]
        linked = self._linked.get(call_id)
        return self.visible[linked[-1]] if linked else None

    def caller_of(self, call_id: str, before_seq: int) -> Candidate | None:
        """The last assistant message before ``before_seq`` that made ``call_id``."""
        found = None
        for seq, key in self._callers.get(call_id, ()):
            if seq >= before_seq:
                break
            found = self.visible[key]
        return found

    def candidates(self) -> list[Candidate]:
        """Every visible page by key, a session's own page shadowing a project page's key."""
        if self._listed is None:
            self._listed = [self.visible[key] for key in self._keys]
        return self._listed

    def required(self) -> list[Candidate]:
        """The visible hard-pinned, bootstrap and constraint pages, by key."""
        return [self._required[key] for key in sorted(self._required)]

    def recency(self, candidates: Iterable[Candidate] | None = None) -> list[float]:
        """Recency in (0, 1] of each candidate: its rank by head LSN among all visible pages.

        Equal to :func:`recency_ranks` over the whole table (ties by key, as a stable sort of
        the key-ordered pages gives), found by bisection instead of a sort.
        """
        count = len(self._by_lsn)
        by_lsn = self._by_lsn
        return [
            (bisect.bisect_left(by_lsn, (c.lsn, c.key)) + 1) / count
            for c in (self.candidates() if candidates is None else candidates)
        ]

    def take_changed(self) -> set[str]:
        """The visible keys whose page changed since the last call; starts a new interval."""
        changed, self._changed = self._changed, set()
        return changed

    def pool(
        self,
        *,
        demand: Iterable[str] = (),
        previous: Iterable[int] = (),
        changed: Iterable[str] = (),
        reserve: int = RESERVE,
    ) -> list[Candidate]:
        """The pages a selection can need this turn, by key: bounded by what can matter.

        Required pages (hard pins, bootstrap, constraint), demanded pages, the pages resident
        in the previous prompt, those changed since then, plus a reserve of absent pages: the
        ``reserve`` newest by LSN and the ``reserve`` most favoured (soft pin or positive
        priority). When that is every visible page, it is the whole table.
        """
        visible = self.visible
        if len(visible) <= reserve:
            return self.candidates()
        keys: set[str] = set(self._required)
        keys.update(key for key in demand if key in visible)
        for page_id in previous:
            page = self.by_id.get(page_id)
            if page is not None and visible.get(page.key) is page:
                keys.add(page.key)
        keys.update(key for key in changed if key in visible)
        keys.update(key for _, key in self._by_lsn[-reserve:])
        keys.update(key for _, key in self._favoured[:reserve])
        if len(keys) >= len(visible):
            return self.candidates()
        return [visible[key] for key in sorted(keys)]


def _favoured(candidate: Candidate) -> bool:
    """Soft-pinned or given a positive priority: worth a place in the pool when absent."""
    return candidate.pin is Pin.SOFT or candidate.priority > 0


def _remove(ordered: list[Any], item: Any) -> None:
    """Delete ``item`` from a sorted list (it must be there)."""
    index = bisect.bisect_left(ordered, item)
    if index < len(ordered) and ordered[index] == item:
        del ordered[index]


def _block(item: RenderItem) -> Block:
    """A rendered item as the conversation builder takes it."""
    candidate = item.candidate
    envelope = candidate.envelope
    content = None
    if envelope is not None and item.fidelity is Fidelity.FULL:
        # A message with no text (tool calls only) is stored with a placeholder.
        placeholder = f"[{envelope.get('role')} message {envelope.get('seq')}]"
        content = "" if item.text == placeholder else item.text
    return Block(
        key=candidate.key,
        rendered=item.header + item.text,
        text=item.text,
        content=content,
        envelope=envelope,
        answers=candidate.answers,
        stable=REGION[candidate.type] < 2,
    )


def _links(
    key: str, fields: str | None, provenance: str | None
) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """A page's provider envelope (message pages) and the call ids it answers (evidence)."""
    envelope = None
    if fields and key_seq(key) is not None:
        found = json.loads(fields).get("message")
        envelope = found if isinstance(found, dict) else None
    answers: tuple[str, ...] = ()
    if provenance:
        linked = json.loads(provenance).get("call_ids")
        if isinstance(linked, list):
            answers = tuple(str(call_id) for call_id in linked)
    return envelope, answers


def _header(key: str, fidelity: Fidelity) -> str:
    return f"### {key}{_HEADER_SUFFIX[fidelity]}\n"


# How many blocks a grown page may span before it is rendered whole again (each block costs a
# header, and the page's text is read back in one piece when it is compacted).
MAX_PIECES = 16


def _continued(key: str) -> str:
    """The header of the next block of a page that grew by an append."""
    return f"### {key} (continued)\n"


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
        candidate, fidelity = self.candidate, self.source or self.fidelity
        header = candidate._headers.get(fidelity)
        if header is None:
            header = candidate._headers[fidelity] = _header(candidate.key, fidelity)
        return header


# The prompt's stable regions, in order: the fixed region comes first of all, then bootstrap,
# then constraints, then every other page (see :meth:`Assembler._layout`).
REGION: dict[PageType, int] = {
    PageType.BOOTSTRAP: 0,
    PageType.CONSTRAINT: 1,
    PageType.PLAN: 2,
    PageType.PREFERENCE: 2,
    PageType.EVIDENCE: 2,
    PageType.CONVERSATION: 2,
}


def render_order(items: Iterable[RenderItem]) -> list[RenderItem]:
    """Sections in DESIGN order; keys sorted within, conversation in time (LSN) order.

    The order of a first prompt, and of the pages that enter a prompt together; a page that
    stays resident unchanged keeps its place (:meth:`Assembler._layout`).
    """
    return sorted(items, key=_render_key)


def _render_key(item: RenderItem) -> tuple[int, int, str]:
    candidate = item.candidate
    lsn = candidate.lsn if candidate.type is PageType.CONVERSATION else 0
    return SECTION_ORDER[candidate.type], lsn, candidate.key


def render(fixed: str, items: Sequence[RenderItem]) -> tuple[str, list[dict[str, str]]]:
    """The prompt text and its chat-style messages for ``items`` (already in render order)."""
    text, messages, _ = _render(fixed, items)
    return text, messages


def _render(fixed: str, items: Sequence[RenderItem]) -> tuple[str, list[dict[str, str]], list[str]]:
    """:func:`render` plus :func:`render_parts`, each block built once (the assembler needs all
    three every turn, and building a block per use was a cost per resident page)."""
    blocks = [item.header + item.text for item in items]
    parts = _parts(fixed, blocks)
    text = "".join(parts)
    messages: list[dict[str, str]] = []
    if fixed:
        messages.append({"role": "system", "content": fixed})
    section: list[str] = []
    section_type: PageType | None = None
    for item, rendered in zip(items, blocks, strict=True):
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
    return text, messages, parts


def render_parts(fixed: str, items: Sequence[RenderItem]) -> list[str]:
    """The prompt text in the pieces it is made of: each block with the separator after it.

    Every block starts with its ``###`` header right after a separator's newline, a place where
    the tokenizer always starts afresh, so :meth:`TokenCounter.count_joined` counts the prompt
    exactly from the blocks' own (cached) counts.
    """
    return _parts(fixed, [item.header + item.text for item in items])


def _parts(fixed: str, blocks: list[str]) -> list[str]:
    """The fixed region and the rendered blocks, each but the last with the separator after it."""
    if fixed:
        blocks = [fixed, *blocks]
    return [block + SEPARATOR for block in blocks[:-1]] + blocks[-1:]


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


# -- assembly records ---------------------------------------------------------------------------

# Every SNAPSHOT_EVERY-th assembly of a session (and its first) records the whole prompt; the
# others only what changed since the previous one. Reading any assembly back (the view, or an
# assembler reopening a session) takes its snapshot and at most SNAPSHOT_EVERY - 1 deltas.
SNAPSHOT_EVERY = 32

# A page's line in an assembly record, compared between consecutive assemblies:
# (key, version, fidelity or None, tokens, reason, sort_section, sort_lsn).
RecordRow = tuple[str, int, str | None, int, str, int, int]


def record_rows(
    items: Sequence[RenderItem],
    *,
    by_key: bool = False,
    slots: Mapping[int, int] | None = None,
) -> dict[int, RecordRow]:
    """The record line of each resident page, with its place in the prompt.

    The view numbers a prompt's pages by (sort_section, sort_lsn, key), which is the render
    order: the page's region (bootstrap, constraint, the rest) and its slot in the layout by
    stability (``slots``: page id -> slot; without them, the DESIGN section order, with the LSN
    for conversation). A prompt the harness built is recorded in key order: (0, 0) for all.
    """
    rows: dict[int, RecordRow] = {}
    for item in items:
        candidate = item.candidate
        if by_key:
            section, lsn = 0, 0
        elif slots is not None:
            section, lsn = REGION[candidate.type], slots[candidate.page_id]
        else:
            section = SECTION_ORDER[candidate.type]
            lsn = candidate.lsn if candidate.type is PageType.CONVERSATION else 0
        rows[candidate.page_id] = (
            candidate.key,
            candidate.version,
            item.fidelity.value,
            item.tokens,
            item.reason,
            section,
            lsn,
        )
    return rows


def item_records(
    assembly_id: int,
    now: Mapping[int, RecordRow],
    before: Mapping[int, RecordRow],
    evicted: Sequence[Candidate],
    *,
    snapshot: bool,
    winner: str | None = None,
) -> list[dict[str, Any]]:
    """The ``assembly_items`` rows of one assembly: every resident page for a snapshot, only the
    changes for a delta; the evicted pages either way, as the full record listed them, each
    naming the page that won the space (``won_by``)."""
    rows: list[dict[str, Any]] = []
    for page_id, row in now.items():
        old = before.get(page_id)
        change = "entered" if old is None else ("kept" if old == row else "changed")
        if snapshot or change != "kept":
            rows.append(_item(assembly_id, page_id, row, change))
    left = set()
    for candidate in evicted:
        left.add(candidate.page_id)
        row = (candidate.key, candidate.version, None, 0, "evicted-for-budget", 0, 0)
        rows.append(_item(assembly_id, candidate.page_id, row, "left", winner))
    if not snapshot:
        # Resident last time, neither resident nor evicted now: deleted, or shadowed by a
        # session page of its key. The full record had no row for it; the delta must still end
        # its residency.
        for page_id, old in before.items():
            if page_id not in now and page_id not in left:
                row = (old[0], old[1], None, 0, "gone", 0, 0)
                rows.append(_item(assembly_id, page_id, row, "gone"))
    return rows


def _item(
    assembly_id: int, page_id: int, row: RecordRow, change: str, won_by: str | None = None
) -> dict[str, Any]:
    key, version, fidelity, tokens, reason, section, lsn = row
    return {
        "assembly_id": assembly_id,
        "page_id": page_id,
        "key": key,
        "version": version,
        "fidelity": fidelity,
        "tokens": tokens,
        "reason": reason,
        "change": change,
        "sort_section": section,
        "sort_lsn": lsn,
        "won_by": won_by,
    }


def replay(items: Iterable[Any]) -> dict[int, RecordRow]:
    """The resident pages after a snapshot's items and its deltas' (in assembly order)."""
    rows: dict[int, RecordRow] = {}
    for item in items:
        if item.change in ("left", "gone"):
            rows.pop(item.page_id, None)
        else:
            rows[item.page_id] = (
                item.key,
                item.version,
                item.fidelity,
                item.tokens,
                item.reason,
                item.sort_section,
                item.sort_lsn,
            )
    return rows


_LAST_ASSEMBLY = (
    sql_select(t.assemblies.c.id, t.assemblies.c.kind, t.assemblies.c.base_id)
    .where(t.assemblies.c.session_id == bindparam("b_session"))
    .order_by(t.assemblies.c.id.desc())
    .limit(1)
)
_CHAIN = (
    t.assemblies.c.session_id == bindparam("b_session"),
    t.assemblies.c.id >= bindparam("b_base"),
    t.assemblies.c.id <= bindparam("b_last"),
)
_CHAIN_ITEMS = (
    sql_select(
        t.assembly_items.c.page_id,
        t.assembly_items.c.key,
        t.assembly_items.c.version,
        t.assembly_items.c.fidelity,
        t.assembly_items.c.tokens,
        t.assembly_items.c.reason,
        t.assembly_items.c.change,
        t.assembly_items.c.sort_section,
        t.assembly_items.c.sort_lsn,
    )
    .join(t.assemblies, t.assemblies.c.id == t.assembly_items.c.assembly_id)
    .where(*_CHAIN)
    .order_by(t.assembly_items.c.assembly_id, t.assembly_items.c.page_id)
)
_CHAIN_LENGTH = sql_select(func.count()).select_from(t.assemblies).where(*_CHAIN)


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
        cache: str | CachePricing | None = None,
    ) -> None:
        self.store = store
        self.pins = pins
        self.cache = cache_pricing(cache)
        self.project = project
        self.session_id = session_id
        self.weights = weights or Weights()
        self.hysteresis = hysteresis
        self.table = PageTable(project, session_id, store.counter, self.weights)
        self._previous: dict[int, Fidelity] | None = None
        self._margin: float | None = None  # the learned safety margin, once read
        # (page id, version, fidelity) -> (text, true source) of the last prompt's pages.
        self._text_cache: dict[tuple[int, int, Fidelity], tuple[str, Fidelity]] = {}
        self._previous_versions: dict[int, int] = {}
        # The last record as the database holds it (page id -> its row), the id of that
        # assembly, the snapshot its chain starts from and how many deltas follow that snapshot.
        self._rows: dict[int, RecordRow] | None = None
        self._last_id: int | None = None
        self._base_id: int | None = None
        self._deltas = 0
        # The layout by stability: page id -> its slot in the last recorded prompt (pages render
        # by region, then slot); a page that enters or changes takes the next free slot.
        self._slots: dict[int, int] = {}
        self._next_slot = 0
        # Page id -> its blocks in the last recorded prompt, (slot, text) each: more than one
        # when an appended page kept its old text in place (see _layout).
        self._pieces: dict[int, list[tuple[int, str]]] = {}
        self._fitted: dict[int, list[tuple[int, str]]] = {}
        # Immutable results of the last prompt, reused for the pages that stay (see _results).
        self._made_results: dict[tuple[int, int, Fidelity, str], tuple[AssembledPage, Decision]]
        self._made_results = {}
        self._made_blocks: dict[tuple[int, int, Fidelity, Fidelity | None], Block] = {}
        self._made_items: dict[tuple[int, Fidelity, str], RenderItem] = {}
        # Grows whenever the last prompt (``_previous``) is replaced, so a remembered selection
        # is reused only against the prompt it was made after.
        self._serial = 0
        # (inputs, candidates, selection) of the last assembly: the same inputs over the same
        # pages give the same prompt, byte for byte (the fixed point).
        self._memo: tuple[tuple[Any, ...], list[Candidate], Selection] | None = None

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
        form: Form = "text",
    ) -> Assembly:
        """Build the prompt; see the module docstring for the algorithm.

        ``form`` is what the budget bounds: the text (``"text"``) or a provider conversation
        (``"openai_chat"``, ``"openai_responses"``, ``"anthropic"``), counted as
        :mod:`clawvm_store.render` documents.

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
        if form not in FORMS:
            raise InvalidInput(f"form must be one of {', '.join(FORMS)}, not {form!r}")
        wanted = frozenset(demand)
        counter: TokenCounter = self.store.counter
        with self.store.db.transaction(write=False) as conn:
            self.table.refresh(conn)
            if self._previous is None:
                self._load_previous(conn)
            if self._margin is None:
                # Read once, then kept: only observe_usage changes it. (Looking for the last
                # observations scans every assembly of a session that never reported one.)
                self._margin = learned_margin(
                    conn.execute(_OBSERVED, {"b_session": self.session_id}).all()
                )
            margin = self._margin
            effective = max(1, math.floor(budget / margin))
            fixed_tokens = counter.count(fixed) + (1 if fixed else 0)
            inputs = (
                self.table.generation,
                self._serial,
                effective,
                fixed,
                tuple(sorted(wanted)),
                tuple(sorted(boost.items())) if boost else (),
                self.cache,
            )
            memo = self._memo
            if memo is not None and memo[0] == inputs:
                # Nothing changed since the last prompt, which this selection made: the same
                # prompt again (hysteresis alone would move a few pages on the first repeat).
                candidates, selection = memo[1], _copy(memo[2])
                self.table.take_changed()
            else:
                # Bounded by what can matter this turn, not by every page the session wrote.
                changed = self.table.take_changed()
                candidates = self.table.pool(
                    demand=wanted, previous=self._previous or (), changed=changed
                )
                selection = self._select(
                    candidates,
                    effective=effective,
                    fixed_tokens=fixed_tokens,
                    wanted=wanted,
                    recency=self.table.recency(candidates),
                    boost=boost,
                    changed=changed,
                )
                self._memo = (inputs, candidates, _copy(selection))
            by_id = {candidate.page_id: candidate for candidate in candidates}
            partners = self._partner_pages(by_id, selection)
            texts = self._texts(conn, {**by_id, **partners}, selection, partners)
        items, text, messages, tokens, conversation, slots, blocks = self._fit(
            fixed, by_id, selection, texts, effective, form
        )
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
        present = self.table.visible
        pages, decisions = self._results(items)
        chosen_ids = {item.candidate.page_id for item in items}
        evicted = [
            by_id[page_id]
            for page_id in sorted(self._previous or {})
            if page_id in by_id and page_id not in chosen_ids
        ]
        winner = self._winner(items) if evicted else None
        decisions.extend(
            Decision(c.key, c.type, None, 0, "evicted-for-budget", winner) for c in evicted
        )
        assembly = Assembly(
            items=pages,
            tokens=tokens,
            budget=budget,
            feasible=feasible,
            text=text,
            messages=messages,
            decisions=decisions,
            effective_budget=effective,
            fixed_tokens=fixed_tokens,
            missing=sorted(key for key in wanted if key not in present),
            shortfall=shortfall,
            conversation=conversation,
            form=form,
            prompt_blocks=blocks,
            cache_key=self.session_id,
        )
        if record:
            extra = observe(items, feasible) if observe is not None else []
            assembly = self._record(
                assembly, items, evicted, turn, extra, slots=slots, winner=winner
            )
            self._remember(items, slots, self._fitted)
            if self._memo is not None and self._memo[0] == inputs:
                # Made after the prompt it just replaced: still this state's answer.
                self._memo = ((*inputs[:1], self._serial, *inputs[2:]), *self._memo[1:])
        if shortfall is not None:
            if record:
                self.store._on_insufficient(self.session_id, self.project, turn, shortfall)
            if on_insufficient == "raise":
                raise shortfall
        return assembly

    def _select(
        self,
        candidates: Sequence[Candidate],
        *,
        effective: int,
        fixed_tokens: int,
        wanted: frozenset[str],
        recency: Sequence[float],
        boost: Mapping[str, float] | None,
        changed: Iterable[str] = (),
    ) -> Selection:
        """The selection for this turn; cache-aware when a cache preset is set.

        Without a cache this is :func:`choose`. With one, the last prompt's pages are kept as
        a prefix: the pages of the last prompt whose version did not change, in layout order,
        keep their fidelity (so their blocks, and the prompt up to them, stay byte-identical),
        and only the other pages are chosen, in the room left. The whole last prompt is kept
        when that still places every page the plain selection places that is new or changed
        since the last prompt (``changed``), or demanded, at least at the plain selection's
        fidelity. When it
        does not, this is a compaction-like step under the budget less the preset's headroom
        (so the next turns can append without another break): the longest prefix that still
        gives those pages what the plain selection under that budget gives them is kept, found
        by bisection, else that plain selection; if even the floor does not fit there, the
        plain selection under the whole budget. Floors, pins and demanded pages are
        installed in every pass; demanded and boosted pages are never held back.
        """
        common = {
            "fixed_tokens": fixed_tokens,
            "demand": wanted,
            "previous": self._previous,
            "weights": self.weights,
            "hysteresis": self.hysteresis,
            "recency": recency,
            "boost": boost,
            "pins": self.pins,
        }
        fresh = choose(candidates, budget=effective, **common)  # type: ignore[arg-type]
        previous = self._previous
        if not self.cache.enabled or not previous or not fresh.feasible:
            return fresh
        versions, slots = self._previous_versions, self._slots
        prefix = sorted(
            (
                candidate
                for candidate in candidates
                if candidate.page_id in previous
                and versions.get(candidate.page_id) == candidate.version
                and candidate.key not in wanted
                and not (boost and boost.get(candidate.key))
            ),
            key=lambda candidate: (
                REGION[candidate.type],
                slots.get(candidate.page_id, self._next_slot),
            ),
        )

        by_key = {candidate.key: candidate.page_id for candidate in candidates}
        news = {by_key[key] for key in (*changed, *wanted) if key in by_key}

        def attempt(length: int, budget: int, plain: Selection) -> Selection | None:
            # What the cache may not cost: each new, changed or demanded page the plain
            # selection under the same budget places, at least at the fidelity it gives it.
            keep = {c.page_id: previous[c.page_id] for c in prefix[:length]}
            selection = choose(candidates, budget=budget, keep=keep, **common)  # type: ignore[arg-type]
            chosen = selection.chosen
            placed = selection.feasible and all(
                page_id in chosen and chosen[page_id].rank <= fidelity.rank
                for page_id, fidelity in plain.chosen.items()
                if page_id in news
            )
            return selection if placed else None

        whole = attempt(len(prefix), effective, fresh)
        if whole is not None:
            return whole
        reduced = math.floor(effective * (1.0 - self.cache.headroom))
        compacted = choose(candidates, budget=reduced, **common)  # type: ignore[arg-type]
        if not compacted.feasible:
            return fresh
        best: Selection | None = None
        low, high = 0, len(prefix) - 1
        while low <= high:
            middle = (low + high) // 2
            found = attempt(middle, reduced, compacted)
            if found is None:
                high = middle - 1
            else:
                best, low = found, middle + 1
        return best if best is not None else compacted

    def _partner_pages(
        self, by_id: Mapping[int, Candidate], selection: Selection
    ) -> dict[int, Candidate]:
        """The result pages of the tool calls the chosen messages make: their pointer text is
        the result when the page itself is not in the prompt (clawvm_store.render)."""
        found: dict[int, Candidate] = {}
        for page_id in selection.chosen:
            envelope = by_id[page_id].envelope
            if envelope is None or not envelope.get("tool_calls"):
                continue
            seq = message_seq(by_id[page_id].key)
            for call in envelope["tool_calls"]:
                result = self.table.result_of(str(call["id"]), seq)
                if result is not None:
                    found[result.page_id] = result
        return found

    def _partners(self, texts: Mapping[tuple[int, Fidelity], tuple[str, Fidelity]]) -> Partners:
        table = self.table

        def result(call_id: str, after_seq: int) -> str | None:
            page = table.result_of(call_id, after_seq)
            found = texts.get((page.page_id, Fidelity.POINTER)) if page is not None else None
            return found[0] if found is not None else None

        def caller(call_id: str, before_seq: int) -> tuple[int, Mapping[str, Any]] | None:
            page = table.caller_of(call_id, before_seq)
            if page is None or page.envelope is None:
                return None
            return message_seq(page.key), page.envelope

        return Partners(result=result, caller=caller)

    def _texts(
        self,
        conn: Connection,
        by_id: Mapping[int, Candidate],
        selection: Selection,
        pointers: Iterable[int] = (),
    ) -> dict[tuple[int, Fidelity], tuple[str, Fidelity]]:
        """Text and true source of each chosen rung, of each rung an undo could fall back to,
        and the pointer of each page in ``pointers``.

        Read in the same snapshot as the page table, so versions always match.
        """
        wanted = {(page_id, fidelity) for page_id, fidelity in selection.chosen.items()}
        wanted.update((page_id, before) for page_id, before in selection.upgrades if before)
        wanted.update((page_id, Fidelity.POINTER) for page_id in pointers)
        # A version's texts never change: last turn's are reused, only the rest are read.
        cached = self._text_cache
        kept: dict[tuple[int, int, Fidelity], tuple[str, Fidelity]] = {}
        missing: dict[Fidelity, list[int]] = {}
        for page_id, fidelity in wanted:
            key = (page_id, by_id[page_id].version, fidelity)
            found = cached.get(key)
            if found is None:
                missing.setdefault(fidelity, []).append(page_id)
            else:
                kept[key] = found
        for fidelity, page_ids in sorted(missing.items()):
            ids = sorted(page_ids)
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    _TEXTS, {"b_ids": ids[start : start + 500], "b_fidelities": [fidelity.value]}
                )
                current = [row for row in rows if row.version == by_id[row.page_id].version]
                for (page_id, version, _), found in read_texts(conn, current).items():
                    kept[(page_id, version, fidelity)] = found
        self._text_cache = kept
        return {(page_id, fidelity): found for (page_id, _, fidelity), found in kept.items()}

    def _fit(
        self,
        fixed: str,
        by_id: Mapping[int, Candidate],
        selection: Selection,
        texts: Mapping[tuple[int, Fidelity], tuple[str, Fidelity]],
        budget: int,
        form: Form = "text",
    ) -> tuple[
        list[RenderItem],
        str,
        list[dict[str, str]],
        int,
        Conversation,
        dict[int, int],
        tuple[PromptBlock, ...],
    ]:
        """Render and count exactly; undo upgrades, last first, until ``form`` fits.

        Also returns each page's slot in the layout and the prompt's blocks (what a provider
        cache compares, :mod:`clawvm_store.cache`).
        """
        chosen = dict(selection.chosen)
        undo = list(selection.upgrades)
        counter: TokenCounter = self.store.counter
        partners = self._partners(texts)
        made = self._made_items
        while True:
            now: dict[tuple[int, Fidelity, str], RenderItem] = {}
            for page_id, fidelity in chosen.items():
                reason = selection.reasons.get(page_id, "upgrade")
                key = (page_id, fidelity, reason)
                item = made.get(key)
                candidate = by_id[page_id]
                if item is None or item.candidate is not candidate:
                    # Items are immutable: a page that stays as it was reuses last turn's.
                    text, source = texts[(page_id, fidelity)]
                    item = RenderItem(
                        candidate=candidate,
                        fidelity=fidelity,
                        text=text,
                        tokens=candidate.tokens[fidelity],
                        reason=reason,
                        source=source,
                    )
                now[key] = item
            self._made_items = now
            items, slots, layout, pieces = self._layout(now.values())
            text, messages, parts = _render(fixed, items)
            if len(layout) > len(items):
                # A grown page is in several blocks: the text is the blocks in layout order.
                parts = _parts(fixed, [header + piece for _, _, header, piece in layout])
                text = "".join(parts)
            counts: list[int] | None = None
            conversation: Conversation | None = None
            if form == "text":
                # Exact: the text tokenized as one string, from the blocks' cached counts.
                counts = counter.count_each(parts)
                tokens = sum(counts)
            else:
                conversation = build_conversation(fixed, self._blocks(items), partners)
                tokens = rendered_tokens(conversation, form, counter)
            if tokens <= budget or not undo:
                if conversation is None:
                    conversation = build_conversation(fixed, self._blocks(items), partners)
                if counts is None:
                    counts = counter.count_each(parts)
                identities: list[Hashable] = [("fixed", fixed)] if fixed else []
                # A block is what a provider cache compares: its bytes (the header names the
                # page, so two pages' blocks never compare equal).
                identities.extend((header, piece) for _, _, header, piece in layout)
                blocks = tuple(zip(identities, counts, strict=True))
                self._fitted = pieces  # what _remember keeps if this prompt is recorded
                return items, text, messages, tokens, conversation, slots, blocks
            # The text form's count is cheap, so each undo is checked exactly. Rendering a
            # provider form costs a pass over the whole conversation, so undo as many upgrades
            # (last first) as their counted tokens say the overshoot needs, then check exactly
            # again: a few renders, not one per upgrade.
            over = 1 if form == "text" else tokens - budget
            while over > 0 and undo:
                page_id, before = undo.pop()
                tokens_now = by_id[page_id].tokens[chosen[page_id]]
                if before is None:
                    del chosen[page_id]
                    over -= tokens_now + _MESSAGE_OVERHEAD
                else:
                    chosen[page_id] = before
                    over -= tokens_now - by_id[page_id].tokens[before]

    def _results(self, items: Sequence[RenderItem]) -> tuple[list[AssembledPage], list[Decision]]:
        """Each item as an :class:`AssembledPage` and its :class:`Decision`. Both are
        immutable, so a page that is in the prompt as it was last time reuses last time's."""
        made = self._made_results
        now: dict[tuple[int, int, Fidelity, str], tuple[AssembledPage, Decision]] = {}
        pages, decisions = [], []
        for item in items:
            candidate = item.candidate
            key = (candidate.page_id, candidate.version, item.fidelity, item.reason)
            pair = made.get(key)
            if pair is None:
                pair = (
                    AssembledPage(
                        key=candidate.key,
                        type=candidate.type,
                        fidelity=item.fidelity,
                        version=candidate.version,
                        tokens=item.tokens,
                        text=item.text,
                        reason=item.reason,
                    ),
                    Decision(
                        candidate.key, candidate.type, item.fidelity, item.tokens, item.reason
                    ),
                )
            now[key] = pair
            pages.append(pair[0])
            decisions.append(pair[1])
        self._made_results = now
        return pages, decisions

    def _blocks(self, items: Sequence[RenderItem]) -> list[Block]:
        """The items as the conversation builder takes them; a page's block is built once per
        version and fidelity (blocks are immutable, and most pages stay from turn to turn)."""
        made = self._made_blocks
        blocks = []
        for item in items:
            key = (item.candidate.page_id, item.candidate.version, item.fidelity, item.source)
            block = made.get(key)
            if block is None:
                block = made[key] = _block(item)
            blocks.append(block)
        if len(made) > 4 * len(items) + 64:  # keep what this prompt uses, forget the rest
            wanted = {
                (item.candidate.page_id, item.candidate.version, item.fidelity, item.source)
                for item in items
            }
            self._made_blocks = {key: made[key] for key in wanted}
        return blocks

    def _winner(self, items: Sequence[RenderItem]) -> str | None:
        """The page that won the space this assembly: the most tokens gained against the last
        prompt (it entered, rose in fidelity or grew; ties by key); None if nothing gained."""
        rows = self._rows or {}
        best: tuple[int, str] | None = None
        for item in items:
            row = rows.get(item.candidate.page_id)
            gained = item.tokens - (row[3] if row is not None and row[2] else 0)
            key = item.candidate.key
            if gained > 0 and (best is None or (-gained, key) < (-best[0], best[1])):
                best = (gained, key)
        return best[1] if best is not None else None

    def _layout(
        self, items: Iterable[RenderItem]
    ) -> tuple[
        list[RenderItem],
        dict[int, int],
        list[tuple[int, int, str, str]],
        dict[int, list[tuple[int, str]]],
    ]:
        """The prompt's pages in the layout by stability, each one's slot, and its blocks.

        Regions first (bootstrap, constraints, then every other page); within a region, the
        pages of the last prompt that stayed at the same version and fidelity keep their
        slots, so their blocks stay where a provider's prefix cache has them, and the pages
        that entered or changed take new slots after every kept one, new pages first, then
        changed ones, each in render order. A change breaks the cached prefix only from its own
        block on, and a page that changes every turn (the plan, the current conversation span)
        keeps moving to the end.

        With a cache preset, a page that grew by an append (in full both times, its new text
        starting with the old) keeps its old blocks where they were and its new segment becomes
        one more block at the end, ``### key (continued)``, up to :data:`MAX_PIECES` blocks
        (then it is rendered whole at the end again): an appended conversation stays
        append-only in the prompt too. The blocks are ``(region, slot, header, text)`` in
        prompt order; a page's slot is its first block's.
        """
        previous = self._previous or {}
        versions = self._previous_versions
        known = self._slots
        before = self._pieces
        placed: list[tuple[int, int, RenderItem]] = []
        fresh: list[RenderItem] = []
        grown: list[tuple[RenderItem, list[tuple[int, str]], str]] = []
        for item in items:
            page_id = item.candidate.page_id
            slot = known.get(page_id)
            if slot is None:
                fresh.append(item)
            elif (
                previous.get(page_id) is item.fidelity
                and versions.get(page_id) == item.candidate.version
            ):
                placed.append((REGION[item.candidate.type], slot, item))
            elif (old := self._grown_from(item, before.get(page_id))) is not None:
                placed.append((REGION[item.candidate.type], slot, item))
                grown.append((item, old, item.text[sum(len(text) for _, text in old) :]))
            else:
                fresh.append(item)
        # Pages that were in the last prompt in another form changed, and what changed once
        # tends to change again (the plan, the current span, a re-run's result): they go after
        # the pages that are new, so the next change breaks the prefix as late as it can.
        # (Only what takes a new slot needs the render order; the rest sort by slot.)
        fresh = render_order(fresh)
        fresh.sort(key=lambda item: item.candidate.page_id in previous)
        slot = self._next_slot
        for item in fresh:
            placed.append((REGION[item.candidate.type], slot, item))
            slot += 1
        placed.sort(key=lambda entry: (entry[0], entry[1]))
        ordered = [entry[2] for entry in placed]
        slots = {entry[2].candidate.page_id: entry[1] for entry in placed}
        if not self.cache.enabled:
            # One block per page: nothing grows in place without a cache preset.
            return ordered, slots, [(r, at, i.header, i.text) for r, at, i in placed], {}
        blocks: list[tuple[int, int, str, str]] = []
        pieces: dict[int, list[tuple[int, str]]] = {}
        for _, first, item in placed:
            page_id = item.candidate.page_id
            kept = before.get(page_id) if item.fidelity is Fidelity.FULL else None
            if (
                kept is None
                or versions.get(page_id) != item.candidate.version
                or kept[0][0] != first
            ):
                kept = [(first, item.text)]
            pieces[page_id] = list(kept)
        grown.sort(key=lambda entry: _render_key(entry[0]))
        for item, old, segment in grown:
            pieces[item.candidate.page_id] = [*old, (slot, segment)]
            slot += 1
        for region, _, item in placed:
            page_id = item.candidate.page_id
            for index, (at, text) in enumerate(pieces[page_id]):
                header = item.header if index == 0 else _continued(item.candidate.key)
                blocks.append((region, at, header, text))
        blocks.sort(key=lambda block: (block[0], block[1]))
        return ordered, slots, blocks, pieces

    def _grown_from(
        self, item: RenderItem, old: list[tuple[int, str]] | None
    ) -> list[tuple[int, str]] | None:
        """The last prompt's blocks of a page that only grew since (see :meth:`_layout`)."""
        if (
            old is None
            or not self.cache.enabled
            or len(old) >= MAX_PIECES
            or item.fidelity is not Fidelity.FULL
            or (self._previous or {}).get(item.candidate.page_id) is not Fidelity.FULL
            or (item.source or item.fidelity) is not Fidelity.FULL
        ):
            return None
        offset = 0
        for _, text in old:
            if not item.text.startswith(text, offset):
                return None
            offset += len(text)
        return old if len(item.text) > offset else None

    def _record(
        self,
        assembly: Assembly,
        items: Sequence[RenderItem],
        evicted: Sequence[Candidate],
        turn: int,
        extra: Sequence[dict[str, Any]] = (),
        *,
        by_key: bool = False,
        slots: Mapping[int, int] | None = None,
        winner: str | None = None,
    ) -> Assembly:
        """Write the assembly and the items that changed since the session's previous one.

        ``by_key``: the items are in key order (a prompt the harness built), not render order.
        """
        store = self.store
        if self._rows is None:
            with store.db.transaction(write=False) as conn:
                self._load_previous(conn)
        assert self._rows is not None
        now = record_rows(items, by_key=by_key, slots=slots)
        with store.db.transaction(sync="normal") as conn:
            last = conn.execute(_LAST_ASSEMBLY, {"b_session": self.session_id}).first()
            # A snapshot starts each session's chain and every SNAPSHOT_EVERY-th assembly, so
            # reading any one back takes a bounded number of rows. One is also written when
            # another assembler recorded for this session since (this one's previous would not
            # be the database's): a snapshot does not depend on what came before.
            snapshot = (
                last is None
                or last.id != self._last_id
                or self._base_id is None
                or self._deltas + 1 >= SNAPSHOT_EVERY
            )
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
                    "kind": "snapshot" if snapshot else "delta",
                    "base_id": None if snapshot else self._base_id,
                },
            )
            assembly_id = int(result.inserted_primary_key[0])
            rows = item_records(
                assembly_id, now, self._rows, evicted, snapshot=snapshot, winner=winner
            )
            if rows:
                conn.execute(t.assembly_items.insert(), rows)
            if extra:
                conn.execute(t.faults.insert(), list(extra))
        self._rows = now
        self._last_id = assembly_id
        self._base_id = assembly_id if snapshot else self._base_id
        self._deltas = 0 if snapshot else self._deltas + 1
        return dataclasses.replace(assembly, assembly_id=assembly_id)

    def record_external(
        self,
        resident: Mapping[str, Fidelity],
        budget: int,
        turn: int,
        fault_rows: Sequence[dict[str, Any]],
    ) -> None:
        """Record a prompt the harness built itself, so residency history covers it too."""
        by_key = self.table.visible
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
        self._record(external, items, evicted, turn, fault_rows, by_key=True)
        self._remember(items, {item.candidate.page_id: slot for slot, item in enumerate(items)})

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
        """The session's last recorded prompt, from its snapshot and the deltas after it."""
        last = conn.execute(_LAST_ASSEMBLY, {"b_session": self.session_id}).first()
        if last is None:
            rows: dict[int, RecordRow] = {}
            self._last_id = self._base_id = None
            self._deltas = 0
        else:
            base = last.id if last.kind == "snapshot" else last.base_id
            params = {"b_session": self.session_id, "b_base": base, "b_last": last.id}
            rows = replay(conn.execute(_CHAIN_ITEMS, params))
            self._last_id, self._base_id = last.id, base
            # The chain counts its snapshot; the deltas are the rest.
            self._deltas = int(conn.execute(_CHAIN_LENGTH, params).scalar() or 1) - 1
        self._rows = rows
        self._previous = {page_id: Fidelity(row[2]) for page_id, row in rows.items() if row[2]}
        self._previous_versions = {page_id: row[1] for page_id, row in rows.items()}
        resident = sorted(
            (row[5], row[6], row[0], page_id) for page_id, row in rows.items() if row[2]
        )
        slots = {entry[3]: entry[1] for entry in resident}
        if any(entry[0] > 2 for entry in resident) or len(set(slots.values())) < len(slots):
            # Recorded before the layout by stability, or by the harness (key order): the
            # slots follow the recorded positions from here on.
            slots = {entry[3]: slot for slot, entry in enumerate(resident)}
        self._slots = slots
        self._next_slot = max(slots.values(), default=-1) + 1
        self._pieces = {}  # a reopened session renders a grown page whole once more
        self._serial += 1

    def _remember(
        self,
        items: Sequence[RenderItem],
        slots: Mapping[int, int],
        pieces: Mapping[int, list[tuple[int, str]]] | None = None,
    ) -> None:
        self._pieces = dict(pieces or {})
        self._previous = {item.candidate.page_id: item.fidelity for item in items}
        self._previous_versions = {item.candidate.page_id: item.candidate.version for item in items}
        self._slots = dict(slots)
        top = max((at for blocks in self._pieces.values() for at, _ in blocks), default=-1)
        self._next_slot = max(self._next_slot, max(slots.values(), default=-1) + 1, top + 1)
        self._serial += 1

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
            self._margin = learned_margin(
                conn.execute(_OBSERVED, {"b_session": self.session_id}).all()
            )
            return self._margin
