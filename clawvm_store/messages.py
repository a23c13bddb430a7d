"""Provider messages recorded as conversation pages (issue 15): the ``Message`` record and its checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import SchemaInvalid

ROLES = ("system", "user", "assistant", "tool")
PREFIX = "conversation/m-"


@dataclass(frozen=True)
class Message:
    """One recorded message of a session, as :meth:`Session.messages` returns it."""

    key: str
    seq: int
    role: str
    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None


def message_key(seq: int) -> str:
    """The page key of message number ``seq``."""
    return f"{PREFIX}{seq:08d}"


def key_seq(key: str) -> int | None:
    """The sequence number in a message key, or None when ``key`` is not a message key."""
    tail = key[len(PREFIX) :] if key.startswith(PREFIX) else ""
    return int(tail) if tail.isdigit() and len(tail) == 8 else None


def _bad(message: str) -> SchemaInvalid:
    return SchemaInvalid(message, reason="SCHEMA_INVALID")


def normalize_tool_calls(calls: Any) -> list[dict[str, Any]]:
    """Tool calls as ``{"id", "name", "arguments": str}``; the OpenAI chat shape is accepted."""
    if not isinstance(calls, list):
        raise _bad("tool_calls must be a list of {id, name, arguments}")
    out: list[dict[str, Any]] = []
    for call in calls:
        if not isinstance(call, dict):
            raise _bad("each tool call must be a dict with id, name and arguments")
        if isinstance(call.get("function"), dict):
            call = {"id": call.get("id"), **call["function"]}
        call_id, name, args = call.get("id"), call.get("name"), call.get("arguments", "")
        if not isinstance(call_id, str) or not call_id:
            raise _bad("a tool call needs a non-empty string id")
        if not isinstance(name, str) or not name:
            raise _bad(f"tool call {call_id!r} needs a non-empty string name")
        if isinstance(args, dict):
            args = json.dumps(args, sort_keys=True)
        if not isinstance(args, str):
            raise _bad(f"tool call {call_id!r}: arguments must be a str or a dict")
        out.append({"id": call_id, "name": name, "arguments": args})
    return out


def build_envelope(
    role: str,
    content: str | None,
    tool_calls: Any,
    tool_call_id: str | None,
    name: str | None,
    metadata: Any,
) -> dict[str, Any]:
    """Check one message's parts and return the envelope kept in the page's structured fields."""
    if role not in ROLES:
        raise _bad(f"message role must be one of {', '.join(ROLES)}, not {role!r}")
    if content is not None and not isinstance(content, str):
        raise _bad("message content must be a str or None")
    calls = normalize_tool_calls(tool_calls) if tool_calls else []
    if calls and role != "assistant":
        raise _bad("only an assistant message may carry tool_calls")
    if role == "tool" and (not isinstance(tool_call_id, str) or not tool_call_id):
        raise _bad("a tool message needs the tool_call_id of the call it answers")
    if role != "tool" and tool_call_id is not None:
        raise _bad("tool_call_id belongs on a tool message only")
    if not (content or calls):
        if role != "assistant" and role != "tool":
            raise _bad(f"a {role} message needs content")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("message metadata must be a dict")
        try:
            json.dumps(metadata)
        except (TypeError, ValueError):
            raise _bad("message metadata must be JSON-able") from None
    return {
        "role": role,
        "tool_calls": calls,
        "tool_call_id": tool_call_id,
        "name": name,
        "metadata": metadata,
    }
