"""LoRA units: the segment matmul against a per-token loop, the scheduler's max_loras, prefix-cache
keys per adapter, LoRARequest checks."""

from __future__ import annotations

import numpy as np
import pytest

from jaxllm.config import CacheConfig, SchedulerConfig
from jaxllm.kv_cache.block_hash import hash_request_blocks
from jaxllm.lora import LoRARequest
from jaxllm.request import Request
from jaxllm.sampling_params import SamplingParams
from jaxllm.scheduler.scheduler import Scheduler


def test_lora_delta_equals_a_loop_over_tokens():
    from jaxllm.lora.segment_matmul import lora_delta

    rng = np.random.default_rng(0)
    S, L, D, R, N, T = 3, 2, 8, 4, 5, 7
    a = rng.standard_normal((S, L, D, R)).astype(np.float32)
    b = rng.standard_normal((S, L, R, N)).astype(np.float32)
    x = rng.standard_normal((T, D)).astype(np.float32)
    slots = np.array([0, -1, 2, 1, 0, -1, 2], np.int32)
    got = np.asarray(lora_delta(x, a, b, slots, 1))
    want = np.stack(
        [np.zeros(N) if s < 0 else x[t] @ a[s, 1] @ b[s, 1] for t, s in enumerate(slots)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_block_hashes_differ_per_adapter():
    tokens = list(range(8))
    base = hash_request_blocks(tokens, 4)
    one = hash_request_blocks(tokens, 4, lora_int_id=1)
    assert base != one and one != hash_request_blocks(tokens, 4, lora_int_id=2)
    assert hash_request_blocks(tokens, 4, "s", 1) != hash_request_blocks(tokens, 4, "s")
    assert hash_request_blocks(tokens, 4, lora_int_id=0) == base  # no adapter: unchanged


def test_scheduler_runs_at_most_max_loras_adapters():
    sched = Scheduler(
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=32),
        CacheConfig(block_size=4),
        num_blocks=64,
        max_loras=2,
    )
    params = SamplingParams(max_tokens=4)
    loras = [1, 2, 3, 0, 1, 3]
    for i, lid in enumerate(loras):
        sched.add_request(Request(f"r{i}", [1, 2, 3], params, lora_int_id=lid))
    out = sched.schedule()
    # adapter 3 waits; the base request and adapter 1's second request go past it
    assert [sr.request_id for sr in out.scheduled] == ["r0", "r1", "r3", "r4"]
    assert [r.request_id for r in sched.waiting] == ["r2", "r5"]  # their order kept
    sched.finish_requests(["r0", "r4"], sched.requests["r0"].status.FINISHED_ABORTED)
    out = sched.schedule()  # adapter 1 is gone: adapter 3's requests run
    assert {sr.request_id for sr in out.scheduled} >= {"r2", "r5"}


def test_lora_request_checks():
    assert LoRARequest("a", 1, "/x") == LoRARequest("a", 1, "/x")
    with pytest.raises(ValueError, match="lora_int_id"):
        LoRARequest("a", 0, "/x")
    with pytest.raises(ValueError, match="lora_name"):
        LoRARequest("", 1, "/x")
