"""`ParamSpec`: one leaf of a model's parameter pytree, as the model's layout declares it.

A model module's `param_layout(config)` returns one ParamSpec per leaf; the loaders fill the
leaves from checkpoints by `hf_name`, and jaxllm.parallel shards them by the model's logical axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    """One leaf of the parameter pytree and where it comes from in an HF checkpoint."""

    path: tuple[str, ...]  # keys into the params dict
    hf_name: str  # HF tensor name; contains "{i}" for per-layer tensors
    shape: tuple[int, ...]  # jaxllm shape (with the leading L for per-layer tensors)
    transpose: bool  # True for linear kernels: jaxllm [in, out] = HF [out, in].T
    # rows [start, stop) of the HF tensor, for leaves cut from a fused tensor (Phi-3's qkv_proj)
    hf_rows: tuple[int, int] | None = None

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf_name

    @property
    def hf_shape(self) -> tuple[int, ...]:
        """Shape of the HF rows this leaf reads (one layer for stacked leaves)."""
        shape = self.shape[1:] if self.stacked else self.shape
        return tuple(reversed(shape)) if self.transpose else shape


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    """tree[path[0]][path[1]]... = value, creating the inner dicts."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
