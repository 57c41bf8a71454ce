"""Pre-quantized FP8 HF checkpoints (compressed-tensors per channel / per tensor, AutoFP8's
`fp8`): read as stored, equal to quantizing their dequantized float twin at load, and the kinds
jaxllm does not read refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_reference  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from jaxllm.model_loader import load_model  # noqa: E402
from jaxllm.models.step import full_logits  # noqa: E402
from jaxllm.quantization.layout import dequantize_params  # noqa: E402

TINY = dict(
    vocab_size=300,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

COMPRESSED = {
    "quant_method": "compressed-tensors",
    "format": "float-quantized",
    "ignore": ["lm_head"],
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
            "input_activations": {"num_bits": 8, "type": "float", "dynamic": True},
        }
    },
}


def write_fp8(src: str, dst, qc: dict, per_tensor: bool) -> None:
    """`dst`: `src`'s model with its decoder linears in e4m3 + weight_scale, and `qc`;
    `dst/../float`: the same weights dequantized, as a float checkpoint."""
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    quantized, dequantized = dict(state), dict(state)
    for name, w in state.items():
        if not any(f"{lin}.weight" in name for lin in LINEARS):
            continue
        amax = w.abs().amax() if per_tensor else w.abs().amax(dim=1, keepdim=True)
        scale = (amax / 448.0).float()
        q = (w / scale).to(torch.float8_e4m3fn)
        quantized[name] = q
        quantized[name + "_scale"] = scale.reshape(()) if per_tensor else scale
        dequantized[name] = q.float() * scale
    for folder, tensors, extra in (
        (dst, quantized, {"quantization_config": qc}),
        (dst.parent / (dst.name + "-float"), dequantized, {}),
    ):
        folder.mkdir()
        tensors.pop("lm_head.weight", None)
        save_file(tensors, str(folder / "model.safetensors"))
        config = json.loads((Path(src) / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **extra}))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp8") / "base"
    cfg = transformers.LlamaConfig(**TINY, tie_word_embeddings=True)
    hf_reference.random_hf_model(cfg, folder, norm_noise=0.1)
    return folder


@pytest.mark.parametrize(
    "kind, qc, per_tensor",
    [
        ("channel", COMPRESSED, False),
        ("autofp8", {"quant_method": "fp8", "activation_scheme": "dynamic"}, True),
    ],
)
def test_fp8_checkpoint_equals_quantizing_its_float_twin(base, tmp_path, kind, qc, per_tensor):
    dst = tmp_path / kind
    write_fp8(str(base), dst, qc, per_tensor)
    loaded = load_model(str(dst), tokenizer=False)
    q = loaded.config.quantization
    assert q is not None and q.method == "fp8" and len(q.formats) == 7
    up = loaded.params["layers"]["mlp"]["up_proj"]
    assert up["kernel_fp8"].dtype == jax.numpy.float8_e4m3fn and up["kernel_scale"].shape == (
        2,
        256,
    )
    twin = load_model(str(dst.parent / (dst.name + "-float")), tokenizer=False)
    back = dequantize_params(loaded.params, q)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(twin.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    if per_tensor:  # quantizing the twin at load picks per-channel scales: other numbers
        return
    # per channel, the twin's channel maxima are 448 x its scales: quantizing it at load gives
    # back the same e4m3 values and scales, so the same products
    ids = list(np.random.default_rng(0).integers(3, 300, 40))
    twin_path = str(dst.parent / (dst.name + "-float"))
    requantized = load_model(twin_path, tokenizer=False, quantization="fp8")
    got = full_logits(loaded.params, loaded.config, [ids])[0]
    want = full_logits(requantized.params, requantized.config, [ids])[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "qc, match",
    [
        ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "block-wise scales"),
        ({"quant_method": "fp8", "activation_scheme": "static"}, "static activation scales"),
        ({"quant_method": "awq", "bits": 4}, "quantization 'awq' is not supported"),
        (
            {
                **COMPRESSED,
                "config_groups": {
                    "g": {"weights": {"type": "int", "num_bits": 4, "strategy": "group"}}
                },
            },
            "int/4 bits with strategy 'group'",
        ),
    ],
)
def test_unsupported_checkpoint_kinds_are_named(base, tmp_path, qc, match):
    dst = tmp_path / "bad"
    write_fp8(str(base), dst, qc, per_tensor=True)
    with pytest.raises(ValueError, match=match):
        load_model(str(dst), tokenizer=False)


def test_fp8_checkpoint_refuses_another_method(base, tmp_path):
    dst = tmp_path / "q"
    write_fp8(str(base), dst, COMPRESSED, per_tensor=False)
    with pytest.raises(ValueError, match="cannot re-quantize it"):
        load_model(str(dst), tokenizer=False, quantization="int8")
