"""The OpenAI Agents SDK integration, driven by the SDK's real ``Runner`` and a scripted model.

* ``mediated()`` tools: repeats served from the ledger, writes never re-run blindly, including
  across a SIGKILL of a child process in the middle of a write tool;
* ``ClawVMSession``: the SDK's public session behaviours, each test parametrized over the SDK's
  own ``SQLiteSession`` too, so the mirror is shown to be right.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agents")

from agents import Agent, Runner, SQLiteSession, function_tool, set_tracing_disabled
from agents_model import ScriptedModel, call, check_pairing, say

import clawvm_store as cvm
from clawvm_store.integrations.openai_agents import ClawVMSession, mediated

set_tracing_disabled(True)

CHILD = Path(__file__).with_name("openai_agents_child.py")


def run(coro: Any) -> Any:
    """Run one coroutine to completion (the SDK is async; the tests are plain functions)."""
    return asyncio.run(coro)


def counting_tools(log: list[str]) -> tuple[Any, Any]:
    """A read tool and a write tool whose bodies append their name to ``log``."""

    @function_tool
    def read_file(path: str) -> str:
        """Read a file."""
        log.append(f"read {path}")
        return f"contents of {path}"

    @function_tool
    def write_file(path: str, text: str) -> str:
        """Write a file."""
        log.append(f"write {path}")
        return f"wrote {len(text)} bytes to {path}"

    return read_file, write_file


# -- mediated tools ---------------------------------------------------------------------------


def test_mediated_tools_over_several_turns(tmp_path: Path) -> None:
    """Three runs of a tool-calling agent: a repeated read is served from the ledger, a write
    to the same path invalidates it (the next read runs), and every model input is valid."""
    log: list[str] = []
    read_file, write_file = counting_tools(log)
    with cvm.Store.open(tmp_path / "c.db") as store:
        engine = store.session("s1")
        model = ScriptedModel()
        agent = Agent(
            name="coder",
            model=model,
            tools=[mediated(read_file, engine), mediated(write_file, engine, effect="write")],
        )
        history = SQLiteSession("s1", tmp_path / "agent.db")
        model.add([call("read_file", {"path": "a.py"}, "c1")], [say("read it")])
        assert run(Runner.run(agent, "read a.py", session=history)).final_output == "read it"
        model.add([call("read_file", {"path": "a.py"}, "c2")], [say("again")])
        assert run(Runner.run(agent, "read it again", session=history)).final_output == "again"
        model.add(
            [call("write_file", {"path": "a.py", "text": "x = 1"}, "c3")],
            [call("read_file", {"path": "a.py"}, "c4")],
            [say("edited")],
        )
        assert run(Runner.run(agent, "edit a.py", session=history)).final_output == "edited"
        # The second read was a repeat (served); the write invalidated a.py, so c4 ran.
        assert log == ["read a.py", "write a.py", "read a.py"]
        for seen in model.inputs:
            check_pairing(seen)
        outputs = {
            i["call_id"]: i["output"]
            for i in model.inputs[-1]
            if i.get("type") == "function_call_output"
        }
        assert outputs == {
            "c1": "contents of a.py",
            "c2": "contents of a.py",
            "c3": "wrote 5 bytes to a.py",
            "c4": "contents of a.py",
        }
        sources = [(r.name, r.state) for r in engine.tool_history()]
        assert sources == [
            ("read_file", "finished"),
            ("write_file", "finished"),
            ("read_file", "finished"),
        ]
        history.close()


def test_mediated_write_runs_once_per_call(tmp_path: Path) -> None:
    """Two distinct write calls with the same arguments are two writes (nothing is deduplicated
    that the agent asked for twice)."""
    log: list[str] = []
    _, write_file = counting_tools(log)
    with cvm.Store.open(tmp_path / "c.db") as store:
        engine = store.session("s1")
        model = ScriptedModel(
            [
                [call("write_file", {"path": "log", "text": "a"}, "w1")],
                [call("write_file", {"path": "log", "text": "a"}, "w2")],
                [say("twice")],
            ]
        )
        agent = Agent(name="w", model=model, tools=[mediated(write_file, engine, effect="write")])
        assert run(Runner.run(agent, "append twice")).final_output == "twice"
        assert log == ["write log", "write log"]


def test_mediated_rejects_bad_input(tmp_path: Path) -> None:
    """A wrong effect or a non-FunctionTool is a one-line ClawVMError."""
    read_file, _ = counting_tools([])
    with cvm.Store.open(tmp_path / "c.db") as store:
        engine = store.session("s1")
        with pytest.raises(cvm.ClawVMError, match="effect must be"):
            mediated(read_file, engine, effect="delete")  # type: ignore[arg-type]
        with pytest.raises(cvm.ClawVMError, match="wraps a FunctionTool"):
            mediated(len, engine)  # type: ignore[arg-type]


def kill_mid_write(tmp_path: Path, kind: str) -> Path:
    """Start the child run, wait until its write tool is in flight, SIGKILL it."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(tmp_path / "c.db"), str(workdir), kind], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not (workdir / "ready").exists():
            assert child.poll() is None, "the child exited before its write tool started"
            assert time.monotonic() < deadline, "the child never reached its write tool"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return workdir


def resume_after_kill(
    tmp_path: Path, workdir: Path, history: Any, ledger: Any, store: cvm.Store
) -> ScriptedModel:
    """Resume: the model repeats the write and the read; neither body runs again."""
    sys.path.insert(0, str(CHILD.parent))
    from openai_agents_child import tools

    read_file, deploy = tools(workdir, hang=False)
    model = ScriptedModel(
        [
            [call("deploy", {"target": "prod"}, "r1")],
            [call("read_file", {"path": "a.py"}, "r2")],
            [say("checked")],
        ]
    )
    agent = Agent(
        name="ops",
        model=model,
        tools=[
            mediated(read_file, ledger),
            mediated(deploy, ledger, effect="write", resources=["service:prod"]),
        ],
    )
    result = run(Runner.run(agent, "go on", session=history))
    assert result.final_output == "checked"
    # Each body ran exactly once, in the killed process: nothing re-ran on resume.
    assert (workdir / "runs.txt").read_text().splitlines() == ["read_file", "deploy"]
    for seen in model.inputs:
        check_pairing(seen)
    first = model.inputs[0]
    # What was durable before the kill: the input and the finished read with its output.
    assert [i.get("type", i.get("role")) for i in first] == [
        "user",
        "function_call",
        "function_call_output",
        "user",
    ]
    outputs = {
        i["call_id"]: i["output"]
        for i in model.inputs[-1]
        if i.get("type") == "function_call_output"
    }
    assert outputs["c1"] == "contents of a.py"
    assert "interrupted" in outputs["r1"] and "not run again" in outputs["r1"]
    assert outputs["r2"] == "contents of a.py"
    states = [(r.name, r.state) for r in store.session("crash-session").tool_history()]
    assert states == [("read_file", "finished"), ("deploy", "interrupted")]
    return model


def test_sigkill_mid_write_then_resume_with_sqlite_history(tmp_path: Path) -> None:
    """The SDK's SQLiteSession keeps the history, the engine keeps the ledger: after a kill -9
    in the middle of a write tool, the resumed run continues with a valid history, the read is
    served from the ledger and the interrupted write is refused, not re-run."""
    workdir = kill_mid_write(tmp_path, "sqlite")
    with cvm.Store.open(tmp_path / "c.db") as store:
        engine = store.session("crash-session")
        history = SQLiteSession("crash-session", workdir / "agent.db")
        resume_after_kill(tmp_path, workdir, history, engine, store)
        history.close()


def test_sigkill_mid_write_then_resume_with_clawvm_history(tmp_path: Path) -> None:
    """The same crash with ClawVMSession keeping the history in the engine too."""
    workdir = kill_mid_write(tmp_path, "clawvm")
    with cvm.Store.open(tmp_path / "c.db") as store:
        history = ClawVMSession("crash-session", store)
        resume_after_kill(tmp_path, workdir, history, history, store)


# -- the SDK's session behaviours, mirrored ---------------------------------------------------


@pytest.fixture(params=["sqlite", "clawvm"])
def make_session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A factory of sessions of one kind on one database file; closes them all afterwards."""
    made: list[Any] = []

    def make(session_id: str) -> Any:
        if request.param == "sqlite":
            session: Any = SQLiteSession(session_id, tmp_path / "sdk.db")
        else:
            session = ClawVMSession(session_id, tmp_path / "clawvm.db")
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


ITEMS: list[Any] = [
    {"role": "user", "content": "Message 1"},
    {"role": "assistant", "content": "Response 1"},
    {"role": "user", "content": "Message 2"},
    {"role": "assistant", "content": "Response 2"},
    {"role": "user", "content": "Message 3"},
    {"role": "assistant", "content": "Response 3"},
]


def test_add_get_clear(make_session: Any) -> None:
    """Items come back verbatim and in order; clear_session empties the session."""
    session = make_session("direct")
    run(session.add_items(ITEMS[:2]))
    assert run(session.get_items()) == ITEMS[:2]
    run(session.clear_session())
    assert run(session.get_items()) == []


def test_get_items_limit(make_session: Any) -> None:
    """limit returns the latest N in chronological order; 0 none; more than held all."""
    session = make_session("limit")
    run(session.add_items(ITEMS))
    assert run(session.get_items()) == ITEMS
    assert run(session.get_items(limit=2)) == ITEMS[-2:]
    assert run(session.get_items(limit=4)) == ITEMS[-4:]
    assert run(session.get_items(limit=10)) == ITEMS
    assert run(session.get_items(limit=0)) == []


def test_pop_item(make_session: Any) -> None:
    """pop_item removes and returns the newest item; None when empty."""
    session = make_session("pop")
    assert run(session.pop_item()) is None
    run(session.add_items(ITEMS[:3]))
    assert run(session.pop_item()) == ITEMS[2]
    assert run(session.get_items()) == ITEMS[:2]
    assert run(session.pop_item()) == ITEMS[1]
    assert run(session.pop_item()) == ITEMS[0]
    assert run(session.pop_item()) is None
    assert run(session.get_items()) == []


def test_sessions_are_isolated(make_session: Any) -> None:
    """Two sessions on one database never see or pop each other's items."""
    one, two = make_session("one"), make_session("two")
    run(one.add_items(ITEMS[:2]))
    run(two.add_items(ITEMS[2:3]))
    assert run(two.pop_item()) == ITEMS[2]
    assert run(one.get_items()) == ITEMS[:2]
    assert run(two.get_items()) == []


def test_unicode_and_sql_text(make_session: Any) -> None:
    """Non-ASCII and SQL-looking content round-trips exactly."""
    session = make_session("odd")
    items = [
        {"role": "user", "content": "こんにちは 😀 — ü"},
        {"role": "assistant", "content": "'; DROP TABLE agent_messages; --"},
    ]
    run(session.add_items(items))
    assert run(session.get_items()) == items


def test_runner_turns_carry_history(make_session: Any) -> None:
    """Two Runner.run turns: the second model call sees the first turn's items."""
    session = make_session("runner")
    model = ScriptedModel([[say("San Francisco")], [say("California")]])
    agent = Agent(name="geo", model=model)
    first = run(Runner.run(agent, "Which city is the Golden Gate Bridge in?", session=session))
    assert first.final_output == "San Francisco"
    second = run(Runner.run(agent, "Which state?", session=session))
    assert second.final_output == "California"
    seen = model.inputs[-1]
    assert [i.get("role") for i in seen] == ["user", "assistant", "user"]
    assert seen[0]["content"] == "Which city is the Golden Gate Bridge in?"
    assert seen[-1]["content"] == "Which state?"
    assert len(run(session.get_items())) == 4


def test_items_survive_reopen(make_session: Any, tmp_path: Path) -> None:
    """A second session object on the same id and file sees exactly what the first added."""
    first = make_session("reopen")
    run(first.add_items(ITEMS[:3]))
    first.close()
    again = make_session("reopen")
    assert run(again.get_items()) == ITEMS[:3]


# -- ClawVMSession only -----------------------------------------------------------------------

TOOL_ITEMS: list[Any] = [
    {"role": "user", "content": "read a.py"},
    {
        "type": "function_call",
        "call_id": "c1",
        "name": "read_file",
        "arguments": '{"path": "a.py"}',
        "id": "fc-c1",
    },
    {"type": "function_call_output", "call_id": "c1", "output": "x = 1\n" * 400},
    {
        "id": "msg-1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "It sets x.", "annotations": []}],
    },
    {"type": "reasoning", "id": "rs-1", "summary": []},
    {"role": "developer", "content": "Be brief."},
]


def test_items_of_every_kind_round_trip_verbatim(tmp_path: Path) -> None:
    """Function calls, outputs, output messages, reasoning and developer items come back as
    added, and are recorded with the roles a provider expects."""
    with cvm.Store.open(tmp_path / "c.db") as store:
        session = ClawVMSession("kinds", store)
        run(session.add_items(TOOL_ITEMS))
        assert run(session.get_items()) == TOOL_ITEMS
        recorded = [(m.role, m.tool_call_id) for m in session.session.messages()]
        assert recorded == [
            ("user", None),
            ("assistant", None),
            ("tool", "c1"),
            ("assistant", None),
            ("assistant", None),
            ("system", None),
        ]
        assert session.session.messages()[1].tool_calls[0]["id"] == "c1"
        session.close()


def test_finished_write_never_seen_is_answered_from_the_ledger(tmp_path: Path) -> None:
    """A write that ran (ledger: finished) but whose output never reached the history, as after
    a crash between the tool and add_items: the repeat is answered from the ledger, not run."""
    log: list[str] = []
    _, write_file = counting_tools(log)
    with cvm.Store.open(tmp_path / "c.db") as store:
        session = ClawVMSession("w", store)
        args = {"path": "out.txt", "text": "hello"}
        done = session.session.tool_call(
            "write_file",
            args,
            lambda **_: "wrote 5 bytes to out.txt",
            effect="write",
            idempotency_key="openai-agents:w0",
        )
        assert done.source == "executed"
        model = ScriptedModel([[call("write_file", args, "w1")], [say("ok")]])
        agent = Agent(name="w", model=model, tools=[mediated(write_file, session, effect="write")])
        assert run(Runner.run(agent, "write it", session=session)).final_output == "ok"
        assert log == []
        outputs = [i for i in model.inputs[-1] if i.get("type") == "function_call_output"]
        assert outputs == [
            {"type": "function_call_output", "call_id": "w1", "output": "wrote 5 bytes to out.txt"}
        ]
        # Now w1's output is in the history: a further identical write is a new write.
        model.add([call("write_file", args, "w2")], [say("again")])
        assert run(Runner.run(agent, "write it again", session=session)).final_output == "again"
        assert log == ["write out.txt"]
        session.close()


def test_budgeted_history_is_valid_and_bounded(tmp_path: Path) -> None:
    """With a budget, get_items() is the assembly: every call paired with one output, the
    constraint kept, the newest user message whole, and fewer tokens than the full history."""
    with cvm.Store.open(tmp_path / "c.db") as store:
        full = ClawVMSession("b", store)
        for turn in range(6):
            run(
                full.add_items(
                    [
                        {"role": "user", "content": f"turn {turn}: read f{turn}.py"},
                        {
                            "type": "function_call",
                            "call_id": f"c{turn}",
                            "name": "read_file",
                            "arguments": json.dumps({"path": f"f{turn}.py"}),
                        },
                        {
                            "type": "function_call_output",
                            "call_id": f"c{turn}",
                            "output": f"line of f{turn}\n" * 200,
                        },
                        {"role": "assistant", "content": f"done {turn}"},
                    ]
                )
            )
        full.session.stage(
            "constraint/no-push",
            type=cvm.PageType.CONSTRAINT,
            content="Never push to main.",
        )
        full.session.end_turn()
        everything = run(full.get_items())
        full.close()
        budgeted = ClawVMSession("b", store, budget=1500)
        items = run(budgeted.get_items())
        check_pairing(items)
        text = json.dumps(items)
        assert "Never push to main." in text
        assert any(i.get("content") == "turn 5: read f5.py" for i in items)
        assert len(text) < len(json.dumps(everything)) / 2
        # An explicit limit still reads the verbatim tail (the SDK checks its writes that way).
        assert run(budgeted.get_items(limit=2)) == everything[-2:]
        budgeted.close()


@pytest.mark.parametrize("kind", ["sqlite", "clawvm"])
def test_session_settings_limit(kind: str, tmp_path: Path) -> None:
    """session_settings.limit bounds get_items(); an explicit limit overrides it."""
    from agents import SessionSettings

    settings = SessionSettings(limit=2)
    if kind == "sqlite":
        session: Any = SQLiteSession("s", tmp_path / "sdk.db", session_settings=settings)
    else:
        session = ClawVMSession("s", tmp_path / "c.db", session_settings=settings)
    run(session.add_items(ITEMS))
    assert run(session.get_items()) == ITEMS[-2:]
    assert run(session.get_items(limit=5)) == ITEMS[-5:]
    session.close()


def test_the_history_follows_writes_made_beside_the_session(tmp_path: Path) -> None:
    """get_items() keeps a history of its own writes; a message recorded through the engine
    session directly, a rejected message and a pop all show in the next read."""
    with cvm.Store.open(tmp_path / "c.db") as store:
        session = ClawVMSession("beside", store)
        run(session.add_items(ITEMS[:2]))
        assert run(session.get_items()) == ITEMS[:2]
        session.session.append_message("user", "written beside the SDK")
        assert run(session.get_items())[-1] == {"role": "user", "content": "written beside the SDK"}
        run(session.add_items(ITEMS[2:3]))
        assert run(session.get_items()) == [
            *ITEMS[:2],
            {"role": "user", "content": "written beside the SDK"},
            *ITEMS[2:3],
        ]
        # A message the boundary refuses (here: a page another write took first) leaves the
        # history at the next read, though add_items had put it there.
        key = session.session.append_message("user", "about to be taken").key
        session.store.put(key, type="conversation", content="taken", session="beside")
        assert run(session.get_items())[-1] == {"role": "user", "content": "about to be taken"}
        rejected = session.session.flush().rejected
        assert [reason for _, reason in rejected] == ["DESTRUCTIVE_OP"]
        assert run(session.get_items()) == [
            *ITEMS[:2],
            {"role": "user", "content": "written beside the SDK"},
            *ITEMS[2:3],
        ]
        assert run(session.pop_item()) == ITEMS[2]
        assert run(session.get_items())[-1] == {"role": "user", "content": "written beside the SDK"}
        session.close()
        reopened = ClawVMSession("beside", store)
        assert run(reopened.get_items()) == [
            *ITEMS[:2],
            {"role": "user", "content": "written beside the SDK"},
        ]
        reopened.close()


def test_add_items_journals_a_batch_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of items is one write transaction, and the engine reads the highest message
    number once per session object, not once per message."""
    with cvm.Store.open(tmp_path / "c.db") as store:
        session = ClawVMSession("batch", store)
        run(session.get_items())  # the first read of the (empty) history
        opened: list[bool] = []
        primitive = store.db.transaction

        def counted(*args: Any, **kwargs: Any) -> Any:
            opened.append(kwargs.get("write", True))
            return primitive(*args, **kwargs)

        monkeypatch.setattr(store.db, "transaction", counted)
        run(session.add_items(TOOL_ITEMS[:3]))
        assert opened == [False, True]  # the highest seq, then one stage transaction
        opened.clear()
        run(session.add_items(TOOL_ITEMS[3:5]))
        assert opened == [True]
        opened.clear()
        assert run(session.get_items()) == TOOL_ITEMS[:5]
        assert opened == []  # served from the history this object kept
        monkeypatch.undo()
        rows = store.query("SELECT key FROM journal WHERE session_id = 'batch' ORDER BY lsn")
        assert [row["key"] for row in rows] == [f"conversation/m-{n:08d}" for n in range(1, 6)]
        session.close()
