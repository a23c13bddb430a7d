"""The error tree of clawvm-store, and the one place where driver errors are translated.

Every error the library raises derives from :class:`ClawVMError`. Driver errors (SQLite,
SQLAlchemy) never escape the library untranslated: :func:`translate_driver_error` maps them to
precise subclasses, in the spirit of PEP 249's tree, so a caller can catch ``Busy`` or
``NotADatabase`` without knowing which driver sits underneath.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ClawVMError(Exception):
    """Root of every error raised by clawvm-store."""


class InvalidInput(ClawVMError):
    """An argument was malformed: an unknown enum value, empty content, wrong type, bad JSON."""


class NotFound(ClawVMError):
    """A page, version, session or journal entry that was asked for does not exist."""


class VersionConflict(ClawVMError):
    """A write named an ``expected_version`` that is not the page's last committed version."""


class UpdateRejected(ClawVMError):
    """A direct write was rejected by validation; ``reason`` is the contract reason code.

    The rejected entry stays in the journal with its reason (nothing is silently dropped); the
    exception only tells the caller that the write did not commit.
    """

    def __init__(self, message: str, *, reason: str, lsn: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.lsn = lsn


class SchemaInvalid(UpdateRejected, InvalidInput):
    """Content, size or structured fields failed the page type's schema (``SCHEMA_INVALID``)."""


class ProvenanceUnresolved(UpdateRejected):
    """The provenance reference does not resolve (``PROVENANCE_UNRESOLVED``)."""


class ScopeDenied(UpdateRejected):
    """The principal may not read or write that scope or key (``SCOPE_DENIED``)."""


class DestructiveWrite(UpdateRejected, VersionConflict):
    """A write would overwrite committed content without the matching version (``DESTRUCTIVE_OP``)."""


class PinViolation(UpdateRejected):
    """The write would remove or degrade a hard-pinned page below its floor (``PIN_VIOLATION``)."""


@dataclass(frozen=True)
class FloorShortfall:
    """One page of an infeasible floor: its key, its floor fidelity and what that costs."""

    key: str
    fidelity: str
    tokens: int


class InsufficientBudget(ClawVMError):
    """The floor (fixed region plus every required page at its minimum fidelity) exceeds the budget."""

    def __init__(
        self, message: str, *, budget: int, required: int, pages: Sequence[FloorShortfall]
    ) -> None:
        super().__init__(message)
        self.budget = budget
        self.required = required
        self.shortfall = required - budget
        self.pages = tuple(pages)


class InterruptedToolCall(ClawVMError):
    """A ``write``-effect tool call was started but never finished; it is not re-run automatically."""


class DatabaseError(ClawVMError):
    """The database could not be used: it is missing, unreadable, not a database, or damaged."""


class NotADatabase(DatabaseError):
    """The file is not an SQLite database, or not a clawvm-store one."""


class CorruptDatabase(DatabaseError):
    """SQLite reported damage (a malformed image, a failed integrity check)."""


class CorruptJournal(DatabaseError):
    """A journal entry failed its checksum or could not be decoded."""


class StorageFull(DatabaseError):
    """The disk (or the database's size limit) is full; the write was rolled back."""


class ReadOnlyViolation(ClawVMError):
    """A read-only query tried to change the database."""


class QueryTimeout(ClawVMError):
    """A read-only query ran past its time limit and was stopped; its snapshot was released."""


class SessionInUse(ClawVMError):
    """The session is open in another live process; two owners would interleave its turns."""


class Busy(ClawVMError):
    """Another writer held the database lock past the busy timeout and every retry."""


class MigrationError(ClawVMError):
    """A schema migration failed; the failed revision was rolled back as a whole."""


class SchemaTooNew(MigrationError):
    """The database was written by a newer clawvm-store whose schema this code does not know."""


class EncodingUnavailable(ClawVMError):
    """The tokenizer encoding cannot be loaded without a network."""


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sqlstate(exc: BaseException) -> str:
    """The PostgreSQL SQLSTATE of a (wrapped) psycopg error, or ``""``."""
    original = getattr(exc, "orig", None) or exc
    return str(getattr(original, "sqlstate", "") or "")


def is_busy(exc: BaseException) -> bool:
    """Whether a driver error means another writer holds the lock (retrying may succeed)."""
    lowered = _first_line(exc).lower()
    if "database is locked" in lowered or "database table is locked" in lowered:
        return True
    # 55P03 lock_not_available (lock_timeout), 40001 serialization_failure, 40P01 deadlock.
    return _sqlstate(exc) in ("55P03", "40001", "40P01")


def translate_driver_error(exc: BaseException, *, context: str = "") -> ClawVMError:
    """Map a driver (sqlite3/SQLAlchemy) exception to the matching :class:`ClawVMError`.

    This is the only place that looks at driver error texts; everything else catches
    ``ClawVMError`` subclasses.
    """
    if isinstance(exc, ClawVMError):
        return exc
    if isinstance(exc, UnicodeDecodeError):
        where = f"{context}: " if context else ""
        return CorruptDatabase(
            f"{where}the database is damaged: it holds bytes that are not valid text ({exc.reason})"
        )
    text = _first_line(exc)
    lowered = text.lower()
    where = f"{context}: " if context else ""
    state = _sqlstate(exc)
    if is_busy(exc):
        return Busy(f"{where}the database is locked by another writer ({text})")
    # 57014 query_canceled (statement_timeout); SQLite's "interrupted" comes from the progress
    # handler that enforces store.query's time limit (a Ctrl-C is told apart by the caller).
    if state == "57014" or lowered == "interrupted":
        return QueryTimeout(f"{where}the query ran past its time limit and was stopped ({text})")
    if state.startswith("08") or "connection refused" in lowered or "could not connect" in lowered:
        return DatabaseError(f"{where}cannot reach the database server ({text})")
    if state == "22021" or "cannot contain nul" in lowered:
        return InvalidInput(f"{where}a value cannot be stored ({text})")
    if state == "53100":
        return StorageFull(f"{where}no space left for the write; nothing was committed ({text})")
    if state == "25006":
        return ReadOnlyViolation(f"{where}refused: a read-only transaction cannot write ({text})")
    if state == "25001":  # a statement that cannot run inside a transaction (VACUUM ...)
        return ReadOnlyViolation(f"{where}refused here ({text})")
    if state.startswith("42") or state in ("22P02", "22007", "22008", "22012", "0A000"):
        return InvalidInput(f"{where}bad SQL: {text}")
    if state in ("22003", "22P05"):
        return InvalidInput(f"{where}a value cannot be stored ({text})")
    if "file is not a database" in lowered or "file is encrypted" in lowered:
        return NotADatabase(f"{where}not an SQLite database ({text})")
    if "malformed" in lowered or "corrupt" in lowered:
        return CorruptDatabase(f"{where}the database is damaged ({text})")
    if "disk is full" in lowered or "database or disk is full" in lowered:
        return StorageFull(f"{where}no space left for the write; nothing was committed ({text})")
    if "readonly" in lowered or "read-only" in lowered or "attempt to write" in lowered:
        return ReadOnlyViolation(f"{where}the database is read-only here ({text})")
    if "unable to open" in lowered or "disk i/o error" in lowered:
        return DatabaseError(f"{where}cannot use the database file ({text})")
    return DatabaseError(f"{where}{text}")
