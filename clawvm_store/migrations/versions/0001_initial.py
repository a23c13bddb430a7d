"""initial schema: pages, versions, representations, journal

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 21:44:00.172165
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lifecycle_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(), nullable=True),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("boundary", sa.String(), nullable=False),
        sa.Column("turn", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("committed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("rejected", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifecycle_events")),
    )
    with op.batch_alter_table("lifecycle_events", schema=None) as batch_op:
        batch_op.create_index("ix_lifecycle_events_session_id", ["session_id", "id"], unique=False)

    op.create_table(
        "meta",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_meta")),
    )
    op.create_table(
        "pages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("session_id", sa.String(), server_default=sa.text("('')"), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("pin", sa.String(), nullable=False),
        sa.Column("priority", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("provenance", sa.Text(), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.Column("updated_at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pages")),
        sa.UniqueConstraint(
            "project", "session_id", "key", name=op.f("uq_pages_project_session_id_key")
        ),
    )
    with op.batch_alter_table("pages", schema=None) as batch_op:
        batch_op.create_index("ix_pages_project_type", ["project", "type"], unique=False)

    op.create_table(
        "projects",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("writers", sa.Text(), nullable=True),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_projects")),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("principal", sa.String(), nullable=True),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("state", sa.String(), server_default=sa.text("'open'"), nullable=False),
        sa.Column("turn", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.Column("updated_at", sa.String(), nullable=False),
        sa.CheckConstraint("state IN ('open', 'closed')", name=op.f("ck_sessions_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_table(
        "journal",
        sa.Column("lsn", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(), server_default=sa.text("('')"), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("principal", sa.String(), nullable=True),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("op", sa.String(), nullable=False),
        sa.Column("page_type", sa.String(), nullable=True),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("staged_at", sa.String(), nullable=False),
        sa.Column("resolved_at", sa.String(), nullable=True),
        sa.CheckConstraint(
            "state IN ('staged', 'committed', 'rejected', 'applied', 'quarantined')",
            name=op.f("ck_journal_state"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"], ["lifecycle_events.id"], name=op.f("fk_journal_event_id_lifecycle_events")
        ),
        sa.PrimaryKeyConstraint("lsn", name=op.f("pk_journal")),
    )
    with op.batch_alter_table("journal", schema=None) as batch_op:
        batch_op.create_index("ix_journal_session_id_state", ["session_id", "state"], unique=False)
        batch_op.create_index("ix_journal_state", ["state"], unique=False)
        batch_op.create_index(
            "uq_journal_idempotency",
            ["project", "session_id", "idempotency_key"],
            unique=True,
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        )

    op.create_table(
        "page_versions",
        sa.Column("page_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("op", sa.String(), nullable=False),
        sa.Column("pin", sa.String(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("provenance", sa.Text(), nullable=True),
        sa.Column("fields", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lsn", sa.Integer(), nullable=False),
        sa.Column("committed_at", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["page_id"], ["pages.id"], name=op.f("fk_page_versions_page_id_pages")
        ),
        sa.PrimaryKeyConstraint("page_id", "version", name=op.f("pk_page_versions")),
    )
    op.create_table(
        "representations",
        sa.Column("page_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fidelity", sa.String(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("encoding", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.CheckConstraint("tokens >= 0", name=op.f("ck_representations_tokens")),
        sa.ForeignKeyConstraint(
            ["page_id", "version"],
            ["page_versions.page_id", "page_versions.version"],
            name="fk_representations_page_versions",
        ),
        sa.PrimaryKeyConstraint("page_id", "version", "fidelity", name=op.f("pk_representations")),
    )


def downgrade() -> None:
    op.drop_table("representations")
    op.drop_table("page_versions")
    with op.batch_alter_table("journal", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_journal_idempotency",
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        )
        batch_op.drop_index("ix_journal_state")
        batch_op.drop_index("ix_journal_session_id_state")

    op.drop_table("journal")
    op.drop_table("sessions")
    op.drop_table("projects")
    with op.batch_alter_table("pages", schema=None) as batch_op:
        batch_op.drop_index("ix_pages_project_type")

    op.drop_table("pages")
    op.drop_table("meta")
    with op.batch_alter_table("lifecycle_events", schema=None) as batch_op:
        batch_op.drop_index("ix_lifecycle_events_session_id")

    op.drop_table("lifecycle_events")
