"""Loading an EAGLE-1 head checkpoint folder into `EagleHead`'s parameters (eagle_head.py).

The folder holds a `config.json` of LlamaForCausalLM's shape with `num_hidden_layers: 1` and the
head's tensors in `*.safetensors` or `pytorch_model.bin`, named as EAGLE-1's repositories and
vLLM's `EagleLlamaForCausalLM` read them (an optional `model.` prefix is dropped):

    fc.weight [D, 2D] (+ fc.bias [D])
    layers.0.self_attn.{q,k,v,o}_proj.weight, layers.0.mlp.{gate,up,down}_proj.weight
    layers.0.post_attention_layernorm.weight
    embed_tokens.weight, lm_head.weight, layers.0.input_layernorm.weight: ignored (the target's
    embedding and LM head serve; EAGLE-1's layer 0 has no input norm)

Torch's [out, in] weights become [in, out] kernels. Any missing, unknown or wrongly shaped tensor
is a ValueError naming it.
"""

from __future__ import annotations

import glob
import json
import os

import jax.numpy as jnp
import numpy as np

from jaxllm.config import ModelConfig

IGNORED_PREFIXES = ("embed_tokens.", "lm_head.", "layers.0.input_layernorm.")


def _expected(c: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Checkpoint name -> (its shape, its flax path) of every tensor a head of `c` needs."""
    D, F, Dh = c.hidden_size, c.intermediate_size, c.head_dim
    q, kv = c.num_attention_heads * Dh, c.num_key_value_heads * Dh
    out = {"fc.weight": ((D, 2 * D), ("fc", "kernel"))}
    for name, shape in [("q_proj", (q, D)), ("k_proj", (kv, D)), ("v_proj", (kv, D))]:
        out[f"layers.0.self_attn.{name}.weight"] = (shape, ("layer", "self_attn", name, "kernel"))
        if c.attention_bias:
            out[f"layers.0.self_attn.{name}.bias"] = (
                shape[:1],
                ("layer", "self_attn", name, "bias"),
            )
    out["layers.0.self_attn.o_proj.weight"] = ((D, q), ("layer", "self_attn", "o_proj", "kernel"))
    for name, shape in [("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))]:
        out[f"layers.0.mlp.{name}.weight"] = (shape, ("layer", "mlp", name, "kernel"))
    out["layers.0.post_attention_layernorm.weight"] = (
        (D,),
        ("layer", "post_attention_layernorm", "scale"),
    )
    return out


def _read_tensors(folder: str) -> dict[str, np.ndarray]:
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    tensors: dict[str, np.ndarray] = {}
    if files:
        from safetensors.numpy import load_file

        for f in files:
            tensors.update(load_file(f))
    elif os.path.exists(os.path.join(folder, "pytorch_model.bin")):
        import torch

        state = torch.load(
            os.path.join(folder, "pytorch_model.bin"), map_location="cpu", weights_only=True
        )
        tensors = {k: v.float().numpy() for k, v in state.items()}
    else:
        raise ValueError(f"EAGLE head {folder!r} has no *.safetensors or pytorch_model.bin")
    return {k.removeprefix("model."): v for k, v in tensors.items()}


def load_eagle_head(folder: str, target: ModelConfig, dtype: str) -> tuple[ModelConfig, dict]:
    """(the head's ModelConfig, its params in `dtype`) from `folder`, checked against the target's
    config `target`: one layer, the target's width and vocabulary, a Llama-shaped layer."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"EAGLE head {folder!r} has no config.json")
    with open(path) as f:
        hf = json.load(f)
    c = ModelConfig.from_hf_dict(hf, dtype)
    where = f"EAGLE head {folder!r}"
    if c.num_hidden_layers != 1:
        raise ValueError(f"{where} has {c.num_hidden_layers} layers; EAGLE-1 heads have 1")
    if c.hidden_size != target.hidden_size or c.vocab_size != target.vocab_size:
        raise ValueError(
            f"{where} has hidden_size {c.hidden_size} and vocab_size {c.vocab_size}; the target "
            f"has {target.hidden_size} and {target.vocab_size}: a head must match its target"
        )
    if c.qk_norm or c.is_moe or c.layer_types:
        raise ValueError(f"{where}: only Llama-shaped heads are supported")
    tensors = _read_tensors(folder)
    expected = _expected(c)
    D = c.hidden_size
    fc_bias = "fc.bias" in tensors
    if fc_bias:
        expected["fc.bias"] = ((D,), ("fc", "bias"))
    unknown = sorted(k for k in tensors if k not in expected and not k.startswith(IGNORED_PREFIXES))
    if unknown:
        raise ValueError(f"{where} has tensors an EAGLE-1 head does not: {unknown[:5]}")
    params: dict = {}
    for name, (shape, flax_path) in expected.items():
        if name not in tensors:
            raise ValueError(f"{where} lacks tensor {name!r}")
        a = np.asarray(tensors[name])
        if a.shape != shape:
            raise ValueError(
                f"{where}: tensor {name!r} has shape {a.shape}, expected {shape} (from its "
                f"config.json and the target's width {D})"
            )
        if flax_path[-1] == "kernel":
            a = a.T  # torch [out, in] -> [in, out]
        node = params
        for key in flax_path[:-1]:
            node = node.setdefault(key, {})
        node[flax_path[-1]] = jnp.asarray(a, dtype)
    return c, params


def head_has_fc_bias(params: dict) -> bool:
    return "bias" in params["fc"]
