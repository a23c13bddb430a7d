"""Hostile input: generated CLI arguments and API calls, read-only SQL, a locked and a full disk.

Whatever the input (huge content, invalid UTF-8, NUL bytes, wrong types, zero or negative or huge
budgets, unknown enum values, SQL-injection strings in keys, projects and filters), every outcome
is a correct result or one clear error: in the CLI exactly one ``error: ...`` line and exit 1 (or
Click's usage message and exit 2), in the API a :class:`ClawVMError` subclass with a one-line
message. Never a traceback, an exit 3 ("internal error"), a raw driver or Python error, lost data,
or a file written anywhere but the database and its backup destination. ``clawvm sql`` only
reads: every statement that would change anything is refused and the file stays byte-identical.

Damaged files (bit flips, truncation, foreign databases) are in ``test_hostile_files.py``; fixed
bad-input cases of the CLI in ``test_cli.py``; a fault at every step of a write in
``test_fault_injection.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import sqlite3
import stat
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from clawvm_store import (
    Busy,
    ClawVMError,
    Fidelity,
    InvalidInput,
    NotFound,
    PageType,
    ReadOnlyViolation,
    SchemaInvalid,
    Session,
    StorageFull,
    Store,
)
from clawvm_store import db as db_module
from clawvm_store.cli import app

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXED_NOW = "2025-01-02T03:04:05.000006+00:00"
LIMIT = 8 * 1024 * 1024  # DEFAULT_MAX_CONTENT_BYTES
HUGE = "word " * (9 * 1024 * 1024 // 5 + 1)  # just over 9 MiB of plain ASCII text

RULE = "Never push to main; open a pull request instead."
PLAN = "Goal: ship the payments fix\n- [x] read the handler\n- [ ] add the idempotency column"
PLAN_2 = PLAN + "\n- [ ] document the Idempotency-Key header"
EVIDENCE = "def create_payment(request):\n    return store(request.json['amount'])\n"
BOOTSTRAP = "# Rules\n- Always run make test.\n- Never edit vendor/.\n"
PREFERENCE = "Prefers pytest with plain asserts over unittest classes."
CONVERSATION = "user: add idempotency keys\nassistant: reading payments.py first"

# Seeded pages: (key, type, content, project, session, extra put arguments).
SEEDED: list[tuple[str, str, str, str, str | None, dict[str, Any]]] = [
    ("rules/git", "constraint", RULE, "default", None, {}),
    ("plan/main", "plan", PLAN, "default", None, {}),
    ("ev/payments", "evidence", EVIDENCE, "default", None, {"provenance": {"uri": "file:///p.py"}}),
    ("boot/agents", "bootstrap", BOOTSTRAP, "default", None, {}),
    ("pref/tests", "preference", PREFERENCE, "web", None, {}),
    ("conv/1", "conversation", CONVERSATION, "default", "s-1", {}),
]
KEYS = [key for key, *_ in SEEDED]

INJECTIONS = [
    "'; DROP TABLE pages; --",
    '" OR 1=1 --',
    "' OR '1'='1",
    "x'); DELETE FROM journal; --",
    "k/';DROP_TABLE_pages;--",
    "1; ATTACH DATABASE 'evil.db' AS evil; --",
    "%",
    "_",
    "*",
    "\\",
    "?",
    ":name",
    "NULL",
]
SPECIAL_TEXT = [
    "",
    " ",
    "\t\n",
    "\x00",
    "a\x00b",
    "k/\x00",
    "\udcff",  # what Python makes of an invalid UTF-8 byte in argv (surrogateescape)
    "k/\udcff",
    "k/\u202e\u200b",
    "🦀/ünï",
    "k/" + "a" * 600,  # over the 512-character key limit
    "x" * 20_000,
    "-",
    "-x",
    "--",
    "FULL",
    "Full ",
    "bogus",
    "full\x00",
]
HOSTILE_TEXT = st.one_of(
    st.sampled_from(INJECTIONS + SPECIAL_TEXT),
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12).map(lambda s: "k/" + s),
)
BIG_INTS = [0, -1, -5, 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, -(10**30)]


def fixed_clock() -> str:
    return FIXED_NOW


# --- helpers ---------------------------------------------------------------------------------


def one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "\r" not in text


def assert_clawvm_error(exc: BaseException, where: str = "") -> None:
    """A library error: a ClawVMError subclass, not a driver error, with a one-line message."""
    assert isinstance(exc, ClawVMError), f"{where}: raw {type(exc).__name__}: {exc}"
    assert not isinstance(exc, sqlite3.Error | SQLAlchemyError), (where, type(exc).__mro__)
    message = str(exc)
    assert one_line(message), f"{where}: message not one line: {message!r}"


def assert_cli_outcome(result: Result, args: Sequence[str]) -> None:
    """Exit 0 (stderr empty), 1 (one ``error:`` line) or 2 (Click's usage); never a traceback."""
    where = ascii(list(args))[:400]
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream, where
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        where,
        repr(result.exception),
    )
    assert result.exit_code in (0, 1, 2), (where, result.exit_code, ascii(result.stderr)[:300])
    if result.exit_code == 0:
        assert result.stderr == "", (where, ascii(result.stderr)[:300])
    elif result.exit_code == 1:
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (where, ascii(result.stderr)[:300])
        assert result.stderr == lines[0] + "\n"
        assert lines[0].startswith("error: ") and len(lines[0]) > len("error: "), (where, lines)
        if "assemble" not in args:  # assemble prints the floor it could fit, then fails
            assert result.stdout == "", (where, ascii(result.stdout)[:300])
    else:
        assert result.stdout == "", where
        assert result.stderr.startswith("Usage: clawvm"), (where, ascii(result.stderr)[:300])
        assert result.stderr.count("\nError: ") == 1, (where, ascii(result.stderr)[:300])


def assert_one_error_line(result: Result, *needles: str) -> str:
    assert_cli_outcome(result, ["(fixed case)"])
    assert result.exit_code == 1, (result.exit_code, result.output)
    line = result.stderr.rstrip("\n")
    for needle in needles:
        assert needle in line, line
    return line


def invoke(db: Path | str, *args: str, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(app, ["--db", str(db), *args], input=input, prog_name="clawvm")


def db_files(db: Path) -> dict[str, bytes]:
    """The database file and its sidecars, by name, with their bytes."""
    return {
        p.name: p.read_bytes()
        for p in sorted(db.parent.iterdir())
        if p.name == db.name or p.name.startswith(f"{db.name}-")
    }


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under ``root``, by relative path."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@dataclass
class Prepared:
    """The seeded pages' committed history, to prove later that nothing of it was lost."""

    heads: dict[int, int]  # page id -> head version when seeded
    max_lsn: int
    dump: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)


def history_dump(store: Store, heads: dict[int, int], max_lsn: int) -> dict[str, list[Any]]:
    """Every seeded page version, its representations and journal entries, via store.query.

    A later write may add versions (a correct overwrite) but never change or remove these.
    """
    top = max(heads)
    versions = store.query(
        "SELECT * FROM page_versions WHERE page_id <= ? ORDER BY page_id, version", [top]
    )
    reps = store.query(
        "SELECT * FROM representations WHERE page_id <= ? ORDER BY page_id, version, fidelity",
        [top],
    )
    journal = store.query("SELECT * FROM journal WHERE lsn <= ? ORDER BY lsn", [max_lsn])
    return {
        "page_versions": [
            tuple(row.values()) for row in versions if row["version"] <= heads[row["page_id"]]
        ],
        "representations": [
            tuple(row.values()) for row in reps if row["version"] <= heads[row["page_id"]]
        ],
        "journal": [tuple(row.values()) for row in journal],
    }


def assert_history_kept(store: Store, prepared: Prepared) -> None:
    assert history_dump(store, prepared.heads, prepared.max_lsn) == prepared.dump
    heads = {
        row["id"]: row["version"]
        for row in store.query("SELECT id, version FROM pages WHERE id <= ?", [max(prepared.heads)])
    }
    assert set(heads) == set(prepared.heads)
    assert all(heads[pid] >= version for pid, version in prepared.heads.items())


def prepare(store: Store) -> Prepared:
    heads = {
        row["id"]: row["version"] for row in store.query("SELECT id, version FROM pages", None)
    }
    max_lsn = store.query("SELECT max(lsn) AS n FROM journal")[0]["n"]
    prepared = Prepared(heads=heads, max_lsn=max_lsn)
    prepared.dump = history_dump(store, heads, max_lsn)
    return prepared


def seed(path: Path) -> None:
    """A database with one page of each type, two versions of a plan, a rejected write, an
    assembly and a closed session."""
    with closing(Store.open(path, clock=fixed_clock)) as store:
        for key, page_type, content, project, session, extra in SEEDED:
            store.put(
                key, type=page_type, content=content, project=project, session=session, **extra
            )
        store.put("plan/main", type="plan", content=PLAN_2, expected_version=1)
        with pytest.raises(SchemaInvalid):
            store.put("rejected/blank", type="plan", content="   ")
        sess = store.session("s-1")
        sess.assemble(2000)
        sess.close()
        assert store.check().ok


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile-template") / "agent.db"
    seed(path)
    assert sorted(db_files(path)) == [path.name]  # closed cleanly: no WAL to copy
    return path


@pytest.fixture
def db(tmp_path: Path, template: Path) -> Path:
    """A fresh copy of the seeded database, alone in its own directory."""
    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "agent.db"
    shutil.copyfile(template, path)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """Hostile input files for ``put --file`` and ``assemble --fixed-file``."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    files: dict[str, bytes | None] = {
        "good.txt": b"Prefers tabs over spaces in every Makefile.",
        "unicode.txt": "Ünïcödé 🦀 — \u202eright-to-left\u202c and \u200bzero width".encode(),
        "nul.txt": b"before\x00after, a NUL in the middle",
        "bad-utf8.txt": b"ok \xff\xfe bad",
        "surrogate-utf8.txt": b"cesu \xed\xa0\x80 surrogate",
        "overlong.txt": b"overlong \xc0\xaf slash",
        "bom.txt": b"\xef\xbb\xbfwith a byte order mark",
        "blank.txt": b" \n\t\n",
        "empty.txt": b"",
        "huge.txt": HUGE.encode(),
        "'; DROP TABLE pages; --.txt": b"a file whose name is an injection",
    }
    paths = {}
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data or b"")
        paths[name] = path
    (folder / "a-dir").mkdir()
    paths["a-dir"] = folder / "a-dir"
    paths["missing"] = folder / "no-such-file.txt"
    return paths


def file_text(path: Path) -> str | None:
    """What ``put --file`` would store, or None when the file must be refused."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.strip() else None


# --- generated CLI arguments -----------------------------------------------------------------


def mostly(
    valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """Four draws in five valid, so that generated commands also get past the parser.

    The choice hangs on a wide integer: a plain ``one_of`` over a few valid values exhausts
    them early, and Hypothesis, which avoids repeating itself, would then draw only junk.
    """
    return st.integers(0, 2**16).flatmap(lambda n: hostile if n % 5 == 0 else valid)


USUALLY = mostly(st.just(True), st.just(False))
SOMETIMES = st.integers(0, 2**16).map(lambda n: n % 3 == 0)


def int_text(valid: Sequence[int] = (1, 2, 5, 50, 2000)) -> st.SearchStrategy[str]:
    return mostly(
        st.sampled_from([str(n) for n in valid]),
        st.one_of(
            st.integers(-3, 3).map(str),
            st.sampled_from(BIG_INTS).map(str),
            st.sampled_from(["1.5", "nan", "inf", "-0", "0x10", "", " 3", "1e3", "one", "\x00"]),
        ),
    )


def choice_text(values: Sequence[str]) -> st.SearchStrategy[str]:
    """Valid enum values (any case), plus unknown and hostile ones."""
    valid = st.sampled_from(list(values))
    return mostly(st.one_of(valid, valid.map(str.upper)), HOSTILE_TEXT)


def key_text(*, fresh: bool = False) -> st.SearchStrategy[str]:
    """Seeded keys (or, for a put, mostly new ones), and hostile ones."""
    known = st.sampled_from(KEYS)
    if fresh:
        new = st.integers(0, 10**6).map(lambda n: f"new/{n}")
        known = mostly(new, known)
    return mostly(known, HOSTILE_TEXT)


def name_text(known: Sequence[str]) -> st.SearchStrategy[str]:
    return mostly(st.sampled_from(list(known)), HOSTILE_TEXT)


PROJECTS = ["default", "web"]
SESSIONS = ["s-1", "s-2"]
FIDELITIES = [f.value for f in Fidelity]
TYPES = [t.value for t in PageType]
SELECTS = [
    "SELECT key, version FROM pages WHERE key = ?",
    "SELECT * FROM page_history WHERE key = :k",
    "SELECT count(*) AS n FROM journal WHERE state = ?",
    "SELECT name FROM projects WHERE name LIKE ?",
    "SELECT ? AS echo",
    "SELECT * FROM fault_counts",
    "SELECT * FROM journal_outcomes",
    "PRAGMA table_info(pages)",
]
CHANGES = [
    "DELETE FROM pages WHERE key = ?",
    "UPDATE pages SET version = version + 1",
    "DROP TABLE pages",
    "ATTACH DATABASE ? AS evil",
    "VACUUM",
    "PRAGMA journal_mode = DELETE",
    "SELECT 1; DROP TABLE pages",
]


@dataclass
class Invocation:
    args: list[str]
    stdin: bytes | None = None
    put_content: str | None = None  # what a successful put must have stored


@st.composite
def invocations(draw: st.DrawFn, files: dict[str, Path]) -> Invocation:
    command = draw(
        st.sampled_from(
            [
                *("put", "show", "check", "assemble", "sql", "history", "info", "pages"),
                *("journal", "faults", "put", "show", "assemble", "sql", "put"),
            ]
        )
    )
    args: list[str] = [command]
    stdin: bytes | None = None
    put_content: str | None = None

    def maybe(flag: str, values: st.SearchStrategy[str]) -> None:
        if draw(SOMETIMES):
            args.extend([flag, draw(values)])

    def maybe_flag(flag: str) -> None:
        if draw(st.booleans()):
            args.append(flag)

    if command == "put":
        args.append(draw(key_text(fresh=True)))
        if draw(USUALLY):
            args.extend(["--type", draw(choice_text(TYPES))])
        if draw(st.booleans()):
            name = draw(st.sampled_from(sorted(files)))
            args.extend(["--file", str(files[name])])
            put_content = file_text(files[name])
        else:
            stdin = draw(
                mostly(
                    st.sampled_from(
                        [b"Prefers spaces.", "Ünïcödé 🦀 text".encode(), b"x\x00y", b"a" * 5000]
                    ),
                    st.one_of(
                        st.binary(max_size=40),
                        st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
                        st.sampled_from([b"\xff\xfe", b" \n", b"", b"\xed\xa0\x80"]),
                    ),
                )
            )
            try:
                text = stdin.decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            put_content = text if text.strip() else None
        maybe("--project", name_text(PROJECTS))
        maybe("--session", name_text(SESSIONS))
        maybe("--pin", choice_text(["hard", "soft", "none"]))
        maybe("--priority", int_text((0, 1, 7)))
        maybe("--expected-version", int_text((0, 1, 2, 3)))
        maybe(
            "--structured",
            st.one_of(
                st.sampled_from(['{"goal": "g", "current_step": "s"}', "{}", "[]", "{", "null"]),
                HOSTILE_TEXT,
            ),
        )
        maybe(
            "--provenance",
            st.one_of(
                st.sampled_from(['{"uri": "file:///x"}', '{"uri": ""}', "{}", '"x"']),
                HOSTILE_TEXT,
            ),
        )
    elif command == "show":
        args.append(draw(key_text()))
        maybe("--project", name_text(PROJECTS))
        maybe("--session", name_text(SESSIONS))
        maybe("--fidelity", choice_text(FIDELITIES))
        maybe("--version", int_text((1, 2, 3)))
    elif command == "history":
        args.append(draw(key_text()))
        maybe("--project", name_text(PROJECTS))
        maybe("--session", name_text(SESSIONS))
    elif command == "pages":
        maybe("--type", choice_text(TYPES))
        maybe("--project", name_text(PROJECTS))
        maybe("--session", name_text(SESSIONS))
    elif command == "journal":
        maybe("--state", choice_text(["staged", "rejected", "applied", "quarantined"]))
        maybe("--session", name_text(SESSIONS))
        maybe("--limit", int_text())
    elif command == "faults":
        maybe("--session", name_text(SESSIONS))
        maybe_flag("--events")
    elif command == "assemble":
        if draw(USUALLY):
            args.extend(["--session", draw(name_text(SESSIONS))])
        if draw(USUALLY):
            args.extend(["--budget", draw(int_text((2000, 5000, 100_000, 10**9)))])
        maybe("--project", name_text(PROJECTS))
        if not draw(USUALLY):
            args.extend(["--fixed-file", str(files[draw(st.sampled_from(sorted(files)))])])
        for demanded in draw(st.lists(key_text(), max_size=3)):
            args.extend(["--demand", demanded])
        maybe_flag("--explain")
        maybe_flag("--record")
    elif command == "sql":
        statement = draw(
            mostly(st.sampled_from(SELECTS), st.one_of(st.sampled_from(CHANGES), HOSTILE_TEXT))
        )
        args.append(statement)
        wanted = statement.count("?") + statement.count(":k")
        for _ in range(draw(st.integers(0, 3).map(lambda n: wanted if n else 2 - wanted))):
            param = draw(key_text())
            args.extend(["--param", f"k={param}" if ":k" in statement else param])
        maybe("--format", choice_text(["table", "json", "csv"]))
        maybe("--limit", int_text())
    elif command == "check":
        maybe_flag("--no-recount")
    if draw(st.booleans()):
        args.append("--json")
    return Invocation(args=args, stdin=stdin, put_content=put_content)


def check_put(store: Store, invocation: Invocation, result: Result) -> None:
    """A put that exited 0 stored exactly the content it was given, as a new version."""
    (entry,) = store.query("SELECT * FROM journal ORDER BY lsn DESC LIMIT 1")
    assert entry["state"] == "applied", entry
    page = store.page(
        entry["key"],
        project=entry["project"],
        session=entry["session_id"] or None,
        version=entry["version"],
    )
    assert page.tokens > 0
    if "--json" in invocation.args:
        assert json.loads(result.stdout)["version"] == entry["version"]
    else:
        assert f" v{entry['version']} (" in result.stdout
    if invocation.put_content is not None:
        assert page.content == invocation.put_content


def test_generated_cli_arguments_end_in_a_result_or_one_line(
    db: Path, inputs: dict[str, Path]
) -> None:
    """Generated commands on one seeded database: each ends in a result or one error line, a
    successful put stored exactly its content, and the seeded history is never touched."""
    store = Store.open(db, create=False)
    prepared = prepare(store)
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(invocation=invocations(inputs))
    @example(Invocation(["put", "k/nul", "--type", "preference"], b"x\x00y", "x\x00y"))
    @example(
        Invocation(["pages", "--project", "'; DROP TABLE pages; --", "--session", '" OR 1=1 --'])
    )
    @example(Invocation(["show", "k/\udcff"]))  # an invalid UTF-8 byte in argv
    @example(Invocation(["journal", "--limit", str(10**30)]))
    @example(Invocation(["sql", "SELECT 1", "--limit", str(2**31)]))
    @example(Invocation(["assemble", "--session", "s-1", "--budget", str(2**63), "--record"]))
    def run(invocation: Invocation) -> None:
        result = invoke(db, *invocation.args, input=invocation.stdin)
        assert_cli_outcome(result, invocation.args)
        kind = f"{invocation.args[0]} exit {result.exit_code}"
        outcomes[kind] = outcomes.get(kind, 0) + 1
        if invocation.args[0] == "check":
            assert result.exit_code == 0, result.output
        if invocation.args[0] == "put" and result.exit_code == 0:
            check_put(store, invocation, result)
        assert_history_kept(store, prepared)

    try:
        run()
        assert_history_kept(store, prepared)
        report = store.check()
        assert report.ok, report.findings
        assert set(tree(db.parent)) <= {db.name, f"{db.name}-wal", f"{db.name}-shm"}
    finally:
        store.close()
    print("outcomes:", sorted(outcomes.items()))
    for kind in ("put exit 0", "put exit 1", "show exit 0", "assemble exit 0", "sql exit 0"):
        assert outcomes.get(kind), (kind, outcomes)


def test_invalid_utf8_arguments_from_the_shell_are_one_line_errors(db: Path) -> None:
    """A real shell hands over raw bytes: an invalid UTF-8 byte in a key, project or filter."""
    env = {k: v for k, v in os.environ.items() if k not in ("CLAWVM_DEBUG", "CLAWVM_DB")}
    before = db.read_bytes()
    problems: list[str] = []
    for args in (
        [b"show", b"k/\xff"],
        [b"history", b"\xfe"],
        [b"pages", b"--project", b"\xff\xfe"],
        [b"journal", b"--session", b"s-\xff"],
        [b"put", b"k/\xff", b"--type", b"plan"],
        [b"put", b"k/ok", b"--type", b"preference", b"--project", b"p\xff"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "clawvm_store.cli", "--db", str(db), *args],
            input=b"Prefers tabs.",
            capture_output=True,
            env=env,
            cwd=PROJECT_ROOT,
            timeout=60,
        )
        stderr = proc.stderr.decode("utf-8", "replace")
        lines = stderr.splitlines()
        if (
            b"Traceback" in proc.stderr + proc.stdout
            or proc.returncode != 1
            or len(lines) != 1
            or not lines[0].startswith("error: ")
        ):
            problems.append(f"{args}: exit {proc.returncode}: {stderr.strip()[:200]}")
    assert not problems, "\n".join(problems)
    assert db.read_bytes() == before


# --- generated API inputs --------------------------------------------------------------------


class Weird:
    """An object of no useful type."""

    def __repr__(self) -> str:
        return "Weird()"


JUNK_VALUES: list[Any] = [
    None,
    0,
    -1,
    10**30,
    -(2**63) - 1,
    1.5,
    float("nan"),
    float("inf"),
    True,
    b"bytes",
    bytearray(b"ba"),
    [],
    ["a", 1],
    {},
    {"a": [1, {"b": None}]},
    (),
    Weird(),
    "",
    " \t",
    "a\x00b",
    "\udcff",
    "bogus",
    "'; DROP TABLE pages; --",
    '" OR 1=1 --',
    "x" * 5000,
]
JUNK = st.one_of(
    st.sampled_from(JUNK_VALUES),
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers() | st.none(), max_size=3),
    HOSTILE_TEXT,
)


@dataclass
class Env:
    store: Store
    session: Session


@dataclass(frozen=True)
class Call:
    run: Callable[[Env, dict[str, Any]], Any]
    valid: dict[str, Any]


TOOL_ARGS = {"path": "a.py"}
_calls = itertools.count()


def _tool_call(env: Env, a: dict[str, Any]) -> Any:
    """A tool call whose run() returns ``a["result"]``; valid arguments get a fresh nonce, so
    that every call really runs (a repeat would be served from the ledger)."""
    args = {**TOOL_ARGS, "n": next(_calls)} if a["args"] == TOOL_ARGS else a["args"]
    return env.session.tool_call(
        a["name"],
        args,
        lambda **_kwargs: a["result"],
        effect=a["effect"],
        idempotency_key=a["idempotency_key"],
        resources=a["resources"],
    )


API_CALLS: dict[str, Call] = {
    "store.put": Call(
        lambda env, a: env.store.put(**a),
        {
            "key": "hyp/put",
            "type": "preference",
            "content": "Prefers tabs.",
            "project": "default",
            "session": None,
            "expected_version": None,
            "op": "set",
            "pin": None,
            "priority": None,
            "scope": None,
            "provenance": None,
            "structured": None,
            "idempotency_key": None,
        },
    ),
    "store.page": Call(
        lambda env, a: env.store.page(**a),
        {"key": "plan/main", "project": "default", "session": None, "fidelity": "full"},
    ),
    "store.history": Call(
        lambda env, a: env.store.history(**a),
        {"key": "plan/main", "project": "default", "session": None},
    ),
    "store.pages": Call(
        lambda env, a: env.store.pages(**a), {"project": None, "type": None, "session": None}
    ),
    "store.journal_entries": Call(
        lambda env, a: env.store.journal_entries(**a),
        {"state": None, "session": None, "limit": None},
    ),
    "store.faults": Call(lambda env, a: env.store.faults(**a), {"session": None}),
    "store.resolve": Call(lambda env, a: env.store.resolve(**a), {"handle": "plan/main"}),
    "store.session": Call(
        lambda env, a: env.store.session(**a),
        {"session_id": "s-new", "project": "default", "principal": None},
    ),
    "store.assemble": Call(
        lambda env, a: env.store.assemble(**a),
        {"session": "s-1", "budget": 2000, "project": "default", "fixed": "", "demand": ()},
    ),
    "sess.stage": Call(
        lambda env, a: env.session.stage(**a),
        {
            "key": "hyp/stage",
            "type": "plan",
            "content": PLAN,
            "op": "set",
            "expected_version": None,
            "priority": None,
            "pin": None,
            "scope": None,
            "provenance": None,
            "structured": None,
            "idempotency_key": None,
        },
    ),
    "sess.assemble": Call(
        lambda env, a: env.session.assemble(**a),
        {"budget": 2000, "fixed": "", "demand": (), "on_insufficient": "report", "boost": None},
    ),
    "sess.tool_call": Call(
        _tool_call,
        {
            "name": "read_file",
            "args": TOOL_ARGS,
            "result": "print('hello')",
            "effect": "read",
            "idempotency_key": None,
            "resources": None,
        },
    ),
    "sess.recall": Call(lambda env, a: env.session.recall(**a), {"query": "payments", "limit": 5}),
    "sess.page": Call(lambda env, a: env.session.page(**a), {"key": "plan/main"}),
    "store.query": Call(
        lambda env, a: env.store.query(**a),
        {"sql": "SELECT key FROM pages WHERE key = ?", "params": ["plan/main"], "limit": None},
    ),
}
API_PARAMS = [(name, param) for name, call in API_CALLS.items() for param in call.valid]


@contextmanager
def api_env(db: Path) -> Iterator[Env]:
    store = Store.open(db, create=False)
    try:
        yield Env(store, store.session("s-hostile"))
    finally:
        store.close()


def call_api(env: Env, name: str, arguments: dict[str, Any], junk: dict[str, Any]) -> None:
    """Run one API call: it returns, or raises a one-line ClawVMError; nothing else."""
    where = f"{name}({', '.join(f'{k}={ascii(v)[:60]}' for k, v in junk.items())})"
    try:
        API_CALLS[name].run(env, dict(arguments))
    except ClawVMError as exc:
        assert_clawvm_error(exc, where)
    except Exception as exc:
        message = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise AssertionError(f"{where} raised raw {type(exc).__name__}: {message}") from exc


def finish(env: Env, db: Path, prepared: Prepared) -> None:
    """Write back whatever was staged; the store is consistent and lost no seeded history."""
    env.session.end_turn()
    assert not env.session.staged()
    assert_history_kept(env.store, prepared)
    report = env.store.check()
    assert report.ok, report.findings
    assert set(tree(db.parent)) <= {db.name, f"{db.name}-wal", f"{db.name}-shm"}


@pytest.mark.parametrize(("name", "param"), API_PARAMS, ids=[f"{n}.{p}" for n, p in API_PARAMS])
def test_every_parameter_refuses_junk_with_a_clawvm_error(db: Path, name: str, param: str) -> None:
    """Each parameter, in turn, gets every junk value while the others stay valid."""
    failures: list[str] = []
    with api_env(db) as env:
        prepared = prepare(env.store)
        for value in JUNK_VALUES:
            arguments = {**API_CALLS[name].valid, param: value}
            try:
                call_api(env, name, arguments, {param: value})
            except AssertionError as exc:
                failures.append(str(exc).splitlines()[0])
        finish(env, db, prepared)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", sorted(API_CALLS))
def test_generated_api_inputs_raise_only_clawvm_errors(db: Path, name: str) -> None:
    """Several parameters at once get generated junk; valid values elsewhere."""
    call = API_CALLS[name]
    with api_env(db) as env:
        prepared = prepare(env.store)

        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            junk = {
                param: data.draw(JUNK, label=param)
                for param in call.valid
                if data.draw(st.booleans(), label=f"junk {param}?")
            }
            call_api(env, name, {**call.valid, **junk}, junk)
            report = env.store.check(recount_tokens=False)
            assert report.ok, report.findings

        run()
        finish(env, db, prepared)


def test_content_over_the_limit_is_schema_invalid_and_journaled(
    db: Path, inputs: dict[str, Path]
) -> None:
    with api_env(db) as env:
        store = env.store
        prepared = prepare(store)
        assert len(HUGE.encode()) > LIMIT
        with pytest.raises(SchemaInvalid) as caught:
            store.put("big/page", type="preference", content=HUGE)
        assert_clawvm_error(caught.value)
        assert caught.value.reason == "SCHEMA_INVALID"
        (entry,) = store.journal_entries(state="rejected")[-1:]
        assert (entry.key, entry.reason, entry.lsn) == (
            "big/page",
            "SCHEMA_INVALID",
            caught.value.lsn,
        )
        with pytest.raises(NotFound):
            store.page("big/page")
        # The same content staged by a session is rejected at its boundary, with its reason.
        env.session.stage("big/staged", type="plan", content=HUGE)
        result = env.session.end_turn()
        assert not result.committed
        (staged,) = [e for e in store.journal_entries(state="rejected") if e.key == "big/staged"]
        assert staged.reason == "SCHEMA_INVALID"
        # Multi-byte text: fewer characters than the limit, more bytes.
        with pytest.raises(SchemaInvalid):
            store.put("big/euro", type="preference", content="€" * (LIMIT // 3 + 1))
        # Zero and negative budgets are refused before anything is assembled or recorded.
        for budget in (0, -1, -(10**30)):
            with pytest.raises(InvalidInput):
                env.session.assemble(budget)
        finish(env, db, prepared)
    result = invoke(
        db, "put", "big/file", "--type", "preference", "--file", str(inputs["huge.txt"])
    )
    assert_one_error_line(result, "SCHEMA_INVALID")


# --- read-only SQL ---------------------------------------------------------------------------


def refused_statements(evil: Path) -> list[str]:
    return [
        "INSERT INTO projects (name, created_at) VALUES ('evil', 'now')",
        "INSERT INTO pages SELECT * FROM pages",
        "REPLACE INTO meta (name, value) VALUES ('encoding', 'evil')",
        "UPDATE pages SET version = 99",
        "UPDATE journal SET state = 'applied' WHERE 1 = 1",
        "DELETE FROM pages",
        "DELETE FROM journal WHERE key = '' OR 1 = 1",
        "WITH doomed AS (SELECT 1) DELETE FROM page_versions",
        "DROP TABLE pages",
        "DROP VIEW page_history",
        "DROP INDEX ix_pages_project_type",
        "DROP TABLE IF EXISTS journal",
        "CREATE TABLE evil (x)",
        "CREATE TEMP TABLE evil (x)",
        "CREATE INDEX evil ON pages (key)",
        "CREATE VIEW evil AS SELECT 1",
        "CREATE TRIGGER evil AFTER INSERT ON pages BEGIN SELECT 1; END",
        "CREATE VIRTUAL TABLE evil USING fts5 (x)",
        "ALTER TABLE pages ADD COLUMN evil TEXT",
        "ALTER TABLE pages RENAME TO evil",
        f"ATTACH DATABASE '{evil}' AS evil",
        f"ATTACH 'file:{evil}?mode=rwc' AS evil",
        "DETACH DATABASE main",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA user_version = 7",
        "PRAGMA query_only = OFF",
        "PRAGMA writable_schema = ON",
        "PRAGMA foreign_keys = OFF",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "PRAGMA incremental_vacuum",
        "PRAGMA optimize",
        "VACUUM",
        f"VACUUM INTO '{evil}'",
        "REINDEX",
        "ANALYZE",
        "BEGIN IMMEDIATE",
        "SAVEPOINT evil",
        "SELECT load_extension('evil')",
        "SELECT 1; DROP TABLE pages",
        "SELECT 1; SELECT 2",
        "DELETE FROM pages; SELECT 1",
    ]


def test_sql_refuses_every_change_and_leaves_the_file_byte_identical(db: Path) -> None:
    evil = db.parent / "evil.db"
    statements = refused_statements(evil)
    before = db_files(db)
    assert sorted(before) == [db.name]
    for statement in statements:
        result = invoke(db, "sql", statement)
        line = assert_one_error_line(result)
        assert "refused" in line or "bad SQL" in line, (statement, line)
        assert db_files(db) == before, statement  # no -wal left behind, not a byte changed
        assert not evil.exists(), statement
    # The API refuses the same statements with the store open; db and -wal stay unchanged.
    store = Store.open(db, create=False)
    try:
        open_before = db_files(db)
        for statement in statements:
            with pytest.raises((ReadOnlyViolation, InvalidInput)) as caught:
                store.query(statement)
            assert_clawvm_error(caught.value, statement)
            assert db_files(db) == open_before, statement
            assert not evil.exists(), statement
        assert store.check().ok
    finally:
        store.close()
    assert db_files(db) == before


def test_sql_binds_injection_strings_as_data(db: Path) -> None:
    before = db_files(db)
    for injection in INJECTIONS:
        rows = json.loads(
            invoke(db, "sql", "SELECT ? AS v", "--param", injection, "--format", "json").stdout
        )
        assert rows == [{"v": injection}]
        result = invoke(
            db, "sql", "SELECT key FROM pages WHERE key = ?", "--param", injection, "--json"
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == []
        result = invoke(
            db, "sql", "SELECT key FROM pages WHERE project = :p", "--param", f"p={injection}"
        )
        assert (result.exit_code, result.stdout) == (0, "\n"), result.output  # no rows
    result = invoke(db, "sql", "SELECT key FROM pages WHERE key = ?", "--param", "plan/main")
    assert result.stdout == "key\nplan/main\n"
    count = invoke(db, "sql", "SELECT count(*) AS n FROM pages", "--format", "csv")
    assert count.stdout == f"n\n{len(SEEDED)}\n"
    assert db_files(db) == before


def test_injection_strings_in_keys_projects_and_filters_are_data(
    db: Path, inputs: dict[str, Path]
) -> None:
    good = str(inputs["good.txt"])
    key = "k/';DROP_TABLE_pages;--"
    project = "'; DROP TABLE pages; --"
    out = invoke(db, "put", key, "--type", "preference", "--file", good, "--project", project)
    assert out.exit_code == 0, out.output
    shown = invoke(db, "show", key, "--project", project)
    assert shown.stdout == inputs["good.txt"].read_text() + "\n"
    listing = json.loads(invoke(db, "--json", "pages", "--project", project).stdout)
    assert [(p["key"], p["project"]) for p in listing] == [(key, project)]
    for injected in ('" OR 1=1 --', "' OR '1'='1", "%", "*"):
        for args in (
            ["pages", "--project", injected],
            ["pages", "--session", injected],
            ["journal", "--session", injected],
            ["faults", "--session", injected],
        ):
            result = invoke(db, "--json", *args)
            assert result.exit_code == 0, (args, result.output)
            value = json.loads(result.stdout)
            assert value == [] or (isinstance(value, dict) and value.get("faults") == 0), (
                args,
                value,
            )
        assert_one_error_line(invoke(db, "show", "plan/main", "--project", injected), "no page")
    with closing(Store.open(db, create=False)) as store:
        assert len(store.pages()) == len(SEEDED) + 1
        assert store.check().ok


def test_sql_prints_text_that_is_not_utf8_without_an_internal_error(db: Path) -> None:
    """A TEXT value holding invalid UTF-8 (from a damaged row, or CAST) prints or fails in one line."""
    for output_format in ("table", "json", "csv"):
        result = invoke(db, "sql", "SELECT CAST(x'6bff' AS TEXT) AS v", "--format", output_format)
        assert_cli_outcome(result, ["sql", output_format])
        assert "internal error" not in result.stderr, (output_format, result.stderr)


# --- a database locked by another writer -----------------------------------------------------


def run_cli(
    db: Path, *args: str, stdin: str | None = None, **env_extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLAWVM_DEBUG", "CLAWVM_DB")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "clawvm_store.cli", "--db", str(db), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=120,
    )


def test_a_database_locked_by_another_writer(db: Path) -> None:
    with closing(Store.open(db, create=False)) as store:
        prepared = prepare(store)
    holder = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        assert holder.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        proc = run_cli(
            db,
            "put",
            "pref/locked",
            "--type",
            "preference",
            stdin="Prefers tabs.",
            CLAWVM_BUSY_TIMEOUT_MS="200",
        )
        elapsed = time.monotonic() - started
        assert "Traceback" not in proc.stderr + proc.stdout
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert "locked" in lines[0], lines[0]
        assert elapsed < 60, elapsed
        # Readers are not blocked by a writer (WAL): the same database answers a read.
        read = run_cli(db, "show", "rules/git", CLAWVM_BUSY_TIMEOUT_MS="200")
        assert (read.returncode, read.stdout) == (0, RULE + "\n"), read.stderr
    finally:
        holder.close()  # rolls the writer's transaction back, releasing the lock
    proc = run_cli(db, "put", "pref/locked", "--type", "preference", stdin="Prefers tabs.")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pref/locked v1 ("), proc.stdout
    with closing(Store.open(db, create=False)) as store:
        assert_history_kept(store, prepared)
        assert store.page("pref/locked").content == "Prefers tabs."
        entries = [e for e in store.journal_entries() if e.key == "pref/locked"]
        assert [(e.state, e.version) for e in entries] == [("applied", 1)]
        assert store.check().ok


def test_busy_is_the_library_error_for_a_locked_database(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API answers a held lock with Busy, after its busy timeout; nothing is staged."""
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 100)
    store = Store.open(db, create=False)
    try:
        holder = sqlite3.connect(db, isolation_level=None, timeout=0)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(Busy) as caught:
                store.put("pref/busy", type="preference", content="Prefers tabs.")
            assert_clawvm_error(caught.value)
            assert "locked" in str(caught.value)
        finally:
            holder.close()
        assert not [e for e in store.journal_entries() if e.key == "pref/busy"]
        assert store.put("pref/busy", type="preference", content="Prefers tabs.").version == 1
        assert store.check().ok
    finally:
        store.close()


# --- a full disk -----------------------------------------------------------------------------


def words(rng: random.Random, count: int) -> str:
    return " ".join(
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(count)
    )


@contextmanager
def tiny_filesystem(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("no mount(8) here: the injected-error variant covers a full disk")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); see the injected variant")
    try:
        yield where
    finally:
        for _ in range(20):
            if (
                subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def test_a_full_disk_tiny_filesystem(tmp_path: Path, template: Path) -> None:
    with tiny_filesystem(tmp_path / "tiny", "640k") as mount:
        path = mount / "agent.db"
        shutil.copyfile(template, path)
        rng = random.Random(7)
        acknowledged: dict[str, str] = {}
        store = Store.open(path, create=False)
        try:
            prepared = prepare(store)
            error: BaseException | None = None
            for number in range(5000):
                content = words(rng, 300)
                try:
                    store.put(f"fill/{number}", type="preference", content=content)
                except ClawVMError as exc:
                    error = exc
                    break
                acknowledged[f"fill/{number}"] = content
            assert isinstance(error, StorageFull), repr(error)
            assert_clawvm_error(error)
            assert acknowledged, "the filesystem filled up before the first write"
            # Still usable for reading while full; the failed write left no trace.
            assert store.check().ok
            assert all(store.page(k).content == v for k, v in acknowledged.items())
            with pytest.raises(NotFound):
                store.page(f"fill/{len(acknowledged)}")
            # The CLI says the same in one line. (A write as small as the last ones could fit in
            # pages that applied entries freed when they gave their content up to their versions,
            # so this one is larger than any free space the file can hold.)
            result = invoke(
                path, "put", "fill/cli", "--type", "preference", input=words(rng, 40_000)
            )
            assert_one_error_line(result, "no space left")
            assert_history_kept(store, prepared)
        finally:
            store.close()
        assert set(tree(mount)) <= {path.name, f"{path.name}-wal", f"{path.name}-shm"}
        # Reopened (still full): every acknowledged page is intact and check() is clean.
        with closing(Store.open(path, create=False)) as store:
            report = store.check()
            assert report.ok, report.findings
            assert all(store.page(k).content == v for k, v in acknowledged.items())
            assert_history_kept(store, prepared)
        result = invoke(path, "check")
        assert result.exit_code == 0, result.output


@contextmanager
def disk_full_on_insert(after: int) -> Iterator[list[str]]:
    """Every engine: the (after+1)th INSERT and later ones fail as a full disk would."""
    fired: list[str] = []
    inserts = [0]

    def before_cursor_execute(*args: Any) -> None:
        statement = args[2]
        if statement.lstrip().upper().startswith("INSERT"):
            inserts[0] += 1
            if inserts[0] > after:
                fired.append(statement.split("(")[0])
                raise sqlite3.OperationalError("database or disk is full")

    event.listen(Engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield fired
    finally:
        event.remove(Engine, "before_cursor_execute", before_cursor_execute)


def test_a_full_disk_injected_error(db: Path, inputs: dict[str, Path]) -> None:
    with closing(Store.open(db, create=False)) as store:
        prepared = prepare(store)
        store.put("pref/first", type="preference", content="Prefers tabs.")
    before = db_files(db)
    good = str(inputs["good.txt"])
    with disk_full_on_insert(after=0) as fired:
        result = invoke(db, "put", "pref/full", "--type", "preference", "--file", good)
        assert fired
    assert_one_error_line(result, "no space left")
    assert db_files(db) == before
    with disk_full_on_insert(after=2) as fired, closing(Store.open(db, create=False)) as store:
        with pytest.raises(StorageFull) as caught:
            store.put("pref/full", type="preference", content="Prefers spaces.")
        assert fired
        assert_clawvm_error(caught.value)
    with closing(Store.open(db, create=False)) as store:
        report = store.check()
        assert report.ok, report.findings
        assert_history_kept(store, prepared)
        assert store.page("pref/first").content == "Prefers tabs."
        with pytest.raises(NotFound):
            store.page("pref/full")
        assert not [e for e in store.journal_entries() if e.key == "pref/full"]
        assert store.put("pref/full", type="preference", content="Prefers spaces.").version == 1


# --- no writes outside the database; new files are 0600 --------------------------------------


def test_commands_write_only_the_database_and_the_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inputs: dict[str, Path]
) -> None:
    work = tmp_path / "work"
    home = tmp_path / "home"
    scratch = tmp_path / "scratch"
    dest = tmp_path / "dest"
    for folder in (work, home, scratch, dest):
        folder.mkdir()
    monkeypatch.chdir(work)
    for name in ("HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, str(home))
    for name in ("TMPDIR", "TEMP", "TMP", "SQLITE_TMPDIR"):
        monkeypatch.setenv(name, str(scratch))
    monkeypatch.delenv("CLAWVM_DB", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    inputs_before = tree(inputs["good.txt"].parent)
    own = {"clawvm.db", "clawvm.db-wal", "clawvm.db-shm"}
    previous_umask = os.umask(0)  # the files must be private whatever the umask says
    try:
        good = str(inputs["good.txt"])
        commands: list[tuple[list[str], str | None]] = [
            (["init"], None),
            (["put", "pref/tabs", "--type", "preference", "--file", good], None),
            (["put", "plan/main", "--type", "plan", "--session", "s-1"], PLAN),
            (["put", "rules/git", "--type", "constraint"], RULE),
            (["put", "bad/page", "--type", "plan", "--file", str(inputs["bad-utf8.txt"])], None),
            (["show", "pref/tabs", "--fidelity", "structured"], None),
            (["history", "pref/tabs"], None),
            (["pages", "--json"], None),
            (["journal", "--state", "applied"], None),
            (["faults", "--events"], None),
            (["assemble", "--session", "s-1", "--budget", "500", "--explain", "--record"], None),
            (["assemble", "--session", "s-1", "--budget", "1"], None),
            (["sql", "SELECT key FROM pages WHERE key = ?", "--param", "pref/tabs"], None),
            (["sql", f"VACUUM INTO '{work / 'stolen.db'}'"], None),
            (["check"], None),
            (["info"], None),
            (["recover"], None),
            (["backup", str(dest / "copy.db")], None),
            (["backup", str(dest / "copy.db")], None),  # exists: refused, left alone
            (["backup", str(tmp_path / "no-such-dir" / "copy.db")], None),
            (["vacuum"], None),
            (["demo"], None),
        ]
        kept_backup: dict[str, bytes | None] | None = None
        for args, stdin in commands:
            result = CliRunner().invoke(app, args, input=stdin, prog_name="clawvm")
            assert_cli_outcome(result, args)
            created = set(tree(work))
            assert created <= own and "clawvm.db" in created, (args, created)
            for name in created:
                assert mode(work / name) == 0o600, (args, name, oct(mode(work / name)))
            assert tree(home) == {} and tree(scratch) == {}, (args, tree(home), tree(scratch))
            backups = tree(dest)
            assert set(backups) <= {"copy.db"}, args
            if kept_backup is not None:
                assert backups == kept_backup, args  # a refused backup left the copy alone
            elif backups:
                kept_backup = backups
            assert tree(inputs["good.txt"].parent) == inputs_before, args
            assert not (tmp_path / "no-such-dir").exists()
        assert mode(dest / "copy.db") == 0o600
        # A new database created by a command other than init (demo) is private too, and so
        # are the -wal and -shm files of an open store.
        result = CliRunner().invoke(app, ["--db", "fresh.db", "demo"], prog_name="clawvm")
        assert result.exit_code == 0, result.output
        assert mode(work / "fresh.db") == 0o600
        with closing(Store.open(work / "fresh.db", create=False)) as store:
            store.put("pref/open", type="preference", content="Prefers tabs.")
            for name in ("fresh.db", "fresh.db-wal", "fresh.db-shm"):
                assert mode(work / name) == 0o600, name
        with closing(Store.open(work / "api.db")) as store:
            assert mode(work / "api.db") == 0o600
        assert set(tree(work)) <= own | {"fresh.db", "api.db"}, tree(work).keys()
    finally:
        os.umask(previous_umask)


def test_refused_commands_create_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only init (and demo) create a database: other commands on a missing path create nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLAWVM_DB", raising=False)
    for args in (
        ["show", "'; DROP TABLE pages; --"],
        ["pages", "--project", "' OR 1=1 --"],
        ["sql", "CREATE TABLE evil (x)"],
        ["assemble", "--session", "s", "--budget", "0"],
        ["backup", "copy.db"],
        ["vacuum"],
        ["check"],
    ):
        result = CliRunner().invoke(app, args, prog_name="clawvm")
        assert_cli_outcome(result, args)
        assert result.exit_code == 1, (args, result.output)
        assert tree(tmp_path) == {}, (args, tree(tmp_path))


def test_prepared_dump_catches_a_change(db: Path) -> None:
    """The history dump these tests rely on does see a changed or removed seeded row."""
    with closing(Store.open(db, create=False)) as store:
        prepared = prepare(store)
    assert prepared.dump["page_versions"] and prepared.dump["representations"]
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("UPDATE representations SET tokens = tokens + 1 WHERE page_id = 1")
    with closing(Store.open(db, create=False)) as store, pytest.raises(AssertionError):
        assert_history_kept(store, prepared)
