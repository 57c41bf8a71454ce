"""`jaxllm serve --speculative-config '{"method": "ngram", ...}'` (SmolLM2, the official `openai`
client): greedy completions equal an `LLM` without speculation on the same engine flags, and
/metrics carries vLLM's `vllm:spec_decode_*` counters, with drafts made and accepted on a
prompt that repeats itself. (Their absence without speculation, and the data-parallel sum:
test_openai_units.py.)

The reference LLM answers before the server starts, so the two engines never run at once.
"""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from live_server import MODEL, SERVE_ARGV, Live, metric  # noqa: E402

from jaxllm.entrypoints.openai.api_server import Server, build_app, build_llm  # noqa: E402
from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser  # noqa: E402

K = 3
SPEC = {"method": "ngram", "num_speculative_tokens": K}
PROMPTS = [
    # n-grams of the prompt match what comes next: drafts get accepted
    "red, green, blue, red, green, blue, red, green, blue, red, green, blue, red,",
    "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return a + b\n\n\ndef add(",
    # ordinary text: few or no drafts accepted, outputs must still be the target's
    "The capital of France is",
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def live(smollm2):
    plain = build_llm(resolve_serve_args(serve_parser().parse_args(SERVE_ARGV)), model=smollm2)
    from jaxllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    ref = [o.outputs[0].text for o in plain.generate(PROMPTS, sp, use_tqdm=False)]
    del plain
    argv = [*SERVE_ARGV, "--speculative-config", json.dumps(SPEC)]
    opts = resolve_serve_args(serve_parser().parse_args(argv))
    llm = build_llm(opts, model=smollm2)
    assert llm.llm_engine.speculative_config.num_speculative_tokens == K
    app, ctx = build_app(llm, opts)
    server = Server(app).start()
    try:
        yield Live(server, ctx, opts, llm.tokenizer, ref)
    finally:
        server.stop()


def test_greedy_equals_no_speculation_and_metrics_count_drafts(live):
    before = live.metrics()
    assert metric(before, "vllm:spec_decode_num_draft_tokens_total") == 0
    for pos in range(K):  # every position is exported from the start, as vLLM does
        assert (
            metric(before, "vllm:spec_decode_num_accepted_tokens_per_pos_total", position=str(pos))
            == 0
        )

    resp = live.client().completions.create(
        model=MODEL,
        prompt=PROMPTS,
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    got = [c.text for c in sorted(resp.choices, key=lambda c: c.index)]
    assert got == live.ref

    m = live.wait_idle()
    drafts = metric(m, "vllm:spec_decode_num_drafts_total")
    draft_tokens = metric(m, "vllm:spec_decode_num_draft_tokens_total")
    accepted = metric(m, "vllm:spec_decode_num_accepted_tokens_total")
    per_pos = [
        metric(m, "vllm:spec_decode_num_accepted_tokens_per_pos_total", position=str(pos))
        for pos in range(K)
    ]
    assert draft_tokens > 0 and accepted > 0
    assert drafts <= draft_tokens <= K * drafts and accepted <= draft_tokens
    # a draft at position j is kept only after the ones before it
    assert sum(per_pos) == accepted and per_pos == sorted(per_pos, reverse=True)
    assert per_pos[0] <= drafts
    # several tokens a step, but none past max_tokens
    generated = metric(m, "vllm:generation_tokens_total")
    assert generated == len(PROMPTS) * MAX_TOKENS
