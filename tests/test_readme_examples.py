"""The README's "Use it from your framework" examples, run exactly as written.

Each example is the fenced Python block after a ``<!-- example: NAME -->`` marker. It runs in a
fresh working directory; the OpenAI Agents example gets a scripted model in place of the
network (the SDK's model provider is replaced, the example's text is not touched).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def example(name: str) -> str:
    """The code of the README example named ``name``."""
    text = README.read_text(encoding="utf-8")
    found = re.search(
        rf"<!-- example: {re.escape(name)} -->\s*```python\n(.*?)\n```", text, re.DOTALL
    )
    assert found is not None, f"README has no example {name!r}"
    return found.group(1)


def test_langgraph_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """The LangGraph example prints the graph's result and leaves a checkpoint in agent.db."""
    pytest.importorskip("langgraph")
    monkeypatch.chdir(tmp_path)
    exec(compile(example("langgraph"), "README:langgraph", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == "{'total': 10}\n"
    import clawvm_store as cvm

    with cvm.Store.open(tmp_path / "agent.db") as store:
        rows = store.query("SELECT thread_id FROM langgraph_threads")
    assert [r["thread_id"] for r in rows] == ["t-1"]


def test_openai_agents_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The Agents SDK example runs its agent (scripted model), reading a.py through the ledger."""
    pytest.importorskip("agents")
    from agents import set_tracing_disabled
    from agents.models.multi_provider import MultiProvider
    from agents_model import ScriptedModel, call, say

    set_tracing_disabled(True)
    model = ScriptedModel(
        [[call("read_file", {"path": "a.py"}, "c1")], lambda seen: [say(seen[-1]["output"])]]
    )
    monkeypatch.setattr(MultiProvider, "get_model", lambda self, name: model)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.py").write_text("print('hello')\n")
    exec(
        compile(example("openai-agents"), "README:openai-agents", "exec"),
        {"__name__": "__main__"},
    )
    assert capsys.readouterr().out == "print('hello')\n\n"
    import clawvm_store as cvm

    with cvm.Store.open(tmp_path / "agent.db") as store:
        calls = store.query("SELECT name, state FROM tool_calls WHERE session_id = 'user-42'")
    assert [(r["name"], r["state"]) for r in calls] == [("read_file", "finished")]
