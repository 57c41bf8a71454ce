"""General path of the Pallas ragged paged attention: prefill chunks and decodes mixed (Triton).

Grid (work item, KV head); a work item is one tile of `block_q` consecutive query rows of one
sequence (`ragged_inputs.query_tiles`, passed to the kernel as an int32 array). The tile rows are
(token, q head) pairs of one KV head, so K/V tiles are shared across the group. Each item loops over
KV from the window start to its last row's position (later keys are never read), with causal and
sliding-window masks per row. Imports only JAX.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .paged_softmax import TritonParams, attend, log2, next_pow2, normalize, scale_rows
from .ragged_inputs import num_query_tiles, query_tiles


def _general_kernel(
    layer_ref,  # [1] int32
    qsl_ref,  # [S + 1] int32
    kv_lens_ref,  # [S] int32
    bt_ref,  # [S, P] int32
    work_ref,  # [2, W] int32: (sequence, query block index) per work item
    q_ref,  # [T, Hq, D]
    k_ref,  # [L, N, Hkv, bs, D]: q's dtype, or uint8 (page_dtype's bytes)
    v_ref,  # [L, N, Hkv, bs, D]
    out_init_ref,  # [T, Hq, D] zeros, aliased to out_ref
    out_ref,  # [T, Hq, D]
    *,
    G: int,
    Gp: int,
    block_q: int,
    block_size: int,
    block_k: int,
    scale_log2: float,
    out_scale: float,
    page_dtype: str | None,
    sliding_window: int | None,
    unmasked_prefix: bool,
):
    del out_init_ref  # only there to zero the rows no program writes
    w, kvh = pl.program_id(0), pl.program_id(1)
    T, Hq, D = q_ref.shape
    layer = jnp.clip(layer_ref[0], 0, k_ref.shape[0] - 1)
    seq = work_ref[0, w]
    qblk = work_ref[1, w]
    q_start = qsl_ref[seq]
    q_len = qsl_ref[seq + 1] - q_start
    kv_len = kv_lens_ref[seq]
    first = qblk * block_q  # index of the block's first row within the sequence's query rows
    n_rows = jnp.clip(q_len - first, 0, block_q)

    M = block_q * Gp
    r = jnp.arange(M, dtype=jnp.int32)
    d = jnp.arange(D, dtype=jnp.int32)
    t = r >> log2(Gp)  # token within the block
    g = r & (Gp - 1)  # q head within the KV head's group
    ok = (t < n_rows) & (g < G)
    ok_md = jnp.broadcast_to(ok[:, None], (M, D))
    tok_row = jnp.clip(q_start + first + t, 0, T - 1)
    head = kvh * G + jnp.minimum(g, G - 1)
    q = plgpu.load(
        q_ref.at[tok_row[:, None], head[:, None], d[None, :]],
        mask=ok_md,
        other=jnp.zeros((), q_ref.dtype),
    )  # [M, D]

    pos0 = kv_len - q_len + first  # absolute position of the block's first row
    row_pos = jnp.where(ok, pos0 + t, -1)
    kv_hi = jnp.where(n_rows > 0, pos0 + n_rows, 0)
    kv_lo = 0 if sliding_window is None else jnp.maximum(pos0 - sliding_window + 1, 0)
    start = (kv_lo >> log2(block_size)) << log2(block_size)  # page-aligned first token
    n_steps = (jnp.maximum(kv_hi - start, 0) + block_k - 1) >> log2(block_k)
    common = dict(
        block_stride=block_k,
        k_ref=k_ref,
        v_ref=v_ref,
        bt_ref=bt_ref,
        layer=layer,
        seq=seq,
        kvh=kvh,
        block_size=block_size,
        block_k=block_k,
        scale_log2=scale_log2,
        sliding_window=sliding_window,
        page_dtype=page_dtype,
    )
    carry = None
    if unmasked_prefix and sliding_window is None:
        # Blocks wholly at or before the tile's first row position are live and visible to every
        # row: visit them without masks, then the rest (the diagonal and the tail) with them.
        n_free = jnp.clip((pos0 + 1 - start) >> log2(block_k), 0, n_steps)
        carry = attend(q, row_pos, kv_lo, kv_hi, start, n_free, masked=False, **common)
        start, n_steps = start + n_free * block_k, n_steps - n_free
    acc, _, l = attend(q, row_pos, kv_lo, kv_hi, start, n_steps, carry=carry, **common)
    dst = jnp.where(ok, tok_row, T)  # masked rows point past the array: never collide
    plgpu.store(
        out_ref.at[dst[:, None], head[:, None], d[None, :]],
        scale_rows(normalize(acc, l), out_scale).astype(out_ref.dtype),
        mask=ok_md,
    )


def general_call(q, k_pages, v_pages, block_tables, kv_lens, qsl, layer, out_init, *, st):
    T, Hq, D = q.shape
    Hkv = k_pages.shape[2]
    S = block_tables.shape[0]
    G = Hq // Hkv
    Gp = next_pow2(G)
    block_q = st["block_q"]
    num_work = num_query_tiles(T, S, block_q)
    tiles = query_tiles(qsl, block_q, num_work)
    work = jnp.stack([tiles.seq, tiles.index])  # [2, num_work]; invalid tiles have no rows
    kernel = functools.partial(
        _general_kernel,
        G=G,
        Gp=Gp,
        block_q=block_q,
        block_size=st["block_size"],
        block_k=st["block_k"],
        scale_log2=st["scale_log2"],
        out_scale=st["out_scale"],
        page_dtype=st["page_dtype"],
        unmasked_prefix=st["unmasked_prefix"],
        sliding_window=st["sliding_window"],
    )
    args = (layer, qsl, kv_lens, block_tables, work, q, k_pages, v_pages)
    if out_init is None:
        out_init = jnp.zeros(q.shape, q.dtype)
    return pl.pallas_call(
        kernel,
        grid=(num_work, Hkv),
        out_shape=jax.ShapeDtypeStruct((T, Hq, D), q.dtype),
        input_output_aliases={len(args): 0},
        compiler_params=TritonParams(num_warps=st["num_warps"], num_stages=st["num_stages"]),
        interpret=st["interpret"],
        name=f"rpa_general_G{G}_D{D}_bs{st['block_size']}_bq{block_q}_bk{st['block_k']}",
    )(*args, out_init)
