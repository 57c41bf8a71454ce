"""How attention heads divide over the tensor-parallel axis, and KV-head replication.

Query heads are split evenly: device d of `tp` runs query heads [d * Hq/tp, (d+1) * Hq/tp). KV
heads are split the same way when there are at least as many as devices. When there are fewer
(Llama-3-8B's 8 KV heads on 16 devices, or 2 KV heads on tp=4), each KV head is replicated
`r = lcm(Hkv, tp) / Hkv` times, consecutively: the model is rewritten as an equivalent one with
`Hkv' = lcm(Hkv, tp)` KV heads, where KV head j' is a copy of original head j' // r (the
k_proj / v_proj columns and biases are repeated; the KV cache holds Hkv' heads, Hkv'/tp per
device). Query head i reads KV head i // (Hq / Hkv'), which is a copy of original head
i // (Hq / Hkv): the outputs are exactly those of the original model. This is vLLM's choice too:
each device keeps its own copy of the KV head its query heads need.

Uneven splits are rejected, not padded: `tp` must divide the number of query heads and the MLP
width. SmolLM2-135M (9 query heads, 3 KV heads) therefore runs with tp = 1, 3 or 9, and tp = 2
raises a ValueError naming the numbers (padding 9 heads to 10 would waste a tenth of the attention
work and change the parameter layout; not worth it for a 135M model).
"""

from __future__ import annotations

import math

import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.models.layout import logical_axes_table


def check_tensor_parallel(config: ModelConfig, tp: int) -> None:
    """Raise a ValueError, naming the numbers, unless `config` splits evenly over `tp` devices."""
    if tp < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tp}")
    hq, hkv, f = config.num_attention_heads, config.num_key_value_heads, config.intermediate_size
    if hq % tp:
        ok = [d for d in range(1, hq + 1) if hq % d == 0 and f % d == 0]
        raise ValueError(
            f"tensor_parallel_size {tp} does not divide the model's {hq} query heads "
            f"({hkv} KV heads); uneven head splits are not supported. Use one of {ok}"
        )
    if config.is_moe:
        _check_experts(config, tp)
    elif f % tp:
        raise ValueError(
            f"tensor_parallel_size {tp} does not divide the MLP width intermediate_size={f}"
        )


def _check_experts(config: ModelConfig, tp: int) -> None:
    e, f = config.num_experts, config.moe_intermediate_size
    if config.expert_parallel and e % tp:
        raise ValueError(
            f"expert parallelism over {tp} devices does not divide the model's {e} experts"
        )
    if not config.expert_parallel and f % tp:
        raise ValueError(
            f"tensor_parallel_size {tp} does not divide each expert's width "
            f"moe_intermediate_size={f}; enable expert parallelism to split whole experts"
        )
    s = config.shared_expert_intermediate_size
    if s % tp:
        raise ValueError(
            f"tensor_parallel_size {tp} does not divide the shared expert's width "
            f"shared_expert_intermediate_size={s}"
        )


def kv_head_replicas(config: ModelConfig, tp: int) -> int:
    """How many copies of each KV head the tp-way model keeps: lcm(Hkv, tp) / Hkv."""
    hkv = config.num_key_value_heads
    return math.lcm(hkv, tp) // hkv


def tp_model_config(config: ModelConfig, tp: int) -> ModelConfig:
    """The equivalent config the tp-way model runs: KV heads replicated to lcm(Hkv, tp).

    Idempotent (a config already returned by it comes back unchanged).
    """
    check_tensor_parallel(config, tp)
    r = kv_head_replicas(config, tp)
    return config if r == 1 else config.replace(num_key_value_heads=config.num_key_value_heads * r)


def replicated_kv_columns(num_kv_heads: int, head_dim: int, replicas: int) -> np.ndarray:
    """Source column of each column of a replicated k/v projection: [Hkv * r * Dh] int64."""
    cols = np.arange(num_kv_heads * replicas * head_dim)
    return (cols // head_dim // replicas) * head_dim + cols % head_dim


def kv_projections(config: ModelConfig) -> list[tuple[str, ...]]:
    """Paths of the model's k/v projections (e.g. ("layers", "self_attn", "k_proj")): the
    modules whose leaves end in the logical axis "kv_heads" in the model's layout."""
    table = logical_axes_table(config)
    leaves = [path for path, axes in table.items() if axes[-1:] == ("kv_heads",)]
    return list(dict.fromkeys(path[:-1] for path in leaves))


def expand_kv_heads(params: dict, config: ModelConfig, replicas: int, xp=np) -> dict:
    """`params` of `config` with every KV head repeated `replicas` times (last axis of every
    leaf of the k/v projections, e.g. kernels [L, D, Hkv*Dh] and biases [L, Hkv*Dh]). `xp` is
    numpy or jax.numpy. Returns a new dict sharing the untouched leaves."""
    if replicas == 1:
        return params
    cols = replicated_kv_columns(config.num_key_value_heads, config.head_dim, replicas)
    out = dict(params)
    for path in kv_projections(config):
        node = out
        for key in path[:-1]:  # copy the dicts on the way down; the input stays unchanged
            node[key] = dict(node[key])
            node = node[key]
        node[path[-1]] = {
            name: xp.take(leaf, cols, axis=-1) for name, leaf in node[path[-1]].items()
        }
    return out
