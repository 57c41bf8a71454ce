"""RMSNorm as HF computes it: Llama's (float32, cast back before the scale) and Gemma's (1 + w)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def _normalized(x32: jax.Array, eps: float) -> jax.Array:  # [..., D] float32 -> same
    """x / rms(x) over the last axis, in float32."""
    var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
    return x32 * jax.lax.rsqrt(var + eps)


class RMSNorm(nn.Module):
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        return scale * _normalized(x.astype(jnp.float32), self.eps).astype(x.dtype)


class GemmaRMSNorm(nn.Module):
    """Gemma's RMSNorm: scaled by (1 + w), in float32, cast back after the scale (as HF's
    Gemma3RMSNorm; checkpoints store w, which initializes to zero)."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
        scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],), self.dtype)
        normed = _normalized(x.astype(jnp.float32), self.eps)
        return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
