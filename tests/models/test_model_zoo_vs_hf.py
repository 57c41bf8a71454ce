"""Qwen3, Gemma 3 (text) and Phi-3 equal HF transformers (torch, float32) on the same weights,
with yarn and longrope (+ partial rotary) scaling.

Tiny random models built from transformers configs (4 layers, GQA, a vocabulary of 300), saved
with `save_pretrained` and loaded as HF folders: full-sequence logits within 1e-4 of HF on the
reference and CPU attention backends (C++ and jnp kernels), bfloat16 logits as close to HF's
float32 ones as HF's bfloat16 run, and greedy tokens through the engine (chunked prefill, a
cache small enough to preempt, prefix caching) equal to HF `generate`. Gemma 3's window (16) is
shorter than the prompts, so its sliding layers really slide. Tensor parallelism (tp 2 on virtual
CPU devices, one case per family) runs in a subprocess: zoo_tp_worker.py.
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

SMALL = dict(hf_reference.TINY_CONFIG, intermediate_size=160, num_hidden_layers=4, head_dim=32)
WINDOW = 16
CASES = {
    "qwen3": (transformers.Qwen3Config, dict(tie_word_embeddings=False)),
    "qwen3-tied": (transformers.Qwen3Config, dict(tie_word_embeddings=True)),
    "gemma3": (
        transformers.Gemma3TextConfig,
        dict(
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"] * 1
            + ["full_attention"],
            query_pre_attn_scalar=24,  # not head_dim: a wrong score scale shows
            final_logit_softcapping=30.0,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        ),
    ),
    "phi3": (transformers.Phi3Config, dict(sliding_window=None)),
    "qwen3-yarn": (
        transformers.Qwen3Config,
        dict(
            rope_scaling={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 128,
            }
        ),
    ),
    # LongRoPE with half the head rotating (Phi-4-mini's shape). The engine's max_model_len
    # passes the original 4 positions, so it rotates with the long factors, as HF does for every
    # prompt here (all longer than 4).
    "phi3-longrope-partial": (
        transformers.Phi3Config,
        dict(
            sliding_window=None,
            head_dim=16,  # = hidden / heads, which HF's longrope check assumes
            partial_rotary_factor=0.5,
            original_max_position_embeddings=4,
            rope_scaling={
                "type": "longrope",
                "short_factor": [1.0 + 0.05 * i for i in range(4)],
                "long_factor": [1.0 + 0.8 * i for i in range(4)],
            },
        ),
    ),
}
NEW = 10
PROMPT_LENGTHS = (5, 23, 40, 61, 17, 48)


def _make(name: str, folder) -> torch.nn.Module:
    return _build(*CASES[name], folder)


def _build(cls, extra: dict, folder) -> torch.nn.Module:
    return hf_reference.random_hf_model(cls(**{**SMALL, **extra}), folder, norm_noise=0.1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (HF model, its folder)."""
    base = tmp_path_factory.mktemp("zoo")
    return {name: (_make(name, base / name), str(base / name)) for name in CASES}


def _prompts() -> list[list[int]]:
    rng = np.random.default_rng(1)
    shared = rng.integers(3, 300, 32).tolist()  # two prompts share 32 tokens (2 blocks)
    out = [rng.integers(3, 300, n).tolist() for n in PROMPT_LENGTHS]
    out[3] = shared + out[3][:29]
    out[5] = shared + out[5][:16]
    return out


def _hf_greedy(model, prompts) -> list[list[int]]:
    return hf_reference.hf_greedy(model, prompts, NEW)


@pytest.fixture(scope="module")
def hf_greedy(zoo):
    prompts = _prompts()
    return prompts, {name: _hf_greedy(model, prompts) for name, (model, _) in zoo.items()}


@pytest.mark.parametrize("backend", ["reference", "cpu", "cpu-xla"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_full_sequence_logits_match_hf(zoo, name, backend, monkeypatch):
    """`cpu` runs cpu_ext's C++ kernels where they build, `cpu-xla` the jnp ones (as bf16 does)."""
    if backend == "cpu-xla":
        monkeypatch.setenv("JAXLLM_CPU_KERNELS", "xla")
        backend = "cpu"
    hf, folder = zoo[name]
    loaded = load_model(folder, dtype="float32", tokenizer=False)
    assert loaded.config.architecture == type(hf).__name__
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, SMALL["vocab_size"], n).tolist() for n in (1, 17, 70)]
    ours = full_logits(loaded.params, loaded.config, seqs, block_size=16, backend=backend)
    for seq, got in zip(seqs, ours):
        np.testing.assert_allclose(got, hf_reference.hf_logits(hf, seq), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_logits_as_close_to_float32_as_hf_bfloat16(zoo, name):
    """bfloat16 weights and activations: jaxllm's logits are no further from HF's float32 ones
    than HF's own bfloat16 run is (with a 2x margin: the two round at different points)."""
    hf, folder = zoo[name]
    loaded = load_model(folder, dtype="bfloat16", tokenizer=False)
    rng = np.random.default_rng(2)
    seqs = [rng.integers(0, SMALL["vocab_size"], n).tolist() for n in (9, 40)]
    ours = full_logits(loaded.params, loaded.config, seqs, block_size=16, backend="cpu")
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    for seq, got in zip(seqs, ours):
        ref, ref16 = hf_reference.hf_logits(hf, seq), hf_reference.hf_logits(hf16, seq)
        hf_err = np.abs(ref16 - ref).max()
        assert hf_err > 0  # the bf16 model really rounds
        assert np.abs(got - ref).max() <= 2 * hf_err, (np.abs(got - ref).max(), hf_err)


@pytest.mark.parametrize("name", sorted(CASES))
def test_engine_greedy_equals_hf(zoo, hf_greedy, name):
    """Chunked prefill (16-token budget), preemption (a 12-block cache for ~24 blocks of work)
    and prefix caching (two prompts share 2 blocks), on the CPU's own layout and kernels."""
    prompts, refs = hf_greedy
    llm = LLM(
        zoo[name][1],
        dtype="float32",
        max_model_len=96,
        max_num_seqs=6,
        max_num_batched_tokens=16,
        num_gpu_blocks_override=12,
        block_size=16,
        enable_prefix_caching=True,
    )
    params = SamplingParams(temperature=0.0, max_tokens=NEW, min_tokens=NEW)  # as HF's min_new
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == refs[name]
    sched = llm.llm_engine.scheduler
    assert sched.num_preemptions_total > 0
    # a second wave hits the prefix cache and still gives HF's tokens
    again = llm.generate([prompts[3]], params, use_tqdm=False)[0]
    assert again.num_cached_tokens and again.num_cached_tokens >= 32
    assert again.outputs[0].token_ids == refs[name][3]


# one case per model family: the rope variants (yarn, longrope, tied embeddings) compute the same
# way on every device, which the tp run of their family covers
TP_CASES = ("qwen3", "gemma3", "phi3-longrope-partial")


def test_tensor_parallel_2_greedy_equals_hf(zoo, hf_greedy, tmp_path):
    prompts, refs = hf_greedy
    out = tmp_path / "tp.json"
    spec = {"prompts": prompts, "new": NEW, "models": {n: zoo[n][1] for n in TP_CASES}}
    run_worker(WORKER, [json.dumps(spec), str(out)])
    got = json.loads(out.read_text())
    for name in TP_CASES:
        assert got[name]["tp"] == 2
        assert got[name]["tokens"] == refs[name], name


def test_longrope_engine_within_the_original_length_takes_the_short_factors(tmp_path):
    """An engine whose max_model_len stays within the original context rotates with the short
    factors, as HF does for sequences that short (chunked prefill included)."""
    cls, extra = CASES["phi3-longrope-partial"]
    hf = _build(cls, {**extra, "original_max_position_embeddings": 96}, tmp_path)
    prompts = _prompts()[:3]  # at most 40 + NEW tokens
    refs = _hf_greedy(hf, prompts)
    llm = LLM(
        str(tmp_path), dtype="float32", max_model_len=96, max_num_batched_tokens=16, block_size=16
    )
    assert not llm.llm_engine.model_config.rope_scaling.use_long_factor
    params = SamplingParams(temperature=0.0, max_tokens=NEW, min_tokens=NEW)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == refs
