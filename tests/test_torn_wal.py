"""A power-loss stand-in: the database file plus a torn copy of its write-ahead log.

A workload runs with the store open, so SQLite has not checkpointed: the main file holds the
state from before the workload and the ``-wal`` file holds every transaction since, frame by
frame (a 32-byte header, then per frame a 24-byte header and one page; a frame whose header
carries a database size ends a transaction). We copy both while the store is open, then build
databases from the main file plus only the first N bytes of the log: at every transaction's
last frame, inside frames, before the header is complete, and followed by garbage or by a
replayed earlier frame. No ``-shm`` is copied, so SQLite rebuilds its index from the log.

Each torn copy must open, pass ``integrity_check`` and ``check()``, hold a prefix of the
original journal (LSNs 1..k, each entry byte-identical to the original's), hold only page
versions identical to the original's, and recover (twice, the second a no-op).
"""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

import clawvm_store as cvm
from clawvm_store.journal import compact_payload
from clawvm_store.representations import canonical_json

PROJECT = "p"
SESSIONS = ("s-main", "s-aux")
SEED = 424242
WAL_HEADER = 32
FRAME_HEADER = 24
RANDOM_CUTS = 70
MAX_WAL_FRAMES = 750  # stop the workload here, well before SQLite's auto-checkpoint at 1000
DUMP_TABLES = (
    ("pages", "id"),
    ("page_versions", "page_id, version"),
    ("representations", "page_id, version, fidelity"),
    ("journal", "lsn"),
    ("lifecycle_events", "id"),
    ("sessions", "id"),
)
JOURNAL_IDENTITY = "lsn, session_id, project, key, op, page_type, scope, payload, checksum"


def _run_workload(store: cvm.Store, rng: random.Random, steps: int, wal: Path) -> None:
    """Stages, boundaries and puts; a few updates are left staged at the end.

    It stops early when the log nears SQLite's auto-checkpoint (1000 pages), so the main file
    keeps holding exactly the state from before the workload.
    """
    sessions = {sid: store.session(sid, project=PROJECT) for sid in SESSIONS}
    page_size = int(_read(store, "PRAGMA page_size")[0][0])
    for n in range(steps):
        if wal.stat().st_size > MAX_WAL_FRAMES * (FRAME_HEADER + page_size):
            break
        sess = sessions[rng.choice(SESSIONS)]
        roll = rng.random()
        if roll < 0.6:
            key = rng.choice(("plan/0", "plan/1", "conv/0", "conv/1"))
            if key.startswith("conv"):
                sess.stage(key, type="conversation", content=f"user: turn {n}", op="append")
                continue
            try:
                expected: int | None = sess.page(key).version
            except cvm.NotFound:
                expected = None
            if rng.random() < 0.15:
                expected = (expected or 0) + 2  # stale: rejected with DESTRUCTIVE_OP
            sess.stage(
                key,
                type="plan",
                content=f"Goal: torn {n}\n- [ ] step {n}",
                expected_version=expected,
            )
        elif roll < 0.7:
            sess.stage(
                f"pref/{sess.id}",
                type="preference",
                content=f"prefers {n % 3}",
                op="merge",
                structured={"statement": f"tea {n % 3}", "scope": "project", "provenance": "u"},
            )
        elif roll < 0.88:
            rng.choice((sess.end_turn, sess.flush, sess.compact, sess.reset))()
        else:
            store.put(
                f"put/{n}",
                type=rng.choice(("bootstrap", "constraint", "plan")),
                content=f"Goal: put {n}\n- [ ] rule {n}",
                project=PROJECT,
            )
    for sess in sessions.values():
        sess.stage("conv/0", type="conversation", content="user: left staged", op="append")


def _read(store: cvm.Store, sql: str) -> list[tuple[Any, ...]]:
    with store.db.transaction(write=False) as conn:
        return [tuple(row) for row in conn.exec_driver_sql(sql)]


def _identity(row: Any) -> tuple[Any, ...]:
    """A journal row's identity, its payload as an applied entry keeps it (the content as its
    SHA-256, revision 0006; the re-sealed checksum is verified by check())."""
    payload = canonical_json(compact_payload(json.loads(row[7])))
    return (*row[:7], payload)


def _journal(store: cvm.Store) -> dict[int, tuple[Any, ...]]:
    rows = _read(store, f"SELECT {JOURNAL_IDENTITY}, state, reason, version FROM journal")
    return {row[0]: row for row in rows}


def _versions(store: cvm.Store) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    rows = _read(
        store,
        "SELECT p.project, p.session_id, p.key, pv.version, pv.deleted, pv.lsn, pv.fields,"
        " r.fidelity, r.content, r.tokens FROM page_versions pv"
        " JOIN pages p ON p.id = pv.page_id"
        " LEFT JOIN representations r ON r.page_id = pv.page_id AND r.version = pv.version",
    )
    return {(*row[:4], row[7]): row[4:] for row in rows}


def _dump(store: cvm.Store) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: _read(store, f"SELECT * FROM {table} ORDER BY {pk}") for table, pk in DUMP_TABLES
    }


def _frames(wal: bytes) -> tuple[int, list[tuple[int, bool]]]:
    """The page size and every frame of a WAL as (end offset, ends a transaction)."""
    assert len(wal) >= WAL_HEADER
    magic, _format, page_size = struct.unpack(">III", wal[:12])
    assert magic in (0x377F0682, 0x377F0683)
    frame_size = FRAME_HEADER + page_size
    frames = []
    for start in range(WAL_HEADER, len(wal) - frame_size + 1, frame_size):
        commit_size = struct.unpack(">I", wal[start + 4 : start + 8])[0]
        frames.append((start + frame_size, commit_size != 0))
    assert WAL_HEADER + len(frames) * frame_size == len(wal)
    return page_size, frames


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The workload's database file and log bytes, and its journal and pages at that moment."""
    path = tmp_path_factory.mktemp("torn-original") / "agent.db"
    with cvm.Store.open(path) as store:  # a baseline that closing checkpoints into the main file
        store.put("policy/base", type="bootstrap", content="Base\n- be careful", project=PROJECT)
        store.put("plan/shared", type="plan", content="Goal: base\n- [ ] one", project=PROJECT)
    assert not Path(f"{path}-wal").exists()
    baseline = path.read_bytes()
    store = cvm.Store.open(path)
    try:
        _run_workload(store, random.Random(SEED), steps=150, wal=Path(f"{path}-wal"))
        main = path.read_bytes()
        wal = Path(f"{path}-wal").read_bytes()
        journal = _journal(store)
        versions = _versions(store)
    finally:
        store.close()
    assert main == baseline, "SQLite checkpointed during the workload; make it smaller"
    return {"main": main, "wal": wal, "journal": journal, "versions": versions}


def _torn_copy(directory: Path, main: bytes, wal: bytes) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    path = directory / "agent.db"
    path.write_bytes(main)
    Path(f"{path}-wal").write_bytes(wal)
    return path


def _cuts(wal: bytes, rng: random.Random) -> list[tuple[str, bytes, int]]:
    """Torn logs as (label, bytes, offset of the intact prefix)."""
    page_size, frames = _frames(wal)
    frame_size = FRAME_HEADER + page_size
    commits = [end for end, commit in frames if commit]
    cuts: list[tuple[str, bytes, int]] = [
        ("empty", b"", 0),
        ("half header", wal[:17], 17),
        ("header only", wal[:WAL_HEADER], WAL_HEADER),
        ("whole log", wal, len(wal)),
    ]
    cuts += [(f"commit@{end}", wal[:end], end) for end in commits]
    for _ in range(RANDOM_CUTS):
        end = rng.randrange(WAL_HEADER, len(wal))
        tail = rng.choice(("none", "garbage", "replayed frame"))
        torn = wal[:end]
        if tail == "garbage":
            torn += rng.randbytes(rng.choice((8, FRAME_HEADER, frame_size, 2 * frame_size)))
        elif tail == "replayed frame":
            start = rng.choice(commits) - frame_size
            torn = wal[: WAL_HEADER + (end - WAL_HEADER) // frame_size * frame_size]
            torn += wal[start : start + frame_size]
        cuts.append((f"{tail}@{end}", torn, min(end, len(torn))))
    return cuts


def test_torn_wal_keeps_a_prefix_of_the_journal(original: dict[str, Any], tmp_path: Path) -> None:
    journal: dict[int, tuple[Any, ...]] = original["journal"]
    versions: dict[tuple[Any, ...], tuple[Any, ...]] = original["versions"]
    wal: bytes = original["wal"]
    _, frames = _frames(wal)
    assert len(frames) < 1000  # below SQLite's auto-checkpoint, as the fixture verified
    commits = [end for end, commit in frames if commit]
    assert len(commits) > 60
    rng = random.Random(SEED)
    prefix_by_commits: dict[int, int] = {}
    cuts = 0
    for label, torn, intact in _cuts(wal, rng):
        cuts += 1
        context = f"cut {label} ({len(torn)} bytes of the log)"
        complete = sum(1 for end in commits if end <= intact) if intact >= WAL_HEADER else 0
        path = _torn_copy(tmp_path / "torn", original["main"], torn)

        # As found, before recovery: a prefix of the journal, page versions as written.
        store = cvm.Store.open(path, recover=False)
        try:
            assert _read(store, "PRAGMA integrity_check") == [("ok",)], context
            found = _journal(store)
            k = len(found)
            assert sorted(found) == list(range(1, k + 1)), f"{context}: LSN gap"
            for lsn, row in found.items():
                assert _identity(row) == _identity(journal[lsn]), f"{context}: lsn {lsn} differs"
                if row[9] in ("applied", "rejected"):
                    assert row[9:] == journal[lsn][9:], f"{context}: lsn {lsn} outcome differs"
                else:
                    assert row[9] == "staged", f"{context}: lsn {lsn} is {row[9]}"
            for name, value in _versions(store).items():
                assert versions.get(name) == value, f"{context}: {name} differs"
            assert store.check().ok, f"{context}: {store.check().findings[:10]}"
        finally:
            store.close()
        # The same transactions survived, so the same journal: k depends only on them.
        assert prefix_by_commits.setdefault(complete, k) == k, context

        # Opened the ordinary way: recovery runs, resolves everything, and is idempotent.
        path = _torn_copy(tmp_path / "torn", original["main"], torn)
        store = cvm.Store.open(path)
        try:
            after = _journal(store)
            assert sorted(after) == list(range(1, k + 1)), context
            for lsn, row in after.items():
                assert _identity(row) == _identity(journal[lsn]), f"{context}: lsn {lsn} changed"
                assert row[9] in ("applied", "rejected"), f"{context}: lsn {lsn} is {row[9]}"
            before = _dump(store)
            assert store.recover().changed is False, context
            assert _dump(store) == before, f"{context}: a second recovery changed rows"
            report = store.check()
            assert report.ok, f"{context}: {report.findings[:10]}"
            assert _read(store, "PRAGMA integrity_check") == [("ok",)], context
        finally:
            store.close()

    # Not vacuous: the prefixes grow with the log, from the baseline to the whole journal.
    ordered = [prefix_by_commits[n] for n in sorted(prefix_by_commits)]
    assert ordered == sorted(ordered)
    assert len(set(ordered)) > 40
    assert ordered[0] == 2  # the two baseline puts in the main file
    assert ordered[-1] == len(journal)
    print(
        f"\ntorn WAL: {len(frames)} frames, {len(commits)} transactions, {cuts} cuts, "
        f"{len(set(ordered))} distinct journal prefixes (k from {ordered[0]} to {ordered[-1]})"
    )
    payloads = [json.loads(row[7]) for row in journal.values()]
    assert any(p.get("structured") for p in payloads)
