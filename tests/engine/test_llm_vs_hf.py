"""LLM.generate on SmolLM2 equals HF transformers token for token (greedy) in each batching mode."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from jaxllm import LLM, SamplingParams  # noqa: E402

NEW = 24
LENGTHS = [10, 400, 37, 16, 17, 120, 64, 250, 11, 90, 33, 180, 48, 15, 300, 75]


def _prompts(tokenizer) -> list[list[int]]:
    """16 prompts of 10 to 400 tokens cut from natural text (so the continuations are natural)."""
    text = (
        "The history of the city begins with a small settlement by the river, where farmers and "
        "traders met every season to exchange grain, tools and news. Over the centuries the "
        "settlement grew into a market town, then into a city with walls, churches, a university "
        "and a harbour. "
    ) * 20
    ids = tokenizer.encode(text)
    return [ids[i * 7 : i * 7 + n] for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def prompts(smollm2):
    return _prompts(smollm2.tokenizer)


@pytest.fixture(scope="module")
def hf_greedy(smollm2_hf, prompts):
    outs = []
    for p in prompts:
        with torch.no_grad():
            g = smollm2_hf.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False)
        outs.append(g[0, len(p) :].tolist())
    return outs


def _check(outputs, hf_greedy, eos_ids):
    for out, ref in zip(outputs, hf_greedy):
        got = out.outputs[0].token_ids
        assert got == ref, (out.request_id, got, ref)
        want = "stop" if ref and ref[-1] in eos_ids and len(ref) < NEW else "length"
        assert out.outputs[0].finish_reason == want


@pytest.mark.parametrize(
    "engine_kwargs",
    [
        dict(),  # roomy cache, big token budget
        dict(max_num_batched_tokens=64),  # forces chunked prefill of most prompts
        # a cache small enough to force preemption, with chunking, and the next step scheduled
        # while one is in flight (synchronous preemption: test_swap_preemption.py, vs each alone)
        dict(num_gpu_blocks_override=40, max_num_batched_tokens=64, async_scheduling=True),
    ],
    ids=["default", "chunked-prefill", "async-chunked-preemption"],
)
def test_greedy_batch_equals_hf(smollm2, prompts, hf_greedy, engine_kwargs):
    llm = LLM(smollm2, max_model_len=512, max_num_seqs=16, **engine_kwargs)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=NEW), use_tqdm=False)
    _check(outs, hf_greedy, llm.llm_engine.eos_token_ids)
    if "num_gpu_blocks_override" in engine_kwargs:  # the small cache did force preemption
        assert llm.llm_engine.scheduler.num_preemptions_total > 0
    sched = llm.llm_engine.scheduler
    if "num_gpu_blocks_override" in engine_kwargs:
        assert sched.num_preemptions_total > 0
    assert not sched.has_unfinished_requests()
    assert sched.kv_cache_manager.num_free_blocks == llm.llm_engine.runner.num_blocks - 1


def test_prefix_caching_on_and_off_give_the_same_tokens(smollm2, prompts):
    """Prompts sharing a 100-token prefix, run in two waves (the second wave hits the cache the
    first filled), and one prompt repeated whole: greedy tokens equal with caching on and off."""
    system = prompts[1][:100]
    shared = [system + p[:n] for p, n in zip(prompts[:6], (3, 20, 17, 1, 40, 9))]
    waves = [shared[:3], shared[3:] + [shared[0]]]  # shared[0] again: a whole-prompt hit
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    results = {}
    for caching in (True, False):
        llm = LLM(smollm2, max_model_len=512, max_num_seqs=8, enable_prefix_caching=caching)
        outs = [llm.generate(w, greedy, use_tqdm=False) for w in waves]
        results[caching] = [[o.outputs[0].token_ids for o in wave] for wave in outs]
        cached = [o.num_cached_tokens for o in outs[1]]
        if caching:
            block = llm.llm_engine.runner.block_size
            assert all(c >= (100 // block) * block for c in cached), cached
            # the repeated prompt reuses every full block but recomputes at least its last token
            full = len(shared[0])
            assert cached[-1] == ((full - 1) // block) * block, (cached[-1], full)
        else:
            assert cached == [0] * len(cached)
    assert results[True] == results[False]
