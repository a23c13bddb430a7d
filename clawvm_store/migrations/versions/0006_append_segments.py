"""append layout: an append stores its segment, not a copy of the whole text

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 03:00:00

* representations.chain_start: NULL for a whole text; otherwise this row's ``content`` is the
  piece this version appended to the same fidelity's text of the version before, and the chain
  starts at the version named (see clawvm_store/segments.py);
* representations.same_as: the row's text (or piece) is the one stored under that fidelity of the
  same version (``content`` is then empty), so identical texts are stored once;
* page_versions.fold: the fields' derivation state after a chained version.

Existing stores are converted in this one transaction: wherever the full text of an ``append`` or
``merge`` version is the previous version's full text, a newline and more, the row keeps only
that segment. Every other row stays a whole text, which the new layout reads as it is.
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# The columns journal.version_row_sha256 covers, as of this revision (fold only when set).
_VERSION_ROW_COLUMNS = (
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


def _rehash_version(conn: sa.Connection, page_id: int, version: int) -> None:
    """Drop the whole-text hash of a version that now holds a segment, and re-seal the row."""
    row = (
        conn.execute(
            sa.text("SELECT * FROM page_versions WHERE page_id = :page AND version = :version"),
            {"page": page_id, "version": version},
        )
        .mappings()
        .one()
    )
    values = dict(row)
    values["content_hash"] = None
    body = json.dumps(
        [values[name] for name in _VERSION_ROW_COLUMNS],
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    )
    conn.execute(
        sa.text(
            "UPDATE page_versions SET content_hash = NULL, row_sha256 = :sha "
            "WHERE page_id = :page AND version = :version"
        ),
        {"sha": _sha256(body), "page": page_id, "version": version},
    )


def _convert_full_texts(conn: sa.Connection) -> None:
    """Turn the full copies of appended versions into segments, page by page, oldest first."""
    rows = conn.execute(
        sa.text(
            "SELECT v.page_id, v.version, v.op, v.deleted, r.content "
            "FROM page_versions v LEFT JOIN representations r ON r.page_id = v.page_id "
            "AND r.version = v.version AND r.fidelity = 'full' "
            "ORDER BY v.page_id, v.version"
        )
    ).all()
    previous: tuple[int, int, str | None, int | None] | None = None  # page, version, text, start
    for page_id, version, op_name, deleted, content in rows:
        start: int | None = None
        if (
            previous is not None
            and previous[0] == page_id
            and previous[1] == version - 1
            and previous[2] is not None
            and content is not None
            and not deleted
            and op_name in ("append", "merge")
            and len(content) > len(previous[2])
            and content.startswith(previous[2] + "\n")
        ):
            start = previous[3] if previous[3] is not None else version - 1
            piece = content[len(previous[2]) + 1 :]
            conn.execute(
                sa.text(
                    "UPDATE representations SET content = :piece, sha256 = :sha, "
                    "chain_start = :start WHERE page_id = :page AND version = :version "
                    "AND fidelity = 'full'"
                ),
                {
                    "piece": piece,
                    "sha": _sha256(piece),
                    "start": start,
                    "page": page_id,
                    "version": version,
                },
            )
            _rehash_version(conn, page_id, version)
        previous = (page_id, version, None if deleted else content, start)


def upgrade() -> None:
    with op.batch_alter_table("representations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chain_start", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("same_as", sa.String(), nullable=True))
    with op.batch_alter_table("page_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fold", sa.Text(), nullable=True))
    _convert_full_texts(op.get_bind())


def downgrade() -> None:
    conn = op.get_bind()
    # Back to whole texts: every chained or shared row gets its text spelled out again.
    rows = conn.execute(
        sa.text(
            "SELECT page_id, version, fidelity, content, chain_start, same_as "
            "FROM representations ORDER BY page_id, fidelity, version"
        )
    ).all()
    texts: dict[tuple[int, int, str], str] = {}
    by_key = {(r.page_id, r.version, r.fidelity): r for r in rows}

    def whole(page_id: int, version: int, fidelity: str) -> str:
        key = (page_id, version, fidelity)
        if key in texts:
            return texts[key]
        row = by_key[key]
        if row.chain_start is None:
            text = whole(page_id, version, row.same_as) if row.same_as else row.content
        else:
            piece = by_key[(page_id, version, row.same_as)].content if row.same_as else row.content
            text = whole(page_id, version - 1, fidelity) + "\n" + piece
        texts[key] = text
        return text

    for row in rows:
        if row.chain_start is None and row.same_as is None:
            continue
        text = whole(row.page_id, row.version, row.fidelity)
        conn.execute(
            sa.text(
                "UPDATE representations SET content = :text, sha256 = :sha WHERE page_id = :page "
                "AND version = :version AND fidelity = :fidelity"
            ),
            {
                "text": text,
                "sha": _sha256(text),
                "page": row.page_id,
                "version": row.version,
                "fidelity": row.fidelity,
            },
        )
    with op.batch_alter_table("page_versions", schema=None) as batch_op:
        batch_op.drop_column("fold")
    with op.batch_alter_table("representations", schema=None) as batch_op:
        batch_op.drop_column("same_as")
        batch_op.drop_column("chain_start")
