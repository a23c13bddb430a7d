"""The append layout: how a representation's text is stored, and the one place that reads it.

A representation row holds either a **whole** text (``chain_start`` is NULL) or a **piece**: the
text this version appended to the same fidelity's text of the version before, after a newline.
Pieces form a chain back to the version named by ``chain_start``, whose row holds a whole text;
every version in between has a piece of its own (an append is one version), so the text of
version ``v`` is::

    whole(chain_start) + "\\n" + piece(chain_start + 1) + ... + "\\n" + piece(v)

read with one indexed range query however old the page is. A ``set`` (or any write that is not
an append) starts a new chain with a whole text. A row whose ``same_as`` names a fidelity keeps
no text of its own: its text (or its piece) is the one stored under that fidelity of the same
version, so identical texts are stored once.

Token counts are always those of the whole text (exact: see
:func:`clawvm_store.tokens.safe_tail_start`); ``sha256`` covers what the row stores
(its piece, for a chained row). Everything that reads representation text goes through
:func:`read_text` or :func:`read_texts`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, bindparam, select

from . import schema as t
from .errors import CorruptDatabase
from .pages import Fidelity, PageType
from .representations import AppendBasis, LevelBasis, fold_of, text_sha256
from .tokens import safe_tail_start

_FIDELITY = {fidelity.value: fidelity for fidelity in Fidelity}
_R = t.representations
_ROW = select(_R.c.content, _R.c.tokens, _R.c.source, _R.c.chain_start, _R.c.same_as).where(
    _R.c.page_id == bindparam("b_page"),
    _R.c.version == bindparam("b_version"),
    _R.c.fidelity == bindparam("b_fidelity"),
)
_SHARED = _R.alias("shared")
_PIECES = (
    select(_R.c.version, _R.c.content, _R.c.same_as, _SHARED.c.content.label("shared"))
    .select_from(
        _R.outerjoin(
            _SHARED,
            (_SHARED.c.page_id == _R.c.page_id)
            & (_SHARED.c.version == _R.c.version)
            & (_SHARED.c.fidelity == _R.c.same_as),
        )
    )
    .where(
        _R.c.page_id == bindparam("b_page"),
        _R.c.fidelity == bindparam("b_fidelity"),
        _R.c.version > bindparam("b_after"),
        _R.c.version <= bindparam("b_version"),
    )
)
_PIECES_FORWARD = _PIECES.order_by(_R.c.version)
_PIECES_BACKWARD = _PIECES.order_by(_R.c.version.desc()).limit(bindparam("b_limit"))


def _row(conn: Connection, page_id: int, version: int, fidelity: str) -> Any:
    return conn.execute(
        _ROW, {"b_page": page_id, "b_version": version, "b_fidelity": fidelity}
    ).first()


def _piece(row: Any, where: str) -> str:
    text = row.shared if row.same_as else row.content
    if not isinstance(text, str):
        raise CorruptDatabase(f"{where}: the piece of version {row.version} is missing")
    return text


def read_text(conn: Connection, page_id: int, version: int, fidelity: Fidelity | str) -> str | None:
    """The whole text of one representation, or ``None`` when the row does not exist.

    Raises :class:`CorruptDatabase` when a chain has a gap or a shared text is missing.
    """
    level = read_level(conn, page_id, version, fidelity)
    return None if level is None else level[0]


def read_level(
    conn: Connection, page_id: int, version: int, fidelity: Fidelity | str
) -> tuple[str, int] | None:
    """The whole text and token count of one representation (``None``: no such row)."""
    name = fidelity.value if isinstance(fidelity, Fidelity) else fidelity
    row = _row(conn, page_id, version, name)
    if row is None:
        return None
    return _whole(conn, page_id, version, name, row, depth=0), int(row.tokens)


def _whole(conn: Connection, page_id: int, version: int, name: str, row: Any, *, depth: int) -> str:
    where = f"page {page_id} version {version} {name}"
    if depth > len(Fidelity):
        raise CorruptDatabase(f"{where}: its shared texts refer to each other in a loop")
    if row.chain_start is None:
        if row.same_as is None:
            if not isinstance(row.content, str):
                raise CorruptDatabase(f"{where}: the text is not text")
            return str(row.content)
        owner = _row(conn, page_id, version, row.same_as)
        if owner is None:
            raise CorruptDatabase(f"{where}: the {row.same_as} text it shares is missing")
        return _whole(conn, page_id, version, row.same_as, owner, depth=depth + 1)
    start = int(row.chain_start)
    if not 0 < start < version:
        raise CorruptDatabase(f"{where}: its chain starts at version {start}")
    base_row = _row(conn, page_id, start, name)
    if base_row is None or base_row.chain_start is not None:
        raise CorruptDatabase(f"{where}: its chain has no whole text at version {start}")
    parts = [_whole(conn, page_id, start, name, base_row, depth=depth + 1)]
    rows = conn.execute(
        _PIECES_FORWARD,
        {"b_page": page_id, "b_fidelity": name, "b_after": start, "b_version": version},
    ).all()
    if [r.version for r in rows] != list(range(start + 1, version + 1)):
        raise CorruptDatabase(f"{where}: its chain from version {start} has a gap")
    parts.extend(_piece(r, where) for r in rows)
    return "\n".join(parts)


def read_texts(
    conn: Connection, rows: Iterable[Any]
) -> dict[tuple[int, int, str], tuple[str, Fidelity]]:
    """Whole texts of representation rows already read (with ``page_id``, ``version``,
    ``fidelity``, ``content``, ``source``, ``chain_start``, ``same_as``), keyed by
    (page id, version, fidelity), with their true source. Rows holding a whole text cost nothing
    more; chained or shared rows are read through :func:`read_text`."""
    texts: dict[tuple[int, int, str], tuple[str, Fidelity]] = {}
    for row in rows:
        key = (int(row.page_id), int(row.version), str(row.fidelity))
        if row.chain_start is None and row.same_as is None:
            text = row.content
        else:
            text = _whole(conn, key[0], key[1], key[2], row, depth=0)
        texts[key] = (text, _FIDELITY[row.source])
    return texts


def _tail(conn: Connection, page_id: int, version: int, name: str, row: Any) -> str:
    """The text from the last safe tokenizer boundary to the end, reading pieces backwards."""
    if row.chain_start is None:
        text = _whole(conn, page_id, version, name, row, depth=0)
        return text[safe_tail_start(text) :]
    start = int(row.chain_start)
    pieces: list[str] = []
    limit = 4
    upper = version
    while upper > start:
        rows = conn.execute(
            _PIECES_BACKWARD,
            {
                "b_page": page_id,
                "b_fidelity": name,
                "b_after": start,
                "b_version": upper,
                "b_limit": limit,
            },
        ).all()
        if not rows:
            break
        for piece_row in rows:
            if piece_row.version != upper:
                raise CorruptDatabase(f"page {page_id} {name}: its chain has a gap at {upper}")
            pieces.insert(0, _piece(piece_row, f"page {page_id} version {upper} {name}"))
            upper -= 1
            # Each piece follows a newline, so "\n" + pieces is a suffix of the whole text.
            joined = "\n" + "\n".join(pieces)
            boundary = safe_tail_start(joined)
            if boundary > 0:
                return joined[boundary:]
        limit *= 4
    base = read_text(conn, page_id, start, name)
    if base is None:
        raise CorruptDatabase(f"page {page_id} {name}: its chain has no whole text at {start}")
    joined = "\n".join([base, *pieces])
    return joined[safe_tail_start(joined) :]


def append_basis(
    conn: Connection,
    page_id: int,
    version: int,
    page_type: PageType,
    fields: Mapping[str, Any] | None,
    fold_json: str | None,
) -> AppendBasis:
    """What an append to ``version`` builds on, read from the store: never the whole text when
    the version extends a chain. (Where each chain starts comes with the page's head.)"""
    levels: dict[Fidelity, LevelBasis] = {}
    for fidelity in (Fidelity.FULL, Fidelity.COMPRESSED):
        row = _row(conn, page_id, version, fidelity.value)
        if row is None:
            continue
        levels[fidelity] = LevelBasis(
            int(row.tokens),
            _tail(conn, page_id, version, fidelity.value, row),
            _FIDELITY[row.source],
        )
    if Fidelity.FULL not in levels:
        raise CorruptDatabase(f"page {page_id} version {version} has no full text")
    if fold_json:
        fold = json.loads(fold_json)
    else:
        # A whole version (or one written before the fold was kept): fold its text once.
        text = read_text(conn, page_id, version, Fidelity.FULL)
        assert text is not None
        started = (fields or {}).get("start") if page_type is PageType.CONVERSATION else None
        fold = fold_of(page_type, text, timestamp=str(started or ""))
    return AppendBasis(
        page_type=page_type,
        full=levels[Fidelity.FULL],
        compressed=levels.get(Fidelity.COMPRESSED),
        fold=fold,
    )


def whole_texts(
    conn: Connection, fidelity: Fidelity | str = Fidelity.FULL
) -> dict[tuple[int, int], str]:
    """Every version's whole text at one fidelity, (page id, version) → text, in one pass.

    A text whose chain is broken is left out. For audits and tests that look at every version at once (the crash kit's invariants): it
    holds every text in memory, so it is no tool for a hot path.
    """
    name = fidelity.value if isinstance(fidelity, Fidelity) else fidelity
    rows = {
        (int(row.page_id), int(row.version), str(row.fidelity)): row
        for row in conn.execute(
            select(
                _R.c.page_id,
                _R.c.version,
                _R.c.fidelity,
                _R.c.content,
                _R.c.chain_start,
                _R.c.same_as,
            ).order_by(_R.c.page_id, _R.c.version)
        )
    }
    done: dict[tuple[int, int, str], str] = {}

    def whole(page_id: int, version: int, level: str, depth: int = 0) -> str:
        key = (page_id, version, level)
        if key in done:
            return done[key]
        row = rows.get(key)
        if row is None or depth > len(Fidelity):
            raise CorruptDatabase(f"page {page_id} version {version} has no {level} text")
        if row.chain_start is None:
            text = whole(page_id, version, row.same_as, depth + 1) if row.same_as else row.content
        else:
            owner = rows.get((page_id, version, row.same_as)) if row.same_as else row
            if owner is None:
                raise CorruptDatabase(f"page {page_id} version {version} {level}: piece missing")
            text = f"{whole(page_id, version - 1, level, depth)}\n{owner.content}"
        done[key] = str(text)
        return done[key]

    texts: dict[tuple[int, int], str] = {}
    for page_id, version, level in list(rows):
        if level == name:
            try:
                texts[(page_id, version)] = whole(page_id, version, level)
            except CorruptDatabase:
                continue  # left out: the caller sees the text as missing
    return texts


def detach(conn: Connection, page_id: int, doomed: Iterable[int]) -> int:
    """Prepare to delete versions ``doomed`` of a page: no version that stays may need them.

    A staying version whose chain runs through a doomed one is re-chained onto the staying
    version before it when that one stays too, and otherwise written whole (its text read before
    anything changes). A piece shared with the full level becomes a piece of its own when the
    full level is written whole. Returns the number of rows rewritten. Runs in the caller's
    write transaction, before the caller deletes.
    """
    gone = set(doomed)
    if not gone:
        return 0
    rows = conn.execute(
        select(_R.c.version, _R.c.fidelity, _R.c.content, _R.c.chain_start, _R.c.same_as).where(
            _R.c.page_id == page_id
        )
    ).all()
    by_key = {(int(row.version), str(row.fidelity)): row for row in rows}
    staying = sorted({int(row.version) for row in rows} - gone)
    plan: dict[tuple[int, str], dict[str, Any]] = {}
    effective_start: dict[tuple[int, str], int | None] = {}
    for version in staying:
        for (row_version, name), row in sorted(by_key.items()):
            if row_version != version:
                continue
            if row.chain_start is None:
                effective_start[(version, name)] = None
                continue
            start = int(row.chain_start)
            if not gone.intersection(range(start, version)):
                effective_start[(version, name)] = start
                continue
            before = (version - 1, name)
            if version - 1 not in gone and before in by_key:
                # Still chained, onto what the previous version's chain now starts at.
                previous_start = effective_start.get(before)
                new_start = version - 1 if previous_start is None else previous_start
                plan[(version, name)] = {"chain_start": new_start}
                effective_start[(version, name)] = new_start
            else:
                text = read_text(conn, page_id, version, name)
                assert text is not None
                plan[(version, name)] = {
                    "content": text,
                    "sha256": text_sha256(text),
                    "chain_start": None,
                    "same_as": None,
                }
                effective_start[(version, name)] = None
                if name == Fidelity.FULL.value:
                    # Pieces that shared the full piece need a copy of their own now.
                    for (other_version, other), other_row in by_key.items():
                        if (
                            other_version == version
                            and other_row.chain_start is not None
                            and other_row.same_as == Fidelity.FULL.value
                            and plan.get((version, other), {}).get("chain_start", 0) is not None
                        ):
                            piece = str(row.content)
                            plan.setdefault((version, other), {}).update(
                                {"content": piece, "sha256": text_sha256(piece), "same_as": None}
                            )
    # A row sharing another's text carries that row's hash: follow a rewritten owner.
    for (version, name), row in by_key.items():
        owner_plan = plan.get((version, row.same_as)) if row.same_as else None
        own = plan.get((version, name), {})
        if owner_plan and "sha256" in owner_plan and own.get("same_as", row.same_as) is not None:
            plan.setdefault((version, name), {})["sha256"] = owner_plan["sha256"]
    for (version, name), values in plan.items():
        conn.execute(
            _R.update()
            .where(_R.c.page_id == page_id, _R.c.version == version, _R.c.fidelity == name)
            .values(**values)
        )
    return len(plan)
