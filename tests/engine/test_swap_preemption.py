"""SmolLM2, greedy: preemption by swap to host memory and by recompute give the outputs of each
request run alone (a KV cache of 13 blocks of 4 tokens forces preemptions)."""

from __future__ import annotations

import pytest

from jaxllm import LLM, SamplingParams
from jaxllm.config import CacheConfig, SchedulerConfig

# Shared by tests/engine/test_fork_*.py and test_priority_*.py: same shapes, same compiled steps.
ENGINE = dict(
    max_model_len=48,
    max_num_seqs=4,
    max_num_batched_tokens=32,
    block_size=4,
    num_gpu_blocks_override=14,
)
PROMPTS = [
    "The capital of France is",
    "Once upon a time there was a",
    "def fib(n):",
    "Water boils at",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def swap_llm(smollm2):
    return LLM(smollm2, preemption_mode="swap", **ENGINE)


@pytest.fixture(scope="module")
def alone(swap_llm):
    """Each prompt on its own: one sequence fits the cache, nothing is preempted."""
    outs = [swap_llm.generate(p, GREEDY, use_tqdm=False)[0].outputs[0].token_ids for p in PROMPTS]
    assert swap_llm.llm_engine.scheduler.num_preemptions_total == 0
    return outs


def test_swap_preemption_gives_the_same_greedy_tokens(swap_llm, alone):
    engine = swap_llm.llm_engine
    outs = swap_llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == alone
    sched, mover = engine.scheduler, engine.runner.block_mover
    assert sched.num_swapped_out_total > 0
    assert sched.num_swapped_out_total == sched.num_preemptions_total
    assert mover.num_swapped_out_blocks == mover.num_swapped_in_blocks > 0
    assert mover.num_host_blocks == int(4 * 2**30 // mover.bytes_per_block)
    m = sched.kv_cache_manager
    assert m.num_free_blocks == 13 and m.swap_pool.num_free_blocks == mover.num_host_blocks


def test_recompute_preemption_gives_the_same_greedy_tokens(smollm2, alone):
    llm = LLM(smollm2, preemption_mode="recompute", **ENGINE)
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == alone
    sched = llm.llm_engine.scheduler
    assert sched.num_preemptions_total > 0 and sched.num_swapped_out_total == 0
    assert llm.llm_engine.runner.block_mover.num_host_blocks == 0


def test_bad_swap_settings_are_named():
    with pytest.raises(ValueError, match="preemption_mode"):
        SchedulerConfig(preemption_mode="disk")
    with pytest.raises(ValueError, match="swap_space"):
        CacheConfig(swap_space=-1)


def test_async_scheduling_with_swap_preemption_gives_the_same_greedy_tokens(smollm2, alone):
    """Requests swapped out while a step of theirs is in flight keep its token and come back."""
    llm = LLM(smollm2, preemption_mode="swap", async_scheduling=True, **ENGINE)
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == alone
    sched = llm.llm_engine.scheduler
    assert sched.num_swapped_out_total > 0
    assert sched.kv_cache_manager.num_free_blocks == 13
