"""Qwen3 (`Qwen3ForCausalLM`): the Llama decoder with q and k normalized per head (RMSNorm over
head_dim, before the rotation), no q/k/v bias; tied or untied embeddings.

The layout is the Llama family's with `layers/self_attn/{q,k}_norm/scale` [L, Dh]
(`config.qk_norm`, set for `model_type` qwen3). llama.cpp stores `qwen3` GGUF files with
NeoX-order q/k rows, so nothing is permuted back.
"""

from __future__ import annotations

from jaxllm.models.llama import LlamaForCausalLM

# The Llama family's layout (q/k norms included by config.qk_norm), re-exported (`as`).
from jaxllm.models.llama_layout import PARAM_LOGICAL_AXES as PARAM_LOGICAL_AXES
from jaxllm.models.llama_layout import gguf_tensor_names as gguf_tensor_names
from jaxllm.models.llama_layout import hf_to_gguf_name as hf_to_gguf_name
from jaxllm.models.llama_layout import param_layout as param_layout

# GGUF `general.architecture` -> (HF architecture, q/k rows permuted by llama.cpp's converter)
GGUF_ARCHITECTURES = {"qwen3": ("Qwen3ForCausalLM", False)}


class Qwen3ForCausalLM(LlamaForCausalLM):
    """`__call__(kv_cache, batch) -> (kv_cache, logits [R, V] float32)`."""
