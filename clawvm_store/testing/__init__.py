"""Crash-test your own agent harness: real SIGKILLs at seeded instants, then the invariants.

**The harness contract.** A harness is an importable callable ``main(db_path: str) -> None``
that opens ``Store.open(db_path)`` itself and drives its agent (sessions, stages, tool calls,
boundaries) to the end. It must be

* *resumable*: run again on the same database after a crash, it continues from what it
  committed (the session's ``turn``, its pages, the tool ledger) and finishes; and
* *deterministic*: a fake model and fixed inputs, so every run does the same library
  operations. Files it touches belong in :func:`case_dir` ``(db_path)`` (beside an SQLite
  database): the kit starts every case in an empty directory at the same path.

It prints nothing special: acknowledgements are captured by the library itself.

**Its world, declared.** What a harness changes outside the store (files, a table of its
own) the kit cannot see unless told: ``observe(db_path)`` returns it as JSON-able values
(``run_crashtest(main, observe=fn)``, ``crash_harness.run(main, observe=fn)``, ``clawvm
crashtest MODULE:FN --observe MODULE:FN``, or an ``observe`` attribute of the harness), and
after every restart it must equal the uncrashed run's. The last result of every read tool is
compared too (``evidence_matches_uncrashed``, opt out with ``compare_evidence=False``), since
a final read through ``tool_call`` is how a harness most often looks at its world.

**What a campaign does.** First an uncrashed run, which counts the library's crash points
(three per write transaction: before ``BEGIN``, before ``COMMIT``, after ``COMMIT``), times the
run and gives the baseline (each write tool call, the final pages, the last tool evidence, the
world). Then ``kills`` kills are drawn from the seed, in ``mode`` ``points`` (at crash points,
with ``random.Random(seed)``), ``time`` (at wall-clock instants over the run's duration: a
timer in the child kills it wherever it is, in the harness's own code too) or ``both`` (the
default, half and half). For each, on a fresh database, a forked child runs the harness and is
killed with ``SIGKILL``; the kit recovers a copy of the database and checks the invariants; it
restarts the harness on the crashed database (whose own ``Store.open`` now recovers) and runs it
to the end; and it checks the invariants again, plus those that compare with the uncrashed run.
A crash-point case reproduces exactly, a time case as far as timing allows: :func:`replay`,
``crash_harness.replay(...)`` or ``clawvm crashtest ... --kill-at K`` / ``--kill-after S``.
With ``postgres=URL`` (``--postgres URL``) every case runs on a fresh PostgreSQL database.

**Acknowledgements.** In the child, the library appends one JSON line per acknowledged stage,
put, boundary, tool execution/result and LangGraph checkpoint or pending write
(``ClawVMSaver``) to a file just before it returns to the caller
(:mod:`clawvm_store._crashpoints`); a write killed before its line is in flight, allowed to be
present or absent, never half. The invariants are in :data:`INVARIANTS`.

In pytest (the plugin is registered on install)::

    def test_my_agent_survives(crash_harness):
        crash_harness.run(my_agent_main, kills=50, observe=my_world)

From the shell: ``clawvm crashtest mypackage.agent:main --kills 50 --seed 0``.
"""

from __future__ import annotations

from .invariants import INVARIANTS
from .kit import (
    MODES,
    CaseRecord,
    CrashFailure,
    CrashHarness,
    CrashInvariantError,
    CrashTestReport,
    CrashTestSetupError,
    Harness,
    Mode,
    Observe,
    case_dir,
    harness_name,
    load_harness,
    replay,
    run_crashtest,
)

__all__ = [
    "INVARIANTS",
    "MODES",
    "CaseRecord",
    "CrashFailure",
    "CrashHarness",
    "CrashInvariantError",
    "CrashTestReport",
    "CrashTestSetupError",
    "Harness",
    "Mode",
    "Observe",
    "case_dir",
    "harness_name",
    "load_harness",
    "replay",
    "run_crashtest",
]
