"""The kill -9 campaign: real process crashes at random instants, then recovery and an audit.

A forked child (the test process has already imported clawvm_store, so a fork costs
milliseconds, not an interpreter start) opens the store (``Store.open`` recovers, so kills also
land inside recovery and, for the first child of a database, inside creation and migration),
resumes its sessions and runs a seeded random workload forever: stages (set with right and
wrong ``expected_version``, append, merge of structured preference fields, delete, idempotent
re-stages), boundaries (end_turn, flush, compact, prune, reset) and direct ``put`` calls.
After each call *returned* it writes one JSON line to a pipe: that line is the acknowledgement.
The parent SIGKILLs the child after a random delay, then recovers the database and checks
that every acknowledged write is there exactly, that nothing is half-applied, and that a second
recovery changes nothing.

The parent never holds a database connection across a fork (asserted through /proc).
The campaign runs on both backends (PostgreSQL when ``CLAWVM_TEST_POSTGRES_URL`` names a server).
``CLAWVM_CRASH_KILLS`` sets the number of kills (default 200; ``CLAWVM_CRASH_KILLS_POSTGRES``
for PostgreSQL, default the same), ``CLAWVM_CRASH_SEED`` the base
seed. A failure message names the kill, its child seed and delay; since the database grows
across the kills of one epoch, reproducing it means re-running the campaign with that seed.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest
from conftest import admin_execute, drop_postgres_database, new_postgres_database
from sqlalchemy.engine import make_url

import clawvm_store as cvm
from clawvm_store.representations import text_sha256
from clawvm_store.segments import whole_texts

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or not Path("/proc/self/fd").is_dir(),
    reason="the kill -9 campaign forks and inspects /proc",
)

PROJECT = "p"
SESSIONS = ("s-main", "s-aux")
KILLS = int(os.environ.get("CLAWVM_CRASH_KILLS", "200"))
# PostgreSQL kills cost more (a server round trip per statement, a database copy per audit).
PG_KILLS = int(os.environ.get("CLAWVM_CRASH_KILLS_POSTGRES", str(KILLS)))
BASE_SEED = int(os.environ.get("CLAWVM_CRASH_SEED", "20260425"))
KILLS_PER_DB = 50  # a fresh database every so many kills keeps the audit's cost bounded
CHILD_LIMIT_S = 120.0  # a child that is never killed stops itself (and the test fails)
MAX_APPEND_CHARS = 1500  # beyond this a page is rewritten with set, so contents stay small

PLAN_KEYS = ("plan/0", "plan/1", "plan/2")
CONV_KEYS = ("conv/0", "conv/1", "conv/2", "conv/3")
RULE_KEYS = ("rules/0", "rules/1")
DOC_KEYS = ("doc/0", "doc/1", "doc/2")
STATEMENTS = ("tea", "coffee", "green tea")
WORDS = ("alpha", "beta", "gamma", "delta", "kill", "nine", "wal", "page", "fsync", "ünïcode")
BOUNDARIES = ("end_turn", "flush", "compact", "prune", "reset")
BOUNDARY_NAMES = {
    "end_turn": "turn_end",
    "flush": "flush",
    "compact": "compaction",
    "prune": "prune",
    "reset": "reset",
}
DUMP_TABLES = (
    ("pages", "id"),
    ("page_versions", "page_id, version"),
    ("representations", "page_id, version, fidelity"),
    ("journal", "lsn"),
    ("lifecycle_events", "id"),
    ("sessions", "id"),
)


# --- the child ------------------------------------------------------------------------------


def _ack(fd: int, record: Mapping[str, Any]) -> None:
    """Write one acknowledgement line; the parent only counts lines that end in a newline."""
    data = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


@dataclass
class _Head:
    """The workload's belief about a page: version, whether it is live, its size in chars."""

    version: int = 0
    live: bool = False
    size: int = 0

    def after(self, op: str, content_len: int) -> _Head:
        if op == "delete":
            return _Head(self.version + 1, False, 0)
        if op == "set" or not self.live:
            return _Head(self.version + 1, True, content_len)
        return _Head(self.version + 1, True, self.size + content_len + 1)


class _Workload:
    """A seeded random agent: stages, boundaries and puts, acknowledged once they returned."""

    def __init__(self, store: cvm.Store, seed: int, fd: int) -> None:
        self.store = store
        self.seed = seed
        self.rng = random.Random(seed)
        self.fd = fd
        self.sessions = {sid: store.session(sid, project=PROJECT) for sid in SESSIONS}
        # Page identity: (owning session or "" for project scope, key).
        self.committed: dict[tuple[str, str], _Head] = {}
        for summary in store.pages(project=PROJECT, include_deleted=True):
            self.committed[(summary.session or "", summary.key)] = _Head(
                summary.version,
                not summary.deleted,
                4 * summary.tokens.get(cvm.Fidelity.FULL, 0),
            )
        self.predicted = dict(self.committed)
        self.pending: dict[str, dict[int, tuple[tuple[str, str], str, int]]] = {
            sid: {} for sid in SESSIONS
        }
        self.last_idempotent: tuple[str, dict[str, Any], int] | None = None
        self.n = 0

    def head(self, ident: tuple[str, str], *, predicted: bool = True) -> _Head:
        table = self.predicted if predicted else self.committed
        return table.get(ident, _Head())

    def words(self, low: int, high: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(low, high)))

    def run(self) -> NoReturn:
        started = time.monotonic()
        while True:
            if time.monotonic() - started > CHILD_LIMIT_S:
                raise RuntimeError("the child was never killed")
            self.n += 1
            roll = self.rng.random()
            if roll < 0.62:
                self.stage_one()
            elif roll < 0.65:
                self.restage()
            elif roll < 0.80:
                self.boundary()
            else:
                self.put()

    # -- stages ------------------------------------------------------------------------------

    def stage_one(self) -> None:
        rng, n, tag = self.rng, self.n, f"{self.seed}-{self.n}"
        sid = rng.choice(SESSIONS)
        family = rng.choices(("plan", "conv", "rules", "pref"), weights=(35, 30, 15, 20))[0]
        kwargs: dict[str, Any]
        if family == "plan":
            key = rng.choice(PLAN_KEYS)
            ident = (sid, key)
            head = self.head(ident)
            op = rng.choices(("set", "append", "delete"), weights=(70, 20, 10))[0]
            if op == "append" and head.size > MAX_APPEND_CHARS:
                op = "set"
            content = (
                f"Goal: ship {tag}\n- [x] step {n - 1}\n- [ ] step {n}"
                if op == "set"
                else f"- [ ] extra step {tag} {self.words(1, 4)}"
            )
            kwargs = {"type": "plan", "content": content, "op": op}
            if op == "delete":
                kwargs = {"op": "delete", "expected_version": head.version}
            elif op == "set":
                kwargs["expected_version"] = head.version if head.live else None
                if rng.random() < 0.15:  # deliberately stale or future: DESTRUCTIVE_OP
                    kwargs["expected_version"] = head.version + rng.randint(1, 3)
        elif family == "conv":
            key = rng.choice(CONV_KEYS)
            ident = (sid, key)
            head = self.head(ident)
            content = f"user: message {tag} {self.words(3, 12)}"
            kwargs = {"type": "conversation", "content": content, "op": "append"}
            if head.size > MAX_APPEND_CHARS:
                kwargs.update(op="set", expected_version=head.version if head.live else None)
        elif family == "rules":
            key = rng.choice(RULE_KEYS)
            ident = (sid, key)
            head = self.head(ident)
            op = rng.choices(("append", "set", "delete"), weights=(55, 40, 5))[0]
            if op == "append" and head.size > MAX_APPEND_CHARS:
                op = "set"
            kwargs = {"type": "constraint", "content": f"never do thing {tag}", "op": op}
            if op == "set":
                kwargs["expected_version"] = head.version if head.live else None
            elif op == "delete":  # a hard-pinned page: PIN_VIOLATION when it exists
                kwargs = {"op": "delete", "expected_version": head.version}
        else:
            key = f"pref/{sid}/{rng.randrange(2)}"
            ident = ("", key)
            head = self.head(ident)
            statement = rng.choice(STATEMENTS)
            kwargs = {
                "type": "preference",
                "content": f"prefers {statement} ({tag})",
                "op": "merge",
                "structured": {"statement": statement, "scope": "project", "provenance": "user"},
            }
            if head.live and rng.random() < 0.5:
                kwargs["expected_version"] = head.version
        if rng.random() < 0.25:
            kwargs["idempotency_key"] = f"ik-{tag}"
        staged = self.sessions[sid].stage(key, **kwargs)
        self.on_staged(sid, ident, key, kwargs, staged.lsn)
        if "idempotency_key" in kwargs:
            self.last_idempotent = (sid, {"key": key, **kwargs}, staged.lsn)

    def on_staged(
        self, sid: str, ident: tuple[str, str], key: str, kwargs: dict[str, Any], lsn: int
    ) -> None:
        op = kwargs["op"]
        content = kwargs.get("content")
        _ack(
            self.fd,
            {
                "k": "stage",
                "sid": sid,
                "lsn": lsn,
                "key": key,
                "op": op,
                "content": content,
                "structured": kwargs.get("structured"),
                "ev": kwargs.get("expected_version"),
            },
        )
        head = self.head(ident)
        content_len = len(content or "")
        expected = kwargs.get("expected_version")
        fails = (op == "set" and expected != (head.version if head.live else None)) or (
            op == "delete" and (not head.live or expected != head.version)
        )
        if not fails:
            self.predicted[ident] = head.after(op, content_len)
        self.pending[sid][lsn] = (ident, op, content_len)

    def restage(self) -> None:
        """Retry an update with its idempotency key: the original entry comes back."""
        if self.last_idempotent is None:
            return
        sid, kwargs, original = self.last_idempotent
        key = kwargs["key"]
        rest = {name: value for name, value in kwargs.items() if name != "key"}
        staged = self.sessions[sid].stage(key, **rest)
        _ack(
            self.fd,
            {"k": "restage", "lsn": staged.lsn, "orig": original, "dup": staged.duplicate},
        )

    # -- boundaries ----------------------------------------------------------------------------

    def boundary(self) -> None:
        sid = self.rng.choice(SESSIONS)
        kind = self.rng.choices(BOUNDARIES, weights=(45, 20, 15, 10, 10))[0]
        result: cvm.WritebackResult = getattr(self.sessions[sid], kind)()
        _ack(
            self.fd,
            {
                "k": "boundary",
                "sid": sid,
                "b": BOUNDARY_NAMES[kind],
                "event": result.event_id,
                "committed": result.committed,
                "rejected": [[lsn, reason] for lsn, reason in result.rejected],
                "versions": {str(lsn): v for lsn, v in result.versions.items()},
            },
        )
        pending = self.pending[sid]
        touched = {ident for ident, _, _ in pending.values()}
        for lsn in sorted(result.committed):
            if lsn not in pending:
                continue
            ident, op, content_len = pending[lsn]
            head = self.head(ident, predicted=False).after(op, content_len)
            head.version = result.versions[lsn]
            self.committed[ident] = head
        for ident in touched:
            self.predicted[ident] = self.head(ident, predicted=False)
        pending.clear()

    # -- direct writes ---------------------------------------------------------------------------

    def put(self) -> None:
        rng, tag = self.rng, f"{self.seed}-{self.n}"
        if rng.random() < 0.55:
            key = f"put/{tag}"
            page_type = rng.choice(("plan", "constraint", "bootstrap", "conversation"))
            content = f"Goal: put {tag}\n- [ ] {self.words(1, 6)}"
            page = self.store.put(key, type=page_type, content=content, project=PROJECT)
            _ack(
                self.fd,
                {"k": "put", "key": key, "version": page.version, "content": content, "new": True},
            )
            return
        key = rng.choice(DOC_KEYS)
        ident = ("", key)
        head = self.head(ident, predicted=False)
        wrong = rng.random() < 0.2
        expected = head.version if head.live else None
        if wrong:
            expected = head.version + rng.randint(1, 2)
        content = f"Goal: document {tag}\n- [ ] {self.words(2, 8)}"
        try:
            page = self.store.put(
                key, type="plan", content=content, project=PROJECT, expected_version=expected
            )
        except cvm.DestructiveWrite as exc:
            _ack(
                self.fd,
                {"k": "put_rej", "key": key, "lsn": exc.lsn, "reason": exc.reason, "wrong": wrong},
            )
            return
        _ack(
            self.fd,
            {
                "k": "put",
                "key": key,
                "version": page.version,
                "content": content,
                "wrong": wrong,
                "expected": expected,
            },
        )
        self.committed[ident] = self.predicted[ident] = _Head(page.version, True, len(content))


def _child(path: Path | str, seed: int, fd: int) -> NoReturn:
    """The body of a forked child; it leaves through ``os._exit`` on every path."""
    code = 3
    try:
        store = cvm.Store.open(path)
        _ack(fd, {"k": "opened"})
        _Workload(store, seed, fd).run()
    except BaseException:
        code = 1
        try:
            _ack(fd, {"k": "error", "error": traceback.format_exc()[-3000:]})
        except BaseException:
            code = 2
    finally:
        os._exit(code)


# --- the parent -------------------------------------------------------------------------------


def _open_fds_on(prefix: Path) -> list[str]:
    """Paths under ``prefix`` this process holds open (a connection kept across a fork)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(prefix)):
            found.append(target)
    return found


@dataclass
class _Run:
    """One killed child: what it acknowledged and how it ended."""

    seed: int
    delay: float
    lines: list[dict[str, Any]]
    status: int


def _run_child(path: Path | str, seed: int, delay: float) -> _Run:
    """Fork a workload child, SIGKILL it ``delay`` seconds after the fork, collect its acks."""
    if isinstance(path, Path):
        leaked = _open_fds_on(path.parent)
        assert not leaked, f"the parent holds database files open across fork: {leaked}"
    read_fd, write_fd = os.pipe()
    forked_at = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves through os._exit
        os.close(read_fd)
        _child(path, seed, write_fd)
    os.close(write_fd)
    buffer = bytearray()
    eof = False
    deadline = forked_at + delay
    try:
        while not eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                eof = not chunk
                buffer += chunk
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        while chunk := os.read(read_fd, 1 << 16):
            buffer += chunk
    finally:
        os.close(read_fd)
    lines = [json.loads(line) for line in bytes(buffer).split(b"\n")[:-1]]
    return _Run(seed, delay, lines, status)


def _dump(store: cvm.Store) -> dict[str, list[tuple[Any, ...]]]:
    with store.db.transaction(write=False) as conn:
        return {
            table: [
                tuple(row) for row in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {pk}")
            ]
            for table, pk in DUMP_TABLES
        }


def _recover_twice(store: cvm.Store, context: str) -> cvm.RecoveryReport:
    """Recover, then recover again: the second must find nothing and change no row."""
    report = store.recover()
    assert report.quarantined == [], f"{context}: a kill cannot corrupt an entry: {report}"
    before = _dump(store)
    again = store.recover()
    assert again.changed is False, f"{context}: second recovery changed something: {again}"
    after = _dump(store)
    for table, _ in DUMP_TABLES:
        assert before[table] == after[table], f"{context}: second recovery changed {table}"
    return report


def _audit(store: cvm.Store, acks: list[dict[str, Any]], context: str) -> None:
    """Every invariant after a crash and recovery, and every acknowledged write, exactly."""
    with store.db.transaction(write=False) as conn:
        sqlite = conn.dialect.name == "sqlite"
        integrity = (
            [row[0] for row in conn.exec_driver_sql("PRAGMA integrity_check")] if sqlite else ["ok"]
        )
        journal = {
            row.lsn: row
            for row in conn.exec_driver_sql(
                "SELECT lsn, session_id, project, key, op, scope, payload, state, reason,"
                " version, event_id FROM journal"
            )
        }
        # Full texts through the append layout (an append stores only its segment).
        texts = whole_texts(conn)
        versions = {
            (row.project, row.session_id, row.key, row.version): SimpleNamespace(
                **{**row._mapping, "content": texts.get((row.page_id, row.version))}
            )
            for row in conn.exec_driver_sql(
                "SELECT p.project, p.session_id, p.key, pv.page_id, pv.version, pv.type,"
                " pv.deleted, pv.fields, pv.lsn, r.content"
                " FROM page_versions pv JOIN pages p ON p.id = pv.page_id"
                " LEFT JOIN representations r ON r.page_id = pv.page_id"
                " AND r.version = pv.version AND r.fidelity = 'full'"
            )
        }
        heads = {
            row.id: row
            for row in conn.exec_driver_sql(
                "SELECT id, project, session_id, key, version FROM pages"
            )
        }
        rep_counts = {
            (row[0], row[1]): row[2]
            for row in conn.exec_driver_sql(
                "SELECT page_id, version, COUNT(*) FROM representations GROUP BY page_id, version"
            )
        }
        events = {
            row.id: row
            for row in conn.exec_driver_sql("SELECT id, session_id, boundary FROM lifecycle_events")
        }
    problems: list[str] = []
    if integrity != ["ok"]:
        problems.append(f"integrity_check: {integrity[:5]}")

    # The journal: LSNs 1..n, nothing left staged or committed, applied <-> page versions.
    # (PostgreSQL sequences skip the values a rolled-back transaction took: there LSNs only
    # grow, and commit order is still LSN order, since writers hold one lock.)
    if sqlite and sorted(journal) != list(range(1, len(journal) + 1)):
        problems.append("journal LSNs are not 1..n")
    states = Counter(row.state for row in journal.values())
    for state in ("staged", "committed", "quarantined"):
        if states[state]:
            lsns = sorted(lsn for lsn, row in journal.items() if row.state == state)[:10]
            problems.append(f"{states[state]} journal entries left {state}: {lsns}")
    by_lsn: dict[int, list[Any]] = {}
    for row in versions.values():
        by_lsn.setdefault(row.lsn, []).append(row)

    def ident(row: Any) -> tuple[str, str, str]:
        return (row.project, row.session_id if row.scope == "session" else "", row.key)

    for lsn, row in journal.items():
        produced = by_lsn.get(lsn, [])
        if row.state == "applied":
            if len(produced) != 1:
                problems.append(f"lsn {lsn} is applied but produced {len(produced)} versions")
            elif (*ident(row), row.version) != (
                produced[0].project,
                produced[0].session_id,
                produced[0].key,
                produced[0].version,
            ):
                problems.append(f"lsn {lsn} applied as version {row.version} but stored elsewhere")
        elif produced:
            problems.append(f"lsn {lsn} is {row.state} but produced a page version")

    # Pages: versions 1..head, head == newest, every live version has its whole ladder.
    per_page: dict[int, list[int]] = {}
    for row in versions.values():
        per_page.setdefault(row.page_id, []).append(row.version)
        wanted = 0 if row.deleted else len(cvm.POLICIES[cvm.PageType(row.type)].ladder)
        have = rep_counts.get((row.page_id, row.version), 0)
        if have != wanted:
            problems.append(f"{row.key}@{row.version} has {have} fidelities, wants {wanted}")
        if not row.deleted and row.content is None:
            problems.append(f"{row.key}@{row.version} has no full content")
    for page_id, head in heads.items():
        numbers = sorted(per_page.get(page_id, []))
        if numbers != list(range(1, head.version + 1)):
            problems.append(f"page {head.key!r} head {head.version} over versions {numbers[-5:]}")
    orphans = set(rep_counts) - {(row.page_id, row.version) for row in versions.values()}
    if orphans:
        problems.append(f"representations without a version: {sorted(orphans)[:5]}")

    # Every acknowledged write.
    def content_of(key: tuple[str, str, str], version: int) -> str | None:
        row = versions.get((*key, version))
        return None if row is None or row.deleted else row.content

    for ack in acks:
        kind = ack["k"]
        if kind == "stage":
            lsn = ack["lsn"]
            row = journal.get(lsn)
            if row is None:
                problems.append(f"acked stage lsn {lsn} ({ack['key']}) is missing")
                continue
            payload = json.loads(row.payload)
            # An applied entry keeps its content as a hash (the version holds the text).
            held = (
                payload.get("content")
                if "content_sha256" not in payload
                else (
                    ack["content"]
                    if text_sha256(ack["content"]) == payload["content_sha256"]
                    else "(other)"
                )
            )
            if (row.key, row.op, held, payload.get("expected_version")) != (
                ack["key"],
                ack["op"],
                ack["content"],
                ack["ev"],
            ) or payload.get("structured") != ack["structured"]:
                problems.append(f"acked stage lsn {lsn} differs in the journal: {payload}")
            if row.state not in ("applied", "rejected"):
                problems.append(f"acked stage lsn {lsn} is {row.state}")
            if row.state != "applied":
                continue
            page = ident(row)
            version = row.version
            got = content_of(page, version)
            previous = content_of(page, version - 1) if version > 1 else None
            if ack["op"] == "set":
                expected = ack["content"]
            elif ack["op"] in ("append", "merge"):
                expected = ack["content"] if previous is None else f"{previous}\n{ack['content']}"
            else:
                expected = None
                if not versions[(*page, version)].deleted:
                    problems.append(f"acked delete lsn {lsn} did not delete {page}")
            if got != expected:
                problems.append(
                    f"acked {ack['op']} lsn {lsn} {page}@{version}: {got!r} != {expected!r}"
                )
            if ack["op"] == "merge":
                fields = json.loads(versions[(*page, version)].fields or "{}")
                if any(fields.get(name) != value for name, value in ack["structured"].items()):
                    problems.append(f"acked merge lsn {lsn}: fields {fields} lack {ack}")
        elif kind == "restage":
            if not ack["dup"] or ack["lsn"] != ack["orig"]:
                problems.append(f"an idempotent retry wrote a second entry: {ack}")
        elif kind == "boundary":
            event = events.get(ack["event"])
            if event is None or (event.session_id, event.boundary) != (ack["sid"], ack["b"]):
                problems.append(f"acked boundary event {ack['event']} is not {ack['b']}")
            for lsn in ack["committed"]:
                row = journal.get(lsn)
                version = ack["versions"][str(lsn)]
                if row is None or (row.state, row.version, row.event_id) != (
                    "applied",
                    version,
                    ack["event"],
                ):
                    problems.append(f"acked commit lsn {lsn}@{version} is now {row}")
            for lsn, reason in ack["rejected"]:
                row = journal.get(lsn)
                if row is None or (row.state, row.reason, row.event_id) != (
                    "rejected",
                    reason,
                    ack["event"],
                ):
                    problems.append(f"acked rejection lsn {lsn} ({reason}) is now {row}")
        elif kind == "put":
            if ack.get("wrong"):
                problems.append(f"a put with a wrong expected_version committed: {ack}")
            if ack.get("new") and ack["version"] != 1:
                problems.append(f"a put of a fresh key is not version 1: {ack}")
            got = content_of((PROJECT, "", ack["key"]), ack["version"])
            if got != ack["content"]:
                problems.append(f"acked put {ack['key']}@{ack['version']}: {got!r}")
        elif kind == "put_rej":
            row = journal.get(ack["lsn"])
            if not ack["wrong"]:
                problems.append(f"a put with the right expected_version was rejected: {ack}")
            if row is None or (row.state, row.reason) != ("rejected", "DESTRUCTIVE_OP"):
                problems.append(f"acked put rejection lsn {ack['lsn']} is now {row}")
    assert not problems, f"{context}:\n" + "\n".join(problems[:30])

    check = store.check()
    assert check.ok, f"{context}: check() findings: {check.findings[:20]}"


def _verify_put_pages(store: cvm.Store, acks: list[dict[str, Any]], context: str) -> None:
    """The acknowledged puts of the last child, read back through the public API."""
    for ack in acks:
        if ack["k"] == "put":
            page = store.page(ack["key"], project=PROJECT, version=ack["version"])
            assert page.content == ack["content"], f"{context}: put {ack['key']}"


class _Databases:
    """Where an epoch's database and its audit copies live: files, or PostgreSQL databases."""

    def __init__(self, tmp_path: Path, admin: str | None) -> None:
        self.tmp_path = tmp_path
        self.admin = admin
        self.created: list[str] = []

    def epoch(self, number: int) -> Path | str:
        if self.admin is None:
            path = self.tmp_path / f"epoch{number}" / "kill9.db"
            path.parent.mkdir()
            return path
        self.drop_all()
        url, name = new_postgres_database(self.admin)
        self.created.append(name)
        return url

    def copy(self, target: Path | str) -> Path | str:
        """A copy of the (unrecovered) database, so the original keeps its recovery work."""
        if isinstance(target, Path):
            audit_dir = target.parent / "audit"
            shutil.rmtree(audit_dir, ignore_errors=True)
            audit_dir.mkdir()
            copy = audit_dir / target.name
            for suffix in ("", "-wal"):
                if Path(f"{target}{suffix}").exists():
                    shutil.copyfile(f"{target}{suffix}", f"{copy}{suffix}")
            return copy
        assert self.admin is not None
        source = make_url(target).database
        name = f"a_{uuid.uuid4().hex}"
        # The killed child's server process may need a moment to notice its client is gone;
        # CREATE DATABASE waits for that (up to 5 s) before it refuses.
        admin_execute(self.admin, f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        self.created.append(name)
        return make_url(target).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if self.admin is not None:
            for name in self.created:
                drop_postgres_database(self.admin, name)
        self.created = []


def test_kill9_campaign(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Many SIGKILLs at random instants; after each, recovery keeps every acknowledged write."""
    admin = str(request.getfixturevalue("postgres_server")) if backend == "postgresql" else None
    databases = _Databases(tmp_path, admin)
    try:
        _campaign(databases, PG_KILLS if admin else KILLS)
    finally:
        databases.drop_all()


def _campaign(databases: _Databases, kills: int) -> None:
    rng = random.Random(BASE_SEED)
    started = time.monotonic()
    landed: Counter[str] = Counter()
    changed_by_recovery = 0
    acked_total: Counter[str] = Counter()
    acks: list[dict[str, Any]] = []
    path: Path | str = ""
    for index in range(kills):
        if index % KILLS_PER_DB == 0:
            path = databases.epoch(index // KILLS_PER_DB)
            acks = []
        seed = rng.randrange(1 << 30)
        delay = rng.uniform(0.02, 0.25)
        run = _run_child(path, seed, delay)
        context = f"kill {index} (child seed {seed}, delay {delay:.3f}s, db {path})"
        errors = [line["error"] for line in run.lines if line["k"] == "error"]
        assert not errors, f"{context}: the child failed:\n{errors[0]}"
        assert os.WIFSIGNALED(run.status) and os.WTERMSIG(run.status) == signal.SIGKILL, (
            f"{context}: the child was not killed by SIGKILL (status {run.status})"
        )
        writes = [line for line in run.lines if line["k"] not in ("opened", "error")]
        if not any(line["k"] == "opened" for line in run.lines):
            landed["during open or recovery"] += 1
        elif not writes:
            landed["after open, before the first ack"] += 1
        else:
            landed["mid-workload"] += 1
        acked_total.update(line["k"] for line in writes)
        acks.extend(writes)

        # Half the time the audit works on a copy, leaving the original unrecovered, so the next
        # child's Store.open has recovery work to do and the next kill may land inside it.
        on_copy = rng.random() < 0.5
        target = databases.copy(path) if on_copy else path
        store = cvm.Store.open(target, recover=False)
        try:
            report = _recover_twice(store, context)
            changed_by_recovery += report.changed
            _audit(store, acks, context)
            _verify_put_pages(store, writes, context)
        finally:
            store.close()
    elapsed = time.monotonic() - started
    print(
        f"\nkill -9 campaign: {kills} kills in {elapsed:.1f}s "
        f"({elapsed / max(kills, 1) * 1000:.0f} ms/kill); landed: {dict(landed)}; "
        f"recoveries with work: {changed_by_recovery}; acks: {dict(acked_total)}"
    )
    assert landed["mid-workload"] >= 0.5 * kills, f"too few kills mid-workload: {dict(landed)}"
    assert acked_total["boundary"] > 0 and acked_total["put"] > 0 and acked_total["stage"] > 0


# --- a deterministic crash: staged, acknowledged, killed before any boundary ------------------


def _self_killing_child(path: Path | str, fd: int) -> NoReturn:
    code = 1
    try:
        store = cvm.Store.open(path)
        sess = store.session("s-main", project=PROJECT)
        updates: list[tuple[str, dict[str, Any]]] = [
            ("plan/main", {"type": "plan", "content": "Goal: survive kill -9\n- [ ] stage"}),
            ("conv/0", {"type": "conversation", "content": "user: hello", "op": "append"}),
            ("conv/0", {"type": "conversation", "content": "assistant: hi", "op": "append"}),
            (
                "plan/main",
                {
                    "type": "plan",
                    "content": "Goal: survive kill -9\n- [x] stage\n- [ ] recover",
                    "expected_version": 1,
                },
            ),
            ("rules/0", {"type": "constraint", "content": "never push to main"}),
            ("rules/0", {"type": "constraint", "content": "never skip tests", "op": "append"}),
            (
                "pref/tea",
                {
                    "type": "preference",
                    "content": "prefers tea",
                    "op": "merge",
                    "structured": {"statement": "tea", "scope": "project", "provenance": "user"},
                },
            ),
            (
                "pref/tea",
                {
                    "type": "preference",
                    "content": "still tea",
                    "op": "merge",
                    "structured": {"statement": "tea"},
                    "idempotency_key": "tea-2",
                },
            ),
        ]
        updates += [
            ("conv/1", {"type": "conversation", "content": f"user: message {i}", "op": "append"})
            for i in range(6)
        ]
        for key, kwargs in updates:
            staged = sess.stage(key, **kwargs)
            _ack(fd, {"lsn": staged.lsn, "key": key, **kwargs})
        os.kill(os.getpid(), signal.SIGKILL)
    except BaseException:
        _ack(fd, {"error": traceback.format_exc()[-3000:]})
    finally:
        os._exit(code)


@pytest.mark.parametrize("recover_on_open", [False, True], ids=["recover-call", "open"])
def test_acked_stages_commit_at_recovery_after_self_kill(
    tmp_path: Path, db_target: str, recover_on_open: bool
) -> None:
    path = db_target
    cvm.Store.open(path).close()  # created and migrated by the parent
    read_fd, write_fd = os.pipe()
    assert not _open_fds_on(tmp_path)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves through os._exit
        os.close(read_fd)
        _self_killing_child(path, write_fd)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    data = b""
    while chunk := os.read(read_fd, 1 << 16):
        data += chunk
    os.close(read_fd)
    acks = [json.loads(line) for line in data.split(b"\n")[:-1]]
    assert not [ack for ack in acks if "error" in ack], acks
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    lsns = [ack["lsn"] for ack in acks]
    assert lsns == list(range(1, 15))

    store = cvm.Store.open(path, recover=recover_on_open)
    try:
        if not recover_on_open:
            staged = store.journal_entries(state="staged")
            assert [entry.lsn for entry in staged] == lsns
            report = store.recover()
            assert list(report.recovered) == ["s-main"]
            result = report.recovered["s-main"]
            assert result.boundary is cvm.Boundary.RECOVERY
            assert result.committed == lsns
            assert result.rejected == []
        assert store.recover().changed is False
        entries = store.journal_entries()
        assert [(e.lsn, e.state) for e in entries] == [(lsn, "applied") for lsn in lsns]
        with store.db.transaction(write=False) as conn:
            events = conn.exec_driver_sql(
                "SELECT id, session_id, boundary, committed, rejected FROM lifecycle_events"
            ).all()
            event_ids = {row[0] for row in conn.exec_driver_sql("SELECT event_id FROM journal")}
            payloads = {
                row[0]: json.loads(row[1])
                for row in conn.exec_driver_sql("SELECT lsn, payload FROM journal")
            }
        assert [tuple(row[1:]) for row in events] == [("s-main", "recovery", 14, 0)]
        assert event_ids == {events[0][0]}
        for ack in acks:
            held = payloads[ack["lsn"]]
            assert held.get("content") == ack["content"] or held.get(
                "content_sha256"
            ) == text_sha256(ack["content"])
            assert payloads[ack["lsn"]].get("structured") == ack.get("structured")

        def content(key: str, version: int | None = None) -> str:
            return store.page(key, project=PROJECT, session="s-main", version=version).content

        assert content("plan/main", 1) == "Goal: survive kill -9\n- [ ] stage"
        assert content("plan/main") == "Goal: survive kill -9\n- [x] stage\n- [ ] recover"
        assert store.page("plan/main", project=PROJECT, session="s-main").version == 2
        assert content("conv/0") == "user: hello\nassistant: hi"
        assert content("rules/0") == "never push to main\nnever skip tests"
        pref = store.page("pref/tea", project=PROJECT)
        assert (pref.version, pref.content) == (2, "prefers tea\nstill tea")
        assert pref.structured == {"statement": "tea", "scope": "project", "provenance": "user"}
        conv = store.page("conv/1", project=PROJECT, session="s-main")
        assert (conv.version, conv.content) == (
            6,
            "\n".join(f"user: message {i}" for i in range(6)),
        )
        assert store.check().ok
        # The session is free again: a new process (here, this one) resumes it.
        resumed = store.session("s-main", project=PROJECT)
        assert resumed.staged() == []
    finally:
        store.close()


def test_a_database_killed_while_it_was_being_created_opens(tmp_path: Path) -> None:
    """Killed in rollback-journal mode (before the first connection switched the new file to
    WAL), the file has a hot journal: a read-only probe cannot read it, the open must."""
    db = tmp_path / "agent.db"
    script = (
        "import os, signal, sqlite3\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('PRAGMA cache_size = 1')\n"
        "c.execute('CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)')\n"
        "c.execute('BEGIN')\n"
        "c.execute('CREATE TABLE half (x)')\n"
        "for _ in range(500): c.execute('INSERT INTO half VALUES (?)', ('x' * 500,))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False)
    assert done.returncode == -signal.SIGKILL
    assert Path(f"{db}-journal").stat().st_size > 0  # hot: the rollback has not happened
    with cvm.Store.open(db) as store:
        store.put("policy/agents", type="bootstrap", content="Be careful.", project="p")
        assert store.check().ok
        tables = {row["name"] for row in store.query("SELECT name FROM sqlite_schema")}
        assert "half" not in tables  # the dead writer's transaction was rolled back
