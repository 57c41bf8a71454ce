"""The real server (FastAPI + uvicorn on a free 127.0.0.1 port, SmolLM2) driven by the official
`openai` client and raw httpx: results against `LLM.generate` / `LLM.chat` (the LLM built from the
`jaxllm serve` arguments of live_server.py, asked before the server starts), streaming, n,
logprobs, stop strings, usage, a 64-stream load test, client disconnects (no request left
running, no KV block leaked, checked through /metrics), the queue bound (503 + Retry-After) and
`jaxllm.benchmarks.serving`. Bad input, event-loop stalls, API keys and a failing engine step:
test_server_robustness.py.

One server per module. CPU time goes mostly to compiling step shapes, so the engine flags keep
their number small (64-token blocks: every sequence here fits one or two; a 64-token step budget)
and every logprobs request asks for the same count. Every wait is bounded, so nothing can hang.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    TIMEOUT,
    metric,
    metric_key,
    serving,
    stream_completion,
)

from jaxllm.benchmarks import serving as bench_serving  # noqa: E402


@pytest.fixture(scope="module")
def live(smollm2):
    with serving(smollm2) as running:
        yield running


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
                asyncio.gather(*(stream_completion(client, p, mt) for p, mt in jobs)), timeout=300
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
