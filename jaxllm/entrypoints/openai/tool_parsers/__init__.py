"""Parsers of "auto" tool calls in generated text (`jaxllm serve --enable-auto-tool-choice
--tool-call-parser NAME`), one module each, registered by name here.

    hermes       Hermes / Qwen: <tool_call>{"name": ..., "arguments": {...}}</tool_call>
    llama3_json  Llama 3.x: {"name": ..., "parameters": {...}} (";"-separated), after an optional
                 <|python_tag|>

See abstract.py for the interface (a streamer per output; the whole-output parse is the same
streamer run once).
"""

from __future__ import annotations

from jaxllm.entrypoints.openai.tool_parsers.abstract import (
    ParsedToolCalls,
    ToolCall,
    ToolCallStreamer,
    ToolEvent,
    ToolParser,
)
from jaxllm.entrypoints.openai.tool_parsers.hermes import HermesToolParser
from jaxllm.entrypoints.openai.tool_parsers.llama3_json import Llama3JsonToolParser

__all__ = [
    "TOOL_PARSERS",
    "ParsedToolCalls",
    "ToolCall",
    "ToolCallStreamer",
    "ToolEvent",
    "ToolParser",
    "get_tool_parser",
    "register_tool_parser",
]

TOOL_PARSERS: dict[str, type[ToolParser]] = {}


def register_tool_parser(cls: type[ToolParser]) -> type[ToolParser]:
    """Register a ToolParser subclass under its `name` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    TOOL_PARSERS[cls.name] = cls
    return cls


for _cls in (HermesToolParser, Llama3JsonToolParser):
    register_tool_parser(_cls)


def get_tool_parser(name: str) -> ToolParser:
    """A parser by its registered name; ValueError listing the names otherwise."""
    try:
        return TOOL_PARSERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown tool call parser {name!r}; choose one of {', '.join(sorted(TOOL_PARSERS))}"
        ) from None
