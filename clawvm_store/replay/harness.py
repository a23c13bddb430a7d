"""The evaluation harness: replay a trace under a policy and a budget, and count what went wrong.

Each configuration runs in its own copy of a freshly migrated database with a deterministic clock,
so the same seed gives byte-identical results however the configurations are scheduled. A turn:

1. the exchange is appended to the session's current conversation span page;
2. the agent's writes are staged;
3. the tool calls are made (first calls through the mediator; repeats as the policy handles them);
4. a lifecycle event, if any (compaction, reset, session end), as the policy handles it;
5. the turn ends (writeback);
6. the policy builds the next prompt under the budget, demanding the turn's needs and results.

Faults, alerts and hits come from the store's own observer (``store.faults()``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import CacheMeter, PromptBlock
from ..errors import InvalidInput
from ..faults import POLICY_FAULTS
from ..pages import FaultKind
from ..store import Store
from ..tokens import TokenCounter
from .policies import POLICIES, conversation_key, floor_fits, make
from .trace import Trace
from .workloads import FAMILIES, build

BUDGETS = (120, 180, 240, 300, 400, 500)
REPORTED_KINDS = [kind.value for kind in POLICY_FAULTS] + [FaultKind.PHYSICAL_INSUFFICIENCY.value]


@dataclass(frozen=True)
class ConfigResult:
    """One configuration's outcome (the JSON contract's ``configs`` entries)."""

    family: str
    budget: int
    policy: str
    feasible: bool
    faults: dict[str, int]
    alerts: int
    hits: int
    thrash: float
    tokens_used: float
    turns: int
    policy_us_per_turn: float = 0.0
    trace: str = ""  # the trace's name (several imported traces share a family)
    # Provider prompt caching (clawvm_store.cache): the median share of each prompt's tokens
    # that is a prefix of the previous prompt of its session, and the input cost (in uncached
    # tokens) without and with caching at Anthropic's prices.
    prefix_reuse: float = 0.0
    input_cost: float = 0.0
    cached_input_cost: float = 0.0
    served_calls: int = 0  # tool calls answered from the ledger or a page without running

    def as_json(self) -> dict[str, Any]:
        """The contract shape, in a fixed key order."""
        return {
            "family": self.family,
            "budget": self.budget,
            "policy": self.policy,
            "feasible": self.feasible,
            "faults": self.faults,
            "alerts": self.alerts,
            "hits": self.hits,
            "thrash": round(self.thrash, 6),
            "tokens_used": round(self.tokens_used, 3),
            "turns": self.turns,
            "prefix_reuse": round(self.prefix_reuse, 6),
            "input_cost": round(self.input_cost, 3),
            "cached_input_cost": round(self.cached_input_cost, 3),
        }

    @property
    def total_faults(self) -> int:
        """Policy-controllable faults (physical insufficiency excluded)."""
        return sum(self.faults[kind.value] for kind in POLICY_FAULTS)


def fixed_clock() -> Callable[[], str]:
    """A clock that ticks one microsecond per call from a fixed instant: runs are reproducible."""
    counter = itertools.count()

    def now() -> str:
        tick = next(counter)
        seconds, micros = divmod(tick, 1_000_000)
        minutes, seconds = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        return f"2026-01-01T{hours % 24:02d}:{minutes:02d}:{seconds:02d}.{micros:06d}+00:00"

    return now


def template_database(directory: Path) -> Path:
    """A migrated, empty database to copy for every configuration (migrating once is enough)."""
    path = directory / "template.db"
    if not path.exists():
        Store.open(path, clock=fixed_clock()).close()
    return path


def run_config(
    trace: Trace, budget: int, policy_name: str, *, workdir: Path, template: Path
) -> ConfigResult:
    """Replay ``trace`` under one policy and budget; count faults with the store's observer."""
    path = workdir / f"{trace.name}-{budget}-{policy_name}-{os.getpid()}.db"
    shutil.copyfile(template, path)
    try:
        with Store.open(path, clock=fixed_clock()) as store:
            return _replay(store, trace, budget, policy_name)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def replay_into(
    trace: Trace, budget: int, policy_name: str, path: Path, *, fixed_region: bool = False
) -> tuple[ConfigResult, list[dict[str, Any]]]:
    """Replay ``trace`` into a new database at ``path`` (left there for inspection).

    With ``fixed_region``, the trace's :attr:`~Trace.fixed_tokens` (the real prompt's system
    prompt and tool definitions, from the transcript's usage) are charged first in every
    prompt, as the real harness charged them: the pages get the rest of the budget.

    Returns the result and every ``stale_serve`` case, oldest first: the turn, the tool, its
    arguments, the sizes of the served and the real output and the first character where they
    differ. The database is the replay's own store: its pages, journal, tool ledger,
    assemblies and faults are what ``clawvm sql``, ``clawvm faults`` and ``clawvm pages`` read.
    """
    if path.exists():
        raise InvalidInput(f"{path} exists: --keep writes a new database and never reuses one")
    fixed = trace.fixed_tokens if fixed_region else 0
    if fixed >= budget:
        raise InvalidInput(
            f"{trace.name}'s fixed region ({fixed} tokens of system prompt and tools) leaves "
            f"no room in a budget of {budget}"
        )
    with tempfile.TemporaryDirectory(prefix="clawvm-replay-") as tmp:
        template = template_database(Path(tmp))
        shutil.copyfile(template, path)
    with Store.open(path, clock=fixed_clock()) as store:
        result = _replay(store, trace, budget, policy_name, fixed)
        rows = store.query(
            "SELECT session_id, turn, key, detail FROM faults WHERE kind = ? ORDER BY id",
            [FaultKind.STALE_SERVE.value],
        )
    cases = [
        {"session": row["session_id"], "turn": row["turn"], "key": row["key"]}
        | json.loads(row["detail"] or "{}")
        for row in rows
    ]
    return result, cases


def _replay(
    store: Store, trace: Trace, budget: int, policy_name: str, fixed: int = 0
) -> ConfigResult:
    project = trace.project
    # A fixed region is charged first in every prompt and never changes: the pages get the
    # rest, and every prompt starts with it (a cached block).
    room = budget - fixed
    head: tuple[PromptBlock, ...] = ((("fixed", fixed), fixed),) if fixed else ()
    for step in trace.setup:
        store.put(
            step.key,
            type=step.type,
            content=step.content,
            project=project,
            provenance=step.provenance,
        )
    policy = make(policy_name, store, project, trace.turns)
    sessions: dict[str, Any] = {}
    meters: dict[str, CacheMeter] = {}
    feasible = True
    tokens: list[int] = []
    policy_seconds = 0.0
    for index, turn in enumerate(trace.turns):
        sess = sessions.get(turn.session)
        if sess is None or sess._closed:
            sess = sessions[turn.session] = policy.open_session(turn.session)
        if turn.user or turn.assistant:
            exchange = "\n".join(
                part
                for part in (
                    f"user: {turn.user}" if turn.user else "",
                    f"assistant: {turn.assistant}" if turn.assistant else "",
                )
                if part
            )
            sess.stage(
                conversation_key(sess.id, index), type="conversation", content=exchange, op="append"
            )
        for step in turn.stage:
            policy.stage(sess, step)
        results = [policy.tool(sess, step) for step in turn.tools]
        if turn.event:
            policy.boundary(sess, turn.event, turn)
        if sess._closed:
            continue
        sess.end_turn()
        demand = list(dict.fromkeys([*turn.demand, *results]))
        fits = floor_fits(sess, demand, room)
        feasible = feasible and fits
        start = time.perf_counter()
        tokens.append(policy.prompt(sess, index, demand, room, fits) + fixed)
        policy_seconds += time.perf_counter() - start
        if policy.blocks:
            meters.setdefault(turn.session, CacheMeter()).add(head + policy.blocks)
    for sess in sessions.values():
        if not sess._closed:
            sess.close()
    report = store.faults(project=project)
    reuse = [share for meter in meters.values() for share in meter.reuse]
    return ConfigResult(
        family=trace.family,
        budget=budget,
        policy=policy_name,
        feasible=feasible,
        faults={kind: report.counts[kind] for kind in REPORTED_KINDS},
        alerts=report.alerts,
        hits=report.hits,
        thrash=report.thrash,
        tokens_used=statistics.fmean(tokens) if tokens else 0.0,
        turns=len(trace.turns),
        policy_us_per_turn=policy_seconds / max(len(tokens), 1) * 1e6,
        trace=trace.name,
        prefix_reuse=statistics.median(reuse) if reuse else 0.0,
        input_cost=sum(meter.uncached_cost for meter in meters.values()),
        cached_input_cost=sum(meter.cached_cost for meter in meters.values()),
        served_calls=policy.served,
    )


def transcript_baseline(
    trace: Trace, counter: TokenCounter, budget: int | None = None, *, fixed: int = 0
) -> dict[str, float]:
    """The prompt cache figures of the transcript's own harness, replayed as it sends prompts.

    Such a harness (Claude Code, Codex, ...) appends to the transcript between compactions:
    each prompt is the setup pages, then every turn's user text, assistant text and tool
    outputs so far, in order; a compaction or reset replaces the history (the prefix breaks
    after the setup), and a new session starts afresh. Counted per block like the policies'
    prompts (:mod:`clawvm_store.cache`); ``fixed`` tokens (the system prompt and tools no
    transcript holds) come first when given. With no ``budget`` it sends what it holds; with one
    it is an append-only policy under that budget: when a prompt would exceed it, the harness
    compacts first (the history is dropped, as a summary would replace it) and the turn's own
    blocks start the new history (those that fit). Returns ``prefix_reuse`` (the median),
    ``tokens_used`` (mean tokens per prompt), ``input_cost`` and ``cached_input_cost``; and,
    from the transcript's own usage records where it has them, ``reported_prompts`` (how many
    turns report one), ``reported_prompt_tokens`` (the real prompts' mean size) and
    ``reported_cache_reuse`` (the median share the provider read from its cache).
    """
    setup: list[PromptBlock] = [(("fixed", fixed), fixed)] if fixed else []
    setup += [
        (("setup", index), counter.count(step.content)) for index, step in enumerate(trace.setup)
    ]
    meters: dict[str, CacheMeter] = {}
    history: dict[str, list[PromptBlock]] = {}
    sizes: list[int] = []
    for index, turn in enumerate(trace.turns):
        blocks = history.setdefault(turn.session, [])
        texts = [turn.user or "", turn.assistant or ""]
        texts += [
            f"{step.name} {json.dumps(step.args, sort_keys=True)}\n{step.output}"
            for step in turn.tools
        ]
        fresh = [
            ((turn.session, index, part), counter.count(text))
            for part, text in enumerate(texts)
            if text
        ]
        blocks.extend(fresh)
        if budget is not None and _size(setup) + _size(blocks) > budget:
            blocks[:] = []
            room = budget - _size(setup)
            for block in fresh:
                if block[1] <= room:
                    blocks.append(block)
                    room -= block[1]
        prompt = setup + blocks
        meters.setdefault(turn.session, CacheMeter()).add(prompt)
        sizes.append(_size(prompt))
        if turn.event in ("compaction", "reset"):
            blocks.clear()
        elif turn.event == "session_end":
            history.pop(turn.session, None)
            meters.setdefault(turn.session, CacheMeter()).reset()
    reuse = [share for meter in meters.values() for share in meter.reuse]
    # What the transcript itself says the provider counted, where it reports usage.
    real = [turn for turn in trace.turns if turn.prompt_tokens]
    return {
        "prefix_reuse": statistics.median(reuse) if reuse else 0.0,
        "tokens_used": statistics.fmean(sizes) if sizes else 0.0,
        "input_cost": sum(meter.uncached_cost for meter in meters.values()),
        "cached_input_cost": sum(meter.cached_cost for meter in meters.values()),
        "reported_prompts": len(real),
        "reported_prompt_tokens": statistics.fmean(t.prompt_tokens or 0 for t in real)
        if real
        else 0.0,
        "reported_cache_reuse": statistics.median(
            (t.cached_tokens or 0) / (t.prompt_tokens or 1) for t in real
        )
        if real
        else 0.0,
    }


def _size(blocks: Sequence[PromptBlock]) -> int:
    return sum(tokens for _, tokens in blocks)


def _run_one(args: tuple[Trace, int, str, str, str]) -> ConfigResult:
    trace, budget, policy, workdir, template = args
    return run_config(trace, budget, policy, workdir=Path(workdir), template=Path(template))


def run_eval(
    *,
    families: Sequence[str] = FAMILIES,
    budgets: Sequence[int] = BUDGETS,
    policies: Sequence[str] = POLICIES,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[ConfigResult], None] | None = None,
    traces: Sequence[Trace] | None = None,
) -> list[ConfigResult]:
    """Every (trace, budget, policy) configuration, in a fixed order."""
    chosen = list(traces) if traces is not None else [build(family, seed) for family in families]
    jobs = [
        (trace, budget, policy) for trace in chosen for budget in budgets for policy in policies
    ]
    results: dict[tuple[str, int, str], ConfigResult] = {}  # by (trace name, budget, policy)
    with tempfile.TemporaryDirectory(prefix="clawvm-eval-") as tmp:
        template = template_database(Path(tmp))
        payloads = [(trace, budget, policy, tmp, str(template)) for trace, budget, policy in jobs]
        count = workers if workers is not None else min(2, os.cpu_count() or 1)
        if count <= 1:
            outcomes: Iterable[ConfigResult] = map(_run_one, payloads)
            for outcome in outcomes:
                results[(outcome.trace, outcome.budget, outcome.policy)] = outcome
                if progress:
                    progress(outcome)
        else:
            with ProcessPoolExecutor(max_workers=count) as pool:
                for outcome in pool.map(_run_one, payloads, chunksize=1):
                    results[(outcome.trace, outcome.budget, outcome.policy)] = outcome
                    if progress:
                        progress(outcome)
    return [results[(trace.name, budget, policy)] for trace, budget, policy in jobs]


def summarize(results: Sequence[ConfigResult]) -> dict[str, dict[str, float]]:
    """Per policy: mean faults and thrash per configuration (and over feasible ones)."""
    summary: dict[str, dict[str, float]] = {}
    for policy in dict.fromkeys(result.policy for result in results):
        mine = [result for result in results if result.policy == policy]
        feasible = [result for result in mine if result.feasible]
        summary[policy] = {
            "mean_faults": round(statistics.fmean(r.total_faults for r in mine), 4),
            "mean_thrash": round(statistics.fmean(r.thrash for r in mine), 4),
            "mean_faults_feasible": round(statistics.fmean(r.total_faults for r in feasible), 4)
            if feasible
            else 0.0,
            "mean_tokens_used": round(statistics.fmean(r.tokens_used for r in mine), 2),
            "median_prefix_reuse": round(statistics.median(r.prefix_reuse for r in mine), 4),
            "cached_cost_ratio": round(sum(r.cached_input_cost for r in mine) / total, 4)
            if (total := sum(r.input_cost for r in mine))
            else 1.0,
        }
    return summary


def oracle_gap(results: Sequence[ConfigResult]) -> dict[str, float]:
    """Mean (policy faults - oracle faults) over the configurations both ran."""
    oracle = {(r.family, r.budget): r.total_faults for r in results if r.policy == "oracle"}
    gaps: dict[str, list[int]] = {}
    for result in results:
        if (result.family, result.budget) in oracle:
            gaps.setdefault(result.policy, []).append(
                result.total_faults - oracle[(result.family, result.budget)]
            )
    return {policy: round(statistics.fmean(values), 4) for policy, values in gaps.items()}


def to_json(results: Sequence[ConfigResult]) -> str:
    """The contract JSON: ``{"configs": [...], "summary": {policy: {...}}}``, deterministic."""
    payload = {
        "configs": [result.as_json() for result in results],
        "summary": summarize(results),
        "oracle_gap": oracle_gap(results),
    }
    return json.dumps(payload, indent=1, sort_keys=False)
