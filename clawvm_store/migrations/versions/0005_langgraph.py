"""LangGraph checkpoints: tables and the views that show them

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 01:10:00

* lg_checkpoints, lg_writes: what clawvm_store.integrations.langgraph.ClawVMSaver stores;
* langgraph_threads: one row per thread and namespace (how many checkpoints, the latest one);
* langgraph_checkpoints: one row per checkpoint (parent, run, step, source, size, pending writes);
* langgraph_writes: one row per pending write (task, channel, size).

The views use only portable SQL (no JSON functions): step, source and run id are columns.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

VIEWS = {
    "langgraph_checkpoints": """
        SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.run_id,
               c.step, c.source, c.type, LENGTH(c.checkpoint) AS bytes,
               (SELECT COUNT(*) FROM lg_writes w
                WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns
                  AND w.checkpoint_id = c.checkpoint_id) AS pending_writes,
               c.checkpoint_id = (SELECT MAX(l.checkpoint_id) FROM lg_checkpoints l
                                  WHERE l.thread_id = c.thread_id
                                    AND l.checkpoint_ns = c.checkpoint_ns) AS is_latest,
               c.metadata, c.created_at
        FROM lg_checkpoints c
    """,
    "langgraph_threads": """
        SELECT g.thread_id, g.checkpoint_ns, g.checkpoints, g.bytes, g.first_at, g.last_at,
               g.latest_checkpoint_id, l.step AS latest_step, l.source AS latest_source,
               (SELECT COUNT(*) FROM lg_writes w
                WHERE w.thread_id = g.thread_id AND w.checkpoint_ns = g.checkpoint_ns
                  AND w.checkpoint_id = g.latest_checkpoint_id) AS pending_writes
        FROM (SELECT thread_id, checkpoint_ns, COUNT(*) AS checkpoints,
                     SUM(LENGTH(checkpoint)) AS bytes, MIN(created_at) AS first_at,
                     MAX(created_at) AS last_at, MAX(checkpoint_id) AS latest_checkpoint_id
              FROM lg_checkpoints GROUP BY thread_id, checkpoint_ns) g
        JOIN lg_checkpoints l ON l.thread_id = g.thread_id
             AND l.checkpoint_ns = g.checkpoint_ns AND l.checkpoint_id = g.latest_checkpoint_id
    """,
    "langgraph_writes": """
        SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type,
               LENGTH(value) AS bytes, created_at
        FROM lg_writes
    """,
}


def upgrade() -> None:
    op.create_table(
        "lg_checkpoints",
        sa.Column("thread_id", sa.String(), nullable=False),
        sa.Column("checkpoint_ns", sa.String(), nullable=False),
        sa.Column("checkpoint_id", sa.String(), nullable=False),
        sa.Column("parent_checkpoint_id", sa.String(), nullable=True),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(), nullable=True),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint(
            "thread_id", "checkpoint_ns", "checkpoint_id", name=op.f("pk_lg_checkpoints")
        ),
    )
    op.create_index("ix_lg_checkpoints_run_id", "lg_checkpoints", ["run_id"])
    op.create_table(
        "lg_writes",
        sa.Column("thread_id", sa.String(), nullable=False),
        sa.Column("checkpoint_ns", sa.String(), nullable=False),
        sa.Column("checkpoint_id", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("task_path", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("checksum", sa.String(), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint(
            "thread_id",
            "checkpoint_ns",
            "checkpoint_id",
            "task_id",
            "idx",
            name=op.f("pk_lg_writes"),
        ),
    )
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_table("lg_writes")
    op.drop_index("ix_lg_checkpoints_run_id", table_name="lg_checkpoints")
    op.drop_table("lg_checkpoints")
