"""Every fidelity of a page version, produced at write time with its exact token count.

Assembly never compresses or summarizes anything: it only looks up the texts built here. The
rule that keeps the assembler's arithmetic honest is monotonicity along the ladder:
``tokens(pointer) <= tokens(structured) <= tokens(compressed) <= tokens(full)``. When a derived
representation would cost more than the level above it (a tiny page whose pointer is longer than
the page itself), the cheaper text of the level above is stored in its place, and the row records
which fidelity its text really came from (``source``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from .errors import SchemaInvalid
from .pages import POLICIES, Fidelity, PageType, Scope
from .tokens import TokenCounter, safe_tail_start

# Texts at or under this many tokens are already cheap; compressing them saves nothing worth
# the loss of wording, so their compressed fidelity is the full text.
COMPRESS_MIN_TOKENS = 64

_POINTER_RE = re.compile(r"^\[ptr (?P<key>\S+)@(?P<version>\d+)[\s\]]")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+")
_WORD = re.compile(r"[^\W\d_]{3,}|\d+", re.UNICODE)
_RULE_LINE = re.compile(
    r"^\s*(?:[-*•]|\d+[.)])\s+|\b(?:must|never|always|do not|don't|should|shall|required?|only)\b",
    re.IGNORECASE,
)
_STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "that",
        "this",
        "with",
        "from",
        "are",
        "was",
        "were",
        "have",
        "has",
        "had",
        "not",
        "but",
        "you",
        "your",
        "our",
        "their",
        "its",
        "into",
        "than",
        "then",
        "them",
        "they",
        "there",
        "which",
        "what",
        "when",
        "where",
        "who",
        "will",
        "would",
        "can",
        "could",
        "should",
        "about",
        "also",
        "been",
        "being",
        "more",
        "most",
        "such",
        "only",
        "other",
        "some",
        "any",
        "each",
        "all",
    ]
)


@runtime_checkable
class Compressor(Protocol):
    """Produces the ``compressed`` fidelity: a token-reduced text of a page's content.

    Plug in an LLM or LLMLingua-2 by implementing this one method. It must be deterministic for
    a given input (the same content must always give the same compressed text) because fidelities
    are produced once, at write time, and their token counts are stored.
    """

    def compress(self, text: str, target_tokens: int, count: Callable[[str], int]) -> str:
        """Return a text of roughly ``target_tokens`` tokens or fewer that keeps ``text``'s gist."""
        ...


@dataclass(frozen=True)
class _Segment:
    index: int
    text: str


def _segments(text: str) -> list[_Segment]:
    parts: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if len(line) > 200:
            parts.extend(piece for piece in _SENTENCE_SPLIT.split(line) if piece.strip())
        else:
            parts.append(line)
    return [_Segment(i, part) for i, part in enumerate(parts)]


def _truncate_to(text: str, target_tokens: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` (by characters, on a binary search) within the target."""
    if target_tokens <= 0:
        return ""
    if count(text) <= target_tokens:
        return text
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count(text[:middle] + "…") <= target_tokens:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "…" if low else ""


class ExtractiveCompressor:
    """The default compressor: keeps the most informative lines and sentences, in order.

    Each line (long lines are split into sentences) is scored by how many of the document's
    frequent content words it carries, normalised by its length, with a bonus for the first line
    (usually a heading or the gist). Segments are taken greedily by score while they fit the
    target and then emitted in their original order, with ``…`` marking each gap. Deterministic:
    ties fall back to position.
    """

    def compress(self, text: str, target_tokens: int, count: Callable[[str], int]) -> str:
        """Return the extract; see the class docstring for how segments are chosen."""
        segments = _segments(text)
        if not segments:
            return _truncate_to(text.strip(), target_tokens, count)
        # Tool outputs and logs repeat lines: each distinct line is tokenized, scored and
        # counted once.
        words_of: dict[str, frozenset[str]] = {}
        for segment in segments:
            if segment.text not in words_of:
                words_of[segment.text] = (
                    frozenset(w.lower() for w in _WORD.findall(segment.text)) - _STOPWORDS
                )
        frequencies = Counter(word for segment in segments for word in words_of[segment.text])
        base_scores = {
            line: sum(frequencies[w] for w in words) / (1.0 + len(line) / 80.0)
            for line, words in words_of.items()
        }

        def score(segment: _Segment) -> float:
            value = base_scores[segment.text]
            if segment.index == 0:
                value += 1_000.0  # the opening line almost always says what the text is
            return value

        ranked = sorted(segments, key=lambda s: (-score(s), s.index))
        costs: dict[str, int] = {}
        chosen: list[_Segment] = []
        used = 0
        for segment in ranked:
            cost = costs.get(segment.text)
            if cost is None:
                cost = costs[segment.text] = count(segment.text) + 1  # +1: the joining newline
            if used + cost <= target_tokens:
                chosen.append(segment)
                used += cost
        if not chosen:
            return _truncate_to(ranked[0].text, target_tokens, count)
        chosen.sort(key=lambda s: s.index)
        lines: list[str] = []
        previous = -1
        for segment in chosen:
            if segment.index != previous + 1 and lines:
                lines.append("…")
            lines.append(segment.text)
            previous = segment.index
        if previous != segments[-1].index:
            lines.append("…")
        result = "\n".join(lines)
        if count(result) > target_tokens:
            # The gap markers can tip a near-full extract over; drop from the end until it fits.
            while len(lines) > 1 and count("\n".join(lines)) > target_tokens:
                lines.pop()
            result = "\n".join(lines)
        return result


def canonical_json(value: Any) -> str:
    """Compact, key-sorted JSON: the one serialization used for payloads, checksums and fields."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def text_sha256(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes (lone surrogates kept, so damage never verifies)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def title_of(content: str, *, max_words: int = 6, max_chars: int = 48) -> str:
    """A short title: the first non-blank line, without markdown heading marks, shortened."""
    for line in content.splitlines():
        stripped = line.strip().lstrip("#").strip()
        if stripped:
            words = stripped.split()
            title = " ".join(words[:max_words])
            if len(words) > max_words or len(title) > max_chars:
                title = title[:max_chars].rstrip() + "…"
            return title
    return "(untitled)"


def derive_fields(
    page_type: PageType,
    content: str,
    *,
    key: str,
    scope: Scope,
    provenance: Mapping[str, Any] | None,
    timestamp: str,
) -> dict[str, Any]:
    """Structured fields derived from the content when the caller passes none.

    Derivation is a fold over the content's lines and words (:func:`fold_of`), so the fields of
    an appended version come from the previous version's fold plus the new segment alone.
    """
    return fields_from_fold(
        page_type,
        fold_of(page_type, content, timestamp=timestamp),
        key=key,
        scope=scope,
        provenance=provenance,
    )


# -- the fold: what derivation needs to know of a text, kept small ---------------------------------
# Every derived field depends only on a bounded prefix of the text (its first lines, rule lines or
# words) or on a union (a conversation's roles), so a fold of the text, extended segment by
# segment, gives exactly the fields of the whole text. Segments are joined by a newline, so lines
# and words never straddle a seam.

FOLD_LINES = 12  # rule lines and plain lines kept (the fields keep at most this many rules)
# Per type: the words of the first line kept (a title uses at most 6, a plan's fallback goal 20)
# and the leading words kept (a summary uses 8, 20 or 30), each plus one to know if there is more.
_FOLD_WORDS: dict[PageType, tuple[int, int]] = {
    PageType.BOOTSTRAP: (7, 0),
    PageType.CONSTRAINT: (7, 0),
    PageType.PLAN: (21, 0),
    PageType.PREFERENCE: (7, 31),
    PageType.EVIDENCE: (7, 21),
    PageType.CONVERSATION: (7, 9),
}
_BULLET = re.compile(r"^(?:[-*•]|\d+[.)])\s+")
_OPEN_STEP = re.compile(r"^(?:[-*•]|\d+[.)])\s+\[ \]")
_CURRENT = re.compile(r"^(current|next|now)( step)?:", re.IGNORECASE)
_ROLE = re.compile(r"^(\w+):", re.MULTILINE)

_FOLD_KEYS: dict[PageType, tuple[str, ...]] = {
    PageType.BOOTSTRAP: ("title", "rules", "lines"),
    PageType.CONSTRAINT: ("title", "rules", "lines"),
    PageType.PLAN: ("title", "goal", "current", "open", "step"),
    PageType.PREFERENCE: ("title", "words"),
    PageType.EVIDENCE: ("title", "words"),
    PageType.CONVERSATION: ("title", "words", "roles", "started"),
}


def fold_of(page_type: PageType, text: str, *, timestamp: str) -> dict[str, Any]:
    """The fold of a whole text, as written at ``timestamp``."""
    empty: dict[str, Any] = {
        "title": None,
        "rules": [],
        "lines": [],
        "goal": None,
        "current": None,
        "open": None,
        "step": None,
        "words": [],
        "roles": [],
        "started": timestamp,
    }
    wanted = _FOLD_KEYS[page_type]
    return fold_extend(page_type, {name: empty[name] for name in wanted}, text)


def fold_extend(page_type: PageType, fold: Mapping[str, Any], segment: str) -> dict[str, Any]:
    """The fold of ``text + "\\n" + segment`` from the fold of ``text`` and the segment alone."""
    state = {
        name: (list(value) if isinstance(value, list) else value) for name, value in fold.items()
    }
    title_words, lead_words = _FOLD_WORDS[page_type]
    if "words" in state and len(state["words"]) < lead_words:
        state["words"].extend(segment.split()[: lead_words - len(state["words"])])
    if "roles" in state:
        roles = set(state["roles"])
        roles.update(match.group(1).lower() for match in _ROLE.finditer(segment))
        state["roles"] = sorted(roles)
    needs_lines = (
        state.get("title") is None
        or ("rules" in state and len(state["rules"]) < FOLD_LINES)
        or ("lines" in state and len(state["lines"]) < FOLD_LINES)
        or any(state.get(name, "") is None for name in ("goal", "current", "open", "step"))
    )
    if not needs_lines:
        return state
    for raw in segment.splitlines():
        line = raw.strip()
        if not line:
            continue
        if state.get("title") is None:
            heading = line.lstrip("#").strip()
            if heading:
                state["title"] = heading.split()[:title_words]
        if "lines" in state:
            if len(state["lines"]) < FOLD_LINES:
                state["lines"].append(line)
            if len(state["rules"]) < FOLD_LINES and _RULE_LINE.search(line):
                state["rules"].append(line)
        if "goal" in state:
            if state["goal"] is None and line.lower().startswith("goal:"):
                state["goal"] = line.split(":", 1)[1].strip()
            if state["current"] is None and _CURRENT.match(line):
                state["current"] = line.split(":", 1)[1].strip()
            if state["open"] is None and _OPEN_STEP.match(line):
                state["open"] = re.sub(r"^(?:[-*•]|\d+[.)])\s+\[ \]\s*", "", line)
            if state["step"] is None and _BULLET.match(line):
                state["step"] = re.sub(r"^(?:[-*•]|\d+[.)])\s+(?:\[[ xX]\]\s*)?", "", line)
    return state


def _fold_title(fold: Mapping[str, Any], *, max_words: int = 6, max_chars: int = 48) -> str:
    """:func:`title_of` of the whole text, from the words of its first line kept in the fold."""
    words = fold.get("title")
    if not words:
        return "(untitled)"
    title = " ".join(words[:max_words])
    if len(words) > max_words or len(title) > max_chars:
        title = title[:max_chars].rstrip() + "…"
    return title


def _fold_rules(fold: Mapping[str, Any]) -> list[str]:
    chosen = fold["rules"] or fold["lines"]
    stripped = [re.sub(r"^(?:[-*•]|\d+[.)])\s+", "", line) for line in chosen]
    return [_first_words(line.split(), 40) for line in stripped if line] or ["(empty)"]


def _first_words(words: Sequence[str], max_words: int) -> str:
    return " ".join(words[:max_words]) + ("…" if len(words) > max_words else "")


def fields_from_fold(
    page_type: PageType,
    fold: Mapping[str, Any],
    *,
    key: str,
    scope: Scope,
    provenance: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The structured fields of a text, from its fold (see :func:`derive_fields`)."""
    if page_type is PageType.BOOTSTRAP:
        return {"title": _fold_title(fold), "rules": _fold_rules(fold)}
    if page_type is PageType.CONSTRAINT:
        return {"rules": _fold_rules(fold)}
    if page_type is PageType.PLAN:
        goal = fold["goal"]
        if goal is None:
            goal = _fold_title(fold, max_words=20, max_chars=160)
        current = fold["current"]
        if current is None:
            current = fold["open"] if fold["open"] is not None else fold["step"]
            if current is None:
                current = goal
        # The remaining steps stay in the full text; the invariant is goal + current step.
        return {"goal": goal or "(unstated)", "current_step": current or goal or "(unstated)"}
    if page_type is PageType.PREFERENCE:
        return {
            "statement": _first_words(fold["words"], 30),
            "scope": scope.value,
            "provenance": _provenance_text(provenance),
        }
    if page_type is PageType.EVIDENCE:
        return {
            "source": _provenance_text(provenance, default=key),
            "summary": _first_words(fold["words"], 20),
        }
    # conversation: a span from the first write of its text to now
    return {
        "span_id": key,
        "start": _compact_time(fold["started"]),
        "end": _compact_time(fold.get("ended") or fold["started"]),
        "roles": list(fold["roles"]),
        "summary": _first_words(fold["words"], 8),
    }


def _compact_time(timestamp: str) -> str:
    # Second precision is plenty for a span's bounds and costs far fewer tokens.
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", timestamp)
    return f"{match.group(1)}Z" if match else timestamp


def _provenance_text(provenance: Mapping[str, Any] | None, *, default: str = "unspecified") -> str:
    if not provenance:
        return default
    for field_name in ("tool_call", "uri", "page", "source"):
        if field_name in provenance:
            return f"{field_name}:{provenance[field_name]}"
    return canonical_json(dict(provenance))


def validate_fields(page_type: PageType, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``fields`` against the type's Pydantic model; raise ``SchemaInvalid`` if they fail."""
    model = POLICIES[page_type].fields_model
    try:
        validated = model.model_validate(dict(fields))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "fields"
        raise SchemaInvalid(
            f"structured fields for a {page_type.value} page are invalid: {where}: {first['msg']}",
            reason="SCHEMA_INVALID",
        ) from None
    dumped: dict[str, Any] = validated.model_dump(mode="json")
    return dumped


def render_fields(fields: Mapping[str, Any]) -> str:
    """The structured fidelity's text: one ``name: value`` line per field, in a fixed order.

    Cheaper in tokens than JSON and as readable to a model; lists of rules become bullet lines
    because instructions read best that way, other lists are joined with ``; ``.
    """
    lines: list[str] = []
    for name, value in fields.items():
        if name == "message":
            # The provider envelope is for renderers, not for the model's structured text.
            continue
        if isinstance(value, list):
            if not value:
                continue
            if name == "rules":
                lines.append(f"{name}:")
                lines.extend(f"- {item}" for item in value)
            else:
                lines.append(f"{name}: " + "; ".join(str(item) for item in value))
        elif value not in (None, ""):
            lines.append(f"{name}: {value}")
    return "\n".join(lines)


def pointer_text(
    key: str, version: int, page_type: PageType, title: str | None, full_tokens: int
) -> str:
    """The pointer fidelity: a handle that :func:`parse_pointer` turns back into (key, version).

    It names the key and version (what resolution needs), the type and full size (what a
    model needs to decide whether resolving is worth it) and, when given, a short title.
    """
    handle = f"[ptr {key}@{version} {page_type.value} {full_tokens}tok"
    if title:
        return f"{handle}: {title}]"
    return f"{handle}]"


def parse_pointer(text: str) -> tuple[str, int] | None:
    """(key, version) of a pointer handle, or ``None`` when ``text`` is not one."""
    match = _POINTER_RE.match(text.strip())
    if match is None:
        return None
    return match.group("key"), int(match.group("version"))


@dataclass(frozen=True)
class Representation:
    """One fidelity of one page version: its text, exact token count and true source level.

    ``tokens`` always counts the whole text. When ``chained``, ``text`` is only the piece this
    version appends (after a newline) to the same fidelity's text of the version before. When
    ``same_as`` names a fidelity, the text (or piece) is the one of that level of this version
    and is stored there only.
    """

    fidelity: Fidelity
    text: str
    tokens: int
    source: Fidelity
    chained: bool = False
    same_as: Fidelity | None = None


@dataclass(frozen=True)
class ContentRepresentations:
    """The version-independent fidelities (everything but the pointer) plus validated fields."""

    page_type: PageType
    fields: dict[str, Any]
    levels: tuple[Representation, ...]
    title: str
    # The fold of the full text (for the next append) and, per level, the text from its last
    # safe tokenizer boundary to its end (see :func:`safe_tail_start`).
    fold: dict[str, Any] | None = None
    tails: Mapping[Fidelity, str] = field(default_factory=dict)
    # For a chained build: the version each chained level's chain starts at.
    chain_starts: Mapping[Fidelity, int] = field(default_factory=dict)

    @property
    def chained(self) -> bool:
        """Whether the full level is a piece appended to the previous version's text."""
        return self.levels[0].chained


def build_content_representations(
    page_type: PageType,
    content: str,
    *,
    key: str,
    scope: Scope,
    provenance: Mapping[str, Any] | None,
    structured: Mapping[str, Any] | None,
    timestamp: str,
    counter: TokenCounter,
    compressor: Compressor,
) -> ContentRepresentations:
    """Full, compressed and structured fidelities of ``content`` (those on the type's ladder).

    The expensive work (token counting, compression) happens here, outside any transaction;
    the pointer, which names the version, is added by :func:`with_pointer` at commit time.
    """
    policy = POLICIES[page_type]
    if structured is not None:
        fields = validate_fields(page_type, structured)
    else:
        fields = validate_fields(
            page_type,
            derive_fields(
                page_type, content, key=key, scope=scope, provenance=provenance, timestamp=timestamp
            ),
        )
    count = counter.count
    full_tokens = count(content)
    full = Representation(Fidelity.FULL, content, full_tokens, Fidelity.FULL)
    levels = [full]
    # The structured level carries the type's invariant, so it is built first; it only gives
    # way to the full text for pages smaller than their own fields.
    structured_level: Representation | None = None
    if policy.allows(Fidelity.STRUCTURED):
        text = render_fields(fields)
        tokens = count(text)
        structured_level = (
            Representation(Fidelity.STRUCTURED, text, tokens, Fidelity.STRUCTURED)
            if tokens <= full_tokens
            else Representation(Fidelity.STRUCTURED, content, full_tokens, Fidelity.FULL)
        )
    if policy.allows(Fidelity.COMPRESSED):
        floor_tokens = structured_level.tokens if structured_level else 0
        compressed = Representation(Fidelity.COMPRESSED, content, full_tokens, Fidelity.FULL)
        if full_tokens > COMPRESS_MIN_TOKENS:
            text = compressor.compress(content, max(1, full_tokens // 2), count)
            tokens = count(text) if text.strip() else full_tokens + 1
            if floor_tokens <= tokens <= full_tokens:
                compressed = Representation(Fidelity.COMPRESSED, text, tokens, Fidelity.COMPRESSED)
            elif tokens < floor_tokens and structured_level is not None:
                # An extract shorter than the fields would drop below the floor: use the fields.
                compressed = Representation(
                    Fidelity.COMPRESSED,
                    structured_level.text,
                    structured_level.tokens,
                    structured_level.source,
                )
        levels.append(compressed)
    if structured_level is not None:
        levels.append(structured_level)
    return ContentRepresentations(
        page_type,
        fields,
        tuple(levels),
        title_of(content),
    )


# -- appends: every fidelity from the previous version's plus the segment ----------------------------


def tail_of(text: str) -> str:
    """The part of ``text`` an append has to re-tokenize (see :func:`safe_tail_start`)."""
    return text[safe_tail_start(text) :]


def extend_count(
    count: Callable[[str], int], tokens: int, tail: str, piece: str
) -> tuple[int, str]:
    """Exact tokens of ``text + "\\n" + piece`` from ``tokens`` = count(text) and text's tail.

    Returns the new count and the new text's tail. Only the tail and the piece are tokenized.
    """
    joined = f"{tail}\n{piece}"
    total = tokens - count(tail) + count(joined)
    return total, joined[safe_tail_start(joined) :]


@dataclass(frozen=True)
class LevelBasis:
    """One fidelity of the version an append builds on: its whole-text tokens, tail and source."""

    tokens: int
    tail: str
    source: Fidelity


@dataclass(frozen=True)
class AppendBasis:
    """What an append needs of the previous version: never its whole text."""

    page_type: PageType
    full: LevelBasis
    compressed: LevelBasis | None
    fold: dict[str, Any]


def basis_after(reps: ContentRepresentations) -> AppendBasis:
    """The basis the next append builds on, from the representations of this version.

    A whole build keeps no fold or tails (most whole pages are never appended to): they are
    worked out here from its texts, which it holds.
    """
    levels = {level.fidelity: level for level in reps.levels}
    fold = reps.fold
    if fold is None:
        started = reps.fields.get("start", "") if reps.page_type is PageType.CONVERSATION else ""
        fold = fold_of(reps.page_type, levels[Fidelity.FULL].text, timestamp=str(started))

    def level_basis(fidelity: Fidelity) -> LevelBasis | None:
        level = levels.get(fidelity)
        if level is None:
            return None
        tail = reps.tails.get(fidelity)
        return LevelBasis(level.tokens, tail_of(level.text) if tail is None else tail, level.source)

    full = level_basis(Fidelity.FULL)
    assert full is not None
    return AppendBasis(
        page_type=reps.page_type,
        full=full,
        compressed=level_basis(Fidelity.COMPRESSED),
        fold=fold,
    )


def compress_piece(
    segment: str, segment_tokens: int, compressor: Compressor, count: Callable[[str], int]
) -> str:
    """The compressed text of one appended segment: the segment itself when it is short."""
    if segment_tokens <= COMPRESS_MIN_TOKENS:
        return segment
    piece = compressor.compress(segment, max(1, segment_tokens // 2), count)
    return piece if piece.strip() and count(piece) <= segment_tokens else segment


def build_appended_representations(
    basis: AppendBasis,
    segment: str,
    *,
    key: str,
    scope: Scope,
    provenance: Mapping[str, Any] | None,
    structured: Mapping[str, Any] | None,
    timestamp: str,
    counter: TokenCounter,
    compressor: Compressor,
) -> ContentRepresentations:
    """Every content fidelity of ``previous text + "\\n" + segment``, built from ``basis``.

    * full: the segment is the piece; its tokens are exact (only the tail is re-tokenized);
    * compressed: the previous compressed text plus the compressed segment (short segments are
      kept whole), with the same floors as a whole build: never above the full text's tokens
      (else the full text serves), never below the structured fields (else they serve);
    * structured: the fields of the fold extended by the segment, or the given ``structured``;
    * the pointer is added by :func:`with_pointer`, unchanged in shape.
    """
    page_type = basis.page_type
    policy = POLICIES[page_type]
    count = counter.count
    fold = fold_extend(page_type, basis.fold, segment)
    if page_type is PageType.CONVERSATION:
        fold["ended"] = timestamp
    if structured is not None:
        fields = validate_fields(page_type, structured)
    else:
        fields = validate_fields(
            page_type,
            fields_from_fold(page_type, fold, key=key, scope=scope, provenance=provenance),
        )
    full_tokens, full_tail = extend_count(count, basis.full.tokens, basis.full.tail, segment)
    full = Representation(Fidelity.FULL, segment, full_tokens, Fidelity.FULL, chained=True)
    levels = [full]
    tails: dict[Fidelity, str] = {Fidelity.FULL: full_tail}
    structured_level: Representation | None = None
    if policy.allows(Fidelity.STRUCTURED):
        text = render_fields(fields)
        tokens = count(text)
        if tokens <= full_tokens:
            structured_level = Representation(
                Fidelity.STRUCTURED, text, tokens, Fidelity.STRUCTURED
            )
            tails[Fidelity.STRUCTURED] = tail_of(text)
        else:
            structured_level = Representation(
                Fidelity.STRUCTURED, "", full_tokens, Fidelity.FULL, same_as=Fidelity.FULL
            )
            tails[Fidelity.STRUCTURED] = full_tail
    if policy.allows(Fidelity.COMPRESSED):
        floor_tokens = structured_level.tokens if structured_level else 0
        previous = basis.compressed
        compressed: Representation | None = None
        if previous is not None and previous.source is not Fidelity.STRUCTURED:
            piece = compress_piece(segment, count(segment), compressor, count)
            tokens, tail = extend_count(count, previous.tokens, previous.tail, piece)
            if floor_tokens <= tokens <= full_tokens:
                same = piece == segment
                compressed = Representation(
                    Fidelity.COMPRESSED,
                    "" if same else piece,
                    tokens,
                    Fidelity.FULL
                    if same and previous.source is Fidelity.FULL
                    else Fidelity.COMPRESSED,
                    chained=True,
                    same_as=Fidelity.FULL if same else None,
                )
                tails[Fidelity.COMPRESSED] = tail
        if compressed is None:
            # No chain to extend, or it would leave the ladder's order: the full text serves.
            compressed = Representation(
                Fidelity.COMPRESSED, "", full_tokens, Fidelity.FULL, same_as=Fidelity.FULL
            )
            tails[Fidelity.COMPRESSED] = full_tail
        levels.append(compressed)
    if structured_level is not None:
        levels.append(structured_level)
    return ContentRepresentations(
        page_type,
        fields,
        tuple(levels),
        _fold_title(fold),
        fold=fold,
        tails=tails,
    )


def with_pointer(
    reps: ContentRepresentations, *, key: str, version: int, counter: TokenCounter
) -> tuple[Representation, ...]:
    """All fidelities of a version: the content levels plus the pointer, if the ladder has one."""
    if not POLICIES[reps.page_type].allows(Fidelity.POINTER):
        return reps.levels
    above = reps.levels[-1]
    full_tokens = reps.levels[0].tokens
    # The titled handle first; without the title if that is too dear; the level above (which
    # resolves all the same, by the row's identity) only for pages smaller than any handle.
    for title in (reps.title, None):
        text = pointer_text(key, version, reps.page_type, title, full_tokens)
        tokens = counter.count(text)
        if tokens <= above.tokens:
            return (*reps.levels, Representation(Fidelity.POINTER, text, tokens, Fidelity.POINTER))
    if above.chained or above.same_as is not None:
        # A chained build keeps no copy of a text it does not own: point at the owner.
        return (
            *reps.levels,
            Representation(
                Fidelity.POINTER,
                "",
                above.tokens,
                above.source,
                same_as=above.same_as or above.fidelity,
            ),
        )
    return (*reps.levels, Representation(Fidelity.POINTER, above.text, above.tokens, above.source))
