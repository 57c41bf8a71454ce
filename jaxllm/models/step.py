"""The jitted model step: `step(params, kv_cache, batch) -> (kv_cache, logits)`.

`make_step(config, backend)` builds it for one model config and attention backend; the KV cache is
donated, so the step updates it in place. It is a pure function of pytrees, so researchers can
call it (or `forward`) inside their own `jax.jit` code.

Tensor parallelism: pass a `('data', 'model')` mesh (`jaxllm.parallel.make_mesh`, or your own).
The params must then be laid out by `jaxllm.parallel.shard_params(params, config, mesh)`, which
also returns the tp-way config (KV heads repeated where fewer than devices); the step is jitted
with the params' and the KV cache's shardings in and out, and attention runs under shard_map.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.layers.attention import resolve_backend
from jaxllm.models.batch import KVCache, StepBatch, make_kv_cache
from jaxllm.models.registry import get_model_class

StepFn = Callable[[dict, KVCache, StepBatch], tuple[KVCache, jax.Array]]


def build_model(
    config: ModelConfig,
    backend: str | None = None,
    mesh=None,
    *,
    return_hidden_states: bool = False,
):
    """The Flax module for `config` (backend None picks the default attention backend).

    With a `mesh`, `config` becomes the tp-way config of its 'model' axis (see jaxllm.parallel).
    `return_hidden_states`: the module also returns every token's final hidden state (EAGLE).
    """
    if mesh is not None:
        from jaxllm.parallel import model_axis_size, tp_model_config

        config = tp_model_config(config, model_axis_size(mesh))
    extra = {"return_hidden_states": True} if return_hidden_states else {}
    return get_model_class(config.architecture)(config, resolve_backend(backend), mesh, **extra)


def forward(
    params: dict,
    kv_cache: KVCache,
    batch: StepBatch,
    *,
    config: ModelConfig,
    backend: str | None = None,
    mesh=None,
) -> tuple[KVCache, jax.Array]:  # (kv_cache, logits [R, V] float32)
    """Un-jitted model step (call it inside your own jit)."""
    return build_model(config, backend, mesh).apply({"params": params}, kv_cache, batch)


def step_params(
    params: dict,
    mesh=None,
    platform: str | None = None,
    *,
    per_layer: bool = True,
    packed: bool | None = None,
) -> dict:
    """`params` in the layout the step runs fastest with on `platform` (None: JAX's default).

    On the CPU without tensor parallelism:
    - `per_layer`: unstacked per layer (`llama.unstack_layer_params`), so the step reads each
      layer's kernels in place instead of copying them out of the stacked arrays on every step
      (SmolLM2-135M f32, batch-16 decode on 2 cores: 170 -> 134 ms a step with XLA's dots;
      `jaxllm.benchmarks.cpu_step_profile`). Each step shape compiles slower (bench/RESULTS.md).
    - `packed` (None: `jaxllm.models.packed_params.use_packed_matmul`, i.e. float32 kernels,
      `cpu_ext` available, `JAXLLM_CPU_KERNELS` not "xla"): dense kernels packed into 16-column
      strips for `cpu_ext`'s AVX2 matmul (`packed_params.pack_dense_kernels`).
    Elsewhere (accelerators unroll the scan; tensor parallelism shards the stacked layout):
    unchanged. Params already in the wanted layout come back unchanged.
    """
    from jaxllm.models.llama import has_per_layer_params, unstack_layer_params
    from jaxllm.models.packed_params import is_packed, pack_dense_kernels, use_packed_matmul

    platform = platform or jax.default_backend()
    tp = 1 if mesh is None else int(dict(mesh.shape).get("model", 1))
    if platform != "cpu" or tp != 1 or not ("layers" in params or has_per_layer_params(params)):
        return params
    out = params
    if per_layer and not has_per_layer_params(out):
        out = unstack_layer_params(out)
    if packed is None:
        packed = use_packed_matmul(out)
    if packed and not is_packed(out):
        out = pack_dense_kernels(out)
    return out


def make_step(config: ModelConfig, backend: str | None = None, mesh=None) -> StepFn:
    """A jitted `step(params, kv_cache, batch) -> (kv_cache, logits)` with the cache donated.

    With a `mesh`, in/out shardings are fixed: params as `jaxllm.parallel.param_shardings`, the
    cache split by KV heads, the batch and the logits replicated. It compiles with the engine's
    XLA options (`jaxllm.engine.compiler_options`: `JAXLLM_COMPILER_OPTIONS`, else the platform's
    defaults, e.g. YNNPACK off on the CPU).
    """
    from jaxllm.engine.compiler_options import compiler_options_from_env

    model = build_model(config, backend, mesh)
    options = compiler_options_from_env() or None

    def step(params: dict, kv_cache: KVCache, batch: StepBatch):
        return model.apply({"params": params}, kv_cache, batch)

    if mesh is None:
        return jax.jit(step, donate_argnums=(1,), compiler_options=options)
    from jaxllm.parallel import kv_cache_sharding, param_shardings, replicated

    kv = kv_cache_sharding(mesh)
    return jax.jit(
        step,
        donate_argnums=(1,),
        in_shardings=(param_shardings(model.config, mesh), KVCache(kv, kv), replicated(mesh)),
        out_shardings=(KVCache(kv, kv), replicated(mesh)),
        compiler_options=options,
    )


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
    mesh=None,
    kv_dtype=None,
) -> list[np.ndarray]:
    """Logits [len_i, V] (float32) of every position of each sequence, through the paged step
    (with a KV cache of `kv_dtype`, default the model's).

    With a `mesh`, `params` must come from `jaxllm.parallel.shard_params` (config: the model's own).
    """
    batch, num_blocks = prefill_batch(token_ids, block_size)
    if mesh is None:
        cache = make_kv_cache(config, num_blocks, block_size, kv_dtype)
    else:
        from jaxllm.parallel import kv_cache_sharding, model_axis_size, tp_model_config

        cache = make_kv_cache(
            tp_model_config(config, model_axis_size(mesh)),
            num_blocks,
            block_size,
            kv_dtype,
            sharding=kv_cache_sharding(mesh),
        )
    _, logits = make_step(config, backend, mesh)(params, cache, batch)
    logits = np.asarray(logits)
    bounds = np.cumsum([0] + [len(t) for t in token_ids])
    return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
