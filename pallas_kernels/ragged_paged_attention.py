"""Ragged paged attention as Pallas kernels lowered through Triton (NVIDIA GPUs, sm80+; tuned for H100).

Same contract as `reference.ragged_paged_attention_reference` (read its docstring): packed queries
`q[T, Hq, D]` with `query_start_loc[S+1]`, the stacked KV cache `[L, num_blocks, Hkv, block_size, D]`
plus a (possibly traced) `layer` index, `kv_lens[S]` that already count this step's tokens, and
`block_tables[S, P]`. Rows at or past `query_start_loc[S]` come back as zeros, as in the reference.

Two kernels, both on the full stacked cache (the layer is picked inside the kernel, never sliced out):

- decode (`decode_only=True`, one query token per sequence): grid (sequence, KV head, KV split). One
  program holds all `G = Hq / Hkv` query heads of its KV head as the rows of one tile (padded to 16
  rows, the smallest tensor-core tile), so each KV page is read once per step. Splits
  (flash-decoding) give long contexts with few sequences enough programs; they interleave (split j
  takes compute blocks j, j + NS, ...), so block addresses need no kv_lens load and any length
  splits evenly. A second Pallas kernel (grid (sequence, KV head)) merges the splits. The last
  kernel writes every output row (zeros where no sequence owns one): a decode step is one or two
  kernel launches and nothing else (no zero-fill, no scatter).
- general (mixed prefill chunks and decodes): grid (work item, KV head); a work item is one block of
  `block_q` query tokens of one sequence; the jnp wrapper builds the work list
  (`_work_list`) and passes it as an int32 array. Causal (and sliding-window) masks per row.

Both loop over the needed KV in compute blocks of `pages_per_compute_block * block_size` tokens with
an online (base-2) softmax in float32. KV rows are fetched with masked gathers, so slots past a
sequence's length and pages past its table are never read (NaN garbage there cannot leak).

Everything imports only JAX. `interpret=True` runs the same kernels on any backend (CPU tests).
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from . import tuned_block_sizes

# jax >= 0.10 names it `CompilerParams`; older releases called it `TritonCompilerParams`. Passing it
# is also what selects the Triton lowering (without it, jax 0.10+ may pick Mosaic GPU).
_TritonParams = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams")

# jax 0.11.2 warns at every lowering that the Pallas Triton backend is deprecated; filter exactly
# that message (the README's "Lowering choice" section tracks the Mosaic GPU question).
warnings.filterwarnings(
    "ignore", message="The Pallas Triton backend is deprecated", category=DeprecationWarning
)

SUPPORTED_HEAD_DIMS = (32, 64, 128, 256)
SUPPORTED_DTYPES = ("bfloat16", "float16", "float32")

_NEG = -1e30  # logit of a masked key: finite, so the running max never sees inf - inf
_LOG2E = math.log2(math.e)
_HIGHEST = lax.Precision.HIGHEST  # Triton lowering: f32 operands -> IEEE (DEFAULT would be TF32)


def _is_pow2(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x > 0 and (x & (x - 1)) == 0


def _log2(x: int) -> int:
    return x.bit_length() - 1


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


# --------------------------------------------------------------------------------------------------
# Kernel bodies (run per program, on refs).
# --------------------------------------------------------------------------------------------------


def _attend(
    q,  # [M, D] query rows, cache dtype
    row_pos,  # [M] int32 absolute position of each row (-1: sees nothing)
    kv_lo,  # int32 scalar: first KV token this program may need
    kv_hi,  # int32 scalar: one past the last KV token this program may need
    start,  # int32 scalar: first token of the first compute block (page-aligned)
    n_steps,  # int32 scalar: compute blocks to visit
    *,
    block_stride: int,  # tokens from one visited block to the next (block_k: contiguous)
    k_ref,  # [L, N, Hkv, bs, D]
    v_ref,  # [L, N, Hkv, bs, D]
    bt_ref,  # [S, P] int32
    layer,  # int32 scalar
    seq,  # int32 scalar
    kvh,  # int32 scalar
    block_size: int,
    block_k: int,
    scale_log2: float,
    sliding_window: int | None,
):
    """Online softmax over the KV tokens in [kv_lo, kv_hi) of `seq` that lie in the compute blocks
    starting at `start + i * block_stride`, i < n_steps; returns (acc [M, D] f32, m [M], l [M]).

    `acc` is unnormalised, `m` is the running max in log2 units, `l` the running sum of exp2.
    """
    M, D = q.shape
    P = bt_ref.shape[1]
    num_blocks = k_ref.shape[1]
    lg_bs = _log2(block_size)
    offs = jnp.arange(block_k, dtype=jnp.int32)
    d = jnp.arange(D, dtype=jnp.int32)
    zero = jnp.zeros((), k_ref.dtype)

    def body(i, carry):
        acc, m, l = carry
        tok = start + i * block_stride + offs  # [BK] absolute token positions
        live = (tok >= kv_lo) & (tok < kv_hi)
        # The table load is unmasked (every slot of the row is addressable), so it does not wait for
        # kv_lens; entries past the sequence's pages may be garbage: clipped, and their K/V masked.
        page_slot = jnp.clip(tok >> lg_bs, 0, P - 1)
        page = plgpu.load(bt_ref.at[seq, page_slot])  # [BK]
        page = jnp.clip(page, 0, num_blocks - 1)  # memory-safe even for a corrupt table
        slot = tok & (block_size - 1)
        live_kd = jnp.broadcast_to(live[:, None], (block_k, D))
        idx = (layer, page[:, None], kvh, slot[:, None], d[None, :])
        k = plgpu.load(k_ref.at[idx], mask=live_kd, other=zero)  # [BK, D]
        v = plgpu.load(v_ref.at[idx], mask=live_kd, other=zero)  # [BK, D]
        s = lax.dot_general(
            q, k, (((1,), (1,)), ((), ())), precision=_HIGHEST, preferred_element_type=jnp.float32
        )  # [M, BK]
        s = s * scale_log2
        visible = (tok[None, :] <= row_pos[:, None]) & live[None, :]
        if sliding_window is not None:
            visible = visible & (tok[None, :] > row_pos[:, None] - sliding_window)
        s = jnp.where(visible, s, _NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_new)
        p = jnp.where(visible, jnp.exp2(s - m_new[:, None]), 0.0)
        l_new = l * alpha + jnp.sum(p, axis=1)
        pv = lax.dot_general(
            p.astype(v.dtype),
            v,
            (((1,), (0,)), ((), ())),
            precision=_HIGHEST,
            preferred_element_type=jnp.float32,
        )  # [M, D]
        return acc * alpha[:, None] + pv, m_new, l_new

    init = (
        jnp.zeros((M, D), jnp.float32),
        jnp.full((M,), _NEG, jnp.float32),
        jnp.zeros((M,), jnp.float32),
    )
    return lax.fori_loop(0, n_steps, body, init)


def _normalize(acc, l):
    return acc / jnp.where(l == 0.0, 1.0, l)[:, None]


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
    k_ref,  # [L, N, Hkv, bs, D]
    v_ref,  # [L, N, Hkv, bs, D]
    *refs,  # splits == 1: ([out_init,] out [T, Hq, D]); else (o [S, Hkv, NS, M, D], m, l [S, Hkv, NS, M])
    G: int,
    M: int,
    num_splits: int,
    block_size: int,
    block_k: int,
    scale_log2: float,
    sliding_window: int | None,
):
    s, kvh, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    T, Hq, D = q_ref.shape
    layer = jnp.clip(layer_ref[0], 0, k_ref.shape[0] - 1)
    q_start, q_end = qsl_ref[s], qsl_ref[s + 1]
    q_total = qsl_ref[qsl_ref.shape[0] - 1] if num_splits == 1 else None  # for the zero rows
    q_len = q_end - q_start
    kv_len = jnp.where(q_len > 0, kv_lens_ref[s], 0)
    row = jnp.clip(q_end - 1, 0, T - 1)  # the sequence's (last) query row

    r = jnp.arange(M, dtype=jnp.int32)
    d = jnp.arange(D, dtype=jnp.int32)
    head_ok = r < G
    head = kvh * G + jnp.minimum(r, G - 1)  # [M] q head of each tile row (padding rows repeat)
    ok_md = jnp.broadcast_to(head_ok[:, None], (M, D))
    q = plgpu.load(q_ref.at[row, head[:, None], d[None, :]], mask=ok_md, other=jnp.zeros((), q_ref.dtype))

    # Splits interleave: split j visits compute blocks j, j + NS, j + 2 NS, ... of the sequence's KV
    # (from the window's first page). Without a window the block addresses depend on the program
    # id alone, so the block-table loads need not wait for kv_lens; any kv_len splits evenly.
    if sliding_window is None:
        lo, base = 0, 0
    else:
        lo = jnp.maximum(kv_len - sliding_window, 0)
        base = (lo >> _log2(block_size)) << _log2(block_size)
    n_blocks = (jnp.maximum(kv_len - base, 0) + block_k - 1) >> _log2(block_k)
    n_steps = jnp.maximum(n_blocks - split + num_splits - 1, 0) >> _log2(num_splits)
    row_pos = jnp.broadcast_to(kv_len - 1, (M,))
    acc, m, l = _attend(
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
    )

    if num_splits == 1:
        out_ref = refs[-1]  # refs[0] is the aliased initial buffer when there are two
        store_ok = head_ok & (q_len > 0)
        dst = jnp.where(store_ok, head, Hq)  # masked rows point past the array: never collide
        plgpu.store(
            out_ref.at[row, dst[:, None], d[None, :]],
            _normalize(acc, l).astype(out_ref.dtype),
            mask=jnp.broadcast_to(store_ok[:, None], (M, D)),
        )
        _zero_unowned_rows(out_ref, s, kvh, q_start, q_end, q_total, bt_ref.shape[0], G=G, R=M)
    else:
        o_ref, m_ref, l_ref = refs
        plgpu.store(o_ref.at[s, kvh, split, r[:, None], d[None, :]], acc, mask=ok_md)
        plgpu.store(m_ref.at[s, kvh, split, r], m, mask=head_ok)
        plgpu.store(l_ref.at[s, kvh, split, r], l, mask=head_ok)


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
    """One program per (sequence, KV head): merge the splits' partials, write the G output heads of
    the sequence's row and zero its share of the unowned rows. The split loop is unrolled so all
    loads are in flight at once (they are independent)."""
    out_ref = refs[-1]
    s, kvh = pl.program_id(0), pl.program_id(1)
    T, Hq, D = out_ref.shape
    g = jnp.arange(R, dtype=jnp.int32)
    d = jnp.arange(D, dtype=jnp.int32)
    ok = g < G
    ok_rd = jnp.broadcast_to(ok[:, None], (R, D))
    S = qsl_ref.shape[0] - 1
    q_start, q_end, q_total = qsl_ref[s], qsl_ref[s + 1], qsl_ref[S]
    ms = [plgpu.load(m_ref.at[s, kvh, j, g], mask=ok, other=_NEG) for j in range(num_splits)]
    ls = [plgpu.load(l_ref.at[s, kvh, j, g], mask=ok, other=0.0) for j in range(num_splits)]
    os_ = [
        plgpu.load(o_ref.at[s, kvh, j, g[:, None], d[None, :]], mask=ok_rd, other=0.0)
        for j in range(num_splits)
    ]
    m_all = functools.reduce(jnp.maximum, ms)  # [R]
    acc = jnp.zeros((R, D), jnp.float32)
    l_all = jnp.zeros((R,), jnp.float32)
    for m_j, l_j, o_j in zip(ms, ls, os_):
        w = jnp.exp2(m_j - m_all)  # empty splits: m_j = _NEG, l_j = 0, o_j = 0
        acc = acc + w[:, None] * o_j
        l_all = l_all + w * l_j

    q_len = q_end - q_start
    row = jnp.clip(q_end - 1, 0, T - 1)
    store_ok = ok & (q_len > 0)
    dst = jnp.where(store_ok, kvh * G + g, Hq)  # masked rows point past the array: never collide
    plgpu.store(
        out_ref.at[row, dst[:, None], d[None, :]],
        _normalize(acc, l_all).astype(out_ref.dtype),
        mask=jnp.broadcast_to(store_ok[:, None], (R, D)),
    )
    _zero_unowned_rows(out_ref, s, kvh, q_start, q_end, q_total, S, G=G, R=R)


def _general_kernel(
    layer_ref,  # [1] int32
    qsl_ref,  # [S + 1] int32
    kv_lens_ref,  # [S] int32
    bt_ref,  # [S, P] int32
    work_ref,  # [2, W] int32: (sequence, query block index) per work item
    q_ref,  # [T, Hq, D]
    k_ref,  # [L, N, Hkv, bs, D]
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
    sliding_window: int | None,
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
    t = r >> _log2(Gp)  # token within the block
    g = r & (Gp - 1)  # q head within the KV head's group
    ok = (t < n_rows) & (g < G)
    ok_md = jnp.broadcast_to(ok[:, None], (M, D))
    tok_row = jnp.clip(q_start + first + t, 0, T - 1)
    head = kvh * G + jnp.minimum(g, G - 1)
    q = plgpu.load(
        q_ref.at[tok_row[:, None], head[:, None], d[None, :]], mask=ok_md, other=jnp.zeros((), q_ref.dtype)
    )  # [M, D]

    pos0 = kv_len - q_len + first  # absolute position of the block's first row
    row_pos = jnp.where(ok, pos0 + t, -1)
    kv_hi = jnp.where(n_rows > 0, pos0 + n_rows, 0)
    kv_lo = 0 if sliding_window is None else jnp.maximum(pos0 - sliding_window + 1, 0)
    start = (kv_lo >> _log2(block_size)) << _log2(block_size)  # page-aligned first token
    n_steps = (jnp.maximum(kv_hi - start, 0) + block_k - 1) >> _log2(block_k)
    acc, _, l = _attend(
        q,
        row_pos,
        kv_lo,
        kv_hi,
        start,
        n_steps,
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
    )
    dst = jnp.where(ok, tok_row, T)  # masked rows point past the array: never collide
    plgpu.store(
        out_ref.at[dst[:, None], head[:, None], d[None, :]],
        _normalize(acc, l).astype(out_ref.dtype),
        mask=ok_md,
    )


# --------------------------------------------------------------------------------------------------
# Wrappers (jnp): grids, work list, split combine.
# --------------------------------------------------------------------------------------------------


def _work_list(
    query_start_loc: jax.Array,  # [S + 1] int32
    num_work: int,
    block_q: int,
) -> jax.Array:  # [2, num_work] int32: (sequence, query block) per program
    """Map program ids to (sequence, query block); ids past the last block get an empty block."""
    S = query_start_loc.shape[0] - 1
    q_lens = jnp.maximum(query_start_loc[1:] - query_start_loc[:-1], 0)
    n_blocks = (q_lens + block_q - 1) // block_q  # [S]
    ends = jnp.cumsum(n_blocks)  # [S]
    w = jnp.arange(num_work, dtype=jnp.int32)
    seq = jnp.minimum(jnp.searchsorted(ends, w, side="right"), S - 1).astype(jnp.int32)
    qblk = w - (ends[seq] - n_blocks[seq])
    return jnp.stack([seq, qblk.astype(jnp.int32)])


def _decode_call(q, k_pages, v_pages, block_tables, kv_lens, qsl, layer, out_init, *, st):
    """Decode path: one kernel (no split) or the split kernel plus the combine kernel. The final
    kernel writes every output row (zeros where no sequence owns it), so no zero-filled buffer is
    needed; `out_init` (tests only) is aliased to the output when given."""
    T, Hq, D = q.shape
    Hkv = k_pages.shape[2]
    S = block_tables.shape[0]
    G = Hq // Hkv
    M = max(16, _next_pow2(G))
    ns = st["num_kv_splits"]
    kernel = functools.partial(
        _decode_kernel,
        G=G,
        M=M,
        num_splits=ns,
        block_size=st["block_size"],
        block_k=st["decode_block_k"],
        scale_log2=st["scale_log2"],
        sliding_window=st["sliding_window"],
    )
    params = _TritonParams(num_warps=st["decode_num_warps"], num_stages=st["decode_num_stages"])
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
    o, m, l = pl.pallas_call(
        kernel,
        grid=(S, Hkv, ns),
        out_shape=[
            jax.ShapeDtypeStruct((S, Hkv, ns, M, D), jnp.float32),
            jax.ShapeDtypeStruct((S, Hkv, ns, M), jnp.float32),
            jax.ShapeDtypeStruct((S, Hkv, ns, M), jnp.float32),
        ],
        compiler_params=params,
        interpret=st["interpret"],
        name=name,
    )(*args)
    R = max(2, _next_pow2(G))
    cargs = (qsl, o, m, l)
    extra = () if out_init is None else (out_init,)
    return pl.pallas_call(
        functools.partial(_combine_kernel, G=G, R=R, num_splits=ns),
        grid=(S, Hkv),
        out_shape=out_shape,
        input_output_aliases={} if out_init is None else {len(cargs): 0},
        compiler_params=_TritonParams(num_warps=st["combine_num_warps"], num_stages=1),
        interpret=st["interpret"],
        name=f"rpa_decode_combine_G{G}_D{D}_ns{ns}",
    )(*cargs, *extra)


def _general_call(q, k_pages, v_pages, block_tables, kv_lens, qsl, layer, out_init, *, st):
    T, Hq, D = q.shape
    Hkv = k_pages.shape[2]
    S = block_tables.shape[0]
    G = Hq // Hkv
    Gp = _next_pow2(G)
    block_q = st["block_q"]
    num_work = max(1, min(T // block_q + S, T))
    work = _work_list(qsl, num_work, block_q)
    kernel = functools.partial(
        _general_kernel,
        G=G,
        Gp=Gp,
        block_q=block_q,
        block_size=st["block_size"],
        block_k=st["block_k"],
        scale_log2=st["scale_log2"],
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
        compiler_params=_TritonParams(num_warps=st["num_warps"], num_stages=st["num_stages"]),
        interpret=st["interpret"],
        name=f"rpa_general_G{G}_D{D}_bs{st['block_size']}_bq{block_q}_bk{st['block_k']}",
    )(*args, out_init)


@functools.partial(jax.jit, static_argnames=("static",))
def _rpa_jit(q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer, out_init, *, static):
    """`out_init` [T, Hq, D] or None: a buffer the kernels write into (tests pass NaN to prove every
    owned row is written); None: the general path zero-fills one, the decode path writes every row.
    Nothing here launches a kernel of its own: the layer index is clipped inside the kernels."""
    st = dict(static)
    layer = jnp.asarray(layer, jnp.int32).reshape((1,))
    block_tables = block_tables.astype(jnp.int32)
    kv_lens = kv_lens.astype(jnp.int32)
    qsl = query_start_loc.astype(jnp.int32)
    call = _decode_call if st["decode_only"] else _general_call
    return call(q, k_pages, v_pages, block_tables, kv_lens, qsl, layer, out_init, st=st)


# --------------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------------


def _shape(x) -> tuple:
    return tuple(getattr(x, "shape", ()))


def _dtype_name(x) -> str:
    return jnp.dtype(x.dtype).name


def validate_inputs(
    q,  # [T, Hq, D]
    k_pages,  # [L, N, Hkv, bs, D]
    v_pages,  # [L, N, Hkv, bs, D]
    block_tables,  # [S, P] int
    kv_lens,  # [S] int
    query_start_loc,  # [S + 1] int
    layer=0,
    *,
    sm_scale: float | None = None,
    sliding_window: int | None = None,
    num_kv_splits: int | None = None,
    pages_per_compute_block: int | None = None,
    block_q: int | None = None,
) -> None:
    """Raise ValueError naming the bad argument (and its shape/dtype); checks static properties only,
    so it works on tracers too."""
    if len(_shape(q)) != 3:
        raise ValueError(f"q must be [T, Hq, D] (rank 3), got shape {_shape(q)}")
    for name, x in (("k_pages", k_pages), ("v_pages", v_pages)):
        if len(_shape(x)) != 5:
            raise ValueError(
                f"{name} must be [L, num_blocks, Hkv, block_size, D] (rank 5), got shape {_shape(x)}"
            )
    if _shape(k_pages) != _shape(v_pages):
        raise ValueError(
            f"k_pages and v_pages must have the same shape, got {_shape(k_pages)} and {_shape(v_pages)}"
        )
    T, Hq, D = _shape(q)
    L, N, Hkv, bs, Dk = _shape(k_pages)
    if _dtype_name(q) not in SUPPORTED_DTYPES:
        raise ValueError(f"q dtype {_dtype_name(q)} unsupported; use one of {SUPPORTED_DTYPES}")
    if _dtype_name(k_pages) != _dtype_name(q) or _dtype_name(v_pages) != _dtype_name(q):
        raise ValueError(
            "dtype mismatch: q, k_pages and v_pages must share one dtype, got "
            f"q {_dtype_name(q)}, k_pages {_dtype_name(k_pages)}, v_pages {_dtype_name(v_pages)}"
        )
    if Dk != D:
        raise ValueError(f"head dim mismatch: q {_shape(q)} has D={D}, k_pages {_shape(k_pages)} has D={Dk}")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim D={D} (q shape {_shape(q)}) unsupported; use one of {SUPPORTED_HEAD_DIMS}")
    if T < 1 or Hq < 1 or L < 1 or N < 1 or Hkv < 1:
        raise ValueError(f"empty dimension: q {_shape(q)}, k_pages {_shape(k_pages)}")
    if Hq % Hkv != 0:
        raise ValueError(
            f"Hq={Hq} (q shape {_shape(q)}) must be a multiple of Hkv={Hkv} (k_pages shape {_shape(k_pages)})"
        )
    if not _is_pow2(bs):
        raise ValueError(f"block_size={bs} (k_pages shape {_shape(k_pages)}) must be a power of two")
    if len(_shape(block_tables)) != 2:
        raise ValueError(f"block_tables must be [S, P] (rank 2), got shape {_shape(block_tables)}")
    S, P = _shape(block_tables)
    if S < 1 or P < 1:
        raise ValueError(f"block_tables shape {_shape(block_tables)} has an empty dimension")
    if _shape(kv_lens) != (S,):
        raise ValueError(
            f"kv_lens shape {_shape(kv_lens)} must be (S,) = ({S},) to match block_tables {_shape(block_tables)}"
        )
    if _shape(query_start_loc) != (S + 1,):
        raise ValueError(
            f"query_start_loc shape {_shape(query_start_loc)} must be (S + 1,) = ({S + 1},) to match "
            f"block_tables {_shape(block_tables)}"
        )
    for name, x in (("block_tables", block_tables), ("kv_lens", kv_lens), ("query_start_loc", query_start_loc)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be an integer array (int32), got dtype {_dtype_name(x)}")
    if isinstance(layer, (bool, float)):
        raise ValueError(f"layer must be an int or an int32 scalar array, got {layer!r}")
    if isinstance(layer, numbers.Integral):
        if not 0 <= layer < L:
            raise ValueError(f"layer={layer} out of range for k_pages with L={L} layers")
    else:
        if _shape(layer) not in ((), (1,)) or not jnp.issubdtype(layer.dtype, jnp.integer):
            raise ValueError(
                f"layer must be an integer scalar, got shape {_shape(layer)} dtype {getattr(layer, 'dtype', None)}"
            )
    if sm_scale is not None and not (
        isinstance(sm_scale, numbers.Real) and not isinstance(sm_scale, bool) and sm_scale > 0
    ):
        raise ValueError(f"sm_scale must be a positive float, got {sm_scale!r}")
    if sliding_window is not None and not (
        isinstance(sliding_window, numbers.Integral) and not isinstance(sliding_window, bool) and sliding_window >= 1
    ):
        raise ValueError(f"sliding_window must be a positive int or None, got {sliding_window!r}")
    if num_kv_splits is not None and not _is_pow2(num_kv_splits):
        raise ValueError(f"num_kv_splits must be a power of two >= 1, got {num_kv_splits!r}")
    if pages_per_compute_block is not None and not _is_pow2(pages_per_compute_block):
        raise ValueError(f"pages_per_compute_block must be a power of two >= 1, got {pages_per_compute_block!r}")
    if block_q is not None and not _is_pow2(block_q):
        raise ValueError(f"block_q must be a power of two >= 1, got {block_q!r}")


@functools.lru_cache(maxsize=None)
def _device_num_sms() -> int:
    """Streaming multiprocessors of the default GPU (sizes the split count); the table's default
    (an H100's 132) on other backends or when the runtime does not say."""
    try:
        dev = jax.devices()[0]
        if dev.platform == "gpu":
            return int(getattr(dev, "core_count", 0) or tuned_block_sizes.DEFAULT_NUM_SMS)
    except Exception:  # noqa: BLE001 -- no backend yet: fall back to the default
        pass
    return tuned_block_sizes.DEFAULT_NUM_SMS


def _concrete_q_lens(query_start_loc):
    """The per-sequence query counts when query_start_loc is concrete, else None (traced)."""
    try:
        import numpy as np  # numpy ships with jax

        qsl = np.asarray(query_start_loc)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    return qsl[1:] - qsl[:-1]


def resolve_decode_only(decode_only: bool | None, query_start_loc) -> bool:
    """The static kernel choice: True/False as given (True is checked when `query_start_loc` is
    concrete); None -> decode iff `query_start_loc` is concrete and no sequence has > 1 query row."""
    if decode_only is False:
        return False
    q_lens = _concrete_q_lens(query_start_loc)
    if decode_only is None:
        return q_lens is not None and bool((q_lens <= 1).all())
    if q_lens is not None and not bool((q_lens <= 1).all()):
        raise ValueError(
            "decode_only=True needs at most one query row per sequence, but query_start_loc gives "
            f"query lengths {q_lens.tolist()}"
        )
    return True


def ragged_paged_attention(
    q: jax.Array,  # [T, Hq, D]
    k_pages: jax.Array,  # [L, num_blocks, Hkv, block_size, D]
    v_pages: jax.Array,  # [L, num_blocks, Hkv, block_size, D]
    block_tables: jax.Array,  # [S, P] int32
    kv_lens: jax.Array,  # [S] int32, counting this step's tokens
    query_start_loc: jax.Array,  # [S + 1] int32
    layer: jax.Array | int = 0,  # int or int32 scalar (may be traced)
    *,
    sm_scale: float | None = None,
    sliding_window: int | None = None,
    decode_only: bool | None = False,
    num_kv_splits: int | None = None,
    pages_per_compute_block: int | None = None,
    block_q: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    interpret: bool = False,
    _out_init: jax.Array | None = None,  # private (tests): [T, Hq, D] buffer instead of zeros
) -> jax.Array:  # [T, Hq, D], q.dtype; rows past query_start_loc[S] are zeros
    """Ragged paged attention (Pallas/Triton); same results as `ragged_paged_attention_reference`.

    Works eagerly and inside the caller's `jax.jit` (the arrays may be traced; everything after the
    keyword `*` is static). Tuning knobs left as None come from `tuned_block_sizes.lookup`.

    decode_only: True  -> decode kernel; every sequence must have 0 or 1 query rows (with more, only
                          its last row is computed and the others stay zero);
                 False -> general kernel (prefill chunks and decodes mixed; always correct);
                 None  -> decode kernel when `query_start_loc` is concrete and every sequence has at
                          most one query row, else the general kernel.
    num_kv_splits: flash-decoding splits of the decode kernel (power of two; None: from the batch
        shape and the card's SM count).
    pages_per_compute_block: KV pages per loop step (both kernels).
    block_q: query tokens per general-kernel program (power of two).
    num_warps / num_stages: Triton launch parameters (both kernels).
    interpret: run the kernels in the Pallas interpreter (any backend, slow).
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
        num_kv_splits=num_kv_splits,
        pages_per_compute_block=pages_per_compute_block,
        block_q=block_q,
    )
    T, Hq, D = q.shape
    _, _, Hkv, bs, _ = k_pages.shape
    S, P = block_tables.shape
    G = Hq // Hkv

    decode_only = resolve_decode_only(decode_only, query_start_loc)

    cfg = tuned_block_sizes.lookup(D, bs, _dtype_name(q), G)
    min_pages = max(1, 16 // bs)  # a compute block must hold >= 16 tokens (tensor-core tile)
    dec_ppcb = int(max(pages_per_compute_block or cfg.decode_pages_per_compute_block, min_pages))
    gen_ppcb = int(max(pages_per_compute_block or cfg.pages_per_compute_block, min_pages))
    Gp = _next_pow2(G)
    if block_q is None:
        block_q = max(1, cfg.block_q_rows // Gp)
    block_q = max(block_q, max(1, 16 // Gp))  # >= 16 tile rows
    max_kv = P * bs if sliding_window is None else min(P * bs, sliding_window + bs)
    if num_kv_splits is None:
        num_kv_splits = tuned_block_sizes.choose_num_kv_splits(
            S, Hkv, max_kv, dec_ppcb * bs, cfg, num_sms=_device_num_sms()
        )
    if sm_scale is None:
        sm_scale = D**-0.5

    static = (
        ("decode_only", bool(decode_only)),
        ("block_size", bs),
        ("sliding_window", None if sliding_window is None else int(sliding_window)),
        ("scale_log2", float(sm_scale) * _LOG2E),
        ("num_kv_splits", int(num_kv_splits)),
        ("decode_block_k", dec_ppcb * bs),
        ("decode_num_warps", int(num_warps or cfg.decode_num_warps)),
        ("decode_num_stages", int(num_stages or cfg.decode_num_stages)),
        ("combine_num_warps", int(cfg.combine_num_warps)),
        ("block_k", gen_ppcb * bs),
        ("block_q", int(block_q)),
        ("num_warps", int(num_warps or cfg.num_warps)),
        ("num_stages", int(num_stages or cfg.num_stages)),
        ("interpret", bool(interpret)),
    )
    return _rpa_jit(
        q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer, _out_init, static=static
    )
