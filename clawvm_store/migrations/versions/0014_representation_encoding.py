"""representations without a per-row encoding: the store's encoding is the one in meta

Revision ID: 0014_representation_encoding
Revises: 0013_pending_indexes
Create Date: 2026-12-08 01:20:00

Every representation row named the tokenizer encoding its token count was made with, yet a store
counts with one encoding only: it is recorded in ``meta`` when the store is created, and
``Store.open`` refuses another one. The column repeated ``cl100k_base`` (or whichever) on every
row of the largest table, about 12 bytes of eleven rows a turn. It goes; the downgrade puts the
store's encoding back on every row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_representation_encoding"
down_revision = "0013_pending_indexes"
branch_labels = None
depends_on = None


def _views(conn: sa.Connection) -> list[tuple[str, str]]:
    """SQLite's views over representations, dropped around the table's rebuild."""
    if conn.dialect.name != "sqlite":
        return []
    return [
        (str(name), str(sql))
        for name, sql in conn.execute(
            sa.text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'view' "
                "AND sql LIKE '%representations%' ORDER BY name"
            )
        )
    ]


def upgrade() -> None:
    conn = op.get_bind()
    views = _views(conn)
    for name, _ in views:
        op.execute(f'DROP VIEW "{name}"')
    with op.batch_alter_table("representations", schema=None) as batch_op:
        batch_op.drop_column("encoding")
    for _, sql in views:
        op.execute(sql)


def downgrade() -> None:
    conn = op.get_bind()
    encoding = conn.execute(sa.text("SELECT value FROM meta WHERE name = 'encoding'")).scalar()
    views = _views(conn)
    for name, _ in views:
        op.execute(f'DROP VIEW "{name}"')
    with op.batch_alter_table("representations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "encoding", sa.String(), nullable=False, server_default=encoding or "cl100k_base"
            )
        )
    with op.batch_alter_table("representations", schema=None) as batch_op:
        batch_op.alter_column("encoding", server_default=None)
    for _, sql in views:
        op.execute(sql)
