"""The fault observer: what went wrong with residency and durability, counted per session.

The six policy-controllable faults of DESIGN 1.5 (``refetch``, ``duplicate_tool``,
``pinned_invariant_miss``, ``post_compaction_bootstrap``, ``silent_recall``, ``flush_miss``) are
recorded in the ``faults`` table with the session, turn, page key and a detail; so are
``duplicate_signature`` alerts (a repeat whose result was still resident), ``physical_insufficiency``
(the floor did not fit: no policy can fix that) and hits (a demanded page or tool result found
resident or resolved by pointer without re-running anything).

Thrash index = (faults + alerts) / (hits + 1).

The observer checks every prompt the engine assembles, and also prompts a harness assembled itself
(:meth:`Session.observe_prompt`), so a harness that skips a step is caught with the right kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from . import schema as t
from .pages import POLICIES, FaultKind, Fidelity, PageType, Pin

HIT = "hit"
"""Recorded beside the faults: a demanded page or tool result served without re-running."""

POLICY_FAULTS: tuple[FaultKind, ...] = (
    FaultKind.REFETCH,
    FaultKind.DUPLICATE_TOOL,
    FaultKind.PINNED_INVARIANT_MISS,
    FaultKind.POST_COMPACTION_BOOTSTRAP,
    FaultKind.SILENT_RECALL,
    FaultKind.FLUSH_MISS,
    FaultKind.STALE_SERVE,
)


@dataclass(frozen=True)
class FaultReport:
    """Counts per fault kind (every kind present, zeros included), alerts, hits and thrash."""

    counts: dict[str, int]
    alerts: int
    hits: int
    thrash: float
    faults: int
    physical_insufficiency: int
    events: list[dict[str, Any]] = field(default_factory=list)


def fault_row(
    *,
    session_id: str | None,
    project: str,
    turn: int,
    kind: str,
    at: str,
    key: str | None = None,
    detail: Mapping[str, Any] | str | None = None,
) -> dict[str, Any]:
    """One row for the ``faults`` table."""
    if isinstance(detail, Mapping):
        detail = json.dumps(dict(detail), sort_keys=True, ensure_ascii=False)
    return {
        "session_id": session_id,
        "project": project,
        "turn": turn,
        "kind": kind,
        "key": key,
        "detail": detail,
        "at": at,
    }


def record(conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert fault rows inside the caller's transaction."""
    materialized = list(rows)
    if materialized:
        conn.execute(t.faults.insert(), materialized)


@dataclass(frozen=True)
class RequiredPage:
    """A page every prompt must hold at or above its floor."""

    key: str
    type: PageType
    floor: Fidelity


def prompt_faults(
    required: Iterable[RequiredPage],
    resident: Mapping[str, Fidelity],
    *,
    after_destructive: bool,
) -> list[tuple[FaultKind, str, str]]:
    """The faults a prompt commits: (kind, key, detail) for each missing or degraded floor page.

    A bootstrap page missing from the first prompt after a compaction or reset is
    ``post_compaction_bootstrap``; any other hard-pinned or always-required page missing or below
    its floor is ``pinned_invariant_miss``. Only meaningful when the floor fits the budget.
    """
    found: list[tuple[FaultKind, str, str]] = []
    for page in required:
        fidelity = resident.get(page.key)
        if fidelity is not None and fidelity.rank <= page.floor.rank:
            continue
        state = "missing" if fidelity is None else f"at {fidelity.value}, below {page.floor.value}"
        if page.type is PageType.BOOTSTRAP and after_destructive:
            found.append((FaultKind.POST_COMPACTION_BOOTSTRAP, page.key, f"bootstrap page {state}"))
        else:
            found.append((FaultKind.PINNED_INVARIANT_MISS, page.key, f"floor page {state}"))
    return found


def required_pages(candidates: Iterable[Any]) -> list[RequiredPage]:
    """The hard-pinned and always-required pages among an assembler page table's candidates."""
    return [
        RequiredPage(c.key, c.type, POLICIES[c.type].floor)
        for c in candidates
        if c.pin is Pin.HARD or POLICIES[c.type].always_required
    ]


def report(
    conn: Connection,
    session_id: str | None,
    *,
    with_events: bool = False,
    project: str | None = None,
) -> FaultReport:
    """Aggregate the ``faults`` table (for one session, one project, or all)."""
    query = select(t.faults.c.kind, func.count()).group_by(t.faults.c.kind)
    if session_id is not None:
        query = query.where(t.faults.c.session_id == session_id)
    if project is not None:
        query = query.where(t.faults.c.project == project)
    raw = {str(kind): int(count) for kind, count in conn.execute(query)}
    counts = {kind.value: raw.get(kind.value, 0) for kind in FaultKind}
    faults = sum(counts[kind.value] for kind in POLICY_FAULTS)
    alerts = counts[FaultKind.DUPLICATE_SIGNATURE.value]
    hits = raw.get(HIT, 0)
    events: list[dict[str, Any]] = []
    if with_events:
        rows = select(t.faults).where(t.faults.c.kind != HIT).order_by(t.faults.c.id)
        if session_id is not None:
            rows = rows.where(t.faults.c.session_id == session_id)
        if project is not None:
            rows = rows.where(t.faults.c.project == project)
        events = [
            {
                "session": row.session_id,
                "turn": row.turn,
                "kind": row.kind,
                "key": row.key,
                "detail": row.detail,
                "at": row.at,
            }
            for row in conn.execute(rows)
        ]
    return FaultReport(
        counts=counts,
        alerts=alerts,
        hits=hits,
        thrash=(faults + alerts) / (hits + 1),
        faults=faults,
        physical_insufficiency=counts[FaultKind.PHYSICAL_INSUFFICIENCY.value],
        events=events,
    )
