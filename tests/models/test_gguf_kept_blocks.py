"""A GGUF file's quantized tensors kept in their blocks (jaxllm.quantization, method gguf): every
kernel type the kernels multiply, q/k rows unpermuted as the float path does, and the same logits
as the dequantized model."""

from __future__ import annotations

import jax
import numpy as np
from gguf import GGMLQuantizationType as QT
from loader_helpers import build_tiny_llama_gguf, expected_params

from jaxllm.model_loader import load_model
from jaxllm.model_loader.gguf import load_gguf
from jaxllm.models.packed_params import use_cpu_ext
from jaxllm.models.step import full_logits, step_params
from jaxllm.quantization.layout import dequantize_params


def test_gguf_kept_blocks_of_every_kernel_type(tmp_path, monkeypatch):
    """A tiny llama GGUF whose layers share one type per projection: every kernel stays in its
    blocks (q/k rows unpermuted as the float path does), and the logits equal the dequantized
    model's through XLA's ops and cpu_ext's kernels, within 1e-4 of the logits' scale (the
    weights are unit-variance noise, so float32 summation order shows more than in a trained
    model: SmolLM2's kept blocks agree within 1e-4 absolute, tests/quantization)."""
    row = (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q4_K, QT.Q6_K, QT.Q4_1, QT.Q4_K)
    path = tmp_path / "kept.gguf"
    sd = build_tiny_llama_gguf(path, types=[row, row])
    loaded = load_model(str(path), tokenizer=False)
    kept = dict(loaded.config.quantization.formats)
    assert kept[("layers", "self_attn", "o_proj", "kernel")] == "q4_k"
    assert kept[("layers", "mlp", "gate_proj", "kernel")] == "q6_k"
    assert len(kept) == 9  # the 7 kernels, the embedding, the LM head
    back = dequantize_params(loaded.params, loaded.config.quantization)
    want = expected_params(sd, 2, False, False)
    for (path_, a), b in zip(
        jax.tree_util.tree_leaves_with_path(back), jax.tree.leaves(want), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path_))
    float_model = load_gguf(str(path), tokenizer=False, keep_quantized=False)
    ids = list(np.random.default_rng(0).integers(3, 320, 40))
    ref = full_logits(float_model.params, float_model.config, [ids])[0]
    for kernels in ("xla", "ext") if use_cpu_ext() else ("xla",):
        monkeypatch.setenv("JAXLLM_CPU_KERNELS", kernels)
        for per_layer in (False, True):  # the engine's stacked layout, and per layer
            params = step_params(
                loaded.params, platform="cpu", per_layer=per_layer, packed=kernels == "ext"
            )
            got = full_logits(params, loaded.config, [ids])[0]
            scale = np.abs(ref).max()
            np.testing.assert_allclose(got, ref, atol=1e-4 * scale, rtol=0, err_msg=kernels)
