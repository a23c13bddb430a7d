"""Every fidelity of a page version, produced at write time with its exact token count.

Assembly never compresses or summarizes anything: it only looks up the texts built here. The
rule that keeps the assembler's arithmetic honest is monotonicity along the ladder:
``tokens(pointer) <= tokens(structured) <= tokens(compressed) <= tokens(full)``. When a derived
representation would cost more than the level above it (a tiny page whose pointer is longer than
the page itself), the cheaper text of the level above is stored in its place, and the row records
which fidelity its text really came from (``source``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from .errors import SchemaInvalid
from .pages import POLICIES, Fidelity, PageType, Scope
from .tokens import TokenCounter

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
        frequencies = Counter(
            word
            for segment in segments
            for word in {w.lower() for w in _WORD.findall(segment.text)}
            if word not in _STOPWORDS
        )

        def score(segment: _Segment) -> float:
            words = {w.lower() for w in _WORD.findall(segment.text)} - _STOPWORDS
            value = sum(frequencies[w] for w in words) / (1.0 + len(segment.text) / 80.0)
            if segment.index == 0:
                value += 1_000.0  # the opening line almost always says what the text is
            return value

        ranked = sorted(segments, key=lambda s: (-score(s), s.index))
        chosen: list[_Segment] = []
        used = 0
        for segment in ranked:
            cost = count(segment.text) + 1  # +1 for the joining newline
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


def _first_sentences(content: str, max_words: int) -> str:
    words = content.split()
    text = " ".join(words[:max_words])
    return text + ("…" if len(words) > max_words else "")


def _rule_lines(content: str, limit: int = 12) -> list[str]:
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    rules = [line for line in lines if _RULE_LINE.search(line)]
    chosen = rules or lines
    stripped = [re.sub(r"^(?:[-*•]|\d+[.)])\s+", "", line) for line in chosen[:limit]]
    return [_first_sentences(line, 40) for line in stripped if line] or ["(empty)"]


def derive_fields(
    page_type: PageType,
    content: str,
    *,
    key: str,
    scope: Scope,
    provenance: Mapping[str, Any] | None,
    timestamp: str,
) -> dict[str, Any]:
    """Structured fields derived from the content when the caller passes none."""
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
        # The remaining steps stay in the full text; the invariant is goal + current step.
        return {"goal": goal or "(unstated)", "current_step": current or goal or "(unstated)"}
    if page_type is PageType.PREFERENCE:
        return {
            "statement": _first_sentences(content, 30),
            "scope": scope.value,
            "provenance": _provenance_text(provenance),
        }
    if page_type is PageType.EVIDENCE:
        return {
            "source": _provenance_text(provenance, default=key),
            "summary": _first_sentences(content, 20),
        }
    # conversation
    roles = sorted({m.group(1).lower() for m in re.finditer(r"^(\w+):", content, re.MULTILINE)})
    timestamp = _compact_time(timestamp)
    return {
        "span_id": key,
        "start": timestamp,
        "end": timestamp,
        "roles": roles,
        "summary": _first_sentences(content, 8),
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
    """One fidelity of one page version: its text, exact token count and true source level."""

    fidelity: Fidelity
    text: str
    tokens: int
    source: Fidelity


@dataclass(frozen=True)
class ContentRepresentations:
    """The version-independent fidelities (everything but the pointer) plus validated fields."""

    page_type: PageType
    fields: dict[str, Any]
    levels: tuple[Representation, ...]
    title: str


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
    return ContentRepresentations(page_type, fields, tuple(levels), title_of(content))


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
    return (*reps.levels, Representation(Fidelity.POINTER, above.text, above.tokens, above.source))
