"""The trace format every workload and importer produces and the harness replays.

A trace is a list of turns. Each turn may carry conversation text, tool calls (with the output
the tool gave, so replays never run anything real), staged page writes, the page keys the agent
needs that turn, and a lifecycle event (compaction, reset, session end). ``setup`` pages
(bootstrap, constraints, preferences) are written before the first turn.

Stored as JSON: ``{"format": "clawvm-trace/1", "name": ..., "turns": [...]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidInput
from ..pages import PageType

TRACE_FORMAT = "clawvm-trace/1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolStep(_Model):
    """One tool call and the output it produced."""

    name: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)
    effect: Literal["read", "volatile", "write", "unknown"] = "read"
    output: str = ""
    call_id: str | None = None  # the transcript's own id, kept for reference only
    resources: list[str] | None = None  # what it touches, when its arguments do not say


class StageStep(_Model):
    """A page write the agent makes (staged during the turn, committed at its end)."""

    key: str = Field(min_length=1)
    type: PageType
    content: str = Field(min_length=1)
    op: Literal["set", "append"] = "set"
    provenance: dict[str, Any] | None = None


class Turn(_Model):
    """One turn of the agent loop."""

    session: str = "s-1"
    user: str | None = None
    assistant: str | None = None
    tools: list[ToolStep] = Field(default_factory=list)
    stage: list[StageStep] = Field(default_factory=list)
    demand: list[str] = Field(default_factory=list)
    event: Literal["compaction", "reset", "session_end"] | None = None
    # The real request that opened the turn, as the provider counted it (from the transcript's
    # usage records, where it has them): its whole prompt, and the part read from the cache.
    prompt_tokens: int | None = Field(default=None, ge=0)
    cached_tokens: int | None = Field(default=None, ge=0)


class Trace(_Model):
    """A whole replayable session (or several, for multi-session workloads)."""

    format: Literal["clawvm-trace/1"] = "clawvm-trace/1"
    name: str
    source: str = ""
    family: str = "imported"
    seed: int | None = None
    project: str = "trace"
    setup: list[StageStep] = Field(default_factory=list)
    turns: list[Turn] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    # Tokens of the real prompt that the turns do not hold (system prompt, tool definitions,
    # injected context): the first real request's size less its own user text. A replay with
    # ``fixed_region`` charges them first, as the real harness did.
    fixed_tokens: int = Field(default=0, ge=0)

    def dump(self, path: str | Path) -> None:
        """Write the trace as JSON."""
        Path(path).write_text(self.model_dump_json(indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace written by :meth:`dump` (or by ``clawvm import``)."""
        file = Path(path)
        if not file.is_file():
            raise InvalidInput(f"no trace file at {str(path)!r}")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"{path} is not a JSON trace: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise InvalidInput(
                f"{path} is not a valid clawvm trace: {where}: {first['msg']}"
            ) from None
