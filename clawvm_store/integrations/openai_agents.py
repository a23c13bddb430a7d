"""The OpenAI Agents SDK on this engine: a ``Session`` and a mediated tool wrapper.

``pip install "clawvm-store[openai-agents]"``::

    from agents import Agent, Runner
    from clawvm_store.integrations.openai_agents import ClawVMSession, mediated

    session = ClawVMSession("user-42", "agent.db")            # a drop-in for SQLiteSession
    agent = Agent(name="a", tools=[mediated(read_file, session)])
    await Runner.run(agent, "hi", session=session)

:class:`ClawVMSession` implements the SDK's ``Session`` protocol (``get_items``, ``add_items``,
``pop_item``, ``clear_session``, ``session_settings``). Every Responses item becomes one message of
the engine session (``Session.append_message``), with the raw item kept verbatim in the message's
metadata, so:

* without a budget, ``get_items`` returns exactly the items added, in order, with
  ``SQLiteSession``'s limit semantics, across reopen and ``kill -9`` (an item is staged in the
  journal before ``add_items`` returns; a batch that ends with the assistant's message also ends
  the engine's turn, a boundary that commits at ``synchronous=FULL``);
* with ``budget=N``, ``get_items()`` returns the engine's assembly of the session under ``N``
  tokens, rendered as Responses items (floors kept, old tool outputs as pointers, the newest turn
  boosted to stay whole, never an orphan call or output). An explicit ``limit`` still returns the
  last items verbatim: the SDK itself reads tails that way to check its own writes.

:func:`mediated` wraps a ``FunctionTool`` so each invocation goes through ``Session.tool_call``:
a repeated read is served from the ledger, and a write is never re-run blindly after a crash.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from .. import schema as t
from ..errors import ClawVMError, InterruptedToolCall
from ..mediator import EFFECTS, Effect, signature_of
from ..store import Store

try:
    from agents.tool import FunctionTool
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ClawVMError(
        'the OpenAI Agents SDK is not installed: pip install "clawvm-store[openai-agents]"'
    ) from exc
try:
    from agents.memory.session_settings import SessionSettings
except ImportError:  # pragma: no cover - SDK releases before session settings (< 0.4)
    SessionSettings = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from ..session import Session

__all__ = ["ClawVMSession", "mediated"]


# One Store per database in a process: the engine keeps one writer connection per process, and
# SQLiteSession users routinely open several sessions on one file.
_STORES: dict[str, tuple[Store, int]] = {}
_STORES_LOCK = threading.Lock()


def _store_key(db: str | os.PathLike[str]) -> str:
    text = os.fspath(db)
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def _acquire(db: str | os.PathLike[str]) -> tuple[Store, str]:
    key = _store_key(db)
    with _STORES_LOCK:
        held = _STORES.get(key)
        if held is None:
            store = Store.open(key if "://" in key else Path(key))
            _STORES[key] = (store, 1)
        else:
            store = held[0]
            _STORES[key] = (store, held[1] + 1)
    return store, key


def _release(key: str) -> None:
    with _STORES_LOCK:
        held = _STORES.get(key)
        if held is None:
            return
        if held[1] <= 1:
            del _STORES[key]
            held[0].close()
        else:
            _STORES[key] = (held[0], held[1] - 1)


def _text(value: Any) -> str:
    """The text of a Responses content or output value (a string or a list of parts)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, Mapping):
                text = part.get("text", part.get("refusal"))
                parts.append(text if isinstance(text, str) else f"[{part.get('type', 'part')}]")
            else:
                parts.append(str(part))
        return "\n".join(parts)
    return json.dumps(value, sort_keys=True, default=str)


def message_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """The ``append_message`` arguments for one Responses input item (the raw item in metadata).

    ``message`` items keep their role (``developer`` is a system message); ``function_call`` is
    an assistant message carrying that call; ``function_call_output`` is the tool message
    answering it; ``reasoning`` and every other item type are assistant messages whose text is
    their summary (or empty), so the verbatim item comes back from metadata.
    """
    if not isinstance(item, Mapping):
        raise ClawVMError(f"a session item must be a dict, not {type(item).__name__}")
    try:
        raw = json.loads(json.dumps(item))
    except (TypeError, ValueError) as exc:
        raise ClawVMError(f"a session item must be JSON-serializable: {exc}") from None
    metadata = {"item": raw}
    kind = item.get("type")
    if kind == "function_call":
        call = {"id": item["call_id"], "name": item["name"], "arguments": item.get("arguments", "")}
        return {"role": "assistant", "content": None, "tool_calls": [call], "metadata": metadata}
    if kind == "function_call_output":
        return {
            "role": "tool",
            "content": _text(item.get("output")),
            "tool_call_id": item["call_id"],
            "metadata": metadata,
        }
    role = item.get("role")
    if kind in (None, "message") and role in ("user", "assistant", "system", "developer"):
        return {
            "role": "system" if role == "developer" else role,
            "content": _text(item.get("content")),
            "metadata": metadata,
        }
    summary = item.get("summary") if kind == "reasoning" else None
    return {"role": "assistant", "content": _text(summary), "metadata": metadata}


def item_of(message: Any) -> dict[str, Any]:
    """The Responses item of a recorded message: its verbatim item, else one built from it."""
    metadata = message.metadata or {}
    raw = metadata.get("item")
    if isinstance(raw, dict):
        return copy.deepcopy(raw)
    if message.role == "tool":
        return {
            "type": "function_call_output",
            "call_id": message.tool_call_id,
            "output": message.content or "",
        }
    if message.tool_calls:
        call = message.tool_calls[0]
        arguments = call.get("arguments", "")
        return {
            "type": "function_call",
            "call_id": call["id"],
            "name": call["name"],
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        }
    return {"role": message.role, "content": message.content or ""}


class ClawVMSession:
    """An Agents SDK ``Session`` (contract) kept as messages of a clawvm-store session.

    ``db`` is a path, an SQLAlchemy URL or an open :class:`~clawvm_store.Store` (which stays
    the caller's to close). ``budget`` (tokens) turns ``get_items()`` into the engine's assembly;
    ``fixed`` is text the caller sends besides the history (instructions, tool schemas), charged
    to that budget. Calls run on the caller's thread: each is a short local transaction.
    """

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        db: str | os.PathLike[str] | Store,
        *,
        project: str = "default",
        budget: int | None = None,
        fixed: str = "",
        principal: str | None = None,
        session_settings: SessionSettings | None = None,
    ) -> None:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
            raise ClawVMError("budget must be a whole number of tokens or None")
        if budget is not None and budget <= 0:
            raise ClawVMError("budget must be positive")
        self.session_id = session_id
        self.budget = budget
        self.fixed = fixed
        if session_settings is None and SessionSettings is not None:
            session_settings = SessionSettings()
        self.session_settings = session_settings
        self._key: str | None = None
        if isinstance(db, Store):
            self.store = db
        else:
            self.store, self._key = _acquire(db)
        try:
            self.session: Session = self.store.session(
                session_id, project=project, principal=principal
            )
        except BaseException:
            if self._key is not None:
                _release(self._key)
            raise
        self._closed = False
        self._dirty = False
        # The history as (message key, role, item JSON), kept in step with this object's own
        # writes; any other change to the engine session (Session.changes) rebuilds it.
        self._history: list[tuple[str, str, str]] | None = None
        self._seen = -1
        # Call ids whose output the agent has recorded: a finished write whose id is not here
        # ran but its result never reached the history (see mediated()).
        self._answered: set[str] | None = None

    def __repr__(self) -> str:
        return f"ClawVMSession({self.session_id!r}, budget={self.budget!r})"

    def _require_open(self) -> None:
        if self._closed:
            raise ClawVMError(f"ClawVMSession {self.session_id!r} is closed")

    def _items(self) -> list[tuple[str, str, str]]:
        """The history, read from the engine only when something else changed it."""
        if self._history is None or self._seen != self.session.changes:
            self._history = [
                (message.key, message.role, json.dumps(item_of(message)))
                for message in self.session.messages()
            ]
            self._answered = None
            self._seen = self.session.changes
        return self._history

    def answered_calls(self) -> set[str]:
        """Call ids that have a recorded ``function_call_output`` in this session."""
        history = self._items()
        if self._answered is None:
            self._answered = {
                str(item["call_id"])
                for _, role, text in history
                if role == "tool" and "call_id" in (item := json.loads(text))
            }
        return self._answered

    async def get_items(self, limit: int | None = None) -> list[Any]:
        """The history: the items added (without a budget), or the budgeted assembly."""
        self._require_open()
        if self.budget is not None and limit is None and self._settings_limit() is None:
            return self._assembled()
        resolved = limit if limit is not None else self._settings_limit()
        if resolved == 0:
            return []
        history = self._items()
        if resolved is not None and resolved > 0:
            history = history[-resolved:]
        # SQLite's LIMIT with a negative value means no limit; SQLiteSession inherits that.
        # Fresh objects each time, as SQLiteSession's rows decode to: callers may mutate them.
        return [json.loads(text) for _, _, text in history]

    def _settings_limit(self) -> int | None:
        limit = getattr(self.session_settings, "limit", None)
        return limit if isinstance(limit, int) else None

    def _assembled(self) -> list[Any]:
        if self._dirty or self.session.staged():
            # Assembly reads committed state: write back what add_items staged.
            self._writeback(self.session.flush())
        history = self._items()
        # The newest turn (from the last user message on) is boosted so the budget keeps it
        # whole before spending on older pages.
        start = max((i for i, (_, role, _) in enumerate(history) if role == "user"), default=0)
        boost = {key: 100.0 for key, _, _ in history[start:]}
        asm = self.session.assemble(
            self.budget or 0,
            fixed=self.fixed,
            on_insufficient="report",
            boost=boost,
            form="openai_responses",
        )
        return asm.to_openai_responses()

    def _writeback(self, result: Any) -> None:
        self._dirty = False
        if result.rejected:
            self._history = None  # a rejected message is not in the history after all
        self._seen = self.session.changes if self._history is not None else -1

    async def add_items(self, items: list[Any]) -> None:
        """Record items; each is durable against ``kill -9`` when this returns."""
        self._require_open()
        if not items:
            return
        fields = [message_of(item) for item in items]
        history = self._items()
        answered = self.answered_calls()
        last = items[-1]
        result = None
        if last.get("role") == "assistant" and last.get("type", "message") == "message":
            # The SDK saves the assistant's final message last: the turn is over, so the batch
            # is journaled by the turn's boundary itself, one FULL commit (one fsync per turn)
            # that also makes the whole turn survive power loss.
            result = self.session.end_turn(fields)
            receipts = result.staged
        else:
            receipts = self.session.append_messages(fields)
        for receipt, message in zip(receipts, fields, strict=True):
            item = message["metadata"]["item"]
            history.append((receipt.key, message["role"], json.dumps(item)))
            if message["role"] == "tool":
                answered.add(str(message["tool_call_id"]))
        self._seen = self.session.changes
        self._dirty = True
        if result is not None:
            self._writeback(result)

    async def pop_item(self) -> Any | None:
        """Remove the most recent item (a journaled delete) and return it; None when empty."""
        self._require_open()
        history = self._items()
        if not history:
            return None
        key, role, text = history[-1]
        self.session.delete_message(key)
        history.pop()
        item = json.loads(text)
        if role == "tool" and self._answered is not None:
            self._answered.discard(str(item.get("call_id")))
        self._seen = self.session.changes
        self._dirty = True
        return item

    async def clear_session(self) -> None:
        """Delete every item (journaled), then a ``reset`` boundary that writes them back."""
        self._require_open()
        for key, _, _ in self._items():
            self.session.delete_message(key)
        self._history = None
        self.session.reset()
        self._answered = None
        self._dirty = False

    def close(self) -> None:
        """Write back at ``session_end`` and release the database (if this object opened it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.session.close()
        finally:
            if self._key is not None:
                _release(self._key)


def _latest_write(store: Store, session_id: str, signature: str) -> Any:
    with store.db.transaction(write=False) as conn:
        return conn.execute(
            select(t.tool_calls.c.state, t.tool_calls.c.idempotency_key)
            .where(
                t.tool_calls.c.session_id == session_id,
                t.tool_calls.c.signature == signature,
                t.tool_calls.c.effect == "write",
            )
            .order_by(t.tool_calls.c.id.desc())
            .limit(1)
        ).first()


_KEY_PREFIX = "openai-agents:"


def _rekey(engine: Session, old: str, new: str) -> None:
    with engine.store.db.transaction(sync="normal") as conn:
        conn.execute(
            update(t.tool_calls)
            .where(t.tool_calls.c.session_id == engine.id, t.tool_calls.c.idempotency_key == old)
            .values(idempotency_key=new)
        )


def mediated(
    tool: FunctionTool,
    session: ClawVMSession | Session,
    *,
    effect: Effect = "read",
    resources: Sequence[str] | None = None,
) -> FunctionTool:
    """The same ``FunctionTool``, run through ``Session.tool_call`` (the durable tool ledger).

    ``effect="read"``: a repeat of a call with the same arguments is served from the ledger (no
    re-run) until a ``write`` call touching one of its resources invalidates it. ``effect="write"``:
    each call runs once under the SDK's call id as idempotency key; after a crash, a repeat of a
    write whose run was interrupted is refused (the model is told to check its effect), and a
    repeat of a write that finished but whose output never reached the history is served from the
    ledger instead of running again. ``volatile`` (a tool whose result changes by itself: never
    served) and ``unknown`` (a write that may touch anything: it invalidates every cached read)
    are the engine's other effects; ``resources`` names what a write changes.
    """
    if effect not in EFFECTS:
        raise ClawVMError(f"effect must be one of {', '.join(EFFECTS)}")
    if not isinstance(tool, FunctionTool):
        raise ClawVMError(f"mediated() wraps a FunctionTool, not {type(tool).__name__}")
    original = tool.on_invoke_tool
    owner = session if isinstance(session, ClawVMSession) else None
    engine: Session = session.session if isinstance(session, ClawVMSession) else session

    async def invoke(ctx: Any, input_json: str) -> Any:
        try:
            args = json.loads(input_json) if input_json.strip() else {}
        except json.JSONDecodeError as exc:
            return f"invalid JSON arguments for {tool.name}: {exc}"
        if not isinstance(args, dict):
            return f"the arguments of {tool.name} must be a JSON object"
        call_id = str(getattr(ctx, "tool_call_id", "") or "")
        loop = asyncio.get_running_loop()
        produced: list[Any] = []

        def run(**_: Any) -> Any:
            # Called by the mediator in the worker thread; the tool itself runs on the loop.
            async def invoke_original() -> Any:
                return await original(ctx, input_json)

            output: Any = asyncio.run_coroutine_threadsafe(invoke_original(), loop).result()
            produced.append(output)
            return output

        key: str | None = None
        if effect == "write":
            key = f"{_KEY_PREFIX}{call_id}" if call_id else None
            prior = _latest_write(engine.store, engine.id, signature_of(tool.name, args))
            if prior is not None and prior.state in ("started", "interrupted"):
                return (
                    f"clawvm: an earlier {tool.name} call with these arguments was interrupted "
                    "before it finished; it was not run again. Check its effect first."
                )
            if (
                prior is not None
                and prior.state == "finished"
                and owner is not None
                and isinstance(prior.idempotency_key, str)
                and prior.idempotency_key.startswith(_KEY_PREFIX)
                and prior.idempotency_key[len(_KEY_PREFIX) :] not in owner.answered_calls()
            ):
                # It ran, but the agent never saw the result (the process died first): this
                # repeat is that same call, so its recorded result is the answer.
                key = prior.idempotency_key
        try:
            result = await asyncio.to_thread(
                engine.tool_call,
                tool.name,
                args,
                run,
                effect=effect,
                idempotency_key=key,
                resources=resources,
            )
        except InterruptedToolCall as exc:
            return f"clawvm: {exc}"
        if effect == "write" and call_id and key is not None and key != f"{_KEY_PREFIX}{call_id}":
            # Served for a call the agent never saw: that call is now answered by this one, so
            # the key moves to this call id (a later identical write is then a new write).
            _rekey(engine, key, f"{_KEY_PREFIX}{call_id}")
        if result.source == "executed" and produced:
            return produced[0]
        return result.content

    return dataclasses.replace(tool, on_invoke_tool=invoke)
