"""Pallas ragged paged attention vs the pure-jnp reference.

CPU: the kernels run with `interpret=True`. GPU (`-m gpu`): the same sweep, compiled through Triton.

Every batch is drawn fresh: ragged query lengths (decodes, fresh prefills, continued prefill chunks,
sequences with no query rows), KV lengths at and around page boundaries, block tables drawn without
replacement from a pool larger than needed, garbage ids in the tables' unused entries. Poisoning:
the kernel's cache holds NaN/inf in every slot no sequence owns (past a sequence's length, unused
pages, the other layer), padding query rows are NaN, and the output buffer starts as NaN. The
reference sees the same values with the unowned slots zeroed. A leak shows up as NaN or a mismatch;
a row the kernel fails to write stays NaN.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import ragged_paged_attention_reference
from pallas_kernels import tuned_block_sizes
from pallas_kernels.ragged_paged_attention import (
    _TritonParams,
    ragged_paged_attention,
    resolve_decode_only,
    validate_inputs,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:The Pallas Triton backend is deprecated:DeprecationWarning"
)

ON_GPU = jax.devices()[0].platform == "gpu"
L = 2  # layers in every test cache
GARBAGE = np.array([np.nan, np.inf, -np.inf, 3e38], np.float32)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    G: int  # q heads per KV head
    D: int
    bs: int
    dtype: str
    decode: bool
    Hkv: int = 2
    splits: int | None = None
    window: int | None = None
    ppcb: int | None = None
    block_q: int | None = None
    layer: int = 1
    S: int = 5
    T: int = 48
    P: int = 4  # block-table width (pages per sequence at most)

    @property
    def id(self) -> str:
        return self.name


# Covering set (every GQA ratio, both head dims, both block sizes, both dtypes, both paths, splits,
# sliding window), kept small because each distinct static config costs one interpret compile.
CPU_CASES = [
    Case("gen-g1-d64-bs16-f32", 1, 64, 16, "float32", False),
    Case("gen-g2-d64-bs32-f32", 2, 64, 32, "float32", False, layer=0),
    Case("gen-g4-d64-bs16-bf16", 4, 64, 16, "bfloat16", False),
    Case("gen-g8-d64-bs32-bf16", 8, 64, 32, "bfloat16", False, Hkv=1),
    Case("gen-g4-d128-bs16-f32", 4, 128, 16, "float32", False),
    Case("gen-g8-d128-bs32-bf16", 8, 128, 32, "bfloat16", False, Hkv=1, P=3),
    Case("gen-g3-d64-bs16-f32", 3, 64, 16, "float32", False),
    Case("gen-g2-d64-bs16-f32-window", 2, 64, 16, "float32", False, window=13),
    Case("gen-g1-d64-bs16-f32-bk16-bq4", 1, 64, 16, "float32", False, ppcb=1, block_q=4),
    Case("dec-g1-d64-bs16-f32", 1, 64, 16, "float32", True, splits=1),
    Case("dec-g2-d64-bs32-f32-ns4", 2, 64, 32, "float32", True, splits=4),
    Case("dec-g4-d128-bs16-bf16-ns2", 4, 128, 16, "bfloat16", True, splits=2),
    Case("dec-g8-d64-bs16-bf16", 8, 64, 16, "bfloat16", True, Hkv=1, splits=1, layer=0),
    Case("dec-g4-d64-bs32-f32-ns8", 4, 64, 32, "float32", True, splits=8),
    Case("dec-g4-d64-bs16-f32-window-ns2", 4, 64, 16, "float32", True, splits=2, window=20),
    Case("dec-g3-d64-bs16-f32-ns2", 3, 64, 16, "float32", True, splits=2),
]

# On the GPU compiles are cheap: the CPU set, then longer contexts, auto splits, bigger batches.
GPU_CASES = CPU_CASES + [
    Case("gpu-dec-g4-d128-bs16-bf16-long", 4, 128, 16, "bfloat16", True, Hkv=8, S=3, T=8, P=96),
    Case("gpu-dec-g8-d128-bs32-f32-long", 8, 128, 32, "float32", True, S=4, T=8, P=40, splits=8),
    Case("gpu-dec-g1-d64-bs16-bf16-many", 1, 64, 16, "bfloat16", True, Hkv=4, S=64, T=80, P=8),
    Case("gpu-dec-g2-d128-bs16-bf16-window", 2, 128, 16, "bfloat16", True, S=4, T=8, P=64, window=200),
    Case("gpu-gen-g4-d128-bs16-bf16-long", 4, 128, 16, "bfloat16", False, Hkv=8, S=6, T=512, P=48),
    Case("gpu-gen-g8-d128-bs32-f32-long", 8, 128, 32, "float32", False, S=4, T=256, P=20),
    Case("gpu-gen-g1-d64-bs16-bf16-window", 1, 64, 16, "bfloat16", False, S=4, T=256, P=24, window=77),
    Case("gpu-gen-g4-d256-bs16-bf16", 4, 256, 16, "bfloat16", False, Hkv=1, S=4, T=128, P=16),
    Case("gpu-dec-g4-d256-bs16-bf16", 4, 256, 16, "bfloat16", True, Hkv=1, S=4, T=8, P=32),
]


# --------------------------------------------------------------------------------------------------
# Random ragged batches.
# --------------------------------------------------------------------------------------------------


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _kv_len(rng, q_len: int, bs: int, max_kv: int) -> int:
    """KV lengths at and around page boundaries, or anywhere; never below q_len."""
    special = [1, bs - 1, bs, bs + 1, 2 * bs - 1, 2 * bs, 2 * bs + 1, max_kv, int(rng.integers(1, max_kv + 1))]
    return int(min(max_kv, max(q_len, special[int(rng.integers(len(special)))])))


def _lengths(rng, case: Case):
    """(q_lens [S], kv_lens [S]) of one batch; sum(q_lens) <= T."""
    S, bs, max_kv = case.S, case.bs, case.P * case.bs
    if case.decode:
        q_lens = np.ones(S, np.int64)
        kinds = ["decode"] * S
    else:
        kinds = ["decode", "prefill", "chunk"] + list(
            rng.choice(["decode", "prefill", "chunk", "empty"], size=S - 3)
        )
        kinds = [kinds[i] for i in rng.permutation(S)]
        max_q = max(2, min(max_kv, case.T // 2))
        q_lens = np.array([{"decode": 1, "empty": 0}.get(k, int(rng.integers(2, max_q + 1))) for k in kinds])
    # One sequence without query rows (a padded slot), in every batch.
    empty = int(rng.integers(S))
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
    """Kernel inputs (poisoned) and reference inputs (clean) for one fresh random batch."""
    rng = _rng(case.name, seed)
    S, P, bs, D, Hkv = case.S, case.P, case.bs, case.D, case.Hkv
    Hq, T = Hkv * case.G, case.T
    q_lens, kv_lens = _lengths(rng, case)
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    pages = -(-kv_lens // bs)
    N = S * P + 6  # pool larger than any batch needs (fixed per case: one compile per case)
    pool = rng.permutation(N)
    block_tables = np.empty((S, P), np.int32)
    start = 0
    for s in range(S):
        block_tables[s, : pages[s]] = pool[start : start + pages[s]]
        start += pages[s]
        # Unused entries: garbage (stale live ids, -1, out-of-range ids).
        junk = rng.choice([-1, N + 7, 10**6, int(rng.integers(N))], size=P - pages[s])
        block_tables[s, pages[s] :] = junk
    live = np.zeros((L, N, Hkv, bs), bool)
    for s in range(S):
        for t in range(kv_lens[s]):
            live[case.layer, block_tables[s, t // bs], :, t % bs] = True
    dtype = jnp.dtype(case.dtype)

    def cache():
        x = rng.standard_normal((L, N, Hkv, bs, D), np.float32)
        x = np.asarray(jnp.asarray(x, dtype).astype(jnp.float32))  # values exact in `dtype`
        poisoned = np.where(live[..., None], x, rng.choice(GARBAGE, size=x.shape))
        clean = np.where(live[..., None], x, 0.0)
        return poisoned, clean

    k_bad, k_ok = cache()
    v_bad, v_ok = cache()
    q = np.array(jnp.asarray(rng.standard_normal((T, Hq, D), np.float32), dtype).astype(jnp.float32))
    q[qsl[-1] :] = np.nan  # padding rows
    kernel_args = (
        jnp.asarray(q, dtype),
        jnp.asarray(k_bad, dtype),
        jnp.asarray(v_bad, dtype),
        jnp.asarray(block_tables),
        jnp.asarray(kv_lens, jnp.int32),
        jnp.asarray(qsl),
    )
    ref_args = (
        jnp.asarray(q),
        jnp.asarray(k_ok),
        jnp.asarray(v_ok),
        jnp.asarray(block_tables),
        jnp.asarray(kv_lens, jnp.int32),
        jnp.asarray(qsl),
    )
    return kernel_args, ref_args, int(qsl[-1])


_reference_jit = jax.jit(ragged_paged_attention_reference, static_argnames=("sm_scale", "sliding_window"))


def reference(*args, **kwargs) -> np.ndarray:
    """The oracle in full f32 (on GPUs JAX's default f32 matmul precision may be TF32), jitted (one
    compile per shape instead of one per op: the GPU run's time goes to the kernels)."""
    with jax.default_matmul_precision("highest"):
        return np.asarray(_reference_jit(*args, **kwargs))


def _tolerance(dtype: str) -> dict:
    return dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)


def _kernel_kwargs(case: Case, interpret: bool) -> dict:
    return dict(
        sliding_window=case.window,
        decode_only=case.decode,
        num_kv_splits=case.splits,
        pages_per_compute_block=case.ppcb,
        block_q=case.block_q,
        interpret=interpret,
    )


def check_case(case: Case, interpret: bool, num_batches: int) -> None:
    for seed in range(num_batches):
        kernel_args, ref_args, n_valid = make_batch(case, seed)
        T, Hq, D = kernel_args[0].shape
        expected = reference(*ref_args, case.layer, sliding_window=case.window)
        nan_out = jnp.full((T, Hq, D), jnp.nan, kernel_args[0].dtype)
        # General path: into a NaN buffer (rows it must not write keep the NaN). Decode path: the
        # public call, whose kernels write every row (the interpreter starts outputs as NaN, so a
        # skipped row shows); compiled, also into a NaN buffer, since device memory starts stale.
        buffers = [nan_out] if not case.decode else ([None] if interpret else [None, nan_out])
        for out_init in buffers:
            got = ragged_paged_attention(
                *kernel_args, case.layer, _out_init=out_init, **_kernel_kwargs(case, interpret)
            )
            got = np.asarray(got.astype(jnp.float32))
            msg = f"{case.name} batch {seed} ({'own buffer' if out_init is None else 'NaN buffer'})"
            assert got.dtype == np.float32 and got.shape == (T, Hq, D)
            np.testing.assert_allclose(got[:n_valid], expected[:n_valid], err_msg=msg, **_tolerance(case.dtype))
            if case.decode:  # zeros where no sequence owns the row
                np.testing.assert_array_equal(got[n_valid:], 0.0, err_msg=msg)
            else:  # never written: the buffer's NaN stays
                assert np.isnan(got[n_valid:]).all(), f"{msg}: a padding row was written"


# --------------------------------------------------------------------------------------------------
# CPU (interpret mode).
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.id)
def test_matches_reference_interpret(case):
    check_case(case, interpret=True, num_batches=3)


def test_public_output_zero_padding_rows_interpret():
    """The public entry (no buffer given) returns zeros in padding rows, results elsewhere."""
    case = CPU_CASES[0]
    kernel_args, ref_args, n_valid = make_batch(case, 99)
    got = np.asarray(ragged_paged_attention(*kernel_args, case.layer, interpret=True, decode_only=False))
    expected = reference(*ref_args, case.layer)
    assert n_valid < got.shape[0]
    np.testing.assert_array_equal(got[n_valid:], 0.0)
    np.testing.assert_allclose(got[:n_valid], expected[:n_valid], rtol=1e-5, atol=1e-5)


def test_traced_layer_inside_scan_interpret():
    """Inside jit + lax.scan over layers the layer index is traced; each step uses its own layer."""
    case = CPU_CASES[0]
    rng = _rng("scan")
    kernel_args, ref_args, n_valid = make_batch(case, 7)
    q, _, _, bt, kv, qsl = ref_args
    k = jnp.asarray(rng.standard_normal(kernel_args[1].shape, np.float32))
    v = jnp.asarray(rng.standard_normal(kernel_args[2].shape, np.float32))

    @jax.jit
    def all_layers(q, k, v, bt, kv, qsl):
        def step(carry, layer):
            o = ragged_paged_attention(q, k, v, bt, kv, qsl, layer, interpret=True)
            return carry, o

        return jax.lax.scan(step, 0, jnp.arange(L, dtype=jnp.int32))[1]

    got = np.asarray(all_layers(q, k, v, bt, kv, qsl))
    for layer in range(L):
        expected = reference(q, k, v, bt, kv, qsl, layer)
        np.testing.assert_allclose(got[layer, :n_valid], expected[:n_valid], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[layer, n_valid:], 0.0)


def test_resolve_decode_only():
    decode_qsl = jnp.array([0, 1, 1, 2], jnp.int32)
    prefill_qsl = jnp.array([0, 1, 4, 5], jnp.int32)
    assert resolve_decode_only(None, decode_qsl) is True
    assert resolve_decode_only(None, prefill_qsl) is False
    assert resolve_decode_only(False, decode_qsl) is False
    assert resolve_decode_only(True, decode_qsl) is True
    with pytest.raises(ValueError, match="decode_only=True needs at most one query row"):
        resolve_decode_only(True, prefill_qsl)
    # Traced query_start_loc: auto falls back to the general kernel; True is trusted.
    assert jax.jit(lambda x: jnp.int32(resolve_decode_only(None, x)))(decode_qsl) == 0
    assert jax.jit(lambda x: jnp.int32(resolve_decode_only(True, x)))(prefill_qsl) == 1


# --------------------------------------------------------------------------------------------------
# Validation errors.
# --------------------------------------------------------------------------------------------------


def _sds(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


GOOD = dict(
    q=_sds((8, 8, 64)),
    k_pages=_sds((2, 10, 2, 16, 64)),
    v_pages=_sds((2, 10, 2, 16, 64)),
    block_tables=_sds((3, 4), jnp.int32),
    kv_lens=_sds((3,), jnp.int32),
    query_start_loc=_sds((4,), jnp.int32),
)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(q=_sds((8, 64))), r"q must be \[T, Hq, D\]"),
        (dict(k_pages=_sds((10, 2, 16, 64))), r"k_pages must be \[L, num_blocks"),
        (dict(v_pages=_sds((2, 11, 2, 16, 64))), r"k_pages and v_pages must have the same shape"),
        (dict(q=_sds((8, 8, 64), jnp.bfloat16)), r"dtype mismatch: .*q bfloat16, k_pages float32"),
        (dict(q=_sds((8, 8, 64), jnp.int32)), r"q dtype int32 unsupported"),
        (dict(q=_sds((8, 7, 64))), r"Hq=7 .* must be a multiple of Hkv=2"),
        (dict(q=_sds((8, 8, 32))), r"head dim mismatch: q \(8, 8, 32\) has D=32"),
        (
            dict(q=_sds((8, 8, 80)), k_pages=_sds((2, 10, 2, 16, 80)), v_pages=_sds((2, 10, 2, 16, 80))),
            r"head dim D=80 .* unsupported",
        ),
        (
            dict(k_pages=_sds((2, 10, 2, 12, 64)), v_pages=_sds((2, 10, 2, 12, 64))),
            r"block_size=12 .* must be a power of two",
        ),
        (dict(block_tables=_sds((12,), jnp.int32)), r"block_tables must be \[S, P\] \(rank 2\), got shape \(12,\)"),
        (dict(kv_lens=_sds((4,), jnp.int32)), r"kv_lens shape \(4,\) must be \(S,\) = \(3,\)"),
        (dict(query_start_loc=_sds((3,), jnp.int32)), r"query_start_loc shape \(3,\) must be \(S \+ 1,\) = \(4,\)"),
        (dict(block_tables=_sds((3, 4), jnp.float32)), r"block_tables must be an integer array"),
    ],
)
def test_validation_errors(change, message):
    args = {**GOOD, **change}
    with pytest.raises(ValueError, match=message):
        validate_inputs(*args.values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layer=2), r"layer=2 out of range for k_pages with L=2"),
        (dict(layer=_sds((2,), jnp.int32)), r"layer must be an integer scalar"),
        (dict(sliding_window=0), r"sliding_window must be a positive int"),
        (dict(num_kv_splits=3), r"num_kv_splits must be a power of two"),
        (dict(pages_per_compute_block=6), r"pages_per_compute_block must be a power of two"),
        (dict(block_q=0), r"block_q must be a power of two"),
        (dict(sm_scale=-1.0), r"sm_scale must be a positive float"),
    ],
)
def test_validation_errors_keywords(kwargs, message):
    layer = kwargs.pop("layer", 0)
    with pytest.raises(ValueError, match=message):
        validate_inputs(*GOOD.values(), layer, **kwargs)


def test_public_entry_validates():
    q = jnp.zeros((4, 6, 64))
    k = jnp.zeros((1, 4, 4, 16, 64))
    bt = jnp.zeros((2, 2), jnp.int32)
    with pytest.raises(ValueError, match=r"Hq=6 .* must be a multiple of Hkv=4"):
        ragged_paged_attention(q, k, k, bt, jnp.ones(2, jnp.int32), jnp.array([0, 1, 2], jnp.int32), interpret=True)


# --------------------------------------------------------------------------------------------------
# Tuning table and the Triton lowering (checked on the CPU by lowering for CUDA).
# --------------------------------------------------------------------------------------------------


def test_tuned_lookup_and_splits():
    cfg = tuned_block_sizes.lookup(128, 16, "bfloat16", 4)
    assert cfg is tuned_block_sizes.TUNED[(128, 16, "bfloat16", 4)]
    fallback = tuned_block_sizes.lookup(64, 64, "float16", 5)
    assert fallback == tuned_block_sizes.default_config(64, 64, "float16", 5)
    assert fallback.decode_pages_per_compute_block == 2  # 128 tokens of 64 x 2 bytes per step
    for c in (cfg, fallback):
        for v in (c.decode_pages_per_compute_block, c.pages_per_compute_block, c.block_q_rows):
            assert v & (v - 1) == 0
    # Few sequences, long context: split up to the cap; many sequences: no split; short: capped by
    # length (4 compute blocks per split); 16 x 8 programs: 4 splits fill 4 programs per SM.
    split = tuned_block_sizes.choose_num_kv_splits
    assert split(1, 8, 8192, 64, cfg) == 32
    assert split(1, 8, 2048, 64, cfg) == 8
    assert split(1, 8, 512, 64, cfg) == 2
    assert split(256, 8, 8192, 64, cfg) == 1
    assert split(64, 8, 2048, 64, cfg) == 1
    assert split(16, 8, 2048, 64, cfg) == 4
    assert split(16, 8, 2048, 64, cfg, num_sms=100) == 2  # smaller card: fewer programs fit
    assert split(3, 1, 64, 16, cfg) == 1  # one compute block in all: nothing to split


def _can_lower_for_cuda() -> bool:
    from jax.experimental import pallas as pl

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...] + 1.0

    f = pl.pallas_call(
        kernel, out_shape=_sds((16,)), compiler_params=_TritonParams(num_warps=4, num_stages=1)
    )
    try:
        jax.jit(f).trace(_sds((16,))).lower(lowering_platforms=("cuda",))
    except Exception:  # this jaxlib cannot lower Pallas for CUDA at all
        return False
    return True


@pytest.mark.skipif(ON_GPU, reason="the GPU class compiles for real")
@pytest.mark.parametrize(
    "G, D, bs, dtype, decode, splits, window, L_, N, T, S, P",
    [
        (4, 128, 16, "bfloat16", True, 1, None, 2, 64, 16, 8, 8),
        (4, 128, 16, "bfloat16", True, 8, None, 2, 64, 16, 8, 8),
        (8, 128, 32, "float32", False, None, 64, 2, 64, 64, 4, 8),
        (3, 64, 16, "float16", False, None, None, 2, 64, 64, 4, 8),
        (4, 256, 16, "bfloat16", True, None, 512, 2, 64, 8, 4, 8),
        # > 4 GiB stacked cache: 64-bit offsets in the gathers.
        (4, 128, 16, "bfloat16", True, 1, None, 4, 65536, 64, 64, 64),
        (4, 128, 16, "bfloat16", False, None, None, 4, 65536, 512, 8, 64),
    ],
)
def test_lowers_to_triton_for_cuda(G, D, bs, dtype, decode, splits, window, L_, N, T, S, P):
    if not _can_lower_for_cuda():
        pytest.skip("this jaxlib cannot lower Pallas kernels for CUDA")
    Hkv = 2
    args = (
        _sds((T, Hkv * G, D), dtype),
        _sds((L_, N, Hkv, bs, D), dtype),
        _sds((L_, N, Hkv, bs, D), dtype),
        _sds((S, P), jnp.int32),
        _sds((S,), jnp.int32),
        _sds((S + 1,), jnp.int32),
        _sds((), jnp.int32),
    )
    f = jax.jit(
        lambda *a: ragged_paged_attention(*a, decode_only=decode, num_kv_splits=splits, sliding_window=window)
    )
    text = f.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    kernels = text.count("__gpu$xla.gpu.triton")  # Triton kernels (no Mosaic GPU)
    if not decode:
        assert kernels == 1
        return
    # Decode: the split kernel plus the combine kernel when split, and nothing else that could
    # launch a kernel of its own (no zero-fill, no scatter, no jnp combine).
    if splits is not None:
        assert kernels == (2 if splits > 1 else 1)
    assert kernels in (1, 2)
    ops = set(re.findall(r"= \"?(stablehlo\.\w+)", text))
    assert ops <= {"stablehlo.custom_call", "stablehlo.reshape"}, ops


# --------------------------------------------------------------------------------------------------
# GPU (compiled through Triton).
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU (jax.devices()[0].platform == 'gpu')")
class TestCompiledOnGpu:
    @pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.id)
    def test_matches_reference(self, case):
        check_case(case, interpret=False, num_batches=3)

    def test_public_output_zero_padding_rows(self):
        case = CPU_CASES[0]
        kernel_args, ref_args, n_valid = make_batch(case, 99)
        got = np.asarray(ragged_paged_attention(*kernel_args, case.layer))
        expected = reference(*ref_args, case.layer)
        np.testing.assert_array_equal(got[n_valid:], 0.0)
        np.testing.assert_allclose(got[:n_valid], expected[:n_valid], rtol=1e-5, atol=1e-5)

    def test_auto_splits_and_defaults(self):
        """No tuning knobs given: tuned defaults and the auto split count."""
        by_name = {c.name: c for c in GPU_CASES}
        for case in (by_name["gpu-dec-g4-d128-bs16-bf16-long"], by_name["gpu-gen-g4-d128-bs16-bf16-long"]):
            plain = dataclasses.replace(case, splits=None, ppcb=None, block_q=None, name=case.name + "-auto")
            check_case(plain, interpret=False, num_batches=2)
