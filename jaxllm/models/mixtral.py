"""Mixtral (`MixtralForCausalLM`): the Llama decoder (sliding-window attention where the config
sets `sliding_window`) whose MLPs are sparse mixtures of experts, each token to its top
`num_experts_per_tok` experts with their softmax weights renormalized over those (jaxllm/layers/
moe.py). HF names the block `block_sparse_moe` and each expert's gate / up / down `w1` / `w3` /
`w2`. Layout: moe_layout.py.
"""

from __future__ import annotations

from jaxllm.config import ModelConfig
from jaxllm.models.llama import LlamaForCausalLM
from jaxllm.models.moe_layout import PARAM_LOGICAL_AXES as PARAM_LOGICAL_AXES
from jaxllm.models.moe_layout import MoeNames, moe_param_layout
from jaxllm.models.param_spec import ParamSpec

NAMES = MoeNames(block="block_sparse_moe", gate="w1", up="w3", down="w2")


def param_layout(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter leaf of the Mixtral model for `config`, in a fixed order."""
    return moe_param_layout(config, NAMES)


class MixtralForCausalLM(LlamaForCausalLM):
    """`__call__(kv_cache, batch) -> (kv_cache, logits [R, V] float32)`."""
