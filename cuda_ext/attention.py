"""Ragged paged attention through the CUDA kernels of `cuda_ext/csrc` (XLA FFI custom call).

Same contract as `pallas_kernels.reference.ragged_paged_attention_reference` (read its docstring):
packed queries `q[T, Hq, D]` with `query_start_loc[S + 1]`, the stacked KV cache
`[L, num_blocks, Hkv, block_size, D]` plus a (possibly traced) `layer` index passed to the kernel
as a device scalar (the cache is never sliced), `kv_lens[S]` counting this step's tokens,
`block_tables[S, P]`, causal attention within prefill chunks, GQA, optional sliding window. Rows at
or past `query_start_loc[S]` come back as zeros.

The query rows of each sequence are cut into tiles of `block_q` rows (`decode_only=True`: one row
per sequence, no work list to compute; otherwise `pallas_kernels.ragged_inputs.query_tiles`); one
CUDA program handles (tile, KV head, KV split) with all `G = Hq / Hkv` query heads of that KV head,
so each page is read once per tile. Tiles of one row (decode) with G <= 8 run a single-row kernel
(bf16/fp16 at D 64 or 128: `csrc/mma_decode_kernel.cuh`, on the tensor cores; otherwise
`csrc/row_attention_kernel.cuh`: K/V streamed into registers with 16-byte loads); other tiles the
multi-row kernel (shared-memory staging). With several KV splits (few programs, long contexts) a
second kernel merges the partial softmax states. This module chooses `block_q` and the split count
statically from the shapes; validation is `pallas_kernels.ragged_inputs`'.

fp8 pages (`kv_cache_dtype="fp8"`, `pallas_kernels.kv_quant`) go to the kernels as their bytes
with any query dtype; the CUDA-core kernels convert them as they read them (the tensor-core
decode kernel takes 16-bit pages only), with k_scale folded into the score scale and v_scale
into the output. Compiled with nvcc; not yet run on a GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import kv_quant, ragged_inputs
from pallas_kernels.ragged_inputs import (
    check_decode_only,
    int32_metadata,
    num_query_tiles,
    query_tiles,
)

from . import registry

SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
SUPPORTED_KV_DTYPES = ("float8_e4m3fn",)  # quantized pages read with any of SUPPORTED_DTYPES
MAX_SPLITS = 64  # the kernel's limit
TARGET_PROGRAMS = 4 * 132  # ~4 programs per SM of an H100/H200 before splitting the KV further
ROW_KERNEL_MAX_G = 8  # kRowKernelMaxG in row_attention_kernel.cuh
# Single-row kernel: ~3 programs of 128 threads fit an SM (155 registers for bf16 D=128 G=4), so
# 8 programs per SM is ~2.7 waves (a smaller last-wave loss than ~1.3 waves at 4 per SM); a split
# streams at least 256 tokens. Rule of thumb, not measured yet.
ROW_TARGET_PROGRAMS = 8 * 132
ROW_MIN_TOKENS_PER_SPLIT = 256
# Tensor-core single-row kernel (`csrc/mma_decode_kernel.cuh`; bf16/fp16, D 64 or 128): 3 programs
# fit an SM (~70 KiB of shared memory and 168 registers a thread at D = 128), so 3 * 132 program
# slots on an H100/H200. Measured on an H200 (bench/gpu_runs/2026-11-28_h200x2_kernels.md).
MMA_HEAD_DIMS = (64, 128)
MMA_SLOTS = 3 * 132
# Values of the `decode_kernel` FFI attribute (kDecodeKernel* in csrc/paged_attention_kernels.cuh).
DECODE_KERNELS = {"auto": 0, "cuda-cores": 1}


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    block_q: int  # query rows per tile
    num_tiles: int  # static bound on the number of tiles (grid x)
    num_splits: int  # KV splits per tile (grid z)
    max_rows: int  # block_q * G: rows of one program

    def scratch_shapes(self, num_kv_heads: int, head_dim: int) -> tuple[tuple[int], tuple[int]]:
        """Flat float32 shapes of the split partials (o and (m, l)); size 1 when not split."""
        if self.num_splits == 1:
            return (1,), (1,)
        rows = self.num_tiles * num_kv_heads * self.num_splits * self.max_rows
        return (rows * head_dim,), (rows * 2,)


def block_k(head_dim: int, itemsize: int) -> int:
    """Keys per shared-memory block; mirrors `block_k<T, D>()` in paged_attention_kernels.cuh."""
    return min(64, max(16, 8192 // (head_dim * itemsize)))


def choose_num_splits(num_programs: int, max_kv_tokens: int, bk: int) -> int:
    """Multi-row kernel: split the KV range only when the grid is too small to fill the GPU, keeping
    >= 2 key blocks per split."""
    if num_programs >= TARGET_PROGRAMS:
        return 1
    blocks = -(-max_kv_tokens // bk)
    return max(1, min(16, -(-TARGET_PROGRAMS // num_programs), blocks // 2))


def choose_row_splits(num_programs: int, max_kv_tokens: int) -> int:
    """Single-row (decode) kernel: split until the grid has ~ROW_TARGET_PROGRAMS programs, each
    split streaming >= ROW_MIN_TOKENS_PER_SPLIT tokens (one split needs no combine kernel), at
    most 16."""
    if num_programs >= ROW_TARGET_PROGRAMS:
        return 1
    by_grid = -(-ROW_TARGET_PROGRAMS // num_programs)
    return max(1, min(16, by_grid, max_kv_tokens // ROW_MIN_TOKENS_PER_SPLIT))


def uses_row_kernel(block_q: int, G: int) -> bool:
    """Whether the handler runs a single-row kernel (tiles of one row, G <= 8)."""
    return block_q == 1 and G <= ROW_KERNEL_MAX_G


def uses_mma_row_kernel(
    block_q: int, G: int, D: int, itemsize: int, decode_kernel: str, kv_itemsize: int | None = None
) -> bool:
    """Whether single-row tiles run on the tensor cores (16-bit queries and pages, D 64 or 128),
    mirroring `launch_single_row` in csrc/ragged_paged_attention.cu."""
    return (
        uses_row_kernel(block_q, G)
        and itemsize == 2
        and (kv_itemsize or itemsize) == itemsize
        and D in MMA_HEAD_DIMS
        and decode_kernel != "cuda-cores"
    )


def choose_mma_splits(num_programs: int, max_kv_tokens: int) -> int:
    """Tensor-core single-row kernel: the split count (1 to 16, each split >= 256 tokens) whose
    grid fills its last wave of MMA_SLOTS programs best (the smallest such count, unless a larger
    one fills it > 2 points better); 1 when the grid already spans >= 4 waves. E.g. batch 16 x
    8 KV heads: 3 splits (384 programs, 0.97 of one wave; 2 splits leave a third of the slots idle).
    """
    cap = max(1, min(16, max_kv_tokens // ROW_MIN_TOKENS_PER_SPLIT))
    programs = max(1, num_programs)
    if programs >= 4 * MMA_SLOTS:
        return 1
    best, best_fill = 1, 0.0
    for z in range(1, cap + 1):
        waves = programs * z / MMA_SLOTS
        fill = waves / math.ceil(waves)
        if fill > best_fill + 0.02:
            best, best_fill = z, fill
    return best


def plan_launch(
    T: int,
    S: int,
    P: int,
    Hq: int,
    Hkv: int,
    D: int,
    block_size: int,
    itemsize: int,
    *,
    decode_only: bool,
    block_q: int | None = None,
    num_kv_splits: int | None = None,
    decode_kernel: str = "auto",
    kv_itemsize: int | None = None,
) -> LaunchPlan:
    """`itemsize`: the query dtype's; `kv_itemsize`: the pages' (None: the same)."""
    G = Hq // Hkv
    kv_itemsize = kv_itemsize or itemsize
    if decode_only:
        bq = 1
        num_tiles = S
    else:
        target_rows = 32 if D <= 128 else 16
        bq = block_q or max(1, min(T, target_rows // G))
        num_tiles = num_query_tiles(T, S, bq)
    if num_kv_splits:
        splits = num_kv_splits
    elif uses_mma_row_kernel(bq, G, D, itemsize, decode_kernel, kv_itemsize):
        splits = choose_mma_splits(num_tiles * Hkv, P * block_size)
    elif uses_row_kernel(bq, G):
        splits = choose_row_splits(num_tiles * Hkv, P * block_size)
    else:
        splits = choose_num_splits(num_tiles * Hkv, P * block_size, block_k(D, kv_itemsize))
    return LaunchPlan(block_q=bq, num_tiles=num_tiles, num_splits=splits, max_rows=bq * G)


def work_list(
    query_start_loc: jax.Array, block_q: int, num_tiles: int
) -> jax.Array:  # [num_tiles, 2]
    """Tile i -> (sequence or -1, first row of the tile within that sequence)."""
    tiles = query_tiles(query_start_loc, block_q, num_tiles)
    seq = jnp.where(tiles.valid, tiles.seq, -1)
    first_row = jnp.where(tiles.valid, tiles.index * block_q, 0)
    return jnp.stack([seq, first_row], axis=-1).astype(jnp.int32)


def decode_work_list(S: int) -> np.ndarray:  # [S, 2]
    """Decode: tile s is sequence s's single row (a sequence without rows is skipped in-kernel)."""
    return np.stack([np.arange(S, dtype=np.int32), np.zeros(S, np.int32)], axis=-1)


# --------------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------------


def validate_inputs(
    q,  # [T, Hq, D]
    k_pages,  # [L, N, Hkv, bs, D]
    v_pages,  # [L, N, Hkv, bs, D]
    block_tables,  # [S, P] int
    kv_lens,  # [S] int
    query_start_loc,  # [S + 1] int
    layer=0,
    *,
    sm_scale=None,
    sliding_window=None,
    block_q=None,
    num_kv_splits=None,
    k_scale=1.0,
    v_scale=1.0,
) -> None:
    """Raise ValueError naming the bad argument; static properties only (works on tracers): the
    shared checks of `pallas_kernels.ragged_inputs` plus this backend's knobs."""
    ragged_inputs.validate_inputs(
        q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer,
        sm_scale=sm_scale, sliding_window=sliding_window, head_dims=SUPPORTED_HEAD_DIMS,
        dtypes=SUPPORTED_DTYPES, kv_dtypes=SUPPORTED_KV_DTYPES, backend="cuda",
        k_scale=k_scale, v_scale=v_scale,
    )  # fmt: skip
    ragged_inputs.check_int_in_range("block_q", block_q, 1)
    ragged_inputs.check_int_in_range("num_kv_splits", num_kv_splits, 1, MAX_SPLITS)


# --------------------------------------------------------------------------------------------------
# The call.
# --------------------------------------------------------------------------------------------------


@functools.partial(
    jax.jit,
    static_argnames=("plan", "sm_scale", "out_scale", "window", "decode_only", "decode_kernel"),
)
def _rpa_call(
    q,
    k_pages,
    v_pages,
    block_tables,
    kv_lens,
    qsl,
    layer,
    out_init,
    *,
    plan,
    sm_scale,
    window,
    decode_only,
    decode_kernel,
    out_scale=1.0,
):
    T, Hq, D = q.shape
    Hkv = k_pages.shape[2]
    S = block_tables.shape[0]
    if decode_only:
        work = jnp.asarray(decode_work_list(S))
    else:
        work = work_list(qsl, plan.block_q, plan.num_tiles)
    po_shape, pml_shape = plan.scratch_shapes(Hkv, D)
    out_types = (
        jax.ShapeDtypeStruct((T, Hq, D), q.dtype),
        jax.ShapeDtypeStruct(po_shape, jnp.float32),
        jax.ShapeDtypeStruct(pml_shape, jnp.float32),
    )
    operands = [q, k_pages, v_pages, block_tables, kv_lens, qsl, layer, work]
    if out_init is None:
        call = jax.ffi.ffi_call("jaxllm_ragged_paged_attention", out_types)
    else:
        operands.append(out_init)
        call = jax.ffi.ffi_call(
            "jaxllm_ragged_paged_attention_init", out_types, input_output_aliases={8: 0}
        )
    out, _, _ = call(
        *operands,
        sm_scale=np.float32(sm_scale),
        sliding_window=np.int32(window),
        block_q=np.int32(plan.block_q),
        num_splits=np.int32(plan.num_splits),
        decode_kernel=np.int32(DECODE_KERNELS[decode_kernel]),
        out_scale=np.float32(out_scale),
    )
    return out


def ragged_paged_attention_cuda(
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
    decode_only: bool = False,
    block_q: int | None = None,
    num_kv_splits: int | None = None,
    decode_kernel: str = "auto",
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    _out_init: jax.Array | None = None,  # [T, Hq, D] tests: the buffer the kernel writes into
) -> jax.Array:  # [T, Hq, D]
    """Ragged paged attention on NVIDIA GPUs (float32 softmax, output in `q.dtype`).

    `decode_only` (static) promises one query row per sequence (checked when `query_start_loc` is
    concrete) and picks one tile per sequence. `block_q` (query rows per tile, general path) and
    `num_kv_splits` override the automatic choice. `decode_kernel`: "auto" runs tiles of one row
    on the tensor cores where supported (bfloat16/float16, head dim 64 or 128, G <= 8) and on the
    CUDA cores otherwise; "cuda-cores" always uses the CUDA-core row kernel. Raises ValueError on
    bad inputs and RuntimeError when no CUDA GPU or no nvcc is available.
    """
    if decode_kernel not in DECODE_KERNELS:
        raise ValueError(
            f"decode_kernel must be one of {sorted(DECODE_KERNELS)}, got {decode_kernel!r}"
        )
    validate_inputs(
        q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer,
        sm_scale=sm_scale, sliding_window=sliding_window, block_q=block_q,
        num_kv_splits=num_kv_splits, k_scale=k_scale, v_scale=v_scale,
    )  # fmt: skip
    decode_only = bool(decode_only)
    if decode_only:
        check_decode_only(query_start_loc)
    if _out_init is not None and (
        ragged_inputs.shape_of(_out_init) != ragged_inputs.shape_of(q)
        or ragged_inputs.dtype_name(_out_init) != ragged_inputs.dtype_name(q)
    ):
        raise ValueError(
            f"_out_init must match q: {ragged_inputs.shape_of(q)} {ragged_inputs.dtype_name(q)}"
        )
    registry.ensure_registered()

    T, Hq, D = q.shape
    _, _, Hkv, bs, _ = k_pages.shape
    S, P = block_tables.shape
    plan = plan_launch(
        T, S, P, Hq, Hkv, D, bs, jnp.dtype(q.dtype).itemsize,
        decode_only=decode_only, block_q=block_q, num_kv_splits=num_kv_splits,
        decode_kernel=decode_kernel, kv_itemsize=jnp.dtype(k_pages.dtype).itemsize,
    )  # fmt: skip
    scale = float(sm_scale) if sm_scale is not None else D**-0.5
    return _rpa_call(
        q,
        kv_quant.to_storage(k_pages),  # fp8 pages as their bytes (kv_quant.py)
        kv_quant.to_storage(v_pages),
        *int32_metadata(block_tables, kv_lens, query_start_loc, layer),
        _out_init,
        plan=plan,
        sm_scale=kv_quant.score_scale(scale, k_pages, float(k_scale)),
        out_scale=kv_quant.output_scale(v_pages, float(v_scale)),
        window=int(sliding_window or 0),
        decode_only=decode_only,
        decode_kernel=decode_kernel,
    )
