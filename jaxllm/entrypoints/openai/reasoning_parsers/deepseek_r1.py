"""`deepseek_r1`: DeepSeek-R1 (and its distills) thinking. The model always thinks, and its
template may have written the opening `<think>` into the prompt, so the opening tag is optional:
everything before `</think>` is reasoning, and an output without `</think>` is all reasoning."""

from __future__ import annotations

from jaxllm.entrypoints.openai.reasoning_parsers.abstract import ReasoningParser


class DeepSeekR1ReasoningParser(ReasoningParser):
    name = "deepseek_r1"
    start_optional = True
