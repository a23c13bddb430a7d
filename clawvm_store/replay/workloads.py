"""Four seeded workload families from the paper's domain, as traces.

Every family is deterministic for a seed and built from small pages, as the paper's budgets (120
to 500 tokens) demand. Each turn has a short exchange, tool calls with the outputs they return,
staged notes, the pages the agent needs (``demand``), and lifecycle events. Staged notes of a
turn that ends in a compaction or reset are still pending when the event happens: that is what a
harness without validated writeback loses.

* ``assistant``: a personal-assistant routine (calendar, mail, weather) with a reset every
  eight turns and standing preferences.
* ``coding``: repeated file reads, edits that make the next read of a file necessary, test runs,
  and a compaction every ten turns, one of them right after a huge log output (the threshold jump).
* ``research``: evidence churn: many unique searches and fetches, re-requests of older evidence,
  findings appended to notes, compactions.
* ``project``: a long-horizon project over three sessions with cascading resets, sharing
  project-scoped preferences written in the first session.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..pages import PageType
from .trace import StageStep, ToolStep, Trace, Turn

FAMILIES = ("assistant", "coding", "research", "project")
WORDS = [
    "budget",
    "schedule",
    "review",
    "draft",
    "payment",
    "invoice",
    "client",
    "meeting",
    "deadline",
    "release",
    "branch",
    "test",
    "module",
    "handler",
    "request",
    "latency",
    "cache",
    "index",
    "query",
    "report",
    "summary",
    "source",
    "claim",
    "evidence",
    "policy",
    "config",
    "deploy",
    "rollback",
    "metric",
    "alert",
    "window",
    "token",
    "page",
    "memory",
    "context",
    "plan",
    "step",
]


def _sentence(rng: random.Random, low: int, high: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


def _body(rng: random.Random, lines: int, width: tuple[int, int] = (6, 12)) -> str:
    return "\n".join(_sentence(rng, *width) for _ in range(lines))


def _setup(rng: random.Random, extra: list[StageStep]) -> list[StageStep]:
    return [
        StageStep(
            key="bootstrap/agent",
            type=PageType.BOOTSTRAP,
            content="# Agent rules\n- Answer briefly.\n- Ask before deleting anything.",
        ),
        StageStep(
            key="constraint/privacy",
            type=PageType.CONSTRAINT,
            content="Never send private data outside the workspace.",
        ),
        *extra,
    ]


def assistant(seed: int, turns: int = 40) -> Trace:
    """A daily personal-assistant routine with resets and standing preferences."""
    rng = random.Random(f"assistant-{seed}")
    days = ["mon", "tue", "wed", "thu", "fri"]
    setup = _setup(
        rng,
        [
            StageStep(
                key="preference/meetings",
                type=PageType.PREFERENCE,
                content="Meetings only after 10am, never on Friday afternoons.",
                provenance={"uri": "chat://onboarding"},
            ),
            StageStep(
                key="preference/tone",
                type=PageType.PREFERENCE,
                content="Mail replies short and warm, signed with first name only.",
                provenance={"uri": "chat://onboarding"},
            ),
        ],
    )
    trace_turns: list[Turn] = []
    for index in range(turns):
        day = days[index % len(days)]
        kind = rng.choice(["calendar", "mail", "weather", "calendar", "book"])
        tools: list[ToolStep] = []
        demand: list[str] = []
        if kind in ("calendar", "book"):
            tools.append(
                ToolStep(
                    name="calendar.lookup",
                    args={"day": day},
                    output=f"{day}: " + _body(random.Random(f"cal-{seed}-{day}"), 3),
                    resources=[f"calendar:{day}"],
                )
            )
            demand.append("preference/meetings")
        if kind == "book":
            tools.append(
                ToolStep(
                    name="calendar.create",
                    args={"day": day, "title": rng.choice(WORDS)},
                    effect="write",
                    output="created",
                    resources=[f"calendar:{day}"],  # the day it books: that lookup is stale
                )
            )
        if kind == "mail":
            mail = rng.randint(1, 6)
            tools.append(
                ToolStep(
                    name="mail.read",
                    args={"id": mail},
                    output=_body(random.Random(f"mail-{seed}-{mail}"), 3),
                )
            )
            demand.append("preference/tone")
        if kind == "weather":
            tools.append(
                ToolStep(
                    name="weather",
                    args={"city": rng.choice(["oslo", "lima", "pune"])},
                    effect="volatile",  # a forecast changes by itself: never served from cache
                    output=_sentence(rng, 8, 14),
                )
            )
        stage = [
            StageStep(
                key="plan/today",
                type=PageType.PLAN,
                content=f"- [ ] {_sentence(rng, 3, 6)}",
                op="append",
            )
        ]
        reset = index % 8 == 7
        trace_turns.append(
            Turn(
                user=_sentence(rng, 5, 10),
                assistant=_sentence(rng, 6, 12),
                tools=tools,
                stage=stage,
                demand=demand,
                event="reset" if reset else None,
            )
        )
    return Trace(
        name=f"assistant-{seed}", family="assistant", seed=seed, setup=setup, turns=trace_turns
    )


def coding(seed: int, turns: int = 40) -> Trace:
    """A coding session: file reads and re-reads, edits, tests, compactions, a threshold jump."""
    rng = random.Random(f"coding-{seed}")
    files = [f"src/{name}.py" for name in ("api", "models", "cache", "jobs", "auth", "util")]
    version = dict.fromkeys(files, 0)
    trace_turns: list[Turn] = []
    for index in range(turns):
        tools: list[ToolStep] = []
        path = rng.choice(files[:4] if rng.random() < 0.7 else files)
        # A file reads the same until it is edited: its text (and length) follow its version.
        # The workload's own generator still draws a length, so the rest of the session is the
        # same as before reads were checked against what was served.
        rng.randint(4, 7)
        text = random.Random(f"{seed}-{path}-{version[path]}")
        tools.append(
            ToolStep(
                name="read_file",
                args={"path": path},
                output=_body(text, text.randint(4, 7)),
            )
        )
        if rng.random() < 0.3:
            version[path] += 1
            tools.append(
                ToolStep(
                    name="edit_file",
                    args={"path": path, "change": rng.choice(WORDS)},
                    effect="write",
                    output="ok",
                )
            )
        compaction = index % 10 == 9
        if rng.random() < 0.25 or compaction:
            huge = compaction and index == 19  # the threshold jump: a log far past any budget
            tools.append(
                ToolStep(
                    name="run_tests",
                    args={"suite": "unit", "rev": sum(version.values())},
                    effect="volatile",  # a test run's output is its own (timings, order, flakes)
                    output=_body(rng, 120 if huge else 3),
                )
            )
        stage = [
            StageStep(
                key="plan/main",
                type=PageType.PLAN,
                content=f"Goal: ship the cache fix\n- [ ] {_sentence(rng, 3, 6)}",
                op="append" if index else "set",
            )
        ]
        trace_turns.append(
            Turn(
                user=_sentence(rng, 5, 10),
                assistant=_sentence(rng, 6, 12),
                tools=tools,
                stage=stage,
                demand=["plan/main"],
                event="compaction" if compaction else None,
            )
        )
    return Trace(
        name=f"coding-{seed}",
        family="coding",
        seed=seed,
        setup=_setup(rng, []),
        turns=trace_turns,
    )


def _page(seed: int, url: str) -> str:
    """The text a URL serves: the same on every fetch (so a served repeat is never stale)."""
    text = random.Random(f"fetch-{seed}-{url}")
    return _body(text, text.randint(3, 6))


def research(seed: int, turns: int = 40) -> Trace:
    """Research with evidence churn: many unique results, re-requests of older ones."""
    rng = random.Random(f"research-{seed}")
    fetched: list[str] = []
    trace_turns: list[Turn] = []
    for index in range(turns):
        tools: list[ToolStep] = []
        topic = rng.choice(WORDS)
        tools.append(
            ToolStep(
                name="search",
                args={"q": f"{topic} {index}"},
                output=_body(random.Random(f"search-{seed}-{index}"), 2),
            )
        )
        url = f"https://example.org/{topic}/{index}"
        rng.randint(3, 6)  # drawn as before: a page's length now follows its URL (see _page)
        tools.append(ToolStep(name="fetch", args={"url": url}, output=_page(seed, url)))
        fetched.append(url)
        if len(fetched) > 3 and rng.random() < 0.5:
            old = rng.choice(fetched[:-2])
            tools.append(ToolStep(name="fetch", args={"url": old}, output=_page(seed, old)))
        stage = [
            StageStep(
                key="notes/findings",
                type=PageType.PLAN,
                content=f"Goal: survey {topic}\n- [ ] {_sentence(rng, 4, 8)}",
                op="append" if index else "set",
            )
        ]
        trace_turns.append(
            Turn(
                user=_sentence(rng, 5, 10),
                assistant=_sentence(rng, 6, 12),
                tools=tools,
                stage=stage,
                demand=["notes/findings"] if index % 3 == 0 else [],
                event="compaction" if index % 12 == 11 else None,
            )
        )
    return Trace(
        name=f"research-{seed}",
        family="research",
        seed=seed,
        setup=_setup(rng, []),
        turns=trace_turns,
    )


def project(seed: int, turns: int = 42) -> Trace:
    """A long-horizon project over three sessions, cascading resets, shared preferences."""
    rng = random.Random(f"project-{seed}")
    per_session = turns // 3
    trace_turns: list[Turn] = []
    for index in range(turns):
        session = f"s-{index // per_session + 1}"
        first = index % per_session == 0
        stage = [
            StageStep(
                key="plan/milestone",
                type=PageType.PLAN,
                content=f"Goal: milestone {index // per_session + 1}\n- [ ] {_sentence(rng, 3, 6)}",
                op="set" if first else "append",
            )
        ]
        demand = ["plan/milestone"]
        if index < per_session and index % 4 == 1:
            name = f"preference/style-{index}"
            stage.append(
                StageStep(
                    key=name,
                    type=PageType.PREFERENCE,
                    content=_sentence(rng, 8, 14),
                    provenance={"uri": f"chat://{session}/{index}"},
                )
            )
        if index >= per_session and index % 3 == 0:
            demand.append(f"preference/style-{rng.choice([1, 5, 9])}")
        doc = f"spec-{rng.randint(1, 5)}"
        # A document reads the same every time: its text follows its name.
        tools = [
            ToolStep(
                name="read_doc",
                args={"doc": doc},
                output=_body(random.Random(f"doc-{seed}-{doc}"), 3),
            )
        ]
        last = index % per_session == per_session - 1
        cascade = index % per_session in (5, 6)  # two resets in a row
        trace_turns.append(
            Turn(
                session=session,
                user=_sentence(rng, 5, 10),
                assistant=_sentence(rng, 6, 12),
                tools=tools,
                stage=stage,
                demand=demand,
                event="session_end" if last else ("reset" if cascade else None),
            )
        )
    return Trace(
        name=f"project-{seed}",
        family="project",
        seed=seed,
        setup=_setup(rng, []),
        turns=trace_turns,
    )


BUILDERS: dict[str, Callable[[int], Trace]] = {
    "assistant": assistant,
    "coding": coding,
    "research": research,
    "project": project,
}


def build(family: str, seed: int) -> Trace:
    """The trace of ``family`` for ``seed``."""
    return BUILDERS[family](seed)
