"""Batched writeback and batched recovery give exactly the state of one entry at a time.

A boundary keeps the heads of the pages it writes in memory and writes every entry's rows
together (journal.WriteBatch); recovery resolves a dead session's staged entries, and re-applies
committed ones, the same way. These tests run the same updates both ways, with a fixed clock, and
compare every row that describes content: pages, page versions (with their seals), every
representation row, and every journal entry's outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import unapply_to_committed

import clawvm_store as cvm
from clawvm_store import schema as t
from clawvm_store.journal import JOURNAL_ROWS, mark_applied, row_to_entry
from clawvm_store.segments import whole_texts

FIXED_NOW = "2025-01-02T03:04:05.000006+00:00"
PROJECT = "proj"


def fixed_clock() -> str:
    return FIXED_NOW


def open_store(path: Path, *, recover: bool = True) -> cvm.Store:
    return cvm.Store.open(path, clock=fixed_clock, recover=recover)


# Each step: (key, stage keyword arguments). Chosen to reach every branch of a batch: new pages
# appended to twice in one boundary, a set over a page written earlier in the same boundary, a
# rejected set followed by an append that must build on the committed head (not the rejected
# text), a fields-only merge onto a chained head written in the same boundary (it reads the whole
# text back: the batch flushes first), a provenance reference to a page created in the same
# boundary (validation reads the pages table: the batch flushes first), a delete and a re-create.
STEPS: list[tuple[str, dict[str, Any]]] = [
    ("conversation/main", {"type": "conversation", "content": "user: hello", "op": "append"}),
    ("conversation/main", {"type": "conversation", "content": "assistant: hi", "op": "append"}),
    ("plan/main", {"type": "plan", "content": "Goal: ship\n- [ ] read", "op": "set"}),
    (
        "plan/main",
        {"type": "plan", "content": "Goal: ship\n- [x] read\n- [ ] fix", "expected_version": 1},
    ),
    ("plan/main", {"type": "plan", "content": "Goal: stale overwrite", "expected_version": 1}),
    ("plan/main", {"type": "plan", "content": "- [ ] test", "op": "append"}),
    (
        "pref/tea",
        {
            "type": "preference",
            "content": "prefers tea",
            "op": "merge",
            "structured": {"statement": "tea", "scope": "project", "provenance": "user"},
        },
    ),
    ("pref/tea", {"type": "preference", "content": "still tea", "op": "append"}),
    ("plan/main", {"op": "merge", "structured": {"goal": "ship"}}),
    (
        "evidence/derived",
        {
            "type": "evidence",
            "content": "the plan says: fix then test",
            "provenance": {"page": "plan/main"},
        },
    ),
    ("evidence/missing", {"type": "evidence", "content": "no provenance at all"}),
    ("rules/tmp", {"type": "constraint", "content": "temporary rule", "pin": "soft"}),
    ("rules/tmp", {"op": "delete", "expected_version": 1}),
    ("rules/tmp", {"type": "constraint", "content": "rule, again", "pin": "soft"}),
    ("conversation/main", {"type": "conversation", "content": "user: bye", "op": "append"}),
]


def content_state(store: cvm.Store) -> dict[str, Any]:
    """Every row that describes content, by page identity (ids are the same on both sides)."""
    with store.db.transaction(write=False) as conn:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in conn.exec_driver_sql(sql).all()]

        texts = {
            fidelity: whole_texts(conn, fidelity)
            for fidelity in ("full", "compressed", "structured", "pointer")
        }
        return {
            "pages": rows(
                "SELECT id, project, session_id, key, type, scope, pin, priority, version, "
                "provenance, deleted, created_at, updated_at, fold FROM pages ORDER BY id"
            ),
            "versions": rows(
                "SELECT page_id, version, type, op, pin, priority, scope, provenance, fields, "
                "content_hash, deleted, lsn, committed_at, row_sha256 "
                "FROM page_versions ORDER BY page_id, version"
            ),
            "representations": rows(
                "SELECT * FROM representations ORDER BY page_id, version, fidelity"
            ),
            "journal": rows(
                "SELECT lsn, key, op, state, reason, detail, version, payload, checksum "
                "FROM journal ORDER BY lsn"
            ),
            "texts": texts,
        }


def run_steps(store: cvm.Store, boundary_after_each: bool) -> list[cvm.WritebackResult]:
    sess = store.session("s-1", project=PROJECT)
    results = []
    for key, kwargs in STEPS:
        sess.stage(key, **kwargs)
        if boundary_after_each:
            results.append(sess.flush())
    if not boundary_after_each:
        results.append(sess.flush())
    return results


def test_one_boundary_equals_a_boundary_per_entry(tmp_path: Path) -> None:
    with open_store(tmp_path / "batched.db") as store:
        [batched] = run_steps(store, boundary_after_each=False)
        batched_state = content_state(store)
        assert store.check().ok
    with open_store(tmp_path / "single.db") as store:
        singles = run_steps(store, boundary_after_each=True)
        single_state = content_state(store)
    assert batched_state == single_state
    lsns = [row[0] for row in batched_state["journal"]]
    # The stale overwrite (step 5) and the evidence without provenance (step 11) are rejected;
    # everything else commits, in staging order, with the versions one entry at a time gives.
    assert batched.rejected == [(lsns[4], "DESTRUCTIVE_OP"), (lsns[10], "PROVENANCE_UNRESOLVED")]
    assert batched.committed == [lsn for i, lsn in enumerate(lsns) if i not in (4, 10)]
    assert batched.versions == {
        lsn: version for single in singles for lsn, version in single.versions.items()
    }
    with open_store(tmp_path / "batched.db") as store:
        plan = store.page("plan/main", project=PROJECT, session="s-1")
        assert plan.version == 4  # the fields-only merge made a version with the same text
        assert plan.content == "Goal: ship\n- [x] read\n- [ ] fix\n- [ ] test"
        conversation = store.page("conversation/main", project=PROJECT, session="s-1")
        assert conversation.content == "user: hello\nassistant: hi\nuser: bye"
        assert conversation.version == 3
        rules = store.page("rules/tmp", project=PROJECT, session="s-1")
        assert (rules.version, rules.content) == (3, "rule, again")


def test_an_append_after_a_rejected_set_builds_on_the_committed_head(tmp_path: Path) -> None:
    with open_store(tmp_path / "a.db") as store:
        sess = store.session("s-1", project=PROJECT)
        sess.stage("plan/p", type="plan", content="Goal: one")
        sess.end_turn()
        sess.stage("plan/p", type="plan", content="Goal: rejected", expected_version=7)
        sess.stage("plan/p", type="plan", content="- [ ] two", op="append")
        result = sess.end_turn()
        assert [reason for _, reason in result.rejected] == ["DESTRUCTIVE_OP"]
        page = store.page("plan/p", project=PROJECT, session="s-1")
        assert (page.version, page.content) == (2, "Goal: one\n- [ ] two")
        # Token counts are exact: equal to counting the whole text afresh.
        assert page.tokens == store.counter.count("Goal: one\n- [ ] two")
        assert store.check().ok


def stage_dead_session(path: Path, entries: int) -> None:
    store = open_store(path)
    sess = store.session("dead", project=PROJECT)
    for i in range(entries):
        if i % 7 == 3:
            # Rejected at recovery: a set over an existing page without its version.
            sess.stage(f"plan/p{i % 5}", type="plan", content=f"Goal: overwrite {i}")
        else:
            sess.stage(f"plan/p{i % 5}", type="plan", content=f"- [ ] step {i}", op="append")
    store.close()  # the owner is gone without a boundary: recovery resolves its entries


def one_entry_at_a_time(path: Path, entries: int) -> None:
    store = open_store(path)
    sess = store.session("dead", project=PROJECT)
    for i in range(entries):
        if i % 7 == 3:
            sess.stage(f"plan/p{i % 5}", type="plan", content=f"Goal: overwrite {i}")
        else:
            sess.stage(f"plan/p{i % 5}", type="plan", content=f"- [ ] step {i}", op="append")
        sess.flush()
    store.close()


def without_events(state: dict[str, Any]) -> dict[str, Any]:
    """The state minus what records *which* boundary did it (event ids, pages' timestamps)."""
    return {name: value for name, value in state.items() if name != "pages"} | {
        "pages": [row[:11] for row in state["pages"]]
    }


@pytest.mark.parametrize("entries", [1, 40])
def test_recovery_in_batches_equals_one_entry_at_a_time(tmp_path: Path, entries: int) -> None:
    stage_dead_session(tmp_path / "recovered.db", entries)
    with open_store(tmp_path / "recovered.db", recover=False) as store:
        report = store.recover()
        resolved = report.recovered["dead"]
        assert len(resolved.committed) + len(resolved.rejected) == entries
        assert [lsn for lsn, _ in resolved.rejected] == [
            i + 1 for i in range(entries) if i % 7 == 3 and i >= 5
        ]
        recovered = content_state(store)
        assert store.check().ok
        assert not store.recover().changed  # idempotent
    one_entry_at_a_time(tmp_path / "single.db", entries)
    with open_store(tmp_path / "single.db") as store:
        single = content_state(store)
    assert without_events(recovered) == without_events(single)


def reset_to_committed(store: cvm.Store) -> None:
    """What a crash between commit and apply leaves: committed entries, nothing materialized."""
    with store.db.transaction() as conn:
        unapply_to_committed(conn)


def reapply_one_at_a_time(store: cvm.Store) -> None:
    """The oracle: each committed entry read, built and applied alone, as recovery once did."""
    with store.db.transaction() as conn:
        rows = conn.execute(
            JOURNAL_ROWS.where(t.journal.c.state == "committed").order_by(t.journal.c.lsn)
        ).all()
        event_id = conn.exec_driver_sql(
            "INSERT INTO lifecycle_events (project, boundary, turn, at) "
            f"VALUES ('{PROJECT}', 'recovery', 0, '{FIXED_NOW}') RETURNING id"
        ).scalar()
        for row in rows:
            entry = row_to_entry(row)
            head = store.journal.head(conn, entry.project, entry.page_session, entry.key)
            assert row.version == (head.version if head else 0) + 1
            reps = store.journal.prepare(entry, head, conn)
            store.journal.apply(conn, entry, head, row.version, reps)
            mark_applied(conn, entry, event_id=int(event_id), version=row.version, at=FIXED_NOW)


@pytest.mark.parametrize("make", [stage_dead_session, one_entry_at_a_time])
def test_reapplying_committed_entries_in_a_batch_equals_one_at_a_time(
    tmp_path: Path, make: Callable[[Path, int], None]
) -> None:
    # Applied entries keep only a hash of their content, so turning them back into committed
    # ones (the benchmark's way to make work for this path) rebuilds pages from what the journal
    # still holds; the point here is that the batch and the one-at-a-time oracle agree exactly.
    states = []
    for name, reapply in (("batch", None), ("single", reapply_one_at_a_time)):
        path = tmp_path / f"{name}.db"
        make(path, 60)
        with open_store(path) as store:
            committed = [row[0] for row in content_state(store)["journal"] if row[3] == "applied"]
            reset_to_committed(store)
            if reapply is None:
                report = store.recover()
                assert report.reapplied == committed
                assert report.quarantined == []
                assert not store.recover().changed
            else:
                reapply(store)
            assert store.check().ok
            states.append(content_state(store))
    batch, single = states
    assert {name: batch[name] for name in ("pages", "versions", "representations", "texts")} == {
        name: single[name] for name in ("pages", "versions", "representations", "texts")
    }
    assert [row[:7] for row in batch["journal"]] == [row[:7] for row in single["journal"]]
