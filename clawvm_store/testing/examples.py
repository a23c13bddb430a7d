"""Example agent harnesses for the crash-test kit: one that survives crashes, four that do not.

Each takes the database path (the kit's harness contract, see :mod:`clawvm_store.testing`), runs
a small deterministic agent with a fake model, and keeps its "world" (the files its tools touch)
in a directory next to the database, which :func:`observe_world` declares to the kit. Try them::

    clawvm crashtest clawvm_store.testing.examples:correct_agent --kills 20
    clawvm crashtest clawvm_store.testing.examples:memory_agent --kills 20       # caught
    clawvm crashtest clawvm_store.testing.examples:replaying_agent --kills 20    # caught
    clawvm crashtest clawvm_store.testing.examples:early_turn_agent --kills 20   # caught
    clawvm crashtest clawvm_store.testing.examples:direct_effect_agent --kills 20  # caught
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import InterruptedToolCall, NotFound
from ..session import Session
from ..store import Store
from .kit import case_dir

PROJECT = "demo"
SESSION = "agent-1"
TURNS = 4
BUDGET = 2000
SYSTEM = "You are a careful agent. Write one note per step."
BOOTSTRAP = "Work in small steps.\nRecord every step in notes.md before moving on."
RULES = "Never delete notes.md."
THINKING_ROUNDS = 30_000
"""How long the fake model "thinks" (SHA-256 rounds: about 20 ms a turn)."""


def fake_model(turn: int, prompt: str) -> str:
    """A deterministic stand-in for an LLM.

    The reply depends on the turn and the system prompt only, not on the rest of the prompt:
    the prompt after a restart legitimately differs (a compaction did or did not happen), and a
    turn redone after a crash must stage the same update under the same idempotency key.
    """
    system = prompt.splitlines()[0] if prompt else ""
    # A model takes time: a few milliseconds of deterministic work, so that wall-clock kills
    # land in the harness's own code about as often as in a real agent's model call.
    thought = f"{turn}:{system}".encode()
    for _ in range(THINKING_ROUNDS):
        thought = hashlib.sha256(thought).digest()
    return f"step {turn}: noted ({len(system.split())} words of instructions)"


def read_file(path: str) -> str:
    """A ``read`` tool: the file's text."""
    target = Path(path)
    return target.read_text(encoding="utf-8") if target.exists() else "(no file yet)"


def write_note(path: str, text: str) -> str:
    """A ``write`` tool: appends a line to the file (running it twice writes the line twice)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return f"wrote {len(text)} characters"


def world(db_path: str) -> Path:
    """The directory the example tools work in, beside the database (see ``case_dir``)."""
    directory = case_dir(db_path) / "world"
    directory.mkdir(exist_ok=True)
    return directory


def observe_world(db_path: str) -> dict[str, Any]:
    """The examples' world as the kit compares it: every file the tools wrote, with its text."""
    directory = case_dir(db_path) / "world"
    if not directory.is_dir():
        return {}
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(directory.iterdir())}


def _final_read(sess: Session, notes: str) -> None:
    """Look at the world one last time through a read tool (its result becomes evidence)."""
    sess.tool_call("read_file", {"path": notes}, run=read_file)


def _ensure_bootstrap(store: Store) -> None:
    """Write the bootstrap page once; a restarted run finds it there."""
    try:
        store.page("policy/agents", project=PROJECT)
    except NotFound:
        store.put("policy/agents", type="bootstrap", content=BOOTSTRAP, project=PROJECT)


def _write_once(sess: Session, notes: str, text: str, key: str) -> None:
    """Run the write tool once, even across a crash.

    The idempotency key makes a repeat of a finished call return its recorded result instead of
    running again. A call a crash interrupted is never re-run by the library
    (:class:`InterruptedToolCall`): the harness looks at the world and runs it again
    (``fresh=True``) only if its effect is not there.
    """
    args = {"path": notes, "text": text}
    try:
        sess.tool_call("write_note", args, run=write_note, effect="write", idempotency_key=key)
    except InterruptedToolCall:
        if text not in read_file(notes).splitlines():
            sess.tool_call(
                "write_note", args, run=write_note, effect="write", idempotency_key=key, fresh=True
            )


def correct_agent(db_path: str) -> None:
    """A resumable harness: everything it knows is in the store, and every step is idempotent.

    It continues from the session's committed turn counter, stages with idempotency keys (so a
    turn redone after a crash does not write twice), runs its write tool through the mediator
    with an idempotency key, and checks the world before re-running an interrupted write.
    """
    notes = str(world(db_path) / "notes.md")
    with Store.open(db_path) as store:
        _ensure_bootstrap(store)
        sess = store.session(SESSION, project=PROJECT)
        sess.stage("rules/notes", type="constraint", content=RULES, idempotency_key="rules")
        for turn in range(sess.turn, TURNS):
            prompt = sess.assemble(BUDGET, fixed=SYSTEM)
            reply = fake_model(turn, prompt.text)
            sess.stage(
                "conversation/main",
                type="conversation",
                op="append",
                content=f"user: do step {turn}\nassistant: {reply}",
                idempotency_key=f"conversation-{turn}",
            )
            sess.tool_call("read_file", {"path": notes}, run=read_file)
            _write_once(sess, notes, f"step {turn} done", f"note-{turn}")
            sess.stage(
                "plan/main",
                type="plan",
                op="append",
                content=f"Goal: {TURNS} steps\n- [x] step {turn}",
                idempotency_key=f"plan-{turn}",
            )
            sess.end_turn()
            if turn == 1:
                sess.compact()
        _final_read(sess, notes)
        sess.close()


correct_agent.observe = observe_world  # type: ignore[attr-defined]  # its world, for the kit


def memory_agent(db_path: str) -> None:
    """BROKEN: keeps its progress in memory and saves it only at exit.

    After a crash it does not know how far it got, so it starts over and runs its write tool
    again for steps that had already been done: the kit reports ``write_effects_exactly_once``
    (or ``harness_completes`` when the crash interrupted a write, which the library refuses to
    re-run blindly).
    """
    notes = str(world(db_path) / "notes.md")
    done: list[str] = []  # the mistake: the agent's state lives only here until exit
    with Store.open(db_path) as store:
        _ensure_bootstrap(store)
        sess = store.session(SESSION, project=PROJECT)
        for turn in range(TURNS):
            prompt = sess.assemble(BUDGET, fixed=SYSTEM)
            reply = fake_model(turn, prompt.text)
            sess.tool_call(
                "write_note",
                {"path": notes, "text": f"step {turn} done"},
                run=write_note,
                effect="write",
            )
            done.append(f"user: do step {turn}\nassistant: {reply}")
        sess.stage("conversation/main", type="conversation", op="append", content="\n".join(done))
        sess.close()


def replaying_agent(db_path: str) -> None:
    """BROKEN: resumes at the right turn but redoes it without idempotency keys.

    A crash after a stage was acknowledged and before the turn ended leaves that stage in the
    journal (recovery commits it); redoing the turn stages it again, so the conversation holds
    the turn twice: the kit reports ``final_state_matches_uncrashed``.
    """
    notes = str(world(db_path) / "notes.md")
    with Store.open(db_path) as store:
        _ensure_bootstrap(store)
        sess = store.session(SESSION, project=PROJECT)
        for turn in range(sess.turn, TURNS):
            prompt = sess.assemble(BUDGET, fixed=SYSTEM)
            reply = fake_model(turn, prompt.text)
            sess.stage(
                "conversation/main",
                type="conversation",
                op="append",
                content=f"user: do step {turn}\nassistant: {reply}",
            )
            _write_once(sess, notes, f"step {turn} done", f"note-{turn}")
            sess.end_turn()
        sess.close()


def early_turn_agent(db_path: str) -> None:
    """BROKEN: ends its turn (the turn counter advances) before it runs that turn's write tool.

    Killed between the two, the restarted run resumes at the next turn and skips the write:
    its effect is lost. The kit reports ``write_effects_exactly_once`` (the write ran 0 times),
    and, through the final read and the declared world, ``evidence_matches_uncrashed`` and
    ``world_matches_uncrashed``.
    """
    notes = str(world(db_path) / "notes.md")
    with Store.open(db_path) as store:
        _ensure_bootstrap(store)
        sess = store.session(SESSION, project=PROJECT)
        for turn in range(sess.turn, TURNS):
            prompt = sess.assemble(BUDGET, fixed=SYSTEM)
            reply = fake_model(turn, prompt.text)
            sess.stage(
                "conversation/main",
                type="conversation",
                op="append",
                content=f"user: do step {turn}\nassistant: {reply}",
                idempotency_key=f"conversation-{turn}",
            )
            sess.end_turn()  # the mistake: the turn is over before its effect happened
            _write_once(sess, notes, f"step {turn} done", f"note-{turn}")
        _final_read(sess, notes)
        sess.close()


early_turn_agent.observe = observe_world  # type: ignore[attr-defined]


def direct_effect_agent(db_path: str) -> None:
    """BROKEN: performs its side effect directly (not through ``tool_call``), then ends the turn.

    Killed between the two, the restarted run redoes the turn and performs the effect again.
    The kit cannot see an effect the library did not mediate; it sees the damage through the
    final read (``evidence_matches_uncrashed``) and the declared world
    (``world_matches_uncrashed``).
    """
    notes = str(world(db_path) / "notes.md")
    with Store.open(db_path) as store:
        _ensure_bootstrap(store)
        sess = store.session(SESSION, project=PROJECT)
        for turn in range(sess.turn, TURNS):
            prompt = sess.assemble(BUDGET, fixed=SYSTEM)
            reply = fake_model(turn, prompt.text)
            sess.stage(
                "conversation/main",
                type="conversation",
                op="append",
                content=f"user: do step {turn}\nassistant: {reply}",
                idempotency_key=f"conversation-{turn}",
            )
            write_note(notes, f"step {turn} done")  # the mistake: no ledger, no idempotency
            sess.end_turn()
        _final_read(sess, notes)
        sess.close()


direct_effect_agent.observe = observe_world  # type: ignore[attr-defined]
