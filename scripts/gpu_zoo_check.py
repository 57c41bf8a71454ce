"""GPU check of the model zoo: tiny random-weight Qwen3, Gemma 3 (window 16, shorter than the
prompts) and Phi-3 models built from transformers configs give HF's greedy tokens (torch, CPU,
float32) through the engine on the reference, pallas and cuda attention backends. Exit status 1
when any differs.

    PYTHONPATH=.:tests XLA_PYTHON_CLIENT_PREALLOCATE=false python scripts/gpu_zoo_check.py
"""

import sys
import tempfile

import jax
import numpy as np
import transformers

# the tests' HF references (random models, greedy generation): run with tests/ on PYTHONPATH
from hf_reference import hf_greedy, random_hf_model

from jaxllm import LLM, SamplingParams

# HF runs float32 matmuls in full precision on the CPU; XLA's default on Hopper is TF32, whose
# error can flip a greedy near-tie (bench/gpu_runs/2026-12-07_h100_zoo.md).
jax.config.update("jax_default_matmul_precision", "highest")

SMALL = dict(
    vocab_size=300,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=512,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
CASES = {
    "qwen3": (transformers.Qwen3Config, {}),
    "gemma3": (
        transformers.Gemma3TextConfig,
        dict(
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"] * 2,
            query_pre_attn_scalar=48,
            final_logit_softcapping=30.0,
        ),
    ),
    "phi3": (transformers.Phi3Config, dict(sliding_window=24)),
}
NEW = 12
rng = np.random.default_rng(0)
prompts = [rng.integers(3, 300, n).tolist() for n in (5, 40, 77, 130, 19)]
sp = SamplingParams(temperature=0.0, max_tokens=NEW, min_tokens=NEW)  # HF: min_new_tokens
ok = True
with tempfile.TemporaryDirectory() as tmp:
    for name, (cls, extra) in CASES.items():
        folder = f"{tmp}/{name}"
        model = random_hf_model(cls(**SMALL, **extra), folder)
        ref = hf_greedy(model, prompts, NEW)
        for backend in ("reference", "pallas", "cuda"):
            llm = LLM(
                folder,
                dtype="float32",
                max_model_len=256,
                attention_backend=backend,
                num_gpu_blocks_override=128,
                max_num_batched_tokens=64,
            )
            got = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, use_tqdm=False)]
            same = got == ref
            ok &= same
            print(f"{name} {backend}: {'EQUAL' if same else 'DIFFER'} to HF", flush=True)
            if not same:
                print("  got", got, "\n  ref", ref, flush=True)
            del llm
print("ALL EQUAL" if ok else "SOME DIFFER")
sys.exit(0 if ok else 1)
