"""Several writer processes against one database: no lost update, no unhandled lock error.

Four real processes each run 500 mixed operations (stages into their own session, lifecycle
boundaries, and read-modify-write ``put``s on keys all of them share, each with the version it
read as ``expected_version``). Every child reports what was acknowledged to it; the final state
must be exactly the union of those acknowledged writes: every acknowledged write is there, and
nothing that was not acknowledged (a stale write refused with ``VersionConflict``) is.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import clawvm_store as cvm
from clawvm_store import db as db_module
from clawvm_store.errors import Busy, VersionConflict

WRITERS = 4
OPS = int(os.environ.get("CLAWVM_CONCURRENCY_OPS", "500"))
SHARED = ("shared/a", "shared/b", "shared/c")
PROJECT = "team"

CHILD = textwrap.dedent(
    """
    import json, random, sys
    import clawvm_store as cvm
    from clawvm_store.errors import Busy, NotFound, VersionConflict

    target, worker, ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(worker)
    acked_puts, acked_stages, conflicts, busy = [], [], 0, 0
    pending = {}
    with cvm.Store.open(target) as store:
        sess = store.session(f"w{worker}", project="team", principal=f"agent-{worker}")

        def boundary():
            result = sess.end_turn()
            for lsn in result.committed:
                acked_stages.append(pending.pop(lsn))
            assert not result.rejected, result.rejected

        for n in range(ops):
            roll = rng.random()
            if roll < 0.45:
                key = f"note/w{worker}/{n}"
                content = f"w{worker} note {n}"
                staged = sess.stage(key, type="preference", content=content, scope="session")
                pending[staged.lsn] = [key, content]
            elif roll < 0.6:
                boundary()
            else:
                key = rng.choice(SHARED)
                try:
                    version = store.page(key, project="team").version
                except NotFound:
                    version = None
                content = f"w{worker} put {n}"
                try:
                    page = store.put(key, type="preference", content=content, project="team",
                                     expected_version=version)
                except VersionConflict:
                    conflicts += 1
                    continue
                except Busy:
                    busy += 1
                    continue
                acked_puts.append([key, page.version, content])
        boundary()
        sess.close()
    print(json.dumps({"puts": acked_puts, "stages": acked_stages, "conflicts": conflicts,
                      "busy": busy, "left": len(pending)}))
    """
).replace("rng.choice(SHARED)", f"rng.choice({SHARED!r})")


def run_writers(target: str, writers: int, ops: int) -> list[dict[str, Any]]:
    """Start ``writers`` child processes at once; returns each one's acknowledged writes."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, target, str(worker), str(ops)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(writers)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def assert_union_of_acknowledged(store: cvm.Store, reports: list[dict[str, Any]]) -> None:
    """The final state holds every acknowledged write and nothing else."""
    for report in reports:
        assert report["left"] == 0
    acked_puts = {(key, version): content for r in reports for key, version, content in r["puts"]}
    assert len(acked_puts) == sum(len(r["puts"]) for r in reports), "a version was acked twice"
    for key in SHARED:
        versions = [(v.version, v) for v in store.history(key, project=PROJECT)]
        acked = sorted(version for k, version in acked_puts if k == key)
        # Versions 1..n, each one an acknowledged put: no lost update, no silent overwrite.
        assert [version for version, _ in versions] == acked == list(range(1, len(acked) + 1))
        for version, _ in versions:
            page = store.page(key, project=PROJECT, version=version)
            assert page.content == acked_puts[(key, version)]
    for worker, report in enumerate(reports):
        session = f"w{worker}"
        acked = {key: content for key, content in report["stages"]}
        assert len(acked) == len(report["stages"])
        heads = {
            summary.key
            for summary in store.pages(project=PROJECT, session=session)
            if summary.key.startswith("note/")
        }
        assert heads == set(acked)
        for key, content in acked.items():
            page = store.page(key, project=PROJECT, session=session)
            assert (page.version, page.content) == (1, content)
    states = {entry.state for entry in store.journal_entries()}
    assert states <= {"applied", "rejected"}, states
    rejected = [e for e in store.journal_entries() if e.state == "rejected"]
    # Every rejected entry is a refused stale put, and each was reported as a conflict.
    assert all(e.reason == "DESTRUCTIVE_OP" and e.key in SHARED for e in rejected)
    assert len(rejected) == sum(r["conflicts"] for r in reports)


def test_four_processes_no_lost_update(db_target: str) -> None:
    with closing(cvm.Store.open(db_target)):
        pass  # created and migrated once, before the writers race
    started = time.monotonic()
    reports = run_writers(db_target, WRITERS, OPS)
    elapsed = time.monotonic() - started
    with closing(cvm.Store.open(db_target)) as store:
        assert_union_of_acknowledged(store, reports)
        assert not store.recover().changed
        report = store.check()
        assert report.ok, report.findings
    assert sum(len(r["puts"]) for r in reports) > 0
    assert sum(r["busy"] for r in reports) == 0, "the default busy timeout should absorb this"
    print(f"{WRITERS}x{OPS} ops in {elapsed:.1f}s")


def test_a_stale_put_is_a_version_conflict_never_an_overwrite(db_target: str) -> None:
    with closing(cvm.Store.open(db_target)) as first, closing(cvm.Store.open(db_target)) as other:
        v1 = first.put("shared/x", type="preference", content="one", project=PROJECT)
        other.put("shared/x", type="preference", content="two", project=PROJECT, expected_version=1)
        with pytest.raises(VersionConflict):
            first.put(
                "shared/x",
                type="preference",
                content="stale",
                project=PROJECT,
                expected_version=v1.version,
            )
        assert [v.version for v in first.history("shared/x", project=PROJECT)] == [1, 2]
        assert first.page("shared/x", project=PROJECT).content == "two"


def test_busy_after_the_bounded_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock held past the busy timeout: one-line Busy after retries, and the wait is bounded."""
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 300)
    path = tmp_path / "busy.db"
    with closing(cvm.Store.open(path)) as store:
        holder = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            holder.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            with pytest.raises(Busy) as caught:
                store.put("pref/x", type="preference", content="x")
            waited = time.monotonic() - started
        finally:
            holder.close()
        message = str(caught.value)
        assert "\n" not in message and "locked" in message and "attempts" in message
        assert 0.3 <= waited < 0.3 + 1.0, waited
        # The writer connection was discarded and a new one works at once.
        assert store.put("pref/x", type="preference", content="x").version == 1
        assert store.check().ok


def test_busy_retry_waits_out_a_short_lock(tmp_path: Path) -> None:
    """A lock released before the timeout: the writer gets through, nothing is lost."""
    path = tmp_path / "short.db"
    with closing(cvm.Store.open(path)) as store:
        holder = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(0.5, holder.rollback)
        try:
            timer.start()
            started = time.monotonic()
            page = store.put("pref/y", type="preference", content="y")
            assert time.monotonic() - started >= 0.4
        finally:
            timer.join()
            holder.close()
        assert page.version == 1
        assert store.check().ok


def test_processes_opening_a_new_database_at_once_all_succeed(db_target: str) -> None:
    """Four processes create and migrate the same blank database at the same moment."""
    code = "import sys, clawvm_store as cvm; s = cvm.Store.open(sys.argv[1]); print(s.info().schema_revision); s.close()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, db_target],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WRITERS)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * WRITERS, [err for _, err in outputs]
    with closing(cvm.Store.open(db_target)) as store:
        head = store.info().head_revision
        assert [out.strip() for out, _ in outputs] == [head] * WRITERS
        assert len(store.query("SELECT name FROM meta WHERE name = 'encoding'")) == 1
        assert store.check().ok


def test_busy_on_postgresql_after_the_lock_timeout(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer holds the writers' advisory lock: Busy after the timeout, then recovery."""
    import psycopg
    from sqlalchemy.engine import make_url

    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 300)
    with closing(cvm.Store.open(postgres_url)) as store:
        conninfo = make_url(postgres_url).set(drivername="postgresql")
        with psycopg.connect(conninfo.render_as_string(hide_password=False)) as holder:
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (db_module.WRITER_LOCK_KEY,))
            started = time.monotonic()
            with pytest.raises(Busy) as caught:
                store.put("pref/x", type="preference", content="x")
            waited = time.monotonic() - started
            holder.rollback()  # releases the lock
        message = str(caught.value)
        assert "\n" not in message and "locked" in message
        assert 0.25 <= waited < 5, waited
        assert not [e for e in store.journal_entries() if e.key == "pref/x"]
        assert store.put("pref/x", type="preference", content="x").version == 1
        assert store.check().ok
