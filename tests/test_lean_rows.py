"""Lean rows (revision 0011): journal payloads leave out null members, and the fold of a chained
head is kept once, on the page, not on every version.

Covers: rows written now carry no null members and still verify; a store written by revision
0010 converts in one transaction (payloads re-sealed, the head's fold moved, version rows
re-sealed without it) and reads, appends, retries and recovers exactly as a store that never
migrated; a row whose checksum did not verify is left byte-for-byte as it was; the downgrade
restores revision 0010's rows and a second upgrade gives the same store.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import run_alembic

import clawvm_store as cvm
from clawvm_store.pages import POLICIES, PageType


def write_history(store: cvm.Store) -> None:
    """Chains of appends and merges, a set, a rejected update and one left staged."""
    sess = store.session("s", project="p")
    sess.stage("conversation/c", type="conversation", content="user: hello")
    sess.stage("plan/main", type="plan", content="Goal: ship it\n- [ ] step one")
    sess.end_turn()
    for n in range(1, 4):
        sess.stage("conversation/c", content=f"assistant: reply {n}", op="append")
        sess.stage(
            "plan/main",
            content=f"- [ ] step {n + 1}",
            op="merge",
            structured={},
            idempotency_key=f"plan-{n}",
        )
        sess.stage(
            f"evidence/e{n}",
            type="evidence",
            content=f"output {n}\n" * 3,
            provenance={"uri": f"file:///out/{n}"},
        )
        sess.end_turn()
    # A set over an existing page without its version: rejected, and kept with its content.
    sess.stage("evidence/e1", type="evidence", content="overwritten", provenance={"uri": "x:y"})
    sess.end_turn()
    sess.stage("conversation/c", content="user: still staged", op="append")


def readback(store: cvm.Store) -> dict[tuple[str, int, str], tuple[str, int]]:
    """Every version of every page at every rung of its ladder: (text, tokens)."""
    pages = {}
    for key in ("conversation/c", "plan/main", "evidence/e1", "evidence/e2", "evidence/e3"):
        kind = PageType(key.split("/")[0])
        for page in store.history(key, project="p", session="s"):
            for fidelity in POLICIES[kind].ladder:
                got = store.page(
                    key, project="p", session="s", version=page.version, fidelity=fidelity
                )
                pages[(key, page.version, fidelity.value)] = (got.content, got.tokens)
    return pages


def journal_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as raw:
        return raw.execute(
            "SELECT lsn, state, reason, payload, checksum FROM journal ORDER BY lsn"
        ).fetchall()


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as raw:
        return {row[1] for row in raw.execute(f"PRAGMA table_info({table})")}


def test_rows_written_now_leave_out_null_members(tmp_path: Path) -> None:
    with cvm.Store.open(tmp_path / "a.db") as store:
        write_history(store)
        assert store.check().ok
    rows = journal_rows(tmp_path / "a.db")
    assert len(rows) == 13
    assert [json.loads(payload) for _, _, _, payload, _ in rows][:2] == [
        {"content_sha256": cvm_sha("user: hello")},
        {"content_sha256": cvm_sha("Goal: ship it\n- [ ] step one")},
    ]
    assert not any("null" in payload for _, _, _, payload, _ in rows)
    # The rejected entry and the staged one keep their content; applied ones keep its hash.
    states = {lsn: (state, json.loads(payload)) for lsn, state, _, payload, _ in rows}
    assert states[12] == (
        "rejected",
        {"content_sha256": cvm_sha("overwritten"), "provenance": {"uri": "x:y"}},
    )
    assert states[13] == ("staged", {"content_sha256": cvm_sha("user: still staged")})
    # Their texts wait in journal_content; an applied entry's is in the version it made.
    with sqlite3.connect(tmp_path / "a.db") as raw:
        kept = raw.execute("SELECT lsn, content FROM journal_content ORDER BY lsn").fetchall()
    assert kept == [(12, "overwritten"), (13, "user: still staged")]
    assert states[4][1] == {
        "content_sha256": cvm_sha("- [ ] step 2"),
        "structured": {},
    }
    with sqlite3.connect(tmp_path / "a.db") as raw:
        folds = dict(raw.execute("SELECT key, fold IS NOT NULL FROM pages").fetchall())
    assert folds == {
        "conversation/c": 1,
        "plan/main": 1,
        "evidence/e1": 0,
        "evidence/e2": 0,
        "evidence/e3": 0,
    }
    assert "fold" not in columns(tmp_path / "a.db", "page_versions")


def current_form(payload: dict[str, Any]) -> dict[str, Any]:
    """A revision 0010 payload as the head writes it: no null members, the content hashed."""
    lean = {k: v for k, v in payload.items() if v is not None}
    if isinstance(lean.get("content"), str):
        lean["content_sha256"] = cvm_sha(lean.pop("content"))
    return lean


def cvm_sha(text: str) -> str:
    from clawvm_store.representations import text_sha256

    return text_sha256(text)


def test_revision_0011_converts_a_store_written_by_0010(tmp_path: Path) -> None:
    path, control = tmp_path / "old.db", tmp_path / "control.db"
    for target in (path, control):
        with cvm.Store.open(target) as store:
            write_history(store)
    with cvm.Store.open(control) as store:
        expected = readback(store)
    run_alembic(path, "downgrade", "0010_eviction_winner")
    assert "fold" in columns(path, "page_versions")
    assert "fold" not in columns(path, "pages")
    old_rows = journal_rows(path)
    # Revision 0010's form: every member present, null when not given.
    assert all('"pin":null' in payload for _, _, _, payload, _ in old_rows)
    with sqlite3.connect(path) as raw:
        head_folds = raw.execute(
            "SELECT p.key, v.fold FROM pages p JOIN page_versions v ON v.page_id = p.id "
            "AND v.version = p.version WHERE v.fold IS NOT NULL ORDER BY p.key"
        ).fetchall()
        assert [key for key, _ in head_folds] == ["conversation/c", "plan/main"]
        # Damage one row: the migration must leave it exactly as it found it.
        raw.execute("UPDATE journal SET checksum = 'bad' || substr(checksum, 4) WHERE lsn = 5")
    damaged = journal_rows(path)[4]

    with cvm.Store.open(path) as store:
        report = store.check()
        assert [(f.code, f.message) for f in report.findings] == [
            ("journal_checksum", "journal lsn 5: checksum mismatch")
        ], report.findings
        assert readback(store) == expected
    rows = journal_rows(path)
    assert rows[4] == damaged
    assert not any("null" in payload for lsn, _, _, payload, _ in rows if lsn != 5)
    # Each row now is what a store that never migrated wrote, the damaged one aside.
    assert [row for row in rows if row[0] != 5] == [
        row for row in journal_rows(control) if row[0] != 5
    ]
    assert [json.loads(row[3]) for row in rows if row[0] != 5] == [
        current_form(json.loads(row[3]))
        for row in old_rows
        if row[0] not in (5, 13)  # 13 was staged, and recovery applied it on open
    ] + [{"content_sha256": cvm_sha("user: still staged")}]
    with sqlite3.connect(path) as raw:
        moved = raw.execute(
            "SELECT key, fold FROM pages WHERE fold IS NOT NULL ORDER BY key"
        ).fetchall()
    # The plan's head is the one 0010 left (its fold moved as it was); the conversation's
    # staged append was applied on open, building on the moved fold, as the control's was.
    assert moved[1] == head_folds[1]
    with sqlite3.connect(control) as raw:
        (control_fold,) = raw.execute(
            "SELECT fold FROM pages WHERE key = 'conversation/c'"
        ).fetchone()
    unstamped = [
        {k: v for k, v in json.loads(fold).items() if k not in ("started", "ended")}
        for fold in (moved[0][1], control_fold)
    ]
    assert unstamped[0] == unstamped[1]
    assert "fold" not in columns(path, "page_versions")


def test_a_migrated_store_goes_on_as_one_that_never_migrated(tmp_path: Path) -> None:
    path, control = tmp_path / "old.db", tmp_path / "control.db"
    for target in (path, control):
        with cvm.Store.open(target) as store:
            write_history(store)
    run_alembic(path, "downgrade", "0010_eviction_winner")
    results = []
    for target in (path, control):
        with cvm.Store.open(target) as store:
            sess = store.session("s", project="p")
            # A retry of an applied stage is recognized (not refused as another update).
            retried = sess.stage(
                "plan/main",
                content="- [ ] step 2",
                op="merge",
                structured={},
                idempotency_key="plan-1",
            )
            sess.stage("plan/main", content="- [ ] step 5", op="merge", structured={})
            outcome = sess.end_turn()
            plan = {
                fidelity.value: store.page(
                    "plan/main", project="p", session="s", fidelity=fidelity
                ).content
                for fidelity in POLICIES[PageType.PLAN].ladder
            }
            conversation = store.page("conversation/c", project="p", session="s")
            results.append(
                (
                    retried.lsn,
                    len(outcome.committed),
                    outcome.rejected,
                    plan,
                    conversation.content,
                    conversation.tokens,
                )
            )
            assert store.check().ok
    assert results[0] == results[1]
    assert results[0][0] == 4
    assert results[0][4].endswith("assistant: reply 3\nuser: still staged")


def test_downgrade_and_upgrade_again_give_the_same_store(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with cvm.Store.open(path) as store:
        write_history(store)
    with cvm.Store.open(path) as store:  # recovery applies what was left staged
        expected = readback(store)
    rows = journal_rows(path)
    with sqlite3.connect(path) as raw:
        folds = raw.execute("SELECT id, fold FROM pages ORDER BY id").fetchall()
    run_alembic(path, "downgrade", "0010_eviction_winner")
    run_alembic(path, "upgrade", "head")
    assert journal_rows(path) == rows
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT id, fold FROM pages ORDER BY id").fetchall() == folds
    with cvm.Store.open(path) as store:
        assert store.check().ok
        assert readback(store) == expected


# -- journal_content (revision 0012): the content of a pending entry waits beside its row -------


def test_the_journal_stays_dense_over_a_long_session(tmp_path: Path) -> None:
    """Rows never shrink after they are written, so the journal's pages stay full, and the
    content kept aside is only what is pending: its freed pages are reused turn after turn."""
    path = tmp_path / "long.db"
    with cvm.Store.open(path, durability="normal") as store:
        sess = store.session("s", project="p")
        for turn in range(300):
            sess.stage(
                "conversation/c", type="conversation", content=f"user: turn {turn}", op="append"
            )
            sess.stage(
                f"evidence/t{turn}",
                type="evidence",
                content="\n".join(f"line {turn}.{n}: " + "x" * 60 for n in range(16)),
                provenance={"uri": f"file:///t/{turn}"},
            )
            sess.end_turn()
        assert store.check().ok
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stats = {
            name: (size, unused, pages)
            for name, size, unused, pages in raw.execute(
                "SELECT name, SUM(pgsize), SUM(unused), COUNT(*) FROM dbstat "
                "WHERE name IN ('journal', 'journal_content') GROUP BY name"
            )
        }
        assert raw.execute("SELECT COUNT(*) FROM journal_content").fetchone() == (0,)
        free = raw.execute("PRAGMA freelist_count").fetchone()[0]
    journal_size, journal_unused, _ = stats["journal"]
    # Revision 0011 left about 30% of this journal's pages empty (content shrunk out of rows).
    assert journal_unused / journal_size < 0.15, stats
    # 300 turns staged about 330 KB of content; at most a few pages of it are ever in use.
    assert stats["journal_content"][2] <= 2, stats
    assert free <= 8, free


def test_revision_0012_moves_pending_content_aside(tmp_path: Path) -> None:
    path, control = tmp_path / "old.db", tmp_path / "control.db"
    for target in (path, control):
        with cvm.Store.open(target) as store:
            write_history(store)
    run_alembic(path, "downgrade", "0011_lean_rows")
    assert "journal_content" not in tables(path)
    old = {row[0]: row for row in journal_rows(path)}
    # In revision 0011 a pending entry holds its content in its row, an applied one its hash.
    assert json.loads(old[12][3]) == {"content": "overwritten", "provenance": {"uri": "x:y"}}
    assert json.loads(old[13][3]) == {"content": "user: still staged"}
    assert json.loads(old[4][3]) == {"content_sha256": cvm_sha("- [ ] step 2"), "structured": {}}
    with sqlite3.connect(path) as raw:  # damage the rejected row: it must stay as it is
        raw.execute("UPDATE journal SET checksum = 'bad' || substr(checksum, 4) WHERE lsn = 12")
    damaged = journal_rows(path)[11]
    run_alembic(path, "upgrade", "head")
    rows = {row[0]: row for row in journal_rows(path)}
    assert rows[12] == damaged
    assert json.loads(rows[13][3]) == {"content_sha256": cvm_sha("user: still staged")}
    assert rows[4] == old[4]  # applied: already in the new form, untouched
    assert {lsn: row for lsn, row in rows.items() if lsn != 12} == {
        row[0]: row for row in journal_rows(control) if row[0] != 12
    }
    with sqlite3.connect(path) as raw:
        kept = raw.execute("SELECT lsn, content FROM journal_content ORDER BY lsn").fetchall()
    assert kept == [(13, "user: still staged")]
    with cvm.Store.open(path) as store:  # recovery applies 13 from its content kept aside
        assert [(f.code, f.message) for f in store.check().findings] == [
            ("journal_checksum", "journal lsn 12: checksum mismatch")
        ]
        page = store.page("conversation/c", project="p", session="s")
        assert page.content.endswith("assistant: reply 3\nuser: still staged")
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM journal_content").fetchone() == (0,)


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as raw:
        return {
            row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }


# -- partial journal indexes (revision 0013): only what is pending is indexed by state --------


def index_rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as raw:
        return {
            name: raw.execute(
                f"SELECT COUNT(*) FROM journal INDEXED BY {name} WHERE {where}"
            ).fetchone()[0]
            for name, where in (
                ("ix_journal_staged", "state = 'staged'"),
                ("ix_journal_committed", "state = 'committed'"),
                ("ix_journal_event_id", "event_id IS NOT NULL"),
            )
        }


# write_history resolves 12 entries at 5 boundaries and leaves the 13th staged.
HISTORY_INDEX_ROWS = {"ix_journal_staged": 1, "ix_journal_committed": 0, "ix_journal_event_id": 12}


def test_the_state_indexes_hold_only_pending_entries(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with cvm.Store.open(path) as store:
        write_history(store)
    assert index_rows(path) == HISTORY_INDEX_ROWS
    with sqlite3.connect(path) as raw:
        indexes = {
            name: sql
            for name, sql in raw.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'journal'"
            )
        }
    assert sorted(indexes) == [
        "ix_journal_committed",
        "ix_journal_event_id",
        "ix_journal_staged",
        "uq_journal_idempotency",
    ]
    assert indexes["ix_journal_staged"].endswith("WHERE state = 'staged'")


def test_pending_lookups_use_the_partial_indexes(tmp_path: Path) -> None:
    """A planner uses a partial index only for a query that states its condition as written:
    the boundary's, recovery's and the page table's lookups must, or each would scan the
    whole journal, whose size is the agent's history."""
    from clawvm_store import schema as t
    from clawvm_store.journal import COMMITTED, JOURNAL_ROWS, STAGED
    from clawvm_store.store import _STAGED_ROWS

    path = tmp_path / "a.db"
    with cvm.Store.open(path) as store:
        write_history(store)
        queries = {
            "ix_journal_staged": _STAGED_ROWS,
            "ix_journal_committed": JOURNAL_ROWS.where(COMMITTED).order_by(t.journal.c.lsn),
        }
        with store.db.transaction(write=False) as conn:
            for index, query in queries.items():
                sql = str(query.compile(dialect=conn.dialect))
                plan = " | ".join(
                    row[-1]
                    for row in conn.exec_driver_sql(
                        f"EXPLAIN QUERY PLAN {sql}", ("s",) if "?" in sql else ()
                    ).all()
                )
                assert f"USING INDEX {index}" in plan, plan
            staged = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN "
                + str(STAGED.compile(dialect=conn.dialect)).join(
                    ("SELECT lsn FROM journal WHERE ", "")
                )
            ).all()
            assert "ix_journal_staged" in staged[0][-1]


def test_revision_0013_swaps_the_indexes_and_back(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with cvm.Store.open(path) as store:
        write_history(store)
    rows = journal_rows(path)
    run_alembic(path, "downgrade", "0012_journal_content")
    with sqlite3.connect(path) as raw:
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_journal_session_id_state", "ix_journal_state", "ix_journal_event_id"} <= names
    assert "ix_journal_staged" not in names
    run_alembic(path, "upgrade", "head")
    assert index_rows(path) == HISTORY_INDEX_ROWS
    assert journal_rows(path) == rows
    with cvm.Store.open(path) as store:
        assert store.check().ok


# -- representations without a per-row encoding (revision 0014) ---------------------------------


def test_revision_0014_drops_the_per_row_encoding_and_back(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with cvm.Store.open(path) as store:
        write_history(store)
    with cvm.Store.open(path) as store:
        expected = readback(store)
    assert "encoding" not in columns(path, "representations")
    run_alembic(path, "downgrade", "0013_pending_indexes")
    with sqlite3.connect(path) as raw:
        encodings = raw.execute(
            "SELECT encoding, COUNT(*) FROM representations GROUP BY encoding"
        ).fetchall()
        total = raw.execute("SELECT COUNT(*) FROM representations").fetchone()[0]
        views = raw.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'view'").fetchone()
    assert encodings == [("cl100k_base", total)]
    run_alembic(path, "upgrade", "head")
    assert "encoding" not in columns(path, "representations")
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'view'").fetchone() == (
            views
        )
        assert raw.execute("SELECT COUNT(*) FROM page_history").fetchone()[0] > 0
    with cvm.Store.open(path) as store:
        assert store.check().ok
        assert readback(store) == expected


def test_content_a_backend_cannot_store_is_refused_at_stage(backend: str, store: cvm.Store) -> None:
    """PostgreSQL's text cannot hold NUL. The content is written at stage() now (beside its
    row), so the stage is refused with one clear error and the session goes on; before, the
    stage succeeded and every later boundary of the session failed on it."""
    sess = store.session("s", project="p")
    if backend == "postgresql":
        with pytest.raises(cvm.InvalidInput, match="cannot contain NUL"):
            sess.stage("conversation/c", type="conversation", content="a\x00b")
        assert sess.staged() == []
    else:  # SQLite stores any text
        sess.stage("conversation/c", type="conversation", content="a\x00b")
    sess.stage("conversation/d", type="conversation", content="fine")
    result = sess.end_turn()
    assert (len(result.committed), result.rejected) == (1 if backend == "postgresql" else 2, [])
    assert store.page("conversation/d", project="p", session="s").content == "fine"
    if backend == "sqlite":
        assert store.page("conversation/c", project="p", session="s").content == "a\x00b"
    assert store.check().ok
