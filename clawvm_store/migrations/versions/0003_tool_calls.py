"""tool call ledger and recall index (FTS5)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 22:20:19.187529
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(), nullable=False),
        sa.Column("effect", sa.String(), nullable=False),
        sa.Column("resources", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("result_key", sa.String(), nullable=True),
        sa.Column("result_version", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("invalidated_at", sa.String(), nullable=True),
        sa.Column("started_at", sa.String(), nullable=False),
        sa.Column("finished_at", sa.String(), nullable=True),
        sa.CheckConstraint("effect IN ('read', 'write')", name=op.f("ck_tool_calls_effect")),
        sa.CheckConstraint(
            "state IN ('started', 'finished', 'failed', 'interrupted')",
            name=op.f("ck_tool_calls_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_calls")),
        sa.UniqueConstraint("session_id", "call_id", name=op.f("uq_tool_calls_session_id_call_id")),
    )
    with op.batch_alter_table("tool_calls", schema=None) as batch_op:
        batch_op.create_index(
            "ix_tool_calls_session_id_signature", ["session_id", "signature"], unique=False
        )
        batch_op.create_index(
            "uq_tool_calls_idempotency",
            ["session_id", "idempotency_key"],
            unique=True,
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        )

    # Recall's full-text index: derived from page versions and filled incrementally at recall
    # time (the watermark lives in `meta`), so rebuilding it never needs a migration of its own.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE pages_fts USING fts5("
            "content, key UNINDEXED, page_id UNINDEXED, project UNINDEXED, session_id UNINDEXED)"
        )
    else:
        # PostgreSQL has no FTS5: the same columns in a plain table, searched with its own
        # text search (to_tsvector/to_tsquery, 'simple' configuration) over a GIN index.
        op.execute(
            "CREATE TABLE pages_fts (content TEXT NOT NULL, key VARCHAR NOT NULL, "
            "page_id INTEGER NOT NULL, project VARCHAR NOT NULL, session_id VARCHAR NOT NULL)"
        )
        op.execute("CREATE INDEX pages_fts_page_id ON pages_fts (page_id)")
        op.execute(
            "CREATE INDEX pages_fts_content ON pages_fts USING gin (to_tsvector('simple', content))"
        )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS pages_fts")
    with op.batch_alter_table("tool_calls", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_tool_calls_idempotency",
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        )
        batch_op.drop_index("ix_tool_calls_session_id_signature")

    op.drop_table("tool_calls")
