"""ClawVMSessionStore against the real claude-agent-sdk: its own conformance suite, verbatim
load, uuid idempotency, durability under SIGKILL, the page projection, and the CLI on a mirrored
session. Transcripts are small ones written here (no /work/shared/traces content)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("claude_agent_sdk")

from claude_agent_sdk import InMemorySessionStore
from claude_agent_sdk.testing import run_session_store_conformance
from claude_agent_sdk.testing.session_store_conformance import _has_optional
from click.testing import CliRunner
from conftest import run_alembic

from clawvm_store import Store
from clawvm_store.cli import app
from clawvm_store.integrations.claude_agent_sdk import ClawVMSessionStore, mirrored_trace
from clawvm_store.replay.importers import import_transcript

SID = "11111111-2222-3333-4444-555555555555"
KEY: Any = {"project_key": "proj", "session_id": SID}
ROOT = Path(__file__).resolve().parent.parent


def rec(kind: str, uuid: str, content: Any, **extra: Any) -> dict[str, Any]:
    """A Claude Code transcript line of the shape the CLI writes."""
    return {
        "type": kind,
        "uuid": uuid,
        "sessionId": SID,
        "timestamp": f"2026-01-01T00:00:{uuid[-2:]}.000Z",
        "message": {"role": kind, "content": content},
        **extra,
    }


def tool_use(call: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call, "name": name, "input": args}


def tool_result(call: str, output: str) -> list[dict[str, Any]]:
    return [{"type": "tool_result", "tool_use_id": call, "content": output}]


def transcript() -> list[list[dict[str, Any]]]:
    """Four turns, one batch each: read, edit then read again, a repeat read, a last prompt."""
    read = {"file_path": "/w/a.py"}
    return [
        [
            rec("user", "e-01", "What does a.py print?"),
            rec(
                "assistant",
                "e-02",
                [{"type": "text", "text": "Let me read it."}, tool_use("tu1", "Read", read)],
            ),
            rec("user", "e-03", tool_result("tu1", "print('hello')")),
            rec("assistant", "e-04", [{"type": "text", "text": "It prints hello."}]),
        ],
        [
            rec("user", "e-05", "Make it print bye."),
            rec(
                "assistant",
                "e-06",
                [tool_use("tu2", "Edit", {**read, "old_string": "hello", "new_string": "bye"})],
            ),
            rec("user", "e-07", tool_result("tu2", "edited")),
            rec("assistant", "e-08", [tool_use("tu3", "Read", read)]),
            rec("user", "e-09", tool_result("tu3", "print('bye')")),
        ],
        [
            rec("user", "e-10", "Read it once more."),
            rec("assistant", "e-11", [tool_use("tu4", "Read", read)]),
            rec("user", "e-12", tool_result("tu4", "print('bye')")),
            {"type": "system", "subtype": "compact_boundary", "uuid": "e-13", "sessionId": SID},
        ],
        [rec("user", "e-14", "Thanks, that is all.")],
    ]


def append(store: ClawVMSessionStore, key: Any, entries: list[dict[str, Any]]) -> None:
    asyncio.run(store.append(key, entries))  # type: ignore[arg-type]


def load(store: ClawVMSessionStore, key: Any) -> Any:
    return asyncio.run(store.load(key))


# -- the SDK's own contracts ------------------------------------------------------------------


def test_passes_the_sdks_conformance_suite_with_no_contract_skipped(tmp_path: Path) -> None:
    made: list[ClawVMSessionStore] = []

    def make() -> ClawVMSessionStore:
        made.append(ClawVMSessionStore(tmp_path / f"c{len(made)}.db"))
        return made[-1]

    probe = make()
    # Every optional method counts as implemented, so none of its contracts is skipped.
    for method in ("list_sessions", "list_session_summaries", "delete", "list_subkeys"):
        assert _has_optional(probe, method, frozenset())
    try:
        asyncio.run(run_session_store_conformance(make))
    finally:
        for store in made:
            store.close()
    # My probe, the suite's probe, then one fresh store per contract group (all 14 ran).
    assert len(made) == 16


def test_load_returns_exactly_what_was_appended_across_reopen(tmp_path: Path) -> None:
    entries = [
        {"type": "user", "uuid": "u1", "z": 1, "a": [1, 2.5, None, True], "t": "é\u2028✓"},
        {"type": "tag", "tag": "x"},
        {"type": "tag", "tag": "x"},  # no uuid: appended as often as it comes
        {"type": "assistant", "uuid": "u2", "nested": {"b": {"c": []}, "a": ""}},
    ]
    with ClawVMSessionStore(tmp_path / "a.db") as store:
        append(store, KEY, entries[:2])
        append(store, KEY, entries[2:])
    with ClawVMSessionStore(tmp_path / "a.db") as store:
        loaded = load(store, KEY)
    assert loaded == entries
    assert [list(entry) for entry in loaded] == [list(entry) for entry in entries]  # key order


def test_a_uuid_is_stored_once_per_transcript(tmp_path: Path) -> None:
    batch = [{"type": "user", "uuid": "u1", "n": 1}, {"type": "title", "n": 2}]
    other_key = {**KEY, "subpath": "subagents/agent-1"}
    with ClawVMSessionStore(tmp_path / "a.db") as store:
        append(store, KEY, batch)
        append(store, KEY, batch)  # an SDK retry of the same batch
        append(store, KEY, [{"type": "user", "uuid": "u3"}, {"type": "user", "uuid": "u3"}])
        append(store, other_key, batch)  # the same uuid in another transcript is its own
        assert load(store, KEY) == [batch[0], batch[1], batch[1], {"type": "user", "uuid": "u3"}]
        assert load(store, other_key) == batch


def test_an_empty_subpath_is_refused(tmp_path: Path) -> None:
    from clawvm_store.errors import InvalidInput

    with (
        ClawVMSessionStore(tmp_path / "a.db") as store,
        pytest.raises(InvalidInput, match="subpath"),
    ):
        append(store, {**KEY, "subpath": ""}, [{"type": "x"}])


def test_works_on_an_open_store_that_the_caller_keeps(tmp_path: Path) -> None:
    with Store.open(tmp_path / "a.db") as engine:
        mirror = ClawVMSessionStore(engine)
        append(mirror, KEY, [{"type": "x", "n": 1}])
        mirror.close()
        assert engine.query("SELECT entries FROM claude_sessions") == [{"entries": 1}]


# -- durability: a real process, SIGKILLed -----------------------------------------------------

CHILD = """
import asyncio, sys
from clawvm_store.integrations.claude_agent_sdk import ClawVMSessionStore
store = ClawVMSessionStore(sys.argv[1])
key = {"project_key": "proj", "session_id": "killed"}
async def main():
    for n in range(100000):
        await store.append(key, [{"type": "x", "uuid": f"b{n}-{i}", "n": n, "i": i} for i in range(3)])
        print(n, flush=True)  # acknowledged: append returned
asyncio.run(main())
"""


def test_every_acknowledged_batch_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    with ClawVMSessionStore(db):
        pass  # migrate first, so the child starts writing at once
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None
    acked = -1
    for line in child.stdout:
        acked = int(line)
        if acked >= 40:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    with ClawVMSessionStore(db) as store:
        loaded = load(store, {"project_key": "proj", "session_id": "killed"})
    batches = len(loaded) // 3
    # Whole batches only, in order, and at least every acknowledged one.
    assert len(loaded) % 3 == 0
    assert batches >= acked + 1
    assert loaded == [
        {"type": "x", "uuid": f"b{n}-{i}", "n": n, "i": i} for n in range(batches) for i in range(3)
    ]


# -- projection into pages ---------------------------------------------------------------------


def tool_calls(store: Store) -> list[dict[str, Any]]:
    return store.query(
        "SELECT turn, name, effect, state FROM tool_calls WHERE session_id = ? ORDER BY id",
        [SID],
    )


def test_each_turn_is_projected_once_the_next_one_starts(tmp_path: Path) -> None:
    batches = transcript()
    with ClawVMSessionStore(tmp_path / "p.db") as mirror:
        engine = mirror.store
        append(mirror, KEY, batches[0])
        assert tool_calls(engine) == []  # turn 1 may still get results: not projected yet
        append(mirror, KEY, batches[1])
        assert tool_calls(engine) == [
            {"turn": 0, "name": "Read", "effect": "read", "state": "finished"}
        ]
        assert engine.query("SELECT projected_entries, projected_turns FROM claude_sessions") == [
            {"projected_entries": 4, "projected_turns": 1}
        ]
        append(mirror, KEY, batches[2])
        append(mirror, KEY, batches[3])
        assert [(c["turn"], c["name"], c["effect"]) for c in tool_calls(engine)] == [
            (0, "Read", "read"),
            (1, "Edit", "write"),
            (1, "Read", "read"),  # after the edit: runs again (the edit invalidated the read)
        ]  # turn 3's repeat read was served from the ledger: a hit, nothing re-run
        assert engine.faults(session=SID).hits == 1
        assert engine.query("SELECT projected_entries, projected_turns FROM claude_sessions") == [
            {"projected_entries": 13, "projected_turns": 3}
        ]
        conversation = engine.page(f"conversation/{SID}/span-0", project="proj", session=SID)
        assert conversation.content == (
            "user: What does a.py print?\nassistant: Let me read it.\n\nIt prints hello."
            "\nuser: Make it print bye."
            "\nuser: Read it once more."
        )
        # The compaction marker became a compaction boundary of the session.
        assert engine.query(
            "SELECT COUNT(*) AS n FROM lifecycle_events WHERE session_id = ? AND boundary = ?",
            [SID, "compaction"],
        ) == [{"n": 1}]
        # Subagent transcripts are stored, not projected.
        sub = [
            rec("user", "s-01", "find TODOs"),
            rec("assistant", "s-02", [tool_use("g1", "Grep", {"pattern": "TODO"})]),
            rec("user", "s-03", tool_result("g1", "none")),
            rec("user", "s-04", "done?"),
        ]
        append(mirror, {**KEY, "subpath": "subagents/agent-1"}, sub)
        assert len(tool_calls(engine)) == 3


def test_projection_matches_the_importer_on_the_same_entries(tmp_path: Path) -> None:
    batches = transcript()
    with ClawVMSessionStore(tmp_path / "p.db") as mirror:
        for batch in batches:
            append(mirror, KEY, batch)
        trace = mirrored_trace(mirror.store, SID, split="prompt")
        projected = tool_calls(mirror.store)
    lines = tmp_path / "t.jsonl"
    lines.write_text("".join(json.dumps(e) + "\n" for b in batches for e in b), encoding="utf-8")
    imported = import_transcript(lines, kind="claude-code", split="prompt")
    assert trace.turns == imported.turns
    # Every call of the projected turns (all but the open last one) in order; the repeat read
    # of turn 3 (index 2) was served by the mediator, so the ledger has no second row for it.
    calls = [(i, step.name) for i, turn in enumerate(imported.turns[:-1]) for step in turn.tools]
    assert calls == [(0, "Read"), (1, "Edit"), (1, "Read"), (2, "Read")]
    assert [(c["turn"], c["name"]) for c in projected] == calls[:3]


def test_projection_reads_only_the_open_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clawvm_store.integrations.claude_agent_sdk as module

    seen: list[list[int]] = []
    real = module.claude_code_turns

    def spy(records: Any) -> Any:
        seen.append([number for number, _ in records])
        return real(records)

    monkeypatch.setattr(module, "claude_code_turns", spy)
    with ClawVMSessionStore(tmp_path / "p.db") as mirror:
        for batch in transcript():
            append(mirror, KEY, batch)
    assert seen == [
        [0, 1, 2, 3],
        [0, 1, 2, 3, 4, 5, 6, 7, 8],
        [4, 5, 6, 7, 8, 9, 10, 11, 12],
        [9, 10, 11, 12, 13],
    ]


def test_a_budget_also_records_assemblies(tmp_path: Path) -> None:
    with ClawVMSessionStore(tmp_path / "p.db", budget=400) as mirror:
        for batch in transcript():
            append(mirror, KEY, batch)
        turns = mirror.store.query(
            "SELECT DISTINCT turn FROM resident_by_turn WHERE session = ? ORDER BY turn", [SID]
        )
    assert len(turns) == 3


# -- the CLI on a mirrored session -------------------------------------------------------------


def cli(db: Path, *args: Any) -> Any:
    result = CliRunner().invoke(app, ["--db", str(db), *map(str, args)], prog_name="clawvm")
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def mirrored(tmp_path: Path) -> Path:
    db = tmp_path / "m.db"
    with ClawVMSessionStore(db, budget=400) as mirror:
        for batch in transcript():
            append(mirror, KEY, batch)
    return db


def test_clawvm_sql_sees_the_mirror_and_its_pages(mirrored: Path) -> None:
    result = cli(
        mirrored,
        "sql",
        "SELECT session_id, entries, projected_turns FROM claude_sessions",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"session_id": SID, "entries": 14, "projected_turns": 3}]
    result = cli(
        mirrored,
        "sql",
        "SELECT name FROM tool_calls WHERE session_id = ? ORDER BY id",
        "--param",
        SID,
        "--format",
        "json",
    )
    assert json.loads(result.output) == [{"name": "Read"}, {"name": "Edit"}, {"name": "Read"}]


def test_clawvm_faults_on_the_mirrored_session(mirrored: Path) -> None:
    result = cli(mirrored, "--json", "faults", "--session", SID)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    with Store.open(mirrored) as store:
        expected = store.faults(session=SID)
    assert report["counts"] == expected.counts
    # No fault; turn 3 repeats the read whose result is still resident at 400 tokens: one
    # duplicate-signature alert; hits: the demanded results of turns 1-3, and the served repeat.
    assert report["counts"] == {
        "refetch": 0,
        "duplicate_tool": 0,
        "pinned_invariant_miss": 0,
        "post_compaction_bootstrap": 0,
        "silent_recall": 0,
        "flush_miss": 0,
        "stale_serve": 0,
        "duplicate_signature": 1,
        "physical_insufficiency": 0,
    }
    assert (report["alerts"], report["hits"]) == (1, 5)


def test_clawvm_replay_of_the_mirrored_session(mirrored: Path, tmp_path: Path) -> None:
    result = cli(mirrored, "--json", "replay", "--claude-session", SID, "--budget", 400)
    assert result.exit_code == 0, result.output
    replayed = json.loads(result.output)
    assert replayed["turns"] == 6  # one per model response (4 prompts with --split prompt)
    assert replayed["policy"] == "clawvm"
    # The same as replaying the transcript file itself.
    lines = tmp_path / "t.jsonl"
    lines.write_text("".join(json.dumps(e) + "\n" for b in transcript() for e in b), "utf-8")
    from_file = CliRunner().invoke(app, ["--json", "replay", str(lines), "--budget", "400"])
    assert from_file.exit_code == 0, from_file.output
    assert {k: v for k, v in json.loads(from_file.output).items() if k != "family"} == {
        k: v for k, v in replayed.items() if k != "family"
    }
    by_prompt = cli(
        mirrored, "--json", "replay", "--claude-session", SID, "--budget", 400, "--split", "prompt"
    )
    assert json.loads(by_prompt.output)["turns"] == 4


def test_clawvm_replay_refuses_an_unknown_session_in_one_line(mirrored: Path) -> None:
    result = cli(mirrored, "replay", "--claude-session", "nope", "--budget", 400)
    assert result.exit_code == 1
    assert result.output.strip() == "error: no mirrored Claude session 'nope' in this store"
    result = cli(mirrored, "replay", "--budget", 400)
    assert result.exit_code == 2


# -- migration 0008 ----------------------------------------------------------------------------


def test_revision_0008_upgrades_from_0007_and_downgrades(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "m.db"
    run_alembic(db, "upgrade", "0007")

    def tables() -> set[str]:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT name FROM sqlite_schema WHERE name LIKE 'claude%' "
                "AND type IN ('table', 'view', 'index')"
            )
            return {name for (name,) in rows}

    assert tables() == set()
    run_alembic(db, "upgrade", "0008")
    assert tables() == {
        "claude_transcripts",
        "claude_entries",
        "claude_sessions",
    }
    run_alembic(db, "downgrade", "0007")
    assert tables() == set()


# -- the README example, run as written --------------------------------------------------------


def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    marker = "<!-- example: claude-agent-sdk -->"
    assert marker in readme
    block = re.search(r"```python\n(.*?)```", readme[readme.index(marker) :], re.S)
    assert block is not None
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent(block.group(1)), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "ok"


def test_the_in_memory_reference_store_agrees_on_the_transcript(tmp_path: Path) -> None:
    reference = InMemorySessionStore()
    with ClawVMSessionStore(tmp_path / "r.db") as mirror:
        for batch in transcript():
            append(mirror, KEY, batch)
            asyncio.run(reference.append(KEY, batch))  # type: ignore[arg-type]
        assert load(mirror, KEY) == asyncio.run(reference.load(KEY))
        assert (
            asyncio.run(mirror.list_session_summaries("proj"))[0]["data"]
            == asyncio.run(reference.list_session_summaries("proj"))[0]["data"]
        )
