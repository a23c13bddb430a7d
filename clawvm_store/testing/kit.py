"""The crash-test runner: dry run, seeded kill points, recovery, invariants, restart, report.

See :mod:`clawvm_store.testing` for the harness contract and what a campaign does.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _crashpoints
from ..errors import InvalidInput
from ..store import Store
from .invariants import (
    ACK_WRITES,
    Findings,
    check_final_state,
    check_floor_after_restart,
    check_state,
    check_write_reruns,
    final_pages,
    floor_pages,
    recover_twice,
    write_executions,
)

Harness = Callable[[str], object]
"""A harness entry point: called with the database path, returns when the agent is done."""

DEFAULT_TIMEOUT_S = 120.0
DB_NAME = "agent.db"


class CrashTestSetupError(InvalidInput):
    """The crash test cannot start: a bad ``MODULE:FUNCTION``, a kill point out of range."""


@dataclass(frozen=True)
class CrashFailure:
    """One broken invariant in one case, with everything needed to replay it exactly."""

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

    @property
    def kill_point(self) -> str:
        """``op 37 of 112: Session.end_turn/commit``, or why there was no kill.

        A case that also killed the restarted run adds ``, then op 12 of the restart: ...``.
        """
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
        """The command line that reproduces exactly this case."""
        if self.kill_at is None:
            return f"clawvm crashtest {self.harness} --kills 0"
        then = f" --then-kill-at {self.then_kill_at}" if self.then_kill_at is not None else ""
        return f"clawvm crashtest {self.harness} --seed {self.seed} --kill-at {self.kill_at}{then}"

    @property
    def replay_call(self) -> str:
        """The pytest call that reproduces exactly this case."""
        function = self.harness.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        then = f", then_kill_at={self.then_kill_at}" if self.then_kill_at is not None else ""
        return f"crash_harness.replay({function}, seed={self.seed}, kill_at={self.kill_at}{then})"

    def render(self) -> str:
        """The failure as a readable block of text."""
        kill = f"{self.kill_number} of {self.kills}" if self.kill_number is not None else "none"
        return "\n".join(
            [
                f"crash test failed: invariant {self.invariant}",
                f"  harness:    {self.harness}",
                f"  seed:       {self.seed}",
                f"  kill:       {kill}",
                f"  kill point: {self.kill_point}",
                f"  what broke: {self.detail}",
                f"  replay:     {self.replay_command}",
                f"  in pytest:  {self.replay_call}",
            ]
        )

    def to_json(self) -> dict[str, Any]:
        """The failure as plain JSON values."""
        return {
            "invariant": self.invariant,
            "detail": self.detail,
            "harness": self.harness,
            "seed": self.seed,
            "kill_number": self.kill_number,
            "kill_at": self.kill_at,
            "total_ops": self.total_ops,
            "label": self.label,
            "then_kill_at": self.then_kill_at,
            "then_label": self.then_label,
            "kill_point": self.kill_point,
            "replay": self.replay_command,
        }


@dataclass
class CrashTestReport:
    """The outcome of a campaign: what was done, what was checked, what broke."""

    harness: str
    seed: int
    kills: int = 0
    total_ops: int = 0
    acknowledged_writes: int = 0
    checked: Counter[str] = field(default_factory=Counter)
    failures: list[CrashFailure] = field(default_factory=list)
    kill_points: list[int] = field(default_factory=list)
    then_kill_points: list[int | None] = field(default_factory=list)
    restart_kills: int = 0
    elapsed_s: float = 0.0
    kept: str | None = None

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
        head = (
            f"crash test of {self.harness}: {self.kills} kills (seed {self.seed}; "
            f"{self.restart_kills} of them killed the restart too) over "
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
            lines.append(
                f"the failing cases are kept under {self.kept} (per case: agent.db after the "
                "restart, after-crash/agent.db as the kit recovered it, the runs' acks and logs)"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values (the shape of ``clawvm crashtest --json``)."""
        return {
            "harness": self.harness,
            "seed": self.seed,
            "ok": self.ok,
            "kills": self.kills,
            "total_ops": self.total_ops,
            "acknowledged_writes": self.acknowledged_writes,
            "invariants_checked": self.invariants_checked,
            "checked": dict(sorted(self.checked.items())),
            "kill_points": self.kill_points,
            "then_kill_points": self.then_kill_points,
            "restart_kills": self.restart_kills,
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
    error: str | None = None


def _child(harness: Harness, db: Path, acks: Path, kill_at: int | None, log: Path) -> None:
    """The body of a forked child; it leaves through ``os._exit`` on every path."""
    code = 1
    try:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        _crashpoints.enable(str(acks), kill_at)
        harness(str(db))
        _crashpoints.ack("done", ops=_crashpoints.count())
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


def _run_child(harness: Harness, db: Path, kill_at: int | None, name: str, timeout: float) -> _Run:
    """Fork a child that runs the harness (killing itself at ``kill_at``); collect its acks.

    A fork, not a new interpreter: the child inherits the imported library and the harness
    (which may be defined anywhere, a test module included), so a case costs milliseconds.
    The parent holds no database connection across the fork.
    """
    acks_path = db.parent / f"{name}.acks"
    log = db.parent / f"{name}.log"
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves through os._exit
        _child(harness, db, acks_path, kill_at, log)
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.002)
    lines = []
    if acks_path.exists():
        # A line is acknowledged only when it is whole (it ends in a newline).
        lines = [json.loads(line) for line in acks_path.read_bytes().split(b"\n")[:-1]]
    run = _Run([line for line in lines if line["k"] not in ("done", "error", "killed")], "exit")
    for line in lines:
        if line["k"] == "done":
            run.outcome, run.ops = "done", line["ops"]
        elif line["k"] == "error":
            run.outcome, run.error = "error", line["error"]
        elif line["k"] == "killed":
            run.outcome, run.ops, run.label = "killed", line["at"], line["label"]
    if timed_out:
        run.outcome = "timeout"
        run.error = f"the harness did not finish within {timeout:.0f} s"
    elif run.outcome == "killed" and not (
        os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    ):
        run.outcome, run.error = "exit", f"the child was not killed (status {status})"
    elif run.outcome == "exit":
        run.error = f"the harness process ended without finishing (status {status})"
        if log.exists():
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            run.error += ": " + " | ".join(tail)
    return run


def _last_line(error: str | None) -> str:
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no message)"


# --- the campaign -------------------------------------------------------------------------------


@dataclass
class _Baseline:
    ops: int
    writes: Counter[tuple[str, str, str]]
    pages: dict[tuple[str, str, str], tuple[str, bool, str]]


class _Campaign:
    def __init__(
        self,
        harness: Harness,
        *,
        seed: int,
        workdir: Path,
        timeout: float,
        report: CrashTestReport,
    ) -> None:
        self.harness = harness
        self.seed = seed
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.timeout = timeout
        self.report = report
        self.kept = False

    def fresh(self) -> Path:
        """The run directory, emptied: every case starts from nothing, at the same path.

        The same path matters: tool signatures and page contents that name a file beside the
        database are then identical in every case and in the uncrashed run.
        """
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        return self.run_dir / DB_NAME

    def keep(self, name: str) -> None:
        """Keep a failing case's directory for a post-mortem."""
        target = self.workdir / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.run_dir, target)
        self.kept = True

    def fail(
        self,
        findings: Findings,
        kill_number: int | None,
        kill_at: int | None,
        total: int,
        label: str | None,
        then: tuple[int, str | None] | None = None,
    ) -> list[CrashFailure]:
        return [
            CrashFailure(
                invariant=name,
                detail=detail,
                harness=self.report.harness,
                seed=self.seed,
                kill_number=kill_number,
                kills=self.report.kills,
                kill_at=kill_at,
                total_ops=total,
                label=label,
                then_kill_at=then[0] if then else None,
                then_label=then[1] if then else None,
            )
            for name, detail in findings.broken.items()
        ]

    def count_acks(self, acks: list[dict[str, Any]]) -> None:
        self.report.acknowledged_writes += sum(1 for ack in acks if ack["k"] in ACK_WRITES)

    def dry_run(self) -> tuple[_Baseline | None, list[CrashFailure]]:
        """Run the harness once without a kill: count its operations, learn its end state."""
        db = self.fresh()
        run = _run_child(self.harness, db, None, "dry", self.timeout)
        findings = Findings()
        self.count_acks(run.acks)
        if run.outcome != "done":
            findings.check(
                "harness_completes",
                [f"the harness fails without any crash: {_last_line(run.error)}"],
            )
            self.report.checked.update(findings.checked)
            self.keep("uncrashed")
            return None, self.fail(findings, None, None, 0, None)
        findings.check("harness_completes", [])
        if not db.exists():
            raise CrashTestSetupError(
                "the harness finished without creating a database at the path it was given: "
                "it must open Store.open(db_path) with the path the kit passes"
            )
        with Store.open(db, recover=False, create=False) as store:
            recover_twice(store, findings)
            check_state(store, run.acks, findings)
            pages = final_pages(store)
        self.report.checked.update(findings.checked)
        baseline = _Baseline(run.ops, write_executions(run.acks), pages)
        if findings.broken:
            self.keep("uncrashed")
        return baseline, self.fail(findings, None, None, run.ops, None)

    def case(
        self, number: int, kill_at: int, then_kill_at: int | None, baseline: _Baseline
    ) -> list[CrashFailure]:
        """Kill at ``kill_at``; check the recovered state; restart (killing the restart too at
        ``then_kill_at``, and checking again); run to the end; check everything."""
        db = self.fresh()
        findings = Findings()
        killed = _run_child(self.harness, db, kill_at, "killed", self.timeout)
        self.count_acks(killed.acks)
        total = baseline.ops
        if killed.outcome != "killed":
            if killed.outcome == "done":
                findings.check(
                    "deterministic_harness",
                    [
                        f"the run finished after {killed.ops} library operations without "
                        f"reaching op {kill_at}; the uncrashed run did {total}: the harness "
                        "must do the same operations on every run (a fake model, fixed inputs)"
                    ],
                )
            else:
                findings.check(
                    "harness_completes",
                    [f"the run failed before the kill point: {_last_line(killed.error)}"],
                )
            return self.finish_case(findings, number, kill_at, total, None)
        acks = list(killed.acks)
        floors = [self.check_copy(db, acks, findings, "after-crash")]

        then: tuple[int, str | None] | None = None
        restarted = _run_child(self.harness, db, then_kill_at, "restarted", self.timeout)
        self.count_acks(restarted.acks)
        acks += restarted.acks
        if restarted.outcome == "killed":
            # A second crash, in the restart (its own recovery included): check the recovered
            # state again, then restart once more and run to the end.
            assert then_kill_at is not None
            then = (then_kill_at, restarted.label)
            self.report.restart_kills += 1
            floors.append(self.check_copy(db, acks, findings, "after-second-crash"))
            restarted = _run_child(self.harness, db, None, "finished", self.timeout)
            self.count_acks(restarted.acks)
            acks += restarted.acks
        if restarted.outcome != "done":
            findings.check(
                "harness_completes",
                [
                    f"the restarted run failed: {_last_line(restarted.error)} "
                    "(its traceback is in the kept case's logs)"
                ],
            )
            return self.finish_case(findings, number, kill_at, total, killed.label, then)
        findings.check("harness_completes", [])
        with Store.open(db, recover=False, create=False) as store:
            recover_twice(store, findings)
            check_state(store, acks, findings)
            check_write_reruns(acks, baseline.writes, findings)
            for after_id, required in floors:
                check_floor_after_restart(store, after_id, required, findings)
            check_final_state(final_pages(store), baseline.pages, findings)
        return self.finish_case(findings, number, kill_at, total, killed.label, then)

    def check_copy(
        self, db: Path, acks: list[dict[str, Any]], findings: Findings, name: str
    ) -> tuple[int, dict[str, list[tuple[str, str]]]]:
        """Recover and check a copy of the crashed database; returns what the floor check needs.

        A copy, so the harness's own ``Store.open`` does the recovery when it restarts (and the
        original stays exactly as the crash left it). The copy stays in the run directory: a
        kept failing case has it as ``after-crash/agent.db``.
        """
        check_dir = self.run_dir / name
        check_dir.mkdir()
        for suffix in ("", "-wal"):
            if Path(f"{db}{suffix}").exists():
                shutil.copyfile(f"{db}{suffix}", check_dir / f"{DB_NAME}{suffix}")
        if not (check_dir / DB_NAME).exists():
            return 0, {}  # killed before the database file existed
        with Store.open(check_dir / DB_NAME, recover=False, create=False) as store:
            recover_twice(store, findings)
            check_state(store, acks, findings)
            return floor_pages(store)

    def finish_case(
        self,
        findings: Findings,
        number: int,
        kill_at: int,
        total: int,
        label: str | None,
        then: tuple[int, str | None] | None = None,
    ) -> list[CrashFailure]:
        self.report.checked.update(findings.checked)
        if findings.broken:
            suffix = f"-then-{then[0]}" if then else ""
            self.keep(f"kill-{number}-op-{kill_at}{suffix}")
        return self.fail(findings, number, kill_at, total, label, then)


def run_crashtest(
    harness: Harness,
    *,
    kills: int = 50,
    seed: int = 0,
    kill_at: int | None = None,
    then_kill_at: int | None = None,
    restart_kills: bool = True,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[int, int], None] | None = None,
    name: str | None = None,
) -> CrashTestReport:
    """Crash-test ``harness``: ``kills`` seeded kill points (or exactly ``kill_at``).

    With ``restart_kills`` (the default) about half the cases also kill the restarted run, at a
    second seeded point (a crash during the restart's own recovery, or while it redoes a turn);
    ``then_kill_at`` replays such a case exactly.

    Returns a :class:`CrashTestReport`; it does not raise on a broken invariant (the pytest
    fixture does). ``workdir`` holds the databases (a temporary directory by default, removed
    unless a case failed: failing cases are kept there for a post-mortem). ``progress(done,
    total)`` is called after each case. ``name`` is how reports name the harness
    (``module:function`` by default).
    """
    if not callable(harness):
        raise CrashTestSetupError("the harness must be callable with the database path")
    if not hasattr(os, "fork"):
        raise CrashTestSetupError("the crash-test kit needs os.fork (Linux or macOS)")
    if isinstance(kills, bool) or not isinstance(kills, int) or kills < 0:
        raise CrashTestSetupError("kills must be a non-negative integer")
    if kill_at is not None and (
        isinstance(kill_at, bool) or not isinstance(kill_at, int) or kill_at < 1
    ):
        raise CrashTestSetupError("kill_at must be a positive integer")
    if then_kill_at is not None and (
        kill_at is None
        or isinstance(then_kill_at, bool)
        or not isinstance(then_kill_at, int)
        or then_kill_at < 1
    ):
        raise CrashTestSetupError("then_kill_at must be a positive integer, with kill_at")
    started = time.monotonic()
    report = CrashTestReport(harness=name or harness_name(harness), seed=seed)
    temporary = workdir is None
    root = (
        Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="clawvm-crashtest-"))
    )
    root.mkdir(parents=True, exist_ok=True)
    campaign = _Campaign(harness, seed=seed, workdir=root, timeout=timeout, report=report)
    try:
        baseline, failures = campaign.dry_run()
        report.failures.extend(failures)
        if baseline is not None:
            report.total_ops = baseline.ops
            if kill_at is not None:
                if kill_at > baseline.ops:
                    raise CrashTestSetupError(
                        f"kill point {kill_at} is beyond the {baseline.ops} library operations "
                        "of a run"
                    )
                points = [kill_at]
                thens: list[int | None] = [then_kill_at]
            else:
                # Every crash point equally likely; all of them when asked for at least as many.
                population = range(1, baseline.ops + 1)
                rng = random.Random(seed)
                points = rng.sample(population, kills) if kills < baseline.ops else list(population)
                # Drawn after the first points, so those do not depend on restart_kills. A
                # second point the restart does not reach just lets the restart finish.
                thens = [
                    rng.randrange(1, baseline.ops + 1) if rng.random() < 0.5 else None
                    for _ in points
                ]
                if not restart_kills:
                    thens = [None] * len(points)
            report.kills = len(points)
            report.kill_points = points
            report.then_kill_points = thens
            if progress is not None:
                progress(0, len(points))
            for number, (point, then) in enumerate(zip(points, thens, strict=True), start=1):
                report.failures.extend(campaign.case(number, point, then, baseline))
                if progress is not None:
                    progress(number, len(points))
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
    kill_at: int,
    then_kill_at: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> CrashTestReport:
    """Reproduce exactly one case of a campaign: the uncrashed run, then the kill at ``kill_at``
    (and the restart's kill at ``then_kill_at``, when the case had one)."""
    return run_crashtest(
        harness,
        seed=seed,
        kill_at=kill_at,
        then_kill_at=then_kill_at,
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
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> CrashTestReport:
        """Run a campaign; raise :class:`CrashInvariantError` with the report if anything broke."""
        __tracebackhide__ = True  # pytest: the report says it all, not the kit's frames
        report = run_crashtest(
            harness, kills=kills, seed=seed, workdir=self._next_dir(), timeout=timeout
        )
        if not report.ok:
            raise CrashInvariantError(report)
        return report

    def replay(
        self,
        harness: Harness,
        *,
        seed: int = 0,
        kill_at: int,
        then_kill_at: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> CrashTestReport:
        """Reproduce one case (from a failure report); raise if it still breaks an invariant."""
        __tracebackhide__ = True
        report = replay(
            harness,
            seed=seed,
            kill_at=kill_at,
            then_kill_at=then_kill_at,
            workdir=self._next_dir(),
            timeout=timeout,
        )
        if not report.ok:
            raise CrashInvariantError(report)
        return report
