"""assembly records, the faults table, and a hash per representation

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 22:03:05.462052
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The assembler's page table refreshes incrementally: versions applied since a boundary id.
    with op.batch_alter_table("page_versions", schema=None) as batch_op:
        batch_op.create_index("ix_page_versions_lsn", ["lsn"], unique=False)
    with op.batch_alter_table("journal", schema=None) as batch_op:
        batch_op.create_index("ix_journal_event_id", ["event_id"], unique=False)
    # check() verifies every fidelity's text, not only the full one.
    with op.batch_alter_table("representations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sha256", sa.String(), nullable=True))
    with op.batch_alter_table("page_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("row_sha256", sa.String(), nullable=True))

    op.create_table(
        "assemblies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("effective_budget", sa.Integer(), nullable=False),
        sa.Column("fixed_tokens", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("feasible", sa.Integer(), nullable=False),
        sa.Column("observed_tokens", sa.Integer(), nullable=True),
        sa.Column("text_sha256", sa.String(), nullable=False),
        sa.Column("at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assemblies")),
    )
    with op.batch_alter_table("assemblies", schema=None) as batch_op:
        batch_op.create_index("ix_assemblies_session_id", ["session_id", "id"], unique=False)

    op.create_table(
        "assembly_items",
        sa.Column("assembly_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("page_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fidelity", sa.String(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.CheckConstraint(
            "reason IN ('floor', 'pin', 'demand', 'upgrade', 'evicted-for-budget')",
            name=op.f("ck_assembly_items_reason"),
        ),
        sa.ForeignKeyConstraint(
            ["assembly_id"],
            ["assemblies.id"],
            name=op.f("fk_assembly_items_assembly_id_assemblies"),
        ),
        sa.ForeignKeyConstraint(
            ["page_id"], ["pages.id"], name=op.f("fk_assembly_items_page_id_pages")
        ),
        sa.PrimaryKeyConstraint("assembly_id", "position", name=op.f("pk_assembly_items")),
    )

    op.create_table(
        "faults",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(), nullable=True),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_faults")),
    )
    with op.batch_alter_table("faults", schema=None) as batch_op:
        batch_op.create_index("ix_faults_session_id_kind", ["session_id", "kind"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("page_versions", schema=None) as batch_op:
        batch_op.drop_column("row_sha256")
    with op.batch_alter_table("representations", schema=None) as batch_op:
        batch_op.drop_column("sha256")
    with op.batch_alter_table("faults", schema=None) as batch_op:
        batch_op.drop_index("ix_faults_session_id_kind")
    op.drop_table("faults")
    op.drop_table("assembly_items")
    with op.batch_alter_table("assemblies", schema=None) as batch_op:
        batch_op.drop_index("ix_assemblies_session_id")

    op.drop_table("assemblies")
    with op.batch_alter_table("journal", schema=None) as batch_op:
        batch_op.drop_index("ix_journal_event_id")
    with op.batch_alter_table("page_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_page_versions_lsn")
