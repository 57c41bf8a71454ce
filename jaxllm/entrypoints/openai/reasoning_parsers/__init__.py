"""Parsers that split a model's thinking from its answer (`jaxllm serve --reasoning-parser NAME`):
the thinking goes to `message.reasoning_content` (streamed as `delta.reasoning_content`), the
rest to `content`. One module each, registered by name here.

    qwen3        <think>...</think> answer (no <think> at the start: all content)
    deepseek_r1  [<think>]...</think> answer (the opening tag optional; no </think>: all reasoning)
"""

from __future__ import annotations

from jaxllm.entrypoints.openai.reasoning_parsers.abstract import (
    ReasoningParser,
    ReasoningResult,
    ReasoningStreamer,
)
from jaxllm.entrypoints.openai.reasoning_parsers.deepseek_r1 import DeepSeekR1ReasoningParser
from jaxllm.entrypoints.openai.reasoning_parsers.qwen3 import Qwen3ReasoningParser

__all__ = [
    "REASONING_PARSERS",
    "ReasoningParser",
    "ReasoningResult",
    "ReasoningStreamer",
    "get_reasoning_parser",
    "register_reasoning_parser",
]

REASONING_PARSERS: dict[str, type[ReasoningParser]] = {}


def register_reasoning_parser(cls: type[ReasoningParser]) -> type[ReasoningParser]:
    """Register a ReasoningParser subclass under its `name` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    REASONING_PARSERS[cls.name] = cls
    return cls


for _cls in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser):
    register_reasoning_parser(_cls)


def get_reasoning_parser(name: str) -> ReasoningParser:
    """A parser by its registered name; ValueError listing the names otherwise."""
    try:
        return REASONING_PARSERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown reasoning parser {name!r}; choose one of "
            f"{', '.join(sorted(REASONING_PARSERS))}"
        ) from None
