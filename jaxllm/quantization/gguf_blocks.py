"""llama.cpp's GGUF block formats, kept packed: their byte layouts and a jnp dequantization.

A GGUF weight of N rows (output features) and K columns (input features) is N rows of K / B
blocks of `BLOCK_BYTES` bytes each (B = 32, or 256 for the K-quants), stored in numpy order
[N, row_bytes] as the file holds them. `dequantize_rows(blocks, ggml_type)` turns any [..., N,
row_bytes] uint8 array into [..., N, K] float32 inside a jitted function (the GPU path and the
oracle of cpu_ext's kernels); it is bit-equal to `gguf.quants.dequantize`.

Every scale is float16 stored little-endian; a block's elements, by type:
- q8_0: d, 32 x int8 q:            w = d * q
- q4_0: d, 16 bytes of nibbles:     w = d * (q - 8); element j is the low nibble of byte j,
  element j + 16 its high nibble
- q4_1: d, m, 16 bytes of nibbles:  w = d * q + m (nibbles as q4_0)
- q4_k: d, dmin, 12 bytes of eight 6-bit (scale, min) pairs, 128 bytes of nibbles: sub-block s of
  32 elements has w = d * scale_s * q - dmin * min_s; the low nibbles of bytes 32c..32c+31 are
  sub-block 2c, their high nibbles sub-block 2c + 1
- q6_k: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 x int8 scales, d: element e
  has w = d * scale_{e // 16} * (q - 32)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ggml type -> (elements per block, bytes per block): the types cpu_ext's kernel multiplies
from cpu_ext.quant_matmul import GGUF_BLOCKS as GGUF_BLOCKS


def row_bytes(ggml_type: str, k: int) -> int:
    """Bytes of one row of K elements (K must be a whole number of blocks)."""
    elems, nbytes = GGUF_BLOCKS[ggml_type]
    if k % elems:
        raise ValueError(
            f"{ggml_type}: a row of {k} elements is not a whole number of {elems}-element blocks"
        )
    return k // elems * nbytes


def row_elements(ggml_type: str, nbytes: int) -> int:
    """Elements of one row of `nbytes` bytes."""
    elems, block = GGUF_BLOCKS[ggml_type]
    if nbytes % block:
        raise ValueError(
            f"{ggml_type}: {nbytes} bytes is not a whole number of {block}-byte blocks"
        )
    return nbytes // block * elems


def _f16(b: jax.Array) -> jax.Array:  # [..., 2] uint8 -> [...] float32
    return jax.lax.bitcast_convert_type(b, jnp.float16).astype(jnp.float32)


def _nibbles(qs: jax.Array) -> tuple[jax.Array, jax.Array]:  # uint8 -> (low, high) as int32
    q = qs.astype(jnp.int32)
    return q & 0xF, q >> 4


def _q8_0(b: jax.Array) -> jax.Array:  # [..., 34] -> [..., 32]
    q = jax.lax.bitcast_convert_type(b[..., 2:], jnp.int8).astype(jnp.float32)
    return _f16(b[..., :2])[..., None] * q


def _q4_0(b: jax.Array) -> jax.Array:  # [..., 18] -> [..., 32]
    lo, hi = _nibbles(b[..., 2:])
    q = jnp.concatenate([lo, hi], axis=-1).astype(jnp.float32) - 8.0
    return _f16(b[..., :2])[..., None] * q


def _q4_1(b: jax.Array) -> jax.Array:  # [..., 20] -> [..., 32]
    lo, hi = _nibbles(b[..., 4:])
    q = jnp.concatenate([lo, hi], axis=-1).astype(jnp.float32)
    return _f16(b[..., :2])[..., None] * q + _f16(b[..., 2:4])[..., None]


def _q4_k(b: jax.Array) -> jax.Array:  # [..., 144] -> [..., 256]
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    s = b[..., 4:16].astype(jnp.int32)  # [..., 12]
    # sub-blocks 0-3: the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7: the
    # nibbles of bytes 8-11 with the top 2 bits of bytes 0-3 (scales) and 4-7 (mins) above them
    scale = jnp.concatenate(
        [s[..., 0:4] & 63, (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)], -1
    )
    mins = jnp.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], -1)
    lo, hi = _nibbles(b[..., 16:].reshape(*b.shape[:-1], 4, 32))  # [..., chunk, 32]
    q = jnp.stack([lo, hi], axis=-2).reshape(*b.shape[:-1], 8, 32).astype(jnp.float32)
    w = (d[..., None] * scale)[..., None] * q - (dmin[..., None] * mins)[..., None]
    return w.reshape(*b.shape[:-1], 256)


def _q6_k(b: jax.Array) -> jax.Array:  # [..., 210] -> [..., 256]
    lead = b.shape[:-1]
    ql = b[..., 0:128].astype(jnp.int32).reshape(*lead, 2, 2, 32)  # [half, low/high 32, l]
    qh = b[..., 128:192].astype(jnp.int32).reshape(*lead, 2, 32)  # [half, l]
    sc = jax.lax.bitcast_convert_type(b[..., 192:208], jnp.int8).astype(jnp.float32)
    d = _f16(b[..., 208:210])
    # quarter j of a half (elements 32j + l): nibble j // 2 of ql[j % 2] and bits 2j of qh
    quarters = [
        (((ql[..., j % 2, :] >> (4 * (j // 2))) & 0xF) | (((qh >> (2 * j)) & 3) << 4)) - 32
        for j in range(4)
    ]
    q = jnp.stack(quarters, axis=-2).reshape(*lead, 256).astype(jnp.float32)
    scale = jnp.repeat(d[..., None] * sc, 16, axis=-1)  # [..., 256]: element e's scale e // 16
    return scale * q


_DEQUANTIZE = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1, "q4_k": _q4_k, "q6_k": _q6_k}


def dequantize_rows(blocks: jax.Array, ggml_type: str) -> jax.Array:
    """[..., N, row_bytes] uint8 blocks -> [..., N, K] float32."""
    elems, nbytes = GGUF_BLOCKS[ggml_type]
    lead = blocks.shape[:-1]
    b = blocks.reshape(*lead, blocks.shape[-1] // nbytes, nbytes)
    return _DEQUANTIZE[ggml_type](b).reshape(*lead, row_elements(ggml_type, blocks.shape[-1]))
