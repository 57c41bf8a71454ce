"""Vocabulary-parallel embedding lookup: each device reads its own rows, one all-reduce sums them.

The embedding table [V, D] is split by vocabulary over 'model' (jaxllm.parallel.sharding_rules).
Left to XLA's partitioner, a plain `jnp.take(table, ids)` is not always partitioned in place: on the
GPU a one-token step (batch-1 decode) turns the gather into a dynamic-slice, which the partitioner
serves by all-gathering the whole table (Llama-3-8B at tp = 2: a 1 GiB all-gather every decode step,
seen in the H100 HLO of `jaxllm.benchmarks.tp_hlo_probe`). Here the lookup runs under `shard_map`:
device d owns rows [d * V/tp, (d+1) * V/tp), looks up the ids that fall there (zeros for the others)
and a psum over 'model' adds the tp partial rows (exactly one non-zero each), so only [T, D] crosses
the link, whatever T is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

# the mesh axis name from attention.py, so that models (which use this layer) need not import
# jaxllm.parallel, which reads their parameter layouts
from jaxllm.layers.attention import MODEL_AXIS


def _local_lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    """One device: table [V/tp, D] (its vocabulary slice), ids [T] (global) -> [T, D] summed."""
    rows = table.shape[0]
    local = ids - jax.lax.axis_index(MODEL_AXIS) * rows
    mine = (local >= 0) & (local < rows)
    out = jnp.take(table, jnp.where(mine, local, 0), axis=0)  # [T, D]
    out = jnp.where(mine[:, None], out, jnp.zeros((), out.dtype))
    return jax.lax.psum(out, MODEL_AXIS)


def vocab_parallel_embed(table: jax.Array, ids: jax.Array, mesh=None) -> jax.Array:
    """`jnp.take(table, ids, axis=0)` ([V, D], [T] -> [T, D]) with the table split by vocabulary
    over `mesh`'s 'model' axis. Without a mesh, with one device on 'model', or when 'model' does
    not divide V (the rules table then replicates the table), the plain lookup."""
    tp = 1 if mesh is None else int(mesh.shape[MODEL_AXIS])
    if tp == 1 or table.shape[0] % tp:
        return jnp.take(table, ids, axis=0)
    return jax.shard_map(
        _local_lookup,
        mesh=mesh,
        in_specs=(P(MODEL_AXIS, None), P()),
        out_specs=P(),
    )(table, ids)
