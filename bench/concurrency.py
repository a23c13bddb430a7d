"""Concurrency benchmark: throughput with 1, 2 and 4 writer processes, SQLite and PostgreSQL.

Each writer is a separate process with its own store and session, started together (they wait
for one "go" after opening). Each runs the same mixed workload: ``stage`` into its session,
``end_turn`` (a lifecycle boundary: validate, commit, apply), and a direct ``put`` that reads
the page's version and writes with it as ``expected_version``. Per backend it prints the total
throughput (operations per second over the wall time of the whole run), the median and p95
latency of one operation, and the ratio of throughput to the 1-writer run of the same backend.

Writers serialize on one lock per database (SQLite's write lock, PostgreSQL's advisory lock),
so more processes do not write faster; the point is what contention costs, and that nothing
fails: every ``Busy`` or ``VersionConflict`` is counted and printed.

PostgreSQL: ``--postgres URL`` (or ``CLAWVM_TEST_POSTGRES_URL``), a role that may create
databases; without one, a throwaway server is started when PostgreSQL's binaries are installed.

Run: ``python bench/concurrency.py [--ops 400] [--postgres postgresql+psycopg://...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

WRITERS = (1, 2, 4)


def worker(target: str, index: int, ops: int) -> None:
    """One writer process: open, say ready, wait for go, run ``ops`` operations, report."""
    import clawvm_store as cvm
    from clawvm_store.errors import Busy, NotFound, VersionConflict

    latencies: list[float] = []
    busy = conflicts = 0
    with cvm.Store.open(target) as store:
        sess = store.session(f"bench-{index}", project="bench")
        print("ready", flush=True)
        sys.stdin.readline()
        for n in range(ops):
            kind = n % 4
            started = time.perf_counter()
            try:
                if kind in (0, 1):
                    sess.stage(
                        f"note/{index}/{n}",
                        type="preference",
                        content=f"writer {index} note {n}: prefers short answers",
                        scope="session",
                    )
                elif kind == 2:
                    sess.end_turn()
                else:
                    key = f"shared/{n % 8}"
                    try:
                        version: int | None = store.page(key, project="bench").version
                    except NotFound:
                        version = None
                    store.put(
                        key,
                        type="preference",
                        content=f"writer {index} put {n}",
                        project="bench",
                        expected_version=version,
                    )
            except VersionConflict:
                conflicts += 1
            except Busy:
                busy += 1
            latencies.append(time.perf_counter() - started)
        sess.end_turn()
        sess.close()
    print(json.dumps({"latencies": latencies, "busy": busy, "conflicts": conflicts}), flush=True)


def run(target: str, writers: int, ops: int) -> dict[str, float]:
    """``writers`` processes against ``target`` at once; throughput and latency figures."""
    import clawvm_store as cvm

    cvm.Store.open(target).close()  # created and migrated before the clock starts
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", target, str(index), str(ops)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(writers)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a writer failed (exit {proc.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - started
    latencies = sorted(x for r in reports for x in r["latencies"])
    return {
        "ops": len(latencies),
        "wall": wall,
        "throughput": len(latencies) / wall,
        "median_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000,
        "busy": sum(r["busy"] for r in reports),
        "conflicts": sum(r["conflicts"] for r in reports),
    }


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    """Start a PostgreSQL server in a temporary directory if the binaries are installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    if not initdb:
        yield None
        return
    bin_dir = Path(initdb).parent
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root; run the server as the package's user
        prefix = ["runuser", "-u", "postgres", "--"]
    folder = tempfile.mkdtemp(prefix="clawvm-bench-pg-")
    if prefix:
        shutil.chown(folder, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = f"{folder}/data"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(
        [
            *prefix,
            str(initdb),
            "-D",
            data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--locale=C",
            "-E",
            "UTF8",
        ],
        check=True,
        **quiet,  # type: ignore[arg-type]
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "pg_ctl"),
            "-D",
            data,
            "-l",
            f"{folder}/log",
            "-w",
            "-o",
            options,
            "start",
        ],
        check=True,
        **quiet,  # type: ignore[arg-type]
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
            check=False,
            **quiet,  # type: ignore[arg-type]
        )
        shutil.rmtree(folder, ignore_errors=True)


def postgres_database(admin: str) -> tuple[str, str]:
    """A fresh database on the server for one run: (its URL, its name)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"bench_{uuid.uuid4().hex[:12]}"
    url = make_url(admin)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return url.set(database=name).render_as_string(hide_password=False), name


def drop_database(admin: str, name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(admin).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def report(backend: str, results: dict[int, dict[str, float]]) -> None:
    base = results[WRITERS[0]]["throughput"]
    print(f"\n{backend}")
    print(
        f"  {'writers':>7} {'ops':>6} {'wall s':>7} {'ops/s':>8} {'median ms':>10} "
        f"{'p95 ms':>8} {'vs 1':>6} {'busy':>5} {'conflicts':>9}"
    )
    for writers, r in results.items():
        print(
            f"  {writers:>7} {int(r['ops']):>6} {r['wall']:>7.2f} {r['throughput']:>8.0f} "
            f"{r['median_ms']:>10.2f} {r['p95_ms']:>8.2f} {r['throughput'] / base:>5.2f}x "
            f"{int(r['busy']):>5} {int(r['conflicts']):>9}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=400, help="operations per writer process")
    parser.add_argument("--postgres", default=os.environ.get("CLAWVM_TEST_POSTGRES_URL"))
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    print(f"{args.ops} operations per writer (stage, stage, end_turn, put); {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory(prefix="clawvm-bench-") as folder:
        results = {n: run(str(Path(folder) / f"w{n}.db"), n, args.ops) for n in WRITERS}
    report("SQLite (WAL, synchronous=FULL at boundaries)", results)

    if args.no_postgres:
        return
    with contextlib.ExitStack() as stack:
        admin = args.postgres or stack.enter_context(throwaway_postgres())
        if not admin:
            print("\nPostgreSQL: skipped (no --postgres URL and no server binaries installed)")
            return
        results = {}
        for n in WRITERS:
            url, name = postgres_database(admin)
            try:
                results[n] = run(url, n, args.ops)
            finally:
                drop_database(admin, name)
        report("PostgreSQL (local server, fsync on)", results)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
