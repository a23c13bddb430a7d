"""The invariants the crash-test kit checks, each with the name a failure report uses.

Every check reads the database through a plain read transaction and the acknowledgements the
library wrote (see :mod:`clawvm_store._crashpoints`); none trusts the harness's own output.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select, text

from .. import schema as t
from .._crashpoints import digest
from ..checkpoints import checkpoint_row_problem, write_row_problem
from ..pages import POLICIES, Fidelity, PageType
from ..segments import read_text, whole_texts
from ..store import Store

INVARIANTS: dict[str, str] = {
    "harness_completes": (
        "the harness runs to its end: without a crash, and again after a crash on the same "
        "database (it must be resumable)"
    ),
    "deterministic_harness": (
        "every run does the same library operations as the first (a fake model, fixed inputs), "
        "so a kill point names the same instant on every run and a failure can be replayed"
    ),
    "acked_stages_present": (
        "every acknowledged stage is in the journal with its exact content, and recovery "
        "resolved it: committed into its page (the version holds exactly what the stage "
        "wrote) or rejected with a reason code; never lost, discarded or left staged"
    ),
    "acked_puts_present": "every acknowledged put is there at its version, with its exact content",
    "acked_boundaries_kept": (
        "every acknowledged boundary's event is recorded, and the entries it reported as "
        "committed (at their versions) or rejected (with their reasons) are still so"
    ),
    "nothing_half_applied": (
        "no journal entry left staged or committed after recovery; every applied entry made "
        "exactly one page version and every version came from one; page heads and fidelities "
        "complete"
    ),
    "check_clean": "store.check() finds nothing",
    "recovery_idempotent": "a second store.recover() finds nothing to do and changes no row",
    "tool_calls_paired": (
        "every tool call has exactly one result (finished, failed or an explicit interrupted) "
        "whose evidence page names the call; no call id twice; acknowledged results unchanged"
    ),
    "acked_checkpoints_readable": (
        "every acknowledged LangGraph checkpoint and pending write (ClawVMSaver.put and "
        "put_writes) is there after the crash, intact (its checksum verifies) and with the "
        "acknowledged content, unless an acknowledged or in-flight deletion may have removed it"
    ),
    "write_effects_exactly_once": (
        "every write-effect tool call of the uncrashed run (the same tool and arguments, or the "
        "same idempotency key) runs exactly once across the crash and the restart: never again "
        "after it was acknowledged as run (a doubled effect), never skipped (a lost effect); a "
        "run a kill cut short inside the tool counts as perhaps once"
    ),
    "floor_after_restart": (
        "the first assembly after the restart holds every bootstrap and constraint page at or "
        "above its floor fidelity"
    ),
    "final_state_matches_uncrashed": (
        "after the restart ran to its end, every page (tool evidence aside) has the content it "
        "has after an uncrashed run: nothing lost, nothing written twice"
    ),
    "evidence_matches_uncrashed": (
        "after the restart, the last result of every read-effect tool call (tool and arguments, "
        "compared tool by tool in call order) is the uncrashed run's: what the harness last "
        "saw of its world is the same (opt out with compare_evidence=False / --no-evidence)"
    ),
    "world_matches_uncrashed": (
        "what the harness declares it changes outside the store (observe(db_path): files, "
        "tables) is, after the restart, exactly what it is after an uncrashed run"
    ),
}
"""Every invariant's name and what it means (the README lists them too)."""

_DIGEST_TABLES = (
    ("pages", "id"),
    ("page_versions", "page_id, version"),
    ("representations", "page_id, version, fidelity"),
    ("journal", "lsn"),
    ("journal_content", "lsn"),
    ("lifecycle_events", "id"),
    ("sessions", "id"),
    ("tool_calls", "id"),
    ("faults", "id"),
)
ACK_WRITES = ("stage", "put", "boundary", "tool_finish", "lg_checkpoint", "lg_writes")
"""Acknowledgement kinds that count as acknowledged writes in the summary."""


@dataclass
class Findings:
    """What one round of checks found: broken invariants with details, and how many ran."""

    broken: dict[str, str] = field(default_factory=dict)
    checked: Counter[str] = field(default_factory=Counter)

    def check(self, name: str, problems: Sequence[str]) -> None:
        """Count one evaluation of ``name``; keep its first problems if it failed."""
        self.checked[name] += 1
        if problems and name not in self.broken:
            shown = "; ".join(problems[:3])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            self.broken[name] = shown + more


def state_digest(store: Store) -> str:
    """A hash of every row recovery may touch (to prove a second recovery changes nothing)."""
    hasher = hashlib.sha256()
    with store.db.transaction(write=False) as conn:
        for table, order in _DIGEST_TABLES:
            hasher.update(table.encode())
            for row in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {order}"):
                hasher.update(repr(tuple(row)).encode())
    return hasher.hexdigest()


def recover_twice(store: Store, findings: Findings) -> None:
    """Recover, then recover again: the second must report nothing and change no row."""
    store.recover()
    before = state_digest(store)
    again = store.recover()
    after = state_digest(store)
    problems = []
    if again.changed:
        problems.append(f"the second recovery did work: {again}")
    if before != after:
        problems.append("the second recovery changed rows")
    findings.check("recovery_idempotent", problems)


def _ident(row: Any) -> tuple[str, str, str]:
    return (row.project, row.session_id if row.scope == "session" else "", row.key)


def check_state(store: Store, acks: Iterable[Mapping[str, Any]], findings: Findings) -> None:
    """Every invariant about the recovered database and the acknowledged operations."""
    acks = list(acks)
    with store.db.transaction(write=False) as conn:
        journal = {
            row.lsn: row
            for row in conn.exec_driver_sql(
                "SELECT lsn, session_id, project, key, op, scope, payload, state, reason,"
                " version, event_id FROM journal"
            )
        }
        # Full texts through the append layout (an append stores only its segment).
        texts = whole_texts(conn)
        versions: dict[tuple[Any, ...], Any] = {
            (row.project, row.session_id, row.key, row.version): SimpleNamespace(
                **{**row._mapping, "content": texts.get((row.page_id, row.version))}
            )
            for row in conn.exec_driver_sql(
                "SELECT p.project, p.session_id, p.key, pv.page_id, pv.version, pv.type,"
                " pv.deleted, pv.lsn, pv.provenance, r.content"
                " FROM page_versions pv JOIN pages p ON p.id = pv.page_id"
                " LEFT JOIN representations r ON r.page_id = pv.page_id"
                " AND r.version = pv.version AND r.fidelity = 'full'"
            )
        }
        heads = list(conn.exec_driver_sql("SELECT id, key, version FROM pages"))
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
        calls = list(
            conn.exec_driver_sql(
                "SELECT id, session_id, project, call_id, name, state, result_key, result_version"
                " FROM tool_calls ORDER BY id"
            )
        )

    def content_of(ident: tuple[str, str, str], version: int) -> str | None:
        row = versions.get((*ident, version))
        return None if row is None or row.deleted else row.content

    # -- acknowledged stages -------------------------------------------------------------------
    problems: list[str] = []
    for ack in acks:
        if ack["k"] != "stage":
            continue
        lsn, key = ack["lsn"], ack["key"]
        row = journal.get(lsn)
        if row is None:
            problems.append(f"stage lsn {lsn} of {key!r} is missing from the journal")
            continue
        payload = json.loads(row.payload)
        structured = payload.get("structured")
        if (
            row.key != key
            or _content_digest(payload) != ack["content"]
            or digest(structured) != ack["structured"]
        ):
            problems.append(f"stage lsn {lsn} of {key!r} holds other content than was staged")
            continue
        if row.state == "quarantined":
            why = (
                "discarded by a boundary that skipped writeback"
                if row.reason == "DISCARDED"
                else row.reason
            )
            problems.append(f"stage lsn {lsn} of {key!r} was lost: {why}")
            continue
        if row.state in ("staged", "committed"):
            problems.append(f"stage lsn {lsn} of {key!r} is still {row.state} after recovery")
            continue
        if row.state == "rejected":
            if not row.reason:
                problems.append(f"stage lsn {lsn} of {key!r} was rejected without a reason code")
            continue
        ident = _ident(row)
        got = versions.get((*ident, row.version))
        if got is None or got.lsn != lsn:
            problems.append(
                f"stage lsn {lsn} of {key!r} is applied but not at version {row.version}"
            )
            continue
        added = _content_digest(payload)  # what the stage brought, by its hash
        if ack["op"] == "delete":
            if not got.deleted:
                problems.append(f"delete lsn {lsn} of {key!r} did not delete the page")
            continue
        previous = (
            content_of(ident, row.version - 1) if ack["op"] != "set" and row.version > 1 else None
        )
        text = got.content
        if previous is None or added is None:
            held = added is None or digest(text) == added
            if added is None and previous is not None:
                held = text == previous
        else:
            held = isinstance(text, str) and (
                text.startswith(f"{previous}\n") and digest(text[len(previous) + 1 :]) == added
            )
        if not held:
            problems.append(
                f"stage lsn {lsn} of {key!r}: version {row.version} does not hold what was staged"
            )
    findings.check("acked_stages_present", problems)

    # -- acknowledged puts ---------------------------------------------------------------------
    problems = []
    for ack in acks:
        if ack["k"] != "put":
            continue
        ident = (ack["project"], ack["session"] or "", ack["key"])
        row = versions.get((*ident, ack["version"]))
        if row is None:
            problems.append(f"put of {ack['key']!r} version {ack['version']} is missing")
        elif bool(row.deleted) != bool(ack["deleted"]) or (
            not row.deleted and digest(row.content) != ack["content"]
        ):
            problems.append(f"put of {ack['key']!r} version {ack['version']} has other content")
    findings.check("acked_puts_present", problems)

    # -- acknowledged boundaries ---------------------------------------------------------------
    problems = []
    for ack in acks:
        if ack["k"] != "boundary":
            continue
        event = events.get(ack["event"])
        if event is None or (event.session_id, event.boundary) != (ack["session"], ack["boundary"]):
            problems.append(
                f"{ack['boundary']} event {ack['event']} of {ack['session']} is missing"
            )
            continue
        for lsn in ack["committed"]:
            row = journal.get(lsn)
            version = ack["versions"].get(str(lsn))
            if row is None or (row.state, row.version, row.event_id) != (
                "applied",
                version,
                ack["event"],
            ):
                problems.append(f"lsn {lsn}, committed by {ack['boundary']}, is no longer applied")
        for lsn, reason in ack["rejected"]:
            row = journal.get(lsn)
            if row is None or (row.state, row.reason) != ("rejected", reason):
                problems.append(f"lsn {lsn}, rejected ({reason}) by {ack['boundary']}, changed")
    findings.check("acked_boundaries_kept", problems)

    # -- nothing half-applied ------------------------------------------------------------------
    problems = []
    left = Counter(row.state for row in journal.values() if row.state in ("staged", "committed"))
    for state, count in sorted(left.items()):
        problems.append(f"{count} journal entries left {state}")
    by_lsn: dict[int, list[Any]] = {}
    for row in versions.values():
        by_lsn.setdefault(row.lsn, []).append(row)
    for lsn, row in sorted(journal.items()):
        produced = [
            version
            for version in by_lsn.get(lsn, [])
            if (version.project, version.session_id, version.key) == _ident(row)
        ]
        if row.state == "applied" and len(produced) != 1:
            problems.append(f"lsn {lsn} is applied but made {len(produced)} page versions")
        elif row.state != "applied" and produced:
            problems.append(f"lsn {lsn} is {row.state} but made a page version")
    per_page: dict[int, list[int]] = {}
    for row in versions.values():
        per_page.setdefault(row.page_id, []).append(row.version)
        wanted = 0 if row.deleted else len(POLICIES[PageType(row.type)].ladder)
        if rep_counts.get((row.page_id, row.version), 0) != wanted:
            problems.append(f"{row.key}@{row.version} lacks fidelities")
    for head in heads:
        if sorted(per_page.get(head.id, [])) != list(range(1, head.version + 1)):
            problems.append(f"page {head.key!r}: head version {head.version} without its history")
    findings.check("nothing_half_applied", problems)

    # -- tool calls ------------------------------------------------------------------------------
    problems = []
    seen: set[tuple[str, str]] = set()
    by_id = {row.id: row for row in calls}
    for row in calls:
        if (row.session_id, row.call_id) in seen:
            problems.append(f"call {row.call_id} of {row.session_id} appears twice")
        seen.add((row.session_id, row.call_id))
        if row.state not in ("finished", "failed", "interrupted"):
            problems.append(f"call {row.call_id} ({row.name}) has no result (state {row.state})")
            continue
        result = versions.get((row.project, row.session_id, row.result_key, row.result_version))
        provenance = json.loads(result.provenance) if result and result.provenance else {}
        if result is None or provenance.get("tool_call") != row.id:
            problems.append(f"call {row.call_id} ({row.name}): its result page is not its own")
    for ack in acks:
        if ack["k"] != "tool_finish":
            continue
        row = by_id.get(ack["call"])
        if row is None or (row.state, row.result_key, row.result_version) != (
            ack["state"],
            ack["key"],
            ack["version"],
        ):
            problems.append(f"the acknowledged result of call row {ack['call']} changed")
    findings.check("tool_calls_paired", problems)

    # -- check() ---------------------------------------------------------------------------------
    report = store.check()
    findings.check(
        "check_clean", [f"{finding.code}: {finding.message}" for finding in report.findings]
    )


WriteIdentity = tuple[str, str, str, str]
"""A write call's identity: (session, tool name, ``key`` or ``sig``, idempotency key or signature)."""


@dataclass
class WriteRuns:
    """How often one write call ran: to its end (``ran``), or cut short by a kill inside it."""

    ran: int = 0
    in_flight: int = 0


def write_runs(acks: Iterable[Mapping[str, Any]]) -> dict[WriteIdentity, WriteRuns]:
    """Every write-effect tool call's runs, by identity (its idempotency key, when it has one).

    ``tool_exec`` is written just before the tool runs and ``tool_ran`` just after it returns:
    an exec without its ran is a run a kill cut short inside the tool, whose effect is unknown.
    """
    runs: dict[WriteIdentity, WriteRuns] = {}
    started: dict[tuple[str, int], WriteIdentity] = {}
    for ack in acks:
        if ack["k"] == "tool_exec" and ack["effect"] == "write":
            key = ack.get("idempotency_key")
            identity = (
                (ack["session"], ack["name"], "key", key)
                if key is not None
                else (ack["session"], ack["name"], "sig", ack["signature"])
            )
            runs.setdefault(identity, WriteRuns()).in_flight += 1
            # Call rows are unique per database, and the database is the same across the runs
            # of one case: (session, row id) names one execution.
            started[(ack["session"], ack["call"])] = identity
        elif ack["k"] == "tool_ran":
            begun = started.pop((ack["session"], ack["call"]), None)
            if begun is not None:
                runs[begun].in_flight -= 1
                runs[begun].ran += 1
    return runs


def write_executions(acks: Iterable[Mapping[str, Any]]) -> Counter[WriteIdentity]:
    """How often each write call ran to its end (the uncrashed run's baseline)."""
    return Counter(
        {identity: counted.ran for identity, counted in write_runs(acks).items() if counted.ran}
    )


def _times(count: int) -> str:
    return f"{count} time{'s' if count != 1 else ''}"


def check_write_effects(
    acks: Iterable[Mapping[str, Any]],
    baseline: Mapping[WriteIdentity, int],
    findings: Findings,
) -> None:
    """Every write call of the uncrashed run ran exactly once across the crash and restart."""
    # Signatures hash the arguments, which may name paths under the kit's work directory: the
    # report names the tool, its idempotency key and the counts, so a replay elsewhere reports
    # the same text.
    runs = write_runs(acks)
    doubled: Counter[tuple[str, str, int, int]] = Counter()
    lost: list[str] = []
    for identity in sorted(set(runs) | set(baseline)):
        session, name, kind, value = identity
        counted = runs.get(identity, WriteRuns())
        wanted = baseline.get(identity, 0)
        if counted.ran > wanted:
            doubled[(session, name, counted.ran, wanted)] += 1
        elif counted.ran + counted.in_flight < wanted:
            key = f", idempotency key {value!r}" if kind == "key" else ""
            cut = f" (and {counted.in_flight} run a kill cut short)" if counted.in_flight else ""
            lost.append(
                f"write tool {name!r} (session {session}{key}) ran {_times(counted.ran)}{cut} "
                f"across the crash and the restart; an uncrashed run runs it {_times(wanted)}: "
                "its effect is lost"
            )
    problems = [
        f"write tool {name!r} (session {session}) ran {count} times with the same arguments "
        f"across the crash and the restart; an uncrashed run runs it {_times(wanted)}"
        + (f" ({calls} such calls)" if calls > 1 else "")
        for (session, name, count, wanted), calls in sorted(doubled.items())
    ]
    findings.check("write_effects_exactly_once", problems + lost)


EvidenceKey = tuple[str, str, str]
"""A read call's identity: (session, tool name, signature)."""


def final_evidence(store: Store) -> dict[EvidenceKey, str]:
    """The last result of every read-effect call, by (session, tool, signature), in call order.

    Ordered by each call's first appearance, so a report walks the tools as the harness called
    them. Interrupted calls have no result and do not count.
    """
    with store.db.transaction(write=False) as conn:
        rows = conn.execute(
            text(
                "SELECT c.session_id, c.name, c.signature, r.content FROM tool_calls c"
                " JOIN pages p ON p.project = c.project AND p.session_id = c.session_id"
                " AND p.key = c.result_key"
                " JOIN representations r ON r.page_id = p.id AND r.version = c.result_version"
                " AND r.fidelity = 'full'"
                " WHERE c.effect = 'read' AND c.state IN ('finished', 'failed') ORDER BY c.id"
            )
        ).all()
    first: dict[EvidenceKey, int] = {}
    last: dict[EvidenceKey, str] = {}
    for position, (session, name, signature, content) in enumerate(rows):
        first.setdefault((session, name, signature), position)
        last[(session, name, signature)] = content or ""
    return {key: last[key] for key in sorted(last, key=lambda key: first[key])}


def _first_difference(mine: str, theirs: str) -> str:
    """``5 lines against 4, first difference at line 5: 'step 3 done'`` (or the end)."""
    ours, other = mine.splitlines(), theirs.splitlines()
    where = next(
        (i for i, (a, b) in enumerate(zip(ours, other, strict=False)) if a != b),
        min(len(ours), len(other)),
    )
    line = ours[where] if where < len(ours) else "(end)"
    return (
        f"{len(ours)} lines against {len(other)}, first difference at line {where + 1}: "
        f"{_clip(line)!r}"
    )


def _clip(value: str, width: int = 120) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def check_evidence(
    got: Mapping[EvidenceKey, str], wanted: Mapping[EvidenceKey, str], findings: Findings
) -> None:
    """The last result of every read call equals the uncrashed run's, tool by tool."""
    problems = []
    # The uncrashed run's order first, then calls only the crashed run made.
    for key in [*wanted, *(key for key in got if key not in wanted)]:
        session, name, _ = key
        what = f"read tool {name!r} (session {session})"
        if key not in got:
            problems.append(f"{what}: never ran after the crash (the uncrashed run calls it)")
        elif key not in wanted:
            problems.append(
                f"{what}: ran only after the crash, with arguments no uncrashed run uses"
            )
        elif got[key] != wanted[key]:
            problems.append(
                f"{what}: its last result differs from the uncrashed run's: "
                + _first_difference(got[key], wanted[key])
            )
    findings.check("evidence_matches_uncrashed", problems)


def _world_difference(got: Any, wanted: Any, path: str = "") -> str | None:
    """Where two observations differ first, as ``at ['notes.md']: ...``; ``None`` if equal."""
    where = path or "the top level"
    if isinstance(got, dict) and isinstance(wanted, dict):
        for key in sorted(set(got) | set(wanted), key=str):
            inner = f"{path}[{key!r}]"
            if key not in got:
                return f"at {inner}: missing (the uncrashed run has it)"
            if key not in wanted:
                return f"at {inner}: present only after the crash"
            found = _world_difference(got[key], wanted[key], inner)
            if found:
                return found
        return None
    if isinstance(got, list) and isinstance(wanted, list):
        for index, (a, b) in enumerate(zip(got, wanted, strict=False)):
            found = _world_difference(a, b, f"{path}[{index}]")
            if found:
                return found
        if len(got) != len(wanted):
            return f"at {where}: {len(got)} items against {len(wanted)}"
        return None
    if got == wanted and type(got) is type(wanted):
        return None
    if isinstance(got, str) and isinstance(wanted, str):
        return f"at {where}: " + _first_difference(got, wanted)
    return f"at {where}: {_clip(repr(got))} against {_clip(repr(wanted))}"


def check_world(got: Any, wanted: Any, findings: Findings) -> None:
    """The harness's declared world after the restart equals the uncrashed run's."""
    difference = _world_difference(got, wanted)
    findings.check(
        "world_matches_uncrashed",
        [f"the world differs from the uncrashed run's {difference}"] if difference else [],
    )


LG_ACKS = ("lg_checkpoint", "lg_writes", "lg_forget")


def check_checkpoints(
    store: Store,
    acks: Sequence[Mapping[str, Any]],
    killed_runs: Iterable[int],
    findings: Findings,
) -> None:
    """Every acknowledged LangGraph checkpoint and pending write is there, intact, as acked.

    ``acks`` carry the index of the run that wrote them (``run``); ``killed_runs`` are the runs
    a kill ended, whose last write may have been in flight. A put replaces a checkpoint with the
    same id and a special channel's write replaces its slot: the row must hold the last
    acknowledgement, unless a write in flight since may have replaced it. An ordinary write
    keeps its slot's first value: the first acknowledgement, unless an earlier run was killed
    with a write to that slot in flight. Checked only for harnesses that use ClawVMSaver.
    """
    if not any(ack["k"] in LG_ACKS for ack in acks):
        return
    killed = set(killed_runs)
    # slot -> (its acknowledgements' checksums in order, run of the first, run of the last)
    checkpoints: dict[tuple[str, str, str], tuple[list[str], int, int, str | None]] = {}
    writes: dict[tuple[str, str, str, str, int], tuple[list[str], int, int, bool]] = {}
    for ack in acks:
        run = int(ack.get("run", 0))
        if ack["k"] == "lg_checkpoint":
            slot = (ack["thread"], ack["ns"], ack["checkpoint"])
            sums, first_run, _, _ = checkpoints.get(slot, ([], run, run, None))
            checkpoints[slot] = ([*sums, ack["checksum"]], first_run, run, ack.get("run_id"))
        elif ack["k"] == "lg_writes":
            for idx, _channel, checksum in ack["writes"]:
                key = (ack["thread"], ack["ns"], ack["checkpoint"], ack["task"], int(idx))
                sums, first_run, _, _ = writes.get(key, ([], run, run, ack["special"]))
                writes[key] = ([*sums, checksum], first_run, run, bool(ack["special"]))
        elif ack["k"] == "lg_forget":
            threads, runs = set(ack.get("threads", ())), set(ack.get("runs", ()))
            gone = {
                slot
                for slot, (_, _, _, run_id) in checkpoints.items()
                if slot[0] in threads or (run_id is not None and run_id in runs)
            }
            checkpoints = {slot: info for slot, info in checkpoints.items() if slot not in gone}
            writes = {
                key: info
                for key, info in writes.items()
                if key[0] not in threads and key[:3] not in gone
            }
    with store.db.transaction(write=False) as conn:
        stored_checkpoints = {
            (row.thread_id, row.checkpoint_ns, row.checkpoint_id): row
            for row in conn.execute(select(t.lg_checkpoints))
        }
        stored_writes = {
            (row.thread_id, row.checkpoint_ns, row.checkpoint_id, row.task_id, row.idx): row
            for row in conn.execute(select(t.lg_writes))
        }

    def replaced_later(last_run: int) -> bool:
        return any(run >= last_run for run in killed)

    problems: list[str] = []
    for slot, (sums, _, last_run, _) in sorted(checkpoints.items()):
        name = "/".join(part for part in slot if part)
        row = stored_checkpoints.get(slot)
        if row is None:
            problems.append(f"acknowledged checkpoint {name} is missing")
        elif problem := checkpoint_row_problem(row):
            problems.append(f"acknowledged checkpoint {name} fails its check: {problem}")
        elif row.checksum != sums[-1] and not replaced_later(last_run):
            problems.append(f"acknowledged checkpoint {name} holds other content than was put")
    for key, (sums, first_run, last_run, special) in sorted(writes.items()):
        name = "/".join(part for part in key[:3] if part) + f" task {key[3]} #{key[4]}"
        row = stored_writes.get(key)
        if row is None:
            problems.append(f"acknowledged pending write {name} is missing")
        elif problem := write_row_problem(row):
            problems.append(f"acknowledged pending write {name} fails its check: {problem}")
        elif special:
            if row.checksum != sums[-1] and not replaced_later(last_run):
                problems.append(f"acknowledged pending write {name} holds another value")
        elif row.checksum != sums[0] and not any(run < first_run for run in killed):
            problems.append(f"acknowledged pending write {name} holds another value")
    findings.check("acked_checkpoints_readable", problems)


def _content_digest(payload: Mapping[str, Any]) -> str | None:
    """The SHA-256 of a journal entry's content, kept whole or (once applied) as its hash."""
    content = payload.get("content")
    if content is None and isinstance(payload.get("content_sha256"), str):
        return str(payload["content_sha256"])
    return digest(content)


def final_pages(store: Store) -> dict[tuple[str, str, str], tuple[str, bool, str]]:
    """Every page's head (tool evidence aside): (type, deleted, full content)."""
    with store.db.transaction(write=False) as conn:
        rows = conn.exec_driver_sql(
            "SELECT p.project, p.session_id, p.key, p.type, p.deleted, p.id, p.version FROM pages p"
            " WHERE p.type != 'evidence'"
        ).all()
        texts = {
            (row[5], row[6]): read_text(conn, row[5], row[6], "full") if not row[4] else None
            for row in rows
        }
    return {
        (row[0], row[1], row[2]): (row[3], bool(row[4]), texts[(row[5], row[6])] or "")
        for row in rows
    }


def check_final_state(
    got: Mapping[tuple[str, str, str], tuple[str, bool, str]],
    wanted: Mapping[tuple[str, str, str], tuple[str, bool, str]],
    findings: Findings,
) -> None:
    """The pages after crash + restart equal those of the uncrashed run."""
    problems = []
    for ident in sorted(set(got) | set(wanted)):
        name = "/".join(part for part in ident if part)
        if ident not in got:
            problems.append(f"page {name} is missing (the uncrashed run has it)")
        elif ident not in wanted:
            problems.append(f"page {name} exists only after the crash")
        elif got[ident] != wanted[ident]:
            mine, theirs = got[ident][2].splitlines(), wanted[ident][2].splitlines()
            where = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
                min(len(mine), len(theirs)),
            )
            line = mine[where] if where < len(mine) else "(end)"
            problems.append(
                f"page {name} differs from the uncrashed run's: {len(mine)} lines against "
                f"{len(theirs)}, first difference at line {where + 1}: {line!r}"
            )
    findings.check("final_state_matches_uncrashed", problems)


def floor_pages(store: Store) -> tuple[int, dict[str, list[tuple[str, str]]]]:
    """The last assembly id, and per session the live bootstrap/constraint pages it must see."""
    with store.db.transaction(write=False) as conn:
        last = conn.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM assemblies").scalar()
        sessions = conn.exec_driver_sql("SELECT id, project FROM sessions").all()
        pages = conn.exec_driver_sql(
            "SELECT project, session_id, key, type FROM pages"
            " WHERE deleted = 0 AND type IN ('bootstrap', 'constraint')"
        ).all()
    required = {
        session_id: sorted(
            (key, kind)
            for page_project, page_session, key, kind in pages
            if page_project == project and page_session in ("", session_id)
        )
        for session_id, project in sessions
    }
    return int(last or 0), required


def check_floor_after_restart(
    store: Store,
    after_id: int,
    required: Mapping[str, Sequence[tuple[str, str]]],
    findings: Findings,
) -> None:
    """The first assembly of each session after the restart holds its floor pages."""
    with store.db.transaction(write=False) as conn:
        firsts = conn.execute(
            text(
                "SELECT session_id, MIN(id) FROM assemblies WHERE id > :after GROUP BY session_id"
            ),
            {"after": after_id},
        ).all()
        problems = []
        for session_id, assembly_id in sorted(firsts):
            resident = {
                key: fidelity
                for key, fidelity in conn.execute(
                    # The whole prompt: assembly_items holds only what changed since the
                    # previous assembly (unless this one is a snapshot).
                    text(
                        "SELECT key, fidelity FROM resident_by_turn WHERE assembly_id = :id"
                        " AND fidelity IS NOT NULL"
                    ),
                    {"id": assembly_id},
                )
            }
            for key, kind in required.get(session_id, ()):
                floor = POLICIES[PageType(kind)].floor
                held = resident.get(key)
                if held is None or Fidelity(held).rank > floor.rank:
                    problems.append(
                        f"{kind} page {key!r} is {'absent' if held is None else held} in the "
                        f"first assembly of {session_id} after the restart (floor {floor.value})"
                    )
    if firsts:
        findings.check("floor_after_restart", problems)
