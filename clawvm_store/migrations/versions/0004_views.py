"""views that make the history easy to query

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 23:10:00

* page_history: every version of every page, with the token count of each fidelity;
* resident_by_turn: what each session's prompt held at which fidelity, per turn;
* journal_outcomes: every journal entry with its outcome, reason code and boundary;
* fault_counts: faults (and hits) per session, project and kind.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

VIEWS = {
    "page_history": """
        SELECT p.project, NULLIF(p.session_id, '') AS session, p.key, v.version, v.type, v.op,
               v.deleted, v.pin, v.priority, v.lsn, v.committed_at,
               MAX(CASE WHEN r.fidelity = 'full' THEN r.tokens END) AS full_tokens,
               MAX(CASE WHEN r.fidelity = 'compressed' THEN r.tokens END) AS compressed_tokens,
               MAX(CASE WHEN r.fidelity = 'structured' THEN r.tokens END) AS structured_tokens,
               MAX(CASE WHEN r.fidelity = 'pointer' THEN r.tokens END) AS pointer_tokens,
               v.version = p.version AS is_head
        FROM page_versions v
        JOIN pages p ON p.id = v.page_id
        LEFT JOIN representations r ON r.page_id = v.page_id AND r.version = v.version
        GROUP BY v.page_id, v.version
    """,
    "resident_by_turn": """
        SELECT a.session_id AS session, a.project, a.turn, a.id AS assembly_id, a.budget,
               a.tokens AS prompt_tokens, a.feasible, i.position, i.key, i.version, i.fidelity,
               i.tokens, i.reason, a.at
        FROM assemblies a
        JOIN assembly_items i ON i.assembly_id = a.id
    """,
    "journal_outcomes": """
        SELECT j.lsn, NULLIF(j.session_id, '') AS session, j.project, j.principal, j.key, j.op,
               j.page_type, j.state, j.reason, j.detail, j.version, e.boundary, e.turn,
               j.staged_at, j.resolved_at
        FROM journal j
        LEFT JOIN lifecycle_events e ON e.id = j.event_id
    """,
    "fault_counts": """
        SELECT session_id AS session, project, kind, COUNT(*) AS n
        FROM faults
        GROUP BY session_id, project, kind
    """,
}


def _portable(body: str, dialect: str) -> str:
    """The view's SQL for PostgreSQL, which is stricter than SQLite about two things.

    Grouping by the version's key does not make the page's columns functionally dependent there
    (the page's own key must be grouped too), and a comparison is a boolean, not 0/1.
    """
    if dialect != "postgresql":
        return body
    return body.replace(
        "GROUP BY v.page_id, v.version", "GROUP BY v.page_id, v.version, p.id"
    ).replace(
        "v.version = p.version AS is_head",
        "CASE WHEN v.version = p.version THEN 1 ELSE 0 END AS is_head",
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {_portable(body, dialect)}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
