"""The ``clawvm`` command line: help on every command, happy paths, and bad input.

Bad input must end in exactly one line on stderr (``error: ...``, exit 1) or Click's usage
message (exit 2), never a traceback, and must not damage or create a database. Click 8.2+
keeps stderr apart in ``CliRunner``: ``result.stdout`` is stdout only, ``result.stderr``
stderr only, ``result.output`` both interleaved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from clawvm_store.cli import app

PROJECT_ROOT = Path(__file__).resolve().parents[1]

RULE = "Never push to main."
PROVENANCE = '{"uri": "file:///x"}'
EVIDENCE = "def create_payment(request):\n" + "".join(
    f"    # step {i}: validate field_{i} and normalise its value before storing it\n"
    f"    value_{i} = normalise(request.json['field_{i}'])\n"
    for i in range(20)
)
PLAN = (
    "Goal: add idempotency keys to the payments endpoint so that a client retrying a request "
    "never creates a second payment.\n"
    "- [x] read the current handler, its tests and the database schema of the payments table\n"
    "- [ ] add an idempotency_key column with a unique index and a reversible migration\n"
    "- [ ] return the stored response when a request repeats a key it has already used\n"
    "- [ ] document the Idempotency-Key header in docs/api.md with an example request\n"
)
PLAN_FIELDS = {
    "goal": "add idempotency keys",
    "current_step": "add the column",
    "steps": ["read handler", "add column"],
}
BOOTSTRAP = "# Rules\n- Always run make test.\n- Never edit vendor/.\n"

# The pages every "existing database" fixture holds: key -> (type, content).
SEEDED = {
    "rules/git": ("constraint", RULE),
    "ev/payments": ("evidence", EVIDENCE),
    "plan/main": ("plan", PLAN),
    "boot/agents": ("bootstrap", BOOTSTRAP),
}
LADDERS = {
    "constraint": ["full", "structured"],
    "evidence": ["full", "compressed", "structured", "pointer"],
    "plan": ["full", "structured", "pointer"],
    "bootstrap": ["full", "structured"],
}


# --- helpers ----------------------------------------------------------------------------------


def invoke(
    *args: Any, input: str | bytes | None = None, env: dict[str, str] | None = None
) -> Result:
    """Run ``clawvm ARGS`` in-process, as the console script would (prog name ``clawvm``)."""
    return CliRunner().invoke(
        app, [str(arg) for arg in args], input=input, env=env, prog_name="clawvm"
    )


def cli(db: Path, *args: Any, input: str | bytes | None = None) -> Result:
    """Run ``clawvm --db DB ARGS``."""
    return invoke("--db", db, *args, input=input)


def assert_no_traceback(result: Result) -> None:
    for stream in (result.stdout, result.stderr, result.output):
        assert "Traceback" not in stream
    # Anything but a clean exit would have been a traceback outside CliRunner.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )


def assert_ok(result: Result) -> str:
    """Exit 0, nothing on stderr, no traceback; returns stdout."""
    assert_no_traceback(result)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout


def ok_json(result: Result) -> Any:
    return json.loads(assert_ok(result))


def assert_error(result: Result, *needles: str, code: int = 1) -> str:
    """Exit ``code``, exactly one ``error: `` line on stderr, nothing on stdout; returns it."""
    assert_no_traceback(result)
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stderr == lines[0] + "\n"
    line = lines[0]
    assert line.startswith("error: "), line
    assert len(line) > len("error: ")
    for needle in needles:
        assert needle in line, line
    return line


def assert_usage_error(result: Result, *needles: str) -> None:
    """Click's usage error: exit 2, ``Usage: clawvm ...`` and one ``Error: ...`` line."""
    assert_no_traceback(result)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Usage: clawvm"), result.stderr
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def snapshot(db: Path) -> dict[str, Any]:
    """What a reader sees: the page listing, every page's plain ``show`` and every fidelity."""
    state: dict[str, Any] = {"pages": assert_ok(cli(db, "--json", "pages"))}
    for key, (page_type, _content) in SEEDED.items():
        state[key] = assert_ok(cli(db, "show", key))
        for fidelity in LADDERS[page_type]:
            state[f"{key}@{fidelity}"] = assert_ok(
                cli(db, "--json", "show", key, "--fidelity", fidelity)
            )
    return state


def fill(args: Sequence[str], files: dict[str, str]) -> list[str]:
    """Replace ``{name}`` placeholders (whole arguments only) with the paths in ``files``."""
    return [files[arg[1:-1]] if re.fullmatch(r"\{\w+\}", arg) else arg for arg in args]


def db_files(db: Path) -> list[Path]:
    return sorted(db.parent.glob(db.name + "*"))


# --- fixtures ---------------------------------------------------------------------------------


def seed(tmp_path: Path) -> Path:
    """Create a database holding the SEEDED pages in ``tmp_path``."""
    path = tmp_path / "agent.db"
    assert_ok(cli(path, "init"))
    for key, (page_type, content) in SEEDED.items():
        source = write_text(tmp_path / f"{key.replace('/', '_')}.txt", content)
        extra: list[str] = []
        if page_type == "evidence":
            extra = ["--provenance", PROVENANCE]
        if page_type == "plan":
            extra = ["--structured", json.dumps(PLAN_FIELDS)]
        assert_ok(cli(path, "put", key, "--type", page_type, "--file", source, *extra))
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One seeded database per module and its snapshot; tests get copies of it."""
    path = seed(tmp_path_factory.mktemp("template"))
    return path, snapshot(path)


@pytest.fixture
def db(tmp_path: Path, template: tuple[Path, dict[str, Any]]) -> Path:
    """A fresh copy of a database holding the SEEDED pages (one version each)."""
    source, _ = template
    assert db_files(source) == [source]  # closed cleanly: no WAL left to copy
    path = tmp_path / "agent.db"
    shutil.copyfile(source, path)
    return path


@pytest.fixture
def seeded(db: Path, template: tuple[Path, dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """A seeded database and its snapshot, to prove later that bad input lost nothing."""
    return db, template[1]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Input files for the bad-input cases, by placeholder name."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    blank = inputs / "blank.txt"
    blank.write_text("  \n\t \n", encoding="utf-8")
    empty = inputs / "empty.txt"
    empty.write_bytes(b"")
    bad_utf8 = inputs / "bad.txt"
    bad_utf8.write_bytes(b"ok\xff\xfe bad")
    good = write_text(inputs / "good.txt", "Prefers pytest.")
    a_dir = inputs / "a-dir"
    a_dir.mkdir()
    return {
        "blank": str(blank),
        "empty": str(empty),
        "bad_utf8": str(bad_utf8),
        "good": str(good),
        "dir": str(a_dir),
        "missing": str(inputs / "no-such-file.txt"),
    }


# --- help and version -------------------------------------------------------------------------


COMMANDS = sorted(app.commands)


def test_the_expected_commands_are_registered() -> None:
    assert {"init", "info", "put", "show", "history", "pages", "check", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_answers_help_with_an_example(tmp_path: Path, name: str, flag: str) -> None:
    db = tmp_path / "never-created.db"
    out = assert_ok(cli(db, name, flag))
    assert out.startswith(f"Usage: clawvm {name} ")
    assert "Example" in out
    assert "clawvm" in out.split("Example", 1)[1]
    assert "--json" in out
    assert db_files(db) == []


def test_group_help_lists_every_command(tmp_path: Path) -> None:
    out = assert_ok(invoke("--help"))
    assert out.startswith("Usage: clawvm [OPTIONS] COMMAND [ARGS]...")
    assert "Example" in out
    for option in ("--db", "--json", "--version", "--help"):
        assert option in out
    listed = out.split("Commands:", 1)[1]
    for name in COMMANDS:
        assert f"  {name} " in listed or f"  {name}\n" in listed, name


def test_no_command_shows_usage() -> None:
    result = invoke()
    assert_no_traceback(result)
    assert result.exit_code in (0, 2)
    assert "Usage: clawvm" in result.output


def test_version() -> None:
    assert assert_ok(invoke("--version")) == f"clawvm-store {dist_version('clawvm-store')}\n"


# --- happy paths ------------------------------------------------------------------------------


def test_init_creates_the_database_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    info = ok_json(cli(db, "--json", "init"))
    assert db.is_file()
    assert set(info) == {"db", "schema_revision", "encoding"}
    assert info["db"] == str(db)
    assert info["encoding"] == "cl100k_base"
    assert isinstance(info["schema_revision"], str) and info["schema_revision"]
    again = assert_ok(cli(db, "init"))
    assert again == f"initialized {db} (schema {info['schema_revision']}, tokens cl100k_base)\n"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (info["schema_revision"],)
        ]


def test_put_then_show_prints_the_content(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    assert_ok(cli(db, "init"))
    source = write_text(tmp_path / "rule.txt", RULE)
    out = assert_ok(cli(db, "put", "rules/git", "--type", "constraint", "--file", source))
    assert out.startswith("rules/git v1 (constraint, ")
    assert out.endswith(" tokens)\n")
    # click.echo ends the line; the content itself has no trailing newline
    assert assert_ok(cli(db, "show", "rules/git")) == RULE + "\n"
    assert ok_json(cli(db, "--json", "show", "rules/git"))["content"] == RULE


def test_show_round_trips_a_file_byte_for_byte(tmp_path: Path) -> None:
    """``clawvm show K > f`` must reproduce a file that ends with a newline exactly."""
    db = tmp_path / "a.db"
    assert_ok(cli(db, "init"))
    content = "line one\nline two\n"
    source = write_text(tmp_path / "notes.txt", content)
    assert_ok(cli(db, "put", "notes/a", "--type", "preference", "--file", source))
    assert ok_json(cli(db, "--json", "show", "notes/a"))["content"] == content
    assert assert_ok(cli(db, "show", "notes/a")) == content


def test_put_json_and_show_json(db: Path, tmp_path: Path) -> None:
    source = write_text(tmp_path / "pref.txt", "Prefers pytest.")
    put = ok_json(cli(db, "put", "pref/tests", "--type", "preference", "--file", source, "--json"))
    assert set(put) == {"key", "version", "type", "tokens"}
    assert put["key"] == "pref/tests"
    assert put["version"] == 1
    assert put["type"] == "preference"
    assert isinstance(put["tokens"], int) and put["tokens"] > 0

    shown = ok_json(cli(db, "--json", "show", "pref/tests"))
    assert {"content", "version", "fidelity", "tokens", "key", "type", "pin", "provenance"} <= set(
        shown
    )
    assert shown["content"] == "Prefers pytest."
    assert shown["version"] == 1
    assert shown["fidelity"] == "full"
    assert shown["tokens"] == put["tokens"]
    assert shown["key"] == "pref/tests"
    assert shown["type"] == "preference"
    assert shown["pin"] == "none"
    assert shown["project"] == "default"
    assert shown["provenance"] is None


def test_show_evidence_at_every_fidelity(db: Path) -> None:
    pages = {p["key"]: p for p in ok_json(cli(db, "pages", "--json"))}
    tokens = pages["ev/payments"]["tokens"]
    assert set(tokens) == {"full", "compressed", "structured", "pointer"}
    assert tokens["pointer"] <= tokens["structured"] <= tokens["compressed"] < tokens["full"]

    shown = {
        fidelity: ok_json(cli(db, "--json", "show", "ev/payments", "--fidelity", fidelity))
        for fidelity in LADDERS["evidence"]
    }
    for fidelity, page in shown.items():
        assert page["fidelity"] == fidelity
        assert page["version"] == 1
        assert page["type"] == "evidence"
        assert page["provenance"] == {"uri": "file:///x"}
        assert page["tokens"] == tokens[fidelity]
        # the plain output is the same text, ended by one newline
        plain = assert_ok(cli(db, "show", "ev/payments", "--fidelity", fidelity))
        assert plain.rstrip("\n") == page["content"].rstrip("\n")

    assert shown["full"]["content"] == EVIDENCE
    assert shown["compressed"]["content"] != EVIDENCE
    assert shown["compressed"]["content"].startswith("def create_payment(request):")
    assert shown["structured"]["content"].startswith("source: uri:file:///x\n")
    assert shown["structured"]["structured"]["source"] == "uri:file:///x"
    pointer = shown["pointer"]["content"]
    assert pointer.startswith("[ptr ev/payments@1 evidence ")
    assert pointer.endswith("]")
    assert "\n" not in pointer
    # fidelity is case-insensitive
    assert assert_ok(cli(db, "show", "ev/payments", "--fidelity", "POINTER")) == pointer + "\n"


def test_show_structured_uses_the_given_fields(db: Path) -> None:
    page = ok_json(cli(db, "--json", "show", "plan/main", "--fidelity", "structured"))
    assert page["structured"] == PLAN_FIELDS
    assert page["content"] == (
        "goal: add idempotency keys\ncurrent_step: add the column\nsteps: read handler; add column"
    )
    assert assert_ok(cli(db, "show", "plan/main", "--fidelity", "structured")) == (
        page["content"] + "\n"
    )


def test_put_from_stdin(db: Path) -> None:
    out = assert_ok(cli(db, "put", "pref/tests", "--type", "preference", input="Prefers pytest.\n"))
    assert out.startswith("pref/tests v1 (preference, ")
    assert ok_json(cli(db, "--json", "show", "pref/tests"))["content"] == "Prefers pytest.\n"


def test_put_from_stdin_keeps_unicode(db: Path) -> None:
    text = "Préfère « pytest » — 日本語 ✓"
    assert_ok(cli(db, "put", "pref/unicode", "--type", "preference", input=text.encode()))
    assert ok_json(cli(db, "--json", "show", "pref/unicode"))["content"] == text


def test_overwrite_needs_the_expected_version(db: Path, tmp_path: Path) -> None:
    source = write_text(tmp_path / "rule2.txt", "Never force-push to main.")
    line = assert_error(cli(db, "put", "rules/git", "--type", "constraint", "--file", source))
    assert "DESTRUCTIVE_OP" in line
    assert assert_ok(cli(db, "show", "rules/git")) == RULE + "\n"

    assert_error(
        cli(
            db,
            "put",
            "rules/git",
            "--type",
            "constraint",
            "--file",
            source,
            "--expected-version",
            7,
        ),
        "DESTRUCTIVE_OP",
    )

    out = assert_ok(
        cli(
            db,
            "put",
            "rules/git",
            "--type",
            "constraint",
            "--file",
            source,
            "--expected-version",
            1,
        )
    )
    assert out.startswith("rules/git v2 (constraint, ")
    assert assert_ok(cli(db, "show", "rules/git")) == "Never force-push to main.\n"
    assert assert_ok(cli(db, "show", "rules/git", "--version", 1)) == RULE + "\n"
    assert ok_json(cli(db, "--json", "show", "rules/git"))["version"] == 2


def test_history_lists_every_version(db: Path, tmp_path: Path) -> None:
    source = write_text(tmp_path / "rule2.txt", "Never force-push to main.")
    assert_ok(
        cli(
            db,
            "put",
            "rules/git",
            "--type",
            "constraint",
            "--file",
            source,
            "--expected-version",
            1,
        )
    )

    lines = assert_ok(cli(db, "history", "rules/git")).splitlines()
    header = lines[0].split("\t")
    assert header[:5] == ["version", "op", "lsn", "committed_at", "deleted"]
    assert set(header[5:]) == {"full", "compressed", "structured", "pointer"}
    rows = [line.split("\t") for line in lines[1:]]
    assert [row[0] for row in rows] == ["1", "2"]
    assert [row[1] for row in rows] == ["set", "set"]
    assert all(len(row) == len(header) for row in rows)

    versions = ok_json(cli(db, "history", "rules/git", "--json"))
    assert isinstance(versions, list)
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["op"] for v in versions] == ["set", "set"]
    assert [v["deleted"] for v in versions] == [False, False]
    assert all(v["key"] == "rules/git" and v["type"] == "constraint" for v in versions)
    assert versions[0]["lsn"] < versions[1]["lsn"]
    assert set(versions[1]["tokens"]) == {"full", "structured"}
    assert (
        versions[1]["tokens"]["full"] == ok_json(cli(db, "--json", "show", "rules/git"))["tokens"]
    )


def test_pages_filters_by_type(db: Path) -> None:
    lines = assert_ok(cli(db, "pages", "--type", "evidence")).splitlines()
    header = lines[0].split("\t")
    assert header[:4] == ["key", "project", "session", "type"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [row[0] for row in rows] == ["ev/payments"]
    assert [row[3] for row in rows] == ["evidence"]

    listing = ok_json(cli(db, "--json", "pages", "--type", "evidence"))
    assert [p["key"] for p in listing] == ["ev/payments"]
    assert [p["type"] for p in listing] == ["evidence"]

    everything = ok_json(cli(db, "--json", "pages"))
    assert sorted(p["key"] for p in everything) == sorted(SEEDED)
    assert {p["key"]: p["type"] for p in everything} == {k: v[0] for k, v in SEEDED.items()}
    assert all(p["version"] == 1 for p in everything)
    assert assert_ok(cli(db, "--json", "pages", "--type", "conversation")) == "[]\n"


def test_json_flag_after_the_subcommand(db: Path) -> None:
    before = assert_ok(cli(db, "--json", "pages"))
    after = assert_ok(cli(db, "pages", "--json"))
    assert before == after
    assert isinstance(json.loads(after), list)
    assert ok_json(cli(db, "show", "rules/git", "--json"))["content"] == RULE
    assert ok_json(cli(db, "check", "--json"))["ok"] is True
    assert "schema_revision" in ok_json(cli(db, "info", "--json"))


def test_db_from_the_environment(db: Path) -> None:
    listing = ok_json(invoke("--json", "pages", env={"CLAWVM_DB": str(db)}))
    assert sorted(p["key"] for p in listing) == sorted(SEEDED)


def test_check(db: Path) -> None:
    out = assert_ok(cli(db, "check"))
    assert len(out.splitlines()) == 1
    assert out.startswith("ok (")
    report = ok_json(cli(db, "--json", "check"))
    assert report["ok"] is True
    assert report["findings"] == []
    assert assert_ok(cli(db, "check", "--no-recount")).startswith("ok")


def test_info(db: Path) -> None:
    info = ok_json(cli(db, "--json", "info"))
    assert info["schema_revision"] == info["head_revision"]
    assert isinstance(info["schema_revision"], str) and info["schema_revision"]
    assert info["sqlite_version"] == sqlite3.sqlite_version
    assert info["pragmas"]["journal_mode"] == "wal"
    assert info["pragmas"]["foreign_keys"] == 1
    assert info["package_version"] == dist_version("clawvm-store")
    assert info["encoding"] == "cl100k_base"
    assert info["counts"]["pages"] == len(SEEDED)
    assert info["counts"]["page_versions"] == len(SEEDED)

    rows = dict(line.split("\t", 1) for line in assert_ok(cli(db, "info")).splitlines())
    assert rows["what"] == "value"
    assert rows["pragma journal_mode"] == "wal"
    assert rows["sqlite"] == sqlite3.sqlite_version
    assert rows["rows pages"] == str(len(SEEDED))


def test_demo(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    out = assert_ok(cli(db, "demo"))
    assert out.splitlines()[-1] == "check: ok"
    # a second run overwrites its own pages with the right expected version
    out = assert_ok(cli(db, "demo"))
    assert out.splitlines()[-1] == "check: ok"
    report = ok_json(cli(db, "demo", "--json"))
    assert report["check_ok"] is True
    shown = report["pages"]
    assert {row["type"] for row in shown} == {
        "bootstrap",
        "constraint",
        "plan",
        "preference",
        "evidence",
        "conversation",
    }
    assert {row["version"] for row in shown} == {3}
    assert assert_ok(cli(db, "check")).startswith("ok")


# --- bad input: the database itself -----------------------------------------------------------


READ_COMMANDS: list[Sequence[str]] = [
    ["show", "rules/git"],
    ["pages"],
    ["info"],
    ["history", "rules/git"],
    ["check"],
]


@pytest.mark.parametrize("args", [*READ_COMMANDS, ["init"], ["demo"]], ids=lambda a: a[0])
def test_db_is_a_directory(tmp_path: Path, args: Sequence[str]) -> None:
    target = tmp_path / "a-dir"
    target.mkdir()
    assert_error(cli(target, *args), "directory")
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir"]


@pytest.mark.parametrize("args", [*READ_COMMANDS, ["init"]], ids=lambda a: a[0])
def test_db_is_not_sqlite(tmp_path: Path, args: Sequence[str]) -> None:
    target = tmp_path / "junk.db"
    junk = b"hello world" * 100
    target.write_bytes(junk)
    assert_error(cli(target, *args), "not an SQLite database")
    assert target.read_bytes() == junk
    assert db_files(target) == [target]


def test_db_is_someone_elses_sqlite(tmp_path: Path) -> None:
    target = tmp_path / "other.db"
    with sqlite3.connect(target) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn.close()
    for args in [*READ_COMMANDS, ["init"]]:
        assert_error(cli(target, *args), "not clawvm-store's")
    with sqlite3.connect(target) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    conn.close()
    assert tables == ["customers"]


@pytest.mark.parametrize("args", [*READ_COMMANDS, ["init"]], ids=lambda a: a[0])
def test_db_schema_is_newer_than_the_code(db: Path, args: Sequence[str]) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num='9999_future'")
    conn.close()
    assert_error(cli(db, *args), "9999_future")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("9999_future",)
        ]
        assert conn.execute("SELECT count(*) FROM pages").fetchone() == (len(SEEDED),)
    conn.close()


@pytest.mark.parametrize(
    "args",
    [*READ_COMMANDS, ["put", "k/x", "--type", "preference", "--file", "{good}"]],
    ids=lambda a: a[0],
)
def test_db_is_missing(tmp_path: Path, files: dict[str, str], args: Sequence[str]) -> None:
    target = tmp_path / "missing.db"
    result = cli(target, *fill(args, files))
    assert_error(result, "no database", "clawvm init")
    assert db_files(target) == []


def test_db_in_a_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "nowhere" / "agent.db"
    assert_error(cli(target, "init"), "does not exist")
    assert not target.parent.exists()


def test_db_is_damaged(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[100:8000] = b"\xab" * 7900  # keep the header, wreck the schema pages
    db.write_bytes(bytes(data))
    for args in READ_COMMANDS:
        assert_error(cli(db, *args))


# --- bad input: arguments, against an existing database ---------------------------------------


USAGE_ERRORS: list[tuple[list[str], str]] = [
    (["put", "k/x", "--type", "nope", "--file", "{good}"], "'--type'"),
    (["put", "k/x", "--file", "{good}"], "'--type'"),
    (["put", "--type", "plan", "--file", "{good}"], "KEY"),
    (["put", "k/x", "--type", "plan", "--pin", "bogus", "--file", "{good}"], "'--pin'"),
    (["put", "k/x", "--type", "plan", "--priority", "high", "--file", "{good}"], "'--priority'"),
    (["put", "k/x", "--type", "plan", "--expected-version", "one"], "'--expected-version'"),
    (["show", "rules/git", "--fidelity", "nope"], "'--fidelity'"),
    (["show", "rules/git", "--version", "abc"], "'--version'"),
    (["pages", "--type", "nope"], "'--type'"),
    (["frobnicate"], "frobnicate"),
    (["show", "rules/git", "--no-such-option"], "--no-such-option"),
]


@pytest.mark.parametrize(
    ("args", "needle"), USAGE_ERRORS, ids=[" ".join(args) for args, _ in USAGE_ERRORS]
)
def test_usage_errors(
    seeded: tuple[Path, dict[str, Any]], files: dict[str, str], args: list[str], needle: str
) -> None:
    db, before = seeded
    assert_usage_error(cli(db, *fill(args, files)), needle)
    assert snapshot(db) == before


BAD_INPUT: list[tuple[str, list[str], str | bytes | None, list[str]]] = [
    # (id, args, stdin, substrings of the error line)
    ("blank-file", ["put", "k/x", "--type", "plan", "--file", "{blank}"], None, ["empty content"]),
    ("empty-file", ["put", "k/x", "--type", "plan", "--file", "{empty}"], None, ["empty content"]),
    ("empty-stdin", ["put", "k/x", "--type", "plan"], "", ["empty content", "stdin"]),
    ("blank-stdin", ["put", "k/x", "--type", "plan"], " \n\t\n", ["empty content", "stdin"]),
    ("missing-file", ["put", "k/x", "--type", "plan", "--file", "{missing}"], None, ["no such"]),
    ("dir-file", ["put", "k/x", "--type", "plan", "--file", "{dir}"], None, ["directory"]),
    ("bad-utf8-file", ["put", "k/x", "--type", "plan", "--file", "{bad_utf8}"], None, ["UTF-8"]),
    ("bad-utf8-stdin", ["put", "k/x", "--type", "plan"], b"ok\xff\xfe bad", ["UTF-8", "stdin"]),
    (
        "structured-not-json",
        ["put", "k/x", "--type", "plan", "--file", "{good}", "--structured", "{bad"],
        None,
        ["--structured", "JSON"],
    ),
    (
        "structured-not-object",
        ["put", "k/x", "--type", "plan", "--file", "{good}", "--structured", "[1, 2]"],
        None,
        ["--structured", "JSON object"],
    ),
    (
        "provenance-not-json",
        ["put", "k/x", "--type", "evidence", "--file", "{good}", "--provenance", "{bad"],
        None,
        ["--provenance", "JSON"],
    ),
    (
        "structured-fails-the-model",
        ["put", "k/x", "--type", "plan", "--file", "{good}", "--structured", '{"goal": ""}'],
        None,
        ["SCHEMA_INVALID"],
    ),
    (
        "evidence-without-provenance",
        ["put", "k/x", "--type", "evidence", "--file", "{good}"],
        None,
        ["PROVENANCE_UNRESOLVED"],
    ),
    (
        "overwrite-without-version",
        ["put", "rules/git", "--type", "constraint", "--file", "{good}"],
        None,
        ["DESTRUCTIVE_OP"],
    ),
    (
        "overwrite-stale-version",
        ["put", "plan/main", "--type", "plan", "--file", "{good}", "--expected-version", "5"],
        None,
        ["DESTRUCTIVE_OP"],
    ),
    ("key-with-space", ["put", "bad key", "--type", "plan", "--file", "{good}"], None, ["key"]),
    ("empty-key", ["put", "", "--type", "plan", "--file", "{good}"], None, ["key"]),
    ("show-missing-key", ["show", "no/such/page"], None, ["no page", "no/such/page"]),
    ("show-missing-version", ["show", "rules/git", "--version", "9"], None, ["no version 9"]),
    (
        "show-off-the-ladder",
        ["show", "boot/agents", "--fidelity", "compressed"],
        None,
        ["bootstrap", "compressed"],
    ),
    (
        "pointer-off-the-ladder",
        ["show", "rules/git", "--fidelity", "pointer"],
        None,
        ["constraint", "pointer"],
    ),
    ("history-missing-key", ["history", "no/such/page"], None, ["no page"]),
]


@pytest.mark.parametrize(
    ("args", "stdin", "needles"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_is_one_line_and_loses_nothing(
    seeded: tuple[Path, dict[str, Any]],
    files: dict[str, str],
    args: list[str],
    stdin: str | bytes | None,
    needles: list[str],
) -> None:
    db, before = seeded
    result = cli(db, *fill(args, files), input=stdin)
    assert_error(result, *needles)
    assert snapshot(db) == before
    assert assert_ok(cli(db, "check")).startswith("ok")


def test_rejected_put_then_a_good_put_still_works(
    seeded: tuple[Path, dict[str, Any]], files: dict[str, str]
) -> None:
    db, _ = seeded
    assert_error(cli(db, "put", "k/x", "--type", "plan", "--file", files["bad_utf8"]))
    assert_error(
        cli(db, "put", "k/x", "--type", "plan", "--file", files["good"], "--structured", "{")
    )
    out = assert_ok(cli(db, "put", "k/x", "--type", "preference", "--file", files["good"]))
    assert out.startswith("k/x v1 (preference, ")
    assert assert_ok(cli(db, "show", "k/x")) == "Prefers pytest.\n"


# --- as a real process ------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLAWVM_DEBUG", "CLAWVM_DB")}
    return subprocess.run(
        list(args), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_checkout_script_runs() -> None:
    proc = run(sys.executable, "cli.py", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: clawvm [OPTIONS] COMMAND [ARGS]...")
    assert proc.stderr == ""


def test_module_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    proc = run(sys.executable, "-m", "clawvm_store.cli", "--db", str(tmp_path), "info")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    assert "directory" in lines[0]


def test_console_script_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "clawvm"
    if not script.exists():
        pytest.skip("the clawvm console script is not installed next to this interpreter")
    proc = run(str(script), "--db", str(tmp_path), "pages")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
