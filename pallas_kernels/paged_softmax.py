"""The loop both Pallas kernels share: an online softmax over paged KV, on refs (Triton lowering).

`attend(...)` visits compute blocks of `block_k` tokens of one sequence's pages, gathers the K/V
rows of one KV head with masked loads (slots outside the live range are never read), and keeps an
online softmax in base 2 and float32. Quantized (fp8) pages come as their bytes (uint8 refs,
`kv_quant.to_storage`): the loaded rows are reinterpreted as `page_dtype` and cast to the query
dtype (exact: every e4m3 value is a bf16, f16 and f32 value); their scales are folded into the
score scale (k) and into the output (v, `scale_rows`) by the callers. `TritonParams` is the
Pallas Triton compiler-params class of this jax version. Imports only JAX.
"""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import triton as plgpu

# jax >= 0.10 names it `CompilerParams`; older releases called it `TritonCompilerParams`. Passing it
# is also what selects the Triton lowering (without it, jax 0.10+ may pick Mosaic GPU).
TritonParams = getattr(plgpu, "CompilerParams", None) or plgpu.TritonCompilerParams

# jax 0.11.2 warns at every lowering that the Pallas Triton backend is deprecated; filter exactly
# that message (the README's "Lowering choice" section tracks the Mosaic GPU question).
warnings.filterwarnings(
    "ignore", message="The Pallas Triton backend is deprecated", category=DeprecationWarning
)

NEG = -1e30  # logit of a masked key: finite, so the running max never sees inf - inf
LOG2E = math.log2(math.e)
_HIGHEST = lax.Precision.HIGHEST  # Triton lowering: f32 operands -> IEEE (DEFAULT would be TF32)


def log2(x: int) -> int:
    return x.bit_length() - 1


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def attend(
    q,  # [M, D] query rows, the query dtype
    row_pos,  # [M] int32 absolute position of each row (-1: sees nothing)
    kv_lo,  # int32 scalar: first KV token this program may need
    kv_hi,  # int32 scalar: one past the last KV token this program may need
    start,  # int32 scalar: first token of the first compute block (page-aligned)
    n_steps,  # int32 scalar: compute blocks to visit
    *,
    block_stride: int,  # tokens from one visited block to the next (block_k: contiguous)
    k_ref,  # [L, N, Hkv, bs, D]: q's dtype, or uint8 (the bytes of page_dtype)
    v_ref,  # [L, N, Hkv, bs, D]
    bt_ref,  # [S, P] int32
    layer,  # int32 scalar
    seq,  # int32 scalar
    kvh,  # int32 scalar
    block_size: int,
    block_k: int,
    scale_log2: float,
    sliding_window: int | None,
    at_most_one_step: bool = False,
    masked: bool = True,
    carry=None,
    page_dtype: str | None = None,
):
    """Online softmax over the KV tokens in [kv_lo, kv_hi) of `seq` that lie in the compute blocks
    starting at `start + i * block_stride`, i < n_steps; returns (acc [M, D] f32, m [M], l [M]).

    `acc` is unnormalised, `m` is the running max in log2 units, `l` the running sum of exp2.
    `at_most_one_step` (static; the caller guarantees n_steps <= 1): no loop, one step whose masks
    do the bounds (a block past `kv_hi` reads no K/V and leaves the initial state), so its
    block-table load is issued without waiting for `n_steps` (for latency-bound small grids).
    `masked=False` (static; the caller guarantees every visited token is in [kv_lo, kv_hi) and
    visible to every row that matters): no masks on the loads and the scores, for the blocks of a
    prefill tile that lie wholly before its first row. `carry`: the (acc, m, l) to continue from
    (another `attend` over earlier blocks), instead of the empty state. `page_dtype` (static):
    the quantized dtype whose bytes the uint8 refs hold (None: the refs hold q's dtype).
    """
    M, D = q.shape
    P = bt_ref.shape[1]
    num_blocks = k_ref.shape[1]
    lg_bs = log2(block_size)
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
        idx = (layer, page[:, None], kvh, slot[:, None], d[None, :])
        if masked:
            live_kd = jnp.broadcast_to(live[:, None], (block_k, D))
            k = plgpu.load(k_ref.at[idx], mask=live_kd, other=zero)  # [BK, D]
            v = plgpu.load(v_ref.at[idx], mask=live_kd, other=zero)  # [BK, D]
        else:
            k = plgpu.load(k_ref.at[idx])  # [BK, D]
            v = plgpu.load(v_ref.at[idx])  # [BK, D]
        if page_dtype is not None:  # quantized pages: bytes -> float8 -> q's dtype
            k = lax.bitcast_convert_type(k, jnp.dtype(page_dtype)).astype(q.dtype)
            v = lax.bitcast_convert_type(v, jnp.dtype(page_dtype)).astype(q.dtype)
        s = lax.dot_general(
            q, k, (((1,), (1,)), ((), ())), precision=_HIGHEST, preferred_element_type=jnp.float32
        )  # [M, BK]
        s = s * scale_log2
        if masked:
            visible = (tok[None, :] <= row_pos[:, None]) & live[None, :]
            if sliding_window is not None:
                visible = visible & (tok[None, :] > row_pos[:, None] - sliding_window)
            s = jnp.where(visible, s, NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(s - m_new[:, None])
        if masked:
            p = jnp.where(visible, p, 0.0)
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
        carry
        if carry is not None
        else (
            jnp.zeros((M, D), jnp.float32),
            jnp.full((M,), NEG, jnp.float32),
            jnp.zeros((M,), jnp.float32),
        )
    )
    if at_most_one_step:
        return body(0, init)
    return lax.fori_loop(0, n_steps, body, init)


def normalize(acc, l):  # acc [M, D], l [M]: acc / l (rows that saw nothing stay 0)
    return acc / jnp.where(l == 0.0, 1.0, l)[:, None]


def scale_rows(acc, out_scale: float):  # acc [M, D] times a static scale (quantized V's)
    return acc if out_scale == 1.0 else acc * out_scale
