"""The crash-test runner: dry run, seeded kills, recovery, invariants, restart, report.

See :mod:`clawvm_store.testing` for the harness contract and what a campaign does.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import _crashpoints
from ..errors import ClawVMError, InvalidInput
from ..store import Store
from .invariants import (
    ACK_WRITES,
    EvidenceKey,
    Findings,
    WriteIdentity,
    check_checkpoints,
    check_evidence,
    check_final_state,
    check_floor_after_restart,
    check_state,
    check_world,
    check_write_effects,
    final_evidence,
    final_pages,
    floor_pages,
    recover_twice,
    write_executions,
)

Harness = Callable[[str], object]
"""A harness entry point: called with the database path, returns when the agent is done."""
Observe = Callable[[str], object]
"""What a harness changes outside the store: called with the database path (or URL) after a
run, returns JSON-able state (files' contents, rows of a table of its own)."""
Mode = Literal["points", "time", "both"]
"""Where kills land: at the library's crash points, at seeded wall-clock instants, or both."""
MODES: tuple[Mode, ...] = ("points", "time", "both")

DEFAULT_TIMEOUT_S = 120.0
DB_NAME = "agent.db"
TIME_RESOLUTION_S = 0.0001
"""Kill instants are drawn on this grid, so a report's delay replays the same instant."""
TIME_SPAN = 0.9
"""Kill instants are drawn over this share of the uncrashed run's duration."""


class CrashTestSetupError(InvalidInput):
    """The crash test cannot start: a bad ``MODULE:FUNCTION``, a kill point out of range."""


def case_dir(db_path: str) -> Path:
    """The directory a harness keeps its files in (its world), the same on every run.

    Beside the database for an SQLite path; for a PostgreSQL URL, the current directory, which
    the kit makes the case's own directory before it calls the harness.
    """
    if "://" in db_path:
        return Path.cwd()
    return Path(db_path).parent


@dataclass(frozen=True)
class CrashFailure:
    """One broken invariant in one case, with everything needed to replay it."""

    invariant: str
    detail: str
    harness: str
    seed: int
    kill_number: int | None
    kills: int
    kill_at: int | None
    total_ops: int
    label: str | None
    then_kill_at: int | None = None
    then_label: str | None = None
    kill_after: float | None = None
    then_kill_after: float | None = None
    where: str | None = None
    then_where: str | None = None
    options: tuple[str, ...] = ()

    @property
    def mode(self) -> str | None:
        """``points`` or ``time``: how this case's kill was chosen (``None``: no kill)."""
        if self.kill_after is not None:
            return "time"
        return "points" if self.kill_at is not None else None

    @property
    def kill_point(self) -> str:
        """``op 37 of 112: Session.end_turn/commit``, ``0.0123 s into the run (...)``, or why
        there was no kill. A case that also killed the restarted run says where, after a comma.
        """
        if self.mode == "time":
            assert self.kill_after is not None
            text = _instant(self.kill_after, self.kill_at, self.total_ops, self.where, self.label)
            if self.then_kill_after is not None:
                then = _instant(
                    self.then_kill_after, self.then_kill_at, None, self.then_where, self.then_label
                )
                text += f", then {then.replace('into the run', 'into the restart')}"
            return text
        if self.kill_at is None:
            return "none (the uncrashed run)"
        where = f": {self.label}" if self.label else ""
        text = f"op {self.kill_at} of {self.total_ops}{where}"
        if self.then_kill_at is not None:
            then = f": {self.then_label}" if self.then_label else ""
            text += f", then op {self.then_kill_at} of the restart{then}"
        return text

    @property
    def replay_command(self) -> str:
        """The command line that reproduces this case (a time kill: as far as timing allows)."""
        options = "".join(f" {option}" for option in self.options)
        if self.mode == "time":
            then = (
                f" --then-kill-after {self.then_kill_after:g}"
                if self.then_kill_after is not None
                else ""
            )
            return (
                f"clawvm crashtest {self.harness} --seed {self.seed} "
                f"--kill-after {self.kill_after:g}{then}{options}"
            )
        if self.kill_at is None:
            return f"clawvm crashtest {self.harness} --kills 0{options}"
        then = f" --then-kill-at {self.then_kill_at}" if self.then_kill_at is not None else ""
        return (
            f"clawvm crashtest {self.harness} --seed {self.seed} --kill-at {self.kill_at}"
            f"{then}{options}"
        )

    @property
    def replay_call(self) -> str:
        """The pytest call that reproduces this case."""
        function = self.harness.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        if self.mode == "time":
            then = (
                f", then_kill_after={self.then_kill_after:g}"
                if self.then_kill_after is not None
                else ""
            )
            return (
                f"crash_harness.replay({function}, seed={self.seed}, "
                f"kill_after={self.kill_after:g}{then})"
            )
        then = f", then_kill_at={self.then_kill_at}" if self.then_kill_at is not None else ""
        return f"crash_harness.replay({function}, seed={self.seed}, kill_at={self.kill_at}{then})"

    def render(self) -> str:
        """The failure as a readable block of text."""
        kill = f"{self.kill_number} of {self.kills}" if self.kill_number is not None else "none"
        lines = [
            f"crash test failed: invariant {self.invariant}",
            f"  harness:    {self.harness}",
            f"  seed:       {self.seed}",
            f"  kill:       {kill}",
            f"  kill point: {self.kill_point}",
            f"  what broke: {self.detail}",
            f"  replay:     {self.replay_command}",
            f"  in pytest:  {self.replay_call}",
        ]
        if self.mode == "time":
            lines.append("  (a wall-clock kill replays as far as timing allows: near that instant)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The failure as plain JSON values."""
        return {
            "invariant": self.invariant,
            "detail": self.detail,
            "harness": self.harness,
            "seed": self.seed,
            "mode": self.mode,
            "kill_number": self.kill_number,
            "kill_at": self.kill_at,
            "kill_after": self.kill_after,
            "where": self.where,
            "total_ops": self.total_ops,
            "label": self.label,
            "then_kill_at": self.then_kill_at,
            "then_kill_after": self.then_kill_after,
            "then_label": self.then_label,
            "kill_point": self.kill_point,
            "replay": self.replay_command,
        }


def _instant(
    after: float, ops: int | None, total: int | None, where: str | None, label: str | None
) -> str:
    """``0.0123 s into the run (op 37 of 112, in harness code: mod:fn)``."""
    if where is None:
        return f"{after:g} s into the run (the run ended first: no kill)"
    place = {"harness": "harness code", "library": "the library"}.get(where, "the kit")
    op = f"op {ops}" + (f" of {total}" if total else "") if ops is not None else "no op"
    return f"{after:g} s into the run ({op}, in {place}: {label})"


@dataclass(frozen=True)
class CaseRecord:
    """One case of a campaign: how it was killed, where the kill landed, what broke."""

    number: int
    mode: str
    kill_at: int | None
    kill_after: float | None
    label: str | None
    where: str | None
    then_kill_at: int | None
    then_kill_after: float | None
    then_label: str | None
    failed: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The case as plain JSON values."""
        return {
            "number": self.number,
            "mode": self.mode,
            "kill_at": self.kill_at,
            "kill_after": self.kill_after,
            "label": self.label,
            "where": self.where,
            "then_kill_at": self.then_kill_at,
            "then_kill_after": self.then_kill_after,
            "then_label": self.then_label,
            "failed": list(self.failed),
        }


@dataclass
class CrashTestReport:
    """The outcome of a campaign: what was done, what was checked, what broke."""

    harness: str
    seed: int
    mode: str = "both"
    kills: int = 0
    total_ops: int = 0
    acknowledged_writes: int = 0
    checked: Counter[str] = field(default_factory=Counter)
    failures: list[CrashFailure] = field(default_factory=list)
    kill_points: list[int] = field(default_factory=list)
    then_kill_points: list[int | None] = field(default_factory=list)
    kill_times: list[float] = field(default_factory=list)
    then_kill_times: list[float | None] = field(default_factory=list)
    restart_kills: int = 0
    time_kills: int = 0
    time_kills_in_harness: int = 0
    time_kills_missed: int = 0
    cases: list[CaseRecord] = field(default_factory=list)
    elapsed_s: float = 0.0
    run_s: float = 0.0
    kept: str | None = None
    backend: str = "sqlite"

    @property
    def ok(self) -> bool:
        """True when no invariant broke."""
        return not self.failures

    @property
    def invariants_checked(self) -> int:
        """How many invariant evaluations ran, over every case."""
        return sum(self.checked.values())

    def render(self) -> str:
        """A summary line, then every failure (the first in full)."""
        timed = ""
        if self.kill_times:
            timed = (
                f"; {len(self.kill_times)} of them at wall-clock instants: "
                f"{self.time_kills} landed, {self.time_kills_in_harness} in harness code, "
                f"{self.time_kills_missed} after the run had ended"
            )
        head = (
            f"crash test of {self.harness}: {self.kills} kills (seed {self.seed}; "
            f"{self.restart_kills} of them killed the restart too{timed}) over "
            f"{self.total_ops} library operations per run, {self.acknowledged_writes} "
            f"acknowledged writes, {self.invariants_checked} invariant checks, "
            f"{len(self.failures)} failures"
        )
        if not self.failures:
            return head
        lines = [head, "", self.failures[0].render()]
        if len(self.failures) > 1:
            lines.append("")
            lines.append("other failures:")
            lines.extend(
                f"  {failure.invariant} at {failure.kill_point} -> {failure.replay_command}"
                for failure in self.failures[1:11]
            )
            if len(self.failures) > 11:
                lines.append(f"  ... and {len(self.failures) - 11} more")
        if self.kept:
            where = (
                "agent.db after the restart, after-crash/agent.db as the kit recovered it, "
                if self.backend == "sqlite"
                else ""
            )
            lines.append(
                f"the failing cases are kept under {self.kept} (per case: {where}the runs' "
                "acks and logs)"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values (the shape of ``clawvm crashtest --json``)."""
        return {
            "harness": self.harness,
            "seed": self.seed,
            "mode": self.mode,
            "backend": self.backend,
            "ok": self.ok,
            "kills": self.kills,
            "total_ops": self.total_ops,
            "acknowledged_writes": self.acknowledged_writes,
            "invariants_checked": self.invariants_checked,
            "checked": dict(sorted(self.checked.items())),
            "kill_points": self.kill_points,
            "then_kill_points": self.then_kill_points,
            "kill_times": self.kill_times,
            "then_kill_times": self.then_kill_times,
            "restart_kills": self.restart_kills,
            "time_kills": self.time_kills,
            "time_kills_in_harness": self.time_kills_in_harness,
            "time_kills_missed": self.time_kills_missed,
            "cases": [case.to_json() for case in self.cases],
            "failures": [failure.to_json() for failure in self.failures],
            "elapsed_s": round(self.elapsed_s, 3),
        }


def harness_name(harness: Harness) -> str:
    """``module:qualname`` of a harness function (what ``clawvm crashtest`` takes)."""
    module = getattr(harness, "__module__", None) or "?"
    qualname = getattr(harness, "__qualname__", None) or repr(harness)
    return f"{module}:{qualname}"


def load_harness(target: str) -> Harness:
    """Import ``MODULE:FUNCTION`` (the current directory is importable, as with ``python -m``)."""
    module_name, sep, qualname = target.partition(":")
    if not sep or not module_name or not qualname:
        raise CrashTestSetupError(f"expected MODULE:FUNCTION, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CrashTestSetupError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        raise CrashTestSetupError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    for part in qualname.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CrashTestSetupError(f"{module_name!r} has no {qualname!r}") from None
    if not callable(value):
        raise CrashTestSetupError(f"{target} is not callable")
    return value  # type: ignore[no-any-return]


# --- one child run ------------------------------------------------------------------------------


@dataclass
class _Run:
    """One child process: what it acknowledged and how it ended."""

    acks: list[dict[str, Any]]
    outcome: str  # done | killed | error | timeout | exit
    ops: int = 0
    label: str | None = None
    where: str | None = None
    error: str | None = None
    elapsed: float = 0.0


def _child(
    harness: Harness,
    target: str,
    acks: Path,
    kill_at: int | None,
    kill_after: float | None,
    log: Path,
    cwd: Path | None,
) -> None:
    """The body of a forked child; it leaves through ``os._exit`` on every path."""
    code = 1
    try:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        if cwd is not None:
            os.chdir(cwd)
        started = time.monotonic()
        _crashpoints.enable(str(acks), kill_at, kill_after)
        harness(target)
        _crashpoints.ack(
            "done", ops=_crashpoints.count(), elapsed=round(time.monotonic() - started, 6)
        )
        code = 0
    except BaseException:
        try:
            traceback.print_exc()  # into the run's log, kept with a failing case
            _crashpoints.ack("error", error=traceback.format_exc()[-4000:])
        except BaseException:
            code = 2
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                code = code or 2
        os._exit(code)


def _fork(body: Callable[[], None], timeout: float) -> tuple[int, bool]:
    """Fork a child that runs ``body`` (which leaves through ``os._exit``); wait for it.

    Returns the wait status and whether the child was killed for running past ``timeout``.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves through os._exit
        body()
        os._exit(2)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return status, True
        time.sleep(0.002)


def _run_child(
    harness: Harness,
    target: str,
    run_dir: Path,
    name: str,
    timeout: float,
    *,
    kill_at: int | None = None,
    kill_after: float | None = None,
    cwd: Path | None = None,
) -> _Run:
    """Fork a child that runs the harness (killed at ``kill_at`` or after ``kill_after``
    seconds); collect its acks.

    A fork, not a new interpreter: the child inherits the imported library and the harness
    (which may be defined anywhere, a test module included), so a case costs milliseconds.
    The parent holds no database connection across the fork.
    """
    acks_path = run_dir / f"{name}.acks"
    log = run_dir / f"{name}.log"
    status, timed_out = _fork(
        lambda: _child(harness, target, acks_path, kill_at, kill_after, log, cwd), timeout
    )
    lines = []
    if acks_path.exists():
        # A line is acknowledged only when it is whole (it ends in a newline).
        lines = [json.loads(line) for line in acks_path.read_bytes().split(b"\n")[:-1]]
    run = _Run([line for line in lines if line["k"] not in ("done", "error", "killed")], "exit")
    killed = [line for line in lines if line["k"] == "killed"]
    done = [line for line in lines if line["k"] == "done"]
    errors = [line for line in lines if line["k"] == "error"]
    by_kill = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if timed_out:
        run.outcome = "timeout"
        run.error = f"the harness did not finish within {timeout:.0f} s"
    elif killed and by_kill:
        line = killed[-1]
        run.outcome, run.ops, run.label = "killed", line["at"], line["label"]
        run.where = line.get("where", "library")
        run.elapsed = float(line.get("after", 0.0))
    elif done and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        # A timer that fired as the run ended may have written its line: the run finished.
        run.outcome, run.ops, run.elapsed = "done", done[-1]["ops"], float(done[-1]["elapsed"])
    elif errors:
        run.outcome, run.error = "error", errors[-1]["error"]
    elif killed:
        run.outcome, run.error = "exit", f"the child was not killed (status {status})"
    else:
        run.error = f"the harness process ended without finishing (status {status})"
        if log.exists():
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            run.error += ": " + " | ".join(tail)
    return run


def _observe_child(observe: Observe, target: str, out: Path, cwd: Path | None) -> None:
    """Run ``observe`` in a forked child, writing its JSON (or its error) to ``out``."""
    code = 1
    try:
        if cwd is not None:
            os.chdir(cwd)
        try:
            value = json.loads(json.dumps(observe(target), sort_keys=True))
            text = json.dumps({"ok": True, "value": value})
            code = 0
        except BaseException as exc:
            text = json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        out.write_text(text, encoding="utf-8")
    finally:
        os._exit(code)


def _last_line(error: str | None) -> str:
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no message)"


# --- where a case's database lives ---------------------------------------------------------------


class _SQLiteTarget:
    """Each case's database is ``agent.db`` in the (emptied) run directory."""

    backend = "sqlite"
    cwd: Path | None = None

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def fresh(self) -> str:
        return str(self.run_dir / DB_NAME)

    def has_store(self, target: str) -> bool:
        return Path(target).exists()

    def copy(self, target: str, name: str) -> str | None:
        """A copy of the crashed database (file and WAL) in ``run_dir/name``."""
        check_dir = self.run_dir / name
        check_dir.mkdir()
        for suffix in ("", "-wal"):
            if Path(f"{target}{suffix}").exists():
                shutil.copyfile(f"{target}{suffix}", check_dir / f"{DB_NAME}{suffix}")
        copied = check_dir / DB_NAME
        return str(copied) if copied.exists() else None

    def close(self) -> None:
        """Nothing to drop: the run directory goes with the work directory."""


class _PostgresTarget:
    """Each case gets a fresh database of the same name on the server; copies are templates.

    ``admin_url`` names a role that may create databases. The harness gets the URL of the
    case's database, and runs with the case directory as its working directory.
    """

    backend = "postgresql"

    def __init__(self, admin_url: str, run_dir: Path) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        try:
            self.url = make_url(admin_url)
        except Exception as exc:
            raise CrashTestSetupError(f"not a database URL: {admin_url!r} ({exc})") from None
        if self.url.get_backend_name() != "postgresql":
            raise CrashTestSetupError(
                f"--postgres wants a postgresql+psycopg:// URL, not {admin_url!r}"
            )
        self.run_dir = run_dir
        self.cwd = run_dir
        self.name = f"clawvm_crashtest_{secrets.token_hex(6)}"
        self.made: set[str] = set()
        # NullPool: no connection outlives a statement, so none is ever copied into a fork.
        self.engine = create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            self.execute("SELECT 1")
        except Exception as exc:
            self.engine.dispose()
            raise CrashTestSetupError(
                f"cannot reach the PostgreSQL server {self.url.render_as_string()}: "
                f"{str(exc).splitlines()[0]}"
            ) from None

    def execute(self, sql: str) -> None:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            conn.execute(text(sql))

    def url_of(self, name: str) -> str:
        return str(self.url.set(database=name).render_as_string(hide_password=False))

    def recreate(self, name: str, template: str | None = None) -> None:
        """Drop ``name`` (disconnecting everyone) and create it, empty or from ``template``."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        clause = f' TEMPLATE "{template}"' if template else ""
        for attempt in range(100):
            if template:
                # A killed client's backend may linger a moment; a template must be unused.
                self.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    f" WHERE datname = '{template}' AND pid <> pg_backend_pid()"
                )
            try:
                self.execute(f'CREATE DATABASE "{name}"{clause}')
                break
            except Exception as exc:
                if "being accessed by other users" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.02)
        self.made.add(name)

    def fresh(self) -> str:
        self.recreate(self.name)
        return self.url_of(self.name)

    def has_store(self, target: str) -> bool:
        from sqlalchemy import create_engine, inspect
        from sqlalchemy.pool import NullPool

        engine = create_engine(target, poolclass=NullPool)
        try:
            return bool(inspect(engine).has_table("alembic_version"))
        finally:
            engine.dispose()

    def copy(self, target: str, name: str) -> str | None:
        copy = f"{self.name}_{name.replace('-', '_')}"
        self.recreate(copy, template=self.name)
        return self.url_of(copy)

    def close(self) -> None:
        try:
            for name in sorted(self.made):
                self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            self.engine.dispose()


# --- the campaign -------------------------------------------------------------------------------


@dataclass
class _Baseline:
    ops: int
    elapsed: float
    writes: Counter[WriteIdentity]
    pages: dict[tuple[str, str, str], tuple[str, bool, str]]
    evidence: dict[EvidenceKey, str]
    world: Any


@dataclass(frozen=True)
class _Kill:
    """How one case kills: at a crash point (``at``) or after a delay (``after``); the same for
    the restarted run (``then_*``), if at all."""

    at: int | None = None
    after: float | None = None
    then_at: int | None = None
    then_after: float | None = None

    @property
    def mode(self) -> str:
        return "time" if self.after is not None else "points"


@dataclass
class _Landed:
    """Where a run's kill landed (or that the timer fired too late)."""

    ops: int | None = None
    label: str | None = None
    where: str | None = None


class _Campaign:
    def __init__(
        self,
        harness: Harness,
        *,
        seed: int,
        workdir: Path,
        timeout: float,
        report: CrashTestReport,
        observe: Observe | None,
        compare_evidence: bool,
        postgres: str | None,
        options: tuple[str, ...],
    ) -> None:
        self.harness = harness
        self.seed = seed
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.timeout = timeout
        self.report = report
        self.observe = observe
        self.compare_evidence = compare_evidence
        self.options = options
        self.kept = False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.target: _SQLiteTarget | _PostgresTarget = (
            _PostgresTarget(postgres, self.run_dir)
            if postgres is not None
            else _SQLiteTarget(self.run_dir)
        )
        report.backend = self.target.backend

    def fresh(self) -> str:
        """An empty run directory and database: every case starts from nothing, at the same
        path (or URL).

        The same path matters: tool signatures and page contents that name a file beside the
        database are then identical in every case and in the uncrashed run.
        """
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        return self.target.fresh()

    def run(self, db: str, name: str, *, at: int | None = None, after: float | None = None) -> _Run:
        run = _run_child(
            self.harness,
            db,
            self.run_dir,
            name,
            self.timeout,
            kill_at=at,
            kill_after=after,
            cwd=self.target.cwd,
        )
        self.report.acknowledged_writes += sum(1 for ack in run.acks if ack["k"] in ACK_WRITES)
        return run

    def observe_world(self, db: str) -> tuple[bool, Any]:
        """``(True, observation)`` or ``(False, why observe failed)``."""
        assert self.observe is not None
        out = self.run_dir / "observed.json"
        out.unlink(missing_ok=True)
        observe = self.observe
        _fork(lambda: _observe_child(observe, db, out, self.target.cwd), self.timeout)
        if not out.exists():
            return False, "observe did not return (it crashed or ran past the timeout)"
        result = json.loads(out.read_text(encoding="utf-8"))
        return (True, result["value"]) if result["ok"] else (False, result["error"])

    def keep(self, name: str) -> None:
        """Keep a failing case's directory for a post-mortem."""
        target = self.workdir / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.run_dir, target)
        self.kept = True

    def fail(
        self,
        findings: Findings,
        number: int | None,
        kill: _Kill | None,
        first: _Landed,
        then: _Landed | None,
    ) -> list[CrashFailure]:
        return [
            CrashFailure(
                invariant=name,
                detail=detail,
                harness=self.report.harness,
                seed=self.seed,
                kill_number=number,
                kills=self.report.kills,
                kill_at=first.ops
                if kill is not None and kill.after is not None
                else (kill.at if kill is not None else None),
                total_ops=self.report.total_ops,
                label=first.label,
                then_kill_at=(
                    then.ops
                    if then is not None and kill is not None and kill.then_after is not None
                    else (kill.then_at if then is not None and kill is not None else None)
                ),
                then_label=then.label if then is not None else None,
                kill_after=kill.after if kill is not None else None,
                then_kill_after=kill.then_after if kill is not None and then is not None else None,
                where=first.where,
                then_where=then.where if then is not None else None,
                options=self.options,
            )
            for name, detail in findings.broken.items()
        ]

    @contextmanager
    def opened(self, db: str) -> Iterator[Store]:
        with Store.open(db, recover=False, create=False) as store:
            yield store

    def dry_run(self) -> tuple[_Baseline | None, list[CrashFailure]]:
        """Run the harness once without a kill: count its operations, learn its end state."""
        db = self.fresh()
        run = self.run(db, "dry")
        findings = Findings()
        if run.outcome != "done":
            findings.check(
                "harness_completes",
                [f"the harness fails without any crash: {_last_line(run.error)}"],
            )
            self.report.checked.update(findings.checked)
            self.keep("uncrashed")
            return None, self.fail(findings, None, None, _Landed(), None)
        findings.check("harness_completes", [])
        if not self.target.has_store(db):
            raise CrashTestSetupError(
                "the harness finished without creating a database at the path it was given: "
                "it must open Store.open(db_path) with the path the kit passes"
            )
        world = None
        if self.observe is not None:
            ok, world = self.observe_world(db)
            if not ok:
                raise CrashTestSetupError(f"observe failed after the uncrashed run: {world}")
        with self.opened(db) as store:
            recover_twice(store, findings)
            acks = [{**ack, "run": 0} for ack in run.acks]
            check_state(store, acks, findings)
            check_checkpoints(store, acks, (), findings)
            baseline = _Baseline(
                run.ops,
                run.elapsed,
                write_executions(run.acks),
                final_pages(store),
                final_evidence(store),
                world,
            )
        self.report.checked.update(findings.checked)
        self.report.total_ops = run.ops
        self.report.run_s = run.elapsed
        if findings.broken:
            self.keep("uncrashed")
        return baseline, self.fail(findings, None, None, _Landed(), None)

    def case(self, number: int, kill: _Kill, baseline: _Baseline) -> list[CrashFailure]:
        """Kill the run; check the recovered state; restart (killing the restart too, when the
        case says so, and checking again); run to the end; check everything."""
        db = self.fresh()
        findings = Findings()
        killed = self.run(db, "killed", at=kill.at, after=kill.after)
        first = _Landed(killed.ops, killed.label, killed.where)
        runs: list[_Run] = [killed]
        if killed.outcome == "done" and kill.after is not None:
            # The timer fired after the run had ended: an uncrashed case, checked as one.
            self.report.time_kills_missed += 1
            first = _Landed(killed.ops, None, None)
            findings.check("harness_completes", [])
            return self.final_checks(findings, number, kill, first, None, db, runs, baseline)
        if killed.outcome != "killed":
            if killed.outcome == "done":
                findings.check(
                    "deterministic_harness",
                    [
                        f"the run finished after {killed.ops} library operations without "
                        f"reaching op {kill.at}; the uncrashed run did {baseline.ops}: the "
                        "harness must do the same operations on every run (a fake model, "
                        "fixed inputs)"
                    ],
                )
            else:
                findings.check(
                    "harness_completes",
                    [f"the run failed before the kill point: {_last_line(killed.error)}"],
                )
            return self.finish_case(findings, number, kill, first, None)
        if kill.after is not None:
            self.report.time_kills += 1
            self.report.time_kills_in_harness += killed.where == "harness"
        floors = [self.check_copy(db, runs, findings, "after-crash")]

        then: _Landed | None = None
        restarted = self.run(db, "restarted", at=kill.then_at, after=kill.then_after)
        runs.append(restarted)
        if restarted.outcome == "killed":
            # A second crash, in the restart (its own recovery included): check the recovered
            # state again, then restart once more and run to the end.
            then = _Landed(restarted.ops, restarted.label, restarted.where)
            self.report.restart_kills += 1
            floors.append(self.check_copy(db, runs, findings, "after-second-crash"))
            restarted = self.run(db, "finished")
            runs.append(restarted)
        if restarted.outcome != "done":
            findings.check(
                "harness_completes",
                [
                    f"the restarted run failed: {_last_line(restarted.error)} "
                    "(its traceback is in the kept case's logs)"
                ],
            )
            return self.finish_case(findings, number, kill, first, then)
        findings.check("harness_completes", [])
        return self.final_checks(findings, number, kill, first, then, db, runs, baseline, floors)

    def final_checks(
        self,
        findings: Findings,
        number: int,
        kill: _Kill,
        first: _Landed,
        then: _Landed | None,
        db: str,
        runs: Sequence[_Run],
        baseline: _Baseline,
        floors: Sequence[tuple[int, dict[str, list[tuple[str, str]]]]] = (),
    ) -> list[CrashFailure]:
        """Everything, once the harness has run to its end after the crash (or crashes)."""
        acks = _numbered(runs)
        killed_runs = [index for index, run in enumerate(runs) if run.outcome == "killed"]
        world: tuple[bool, Any] | None = None
        if self.observe is not None:
            world = self.observe_world(db)
        with self.opened(db) as store:
            recover_twice(store, findings)
            check_state(store, acks, findings)
            check_checkpoints(store, acks, killed_runs, findings)
            check_write_effects(acks, baseline.writes, findings)
            for after_id, required in floors:
                check_floor_after_restart(store, after_id, required, findings)
            check_final_state(final_pages(store), baseline.pages, findings)
            if self.compare_evidence:
                check_evidence(final_evidence(store), baseline.evidence, findings)
        if world is not None:
            ok, observed = world
            if ok:
                check_world(observed, baseline.world, findings)
            else:
                findings.check("world_matches_uncrashed", [f"observe failed: {observed}"])
        return self.finish_case(findings, number, kill, first, then)

    def check_copy(
        self, db: str, runs: Sequence[_Run], findings: Findings, name: str
    ) -> tuple[int, dict[str, list[tuple[str, str]]]]:
        """Recover and check a copy of the crashed database; returns what the floor check needs.

        A copy, so the harness's own ``Store.open`` does the recovery when it restarts (and the
        original stays exactly as the crash left it). On SQLite the copy stays in the run
        directory: a kept failing case has it as ``after-crash/agent.db``.
        """
        acks = _numbered(runs)
        copy = self.target.copy(db, name)
        if copy is None or not self.target.has_store(copy):
            return 0, {}  # killed before the database existed
        try:
            store = Store.open(copy, recover=False, create=False)
        except ClawVMError as exc:
            if any(ack["k"] in ACK_WRITES for ack in acks):
                findings.check("check_clean", [f"the crashed database cannot be opened: {exc}"])
                return 0, {}
            return 0, {}  # killed while the store was being created: nothing was acknowledged
        with store:
            recover_twice(store, findings)
            check_state(store, acks, findings)
            killed_runs = [index for index, run in enumerate(runs) if run.outcome == "killed"]
            check_checkpoints(store, acks, killed_runs, findings)
            return floor_pages(store)

    def finish_case(
        self,
        findings: Findings,
        number: int,
        kill: _Kill,
        first: _Landed,
        then: _Landed | None,
    ) -> list[CrashFailure]:
        self.report.checked.update(findings.checked)
        self.report.cases.append(
            CaseRecord(
                number=number,
                mode=kill.mode,
                kill_at=first.ops if kill.after is not None else kill.at,
                kill_after=kill.after,
                label=first.label,
                where=first.where,
                then_kill_at=(then.ops if kill.then_after is not None else kill.then_at)
                if then
                else None,
                then_kill_after=kill.then_after if then else None,
                then_label=then.label if then else None,
                failed=tuple(findings.broken),
            )
        )
        if findings.broken:
            if kill.after is not None:
                name = f"kill-{number}-after-{kill.after:g}s"
                suffix = f"-then-{kill.then_after:g}s" if then and kill.then_after else ""
            else:
                name = f"kill-{number}-op-{kill.at}"
                suffix = f"-then-{kill.then_at}" if then else ""
            self.keep(name + suffix)
        return self.fail(findings, number, kill, first, then)


def _numbered(runs: Sequence[_Run]) -> list[dict[str, Any]]:
    """Every run's acknowledgements in order, each marked with the index of its run."""
    return [{**ack, "run": index} for index, run in enumerate(runs) for ack in run.acks]


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "positive" if minimum else "non-negative"
        raise CrashTestSetupError(f"{name} must be a {kind} integer")


def _check_delay(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise CrashTestSetupError(f"{name} must be a non-negative number of seconds")


def _draw(
    *,
    mode: Mode,
    kills: int,
    seed: int,
    ops: int,
    elapsed: float,
    restart_kills: bool,
) -> list[_Kill]:
    """The campaign's seeded kills: crash points first, then wall-clock instants.

    ``both`` gives the crash points the larger half. Crash points are drawn with
    ``random.Random(seed)`` exactly as before instants existed, so a seed names the same points
    in every mode; instants come from a generator of their own, uniform over the uncrashed
    run's duration (on a grid of 0.1 ms, so a reported delay replays the same instant).
    """
    timed = 0 if mode == "points" else kills if mode == "time" else kills // 2
    pointed = kills - timed
    found: list[_Kill] = []
    if pointed:
        # Every crash point equally likely; all of them when asked for at least as many.
        population = range(1, ops + 1)
        rng = random.Random(seed)
        points = rng.sample(population, pointed) if pointed < ops else list(population)
        # Drawn after the first points, so those do not depend on restart_kills. A second
        # point the restart does not reach just lets the restart finish.
        thens = [rng.randrange(1, ops + 1) if rng.random() < 0.5 else None for _ in points]
        if not restart_kills:
            thens = [None] * len(points)
        found += [_Kill(at=point, then_at=then) for point, then in zip(points, thens, strict=True)]
    if timed:
        rng = random.Random(f"time:{seed}")
        # A little short of the uncrashed run's duration: runs vary, and an instant after a
        # faster run's end kills nothing.
        span = max(elapsed * TIME_SPAN, TIME_RESOLUTION_S)

        def instant() -> float:
            return round(rng.uniform(0.0, span) / TIME_RESOLUTION_S) * TIME_RESOLUTION_S

        delays = [round(instant(), 4) for _ in range(timed)]
        then_delays = [round(instant(), 4) if rng.random() < 0.5 else None for _ in delays]
        if not restart_kills:
            then_delays = [None] * len(delays)
        found += [
            _Kill(after=delay, then_after=then)
            for delay, then in zip(delays, then_delays, strict=True)
        ]
    return found


def run_crashtest(
    harness: Harness,
    *,
    kills: int = 50,
    seed: int = 0,
    mode: Mode = "both",
    kill_at: int | None = None,
    then_kill_at: int | None = None,
    kill_after: float | None = None,
    then_kill_after: float | None = None,
    restart_kills: bool = True,
    observe: Observe | None = None,
    compare_evidence: bool = True,
    postgres: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[int, int], None] | None = None,
    name: str | None = None,
    options: Sequence[str] = (),
) -> CrashTestReport:
    """Crash-test ``harness``: ``kills`` seeded kills (or exactly ``kill_at`` / ``kill_after``).

    ``mode`` says where kills land: ``points`` at the library's crash points (exactly
    reproducible), ``time`` at seeded wall-clock instants over the uncrashed run's duration
    (anywhere: in the harness's own code and tools too; reproducible as far as timing allows),
    ``both`` (the default) half and half. With ``restart_kills`` (the default) about half the
    cases also kill the restarted run, at a second seeded point or instant;
    ``then_kill_at`` / ``then_kill_after`` replay such a case.

    ``observe(db_path)`` (or an ``observe`` attribute of the harness) returns what the harness
    changes outside the store, as JSON-able values; after each restart it must equal the
    uncrashed run's (``world_matches_uncrashed``). ``compare_evidence=False`` turns off
    ``evidence_matches_uncrashed``. ``postgres`` is the URL of a PostgreSQL server role that may
    create databases: every case then runs on a fresh database there, and the harness gets its
    URL (and the case directory as its working directory, see :func:`case_dir`).

    Returns a :class:`CrashTestReport`; it does not raise on a broken invariant (the pytest
    fixture does). ``workdir`` holds the databases (a temporary directory by default, removed
    unless a case failed: failing cases are kept there for a post-mortem). ``progress(done,
    total)`` is called after each case. ``name`` is how reports name the harness
    (``module:function`` by default); ``options`` are command-line options a replay line
    must repeat (``--observe ...``).
    """
    if not callable(harness):
        raise CrashTestSetupError("the harness must be callable with the database path")
    if not hasattr(os, "fork"):
        raise CrashTestSetupError("the crash-test kit needs os.fork (Linux or macOS)")
    _check_count("kills", kills, minimum=0)
    if mode not in MODES:
        raise CrashTestSetupError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if kill_at is not None:
        _check_count("kill_at", kill_at, minimum=1)
    if then_kill_at is not None:
        if kill_at is None:
            raise CrashTestSetupError("then_kill_at must be a positive integer, with kill_at")
        _check_count("then_kill_at", then_kill_at, minimum=1)
    if kill_after is not None:
        _check_delay("kill_after", kill_after)
        if kill_at is not None:
            raise CrashTestSetupError("give kill_at or kill_after, not both")
    if then_kill_after is not None:
        if kill_after is None:
            raise CrashTestSetupError("then_kill_after needs kill_after")
        _check_delay("then_kill_after", then_kill_after)
    if observe is None:
        observe = getattr(harness, "observe", None)
    if observe is not None and not callable(observe):
        raise CrashTestSetupError("observe must be callable with the database path")
    started = time.monotonic()
    report = CrashTestReport(harness=name or harness_name(harness), seed=seed, mode=mode)
    temporary = workdir is None
    root = (
        Path(workdir).resolve()
        if workdir is not None
        else Path(tempfile.mkdtemp(prefix="clawvm-crashtest-"))
    )
    root.mkdir(parents=True, exist_ok=True)
    campaign = _Campaign(
        harness,
        seed=seed,
        workdir=root,
        timeout=timeout,
        report=report,
        observe=observe,
        compare_evidence=compare_evidence,
        postgres=postgres,
        options=tuple(options),
    )
    try:
        baseline, failures = campaign.dry_run()
        report.failures.extend(failures)
        if baseline is not None:
            if kill_at is not None:
                if kill_at > baseline.ops:
                    raise CrashTestSetupError(
                        f"kill point {kill_at} is beyond the {baseline.ops} library operations "
                        "of a run"
                    )
                drawn = [_Kill(at=kill_at, then_at=then_kill_at)]
            elif kill_after is not None:
                drawn = [_Kill(after=kill_after, then_after=then_kill_after)]
            else:
                drawn = _draw(
                    mode=mode,
                    kills=kills,
                    seed=seed,
                    ops=baseline.ops,
                    elapsed=baseline.elapsed,
                    restart_kills=restart_kills,
                )
            report.kills = len(drawn)
            report.kill_points = [kill.at for kill in drawn if kill.at is not None]
            report.then_kill_points = [kill.then_at for kill in drawn if kill.at is not None]
            report.kill_times = [kill.after for kill in drawn if kill.after is not None]
            report.then_kill_times = [kill.then_after for kill in drawn if kill.after is not None]
            if progress is not None:
                progress(0, len(drawn))
            for number, kill in enumerate(drawn, start=1):
                report.failures.extend(campaign.case(number, kill, baseline))
                if progress is not None:
                    progress(number, len(drawn))
    finally:
        try:
            campaign.target.close()
        finally:
            shutil.rmtree(root / "run", ignore_errors=True)
            if campaign.kept:
                report.kept = str(root)
            elif temporary:
                shutil.rmtree(root, ignore_errors=True)
    report.elapsed_s = time.monotonic() - started
    return report


def replay(
    harness: Harness,
    *,
    seed: int = 0,
    kill_at: int | None = None,
    then_kill_at: int | None = None,
    kill_after: float | None = None,
    then_kill_after: float | None = None,
    observe: Observe | None = None,
    compare_evidence: bool = True,
    postgres: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> CrashTestReport:
    """Reproduce one case of a campaign: the uncrashed run, then the kill at ``kill_at`` (or
    after ``kill_after`` seconds: as far as timing allows), and the restart's kill at
    ``then_kill_at`` / ``then_kill_after`` when the case had one."""
    if kill_at is None and kill_after is None:
        raise CrashTestSetupError("replay needs kill_at or kill_after (from a failure report)")
    return run_crashtest(
        harness,
        seed=seed,
        kill_at=kill_at,
        then_kill_at=then_kill_at,
        kill_after=kill_after,
        then_kill_after=then_kill_after,
        observe=observe,
        compare_evidence=compare_evidence,
        postgres=postgres,
        workdir=workdir,
        timeout=timeout,
    )


class CrashInvariantError(AssertionError):
    """A crash test found a broken invariant; the message is the full report."""

    def __init__(self, report: CrashTestReport) -> None:
        super().__init__(report.render())
        self.report = report
        self.failures = report.failures


class CrashHarness:
    """The ``crash_harness`` pytest fixture: crash-test a harness, fail the test on a break."""

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.workdir = Path(workdir)
        self._runs = 0

    def _next_dir(self) -> Path:
        self._runs += 1
        return self.workdir / f"crashtest-{self._runs}"

    def run(
        self,
        harness: Harness,
        *,
        kills: int = 20,
        seed: int = 0,
        mode: Mode = "both",
        observe: Observe | None = None,
        compare_evidence: bool = True,
        postgres: str | None = None,
        restart_kills: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> CrashTestReport:
        """Run a campaign; raise :class:`CrashInvariantError` with the report if anything broke.

        The arguments are :func:`run_crashtest`'s: ``observe`` declares the harness's world,
        ``postgres`` runs every case on a PostgreSQL server instead of SQLite files.
        """
        __tracebackhide__ = True  # pytest: the report says it all, not the kit's frames
        report = run_crashtest(
            harness,
            kills=kills,
            seed=seed,
            mode=mode,
            observe=observe,
            compare_evidence=compare_evidence,
            postgres=postgres,
            restart_kills=restart_kills,
            workdir=self._next_dir(),
            timeout=timeout,
        )
        if not report.ok:
            raise CrashInvariantError(report)
        return report

    def replay(
        self,
        harness: Harness,
        *,
        seed: int = 0,
        kill_at: int | None = None,
        then_kill_at: int | None = None,
        kill_after: float | None = None,
        then_kill_after: float | None = None,
        observe: Observe | None = None,
        compare_evidence: bool = True,
        postgres: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> CrashTestReport:
        """Reproduce one case (from a failure report); raise if it still breaks an invariant."""
        __tracebackhide__ = True
        report = replay(
            harness,
            seed=seed,
            kill_at=kill_at,
            then_kill_at=then_kill_at,
            kill_after=kill_after,
            then_kill_after=then_kill_after,
            observe=observe,
            compare_evidence=compare_evidence,
            postgres=postgres,
            workdir=self._next_dir(),
            timeout=timeout,
        )
        if not report.ok:
            raise CrashInvariantError(report)
        return report
