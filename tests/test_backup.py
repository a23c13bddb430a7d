"""`backup` while another process keeps writing: every copy is one consistent snapshot."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import clawvm_store as cvm

WRITER = """
import sys, clawvm_store as cvm
store = cvm.Store.open(sys.argv[1])
sess = store.session("writer", project="p")
print("ready", flush=True)
i = 0
while True:
    sess.stage(f"plan/p{i % 7}", type="plan", content=f"Goal: step {i}", op="append")
    if i % 3 == 0:
        sess.end_turn()
    store.put(f"notes/n{i}", type="preference", content=f"note {i} " * 20, project="p")
    i += 1
"""


def test_backups_taken_during_writes_are_consistent(tmp_path: Path) -> None:
    source = tmp_path / "live.db"
    cvm.Store.open(source).close()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(source)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        copies = []
        with cvm.Store.open(source) as store:
            for n in range(4):
                time.sleep(0.3)
                copies.append(Path(store.backup(tmp_path / f"copy-{n}.db")))
    finally:
        writer.kill()
        writer.wait()
    sizes = []
    for copy in copies:
        assert os.stat(copy).st_mode & 0o777 == 0o600
        with cvm.Store.open(copy, create=False, recover=False) as restored:
            report = restored.check()
            assert report.ok, report.findings
            rows = restored.query("SELECT COUNT(*) AS n FROM pages WHERE project = 'p'")
            sizes.append(rows[0]["n"])
    # The writer kept going, so later copies hold at least as much, and the copies differ.
    assert sizes == sorted(sizes)
    assert sizes[-1] > sizes[0] > 0


def test_backup_refuses_an_existing_destination(tmp_path: Path) -> None:
    source = tmp_path / "s.db"
    target = tmp_path / "exists.db"
    target.write_bytes(b"keep me")
    with cvm.Store.open(source) as store:
        try:
            store.backup(target)
        except cvm.InvalidInput as exc:
            assert "already exists" in str(exc)
        else:
            raise AssertionError("an existing destination was overwritten")
    assert target.read_bytes() == b"keep me"
