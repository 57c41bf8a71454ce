"""The server's defences against requests that would hold the event loop (issue 27): the request
body limit (413), the bounded worker pool, the tokenizer's large-text path, sliced JSON, request
chat templates (400 unless trusted) and the sandbox every chat template renders in."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
fastapi = pytest.importorskip("fastapi")

from jaxllm.entrypoints.openai.body_limit import BodySizeLimitMiddleware  # noqa: E402
from jaxllm.entrypoints.openai.errors import OpenAIError  # noqa: E402
from jaxllm.entrypoints.openai.offload import (  # noqa: E402
    LARGE_DECODE_IDS,
    LARGE_TEXT_CHARS,
    WorkerPool,
    _fast_backend,
    _fast_decoder,
    decode_ids,
    encode_text,
    json_int_list,
)
from jaxllm.entrypoints.openai.protocol import ChatMessage  # noqa: E402
from jaxllm.entrypoints.openai.serving_chat import (  # noqa: E402
    apply_chat_template,
    check_request_chat_template,
)
from jaxllm.entrypoints.openai.serving_common import ServerContext  # noqa: E402

# ------------------------------------------------------------------------------------- body limit


def _echo_app(limit):
    app = fastapi.FastAPI()
    seen = []

    @app.post("/echo")
    async def echo(raw: fastapi.Request) -> dict:
        body = await raw.body()
        seen.append(len(body))
        return {"size": len(body), "head": body[:8].decode()}

    @app.get("/ping")
    async def ping() -> dict:
        return {"ok": True}

    app.add_middleware(BodySizeLimitMiddleware, limit=lambda: limit[0])
    return app, seen


def test_body_limit_413_before_the_app_reads_the_body():
    limit = [1000]
    app, seen = _echo_app(limit)

    async def chunks(n, size):  # no Content-Length: sent chunked
        for _ in range(n):
            yield b"x" * size

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [
                await c.post("/echo", content=b"a" * 1000),  # at the limit
                await c.post("/echo", content=b"a" * 1001),  # Content-Length over it
                await c.post("/echo", content=chunks(3, 300)),  # chunked, 900 bytes
                await c.post("/echo", content=chunks(5, 300)),  # chunked, passes it mid-way
                await c.get("/ping"),
            ]

    ok, declared, chunked_ok, chunked_over, ping = asyncio.run(run())
    assert ok.json() == {"size": 1000, "head": "aaaaaaaa"}
    assert chunked_ok.json()["size"] == 900 and ping.json() == {"ok": True}
    for resp in (declared, chunked_over):
        assert resp.status_code == 413
        err = resp.json()["error"]
        assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
        assert "1000 bytes" in err["message"] and "--max-request-body-bytes" in err["message"]
    assert seen == [1000, 900]  # the app never saw the refused bodies
    limit[0] = None  # read per request: no limit now

    async def unlimited():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/echo", content=b"b" * 5000)

    assert asyncio.run(unlimited()).json()["size"] == 5000


# ---------------------------------------------------------------------------------- worker pool


def test_worker_pool_bounds_concurrent_jobs_and_keeps_the_loop_free():
    pool = WorkerPool(2)
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def job(i):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)  # holds no GIL, like the tokenizer's encode
        with lock:
            state["now"] -= 1
        if i == 3:
            raise ValueError("job 3 fails")
        return i

    async def run():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        jobs = [asyncio.ensure_future(pool.run(job, i)) for i in range(8)]
        await asyncio.sleep(0.01)
        jobs[7].cancel()  # cancelled while it waits for a slot: never runs
        results = await asyncio.gather(*jobs, return_exceptions=True)
        t.cancel()
        return results, ticks

    results, ticks = asyncio.run(run())
    assert results[:3] == [0, 1, 2] and results[4:7] == [4, 5, 6]
    assert isinstance(results[3], ValueError) and isinstance(results[7], asyncio.CancelledError)
    assert state["peak"] == 2 and pool.running == 0
    assert ticks >= 20  # ~4 rounds of 50 ms: the loop ticked all along


# -------------------------------------------------------------------------------- tokenization


def test_large_texts_encode_and_decode_as_the_tokenizer_does(smollm2):
    tok = smollm2.tokenizer
    assert _fast_backend(tok) is not None  # SmolLM2's tokenizer takes the large-text path
    base = "<|im_start|>user\nCafé ünïcode 12345 \t  spaces\n\nand <|im_end|> more "
    text = (base * (LARGE_TEXT_CHARS // len(base) + 2))[: LARGE_TEXT_CHARS + 17]
    for special in (True, False):
        assert encode_text(tok, text, special) == tok.encode(text, add_special_tokens=special)
        assert encode_text(tok, base, special) == tok.encode(base, add_special_tokens=special)
    assert _fast_decoder(tok) is not None
    ids = tok.encode(text)
    assert len(ids) >= LARGE_DECODE_IDS and decode_ids(tok, ids) == tok.decode(ids) == text


@pytest.mark.parametrize("n", [0, 1, 65536, 65537, 140000])
def test_json_int_list_equals_json_dumps(n):
    values = [(i * 7919) % 50000 for i in range(n)]
    assert json_int_list(values) == json.dumps(values, separators=(",", ":"))


# ----------------------------------------------------------------------------- chat templates


def _ctx(tokenizer, trusted):
    return ServerContext(
        engine=None,  # type: ignore[arg-type]
        tokenizer=tokenizer,
        served_model_names=["m"],
        max_model_len=512,
        max_logprobs=5,
        vocab_size=49152,
        trust_request_chat_template=trusted,
    )


def test_request_chat_templates_need_the_trust_flag():
    ctx = _ctx(None, trusted=False)
    for template, kwargs, param in (
        ("{{ messages }}", None, "chat_template"),
        (None, {"chat_template": "{{ messages }}"}, "chat_template_kwargs.chat_template"),
    ):
        with pytest.raises(OpenAIError) as e:
            check_request_chat_template(ctx, template, kwargs)
        assert (e.value.status_code, e.value.param) == (400, param)
        assert "--trust-request-chat-template" in e.value.message
    check_request_chat_template(ctx, None, {"enable_thinking": False})  # data, not a template
    check_request_chat_template(_ctx(None, trusted=True), "{{ messages }}", None)


def test_chat_templates_render_in_a_sandbox(smollm2):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils.chat_template_utils import _compile_jinja_template

    # verified, not assumed: transformers compiles every chat template (the model's and a
    # request's) in jinja's immutable sandbox
    assert isinstance(_compile_jinja_template("{{ 1 }}").environment, ImmutableSandboxedEnvironment)
    ctx = _ctx(smollm2.tokenizer, trusted=True)
    msgs = [ChatMessage(role="user", content="hi")]
    loop = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert apply_chat_template(ctx, msgs, chat_template=loop) == "hi"
    escapes = (
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__['os'] }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% set l = [] %}{{ l.append(1) }}",  # immutable: no mutating calls
    )
    # outside a sandbox the first one reaches every class of the interpreter
    assert "<class 'type'>" in jinja2.Environment().from_string(escapes[0]).render()
    for escape in escapes:
        with pytest.raises(OpenAIError) as e:
            apply_chat_template(ctx, msgs, chat_template=escape)
        assert e.value.status_code == 400 and e.value.param == "messages"
        assert "SecurityError" in e.value.message and "is unsafe" in e.value.message
