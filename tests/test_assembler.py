"""Prompt assembly (DESIGN 1.2, 1.3 and 5): the budget, the floor, ranking, records, margins.

The central property is checked with Hypothesis over random page sets: a feasible assembly's
text, tokenized as one string, never exceeds the budget; every required page (hard pins,
bootstrap, constraint, demanded) is present at or above its type's floor; when the floor cannot
fit, the caller is told page by page (``InsufficientBudget``) and nothing is silently dropped.
The rest pins down exact outcomes: the shortfall report and its fault row, the floor after
compaction and reset, byte-identical determinism, section order, phase-2 ranking, the assembly
records (and the SQL that answers "what did session S see at turn N"), the learned safety margin,
measured hysteresis, bad input and the ``clawvm assemble`` command.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clawvm_store as cvm
from clawvm_store.assembler import (
    REGION,
    Assembler,
    Assembly,
    Candidate,
    choose,
    item_cost,
)
from clawvm_store.cli import app
from clawvm_store.pages import POLICIES, Fidelity, PageType, Pin, Scope
from clawvm_store.representations import parse_pointer
from clawvm_store.tokens import load_encoding

URI: dict[str, Any] = {"uri": "file:///x"}
FIXED_CLOCK = "2026-01-01T00:00:00.000000+00:00"
ENCODING = load_encoding("cl100k_base")  # an exact count that bypasses the store's cache
REQUIRED_TYPES = (PageType.BOOTSTRAP, PageType.CONSTRAINT)


def exact_tokens(text: str) -> int:
    return len(ENCODING.encode_ordinary(text))


def floor_of(page_type: PageType) -> Fidelity:
    return POLICIES[page_type].floor


def at_or_above_floor(page_type: PageType, fidelity: Fidelity) -> bool:
    return fidelity.rank <= floor_of(page_type).rank


@dataclass(frozen=True)
class Spec:
    """One page to write: what the generator and the fixed workloads hand to :func:`write`."""

    key: str
    type: PageType
    content: str
    pin: str | None = None
    priority: float | None = None
    expected_version: int | None = None


def write(sess: cvm.Session, specs: Sequence[Spec]) -> cvm.WritebackResult:
    """Stage every page and commit them at one turn end; every one must commit."""
    for spec in specs:
        sess.stage(
            spec.key,
            type=spec.type,
            content=spec.content,
            pin=spec.pin,
            priority=spec.priority,
            expected_version=spec.expected_version,
            provenance=URI if spec.type is PageType.EVIDENCE else None,
        )
    result = sess.end_turn()
    assert result.rejected == [], result.details
    return result


def required_keys(specs: Sequence[Spec], demand: Sequence[str]) -> set[str]:
    """The floor's pages: hard pins (explicit, or the type's default), bootstrap, constraint,
    and demanded pages that exist."""
    keys = set()
    for spec in specs:
        pin = Pin(spec.pin) if spec.pin is not None else POLICIES[spec.type].default_pin
        if spec.type in REQUIRED_TYPES or pin is Pin.HARD or spec.key in demand:
            keys.add(spec.key)
    return keys


def items_by_key(asm: Assembly) -> dict[str, cvm.Fidelity]:
    return {item.key: item.fidelity for item in asm.items}


def region_ranks(asm: Assembly) -> list[int]:
    """Bootstrap, then constraints, then every other page (the layout by stability)."""
    return [REGION[item.type] for item in asm.items]


def sql(store: cvm.Store, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if store.db.dialect == "postgresql":
        query = query.replace("?", "%s")  # the driver's paramstyle
    with store.db.transaction(write=False) as conn:
        return [tuple(row) for row in conn.exec_driver_sql(query, params).all()]


def evidence_text(tag: str, lines: int) -> str:
    return "\n".join(
        f"{tag} line {i}: the handler validates field_{i} and stores value {i * 37 % 101}"
        for i in range(lines)
    )


_ids = itertools.count()


def fresh(prefix: str = "s") -> tuple[str, str]:
    """A new (session id, project) pair, so examples sharing a store never see each other."""
    n = next(_ids)
    return f"{prefix}{n}", f"proj{n}"


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cvm.Store]:
    path = tmp_path_factory.mktemp("assembler") / "shared.db"
    with cvm.Store.open(path, durability="normal") as store:
        yield store


@pytest.fixture
def store(db_target: str) -> Iterator[cvm.Store]:
    with cvm.Store.open(db_target, durability="normal") as opened:
        yield opened


# --- 1 and 2: the budget property and the floor --------------------------------------------

WORDS = [
    "alpha",
    "beta",
    "must",
    "never",
    "always",
    "read",
    "the",
    "file",
    "payment",
    "retry",
    "-",
    "1.",
    "user:",
    "assistant:",
    "Goal:",
    "[ ]",
    "def",
    "return",
    "42",
    "3.14159",
    "é",
    "日本語",
    "<|endoftext|>",
    "```",
    "###",
    "\t",
    "🙂",
]
_line = st.lists(st.sampled_from(WORDS), min_size=1, max_size=25).map(" ".join)
_contents = st.one_of(
    _line,
    st.lists(_line, min_size=1, max_size=80).map("\n".join),
    st.text(min_size=1, max_size=300),
).filter(lambda text: bool(text.strip()))
# Long keys make a pointer handle dearer than the page's structured fields.
_key_tails = st.sampled_from(["", "", "-日本語", "/" + "k" * 40, "/" + "segment-" * 20])
_pins = st.sampled_from([None, "hard", "soft", "none"])
_priorities = st.one_of(st.none(), st.floats(min_value=-2.0, max_value=3.0, allow_nan=False))
_fixed = st.one_of(
    st.just(""),
    _line,
    st.text(max_size=200),
    st.lists(_line, min_size=1, max_size=40).map("\n".join),
)


# (demand, budget, offset) of one assemble call: with an offset, the budget is the floor's exact
# size plus the offset instead, to probe the edge where the floor just fits or just does not.
Call = tuple[list[str], int, int | None]


@st.composite
def workloads(draw: st.DrawFn) -> tuple[list[Spec], str, list[Call]]:
    count = draw(st.integers(min_value=0, max_value=12))
    specs = []
    for index in range(count):
        page_type = draw(st.sampled_from(list(PageType)))
        specs.append(
            Spec(
                key=f"{page_type.value[:4]}/{index}{draw(_key_tails)}",
                type=page_type,
                content=draw(_contents),
                pin=draw(_pins),
                priority=draw(_priorities),
            )
        )
    keys = [spec.key for spec in specs]
    demands = st.lists(st.sampled_from([*keys, "missing/page"]), unique=True, max_size=6)
    calls = draw(
        st.lists(
            st.tuples(
                demands,
                st.integers(min_value=1, max_value=3000),
                st.one_of(st.none(), st.integers(min_value=-4, max_value=12)),
            ),
            min_size=1,
            max_size=3,
        )
    )
    return specs, draw(_fixed), calls


def check_assembly(
    store: cvm.Store,
    sess: cvm.Session,
    specs: Sequence[Spec],
    fixed: str,
    demand: list[str],
    budget: int,
    previous: set[str],
) -> set[str]:
    """Assemble once and check the budget and floor properties; return the keys now resident."""
    types = {spec.key: spec.type for spec in specs}
    required = required_keys(specs, demand)
    try:
        asm = sess.assemble(budget, fixed=fixed, demand=demand)
    except cvm.InsufficientBudget as exc:
        # Physical insufficiency: reported page by page, and it is real.
        assert exc.budget == budget
        assert exc.required > exc.budget
        assert exc.shortfall == exc.required - exc.budget
        listed = [(page.key, page.fidelity) for page in exc.pages]
        assert sorted(listed) == sorted((key, floor_of(types[key]).value) for key in required)
        report = store.assemble(
            sess.id, budget, project=sess.project, fixed=fixed, demand=demand, record=False
        )
        assert report.feasible is False
        assert report.shortfall is not None
        assert report.tokens == exact_tokens(report.text) == store.counter.count(report.text)
        assert report.tokens > budget
        assert report.tokens == exc.required
        # What did not fit is the floor itself: every required page at exactly its floor.
        assert items_by_key(report) == {key: floor_of(types[key]) for key in required}
        return set(required)  # the session recorded the floor it could not fit
    assert asm.feasible is True
    assert asm.shortfall is None
    assert asm.budget == asm.effective_budget == budget
    assert store.counter.count(asm.text) == exact_tokens(asm.text) == asm.tokens <= budget
    present = items_by_key(asm)
    for key in required:
        assert key in present, f"required page {key} dropped"
        assert at_or_above_floor(types[key], present[key]), (key, present[key])
    assert asm.missing == sorted(set(demand) - set(types))
    assert set(present) <= set(types)
    assert len(present) == len(asm.items)
    assert region_ranks(asm) == sorted(region_ranks(asm))
    for item in asm.items:
        assert item.type is types[item.key]
        assert POLICIES[item.type].allows(item.fidelity)
        assert item.text in asm.text
        if item.key in required:
            assert item.reason in ("floor", "pin", "demand")
        else:
            assert item.reason == "upgrade"
    # Pages resident last time and absent now are reported as evicted, and only those.
    evicted = [d for d in asm.decisions if d.fidelity is None]
    assert {d.key for d in evicted} == previous - set(present)
    assert all(d.reason == "evicted-for-budget" and d.tokens == 0 for d in evicted)
    assert len(asm.decisions) == len(asm.items) + len(evicted)
    if fixed:
        assert asm.text.startswith(fixed)
        assert asm.messages[0] == {"role": "system", "content": fixed}
    else:
        assert all(message["content"] for message in asm.messages)
    return set(present)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(workload=workloads())
def test_budget_and_floor_property(
    shared_store: cvm.Store, workload: tuple[list[Spec], str, list[Call]]
) -> None:
    specs, fixed, calls = workload
    session_id, project = fresh()
    sess = shared_store.session(session_id, project=project)
    if specs:
        write(sess, specs)
    resident: set[str] = set()
    # Several assemblies per session: later ones run with hysteresis and evictions.
    for demand, drawn, offset in calls:
        budget = drawn
        if offset is not None:
            floor = shared_store.assemble(
                session_id, 1, project=project, fixed=fixed, demand=demand
            )
            budget = max(1, floor.tokens + offset)
        resident = check_assembly(shared_store, sess, specs, fixed, demand, budget, resident)


# --- 3: the shortfall report ------------------------------------------------------------------

KNOWN_PAGES = [
    Spec("boot/agents", PageType.BOOTSTRAP, "You are a coding agent.\n- Always run the tests."),
    Spec("rule/no-push", PageType.CONSTRAINT, "Never push to main. Never rewrite history."),
    Spec("pref/pinned", PageType.PREFERENCE, "The user prefers short answers.", pin="hard"),
    Spec("plan/main", PageType.PLAN, "Goal: ship it\n- [ ] write code\n- [ ] test it"),
    Spec("ev/big", PageType.EVIDENCE, evidence_text("big", 40)),
    Spec("ev/small", PageType.EVIDENCE, evidence_text("small", 10)),
    Spec("conv/1", PageType.CONVERSATION, "user: hello\nassistant: hi there"),
]
KNOWN_REQUIRED = {
    ("boot/agents", "structured"),
    ("rule/no-push", "structured"),
    ("pref/pinned", "structured"),
    ("ev/big", "pointer"),
}


def test_insufficient_budget_lists_exactly_the_floor(store: cvm.Store) -> None:
    sess = store.session("s", project="p")
    write(sess, KNOWN_PAGES)
    with pytest.raises(cvm.InsufficientBudget) as caught:
        sess.assemble(10, fixed="SYSTEM PROMPT", demand=["ev/big"])
    exc = caught.value
    assert {(page.key, page.fidelity) for page in exc.pages} == KNOWN_REQUIRED
    assert len(exc.pages) == len(KNOWN_REQUIRED)
    assert all(page.tokens > 0 for page in exc.pages)
    assert exc.budget == 10
    assert exc.required > exc.budget
    assert exc.shortfall == exc.required - exc.budget
    assert f"short by {exc.shortfall}" in str(exc)

    faults = sql(
        store,
        "SELECT kind, detail FROM faults WHERE session_id = ? ORDER BY id",
        ("s",),
    )
    assert [kind for kind, _ in faults] == ["physical_insufficiency"]
    detail = json.loads(faults[0][1])
    assert detail["budget"] == 10
    assert detail["required"] == exc.required
    assert detail["shortfall"] == exc.shortfall
    assert {(key, fidelity) for key, fidelity, _ in detail["pages"]} == KNOWN_REQUIRED

    report = sess.assemble(10, fixed="SYSTEM PROMPT", demand=["ev/big"], on_insufficient="report")
    assert report.feasible is False
    assert report.shortfall is not None
    assert report.shortfall.required == exc.required == report.tokens
    assert {(item.key, item.fidelity.value) for item in report.items} == KNOWN_REQUIRED
    assert store.counter.count(report.text) == report.tokens
    kinds = sql(store, "SELECT kind FROM faults WHERE session_id = ?", ("s",))
    assert kinds == [("physical_insufficiency",), ("physical_insufficiency",)]
    recorded = sql(
        store,
        "SELECT budget, tokens, feasible FROM assemblies WHERE session_id = ? ORDER BY id",
        ("s",),
    )
    assert recorded == [(10, exc.required, 0), (10, exc.required, 0)]


def test_shortfall_names_the_pages_at_every_budget_near_the_floor(store: cvm.Store) -> None:
    """Around the floor's size every outcome is either a fitting prompt or a page-by-page report.

    A demanded evidence page with a long key has a pointer handle dearer than its structured
    fields, so its pointer fidelity is stored as the structured text and rendered under a
    "(structured)" header: the per-page estimate and the exact count differ right there.
    """
    key = "ev/" + "k" * 150
    sess = store.session("s", project="p")
    write(sess, [Spec(key, PageType.EVIDENCE, " ".join(["word"] * 40) + "\n" + "more text " * 30)])
    floor_tokens = store.assemble("s", 1, project="p", demand=[key]).tokens
    for budget in range(floor_tokens - 8, floor_tokens + 8):
        try:
            asm = store.assemble(
                "s", budget, project="p", demand=[key], on_insufficient="raise", record=False
            )
        except cvm.InsufficientBudget as exc:
            assert budget < floor_tokens
            assert [(page.key, page.fidelity) for page in exc.pages] == [(key, "pointer")], (
                f"budget {budget}: the report names no page: {exc}"
            )
            assert exc.shortfall == floor_tokens - budget
        else:
            assert budget >= floor_tokens
            assert asm.tokens <= budget
            assert items_by_key(asm)[key] in POLICIES[PageType.EVIDENCE].ladder


def test_inspection_records_nothing_even_when_the_floor_does_not_fit(store: cvm.Store) -> None:
    """``store.assemble(record=False)`` is documented as inspection: "nothing is recorded"."""
    sess = store.session("s", project="p")
    write(sess, KNOWN_PAGES)
    report = store.assemble("s", 10, project="p", demand=["ev/big"], record=False)
    assert report.feasible is False
    assert report.assembly_id is None
    assert sql(store, "SELECT count(*) FROM assemblies") == [(0,)]
    assert sql(store, "SELECT kind FROM faults WHERE session_id = 's'") == []


# --- 4: bootstrap after compaction and reset ------------------------------------------------


def test_bootstrap_and_constraints_survive_compaction_and_reset(store: cvm.Store) -> None:
    store.put(
        "boot/agents",
        type="bootstrap",
        content="# Rules\nYou are a careful agent.\n- Always run the tests.\n- Never skip CI.",
        project="p",
    )
    sess = store.session("s", project="p")
    write(
        sess,
        [
            Spec("rule/no-push", PageType.CONSTRAINT, "Never push to main."),
            Spec("rule/no-secrets", PageType.CONSTRAINT, "Never print secrets or tokens."),
            *(Spec(f"ev/{i}", PageType.EVIDENCE, evidence_text(f"e{i}", 30)) for i in range(6)),
        ],
    )
    expected = {"boot/agents", "rule/no-push", "rule/no-secrets"}
    types = {"boot/agents": PageType.BOOTSTRAP}

    def check(asm: Assembly) -> None:
        present = items_by_key(asm)
        assert expected <= set(present)
        for key in expected:
            page_type = types.get(key, PageType.CONSTRAINT)
            assert at_or_above_floor(page_type, present[key])
        assert asm.tokens <= 300

    check(sess.assemble(300, demand=["ev/0", "ev/1"]))
    sess.stage("ev/new", type="evidence", content=evidence_text("new", 20), provenance=URI)
    sess.compact()
    check(sess.assemble(300, demand=["ev/new"]))
    sess.stage("ev/newer", type="evidence", content=evidence_text("newer", 20), provenance=URI)
    sess.reset()
    check(sess.assemble(300))
    # A brand-new session of the project sees the project's bootstrap page too (not the
    # first session's constraints, which are session-scoped).
    other = store.session("s2", project="p")
    present = items_by_key(other.assemble(300))
    assert "boot/agents" in present
    assert "rule/no-push" not in present


def test_a_session_assembler_sees_every_later_write(store: cvm.Store) -> None:
    """The session keeps its page table between turns; writes from anywhere must show up."""
    sess = store.session("s", project="p")
    write(
        sess,
        [
            Spec("ev/x", PageType.EVIDENCE, "alpha output"),
            Spec("pref/a", PageType.PREFERENCE, "Tea."),
        ],
    )
    assert set(items_by_key(sess.assemble(1000))) == {"ev/x", "pref/a"}
    # A direct project write after the session has assembled.
    store.put("boot/late", type="bootstrap", content="Always be kind.", project="p")
    # Another session updates a project page and adds one.
    other = store.session("o", project="p")
    write(other, [Spec("pref/a", PageType.PREFERENCE, "Green tea.", expected_version=1)])
    write(other, [Spec("pref/b", PageType.PREFERENCE, "Coffee after lunch.")])
    asm = sess.assemble(1000)
    # The layout by stability: bootstrap first; ev/x kept its place; then the new pref/b, and
    # the changed pref/a last.
    assert [(i.key, i.version, i.text) for i in asm.items] == [
        ("boot/late", 1, "Always be kind."),
        ("ev/x", 1, "alpha output"),
        ("pref/b", 1, "Coffee after lunch."),
        ("pref/a", 2, "Green tea."),
    ]
    # The session's own page shadows the project page of the same key, for this session only.
    sess.stage("pref/b", type="preference", content="Decaf only.", scope="session")
    sess.stage("ev/x", op="delete", expected_version=1)
    assert sess.end_turn().rejected == []
    texts = {i.key: i.text for i in sess.assemble(1000).items}
    assert texts == {
        "boot/late": "Always be kind.",
        "pref/a": "Green tea.",
        "pref/b": "Decaf only.",
    }
    assert {i.key: i.text for i in other.assemble(1000).items}["pref/b"] == "Coffee after lunch."
    # A deleted page is gone, not "evicted": it no longer exists.
    assert [d for d in sess.assemble(1000).decisions if d.fidelity is None] == []
    sess.stage("pref/b", op="delete", expected_version=1, scope="session")
    assert sess.end_turn().rejected == []
    assert {i.key: i.text for i in sess.assemble(1000).items}["pref/b"] == "Coffee after lunch."


# --- 5: determinism ------------------------------------------------------------------------


def _build_identical(path: Path) -> cvm.Store:
    store = cvm.Store.open(path, durability="normal", clock=lambda: FIXED_CLOCK)
    store.put("boot/agents", type="bootstrap", content=KNOWN_PAGES[0].content, project="p")
    sess = store.session("s", project="p")
    write(sess, KNOWN_PAGES[1:])
    write(
        sess,
        [Spec(f"ev/{i}", PageType.EVIDENCE, evidence_text(f"d{i}", 5 + 7 * i)) for i in range(5)],
    )
    write(
        sess,
        [
            Spec(f"conv/t{i}", PageType.CONVERSATION, f"user: q{i}\nassistant: a{i}")
            for i in range(3)
        ],
    )
    return store


def _snapshot(asm: Assembly) -> tuple[Any, ...]:
    return (asm.text, asm.tokens, asm.feasible, asm.decisions, asm.items, asm.messages)


def test_identical_stores_give_byte_identical_assemblies(tmp_path: Path) -> None:
    first = _build_identical(tmp_path / "one.db")
    second = _build_identical(tmp_path / "two.db")
    try:
        calls: list[dict[str, Any]] = [
            {"budget": 5000, "fixed": "SYSTEM"},
            {"budget": 400, "fixed": "SYSTEM", "demand": ["ev/3"]},
            {"budget": 250, "demand": ["ev/4", "ev/0"]},
            {"budget": 180},
            {"budget": 700, "fixed": "tools: read_file, write_file", "demand": ["conv/1"]},
        ]
        sess_one = first.session("s", project="p")
        sess_two = second.session("s", project="p")
        for call in calls:
            one = sess_one.assemble(**call)
            two = sess_two.assemble(**call)
            assert _snapshot(one) == _snapshot(two)
            assert one.text.encode() == two.text.encode()
        # The same store, inspected twice without recording, gives the same answer.
        for call in calls:
            args = {k: v for k, v in call.items() if k != "budget"}
            a = first.assemble("s", call["budget"], project="p", record=False, **args)
            b = first.assemble("s", call["budget"], project="p", record=False, **args)
            assert _snapshot(a) == _snapshot(b)
            c = second.assemble("s", call["budget"], project="p", record=False, **args)
            assert _snapshot(a) == _snapshot(c)
    finally:
        first.close()
        second.close()


# --- 6: ordering and rendering -------------------------------------------------------------


def test_sections_order_conversation_order_and_pointers(store: cvm.Store) -> None:
    sess = store.session("s", project="p")
    # Written out of section order; conversation keys deliberately not in time order.
    write(
        sess,
        [
            Spec("conv/z", PageType.CONVERSATION, "user: first question\nassistant: first answer"),
            Spec("ev/big", PageType.EVIDENCE, "stale output"),
            Spec("pref/tabs", PageType.PREFERENCE, "Use tabs for indentation."),
            Spec("plan/main", PageType.PLAN, "Goal: fix it\n- [ ] find the bug"),
        ],
    )
    write(
        sess,
        [
            Spec("conv/a", PageType.CONVERSATION, "user: second question\nassistant: second"),
            Spec("rule/x", PageType.CONSTRAINT, "Never delete production data."),
            Spec("ev/big", PageType.EVIDENCE, evidence_text("big", 60), expected_version=1),
        ],
    )
    store.put(
        "boot/b", type="bootstrap", content="You are an agent. Always be careful.", project="p"
    )
    write(sess, [Spec("conv/m", PageType.CONVERSATION, "user: third\nassistant: third answer")])
    fixed = "SYSTEM: you are helpful."
    asm = sess.assemble(5000, fixed=fixed)
    assert [item.type for item in asm.items] == [
        PageType.BOOTSTRAP,
        PageType.CONSTRAINT,
        PageType.PLAN,
        PageType.PREFERENCE,
        PageType.EVIDENCE,
        PageType.CONVERSATION,
        PageType.CONVERSATION,
        PageType.CONVERSATION,
    ]
    assert [item.key for item in asm.items if item.type is PageType.CONVERSATION] == [
        "conv/z",
        "conv/a",
        "conv/m",
    ]
    assert asm.messages[0] == {"role": "system", "content": fixed}
    assert asm.text.startswith(fixed + "\n\n### boot/b\n")
    positions = [asm.text.index(f"### {item.key}") for item in asm.items]
    assert positions == sorted(positions)
    conversation = [item.text for item in asm.items if item.type is PageType.CONVERSATION]
    assert [m["content"].split("\n", 1)[1] for m in asm.messages[-3:]] == conversation

    # A floor-only budget with ev/big demanded puts it in as a pointer that resolves to version 2.
    floor_tokens = store.assemble("s", 1, project="p", demand=["ev/big"]).tokens
    tight = sess.assemble(floor_tokens, demand=["ev/big"])
    evidence = next(item for item in tight.items if item.key == "ev/big")
    assert evidence.fidelity is Fidelity.POINTER
    assert evidence.version == 2
    assert evidence.text.startswith("[ptr ev/big@2 ")
    assert f"### ev/big\n{evidence.text}" in tight.text
    assert parse_pointer(evidence.text) == ("ev/big", 2)
    resolved = store.resolve(evidence.text, project="p", session="s")
    assert resolved.content == evidence_text("big", 60)
    assert resolved.version == 2
    assert tight.messages[0]["role"] == "system"
    assert not tight.text.startswith("\n")


# --- 7: phase-2 ranking ----------------------------------------------------------------------


def test_plenty_of_budget_gives_full_fidelity_everywhere(store: cvm.Store) -> None:
    sess = store.session("s", project="p")
    write(sess, KNOWN_PAGES)
    asm = sess.assemble(100_000, fixed="SYSTEM")
    assert {item.key for item in asm.items} == {spec.key for spec in KNOWN_PAGES}
    assert {item.fidelity for item in asm.items} == {Fidelity.FULL}
    assert [d for d in asm.decisions if d.fidelity is None] == []


def test_floor_only_budget_admits_no_optional_page(store: cvm.Store) -> None:
    sess = store.session("s", project="p")
    write(sess, KNOWN_PAGES)
    floor_tokens = sess.assemble(1, demand=["ev/big"], on_insufficient="report").tokens
    asm = sess.assemble(floor_tokens, demand=["ev/big"])
    assert asm.feasible
    assert asm.tokens <= floor_tokens
    assert {item.key for item in asm.items} == {key for key, _ in KNOWN_REQUIRED}
    for item in asm.items:
        assert item.reason in ("floor", "pin", "demand")
    # One token more still leaves no room for any optional page's handle.
    assert {item.key for item in sess.assemble(floor_tokens + 1, demand=["ev/big"]).items} == {
        key for key, _ in KNOWN_REQUIRED
    }


def _rank(present: dict[str, Fidelity], key: str) -> int:
    """A page's fidelity rank, 4 when it is absent: lower is richer."""
    return present[key].rank if key in present else 4


def test_demanded_page_outranks_an_identical_one(store: cvm.Store) -> None:
    sess = store.session("s", project="p")
    same = evidence_text("same", 40)
    # ev/b is older and sorts later, so recency and the key tie-break both favour ev/a:
    # only the demand can put ev/b ahead.
    write(sess, [Spec("ev/b", PageType.EVIDENCE, same)])
    write(sess, [Spec("ev/a", PageType.EVIDENCE, same)])

    def tokens(fidelity: Fidelity) -> int:
        return store.page("ev/a", project="p", session="s", fidelity=fidelity).tokens

    # Over a sweep of budgets (nothing recorded, so no hysteresis) the demanded page is never
    # below its twin, and mostly above.
    higher = equal = 0
    for sweep in range(20, 2 * tokens(Fidelity.FULL) + 40, 9):
        present = items_by_key(store.assemble("s", sweep, project="p", demand=["ev/b"]))
        assert _rank(present, "ev/b") <= _rank(present, "ev/a"), (sweep, present)
        if _rank(present, "ev/b") < _rank(present, "ev/a"):
            higher += 1
        else:
            equal += 1
    assert higher > equal

    # Room for one compressed page and one structured one (plus headers), not two compressed.
    budget = tokens(Fidelity.COMPRESSED) + tokens(Fidelity.STRUCTURED) + 30
    assert budget < 2 * tokens(Fidelity.COMPRESSED)
    # Without the demand, recency puts the other one ahead at this budget.
    undemanded = items_by_key(store.assemble("s", budget, project="p"))
    assert undemanded == {"ev/a": Fidelity.COMPRESSED, "ev/b": Fidelity.STRUCTURED}
    demanded = items_by_key(sess.assemble(budget, demand=["ev/b"]))
    assert demanded == {"ev/b": Fidelity.COMPRESSED, "ev/a": Fidelity.STRUCTURED}


def _candidate(page_id: int, key: str, lsn: int) -> Candidate:
    candidate = Candidate(
        page_id=page_id,
        key=key,
        type=PageType.EVIDENCE,
        version=1,
        pin=Pin.NONE,
        priority=0.0,
        scope=Scope.SESSION,
        lsn=lsn,
        tokens={
            Fidelity.FULL: 400,
            Fidelity.COMPRESSED: 200,
            Fidelity.STRUCTURED: 40,
            Fidelity.POINTER: 15,
        },
        header_tokens=4,
        ladder=tuple(reversed(POLICIES[PageType.EVIDENCE].ladder)),
    )
    # The page table finishes a candidate (precomputed per-rung costs) when the library has it.
    finish = getattr(candidate, "finish", None)
    return finish() if finish is not None else candidate


def test_choose_ranks_demand_and_applies_the_floor() -> None:
    a, b = _candidate(1, "ev/a", 2), _candidate(2, "ev/b", 1)
    budget = item_cost(b, Fidelity.FULL) + item_cost(a, Fidelity.STRUCTURED)
    selection = choose([a, b], budget=budget, fixed_tokens=0, demand=frozenset({"ev/b"}))
    assert selection.feasible
    assert selection.reasons[2] == "demand"
    assert selection.chosen[2] is Fidelity.FULL
    assert selection.chosen.get(1) is None or selection.chosen[1].rank > Fidelity.FULL.rank
    used = sum(
        item_cost(c, selection.chosen[c.page_id]) for c in (a, b) if c.page_id in selection.chosen
    )
    assert used <= budget
    # Below the floor: infeasible, the demanded page reported at its floor.
    short = choose([a, b], budget=10, fixed_tokens=5, demand=frozenset({"ev/b"}))
    assert not short.feasible
    assert [(p.key, p.fidelity) for p in short.shortfall] == [("ev/b", "pointer")]
    assert short.floor_tokens == 5 + item_cost(b, Fidelity.POINTER)


# --- 8: assembly records ----------------------------------------------------------------------

# What session S saw at turn N (the README's example): the records are snapshots and deltas,
# the view gives each assembly's whole prompt.
SEEN_AT_TURN = """
SELECT key, version, fidelity, tokens, reason
FROM resident_by_turn
WHERE assembly_id = (
    SELECT max(id) FROM assemblies WHERE session_id = ? AND turn = ?
)
  AND fidelity IS NOT NULL
ORDER BY position
"""


def test_assembly_records_match_and_answer_what_was_seen_at_turn_n(store: cvm.Store) -> None:
    sess = store.session("s", project="p")
    write(sess, KNOWN_PAGES)  # turn 1 ends
    wide = sess.assemble(100_000, fixed="SYSTEM")
    turn_of_wide = sess.turn
    assert turn_of_wide == 1
    write(sess, [Spec("ev/late", PageType.EVIDENCE, evidence_text("late", 3))])  # turn 2 ends
    floor_tokens = store.assemble("s", 1, project="p", fixed="SYSTEM").tokens
    narrow = sess.assemble(floor_tokens, fixed="SYSTEM")
    assert narrow.feasible

    for asm in (wide, narrow):
        assert asm.assembly_id is not None
        row = sql(
            store,
            "SELECT tokens, budget, effective_budget, feasible, fixed_tokens FROM assemblies "
            "WHERE id = ?",
            (asm.assembly_id,),
        )
        assert row == [(asm.tokens, asm.budget, asm.effective_budget, 1, asm.fixed_tokens)]
        items = sql(
            store,
            "SELECT key, version, fidelity, tokens, reason FROM resident_by_turn "
            "WHERE assembly_id = ? ORDER BY position",
            (asm.assembly_id,),
        )
        assert items[: len(asm.items)] == [
            (i.key, i.version, i.fidelity.value, i.tokens, i.reason) for i in asm.items
        ]
        assert all(i.reason in ("floor", "pin", "demand", "upgrade") for i in asm.items)
        evicted = items[len(asm.items) :]
        assert evicted == [
            (d.key, 1, None, 0, "evicted-for-budget") for d in asm.decisions if d.fidelity is None
        ]
    # The wide assembly was the first: nothing to evict. The narrow one evicted every optional
    # page that was resident before (ev/late was never resident, so it is not "evicted").
    assert [d for d in wide.decisions if d.fidelity is None] == []
    optional = {spec.key for spec in KNOWN_PAGES} - {"boot/agents", "rule/no-push", "pref/pinned"}
    assert {d.key for d in narrow.decisions if d.reason == "evicted-for-budget"} == optional
    assert all(
        d.fidelity is None and d.tokens == 0
        for d in narrow.decisions
        if d.reason == "evicted-for-budget"
    )

    seen_turn_1 = sql(store, SEEN_AT_TURN, ("s", 1))
    assert seen_turn_1 == [
        (i.key, i.version, i.fidelity.value, i.tokens, i.reason) for i in wide.items
    ]
    seen_turn_2 = sql(store, SEEN_AT_TURN, ("s", 2))
    assert seen_turn_2 == [
        (i.key, i.version, i.fidelity.value, i.tokens, i.reason) for i in narrow.items
    ]
    assert {row[0] for row in seen_turn_2} == {"boot/agents", "rule/no-push", "pref/pinned"}
    assert sql(store, SEEN_AT_TURN, ("s", 7)) == []


# --- 9: the learned safety margin ----------------------------------------------------------


def test_observe_usage_learns_a_margin_and_shrinks_the_budget(store: cvm.Store) -> None:
    sess = store.session("s", project="p")
    with pytest.raises(cvm.InvalidInput):
        sess.observe_usage(100)  # nothing assembled yet
    write(sess, [Spec(f"ev/{i}", PageType.EVIDENCE, evidence_text(f"m{i}", 20)) for i in range(6)])
    # Find a fixed region that makes the full prompt's size a multiple of 4, so 1.25x is exact.
    fixed = next(
        f"SYSTEM{'!' * n}"
        for n in range(40)
        if store.assemble("s", 100_000, project="p", fixed=f"SYSTEM{'!' * n}").tokens % 4 == 0
    )
    asm = sess.assemble(100_000, fixed=fixed)
    assert asm.tokens % 4 == 0 and asm.tokens > 1000
    for bad in (0, -1, True, 1.5, "10"):
        with pytest.raises(cvm.InvalidInput):
            sess.observe_usage(bad)  # type: ignore[arg-type]
    margin = sess.observe_usage(asm.tokens * 5 // 4)
    assert margin == 1.25

    nxt = sess.assemble(1000, fixed=fixed)
    assert nxt.budget == 1000
    assert nxt.effective_budget == math.floor(1000 / 1.25) == 800
    assert nxt.tokens <= nxt.effective_budget
    assert store.counter.count(nxt.text) == nxt.tokens
    assert sess.assemble(999, fixed=fixed).effective_budget == 799

    # A provider that counts ten times more is capped at 2.0.
    assert sess.observe_usage(nxt.tokens * 10) == 2.0
    capped = sess.assemble(1000, fixed=fixed)
    assert capped.effective_budget == 500
    assert capped.tokens <= 500
    # A provider counting less never lowers the margin below the worst recent ratio.
    assert sess.observe_usage(1) == 2.0
    # The margin is per session.
    other = store.session("s2", project="p")
    assert other.assemble(1000).effective_budget == 1000


# --- 10: hysteresis, measured ----------------------------------------------------------------

TURNS = 30
HYSTERESIS_BUDGET = 600


def _run_workload(store: cvm.Store, session_id: str, *, hysteresis: bool) -> tuple[int, int]:
    """Churn: one new evidence page a turn, a rotating pair of older ones demanded.

    Returns (fidelity changes, resident page-turns compared): a page present in two consecutive
    assemblies at different fidelities is one change.
    """
    sess = store.session(session_id, project="hyst")
    assembler = Assembler(store, "hyst", session_id, hysteresis=False) if not hysteresis else None
    previous: dict[str, Fidelity] | None = None
    changes = compared = 0
    for turn in range(TURNS):
        content = evidence_text(f"t{turn}", 6 + (turn * 7) % 19)
        write(sess, [Spec(f"ev/{turn:02d}", PageType.EVIDENCE, content)])
        demand = sorted({f"ev/{(turn * 5 + j) % (turn + 1):02d}" for j in (1, 3)})
        if assembler is None:
            asm = sess.assemble(HYSTERESIS_BUDGET, demand=demand)
        else:
            asm = assembler.assemble(HYSTERESIS_BUDGET, demand=demand, record=True, turn=sess.turn)
        assert asm.tokens <= HYSTERESIS_BUDGET
        current = items_by_key(asm)
        if previous is not None:
            both = current.keys() & previous.keys()
            compared += len(both)
            changes += sum(1 for key in both if current[key] != previous[key])
        previous = current
    return changes, compared


def test_hysteresis_reduces_fidelity_changes(store: cvm.Store) -> None:
    with_hysteresis, compared_with = _run_workload(store, "with", hysteresis=True)
    without, compared_without = _run_workload(store, "without", hysteresis=False)
    print(
        f"\nfidelity changes of resident pages over {TURNS} turns at budget {HYSTERESIS_BUDGET}: "
        f"hysteresis {with_hysteresis} ({with_hysteresis / compared_with:.3f} per resident "
        f"page-turn), no hysteresis {without} ({without / compared_without:.3f})"
    )
    assert with_hysteresis < without


# --- 11: bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, -1, "100", True, 10.5, None])
def test_bad_budget_is_invalid_input(store: cvm.Store, budget: Any) -> None:
    sess = store.session("s", project="p")
    with pytest.raises(cvm.InvalidInput):
        sess.assemble(budget)
    with pytest.raises(cvm.InvalidInput):
        store.assemble("s", budget, project="p")


def test_bad_options_are_invalid_input(store: cvm.Store) -> None:
    sess = store.session("s", project="p")
    write(sess, KNOWN_PAGES[:2])
    with pytest.raises(cvm.InvalidInput):
        sess.assemble(100, on_insufficient="nope")
    with pytest.raises(cvm.InvalidInput):
        sess.assemble(100, demand="a-string")  # type: ignore[arg-type]
    with pytest.raises(cvm.InvalidInput):
        sess.assemble(100, demand=[1, 2])  # type: ignore[list-item]
    with pytest.raises(cvm.InvalidInput):
        sess.assemble(100, fixed=None)  # type: ignore[arg-type]
    with pytest.raises(cvm.InvalidInput):
        store.assemble("s", 100, project="p", on_insufficient="nope")
    # Nothing was recorded for the refused calls.
    assert sql(store, "SELECT count(*) FROM assemblies") == [(0,)]


# --- 12: the command line ----------------------------------------------------------------------


def _cli_db(tmp_path: Path) -> str:
    path = tmp_path / "cli.db"
    with cvm.Store.open(path) as store:
        write(store.session("s", project="p"), KNOWN_PAGES)
    return str(path)


def _assemble_cli(db: str, *args: str) -> Any:
    return CliRunner().invoke(
        app, ["--db", db, "assemble", "--session", "s", "--project", "p", *args]
    )


def test_cli_assemble_explain_lists_every_page(tmp_path: Path) -> None:
    db = _cli_db(tmp_path)
    result = _assemble_cli(db, "--budget", "100000", "--explain")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = {line.split("\t")[0]: line.split("\t") for line in lines}
    for spec in KNOWN_PAGES:
        assert spec.key in rows, f"{spec.key} missing from --explain"
        _, page_type, fidelity, tokens, reason = rows[spec.key]
        assert page_type == spec.type.value
        assert fidelity == "full"
        assert int(tokens) > 0
        assert reason in ("floor", "pin", "demand", "upgrade")
    assert rows["boot/agents"][4] in ("floor", "pin")
    assert rows["plan/main"][4] == "upgrade"

    # Demanded, at a budget too small for everything: fidelities and reasons still listed.
    tight = _assemble_cli(db, "--budget", "200", "--demand", "ev/big", "--explain")
    assert tight.exit_code == 0, tight.output
    tight_rows = {line.split("\t")[0]: line.split("\t") for line in tight.stdout.splitlines()}
    assert tight_rows["ev/big"][4] == "demand"
    assert tight_rows["ev/big"][2] in ("pointer", "structured", "compressed", "full")
    for key, _ in KNOWN_REQUIRED:
        assert key in tight_rows


def test_cli_assemble_json_and_shortfall(tmp_path: Path) -> None:
    db = _cli_db(tmp_path)
    result = _assemble_cli(db, "--budget", "300", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["tokens"] <= 300
    assert payload["budget"] == 300
    assert payload["feasible"] is True
    assert payload["shortfall"] is None
    keys = [item["key"] for item in payload["items"]]
    assert {"boot/agents", "rule/no-push", "pref/pinned"} <= set(keys)

    short = _assemble_cli(db, "--budget", "5")
    assert short.exit_code == 1
    err_lines = short.stderr.strip().splitlines()
    assert len(err_lines) == 1
    assert err_lines[0].startswith("error: ")
    assert "short by" in err_lines[0]
    assert "Traceback" not in short.output
    # Inspection records nothing.
    with cvm.Store.open(db) as store:
        assert sql(store, "SELECT count(*) FROM assemblies") == [(0,)]
