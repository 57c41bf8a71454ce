"""Ragged paged attention on XLA:CPU as an FFI custom call (csrc/paged_attention.cc).

`paged_attention(q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer, *, sm_scale,
sliding_window, k_scale, v_scale)` has the ragged interface of `pallas_kernels.reference` (prefill
chunks and decodes mixed): float32 queries over float32 or float8 e4m3 pages (read as
`float32(page) * scale`). Each (query row, KV head) walks the row's visible pages once with an
online softmax, its G grouped query heads together, and never reads keys past the row's position.

`ragged_paged_attention_cpu_ext(...)` is the `cpu` attention backend when `cpu_ext` can run here:
this kernel for float32 queries (float32 or fp8 pages), `pallas_kernels.cpu_paged_attention` (jnp)
for other dtypes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

KV_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float8_e4m3fn))  # the kernel's page dtypes


def paged_attention(
    q: jax.Array,  # [T, Hq, D] float32
    k_pages: jax.Array,  # [L, N, Hkv, bs, D] float32 or float8_e4m3fn
    v_pages: jax.Array,  # [L, N, Hkv, bs, D] (k_pages' dtype)
    block_tables: jax.Array,  # [S, P] int32
    kv_lens: jax.Array,  # [S] int32
    query_start_loc: jax.Array,  # [S + 1] int32
    layer: jax.Array | int = 0,
    *,
    sm_scale: float | None = None,
    sliding_window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> jax.Array:  # [T, Hq, D] float32
    """Ragged paged attention (rows no sequence owns are 0). Shapes and dtypes are checked here;
    what depends on values (block ids, lengths) by the kernel, as an error naming the entry.
    `k_scale` / `v_scale`: the scales of fp8 pages (float32 pages ignore them)."""
    from pallas_kernels.kv_quant import is_quantized, to_storage
    from pallas_kernels.ragged_inputs import int32_metadata

    from .registry import ensure_registered

    if q.dtype != jnp.float32:
        raise ValueError(f"paged_attention: q must be float32, got {q.dtype}")
    if k_pages.dtype != v_pages.dtype or k_pages.dtype not in KV_DTYPES:
        raise ValueError(
            "paged_attention: k_pages and v_pages must both be float32 or both float8_e4m3fn, "
            f"got {k_pages.dtype} and {v_pages.dtype}"
        )
    quantized = is_quantized(k_pages.dtype)
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
        to_storage(k_pages),  # fp8 pages as their bytes (uint8; pallas_kernels.kv_quant)
        to_storage(v_pages),
        *int32_metadata(block_tables, kv_lens, query_start_loc, layer),
        sm_scale=np.float32(D**-0.5 if sm_scale is None else sm_scale),
        sliding_window=np.int32(sliding_window or 0),
        k_scale=np.float32(k_scale if quantized else 1.0),
        v_scale=np.float32(v_scale if quantized else 1.0),
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
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> jax.Array:  # [T, Hq, D]
    """The `cpu` backend with cpu_ext: the FFI kernel for float32 queries over float32 or fp8
    pages, else `pallas_kernels.cpu_paged_attention.ragged_paged_attention_cpu`. `decode_only` is
    only checked (when `query_start_loc` is concrete): the kernel serves every batch the same
    way."""
    from pallas_kernels.cpu_paged_attention import ragged_paged_attention_cpu
    from pallas_kernels.ragged_inputs import check_decode_only, validate_inputs

    args = (q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer)
    static = dict(
        sm_scale=sm_scale, sliding_window=sliding_window, k_scale=k_scale, v_scale=v_scale
    )
    if q.dtype != jnp.float32 or k_pages.dtype not in KV_DTYPES:
        return ragged_paged_attention_cpu(*args, **static, decode_only=decode_only)
    validate_inputs(*args, **static, backend="cpu")
    if decode_only:
        check_decode_only(query_start_loc)
    return paged_attention(*args, **static)
