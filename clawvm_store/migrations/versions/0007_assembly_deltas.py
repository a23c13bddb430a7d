"""assembly records cost the change: snapshots and deltas

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 04:00:00

Before, every assembly wrote one ``assembly_items`` row per resident page and one per page evicted
since the previous assembly. Now (issue 14):

* assemblies.kind: 'snapshot' (its items are the whole prompt, as before) or 'delta' (its items are
  only the pages that entered, changed or left since the session's previous assembly);
  assemblies.base_id: for a delta, the snapshot its chain starts from. The first assembly of a
  session and every 32nd are snapshots;
* assembly_items is keyed by (assembly_id, page_id); ``position`` gives way to the page's place in
  the render order (sort_section, sort_lsn; keys sort within), and ``change`` says what happened:
  entered, kept (snapshots only), changed, left (evicted: the old evicted-for-budget row), gone
  (deleted or shadowed: the old records had no row for it, the delta must end its residency);
* resident_by_turn is rebuilt from the snapshot and deltas with window functions and returns
  exactly the rows the full records gave (position included), plus a ``change`` column.

Existing full records are converted in this one transaction, session by session, into exactly the
records the new code would have written; a place that the render order cannot reproduce (a record
written some other way) is stored as the old position itself, so the view stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SNAPSHOT_EVERY = 32  # as clawvm_store.assembler.SNAPSHOT_EVERY when this revision was written
SECTION_ORDER = {
    "bootstrap": 0,
    "constraint": 1,
    "plan": 2,
    "preference": 3,
    "evidence": 4,
    "conversation": 5,
}

# What each assembly held: for every (assembly, page) the latest item row of its chain (its
# snapshot up to itself); a page is resident unless that row left or is gone, and an evicted row
# shows only in the assembly that evicted it. Positions number resident pages in render order,
# then evicted ones by page id, as the full records did. {collate} orders keys by code point on
# PostgreSQL as SQLite's BINARY collation and Python do.
RESIDENT_BY_TURN = """
    SELECT r.session, r.project, r.turn, r.assembly_id, r.budget, r.prompt_tokens, r.feasible,
           ROW_NUMBER() OVER (
               PARTITION BY r.session, r.turn, r.assembly_id
               ORDER BY CASE WHEN r.fidelity IS NULL THEN 1 ELSE 0 END,
                        CASE WHEN r.fidelity IS NULL THEN r.page_id ELSE 0 END,
                        r.sort_section, r.sort_lsn, r.key{collate}
           ) - 1 AS position,
           r.key, r.version, r.fidelity, r.tokens, r.reason, r.at,
           CASE WHEN r.recorded_in = r.assembly_id THEN r.change ELSE 'kept' END AS change
    FROM (
        SELECT a.session_id AS session, a.project, a.turn, a.id AS assembly_id, a.budget,
               a.tokens AS prompt_tokens, a.feasible, a.at, i.assembly_id AS recorded_in,
               i.page_id, i.key, i.version, i.fidelity, i.tokens, i.reason, i.change,
               i.sort_section, i.sort_lsn,
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

# Revision 0004's definition, for the downgrade.
FULL_RESIDENT_BY_TURN = """
        SELECT a.session_id AS session, a.project, a.turn, a.id AS assembly_id, a.budget,
               a.tokens AS prompt_tokens, a.feasible, i.position, i.key, i.version, i.fidelity,
               i.tokens, i.reason, a.at
        FROM assemblies a
        JOIN assembly_items i ON i.assembly_id = a.id
"""

Row = tuple[str, int, str | None, int, str, int, int]  # key, version, fidelity, tokens, reason,
# sort_section, sort_lsn


def _view(dialect: str) -> str:
    return RESIDENT_BY_TURN.format(collate=' COLLATE "C"' if dialect == "postgresql" else "")


def _set_aside(table: str, dialect: str) -> str:
    """Rename a table out of the way; on PostgreSQL its primary key's index name too (index
    names are global there, and the new table's key takes the same name)."""
    old = f"{table}_before_0007"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    if dialect == "postgresql":
        op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{table} TO pk_{old}")
    return old


def _delta_items_table() -> None:
    op.create_table(
        "assembly_items",
        sa.Column("assembly_id", sa.Integer(), nullable=False),
        sa.Column("page_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fidelity", sa.String(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("change", sa.String(), nullable=False),
        sa.Column("sort_section", sa.Integer(), nullable=False),
        sa.Column("sort_lsn", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "reason IN ('floor', 'pin', 'demand', 'upgrade', 'evicted-for-budget', 'gone')",
            name=op.f("ck_assembly_items_reason"),
        ),
        sa.CheckConstraint(
            "change IN ('entered', 'kept', 'changed', 'left', 'gone')",
            name=op.f("ck_assembly_items_change"),
        ),
        sa.ForeignKeyConstraint(
            ["assembly_id"],
            ["assemblies.id"],
            name=op.f("fk_assembly_items_assembly_id_assemblies"),
        ),
        sa.ForeignKeyConstraint(
            ["page_id"], ["pages.id"], name=op.f("fk_assembly_items_page_id_pages")
        ),
        sa.PrimaryKeyConstraint("assembly_id", "page_id", name=op.f("pk_assembly_items")),
    )


def _full_items_table() -> None:
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


def _places(resident: Sequence[Any]) -> list[tuple[int, int]]:
    """(sort_section, sort_lsn) for an old record's resident rows (in position order) such that
    the view's ordering gives back exactly their positions.

    The engine rendered by section, conversation by LSN, then key; a prompt the harness built
    was recorded in key order; anything else keeps its position as its place.
    """
    by_key = [(0, 0)] * len(resident)
    options = [by_key]
    if all(row.page_type in SECTION_ORDER and row.lsn is not None for row in resident):
        natural = [
            (SECTION_ORDER[row.page_type], int(row.lsn) if row.page_type == "conversation" else 0)
            for row in resident
        ]
        options.insert(0, natural)
    for places in options:
        keys = [(*place, row.key) for place, row in zip(places, resident, strict=True)]
        if keys == sorted(keys):
            return places
    return [(0, position) for position in range(len(resident))]


def _deltas(
    assembly_id: int,
    now: dict[int, Row],
    before: dict[int, Row],
    left: Iterable[Any],
    snapshot: bool,
) -> list[dict[str, Any]]:
    """The items the new code writes for one assembly (clawvm_store.assembler.item_records)."""
    rows: list[dict[str, Any]] = []

    def add(page_id: int, row: Row, change: str) -> None:
        key, version, fidelity, tokens, reason, section, lsn = row
        rows.append(
            {
                "assembly_id": assembly_id,
                "page_id": page_id,
                "key": key,
                "version": version,
                "fidelity": fidelity,
                "tokens": tokens,
                "reason": reason,
                "change": change,
                "sort_section": section,
                "sort_lsn": lsn,
            }
        )

    for page_id, row in now.items():
        old = before.get(page_id)
        change = "entered" if old is None else ("kept" if old == row else "changed")
        if snapshot or change != "kept":
            add(page_id, row, change)
    evicted = set()
    for item in left:
        evicted.add(item.page_id)
        add(item.page_id, (item.key, item.version, None, item.tokens, item.reason, 0, 0), "left")
    if not snapshot:
        for page_id, old in before.items():
            if page_id not in now and page_id not in evicted:
                add(page_id, (old[0], old[1], None, 0, "gone", 0, 0), "gone")
    return rows


def _insert(conn: sa.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        columns = list(rows[0])
        conn.execute(
            sa.text(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join(':' + c for c in columns)})"
            ),
            rows,
        )


def _sessions(conn: sa.Connection) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            sa.text("SELECT DISTINCT session_id FROM assemblies ORDER BY session_id")
        )
    ]


def _assembly_ids(conn: sa.Connection, session: str) -> list[int]:
    return [
        int(row[0])
        for row in conn.execute(
            sa.text("SELECT id FROM assemblies WHERE session_id = :s ORDER BY id"), {"s": session}
        )
    ]


def upgrade() -> None:
    conn = op.get_bind()
    dialect = conn.dialect.name
    op.execute("DROP VIEW IF EXISTS resident_by_turn")
    # Plain ADD COLUMNs: SQLite needs no table rebuild for them (a CHECK would need one; the
    # assembler is the only writer of kind).
    op.add_column(
        "assemblies",
        sa.Column("kind", sa.String(), server_default=sa.text("'snapshot'"), nullable=False),
    )
    op.add_column("assemblies", sa.Column("base_id", sa.Integer(), nullable=True))
    if conn.execute(sa.text("SELECT COUNT(*) FROM assembly_items")).scalar() == 0:
        # Nothing to convert (a new store): the new table takes the old one's pages, so a new
        # file's layout is what it was.
        op.drop_table("assembly_items")
        _delta_items_table()
        op.execute(f"CREATE VIEW resident_by_turn AS {_view(dialect)}")
        return
    old = _set_aside("assembly_items", dialect)
    _delta_items_table()

    for session in _sessions(conn):
        records: dict[int, list[Any]] = {}
        for item in conn.execute(
            sa.text(
                f"SELECT i.assembly_id, i.position, i.page_id, i.key, i.version, i.fidelity, "
                f"i.tokens, i.reason, v.type AS page_type, v.lsn "
                f"FROM {old} i JOIN assemblies a ON a.id = i.assembly_id "
                f"LEFT JOIN page_versions v ON v.page_id = i.page_id AND v.version = i.version "
                f"WHERE a.session_id = :s ORDER BY i.assembly_id, i.position"
            ),
            {"s": session},
        ):
            records.setdefault(int(item.assembly_id), []).append(item)
        state: dict[int, Row] = {}
        base: int | None = None
        deltas = 0
        for assembly_id in _assembly_ids(conn, session):
            items = records.get(assembly_id, [])
            resident = [item for item in items if item.fidelity is not None]
            now: dict[int, Row] = {
                int(item.page_id): (
                    item.key,
                    int(item.version),
                    item.fidelity,
                    int(item.tokens),
                    item.reason,
                    section,
                    lsn,
                )
                for item, (section, lsn) in zip(resident, _places(resident), strict=True)
            }
            snapshot = base is None or deltas + 1 >= SNAPSHOT_EVERY
            left = [item for item in items if item.fidelity is None]
            _insert(conn, "assembly_items", _deltas(assembly_id, now, state, left, snapshot))
            conn.execute(
                sa.text("UPDATE assemblies SET kind = :kind, base_id = :base WHERE id = :id"),
                {
                    "kind": "snapshot" if snapshot else "delta",
                    "base": None if snapshot else base,
                    "id": assembly_id,
                },
            )
            state = now
            base = assembly_id if snapshot else base
            deltas = 0 if snapshot else deltas + 1
    op.drop_table(old)
    op.execute(f"CREATE VIEW resident_by_turn AS {_view(dialect)}")


def downgrade() -> None:
    conn = op.get_bind()
    dialect = conn.dialect.name
    op.execute("DROP VIEW IF EXISTS resident_by_turn")
    new = _set_aside("assembly_items", dialect)
    _full_items_table()
    for session in _sessions(conn):
        chains: dict[int, list[Any]] = {}
        for item in conn.execute(
            sa.text(
                f"SELECT i.* FROM {new} i JOIN assemblies a ON a.id = i.assembly_id "
                f"WHERE a.session_id = :s ORDER BY i.assembly_id, i.page_id"
            ),
            {"s": session},
        ):
            chains.setdefault(int(item.assembly_id), []).append(item)
        state: dict[int, Any] = {}
        for assembly_id in _assembly_ids(conn, session):
            items = chains.get(assembly_id, [])
            kind = conn.execute(
                sa.text("SELECT kind FROM assemblies WHERE id = :id"), {"id": assembly_id}
            ).scalar()
            if kind == "snapshot":
                state = {}
            for item in items:
                if item.change in ("left", "gone"):
                    state.pop(item.page_id, None)
                else:
                    state[item.page_id] = item
            resident = sorted(
                state.values(), key=lambda item: (item.sort_section, item.sort_lsn, item.key)
            )
            left = sorted(
                (item for item in items if item.change == "left"), key=lambda item: item.page_id
            )
            _insert(
                conn,
                "assembly_items",
                [
                    {
                        "assembly_id": assembly_id,
                        "position": position,
                        "page_id": item.page_id,
                        "key": item.key,
                        "version": item.version,
                        "fidelity": item.fidelity,
                        "tokens": item.tokens,
                        "reason": item.reason,
                    }
                    for position, item in enumerate([*resident, *left])
                ],
            )
    op.drop_table(new)
    with op.batch_alter_table("assemblies", schema=None) as batch_op:
        batch_op.drop_column("base_id")
        batch_op.drop_column("kind")
    op.execute(f"CREATE VIEW resident_by_turn AS {FULL_RESIDENT_BY_TURN}")
