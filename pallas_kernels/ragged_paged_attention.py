"""Ragged paged attention as Pallas kernels lowered through Triton (NVIDIA GPUs, sm80+; H100-tuned).

The public entry point (a thin wrapper): validates the inputs, resolves the static choices (decode
or general path, tuned block sizes, KV split count) and calls one jitted function that runs

- `decode_attention.decode_call` (one query row per sequence: one kernel, or split kernel + combine
  kernel -- or + jnp combine fused by XLA, `decode_combine="xla"` -- for long contexts with few
  sequences, or one split kernel that merges its own splits, `decode_combine="fused"`, on small
  grids), or
- `general_attention.general_call` (prefill chunks and decodes mixed).

Same contract as `reference.ragged_paged_attention_reference` (read its docstring): packed queries
`q[T, Hq, D]` with `query_start_loc[S+1]`, the stacked KV cache
`[L, num_blocks, Hkv, block_size, D]` plus a (possibly traced) `layer` index, `kv_lens[S]` that
already count this step's tokens, and `block_tables[S, P]`. Rows at or past `query_start_loc[S]`
come back as zeros, as in the reference.
Both kernels work on the full stacked cache (the layer is picked inside the kernel, never sliced
out), loop over KV in compute blocks with an online base-2 softmax in float32, and fetch KV rows
with masked gathers, so slots past a sequence's length and pages past its table are never read.

Everything imports only JAX. `interpret=True` runs the same kernels on any backend (CPU tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import kv_quant, ragged_inputs, tuned_block_sizes
from .decode_attention import decode_call
from .general_attention import general_call
from .paged_softmax import LOG2E, TritonParams, next_pow2
from .ragged_inputs import check_decode_only, concrete_query_lens

_TritonParams = TritonParams  # the name tests and older callers import

SUPPORTED_HEAD_DIMS = (32, 64, 128, 256)
SUPPORTED_DTYPES = ("bfloat16", "float16", "float32")


@functools.partial(jax.jit, static_argnames=("static",))
def _rpa_jit(
    q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer, out_init, *, static
):
    """`out_init` [T, Hq, D] or None: a buffer the kernels write into (tests pass NaN to prove every
    owned row is written); None: the general path zero-fills one, the decode path writes every row.
    Nothing here launches a kernel of its own: the layer index is clipped inside the kernels."""
    st = dict(static)
    layer = jnp.asarray(layer, jnp.int32).reshape((1,))
    block_tables = block_tables.astype(jnp.int32)
    kv_lens = kv_lens.astype(jnp.int32)
    qsl = query_start_loc.astype(jnp.int32)
    call = decode_call if st["decode_only"] else general_call
    return call(q, k_pages, v_pages, block_tables, kv_lens, qsl, layer, out_init, st=st)


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
    decode_combine: str | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Raise ValueError naming the bad argument (and its shape/dtype); checks static properties
    only, so it works on tracers too (`ragged_inputs.validate_inputs` plus this backend's knobs)."""
    ragged_inputs.validate_inputs(
        q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer,
        sm_scale=sm_scale, sliding_window=sliding_window, head_dims=SUPPORTED_HEAD_DIMS,
        dtypes=SUPPORTED_DTYPES, block_size_power_of_two=True, backend="pallas",
        k_scale=k_scale, v_scale=v_scale,
    )  # fmt: skip
    ragged_inputs.check_power_of_two("num_kv_splits", num_kv_splits)
    ragged_inputs.check_power_of_two("pages_per_compute_block", pages_per_compute_block)
    ragged_inputs.check_power_of_two("block_q", block_q)
    if decode_combine is not None and decode_combine not in DECODE_COMBINES:
        raise ValueError(
            f"decode_combine must be None, 'kernel', 'xla' or 'fused', got {decode_combine!r}"
        )


@functools.cache
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


def resolve_decode_only(decode_only: bool | None, query_start_loc) -> bool:
    """The static kernel choice: True/False as given (True is checked when `query_start_loc` is
    concrete); None -> decode iff `query_start_loc` is concrete and every sequence has <= 1 query
    row."""
    if decode_only is False:
        return False
    if decode_only is None:
        q_lens = concrete_query_lens(query_start_loc)
        return q_lens is not None and bool((q_lens <= 1).all())
    check_decode_only(query_start_loc)
    return True


def decode_plan(
    S: int, Hkv: int, max_kv: int, block_size: int, cfg, *, num_kv_splits=None,
    pages_per_compute_block=None, num_stages=None, decode_combine=None, num_sms: int | None = None,
) -> tuple[int, int, int, str]:  # fmt: skip
    """(num_kv_splits, pages per compute block, num_stages, decode_combine) of the decode kernel.

    When the caller gave neither the split count nor the pages per block:
    1. on a grid of at most `cfg.one_block_max_programs` (sequence, KV head) pairs, both come from
       `tuned_block_sizes.one_block_split_plan` (one compute block per split, like JAX's op);
    2. else, where `tuned_block_sizes.fused_split_plan` applies (small grids whose table fits in
       one block per split), its plan, merged inside the kernel ("fused") unless the caller chose
       the combine.
    Otherwise the split count comes from `tuned_block_sizes.choose_num_kv_splits` unless given.
    When that is one split (a single kernel writes the output) and the grid is small (`S * Hkv` at
    most `cfg.single_pass_small_grid_programs`: the kernel is latency-bound), the config's
    single-pass knobs replace the decode ones (fewer, larger loop steps), unless the caller set
    them. The combine is `resolve_decode_combine`'s for the chosen split count."""
    num_sms = num_sms or _device_num_sms()
    min_pages = max(
        1, 16 // block_size
    )  # a compute block must hold >= 16 tokens (tensor-core tile)
    ppcb = int(max(pages_per_compute_block or cfg.decode_pages_per_compute_block, min_pages))
    stages = int(num_stages or cfg.decode_num_stages)
    if num_kv_splits is None and pages_per_compute_block is None:
        if S * Hkv <= cfg.one_block_max_programs:
            ns, ppcb1 = tuned_block_sizes.one_block_split_plan(
                max_kv, block_size, min_pages, cfg.one_block_max_splits, cfg.one_block_max_pages
            )
            stages = int(num_stages or cfg.one_block_num_stages or cfg.decode_num_stages)
            return ns, ppcb1, stages, resolve_decode_combine(decode_combine, S, Hkv, ns, cfg)
        fused = tuned_block_sizes.fused_split_plan(S, Hkv, max_kv, block_size, ppcb, cfg, num_sms)
        if fused is not None:
            ns, ppcb1 = fused
            return ns, ppcb1, stages, decode_combine or "fused"
    if num_kv_splits is None:
        num_kv_splits = tuned_block_sizes.choose_num_kv_splits(
            S, Hkv, max_kv, ppcb * block_size, cfg, num_sms=num_sms
        )
    if num_kv_splits == 1 and S * Hkv <= cfg.single_pass_small_grid_programs:
        if pages_per_compute_block is None and cfg.single_pass_pages_per_compute_block:
            ppcb = int(max(cfg.single_pass_pages_per_compute_block, min_pages))
        if num_stages is None and cfg.single_pass_num_stages:
            stages = int(cfg.single_pass_num_stages)
    ns = int(num_kv_splits)
    return ns, ppcb, stages, resolve_decode_combine(decode_combine, S, Hkv, ns, cfg)


DECODE_COMBINES = ("kernel", "xla", "fused")


def resolve_decode_combine(
    decode_combine: str | None, S: int, Hkv: int, num_kv_splits: int, cfg
) -> str:
    """The static merge of the decode splits: "xla" (jnp ops in the same jit, fused by XLA),
    "kernel" (the Pallas combine kernel) or "fused" (the last split to finish merges, inside the
    decode kernel). None: `tuned_block_sizes.choose_decode_combine`. With one split nothing is
    merged (the decode kernel writes the output), so the answer is "kernel"."""
    if num_kv_splits == 1:
        return "kernel"
    if decode_combine is None:
        return tuned_block_sizes.choose_decode_combine(S, Hkv, num_kv_splits, cfg)
    return decode_combine


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
    decode_combine: str | None = None,
    unmasked_prefix: bool | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
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
    decode_combine: how the decode path merges its KV splits: "kernel" (a second Pallas kernel),
        "xla" (jnp ops that XLA fuses into the caller's jit), "fused" (inside the decode kernel:
        the last split of each (sequence, KV head) to finish merges; plus a zeroed counter array),
        None (`decode_plan`'s rule: "fused" with the fused small-grid plan, else "kernel", or "xla"
        on small grids where the table enables it). Ignored with one split.
    block_q: query tokens per general-kernel program (power of two).
    unmasked_prefix: general kernel: visit the KV blocks wholly before each tile's first row
        without masks (None: the table's; ignored with a sliding window).
    num_warps / num_stages: Triton launch parameters (both kernels).
    interpret: run the kernels in the Pallas interpreter (any backend, slow).
    k_scale / v_scale: the scales of float8 e4m3 pages (`kv_quant.py`; float pages ignore them).
    The kernels take fp8 pages as their bytes, cast the loaded K/V to the query dtype (exact) and
    fold the scales into the score scale and the output.
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
        decode_combine=decode_combine,
        k_scale=k_scale,
        v_scale=v_scale,
    )
    T, Hq, D = q.shape
    _, _, Hkv, bs, _ = k_pages.shape
    S, P = block_tables.shape
    G = Hq // Hkv
    quantized = kv_quant.is_quantized(k_pages.dtype)

    decode_only = resolve_decode_only(decode_only, query_start_loc)

    cfg = tuned_block_sizes.lookup(D, bs, ragged_inputs.dtype_name(q), G)
    min_pages = max(1, 16 // bs)  # a compute block must hold >= 16 tokens (tensor-core tile)
    gen_ppcb = int(max(pages_per_compute_block or cfg.pages_per_compute_block, min_pages))
    Gp = next_pow2(G)
    if block_q is None:
        block_q = max(1, cfg.block_q_rows // Gp)
    block_q = max(block_q, max(1, 16 // Gp))  # >= 16 tile rows
    max_kv = P * bs if sliding_window is None else min(P * bs, sliding_window + bs)
    num_kv_splits, dec_ppcb, dec_stages, combine = decode_plan(
        S, Hkv, max_kv, bs, cfg, num_kv_splits=num_kv_splits,
        pages_per_compute_block=pages_per_compute_block, num_stages=num_stages,
        decode_combine=decode_combine,
    )  # fmt: skip
    if sm_scale is None:
        sm_scale = D**-0.5

    static = (
        ("decode_only", bool(decode_only)),
        ("block_size", bs),
        ("sliding_window", None if sliding_window is None else int(sliding_window)),
        ("scale_log2", kv_quant.score_scale(float(sm_scale), k_pages, float(k_scale)) * LOG2E),
        ("out_scale", kv_quant.output_scale(v_pages, float(v_scale))),
        ("page_dtype", ragged_inputs.dtype_name(k_pages) if quantized else None),
        ("num_kv_splits", int(num_kv_splits)),
        ("decode_block_k", dec_ppcb * bs),
        ("decode_num_warps", int(num_warps or cfg.decode_num_warps)),
        ("decode_num_stages", dec_stages),
        ("combine_num_warps", int(cfg.combine_num_warps)),
        ("decode_combine", combine),
        ("block_k", gen_ppcb * bs),
        ("block_q", int(block_q)),
        ("num_warps", int(num_warps or cfg.num_warps)),
        ("num_stages", int(num_stages or cfg.num_stages)),
        (
            "unmasked_prefix",
            bool(cfg.unmasked_prefix if unmasked_prefix is None else unmasked_prefix),
        ),
        ("interpret", bool(interpret)),
    )
    # quantized pages go in as their bytes (kv_quant.py: no float8 array is materialized)
    k_in, v_in = kv_quant.to_storage(k_pages), kv_quant.to_storage(v_pages)
    return _rpa_jit(
        q, k_in, v_in, block_tables, kv_lens, query_start_loc, layer, _out_init, static=static
    )
