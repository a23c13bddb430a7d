"""eviction records name the page that won the space

Revision ID: 0010_eviction_winner
Revises: 0009_tool_effects
Create Date: 2026-12-07 12:50:00

An evicted page's record said only ``evicted-for-budget``. Issue 19 asks which page won the
space: ``assembly_items.won_by`` holds, on a ``left`` row, the key of the page that gained the
most tokens in that assembly (it entered, or rose in fidelity); NULL when nothing gained (the
budget itself shrank) and on every other row. ``resident_by_turn`` gains the column. Existing
rows keep NULL: their assemblies did not say. The downgrade drops the column and restores
revision 0007's view.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_eviction_winner"
down_revision = "0009_tool_effects"
branch_labels = None
depends_on = None

# Revision 0007's view ({won_by} empty) and this one's ({won_by} adds the column).
VIEW = """
    SELECT r.session, r.project, r.turn, r.assembly_id, r.budget, r.prompt_tokens, r.feasible,
           ROW_NUMBER() OVER (
               PARTITION BY r.session, r.turn, r.assembly_id
               ORDER BY CASE WHEN r.fidelity IS NULL THEN 1 ELSE 0 END,
                        CASE WHEN r.fidelity IS NULL THEN r.page_id ELSE 0 END,
                        r.sort_section, r.sort_lsn, r.key{collate}
           ) - 1 AS position,
           r.key, r.version, r.fidelity, r.tokens, r.reason, r.at,
           CASE WHEN r.recorded_in = r.assembly_id THEN r.change ELSE 'kept' END AS change{won_by}
    FROM (
        SELECT a.session_id AS session, a.project, a.turn, a.id AS assembly_id, a.budget,
               a.tokens AS prompt_tokens, a.feasible, a.at, i.assembly_id AS recorded_in,
               i.page_id, i.key, i.version, i.fidelity, i.tokens, i.reason, i.change,
               i.sort_section, i.sort_lsn{inner},
               ROW_NUMBER() OVER (
                   PARTITION BY a.session_id, a.turn, a.id, i.page_id
                   ORDER BY i.assembly_id DESC
               ) AS latest
        FROM assemblies a
        JOIN assemblies b ON b.session_id = a.session_id
             AND b.id BETWEEN COALESCE(a.base_id, a.id) AND a.id
        JOIN assembly_items i ON i.assembly_id = b.id
    ) r
    WHERE r.latest = 1
      AND (r.change IN ('entered', 'kept', 'changed')
           OR (r.change = 'left' AND r.recorded_in = r.assembly_id))
"""


def _view(dialect: str, *, won_by: bool) -> str:
    return VIEW.format(
        collate=' COLLATE "C"' if dialect == "postgresql" else "",
        # A left row is listed only in the assembly that evicted it, so its winner is that
        # assembly's; every other row shows NULL.
        won_by=",\n           CASE WHEN r.change = 'left' THEN r.won_by END AS won_by"
        if won_by
        else "",
        inner=", i.won_by" if won_by else "",
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS resident_by_turn")
    op.add_column("assembly_items", sa.Column("won_by", sa.String(), nullable=True))
    op.execute(f"CREATE VIEW resident_by_turn AS {_view(dialect, won_by=True)}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS resident_by_turn")
    with op.batch_alter_table("assembly_items", schema=None) as batch_op:
        batch_op.drop_column("won_by")
    op.execute(f"CREATE VIEW resident_by_turn AS {_view(dialect, won_by=False)}")
