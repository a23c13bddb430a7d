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
