"""An Agents SDK run that tests/test_openai_agents.py starts in a child process and kills with -9.

Usage: ``python openai_agents_child.py CLAWVM_DB WORKDIR SESSION_KIND``. The agent reads ``a.py``
(a mediated read tool), then calls ``deploy`` (a mediated write tool). Every tool body appends its
name to ``WORKDIR/runs.txt`` (O_APPEND, so a line survives the kill) before doing anything, which is
how the parent counts executions; ``deploy`` then writes ``WORKDIR/ready`` and sleeps, so the parent
kills the process with the write in flight. SESSION_KIND ``sqlite`` keeps the history in an
SQLiteSession at ``WORKDIR/agent.db``; ``clawvm`` keeps it in a ClawVMSession in CLAWVM_DB.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from agents import Agent, Runner, SQLiteSession, function_tool, set_tracing_disabled

sys.path.insert(0, str(Path(__file__).parent))
from agents_model import ScriptedModel, call, say

import clawvm_store as cvm
from clawvm_store.integrations.openai_agents import ClawVMSession, mediated

SESSION = "crash-session"


def note(workdir: Path, name: str) -> None:
    """Record one execution of a tool body (survives a kill -9 once written)."""
    fd = os.open(workdir / "runs.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{name}\n".encode())
    finally:
        os.close(fd)


def tools(workdir: Path, hang: bool) -> tuple[Any, Any]:
    """The read tool and the write tool; ``hang`` makes deploy stop for the kill."""

    @function_tool
    def read_file(path: str) -> str:
        """Read a file."""
        note(workdir, "read_file")
        return f"contents of {path}"

    @function_tool
    def deploy(target: str) -> str:
        """Deploy to a target."""
        note(workdir, "deploy")
        if hang:
            (workdir / "ready").write_text("1")
            time.sleep(60)
        return f"deployed {target}"

    return read_file, deploy


async def main(db: str, workdir: Path, kind: str) -> None:
    """Start the run that the parent kills."""
    set_tracing_disabled(True)
    store = cvm.Store.open(db)
    if kind == "clawvm":
        history: Any = ClawVMSession(SESSION, store)
        ledger: Any = history
    else:
        history = SQLiteSession(SESSION, workdir / "agent.db")
        ledger = store.session(SESSION)
    read_file, deploy = tools(workdir, hang=True)
    model = ScriptedModel(
        [
            [call("read_file", {"path": "a.py"}, "c1")],
            [call("deploy", {"target": "prod"}, "c2")],
            [say("never reached")],
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
    await Runner.run(agent, "ship it", session=history)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3]))
