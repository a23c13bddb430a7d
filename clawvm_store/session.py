"""Sessions: staging updates, and writing them back at lifecycle boundaries.

A :class:`Session` is one agent run against a project. It stages updates (each one a short
journal transaction that survives ``kill -9`` the moment :meth:`Session.stage` returns) and writes
them back at boundaries (:meth:`end_turn`, :meth:`compact`, :meth:`prune`, :meth:`flush`,
:meth:`reset`, :meth:`close`), where every staged update of the session is validated and either
committed or rejected with a reason code, in one transaction that also records the boundary.
A destructive boundary therefore never completes with a staged update of its session unresolved.

Liveness: a session records which process owns it (host, pid, process start time, and a token of
the owning :class:`Store` object). Recovery only resolves staged updates of sessions whose owner
is gone, so a CLI opening the database while an agent runs never commits the agent's half-done
turn.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy import text as sql_text

from . import _crashpoints
from . import faults as fault_log
from . import schema as t
from .assembler import Assembler, Assembly, Weights
from .cache import CachePricing
from .errors import ClawVMError, InvalidInput, NotFound
from .journal import (
    JOURNAL_ROWS,
    STAGED,
    Entry,
    PreparedUpdate,
    StagedUpdate,
    Update,
    WritebackResult,
    check_key,
    row_to_entry,
)
from .mediator import EFFECTS, ToolCallRecord, ToolMediator, ToolResult
from .messages import PREFIX as MESSAGE_PREFIX
from .messages import Message, build_envelope, key_seq, message_key
from .pages import POLICIES, Boundary, FaultKind, Fidelity, Op, Page, PageType, Pin, Scope
from .recall import Recall, visible
from .representations import ContentRepresentations, Representation, basis_after
from .segments import read_text

if TYPE_CHECKING:
    from .store import Store

_LIVE_STORES: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (guards against a recycled pid); '' if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return ""


def owner_tag(store_token: str) -> str:
    """Who owns a session: ``host|pid|process start|store token``."""
    pid = os.getpid()
    return f"{socket.gethostname()}|{pid}|{_process_start(pid)}|{store_token}"


def register_store(token: str, store: Any) -> None:
    """Mark a store object of this process as alive (until it is closed or collected)."""
    _LIVE_STORES[token] = store


def unregister_store(token: str) -> None:
    """Mark a store object as closed: the sessions it owned are no longer live."""
    _LIVE_STORES.pop(token, None)


def owner_alive(owner: str | None) -> bool | None:
    """Whether a session's owner still runs: True, False, or None when it cannot be known.

    ``None`` means another host owns it; recovery leaves such sessions alone unless forced.
    """
    if not owner:
        return False
    try:
        host, pid_text, started, token = owner.split("|", 3)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return None
    if pid == os.getpid():
        return token in _LIVE_STORES
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    current = _process_start(pid)
    return not (started and current and current != started)


class Session:
    """One agent session: stage updates, read your own writes, write back at boundaries."""

    def __init__(
        self, store: Store, session_id: str, project: str, principal: str | None, turn: int = 0
    ):
        self.store = store
        self._turn = turn
        self.id = session_id
        self.project = project
        self.principal = principal
        self._closed = False
        self._assembler = Assembler(store, project, session_id)
        self._mediator = ToolMediator(self)
        self.cwd: str | None = None
        self.tool_rules: dict[str, str] = {}
        # Set by compaction and reset: the next prompt must carry every bootstrap page.
        self._after_destructive = False
        # The highest message seq used, read once and then counted here: only the session's
        # owner appends its messages (a second owner is refused with SessionInUse).
        self._message_top: int | None = None
        self._changes = 0

    def __repr__(self) -> str:
        return f"Session({self.id!r}, project={self.project!r}, principal={self.principal!r})"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._closed and exc_type is None:
            self.close()

    @property
    def turn(self) -> int:
        """How many turns this session has ended.

        Held here rather than read each time (it is on every assembly and tool call): only the
        session's owner advances it, and a second owner is refused with SessionInUse.
        """
        return self._turn

    @property
    def changes(self) -> int:
        """A count that grows whenever this session's staged or committed state may have changed.

        Each stage (or batch of stages) and each boundary that rejected or discarded an update
        advances it, so a caller holding a derived view (a history cache) knows when to rebuild.
        """
        return self._changes

    def _require_open(self) -> None:
        if self._closed:
            raise ClawVMError(f"session {self.id!r} is closed; resume it with store.session()")

    # -- staging ---------------------------------------------------------------------------------

    def stage(
        self,
        key: str,
        *,
        type: PageType | str | None = None,
        content: str | None = None,
        op: Op | str = Op.SET,
        expected_version: int | None = None,
        priority: float | None = None,
        pin: Pin | str | None = None,
        scope: Scope | str | None = None,
        provenance: Mapping[str, Any] | None = None,
        structured: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> StagedUpdate:
        """Append an update to the journal; it applies at the next boundary if it validates.

        The scope defaults to the type's (DESIGN 1.2). Once this returns, the update survives a
        process crash; it survives power loss from the next boundary's commit on.
        """
        self._require_open()
        update_ = self._update_of(
            key,
            type=type,
            content=content,
            op=op,
            expected_version=expected_version,
            priority=priority,
            pin=pin,
            scope=scope,
            provenance=provenance,
            structured=structured,
            idempotency_key=idempotency_key,
        )
        return self._stage_all([update_])[0]

    def _update_of(
        self,
        key: str,
        *,
        type: PageType | str | None,
        content: str | None,
        op: Op | str,
        expected_version: int | None,
        priority: float | None,
        pin: Pin | str | None,
        scope: Scope | str | None,
        provenance: Mapping[str, Any] | None,
        structured: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> tuple[Update, str, str]:
        """One checked update of this session, with the project and session of its page."""
        page_type = None
        if type is not None:
            from .store import coerce_enum

            page_type = coerce_enum(PageType, type, "page type")
        if scope is None and page_type is not None:
            scope = POLICIES[page_type].default_scope
        elif scope is None:
            # No type: the update is to a page that exists; write where the session sees it
            # (its own page, else the project's).
            scope = self._visible_scope(key)
        return self.store._direct_update(
            key,
            type=page_type,
            content=content,
            project=self.project,
            session=self.id,
            expected_version=expected_version,
            op=op,
            pin=pin,
            priority=priority,
            scope=scope if scope is not None else Scope.SESSION,
            provenance=provenance,
            structured=structured,
            idempotency_key=idempotency_key,
        )

    def _stage_all(self, updates: Sequence[tuple[Update, str, str]]) -> list[StagedUpdate]:
        """Journal checked updates in one transaction: all of them are staged, or none is."""
        prepared = self._prepare_all(updates)
        with self.store.db.transaction(sync="normal") as conn:
            staged = self._journal_all(conn, updates)
        self._changes += 1
        for lsn, ready in _ready_by_lsn(prepared, staged).items():
            self.store._remember_prepared(lsn, ready)
        return self._acknowledge(updates, staged)

    def _prepare_all(
        self, updates: Sequence[tuple[Update, str, str]]
    ) -> list[ContentRepresentations | None]:
        # A set's fidelities do not depend on the page's head, so they are built now, outside
        # any lock, and handed to the boundary; if this process dies they are rebuilt there.
        return [
            self.store._prepare_outside_txn(update_, project, session_id)
            for update_, project, session_id in updates
        ]

    def _journal_all(
        self, conn: Connection, updates: Sequence[tuple[Update, str, str]]
    ) -> list[tuple[int, bool]]:
        return [
            self.store.journal.stage(
                conn,
                project=project,
                session_id=session_id,
                principal=self.principal,
                update=update_,
            )
            for update_, project, session_id in updates
        ]

    def _acknowledge(
        self, updates: Sequence[tuple[Update, str, str]], staged: Sequence[tuple[int, bool]]
    ) -> list[StagedUpdate]:
        """Receipts for journaled updates (and the crash-test kit's acknowledgements)."""
        receipts: list[StagedUpdate] = []
        for (update_, _, _), (lsn, duplicate) in zip(updates, staged, strict=True):
            if _crashpoints.ACTIVE:  # the crash-test kit: acknowledged once this line is written
                _crashpoints.ack(
                    "stage",
                    session=self.id,
                    lsn=lsn,
                    key=update_.key,
                    op=update_.op.value,
                    content=_crashpoints.digest(update_.content),
                    structured=_crashpoints.digest(update_.structured),
                    duplicate=duplicate,
                )
            receipts.append(StagedUpdate(lsn=lsn, key=update_.key, duplicate=duplicate))
        return receipts

    def _visible_scope(self, key: str) -> Scope:
        with self.store.db.transaction(write=False) as conn:
            owners = {
                row[0]
                for row in conn.execute(
                    select(t.pages.c.session_id).where(
                        t.pages.c.project == self.project,
                        t.pages.c.key == key,
                        t.pages.c.session_id.in_([self.id, ""]),
                    )
                )
            }
        return Scope.PROJECT if owners == {""} else Scope.SESSION

    def staged(self) -> list[Entry]:
        """This session's entries still waiting for a boundary, oldest first."""
        with self.store.db.transaction(write=False) as conn:
            rows = conn.execute(
                JOURNAL_ROWS.where(t.journal.c.session_id == self.id, STAGED).order_by(
                    t.journal.c.lsn
                )
            ).all()
        return [row_to_entry(row) for row in rows]

    # -- reading -----------------------------------------------------------------------------------

    def page(self, key: str, *, fidelity: Fidelity | str = Fidelity.FULL) -> Page:
        """A page as this session sees it, its own staged updates included (read-your-writes).

        Staged updates are overlaid on the committed head in LSN order as the boundary would
        apply them, so a session reads what it wrote before the boundary commits it. The
        result's ``version`` is the one the overlay would get if every staged update commits.
        """
        check_key(key)
        from .store import coerce_enum

        chosen = coerce_enum(Fidelity, fidelity, "fidelity")
        with self.store.db.transaction(write=False) as conn:
            pending = [
                row_to_entry(row)
                for row in conn.execute(
                    JOURNAL_ROWS.where(
                        t.journal.c.session_id == self.id,
                        STAGED,
                        t.journal.c.key == key,
                        t.journal.c.project == self.project,
                    ).order_by(t.journal.c.lsn)
                ).all()
            ]
            if not pending:
                return self.store.page(key, project=self.project, session=self.id, fidelity=chosen)
            return self._overlay(conn, key, pending, chosen)

    def _overlay(
        self, conn: Connection, key: str, pending: list[Entry], fidelity: Fidelity
    ) -> Page:
        journal = self.store.journal
        owners = {entry.page_session for entry in pending}
        page_session = self.id if self.id in owners else ""
        head = journal.head(conn, self.project, page_session, key)
        if head is None and page_session:
            head = None
        # Versions keep counting through a staged delete (its tombstone is a version too), while
        # the content starts afresh after it.
        version = head.version if head else 0
        stored = head  # the committed head: the texts a chained overlay extends are its own
        steps: list[dict[Fidelity, Representation]] = []  # each overlaid version's levels

        def text_at(step: int, wanted: Fidelity) -> str:
            """The whole text of fidelity ``wanted`` after overlay step ``step`` (-1: stored)."""
            if step < 0:
                assert stored is not None
                found = read_text(conn, stored.page_id, stored.version, wanted)
                if found is None:
                    raise NotFound(f"page {key!r} has no {wanted.value} text to extend")
                return found
            level = steps[step][wanted]
            if not level.chained:
                return text_at(step, level.same_as) if level.same_as else str(level.text)
            piece = steps[step][level.same_as].text if level.same_as else level.text
            return f"{text_at(step - 1, wanted)}\n{piece}"

        for entry in pending:
            version += 1
            if entry.op is Op.DELETE:
                head = stored = None
                steps = []
                continue
            if (
                head is not None
                and steps
                and entry.op is Op.MERGE
                and not entry.payload.get("content")
            ):
                head = dataclasses.replace(head, content=text_at(len(steps) - 1, Fidelity.FULL))
            reps = journal.prepare(entry, head, conn)
            assert reps is not None
            if not reps.chained:
                stored = None  # a whole text: nothing before it is needed any more
                steps = []
            steps.append(
                {
                    level.fidelity: level
                    for level in self.store.journal_levels(reps, key=key, version=version)
                }
            )
            head = _overlay_head(head, entry, reps, version)
            last_entry = entry
        if head is None:
            raise NotFound(f"page {key!r} is deleted by an update this session staged")
        levels = steps[-1]
        if fidelity not in levels:
            ladder = ", ".join(f.value for f in POLICIES[head.type].ladder)
            raise InvalidInput(
                f"a {head.type.value} page has no {fidelity.value} fidelity (its ladder: {ladder})"
            )
        level = levels[fidelity]
        content = text_at(len(steps) - 1, fidelity)
        return Page(
            key=key,
            type=head.type,
            version=head.version,
            fidelity=fidelity,
            content=content,
            tokens=level.tokens,
            pin=head.pin,
            priority=head.priority,
            scope=last_entry.scope,
            provenance=head.provenance,
            project=self.project,
            session=self.id if last_entry.scope is Scope.SESSION else None,
            structured=head.fields,
            staged=True,
        )

    # -- assembly --------------------------------------------------------------------------------

    def assemble(
        self,
        budget: int,
        *,
        fixed: str = "",
        demand: Sequence[str] = (),
        on_insufficient: str = "raise",
        boost: Mapping[str, float] | None = None,
        form: str = "text",
    ) -> Assembly:
        """Assemble this turn's prompt from committed state under ``budget`` tokens.

        Phase 1 installs the fixed region and every required page at its floor (hard pins,
        bootstrap and constraint pages, ``demand``); phase 2 upgrades by utility per token. If the
        floor does not fit, :class:`InsufficientBudget` is raised (``on_insufficient="raise"``)
        or the floor is returned with ``feasible=False`` (``"report"``); either way the event is
        recorded. The text, tokenized as one string, never exceeds the budget. ``boost`` adds
        utility to pages by key (the evaluation's lookahead oracle uses it). ``form`` is what
        the budget bounds: the text, or the conversation ``asm.to_openai_chat()``,
        ``to_openai_responses()`` or ``to_anthropic()`` returns (``"openai_chat"``,
        ``"openai_responses"``, ``"anthropic"``), counted as :mod:`clawvm_store.render` says.
        """
        self._require_open()
        turn = self.turn
        after_destructive = self._after_destructive
        self._after_destructive = False

        def observe(items: Sequence[Any], feasible: bool) -> list[dict[str, Any]]:
            if not feasible:
                return []  # not a prompt the model sees: physical insufficiency says it all
            resident = {item.candidate.key: item.fidelity for item in items}
            rows = self._prompt_fault_rows(resident, feasible, after_destructive, turn)
            rows.extend(
                self._row(fault_log.HIT, key, {"demanded": True}, turn)
                for key in dict.fromkeys(demand)
                if key in resident
            )
            return rows

        return self._assembler.assemble(
            budget,
            fixed=fixed,
            demand=demand,
            on_insufficient=on_insufficient,
            record=True,
            turn=turn,
            observe=observe,
            boost=boost,
            form=form,  # type: ignore[arg-type]  # checked by the assembler
        )

    def _row(self, kind: str, key: str | None, detail: Any, turn: int) -> dict[str, Any]:
        return fault_log.fault_row(
            session_id=self.id,
            project=self.project,
            turn=turn,
            kind=kind,
            key=key,
            detail=detail,
            at=self.store.clock(),
        )

    def _prompt_fault_rows(
        self, resident: Mapping[str, Fidelity], feasible: bool, after_destructive: bool, turn: int
    ) -> list[dict[str, Any]]:
        if not feasible:
            return []  # physical insufficiency is recorded on its own; no policy could do better
        required = fault_log.required_pages(self._assembler.table.required())
        return [
            self._row(kind.value, key, detail, turn)
            for kind, key, detail in fault_log.prompt_faults(
                required, resident, after_destructive=after_destructive
            )
        ]

    def observe_prompt(
        self,
        resident: Mapping[str, Fidelity | str],
        *,
        record: bool = False,
        budget: int | None = None,
        floor_fits: bool = True,
    ) -> list[FaultKind]:
        """Check a prompt the harness assembled itself; record and return the faults it commits.

        ``resident`` maps each page key in the prompt to its fidelity. A hard-pinned or bootstrap
        or constraint page missing or below its floor is ``pinned_invariant_miss`` (or
        ``post_compaction_bootstrap`` for a bootstrap page in the first prompt after a compaction
        or reset), unless ``floor_fits`` is False (then no policy could have done better). With
        ``record=True`` the prompt is recorded like an assembly. The engine runs the same check
        on every prompt it assembles.
        """
        self._require_open()
        from .store import coerce_enum

        fidelities = {
            str(key): coerce_enum(Fidelity, value, "fidelity") for key, value in resident.items()
        }
        with self.store.db.transaction(write=False) as conn:
            self._assembler.table.refresh(conn)
        turn = self.turn
        rows = self._prompt_fault_rows(fidelities, floor_fits, self._after_destructive, turn)
        self._after_destructive = False
        if record:
            self._assembler.record_external(fidelities, budget or 0, turn, rows)
        else:
            with self.store.db.transaction(sync="normal") as conn:
                fault_log.record(conn, rows)
        return [FaultKind(row["kind"]) for row in rows]

    def fetch(self, key: str) -> Page:
        """Retrieve a page by key through the retrieval path (what a harness without pointers does).

        Counts a ``refetch`` when the page had been in an earlier prompt and is absent from the
        last one: its content had been resident and was evicted with no pointer left.
        """
        self._require_open()
        page = self.store.page(key, project=self.project, session=self.id)
        rows = self._refetches([page], self.turn)
        if rows:
            with self.store.db.transaction(sync="normal") as conn:
                fault_log.record(conn, rows)
        return page

    def configure_assembly(
        self,
        *,
        weights: Weights | None = None,
        hysteresis: bool = True,
        pins: bool = True,
        cache: str | CachePricing | None = None,
    ) -> None:
        """Assemble with other utility weights, without hysteresis, or (an ablation for the
        evaluation only) without the floor for pinned and bootstrap/constraint pages.

        ``cache`` makes assembly play to a provider's prompt cache: ``"anthropic"``,
        ``"openai"`` (presets of :data:`clawvm_store.cache.CACHE_PRESETS`), a
        :class:`~clawvm_store.cache.CachePricing`, or ``"none"`` (the default: as before).
        Prompts then stay append-only between compaction-like steps; floors, pins and demanded
        pages are never traded for cache hits.
        """
        self._assembler = Assembler(
            self.store,
            self.project,
            self.id,
            weights=weights,
            hysteresis=hysteresis,
            pins=pins,
            cache=cache,
        )

    def _resident_fidelity(self, key: str | None, version: int | None = None) -> Fidelity | None:
        """The fidelity ``key`` had in this session's last recorded prompt (None: absent).

        With ``version``, only that version counts: a prompt holding an older version of the
        page does not hold this one.
        """
        if key is None:
            return None
        previous = self._assembler.previous()
        for page_id, fidelity in previous.items():
            candidate = self._assembler.table.by_id.get(page_id)
            if candidate is not None and candidate.key == key:
                if version is not None and self._assembler.previous_version(page_id) != version:
                    return None
                return fidelity
        return None

    # -- provider messages (issue 15) ------------------------------------------------------------

    def _next_message_seqs(self, count: int) -> list[int]:
        """The next ``count`` message numbers; a number once handed out is never reused."""
        if self._message_top is None:
            with self.store.db.transaction(write=False) as conn:
                keys = [
                    conn.execute(
                        _HIGHEST_PAGE_MESSAGE, {"b_project": self.project, "b_session": self.id}
                    ).scalar(),
                    conn.execute(_HIGHEST_STAGED_MESSAGE, {"b_session": self.id}).scalar(),
                ]
            self._message_top = max((key_seq(key) or 0 for key in keys if key), default=0)
        first = self._message_top + 1
        self._message_top += count
        return list(range(first, first + count))

    def append_message(
        self,
        role: str,
        content: str | None,
        *,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        tool_call_id: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> StagedUpdate:
        """Record one provider message as the session's next conversation page (journaled)."""
        return self.append_messages(
            [
                {
                    "role": role,
                    "content": content,
                    "tool_calls": tool_calls,
                    "tool_call_id": tool_call_id,
                    "name": name,
                    "metadata": metadata,
                }
            ]
        )[0]

    def append_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[StagedUpdate]:
        """Record several messages (each the keyword arguments of :meth:`append_message`).

        They are journaled in one transaction: after a crash either all of them are there or
        none is, and a batch costs one commit rather than one per message.
        """
        self._require_open()
        updates = self._message_updates(messages)
        return self._stage_all(updates) if updates else []

    def _message_updates(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> list[tuple[Update, str, str]]:
        """The checked conversation-page updates of ``messages``, numbered after the last one."""
        envelopes = []
        for fields in messages:
            unknown = set(fields) - _MESSAGE_FIELDS
            if unknown or "role" not in fields:
                raise InvalidInput(
                    "a message is role, content, tool_calls, tool_call_id, name and metadata"
                )
            calls = fields.get("tool_calls")
            extra = fields.get("metadata")
            envelopes.append(
                build_envelope(
                    fields["role"],
                    fields.get("content"),
                    list(calls) if calls is not None else None,
                    fields.get("tool_call_id"),
                    fields.get("name"),
                    dict(extra) if extra is not None else None,
                )
            )
        if not envelopes:
            return []
        updates: list[tuple[Update, str, str]] = []
        for envelope, seq, fields in zip(
            envelopes, self._next_message_seqs(len(envelopes)), messages, strict=True
        ):
            key = message_key(seq)
            envelope["seq"] = seq
            content = fields.get("content")
            updates.append(
                self._update_of(
                    key,
                    type=PageType.CONVERSATION,
                    # An empty page is refused by the schema; a tools-only turn keeps a placeholder.
                    content=content if content else _placeholder(envelope["role"], seq),
                    op=Op.SET,
                    expected_version=None,
                    priority=None,
                    pin=None,
                    scope=None,
                    provenance=None,
                    structured={
                        "span_id": key,
                        "start": str(seq),
                        "end": str(seq),
                        "roles": [envelope["role"]],
                        "message": envelope,
                    },
                    idempotency_key=None,
                )
            )
        return updates

    def messages(self) -> list[Message]:
        """Every live message of the session (committed and staged), in order.

        One read of the committed messages and one of the staged entries, whatever the length
        of the session; the staged ones are overlaid in LSN order as the boundary applies them.
        """
        self._require_open()
        found: dict[str, Message] = {}
        with self.store.db.transaction(write=False) as conn:
            for row in conn.execute(
                _MESSAGE_PAGES, {"b_project": self.project, "b_session": self.id}
            ):
                text = row.content
                if row.chain_start is not None or row.same_as is not None:
                    text = read_text(conn, row.id, row.version, Fidelity.FULL)
                message = _message_of(row.key, text, json.loads(row.fields or "null"))
                if message is not None:
                    found[row.key] = message
        for entry in self.staged():
            if key_seq(entry.key) is None or entry.project != self.project:
                continue
            if entry.op is Op.DELETE:
                found.pop(entry.key, None)
            elif entry.op is Op.SET:
                message = _message_of(
                    entry.key, entry.payload.get("content"), entry.payload.get("structured")
                )
                if message is not None:
                    found[entry.key] = message
                else:
                    found.pop(entry.key, None)
            else:  # an append or merge to a message page: the overlay decides what it reads
                try:
                    page = self.page(entry.key)
                except NotFound:
                    found.pop(entry.key, None)
                    continue
                message = _message_of(entry.key, page.content, page.structured)
                if message is not None:
                    found[entry.key] = message
        return [found[key] for key in sorted(found)]

    def delete_message(self, key: str) -> StagedUpdate:
        """A journaled delete (tombstone) of one message page; its seq is never reused."""
        self._require_open()
        if key_seq(key) is None:
            raise InvalidInput(f"{key!r} is not a message key")
        # A delete must name the version it removes (DESTRUCTIVE_OP otherwise): the one we see.
        return self.stage(key, op=Op.DELETE, expected_version=self.page(key).version)

    # -- tools, recall, resolution ---------------------------------------------------------------

    def tool_call(
        self,
        name: str,
        args: Mapping[str, Any],
        run: Callable[..., Any],
        *,
        effect: str | None = None,
        idempotency_key: str | None = None,
        fresh: bool = False,
        resources: Sequence[str] | None = None,
        annotations: Mapping[str, Any] | None = None,
        cwd: str | None = None,
        call_id: str | None = None,
    ) -> ToolResult:
        """Run a tool through the durable ledger; ``run(**args)`` is called only when needed.

        ``call_id`` (the provider's id of the call) links the result page to that call, so the
        renderers show it as the call's tool result (an explicit ``tool`` message wins).

        Returns ``ToolResult(key, content, source)`` where ``source`` is ``"executed"``,
        ``"resident"`` (a repeat served from the prompt, a ``duplicate_signature`` alert) or
        ``"resolved"`` (a repeat served from its page without running, a hit). ``effect`` is
        ``read``, ``volatile`` (never served), ``write`` or ``unknown``; when not given it comes
        from the session's rule for the tool, else from MCP ``annotations``
        (``readOnlyHint``, ``openWorldHint``, ``destructiveHint``), else ``read``. ``cwd``
        (default: the session's) anchors relative paths. See :mod:`clawvm_store.mediator` for
        the rules, including invalidation by writes.
        """
        self._require_open()
        return self._mediator.call(
            name,
            args,
            run,
            effect=effect,
            idempotency_key=idempotency_key,
            fresh=fresh,
            resources=resources,
            annotations=annotations,
            cwd=cwd,
            call_id=call_id,
        )

    def configure_tools(
        self, *, cwd: str | None = None, rules: Mapping[str, str] | None = None
    ) -> None:
        """Set the working directory relative paths resolve against, and per-tool effects.

        ``rules`` maps a tool name to its effect (``read``, ``volatile``, ``write``,
        ``unknown``); a call's own ``effect`` still wins. Settings last for this object.
        """
        if cwd is not None:
            if not isinstance(cwd, str) or not cwd.strip():
                raise InvalidInput("a working directory must be a non-empty string")
            self.cwd = cwd
        if rules is not None:
            bad = {tool: effect for tool, effect in rules.items() if effect not in EFFECTS}
            if bad:
                tool, effect = next(iter(bad.items()))
                raise InvalidInput(
                    f"tool {tool!r}: effect must be one of {', '.join(EFFECTS)}, not {effect!r}"
                )
            self.tool_rules.update(rules)

    def tool_history(self) -> list[ToolCallRecord]:
        """Every tool call of this session with its one result, in call order."""
        return self._mediator.history()

    def invalidate(self, resources: Sequence[str]) -> int:
        """Mark cached read results touching ``resources`` stale (e.g. after an edit by hand)."""
        return self._mediator.invalidate(resources)

    def resolve(self, handle: str) -> Page:
        """The full content behind a pointer (or a key) this session can see; counts a hit."""
        page = self.store.resolve(handle, project=self.project, session=self.id)
        with self.store.db.transaction(sync="normal") as conn:
            fault_log.record(
                conn, [self._row(fault_log.HIT, page.key, {"resolved": True}, self.turn)]
            )
        return page

    def recall(self, query: str, *, limit: int = 5) -> Recall:
        """Search the pages this session may see; the result always carries a reason.

        ``ok`` with pages; ``no_match``; ``denied`` when only other sessions' pages match;
        ``backend_error`` when the search failed (``detail`` says how). A page that had been in
        an earlier prompt and was evicted without a pointer counts a ``refetch``.
        """
        self._require_open()
        if not isinstance(query, str):
            raise InvalidInput("a recall query must be a string")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise InvalidInput("limit must be a positive integer")
        turn = self.turn
        rows: list[dict[str, Any]] = []
        try:
            found = self.store.recall_backend.search(self.store, self.project, query, limit)
        except Exception as exc:  # any backend failure is reported, never swallowed
            result = Recall([], "backend_error", f"{type(exc).__name__}: {exc}")
        else:
            keys, hidden = visible(found.hits, self.id)
            if keys:
                pages = [
                    self.store.page(key, project=self.project, session=self.id)
                    for key in keys[:limit]
                ]
                result = Recall(pages, "ok")
                rows.extend(self._refetches(pages, turn))
            elif hidden:
                result = Recall([], "denied", "only pages of other sessions match")
            elif found.reason is None:
                rows.append(self._row(FaultKind.SILENT_RECALL.value, None, {"query": query}, turn))
                result = Recall([], "backend_error", "the backend returned nothing and no reason")
            else:
                result = Recall([], found.reason, found.detail)
        if rows:
            with self.store.db.transaction(sync="normal") as conn:
                fault_log.record(conn, rows)
        return result

    def _refetches(self, pages: Sequence[Page], turn: int) -> list[dict[str, Any]]:
        """Recalled pages that had been resident and were evicted with no pointer left."""
        rows = []
        current = {key for key in (self._keys_in_last_prompt() or ())}
        with self.store.db.transaction(write=False) as conn:
            for page in pages:
                if page.key in current:
                    continue
                seen = conn.execute(
                    select(t.assembly_items.c.key)
                    .join(t.assemblies, t.assemblies.c.id == t.assembly_items.c.assembly_id)
                    .where(
                        t.assemblies.c.session_id == self.id,
                        t.assembly_items.c.key == page.key,
                        t.assembly_items.c.fidelity.is_not(None),
                    )
                    .limit(1)
                ).first()
                if seen is not None:
                    rows.append(
                        self._row(FaultKind.REFETCH.value, page.key, {"via": "recall"}, turn)
                    )
        return rows

    def _keys_in_last_prompt(self) -> set[str]:
        table = self._assembler.table.by_id
        return {table[pid].key for pid in self._assembler.previous() if pid in table}

    def observe_usage(self, prompt_tokens: int) -> float:
        """Report what the provider counted for the last prompt; returns the learned margin.

        Later assemblies shrink their effective budget by the worst recent ratio of the
        provider's count to ours, so a provider that counts more never overflows the window.
        """
        return self._assembler.observe_usage(prompt_tokens)

    # -- boundaries ----------------------------------------------------------------------------

    def _boundary(
        self,
        boundary: Boundary,
        *,
        close: bool = False,
        writeback: bool = True,
        stage: Sequence[tuple[Update, str, str]] = (),
    ) -> WritebackResult:
        self._require_open()
        prepared = self._prepare_all(stage)
        journaled: list[tuple[int, bool]] = []

        def stage_first(conn: Connection) -> dict[int, PreparedUpdate]:
            journaled.extend(self._journal_all(conn, stage))
            return _ready_by_lsn(prepared, journaled)

        result = self.store._writeback_session(
            self,
            boundary,
            close=close,
            writeback=writeback,
            stage_first=stage_first if stage else None,
        )
        if stage:
            self._changes += 1
            result.staged = self._acknowledge(stage, journaled)
        if result.rejected or result.discarded:
            self._changes += 1  # what was staged and read back is gone
        if boundary is Boundary.TURN_END:
            self._turn += 1
        if boundary in (Boundary.COMPACTION, Boundary.RESET):
            self._after_destructive = True
        if _crashpoints.ACTIVE:
            _crashpoints.ack(
                "boundary",
                session=self.id,
                boundary=boundary.value,
                event=result.event_id,
                committed=result.committed,
                rejected=result.rejected,
                versions={str(lsn): version for lsn, version in result.versions.items()},
                discarded=result.discarded,
            )
        return result

    def end_turn(self, messages: Sequence[Mapping[str, Any]] = ()) -> WritebackResult:
        """Write back at the end of a turn and advance the turn counter.

        ``messages`` (each the keyword arguments of :meth:`append_message`) are journaled in the
        same transaction first, as the turn's last words: one commit instead of two, and their
        receipts are in the result's ``staged``. Either all of it happens or none of it.
        """
        self._require_open()
        return self._boundary(Boundary.TURN_END, stage=self._message_updates(messages))

    def flush(self) -> WritebackResult:
        """Write back now (a memory flush), without ending the turn."""
        return self._boundary(Boundary.FLUSH)

    def compact(self, *, writeback: bool = True) -> WritebackResult:
        """Write back, then record a compaction: the next assembly restores bootstrap pages.

        ``writeback=False`` models a harness that skips the flush: staged updates are discarded
        (kept in the journal as ``quarantined``, reason ``DISCARDED``) and each one is recorded
        as a ``flush_miss`` fault. Never do this in a real harness; it exists to test them.
        """
        return self._boundary(Boundary.COMPACTION, writeback=writeback)

    def prune(self, *, writeback: bool = True) -> WritebackResult:
        """Write back, then record a prune of the working context.

        ``writeback=False`` models a harness that skips the flush: staged updates are discarded
        (kept in the journal as ``quarantined``, reason ``DISCARDED``) and each one is recorded
        as a ``flush_miss`` fault. Never do this in a real harness; it exists to test them.
        """
        return self._boundary(Boundary.PRUNE, writeback=writeback)

    def reset(self, *, writeback: bool = True) -> WritebackResult:
        """Write back, then record a reset: the context starts afresh from durable state.

        ``writeback=False`` models a harness that skips the flush: staged updates are discarded
        (kept in the journal as ``quarantined``, reason ``DISCARDED``) and each one is recorded
        as a ``flush_miss`` fault. Never do this in a real harness; it exists to test them.
        """
        return self._boundary(Boundary.RESET, writeback=writeback)

    def close(self, *, writeback: bool = True) -> WritebackResult:
        """Write back at ``session_end`` and release the session.

        ``writeback=False`` discards staged updates as ``flush_miss`` faults (harness tests only).
        """
        result = self._boundary(Boundary.SESSION_END, close=True, writeback=writeback)
        self._closed = True
        return result


_MESSAGE_FIELDS = {"role", "content", "tool_calls", "tool_call_id", "name", "metadata"}

# Message keys are zero-padded, so the greatest key holds the highest seq; deleted pages count
# (a number is never reused) and so do staged entries not yet applied.
_HIGHEST_PAGE_MESSAGE = sql_text(
    "SELECT MAX(key) FROM pages WHERE project = :b_project AND session_id = :b_session"
    f" AND key LIKE '{MESSAGE_PREFIX}%'"
)
_HIGHEST_STAGED_MESSAGE = sql_text(
    "SELECT MAX(key) FROM journal WHERE session_id = :b_session AND state = 'staged'"
    f" AND key LIKE '{MESSAGE_PREFIX}%'"
)
# Every live message page of a session with its head's full text and structured fields.
_MESSAGE_PAGES = sql_text(
    "SELECT pages.id, pages.key, pages.version, page_versions.fields, representations.content,"
    " representations.chain_start, representations.same_as"
    " FROM pages"
    " JOIN page_versions"
    "   ON page_versions.page_id = pages.id AND page_versions.version = pages.version"
    " LEFT OUTER JOIN representations"
    "   ON representations.page_id = pages.id AND representations.version = pages.version"
    "  AND representations.fidelity = 'full'"
    " WHERE pages.project = :b_project AND pages.session_id = :b_session"
    f" AND pages.key LIKE '{MESSAGE_PREFIX}%' AND pages.deleted = 0"
    " ORDER BY pages.key"
)


def _placeholder(role: str, seq: int) -> str:
    return f"[{role} message {seq}]"


def _message_of(key: str, content: str | None, fields: Any) -> Message | None:
    """The message a conversation page holds, or None when its fields carry no envelope."""
    envelope = fields.get("message") if isinstance(fields, dict) else None
    if not isinstance(envelope, dict):
        return None
    seq = int(envelope.get("seq") or key_seq(key) or 0)
    role = str(envelope["role"])
    text = content or ""
    if text == _placeholder(role, seq):
        text = ""
    return Message(
        key=key,
        seq=seq,
        role=role,
        content=text,
        tool_calls=list(envelope.get("tool_calls") or []),
        tool_call_id=envelope.get("tool_call_id"),
        name=envelope.get("name"),
        metadata=envelope.get("metadata"),
    )


def _ready_by_lsn(
    prepared: Sequence[ContentRepresentations | None], staged: Sequence[tuple[int, bool]]
) -> dict[int, PreparedUpdate]:
    """The fidelities built before staging, by the LSN each update got (a duplicate has none)."""
    return {
        lsn: PreparedUpdate(ready)
        for ready, (lsn, duplicate) in zip(prepared, staged, strict=True)
        if ready is not None and not duplicate
    }


def _overlay_head(head: Any, entry: Entry, reps: ContentRepresentations, version: int) -> Any:
    from .journal import Head

    payload = entry.payload
    page_type = entry.page_type or (head.type if head else None)
    assert page_type is not None
    return Head(
        page_id=head.page_id if head else 0,
        type=page_type,
        version=version,
        pin=Pin(payload["pin"])
        if payload.get("pin")
        else (head.pin if head else POLICIES[page_type].default_pin),
        priority=payload["priority"]
        if payload.get("priority") is not None
        else (head.priority if head else 0.0),
        scope=entry.scope,
        provenance=payload.get("provenance") or (head.provenance if head else None),
        deleted=False,
        fields=reps.fields,
        basis=basis_after(reps),
        content=None if reps.chained else reps.levels[0].text,
    )


def ensure_session(
    conn: Connection,
    *,
    session_id: str,
    project: str,
    principal: str | None,
    owner: str,
    now: str,
) -> None:
    """Create the session row, or resume it: re-open it and take ownership.

    Resuming under another project or principal is refused: a session id names one agent run.
    """
    row = conn.execute(select(t.sessions).where(t.sessions.c.id == session_id)).first()
    if row is None:
        conn.execute(
            insert(t.sessions).values(
                id=session_id,
                project=project,
                principal=principal,
                owner=owner,
                state="open",
                turn=0,
                created_at=now,
                updated_at=now,
            )
        )
        return
    if row.project != project:
        raise InvalidInput(
            f"session {session_id!r} belongs to project {row.project!r}, not {project!r}"
        )
    if row.principal != principal:
        raise InvalidInput(
            f"session {session_id!r} belongs to principal {row.principal!r}, not {principal!r}"
        )
    conn.execute(
        update(t.sessions)
        .where(t.sessions.c.id == session_id)
        .values(state="open", owner=owner, updated_at=now)
    )
