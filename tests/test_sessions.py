"""The session protocol (DESIGN 1.4 and 2): stage, read-your-writes, boundaries, validation,
merge rules, idempotency, scope isolation, resume and crash recovery.

Every test drives the real :class:`Store` on a fresh SQLite file and asserts exact outcomes:
the LSNs a boundary committed or rejected, the reason codes, the journal states, the
``lifecycle_events`` rows and the page versions that resulted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import clawvm_store as cvm
from clawvm_store.journal import merge_fields

PROJECT = "p"
URI: dict[str, Any] = {"uri": "file:///x"}
PREF_FIELDS: dict[str, Any] = {"statement": "Use tabs", "scope": "project", "provenance": "user"}

Event = tuple[str | None, str, int, int, int]


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def sess(store: cvm.Store) -> cvm.Session:
    return store.session("s1", project=PROJECT)


def events(store: cvm.Store) -> list[Event]:
    """Every lifecycle event as (session, boundary, turn, committed, rejected), oldest first."""
    with store.db.transaction(write=False) as conn:
        rows = conn.exec_driver_sql(
            "SELECT session_id, boundary, turn, committed, rejected FROM lifecycle_events "
            "ORDER BY id"
        ).all()
    return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]


def journal_states(store: cvm.Store, session: str | None = None) -> dict[int, tuple[str, Any]]:
    """lsn -> (state, reason) for every journal entry (of ``session`` when given)."""
    return {
        record.lsn: (record.state, record.reason)
        for record in store.journal_entries(session=session)
    }


def versions(store: cvm.Store, key: str, **where: Any) -> list[tuple[int, bool]]:
    """(version, deleted) of every committed version of a page."""
    return [(v.version, v.deleted) for v in store.history(key, project=PROJECT, **where)]


def contents(store: cvm.Store, key: str, **where: Any) -> list[str | None]:
    """The full content of every version of a page (``None`` for a deletion)."""
    result: list[str | None] = []
    for version in store.history(key, project=PROJECT, **where):
        if version.deleted:
            result.append(None)
        else:
            page = store.page(key, project=PROJECT, version=version.version, **where)
            result.append(page.content)
    return result


def commit_plan(sess: cvm.Session, key: str = "plan/main", content: str = "goal: ship it") -> int:
    """Stage and commit a session-scoped plan page; returns its LSN."""
    staged = sess.stage(key, type="plan", content=content)
    result = sess.flush()
    assert result.committed == [staged.lsn]
    return staged.lsn


def assert_only_rejected(
    store: cvm.Store, result: cvm.WritebackResult, lsn: int, reason: str
) -> None:
    """``result`` rejected exactly ``lsn`` with ``reason``, committed nothing, and the journal
    keeps the entry as rejected with that reason."""
    assert result.committed == []
    assert result.rejected == [(lsn, reason)]
    assert result.versions == {}
    rejected = {r.lsn: r for r in store.journal_entries(state="rejected")}
    assert lsn in rejected
    assert rejected[lsn].reason == reason
    assert rejected[lsn].detail
    assert rejected[lsn].version is None
    assert store.journal_entries(state="staged") == []
    assert events(store)[-1][3:] == (0, 1)


# --- staging and read-your-writes --------------------------------------------------------------


def test_stage_returns_increasing_lsns_and_entries_stay_staged(
    store: cvm.Store, sess: cvm.Session
) -> None:
    a = sess.stage("plan/main", type="plan", content="goal: ship it")
    b = sess.stage("conv/1", type="conversation", content="user: hi", op="append")
    c = sess.stage("ev/1", type="evidence", content="output", provenance=URI)
    assert a.lsn < b.lsn < c.lsn
    assert (a.key, b.key, c.key) == ("plan/main", "conv/1", "ev/1")
    assert (a.duplicate, b.duplicate, c.duplicate) == (False, False, False)

    staged = sess.staged()
    assert [e.lsn for e in staged] == [a.lsn, b.lsn, c.lsn]
    assert [e.op for e in staged] == [cvm.Op.SET, cvm.Op.APPEND, cvm.Op.SET]
    assert [e.state for e in staged] == ["staged"] * 3
    records = store.journal_entries(state="staged")
    assert [(r.lsn, r.session, r.key, r.state) for r in records] == [
        (a.lsn, "s1", "plan/main", "staged"),
        (b.lsn, "s1", "conv/1", "staged"),
        (c.lsn, "s1", "ev/1", "staged"),
    ]
    # Not committed: the committed view has none of them, and no boundary ran.
    for key in ("plan/main", "conv/1", "ev/1"):
        with pytest.raises(cvm.NotFound):
            store.page(key, project=PROJECT, session="s1")
        with pytest.raises(cvm.NotFound):
            store.history(key, project=PROJECT, session="s1")
    assert events(store) == []


def test_read_your_writes_shows_a_staged_set(store: cvm.Store, sess: cvm.Session) -> None:
    sess.stage("plan/main", type="plan", content="goal: ship it")
    mine = sess.page("plan/main")
    assert (mine.content, mine.version, mine.type, mine.staged) == (
        "goal: ship it",
        1,
        cvm.PageType.PLAN,
        True,
    )
    assert (mine.scope, mine.session, mine.project) == (cvm.Scope.SESSION, "s1", PROJECT)
    with pytest.raises(cvm.NotFound):
        store.page("plan/main", project=PROJECT, session="s1")

    sess.end_turn()
    committed = store.page("plan/main", project=PROJECT, session="s1")
    assert (committed.content, committed.version, committed.staged) == ("goal: ship it", 1, False)
    again = sess.page("plan/main")
    assert (again.content, again.version, again.staged) == ("goal: ship it", 1, False)


def test_read_your_writes_overlays_two_staged_appends_on_a_new_page(
    store: cvm.Store, sess: cvm.Session
) -> None:
    sess.stage("conv/1", type="conversation", content="user: hi", op="append")
    sess.stage("conv/1", type="conversation", content="assistant: hello", op="append")
    mine = sess.page("conv/1")
    assert (mine.content, mine.version, mine.staged) == ("user: hi\nassistant: hello", 2, True)
    with pytest.raises(cvm.NotFound):
        store.page("conv/1", project=PROJECT, session="s1")

    result = sess.end_turn()
    assert len(result.committed) == 2
    assert contents(store, "conv/1", session="s1") == ["user: hi", "user: hi\nassistant: hello"]


def test_read_your_writes_overlays_appends_on_the_committed_head(
    store: cvm.Store, sess: cvm.Session
) -> None:
    sess.stage("conv/2", type="conversation", content="base", op="append")
    sess.flush()
    sess.stage("conv/2", type="conversation", content="x", op="append")
    sess.stage("conv/2", type="conversation", content="y", op="append")
    mine = sess.page("conv/2")
    assert (mine.content, mine.version, mine.staged) == ("base\nx\ny", 3, True)
    head = store.page("conv/2", project=PROJECT, session="s1")
    assert (head.content, head.version) == ("base", 1)
    sess.flush()
    assert contents(store, "conv/2", session="s1") == ["base", "base\nx", "base\nx\ny"]


def test_read_your_writes_hides_a_page_with_a_staged_delete(
    store: cvm.Store, sess: cvm.Session
) -> None:
    commit_plan(sess)
    sess.stage("plan/main", type="plan", op="delete", expected_version=1)
    with pytest.raises(cvm.NotFound):
        sess.page("plan/main")
    committed = store.page("plan/main", project=PROJECT, session="s1")
    assert (committed.content, committed.version) == ("goal: ship it", 1)

    sess.flush()
    with pytest.raises(cvm.NotFound):
        store.page("plan/main", project=PROJECT, session="s1")
    with pytest.raises(cvm.NotFound):
        sess.page("plan/main")
    assert versions(store, "plan/main", session="s1") == [(1, False), (2, True)]


def test_read_your_writes_version_after_a_staged_delete_then_set(
    store: cvm.Store, sess: cvm.Session
) -> None:
    """The overlay's version is the one the boundary will give: the tombstone takes one."""
    commit_plan(sess)
    sess.stage("plan/main", type="plan", op="delete", expected_version=1)
    sess.stage("plan/main", type="plan", content="goal: again")
    mine = sess.page("plan/main")
    assert mine.content == "goal: again"
    result = sess.flush()
    assert list(result.versions.values()) == [2, 3]
    assert mine.version == 3


def test_read_your_writes_covers_project_scoped_pages(store: cvm.Store, sess: cvm.Session) -> None:
    sess.stage("pref/tabs", type="preference", content="Use tabs.", structured=PREF_FIELDS)
    mine = sess.page("pref/tabs")
    assert (mine.content, mine.scope, mine.session, mine.staged) == (
        "Use tabs.",
        cvm.Scope.PROJECT,
        None,
        True,
    )
    assert mine.structured == PREF_FIELDS
    with pytest.raises(cvm.NotFound):
        store.page("pref/tabs", project=PROJECT)


# --- boundaries ---------------------------------------------------------------------------------

BOUNDARIES = [
    ("end_turn", "turn_end", 1),
    ("flush", "flush", 0),
    ("compact", "compaction", 0),
    ("prune", "prune", 0),
    ("reset", "reset", 0),
    ("close", "session_end", 0),
]


@pytest.mark.parametrize(("method", "boundary", "turns"), BOUNDARIES)
def test_each_boundary_commits_every_staged_entry_of_its_session(
    store: cvm.Store, method: str, boundary: str, turns: int
) -> None:
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    a = s1.stage("plan/main", type="plan", content="goal: ship it")
    other = s2.stage("plan/main", type="plan", content="goal: other")
    b = s1.stage("conv/1", type="conversation", content="user: hi", op="append")

    result: cvm.WritebackResult = getattr(s1, method)()

    assert result.boundary is cvm.Boundary(boundary)
    assert result.committed == [a.lsn, b.lsn]
    assert result.rejected == []
    assert result.versions == {a.lsn: 1, b.lsn: 1}
    assert events(store) == [("s1", boundary, 0, 2, 0)]
    with store.db.transaction(write=False) as conn:
        event_id = conn.exec_driver_sql("SELECT max(id) FROM lifecycle_events").scalar()
    assert result.event_id == event_id
    # Nothing of s1 is left staged; s2's entry is untouched.
    assert s1.staged() == []
    assert [r.lsn for r in store.journal_entries(state="staged")] == [other.lsn]
    assert [e.lsn for e in s2.staged()] == [other.lsn]
    assert journal_states(store, "s1") == {a.lsn: ("applied", None), b.lsn: ("applied", None)}
    assert store.page("plan/main", project=PROJECT, session="s1").content == "goal: ship it"
    assert store.page("conv/1", project=PROJECT, session="s1").content == "user: hi"
    with pytest.raises(cvm.NotFound):
        store.page("plan/main", project=PROJECT, session="s2")
    # Only end_turn advances the turn counter.
    assert s1.turn == turns
    assert s2.turn == 0


@pytest.mark.parametrize(("method", "boundary", "turns"), BOUNDARIES)
def test_a_boundary_with_nothing_staged_is_still_recorded(
    store: cvm.Store, sess: cvm.Session, method: str, boundary: str, turns: int
) -> None:
    result: cvm.WritebackResult = getattr(sess, method)()
    assert (result.committed, result.rejected) == ([], [])
    assert events(store) == [("s1", boundary, 0, 0, 0)]
    assert sess.turn == turns


def test_end_turn_records_the_turn_it_ends(store: cvm.Store, sess: cvm.Session) -> None:
    sess.end_turn()
    sess.stage("plan/main", type="plan", content="goal: ship it")
    sess.flush()
    sess.end_turn()
    sess.compact()
    assert sess.turn == 2
    assert events(store) == [
        ("s1", "turn_end", 0, 0, 0),
        ("s1", "flush", 1, 1, 0),
        ("s1", "turn_end", 1, 0, 0),
        ("s1", "compaction", 2, 0, 0),
    ]


def test_a_boundary_resolves_rejected_entries_too(store: cvm.Store, sess: cvm.Session) -> None:
    good = sess.stage("plan/main", type="plan", content="goal: ship it")
    bad = sess.stage("ev/1", type="evidence", content="output")  # no provenance
    result = sess.reset()
    assert result.committed == [good.lsn]
    assert result.rejected == [(bad.lsn, "PROVENANCE_UNRESOLVED")]
    assert sess.staged() == []
    assert events(store) == [("s1", "reset", 0, 1, 1)]
    assert journal_states(store, "s1") == {
        good.lsn: ("applied", None),
        bad.lsn: ("rejected", "PROVENANCE_UNRESOLVED"),
    }


def test_a_closed_session_refuses_to_stage_and_can_be_resumed(
    store: cvm.Store, sess: cvm.Session
) -> None:
    sess.end_turn()
    sess.close()
    with pytest.raises(cvm.ClawVMError):
        sess.stage("plan/main", type="plan", content="goal: x")
    with pytest.raises(cvm.ClawVMError):
        sess.end_turn()
    with store.db.transaction(write=False) as conn:
        row = conn.exec_driver_sql("SELECT state, owner FROM sessions WHERE id = 's1'").one()
    assert (row[0], row[1]) == ("closed", None)
    resumed = store.session("s1", project=PROJECT)
    assert resumed.turn == 1
    resumed.stage("plan/main", type="plan", content="goal: x")
    assert len(resumed.end_turn().committed) == 1
    assert resumed.turn == 2


# --- validation: one reason code at a time ------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"type": "plan", "content": ""}, id="empty-content"),
        pytest.param({"type": "plan", "content": "  \n\t "}, id="blank-content"),
        pytest.param({"type": "plan", "content": None}, id="set-without-content"),
        pytest.param(
            {"type": "plan", "content": "goal: ship it", "structured": {"goal": ""}},
            id="plan-fields-blank-goal",
        ),
        pytest.param(
            {"type": "preference", "content": "Use tabs.", "structured": {"statement": "x"}},
            id="preference-fields-missing",
        ),
    ],
)
def test_schema_invalid(store: cvm.Store, sess: cvm.Session, kwargs: dict[str, Any]) -> None:
    staged = sess.stage("page/x", **kwargs)
    result = sess.end_turn()
    assert_only_rejected(store, result, staged.lsn, "SCHEMA_INVALID")
    with pytest.raises(cvm.NotFound):
        store.page("page/x", project=PROJECT, session="s1")


def test_schema_invalid_type_change_by_append(store: cvm.Store, sess: cvm.Session) -> None:
    commit_plan(sess)
    staged = sess.stage("plan/main", type="conversation", content="user: x", op="append")
    assert_only_rejected(store, sess.flush(), staged.lsn, "SCHEMA_INVALID")
    assert versions(store, "plan/main", session="s1") == [(1, False)]


@pytest.mark.parametrize(
    "provenance",
    [
        pytest.param(None, id="evidence-without-provenance"),
        pytest.param({"page": "nope"}, id="missing-page"),
        pytest.param({"page": ""}, id="empty-page-ref"),
        pytest.param({"uri": "not a uri"}, id="bad-uri"),
        pytest.param({"tool_call": "tc-404"}, id="unknown-tool-call"),
        pytest.param({"note": "no reference"}, id="no-reference-field"),
    ],
)
def test_provenance_unresolved(
    store: cvm.Store, sess: cvm.Session, provenance: dict[str, Any] | None
) -> None:
    staged = sess.stage("ev/1", type="evidence", content="output", provenance=provenance)
    assert_only_rejected(store, sess.end_turn(), staged.lsn, "PROVENANCE_UNRESOLVED")


def test_provenance_to_a_missing_version_is_unresolved(store: cvm.Store, sess: cvm.Session) -> None:
    commit_plan(sess)
    staged = sess.stage(
        "ev/1", type="evidence", content="output", provenance={"page": "plan/main@2"}
    )
    assert_only_rejected(store, sess.flush(), staged.lsn, "PROVENANCE_UNRESOLVED")


@pytest.mark.parametrize(
    "provenance",
    [URI, {"page": "plan/main"}, {"page": "plan/main@1"}],
    ids=["uri", "page", "page-at-version"],
)
def test_resolvable_provenance_commits(
    store: cvm.Store, sess: cvm.Session, provenance: dict[str, Any]
) -> None:
    commit_plan(sess)
    staged = sess.stage("ev/1", type="evidence", content="output", provenance=provenance)
    result = sess.flush()
    assert (result.committed, result.rejected) == ([staged.lsn], [])
    page = store.page("ev/1", project=PROJECT, session="s1")
    assert page.provenance == provenance


def test_scope_denied_for_a_principal_not_among_the_writers(store: cvm.Store) -> None:
    store.set_writers(PROJECT, ["alice"])
    bob = store.session("sb", project=PROJECT, principal="bob")
    alice = store.session("sa", project=PROJECT, principal="alice")
    denied = bob.stage("pref/tabs", type="preference", content="Use tabs.", structured=PREF_FIELDS)
    assert_only_rejected(store, bob.end_turn(), denied.lsn, "SCOPE_DENIED")
    with pytest.raises(cvm.NotFound):
        store.page("pref/tabs", project=PROJECT)
    # The writers list only restricts project-scoped pages: bob's own session pages commit ...
    own = bob.stage("plan/main", type="plan", content="goal: ship it")
    assert bob.end_turn().committed == [own.lsn]
    # ... and alice may write the project page.
    allowed = alice.stage(
        "pref/tabs", type="preference", content="Use tabs.", structured=PREF_FIELDS
    )
    assert alice.end_turn().committed == [allowed.lsn]
    assert store.page("pref/tabs", project=PROJECT).content == "Use tabs."


def test_set_writers_none_lifts_the_restriction(store: cvm.Store) -> None:
    store.set_writers(PROJECT, ["alice"])
    store.set_writers(PROJECT, None)
    bob = store.session("sb", project=PROJECT, principal="bob")
    staged = bob.stage("pref/tabs", type="preference", content="Use tabs.", structured=PREF_FIELDS)
    assert bob.end_turn().committed == [staged.lsn]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"type": "plan", "content": "goal: new"}, id="set-without-version"),
        pytest.param(
            {"type": "plan", "content": "goal: new", "expected_version": 2}, id="set-future-version"
        ),
        pytest.param(
            {"type": "plan", "content": "goal: new", "expected_version": 0}, id="set-version-0"
        ),
        pytest.param({"type": "plan", "op": "delete"}, id="delete-without-version"),
        pytest.param({"type": "plan", "op": "delete", "expected_version": 2}, id="delete-stale"),
        pytest.param(
            {"type": "plan", "content": "more", "op": "append", "expected_version": 3},
            id="append-with-wrong-version",
        ),
    ],
)
def test_destructive_op_on_an_existing_page(
    store: cvm.Store, sess: cvm.Session, kwargs: dict[str, Any]
) -> None:
    commit_plan(sess)
    staged = sess.stage("plan/main", **kwargs)
    assert_only_rejected(store, sess.end_turn(), staged.lsn, "DESTRUCTIVE_OP")
    assert versions(store, "plan/main", session="s1") == [(1, False)]
    assert store.page("plan/main", project=PROJECT, session="s1").content == "goal: ship it"


def test_destructive_op_on_a_stale_version(store: cvm.Store, sess: cvm.Session) -> None:
    commit_plan(sess)
    second = sess.stage("plan/main", type="plan", content="goal: two", expected_version=1)
    assert sess.flush().committed == [second.lsn]
    stale = sess.stage("plan/main", type="plan", content="goal: three", expected_version=1)
    assert_only_rejected(store, sess.flush(), stale.lsn, "DESTRUCTIVE_OP")
    assert contents(store, "plan/main", session="s1") == ["goal: ship it", "goal: two"]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"op": "delete"}, id="delete-missing-page"),
        pytest.param({"op": "delete", "expected_version": 1}, id="delete-missing-page-v1"),
        pytest.param({"content": "goal: x", "expected_version": 3}, id="set-new-page-v3"),
    ],
)
def test_destructive_op_on_a_missing_page(
    store: cvm.Store, sess: cvm.Session, kwargs: dict[str, Any]
) -> None:
    staged = sess.stage("plan/none", type="plan", **kwargs)
    assert_only_rejected(store, sess.end_turn(), staged.lsn, "DESTRUCTIVE_OP")


def test_destructive_op_on_a_deleted_page(store: cvm.Store, sess: cvm.Session) -> None:
    commit_plan(sess)
    sess.stage("plan/main", type="plan", op="delete", expected_version=1)
    sess.flush()
    again = sess.stage("plan/main", type="plan", op="delete", expected_version=2)
    assert_only_rejected(store, sess.flush(), again.lsn, "DESTRUCTIVE_OP")
    # A set needs no version on a deleted key: it is recreated at the next version.
    reborn = sess.stage("plan/main", type="plan", content="goal: reborn")
    result = sess.flush()
    assert (result.committed, result.versions) == ([reborn.lsn], {reborn.lsn: 3})
    assert contents(store, "plan/main", session="s1") == ["goal: ship it", None, "goal: reborn"]


@pytest.mark.parametrize("page_type", ["bootstrap", "constraint"])
def test_pin_violation_deleting_a_hard_pinned_page(store: cvm.Store, page_type: str) -> None:
    sess = store.session("s1", project=PROJECT)
    first = sess.stage("rules/main", type=page_type, content="Never push to main.")
    assert sess.end_turn().committed == [first.lsn]
    where: dict[str, Any] = {"session": "s1"} if page_type == "constraint" else {}
    assert store.page("rules/main", project=PROJECT, **where).pin is cvm.Pin.HARD

    staged = sess.stage("rules/main", type=page_type, op="delete", expected_version=1)
    assert_only_rejected(store, sess.end_turn(), staged.lsn, "PIN_VIOLATION")
    assert versions(store, "rules/main", **where) == [(1, False)]


def test_pin_violation_deleting_a_put_bootstrap_page_at_every_boundary(store: cvm.Store) -> None:
    store.put("boot/agents", type="bootstrap", content="Always run tests.", project=PROJECT)
    sess = store.session("s1", project=PROJECT)
    for method in ("end_turn", "flush", "compact", "prune", "reset", "close"):
        staged = sess.stage("boot/agents", type="bootstrap", op="delete", expected_version=1)
        assert_only_rejected(store, getattr(sess, method)(), staged.lsn, "PIN_VIOLATION")
    assert versions(store, "boot/agents") == [(1, False)]


@pytest.mark.parametrize("pin", ["none", "soft"])
def test_pin_violation_a_session_lowering_a_hard_pin(store: cvm.Store, pin: str) -> None:
    store.put("boot/agents", type="bootstrap", content="Always run tests.", project=PROJECT)
    sess = store.session("s1", project=PROJECT)
    staged = sess.stage(
        "boot/agents", type="bootstrap", content="Run tests.", pin=pin, expected_version=1
    )
    assert_only_rejected(store, sess.end_turn(), staged.lsn, "PIN_VIOLATION")
    assert store.page("boot/agents", project=PROJECT).pin is cvm.Pin.HARD
    # Keeping the pin is fine.
    kept = sess.stage(
        "boot/agents", type="bootstrap", content="Run tests.", pin="hard", expected_version=1
    )
    assert sess.end_turn().committed == [kept.lsn]


def test_a_direct_put_may_lower_a_hard_pin(store: cvm.Store) -> None:
    store.put("boot/agents", type="bootstrap", content="Always run tests.", project=PROJECT)
    page = store.put(
        "boot/agents",
        type="bootstrap",
        content="Always run tests.",
        project=PROJECT,
        pin="none",
        expected_version=1,
    )
    assert (page.version, page.pin) == (2, cvm.Pin.NONE)


def test_pin_violation_from_a_direct_delete_raises(store: cvm.Store) -> None:
    store.put("boot/agents", type="bootstrap", content="Always run tests.", project=PROJECT)
    with pytest.raises(cvm.PinViolation) as caught:
        store.put(
            "boot/agents", type="bootstrap", content=None, project=PROJECT, op="delete",
            expected_version=1,
        )  # fmt: skip
    assert caught.value.reason == "PIN_VIOLATION"
    rejected = store.journal_entries(state="rejected")
    assert [(r.lsn, r.reason) for r in rejected] == [(caught.value.lsn, "PIN_VIOLATION")]


def test_direct_delete_returns_without_error(store: cvm.Store) -> None:
    """A committed direct delete must not raise: the write succeeded."""
    store.put("plan/x", type="plan", content="goal: x", project=PROJECT)
    store.put("plan/x", type="plan", content=None, project=PROJECT, op="delete", expected_version=1)
    assert versions(store, "plan/x") == [(1, False), (2, True)]
    with pytest.raises(cvm.NotFound):
        store.page("plan/x", project=PROJECT)


# --- merge rules (journal.py module docstring) ---------------------------------------------------


def test_merge_fields_adds_a_new_key() -> None:
    assert merge_fields({"a": 1}, {"b": 2}, may_overwrite=False) == ({"a": 1, "b": 2}, None)


def test_merge_fields_merges_nested_objects_recursively() -> None:
    merged = merge_fields(
        {"o": {"x": 1, "l": [1]}, "k": "v"},
        {"o": {"y": 2, "l": [1, 2], "x": 1}},
        may_overwrite=False,
    )
    assert merged == ({"o": {"x": 1, "l": [1, 2], "y": 2}, "k": "v"}, None)


def test_merge_fields_extends_lists_without_duplicates_in_order() -> None:
    merged = merge_fields({"l": ["a", "b"]}, {"l": ["c", "b", "a", "d", "c"]}, may_overwrite=False)
    # New items in their given order; an item already present (also one added by this same
    # merge) is not added again.
    assert merged == ({"l": ["a", "b", "c", "d"]}, None)
    assert merge_fields({"l": [1]}, {"l": [2, 3]}, may_overwrite=False) == ({"l": [1, 2, 3]}, None)


def test_merge_fields_equal_scalar_is_a_no_op() -> None:
    assert merge_fields({"a": 1, "b": "x"}, {"a": 1}, may_overwrite=False) == (
        {"a": 1, "b": "x"},
        None,
    )


def test_merge_fields_conflicting_scalar_reports_its_path() -> None:
    _, conflict = merge_fields({"o": {"x": 1}}, {"o": {"x": 2}}, may_overwrite=False)
    assert conflict == "o.x"
    _, conflict = merge_fields({"a": 1}, {"a": 2}, may_overwrite=False)
    assert conflict == "a"


def test_merge_fields_conflicting_scalar_wins_when_overwrite_is_allowed() -> None:
    assert merge_fields({"o": {"x": 1}, "a": 1}, {"o": {"x": 2}}, may_overwrite=True) == (
        {"o": {"x": 2}, "a": 1},
        None,
    )


def test_merge_fields_does_not_mutate_its_inputs() -> None:
    old = {"o": {"x": 1}, "l": [1]}
    new = {"o": {"y": 2}, "l": [2]}
    merge_fields(old, new, may_overwrite=False)
    assert old == {"o": {"x": 1}, "l": [1]}
    assert new == {"o": {"y": 2}, "l": [2]}


@pytest.fixture
def pref(store: cvm.Store, sess: cvm.Session) -> int:
    """A committed preference page 'pref/tabs' (version 1) with explicit structured fields."""
    staged = sess.stage(
        "pref/tabs", type="preference", content="Use tabs for indentation.", structured=PREF_FIELDS
    )
    assert sess.flush().committed == [staged.lsn]
    return staged.lsn


def merge_pref(sess: cvm.Session, structured: Any, **kwargs: Any) -> cvm.StagedUpdate:
    return sess.stage("pref/tabs", type="preference", op="merge", structured=structured, **kwargs)


def test_merge_equal_scalar_commits_with_unchanged_fields(
    store: cvm.Store, sess: cvm.Session, pref: int
) -> None:
    staged = merge_pref(sess, {"statement": "Use tabs", "scope": "project"})
    result = sess.flush()
    assert (result.committed, result.rejected) == ([staged.lsn], [])
    page = store.page("pref/tabs", project=PROJECT)
    assert (page.version, page.structured) == (2, PREF_FIELDS)
    assert page.content == "Use tabs for indentation."


def test_merge_conflicting_scalar_without_version_is_destructive(
    store: cvm.Store, sess: cvm.Session, pref: int
) -> None:
    staged = merge_pref(sess, {"statement": "Use spaces"})
    assert_only_rejected(store, sess.flush(), staged.lsn, "DESTRUCTIVE_OP")
    assert store.page("pref/tabs", project=PROJECT).structured == PREF_FIELDS


def test_merge_conflicting_scalar_with_stale_version_is_destructive(
    store: cvm.Store, sess: cvm.Session, pref: int
) -> None:
    staged = merge_pref(sess, {"statement": "Use spaces"}, expected_version=2)
    assert_only_rejected(store, sess.flush(), staged.lsn, "DESTRUCTIVE_OP")
    assert versions(store, "pref/tabs") == [(1, False)]


def test_merge_equal_scalar_with_stale_version_is_destructive(
    store: cvm.Store, sess: cvm.Session, pref: int
) -> None:
    """A merge that names a version must name the current one, conflict or not."""
    staged = merge_pref(sess, {"statement": "Use tabs"}, expected_version=5)
    assert_only_rejected(store, sess.flush(), staged.lsn, "DESTRUCTIVE_OP")


def test_merge_conflicting_scalar_with_matching_version_wins(
    store: cvm.Store, sess: cvm.Session, pref: int
) -> None:
    staged = merge_pref(sess, {"statement": "Use spaces"}, expected_version=1)
    result = sess.flush()
    assert (result.committed, result.versions) == ([staged.lsn], {staged.lsn: 2})
    page = store.page("pref/tabs", project=PROJECT)
    assert page.structured == {**PREF_FIELDS, "statement": "Use spaces"}
    assert store.page("pref/tabs", project=PROJECT, version=1).structured == PREF_FIELDS


def test_merge_of_a_key_outside_the_type_schema_is_schema_invalid(
    store: cvm.Store, sess: cvm.Session, pref: int
) -> None:
    """A new key is added by the merge rules, then the type's model (extra="forbid") refuses it."""
    staged = merge_pref(sess, {"color": "blue"})
    assert_only_rejected(store, sess.flush(), staged.lsn, "SCHEMA_INVALID")
    nested = merge_pref(sess, {"extra": {"a": 1}})
    assert_only_rejected(store, sess.flush(), nested.lsn, "SCHEMA_INVALID")
    assert versions(store, "pref/tabs") == [(1, False)]


def test_merge_needs_a_structured_object(store: cvm.Store, sess: cvm.Session, pref: int) -> None:
    staged = merge_pref(sess, None, content="more")
    assert_only_rejected(store, sess.flush(), staged.lsn, "SCHEMA_INVALID")


def test_merge_into_a_new_page_needs_content(store: cvm.Store, sess: cvm.Session) -> None:
    staged = sess.stage("pref/new", type="preference", op="merge", structured=PREF_FIELDS)
    assert_only_rejected(store, sess.flush(), staged.lsn, "SCHEMA_INVALID")
    created = sess.stage(
        "pref/new", type="preference", op="merge", structured=PREF_FIELDS, content="Use tabs."
    )
    assert sess.flush().committed == [created.lsn]
    page = store.page("pref/new", project=PROJECT)
    assert (page.version, page.content, page.structured) == (1, "Use tabs.", PREF_FIELDS)


def test_merge_content_is_appended_like_append(
    store: cvm.Store, sess: cvm.Session, pref: int
) -> None:
    merge_pref(sess, {"statement": "Use tabs"}, content="Also in Makefiles.")
    merge_pref(sess, {"scope": "project"})
    sess.flush()
    assert contents(store, "pref/tabs") == [
        "Use tabs for indentation.",
        "Use tabs for indentation.\nAlso in Makefiles.",
        "Use tabs for indentation.\nAlso in Makefiles.",
    ]


def test_merge_extends_a_list_field_without_duplicates_in_order(
    store: cvm.Store, sess: cvm.Session
) -> None:
    commit_plan(sess)
    assert store.page("plan/main", project=PROJECT, session="s1").structured == {
        "goal": "ship it",
        "current_step": "ship it",
        "steps": [],
    }
    sess.stage("plan/main", type="plan", op="merge", structured={"steps": ["a", "b"]})
    sess.stage("plan/main", type="plan", op="merge", structured={"steps": ["c", "b", "a", "d"]})
    result = sess.flush()
    assert result.rejected == []
    assert list(result.versions.values()) == [2, 3]
    steps = [
        store.page("plan/main", project=PROJECT, session="s1", version=v).structured["steps"]  # type: ignore[index]
        for v in (2, 3)
    ]
    assert steps == [["a", "b"], ["a", "b", "c", "d"]]


def test_merge_conflicting_scalar_in_a_plan_with_matching_version(
    store: cvm.Store, sess: cvm.Session
) -> None:
    commit_plan(sess)
    conflict = sess.stage("plan/main", type="plan", op="merge", structured={"goal": "ship v2"})
    wins = sess.stage(
        "plan/main", type="plan", op="merge", structured={"goal": "ship v2"}, expected_version=1
    )
    result = sess.flush()
    assert result.rejected == [(conflict.lsn, "DESTRUCTIVE_OP")]
    assert result.committed == [wins.lsn]
    fields = store.page("plan/main", project=PROJECT, session="s1").structured
    assert fields == {"goal": "ship v2", "current_step": "ship it", "steps": []}


# --- ordering inside one boundary ---------------------------------------------------------------


def test_later_entries_in_a_boundary_see_earlier_ones(store: cvm.Store, sess: cvm.Session) -> None:
    first = sess.stage("plan/main", type="plan", content="goal: one")
    second = sess.stage("plan/main", type="plan", content="goal: two", expected_version=1)
    third = sess.stage("plan/main", type="plan", content="goal: three")  # no version: now stale
    fourth = sess.stage("plan/main", type="plan", op="delete", expected_version=2)
    result = sess.end_turn()
    assert result.committed == [first.lsn, second.lsn, fourth.lsn]
    assert result.rejected == [(third.lsn, "DESTRUCTIVE_OP")]
    assert result.versions == {first.lsn: 1, second.lsn: 2, fourth.lsn: 3}
    assert contents(store, "plan/main", session="s1") == ["goal: one", "goal: two", None]
    assert events(store) == [("s1", "turn_end", 0, 3, 1)]


def test_evidence_may_cite_a_page_committed_earlier_in_the_same_boundary(
    store: cvm.Store, sess: cvm.Session
) -> None:
    plan = sess.stage("plan/main", type="plan", content="goal: one")
    ev = sess.stage("ev/1", type="evidence", content="output", provenance={"page": "plan/main"})
    assert sess.end_turn().committed == [plan.lsn, ev.lsn]


# --- idempotency --------------------------------------------------------------------------------


def test_stage_with_the_same_idempotency_key_returns_the_first_entry(
    store: cvm.Store, sess: cvm.Session
) -> None:
    first = sess.stage("plan/main", type="plan", content="goal: x", idempotency_key="k1")
    retry = sess.stage("plan/main", type="plan", content="goal: x", idempotency_key="k1")
    assert (retry.lsn, retry.key, retry.duplicate) == (first.lsn, "plan/main", True)
    assert first.duplicate is False
    assert [r.lsn for r in store.journal_entries(session="s1")] == [first.lsn]
    records = store.journal_entries(session="s1")
    assert records[0].idempotency_key == "k1"

    with pytest.raises(cvm.InvalidInput):
        sess.stage("plan/main", type="plan", content="goal: y", idempotency_key="k1")
    assert [r.lsn for r in store.journal_entries(session="s1")] == [first.lsn]

    assert sess.end_turn().committed == [first.lsn]
    # A retry after the boundary still finds the original entry and stages nothing.
    late = sess.stage("plan/main", type="plan", content="goal: x", idempotency_key="k1")
    assert (late.lsn, late.duplicate) == (first.lsn, True)
    assert sess.staged() == []
    assert sess.end_turn().committed == []
    assert versions(store, "plan/main", session="s1") == [(1, False)]


def test_idempotency_keys_are_per_session(store: cvm.Store) -> None:
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    a = s1.stage("plan/main", type="plan", content="goal: x", idempotency_key="k1")
    b = s2.stage("plan/main", type="plan", content="goal: x", idempotency_key="k1")
    assert a.lsn != b.lsn
    assert (a.duplicate, b.duplicate) == (False, False)


def test_put_with_an_idempotency_key_writes_once(store: cvm.Store) -> None:
    first = store.put(
        "boot/agents", type="bootstrap", content="Run tests.", project=PROJECT, idempotency_key="i"
    )
    retry = store.put(
        "boot/agents", type="bootstrap", content="Run tests.", project=PROJECT, idempotency_key="i"
    )
    assert (first.version, retry.version) == (1, 1)
    assert retry.content == "Run tests."
    assert versions(store, "boot/agents") == [(1, False)]
    assert [(r.key, r.state) for r in store.journal_entries()] == [("boot/agents", "applied")]
    with pytest.raises(cvm.InvalidInput):
        store.put(
            "boot/agents", type="bootstrap", content="Other.", project=PROJECT, idempotency_key="i"
        )
    assert len(store.journal_entries()) == 1


def test_put_retry_of_a_rejected_write_raises_again_without_a_new_entry(store: cvm.Store) -> None:
    store.put("plan/x", type="plan", content="goal: x", project=PROJECT)
    with pytest.raises(cvm.DestructiveWrite) as first:
        store.put("plan/x", type="plan", content="goal: y", project=PROJECT, idempotency_key="i")
    with pytest.raises(cvm.DestructiveWrite) as retry:
        store.put("plan/x", type="plan", content="goal: y", project=PROJECT, idempotency_key="i")
    assert first.value.lsn == retry.value.lsn
    assert first.value.reason == retry.value.reason == "DESTRUCTIVE_OP"
    assert len(store.journal_entries()) == 2


# --- scope isolation ----------------------------------------------------------------------------


def test_a_session_scoped_page_is_invisible_to_other_sessions(store: cvm.Store) -> None:
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    commit_plan(s1)
    assert store.page("plan/main", project=PROJECT, session="s1").content == "goal: ship it"
    with pytest.raises(cvm.NotFound):
        store.page("plan/main", project=PROJECT, session="s2")
    with pytest.raises(cvm.NotFound):
        store.page("plan/main", project=PROJECT)
    with pytest.raises(cvm.NotFound):
        store.history("plan/main", project=PROJECT, session="s2")
    with pytest.raises(cvm.NotFound):
        s2.page("plan/main")


def test_citing_another_sessions_page_is_scope_denied(store: cvm.Store) -> None:
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    commit_plan(s1)
    staged = s2.stage("ev/1", type="evidence", content="out", provenance={"page": "plan/main"})
    assert_only_rejected(store, s2.end_turn(), staged.lsn, "SCOPE_DENIED")
    own = s1.stage("ev/1", type="evidence", content="out", provenance={"page": "plan/main"})
    assert s1.end_turn().committed == [own.lsn]


def test_the_same_key_in_two_sessions_is_two_pages(store: cvm.Store) -> None:
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    a = s1.stage("plan/main", type="plan", content="goal: one")
    b = s2.stage("plan/main", type="plan", content="goal: two")
    assert s1.end_turn().versions == {a.lsn: 1}
    assert s2.end_turn().versions == {b.lsn: 1}
    assert store.page("plan/main", project=PROJECT, session="s1").content == "goal: one"
    assert store.page("plan/main", project=PROJECT, session="s2").content == "goal: two"


def test_project_scoped_pages_are_visible_to_every_session(store: cvm.Store) -> None:
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    staged = s1.stage("pref/tabs", type="preference", content="Use tabs.", structured=PREF_FIELDS)
    assert s1.end_turn().committed == [staged.lsn]
    for where in ({"session": "s1"}, {"session": "s2"}, {}):
        page = store.page("pref/tabs", project=PROJECT, **where)
        assert (page.content, page.session, page.scope) == ("Use tabs.", None, cvm.Scope.PROJECT)
    assert s2.page("pref/tabs").content == "Use tabs."
    cite = s2.stage("ev/1", type="evidence", content="out", provenance={"page": "pref/tabs"})
    assert s2.end_turn().committed == [cite.lsn]
    # Another project does not see it.
    with pytest.raises(cvm.NotFound):
        store.page("pref/tabs", project="other")


# --- resume -------------------------------------------------------------------------------------


def test_resume_after_reopening_keeps_the_turn_counter(db_path: Path) -> None:
    with cvm.Store.open(db_path) as first:
        sess = first.session("s1", project=PROJECT, principal="alice")
        sess.end_turn()
        sess.end_turn()
    with cvm.Store.open(db_path) as second:
        resumed = second.session("s1", project=PROJECT, principal="alice")
        assert resumed.turn == 2
        resumed.end_turn()
        assert resumed.turn == 3


def test_resume_of_a_closed_session_after_reopening(db_path: Path) -> None:
    with cvm.Store.open(db_path) as first:
        sess = first.session("s1", project=PROJECT)
        sess.end_turn()
        sess.close()
    with cvm.Store.open(db_path) as second:
        resumed = second.session("s1", project=PROJECT)
        assert resumed.turn == 1
        with second.db.transaction(write=False) as conn:
            state = conn.exec_driver_sql("SELECT state FROM sessions WHERE id = 's1'").scalar()
        assert state == "open"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"project": "other", "principal": "alice"}, id="other-project"),
        pytest.param({"project": PROJECT, "principal": "bob"}, id="other-principal"),
        pytest.param({"project": PROJECT, "principal": None}, id="no-principal"),
    ],
)
def test_resume_under_another_project_or_principal_is_refused(
    db_path: Path, kwargs: dict[str, Any]
) -> None:
    with cvm.Store.open(db_path) as first:
        first.session("s1", project=PROJECT, principal="alice").end_turn()
    with cvm.Store.open(db_path) as second:
        with pytest.raises(cvm.InvalidInput):
            second.session("s1", **kwargs)
        # Also from the store that owns it right now.
        second.session("s1", project=PROJECT, principal="alice")
        with pytest.raises(cvm.InvalidInput):
            second.session("s1", **kwargs)


def test_a_session_open_in_another_store_is_in_use(db_path: Path) -> None:
    first = cvm.Store.open(db_path)
    second = cvm.Store.open(db_path)
    try:
        sess = first.session("s1", project=PROJECT)
        with pytest.raises(cvm.SessionInUse):
            second.session("s1", project=PROJECT)
        # Closing the session releases it to another store.
        sess.close()
        taken = second.session("s1", project=PROJECT)
        with pytest.raises(cvm.SessionInUse):
            first.session("s1", project=PROJECT)
        taken.stage("plan/main", type="plan", content="goal: x")
    finally:
        second.close()
    try:
        # The owning store is gone: the first store may take the session over.
        resumed = first.session("s1", project=PROJECT)
        assert resumed.turn == 0
    finally:
        first.close()


# --- recovery -----------------------------------------------------------------------------------


def crash_with_staged_entries(db_path: Path) -> tuple[int, int, int]:
    """Stage three entries in s1 (one invalid) and 'die': close the store with no boundary."""
    dying = cvm.Store.open(db_path)
    sess = dying.session("s1", project=PROJECT)
    sess.end_turn()
    a = sess.stage("plan/main", type="plan", content="goal: survive")
    b = sess.stage("conv/1", type="conversation", content="user: hi", op="append")
    bad = sess.stage("ev/1", type="evidence", content="output")  # no provenance
    dying.close()  # unregisters the owner: s1's owner is now dead
    return a.lsn, b.lsn, bad.lsn


def test_open_recovers_staged_entries_of_a_dead_session(db_path: Path) -> None:
    a, b, bad = crash_with_staged_entries(db_path)
    with cvm.Store.open(db_path) as store:
        assert journal_states(store) == {
            a: ("applied", None),
            b: ("applied", None),
            bad: ("rejected", "PROVENANCE_UNRESOLVED"),
        }
        assert events(store) == [("s1", "turn_end", 0, 0, 0), ("s1", "recovery", 1, 2, 1)]
        assert store.page("plan/main", project=PROJECT, session="s1").content == "goal: survive"
        assert store.page("conv/1", project=PROJECT, session="s1").content == "user: hi"

        again = store.recover()
        assert again.changed is False
        assert (again.quarantined, again.reapplied, again.recovered) == ([], [], {})
        assert again.skipped_live_sessions == []
        assert len(events(store)) == 2
        assert store.check().ok
        # The session resumes with its turn counter; recovery did not end a turn.
        resumed = store.session("s1", project=PROJECT)
        assert resumed.turn == 1
        assert resumed.staged() == []


def test_recover_reports_what_it_committed(db_path: Path) -> None:
    a, b, bad = crash_with_staged_entries(db_path)
    with cvm.Store.open(db_path, recover=False) as store:
        assert [r.lsn for r in store.journal_entries(state="staged")] == [a, b, bad]
        report = store.recover()
        assert report.changed is True
        assert list(report.recovered) == ["s1"]
        result = report.recovered["s1"]
        assert result.boundary is cvm.Boundary.RECOVERY
        assert result.committed == [a, b]
        assert result.rejected == [(bad, "PROVENANCE_UNRESOLVED")]
        assert result.versions == {a: 1, b: 1}
        assert (report.quarantined, report.reapplied, report.skipped_live_sessions) == ([], [], [])
        assert store.journal_entries(state="staged") == []

        second = store.recover()
        assert second.changed is False
        assert second.recovered == {}


def test_recovery_skips_sessions_of_a_live_store(db_path: Path) -> None:
    owner = cvm.Store.open(db_path)
    try:
        sess = owner.session("s1", project=PROJECT)
        staged = sess.stage("plan/main", type="plan", content="goal: mine")
        with cvm.Store.open(db_path) as other:  # its open-time recovery must skip s1
            assert [r.lsn for r in other.journal_entries(state="staged")] == [staged.lsn]
            report = other.recover()
            assert report.skipped_live_sessions == ["s1"]
            assert (report.recovered, report.changed) == ({}, False)
            assert [r.lsn for r in other.journal_entries(state="staged")] == [staged.lsn]
            with pytest.raises(cvm.NotFound):
                other.page("plan/main", project=PROJECT, session="s1")
            assert events(other) == []

            owner.close()  # now the owner is dead: the next recovery resolves s1
            report = other.recover()
            assert report.skipped_live_sessions == []
            assert report.recovered["s1"].committed == [staged.lsn]
            assert other.page("plan/main", project=PROJECT, session="s1").content == "goal: mine"
            assert events(other) == [("s1", "recovery", 0, 1, 0)]
    finally:
        owner.close()


def test_recovery_leaves_a_cleanly_closed_session_alone(db_path: Path) -> None:
    with cvm.Store.open(db_path) as first:
        sess = first.session("s1", project=PROJECT)
        sess.stage("plan/main", type="plan", content="goal: x")
        sess.close()
    with cvm.Store.open(db_path) as second:
        assert [e[1] for e in events(second)] == ["session_end"]
        report = second.recover()
        assert report.changed is False
        assert versions(second, "plan/main", session="s1") == [(1, False)]
