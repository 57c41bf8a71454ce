"""The `cuda` attention backend (cuda_ext/): build, registration, planning, and the kernels on a GPU.

CPU (CI): when nvcc is on PATH the sources compile and the library exports the FFI handlers
(`nm -D`); the tile list, the launch plan, the validation errors and the StableHLO lowering for
CUDA are checked without a GPU; asking for the backend without a GPU raises a clear RuntimeError.

GPU (`-m gpu`, skipped unless JAX's first device is a GPU): the ragged sweep against the pure-jnp
reference. Every batch is drawn fresh: decodes, fresh prefills, continued prefill chunks and
sequences without query rows; KV lengths at and around page boundaries; block tables drawn from a
shuffled pool with garbage (-1, out-of-range ids, stale live ids) in unused entries. Poisoning: every
cache slot no sequence owns (past a sequence's length, unused pages, the other layer) holds
NaN/inf/3e38, padding query rows are NaN, and the output buffer starts as NaN (aliased into the
kernel). The reference sees the same values with unowned slots zeroed. A read of an unowned slot
shows as NaN or a mismatch; an owned row the kernel fails to write stays NaN; padding rows must come
back as exact zeros.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cuda_ext import attention as cuda_attention
from cuda_ext import build, registry
from cuda_ext.attention import plan_launch, ragged_paged_attention_cuda, validate_inputs, work_list
from pallas_kernels.reference import ragged_paged_attention_reference

ON_GPU = jax.devices()[0].platform == "gpu"
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU (JAX's first device is not a GPU)")
L = 2  # layers in every test cache
GARBAGE = np.array([np.nan, np.inf, -np.inf, 3e38], np.float32)


# --------------------------------------------------------------------------------------------------
# Random ragged batches.
# --------------------------------------------------------------------------------------------------


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
    block_q: int | None = None  # None: automatic
    window: int | None = None
    layer: int = 1
    S: int = 5
    T: int = 48
    P: int = 4  # pages per sequence at most (block-table width)


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _kv_len(rng, q_len: int, bs: int, max_kv: int) -> int:
    """A KV length at or around a page boundary, or anywhere; never below q_len."""
    choices = [1, bs - 1, bs, bs + 1, 2 * bs - 1, 2 * bs, 2 * bs + 1, max_kv, int(rng.integers(1, max_kv + 1))]
    return int(min(max_kv, max(q_len, choices[int(rng.integers(len(choices)))])))


def _lengths(rng, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(q_lens [S], kv_lens [S]) of one batch with sum(q_lens) <= T."""
    S, bs, max_kv = case.S, case.bs, case.P * case.bs
    if case.decode:
        kinds = ["decode"] * S
    else:
        kinds = ["decode", "prefill", "chunk"] + list(rng.choice(["decode", "prefill", "chunk", "empty"], size=S - 3))
        kinds = [kinds[i] for i in rng.permutation(S)]
    max_q = max(2, min(max_kv, case.T // 2))
    q_lens = np.array([{"decode": 1, "empty": 0}.get(k, int(rng.integers(2, max_q + 1))) for k in kinds])
    empty = int(rng.integers(S))  # one sequence without query rows in every batch
    q_lens[empty], kinds[empty] = 0, "empty"
    while q_lens.sum() > case.T:
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
    """(kernel args (poisoned), reference args (clean), number of valid query rows)."""
    rng = _rng(case.name, seed)
    S, P, bs, D, Hkv, T = case.S, case.P, case.bs, case.D, case.Hkv, case.T
    Hq = Hkv * case.G
    q_lens, kv_lens = _lengths(rng, case)
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    pages = -(-kv_lens // bs)
    N = S * P + 6  # a pool larger than any batch needs
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
        return np.where(live[..., None], x, rng.choice(GARBAGE, size=x.shape)), np.where(live[..., None], x, 0.0)

    k_bad, k_ok = cache()
    v_bad, v_ok = cache()
    q = exact(rng.standard_normal((T, Hq, D), np.float32))
    q[qsl[-1] :] = np.nan  # padding rows
    tables = (jnp.asarray(block_tables), jnp.asarray(kv_lens, jnp.int32), jnp.asarray(qsl))
    kernel_args = (jnp.asarray(q, dtype), jnp.asarray(k_bad, dtype), jnp.asarray(v_bad, dtype), *tables)
    ref_args = (jnp.asarray(q), jnp.asarray(k_ok), jnp.asarray(v_ok), *tables)
    return kernel_args, ref_args, int(qsl[-1])


_reference_jit = jax.jit(ragged_paged_attention_reference, static_argnames=("sliding_window",))


def reference(*args, sliding_window=None, jit=True) -> np.ndarray:
    """The oracle in full float32 (JAX's default f32 matmul on GPUs may be TF32); jitted by default
    (one compile per shape instead of op-by-op dispatch)."""
    fn = _reference_jit if jit else ragged_paged_attention_reference
    with jax.default_matmul_precision("highest"):
        return np.asarray(fn(*args, sliding_window=sliding_window))


def _tolerance(dtype: str) -> dict:
    return dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)


def check_case(case: Case, num_batches: int = 3, jit_reference: bool = True) -> None:
    for seed in range(num_batches):
        kernel_args, ref_args, n_valid = make_batch(case, seed)
        T, Hq, D = kernel_args[0].shape
        expected = reference(*ref_args, case.layer, sliding_window=case.window, jit=jit_reference)
        got = ragged_paged_attention_cuda(
            *kernel_args,
            case.layer,
            sliding_window=case.window,
            decode_only=case.decode,
            block_q=case.block_q,
            num_kv_splits=case.splits,
            _out_init=jnp.asarray(np.full((T, Hq, D), np.nan, np.float32).astype(kernel_args[0].dtype)),
        )
        got = np.asarray(got).astype(np.float32)
        assert got.shape == (T, Hq, D)
        np.testing.assert_allclose(
            got[:n_valid], expected[:n_valid], err_msg=f"{case.name} batch {seed}", **_tolerance(case.dtype)
        )
        np.testing.assert_array_equal(got[n_valid:], 0.0, err_msg=f"{case.name} batch {seed}: padding rows")


# Every GQA ratio (incl. odd), all three head dims, both block sizes, all dtypes, both paths, forced
# and automatic KV splits, odd block_q, sliding windows; then longer contexts and bigger batches.
GPU_CASES = [
    Case("dec-g1-d64-bs16-f32", 1, 64, 16, "float32", True, splits=1),
    Case("dec-g2-d64-bs32-f32-z4", 2, 64, 32, "float32", True, splits=4, layer=0),
    Case("dec-g4-d128-bs16-bf16-z2", 4, 128, 16, "bfloat16", True, splits=2),
    Case("dec-g8-d128-bs32-f16", 8, 128, 32, "float16", True, Hkv=1),
    Case("dec-g3-d64-bs16-f32-z3", 3, 64, 16, "float32", True, splits=3),
    Case("dec-g4-d256-bs16-bf16", 4, 256, 16, "bfloat16", True, Hkv=1),
    Case("dec-g4-d256-bs32-f32-z2", 4, 256, 32, "float32", True, splits=2),
    Case("dec-g4-d64-bs16-f32-window-z2", 4, 64, 16, "float32", True, splits=2, window=20),
    Case("gen-g1-d64-bs16-f32", 1, 64, 16, "float32", False),
    Case("gen-g2-d64-bs32-bf16-bq5", 2, 64, 32, "bfloat16", False, block_q=5, layer=0),
    Case("gen-g4-d128-bs16-f32", 4, 128, 16, "float32", False),
    Case("gen-g8-d128-bs32-bf16", 8, 128, 32, "bfloat16", False, Hkv=1, P=3),
    Case("gen-g3-d64-bs16-f16-bq1", 3, 64, 16, "float16", False, block_q=1),
    Case("gen-g4-d256-bs16-bf16", 4, 256, 16, "bfloat16", False, Hkv=1),
    Case("gen-g2-d128-bs16-f32-window-z3", 2, 128, 16, "float32", False, splits=3, window=13),
    Case("gen-g1-d64-bs32-f32-z2-bq3", 1, 64, 32, "float32", False, splits=2, block_q=3),
    # longer contexts, bigger batches
    Case("long-dec-g4-d128-bs16-bf16", 4, 128, 16, "bfloat16", True, Hkv=8, S=3, T=8, P=96),
    Case("long-dec-g8-d128-bs32-f32-z8", 8, 128, 32, "float32", True, S=4, T=8, P=40, splits=8),
    Case("long-dec-g1-d64-bs16-bf16-many", 1, 64, 16, "bfloat16", True, Hkv=4, S=64, T=80, P=8),
    Case("long-dec-g2-d128-bs16-bf16-window", 2, 128, 16, "bfloat16", True, S=4, T=8, P=64, window=200),
    Case("long-gen-g4-d128-bs16-bf16", 4, 128, 16, "bfloat16", False, Hkv=8, S=6, T=512, P=48),
    Case("long-gen-g8-d128-bs32-f32", 8, 128, 32, "float32", False, S=4, T=256, P=20),
    Case("long-gen-g1-d64-bs16-bf16-window", 1, 64, 16, "bfloat16", False, S=4, T=256, P=24, window=77),
    Case("long-gen-g4-d256-bs16-f16", 4, 256, 16, "float16", False, Hkv=1, S=4, T=128, P=16),
]


# --------------------------------------------------------------------------------------------------
# CPU: build, registration errors, planning, validation, lowering.
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_library_builds_and_exports_handlers():
    path = build.build_library()
    assert path.exists() and path.parent == build.cache_dir()
    syms = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in syms.stdout.splitlines() if " T " in line}
    for sym in build.HANDLER_SYMBOLS:
        assert sym in exported, f"{sym} not exported by {path}"
    assert set(registry.TARGETS.values()) == set(build.HANDLER_SYMBOLS)
    # A second call takes the cached file.
    mtime = path.stat().st_mtime_ns
    assert build.build_library() == path and path.stat().st_mtime_ns == mtime


def test_cache_key_covers_sources_toolchain_and_flags():
    srcs = {p.name: p.read_bytes() for p in build.source_files()}
    assert build.MAIN_SOURCE in srcs and len(srcs) >= 3
    base = build.cache_key(srcs, "nvcc 13.0", "0.10.2")
    assert base == build.cache_key(dict(srcs), "nvcc 13.0", "0.10.2")
    edited = dict(srcs, **{build.MAIN_SOURCE: srcs[build.MAIN_SOURCE] + b"\n// edit"})
    assert build.cache_key(edited, "nvcc 13.0", "0.10.2") != base
    assert build.cache_key(srcs, "nvcc 13.1", "0.10.2") != base
    assert build.cache_key(srcs, "nvcc 13.0", "0.11.2") != base
    assert build.cache_key(srcs, "nvcc 13.0", "0.10.2", flags=("-O2",)) != base


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "c"))
    assert build.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(build.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.cache_dir() == tmp_path / "jaxllm" / "cuda_ext"


def test_missing_nvcc_is_named(monkeypatch):
    monkeypatch.setenv("NVCC", "/nonexistent/nvcc")
    assert build.find_nvcc() is None
    with pytest.raises(RuntimeError, match=r"nvcc \(the CUDA compiler\) was not found"):
        build.build_library()
    assert any("nvcc" in m for m in registry.missing_requirements())


@pytest.mark.skipif(ON_GPU, reason="checks the error raised without a GPU")
def test_no_gpu_raises_clear_error():
    q = jnp.zeros((4, 4, 64), jnp.float32)
    k = jnp.zeros((1, 4, 2, 16, 64), jnp.float32)
    args = (q, k, k, jnp.zeros((2, 2), jnp.int32), jnp.ones(2, jnp.int32), jnp.array([0, 1, 2], jnp.int32))
    with pytest.raises(RuntimeError, match=r"attention backend 'cuda' is not available: missing an NVIDIA GPU"):
        ragged_paged_attention_cuda(*args, decode_only=True)


def _work_list_numpy(qsl: np.ndarray, block_q: int, num_tiles: int) -> np.ndarray:
    work = [(s, off) for s in range(len(qsl) - 1) for off in range(0, max(0, qsl[s + 1] - qsl[s]), block_q)]
    assert len(work) <= num_tiles
    return np.array(work + [(-1, 0)] * (num_tiles - len(work)), np.int32).reshape(num_tiles, 2)


@pytest.mark.parametrize("block_q", [1, 3, 8])
def test_work_list_matches_loop(block_q):
    rng = _rng("work", block_q)
    S, T = 7, 40
    plan = plan_launch(T, S, 4, 8, 2, 64, 16, 4, decode_only=False, block_q=block_q)
    fn = jax.jit(lambda qsl: work_list(qsl, plan.block_q, plan.num_tiles))
    for _ in range(30):
        q_lens = rng.multinomial(int(rng.integers(0, T + 1)), rng.dirichlet(np.ones(S) * 0.5))
        qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        np.testing.assert_array_equal(np.asarray(fn(jnp.asarray(qsl))), _work_list_numpy(qsl, block_q, plan.num_tiles))


def test_plan_launch():
    # decode: one tile per sequence, one row per query head of the group
    p = plan_launch(128, 128, 8, 32, 8, 128, 16, 2, decode_only=True)
    assert (p.block_q, p.num_tiles, p.max_rows) == (1, 128, 4)
    assert p.num_splits == 1  # 128 * 8 programs already fill the GPU
    # few sequences, long context: split the KV; short context: do not
    p = plan_launch(8, 4, 256, 32, 8, 128, 16, 2, decode_only=True)
    assert p.num_splits == 16 and p.scratch_shapes(8, 128) == ((4 * 8 * 16 * 4 * 128,), (4 * 8 * 16 * 4 * 2,))
    assert plan_launch(8, 4, 2, 32, 8, 128, 16, 2, decode_only=True).num_splits == 1
    # general: ~32 rows per program, tile bound T // block_q + S
    p = plan_launch(512, 6, 48, 32, 8, 128, 16, 2, decode_only=False)
    assert (p.block_q, p.num_tiles, p.max_rows, p.num_splits) == (8, 70, 32, 1)
    assert plan_launch(512, 6, 48, 4, 1, 256, 16, 2, decode_only=False).block_q == 4
    assert plan_launch(16, 2, 8, 8, 2, 64, 16, 4, decode_only=False, num_kv_splits=3).num_splits == 3
    assert cuda_attention.block_k(128, 2) == 32 and cuda_attention.block_k(256, 4) == 16


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
            r"head dim D=80 unsupported",
        ),
        (dict(block_tables=_sds((12,), jnp.int32)), r"block_tables must be \[S, P\]"),
        (dict(kv_lens=_sds((4,), jnp.int32)), r"kv_lens shape \(4,\) must be \(S,\) = \(3,\)"),
        (dict(query_start_loc=_sds((3,), jnp.int32)), r"query_start_loc shape \(3,\) must be \(S \+ 1,\)"),
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
        (dict(layer=_sds((2,), jnp.int32)), r"layer must be an int or an integer scalar"),
        (dict(sliding_window=0), r"sliding_window must be a positive int"),
        (dict(sm_scale=-1.0), r"sm_scale must be a positive float"),
        (dict(block_q=0), r"block_q must be a positive int"),
        (dict(num_kv_splits=65), r"num_kv_splits must be an int in \[1, 64\]"),
    ],
)
def test_validation_errors_keywords(kwargs, message):
    layer = kwargs.pop("layer", 0)
    with pytest.raises(ValueError, match=message):
        validate_inputs(*GOOD.values(), layer, **kwargs)


def test_public_entry_validates_before_needing_a_gpu():
    q = jnp.zeros((4, 6, 64))
    k = jnp.zeros((1, 4, 4, 16, 64))
    bt = jnp.zeros((2, 2), jnp.int32)
    with pytest.raises(ValueError, match=r"Hq=6 .* must be a multiple of Hkv=4"):
        ragged_paged_attention_cuda(q, k, k, bt, jnp.ones(2, jnp.int32), jnp.array([0, 1, 2], jnp.int32))
    q = jnp.zeros((4, 8, 64))
    with pytest.raises(ValueError, match=r"decode_only=True needs at most one query row per sequence"):
        ragged_paged_attention_cuda(q, k, k, bt, jnp.ones(2, jnp.int32), jnp.array([0, 1, 3], jnp.int32), decode_only=True)


@pytest.mark.parametrize("decode_only", [True, False])
def test_lowers_to_one_ffi_custom_call_for_cuda(decode_only):
    """The jitted wrapper lowers for CUDA on any machine: one custom call with the typed attributes,
    the layer passed as a device scalar operand (the cache is never sliced)."""
    T, S, D = 8, 3, 64
    q = _sds((T, 8, D), jnp.bfloat16)
    k = _sds((2, 10, 2, 16, D), jnp.bfloat16)
    plan = plan_launch(T, S, 4, 8, 2, D, 16, 2, decode_only=decode_only, num_kv_splits=2)
    lowered = cuda_attention._rpa_call.trace(
        q, k, k, _sds((S, 4), jnp.int32), _sds((S,), jnp.int32), _sds((S + 1,), jnp.int32),
        _sds((), jnp.int32), None, plan=plan, sm_scale=0.125, window=7, decode_only=decode_only,
    ).lower(lowering_platforms=("cuda",))  # fmt: skip
    calls = [line for line in lowered.as_text().splitlines() if "stablehlo.custom_call" in line]
    assert len(calls) == 1 and "@jaxllm_ragged_paged_attention(" in calls[0]
    for attr in ("block_q = %d : i32" % plan.block_q, "num_splits = 2 : i32", "sliding_window = 7 : i32",
                 "sm_scale = 1.250000e-01 : f32", "tensor<2x10x2x16x64xbf16>", "tensor<i32>"):  # fmt: skip
        assert attr in calls[0], attr


# --------------------------------------------------------------------------------------------------
# GPU.
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_matches_reference(case):
    check_case(case)


@pytest.mark.gpu
@gpu_only
def test_public_entry_zero_padding_rows():
    case = GPU_CASES[10]
    kernel_args, ref_args, n_valid = make_batch(case, 99)
    got = np.asarray(ragged_paged_attention_cuda(*kernel_args, case.layer))
    assert n_valid < got.shape[0]
    np.testing.assert_array_equal(got[n_valid:], 0.0)
    np.testing.assert_allclose(got[:n_valid], reference(*ref_args, case.layer)[:n_valid], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@gpu_only
def test_decode_and_general_paths_agree():
    case = Case("agree", 4, 128, 16, "float32", True, S=9, T=12, P=6)
    kernel_args, _, n_valid = make_batch(case, 3)
    a = np.asarray(ragged_paged_attention_cuda(*kernel_args, case.layer, decode_only=True))
    b = np.asarray(ragged_paged_attention_cuda(*kernel_args, case.layer, decode_only=False, num_kv_splits=2))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@gpu_only
def test_traced_layer_inside_scan():
    """Inside jit + lax.scan over layers the layer index is traced; each step reads its own layer."""
    case = GPU_CASES[10]
    rng = _rng("scan")
    kernel_args, ref_args, n_valid = make_batch(case, 7)
    q, _, _, bt, kv, qsl = ref_args
    k = jnp.asarray(rng.standard_normal(kernel_args[1].shape, np.float32))
    v = jnp.asarray(rng.standard_normal(kernel_args[2].shape, np.float32))

    @jax.jit
    def all_layers(q, k, v, bt, kv, qsl):
        def step(carry, layer):
            return carry, ragged_paged_attention_cuda(q, k, v, bt, kv, qsl, layer)

        return jax.lax.scan(step, 0, jnp.arange(L, dtype=jnp.int32))[1]

    got = np.asarray(all_layers(q, k, v, bt, kv, qsl))
    for layer in range(L):
        expected = reference(q, k, v, bt, kv, qsl, layer)
        np.testing.assert_allclose(got[layer, :n_valid], expected[:n_valid], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[layer, n_valid:], 0.0)


@pytest.mark.gpu
@gpu_only
def test_small_cases_for_memcheck():
    """A small decode and a small general batch, both with KV splits: scripts/gpu_cuda_check.sh runs
    this test under `compute-sanitizer --tool memcheck` (op-by-op reference, as in the clean run;
    with the jitted reference the sanitized run did not finish in 4 minutes)."""
    dec = Case("memcheck-dec", 4, 128, 16, "bfloat16", True, S=3, T=4, P=4, splits=2)
    gen = Case("memcheck-gen", 2, 64, 16, "float32", False, S=4, T=32, P=4, splits=2, window=9)
    check_case(dec, num_batches=1, jit_reference=False)
    check_case(gen, num_batches=1, jit_reference=False)
