"""Assemblies rendered as provider conversations (issue 15, item 1).

Covers: ``Assembly.to_openai_chat()``, ``to_openai_responses()`` and ``to_anthropic()`` on a
recorded session, exactly; a tool call followed by exactly its result (a tool message, a linked
``tool_call`` result, the pointer text of an evicted result, the explicit interrupted result); a
result in the prompt bringing back its call; a tool message without a recorded call; Anthropic's
alternation; the budget holding for each rendered form; and a Hypothesis property over random
sessions (crashes, compactions, deletes, tight budgets) checking every rendering against the
providers' own typed request models and a validator of the pairing and alternation rules.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

import clawvm_store as cvm
from clawvm_store.render import (
    CONTINUES,
    INTERRUPTED,
    Block,
    Partners,
    build_conversation,
    rendered_tokens,
    to_anthropic,
)

anthropic_params = pytest.importorskip("anthropic.types.message_create_params")
openai_chat_params = pytest.importorskip("openai.types.chat.completion_create_params")
openai_responses_params = pytest.importorskip("openai.types.responses.response_create_params")

CHAT = TypeAdapter(openai_chat_params.CompletionCreateParamsNonStreaming)
RESPONSES = TypeAdapter(openai_responses_params.ResponseCreateParamsNonStreaming)
ANTHROPIC = TypeAdapter(anthropic_params.MessageCreateParamsNonStreaming)
FORMS = ("openai_chat", "openai_responses", "anthropic")


def force(value: Any) -> Any:
    """Materialize what pydantic validates lazily (``Iterable`` fields become iterators)."""
    if isinstance(value, dict):
        return {key: force(item) for key, item in value.items()}
    if isinstance(value, list | tuple) or hasattr(value, "__next__"):
        return [force(item) for item in value]
    return value


# -- validators of the providers' pairing and alternation rules -------------------------------


def check_chat(messages: list[dict[str, Any]]) -> None:
    """OpenAI chat: system first only; each assistant's tool calls answered, in order, by the
    tool messages right after it; no tool message anywhere else."""
    force(CHAT.validate_python({"model": "gpt-4o", "messages": messages}))
    assert all(m["role"] != "system" for m in messages[1:])
    i = 0
    while i < len(messages):
        message = messages[i]
        assert message["role"] != "tool", f"orphan tool message at {i}"
        if message["role"] == "assistant":
            assert message.get("content") or message.get("tool_calls")
            ids = [call["id"] for call in message.get("tool_calls", [])]
            answers = [m["tool_call_id"] for m in messages[i + 1 : i + 1 + len(ids)]]
            assert answers == ids, f"calls {ids} answered by {answers}"
            assert all(m["role"] == "tool" for m in messages[i + 1 : i + 1 + len(ids)])
            i += len(ids)
        elif message["role"] == "user":
            assert message["content"]
        i += 1


def check_responses(items: list[dict[str, Any]]) -> None:
    """Responses: every function_call is followed by its one output before the next message."""
    force(RESPONSES.validate_python({"model": "gpt-4o", "input": items}))
    open_calls: list[str] = []
    answered: set[str] = set()
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call":
            open_calls.append(item["call_id"])
        elif kind == "function_call_output":
            assert open_calls and open_calls[0] == item["call_id"], "output without its call"
            answered.add(open_calls.pop(0))
        else:
            assert not open_calls, f"calls {open_calls} left unanswered"
            assert item["content"]
    assert not open_calls, f"calls {open_calls} left unanswered"


def check_anthropic(payload: dict[str, Any]) -> None:
    """Anthropic: user first, roles alternate, each tool_use answered by a tool_result in the
    very next (user) message, tool results first in it, no result without its tool_use."""
    force(ANTHROPIC.validate_python({"model": "claude-sonnet-4-5", "max_tokens": 1024, **payload}))
    messages = payload["messages"]
    if not messages:
        return
    assert messages[0]["role"] == "user"
    pending: list[str] = []
    for i, message in enumerate(messages):
        if i:
            assert message["role"] != messages[i - 1]["role"], f"roles repeat at {i}"
        blocks = message["content"]
        assert blocks, f"empty message at {i}"
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        assert results == pending, f"tool_use {pending} answered by {results} at {i}"
        if results:
            kinds = [b["type"] for b in blocks]
            assert kinds[: len(results)] == ["tool_result"] * len(results)
        pending = [b["id"] for b in blocks if b["type"] == "tool_use"]
        assert all(b["text"] for b in blocks if b["type"] == "text")
    assert not pending or messages[-1]["role"] == "assistant"


def check_all(asm: cvm.Assembly) -> None:
    check_chat(asm.to_openai_chat())
    check_responses(asm.to_openai_responses())
    anthropic = asm.to_anthropic()
    check_anthropic(anthropic)


# -- a recorded session, rendered exactly -----------------------------------------------------


def conversation(sess: cvm.Session) -> None:
    sess.stage("bootstrap/agent", type=cvm.PageType.BOOTSTRAP, content="You are a coder.")
    sess.append_message("user", "What does a.py print?")
    sess.append_message(
        "assistant",
        "Let me read it.",
        tool_calls=[{"id": "c1", "name": "read_file", "arguments": {"path": "a.py"}}],
    )
    sess.append_message("tool", "print(42)", tool_call_id="c1")
    sess.append_message("assistant", "It prints 42.")
    sess.append_message("user", "Thanks!")
    sess.end_turn()


def test_a_session_renders_exactly_for_each_provider(tmp_path: Path) -> None:
    with cvm.Store.open(tmp_path / "r.db") as store:
        sess = store.session("s", project="p")
        conversation(sess)
        asm = sess.assemble(4000)
        system = "### bootstrap/agent\nYou are a coder."
        args = '{"path": "a.py"}'
        assert asm.to_openai_chat() == [
            {"role": "system", "content": system},
            {"role": "user", "content": "What does a.py print?"},
            {
                "role": "assistant",
                "content": "Let me read it.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": args},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "print(42)"},
            {"role": "assistant", "content": "It prints 42."},
            {"role": "user", "content": "Thanks!"},
        ]
        assert asm.to_openai_responses() == [
            {"role": "system", "content": system},
            {"role": "user", "content": "What does a.py print?"},
            {"role": "assistant", "content": "Let me read it."},
            {"type": "function_call", "call_id": "c1", "name": "read_file", "arguments": args},
            {"type": "function_call_output", "call_id": "c1", "output": "print(42)"},
            {"role": "assistant", "content": "It prints 42."},
            {"role": "user", "content": "Thanks!"},
        ]
        # Breakpoints: the stable region ends with the bootstrap page (which is the whole
        # system part here), and the conversation's last block.
        cached = {"type": "ephemeral"}
        assert asm.to_anthropic() == {
            "system": [{"type": "text", "text": system, "cache_control": cached}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What does a.py print?"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Let me read it."},
                        {
                            "type": "tool_use",
                            "id": "c1",
                            "name": "read_file",
                            "input": {"path": "a.py"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "c1", "content": "print(42)"}
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "It prints 42."}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Thanks!", "cache_control": cached}],
                },
            ],
        }
        plain = asm.to_anthropic(cache_control=False)
        assert "cache_control" not in json.dumps(plain)
        assert plain["system"] == [{"type": "text", "text": system}]
        check_all(asm)


def test_a_linked_tool_call_result_answers_the_call(tmp_path: Path) -> None:
    with cvm.Store.open(tmp_path / "r.db") as store:
        sess = store.session("s", project="p")
        sess.append_message("user", "Read a.py")
        sess.append_message(
            "assistant", None, tool_calls=[{"id": "c9", "name": "read_file", "arguments": "{}"}]
        )
        result = sess.tool_call("read_file", {"path": "a.py"}, lambda **_: "A = 1", call_id="c9")
        sess.end_turn()
        chat = sess.assemble(4000).to_openai_chat()
        assert chat[-1] == {"role": "tool", "tool_call_id": "c9", "content": "A = 1"}
        # The evidence page answered the call: it is not repeated in the system part.
        assert all(result.key not in m["content"] for m in chat if m["role"] == "system")


def test_a_call_with_no_result_gets_the_explicit_interrupted_result(tmp_path: Path) -> None:
    with cvm.Store.open(tmp_path / "r.db") as store:
        sess = store.session("s", project="p")
        sess.append_message("user", "Deploy")
        sess.append_message(
            "assistant", None, tool_calls=[{"id": "d1", "name": "deploy", "arguments": "{}"}]
        )
        sess.end_turn()
        asm = sess.assemble(4000)
        text = INTERRUPTED.format(id="d1", name="deploy")
        assert asm.to_openai_chat()[-1] == {"role": "tool", "tool_call_id": "d1", "content": text}
        assert asm.to_openai_responses()[-1] == {
            "type": "function_call_output",
            "call_id": "d1",
            "output": text,
        }
        check_all(asm)


def _crash_mid_tool(path: str) -> None:
    """Child: record a call, start its tool, die inside it (the kill -9 of a real crash)."""
    with cvm.Store.open(path) as store:
        sess = store.session("s", project="p")
        sess.append_message("user", "Deploy")
        sess.append_message(
            "assistant", None, tool_calls=[{"id": "d1", "name": "deploy", "arguments": "{}"}]
        )
        sess.end_turn()
        sess.tool_call(
            "deploy", {"to": "prod"}, lambda **_: os._exit(9), effect="write", call_id="d1"
        )


def test_after_a_crash_inside_a_tool_the_call_still_has_a_result(tmp_path: Path) -> None:
    path = str(tmp_path / "crash.db")
    child = multiprocessing.get_context("spawn").Process(target=_crash_mid_tool, args=(path,))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    with cvm.Store.open(path) as store:  # recovery closes the call as interrupted
        sess = store.session("s", project="p")
        assert [r.state for r in sess.tool_history()] == ["interrupted"]
        asm = sess.assemble(4000)
        last = asm.to_openai_chat()[-1]
        assert last["role"] == "tool" and last["tool_call_id"] == "d1"
        assert "interrupted" in last["content"]
        check_all(asm)


def test_a_degraded_result_stays_paired_and_resolvable(tmp_path: Path) -> None:
    big = "\n".join(f"line {i}: " + "payload " * 12 for i in range(300))
    with cvm.Store.open(tmp_path / "r.db") as store:
        sess = store.session("s", project="p")
        sess.append_message("user", "Read big.txt")
        sess.append_message(
            "assistant", None, tool_calls=[{"id": "c1", "name": "read_file", "arguments": "{}"}]
        )
        staged = sess.append_message("tool", big, tool_call_id="c1")
        sess.append_message("assistant", "It is long.")
        sess.end_turn()
        for form in FORMS:
            asm = sess.assemble(300, form=form, demand=["conversation/m-00000002"])
            assert asm.feasible
            assert asm.tokens == asm.rendered_tokens(form, store.counter) <= 300
            held = next(item for item in asm.items if item.key == staged.key)
            assert held.fidelity is not cvm.Fidelity.FULL
            result = next(m for m in asm.to_openai_chat() if m["role"] == "tool")
            # The result at the fidelity the budget allowed, naming the page that resolves it.
            assert result == {"role": "tool", "tool_call_id": "c1", "content": held.text}
            assert staged.key in held.text
            assert store.resolve(staged.key, project="p", session="s").content == big
            check_all(asm)


def test_an_evicted_result_is_its_pointer_text_inside_the_result() -> None:
    pointer = "[ptr conversation/m-00000003@1 conversation 5100tok]"
    partners = Partners(
        result=lambda call_id, after: pointer if (call_id, after) == ("c1", 2) else None,
        caller=lambda _id, _seq: None,
    )
    calls = [{"id": "c1", "name": "read_file", "arguments": "{}"}]
    blocks = [message(1, "user", "Read big.txt"), message(2, "assistant", "", tool_calls=calls)]
    got = build_conversation("", blocks, partners)
    assert [(t.role, t.content, t.tool_call_id) for t in got.turns] == [
        ("user", "Read big.txt", None),
        ("assistant", "", None),
        ("tool", pointer, "c1"),
    ]


def test_an_evicted_result_in_a_long_session_keeps_the_pair(tmp_path: Path) -> None:
    with cvm.Store.open(tmp_path / "r.db") as store:
        sess = store.session("s", project="p")
        for turn in range(30):
            sess.append_message("user", f"question {turn} " * 20)
            call = {"id": f"c{turn}", "name": "read_file", "arguments": {"path": f"f{turn}"}}
            sess.append_message("assistant", None, tool_calls=[call])
            sess.append_message("tool", f"output {turn} " * 200, tool_call_id=f"c{turn}")
            sess.append_message("assistant", f"answer {turn} " * 20)
            sess.end_turn()
        # The oldest call demanded: its result cannot all fit beside it.
        asm = sess.assemble(400, form="openai_chat", demand=["conversation/m-00000002"])
        assert asm.feasible and asm.tokens <= 400
        chat = asm.to_openai_chat()
        first = next(i for i, m in enumerate(chat) if m.get("tool_calls"))
        assert chat[first]["tool_calls"][0]["id"] == "c0"
        assert chat[first + 1]["tool_call_id"] == "c0"
        result_key = "conversation/m-00000003"
        if result_key not in {item.key for item in asm.items}:
            pointer = store.page(
                result_key, project="p", session="s", fidelity=cvm.Fidelity.POINTER
            )
            assert chat[first + 1]["content"] == pointer.content
        check_all(asm)


# -- the conversation builder on its own --------------------------------------------------------


def message(seq: int, role: str, content: str, **envelope: Any) -> Block:
    key = f"conversation/m-{seq:08d}"
    full = {"role": role, "tool_calls": [], "tool_call_id": None, "name": None, **envelope}
    return Block(key, f"### {key}\n{content}", content, content, full)


def test_a_result_in_the_prompt_brings_back_its_evicted_call() -> None:
    calls = [{"id": "c1", "name": "grep", "arguments": '{"pattern": "x"}'}]
    caller = {"role": "assistant", "tool_calls": calls, "tool_call_id": None, "name": None}
    partners = Partners(
        result=lambda _id, _seq: None,
        caller=lambda call_id, before: (3, caller) if (call_id, before) == ("c1", 4) else None,
    )
    blocks = [message(4, "tool", "a.py:1: x", tool_call_id="c1"), message(5, "user", "ok")]
    got = build_conversation("", blocks, partners)
    assert [(t.role, t.content, t.tool_call_id) for t in got.turns] == [
        ("assistant", "", None),
        ("tool", "a.py:1: x", "c1"),
        ("user", "ok", None),
    ]
    assert got.turns[0].tool_calls[0].arguments == '{"pattern": "x"}'
    payload = to_anthropic(got)
    assert payload["messages"][0] == {
        "role": "user",
        "content": [{"type": "text", "text": CONTINUES}],
    }
    check_anthropic(payload)


def test_a_tool_message_whose_call_was_never_recorded_is_user_text() -> None:
    got = build_conversation("sys", [message(1, "tool", "42", tool_call_id="gone")])
    assert got.system == ("sys",)
    assert [(t.role, t.content) for t in got.turns] == [("user", "[result of tool call gone]\n42")]


def test_anthropic_merges_consecutive_turns_and_keeps_results_first() -> None:
    calls = [{"id": "c.1", "name": "ls", "arguments": "not json"}]
    blocks = [
        message(1, "user", "one"),
        message(2, "user", "two"),
        message(3, "assistant", "", tool_calls=calls),
        message(4, "tool", "a b", tool_call_id="c.1"),
        message(5, "user", "three"),
    ]
    payload = to_anthropic(build_conversation("", blocks), cache_control=False)
    assert payload["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "c_1", "name": "ls", "input": {"arguments": "not json"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c_1", "content": "a b"},
                {"type": "text", "text": "three"},
            ],
        },
    ]
    check_anthropic(payload)


def test_the_rendered_count_is_each_message_as_json(tmp_path: Path) -> None:
    with cvm.Store.open(tmp_path / "r.db") as store:
        sess = store.session("s", project="p")
        conversation(sess)
        asm = sess.assemble(4000, form="openai_chat")
        expected = sum(
            store.counter.count(json.dumps(m, ensure_ascii=False, separators=(",", ":")))
            for m in asm.to_openai_chat()
        )
        assert (
            asm.tokens
            == expected
            == rendered_tokens(asm.conversation, "openai_chat", store.counter)
        )
        with pytest.raises(cvm.ClawVMError, match="form must be one of"):
            sess.assemble(4000, form="xml")


# -- the property --------------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("user"), st.integers(1, 60)),
        st.tuples(st.just("call"), st.integers(1, 3), st.booleans()),
        st.tuples(st.just("answer"), st.integers(1, 400), st.booleans()),
        st.tuples(st.just("say"), st.integers(1, 80)),
        st.tuples(st.just("pop")),
        st.tuples(st.just("end_turn")),
        st.tuples(st.just("compact")),
        st.tuples(st.just("crash")),
    ),
    min_size=1,
    max_size=24,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, budget=st.integers(60, 900), form=st.sampled_from(FORMS))
def test_every_rendering_is_valid_for_its_provider(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[Any, ...]], budget: int, form: str
) -> None:
    path = tmp_path_factory.mktemp("prop") / "p.db"
    store = cvm.Store.open(path)
    sess = store.session("s", project="p")
    sess.stage("constraint/no-push", type=cvm.PageType.CONSTRAINT, content="Never push to main.")
    unanswered: list[str] = []  # call ids in order, the reused id "call_0" among them
    made = 0
    try:
        for op in ops:
            kind = op[0]
            if kind == "user":
                sess.append_message("user", "question " * op[1])
            elif kind == "call":
                ids = [f"call_{(made + i) % 4}" for i in range(op[1])]  # ids are reused
                made += op[1]
                calls = [{"id": i, "name": "read_file", "arguments": {"path": i}} for i in ids]
                sess.append_message("assistant", "checking" if op[2] else None, tool_calls=calls)
                unanswered.extend(ids)
            elif kind == "answer" and unanswered:
                call_id = unanswered.pop(0)
                if op[2]:
                    sess.append_message("tool", "output " * op[1], tool_call_id=call_id)
                else:
                    output = "out " * op[1]
                    args = {"path": call_id, "n": op[1]}
                    sess.tool_call(
                        "read_file", args, lambda _out=output, **_: _out, call_id=call_id
                    )
            elif kind == "say":
                sess.append_message("assistant", "answer " * op[1])
            elif kind == "pop":
                live = sess.messages()
                if live:
                    sess.delete_message(live[-1].key)
            elif kind == "end_turn":
                sess.end_turn()
            elif kind == "compact":
                sess.compact()
            elif kind == "crash":
                # The owner dies: no boundary runs; staged entries stay in the journal and the
                # reopened store recovers them (the journal model's crash, in one process).
                store.close()
                store = cvm.Store.open(path)
                sess = store.session("s", project="p")
        sess.end_turn()
        asm = sess.assemble(budget, form=form, on_insufficient="report")
        if asm.feasible:
            assert asm.tokens == asm.rendered_tokens(form, store.counter) <= budget  # type: ignore[arg-type]
        check_all(asm)
    finally:
        store.close()
