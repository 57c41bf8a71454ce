"""The jitted model step: `step(params, kv_cache, batch) -> (kv_cache, logits)`.

`make_step(config, backend)` builds it for one model config and attention backend; the KV cache is
donated, so the step updates it in place. It is a pure function of pytrees, so researchers can
call it (or `forward`) inside their own `jax.jit` code.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.layers.attention import resolve_backend
from jaxllm.models.batch import KVCache, StepBatch, make_kv_cache
from jaxllm.models.registry import get_model_class

StepFn = Callable[[dict, KVCache, StepBatch], tuple[KVCache, jax.Array]]


def build_model(config: ModelConfig, backend: str | None = None):
    """The Flax module for `config` (backend None picks the default attention backend)."""
    return get_model_class(config.architecture)(config, resolve_backend(backend))


def forward(
    params: dict, kv_cache: KVCache, batch: StepBatch, *, config: ModelConfig, backend: str | None = None
) -> tuple[KVCache, jax.Array]:  # (kv_cache, logits [R, V] float32)
    """Un-jitted model step (call it inside your own jit)."""
    return build_model(config, backend).apply({"params": params}, kv_cache, batch)


def make_step(config: ModelConfig, backend: str | None = None) -> StepFn:
    """A jitted `step(params, kv_cache, batch) -> (kv_cache, logits)` with the cache donated."""
    model = build_model(config, backend)

    def step(params: dict, kv_cache: KVCache, batch: StepBatch):
        return model.apply({"params": params}, kv_cache, batch)

    return jax.jit(step, donate_argnums=(1,))


def prefill_batch(token_ids: list[list[int]], block_size: int) -> tuple[StepBatch, int]:
    """A batch prefilling whole sequences from position 0, every row's logits returned.

    Sequence i gets consecutive blocks after the null block 0. Returns the batch and the number of
    blocks the KV cache needs.
    """
    lens = [len(t) for t in token_ids]
    if not lens or min(lens) < 1:
        raise ValueError("every sequence needs at least one token")
    blocks_per = [-(-n // block_size) for n in lens]
    P = max(blocks_per)
    tables = np.zeros((len(lens), P), np.int32)
    slots, positions, next_block = [], [], 1
    for i, (n, nb) in enumerate(zip(lens, blocks_per)):
        tables[i, :nb] = np.arange(next_block, next_block + nb)
        pos = np.arange(n)
        positions.append(pos)
        slots.append(tables[i, pos // block_size] * block_size + pos % block_size)
        next_block += nb
    T = sum(lens)
    batch = StepBatch(
        token_ids=jnp.asarray(np.concatenate([np.asarray(t) for t in token_ids]), jnp.int32),
        positions=jnp.asarray(np.concatenate(positions), jnp.int32),
        slot_mapping=jnp.asarray(np.concatenate(slots), jnp.int32),
        block_tables=jnp.asarray(tables),
        kv_lens=jnp.asarray(lens, jnp.int32),
        query_start_loc=jnp.asarray(np.concatenate([[0], np.cumsum(lens)]), jnp.int32),
        logits_indices=jnp.arange(T, dtype=jnp.int32),
    )
    return batch, next_block


def full_logits(
    params: dict,
    config: ModelConfig,
    token_ids: list[list[int]],
    *,
    block_size: int = 16,
    backend: str | None = None,
) -> list[np.ndarray]:
    """Logits [len_i, V] (float32) of every position of each sequence, through the paged step."""
    batch, num_blocks = prefill_batch(token_ids, block_size)
    cache = make_kv_cache(config, num_blocks, block_size)
    _, logits = make_step(config, backend)(params, cache, batch)
    logits = np.asarray(logits)
    bounds = np.cumsum([0] + [len(t) for t in token_ids])
    return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
