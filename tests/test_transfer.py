"""Export to JSON Lines and import: the round trip gives an identical store, row for row.

One rich store is built per module (every page type, evidence with provenance, two projects,
three sessions, staged, applied, rejected and discarded journal entries, a deletion, an append,
a tool call, an assembly, a recall, faults) and kept open while the tests read it. Each test
imports into a fresh store of its own.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint

import clawvm_store as cvm
from clawvm_store import schema as t
from clawvm_store import transfer
from clawvm_store.integrations.langgraph import ClawVMSaver
from clawvm_store.transfer import TABLE_NAMES, export_jsonl, import_jsonl

T = cvm.PageType
PREF_FIELDS = {"statement": "Use tabs", "scope": "project", "provenance": "user"}


# --- the source store -----------------------------------------------------------------------


def populate(store: cvm.Store) -> None:
    """Every kind of row the schema has, in two projects."""
    store.put(
        "policy/agents",
        type=T.BOOTSTRAP,
        content="# Agent rules\nAlways run the tests.\nNever push to main.",
        project="p",
    )
    store.put(
        "rules/data",
        type=T.CONSTRAINT,
        content="Never delete user data.\nAsk before a migration.",
        project="p",
        scope="project",
    )
    store.put(
        "pref/tabs",
        type=T.PREFERENCE,
        content="Indent with tabs, never spaces. Ünïcödé → kept as is.",
        project="p",
        structured=PREF_FIELDS,
        priority=0.25,
    )
    store.put(
        "plan/main", type=T.PLAN, content="Goal: ship\n- [ ] parser", project="p", session="s1"
    )
    store.put(
        "plan/main",
        type=T.PLAN,
        content="Goal: ship\n- [x] parser\n- [ ] tests",
        project="p",
        session="s1",
        expected_version=1,
    )
    store.put(
        "evidence/log",
        type=T.EVIDENCE,
        content="\n".join(f"line {i}: result {i * i} ok" for i in range(40)),
        project="p",
        session="s1",
        provenance={"uri": "file:///var/log/build.log"},
        idempotency_key="log-1",
    )
    store.put(
        "evidence/quote",
        type=T.EVIDENCE,
        content="The preference page says tabs.",
        project="p",
        session="s1",
        provenance={"page": "pref/tabs"},
    )
    store.put(
        "conv/1",
        type=T.CONVERSATION,
        content="user: hello\nassistant: hi, what shall we build?",
        project="p",
        session="s1",
    )
    store.put(
        "scratch/tmp", type=T.PLAN, content="Goal: scratch\n- [ ] x", project="p", session="s1"
    )
    store.set_writers("q", ["alice"])
    store.put("plan/q", type=T.PLAN, content="Goal: other project\n- [ ] a", project="q")

    s2 = store.session("s2", project="p", principal="bob")
    s2.stage("plan/s2", type=T.PLAN, content="Goal: s2 work\n- [ ] one")
    s2.stage("pref/shared", type=T.PREFERENCE, content="Prefer small commits.", scope="project")
    s2.close()

    s1 = store.session("s1", project="p")
    s1.tool_call("grep", {"pattern": "parser"}, run=lambda **kw: "src/parser.py:1: def parse()")
    s1.stage("conv/1", op="append", content="user: the parser first")
    s1.stage("plan/main", type=T.PLAN, content="Goal: ship\n- [x] everything", expected_version=99)
    s1.stage("scratch/tmp", op="delete", expected_version=1)
    s1.end_turn()
    s1.assemble(500)
    s1.recall("parser tests")
    s1.stage("plan/main", type=T.PLAN, content="Goal: lost\n- [ ] x", expected_version=2)
    s1.reset(writeback=False)  # the staged update becomes a flush_miss fault
    s1.stage("plan/main", type=T.PLAN, content="Goal: ship\n- [ ] still staged", expected_version=2)

    s3 = store.session("s3", project="q", principal="alice")
    s3.tool_call("ls", {"path": "."}, run=lambda **kw: "README.md\nsetup.cfg")
    s3.end_turn()

    # A LangGraph thread kept in the same store: byte columns travel as base64.
    saver = ClawVMSaver(store)
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"messages": ["hi", "Ünïcödé"]}
    config = saver.put(
        {"configurable": {"thread_id": "lg-1", "checkpoint_ns": ""}},
        checkpoint,
        {"source": "input", "step": -1},
        {},
    )
    saver.put_writes(config, [("messages", ["more"]), ("__error__", "boom")], task_id="task-1")

    # A Claude Agent SDK transcript mirrored into the store (its rows as the mirror writes them).
    with store.db.transaction() as conn:
        conn.execute(
            t.claude_transcripts.insert(),
            {
                "id": 1,
                "project_key": "repo",
                "session_id": "sid-1",
                "subpath": "",
                "entries": 1,
                "mtime_ms": 1,
                "summary": None,
                "projected": 0,
                "turns": 0,
            },
        )
        conn.execute(
            t.claude_entries.insert(),
            {
                "transcript_id": 1,
                "seq": 0,
                "uuid": "u-1",
                "entry": '{"type": "user", "uuid": "u-1"}',
            },
        )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cvm.Store]:
    with cvm.Store.open(tmp_path_factory.mktemp("source") / "source.db") as store:
        populate(store)
        assert store.check().ok
        yield store


@pytest.fixture(scope="module")
def exported(source: cvm.Store) -> str:
    out = io.StringIO()
    export_jsonl(source, out)
    return out.getvalue()


@pytest.fixture
def target(db_target: str) -> Iterator[cvm.Store]:
    # Exported from SQLite, imported into either backend: the way to move to PostgreSQL.
    with cvm.Store.open(db_target) as store:
        yield store


# --- helpers --------------------------------------------------------------------------------

PRIMARY_KEYS = {
    table.name: [column.name for column in table.primary_key.columns]
    for table in transfer.TABLE_ORDER
}


def rows(store: cvm.Store, name: str) -> list[dict[str, Any]]:
    """Every row of a table, in primary-key order."""
    order = ", ".join(PRIMARY_KEYS[name])
    return store.query(f"SELECT * FROM {name} ORDER BY {order}")


def exported_rows(store: cvm.Store, name: str) -> list[dict[str, Any]]:
    """A table's rows as an export writes them (sessions travel without their owner)."""
    found = rows(store, name)
    if name == "sessions":
        found = [{**row, "owner": None} for row in found]
    return found


def meta(store: cvm.Store) -> dict[str, str]:
    return {
        row["name"]: row["value"]
        for row in store.query("SELECT name, value FROM meta")
        if row["name"] != "fts_event"
    }


def observable(store: cvm.Store) -> dict[str, Any]:
    """Everything the public API reports about a store."""
    state: dict[str, Any] = {
        "pages": store.pages(include_deleted=True),
        "journal": store.journal_entries(),
        "faults": store.faults(events=True),
    }
    for summary in store.pages(include_deleted=True):
        where = {"project": summary.project, "session": summary.session}
        history = store.history(summary.key, **where)
        state[f"history {summary.project}/{summary.session}/{summary.key}"] = history
        for version in history:
            if version.deleted:
                continue
            for fidelity in cvm.POLICIES[version.type].ladder:
                page = store.page(summary.key, fidelity=fidelity, version=version.version, **where)
                state[f"{summary.key}@{version.version}/{fidelity.value}"] = page
    for session in ("s1", "s2", "s3"):
        state[f"faults {session}"] = store.faults(session=session, events=True)
    return state


def round_trip(source: cvm.Store, target: cvm.Store, **filters: str) -> str:
    out = io.StringIO()
    export_jsonl(source, out, **filters)
    import_jsonl(target, io.StringIO(out.getvalue()))
    return out.getvalue()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def logical_dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


# --- the round trip -------------------------------------------------------------------------


def test_round_trip_gives_an_identical_store(
    source: cvm.Store, exported: str, tmp_path: Path
) -> None:
    path = tmp_path / "export.jsonl"
    summary = export_jsonl(source, path)
    assert path.read_text(encoding="utf-8") == exported
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert summary.bytes_written == path.stat().st_size
    assert summary.total == len(exported.splitlines()) - 1
    assert all(summary.counts[name] > 0 for name in TABLE_NAMES)

    with cvm.Store.open(tmp_path / "copy.db") as copy:
        imported = import_jsonl(copy, path)
        assert imported.counts == summary.counts
        assert copy.check().ok
        for name in TABLE_NAMES:
            assert rows(copy, name) == exported_rows(source, name), name
        assert meta(copy) == meta(source)  # the creation time travels too
        assert observable(copy) == observable(source)
        again = io.StringIO()
        export_jsonl(copy, again)
        assert again.getvalue() == exported


def test_the_journal_outcomes_survive(source: cvm.Store, target: cvm.Store, exported: str) -> None:
    import_jsonl(target, io.StringIO(exported))
    states = {record.state for record in target.journal_entries()}
    assert states == {"staged", "applied", "rejected", "quarantined"}
    reasons = {record.reason for record in target.journal_entries() if record.reason}
    assert {"DESTRUCTIVE_OP", "DISCARDED"} <= reasons
    assert [r.lsn for r in target.journal_entries(session="s1", state="staged")] == [
        r.lsn for r in source.journal_entries(session="s1", state="staged")
    ]
    with pytest.raises(cvm.NotFound):  # the deletion is a deletion in the copy too
        target.page("scratch/tmp", project="p", session="s1")
    assert target.page("conv/1", project="p", session="s1").content.endswith(
        "user: the parser first"
    )


def test_exports_are_deterministic(source: cvm.Store, exported: str) -> None:
    out = io.StringIO()
    export_jsonl(source, out)
    assert out.getvalue() == exported
    lines = exported.splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "clawvm-export/1"
    assert header["encoding"] == source.encoding
    assert header["schema_revision"] == source.db.current_revision()
    assert header["filter"] == {"project": None, "session": None}
    for line in lines:
        assert line == json.dumps(
            json.loads(line), ensure_ascii=False, sort_keys=True, separators=(",", ":")
        )
    tables = [json.loads(line)["table"] for line in lines[1:]]
    assert tables == sorted(tables, key=TABLE_NAMES.index)
    assert "Ünïcödé" in exported


def test_export_refuses_an_existing_file(source: cvm.Store, tmp_path: Path) -> None:
    path = tmp_path / "taken.jsonl"
    path.write_text("keep me", encoding="utf-8")
    with pytest.raises(cvm.InvalidInput, match="already exists"):
        export_jsonl(source, path)
    assert path.read_text(encoding="utf-8") == "keep me"


def test_an_imported_session_is_owned_by_nobody_and_resumes(
    source: cvm.Store, target: cvm.Store, exported: str
) -> None:
    # s1 is open in the source store, in this very process: its owner is alive.
    assert rows(source, "sessions")[0]["owner"] is not None
    import_jsonl(target, io.StringIO(exported))
    assert {row["owner"] for row in rows(target, "sessions")} == {None}
    resumed = target.session("s1", project="p")
    assert [entry.key for entry in resumed.staged()] == ["plan/main"]
    found = resumed.recall("parser")  # the full-text index is rebuilt in the copy
    assert found.reason == "ok"
    assert "plan/main" in [page.key for page in found.pages]
    resumed.end_turn()
    assert target.page("plan/main", project="p", session="s1").version == 3
    assert target.check().ok


def test_empty_store_round_trip(tmp_path: Path) -> None:
    with cvm.Store.open(tmp_path / "a.db") as empty, cvm.Store.open(tmp_path / "b.db") as copy:
        text = round_trip(empty, copy)
        assert len(text.splitlines()) == 1
        assert copy.check().ok
        assert meta(copy) == meta(empty)


# --- filters --------------------------------------------------------------------------------


def assert_subset(source: cvm.Store, copy: cvm.Store) -> None:
    for name in TABLE_NAMES:
        mine = exported_rows(source, name)
        for row in rows(copy, name):
            assert row in mine, (name, row)


def test_project_filter(source: cvm.Store, target: cvm.Store, tmp_path: Path) -> None:
    text = round_trip(source, target, project="q")
    assert json.loads(text.splitlines()[0])["filter"] == {"project": "q", "session": None}
    assert target.check().ok
    assert_subset(source, target)
    for name in ("sessions", "pages", "journal", "lifecycle_events", "tool_calls", "faults"):
        assert {row["project"] for row in rows(target, name)} <= {"q"}, name
    assert [row["name"] for row in rows(target, "projects")] == ["q"]
    assert rows(target, "projects")[0]["writers"] == '["alice"]'
    assert [row["id"] for row in rows(target, "sessions")] == ["s3"]
    assert target.pages(include_deleted=True) == source.pages(project="q", include_deleted=True)
    assert target.journal_entries() == [r for r in source.journal_entries() if r.project == "q"]
    assert len(rows(target, "tool_calls")) == 1

    with cvm.Store.open(tmp_path / "p.db") as other:
        round_trip(source, other, project="p")
        assert other.check().ok
        assert_subset(source, other)
        assert {row["name"] for row in rows(other, "projects")} == {"p"}
        assert {row["id"] for row in rows(other, "sessions")} == {"s1", "s2"}
        assert other.pages(include_deleted=True) == source.pages(project="p", include_deleted=True)
        for name in ("assemblies", "assembly_items", "faults", "page_versions"):
            assert rows(other, name), name


def test_session_filter_takes_the_session_and_the_project_pages_it_sees(
    source: cvm.Store, target: cvm.Store
) -> None:
    text = round_trip(source, target, session="s1")
    assert json.loads(text.splitlines()[0])["filter"] == {"project": "p", "session": "s1"}
    assert target.check().ok
    assert_subset(source, target)
    assert [row["id"] for row in rows(target, "sessions")] == ["s1"]
    assert [row["name"] for row in rows(target, "projects")] == ["p"]
    keys = {(page.session, page.key) for page in target.pages(include_deleted=True)}
    assert keys == {
        (page.session, page.key)
        for page in source.pages(project="p", include_deleted=True)
        if page.session in ("s1", None)
    }
    assert (None, "pref/shared") in keys  # a project page s2 wrote: s1 sees it
    assert ("s2", "plan/s2") not in keys
    # Every s1 entry, plus the entries that wrote the project pages it holds (s2's included).
    s1_lsns = {r.lsn for r in source.journal_entries(session="s1")}
    lsns = {r.lsn for r in target.journal_entries()}
    assert s1_lsns <= lsns
    assert {r.session for r in target.journal_entries()} == {"s1", None, "s2"}
    version_lsns = {row["lsn"] for row in rows(target, "page_versions")}
    assert lsns == s1_lsns | version_lsns
    assert {row["session_id"] for row in rows(target, "tool_calls")} == {"s1"}
    assert {row["session_id"] for row in rows(target, "assemblies")} == {"s1"}
    assert {row["session_id"] for row in rows(target, "faults")} == {"s1"}
    assert target.faults(session="s1", events=True) == source.faults(session="s1", events=True)
    resumed = target.session("s1", project="p")
    assert resumed.page("policy/agents").content.startswith("# Agent rules")


def test_filter_errors(source: cvm.Store, tmp_path: Path) -> None:
    with pytest.raises(cvm.NotFound, match="no project"):
        export_jsonl(source, io.StringIO(), project="nope")
    with pytest.raises(cvm.NotFound, match="no session"):
        export_jsonl(source, io.StringIO(), session="nope")
    with pytest.raises(cvm.InvalidInput, match="belongs to project 'p'"):
        export_jsonl(source, io.StringIO(), project="q", session="s1")
    path = tmp_path / "never.jsonl"
    with pytest.raises(cvm.NotFound):
        export_jsonl(source, path, session="nope")
    assert not path.exists()  # no partial file is left behind


# --- refusals -------------------------------------------------------------------------------


def edit_header(text: str, **changes: Any) -> str:
    lines = text.splitlines(keepends=True)
    header = json.loads(lines[0])
    header.update(changes)
    return json.dumps(header) + "\n" + "".join(lines[1:])


def replace_line(text: str, number: int, line: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[number - 1] = line + "\n"
    return "".join(lines)


def first_line_of(text: str, table: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if number > 1 and json.loads(line)["table"] == table:
            return number
    raise AssertionError(table)


def edit_row(text: str, table: str, offset: int = 0, **changes: Any) -> str:
    number = first_line_of(text, table) + offset
    record = json.loads(text.splitlines()[number - 1])
    record["row"].update(changes)
    return replace_line(text, number, json.dumps(record))


def tamper_content(text: str) -> str:
    number = first_line_of(text, "representations")
    line = text.splitlines()[number - 1]
    return replace_line(text, number, line.replace("Agent rules", "Agent RULES"))


def middle_not_json(text: str) -> str:
    middle = first_line_of(text, "page_versions")
    return replace_line(text, middle, '{"table": "page_versions", "row": {')


BAD_INPUTS: dict[str, tuple[Any, str]] = {
    "not JSON in the middle": (middle_not_json, r"^line \d+ is not JSON"),
    "header not JSON": (lambda x: "hello world\n" + x, "line 1 is not JSON; not a clawvm export"),
    "header without format": (
        lambda x: '{"tables": []}\n' + x,
        "line 1 is not a clawvm export header",
    ),
    "unknown format": (
        lambda x: edit_header(x, format="clawvm-export/9"),
        "unknown export format 'clawvm-export/9'",
    ),
    "empty file": (lambda x: "", "the file is empty"),
    "other encoding": (
        lambda x: edit_header(x, encoding="o200k_base"),
        "the export counts tokens with 'o200k_base'",
    ),
    "other schema revision": (
        lambda x: edit_header(x, schema_revision="0001"),
        "schema revision '0001'",
    ),
    "truncated": (lambda x: "".join(x.splitlines(keepends=True)[:-3]), "the export is truncated"),
    "an extra record": (
        lambda x: x + x.splitlines(keepends=True)[-1],
        "more claude_entries records than the",
    ),
    "unknown table": (
        lambda x: replace_line(x, 3, '{"table": "secrets", "row": {}}'),
        "line 3: unknown table 'secrets'",
    ),
    "unknown column": (
        lambda x: edit_row(x, "projects", extra=1),
        "the projects row has unknown column 'extra'",
    ),
    "wrong type": (
        lambda x: edit_row(x, "journal", lsn="1"),
        r"journal\.lsn must be int, not str",
    ),
    "integer out of range": (
        lambda x: edit_row(x, "sessions", turn=2**70),
        r"sessions\.turn is out of the 64-bit integer range",
    ),
    "null in a required column": (
        lambda x: edit_row(x, "pages", key=None),
        r"pages\.key must not be null",
    ),
    "out of order": (
        lambda x: x + x.splitlines(keepends=True)[1],
        "a projects record after claude_entries records",
    ),
    "duplicate key": (
        lambda x: edit_row(x, "projects", offset=1, name="p"),
        "projects rows the schema refuses",
    ),
    "dangling reference": (
        lambda x: edit_row(x, "page_versions", page_id=999),
        "page_versions rows the schema refuses",
    ),
    "tampered content": (tamper_content, "the export does not verify"),
    "tampered checksum": (
        lambda x: edit_row(x, "journal", checksum="0" * 64),
        "the export does not verify",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_refused_and_the_target_is_unchanged(
    case: str, exported: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, message = BAD_INPUTS[case]
    monkeypatch.setattr(transfer, "_BATCH_ROWS", 5)  # earlier rows are inserted, then rolled back
    path = tmp_path / "target.db"
    cvm.Store.open(path).close()
    before = file_digest(path)
    dump = logical_dump(path)
    with cvm.Store.open(path) as target, pytest.raises(cvm.InvalidInput, match=message) as raised:
        import_jsonl(target, io.StringIO(make(exported)))
    assert "\n" not in str(raised.value)
    assert file_digest(path) == before
    assert logical_dump(path) == dump


def test_undecodable_bytes_are_refused_with_their_line(exported: str, tmp_path: Path) -> None:
    lines = exported.encode("utf-8").splitlines(keepends=True)
    lines[4] = b'{"row": "\xff\xfe"}\n'
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines))
    with cvm.Store.open(tmp_path / "target.db") as target:
        with pytest.raises(cvm.InvalidInput, match="line 5 is not UTF-8"):
            import_jsonl(target, path)
        assert all(not rows(target, name) for name in TABLE_NAMES)


def test_a_non_empty_target_is_refused_and_unchanged(exported: str, tmp_path: Path) -> None:
    path = tmp_path / "target.db"
    with cvm.Store.open(path) as store:
        store.put("mine", type=T.PREFERENCE, content="Keep this.", structured=PREF_FIELDS)
    before = file_digest(path)
    with cvm.Store.open(path) as store:
        with pytest.raises(cvm.InvalidInput, match="not empty") as raised:
            import_jsonl(store, io.StringIO(exported))
        assert "\n" not in str(raised.value)
    assert file_digest(path) == before


def test_the_same_export_imports_once(exported: str, target: cvm.Store) -> None:
    import_jsonl(target, io.StringIO(exported))
    with pytest.raises(cvm.InvalidInput, match="not empty"):
        import_jsonl(target, io.StringIO(exported))
    assert target.check().ok


def test_a_damaged_value_is_not_exported(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    with cvm.Store.open(path) as store:
        store.put("policy/a", type=T.BOOTSTRAP, content="Rule one.")
    raw = sqlite3.connect(path)
    raw.execute("UPDATE projects SET writers = CAST(x'ff' AS TEXT)")
    raw.commit()
    raw.close()
    with cvm.Store.open(path) as store, pytest.raises(cvm.CorruptDatabase, match="projects row"):
        export_jsonl(store, io.StringIO())


# --- progress -------------------------------------------------------------------------------


def test_progress_counts_increase_to_the_total(
    source: cvm.Store, target: cvm.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "_BATCH_ROWS", 7)
    seen: list[tuple[int, int]] = []
    out = io.StringIO()
    summary = export_jsonl(source, out, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, summary.total)
    assert seen[-1] == (summary.total, summary.total)
    assert len(seen) > 5
    assert all(a[0] < b[0] for a, b in pairwise(seen))
    assert {total for _, total in seen} == {summary.total}

    loaded: list[tuple[int, int]] = []
    imported = import_jsonl(
        target, io.StringIO(out.getvalue()), progress=lambda d, n: loaded.append((d, n))
    )
    assert loaded[0] == (0, imported.total)
    assert loaded[-1] == (imported.total, imported.total)
    assert len(loaded) > 5
    assert all(a[0] < b[0] for a, b in pairwise(loaded))


def test_every_exported_table_is_in_the_schema() -> None:
    exported_tables = set(TABLE_NAMES)
    others = {table.name for table in t.metadata.sorted_tables} - exported_tables
    assert others == {"meta"}  # meta travels in the header


def test_langgraph_bytes_travel_as_base64_and_bad_base64_is_refused(
    source: cvm.Store, exported: str, target: cvm.Store
) -> None:
    line = first_line_of(exported, "lg_checkpoints")
    record = json.loads(exported.splitlines()[line - 1])
    assert (
        base64.b64decode(record["row"]["checkpoint"])
        == rows(source, "lg_checkpoints")[0]["checkpoint"]
    )
    broken = edit_row(exported, "lg_writes", value="not base64!")
    number = first_line_of(exported, "lg_writes")
    with pytest.raises(
        cvm.InvalidInput, match=rf"^line {number}: lg_writes\.value is not base64 text$"
    ):
        import_jsonl(target, io.StringIO(broken))
    assert rows(target, "lg_writes") == []


def test_filtered_exports_leave_langgraph_threads_out(source: cvm.Store, target: cvm.Store) -> None:
    text = round_trip(source, target, project="p")
    header = json.loads(text.splitlines()[0])
    assert header["counts"]["lg_checkpoints"] == 0
    assert header["counts"]["lg_writes"] == 0
    assert rows(target, "lg_checkpoints") == []
