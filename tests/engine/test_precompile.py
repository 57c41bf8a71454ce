"""Step shapes compiled ahead of time: `ModelRunner.precompile` covers every shape the bucket
policy produces (no compilation while serving), and generation through the precompiled executables
equals HF transformers' greedy tokens. Runs the accelerator bucket policy (S follows T, one
block-table width) on the CPU, so it compiles only a handful of SmolLM2 shapes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from jaxllm import LLM, SamplingParams  # noqa: E402
from jaxllm.engine.buckets import accelerator_policy  # noqa: E402

NEW = 10


def test_precompiled_shapes_cover_generation_and_match_hf(smollm2, smollm2_hf):
    llm = LLM(smollm2, max_model_len=64, max_num_seqs=4, max_num_batched_tokens=16)
    runner = llm.llm_engine.runner
    runner.shape_policy = accelerator_policy(16, 4, runner.max_blocks_per_seq, runner.block_size)
    # T in 1, 2, 4, 8, 16; S = min(T, 4); P = 4 (the whole 64-token table)
    assert runner.shape_policy.all_shapes() == [
        (1, 1, 4),
        (2, 2, 4),
        (4, 4, 4),
        (8, 4, 4),
        (16, 4, 4),
    ]
    greedy = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)
    # and the decode-only variant of each T == S shape (decode_only is static)
    assert runner.precompile([greedy], max_workers=2) == 8
    assert runner.num_compilations == 8
    assert runner.precompile([greedy]) == 0  # already there

    tok = llm.tokenizer
    prompts = [tok.encode(t) for t in ("The capital of France is", "1, 2, 3, 4,", "Hello")]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)
    assert runner.num_compilations == 8  # prefill chunks, mixed and decode steps: all precompiled
    for p, out in zip(prompts, outs):
        with torch.no_grad():
            ref = smollm2_hf.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False)
        assert out.outputs[0].token_ids == ref[0, len(p) :].tolist()
