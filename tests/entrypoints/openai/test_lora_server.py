"""LoRA adapters over the OpenAI-compatible server, with the official `openai` client: adapters of
`--lora-modules` are models of /v1/models, `model=NAME` runs a request with its adapter (the same
greedy tokens as `LLM.generate(..., lora_request=...)`), and /v1/load_lora_adapter and
/v1/unload_lora_adapter work only when JAXLLM_ALLOW_RUNTIME_LORA_UPDATING is set; a bad load is a
400 while other requests go on. One server; tiny adapters written without torch or peft."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from lora_adapter_files import write_adapter

from jaxllm import LoRARequest, SamplingParams

MODEL = "smollm2-135m"
SERVE_ARGV = [
    MODEL,
    "--max-model-len",
    "128",
    "--max-num-seqs",
    "4",
    "--num-gpu-blocks",
    "16",
    "--block-size",
    "64",
    "--max-num-batched-tokens",
    "64",
    "--enable-lora",
    "--max-loras",
    "2",
    "--max-lora-rank",
    "8",
    "--max-cpu-loras",
    "4",
]
PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Name a colour."}]
NEW = 8
STREAM_NEW = 32  # long enough for the bad loads to land while it runs
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)
TIMEOUT = 120.0


class Live:
    def __init__(self, url, paths, ref, plain_app):
        self.url, self.paths, self.ref, self.plain_app = url, paths, ref, plain_app

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="-", max_retries=0, timeout=TIMEOUT)

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=TIMEOUT)


def _chat_ids(llm) -> dict:
    text = llm.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    return {
        "prompt": text,
        "prompt_token_ids": llm.tokenizer.encode(text, add_special_tokens=False),
    }


@pytest.fixture(scope="module")
def live(smollm2, tmp_path_factory):
    from fastapi.testclient import TestClient

    from jaxllm.entrypoints.openai.api_server import Server, build_app, build_llm
    from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser

    folder = tmp_path_factory.mktemp("adapters")
    cfg = smollm2.config
    paths = {
        "alpha": write_adapter(folder / "alpha", cfg, r=4, seed=1),
        "beta": write_adapter(
            folder / "beta", cfg, r=8, target_modules=("gate_proj", "down_proj"), seed=2
        ),
        "gamma": write_adapter(folder / "gamma", cfg, r=2, target_modules=("o_proj",), seed=3),
        "too-big": write_adapter(folder / "too-big", cfg, r=16, seed=4),  # over max_lora_rank
    }
    argv = [
        *SERVE_ARGV,
        "--lora-modules",
        f"alpha={paths['alpha']}",
        json.dumps({"name": "beta", "path": paths["beta"]}),
    ]
    opts = resolve_serve_args(serve_parser().parse_args(argv))
    llm = build_llm(opts, model=smollm2)

    # offline answers first (the engine is never shared at the same time), under ids of their own
    names = [None, "alpha", "beta", "gamma"]
    loras = [None] + [LoRARequest(n, 100 + i, paths[n]) for i, n in enumerate(names[1:])]
    outs = llm.generate([PROMPT] * len(names), GREEDY, lora_request=loras, use_tqdm=False)
    ref = {n: o.outputs[0].text for n, o in zip(names, outs)}
    chat = llm.generate([_chat_ids(llm)], GREEDY, lora_request=loras[1], use_tqdm=False)
    ref["chat-alpha"] = chat[0].outputs[0].text
    for lora in loras[1:]:
        llm.llm_engine.remove_lora(lora.lora_int_id)

    with pytest.MonkeyPatch.context() as mp:  # routes are chosen when the app is built
        mp.delenv("JAXLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
        mp.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
        plain_app, _ = build_app(llm, opts)  # never started: only its routes are asked
        mp.setenv("JAXLLM_ALLOW_RUNTIME_LORA_UPDATING", "true")
        app, _ = build_app(llm, opts)
    server = Server(app).start()
    try:
        yield Live(server.url, paths, ref, TestClient(plain_app))
    finally:
        server.stop()


def _error(resp: httpx.Response, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for w in words:
        assert w in err["message"], err
    return err


def test_models_lists_the_adapters_under_their_base_model(live):
    cards = {m.id: m for m in live.client().models.list().data}
    assert list(cards)[:3] == [MODEL, "alpha", "beta"]
    assert cards["alpha"].parent == cards["beta"].parent == MODEL
    assert cards["alpha"].root == live.paths["alpha"]
    assert getattr(cards[MODEL], "parent", None) is None


def test_model_name_selects_the_adapter_as_offline(live):
    client = live.client()
    assert len({live.ref[n] for n in (None, "alpha", "beta", "gamma")}) == 4  # each one matters
    for name in (MODEL, "alpha", "beta"):
        resp = client.completions.create(
            model=name,
            prompt=PROMPT,
            max_tokens=NEW,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert resp.model == name
        assert resp.choices[0].text == live.ref[None if name == MODEL else name], name
    chat = client.chat.completions.create(
        model="alpha", messages=CHAT, max_tokens=NEW, temperature=0, extra_body={"ignore_eos": True}
    )
    assert chat.model == "alpha"
    assert chat.choices[0].message.content == live.ref["chat-alpha"]
    with pytest.raises(openai.NotFoundError, match="gamma"):
        client.completions.create(model="gamma", prompt=PROMPT, max_tokens=1)


def test_runtime_load_and_unload(live):
    client = live.client()
    resp = live.post(
        "/v1/load_lora_adapter", {"lora_name": "gamma", "lora_path": live.paths["gamma"]}
    )
    assert resp.status_code == 200, resp.text
    assert "gamma" in [m.id for m in client.models.list().data]
    out = client.completions.create(
        model="gamma", prompt=PROMPT, max_tokens=NEW, temperature=0, extra_body={"ignore_eos": True}
    )
    assert out.choices[0].text == live.ref["gamma"]
    again = live.post("/v1/load_lora_adapter", {"lora_name": "gamma", "lora_path": "/x"})
    assert _error(again, 400, "gamma", "already")["param"] == "lora_name"

    assert live.post("/v1/unload_lora_adapter", {"lora_name": "gamma"}).status_code == 200
    assert "gamma" not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gamma", prompt=PROMPT, max_tokens=1)
    _error(live.post("/v1/unload_lora_adapter", {"lora_name": "gamma"}), 404, "gamma")
    _error(live.post("/v1/load_lora_adapter", {"lora_name": "x"}), 400, "lora_path")


def test_runtime_routes_are_absent_without_the_variable(live):
    body = {"lora_name": "gamma", "lora_path": live.paths["gamma"]}
    assert live.plain_app.post("/v1/load_lora_adapter", json=body).status_code == 404
    assert live.plain_app.post("/v1/unload_lora_adapter", json=body).status_code == 404


def test_bad_loads_are_400_while_a_stream_runs(live):
    async def run():
        client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="-", max_retries=0)

        async def stream() -> tuple[str, str | None]:
            chunks = await client.completions.create(
                model="alpha",
                prompt=PROMPT,
                max_tokens=STREAM_NEW,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            text, finish = "", None
            async for ch in chunks:
                text += ch.choices[0].text
                finish = ch.choices[0].finish_reason or finish
            return text, finish

        task = asyncio.ensure_future(stream())
        async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as http:
            missing = await http.post(
                "/v1/load_lora_adapter", json={"lora_name": "m", "lora_path": "/no/such/adapter"}
            )
            big = await http.post(
                "/v1/load_lora_adapter",
                json={"lora_name": "big", "lora_path": live.paths["too-big"]},
            )
        assert not task.done()  # the loads were answered while the stream ran
        return missing, big, await task

    missing, big, (text, finish) = asyncio.run(run())
    _error(missing, 400, "/no/such/adapter")
    _error(big, 400, "max_lora_rank")
    assert finish == "length"
    assert text.startswith(live.ref["alpha"])
    assert "big" not in [m.id for m in live.client().models.list().data]


def test_lora_modules_flag_forms():
    from jaxllm.entrypoints.openai.serve_args import LoRAModulePath, parse_lora_modules

    got = parse_lora_modules(
        [
            "a=/p/a",
            '{"name": "b", "path": "/p/b", "base_model_name": "base"}',
            {"name": "c", "path": "/c"},
        ],
        ["base"],
    )
    assert got == [
        LoRAModulePath("a", "/p/a"),
        LoRAModulePath("b", "/p/b", "base"),
        LoRAModulePath("c", "/c"),
    ]
    for bad, words in [
        (["a"], "NAME=PATH"),
        (["a=/x", "a=/y"], "twice"),
        (["base=/x"], "base model"),
        (['{"name": "a"}'], "path"),
        (['{"name": "a", "path": "/x", "extra": 1}'], "extra"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_lora_modules(bad, ["base"])
