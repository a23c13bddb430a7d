"""The append layout (revision 0006): an append stores its segment, and every fidelity of every
version still reads back exactly as a from-scratch build of that version's whole text.

The oracle below keeps every version's texts whole in memory and counts them whole with
tiktoken; it applies the same rules as the engine (what an appended version's compressed and
structured levels are, when a level gives way to the one above), but never an incremental count,
a tail, a fold or the store's layout. Field derivation is checked against the pre-0006 code path,
kept here verbatim as ``legacy_fields``.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import run_alembic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clawvm_store as cvm
from clawvm_store.errors import EncodingUnavailable
from clawvm_store.journal import merge_fields
from clawvm_store.pages import POLICIES, Fidelity, PageType, Scope
from clawvm_store.representations import (
    COMPRESS_MIN_TOKENS,
    ExtractiveCompressor,
    build_content_representations,
    compress_piece,
    derive_fields,
    extend_count,
    fields_from_fold,
    fold_extend,
    fold_of,
    pointer_text,
    render_fields,
    title_of,
    validate_fields,
)
from clawvm_store.tokens import TokenCounter, safe_tail_start

COUNTER = TokenCounter()

# Text that stresses the tokenizer at seams: newlines and CRs, spaces before newlines,
# punctuation, digits, contractions, non-Latin letters, combining marks, emoji.
ALPHABET = st.sampled_from(
    [
        *"ab zZ09.,'-:#*/[]()\n\n\r\t\x0b\x0c ",
        "'s",
        "'ll",
        "é",
        "ß",
        "中",
        "\u0301",
        "😀",
        "  ",
        "\n\n",
        ".\n",
    ]
)
TEXTS = st.lists(ALPHABET, min_size=1, max_size=40).map("".join)
WORDS = st.sampled_from(
    [
        "user:",
        "assistant:",
        "tool:",
        "Goal:",
        "Next:",
        "- [ ]",
        "- [x]",
        "1.",
        "must",
        "never",
        "deploy",
        "the",
        "API",
        "v2",
        "Ünïcode",
        "42",
        "#",
        "##",
        "café",
        "done.",
    ]
)
LINES = st.lists(WORDS, min_size=0, max_size=8).map(" ".join)
CONTENTS = st.lists(LINES, min_size=1, max_size=8).map("\n".join).filter(lambda s: s.strip() != "")


# -- tokens: an append re-tokenizes only from the last safe boundary -----------------------------


def _check_extended_counts(counter: TokenCounter, pieces: list[str]) -> None:
    text = pieces[0]
    tokens = counter.count(text)
    tail = text[safe_tail_start(text) :]
    for piece in pieces[1:]:
        tokens, tail = extend_count(counter.count, tokens, tail, piece)
        text = f"{text}\n{piece}"
        assert tokens == counter.count(text)
        assert text.endswith(tail)
        assert tail == text[safe_tail_start(text) :]


@settings(max_examples=1500, deadline=None)
@given(st.lists(TEXTS, min_size=1, max_size=8))
def test_extended_counts_equal_whole_counts_cl100k(pieces: list[str]) -> None:
    _check_extended_counts(COUNTER, pieces)


def test_extended_counts_equal_whole_counts_o200k() -> None:
    try:
        counter = TokenCounter("o200k_base")
    except EncodingUnavailable:
        pytest.skip("o200k_base is not available offline here")

    @settings(max_examples=300, deadline=None)
    @given(st.lists(TEXTS, min_size=1, max_size=8))
    def check(pieces: list[str]) -> None:
        _check_extended_counts(counter, pieces)

    check()


@settings(max_examples=800, deadline=None)
@given(st.lists(TEXTS, min_size=0, max_size=10))
def test_joined_counts_equal_whole_counts(parts: list[str]) -> None:
    assert COUNTER.count_joined(parts) == COUNTER.count("".join(parts))
    # As a prompt is put together: blocks after separators.
    blocks = [f"{part}\n\n" for part in parts[:-1]] + parts[-1:]
    assert COUNTER.count_joined(blocks) == COUNTER.count("".join(blocks))


def test_safe_tail_start_examples() -> None:
    assert safe_tail_start("one line") == 0
    assert safe_tail_start("first\nsecond") == 6
    # A line that starts with a space, a newline or punctuation is no boundary: look further up.
    assert safe_tail_start("first\nsecond\n third\n\n/fourth") == 6
    assert safe_tail_start("first\n- [x] step") == 6
    assert safe_tail_start("a\n\n") == 0


# -- fields: the fold gives exactly what the pre-0006 derivation gave ------------------------------

_RULE_LINE = re.compile(
    r"^\s*(?:[-*•]|\d+[.)])\s+|\b(?:must|never|always|do not|don't|should|shall|required?|only)\b",
    re.IGNORECASE,
)


def _first_sentences(content: str, max_words: int) -> str:
    words = content.split()
    return " ".join(words[:max_words]) + ("…" if len(words) > max_words else "")


def _rule_lines(content: str, limit: int = 12) -> list[str]:
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    rules = [line for line in lines if _RULE_LINE.search(line)]
    chosen = rules or lines
    stripped = [re.sub(r"^(?:[-*•]|\d+[.)])\s+", "", line) for line in chosen[:limit]]
    return [_first_sentences(line, 40) for line in stripped if line] or ["(empty)"]


def legacy_fields(page_type: PageType, content: str, *, key: str, timestamp: str) -> dict[str, Any]:
    """representations.derive_fields as it was before revision 0006 (whole text, one pass)."""
    if page_type is PageType.BOOTSTRAP:
        return {"title": title_of(content), "rules": _rule_lines(content)}
    if page_type is PageType.CONSTRAINT:
        return {"rules": _rule_lines(content)}
    if page_type is PageType.PLAN:
        lines = [line.strip() for line in content.splitlines() if line.strip()]
        goal = next(
            (ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("goal:")),
            title_of(content, max_words=20, max_chars=160),
        )
        steps = [
            re.sub(r"^(?:[-*•]|\d+[.)])\s+(?:\[[ xX]\]\s*)?", "", ln)
            for ln in lines
            if re.match(r"^(?:[-*•]|\d+[.)])\s+", ln)
        ]
        open_steps = [
            re.sub(r"^(?:[-*•]|\d+[.)])\s+\[ \]\s*", "", ln)
            for ln in lines
            if re.match(r"^(?:[-*•]|\d+[.)])\s+\[ \]", ln)
        ]
        current = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lines
                if re.match(r"^(current|next|now)( step)?:", ln, re.IGNORECASE)
            ),
            open_steps[0] if open_steps else (steps[0] if steps else goal),
        )
        return {"goal": goal or "(unstated)", "current_step": current or goal or "(unstated)"}
    if page_type is PageType.PREFERENCE:
        return {
            "statement": _first_sentences(content, 30),
            "scope": "project",
            "provenance": "unspecified",
        }
    if page_type is PageType.EVIDENCE:
        return {"source": key, "summary": _first_sentences(content, 20)}
    roles = sorted({m.group(1).lower() for m in re.finditer(r"^(\w+):", content, re.MULTILINE)})
    return {
        "span_id": key,
        "start": timestamp,
        "end": timestamp,
        "roles": roles,
        "summary": _first_sentences(content, 8),
    }


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(PageType)), st.lists(CONTENTS, min_size=1, max_size=6))
def test_fold_gives_the_legacy_fields_of_the_whole_text(
    page_type: PageType, segments: list[str]
) -> None:
    stamp = "2026-12-04T03:00:00Z"
    scope = Scope.PROJECT
    fold = fold_of(page_type, segments[0], timestamp=stamp)
    whole = segments[0]
    for segment in segments[1:]:
        fold = fold_extend(page_type, fold, segment)
        whole = f"{whole}\n{segment}"
    got = fields_from_fold(page_type, fold, key="k", scope=scope, provenance=None)
    assert got == legacy_fields(page_type, whole, key="k", timestamp=stamp)
    assert derive_fields(
        page_type, whole, key="k", scope=scope, provenance=None, timestamp=stamp
    ) == legacy_fields(page_type, whole, key="k", timestamp=stamp)


# -- the store: every fidelity of every version equals the oracle's whole build --------------------

TYPES = [
    PageType.CONVERSATION,
    PageType.PLAN,
    PageType.EVIDENCE,
    PageType.PREFERENCE,
    PageType.BOOTSTRAP,
    PageType.CONSTRAINT,
]
PROVENANCE = {"uri": "file:///work/notes.txt"}


class Clock:
    """A deterministic clock, so the oracle knows every version's timestamp."""

    def __init__(self) -> None:
        self.ticks = 0

    def now(self) -> str:
        return f"2026-12-04T03:{self.ticks // 60:02d}:{self.ticks % 60:02d}Z"

    def __call__(self) -> str:
        self.ticks += 1
        return self.now()


class Oracle:
    """Whole texts per version, built from scratch by the rules, counted whole."""

    def __init__(self) -> None:
        self.versions: dict[str, list[dict[Fidelity, tuple[str, int]] | None]] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self.compressor = ExtractiveCompressor()

    def head(self, key: str) -> dict[Fidelity, tuple[str, int]] | None:
        history = self.versions.get(key)
        return history[-1] if history else None

    def _finish(
        self,
        key: str,
        page_type: PageType,
        levels: dict[Fidelity, tuple[str, int, Fidelity]],
        title: str,
    ) -> None:
        version = len(self.versions.get(key, [])) + 1
        out = {f: (text, tokens) for f, (text, tokens, _) in levels.items()}
        if POLICIES[page_type].allows(Fidelity.POINTER):
            above = levels[Fidelity.STRUCTURED]
            full_tokens = levels[Fidelity.FULL][1]
            for candidate in (title, None):
                text = pointer_text(key, version, page_type, candidate, full_tokens)
                if COUNTER.count(text) <= above[1]:
                    out[Fidelity.POINTER] = (text, COUNTER.count(text))
                    break
            else:
                out[Fidelity.POINTER] = (above[0], above[1])
        self.versions.setdefault(key, []).append(out)
        self.meta[key]["sources"] = {f: src for f, (_, _, src) in levels.items()}

    def write_whole(
        self,
        key: str,
        page_type: PageType,
        content: str,
        structured: Mapping[str, Any] | None,
        stamp: str,
    ) -> None:
        reps = build_content_representations(
            page_type,
            content,
            key=key,
            scope=Scope.PROJECT,
            provenance=PROVENANCE if page_type is PageType.EVIDENCE else None,
            structured=structured,
            timestamp=stamp,
            counter=COUNTER,
            compressor=self.compressor,
        )
        self.meta[key] = {
            "type": page_type,
            "fields": reps.fields,
            "started": stamp,
            "structured": structured,
        }
        self._finish(
            key,
            page_type,
            {lv.fidelity: (lv.text, lv.tokens, lv.source) for lv in reps.levels},
            reps.title,
        )

    def append(
        self, key: str, segment: str, structured: Mapping[str, Any] | None, stamp: str
    ) -> None:
        meta = self.meta[key]
        page_type: PageType = meta["type"]
        head = self.head(key)
        assert head is not None
        full = f"{head[Fidelity.FULL][0]}\n{segment}"
        full_tokens = COUNTER.count(full)
        if structured is None:
            fields = legacy_fields(page_type, full, key=key, timestamp=meta["started"])
            if page_type is PageType.CONVERSATION:
                fields["end"] = stamp
            if page_type is PageType.EVIDENCE:
                fields["source"] = "uri:file:///work/notes.txt"
            fields = validate_fields(page_type, fields)
        else:
            fields = validate_fields(page_type, structured)
        levels: dict[Fidelity, tuple[str, int, Fidelity]] = {
            Fidelity.FULL: (full, full_tokens, Fidelity.FULL)
        }
        text = render_fields(fields)
        structured_level = (
            (text, COUNTER.count(text), Fidelity.STRUCTURED)
            if COUNTER.count(text) <= full_tokens
            else (full, full_tokens, Fidelity.FULL)
        )
        if POLICIES[page_type].allows(Fidelity.COMPRESSED):
            previous = head[Fidelity.COMPRESSED]
            previous_source = meta["sources"][Fidelity.COMPRESSED]
            compressed = (full, full_tokens, Fidelity.FULL)
            if previous_source is not Fidelity.STRUCTURED:
                piece = compress_piece(
                    segment, COUNTER.count(segment), self.compressor, COUNTER.count
                )
                candidate = f"{previous[0]}\n{piece}"
                tokens = COUNTER.count(candidate)
                if structured_level[1] <= tokens <= full_tokens:
                    source = (
                        Fidelity.FULL
                        if piece == segment and previous_source is Fidelity.FULL
                        else Fidelity.COMPRESSED
                    )
                    compressed = (candidate, tokens, source)
            levels[Fidelity.COMPRESSED] = compressed
        levels[Fidelity.STRUCTURED] = structured_level
        meta["fields"] = fields
        self._finish(key, page_type, levels, title_of(full))

    def delete(self, key: str) -> None:
        self.versions.setdefault(key, []).append(None)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 14))):
        key = draw(st.sampled_from(["a", "b", "c"]))
        kind = draw(
            st.sampled_from(
                ["set", "append", "append", "append", "merge", "merge_fields", "delete"]
            )
        )
        ops.append((kind, key, draw(st.sampled_from(TYPES)), draw(CONTENTS)))
    return ops


def _page_key(key: str, page_type: PageType) -> str:
    return f"{page_type.value}/{key}"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations(), st.randoms(use_true_random=False))
def test_every_version_reads_back_as_the_oracle_builds_it(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[Any, ...]], rnd: Any
) -> None:
    path = tmp_path_factory.mktemp("layout") / "store.db"
    clock = Clock()
    oracle = Oracle()
    kinds: dict[str, PageType] = {}
    with cvm.Store.open(path, clock=clock) as store:
        for kind, short, wanted_type, content in ops:
            page_type = kinds.get(short, wanted_type)
            key = _page_key(short, page_type)
            live = oracle.head(key) is not None
            history = store.history(key) if key in oracle.versions else []
            version = history[-1].version if history else None
            provenance = PROVENANCE if page_type is PageType.EVIDENCE else None
            if kind == "delete":
                if not live or page_type in (PageType.BOOTSTRAP, PageType.CONSTRAINT):
                    continue  # hard pins cannot be deleted; nothing to delete
                store.put(
                    key,
                    type=page_type,
                    content=None,
                    op="delete",
                    expected_version=version,
                    scope="project",
                )
                oracle.delete(key)
                continue
            if kind == "set" or not live:
                store.put(
                    key,
                    type=page_type,
                    content=content,
                    op="set",
                    expected_version=version,
                    provenance=provenance,
                    scope="project",
                )
                oracle.write_whole(key, page_type, content, None, clock.now())
                kinds[short] = page_type
                continue
            if kind == "append":
                store.put(key, type=page_type, content=content, op="append", scope="project")
                oracle.append(key, content, None, clock.now())
                continue
            fields = dict(oracle.meta[key]["fields"])
            if page_type is PageType.PLAN:
                extra = {"steps": [content.split("\n")[0][:20] or "step"]}
            elif page_type is PageType.CONVERSATION:
                extra = {"roles": ["merged"]}
            else:
                extra = {}
            merged, _ = merge_fields(fields, extra, may_overwrite=False)
            if kind == "merge":
                store.put(
                    key,
                    type=page_type,
                    content=content,
                    op="merge",
                    structured=extra,
                    scope="project",
                )
                oracle.append(key, content, merged, clock.now())
            else:
                store.put(
                    key, type=page_type, content=None, op="merge", structured=extra, scope="project"
                )
                whole = oracle.head(key)[Fidelity.FULL][0]  # type: ignore[index]
                oracle.write_whole(key, page_type, whole, merged, clock.now())
                oracle.meta[key]["started"] = oracle.meta[key]["started"]
        # Every version of every page, at every fidelity, in a random order.
        wanted = [
            (key, number, fidelity)
            for key, history in oracle.versions.items()
            for number, levels in enumerate(history, start=1)
            if levels is not None
            for fidelity in levels
        ]
        rnd.shuffle(wanted)
        for key, number, fidelity in wanted:
            expected_text, expected_tokens = oracle.versions[key][number - 1][fidelity]  # type: ignore[index]
            page = store.page(key, fidelity=fidelity, version=number)
            if oracle.meta[key]["type"] is PageType.CONVERSATION:
                # The span runs from the first write of its text to the last: the clock ticks
                # several times per write, so compare the bounds' order and the rest exactly.
                bounds = re.findall(r"(?:start|end): (\S+)", page.content)
                assert bounds == [] or (len(bounds) == 2 and bounds[0] <= bounds[1])
                expected_text = re.sub(r"(start|end): \S+", r"\1: *", expected_text)
                got = re.sub(r"(start|end): \S+", r"\1: *", page.content)
                assert (key, number, fidelity, got) == (key, number, fidelity, expected_text)
            else:
                assert (key, number, fidelity, page.content) == (
                    key,
                    number,
                    fidelity,
                    expected_text,
                )
            assert (key, number, fidelity, page.tokens) == (key, number, fidelity, expected_tokens)
            assert page.tokens == COUNTER.count(page.content)
        assert store.check().ok, store.check().findings


# -- storage: an append stores its segment ---------------------------------------------------------


def _stored_bytes(path: Path) -> int:
    with sqlite3.connect(path) as raw:
        return int(
            raw.execute(
                "SELECT COALESCE(SUM(LENGTH(CAST(content AS BLOB))), 0) FROM representations"
            ).fetchone()[0]
        )


def test_appends_store_segments_not_copies(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    segment = "user: please look at module {n}\nassistant: module {n} reads the config file first"
    stored_at: dict[int, int] = {}
    with cvm.Store.open(path) as store:
        sess = store.session("s-1")
        for n in range(300):
            sess.stage(
                "conversation/main", type="conversation", op="append", content=segment.format(n=n)
            )
            assert sess.end_turn().rejected == []
            if n + 1 in (150, 300):
                stored_at[n + 1] = _stored_bytes(path)
        page = store.page("conversation/main", session="s-1")
        assert page.version == 300
        assert page.content == "\n".join(segment.format(n=n) for n in range(300))
        assert page.tokens == COUNTER.count(page.content)
        assert store.check().ok
    # Each version stores its segment once (the compressed piece is the same short segment,
    # shared with full) plus its small structured and pointer texts: the bytes grow with the
    # versions, where 300 whole copies would have grown with their square.
    assert stored_at[300] <= 2.05 * stored_at[150], stored_at
    with sqlite3.connect(path) as raw:
        shared = raw.execute(
            "SELECT COUNT(*) FROM representations WHERE fidelity = 'compressed' AND same_as = 'full'"
        ).fetchone()[0]
        chained = raw.execute(
            "SELECT COUNT(*) FROM representations WHERE fidelity = 'full' AND chain_start = 1"
        ).fetchone()[0]
        longest = raw.execute(
            "SELECT MAX(LENGTH(content)) FROM representations WHERE fidelity = 'full'"
        ).fetchone()[0]
    assert (shared, chained) == (299, 299)
    assert longest == max(len(segment.format(n=n)) for n in range(300))


def test_long_segments_compress_piece_by_piece(tmp_path: Path) -> None:
    words = [
        "the",
        "build",
        "reads",
        "configuration",
        "files",
        "then",
        "compiles",
        "each",
        "module",
        "and",
        "links",
        "them",
    ]
    long_segment = "\n".join(
        " ".join(words[(i + j) % len(words)] for j in range(12)) for i in range(12)
    )
    assert COUNTER.count(long_segment) > COMPRESS_MIN_TOKENS
    with cvm.Store.open(tmp_path / "store.db") as store:
        store.put(
            "evidence/log",
            type="evidence",
            content=long_segment,
            provenance=PROVENANCE,
            session="s",
        )
        for _ in range(3):
            store.put(
                "evidence/log", type="evidence", content=long_segment, op="append", session="s"
            )
        page = store.page("evidence/log", session="s", fidelity="compressed")
        full = store.page("evidence/log", session="s")
        assert page.tokens == COUNTER.count(page.content) < full.tokens
        assert full.content == "\n".join([long_segment] * 4)


def test_check_finds_a_broken_chain(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with cvm.Store.open(path) as store:
        for n in range(4):
            store.put(
                "conversation/c",
                type="conversation",
                content=f"user: turn {n}",
                op="append" if n else "set",
                session="s",
            )
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM representations WHERE version = 2 AND fidelity = 'full'")
    with cvm.Store.open(path) as store:
        findings = store.check().findings
        assert {f.code for f in findings} >= {"fidelity_missing", "layout"}
        with pytest.raises(cvm.ClawVMError, match="gap"):
            store.page("conversation/c", session="s")


@pytest.mark.parametrize("keep", [1, 3, 7])
def test_gc_keeps_every_staying_version_readable(tmp_path: Path, keep: int) -> None:
    from clawvm_store.maintenance import gc

    long_line = " ".join(f"word{i} means module {i} loads config" for i in range(14))
    with cvm.Store.open(tmp_path / "store.db") as store:
        texts: list[str] = []
        for n in range(12):
            segment = f"user: turn {n}\n{long_line}" if n % 3 == 0 else f"assistant: reply {n}"
            store.put(
                "conversation/c",
                type="conversation",
                content=segment,
                op="append" if n else "set",
                session="s",
            )
            texts.append(f"{texts[-1]}\n{segment}" if texts else segment)
        before = {
            (v, f): store.page("conversation/c", session="s", version=v, fidelity=f).content
            for v in range(1, 13)
            for f in Fidelity
        }
        report = gc(store, keep_versions=keep, dry_run=False)
        assert len(report.removed) == 12 - keep
        assert store.check().ok, store.check().findings
        for version in range(13 - keep, 13):
            page = store.page("conversation/c", session="s", version=version)
            assert page.content == texts[version - 1]
            for fidelity in Fidelity:
                got = store.page("conversation/c", session="s", version=version, fidelity=fidelity)
                assert got.content == before[(version, fidelity)]
        # And the chain goes on from what stayed.
        store.put(
            "conversation/c",
            type="conversation",
            content="user: after gc",
            op="append",
            session="s",
        )
        assert store.page("conversation/c", session="s").content == f"{texts[-1]}\nuser: after gc"
        assert store.check().ok


# -- revision 0006 converts a store written in the 0005 layout -------------------------------------


def test_revision_0006_converts_full_copies_to_segments(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    texts = ["user: hello", "assistant: hi there", "user: read a.py", "assistant: done"]
    with cvm.Store.open(path) as store:
        for n, text in enumerate(texts):
            store.put(
                "conversation/c",
                type="conversation",
                content=text,
                op="append" if n else "set",
                session="s",
            )
        store.put("plan/p", type="plan", content="Goal: ship\n- [ ] one", session="s")
        store.put(
            "plan/p", type="plan", content="- [ ] two", op="merge", structured={}, session="s"
        )
        before = {
            (key, v, f): store.page(key, session="s", version=v, fidelity=f)
            for key, versions in (("conversation/c", 4), ("plan/p", 2))
            for v in range(1, versions + 1)
            for f in POLICIES[PageType(key.split("/")[0])].ladder
        }
    # Back to the 0005 layout: every appended version holds a whole copy of its text again.
    run_alembic(path, "downgrade", "0005")
    with sqlite3.connect(path) as raw:
        columns = {row[1] for row in raw.execute("PRAGMA table_info(representations)")}
        assert "chain_start" not in columns
        copies = raw.execute(
            "SELECT r.version, r.content FROM representations r JOIN pages p ON p.id = r.page_id"
            " WHERE p.key = 'conversation/c' AND r.fidelity = 'full' ORDER BY r.version"
        ).fetchall()
    assert copies == [(n + 1, "\n".join(texts[: n + 1])) for n in range(4)]
    # Opening migrates to the head, converting in one transaction; nothing reads differently.
    with cvm.Store.open(path) as store:
        assert store.check().ok, store.check().findings
        for (key, version, fidelity), page in before.items():
            again = store.page(key, session="s", version=version, fidelity=fidelity)
            assert (again.content, again.tokens) == (page.content, page.tokens)
        store.put(
            "conversation/c", type="conversation", content="user: thanks", op="append", session="s"
        )
        assert store.page("conversation/c", session="s").content == "\n".join(
            [*texts, "user: thanks"]
        )
        assert store.check().ok
    with sqlite3.connect(path) as raw:
        pieces = raw.execute(
            "SELECT r.version, r.content, r.chain_start FROM representations r"
            " JOIN pages p ON p.id = r.page_id WHERE p.key = 'conversation/c'"
            " AND r.fidelity = 'full' ORDER BY r.version"
        ).fetchall()
    assert pieces == [
        (1, texts[0], None),
        (2, texts[1], 1),
        (3, texts[2], 1),
        (4, texts[3], 1),
        (5, "user: thanks", 1),
    ]


def test_retention_keeps_per_type_versions(tmp_path: Path) -> None:
    from clawvm_store.maintenance import gc

    path = tmp_path / "store.db"
    with cvm.Store.open(path, retention={"conversation": 3, "evidence": 1}) as store:
        for n in range(6):
            store.put(
                "conversation/c",
                type="conversation",
                content=f"user: turn {n}",
                op="append" if n else "set",
                session="s",
            )
            store.put(
                "evidence/e",
                type="evidence",
                content=f"output {n}",
                provenance=PROVENANCE,
                expected_version=n or None,
                session="s",
            )
            store.put(
                "plan/p",
                type="plan",
                content=f"Goal: g\n- [ ] step {n}",
                expected_version=n or None,
                session="s",
            )
        report = gc(store, dry_run=False)  # the store's own policy
        assert report.retention == {"conversation": 3, "evidence": 1}
        assert sorted((ref.key, ref.version) for ref in report.removed) == [
            ("conversation/c", 1),
            ("conversation/c", 2),
            ("conversation/c", 3),
            ("evidence/e", 1),
            ("evidence/e", 2),
            ("evidence/e", 3),
            ("evidence/e", 4),
            ("evidence/e", 5),
        ]
        assert [v.version for v in store.history("plan/p", session="s")] == [1, 2, 3, 4, 5, 6]
        assert store.page("conversation/c", session="s", version=4).content == "\n".join(
            f"user: turn {n}" for n in range(4)
        )
        assert store.check().ok
    with pytest.raises(cvm.InvalidInput, match="unknown page type"):
        cvm.Store.open(path, retention={"chat": 3})
    with pytest.raises(cvm.InvalidInput, match="at least 1"):
        cvm.Store.open(path, retention={"evidence": 0})


def test_cli_gc_keep_by_type(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from clawvm_store.cli import app

    path = tmp_path / "store.db"
    with cvm.Store.open(path) as store:
        for n in range(4):
            store.put(
                "conversation/c",
                type="conversation",
                content=f"user: turn {n}",
                op="append" if n else "set",
                session="s",
            )
    runner = CliRunner()
    result = runner.invoke(app, ["--db", str(path), "gc", "--keep", "conversation=2", "--apply"])
    assert result.exit_code == 0, result.output
    assert any(line.startswith("removed 2 versions") for line in result.output.splitlines())
    result = runner.invoke(app, ["--db", str(path), "gc", "--keep", "conversation"])
    assert result.exit_code == 2 and "expected TYPE=N" in result.output
    result = runner.invoke(app, ["--db", str(path), "gc"])
    assert result.exit_code == 2 and "give --keep-versions N or --keep TYPE=N" in result.output
    with cvm.Store.open(path) as store:
        assert [v.version for v in store.history("conversation/c", session="s")] == [3, 4]
        assert store.page("conversation/c", session="s").content == "\n".join(
            f"user: turn {n}" for n in range(4)
        )
