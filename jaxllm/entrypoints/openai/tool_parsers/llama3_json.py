"""`llama3_json`: Llama 3.1 / 3.2 / 3.3 JSON tool calls, as their chat templates ask for them:
the whole output is a JSON object `{"name": ..., "parameters": {...}}` (or several separated by
`;`), optionally after `<|python_tag|>`. An output that does not start with `{` (or the tag) is
plain content; from an object that does not decode as a call on, the text is content.
"""

from __future__ import annotations

from jaxllm.entrypoints.openai.tool_parsers.abstract import JsonCallsStreamer, ToolParser

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"

    def streamer(self) -> JsonCallsStreamer:
        return JsonCallsStreamer(
            array=False, separators=";", args_keys=("parameters", "arguments"), prefix=PYTHON_TAG
        )
