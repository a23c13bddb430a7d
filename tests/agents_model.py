"""A scripted Agents SDK ``Model`` for tests: no network, replies taken from a script.

Each call to the model pops the next reply off the script. A reply is a list of items built with
:func:`say` and :func:`call`, or a function of the input the model received (to answer from what it
was shown). Every input the runner sent is kept in ``inputs`` so tests can check exactly what the
model saw, and :func:`check_pairing` asserts the history is one the Responses API would accept.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from agents import Model, ModelResponse, Usage
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response import Response

Reply = Sequence[TResponseOutputItem] | Callable[[list[TResponseInputItem]], Sequence[Any]]


def say(text: str, item_id: str = "msg-1") -> ResponseOutputMessage:
    """An assistant text message, as the Responses API returns one."""
    return ResponseOutputMessage(
        id=item_id,
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


def call(name: str, args: dict[str, Any], call_id: str) -> ResponseFunctionToolCall:
    """A function tool call, as the Responses API returns one."""
    return ResponseFunctionToolCall(
        id=f"fc-{call_id}",
        call_id=call_id,
        type="function_call",
        name=name,
        arguments=json.dumps(args),
    )


class ScriptedModel(Model):
    """Replies from a script, in order; records every input it was given."""

    def __init__(self, script: Sequence[Reply] = ()) -> None:
        self.script: list[Reply] = list(script)
        self.inputs: list[list[TResponseInputItem]] = []

    def add(self, *replies: Reply) -> None:
        """Append replies to the script."""
        self.script.extend(replies)

    async def get_response(  # type: ignore[override]
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else input
        self.inputs.append(copy.deepcopy(list(items)))
        if not self.script:
            raise AssertionError("the scripted model was called more times than scripted")
        reply = self.script.pop(0)
        output = list(reply(self.inputs[-1]) if callable(reply) else reply)
        return ModelResponse(output=output, usage=Usage(), response_id=None)

    def stream_response(  # type: ignore[override]
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> AsyncIterator[TResponseStreamEvent]:
        async def events() -> AsyncIterator[TResponseStreamEvent]:
            response = await self.get_response(system_instructions, input)
            yield ResponseCompletedEvent(
                type="response.completed",
                sequence_number=0,
                response=Response(
                    id="resp-1",
                    created_at=0,
                    model="scripted",
                    object="response",
                    output=response.output,
                    parallel_tool_calls=False,
                    tool_choice="auto",
                    tools=[],
                ),
            )

        return events()


def check_pairing(items: Sequence[Any]) -> None:
    """Assert every function_call has exactly one output after it and no output is orphaned."""
    calls: dict[str, int] = {}
    outputs: dict[str, int] = {}
    for index, item in enumerate(items):
        kind = item.get("type")
        if kind == "function_call":
            assert item["call_id"] not in calls, f"call {item['call_id']} twice"
            calls[item["call_id"]] = index
        elif kind == "function_call_output":
            assert item["call_id"] not in outputs, f"output for {item['call_id']} twice"
            assert item["call_id"] in calls, f"orphan output {item['call_id']}"
            assert calls[item["call_id"]] < index, f"output before call {item['call_id']}"
            outputs[item["call_id"]] = index
    missing = set(calls) - set(outputs)
    assert not missing, f"calls without an output: {sorted(missing)}"
