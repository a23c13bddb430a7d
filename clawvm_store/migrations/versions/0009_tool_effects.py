"""tool effects: volatile reads and writes of unknown effect

Revision ID: 0009_tool_effects
Revises: 0008
Create Date: 2026-12-04 18:10:00

The ledger's ``effect`` column took ``read`` and ``write``. Issue 19 adds ``volatile`` (a read of
state that changes on its own: never served from the ledger) and ``unknown`` (a shell command, a
build, a sub-agent: every cached read it could have changed is invalidated). Only the CHECK
constraint changes; existing rows keep their effect. Downgrade records a volatile call as a read
that is already invalidated (so it is still never served) and an unknown one as a write.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_tool_effects"
down_revision = "0008"
branch_labels = None
depends_on = None

OLD = "effect IN ('read', 'write')"
NEW = "effect IN ('read', 'volatile', 'write', 'unknown')"


def _replace_check(condition: str) -> None:
    with op.batch_alter_table("tool_calls", schema=None, recreate="always") as batch_op:
        batch_op.drop_constraint(op.f("ck_tool_calls_effect"), type_="check")
        batch_op.create_check_constraint(op.f("ck_tool_calls_effect"), sa.text(condition))


def upgrade() -> None:
    _replace_check(NEW)


def downgrade() -> None:
    op.execute(
        "UPDATE tool_calls SET invalidated_at = COALESCE(invalidated_at, started_at), "
        "effect = 'read' WHERE effect = 'volatile'"
    )
    op.execute("UPDATE tool_calls SET effect = 'write' WHERE effect = 'unknown'")
    _replace_check(OLD)
