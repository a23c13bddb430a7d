"""journal_content: a pending entry's content is kept aside, never in the journal row

Revision ID: 0012_journal_content
Revises: 0011_lean_rows
Create Date: 2026-12-08 00:40:00

A staged entry's content was written into its journal row and replaced by its SHA-256 when the
entry was applied, so every applied row shrank after its B-tree page had filled: a long journal
kept about a third of its pages empty. Now the row holds ``content_sha256`` from the start
(under its checksum, which never changes again) and the text waits in ``journal_content`` until
the entry is applied, in the same transaction that deletes it; that table stays as small as what
is pending, its freed pages reused by the next stages.

Existing stores: every entry not applied (staged, committed, rejected) whose checksum verifies
and whose payload holds its content gets its content moved to ``journal_content`` and its row
re-sealed in the new form. A row whose checksum does not verify, and every quarantined row, is
left exactly as it is (recovery and check() quarantine or report it). The downgrade puts the
content back into each row it moved out of, re-sealed, and drops the table.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0012_journal_content"
down_revision = "0011_lean_rows"
branch_labels = None
depends_on = None


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


def _payload(row: Any) -> dict[str, Any] | None:
    """The row's payload when its checksum verifies and it decodes to an object."""
    try:
        if _entry_checksum(row, row.payload) != row.checksum:
            return None
        payload = json.loads(row.payload)
    except (TypeError, ValueError, UnicodeError):
        return None
    return payload if isinstance(payload, dict) else None


_ROWS = (
    "SELECT lsn, project, session_id, key, op, page_type, scope, payload, checksum "
    "FROM journal WHERE state IN ('staged', 'committed', 'rejected') ORDER BY lsn"
)
_RESEAL = "UPDATE journal SET payload = :p, checksum = :c WHERE lsn = :lsn"


def upgrade() -> None:
    conn = op.get_bind()
    op.create_table(
        "journal_content",
        sa.Column("lsn", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lsn"], ["journal.lsn"], name=op.f("fk_journal_content_lsn_journal")
        ),
        sa.PrimaryKeyConstraint("lsn", name=op.f("pk_journal_content")),
    )
    moved, resealed = [], []
    for row in conn.execute(sa.text(_ROWS)).all():
        payload = _payload(row)
        if payload is None or not isinstance(payload.get("content"), str):
            continue
        content = payload.pop("content")
        payload["content_sha256"] = _sha256(content)
        payload_json = _canonical(payload)
        moved.append({"lsn": row.lsn, "content": content})
        resealed.append(
            {"lsn": row.lsn, "p": payload_json, "c": _entry_checksum(row, payload_json)}
        )
    if moved:
        conn.execute(
            sa.text("INSERT INTO journal_content (lsn, content) VALUES (:lsn, :content)"), moved
        )
        conn.execute(sa.text(_RESEAL), resealed)


def downgrade() -> None:
    conn = op.get_bind()
    contents: dict[int, str] = dict(
        conn.execute(sa.text("SELECT lsn, content FROM journal_content")).all()
    )
    restored = []
    for row in conn.execute(sa.text(_ROWS)).all():
        payload = _payload(row)
        content = contents.get(row.lsn)
        if payload is None or content is None or payload.get("content_sha256") != _sha256(content):
            continue
        del payload["content_sha256"]
        payload["content"] = content
        payload_json = _canonical(payload)
        restored.append(
            {"lsn": row.lsn, "p": payload_json, "c": _entry_checksum(row, payload_json)}
        )
    if restored:
        conn.execute(sa.text(_RESEAL), restored)
    op.drop_table("journal_content")
