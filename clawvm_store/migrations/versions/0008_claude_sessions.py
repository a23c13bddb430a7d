"""Claude Agent SDK transcripts: the mirrored entries and a view of them

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 18:10:00

* claude_transcripts: one row per transcript key (project_key, session_id, subpath, '' for the
  main transcript): entry count, storage mtime (epoch ms), the SDK's summary sidecar (JSON), and
  the page projection's progress (entries consumed, turns projected);
* claude_entries: every appended entry verbatim (JSON text), in append order, with its uuid (an
  idempotency key: unique per transcript when present);
* claude_sessions: the transcripts with their counts, for `clawvm sql`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

VIEWS = {
    "claude_sessions": """
        SELECT t.project_key, t.session_id, t.subpath, t.entries, t.mtime_ms,
               t.projected AS projected_entries, t.turns AS projected_turns
        FROM claude_transcripts t
    """,
}


def upgrade() -> None:
    op.create_table(
        "claude_transcripts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_key", sa.String(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("subpath", sa.String(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("mtime_ms", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("projected", sa.Integer(), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claude_transcripts")),
        sa.UniqueConstraint(
            "project_key",
            "session_id",
            "subpath",
            name=op.f("uq_claude_transcripts_project_key_session_id_subpath"),
        ),
    )
    op.create_table(
        "claude_entries",
        sa.Column("transcript_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(), nullable=True),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["transcript_id"],
            ["claude_transcripts.id"],
            name=op.f("fk_claude_entries_transcript_id_claude_transcripts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("transcript_id", "seq", name=op.f("pk_claude_entries")),
    )
    op.create_index(
        "ix_claude_entries_transcript_id_uuid",
        "claude_entries",
        ["transcript_id", "uuid"],
        unique=True,
    )
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_claude_entries_transcript_id_uuid", table_name="claude_entries")
    op.drop_table("claude_entries")
    op.drop_table("claude_transcripts")
