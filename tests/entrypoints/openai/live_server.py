"""The live-server harness of test_openai_server.py and test_server_robustness.py: the `jaxllm
serve` arguments it starts with, the prompts it checks, `serving` (the running server, a `Live`:
clients, raw posts and /metrics), `stream_completion` and `watch_stalls` (streams and /health
timed while an attack runs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import httpx
import openai

MODEL = "smollm2-135m"
KEY = "sk-test-key"
SERVE_ARGV = [
    MODEL,
    "--max-model-len",
    "512",
    "--max-num-seqs",
    "16",
    "--num-gpu-blocks",
    "48",
    "--block-size",
    "64",
    "--max-num-batched-tokens",
    "64",
    "--max-logprobs",
    "5",
    "--api-key",
    KEY,
    "--max-waiting-requests",
    "256",
]
TIMEOUT = 120.0
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
CHAT = [{"role": "user", "content": "Name three colours."}]
LP = 3  # every logprobs request asks for 3 (one compiled sampler variant)


# ----------------------------------------------------------------------------------------- fixtures


class Live:
    """The running server, its options and a reference LLM's answers."""

    def __init__(self, server, ctx, opts, tokenizer, ref):
        self.server, self.ctx, self.opts, self.tokenizer, self.ref = (
            server,
            ctx,
            opts,
            tokenizer,
            ref,
        )
        self.url = server.url

    def client(self, key: str | None = KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)

    def aclient(self):
        return openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT
        )

    def post(self, path: str, body, key: str | None = KEY, raw: bool = False):
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        content = body if raw else json.dumps(body)
        return httpx.post(self.url + path, content=content, headers=headers, timeout=TIMEOUT)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=TIMEOUT).text
        values = {}
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z0-9_:]+)(\{[^}]*\})?\s+(\S+)$", line)
            if m:
                labels = re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")
                values[metric_key(m.group(1), labels)] = float(m.group(3))
        return values

    def wait_idle(self, timeout: float = 60.0) -> dict[str, float]:
        """Poll /metrics until no request runs, waits or is held, and every block is free."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            idle = (
                metric(m, "vllm:num_requests_running") == 0
                and metric(m, "vllm:num_requests_waiting") == 0
                and metric(m, "jaxllm:num_unfinished_requests") == 0
                and metric(m, "jaxllm:num_free_gpu_blocks") == metric(m, "jaxllm:num_gpu_blocks")
            )
            if idle:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"server not idle after {timeout}s: {m}")
            time.sleep(0.1)


def metric_key(name: str, labels) -> str:
    """'name{a="1",b="2"}' with the labels sorted (Prometheus does not promise an order)."""
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}"


def metric(m: dict, name: str, **labels) -> float:
    return m[metric_key(name, [("model_name", MODEL), *labels.items()])]


def bad_requests(live) -> list[tuple]:
    """(path, body, status, param, text(s) the message must hold); str bodies are sent raw."""
    long_prompt = "hello " * 600
    n_long = len(live.tokenizer.encode(long_prompt))
    n_short = len(live.tokenizer.encode("Hi there"))
    base = {"model": MODEL, "prompt": "Hi there"}
    return [
        ("/v1/completions", '{"model": "x", "prompt": ', 400, None, "Malformed JSON"),
        ("/v1/completions", "[1, 2]", 400, None, "JSON object"),
        ("/v1/completions", {**base, "temperature": "hot"}, 400, "temperature", None),
        ("/v1/completions", {**base, "top_p": 1.5}, 400, "top_p", "1.5"),
        ("/v1/completions", {**base, "top_k": -3}, 400, "top_k", None),
        ("/v1/completions", {**base, "presence_penalty": 5}, 400, "presence_penalty", None),
        ("/v1/completions", {**base, "n": 2, "temperature": 0}, 400, "n", None),
        ("/v1/completions", {**base, "max_tokens": 0}, 400, "max_tokens", None),
        ("/v1/completions", {**base, "logprobs": 6}, 400, "logprobs", "5"),
        ("/v1/completions", {**base, "logit_bias": {"abc": 1}}, 400, "logit_bias", None),
        ("/v1/completions", {**base, "stop": [""]}, 400, "stop", None),
        ("/v1/completions", {**base, "max_token": 5}, 400, "max_token", "Unrecognized"),
        ("/v1/completions", {"model": MODEL}, 400, "prompt", "Missing"),
        ("/v1/completions", {**base, "prompt": [1, 10**8]}, 400, "prompt", str(10**8)),
        ("/v1/completions", {**base, "prompt": ""}, 400, "prompt", None),
        (
            "/v1/completions",
            {**base, "prompt": long_prompt},
            400,
            "prompt",
            (f" {n_long} ", " 512 "),
        ),
        (
            "/v1/completions",
            {**base, "max_tokens": 600},
            400,
            "max_tokens",
            (f" {n_short + 600} ", " 512 ", f"{n_short} in the prompt"),
        ),
        (
            "/v1/completions",
            {**base, "stream_options": {"include_usage": True}},
            400,
            "stream_options",
            None,
        ),
        ("/v1/completions", {**base, "model": "gpt-4"}, 404, "model", "gpt-4"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages", None),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"content": "hi"}]},
            400,
            "messages.0.role",
            None,
        ),
        (
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}
                        ],
                    }
                ],
            },
            400,
            "messages.0.content.0.type",
            None,
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": CHAT, "top_logprobs": 9, "logprobs": True},
            400,
            "top_logprobs",
            None,
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": CHAT, "max_completion_tokens": 1000},
            400,
            "max_completion_tokens",
            "512",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": CHAT, "tools": [{"type": "function"}]},
            400,
            "tools.0.function",
            "Missing",
        ),
        ("/v1/chat/completions", {"model": "nope", "messages": CHAT}, 404, "model", None),
        ("/v1/nothing-here", {}, 404, None, None),
    ]


# ------------------------------------------------------------------------------- event-loop stalls


async def watch_stalls(url: str, attack, *, streams: int = 16, max_tokens: int = 48) -> dict:
    """Keep `streams` streaming completions running (each restarted when it ends, through raw
    httpx) and poll /health every 20 ms; once every stream has sent a few chunks, await `attack()`.
    Returns its result, the seconds it took, and the largest gap between two chunks of a stream
    and the largest /health latency among those that overlap the attack (issue 27: any stall of
    the server's event loop shows in both). A gap or probe still open when the watch ends counts
    up to then."""
    headers = {"Authorization": f"Bearer {KEY}"}
    spans: dict[str, list[tuple[float, float]]] = {"chunks": [], "probes": []}
    open_spans: dict[object, tuple[str, float]] = {}  # what is awaited now, since when
    started: set[int] = set()
    stop = False

    async def streamer(client: httpx.AsyncClient, i: int) -> None:
        body = {
            "model": MODEL,
            "prompt": f"Stream {i} says:",
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
        seen = 0
        while not stop:
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                assert resp.status_code == 200, await resp.aread()
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    now = time.perf_counter()
                    if i in open_spans:
                        spans["chunks"].append((open_spans[i][1], now))
                    open_spans[i] = ("chunks", now)
                    seen += 1
                    if seen >= 3:
                        started.add(i)
                open_spans.pop(i, None)

    async def prober(client: httpx.AsyncClient) -> None:
        while not stop:
            sent = time.perf_counter()
            open_spans["probe"] = ("probes", sent)
            assert (await client.get("/health")).status_code == 200
            del open_spans["probe"]
            spans["probes"].append((sent, time.perf_counter()))
            await asyncio.sleep(0.02)

    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=TIMEOUT, limits=limits
    ) as client:
        tasks = [asyncio.ensure_future(streamer(client, i)) for i in range(streams)]
        tasks.append(asyncio.ensure_future(prober(client)))
        try:
            deadline = time.monotonic() + 120
            while len(started) < streams:
                assert time.monotonic() < deadline, "the streams did not start"
                for t in tasks:  # a failed stream or probe fails here
                    if t.done():
                        t.result()
                await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            result = await attack()
            t1 = time.perf_counter()
            await asyncio.sleep(0.3)  # what the attack held up arrives
        finally:  # the streams still running disconnect (the server aborts them)
            stop = True
            end = time.perf_counter()
            for kind, since in list(open_spans.values()):
                spans[kind].append((since, end))
            for t in tasks:
                t.cancel()
            for r in await asyncio.gather(*tasks, return_exceptions=True):
                if not isinstance(r, asyncio.CancelledError | type(None)):
                    raise r

    def overlapping(kind: str) -> list[float]:
        return [b - a for a, b in spans[kind] if b >= t0 and a <= t1] or [0.0]

    return {
        "result": result,
        "attack_s": t1 - t0,
        "max_chunk_gap_s": max(overlapping("chunks")),
        "max_health_s": max(overlapping("probes")),
        "chunks": len(overlapping("chunks")),
        "probes": len(overlapping("probes")),
    }


async def stream_completion(client, prompt: str, max_tokens: int) -> dict:
    """One greedy streamed completion of exactly `max_tokens` tokens; its tokens, text, finish
    reason and usage."""
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


@contextlib.contextmanager
def serving(smollm2, references: bool = True):
    """The server of `SERVE_ARGV` on the session's SmolLM2, running; a `Live`. With `references`,
    `Live.ref` holds LLM.generate / LLM.chat answers of the same LLM, asked before the server
    starts (so the engine is never shared at the same time); they also compile the step shapes
    the first tests need."""
    from jaxllm.entrypoints.openai.api_server import Server, build_app, build_llm
    from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser

    opts = resolve_serve_args(serve_parser().parse_args(SERVE_ARGV))
    llm = build_llm(opts, model=smollm2)
    ref = _references(llm) if references else {}
    app, ctx = build_app(llm, opts)
    server = Server(app).start()
    try:
        yield Live(server, ctx, opts, llm.tokenizer, ref)
    finally:
        server.stop()
        print(f"\n[openai server] step compilations: {llm.llm_engine.runner.num_compilations}")


def _references(llm) -> dict:
    from jaxllm import SamplingParams

    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    return {
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
