"""Model-free parts of structured outputs, tool calling and reasoning in the server: request
fields -> StructuredOutputsParams (each form, conflicts, bad values), tool_choice plans and their
schemas, the `hermes` and `llama3_json` tool-call parsers, the `qwen3` and `deepseek_r1` reasoning
parsers (every streamed split of an output gives the whole-output answer), and the chat stream's
tool-call and reasoning deltas from a fake engine stream.
"""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("fastapi")
jsonschema = pytest.importorskip("jsonschema")

from pydantic import ValidationError  # noqa: E402

from jaxllm.entrypoints.cli_args import CLIError  # noqa: E402
from jaxllm.entrypoints.openai.errors import OpenAIError  # noqa: E402
from jaxllm.entrypoints.openai.protocol import (  # noqa: E402
    ChatCompletionRequest,
    CompletionRequest,
)
from jaxllm.entrypoints.openai.reasoning_parsers import get_reasoning_parser  # noqa: E402
from jaxllm.entrypoints.openai.serve_args import (  # noqa: E402
    StructuredOutputsConfig,
    resolve_serve_args,
    serve_parser,
)
from jaxllm.entrypoints.openai.serving_chat import (  # noqa: E402
    _OutputParsing,
    _stream,
    messages_to_dicts,
)
from jaxllm.entrypoints.openai.structured import request_structured_outputs  # noqa: E402
from jaxllm.entrypoints.openai.tool_calls import plan_tools  # noqa: E402
from jaxllm.entrypoints.openai.tool_parsers import get_tool_parser  # noqa: E402
from jaxllm.outputs import CompletionOutput, RequestOutput  # noqa: E402
from jaxllm.structured_outputs.params import StructuredOutputsParams  # noqa: E402

MSG = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no parameters


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(**{"messages": MSG, **kw})


def structured(req, **kw):
    return request_structured_outputs(req, **kw)


def error_of(fn, *args, **kw) -> OpenAIError:
    with pytest.raises(OpenAIError) as e:
        fn(*args, **kw)
    assert e.value.status_code == 400
    return e.value


# ------------------------------------------------------------------------------ request forms


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    "fields, kind, spec, source",
    [
        ({"response_format": {"type": "json_object"}}, "json_object", True, "response_format"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": SCHEMA, "strict": True},
                }
            },
            "json",
            SCHEMA,
            "response_format",
        ),
        ({"structured_outputs": {"regex": "[a-z]+"}}, "regex", "[a-z]+", "structured_outputs"),
        (
            {"structured_outputs": {"choice": ["a", "b"]}},
            "choice",
            ["a", "b"],
            "structured_outputs",
        ),
        ({"guided_json": SCHEMA}, "json", SCHEMA, "guided_json"),
        ({"guided_json": json.dumps(SCHEMA)}, "json", json.dumps(SCHEMA), "guided_json"),
        ({"guided_regex": r"\d+"}, "regex", r"\d+", "guided_regex"),
        ({"guided_choice": ["yes", "no"]}, "choice", ["yes", "no"], "guided_choice"),
        ({"guided_grammar": 'start: "x"'}, "grammar", 'start: "x"', "guided_grammar"),
        (
            {"guided_regex": "a", "guided_decoding_backend": "xgrammar"},  # ignored
            "regex",
            "a",
            "guided_regex",
        ),
    ],
)
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_each_form_becomes_structured_outputs_params(fields, kind, spec, source, endpoint):
    if endpoint == "chat":
        req = chat(**fields)
    else:
        req = CompletionRequest(prompt="x", **fields)
    params, field = structured(req)
    assert isinstance(params, StructuredOutputsParams)
    assert (params.kind, getattr(params, kind), field) == (kind, spec, source)


def test_no_structured_output_and_text_format():
    assert structured(chat()) == (None, None)
    assert structured(chat(response_format={"type": "text"})) == (None, None)
    # json_schema without a schema (OpenAI's schema is optional): any JSON object
    req = chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert structured(req)[0].json_object is True


def test_whitespace_default_from_the_server_config():
    cfg = StructuredOutputsConfig(disable_any_whitespace=True)
    req = chat(response_format={"type": "json_object"})
    assert structured(req, defaults=cfg)[0].disable_any_whitespace is True
    assert structured(req)[0].disable_any_whitespace is False
    req = chat(structured_outputs={"json_object": True, "disable_any_whitespace": False})
    assert structured(req, defaults=cfg)[0].disable_any_whitespace is False  # the request says


def test_more_than_one_form_is_a_400_naming_them():
    req = chat(response_format={"type": "json_object"}, guided_regex="a+")
    e = error_of(structured, req)
    assert "'response_format'" in e.message and "'guided_regex'" in e.message
    assert e.param == "guided_regex"
    req = CompletionRequest(prompt="x", guided_choice=["a"], structured_outputs={"regex": "b"})
    e = error_of(structured, req)
    assert "'structured_outputs'" in e.message and "'guided_choice'" in e.message
    # tool_choice "required" / named imposes a schema: one more form
    e = error_of(structured, chat(guided_json=SCHEMA), tool_schema={"type": "array"})
    assert "'guided_json'" in e.message and "'tool_choice'" in e.message


@pytest.mark.parametrize(
    "fields, param, text",
    [
        ({"structured_outputs": {"regexp": "a"}}, "structured_outputs", "regexp"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "one of"),
        ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs", "not supported"),
        ({"guided_choice": []}, "guided_choice", "non-empty"),
        ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "json_schema",
        ),
    ],
)
def test_bad_structured_values_are_400s_naming_the_field(fields, param, text):
    e = error_of(structured, chat(**fields))
    assert e.param == param and text in e.message, e.message


def test_response_format_shape_is_validated_by_the_schema():
    with pytest.raises(ValidationError):
        chat(response_format={"type": "yaml"})
    with pytest.raises(ValidationError):
        chat(response_format={"type": "json_schema", "json_schema": {"schema": {}, "x": 1}})


# ------------------------------------------------------------------------------------ tool plans


def plan(parser=None, enable_auto=False, **kw):
    return plan_tools(chat(**kw), parser=parser, enable_auto=enable_auto)


def test_tool_choice_none_and_no_tools():
    assert plan().mode == "none" and plan().template_tools is None
    p = plan(tools=[WEATHER], tool_choice="none")
    assert p.mode == "none" and p.schema is None and not p.parses
    assert p.template_tools[0]["function"]["name"] == "get_weather"  # still rendered


def test_auto_needs_the_server_flags():
    for kw in ({"tools": [WEATHER]}, {"tools": [WEATHER], "tool_choice": "auto"}):
        e = error_of(plan, **kw)
        assert "--enable-auto-tool-choice" in e.message and "--tool-call-parser" in e.message
        assert e.param == "tool_choice"
    p = plan(get_tool_parser("hermes"), True, tools=[WEATHER])
    assert p.mode == "auto" and p.schema is None and p.parser.name == "hermes"


def test_tool_choice_errors():
    e = error_of(plan, tool_choice="required")
    assert "'tools' must be set" in e.message
    named = {"type": "function", "function": {"name": "nope"}}
    e = error_of(plan, tools=[WEATHER, TIME], tool_choice=named)
    assert "'nope'" in e.message and "'get_weather'" in e.message
    with pytest.raises(ValidationError):
        chat(tools=[WEATHER], tool_choice="sometimes")
    with pytest.raises(ValidationError):
        chat(tools=[{"type": "function"}])  # no function


def test_required_schema_accepts_calls_of_the_tools_only():
    p = plan(tools=[WEATHER, TIME], tool_choice="required")
    assert p.mode == "required"
    good = [
        {"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}},
        {"name": "get_time", "parameters": {}},
    ]
    jsonschema.validate(good, p.schema)
    for bad in (
        [],
        [{"name": "get_weather", "parameters": {"unit": "c"}}],  # city missing
        [{"name": "other", "parameters": {}}],
        [{"name": "get_time"}],
        [{"name": "get_time", "parameters": {}, "extra": 1}],
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, p.schema)
    one = plan(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(good, one.schema)
    # the output -> calls
    parsed = p.parse(json.dumps(good))
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("get_weather", {"city": "Paris", "unit": "c"}),
        ("get_time", {}),
    ]
    assert parsed.content is None


def test_required_schema_hoists_defs():
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"p": {"$ref": "#/$defs/P"}},
                "required": ["p"],
                "$defs": {"P": {"type": "integer"}},
            },
        },
    }
    schema = plan(tools=[tool], tool_choice="required").schema
    assert schema["$defs"] == {"P": {"type": "integer"}}
    jsonschema.validate([{"name": "f", "parameters": {"p": 3}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "f", "parameters": {"p": "x"}}], schema)


def test_named_tool_choice_schema_and_parse():
    named = {"type": "function", "function": {"name": "get_weather"}}
    p = plan(tools=[WEATHER, TIME], tool_choice=named)
    assert (p.mode, p.schema, p.function_name) == (
        "named",
        WEATHER["function"]["parameters"],
        "get_weather",
    )
    parsed = p.parse('{"city": "Oslo"}')
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", '{"city": "Oslo"}')]
    assert p.parse('{"city": "Os').calls == []  # cut off: content
    named = {"type": "function", "function": {"name": "get_time"}}
    assert plan(tools=[WEATHER, TIME], tool_choice=named).schema == {
        "type": "object",
        "properties": {},
    }


def test_tool_messages_reach_the_template_with_arguments_as_objects():
    req = chat(
        tools=[WEATHER],
        tool_choice="none",
        messages=[
            *MSG,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    )
    msgs = messages_to_dicts(req.messages)
    assert msgs[1]["content"] == "" and msgs[1]["tool_calls"][0]["id"] == "call_1"
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert msgs[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


# ------------------------------------------------------------------------------ tool parsers


def calls(parsed):
    return [(c.name, json.loads(c.arguments)) for c in parsed.calls]


def streamed(streamer, text, step=1):
    """Feed `text` in pieces of `step` chars; (content, [(name, arguments)]) rebuilt from events."""
    events = []
    for i in range(0, len(text), step):
        events += streamer.feed(text[i : i + step])
    events += streamer.finish()
    content, out = "", []
    for ev in events:
        if ev.content:
            content += ev.content
        if ev.name is not None:
            out.append([ev.name, ev.arguments or ""])
        elif ev.arguments:
            out[-1][1] += ev.arguments
    return content or None, [(n, json.loads(a)) for n, a in out]


HERMES_CASES = [
    # (output, content, calls)
    (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        None,
        [("get_weather", {"city": "Paris"})],
    ),
    (
        'Let me check.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {"s": "</tool"}}\n</tool_call>\n',
        "Let me check.",
        [("a", {"x": 1}), ("b", {"s": "</tool"})],
    ),
    (
        'Before <tool_call>{"name": "a", "arguments": {}}</tool_call> after',
        "Before  after",
        [("a", {})],
    ),
    ("No tools needed: 2 < 3.", "No tools needed: 2 < 3.", []),
    (  # malformed JSON: the block stays as content
        'Hi <tool_call>{"name": "a", "arguments": {x}}</tool_call>',
        'Hi <tool_call>{"name": "a", "arguments": {x}}</tool_call>',
        [],
    ),
    (  # one good call, one without a name
        '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"x": 1}</tool_call>',
        '<tool_call>{"x": 1}</tool_call>',
        [("a", {})],
    ),
    (  # unclosed at the end, JSON complete: read
        '<tool_call>{"name": "a", "arguments": {"k": [1, 2]}}',
        None,
        [("a", {"k": [1, 2]})],
    ),
    ('<tool_call>{"name": "a", "argu', '<tool_call>{"name": "a", "argu', []),  # cut off
    ('<tool_call>{"name": "a", "arguments": "{\\"k\\": 1}"}</tool_call>', None, [("a", {"k": 1})]),
]


@pytest.mark.parametrize("output, content, want", HERMES_CASES)
def test_hermes(output, content, want):
    parser = get_tool_parser("hermes")
    parsed = parser.parse(output)
    assert (parsed.content, calls(parsed)) == (content, want)
    for step in (1, 3, 7):
        assert streamed(parser.streamer(), output, step) == (content, want)


LLAMA_CASES = [
    (
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        None,
        [("get_weather", {"city": "Paris"})],
    ),
    (
        '<|python_tag|>{"name": "a", "parameters": {"x": "1;}"}}; {"name": "b", "parameters": {}}',
        None,
        [("a", {"x": "1;}"}), ("b", {})],
    ),
    ('  {"name": "a", "arguments": {"y": true}}\n', None, [("a", {"y": True})]),
    ("The answer is {x}.", "The answer is {x}.", []),
    ('{"name": "a", "parameters": {bad}}', '{"name": "a", "parameters": {bad}}', []),
    ('{"name": "a", "parameters": {}}; and then text', "and then text", [("a", {})]),
    ('{"name": "a", "parameters": {"k', '{"name": "a", "parameters": {"k', []),
    ('{"value": 3}', '{"value": 3}', []),  # JSON, but not a call
]


@pytest.mark.parametrize("output, content, want", LLAMA_CASES)
def test_llama3_json(output, content, want):
    parser = get_tool_parser("llama3_json")
    parsed = parser.parse(output)
    assert (parsed.content, calls(parsed)) == (content, want)
    for step in (1, 4):
        assert streamed(parser.streamer(), output, step) == (content, want)


def test_unknown_parser_names():
    with pytest.raises(ValueError, match="hermes, llama3_json"):
        get_tool_parser("mistral")
    with pytest.raises(ValueError, match="deepseek_r1, qwen3"):
        get_reasoning_parser("granite")


# ------------------------------------------------------------------------------ reasoning parsers


REASONING_CASES = [
    # (parser, prompt, output, reasoning, content)
    ("qwen3", "", "<think>\nLet me think.\n</think>\n\nParis.", "Let me think.", "Paris."),
    ("qwen3", "", "Paris.", None, "Paris."),  # no thinking
    ("qwen3", "", "<think>\nstill thinking", "still thinking", ""),  # cut off
    ("qwen3", "x<|im_start|>assistant\n<think>\n", "hmm\n</think>\nOK", "hmm", "OK"),
    ("qwen3", "<think>\n\n</think>\n\n", "<think>x</think>y", None, "<think>x</think>y"),
    ("deepseek_r1", "", "<think>a < b</think>So a.", "a < b", "So a."),
    ("deepseek_r1", "", "I reason.\n</think>\n\nAnswer", "I reason.", "Answer"),
    ("deepseek_r1", "", "only reasoning", "only reasoning", ""),
    ("deepseek_r1", "<think>\n\n</think>\n\n", "plain", None, "plain"),
]


@pytest.mark.parametrize("name, prompt, output, reasoning, content", REASONING_CASES)
def test_reasoning_parsers_whole_and_every_split(name, prompt, output, reasoning, content):
    parser = get_reasoning_parser(name)
    r = parser.parse(output, prompt)
    assert (r.reasoning_content, r.content) == (reasoning, content)
    for cut in range(len(output) + 1):  # every split point, across the tags included
        s = parser.streamer(prompt)
        r1, c1 = s.feed(output[:cut])
        r2, c2 = s.feed(output[cut:])
        r3, c3 = s.finish()
        assert (r1 + r2 + r3, c1 + c2 + c3) == (reasoning or "", content), cut
    s = parser.streamer(prompt)  # one character at a time
    pieces = [s.feed(ch) for ch in output] + [s.finish()]
    assert "".join(p[0] for p in pieces) == (reasoning or "")
    assert "".join(p[1] for p in pieces) == content


# ------------------------------------------------------------------- streamed chat deltas


class _Ctx:
    def __init__(self, tool_parser=None, reasoning_parser=None, enable_auto=True):
        self.tool_parser = tool_parser
        self.reasoning_parser = reasoning_parser
        self.enable_auto_tools = enable_auto


class _FakeStream:
    """A RequestStream of fixed deltas (one CompletionOutput each, the last finished)."""

    def __init__(self, pieces: list[str], finish_reason: str = "stop"):
        self.pieces = pieces
        self.finish_reason = finish_reason

    async def __aiter__(self):
        for i, text in enumerate(self.pieces):
            last = i == len(self.pieces) - 1
            out = CompletionOutput(0, text, [i], None, None, self.finish_reason if last else None)
            yield RequestOutput("r", "p", [1], None, [out], last)

    def abort(self):
        pass


def run_stream(ctx, req, pieces, finish_reason="stop", prompt=""):
    """The SSE payloads of the chat stream (JSON dicts), as the client receives them."""
    plan = plan_tools(req, parser=ctx.tool_parser, enable_auto=ctx.enable_auto_tools)
    parsing = _OutputParsing(ctx, plan, prompt)

    async def go():
        return [
            e
            async for e in _stream(
                ctx, req, "m", "rid", 3, _FakeStream(pieces, finish_reason), parsing
            )
        ]

    events = asyncio.run(go())
    assert events[-1] == "data: [DONE]\n\n"
    return [json.loads(e[len("data: ") :]) for e in events[:-1]]


def accumulate(chunks):
    """What the openai client's stream accumulation gives: content, reasoning, tool calls."""
    content, reasoning, tools, finish = "", "", {}, None
    for ch in chunks:
        choice = ch["choices"][0]
        delta = choice["delta"]
        content += delta.get("content") or ""
        reasoning += delta.get("reasoning_content") or ""
        for tc in delta.get("tool_calls") or []:
            slot = tools.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
            if tc.get("id"):
                assert slot["id"] is None, "a call's id is sent once"
                slot["id"] = tc["id"]
                assert tc["type"] == "function"
            fn = tc["function"]
            slot["name"] += fn.get("name") or ""
            slot["arguments"] += fn.get("arguments") or ""
        if choice["finish_reason"] is not None:
            assert finish is None, "one finish_reason per choice"
            finish = choice["finish_reason"]
    return content, reasoning, [tools[i] for i in sorted(tools)], finish


def split(text, step):
    return [text[i : i + step] for i in range(0, len(text), step)]


def test_stream_hermes_tool_call_deltas():
    output = (
        'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    )
    ctx = _Ctx(get_tool_parser("hermes"))
    req = chat(tools=[WEATHER, TIME], stream=True)
    for step in (1, 5, len(output)):
        chunks = run_stream(ctx, req, split(output, step))
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        content, reasoning, tools, finish = accumulate(chunks)
        assert (content, reasoning, finish) == ("Checking.", "", "tool_calls")
        assert [(t["name"], json.loads(t["arguments"])) for t in tools] == [
            ("get_weather", {"city": "Paris"}),
            ("get_time", {}),
        ]
        assert all(t["id"].startswith("chatcmpl-tool-") for t in tools)
        assert tools[0]["id"] != tools[1]["id"]
    # content before a call is sent before the call has closed
    chunks = run_stream(
        ctx,
        req,
        ["Checking.", "\n<tool_call>", '{"name": "get_time", ', '"arguments": {}}</tool_call>'],
    )
    first_content = next(i for i, c in enumerate(chunks) if c["choices"][0]["delta"].get("content"))
    first_call = next(i for i, c in enumerate(chunks) if c["choices"][0]["delta"].get("tool_calls"))
    assert first_content < first_call


def test_stream_without_calls_is_plain_content_and_length_stays():
    ctx = _Ctx(get_tool_parser("hermes"))
    req = chat(tools=[WEATHER], stream=True)
    text = "No call here <tool_ ... just text.  "
    content, _, tools, finish = accumulate(run_stream(ctx, req, split(text, 4)))
    assert (content, tools, finish) == (text, [], "stop")
    cut = '<tool_call>{"name": "get_time", "argu'  # cut off by max_tokens
    content, _, tools, finish = accumulate(run_stream(ctx, req, split(cut, 3), "length"))
    assert (content, tools, finish) == (cut, [], "length")


def test_stream_required_and_named():
    ctx = _Ctx()
    req = chat(tools=[WEATHER, TIME], tool_choice="required", stream=True)
    output = (
        '[{"name": "get_weather", "parameters": {"city": "Rome"}}, '
        '{"name": "get_time", "parameters": {}}]'
    )
    content, _, tools, finish = accumulate(run_stream(ctx, req, split(output, 6)))
    assert (content, finish) == ("", "tool_calls")
    assert [(t["name"], json.loads(t["arguments"])) for t in tools] == [
        ("get_weather", {"city": "Rome"}),
        ("get_time", {}),
    ]
    named = {"type": "function", "function": {"name": "get_weather"}}
    req = chat(tools=[WEATHER, TIME], tool_choice=named, stream=True)
    chunks = run_stream(ctx, req, split('{"city": "Rome"}', 3))
    content, _, tools, finish = accumulate(chunks)
    assert (content, finish) == ("", "tool_calls")
    assert [(t["name"], t["arguments"]) for t in tools] == [("get_weather", '{"city": "Rome"}')]
    # the arguments stream as they come (not held until the end)
    arg_chunks = [
        c
        for c in chunks
        if (c["choices"][0]["delta"].get("tool_calls") or [{}])[0]
        .get("function", {})
        .get("arguments")
    ]
    assert len(arg_chunks) > 1


def test_stream_reasoning_then_tool_call():
    ctx = _Ctx(get_tool_parser("hermes"), get_reasoning_parser("qwen3"))
    req = chat(tools=[WEATHER], stream=True)
    output = (
        "<think>\nI need the weather.\n</think>\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    for step in (1, 4):
        chunks = run_stream(ctx, req, split(output, step))
        content, reasoning, tools, finish = accumulate(chunks)
        assert (content, reasoning, finish) == ("", "I need the weather.", "tool_calls")
        assert [(t["name"], json.loads(t["arguments"])) for t in tools] == [
            ("get_weather", {"city": "Oslo"})
        ]
        kinds = [
            "r" if c["choices"][0]["delta"].get("reasoning_content") else "t"
            for c in chunks
            if c["choices"][0]["delta"].get("reasoning_content")
            or c["choices"][0]["delta"].get("tool_calls")
        ]
        assert kinds == sorted(kinds)  # reasoning first, then the call
    # and the whole answer through _OutputParsing.message agrees
    plan = plan_tools(req, parser=ctx.tool_parser, enable_auto=True)
    message, finish = _OutputParsing(ctx, plan, "").message(
        CompletionOutput(0, output, [1], None, None, "stop")
    )
    assert (message.reasoning_content, message.content, finish) == (
        "I need the weather.",
        None,
        "tool_calls",
    )
    assert message.tool_calls[0].function.name == "get_weather"


def test_stream_reasoning_only():
    ctx = _Ctx(reasoning_parser=get_reasoning_parser("deepseek_r1"))
    req = chat(stream=True)
    output = "Thinking hard.</think>\n\nThe answer is 4."
    content, reasoning, tools, finish = accumulate(run_stream(ctx, req, split(output, 2)))
    assert (content, reasoning, tools, finish) == ("The answer is 4.", "Thinking hard.", [], "stop")


# ------------------------------------------------------------------------------- serve options


def test_serve_flags():
    opts = resolve_serve_args(
        serve_parser().parse_args(
            [
                "--structured-outputs-config",
                '{"backend": "guidance", "disable_any_whitespace": true}',
                "--enable-auto-tool-choice",
                "--tool-call-parser",
                "hermes",
                "--reasoning-parser",
                "deepseek_r1",
            ]
        )
    )
    assert opts.structured_outputs_config == StructuredOutputsConfig("guidance", True)
    assert (opts.enable_auto_tool_choice, opts.tool_call_parser, opts.reasoning_parser) == (
        True,
        "hermes",
        "deepseek_r1",
    )
    default = resolve_serve_args(serve_parser().parse_args([]))
    assert default.structured_outputs_config == StructuredOutputsConfig("auto", False)
    assert (default.enable_auto_tool_choice, default.tool_call_parser) == (False, None)


@pytest.mark.parametrize(
    "argv, text",
    [
        (["--structured-outputs-config", '{"backend": "xgrammar"}'], "auto, guidance, llguidance"),
        (["--structured-outputs-config", "{backend"], "not valid JSON"),
        (["--structured-outputs-config", '{"reasoning_parser": "x"}'], "unsupported keys"),
        (["--enable-auto-tool-choice"], "--tool-call-parser"),
    ],
)
def test_serve_flag_errors(argv, text):
    with pytest.raises(CLIError, match=text):
        resolve_serve_args(serve_parser().parse_args(argv))
