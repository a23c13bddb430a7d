"""Issue 14, assembly records cost the change: snapshots, deltas and the view that rebuilds them.

* ``resident_by_turn`` over a recorded 200-turn workload (pages entering, leaving, changing
  fidelity and version, deleted, shadowed; demands rotating; a prompt the harness built) returns
  exactly the rows the full records gave. The oracle is the old full-record computation, kept
  here: each assembly's items in order, then its evicted pages by page id.
* ``assembly_items`` grows with the changes, not with turns × pages: an exact count for a script.
* Reopening a store mid-session (mid-chain) keeps hysteresis, the records and the view exactly
  those of an uninterrupted run.
* Revision 0007 converts full records: a store whose records are the full ones at revision 0006
  upgrades to the view's same rows; the downgrade gives the full records back.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

import clawvm_store as cvm
from clawvm_store.assembler import SNAPSHOT_EVERY, Assembly
from clawvm_store.db import Database

URI = {"uri": "file:///x"}
FIXED_CLOCK = "2026-01-01T00:00:00.000000+00:00"
FullRow = tuple[int, int, str, int, str | None, int, str]  # assembly, position, key, version,
# fidelity, tokens, reason

VIEW_ROWS = (
    "SELECT assembly_id, position, key, version, fidelity, tokens, reason FROM resident_by_turn "
    "WHERE session = :s ORDER BY assembly_id, position"
)


def sql(store: cvm.Store, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with store.db.transaction(write=False) as conn:
        return [tuple(row) for row in conn.execute(sa.text(query), params)]


def full_record(sess: cvm.Session, asm: Assembly) -> list[FullRow]:
    """What the full records held for one assembly (the pre-issue-14 _record, as the oracle):
    each item in prompt order, then each evicted page (at its current head version)."""
    assert asm.assembly_id is not None
    rows: list[FullRow] = [
        (asm.assembly_id, position, i.key, i.version, i.fidelity.value, i.tokens, i.reason)
        for position, i in enumerate(asm.items)
    ]
    table = sess._assembler.table
    evicted = sorted(
        (table.visible[d.key].page_id, d.key) for d in asm.decisions if d.fidelity is None
    )
    rows.extend(
        (
            asm.assembly_id,
            len(asm.items) + offset,
            key,
            table.visible[key].version,
            None,
            0,
            "evicted-for-budget",
        )
        for offset, (_, key) in enumerate(evicted)
    )
    return rows


def external_record(
    sess: cvm.Session, assembly_id: int, resident: dict[str, str], previous: set[int]
) -> list[FullRow]:
    """The full record of a prompt the harness built: its pages in key order, then the pages of
    the previous prompt (by page id) it no longer holds."""
    table = sess._assembler.table
    rows: list[FullRow] = []
    for position, (key, fidelity) in enumerate(sorted(resident.items())):
        page = table.visible[key]
        rows.append(
            (
                assembly_id,
                position,
                key,
                page.version,
                fidelity,
                page.tokens[cvm.Fidelity(fidelity)],
                "upgrade",
            )
        )
    chosen = {table.visible[key].page_id for key in resident}
    evicted = [table.by_id[i] for i in sorted(previous) if i in table.by_id and i not in chosen]
    rows.extend(
        (assembly_id, len(resident) + offset, page.key, page.version, None, 0, "evicted-for-budget")
        for offset, page in enumerate(evicted)
    )
    return rows


def open_store(target: Path | str) -> cvm.Store:
    return cvm.Store.open(target, durability="normal", clock=lambda: FIXED_CLOCK)


class Workload:
    """A seeded session: a page in, a page rewritten, deleted or shadowed now and then, demands
    rotating and budgets swinging, so pages enter, leave and change fidelity and version."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.versions: dict[str, int] = {}

    def setup(self, store: cvm.Store, sess: cvm.Session) -> None:
        store.put("boot/agents", type="bootstrap", content="Always run the tests.", project="p")
        store.put("pref/shared", type="preference", content="Prefer short answers.", project="p")
        sess.stage("rule/push", type="constraint", content="Never force-push to main.")
        sess.stage("plan/main", type="plan", content="Goal: ship.\nStep: 1.")
        sess.end_turn()

    def turn(self, store: cvm.Store, sess: cvm.Session, turn: int) -> Assembly:
        rng = self.rng
        key = f"ev/{turn:04d}"
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(60))
        sess.stage(key, type="evidence", content=f"{key}: {words}", provenance=URI)
        self.versions[key] = 1
        if turn % 7 == 3 and turn > 10:
            old = f"ev/{rng.randrange(turn - 10, turn):04d}"
            if old in self.versions:
                sess.stage(
                    old,
                    type="evidence",
                    content=f"{old} rewritten at {turn}",
                    provenance=URI,
                    expected_version=self.versions[old],
                )
                self.versions[old] += 1
        if turn % 11 == 5 and turn > 10:
            old = f"ev/{rng.randrange(turn - 10, turn):04d}"
            if old in self.versions:
                sess.stage(old, op="delete", expected_version=self.versions.pop(old))
        if turn == 120:
            # A session page of the shared preference's key hides the project's page.
            sess.stage("pref/shared", type="preference", content="This session: long answers.")
        sess.end_turn()
        demand = sorted(rng.sample(sorted(self.versions), min(2, len(self.versions))))
        budget = rng.choice([300, 450, 700, 1200])
        return sess.assemble(budget, fixed="SYSTEM", demand=demand)


def test_view_gives_exactly_the_full_records_of_a_200_turn_workload(db_target: str) -> None:
    with open_store(db_target) as store:
        sess = store.session("s", project="p")
        work = Workload(1)
        work.setup(store, sess)
        oracle: list[FullRow] = []
        kinds = {"entered": 0, "changed": 0, "left": 0, "gone": 0}
        for turn in range(200):
            if turn == 77:
                # A prompt the harness assembled itself, recorded like an assembly.
                previous = set(sess._assembler.previous())
                resident = {
                    "boot/agents": "full",
                    "rule/push": "full",
                    f"ev/{turn - 1:04d}": "pointer",
                }
                sess.observe_prompt(resident, record=True, budget=500)
                last = sql(store, "SELECT MAX(id) FROM assemblies")[0][0]
                oracle.extend(external_record(sess, last, resident, previous))
                continue
            asm = work.turn(store, sess, turn)
            oracle.extend(full_record(sess, asm))
        assert sql(store, VIEW_ROWS, s="s") == oracle
        for change, count in sql(
            store, "SELECT change, COUNT(*) FROM assembly_items GROUP BY change"
        ):
            if change in kinds:
                kinds[change] = count
        # The workload exercised every kind of change; even with its budget swinging every turn
        # (most pages change fidelity often) the records are under half the full ones.
        assert all(count > 0 for count in kinds.values()), kinds
        items = sql(store, "SELECT COUNT(*) FROM assembly_items")[0][0]
        assert items * 2 < len(oracle)
        # A snapshot every SNAPSHOT_EVERY assemblies (the external record is one of the chain).
        snapshots = sql(
            store,
            "SELECT id - (SELECT MIN(id) FROM assemblies) FROM assemblies "
            "WHERE kind = 'snapshot' AND base_id IS NULL ORDER BY id",
        )
        assert snapshots == [(n,) for n in range(0, 200, SNAPSHOT_EVERY)]


def test_items_grow_with_the_changes_not_with_turns_times_pages(db_target: str) -> None:
    with open_store(db_target) as store:
        sess = store.session("s", project="p")
        store.put("boot/a", type="bootstrap", content="Rules.", project="p")
        sess.stage("rule/b", type="constraint", content="Never force-push.")
        sess.stage("ev/c", type="evidence", content="result c", provenance=URI)
        sess.end_turn()
        script: list[tuple[str, ...]] = []
        for number in range(1, 41):
            demand: list[str] = []
            if number == 11:
                sess.stage("ev/d", type="evidence", content="result d", provenance=URI)
                sess.end_turn()  # d enters
            if number == 21:
                demand = ["ev/c"]  # c's reason becomes "demand", then (22) "upgrade" again
            if number == 23:
                sess.stage("ev/d", op="delete", expected_version=1)
                sess.end_turn()  # d is gone
            sess.assemble(10_000, demand=demand)
        rows = sql(
            store,
            "SELECT a.id - (SELECT MIN(id) FROM assemblies) + 1, a.kind, i.change, i.key "
            "FROM assembly_items i JOIN assemblies a ON a.id = i.assembly_id "
            "ORDER BY a.id, i.key",
        )
        script = [
            (1, "snapshot", "entered", "boot/a"),
            (1, "snapshot", "entered", "ev/c"),
            (1, "snapshot", "entered", "rule/b"),
            (11, "delta", "entered", "ev/d"),
            (21, "delta", "changed", "ev/c"),
            (22, "delta", "changed", "ev/c"),
            (23, "delta", "gone", "ev/d"),
            (33, "snapshot", "kept", "boot/a"),
            (33, "snapshot", "kept", "ev/c"),
            (33, "snapshot", "kept", "rule/b"),
        ]
        assert rows == script  # 10 rows for 40 assemblies of 3-4 pages (the full records: 132)
        assert sql(store, "SELECT COUNT(*) FROM resident_by_turn")[0][0] == 3 * 40 + 12


def run(path: Path, *, reopen_at: tuple[int, ...], hysteresis: bool = True) -> list[Any]:
    """The workload for 90 turns, closing and reopening the store before the turns named."""
    store = open_store(path)
    sess = store.session("s", project="p")
    work = Workload(2)
    work.setup(store, sess)
    outputs: list[Any] = []
    for turn in range(90):
        if turn in reopen_at:
            store.close()
            store = open_store(path)
            sess = store.session("s", project="p")
            if not hysteresis:
                sess.configure_assembly(hysteresis=False)
        asm = work.turn(store, sess, turn)
        outputs.append((asm.text, [(i.key, i.fidelity, i.version, i.reason) for i in asm.items]))
    outputs.append(sql(store, "SELECT * FROM assembly_items ORDER BY assembly_id, page_id"))
    outputs.append(sql(store, "SELECT id, kind, base_id FROM assemblies ORDER BY id"))
    outputs.append(sql(store, "SELECT * FROM resident_by_turn ORDER BY assembly_id, position"))
    store.close()
    return outputs


def test_reopening_mid_session_keeps_hysteresis_and_records_identical(tmp_path: Path) -> None:
    uninterrupted = run(tmp_path / "a.db", reopen_at=())
    # Reopened mid-chain (turns 20 and 45 are not snapshots) and right after a snapshot (65).
    reopened = run(tmp_path / "b.db", reopen_at=(20, 45, 64, 65))
    assert reopened == uninterrupted
    # The turns after a reopen do depend on what the previous prompt held: without it (no
    # hysteresis from there on) they differ.
    forgetful = run(tmp_path / "c.db", reopen_at=(20,), hysteresis=False)
    assert forgetful[20:90] != uninterrupted[20:90]
    assert forgetful[:20] == uninterrupted[:20]


# -- revision 0007 ----------------------------------------------------------------------------


def engine_for(target: str) -> sa.Engine:
    return sa.create_engine(target if "://" in target else f"sqlite:///{target}")


def alembic(target: str, action: str, revision: str) -> None:
    """``alembic upgrade|downgrade`` with the connection settings Database.migrate uses."""
    db = Database(target)
    try:
        config = db._alembic_config()
        with db.engine.connect() as conn:
            if db.dialect == "sqlite":
                driver = conn.connection.dbapi_connection
                assert driver is not None
                driver.execute("PRAGMA foreign_keys = OFF")  # outside any transaction
                driver.execute("PRAGMA legacy_alter_table = ON")
            config.attributes["connection"] = conn
            getattr(command, action)(config, revision)
    finally:
        db.dispose()


RECORDS = (
    "SELECT a.id, a.kind, a.base_id, i.* FROM assemblies a "
    "LEFT JOIN assembly_items i ON i.assembly_id = a.id ORDER BY a.id, i.page_id"
)


@pytest.fixture
def recorded(db_target: str) -> Iterator[tuple[str, list[FullRow], list[Any]]]:
    """A store with 120 real assemblies of a workload, the full records they had, and the view's
    rows and the records (at head) for comparison."""
    oracle: list[FullRow] = []
    with open_store(db_target) as store:
        for session in ("s", "t"):
            sess = store.session(session, project="p")
            work = Workload(3 if session == "s" else 4)
            if session == "s":
                work.setup(store, sess)
            for turn in range(60):
                oracle.extend(full_record(sess, work.turn(store, sess, turn)))
            sess.close()
        view = sql(store, "SELECT * FROM resident_by_turn ORDER BY assembly_id, position")
        view.append(sql(store, RECORDS))
    yield db_target, oracle, view


def test_revision_0007_converts_full_records_and_back(
    recorded: tuple[str, list[FullRow], list[Any]],
) -> None:
    target, oracle, view = recorded
    alembic(target, "downgrade", "0006")
    engine = engine_for(target)
    full = (
        "SELECT assembly_id, position, key, version, fidelity, tokens, reason "
        "FROM assembly_items ORDER BY assembly_id, position"
    )
    with engine.connect() as conn:
        # Back at 0006 the records are the full ones, exactly.
        assert [tuple(row) for row in conn.execute(sa.text(full))] == oracle
        assert [
            tuple(row)
            for row in conn.execute(
                sa.text(
                    "SELECT assembly_id, position, key, version, fidelity, tokens, reason "
                    "FROM resident_by_turn ORDER BY assembly_id, position"
                )
            )
        ] == oracle
        # Make them the old code's own rows (as written before issue 14), then upgrade.
        ids = dict(conn.execute(sa.text("SELECT key || '@' || session_id, id FROM pages")).all())
        sessions = dict(conn.execute(sa.text("SELECT id, session_id FROM assemblies")).all())
        conn.execute(sa.text("DELETE FROM assembly_items"))
        conn.execute(
            sa.text("INSERT INTO assembly_items VALUES (:a, :p, :page, :k, :v, :f, :t, :r)"),
            [
                {
                    "a": a,
                    "p": p,
                    "k": k,
                    "v": v,
                    "f": f,
                    "t": t,
                    "r": r,
                    "page": ids.get(f"{k}@{sessions[a]}", ids.get(f"{k}@")),
                }
                for a, p, k, v, f, t, r in oracle
            ],
        )
        conn.commit()
    engine.dispose()
    alembic(target, "upgrade", "head")
    with open_store(target) as store:
        view.pop()
        # The conversion gives back every full record: each assembly's pages, positions,
        # versions, fidelities, tokens and reasons. (Old records were in the DESIGN section
        # order, which the conversion places exactly; this workload was recorded in the layout
        # by stability, which it places by position, so a page whose position moved reads as
        # "changed" where the assembler wrote "kept"; and old records never named the page
        # that won an eviction's space: the last two columns, change and won_by, are left out.)
        converted = sql(store, "SELECT * FROM resident_by_turn ORDER BY assembly_id, position")
        assert [row[:-2] for row in converted] == [row[:-2] for row in view]
        rows = sql(store, "SELECT COUNT(*) FROM assembly_items")[0][0]
        assert rows < len(oracle)
        # And the assembler carries on from the converted chain: its next record is a delta.
        sess = store.session("s", project="p")
        sess.assemble(800, fixed="SYSTEM")
        assert sql(store, "SELECT kind FROM assemblies ORDER BY id DESC LIMIT 1") == [("delta",)]


def _contested(store: cvm.Store) -> cvm.Session:
    """Two preferences in full, then a demanded result that needs their room."""
    sess = store.session("s", project="p")
    for name in ("a", "b"):
        words = " ".join(f"{name}{i}" for i in range(40))
        sess.stage(f"preference/{name}", type="preference", content=words)
    sess.end_turn()
    sess.assemble(200)
    rows = "\n".join(f"row {i}: value {i * 3}" for i in range(30))
    sess.stage("evidence/big", type="evidence", content=rows, provenance=URI)
    sess.end_turn()
    return sess


def test_an_eviction_names_the_page_that_won_the_space(tmp_path: Path) -> None:
    """Issue 19: not only 'evicted-for-budget', but what took the tokens."""
    from click.testing import CliRunner

    from clawvm_store.cli import app

    with cvm.Store.open(tmp_path / "won.db") as store:
        sess = _contested(store)
        asm = sess.assemble(100, demand=["evidence/big"])
        assert [(d.key, d.reason, d.won_by) for d in asm.decisions] == [
            ("evidence/big", "demand", None),
            ("preference/b", "upgrade", None),
            ("preference/a", "evicted-for-budget", "evidence/big"),
        ]
        view = store.query(
            "SELECT key, fidelity, change, won_by FROM resident_by_turn WHERE assembly_id = ? "
            "ORDER BY position",
            [asm.assembly_id],
        )
        assert [tuple(row.values()) for row in view] == [
            ("evidence/big", "structured", "entered", None),
            ("preference/b", "pointer", "changed", None),
            ("preference/a", None, "left", "evidence/big"),
        ]
        # Nothing gained, nothing won: a repeat evicts nothing and names nobody.
        again = sess.assemble(100, demand=["evidence/big"])
        assert [d.won_by for d in again.decisions] == [None, None]
    with cvm.Store.open(tmp_path / "cli.db") as store:
        _contested(store).close()
    explained = CliRunner().invoke(
        app,
        [
            "--db",
            str(tmp_path / "cli.db"),
            "assemble",
            "--session",
            "s",
            "--project",
            "p",
            "--budget",
            "100",
            "--demand",
            "evidence/big",
            "--explain",
        ],
    )
    assert explained.exit_code == 0, explained.output
    assert "evicted-for-budget (the space went to evidence/big)" in explained.output
