"""The page model: the policy table of DESIGN 1.2, structured schemas, ladders, fidelities.

Every test writes through the real :class:`Store` (journal, validation, apply), so what is
checked is what a user of ``store.put`` / ``store.page`` gets back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import clawvm_store as cvm
from clawvm_store.representations import COMPRESS_MIN_TOKENS, parse_pointer

F = cvm.Fidelity
T = cvm.PageType

# --- the policy table (DESIGN 1.2, contract) ------------------------------------------------

EXPECTED_POLICIES: dict[cvm.PageType, tuple[F, tuple[F, ...], cvm.Pin, cvm.Scope]] = {
    T.BOOTSTRAP: (F.STRUCTURED, (F.FULL, F.STRUCTURED), cvm.Pin.HARD, cvm.Scope.PROJECT),
    T.CONSTRAINT: (F.STRUCTURED, (F.FULL, F.STRUCTURED), cvm.Pin.HARD, cvm.Scope.SESSION),
    T.PLAN: (
        F.STRUCTURED,
        (F.FULL, F.STRUCTURED, F.POINTER),
        cvm.Pin.NONE,
        cvm.Scope.SESSION,
    ),
    T.PREFERENCE: (
        F.STRUCTURED,
        (F.FULL, F.COMPRESSED, F.STRUCTURED, F.POINTER),
        cvm.Pin.NONE,
        cvm.Scope.PROJECT,
    ),
    T.EVIDENCE: (
        F.POINTER,
        (F.FULL, F.COMPRESSED, F.STRUCTURED, F.POINTER),
        cvm.Pin.NONE,
        cvm.Scope.SESSION,
    ),
    T.CONVERSATION: (
        F.STRUCTURED,
        (F.FULL, F.COMPRESSED, F.STRUCTURED, F.POINTER),
        cvm.Pin.NONE,
        cvm.Scope.SESSION,
    ),
}


def test_policy_table_covers_exactly_the_six_types() -> None:
    assert set(cvm.POLICIES) == set(cvm.PageType)
    assert [t.value for t in cvm.PageType] == [
        "bootstrap",
        "constraint",
        "plan",
        "preference",
        "evidence",
        "conversation",
    ]
    assert [f.value for f in cvm.Fidelity] == ["full", "compressed", "structured", "pointer"]
    assert [f.rank for f in cvm.Fidelity] == [0, 1, 2, 3]


@pytest.mark.parametrize("page_type", list(T), ids=lambda t: t.value)
def test_policy_row_matches_design(page_type: cvm.PageType) -> None:
    floor, ladder, pin, scope = EXPECTED_POLICIES[page_type]
    policy = cvm.POLICIES[page_type]
    assert policy.type is page_type
    assert policy.floor is floor
    assert policy.ladder == ladder
    assert policy.default_pin is pin
    assert policy.default_scope is scope
    # The floor is on the ladder, and the ladder runs from full down, in rank order.
    assert policy.floor in policy.ladder
    assert policy.ladder[0] is F.FULL
    assert [f.rank for f in policy.ladder] == sorted(f.rank for f in policy.ladder)
    for fidelity in F:
        assert policy.allows(fidelity) is (fidelity in ladder)
        assert policy.at_or_above_floor(fidelity) is (fidelity.rank <= floor.rank)


# --- fixtures -------------------------------------------------------------------------------

SESSION_TYPES = {T.CONSTRAINT, T.PLAN, T.EVIDENCE, T.CONVERSATION}
PROVENANCE: dict[str, Any] = {"uri": "file:///x"}


def where(page_type: cvm.PageType) -> dict[str, Any]:
    """The session argument a page of this type is written and read with in these tests."""
    return {"session": "s1"} if page_type in SESSION_TYPES else {}


def extra_args(page_type: cvm.PageType) -> dict[str, Any]:
    args = where(page_type)
    if page_type is T.EVIDENCE:
        args["provenance"] = PROVENANCE
    return args


REALISTIC: dict[cvm.PageType, str] = {
    T.BOOTSTRAP: (
        "# Workspace instructions\n"
        "- Always run the test suite before committing.\n"
        "- Never push to main directly; open a pull request.\n"
        "- Use ruff for formatting and linting.\n"
        "The repository is a Python 3.11 project managed with setuptools.\n"
    ),
    T.CONSTRAINT: (
        "Never delete files outside the workspace.\n"
        "Do not run commands that need network access.\n"
        "Only write to the database through the store API.\n"
    ),
    T.PLAN: (
        "Goal: ship the token counter with exact counts\n"
        "- [x] read the design document\n"
        "- [ ] write property tests for the counter\n"
        "- [ ] write the benchmark script\n"
        "Current: write property tests for the counter\n"
    ),
    T.PREFERENCE: (
        "The user prefers short answers with code first and explanations after, "
        "uses British spelling, and wants every shell command shown before it runs."
    ),
    T.EVIDENCE: "\n".join(
        f"line {i}: def handler_{i}(request): return respond(request, status={200 + i})"
        for i in range(40)
    ),
    T.CONVERSATION: "\n".join(
        f"{'user' if i % 2 == 0 else 'assistant'}: message number {i} about the failing "
        f"migration test and what to try next"
        for i in range(20)
    ),
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[cvm.Store]:
    with cvm.Store.open(tmp_path / "pages.db") as opened:
        yield opened


# --- structured schemas ---------------------------------------------------------------------

GOOD_FIELDS: dict[cvm.PageType, dict[str, Any]] = {
    T.BOOTSTRAP: {
        "title": "Workspace instructions",
        "rules": ["Always run the tests", "Never push to main"],
    },
    T.CONSTRAINT: {"rules": ["Never delete files outside the workspace"]},
    T.PLAN: {
        "goal": "ship the token counter",
        "current_step": "write property tests",
        "steps": ["read the design", "write property tests", "write the benchmark"],
    },
    T.PREFERENCE: {
        "statement": "short answers, code first",
        "scope": "project",
        "provenance": "user said so in session s-0",
    },
    T.EVIDENCE: {"source": "uri:file:///x", "summary": "forty handlers returning 2xx"},
    T.CONVERSATION: {
        "span_id": "turns-1-20",
        "start": "2025-01-01T10:00:00Z",
        "end": "2025-01-01T10:20:00Z",
        "roles": ["assistant", "user"],
        "summary": "debugging the migration test",
    },
}

BAD_FIELDS: list[tuple[cvm.PageType, dict[str, Any]]] = [
    (T.BOOTSTRAP, {"title": "Instructions", "rules": []}),
    (T.BOOTSTRAP, {"rules": ["Always run the tests"]}),
    (T.BOOTSTRAP, {"title": "Instructions", "rules": ["ok", "   "]}),
    (T.BOOTSTRAP, {"title": "x" * 201, "rules": ["ok"]}),
    (T.BOOTSTRAP, {"title": "Instructions", "rules": ["ok"], "extra": 1}),
    (T.CONSTRAINT, {}),
    (T.CONSTRAINT, {"rules": [""]}),
    (T.CONSTRAINT, {"rules": "never do X"}),
    (T.CONSTRAINT, {"rules": ["never do X"], "severity": "high"}),
    (T.PLAN, {"goal": "ship it"}),
    (T.PLAN, {"goal": "", "current_step": "write tests"}),
    (T.PLAN, {"goal": "ship it", "current_step": "   "}),
    (T.PLAN, {"goal": "ship it", "current_step": "tests", "owner": "me"}),
    (T.PREFERENCE, {"statement": "short answers", "scope": "project"}),
    (T.PREFERENCE, {"statement": "short answers", "scope": "", "provenance": "user"}),
    (T.PREFERENCE, {"statement": "x", "scope": "project", "provenance": "user", "why": "?"}),
    (T.EVIDENCE, {"summary": "no source"}),
    (T.EVIDENCE, {"source": "uri:file:///x", "summary": 42}),
    (T.EVIDENCE, {"source": "uri:file:///x", "tool": "grep"}),
    (T.CONVERSATION, {"span_id": "s", "start": "2025-01-01T10:00:00Z"}),
    (T.CONVERSATION, {"span_id": "s", "start": "a", "end": "b", "roles": "user"}),
    (T.CONVERSATION, {"span_id": "s", "start": "a", "end": "b", "turns": 3}),
]


@pytest.mark.parametrize(
    ("page_type", "fields"),
    BAD_FIELDS,
    ids=[f"{t.value}-{i}" for i, (t, _) in enumerate(BAD_FIELDS)],
)
def test_bad_structured_fields_are_schema_invalid(
    store: cvm.Store, page_type: cvm.PageType, fields: dict[str, Any]
) -> None:
    with pytest.raises(cvm.SchemaInvalid) as caught:
        store.put(
            "page/bad",
            type=page_type,
            content=REALISTIC[page_type],
            structured=fields,
            **extra_args(page_type),
        )
    assert caught.value.reason == "SCHEMA_INVALID"
    assert caught.value.reason == cvm.ReasonCode.SCHEMA_INVALID
    assert isinstance(caught.value, cvm.UpdateRejected)
    assert isinstance(caught.value, cvm.InvalidInput)
    # Nothing was written, and the rejected entry stays in the journal with its reason.
    with pytest.raises(cvm.NotFound):
        store.page("page/bad", **where(page_type))
    with store.db.transaction(write=False) as conn:
        rows = conn.exec_driver_sql("SELECT lsn, state, reason FROM journal").all()
    assert [(row.lsn, row.state, row.reason) for row in rows] == [
        (caught.value.lsn, "rejected", "SCHEMA_INVALID")
    ]


@pytest.mark.parametrize("page_type", list(T), ids=lambda t: t.value)
def test_good_structured_fields_are_kept(store: cvm.Store, page_type: cvm.PageType) -> None:
    fields = GOOD_FIELDS[page_type]
    written = store.put(
        "page/good",
        type=page_type,
        content=REALISTIC[page_type],
        structured=fields,
        **extra_args(page_type),
    )
    assert written.structured == fields
    assert written.version == 1
    read = store.page("page/good", fidelity=F.STRUCTURED, **where(page_type))
    assert read.structured == fields
    # The structured fidelity's text carries every field value the caller gave.
    for value in fields.values():
        for item in value if isinstance(value, list) else [value]:
            assert str(item) in read.content


@pytest.mark.parametrize("page_type", list(T), ids=lambda t: t.value)
def test_derived_fields_validate_against_the_type_model(
    store: cvm.Store, page_type: cvm.PageType
) -> None:
    written = store.put(
        "page/derived", type=page_type, content=REALISTIC[page_type], **extra_args(page_type)
    )
    assert written.structured is not None
    model = cvm.POLICIES[page_type].fields_model
    assert model.model_validate(written.structured).model_dump(mode="json") == written.structured


def test_derived_plan_fields_hold_goal_and_current_step(store: cvm.Store) -> None:
    page = store.put("plan/main", type=T.PLAN, content=REALISTIC[T.PLAN], session="s1")
    assert page.structured == {
        "goal": "ship the token counter with exact counts",
        "current_step": "write property tests for the counter",
        "steps": [],
    }


def test_structured_must_be_a_mapping(store: cvm.Store) -> None:
    with pytest.raises(cvm.InvalidInput):
        store.put(
            "plan/main",
            type=T.PLAN,
            content="Goal: x",
            session="s1",
            structured=["goal", "current_step"],  # type: ignore[arg-type]
        )


# --- every fidelity on the ladder, none off it ----------------------------------------------


@pytest.mark.parametrize("page_type", list(T), ids=lambda t: t.value)
def test_every_ladder_fidelity_reads_and_others_are_invalid(
    store: cvm.Store, page_type: cvm.PageType
) -> None:
    key = f"{page_type.value}/one"
    content = REALISTIC[page_type]
    written = store.put(key, type=page_type, content=content, **extra_args(page_type))
    policy = cvm.POLICIES[page_type]
    assert written.fidelity is F.FULL
    assert written.content == content
    assert written.pin is policy.default_pin
    counts: list[int] = []
    for fidelity in policy.ladder:
        page = store.page(key, fidelity=fidelity, **where(page_type))
        assert page.fidelity is fidelity
        assert page.type is page_type
        assert page.version == 1
        assert page.content.strip()
        assert page.tokens == store.counter.count(page.content)
        counts.append(page.tokens)
    assert counts == sorted(counts, reverse=True)
    for fidelity in F:
        if fidelity in policy.ladder:
            continue
        with pytest.raises(cvm.InvalidInput, match=fidelity.value):
            store.page(key, fidelity=fidelity, **where(page_type))
    with pytest.raises(cvm.InvalidInput):
        store.page(key, fidelity="thumbnail", **where(page_type))


@pytest.mark.parametrize("page_type", list(T), ids=lambda t: t.value)
def test_fidelity_accepts_string_names(store: cvm.Store, page_type: cvm.PageType) -> None:
    key = f"{page_type.value}/named"
    store.put(key, type=page_type.value, content=REALISTIC[page_type], **extra_args(page_type))
    for fidelity in cvm.POLICIES[page_type].ladder:
        assert store.page(key, fidelity=fidelity.value, **where(page_type)).fidelity is fidelity


# --- pointer ----------------------------------------------------------------------------------


def test_pointer_parses_and_resolves_to_exact_full_content(store: cvm.Store) -> None:
    content = REALISTIC[T.EVIDENCE] + "\n<|endoftext|> trailing text with ünïcödé and 🙂\n"
    store.put(
        "evidence/grep", type=T.EVIDENCE, content=content, session="s1", provenance=PROVENANCE
    )
    v2 = content + "one more line\n"
    store.put(
        "evidence/grep",
        type=T.EVIDENCE,
        content=v2,
        session="s1",
        provenance=PROVENANCE,
        expected_version=1,
    )
    for version, full in ((1, content), (2, v2)):
        pointer = store.page("evidence/grep", session="s1", fidelity=F.POINTER, version=version)
        assert parse_pointer(pointer.content) == ("evidence/grep", version)
        assert pointer.tokens < store.page("evidence/grep", session="s1", version=version).tokens
        resolved = store.resolve(pointer.content, project="default", session="s1")
        assert resolved.content == full
        assert resolved.fidelity is F.FULL
        assert resolved.version == version
    # A pointer names the full size in tokens, for the model to weigh resolving it.
    pointer = store.page("evidence/grep", session="s1", fidelity=F.POINTER)
    assert f"{store.counter.count(v2)}tok" in pointer.content
    # A plain key resolves to the current version; another session cannot resolve it.
    assert store.resolve("evidence/grep", session="s1").content == v2
    with pytest.raises(cvm.NotFound):
        store.resolve(pointer.content, session="s2")


def test_parse_pointer_rejects_non_pointers() -> None:
    assert parse_pointer("plain text") is None
    assert parse_pointer("[ptr key-without-version]") is None
    assert parse_pointer("[ptr a@b@7 evidence 10tok: t]") == ("a@b", 7)


# --- compressed -------------------------------------------------------------------------------


def long_text() -> str:
    topics = ["parser", "journal", "tokenizer", "assembler", "migration", "recovery"]
    return "\n".join(
        f"Step {i}: the {topics[i % len(topics)]} module handles case {i * 7} "
        f"and logs {topics[(i * 5) % len(topics)]} events to the audit table."
        for i in range(30)
    )


@pytest.mark.parametrize("page_type", [T.PREFERENCE, T.EVIDENCE, T.CONVERSATION])
def test_compressed_is_an_extract_of_about_half(store: cvm.Store, page_type: cvm.PageType) -> None:
    content = long_text()
    store.put("page/long", type=page_type, content=content, **extra_args(page_type))
    full = store.page("page/long", fidelity=F.FULL, **where(page_type))
    compressed = store.page("page/long", fidelity=F.COMPRESSED, **where(page_type))
    structured = store.page("page/long", fidelity=F.STRUCTURED, **where(page_type))
    assert full.tokens > COMPRESS_MIN_TOKENS
    assert compressed.tokens <= full.tokens // 2
    assert compressed.tokens >= structured.tokens
    assert compressed.content != content
    original_lines = set(content.splitlines())
    kept = [line for line in compressed.content.splitlines() if line != "…"]
    assert kept, compressed.content
    assert all(line in original_lines for line in kept), compressed.content
    # Lines stay in their original order, and the opening line is kept.
    order = [content.splitlines().index(line) for line in kept]
    assert order == sorted(order)
    assert kept[0] == content.splitlines()[0]


@pytest.mark.parametrize("page_type", [T.PREFERENCE, T.EVIDENCE, T.CONVERSATION])
def test_short_text_is_its_own_compressed_form(store: cvm.Store, page_type: cvm.PageType) -> None:
    content = "\n".join(f"note {i}: keep this line as written" for i in range(6))
    assert store.counter.count(content) <= COMPRESS_MIN_TOKENS
    store.put("page/short", type=page_type, content=content, **extra_args(page_type))
    full = store.page("page/short", fidelity=F.FULL, **where(page_type))
    compressed = store.page("page/short", fidelity=F.COMPRESSED, **where(page_type))
    assert compressed.content == full.content == content
    assert compressed.tokens == full.tokens


def test_extractive_compressor_respects_its_target() -> None:
    counter = cvm.TokenCounter()
    content = long_text()
    for target in (10, 40, 100, 200):
        out = cvm.ExtractiveCompressor().compress(content, target, counter.count)
        assert 0 < counter.count(out) <= target
        assert out == cvm.ExtractiveCompressor().compress(content, target, counter.count)


# --- a pluggable compressor -------------------------------------------------------------------


class HeadWordsCompressor:
    """Keeps a marker and the first words: deterministic, and never below the fields."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def compress(self, text: str, target_tokens: int, count: Callable[[str], int]) -> str:
        self.calls.append((len(text), target_tokens))
        assert count("hello world") == 2
        return "CUSTOM " + " ".join(text.split()[:60])


class FirstWordCompressor:
    def compress(self, text: str, target_tokens: int, count: Callable[[str], int]) -> str:
        return text.split()[0]


def test_pluggable_compressor_output_is_the_compressed_fidelity(tmp_path: Path) -> None:
    compressor = HeadWordsCompressor()
    assert isinstance(compressor, cvm.Compressor)
    content = long_text()
    with cvm.Store.open(tmp_path / "custom.db", compressor=compressor) as store:
        assert store.compressor is compressor
        store.put("evidence/log", type=T.EVIDENCE, content=content, **extra_args(T.EVIDENCE))
        compressed = store.page("evidence/log", session="s1", fidelity=F.COMPRESSED)
        full_tokens = store.counter.count(content)
        assert compressed.content == "CUSTOM " + " ".join(content.split()[:60])
        assert compressed.tokens == store.counter.count(compressed.content)
        assert compressor.calls == [(len(content), full_tokens // 2)]
        # A short page is never handed to the compressor.
        store.put("evidence/short", type=T.EVIDENCE, content="ok", **extra_args(T.EVIDENCE))
        assert len(compressor.calls) == 1
        assert store.check().ok


def test_compressor_output_below_the_fields_falls_back_to_the_fields(tmp_path: Path) -> None:
    content = long_text()
    with cvm.Store.open(tmp_path / "first.db", compressor=FirstWordCompressor()) as store:
        store.put("evidence/log", type=T.EVIDENCE, content=content, **extra_args(T.EVIDENCE))
        compressed = store.page("evidence/log", session="s1", fidelity=F.COMPRESSED)
        structured = store.page("evidence/log", session="s1", fidelity=F.STRUCTURED)
        # "Step" alone would sit below the structured floor; the fields take its place.
        assert compressed.content == structured.content
        assert compressed.tokens == structured.tokens
        assert store.check().ok
