"""The :class:`Store`: open (create, migrate), direct writes, reads, history, checks."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Connection, bindparam, func, insert, select, update

from . import _crashpoints
from . import faults as fault_log
from . import schema as t
from .assembler import Assembler, Assembly
from .checkpoints import damaged_rows
from .db import Database, Durability, Prepared
from .errors import (
    ClawVMError,
    CorruptDatabase,
    DestructiveWrite,
    InsufficientBudget,
    InvalidInput,
    NotFound,
    PinViolation,
    ProvenanceUnresolved,
    SchemaInvalid,
    ScopeDenied,
    SessionInUse,
    UpdateRejected,
)
from .faults import FaultReport
from .journal import (
    COMMITTED,
    DEFAULT_MAX_CONTENT_BYTES,
    JOURNAL_ROWS,
    STAGED,
    Entry,
    JournalEngine,
    PreparedUpdate,
    Update,
    WritebackResult,
    WriteBatch,
    applied_params,
    check_key,
    content_missing,
    inserted_id,
    row_to_entry,
    verify_row,
    version_row_sha256,
)
from .mediator import close_interrupted
from .pages import (
    POLICIES,
    Boundary,
    FaultKind,
    Fidelity,
    Op,
    Page,
    PageType,
    PageVersion,
    Pin,
    ReasonCode,
    Scope,
    check_retention,
)
from .recall import FtsRecall, RecallBackend
from .representations import (
    Compressor,
    ContentRepresentations,
    ExtractiveCompressor,
    Representation,
    parse_pointer,
    text_sha256,
    with_pointer,
)
from .segments import read_level, read_text
from .session import (
    Session,
    ensure_session,
    owner_alive,
    owner_tag,
    register_store,
    unregister_store,
)
from .tokens import DEFAULT_ENCODING, TokenCounter

DEFAULT_PROJECT = "default"
_PREPARED_CACHE_ENTRIES = 4096

_STAGED_ROWS = JOURNAL_ROWS.where(
    t.journal.c.session_id == bindparam("b_session"), STAGED
).order_by(t.journal.c.lsn)
_SESSION_TURN = select(t.sessions.c.turn).where(t.sessions.c.id == bindparam("b_session"))
# A boundary's own statements, compiled once (db.Prepared), as the journal's are.
_P_STAGED_ROWS = Prepared(_STAGED_ROWS)
_P_SESSION_TURN = Prepared(_SESSION_TURN)
_P_SESSION_AFTER = {
    (advance, close): Prepared(
        update(t.sessions)
        .where(t.sessions.c.id == bindparam("b_session"))
        .values(
            updated_at=bindparam("b_at"),
            **({"turn": t.sessions.c.turn + 1} if advance else {}),
            # A bound None (Prepared keeps only non-NULL values fixed in the statement).
            **({"state": "closed", "owner": bindparam("b_owner")} if close else {}),
        )
    )
    for advance in (False, True)
    for close in (False, True)
}

E = TypeVar("E", bound=StrEnum)


def coerce_enum(enum: type[E], value: object, what: str) -> E:
    """``value`` as a member of ``enum``, or :class:`InvalidInput` naming the allowed values."""
    if isinstance(value, enum):
        return value
    try:
        return enum(str(value).strip().lower() if enum is not ReasonCode else str(value))
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise InvalidInput(f"unknown {what} {value!r}; expected one of: {allowed}") from None


def utc_now() -> str:
    """The current time as an ISO-8601 UTC timestamp with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


_REJECTION_ERRORS: dict[str, type[UpdateRejected]] = {
    ReasonCode.SCHEMA_INVALID.value: SchemaInvalid,
    ReasonCode.PROVENANCE_UNRESOLVED.value: ProvenanceUnresolved,
    ReasonCode.SCOPE_DENIED.value: ScopeDenied,
    ReasonCode.DESTRUCTIVE_OP.value: DestructiveWrite,
    ReasonCode.PIN_VIOLATION.value: PinViolation,
}


def rejection_error(lsn: int, reason: str, detail: str) -> UpdateRejected:
    """The exception that tells a direct writer its update was rejected with ``reason``."""
    error_type = _REJECTION_ERRORS.get(reason, UpdateRejected)
    return error_type(f"{reason}: {detail} (journal lsn {lsn})", reason=reason, lsn=lsn)


@dataclass(frozen=True)
class PageSummary:
    """One page's current head, for listings."""

    key: str
    project: str
    session: str | None
    type: PageType
    version: int
    pin: Pin
    priority: float
    scope: Scope
    deleted: bool
    tokens: dict[Fidelity, int]


@dataclass(frozen=True)
class Finding:
    """One problem found by :meth:`Store.check`."""

    code: str
    message: str


@dataclass(frozen=True)
class CheckReport:
    """The outcome of :meth:`Store.check`: ``ok`` when there are no findings."""

    ok: bool
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)


@dataclass
class RecoveryReport:
    """What :meth:`Store.recover` did. Running recovery again reports nothing to do."""

    quarantined: list[tuple[int, str]] = field(default_factory=list)
    reapplied: list[int] = field(default_factory=list)
    recovered: dict[str, WritebackResult] = field(default_factory=dict)
    skipped_live_sessions: list[str] = field(default_factory=list)
    interrupted: list[tuple[str, str]] = field(default_factory=list)  # (session, call id)

    @property
    def changed(self) -> bool:
        """Whether recovery changed anything."""
        return bool(self.quarantined or self.reapplied or self.recovered or self.interrupted)


@dataclass(frozen=True)
class JournalRecord:
    """One journal entry, for listings (``clawvm journal``)."""

    lsn: int
    session: str | None
    project: str
    principal: str | None
    key: str
    op: str
    type: str | None
    scope: str
    state: str
    reason: str | None
    detail: str | None
    version: int | None
    idempotency_key: str | None
    staged_at: str
    resolved_at: str | None


@dataclass(frozen=True)
class StoreInfo:
    """What :meth:`Store.info` reports about a store and its database."""

    package_version: str
    schema_revision: str | None
    head_revision: str
    sqlite_version: str
    url: str
    encoding: str
    durability: str
    pragmas: dict[str, Any]
    counts: dict[str, int]
    file_bytes: int | None


def _package_version() -> str:
    try:
        return package_version("clawvm-store")
    except PackageNotFoundError:  # running from a checkout without installing
        return "0+checkout"


class Store:
    """A durable state store for one database file (or URL). Open it with :meth:`Store.open`."""

    def __init__(
        self,
        db: Database,
        *,
        encoding: str,
        compressor: Compressor,
        clock: Any,
        max_content_bytes: int,
        recall: RecallBackend | None = None,
    ) -> None:
        self._db = db
        self.encoding = encoding
        self.counter = TokenCounter(encoding)
        self.compressor = compressor
        self.clock = clock
        self.journal = JournalEngine(
            counter=self.counter,
            compressor=compressor,
            clock=clock,
            max_content_bytes=max_content_bytes,
        )
        self._closed = False
        self._prepared: OrderedDict[int, PreparedUpdate] = OrderedDict()
        self._discarded_now: list[int] = []
        self.recall_backend: RecallBackend = recall or FtsRecall()
        # Page type -> versions gc keeps of that type by default (Store.open(retention=...)).
        self.retention: dict[PageType, int] = {}
        self._token = secrets.token_hex(8)
        self.owner = owner_tag(self._token)
        register_store(self._token, self)

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        target: str | os.PathLike[str],
        *,
        durability: Durability = "full",
        encoding: str | None = None,
        compressor: Compressor | None = None,
        clock: Any = None,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        create: bool = True,
        recover: bool = True,
        recall: RecallBackend | None = None,
        retention: Mapping[PageType | str, int] | None = None,
    ) -> Store:
        """Open (creating and migrating as needed) the store at a path or SQLAlchemy URL.

        ``encoding`` is the tokenizer encoding; a new database records it and later opens must
        agree (token counts stored in it are for that encoding). ``None`` means the database's
        own, or ``cl100k_base`` for a new one. With ``create=False`` a missing database file
        is an error instead of a new database. With ``recover=True`` (the default) the journal is
        recovered on open: pending entries are verified, committed ones re-applied, and staged
        updates of sessions whose process died are validated at a ``recovery`` boundary.
        ``retention`` (page type → versions to keep, e.g. ``{"conversation": 50, "evidence":
        10}``) is what :func:`clawvm_store.maintenance.gc` keeps of those types by default,
        beyond the versions something still refers to.
        """
        policy = check_retention(retention)
        db = Database(target, durability=durability, create=create)
        try:
            db.migrate()
            recorded = cls._recorded_encoding(db)
            chosen = encoding or recorded or DEFAULT_ENCODING
            if recorded is not None and recorded != chosen:
                raise InvalidInput(
                    f"the database counts tokens with {recorded!r}; it cannot be opened with "
                    f"encoding {chosen!r}"
                )
            store = cls(
                db,
                encoding=chosen,
                compressor=compressor or ExtractiveCompressor(),
                clock=clock or utc_now,
                max_content_bytes=max_content_bytes,
                recall=recall,
            )
            store.retention = policy
            if recorded is None:
                with db.transaction() as conn:
                    # Read again under the write lock: another process opening the same new
                    # database may have recorded its encoding since.
                    raced = conn.execute(
                        select(t.meta.c.value).where(t.meta.c.name == "encoding")
                    ).scalar()
                    if raced is None:
                        conn.execute(
                            insert(t.meta).values(
                                [
                                    {"name": "encoding", "value": chosen},
                                    {"name": "created_at", "value": store.clock()},
                                ]
                            )
                        )
                    elif raced != chosen:
                        raise InvalidInput(
                            f"the database counts tokens with {raced!r}; it cannot be opened "
                            f"with encoding {chosen!r}"
                        )
        except BaseException:
            db.dispose()
            raise
        if recover:
            try:
                store.recover(verify="pending")
            except BaseException:
                store.close()
                raise
        return store

    @staticmethod
    def _recorded_encoding(db: Database) -> str | None:
        with db.transaction(write=False) as conn:
            value = conn.execute(select(t.meta.c.value).where(t.meta.c.name == "encoding")).scalar()
        return str(value) if value is not None else None

    def close(self) -> None:
        """Release the database connections. The store cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            unregister_store(self._token)
            self._db.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def db(self) -> Database:
        """The underlying :class:`~clawvm_store.db.Database` (engine and transaction primitive)."""
        if self._closed:
            raise ClawVMError("the store is closed")
        return self._db

    # -- writes ----------------------------------------------------------------------------------

    def _prepare_outside_txn(
        self, update: Update, project: str, session: str
    ) -> ContentRepresentations | None:
        """Build a ``set``'s fidelities before taking the write lock, when the input is sound.

        Validation still decides inside the transaction; this only moves the expensive work
        (token counting, compression) out of the locked region.
        """
        content = update.content
        if update.op is not Op.SET or not isinstance(content, str) or update.page_type is None:
            return None
        if not content.strip() or len(content) > self.journal.max_content_bytes:
            return None
        if update.provenance is None and update.page_type in (
            PageType.EVIDENCE,
            PageType.PREFERENCE,
        ):
            return None  # their derived fields name the head's provenance: built at apply time
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            return None
        provisional = Entry(
            lsn=0,
            session_id=session,
            project=project,
            principal=None,
            key=update.key,
            op=update.op,
            page_type=update.page_type,
            scope=update.scope,
            payload=update.payload(),
            checksum="",
            state="staged",
            idempotency_key=None,
        )
        try:
            return self.journal.prepare(provisional, None)
        except SchemaInvalid:
            return None

    def put(
        self,
        key: str,
        *,
        type: PageType | str,
        content: str | None,
        project: str = DEFAULT_PROJECT,
        session: str | None = None,
        expected_version: int | None = None,
        op: Op | str = Op.SET,
        pin: Pin | str | None = None,
        priority: float | None = None,
        scope: Scope | str | None = None,
        provenance: Mapping[str, Any] | None = None,
        structured: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Page:
        """Write a page directly, at an ``explicit`` boundary, and return its new full version.

        The write goes through the journal like any other: it is staged, validated, committed
        and applied in one transaction. A rejected write stays in the journal with its reason
        code, and this raises the matching :class:`UpdateRejected` subclass (a stale or missing
        ``expected_version`` on an existing key raises :class:`DestructiveWrite`, which is also a
        :class:`VersionConflict`).
        """
        update, project, session_id = self._direct_update(
            key,
            type=type,
            content=content,
            project=project,
            session=session,
            expected_version=expected_version,
            op=op,
            pin=pin,
            priority=priority,
            scope=scope,
            provenance=provenance,
            structured=structured,
            idempotency_key=idempotency_key,
        )
        prepared = self._prepare_outside_txn(update, project, session_id)
        with self.db.transaction() as conn:
            if session_id:
                owner = conn.execute(
                    select(t.sessions.c.project).where(t.sessions.c.id == session_id)
                ).scalar()
                if owner is not None and owner != project:
                    raise InvalidInput(
                        f"session {session_id!r} belongs to project {owner!r}, not {project!r}"
                    )
            written, rejected = self._write_direct(conn, update, project, session_id, prepared)
        if rejected is not None:
            raise rejected
        assert written is not None
        if _crashpoints.ACTIVE:  # the crash-test kit: acknowledged once this line is written
            _crashpoints.ack(
                "put",
                project=written.project,
                session=written.session,
                key=written.key,
                version=written.version,
                deleted=written.deleted,
                content=_crashpoints.digest(written.content),
            )
        return written

    def _write_direct(
        self,
        conn: Connection,
        update: Update,
        project: str,
        session_id: str,
        prepared: ContentRepresentations | None,
        principal: str | None = None,
    ) -> tuple[Page | None, UpdateRejected | None]:
        """Stage, validate, commit and apply one update at an ``explicit`` boundary, in ``conn``.

        Returns the written page (read inside the same transaction: once it commits the write
        has happened, and nothing after the commit may report otherwise) or the rejection.
        """
        self._ensure_project(conn, project)
        lsn, _existed = self.journal.stage(
            conn, project=project, session_id=session_id, principal=principal, update=update
        )
        self.journal.writeback(
            conn,
            project=project,
            session_id=session_id or None,
            boundary=Boundary.EXPLICIT,
            turn=0,
            entries=self.journal.load_entries(conn, [lsn]),
            prepared={lsn: PreparedUpdate(prepared)} if prepared is not None else None,
        )
        outcome = conn.execute(
            select(
                t.journal.c.state, t.journal.c.reason, t.journal.c.detail, t.journal.c.version
            ).where(t.journal.c.lsn == lsn)
        ).one()
        if outcome.state == "rejected":
            return None, rejection_error(lsn, outcome.reason, outcome.detail or "")
        page_session = session_id if update.scope is Scope.SESSION else None
        if update.op is Op.DELETE:
            return self._tombstone(conn, update, project, page_session, outcome.version), None
        page = self._read_page(
            conn, update.key, project, page_session, Fidelity.FULL, outcome.version
        )
        return page, None

    def _tombstone(
        self, conn: Connection, update: Update, project: str, session: str | None, version: int
    ) -> Page:
        """The page a committed delete leaves: its tombstone version, with no content."""
        row = conn.execute(
            select(t.page_versions)
            .join(t.pages, t.pages.c.id == t.page_versions.c.page_id)
            .where(
                t.pages.c.project == project,
                t.pages.c.session_id == (session or ""),
                t.pages.c.key == update.key,
                t.page_versions.c.version == version,
            )
        ).one()
        return Page(
            key=update.key,
            type=PageType(row.type),
            version=version,
            fidelity=Fidelity.FULL,
            content="",
            tokens=0,
            pin=Pin(row.pin),
            priority=row.priority,
            scope=Scope(row.scope),
            provenance=json.loads(row.provenance) if row.provenance else None,
            project=project,
            session=session,
            deleted=True,
        )

    def _direct_update(
        self,
        key: str,
        *,
        type: PageType | str | None,
        content: str | None,
        project: str,
        session: str | None,
        expected_version: int | None,
        op: Op | str,
        pin: Pin | str | None,
        priority: float | None,
        scope: Scope | str | None,
        provenance: Mapping[str, Any] | None,
        structured: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> tuple[Update, str, str]:
        check_key(key)
        project = check_name(project, "project")
        session_id = check_name(session, "session") if session is not None else ""
        op_value = coerce_enum(Op, op, "op")
        page_type = coerce_enum(PageType, type, "page type") if type is not None else None
        if page_type is None and op_value is Op.SET:
            raise InvalidInput("a set needs a page type")
        chosen_scope = (
            coerce_enum(Scope, scope, "scope")
            if scope is not None
            else (Scope.SESSION if session_id else Scope.PROJECT)
        )
        if chosen_scope is Scope.SESSION and not session_id:
            raise InvalidInput("a session-scoped page needs session=...")
        if expected_version is not None and (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or expected_version < 0
        ):
            raise InvalidInput("expected_version must be a non-negative integer or None")
        if content is not None and not isinstance(content, str):
            raise InvalidInput(f"content must be a str, not {type_name(content)}")
        if priority is not None and (
            isinstance(priority, bool) or not isinstance(priority, int | float)
        ):
            raise InvalidInput(f"priority must be a number, not {type_name(priority)}")
        if structured is not None and not isinstance(structured, Mapping):
            raise InvalidInput(f"structured must be a mapping, not {type_name(structured)}")
        if provenance is not None and not isinstance(provenance, Mapping):
            raise InvalidInput(f"provenance must be a mapping, not {type_name(provenance)}")
        update = Update(
            key=key,
            op=op_value,
            page_type=page_type,
            content=content,
            structured=structured,
            pin=coerce_enum(Pin, pin, "pin") if pin is not None else None,
            priority=float(priority) if priority is not None else None,
            scope=chosen_scope,
            provenance=provenance,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
        )
        return update, project, session_id

    def _ensure_project(self, conn: Connection, project: str) -> None:
        exists = conn.execute(select(t.projects.c.name).where(t.projects.c.name == project)).first()
        if exists is None:
            conn.execute(
                insert(t.projects).values(name=project, writers=None, created_at=self.clock())
            )

    def set_writers(self, project: str, principals: Sequence[str] | None) -> None:
        """Restrict who may write ``project``'s project-scoped pages (``None``: anyone).

        Sessions whose principal is not listed get ``SCOPE_DENIED`` for project-scoped updates;
        direct ``put`` calls (the operator) are not restricted.
        """
        check_name(project, "project")
        writers = None if principals is None else json.dumps(sorted({str(p) for p in principals}))
        with self.db.transaction() as conn:
            self._ensure_project(conn, project)
            conn.execute(
                update(t.projects).where(t.projects.c.name == project).values(writers=writers)
            )

    # -- sessions --------------------------------------------------------------------------------

    def session(
        self, session_id: str, *, project: str = DEFAULT_PROJECT, principal: str | None = None
    ) -> Session:
        """Start a session, or resume one (after a restart) under the same project and principal.

        Raises :class:`SessionInUse` when another live process has the session open.
        """
        check_name(session_id, "session")
        check_name(project, "project")
        if principal is not None:
            check_name(principal, "principal")
        with self.db.transaction() as conn:
            owner = conn.execute(
                select(t.sessions.c.owner, t.sessions.c.state).where(t.sessions.c.id == session_id)
            ).first()
            if owner is not None and owner.owner and owner.owner != self.owner:
                if owner_alive(owner.owner) is not False:
                    raise SessionInUse(
                        f"session {session_id!r} is open in another process ({owner.owner.split('|')[0]}"
                        f" pid {owner.owner.split('|')[1]}); close it there first"
                    )
            self._ensure_project(conn, project)
            ensure_session(
                conn,
                session_id=session_id,
                project=project,
                principal=principal,
                owner=self.owner,
                now=self.clock(),
            )
            turn = conn.execute(_SESSION_TURN, {"b_session": session_id}).scalar()
        return Session(self, session_id, project, principal, int(turn or 0))

    def assemble(
        self,
        session: str,
        budget: int,
        *,
        project: str = DEFAULT_PROJECT,
        fixed: str = "",
        demand: Sequence[str] = (),
        on_insufficient: str = "report",
        record: bool = False,
    ) -> Assembly:
        """Assemble what ``session`` would see now, without taking ownership of the session.

        For inspection (``clawvm assemble``): nothing is recorded unless ``record=True``. The
        agent itself assembles through :meth:`Session.assemble`.
        """
        check_name(session, "session")
        check_name(project, "project")
        assembler = Assembler(self, project, session)
        return assembler.assemble(
            budget, fixed=fixed, demand=demand, on_insufficient=on_insufficient, record=record
        )

    def _on_insufficient(
        self, session_id: str, project: str, turn: int, shortfall: InsufficientBudget
    ) -> None:
        """Record ``physical_insufficiency``: the floor did not fit (no policy can fix that)."""
        detail = json.dumps(
            {
                "budget": shortfall.budget,
                "required": shortfall.required,
                "shortfall": shortfall.shortfall,
                "pages": [[p.key, p.fidelity, p.tokens] for p in shortfall.pages],
            },
            sort_keys=True,
        )
        with self.db.transaction(sync="normal") as conn:
            conn.execute(
                t.faults.insert(),
                {
                    "session_id": session_id,
                    "project": project,
                    "turn": turn,
                    "kind": FaultKind.PHYSICAL_INSUFFICIENCY.value,
                    "key": None,
                    "detail": detail,
                    "at": self.clock(),
                },
            )

    def journal_levels(
        self, reps: ContentRepresentations, *, key: str, version: int
    ) -> tuple[Representation, ...]:
        """Every fidelity of prepared content at ``version`` (the pointer names the version)."""
        return with_pointer(reps, key=key, version=version, counter=self.counter)

    def _remember_prepared(self, lsn: int, ready: PreparedUpdate) -> None:
        self._prepared[lsn] = ready
        while len(self._prepared) > _PREPARED_CACHE_ENTRIES:
            self._prepared.popitem(last=False)

    def _staged_rows(self, conn: Connection, session_id: str) -> list[Any]:
        return _P_STAGED_ROWS.rows(conn, {"b_session": session_id})

    def _quarantine(
        self, conn: Connection, row: Any, problem: str, *, reason: str = "CORRUPT"
    ) -> None:
        """Set an entry aside for good: it is kept, with why, and never applied."""
        detail = f"{problem} (was {row.state})" if reason == "CORRUPT" else problem
        conn.execute(
            update(t.journal)
            .where(t.journal.c.lsn == row.lsn)
            .values(state="quarantined", reason=reason, detail=detail, resolved_at=self.clock())
        )

    def _sound_entries(
        self, conn: Connection, rows: Sequence[Any], report: RecoveryReport | None = None
    ) -> list[Entry]:
        """Decode rows; a row failing its checksum is quarantined, never applied."""
        entries = []
        for row in rows:
            problem = verify_row(row)
            if problem:
                self._quarantine(conn, row, problem)
                if report is not None:
                    report.quarantined.append((row.lsn, problem))
                continue
            entries.append(row_to_entry(row))
        return entries

    def _writeback_session(
        self,
        sess: Session,
        boundary: Boundary,
        *,
        close: bool = False,
        writeback: bool = True,
        stage_first: Callable[[Connection], Mapping[int, PreparedUpdate]] | None = None,
    ) -> WritebackResult:
        """Validate, commit and apply the session's staged updates at ``boundary``.

        ``stage_first`` journals more updates in the same transaction before the writeback (it
        returns the fidelities it built for them, by LSN): a batch that ends a turn then costs
        one commit, not a stage commit and a boundary commit.
        """
        with self.db.transaction() as conn:
            fresh = stage_first(conn) if stage_first is not None else {}
            entries = self._sound_entries(conn, self._staged_rows(conn, sess.id))
            if not writeback:
                entries = self._discard(conn, sess, boundary, entries)
            prepared = {
                entry.lsn: self._prepared.pop(entry.lsn)
                for entry in entries
                if entry.lsn in self._prepared
            }
            prepared.update(fresh)
            found = _P_SESSION_TURN.first(conn, {"b_session": sess.id})
            turn = found[0] if found is not None else 0
            result = self.journal.writeback(
                conn,
                project=sess.project,
                session_id=sess.id,
                boundary=boundary,
                turn=int(turn or 0),
                entries=entries,
                prepared=prepared,
            )
            _P_SESSION_AFTER[boundary is Boundary.TURN_END, close].execute(
                conn,
                {
                    "b_session": sess.id,
                    "b_at": self.clock(),
                    **({"b_owner": None} if close else {}),
                },
            )
            result.discarded = self._discarded_now
            self._discarded_now = []
        return result

    def _discard(
        self, conn: Connection, sess: Session, boundary: Boundary, entries: Sequence[Entry]
    ) -> list[Entry]:
        """Throw staged updates away unvalidated (a harness that skipped the flush): flush_miss."""
        turn = int(conn.execute(_SESSION_TURN, {"b_session": sess.id}).scalar() or 0)
        now = self.clock()
        for entry in entries:
            self._quarantine(
                conn,
                entry,
                f"discarded by a {boundary.value} that skipped writeback",
                reason="DISCARDED",
            )
        fault_log.record(
            conn,
            [
                fault_log.fault_row(
                    session_id=sess.id,
                    project=sess.project,
                    turn=turn,
                    kind=FaultKind.FLUSH_MISS.value,
                    key=entry.key,
                    detail={"lsn": entry.lsn, "boundary": boundary.value},
                    at=now,
                )
                for entry in entries
            ],
        )
        self._discarded_now = [entry.lsn for entry in entries]
        return []

    # -- faults ----------------------------------------------------------------------------------

    def faults(
        self, *, session: str | None = None, events: bool = False, project: str | None = None
    ) -> FaultReport:
        """Fault counts by kind, alerts, hits and the thrash index (a session, a project, or all).

        ``thrash = (faults + alerts) / (hits + 1)``; ``events=True`` also lists every fault.
        """
        session = check_filter(session, "session")
        project = check_filter(project, "project")
        with self.db.transaction(write=False) as conn:
            return fault_log.report(conn, session, with_events=bool(events), project=project)

    # -- recovery ----------------------------------------------------------------------------------

    def recover(self, *, force: bool = False, verify: str = "all") -> RecoveryReport:
        """Bring the journal to a consistent state after a crash; idempotent.

        1. Verify checksums (``verify="all"``: every entry; ``"pending"``: staged and committed
           ones, which is what open does) and quarantine any entry that fails, with a reason.
        2. Re-apply entries that were committed but not applied.
        3. Validate the staged entries of sessions whose owning process is gone at a
           ``recovery`` boundary: each is committed or rejected with its reason code. Sessions
           owned by a live process (or by another host, unless ``force``) are left alone.
        """
        if verify not in ("all", "pending"):
            raise InvalidInput("verify must be 'all' or 'pending'")
        report = RecoveryReport()
        with self.db.transaction(write=False) as conn:
            if not self._recovery_needed(conn, verify):
                return report
        with self.db.transaction() as conn:
            if verify == "pending":
                rows = [row for state in (STAGED, COMMITTED) for row in self._rows(conn, state)]
                rows.sort(key=lambda row: int(row.lsn))
            else:
                rows = self._rows(conn, t.journal.c.state != "quarantined")
            for row in rows:
                problem = verify_row(row)
                if problem:
                    self._quarantine(conn, row, problem)
                    report.quarantined.append((row.lsn, problem))
            self._reapply_committed(conn, report)
            self._recover_staged(conn, report, force=force)
            self._recover_tool_calls(conn, report, force=force)
        return report

    @staticmethod
    def _rows(conn: Connection, condition: Any) -> list[Any]:
        """The journal rows (with pending content) that meet ``condition``, by LSN."""
        return list(conn.execute(JOURNAL_ROWS.where(condition).order_by(t.journal.c.lsn)).all())

    def _recover_tool_calls(self, conn: Connection, report: RecoveryReport, *, force: bool) -> None:
        """Close the calls of dead sessions that started and never finished, as interrupted."""
        column = t.tool_calls.c.session_id
        for session_id, _row in self._dead_sessions(
            conn, column, t.tool_calls.c.state == "started", report, force=force
        ):
            for call_id in close_interrupted(self, conn, session_id):
                report.interrupted.append((session_id, call_id))

    def _recovery_needed(self, conn: Connection, verify: str) -> bool:
        if verify == "all":
            return True
        pending = any(
            conn.execute(select(t.journal.c.lsn).where(state).limit(1)).first()
            for state in (STAGED, COMMITTED)
        )
        unfinished = conn.execute(
            select(func.count()).select_from(t.tool_calls).where(t.tool_calls.c.state == "started")
        ).scalar()
        return bool(pending or unfinished)

    def _reapply_committed(self, conn: Connection, report: RecoveryReport) -> None:
        rows = conn.execute(JOURNAL_ROWS.where(COMMITTED).order_by(t.journal.c.lsn)).all()
        if not rows:
            return
        # Re-applied versions belong to a recovery boundary event of their own project, so
        # readers that follow applied versions by event id (the page table, recall) see them.
        events: dict[str, int] = {}
        for project in sorted({row.project for row in rows}):
            events[project] = inserted_id(
                conn.execute(
                    t.lifecycle_events.insert(),
                    {
                        "session_id": None,
                        "project": project,
                        "boundary": Boundary.RECOVERY.value,
                        "turn": 0,
                        "detail": '{"reason":"re-apply committed entries"}',
                        "at": self.clock(),
                    },
                )
            )
        # One batch for all of them: heads stay in memory from one entry to the next, and the
        # rows go out with one statement per table (journal.WriteBatch).
        batch = WriteBatch(self.journal, conn)
        for row in rows:
            event_id = events[row.project]
            entry = row_to_entry(row)
            head = batch.head(entry)
            current = head.version if head else 0
            if row.version is None or row.version > current + 1:
                self._quarantine(conn, row, f"cannot apply version {row.version} over {current}")
                report.quarantined.append((row.lsn, "version gap"))
                continue
            if row.version == current + 1:
                if content_missing(entry):
                    self._quarantine(conn, row, "content missing: nothing to apply the entry from")
                    report.quarantined.append((row.lsn, "content missing"))
                    continue
                if batch.needs_text(entry, head):
                    batch.flush()
                    head = batch.head(entry)
                reps = self.journal.prepare(entry, head, conn)
                batch.apply(entry, head, row.version, reps)
                report.reapplied.append(row.lsn)
            batch.applied.append(
                applied_params(entry, event_id=event_id, version=row.version, at=self.clock())
            )
        batch.flush()

    def _dead_sessions(
        self,
        conn: Connection,
        column: Any,
        pending: Any,
        report: RecoveryReport,
        *,
        force: bool,
    ) -> Iterator[tuple[str, Any]]:
        """Sessions with pending work (``column`` rows matching ``pending``) whose owner is gone.

        Sessions owned by a live process, or by another host unless ``force``, are skipped and
        listed in the report: their work is not recovery's to resolve.
        """
        session_ids = [
            row[0]
            for row in conn.execute(select(column).where(pending).group_by(column).order_by(column))
        ]
        for session_id in session_ids:
            session_row = conn.execute(
                select(t.sessions).where(t.sessions.c.id == session_id)
            ).first()
            alive = owner_alive(session_row.owner) if session_row is not None else False
            if alive is True or (alive is None and not force):
                if session_id not in report.skipped_live_sessions:
                    report.skipped_live_sessions.append(session_id)
                continue
            yield session_id, session_row

    def _recover_staged(self, conn: Connection, report: RecoveryReport, *, force: bool) -> None:
        column = t.journal.c.session_id
        for session_id, session_row in self._dead_sessions(
            conn, column, STAGED, report, force=force
        ):
            entries = [row_to_entry(row) for row in self._staged_rows(conn, session_id)]
            project = session_row.project if session_row is not None else entries[0].project
            result = self.journal.writeback(
                conn,
                project=project,
                session_id=session_id or None,
                boundary=Boundary.RECOVERY,
                turn=int(session_row.turn) if session_row is not None else 0,
                entries=entries,
                detail={"reason": "staged updates of a session whose process is gone"},
            )
            report.recovered[session_id] = result
            if session_row is not None:
                conn.execute(
                    update(t.sessions)
                    .where(t.sessions.c.id == session_id)
                    .values(owner=None, updated_at=self.clock())
                )

    def journal_entries(
        self,
        *,
        state: str | None = None,
        session: str | None = None,
        limit: int | None = None,
    ) -> list[JournalRecord]:
        """Journal entries, oldest first, filtered by state and session."""
        session = check_filter(session, "session")
        limit = check_limit(limit)
        if state is not None and state not in t.JOURNAL_STATES:
            raise InvalidInput(
                f"unknown journal state {state!r}; expected one of: {', '.join(t.JOURNAL_STATES)}"
            )
        query = select(t.journal).order_by(t.journal.c.lsn)
        if state is not None:
            query = query.where(t.journal.c.state == state)
        if session is not None:
            query = query.where(t.journal.c.session_id == session)
        if limit is not None:
            query = query.limit(limit)
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(query).all()
        return [
            JournalRecord(
                lsn=row.lsn,
                session=row.session_id or None,
                project=row.project,
                principal=row.principal,
                key=row.key,
                op=row.op,
                type=row.page_type,
                scope=row.scope,
                state=row.state,
                reason=row.reason,
                detail=row.detail,
                version=row.version,
                idempotency_key=row.idempotency_key,
                staged_at=row.staged_at,
                resolved_at=row.resolved_at,
            )
            for row in rows
        ]

    # -- reads -----------------------------------------------------------------------------------

    def _find_page(self, conn: Connection, key: str, project: str, session: str | None) -> Any:
        owners = [session, ""] if session else [""]
        rows = list(
            conn.execute(
                select(t.pages).where(
                    t.pages.c.project == project,
                    t.pages.c.key == key,
                    t.pages.c.session_id.in_(owners),
                )
            ).all()
        )
        if not rows:
            where = f"project {project!r}" + (f", session {session!r}" if session else "")
            raise NotFound(f"no page {key!r} in {where}")
        rows.sort(key=lambda row: row.session_id == "")  # the session's own page wins
        return rows[0]

    def page(
        self,
        key: str,
        *,
        project: str = DEFAULT_PROJECT,
        session: str | None = None,
        fidelity: Fidelity | str = Fidelity.FULL,
        version: int | None = None,
    ) -> Page:
        """A page at one fidelity: the current version, or ``version`` if given.

        A session sees its own session-scoped pages and its project's project-scoped pages (its
        own page wins when both exist). Raises :class:`NotFound` for a missing page or version
        and for a deleted page's head, and :class:`InvalidInput` for a fidelity not on the
        type's ladder.
        """
        check_key(key)
        project = check_name(project, "project")
        session = check_filter(session, "session")
        chosen = coerce_enum(Fidelity, fidelity, "fidelity")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise InvalidInput("version must be an integer")
        with self.db.transaction(write=False) as conn:
            return self._read_page(conn, key, project, session, chosen, version)

    def _read_page(
        self,
        conn: Connection,
        key: str,
        project: str,
        session: str | None,
        fidelity: Fidelity,
        version: int | None,
    ) -> Page:
        head = self._find_page(conn, key, project, session)
        wanted = head.version if version is None else version
        row = conn.execute(
            select(t.page_versions).where(
                t.page_versions.c.page_id == head.id, t.page_versions.c.version == wanted
            )
        ).first()
        if row is None:
            raise NotFound(f"page {key!r} has no version {wanted} (latest is {head.version})")
        with decoding(f"page {key!r} version {wanted}"):
            page_type = PageType(row.type)
            if row.deleted:
                raise NotFound(f"page {key!r} was deleted at version {wanted}")
            if not POLICIES[page_type].allows(fidelity):
                ladder = ", ".join(f.value for f in POLICIES[page_type].ladder)
                raise InvalidInput(
                    f"a {page_type.value} page has no {fidelity.value} fidelity (its ladder: {ladder})"
                )
            level = read_level(conn, head.id, wanted, fidelity)
            if level is None:
                raise CorruptDatabase(
                    f"page {key!r} version {wanted} has no {fidelity.value} representation; run check"
                )
            return Page(
                key=key,
                type=page_type,
                version=wanted,
                fidelity=fidelity,
                content=level[0],
                tokens=level[1],
                pin=Pin(row.pin),
                priority=float(row.priority),
                scope=Scope(row.scope),
                provenance=json.loads(row.provenance) if row.provenance else None,
                project=project,
                session=head.session_id or None,
                structured=json.loads(row.fields) if row.fields else None,
            )

    def resolve(
        self, handle: str, *, project: str = DEFAULT_PROJECT, session: str | None = None
    ) -> Page:
        """The full content behind a pointer handle (or a plain key), exactly as written."""
        if not isinstance(handle, str):
            raise InvalidInput(f"a pointer handle or key must be a string, not {type_name(handle)}")
        parsed = parse_pointer(handle)
        if parsed is None:
            return self.page(handle.strip(), project=project, session=session)
        key, version = parsed
        return self.page(key, project=project, session=session, version=version)

    def history(
        self, key: str, *, project: str = DEFAULT_PROJECT, session: str | None = None
    ) -> list[PageVersion]:
        """Every committed version of a page, oldest first, with token counts per fidelity."""
        check_key(key)
        project = check_name(project, "project")
        session = check_filter(session, "session")
        with self.db.transaction(write=False) as conn:
            head = self._find_page(conn, key, project, session)
            versions = conn.execute(
                select(t.page_versions)
                .where(t.page_versions.c.page_id == head.id)
                .order_by(t.page_versions.c.version)
            ).all()
            reps = conn.execute(
                select(
                    t.representations.c.version,
                    t.representations.c.fidelity,
                    t.representations.c.tokens,
                ).where(t.representations.c.page_id == head.id)
            ).all()
        with decoding(f"the history of {key!r}"):
            return self._history_rows(key, versions, reps)

    @staticmethod
    def _history_rows(key: str, versions: Sequence[Any], reps: Sequence[Any]) -> list[PageVersion]:
        tokens: dict[int, dict[Fidelity, int]] = {}
        for rep in reps:
            tokens.setdefault(rep.version, {})[Fidelity(rep.fidelity)] = rep.tokens
        return [
            PageVersion(
                key=key,
                type=PageType(row.type),
                version=row.version,
                op=Op(row.op),
                lsn=row.lsn,
                committed_at=row.committed_at,
                deleted=bool(row.deleted),
                pin=Pin(row.pin),
                priority=row.priority,
                tokens=tokens.get(row.version, {}),
            )
            for row in versions
        ]

    def pages(
        self,
        *,
        project: str | None = None,
        type: PageType | str | None = None,
        session: str | None = None,
        include_deleted: bool = False,
    ) -> list[PageSummary]:
        """Current heads, filtered by project, type and owning session, ordered by key."""
        project = check_filter(project, "project")
        session = check_filter(session, "session")
        page_type = coerce_enum(PageType, type, "page type") if type is not None else None
        query = select(t.pages)
        if project is not None:
            query = query.where(t.pages.c.project == project)
        if page_type is not None:
            query = query.where(t.pages.c.type == page_type.value)
        if session is not None:
            query = query.where(t.pages.c.session_id == session)
        if not include_deleted:
            query = query.where(t.pages.c.deleted == 0)
        query = query.order_by(t.pages.c.project, t.pages.c.session_id, t.pages.c.key)
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(query).all()
            reps = conn.execute(
                select(
                    t.representations.c.page_id,
                    t.representations.c.fidelity,
                    t.representations.c.tokens,
                ).join(
                    t.pages,
                    (t.pages.c.id == t.representations.c.page_id)
                    & (t.pages.c.version == t.representations.c.version),
                )
            ).all()
        with decoding("the page listing"):
            return self._summaries(rows, reps)

    @staticmethod
    def _summaries(rows: Sequence[Any], reps: Sequence[Any]) -> list[PageSummary]:
        tokens: dict[int, dict[Fidelity, int]] = {}
        for rep in reps:
            tokens.setdefault(rep.page_id, {})[Fidelity(rep.fidelity)] = rep.tokens
        return [
            PageSummary(
                key=row.key,
                project=row.project,
                session=row.session_id or None,
                type=PageType(row.type),
                version=row.version,
                pin=Pin(row.pin),
                priority=row.priority,
                scope=Scope(row.scope),
                deleted=bool(row.deleted),
                tokens=tokens.get(row.id, {}),
            )
            for row in rows
        ]

    # -- inspection ------------------------------------------------------------------------------

    def query(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Run a read-only SQL statement and return its rows as dicts (column name → value).

        Any statement that would change anything (INSERT, UPDATE, DELETE, DDL, ATTACH, a
        state-changing PRAGMA, VACUUM) raises :class:`ReadOnlyViolation` and the database is
        left byte for byte as it was. Bind values with ``params`` (``?`` or ``:name``).
        Read-only introspection works: ``pragma_table_info('pages')``, ``pragma_index_list``,
        ``pragma_foreign_key_list`` and ``sqlite_schema`` on SQLite, ``information_schema`` on
        PostgreSQL.

        ``timeout`` is a time limit in seconds (``None``: none): a statement still running
        then stops with :class:`QueryTimeout` and its read snapshot is released. A Ctrl-C stops
        a running statement too (``KeyboardInterrupt``).
        """
        columns, rows = self.db.query(sql, params, limit=limit, timeout=timeout)
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def backup(self, destination: str | os.PathLike[str]) -> str:
        """A consistent copy of the database at a new file (``VACUUM INTO``, mode 0600)."""
        return str(self.db.backup(destination))

    def vacuum(self) -> tuple[int, int]:
        """Reclaim free pages; returns the file size in bytes before and after."""
        return self.db.vacuum()

    def info(self) -> StoreInfo:
        """Versions, pragmas in force, and row counts."""
        db = self.db
        pragmas: dict[str, Any] = {}
        counts: dict[str, int] = {}
        with db.transaction(write=False) as conn:
            if db.dialect == "sqlite":
                for name in (
                    "journal_mode",
                    "synchronous",
                    "foreign_keys",
                    "busy_timeout",
                    "mmap_size",
                    "page_size",
                    "page_count",
                    "freelist_count",
                ):
                    pragmas[name] = conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name, table in (
                ("pages", t.pages),
                ("page_versions", t.page_versions),
                ("representations", t.representations),
                ("sessions", t.sessions),
                ("journal", t.journal),
                ("lifecycle_events", t.lifecycle_events),
                ("langgraph_checkpoints", t.lg_checkpoints),
                ("langgraph_writes", t.lg_writes),
            ):
                counts[name] = int(
                    conn.execute(select(func.count()).select_from(table)).scalar() or 0
                )
            for state, number in conn.execute(
                select(t.journal.c.state, func.count()).group_by(t.journal.c.state)
            ):
                counts[f"journal_{state}"] = int(number)
        synchronous_names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        if "synchronous" in pragmas:
            pragmas["synchronous"] = synchronous_names.get(
                pragmas["synchronous"], pragmas["synchronous"]
            )
        file_bytes = None
        if db.path and os.path.exists(db.path):
            file_bytes = os.path.getsize(db.path)
        return StoreInfo(
            package_version=_package_version(),
            schema_revision=db.current_revision(),
            head_revision=db.head_revision(),
            sqlite_version=sqlite3.sqlite_version,
            url=db.display_url,
            encoding=self.encoding,
            durability=db.durability,
            pragmas=pragmas,
            counts=counts,
            file_bytes=file_bytes,
        )

    def check(self, *, recount_tokens: bool = True) -> CheckReport:
        """Verify the database: SQLite integrity, fidelities, pointers, token counts, journal.

        * ``PRAGMA integrity_check`` and ``foreign_key_check`` are clean;
        * every live page version has every fidelity of its type's ladder, with token counts
          that never increase down the ladder;
        * every pointer resolves to its own page and version;
        * stored token counts equal a fresh count (``recount_tokens``);
        * every journal entry's checksum verifies, and nothing is left committed-but-unapplied;
        * every LangGraph checkpoint and pending write verifies against its checksum.
        """
        findings: list[Finding] = []
        checked: dict[str, int] = {}
        with self.db.transaction(write=False) as conn:
            if self.db.dialect == "sqlite":
                integrity = [row[0] for row in conn.exec_driver_sql("PRAGMA integrity_check")]
                if integrity != ["ok"]:
                    findings.extend(Finding("integrity", line) for line in integrity[:20])
                for row in conn.exec_driver_sql("PRAGMA foreign_key_check"):
                    findings.append(Finding("foreign_key", f"{row[0]} rowid {row[1]} -> {row[2]}"))
            findings.extend(self._check_pages(conn, checked, recount_tokens))
            findings.extend(self._check_journal(conn, checked))
            findings.extend(Finding(kind, detail) for kind, detail in damaged_rows(conn, checked))
        return CheckReport(ok=not findings, findings=findings, checked=checked)

    def _check_pages(
        self, conn: Connection, checked: dict[str, int], recount_tokens: bool
    ) -> Iterator[Finding]:
        """Every stored value decodes, and every live version is whole and self-consistent."""
        heads: dict[int, int] = {}
        keys: dict[int, str] = {}
        for page in conn.execute(select(t.pages)):
            keys[page.id] = str(page.key)
            problem = _undecodable(
                (PageType, page.type), (Pin, page.pin), (Scope, page.scope), (None, page.provenance)
            )
            if problem:
                yield Finding("undecodable", f"page {page.key!r}: {problem}")
        reps_by_version: dict[tuple[int, int], dict[Fidelity, Any]] = {}
        count = 0
        for rep in conn.execute(select(t.representations)):
            count += 1
            name = f"{keys.get(rep.page_id, rep.page_id)}@{rep.version}"
            problem = _undecodable((Fidelity, rep.fidelity), (Fidelity, rep.source))
            if problem or not isinstance(rep.tokens, int) or not isinstance(rep.content, str):
                yield Finding(
                    "undecodable", f"{name} representation: {problem or 'bad column type'}"
                )
                continue
            reps_by_version.setdefault((rep.page_id, rep.version), {})[Fidelity(rep.fidelity)] = rep
            if (
                rep.same_as is None
                and rep.sha256 is not None
                and text_sha256(rep.content) != rep.sha256
            ):
                yield Finding("content_hash", f"{name} {rep.fidelity} text does not match its hash")
        checked["representations"] = count
        yield from self._check_layout(reps_by_version, keys)
        versions = conn.execute(select(t.page_versions)).all()
        checked["page_versions"] = len(versions)
        for row in versions:
            heads[row.page_id] = max(heads.get(row.page_id, 0), int(row.version))
            name = f"{keys.get(row.page_id, row.page_id)}@{row.version}"
            problem = _undecodable(
                (PageType, row.type),
                (Op, row.op),
                (Pin, row.pin),
                (Scope, row.scope),
                (None, row.fields),
                (None, row.provenance),
            )
            if problem:
                yield Finding("undecodable", f"{name}: {problem}")
                continue
            if row.row_sha256 is not None:
                try:
                    intact = version_row_sha256(row._mapping) == row.row_sha256
                except (TypeError, ValueError, UnicodeError):
                    intact = False
                if not intact:
                    yield Finding("row_hash", f"{name} version row does not match its hash")
                    continue
            if row.deleted:
                continue
            yield from self._check_version(
                conn,
                name,
                row,
                reps_by_version.get((row.page_id, row.version), {}),
                recount_tokens,
                reps_by_version.get((row.page_id, row.version + 1), {}),
            )
        by_version = {(row.page_id, row.version): row for row in versions}
        for page in conn.execute(select(t.pages)):
            if heads.get(page.id) != page.version:
                yield Finding(
                    "head",
                    f"page {page.key!r} head is version {page.version}, newest stored is "
                    f"{heads.get(page.id)}",
                )
                continue
            # The pages row caches its head version's metadata: the two must agree.
            version_row = by_version.get((page.id, page.version))
            cached = ("type", "pin", "priority", "scope", "provenance", "deleted")
            if version_row is not None and any(
                getattr(page, name) != getattr(version_row, name) for name in cached
            ):
                yield Finding("head", f"page {page.key!r} disagrees with its head version row")

    @staticmethod
    def _check_layout(
        reps_by_version: Mapping[tuple[int, int], Mapping[Fidelity, Any]], keys: Mapping[int, str]
    ) -> Iterator[Finding]:
        """The append layout holds together: chains are unbroken, shared texts exist."""
        for (page_id, version), reps in reps_by_version.items():
            name = f"{keys.get(page_id, page_id)}@{version}"
            for fidelity, rep in reps.items():
                if rep.same_as is not None:
                    owner = reps.get(Fidelity(rep.same_as)) if rep.same_as in _FIDELITIES else None
                    if owner is None or owner.same_as is not None or rep.content != "":
                        yield Finding(
                            "layout", f"{name} {fidelity.value} shares a text that is not there"
                        )
                    elif owner.sha256 is not None and rep.sha256 != owner.sha256:
                        yield Finding(
                            "content_hash", f"{name} {fidelity.value} text does not match its hash"
                        )
                    elif rep.chain_start is not None and owner.chain_start is None:
                        yield Finding(
                            "layout", f"{name} {fidelity.value} shares a piece with a whole text"
                        )
                if rep.chain_start is None:
                    continue
                start = rep.chain_start
                previous = reps_by_version.get((page_id, version - 1), {}).get(fidelity)
                base = reps_by_version.get((page_id, start), {}).get(fidelity)
                # The base holds a whole text, and every version after it up to this one
                # carries a piece of the same chain.
                unbroken = (
                    isinstance(start, int)
                    and 0 < start < version
                    and base is not None
                    and base.chain_start is None
                    and previous is not None
                    and (version - 1 == start or previous.chain_start == start)
                )
                if not unbroken:
                    yield Finding(
                        "layout", f"{name} {fidelity.value} segment chain from {start} is broken"
                    )

    def _check_version(
        self,
        conn: Connection,
        name: str,
        row: Any,
        reps: dict[Fidelity, Any],
        recount_tokens: bool,
        following: Mapping[Fidelity, Any],
    ) -> Iterator[Finding]:
        policy = POLICIES[PageType(row.type)]
        missing = [f.value for f in policy.ladder if f not in reps]
        if missing:
            yield Finding("fidelity_missing", f"{name} lacks {', '.join(missing)}")
            return
        extra = [f.value for f in reps if f not in policy.ladder]
        if extra:
            yield Finding("fidelity_extra", f"{name} has {', '.join(extra)} off its ladder")
        ladder_tokens = [reps[f].tokens for f in policy.ladder]
        if ladder_tokens != sorted(ladder_tokens, reverse=True):
            yield Finding(
                "token_order", f"{name} token counts rise down the ladder: {ladder_tokens}"
            )
        full = reps[Fidelity.FULL].content
        if (
            row.content_hash
            and reps[Fidelity.FULL].chain_start is None
            and text_sha256(full) != row.content_hash
        ):
            yield Finding("content_hash", f"{name} full content does not match its hash")
        if recount_tokens:
            for fidelity, rep in reps.items():
                next_rep = following.get(fidelity)
                if next_rep is not None and next_rep.chain_start is not None:
                    # Inside a chain: its whole text is counted where the chain ends, once,
                    # rather than at every version (which would cost the chain's size squared).
                    continue
                try:
                    text = (
                        rep.content
                        if rep.chain_start is None and rep.same_as is None
                        else read_text(conn, row.page_id, row.version, fidelity)
                    )
                    actual = self.counter.count(text or "")
                except (UnicodeError, ValueError, TypeError, CorruptDatabase):
                    yield Finding(
                        "undecodable", f"{name} {fidelity.value} text cannot be tokenized"
                    )
                    continue
                if actual != rep.tokens:
                    yield Finding(
                        "token_count",
                        f"{name} {fidelity.value} stores {rep.tokens} tokens, counts {actual}",
                    )
        pointer = reps.get(Fidelity.POINTER)
        if (
            pointer is not None
            and pointer.source == Fidelity.POINTER.value
            and pointer.same_as is None
        ):
            parsed = parse_pointer(pointer.content)
            key = name.rsplit("@", 1)[0]
            if parsed != (key, row.version):
                yield Finding("pointer", f"{name} pointer does not resolve to itself: {parsed}")

    def _check_journal(self, conn: Connection, checked: dict[str, int]) -> Iterator[Finding]:
        count = 0
        for row in conn.execute(JOURNAL_ROWS.where(t.journal.c.state != "quarantined")):
            count += 1
            problem = verify_row(row)
            if problem:
                yield Finding("journal_checksum", f"journal lsn {row.lsn}: {problem}")
            if row.state == "committed":
                yield Finding(
                    "journal_unapplied", f"journal lsn {row.lsn} is committed but not applied"
                )
        checked["journal"] = count


_FIDELITIES = frozenset(fidelity.value for fidelity in Fidelity)


@contextmanager
def decoding(what: str) -> Iterator[None]:
    """Turn a damaged value met while decoding a row into :class:`CorruptDatabase`."""
    try:
        yield
    except (ValueError, TypeError, KeyError, UnicodeError) as exc:
        if isinstance(exc, ClawVMError):
            raise
        raise CorruptDatabase(
            f"{what} holds a damaged value ({type(exc).__name__}); run check"
        ) from None


def _undecodable(*pairs: tuple[type[StrEnum] | None, Any]) -> str | None:
    """The first value that does not decode: an enum member, or JSON text when enum is None."""
    for enum, value in pairs:
        try:
            if enum is None:
                if value is not None:
                    json.loads(value)
            else:
                enum(value)
        except (ValueError, TypeError) as exc:
            return f"{value!r:.60} is not a valid {enum.__name__ if enum else 'JSON value'} ({type(exc).__name__})"
    return None


def check_name(value: object, what: str) -> str:
    """A project or session name: a non-empty string of at most 256 characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string")
    if len(value) > 256 or "\x00" in value:
        raise InvalidInput(f"{what} must be at most 256 characters with no NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} must be valid Unicode text: {value!r}") from None
    return value


def check_filter(value: object, what: str) -> str | None:
    """An optional project or session filter: None, or a valid name."""
    return None if value is None else check_name(value, what)


def check_limit(value: object) -> int | None:
    """An optional row limit: None, or an integer from 1 to 2**31 - 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
        raise InvalidInput("limit must be an integer from 1 to 2147483647")
    return value


def type_name(value: object) -> str:
    """The name of ``value``'s type, for error messages."""
    return type(value).__name__
