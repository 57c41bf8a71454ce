"""Pure-jnp ragged paged attention: the oracle every other backend is checked against.

The ragged interface (shared by the `reference`, `pallas` and `cuda` backends):

- queries of many sequences are packed flat: `q[T, Hq, D]`; sequence `s` owns query rows
  `query_start_loc[s] : query_start_loc[s + 1]`; rows at or past `query_start_loc[-1]` are padding
  and come back as zeros;
- the KV cache of all layers is one array per K and V, `[L, num_blocks, Hkv, block_size, D]`; the
  `layer` argument (a Python int or an int32 scalar, traced or not) picks the layer, so a model that
  scans over its layers never copies a layer's cache out of the stacked array;
- sequence `s` owns the pages `block_tables[s, :ceil(kv_lens[s] / block_size)]`, and its KV
  length `kv_lens[s]` already counts this step's new tokens (written before attention);
- the query rows of sequence `s` are its last `q_len = query_start_loc[s+1] - query_start_loc[s]`
  tokens, so query row `i` of the sequence sits at absolute position `kv_lens[s] - q_len + i` and
  attends causally to positions `0 .. that position` (within `sliding_window` when set);
- pages may be float8 e4m3 whatever the query dtype (`kv_quant.py`): they hold `K / k_scale` and
  `V / v_scale` (static floats), and are read as `float32(page) * scale`.

This file imports only JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .kv_quant import dequantize, gather_pages, quantize, scatter_rows
from .ragged_inputs import num_query_tiles, query_tiles


def ragged_paged_attention_naive(
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
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> jax.Array:  # [T, Hq, D]
    """The obvious algorithm: every query row gathers its sequence's whole KV (O(T * P * bs)
    memory). The oracle that `ragged_paged_attention_reference` is tested against."""
    T, Hq, D = q.shape
    _, _, Hkv, bs, _ = k_pages.shape
    S, P = block_tables.shape
    G = Hq // Hkv
    if sm_scale is None:
        sm_scale = D**-0.5

    tok = jnp.arange(T, dtype=jnp.int32)
    seq = jnp.searchsorted(query_start_loc[1:], tok, side="right").astype(jnp.int32)  # [T]
    valid = tok < query_start_loc[S]
    seq = jnp.minimum(seq, S - 1)
    q_start = query_start_loc[seq]
    q_len = query_start_loc[seq + 1] - q_start
    pos = kv_lens[seq] - q_len + (tok - q_start)  # [T] absolute position of each query

    blocks = block_tables[seq]  # [T, P]
    k = gather_pages(k_pages, layer, blocks)  # [T, P, Hkv, bs, D]
    v = gather_pages(v_pages, layer, blocks)
    k = k.transpose(0, 2, 1, 3, 4).reshape(T, Hkv, P * bs, D)
    v = v.transpose(0, 2, 1, 3, 4).reshape(T, Hkv, P * bs, D)

    qg = q.reshape(T, Hkv, G, D).astype(jnp.float32)
    s = jnp.einsum("thgd,thkd->thgk", qg, dequantize(k, k_scale)) * sm_scale  # [T, Hkv, G, K]
    kpos = jnp.arange(P * bs, dtype=jnp.int32)[None, :]
    mask = kpos <= pos[:, None]  # causal (and so within kv_len)
    if sliding_window is not None:
        mask &= kpos > pos[:, None] - sliding_window
    mask &= valid[:, None]
    s = jnp.where(mask[:, None, None, :], s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("thgk,thkd->thgd", p, dequantize(v, v_scale)) / jnp.where(l == 0, 1.0, l)
    return o.reshape(T, Hq, D).astype(q.dtype)


def _attend(q, k, v, q_pos, valid, sm_scale, sliding_window):
    """q [N, Bq, Hkv, G, D], k/v [N, K, Hkv, D] f32, q_pos/valid [N, Bq] -> [N, Bq, Hkv, G, D]
    f32."""
    K = k.shape[1]
    s = jnp.einsum("nqhgd,nkhd->nhgqk", q.astype(jnp.float32), k) * sm_scale
    kpos = jnp.arange(K, dtype=jnp.int32)[None, None, :]
    mask = (kpos <= q_pos[:, :, None]) & valid[:, :, None]  # [N, Bq, K]
    if sliding_window is not None:
        mask &= kpos > q_pos[:, :, None] - sliding_window
    s = jnp.where(mask[:, None, None], s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("nhgqk,nkhd->nqhgd", p / jnp.where(l == 0, 1.0, l), v)
    return o


def ragged_paged_attention_reference(
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
    query_block: int | None = None,
    decode_only: bool = False,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> jax.Array:  # [T, Hq, D]
    """Ragged paged attention in plain jnp (float32 softmax, output in `q.dtype`).

    Queries are cut into tiles of `query_block` consecutive rows of one sequence (a static
    bound of T // query_block + S tiles); each tile gathers its sequence's pages once, so KV
    traffic is O(tiles * P * bs) instead of O(T * P * bs). `decode_only` (static: one query per
    sequence) makes tiles of one row. `k_scale` / `v_scale` (static): the scales of quantized
    pages (float pages ignore them).
    """
    T, Hq, D = q.shape
    _, _, Hkv, bs, _ = k_pages.shape
    S, P = block_tables.shape
    G = Hq // Hkv
    if sm_scale is None:
        sm_scale = D**-0.5
    Bq = 1 if decode_only else (query_block or min(16, T))
    NT = S if decode_only else num_query_tiles(T, S, Bq)  # static bound on the number of tiles

    q_len = query_start_loc[1:] - query_start_loc[:-1]  # [S]
    tiles = query_tiles(query_start_loc, Bq, NT)
    seq, tile_valid = tiles.seq, tiles.valid  # [NT]
    first_row = query_start_loc[seq] + tiles.index * Bq  # [NT]
    rows = first_row[:, None] + jnp.arange(Bq, dtype=jnp.int32)[None, :]  # [NT, Bq]
    row_valid = tile_valid[:, None] & (rows < query_start_loc[seq + 1][:, None])
    q_pos = kv_lens[seq][:, None] - q_len[seq][:, None] + (rows - query_start_loc[seq][:, None])

    blocks = block_tables[seq]  # [NT, P]
    k = dequantize(gather_pages(k_pages, layer, blocks), k_scale)
    v = dequantize(gather_pages(v_pages, layer, blocks), v_scale)
    k = k.transpose(0, 1, 3, 2, 4).reshape(NT, P * bs, Hkv, D)
    v = v.transpose(0, 1, 3, 2, 4).reshape(NT, P * bs, Hkv, D)
    qt = q[jnp.clip(rows, 0, T - 1)].reshape(NT, Bq, Hkv, G, D)
    o = _attend(qt, k, v, q_pos, row_valid, sm_scale, sliding_window)  # [NT, Bq, Hkv, G, D]

    # each token reads its row of its tile back; padding rows get zeros
    tok = jnp.arange(T, dtype=jnp.int32)
    tseq = jnp.minimum(jnp.searchsorted(query_start_loc[1:], tok, side="right"), S - 1)
    local = tok - query_start_loc[tseq]
    t_tile = tiles.first_tile[tseq] + local // Bq
    out = o[jnp.clip(t_tile, 0, NT - 1), local % Bq].reshape(T, Hq, D)
    valid = tok < query_start_loc[S]
    return jnp.where(valid[:, None, None], out, 0).astype(q.dtype)


def write_kv_pages(
    k_pages: jax.Array,  # [L, N, Hkv, bs, D]
    v_pages: jax.Array,  # [L, N, Hkv, bs, D]
    k: jax.Array,  # [T, Hkv, D]
    v: jax.Array,  # [T, Hkv, D]
    slot_mapping: jax.Array,  # [T] int32: block_id * bs + offset, or -1 for padding rows
    layer: jax.Array | int = 0,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Scatter this step's K/V rows into their slots of layer `layer`; slot -1 rows are dropped.
    Quantized (fp8) pages get `K / k_scale` and `V / v_scale`, clamped to the dtype's finite range
    (`kv_quant.quantize`); float pages get K and V cast to their dtype."""
    _, N, _, bs, _ = k_pages.shape
    blk = jnp.where(slot_mapping >= 0, slot_mapping // bs, N)  # N is out of bounds: dropped
    off = jnp.where(slot_mapping >= 0, slot_mapping % bs, 0)
    k_new = quantize(k, k_pages.dtype, k_scale)
    v_new = quantize(v, v_pages.dtype, v_scale)
    k_pages = scatter_rows(k_pages, (layer, blk, slice(None), off), k_new)
    v_pages = scatter_rows(v_pages, (layer, blk, slice(None), off), v_new)
    return k_pages, v_pages
