"""Recall: search the pages a session may see, and always say why when nothing comes back.

A recall returns ``Recall(pages, reason)`` with reason ``ok`` (pages found), ``no_match``
(nothing matches anywhere), ``denied`` (matches exist, but only in pages this session may not
see) or ``backend_error`` (the search itself failed; ``detail`` says how). It never returns an
empty result without a reason: a backend that does is recorded as a ``silent_recall`` fault.

The default backend is SQLite FTS5 over the full text of every page's head version. The index is
derived data, brought up to date at recall time from the versions applied since its watermark
(the boundary event id, kept in ``meta``), so writes never pay for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sqlalchemy import Connection, select, text

from . import schema as t
from .journal import LATEST_EVENT
from .pages import Page
from .segments import read_text

RecallReason = Literal["ok", "no_match", "denied", "backend_error"]
_WORD = re.compile(r"\w+", re.UNICODE)
_WATERMARK = "fts_event"


@dataclass(frozen=True)
class Recall:
    """The outcome of :meth:`Session.recall` (contract): pages and the reason."""

    pages: list[Page]
    reason: RecallReason
    detail: str = ""


@dataclass(frozen=True)
class RecallHits:
    """What a backend found: (key, owning session or '' for project pages) and, if empty, why."""

    hits: list[tuple[str, str]] = field(default_factory=list)
    reason: RecallReason | None = None
    detail: str = ""


class RecallBackend(Protocol):
    """A search over pages; plug in embeddings or an external index by implementing ``search``.

    It must return every matching page of the project (the caller filters by visibility) and,
    when it returns none, a reason. Raising is reported as ``backend_error``.
    """

    def search(self, store: Any, project: str, query: str, limit: int) -> RecallHits:
        """Pages of ``project`` matching ``query``, best first, at most ``limit`` per owner."""
        ...


# The pages whose head version was applied since the watermark, with their full text's row: the
# query of journal.applied_since with the join order fixed on SQLite, as the assembler's page
# table does. Left to itself, SQLite's planner scans every page version ever written and probes
# the journal for each (38 ms at 10,000 turns); CROSS JOIN makes it start from the journal
# entries of the boundaries since the watermark (ix_journal_event_id): this turn's change, 0.2 ms.
# PostgreSQL plans by statistics and has no CROSS JOIN ... ON, so it gets the plain join.
_CHANGED_SQL = """
SELECT pages.id, pages.key, pages.project, pages.session_id, pages.deleted, pages.provenance,
       pages.version, representations.content, representations.chain_start,
       representations.same_as
FROM journal
{join} page_versions ON page_versions.lsn = journal.lsn
{join} pages ON pages.id = page_versions.page_id AND pages.version = page_versions.version
LEFT OUTER JOIN representations
     ON representations.page_id = pages.id AND representations.version = pages.version
    AND representations.fidelity = 'full'
WHERE journal.event_id > :b_since
"""
_CHANGED = {
    dialect: text(_CHANGED_SQL.format(join=join))
    for dialect, join in (("sqlite", "CROSS JOIN"), ("postgresql", "JOIN"))
}


def fts_query(query: str) -> str | None:
    """A safe FTS5 query: every word quoted, any word may match (``None`` if no words)."""
    words = _WORD.findall(query)
    if not words:
        return None
    return " OR ".join(f'"{word}"' for word in dict.fromkeys(word.lower() for word in words))


def pg_query(query: str) -> dict[str, str]:
    """A PostgreSQL ``to_tsquery`` text: every word a quoted lexeme, any word may match."""
    words = dict.fromkeys(word.lower() for word in _WORD.findall(query))
    # \w+ words hold no quote or operator characters, so quoting them makes them plain lexemes.
    return {"tsquery": " | ".join(f"'{word}'" for word in words)}


# The FTS5 query's shape on PostgreSQL: best rank first (ts_rank grows with relevance, FTS5's
# rank shrinks), at most `limit` hits per owning session, ties broken by key.
_PG_SEARCH = text(
    "SELECT key, session_id FROM ("
    " SELECT key, session_id, score,"
    " row_number() OVER (PARTITION BY session_id ORDER BY score DESC, key) AS nth"
    " FROM (SELECT key, session_id,"
    "  ts_rank(to_tsvector('simple', content), to_tsquery('simple', :tsquery)) AS score"
    "  FROM pages_fts"
    "  WHERE to_tsvector('simple', content) @@ to_tsquery('simple', :tsquery)"
    "  AND project = :project) AS matched"
    ") AS ranked WHERE nth <= :limit ORDER BY score DESC, key"
)


class FtsRecall:
    """The default backend: SQLite FTS5 (PostgreSQL text search there), indexed incrementally."""

    def search(self, store: Any, project: str, query: str, limit: int) -> RecallHits:
        """Match ``query`` against the full text of every page head of ``project``."""
        match = fts_query(query)
        if match is None:
            return RecallHits([], "no_match", "the query has no words to search for")
        with store.db.transaction(sync="normal") as conn:
            self.catch_up(conn)
            # At most `limit` hits per owner: another session's many matches must not crowd out
            # a session's own (visibility is filtered by the caller).
            if conn.dialect.name == "postgresql":
                rows = conn.execute(
                    _PG_SEARCH, {**pg_query(query), "project": project, "limit": limit}
                ).all()
                return RecallHits(
                    [(row.key, row.session_id) for row in rows], None if rows else "no_match"
                )
            rows = conn.execute(
                text(
                    "SELECT key, session_id FROM ("
                    " SELECT key, session_id, rank AS score,"
                    " row_number() OVER (PARTITION BY session_id ORDER BY rank) AS nth"
                    " FROM pages_fts WHERE pages_fts MATCH :match AND project = :project"
                    ") WHERE nth <= :limit ORDER BY score, key"
                ),
                {"match": match, "project": project, "limit": limit},
            ).all()
        return RecallHits([(row.key, row.session_id) for row in rows], None if rows else "no_match")

    def catch_up(self, conn: Connection) -> None:
        """Index the page versions applied since the watermark."""
        since = conn.execute(select(t.meta.c.value).where(t.meta.c.name == _WATERMARK)).scalar()
        newest = conn.execute(LATEST_EVENT).scalar() or 0
        start = int(since or 0)
        if newest <= start:
            return
        for row in conn.execute(
            _CHANGED.get(conn.dialect.name, _CHANGED["postgresql"]), {"b_since": start}
        ).all():
            if row.deleted:
                index_page(conn, row.id, None)
            elif row.chain_start is None and row.same_as is None:
                index_page(conn, row.id, row)
            else:
                # An appended page: its text is a chain of segments (segments.py).
                whole = read_text(conn, row.id, row.version, "full")
                indexed = _Indexed(row.key, row.project, row.session_id, row.provenance, whole)
                index_page(conn, row.id, indexed)
        value = str(newest)
        if since is None:
            conn.execute(t.meta.insert(), {"name": _WATERMARK, "value": value})
        else:
            conn.execute(t.meta.update().where(t.meta.c.name == _WATERMARK).values(value=value))


@dataclass(frozen=True)
class _Indexed:
    """A page head as :func:`index_page` reads it, with its whole text put together."""

    key: str
    project: str
    session_id: str
    provenance: str | None
    content: str | None


def index_page(conn: Connection, page_id: int, head: Any | None) -> None:
    """Put one page's head into the recall index, replacing what was there.

    ``head`` has the page's key, project, session_id, provenance and full ``content``; ``None``
    (a deleted page) only removes it. A tool result is indexed with the words of the call that
    made it, so a repeat can be found by the call.
    """
    conn.execute(text("DELETE FROM pages_fts WHERE page_id = :id"), {"id": page_id})
    if head is None or not isinstance(head.content, str):
        return
    content = head.content
    call = _tool_call_words(conn, head.provenance)
    if call:
        content = f"{call}\n{content}"
    if conn.dialect.name == "postgresql":
        # PostgreSQL's parser keeps "setup.cfg" or "a@b.io" whole, where FTS5 (and the query
        # side here) sees words: index the words, so both backends find the same pages.
        content = " ".join(_WORD.findall(content))
    conn.execute(
        text(
            "INSERT INTO pages_fts (content, key, page_id, project, session_id) "
            "VALUES (:content, :key, :id, :project, :session)"
        ),
        {
            "content": content,
            "key": head.key,
            "id": page_id,
            "project": head.project,
            "session": head.session_id,
        },
    )


def _tool_call_words(conn: Connection, provenance: str | None) -> str:
    """The tool name and argument values of the call a page's provenance names, if any."""
    if not provenance or "tool_call" not in provenance:
        return ""
    try:
        ref = json.loads(provenance).get("tool_call")
    except (ValueError, AttributeError):
        return ""
    row = conn.execute(
        select(t.tool_calls.c.name, t.tool_calls.c.args).where(t.tool_calls.c.id == ref)
    ).first()
    if row is None:
        return ""
    values = [str(value) for value in json.loads(row.args).values()]
    return " ".join([row.name, *values])


def visible(hits: Sequence[tuple[str, str]], session_id: str) -> tuple[list[str], bool]:
    """Keys this session may see (own pages shadow project pages), and whether any were hidden."""
    keys: list[str] = []
    hidden = False
    for key, owner in hits:
        if owner in ("", session_id):
            if key not in keys:
                keys.append(key)
        else:
            hidden = True
    return keys, hidden
