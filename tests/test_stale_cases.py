"""Issue 19's transcript cases, each in a small Claude Code transcript written here.

Every case is a read whose real output changed between two calls, for a reason the harness
must see: a sub-agent edited the file; a compaction dropped the result; a dev server rewrote a
manifest; a build log grew; the clock moved; a commit changed the repository's state. Replayed
through the engine, the second read either re-runs (its real output is what the agent gets) or,
where nothing could have changed it, is served from the ledger; never a stale or empty result.
Each test counts exactly how many calls ran and how many were served, and that no stale serve
was recorded; a control case (an unchanged file read twice) is served, so the counts can fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clawvm_store.replay.harness import replay_into
from clawvm_store.replay.importers import import_transcript
from clawvm_store.store import Store


def record(kind: str, content: Any) -> dict[str, Any]:
    return {"type": kind, "sessionId": "s", "message": {"role": kind, "content": content}}


def call(call_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return record("assistant", [{"type": "tool_use", "id": call_id, "name": name, "input": args}])


def result(call_id: str, output: str) -> dict[str, Any]:
    return record("user", [{"type": "tool_result", "tool_use_id": call_id, "content": output}])


def replay(tmp_path: Path, lines: list[dict[str, Any]]) -> tuple[dict[str, int], list[str]]:
    """Replay at 8k; return the fault counts and, per call in order, 'ran' or 'served'."""
    path = tmp_path / "case.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    trace = import_transcript(path)
    outcome, _ = replay_into(trace, 8000, "clawvm", tmp_path / "case.db")
    with Store.open(tmp_path / "case.db") as store:
        executed = store.query("SELECT COUNT(*) AS n FROM tool_calls")[0]["n"]
    calls = [step for turn in trace.turns for step in turn.tools]
    assert outcome.served_calls == len(calls) - executed  # the re-runs saved, as reported
    # The ledger has a row per execution: what it lacks was served.
    return outcome.faults, ["ran"] * executed + ["served"] * (len(calls) - executed)


READ_A = {"file_path": "/repo/a.py"}


def test_an_unchanged_file_read_twice_is_served(tmp_path: Path) -> None:
    faults, runs = replay(
        tmp_path,
        [
            record("user", "Look at a.py"),
            call("t1", "Read", READ_A),
            result("t1", "A = 1"),
            call("t2", "Read", READ_A),
            result("t2", "A = 1"),
        ],
    )
    assert runs == ["ran", "served"]
    assert faults["stale_serve"] == 0


@pytest.mark.parametrize(
    ("between", "why"),
    [
        (
            [call("s1", "Task", {"prompt": "refactor a.py"}), result("s1", "done")],
            "a sub-agent may have edited the file",
        ),
        (
            [call("b1", "Bash", {"command": "npx tauri dev"}), result("b1", "ready")],
            "a dev server rewrote files (a command of unknown effect)",
        ),
        (
            [call("b2", "Bash", {"command": "sed -i 's/1/2/' a.py"}), result("b2", "")],
            "sed -i edits in place",
        ),
    ],
)
def test_a_write_of_unknown_effect_makes_the_next_read_run(
    tmp_path: Path, between: list[dict[str, Any]], why: str
) -> None:
    faults, runs = replay(
        tmp_path,
        [
            record("user", "Fix a.py"),
            call("t1", "Read", READ_A),
            result("t1", "A = 1"),
            *between,
            call("t2", "Read", READ_A),
            result("t2", "A = 2  # changed"),
        ],
    )
    assert runs == ["ran", "ran", "ran"], why
    assert faults["stale_serve"] == 0


def test_a_read_after_a_compaction_is_never_an_empty_result(tmp_path: Path) -> None:
    big = "\n".join(f"line {i}: value {i * 7}" for i in range(400))
    faults, runs = replay(
        tmp_path,
        [
            record("user", "Read the parser"),
            call("t1", "Read", {"file_path": "/repo/parser.py"}),
            result("t1", big),
            {"type": "system", "subtype": "compact_boundary", "sessionId": "s"},
            record("user", "Go on"),
            call("t2", "Read", {"file_path": "/repo/parser.py"}),
            result("t2", big),
        ],
    )
    # Served by pointer resolution, and what was served is the real 400 lines (a difference,
    # "(empty result)" included, would be a stale_serve).
    assert runs == ["ran", "served"]
    assert faults["stale_serve"] == 0


@pytest.mark.parametrize(
    ("command", "outputs"),
    [
        ("tail -n 5 build.log", ["still building", "still building", "build finished"]),
        ("date", ["Mon 10:00", "Mon 10:02", "Mon 10:05"]),
        ("git status", ["2 files changed", "nothing to commit", "nothing to commit"]),
    ],
)
def test_volatile_reads_always_run(tmp_path: Path, command: str, outputs: list[str]) -> None:
    lines: list[dict[str, Any]] = [record("user", "Check")]
    for index, output in enumerate(outputs):
        lines += [call(f"v{index}", "Bash", {"command": command}), result(f"v{index}", output)]
    faults, runs = replay(tmp_path, lines)
    assert runs == ["ran"] * 3
    assert faults["stale_serve"] == 0


def test_git_state_after_a_commit_is_read_again(tmp_path: Path) -> None:
    faults, runs = replay(
        tmp_path,
        [
            record("user", "Commit it"),
            call("g1", "Bash", {"command": "git log --oneline -1"}),
            result("g1", "abc123 first"),
            call("g2", "Bash", {"command": "git commit -am 'second'"}),
            result("g2", "[main def456] second"),
            call("g3", "Bash", {"command": "git log --oneline -1"}),
            result("g3", "def456 second"),
        ],
    )
    assert runs == ["ran", "ran", "ran"]
    assert faults["stale_serve"] == 0
