"""KV block copies the scheduler asks for before a step: swap out, swap in, copy-on-write.

Every leaf of the KV cache pytree (K and V) is [L, num_blocks, Hkv, block_size, D]; a block is
one index of axis 1 in every leaf. The host pool keeps the same layout in numpy,
[L, num_host_blocks, Hkv, block_size, D] per leaf, allocated at the first swap-out.

`KVBlockMover.apply(kv_cache, sched)` runs, in this order (the scheduler relies on it):
  1. device -> host: one jitted gather of the swapped-out blocks, one `device_get`;
  2. host -> device: one jitted scatter of the swapped-in blocks (the cache is donated);
  3. device -> device: one jitted copy for copy-on-write (src, dst) pairs (the cache is donated).
Block-id lists are padded to powers of two with the null block 0 (whose contents nothing reads),
so each op compiles once per size bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxllm.engine.buckets import next_power_of_two
from jaxllm.kv_cache.swap_pool import num_host_blocks
from jaxllm.scheduler.output import SchedulerOutput

KVCachePytree = Any  # a pytree (e.g. jaxllm.models.batch.KVCache) of [L, N, Hkv, bs, D] arrays


def _gather(cache, ids):  # ids [B] int32 -> leaves [L, B, Hkv, bs, D]
    return jax.tree.map(lambda a: a[:, ids], cache)


def _scatter(cache, ids, blocks):  # ids [B], blocks: leaves [L, B, Hkv, bs, D]
    return jax.tree.map(lambda a, b: a.at[:, ids].set(b.astype(a.dtype)), cache, blocks)


def _copy(cache, src, dst):  # src, dst [B] int32
    return jax.tree.map(lambda a: a.at[:, dst].set(a[:, src]), cache)


def _padded(ids: Sequence[int]) -> np.ndarray:
    out = np.zeros(next_power_of_two(len(ids)), np.int32)
    out[: len(ids)] = ids
    return out


class KVBlockMover:
    """Owns the host swap space of one KV cache and does the scheduler's block copies.

    Args:
        kv_cache: the device KV cache (its shapes, dtypes and shardings are taken from it).
        swap_space_gib: host memory for swapped-out blocks (0: no swap space).
    """

    def __init__(self, kv_cache: KVCachePytree, swap_space_gib: float) -> None:
        leaves = jax.tree.leaves(kv_cache)
        if not leaves:
            raise ValueError("the KV cache has no arrays")
        self._leaf_shapes = [a.shape for a in leaves]
        self._leaf_dtypes = [np.dtype(a.dtype) for a in leaves]
        per_block = sum(
            int(np.prod(s[:1] + s[2:])) * d.itemsize
            for s, d in zip(self._leaf_shapes, self._leaf_dtypes)
        )
        self.bytes_per_block = per_block
        self.num_host_blocks = num_host_blocks(swap_space_gib, per_block)
        self._host: list[np.ndarray] | None = None  # per leaf [L, H, Hkv, bs, D]
        shardings = jax.tree.map(lambda a: a.sharding, kv_cache)
        self._gather = jax.jit(_gather)
        self._scatter = jax.jit(_scatter, donate_argnums=(0,), out_shardings=shardings)
        self._copy = jax.jit(_copy, donate_argnums=(0,), out_shardings=shardings)
        self.num_swapped_out_blocks = 0
        self.num_swapped_in_blocks = 0
        self.num_copied_blocks = 0

    def _host_arrays(self) -> list[np.ndarray]:
        if self._host is None:
            self._host = [
                np.empty(s[:1] + (self.num_host_blocks,) + s[2:], d)
                for s, d in zip(self._leaf_shapes, self._leaf_dtypes)
            ]
        return self._host

    def apply(self, kv_cache: KVCachePytree, sched: SchedulerOutput) -> KVCachePytree:
        """Do the step's swap-outs, swap-ins and copies; returns the (new) cache."""
        if sched.blocks_to_swap_out:
            self.swap_out(kv_cache, sched.blocks_to_swap_out)
        if sched.blocks_to_swap_in:
            kv_cache = self.swap_in(kv_cache, sched.blocks_to_swap_in)
        if sched.blocks_to_copy:
            kv_cache = self.copy(kv_cache, sched.blocks_to_copy)
        return kv_cache

    def _check(self, pairs: Sequence[tuple[int, int]], n_src: int, n_dst: int, what: str) -> None:
        for src, dst in pairs:
            if not (0 <= src < n_src and 0 <= dst < n_dst):
                raise ValueError(f"{what}: block pair ({src}, {dst}) is out of range")

    def swap_out(self, kv_cache: KVCachePytree, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy device blocks to host blocks: pairs of (device id, host id)."""
        n_dev = self._leaf_shapes[0][1]
        self._check(pairs, n_dev, self.num_host_blocks, "swap out")
        src = [p[0] for p in pairs]
        dst = np.asarray([p[1] for p in pairs], np.int64)
        got = jax.device_get(jax.tree.leaves(self._gather(kv_cache, _padded(src))))
        for host, blocks in zip(self._host_arrays(), got):
            host[:, dst] = blocks[:, : len(pairs)]
        self.num_swapped_out_blocks += len(pairs)

    def swap_in(self, kv_cache: KVCachePytree, pairs: Sequence[tuple[int, int]]) -> KVCachePytree:
        """Copy host blocks back into device blocks: pairs of (host id, device id)."""
        n_dev = self._leaf_shapes[0][1]
        self._check(pairs, self.num_host_blocks, n_dev, "swap in")
        src = np.asarray([p[0] for p in pairs], np.int64)
        dst = _padded([p[1] for p in pairs])
        width = len(dst)
        blocks = []
        for host in self._host_arrays():
            b = np.zeros(host.shape[:1] + (width,) + host.shape[2:], host.dtype)
            b[:, : len(pairs)] = host[:, src]
            blocks.append(b)
        treedef = jax.tree.structure(kv_cache)
        self.num_swapped_in_blocks += len(pairs)
        return self._scatter(kv_cache, dst, jax.tree.unflatten(treedef, blocks))

    def copy(self, kv_cache: KVCachePytree, pairs: Sequence[tuple[int, int]]) -> KVCachePytree:
        """Device block -> device block copies (copy-on-write): pairs of (src id, dst id)."""
        n_dev = self._leaf_shapes[0][1]
        self._check(pairs, n_dev, n_dev, "copy")
        if len({d for _, d in pairs}) != len(pairs):
            raise ValueError(f"copy: a destination block appears twice in {list(pairs)}")
        src = _padded([p[0] for p in pairs])
        dst = _padded([p[1] for p in pairs])
        self.num_copied_blocks += len(pairs)
        return self._copy(kv_cache, src, dst)
