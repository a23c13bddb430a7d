"""lean rows: journal payloads without null members, the fold kept once per page

Revision ID: 0011_lean_rows
Revises: 0010_eviction_winner
Create Date: 2026-12-08 00:10:00

Storage close to the content (issue 14):

* journal.payload: every member that is ``null`` is left out (readers take an absent member as
  "not given"). An applied entry's payload was ``{"content": null, "content_sha256": ...,
  "expected_version": null, "pin": null, ...}``, about 200 bytes; it keeps only what the update
  set. Every row whose checksum verifies is rewritten in that form and re-sealed; a row whose
  checksum does not verify is left exactly as it is, so check() and recovery still quarantine it.
* pages.fold: the structured fields' derivation state of a chained head. Revision 0006 kept it
  on every version (``page_versions.fold``), but only the head's is ever read: the next append
  builds on it. It moves to the head's row; the versions' column goes, and each version row
  that held a fold is re-sealed without it (only when its seal verified: damage stays visible).

The downgrade puts the head's fold back on its version row, re-seals it the 0006 way, and
writes every verifying journal row with its null members again, as revision 0010's code wrote.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0011_lean_rows"
down_revision = "0010_eviction_winner"
branch_labels = None
depends_on = None

# The members revision 0010's code always wrote (None when not given).
_PAYLOAD_MEMBERS = ("content", "structured", "pin", "priority", "provenance", "expected_version")
# The columns journal.version_row_sha256 covers, as of this revision.
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


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _entry_checksum(row: Any, payload_json: str) -> str:
    return _sha256(
        _canonical(
            {
                "project": row.project,
                "session": row.session_id,
                "key": row.key,
                "op": row.op,
                "type": row.page_type,
                "scope": row.scope,
                "payload": payload_json,
            }
        )
    )


def _verifies(row: Any) -> bool:
    try:
        return bool(_entry_checksum(row, row.payload) == row.checksum)
    except (TypeError, ValueError, UnicodeError):
        return False


def _rewrite_payloads(conn: sa.Connection, lean: bool) -> None:
    rows = conn.execute(
        sa.text(
            "SELECT lsn, project, session_id, key, op, page_type, scope, payload, checksum "
            "FROM journal ORDER BY lsn"
        )
    ).all()
    changes = []
    for row in rows:
        if not _verifies(row):
            continue
        try:
            payload = json.loads(row.payload)
        except ValueError:
            continue
        if not isinstance(payload, dict):
            continue
        if lean:
            rewritten = {name: value for name, value in payload.items() if value is not None}
        else:
            rewritten = {name: payload.get(name) for name in _PAYLOAD_MEMBERS}
            rewritten.update(payload)
        payload_json = _canonical(rewritten)
        if payload_json != row.payload:
            changes.append(
                {"lsn": row.lsn, "p": payload_json, "c": _entry_checksum(row, payload_json)}
            )
    if changes:
        conn.execute(
            sa.text("UPDATE journal SET payload = :p, checksum = :c WHERE lsn = :lsn"), changes
        )


def _seal(row: Any, fold: str | None) -> str:
    values = [getattr(row, name) for name in _VERSION_ROW_COLUMNS]
    if fold is not None:
        values.append(fold)
    return _sha256(_canonical(values))


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column("pages", sa.Column("fold", sa.Text(), nullable=True))
    conn.execute(
        sa.text(
            "UPDATE pages SET fold = (SELECT v.fold FROM page_versions v "
            "WHERE v.page_id = pages.id AND v.version = pages.version)"
        )
    )
    folded = conn.execute(sa.text("SELECT * FROM page_versions WHERE fold IS NOT NULL")).all()
    reseal = [
        {"page": row.page_id, "version": row.version, "sha": _seal(row, None)}
        for row in folded
        if row.row_sha256 is not None and row.row_sha256 == _seal(row, row.fold)
    ]
    if reseal:
        conn.execute(
            sa.text(
                "UPDATE page_versions SET row_sha256 = :sha "
                "WHERE page_id = :page AND version = :version"
            ),
            reseal,
        )
    with op.batch_alter_table("page_versions", schema=None) as batch_op:
        batch_op.drop_column("fold")
    _rewrite_payloads(conn, lean=True)


def downgrade() -> None:
    conn = op.get_bind()
    with op.batch_alter_table("page_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fold", sa.Text(), nullable=True))
    heads = conn.execute(
        sa.text(
            "SELECT v.*, p.fold AS head_fold FROM page_versions v JOIN pages p "
            "ON p.id = v.page_id AND p.version = v.version WHERE p.fold IS NOT NULL"
        )
    ).all()
    restored = [
        {
            "page": row.page_id,
            "version": row.version,
            "fold": row.head_fold,
            # Re-sealed with the fold only when the seal verified without it.
            "sha": _seal(row, row.head_fold)
            if row.row_sha256 is not None and row.row_sha256 == _seal(row, None)
            else row.row_sha256,
        }
        for row in heads
    ]
    if restored:
        conn.execute(
            sa.text(
                "UPDATE page_versions SET fold = :fold, row_sha256 = :sha "
                "WHERE page_id = :page AND version = :version"
            ),
            restored,
        )
    with op.batch_alter_table("pages", schema=None) as batch_op:
        batch_op.drop_column("fold")
    _rewrite_payloads(conn, lean=False)
