"""bench/long_session.py still runs end to end and prints its summary (figures are not checked)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "long_session.py"
VERDICT = re.compile(r"\d+\.\d\dx\s+goal <= \d+\.\d\dx.*\s(PASS|MISS)$")


def test_long_session_runs_and_prints_its_summary(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--turns", "30", "--peer-turns", "10", "--json", str(figures)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "summary: issue 14 goals (ratios from this run; printed, never an exit code)" in lines
    for prefix in (
        "  per-turn cost (write+assemble median), turn 30 / turn 10:",
        "  db bytes / raw content bytes at turn 30:",
        "  growth: bytes per turn, last window / first (turn 30 / turn 10):",
    ):
        matching = [line for line in lines if line.startswith(prefix)]
        assert len(matching) == 1, (prefix, done.stdout)
        assert VERDICT.search(matching[0]), matching[0]
    # With the peer installed, the script imports the real LangGraph, not bench/langgraph.py.
    if importlib.util.find_spec("langgraph.checkpoint.sqlite") is not None:
        assert "LangGraph SqliteSaver (" in done.stdout, done.stdout
    data = json.loads(figures.read_text())
    assert set(data["summary"]) == {"cost_ratio", "db_over_content", "growth_ratio"}
    assert data["engine"]["checkpoints"]["30"]["content_bytes"] > 30 * 1300
    assert not list(tmp_path.glob("clawvm-bench-long-*")), "the temporary directory is left over"
