"""What every tool-call parser shares: the events a streamer yields, the whitespace rule of the
text around calls, a JSON-objects scanner, and `parse` (a whole output through a fresh streamer).

A parser is a class with a `name` and `streamer()`: each choice of a request gets its own
`ToolCallStreamer`, fed the generated text delta by delta (`feed`), then `finish()` once the
output ended. Both return `ToolEvent`s in order: text outside calls (`content`), a call starting
(`name`, with its `arguments` when the call is complete) or more arguments of the current call.
The non-streaming answer is the same streamer run over the whole text, so streamed and whole
answers always agree. Text a parser cannot read as a call (malformed JSON, a wrong shape) is
content, unchanged.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "JsonCallsStreamer",
    "ParsedToolCalls",
    "ToolCall",
    "ToolCallStreamer",
    "ToolEvent",
    "ToolParser",
    "call_from_json",
    "held_prefix",
    "parse",
]


@dataclass
class ToolEvent:
    """One step of a streamed parse: `content` text outside calls; `name` set: a new call starts
    (its `arguments` may come with it, whole); else `arguments`: more of the current call's."""

    content: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text


@dataclass
class ParsedToolCalls:
    content: str | None  # None: no text besides the calls
    calls: list[ToolCall] = field(default_factory=list)


class ToolCallStreamer(ABC):
    """Incremental parse of one output; see the module docstring."""

    def __init__(self) -> None:
        self._pending = ""  # trailing whitespace of the content, held back
        self.num_calls = 0

    @abstractmethod
    def feed(self, text: str) -> list[ToolEvent]: ...

    @abstractmethod
    def finish(self) -> list[ToolEvent]: ...

    # Content between calls keeps its whitespace, but whitespace at the end (after the last call,
    # or between text and a call) is dropped once there are calls: it is held back until more
    # text follows, and emitted at the end only when the output had no call.
    def _content(self, text: str) -> list[ToolEvent]:
        if not text:
            return []
        text = self._pending + text
        kept = text.rstrip()
        self._pending = text[len(kept) :]
        return [ToolEvent(content=kept)] if kept else []

    def _call(self, name: str, arguments: str | None) -> list[ToolEvent]:
        self.num_calls += 1
        return [ToolEvent(name=name, arguments=arguments)]

    def _end_content(self) -> list[ToolEvent]:
        pending, self._pending = self._pending, ""
        if pending and self.num_calls == 0:
            return [ToolEvent(content=pending)]
        return []


class ToolParser(ABC):
    """A registered parser of "auto" tool calls (jaxllm serve --tool-call-parser NAME)."""

    name: str = ""

    @abstractmethod
    def streamer(self) -> ToolCallStreamer: ...

    def parse(self, text: str) -> ParsedToolCalls:
        return parse(self.streamer(), text)


def parse(streamer: ToolCallStreamer, text: str) -> ParsedToolCalls:
    """A whole output through `streamer`: its content and calls."""
    content: list[str] = []
    calls: list[ToolCall] = []
    for ev in [*streamer.feed(text), *streamer.finish()]:
        if ev.content is not None:
            content.append(ev.content)
        if ev.name is not None:
            calls.append(ToolCall(ev.name, ev.arguments or ""))
        elif ev.arguments is not None and calls:
            calls[-1].arguments += ev.arguments
    joined = "".join(content)
    return ParsedToolCalls(joined if joined or not calls else None, calls)


def held_prefix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that begins `tag` (held back: the tag may be
    arriving)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def call_from_json(obj: Any, args_keys: tuple[str, ...]) -> ToolCall | None:
    """{"name": str, <one of args_keys>: object} -> a ToolCall (arguments as JSON text); None for
    any other shape."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    key = next((k for k in args_keys if k in obj), None)
    args = {} if key is None else obj[key]
    if isinstance(args, str):  # arguments already as JSON text
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


class JsonCallsStreamer(ToolCallStreamer):
    """Calls written as JSON objects one after another: `{...}; {...}` (llama3_json: separators
    ";") or a JSON array `[{...}, {...}]` (`array=True`, separators ","; tool_choice "required").

    Each object is read when its closing brace arrives. What is not such a sequence (another
    character between objects, an object that does not decode or lacks a name) ends the
    sequence: from there on the text is content.
    """

    def __init__(
        self, *, array: bool, separators: str, args_keys: tuple[str, ...], prefix: str = ""
    ) -> None:
        super().__init__()
        self.array = array
        self.separators = separators
        self.args_keys = args_keys
        self.prefix = prefix  # an optional tag before the first object (<|python_tag|>)
        self._state = "start"  # start -> objects -> (done) ; text: plain content from then on
        self._buf = ""  # start: text so far; objects: the current object's text
        self._skipped = ""  # text read outside objects (content again if no call comes)
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, text: str) -> list[ToolEvent]:
        if self._state == "text":
            return self._content(text)
        events: list[ToolEvent] = []
        if self._state == "start":
            self._buf += text
            s = self._buf.lstrip()
            if not s:
                return events
            if self.prefix and s.startswith(self.prefix):
                s = s[len(self.prefix) :].lstrip()
                if not s:
                    return events
            elif self.prefix and self.prefix.startswith(s):
                return events  # the tag may be arriving
            opener = "[" if self.array else "{"
            if s[0] != opener:
                self._state = "text"
                events += self._content(self._buf)
                self._buf = ""
                return events
            self._state = "objects"
            self._skipped = self._buf[: len(self._buf) - len(s)] + (s[0] if self.array else "")
            self._buf = ""
            text = s[1:] if self.array else s
        for i, ch in enumerate(text):
            if self._state == "text":
                events += self._content(text[i:])
                break
            if self._state == "done":
                if not ch.isspace():
                    events += self._to_text(text[i:])
                    break
                continue
            events += self._step(ch)
        return events

    def _step(self, ch: str) -> list[ToolEvent]:
        if self._depth == 0:  # between objects
            if ch == "{":
                self._depth, self._buf = 1, ch
                return []
            if self.array and ch == "]":
                self._state = "done"
            elif not (ch.isspace() or ch in self.separators):
                return self._to_text(ch)
            self._skipped += ch
            return []
        self._buf += ch
        if self._in_string:
            if self._escape:
                self._escape = False
            elif ch == "\\":
                self._escape = True
            elif ch == '"':
                self._in_string = False
            return []
        if ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            self._depth -= 1
            if self._depth == 0:
                raw, self._buf = self._buf, ""
                try:
                    call = call_from_json(json.loads(raw), self.args_keys)
                except ValueError:
                    call = None
                if call is None:  # not a call: content from here on
                    return self._to_text(raw)
                self._skipped = ""
                return self._call(call.name, call.arguments)
        return []

    def _to_text(self, text: str) -> list[ToolEvent]:
        """Content from here on; with no call yet, the text read before is content too."""
        self._state = "text"
        skipped, self._skipped = self._skipped, ""
        return self._content((skipped if self.num_calls == 0 else "") + text)

    def finish(self) -> list[ToolEvent]:
        events: list[ToolEvent] = []
        if self._state == "start" and self._buf:
            events += self._content(self._buf)
        elif self._state == "objects" and self._depth > 0:  # an object cut off
            events += self._to_text(self._buf)
        elif self.num_calls == 0 and self._state in ("objects", "done"):
            events += self._to_text("")
        self._buf = ""
        return events + self._end_content()
