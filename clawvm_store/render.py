"""An assembly as a conversation a provider accepts: OpenAI chat, OpenAI Responses, Anthropic.

The assembler hands this module its chosen pages in render order as :class:`Block` s, and a
:class:`Partners` lookup over the whole page table; :func:`build_conversation` turns them into a
:class:`Conversation`, the provider-neutral form every ``Assembly.to_*`` method formats:

* the **system part** is the fixed region, then every page that is not a message (bootstrap,
  constraints, plan, preferences, evidence not linked to a call, conversation spans written
  without the messages API), then ``system`` messages, each block as the text form renders it;
* the **messages** are the message pages in the prompt, in the order they were recorded;
* a **tool call and its results are one unit**: an assistant message that calls tools is
  followed, call by call, by exactly that call's result. The result is the ``tool`` message
  answering the call when it is in the prompt, else an evidence page linked to the call (by
  ``tool_call(call_id=...)``) when that is in the prompt, else **the pointer text** of whichever
  of the two exists (the pair stays valid and the agent can resolve it), else the explicit
  :data:`INTERRUPTED` result (the call has no recorded result: it was interrupted, or its
  result was never recorded). A result in the prompt whose calling message is not brings that
  call back (the call's name and arguments, without the message's text), so a result is never
  orphaned either; a ``tool`` message whose call was never recorded is shown as user text.

How the budget holds for a rendered form (``Session.assemble(..., form=...)``): every message
(and, for Anthropic, every system block) is counted as the compact JSON the provider's API
receives, role, keys, ids and arguments included, each one tokenized on its own; the sum is
what the assembler keeps under the budget, undoing upgrades until it fits. Chat templates
replace that JSON with a few special tokens per message, so the count is a close upper bound
of what the provider bills, never an underestimate of the content. Anthropic's ``cache_control``
breakpoints (:func:`to_anthropic`) are part of what is sent, so they are counted too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .tokens import TokenCounter

Form = Literal["text", "openai_chat", "openai_responses", "anthropic"]
FORMS: tuple[Form, ...] = ("text", "openai_chat", "openai_responses", "anthropic")

SEPARATOR = "\n\n"
# The result a call gets when none was recorded (DESIGN section 2: an explicit interrupted result).
INTERRUPTED = "[interrupted: call {id} ({name}) has no recorded result; it may not have run]"
# What the first Anthropic message says when the prompt starts with an assistant message.
CONTINUES = "[earlier conversation omitted]"

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class ToolCall:
    """One call an assistant message makes: the provider's id, the tool, its JSON arguments."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Turn:
    """One message of a rendered conversation, provider-neutral.

    ``key`` is the page it came from (``None`` for an interrupted result, which no page holds);
    ``role`` is ``user``, ``assistant`` or ``tool``; a ``tool`` turn answers ``tool_call_id``.
    """

    role: str
    content: str
    key: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Conversation:
    """An assembly as a system part and messages, every tool call paired with its result.

    The first ``stable`` entries of ``system`` are its stable region (the fixed region,
    bootstrap and constraint pages): where the first cache breakpoint goes.
    """

    system: tuple[str, ...]
    turns: tuple[Turn, ...]
    stable: int = 0


@dataclass(frozen=True)
class Block:
    """One chosen page as the renderer needs it.

    ``rendered`` is the block as the text form shows it (header and text), ``text`` the text
    alone at the chosen fidelity, ``content`` the message's own content when the page is at full
    fidelity (else ``None``); ``envelope`` is a message page's provider envelope, ``answers``
    the provider call ids an evidence page is the result of.
    """

    key: str
    rendered: str
    text: str
    content: str | None
    envelope: Mapping[str, Any] | None = None
    answers: tuple[str, ...] = ()
    stable: bool = False  # a bootstrap or constraint page: the system part's stable region


@dataclass(frozen=True)
class Partners:
    """Lookups over the whole page table, for the halves of a unit that are not in the prompt.

    ``result(call_id, after_seq)`` is the pointer text of that call's result page (the first
    ``tool`` message after ``after_seq`` answering it, else the evidence page linked to it), or
    ``None``; ``caller(call_id, before_seq)`` is ``(seq, envelope)`` of the last assistant
    message before ``before_seq`` that made the call, or ``None``.
    """

    result: Callable[[str, int], str | None]
    caller: Callable[[str, int], tuple[int, Mapping[str, Any]] | None]


NO_PARTNERS = Partners(result=lambda _id, _seq: None, caller=lambda _id, _seq: None)


def message_seq(key: str) -> int:
    """The sequence number of a message page key (``conversation/m-00000042`` -> 42)."""
    return int(key.rsplit("-", 1)[1])


def _calls(envelope: Mapping[str, Any]) -> tuple[ToolCall, ...]:
    return tuple(
        ToolCall(str(call["id"]), str(call["name"]), str(call.get("arguments") or ""))
        for call in envelope.get("tool_calls") or ()
    )


def build_conversation(
    fixed: str, blocks: Sequence[Block], partners: Partners = NO_PARTNERS
) -> Conversation:
    """The conversation of a prompt (see the module docstring for the rules)."""
    system: list[str] = [fixed] if fixed else []
    stable = len(system)
    messages: dict[int, Block] = {}
    linked: dict[str, Block] = {}
    system_messages: list[str] = []
    for block in blocks:
        envelope = block.envelope
        if envelope is None:
            if block.answers:
                for call_id in block.answers:
                    linked.setdefault(call_id, block)
            else:
                system.append(block.rendered)
                if block.stable and stable == len(system) - 1:
                    stable += 1
        elif envelope.get("role") == "system":
            system_messages.append(block.content if block.content is not None else block.text)
        else:
            messages[message_seq(block.key)] = block
    # Callers (assistant messages with calls) in the prompt, and those a result in the prompt
    # brings back: seq -> (envelope, block or None when only the calls come back).
    callers: dict[int, tuple[Mapping[str, Any], Block | None]] = {}
    made: set[str] = set()
    for seq, block in messages.items():
        assert block.envelope is not None
        if block.envelope.get("tool_calls"):
            callers[seq] = (block.envelope, block)
            made.update(str(call["id"]) for call in block.envelope["tool_calls"])
    for seq, block in sorted(messages.items()):
        assert block.envelope is not None
        answered = block.envelope.get("tool_call_id")
        if block.envelope.get("role") == "tool" and answered and answered not in made:
            found = partners.caller(str(answered), seq)
            if found is not None and found[0] not in callers:
                callers[found[0]] = (found[1], None)
                made.update(str(call["id"]) for call in found[1].get("tool_calls") or ())
    answering: dict[str, list[int]] = {}  # call id -> seqs of the tool messages answering it
    for seq in sorted(messages):
        envelope = messages[seq].envelope
        assert envelope is not None
        if envelope.get("role") == "tool" and envelope.get("tool_call_id"):
            answering.setdefault(str(envelope["tool_call_id"]), []).append(seq)
    used: set[int] = set()
    used_linked: set[str] = set()  # keys of the linked pages that answered a call
    turns: list[Turn] = []
    for seq in sorted(set(messages) | set(callers)):
        if seq in used:
            continue
        if seq in callers:
            envelope, caller_block = callers[seq]
            calls = _calls(envelope)
            text = "" if caller_block is None else _text(caller_block)
            name = envelope.get("name")
            turns.append(
                Turn(
                    "assistant", text, caller_block.key if caller_block else None, calls, None, name
                )
            )
            for call in calls:
                turns.append(
                    _result(call, seq, messages, answering, used, linked, used_linked, partners)
                )
            continue
        block = messages[seq]
        assert block.envelope is not None
        role = str(block.envelope.get("role"))
        text = _text(block)
        if role == "tool":
            orphan = block.envelope.get("tool_call_id")
            # Its call was never recorded: the result is shown, as what it is, in a user turn.
            turns.append(Turn("user", f"[result of tool call {orphan}]\n{text}", block.key))
        elif text:
            turns.append(Turn(role, text, block.key, name=block.envelope.get("name")))
    # A linked result that answered no call here (its call is not in the prompt, or a tool
    # message answered it) is evidence like any other.
    for block in {block.key: block for block in linked.values()}.values():
        if block.key not in used_linked:
            system.append(block.rendered)
    return Conversation(tuple(system + system_messages), tuple(turns), stable)


def _text(block: Block) -> str:
    return block.content if block.content is not None else block.text


def _result(
    call: ToolCall,
    after: int,
    messages: Mapping[int, Block],
    answering: Mapping[str, list[int]],
    used: set[int],
    linked: Mapping[str, Block],
    used_linked: set[str],
    partners: Partners,
) -> Turn:
    """The one result of ``call`` made by the message at ``after`` (see the module docstring)."""
    for seq in answering.get(call.id, ()):
        if seq > after and seq not in used:
            used.add(seq)
            block = messages[seq]
            return Turn("tool", _text(block) or "(no output)", block.key, tool_call_id=call.id)
    evidence = linked.get(call.id)
    if evidence is not None:
        used_linked.add(evidence.key)
        return Turn("tool", evidence.text, evidence.key, tool_call_id=call.id)
    pointer = partners.result(call.id, after)
    if pointer is not None:
        return Turn("tool", pointer, None, tool_call_id=call.id)
    text = INTERRUPTED.format(id=call.id, name=call.name)
    return Turn("tool", text, None, tool_call_id=call.id)


# -- the three provider forms ---------------------------------------------------------------------


def _name(name: Any) -> dict[str, str]:
    """A ``name`` field where the provider accepts one (its pattern), else nothing."""
    return {"name": name} if isinstance(name, str) and _NAME.match(name) else {}


def to_openai_chat(conversation: Conversation) -> list[dict[str, Any]]:
    """Chat Completions ``messages``: one system message, then user, assistant and tool ones."""
    out: list[dict[str, Any]] = []
    if conversation.system:
        out.append({"role": "system", "content": SEPARATOR.join(conversation.system)})
    for turn in conversation.turns:
        if turn.role == "tool":
            out.append({"role": "tool", "tool_call_id": turn.tool_call_id, "content": turn.content})
        elif turn.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": turn.content or None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                        for call in turn.tool_calls
                    ],
                    **_name(turn.name),
                }
            )
        else:
            out.append({"role": turn.role, "content": turn.content, **_name(turn.name)})
    return out


def to_openai_responses(conversation: Conversation) -> list[dict[str, Any]]:
    """Responses API ``input`` items: messages, ``function_call`` and ``function_call_output``."""
    out: list[dict[str, Any]] = []
    if conversation.system:
        out.append({"role": "system", "content": SEPARATOR.join(conversation.system)})
    for turn in conversation.turns:
        if turn.role == "tool":
            out.append(
                {
                    "type": "function_call_output",
                    "call_id": turn.tool_call_id,
                    "output": turn.content,
                }
            )
            continue
        if turn.content:
            out.append({"role": turn.role, "content": turn.content})
        for call in turn.tool_calls:
            out.append(
                {
                    "type": "function_call",
                    "call_id": call.id,
                    "name": call.name,
                    "arguments": call.arguments,
                }
            )
    return out


def anthropic_id(call_id: str) -> str:
    """A call id as Anthropic accepts one (letters, digits, ``_`` and ``-``)."""
    return _NOT_ID.sub("_", call_id) or "_"


def _input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the JSON object a ``tool_use`` block needs."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


# Anthropic looks for a cached prefix at each breakpoint and at most this many blocks before it.
LOOKBACK_BLOCKS = 20
MAX_BREAKPOINTS = 4
EPHEMERAL = {"type": "ephemeral"}


def to_anthropic(conversation: Conversation, *, cache_control: bool = True) -> dict[str, Any]:
    """Messages API ``system`` (text blocks) and ``messages``, user and assistant alternating.

    Tool results are ``tool_result`` blocks of the user message right after the assistant
    message whose ``tool_use`` blocks they answer; consecutive turns of one role are merged into
    one message; a conversation that would start with the assistant starts with a short user
    text (:data:`CONTINUES`).

    With ``cache_control`` (the default), at most four ``cache_control`` breakpoints mark the
    ends of the stable regions: the end of the system part's stable region (fixed region,
    bootstrap, constraints), the end of the system part, the last block of the conversation,
    and, when the conversation has more blocks than Anthropic looks back from a breakpoint
    (:data:`LOOKBACK_BLOCKS`), the block that far before the last, so a turn that adds up to
    twice that many blocks still finds the previous turn's cached prefix.
    """
    payload = _anthropic(conversation)
    if cache_control:
        _breakpoints(payload, conversation.stable)
    return payload


def _breakpoints(payload: dict[str, Any], stable: int) -> None:
    marks: list[dict[str, Any]] = []
    system = payload["system"]
    if 0 < stable <= len(system):
        marks.append(system[stable - 1])
    if system and len(system) > stable:
        marks.append(system[-1])
    blocks = [block for message in payload["messages"] for block in message["content"]]
    if blocks:
        marks.append(blocks[-1])
        if len(blocks) > LOOKBACK_BLOCKS:
            marks.append(blocks[-1 - LOOKBACK_BLOCKS])
    for block in marks[:MAX_BREAKPOINTS]:
        block["cache_control"] = dict(EPHEMERAL)


def _anthropic(conversation: Conversation) -> dict[str, Any]:
    system = [{"type": "text", "text": text} for text in conversation.system]
    messages: list[dict[str, Any]] = []
    for turn in conversation.turns:
        blocks: list[dict[str, Any]]
        if turn.role == "tool":
            role = "user"
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": anthropic_id(turn.tool_call_id or ""),
                    "content": turn.content or "(no output)",
                }
            ]
        elif turn.role == "assistant":
            role = "assistant"
            blocks = [{"type": "text", "text": turn.content}] if turn.content else []
            blocks.extend(
                {
                    "type": "tool_use",
                    "id": anthropic_id(call.id),
                    "name": call.name,
                    "input": _input(call.arguments),
                }
                for call in turn.tool_calls
            )
        else:
            role = "user"
            blocks = [{"type": "text", "text": turn.content}]
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    if messages and messages[0]["role"] == "assistant":
        messages.insert(0, {"role": "user", "content": [{"type": "text", "text": CONTINUES}]})
    return {"system": system, "messages": messages}


def formatted(conversation: Conversation, form: Form) -> Any:
    """The conversation in ``form`` (not ``text``)."""
    if form == "openai_chat":
        return to_openai_chat(conversation)
    if form == "openai_responses":
        return to_openai_responses(conversation)
    if form == "anthropic":
        return to_anthropic(conversation)
    raise ValueError(f"no provider form {form!r}")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def rendered_tokens(conversation: Conversation, form: Form, counter: TokenCounter) -> int:
    """Tokens of the conversation as sent in ``form``: each message's JSON counted on its own."""
    payload = formatted(conversation, form)
    pieces = payload["system"] + payload["messages"] if form == "anthropic" else payload
    return sum(counter.count(_json(piece)) for piece in pieces)
