"""Decode path of the Pallas ragged paged attention: one query row per sequence (Triton lowering).

Grid (sequence, KV head, KV split). One program holds all `G = Hq / Hkv` query heads of its KV head
as the rows of one tile (padded to 16 rows, the smallest tensor-core tile), so each KV page is read
once per step. With one split (`num_splits == 1`: short contexts or batches that fill the GPU) the
program normalises and writes its rows straight into the output: one kernel launch and nothing
else. With several splits (flash-decoding, for long contexts with few sequences) the splits
interleave (split j takes compute blocks j, j + NS, ...), so block addresses need no kv_lens load
and any length splits evenly; each writes unnormalised partials and a second Pallas kernel (grid
(sequence, KV head)) merges them. The last kernel writes every output row (zeros where no sequence
owns one): no zero-fill, no scatter. Or (`decode_combine="xla"`, for small grids, where the
combine kernel's S * Hkv programs and launch cost dominate) `xla_combine` merges the partials with
elementwise jnp ops that XLA fuses into the caller's jit, and writes every row the same way.
Imports only JAX.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .paged_softmax import NEG, TritonParams, attend, log2, next_pow2, normalize, scale_rows


def _zero_unowned_rows(out_ref, s, kvh, q0, q1, q_total, num_seqs: int, *, G: int, R: int):
    """Write zeros to the heads of KV head `kvh` in the output rows that no sequence owns and that
    fall to sequence `s`: the rows of `s` before its last one (only with several query rows, which
    decode mode does not compute), rows before `query_start_loc[0]` (to s = 0) and the padding rows
    at or past `query_start_loc[S]` (row `query_start_loc[S] + s + k * S` to s). In a well-formed
    decode batch only the padding rows exist, so these loops are empty or short.

    `q0, q1, q_total` are query_start_loc[s], [s + 1] and [S], loaded by the caller at the top of
    the kernel so that their latency overlaps the main work."""
    S = num_seqs
    T, _, D = out_ref.shape
    g = jnp.arange(R, dtype=jnp.int32)
    d = jnp.arange(D, dtype=jnp.int32)
    ok = g < G
    head = jnp.where(ok, kvh * G + g, out_ref.shape[1])  # masked rows point past the array
    mask = jnp.broadcast_to(ok[:, None], (R, D))
    zeros = jnp.zeros((R, D), out_ref.dtype)

    def zero_row(t, carry):
        plgpu.store(out_ref.at[t, head[:, None], d[None, :]], zeros, mask=mask)
        return carry

    lo = jnp.clip(jnp.where(s == 0, 0, q0), 0, T)
    hi = jnp.clip(q1 - (q1 > q0).astype(jnp.int32), lo, T)  # the last row (if any) is owned
    lax.fori_loop(lo, hi, zero_row, 0)
    first = jnp.clip(q_total, 0, T) + s
    n_tail = jnp.maximum(T - first + S - 1, 0) // S
    lax.fori_loop(0, n_tail, lambda k, c: zero_row(first + k * S, c), 0)


def _decode_kernel(
    layer_ref,  # [1] int32
    qsl_ref,  # [S + 1] int32
    kv_lens_ref,  # [S] int32
    bt_ref,  # [S, P] int32
    q_ref,  # [T, Hq, D]
    k_ref,  # [L, N, Hkv, bs, D]: q's dtype, or uint8 (page_dtype's bytes)
    v_ref,  # [L, N, Hkv, bs, D]
    # splits == 1: ([out_init,] out [T, Hq, D]); combine "fused": (counter_init, [out_init,] out,
    # o, m, l, counter [S, Hkv]); else (o [S, Hkv, NS, M, D], m, l [S, Hkv, NS, M])
    *refs,
    G: int,
    M: int,
    num_splits: int,
    fused_combine: bool,
    interpret: bool,
    block_size: int,
    block_k: int,
    scale_log2: float,
    out_scale: float,
    page_dtype: str | None,
    sliding_window: int | None,
):
    s, kvh, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    T, Hq, D = q_ref.shape
    layer = jnp.clip(layer_ref[0], 0, k_ref.shape[0] - 1)
    q_start, q_end = qsl_ref[s], qsl_ref[s + 1]
    writes_out = num_splits == 1 or fused_combine
    q_total = qsl_ref[qsl_ref.shape[0] - 1] if writes_out else None  # for the zero rows
    q_len = q_end - q_start
    kv_len = jnp.where(q_len > 0, kv_lens_ref[s], 0)
    row = jnp.clip(q_end - 1, 0, T - 1)  # the sequence's (last) query row

    r = jnp.arange(M, dtype=jnp.int32)
    d = jnp.arange(D, dtype=jnp.int32)
    head_ok = r < G
    head = kvh * G + jnp.minimum(r, G - 1)  # [M] q head of each tile row (padding rows repeat)
    ok_md = jnp.broadcast_to(head_ok[:, None], (M, D))
    q = plgpu.load(
        q_ref.at[row, head[:, None], d[None, :]], mask=ok_md, other=jnp.zeros((), q_ref.dtype)
    )

    # Splits interleave: split j visits compute blocks j, j + NS, j + 2 NS, ... of the sequence's KV
    # (from the window's first page). Without a window the block addresses depend on the program
    # id alone, so the block-table loads need not wait for kv_lens; any kv_len splits evenly.
    lo: jax.Array | int
    base: jax.Array | int
    if sliding_window is None:
        lo, base = 0, 0
    else:
        lo = jnp.maximum(kv_len - sliding_window, 0)
        base = (lo >> log2(block_size)) << log2(block_size)
    n_blocks = (jnp.maximum(kv_len - base, 0) + block_k - 1) >> log2(block_k)
    n_steps = jnp.maximum(n_blocks - split + num_splits - 1, 0) >> log2(num_splits)
    row_pos = jnp.broadcast_to(kv_len - 1, (M,))
    # Static bound on the blocks a sequence spans (the table width; with a window, at most
    # window + block_size - 1 tokens from `base`): when no split has more than one, skip the loop.
    P = bt_ref.shape[1]
    span = (
        P * block_size
        if sliding_window is None
        else min(P * block_size, sliding_window + block_size - 1)
    )
    max_blocks = -(-span // block_k)
    acc, m, l = attend(
        q,
        row_pos,
        lo,
        kv_len,
        base + split * block_k,
        n_steps,
        block_stride=num_splits * block_k,
        k_ref=k_ref,
        v_ref=v_ref,
        bt_ref=bt_ref,
        layer=layer,
        seq=s,
        kvh=kvh,
        block_size=block_size,
        block_k=block_k,
        scale_log2=scale_log2,
        sliding_window=sliding_window,
        at_most_one_step=max_blocks <= num_splits,
        page_dtype=page_dtype,
    )
    acc = scale_rows(acc, out_scale)  # quantized V: partials and output alike (linear in V)

    if num_splits == 1:
        out_ref = refs[-1]  # refs[0] is the aliased initial buffer when there are two
        store_ok = head_ok & (q_len > 0)
        dst = jnp.where(store_ok, head, Hq)  # masked rows point past the array: never collide
        plgpu.store(
            out_ref.at[row, dst[:, None], d[None, :]],
            normalize(acc, l).astype(out_ref.dtype),
            mask=jnp.broadcast_to(store_ok[:, None], (M, D)),
        )
        _zero_unowned_rows(out_ref, s, kvh, q_start, q_end, q_total, bt_ref.shape[0], G=G, R=M)
    else:
        o_ref, m_ref, l_ref = refs[-4:-1] if fused_combine else refs
        plgpu.store(o_ref.at[s, kvh, split, r[:, None], d[None, :]], acc, mask=ok_md)
        plgpu.store(m_ref.at[s, kvh, split, r], m, mask=head_ok)
        plgpu.store(l_ref.at[s, kvh, split, r], l, mask=head_ok)
        if fused_combine:
            # The last split of (s, kvh) to finish merges all of them. The barrier orders every
            # thread's partial stores before the ticket (a scalar acq_rel atomic at GPU scope), so
            # the program that draws ticket NS - 1 sees all NS partials (read volatile, past L1).
            out_ref, counter_ref = refs[-5], refs[-1]
            if not interpret:  # the interpreter runs programs one by one (and has no barrier)
                plgpu.debug_barrier()
            ticket = plgpu.atomic_add(counter_ref, (s, kvh), jnp.int32(1))

            @pl.when(ticket == num_splits - 1)
            def _merge():
                _merge_splits(
                    o_ref, m_ref, l_ref, out_ref, s, kvh, q_start, q_end, q_total,
                    G=G, R=max(2, next_pow2(G)), num_splits=num_splits, volatile=True,
                )  # fmt: skip


def _merge_splits(
    o_ref,  # [S, Hkv, NS, M, D] f32 unnormalised partial outputs
    m_ref,  # [S, Hkv, NS, M] f32 running max (log2 units)
    l_ref,  # [S, Hkv, NS, M] f32 running sum
    out_ref,  # [T, Hq, D]
    s,
    kvh,
    q_start,
    q_end,
    q_total,
    *,
    G: int,
    R: int,
    num_splits: int,
    volatile: bool = False,
):
    """Merge the splits' partials of (sequence `s`, KV head `kvh`), write the G output heads of the
    sequence's row and zero its share of the unowned rows. The split loop is unrolled so all loads
    are in flight at once (they are independent). `q_start, q_end, q_total` are
    query_start_loc[s], [s + 1] and [S]. `volatile`: load the partials past L1 (other programs of
    the same kernel wrote them; this jax's Pallas rejects the ".cg" cache modifier)."""
    T, Hq, D = out_ref.shape
    g = jnp.arange(R, dtype=jnp.int32)
    d = jnp.arange(D, dtype=jnp.int32)
    ok = g < G
    ok_rd = jnp.broadcast_to(ok[:, None], (R, D))
    S = o_ref.shape[0]
    cm = dict(volatile=volatile)
    ms = [plgpu.load(m_ref.at[s, kvh, j, g], mask=ok, other=NEG, **cm) for j in range(num_splits)]
    ls = [plgpu.load(l_ref.at[s, kvh, j, g], mask=ok, other=0.0, **cm) for j in range(num_splits)]
    os_ = [
        plgpu.load(o_ref.at[s, kvh, j, g[:, None], d[None, :]], mask=ok_rd, other=0.0, **cm)
        for j in range(num_splits)
    ]
    m_all = functools.reduce(jnp.maximum, ms)  # [R]
    acc = jnp.zeros((R, D), jnp.float32)
    l_all = jnp.zeros((R,), jnp.float32)
    for m_j, l_j, o_j in zip(ms, ls, os_):
        w = jnp.exp2(m_j - m_all)  # empty splits: m_j = NEG, l_j = 0, o_j = 0
        acc = acc + w[:, None] * o_j
        l_all = l_all + w * l_j

    q_len = q_end - q_start
    row = jnp.clip(q_end - 1, 0, T - 1)
    store_ok = ok & (q_len > 0)
    dst = jnp.where(store_ok, kvh * G + g, Hq)  # masked rows point past the array: never collide
    plgpu.store(
        out_ref.at[row, dst[:, None], d[None, :]],
        normalize(acc, l_all).astype(out_ref.dtype),
        mask=jnp.broadcast_to(store_ok[:, None], (R, D)),
    )
    _zero_unowned_rows(out_ref, s, kvh, q_start, q_end, q_total, S, G=G, R=R)


def _combine_kernel(
    qsl_ref,  # [S + 1] int32
    o_ref,  # [S, Hkv, NS, M, D] f32 unnormalised partial outputs
    m_ref,  # [S, Hkv, NS, M] f32 running max (log2 units)
    l_ref,  # [S, Hkv, NS, M] f32 running sum
    *refs,  # ([out_init,] out [T, Hq, D])
    G: int,
    R: int,
    num_splits: int,
):
    """One program per (sequence, KV head): `_merge_splits`."""
    s, kvh = pl.program_id(0), pl.program_id(1)
    S = qsl_ref.shape[0] - 1
    q_start, q_end, q_total = qsl_ref[s], qsl_ref[s + 1], qsl_ref[S]
    _merge_splits(
        o_ref, m_ref, l_ref, refs[-1], s, kvh, q_start, q_end, q_total,
        G=G, R=R, num_splits=num_splits,
    )  # fmt: skip


def _row_owner(qsl, T: int):
    """(owner [T] int32, owned [T] bool): row t is owned by sequence s when it is s's last query
    row (`t == qsl[s + 1] - 1`) and s has query rows; `owner` is that s (0 for unowned rows). With
    a non-decreasing `qsl` at most one sequence owns a row. The S tests are unrolled in Python:
    elementwise, no gather and no reduction, so XLA fuses them into their user (`searchsorted`
    would add a loop, a reduction or a chain of dependent gathers)."""
    S = qsl.shape[0] - 1
    t = lax.iota(jnp.int32, T)
    hits = [(qsl[s + 1] - 1 == t) & (qsl[s + 1] > qsl[s]) for s in range(S)]
    owner = functools.reduce(jnp.add, [jnp.where(h, s, 0) for s, h in enumerate(hits)])
    return owner.astype(jnp.int32), functools.reduce(jnp.logical_or, hits)


def xla_combine(
    qsl,  # [S + 1] int32
    o,  # [S, Hkv, NS, M, D] f32 unnormalised partial outputs
    m,  # [S, Hkv, NS, M] f32 running max (log2 units)
    l,  # [S, Hkv, NS, M] f32 running sum
    *,
    T: int,
    G: int,
    dtype,
):  # -> [T, Hq, D] dtype
    """The combine kernel's result as jnp ops for XLA to fuse into the caller's jit: row
    `qsl[s + 1] - 1` of each sequence with query rows gets its merged, normalised splits; every
    other row of `[T, Hq, D]` is zero (no zero-fill, no scatter).

    Two elementwise steps, no reduction op (the split and sequence loops are unrolled):
    1. the normalised weight of split j per (sequence, KV head, q head),
       `c_j = exp2(m_j - max m) / sum_k exp2(m_k - max m) l_k = 1 / sum_k l_k exp2(m_k - m_j)`,
       one op over [S, Hkv, NS, G] whose only broadcasts are of inputs (XLA keeps an expensive
       op under a broadcast or a gather in a fusion of its own, so no per-(s, h) intermediate);
    2. each output row gathers its owner's weights and partials: `sum_j c_j o_j`, or zero.
    Empty splits (m NEG, l 0, o 0) get weight 0 (their sum is inf, or 0 when all are empty)."""
    S, Hkv, NS, M, D = o.shape
    sc, owned = _row_owner(qsl, T)  # [T] owning sequence (0 if none), [T] owned
    m, l = m[:, :, :, :G], l[:, :, :, :G]  # [S, Hkv, NS, G]
    den = functools.reduce(
        jnp.add, [l[:, :, k, None] * jnp.exp2(m[:, :, k, None] - m) for k in range(NS)]
    )  # [S, Hkv, NS, G]; l_k = 0 only where m_k = NEG, so never 0 * inf
    c = jnp.where(den == 0.0, 0.0, 1.0 / den)
    c_t = c.at[sc].get(mode="promise_in_bounds")  # [T, Hkv, NS, G]
    o_t = o[:, :, :, :G].at[sc].get(mode="promise_in_bounds")  # [T, Hkv, NS, G, D]
    res = functools.reduce(jnp.add, [c_t[:, :, j, :, None] * o_t[:, :, j] for j in range(NS)])
    out = jnp.where(owned[:, None, None, None], res, 0.0)
    return out.reshape(T, Hkv * G, D).astype(dtype)


def decode_call(q, k_pages, v_pages, block_tables, kv_lens, qsl, layer, out_init, *, st):
    """Decode path: one kernel (no split), or the split kernel plus the combine kernel, or the
    split kernel plus `xla_combine` (`st["decode_combine"] == "xla"`), or one split kernel whose
    last-arriving split per (sequence, KV head) merges (`"fused"`; plus the zeroed counters). The
    final step writes every output row (zeros where no sequence owns it), so no zero-filled buffer
    is needed; `out_init` (tests only) is aliased to the kernel's output when given (the XLA
    combine builds its output fresh and ignores it)."""
    T, Hq, D = q.shape
    Hkv = k_pages.shape[2]
    S = block_tables.shape[0]
    G = Hq // Hkv
    M = max(16, next_pow2(G))
    ns = st["num_kv_splits"]
    fused = ns > 1 and st["decode_combine"] == "fused"
    kernel = functools.partial(
        _decode_kernel,
        G=G,
        M=M,
        num_splits=ns,
        fused_combine=fused,
        interpret=st["interpret"],
        block_size=st["block_size"],
        block_k=st["decode_block_k"],
        scale_log2=st["scale_log2"],
        out_scale=st["out_scale"],
        page_dtype=st["page_dtype"],
        sliding_window=st["sliding_window"],
    )
    params = TritonParams(num_warps=st["decode_num_warps"], num_stages=st["decode_num_stages"])
    args = (layer, qsl, kv_lens, block_tables, q, k_pages, v_pages)
    name = f"rpa_decode_G{G}_D{D}_bs{st['block_size']}_bk{st['decode_block_k']}_ns{ns}"
    out_shape = jax.ShapeDtypeStruct((T, Hq, D), q.dtype)
    if ns == 1:
        extra = () if out_init is None else (out_init,)
        return pl.pallas_call(
            kernel,
            grid=(S, Hkv, 1),
            out_shape=out_shape,
            input_output_aliases={} if out_init is None else {len(args): 0},
            compiler_params=params,
            interpret=st["interpret"],
            name=name,
        )(*args, *extra)
    partials = [
        jax.ShapeDtypeStruct((S, Hkv, ns, M, D), jnp.float32),
        jax.ShapeDtypeStruct((S, Hkv, ns, M), jnp.float32),
        jax.ShapeDtypeStruct((S, Hkv, ns, M), jnp.float32),
    ]
    if fused:
        # One kernel: the last split of each (sequence, KV head) merges (its arrival counters start
        # at zero; the partials are scratch outputs the caller drops).
        counter = jnp.zeros((S, Hkv), jnp.int32)
        extra = (counter,) if out_init is None else (counter, out_init)
        aliases = {len(args): 4} if out_init is None else {len(args): 4, len(args) + 1: 0}
        out, *_ = pl.pallas_call(
            kernel,
            grid=(S, Hkv, ns),
            out_shape=[out_shape, *partials, jax.ShapeDtypeStruct((S, Hkv), jnp.int32)],
            input_output_aliases=aliases,
            compiler_params=params,
            interpret=st["interpret"],
            name=name + "_fused",
        )(*args, *extra)
        return out
    o, m, l = pl.pallas_call(
        kernel,
        grid=(S, Hkv, ns),
        out_shape=partials,
        compiler_params=params,
        interpret=st["interpret"],
        name=name,
    )(*args)
    if st["decode_combine"] == "xla":
        return xla_combine(qsl, o, m, l, T=T, G=G, dtype=q.dtype)
    R = max(2, next_pow2(G))
    cargs = (qsl, o, m, l)
    extra = () if out_init is None else (out_init,)
    return pl.pallas_call(
        functools.partial(_combine_kernel, G=G, R=R, num_splits=ns),
        grid=(S, Hkv),
        out_shape=out_shape,
        input_output_aliases={} if out_init is None else {len(cargs): 0},
        compiler_params=TritonParams(num_warps=st["combine_num_warps"], num_stages=1),
        interpret=st["interpret"],
        name=f"rpa_decode_combine_G{G}_D{D}_ns{ns}",
    )(*cargs, *extra)
