"""Ragged paged attention through the CUDA kernels of `cuda_ext/csrc` (XLA FFI custom call).

Same contract as `pallas_kernels.reference.ragged_paged_attention_reference` (read its docstring):
packed queries `q[T, Hq, D]` with `query_start_loc[S + 1]`, the stacked KV cache
`[L, num_blocks, Hkv, block_size, D]` plus a (possibly traced) `layer` index passed to the kernel
as a device scalar (the cache is never sliced), `kv_lens[S]` counting this step's tokens,
`block_tables[S, P]`, causal attention within prefill chunks, GQA, optional sliding window. Rows at
or past `query_start_loc[S]` come back as zeros.

One kernel serves decode and prefill chunks: the query rows of each sequence are cut into tiles of
`block_q` rows (`decode_only=True`: one row per sequence, no work list to compute); one CUDA program
handles (tile, KV head, KV split) with all `G = Hq / Hkv` query heads of that KV head, so each page
is read once per tile. With several KV splits (few programs, long contexts) a second kernel merges
the partial softmax states. This module chooses `block_q` and the split count statically from the
shapes and builds the tile list with a few jnp ops.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from . import registry

SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
MAX_SPLITS = 64  # the kernel's limit
TARGET_PROGRAMS = 4 * 132  # ~4 programs per SM of an H100/H200 before splitting the KV further


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
    """Split the KV range only when the grid is too small to fill the GPU, keeping >= 2 key blocks
    per split."""
    if num_programs >= TARGET_PROGRAMS:
        return 1
    blocks = -(-max_kv_tokens // bk)
    return max(1, min(16, -(-TARGET_PROGRAMS // num_programs), blocks // 2))


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
) -> LaunchPlan:
    G = Hq // Hkv
    if decode_only:
        bq = 1
        num_tiles = S
    else:
        target_rows = 32 if D <= 128 else 16
        bq = block_q or max(1, min(T, target_rows // G))
        num_tiles = T // bq + S  # sum_s ceil(q_len_s / bq) <= T // bq + S
    splits = num_kv_splits or choose_num_splits(num_tiles * Hkv, P * block_size, block_k(D, itemsize))
    return LaunchPlan(block_q=bq, num_tiles=num_tiles, num_splits=splits, max_rows=bq * G)


def work_list(query_start_loc: jax.Array, block_q: int, num_tiles: int) -> jax.Array:  # [num_tiles, 2]
    """Tile i -> (sequence or -1, first row of the tile within that sequence)."""
    S = query_start_loc.shape[0] - 1
    q_len = jnp.maximum(query_start_loc[1:] - query_start_loc[:-1], 0)  # [S]
    tiles = (q_len + block_q - 1) // block_q
    tile_end = jnp.cumsum(tiles)  # [S]
    tile_start = tile_end - tiles
    i = jnp.arange(num_tiles, dtype=jnp.int32)
    seq = jnp.minimum(jnp.searchsorted(tile_end, i, side="right"), S - 1).astype(jnp.int32)
    valid = i < tile_end[S - 1]
    off = (i - tile_start[seq]) * block_q
    return jnp.stack([jnp.where(valid, seq, -1), jnp.where(valid, off, 0)], axis=-1).astype(jnp.int32)


def decode_work_list(S: int) -> np.ndarray:  # [S, 2]
    """Decode: tile s is sequence s's single row (a sequence without rows is skipped in-kernel)."""
    return np.stack([np.arange(S, dtype=np.int32), np.zeros(S, np.int32)], axis=-1)


# --------------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------------


def _shape(x) -> tuple:
    return tuple(getattr(x, "shape", ()))


def _dtype_name(x) -> str:
    return jnp.dtype(x.dtype).name


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


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
) -> None:
    """Raise ValueError naming the bad argument; static properties only (works on tracers)."""
    if len(_shape(q)) != 3:
        raise ValueError(f"q must be [T, Hq, D] (rank 3), got shape {_shape(q)}")
    for name, x in (("k_pages", k_pages), ("v_pages", v_pages)):
        if len(_shape(x)) != 5:
            raise ValueError(f"{name} must be [L, num_blocks, Hkv, block_size, D] (rank 5), got shape {_shape(x)}")
    if _shape(k_pages) != _shape(v_pages):
        raise ValueError(f"k_pages and v_pages must have the same shape, got {_shape(k_pages)} and {_shape(v_pages)}")
    T, Hq, D = _shape(q)
    L, N, Hkv, bs, Dk = _shape(k_pages)
    if _dtype_name(q) not in SUPPORTED_DTYPES:
        raise ValueError(f"q dtype {_dtype_name(q)} unsupported by the cuda backend; use one of {SUPPORTED_DTYPES}")
    if _dtype_name(k_pages) != _dtype_name(q) or _dtype_name(v_pages) != _dtype_name(q):
        raise ValueError(
            "dtype mismatch: q, k_pages and v_pages must share one dtype, got "
            f"q {_dtype_name(q)}, k_pages {_dtype_name(k_pages)}, v_pages {_dtype_name(v_pages)}"
        )
    if Dk != D:
        raise ValueError(f"head dim mismatch: q {_shape(q)} has D={D}, k_pages {_shape(k_pages)} has D={Dk}")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim D={D} unsupported by the cuda backend; use one of {SUPPORTED_HEAD_DIMS}")
    if min(T, Hq, L, N, Hkv, bs) < 1:
        raise ValueError(f"empty dimension: q {_shape(q)}, k_pages {_shape(k_pages)}")
    if Hq % Hkv != 0:
        raise ValueError(f"Hq={Hq} (q {_shape(q)}) must be a multiple of Hkv={Hkv} (k_pages {_shape(k_pages)})")
    if len(_shape(block_tables)) != 2 or min(_shape(block_tables)) < 1:
        raise ValueError(f"block_tables must be [S, P] (rank 2, non-empty), got shape {_shape(block_tables)}")
    S, P = _shape(block_tables)
    if _shape(kv_lens) != (S,):
        raise ValueError(f"kv_lens shape {_shape(kv_lens)} must be (S,) = ({S},) to match block_tables {(S, P)}")
    if _shape(query_start_loc) != (S + 1,):
        raise ValueError(
            f"query_start_loc shape {_shape(query_start_loc)} must be (S + 1,) = ({S + 1},) to match block_tables {(S, P)}"
        )
    for name, x in (("block_tables", block_tables), ("kv_lens", kv_lens), ("query_start_loc", query_start_loc)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be an integer array (int32), got dtype {_dtype_name(x)}")
    if _is_int(layer):
        if not 0 <= layer < L:
            raise ValueError(f"layer={layer} out of range for k_pages with L={L} layers")
    elif not hasattr(layer, "dtype") or _shape(layer) not in ((), (1,)) or not jnp.issubdtype(layer.dtype, jnp.integer):
        raise ValueError(f"layer must be an int or an integer scalar array, got {layer!r}")
    if sm_scale is not None and not (
        isinstance(sm_scale, numbers.Real) and not isinstance(sm_scale, bool) and sm_scale > 0
    ):
        raise ValueError(f"sm_scale must be a positive float, got {sm_scale!r}")
    if sliding_window is not None and not (_is_int(sliding_window) and sliding_window >= 1):
        raise ValueError(f"sliding_window must be a positive int or None, got {sliding_window!r}")
    if block_q is not None and not (_is_int(block_q) and block_q >= 1):
        raise ValueError(f"block_q must be a positive int, got {block_q!r}")
    if num_kv_splits is not None and not (_is_int(num_kv_splits) and 1 <= num_kv_splits <= MAX_SPLITS):
        raise ValueError(f"num_kv_splits must be an int in [1, {MAX_SPLITS}], got {num_kv_splits!r}")


def check_decode_only(query_start_loc) -> None:
    """decode_only=True promises <= 1 query row per sequence; checked when the offsets are concrete."""
    try:
        qsl = np.asarray(query_start_loc)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    q_lens = qsl[1:] - qsl[:-1]
    if (q_lens > 1).any():
        raise ValueError(
            f"decode_only=True needs at most one query row per sequence, got query lengths {q_lens.tolist()}"
        )


# --------------------------------------------------------------------------------------------------
# The call.
# --------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("plan", "sm_scale", "window", "decode_only"))
def _rpa_call(q, k_pages, v_pages, block_tables, kv_lens, qsl, layer, out_init, *, plan, sm_scale, window, decode_only):
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
        call = jax.ffi.ffi_call("jaxllm_ragged_paged_attention_init", out_types, input_output_aliases={8: 0})
    out, _, _ = call(
        *operands,
        sm_scale=np.float32(sm_scale),
        sliding_window=np.int32(window),
        block_q=np.int32(plan.block_q),
        num_splits=np.int32(plan.num_splits),
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
    _out_init: jax.Array | None = None,  # [T, Hq, D] tests: the buffer the kernel writes into
) -> jax.Array:  # [T, Hq, D]
    """Ragged paged attention on NVIDIA GPUs (float32 softmax, output in `q.dtype`).

    `decode_only` (static) promises one query row per sequence (checked when `query_start_loc` is
    concrete) and picks one tile per sequence. `block_q` (query rows per tile, general path) and
    `num_kv_splits` override the automatic choice. Raises ValueError on bad inputs and
    RuntimeError when no CUDA GPU or no nvcc is available.
    """
    validate_inputs(
        q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer,
        sm_scale=sm_scale, sliding_window=sliding_window, block_q=block_q, num_kv_splits=num_kv_splits,
    )  # fmt: skip
    decode_only = bool(decode_only)
    if decode_only:
        check_decode_only(query_start_loc)
    if _out_init is not None and (_shape(_out_init) != _shape(q) or _dtype_name(_out_init) != _dtype_name(q)):
        raise ValueError(f"_out_init must match q: {_shape(q)} {_dtype_name(q)}")
    registry.ensure_registered()

    T, Hq, D = q.shape
    _, _, Hkv, bs, _ = k_pages.shape
    S, P = block_tables.shape
    plan = plan_launch(
        T, S, P, Hq, Hkv, D, bs, jnp.dtype(q.dtype).itemsize,
        decode_only=decode_only, block_q=block_q, num_kv_splits=num_kv_splits,
    )  # fmt: skip
    scale = float(sm_scale) if sm_scale is not None else D**-0.5
    return _rpa_call(
        q,
        k_pages,
        v_pages,
        block_tables.astype(jnp.int32),
        kv_lens.astype(jnp.int32),
        query_start_loc.astype(jnp.int32),
        jnp.asarray(layer, jnp.int32).reshape(()),
        _out_init,
        plan=plan,
        sm_scale=scale,
        window=int(sliding_window or 0),
        decode_only=decode_only,
    )
