"""The CPU parameter layouts of `jaxllm.models.step.step_params`: per-layer (unstacked) params and
cpu_ext's packed kernels give the stacked layout's logits, and the engine (packed by default where
cpu_ext runs; per-layer with `JAXLLM_PER_LAYER_PARAMS=1`) gives HF's greedy tokens."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cpu_ext.packed_matmul import packed_shape
from jaxllm.models.llama import has_per_layer_params, stack_layer_params, unstack_layer_params
from jaxllm.models.packed_params import is_packed, use_cpu_ext
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
    assert step_params(per_layer, platform="cpu", packed=False) is per_layer


@pytest.mark.skipif(not use_cpu_ext(), reason="cpu_ext cannot run here")
@pytest.mark.parametrize("per_layer", [False, True])
def test_packed_kernels_give_the_unpacked_logits(smollm2, per_layer):
    params, c = smollm2.params, smollm2.config
    packed = step_params(params, platform="cpu", per_layer=per_layer, packed=True)
    assert is_packed(packed) and has_per_layer_params(packed) == per_layer
    # SmolLM2 ties its embeddings: the packed layout adds a packed LM head, keeps the table
    assert "lm_head" not in params
    assert packed["lm_head"]["kernel"].shape == packed_shape(c.hidden_size, c.vocab_size)
    np.testing.assert_array_equal(
        np.asarray(packed["embed_tokens"]["embedding"]),
        np.asarray(params["embed_tokens"]["embedding"]),
    )
    assert step_params(packed, platform="cpu", per_layer=per_layer) is packed
    seqs = [[1, 504, 3458, 282, 4649, 314], [9690, 28, 2036]]
    a = full_logits(params, c, seqs, backend="cpu")
    b = full_logits(packed, c, seqs, backend="cpu")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=2e-4, rtol=0)
        assert (x.argmax(-1) == y.argmax(-1)).all()


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
    assert is_packed(llm.llm_engine.runner.params) == use_cpu_ext()
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, sp)] == ref
    monkeypatch.setenv("JAXLLM_CPU_KERNELS", "fast")
    with pytest.raises(ValueError, match="JAXLLM_CPU_KERNELS='fast'"):
        LLM(smollm2, **kw)
    monkeypatch.setenv("JAXLLM_CPU_KERNELS", "xla")  # XLA's dots: stacked, unpacked
    monkeypatch.setenv("JAXLLM_PER_LAYER_PARAMS", "0")
    params = LLM(smollm2, **kw).llm_engine.runner.params
    assert not is_packed(params) and not has_per_layer_params(params)
    monkeypatch.setenv("JAXLLM_PER_LAYER_PARAMS", "yes")
    with pytest.raises(ValueError, match="JAXLLM_PER_LAYER_PARAMS='yes'"):
        LLM(smollm2, **kw)
