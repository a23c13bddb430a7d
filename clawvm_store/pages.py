"""The page model: types, fidelities, pins, the per-type policy table, and structured schemas.

This module is the paper's Table 1 in code (DESIGN 1.2). Everything downstream (representations,
validation, the assembler) reads floors, ladders and defaults from :data:`POLICIES`, never from
literals of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from .errors import InvalidInput


class PageType(StrEnum):
    """The six page types of the paper (contract)."""

    BOOTSTRAP = "bootstrap"
    CONSTRAINT = "constraint"
    PLAN = "plan"
    PREFERENCE = "preference"
    EVIDENCE = "evidence"
    CONVERSATION = "conversation"


class Fidelity(StrEnum):
    """The resolutions a page can be rendered at, from richest to cheapest (contract)."""

    FULL = "full"
    COMPRESSED = "compressed"
    STRUCTURED = "structured"
    POINTER = "pointer"

    @property
    def rank(self) -> int:
        """0 for ``full`` up to 3 for ``pointer``: a higher rank is a lower fidelity."""
        return _FIDELITY_RANK[self]


_FIDELITY_RANK = {
    Fidelity.FULL: 0,
    Fidelity.COMPRESSED: 1,
    Fidelity.STRUCTURED: 2,
    Fidelity.POINTER: 3,
}


class Pin(StrEnum):
    """How strongly a page must stay resident (contract)."""

    HARD = "hard"
    SOFT = "soft"
    NONE = "none"


class Scope(StrEnum):
    """Who a page belongs to: the whole project, or one session."""

    PROJECT = "project"
    SESSION = "session"


class Boundary(StrEnum):
    """Lifecycle boundaries at which staged updates are validated and committed (contract)."""

    TURN_END = "turn_end"
    COMPACTION = "compaction"
    PRUNE = "prune"
    FLUSH = "flush"
    RESET = "reset"
    SESSION_END = "session_end"
    EXPLICIT = "explicit"
    RECOVERY = "recovery"

    @property
    def destructive(self) -> bool:
        """True for boundaries that discard working state and so must write back first."""
        return self in _DESTRUCTIVE


_DESTRUCTIVE = frozenset(
    {Boundary.COMPACTION, Boundary.PRUNE, Boundary.RESET, Boundary.SESSION_END}
)


class ReasonCode(StrEnum):
    """Why validation rejected a staged update (contract)."""

    SCHEMA_INVALID = "SCHEMA_INVALID"
    PROVENANCE_UNRESOLVED = "PROVENANCE_UNRESOLVED"
    SCOPE_DENIED = "SCOPE_DENIED"
    DESTRUCTIVE_OP = "DESTRUCTIVE_OP"
    PIN_VIOLATION = "PIN_VIOLATION"


class FaultKind(StrEnum):
    """What the fault observer counts (contract), plus the two non-fault records."""

    REFETCH = "refetch"
    DUPLICATE_TOOL = "duplicate_tool"
    PINNED_INVARIANT_MISS = "pinned_invariant_miss"
    POST_COMPACTION_BOOTSTRAP = "post_compaction_bootstrap"
    SILENT_RECALL = "silent_recall"
    FLUSH_MISS = "flush_miss"
    # Beyond the paper: a result served without running that differs from what the tool really
    # returned at that moment (measured where the real output is known: replays of transcripts).
    STALE_SERVE = "stale_serve"
    DUPLICATE_SIGNATURE = "duplicate_signature"
    PHYSICAL_INSUFFICIENCY = "physical_insufficiency"


class Op(StrEnum):
    """What a staged update does to its page."""

    SET = "set"
    MERGE = "merge"
    APPEND = "append"
    DELETE = "delete"


# --- structured schemas, one per type ------------------------------------------------------


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class BootstrapFields(_Fields):
    """Structured bootstrap page: a title and the instructions that must survive compaction."""

    title: str = Field(max_length=200)
    rules: list[str] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _rules_not_blank(cls, rules: list[str]) -> list[str]:
        return [_non_blank(rule) for rule in rules]


class ConstraintFields(_Fields):
    """Structured constraint page: the hard rules, each stated on its own."""

    rules: list[str] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _rules_not_blank(cls, rules: list[str]) -> list[str]:
        return [_non_blank(rule) for rule in rules]


class PlanFields(_Fields):
    """Structured plan page: the goal and the current step are the type's invariant."""

    goal: str = Field(min_length=1)
    current_step: str = Field(min_length=1)
    steps: list[str] = Field(default_factory=list)


class PreferenceFields(_Fields):
    """Structured preference page: the preference, who it applies to, and where it came from."""

    statement: str = Field(min_length=1)
    scope: str = Field(min_length=1)
    provenance: str = Field(min_length=1)


class EvidenceFields(_Fields):
    """Structured evidence page: where the evidence came from and what it says, in brief."""

    source: str = Field(min_length=1)
    summary: str = ""


class ConversationFields(_Fields):
    """Structured conversation page: the span it covers and when."""

    span_id: str = Field(min_length=1)
    start: str = Field(min_length=1)
    end: str = Field(min_length=1)
    roles: list[str] = Field(default_factory=list)
    summary: str = ""
    # A provider message (issue 15): role, tool calls, call id, name, metadata; None otherwise.
    message: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_message(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An absent message stays absent, so pages written before issue 15 dump (and hash) the same.
        dumped: dict[str, Any] = handler(self)
        if dumped.get("message", 0) is None:
            del dumped["message"]
        return dumped


FieldsModel = type[_Fields]


@dataclass(frozen=True)
class TypePolicy:
    """One row of the paper's Table 1: what a page type must keep and how it may degrade."""

    type: PageType
    floor: Fidelity
    ladder: tuple[Fidelity, ...]
    default_pin: Pin
    default_scope: Scope
    fields_model: FieldsModel
    invariant: str
    always_required: bool = field(default=False)

    def allows(self, fidelity: Fidelity) -> bool:
        """Whether ``fidelity`` is on this type's ladder."""
        return fidelity in self.ladder

    def at_or_above_floor(self, fidelity: Fidelity) -> bool:
        """Whether ``fidelity`` satisfies the type's minimum fidelity."""
        return fidelity.rank <= self.floor.rank


POLICIES: dict[PageType, TypePolicy] = {
    PageType.BOOTSTRAP: TypePolicy(
        PageType.BOOTSTRAP,
        floor=Fidelity.STRUCTURED,
        ladder=(Fidelity.FULL, Fidelity.STRUCTURED),
        default_pin=Pin.HARD,
        default_scope=Scope.PROJECT,
        fields_model=BootstrapFields,
        invariant="present at >= structured after every compaction and reset",
        always_required=True,
    ),
    PageType.CONSTRAINT: TypePolicy(
        PageType.CONSTRAINT,
        floor=Fidelity.STRUCTURED,
        ladder=(Fidelity.FULL, Fidelity.STRUCTURED),
        default_pin=Pin.HARD,
        default_scope=Scope.SESSION,
        fields_model=ConstraintFields,
        invariant="hard-pinned at >= structured",
        always_required=True,
    ),
    PageType.PLAN: TypePolicy(
        PageType.PLAN,
        floor=Fidelity.STRUCTURED,
        ladder=(Fidelity.FULL, Fidelity.STRUCTURED, Fidelity.POINTER),
        default_pin=Pin.NONE,
        default_scope=Scope.SESSION,
        fields_model=PlanFields,
        invariant="goal + current step; pointer only when not required",
    ),
    PageType.PREFERENCE: TypePolicy(
        PageType.PREFERENCE,
        floor=Fidelity.STRUCTURED,
        ladder=(Fidelity.FULL, Fidelity.COMPRESSED, Fidelity.STRUCTURED, Fidelity.POINTER),
        default_pin=Pin.NONE,
        default_scope=Scope.PROJECT,
        fields_model=PreferenceFields,
        invariant="scope + provenance",
    ),
    PageType.EVIDENCE: TypePolicy(
        PageType.EVIDENCE,
        floor=Fidelity.POINTER,
        ladder=(Fidelity.FULL, Fidelity.COMPRESSED, Fidelity.STRUCTURED, Fidelity.POINTER),
        default_pin=Pin.NONE,
        default_scope=Scope.SESSION,
        fields_model=EvidenceFields,
        invariant="pointer, and the pointer must resolve",
    ),
    PageType.CONVERSATION: TypePolicy(
        PageType.CONVERSATION,
        floor=Fidelity.STRUCTURED,
        ladder=(Fidelity.FULL, Fidelity.COMPRESSED, Fidelity.STRUCTURED, Fidelity.POINTER),
        default_pin=Pin.NONE,
        default_scope=Scope.SESSION,
        fields_model=ConversationFields,
        invariant="span id + timestamps",
    ),
}
"""The per-type policy table of DESIGN 1.2 (contract)."""


@dataclass(frozen=True)
class Page:
    """One page at one version and one fidelity, as read back from the store."""

    key: str
    type: PageType
    version: int
    fidelity: Fidelity
    content: str
    tokens: int
    pin: Pin
    priority: float
    scope: Scope
    provenance: dict[str, Any] | None
    project: str = ""
    session: str | None = None
    structured: dict[str, Any] | None = None
    staged: bool = False
    deleted: bool = False


@dataclass(frozen=True)
class PageVersion:
    """One committed version of a page, with the token count of every fidelity it has."""

    key: str
    type: PageType
    version: int
    op: Op
    lsn: int
    committed_at: str
    deleted: bool
    pin: Pin
    priority: float
    tokens: dict[Fidelity, int]


def check_retention(retention: object) -> dict[PageType, int]:
    """Validate a retention policy: page type → versions to keep (at least 1)."""
    if retention is None:
        return {}
    if not isinstance(retention, Mapping):
        raise InvalidInput("retention must map page types to a number of versions to keep")
    policy: dict[PageType, int] = {}
    for name, keep in retention.items():
        try:
            page_type = PageType(name)
        except ValueError:
            known = ", ".join(t.value for t in PageType)
            raise InvalidInput(
                f"unknown page type {name!r} in retention (known: {known})"
            ) from None
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InvalidInput(
                f"retention for {page_type.value} must be an integer of at least 1 (the head is "
                f"always kept), not {keep!r}"
            )
        policy[page_type] = keep
    return policy
