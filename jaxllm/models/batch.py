"""The ragged batch one model step consumes, and the paged KV cache it updates.

Both are JAX pytrees. `StepBatch` holds only arrays (their shapes pick the compiled variant) plus
one static flag; the host packs it from the scheduler's output (see jaxllm/engine/model_runner.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from pallas_kernels.kv_quant import from_storage, storage_dtype, to_storage


@dataclasses.dataclass(frozen=True)
class StepBatch:
    """One step's tokens of S sequences packed flat (T rows, padded; R logits rows)."""

    token_ids: jax.Array  # [T] int32
    positions: jax.Array  # [T] int32, absolute position of each token in its sequence
    slot_mapping: jax.Array  # [T] int32, block_id * block_size + offset; -1 for padding rows
    block_tables: jax.Array  # [S, P] int32, padded with the null block 0
    kv_lens: jax.Array  # [S] int32, KV length after this step (0 for padding sequences)
    query_start_loc: jax.Array  # [S + 1] int32, cumulative query lengths
    logits_indices: jax.Array  # [R] int32, rows of T whose logits the step returns
    decode_only: bool = False  # static: every sequence has exactly one query token
    # LoRA (`jaxllm.lora.step_inputs.LoRAStep`: each token's adapter slot [T] and the adapter
    # table); None when the engine serves no adapters, and then the step traces no LoRA at all
    lora: Any = None

    @property
    def num_tokens(self) -> int:
        return self.token_ids.shape[0]


jax.tree_util.register_dataclass(
    StepBatch,
    data_fields=[
        "token_ids",
        "positions",
        "slot_mapping",
        "block_tables",
        "kv_lens",
        "query_start_loc",
        "logits_indices",
        "lora",
    ],
    meta_fields=["decode_only"],
)


class KVCache(NamedTuple):
    """Paged K and V of every layer: [L, num_blocks, Hkv, block_size, Dh] each."""

    k: jax.Array
    v: jax.Array

    @property
    def num_blocks(self) -> int:
        return self.k.shape[1]

    @property
    def block_size(self) -> int:
        return self.k.shape[3]


def kv_cache_shape(config: ModelConfig, num_blocks: int, block_size: int) -> tuple[int, ...]:
    return (
        config.num_hidden_layers,
        num_blocks,
        config.num_key_value_heads,
        block_size,
        config.head_dim,
    )


def kv_cache_bytes_per_block(config: ModelConfig, block_size: int, dtype) -> int:
    """Bytes one block takes across all layers, K and V together."""
    per = config.num_hidden_layers * config.num_key_value_heads * block_size * config.head_dim
    return 2 * per * jnp.dtype(dtype).itemsize


def make_kv_cache(
    config: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype=None,
    sharding=None,
    *,
    storage: bool = False,
) -> KVCache:
    """Allocate a zeroed KV cache on the device (block 0 is the reserved null block).

    `storage`: a quantized `dtype` (float8 e4m3) is allocated as its bytes, uint8, the form a
    step's caller keeps it in between steps (`pallas_kernels.kv_quant`: XLA would copy a float8
    cache at the step's boundary); `kv_cache_view` gives the float8 view inside the step."""
    dtype = jnp.dtype(dtype or config.dtype)
    if storage:
        dtype = storage_dtype(dtype)
    shape = kv_cache_shape(config, num_blocks, block_size)
    zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
    return KVCache(zeros(), zeros())


def kv_cache_view(cache: KVCache, dtype) -> KVCache:
    """A cache kept as storage (`make_kv_cache(..., storage=True)`) viewed as `dtype` (inside a
    jitted step: XLA drops the view against the kernels' own byte views)."""
    return KVCache(from_storage(cache.k, dtype), from_storage(cache.v, dtype))


def kv_cache_storage(cache: KVCache) -> KVCache:
    """The inverse of `kv_cache_view`: quantized pages as their bytes."""
    return KVCache(to_storage(cache.k), to_storage(cache.v))
