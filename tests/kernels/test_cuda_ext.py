"""The `cuda` attention backend (cuda_ext/): build, registration, planning, the kernels on a GPU.

CPU (CI): when nvcc is on PATH the sources compile and the library exports the FFI handlers
(`nm -D`); the tile list, the launch plan, the validation errors and the StableHLO lowering for
CUDA are checked without a GPU; asking for the backend without a GPU raises a clear RuntimeError.

GPU (`-m gpu`, skipped unless JAX's first device is a GPU): the ragged sweep against the pure-jnp
reference, on fresh poisoned batches from `ragged_batches.make_batch` (read its docstring); the
output buffer starts as NaN too (aliased into the kernel), so an owned row the kernel fails to write
stays NaN; padding rows must come back as exact zeros. Decode cases (and general cases with
block_q=1) run the single-row kernel, the others the multi-row kernel; both with one KV split and
with several (split kernel + combine kernel).
"""

from __future__ import annotations

import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ragged_batches import GOOD_SHAPES, Case, L, make_batch, reference, rng_for, sds, tolerance

from cuda_ext import attention as cuda_attention
from cuda_ext import build, registry
from cuda_ext.attention import plan_launch, ragged_paged_attention_cuda, validate_inputs, work_list

ON_GPU = jax.devices()[0].platform == "gpu"
gpu_only = pytest.mark.skipif(
    not ON_GPU, reason="needs an NVIDIA GPU (JAX's first device is not a GPU)"
)


def check_case(
    case: Case, num_batches: int = 3, jit_reference: bool = True, decode_kernel: str = "auto"
) -> None:
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
            decode_kernel=decode_kernel,
            _out_init=jnp.asarray(
                np.full((T, Hq, D), np.nan, np.float32).astype(kernel_args[0].dtype)
            ),
        )
        got = np.asarray(got).astype(np.float32)
        assert got.shape == (T, Hq, D)
        np.testing.assert_allclose(
            got[:n_valid],
            expected[:n_valid],
            err_msg=f"{case.name} batch {seed}",
            **tolerance(case.dtype),
        )
        np.testing.assert_array_equal(
            got[n_valid:], 0.0, err_msg=f"{case.name} batch {seed}: padding rows"
        )


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
    Case("dec-g16-d64-bs16-f32-multirow", 16, 64, 16, "float32", True, Hkv=1, splits=2),  # G > 8
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
    Case(
        "long-dec-g2-d128-bs16-bf16-window",
        2,
        128,
        16,
        "bfloat16",
        True,
        S=4,
        T=8,
        P=64,
        window=200,
    ),
    Case("long-gen-g4-d128-bs16-bf16", 4, 128, 16, "bfloat16", False, Hkv=8, S=6, T=512, P=48),
    Case("long-gen-g8-d128-bs32-f32", 8, 128, 32, "float32", False, S=4, T=256, P=20),
    Case(
        "long-gen-g1-d64-bs16-bf16-window",
        1,
        64,
        16,
        "bfloat16",
        False,
        S=4,
        T=256,
        P=24,
        window=77,
    ),
    Case("long-gen-g4-d256-bs16-f16", 4, 256, 16, "float16", False, Hkv=1, S=4, T=128, P=16),
    # tensor-core decode kernel (16-bit, D 64/128): odd G, a window with splits, many splits
    Case("dec-g3-d64-bs16-f16-window-z3", 3, 64, 16, "float16", True, splits=3, window=21),
    Case("long-dec-g4-d128-bs16-bf16-z16", 4, 128, 16, "bfloat16", True, S=2, T=4, P=64, splits=16),
    Case("long-dec-g8-d64-bs32-bf16", 8, 64, 32, "bfloat16", True, Hkv=2, S=6, T=8, P=20),
]
# The same 16-bit decode shapes on the CUDA-core row kernel (decode_kernel="cuda-cores").
CUDA_CORE_CASES = [
    Case("cores-dec-g4-d128-bs16-bf16-z2", 4, 128, 16, "bfloat16", True, splits=2),
    Case("cores-long-dec-g2-d128-bs16-bf16", 2, 128, 16, "bfloat16", True, S=4, T=8, P=64),
]


# --------------------------------------------------------------------------------------------------
# CPU: build, registration errors, planning, validation, lowering.
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_library_builds_and_exports_handlers():
    path = build.build_library()
    assert path.exists() and path.parent == build.cache_dir()
    syms = subprocess.run(
        ["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True
    )
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
    args = (
        q,
        k,
        k,
        jnp.zeros((2, 2), jnp.int32),
        jnp.ones(2, jnp.int32),
        jnp.array([0, 1, 2], jnp.int32),
    )
    with pytest.raises(
        RuntimeError, match=r"attention backend 'cuda' is not available: missing an NVIDIA GPU"
    ):
        ragged_paged_attention_cuda(*args, decode_only=True)


def _work_list_numpy(qsl: np.ndarray, block_q: int, num_tiles: int) -> np.ndarray:
    work = [
        (s, off)
        for s in range(len(qsl) - 1)
        for off in range(0, max(0, qsl[s + 1] - qsl[s]), block_q)
    ]
    assert len(work) <= num_tiles
    return np.array(work + [(-1, 0)] * (num_tiles - len(work)), np.int32).reshape(num_tiles, 2)


@pytest.mark.parametrize("block_q", [1, 3, 8])
def test_work_list_matches_loop(block_q):
    rng = rng_for("work", block_q)
    S, T = 7, 40
    plan = plan_launch(T, S, 4, 8, 2, 64, 16, 4, decode_only=False, block_q=block_q)
    fn = jax.jit(lambda qsl: work_list(qsl, plan.block_q, plan.num_tiles))
    for _ in range(30):
        q_lens = rng.multinomial(int(rng.integers(0, T + 1)), rng.dirichlet(np.ones(S) * 0.5))
        qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        np.testing.assert_array_equal(
            np.asarray(fn(jnp.asarray(qsl))), _work_list_numpy(qsl, block_q, plan.num_tiles)
        )


def test_plan_launch():
    # decode: one tile per sequence, one row per query head of the group
    p = plan_launch(128, 128, 8, 32, 8, 128, 16, 2, decode_only=True)
    assert (p.block_q, p.num_tiles, p.max_rows) == (1, 128, 4)
    assert p.num_splits == 1  # 128 * 8 programs already fill the GPU
    # few sequences, long context: split the KV; short context: do not
    p = plan_launch(8, 4, 256, 32, 8, 128, 16, 2, decode_only=True)
    assert p.num_splits == 12 and p.scratch_shapes(8, 128) == (
        (4 * 8 * 12 * 4 * 128,),
        (4 * 8 * 12 * 4 * 2,),
    )
    assert plan_launch(8, 4, 2, 32, 8, 128, 16, 2, decode_only=True).num_splits == 1
    # which single-row kernel: tensor cores for 16-bit types at D 64/128, else CUDA cores
    assert cuda_attention.uses_row_kernel(1, 4) and not cuda_attention.uses_row_kernel(1, 16)
    assert not cuda_attention.uses_row_kernel(8, 4)
    mma = cuda_attention.uses_mma_row_kernel
    assert mma(1, 4, 128, 2, "auto") and mma(1, 8, 64, 2, "auto")
    assert not mma(1, 4, 256, 2, "auto") and not mma(1, 4, 128, 4, "auto")
    assert not mma(1, 4, 128, 2, "cuda-cores") and not mma(1, 16, 128, 2, "auto")

    # tensor-core kernel: the split count that fills the last wave of 3 * 132 programs best, each
    # split >= 256 tokens, <= 16; 1 from 4 waves on
    def splits(S, P, **kw):
        return plan_launch(S, S, P, 32, 8, 128, 16, 2, decode_only=True, **kw).num_splits

    assert splits(16, 128) == 3  # 16 x 2048: 128 programs -> 384 (0.97 of a wave)
    assert splits(16, 512) == 3  # 16 x 8192
    assert splits(64, 128) == 3  # 64 x 2048: 512 programs -> 1536 (3.9 waves)
    assert splits(64, 32) == 2  # 64 x 512: at most 2 splits of 256 tokens
    assert splits(256, 512) == 1  # 2048 programs: >= 4 waves
    assert splits(1, 32) == 2  # 1 x 512: 2 splits of 256 tokens
    assert splits(1, 512) == 16  # 1 x 8192
    # CUDA-core row kernel (float32, D 256, or asked for): ~8 programs per SM, >= 256 tokens, <= 16
    cores = {"decode_kernel": "cuda-cores"}
    assert splits(16, 128, **cores) == 8  # 16 x 2048
    assert splits(16, 512, **cores) == 9  # 16 x 8192
    assert splits(64, 128, **cores) == 3  # 64 x 2048
    assert splits(256, 512, **cores) == 1
    assert splits(1, 32, **cores) == 2  # 1 x 512
    assert plan_launch(16, 16, 128, 32, 8, 128, 16, 4, decode_only=True).num_splits == 8  # f32
    # general: ~32 rows per program, tile bound T // block_q + S
    p = plan_launch(512, 6, 48, 32, 8, 128, 16, 2, decode_only=False)
    assert (p.block_q, p.num_tiles, p.max_rows, p.num_splits) == (8, 70, 32, 1)
    assert plan_launch(512, 6, 48, 4, 1, 256, 16, 2, decode_only=False).block_q == 4
    assert (
        plan_launch(16, 2, 8, 8, 2, 64, 16, 4, decode_only=False, num_kv_splits=3).num_splits == 3
    )
    assert cuda_attention.block_k(128, 2) == 32 and cuda_attention.block_k(256, 4) == 16


GOOD = GOOD_SHAPES


# The checks shared by all backends are tested in test_ragged_inputs.py; these are cuda's own.
@pytest.mark.parametrize(
    "change, kwargs, message",
    [
        (
            dict(
                q=sds((8, 8, 32)),
                k_pages=sds((2, 10, 2, 16, 32)),
                v_pages=sds((2, 10, 2, 16, 32)),
            ),
            {},
            r"head dim D=32 .* unsupported by the cuda backend",
        ),
        ({}, dict(block_q=0), r"block_q must be an int >= 1"),
        ({}, dict(num_kv_splits=65), r"num_kv_splits must be an int in \[1, 64\]"),
    ],
)
def test_validation_errors_cuda(change, kwargs, message):
    args = {**GOOD, **change}
    with pytest.raises(ValueError, match=message):
        validate_inputs(*args.values(), 0, **kwargs)


def test_public_entry_validates_before_needing_a_gpu():
    q = jnp.zeros((4, 6, 64))
    k = jnp.zeros((1, 4, 4, 16, 64))
    bt = jnp.zeros((2, 2), jnp.int32)
    with pytest.raises(ValueError, match=r"Hq=6 .* must be a multiple of Hkv=4"):
        ragged_paged_attention_cuda(
            q, k, k, bt, jnp.ones(2, jnp.int32), jnp.array([0, 1, 2], jnp.int32)
        )
    q = jnp.zeros((4, 8, 64))
    with pytest.raises(
        ValueError, match=r"decode_only=True needs at most one query row per sequence"
    ):
        ragged_paged_attention_cuda(
            q, k, k, bt, jnp.ones(2, jnp.int32), jnp.array([0, 1, 3], jnp.int32), decode_only=True
        )
    with pytest.raises(ValueError, match=r"decode_kernel must be one of \['auto', 'cuda-cores'\]"):
        ragged_paged_attention_cuda(
            q, k, k, bt, jnp.ones(2, jnp.int32), jnp.array([0, 1, 2], jnp.int32), decode_kernel="tc"
        )


@pytest.mark.parametrize("decode_only", [True, False])
def test_lowers_to_one_ffi_custom_call_for_cuda(decode_only):
    """The jitted wrapper lowers for CUDA on any machine: one custom call with the typed attributes,
    the layer passed as a device scalar operand (the cache is never sliced)."""
    T, S, D = 8, 3, 64
    q = sds((T, 8, D), jnp.bfloat16)
    k = sds((2, 10, 2, 16, D), jnp.bfloat16)
    plan = plan_launch(T, S, 4, 8, 2, D, 16, 2, decode_only=decode_only, num_kv_splits=2)
    lowered = cuda_attention._rpa_call.trace(
        q, k, k, sds((S, 4), jnp.int32), sds((S,), jnp.int32), sds((S + 1,), jnp.int32),
        sds((), jnp.int32), None, plan=plan, sm_scale=0.125, window=7, decode_only=decode_only,
        decode_kernel="cuda-cores",
    ).lower(lowering_platforms=("cuda",))  # fmt: skip
    calls = [line for line in lowered.as_text().splitlines() if "stablehlo.custom_call" in line]
    assert len(calls) == 1 and "@jaxllm_ragged_paged_attention(" in calls[0]
    attrs = (
        f"block_q = {plan.block_q:d} : i32",
        "decode_kernel = 1 : i32",
        "num_splits = 2 : i32",
        "sliding_window = 7 : i32",
        "sm_scale = 1.250000e-01 : f32",
        "tensor<2x10x2x16x64xbf16>",
        "tensor<i32>",
    )
    for attr in attrs:
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
@pytest.mark.parametrize("case", CUDA_CORE_CASES, ids=lambda c: c.name)
def test_cuda_core_row_kernel_matches_reference(case):
    check_case(case, decode_kernel="cuda-cores")


@pytest.mark.gpu
@gpu_only
def test_public_entry_zero_padding_rows():
    case = GPU_CASES[10]
    kernel_args, ref_args, n_valid = make_batch(case, 99)
    got = np.asarray(ragged_paged_attention_cuda(*kernel_args, case.layer))
    assert n_valid < got.shape[0]
    np.testing.assert_array_equal(got[n_valid:], 0.0)
    np.testing.assert_allclose(
        got[:n_valid], reference(*ref_args, case.layer)[:n_valid], **tolerance(case.dtype)
    )


@pytest.mark.gpu
@gpu_only
def test_decode_and_general_paths_agree():
    case = Case("agree", 4, 128, 16, "float32", True, S=9, T=12, P=6)
    kernel_args, _, n_valid = make_batch(case, 3)
    a = np.asarray(ragged_paged_attention_cuda(*kernel_args, case.layer, decode_only=True))
    b = np.asarray(
        ragged_paged_attention_cuda(*kernel_args, case.layer, decode_only=False, num_kv_splits=2)
    )
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@gpu_only
def test_traced_layer_inside_scan():
    """Inside jit + lax.scan over layers the layer index is traced; each step reads its layer."""
    case = GPU_CASES[10]
    rng = rng_for("scan")
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
    """A small decode and a small general batch, both with KV splits, op-by-op reference (the
    sanitized GPU runs use `python -m cuda_ext.memcheck_case`, whose reference is a numpy loop: a
    memcheck of this test with the jitted reference did not finish in 4 minutes)."""
    dec = Case("memcheck-dec", 4, 128, 16, "bfloat16", True, S=3, T=4, P=4, splits=2)
    gen = Case("memcheck-gen", 2, 64, 16, "float32", False, S=4, T=32, P=4, splits=2, window=9)
    check_case(dec, num_batches=1, jit_reference=False)
    check_case(gen, num_batches=1, jit_reference=False)
