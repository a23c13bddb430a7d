"""A Claude Agent SDK ``SessionStore`` that mirrors transcripts into a clawvm-store database.

``ClawVMSessionStore(db)`` is a :class:`claude_agent_sdk.SessionStore`: pass it to
``ClaudeAgentOptions(session_store=...)`` as you would the SDK's ``InMemorySessionStore``::

    from claude_agent_sdk import ClaudeAgentOptions
    from clawvm_store.integrations.claude_agent_sdk import ClawVMSessionStore

    store = ClawVMSessionStore("agent.db")
    options = ClaudeAgentOptions(session_store=store)

It implements ``append`` and ``load`` and the optional ``list_sessions``,
``list_session_summaries``, ``delete`` and ``list_subkeys``, and passes the SDK's own
``run_session_store_conformance`` with no contract skipped.

What it adds over the SDK's reference stores:

* **Durable when ``append`` returns.** A batch is one transaction (``BEGIN IMMEDIATE``, committed
  at ``synchronous=FULL``): it survives ``kill -9`` and power loss the moment the call returns,
  and a batch in flight is wholly there or wholly absent. ``load`` returns exactly the entries
  appended, deep-equal and in order. An entry's ``uuid`` is its idempotency key (the SDK retries
  failed batches): a uuid already stored for that transcript is not stored twice.
* **Pages, SQL, faults and replay of the live session.** Every entry of a main transcript is also
  projected into the engine's pages with the Claude Code importer's rules
  (:mod:`clawvm_store.replay.importers`): each turn's exchange is appended to a conversation page,
  each tool call goes through the mediator (ledger, evidence pages, effects, read-after-write
  invalidation), a compaction is a ``compaction`` boundary, each turn ends at a ``turn_end``
  boundary. The projection is incremental: an append re-reads only the entries of the turn still
  open. ``clawvm sql`` sees the transcript (view ``claude_sessions``, tables
  ``claude_transcripts``/``claude_entries``) and the pages; ``clawvm faults`` counts the session's
  faults; ``clawvm replay --claude-session ID`` replays it at any budget.

The projection's promises, exactly: a turn is projected once the next turn has started (a turn in
progress may still get tool results), so the newest turn appears when the next prompt arrives;
the projection runs after the batch is committed and a turn's cursor moves after its ``turn_end``,
so a crash in between projects that one turn again on the next append (at least once, never lost).
Subagent transcripts (a ``subpath``) are stored and loaded but not projected (the main agent sees
only a subagent's result, as the importer rules say). A projection error is logged and retried on
the next append; it never fails an append whose entries are already committed. ``delete`` removes
the mirrored entries; the projected pages stay in the engine's append-only history.

Each transcript's session is a clawvm session with the SDK's ``session_id`` under a project named
by its ``project_key``. The async methods run the sync ones in a worker thread
(``asyncio.to_thread``), so an event loop never blocks on a disk flush.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from claude_agent_sdk import SessionStore, fold_session_summary
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)
from sqlalchemy import Connection, delete, insert, select, update

from .. import schema as t
from ..errors import ClawVMError, InvalidInput
from ..replay.importers import claude_code_turns, import_transcript
from ..replay.policies import conversation_key
from ..replay.trace import ToolStep, Trace, Turn
from ..session import Session
from ..store import Store

__all__ = ["ClawVMSessionStore", "mirrored_trace"]

log = logging.getLogger(__name__)

_MAIN = ""  # the subpath column's value for a main transcript (the SDK omits the field)


def _subpath(key: SessionKey) -> str:
    subpath = key.get("subpath")
    if subpath is None:
        return _MAIN
    if not isinstance(subpath, str) or not subpath:
        raise InvalidInput("a session key's subpath must be a non-empty string (omit it for main)")
    return subpath


def _dump(entry: Any) -> str:
    # Compact, key order kept: load returns what json.loads gives back, deep-equal to the input.
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class ClawVMSessionStore(SessionStore):
    """A Claude Agent SDK session store on a clawvm-store database.

    ``db`` is a path, an SQLAlchemy URL or an open :class:`~clawvm_store.Store` (the caller then
    closes it; a store opened here is closed by :meth:`close`). ``budget``, when given, also
    assembles a prompt at that many tokens after each projected turn (demanding its tool
    results), so ``resident_by_turn`` and the budget-dependent faults are recorded too.
    """

    def __init__(self, db: Store | str | os.PathLike[str], *, budget: int | None = None) -> None:
        """Open the store (or use the given one); see the class docstring."""
        if budget is not None and (not isinstance(budget, int) or budget < 1):
            raise InvalidInput("budget must be a positive number of tokens")
        self._owned = not isinstance(db, Store)
        self.store: Store = Store.open(db) if not isinstance(db, Store) else db
        self.budget = budget
        self._lock = threading.Lock()  # the SDK may call from several worker threads at once
        self._sessions: dict[tuple[str, str], Session] = {}
        self._last_mtime = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the projected sessions (writing back) and the store if it was opened here."""
        with self._lock:
            for sess in self._sessions.values():
                if not sess._closed:
                    sess.close()
            self._sessions.clear()
            if self._owned:
                self.store.close()

    def __enter__(self) -> ClawVMSessionStore:
        """Use as a context manager: closes on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close (see :meth:`close`)."""
        self.close()

    # -- the SessionStore protocol (async, each a sync call in a worker thread) --------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Store a batch durably (one FULL transaction), then project it into pages."""
        await asyncio.to_thread(self.append_sync, key, entries)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Every entry appended under ``key``, in order; ``None`` for a key never written."""
        return await asyncio.to_thread(self.load_sync, key)

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """The main transcripts of ``project_key`` with their storage mtimes (epoch ms)."""
        return await asyncio.to_thread(self.list_sessions_sync, project_key)

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """The summary sidecars of ``project_key``'s main transcripts, as folded at append."""
        return await asyncio.to_thread(self.list_session_summaries_sync, project_key)

    async def delete(self, key: SessionKey) -> None:
        """Delete a transcript; a main key cascades to its subpaths."""
        await asyncio.to_thread(self.delete_sync, key)

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """The subpaths stored under a session (its main transcript excluded)."""
        return await asyncio.to_thread(self.list_subkeys_sync, key)

    # -- sync implementations ----------------------------------------------------------------

    def _next_mtime(self, stored: int) -> int:
        # Strictly increasing per transcript, as the SDK's in-memory store does, so two appends
        # in the same millisecond still order (and a sidecar is never older than its listing).
        now_ms = max(int(time.time() * 1000), self._last_mtime + 1, stored + 1)
        self._last_mtime = now_ms
        return now_ms

    def append_sync(self, key: SessionKey, entries: Sequence[SessionStoreEntry]) -> None:
        """:meth:`append` without the event loop."""
        if not entries:
            return
        project_key, session_id, subpath = key["project_key"], key["session_id"], _subpath(key)
        rows = [(_dump(entry), entry.get("uuid")) for entry in entries]
        tr = t.claude_transcripts
        with self._lock:
            with self.store.db.transaction() as conn:
                found = conn.execute(
                    select(tr.c.id, tr.c.entries, tr.c.mtime_ms, tr.c.summary).where(
                        tr.c.project_key == project_key,
                        tr.c.session_id == session_id,
                        tr.c.subpath == subpath,
                    )
                ).first()
                if found is None:
                    created = conn.execute(
                        insert(tr).values(
                            project_key=project_key,
                            session_id=session_id,
                            subpath=subpath,
                            entries=0,
                            mtime_ms=0,
                            summary=None,
                            projected=0,
                            turns=0,
                        )
                    ).inserted_primary_key
                    assert created is not None  # an INSERT always reports its key
                    transcript = created[0]
                    count, stored_mtime, summary = 0, 0, None
                else:
                    transcript, count, stored_mtime, summary = found
                fresh = self._new_entries(conn, transcript, entries, rows)
                if fresh:
                    conn.execute(
                        insert(t.claude_entries),
                        [
                            {"transcript_id": transcript, "seq": count + i, "uuid": u, "entry": e}
                            for i, (_, (e, u)) in enumerate(fresh)
                        ],
                    )
                mtime = self._next_mtime(stored_mtime)
                values: dict[str, Any] = {"entries": count + len(fresh), "mtime_ms": mtime}
                if subpath == _MAIN:
                    # The SDK's own fold, over what was stored; ``data`` is kept verbatim.
                    prev: SessionSummaryEntry | None = (
                        None
                        if summary is None
                        else {"session_id": session_id, "mtime": stored_mtime, "data": summary}
                    )
                    if prev is not None and summary is not None:
                        prev["data"] = json.loads(summary)
                    folded = fold_session_summary(prev, key, [entry for entry, _ in fresh])
                    values["summary"] = _dump(folded["data"])
                conn.execute(update(tr).where(tr.c.id == transcript).values(**values))
            if subpath == _MAIN:
                self._project(transcript, project_key, session_id)

    @staticmethod
    def _new_entries(
        conn: Connection,
        transcript: int,
        entries: Sequence[SessionStoreEntry],
        rows: Sequence[tuple[str, Any]],
    ) -> list[tuple[SessionStoreEntry, tuple[str, str | None]]]:
        """The batch without entries whose uuid is already stored (or earlier in the batch)."""
        uuids = [u for _, u in rows if isinstance(u, str)]
        seen: set[str] = set()
        if uuids:
            e = t.claude_entries
            seen = set(
                conn.execute(
                    select(e.c.uuid).where(e.c.transcript_id == transcript, e.c.uuid.in_(uuids))
                ).scalars()
            )
        fresh: list[tuple[SessionStoreEntry, tuple[str, str | None]]] = []
        for entry, (text, uuid) in zip(entries, rows, strict=True):
            if isinstance(uuid, str):
                if uuid in seen:
                    continue
                seen.add(uuid)
                fresh.append((entry, (text, uuid)))
            else:
                fresh.append((entry, (text, None)))
        return fresh

    def load_sync(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """:meth:`load` without the event loop."""
        tr, e = t.claude_transcripts, t.claude_entries
        with self.store.db.transaction(write=False) as conn:
            transcript = conn.execute(
                select(tr.c.id).where(
                    tr.c.project_key == key["project_key"],
                    tr.c.session_id == key["session_id"],
                    tr.c.subpath == _subpath(key),
                )
            ).scalar()
            if transcript is None:
                return None
            texts = conn.execute(
                select(e.c.entry).where(e.c.transcript_id == transcript).order_by(e.c.seq)
            ).scalars()
            return [cast(SessionStoreEntry, json.loads(text)) for text in texts]

    def list_sessions_sync(self, project_key: str) -> list[SessionStoreListEntry]:
        """:meth:`list_sessions` without the event loop."""
        tr = t.claude_transcripts
        with self.store.db.transaction(write=False) as conn:
            rows = conn.execute(
                select(tr.c.session_id, tr.c.mtime_ms)
                .where(tr.c.project_key == project_key, tr.c.subpath == _MAIN)
                .order_by(tr.c.session_id)
            ).all()
        return [{"session_id": sid, "mtime": mtime} for sid, mtime in rows]

    def list_session_summaries_sync(self, project_key: str) -> list[SessionSummaryEntry]:
        """:meth:`list_session_summaries` without the event loop."""
        tr = t.claude_transcripts
        with self.store.db.transaction(write=False) as conn:
            rows = conn.execute(
                select(tr.c.session_id, tr.c.mtime_ms, tr.c.summary)
                .where(
                    tr.c.project_key == project_key,
                    tr.c.subpath == _MAIN,
                    tr.c.summary.is_not(None),
                )
                .order_by(tr.c.session_id)
            ).all()
        return [
            {"session_id": sid, "mtime": mtime, "data": json.loads(summary)}
            for sid, mtime, summary in rows
        ]

    def delete_sync(self, key: SessionKey) -> None:
        """:meth:`delete` without the event loop."""
        tr, e = t.claude_transcripts, t.claude_entries
        where = [tr.c.project_key == key["project_key"], tr.c.session_id == key["session_id"]]
        subpath = _subpath(key)
        if subpath != _MAIN:
            where.append(tr.c.subpath == subpath)  # a targeted delete: that subkey only
        with self._lock, self.store.db.transaction() as conn:
            ids = list(conn.execute(select(tr.c.id).where(*where)).scalars())
            if ids:
                conn.execute(delete(e).where(e.c.transcript_id.in_(ids)))
                conn.execute(delete(tr).where(tr.c.id.in_(ids)))

    def list_subkeys_sync(self, key: SessionListSubkeysKey) -> list[str]:
        """:meth:`list_subkeys` without the event loop."""
        tr = t.claude_transcripts
        with self.store.db.transaction(write=False) as conn:
            return list(
                conn.execute(
                    select(tr.c.subpath)
                    .where(
                        tr.c.project_key == key["project_key"],
                        tr.c.session_id == key["session_id"],
                        tr.c.subpath != _MAIN,
                    )
                    .order_by(tr.c.subpath)
                ).scalars()
            )

    # -- projection into pages ---------------------------------------------------------------

    def _project(self, transcript: int, project_key: str, session_id: str) -> None:
        """Project the turns completed since the last append (the caller holds the lock)."""
        try:
            self._project_turns(transcript, project_key, session_id)
        except ClawVMError as exc:
            # The entries are committed; the cursor did not move, so the next append retries.
            log.warning("projection of %s/%s failed: %s", project_key, session_id, exc)

    def _project_turns(self, transcript: int, project_key: str, session_id: str) -> None:
        tr, e = t.claude_transcripts, t.claude_entries
        with self.store.db.transaction(write=False) as conn:
            projected, done = conn.execute(
                select(tr.c.projected, tr.c.turns).where(tr.c.id == transcript)
            ).one()
            rows = conn.execute(
                select(e.c.seq, e.c.entry)
                .where(e.c.transcript_id == transcript, e.c.seq >= projected)
                .order_by(e.c.seq)
            ).all()
        records: list[tuple[int, dict[str, Any]]] = []
        for seq, text in rows:
            record = json.loads(text)
            if isinstance(record, dict):
                records.append((seq, record))
        turns = claude_code_turns(records)
        if not turns:
            if rows:  # nothing here opens a turn: no need to read these entries again
                self._advance(transcript, rows[-1][0] + 1, done)
            return
        # The last turn may still receive entries (tool results, more text): it stays open.
        for (_, turn), (next_start, _) in itertools.pairwise(turns):
            sess = self._session(project_key, session_id)
            self._project_turn(sess, turn, done)
            done += 1
            self._advance(transcript, next_start, done)

    def _advance(self, transcript: int, projected: int, turns: int) -> None:
        tr = t.claude_transcripts
        with self.store.db.transaction(sync="normal") as conn:
            conn.execute(
                update(tr).where(tr.c.id == transcript).values(projected=projected, turns=turns)
            )

    def _session(self, project_key: str, session_id: str) -> Session:
        sess = self._sessions.get((project_key, session_id))
        if sess is None or sess._closed:
            sess = self.store.session(session_id, project=project_key)
            self._sessions[(project_key, session_id)] = sess
        return sess

    def _project_turn(self, sess: Session, turn: Turn, index: int) -> None:
        """One turn, as the replay harness runs it: exchange, tool calls, event, turn end."""
        if turn.user or turn.assistant:
            exchange = "\n".join(
                part
                for part in (
                    f"user: {turn.user}" if turn.user else "",
                    f"assistant: {turn.assistant}" if turn.assistant else "",
                )
                if part
            )
            sess.stage(
                conversation_key(sess.id, index), type="conversation", content=exchange, op="append"
            )
        results = [_mediated(sess, step) for step in turn.tools]
        if turn.event == "compaction":
            sess.compact()
        elif turn.event == "reset":
            sess.reset()
        sess.end_turn()
        if self.budget is not None:
            sess.assemble(
                self.budget, demand=list(dict.fromkeys(results)), on_insufficient="report"
            )


def _mediated(sess: Session, step: ToolStep) -> str:
    """The call through the mediator, its recorded output as the result; the evidence key."""

    def run(**_: Any) -> str:
        return step.output

    return sess.tool_call(step.name, step.args, run=run, effect=step.effect).key


def mirrored_trace(
    store: Store, session_id: str, *, project_key: str | None = None, split: str = "response"
) -> Trace:
    """A mirrored main transcript as a replayable trace (the importer's Claude Code rules).

    ``project_key`` is needed only when the same session id is mirrored under several projects;
    ``split`` is the importer's (turns at model responses, or at user prompts only).
    """
    tr, e = t.claude_transcripts, t.claude_entries
    where = [tr.c.session_id == session_id, tr.c.subpath == _MAIN]
    if project_key is not None:
        where.append(tr.c.project_key == project_key)
    with store.db.transaction(write=False) as conn:
        ids = list(conn.execute(select(tr.c.id).where(*where)).scalars())
        if not ids:
            raise InvalidInput(f"no mirrored Claude session {session_id!r} in this store")
        if len(ids) > 1:
            raise InvalidInput(
                f"Claude session {session_id!r} is mirrored under several projects; name one"
            )
        texts = list(
            conn.execute(
                select(e.c.entry).where(e.c.transcript_id == ids[0]).order_by(e.c.seq)
            ).scalars()
        )
    # The importer reads files; the entries are its JSONL lines, verbatim.
    with tempfile.TemporaryDirectory(prefix="clawvm-claude-") as tmp:
        path = Path(tmp) / f"{session_id}.jsonl"
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
        return import_transcript(path, kind="claude-code", split=split)
