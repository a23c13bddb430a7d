"""Export a store to JSON Lines and import it back: a round trip gives an identical store.

Format ``clawvm-export/1``: UTF-8 text, one canonical JSON object per line (sorted keys, no
spaces, non-ASCII as is), so the same store always exports to the same bytes.

* Line 1, the header::

    {"counts": {"projects": 1, ...}, "encoding": "cl100k_base",
     "filter": {"project": null, "session": null}, "format": "clawvm-export/1",
     "meta": {"created_at": "..."}, "schema_revision": "0004"}

  ``counts`` announces how many records of each table follow (the importer refuses a file that
  holds a different number: a truncated export never imports), ``meta`` the store's ``meta``
  rows other than the encoding and the derived full-text watermark.
* Then one record per row, ``{"row": {column: value, ...}, "table": name}``, with every column
  of the row as stored (ids, LSNs, timestamps, checksums, hashes, states, reasons), table by
  table in :data:`TABLE_ORDER` and, within a table, in primary-key order. The table order is the
  foreign-key order (events before the journal rows that name them, pages before their versions
  before their representations, assemblies before their items), so rows insert as they come.

Byte columns (the serialized checkpoints and pending writes of LangGraph threads, see
:mod:`clawvm_store.integrations.langgraph`) are written as base64 text. LangGraph threads belong
to no project or session, so only a whole-store export carries them; so do the Claude Agent SDK
transcripts mirrored by :mod:`clawvm_store.integrations.claude_agent_sdk` (their pages, projected
into a session, travel with it like any other).

What is not exported: the full-text index (derived; recall rebuilds it in the target) and the
schema version table (the header names the revision). ``sessions.owner`` is written as null: it
names the process holding the session on the exporting host, a lease that does not travel. An
imported session is owned by no process: it can be resumed, and recovery treats its staged
updates and started tool calls like those of a session whose process is gone.

Filters. ``project=P`` exports the rows of project ``P``: its project row, sessions, pages
(with every version and representation), journal entries, lifecycle events, tool calls,
assemblies (with their items) and faults. ``session=S`` exports what session ``S`` owns and sees:
its session row and project row, its own pages *and the project-scoped pages of its project*
(a session reads them; without them an imported session would lose its bootstrap and constraint
pages), its journal entries, lifecycle events, tool calls, assemblies and faults. Either way the
subset is closed under references, so it imports into an empty store and passes ``check``:
the journal entry that wrote every exported page version, the lifecycle event that resolved
every exported journal entry, the page every exported assembly item names, and the tool call an
exported version's provenance names come along even when they belong to another session (or,
for events, another project), and so do the project rows all of these name.

Import rules. The target must be empty: no row in any exported table (a new store, as
:meth:`Store.open` creates it). Merging into a populated store would need renumbering ids and
LSNs, which the checksums and cross-references forbid; import into a new store instead. The
export's encoding and schema revision must equal the store's. The whole import is one write
transaction: every record is checked (its table, its columns, their types) with its line number,
the counts must match the header, and before committing the imported rows are verified the way
:meth:`Store.check` verifies a store (foreign keys, fidelities, token counts, hashes, journal
checksums). Any problem raises :class:`InvalidInput` with a one-line message and leaves the
target exactly as it was.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Connection, LargeBinary, Table, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError

from . import schema as t
from .checkpoints import damaged_rows
from .db import create_private_file
from .errors import CorruptDatabase, InvalidInput, NotFound
from .recall import _WATERMARK as FTS_WATERMARK
from .representations import canonical_json

if TYPE_CHECKING:
    from .store import Store

FORMAT = "clawvm-export/1"
"""The ``format`` value of the header line this module writes and reads."""

TABLE_ORDER: tuple[Table, ...] = (
    t.projects,
    t.sessions,
    t.lifecycle_events,
    t.journal,
    t.journal_content,
    t.pages,
    t.page_versions,
    t.representations,
    t.tool_calls,
    t.assemblies,
    t.assembly_items,
    t.faults,
    t.lg_checkpoints,
    t.lg_writes,
    t.claude_transcripts,
    t.claude_entries,
)
"""The exported tables, in the order their records appear (parents before children)."""

_BINARY: frozenset[tuple[str, str]] = frozenset(
    (table.name, column.name)
    for table in TABLE_ORDER
    for column in table.columns
    if isinstance(column.type, LargeBinary)
)
"""Byte columns (LangGraph's serialized checkpoints): written to the file as base64 text."""

TABLE_NAMES: tuple[str, ...] = tuple(table.name for table in TABLE_ORDER)
_BY_NAME: dict[str, Table] = {table.name: table for table in TABLE_ORDER}
_HEADER_META_SKIPPED = frozenset({"encoding", FTS_WATERMARK})

_BATCH_ROWS = 500
"""Rows per INSERT batch, and how often (in records) progress is reported."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: records written or read so far, of the total announced."""

Selection = dict[str, tuple[str, set[Any]]]


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_jsonl` wrote: records per table, and the filter it applied."""

    counts: dict[str, int]
    project: str | None = None
    session: str | None = None
    bytes_written: int = 0

    @property
    def total(self) -> int:
        """Records written, over every table (the header line not included)."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_jsonl` inserted: rows per table, and the filter the export used."""

    counts: dict[str, int]
    project: str | None = None
    session: str | None = None
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows inserted, over every table."""
        return sum(self.counts.values())


class _Reporter:
    """Calls ``progress`` with strictly increasing counts, at most every ``_BATCH_ROWS``."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.last = -1
        self.pending = 0

    def report(self, done: int) -> None:
        if self.progress is not None and done > self.last:
            self.last = done
            self.progress(done, self.total)

    def tick(self, done: int) -> None:
        self.pending += 1
        if self.pending >= _BATCH_ROWS:
            self.pending = 0
            self.report(done)


# -- export ------------------------------------------------------------------------------------


def export_jsonl(
    store: Store,
    out: IO[str] | str | os.PathLike[str],
    *,
    project: str | None = None,
    session: str | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """Write the store (or one project's or session's rows) to ``out`` as ``clawvm-export/1``.

    ``out`` is a text stream or a path; a path must not exist yet (the file is created with
    mode 0600, like a backup, and removed again if the export fails). Everything is read in one
    read transaction, so the export is a consistent snapshot while other processes write.
    Raises :class:`NotFound` for an unknown project or session, :class:`InvalidInput` for a
    session that is not in the given project, and :class:`CorruptDatabase` for a stored value
    that cannot be written as text (run ``check``).
    """
    if project is not None and (not isinstance(project, str) or not project):
        raise InvalidInput("project must be a non-empty string")
    if session is not None and (not isinstance(session, str) or not session):
        raise InvalidInput("session must be a non-empty string")
    if isinstance(out, str | os.PathLike):
        target = Path(out)
        fd = create_private_file(target, "the export")
        try:
            with os.fdopen(fd, "wb") as handle:
                summary = _export(
                    store, handle.write, project=project, session=session, progress=progress
                )
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return summary

    def write_text(data: bytes) -> int:
        out.write(data.decode("utf-8"))
        return len(data)

    return _export(store, write_text, project=project, session=session, progress=progress)


def _export(
    store: Store,
    write: Callable[[bytes], Any],
    *,
    project: str | None,
    session: str | None,
    progress: Progress | None,
) -> ExportSummary:
    written = 0
    revision = store.db.current_revision()
    with store.db.transaction(write=False) as conn:
        selection = _selection(conn, project, session) if (project or session) else None
        if session is not None and project is None:
            project_of_session = conn.execute(
                select(t.sessions.c.project).where(t.sessions.c.id == session)
            ).scalar()
            project = str(project_of_session)
        counts = {table.name: _count(conn, table, selection) for table in TABLE_ORDER}
        meta = {
            str(row.name): row.value
            for row in conn.execute(select(t.meta).order_by(t.meta.c.name))
            if row.name not in _HEADER_META_SKIPPED
        }
        header = {
            "format": FORMAT,
            "schema_revision": revision,
            "encoding": store.encoding,
            "meta": meta,
            "filter": {"project": project, "session": session},
            "counts": counts,
        }
        written += write(_line(header, "the header"))
        reporter = _Reporter(progress, sum(counts.values()))
        reporter.report(0)
        done = 0
        for table in TABLE_ORDER:
            keep = selection.get(table.name) if selection is not None else None
            for row in conn.execute(select(table).order_by(*table.primary_key.columns)):
                values = dict(row._mapping)
                if keep is not None and values[keep[0]] not in keep[1]:
                    continue
                if table is t.sessions:
                    values["owner"] = None  # a process lease of the exporting host
                where = f"{table.name} row {_pk_text(table, values)}"
                for name, column in _BINARY:
                    if name == table.name:
                        values[column] = _base64(values[column], where)
                written += write(_line({"table": table.name, "row": values}, where))
                done += 1
                reporter.tick(done)
        reporter.report(done)
    return ExportSummary(
        counts=counts, project=project, session=session, bytes_written=int(written or 0)
    )


def _line(value: Any, where: str) -> bytes:
    try:
        return (canonical_json(value) + "\n").encode("utf-8")
    except (TypeError, ValueError, UnicodeError) as exc:
        raise CorruptDatabase(
            f"{where} holds a value that cannot be exported as text ({type(exc).__name__}); "
            "run check"
        ) from None


def _base64(value: Any, where: str) -> str:
    if not isinstance(value, bytes | memoryview):
        raise CorruptDatabase(f"{where} holds text where bytes belong; run check")
    return base64.b64encode(bytes(value)).decode("ascii")


def _pk_text(table: Table, values: dict[str, Any]) -> str:
    return "/".join(repr(values[column.name]) for column in table.primary_key.columns)


def _count(conn: Connection, table: Table, selection: Selection | None) -> int:
    if selection is None:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)
    column, wanted = selection[table.name]
    return sum(
        int(number)
        for value, number in conn.execute(
            select(table.c[column], func.count()).group_by(table.c[column])
        )
        if value in wanted
    )


def _selection(conn: Connection, project: str | None, session: str | None) -> Selection:
    """Which rows a filtered export holds: for each table, (column, values it must have)."""
    if session is not None:
        found = conn.execute(select(t.sessions.c.project).where(t.sessions.c.id == session)).first()
        if found is None:
            raise NotFound(f"no session {session!r}")
        if project is not None and found.project != project:
            raise InvalidInput(
                f"session {session!r} belongs to project {found.project!r}, not {project!r}"
            )
        project = str(found.project)
    elif (
        conn.execute(select(t.projects.c.name).where(t.projects.c.name == project)).first() is None
    ):
        raise NotFound(f"no project {project!r}")
    assert project is not None

    def owned(row: Any) -> bool:
        if session is not None:
            return bool(row.session_id == session)
        return bool(row.project == project)

    def seeds(table: Table, key: str) -> set[Any]:
        columns = select(table.c[key], table.c.project, table.c.session_id)
        return {row[0] for row in conn.execute(columns) if owned(row)}

    sessions = (
        {session}
        if session is not None
        else set(
            conn.execute(select(t.sessions.c.id).where(t.sessions.c.project == project)).scalars()
        )
    )
    assemblies = seeds(t.assemblies, "id")
    pages = {
        row.id
        for row in conn.execute(select(t.pages.c.id, t.pages.c.project, t.pages.c.session_id))
        if owned(row) or (row.project == project and row.session_id == "")
    }
    # Closure: the pages assembly items name, the journal entries that wrote the versions, the
    # events that resolved the entries, the tool calls the versions' provenance names.
    for item in conn.execute(select(t.assembly_items.c.assembly_id, t.assembly_items.c.page_id)):
        if item.assembly_id in assemblies:
            pages.add(item.page_id)
    journal = seeds(t.journal, "lsn")
    tool_calls = seeds(t.tool_calls, "id")
    versions = select(
        t.page_versions.c.page_id, t.page_versions.c.lsn, t.page_versions.c.provenance
    )
    for version in conn.execute(versions):
        if version.page_id in pages:
            journal.add(version.lsn)
            reference = _tool_call_reference(version.provenance)
            if reference is not None:
                tool_calls.add(reference)
    events = seeds(t.lifecycle_events, "id")
    for entry in conn.execute(select(t.journal.c.lsn, t.journal.c.event_id)):
        if entry.lsn in journal and entry.event_id is not None:
            events.add(entry.event_id)
    projects = {project}
    for table, key, chosen in (
        (t.sessions, "id", sessions),
        (t.lifecycle_events, "id", events),
        (t.journal, "lsn", journal),
        (t.pages, "id", pages),
        (t.tool_calls, "id", tool_calls),
        (t.assemblies, "id", assemblies),
    ):
        for named in conn.execute(select(table.c[key], table.c.project)):
            if named[0] in chosen:
                projects.add(named.project)
    faults = seeds(t.faults, "id")
    return {
        "projects": ("name", projects),
        "sessions": ("id", sessions),
        "lifecycle_events": ("id", events),
        "journal": ("lsn", journal),
        "journal_content": ("lsn", journal),
        "pages": ("id", pages),
        "page_versions": ("page_id", pages),
        "representations": ("page_id", pages),
        "tool_calls": ("id", tool_calls),
        "assemblies": ("id", assemblies),
        "assembly_items": ("assembly_id", assemblies),
        "faults": ("id", faults),
        # LangGraph threads belong to no project or session: only a whole-store export has them.
        "lg_checkpoints": ("thread_id", set()),
        "lg_writes": ("thread_id", set()),
        # So do the Claude Agent SDK's mirrored transcripts (keyed by the SDK's project key).
        "claude_transcripts": ("id", set()),
        "claude_entries": ("transcript_id", set()),
    }


def _tool_call_reference(provenance: Any) -> int | None:
    if not isinstance(provenance, str) or "tool_call" not in provenance:
        return None
    try:
        reference = json.loads(provenance).get("tool_call")
    except (ValueError, AttributeError):
        return None
    if isinstance(reference, int) and not isinstance(reference, bool):
        return reference
    return None


# -- import ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    revision: str | None
    encoding: str
    meta: dict[str, str]
    counts: dict[str, int]
    project: str | None
    session: str | None


@dataclass(frozen=True)
class _Column:
    name: str
    kind: type
    nullable: bool


_COLUMNS: dict[str, tuple[_Column, ...]] = {
    table.name: tuple(
        _Column(
            column.name,
            str if (table.name, column.name) in _BINARY else column.type.python_type,
            bool(column.nullable),
        )
        for column in table.columns
    )
    for table in TABLE_ORDER
}


def import_jsonl(
    store: Store,
    source: IO[str] | str | os.PathLike[str],
    *,
    progress: Progress | None = None,
) -> ImportSummary:
    """Load a ``clawvm-export/1`` file into ``store``, which must be empty, in one transaction.

    ``source`` is a path or a text stream. Raises :class:`InvalidInput` (one line, with the line
    number where there is one) for anything that is not a sound export for this store: not an
    export, another format, another encoding or schema revision, a malformed or out-of-order
    record, counts that differ from the header, rows the schema refuses, rows that do not
    verify, or a target that already holds rows. Nothing is written unless all of it imports.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise InvalidInput(f"no export file at {str(path)!r}")
        try:
            with path.open("rb") as handle:
                return _import(store, _decoded(handle), progress)
        except OSError as exc:
            raise InvalidInput(f"cannot read {str(path)!r}: {exc.strerror}") from None
    return _import(store, _text_lines(source), progress)


def _decoded(handle: Iterable[bytes]) -> Iterator[str]:
    for number, raw in enumerate(handle, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"line {number} is not UTF-8 text; not a clawvm export") from None


def _text_lines(stream: IO[str]) -> Iterator[str]:
    number = 0
    iterator = iter(stream)
    while True:
        number += 1
        try:
            line = next(iterator)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise InvalidInput(
                f"the text near line {number} is not UTF-8; not a clawvm export"
            ) from None
        yield line


def _import(store: Store, lines: Iterator[str], progress: Progress | None) -> ImportSummary:
    first = next(lines, None)
    if first is None:
        raise InvalidInput("the file is empty; not a clawvm export")
    header = _parse_header(first)
    if header.encoding != store.encoding:
        raise InvalidInput(
            f"the export counts tokens with {header.encoding!r} but this store uses "
            f"{store.encoding!r}; import it into a store opened with encoding={header.encoding!r}"
        )
    revision = store.db.current_revision()
    if header.revision != revision:
        raise InvalidInput(
            f"the export is at schema revision {header.revision!r} but this store is at "
            f"{revision!r}; export and import with the same clawvm-store version"
        )
    total = sum(header.counts.values())
    reporter = _Reporter(progress, total)
    inserted = dict.fromkeys(TABLE_NAMES, 0)
    checked: dict[str, int] = {}
    with store.db.transaction() as conn:
        _require_empty(conn)
        reporter.report(0)
        position = 0  # index in TABLE_ORDER of the table being read
        batch: list[dict[str, Any]] = []
        batch_start = 0

        def flush() -> None:
            nonlocal batch
            table = TABLE_ORDER[position]
            _insert(conn, table, batch, batch_start, batch_start + len(batch) - 1)
            inserted[table.name] += len(batch)
            batch = []
            reporter.report(sum(inserted.values()))

        for number, line in enumerate(lines, start=2):
            name, row = _parse_record(line, number)
            index = TABLE_NAMES.index(name)
            if index < position:
                raise InvalidInput(
                    f"line {number}: a {name} record after {TABLE_NAMES[position]} records; "
                    "records must follow the export's table order"
                )
            if index != position or len(batch) >= _BATCH_ROWS:
                flush()
                position = index
            if inserted[name] + len(batch) >= header.counts[name]:
                raise InvalidInput(
                    f"line {number}: more {name} records than the {header.counts[name]} "
                    "the header announces"
                )
            if not batch:
                batch_start = number
            batch.append(row)
        flush()
        short = [name for name in TABLE_NAMES if inserted[name] != header.counts[name]]
        if short:
            name = short[0]
            raise InvalidInput(
                f"the export is truncated: the header announces {header.counts[name]} {name} "
                f"records, the file holds {inserted[name]}"
            )
        _verify(store, conn, checked)
        _install_meta(store, conn, header.meta)
        _advance_sequences(conn)
    return ImportSummary(
        counts=inserted, project=header.project, session=header.session, checked=checked
    )


def _parse_header(line: str) -> _Header:
    try:
        value = json.loads(line)
    except ValueError:
        raise InvalidInput("line 1 is not JSON; not a clawvm export") from None
    if not isinstance(value, dict) or "format" not in value:
        raise InvalidInput("line 1 is not a clawvm export header (it has no format)")
    if value["format"] != FORMAT:
        raise InvalidInput(
            f"unknown export format {value['format']!r:.80}; this clawvm-store reads {FORMAT!r}"
        )
    revision = value.get("schema_revision")
    encoding = value.get("encoding")
    meta = value.get("meta")
    counts = value.get("counts")
    filters = value.get("filter")
    if revision is not None and not isinstance(revision, str):
        raise InvalidInput("line 1: the header's schema_revision is not a string")
    if not isinstance(encoding, str) or not encoding:
        raise InvalidInput("line 1: the header names no encoding")
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise InvalidInput("line 1: the header's meta is not an object of strings")
    if (
        not isinstance(counts, dict)
        or set(counts) != set(TABLE_NAMES)
        or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts.values()
        )
    ):
        raise InvalidInput(
            "line 1: the header's counts must give a non-negative count for each of "
            + ", ".join(TABLE_NAMES)
        )
    if not isinstance(filters, dict):
        filters = {}
    project = filters.get("project")
    session = filters.get("session")
    return _Header(
        revision=revision,
        encoding=encoding,
        meta=meta,
        counts=counts,
        project=project if isinstance(project, str) else None,
        session=session if isinstance(session, str) else None,
    )


def _parse_record(line: str, number: int) -> tuple[str, dict[str, Any]]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInput(f"line {number} is not JSON ({message})") from None
    if not isinstance(value, dict) or set(value) != {"table", "row"}:
        raise InvalidInput(f"line {number} is not an export record (table and row)")
    name = value["table"]
    row = value["row"]
    if not isinstance(name, str) or name not in _BY_NAME:
        raise InvalidInput(f"line {number}: unknown table {name!r:.80}")
    if not isinstance(row, dict):
        raise InvalidInput(f"line {number}: the {name} row is not an object")
    columns = _COLUMNS[name]
    expected = {column.name for column in columns}
    if set(row) != expected:
        unknown = sorted(set(row) - expected)
        missing = sorted(expected - set(row))
        problem = f"unknown column {unknown[0]!r:.80}" if unknown else f"no column {missing[0]!r}"
        raise InvalidInput(f"line {number}: the {name} row has {problem}")
    for column in columns:
        item = row[column.name]
        if item is None:
            if not column.nullable:
                raise InvalidInput(f"line {number}: {name}.{column.name} must not be null")
            continue
        if column.kind is float and isinstance(item, int) and not isinstance(item, bool):
            continue
        if not isinstance(item, column.kind) or isinstance(item, bool):
            raise InvalidInput(
                f"line {number}: {name}.{column.name} must be {column.kind.__name__}, "
                f"not {type(item).__name__}"
            )
        if isinstance(item, int) and not -(2**63) <= item < 2**63:
            raise InvalidInput(
                f"line {number}: {name}.{column.name} is out of the 64-bit integer range"
            )
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(
                    f"line {number}: {name}.{column.name} holds text that is not valid Unicode"
                ) from None
            if (name, column.name) in _BINARY:
                try:
                    row[column.name] = base64.b64decode(item, validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidInput(
                        f"line {number}: {name}.{column.name} is not base64 text"
                    ) from None
    return name, row


def _require_empty(conn: Connection) -> None:
    holding = [
        table.name
        for table in TABLE_ORDER
        if conn.execute(select(text("1")).select_from(table).limit(1)).first() is not None
    ]
    if holding:
        raise InvalidInput(
            f"the target store is not empty (it holds {', '.join(holding)} rows); "
            "import only into a new store"
        )


def _insert(
    conn: Connection, table: Table, rows: list[dict[str, Any]], first: int, last: int
) -> None:
    if not rows:
        return
    try:
        conn.execute(table.insert(), rows)
    except IntegrityError as exc:
        original = str(getattr(exc, "orig", exc)).strip().splitlines()
        reason = original[0] if original else type(exc).__name__
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        raise InvalidInput(f"{where}: {table.name} rows the schema refuses ({reason})") from None


def _advance_sequences(conn: Connection) -> None:
    """On PostgreSQL, move each id sequence past the ids the import wrote explicitly.

    SQLite hands out max(id) + 1 by itself; a PostgreSQL sequence does not look at the table,
    and the next insert would collide with an imported row.
    """
    if conn.dialect.name != "postgresql":
        return
    for table in t.metadata.sorted_tables:
        column = table.autoincrement_column
        if column is None:
            continue
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                f"COALESCE(MAX({column.name}), 1), MAX({column.name}) IS NOT NULL) "
                f"FROM {table.name}"
            )
        )


def _verify(store: Store, conn: Connection, checked: dict[str, int]) -> None:
    """Refuse, before committing, rows that :meth:`Store.check` would report."""
    problems: list[str] = []
    if store.db.dialect == "sqlite":
        for row in conn.exec_driver_sql("PRAGMA foreign_key_check"):
            problems.append(f"foreign_key: {row[0]} rowid {row[1]} -> {row[2]}")
    problems.extend(
        f"{finding.code}: {finding.message}"
        for finding in store._check_pages(conn, checked, recount_tokens=True)
    )
    problems.extend(
        f"{finding.code}: {finding.message}" for finding in store._check_journal(conn, checked)
    )
    problems.extend(f"{code}: {message}" for code, message in damaged_rows(conn, checked))
    if problems:
        first = " ".join(problems[0].split())
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise InvalidInput(f"the export does not verify ({first}{more}); nothing was imported")


def _install_meta(store: Store, conn: Connection, meta: dict[str, str]) -> None:
    """The export's meta rows (creation time...) replace the new store's; the index restarts."""
    for name, value in sorted(meta.items()):
        if name in _HEADER_META_SKIPPED:
            continue
        changed = conn.execute(update(t.meta).where(t.meta.c.name == name).values(value=value))
        if not changed.rowcount:
            conn.execute(t.meta.insert(), {"name": name, "value": value})
    # The full-text index is derived: drop whatever the target had, recall rebuilds it.
    conn.execute(delete(t.meta).where(t.meta.c.name == FTS_WATERMARK))
    conn.execute(text(f"DELETE FROM {t.FTS_TABLE}"))
