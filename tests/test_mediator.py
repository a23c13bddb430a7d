"""The tool mediator (DESIGN 1.5, "correctness before dedup"): the durable ledger, canonical
signatures, residency-aware dedup, invalidation by write calls, idempotency keys and failures.

Every test drives the real :class:`Store` on a fresh SQLite file and asserts exact outcomes: the
source of each result, how many times the tool function actually ran, the ledger rows, the
evidence pages (content, provenance, versions) and the rows of the ``faults`` table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

import clawvm_store as cvm
from clawvm_store.mediator import result_key, signature_of

PROJECT = "p"
BIG = 100_000


# --- helpers ----------------------------------------------------------------------------------


class Tool:
    """A fake tool: records every call (its keyword arguments) and returns ``output``."""

    def __init__(self, output: Any = "file contents") -> None:
        self.output = output
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.output(**kwargs) if callable(self.output) else self.output

    @property
    def runs(self) -> int:
        return len(self.calls)


@pytest.fixture
def sess(store: cvm.Store) -> cvm.Session:
    return store.session("s1", project=PROJECT)


def fault_rows(store: cvm.Store, session: str | None = None) -> list[tuple[str, str | None]]:
    """Every row of the ``faults`` table (hits included) as (kind, key), oldest first."""
    sql = "SELECT kind, key FROM faults"
    params: tuple[Any, ...] = ()
    if session is not None:
        sql += " WHERE session_id = ?"
        params = (session,)
    with store.db.transaction(write=False) as conn:
        rows = conn.exec_driver_sql(sql + " ORDER BY id", params).all()
    return [(row[0], row[1]) for row in rows]


def kinds(store: cvm.Store, session: str | None = None) -> list[str]:
    return [kind for kind, _ in fault_rows(store, session)]


def ledger(store: cvm.Store) -> list[tuple[int, str, str, str]]:
    """Every ``tool_calls`` row as (id, session, call_id, state), in insertion order."""
    with store.db.transaction(write=False) as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, session_id, call_id, state FROM tool_calls ORDER BY id"
        ).all()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def read(
    sess: cvm.Session, tool: Callable[..., Any], path: str = "a.py", **kwargs: Any
) -> cvm.ToolResult:
    return sess.tool_call("read_file", {"path": path}, tool, **kwargs)


# --- canonical signatures ---------------------------------------------------------------------


def test_signature_is_canonical_over_key_order_and_nested_order() -> None:
    one = {"pattern": "foo", "opts": {"case": False, "paths": ["a", "b"], "n": {"x": 1, "y": 2}}}
    two = {"opts": {"n": {"y": 2, "x": 1}, "paths": ["a", "b"], "case": False}, "pattern": "foo"}
    assert signature_of("grep", one) == signature_of("grep", two)
    assert re.fullmatch(r"[0-9a-f]{64}", signature_of("grep", one))
    # A different value, a different list order, or a different tool name is a different call.
    assert signature_of("grep", one) != signature_of("grep", {**one, "pattern": "bar"})
    reordered = {**one, "opts": {**one["opts"], "paths": ["b", "a"]}}
    assert signature_of("grep", one) != signature_of("grep", reordered)
    assert signature_of("grep", one) != signature_of("rg", one)


def test_repeat_with_reordered_args_is_served_and_different_args_run(sess: cvm.Session) -> None:
    tool = Tool("3 matches")
    first = sess.tool_call("grep", {"pattern": "foo", "opts": {"a": 1, "b": 2}}, tool)
    again = sess.tool_call("grep", {"opts": {"b": 2, "a": 1}, "pattern": "foo"}, tool)
    assert (first.source, again.source) == ("executed", "resolved")
    assert (again.key, again.content, again.call_id) == (first.key, "3 matches", first.call_id)
    assert tool.runs == 1
    other = sess.tool_call("grep", {"pattern": "bar", "opts": {"a": 1, "b": 2}}, tool)
    assert other.source == "executed"
    assert other.key != first.key
    assert tool.runs == 2
    history = sess.tool_history()
    assert len(history) == 2  # a served repeat is not a new ledger row
    assert history[0].signature == signature_of(
        "grep", {"pattern": "foo", "opts": {"a": 1, "b": 2}}
    )
    assert history[1].signature == signature_of(
        "grep", {"pattern": "bar", "opts": {"a": 1, "b": 2}}
    )
    assert history[0].signature != history[1].signature


# --- first call: ledger row and evidence page ---------------------------------------------------


def test_first_call_runs_once_with_keyword_args_and_writes_an_evidence_page(
    store: cvm.Store, sess: cvm.Session
) -> None:
    tool = Tool("line 1\nline 2")
    args = {"path": "src/a.py", "limit": 20}
    result = sess.tool_call("read_file", args, tool)
    assert result.source == "executed"
    assert tool.calls == [{"path": "src/a.py", "limit": 20}]
    assert (result.content, result.call_id, result.version) == ("line 1\nline 2", "t0.1", 1)
    assert result.key == result_key("read_file", signature_of("read_file", args))

    [(row_id, session_id, call_id, state)] = ledger(store)
    assert (session_id, call_id, state) == ("s1", "t0.1", "finished")
    page = store.page(result.key, project=PROJECT, session="s1")
    assert page.type is cvm.PageType.EVIDENCE
    assert page.provenance == {"tool_call": row_id}
    assert (page.content, page.version, page.fidelity) == ("line 1\nline 2", 1, cvm.Fidelity.FULL)
    assert page.scope is cvm.Scope.SESSION
    assert page.session == "s1"

    [record] = sess.tool_history()
    assert record == cvm.ToolCallRecord(
        call_id="t0.1",
        name="read_file",
        args={"path": "src/a.py", "limit": 20},
        effect="read",
        signature=signature_of("read_file", args),
        state="finished",
        result_key=result.key,
        result_version=1,
        error=None,
        turn=0,
    )
    assert kinds(store) == []  # a first call is neither a hit nor a fault


@pytest.mark.parametrize(
    ("output", "content"),
    [
        ({"b": [1, 2], "a": "é"}, '{"a":"é","b":[1,2]}'),
        ([3, {"z": None, "y": True}], '[3,{"y":true,"z":null}]'),
        (42, "42"),
        (None, "null"),
        ("", "(empty result)"),
        ("  \n\t", "(empty result)"),
        ([], "[]"),
    ],
)
def test_output_rendering(sess: cvm.Session, store: cvm.Store, output: Any, content: str) -> None:
    result = sess.tool_call("probe", {"q": 1}, Tool(output))
    assert result.content == content
    assert store.page(result.key, project=PROJECT, session="s1").content == content


# --- residency: resolved, resident, evicted -----------------------------------------------------


def test_repeat_is_resolved_then_resident_then_resolved_after_eviction(
    store: cvm.Store, sess: cvm.Session
) -> None:
    tool = Tool("alpha beta gamma " * 20)
    first = read(sess, tool)
    assert first.source == "executed"

    # No prompt recorded yet: served by resolving the page, a hit.
    again = read(sess, tool)
    assert (again.source, again.key, again.content) == ("resolved", first.key, first.content)
    assert fault_rows(store) == [("hit", first.key)]
    assert store.faults(session="s1").alerts == 0

    # In the last prompt at full fidelity: resident, a duplicate_signature alert and a hit.
    assembly = sess.assemble(BIG)
    assert [(item.key, item.fidelity) for item in assembly.items] == [
        (first.key, cvm.Fidelity.FULL)
    ]
    resident = read(sess, tool)
    assert (resident.source, resident.content, resident.call_id) == (
        "resident",
        first.content,
        first.call_id,
    )
    report = store.faults(session="s1")
    assert (report.alerts, report.hits, report.faults) == (1, 2, 0)
    assert report.counts["duplicate_signature"] == 1
    assert report.counts["duplicate_tool"] == 0

    # Evicted by a tiny budget: resolved again, a hit and no new alert.
    evicted = sess.assemble(10)
    assert evicted.items == []
    served = read(sess, tool)
    assert (served.source, served.content) == ("resolved", first.content)
    report = store.faults(session="s1")
    assert (report.alerts, report.hits, report.faults) == (1, 3, 0)
    assert kinds(store) == ["hit", "hit", "duplicate_signature", "hit"]
    assert tool.runs == 1
    assert [record.call_id for record in sess.tool_history()] == ["t0.1"]


def test_rerun_result_is_not_resident_when_the_prompt_held_an_older_version(
    store: cvm.Store, sess: cvm.Session
) -> None:
    """The last prompt held version 1; the current result is version 2: not resident.

    A harness told ``resident`` relies on the prompt it already sent, which holds the stale
    version 1 content: the repeat must be ``resolved`` (a hit), with no duplicate_signature alert.
    """
    contents = iter(["old contents v1", "new contents v2"])
    reader = Tool(lambda path: next(contents))
    first = read(sess, reader)
    assembly = sess.assemble(BIG)
    assert [(item.key, item.version, item.fidelity) for item in assembly.items] == [
        (first.key, 1, cvm.Fidelity.FULL)
    ]
    sess.tool_call("edit_file", {"path": "a.py"}, Tool("ok"), effect="write")
    rerun = read(sess, reader)
    assert (rerun.source, rerun.version) == ("executed", 2)
    repeat = read(sess, reader)
    assert (repeat.source, repeat.version, repeat.content) == ("resolved", 2, "new contents v2")
    report = store.faults(session="s1")
    assert (report.alerts, report.hits, report.faults) == (0, 1, 0)
    assert reader.runs == 2


def test_result_degraded_below_full_is_resolved_not_resident(
    store: cvm.Store, sess: cvm.Session
) -> None:
    tool = Tool(" ".join(f"word{i}" for i in range(400)))
    first = read(sess, tool)
    full_tokens = store.page(first.key, project=PROJECT, session="s1").tokens
    assembly = sess.assemble(full_tokens // 2)
    fidelities = {item.key: item.fidelity for item in assembly.items}
    assert fidelities.get(first.key) not in (None, cvm.Fidelity.FULL)
    served = read(sess, tool)
    assert (served.source, served.content) == ("resolved", first.content)
    assert store.faults(session="s1").alerts == 0
    assert tool.runs == 1


# --- call ids ---------------------------------------------------------------------------------


def test_call_ids_are_scoped_per_turn_and_unique_per_session(
    store: cvm.Store, sess: cvm.Session
) -> None:
    tool = Tool("out")
    a = sess.tool_call("grep", {"pattern": "a"}, tool)
    b = sess.tool_call("grep", {"pattern": "b"}, tool)
    served = sess.tool_call("grep", {"pattern": "a"}, tool)
    assert (a.call_id, b.call_id, served.call_id) == ("t0.1", "t0.2", "t0.1")
    sess.end_turn()
    c = sess.tool_call("grep", {"pattern": "c"}, tool)
    d = sess.tool_call("grep", {"pattern": "d"}, tool)
    assert (c.call_id, d.call_id) == ("t1.1", "t1.2")
    history = sess.tool_history()
    assert [(record.call_id, record.turn) for record in history] == [
        ("t0.1", 0),
        ("t0.2", 0),
        ("t1.1", 1),
        ("t1.2", 1),
    ]
    ids = [call_id for _, _, call_id, _ in ledger(store)]
    assert len(ids) == len(set(ids)) == 4
    # Another session numbers its own calls from t0.1.
    other = store.session("s2", project=PROJECT)
    assert other.tool_call("grep", {"pattern": "a"}, tool).call_id == "t0.1"


# --- invalidation by write calls ----------------------------------------------------------------


def test_write_on_the_same_path_invalidates_the_cached_read(
    store: cvm.Store, sess: cvm.Session
) -> None:
    contents = iter(["v1", "v2"])
    reader = Tool(lambda path: next(contents))
    editor = Tool("ok")
    first = read(sess, reader)
    wrote = sess.tool_call("edit_file", {"path": "a.py", "text": "x"}, editor, effect="write")
    assert wrote.source == "executed"
    after = read(sess, reader)
    assert (after.source, after.content, after.key, after.version) == (
        "executed",
        "v2",
        first.key,
        2,
    )
    assert reader.runs == 2
    assert kinds(store) == []  # a required re-run is not a duplicate_tool fault
    # The fresh result is cached again.
    assert read(sess, reader).source == "resolved"
    assert reader.runs == 2


def test_write_on_another_path_does_not_invalidate(store: cvm.Store, sess: cvm.Session) -> None:
    reader = Tool("a contents")
    read(sess, reader)
    sess.tool_call("edit_file", {"path": "b.py"}, Tool("ok"), effect="write")
    assert read(sess, reader).source == "resolved"
    assert reader.runs == 1


def test_list_valued_path_arguments_are_resources(sess: cvm.Session) -> None:
    reader = Tool("a contents")
    read(sess, reader)
    sess.tool_call("format", {"paths": ["c.py", "a.py"]}, Tool("ok"), effect="write")
    assert read(sess, reader).source == "executed"
    assert reader.runs == 2


def test_declared_resources_override_argument_detection(sess: cvm.Session) -> None:
    reader = Tool("a contents")
    read(sess, reader)
    # Declares another resource: the path argument is not used.
    sess.tool_call("edit_file", {"path": "a.py"}, Tool("ok"), effect="write", resources=["c.py"])
    assert read(sess, reader).source == "resolved"
    assert reader.runs == 1
    # No path argument, but it declares a.py.
    sess.tool_call(
        "bash", {"cmd": "sed -i s/x/y/ a.py"}, Tool(""), effect="write", resources=["a.py"]
    )
    assert read(sess, reader).source == "executed"
    assert reader.runs == 2
    # Declared resources on reads, too.
    query = Tool("3 rows")
    sess.tool_call("sql", {"q": "select * from users"}, query, resources=["db:users"])
    sess.tool_call(
        "sql_exec", {"q": "delete from orders"}, Tool("ok"), effect="write", resources=["db:orders"]
    )
    assert (
        sess.tool_call("sql", {"q": "select * from users"}, query, resources=["db:users"]).source
        == "resolved"
    )
    sess.tool_call(
        "sql_exec", {"q": "delete from users"}, Tool("ok"), effect="write", resources=["db:users"]
    )
    assert (
        sess.tool_call("sql", {"q": "select * from users"}, query, resources=["db:users"]).source
        == "executed"
    )
    assert query.runs == 2


def test_session_invalidate_forces_a_rerun(store: cvm.Store, sess: cvm.Session) -> None:
    reader = Tool("a contents")
    read(sess, reader)
    read(sess, reader, path="b.py")
    assert sess.invalidate(["a.py"]) == 1
    assert sess.invalidate(["a.py"]) == 0  # already stale
    assert read(sess, reader).source == "executed"
    assert read(sess, reader, path="b.py").source == "resolved"
    assert reader.runs == 3
    assert store.faults(session="s1").counts["duplicate_tool"] == 0


def test_invalidation_is_project_wide(store: cvm.Store) -> None:
    s1 = store.session("s1", project=PROJECT)
    s2 = store.session("s2", project=PROJECT)
    elsewhere = store.session("s3", project="q")
    r1, r3 = Tool("one"), Tool("three")
    read(s1, r1)
    read(elsewhere, r3)
    s2.tool_call("edit_file", {"path": "a.py"}, Tool("ok"), effect="write")
    assert read(s1, r1).source == "executed"
    assert read(elsewhere, r3).source == "resolved"  # another project is not touched
    assert (r1.runs, r3.runs) == (2, 1)
    assert store.faults().counts["duplicate_tool"] == 0


# --- fresh=True ---------------------------------------------------------------------------------


def test_fresh_on_a_valid_cached_read_counts_one_duplicate_tool(
    store: cvm.Store, sess: cvm.Session
) -> None:
    reader = Tool("a contents")
    first = read(sess, reader)
    again = read(sess, reader, fresh=True)
    assert (again.source, again.key, again.version, again.call_id) == (
        "executed",
        first.key,
        2,
        "t0.2",
    )
    assert reader.runs == 2
    assert fault_rows(store) == [("duplicate_tool", first.key)]
    report = store.faults(session="s1")
    assert (report.counts["duplicate_tool"], report.faults, report.hits) == (1, 1, 0)


def test_fresh_after_invalidation_is_not_a_fault(store: cvm.Store, sess: cvm.Session) -> None:
    reader = Tool("a contents")
    read(sess, reader)
    sess.invalidate(["a.py"])
    assert read(sess, reader, fresh=True).source == "executed"
    assert reader.runs == 2
    assert kinds(store) == []


# --- write calls and idempotency keys -----------------------------------------------------------


def test_identical_write_runs_again(store: cvm.Store, sess: cvm.Session) -> None:
    writer = Tool("appended")
    args = {"path": "log.txt", "text": "hello"}
    first = sess.tool_call("append_file", args, writer, effect="write")
    second = sess.tool_call("append_file", args, writer, effect="write")
    assert (first.source, second.source) == ("executed", "executed")
    assert (first.call_id, second.call_id) == ("t0.1", "t0.2")
    assert (first.version, second.version) == (1, 2)
    assert writer.runs == 2
    assert kinds(store) == []  # writes are never duplicate_tool faults
    assert [record.effect for record in sess.tool_history()] == ["write", "write"]


def test_repeated_idempotency_key_serves_the_write(store: cvm.Store, sess: cvm.Session) -> None:
    writer = Tool("sent")
    args = {"to": "bob", "body": "hi"}
    first = sess.tool_call("send_email", args, writer, effect="write", idempotency_key="mail-1")
    again = sess.tool_call("send_email", args, writer, effect="write", idempotency_key="mail-1")
    assert first.source == "executed"
    assert (again.source, again.key, again.content, again.call_id) == (
        "resolved",
        first.key,
        "sent",
        first.call_id,
    )
    assert writer.runs == 1
    # A different key is another write: it runs.
    other = sess.tool_call("send_email", args, writer, effect="write", idempotency_key="mail-2")
    assert other.source == "executed"
    assert writer.runs == 2
    assert len(sess.tool_history()) == 2


# --- failures -----------------------------------------------------------------------------------


def test_a_failing_run_propagates_and_records_a_failed_call(
    store: cvm.Store, sess: cvm.Session
) -> None:
    error = ValueError("disk on fire")

    def broken(path: str) -> str:
        raise error

    with pytest.raises(ValueError) as caught:
        read(sess, broken)
    assert caught.value is error

    [record] = sess.tool_history()
    assert (record.state, record.error, record.result_version) == ("failed", "disk on fire", 1)
    page = store.page(record.result_key or "", project=PROJECT, session="s1")
    assert page.content == "error: ValueError: disk on fire"
    assert page.provenance == {"tool_call": ledger(store)[0][0]}

    # A failed call is not a cache: the same read runs again.
    reader = Tool("recovered")
    retry = read(sess, reader)
    assert (retry.source, retry.content, retry.version, retry.key) == (
        "executed",
        "recovered",
        2,
        record.result_key,
    )
    assert reader.runs == 1
    assert [r.state for r in sess.tool_history()] == ["failed", "finished"]
    assert kinds(store) == []


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "run", "effect"),
    [
        ("", {"path": "a.py"}, Tool(), "read"),
        ("   ", {"path": "a.py"}, Tool(), "read"),
        (None, {"path": "a.py"}, Tool(), "read"),
        ("read_file", [("path", "a.py")], Tool(), "read"),
        ("read_file", "path=a.py", Tool(), "read"),
        ("read_file", {"path": "a.py"}, Tool(), "delete"),
        ("read_file", {"path": "a.py"}, "not callable", "read"),
        ("read_file", {"path": object()}, Tool(), "read"),
        ("read_file", {"paths": {"a.py", "b.py"}}, Tool(), "read"),
    ],
    ids=[
        "empty-name",
        "blank-name",
        "none-name",
        "args-list",
        "args-str",
        "effect-delete",
        "run-not-callable",
        "args-object",
        "args-set",
    ],
)
def test_bad_input_is_invalid_and_writes_nothing(
    store: cvm.Store, sess: cvm.Session, name: Any, args: Any, run: Any, effect: Any
) -> None:
    with pytest.raises(cvm.InvalidInput):
        sess.tool_call(name, args, run, effect=effect)
    if isinstance(run, Tool):
        assert run.runs == 0
    assert sess.tool_history() == []
    assert ledger(store) == []
    assert kinds(store) == []


# --- result keys and versions -------------------------------------------------------------------


def test_result_key_format_and_rerun_writes_the_next_version(
    store: cvm.Store, sess: cvm.Session
) -> None:
    name = "my tool/v2:read"
    args = {"path": "a.py"}
    signature = signature_of(name, args)
    outputs = iter(["first", "second"])
    tool = Tool(lambda path: next(outputs))
    first = sess.tool_call(name, args, tool)
    assert first.key == f"evidence/my_tool_v2_read/{signature[:16]}"
    assert re.fullmatch(r"evidence/[A-Za-z0-9._-]+/[0-9a-f]{16}", first.key)
    again = sess.tool_call(name, args, tool, fresh=True)
    assert (again.key, again.version, again.content) == (first.key, 2, "second")
    history = store.history(first.key, project=PROJECT, session="s1")
    assert [version.version for version in history] == [1, 2]
    assert store.page(first.key, project=PROJECT, session="s1", version=1).content == "first"
    assert store.page(first.key, project=PROJECT, session="s1").content == "second"
    rows = ledger(store)
    assert store.page(first.key, project=PROJECT, session="s1", version=1).provenance == {
        "tool_call": rows[0][0]
    }
    assert store.page(first.key, project=PROJECT, session="s1").provenance == {
        "tool_call": rows[1][0]
    }
    assert [(r.result_key, r.result_version) for r in sess.tool_history()] == [
        (first.key, 1),
        (first.key, 2),
    ]


def test_result_key_helper_sanitizes_and_truncates() -> None:
    signature = "0123456789abcdef" + "f" * 48
    assert result_key("read_file", signature) == "evidence/read_file/0123456789abcdef"
    assert result_key("a b/c:d", signature) == "evidence/a_b_c_d/0123456789abcdef"
    assert result_key("x" * 100, signature) == f"evidence/{'x' * 64}/0123456789abcdef"


def test_args_round_trip_through_the_ledger(sess: cvm.Session) -> None:
    args = {"b": [1, {"y": 2, "x": 1}], "a": "é"}
    sess.tool_call("probe", args, Tool("ok"))
    [record] = sess.tool_history()
    assert record.args == {"a": "é", "b": [1, {"x": 1, "y": 2}]}
    assert json.dumps(record.args, sort_keys=True) == json.dumps(args, sort_keys=True)


def test_fresh_rerun_of_a_write_with_an_idempotency_key_takes_the_key_over(
    store: cvm.Store, sess: cvm.Session
) -> None:
    # Found by the crash-test kit: the documented way to re-run an interrupted write
    # (fresh=True) inserted a second ledger row with the same idempotency key and failed on
    # the key's UNIQUE index. The new call takes the key over; the old one keeps its row.
    outputs = iter(["first", "second"])
    tool = Tool(lambda path, text: next(outputs))
    args = {"path": "notes.md", "text": "step 1"}
    first = sess.tool_call("write_note", args, tool, effect="write", idempotency_key="note-1")
    again = sess.tool_call(
        "write_note", args, tool, effect="write", idempotency_key="note-1", fresh=True
    )
    assert (first.source, first.version, again.source, again.version) == (
        "executed",
        1,
        "executed",
        2,
    )
    served = sess.tool_call("write_note", args, tool, effect="write", idempotency_key="note-1")
    assert (served.source, served.version, served.content, tool.runs) == (
        "resolved",
        2,
        "second",
        2,
    )
    with store.db.transaction(write=False) as conn:
        keys = conn.exec_driver_sql("SELECT call_id, idempotency_key FROM tool_calls ORDER BY id")
        assert [tuple(row) for row in keys] == [("t0.1", None), ("t0.2", "note-1")]
    assert store.check().ok
