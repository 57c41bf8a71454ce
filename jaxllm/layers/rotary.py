"""Rotary position embeddings (HF's rotate-half convention), with Llama 3 and linear scaling."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import RopeScaling


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] in float32, as HF computes them."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    if scaling is None or scaling.rope_type == "default":
        return inv
    if scaling.rope_type == "linear":
        return (inv / scaling.factor).astype(np.float32)
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(
    positions: jax.Array,  # [T] int32
    inv_freq: np.ndarray,  # [D // 2]
) -> tuple[jax.Array, jax.Array]:  # cos, sin: [T, D // 2] float32
    freqs = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
    return jnp.cos(freqs), jnp.sin(freqs)


def apply_rotary(
    x: jax.Array,  # [T, H, D]
    cos: jax.Array,  # [T, D // 2] float32
    sin: jax.Array,  # [T, D // 2] float32
) -> jax.Array:  # [T, H, D]
    """x * cos + rotate_half(x) * sin, in x's dtype (as HF does)."""
    half = x.shape[-1] // 2
    c = jnp.concatenate([cos, cos], axis=-1)[:, None, :].astype(x.dtype)
    s = jnp.concatenate([sin, sin], axis=-1)[:, None, :].astype(x.dtype)
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * c + rotated * s
