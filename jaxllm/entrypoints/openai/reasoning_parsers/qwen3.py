"""`qwen3`: Qwen3 (and QwQ) thinking, `<think>...</think>` then the answer. An output that does
not open with `<think>` is all content (thinking off, or a non-thinking model), unless the prompt
already opened it; a `<think>` never closed (cut off by max_tokens) is all reasoning."""

from __future__ import annotations

from jaxllm.entrypoints.openai.reasoning_parsers.abstract import ReasoningParser


class Qwen3ReasoningParser(ReasoningParser):
    name = "qwen3"
    start_optional = False
