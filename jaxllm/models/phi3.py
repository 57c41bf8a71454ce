"""Phi-3 (`Phi3ForCausalLM`: Phi-3 mini/medium, 4k and 128k; Phi-4-mini): the Llama decoder, read
from a checkpoint that fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`.

The fused tensors are cut into the Llama family's leaves at load (`ParamSpec.hf_rows`), so the
step and tensor parallelism are Llama's: q, k, v and gate, up are split by heads and columns as
usual, which a fused [q | k | v] matrix split over devices would not be. The 128k variants'
`longrope` scaling and Phi-4-mini's partial rotary come from the config (`jaxllm.rope_config`).
"""

from __future__ import annotations

from jaxllm.config import ModelConfig
from jaxllm.models.llama import LlamaForCausalLM
from jaxllm.models.llama_layout import PARAM_LOGICAL_AXES as PARAM_LOGICAL_AXES
from jaxllm.models.llama_layout import decoder_param_layout
from jaxllm.models.param_spec import ParamSpec


def param_layout(config: ModelConfig) -> list[ParamSpec]:
    """The Llama family's leaves, each q/k/v and gate/up kernel cut from its fused HF tensor."""
    Q = config.num_attention_heads * config.head_dim
    K = config.num_key_value_heads * config.head_dim
    F = config.intermediate_size
    qkv, gate_up = "self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight"
    return decoder_param_layout(
        config,
        linears={
            "q_proj": (qkv, (0, Q)),
            "k_proj": (qkv, (Q, Q + K)),
            "v_proj": (qkv, (Q + K, Q + 2 * K)),
            "gate_proj": (gate_up, (0, F)),  # HF chunks gate_up_proj's output: gate first
            "up_proj": (gate_up, (F, 2 * F)),
        },
    )


class Phi3ForCausalLM(LlamaForCausalLM):
    """`__call__(kv_cache, batch) -> (kv_cache, logits [R, V] float32)`."""
