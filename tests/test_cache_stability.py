"""Prompt-cache-stable assembly (issue 16).

Covers: the fixed point (assembling again with no change gives byte-identical text and items,
from the first repeat on: a Hypothesis property over random states, budgets and cache
settings); the layout by stability (a page that stays keeps its place, new and changed pages
come after, bootstrap and constraints first); cache-aware choices (append-only prompts between
compaction-like steps that leave the preset's headroom, floors and demand never traded);
Anthropic ``cache_control`` breakpoints and the OpenAI ``prompt_cache_key``; the prefix-reuse
meter, its prices, and the transcript harness's own reuse as a baseline.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

import clawvm_store as cvm
from clawvm_store.cache import (
    CACHE_PRESETS,
    CacheMeter,
    CachePricing,
    cache_pricing,
    reused_tokens,
)
from clawvm_store.render import LOOKBACK_BLOCKS, build_conversation, to_anthropic
from clawvm_store.replay.harness import transcript_baseline
from clawvm_store.replay.trace import StageStep, ToolStep, Trace, Turn
from clawvm_store.tokens import TokenCounter

anthropic_params = pytest.importorskip("anthropic.types.message_create_params")
openai_responses_params = pytest.importorskip("openai.types.responses.response_create_params")
openai_chat_params = pytest.importorskip("openai.types.chat.completion_create_params")
ANTHROPIC = TypeAdapter(anthropic_params.MessageCreateParamsNonStreaming)
RESPONSES = TypeAdapter(openai_responses_params.ResponseCreateParamsNonStreaming)
CHAT = TypeAdapter(openai_chat_params.CompletionCreateParamsNonStreaming)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[cvm.Store]:
    with cvm.Store.open(tmp_path / "cache.db") as opened:
        yield opened


URI = {"uri": "test://tool-output"}


def evidence(tag: str, lines: int) -> str:
    return "\n".join(f"{tag} line {i}: the value of field_{i} is {i * 7}" for i in range(lines))


def snapshot(asm: cvm.Assembly) -> tuple[Any, ...]:
    return (asm.text, asm.tokens, [(i.key, i.version, i.fidelity, i.text) for i in asm.items])


# -- the fixed point ----------------------------------------------------------------------------

_page = st.tuples(
    st.sampled_from(["bootstrap", "constraint", "plan", "preference", "evidence", "conversation"]),
    st.integers(min_value=1, max_value=30),
    st.sampled_from([None, "soft", "hard"]),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pages=st.lists(_page, min_size=1, max_size=14),
    budget=st.integers(min_value=60, max_value=1500),
    cache=st.sampled_from(["none", "anthropic", "openai"]),
    demand=st.lists(st.integers(min_value=0, max_value=13), max_size=3),
    turns=st.integers(min_value=0, max_value=3),
)
def test_assembling_again_with_no_change_is_byte_identical(
    tmp_path_factory: pytest.TempPathFactory,
    pages: list[tuple[str, int, str | None]],
    budget: int,
    cache: str,
    demand: list[int],
    turns: int,
) -> None:
    path = tmp_path_factory.mktemp("fixed") / "f.db"
    with cvm.Store.open(path) as store:
        sess = store.session("s", project="p")
        sess.configure_assembly(cache=cache)
        keys = []
        for index, (page_type, lines, pin) in enumerate(pages):
            key = f"{page_type}/{index}"
            keys.append(key)
            content = evidence(key, lines)
            if page_type == "plan":
                content = f"Goal: task {index}\n- [ ] step one\n" + content
            provenance = URI if page_type == "evidence" else None
            sess.stage(key, type=page_type, content=content, pin=pin, provenance=provenance)
            if index % 4 == 3:
                sess.end_turn()
                sess.assemble(budget, on_insufficient="report")  # history with changes
        sess.end_turn()
        wanted = [keys[i] for i in demand if i < len(keys)]
        for turn in range(turns):  # a few turns that change state before the repeats
            sess.stage(
                f"evidence/more-{turn}", type="evidence", content=f"turn {turn}", provenance=URI
            )
            sess.end_turn()
            sess.assemble(budget, demand=wanted, on_insufficient="report")
        first = sess.assemble(budget, demand=wanted, on_insufficient="report")
        for _ in range(3):
            again = sess.assemble(budget, demand=wanted, on_insufficient="report")
            assert snapshot(again) == snapshot(first)
            assert again.prompt_blocks == first.prompt_blocks
            assert again.to_anthropic() == first.to_anthropic()
        if first.feasible:
            assert first.tokens <= budget


def test_the_first_repeat_no_longer_moves_pages(store: cvm.Store) -> None:
    """The issue's case: 43 pages at budget 400; hysteresis alone moved two pages on the first
    repeat (full -> structured, pointer -> structured)."""
    sess = store.session("s", project="p")
    for i in range(43):
        page_type = ("evidence", "conversation", "preference")[i % 3]
        provenance = URI if page_type == "evidence" else None
        content = evidence(str(i), 3 + i % 7)
        sess.stage(f"{page_type}/{i}", type=page_type, content=content, provenance=provenance)
    sess.end_turn()
    first = sess.assemble(400)
    again = sess.assemble(400)
    assert snapshot(again) == snapshot(first)
    assert [d for d in again.decisions if d.fidelity is None] == []  # nothing left it


_addition = st.one_of(
    st.tuples(
        st.just("page"), st.sampled_from(["plan", "preference", "evidence"]), st.integers(1, 12)
    ),
    st.tuples(st.just("message"), st.sampled_from(["user", "assistant"]), st.integers(1, 12)),
    st.tuples(st.just("call"), st.just("assistant"), st.integers(1, 12)),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(turns=st.lists(st.lists(_addition, min_size=1, max_size=3), min_size=2, max_size=8))
def test_an_append_only_session_extends_its_previous_prompt(
    tmp_path_factory: pytest.TempPathFactory, turns: list[list[tuple[str, str, int]]]
) -> None:
    """Nothing changes, things only arrive: each prompt starts with the previous one, in the
    text form; with messages only, in each provider form too (the system part is stable)."""
    path = tmp_path_factory.mktemp("append") / "a.db"
    with cvm.Store.open(path) as store:
        sess = store.session("s", project="p")
        sess.stage("bootstrap/rules", type="bootstrap", content="Be brief.")
        sess.stage("constraint/safe", type="constraint", content="Never delete data.")
        previous: cvm.Assembly | None = None
        messages_only = True
        for turn, additions in enumerate(turns):
            for index, (kind, what, lines) in enumerate(additions):
                tag = f"{turn}-{index}"
                if kind == "page":
                    messages_only = False
                    content = evidence(tag, lines)
                    if what == "plan":
                        content = f"Goal: {tag}\n- [ ] step\n{content}"
                    provenance = URI if what == "evidence" else None
                    sess.stage(f"{what}/{tag}", type=what, content=content, provenance=provenance)
                elif kind == "message":
                    sess.append_message(what, evidence(tag, lines))
                else:
                    call = {"id": f"c{tag}", "name": "read_file", "arguments": {"n": tag}}
                    sess.append_message("assistant", None, tool_calls=[call])
                    sess.append_message("tool", evidence(tag, lines), tool_call_id=f"c{tag}")
            sess.end_turn()
            asm = sess.assemble(100_000, fixed="SYSTEM")
            if previous is not None:
                assert asm.text.startswith(previous.text)
                if messages_only:
                    before, now = previous.to_openai_chat(), asm.to_openai_chat()
                    assert now[: len(before)] == before
                    before_items = previous.to_openai_responses()
                    assert asm.to_openai_responses()[: len(before_items)] == before_items
                    old = previous.to_anthropic(cache_control=False)
                    new = asm.to_anthropic(cache_control=False)
                    assert new["system"] == old["system"]
                    # The last message may be continued (a role's turns merge): compare the
                    # blocks in order.
                    flat = [b for m in new["messages"] for b in m["content"]]
                    assert flat[: sum(len(m["content"]) for m in old["messages"])] == [
                        b for m in old["messages"] for b in m["content"]
                    ]
            previous = asm


# -- the layout by stability --------------------------------------------------------------------
# -- the layout by stability --------------------------------------------------------------------


def test_kept_pages_keep_their_place_and_changes_go_last(store: cvm.Store) -> None:
    sess = store.session("s", project="p")
    sess.stage("evidence/a", type="evidence", content="alpha", provenance=URI)
    sess.stage("plan/main", type="plan", content="Goal: ship\n- [ ] one")
    sess.stage("bootstrap/rules", type="bootstrap", content="Be brief.")
    sess.end_turn()
    first = sess.assemble(4000, fixed="SYSTEM")
    # The first prompt in DESIGN section order, after the fixed region.
    assert [i.key for i in first.items] == ["bootstrap/rules", "plan/main", "evidence/a"]
    sess.stage("evidence/b", type="evidence", content="beta", provenance=URI)
    sess.stage("plan/main", type="plan", content="Goal: ship\n- [x] one", expected_version=1)
    sess.stage("constraint/no-push", type="constraint", content="Never push.")
    sess.end_turn()
    second = sess.assemble(4000, fixed="SYSTEM")
    # Constraints join the stable regions; evidence/a stays; the new page, then the changed.
    assert [i.key for i in second.items] == [
        "bootstrap/rules",
        "constraint/no-push",
        "evidence/a",
        "evidence/b",
        "plan/main",
    ]
    sess.stage("evidence/c", type="evidence", content="gamma", provenance=URI)
    sess.end_turn()
    third = sess.assemble(4000, fixed="SYSTEM")
    # Only an addition: the whole previous prompt is the start of this one.
    assert third.text.startswith(second.text)
    identities = [identity for identity, _ in third.prompt_blocks]
    assert identities[: len(second.prompt_blocks)] == [i for i, _ in second.prompt_blocks]
    assert sum(tokens for _, tokens in third.prompt_blocks) == third.tokens
    # The view gives the prompt's order back.
    rows = store.query(
        "SELECT key FROM resident_by_turn WHERE assembly_id = ? AND fidelity IS NOT NULL "
        "ORDER BY position",
        [third.assembly_id],
    )
    assert [row["key"] for row in rows] == [i.key for i in third.items]


def test_a_reopened_session_keeps_the_layout(tmp_path: Path) -> None:
    path = tmp_path / "reopen.db"
    with cvm.Store.open(path) as store:
        sess = store.session("s", project="p")
        for key in ("evidence/a", "evidence/b"):
            sess.stage(key, type="evidence", content=key, provenance=URI)
        sess.end_turn()
        sess.assemble(4000)
        sess.stage(
            "evidence/a", type="evidence", content="a, again", expected_version=1, provenance=URI
        )
        sess.end_turn()
        before = sess.assemble(4000)
        assert [i.key for i in before.items] == ["evidence/b", "evidence/a"]
    with cvm.Store.open(path) as store:
        sess = store.session("s", project="p")
        sess.stage("evidence/c", type="evidence", content="c", provenance=URI)
        sess.end_turn()
        after = sess.assemble(4000)
        assert [i.key for i in after.items] == ["evidence/b", "evidence/a", "evidence/c"]
        assert after.text.startswith(before.text)


# -- cache-aware choices ------------------------------------------------------------------------


def run_turns(store: cvm.Store, cache: str, turns: int = 30) -> list[cvm.Assembly]:
    sess = store.session(f"s-{cache}", project="p")
    sess.configure_assembly(cache=cache)
    sess.stage("bootstrap/rules", type="bootstrap", content="Follow the rules.", pin="hard")
    sess.stage("constraint/safe", type="constraint", content="Never delete data.")
    prompts = []
    for turn in range(turns):
        content = evidence(f"t{turn}", 6)
        sess.stage(f"evidence/t{turn}", type="evidence", content=content, provenance=URI)
        sess.end_turn()
        prompts.append(sess.assemble(600, demand=[f"evidence/t{turn}"]))
    return prompts


def test_a_cache_keeps_prompts_append_only_between_compaction_steps(store: cvm.Store) -> None:
    plain = run_turns(store, "none")
    cached = run_turns(store, "anthropic")

    def breaks(prompts: list[cvm.Assembly]) -> list[int]:
        return [
            turn
            for turn in range(1, len(prompts))
            if not prompts[turn].text.startswith(prompts[turn - 1].text)
        ]

    meter = {name: CacheMeter() for name in ("none", "anthropic")}
    for name, prompts in (("none", plain), ("anthropic", cached)):
        for asm in prompts:
            meter[name].add(asm.prompt_blocks)
    # Without a cache the full budget is used and the prefix breaks at almost every turn once
    # it is full; with one it breaks at a few compaction-like steps, each leaving the headroom.
    assert breaks(plain) == list(range(5, 30))
    # Each step leaves 25% of the budget free: room for one more result before the next.
    assert breaks(cached) == list(range(5, 30, 2))
    for turn in breaks(cached):
        assert cached[turn].tokens <= 600 * 0.75
    assert round(meter["none"].median_reuse, 3) == 0.365
    assert round(meter["anthropic"].median_reuse, 3) == 0.74
    # Input cost with Anthropic's cache: under half of the cache-blind prompts'.
    assert round(meter["none"].cached_cost) == 14752
    assert round(meter["anthropic"].cached_cost) == 6858
    # Floors and demand are never traded for cache hits.
    for turn, asm in enumerate(cached):
        present = {item.key: item.fidelity for item in asm.items}
        assert present["bootstrap/rules"] in (cvm.Fidelity.FULL, cvm.Fidelity.STRUCTURED)
        assert "constraint/safe" in present
        assert f"evidence/t{turn}" in present
        assert asm.tokens <= 600


def test_a_demanded_page_is_never_held_back_at_a_poorer_fidelity(store: cvm.Store) -> None:
    """A cache never keeps a demanded page at the fidelity it had: it is chosen as without one."""
    writer = store.session("w", project="p")
    for i in range(8):
        writer.stage(f"preference/{i}", type="preference", content=evidence(str(i), 8))
    writer.end_turn()
    cached, plain = store.session("c", project="p"), store.session("n", project="p")
    cached.configure_assembly(cache="anthropic")
    first = cached.assemble(700)
    assert snapshot(plain.assemble(700)) == snapshot(first)
    poor = [i.key for i in first.items if i.fidelity is not cvm.Fidelity.FULL]
    assert poor  # the budget forced some pages down
    with_cache = {i.key: i.fidelity for i in cached.assemble(700, demand=[poor[0]]).items}
    without = {i.key: i.fidelity for i in plain.assemble(700, demand=[poor[0]]).items}
    assert with_cache[poor[0]] is without[poor[0]]
    assert with_cache[poor[0]].rank < {i.key: i.fidelity for i in first.items}[poor[0]].rank


def test_cache_settings_are_checked() -> None:
    assert cache_pricing(None) is CACHE_PRESETS["none"]
    assert cache_pricing("anthropic") == CachePricing("anthropic", 0.1, 1.25, 0.25)
    own = CachePricing("gpt-5", read=0.1, write=1.0, headroom=0.1)
    assert cache_pricing(own) is own
    with pytest.raises(cvm.InvalidInput, match="cache must be one of none, anthropic, openai"):
        cache_pricing("gemini")
    with pytest.raises(cvm.InvalidInput, match="headroom"):
        cache_pricing(CachePricing("bad", 0.1, 1.0, 1.5))


# -- provider hooks -----------------------------------------------------------------------------


def marks(payload: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Where the breakpoints are: ("system", index, -1) or ("message", index, block)."""
    found = [("system", i, -1) for i, b in enumerate(payload["system"]) if "cache_control" in b]
    for i, message in enumerate(payload["messages"]):
        for j, block in enumerate(message["content"]):
            if "cache_control" in block:
                found.append(("message", i, j))
    return found


def test_anthropic_breakpoints_mark_the_stable_regions(store: cvm.Store) -> None:
    sess = store.session("s", project="p")
    sess.stage("bootstrap/rules", type="bootstrap", content="Be brief.")
    sess.stage("constraint/safe", type="constraint", content="Never delete data.")
    sess.stage("plan/main", type="plan", content="Goal: answer\n- [ ] read")
    for i in range(15):
        sess.append_message("user", f"question {i}")
        sess.append_message("assistant", f"answer {i}")
    sess.end_turn()
    asm = sess.assemble(20000, fixed="SYSTEM", form="anthropic")
    payload = asm.to_anthropic()
    ANTHROPIC.validate_python({"model": "claude-sonnet-4-5", "max_tokens": 64, **payload})
    system = payload["system"]
    assert [block["text"].split("\n", 1)[0] for block in system] == [
        "SYSTEM",
        "### bootstrap/rules",
        "### constraint/safe",
        "### plan/main",
    ]
    # The stable region ends with the constraint; the system part with the plan; the last
    # block; and the block LOOKBACK_BLOCKS before it (30 blocks in 30 messages).
    assert marks(payload) == [
        ("system", 2, -1),
        ("system", 3, -1),
        ("message", 29 - LOOKBACK_BLOCKS, 0),
        ("message", 29, 0),
    ]
    assert len(marks(payload)) <= 4
    # The budget counted what is sent, breakpoints included.
    assert asm.tokens == asm.rendered_tokens("anthropic", store.counter)
    assert "cache_control" not in json.dumps(asm.to_anthropic(cache_control=False))


def test_breakpoints_without_a_conversation_or_stable_region() -> None:
    empty = to_anthropic(build_conversation("", []))
    assert empty == {"system": [], "messages": []}
    only_fixed = to_anthropic(build_conversation("SYSTEM", []))
    assert only_fixed["system"] == [
        {"type": "text", "text": "SYSTEM", "cache_control": {"type": "ephemeral"}}
    ]


def test_openai_requests_carry_the_session_as_cache_key(store: cvm.Store) -> None:
    sess = store.session("agent-7", project="p")
    sess.append_message("user", "hello")
    sess.end_turn()
    asm = sess.assemble(1000, form="openai_responses")
    request = asm.openai_request()
    assert request == {"input": asm.to_openai_responses(), "prompt_cache_key": "agent-7"}
    RESPONSES.validate_python({"model": "gpt-4.1", **request})
    chat = asm.openai_request("chat", prompt_cache_key="tenant-1")
    assert chat == {"messages": asm.to_openai_chat(), "prompt_cache_key": "tenant-1"}
    CHAT.validate_python({"model": "gpt-4.1", **chat})
    with pytest.raises(cvm.InvalidInput, match="api must be 'responses' or 'chat'"):
        asm.openai_request("completions")
    with pytest.raises(cvm.InvalidInput, match="prompt_cache_key"):
        asm.openai_request(prompt_cache_key="")


# -- the meter ----------------------------------------------------------------------------------


def test_reuse_counts_the_leading_blocks_that_match() -> None:
    first = [("a", 10), ("b", 5), ("c", 5)]
    assert reused_tokens(first, [("a", 10), ("b", 5), ("d", 7)]) == 15
    assert reused_tokens(first, [("x", 10)]) == 0
    assert reused_tokens(first, [*first, ("d", 3)]) == 20
    meter = CacheMeter()
    assert meter.add(first) == 0.0
    assert meter.add([*first, ("d", 20)]) == 0.5
    assert meter.add([("z", 40)]) == 0.0
    assert meter.reuse == [0.5, 0.0]
    assert meter.uncached_cost == 20 + 40 + 40
    # Anthropic: the first prompt written (1.25x), then 20 read (0.1x) and 20 written, then 40.
    assert meter.cached_cost == pytest.approx(25 + 2 + 25 + 50)
    assert meter.median_reuse == 0.25
    meter.reset()
    assert meter.add([("z", 40)]) == 0.0  # a new session reuses nothing


def test_the_transcript_harness_appends_until_it_compacts() -> None:
    count = TokenCounter()
    trace = Trace(
        name="t",
        setup=[StageStep(key="bootstrap/a", type=cvm.PageType.BOOTSTRAP, content="Be kind.")],
        turns=[
            Turn(
                user="read a.py", tools=[ToolStep(name="Read", args={"path": "a.py"}, output="A")]
            ),
            Turn(assistant="done", event="compaction"),
            Turn(user="next"),
        ],
    )
    setup = count.count("Be kind.")
    read = count.count('Read {"path": "a.py"}\nA')
    sizes = [
        setup + count.count("read a.py") + read,
        setup + count.count("read a.py") + read + count.count("done"),
        setup + count.count("next"),  # the compaction dropped the history
    ]
    figures = transcript_baseline(trace, count)
    assert figures["tokens_used"] == pytest.approx(sum(sizes) / 3)
    reuse = [sizes[0] / sizes[1], setup / sizes[2]]
    assert figures["prefix_reuse"] == pytest.approx(sum(reuse) / 2)
    assert figures["input_cost"] == sum(sizes)
    # Under a budget the append-only harness compacts when the next prompt would not fit.
    bounded = transcript_baseline(trace, count, budget=sizes[0])
    assert bounded["tokens_used"] == pytest.approx(
        (sizes[0] + setup + count.count("done") + sizes[2]) / 3
    )


# -- the command line -----------------------------------------------------------------------------


def test_replay_reports_the_prompt_cache_beside_the_transcript_harness(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from clawvm_store.cli import app
    from clawvm_store.replay.workloads import build

    trace_file = tmp_path / "coding.trace.json"
    trace = build("coding", 0)
    trace.dump(trace_file)
    runner = CliRunner()
    result = runner.invoke(
        app, ["--json", "replay", str(trace_file), "--budget", "400", "--policy", "clawvm_cache"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["policy"] == "clawvm_cache"
    assert payload["transcript_harness"] == transcript_baseline(trace, TokenCounter())
    assert 0 < payload["prefix_reuse"] <= 1
    assert payload["cached_input_cost"] < payload["input_cost"]
    table = runner.invoke(app, ["replay", str(trace_file), "--budget", "400"])
    assert table.exit_code == 0, table.output
    assert "the transcript's harness (append-only)" in table.output


def test_the_command_line_lists_what_the_library_has() -> None:
    from clawvm_store.cli import POLICY_NAMES, SPLIT_NAMES
    from clawvm_store.replay.importers import SPLITS
    from clawvm_store.replay.policies import POLICIES

    assert POLICY_NAMES == POLICIES
    assert SPLIT_NAMES == SPLITS


def test_a_fixed_region_is_charged_first_in_every_replayed_prompt(tmp_path: Path) -> None:
    from clawvm_store.replay.harness import replay_into
    from clawvm_store.replay.workloads import build

    trace = build("coding", 0).model_copy(update={"fixed_tokens": 150})
    plain, _ = replay_into(trace, 400, "clawvm", tmp_path / "plain.db")
    fixed, _ = replay_into(trace, 400, "clawvm", tmp_path / "fixed.db", fixed_region=True)
    # The pages get 250 tokens: fewer of them fit, and every prompt carries the 150.
    assert plain.tokens_used <= 400
    assert 150 < fixed.tokens_used <= 400
    assert fixed.tokens_used - 150 < plain.tokens_used
    assert fixed.total_faults == 0
    # The fixed region is one cached block at the head of every prompt.
    assert fixed.prefix_reuse > plain.prefix_reuse
    with pytest.raises(cvm.InvalidInput, match="fixed region \\(150 tokens of system prompt"):
        replay_into(trace, 150, "clawvm", tmp_path / "none.db", fixed_region=True)
    assert not (tmp_path / "none.db").exists()


def test_an_appended_page_grows_in_place_with_a_cache(store: cvm.Store) -> None:
    """With a cache, an append keeps the page's old text where it was and adds the segment at
    the end: the prompt stays append-only; without one the page moves whole to the end."""
    prompts: dict[str, list[cvm.Assembly]] = {}
    for cache in ("none", "anthropic"):
        sess = store.session(f"grow-{cache}", project="p")
        sess.configure_assembly(cache=cache)
        sess.stage("plan/main", type="plan", content="Goal: talk\n- [ ] listen")
        runs = prompts.setdefault(cache, [])
        for turn in range(20):
            sess.stage(
                "conversation/main",
                type="conversation",
                content=f"user: question {turn}\nassistant: answer {turn}\n",
                op="append",
            )
            content = evidence(f"r{turn}", 2)
            sess.stage(f"evidence/r{turn}", type="evidence", content=content, provenance=URI)
            sess.end_turn()
            runs.append(sess.assemble(100_000))
    grown = prompts["anthropic"]
    # The conversation's first text stays where it entered; each later exchange is a block.
    at_most = grown[15]
    assert at_most.text.count("### conversation/main (continued)\n") == 15  # 16 blocks
    assert grown[16].text.count("### conversation/main (continued)\n") == 0  # whole again
    last = grown[-1]
    assert last.text.count("### conversation/main (continued)\n") == 3
    full = {item.key: item.text for item in last.items}["conversation/main"]
    assert full.count("user: question") == 20
    assert last.tokens == store.counter.count(last.text) == sum(t for _, t in last.prompt_blocks)
    # After 16 blocks the page is rendered whole once more, at the end: one break in 20 turns.
    breaks = [
        turn for turn in range(1, 20) if not grown[turn].text.startswith(grown[turn - 1].text)
    ]
    assert breaks == [16]
    plain = prompts["none"]
    assert all(not b.text.startswith(a.text) for a, b in itertools.pairwise(plain))
