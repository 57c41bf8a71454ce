"""The ragged interface's shared pieces: input validation and the query-tile work list.

Used by all three backends (`reference.py`, the Pallas kernels, `cuda_ext/attention.py`), so that
they reject the same bad inputs with the same messages and cut queries into tiles the same way.

- `validate_inputs(...)`: static checks (shapes, dtypes, ranks, the layer index, sm_scale,
  sliding_window) raising ValueError that names the bad argument; works on tracers and
  `jax.ShapeDtypeStruct`s. Backend-specific knobs are checked with `check_power_of_two` /
  `check_int_in_range`.
- `concrete_query_lens` / `check_decode_only`: the per-sequence query counts when
  `query_start_loc` is concrete, and the check behind `decode_only=True`.
- `num_query_tiles` / `query_tiles(...)`: the static bound on the number of tiles of `block_q`
  consecutive query rows of one sequence, and the traced map tile id -> (sequence, tile index
  within the sequence, valid).

This file imports only JAX (and numpy, which ships with it).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .kv_quant import QUANTIZED_KV_DTYPES, check_scale


def shape_of(x) -> tuple:
    return tuple(getattr(x, "shape", ()))


def dtype_name(x) -> str:
    return jnp.dtype(x.dtype).name


def is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_power_of_two(x) -> bool:
    return is_int(x) and x > 0 and (x & (x - 1)) == 0


def check_power_of_two(name: str, value) -> None:
    """`value` must be None or a power of two >= 1."""
    if value is not None and not is_power_of_two(value):
        raise ValueError(f"{name} must be a power of two >= 1, got {value!r}")


def check_int_in_range(name: str, value, lo: int, hi: int | None = None) -> None:
    """`value` must be None or an int in [lo, hi] (no upper bound when hi is None)."""
    if value is None:
        return
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")


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
    head_dims: tuple[int, ...] | None = None,
    dtypes: tuple[str, ...] = ("bfloat16", "float16", "float32"),
    kv_dtypes: tuple[str, ...] = QUANTIZED_KV_DTYPES,
    block_size_power_of_two: bool = False,
    backend: str = "",
    k_scale=1.0,
    v_scale=1.0,
) -> None:
    """Raise ValueError naming the bad argument (with its shape/dtype). Static properties only, so
    it works on tracers. `head_dims` (None: any), `dtypes`, `kv_dtypes` (quantized page dtypes
    read with any query dtype, `kv_quant.py`) and `block_size_power_of_two` are what the calling
    backend supports; `backend` names it in the messages. `k_scale` / `v_scale`: the quantized
    pages' scales."""
    by = f" by the {backend} backend" if backend else ""
    if len(shape_of(q)) != 3:
        raise ValueError(f"q must be [T, Hq, D] (rank 3), got shape {shape_of(q)}")
    for name, x in (("k_pages", k_pages), ("v_pages", v_pages)):
        if len(shape_of(x)) != 5:
            raise ValueError(
                f"{name} must be [L, num_blocks, Hkv, block_size, D] (rank 5), "
                f"got shape {shape_of(x)}"
            )
    if shape_of(k_pages) != shape_of(v_pages):
        raise ValueError(
            f"k_pages and v_pages must have the same shape, got {shape_of(k_pages)} and "
            f"{shape_of(v_pages)}"
        )
    T, Hq, D = shape_of(q)
    L, N, Hkv, bs, Dk = shape_of(k_pages)
    if dtype_name(q) not in dtypes:
        raise ValueError(f"q dtype {dtype_name(q)} unsupported{by}; use one of {dtypes}")
    kv_dtype = dtype_name(k_pages)
    if dtype_name(v_pages) != kv_dtype or kv_dtype not in (dtype_name(q), *kv_dtypes):
        quantized = f" (or quantized pages: {', '.join(kv_dtypes)})" if kv_dtypes else ""
        raise ValueError(
            f"dtype mismatch: q, k_pages and v_pages must share one dtype{quantized}{by}, got "
            f"q {dtype_name(q)}, k_pages {kv_dtype}, v_pages {dtype_name(v_pages)}"
        )
    check_scale("k_scale", k_scale)
    check_scale("v_scale", v_scale)
    if Dk != D:
        raise ValueError(
            f"head dim mismatch: q {shape_of(q)} has D={D}, k_pages {shape_of(k_pages)} has D={Dk}"
        )
    if head_dims is not None and D not in head_dims:
        raise ValueError(
            f"head dim D={D} (q shape {shape_of(q)}) unsupported{by}; use one of {head_dims}"
        )
    if min(T, Hq, L, N, Hkv, bs) < 1:
        raise ValueError(f"empty dimension: q {shape_of(q)}, k_pages {shape_of(k_pages)}")
    if Hq % Hkv != 0:
        raise ValueError(
            f"Hq={Hq} (q shape {shape_of(q)}) must be a multiple of Hkv={Hkv} "
            f"(k_pages shape {shape_of(k_pages)})"
        )
    if block_size_power_of_two and not is_power_of_two(bs):
        raise ValueError(
            f"block_size={bs} (k_pages shape {shape_of(k_pages)}) must be a power of two"
        )
    if len(shape_of(block_tables)) != 2 or min(shape_of(block_tables)) < 1:
        raise ValueError(
            f"block_tables must be [S, P] (rank 2, non-empty), got shape {shape_of(block_tables)}"
        )
    S, P = shape_of(block_tables)
    if shape_of(kv_lens) != (S,):
        raise ValueError(
            f"kv_lens shape {shape_of(kv_lens)} must be (S,) = ({S},) to match "
            f"block_tables {(S, P)}"
        )
    if shape_of(query_start_loc) != (S + 1,):
        raise ValueError(
            f"query_start_loc shape {shape_of(query_start_loc)} must be (S + 1,) = ({S + 1},) "
            "to match "
            f"block_tables {(S, P)}"
        )
    for name, x in (
        ("block_tables", block_tables),
        ("kv_lens", kv_lens),
        ("query_start_loc", query_start_loc),
    ):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be an integer array (int32), got dtype {dtype_name(x)}")
    if is_int(layer):
        if not 0 <= layer < L:
            raise ValueError(f"layer={layer} out of range for k_pages with L={L} layers")
    elif (
        not hasattr(layer, "dtype")
        or shape_of(layer) not in ((), (1,))
        or not jnp.issubdtype(layer.dtype, jnp.integer)
    ):
        raise ValueError(
            f"layer must be an int or an integer scalar array, got {type(layer).__name__} "
            f"shape {shape_of(layer)} dtype {getattr(layer, 'dtype', None)}"
        )
    if sm_scale is not None and not (
        isinstance(sm_scale, numbers.Real) and not isinstance(sm_scale, bool) and sm_scale > 0
    ):
        raise ValueError(f"sm_scale must be a positive float, got {sm_scale!r}")
    if sliding_window is not None and not (is_int(sliding_window) and sliding_window >= 1):
        raise ValueError(f"sliding_window must be a positive int or None, got {sliding_window!r}")


def int32_metadata(block_tables, kv_lens, query_start_loc, layer) -> tuple:
    """The batch metadata as the FFI kernels take it: int32 arrays, the layer a 0-d array."""
    return (
        block_tables.astype(jnp.int32),  # [S, P]
        kv_lens.astype(jnp.int32),  # [S]
        query_start_loc.astype(jnp.int32),  # [S + 1]
        jnp.asarray(layer, jnp.int32).reshape(()),
    )


def concrete_query_lens(query_start_loc) -> np.ndarray | None:
    """Per-sequence query counts [S] when `query_start_loc` is concrete, else None (traced)."""
    try:
        qsl = np.asarray(query_start_loc)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    return qsl[1:] - qsl[:-1]


def check_decode_only(query_start_loc) -> None:
    """`decode_only=True` promises at most one query row per sequence: checked when concrete."""
    q_lens = concrete_query_lens(query_start_loc)
    if q_lens is not None and not bool((q_lens <= 1).all()):
        raise ValueError(
            "decode_only=True needs at most one query row per sequence, but query_start_loc gives "
            f"query lengths {q_lens.tolist()}"
        )


def num_query_tiles(T: int, S: int, block_q: int) -> int:
    """Static bound on the tiles of `block_q` rows: sum_s ceil(q_len_s / block_q) is at most
    T // block_q + S, and at most T since every tile holds a row; at least 1."""
    return max(1, min(T // block_q + S, T))


class QueryTiles(NamedTuple):
    """Tile id -> its sequence (traced arrays of `query_tiles`; a NamedTuple, so a pytree)."""

    seq: jax.Array  # [W] int32: the tile's sequence, clamped to [0, S - 1] (for invalid tiles too)
    index: jax.Array  # [W] int32: tile index within the sequence (first row = index * block_q)
    valid: jax.Array  # [W] bool: the tile holds at least one query row
    first_tile: jax.Array  # [S] int32: id of each sequence's first tile


def query_tiles(
    query_start_loc: jax.Array,  # [S + 1] int32
    block_q: int,
    num_tiles: int,
) -> QueryTiles:
    """Cut every sequence's query rows into tiles of `block_q` consecutive rows, numbered sequence
    by sequence; tile ids at or past the last tile are invalid (their `index` is past their
    sequence's rows, so a kernel that computes the tile's rows finds none)."""
    S = query_start_loc.shape[0] - 1
    q_lens = jnp.maximum(query_start_loc[1:] - query_start_loc[:-1], 0)  # [S]
    per_seq = (q_lens + block_q - 1) // block_q
    ends = jnp.cumsum(per_seq).astype(jnp.int32)  # [S]
    first_tile = (ends - per_seq).astype(jnp.int32)
    w = jnp.arange(num_tiles, dtype=jnp.int32)
    seq = jnp.minimum(jnp.searchsorted(ends, w, side="right"), S - 1).astype(jnp.int32)
    return QueryTiles(
        seq=seq,
        index=(w - first_tile[seq]).astype(jnp.int32),
        valid=w < ends[S - 1],
        first_tile=first_tile,
    )
