"""`ParamSpec`: one leaf of a model's parameter pytree, as the model's layout declares it.

A model module's `param_layout(config)` returns one ParamSpec per leaf; the loaders fill the
leaves from checkpoints by `hf_name`, and jaxllm.parallel shards them by the model's logical axes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    """One leaf of the parameter pytree and where it comes from in an HF checkpoint."""

    path: tuple[str, ...]  # keys into the params dict
    # HF tensor name; contains "{i}" for per-layer tensors and "{e}" for per-expert ones
    hf_name: str
    # jaxllm shape: leading L for per-layer tensors, then E for per-expert ones
    shape: tuple[int, ...]
    transpose: bool  # True for linear kernels: jaxllm [in, out] = HF [out, in].T
    # rows [start, stop) of the HF tensor, for leaves cut from a fused tensor (Phi-3's qkv_proj)
    hf_rows: tuple[int, int] | None = None

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf_name

    @property
    def per_expert(self) -> bool:
        """One HF tensor per expert, stacked on the axis after L (a MoE layer's experts)."""
        return "{e}" in self.hf_name

    @property
    def num_stacked_axes(self) -> int:
        return int(self.stacked) + int(self.per_expert)

    @property
    def hf_shape(self) -> tuple[int, ...]:
        """Shape of the HF rows this leaf reads (one layer's, one expert's)."""
        shape = self.shape[self.num_stacked_axes :]
        return tuple(reversed(shape)) if self.transpose else shape

    def hf_tensors(self) -> list[tuple[tuple[int, ...], str]]:
        """(index into the leaf's stacked axes, HF tensor name) of every tensor the leaf reads,
        in order; the index is () for a leaf of one tensor."""
        counts = self.shape[: self.num_stacked_axes]
        out = []
        for index in itertools.product(*(range(n) for n in counts)):
            keys = dict(zip(("i", "e")[int(not self.stacked) :], index))
            out.append((index, self.hf_name.format(**keys)))
        return out


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    """tree[path[0]][path[1]]... = value, creating the inner dicts."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
