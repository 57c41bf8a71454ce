"""The `<think>...</think>` reasoning parser both registered parsers are.

Each choice of a request gets a `ReasoningStreamer`, fed the generated text delta by delta; it
returns (reasoning, content) pieces. The whole-output answer is the same streamer run once, so
streamed and whole answers agree. Whitespace right after the opening tag, right before the closing
one and right after it is dropped (the templates put newlines there).

The prompt decides where the output starts: a prompt ending in the opening tag (templates that
open the thinking themselves) starts inside the reasoning; one ending in the closing tag (thinking
turned off, e.g. Qwen3's `enable_thinking=False`) starts in the content.
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxllm.entrypoints.openai.tool_parsers.abstract import held_prefix

__all__ = ["ReasoningParser", "ReasoningStreamer", "ReasoningResult"]


@dataclass
class ReasoningResult:
    reasoning_content: str | None  # None: the output had no reasoning part
    content: str


class ReasoningStreamer:
    def __init__(self, parser: ReasoningParser, prompt: str = "") -> None:
        self.start, self.end = parser.start_tag, parser.end_tag
        self.start_optional = parser.start_optional
        self._state = "start"  # start -> reasoning -> content
        tail = prompt.rstrip()
        if tail.endswith(self.end):
            self._state = "content"
        elif tail.endswith(self.start):
            self._state = "reasoning"
        self._buf = ""
        self._lead = self._state == "reasoning"  # drop leading whitespace of the reasoning
        self._pending = ""  # trailing whitespace of the reasoning, held back
        self._content_lead = False  # drop leading whitespace of the content
        self.saw_reasoning = self._state == "reasoning"

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of this delta."""
        if self._state == "content":
            return "", self._content(text)
        self._buf += text
        if self._state == "start":
            s = self._buf.lstrip()
            if not s:
                return "", ""
            if s.startswith(self.start):
                self._buf = s[len(self.start) :]
            elif self.start.startswith(s):
                return "", ""  # the tag may be arriving
            elif not self.start_optional:
                self._state = "content"
                buf, self._buf = self._buf, ""
                return "", buf
            self._state = "reasoning"
            self._lead = True
            self.saw_reasoning = True
        i = self._buf.find(self.end)
        if i >= 0:
            reasoning = self._reasoning(self._buf[:i], final=True)
            rest = self._buf[i + len(self.end) :]
            self._buf = ""
            self._state = "content"
            self._content_lead = True
            return reasoning, self._content(rest)
        cut = len(self._buf) - held_prefix(self._buf, self.end)
        reasoning = self._reasoning(self._buf[:cut], final=False)
        self._buf = self._buf[cut:]
        return reasoning, ""

    def _reasoning(self, text: str, final: bool) -> str:
        text = self._pending + text
        if self._lead:
            text = text.lstrip()
            self._lead = not text
        kept = text.rstrip()
        self._pending = "" if final else text[len(kept) :]
        return kept

    def _content(self, text: str) -> str:
        if self._content_lead:
            text = text.lstrip()
            self._content_lead = not text
        return text

    def finish(self) -> tuple[str, str]:
        """What was held back, at the end of the output."""
        buf, self._buf = self._buf, ""
        if self._state == "start":
            if self.start_optional:
                self.saw_reasoning = self.saw_reasoning or bool(buf.strip())
                return buf.strip(), ""
            return "", buf
        if self._state == "reasoning":
            return self._reasoning(buf, final=True), ""
        return "", ""

    def parse(self, text: str) -> ReasoningResult:
        r1, c1 = self.feed(text)
        r2, c2 = self.finish()
        return ReasoningResult(r1 + r2 if self.saw_reasoning else None, c1 + c2)


class ReasoningParser:
    """A registered `--reasoning-parser`: its tags, and whether the opening tag may be missing
    (then everything before the closing tag, or the whole output, is reasoning)."""

    name = ""
    start_tag = "<think>"
    end_tag = "</think>"
    start_optional = False

    def streamer(self, prompt: str = "") -> ReasoningStreamer:
        return ReasoningStreamer(self, prompt)

    def parse(self, text: str, prompt: str = "") -> ReasoningResult:
        return self.streamer(prompt).parse(text)
