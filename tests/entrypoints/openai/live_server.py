"""The live-server harness of test_openai_server.py: the `jaxllm serve` arguments it starts
with, the prompts it checks, and `Live` (clients, raw posts and /metrics of the running server)."""

from __future__ import annotations

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
