"""The six policies the paper compares, each running over the same store and fault observer.

All of them stage the agent's writes through the journal, run first-time tool calls through the
mediator (so every result is an evidence page) and are judged by the same observer. They differ
where the paper says they differ:

* ``clawvm``: the engine as shipped: floors and pins, validated writeback at every boundary,
  pointers, the mediator serving repeats, the two-phase assembler with hysteresis.
* ``lru``: the same structure with recency-only upgrades (no pin, type or demand terms in the
  utility) and no hysteresis.
* ``oracle``: ``clawvm`` that also sees the next three turns and boosts the pages they will need.
* ``retrieval``: no residency across turns: each prompt is rebuilt from what the turn asks for and
  what a search finds, at the richest fidelity that fits; no pins; no lifecycle writeback
  (compaction, reset and session end discard staged state); a repeated tool call is looked up by
  search, and run again when the search misses it.
* ``retrieval_cache``: ``retrieval`` plus a small LRU cache (4 results) of recent tool results.
* ``clawvm_cache``: ``clawvm`` playing to Anthropic's prompt cache (``configure_assembly(
  cache="anthropic")``): prompts stay append-only between compaction-like steps.
* ``compaction_hybrid``: the practitioner baseline: a FIFO of recent items under a token
  threshold, summarized at compaction; retrieval for the rest; a memory flush before compaction
  when it notices the threshold in time (not when one huge tool output jumps past it); no flush at
  reset; bootstrap state kept in the FIFO, not pinned, so the first prompt after a compaction
  lacks it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

from sqlalchemy import select

from .. import faults as fault_log
from .. import schema as t
from ..assembler import Candidate, Weights, choose
from ..cache import PromptBlock
from ..errors import NotFound
from ..mediator import render_output, result_key, signature_of
from ..pages import FaultKind, Fidelity
from ..session import Session
from ..store import Store
from .trace import StageStep, ToolStep, Turn

POLICIES = (
    "retrieval",
    "retrieval_cache",
    "compaction_hybrid",
    "lru",
    "clawvm",
    "clawvm_cache",
    "oracle",
)
LRU_WEIGHTS = Weights(
    hard_pin=0.0,
    soft_pin=0.0,
    recompute=0.0,
    bootstrap=0.0,
    plan=0.0,
    session_scope=0.0,
    demand=0.0,
    hysteresis=0.0,
    recency=4.0,
)
LOOKAHEAD = 3
CACHE_SIZE = 4
RICHEST_FIRST = (Fidelity.FULL, Fidelity.COMPRESSED, Fidelity.STRUCTURED, Fidelity.POINTER)


def candidates(sess: Session) -> dict[str, Candidate]:
    """The session's visible pages with their token counts (the assembler's page table)."""
    with sess.store.db.transaction(write=False) as conn:
        sess._assembler.table.refresh(conn)
    return {candidate.key: candidate for candidate in sess._assembler.table.candidates()}


def floor_fits(sess: Session, demand: Sequence[str], budget: int) -> bool:
    """Whether the floor (required pages at their minimum fidelity) fits ``budget``."""
    table = list(candidates(sess).values())
    return choose(table, budget=budget, fixed_tokens=0, demand=frozenset(demand)).feasible


def cost(candidate: Candidate, fidelity: Fidelity) -> int:
    """What the assembler would charge for this page at this fidelity."""
    return candidate.costs[candidate.rung_of[fidelity]]


def blocks_of(
    table: Mapping[str, Candidate], resident: Mapping[str, Fidelity], order: Sequence[str]
) -> tuple[PromptBlock, ...]:
    """A harness-built prompt's blocks, in the order it renders them (see clawvm_store.cache)."""
    return tuple(
        ((key, table[key].version, resident[key]), cost(table[key], resident[key]))
        for key in dict.fromkeys(order)
        if key in resident
    )


class Policy:
    """The clawvm engine: stage, mediate, write back at every boundary, assemble."""

    name = "clawvm"
    writeback = True
    cache_preset: str | None = None  # Session.configure_assembly(cache=...)

    def __init__(self, store: Store, project: str, turns: Sequence[Turn]) -> None:
        self.store = store
        self.project = project
        self.turns = turns
        # The blocks of the last prompt built (what a provider's prefix cache compares).
        self.blocks: tuple[PromptBlock, ...] = ()
        # Tool calls the mediator answered without running them (the re-runs it saved).
        self.served = 0

    def open_session(self, session_id: str) -> Session:
        """Start (or resume) a session of the trace."""
        sess = self.store.session(session_id, project=self.project)
        if self.cache_preset is not None:
            sess.configure_assembly(cache=self.cache_preset)
        return sess

    def stage(self, sess: Session, step: StageStep) -> None:
        """Stage one of the agent's writes (a set names the version it read)."""
        expected = None
        if step.op == "set":
            try:
                expected = sess.page(step.key).version
            except NotFound:
                expected = None
        sess.stage(
            step.key,
            type=step.type,
            content=step.content,
            op=step.op,
            provenance=step.provenance,
            expected_version=expected,
        )

    def tool(self, sess: Session, step: ToolStep) -> str:
        """Make a tool call; return the key of the evidence page holding its result.

        A result served without running is checked against the output the real tool returned
        at this point of the transcript: a difference is a ``stale_serve`` fault.
        """
        result = sess.tool_call(
            step.name,
            step.args,
            run=lambda **_: step.output,
            effect=step.effect,
            resources=step.resources,
        )
        if result.source != "executed":
            self.served += 1
            check_served(sess, step, result.content)
        return result.key

    def boundary(self, sess: Session, event: str, turn: Turn) -> None:
        """A lifecycle event: compaction, reset or session end."""
        if event == "compaction":
            sess.compact(writeback=self.writeback)
        elif event == "reset":
            sess.reset(writeback=self.writeback)
        else:
            sess.close(writeback=self.writeback)

    def prompt(
        self, sess: Session, index: int, demand: Sequence[str], budget: int, fits: bool
    ) -> int:
        """Build this turn's prompt; return its tokens."""
        result = sess.assemble(budget, demand=list(demand), on_insufficient="report")
        self.blocks = result.prompt_blocks if result.feasible else ()
        return result.tokens if result.feasible else 0


class CachePolicy(Policy):
    """The engine playing to Anthropic's prompt cache (append-only between compactions)."""

    name = "clawvm_cache"
    cache_preset = "anthropic"


class LruPolicy(Policy):
    """Floors, pins, writeback and pointers, with recency-only upgrades."""

    name = "lru"

    def open_session(self, session_id: str) -> Session:
        sess = super().open_session(session_id)
        sess.configure_assembly(weights=LRU_WEIGHTS, hysteresis=False)
        return sess


class OraclePolicy(Policy):
    """The engine plus a three-turn lookahead that boosts what the next turns will need."""

    name = "oracle"

    def prompt(
        self, sess: Session, index: int, demand: Sequence[str], budget: int, fits: bool
    ) -> int:
        upcoming: dict[str, float] = {}
        for ahead, turn in enumerate(self.turns[index + 1 : index + 1 + LOOKAHEAD]):
            for key in [*turn.demand, *(tool_key(step) for step in turn.tools)]:
                upcoming[key] = max(upcoming.get(key, 0.0), 4.0 - ahead)
        result = sess.assemble(
            budget, demand=list(demand), on_insufficient="report", boost=upcoming
        )
        self.blocks = result.prompt_blocks if result.feasible else ()
        return result.tokens if result.feasible else 0


def first_difference(served: str, real: str) -> int:
    """The index of the first character where two texts differ (the shorter's length if none)."""
    for index, (a, b) in enumerate(zip(served, real, strict=False)):
        if a != b:
            return index
    return min(len(served), len(real))


def check_served(sess: Session, step: ToolStep, served: str) -> bool:
    """Record a ``stale_serve`` fault when ``served`` is not what the real tool returned."""
    real = render_output(step.output)
    if served == real:
        return False
    detail = {
        "tool": step.name,
        "args": step.args,
        "served_chars": len(served),
        "real_chars": len(real),
        "first_difference": first_difference(served, real),
    }
    row = fault_log.fault_row(
        session_id=sess.id,
        project=sess.project,
        turn=sess.turn,
        kind=FaultKind.STALE_SERVE.value,
        key=tool_key(step),
        detail=detail,
        at=sess.store.clock(),
    )
    with sess.store.db.transaction(sync="normal") as conn:
        fault_log.record(conn, [row])
    return True


def tool_key(step: ToolStep) -> str:
    """The evidence page a tool step's result lands in."""
    return result_key(step.name, signature_of(step.name, step.args))


class RetrievalPolicy(Policy):
    """No residency across turns, no pins, no lifecycle writeback; search for repeats."""

    name = "retrieval"
    writeback = False
    cache_size = 0

    def __init__(self, store: Store, project: str, turns: Sequence[Turn]) -> None:
        super().__init__(store, project, turns)
        self.called: set[tuple[str, str]] = set()
        self.cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.obtained: set[str] = set()  # results this turn's tool steps already brought in

    def tool(self, sess: Session, step: ToolStep) -> str:
        signature = (sess.id, signature_of(step.name, step.args))
        key = tool_key(step)
        if step.effect in ("write", "unknown"):
            self.called.add(signature)
            self.cache.clear()  # a write may change what any cached read saw
            return super().tool(sess, step)
        self.obtained.add(key)
        if signature in self.called and not still_valid(sess, signature[1]):
            # Its own edit made the old result stale: re-reading is required, not a fault.
            self.cache.pop(signature, None)
            sess.tool_call(step.name, step.args, run=lambda **_: step.output, fresh=True)
            self._remember(signature, key)
            return key
        if signature in self.cache:
            self.cache.move_to_end(signature)
            sess.resolve(key)
            return key
        if signature in self.called:
            found = sess.recall(" ".join([step.name, *map(str, step.args.values())]), limit=3)
            if any(page.key == key for page in found.pages):
                self._remember(signature, key)
                return key
            sess.tool_call(step.name, step.args, run=lambda **_: step.output, fresh=True)
            self._remember(signature, key)
            return key
        self.called.add(signature)
        key = super().tool(sess, step)
        self._remember(signature, key)
        return key

    def _remember(self, signature: tuple[str, str], key: str) -> None:
        if self.cache_size:
            self.cache[signature] = key
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)

    def prompt(
        self, sess: Session, index: int, demand: Sequence[str], budget: int, fits: bool
    ) -> int:
        table = candidates(sess)
        last = sess._keys_in_last_prompt()
        obtained, self.obtained = self.obtained, set()
        wanted: list[str] = []
        for key in demand:
            if key in table and key not in wanted:
                wanted.append(key)
                if key not in last and key not in obtained:
                    sess.fetch(key)  # retrieved again: a refetch if it had been resident
        turn = self.turns[index]
        if turn.user:
            # Filling the rest of the budget by relevance is the harness's own search, not the
            # agent asking for something it needs, so it goes to the backend directly: only
            # content a turn needs again can be a refetch.
            found = self.store.recall_backend.search(self.store, self.project, turn.user, 5)
            for key, owner in found.hits:
                if owner in ("", sess.id) and key in table and key not in wanted:
                    wanted.append(key)
        resident, used = fill(table, wanted, budget, {})
        sess.observe_prompt(resident, record=True, budget=budget, floor_fits=fits)
        self.blocks = blocks_of(table, resident, wanted)  # rebuilt by relevance every turn
        return used


class RetrievalCachePolicy(RetrievalPolicy):
    """Retrieval plus an LRU cache of the last few tool results."""

    name = "retrieval_cache"
    cache_size = CACHE_SIZE


class CompactionHybridPolicy(RetrievalPolicy):
    """A FIFO of recent items summarized at compaction, retrieval for the rest."""

    name = "compaction_hybrid"
    writeback = True

    def __init__(self, store: Store, project: str, turns: Sequence[Turn]) -> None:
        super().__init__(store, project, turns)
        self.fifo: list[str] = []
        self.after_compaction = False
        self.turn_output_tokens = 0
        self.budget = 0

    def tool(self, sess: Session, step: ToolStep) -> str:
        key = tool_key(step)
        self.turn_output_tokens += self.store.counter.count(step.output)
        if key in self.fifo and step.effect == "read":
            self.obtained.add(key)
            return Policy.tool(self, sess, step)  # still in its window: no search needed
        key = super().tool(sess, step)
        return key

    def boundary(self, sess: Session, event: str, turn: Turn) -> None:
        if event == "compaction":
            # The flush runs when the harness notices the threshold coming; one huge output
            # jumps past it within a single step, and compaction happens unflushed.
            noticed = self.turn_output_tokens < self.budget
            sess.compact(writeback=noticed)
            self.after_compaction = True
            self.fifo = [key for key in self.fifo if key.startswith("conversation/")][-1:]
        elif event == "reset":
            sess.reset(writeback=False)  # a reset skips the flush
            self.after_compaction = True
            self.fifo = []
        else:
            sess.close()
            self.fifo = []

    def prompt(
        self, sess: Session, index: int, demand: Sequence[str], budget: int, fits: bool
    ) -> int:
        self.turn_output_tokens = 0
        self.budget = budget  # the compaction threshold is the budget
        table = candidates(sess)
        turn = self.turns[index]
        # Everything the turn touched joins the history, retrieved pages included: a retrieved
        # page is read into the context like any other message.
        recent = [
            f"conversation/{sess.id}/span-{index // SPAN_TURNS}",
            *(tool_key(step) for step in turn.tools),
            *(step.key for step in turn.stage),
            *demand,
        ]
        for key in recent:
            if key in self.fifo:
                self.fifo.remove(key)
            self.fifo.append(key)
        system = [] if self.after_compaction else ["bootstrap/agent", "constraint/privacy"]
        self.after_compaction = False
        last = sess._keys_in_last_prompt()
        obtained, self.obtained = self.obtained, set()
        for key in demand:
            if key in table and key not in last and key not in obtained:
                sess.fetch(key)  # not in the window any more: retrieved again
        wanted = [key for key in system if key in table]
        for key in reversed(self.fifo):
            if key in table and key not in wanted:
                wanted.append(key)
        summary = {
            key: Fidelity.STRUCTURED
            for key in wanted
            if key.startswith("conversation/") and key != recent[0]
        }
        resident, used = fill(table, wanted, int(budget * 0.9), summary)
        sess.observe_prompt(resident, record=True, budget=budget, floor_fits=fits)
        # Rendered as a transcript: the system pages, then the window oldest first.
        self.blocks = blocks_of(table, resident, [*system, *self.fifo])
        return used


SPAN_TURNS = 4


def still_valid(sess: Session, signature: str) -> bool:
    """Whether the last result of a read with this signature has not been invalidated."""
    with sess.store.db.transaction(write=False) as conn:
        row = conn.execute(
            select(t.tool_calls.c.state, t.tool_calls.c.invalidated_at)
            .where(t.tool_calls.c.session_id == sess.id, t.tool_calls.c.signature == signature)
            .order_by(t.tool_calls.c.id.desc())
            .limit(1)
        ).first()
    return row is not None and row.state == "finished" and row.invalidated_at is None


def fill(
    table: Mapping[str, Candidate],
    wanted: Sequence[str],
    budget: int,
    caps: Mapping[str, Fidelity],
) -> tuple[dict[str, Fidelity], int]:
    """Take pages in order, each at the richest fidelity (up to its cap) that still fits."""
    resident: dict[str, Fidelity] = {}
    used = 0
    for key in wanted:
        candidate = table[key]
        cap = caps.get(key, Fidelity.FULL)
        for fidelity in RICHEST_FIRST:
            if fidelity.rank < cap.rank or fidelity not in candidate.rung_of:
                continue
            price = cost(candidate, fidelity)
            if used + price <= budget:
                resident[key] = fidelity
                used += price
                break
    return resident, used


class NoPointerResolution(Policy):
    """Ablation: the engine without pointer resolution: a repeat whose result is not resident in
    full in the last prompt runs the tool again."""

    name = "clawvm-no-pointer-resolution"

    def tool(self, sess: Session, step: ToolStep) -> str:
        key = tool_key(step)
        prior = still_valid(sess, signature_of(step.name, step.args))
        if step.effect == "read" and prior and sess._resident_fidelity(key) is not Fidelity.FULL:
            sess.tool_call(step.name, step.args, run=lambda **_: step.output, fresh=True)
            return key
        return super().tool(sess, step)


class NoPins(Policy):
    """Ablation: the engine without the floor for pins (bootstrap and constraints compete)."""

    name = "clawvm-no-pins"

    def open_session(self, session_id: str) -> Session:
        sess = super().open_session(session_id)
        sess.configure_assembly(pins=False)
        return sess


class NoWriteback(Policy):
    """Ablation: the engine skipping writeback at destructive boundaries."""

    name = "clawvm-no-writeback"
    writeback = False


class NoHysteresis(Policy):
    """Ablation: the engine without hysteresis (stability, not faults, should suffer)."""

    name = "clawvm-no-hysteresis"

    def open_session(self, session_id: str) -> Session:
        sess = super().open_session(session_id)
        sess.configure_assembly(hysteresis=False)
        return sess


ABLATIONS: dict[str, type[Policy]] = {
    "pointer-resolution": NoPointerResolution,
    "pins": NoPins,
    "writeback": NoWriteback,
    "hysteresis": NoHysteresis,
}


POLICY_CLASSES: dict[str, type[Policy]] = {
    "retrieval": RetrievalPolicy,
    "retrieval_cache": RetrievalCachePolicy,
    "compaction_hybrid": CompactionHybridPolicy,
    "lru": LruPolicy,
    "clawvm": Policy,
    "clawvm_cache": CachePolicy,
    "oracle": OraclePolicy,
}


def conversation_key(session: str, index: int) -> str:
    """The conversation span page a turn's exchange is appended to."""
    return f"conversation/{session}/span-{index // SPAN_TURNS}"


def make(name: str, store: Store, project: str, turns: Sequence[Turn]) -> Policy:
    """The policy called ``name`` (an ablation is ``clawvm-no-<ablation>``)."""
    for ablation, cls in ABLATIONS.items():
        if name == f"clawvm-no-{ablation}":
            return cls(store, project, turns)
    return POLICY_CLASSES[name](store, project, turns)


__all__ = ["POLICIES", "Policy", "conversation_key", "floor_fits", "make"]
