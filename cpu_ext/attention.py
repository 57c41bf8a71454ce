"""Ragged paged attention on XLA:CPU as an FFI custom call (csrc/paged_attention.cc).

`paged_attention(q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer, *, sm_scale,
sliding_window)` has the ragged interface of `pallas_kernels.reference` (prefill chunks and decodes
mixed), float32 only. Each (query row, KV head) walks the row's visible pages once with an online
softmax, its G grouped query heads together, and never reads keys past the row's position.

`ragged_paged_attention_cpu_ext(...)` is the `cpu` attention backend when `cpu_ext` can run here:
this kernel for float32 batches, `pallas_kernels.cpu_paged_attention` (jnp) for other dtypes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def paged_attention(
    q: jax.Array,  # [T, Hq, D] float32
    k_pages: jax.Array,  # [L, N, Hkv, bs, D] float32
    v_pages: jax.Array,  # [L, N, Hkv, bs, D] float32
    block_tables: jax.Array,  # [S, P] int32
    kv_lens: jax.Array,  # [S] int32
    query_start_loc: jax.Array,  # [S + 1] int32
    layer: jax.Array | int = 0,
    *,
    sm_scale: float | None = None,
    sliding_window: int | None = None,
) -> jax.Array:  # [T, Hq, D] float32
    """Ragged paged attention (rows no sequence owns are 0). Shapes and dtypes are checked here;
    what depends on values (block ids, lengths) by the kernel, as an error naming the entry."""
    from pallas_kernels.ragged_inputs import int32_metadata

    from .registry import ensure_registered

    for name, a in (("q", q), ("k_pages", k_pages), ("v_pages", v_pages)):
        if a.dtype != jnp.float32:
            raise ValueError(f"paged_attention: {name} must be float32, got {a.dtype}")
    if q.ndim != 3 or k_pages.ndim != 5 or k_pages.shape != v_pages.shape:
        raise ValueError(
            "paged_attention: q must be [T, Hq, D] and k_pages/v_pages equal "
            f"[L, N, Hkv, bs, D]; got {q.shape}, {k_pages.shape}, {v_pages.shape}"
        )
    D = q.shape[2]
    ensure_registered()
    call = jax.ffi.ffi_call("jaxllm_paged_attention", jax.ShapeDtypeStruct(q.shape, jnp.float32))
    return call(
        q,
        k_pages,
        v_pages,
        *int32_metadata(block_tables, kv_lens, query_start_loc, layer),
        sm_scale=np.float32(D**-0.5 if sm_scale is None else sm_scale),
        sliding_window=np.int32(sliding_window or 0),
    )


def ragged_paged_attention_cpu_ext(
    q: jax.Array,  # [T, Hq, D]
    k_pages: jax.Array,  # [L, N, Hkv, bs, D]
    v_pages: jax.Array,  # [L, N, Hkv, bs, D]
    block_tables: jax.Array,  # [S, P] int32
    kv_lens: jax.Array,  # [S] int32
    query_start_loc: jax.Array,  # [S + 1] int32
    layer: jax.Array | int = 0,
    *,
    sm_scale: float | None = None,
    sliding_window: int | None = None,
    decode_only: bool = False,
) -> jax.Array:  # [T, Hq, D]
    """The `cpu` backend with cpu_ext: the FFI kernel for float32 batches, else
    `pallas_kernels.cpu_paged_attention.ragged_paged_attention_cpu`. `decode_only` is only
    checked (when `query_start_loc` is concrete): the kernel serves every batch the same way."""
    from pallas_kernels.cpu_paged_attention import ragged_paged_attention_cpu
    from pallas_kernels.ragged_inputs import check_decode_only, validate_inputs

    args = (q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer)
    static = dict(sm_scale=sm_scale, sliding_window=sliding_window)
    if not all(a.dtype == jnp.float32 for a in args[:3]):
        return ragged_paged_attention_cpu(*args, **static, decode_only=decode_only)
    validate_inputs(*args, **static, backend="cpu")
    if decode_only:
        check_decode_only(query_start_loc)
    return paged_attention(*args, **static)
