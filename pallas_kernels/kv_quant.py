"""Quantized KV pages: float8 e4m3 with per-tensor scales (vLLM's `kv_cache_dtype="fp8"`).

A quantized cache stores `K / k_scale` and `V / v_scale`, clamped to e4m3's finite range (+-448)
and rounded to `float8_e4m3fn`; every backend reads a page as `float32(page) * scale`. The scales
are static Python floats (1.0 unless a checkpoint provides calibrated ones). Caches of the float
dtypes hold K and V themselves and ignore the scales.

Storage: XLA (the CPU's at least) has no float8 gather or scatter; it wraps one in converts of
the whole operand, i.e. of the entire stacked cache, every layer. So every backend touches
quantized pages only as their bytes: uint8 views (`to_storage`, `gather_pages`, `scatter_rows`,
and the kernels, which take the bytes and reinterpret them after their loads). The engine keeps
the cache as uint8 between steps and views it as float8 inside the step (`from_storage`); each
view there meets its inverse in the next consumer and XLA drops the pair, so nothing is copied.
A float8 array that crosses a jit boundary and is then viewed as bytes is copied once (a
bitcast-convert is a loop on XLA:CPU).

This file imports only JAX.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

# Page dtypes stored quantized (numpy names); the backends accept them with any query dtype.
QUANTIZED_KV_DTYPES = ("float8_e4m3fn",)
FP8_E4M3_MAX = float(jnp.finfo(jnp.float8_e4m3fn).max)  # 448: e4m3fn has no infinities


def is_quantized(dtype) -> bool:
    """Is `dtype` (of a page array) one of QUANTIZED_KV_DTYPES?"""
    return jnp.dtype(dtype).name in QUANTIZED_KV_DTYPES


def check_scale(name: str, value) -> None:
    """A KV scale must be a positive, finite Python float (it is static: part of the compiled
    step, never traced)."""
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")


def storage_dtype(dtype):
    """The dtype a cache of `dtype` is kept in between steps: uint8 for quantized dtypes."""
    return jnp.dtype(jnp.uint8) if is_quantized(dtype) else jnp.dtype(dtype)


def to_storage(x: jax.Array) -> jax.Array:
    """A quantized array as uint8 (the same bytes); other arrays unchanged."""
    return jax.lax.bitcast_convert_type(x, jnp.uint8) if is_quantized(x.dtype) else x


def from_storage(x: jax.Array, dtype) -> jax.Array:
    """The inverse of `to_storage`: uint8 bytes viewed as the quantized `dtype`; arrays of other
    dtypes unchanged."""
    if is_quantized(dtype) and x.dtype == jnp.uint8:
        return jax.lax.bitcast_convert_type(x, dtype)
    return x


def gather_pages(pages: jax.Array, layer, blocks: jax.Array) -> jax.Array:
    """`pages[layer, blocks]` ([*blocks.shape, Hkv, bs, D], pages' dtype) of the stacked cache
    [L, N, Hkv, bs, D]; quantized pages are indexed as their bytes."""
    x = jax.lax.dynamic_index_in_dim(to_storage(pages), layer, axis=0, keepdims=False)[blocks]
    return jax.lax.bitcast_convert_type(x, pages.dtype) if is_quantized(pages.dtype) else x


def scatter_rows(pages: jax.Array, index: tuple, rows: jax.Array) -> jax.Array:
    """`pages.at[index].set(rows, mode="drop")` with `rows` already in pages' dtype; quantized
    pages are updated as their bytes."""
    if not is_quantized(pages.dtype):
        return pages.at[index].set(rows, mode="drop")
    out = to_storage(pages).at[index].set(to_storage(rows), mode="drop")
    return jax.lax.bitcast_convert_type(out, pages.dtype)


def quantize(x: jax.Array, dtype, scale: float) -> jax.Array:
    """`x` as pages of `dtype`: divided by `scale`, clamped to the finite range and cast when
    `dtype` is quantized (the cast would turn anything past +-448 into NaN); a plain cast
    otherwise."""
    if not is_quantized(dtype):
        return x.astype(dtype)
    y = x.astype(jnp.float32)
    if scale != 1.0:
        y = y / jnp.float32(scale)
    return jnp.clip(y, -FP8_E4M3_MAX, FP8_E4M3_MAX).astype(dtype)


def dequantize(pages: jax.Array, scale: float) -> jax.Array:
    """Pages as float32: times `scale` when quantized, a plain cast otherwise."""
    y = pages.astype(jnp.float32)
    if is_quantized(pages.dtype) and scale != 1.0:
        y = y * jnp.float32(scale)
    return y


def score_scale(sm_scale: float, k_pages, k_scale: float) -> float:
    """The softmax scale with `k_scale` folded in when `k_pages` is quantized: `q . (k * s)` is
    `(q . k) * s`, so a kernel can multiply its scores once instead of every key."""
    return sm_scale * k_scale if is_quantized(k_pages.dtype) else sm_scale


def output_scale(v_pages, v_scale: float) -> float:
    """What a kernel multiplies its (linear in V) output by: `v_scale` when `v_pages` is
    quantized, else 1."""
    return v_scale if is_quantized(v_pages.dtype) else 1.0
