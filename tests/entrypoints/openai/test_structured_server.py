"""Structured outputs and tool calling through the real server (SmolLM2, the official `openai`
client): `response_format` json_schema answers validate against their schemas, `guided_regex` /
`guided_choice` / `structured_outputs` match exactly, tool_choice "required" and a named
function give tool calls whose arguments validate (streamed and not), "none" with tools gives
plain text, and a malformed schema is a 400 naming the problem while other requests go on.

One server per module; the requests of a test run together (one batch), greedy, with schemas
whose outputs close quickly (enums, bounded numbers, maxLength, no additional properties).
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("llguidance")

from live_server import KEY, MODEL, SERVE_ARGV, TIMEOUT, Live  # noqa: E402

from jaxllm.entrypoints.openai.api_server import Server, build_app, build_llm  # noqa: E402
from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser  # noqa: E402

ARGV = [*SERVE_ARGV, "--structured-outputs-config", '{"backend": "guidance"}']

CITY = {"type": "string", "enum": ["Paris", "London", "Tokyo"]}
SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                },
                "required": ["name", "age"],
                "additionalProperties": False,
            },
            "city": CITY,
        },
        "required": ["person", "city"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "ok": {"type": "boolean"},
        },
        "required": ["colour", "ok"],
        "additionalProperties": False,
    },
    "array": {
        "type": "object",
        "properties": {
            "scores": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": 9},
                "minItems": 2,
                "maxItems": 4,
            }
        },
        "required": ["scores"],
        "additionalProperties": False,
    },
}
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": CITY, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast of a city",
            "parameters": WEATHER_PARAMS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": CITY},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def live(smollm2):
    opts = resolve_serve_args(serve_parser().parse_args(ARGV))
    llm = build_llm(opts, model=smollm2)
    app, ctx = build_app(llm, opts)
    server = Server(app).start()
    try:
        yield Live(server, ctx, opts, llm.tokenizer, None)
    finally:
        server.stop()


def run(coros):
    async def go():
        return await asyncio.wait_for(asyncio.gather(*coros), timeout=300)

    return asyncio.run(go())


async def collect_stream(stream):
    """(content, {index: {id, name, arguments}}, finish_reason) of a streamed chat choice."""
    content, calls, finish = "", {}, None
    async for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for tc in choice.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = slot["id"] or tc.id
            if tc.function is not None:
                slot["name"] += tc.function.name or ""
                slot["arguments"] += tc.function.arguments or ""
        finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def chat_kwargs(**kw):
    return {"model": MODEL, "messages": ASK, "temperature": 0, "max_tokens": 80, **kw}


def test_response_format_json_schema(live):
    c = live.aclient()
    coros = [
        c.chat.completions.create(
            **chat_kwargs(
                messages=[{"role": "user", "content": f"Give me a {name} JSON example."}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": schema, "strict": True},
                },
            )
        )
        for name, schema in SCHEMAS.items()
    ]
    coros.append(  # the completions endpoint takes the same field
        c.completions.create(
            model=MODEL,
            prompt="A JSON object describing a person:",
            temperature=0,
            max_tokens=80,
            extra_body={
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "nested", "schema": SCHEMAS["nested"]},
                }
            },
        )
    )
    *chats, completion = run(coros)
    for (name, schema), resp in zip(SCHEMAS.items(), chats):
        choice = resp.choices[0]
        assert choice.finish_reason == "stop", (name, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].text), SCHEMAS["nested"])


def test_guided_regex_choice_and_structured_outputs(live):
    c = live.aclient()
    regex = r"[A-Z][a-z]{2,8} [0-9]{1,3}"
    choices = ["positive", "negative", "neutral"]
    resps = run(
        [
            c.completions.create(
                model=MODEL,
                prompt="The name and number:",
                temperature=0,
                max_tokens=20,
                extra_body={"guided_regex": regex},
            ),
            c.chat.completions.create(
                **chat_kwargs(
                    messages=[{"role": "user", "content": "I love this film! Sentiment?"}],
                    extra_body={"guided_choice": choices},
                )
            ),
            c.chat.completions.create(  # vLLM's current form
                **chat_kwargs(extra_body={"structured_outputs": {"regex": r"(yes|no)\."}})
            ),
        ]
    )
    assert re.fullmatch(regex, resps[0].choices[0].text), resps[0].choices[0].text
    assert resps[1].choices[0].message.content in choices
    assert resps[2].choices[0].message.content in ("yes.", "no.")


def _check_call(call, name=None):
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    assert call.function.name in PARAMS and (name is None or call.function.name == name)
    jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def test_tool_choice_required_and_named(live):
    c = live.aclient()
    named = {"type": "function", "function": {"name": "get_weather"}}
    required = chat_kwargs(tools=TOOLS, tool_choice="required")
    by_name = chat_kwargs(tools=TOOLS, tool_choice=named)

    async def streamed(kwargs):
        return await collect_stream(await c.chat.completions.create(stream=True, **kwargs))

    req_whole, req_stream, named_whole, named_stream = run(
        [
            c.chat.completions.create(**required),
            streamed(required),
            c.chat.completions.create(**by_name),
            streamed(by_name),
        ]
    )
    for resp, name in ((req_whole, None), (named_whole, "get_weather")):
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        _check_call(choice.message.tool_calls[0], name)
    for (content, calls, finish), whole in ((req_stream, req_whole), (named_stream, named_whole)):
        assert (content, finish) == ("", "tool_calls")
        assert len(calls) == 1 and calls[0]["id"].startswith("chatcmpl-tool-")
        want = whole.choices[0].message.tool_calls[0].function
        assert (calls[0]["name"], calls[0]["arguments"]) == (want.name, want.arguments)


def test_tool_choice_none_with_tools_is_plain_text(live):
    resp = live.client().chat.completions.create(
        **chat_kwargs(tools=TOOLS, tool_choice="none", max_tokens=12)
    )
    choice = resp.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_bad_structured_requests_are_400s_while_others_run(live):
    async def go():
        c = live.aclient()
        normal = asyncio.ensure_future(
            c.completions.create(
                model=MODEL,
                prompt="Once upon a time",
                max_tokens=24,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
        )
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT, headers=headers) as raw:
            bad = [
                await raw.post(path, json={"model": MODEL, **body})
                for path, body in (
                    (
                        "/v1/chat/completions",
                        {
                            "messages": ASK,
                            "response_format": {
                                "type": "json_schema",
                                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                            },
                        },
                    ),
                    ("/v1/completions", {"prompt": "x", "guided_regex": "(unclosed"}),
                    (
                        "/v1/chat/completions",
                        {
                            "messages": ASK,
                            "guided_json": SCHEMAS["enum"],
                            "response_format": {"type": "json_object"},
                        },
                    ),
                    ("/v1/chat/completions", {"messages": ASK, "tools": TOOLS}),  # "auto"
                )
            ]
        return bad, await normal

    bad, normal = asyncio.run(go())
    expected = [
        ("response_format", "nonsense"),
        ("guided_regex", "regex"),
        ("guided_json", "'response_format', 'guided_json'"),
        ("tool_choice", "--enable-auto-tool-choice"),
    ]
    for resp, (param, text) in zip(bad, expected):
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["param"] == param and text in err["message"], err
    assert normal.choices[0].finish_reason == "length"
    assert normal.usage.completion_tokens == 24
