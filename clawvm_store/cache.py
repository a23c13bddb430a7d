"""Provider prompt caches: what a prompt reuses of the one before it, and what that costs.

Providers bill a prompt prefix they saw recently at a fraction of the price: Anthropic reads
cached tokens at 0.1x and writes them at 1.25x (5-minute cache), OpenAI reads them at a
discount with no write premium. A prompt is cheap when it starts with the previous one, so the
assembler can be asked (``Session.configure_assembly(cache=...)``) to keep its prompts
append-only between compaction-like steps (see :mod:`clawvm_store.assembler`), and the
evaluation measures, per policy, how much of each prompt is a prefix of the previous one.

**Prefix reuse** is counted at block granularity: a prompt is a sequence of blocks (the fixed
region, then each page as rendered), each with its tokens, and a prompt reuses the tokens of the
longest run of leading blocks equal to the previous prompt's. The text form starts every block
at a place where the tokenizer starts afresh, so the block counts add up to the prompt's count;
providers cache at block boundaries too (Anthropic at ``cache_control`` breakpoints and the
blocks before them). Provider minimums (Anthropic caches prefixes of at least 1,024 tokens on
most models, OpenAI from 1,024 tokens in steps of 128) and cache lifetimes are not modelled: the
figures are what a cache would reuse if every prompt were long enough and came in time.

**Cost** is in units of one uncached input token: without caching a prompt costs its tokens;
with caching the reused prefix costs ``read`` per token and the rest ``write`` per token.
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from .errors import InvalidInput


@dataclass(frozen=True)
class CachePricing:
    """A provider's cache prices and how the assembler plays to them.

    ``read`` and ``write`` are the prices of a cached read and of a cache write, per token, as
    a fraction of an uncached input token. ``headroom`` is the share of the budget a
    cache-aware assembly leaves free when it must re-select (a compaction-like step), so the
    turns after it can append without breaking the prefix. The ``none`` preset turns cache
    awareness off: the assembler behaves as it always did.
    """

    name: str
    read: float
    write: float
    headroom: float

    @property
    def enabled(self) -> bool:
        """Whether the assembler plays to a cache at all."""
        return self.name != "none"


# Anthropic: cache reads 0.1x, 5-minute cache writes 1.25x (the published multipliers).
# OpenAI: automatic caching, no write premium; cached input at 0.25x (the GPT-4.1 family's
# discount; GPT-4o's is 0.5x, the GPT-5 family's 0.1x: pass a CachePricing of your own).
CACHE_PRESETS: dict[str, CachePricing] = {
    "none": CachePricing("none", read=1.0, write=1.0, headroom=0.0),
    "anthropic": CachePricing("anthropic", read=0.1, write=1.25, headroom=0.25),
    "openai": CachePricing("openai", read=0.25, write=1.0, headroom=0.25),
}


def cache_pricing(value: str | CachePricing | None) -> CachePricing:
    """A preset by name (``none``, ``anthropic``, ``openai``) or a :class:`CachePricing`."""
    if value is None:
        return CACHE_PRESETS["none"]
    if isinstance(value, CachePricing):
        if not (value.read >= 0 and value.write >= 0 and 0 <= value.headroom < 1):
            raise InvalidInput("cache prices must be >= 0 and headroom in [0, 1)")
        return value
    if isinstance(value, str) and value in CACHE_PRESETS:
        return CACHE_PRESETS[value]
    raise InvalidInput(f"cache must be one of {', '.join(CACHE_PRESETS)}, not {value!r:.40}")


# A prompt block: something that identifies its exact text, and its tokens.
PromptBlock = tuple[Hashable, int]


def reused_tokens(previous: Sequence[PromptBlock], current: Sequence[PromptBlock]) -> int:
    """Tokens of ``current`` in its longest run of leading blocks equal to ``previous``'s."""
    reused = 0
    for before, now in zip(previous, current, strict=False):
        if before[0] != now[0]:
            break
        reused += now[1]
    return reused


@dataclass
class CacheMeter:
    """Prefix reuse and input cost over a sequence of prompts (one session's, in order)."""

    pricing: CachePricing = CACHE_PRESETS["anthropic"]
    reuse: list[float] = field(default_factory=list)  # per prompt after the first
    uncached_cost: float = 0.0
    cached_cost: float = 0.0
    tokens: int = 0
    _last: Sequence[PromptBlock] = ()

    def add(self, blocks: Sequence[PromptBlock]) -> float:
        """Count one prompt; return the share of its tokens that the previous one cached."""
        total = sum(tokens for _, tokens in blocks)
        reused = reused_tokens(self._last, blocks) if self._last else 0
        share = reused / total if total else 1.0
        if self._last:
            self.reuse.append(share)
        self._last = list(blocks)
        self.tokens += total
        self.uncached_cost += total
        self.cached_cost += reused * self.pricing.read + (total - reused) * self.pricing.write
        return share

    def reset(self) -> None:
        """A new session (or a cache that expired): the next prompt reuses nothing."""
        self._last = ()

    @property
    def median_reuse(self) -> float:
        """Median share of each prompt's tokens that is a prefix of the previous prompt."""
        return statistics.median(self.reuse) if self.reuse else 0.0

    @property
    def cost_ratio(self) -> float:
        """Input cost with caching over the cost without."""
        return self.cached_cost / self.uncached_cost if self.uncached_cost else 1.0
