"""The six lifecycle regression gates (the paper's Tier-1), and a kill -9 during a tool call.

Each gate drives one scenario through the public API twice: once the way our engine runs it,
which must record **zero** policy faults, and once through a deliberately broken harness that
skips the step the engine enforces, which must be caught with exactly the right fault kind (with
exact counts and no other kind) or the right reason code. The broken harnesses use the engine's
escape hatches, each modelling a harness that skips one step:

1. post-compaction bootstrap: a harness that builds its own prompt without the bootstrap page
   (``Session.observe_prompt``) -> ``post_compaction_bootstrap``; a hard-pinned page left out ->
   ``pinned_invariant_miss``;
2. reset with dirty pages: ``reset(writeback=False)`` -> one ``flush_miss`` per staged update;
3. threshold-jump race: one huge tool output jumps past the soft (flush) and the hard
   (compaction) threshold in a single step; ``compact(writeback=False)`` -> ``flush_miss``;
4. silent recall: a backend that returns nothing and no reason -> ``silent_recall``;
5. unsafe persistence: stale set, dangling provenance and another principal's scope are
   rejected with ``DESTRUCTIVE_OP``, ``PROVENANCE_UNRESOLVED`` and ``SCOPE_DENIED``;
6. evidence churn: re-running tools (``fresh=True``) -> ``duplicate_tool``; recalling evicted
   evidence through the retrieval backend -> ``refetch``.

The crash test SIGKILLs a forked child inside a ``write`` tool call and checks that recovery
closes the call as interrupted, never re-runs it, and leaves exactly one result per call.
"""

from __future__ import annotations

import os
import random
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

import clawvm_store as cvm
from clawvm_store.faults import POLICY_FAULTS

PROJECT = "p"
POLICY_KINDS = tuple(kind.value for kind in POLICY_FAULTS)
NON_FAULT_KINDS = ("duplicate_signature", "physical_insufficiency")
BOOT_RULES = [
    "Run the test suite before every commit.",
    "Never push to the main branch directly.",
    "Keep every public function documented.",
    "Ask before deleting any file.",
]
BOOT_BODY = "\n".join(
    [
        "# Agent bootstrap",
        *BOOT_RULES,
        "Background: " + "This repository is a durable state engine for LLM agents. " * 30,
    ]
)
PREF_FIELDS: dict[str, Any] = {"statement": "Use tabs", "scope": "project", "provenance": "user"}


# --- helpers ----------------------------------------------------------------------------------


def put_bootstrap(store: cvm.Store, key: str = "boot/agent") -> str:
    """A project bootstrap page: about 400 tokens in full, 40 at its structured floor."""
    store.put(
        key,
        type="bootstrap",
        content=BOOT_BODY,
        structured={"title": "Agent bootstrap", "rules": BOOT_RULES},
        project=PROJECT,
    )
    return key


def policy_counts(report: cvm.FaultReport) -> dict[str, int]:
    return {kind: report.counts[kind] for kind in POLICY_KINDS}


def assert_no_faults(store: cvm.Store, session: str) -> cvm.FaultReport:
    """The engine's run: zero policy faults of every kind."""
    report = store.faults(session=session, events=True)
    assert report.faults == 0, report.events
    assert policy_counts(report) == dict.fromkeys(POLICY_KINDS, 0)
    assert report.physical_insufficiency == 0
    return report


def assert_exactly(store: cvm.Store, session: str, expected: Mapping[str, int]) -> cvm.FaultReport:
    """The broken harness: exactly ``expected`` policy faults, zero of every other kind."""
    report = store.faults(session=session, events=True)
    wanted = dict.fromkeys(POLICY_KINDS, 0)
    wanted.update(expected)
    assert policy_counts(report) == wanted, report.events
    assert report.faults == sum(expected.values())
    assert report.physical_insufficiency == 0
    assert {event["kind"] for event in report.events} <= {*POLICY_KINDS, *NON_FAULT_KINDS}
    return report


def journal_state(store: cvm.Store, lsns: list[int]) -> dict[int, tuple[str, str | None]]:
    entries = {entry.lsn: entry for entry in store.journal_entries()}
    return {lsn: (entries[lsn].state, entries[lsn].reason) for lsn in lsns}


def floor_ok(item: cvm.AssembledPage) -> bool:
    return item.fidelity.rank <= cvm.POLICIES[item.type].floor.rank


# --- gate 1: post-compaction bootstrap ---------------------------------------------------------


def bootstrap_scenario(store: cvm.Store, session: str) -> cvm.Session:
    """A session with a bootstrap page, a constraint, a hard-pinned plan and ten tool results."""
    put_bootstrap(store)
    sess = store.session(session, project=PROJECT)
    rules = ["Never force-push."]
    sess.stage("rules/safety", type="constraint", content=rules[0], structured={"rules": rules})
    sess.stage(
        "plan/main",
        type="plan",
        content="goal: fix the parser\ncurrent step: reproduce",
        pin="hard",
    )
    sess.stage("conv/1", type="conversation", content="user: the parser drops trailing commas")
    assert len(sess.end_turn().committed) == 3
    for index in range(10):
        sess.tool_call("grep", {"pattern": f"p{index}"}, lambda pattern: f"match {pattern} " * 60)
    return sess


def test_gate1_engine_restores_bootstrap_after_every_compaction_and_reset(
    store: cvm.Store,
) -> None:
    sess = bootstrap_scenario(store, "s-engine")
    budget = 160
    fidelities = []
    for cycle, boundary in enumerate(["compact", "reset", "compact", "reset"]):
        sess.tool_call("grep", {"pattern": f"cycle{cycle}"}, lambda pattern: f"{pattern} " * 200)
        sess.stage(f"conv/c{cycle}", type="conversation", content=f"assistant: cycle {cycle}")
        result = sess.compact() if boundary == "compact" else sess.reset()
        assert len(result.committed) == 1 and result.discarded == []
        assembly = sess.assemble(budget)
        assert assembly.feasible and assembly.tokens <= budget
        items = {item.key: item for item in assembly.items}
        for key in ("boot/agent", "rules/safety", "plan/main"):
            assert key in items, (boundary, sorted(items))
            assert floor_ok(items[key]), (key, items[key].fidelity)
        fidelities.append(items["boot/agent"].fidelity.value)
        sess.end_turn()
    # The bootstrap is degraded to its floor to fit, never dropped.
    assert set(fidelities) <= {"full", "structured"}
    report = assert_no_faults(store, "s-engine")
    print(f"gate 1 engine: bootstrap fidelity after each boundary {fidelities}; {report.counts}")


def test_gate1_harness_skipping_the_bootstrap_is_caught(store: cvm.Store) -> None:
    sess = bootstrap_scenario(store, "s-broken")
    evidence = {record.result_key: "pointer" for record in sess.tool_history()}
    sess.compact()
    # The harness assembles its own prompt after compaction and forgets the bootstrap page.
    kinds = sess.observe_prompt(
        {"rules/safety": "full", "plan/main": "full", "conv/1": "full", **evidence}
    )
    assert kinds == [cvm.FaultKind.POST_COMPACTION_BOOTSTRAP]
    assert_exactly(store, "s-broken", {"post_compaction_bootstrap": 1})
    # After a reset the harness keeps the bootstrap only as a pointer (below its structured
    # floor) and drops the hard-pinned plan: one fault of each kind.
    sess.end_turn()
    sess.reset()
    kinds = sess.observe_prompt({"boot/agent": "pointer", "rules/safety": "structured"})
    assert kinds == [cvm.FaultKind.POST_COMPACTION_BOOTSTRAP, cvm.FaultKind.PINNED_INVARIANT_MISS]
    # Only the first prompt after a compaction or reset is a post-compaction fault; the
    # bootstrap missing from a later one is an ordinary floor miss.
    kinds = sess.observe_prompt({"rules/safety": "full", "plan/main": "structured"})
    assert kinds == [cvm.FaultKind.PINNED_INVARIANT_MISS]
    report = assert_exactly(
        store, "s-broken", {"post_compaction_bootstrap": 2, "pinned_invariant_miss": 2}
    )
    assert [(event["kind"], event["key"]) for event in report.events] == [
        ("post_compaction_bootstrap", "boot/agent"),
        ("post_compaction_bootstrap", "boot/agent"),
        ("pinned_invariant_miss", "plan/main"),
        ("pinned_invariant_miss", "boot/agent"),
    ]
    # The engine's own assembly of the same state, right after a compaction, commits none.
    sess.compact()
    assembly = sess.assemble(160)
    assert {"boot/agent", "rules/safety", "plan/main"} <= {item.key for item in assembly.items}
    assert store.faults(session="s-broken").faults == 4
    print(f"gate 1 broken: {policy_counts(store.faults(session='s-broken'))}")


# --- gate 2: reset with dirty pages ------------------------------------------------------------


def dirty_session(store: cvm.Store, session: str) -> tuple[cvm.Session, list[int]]:
    """A session with a committed plan (v1) and four staged, not yet committed, updates."""
    put_bootstrap(store)
    sess = store.session(session, project=PROJECT)
    sess.stage("plan/main", type="plan", content="goal: ship v2\ncurrent step: design")
    sess.end_turn()
    staged = [
        sess.stage(
            "plan/main",
            type="plan",
            content="goal: ship v2\ncurrent step: tests",
            expected_version=1,
        ),
        sess.stage("conv/1", type="conversation", content="user: remember the deadline is Friday"),
        sess.stage("conv/1", op="append", content="assistant: noted, Friday"),
        sess.stage("pref/style", type="preference", content="Use tabs", structured=PREF_FIELDS),
    ]
    assert [entry.lsn for entry in sess.staged()] == [entry.lsn for entry in staged]
    return sess, [entry.lsn for entry in staged]


def test_gate2_engine_commits_staged_updates_before_the_reset(store: cvm.Store) -> None:
    sess, lsns = dirty_session(store, "s-engine")
    result = sess.reset()
    assert result.boundary is cvm.Boundary.RESET
    assert result.committed == lsns and result.rejected == [] and result.discarded == []
    assert [result.versions[lsn] for lsn in lsns] == [2, 1, 2, 1]
    assert journal_state(store, lsns) == dict.fromkeys(lsns, ("applied", None))
    assert sess.staged() == []
    page = store.page("plan/main", project=PROJECT, session="s-engine")
    assert (page.version, page.content) == (2, "goal: ship v2\ncurrent step: tests")
    conv = store.page("conv/1", project=PROJECT, session="s-engine").content
    assert conv == "user: remember the deadline is Friday\nassistant: noted, Friday"
    assert store.page("pref/style", project=PROJECT).content == "Use tabs"
    # After the reset the context starts from durable state, bootstrap first.
    assembly = sess.assemble(400)
    keys = {item.key: item for item in assembly.items}
    assert floor_ok(keys["boot/agent"]) and "plan/main" in keys
    assert_no_faults(store, "s-engine")


def test_gate2_reset_that_skips_writeback_is_one_flush_miss_per_staged_update(
    store: cvm.Store,
) -> None:
    sess, lsns = dirty_session(store, "s-broken")
    result = sess.reset(writeback=False)
    assert result.discarded == lsns
    assert result.committed == [] and result.rejected == [] and result.versions == {}
    assert journal_state(store, lsns) == dict.fromkeys(lsns, ("quarantined", "DISCARDED"))
    assert sess.staged() == []
    # Nothing was applied: the staged state is lost, which is exactly what the fault says.
    assert store.page("plan/main", project=PROJECT, session="s-broken").version == 1
    with pytest.raises(cvm.NotFound):
        store.page("conv/1", project=PROJECT, session="s-broken")
    with pytest.raises(cvm.NotFound):
        store.page("pref/style", project=PROJECT)
    report = assert_exactly(store, "s-broken", {"flush_miss": len(lsns)})
    assert [(event["key"], event["kind"]) for event in report.events] == [
        ("plan/main", "flush_miss"),
        ("conv/1", "flush_miss"),
        ("conv/1", "flush_miss"),
        ("pref/style", "flush_miss"),
    ]
    # A reset with nothing staged loses nothing, even without writeback.
    sess.end_turn()
    assert sess.reset(writeback=False).discarded == []
    assert store.faults(session="s-broken").counts["flush_miss"] == len(lsns)


# --- gate 3: threshold-jump race -----------------------------------------------------------------

SOFT_THRESHOLD = 6_000  # the harness flushes memory when its context passes this
HARD_THRESHOLD = 8_000  # ... and compacts when it passes this
HUGE_LINES = 3_000  # about 50k tokens of build log


def build_output(target: str, lines: int) -> str:
    return "\n".join(
        f"line {i}: {target}: module m{i % 97} compiled in {i % 13} ms" for i in range(lines)
    )


@dataclass
class ThresholdRun:
    contexts: list[int] = field(default_factory=list)
    flushes: int = 0
    compactions: list[tuple[int, list[int], cvm.WritebackResult]] = field(default_factory=list)
    staged_keys: list[str] = field(default_factory=list)
    result_keys: list[str] = field(default_factory=list)
    after: cvm.Assembly | None = None


def threshold_harness(sess: cvm.Session, *, writeback: bool) -> ThresholdRun:
    """One agent turn with five tool calls; the context is tallied after each.

    Like OpenClaw's memory flush, the harness flushes once its context passes the soft
    threshold and compacts when it passes the hard one. The fifth call returns ~50k tokens, so
    the context jumps past both in one step: the soft flush never gets its chance.
    """
    run = ThresholdRun()
    context = sess.assemble(HARD_THRESHOLD).tokens
    plan_version = sess.page("plan/main").version
    sizes = [40, 40, 40, 40, HUGE_LINES]
    for step, lines in enumerate(sizes):
        target = f"pkg{step}"
        result = sess.tool_call(
            "run_build", {"target": target}, lambda target, n=lines: build_output(target, n)
        )
        context += sess.page(result.key).tokens
        run.contexts.append(context)
        run.result_keys.append(result.key)
        key = f"conv/step{step}"
        sess.stage(key, type="conversation", content=f"assistant: built {target}, all modules ok")
        run.staged_keys.append(key)
        if step == len(sizes) - 1:
            sess.stage(
                "plan/main",
                type="plan",
                content="goal: green build\ncurrent step: read the build log",
                expected_version=plan_version,
            )
            run.staged_keys.append("plan/main")
        if context > HARD_THRESHOLD:
            pending = [entry.lsn for entry in sess.staged()]
            outcome = sess.compact(writeback=writeback)
            run.compactions.append((step, pending, outcome))
            run.after = sess.assemble(HARD_THRESHOLD)
            context = run.after.tokens
        elif context > SOFT_THRESHOLD:
            sess.flush()
            run.flushes += 1
    sess.end_turn()
    return run


def threshold_session(store: cvm.Store, session: str) -> cvm.Session:
    put_bootstrap(store)
    sess = store.session(session, project=PROJECT)
    sess.stage("plan/main", type="plan", content="goal: green build\ncurrent step: build")
    sess.end_turn()
    return sess


def assert_single_step_jump(run: ThresholdRun) -> tuple[list[int], cvm.WritebackResult]:
    assert run.contexts[-2] < SOFT_THRESHOLD < HARD_THRESHOLD < run.contexts[-1]
    assert run.flushes == 0  # the soft threshold was jumped over: no flush ran
    assert len(run.compactions) == 1
    step, pending, outcome = run.compactions[0]
    assert step == 4
    assert len(pending) == len(run.staged_keys) == 6
    return pending, outcome


def test_gate3_engine_flushes_before_compaction_even_when_the_threshold_is_jumped(
    store: cvm.Store,
) -> None:
    sess = threshold_session(store, "s-engine")
    run = threshold_harness(sess, writeback=True)
    pending, outcome = assert_single_step_jump(run)
    assert outcome.boundary is cvm.Boundary.COMPACTION
    assert outcome.committed == pending and outcome.discarded == [] and outcome.rejected == []
    assert [outcome.versions[lsn] for lsn in pending] == [1, 1, 1, 1, 1, 2]
    assert journal_state(store, pending) == dict.fromkeys(pending, ("applied", None))
    for step in range(5):
        page = store.page(f"conv/step{step}", project=PROJECT, session="s-engine")
        assert page.content == f"assistant: built pkg{step}, all modules ok"
    plan = store.page("plan/main", project=PROJECT, session="s-engine")
    assert (plan.version, plan.content) == (
        2,
        "goal: green build\ncurrent step: read the build log",
    )
    # After the compaction the huge result is still there, degraded, and the prompt fits.
    assert run.after is not None and run.after.tokens <= HARD_THRESHOLD
    items = {item.key: item for item in run.after.items}
    assert floor_ok(items["boot/agent"])
    huge = store.page(run.result_keys[-1], project=PROJECT, session="s-engine")
    assert huge.tokens > 45_000 and huge.content == build_output("pkg4", HUGE_LINES)
    if huge.key in items:
        assert items[huge.key].fidelity is not cvm.Fidelity.FULL
    report = assert_no_faults(store, "s-engine")
    print(
        f"gate 3 engine: context {run.contexts}, compaction committed {len(outcome.committed)} "
        f"staged updates first; flush_miss={report.counts['flush_miss']}"
    )


def test_gate3_harness_compacting_without_writeback_on_a_jump_is_flush_miss(
    store: cvm.Store,
) -> None:
    sess = threshold_session(store, "s-broken")
    run = threshold_harness(sess, writeback=False)
    pending, outcome = assert_single_step_jump(run)
    assert outcome.discarded == pending
    assert outcome.committed == [] and outcome.versions == {}
    assert journal_state(store, pending) == dict.fromkeys(pending, ("quarantined", "DISCARDED"))
    for step in range(5):
        with pytest.raises(cvm.NotFound):
            store.page(f"conv/step{step}", project=PROJECT, session="s-broken")
    assert store.page("plan/main", project=PROJECT, session="s-broken").version == 1
    report = assert_exactly(store, "s-broken", {"flush_miss": len(pending)})
    assert [event["key"] for event in report.events] == run.staged_keys
    print(f"gate 3 broken: flush_miss={report.counts['flush_miss']} of {len(pending)} staged")


# --- gate 4: silent-recall visibility --------------------------------------------------------


class ExplodingRecall:
    """A backend whose index is down: it raises."""

    def search(self, store: Any, project: str, query: str, limit: int) -> cvm.RecallHits:
        raise RuntimeError("vector index offline")


class SwallowingRecall:
    """A broken backend: swallows every error and every reason, returns an empty list."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def search(self, store: Any, project: str, query: str, limit: int) -> cvm.RecallHits:
        self.queries.append(query)
        return cvm.RecallHits([], None)


def recall_world(store: cvm.Store) -> tuple[cvm.Session, str]:
    """s1 has evidence about kubernetes; s2 has a session page about zebras s1 may not see."""
    other = store.session("s2", project=PROJECT)
    other.stage("notes/zoo", type="conversation", content="user: the zebra enclosure moved north")
    other.close()
    sess = store.session("s1", project=PROJECT)
    result = sess.tool_call(
        "read_file",
        {"path": "deploy.yaml"},
        lambda path: "kind: Deployment  # kubernetes manifest for the api",
    )
    return sess, result.key


def test_gate4_engine_recall_tells_no_match_denied_and_backend_error_apart(
    tmp_path: Path,
) -> None:
    with cvm.Store.open(tmp_path / "fts.db") as store:
        sess, key = recall_world(store)
        found = sess.recall("kubernetes")
        assert (found.reason, [page.key for page in found.pages]) == ("ok", [key])
        nothing = sess.recall("xylophone")
        assert (nothing.reason, nothing.pages) == ("no_match", [])
        denied = sess.recall("zebra")
        assert (denied.reason, denied.pages) == ("denied", [])
        assert denied.detail
        assert_no_faults(store, "s1")
    with cvm.Store.open(tmp_path / "down.db", recall=ExplodingRecall()) as store:
        sess, _ = recall_world(store)
        failed = sess.recall("kubernetes")
        assert (failed.reason, failed.pages) == ("backend_error", [])
        assert failed.detail == "RuntimeError: vector index offline"
        assert_no_faults(store, "s1")
    print("gate 4 engine: ok / no_match / denied / backend_error, silent_recall=0")


def test_gate4_backend_that_swallows_the_reason_is_silent_recall(tmp_path: Path) -> None:
    backend = SwallowingRecall()
    with cvm.Store.open(tmp_path / "silent.db", recall=backend) as store:
        sess, _ = recall_world(store)
        # An error, a miss and a denial all look the same from this backend: empty, no reason.
        outcomes = [sess.recall(query) for query in ("kubernetes", "xylophone", "zebra")]
        assert backend.queries == ["kubernetes", "xylophone", "zebra"]
        for outcome in outcomes:
            assert (outcome.reason, outcome.pages) == ("backend_error", [])
            assert outcome.detail == "the backend returned nothing and no reason"
        report = assert_exactly(store, "s1", {"silent_recall": 3})
        assert [event["kind"] for event in report.events] == ["silent_recall"] * 3
    print(f"gate 4 broken: silent_recall={report.counts['silent_recall']}")


# --- gate 5: unsafe persistence rejected ---------------------------------------------------------


def persistence_world(store: cvm.Store) -> tuple[cvm.Session, cvm.ToolResult]:
    """Only alice may write project pages; pref/style is at v1; alice read a file."""
    store.set_writers(PROJECT, ["alice"])
    store.put("pref/style", type="preference", content="Use spaces", project=PROJECT)
    sess = store.session("s-alice", project=PROJECT, principal="alice")
    read = sess.tool_call("read_file", {"path": "setup.cfg"}, lambda path: "[flake8]\nindent=4")
    return sess, read


def test_gate5_engine_persists_safe_updates(store: cvm.Store) -> None:
    sess, read = persistence_world(store)
    staged = [
        sess.stage("pref/style", type="preference", content="Use tabs", expected_version=1),
        sess.stage(
            "evidence/indent",
            type="evidence",
            content="setup.cfg sets indent=4",
            provenance={"page": f"{read.key}@{read.version}"},
        ),
        sess.stage("pref/lang", type="preference", content="Answer in English", scope="project"),
    ]
    result = sess.flush()
    assert result.committed == [entry.lsn for entry in staged] and result.rejected == []
    assert store.page("pref/style", project=PROJECT).content == "Use tabs"
    assert store.page("pref/style", project=PROJECT).version == 2
    evidence = store.page("evidence/indent", project=PROJECT, session="s-alice")
    assert evidence.provenance == {"page": f"{read.key}@{read.version}"}
    assert_no_faults(store, "s-alice")


def test_gate5_unsafe_updates_are_rejected_with_their_reason_codes(store: cvm.Store) -> None:
    sess, _ = persistence_world(store)
    store.put(
        "pref/style", type="preference", content="Use tabs", project=PROJECT, expected_version=1
    )
    # A stale set: the harness read v1, someone else wrote v2 since.
    stale = sess.stage("pref/style", type="preference", content="Use spaces", expected_version=1)
    blind = sess.stage("pref/style", type="preference", content="Use spaces")
    # Dangling provenance: a page that was never written, a tool call that never ran.
    dangling_page = sess.stage(
        "evidence/a", type="evidence", content="x", provenance={"page": "evidence/never@1"}
    )
    dangling_call = sess.stage(
        "evidence/b", type="evidence", content="y", provenance={"tool_call": 999_999}
    )
    result = sess.flush()
    assert result.committed == []
    assert result.rejected == [
        (stale.lsn, "DESTRUCTIVE_OP"),
        (blind.lsn, "DESTRUCTIVE_OP"),
        (dangling_page.lsn, "PROVENANCE_UNRESOLVED"),
        (dangling_call.lsn, "PROVENANCE_UNRESOLVED"),
    ]
    # Another principal's scope: mallory may not write alice's project pages.
    mallory = store.session("s-mallory", project=PROJECT, principal="mallory")
    foreign = mallory.stage("pref/lang", type="preference", content="Answer in Klingon")
    denied = mallory.flush()
    assert (denied.committed, denied.rejected) == ([], [(foreign.lsn, "SCOPE_DENIED")])
    # ... nor cite another session's page as provenance.
    alice_page = store.page("pref/style", project=PROJECT)
    sess.stage("notes/private", type="conversation", content="user: secret")
    sess.flush()
    peek = mallory.stage(
        "evidence/c", type="evidence", content="z", provenance={"page": "notes/private"}
    )
    assert mallory.flush().rejected == [(peek.lsn, "SCOPE_DENIED")]
    # Nothing unsafe was applied; nothing was dropped either: every entry keeps its reason.
    assert store.page("pref/style", project=PROJECT) == alice_page
    assert alice_page.content == "Use tabs"
    with pytest.raises(cvm.NotFound):
        store.page("pref/lang", project=PROJECT)
    rejected = {entry.lsn: entry.reason for entry in store.journal_entries(state="rejected")}
    assert rejected == {
        stale.lsn: "DESTRUCTIVE_OP",
        blind.lsn: "DESTRUCTIVE_OP",
        dangling_page.lsn: "PROVENANCE_UNRESOLVED",
        dangling_call.lsn: "PROVENANCE_UNRESOLVED",
        foreign.lsn: "SCOPE_DENIED",
        peek.lsn: "SCOPE_DENIED",
    }
    # The direct path raises the matching errors.
    with pytest.raises(cvm.DestructiveWrite) as stale_put:
        store.put("pref/style", type="preference", content="x", project=PROJECT, expected_version=1)
    assert stale_put.value.reason == "DESTRUCTIVE_OP"
    with pytest.raises(cvm.ProvenanceUnresolved):
        store.put("evidence/d", type="evidence", content="x", project=PROJECT)
    # Rejections are not faults: no state was lost, none was silently dropped.
    assert_no_faults(store, "s-alice")
    assert_no_faults(store, "s-mallory")


# --- gate 6: evidence churn ----------------------------------------------------------------------

CHURN_CALLS = 60
CHURN_BUDGET = 600
CHURN_REPEATS = list(range(0, CHURN_CALLS, 2))  # 30 earlier results asked for again
GREEK = [
    *("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "iota", "kappa", "lambda"),
    *("sigma", "omega", "parser", "lexer", "token", "module", "buffer", "stream", "socket"),
]


def churn_output(index: int) -> str:
    """A deterministic file body of 200-400 tokens with a unique marker word."""
    rng = random.Random(index)
    words = [rng.choice(GREEK) for _ in range(195 + (index * 37) % 185)]
    return f"file {index} marker{index:03d}\n" + " ".join(words)


class FakeReader:
    """A read tool with deterministic outputs that counts its real executions."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()

    def __call__(self, path: str) -> str:
        self.runs[path] += 1
        return churn_output(int(path.rsplit("_", 1)[1].split(".")[0]))


def churn_path(index: int) -> str:
    return f"src/mod_{index:03d}.py"


@dataclass
class Prompts:
    """The keys of every prompt a session was given (what refetch is defined against)."""

    seen: set[str] = field(default_factory=set)
    last: set[str] = field(default_factory=set)

    def add(self, assembly: cvm.Assembly) -> None:
        assert assembly.feasible and assembly.tokens <= CHURN_BUDGET
        self.last = {item.key for item in assembly.items}
        self.seen |= self.last


def churn(sess: cvm.Session, reader: FakeReader) -> tuple[Prompts, dict[int, str]]:
    """Sixty unique reads, one per turn, each followed by an assembly under a small budget that
    demands the fresh result (the model must see what its tool just returned)."""
    prompts = Prompts()
    keys = {}
    for index in range(CHURN_CALLS):
        result = sess.tool_call("read_file", {"path": churn_path(index)}, reader)
        assert result.source == "executed"
        keys[index] = result.key
        prompts.add(sess.assemble(CHURN_BUDGET, demand=[result.key]))
        sess.end_turn()
    assert sum(reader.runs.values()) == CHURN_CALLS
    return prompts, keys


def test_churn_outputs_are_200_to_400_tokens(store: cvm.Store) -> None:
    sizes = [store.counter.count(churn_output(index)) for index in range(CHURN_CALLS)]
    assert min(sizes) >= 200 and max(sizes) <= 400
    assert len({churn_output(index) for index in range(CHURN_CALLS)}) == CHURN_CALLS


def test_gate6_engine_serves_repeats_by_pointer_without_rerunning(store: cvm.Store) -> None:
    put_bootstrap(store)
    sess = store.session("s-engine", project=PROJECT)
    reader = FakeReader()
    prompts, keys = churn(sess, reader)
    evicted_before = sum(keys[index] not in prompts.last for index in CHURN_REPEATS)
    sources: Counter[str] = Counter()
    pointers_resolved = 0
    for index in CHURN_REPEATS:
        key = keys[index]
        result = sess.tool_call("read_file", {"path": churn_path(index)}, reader)
        assert (result.key, result.content) == (key, churn_output(index))
        sources[result.source] += 1
        if key not in prompts.last:
            # Evicted evidence stays reachable by its pointer: resolving it runs nothing.
            handle = sess.page(key, fidelity="pointer").content
            assert handle.startswith(f"[ptr {key}@1 evidence ")
            resolved = sess.resolve(handle)
            assert (resolved.key, resolved.content) == (key, churn_output(index))
            pointers_resolved += 1
        prompts.add(sess.assemble(CHURN_BUDGET, demand=[result.key]))
        sess.end_turn()
    assert set(sources) <= {"resolved", "resident"}
    assert sum(sources.values()) == len(CHURN_REPEATS)
    # Every tool ran exactly once.
    assert reader.runs == Counter({churn_path(index): 1 for index in range(CHURN_CALLS)})
    report = assert_no_faults(store, "s-engine")
    assert report.counts["duplicate_tool"] == 0 and report.counts["refetch"] == 0
    assert report.alerts == sources["resident"]
    # A hit per repeat served, per pointer followed, and per demanded result found in its prompt.
    assert report.hits == 2 * len(CHURN_REPEATS) + pointers_resolved + CHURN_CALLS
    print(
        f"gate 6 engine: {CHURN_CALLS} unique reads, {len(CHURN_REPEATS)} repeats "
        f"({evicted_before} evicted from the last prompt), sources {dict(sources)}, "
        f"pointers resolved {pointers_resolved}, tool runs {sum(reader.runs.values())}, "
        f"duplicate_tool={report.counts['duplicate_tool']} refetch={report.counts['refetch']} "
        f"hits={report.hits} alerts={report.alerts} thrash={report.thrash:.3f}"
    )


def test_gate6_harness_that_reruns_and_recalls_is_duplicate_tool_and_refetch(
    store: cvm.Store,
) -> None:
    put_bootstrap(store)
    sess = store.session("s-broken", project=PROJECT)
    reader = FakeReader()
    prompts, keys = churn(sess, reader)
    expected_refetch = 0
    reruns = 0
    for index in CHURN_REPEATS:
        key = keys[index]
        # No pointers: the harness searches its memory for the evicted evidence ...
        found = sess.recall(f"marker{index:03d}", limit=1)
        assert (found.reason, [page.key for page in found.pages]) == ("ok", [key])
        expected_refetch += key in prompts.seen and key not in prompts.last
        # ... and does not trust it, so it runs the tool again.
        result = sess.tool_call("read_file", {"path": churn_path(index)}, reader, fresh=True)
        assert result.source == "executed" and result.content == churn_output(index)
        reruns += 1
        prompts.add(sess.assemble(CHURN_BUDGET, demand=[result.key]))
        sess.end_turn()
    assert reruns == len(CHURN_REPEATS)
    assert sum(reader.runs.values()) == CHURN_CALLS + reruns
    assert all(reader.runs[churn_path(index)] == 2 for index in CHURN_REPEATS)
    assert expected_refetch > 0
    report = assert_exactly(
        store, "s-broken", {"duplicate_tool": reruns, "refetch": expected_refetch}
    )
    print(
        f"gate 6 broken: tool runs {sum(reader.runs.values())} ({reruns} re-runs), "
        f"duplicate_tool={report.counts['duplicate_tool']} refetch={report.counts['refetch']} "
        f"thrash={report.thrash:.3f}"
    )


# --- crash: kill -9 inside a write tool call -----------------------------------------------------

SESSION = "agent"
CHILD_DEADLINE_S = 60.0


@dataclass(frozen=True)
class CrashFiles:
    db: Path
    marker: Path
    notes: Path
    error: Path


def read_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def write_and_die(marker: Path) -> Callable[..., str]:
    def write_file(path: str, text: str) -> str:
        with marker.open("a", encoding="utf-8") as handle:
            handle.write("ran\n")
            handle.flush()
            os.fsync(handle.fileno())
        Path(path).write_text(text, encoding="utf-8")
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    return write_file


def write_once(marker: Path) -> Callable[..., str]:
    def write_file(path: str, text: str) -> str:
        with marker.open("a", encoding="utf-8") as handle:
            handle.write("ran\n")
        Path(path).write_text(text, encoding="utf-8")
        return f"wrote {len(text)} chars to {path}"

    return write_file


def marker_count(files: CrashFiles) -> int:
    if not files.marker.exists():
        return 0
    return files.marker.read_text(encoding="utf-8").count("ran\n")


def crash_child(files: CrashFiles) -> NoReturn:
    """Runs in the forked child: reads, then a write call that SIGKILLs its own process."""
    try:
        store = cvm.Store.open(files.db)
        sess = store.session(SESSION, project=PROJECT)
        sess.tool_call("read_file", {"path": str(files.notes)}, read_text)
        sess.tool_call("grep", {"pattern": "TODO"}, lambda pattern: "notes.txt:1: TODO ship")
        repeat = sess.tool_call("read_file", {"path": str(files.notes)}, read_text)
        assert repeat.source in ("resolved", "resident")
        sess.end_turn()
        sess.tool_call(
            "write_file",
            {"path": str(files.notes), "text": "v2: shipped"},
            write_and_die(files.marker),
            effect="write",
        )
        files.error.write_text("the write call returned instead of dying", encoding="utf-8")
    except BaseException:
        files.error.write_text(traceback.format_exc(), encoding="utf-8")
    finally:
        os._exit(3)


def crash_during_write(tmp_path: Path) -> CrashFiles:
    """Prepare a store, fork a child that dies inside a write call, reap it."""
    files = CrashFiles(
        db=tmp_path / "crash.db",
        marker=tmp_path / "marker.txt",
        notes=tmp_path / "notes.txt",
        error=tmp_path / "child-error.txt",
    )
    files.notes.write_text("v1: draft", encoding="utf-8")
    with cvm.Store.open(files.db) as store:
        put_bootstrap(store)
        store.session(SESSION, project=PROJECT).close()
    # No connection of this process is open across the fork: the store above is closed.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        crash_child(files)
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the crash child hung")
        time.sleep(0.01)
    error = files.error.read_text(encoding="utf-8") if files.error.exists() else ""
    assert os.WIFSIGNALED(status), f"child exited normally: {error}"
    assert os.WTERMSIG(status) == signal.SIGKILL
    assert error == ""
    assert marker_count(files) == 1  # the write ran exactly once before the kill
    assert read_text(str(files.notes)) == "v2: shipped"  # ... and took effect
    return files


def ledger_ids(store: cvm.Store) -> dict[str, int]:
    """call id -> ledger row id, for the provenance check."""
    with store.db.transaction(write=False) as conn:
        rows = conn.exec_driver_sql(
            "SELECT call_id, id FROM tool_calls WHERE session_id = ?", (SESSION,)
        ).all()
    return {row[0]: row[1] for row in rows}


def assert_one_result_per_call(store: cvm.Store, history: list[cvm.ToolCallRecord]) -> None:
    """No orphaned call (without a result) and no duplicated pair."""
    ids = [record.call_id for record in history]
    assert len(ids) == len(set(ids))
    rows = ledger_ids(store)
    assert set(rows) == set(ids)
    results = []
    for record in history:
        assert record.state in ("finished", "failed", "interrupted"), record
        assert record.result_key is not None and record.result_version is not None, record
        results.append((record.result_key, record.result_version))
        page = store.page(
            record.result_key, project=PROJECT, session=SESSION, version=record.result_version
        )
        assert page.type is cvm.PageType.EVIDENCE
        assert page.provenance == {"tool_call": rows[record.call_id]}
    assert len(results) == len(set(results))  # no result shared by two calls


skip_without_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@skip_without_fork
@pytest.mark.parametrize("via", ["open", "recover"])
def test_crash_inside_a_write_call_is_interrupted_not_rerun(tmp_path: Path, via: str) -> None:
    files = crash_during_write(tmp_path)
    if via == "recover":
        store = cvm.Store.open(files.db, recover=False)
        report = store.recover()
        assert report.interrupted == [(SESSION, "t1.1")]
        assert (report.quarantined, report.reapplied, report.recovered) == ([], [], {})
        assert report.skipped_live_sessions == []
    else:
        store = cvm.Store.open(files.db)  # open recovers
    try:
        again = store.recover()
        assert again.changed is False and again.interrupted == []
        sess = store.session(SESSION, project=PROJECT)
        history = sess.tool_history()
        assert [(r.call_id, r.name, r.effect, r.state) for r in history] == [
            ("t0.1", "read_file", "read", "finished"),
            ("t0.2", "grep", "read", "finished"),
            ("t1.1", "write_file", "write", "interrupted"),
        ]
        assert_one_result_per_call(store, history)
        write = history[-1]
        page = store.page(
            write.result_key or "", project=PROJECT, session=SESSION, version=write.result_version
        )
        assert page.content.startswith("interrupted: write call t1.1 (write_file) started at ")
        assert page.content.endswith("and never finished; it was not re-run")
        assert marker_count(files) == 1  # recovery did not run it

        # The same write again is refused, and not run, until the caller confirms.
        args = {"path": str(files.notes), "text": "v2: shipped"}
        with pytest.raises(cvm.InterruptedToolCall, match=r"t1\.1"):
            sess.tool_call("write_file", args, write_once(files.marker), effect="write")
        assert marker_count(files) == 1
        assert sess.tool_history() == history
        confirmed = sess.tool_call(
            "write_file", args, write_once(files.marker), effect="write", fresh=True
        )
        assert confirmed.source == "executed" and confirmed.call_id == "t1.2"
        assert (confirmed.key, confirmed.version) == (write.result_key, 2)
        assert marker_count(files) == 2  # exactly once more

        history = sess.tool_history()
        assert [(r.call_id, r.state) for r in history] == [
            ("t0.1", "finished"),
            ("t0.2", "finished"),
            ("t1.1", "interrupted"),
            ("t1.2", "finished"),
        ]
        assert_one_result_per_call(store, history)
        # A read from before the crash that names no file can depend on the one just written:
        # it runs again (serving "TODO ship" after notes.txt became "v2: shipped" is stale).
        repeat = sess.tool_call("grep", {"pattern": "TODO"}, lambda pattern: "(no match)")
        assert repeat.source == "executed" and repeat.content == "(no match)"
        sess.close()

        assert store.recover().changed is False
        assert store.check().ok, store.check().findings
    finally:
        store.close()
    with cvm.Store.open(files.db, recover=False) as reopened:
        assert reopened.recover().changed is False
        assert reopened.check().ok
        resumed = reopened.session(SESSION, project=PROJECT)
        assert [r.state for r in resumed.tool_history()] == [
            "finished",
            "finished",
            "interrupted",
            "finished",
            "finished",  # the grep, run again after the write
        ]
        assert_no_faults(reopened, SESSION)


@skip_without_fork
def test_crash_interrupted_write_invalidates_cached_reads_of_its_resource(
    tmp_path: Path,
) -> None:
    """An interrupted write may have taken effect (here it did): a read of the same resource
    afterwards must run again, not serve the result cached before the write (DESIGN 1.5,
    "correctness before dedup")."""
    files = crash_during_write(tmp_path)
    with cvm.Store.open(files.db) as store:
        sess = store.session(SESSION, project=PROJECT)
        result = sess.tool_call("read_file", {"path": str(files.notes)}, read_text)
        assert result.content == "v2: shipped", f"stale read served ({result.source})"
        assert result.source == "executed"
