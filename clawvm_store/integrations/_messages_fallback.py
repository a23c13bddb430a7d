"""The messages API for integrations, with a stand-in while ``Session.append_message`` is absent.

The messages API (``Session.append_message``, ``messages()``, ``delete_message`` and
``Assembly.to_openai_responses()``, /work/coord/messages.md) is built on another branch. Until it
is merged, :func:`messages_api` returns a stand-in with the same calls, built only on
``Session.stage``: each message is a conversation page ``conversation/m-{seq:08d}`` whose role
is in its structured fields and whose whole message (role, content, tool calls, call id, name,
metadata) is kept verbatim in its provenance (the structured model of a conversation page
forbids extra fields; provenance is a free JSON object for conversation pages). Once the real
API exists, :func:`messages_api` returns it and this module is not used.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select

from .. import schema as t
from ..errors import ClawVMError
from ..pages import Fidelity, PageType

if TYPE_CHECKING:
    from ..assembler import Assembly
    from ..session import Session

PREFIX = "conversation/m-"
# The provenance field holding the message; not one of the names provenance validation resolves
# (tool_call, page, uri), so it is kept as written.
_FIELD = "clawvm_message"
_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    """One recorded message (the shape of the messages API's ``Message``)."""

    key: str
    seq: int
    role: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    name: str | None
    metadata: dict[str, Any] | None


class MessagesAPI(Protocol):
    """What the integrations call: the messages API, bound to one engine session."""

    def append_message(
        self,
        role: str,
        content: str | None,
        *,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        tool_call_id: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Any:
        """Record one message."""

    def messages(self) -> Sequence[Any]:
        """Every message of the session, in order."""

    def delete_message(self, key: str) -> Any:
        """A journaled delete of one message."""

    def to_openai_responses(self, asm: Assembly) -> list[dict[str, Any]]:
        """An assembly rendered as Responses input items."""


class _Native:
    """The real messages API of the session (once issue15-messages is merged)."""

    def __init__(self, sess: Session) -> None:
        self.sess: Any = sess

    def append_message(self, role: str, content: str | None, **kw: Any) -> Any:
        return self.sess.append_message(role, content, **kw)

    def messages(self) -> Sequence[Any]:
        return list(self.sess.messages())

    def delete_message(self, key: str) -> Any:
        return self.sess.delete_message(key)

    def to_openai_responses(self, asm: Assembly) -> list[dict[str, Any]]:
        return list(asm.to_openai_responses())  # type: ignore[attr-defined]


def _page_text(role: str, content: str | None, tool_calls: list[dict[str, Any]] | None) -> str:
    """The page's text, what the assembler counts and degrades (never empty: schema rule)."""
    parts = [content] if content else []
    for call in tool_calls or []:
        parts.append(f"call {call['id']}: {call['name']}({call['arguments']})")
    return f"{role}: " + ("\n".join(parts) if parts else "(empty)")


class _Staged:
    """The stand-in: messages as conversation pages staged through ``Session.stage``."""

    def __init__(self, sess: Session) -> None:
        self.sess = sess
        self._next: int | None = None

    def _rows(self) -> tuple[dict[str, dict[str, Any]], set[str], int]:
        """Live messages by key (committed heads overlaid with staged entries), every key seen."""
        sess = self.sess
        like = PREFIX + "%"
        with sess.store.db.transaction(write=False) as conn:
            heads = conn.execute(
                select(t.pages.c.key, t.pages.c.provenance, t.pages.c.deleted).where(
                    t.pages.c.project == sess.project,
                    t.pages.c.session_id == sess.id,
                    t.pages.c.key.like(like),
                )
            ).all()
            pending = conn.execute(
                select(t.journal.c.key, t.journal.c.op, t.journal.c.payload)
                .where(
                    t.journal.c.session_id == sess.id,
                    t.journal.c.project == sess.project,
                    t.journal.c.key.like(like),
                    t.journal.c.state.in_(("staged", "committed")),
                )
                .order_by(t.journal.c.lsn)
            ).all()
        live: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        for key, provenance, deleted in heads:
            seen.add(key)
            if not deleted and provenance:
                found = json.loads(provenance).get(_FIELD)
                if isinstance(found, dict):
                    live[key] = found
        for key, op, payload in pending:
            seen.add(key)
            if op == "delete":
                live.pop(key, None)
                continue
            found = (json.loads(payload).get("provenance") or {}).get(_FIELD)
            if isinstance(found, dict):
                live[key] = found
        top = max((int(key[len(PREFIX) :]) for key in seen), default=0)
        return live, seen, top

    def append_message(
        self,
        role: str,
        content: str | None,
        *,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        tool_call_id: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Any:
        if role not in _ROLES:
            raise ClawVMError(f"message role must be one of {', '.join(_ROLES)}, not {role!r}")
        if role == "tool" and not tool_call_id:
            raise ClawVMError("a tool message needs the tool_call_id of the call it answers")
        calls = [
            {"id": str(c["id"]), "name": str(c["name"]), "arguments": c.get("arguments", "")}
            for c in tool_calls or []
        ]
        if self._next is None:
            self._next = self._rows()[2] + 1
        seq = self._next
        key = f"{PREFIX}{seq:08d}"
        now = self.sess.store.clock()
        message = {
            "role": role,
            "content": content,
            "tool_calls": calls or None,
            "tool_call_id": tool_call_id,
            "name": name,
            "metadata": dict(metadata) if metadata is not None else None,
        }
        receipt = self.sess.stage(
            key,
            type=PageType.CONVERSATION,
            content=_page_text(role, content, calls),
            structured={"span_id": key, "start": now, "end": now, "roles": [role]},
            provenance={_FIELD: message},
        )
        self._next = seq + 1
        return receipt

    def messages(self) -> list[Message]:
        live = self._rows()[0]
        return [
            Message(
                key=key,
                seq=int(key[len(PREFIX) :]),
                role=m["role"],
                content=m.get("content"),
                tool_calls=m.get("tool_calls"),
                tool_call_id=m.get("tool_call_id"),
                name=m.get("name"),
                metadata=m.get("metadata"),
            )
            for key, m in sorted(live.items())
        ]

    def delete_message(self, key: str) -> Any:
        if key not in self._rows()[0]:
            raise ClawVMError(f"no message {key!r} in session {self.sess.id!r}")
        if any(entry.key == key for entry in self.sess.staged()):
            # A delete needs the committed version; a message still only staged commits first.
            self.sess.flush()
        version = self.sess.store.page(key, project=self.sess.project, session=self.sess.id).version
        return self.sess.stage(key, op="delete", expected_version=version)

    def to_openai_responses(self, asm: Assembly) -> list[dict[str, Any]]:
        return render_responses(asm, self.messages())


def render_responses(asm: Assembly, messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The assembly as Responses items: system pages first, then the conversation.

    A message whose page is resident at full fidelity comes back verbatim (its raw item, when
    the integration kept one under ``metadata["item"]``); a tool output below full renders as
    its page's text at that fidelity (a pointer the agent can resolve), so the pair stays; a
    call and its output are both kept when either is resident (never an orphan); any other
    message below full is shown at its fidelity, and left out when it was evicted or is only a
    pointer.
    """
    resident = {item.key: item for item in asm.items}
    system = [
        {"role": "system", "content": item.text}
        for item in asm.items
        if item.type is not PageType.CONVERSATION or not item.key.startswith(PREFIX)
    ]
    calls_kept: set[str] = set()
    for message in messages:
        if message.key in resident:
            if message.role == "tool" and message.tool_call_id:
                calls_kept.add(message.tool_call_id)
            for call in message.tool_calls or []:
                calls_kept.add(call["id"])
    out: list[dict[str, Any]] = []
    for message in messages:
        raw = (message.metadata or {}).get("item")
        page = resident.get(message.key)
        full = page is not None and page.fidelity is Fidelity.FULL
        if message.role == "tool" and message.tool_call_id:
            if message.tool_call_id not in calls_kept:
                continue
            if full and isinstance(raw, dict):
                out.append(raw)
                continue
            text = page.text if page is not None else f"[evicted: resolve {message.key}]"
            out.append(
                {"type": "function_call_output", "call_id": message.tool_call_id, "output": text}
            )
            continue
        if message.tool_calls:
            if not any(call["id"] in calls_kept for call in message.tool_calls):
                continue
            if isinstance(raw, dict):
                out.append(raw)
                continue
            for call in message.tool_calls:
                args = call["arguments"]
                out.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": call["name"],
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    }
                )
            continue
        if page is None or page.fidelity is Fidelity.POINTER:
            continue
        if full and isinstance(raw, dict):
            out.append(raw)
        elif isinstance(raw, dict) and raw.get("type") not in (None, "message"):
            continue  # a reasoning (or other) item is sent whole or not at all
        else:
            # Below full the page's text at that fidelity stands in for the content.
            text = message.content or "" if full else page.text
            out.append({"role": message.role, "content": text})
    return system + out


_APIS: weakref.WeakKeyDictionary[Any, MessagesAPI] = weakref.WeakKeyDictionary()


def messages_api(sess: Session) -> MessagesAPI:
    """The messages API bound to ``sess``: the real one if present, else the stand-in."""
    api = _APIS.get(sess)
    if api is None:
        api = _Native(sess) if hasattr(sess, "append_message") else _Staged(sess)
        _APIS[sess] = api
    return api
