"""`x @ W` on XLA:CPU with W packed into 16-column strips: the FFI kernel of csrc/packed_matmul.cc.

    w_packed = pack_kernel(w)                 # [K, N] -> [ceil(N / 16), K, 16], once, at load
    y = packed_matmul(x, w_packed, n=N)       # x [..., K] f32 -> y [..., N] f32, inside any jit

Each strip of 16 output columns is one contiguous run of K x 16 floats, which the kernel streams
through AVX2 FMAs with 4 rows of x at a time; work is spread over XLA's intra-op thread pool.
float32 only. `reference_matmul` is the oracle the tests compare against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

STRIP = 16  # output columns per packed strip (the kernel's kStrip)


def packed_shape(k: int, n: int) -> tuple[int, int, int]:
    """The packed shape of a [k, n] kernel."""
    return (-(-n // STRIP), k, STRIP)


def pack_kernel(w):  # [K, N] -> [S, K, 16] with S = ceil(N / 16), same array kind as `w`
    """W [K, N] -> strips [S, K, 16], `out[s, k, j] = W[k, 16 s + j]`, zero past column N."""
    xp = np if isinstance(w, np.ndarray) else jnp
    if w.ndim != 2:
        raise ValueError(f"pack_kernel: w must be [K, N], got shape {tuple(w.shape)}")
    k, n = w.shape
    s = -(-n // STRIP)
    if s * STRIP != n:
        w = xp.pad(w, ((0, 0), (0, s * STRIP - n)))
    return xp.transpose(w.reshape(k, s, STRIP), (1, 0, 2))


def unpack_kernel(w_packed, n: int):  # [S, K, 16] -> [K, n]
    """The inverse of `pack_kernel`."""
    xp = np if isinstance(w_packed, np.ndarray) else jnp
    s, k, strip = w_packed.shape
    return xp.transpose(w_packed, (1, 0, 2)).reshape(k, s * strip)[:, :n]


def check_strips(fn: str, arg: str, x, w, n: int, layer) -> int:
    """Check `w` [S, K, 16] (or stacked [L, S, K, 16] with `layer`, and only then) against x
    [..., K] and n output columns; returns K. ValueErrors name `fn`, `arg` and the numbers."""
    if w.ndim not in (3, 4) or w.shape[-1] != STRIP:
        raise ValueError(f"{fn}: {arg} must be [S, K, 16] or [L, S, K, 16], got {w.shape}")
    if (w.ndim == 4) == (layer is None):
        raise ValueError(
            f"{fn}: a stacked {arg} [L, S, K, 16] needs `layer`, and only it takes one"
        )
    s, k, _ = w.shape[-3:]
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"{fn}: x must be [..., {k}] for {arg} {w.shape}, got {x.shape}")
    if not STRIP * (s - 1) < n <= STRIP * s:
        raise ValueError(f"{fn}: n={n} does not fit {s} strips of {STRIP} columns")
    return k


def packed_matmul(
    x: jax.Array,  # [..., K] float32
    w_packed: jax.Array,  # [S, K, 16], or stacked [L, S, K, 16] with `layer`
    *,
    n: int,
    layer: jax.Array | int | None = None,
) -> jax.Array:  # [..., n] float32
    """x @ W, W [K, n] given as `pack_kernel(W)`. With a stacked `w_packed` (`pack_kernel` of each
    of L kernels, stacked), `layer` (traced or not) picks one, read in place: in a layer scan this
    avoids copying each layer's slice out of the stack. An out-of-range traced layer is an error
    at run time."""
    from .registry import ensure_registered

    if x.dtype != jnp.float32 or w_packed.dtype != jnp.float32:
        raise ValueError(
            f"packed_matmul: float32 only, got x {x.dtype} and w_packed {w_packed.dtype}"
        )
    k = check_strips("packed_matmul", "w_packed", x, w_packed, n, layer)
    ensure_registered()
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    call = jax.ffi.ffi_call(
        "jaxllm_packed_matmul", jax.ShapeDtypeStruct((x2.shape[0], n), jnp.float32)
    )
    li = jnp.asarray(0 if layer is None else layer, jnp.int32)
    return call(x2, w_packed, li).reshape(*lead, n)


def reference_matmul(x: jax.Array, w_packed: jax.Array, *, n: int, layer=None) -> jax.Array:
    """The same product through XLA's dot (float32, highest precision): the tests' oracle."""
    w = unpack_kernel(w_packed if layer is None else w_packed[layer], n)
    return jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)
