"""Random ragged batches for the attention-kernel tests (Pallas and CUDA backends), and the oracle.

Every batch is drawn fresh from a seed: ragged query lengths (decodes, fresh prefills, continued
prefill chunks, sequences with no query rows), KV lengths at and around page boundaries, block
tables drawn without replacement from a pool larger than needed, garbage ids in the tables' unused
entries (-1, out-of-range ids, stale live ids). Poisoning: the kernel's cache holds NaN/inf/3e38 in
every slot no sequence owns (past a sequence's length, unused pages, the other layer) and padding
query rows are NaN; the reference sees the same values with the unowned slots zeroed. A leak shows
up as NaN or a mismatch.
"""

from __future__ import annotations

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.reference import ragged_paged_attention_reference

L = 2  # layers in every test cache
GARBAGE = np.array([np.nan, np.inf, -np.inf, 3e38], np.float32)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    G: int  # query heads per KV head
    D: int
    bs: int
    dtype: str
    decode: bool
    Hkv: int = 2
    splits: int | None = None  # None: automatic
    window: int | None = None
    ppcb: int | None = None  # Pallas: pages per compute block (None: tuned)
    block_q: int | None = None  # None: automatic
    layer: int = 1
    S: int = 5
    T: int = 48
    P: int = 4  # block-table width (pages per sequence at most)

    @property
    def id(self) -> str:
        return self.name


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _kv_len(rng, q_len: int, bs: int, max_kv: int) -> int:
    """A KV length at or around a page boundary, or anywhere; never below q_len."""
    choices = [
        1,
        bs - 1,
        bs,
        bs + 1,
        2 * bs - 1,
        2 * bs,
        2 * bs + 1,
        max_kv,
        int(rng.integers(1, max_kv + 1)),
    ]
    return int(min(max_kv, max(q_len, choices[int(rng.integers(len(choices)))])))


def draw_lengths(rng, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(q_lens [S], kv_lens [S]) of one batch with sum(q_lens) <= T."""
    S, bs, max_kv = case.S, case.bs, case.P * case.bs
    if case.decode:
        kinds = ["decode"] * S
    else:
        kinds = ["decode", "prefill", "chunk"] + list(
            rng.choice(["decode", "prefill", "chunk", "empty"], size=S - 3)
        )
        kinds = [kinds[i] for i in rng.permutation(S)]
    max_q = max(2, min(max_kv, case.T // 2))
    q_lens = np.array(
        [{"decode": 1, "empty": 0}.get(k, int(rng.integers(2, max_q + 1))) for k in kinds]
    )
    empty = int(rng.integers(S))  # one sequence without query rows (a padded slot) in every batch
    q_lens[empty], kinds[empty] = 0, "empty"
    while q_lens.sum() > case.T:  # fit the token budget
        q_lens[int(np.argmax(q_lens))] -= 1
    kv_lens = np.zeros(S, np.int64)
    for s, kind in enumerate(kinds):
        if kind == "prefill":
            kv_lens[s] = min(max_kv, q_lens[s])
        elif kind == "empty":
            kv_lens[s] = 0 if rng.random() < 0.5 else _kv_len(rng, 0, bs, max_kv)
        else:
            kv_lens[s] = _kv_len(rng, int(q_lens[s]), bs, max_kv)
    return q_lens, kv_lens


def make_batch(case: Case, seed: int):
    """(kernel args (poisoned), reference args (clean), number of valid query rows) of one fresh
    random batch; args are (q, k_pages, v_pages, block_tables, kv_lens, query_start_loc)."""
    rng = rng_for(case.name, seed)
    S, P, bs, D, Hkv, T = case.S, case.P, case.bs, case.D, case.Hkv, case.T
    Hq = Hkv * case.G
    q_lens, kv_lens = draw_lengths(rng, case)
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    pages = -(-kv_lens // bs)
    N = S * P + 6  # pool larger than any batch needs (fixed per case: one compile per case)
    pool = rng.permutation(N)
    block_tables = np.empty((S, P), np.int32)
    start = 0
    for s in range(S):
        block_tables[s, : pages[s]] = pool[start : start + pages[s]]
        start += pages[s]
        junk = rng.choice([-1, N + 7, 10**6, int(rng.integers(N))], size=P - pages[s])  # garbage
        block_tables[s, pages[s] :] = junk
    live = np.zeros((L, N, Hkv, bs), bool)
    for s in range(S):
        for t in range(kv_lens[s]):
            live[case.layer, block_tables[s, t // bs], :, t % bs] = True
    dtype = jnp.dtype(case.dtype)

    def exact(x):  # values exactly representable in `dtype` (numpy casts; no device work)
        return x.astype(dtype).astype(np.float32)

    def cache():
        x = exact(rng.standard_normal((L, N, Hkv, bs, D), np.float32))
        return np.where(live[..., None], x, rng.choice(GARBAGE, size=x.shape)), np.where(
            live[..., None], x, 0.0
        )

    k_bad, k_ok = cache()
    v_bad, v_ok = cache()
    q = exact(rng.standard_normal((T, Hq, D), np.float32))
    q[qsl[-1] :] = np.nan  # padding rows
    tables = (jnp.asarray(block_tables), jnp.asarray(kv_lens, jnp.int32), jnp.asarray(qsl))
    kernel_args = (
        jnp.asarray(q, dtype),
        jnp.asarray(k_bad, dtype),
        jnp.asarray(v_bad, dtype),
        *tables,
    )
    ref_args = (jnp.asarray(q), jnp.asarray(k_ok), jnp.asarray(v_ok), *tables)
    return kernel_args, ref_args, int(qsl[-1])


def engine_padding_batch(rng: np.random.Generator, q_lens, kv_lens, T: int):
    """A batch padded as the engine pads one: sequences with kv_len 0 and no query rows keep a
    table of null block 0 (whose slots hold another sequence's data), padding rows past the last
    sequence's. 3 KV heads x 3 grouped query heads, D 64, pages of 16, 4 pages a table, 40 blocks.
    Returns (args (q, k_pages, v_pages, block_tables, kv_lens, query_start_loc) as jnp arrays,
    the number of rows sequences own)."""
    S, P, bs, Hkv, G, D, N = len(q_lens), 4, 16, 3, 3, 64, 40
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    tables = np.zeros((S, P), np.int32)
    ids = iter(rng.permutation(np.arange(1, N)))
    for s in range(S):
        for j in range(-(-int(kv_lens[s]) // bs)):
            tables[s, j] = next(ids)
    k = rng.standard_normal((L, N, Hkv, bs, D)).astype(np.float32)
    v = rng.standard_normal((L, N, Hkv, bs, D)).astype(np.float32)
    q = rng.standard_normal((T, Hkv * G, D)).astype(np.float32)
    args = (q, k, v, tables, np.asarray(kv_lens, np.int32), qsl)
    return tuple(jnp.asarray(a) for a in args), int(qsl[-1])


_reference_jit = jax.jit(
    ragged_paged_attention_reference, static_argnames=("sm_scale", "sliding_window")
)


def reference(*args, sliding_window=None, jit: bool = True) -> np.ndarray:
    """The oracle in full float32 (JAX's default f32 matmul on GPUs may be TF32); jitted by default
    (one compile per shape instead of op-by-op dispatch)."""
    fn = _reference_jit if jit else ragged_paged_attention_reference
    with jax.default_matmul_precision("highest"):
        return np.asarray(fn(*args, sliding_window=sliding_window))


def tolerance(dtype: str) -> dict:
    """float32 within 1e-5; bf16/f16 within 1e-2 (relative and absolute) of the f32 oracle."""
    return dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)


# ----- shape-only inputs for the validation tests (no arrays are allocated) ----------------------


def sds(shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


# A valid ragged batch's shapes: T=8 tokens, Hq=8, Hkv=2, D=64, 2 layers, 10 blocks of 16, S=3.
GOOD_SHAPES = dict(
    q=sds((8, 8, 64)),
    k_pages=sds((2, 10, 2, 16, 64)),
    v_pages=sds((2, 10, 2, 16, 64)),
    block_tables=sds((3, 4), jnp.int32),
    kv_lens=sds((3,), jnp.int32),
    query_start_loc=sds((4,), jnp.int32),
)
