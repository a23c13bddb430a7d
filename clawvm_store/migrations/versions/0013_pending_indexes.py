"""pending indexes: the journal's state indexes hold only what is pending

Revision ID: 0013_pending_indexes
Revises: 0012_journal_content
Create Date: 2026-12-08 01:00:00

The journal was indexed on ``(session_id, state)``, on ``state`` and on ``event_id``, each with
an entry for every row ever written. Nothing looks rows up by state except to find pending ones
(a session's staged entries at its boundary; staged and committed ones at recovery), and nothing
looks a row up by its event before it has one. The three become partial indexes:
``ix_journal_staged (session_id, lsn) WHERE state = 'staged'``, ``ix_journal_committed (lsn)
WHERE state = 'committed'`` and ``ix_journal_event_id (event_id) WHERE event_id IS NOT NULL``. A
stage then writes one index entry besides its row, a boundary removes each entry it resolves, and
the two state indexes stay as small as what is pending (storage and write volume that grew with
the history, issue 14). The downgrade restores the full indexes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_pending_indexes"
down_revision = "0012_journal_content"
branch_labels = None
depends_on = None


def _partial(name: str, columns: list[str], where: str) -> None:
    op.create_index(
        name,
        "journal",
        columns,
        unique=False,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    op.drop_index("ix_journal_session_id_state", table_name="journal")
    op.drop_index("ix_journal_state", table_name="journal")
    op.drop_index("ix_journal_event_id", table_name="journal")
    _partial("ix_journal_staged", ["session_id", "lsn"], "state = 'staged'")
    _partial("ix_journal_committed", ["lsn"], "state = 'committed'")
    _partial("ix_journal_event_id", ["event_id"], "event_id IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_journal_event_id", table_name="journal")
    op.drop_index("ix_journal_committed", table_name="journal")
    op.drop_index("ix_journal_staged", table_name="journal")
    op.create_index("ix_journal_event_id", "journal", ["event_id"], unique=False)
    op.create_index("ix_journal_state", "journal", ["state"], unique=False)
    op.create_index("ix_journal_session_id_state", "journal", ["session_id", "state"], unique=False)
