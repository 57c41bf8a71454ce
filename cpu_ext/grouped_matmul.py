"""A grouped (mixture-of-experts) matmul on XLA:CPU: the FFI kernel of csrc/grouped_matmul.cc.

    w_packed = pack_grouped(w)                       # [G, K, N] -> [G, ceil(N / 16), K, 16], once
    y = grouped_matmul(x, w_packed, group_sizes, n=N)  # x [M, K] f32 -> y [M, N] f32, in any jit

x's rows are sorted by group: group g owns rows [off_g, off_g + group_sizes[g]) with off_g =
sum(group_sizes[:g]), and those rows of y are x @ W_g; rows at or past sum(group_sizes) are 0.
Each W_g is packed as `pack_kernel` packs one kernel, and the kernel streams its strips through
the packed matmul's AVX2 strip kernel. Work is only made for groups with rows: an empty group's
weights are never read. group_sizes may be traced; a negative size or a sum past M is an error
at run time. float32 only. `reference_grouped_matmul` is the oracle the tests compare against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .packed_matmul import STRIP, check_strips, pack_kernel, unpack_kernel


def pack_grouped(w):  # [G, K, N] -> [G, S, K, 16] with S = ceil(N / 16), same array kind as `w`
    """`pack_kernel` of each group's W_g [K, N], stacked: `out[g] = pack_kernel(w[g])`."""
    if w.ndim != 3:
        raise ValueError(f"pack_grouped: w must be [G, K, N], got shape {tuple(w.shape)}")
    xp = np if isinstance(w, np.ndarray) else jnp
    if w.shape[0] == 0:
        return xp.zeros((0, -(-w.shape[2] // STRIP), w.shape[1], STRIP), w.dtype)
    return xp.stack([pack_kernel(wg) for wg in w])


def grouped_matmul(
    x: jax.Array,  # [M, K] float32, rows sorted by group
    w_packed: jax.Array,  # [G, S, K, 16] float32: pack_grouped(w) of w [G, K, n]
    group_sizes: jax.Array,  # [G] int32, >= 0, sum <= M (traced or not)
    *,
    n: int,
) -> jax.Array:  # [M, n] float32
    """Row r of group g: x[r] @ W_g; rows at or past sum(group_sizes): 0."""
    from .registry import ensure_registered

    fn = "grouped_matmul"
    if x.dtype != jnp.float32 or w_packed.dtype != jnp.float32:
        raise ValueError(f"{fn}: float32 only, got x {x.dtype} and w_packed {w_packed.dtype}")
    if w_packed.ndim != 4 or w_packed.shape[-1] != STRIP:
        raise ValueError(f"{fn}: w_packed must be [G, S, K, 16], got {w_packed.shape}")
    if x.ndim != 2:
        raise ValueError(f"{fn}: x must be [M, K], got {x.shape}")
    # The group axis stands where a stack's layer axis does: check the strips, K and n as
    # packed_matmul checks a stacked kernel (any `layer` passes its stacked-or-not check).
    check_strips(fn, "w_packed", x, w_packed, n, layer=0)
    group_sizes = jnp.asarray(group_sizes)
    if not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        raise ValueError(f"{fn}: group_sizes must be integers, got {group_sizes.dtype}")
    if group_sizes.shape != w_packed.shape[:1]:
        raise ValueError(
            f"{fn}: group_sizes must be [G] = [{w_packed.shape[0]}] for w_packed "
            f"{w_packed.shape}, got {group_sizes.shape}"
        )
    ensure_registered()
    call = jax.ffi.ffi_call(
        "jaxllm_grouped_matmul", jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32)
    )
    return call(x, w_packed, group_sizes.astype(jnp.int32))


def reference_grouped_matmul(x, w_packed, group_sizes, *, n: int) -> jax.Array:
    """The same through one XLA dot a group (float32, highest precision): the tests' oracle.
    group_sizes must be concrete."""
    sizes = np.asarray(group_sizes)
    y = jnp.zeros((x.shape[0], n), jnp.float32)
    off = 0
    for g, size in enumerate(sizes.tolist()):
        w = unpack_kernel(w_packed[g], n)
        rows = jnp.matmul(x[off : off + size], w, precision=jax.lax.Precision.HIGHEST)
        y = y.at[off : off + size].set(rows)
        off += size
    return y
