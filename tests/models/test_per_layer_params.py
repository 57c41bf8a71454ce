"""Per-layer (unstacked) parameters: the same logits as the stacked layout, and the engine's
opt-in (`JAXLLM_PER_LAYER_PARAMS=1`) gives the same greedy tokens."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxllm.models.llama import has_per_layer_params, stack_layer_params, unstack_layer_params
from jaxllm.models.step import full_logits, step_params


def test_unstacked_layers_give_the_stacked_logits(smollm2):
    params = smollm2.params
    per_layer = unstack_layer_params(params)
    L = smollm2.config.num_hidden_layers
    assert has_per_layer_params(per_layer) and "layers" not in per_layer
    assert sorted(k for k in per_layer if k.startswith("layers_")) == sorted(
        f"layers_{i}" for i in range(L)
    )
    back = stack_layer_params(per_layer)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    seqs = [[1, 504, 3458, 282, 4649, 314], [9690, 28, 2036]]
    a = full_logits(params, smollm2.config, seqs, backend="cpu")
    b = full_logits(per_layer, smollm2.config, seqs, backend="cpu")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
    # step_params: unstacks on the CPU only, and leaves unstacked params alone
    assert has_per_layer_params(step_params(params, platform="cpu"))
    assert step_params(params, platform="gpu") is params
    assert step_params(per_layer, platform="cpu") is per_layer


def test_engine_with_per_layer_params_gives_the_same_tokens(smollm2, smollm2_hf, monkeypatch):
    """Greedy tokens of the engine on per-layer weights equal HF generate's."""
    torch = pytest.importorskip("torch")
    from jaxllm import LLM, SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=8)
    prompts = ["The capital of France is", "def add(a, b):"]
    kw = dict(max_model_len=64, max_num_seqs=2, num_gpu_blocks_override=16)
    ref = []
    for text in prompts:
        ids = smollm2.tokenizer.encode(text)
        with torch.no_grad():
            g = smollm2_hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        ref.append(g[0, len(ids) :].tolist())
    monkeypatch.setenv("JAXLLM_PER_LAYER_PARAMS", "1")
    llm = LLM(smollm2, **kw)
    assert has_per_layer_params(llm.llm_engine.runner.params)
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, sp)] == ref
    monkeypatch.setenv("JAXLLM_PER_LAYER_PARAMS", "yes")
    with pytest.raises(ValueError, match="JAXLLM_PER_LAYER_PARAMS='yes'"):
        LLM(smollm2, **kw)
