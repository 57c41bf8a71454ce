"""Mixtral (`MixtralForCausalLM`): the Llama decoder (sliding-window attention where the config
sets `sliding_window`) whose MLPs are sparse mixtures of experts, each token to its top
`num_experts_per_tok` experts with their softmax weights renormalized over those (jaxllm/layers/
moe.py). HF names the block `block_sparse_moe` and each expert's gate / up / down `w1` / `w3` /
`w2`. Layout: moe_layout.py; GGUF files of Mixtral are llama.cpp's `llama` architecture with
experts.
"""

from __future__ import annotations

from jaxllm.config import ModelConfig
from jaxllm.models.llama import LlamaForCausalLM
from jaxllm.models.moe_layout import MIXTRAL_NAMES, moe_param_layout

# The MoE layout; what the registry's readers take from this module is re-exported (`as`).
from jaxllm.models.moe_layout import PARAM_LOGICAL_AXES as PARAM_LOGICAL_AXES
from jaxllm.models.moe_layout import from_gguf_tensor as from_gguf_tensor
from jaxllm.models.moe_layout import gguf_tensor_names as gguf_tensor_names
from jaxllm.models.moe_layout import hf_to_gguf_name as hf_to_gguf_name
from jaxllm.models.moe_layout import hf_to_gguf_tensor as hf_to_gguf_tensor
from jaxllm.models.param_spec import ParamSpec

# llama.cpp writes Mixtral as GGUF architecture `llama` (q/k rows permuted like Llama's): a
# `llama` file with experts (`llama.expert_count` > 0) is this model -> (HF architecture, permuted)
GGUF_MOE_ARCHITECTURES = {"llama": ("MixtralForCausalLM", True)}


def param_layout(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter leaf of the Mixtral model for `config`, in a fixed order."""
    return moe_param_layout(config, MIXTRAL_NAMES)


class MixtralForCausalLM(LlamaForCausalLM):
    """`__call__(kv_cache, batch) -> (kv_cache, logits [R, V] float32)`."""
