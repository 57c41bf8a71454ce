"""Asynchronous scheduling on SmolLM2: the same outputs as the synchronous engine (itself checked
against HF in test_llm_vs_hf.py, which also runs an asynchronous case), for every sampling feature
at once, with steps really in flight; aborts and stop strings while a step is in flight."""

from __future__ import annotations

import pytest

from jaxllm import LLM, SamplingParams

PROMPTS = [
    "The capital of France is",
    "Write a poem about the sea:",
    "Count: 1, 2, 3, 4,",
    "Hello, my name is",
    "def fibonacci(n):",
    "The three primary colours are",
]


def _params():
    return [
        SamplingParams(temperature=0.0, max_tokens=20),
        SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=17, logprobs=2),
        SamplingParams(temperature=0.0, max_tokens=30, stop=[" 7"], ignore_eos=True),
        SamplingParams(temperature=1.0, top_k=20, seed=5, n=2, max_tokens=12),
        SamplingParams(temperature=0.7, seed=9, max_tokens=1, prompt_logprobs=1),
        SamplingParams(temperature=0.0, max_tokens=9, min_tokens=9, presence_penalty=0.5),
    ]


def _summary(outputs):
    return [
        [
            (c.token_ids, c.text, c.finish_reason, c.stop_reason, c.logprobs and len(c.logprobs))
            for c in o.outputs
        ]
        + [o.prompt_logprobs and len(o.prompt_logprobs)]
        for o in outputs
    ]


@pytest.fixture(scope="module")
def engines(smollm2):
    kw = dict(max_model_len=256, max_num_seqs=8, max_num_batched_tokens=32, max_logprobs=5)
    return LLM(smollm2, **kw), LLM(smollm2, async_scheduling=True, **kw)


def test_async_outputs_equal_sync_outputs(engines):
    sync, asyn = engines
    ref = sync.generate(PROMPTS, _params(), use_tqdm=False)
    got = asyn.generate(PROMPTS, _params(), use_tqdm=False)
    assert _summary(got) == _summary(ref)
    for r, g in zip(ref, got):  # logprobs of the same tokens, from the same kind of step
        for rc, gc in zip(r.outputs, g.outputs):
            if rc.logprobs:
                for re_, ge in zip(rc.logprobs, gc.logprobs):
                    assert re_.keys() == ge.keys()
                    for k in re_:
                        assert ge[k].logprob == pytest.approx(re_[k].logprob, abs=1e-4)
    assert asyn.llm_engine._in_flight is None and not asyn.llm_engine.has_unfinished_requests()


def test_steps_really_overlap_and_outputs_lag_one_step(engines):
    _, asyn = engines
    engine = asyn.llm_engine
    engine.add_request("x", "Once upon a time", SamplingParams(temperature=0.0, max_tokens=4))
    first = engine.step()  # prefill dispatched; nothing resolved yet
    assert first == [] and engine._in_flight is not None
    sched_req = engine.scheduler.requests["x"]
    assert sched_req.num_output_placeholders == 1 and sched_req.output_token_ids == []
    outs, steps = [], 1
    while engine.has_unfinished_requests():
        outs += engine.step()
        steps += 1
    # 4 model steps (the 4th token is capped in flight), one more call to resolve the last
    assert steps == 5 and outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 4
    ref = engines[0].generate("Once upon a time", SamplingParams(temperature=0.0, max_tokens=4))
    assert outs[-1].outputs[0].token_ids == ref[0].outputs[0].token_ids


def test_abort_while_in_flight_leaves_the_others_intact(engines):
    sync, asyn = engines
    engine = asyn.llm_engine
    sp = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    engine.add_request("keep", PROMPTS[0], sp)
    engine.add_request("drop", PROMPTS[1], sp)
    seen = []
    for _ in range(3):
        seen += engine.step()
    assert engine._in_flight is not None  # "drop" has a step in flight
    engine.abort_request("drop")
    while engine.has_unfinished_requests():
        seen += engine.step()
    assert {o.request_id for o in seen} == {"keep"} | ({"drop"} & {o.request_id for o in seen})
    final = [o for o in seen if o.request_id == "keep" and o.finished]
    ref = sync.generate(PROMPTS[0], sp, use_tqdm=False)[0].outputs[0].token_ids
    assert len(final) == 1 and final[0].outputs[0].token_ids == ref
    assert not engine.scheduler.requests and engine.scheduler.kv_cache_manager.usage == 0


def test_default_is_on_for_gpu_kernel_backends_only(monkeypatch):
    """async_scheduling=None (the default) resolves by attention backend: off for `cpu` here;
    the same engine with `cpu` counted as a GPU kernel backend turns it on; explicit values win."""
    import jaxllm.engine.llm_engine as le

    assert le.ASYNC_BY_DEFAULT_BACKENDS == ("pallas", "cuda")
    kw = dict(max_model_len=64, max_num_seqs=2, num_gpu_blocks_override=16)
    llm = LLM("dummy:tiny", attention_backend="cpu", **kw)
    assert llm.llm_engine.async_scheduling is False
    assert llm.llm_engine.config.scheduler.async_scheduling is False
    assert llm.llm_engine.scheduler.async_scheduling is False
    monkeypatch.setattr(le, "ASYNC_BY_DEFAULT_BACKENDS", ("cpu",))
    auto = LLM("dummy:tiny", attention_backend="cpu", **kw).llm_engine
    assert auto.async_scheduling is True and auto.scheduler.async_scheduling is True
    off = LLM("dummy:tiny", attention_backend="cpu", async_scheduling=False, **kw).llm_engine
    assert off.async_scheduling is False
    with pytest.raises(ValueError, match="async_scheduling must be True, False or None"):
        LLM("dummy:tiny", async_scheduling="yes", **kw)
