"""SmolLM2: `n` = 4 prefills the prompt once (counted) and its samples share the prompt's KV
blocks (copy-on-write of the partial block), with the outputs of 4 separate requests seeded
seed + i, as before forking."""

from __future__ import annotations

import pytest

from jaxllm import LLM, SamplingParams

ENGINE = dict(
    max_model_len=48,
    max_num_seqs=4,
    max_num_batched_tokens=32,
    block_size=4,
    num_gpu_blocks_override=14,
)  # as in test_swap_preemption.py


@pytest.fixture(scope="module")
def llm(smollm2):
    return LLM(smollm2, enable_prefix_caching=False, **ENGINE)


def test_n4_prefills_the_prompt_once_and_matches_separate_seeded_requests(llm):
    engine = llm.llm_engine
    prompt = "My favourite food is a"
    n_prompt = len(llm.tokenizer.encode(prompt))
    assert n_prompt % 4  # a partly filled last block, shared, then copied on write
    sp = SamplingParams(n=4, temperature=1.0, max_tokens=6, seed=5, ignore_eos=True)
    before = engine.scheduler.num_prompt_tokens_computed
    copies = engine.runner.block_mover.num_copied_blocks
    out = llm.generate(prompt, sp, use_tqdm=False)[0]
    assert engine.scheduler.num_prompt_tokens_computed - before == n_prompt
    assert engine.runner.block_mover.num_copied_blocks - copies == 3  # the 4th writes in place
    samples = [c.token_ids for c in out.outputs]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3] and len(set(map(tuple, samples))) > 1
    # Today's meaning of n: sample i is the request seeded seed + i. Run separately (no caching:
    # each prefills the prompt itself), they give the same tokens.
    before = engine.scheduler.num_prompt_tokens_computed
    alone = [
        llm.generate(
            prompt,
            SamplingParams(temperature=1.0, max_tokens=6, seed=5 + i, ignore_eos=True),
            use_tqdm=False,
        )[0].outputs[0]
        for i in range(4)
    ]
    assert engine.scheduler.num_prompt_tokens_computed - before == 4 * n_prompt
    assert [c.token_ids for c in alone] == samples
    assert [c.text for c in alone] == [c.text for c in out.outputs]


def test_n4_samples_are_the_same_in_a_busy_batch(llm):
    four = SamplingParams(n=4, temperature=1.0, max_tokens=6, seed=11, ignore_eos=True)
    alone = llm.generate("Water boils at", four, use_tqdm=False)[0]
    other = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    outs = llm.generate(["def fib(n):", "Water boils at"], [other, four], use_tqdm=False)
    assert [c.token_ids for c in outs[1].outputs] == [c.token_ids for c in alone.outputs]


def test_priority_needs_the_priority_policy(llm):
    with pytest.raises(ValueError, match="scheduling_policy='priority'"):
        llm.generate("Hi", SamplingParams(max_tokens=2), priority=[1], use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
