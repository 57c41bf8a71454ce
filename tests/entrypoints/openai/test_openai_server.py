"""The real server (FastAPI + uvicorn on a free 127.0.0.1 port, SmolLM2) driven by the official
`openai` client and raw httpx: results against `LLM.generate` / `LLM.chat` (the LLM built from the
`jaxllm serve` arguments below, asked before the server starts), streaming, n, logprobs, stop
strings, usage, a 64-stream load test, client disconnects (no request left running, no KV block
leaked, checked through /metrics), bad input of each kind while other streams go on, the queue
bound (503 + Retry-After), big bodies and request chat templates while 16 streams run (nothing
stalls the event loop), API keys, `jaxllm.benchmarks.serving`, and a failing engine step.

One server per module. CPU time goes mostly to compiling step shapes, so the engine flags keep
their number small (64-token blocks: every sequence here fits one or two; a 64-token step budget)
and every logprobs request asks for the same count. Every wait is bounded, so nothing can hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from live_server import (  # noqa: E402
    CHAT,
    KEY,
    LP,
    MODEL,
    PROMPTS,
    SERVE_ARGV,
    TIMEOUT,
    Live,
    bad_requests,
    metric,
    metric_key,
    watch_stalls,
)

from jaxllm import SamplingParams  # noqa: E402
from jaxllm.benchmarks import serving as bench_serving  # noqa: E402
from jaxllm.entrypoints.openai.api_server import Server, build_app, build_llm  # noqa: E402
from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser  # noqa: E402


@pytest.fixture(scope="module")
def live(smollm2):
    opts = resolve_serve_args(serve_parser().parse_args(SERVE_ARGV))
    # The LLM the server runs, built from the parsed `jaxllm serve` arguments (the session's
    # loaded SmolLM2 stands in for the name). The reference answers are LLM.generate / LLM.chat
    # on this LLM before the server starts (so the engine is never shared at the same time); they
    # also compile the step shapes the first tests need.
    llm = build_llm(opts, model=smollm2)
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    ref = {
        "greedy": [o.outputs[0] for o in llm.generate(PROMPTS, greedy, use_tqdm=False)],
        "chat": llm.chat(CHAT, SamplingParams(temperature=0.0, max_tokens=20), use_tqdm=False)[0],
        "n2": llm.generate(
            PROMPTS[0],
            SamplingParams(n=2, temperature=0.8, seed=123, max_tokens=12, ignore_eos=True),
            use_tqdm=False,
        )[0],
        "logprobs": llm.generate(
            PROMPTS[1],
            SamplingParams(temperature=0.0, max_tokens=8, logprobs=LP, ignore_eos=True),
            use_tqdm=False,
        )[0],
    }
    app, ctx = build_app(llm, opts)
    server = Server(app).start()
    try:
        yield Live(server, ctx, opts, llm.tokenizer, ref)
    finally:
        server.stop()
        print(
            f"\n[openai server tests] step compilations: {llm.llm_engine.runner.num_compilations}"
        )


# ------------------------------------------------------------------------------------------- basics


def test_health_models_version_metrics(live):
    assert httpx.get(live.url + "/health").status_code == 200
    models = live.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].max_model_len == 512
    m = live.metrics()
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:num_preemptions_total",
        "jaxllm:num_free_gpu_blocks",
        "jaxllm:num_gpu_blocks",
    ):
        assert metric_key(name, [("model_name", MODEL)]) in m, name
    for name in (
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
    ):
        assert metric_key(name + "_count", [("model_name", MODEL)]) in m, name
    assert metric(m, "jaxllm:num_gpu_blocks") == 47  # 48 blocks, one reserved


def test_greedy_completions_equal_llm_generate(live):
    c = live.client()
    resp = c.completions.create(
        model=MODEL, prompt=PROMPTS, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )
    assert [ch.index for ch in resp.choices] == [0, 1, 2]
    assert [ch.text for ch in resp.choices] == [r.text for r in live.ref["greedy"]]
    assert all(ch.finish_reason == "length" for ch in resp.choices)
    n_prompt = sum(len(live.tokenizer.encode(p)) for p in PROMPTS)
    assert resp.usage.prompt_tokens == n_prompt
    assert resp.usage.completion_tokens == 3 * 24
    assert resp.usage.total_tokens == n_prompt + 72
    # Streaming: the deltas add up to the same text; the usage chunk comes last.
    stream = c.completions.create(
        model=MODEL,
        prompt=PROMPTS[2],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == len(live.tokenizer.encode(PROMPTS[2]))
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 24
    assert "".join(ch.choices[0].text for ch in chunks[:-1]) == live.ref["greedy"][2].text
    assert [ch.choices[0].finish_reason for ch in chunks[:-1]][-1] == "length"
    assert all(ch.usage is None for ch in chunks[:-1])


def test_chat_equals_llm_chat_streaming_and_not(live):
    c = live.client()
    ref = live.ref["chat"].outputs[0]
    resp = c.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=20, temperature=0)
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == ref.text
    assert choice.finish_reason == ref.finish_reason
    assert resp.usage.prompt_tokens == len(live.ref["chat"].prompt_token_ids)
    assert resp.usage.completion_tokens == len(ref.token_ids)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == ref.text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == ref.finish_reason
    assert chunks[-1].usage.completion_tokens == len(ref.token_ids)


def test_n2_seeded_sampling_equals_llm_generate(live):
    resp = live.client().completions.create(
        model=MODEL,
        prompt=PROMPTS[0],
        n=2,
        temperature=0.8,
        seed=123,
        max_tokens=12,
        extra_body={"ignore_eos": True},
    )
    assert [ch.index for ch in resp.choices] == [0, 1]
    assert [ch.text for ch in resp.choices] == [o.text for o in live.ref["n2"].outputs]
    assert resp.usage.completion_tokens == 24
    assert resp.usage.prompt_tokens == len(live.ref["n2"].prompt_token_ids)
    # Streaming n=2: each index gets its own deltas.
    texts = {0: "", 1: ""}
    finish = {}
    for ch in live.client().completions.create(
        model=MODEL,
        prompt=PROMPTS[0],
        n=2,
        temperature=0.8,
        seed=123,
        max_tokens=12,
        stream=True,
        extra_body={"ignore_eos": True},
    ):
        for choice in ch.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert [texts[0], texts[1]] == [o.text for o in live.ref["n2"].outputs]
    assert finish == {0: "length", 1: "length"}


def test_logprobs_equal_the_engines(live):
    ref = live.ref["logprobs"].outputs[0]
    resp = live.client().completions.create(
        model=MODEL,
        prompt=PROMPTS[1],
        max_tokens=8,
        temperature=0,
        logprobs=LP,
        extra_body={"ignore_eos": True},
    )
    lp = resp.choices[0].logprobs
    assert "".join(lp.tokens) == resp.choices[0].text == ref.text
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    for j, (tid, entry) in enumerate(zip(ref.token_ids, ref.logprobs)):
        assert math.isclose(lp.token_logprobs[j], entry[tid].logprob, abs_tol=1e-6)
        assert len(lp.top_logprobs[j]) <= LP
        top_ref = sorted(
            (e for e in entry.values() if e.rank is not None and e.rank <= LP), key=lambda e: e.rank
        )
        assert sorted(lp.top_logprobs[j].values(), reverse=True) == pytest.approx(
            [e.logprob for e in top_ref]
        )
        assert lp.token_logprobs[j] == pytest.approx(
            max(lp.top_logprobs[j].values())
        )  # greedy = top-1
    # Chat logprobs: top_logprobs entries, bytes of the token text.
    chat = live.client().chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=LP
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == LP and bytes(t.bytes).decode() == t.token
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)


def test_echo_and_prompt_logprobs(live):
    body = live.post(
        "/v1/completions",
        {
            "model": MODEL,
            "prompt": PROMPTS[0],
            "max_tokens": 4,
            "temperature": 0,
            "echo": True,
            "logprobs": LP,
            "prompt_logprobs": LP,
            "ignore_eos": True,
        },
    ).json()
    ids = live.tokenizer.encode(PROMPTS[0])
    choice = body["choices"][0]
    assert (
        choice["text"]
        == PROMPTS[0] + live.ref["greedy"][0].text[: len(choice["text"]) - len(PROMPTS[0])]
    )
    lp = choice["logprobs"]
    assert (
        len(lp["tokens"])
        == len(ids) + 4
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(x is not None and x <= 0 for x in lp["token_logprobs"][1:])
    assert "".join(lp["tokens"]) == choice["text"]
    plp = choice["prompt_logprobs"]  # vLLM's form: {token_id: {logprob, rank, decoded_token}}
    assert len(plp) == len(ids) and plp[0] is None
    for i in range(1, len(ids)):
        assert plp[i][str(ids[i])]["logprob"] == pytest.approx(lp["token_logprobs"][i])


def test_stop_strings(live):
    ref = live.ref["greedy"][0].text
    words = [w for w in re.findall(r"\w+", ref) if len(w) >= 3 and ref.index(w) > 0]
    assert words, ref
    stop = words[0]
    cut = ref.index(stop)
    c = live.client()
    resp = c.completions.create(
        model=MODEL,
        prompt=PROMPTS[0],
        max_tokens=24,
        temperature=0,
        stop=[stop, "@@@"],
        extra_body={"ignore_eos": True},
    )
    assert resp.choices[0].text == ref[:cut]
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].model_extra["stop_reason"] == stop
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model=MODEL,
            prompt=PROMPTS[0],
            max_tokens=24,
            temperature=0,
            stop=stop,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert streamed == ref[:cut]
    kept = c.completions.create(
        model=MODEL,
        prompt=PROMPTS[0],
        max_tokens=24,
        temperature=0,
        stop=stop,
        extra_body={"ignore_eos": True, "include_stop_str_in_output": True},
    )
    assert kept.choices[0].text == ref[: cut + len(stop)]


def test_tokenize_detokenize(live):
    body = live.post("/tokenize", {"model": MODEL, "prompt": PROMPTS[2]}).json()
    assert body["tokens"] == live.tokenizer.encode(PROMPTS[2])
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 512
    assert live.post("/detokenize", {"tokens": body["tokens"]}).json()["prompt"] == PROMPTS[2]
    chat = live.post("/tokenize", {"messages": CHAT}).json()
    assert chat["tokens"] == live.ref["chat"].prompt_token_ids
    bad = live.post("/detokenize", {"tokens": [1, 10**7]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


# --------------------------------------------------------------------------------------------- load


async def _stream_completion(client, prompt: str, max_tokens: int) -> dict:
    stream = await client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        logprobs=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    tokens, text, finish, usage = 0, "", None, None
    async for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            text += choice.text
            tokens += len(choice.logprobs.tokens) if choice.logprobs else 0
            finish = choice.finish_reason or finish
    return {"tokens": tokens, "text": text, "finish": finish, "usage": usage}


def test_64_concurrent_streams_of_mixed_lengths(live):
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "while",
        "a",
        "small",
        "bird",
        "sings",
    ]
    jobs = []
    for i in range(64):
        prompt = f"Request {i}: " + " ".join(words[j % len(words)] for j in range(2 + (i * 7) % 30))
        jobs.append((prompt, 8 + (i * 5) % 17))  # prompts of 5 to ~36 tokens, max_tokens 8..24
    before = live.metrics()

    async def run():
        async with live.aclient() as client:
            return await asyncio.wait_for(
                asyncio.gather(*(_stream_completion(client, p, mt) for p, mt in jobs)), timeout=300
            )

    results = asyncio.run(run())
    for (prompt, max_tokens), r in zip(jobs, results):
        assert r["tokens"] == max_tokens, (prompt, r)
        assert r["finish"] == "length"
        assert r["usage"].completion_tokens == max_tokens
        assert r["usage"].prompt_tokens == len(live.tokenizer.encode(prompt))
        assert r["usage"].total_tokens == r["usage"].prompt_tokens + max_tokens
    after = live.wait_idle()
    gen = metric(after, "vllm:generation_tokens_total") - metric(
        before, "vllm:generation_tokens_total"
    )
    assert gen == sum(mt for _, mt in jobs)
    prompt_tok = metric(after, "vllm:prompt_tokens_total") - metric(
        before, "vllm:prompt_tokens_total"
    )
    assert prompt_tok == sum(len(live.tokenizer.encode(p)) for p, _ in jobs)
    done = metric(after, "vllm:request_success_total", finished_reason="length") - metric(
        before, "vllm:request_success_total", finished_reason="length"
    )
    assert done == 64
    assert (
        metric(after, "vllm:time_to_first_token_seconds_count")
        - metric(before, "vllm:time_to_first_token_seconds_count")
        == 64
    )


def test_queue_bound_then_disconnects_abort_everything_and_leak_no_block(live):
    """16 streams run (max_num_seqs), 2 more wait; with the bound lowered to 2 a new request gets
    503 + Retry-After; a non-streaming client gives up while queued; then every client leaves
    mid-stream. /metrics must show nothing running or waiting and every KV block free."""
    engine = live.ctx.engine
    old_bound = engine.max_waiting_requests
    before = live.wait_idle()

    def body(i: int) -> dict:
        return {
            "model": MODEL,
            "prompt": f"Story number {i}: once upon a time",
            "max_tokens": 400,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }

    async def open_stream(client, stack, i: int):
        cm = client.stream("POST", "/v1/completions", json=body(i))
        resp = await stack.enter_async_context(cm)
        assert resp.status_code == 200  # headers come once the engine accepted the request
        return resp

    async def read_chunks(lines, n: int) -> int:
        seen = 0
        while seen < n:
            line = await lines.__anext__()
            seen += line.startswith("data: ")
        return seen

    async def run():
        headers = {"Authorization": f"Bearer {KEY}"}
        limits = httpx.Limits(max_connections=64)
        async with (
            httpx.AsyncClient(
                base_url=live.url, headers=headers, timeout=TIMEOUT, limits=limits
            ) as client,
            asyncio.timeout(240),
            contextlib.AsyncExitStack() as stack,
        ):
            running = [await open_stream(client, stack, i) for i in range(16)]
            # Keep the line iterators alive: dropping one would close its connection early.
            lines = [r.aiter_lines() for r in running]
            seen = await asyncio.gather(*(read_chunks(it, 2) for it in lines))
            waiting = [await open_stream(client, stack, 16 + i) for i in range(2)]
            deadline = time.monotonic() + 60
            while metric(live.metrics(), "vllm:num_requests_waiting") < 2:
                assert time.monotonic() < deadline, "the two extra requests never queued"
                await asyncio.sleep(0.1)
            m = live.metrics()
            assert metric(m, "vllm:num_requests_running") == 16
            assert metric(m, "jaxllm:num_free_gpu_blocks") < metric(m, "jaxllm:num_gpu_blocks")
            engine.max_waiting_requests = 2
            try:
                refused = [
                    await client.post(
                        "/v1/completions", json={"model": MODEL, "prompt": "one more"}
                    ),
                    await client.post(
                        "/v1/chat/completions", json={"model": MODEL, "messages": CHAT}
                    ),
                ]
            finally:
                engine.max_waiting_requests = old_bound
            with pytest.raises(httpx.ReadTimeout):  # waits behind the 16, then gives up
                await client.post(
                    "/v1/completions",
                    json={**body(99), "stream": False},
                    timeout=httpx.Timeout(TIMEOUT, read=1.5),
                )
            assert len(waiting) == 2
            return seen, refused  # leaving the stack closes all 18 connections mid-stream

    seen, refused = asyncio.run(run())
    assert seen == [2] * 16
    for resp in refused:
        assert resp.status_code == 503
        assert resp.headers["Retry-After"] == "1"
        assert resp.json()["error"]["code"] == "server_overloaded"
    after = live.wait_idle(timeout=60)
    aborted = metric(after, "vllm:request_success_total", finished_reason="abort") - metric(
        before, "vllm:request_success_total", finished_reason="abort"
    )
    assert aborted == 19
    assert metric(after, "vllm:kv_cache_usage_perc") == 0.0
    # The aborted requests really stopped: far fewer than 19 * 400 tokens were generated.
    gen = metric(after, "vllm:generation_tokens_total") - metric(
        before, "vllm:generation_tokens_total"
    )
    assert gen < 19 * 400 / 4
    ok = live.client().completions.create(
        model=MODEL, prompt="Still alive?", max_tokens=3, temperature=0
    )
    assert ok.usage.completion_tokens == 3


# ---------------------------------------------------------------------------------------- bad input


def test_bad_inputs_get_their_status_while_streams_go_on(live):
    cases = bad_requests(live)

    async def run():
        async with live.aclient() as client:
            streams = [
                asyncio.ensure_future(_stream_completion(client, f"Background {i}:", 40))
                for i in range(4)
            ]
            headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
            async with httpx.AsyncClient(
                base_url=live.url, headers=headers, timeout=TIMEOUT
            ) as raw:
                await asyncio.sleep(0.5)
                answers = []
                for path, body, *_ in cases:
                    content = body if isinstance(body, str) else json.dumps(body)
                    answers.append(await raw.post(path, content=content))
                unauth = [
                    await raw.post(
                        "/v1/completions",
                        json={"model": MODEL, "prompt": "x"},
                        headers={"Authorization": ""},
                    ),
                    await raw.post(
                        "/v1/completions",
                        json={"model": MODEL, "prompt": "x"},
                        headers={"Authorization": "Bearer wrong"},
                    ),
                    await raw.get("/v1/models", headers={"Authorization": "Basic " + KEY}),
                ]
            return answers, unauth, await asyncio.wait_for(asyncio.gather(*streams), timeout=240)

    answers, unauth, streamed = asyncio.run(run())
    for (_path, body, status, param, text), resp in zip(cases, answers):
        assert resp.status_code == status, (body, resp.text)
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["param"] == param, (body, err)
        for piece in (text,) if isinstance(text, str) else (text or ()):
            assert piece in err["message"], (body, err)
    for resp in unauth:
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(live.url + "/health").status_code == 200  # no key needed outside /v1
    for r in streamed:
        assert r["tokens"] == 40 and r["finish"] == "length"
    live.wait_idle()


# -------------------------------------------------------------------- event-loop stalls (issue 27)

# The goal is 100 ms. /health measures the event loop alone; its bound leaves room for the 2-core
# CI machine (measured there: 30 to 60 ms during these attacks, ~120 ms at worst when idle; 5 to
# 8 s before the work moved off the loop). A gap between stream chunks also holds an engine step:
# 110 to 230 ms with 16 streams on 2 cores when nothing else runs, up to ~400 ms while a 4 MiB
# tokenization takes one of the two cores; its bound only rules out stalls of the loop.
HEALTH_BOUND_S = 0.25
CHUNK_GAP_BOUND_S = 1.0


def test_big_bodies_and_request_templates_stall_no_stream_or_health(live):
    """While 16 streams run: a 4 MiB /tokenize body is tokenized off the event loop under the
    body limit, and refused with a 413 over it; a request's own chat_template is a 400 without
    --trust-request-chat-template, and renders off the loop with it (a template that loops 2.25M
    times, then writes a prompt over the context length: a 400 that counts its tokens, so the
    request takes no sequence slot from the streams). Stream chunks and /health keep coming."""
    ctx = live.ctx
    old_limit = ctx.max_request_body_bytes
    big = ("The quick brown fox jumps over the lazy dog. " * 100000)[: 4 << 20]
    tokenize_body = json.dumps({"model": MODEL, "prompt": big})
    heavy = (
        "{% for i in range(1500) %}{% for j in range(1500) %}{% endfor %}{% endfor %}"
        "{% for i in range(200) %}{{ messages[0].content }} {% endfor %}"
    )
    template = {"chat_template": heavy}
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def run():
        # the clients are made before the watch starts: making one (its SSL context) holds the
        # GIL of this process, the server's, for 20-40 ms
        async with (
            httpx.AsyncClient(base_url=live.url, headers=headers, timeout=TIMEOUT) as raw,
            live.aclient() as client,
        ):

            async def attack():
                ctx.max_request_body_bytes = 8 << 20
                served = await raw.post("/tokenize", content=tokenize_body)
                ctx.max_request_body_bytes = 1 << 20
                refused = await raw.post("/tokenize", content=tokenize_body)
                errors = []
                for trusted in (False, True):
                    ctx.trust_request_chat_template = trusted
                    with pytest.raises(openai.BadRequestError) as e:
                        await client.chat.completions.create(
                            model=MODEL, messages=CHAT, max_tokens=1, extra_body=template
                        )
                    errors.append(e.value.body)
                return served, refused, errors

            return await watch_stalls(live.url, attack, streams=16, max_tokens=32)

    try:
        out = asyncio.run(run())
    finally:
        ctx.max_request_body_bytes = old_limit
        ctx.trust_request_chat_template = False
    served, refused, (untrusted, trusted) = out["result"]
    print(
        f"\n[loop stalls] attacks {out['attack_s']:.2f} s: largest chunk gap "
        f"{out['max_chunk_gap_s'] * 1000:.0f} ms over {out['chunks']} chunks, largest /health "
        f"{out['max_health_s'] * 1000:.0f} ms over {out['probes']} probes"
    )
    assert served.status_code == 200, served.text[:300]
    tokens = served.json()
    assert tokens["count"] == len(tokens["tokens"]) > 900_000
    assert tokens["tokens"][:32] == live.tokenizer.encode(big[:400])[:32]
    assert refused.status_code == 413
    err = refused.json()["error"]
    assert err["code"] == "request_too_large" and f"{1 << 20} bytes" in err["message"]
    assert (untrusted["param"], untrusted["code"]) == ("chat_template", "untrusted_chat_template")
    assert "--trust-request-chat-template" in untrusted["message"]
    rendered = " ".join([CHAT[0]["content"]] * 200) + " "
    n_rendered = len(live.tokenizer.encode(rendered, add_special_tokens=False))
    assert trusted["code"] == "context_length_exceeded"
    assert f"your prompt is {n_rendered} tokens long" in trusted["message"]
    assert out["max_health_s"] < HEALTH_BOUND_S, out
    assert out["max_chunk_gap_s"] < CHUNK_GAP_BOUND_S, out
    live.wait_idle()


def test_wrong_key_with_the_openai_client(live):
    with pytest.raises(openai.AuthenticationError) as e:
        live.client(key="not-the-key").completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert e.value.status_code == 401
    with pytest.raises(openai.NotFoundError):
        live.client().completions.create(model="other-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        live.client().completions.create(model=MODEL, prompt="x", max_tokens=1, top_p=7)
    assert e.value.body["param"] == "top_p"


# -------------------------------------------------------------------------------------------- bench


def test_bench_serving_against_the_server(live):
    cfg = bench_serving.BenchConfig(
        base_url=live.url,
        api_key=KEY,
        num_prompts=4,
        input_len=(8, 24),
        output_len=(6, 6),
        vocab_range=(1000, 20000),
        seed=3,
    )
    res = asyncio.run(asyncio.wait_for(bench_serving.benchmark(cfg), timeout=180))
    assert res["completed"] == 4 and res["failed"] == 0, res["errors"]
    assert res["total_output_tokens"] == 24
    assert res["total_input_tokens"] == sum(len(p) for p, _ in bench_serving.make_workload(cfg))
    for key in ("ttft", "tpot", "itl", "e2e_latency"):
        s = res[key]
        assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
    assert res["e2e_latency"]["mean_ms"] >= res["ttft"]["mean_ms"]
    assert res["output_throughput"] == pytest.approx(24 / res["duration_s"])
    assert "TTFT" in bench_serving.format_results(res)
    live.wait_idle()


# ------------------------------------------------------------------------------ last: a dead engine


def test_a_failing_engine_step_is_reported_and_nothing_hangs(live):
    """Runs last (it stops the engine loop): an exception inside a step ends the open streams with
    an error event, later requests get 503 `engine_dead`, /health turns 503; the HTTP side lives."""

    def broken_step():
        raise RuntimeError("injected step failure")

    live.ctx.engine.engine.step = broken_step
    lines = []
    with httpx.stream(
        "POST",
        live.url + "/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 5, "stream": True},
        timeout=TIMEOUT,
    ) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    err = json.loads(lines[-2][len("data: ") :])["error"]
    assert err["code"] == "engine_dead" and "injected step failure" in err["message"]
    after = live.post("/v1/chat/completions", {"model": MODEL, "messages": CHAT})
    assert after.status_code == 503 and after.json()["error"]["code"] == "engine_dead"
    assert httpx.get(live.url + "/health").status_code == 503
    assert httpx.get(live.url + "/metrics").status_code == 200
