"""Transcript importers: synthetic transcripts per format, detection, and the shared real traces.

Every transcript in this file is invented for the test (same shapes as the real formats, made-up
content). The real traces in ``../shared/traces`` are evaluation material without a reuse licence:
they are only read from where they are, never copied, and their tests skip when they are absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clawvm_store import InvalidInput
from clawvm_store.replay import importers
from clawvm_store.replay.importers import (
    KINDS,
    classify,
    detect_kind,
    import_transcript,
    patch_paths,
    shell_analysis,
)
from clawvm_store.replay.trace import Trace
from clawvm_store.tokens import TokenCounter

SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    """Objects are written as JSON; strings are written as they are (malformed lines)."""
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def shape(trace: Trace) -> list[dict[str, Any]]:
    """The parts of each turn the tests pin down."""
    return [
        {
            "session": turn.session,
            "user": turn.user,
            "assistant": turn.assistant,
            "event": turn.event,
            "tools": [
                (step.name, step.args, step.effect, step.output, step.call_id)
                for step in turn.tools
            ],
        }
        for turn in trace.turns
    ]


# --------------------------------------------------------------------------------------------
# Claude Code
# --------------------------------------------------------------------------------------------


def cc(kind: str, content: Any, session: str = "sess-a", **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "sessionId": session,
        "message": {"role": kind, "content": content},
        **extra,
    }


def tool_use(call_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": args}


def tool_result(call_id: str, content: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


CLAUDE_LINES: list[Any] = [
    {"type": "file-history-snapshot", "messageId": "m0", "snapshot": {}},  # 1
    cc("user", "Please tidy the parser module."),  # 2
    cc(
        "assistant",
        [
            {"type": "thinking", "thinking": "plan"},
            {"type": "text", "text": "Reading it first."},
            tool_use("toolu_1", "Read", {"file_path": "/repo/parser.py"}),
        ],
    ),  # 3
    cc("user", [tool_result("toolu_1", "def parse(): ...")], toolUseResult={}),  # 4
    "this is not json {",  # 5
    cc(
        "assistant",
        [
            tool_use(
                "toolu_2",
                "Edit",
                {"file_path": "/repo/parser.py", "old_string": "a", "new_string": "b"},
            )
        ],
    ),  # 6
    cc("user", [tool_result("toolu_2", [{"type": "text", "text": "edited"}])]),  # 7
    cc("assistant", [tool_use("toolu_3", "Bash", {"command": "git status", "description": "st"})]),
    cc("user", [tool_result("toolu_3", "clean")]),  # 9
    {"type": "system", "subtype": "compact_boundary", "sessionId": "sess-a"},  # 10
    cc(
        "user",
        "This session is being continued from a previous conversation.",
        isCompactSummary=True,
    ),
    cc("assistant", [tool_use("toolu_4", "Read", {"file_path": "/repo/parser.py"})]),  # 12
    cc(
        "user",
        [
            tool_result(
                "toolu_4",
                [
                    {"type": "text", "text": "def parse(): pass"},
                    {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                ],
            )
        ],
    ),  # 13
    cc("user", "Now run the tests."),  # 14
    cc("assistant", [tool_use("toolu_5", "Bash", {"command": "pytest -q"})]),  # 15
    cc("user", [tool_result("toolu_5", "3 passed")]),  # 16
    {"type": "user", "message": "oops", "sessionId": "sess-a"},  # 17: wrong shape
    cc("user", "<local-command-caveat>ignore</local-command-caveat>", isMeta=True),  # 18
    cc("user", [{"type": "text", "text": "[Request interrupted by user]"}]),  # 19
    cc("user", "Second session prompt", session="sess-b"),  # 20
    cc("assistant", [{"type": "text", "text": "Hello again."}], session="sess-b"),  # 21
]

CLAUDE_TURNS = [
    {
        "session": "s-1",
        "user": "Please tidy the parser module.",
        "assistant": "Reading it first.",
        "event": "compaction",
        "tools": [
            ("Read", {"path": "/repo/parser.py"}, "read", "def parse(): ...", "toolu_1"),
            (
                "Edit",
                {"path": "/repo/parser.py", "old_string": "a", "new_string": "b"},
                "write",
                "edited",
                "toolu_2",
            ),
            (
                "Bash",
                {"command": "git status", "description": "st"},
                "volatile",
                "clean",
                "toolu_3",
            ),
        ],
    },
    {
        "session": "s-1",
        "user": None,
        "assistant": None,
        "event": None,
        "tools": [
            ("Read", {"path": "/repo/parser.py"}, "read", "def parse(): pass\n[image]", "toolu_4")
        ],
    },
    {
        "session": "s-1",
        "user": "Now run the tests.",
        "assistant": None,
        "event": None,
        "tools": [("Bash", {"command": "pytest -q"}, "unknown", "3 passed", "toolu_5")],
    },
    {
        "session": "s-2",
        "user": "Second session prompt",
        "assistant": "Hello again.",
        "event": None,
        "tools": [],
    },
]


def test_claude_code_mapping(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "cc.jsonl", CLAUDE_LINES)
    trace = import_transcript(path, kind="claude-code", split="prompt")
    assert shape(trace) == CLAUDE_TURNS
    assert (trace.name, trace.source, trace.project) == ("cc", "claude-code", "trace")
    assert all(turn.demand == [] and turn.stage == [] for turn in trace.turns)
    assert len(trace.warnings) == 2
    assert trace.warnings[0].startswith("line 5: not JSON")
    assert trace.warnings[1] == "line 17: user record without a message content; skipped"


RESPONSE_LINES: list[Any] = [
    cc("user", "Fix a.py"),
    cc(
        "assistant",
        [{"type": "text", "text": "Reading."}, tool_use("t1", "Read", {"file_path": "a.py"})],
    ),
    cc("user", [tool_result("t1", "A = 1")]),
    cc(
        "assistant",
        [
            tool_use("t2", "Edit", {"file_path": "a.py", "old_string": "1", "new_string": "2"}),
            tool_use("t3", "Bash", {"command": "git status"}),
        ],
    ),
    cc("user", [tool_result("t2", "edited")]),
    cc("user", [tool_result("t3", "clean")]),
    cc("assistant", [{"type": "text", "text": "Done."}]),
    cc("user", "Thanks"),
    cc("assistant", [{"type": "text", "text": "Welcome."}]),
]


def test_turns_start_at_every_model_response_by_default(tmp_path: Path) -> None:
    """Each request the harness sent is a turn: a response after results starts one; calls
    made together in one response stay together, answered across records."""
    path = write_jsonl(tmp_path / "responses.jsonl", RESPONSE_LINES)
    edit = {"path": "a.py", "old_string": "1", "new_string": "2"}
    by_response = [
        ("Fix a.py", "Reading.", [("Read", "A = 1")]),
        (None, None, [("Edit", "edited"), ("Bash", "clean")]),
        (None, "Done.", []),
        ("Thanks", "Welcome.", []),
    ]
    trace = import_transcript(path)
    assert [
        (turn.user, turn.assistant, [(step.name, step.output) for step in turn.tools])
        for turn in trace.turns
    ] == by_response
    assert trace.turns[1].tools[0].args == edit
    assert trace.warnings == []
    by_prompt = import_transcript(path, split="prompt")
    assert [
        (turn.user, turn.assistant, [(step.name, step.output) for step in turn.tools])
        for turn in by_prompt.turns
    ] == [
        (
            "Fix a.py",
            "Reading.\n\nDone.",
            [("Read", "A = 1"), ("Edit", "edited"), ("Bash", "clean")],
        ),
        ("Thanks", "Welcome.", []),
    ]
    with pytest.raises(
        InvalidInput, match="unknown split 'turn'; expected one of response, prompt"
    ):
        import_transcript(path, split="turn")


def test_real_prompt_sizes_come_from_the_usage_records(tmp_path: Path) -> None:
    """Claude Code's message usage and Codex token_count events: each turn keeps the count of
    the request that opened it; the fixed region is the first one less its user text."""
    usage = {"input_tokens": 3, "cache_creation_input_tokens": 900, "cache_read_input_tokens": 0}
    later = {"input_tokens": 2, "cache_creation_input_tokens": 40, "cache_read_input_tokens": 950}
    lines = [
        cc("user", "Fix a.py"),
        {
            **cc("assistant", [tool_use("t1", "Read", {"file_path": "a.py"})]),
            "message": {
                "role": "assistant",
                "content": [tool_use("t1", "Read", {"file_path": "a.py"})],
                "usage": usage,
            },
        },
        cc("user", [tool_result("t1", "A = 1")]),
        {
            **cc("assistant", []),
            "message": {
                "role": "assistant",
                "content": [{"type": "text", "text": "Done."}],
                "usage": later,
            },
        },
    ]
    trace = import_transcript(write_jsonl(tmp_path / "usage.jsonl", lines))
    assert [(t.prompt_tokens, t.cached_tokens) for t in trace.turns] == [(903, 0), (992, 950)]
    assert trace.fixed_tokens == 903 - TokenCounter().count("Fix a.py")
    # One turn per prompt: the first request's count is the turn's.
    whole = import_transcript(write_jsonl(tmp_path / "usage.jsonl", lines), split="prompt")
    assert [(t.prompt_tokens, t.cached_tokens) for t in whole.turns] == [(903, 0)]
    codex = [
        cx("session_meta", {"id": "c-1"}),
        cx("event_msg", {"type": "user_message", "message": "List files."}),
        cx(
            "response_item",
            {
                "type": "function_call",
                "name": "shell",
                "call_id": "k1",
                "arguments": json.dumps({"command": "ls"}),
            },
        ),
        cx(
            "event_msg",
            {
                "type": "token_count",
                "info": {"last_token_usage": {"input_tokens": 5000, "cached_input_tokens": 4000}},
            },
        ),
        cx("response_item", {"type": "function_call_output", "call_id": "k1", "output": "a b"}),
        cx(
            "response_item",
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "a and b."}],
            },
        ),
        cx("event_msg", {"type": "token_count", "info": None}),
    ]
    codex_trace = import_transcript(write_jsonl(tmp_path / "rollout.jsonl", codex), kind="codex")
    assert [(t.prompt_tokens, t.cached_tokens) for t in codex_trace.turns] == [
        (5000, 4000),
        (None, None),
    ]
    # No usage at all: nothing is made up.
    plain = import_transcript(write_jsonl(tmp_path / "cc.jsonl", CLAUDE_LINES), split="prompt")
    assert {(t.prompt_tokens, t.cached_tokens) for t in plain.turns} == {(None, None)}
    assert plain.fixed_tokens == 0


def test_claude_code_session_selection(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "cc.jsonl", CLAUDE_LINES)
    second = import_transcript(path, session="sess-b", split="prompt")
    assert shape(second) == [{**CLAUDE_TURNS[3], "session": "s-1"}]
    first = import_transcript(path, session="sess-a", split="prompt")
    assert [turn.user for turn in first.turns] == [turn["user"] for turn in CLAUDE_TURNS[:3]]
    assert (
        import_transcript(path, session="sess-b", split="prompt").model_dump_json()
        == second.model_dump_json()
    )
    with pytest.raises(InvalidInput, match="no session 'nope'"):
        import_transcript(path, session="nope")


def test_claude_code_result_written_before_its_call(tmp_path: Path) -> None:
    lines = [
        cc("user", "Look at the file."),
        cc("user", [tool_result("toolu_9", "contents")]),  # the record order is not the call order
        cc("assistant", [tool_use("toolu_9", "Read", {"file_path": "/a.txt"})]),
        cc("user", [tool_result("toolu_404", "nobody asked")]),
    ]
    trace = import_transcript(write_jsonl(tmp_path / "order.jsonl", lines))
    assert [(s.name, s.output) for s in trace.turns[0].tools] == [("Read", "contents")]
    assert trace.warnings == ["line 4: tool result for call toolu_404 without a call; skipped"]


def test_claude_engram_capture(tmp_path: Path) -> None:
    lines: list[Any] = [
        {"timestamp": "t1", "role": "user", "content": {"type": "text", "text": "Clone the repo."}},
        {"timestamp": "t2", "role": "assistant", "content": {"type": "thinking", "text": "hm"}},
        {
            "timestamp": "t3",
            "role": "assistant",
            "content": {
                "type": "tool_use",
                "tool_name": "Read",
                "tool_id": "t-1",
                "input": {"file_path": "/r/a.md"},
            },
        },
        {
            "timestamp": "t4",
            "role": "tool",
            "content": {
                "type": "tool_result",
                "tool_id": "t-1",
                "output": "# A",
                "is_error": False,
            },
        },
        {"timestamp": "t5", "role": "user", "content": "flat string"},  # wrong shape
        {
            "timestamp": "t6",
            "role": "user",
            "content": {
                "type": "text",
                "text": "This session is being continued from a previous conversation that ran out of context.",
            },
        },
        {
            "timestamp": "t7",
            "role": "assistant",
            "content": {
                "type": "tool_use",
                "tool_name": "Write",
                "tool_id": "t-2",
                "input": {"file_path": "/r/a.md", "content": "# B"},
            },
        },
        {
            "timestamp": "t8",
            "role": "tool",
            "content": {
                "type": "tool_result",
                "tool_id": "t-2",
                "output": "written",
                "is_error": False,
            },
        },
        {"timestamp": "t9", "role": "assistant", "content": {"type": "text", "text": "Done."}},
    ]
    path = write_jsonl(tmp_path / "engram.jsonl", lines)
    assert detect_kind(path) == "claude-code"
    trace = import_transcript(path, split="prompt")
    assert shape(trace) == [
        {
            "session": "s-1",
            "user": "Clone the repo.",
            "assistant": None,
            "event": "compaction",
            "tools": [("Read", {"path": "/r/a.md"}, "read", "# A", "t-1")],
        },
        {
            "session": "s-1",
            "user": None,
            "assistant": "Done.",
            "event": None,
            "tools": [("Write", {"path": "/r/a.md", "content": "# B"}, "write", "written", "t-2")],
        },
    ]
    assert trace.warnings == ["line 5: user record without a content object; skipped"]


# --------------------------------------------------------------------------------------------
# Codex
# --------------------------------------------------------------------------------------------


def cx(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"timestamp": "2026-01-01T00:00:00Z", "type": kind, "payload": payload}


PATCH = (
    "*** Begin Patch\n*** Update File: src/config.ts\n@@\n-export const x = 1;\n"
    "+export const y = 1;\n*** End Patch"
)
CODEX_LINES: list[Any] = [
    cx("session_meta", {"id": "codex-sess-1", "cwd": "/w"}),  # 1
    cx(
        "response_item",
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "<environment_context>cwd</environment_context>"}
            ],
        },
    ),
    cx(
        "event_msg", {"type": "user_message", "message": "Show me the config loader.", "images": []}
    ),
    cx(
        "response_item",
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Show me the config loader."}],
        },
    ),
    cx(
        "response_item",
        {
            "type": "function_call",
            "name": "shell_command",
            "arguments": json.dumps({"command": "cat src/config.ts", "workdir": "/w"}),
            "call_id": "call_0",
        },
    ),
    cx(
        "response_item",
        {"type": "function_call_output", "call_id": "call_0", "output": "export const x = 1;"},
    ),
    cx(
        "response_item",
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "The loader exports x."}],
        },
    ),
    cx("event_msg", {"type": "agent_message", "message": "The loader exports x."}),  # 8
    {"timestamp": "2026-01-01T00:00:01Z", "type": "compacted", "payload": {"message": "summary"}},
    cx("event_msg", {"type": "user_message", "message": "Rename x to y."}),  # 10
    cx(
        "response_item",
        {"type": "custom_tool_call", "name": "apply_patch", "input": PATCH, "call_id": "call_0"},
    ),
    cx(
        "response_item",
        {
            "type": "custom_tool_call_output",
            "call_id": "call_0",
            "output": json.dumps(
                {
                    "output": "Success. Updated the following files:\nM src/config.ts",
                    "metadata": {"exit_code": 0},
                }
            ),
        },
    ),
    cx(
        "response_item",
        {
            "type": "function_call",
            "name": "shell_command",
            "arguments": json.dumps({"command": "npm test"}),
            "call_id": "call_1",
        },
    ),
    {"type": "response_item"},  # 14: no payload
    cx(
        "response_item",
        {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": [{"type": "input_text", "text": "ok"}],
        },
    ),
    "{garbage",  # 16
]


def test_codex_mapping(tmp_path: Path) -> None:
    trace = import_transcript(
        write_jsonl(tmp_path / "rollout.jsonl", CODEX_LINES), kind="codex", split="prompt"
    )
    assert trace.source == "codex"
    assert shape(trace) == [
        {
            "session": "s-1",
            "user": "Show me the config loader.",
            "assistant": "The loader exports x.",
            "event": "compaction",
            "tools": [
                (
                    "shell_command",
                    {"command": "cat src/config.ts", "workdir": "/w", "path": "src/config.ts"},
                    "read",
                    "export const x = 1;",
                    "call_0",
                )
            ],
        },
        {
            "session": "s-1",
            "user": "Rename x to y.",
            "assistant": None,
            "event": None,
            "tools": [
                (
                    "apply_patch",
                    {"input": PATCH, "paths": ["src/config.ts"]},
                    "write",
                    "Success. Updated the following files:\nM src/config.ts",
                    "call_0",  # the same id as turn 1's call: matched within its own turn
                ),
                ("shell_command", {"command": "npm test"}, "unknown", "ok", "call_1"),
            ],
        },
    ]
    assert trace.warnings[0] == "line 14: record without a type and payload; skipped"
    assert trace.warnings[1].startswith("line 16: not JSON")
    assert len(trace.warnings) == 2


def test_codex_reused_call_id_without_result_stays_in_its_turn(tmp_path: Path) -> None:
    lines = [
        cx("event_msg", {"type": "user_message", "message": "first"}),
        cx(
            "response_item",
            {
                "type": "function_call",
                "name": "shell_command",
                "arguments": '{"command": "ls"}',
                "call_id": "call_0",
            },
        ),
        cx("event_msg", {"type": "user_message", "message": "second"}),
        cx(
            "response_item",
            {
                "type": "function_call",
                "name": "shell_command",
                "arguments": '{"command": "pwd"}',
                "call_id": "call_0",
            },
        ),
        cx("response_item", {"type": "function_call_output", "call_id": "call_0", "output": "/w"}),
    ]
    trace = import_transcript(write_jsonl(tmp_path / "reuse.jsonl", lines))
    assert [[(s.args["command"], s.output) for s in t.tools] for t in trace.turns] == [
        [("ls", "")],
        [("pwd", "/w")],
    ]
    assert trace.warnings == ["line 2: shell_command call call_0 has no result"]


def test_codex_code_mode_exec() -> None:
    read = 'const r = await tools.exec_command({"cmd":"sed -n \'1,80p\' src/lib.rs","workdir":"/w"}); text(r.output);'
    effect, args = classify("exec", {"input": read})
    assert (effect, args["path"]) == ("read", "src/lib.rs")
    build = 'const r = await tools.exec_command({"cmd":"cargo build","workdir":"/w"});'
    assert classify("exec", {"input": build})[0] == "write"
    patch = 'const p = "*** Begin Patch\\n*** Add File: notes/todo.md\\n+x\\n*** End Patch"; await tools.apply_patch(p);'
    effect, args = classify("exec", {"input": patch})
    assert (effect, args["paths"]) == ("write", ["notes/todo.md"])
    search = 'const r = await tools.web__run({"search_query":[{"q":"x"}]}); text(r);'
    assert classify("exec", {"input": search})[0] == "read"


# --------------------------------------------------------------------------------------------
# Copilot
# --------------------------------------------------------------------------------------------


def cp(kind: str, data: dict[str, Any], role: str = "") -> dict[str, Any]:
    return {
        "role": role,
        "content": "",
        "timestamp": "2026-01-01T00:00:00Z",
        "raw": {"type": kind, "data": data, "id": f"e-{kind}", "parentId": None},
    }


COPILOT_PATCH = "*** Begin Patch\n*** Add File: /src/main_test.go\n+package main\n*** End Patch"
COPILOT_LINES: list[Any] = [
    cp("session.start", {"sessionId": "cp-1", "version": 1}),  # 1
    cp("user.message", {"content": "Fix the flag parsing."}, "user"),  # 2
    cp("assistant.message", {"content": "Looking at main.go.", "toolRequests": []}, "assistant"),
    cp(
        "tool.execution_start",
        {"toolCallId": "tc-1", "toolName": "view", "arguments": {"path": "/src/main.go"}},
    ),
    cp(
        "tool.execution_complete",
        {
            "toolCallId": "tc-1",
            "success": True,
            "result": {"content": "package main", "detailedContent": "package main"},
        },
    ),
    cp(
        "tool.execution_start",
        {
            "toolCallId": "tc-2",
            "toolName": "edit",
            "arguments": {"path": "/src/main.go", "old_str": "a", "new_str": "b"},
        },
    ),
    cp(
        "tool.execution_complete",
        {
            "toolCallId": "tc-2",
            "success": True,
            "result": {"content": "File /src/main.go updated."},
        },
    ),
    cp("session.compaction_complete", {"success": True}),  # 8
    cp(
        "tool.execution_start",
        {
            "toolCallId": "tc-3",
            "toolName": "bash",
            "arguments": {"command": "go build ./...", "description": "Build"},
        },
    ),
    cp(
        "tool.execution_complete",
        {"toolCallId": "tc-3", "success": False, "error": {"message": "exit status 1"}},
    ),
    {"raw": "not an event"},  # 11
    cp("user.message", {"content": "Now add a test."}, "user"),  # 12
    cp(
        "tool.execution_start",
        {"toolCallId": "tc-1", "toolName": "apply_patch", "arguments": COPILOT_PATCH},
    ),
    cp(
        "tool.execution_complete",
        {"toolCallId": "tc-1", "success": True, "result": {"content": "Done"}},
    ),
    "not json at all",  # 15
]


def test_copilot_mapping(tmp_path: Path) -> None:
    trace = import_transcript(
        write_jsonl(tmp_path / "copilot.jsonl", COPILOT_LINES), kind="copilot", split="prompt"
    )
    assert shape(trace) == [
        {
            "session": "s-1",
            "user": "Fix the flag parsing.",
            "assistant": "Looking at main.go.",
            "event": "compaction",
            "tools": [
                ("view", {"path": "/src/main.go"}, "read", "package main", "tc-1"),
                (
                    "edit",
                    {"path": "/src/main.go", "old_str": "a", "new_str": "b"},
                    "write",
                    "File /src/main.go updated.",
                    "tc-2",
                ),
            ],
        },
        {
            "session": "s-1",
            "user": None,
            "assistant": None,
            "event": None,
            "tools": [
                (
                    "bash",
                    {"command": "go build ./...", "description": "Build"},
                    "unknown",
                    "exit status 1",
                    "tc-3",
                )
            ],
        },
        {
            "session": "s-1",
            "user": "Now add a test.",
            "assistant": None,
            "event": None,
            "tools": [
                (
                    "apply_patch",
                    {"input": COPILOT_PATCH, "paths": ["/src/main_test.go"]},
                    "write",
                    "Done",
                    "tc-1",
                )
            ],
        },
    ]
    assert trace.warnings[0] == "line 11: event without a type and data; skipped"
    assert trace.warnings[1].startswith("line 15: not JSON")
    assert len(trace.warnings) == 2


# --------------------------------------------------------------------------------------------
# Gemini CLI
# --------------------------------------------------------------------------------------------

GEMINI_LINES: list[Any] = [
    {"type": "message", "role": "user", "content": "Build the landing page."},  # 1
    {"type": "init", "timestamp": "t", "session_id": "gem-1", "model": "m"},  # 2
    {
        "type": "message",
        "timestamp": "t",
        "role": "user",
        "content": "Build the landing page from the design.",
    },
    {
        "type": "tool_use",
        "timestamp": "t",
        "tool_name": "read_file",
        "tool_id": "read_file-1",
        "parameters": {"file_path": "/app/index.html"},
    },
    {
        "type": "tool_result",
        "timestamp": "t",
        "tool_id": "read_file-1",
        "status": "success",
        "output": "<html></html>",
    },
    {"type": "message", "timestamp": "t", "role": "assistant", "content": "I will ", "delta": True},
    {
        "type": "message",
        "timestamp": "t",
        "role": "assistant",
        "content": "edit it.",
        "delta": True,
    },
    {
        "type": "tool_use",
        "timestamp": "t",
        "tool_name": "write_file",
        "tool_id": "write_file-2",
        "parameters": {"file_path": "/app/index.html", "content": "<html>hi</html>"},
    },
    {
        "type": "tool_result",
        "timestamp": "t",
        "tool_id": "write_file-2",
        "status": "error",
        "error": {"type": "x", "message": "permission denied"},
    },
    {"type": 5},  # 10
    {"type": "result", "timestamp": "t", "status": "success", "stats": {}},  # 11
    {"type": "init", "timestamp": "t", "session_id": "gem-2", "model": "m"},  # 12
    {"type": "message", "timestamp": "t", "role": "user", "content": "Second run."},
    {
        "type": "tool_use",
        "timestamp": "t",
        "tool_name": "run_shell_command",
        "tool_id": "run_shell_command-3",
        "parameters": {"command": "ls -la"},
    },
    {
        "type": "tool_result",
        "timestamp": "t",
        "tool_id": "run_shell_command-3",
        "status": "success",
        "output": "index.html",
    },
    "]]",  # 16
]


def test_gemini_cli_mapping(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "gemini.jsonl", GEMINI_LINES)
    trace = import_transcript(path, kind="gemini-cli", split="prompt")
    assert shape(trace) == [
        {
            "session": "s-1",
            "user": "Build the landing page.\n\nBuild the landing page from the design.",
            "assistant": "I will edit it.",
            "event": None,
            "tools": [
                ("read_file", {"path": "/app/index.html"}, "read", "<html></html>", "read_file-1"),
                (
                    "write_file",
                    {"path": "/app/index.html", "content": "<html>hi</html>"},
                    "write",
                    "permission denied",
                    "write_file-2",
                ),
            ],
        },
        {
            "session": "s-2",
            "user": "Second run.",
            "assistant": None,
            "event": None,
            "tools": [
                (
                    "run_shell_command",
                    {"command": "ls -la"},
                    "read",
                    "index.html",
                    "run_shell_command-3",
                )
            ],
        },
    ]
    assert trace.warnings[0] == "line 10: record without a type; skipped"
    assert trace.warnings[1].startswith("line 16: not JSON")
    assert len(trace.warnings) == 2
    only = import_transcript(path, session="gem-2", split="prompt")
    assert [turn.user for turn in only.turns] == ["Second run."]


# --------------------------------------------------------------------------------------------
# Antigravity
# --------------------------------------------------------------------------------------------


def ag(index: int, kind: str, content: str, source: str = "MODEL", **extra: Any) -> dict[str, Any]:
    return {
        "step_index": index,
        "source": source,
        "type": kind,
        "status": "DONE",
        "created_at": "2026-01-01T00:00:00Z",
        "content": content,
        **extra,
    }


def planner(index: int, text: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return ag(index, "PLANNER_RESPONSE", text, tool_calls=[{"name": name, "args": args}])


ANTIGRAVITY_LINES: list[Any] = [
    ag(10, "VIEW_FILE", "Created At: x\nFile Path: `file:///p/old.ts`\nold"),  # 1: no call
    ag(11, "USER_INPUT", "<USER_REQUEST>\nAdd a label.\n</USER_REQUEST>", source="USER_EXPLICIT"),
    planner(
        12, "I will view the file.", "view_file", {"AbsolutePath": "/p/a.ts", "toolAction": "View"}
    ),
    ag(
        13,
        "VIEW_FILE",
        "Created At: 2026-01-01T00:00:00Z\nCompleted At: 2026-01-01T00:00:01Z\nconst a = 1;",
    ),
    planner(
        14,
        "Editing.",
        "replace_file_content",
        {"TargetFile": "/p/a.ts", "TargetContent": "1", "ReplacementContent": "2"},
    ),
    '{"step_index": 15, "sou',  # 6: a fragment (the edit's result is lost)
    planner(16, "Checking.", "run_command", {"CommandLine": "git diff", "Cwd": "/p"}),
    ag(17, "RUN_COMMAND", "Created At: x\nCompleted At: y\ndiff --git a/p/a.ts"),
    ag(18, "CHECKPOINT", "{{ CHECKPOINT 1 }} earlier steps were summarised", source="SYSTEM"),
    planner(19, "Continuing.", "grep_search", {"SearchPath": "/p", "Query": "label"}),
    ag(20, "GREP_SEARCH", '{"File":"/p/a.ts"}'),
    ag(21, "SYSTEM_MESSAGE", "a system note", source="SYSTEM"),
    {"foo": 1},  # 13
]


def test_antigravity_mapping(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "trajectory.jsonl", ANTIGRAVITY_LINES)
    trace = import_transcript(path, kind="antigravity", split="prompt")
    assert shape(trace) == [
        {
            "session": "s-1",
            "user": "Add a label.",
            "assistant": "I will view the file.\n\nEditing.\n\nChecking.",
            "event": "compaction",
            "tools": [
                (
                    "view_file",
                    {"path": "/p/a.ts", "toolAction": "View"},
                    "read",
                    "const a = 1;",
                    None,
                ),
                (
                    "replace_file_content",
                    {"path": "/p/a.ts", "TargetContent": "1", "ReplacementContent": "2"},
                    "write",
                    "",
                    None,
                ),
                (
                    "run_command",
                    {"CommandLine": "git diff", "Cwd": "/p"},
                    "volatile",
                    "diff --git a/p/a.ts",
                    None,
                ),
            ],
        },
        {
            "session": "s-1",
            "user": None,
            "assistant": "Continuing.",
            "event": None,
            "tools": [
                (
                    "grep_search",
                    {"path": "/p", "Query": "label"},
                    "read",
                    '{"File":"/p/a.ts"}',
                    None,
                )
            ],
        },
    ]
    assert trace.warnings[0] == "line 1: tool result without a pending call; skipped"
    assert trace.warnings[1] == "line 5: replace_file_content call has no result"
    assert trace.warnings[2].startswith("line 6: not JSON")
    assert trace.warnings[3] == "line 13: step without a type and step_index; skipped"
    assert len(trace.warnings) == 4


# --------------------------------------------------------------------------------------------
# aider
# --------------------------------------------------------------------------------------------

AIDER_TEXT = """
# aider chat started at 2025-01-01 10:00:00

> Aider v0.0.0
> Added notes.md to the chat.

#### Make the greeting friendlier.
#### Keep it short.

Here is the change.

greet.py
```python
<<<<<<< SEARCH
print("hi")
=======
print("hello friend")
>>>>>>> REPLACE
```

> Tokens: 1.0k sent, 100 received.
> Applied edit to greet.py
> Commit abc1234 feat: friendlier greeting

#### /clear

> All chat history cleared.

#### What does util.py do?

> util.py
> Add file to the chat? (Y)es/(N)o [Yes]: y

It prints things.

#### /run python greet.py

> hello friend

"""


def test_aider_mapping(tmp_path: Path) -> None:
    path = tmp_path / "project.aider.chat.history.md"
    path.write_text(AIDER_TEXT, encoding="utf-8")
    trace = import_transcript(path)
    assert trace.source == "aider"
    assert trace.name == "project.aider.chat.history"
    change = (
        'Here is the change.\n\ngreet.py\n```python\n<<<<<<< SEARCH\nprint("hi")\n=======\n'
        'print("hello friend")\n>>>>>>> REPLACE\n```'
    )
    assert shape(trace) == [
        {
            "session": "s-1",
            "user": None,
            "assistant": None,
            "event": None,
            "tools": [("add_file", {"path": "notes.md"}, "read", "", None)],
        },
        {
            "session": "s-1",
            "user": "Make the greeting friendlier.\nKeep it short.",
            "assistant": change,
            "event": None,
            "tools": [
                ("apply_edit", {"path": "greet.py"}, "write", "Applied edit to greet.py", None),
                (
                    "git_commit",
                    {"commit": "abc1234", "message": "feat: friendlier greeting"},
                    "write",
                    "Commit abc1234 feat: friendlier greeting",
                    None,
                ),
            ],
        },
        {"session": "s-1", "user": "/clear", "assistant": None, "event": "reset", "tools": []},
        {
            "session": "s-1",
            "user": "What does util.py do?",
            "assistant": "It prints things.",
            "event": None,
            "tools": [("add_file", {"path": "util.py"}, "read", "", None)],
        },
        {
            "session": "s-1",
            "user": "/run python greet.py",
            "assistant": None,
            "event": None,
            "tools": [("run", {"command": "python greet.py"}, "unknown", "hello friend", None)],
        },
    ]
    assert trace.warnings == []  # markdown has no malformed lines: anything else is prose


# --------------------------------------------------------------------------------------------
# Detection, errors, caps, rules
# --------------------------------------------------------------------------------------------

SYNTHETIC = {
    "claude-code": ("cc.jsonl", CLAUDE_LINES),
    "codex": ("rollout.jsonl", CODEX_LINES),
    "copilot": ("events.jsonl", COPILOT_LINES),
    "gemini-cli": ("stream.jsonl", GEMINI_LINES),
    "antigravity": ("steps.jsonl", ANTIGRAVITY_LINES),
}


@pytest.mark.parametrize("kind", sorted(SYNTHETIC))
def test_auto_detection_and_determinism(tmp_path: Path, kind: str) -> None:
    name, lines = SYNTHETIC[kind]
    path = write_jsonl(tmp_path / name, lines)
    assert detect_kind(path) == kind
    auto = import_transcript(path)
    assert auto.source == kind
    assert auto.model_dump_json() == import_transcript(path, kind=kind).model_dump_json()
    assert Trace.model_validate_json(auto.model_dump_json()) == auto


def test_aider_detected_by_content_without_md_suffix(tmp_path: Path) -> None:
    path = tmp_path / "history.txt"
    path.write_text(AIDER_TEXT.lstrip(), encoding="utf-8")
    assert detect_kind(path) == "aider"


def test_unknown_empty_and_missing_files(tmp_path: Path) -> None:
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"foo": 1}, {"bar": [2]}, "nope"])
    with pytest.raises(InvalidInput, match="cannot tell the transcript format"):
        import_transcript(unknown)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InvalidInput, match="is empty"):
        import_transcript(empty)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n \n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="is empty"):
        import_transcript(blank, kind="codex")
    with pytest.raises(InvalidInput, match="no transcript file"):
        import_transcript(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidInput, match="unknown transcript kind"):
        import_transcript(unknown, kind="cursor")
    no_turns = write_jsonl(
        tmp_path / "snap.jsonl", [{"type": "file-history-snapshot", "snapshot": {}}, "{"]
    )
    with pytest.raises(InvalidInput, match="no usable turns"):
        import_transcript(no_turns)
    with pytest.raises(InvalidInput, match="no usable turns"):
        import_transcript(write_jsonl(tmp_path / "cc.jsonl", CLAUDE_LINES), kind="codex")


def test_every_malformed_line_is_reported_never_raised(tmp_path: Path) -> None:
    lines: list[Any] = [cc("user", "Hello.")]
    lines += ["{", "[1, 2]", "null", '"text"', {"type": "assistant", "message": {"content": 7}}]
    lines += [
        {"type": "assistant", "message": {"content": ["x", {"type": "tool_use", "input": {}}]}}
    ]
    trace = import_transcript(write_jsonl(tmp_path / "bad.jsonl", lines), kind="claude-code")
    assert [turn.user for turn in trace.turns] == ["Hello."]
    assert [w.split(":")[0] for w in trace.warnings] == [
        "line 2",
        "line 3",
        "line 4",
        "line 5",
        "line 6",
        "line 7",
        "line 7",
    ]


def test_output_and_text_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importers, "OUTPUT_CAP", 10)
    lines = [
        cc("user", "x" * (importers.TEXT_CAP + 50)),
        cc("assistant", [tool_use("toolu_1", "Read", {"file_path": "/big.log"})]),
        cc("user", [tool_result("toolu_1", "y" * 25)]),
    ]
    trace = import_transcript(write_jsonl(tmp_path / "big.jsonl", lines))
    step = trace.turns[0].tools[0]
    assert step.output == "y" * 10
    assert trace.warnings == ["line 3: Read output of 25 characters cut to 10"]
    user = trace.turns[0].user
    assert user is not None and user.startswith("x" * importers.TEXT_CAP)
    assert user.endswith("[truncated]")


@pytest.mark.parametrize(
    ("command", "read_only", "paths"),
    [
        ("ls -la", True, []),
        ("cat a.txt | head -n 5", True, ["a.txt"]),
        ("sed -n '1,20p' src/x.py", True, ["src/x.py"]),
        ("nl -ba src/a.rs | sed -n '1,40p'", True, ["src/a.rs"]),
        ("git status && git diff HEAD~1 2>/dev/null", True, []),
        ("git branch -a", True, []),
        ("rg -n TODO src", True, []),
        ('Get-Content -Path "C:\\w\\a.ts" | Select-Object -First 20', True, ["C:\\w\\a.ts"]),
        ("echo hi > out.txt", False, []),
        ("sed -i 's/a/b/' x", False, []),
        ("git commit -m x", False, []),
        ("git branch feature", False, []),
        ("find . -name '*.pyc' -delete", False, []),
        ("npm test", False, []),
        ("python -c 'print(1)'", False, []),
        ("echo $(rm x)", False, []),
        ("cat <<'EOF' > notes.txt\nit's here\nEOF", False, []),
        ("echo 'unbalanced", False, []),
    ],
)
def test_shell_rule(command: str, read_only: bool, paths: list[str]) -> None:
    assert shell_analysis(command) == (read_only, paths)


def test_tool_effects_and_path_normalisation() -> None:
    assert classify("Read", {"file_path": "/a", "offset": 1}) == (
        "read",
        {"path": "/a", "offset": 1},
    )
    assert classify("NotebookEdit", {"notebook_path": "/n.ipynb"}) == (
        "write",
        {"path": "/n.ipynb"},
    )
    for name in (
        "Edit",
        "MultiEdit",
        "Write",
        "TodoWrite",
        "TaskUpdate",
        "replace_file_content",
    ):
        assert classify(name, {})[0] == "write", name
    # A sub-agent may do anything; fetched pages change by themselves.
    assert classify("Task", {})[0] == "unknown"
    assert classify("WebFetch", {})[0] == "volatile"
    for name in (
        "Read",
        "Grep",
        "Glob",
        "LS",
        "view",
        "read_file",
        "mcp__docs__get_page",
    ):
        assert classify(name, {})[0] == "read", name
    assert classify("Bash", {"command": "make"})[0] == "unknown"
    assert classify("Bash", {})[0] == "unknown"  # a shell call with no command: assume the worst
    assert classify("shell", {"command": ["bash", "-lc", "cat README.md"]}) == (
        "read",
        {"command": ["bash", "-lc", "cat README.md"], "path": "README.md"},
    )
    assert patch_paths("*** Update File: a.py\n*** Move to: b.py\n*** Delete File: c.py") == [
        "a.py",
        "b.py",
        "c.py",
    ]


def test_kinds_are_all_covered() -> None:
    assert set(KINDS) == {*SYNTHETIC, "aider"}


# --------------------------------------------------------------------------------------------
# The shared real traces (read in place; skipped when ../shared is absent)
# --------------------------------------------------------------------------------------------

# Facts stated in SOURCES.md (counts, not content).
KNOWN_COMPACTIONS = {
    "pv-case-review-claude-code.jsonl": 3,
    "will-it-rain-claude-code.jsonl": 1,
    "cutesticky-claude-code.jsonl": 1,
    "posthog-impact-claude-code.jsonl": 1,
    "sentinel-claude-engram.jsonl": 7,
}
EXPECTED_KIND = {
    "claude-code.jsonl": "claude-code",
    "claude-engram.jsonl": "claude-code",
    "codex.jsonl": "codex",
    "copilot.jsonl": "copilot",
    "antigravity.jsonl": "antigravity",
    "gemini-cli.jsonl": "gemini-cli",
    ".aider.chat.history.md": "aider",
}


def shared_files() -> list[Path]:
    if not SHARED_TRACES.is_dir():
        return []
    return sorted(p for p in SHARED_TRACES.iterdir() if p.is_file() and p.name != "SOURCES.md")


_CACHE: dict[Path, Trace] = {}


def imported(path: Path) -> Trace:
    if path not in _CACHE:
        _CACHE[path] = import_transcript(path)
    return _CACHE[path]


@pytest.fixture
def traces_dir() -> Path:
    if not SHARED_TRACES.is_dir() or not shared_files():
        pytest.skip(f"shared traces not present at {SHARED_TRACES}")
    return SHARED_TRACES


def test_shared_traces_import(traces_dir: Path) -> None:
    for path in shared_files():
        trace = imported(path)
        expected = next(kind for end, kind in EXPECTED_KIND.items() if path.name.endswith(end))
        assert trace.source == expected, path.name
        steps = [step for turn in trace.turns for step in turn.tools]
        assert trace.turns, path.name
        assert steps, path.name  # every shared format records tool calls (aider: edits, commits)
        assert all(step.name.strip() for step in steps), path.name
        assert any(turn.user for turn in trace.turns), path.name
        assert all(len(step.output) <= importers.OUTPUT_CAP for step in steps), path.name
        compactions = sum(turn.event == "compaction" for turn in trace.turns)
        if path.name in KNOWN_COMPACTIONS:
            assert compactions == KNOWN_COMPACTIONS[path.name], path.name
        if path.name == "kyb-platform-antigravity.jsonl":
            assert any(w.startswith("line 101: not JSON") for w in trace.warnings)


def test_shared_traces_are_deterministic(traces_dir: Path) -> None:
    for path in shared_files():
        again = import_transcript(path)
        assert again.model_dump_json() == imported(path).model_dump_json(), path.name


def test_shared_traces_summary(traces_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = (
        f"{'file':44} {'kind':12} {'turns':>5} {'user':>5} {'tools':>5} {'reads':>5} "
        f"{'writes':>6} {'compact':>7} {'reset':>5} {'warn':>4}"
    )
    rows = [header]
    for path in shared_files():
        trace = imported(path)
        steps = [step for turn in trace.turns for step in turn.tools]
        reads = sum(step.effect == "read" for step in steps)
        rows.append(
            f"{path.name:44} {trace.source:12} {len(trace.turns):5} "
            f"{sum(t.user is not None for t in trace.turns):5} {len(steps):5} {reads:5} "
            f"{len(steps) - reads:6} {sum(t.event == 'compaction' for t in trace.turns):7} "
            f"{sum(t.event == 'reset' for t in trace.turns):5} {len(trace.warnings):4}"
        )
    with capsys.disabled():
        print("\n" + "\n".join(rows))
    assert len(rows) == len(shared_files()) + 1


def test_byte_order_mark_and_crlf_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    body = "\r\n".join(json.dumps(line) for line in CLAUDE_LINES if not isinstance(line, str))
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    trace = import_transcript(path, split="prompt")
    assert shape(trace) == CLAUDE_TURNS
    assert trace.warnings == ["line 16: user record without a message content; skipped"]


def test_a_read_that_failed_is_never_served_later(tmp_path: Path) -> None:
    """A read Claude Code cancelled (a sibling call errored) returned an error, not the file:
    replay must not serve that error for the next read of the file."""
    error = "<tool_use_error>Sibling tool call errored</tool_use_error>"
    lines = [
        cc("user", "Look at Cargo.toml"),
        cc("assistant", [tool_use("t1", "Read", {"file_path": "/r/Cargo.toml"})]),
        cc("user", [tool_result("t1", error)]),
        cc("assistant", [tool_use("t2", "Read", {"file_path": "/r/Cargo.toml"})]),
        cc("user", [tool_result("t2", "[workspace]")]),
    ]
    trace = import_transcript(write_jsonl(tmp_path / "failed.jsonl", lines))
    steps = [(s.effect, s.output) for turn in trace.turns for s in turn.tools]
    assert steps == [("volatile", error), ("read", "[workspace]")]
