"""Rotary position embeddings (HF's rotate-half convention), with HF's rope scalings.

`rotary_cos_sin` gives the cos/sin a step's tokens rotate by; `apply_rotary` rotates q or k with
them (the leading `rotary_dim` dims of each head where the rotation is partial). Frequencies are
computed with transformers' float32 operations in its order, on the host where they are constants,
so they equal its rotary embedding modules' bit for bit; dynamic NTK's grown ones are computed on
the device and agree to an ulp or two.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import RopeScaling

# types whose frequencies depend on the sequence's length, so rotary_cos_sin picks them per token
LENGTH_DEPENDENT_ROPE_TYPES = ("dynamic",)


def rotary_cos_sin(
    positions: jax.Array,  # [T] int32
    seq_lens: jax.Array,  # [T] int32: the context length (kv_len) of each token's sequence
    *,
    rotary_dim: int,
    theta: float,
    scaling: RopeScaling | None,
    max_position_embeddings: int,
) -> tuple[jax.Array, jax.Array]:  # cos, sin: [T, rotary_dim // 2] float32
    """cos/sin of each token's angles, times the scaling's attention factor (yarn, longrope).

    dynamic uses the frequencies transformers computes for a sequence of length `seq_lens[t]`
    (its base grown past `max_position_embeddings`); the other types ignore `seq_lens`. longrope
    rotates with the factor list its `use_long_factor` names, the same at every length.
    """
    rtype = "default" if scaling is None else scaling.rope_type
    if scaling is None or rtype not in LENGTH_DEPENDENT_ROPE_TYPES:
        inv = jnp.asarray(_static_inv_freq(rotary_dim, theta, scaling))[None, :]  # [1, D/2]
    elif rtype == "dynamic":
        inv = _dynamic_inv_freq(
            seq_lens, rotary_dim, theta, scaling.factor, max_position_embeddings
        )
    freqs = positions.astype(jnp.float32)[:, None] * inv  # [T, D/2]
    cos, sin = jnp.cos(freqs), jnp.sin(freqs)
    if scaling is not None and scaling.attention_factor != 1.0:
        attention = jnp.float32(scaling.attention_factor)
        cos, sin = cos * attention, sin * attention
    return cos, sin


def apply_rotary(
    x: jax.Array,  # [T, H, D]
    cos: jax.Array,  # [T, R // 2] float32, R = rotary width <= D
    sin: jax.Array,  # [T, R // 2] float32
) -> jax.Array:  # [T, H, D]
    """x * cos + rotate_half(x) * sin on the leading R dims of each head (the rest pass through
    unchanged: partial rotary, as HF's Phi-3), in x's dtype (as HF does)."""
    rot = 2 * cos.shape[-1]
    if rot < x.shape[-1]:
        return jnp.concatenate([apply_rotary(x[..., :rot], cos, sin), x[..., rot:]], axis=-1)
    half = rot // 2
    c = jnp.concatenate([cos, cos], axis=-1)[:, None, :].astype(x.dtype)
    s = jnp.concatenate([sin, sin], axis=-1)[:, None, :].astype(x.dtype)
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * c + rotated * s


def _exponents(dim: int) -> np.ndarray:  # [dim // 2] float32: 2i / dim
    return np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)


def _theta_pow(dim: int, theta: float) -> np.ndarray:  # [dim // 2] float32: theta ** (2i / dim)
    """Rounded from float64: torch's float32 pow is almost always the correctly rounded power,
    numpy's float32 pow is off by an ulp in places (which shows as 1e-6 in cos at position 100)."""
    exps = _exponents(dim).astype(np.float64)
    return (np.float64(np.float32(theta)) ** exps).astype(np.float32)


def _plain_inv_freq(dim: int, theta: float) -> np.ndarray:  # [dim // 2] float32
    return np.float32(1.0) / _theta_pow(dim, theta)


def _static_inv_freq(dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """[dim // 2] float32 frequencies of every type but dynamic."""
    inv = _plain_inv_freq(dim, theta)
    if scaling is None or scaling.rope_type == "default":
        return inv
    if scaling.rope_type == "longrope":
        factors = scaling.long_factor if scaling.use_long_factor else scaling.short_factor
        return _longrope_inv_freq(dim, theta, factors)
    if scaling.rope_type == "linear":
        return (inv / np.float32(scaling.factor)).astype(np.float32)
    if scaling.rope_type == "yarn":
        return _yarn_inv_freq(dim, theta, scaling)
    if scaling.rope_type != "llama3":
        raise ValueError(f"rope type {scaling.rope_type!r} depends on the sequence length")
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = _rdiv(2 * math.pi, inv)
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (_rdiv(old_len, wavelen) - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _rdiv(a: float, x: np.ndarray) -> np.ndarray:
    """a / x the way torch computes `scalar / tensor`: reciprocal(x) * a, two float32 roundings."""
    return (np.float32(1.0) / x) * np.float32(a)


def _yarn_inv_freq(dim: int, theta: float, s: RopeScaling) -> np.ndarray:
    """YaRN: interpolated (/ factor) frequencies for dims turning fewer than `beta_slow` times over
    the pretraining length, the plain ones above `beta_fast` turns, a linear ramp between."""

    def turns_dim(turns: float) -> float:  # the (fractional) dim turning `turns` times
        length = s.original_max_position_embeddings
        return dim * math.log(length / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = turns_dim(s.beta_fast), turns_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a ramp of no width would divide by zero
    pos_freqs = _theta_pow(dim, theta)
    extrapolation = np.float32(1.0) / pos_freqs
    interpolation = np.float32(1.0) / (np.float32(s.factor) * pos_freqs)
    ramp = (np.arange(dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    keep = np.float32(1.0) - np.clip(ramp, 0, 1)  # share of the plain frequency
    return (interpolation * (1 - keep) + extrapolation * keep).astype(np.float32)


def _longrope_inv_freq(dim: int, theta: float, factors: tuple[float, ...]) -> np.ndarray:
    """LongRoPE: each plain frequency divided by its own factor ([dim // 2] float32)."""
    if len(factors) != dim // 2:
        raise ValueError(
            f"longrope needs {dim // 2} factors for rotary dim {dim}, got {len(factors)}"
        )
    ext = np.asarray(factors, dtype=np.float32)
    return (np.float32(1.0) / (ext * _theta_pow(dim, theta))).astype(np.float32)


def _dynamic_inv_freq(
    seq_lens: jax.Array,  # [T] int32
    dim: int,
    theta: float,
    factor: float,
    max_position_embeddings: int,
) -> jax.Array:  # [T, dim // 2] float32
    """Dynamic NTK: past `max_position_embeddings` the base grows to
    theta * (factor * L / max - (factor - 1)) ** (dim / (dim - 2)) for a sequence of length L,
    in float32 as transformers computes it (XLA may round an op an ulp otherwise); plain
    frequencies up to it."""
    # clamped as transformers does: shorter sequences take the plain frequencies below anyway,
    # and the clamp keeps the ratio >= 1 (no NaN from a negative power in the unused branch)
    length = jnp.maximum(seq_lens, max_position_embeddings).astype(jnp.float32)
    ratio = jnp.float32(factor) * length / jnp.float32(max_position_embeddings)
    ratio = ratio - jnp.float32(factor - 1)
    base = jnp.float32(theta) * ratio ** jnp.float32(dim / (dim - 2))  # [T]
    powers = base[:, None] ** jnp.asarray(_exponents(dim))[None, :]  # [T, dim // 2]
    grown = jnp.float32(1.0) / powers
    plain = jnp.asarray(_plain_inv_freq(dim, theta))[None, :]
    return jnp.where((seq_lens > max_position_embeddings)[:, None], grown, plain)
