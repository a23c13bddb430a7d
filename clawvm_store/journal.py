"""The write-ahead journal: stage, validate, commit, apply.

Every change to durable state is first a journal entry. Its life:

``staged`` (appended, checksummed, not yet applied) → ``committed`` or ``rejected`` (validated at a
lifecycle boundary, with a reason code when rejected) → ``applied`` (materialized into a page
version with every fidelity). A corrupt entry found by recovery becomes ``quarantined`` and is never
applied.

Validation and apply of one boundary run in a single transaction, entry by entry in LSN order, so
a later entry in the same boundary validates against the effect of the earlier ones, and a crash
anywhere leaves either all of the boundary or none of it.

Merge rules (deterministic, non-destructive), for ``op="merge"`` on a page's structured fields:

* a key absent from the page is added;
* two objects under the same key are merged recursively by these same rules;
* a list is extended by the new items not already in it, in their given order;
* an equal scalar is a no-op; a *different* scalar is a conflict: it is rejected with
  ``DESTRUCTIVE_OP`` unless the update carries ``expected_version`` equal to the page's last
  committed version, in which case the new scalar wins;
* content given with a merge is appended to the page's content, as ``append`` does.

``append`` adds the new content after the old (separated by a newline) and never needs a version.
``set`` and ``delete`` need ``expected_version`` equal to the last committed version, or a key
that does not exist yet (``expected_version=None``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    insert,
    literal_column,
    select,
    update,
)

from . import schema as t
from .db import Prepared
from .errors import CorruptDatabase, InvalidInput, NotFound, SchemaInvalid
from .pages import POLICIES, Boundary, Fidelity, Op, PageType, Pin, ReasonCode, Scope
from .representations import (
    AppendBasis,
    Compressor,
    ContentRepresentations,
    basis_after,
    build_appended_representations,
    build_content_representations,
    canonical_json,
    text_sha256,
    validate_fields,
    with_pointer,
)
from .segments import append_basis, read_text
from .tokens import TokenCounter

DEFAULT_MAX_CONTENT_BYTES = 8 * 1024 * 1024
MAX_KEY_CHARS = 512
_KEY_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S")
_PROVENANCE_REFS = ("tool_call", "page", "uri")
_BASIS_CACHE_ENTRIES = 4096

Clock = Callable[[], str]

# Hot-path statements are built once: constructing a Core statement per call costs about three
# times what executing a prebuilt one does, and a turn runs a couple of dozen of them.
# The head without its text: an append builds on the head's tokens, tail and fold, never on
# a copy of the whole text (segments.append_basis).
_FULL_REP = t.representations.alias("full_rep")
_COMPRESSED_REP = t.representations.alias("compressed_rep")
_HEAD = (
    select(
        t.pages,
        t.page_versions.c.fields,
        t.page_versions.c.lsn.label("head_lsn"),
        # Where the head's chains start, read fresh every time: gc may re-chain them.
        _FULL_REP.c.chain_start.label("full_chain"),
        _COMPRESSED_REP.c.chain_start.label("compressed_chain"),
        _COMPRESSED_REP.c.fidelity.label("compressed_rung"),
    )
    .select_from(
        t.pages.outerjoin(
            t.page_versions,
            and_(
                t.page_versions.c.page_id == t.pages.c.id,
                t.page_versions.c.version == t.pages.c.version,
            ),
        )
        .outerjoin(
            _FULL_REP,
            and_(
                _FULL_REP.c.page_id == t.pages.c.id,
                _FULL_REP.c.version == t.pages.c.version,
                _FULL_REP.c.fidelity == "full",
            ),
        )
        .outerjoin(
            _COMPRESSED_REP,
            and_(
                _COMPRESSED_REP.c.page_id == t.pages.c.id,
                _COMPRESSED_REP.c.version == t.pages.c.version,
                _COMPRESSED_REP.c.fidelity == "compressed",
            ),
        )
    )
    .where(
        t.pages.c.project == bindparam("b_project"),
        t.pages.c.session_id == bindparam("b_session"),
        t.pages.c.key == bindparam("b_key"),
    )
)
_IDEMPOTENT = select(t.journal.c.lsn, t.journal.c.checksum).where(
    t.journal.c.project == bindparam("b_project"),
    t.journal.c.session_id == bindparam("b_session"),
    t.journal.c.idempotency_key == bindparam("b_idempotency"),
)
_WRITERS = select(t.projects.c.writers).where(t.projects.c.name == bindparam("b_project"))
_RESOLVE = (
    update(t.journal)
    .where(t.journal.c.lsn == bindparam("b_lsn"), t.journal.c.state == "staged")
    .values(
        state=bindparam("b_state"),
        reason=bindparam("b_reason"),
        detail=bindparam("b_detail"),
        event_id=bindparam("b_event"),
        version=bindparam("b_version"),
        resolved_at=bindparam("b_at"),
    )
)
# An applied entry gives its content up: the version it made holds it (with its own SHA-256),
# and the journal row has only ever held the content's hash (journal_content holds the text
# until then), so the row and its checksum stay as they were staged.
_APPLIED = (
    update(t.journal)
    .where(t.journal.c.lsn == bindparam("b_lsn"))
    .values(
        state="applied",
        event_id=bindparam("b_event"),
        version=bindparam("b_version"),
        resolved_at=bindparam("b_at"),
    )
)
_CONTENT_DROP = delete(t.journal_content).where(t.journal_content.c.lsn == bindparam("b_lsn"))
# The journal's partial indexes (revision 0013) name their state as a literal, and a planner
# can only use one for a query that says the same literal: a bound parameter proves nothing.
# Staged or committed is asked as two queries, one per index: SQLite uses neither partial index
# for an IN list or an OR of the two.
STAGED = t.journal.c.state == literal_column("'staged'")
COMMITTED = t.journal.c.state == literal_column("'committed'")
JOURNAL_WITH_CONTENT = t.journal.outerjoin(
    t.journal_content, t.journal_content.c.lsn == t.journal.c.lsn
)
"""The journal beside the content its pending entries keep aside: select from this."""
JOURNAL_ROWS = select(t.journal, t.journal_content.c.content).select_from(JOURNAL_WITH_CONTENT)
"""Journal rows with the content of those not applied yet (``content``; NULL once applied):
what :func:`row_to_entry` and :func:`verify_row` read. Filter and order it like ``t.journal``."""
_PAGE_UPDATE = (
    update(t.pages)
    .where(t.pages.c.id == bindparam("b_id"))
    .values(
        type=bindparam("b_type"),
        pin=bindparam("b_pin"),
        priority=bindparam("b_priority"),
        version=bindparam("b_version"),
        provenance=bindparam("b_provenance"),
        deleted=bindparam("b_deleted"),
        updated_at=bindparam("b_at"),
        fold=bindparam("b_fold"),
    )
)
_EVENT_COUNTS = (
    update(t.lifecycle_events)
    .where(t.lifecycle_events.c.id == bindparam("b_id"))
    .values(committed=bindparam("b_committed"), rejected=bindparam("b_rejected"))
)


def _insert(table: Any, columns: Sequence[str], returning: Any = None) -> Prepared:
    statement = insert(table).values({name: bindparam(name) for name in columns})
    return Prepared(statement.returning(returning) if returning is not None else statement)


# The statements a turn runs for each update, compiled once per dialect (db.Prepared).
_P_HEAD = Prepared(_HEAD)
_P_IDEMPOTENT = Prepared(_IDEMPOTENT)
_P_WRITERS = Prepared(_WRITERS)
_P_RESOLVE = Prepared(_RESOLVE)
_P_APPLIED = Prepared(_APPLIED)
_P_CONTENT_DROP = Prepared(_CONTENT_DROP)
_P_PAGE_UPDATE = Prepared(_PAGE_UPDATE)
_P_EVENT_COUNTS = Prepared(_EVENT_COUNTS)
_P_STAGE = _insert(
    t.journal,
    (
        "session_id",
        "project",
        "principal",
        "key",
        "op",
        "page_type",
        "scope",
        "payload",
        "checksum",
        "state",
        "idempotency_key",
        "staged_at",
    ),
    t.journal.c.lsn,
)
_P_CONTENT_INSERT = _insert(t.journal_content, ("lsn", "content"))
_P_PAGE_INSERT = _insert(
    t.pages,
    (
        "project",
        "session_id",
        "key",
        "type",
        "scope",
        "pin",
        "priority",
        "version",
        "provenance",
        "deleted",
        "created_at",
        "updated_at",
        "fold",
    ),
    t.pages.c.id,
)
_P_VERSION_INSERT = _insert(t.page_versions, [c.name for c in t.page_versions.columns])
_P_REP_INSERT = _insert(t.representations, [c.name for c in t.representations.columns])
_P_EVENT_INSERT = _insert(
    t.lifecycle_events,
    ("session_id", "project", "boundary", "turn", "detail", "at"),
    t.lifecycle_events.c.id,
)


def check_key(key: object) -> str:
    """Validate a page key: a non-empty string without whitespace or control characters."""
    if not isinstance(key, str) or not key:
        raise InvalidInput("a page key must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidInput(f"a page key must be at most {MAX_KEY_CHARS} characters")
    if _KEY_FORBIDDEN.search(key):
        raise InvalidInput(f"a page key must not contain whitespace or control characters: {key!r}")
    if not key.isprintable() or not _encodable(key):
        raise InvalidInput(f"a page key must be valid, printable Unicode text: {key!r}")
    return key


def _too_large(text: str, limit: int) -> bool:
    # Measured in bytes, as the limit is; the encode only runs when the text could exceed it.
    return len(text) > limit or (
        len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit
    )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Update:
    """One staged change to one page: the tuple of DESIGN 1.4 plus what the page needs."""

    key: str
    op: Op
    page_type: PageType | None
    content: str | None = None
    structured: Mapping[str, Any] | None = None
    pin: Pin | None = None
    priority: float | None = None
    scope: Scope = Scope.SESSION
    provenance: Mapping[str, Any] | None = None
    expected_version: int | None = None
    idempotency_key: str | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON-able body written to the journal and covered by its checksum.

        Only what the update sets: an absent member means "not given" (readers use ``.get``),
        so a journal row does not spend bytes on a run of ``null`` members (revision 0011).
        """
        return lean_payload(
            {
                "content": self.content,
                "structured": dict(self.structured) if self.structured is not None else None,
                "pin": self.pin.value if self.pin else None,
                "priority": self.priority,
                "provenance": dict(self.provenance) if self.provenance is not None else None,
                "expected_version": self.expected_version,
            }
        )


@dataclass(frozen=True)
class Entry:
    """A journal row as the engine works with it."""

    lsn: int
    session_id: str
    project: str
    principal: str | None
    key: str
    op: Op
    page_type: PageType | None
    scope: Scope
    payload: dict[str, Any]
    checksum: str
    state: str
    idempotency_key: str | None

    @property
    def page_session(self) -> str:
        """The ``session_id`` column of the page this entry writes ('' for project scope)."""
        return self.session_id if self.scope is Scope.SESSION else ""


def entry_checksum(
    *,
    project: str,
    session_id: str,
    key: str,
    op: str,
    page_type: str | None,
    scope: str,
    payload_json: str,
) -> str:
    """SHA-256 over the entry's identity and payload, so a flipped key or byte is detected."""
    body = canonical_json(
        {
            "project": project,
            "session": session_id,
            "key": key,
            "op": op,
            "type": page_type,
            "scope": scope,
            "payload": payload_json,
        }
    )
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def lean_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` without its ``None`` members: the form every journal row is written in."""
    return {name: value for name, value in payload.items() if value is not None}


def compact_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload a journal row holds: its content replaced by the content's SHA-256.

    Deterministic, so a retried stage with the same idempotency key still recognizes itself
    (:meth:`JournalEngine.stage`), and the crash kit can check an acknowledged stage's content.
    """
    lean = lean_payload(payload)
    content = lean.get("content")
    if isinstance(content, str):
        del lean["content"]
        lean["content_sha256"] = text_sha256(content)
    return lean


def mark_applied(conn: Connection, entry: Entry, *, event_id: int, version: int, at: str) -> None:
    """Set ``entry`` applied as ``version``; its content now lives in the version it made."""
    _P_APPLIED.execute(conn, applied_params(entry, event_id=event_id, version=version, at=at))
    _P_CONTENT_DROP.execute(conn, {"b_lsn": entry.lsn})


def row_to_entry(row: Any) -> Entry:
    """Decode a row of :data:`JOURNAL_ROWS`; raises ``ValueError`` when its payload is not JSON.

    The entry's payload holds its content again (``content``) while the entry is not applied.
    """
    payload = json.loads(row.payload)
    content = getattr(row, "content", None)
    if isinstance(content, str) and isinstance(payload, dict):
        payload["content"] = content
    return Entry(
        lsn=row.lsn,
        session_id=row.session_id,
        project=row.project,
        principal=row.principal,
        key=row.key,
        op=Op(row.op),
        page_type=PageType(row.page_type) if row.page_type else None,
        scope=Scope(row.scope),
        payload=payload,
        checksum=row.checksum,
        state=row.state,
        idempotency_key=row.idempotency_key,
    )


def verify_row(row: Any) -> str | None:
    """Why a journal row cannot be trusted (``None`` when its checksum and payload are sound).

    Never raises: any column of the wrong type or encoding is itself the answer.
    """
    try:
        fields = (
            row.project,
            row.session_id,
            row.key,
            row.op,
            row.scope,
            row.payload,
            row.checksum,
        )
        if not all(isinstance(value, str) for value in fields):
            return "undecodable entry: a column is not text"
        if row.page_type is not None and not isinstance(row.page_type, str):
            return "undecodable entry: page_type is not text"
        row.payload.encode("utf-8")
        expected = entry_checksum(
            project=row.project,
            session_id=row.session_id,
            key=row.key,
            op=row.op,
            page_type=row.page_type,
            scope=row.scope,
            payload_json=row.payload,
        )
    except (UnicodeError, TypeError, ValueError) as exc:
        return f"undecodable entry: {type(exc).__name__}"
    if expected != row.checksum:
        return "checksum mismatch"
    try:
        decoded = json.loads(row.payload)
        Op(row.op)
        Scope(row.scope)
        if row.page_type is not None:
            PageType(row.page_type)
    except (ValueError, TypeError) as exc:
        return f"undecodable entry: {exc}"
    if not isinstance(decoded, dict):
        return "undecodable entry: payload is not an object"
    return _content_problem(row, decoded)


def content_missing(entry: Entry) -> bool:
    """Whether ``entry`` names content (by its hash) that is no longer kept for it."""
    return "content_sha256" in entry.payload and not isinstance(entry.payload.get("content"), str)


def _content_problem(row: Any, payload: Mapping[str, Any]) -> str | None:
    """Why the content a row of :data:`JOURNAL_ROWS` names is not sound (``None`` if it is)."""
    digest = payload.get("content_sha256")
    content = getattr(row, "content", None)
    if content is None:
        # A committed entry whose version is already in place needs no content: re-applying
        # it only marks it applied (recovery checks the others before it builds them).
        if digest is not None and row.state == "staged":
            return "content missing: the entry is not applied and its content is gone"
        return None
    if not isinstance(content, str):
        return "undecodable entry: its content is not text"
    if digest is None or "content" in payload:
        return "content row without a content hash in the payload"
    try:
        actual = text_sha256(content)
    except (UnicodeError, TypeError, ValueError) as exc:
        return f"undecodable entry: {type(exc).__name__}"
    return None if actual == digest else "content does not match its hash"


@dataclass(frozen=True)
class Verdict:
    """The outcome of validating one entry: ``reason`` is ``None`` when it may commit."""

    reason: ReasonCode | None
    detail: str = ""


@dataclass(frozen=True)
class StagedUpdate:
    """The receipt of ``Session.stage``: the entry's LSN and key.

    ``duplicate`` is True when an idempotency key matched an earlier entry, whose LSN this is.
    """

    lsn: int
    key: str
    duplicate: bool = False


@dataclass
class WritebackResult:
    """What one lifecycle boundary did: the LSNs it committed and (LSN, reason) it rejected."""

    boundary: Boundary
    committed: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    details: dict[int, str] = field(default_factory=dict)
    versions: dict[int, int] = field(default_factory=dict)
    event_id: int | None = None
    # Staged updates a boundary threw away without validating them (writeback=False): each one
    # is a flush_miss. Only harness tests do this.
    discarded: list[int] = field(default_factory=list)
    # Updates the boundary journaled itself before writing back (``end_turn(messages=...)``).
    staged: list[StagedUpdate] = field(default_factory=list)


@dataclass(frozen=True)
class Head:
    """The current committed head of a page, as validation and apply see it."""

    page_id: int
    type: PageType
    version: int
    pin: Pin
    priority: float
    scope: Scope
    provenance: dict[str, Any] | None
    deleted: bool
    fields: dict[str, Any] | None
    fold: str | None = None  # the fold JSON of a chained head version
    lsn: int | None = None
    # Per chainable level: the version an append to this head chains from.
    chain_starts: Mapping[Fidelity, int] = field(default_factory=dict)
    # In memory only (a session's read-your-writes overlay): what an append builds on, and the
    # whole full text when known.
    basis: AppendBasis | None = None
    content: str | None = None


def merge_fields(
    old: Mapping[str, Any], new: Mapping[str, Any], *, may_overwrite: bool, path: str = ""
) -> tuple[dict[str, Any], str | None]:
    """Merge ``new`` into ``old`` by the module's merge rules; returns (merged, conflict path)."""
    merged = dict(old)
    for name, value in new.items():
        where = f"{path}.{name}" if path else name
        if name not in merged:
            merged[name] = value
            continue
        current = merged[name]
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            inner, conflict = merge_fields(current, value, may_overwrite=may_overwrite, path=where)
            if conflict:
                return merged, conflict
            merged[name] = inner
        elif isinstance(current, list) and isinstance(value, list):
            extended = list(current)
            for item in value:
                if item not in extended:  # against the list as it grows: no new duplicates
                    extended.append(item)
            merged[name] = extended
        elif current != value:
            if not may_overwrite:
                return merged, where
            merged[name] = value
    return merged, None


class JournalEngine:
    """Stages entries and runs validated writeback on a connection the caller's transaction owns."""

    def __init__(
        self,
        *,
        counter: TokenCounter,
        compressor: Compressor,
        clock: Clock,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
    ) -> None:
        self.counter = counter
        self.compressor = compressor
        self.clock = clock
        self.max_content_bytes = max_content_bytes
        # (page id, version, lsn) -> the basis an append to that version builds on, remembered
        # from apply so a running agent never reads its pages back. Keyed by the LSN too: a
        # rolled-back boundary re-applies the same entries as the same versions.
        self._bases: OrderedDict[tuple[int, int, int | None], AppendBasis] = OrderedDict()

    # -- staging ---------------------------------------------------------------------------------

    def stage(
        self,
        conn: Connection,
        *,
        project: str,
        session_id: str,
        principal: str | None,
        update: Update,
    ) -> tuple[int, bool]:
        """Append ``update`` as a staged entry; returns (lsn, whether it already existed).

        With an idempotency key, a retry of the same update (after a crash left the caller unsure
        whether the first attempt landed) returns the original entry instead of writing twice.
        """
        payload = update.payload()
        content = payload.get("content")
        if isinstance(content, str) and _too_large(content, self.max_content_bytes):
            # Keep the journal small; the rejection reason says what was too large.
            del payload["content"]
            payload["content_bytes"] = len(content.encode("utf-8", "surrogatepass"))
            content = None
        try:
            if isinstance(content, str):
                content.encode("utf-8")  # the hash below would take a lone surrogate
            payload_json = canonical_json(compact_payload(payload))
            payload_json.encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            raise InvalidInput(f"the update cannot be journaled: {exc}") from None
        page_type = update.page_type.value if update.page_type else None
        checksum = entry_checksum(
            project=project,
            session_id=session_id,
            key=update.key,
            op=update.op.value,
            page_type=page_type,
            scope=update.scope.value,
            payload_json=payload_json,
        )
        if update.idempotency_key is not None:
            existing = _P_IDEMPOTENT.first(
                conn,
                {
                    "b_project": project,
                    "b_session": session_id,
                    "b_idempotency": update.idempotency_key,
                },
            )
            if existing is not None:
                # Staged or applied, the row is as it was written: the same update has the
                # same checksum.
                if existing.checksum != checksum:
                    raise InvalidInput(
                        f"idempotency key {update.idempotency_key!r} was already used for a "
                        f"different update (lsn {existing.lsn})"
                    )
                return int(existing.lsn), True
        inserted = _P_STAGE.first(
            conn,
            {
                "session_id": session_id,
                "project": project,
                "principal": principal,
                "key": update.key,
                "op": update.op.value,
                "page_type": page_type,
                "scope": update.scope.value,
                "payload": payload_json,
                "checksum": checksum,
                "state": "staged",
                "idempotency_key": update.idempotency_key,
                "staged_at": self.clock(),
            },
        )
        lsn = int(inserted.lsn)
        if content is not None:
            _P_CONTENT_INSERT.execute(conn, {"lsn": lsn, "content": content})
        return lsn, False

    # -- reading heads ---------------------------------------------------------------------------

    def head(self, conn: Connection, project: str, page_session: str, key: str) -> Head | None:
        """The committed head of one page (with its full content), or ``None``."""
        page = _P_HEAD.first(conn, {"b_project": project, "b_session": page_session, "b_key": key})
        if page is None:
            return None
        fields_json = page.fields
        return Head(
            page_id=page.id,
            type=PageType(page.type),
            version=page.version,
            pin=Pin(page.pin),
            priority=page.priority,
            scope=Scope(page.scope),
            provenance=json.loads(page.provenance) if page.provenance else None,
            deleted=bool(page.deleted),
            fields=json.loads(fields_json) if fields_json else None,
            fold=page.fold,
            lsn=page.head_lsn,
            chain_starts={
                fidelity: int(chain) if chain is not None else page.version
                for fidelity, chain, present in (
                    (Fidelity.FULL, page.full_chain, True),
                    (Fidelity.COMPRESSED, page.compressed_chain, page.compressed_rung),
                )
                if present
            },
        )

    # -- validation ------------------------------------------------------------------------------

    def _check_schema(self, entry: Entry, head: Head | None) -> Verdict | None:
        payload = entry.payload
        if entry.op is Op.DELETE:
            return None
        page_type = entry.page_type or (head.type if head else None)
        if page_type is None:
            return Verdict(ReasonCode.SCHEMA_INVALID, "a new page needs a type")
        if head is not None and not head.deleted and entry.page_type and entry.op is not Op.SET:
            if entry.page_type is not head.type:
                return Verdict(
                    ReasonCode.SCHEMA_INVALID,
                    f"{entry.op.value} on a {head.type.value} page cannot change its type "
                    f"to {entry.page_type.value}",
                )
        if "content_bytes" in payload:
            return Verdict(
                ReasonCode.SCHEMA_INVALID,
                f"content of {payload['content_bytes']} bytes exceeds the limit of "
                f"{self.max_content_bytes} bytes",
            )
        content = payload.get("content")
        structured = payload.get("structured")
        if content is not None and not isinstance(content, str):
            return Verdict(ReasonCode.SCHEMA_INVALID, "content must be text")
        if isinstance(content, str):
            if not content.strip():
                return Verdict(ReasonCode.SCHEMA_INVALID, "content is empty")
            try:
                size = len(content.encode("utf-8"))
            except UnicodeEncodeError:
                return Verdict(ReasonCode.SCHEMA_INVALID, "content is not valid Unicode text")
            if size > self.max_content_bytes:
                return Verdict(
                    ReasonCode.SCHEMA_INVALID,
                    f"content of {size} bytes exceeds the limit of {self.max_content_bytes}",
                )
        if entry.op in (Op.SET, Op.APPEND) and content is None:
            return Verdict(ReasonCode.SCHEMA_INVALID, f"{entry.op.value} needs content")
        if entry.op is Op.MERGE:
            if not isinstance(structured, dict):
                return Verdict(
                    ReasonCode.SCHEMA_INVALID, "merge needs structured fields (an object)"
                )
            if content is None and (head is None or head.deleted):
                return Verdict(ReasonCode.SCHEMA_INVALID, "merge into a new page needs content")
        elif structured is not None and not isinstance(structured, dict):
            return Verdict(ReasonCode.SCHEMA_INVALID, "structured fields must be an object")
        priority = payload.get("priority")
        if priority is not None and (
            not isinstance(priority, int | float) or priority != priority or abs(priority) > 1e9
        ):
            return Verdict(ReasonCode.SCHEMA_INVALID, "priority must be a finite number")
        if structured is not None and entry.op is not Op.MERGE:
            try:
                validate_fields(page_type, structured)
            except SchemaInvalid as exc:
                return Verdict(ReasonCode.SCHEMA_INVALID, str(exc))
        return None

    def _check_scope(self, conn: Connection, entry: Entry) -> Verdict | None:
        if entry.scope is Scope.SESSION and not entry.session_id:
            return Verdict(ReasonCode.SCOPE_DENIED, "a session-scoped page needs a session")
        if entry.scope is Scope.PROJECT and entry.principal is not None:
            found = _P_WRITERS.first(conn, {"b_project": entry.project})
            writers = found[0] if found is not None else None
            if writers is not None and entry.principal not in json.loads(writers):
                return Verdict(
                    ReasonCode.SCOPE_DENIED,
                    f"principal {entry.principal!r} may not write project-scoped pages of "
                    f"project {entry.project!r}",
                )
        return None

    def _check_provenance(
        self, conn: Connection, entry: Entry, page_type: PageType | None, head: Head | None
    ) -> Verdict | None:
        provenance = entry.payload.get("provenance")
        if provenance is None:
            inherited = head is not None and not head.deleted and head.provenance is not None
            if inherited and entry.op is not Op.SET:
                return None  # an append or merge keeps the page's own provenance
            if page_type is PageType.EVIDENCE and entry.op is not Op.DELETE:
                return Verdict(
                    ReasonCode.PROVENANCE_UNRESOLVED,
                    "an evidence page needs provenance: a tool_call, a page or a uri",
                )
            return None
        if not isinstance(provenance, dict):
            return Verdict(ReasonCode.PROVENANCE_UNRESOLVED, "provenance must be an object")
        refs = [name for name in _PROVENANCE_REFS if name in provenance]
        if not refs:
            if page_type is PageType.EVIDENCE:
                return Verdict(
                    ReasonCode.PROVENANCE_UNRESOLVED,
                    "evidence provenance names no tool_call, page or uri",
                )
            return None
        for name in refs:
            value = provenance[name]
            if name == "uri":
                if not isinstance(value, str) or not _URI.match(value):
                    return Verdict(ReasonCode.PROVENANCE_UNRESOLVED, f"not a URI: {value!r}")
            elif name == "page":
                verdict = self._resolve_page_ref(conn, entry, value)
                if verdict is not None:
                    return verdict
            elif name == "tool_call" and not self.tool_call_exists(conn, entry, value):
                return Verdict(ReasonCode.PROVENANCE_UNRESOLVED, f"no recorded tool call {value!r}")
        return None

    def tool_call_exists(self, conn: Connection, entry: Entry, ref: object) -> bool:
        """Whether ``ref`` names a call in this session's tool ledger."""
        if isinstance(ref, bool) or not isinstance(ref, int):
            return False
        found = conn.execute(
            select(t.tool_calls.c.id).where(
                t.tool_calls.c.id == ref, t.tool_calls.c.session_id == entry.session_id
            )
        ).first()
        return found is not None

    def _resolve_page_ref(self, conn: Connection, entry: Entry, ref: object) -> Verdict | None:
        if not isinstance(ref, str) or not ref:
            return Verdict(ReasonCode.PROVENANCE_UNRESOLVED, f"not a page reference: {ref!r}")
        key, _, version_text = ref.partition("@")
        # isdigit() accepts characters such as "²" that int() refuses: ASCII digits only.
        version = int(version_text) if version_text.isascii() and version_text.isdigit() else None
        if version_text and version is None:
            return Verdict(ReasonCode.PROVENANCE_UNRESOLVED, f"bad version in {ref!r}")
        owners = [entry.session_id, ""] if entry.session_id else [""]
        found = conn.execute(
            select(t.pages.c.id, t.pages.c.version).where(
                t.pages.c.project == entry.project,
                t.pages.c.key == key,
                t.pages.c.session_id.in_(owners),
            )
        ).first()
        if found is None:
            other = conn.execute(
                select(t.pages.c.id).where(t.pages.c.project == entry.project, t.pages.c.key == key)
            ).first()
            if other is not None:
                return Verdict(
                    ReasonCode.SCOPE_DENIED, f"provenance page {key!r} belongs to another session"
                )
            return Verdict(ReasonCode.PROVENANCE_UNRESOLVED, f"no page {key!r}")
        if version is not None and not (1 <= version <= found.version):
            return Verdict(
                ReasonCode.PROVENANCE_UNRESOLVED, f"page {key!r} has no version {version}"
            )
        return None

    def _check_version(self, entry: Entry, head: Head | None) -> Verdict | None:
        expected = entry.payload.get("expected_version")
        exists = head is not None and not head.deleted
        if entry.op in (Op.SET, Op.DELETE):
            if entry.op is Op.DELETE and not exists:
                return Verdict(ReasonCode.DESTRUCTIVE_OP, "delete of a page that does not exist")
            if exists:
                assert head is not None
                if expected != head.version:
                    return Verdict(
                        ReasonCode.DESTRUCTIVE_OP,
                        f"{entry.op.value} would overwrite version {head.version} of {entry.key!r} "
                        f"but expected_version is {expected!r}",
                    )
            elif expected not in (None, 0) and (head is None or expected != head.version):
                return Verdict(
                    ReasonCode.DESTRUCTIVE_OP,
                    f"expected version {expected!r} of {entry.key!r}, which does not exist",
                )
        elif expected is not None and head is not None and expected != head.version:
            return Verdict(
                ReasonCode.DESTRUCTIVE_OP,
                f"expected version {expected!r} but {entry.key!r} is at version {head.version}",
            )
        return None

    def _check_pin(self, entry: Entry, head: Head | None, boundary: Boundary) -> Verdict | None:
        if head is None or head.deleted or head.pin is not Pin.HARD:
            return None
        if entry.op is Op.DELETE:
            return Verdict(
                ReasonCode.PIN_VIOLATION, f"{entry.key!r} is hard-pinned; it cannot be deleted"
            )
        new_pin = entry.payload.get("pin")
        if new_pin is not None and new_pin != Pin.HARD.value and boundary is not Boundary.EXPLICIT:
            return Verdict(
                ReasonCode.PIN_VIOLATION,
                f"{entry.key!r} is hard-pinned; only a direct put may lower its pin",
            )
        return None

    def validate(
        self, conn: Connection, entry: Entry, head: Head | None, boundary: Boundary
    ) -> Verdict:
        """Run the five checks of DESIGN 1.4 in a fixed order; the first failure decides."""
        page_type = entry.page_type or (head.type if head else None)
        for verdict in (
            self._check_schema(entry, head),
            self._check_scope(conn, entry),
            self._check_provenance(conn, entry, page_type, head),
            self._check_version(entry, head),
            self._check_pin(entry, head, boundary),
        ):
            if verdict is not None:
                return verdict
        if entry.op is Op.MERGE and head is not None and not head.deleted:
            _, conflict = merge_fields(
                head.fields or {},
                entry.payload.get("structured") or {},
                may_overwrite=entry.payload.get("expected_version") == head.version,
            )
            if conflict:
                return Verdict(
                    ReasonCode.DESTRUCTIVE_OP,
                    f"merge would change the scalar {conflict!r} of {entry.key!r} without "
                    f"expected_version={head.version}",
                )
        return Verdict(None)

    # -- appends ---------------------------------------------------------------------------------

    def _basis(
        self, conn: Connection | None, live: Head
    ) -> tuple[AppendBasis, Mapping[Fidelity, int | None]]:
        """The basis of an append to ``live``: in memory, remembered from apply, or read.

        Only what follows from the text is remembered (tokens, tails, fold); where each chain
        starts comes with the head, read in this transaction.
        """
        if live.basis is not None:
            return live.basis, live.chain_starts
        cache_key = (live.page_id, live.version, live.lsn)
        cached = self._bases.get(cache_key)
        if cached is not None:
            self._bases.move_to_end(cache_key)
            return cached, live.chain_starts
        if conn is None:
            raise InvalidInput("an append needs the store to read the page it extends")
        found = append_basis(conn, live.page_id, live.version, live.type, live.fields, live.fold)
        self._remember_basis(cache_key, found)
        return found, live.chain_starts

    def _remember_basis(self, cache_key: tuple[int, int, int | None], found: AppendBasis) -> None:
        self._bases[cache_key] = found
        while len(self._bases) > _BASIS_CACHE_ENTRIES:
            self._bases.popitem(last=False)

    def _whole_text(self, conn: Connection | None, live: Head) -> str:
        if live.content is not None:
            return live.content
        if conn is None:
            raise InvalidInput("a merge needs the store to read the page it changes")
        text = read_text(conn, live.page_id, live.version, Fidelity.FULL)
        if text is None:
            raise CorruptDatabase(f"page {live.page_id} version {live.version} has no full text")
        return text

    # -- apply -----------------------------------------------------------------------------------

    def prepare(
        self, entry: Entry, head: Head | None, conn: Connection | None = None
    ) -> ContentRepresentations | None:
        """Every version-independent fidelity of what ``entry`` will write (``None`` for delete).

        An append (or a merge that brings content) onto a live page builds on the head's basis
        (tokens, tail and fold of each level: :mod:`clawvm_store.segments`) plus the segment, so
        its cost does not grow with the page. ``conn`` reads that basis when it is not cached.
        """
        if entry.op is Op.DELETE:
            return None
        payload = entry.payload
        live = head if head is not None and not head.deleted else None
        page_type = entry.page_type or (live.type if live else None)
        assert page_type is not None
        scope = entry.scope
        provenance = payload.get("provenance") or (live.provenance if live else None)
        content: str = payload.get("content") or ""
        structured = payload.get("structured")
        if entry.op is Op.MERGE and live is not None:
            structured, _ = merge_fields(
                live.fields or {},
                structured or {},
                may_overwrite=payload.get("expected_version") == live.version,
            )
        build: dict[str, Any] = {
            "key": entry.key,
            "scope": scope,
            "provenance": provenance,
            "structured": structured,
            "timestamp": self.clock(),
            "counter": self.counter,
            "compressor": self.compressor,
        }
        if live is not None and entry.op in (Op.APPEND, Op.MERGE):
            if content:
                basis, starts = self._basis(conn, live)
                reps = build_appended_representations(basis, content, **build)
                chained: dict[Fidelity, int] = {}
                for level in reps.levels:
                    start = starts.get(level.fidelity)
                    if level.chained and start is not None:
                        chained[level.fidelity] = start
                return dataclasses.replace(reps, chain_starts=chained)
            # A merge of fields only: the text stays as it is, the version holds it whole.
            content = self._whole_text(conn, live)
        return build_content_representations(page_type, content, **build)

    def apply(
        self,
        conn: Connection,
        entry: Entry,
        head: Head | None,
        version: int,
        reps: ContentRepresentations | None,
    ) -> int:
        """Materialize ``entry`` as ``version`` of its page; idempotent by (page, version)."""
        if head is not None and head.version >= version:
            # Applied before (heads only move forward): apply is idempotent by version.
            return int(head.page_id)
        batch = WriteBatch(self, conn)
        batch.apply(entry, head, version, reps)
        ids = batch.flush()
        return ids[(entry.project, entry.page_session, entry.key)]

    # -- writeback -------------------------------------------------------------------------------

    def load_entries(self, conn: Connection, lsns: Sequence[int]) -> list[Entry]:
        """Journal entries by LSN, in LSN order."""
        rows = conn.execute(
            JOURNAL_ROWS.where(t.journal.c.lsn.in_(list(lsns))).order_by(t.journal.c.lsn)
        ).all()
        return [row_to_entry(row) for row in rows]

    def writeback(
        self,
        conn: Connection,
        *,
        project: str,
        session_id: str | None,
        boundary: Boundary,
        turn: int,
        entries: Sequence[Entry],
        prepared: Mapping[int, PreparedUpdate] | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> WritebackResult:
        """Validate, commit or reject, and apply ``entries`` in LSN order, recording the boundary.

        Runs inside the caller's write transaction; a failure anywhere rolls all of it back, so
        the entries stay staged and nothing is half-applied. Each entry validates against the
        effect of the earlier ones (their heads are kept in memory), and the rows of every entry
        are written together at the end (:class:`WriteBatch`): one statement per table, not
        several per entry. ``prepared`` holds fidelities built at stage time (outside the write
        lock), each used only if the head it was built on is the head the entry meets here.
        """
        now = self.clock()
        event_id = int(
            _P_EVENT_INSERT.first(
                conn,
                {
                    "session_id": session_id,
                    "project": project,
                    "boundary": boundary.value,
                    "turn": turn,
                    "detail": canonical_json(dict(detail)) if detail else None,
                    "at": now,
                },
            ).id
        )
        result = WritebackResult(boundary=boundary, event_id=event_id)
        batch = WriteBatch(self, conn)
        for entry in sorted(entries, key=lambda e: e.lsn):
            if entry.state != "staged":
                continue
            if batch.needs_store(entry):
                batch.flush()  # what this entry reads must see the rows written before it
            head = batch.head(entry)
            verdict = self.validate(conn, entry, head, boundary)
            reps: ContentRepresentations | None = None
            if verdict.reason is None and entry.op is not Op.DELETE:
                ready = prepared.get(entry.lsn) if prepared and entry.op is Op.SET else None
                reps = ready.reps if ready is not None else None
                if reps is None:
                    if batch.needs_text(entry, head):
                        batch.flush()
                        head = batch.head(entry)
                    try:
                        reps = self.prepare(entry, head, conn)
                    except SchemaInvalid as exc:
                        verdict = Verdict(ReasonCode.SCHEMA_INVALID, str(exc))
            if verdict.reason is not None:
                batch.rejected.append(
                    {
                        "b_lsn": entry.lsn,
                        "b_state": "rejected",
                        "b_reason": verdict.reason.value,
                        "b_detail": verdict.detail,
                        "b_event": event_id,
                        "b_version": None,
                        "b_at": now,
                    }
                )
                result.rejected.append((entry.lsn, verdict.reason.value))
                result.details[entry.lsn] = verdict.detail
                continue
            version = (head.version if head else 0) + 1
            batch.apply(entry, head, version, reps)
            # Commit and apply share this transaction, so the entry goes straight to its final
            # state; "committed" rows exist only where apply was deferred (imports, old crashes).
            batch.applied.append(applied_params(entry, event_id=event_id, version=version, at=now))
            result.committed.append(entry.lsn)
            result.versions[entry.lsn] = version
        batch.flush()
        _P_EVENT_COUNTS.execute(
            conn,
            {
                "b_id": event_id,
                "b_committed": len(result.committed),
                "b_rejected": len(result.rejected),
            },
        )
        return result


PageKey = tuple[str, str, str]
"""(project, page session, key): a page's identity before it has an id."""


@dataclass(frozen=True)
class PreparedUpdate:
    """Fidelities of a staged ``set`` built before the boundary, outside the write lock.

    A ``set``'s fidelities do not depend on the page's head (only its type and content), so
    they hold whatever the earlier entries of the boundary did; validation still decides.
    """

    reps: ContentRepresentations


def applied_params(entry: Entry, *, event_id: int, version: int, at: str) -> dict[str, Any]:
    """The parameters that set ``entry`` applied as ``version``."""
    return {"b_lsn": entry.lsn, "b_event": event_id, "b_version": version, "b_at": at}


class WriteBatch:
    """The rows of many applies, written together: one statement per table at :meth:`flush`.

    Heads of pages written in the batch are kept in memory (with what an append to them builds
    on), so later entries of the same page validate and build against them without reading
    back rows that are not written yet. An entry whose validation or build would read the
    store for this batch's pages (a page reference in its provenance, a fields-only merge onto
    a chained head) flushes first. A new page is inserted once, in its final state.
    """

    def __init__(self, engine: JournalEngine, conn: Connection) -> None:
        self.engine = engine
        self.conn = conn
        self._reset()

    def _reset(self) -> None:
        self.heads: dict[PageKey, Head] = {}
        self.head_reps: dict[PageKey, ContentRepresentations] = {}
        self.new_pages: dict[PageKey, dict[str, Any]] = {}
        self.page_updates: dict[int, dict[str, Any]] = {}
        self.versions: list[tuple[PageKey, dict[str, Any]]] = []
        self.reps: list[tuple[PageKey, dict[str, Any]]] = []
        self.bases: list[tuple[PageKey, int, int, AppendBasis]] = []
        self.applied: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []

    @staticmethod
    def page_key(entry: Entry) -> PageKey:
        """The identity of the page ``entry`` writes."""
        return (entry.project, entry.page_session, entry.key)

    def needs_store(self, entry: Entry) -> bool:
        """Whether validating ``entry`` reads pages this batch may have written (unflushed)."""
        provenance = entry.payload.get("provenance")
        return bool(self.heads) and isinstance(provenance, dict) and "page" in provenance

    def needs_text(self, entry: Entry, head: Head | None) -> bool:
        """Whether building ``entry`` reads the whole text of an unflushed chained head."""
        return (
            head is not None
            and self.page_key(entry) in self.heads
            and entry.op is Op.MERGE
            and not entry.payload.get("content")
            and head.content is None
            and not head.deleted
        )

    def head(self, entry: Entry) -> Head | None:
        """The head ``entry`` meets: this batch's in memory, else the committed one."""
        pkey = self.page_key(entry)
        found = self.heads.get(pkey)
        if found is None:
            return self.engine.head(self.conn, *pkey)
        if (
            found.basis is None
            and not found.deleted
            and entry.op in (Op.APPEND, Op.MERGE)
            and entry.payload.get("content")
        ):
            # Worked out only when an append comes, as apply does for a whole build.
            found = dataclasses.replace(found, basis=basis_after(self.head_reps[pkey]))
            self.heads[pkey] = found
        return found

    def apply(
        self, entry: Entry, head: Head | None, version: int, reps: ContentRepresentations | None
    ) -> None:
        """Queue the rows that make ``entry`` ``version`` of its page; remember the new head."""
        engine = self.engine
        now = engine.clock()
        pkey = self.page_key(entry)
        payload = entry.payload
        live = head if head is not None and not head.deleted else None
        page_type = entry.page_type or (head.type if head else None)
        assert page_type is not None
        policy = POLICIES[page_type]
        pin = (
            Pin(payload["pin"])
            if payload.get("pin")
            else (live.pin if live else policy.default_pin)
        )
        priority = payload.get("priority")
        if priority is None:
            priority = live.priority if live else 0.0
        provenance = payload.get("provenance")
        if provenance is None and live is not None:
            provenance = live.provenance
        provenance_json = canonical_json(provenance) if provenance is not None else None
        deleted = entry.op is Op.DELETE
        content_hash = None
        fields_json = None
        fold_json = None
        if reps is not None:
            fields_json = canonical_json(reps.fields)
            if reps.chained:
                # The whole text is not at hand (and hashing it would cost the page's size):
                # each piece carries its own SHA-256, and the fold seeds the next append.
                fold_json = canonical_json(reps.fold)
            else:
                content_hash = text_sha256(reps.levels[0].text)
        values = {
            "type": page_type.value,
            "pin": pin.value,
            "priority": float(priority),
            "version": version,
            "provenance": provenance_json,
            "deleted": int(deleted),
            "updated_at": now,
            "fold": fold_json,
        }
        if pkey in self.new_pages:
            self.new_pages[pkey].update(values)
        elif head is None:
            self.new_pages[pkey] = {
                "project": entry.project,
                "session_id": entry.page_session,
                "key": entry.key,
                "scope": entry.scope.value,
                "created_at": now,
                **values,
            }
        else:
            self.page_updates[head.page_id] = values
        self.versions.append(
            (
                pkey,
                {
                    "page_id": None,
                    "version": version,
                    "type": page_type.value,
                    "op": entry.op.value,
                    "pin": pin.value,
                    "priority": float(priority),
                    "scope": entry.scope.value,
                    "provenance": provenance_json,
                    "fields": fields_json,
                    "content_hash": content_hash,
                    "deleted": int(deleted),
                    "lsn": entry.lsn,
                    "committed_at": now,
                },
            )
        )
        chain_starts: dict[Fidelity, int] = {Fidelity.FULL: version}
        basis: AppendBasis | None = None
        if reps is not None:
            levels = with_pointer(reps, key=entry.key, version=version, counter=engine.counter)
            if any(level.chained and level.fidelity not in reps.chain_starts for level in levels):
                raise RuntimeError(f"a chained level of {entry.key!r} has no chain start")
            texts = {level.fidelity: level.text for level in levels if level.same_as is None}
            for level in levels:
                start = reps.chain_starts.get(level.fidelity) if level.chained else None
                if level.fidelity in (Fidelity.FULL, Fidelity.COMPRESSED):
                    chain_starts[level.fidelity] = start if start is not None else version
                self.reps.append(
                    (
                        pkey,
                        {
                            "page_id": None,
                            "version": version,
                            "fidelity": level.fidelity.value,
                            "content": level.text,
                            "tokens": level.tokens,
                            "source": level.source.value,
                            # What the row stores: its piece when chained, the shared text's
                            # hash when the text lives in another row of this version.
                            "sha256": text_sha256(
                                texts.get(level.same_as, "") if level.same_as else level.text
                            ),
                            "chain_start": start,
                            "same_as": level.same_as.value if level.same_as else None,
                        },
                    )
                )
            if reps.chained:
                # The next append to a chain builds on it; a whole page's basis is worked out
                # only when an append first comes.
                basis = basis_after(reps)
                self.bases.append((pkey, version, entry.lsn, basis))
            self.head_reps[pkey] = reps
        self.heads[pkey] = Head(
            page_id=head.page_id if head is not None else 0,
            type=page_type,
            version=version,
            pin=pin,
            priority=float(priority),
            scope=head.scope if head is not None else entry.scope,
            provenance=json.loads(provenance_json) if provenance_json else None,
            deleted=deleted,
            fields=reps.fields if reps is not None else None,
            fold=fold_json,
            lsn=entry.lsn,
            chain_starts=chain_starts,
            basis=basis,
            content=None if reps is None or reps.chained else reps.levels[0].text,
        )

    def flush(self) -> dict[PageKey, int]:
        """Write every queued row; returns the id of each page written. The batch starts over."""
        conn = self.conn
        ids: dict[PageKey, int] = {pkey: head.page_id for pkey, head in self.heads.items()}
        for pkey, row in self.new_pages.items():
            ids[pkey] = int(_P_PAGE_INSERT.first(conn, row).id)
        _P_PAGE_UPDATE.executemany(
            conn,
            [
                {
                    "b_id": page_id,
                    "b_type": values["type"],
                    "b_pin": values["pin"],
                    "b_priority": values["priority"],
                    "b_version": values["version"],
                    "b_provenance": values["provenance"],
                    "b_deleted": values["deleted"],
                    "b_at": values["updated_at"],
                    "b_fold": values["fold"],
                }
                for page_id, values in self.page_updates.items()
            ],
        )
        version_rows = []
        for pkey, row in self.versions:
            row["page_id"] = ids[pkey]
            row["row_sha256"] = version_row_sha256(row)
            version_rows.append(row)
        _P_VERSION_INSERT.executemany(conn, version_rows)
        rep_rows = []
        for pkey, row in self.reps:
            row["page_id"] = ids[pkey]
            rep_rows.append(row)
        _P_REP_INSERT.executemany(conn, rep_rows)
        for pkey, version, lsn, basis in self.bases:
            self.engine._remember_basis((ids[pkey], version, lsn), basis)
        _P_APPLIED.executemany(conn, self.applied)
        _P_CONTENT_DROP.executemany(conn, [{"b_lsn": row["b_lsn"]} for row in self.applied])
        _P_RESOLVE.executemany(conn, self.rejected)
        self._reset()
        return ids


VERSION_ROW_COLUMNS = (
    "page_id",
    "version",
    "type",
    "op",
    "pin",
    "priority",
    "scope",
    "provenance",
    "fields",
    "content_hash",
    "deleted",
    "lsn",
    "committed_at",
)


def version_row_sha256(row: Mapping[Any, Any]) -> str:
    """SHA-256 over a page version's columns, so check() notices any of them changing."""
    return text_sha256(canonical_json([row[name] for name in VERSION_ROW_COLUMNS]))


def applied_since(*columns: Any, fidelity: str | None = None) -> Any:
    """Pages whose head version was applied in a boundary after ``:b_since`` (an event id).

    Readers that follow the store incrementally (the assembler's page table, the recall index)
    use boundary event ids as their watermark: boundaries commit one at a time in id order,
    whereas LSNs are assigned at staging and applied out of order across sessions. Each row
    carries the head's representations (only ``fidelity``'s, when given).
    """
    representation = (t.representations.c.page_id == t.pages.c.id) & (
        t.representations.c.version == t.pages.c.version
    )
    if fidelity is not None:
        representation = representation & (t.representations.c.fidelity == fidelity)
    return (
        select(*columns)
        .select_from(
            t.journal.join(t.page_versions, t.page_versions.c.lsn == t.journal.c.lsn)
            .join(
                t.pages,
                (t.pages.c.id == t.page_versions.c.page_id)
                & (t.pages.c.version == t.page_versions.c.version),
            )
            .outerjoin(t.representations, representation)
        )
        .where(t.journal.c.event_id > bindparam("b_since"))
    )


LATEST_EVENT = select(t.lifecycle_events.c.id).order_by(t.lifecycle_events.c.id.desc()).limit(1)
"""The newest boundary event id: the watermark incremental readers catch up to."""


def inserted_id(result: Any) -> int:
    """The integer primary key of the row an INSERT just wrote."""
    key = result.inserted_primary_key
    if not key or key[0] is None:
        raise RuntimeError("the insert returned no primary key")
    return int(key[0])


def require_entry(conn: Connection, lsn: int) -> Any:
    """The journal row ``lsn`` or :class:`NotFound`."""
    row = conn.execute(JOURNAL_ROWS.where(t.journal.c.lsn == lsn)).first()
    if row is None:
        raise NotFound(f"no journal entry with lsn {lsn}")
    return row
