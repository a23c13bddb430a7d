"""The Store's direct-write surface: versions, validation reasons, scope, deletes, check, reopen."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import clawvm_store as cvm

F = cvm.Fidelity
T = cvm.PageType


def journal_rows(store: cvm.Store) -> list[tuple[int, str, str | None]]:
    with store.db.transaction(write=False) as conn:
        rows = conn.exec_driver_sql("SELECT lsn, state, reason FROM journal ORDER BY lsn").all()
    return [(row.lsn, row.state, row.reason) for row in rows]


def raw_write(store: cvm.Store, sql: str, params: tuple[Any, ...] = ()) -> int:
    if store.db.dialect == "postgresql":
        sql = sql.replace("?", "%s")  # the driver's paramstyle
    with store.db.transaction() as conn:
        result = conn.exec_driver_sql(sql, params)
        return int(result.rowcount)


# --- versions ---------------------------------------------------------------------------------

V1 = "Goal: ship v1\n- [ ] write the parser\n"
V2 = "Goal: ship v1\n- [x] write the parser\n- [ ] write the tests\n"
V3 = "Goal: ship v1\n- [x] write the parser\n- [x] write the tests\n- [ ] release\n"


def write_three(store: cvm.Store) -> list[cvm.Page]:
    return [
        store.put("plan/main", type=T.PLAN, content=V1, session="s1"),
        store.put("plan/main", type=T.PLAN, content=V2, session="s1", expected_version=1),
        store.put("plan/main", type=T.PLAN, content=V3, session="s1", expected_version=2),
    ]


def test_versions_are_kept_in_order(store: cvm.Store) -> None:
    pages = write_three(store)
    assert [p.version for p in pages] == [1, 2, 3]
    assert [p.content for p in pages] == [V1, V2, V3]
    history = store.history("plan/main", session="s1")
    assert [v.version for v in history] == [1, 2, 3]
    assert [v.op for v in history] == [cvm.Op.SET] * 3
    assert [v.deleted for v in history] == [False] * 3
    assert [v.type for v in history] == [T.PLAN] * 3
    lsns = [v.lsn for v in history]
    assert lsns == sorted(lsns) and len(set(lsns)) == 3
    assert [v.committed_at for v in history] == sorted(v.committed_at for v in history)
    for version in history:
        assert set(version.tokens) == set(cvm.POLICIES[T.PLAN].ladder)
    for number, content in ((1, V1), (2, V2), (3, V3)):
        page = store.page("plan/main", session="s1", version=number)
        assert page.content == content
        assert page.version == number
    assert store.page("plan/main", session="s1").content == V3
    with pytest.raises(cvm.NotFound):
        store.page("plan/main", session="s1", version=4)
    assert journal_rows(store) == [(lsn, "applied", None) for lsn in lsns]


@pytest.mark.parametrize("expected", [None, 1, 2, 4])
def test_stale_expected_version_is_a_destructive_write(
    store: cvm.Store, expected: int | None
) -> None:
    write_three(store)
    with pytest.raises(cvm.DestructiveWrite) as caught:
        store.put("plan/main", type=T.PLAN, content="lost", session="s1", expected_version=expected)
    error = caught.value
    assert isinstance(error, cvm.VersionConflict)
    assert isinstance(error, cvm.UpdateRejected)
    assert error.reason == "DESTRUCTIVE_OP"
    rows = journal_rows(store)
    assert rows[-1] == (error.lsn, "rejected", "DESTRUCTIVE_OP")
    assert [state for _, state, _ in rows[:-1]] == ["applied"] * 3
    # The rejected write changed nothing.
    assert store.page("plan/main", session="s1").content == V3
    assert [v.version for v in store.history("plan/main", session="s1")] == [1, 2, 3]


def test_expected_version_for_a_missing_key_is_rejected(store: cvm.Store) -> None:
    with pytest.raises(cvm.DestructiveWrite):
        store.put("plan/new", type=T.PLAN, content=V1, session="s1", expected_version=3)
    page = store.put("plan/new", type=T.PLAN, content=V1, session="s1", expected_version=0)
    assert page.version == 1


# --- scope ------------------------------------------------------------------------------------


def test_session_pages_are_isolated_and_project_pages_shared(store: cvm.Store) -> None:
    mine = store.put("plan/main", type=T.PLAN, content=V1, session="s1")
    assert mine.scope is cvm.Scope.SESSION
    assert mine.session == "s1"
    assert store.page("plan/main", session="s1").content == V1
    with pytest.raises(cvm.NotFound):
        store.page("plan/main", session="s2")
    with pytest.raises(cvm.NotFound):
        store.page("plan/main")
    with pytest.raises(cvm.NotFound):
        store.history("plan/main", session="s2")

    shared = store.put("pref/style", type=T.PREFERENCE, content="Prefers short answers.")
    assert shared.scope is cvm.Scope.PROJECT
    for session in ("s1", "s2", None):
        page = store.page("pref/style", session=session)
        assert page.content == "Prefers short answers."
        assert page.session is None

    # Another project sees neither.
    with pytest.raises(cvm.NotFound):
        store.page("pref/style", project="other", session="s1")
    with pytest.raises(cvm.NotFound):
        store.page("plan/main", project="other", session="s1")


def test_a_sessions_own_page_shadows_the_project_page(store: cvm.Store) -> None:
    store.put("notes/x", type=T.PREFERENCE, content="project wide")
    store.put("notes/x", type=T.PREFERENCE, content="only for s1", session="s1")
    assert store.page("notes/x", session="s1").content == "only for s1"
    assert store.page("notes/x", session="s2").content == "project wide"
    assert store.page("notes/x").content == "project wide"


# --- append and delete ------------------------------------------------------------------------


def test_append_adds_content(store: cvm.Store) -> None:
    store.put("conv/1", type=T.CONVERSATION, content="user: hello", session="s1")
    page = store.put(
        "conv/1", type=T.CONVERSATION, content="assistant: hi", session="s1", op="append"
    )
    assert page.version == 2
    assert page.content == "user: hello\nassistant: hi"
    assert store.page("conv/1", session="s1", version=1).content == "user: hello"
    assert [v.op for v in store.history("conv/1", session="s1")] == [cvm.Op.SET, cvm.Op.APPEND]


def test_delete_leaves_a_tombstone_in_history(store: cvm.Store) -> None:
    write_three(store)
    with pytest.raises(cvm.DestructiveWrite):
        store.put("plan/main", type=T.PLAN, content=None, session="s1", op="delete")
    assert store.page("plan/main", session="s1").version == 3
    # A committed delete must not be reported as a failure (see the report: put() re-reads
    # the deleted head and raises NotFound).
    deleted = store.put(
        "plan/main", type=T.PLAN, content=None, session="s1", op="delete", expected_version=3
    )
    assert deleted.version == 4
    assert deleted.deleted is True


def test_deleted_page_is_not_found_but_history_keeps_it(store: cvm.Store) -> None:
    write_three(store)
    # suppress: the library bug covered by test_delete_leaves_a_tombstone_in_history.
    with contextlib.suppress(cvm.NotFound):
        store.put(
            "plan/main", type=T.PLAN, content=None, session="s1", op="delete", expected_version=3
        )
    assert journal_rows(store)[-1][1:] == ("applied", None)
    with pytest.raises(cvm.NotFound):
        store.page("plan/main", session="s1")
    history = store.history("plan/main", session="s1")
    assert [(v.version, v.op, v.deleted) for v in history] == [
        (1, cvm.Op.SET, False),
        (2, cvm.Op.SET, False),
        (3, cvm.Op.SET, False),
        (4, cvm.Op.DELETE, True),
    ]
    assert history[-1].tokens == {}
    # Old versions stay readable.
    assert store.page("plan/main", session="s1", version=2).content == V2
    # A new set after the tombstone starts from the tombstone's version.
    page = store.put("plan/main", type=T.PLAN, content=V1, session="s1", expected_version=4)
    assert page.version == 5
    assert store.check().ok


def test_deleting_a_hard_pinned_page_is_a_pin_violation(store: cvm.Store) -> None:
    boot = store.put("policy/agents", type=T.BOOTSTRAP, content="Always run the tests.")
    assert boot.pin is cvm.Pin.HARD
    with pytest.raises(cvm.PinViolation) as caught:
        store.put("policy/agents", type=T.BOOTSTRAP, content=None, op="delete", expected_version=1)
    assert caught.value.reason == "PIN_VIOLATION"
    assert journal_rows(store)[-1] == (caught.value.lsn, "rejected", "PIN_VIOLATION")
    assert store.page("policy/agents").content == "Always run the tests."
    assert [v.version for v in store.history("policy/agents")] == [1]


# --- provenance -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "provenance",
    [None, {"page": "missing"}, {"page": "missing@1"}, {"uri": "not a uri"}, {"note": "x"}],
    ids=["none", "missing-page", "missing-page-version", "bad-uri", "no-reference"],
)
def test_unresolved_evidence_provenance_is_rejected(
    store: cvm.Store, provenance: dict[str, Any] | None
) -> None:
    with pytest.raises(cvm.ProvenanceUnresolved) as caught:
        store.put(
            "evidence/e", type=T.EVIDENCE, content="output", session="s1", provenance=provenance
        )
    assert caught.value.reason == "PROVENANCE_UNRESOLVED"
    assert journal_rows(store) == [(caught.value.lsn, "rejected", "PROVENANCE_UNRESOLVED")]
    with pytest.raises(cvm.NotFound):
        store.page("evidence/e", session="s1")


def test_resolvable_evidence_provenance_is_accepted(store: cvm.Store) -> None:
    store.put("notes/src", type=T.PREFERENCE, content="a source page")
    for i, provenance in enumerate(
        [{"uri": "file:///x"}, {"uri": "https://example.com/a"}, {"page": "notes/src"}]
    ):
        page = store.put(
            f"evidence/{i}", type=T.EVIDENCE, content="out", session="s1", provenance=provenance
        )
        assert page.provenance == provenance
    with pytest.raises(cvm.ProvenanceUnresolved):
        store.put(
            "evidence/v9",
            type=T.EVIDENCE,
            content="out",
            session="s1",
            provenance={"page": "notes/src@9"},
        )


# --- check detects tampering ------------------------------------------------------------------


def populate(store: cvm.Store) -> None:
    write_three(store)
    store.put("policy/agents", type=T.BOOTSTRAP, content="Always run the tests.\nNever push.")
    store.put(
        "evidence/log",
        type=T.EVIDENCE,
        content="\n".join(f"line {i}: result {i * i} ok" for i in range(40)),
        session="s1",
        provenance={"uri": "file:///log"},
    )


def page_id(store: cvm.Store, key: str) -> int:
    with store.db.transaction(write=False) as conn:
        return int(
            conn.execute(text("SELECT id FROM pages WHERE key = :key"), {"key": key}).scalar()
        )


def tamper_tokens(store: cvm.Store) -> int:
    return raw_write(
        store,
        "UPDATE representations SET tokens = tokens + 1 "
        "WHERE page_id = ? AND version = 2 AND fidelity = 'full'",
        (page_id(store, "plan/main"),),
    )


def tamper_pointer(store: cvm.Store) -> int:
    return raw_write(
        store,
        "DELETE FROM representations WHERE page_id = ? AND version = 1 AND fidelity = 'pointer'",
        (page_id(store, "evidence/log"),),
    )


def tamper_journal(store: cvm.Store) -> int:
    return raw_write(
        store,
        # An applied entry keeps its content as a hash: give it a pin it was never staged with.
        'UPDATE journal SET payload = \'{"pin":"soft",\' || substr(payload, 2) '
        "WHERE lsn = (SELECT min(lsn) FROM journal)",
    )


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (tamper_tokens, "token_count"),
        (tamper_pointer, "fidelity_missing"),
        (tamper_journal, "journal_checksum"),
    ],
    ids=["tokens", "pointer-row", "journal-payload"],
)
def test_check_detects_tampering(store: cvm.Store, tamper: Any, code: str) -> None:
    populate(store)
    clean = store.check()
    assert clean.ok is True
    assert clean.findings == []
    assert tamper(store) == 1
    report = store.check()
    assert report.ok is False
    assert [finding.code for finding in report.findings] == [code]
    expected_checked = dict(clean.checked)
    if code == "fidelity_missing":
        expected_checked["representations"] -= 1
    assert report.checked == expected_checked


def test_check_reports_what_it_checked(store: cvm.Store) -> None:
    populate(store)
    report = store.check()
    # 3 plan versions, 1 bootstrap, 1 evidence.
    assert report.checked["page_versions"] == 5
    assert report.checked["representations"] == 3 * 3 + 2 + 4
    assert report.checked["journal"] == 5


# --- persistence ------------------------------------------------------------------------------


def snapshot(store: cvm.Store) -> dict[str, Any]:
    pages = store.pages()
    out: dict[str, Any] = {"pages": pages, "history": {}, "content": {}}
    for summary in pages:
        history = store.history(summary.key, project=summary.project, session=summary.session)
        out["history"][(summary.key, summary.session)] = history
        for version in history:
            if version.deleted:
                continue
            for fidelity in cvm.POLICIES[summary.type].ladder:
                out["content"][(summary.key, summary.session, version.version, fidelity)] = (
                    store.page(
                        summary.key,
                        project=summary.project,
                        session=summary.session,
                        fidelity=fidelity,
                        version=version.version,
                    )
                )
    return out


def test_reopen_gives_identical_pages_and_history(db_path: Path) -> None:
    with cvm.Store.open(db_path) as store:
        populate(store)
        store.put("conv/1", type=T.CONVERSATION, content="user: hello", session="s2")
        store.put("conv/1", type=T.CONVERSATION, content="assistant: hi", session="s2", op="append")
        before = snapshot(store)
        journal_before = journal_rows(store)
    assert len(before["pages"]) == 4
    with cvm.Store.open(db_path) as store:
        after = snapshot(store)
        assert after == before
        assert journal_rows(store) == journal_before
        assert store.check().ok
    with pytest.raises(cvm.ClawVMError):
        _ = store.db  # a closed store refuses use


def test_reading_a_missing_fidelity_reports_corruption(store: cvm.Store) -> None:
    populate(store)
    tamper_pointer(store)
    with pytest.raises(cvm.CorruptDatabase, match="pointer"):
        store.page("evidence/log", session="s1", fidelity=F.POINTER)
    # The other fidelities of that version still read.
    assert store.page("evidence/log", session="s1", fidelity=F.STRUCTURED).version == 1
