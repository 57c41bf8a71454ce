"""SmolLM2 with scheduling_policy="priority": lower priority values are admitted first, outputs
are those of FCFS (greedy), and priorities are checked."""

from __future__ import annotations

import pytest

from jaxllm import LLM, SamplingParams
from jaxllm.config import SchedulerConfig

ENGINE = dict(
    max_model_len=48,
    max_num_seqs=4,
    max_num_batched_tokens=32,
    block_size=4,
    num_gpu_blocks_override=14,
)  # as in test_swap_preemption.py
PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fib(n):",
    "Water boils at",
    "My favourite colour is",
]


@pytest.fixture(scope="module")
def llm(smollm2):
    return LLM(smollm2, scheduling_policy="priority", **ENGINE)


def test_priority_order_of_admission_and_same_outputs(llm):
    sp = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    alone = [llm.generate(p, sp, use_tqdm=False)[0].outputs[0].token_ids for p in PROMPTS]
    # 4 seats: the first prompt has the largest value, so it waits for a seat.
    outs = llm.generate(PROMPTS, sp, priority=[5, 0, 1, 1, 2], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == alone
    first = [o.metrics.first_scheduled_time for o in outs]
    assert first[0] > max(first[1:])
    with pytest.raises(ValueError, match="2 priorities for 5 prompts"):
        llm.generate(PROMPTS, sp, priority=[1, 2], use_tqdm=False)
    with pytest.raises(ValueError, match="priority must be an int"):
        llm.llm_engine.add_request("x", "Hi", sp, priority="high")
    with pytest.raises(ValueError, match="scheduling policy 'lifo'"):
        SchedulerConfig(policy="lifo")
