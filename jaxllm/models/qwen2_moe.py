"""Qwen2-MoE (`Qwen2MoeForCausalLM`, e.g. Qwen1.5-MoE-A2.7B): Qwen2's attention (q/k/v bias)
with every MLP a sparse mixture of experts plus a shared expert, a dense SwiGLU MLP of width
`shared_expert_intermediate_size` scaled by sigmoid(x @ shared_expert_gate) and added to the
routed experts' output (jaxllm/layers/moe.py). Layout: moe_layout.py.
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
GGUF_ARCHITECTURES = {"qwen2moe": ("Qwen2MoeForCausalLM", False)}


def param_layout(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter leaf of the Qwen2-MoE model for `config`, in a fixed order."""
    return moe_param_layout(config, MoeNames())


class Qwen2MoeForCausalLM(LlamaForCausalLM):
    """`__call__(kv_cache, batch) -> (kv_cache, logits [R, V] float32)`."""
