"""Crash-test your own agent harness: real SIGKILLs at seeded instants, then the invariants.

**The harness contract.** A harness is an importable callable ``main(db_path: str) -> None``
that opens ``Store.open(db_path)`` itself and drives its agent (sessions, stages, tool calls,
boundaries) to the end. It must be

* *resumable*: run again on the same database after a crash, it continues from what it
  committed (the session's ``turn``, its pages, the tool ledger) and finishes; and
* *deterministic*: a fake model and fixed inputs, so every run does the same library
  operations. Files it touches belong beside the database (``Path(db_path).parent``): the kit
  starts every case in an empty directory at the same path.

It prints nothing special: acknowledgements are captured by the library itself.

**What a campaign does.** First an uncrashed run, which counts the library's crash points
(three per write transaction: before ``BEGIN``, before ``COMMIT``, after ``COMMIT``) and gives
the baseline (how often each write tool runs, the final pages). Then ``kills`` kill points are
drawn with ``random.Random(seed)``; for each, on a fresh database, a forked child runs the
harness and kills itself with ``SIGKILL`` at that crash point; the kit recovers a copy of the
database and checks the invariants; it restarts the harness on the crashed database (whose own
``Store.open`` now recovers) and runs it to the end; and it checks the invariants again, plus
those that compare with the uncrashed run. The same harness and kill point reproduce a case
exactly: :func:`replay`, ``crash_harness.replay(...)`` or ``clawvm crashtest ... --kill-at K``.

**Acknowledgements.** In the child, the library appends one JSON line per acknowledged stage,
put, boundary and tool execution/result to a file just before it returns to the caller
(:mod:`clawvm_store._crashpoints`); a write killed before its line is in flight, allowed to be
present or absent, never half. The invariants are in :data:`INVARIANTS`.

In pytest (the plugin is registered on install)::

    def test_my_agent_survives(crash_harness):
        crash_harness.run(my_agent_main, kills=50)

From the shell: ``clawvm crashtest mypackage.agent:main --kills 50 --seed 0``.
"""

from __future__ import annotations

from .invariants import INVARIANTS
from .kit import (
    CrashFailure,
    CrashHarness,
    CrashInvariantError,
    CrashTestReport,
    CrashTestSetupError,
    Harness,
    harness_name,
    load_harness,
    replay,
    run_crashtest,
)

__all__ = [
    "INVARIANTS",
    "CrashFailure",
    "CrashHarness",
    "CrashInvariantError",
    "CrashTestReport",
    "CrashTestSetupError",
    "Harness",
    "harness_name",
    "load_harness",
    "replay",
    "run_crashtest",
]
