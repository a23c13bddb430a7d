"""The tool mediator: every tool call goes through a durable ledger, and no tool runs twice needlessly.

``Session.tool_call(name, args, run, effect=...)``:

* The **signature** of a call is its tool name plus the canonical JSON of its arguments.
* The ledger records the call (state ``started``) in its own transaction *before* ``run`` is
  invoked, and its result after, as an ``evidence`` page whose provenance is the call. Call ids are
  scoped per turn (``t3.2``), because some providers reuse ids such as ``call_0`` across turns.
* A ``read`` repeat whose result is resident in full in the last prompt is served without running
  (``source="resident"``, a ``duplicate_signature`` alert); one whose result was evicted or
  degraded is served by resolving its page (``source="resolved"``, a hit). ``fresh=True`` runs it
  again; running a read while a valid result exists counts a ``duplicate_tool`` fault.
* A result is served from the ledger only when it provably cannot have changed. Effects:
  ``read`` (a pure read of its resources), ``volatile`` (time, logs, VCS state, processes, the
  network: never served, always run), ``write`` (changes the resources it names) and ``unknown``
  (a shell command, a build, a sub-agent: anything may have changed). A ``write`` invalidates
  the cached reads whose resources overlap its own (the same path, a file under a directory it
  wrote, a path its glob matches, and the reverse for directory and glob reads); a ``write``
  that names no resource, and every ``unknown`` call, invalidates every cached read of the
  project under the call's working directory (all of them when none is known). A read that
  names no resource is invalidated by any write. Paths are normalised (made absolute against the
  working directory, ``.``/``..`` folded, symlinks resolved where they exist on this machine).
* A ``write`` call is never re-run automatically: if the last call with its signature (or its
  idempotency key) was interrupted by a crash, the repeat raises :class:`InterruptedToolCall`
  until the caller confirms with ``fresh=True``. Recovery closes a call that was started and
  never finished with an explicit ``interrupted`` result, so every call has exactly one result.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, select, update

from . import _crashpoints
from . import faults as fault_log
from . import schema as t
from .errors import InterruptedToolCall, InvalidInput
from .journal import Update, inserted_id
from .pages import FaultKind, Fidelity, Op, PageType, Scope
from .representations import canonical_json

if TYPE_CHECKING:
    from .session import Session

Effect = Literal["read", "volatile", "write", "unknown"]
EFFECTS: tuple[Effect, ...] = ("read", "volatile", "write", "unknown")
"""Every effect a call can have, from the safest to serve to the least known."""
Source = Literal["executed", "resident", "resolved"]

RESOURCE_ARGUMENTS = (
    "path",
    "file",
    "file_path",
    "filepath",
    "filename",
    "paths",
    "files",
    "uri",
    "url",
)
"""Argument names whose values name the resource a call touches, when none is declared."""


@dataclass(frozen=True)
class ToolResult:
    """The result of a mediated tool call (contract): its evidence page key, content and source."""

    key: str
    content: str
    source: Source
    call_id: str = ""
    version: int = 0


@dataclass(frozen=True)
class ToolCallRecord:
    """One ledger row: a call and its one result."""

    call_id: str
    name: str
    args: dict[str, Any]
    effect: str
    signature: str
    state: str
    result_key: str | None
    result_version: int | None
    error: str | None
    turn: int


def signature_of(name: str, args: Mapping[str, Any]) -> str:
    """SHA-256 of the tool name and the canonical JSON of its arguments."""
    return hashlib.sha256(f"{name}\x00{canonical_json(dict(args))}".encode()).hexdigest()


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def normalize_resource(resource: str, cwd: str | None = None) -> str:
    """A resource as the ledger compares it.

    A URI or a declared name with a scheme (``https://…``, ``db:orders``) is kept as is. A
    Windows path's backslashes become slashes. A path is made absolute against ``cwd`` when relative and one is known, its ``.`` and ``..`` folded
    and a trailing slash dropped; where the path exists on this machine its symlinks are
    resolved, so two spellings of one file compare equal.
    """
    text = resource.strip()
    if not text or (_SCHEME.match(text) and not _WINDOWS_DRIVE.match(text)):
        return text
    if "\\" in text and (_WINDOWS_DRIVE.match(text) or "/" not in text):
        # A Windows path (C:\x, or components\a.tsx with no slash at all): on POSIX a backslash
        # may be part of a name, but agents on Windows write the same file both ways.
        text = text.replace("\\", "/")
    if text.startswith("~"):
        text = os.path.expanduser(text)
    if cwd and not posixpath.isabs(text) and not _WINDOWS_DRIVE.match(text):
        text = posixpath.join(cwd, text)
    folded = posixpath.normpath(text)
    if posixpath.isabs(folded) and os.path.lexists(folded):
        folded = os.path.realpath(folded)
    return folded


def resources_of(
    args: Mapping[str, Any], declared: Sequence[str] | None, cwd: str | None = None
) -> list[str]:
    """The resources a call touches, normalised: the declared ones, else path-like arguments."""
    if declared is not None:
        return sorted({normalize_resource(str(resource), cwd) for resource in declared} - {""})
    found: set[str] = set()
    for name in RESOURCE_ARGUMENTS:
        value = args.get(name)
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(str(item) for item in value if isinstance(item, str))
    return sorted({normalize_resource(resource, cwd) for resource in found} - {""})


def _covers(outer: str, inner: str) -> bool:
    """Whether ``outer`` (a path, a directory or a glob) takes in ``inner``."""
    if outer == inner:
        return True
    if inner.startswith(outer.rstrip("/") + "/"):
        return True
    return any(ch in outer for ch in "*?[") and fnmatch.fnmatchcase(inner, outer)


def overlaps(written: str, read: str) -> bool:
    """Whether a write of ``written`` can change what a read of ``read`` returned.

    The same resource; a file under a directory that was written (or matched by a glob that was);
    or a directory or glob read (a listing, a grep) that takes in the written file.
    """
    return _covers(written, read) or _covers(read, written)


def effect_from_annotations(annotations: Mapping[str, Any], has_resources: bool) -> Effect:
    """The effect MCP tool annotations imply.

    ``readOnlyHint`` true is a read, and a pure one only when ``openWorldHint`` is false (an
    open-world tool, the MCP default, reads what others change: volatile). Anything else writes:
    with the resources its arguments name, or with unknown effect when it names none.
    """
    if annotations.get("readOnlyHint") is True:
        return "read" if annotations.get("openWorldHint") is False else "volatile"
    return "write" if has_resources else "unknown"


def result_key(name: str, signature: str) -> str:
    """The evidence page a signature's results are kept in (re-runs are new versions)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:64] or "tool"
    return f"evidence/{safe}/{signature[:16]}"


def render_output(output: object) -> str:
    """A tool's output as page content: text as is, bytes decoded, data as canonical JSON,
    anything else by its repr (so a result is always recorded, never left half-done)."""
    if isinstance(output, str):
        text = output
    elif isinstance(output, bytes | bytearray):
        text = bytes(output).decode("utf-8", "replace")
    else:
        try:
            text = canonical_json(output)
        except (TypeError, ValueError):
            text = repr(output)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if text.strip() else "(empty result)"


class ToolMediator:
    """Runs one session's tool calls through the ledger."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.store = session.store

    def call(
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
        """Mediate one call; see the module docstring for the rules.

        The effect is, in this order: the one given; the session's rule for the tool
        (:meth:`Session.configure_tools`); the one MCP ``annotations`` imply; ``read``.
        ``call_id`` is the provider's id of the call (issue 15): the result page records it in
        its provenance (``call_ids``), so the renderers show the page as that call's result.
        """
        if call_id is not None and (not isinstance(call_id, str) or not call_id):
            raise InvalidInput("a provider call_id must be a non-empty string")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("a tool name must be a non-empty string")
        if not isinstance(args, Mapping):
            raise InvalidInput("tool arguments must be a mapping")
        if annotations is not None and not isinstance(annotations, Mapping):
            raise InvalidInput("tool annotations must be a mapping")
        if cwd is not None and not isinstance(cwd, str):
            raise InvalidInput("a working directory must be a string")
        if not callable(run):
            raise InvalidInput("run must be callable")
        if resources is not None and (
            isinstance(resources, str)
            or not isinstance(resources, Sequence)
            or not all(isinstance(resource, str) for resource in resources)
        ):
            raise InvalidInput("resources must be a list of strings")
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise InvalidInput("an idempotency key must be a string")
        try:
            arguments = json.loads(canonical_json(dict(args)))
            f"{name}\x00{canonical_json(arguments)}".encode()
        except UnicodeEncodeError:
            raise InvalidInput("a tool name and its arguments must be valid Unicode text") from None
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"tool arguments must be JSON-serializable: {exc}") from None
        signature = signature_of(name, arguments)
        session = self.session
        store = self.store
        cwd = cwd if cwd is not None else session.cwd
        touched = resources_of(arguments, resources, cwd)
        kind = self._effect(name, effect, annotations, bool(touched))
        if kind == "write" and not touched:
            kind = "unknown"  # a write that names nothing it changes may have changed anything
        if kind == "volatile":
            # What it reads changes on its own (time, logs, VCS state): never served, and running
            # it again is not a duplicate.
            return self._execute(
                name,
                arguments,
                run,
                kind,
                signature,
                touched,
                idempotency_key,
                False,
                cwd,
                provider_id=call_id,
            )
        with store.db.transaction(write=False) as conn:
            prior = self._prior(conn, signature, idempotency_key)
        if prior is not None and idempotency_key is not None and prior.signature != signature:
            raise InvalidInput(
                f"idempotency key {idempotency_key!r} was already used for another call "
                f"({prior.call_id}: {prior.name})"
            )
        if prior is not None and kind in ("write", "unknown") and not fresh:
            if prior.state in ("started", "interrupted"):
                raise InterruptedToolCall(
                    f"write call {prior.call_id} ({name}) was interrupted before it finished; "
                    "it is not re-run automatically: check its effect, then call again with "
                    "fresh=True to run it"
                )
            if idempotency_key is not None and prior.state == "finished":
                return self._served(prior, "resolved", hit=True)
        # Only a pure read's result can be served: a volatile one was stale the moment it came.
        cached = prior is not None and prior.effect == "read"
        if cached and kind == "read" and not fresh:
            if prior.state == "finished" and prior.invalidated_at is None:
                held = session._resident_fidelity(prior.result_key, prior.result_version)
                resident = held is Fidelity.FULL
                return self._served(prior, "resident" if resident else "resolved", hit=True)
        duplicate = (
            kind == "read" and cached and prior.state == "finished" and prior.invalidated_at is None
        )
        return self._execute(
            name,
            arguments,
            run,
            kind,
            signature,
            touched,
            idempotency_key,
            duplicate,
            cwd,
            provider_id=call_id,
        )

    def _effect(
        self,
        name: str,
        given: str | None,
        annotations: Mapping[str, Any] | None,
        has_resources: bool,
    ) -> Effect:
        if given is None:
            given = self.session.tool_rules.get(name)
        if given is None and annotations is not None:
            return effect_from_annotations(annotations, has_resources)
        if given is None:
            return "read"
        if given not in EFFECTS:
            raise InvalidInput(f"effect must be one of {', '.join(EFFECTS)}, not {given!r}")
        return EFFECTS[EFFECTS.index(given)]

    def _prior(self, conn: Connection, signature: str, idempotency_key: str | None) -> Any:
        query = select(t.tool_calls).where(t.tool_calls.c.session_id == self.session.id)
        if idempotency_key is not None:
            query = query.where(t.tool_calls.c.idempotency_key == idempotency_key)
        else:
            query = query.where(t.tool_calls.c.signature == signature)
        return conn.execute(query.order_by(t.tool_calls.c.id.desc()).limit(1)).first()

    def _served(self, prior: Any, source: Source, *, hit: bool) -> ToolResult:
        session = self.session
        page = self.store.page(
            prior.result_key,
            project=session.project,
            session=session.id,
            version=prior.result_version,
        )
        rows = []
        turn = session.turn
        if hit:
            rows.append(self._fault(fault_log.HIT, prior.result_key, {"call": prior.call_id}, turn))
        if source == "resident":
            rows.append(
                self._fault(
                    FaultKind.DUPLICATE_SIGNATURE.value,
                    prior.result_key,
                    {"call": prior.call_id, "tool": prior.name},
                    turn,
                )
            )
        with self.store.db.transaction(sync="normal") as conn:
            fault_log.record(conn, rows)
        return ToolResult(prior.result_key, page.content, source, prior.call_id, page.version)

    def _fault(
        self, kind: str, key: str | None, detail: Mapping[str, Any], turn: int
    ) -> dict[str, Any]:
        return fault_log.fault_row(
            session_id=self.session.id,
            project=self.session.project,
            turn=turn,
            kind=kind,
            key=key,
            detail=detail,
            at=self.store.clock(),
        )

    def _execute(
        self,
        name: str,
        args: dict[str, Any],
        run: Callable[..., Any],
        effect: Effect,
        signature: str,
        touched: list[str],
        idempotency_key: str | None,
        duplicate: bool,
        cwd: str | None,
        provider_id: str | None = None,
    ) -> ToolResult:
        session = self.session
        store = self.store
        turn = session.turn
        key = result_key(name, signature)
        # The ledger entry commits before the tool runs: a crash from here on leaves a call
        # that recovery closes as interrupted instead of one nobody knows about.
        with store.db.transaction(sync="normal") as conn:
            count = conn.execute(
                select(t.tool_calls.c.id).where(
                    t.tool_calls.c.session_id == session.id, t.tool_calls.c.turn == turn
                )
            ).all()
            call_id = f"t{turn}.{len(count) + 1}"
            if idempotency_key is not None:
                # A deliberate re-run (fresh=True) of a call that holds this key: the new call
                # takes the key over, so later repeats find the newest call (the key is unique
                # per session; the older call keeps its row, signature and result).
                conn.execute(
                    update(t.tool_calls)
                    .where(
                        t.tool_calls.c.session_id == session.id,
                        t.tool_calls.c.idempotency_key == idempotency_key,
                    )
                    .values(idempotency_key=None)
                )
            row_id = inserted_id(
                conn.execute(
                    t.tool_calls.insert(),
                    {
                        "session_id": session.id,
                        "project": session.project,
                        "turn": turn,
                        "call_id": call_id,
                        "name": name,
                        "args": canonical_json(args),
                        "signature": signature,
                        "effect": effect,
                        "resources": json.dumps(touched),
                        "idempotency_key": idempotency_key,
                        "state": "started",
                        "started_at": store.clock(),
                    },
                )
            )
            if duplicate:
                fault_log.record(
                    conn,
                    [
                        self._fault(
                            FaultKind.DUPLICATE_TOOL.value,
                            key,
                            {"call": call_id, "tool": name},
                            turn,
                        )
                    ],
                )
        if _crashpoints.ACTIVE:
            # Written right before the tool runs, with no crash point in between: a line here
            # means the tool's effect may have happened (the kit counts executions by it).
            _crashpoints.ack(
                "tool_exec",
                session=session.id,
                call=row_id,
                call_id=call_id,
                name=name,
                signature=signature,
                effect=effect,
                idempotency_key=idempotency_key,
            )
        try:
            output = run(**args)
        except Exception as exc:
            if _crashpoints.ACTIVE:  # the tool returned (by raising): its effect is done
                _crashpoints.ack("tool_ran", session=session.id, call=row_id)
            self._finish(
                row_id,
                call_id,
                key,
                f"error: {type(exc).__name__}: {exc}",
                "failed",
                effect,
                touched,
                cwd,
                error=str(exc),
                provider_id=provider_id,
            )
            raise
        if _crashpoints.ACTIVE:
            # The tool returned: whatever it does to the world is done. A kill between the
            # tool_exec line and this one landed inside the tool (its effect is unknown).
            _crashpoints.ack("tool_ran", session=session.id, call=row_id)
        content = render_output(output)
        version = self._finish(
            row_id, call_id, key, content, "finished", effect, touched, cwd, provider_id=provider_id
        )
        return ToolResult(key, content, "executed", call_id, version)

    def _finish(
        self,
        row_id: int,
        call_id: str,
        key: str,
        content: str,
        state: str,
        effect: Effect,
        touched: list[str],
        cwd: str | None,
        *,
        error: str | None = None,
        provider_id: str | None = None,
    ) -> int:
        """Write the result page and close the call, in one transaction (a whole pair or none)."""
        session = self.session
        store = self.store
        with store.db.transaction() as conn:
            version = write_result(
                store, conn, session.id, session.project, row_id, key, content, provider_id
            )
            conn.execute(
                update(t.tool_calls)
                .where(t.tool_calls.c.id == row_id)
                .values(
                    state=state,
                    result_key=key,
                    result_version=version,
                    error=error,
                    finished_at=store.clock(),
                )
            )
            invalidate_after(conn, session.project, effect, touched, cwd, store.clock())
        if _crashpoints.ACTIVE:
            _crashpoints.ack(
                "tool_finish",
                session=session.id,
                call=row_id,
                state=state,
                key=key,
                version=version,
            )
        return version

    def history(self) -> list[ToolCallRecord]:
        """Every call of the session with its one result, in call order."""
        with self.store.db.transaction(write=False) as conn:
            rows = conn.execute(
                select(t.tool_calls)
                .where(t.tool_calls.c.session_id == self.session.id)
                .order_by(t.tool_calls.c.id)
            ).all()
        return [
            ToolCallRecord(
                call_id=row.call_id,
                name=row.name,
                args=json.loads(row.args),
                effect=row.effect,
                signature=row.signature,
                state=row.state,
                result_key=row.result_key,
                result_version=row.result_version,
                error=row.error,
                turn=row.turn,
            )
            for row in rows
        ]

    def invalidate(self, resources: Sequence[str]) -> int:
        """Mark cached read results touching ``resources`` stale; returns how many."""
        with self.store.db.transaction() as conn:
            cwd = self.session.cwd
            wanted = [normalize_resource(str(resource), cwd) for resource in resources]
            return invalidate(conn, self.session.project, wanted, self.store.clock())


def write_result(
    store: Any,
    conn: Connection,
    session_id: str,
    project: str,
    row_id: int,
    key: str,
    content: str,
    provider_id: str | None = None,
) -> int:
    """Write a call's result as the next version of its evidence page; returns the version.

    ``provenance["call_ids"]`` accumulates the provider call ids this page answered (a repeat
    with the same signature writes the same page), so every linked call keeps a result.
    """
    head = conn.execute(
        select(t.pages.c.version, t.pages.c.deleted, t.pages.c.provenance).where(
            t.pages.c.project == project, t.pages.c.session_id == session_id, t.pages.c.key == key
        )
    ).first()
    provenance: dict[str, Any] = {"tool_call": row_id}
    linked: list[str] = []
    if head is not None and not head.deleted and head.provenance:
        try:
            linked = [str(x) for x in json.loads(head.provenance).get("call_ids", [])]
        except (ValueError, AttributeError):
            linked = []
    if provider_id is not None and provider_id not in linked:
        linked.append(provider_id)
    if linked:
        provenance["call_ids"] = linked
    update_ = Update(
        key=key,
        op=Op.SET,
        page_type=PageType.EVIDENCE,
        content=content,
        scope=Scope.SESSION,
        provenance=provenance,
        expected_version=head.version if head is not None and not head.deleted else None,
    )
    page, rejected = store._write_direct(conn, update_, project, session_id, None)
    if rejected is not None:
        raise rejected
    assert page is not None
    return int(page.version)


def invalidate_after(
    conn: Connection,
    project: str,
    effect: str,
    touched: Sequence[str],
    cwd: str | None,
    now: str,
) -> int:
    """Invalidate what a finished (or interrupted) call may have changed; returns how many."""
    if effect == "write" and touched:
        return invalidate(conn, project, touched, now)
    if effect in ("write", "unknown"):
        return invalidate(conn, project, None, now, under=cwd)
    return 0


def invalidate(
    conn: Connection,
    project: str,
    resources: Sequence[str] | None,
    now: str,
    *,
    under: str | None = None,
) -> int:
    """Mark finished read calls of ``project`` that a write of ``resources`` may have changed.

    ``resources=None`` is a write of unknown effect: every cached read under ``under`` (a working
    directory) goes, or every one when no directory is known. A read that names no resource can
    depend on anything, so any write invalidates it.
    """
    written = None if resources is None else [normalize_resource(r) for r in resources]
    scope = normalize_resource(under) if under else None

    def stale_after(read: list[str]) -> bool:
        if not read:
            return True
        if written is None:
            return scope is None or any(overlaps(scope, resource) for resource in read)
        return any(overlaps(w, r) for w in written for r in read)

    stale = [
        row.id
        for row in conn.execute(
            select(t.tool_calls.c.id, t.tool_calls.c.resources).where(
                t.tool_calls.c.project == project,
                t.tool_calls.c.effect == "read",
                t.tool_calls.c.invalidated_at.is_(None),
            )
        )
        if stale_after(json.loads(row.resources))
    ]
    if stale:
        conn.execute(
            update(t.tool_calls).where(t.tool_calls.c.id.in_(stale)).values(invalidated_at=now)
        )
    return len(stale)


def close_interrupted(store: Any, conn: Connection, session_id: str) -> list[str]:
    """Recovery: give every call of a dead session that never finished an ``interrupted`` result."""
    closed = []
    rows = conn.execute(
        select(t.tool_calls)
        .where(t.tool_calls.c.session_id == session_id, t.tool_calls.c.state == "started")
        .order_by(t.tool_calls.c.id)
    ).all()
    for row in rows:
        key = result_key(row.name, row.signature)
        content = (
            f"interrupted: {row.effect} call {row.call_id} ({row.name}) started at {row.started_at} "
            "and never finished; it was not re-run"
        )
        version = write_result(store, conn, session_id, row.project, row.id, key, content)
        conn.execute(
            update(t.tool_calls)
            .where(t.tool_calls.c.id == row.id)
            .values(
                state="interrupted",
                result_key=key,
                result_version=version,
                finished_at=store.clock(),
            )
        )
        # It may have taken effect before the crash: reads of what it touches are stale.
        invalidate_after(
            conn, row.project, row.effect, json.loads(row.resources), None, store.clock()
        )
        closed.append(row.call_id)
    return closed
