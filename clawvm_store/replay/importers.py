"""Importers: real agent transcripts (Claude Code, Codex, Copilot, Gemini CLI, Antigravity, aider)
turned into replayable :class:`~clawvm_store.replay.trace.Trace` objects.

``import_transcript(path, kind="auto", session=None)`` reads one transcript file and maps it to
turns. The rules are the same for every format; only the record shapes differ.

**Turns.** A turn starts at each *real* user message: a prompt the person (or a harness speaking for
them, such as a background-task notification) sent. Tool results, meta/caveat records, interruption
markers (``[Request interrupted …]``), local command output and compaction summaries never start a
turn. User messages that follow each other with no agent work between them are merged into one
turn (the model sees them together). Agent work that comes before any user message, or after a
compaction, goes to a *continuation* turn whose ``user`` is ``None``. By default
(``split="response"``) a turn also starts at every model response that follows tool results:
the model saw the results and answered, which is one more request to it, so each turn is one
request as the paper cuts them (``split="prompt"``: a turn is all the work one prompt led to). User and assistant text are
capped at :data:`TEXT_CAP` characters (assistant text blocks are joined with blank lines; streamed
deltas are joined as they are); thinking/reasoning is not kept. ``Turn.demand`` is left empty: the
harness demands each turn's own tool results.

**Tool calls.** Every call becomes a :class:`ToolStep` in call order, with the transcript's call id
kept in ``call_id``. A result is matched to a pending call with the same id *of the current turn*,
first-in first-out (some providers reuse ids such as ``call_0`` across turns, so pending calls are
dropped when a new user turn starts; a call that never got a result keeps an empty output and a
warning). Formats without call ids (Antigravity) pair results with calls in order. Structured
outputs (lists of content blocks) are joined as text, images become ``[image]``, other non-text
blocks ``[<type>]``; an output longer than :data:`OUTPUT_CAP` characters is cut there (warned).

**Arguments.** Kept as the transcript has them (the signature is name + canonical JSON args), except
that the file argument of file tools is renamed to ``path`` (Claude ``file_path``/``notebook_path``,
Antigravity ``AbsolutePath``/``TargetFile``/``DirectoryPath``/``SearchPath``, …) so that the
mediator sees the same resource for a read and a later edit. Derived resources are *added*:
``paths`` for the files an ``apply_patch`` touches (``*** Update/Add/Delete File:`` headers), and
``path``/``paths`` for read-only shell commands that print files (``cat``, ``head``, ``tail``,
``nl``, ``sed -n``, ``Get-Content``, …).

**Effects** (``write`` invalidates cached reads of the same paths and is never de-duplicated):

1. shell tools (``Bash``, ``bash``, ``shell``, ``shell_command``, ``run_shell_command``,
   ``run_command``, ``exec_command``, ``local_shell``): ``read`` only when every command of the
   script is read-only (see :func:`shell_is_read_only`: ``ls``, ``cat``, ``grep``/``rg``, ``find``
   without ``-delete``/``-exec``, ``sed`` without ``-i``, ``git status|diff|log|show|…``,
   ``Get-Content``, …, with no output redirection other than to ``/dev/null`` or another stream);
   anything else — builds, tests, installs, scripts — is ``write``;
2. ``apply_patch`` and Codex code-mode ``exec`` scripts that apply a patch: ``write`` (an ``exec``
   script that only runs commands follows rule 1 for each command it runs);
3. sub-agent tools (``Task``, ``Agent``, ``task``): ``write`` (a sub-agent may change anything);
4. any other tool: ``write`` when a word of its name is a state-changing verb (edit, write,
   create, update, delete, replace, patch, commit, push, kill, stop, …: ``Edit``, ``MultiEdit``,
   ``NotebookEdit``, ``Write``, ``TodoWrite``, ``TaskUpdate``, ``write_file``,
   ``replace_file_content``, ``update_plan`` …), otherwise ``read`` (``Read``, ``Grep``, ``Glob``,
   ``LS``, ``WebFetch``, ``view``, ``read_file``, ``view_file``, MCP getters, …).

**Lifecycle events.** A compaction marks the turn during which it happened with
``event="compaction"`` and closes it; the work that follows goes to a continuation turn (so the
harness compacts after the calls that preceded it, and before the ones that follow). Markers:
Claude Code ``system``/``compact_boundary`` records, ``isCompactSummary`` user messages,
``summary`` records after the first turn, and (Engram captures) user messages that begin
"This session is being continued from a previous conversation"; Codex ``compacted`` records and
``context_compacted`` events; Copilot ``session.compaction_complete`` events; Antigravity
``CHECKPOINT`` steps. A boundary followed by its summary with nothing between counts once. aider's
``/clear`` and ``/reset`` commands give ``event="reset"``.

**Real prompt sizes.** Where the transcript reports usage (Claude Code's ``message.usage``:
input, cache-creation and cache-read tokens; Codex ``token_count`` events: input and cached
input tokens), each turn keeps the provider's count of the request that opened it
(``Turn.prompt_tokens``, ``Turn.cached_tokens``), and ``Trace.fixed_tokens`` estimates the part
of the real prompt no turn holds (system prompt, tool definitions): the first request's size
less its user text. A replay can charge it as a fixed region.

**Sessions.** Turns keep the session they belong to (Claude ``sessionId``, Codex ``session_meta``,
Copilot ``session.start``, Gemini ``init``, aider ``# aider chat started at``), numbered ``s-1``,
``s-2``, … in order of appearance. By default every session in the file is imported, in file
order; ``session=ID`` keeps only the one whose id is ``ID`` (or starts with it, if unique).

**Errors.** A line that is not JSON, or JSON without the expected shape, is skipped and reported in
``Trace.warnings`` as ``"line N: reason"``; it never raises. A missing, empty or undetectable file,
an unknown kind, an unknown session, or a file with no usable turn raises :class:`InvalidInput`.
The same file always gives the identical trace.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from ..errors import InvalidInput
from .trace import ToolStep, Trace, Turn

Effect = Literal["read", "volatile", "write", "unknown"]

KINDS = ("claude-code", "codex", "copilot", "gemini-cli", "antigravity", "aider")
"""The transcript formats :func:`import_transcript` reads (plus ``"auto"``)."""

TEXT_CAP = 4000
"""User and assistant text kept per turn, in characters."""

OUTPUT_CAP = 200_000
"""Characters kept of one tool output (bounds memory; the engine handles large pages)."""

SNIFF_RECORDS = 50
"""How many parsable records ``kind="auto"`` looks at."""

# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


SPLITS = ("response", "prompt")
"""Where :func:`import_transcript` starts turns: at every model response, or at user prompts."""


def import_transcript(
    path: str | Path,
    *,
    kind: str = "auto",
    session: str | None = None,
    split: str = "response",
) -> Trace:
    """Read one agent transcript and return it as a trace (see the module docstring).

    ``split="response"`` (the default) starts a turn at every model response as well as at
    every user prompt: each request the harness sent is a turn, the cut the paper's experiment
    makes. ``split="prompt"`` starts turns at user prompts only (all the work a prompt led to
    is one turn).
    """
    file = Path(path)
    if kind != "auto" and kind not in KINDS:
        raise InvalidInput(
            f"unknown transcript kind {kind!r}; expected auto or one of {', '.join(KINDS)}"
        )
    if split not in SPLITS:
        raise InvalidInput(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not file.is_file():
        raise InvalidInput(f"no transcript file at {str(path)!r}")
    text = _read_text(file)
    if not text.strip():
        raise InvalidInput(f"{file.name} is empty")
    builder = _Builder(split_responses=split == "response")
    records: list[tuple[int, dict[str, Any]]] = []
    if kind == "auto":
        kind = _detect(file, text)
    if kind != "aider":
        records = _read_jsonl(text, builder)
    _PARSERS[kind](text, records, builder)
    turns = builder.finish(session, file.name)
    if not turns:
        raise InvalidInput(f"{file.name} holds no usable turns as a {kind} transcript")
    return Trace(
        name=file.stem,
        source=kind,
        project="trace",
        turns=turns,
        warnings=builder.sorted_warnings(),
        fixed_tokens=fixed_region(turns),
    )


def fixed_region(turns: Sequence[Turn]) -> int:
    """Tokens of the real prompt the transcript does not hold: the first reported request's
    size less the text of its turn (counted with this engine's tokenizer, so an estimate when
    the provider's differs)."""
    from ..tokens import TokenCounter

    first = next((turn for turn in turns if turn.prompt_tokens), None)
    if first is None or first.prompt_tokens is None:
        return 0
    return max(0, first.prompt_tokens - TokenCounter().count(first.user or ""))


def claude_code_turns(records: Sequence[tuple[int, dict[str, Any]]]) -> list[tuple[int, Turn]]:
    """Numbered Claude Code records as turns, each with the number of the record that opened it.

    The same rules as ``import_transcript(kind="claude-code", split="prompt")`` (a fresh
    builder over just these records: a mirrored session's pages follow its prompts); the Claude Agent SDK mirror uses it to project only the entries since the turn that
    is still open, so projecting costs the new entries, not the whole transcript.
    """
    builder = _Builder()
    starts: list[int] = []
    for number, record in records:
        before = len(builder.turns)
        _parse_claude("", [(number, record)], builder)
        starts.extend([number] * (len(builder.turns) - before))
    # With no session filter ``finish`` keeps every draft, in order: one turn per start.
    return list(zip(starts, builder.finish(None, "transcript"), strict=True))


def detect_kind(path: str | Path) -> str:
    """The transcript format of ``path`` (one of :data:`KINDS`), or :class:`InvalidInput`."""
    file = Path(path)
    if not file.is_file():
        raise InvalidInput(f"no transcript file at {str(path)!r}")
    text = _read_text(file)
    if not text.strip():
        raise InvalidInput(f"{file.name} is empty")
    return _detect(file, text)


# --------------------------------------------------------------------------------------------
# Detection and reading
# --------------------------------------------------------------------------------------------


def _read_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {file.name}: {exc.strerror or exc}") from None
    return data.decode("utf-8-sig", errors="replace")


_CODEX_TYPES = {"session_meta", "response_item", "event_msg", "turn_context", "compacted"}
_GEMINI_TYPES = {"init", "message", "tool_use", "tool_result", "result"}
_CLAUDE_TYPES = {
    "user",
    "assistant",
    "system",
    "summary",
    "progress",
    "attachment",
    "file-history-snapshot",
    "queue-operation",
    "last-prompt",
    "ai-title",
}


def _sniff(record: dict[str, Any]) -> str | None:
    typ = record.get("type")
    raw = record.get("raw")
    if isinstance(raw, dict) and isinstance(raw.get("type"), str) and "." in raw["type"]:
        return "copilot"
    if isinstance(typ, str) and "." in typ and isinstance(record.get("data"), dict):
        return "copilot"
    if "step_index" in record and isinstance(typ, str):
        return "antigravity"
    if typ in _CODEX_TYPES and "payload" in record:
        return "codex"
    if record.get("role") in ("user", "assistant", "tool") and isinstance(
        record.get("content"), dict
    ):
        return "claude-code"  # an Engram-normalised Claude Code capture
    if isinstance(typ, str) and (isinstance(record.get("message"), dict) or "sessionId" in record):
        return "claude-code"
    if typ in _GEMINI_TYPES and (
        "tool_name" in record
        or "session_id" in record
        or "tool_id" in record
        or isinstance(record.get("content"), str)
    ):
        return "gemini-cli"
    if typ in _CLAUDE_TYPES:
        return "claude-code"
    return None


def _detect(file: Path, text: str) -> str:
    head = text.lstrip()[:200]
    if file.suffix.lower() == ".md" or head.startswith("# aider chat started at"):
        return "aider"
    votes: dict[str, int] = {}
    seen = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        seen += 1
        guess = _sniff(record)
        if guess is not None:
            votes[guess] = votes.get(guess, 0) + 1
        if seen >= SNIFF_RECORDS:
            break
    if not votes:
        raise InvalidInput(
            f"cannot tell the transcript format of {file.name}; pass a kind ({', '.join(KINDS)})"
        )
    return max(KINDS, key=lambda name: (votes.get(name, 0), -KINDS.index(name)))


def _read_jsonl(text: str, builder: _Builder) -> list[tuple[int, dict[str, Any]]]:
    """Parse JSONL by physical line (``\\n`` only: JSON strings may hold U+2028)."""
    records: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            reason = getattr(exc, "msg", str(exc))
            builder.warn(number, f"not JSON ({reason}); skipped")
            continue
        if not isinstance(record, dict):
            builder.warn(number, "not a JSON object; skipped")
            continue
        records.append((number, record))
    return records


# --------------------------------------------------------------------------------------------
# The turn builder shared by every format
# --------------------------------------------------------------------------------------------


@dataclass
class _Call:
    name: str
    args: dict[str, Any]
    effect: Effect
    call_id: str | None
    line: int
    output: str | None = None


@dataclass
class _Draft:
    session: str | None
    user: str | None = None
    assistant: str = ""
    tools: list[_Call] = field(default_factory=list)
    event: Literal["compaction", "reset"] | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None

    def bare(self) -> bool:
        return not self.tools and not self.assistant and self.event is None


def _lost_or_failed(output: str | None) -> bool:
    """Whether a call's recorded output is missing, or Claude Code's error for a failed call."""
    return output is None or output.lstrip().startswith("<tool_use_error>")


class _Builder:
    def __init__(self, *, split_responses: bool = False) -> None:
        self.split_responses = split_responses
        self.answered = False  # a result came back since the model last spoke
        self.turns: list[_Draft] = []
        self.current: _Draft | None = None
        self.session: str | None = None
        self.pending: dict[str, deque[_Call]] = {}  # calls of the current turn
        self.stale: dict[str, deque[_Call]] = {}  # earlier turns' calls with no result yet
        self.early: dict[str, deque[tuple[str, int]]] = {}  # results written before their call
        self.warnings: list[tuple[int, str]] = []

    # -- bookkeeping --------------------------------------------------------------------------

    def warn(self, line: int, reason: str) -> None:
        self.warnings.append((line, reason))

    def sorted_warnings(self) -> list[str]:
        return [f"line {line}: {reason}" for line, reason in sorted(self.warnings, key=_first)]

    def _open(self) -> _Draft:
        if self.current is None:
            self.current = _Draft(session=self.session)
            self.turns.append(self.current)
        return self.current

    def _drop_pending(self) -> None:
        """A new turn starts: calls still waiting keep waiting, but only for a late result."""
        for call_id, queue in self.pending.items():
            self.stale.setdefault(call_id, deque()).extend(queue)
        self.pending.clear()

    def _warn_unanswered(self) -> None:
        for queues in (self.stale, self.pending):
            for queue in queues.values():
                for call in queue:
                    label = f" {call.call_id}" if call.call_id else ""
                    self.warn(call.line, f"{call.name} call{label} has no result")
        self.stale.clear()
        self.pending.clear()
        for call_id, results in self.early.items():
            for _, line in results:
                self.warn(line, f"tool result for call {call_id} without a call; skipped")
        self.early.clear()

    def expire_unnumbered(self) -> None:
        """Calls without ids still waiting will not be answered (the agent moved on)."""
        for call in self.pending.pop("", deque()):
            self.warn(call.line, f"{call.name} call has no result")

    # -- events -------------------------------------------------------------------------------

    def set_session(self, session: str) -> None:
        if session == self.session:
            return
        if self.session is None:
            for turn in self.turns:
                if turn.session is None:
                    turn.session = session
        elif self.current is not None and self.current.bare():
            self.current.session = session
        else:
            self._drop_pending()
            self.current = None
        self.session = session

    def user(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        current = self.current
        if current is not None and current.bare() and current.user is not None:
            current.user = _cap(f"{current.user}\n\n{text}", TEXT_CAP)
            return
        self._drop_pending()
        self.answered = False
        self.current = _Draft(session=self.session, user=_cap(text, TEXT_CAP))
        self.turns.append(self.current)

    def _respond(self) -> None:
        """The model speaks. Having seen results since it last spoke, this is a new response:
        with ``split_responses`` it opens a continuation turn (its calls stay pending)."""
        if self.split_responses and self.answered and self.current is not None:
            if self.current.tools and self.current.event is None:
                self.current = _Draft(session=self.session)
                self.turns.append(self.current)
        self.answered = False

    def assistant(self, text: str, sep: str = "\n\n") -> None:
        if not text or (sep != "" and not text.strip()):
            return
        self._respond()
        turn = self._open()
        if len(turn.assistant) > TEXT_CAP:
            return
        joined = f"{turn.assistant}{sep}{text}" if turn.assistant else text.lstrip()
        turn.assistant = joined

    def call(
        self,
        call_id: str | None,
        name: str,
        args: dict[str, Any],
        line: int,
        *,
        effect: Effect | None = None,
        output: str | None = None,
    ) -> None:
        name = name.strip() or "tool"
        auto_effect, args = classify(name, args)
        step = _Call(name, args, effect or auto_effect, call_id, line)
        self._respond()
        self._open().tools.append(step)
        early = self.early.get(call_id) if call_id else None
        if early:
            output = early.popleft()[0]
        if output is not None:
            step.output = self._capped(output, name, line)
        else:
            self.pending.setdefault(call_id or "", deque()).append(step)

    def result(self, call_id: str | None, output: str, line: int) -> None:
        queue = self.pending.get(call_id or "")
        if not queue and call_id:
            queue = self.stale.get(call_id)  # a result that arrived after the next prompt
        if not queue and call_id:
            # Claude Code sometimes writes a result a line or two before its call: keep it
            # for the call with this id (a result no call claims is warned about at the end).
            self.early.setdefault(call_id, deque()).append((output, line))
            return
        if not queue:
            self.warn(line, "tool result without a pending call; skipped")
            return
        step = queue.popleft()
        step.output = self._capped(output, step.name, line)
        self.answered = True

    def usage(self, prompt: Any, cached: Any) -> None:
        """The provider's count of the request that opened the current turn (the first one
        reported in a turn is kept: later responses of an unsplit turn made larger ones)."""
        turn = self.current
        if turn is None or turn.prompt_tokens is not None:
            return
        if isinstance(prompt, int) and isinstance(cached, int) and 0 <= cached <= prompt:
            turn.prompt_tokens, turn.cached_tokens = prompt, cached

    def compaction(self, line: int) -> None:
        self._boundary("compaction", line)

    def reset(self, line: int) -> None:
        self._boundary("reset", line)

    def _boundary(self, event: Literal["compaction", "reset"], line: int) -> None:
        target = (
            self.current if self.current is not None else (self.turns[-1] if self.turns else None)
        )
        if target is None:
            self.warn(line, f"{event} before the first turn; ignored")
            return
        if target.event is None:
            target.event = event
        self.current = None

    def _capped(self, output: str, name: str, line: int) -> str:
        if len(output) > OUTPUT_CAP:
            self.warn(line, f"{name} output of {len(output)} characters cut to {OUTPUT_CAP}")
            return output[:OUTPUT_CAP]
        return output

    # -- result -------------------------------------------------------------------------------

    def finish(self, session: str | None, filename: str) -> list[Turn]:
        self._warn_unanswered()
        drafts = self.turns
        if session is not None:
            ids = list(dict.fromkeys(t.session for t in drafts if t.session is not None))
            if not ids:
                raise InvalidInput(f"{filename} has no session ids to select {session!r} from")
            chosen = session if session in ids else None
            if chosen is None:
                matches = [sid for sid in ids if sid.startswith(session)]
                if len(matches) == 1:
                    chosen = matches[0]
            if chosen is None:
                listing = ", ".join(ids[:5]) + (", …" if len(ids) > 5 else "")
                raise InvalidInput(f"{filename} has no session {session!r} (sessions: {listing})")
            drafts = [t for t in drafts if t.session == chosen]
        numbers: dict[str | None, str] = {}
        turns = []
        for draft in drafts:
            label = numbers.setdefault(draft.session, f"s-{len(numbers) + 1}")
            assistant = _cap(draft.assistant.strip(), TEXT_CAP) or None
            turns.append(
                Turn(
                    session=label,
                    user=draft.user,
                    assistant=assistant,
                    tools=[
                        ToolStep(
                            name=call.name,
                            args=call.args,
                            # A read whose result the transcript lost (cut by a compaction, or
                            # never written) cannot be served later: nobody saw what it returned.
                            # Nor can one that failed: its error is not what the resource holds.
                            effect="volatile"
                            if call.effect == "read" and _lost_or_failed(call.output)
                            else call.effect,
                            output=call.output or "",
                            call_id=call.call_id,
                            resources=declared_resources(call.name, call.effect),
                        )
                        for call in draft.tools
                    ],
                    event=draft.event,
                    prompt_tokens=draft.prompt_tokens,
                    cached_tokens=draft.cached_tokens,
                )
            )
        return turns


def _first(item: tuple[int, str]) -> int:
    return item[0]


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated]"


# --------------------------------------------------------------------------------------------
# Content helpers
# --------------------------------------------------------------------------------------------

_TEXT_BLOCKS = {"text", "input_text", "output_text"}
_IMAGE_BLOCKS = {"image", "input_image", "image_url", "output_image"}


def content_text(value: Any) -> str:
    """A tool output or message content as text: blocks joined, images as ``[image]``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(part for part in (_block_text(item) for item in value) if part)
    if isinstance(value, dict):
        return _block_text(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return json.dumps(block, sort_keys=True, ensure_ascii=False)
    kind = block.get("type")
    if kind in _IMAGE_BLOCKS:
        return "[image]"
    if isinstance(block.get("text"), str) and (kind in _TEXT_BLOCKS or kind is None):
        return str(block["text"])
    if kind == "tool_result" or (kind is None and "content" in block):
        return content_text(block.get("content"))
    if isinstance(kind, str):
        return f"[{kind}]"
    return json.dumps(block, sort_keys=True, ensure_ascii=False)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# --------------------------------------------------------------------------------------------
# Effects and arguments
# --------------------------------------------------------------------------------------------

SHELL_TOOLS = frozenset(
    {
        "bash",
        "shell",
        "shell_command",
        "run_shell_command",
        "run_command",
        "exec_command",
        "local_shell",
        "container.exec",
        "run_in_terminal",
        "powershell",
        "run",
    }
)
PATCH_TOOLS = frozenset({"apply_patch", "applypatch"})
SUBAGENT_TOOLS = frozenset({"task", "agent"})
WRITE_VERBS = frozenset(
    {
        "edit",
        "write",
        "create",
        "update",
        "delete",
        "remove",
        "replace",
        "insert",
        "append",
        "patch",
        "apply",
        "move",
        "rename",
        "commit",
        "push",
        "merge",
        "save",
        "set",
        "kill",
        "stop",
        "install",
        "deploy",
        "upload",
        "send",
        "post",
        "put",
        "modify",
        "reset",
        "checkout",
    }
)
_PATH_ALIASES = (
    "file_path",
    "filePath",
    "notebook_path",
    "absolute_path",
    "AbsolutePath",
    "TargetFile",
    "DirectoryPath",
    "SearchPath",
)
_COMMAND_KEYS = ("command", "cmd", "CommandLine", "commandLine")


VOLATILE_COMMANDS = frozenset(
    {
        "date", "ps", "pgrep", "lsof", "uptime", "top", "free", "who", "w", "netstat", "ss",
        "get-date", "get-process", "sleep", "time", "jobs",
    }
)  # fmt: skip
"""Read-only commands whose output changes on its own (time, processes, the network)."""
VOLATILE_TOOLS = frozenset(
    {
        "bashoutput", "bash_output", "taskoutput", "task_output", "killshell", "read_output",
        "get_output", "command_status", "get_terminal_output", "webfetch", "web_fetch",
        "websearch", "web_search", "fetch", "read_url_content", "google_web_search",
    }
)  # fmt: skip
"""Tools that read state others change: background output, the web."""
READ_VERBS = frozenset(
    {
        "read", "view", "get", "list", "ls", "search", "find", "grep", "glob", "show", "cat",
        "open", "lookup", "query", "describe", "inspect", "stat", "tree", "diff", "dir",
    }
)  # fmt: skip
"""Words of a tool name that make an unrecognised tool a pure read."""
_LOG_FILE = re.compile(r"\.(?:log|out|err|output)$|(?:^|/)(?:logs?|tmp)/", re.IGNORECASE)


def classify(name: str, args: dict[str, Any]) -> tuple[Effect, dict[str, Any]]:
    """The effect of a call and its arguments with the file argument normalised to ``path``."""
    args = _normalise_paths(args)
    lname = name.lower()
    if lname in SHELL_TOOLS:
        command = _command_text(args)
        if command is None:
            return "unknown", args
        read_only, paths = shell_analysis(command)
        if read_only:
            _add_paths(args, paths)
            return ("volatile" if shell_is_volatile(command, paths) else "read"), args
        return "unknown", args
    if lname in PATCH_TOOLS:
        patch = _patch_text(args)
        _add_paths(args, patch_paths(patch), always_list=True)
        return "write", args
    if lname == "exec" and isinstance(args.get("input"), str):
        return _code_mode(args)
    if lname in SUBAGENT_TOOLS:
        return "unknown", args
    if lname in VOLATILE_TOOLS:
        return "volatile", args
    words = _name_words(name)
    if WRITE_VERBS.intersection(words):
        return "write", args
    if READ_VERBS.intersection(words):
        return ("volatile" if any(map(_LOG_FILE.search, _arg_paths(args))) else "read"), args
    return "unknown", args


def _arg_paths(args: dict[str, Any]) -> list[str]:
    found = args.get("paths") if isinstance(args.get("paths"), list) else [args.get("path")]
    return [str(path) for path in found or [] if isinstance(path, str)]


def declared_resources(name: str, effect: str) -> list[str] | None:
    """What a write that names no file changes, where the tool says it by its name.

    A to-do list (``TodoWrite``, ``update_todos``) is the agent's own note, not a file: its write
    changes only ``todo:``, so it does not count as a write of unknown effect.
    """
    if effect == "write" and {"todo", "todos"} & _name_words(name):
        return ["todo:"]
    return None


def shell_is_volatile(command: str, paths: Sequence[str]) -> bool:
    """Whether a read-only script reads state that changes on its own.

    The clock, processes and the network (:data:`VOLATILE_COMMANDS`), version-control state
    (``git status``, ``git log``, ``git diff``, …: commits and edits move it) and log files (a
    path ending ``.log``/``.out``/``.err``, or under a ``log``/``logs``/``tmp`` directory).
    """
    words = re.findall(r"[A-Za-z][\w.-]*", command)
    names = {_command_name(word) for word in words}
    if VOLATILE_COMMANDS.intersection(names) or "git" in names:
        return True
    return any(_LOG_FILE.search(path) for path in paths)


def _normalise_paths(args: dict[str, Any]) -> dict[str, Any]:
    if "path" in args:
        return dict(args)
    alias = next((key for key in _PATH_ALIASES if key in args), None)
    if alias is None:
        return dict(args)
    return {("path" if key == alias else key): value for key, value in args.items()}


def _add_paths(args: dict[str, Any], paths: list[str], *, always_list: bool = False) -> None:
    if not paths or "path" in args or "paths" in args:
        return
    if len(paths) == 1 and not always_list:
        args["path"] = paths[0]
    else:
        args["paths"] = paths


def _name_words(name: str) -> set[str]:
    return {
        word.lower() for word in re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+", name)
    }


def _command_text(args: dict[str, Any]) -> str | None:
    for key in _COMMAND_KEYS:
        value = args.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(part, str) for part in value):
            shell = PurePosixPath(value[0]).name.lower()
            if (
                len(value) >= 3
                and shell in {"bash", "sh", "zsh", "dash"}
                and value[1]
                in (
                    "-c",
                    "-lc",
                )
            ):
                return str(value[2])
            if len(value) >= 3 and shell in {"powershell", "powershell.exe", "pwsh"}:
                return " ".join(value[2:])
            return shlex.join(value)
    return None


def _patch_text(args: dict[str, Any]) -> str:
    for key in ("input", "patch", "diff", "content"):
        if isinstance(args.get(key), str):
            return str(args[key])
    return ""


_PATCH_HEADER = re.compile(
    r"\*\*\* (?:Add|Update|Delete) File: ([^\n\r\\\"]+)|\*\*\* Move to: ([^\n\r\\\"]+)"
)


def patch_paths(patch: str) -> list[str]:
    """The files an ``apply_patch`` body names, in order, without repeats."""
    found = [(a or b).strip() for a, b in _PATCH_HEADER.findall(patch)]
    return list(dict.fromkeys(path for path in found if path))


_CODE_CMD = re.compile(r'"(?:cmd|command)"\s*:\s*("(?:[^"\\]|\\.)*")')


def _code_mode(args: dict[str, Any]) -> tuple[Effect, dict[str, Any]]:
    """Codex code-mode ``exec``: a JavaScript cell calling ``tools.exec_command``/``apply_patch``."""
    script = str(args["input"])
    patched = patch_paths(script)
    if patched or "apply_patch" in script:
        _add_paths(args, patched, always_list=True)
        return "write", args
    commands = []
    for literal in _CODE_CMD.findall(script):
        try:
            value = json.loads(literal)
        except ValueError:
            return "write", args
        if isinstance(value, str):
            commands.append(value)
    paths: list[str] = []
    for command in commands:
        read_only, found = shell_analysis(command)
        if not read_only:
            return "write", args
        paths.extend(found)
    _add_paths(args, list(dict.fromkeys(paths)))
    return "read", args


# --------------------------------------------------------------------------------------------
# The read-only shell rule
# --------------------------------------------------------------------------------------------

READ_ONLY_COMMANDS = frozenset(
    {
        # POSIX
        "ls", "ll", "dir", "cat", "head", "tail", "less", "more", "bat", "grep", "egrep",
        "fgrep", "rg", "ag", "ack", "find", "fd", "tree", "wc", "pwd", "echo", "printf",
        "which", "whereis", "type", "file", "stat", "du", "df", "sed", "awk", "nl", "sort",
        "uniq", "cut", "tr", "column", "jq", "yq", "diff", "cmp", "md5sum", "sha1sum",
        "sha256sum", "shasum", "basename", "dirname", "realpath", "readlink", "date",
        "whoami", "id", "uname", "env", "printenv", "hostname", "ps", "true", "false", "test",
        "[", "sleep", "xxd", "hexdump", "od", "strings", "git", "cd", "pushd", "popd",
        "command", "lsof", "tac", "rev", "fold", "fmt", "expand", "comm", "join", "paste",
        "seq", "time", "pgrep",
        # PowerShell / Windows
        "get-content", "gc", "get-childitem", "gci", "select-string", "sls", "get-item", "gi",
        "test-path", "resolve-path", "get-location", "select-object", "measure-object",
        "sort-object", "where-object", "format-table", "format-list", "out-string",
        "write-output", "write-host", "get-command", "get-date", "set-location", "findstr",
        "where", "get-itemproperty", "split-path", "join-path",
    }
)  # fmt: skip
GIT_READ_ONLY = frozenset(
    {
        "status", "diff", "log", "show", "blame", "ls-files", "ls-tree", "rev-parse", "grep",
        "describe", "shortlog", "cat-file", "rev-list", "whatchanged", "reflog",
    }
)  # fmt: skip
_GIT_LISTING = {"branch", "remote", "tag", "stash", "config", "worktree"}
_GIT_MUTATING_FLAGS = {
    "-d", "-D", "-m", "-M", "-c", "-C", "--delete", "--move", "--copy", "--set-upstream-to",
    "--unset", "--add", "--replace-all", "-f", "--force",
}  # fmt: skip
FILE_READERS = frozenset(
    {"cat", "head", "tail", "nl", "sed", "less", "more", "bat", "tac", "get-content", "gc", "type"}
)
_POWERSHELL_VALUES = frozenset(
    {"-totalcount", "-head", "-tail", "-first", "-last", "-encoding", "-delimiter", "-readcount"}
)
_VALUE_OPTIONS: dict[str, frozenset[str]] = {
    "sed": frozenset({"-e", "--expression", "-f", "--file", "-l"}),
    "head": frozenset({"-n", "-c", "--lines", "--bytes"}),
    "tail": frozenset({"-n", "-c", "--lines", "--bytes", "-s", "--pid"}),
    "nl": frozenset({"-b", "-d", "-f", "-h", "-i", "-n", "-s", "-v", "-w"}),
    "get-content": _POWERSHELL_VALUES,
    "gc": _POWERSHELL_VALUES,
}
_PUNCTUATION = frozenset("();<>|&\n")
_NULL_TARGETS = {"/dev/null", "$null", "nul", "NUL", "/dev/stderr", "/dev/stdout"}
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_WINDOWS = re.compile(r"[A-Za-z]:\\|\b(?:Get|Select|Set|Test|Out|Write|Where|Sort|Measure)-[A-Z]")


def shell_is_read_only(command: str) -> bool:
    """True when every command of a shell script only reads (see :func:`shell_analysis`)."""
    return shell_analysis(command)[0]


def shell_analysis(command: str) -> tuple[bool, list[str]]:
    """Whether a shell script is read-only, and the files its read-only commands print.

    Each command of the script (split on ``;``, ``&&``, ``||``, ``|``, ``&``, newlines and
    parentheses) must start with a command of :data:`READ_ONLY_COMMANDS` (after environment
    assignments), with the extra conditions that ``sed`` has no ``-i``, ``find`` no
    ``-delete``/``-exec``/``-ok``, ``git`` runs a subcommand of :data:`GIT_READ_ONLY` (or lists
    branches, remotes, tags, stashes or config values), and that no output is redirected to a
    file. Heredoc bodies are not commands; a script that cannot be tokenised counts as a write.
    """
    script = _strip_heredocs(command.replace("\r\n", "\n"))
    windows = bool(_WINDOWS.search(script))
    try:
        lexer = shlex.shlex(script, posix=not windows, punctuation_chars="();<>|&\n")
        lexer.whitespace = " \t\r"
        lexer.whitespace_split = True
        lexer.commenters = "" if windows else "#"
        tokens = [_unquote(token) if windows else token for token in lexer]
    except ValueError:
        return False, []
    segments: list[list[str]] = [[]]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token and set(token) <= _PUNCTUATION:
            if "<" in token or ">" in token:
                target = tokens[index + 1] if index + 1 < len(tokens) else ""
                # ``>&2``/``2>&1`` duplicate a descriptor; ``> /dev/null`` discards: both fine.
                if ">" in token and not token.endswith("&") and target not in _NULL_TARGETS:
                    return False, []
                index += 1  # skip the redirection target
            else:
                segments.append([])
        else:
            segments[-1].append(token)
        index += 1
    paths: list[str] = []
    for words in segments:
        words = _drop_assignments(words)
        if not words:
            continue
        if not _segment_read_only(words):
            return False, []
        paths.extend(_read_paths(words))
    return True, list(dict.fromkeys(paths))


def _strip_heredocs(script: str) -> str:
    lines = script.split("\n")
    kept: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        kept.append(line)
        match = _HEREDOC.search(line)
        index += 1
        if match:
            delimiter = match.group(2)
            while index < len(lines) and lines[index].strip() != delimiter:
                index += 1
            index += 1  # the delimiter line itself
    return "\n".join(kept)


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token


def _drop_assignments(words: list[str]) -> list[str]:
    index = 0
    while index < len(words) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[index]):
        index += 1
    return words[index:]


def _command_name(word: str) -> str:
    name = PureWindowsPath(word).name if "\\" in word else PurePosixPath(word).name
    name = name.lower()
    return name[:-4] if name.endswith(".exe") else name


def _segment_read_only(words: list[str]) -> bool:
    name = _command_name(words[0])
    rest = words[1:]
    if name not in READ_ONLY_COMMANDS:
        return False
    if name == "sed":
        return not any(word.startswith("-i") or word == "--in-place" for word in rest)
    if name == "find":
        return not any(
            word in {"-delete", "-exec", "-execdir", "-ok", "-okdir"} or word.startswith("-fprint")
            for word in rest
        )
    if name == "command":
        return bool(rest) and rest[0] in {"-v", "-V"}
    if name == "time":
        return bool(rest) and _segment_read_only(rest)
    if name == "git":
        return _git_read_only(rest)
    return True


def _git_read_only(words: list[str]) -> bool:
    index = 0
    while index < len(words) and words[index].startswith("-"):
        if words[index] in {"-C", "-c", "--git-dir", "--work-tree"}:
            index += 1
        index += 1
    if index >= len(words):
        return True  # bare `git` / `git --version`
    sub, args = words[index], words[index + 1 :]
    if sub in GIT_READ_ONLY:
        return True
    if sub == "stash":
        return bool(args) and args[0] in {"list", "show"}
    if sub == "config":
        return any(arg in {"--get", "--list", "-l", "--get-all", "--get-regexp"} for arg in args)
    if sub in _GIT_LISTING:
        return all(arg.startswith("-") for arg in args) and not _GIT_MUTATING_FLAGS.intersection(
            args
        )
    return False


def _read_paths(words: list[str]) -> list[str]:
    name = _command_name(words[0])
    if name not in FILE_READERS:
        return []
    candidates: list[str] = []
    explicit_script = False
    index = 1
    while index < len(words):
        word = words[index]
        lowered = word.lower()
        if lowered in ("-path", "-literalpath") and index + 1 < len(words):
            candidates.append(words[index + 1])
            index += 2
            continue
        if word.startswith("-") and len(word) > 1:
            if lowered in ("-e", "--expression"):
                explicit_script = True
            if lowered in _VALUE_OPTIONS.get(name, frozenset()):
                index += 1
        elif not re.fullmatch(r"[+-]?\d+", word):
            candidates.append(word)
        index += 1
    if name == "sed" and not explicit_script and candidates:
        candidates = candidates[1:]  # the first operand is the sed script
    return [path for path in candidates if path and not any(ch in path for ch in "*?$`")]


# --------------------------------------------------------------------------------------------
# Claude Code (raw session JSONL and Engram captures)
# --------------------------------------------------------------------------------------------

CONTINUATION_PREFIX = "This session is being continued from a previous conversation"
_NOT_PROMPTS = (
    "[Request interrupted",
    "<local-command-stdout>",
    "<local-command-stderr>",
    "<local-command-caveat>",
    "<bash-stdout>",
    "<bash-stderr>",
)


def _claude_prompt(builder: _Builder, text: str, line: int) -> None:
    stripped = text.strip()
    if not stripped or stripped.startswith(_NOT_PROMPTS):
        return
    if stripped.startswith(CONTINUATION_PREFIX):
        builder.compaction(line)
        return
    builder.user(stripped)


def _parse_claude(text: str, records: list[tuple[int, dict[str, Any]]], b: _Builder) -> None:
    for line, record in records:
        if record.get("role") in ("user", "assistant", "tool") and "type" not in record:
            _engram(record, line, b)
            continue
        kind = record.get("type")
        if not isinstance(kind, str):
            b.warn(line, "record without a type; skipped")
            continue
        if record.get("isSidechain") is True:
            continue  # a sub-agent's own conversation: the main agent sees only its result
        if kind in ("user", "assistant"):
            message = record.get("message")
            if not isinstance(message, dict) or not isinstance(message.get("content"), str | list):
                b.warn(line, f"{kind} record without a message content; skipped")
                continue
            session = record.get("sessionId")
            if isinstance(session, str) and session:
                b.set_session(session)
            if kind == "assistant":
                _claude_assistant(message["content"], line, b)
                usage = message.get("usage")
                if isinstance(usage, dict):
                    counts = [
                        usage.get(name, 0)
                        for name in (
                            "input_tokens",
                            "cache_creation_input_tokens",
                            "cache_read_input_tokens",
                        )
                    ]
                    if all(isinstance(count, int) for count in counts):
                        b.usage(sum(counts), counts[2])
            else:
                _claude_user(record, message["content"], line, b)
        elif kind == "system":
            if record.get("subtype") == "compact_boundary":
                b.compaction(line)
        elif kind == "summary":
            if b.turns:
                b.compaction(line)


def _claude_assistant(content: Any, line: int, b: _Builder) -> None:
    if isinstance(content, str):
        b.assistant(content)
        return
    for block in content:
        if not isinstance(block, dict):
            b.warn(line, "assistant content block is not an object; skipped")
            continue
        kind = block.get("type")
        if kind == "text":
            b.assistant(_str(block.get("text")))
        elif kind == "tool_use":
            _tool_use(b, line, block.get("name"), block.get("input"), block.get("id"))


def _tool_use(b: _Builder, line: int, name: Any, args: Any, call_id: Any) -> None:
    """A tool_use (a content block, or a role/content record): a recorded call, or a warning."""
    if not isinstance(name, str) or not name.strip():
        b.warn(line, "tool_use without a name; skipped")
        return
    if not isinstance(args, dict):
        b.warn(line, f"tool_use {name} input is not an object; arguments dropped")
        args = {}
    b.call(call_id if isinstance(call_id, str) else None, name, args, line)


def _claude_user(record: dict[str, Any], content: Any, line: int, b: _Builder) -> None:
    if record.get("isCompactSummary") is True:
        b.compaction(line)
        return
    if record.get("isMeta") is True:
        return
    if isinstance(content, str):
        _claude_prompt(b, content, line)
        return
    blocks = [block for block in content if isinstance(block, dict)]
    if len(blocks) != len(content):
        b.warn(line, "user content block is not an object; skipped")
    results = [block for block in blocks if block.get("type") == "tool_result"]
    if results:
        for block in results:
            call_id = block.get("tool_use_id")
            b.result(
                call_id if isinstance(call_id, str) else None,
                content_text(block.get("content")),
                line,
            )
        return  # text beside tool results is an interruption marker, not a prompt
    _claude_prompt(b, content_text(blocks), line)


def _engram(record: dict[str, Any], line: int, b: _Builder) -> None:
    role = record["role"]
    content = record.get("content")
    if not isinstance(content, dict):
        b.warn(line, f"{role} record without a content object; skipped")
        return
    kind = content.get("type")
    if role == "user" and kind == "text":
        _claude_prompt(b, _str(content.get("text")), line)
    elif role == "assistant" and kind == "text":
        b.assistant(_str(content.get("text")))
    elif role == "assistant" and kind == "tool_use":
        _tool_use(b, line, content.get("tool_name"), content.get("input"), content.get("tool_id"))
    elif role == "tool" and kind == "tool_result":
        call_id = content.get("tool_id")
        output = content.get("output", content.get("content"))
        b.result(call_id if isinstance(call_id, str) else None, content_text(output), line)
    elif kind not in ("thinking", "redacted_thinking"):
        b.warn(line, f"unexpected {role} content of type {kind!r}; skipped")


# --------------------------------------------------------------------------------------------
# OpenAI Codex CLI rollouts
# --------------------------------------------------------------------------------------------

_CODEX_INJECTED = ("<environment_context>", "<user_instructions>", "# AGENTS.md", "<permissions")


def _codex_output(value: Any) -> str:
    if isinstance(value, str) and value.startswith("{"):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, dict) and isinstance(decoded.get("output"), str):
            return str(decoded["output"])
        return value
    if isinstance(value, dict) and "content" in value:
        return content_text(value["content"])
    return content_text(value)


def _parse_codex(text: str, records: list[tuple[int, dict[str, Any]]], b: _Builder) -> None:
    user_events = any(
        record.get("type") == "event_msg"
        and isinstance(record.get("payload"), dict)
        and record["payload"].get("type") == "user_message"
        for _, record in records
    )
    for line, record in records:
        kind = record.get("type")
        payload = record.get("payload")
        if kind == "compacted":
            b.compaction(line)
            continue
        if not isinstance(kind, str) or not isinstance(payload, dict):
            b.warn(line, "record without a type and payload; skipped")
            continue
        item = payload.get("type")
        if kind == "session_meta":
            session = payload.get("id") or payload.get("session_id")
            if isinstance(session, str) and session:
                b.set_session(session)
        elif kind == "event_msg":
            if item == "user_message":
                b.user(_str(payload.get("message")))
            elif item == "context_compacted":
                b.compaction(line)
            elif item == "token_count":
                info = payload.get("info")
                last = info.get("last_token_usage") if isinstance(info, dict) else None
                if isinstance(last, dict):
                    b.usage(last.get("input_tokens"), last.get("cached_input_tokens"))
        elif kind == "response_item":
            _codex_item(payload, item, line, b, user_events)


def _codex_item(
    payload: dict[str, Any], item: Any, line: int, b: _Builder, user_events: bool
) -> None:
    raw_id = payload.get("call_id")
    call_id = raw_id if isinstance(raw_id, str) else None
    if item == "message":
        role = payload.get("role")
        body = content_text(payload.get("content"))
        if role == "assistant":
            b.assistant(body)
        elif role == "user" and not user_events and not body.lstrip().startswith(_CODEX_INJECTED):
            b.user(body)
    elif item == "function_call":
        name = _str(payload.get("name"))
        raw = payload.get("arguments")
        args: Any = raw
        if isinstance(raw, str):
            try:
                args = json.loads(raw) if raw.strip() else {}
            except ValueError:
                args = {"input": raw}
        if not isinstance(args, dict):
            args = {"input": args}
        if not name:
            b.warn(line, "function_call without a name; skipped")
            return
        b.call(call_id, name, args, line)
    elif item == "custom_tool_call":
        name = _str(payload.get("name"))
        if not name:
            b.warn(line, "custom_tool_call without a name; skipped")
            return
        b.call(call_id, name, {"input": payload.get("input", "")}, line)
    elif item == "local_shell_call":
        action = payload.get("action")
        command = action.get("command") if isinstance(action, dict) else None
        b.call(call_id, "local_shell", {"command": command}, line)
    elif item == "web_search_call":
        action = payload.get("action")
        args = (
            {key: value for key, value in action.items() if key != "type"}
            if isinstance(action, dict)
            else {}
        )
        b.call(call_id, "web_search", args, line, output="")
    elif item in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
        b.result(call_id, _codex_output(payload.get("output")), line)


# --------------------------------------------------------------------------------------------
# GitHub Copilot CLI event streams (bare or wrapped as {role, content, raw})
# --------------------------------------------------------------------------------------------


def _parse_copilot(text: str, records: list[tuple[int, dict[str, Any]]], b: _Builder) -> None:
    for line, record in records:
        raw = record.get("raw")
        event: dict[str, Any] = raw if isinstance(raw, dict) else record
        kind = event.get("type")
        data = event.get("data")
        if not isinstance(kind, str) or not isinstance(data, dict):
            b.warn(line, "event without a type and data; skipped")
            continue
        if kind == "session.start":
            session = data.get("sessionId")
            if isinstance(session, str) and session:
                b.set_session(session)
        elif kind == "user.message":
            b.user(content_text(data.get("content")))
        elif kind == "assistant.message":
            b.assistant(content_text(data.get("content")))
        elif kind == "tool.execution_start":
            name = _str(data.get("toolName"))
            if not name:
                b.warn(line, "tool.execution_start without a toolName; skipped")
                continue
            args = data.get("arguments")
            if not isinstance(args, dict):
                args = {} if args is None else {"input": args}
            call_id = data.get("toolCallId")
            b.call(call_id if isinstance(call_id, str) else None, name, args, line)
        elif kind == "tool.execution_complete":
            call_id = data.get("toolCallId")
            result = data.get("result")
            if isinstance(result, dict) and "content" in result:
                output = content_text(result["content"])
            elif isinstance(data.get("error"), dict):
                output = content_text(data["error"].get("message"))
            else:
                output = content_text(result)
            b.result(call_id if isinstance(call_id, str) else None, output, line)
        elif kind == "session.compaction_complete":
            if data.get("success") is not False:
                b.compaction(line)


# --------------------------------------------------------------------------------------------
# Gemini CLI stream-json
# --------------------------------------------------------------------------------------------


def _parse_gemini(text: str, records: list[tuple[int, dict[str, Any]]], b: _Builder) -> None:
    for line, record in records:
        kind = record.get("type")
        if not isinstance(kind, str):
            b.warn(line, "record without a type; skipped")
            continue
        if kind == "init":
            session = record.get("session_id")
            if isinstance(session, str) and session:
                b.set_session(session)
        elif kind == "message":
            role = record.get("role")
            body = content_text(record.get("content"))
            if role == "user":
                b.user(body)
            elif role == "assistant":
                b.assistant(body, sep="" if record.get("delta") else "\n\n")
        elif kind == "tool_use":
            name = _str(record.get("tool_name"))
            if not name:
                b.warn(line, "tool_use without a tool_name; skipped")
                continue
            args = record.get("parameters")
            if not isinstance(args, dict):
                args = {}
            call_id = record.get("tool_id")
            b.call(call_id if isinstance(call_id, str) else None, name, args, line)
        elif kind == "tool_result":
            call_id = record.get("tool_id")
            output = record.get("output")
            if output is None and isinstance(record.get("error"), dict):
                output = record["error"].get("message")
            b.result(call_id if isinstance(call_id, str) else None, content_text(output), line)
        elif kind in ("compression", "chat_compressed", "compressed"):
            b.compaction(line)


# --------------------------------------------------------------------------------------------
# Google Antigravity trajectories
# --------------------------------------------------------------------------------------------

_STEP_HEADER = re.compile(r"\A(?:(?:Created|Completed) At: [^\n]*\n)+")
_USER_TAGS = re.compile(r"</?USER_REQUEST>")


def _parse_antigravity(text: str, records: list[tuple[int, dict[str, Any]]], b: _Builder) -> None:
    for line, record in records:
        kind = record.get("type")
        if not isinstance(kind, str) or "step_index" not in record:
            b.warn(line, "step without a type and step_index; skipped")
            continue
        body = _str(record.get("content"))
        source = record.get("source")
        if kind == "USER_INPUT":
            b.user(_USER_TAGS.sub("", body))
        elif kind == "PLANNER_RESPONSE":
            b.expire_unnumbered()  # a planner step comes after the previous one's results
            b.assistant(body)
            calls = record.get("tool_calls") or []
            if not isinstance(calls, list):
                b.warn(line, "tool_calls is not a list; skipped")
                continue
            for call in calls:
                name = call.get("name") if isinstance(call, dict) else None
                if not isinstance(name, str) or not name.strip():
                    b.warn(line, "tool call without a name; skipped")
                    continue
                args = call.get("args")
                b.call(None, name, args if isinstance(args, dict) else {}, line)
        elif kind == "CHECKPOINT":
            b.compaction(line)
        elif source == "MODEL" or kind == "ERROR_MESSAGE":
            b.result(None, _STEP_HEADER.sub("", body), line)


# --------------------------------------------------------------------------------------------
# aider chat history (markdown)
# --------------------------------------------------------------------------------------------

_AIDER_START = "# aider chat started at"
_AIDER_YES = re.compile(r"\]:\s*(y|yes|a|all)\s*$", re.IGNORECASE)


def _parse_aider(text: str, records: list[tuple[int, dict[str, Any]]], b: _Builder) -> None:
    """``####`` lines are prompts, ``>`` lines aider's own messages, the rest model output.

    Tool steps: ``Applied edit to F`` (``apply_edit``, write), ``Commit H M`` (``git_commit``,
    write), ``Added F to the chat`` and an accepted ``Add file to the chat?`` for the file named
    on the line before (``add_file``, read; aider's log does not hold the file's content),
    ``Scraping URL`` (``scrape``, read), ``Running CMD`` and ``/run CMD`` (``run``, shell rule).
    ``/clear`` and ``/reset`` end their turn with ``event="reset"``.
    """
    lines = text.split("\n")
    prose: list[str] = []
    last_mention: str | None = None
    running: _Call | None = None
    run_output: list[str] = []

    def flush_prose() -> None:
        body = "\n".join(prose).strip()
        prose.clear()
        if body:
            b.assistant(body)

    def flush_run() -> None:
        nonlocal running
        if running is not None:
            running.output = b._capped("\n".join(run_output).strip(), running.name, running.line)
            run_output.clear()
            running = None

    index = 0
    while index < len(lines):
        number = index + 1
        raw = lines[index].rstrip()
        if raw.startswith(_AIDER_START):
            flush_prose()
            flush_run()
            b.set_session(raw[len(_AIDER_START) :].strip() or f"line-{number}")
            index += 1
            continue
        if raw.startswith("####"):
            flush_prose()
            flush_run()
            prompt: list[str] = []
            while index < len(lines) and lines[index].startswith("####"):
                prompt.append(lines[index][5:].rstrip() if len(lines[index]) > 4 else "")
                index += 1
            body = "\n".join(prompt).strip()
            b.user(body)
            command = body.split(maxsplit=1)[0].lower() if body.startswith("/") else ""
            if command in ("/clear", "/reset"):
                b.reset(number)
            elif command == "/run" or body.startswith("!"):
                script = body[4:].strip() if command == "/run" else body[1:].strip()
                b.call(None, "run", {"command": script}, number, output="")
                running = b.current.tools[-1] if b.current is not None else None
            continue
        if raw == ">" or raw.startswith("> "):  # not ">>>>>>> REPLACE"
            flush_prose()
            message = raw[1:].strip()
            if running is not None:
                run_output.append(message)
                index += 1
                continue
            _aider_message(message, number, b, last_mention)
            last_mention = message
            index += 1
            continue
        if running is not None and raw.strip():
            flush_run()
        prose.append(raw)
        index += 1
    flush_prose()
    flush_run()


def _aider_message(message: str, line: int, b: _Builder, last_mention: str | None) -> None:
    if match := re.fullmatch(r"Applied edit to (.+)", message):
        b.call(None, "apply_edit", {"path": match.group(1)}, line, effect="write", output=message)
    elif match := re.fullmatch(r"Commit ([0-9a-f]{7,40}) (.*)", message):
        args = {"commit": match.group(1), "message": match.group(2)}
        b.call(None, "git_commit", args, line, effect="write", output=message)
    elif match := re.fullmatch(r"Added (.+) to the chat\.?", message):
        b.call(None, "add_file", {"path": match.group(1)}, line, effect="read", output="")
    elif message.startswith("Add file to the chat?") and _AIDER_YES.search(message):
        if last_mention:
            b.call(None, "add_file", {"path": last_mention}, line, effect="read", output="")
    elif match := re.fullmatch(r"Scraping (\S+)\.*", message):
        b.call(None, "scrape", {"url": match.group(1)}, line, effect="read", output="")
    elif match := re.fullmatch(r"Running (.+)", message):
        b.call(None, "run", {"command": match.group(1)}, line, output="")


_PARSERS = {
    "claude-code": _parse_claude,
    "codex": _parse_codex,
    "copilot": _parse_copilot,
    "gemini-cli": _parse_gemini,
    "antigravity": _parse_antigravity,
    "aider": _parse_aider,
}
