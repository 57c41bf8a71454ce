"""Mixtral, Qwen3-MoE and Qwen2-MoE (shared expert) equal HF transformers (torch, float32) on the
same weights.

Tiny random models built from transformers configs (3 layers, 4 to 6 experts, top-2, GQA),
saved with `save_pretrained` and loaded as HF folders: full-sequence logits within 1e-4 of HF,
and greedy tokens through the engine equal to HF `generate` with chunked prefill (16-token
budget), preemption (a cache too small for the batch) and the CPU's packed layout (the experts
through cpu_ext's grouped matmul where it builds). Mixtral's window (16) is shorter than the
prompts. Tensor parallelism (tp 2: all three) and expert parallelism (Qwen3-MoE over 2 devices,
Mixtral over 4) run in one subprocess with virtual CPU devices: zoo_tp_worker.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_reference  # noqa: E402
from worker_process import run_worker  # noqa: E402

from jaxllm import LLM, SamplingParams  # noqa: E402
from jaxllm.model_loader import load_model  # noqa: E402
from jaxllm.models.step import full_logits  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "zoo_tp_worker.py")

SMALL = dict(hf_reference.TINY_CONFIG, intermediate_size=96, num_hidden_layers=3, head_dim=16)
CASES = {
    "mixtral": (
        transformers.MixtralConfig,
        dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=16),
    ),
    "qwen3-moe": (
        transformers.Qwen3MoeConfig,
        dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True),
    ),
    "qwen2-moe": (
        transformers.Qwen2MoeConfig,
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
        ),
    ),
}
NEW = 8
PROMPT_LENGTHS = (5, 23, 40, 61)


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory):
    """name -> (HF model, its folder)."""
    base = tmp_path_factory.mktemp("moe")
    out = {}
    for name, (cls, extra) in CASES.items():
        folder = base / name
        model = hf_reference.random_hf_model(cls(**SMALL, **extra), folder, norm_noise=0.1)
        out[name] = (model, str(folder))
    return out


@pytest.fixture(scope="module")
def hf_greedy(moe_models):
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 300, n).tolist() for n in PROMPT_LENGTHS]
    refs = {n: hf_reference.hf_greedy(m, prompts, NEW) for n, (m, _) in moe_models.items()}
    return prompts, refs


@pytest.mark.parametrize("name", sorted(CASES))
def test_full_sequence_logits_match_hf(moe_models, name):
    hf, folder = moe_models[name]
    loaded = load_model(folder, dtype="float32", tokenizer=False)
    assert loaded.config.architecture == type(hf).__name__
    assert loaded.config.num_experts == CASES[name][1].get("num_experts", 4)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, SMALL["vocab_size"], n).tolist() for n in (1, 17, 40)]
    ours = full_logits(loaded.params, loaded.config, seqs, block_size=16, backend="cpu")
    for seq, got in zip(seqs, ours):
        np.testing.assert_allclose(got, hf_reference.hf_logits(hf, seq), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_engine_greedy_equals_hf(moe_models, hf_greedy, name):
    """Chunked prefill (16-token budget) and preemption (6 usable blocks for ~12 blocks of work)."""
    prompts, refs = hf_greedy
    llm = LLM(
        moe_models[name][1],
        dtype="float32",
        max_model_len=80,
        max_num_seqs=4,
        max_num_batched_tokens=16,
        num_gpu_blocks_override=7,
        block_size=16,
    )
    params = SamplingParams(temperature=0.0, max_tokens=NEW, min_tokens=NEW)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == refs[name]
    assert llm.llm_engine.scheduler.num_preemptions_total > 0


# (tp, expert parallelism, models): tp 2 splits each expert's width; ep splits whole experts
PARALLEL_RUNS = (
    (2, False, ("mixtral", "qwen3-moe", "qwen2-moe")),
    (2, True, ("qwen3-moe",)),
    (4, True, ("mixtral",)),
)


def test_tensor_and_expert_parallel_greedy_equals_hf(moe_models, hf_greedy, tmp_path):
    """One worker process with 4 virtual CPU devices runs every configuration."""
    prompts, refs = hf_greedy
    out = tmp_path / "out.json"
    runs = [
        {"tp": tp, "enable_expert_parallel": ep, "models": {n: moe_models[n][1] for n in names}}
        for tp, ep, names in PARALLEL_RUNS
    ]
    spec = {"prompts": prompts, "new": NEW, "runs": runs}
    run_worker(WORKER, [json.dumps(spec), str(out)])
    for (tp, ep, names), got in zip(PARALLEL_RUNS, json.loads(out.read_text())):
        for name in names:
            assert got[name]["tp"] == tp
            assert got[name]["expert_parallel"] == ep
            assert got[name]["tokens"] == refs[name], (name, tp, ep)
