"""gc of old page versions (what a reference is, dry runs, atomicity) and check --fix repairs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import clawvm_store as cvm
from clawvm_store import schema
from clawvm_store.maintenance import GcReport, VersionRef, check_fix, gc

T = cvm.PageType
F = cvm.Fidelity


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[cvm.Store]:
    with cvm.Store.open(db_path) as opened:
        yield opened


def raw(store: cvm.Store, sql: str, params: tuple[Any, ...] = ()) -> int:
    with store.db.transaction() as conn:
        return int(conn.exec_driver_sql(sql, params).rowcount)


def rows(store: cvm.Store, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with store.db.transaction(write=False) as conn:
        return [tuple(row) for row in conn.exec_driver_sql(sql, params).all()]


def dump(store: cvm.Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (and of the recall index), in a stable order."""
    names = [table.name for table in schema.metadata.sorted_tables] + [schema.FTS_TABLE]
    return {name: sorted(rows(store, f"SELECT * FROM {name}"), key=repr) for name in names}


def put_versions(
    store: cvm.Store, key: str, count: int, *, project: str = "default", **extra: Any
) -> None:
    head = store.pages(project=project, include_deleted=True)
    version = next((p.version for p in head if p.key == key), 0)
    for _ in range(count):
        version += 1
        store.put(
            key,
            type=T.EVIDENCE,
            content=f"{key} observation number {version}: the cache was warm.",
            provenance=extra.get("provenance", {"uri": f"file:///{key}"}),
            expected_version=version - 1 or None,
            project=project,
        )


def versions(store: cvm.Store, key: str, **where: Any) -> list[int]:
    return [v.version for v in store.history(key, **where)]


def refs(report: GcReport) -> list[tuple[str, int]]:
    return [(ref.key, ref.version) for ref in report.removed]


# -- gc: validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2", None])
def test_gc_refuses_keep_versions_below_one(store: cvm.Store, bad: Any) -> None:
    put_versions(store, "notes", 3)
    before = dump(store)
    with pytest.raises(cvm.InvalidInput):
        gc(store, keep_versions=bad, dry_run=False)
    assert dump(store) == before


# -- gc: the reference rule ----------------------------------------------------------------------


def build_referenced(store: cvm.Store) -> dict[str, int]:
    """notes@1..9, with versions 1, 2, 3, 5 and 6 referred to from elsewhere; returns lsns."""
    put_versions(store, "notes", 3)
    with store.session("s1") as sess:
        sess.assemble(10_000)  # the assembly record holds notes@3
    put_versions(store, "notes", 6)  # up to notes@9
    assert versions(store, "notes") == list(range(1, 10))
    store.put(
        "derived", type=T.EVIDENCE, content="derived from notes", provenance={"page": "notes@2"}
    )
    store.put(
        "summary",
        type=T.EVIDENCE,
        content="see [ptr notes@5 evidence 12tok: notes observation] for the warm cache",
        provenance={"uri": "file:///summary"},
    )
    # A tool call whose result is notes@6 (the ledger row, as the mediator writes it).
    raw(
        store,
        "INSERT INTO tool_calls (session_id, project, turn, call_id, name, args, signature, "
        "effect, resources, state, result_key, result_version, started_at, finished_at) "
        "VALUES ('s1', 'default', 0, 't0.9', 'read_notes', '{}', 'sig', 'read', '[]', "
        "'finished', 'notes', 6, 'now', 'now')",
    )
    # A staged (not yet validated) update whose provenance names notes@1.
    sess2 = store.session("s2")
    staged = sess2.stage(
        "pending",
        type=T.EVIDENCE,
        content="pending evidence",
        provenance={"page": "notes@1"},
    )
    return {"staged": staged.lsn}


def test_gc_dry_run_reports_and_changes_nothing(store: cvm.Store) -> None:
    build_referenced(store)
    before = dump(store)
    report = gc(store, keep_versions=2)
    assert report.dry_run and not report.changed
    assert refs(report) == [("notes", 4), ("notes", 7)]
    assert report.versions_removed == 2
    assert report.representations_removed == 8  # evidence: four fidelities per version
    assert report.pages == 3 and report.versions == 11
    assert dump(store) == before
    assert versions(store, "notes") == list(range(1, 10))


def test_gc_dry_run_leaves_the_file_byte_for_byte(db_path: Path) -> None:
    with cvm.Store.open(db_path) as store:
        put_versions(store, "notes", 5)
        store.put("other", type=T.EVIDENCE, content="x y z", provenance={"page": "notes@2"})
    before = db_path.read_bytes()
    with cvm.Store.open(db_path) as store:
        report = gc(store, keep_versions=1)
        assert refs(report) == [("notes", 1), ("notes", 3), ("notes", 4)]
    assert db_path.read_bytes() == before


def test_gc_removes_exactly_the_unreferenced_versions(store: cvm.Store) -> None:
    lsns = build_referenced(store)
    journal_before = rows(store, "SELECT * FROM journal ORDER BY lsn")
    report = gc(store, keep_versions=2, dry_run=False)
    assert report.changed
    assert refs(report) == [("notes", 4), ("notes", 7)]
    assert report.representations_removed == 8
    kept = {ref.version.version: ref.reasons for ref in report.kept_referenced}
    assert sorted(kept) == [1, 2, 3, 5, 6]
    assert kept[1] == (f"provenance of journal lsn {lsns['staged']}",)
    assert any(reason.startswith("provenance of derived") for reason in kept[2])
    assert all(ref.version.key == "notes" for ref in report.kept_referenced)
    assert len(kept[3]) == 1 and kept[3][0].startswith("assembly ")
    # The summary's text names notes@5. The journal entry that wrote it no longer does: an
    # applied entry keeps its content as a hash (the version holds the text), revision 0006.
    assert "pointer in summary@1 full" in kept[5]
    assert not any(reason.startswith("pointer in journal lsn ") for reason in kept[5])
    assert kept[6] == ("result of tool call s1/t0.9",)

    assert versions(store, "notes") == [1, 2, 3, 5, 6, 8, 9]
    for gone in (4, 7):
        with pytest.raises(cvm.NotFound):
            store.page("notes", version=gone)
    assert rows(
        store,
        "SELECT COUNT(*) FROM representations r JOIN pages p ON p.id = r.page_id "
        "WHERE p.key = 'notes' AND r.version IN (4, 7)",
    ) == [(0,)]
    assert store.page("notes", version=5).content == (
        "notes observation number 5: the cache was warm."
    )
    assert store.page("notes").version == 9
    # The journal, the write history, is untouched.
    assert rows(store, "SELECT * FROM journal ORDER BY lsn") == journal_before
    check = store.check()
    assert check.ok, check.findings
    # A second run finds nothing more to do.
    again = gc(store, keep_versions=2, dry_run=False)
    assert again.removed == [] and not again.changed


def test_gc_always_keeps_the_head_even_a_tombstone(store: cvm.Store) -> None:
    put_versions(store, "notes", 3)
    store.put("notes", type=T.EVIDENCE, content=None, op="delete", expected_version=3)
    put_versions(store, "single", 1)
    report = gc(store, keep_versions=1, dry_run=False)
    assert refs(report) == [("notes", 1), ("notes", 2), ("notes", 3)]
    assert versions(store, "notes") == [4]
    assert store.history("notes")[0].deleted
    assert versions(store, "single") == [1]
    assert store.check().ok


def test_gc_keeps_what_an_applied_journal_entry_names(store: cvm.Store) -> None:
    put_versions(store, "x", 3)
    put_versions(store, "y", 1, provenance={"page": "x@1"})
    store.put(
        "y",
        type=T.EVIDENCE,
        content="y observation number 2",
        provenance={"page": "x@2"},
        expected_version=1,
    )
    # y@1 goes; x@1 stays: the journal entry that wrote y@1 still names it.
    y1_lsn = rows(store, "SELECT lsn FROM journal WHERE key = 'y' AND version = 1")[0][0]
    report = gc(store, keep_versions=1, dry_run=False)
    assert refs(report) == [("y", 1)]
    kept = {str(k.version): k.reasons for k in report.kept_referenced}
    assert kept["default:x@1"] == (f"provenance of journal lsn {y1_lsn}",)
    assert versions(store, "x") == [1, 2, 3]
    assert store.check().ok


def test_gc_follows_version_references_only_from_kept_versions(store: cvm.Store) -> None:
    put_versions(store, "x", 3)
    put_versions(store, "y", 1, provenance={"page": "x@1"})
    store.put(
        "y",
        type=T.EVIDENCE,
        content="y observation number 2",
        provenance={"page": "x@2"},
        expected_version=1,
    )
    # Without the journal rows (as an imported store may be), only versions refer to x.
    raw(store, "DELETE FROM journal WHERE key IN ('x', 'y')")
    # y@1 is old and unreferenced: it goes, and so does x@1, which only y@1 named.
    report = gc(store, keep_versions=1)
    assert refs(report) == [("x", 1), ("y", 1)]
    assert [str(k.version) for k in report.kept_referenced] == ["default:x@2"]
    # Once an assembly record holds y@1, y@1 stays and so does x@1 through it.
    y_id = rows(store, "SELECT id FROM pages WHERE key = 'y'")[0][0]
    raw(
        store,
        "INSERT INTO assemblies (session_id, project, turn, budget, effective_budget, "
        "fixed_tokens, tokens, feasible, text_sha256, at) "
        "VALUES ('s9', 'default', 0, 100, 100, 0, 10, 1, 'h', 'now')",
    )
    raw(
        store,
        "INSERT INTO assembly_items (assembly_id, page_id, key, version, fidelity, tokens, "
        "reason, change, sort_section, sort_lsn) VALUES ((SELECT MAX(id) FROM assemblies), ?, "
        "'y', 1, 'full', 10, 'demand', 'entered', 4, 0)",
        (y_id,),
    )
    report = gc(store, keep_versions=1, dry_run=False)
    assert report.removed == []
    kept = {str(k.version): k.reasons for k in report.kept_referenced}
    assert kept["default:x@1"] == ("provenance of y@1",)
    assert kept["default:y@1"][0].startswith("assembly ")
    assert versions(store, "x") == [1, 2, 3]


def test_gc_keeps_every_result_a_tool_call_names(store: cvm.Store) -> None:
    with store.session("s1") as sess:
        results = [
            sess.tool_call("lookup", {"q": "cache"}, lambda q: f"{q} hit", fresh=True)
            for _ in range(3)
        ]
    key = results[0].key
    assert versions(store, key, session="s1") == [1, 2, 3]
    report = gc(store, keep_versions=1, dry_run=False)
    assert report.removed == []
    assert [k.version.version for k in report.kept_referenced] == [1, 2]
    assert versions(store, key, session="s1") == [1, 2, 3]


def test_gc_pointer_in_a_pending_journal_payload_and_in_tool_arguments(store: cvm.Store) -> None:
    put_versions(store, "notes", 4)
    with store.session("s1") as sess:
        sess.tool_call("open", {"handle": "[ptr notes@1 evidence 9tok]"}, lambda handle: "ok")
        sess.stage("draft", type=T.PLAN, content="Goal: read [ptr notes@2 evidence 9tok]\n")
        report = gc(store, keep_versions=1)
    assert refs(report) == [("notes", 3)]
    kept = {k.version.version: k.reasons for k in report.kept_referenced}
    assert kept[1][0].startswith("pointer in tool call s1/")
    assert kept[2][0].startswith("pointer in journal lsn ")


def test_gc_limited_to_a_project_and_reporting_progress(store: cvm.Store) -> None:
    put_versions(store, "notes", 3, project="p1")
    put_versions(store, "notes", 3, project="p2")
    put_versions(store, "more", 2, project="p1")
    calls: list[tuple[int, int]] = []
    report = gc(
        store,
        keep_versions=1,
        dry_run=False,
        project="p1",
        progress=lambda done, total: calls.append((done, total)),
    )
    assert report.removed == [
        VersionRef("p1", None, "more", 1),
        VersionRef("p1", None, "notes", 1),
        VersionRef("p1", None, "notes", 2),
    ]
    assert calls == [(0, 2), (1, 2), (2, 2)]
    assert versions(store, "notes", project="p1") == [3]
    assert versions(store, "notes", project="p2") == [1, 2, 3]
    assert store.check().ok


def test_gc_is_all_or_nothing(store: cvm.Store) -> None:
    put_versions(store, "a", 3)
    put_versions(store, "b", 3)
    before = dump(store)

    def fail_after_first(done: int, total: int) -> None:
        if done == 1:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        gc(store, keep_versions=1, dry_run=False, progress=fail_after_first)
    assert dump(store) == before


# -- check --fix: what it repairs ----------------------------------------------------------------


PLAN = "Goal: ship the parser\n- [x] write it\n- [ ] test it\n"


def seed(store: cvm.Store) -> None:
    store.put("plan", type=T.PLAN, content=PLAN, project="default")
    store.put(
        "notes",
        type=T.PREFERENCE,
        content="Prefer short answers. " * 30,
        provenance={"uri": "file:///prefs"},
    )
    store.put(
        "notes",
        type=T.PREFERENCE,
        content="Prefer short answers, with code first. " * 30,
        provenance={"uri": "file:///prefs"},
        expected_version=1,
    )


def codes(report: cvm.CheckReport) -> list[str]:
    return sorted(finding.code for finding in report.findings)


def test_check_fix_on_a_clean_store_does_nothing(store: cvm.Store) -> None:
    seed(store)
    before = dump(store)
    report = check_fix(store)
    assert report.ok and not report.changed
    assert report.repairs == [] and report.refused == [] and report.unrepaired == []
    assert dump(store) == before


def test_check_fix_rewrites_wrong_token_counts(store: cvm.Store) -> None:
    seed(store)
    expected = rows(store, "SELECT page_id, version, fidelity, tokens FROM representations")
    raw(store, "UPDATE representations SET tokens = tokens + 7 WHERE fidelity = 'compressed'")
    raw(store, "UPDATE representations SET tokens = 0 WHERE fidelity = 'structured'")
    assert "token_count" in codes(store.check())
    report = check_fix(store)
    assert report.ok, report.after.findings
    assert {r.code for r in report.repairs} == {"token_count"}
    assert sorted(r.target for r in report.repairs) == [
        "notes@1 compressed",
        "notes@1 structured",
        "notes@2 compressed",
        "notes@2 structured",
        "plan@1 structured",
    ]
    assert rows(store, "SELECT page_id, version, fidelity, tokens FROM representations") == (
        expected
    )


def test_check_fix_rebuilds_missing_fidelities_from_verified_full_text(store: cvm.Store) -> None:
    seed(store)
    query = "SELECT * FROM representations ORDER BY page_id, version, fidelity"
    expected = rows(store, query)
    raw(store, "DELETE FROM representations WHERE fidelity IN ('structured', 'pointer')")
    raw(
        store,
        "DELETE FROM representations WHERE fidelity = 'compressed' AND version = 1 "
        "AND page_id = (SELECT id FROM pages WHERE key = 'notes')",
    )
    assert codes(store.check()) == ["fidelity_missing"] * 3
    report = check_fix(store)
    assert report.ok, report.after.findings
    assert sorted(r.target for r in report.repairs) == [
        "notes@1 compressed, structured, pointer",
        "notes@2 structured, pointer",
        "plan@1 structured, pointer",
    ]
    assert rows(store, query) == expected  # the very same texts, counts and hashes
    assert store.page("notes", fidelity=F.POINTER, version=1).content.startswith("[ptr notes@1 ")


def test_check_fix_rewrites_a_head_row_that_disagrees_with_its_version(store: cvm.Store) -> None:
    seed(store)
    expected = rows(store, "SELECT * FROM pages ORDER BY id")
    raw(store, "UPDATE pages SET pin = 'hard', priority = 5 WHERE key = 'notes'")
    raw(store, "UPDATE pages SET provenance = '{\"uri\":\"file:///elsewhere\"}' WHERE key = 'plan'")
    assert codes(store.check()) == ["head", "head"]
    report = check_fix(store)
    assert report.ok, report.after.findings
    assert [(r.code, r.target) for r in report.repairs] == [
        ("head", "page 'plan'"),
        ("head", "page 'notes'"),
    ]
    after = rows(store, "SELECT * FROM pages ORDER BY id")
    names = [c.name for c in schema.pages.columns]
    moved = names.index("updated_at")
    # Every column is as written, except updated_at, which is the version's commit time.
    assert [r[:moved] + r[moved + 1 :] for r in after] == [
        r[:moved] + r[moved + 1 :] for r in expected
    ]
    assert store.page("notes").pin is cvm.Pin.NONE


def test_check_fix_moves_a_lagging_head_to_its_verified_newest_version(store: cvm.Store) -> None:
    seed(store)
    raw(store, "UPDATE pages SET version = 1 WHERE key = 'notes'")
    assert codes(store.check()) == ["head"]
    report = check_fix(store)
    assert report.ok, report.after.findings
    assert [r.action for r in report.repairs] == ["head moved from version 1 to 2"]
    assert store.page("notes").version == 2
    assert store.page("notes").content.startswith("Prefer short answers, with code first.")


def test_check_fix_applies_journal_entries_left_committed(store: cvm.Store) -> None:
    seed(store)
    with store.session("s1") as sess:
        staged = sess.stage("todo", type=T.PLAN, content="Goal: recover\n- [ ] this\n")
        # As an import (or a crash of an old version) leaves it: committed, never applied.
        raw(
            store,
            "UPDATE journal SET state = 'committed', version = 1 WHERE lsn = ?",
            (staged.lsn,),
        )
        # And one whose version is already in place.
        last = rows(store, "SELECT MAX(lsn) FROM journal WHERE state = 'applied'")[0][0]
        raw(store, "UPDATE journal SET state = 'committed' WHERE lsn = ?", (last,))
        assert codes(store.check()) == ["journal_unapplied"] * 2
        report = check_fix(store)
        assert report.ok, report.after.findings
        assert report.recovery is not None and report.recovery.reapplied == [staged.lsn]
        assert [r.action for r in report.repairs] == [
            "marked applied by recovery (its version was already in place)",
            "re-applied by recovery",
        ]
        assert sess.page("todo").content == "Goal: recover\n- [ ] this\n"


# -- check --fix: what it refuses ----------------------------------------------------------------


def test_check_fix_refuses_edited_content(store: cvm.Store) -> None:
    seed(store)
    raw(
        store,
        "UPDATE representations SET content = 'Prefer long answers.' WHERE fidelity = 'full' "
        "AND version = 2 AND page_id = (SELECT id FROM pages WHERE key = 'notes')",
    )
    found = codes(store.check())
    assert "content_hash" in found and "token_count" in found
    before = dump(store)
    report = check_fix(store)
    assert not report.ok and report.repairs == []
    assert dump(store) == before
    assert codes(report.after) == found
    reasons = dict((f.code, why) for f, why in report.unrepaired)
    assert "rehashing would only hide the damage" in reasons["content_hash"]


def test_check_fix_does_not_rebuild_from_a_damaged_full_text(store: cvm.Store) -> None:
    seed(store)
    raw(store, "DELETE FROM representations WHERE fidelity = 'structured'")
    raw(
        store,
        "UPDATE representations SET content = content || ' (edited)', sha256 = NULL "
        "WHERE fidelity = 'full' AND page_id = (SELECT id FROM pages WHERE key = 'plan')",
    )
    before = dump(store)
    report = check_fix(store)
    repaired = sorted(r.target for r in report.repairs)
    assert repaired == ["notes@1 structured", "notes@2 structured"]
    assert [(r.code, r.target) for r in report.refused] == [
        ("fidelity_missing", "plan@1 structured")
    ]
    assert "does not verify" in report.refused[0].reason
    assert codes(report.after) == ["fidelity_missing"]
    # The plan's rows are exactly as they were; only the notes' structured rows were added.
    assert [r for r in dump(store)["representations"] if r[2] != "structured"] == [
        r for r in before["representations"] if r[2] != "structured"
    ]


def test_check_fix_refuses_a_damaged_version_row_and_a_missing_head(store: cvm.Store) -> None:
    seed(store)
    raw(
        store,
        "UPDATE page_versions SET priority = 9 WHERE version = 2 "
        "AND page_id = (SELECT id FROM pages WHERE key = 'notes')",
    )
    raw(store, "UPDATE pages SET version = 7 WHERE key = 'plan'")
    found = codes(store.check())
    assert found == ["head", "head", "row_hash"]
    before = dump(store)
    report = check_fix(store)
    assert report.repairs == [] and dump(store) == before
    assert sorted((r.code, r.target) for r in report.refused) == [
        ("head", "page 'notes'"),
        ("head", "page 'plan'"),
    ]
    assert codes(report.after) == found
