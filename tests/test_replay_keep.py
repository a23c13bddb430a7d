"""``clawvm replay --keep DB``: the replay's own store, kept for inspection with the other commands."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from clawvm_store.cli import app
from clawvm_store.replay.workloads import build


def cli(*args: object) -> object:
    result = CliRunner().invoke(app, [str(arg) for arg in args], prog_name="clawvm")
    assert "Traceback" not in result.output
    return result


def test_the_kept_database_holds_the_replay_that_was_reported(tmp_path: Path) -> None:
    trace_file = tmp_path / "coding.trace.json"
    build("coding", 0).dump(trace_file)
    kept = tmp_path / "kept.db"
    reported = cli(
        "--json", "replay", trace_file, "--budget", 180, "--policy", "retrieval", "--keep", kept
    )
    assert reported.exit_code == 0, reported.output
    replayed = json.loads(reported.output)
    plain = cli("--json", "replay", trace_file, "--budget", 180, "--policy", "retrieval")
    assert {k: v for k, v in replayed.items()} == json.loads(plain.output)
    assert kept.exists()
    # The kept store's own fault log is the one the replay counted.
    faults = cli("--db", kept, "--json", "faults")
    assert faults.exit_code == 0, faults.output
    counts = json.loads(faults.output)["counts"]
    assert {kind: n for kind, n in counts.items() if n} == {
        kind: n for kind, n in replayed["faults"].items() if n
    }
    assert sum(replayed["faults"].values()) > 0  # retrieval at 180 tokens faults: a real check
    turns = cli("--db", kept, "--json", "sql", "SELECT COUNT(*) AS n FROM assemblies")
    assert turns.exit_code == 0, turns.output
    assert json.loads(turns.output)[0]["n"] >= replayed["turns"]


def test_keep_never_reuses_a_database(tmp_path: Path) -> None:
    trace_file = tmp_path / "coding.trace.json"
    build("coding", 0).dump(trace_file)
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"the user's own file")
    result = cli("replay", trace_file, "--budget", 180, "--keep", taken)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {taken} exists: --keep writes a new database and never reuses one"
    ]
    assert taken.read_bytes() == b"the user's own file"


def test_replay_reports_each_stale_serve(tmp_path: Path) -> None:
    """A tool declared a pure read whose real output changed: the second call is served from
    the ledger, and the replay names the case (turn, tool, arguments, sizes, first difference)."""
    from clawvm_store.replay.trace import ToolStep, Trace, Turn

    ls = {"path": "/w"}
    trace = Trace(
        name="mislabelled",
        turns=[
            Turn(user="list it", tools=[ToolStep(name="list_dir", args=ls, output="a.py\nb.py")]),
            Turn(user="again", tools=[ToolStep(name="list_dir", args=ls, output="a.py\nc.py")]),
            Turn(user="once more", tools=[ToolStep(name="list_dir", args=ls, output="a.py\nc.py")]),
        ],
    )
    trace_file = tmp_path / "t.trace.json"
    trace.dump(trace_file)
    result = cli("--json", "replay", trace_file, "--budget", 2000)
    assert result.exit_code == 0, result.output
    replayed = json.loads(result.output)
    assert replayed["faults"]["stale_serve"] == 2
    cases = replayed["stale_serve_cases"]
    assert [(c["turn"], c["tool"], c["args"]) for c in cases] == [
        (1, "list_dir", ls),
        (2, "list_dir", ls),
    ]
    assert [(c["served_chars"], c["real_chars"], c["first_difference"]) for c in cases] == [
        (9, 9, 5),
        (9, 9, 5),
    ]
    table = cli("replay", trace_file, "--budget", 2000)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    start = lines.index("turn\ttool\targuments\tserved chars\treal chars\tfirst difference")
    assert lines[start + 1 :] == [
        '1\tlist_dir\t{"path": "/w"}\t9\t9\t5',
        '2\tlist_dir\t{"path": "/w"}\t9\t9\t5',
    ]
