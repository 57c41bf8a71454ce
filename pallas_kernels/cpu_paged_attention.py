"""Ragged paged attention in jnp, laid out for XLA:CPU: the `cpu` attention backend.

Same interface and results as `reference.ragged_paged_attention_reference` (its docstring is the
contract); what differs is the shape of the work, chosen for XLA:CPU (its YNNPACK/Eigen dots and
loop fusions) rather than for readability:

- **Decode** (`decode_only=True`, static): every sequence gathers its pages once,
  `k_pages[layer, block_tables]` -> `[S, P, Hkv, bs, D]` (one gather straight from the stacked
  cache, no layer slice), and q is `[S, Hkv, G, D]`, so grouped query heads share their KV head
  without repeating K/V. The products are K-major (`[K, D] x [D, G]` per sequence and KV head).
- **General** (prefill chunks and decodes mixed): query tiles of `Bq` consecutive rows of one
  sequence, each gathering its sequence's pages once (as in the reference), with every operand in
  canonical batched-matmul layout (`[tiles, Hkv, Bq * G, D] x [tiles, Hkv, K, D]`), the mask
  computed once per tile as `[tiles, Bq, K]` rather than per score, and the softmax normalized
  after the PV product (on D columns instead of K), with no searchsorted (a while loop on XLA:CPU).

Both paths zero K and V slots past each sequence's length while gathering (the select fuses into
the gather), so stale or poisoned cache slots cannot leak into the result, and masked scores use a
finite -1e30 so a row with no keys gives no NaN. Rows at or past `query_start_loc[S]` are zeros.
Quantized (fp8) pages are read as `float32(page) * scale` in the same fusion as the gather.

This file imports only JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .kv_quant import dequantize, gather_pages
from .ragged_inputs import check_decode_only, check_power_of_two, num_query_tiles, validate_inputs

_MASKED = -1e30  # finite: exp(_MASKED - m) == 0 for any real score m, and never NaN
_MAX_QUERY_BLOCK = 32  # tile rows; 32 was fastest on a 2-core Zen 3 for T=2048, S=16 prefill


def _seq_of_rows(query_start_loc: jax.Array, rows: jax.Array) -> jax.Array:
    """Sequence id of each row (clamped to S - 1): a compare-and-count, not a binary search (XLA:CPU
    runs searchsorted as a while loop)."""
    S = query_start_loc.shape[0] - 1
    ends = query_start_loc[1:]  # [S]
    seq = jnp.sum(rows[..., None] >= ends, axis=-1, dtype=jnp.int32)
    return jnp.minimum(seq, S - 1)


def _gather_pages(
    pages: jax.Array,  # [L, N, Hkv, bs, D]
    layer: jax.Array | int,
    blocks: jax.Array,  # [W, P] int32
    kv_len: jax.Array,  # [W] int32
    scale: float,
) -> jax.Array:  # [W, P, Hkv, bs, D] float32
    """Pages of `layer` listed in `blocks` as float32 (quantized ones times `scale`), with slots
    at or past `kv_len` zeroed."""
    W, P = blocks.shape
    bs = pages.shape[3]
    x = dequantize(gather_pages(pages, layer, blocks), scale)
    kpos = jnp.arange(P * bs, dtype=jnp.int32).reshape(P, bs)
    live = kpos[None] < kv_len[:, None, None]  # [W, P, bs]
    return jnp.where(live[:, :, None, :, None], x, 0)


def _decode(
    q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer, sm_scale, scales, window
):
    """One query row per sequence: q [T, Hq, D] -> [T, Hq, D] (f32)."""
    T, Hq, D = q.shape
    _, _, Hkv, bs, _ = k_pages.shape
    S, P = block_tables.shape
    G = Hq // Hkv
    K = P * bs
    k = _gather_pages(k_pages, layer, block_tables, kv_lens, scales[0])
    v = _gather_pages(v_pages, layer, block_tables, kv_lens, scales[1])
    row = jnp.clip(query_start_loc[:S], 0, T - 1)  # [S] each sequence's one query row
    qs = q[row].astype(jnp.float32).reshape(S, Hkv, G, D) * sm_scale
    kpos = jnp.arange(K, dtype=jnp.int32)[None, :]
    pos = (kv_lens - 1)[:, None]  # [S, 1] the query's position
    mask = kpos <= pos  # [S, K]
    if window is not None:
        mask &= kpos > pos - window
    # K-major products: [K, D] x [D, G] per (sequence, KV head); on XLA:CPU (YNNPACK) this beat
    # [G, D] x [D, K], a broadcast multiply-reduce, and the page layout without the transpose
    k = k.transpose(0, 2, 1, 3, 4).reshape(S, Hkv, K, D)  # fuses into the gather
    v = v.transpose(0, 2, 1, 3, 4).reshape(S, Hkv, K, D)
    s = jnp.einsum("shkd,shgd->shkg", k, qs)  # [S, Hkv, K, G]
    s = jnp.where(mask[:, None, :, None], s, _MASKED)
    m = jnp.max(s, axis=2, keepdims=True)
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=2)  # [S, Hkv, G]
    o = jnp.einsum("shkg,shkd->shgd", p, v)
    o = (o / l[..., None]).reshape(S, Hq, D)

    # token t reads its sequence's row; padding rows (and sequences without a row) get zeros
    tok = jnp.arange(T, dtype=jnp.int32)
    seq = _seq_of_rows(query_start_loc, tok)
    valid = tok < query_start_loc[S]
    return jnp.where(valid[:, None, None], o[seq], 0)


def _general(
    q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer, sm_scale, scales, window, Bq
):
    """Ragged rows in query tiles of Bq rows of one sequence: q [T, Hq, D] -> [T, Hq, D] (f32)."""
    T, Hq, D = q.shape
    _, _, Hkv, bs, _ = k_pages.shape
    S, P = block_tables.shape
    G = Hq // Hkv
    K = P * bs
    NT = num_query_tiles(T, S, Bq)  # static bound on the number of tiles

    # tile w holds rows local[w] (Bq of them, from (w - first_tile) * Bq) of sequence seq[w]
    q_len = jnp.maximum(query_start_loc[1:] - query_start_loc[:-1], 0)  # [S]
    tiles_per_seq = (q_len + Bq - 1) // Bq
    tile_end = jnp.cumsum(tiles_per_seq).astype(jnp.int32)  # [S]
    first_tile = tile_end - tiles_per_seq
    w = jnp.arange(NT, dtype=jnp.int32)
    seq = jnp.minimum(jnp.sum(w[:, None] >= tile_end[None, :], axis=1, dtype=jnp.int32), S - 1)
    q0 = query_start_loc[seq]  # [NT]
    local = (w - first_tile[seq])[:, None] * Bq + jnp.arange(Bq, dtype=jnp.int32)[None]  # [NT, Bq]
    row_valid = (w < tile_end[S - 1])[:, None] & (local < q_len[seq][:, None])
    q_pos = (kv_lens[seq] - q_len[seq])[:, None] + local  # [NT, Bq] absolute positions

    kv = kv_lens[seq]
    k = _gather_pages(k_pages, layer, block_tables[seq], kv, scales[0])
    v = _gather_pages(v_pages, layer, block_tables[seq], kv, scales[1])
    k = k.transpose(0, 2, 1, 3, 4).reshape(NT, Hkv, K, D)
    v = v.transpose(0, 2, 1, 3, 4).reshape(NT, Hkv, K, D)

    rows = jnp.clip(q0[:, None] + local, 0, T - 1)
    qt = q[rows].astype(jnp.float32).reshape(NT, Bq, Hkv, G, D).transpose(0, 2, 1, 3, 4)
    qt = qt.reshape(NT, Hkv, Bq * G, D) * sm_scale

    kpos = jnp.arange(K, dtype=jnp.int32)[None, None, :]
    mask = (kpos <= q_pos[:, :, None]) & row_valid[:, :, None]  # [NT, Bq, K]
    if window is not None:
        mask &= kpos > q_pos[:, :, None] - window
    s = jnp.einsum("nhmd,nhkd->nhmk", qt, k).reshape(NT, Hkv, Bq, G, K)
    s = jnp.where(mask[:, None, :, None, :], s, _MASKED)
    m = jnp.max(s, axis=-1, keepdims=True)
    # the select keeps XLA:CPU from fusing max, exp and the PV dot into one slower YNN fusion
    p = jnp.where(mask[:, None, :, None, :], jnp.exp(s - m), 0.0)
    l = jnp.sum(p, axis=-1)  # [NT, Hkv, Bq, G]; 0 only in rows that hold no query
    o = jnp.einsum("nhmk,nhkd->nhmd", p.reshape(NT, Hkv, Bq * G, K), v)
    o = o.reshape(NT, Hkv, Bq, G, D) / jnp.where(l == 0, 1.0, l)[..., None]
    o = o.transpose(0, 2, 1, 3, 4)  # [NT, Bq, Hkv, G, D]

    # token t reads its row of its tile; padding rows get zeros
    tok = jnp.arange(T, dtype=jnp.int32)
    tseq = _seq_of_rows(query_start_loc, tok)
    t_local = tok - query_start_loc[tseq]
    t_tile = jnp.clip(first_tile[tseq] + t_local // Bq, 0, NT - 1)
    out = o[t_tile, t_local % Bq].reshape(T, Hq, D)
    valid = tok < query_start_loc[S]
    return jnp.where(valid[:, None, None], out, 0)


def default_query_block(T: int, S: int) -> int:
    """Tile rows for the general path: about T / S (the mean query length), a power of two in
    [1, 32], so decode-heavy mixed batches do not pay for mostly empty tiles."""
    mean = max(1, T // S)
    return min(_MAX_QUERY_BLOCK, 1 << (mean.bit_length() - 1))


def ragged_paged_attention_cpu(
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
    """Ragged paged attention for XLA:CPU (float32 softmax, output in `q.dtype`); the arguments
    and result are those of `ragged_paged_attention_reference` (fp8 pages with their scales
    included).

    `decode_only` (static: at most one query row per sequence, checked when `query_start_loc` is
    concrete) takes the per-sequence decode path; otherwise queries go in tiles of `query_block`
    rows (a power of two; None: `default_query_block(T, S)`).
    """
    validate_inputs(
        q,
        k_pages,
        v_pages,
        block_tables,
        kv_lens,
        query_start_loc,
        layer,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        backend="cpu",
        k_scale=k_scale,
        v_scale=v_scale,
    )
    check_power_of_two("query_block", query_block)
    T, _, D = q.shape
    S = block_tables.shape[0]
    scale = D**-0.5 if sm_scale is None else float(sm_scale)
    scales = (float(k_scale), float(v_scale))
    args = (q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer, scale, scales)
    if decode_only:
        check_decode_only(query_start_loc)
        out = _decode(*args, sliding_window)
    else:
        Bq = query_block or default_query_block(T, S)
        out = _general(*args, sliding_window, min(Bq, T))
    return out.astype(q.dtype)
