"""The server applies the model's generation_config to the sampling fields a request leaves unset
(vLLM's `--generation-config auto`): a model recommending greedy decoding and 5 new tokens answers
a bare request exactly as a request that asks for temperature 0 and 5 tokens, and a request's own
values win."""

from __future__ import annotations

import dataclasses

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from jaxllm import LLM  # noqa: E402
from jaxllm.entrypoints.openai.api_server import Server, build_app  # noqa: E402
from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser  # noqa: E402

PROMPT = "The capital of France is"
RECOMMENDED = {"temperature": 0.0, "max_new_tokens": 5}


@pytest.fixture(scope="module")
def served(smollm2):
    """An OpenAI client of a server whose model recommends greedy decoding of 5 tokens."""
    loaded = dataclasses.replace(
        smollm2, generation_config={**smollm2.generation_config, **RECOMMENDED}
    )
    llm = LLM(loaded, max_model_len=128, num_gpu_blocks_override=32)
    app, _ = build_app(llm, resolve_serve_args(serve_parser().parse_args(["smollm2-135m"])))
    server = Server(app).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    yield client
    server.stop()


def test_unset_fields_take_the_models_generation_config(served):
    client = served
    asked = client.completions.create(
        model="smollm2-135m", prompt=PROMPT, temperature=0.0, max_tokens=5
    )
    for _ in range(2):  # greedy: the same text each time
        got = client.completions.create(model="smollm2-135m", prompt=PROMPT)
        assert got.choices[0].text == asked.choices[0].text and got.usage.completion_tokens == 5
    chat = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}]
    )
    assert chat.usage.completion_tokens == 5 and chat.choices[0].finish_reason == "length"


def test_a_requests_own_values_win(served):
    client = served
    got = client.completions.create(model="smollm2-135m", prompt=PROMPT, max_tokens=3)
    assert got.usage.completion_tokens == 3
    sampled = client.completions.create(
        model="smollm2-135m", prompt=PROMPT, temperature=1.0, n=2, seed=1
    )
    assert len(sampled.choices) == 2  # n > 1 needs a sampling temperature: the request's counted
