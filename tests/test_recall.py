"""Recall (DESIGN 1.5): the FTS5 index, visibility and the reason every recall carries, pluggable
backends and the ``silent_recall`` fault, ``refetch`` counting, the fault report and
``clawvm faults``.

Every test drives the real :class:`Store` on a fresh SQLite file and asserts exact outcomes: the
reason, the keys found (in order where ranking is defined), and the rows of the ``faults`` table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import clawvm_store as cvm
from clawvm_store.cli import app

PROJECT = "p"
URI: dict[str, Any] = {"uri": "file:///notes"}
BIG = 100_000


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def sess(store: cvm.Store) -> cvm.Session:
    return store.session("s1", project=PROJECT)


def put_project(store: cvm.Store, key: str, content: str, **kwargs: Any) -> cvm.Page:
    """A project-scoped evidence page, written directly."""
    return store.put(
        key,
        type="evidence",
        scope="project",
        provenance=URI,
        content=content,
        project=kwargs.pop("project", PROJECT),
        **kwargs,
    )


def put_session(store: cvm.Store, session: str, key: str, content: str) -> cvm.Page:
    """A session-scoped evidence page of ``session``, written directly."""
    return store.put(
        key, type="evidence", provenance=URI, content=content, project=PROJECT, session=session
    )


def keys(found: cvm.Recall) -> list[str]:
    return [page.key for page in found.pages]


def fault_rows(store: cvm.Store) -> list[tuple[str | None, str, str | None]]:
    """Every row of the ``faults`` table (hits included) as (session, kind, key), oldest first."""
    with store.db.transaction(write=False) as conn:
        rows = conn.exec_driver_sql("SELECT session_id, kind, key FROM faults ORDER BY id").all()
    return [(row[0], row[1], row[2]) for row in rows]


def reader(text: str) -> Any:
    def run(path: str) -> str:
        return text

    return run


# --- the FTS5 backend: found, ranked, limited -----------------------------------------------------


def test_recall_finds_project_and_session_pages_by_their_words(
    store: cvm.Store, sess: cvm.Session
) -> None:
    put_project(store, "docs/deploy", "Deploy with kubernetes and helm charts.")
    sess.stage("notes/db", type="evidence", content="Postgres runs on port 5432.", provenance=URI)
    sess.end_turn()
    tool = sess.tool_call("read_file", {"path": "setup.cfg"}, reader("[flake8]\nmax-line = 100"))

    found = sess.recall("kubernetes")
    assert (found.reason, keys(found), found.detail) == ("ok", ["docs/deploy"], "")
    [page] = found.pages
    assert (page.fidelity, page.content, page.version) == (
        cvm.Fidelity.FULL,
        "Deploy with kubernetes and helm charts.",
        1,
    )
    assert page.session is None  # a project page

    mine = sess.recall("POSTGRES")  # case-insensitive
    assert (mine.reason, keys(mine)) == ("ok", ["notes/db"])
    assert mine.pages[0].content == "Postgres runs on port 5432."
    assert mine.pages[0].session == "s1"

    # A tool result is found by its content, and by the call that made it.
    by_content = sess.recall("flake8")
    assert (by_content.reason, keys(by_content)) == ("ok", [tool.key])
    assert by_content.pages[0].content == "[flake8]\nmax-line = 100"
    by_call = sess.recall("setup.cfg")
    assert (by_call.reason, keys(by_call)) == ("ok", [tool.key])
    assert store.faults(session="s1").faults == 0


def test_a_page_matching_more_query_words_ranks_first(store: cvm.Store, sess: cvm.Session) -> None:
    put_project(store, "n/one", "apple grape melon peach")
    put_project(store, "n/both", "apple banana cherry plum")
    put_project(store, "n/other", "banana lemon lime fig")
    put_project(store, "n/none", "walnut pecan almond hazelnut")
    found = sess.recall("banana apple")
    assert found.reason == "ok"
    assert keys(found)[0] == "n/both"
    assert sorted(keys(found)) == ["n/both", "n/one", "n/other"]
    assert all(page.fidelity is cvm.Fidelity.FULL for page in found.pages)


def test_limit_is_honoured(store: cvm.Store, sess: cvm.Session) -> None:
    for index in range(8):
        put_project(store, f"z/{index}", f"zebra number {index}")
    assert len(sess.recall("zebra").pages) == 5  # the default
    three = sess.recall("zebra", limit=3)
    assert (three.reason, len(three.pages), len(set(keys(three)))) == ("ok", 3, 3)
    assert set(keys(three)) <= {f"z/{index}" for index in range(8)}
    assert len(sess.recall("zebra", limit=50).pages) == 8


@pytest.mark.parametrize("limit", [0, -1, True, 2.5, "3"])
def test_bad_limit_is_invalid(sess: cvm.Session, limit: Any) -> None:
    with pytest.raises(cvm.InvalidInput):
        sess.recall("zebra", limit=limit)


def test_non_string_query_is_invalid(sess: cvm.Session) -> None:
    with pytest.raises(cvm.InvalidInput):
        sess.recall(None)  # type: ignore[arg-type]


# --- reasons: no_match, denied, visibility ------------------------------------------------------


def test_no_match_and_query_without_words(store: cvm.Store, sess: cvm.Session) -> None:
    put_project(store, "docs/a", "plain words here")
    nothing = sess.recall("xylophone")
    assert (nothing.reason, nothing.pages) == ("no_match", [])
    empty = sess.recall("!!! ...")
    assert (empty.reason, empty.pages) == ("no_match", [])
    assert empty.detail != ""
    blank = sess.recall("")
    assert (blank.reason, blank.pages) == ("no_match", [])
    assert blank.detail != ""
    # FTS5 syntax in a query is searched for as words, never an error.
    odd = sess.recall('plain" OR NOT (here* NEAR')
    assert (odd.reason, keys(odd)) == ("ok", ["docs/a"])
    assert store.faults().counts["silent_recall"] == 0


def test_denied_when_only_another_sessions_page_matches(store: cvm.Store) -> None:
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    put_session(store, "s2", "notes/secret", "the zebra password")
    put_session(store, "s1", "notes/mine", "my own quokka note")
    put_project(store, "docs/shared", "a shared okapi page")

    denied = s1.recall("zebra")
    assert (denied.reason, denied.pages) == ("denied", [])
    assert denied.detail != ""
    assert (s2.recall("zebra").reason, keys(s2.recall("zebra"))) == ("ok", ["notes/secret"])

    own = s1.recall("quokka")
    assert (own.reason, keys(own)) == ("ok", ["notes/mine"])
    assert s2.recall("quokka").reason == "denied"
    for session in (s1, s2):
        shared = session.recall("okapi")
        assert (shared.reason, keys(shared)) == ("ok", ["docs/shared"])

    # Visible and hidden matches together: only the visible ones, reason ok.
    mixed = s1.recall("zebra quokka")
    assert (mixed.reason, keys(mixed)) == ("ok", ["notes/mine"])
    assert store.faults().counts["silent_recall"] == 0


def test_own_page_is_found_even_when_many_hidden_pages_rank_above_it(store: cvm.Store) -> None:
    """Matches exist in pages this session may see, so the answer is ``ok``, never ``denied``.

    ``denied`` means "matches exist, but only in pages this session may not see".
    """
    s1 = store.session("s1", project=PROJECT)
    for index in range(30):
        put_session(store, "s2", f"notes/{index}", "zebra zebra zebra")
    put_session(store, "s1", "notes/mine", "a longer note about many things with one zebra in it")
    found = s1.recall("zebra")
    assert (found.reason, keys(found)) == ("ok", ["notes/mine"])


def test_own_page_shadows_the_project_page_with_the_same_key(store: cvm.Store) -> None:
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    put_project(store, "notes/x", "project capybara")
    put_session(store, "s1", "notes/x", "session capybara")
    found = s1.recall("capybara")
    assert (found.reason, [page.content for page in found.pages]) == ("ok", ["session capybara"])
    other = s2.recall("capybara")
    assert (other.reason, [page.content for page in other.pages]) == ("ok", ["project capybara"])


def test_other_projects_are_invisible_and_not_denied(store: cvm.Store, sess: cvm.Session) -> None:
    put_project(store, "docs/q", "narwhal facts", project="q")
    found = sess.recall("narwhal")
    assert (found.reason, found.pages) == ("no_match", [])
    there = store.session("s9", project="q").recall("narwhal")
    assert (there.reason, keys(there)) == ("ok", ["docs/q"])


# --- the index follows writes -------------------------------------------------------------------


def test_index_follows_overwrite_and_delete(store: cvm.Store, sess: cvm.Session) -> None:
    put_project(store, "docs/a", "ancient scrolls")
    assert keys(sess.recall("ancient")) == ["docs/a"]
    put_project(store, "docs/a", "modern phrases", expected_version=1)
    assert sess.recall("ancient").reason == "no_match"
    assert sess.recall("scrolls").reason == "no_match"
    modern = sess.recall("modern")
    assert (modern.reason, keys(modern), modern.pages[0].version) == ("ok", ["docs/a"], 2)
    assert modern.pages[0].content == "modern phrases"

    store.put(
        "docs/a", type="evidence", content=None, op="delete", project=PROJECT, expected_version=2
    )
    assert sess.recall("modern").reason == "no_match"
    assert sess.recall("phrases").reason == "no_match"

    put_project(store, "docs/a", "reborn modern", expected_version=3)
    back = sess.recall("modern")
    assert (back.reason, keys(back), back.pages[0].version) == ("ok", ["docs/a"], 4)


def test_session_overwrite_is_followed(store: cvm.Store, sess: cvm.Session) -> None:
    sess.stage("notes/n", type="evidence", content="first draft aardvark", provenance=URI)
    sess.end_turn()
    assert keys(sess.recall("aardvark")) == ["notes/n"]
    sess.stage(
        "notes/n", type="evidence", content="second draft", provenance=URI, expected_version=1
    )
    sess.end_turn()
    assert sess.recall("aardvark").reason == "no_match"
    assert keys(sess.recall("draft")) == ["notes/n"]
    assert sess.recall("draft").pages[0].content == "second draft"


def test_several_versions_between_recalls_index_only_the_head(
    store: cvm.Store, sess: cvm.Session
) -> None:
    put_project(store, "docs/a", "one alpha")
    assert keys(sess.recall("alpha")) == ["docs/a"]
    put_project(store, "docs/a", "two beta", expected_version=1)
    put_project(store, "docs/a", "three gamma", expected_version=2)
    assert sess.recall("alpha").reason == "no_match"
    assert sess.recall("beta").reason == "no_match"
    assert keys(sess.recall("gamma")) == ["docs/a"]


def test_pages_written_after_a_recall_are_found(store: cvm.Store, sess: cvm.Session) -> None:
    put_project(store, "docs/1", "first wombat")
    assert keys(sess.recall("wombat")) == ["docs/1"]
    put_project(store, "docs/2", "second wombat")
    sess.stage("notes/3", type="evidence", content="third wombat", provenance=URI)
    sess.end_turn()
    result = sess.tool_call("grep", {"pattern": "w"}, lambda pattern: "fourth wombat")
    assert sorted(keys(sess.recall("wombat"))) == sorted(
        ["docs/1", "docs/2", "notes/3", result.key]
    )


def test_index_survives_reopen(db_path: Path) -> None:
    with cvm.Store.open(db_path) as store:
        put_project(store, "docs/1", "first ocelot")
        assert keys(store.session("s1", project=PROJECT).recall("ocelot")) == ["docs/1"]
        put_project(store, "docs/2", "second ocelot")
    with cvm.Store.open(db_path) as store:
        found = store.session("s1", project=PROJECT).recall("ocelot")
        assert sorted(keys(found)) == ["docs/1", "docs/2"]


# --- custom backends ----------------------------------------------------------------------------


class Exploding:
    def search(self, store: Any, project: str, query: str, limit: int) -> cvm.RecallHits:
        raise RuntimeError("index offline")


class Fixed:
    def __init__(self, hits: cvm.RecallHits) -> None:
        self.hits = hits
        self.calls: list[tuple[str, str, int]] = []

    def search(self, store: Any, project: str, query: str, limit: int) -> cvm.RecallHits:
        self.calls.append((project, query, limit))
        return self.hits


def test_backend_that_raises_is_backend_error_not_silent(tmp_path: Path) -> None:
    with cvm.Store.open(tmp_path / "x.db", recall=Exploding()) as store:
        sess = store.session("s1", project=PROJECT)
        found = sess.recall("anything")
        assert (found.reason, found.pages) == ("backend_error", [])
        assert "index offline" in found.detail
        assert found.detail == "RuntimeError: index offline"
        assert fault_rows(store) == []
        assert store.faults().counts["silent_recall"] == 0


def test_backend_returning_nothing_without_reason_is_one_silent_recall(tmp_path: Path) -> None:
    backend = Fixed(cvm.RecallHits([], None))
    with cvm.Store.open(tmp_path / "x.db", recall=backend) as store:
        sess = store.session("s1", project=PROJECT)
        found = sess.recall("anything", limit=7)
        assert (found.reason, found.pages) == ("backend_error", [])
        assert found.detail != ""
        assert backend.calls == [(PROJECT, "anything", 7)]
        assert fault_rows(store) == [("s1", "silent_recall", None)]
        report = store.faults(session="s1", events=True)
        assert (report.counts["silent_recall"], report.faults) == (1, 1)
        assert [(e["session"], e["turn"], e["kind"]) for e in report.events] == [
            ("s1", 0, "silent_recall")
        ]


def test_backend_saying_no_match_is_no_match_without_fault(tmp_path: Path) -> None:
    backend = Fixed(cvm.RecallHits([], "no_match", "nothing indexed"))
    with cvm.Store.open(tmp_path / "x.db", recall=backend) as store:
        found = store.session("s1", project=PROJECT).recall("anything")
        assert (found.reason, found.pages, found.detail) == ("no_match", [], "nothing indexed")
        assert fault_rows(store) == []


def test_backend_hits_are_filtered_by_visibility(tmp_path: Path) -> None:
    backend = Fixed(cvm.RecallHits([("notes/secret", "s2"), ("docs/a", "")]))
    with cvm.Store.open(tmp_path / "x.db", recall=backend) as store:
        put_project(store, "docs/a", "shared")
        put_session(store, "s2", "notes/secret", "hidden")
        found = store.session("s1", project=PROJECT).recall("q")
        assert (found.reason, keys(found)) == ("ok", ["docs/a"])
        backend.hits = cvm.RecallHits([("notes/secret", "s2")])
        denied = store.session("s1", project=PROJECT).recall("q")
        assert (denied.reason, denied.pages) == ("denied", [])
        assert fault_rows(store) == []


# --- refetch ------------------------------------------------------------------------------------


def test_recalling_an_evicted_page_is_one_refetch(store: cvm.Store, sess: cvm.Session) -> None:
    result = sess.tool_call("read_file", {"path": "a.py"}, reader("kubernetes manifest " * 30))
    full = sess.assemble(BIG)
    assert [(item.key, item.fidelity) for item in full.items] == [(result.key, cvm.Fidelity.FULL)]
    evicted = sess.assemble(10)
    assert evicted.items == []
    found = sess.recall("kubernetes")
    assert (found.reason, keys(found)) == ("ok", [result.key])
    assert fault_rows(store) == [("s1", "refetch", result.key)]
    assert store.faults(session="s1").counts["refetch"] == 1


@pytest.mark.parametrize("budget", ["full", "degraded"])
def test_recalling_a_page_in_the_last_prompt_is_no_refetch(
    store: cvm.Store, sess: cvm.Session, budget: str
) -> None:
    result = sess.tool_call(
        "read_file",
        {"path": "a.py"},
        reader(" ".join(f"kube{i}" for i in range(300)) + " kubernetes"),
    )
    tokens = store.page(result.key, project=PROJECT, session="s1").tokens
    assembly = sess.assemble(BIG if budget == "full" else tokens // 2)
    fidelity = {item.key: item.fidelity for item in assembly.items}.get(result.key)
    assert fidelity is not None
    assert (fidelity is cvm.Fidelity.FULL) == (budget == "full")
    found = sess.recall("kubernetes")
    assert (found.reason, keys(found)) == ("ok", [result.key])
    assert fault_rows(store) == []


def test_recalling_a_page_never_in_a_prompt_is_no_refetch(
    store: cvm.Store, sess: cvm.Session
) -> None:
    put_project(store, "docs/other", "an unrelated page about gardening")
    sess.assemble(BIG)  # a prompt exists, but never held the page below
    result = sess.tool_call("read_file", {"path": "a.py"}, reader("kubernetes manifest"))
    found = sess.recall("kubernetes")
    assert (found.reason, keys(found)) == ("ok", [result.key])
    assert fault_rows(store) == []


def test_another_sessions_prompt_does_not_make_a_refetch(store: cvm.Store) -> None:
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    put_project(store, "docs/k", "kubernetes notes " * 10)
    s2.assemble(BIG)
    s2.assemble(5)
    found = s1.recall("kubernetes")
    assert (found.reason, keys(found)) == ("ok", ["docs/k"])
    assert fault_rows(store) == []
    s2.recall("kubernetes")
    assert fault_rows(store) == [("s2", "refetch", "docs/k")]


# --- the fault report ---------------------------------------------------------------------------


def build_faults(store: cvm.Store) -> str:
    """Two sessions with known faults, alerts and hits; returns s1's evidence key.

    s1: hits 3 (resolved repeat, resident repeat, resolve), alert 1, duplicate_tool 1 (turn 1),
    refetch 1 (turn 1) -> thrash (2 + 1) / (3 + 1) = 0.75.
    s2: duplicate_tool 1, hit 1 -> thrash 1 / 2 = 0.5.
    All: faults 3, alerts 1, hits 4 -> thrash 4 / 5 = 0.8.
    """
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    text = reader("kubernetes manifest " * 30)
    first = s1.tool_call("read_file", {"path": "a.py"}, text)
    assert s1.tool_call("read_file", {"path": "a.py"}, text).source == "resolved"
    s1.assemble(BIG)
    assert s1.tool_call("read_file", {"path": "a.py"}, text).source == "resident"
    s1.end_turn()
    assert s1.tool_call("read_file", {"path": "a.py"}, text, fresh=True).source == "executed"
    s1.assemble(10)
    assert s1.recall("kubernetes").reason == "ok"
    s1.resolve(first.key)

    other = s2.tool_call("read_file", {"path": "b.py"}, reader("b contents"))
    s2.tool_call("read_file", {"path": "b.py"}, reader("b contents"), fresh=True)
    s2.resolve(other.key)
    return first.key


def test_fault_report_numbers_and_thrash(store: cvm.Store) -> None:
    key = build_faults(store)
    s1 = store.faults(session="s1")
    assert (s1.faults, s1.alerts, s1.hits, s1.physical_insufficiency) == (2, 1, 3, 0)
    assert s1.thrash == (s1.faults + s1.alerts) / (s1.hits + 1) == 0.75
    assert s1.counts == {
        "refetch": 1,
        "duplicate_tool": 1,
        "pinned_invariant_miss": 0,
        "post_compaction_bootstrap": 0,
        "silent_recall": 0,
        "flush_miss": 0,
        "stale_serve": 0,
        "duplicate_signature": 1,
        "physical_insufficiency": 0,
    }
    assert set(s1.counts) == {kind.value for kind in cvm.FaultKind}
    assert s1.events == []

    s2 = store.faults(session="s2")
    assert (s2.faults, s2.alerts, s2.hits) == (1, 0, 1)
    assert s2.thrash == 0.5

    everything = store.faults()
    assert (everything.faults, everything.alerts, everything.hits) == (3, 1, 4)
    assert everything.thrash == (everything.faults + everything.alerts) / (everything.hits + 1)
    assert everything.thrash == 0.8
    assert everything.counts["duplicate_tool"] == 2
    assert everything.counts == {kind: s1.counts[kind] + s2.counts[kind] for kind in s1.counts}

    events = store.faults(session="s1", events=True).events
    assert [(e["session"], e["turn"], e["kind"], e["key"]) for e in events] == [
        ("s1", 0, "duplicate_signature", key),
        ("s1", 1, "duplicate_tool", key),
        ("s1", 1, "refetch", key),
    ]
    assert all(e["at"] for e in events)
    all_events = store.faults(events=True).events
    assert [(e["session"], e["kind"]) for e in all_events] == [
        ("s1", "duplicate_signature"),
        ("s1", "duplicate_tool"),
        ("s1", "refetch"),
        ("s2", "duplicate_tool"),
    ]


def test_empty_fault_report(store: cvm.Store) -> None:
    report = store.faults(session="nobody", events=True)
    assert report.counts == {kind.value: 0 for kind in cvm.FaultKind}
    assert (report.faults, report.alerts, report.hits, report.thrash, report.events) == (
        0,
        0,
        0,
        0.0,
        [],
    )


# --- clawvm faults ------------------------------------------------------------------------------


def cli(db: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--db", str(db), *args], prog_name="clawvm")


def test_cli_faults_json_matches_the_store(db_path: Path) -> None:
    with cvm.Store.open(db_path) as store:
        build_faults(store)
        expected = {name: store.faults(session=name) for name in ("s1", "s2")}
        expected_all = store.faults()
    for name, report in expected.items():
        result = cli(db_path, "faults", "--session", name, "--json")
        assert result.exit_code == 0, result.output
        assert result.stderr == ""
        assert json.loads(result.stdout) == dataclasses.asdict(report)
    result = cli(db_path, "--json", "faults")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["faults"], data["alerts"], data["hits"], data["thrash"]) == (3, 1, 4, 0.8)
    assert data == dataclasses.asdict(expected_all)


def test_cli_faults_events(db_path: Path) -> None:
    with cvm.Store.open(db_path) as store:
        key = build_faults(store)
        expected = store.faults(session="s1", events=True)
    result = cli(db_path, "faults", "--session", "s1", "--events", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(e["session"], e["turn"], e["kind"], e["key"]) for e in data["events"]] == [
        ("s1", 0, "duplicate_signature", key),
        ("s1", 1, "duplicate_tool", key),
        ("s1", 1, "refetch", key),
    ]
    assert data["events"] == expected.events

    table = cli(db_path, "faults", "--session", "s1", "--events")
    assert table.exit_code == 0, table.output
    assert table.stderr == ""
    lines = table.stdout.splitlines()
    assert "refetch\t1" in lines
    assert "duplicate_tool\t1" in lines
    assert "(hits)\t3" in lines
    assert "(thrash)\t0.750" in lines
    event_lines = [line for line in lines if line.startswith("s1\t")]
    assert [line.split("\t")[:4] for line in event_lines] == [
        ["s1", "0", "duplicate_signature", key],
        ["s1", "1", "duplicate_tool", key],
        ["s1", "1", "refetch", key],
    ]


def test_cli_faults_on_a_missing_database_is_one_error_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for args in (["faults"], ["faults", "--json"], ["faults", "--session", "s1", "--events"]):
        result = cli(missing, *args)
        assert result.exit_code == 1
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("error:")
        assert "Traceback" not in result.output
    assert not missing.exists()


def test_catching_up_starts_from_the_journal_entries_since_the_watermark(
    store: cvm.Store, sess: cvm.Session
) -> None:
    """The plan reads this turn's entries first (ix_journal_event_id), never every version."""
    from clawvm_store.recall import _CHANGED

    for i in range(30):
        put_project(store, f"ev/{i:02d}", f"note number {i} about parsers")
    with store.db.transaction(write=False) as conn:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            sql = str(_CHANGED["sqlite"]).replace(":b_since", "?")
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", (0,)).all()
            plan = [row[3] for row in rows]
            assert plan[0] == (
                "SEARCH journal USING COVERING INDEX ix_journal_event_id (event_id>?)"
            )
            assert not any(step.startswith("SCAN") for step in plan)
        else:
            # Thirty rows are a sequential scan's size to PostgreSQL's planner: forbid that
            # to learn whether the index can serve the watermark's range at all.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            sql = str(_CHANGED["postgresql"]).replace(":b_since", "0")
            plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}").all()]
            assert not any("Seq Scan on journal" in step for step in plan)
            assert any("Index Cond: (event_id > 0)" in step for step in plan)
            assert any("on ix_journal_event_id" in step for step in plan)
    assert keys(sess.recall("parsers", limit=3)) == ["ev/00", "ev/01", "ev/02"]
