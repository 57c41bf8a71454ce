"""`hermes`: Hermes and Qwen (2.5, 3) tool calls, as their chat templates ask for them:

    Let me look that up.
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Each `<tool_call>...</tool_call>` block holds one JSON object with `name` and `arguments`; text
outside the blocks is content. A block that does not decode as such an object stays in the
content as written (tags included); a block cut off at the end of the output is read if its JSON
is complete.
"""

from __future__ import annotations

import json

from jaxllm.entrypoints.openai.tool_parsers.abstract import (
    ToolCallStreamer,
    ToolEvent,
    ToolParser,
    call_from_json,
    held_prefix,
)

START = "<tool_call>"
END = "</tool_call>"


class HermesStreamer(ToolCallStreamer):
    def __init__(self) -> None:
        super().__init__()
        self._inside = False
        self._buf = ""

    def feed(self, text: str) -> list[ToolEvent]:
        self._buf += text
        events: list[ToolEvent] = []
        while True:
            if not self._inside:
                i = self._buf.find(START)
                if i < 0:
                    keep = held_prefix(self._buf, START)
                    cut = len(self._buf) - keep
                    events += self._content(self._buf[:cut])
                    self._buf = self._buf[cut:]
                    return events
                events += self._content(self._buf[:i])
                self._buf = self._buf[i + len(START) :]
                self._inside = True
            else:
                i = self._buf.find(END)
                if i < 0:
                    return events  # the call is still being written
                events += self._block(self._buf[:i], closed=True)
                self._buf = self._buf[i + len(END) :]
                self._inside = False

    def _block(self, body: str, closed: bool) -> list[ToolEvent]:
        try:
            call = call_from_json(json.loads(body), ("arguments", "parameters"))
        except ValueError:
            call = None
        if call is None:
            return self._content(START + body + (END if closed else ""))
        return self._call(call.name, call.arguments)

    def finish(self) -> list[ToolEvent]:
        buf, self._buf = self._buf, ""
        if self._inside:
            events = self._block(buf, closed=False)
        else:
            events = self._content(buf)
        self._inside = False
        return events + self._end_content()


class HermesToolParser(ToolParser):
    name = "hermes"

    def streamer(self) -> HermesStreamer:
        return HermesStreamer()
