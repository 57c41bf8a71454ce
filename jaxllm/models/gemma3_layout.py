"""Gemma 3 text's parameter layout: the Llama family's leaves (with q/k norms) plus the sandwich
norms around the MLP, and the GGUF names llama.cpp gives them.

Gemma's norms scale by (1 + w) and HF checkpoints store w; llama.cpp's converter stores 1 + w, so
`from_gguf_tensor` subtracts the 1 again (as transformers does when it reads a Gemma GGUF).
"""

from __future__ import annotations

import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.models.llama_layout import PARAM_LOGICAL_AXES as LLAMA_LOGICAL_AXES
from jaxllm.models.llama_layout import decoder_param_layout, gguf_name_in, gguf_names_in
from jaxllm.models.param_spec import ParamSpec

MLP_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")


def param_layout(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter leaf of the Gemma 3 text model for `config`, in a fixed order."""
    if not config.qk_norm:
        raise ValueError("a Gemma 3 config must have qk_norm set (model_type gemma3_text)")
    return decoder_param_layout(config, extra_layer_norms=MLP_NORMS)


PARAM_LOGICAL_AXES: dict[tuple[str, ...], tuple[str, ...]] = {
    **LLAMA_LOGICAL_AXES,
    **{("layers", n, "scale"): ("layers", "embed") for n in MLP_NORMS},
}

# GGUF `general.architecture` -> (HF architecture, q/k rows permuted by llama.cpp's converter)
GGUF_ARCHITECTURES = {"gemma3": ("Gemma3ForCausalLM", False)}

# HF name (suffix after "model.layers.{i}.") -> GGUF name (suffix after "blk.{i}.")
GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def hf_to_gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of HF tensor `hf_name` (a KeyError for names GGUF does not have)."""
    return gguf_name_in(hf_name, GGUF_LAYER_NAMES)


def gguf_tensor_names(config: ModelConfig) -> set[str]:
    """Every GGUF tensor name a Gemma 3 file may hold for `config`."""
    return gguf_names_in(config, GGUF_LAYER_NAMES)


def from_gguf_tensor(hf_name: str, w: np.ndarray) -> np.ndarray:
    """A GGUF tensor (HF layout, float) as the HF checkpoint holds it: norms back to w."""
    return w - 1.0 if hf_name.endswith("norm.weight") else w
