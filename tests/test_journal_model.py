"""The write-ahead journal against an in-memory model (Hypothesis stateful testing).

Two sessions (``s1`` owned by one :class:`Store` object, ``s2`` by another, both on the same
database file) stage sets, appends and deletes on a small key space, with right, missing or stale
``expected_version``; they write back at random boundaries; direct ``put`` calls write
project-scoped pages in between; a store object "crashes" (is closed with no boundary, which makes
its sessions' owner dead) and is reopened, whose recovery takes the staged entries of the dead
session through validation at a ``recovery`` boundary; an explicit ``recover()`` runs while both
owners are alive and must change nothing.

The model is a dict ``(owner, key) -> [content of version 1, 2, ...]`` (``None`` for a delete's
tombstone; owner is the session id for session-scoped pages and '' for project-scoped ones) plus
the staged entries of each session in LSN order. It applies the rules of ``journal.py``:

* blank content is ``SCHEMA_INVALID`` (checked before the version);
* ``set`` needs ``expected_version`` equal to the current version when the page is live, and
  ``None``/``0`` (or the tombstone's version) when it is absent or deleted;
* ``append`` needs no version (these tests send none) and joins its content to a live page's
  content with a newline; on an absent or deleted page it starts afresh;
* ``delete`` needs a live page and ``expected_version`` equal to its current version;
* plan and conversation pages are not hard-pinned, so no ``PIN_VIOLATION`` can arise;
* entries of one boundary are validated in LSN order, each against the effect of the earlier ones;
* recovery writes back each dead session at its own ``recovery`` boundary, in session-id order
  (what the store does; it matters when both sessions staged writes to the same project page).

After every step the store must agree with the model exactly: every page's versions (with their
deleted flags and full contents), the staged entries, and each boundary's committed/rejected LSNs
and versions.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from conftest import (
    POSTGRES_ENV,
    admin_execute,
    drop_postgres_database,
    new_postgres_database,
    postgres_admin_url,
)
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import text
from sqlalchemy.engine import make_url

import clawvm_store as cvm
from clawvm_store.segments import read_text

PROJECT = "p"
SESSIONS = ("s1", "s2")
KEY_TYPES = {"plan/a": "plan", "plan/b": "plan", "conv/a": "conversation"}
KEYS = sorted(KEY_TYPES)
BOUNDARIES = {
    "end_turn": "turn_end",
    "flush": "flush",
    "compact": "compaction",
    "prune": "prune",
    "reset": "reset",
    "close": "session_end",
}

contents = st.text(alphabet="abxyz 019:-\né", min_size=0, max_size=14)
version_choices = st.sampled_from(["right", "current", "none", "zero", "stale", "ahead"])

Owner = str  # a session id for a session-scoped page, '' for a project-scoped one

_TEMPLATE: list[Path] = []


def template_database() -> Path:
    """A freshly created and migrated database, made once; each example starts from a copy
    (migrating a new file for every example would make shrinking a failure very slow)."""
    if not _TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="clawvm-template-"))
        path = folder / "template.db"
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        cvm.Store.open(path).close()
        assert not path.with_name(path.name + "-wal").exists()
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


@dataclass(frozen=True)
class Pending:
    """A staged entry as the model knows it."""

    lsn: int
    session: str
    owner: Owner
    key: str
    op: str
    content: str | None
    expected: int | None


def verdict(
    pages: dict[tuple[Owner, str], list[str | None]], entry: Pending
) -> tuple[str | None, str | None]:
    """(reason, new content) of applying ``entry`` to ``pages``; mutates ``pages`` on success."""
    history = pages.get((entry.owner, entry.key), [])
    current = len(history)
    live = current > 0 and history[-1] is not None
    if entry.op in ("set", "append") and not (entry.content or "").strip():
        return "SCHEMA_INVALID", None
    if entry.op == "set":
        ok = entry.expected == current if live else entry.expected in (None, 0, current or None)
        new: str | None = entry.content
    elif entry.op == "append":
        ok = entry.expected is None or entry.expected == current
        previous = history[-1] if live else None
        new = f"{previous}\n{entry.content}" if previous is not None else entry.content
    else:  # delete
        ok = live and entry.expected == current
        new = None
    if not ok:
        return "DESTRUCTIVE_OP", None
    pages.setdefault((entry.owner, entry.key), []).append(new)
    return None, new


def expected_for(choice: str, current: int, live: bool) -> int | None:
    """The ``expected_version`` a stage or put sends, given the version it will meet."""
    if choice == "right":
        return current if live else None
    if choice == "current":
        return current  # on a deleted page: the tombstone's version, which a set may name
    if choice == "none":
        return None
    if choice == "zero":
        return 0
    if choice == "stale":
        return max(current - 1, 0) if current != 1 else 2
    return current + 1  # "ahead"


class JournalMachine(RuleBasedStateMachine):
    """The store and the model, stepped together."""

    def __init__(self) -> None:
        super().__init__()
        self.path = self.new_database()
        # stores[i] owns SESSIONS[i]
        self.stores: list[cvm.Store] = [cvm.Store.open(self.path), cvm.Store.open(self.path)]
        self.sessions: dict[str, cvm.Session] = {
            name: self.stores[i].session(name, project=PROJECT) for i, name in enumerate(SESSIONS)
        }
        self.pages: dict[tuple[Owner, str], list[str | None]] = {}
        self.staged: dict[str, list[Pending]] = {name: [] for name in SESSIONS}
        self.turns = dict.fromkeys(SESSIONS, 0)
        self.steps = 0

    def new_database(self) -> str:
        """A migrated, empty database for this example: a copy of the template file."""
        self.tmp = tempfile.mkdtemp(prefix="clawvm-model-")
        path = Path(self.tmp) / "model.db"
        shutil.copyfile(template_database(), path)
        return str(path)

    def drop_database(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def teardown(self) -> None:
        try:
            for store in self.stores:
                store.close()
        finally:
            self.drop_database()

    # -- model helpers ---------------------------------------------------------------------------

    def simulated(self, session: str) -> dict[tuple[Owner, str], list[str | None]]:
        """The pages as they would be if every staged entry of ``session`` were written back."""
        pages = {k: list(v) for k, v in self.pages.items()}
        for entry in self.staged[session]:
            verdict(pages, entry)
        return pages

    def write_back(self, session: str) -> tuple[list[int], list[tuple[int, str]], dict[int, int]]:
        """Apply ``session``'s staged entries to the model: (committed, rejected, versions)."""
        committed: list[int] = []
        rejected: list[tuple[int, str]] = []
        versions: dict[int, int] = {}
        for entry in self.staged[session]:
            reason, _ = verdict(self.pages, entry)
            if reason is None:
                committed.append(entry.lsn)
                versions[entry.lsn] = len(self.pages[(entry.owner, entry.key)])
            else:
                rejected.append((entry.lsn, reason))
        self.staged[session] = []
        return committed, rejected, versions

    def last_event_id(self) -> int:
        with self.stores[0].db.transaction(write=False) as conn:
            return int(conn.exec_driver_sql("SELECT max(id) FROM lifecycle_events").scalar() or 0)

    def events_since(self, event_id: int) -> list[tuple[str, str, int, int, int]]:
        """(session, boundary, turn, committed, rejected) of lifecycle events after ``event_id``."""
        with self.stores[0].db.transaction(write=False) as conn:
            rows = conn.execute(
                text(
                    "SELECT session_id, boundary, turn, committed, rejected FROM lifecycle_events "
                    "WHERE id > :id ORDER BY id"
                ),
                {"id": event_id},
            ).all()
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    # -- rules -----------------------------------------------------------------------------------

    def _stage(
        self,
        session: str,
        key: str,
        op: str,
        content: str | None,
        choice: str | None,
        project_scope: bool,
    ) -> None:
        owner = "" if project_scope else session
        pages = self.simulated(session)
        history = pages.get((owner, key), [])
        live = bool(history) and history[-1] is not None
        expected = expected_for(choice, len(history), live) if choice is not None else None
        staged = self.sessions[session].stage(
            key,
            type=KEY_TYPES[key],
            content=content,
            op=op,
            expected_version=expected,
            scope="project" if project_scope else "session",
        )
        assert staged.duplicate is False
        assert staged.key == key
        previous = [e.lsn for s in SESSIONS for e in self.staged[s]]
        assert all(staged.lsn > lsn for lsn in previous)
        self.staged[session].append(Pending(staged.lsn, session, owner, key, op, content, expected))

    @rule(
        session=st.sampled_from(SESSIONS),
        key=st.sampled_from(KEYS),
        content=contents,
        choice=version_choices,
        project_scope=st.booleans(),
    )
    def stage_set(
        self, session: str, key: str, content: str, choice: str, project_scope: bool
    ) -> None:
        self._stage(session, key, "set", content, choice, project_scope)

    @rule(
        session=st.sampled_from(SESSIONS),
        key=st.sampled_from(KEYS),
        content=contents,
        project_scope=st.booleans(),
    )
    def stage_append(self, session: str, key: str, content: str, project_scope: bool) -> None:
        self._stage(session, key, "append", content, None, project_scope)

    @rule(
        session=st.sampled_from(SESSIONS),
        key=st.sampled_from(KEYS),
        choice=st.sampled_from(["right", "right", "none", "stale", "ahead"]),
        project_scope=st.booleans(),
    )
    def stage_delete(self, session: str, key: str, choice: str, project_scope: bool) -> None:
        self._stage(session, key, "delete", None, choice, project_scope)

    def tombstones(self, session: str) -> list[tuple[Owner, str]]:
        pages = self.simulated(session)
        return sorted(
            (owner, key)
            for (owner, key), history in pages.items()
            if owner in (session, "") and history[-1] is None
        )

    @precondition(lambda self: any(self.tombstones(s) for s in SESSIONS))
    @rule(data=st.data(), content=contents.filter(str.strip))
    def stage_set_naming_a_tombstone(self, data: st.DataObject, content: str) -> None:
        """A set on a deleted page may name the tombstone's version (or none)."""
        session = data.draw(st.sampled_from([s for s in SESSIONS if self.tombstones(s)]))
        owner, key = data.draw(st.sampled_from(self.tombstones(session)))
        self._stage(session, key, "set", content, "current", owner == "")

    @rule(key=st.sampled_from(KEYS), first=contents, second=contents)
    def race_on_a_project_page(self, key: str, first: str, second: str) -> None:
        """Both sessions stage a set of the same project page, each naming the version it saw:
        whichever is written back first wins, the other is DESTRUCTIVE_OP."""
        self._stage("s2", key, "set", first, "right", True)
        self._stage("s1", key, "set", second, "right", True)

    @rule(session=st.sampled_from(SESSIONS), method=st.sampled_from(sorted(BOUNDARIES)))
    def boundary(self, session: str, method: str) -> None:
        turn = self.turns[session]
        committed, rejected, versions = self.write_back(session)
        last_event = self.last_event_id()
        result: cvm.WritebackResult = getattr(self.sessions[session], method)()
        assert self.events_since(last_event) == [
            (session, BOUNDARIES[method], turn, len(committed), len(rejected))
        ]
        assert result.boundary is cvm.Boundary(BOUNDARIES[method])
        assert result.committed == committed
        assert result.rejected == rejected
        assert result.versions == versions
        if method == "end_turn":
            self.turns[session] += 1
        if method == "close":
            store = self.stores[SESSIONS.index(session)]
            self.sessions[session] = store.session(session, project=PROJECT)
        assert self.sessions[session].turn == self.turns[session]

    @rule(
        key=st.sampled_from(KEYS),
        op=st.sampled_from(["set", "set", "append"]),
        content=contents,
        choice=version_choices,
        via=st.integers(0, 1),
    )
    def put(self, key: str, op: str, content: str, choice: str, via: int) -> None:
        history = self.pages.get(("", key), [])
        live = bool(history) and history[-1] is not None
        expected = expected_for(choice, len(history), live) if op == "set" else None
        entry = Pending(0, "", "", key, op, content, expected)
        reason, new = verdict(self.pages, entry)
        try:
            page = self.stores[via].put(
                key,
                type=KEY_TYPES[key],
                content=content,
                project=PROJECT,
                op=op,
                expected_version=expected,
            )
        except cvm.UpdateRejected as exc:
            assert exc.reason == reason, (exc, reason)
            assert isinstance(exc, cvm.SchemaInvalid | cvm.DestructiveWrite)
        else:
            assert reason is None, f"put committed but the model expected {reason}"
            assert page.content == new
            assert page.version == len(self.pages[("", key)])

    @rule(index=st.sampled_from([0, 1, None]))
    def crash_and_reopen(self, index: int | None) -> None:
        """Close store object(s) without a boundary (their sessions' owner dies), then reopen.

        ``None`` crashes both: the reopening store recovers both sessions, one ``recovery``
        boundary per session, in session-id order.
        """
        crashed = [0, 1] if index is None else [index]
        last_event = self.last_event_id()
        for i in crashed:
            self.stores[i].close()
        expected_events: list[tuple[str, str, int, int, int]] = []
        outcomes: dict[int, tuple[str, str | None]] = {}
        for i in crashed:  # recovery: one boundary per dead session, in session-id order
            name = SESSIONS[i]
            if self.staged[name]:
                committed, rejected, _ = self.write_back(name)
                expected_events.append(
                    (name, "recovery", self.turns[name], len(committed), len(rejected))
                )
                outcomes.update((lsn, ("applied", None)) for lsn in committed)
                outcomes.update((lsn, ("rejected", reason)) for lsn, reason in rejected)
        for i in crashed:
            self.stores[i] = cvm.Store.open(self.path)
        for i in crashed:
            self.sessions[SESSIONS[i]] = self.stores[i].session(SESSIONS[i], project=PROJECT)
        assert self.events_since(last_event) == expected_events
        states = {r.lsn: (r.state, r.reason) for r in self.stores[0].journal_entries()}
        assert {lsn: states[lsn] for lsn in outcomes} == outcomes
        for i in crashed:
            assert self.sessions[SESSIONS[i]].turn == self.turns[SESSIONS[i]]

    @rule(via=st.integers(0, 1))
    def recover_with_live_owners(self, via: int) -> None:
        last_event = self.last_event_id()
        report = self.stores[via].recover()
        assert self.events_since(last_event) == []
        assert report.changed is False
        assert report.recovered == {}
        assert report.skipped_live_sessions == [s for s in SESSIONS if self.staged[s]]

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def pages_match_the_model(self) -> None:
        store = self.stores[0]
        with store.db.transaction(write=False) as conn:
            # Each version's full text through the append layout (an append stores a segment).
            rows = [
                (owner, key, version, deleted, read_text(conn, page_id, version, "full"))
                for page_id, owner, key, version, deleted in conn.execute(
                    text(
                        "SELECT p.id, p.session_id, p.key, v.version, v.deleted "
                        "FROM pages p JOIN page_versions v ON v.page_id = p.id "
                        "WHERE p.project = :project ORDER BY p.session_id, p.key, v.version"
                    ),
                    {"project": PROJECT},
                )
            ]
        stored: dict[tuple[Owner, str], list[str | None]] = {}
        for owner, key, version, deleted, content in rows:
            history = stored.setdefault((owner, key), [])
            assert version == len(history) + 1
            assert (content is None) == bool(deleted)
            history.append(content)
        assert stored == self.pages

        # The public API tells the same story.
        for (owner, key), history in self.pages.items():
            where: dict[str, Any] = {"session": owner} if owner else {}
            listed = store.history(key, project=PROJECT, **where)
            assert [(v.version, v.deleted) for v in listed] == [
                (n, content is None) for n, content in enumerate(history, start=1)
            ]
            if history[-1] is None:
                with pytest.raises(cvm.NotFound):
                    store.page(key, project=PROJECT, **where)
            else:
                head = store.page(key, project=PROJECT, **where)
                assert (head.version, head.content) == (len(history), history[-1])

    @invariant()
    def staged_entries_match_the_model(self) -> None:
        for name in SESSIONS:
            records = self.stores[0].journal_entries(state="staged", session=name)
            assert [r.lsn for r in records] == [e.lsn for e in self.staged[name]]
            assert [e.lsn for e in self.sessions[name].staged()] == [
                e.lsn for e in self.staged[name]
            ]

    @invariant()
    def store_checks_clean(self) -> None:
        self.steps += 1
        if self.steps % 6 == 0:
            report = self.stores[0].check()
            assert report.ok, report.findings


JournalMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_journal_against_model = JournalMachine.TestCase

_PG_TEMPLATE: list[str] = []


class PostgresJournalMachine(JournalMachine):
    """The same machine on PostgreSQL: each example gets a database copied from a template."""

    def new_database(self) -> str:
        admin = postgres_admin_url()
        assert admin is not None
        if not _PG_TEMPLATE:
            url, name = new_postgres_database(admin)
            cvm.Store.open(url).close()
            atexit.register(drop_postgres_database, admin, name)
            _PG_TEMPLATE.append(name)
        self.pg_name = f"t_{uuid.uuid4().hex}"
        admin_execute(admin, f'CREATE DATABASE "{self.pg_name}" TEMPLATE "{_PG_TEMPLATE[0]}"')
        return make_url(admin).set(database=self.pg_name).render_as_string(hide_password=False)

    def drop_database(self) -> None:
        admin = postgres_admin_url()
        assert admin is not None
        drop_postgres_database(admin, self.pg_name)


PostgresJournalMachine.TestCase.settings = JournalMachine.TestCase.settings
test_journal_against_model_postgresql = pytest.mark.skipif(
    postgres_admin_url() is None, reason=f"PostgreSQL tests need {POSTGRES_ENV}"
)(PostgresJournalMachine.TestCase)
