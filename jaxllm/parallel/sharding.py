"""NamedSharding pytrees for the parameters and the KV cache, and placing weights into them.

- `param_shardings(config, mesh)`: the params pytree of NamedShardings from the rules table;
- `kv_cache_sharding(mesh)`: the KV cache split by KV heads;
- `shard_params(params, config, mesh)`: any params of `config` -> (params in their shardings,
  the tp-way config), repeating KV heads where there are fewer than devices (heads.py);
- `host_placer(config, mesh)`: for the loaders, puts one host buffer straight into its shards
  (each device receives only its slice; nothing of model size goes through one device).

`config` is always the model's own config; the tp-way config (`heads.tp_model_config`) is derived.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.config import ModelConfig
from jaxllm.parallel.heads import (
    expand_kv_heads,
    kv_head_replicas,
    kv_projections,
    replicated_kv_columns,
    tp_model_config,
)
from jaxllm.parallel.mesh import check_mesh, model_axis_size
from jaxllm.parallel.sharding_rules import (
    KV_CACHE_LOGICAL_AXES,
    logical_to_spec,
    param_partition_specs,
)


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device of `mesh` holds the whole array (step inputs, sampled tokens)."""
    return NamedSharding(mesh, PartitionSpec())


def param_shardings(config: ModelConfig, mesh: Mesh, replicate_kv: bool = False) -> dict:
    """The params pytree of NamedShardings for `config` (already the tp-way config, or one whose
    KV heads divide evenly) on `mesh`."""
    check_mesh(mesh)
    tree: dict = {}
    for path, spec in param_partition_specs(config, dict(mesh.shape), replicate_kv).items():
        _set(tree, path, NamedSharding(mesh, spec))
    return tree


def kv_cache_sharding(mesh: Mesh) -> NamedSharding:
    """The KV cache [L, N, Hkv, bs, Dh] split by KV heads over 'model'."""
    return NamedSharding(check_mesh(mesh), logical_to_spec(KV_CACHE_LOGICAL_AXES))


def shard_params(params: dict, config: ModelConfig, mesh: Mesh) -> tuple[dict, ModelConfig]:
    """Put `params` (laid out for `config`, on any devices) into their shardings on `mesh`.

    Returns (params, tp-way config). When KV heads are replicated, the small k/v projections go to
    every device of the mesh first and are repeated there by one jitted function; every other leaf
    moves straight to its shards. Params already in place come back unchanged.
    """
    tp = model_axis_size(mesh)
    tp_config = tp_model_config(config, tp)
    target = param_shardings(tp_config, mesh)
    r = kv_head_replicas(config, tp)
    if r == 1:
        return jax.device_put(params, target), tp_config
    staged = jax.device_put(params, param_shardings(config, mesh, replicate_kv=True))
    expand = jax.jit(lambda p: expand_kv_heads(p, config, r, xp=jax.numpy), out_shardings=target)
    return expand(staged), tp_config


def host_placer(config: ModelConfig, mesh: Mesh) -> Callable[[Any, np.ndarray], jax.Array]:
    """`place(spec, buf)` for the loaders' `assemble_params`: the host buffer `buf` (one whole
    leaf of `config`'s layout, e.g. [L, D, Hkv*Dh]) becomes a jax.Array in its sharding on
    `mesh`, built shard by shard with `jax.make_array_from_callback`. k/v projections are
    repeated per KV head on the fly (only the columns each device needs are gathered)."""
    tp = model_axis_size(mesh)
    tp_config = tp_model_config(config, tp)
    shardings = param_shardings(tp_config, mesh)
    r = kv_head_replicas(config, tp)
    cols = replicated_kv_columns(config.num_key_value_heads, config.head_dim, r) if r > 1 else None
    kv = set(kv_projections(config))

    def place(spec: Any, buf: np.ndarray) -> jax.Array:
        sharding = shardings
        for key in spec.path:
            sharding = sharding[key]
        if cols is not None and spec.path[:-1] in kv:
            if buf.dtype == np.uint8:  # GGUF blocks [L, rows, row_bytes]: heads are rows
                raise ValueError(
                    f"{'/'.join(spec.path)}: tensor_parallel_size={tp} repeats the "
                    f"{config.num_key_value_heads} KV heads, which GGUF blocks kept as stored "
                    "cannot do; load the GGUF with quantization='int8' or 'fp8', or use a "
                    f"tensor_parallel_size that divides {config.num_key_value_heads}"
                )
            shape = buf.shape[:-1] + (len(cols),)

            def slice_kv(index: tuple) -> np.ndarray:
                index = tuple(index) + (slice(None),) * (len(shape) - len(index))
                return np.ascontiguousarray(buf[index[:-1]][..., cols[index[-1]]])

            return jax.make_array_from_callback(shape, sharding, slice_kv)
        return jax.make_array_from_callback(
            buf.shape, sharding, lambda index: np.ascontiguousarray(buf[index])
        )

    return place
