"""The crash-test kit (clawvm_store.testing, ``clawvm crashtest``, the ``crash_harness`` fixture).

It must pass a correct harness, catch broken ones with the exact invariant, replay a failure
exactly from its kill point, and report in the shapes the README shows.
"""

from __future__ import annotations

import json
import operator
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from click.testing import CliRunner

import clawvm_store as cvm
from clawvm_store import _crashpoints
from clawvm_store.cli import app
from clawvm_store.testing import (
    INVARIANTS,
    CrashFailure,
    CrashHarness,
    CrashInvariantError,
    CrashTestSetupError,
    examples,
    replay,
    run_crashtest,
)
from clawvm_store.testing.examples import (
    correct_agent,
    direct_effect_agent,
    early_turn_agent,
    memory_agent,
    observe_world,
    replaying_agent,
)

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kit forks")

EXAMPLES = "clawvm_store.testing.examples"
POST_CRASH = (
    "acked_stages_present",
    "acked_puts_present",
    "acked_boundaries_kept",
    "nothing_half_applied",
    "check_clean",
    "recovery_idempotent",
    "tool_calls_paired",
)
COMPARED = (
    "write_effects_exactly_once",
    "final_state_matches_uncrashed",
    "evidence_matches_uncrashed",
    "world_matches_uncrashed",
)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example model answers at once: crash-point campaigns need no thinking time.

    The kit forks its runs from this process, so they all see the patched module.
    """
    monkeypatch.setattr(examples, "THINKING_ROUNDS", 0)


# --- harnesses defined here: the kit forks, so any callable works ---------------------------


def discarding_agent(db_path: str) -> None:
    """BROKEN: compacts with writeback=False, throwing acknowledged stages away."""
    with cvm.Store.open(db_path) as store:
        sess = store.session("s", project="p")
        sess.stage("plan/main", type="plan", content="Goal: keep this\n- [ ] step")
        sess.compact(writeback=False)
        sess.close()


def failing_agent(db_path: str) -> None:
    """BROKEN: raises before it finishes, crash or not."""
    with cvm.Store.open(db_path) as store:
        store.put("policy/agents", type="bootstrap", content="Be careful.", project="p")
        raise RuntimeError("the model endpoint is down")


def handmade_prompt_agent(db_path: str) -> None:
    """BROKEN: builds its prompts by hand from what it remembers writing.

    After a restart it remembers nothing, so its first prompt lacks the bootstrap page.
    """
    remembered: dict[str, str] = {}
    with cvm.Store.open(db_path) as store:
        try:
            store.page("policy/agents", project="p")
        except cvm.NotFound:
            store.put("policy/agents", type="bootstrap", content="Be careful.", project="p")
            remembered["policy/agents"] = "full"
        sess = store.session("s", project="p")
        for turn in range(sess.turn, 3):
            sess.observe_prompt(remembered, record=True)
            sess.stage(
                "conversation/main",
                type="conversation",
                op="append",
                content=f"user: {turn}",
                idempotency_key=f"c{turn}",
            )
            sess.end_turn()
        sess.close()


def make_drifting_agent(counter: Path) -> Any:
    """BROKEN: does fewer operations on every run after the first (it is not deterministic)."""

    def drifting_agent(db_path: str) -> None:
        runs = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(runs + 1))
        with cvm.Store.open(db_path) as store:
            sess = store.session("s", project="p")
            for index in range(4 if runs == 0 else 1):
                sess.stage(f"conversation/{index}", type="conversation", content=f"user: {index}")
            sess.close()

    return drifting_agent


# --- the correct harness passes -----------------------------------------------------------------


def test_the_correct_harness_survives_every_kill(tmp_path: Path, quick: None) -> None:
    report = run_crashtest(correct_agent, kills=25, seed=3, mode="points", workdir=tmp_path)
    assert report.ok, report.render()
    assert report.failures == []
    assert report.kills == 25
    assert len(set(report.kill_points)) == 25
    assert all(1 <= point <= report.total_ops for point in report.kill_points)
    # Every invariant ran: the post-crash ones on the uncrashed run, after each kill and after
    # each restart; the comparisons once per kill.
    # About half the cases also kill the restarted run; where that kill lands, the recovered
    # state is checked once more. The floor is checked when a restarted run assembles a prompt:
    # not when the kill came after the last turn's assembly, leaving nothing to redo.
    assert sum(point is not None for point in report.then_kill_points) == 11
    assert 1 <= report.restart_kills <= 11
    expected = {name: 1 + 2 * 25 + report.restart_kills for name in POST_CRASH}
    expected.update(harness_completes=1 + 25, **dict.fromkeys(COMPARED, 25))
    floors = report.checked.pop("floor_after_restart")
    assert dict(report.checked) == expected
    assert 15 <= floors <= 25 + report.restart_kills
    assert report.acknowledged_writes > 25 * 10
    assert report.kept is None
    assert sorted(os.listdir(tmp_path)) == []  # passing cases leave nothing behind


def test_the_same_seed_draws_the_same_kill_points(tmp_path: Path, quick: None) -> None:
    first = run_crashtest(correct_agent, kills=4, seed=11, mode="points", workdir=tmp_path / "a")
    second = run_crashtest(correct_agent, kills=4, seed=11, mode="points", workdir=tmp_path / "b")
    other = run_crashtest(correct_agent, kills=4, seed=12, mode="points", workdir=tmp_path / "c")
    assert first.kill_points == second.kill_points
    assert first.then_kill_points == second.then_kill_points
    assert first.kill_points != other.kill_points
    alone = run_crashtest(
        correct_agent, kills=4, seed=11, mode="points", restart_kills=False, workdir=tmp_path / "d"
    )
    assert alone.kill_points == first.kill_points
    assert (alone.then_kill_points, alone.restart_kills) == ([None] * 4, 0)
    assert first.to_json() | {"elapsed_s": 0} == second.to_json() | {"elapsed_s": 0}


# --- broken harnesses are caught, with the exact invariant --------------------------------------


def test_a_harness_that_keeps_its_state_in_memory_is_caught(tmp_path: Path, quick: None) -> None:
    report = run_crashtest(memory_agent, kills=12, seed=0, mode="points", workdir=tmp_path)
    assert not report.ok
    caught = {failure.invariant for failure in report.failures}
    # Restarting from scratch runs its write tool again; or, when the crash interrupted a
    # write, the library refuses to re-run it blindly and the restart fails.
    assert "write_effects_exactly_once" in caught
    assert caught <= {
        "write_effects_exactly_once",
        "harness_completes",
        "final_state_matches_uncrashed",
    }
    rerun = next(f for f in report.failures if f.invariant == "write_effects_exactly_once")
    assert rerun.detail.startswith(
        "write tool 'write_note' (session agent-1) ran 2 times with the same"
    )
    assert "an uncrashed run runs it 1 time" in rerun.detail
    assert rerun.harness == f"{EXAMPLES}:memory_agent"
    assert rerun.kill_number is not None and rerun.kill_at is not None
    then = f" --then-kill-at {rerun.then_kill_at}" if rerun.then_kill_at else ""
    assert rerun.replay_command == (
        f"clawvm crashtest {EXAMPLES}:memory_agent --seed 0 --kill-at {rerun.kill_at}{then}"
    )
    then_call = f", then_kill_at={rerun.then_kill_at}" if rerun.then_kill_at else ""
    assert rerun.replay_call == (
        f"crash_harness.replay(memory_agent, seed=0, kill_at={rerun.kill_at}{then_call})"
    )
    assert report.kept == str(tmp_path)
    suffix = f"-then-{rerun.then_kill_at}" if rerun.then_kill_at else ""
    kept = tmp_path / f"kill-{rerun.kill_number}-op-{rerun.kill_at}{suffix}"
    assert (kept / "agent.db").exists() and (kept / "after-crash" / "agent.db").exists()


def test_a_harness_that_redoes_a_turn_without_idempotency_keys_is_caught(
    tmp_path: Path, quick: None
) -> None:
    report = run_crashtest(replaying_agent, kills=12, seed=0, mode="points", workdir=tmp_path)
    assert not report.ok
    assert {failure.invariant for failure in report.failures} == {"final_state_matches_uncrashed"}
    assert all(
        failure.detail.startswith(
            "page demo/agent-1/conversation/main differs from the uncrashed run's: "
        )
        for failure in report.failures
    )


def test_a_harness_that_discards_staged_updates_is_caught_without_a_crash(tmp_path: Path) -> None:
    report = run_crashtest(discarding_agent, kills=3, seed=0, workdir=tmp_path)
    first = report.failures[0]
    assert (first.invariant, first.kill_number, first.kill_at) == (
        "acked_stages_present",
        None,
        None,
    )
    assert first.detail == (
        "stage lsn 1 of 'plan/main' was lost: discarded by a boundary that skipped writeback"
    )
    assert first.kill_point == "none (the uncrashed run)"
    assert first.replay_command.endswith(":discarding_agent --kills 0")


def test_a_harness_whose_first_prompt_after_a_restart_lacks_its_bootstrap_is_caught(
    tmp_path: Path,
) -> None:
    report = run_crashtest(handmade_prompt_agent, kills=6, seed=0, mode="points", workdir=tmp_path)
    assert {failure.invariant for failure in report.failures} == {"floor_after_restart"}
    assert report.failures[0].detail == (
        "bootstrap page 'policy/agents' is absent in the first assembly of s after the "
        "restart (floor structured)"
    )


def test_a_harness_that_fails_on_its_own_is_reported_as_such(tmp_path: Path) -> None:
    report = run_crashtest(failing_agent, kills=5, workdir=tmp_path)
    assert [(f.invariant, f.kill_at) for f in report.failures] == [("harness_completes", None)]
    assert report.failures[0].detail == (
        "the harness fails without any crash: RuntimeError: the model endpoint is down"
    )
    assert report.kills == 0


def test_a_harness_that_is_not_deterministic_is_reported(tmp_path: Path) -> None:
    harness = make_drifting_agent(tmp_path / "runs.txt")
    report = run_crashtest(harness, kills=100, mode="points", workdir=tmp_path / "work")
    caught = {failure.invariant for failure in report.failures}
    assert "deterministic_harness" in caught
    drift = next(f for f in report.failures if f.invariant == "deterministic_harness")
    assert "without reaching op" in drift.detail


# --- replay -----------------------------------------------------------------------------------------


def test_a_failure_replays_exactly_from_its_seed_and_kill_point(
    tmp_path: Path, quick: None
) -> None:
    report = run_crashtest(
        memory_agent, kills=12, seed=5, mode="points", workdir=tmp_path / "campaign"
    )
    failure = report.failures[0]
    assert failure.kill_at is not None
    again = replay(
        memory_agent,
        seed=5,
        kill_at=failure.kill_at,
        then_kill_at=failure.then_kill_at,
        workdir=tmp_path / "replay",
    )
    assert again.kill_points == [failure.kill_at]
    replayed = [f for f in again.failures if f.kill_at == failure.kill_at]
    original = [f for f in report.failures if f.kill_at == failure.kill_at]
    fields = (
        "invariant",
        "detail",
        "kill_at",
        "total_ops",
        "label",
        "then_kill_at",
        "then_label",
        "seed",
        "harness",
        "replay_command",
    )
    assert [tuple(getattr(f, n) for n in fields) for f in replayed] == [
        tuple(getattr(f, n) for n in fields) for f in original
    ]
    assert replayed[0].kill_number == 1 and original[0].kill_number == 1


def test_replay_refuses_a_kill_point_beyond_the_run(tmp_path: Path) -> None:
    with pytest.raises(CrashTestSetupError, match=r"kill point 100000 is beyond the \d+ library"):
        replay(correct_agent, kill_at=100000, workdir=tmp_path)


def test_the_fixture_raises_a_readable_assertion(tmp_path: Path, quick: None) -> None:
    harness = CrashHarness(tmp_path)
    assert harness.run(correct_agent, kills=2).ok
    with pytest.raises(CrashInvariantError) as caught:
        harness.run(replaying_agent, kills=12, mode="points")
    assert isinstance(caught.value, AssertionError)
    text = str(caught.value)
    assert text.startswith(f"crash test of {EXAMPLES}:replaying_agent: 12 kills (seed 0; ")
    assert "crash test failed: invariant final_state_matches_uncrashed" in text
    assert "  kill point: op " in text
    assert f"  replay:     clawvm crashtest {EXAMPLES}:replaying_agent --seed 0 --kill-at " in text
    assert "  in pytest:  crash_harness.replay(replaying_agent, seed=0, kill_at=" in text


# --- the library's hooks ---------------------------------------------------------------------------


def test_hooks_are_off_unless_the_kit_turns_them_on() -> None:
    assert _crashpoints.ACTIVE is False
    assert set(INVARIANTS) >= set(POST_CRASH)


def test_the_environment_turns_acks_and_kills_on(tmp_path: Path) -> None:
    script = (
        "import clawvm_store as cvm\n"
        "s = cvm.Store.open('agent.db')\n"
        "sess = s.session('s', project='p')\n"
        "sess.stage('plan/main', type='plan', content='Goal: g\\n- [ ] a')\n"
        "sess.end_turn()\n"
        "s.put('policy/x', type='bootstrap', content='Be kind.', project='p')\n"
    )
    env = {**os.environ, "CLAWVM_CRASHTEST_ACKS": str(tmp_path / "acks")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=False)
    assert done.returncode == 0
    lines = [json.loads(line) for line in (tmp_path / "acks").read_text().splitlines()]
    assert [line["k"] for line in lines] == ["stage", "boundary", "put"]
    assert lines[0]["lsn"] == 1 and lines[1]["committed"] == [1]
    assert (lines[2]["key"], lines[2]["version"]) == ("policy/x", 1)

    # Kill at the crash point just after the stage's commit, before its acknowledgement.
    stage_op = lines[0]["at"]
    (tmp_path / "acks").unlink()
    os.unlink(tmp_path / "agent.db")
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"agent.db{suffix}").unlink(missing_ok=True)
    killed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**env, "CLAWVM_CRASHTEST_KILL_AT": str(stage_op)},
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    lines = [json.loads(line) for line in (tmp_path / "acks").read_text().splitlines()]
    assert lines == [{"k": "killed", "label": "Session.stage/committed", "at": stage_op}]
    with cvm.Store.open(tmp_path / "agent.db") as store:  # in flight: here, whole
        assert store.page("plan/main", project="p", session="s").content == "Goal: g\n- [ ] a"
        assert store.check().ok


def test_a_harness_that_ignores_the_path_is_refused(tmp_path: Path) -> None:
    def elsewhere(db_path: str) -> None:
        cvm.Store.open(tmp_path / "elsewhere.db").close()

    with pytest.raises(CrashTestSetupError, match="without creating a database at the path"):
        run_crashtest(elsewhere, kills=1, workdir=tmp_path / "work")


def test_the_pytest_plugin_does_not_import_the_library_at_startup() -> None:
    probe = (
        "import sys, pytest_clawvm; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'clawvm_store'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- the command line ---------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_cli_passes_the_correct_harness(tmp_path: Path, quick: None) -> None:
    result = invoke(
        "crashtest",
        f"{EXAMPLES}:correct_agent",
        "--kills",
        "3",
        "--seed",
        "1",
        "--mode",
        "points",
        "--no-restart-kills",
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert (
        lines[0] == "kills\trestarts killed\ttime kills landed\tin harness code\t"
        "operations per run\tacknowledged writes\tinvariants checked\tfailures"
    )
    kills, restarts, timed, in_harness, ops, acked, checked, failures = lines[1].split("\t")
    # The uncrashed run: 7 post-crash checks and harness_completes. Each kill: the 7 twice,
    # harness_completes, the floor and the 4 comparisons with the uncrashed run.
    assert (kills, restarts, timed, in_harness, failures) == ("3", "0", "0", "0", "0")
    assert checked == str(8 + 20 * 3)
    assert int(ops) > 50 and int(acked) > 30
    assert lines[2] == "invariant\tchecked\tfailed"
    assert [line.split("\t")[0] for line in lines[3:]] == list(INVARIANTS)


def test_cli_json_shape(tmp_path: Path, quick: None) -> None:
    result = invoke("crashtest", f"{EXAMPLES}:correct_agent", "--kills", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {
        "harness",
        "seed",
        "mode",
        "backend",
        "ok",
        "kills",
        "total_ops",
        "acknowledged_writes",
        "invariants_checked",
        "checked",
        "kill_points",
        "then_kill_points",
        "kill_times",
        "then_kill_times",
        "restart_kills",
        "time_kills",
        "time_kills_in_harness",
        "time_kills_missed",
        "cases",
        "failures",
        "elapsed_s",
    }
    assert (data["harness"], data["seed"], data["ok"], data["kills"], data["failures"]) == (
        f"{EXAMPLES}:correct_agent",
        0,
        True,
        2,
        [],
    )
    assert data["invariants_checked"] == sum(data["checked"].values())


def test_cli_reports_a_failure_with_its_replay_line_and_exit_1(tmp_path: Path, quick: None) -> None:
    result = invoke(
        "crashtest",
        f"{EXAMPLES}:replaying_agent",
        "--kills",
        "6",
        "--mode",
        "points",
        "--workdir",
        str(tmp_path),
    )
    assert result.exit_code == 1
    assert "crash test failed: invariant final_state_matches_uncrashed" in result.output
    assert (
        f"replay:     clawvm crashtest {EXAMPLES}:replaying_agent --seed 0 --kill-at "
        in result.output
    )
    data = json.loads(
        invoke(
            "--json",
            "crashtest",
            f"{EXAMPLES}:replaying_agent",
            "--kills",
            "6",
            "--mode",
            "points",
            "--workdir",
            str(tmp_path / "json"),
        ).stdout
    )
    assert data["ok"] is False
    failure = data["failures"][0]
    assert set(failure) == {
        "invariant",
        "detail",
        "harness",
        "seed",
        "mode",
        "kill_number",
        "kill_at",
        "kill_after",
        "where",
        "total_ops",
        "label",
        "then_kill_at",
        "then_kill_after",
        "then_label",
        "kill_point",
        "replay",
    }
    assert failure["invariant"] == "final_state_matches_uncrashed"
    # The replay line reproduces that case alone.
    replayed = invoke(
        "--json",
        "crashtest",
        f"{EXAMPLES}:replaying_agent",
        "--kill-at",
        str(failure["kill_at"]),
        *(["--then-kill-at", str(failure["then_kill_at"])] if failure["then_kill_at"] else []),
        "--workdir",
        str(tmp_path / "replay"),
    )
    assert replayed.exit_code == 1
    again = json.loads(replayed.stdout)["failures"][0]
    same = ("invariant", "detail", "kill_at", "label", "then_kill_at", "then_label", "replay")
    assert {k: again[k] for k in same} == {k: failure[k] for k in same}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "error: expected MODULE:FUNCTION, got 'no_colon'"),
        ("no_such_module_xyz:main", "error: cannot import 'no_such_module_xyz': No module named"),
        (f"{EXAMPLES}:nothing", f"error: '{EXAMPLES}' has no 'nothing'"),
        (f"{EXAMPLES}:TURNS", f"error: {EXAMPLES}:TURNS is not callable"),
    ],
)
def test_cli_bad_entry_point_is_one_line_and_exit_2(target: str, message: str) -> None:
    result = CliRunner().invoke(app, ["crashtest", target])
    assert result.exit_code == 2
    assert result.output.startswith(message)
    assert len(result.output.strip().splitlines()) == 1


def test_cli_kill_point_beyond_the_run_is_exit_2() -> None:
    result = CliRunner().invoke(
        app, ["crashtest", f"{EXAMPLES}:correct_agent", "--kill-at", "99999"]
    )
    assert result.exit_code == 2
    assert result.output.startswith("error: kill point 99999 is beyond the ")


# --- the pytest plugin ---------------------------------------------------------------------------


def test_the_pytest_plugin_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_agent="""
        from clawvm_store.testing.examples import correct_agent, replaying_agent

        def test_correct_survives(crash_harness):
            report = crash_harness.run(correct_agent, kills=2)
            assert report.ok

        def test_replaying_is_caught(crash_harness):
            crash_harness.run(replaying_agent, kills=8, mode="points")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*CrashInvariantError: crash test of clawvm_store.testing.examples:replaying_agent*",
            "*crash test failed: invariant final_state_matches_uncrashed*",
            "*replay:     clawvm crashtest clawvm_store.testing.examples:replaying_agent --seed 0 --kill-at *",
            "*in pytest:  crash_harness.replay(replaying_agent, seed=0, kill_at=*",
        ]
    )


# --- the README's example -------------------------------------------------------------------------


def readme_harness() -> Any:
    """The harness the README shows, taken from the README itself."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("## Crash-test your own harness", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["main"]


def test_the_readme_harness_survives(tmp_path: Path) -> None:
    report = run_crashtest(readme_harness(), kills=12, seed=0, workdir=tmp_path)
    assert report.ok, report.render()
    assert report.harness == "readme_example:main"


# --- lost and doubled effects, the declared world, kills anywhere ------------------------------


@pytest.fixture
def two_turns(monkeypatch: pytest.MonkeyPatch, quick: None) -> None:
    """The examples run two turns: every crash point of a run stays affordable to try."""
    monkeypatch.setattr(examples, "TURNS", 2)


def every_point(harness: Any, tmp_path: Path, **options: Any) -> Any:
    """Kill at every crash point of a run, once each, never killing the restart."""
    report = run_crashtest(
        harness, kills=10_000, mode="points", restart_kills=False, workdir=tmp_path, **options
    )
    assert report.kills == report.total_ops == len(report.cases)
    return report


def test_an_effect_lost_by_ending_the_turn_first_is_caught_exactly_where_it_is_lost(
    tmp_path: Path, two_turns: None
) -> None:
    report = every_point(early_turn_agent, tmp_path)
    labels = {case.kill_at: case.label for case in report.cases}
    # Lost: killed once the turn counter advanced (end_turn committed) and before the write
    # tool's ledger entry let it run (its transaction's three points): the restart skips it.
    exposed = set()
    for point, label in labels.items():
        if label == "Session.end_turn/committed":
            exposed |= {point, point + 1, point + 2, point + 3}
            assert [labels[point + n] for n in (1, 2, 3)] == [
                "Session.tool_call/begin",
                "Session.tool_call/commit",
                "Session.tool_call/committed",
            ]
    assert len(exposed) == 4 * 2
    failed = {case.kill_at: set(case.failed) for case in report.cases if case.failed}
    assert set(failed) == exposed
    assert all(
        names
        == {"write_effects_exactly_once", "evidence_matches_uncrashed", "world_matches_uncrashed"}
        for names in failed.values()
    )
    lost = next(f for f in report.failures if f.invariant == "write_effects_exactly_once")
    assert lost.detail in {
        f"write tool 'write_note' (session agent-1, idempotency key 'note-{turn}') ran 0 times "
        "across the crash and the restart; an uncrashed run runs it 1 time: its effect is lost"
        for turn in (0, 1)
    }
    world = next(f for f in report.failures if f.invariant == "world_matches_uncrashed")
    assert world.detail.startswith(
        "the world differs from the uncrashed run's at ['notes.md']: 1 lines against 2, "
    )
    evidence = next(f for f in report.failures if f.invariant == "evidence_matches_uncrashed")
    assert evidence.detail.startswith(
        "read tool 'read_file' (session agent-1): its last result differs from the uncrashed "
        "run's: 1 lines against 2, "
    )
    # Nothing else broke anywhere: the library kept every acknowledged write.
    assert {f.invariant for f in report.failures} == set(next(iter(failed.values())))
    # The lost effect alone, without the world or the evidence to look at.
    point = min(exposed)
    alone = replay(
        early_turn_agent,
        kill_at=point,
        observe=None,
        compare_evidence=False,
        workdir=tmp_path / "alone",
    )
    assert {f.invariant for f in alone.failures} >= {"write_effects_exactly_once"}


def test_a_doubled_direct_effect_is_caught_through_the_world_and_the_final_read(
    tmp_path: Path, two_turns: None
) -> None:
    report = every_point(direct_effect_agent, tmp_path)
    labels = {case.kill_at: case.label for case in report.cases}
    # Doubled: the note is written directly, then the turn ends; killed before that end
    # committed, the restart redoes the turn and writes the note again.
    exposed = {
        point
        for point, label in labels.items()
        if label in ("Session.end_turn/begin", "Session.end_turn/commit")
    }
    assert len(exposed) == 2 * 2
    failed = {case.kill_at: set(case.failed) for case in report.cases if case.failed}
    assert set(failed) == exposed
    assert all(
        names == {"evidence_matches_uncrashed", "world_matches_uncrashed"}
        for names in failed.values()
    )
    world = next(f for f in report.failures if f.invariant == "world_matches_uncrashed")
    assert world.detail.startswith(
        "the world differs from the uncrashed run's at ['notes.md']: 3 lines against 2, "
    )
    # The library never saw that effect: without the world or the evidence, nothing is caught.
    point = min(exposed)
    blind = replay(
        direct_effect_agent, kill_at=point, compare_evidence=False, workdir=tmp_path / "blind"
    )
    assert [f.invariant for f in blind.failures] == ["world_matches_uncrashed"]


def test_write_effects_exactly_once_counts_a_run_cut_short_in_the_tool_as_perhaps_once() -> None:
    from clawvm_store.testing.invariants import Findings, check_write_effects

    def exec_(call: int) -> dict[str, Any]:
        return {
            "k": "tool_exec",
            "session": "s",
            "call": call,
            "name": "w",
            "signature": "sig",
            "effect": "write",
            "idempotency_key": "k1",
        }

    ran = {"k": "tool_ran", "session": "s", "call": 1}
    baseline = {("s", "w", "key", "k1"): 1}
    cases = {
        "once": [exec_(1), ran],
        "cut short, not re-run": [exec_(1)],
        "cut short, re-run": [exec_(1), exec_(2), {**ran, "call": 2}],
        "twice": [exec_(1), ran, exec_(2), {**ran, "call": 2}],
        "never": [],
    }
    outcome = {}
    for name, acks in cases.items():
        findings = Findings()
        check_write_effects(acks, baseline, findings)
        outcome[name] = findings.broken.get("write_effects_exactly_once")
    assert outcome == {
        "once": None,
        "cut short, not re-run": None,
        "cut short, re-run": None,
        "twice": "write tool 'w' (session s) ran 2 times with the same arguments across the "
        "crash and the restart; an uncrashed run runs it 1 time",
        "never": "write tool 'w' (session s, idempotency key 'k1') ran 0 times across the crash "
        "and the restart; an uncrashed run runs it 1 time: its effect is lost",
    }


def test_wall_clock_kills_land_in_harness_code_too_and_the_correct_harness_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model that thinks longer than the library works, as a real agent's does (a loaded
    # CI machine once landed only one of ten kills in it at 120,000 rounds).
    monkeypatch.setattr(examples, "THINKING_ROUNDS", 200_000)
    # Where a wall-clock instant lands depends on the machine's load: every campaign must be
    # correct, and one of three seeds must land enough kills to show both places.
    for seed in (1, 2, 3):
        report = run_crashtest(
            correct_agent, kills=10, seed=seed, mode="time", workdir=tmp_path / f"s{seed}"
        )
        assert report.ok, report.render()
        assert (report.kills, report.kill_points, len(report.kill_times)) == (10, [], 10)
        assert all(0 <= delay <= report.run_s for delay in report.kill_times)
        landed = [case for case in report.cases if case.where is not None]
        assert len(landed) == report.time_kills == 10 - report.time_kills_missed
        in_harness = [case for case in landed if case.where == "harness"]
        assert len(in_harness) == report.time_kills_in_harness
        if report.time_kills >= 6 and len(in_harness) >= 2:
            break
    assert report.time_kills >= 6
    assert len(in_harness) >= 2
    assert any(case.label == f"{EXAMPLES}:fake_model" for case in in_harness)
    assert any(case.where == "library" for case in landed)
    # Exact counts: a missed instant is an uncrashed case (its checks once); a landed one is
    # checked after the crash, after a second crash if the restart was killed, and at the end.
    killed_twice = report.restart_kills
    expected = {
        name: 1 + 2 * report.time_kills + report.time_kills_missed + killed_twice
        for name in POST_CRASH
    }
    expected.update(harness_completes=1 + 10, **dict.fromkeys(COMPARED, 10))
    report.checked.pop("floor_after_restart", None)
    assert dict(report.checked) == expected
    # The same seed draws the same instants, as shares of the uncrashed run's duration (which
    # varies from campaign to campaign: that is as far as timing allows).
    again = run_crashtest(
        correct_agent, kills=10, seed=seed, mode="time", restart_kills=False, workdir=tmp_path / "b"
    )
    shares = [delay / report.run_s for delay in report.kill_times]
    assert [delay / again.run_s for delay in again.kill_times] == pytest.approx(shares, abs=1e-3)
    assert again.then_kill_times == [None] * 10


def test_both_mode_splits_the_kills_and_a_time_case_replays_from_its_delay(
    tmp_path: Path, quick: None
) -> None:
    report = run_crashtest(correct_agent, kills=5, seed=2, workdir=tmp_path / "a")
    assert report.ok, report.render()
    assert (report.mode, len(report.kill_points), len(report.kill_times)) == ("both", 3, 2)
    assert [case.mode for case in report.cases] == ["points"] * 3 + ["time"] * 2
    points = run_crashtest(correct_agent, kills=3, seed=2, mode="points", workdir=tmp_path / "b")
    assert points.kill_points == report.kill_points  # a seed names the same points in any mode
    delay = report.kill_times[0]
    again = replay(correct_agent, kill_after=delay, workdir=tmp_path / "c")
    assert (again.kill_times, again.kill_points, again.ok) == ([delay], [], True)
    failure = CrashFailure(
        invariant="x",
        detail="y",
        harness=f"{EXAMPLES}:correct_agent",
        seed=2,
        kill_number=1,
        kills=1,
        kill_at=12,
        total_ops=40,
        label="Session.stage",
        kill_after=0.0123,
        where="harness",
    )
    assert (
        failure.kill_point == "0.0123 s into the run (op 12 of 40, in harness code: Session.stage)"
    )
    assert failure.replay_command == (
        f"clawvm crashtest {EXAMPLES}:correct_agent --seed 2 --kill-after 0.0123"
    )
    assert failure.replay_call == "crash_harness.replay(correct_agent, seed=2, kill_after=0.0123)"


def test_observe_must_be_callable_and_must_work_on_the_uncrashed_run(tmp_path: Path) -> None:
    with pytest.raises(CrashTestSetupError, match="observe must be callable"):
        run_crashtest(correct_agent, kills=1, observe=42, workdir=tmp_path / "a")  # type: ignore[arg-type]

    def broken(db_path: str) -> object:
        raise OSError("no such world")

    with pytest.raises(
        CrashTestSetupError, match="observe failed after the uncrashed run: OSError"
    ):
        run_crashtest(correct_agent, kills=1, observe=broken, workdir=tmp_path / "b")


def test_cli_observe_and_mode_options(tmp_path: Path, two_turns: None) -> None:
    base = ["crashtest", f"{EXAMPLES}:direct_effect_agent", "--mode", "points", "--no-evidence"]
    point = first_turn_end(direct_effect_agent, tmp_path / "probe") - 1  # end_turn's commit
    result = invoke(
        *base,
        "--kill-at",
        str(point),
        "--observe",
        f"{EXAMPLES}:observe_world",
        "--workdir",
        str(tmp_path / "b"),
    )
    assert result.exit_code == 1
    assert "crash test failed: invariant world_matches_uncrashed" in result.output
    assert (
        f"replay:     clawvm crashtest {EXAMPLES}:direct_effect_agent --seed 0 --kill-at {point}"
        f" --observe {EXAMPLES}:observe_world --no-evidence\n" in result.output
    )
    bad = CliRunner().invoke(app, [*base, "--observe", "nope"])
    assert (bad.exit_code, bad.output) == (2, "error: expected MODULE:FUNCTION, got 'nope'\n")
    assert observe_world(str(tmp_path / "none" / "agent.db")) == {}


# --- LangGraph checkpoints, PostgreSQL ---------------------------------------------------------


class TrailState(TypedDict):
    trail: Annotated[list[str], operator.add]


def langgraph_agent(db_path: str) -> None:
    """A three-node LangGraph chain on ClawVMSaver that resumes from its last checkpoint."""
    from langgraph.graph import END, START, StateGraph

    from clawvm_store.integrations.langgraph import ClawVMSaver

    builder = StateGraph(TrailState)
    for name in ("plan", "act", "report"):
        builder.add_node(name, lambda state, name=name: {"trail": [name]})
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "act")
    builder.add_edge("act", "report")
    builder.add_edge("report", END)
    config: Any = {"configurable": {"thread_id": "t-1"}}
    with ClawVMSaver.from_path(db_path) as saver:
        graph = builder.compile(checkpointer=saver)
        started = saver.get_tuple(config) is not None
        # Checkpoints written in step (durability="sync"): the same operations on every run.
        graph.invoke(None if started else {"trail": []}, config, durability="sync")
        assert graph.get_state(config).values["trail"] == ["plan", "act", "report"]


def test_acknowledged_langgraph_checkpoints_are_checked_after_every_crash(tmp_path: Path) -> None:
    pytest.importorskip("langgraph")
    report = run_crashtest(langgraph_agent, kills=6, seed=0, mode="points", workdir=tmp_path)
    assert report.ok, report.render()
    assert report.checked["acked_checkpoints_readable"] >= 1 + 6
    assert report.acknowledged_writes >= 6


def test_a_checkpoint_lost_after_its_acknowledgement_is_caught(tmp_path: Path) -> None:
    pytest.importorskip("langgraph")

    def losing_agent(db_path: str) -> None:
        langgraph_agent(db_path)
        with cvm.Store.open(db_path) as store, store.db.transaction() as conn:
            conn.exec_driver_sql("DELETE FROM lg_writes")  # behind the saver's back

    report = run_crashtest(losing_agent, kills=0, workdir=tmp_path)
    assert [f.invariant for f in report.failures] == ["acked_checkpoints_readable"]
    assert "acknowledged pending write t-1/" in report.failures[0].detail
    assert (
        report.failures[0].detail.endswith("is missing")
        or " is missing;" in report.failures[0].detail
    )


def first_turn_end(harness: Any, directory: Path) -> int:
    """The crash point at which the first turn_end commits (its acknowledgement's count)."""
    from clawvm_store.testing.kit import _run_child

    directory.mkdir()
    run = _run_child(harness, str(directory / "agent.db"), directory, "probe", 60.0)
    return next(
        int(ack["at"])
        for ack in run.acks
        if ack["k"] == "boundary" and ack["boundary"] == "turn_end"
    )


def test_the_kit_runs_against_postgresql(
    tmp_path: Path, postgres_server: str, two_turns: None
) -> None:
    report = run_crashtest(
        correct_agent, kills=4, seed=3, mode="points", postgres=postgres_server, workdir=tmp_path
    )
    assert report.ok, report.render()
    assert report.backend == "postgresql"
    expected = {name: 1 + 2 * 4 + report.restart_kills for name in POST_CRASH}
    expected.update(harness_completes=1 + 4, **dict.fromkeys(COMPARED, 4))
    report.checked.pop("floor_after_restart", None)
    assert dict(report.checked) == expected
    # A lost effect is caught there too, at a point that loses it.
    lost = run_crashtest(
        early_turn_agent, kills=0, postgres=postgres_server, workdir=tmp_path / "x"
    )
    assert lost.ok
    point = first_turn_end(early_turn_agent, tmp_path / "probe")
    caught = replay(
        early_turn_agent, kill_at=point, postgres=postgres_server, workdir=tmp_path / "y"
    )
    assert {f.invariant for f in caught.failures} == {
        "write_effects_exactly_once",
        "evidence_matches_uncrashed",
        "world_matches_uncrashed",
    }
    assert caught.failures[0].kill_at == point
