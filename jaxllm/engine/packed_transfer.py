"""One host->device copy per dtype for a step's many small input arrays.

A step's inputs are ~20 small numpy arrays (token ids, positions, slot mapping, block tables,
sampling parameters, ...). `jax.device_put` of such a pytree copies each leaf on its own, which on
an H100 costs ~1.3 ms for a batch-1 decode step: a fifth of the step. `pack` concatenates the
leaves of each dtype into one flat buffer on the host; `unpack`, traced inside the jitted step,
slices them back out. The `PackedLayout` (tree structure, shapes, dtypes, offsets) is static: pass
it as a static jit argument, so each distinct layout is one compiled variant, exactly as each
distinct set of shapes was before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np


@dataclass(frozen=True)
class PackedLayout:
    treedef: Any  # jax.tree_util.PyTreeDef of the packed pytree
    dtypes: tuple[str, ...]  # the buffers' dtypes, in buffer order
    # per leaf: (buffer index, offset into that buffer, shape)
    leaves: tuple[tuple[int, int, tuple[int, ...]], ...]

    def buffer_sizes(self) -> tuple[int, ...]:
        """Elements in each buffer, in buffer order (for abstract inputs when compiling ahead)."""
        sizes = [0] * len(self.dtypes)
        for b, offset, shape in self.leaves:
            sizes[b] = max(sizes[b], offset + int(np.prod(shape, dtype=np.int64)))
        return tuple(sizes)


def pack(tree: Any) -> tuple[tuple[np.ndarray, ...], PackedLayout]:
    """Host side: numpy leaves (or Python scalars) -> one 1-D buffer per dtype and the layout.

    Leaves that are not arrays or scalars (None) stay part of the tree structure.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    order: dict[str, int] = {}
    parts: list[list[np.ndarray]] = []
    sizes: list[int] = []
    spec = []
    for leaf in leaves:
        a = np.asarray(leaf)
        key = a.dtype.str
        if key not in order:
            order[key] = len(parts)
            parts.append([])
            sizes.append(0)
        b = order[key]
        spec.append((b, sizes[b], tuple(a.shape)))
        parts[b].append(a.reshape(-1))
        sizes[b] += a.size
    buffers = tuple(np.concatenate(p) if len(p) > 1 else np.ascontiguousarray(p[0]) for p in parts)
    dtypes = tuple(sorted(order, key=order.__getitem__))
    return buffers, PackedLayout(treedef, dtypes, tuple(spec))


def unpack(buffers: tuple[jax.Array, ...], layout: PackedLayout) -> Any:
    """Device side (inside jit): the buffers from `pack` -> the original pytree of arrays."""
    if len(buffers) != len(layout.dtypes):
        raise ValueError(f"expected {len(layout.dtypes)} buffers, got {len(buffers)}")
    leaves = []
    for b, offset, shape in layout.leaves:
        size = int(np.prod(shape, dtype=np.int64))
        leaves.append(jax.lax.slice(buffers[b], (offset,), (offset + size,)).reshape(shape))
    return jax.tree_util.tree_unflatten(layout.treedef, leaves)


def unpack_numpy(buffers: tuple[np.ndarray, ...], layout: PackedLayout) -> Any:
    """The same as `unpack` on host arrays (for tests and debugging)."""
    leaves = []
    for b, offset, shape in layout.leaves:
        size = int(np.prod(shape, dtype=np.int64))
        leaves.append(np.asarray(buffers[b][offset : offset + size]).reshape(shape))
    return jax.tree_util.tree_unflatten(layout.treedef, leaves)
