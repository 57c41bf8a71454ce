"""Qwen3-MoE (`Qwen3MoeForCausalLM`, e.g. Qwen3-30B-A3B): Qwen3's attention (q and k normalized
per head, no bias) with every MLP a sparse mixture of experts, each token to its top
`num_experts_per_tok` experts by softmax probability, renormalized where `norm_topk_prob`
(jaxllm/layers/moe.py); no shared expert. Layout: moe_layout.py.
"""

from __future__ import annotations

from jaxllm.config import ModelConfig
from jaxllm.models.llama import LlamaForCausalLM

# The MoE layout; what the registry's readers take from this module is re-exported (`as`).
from jaxllm.models.moe_layout import PARAM_LOGICAL_AXES as PARAM_LOGICAL_AXES
from jaxllm.models.moe_layout import MoeNames, moe_param_layout
from jaxllm.models.moe_layout import from_gguf_tensor as from_gguf_tensor
from jaxllm.models.moe_layout import gguf_tensor_names as gguf_tensor_names
from jaxllm.models.moe_layout import hf_to_gguf_name as hf_to_gguf_name
from jaxllm.models.moe_layout import hf_to_gguf_tensor as hf_to_gguf_tensor
from jaxllm.models.param_spec import ParamSpec

# GGUF `general.architecture` -> (HF architecture, q/k rows permuted by llama.cpp's converter)
GGUF_ARCHITECTURES = {"qwen3moe": ("Qwen3MoeForCausalLM", False)}


def param_layout(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter leaf of the Qwen3-MoE model for `config`, in a fixed order."""
    if config.shared_expert_intermediate_size:
        raise ValueError("Qwen3-MoE has no shared expert (shared_expert_intermediate_size > 0)")
    return moe_param_layout(config, MoeNames())


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    """`__call__(kv_cache, batch) -> (kv_cache, logits [R, V] float32)`."""
