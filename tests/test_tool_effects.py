"""Never serve a stale tool result (issue 19): effects, path normalisation, overlap, annotations.

A result is served from the ledger only when it provably cannot have changed. Each test drives
the real :class:`Store` and asserts how many times the tool really ran and what each call
returned; the property runs random reads and writes over a small simulated file system, with
shell commands of unknown effect, and checks that every result equals what running the tool
would have returned at that moment.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import run_alembic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clawvm_store as cvm
from clawvm_store.mediator import normalize_resource, overlaps

PROJECT = "p"


class Tool:
    """A fake tool that counts its runs and returns ``output`` (a value or a function)."""

    def __init__(self, output: Any = "contents") -> None:
        self.output = output
        self.runs = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.runs += 1
        return self.output(**kwargs) if callable(self.output) else self.output


@pytest.fixture
def sess(store: cvm.Store) -> cvm.Session:
    return store.session("s1", project=PROJECT)


def sources(*results: cvm.ToolResult) -> list[str]:
    return [result.source for result in results]


def fault_kinds(store: cvm.Store) -> list[str]:
    rows = store.query("SELECT kind FROM faults WHERE kind != 'hit' ORDER BY id")
    return [row["kind"] for row in rows]


# --- normalisation and overlap ------------------------------------------------------------------


def test_paths_are_normalised_against_the_working_directory() -> None:
    assert normalize_resource("src/a.py", "/w") == "/w/src/a.py"
    assert normalize_resource("./src/../src/a.py", "/w") == "/w/src/a.py"
    assert normalize_resource("/w/src/", None) == "/w/src"
    assert normalize_resource("src/a.py", None) == "src/a.py"
    assert normalize_resource("https://example.com/a?b=1", "/w") == "https://example.com/a?b=1"
    assert normalize_resource("db:orders", "/w") == "db:orders"
    # Windows separators, as agents on Windows write them: relative and drive paths.
    assert normalize_resource("components\\events\\card.tsx", None) == "components/events/card.tsx"
    assert normalize_resource("C:\\repo\\a.ts", None) == "C:/repo/a.ts"
    assert normalize_resource("a/b\\c", None) == "a/b\\c"  # a POSIX name with a backslash


def test_symlinks_resolve_where_they_exist(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.py").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(real)
    assert normalize_resource(str(link / "a.py")) == os.path.realpath(real / "a.py")
    assert normalize_resource("link/a.py", str(tmp_path)) == os.path.realpath(real / "a.py")


def test_overlap_covers_directories_and_globs_both_ways() -> None:
    assert overlaps("/w/src/a.py", "/w/src/a.py")
    assert overlaps("/w/src", "/w/src/a.py")  # a directory written: its files changed
    assert overlaps("/w/src/a.py", "/w/src")  # a listing or grep of the directory changed
    assert overlaps("/w/src/*.py", "/w/src/a.py")
    assert overlaps("/w/src/a.py", "/w/**/*.py")
    assert not overlaps("/w/src/*.py", "/w/docs/b.md")
    assert not overlaps("/w/src", "/w/srcx/a.py")
    assert not overlaps("/w/src/a.py", "/w/src/b.py")


# --- effects ------------------------------------------------------------------------------------


def test_a_volatile_read_always_runs_and_is_no_duplicate(
    store: cvm.Store, sess: cvm.Session
) -> None:
    clock = iter(["10:00", "10:01", "10:02", "10:03"])
    date = Tool(lambda: next(clock))
    results = [sess.tool_call("date", {}, date, effect="volatile") for _ in range(3)]
    assert [result.content for result in results] == ["10:00", "10:01", "10:02"]
    assert sources(*results) == ["executed"] * 3
    assert date.runs == 3
    assert fault_kinds(store) == []
    assert [record.effect for record in sess.tool_history()] == ["volatile"] * 3
    # A later plain read of the same signature is not served the volatile result either.
    assert sess.tool_call("date", {}, date).source == "executed"


def test_an_unknown_effect_invalidates_every_cached_read(sess: cvm.Session) -> None:
    files = {"a.py": "one", "b.py": "uno"}
    reader = Tool(lambda path: files[path])
    first = [sess.tool_call("read_file", {"path": p}, reader) for p in ("a.py", "b.py")]
    again = [sess.tool_call("read_file", {"path": p}, reader) for p in ("a.py", "b.py")]
    assert sources(*first, *again) == ["executed", "executed", "resolved", "resolved"]

    def build() -> str:
        files["a.py"], files["b.py"] = "two", "dos"
        return "built"

    sess.tool_call("bash", {"command": "make"}, Tool(lambda command: build()), effect="unknown")
    after = [sess.tool_call("read_file", {"path": p}, reader) for p in ("a.py", "b.py")]
    assert [(r.source, r.content) for r in after] == [("executed", "two"), ("executed", "dos")]
    assert reader.runs == 4


def test_a_write_that_names_nothing_has_unknown_effect(sess: cvm.Session) -> None:
    reader = Tool("v1")
    sess.tool_call("read_file", {"path": "a.py"}, reader)
    sess.tool_call("run_script", {"script": "fix.sh"}, Tool("ok"), effect="write")
    assert sess.tool_history()[-1].effect == "unknown"
    assert sess.tool_call("read_file", {"path": "a.py"}, reader).source == "executed"


def test_unknown_effect_is_confined_to_the_working_directory(sess: cvm.Session) -> None:
    inside, outside = Tool("in"), Tool("out")
    sess.tool_call("read_file", {"path": "/w/a.py"}, inside)
    sess.tool_call("read_file", {"path": "/etc/hosts"}, outside)
    sess.tool_call("bash", {"command": "make"}, Tool("ok"), effect="unknown", cwd="/w")
    assert sess.tool_call("read_file", {"path": "/w/a.py"}, inside).source == "executed"
    assert sess.tool_call("read_file", {"path": "/etc/hosts"}, outside).source == "resolved"
    assert (inside.runs, outside.runs) == (2, 1)


def test_relative_and_absolute_paths_of_one_file_match(sess: cvm.Session) -> None:
    sess.configure_tools(cwd="/w")
    reader = Tool("old")
    sess.tool_call("read_file", {"path": "src/a.py"}, reader)
    sess.tool_call("edit_file", {"path": "/w/src/../src/a.py"}, Tool("ok"), effect="write")
    reader.output = "new"
    result = sess.tool_call("read_file", {"path": "src/a.py"}, reader)
    assert (result.source, result.content) == ("executed", "new")


def test_a_directory_write_invalidates_the_files_under_it(sess: cvm.Session) -> None:
    a, b, doc = Tool("a"), Tool("b"), Tool("doc")
    sess.tool_call("read_file", {"path": "/w/src/a.py"}, a)
    sess.tool_call("read_file", {"path": "/w/src/pkg/b.py"}, b)
    sess.tool_call("read_file", {"path": "/w/docs/x.md"}, doc)
    sess.tool_call("rm", {"path": "/w/src"}, Tool("ok"), effect="write")
    assert sess.tool_call("read_file", {"path": "/w/src/a.py"}, a).source == "executed"
    assert sess.tool_call("read_file", {"path": "/w/src/pkg/b.py"}, b).source == "executed"
    assert sess.tool_call("read_file", {"path": "/w/docs/x.md"}, doc).source == "resolved"


def test_a_grep_over_a_directory_is_invalidated_by_a_file_in_it(sess: cvm.Session) -> None:
    grep = Tool("1 match")
    sess.tool_call("grep", {"pattern": "foo", "path": "/w/src"}, grep)
    sess.tool_call("edit_file", {"path": "/w/src/a.py"}, Tool("ok"), effect="write")
    assert sess.tool_call("grep", {"pattern": "foo", "path": "/w/src"}, grep).source == "executed"


def test_a_glob_write_invalidates_what_it_matches(sess: cvm.Session) -> None:
    py, md = Tool("py"), Tool("md")
    sess.tool_call("read_file", {"path": "/w/a.py"}, py)
    sess.tool_call("read_file", {"path": "/w/a.md"}, md)
    sess.tool_call("format", {}, Tool("ok"), effect="write", resources=["/w/*.py"])
    assert sess.tool_call("read_file", {"path": "/w/a.py"}, py).source == "executed"
    assert sess.tool_call("read_file", {"path": "/w/a.md"}, md).source == "resolved"


def test_a_read_without_a_resource_is_invalidated_by_any_write(sess: cvm.Session) -> None:
    listing = Tool("a.py")
    sess.tool_call("list_files", {}, listing)
    assert sess.tool_call("list_files", {}, listing).source == "resolved"
    sess.tool_call("edit_file", {"path": "/w/b.py"}, Tool("ok"), effect="write")
    assert sess.tool_call("list_files", {}, listing).source == "executed"


def test_a_symlinked_path_and_its_target_match(tmp_path: Path, sess: cvm.Session) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.py").write_text("x")
    (tmp_path / "link").symlink_to(real)
    reader = Tool("x")
    sess.tool_call("read_file", {"path": str(tmp_path / "link" / "a.py")}, reader)
    sess.tool_call("edit_file", {"path": str(real / "a.py")}, Tool("ok"), effect="write")
    assert sess.tool_call("read_file", {"path": str(tmp_path / "link/a.py")}, reader).source == (
        "executed"
    )


# --- annotations and rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "effect", "second"),
    [
        ({"readOnlyHint": True, "openWorldHint": False}, "read", "resolved"),
        ({"readOnlyHint": True}, "volatile", "executed"),  # open world is MCP's default
        ({"readOnlyHint": True, "openWorldHint": True}, "volatile", "executed"),
        ({"readOnlyHint": False, "destructiveHint": True}, "unknown", "executed"),
        ({}, "unknown", "executed"),
    ],
)
def test_mcp_annotations_classify_a_call(
    sess: cvm.Session, annotations: dict[str, Any], effect: str, second: str
) -> None:
    tool = Tool("r")
    first = sess.tool_call("mcp__x__q", {"q": "1"}, tool, annotations=annotations)
    again = sess.tool_call("mcp__x__q", {"q": "1"}, tool, annotations=annotations)
    if effect == "unknown":
        # A write is never re-run blindly; the repeat of a finished one runs only when asked.
        again = sess.tool_call("mcp__x__q", {"q": "1"}, tool, annotations=annotations, fresh=True)
    assert sess.tool_history()[0].effect == effect
    assert (first.source, again.source) == ("executed", second)


def test_annotations_with_a_path_are_a_write_of_that_path(sess: cvm.Session) -> None:
    reader, other = Tool("a"), Tool("b")
    sess.tool_call("read_file", {"path": "/w/a.py"}, reader)
    sess.tool_call("read_file", {"path": "/w/b.py"}, other)
    sess.tool_call("mcp__fs__write", {"path": "/w/a.py"}, Tool("ok"), annotations={})
    assert sess.tool_history()[-1].effect == "write"
    assert sess.tool_call("read_file", {"path": "/w/a.py"}, reader).source == "executed"
    assert sess.tool_call("read_file", {"path": "/w/b.py"}, other).source == "resolved"


def test_rules_set_a_tools_effect_and_a_calls_own_effect_wins(sess: cvm.Session) -> None:
    sess.configure_tools(rules={"git_status": "volatile"})
    status = Tool("clean")
    sess.tool_call("git_status", {}, status)
    sess.tool_call("git_status", {}, status)
    assert status.runs == 2
    sess.tool_call("git_status", {}, status, effect="read")
    assert sess.tool_call("git_status", {}, status, effect="read").source == "resolved"
    assert status.runs == 3


def test_bad_effects_are_one_line_errors(sess: cvm.Session) -> None:
    with pytest.raises(cvm.InvalidInput, match=r"^effect must be one of read, volatile, write"):
        sess.tool_call("x", {}, Tool(), effect="sideways")
    with pytest.raises(cvm.InvalidInput, match=r"^tool 'x': effect must be one of"):
        sess.configure_tools(rules={"x": "sideways"})
    with pytest.raises(cvm.InvalidInput, match=r"^tool annotations must be a mapping$"):
        sess.tool_call("x", {}, Tool(), annotations=["readOnlyHint"])  # type: ignore[arg-type]
    assert sess.tool_history() == []


# --- the property: a served result always equals a fresh run ------------------------------------

PATHS = ["/w/a.py", "/w/b.py", "/w/sub/c.py", "/w/sub/d.md"]
OPS = st.one_of(
    st.tuples(st.just("read"), st.sampled_from(PATHS)),
    st.tuples(st.just("grep"), st.sampled_from(["/w", "/w/sub"])),
    st.tuples(st.just("write"), st.sampled_from(PATHS)),
    st.tuples(st.just("rmdir"), st.just("/w/sub")),
    st.tuples(st.just("shell"), st.frozensets(st.sampled_from(PATHS), max_size=2)),
    st.tuples(st.just("date"), st.just("")),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, min_size=1, max_size=25))
def test_a_served_result_always_equals_what_the_tool_returns(
    tmp_path: Path, ops: list[tuple[str, Any]]
) -> None:
    files: dict[str, str] = {}
    ticks = [0]
    path = tmp_path / f"prop-{os.getpid()}-{len(list(tmp_path.iterdir()))}.db"
    truth: dict[str, Callable[..., str]] = {
        "read": lambda path: files.get(posixpath.join("/w", path), "(missing)"),
        "grep": lambda path: ",".join(sorted(p for p in files if p.startswith(path + "/"))),
        "date": lambda: str(ticks[0]),
    }
    with cvm.Store.open(path) as store:
        sess = store.session("prop", project=PROJECT)
        sess.configure_tools(cwd="/w", rules={"date": "volatile", "bash": "unknown"})
        for step, (op, arg) in enumerate(ops):
            ticks[0] += 1
            if op == "read":
                # Spelled relative half the time: the ledger must see one file either way.
                spelled = arg if step % 2 else os.path.relpath(arg, "/w")
                result = sess.tool_call("read_file", {"path": spelled}, truth["read"])
                assert result.content == (files.get(arg) or "(missing)"), (step, op, arg)
            elif op == "grep":
                result = sess.tool_call("grep", {"path": arg}, truth["grep"])
                assert result.content == (truth["grep"](arg) or "(empty result)"), (step, op)
            elif op == "date":
                assert sess.tool_call("date", {}, truth["date"]).content == str(ticks[0])
            elif op == "write":

                def write(path: str, text: str = f"v{step}") -> str:
                    files[path if path.startswith("/") else "/w/" + path] = text
                    return "ok"

                sess.tool_call("edit_file", {"path": arg}, write, effect="write")
            elif op == "rmdir":

                def remove(path: str) -> str:
                    for name in [p for p in files if p.startswith(path + "/")]:
                        del files[name]
                    return "ok"

                sess.tool_call("rm", {"path": arg}, remove, effect="write")
            else:

                def shell(command: str, touched: frozenset[str] = arg, n: int = step) -> str:
                    for name in touched:
                        files[name] = f"shell{n}"
                    return "done"

                sess.tool_call("bash", {"command": f"./gen.sh {step}"}, shell)


# --- the migration ------------------------------------------------------------------------------


def test_revision_0009_widens_the_effects_and_downgrade_keeps_volatile_unserved(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.db"
    with cvm.Store.open(path) as store:
        sess = store.session("s", project=PROJECT)
        sess.tool_call("date", {}, Tool("t"), effect="volatile")
        sess.tool_call("bash", {"command": "make"}, Tool("ok"), effect="unknown")
        sess.tool_call("read_file", {"path": "a"}, Tool("a"))
    run_alembic(path, "downgrade", "0008")
    engine = sa.create_engine(f"sqlite:///{path}")
    query = sa.text("SELECT name, effect, invalidated_at IS NOT NULL FROM tool_calls ORDER BY id")
    with engine.begin() as conn:
        rows = [tuple(row) for row in conn.execute(query)]
        assert rows == [("date", "read", 1), ("bash", "write", 0), ("read_file", "read", 0)]
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.text("UPDATE tool_calls SET effect = 'volatile' WHERE id = 1"))
    engine.dispose()
    with cvm.Store.open(path) as store:  # upgrades back to head
        sess = store.session("s", project=PROJECT)
        assert sess.tool_call("date", {}, Tool("t2"), effect="volatile").content == "t2"
        assert [r.effect for r in sess.tool_history()] == ["read", "write", "read", "volatile"]
