"""Function tools of /v1/chat/completions: what `tool_choice` asks for, the JSON schema that holds
the output to it, and how the output becomes `message.tool_calls`.

- no tools, or `tool_choice` "none": free text (with "none" the tools still reach the chat
  template, as vLLM renders them; the output is never parsed for calls);
- "auto" (the default when tools are given): the model decides; the server's
  `--tool-call-parser` reads calls out of the text. It needs `--enable-auto-tool-choice` and a
  parser (a 400 saying so otherwise, as vLLM answers);
- "required": the output is held to a JSON array of one or more `{"name": <a tool's name>,
  "parameters": <that tool's parameters>}` (vLLM's schema; one item with `parallel_tool_calls`
  false), each item one call;
- a named function `{"type": "function", "function": {"name": ...}}`: the output is held to that
  function's parameters schema and is the call's arguments.

Calls get ids `chatcmpl-tool-<hex>`, and the choice's finish_reason "tool_calls" when the output
ended on its own (a cut-off output keeps "length").
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from jaxllm.entrypoints.openai.errors import bad_request
from jaxllm.entrypoints.openai.protocol import ChatCompletionRequest, ChatTool
from jaxllm.entrypoints.openai.tool_parsers import ToolCallStreamer, ToolEvent, ToolParser
from jaxllm.entrypoints.openai.tool_parsers.abstract import (
    JsonCallsStreamer,
    ParsedToolCalls,
    ToolCall,
    parse,
)

__all__ = ["ToolPlan", "new_tool_call_id", "plan_tools", "required_schema"]

NO_ARGUMENTS = {"type": "object", "properties": {}}


def new_tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def _parameters(tool: ChatTool) -> dict[str, Any]:
    return tool.function.parameters or dict(NO_ARGUMENTS)


def _hoist_defs(schema: dict[str, Any], into: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`schema` without its `$defs` / `definitions`, which go to the root (`into`, by keyword):
    references like `#/$defs/X` are relative to the root, so nested tool schemas need them there."""
    schema = dict(schema)
    for key in ("$defs", "definitions"):
        defs = schema.pop(key, None)
        if not defs:
            continue
        bucket = into.setdefault(key, {})
        for name, sub in defs.items():
            if name in bucket and bucket[name] != sub:
                raise bad_request(
                    f"Two tools define '{key}/{name}' differently; tool_choice 'required' needs "
                    "their definitions to agree.",
                    "tools",
                )
            bucket[name] = sub
    return schema


def required_schema(tools: list[ChatTool], parallel: bool | None = True) -> dict[str, Any]:
    """tool_choice "required": a JSON array of 1+ {"name", "parameters"} objects (vLLM's)."""
    defs: dict[str, dict[str, Any]] = {}
    items = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t.function.name]},
                "parameters": _hoist_defs(_parameters(t), defs),
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": items[0] if len(items) == 1 else {"anyOf": items},
    }
    if parallel is False:
        schema["maxItems"] = 1
    schema.update(defs)
    return schema


class _NamedStreamer(ToolCallStreamer):
    """A named tool_choice: the whole output is the arguments of one call to `name`."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def feed(self, text: str) -> list[ToolEvent]:
        events = [] if self.num_calls else self._call(self.name, "")
        return events + ([ToolEvent(arguments=text)] if text else [])

    def finish(self) -> list[ToolEvent]:
        return [] if self.num_calls else self._call(self.name, "")


@dataclass
class ToolPlan:
    """What a chat request's tools mean for its prompt, grammar and output."""

    mode: str  # "none", "auto", "required" or "named"
    template_tools: list[dict[str, Any]] | None = None  # for the chat template
    schema: dict[str, Any] | None = None  # "required" / "named": the output's JSON schema
    function_name: str | None = None  # "named"
    parser: ToolParser | None = None  # "auto"

    @property
    def parses(self) -> bool:
        return self.mode != "none"

    def streamer(self) -> ToolCallStreamer | None:
        if self.mode == "auto" and self.parser is not None:
            return self.parser.streamer()
        if self.mode == "required":
            return JsonCallsStreamer(array=True, separators=",", args_keys=("parameters",))
        if self.mode == "named":
            return _NamedStreamer(self.function_name or "")
        return None

    def parse(self, text: str) -> ParsedToolCalls:
        """The calls of a whole output (content only when it holds none)."""
        if self.mode == "named":  # arguments that do not decode (cut off): plain content
            try:
                json.loads(text)
            except ValueError:
                return ParsedToolCalls(text, [])
            return ParsedToolCalls(None, [ToolCall(self.function_name or "", text)])
        streamer = self.streamer()
        if streamer is None:
            return ParsedToolCalls(text, [])
        return parse(streamer, text)


def plan_tools(
    req: ChatCompletionRequest, *, parser: ToolParser | None, enable_auto: bool
) -> ToolPlan:
    """The request's ToolPlan; 400s as vLLM answers them (tool_choice without tools, an unknown
    named function, "auto" on a server without --enable-auto-tool-choice/--tool-call-parser)."""
    tools = req.tools or []
    choice = req.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    if choice == "none":
        return ToolPlan("none", _template_tools(tools))
    if not tools:
        raise bad_request("When using 'tool_choice', 'tools' must be set.", "tool_choice")
    template_tools = _template_tools(tools)
    if choice == "auto":
        if not enable_auto or parser is None:
            raise bad_request(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                'to be set on the server (send tool_choice "required", a named function or '
                '"none" instead).',
                "tool_choice",
            )
        return ToolPlan("auto", template_tools, parser=parser)
    if choice == "required":
        return ToolPlan(
            "required", template_tools, schema=required_schema(tools, req.parallel_tool_calls)
        )
    name = choice.function.name  # a NamedToolChoice
    tool = next((t for t in tools if t.function.name == name), None)
    if tool is None:
        raise bad_request(
            f"The function {name!r} named in 'tool_choice' is not among the 'tools' ("
            + ", ".join(repr(t.function.name) for t in tools)
            + ").",
            "tool_choice",
        )
    return ToolPlan("named", template_tools, schema=_parameters(tool), function_name=name)


def _template_tools(tools: list[ChatTool]) -> list[dict[str, Any]] | None:
    return [t.model_dump(exclude_none=True) for t in tools] or None
