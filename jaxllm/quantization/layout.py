"""The quantized parameter layout: which leaves a `QuantizationConfig` puts in place of float
ones, and quantizing a float params tree into it.

The model's layout (jaxllm.models.layout) declares float leaves; a quantized model replaces each
leaf listed in `QuantizationConfig.formats` by its format's leaves (formats.py), with the same
leading stacked-layer axes and logical axes derived from the float leaf's.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxllm.config import QuantizationConfig
from jaxllm.quantization.formats import EMBEDDING, KERNEL, WeightFormat, get_format

Path = tuple[str, ...]


def _split(path: Path, shape: tuple[int, ...], fmt: WeightFormat) -> tuple[int, int, str]:
    """(k, n, base) of a float leaf: k the width each output is summed over."""
    if path[-1] == KERNEL:  # [..., in, out]
        return shape[-2], shape[-1], KERNEL
    if path[-1] == EMBEDDING and fmt.name not in ("int8", "fp8"):  # [V, D]: rows of D
        return shape[-1], shape[-2], EMBEDDING
    raise ValueError(f"{'/'.join(path)}: format {fmt.name} cannot store this leaf")


def quantized_leaves(
    path: Path, shape: tuple[int, ...], axes: tuple[str, ...] | None, fmt_name: str
) -> list[tuple[Path, tuple[int, ...], Any, tuple[str, ...] | None]]:
    """The leaves (path, shape, dtype, logical axes or None) that replace float leaf `path` of
    `shape` (logical `axes`) stored in format `fmt_name`."""
    fmt = get_format(fmt_name)
    k, n, base = _split(path, shape, fmt)
    lead, lead_axes = shape[:-2], (axes[:-2] if axes else ())
    if base == KERNEL:
        in_axis, out_axis = (axes[-2], axes[-1]) if axes else ("", "")
        leaves, leaf_axes = fmt.leaves(k, n), fmt.leaf_axes(in_axis, out_axis)
    else:  # an embedding [V, D] is stored [V, row_bytes]: named after its base
        ((name, spec),) = fmt.leaves(k, n).items()
        leaves = {fmt.data_leaf(EMBEDDING): spec}
        leaf_axes = {fmt.data_leaf(EMBEDDING): tuple(axes) if axes else ("", "")}
    out = []
    for name, (leaf_shape, dtype) in leaves.items():
        la = (tuple(lead_axes) + leaf_axes[name]) if axes else None
        out.append((path[:-1] + (name,), tuple(lead) + tuple(leaf_shape), dtype, la))
    return out


def check_tensor_parallel(qconfig: QuantizationConfig, shapes: dict, sharded_in: set, tp: int):
    """Raise a ValueError where a stored format cannot split its input width over tp devices.

    `shapes`: float leaf path -> shape; `sharded_in`: the paths whose input axis tp splits."""
    for path, fmt_name in qconfig.formats:
        if path in sharded_in and tp > 1:
            fmt = get_format(fmt_name)
            k = shapes[path][-2] if path[-1] == KERNEL else shapes[path][-1]
            fmt.check_split(k, tp, "/".join(path))


def quantize_params(params: dict, qconfig: QuantizationConfig) -> dict:
    """A float params tree (the model's layout) in the layout `qconfig` describes: each listed
    leaf is quantized on its device (one leaf at a time, the float leaf dropped after)."""
    out = jax.tree.map(lambda a: a, params)  # a copy of the dict structure
    for path, fmt_name in qconfig.formats:
        fmt = get_format(fmt_name)
        parent = out
        for key in path[:-1]:
            parent = parent[key]
        if path[-1] not in parent:
            raise ValueError(f"quantization: the params have no leaf {'/'.join(path)}")
        if path[-1] == EMBEDDING:
            rows = fmt.quantize(parent[path[-1]].T)  # [D, V] -> blocks of V rows of D
            parent.update({fmt.data_leaf(EMBEDDING): next(iter(rows.values()))})
        else:
            parent.update(fmt.quantize(parent[path[-1]]))
        del parent[path[-1]]
    return out


def weight_only_config(method: str, kernel_paths: list[Path]) -> QuantizationConfig:
    """Every kernel of `kernel_paths` stored in `method`'s format (int8, fp8)."""
    get_format(method)
    return QuantizationConfig(method, tuple((tuple(p), method) for p in kernel_paths))


def dequantize_params(params: dict, qconfig: QuantizationConfig, dtype: Any = None) -> dict:
    """The float params tree of quantized `params` (the inverse of `quantize_params` up to the
    quantization error; GGUF blocks come back exactly as the gguf package dequantizes them), in
    `dtype` (default float32)."""
    import jax.numpy as jnp

    dt = jnp.dtype(dtype or jnp.float32)
    out = jax.tree.map(lambda a: a, params)
    for path, fmt_name in qconfig.formats:
        fmt = get_format(fmt_name)
        parent = out
        for key in path[:-1]:
            parent = parent[key]
        base = path[-1]
        data = fmt.data_leaf(base)
        leaves = {fmt.data_leaf(): parent.pop(data)}
        if "kernel_scale" in parent and base == KERNEL:
            leaves["kernel_scale"] = parent.pop("kernel_scale")
        w = fmt.dequantize(leaves)
        parent[base] = (w.T if base == EMBEDDING else w).astype(dt)
    return out
