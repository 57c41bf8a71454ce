"""float8 e4m3 KV pages (`kv_cache_dtype="fp8"`, `pallas_kernels.kv_quant`).

- Every backend that runs here (`cpu`'s jnp path, `cpu_ext`'s C++ kernel, the Pallas kernels in
  interpret mode, decode and general paths, with KV splits) reads fp8 pages as the reference
  does, on the same pages, within the float tolerances of `ragged_batches.tolerance`; the batches
  are `ragged_batches.make_batch`'s, quantized, with every slot no sequence owns still poisoned
  (NaN stays NaN, +-inf clamps to +-448) and padding query rows NaN.
- Every finite e4m3 value is read exactly (times v_scale), subnormals included.
- The reference with fp8 pages against the reference with the float pages they were quantized
  from: the error stays within a stated share of the values' range.
- The write path: divide by the scale, clamp to +-448, round; padding rows dropped; gathers and
  scatters touch only the bytes (no float8 op on the whole cache in the compiled code).
- The Pallas kernels and the cuda custom call lower for CUDA with fp8 pages passed as bytes.
The cuda backend's fp8 kernels run on a GPU only (`-m gpu`).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ragged_batches import Case, make_batch, sds, tolerance

from pallas_kernels import kv_quant
from pallas_kernels.cpu_paged_attention import ragged_paged_attention_cpu
from pallas_kernels.ragged_inputs import validate_inputs
from pallas_kernels.ragged_paged_attention import ragged_paged_attention
from pallas_kernels.reference import ragged_paged_attention_reference, write_kv_pages

pytestmark = pytest.mark.filterwarnings(
    "ignore:The Pallas Triton backend is deprecated:DeprecationWarning"
)

FP8 = jnp.float8_e4m3fn
SCALES = dict(k_scale=0.5, v_scale=2.0)  # powers of two: the reference's products are exact


def fp8_batch(case: Case, seed: int, k_scale: float, v_scale: float):
    """make_batch's batch with K and V scaled up 3x (past +-1, into e4m3's coarser range) and
    quantized: (kernel args (poisoned), reference args (clean), reference args with the float
    pages, number of valid rows)."""
    kernel_args, ref_args, n = make_batch(case, seed)

    def quant(k, v):  # from float32 values (the kernel's pages may be bf16: round once)
        k, v = 3 * k.astype(jnp.float32), 3 * v.astype(jnp.float32)
        return kv_quant.quantize(k, FP8, k_scale), kv_quant.quantize(v, FP8, v_scale)

    q = kernel_args[0]
    kernel = (q, *quant(*kernel_args[1:3]), *kernel_args[3:])
    ref = (ref_args[0], *quant(*ref_args[1:3]), *ref_args[3:])
    ref_float = (ref_args[0], 3 * ref_args[1], 3 * ref_args[2], *ref_args[3:])
    return kernel, ref, ref_float, n


@functools.cache
def _reference(window, k_scale, v_scale):
    return jax.jit(
        functools.partial(
            ragged_paged_attention_reference,
            sliding_window=window,
            k_scale=k_scale,
            v_scale=v_scale,
        )
    )


def reference(args, layer, window=None, **scales) -> np.ndarray:
    """The oracle in full float32 on fp8 (or float) pages."""
    with jax.default_matmul_precision("highest"):
        return np.asarray(_reference(window, scales["k_scale"], scales["v_scale"])(*args, layer))


def check_backend(fn, case: Case, num_batches: int = 2, **kwargs) -> None:
    """`fn(*args, layer, **scales, **kwargs)` on fp8 pages matches the reference on the same
    pages; rows no sequence owns are 0."""
    for seed in range(num_batches):
        kernel_args, ref_args, _, n = fp8_batch(case, seed, **SCALES)
        want = reference(ref_args, case.layer, case.window, **SCALES)
        got = fn(*kernel_args, case.layer, sliding_window=case.window, **SCALES, **kwargs)
        got = np.asarray(got.astype(jnp.float32))
        msg = f"{case.name} batch {seed}"
        np.testing.assert_allclose(got[:n], want[:n], err_msg=msg, **tolerance(case.dtype))
        np.testing.assert_array_equal(got[n:], 0.0, err_msg=msg)


CASES = [
    Case("fp8-dec-g3-d64-bs16-f32", 3, 64, 16, "float32", True, Hkv=3, T=8),
    Case("fp8-gen-g2-d64-bs16-f32-window", 2, 64, 16, "float32", False, window=13),
    Case("fp8-dec-g4-d128-bs32-bf16", 4, 128, 32, "bfloat16", True, T=8),
    Case("fp8-gen-g4-d64-bs32-bf16", 4, 64, 32, "bfloat16", False, layer=0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cpu_jnp_matches_reference(case):
    fn = jax.jit(
        functools.partial(ragged_paged_attention_cpu, decode_only=case.decode),
        static_argnames=("sliding_window", "k_scale", "v_scale"),
    )
    check_backend(fn, case)


@pytest.mark.parametrize("case", [c for c in CASES if c.dtype == "float32"], ids=lambda c: c.id)
def test_cpu_ext_matches_reference(case):
    from cpu_ext import registry

    if registry.missing_requirements():
        pytest.skip(f"cpu_ext cannot run here: {registry.missing_requirements()}")
    from cpu_ext.attention import ragged_paged_attention_cpu_ext

    fn = jax.jit(
        functools.partial(ragged_paged_attention_cpu_ext, decode_only=case.decode),
        static_argnames=("sliding_window", "k_scale", "v_scale"),
    )
    check_backend(fn, case)


PALLAS_CASES = [
    (CASES[0], dict(num_kv_splits=1)),
    (CASES[2], dict(num_kv_splits=2)),  # split partials and the combine kernel
    (CASES[2], dict(num_kv_splits=2, decode_combine="fused")),
    (CASES[1], {}),
    (CASES[3], dict(unmasked_prefix=True)),
]


@pytest.mark.parametrize(
    "case, knobs", PALLAS_CASES, ids=[f"{c.id}-{'-'.join(k) or 'auto'}" for c, k in PALLAS_CASES]
)
def test_pallas_matches_reference_interpret(case, knobs):
    check_backend(
        ragged_paged_attention,
        case,
        num_batches=1,
        decode_only=case.decode,
        interpret=True,
        **knobs,
    )


def _every_code_batch():
    """All 254 finite e4m3 values as the V rows of 4 one-key sequences (D 64): each sequence's
    output row is its key's V row times v_scale, exactly (a softmax over one key is 1)."""
    codes = np.arange(256, dtype=np.uint8)
    codes = codes[(codes & 0x7F) != 0x7F]  # 0x7f / 0xff are e4m3fn's NaN
    S, D, bs = 4, 64, 16
    values = np.zeros(S * D, np.uint8)
    values[: codes.size] = codes
    v = np.zeros((1, S + 1, 1, bs, D), np.uint8)
    v[0, 1:, 0, 0] = values.reshape(S, D)
    rng = np.random.default_rng(0)
    k = rng.integers(0, 0x7E, size=v.shape).astype(np.uint8)  # any finite keys
    tables = np.arange(1, S + 1, dtype=np.int32)[:, None]
    args = (
        jnp.asarray(rng.standard_normal((S, 1, D)), jnp.float32),
        jnp.asarray(k.view(FP8)),
        jnp.asarray(v.view(FP8)),
        jnp.asarray(tables),
        jnp.ones(S, jnp.int32),
        jnp.arange(S + 1, dtype=jnp.int32),
    )
    expected = values.view(FP8).astype(np.float32).reshape(S, 1, D) * SCALES["v_scale"]
    return args, expected


def _backends():
    out = [
        ("reference", ragged_paged_attention_reference, {}),
        ("cpu-jnp", ragged_paged_attention_cpu, dict(decode_only=True)),
        ("pallas-decode", ragged_paged_attention, dict(decode_only=True, interpret=True)),
        ("pallas-general", ragged_paged_attention, dict(interpret=True)),
    ]
    from cpu_ext import registry

    if not registry.missing_requirements():
        from cpu_ext.attention import ragged_paged_attention_cpu_ext

        out.append(("cpu-ext", ragged_paged_attention_cpu_ext, {}))
    return out


@pytest.mark.parametrize("name, fn, kwargs", _backends(), ids=[b[0] for b in _backends()])
def test_every_finite_e4m3_value_is_read_exactly(name, fn, kwargs):
    args, expected = _every_code_batch()
    got = np.asarray(fn(*args, 0, **SCALES, **kwargs))
    np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("decode", [True, False])
def test_reference_fp8_pages_within_bound_of_float_pages(decode):
    """Pages rounded to e4m3 (3 mantissa bits: relative error <= 2^-4 for normal values) against
    the float pages they came from, K and V ~ N(0, 9): the outputs' RMS error stays within 8% of
    their RMS, each element within 15% of the largest |V| and the mean within 1% of it (measured
    over 24 batches: 3.5-5.6%, at most 9.8%, at most 0.6%)."""
    case = Case("fp8-bound", 4, 64, 16, "float32", decode, T=8 if decode else 48)
    for seed in range(3):
        _, ref_args, ref_float, n = fp8_batch(case, seed, k_scale=1.0, v_scale=1.0)
        got = reference(ref_args, case.layer, k_scale=1.0, v_scale=1.0)[:n]
        want = reference(ref_float, case.layer, k_scale=1.0, v_scale=1.0)[:n]
        v_max = float(np.abs(np.asarray(ref_float[2])).max())
        err = np.abs(got - want)
        assert np.sqrt((err**2).mean() / (want**2).mean()) <= 0.08, seed
        assert err.max() <= 0.15 * v_max, (seed, err.max(), v_max)
        assert err.mean() <= 0.01 * v_max, (seed, err.mean(), v_max)


def test_write_kv_pages_quantizes_clamps_and_drops_padding():
    k_pages = jnp.zeros((2, 4, 1, 4, 2), FP8)
    k = jnp.asarray([[[1.0, -3.0]], [[7.0, 7.0]], [[1000.0, -1e6]]], jnp.float32)  # [3, 1, 2]
    slots = jnp.asarray([5, -1, 12], jnp.int32)  # block 1 offset 1; padding; block 3 offset 0
    kp, vp = jax.jit(functools.partial(write_kv_pages, k_scale=0.5, v_scale=1.0))(
        k_pages, k_pages, k, k, slots, 1
    )
    assert kp.dtype == FP8 and vp.dtype == FP8
    kp = np.asarray(kp).astype(np.float32)
    vp = np.asarray(vp).astype(np.float32)
    np.testing.assert_array_equal(kp[1, 1, 0, 1], [2.0, -6.0])  # K / k_scale
    np.testing.assert_array_equal(kp[1, 3, 0, 0], [448.0, -448.0])  # clamped, not NaN
    np.testing.assert_array_equal(vp[1, 3, 0, 0], [448.0, -448.0])
    np.testing.assert_array_equal(vp[1, 1, 0, 1], [1.0, -3.0])
    assert np.count_nonzero(kp) == 4 and np.count_nonzero(kp[0]) == 0  # the padding row dropped
    # rounding to nearest even, as a cast does
    x = jnp.asarray(np.linspace(-500, 500, 4001, dtype=np.float32))
    want = np.clip(np.asarray(x), -448, 448).astype(FP8)
    np.testing.assert_array_equal(np.asarray(kv_quant.quantize(x, FP8, 1.0)), want)


def test_cache_ops_touch_only_bytes():
    """A layer's KV write and the jnp backends' gathers on fp8 pages compile to byte (u8) ops: no
    float8 array the size of the cache is converted or copied (XLA:CPU wraps a float8 scatter or
    gather in converts of its whole operand)."""
    shape = (4, 64, 2, 16, 64)
    pages = sds(shape, jnp.uint8)  # the engine's storage (kv_quant.to_storage)
    q = sds((8, 4, 64), jnp.float32)
    k = sds((8, 2, 64), jnp.float32)
    bt, lens, qsl = sds((8, 4), jnp.int32), sds((8,), jnp.int32), sds((9,), jnp.int32)

    def layer(kp, vp, q, k, slots, bt, lens, qsl):
        kp, vp = kv_quant.from_storage(kp, FP8), kv_quant.from_storage(vp, FP8)
        kp, vp = write_kv_pages(kp, vp, k, k, slots, 1, **SCALES)
        o1 = ragged_paged_attention_reference(q, kp, vp, bt, lens, qsl, 1, **SCALES)
        o2 = ragged_paged_attention_cpu(q, kp, vp, bt, lens, qsl, 1, decode_only=True, **SCALES)
        return kv_quant.to_storage(kp), kv_quant.to_storage(vp), o1 + o2

    text = (
        jax.jit(layer, donate_argnums=(0, 1))
        .lower(pages, pages, q, k, sds((8,), jnp.int32), bt, lens, qsl)
        .compile()
        .as_text()
    )
    whole = "[" + ",".join(map(str, shape)) + "]"
    big = [line for line in text.splitlines() if whole in line and "=" in line]
    assert big and not [line for line in big if "f8e4m3fn" + whole in line or "f16" + whole in line]


def test_validation_of_fp8_pages():
    shapes = dict(
        q=sds((8, 8, 64)),
        k_pages=sds((2, 10, 2, 16, 64), FP8),
        v_pages=sds((2, 10, 2, 16, 64), FP8),
        block_tables=sds((3, 4), jnp.int32),
        kv_lens=sds((3,), jnp.int32),
        query_start_loc=sds((4,), jnp.int32),
    )
    validate_inputs(*shapes.values(), 0, k_scale=0.25, v_scale=4.0)  # fp8 pages, any q dtype
    validate_inputs(sds((8, 8, 64), jnp.bfloat16), *list(shapes.values())[1:], 0)
    with pytest.raises(ValueError, match=r"dtype mismatch.*quantized pages: float8_e4m3fn"):
        validate_inputs(*{**shapes, "v_pages": sds((2, 10, 2, 16, 64))}.values(), 0)
    with pytest.raises(ValueError, match=r"dtype mismatch"):
        validate_inputs(*shapes.values(), 0, kv_dtypes=())  # a backend without fp8 pages
    for bad in (0.0, -1.0, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="k_scale must be a positive finite float"):
            validate_inputs(*shapes.values(), 0, k_scale=bad)
    with pytest.raises(ValueError, match="v_scale must be a positive finite float"):
        ragged_paged_attention_cpu(
            jnp.zeros((3, 8, 64)),
            jnp.zeros((2, 10, 2, 16, 64), FP8),
            jnp.zeros((2, 10, 2, 16, 64), FP8),
            jnp.zeros((3, 4), jnp.int32),
            jnp.ones((3,), jnp.int32),
            jnp.arange(4, dtype=jnp.int32),
            v_scale=0.0,
        )


def _can_lower_for_cuda() -> bool:
    try:
        jax.jit(lambda x: x + 1).trace(sds((2,))).lower(lowering_platforms=("cuda",))
    except Exception:  # noqa: BLE001 -- a jaxlib without the CUDA lowering
        return False
    return True


@pytest.mark.parametrize("decode, splits", [(True, 1), (True, 4), (False, None)])
def test_pallas_fp8_lowers_to_triton_for_cuda(decode, splits):
    """Pages go into the Triton kernels as bytes: outside the kernels only the bitcasts of the
    page arrays (which meet the engine's own views and vanish) and no float conversion of them."""
    if not _can_lower_for_cuda():
        pytest.skip("this jaxlib cannot lower Pallas kernels for CUDA")
    kv = sds((2, 64, 2, 16, 128), FP8)
    args = (sds((16, 8, 128), jnp.bfloat16), kv, kv, sds((8, 8), jnp.int32), sds((8,), jnp.int32))
    args += (sds((9,), jnp.int32), sds((), jnp.int32))
    f = jax.jit(
        lambda *a: ragged_paged_attention(*a, decode_only=decode, num_kv_splits=splits, **SCALES)
    )
    text = f.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == (2 if splits and splits > 1 else 1)
    pages = "tensor<2x64x2x16x128x"
    converts = [
        line
        for line in text.splitlines()
        if pages in line and re.search(r"= stablehlo\.\w*convert", line)
    ]
    assert len(converts) == 2 and all("bitcast_convert" in c and "xui8>" in c for c in converts)


def test_cuda_fp8_plan_validation_and_lowering():
    """The cuda backend takes fp8 pages (as bytes, with the scales folded into sm_scale and
    out_scale) on the CUDA-core kernels; no GPU needed to check the plan and the lowering."""
    from cuda_ext import attention as cuda_attention

    plan = cuda_attention.plan_launch
    # tensor-core decode needs 16-bit pages: fp8 pages take the CUDA-core row kernel
    assert cuda_attention.uses_mma_row_kernel(1, 4, 128, 2, "auto", 2)
    assert not cuda_attention.uses_mma_row_kernel(1, 4, 128, 2, "auto", 1)
    shape = (16, 16, 128, 32, 8, 128, 16, 2)  # batch 16 x 2048, bf16 queries
    cores = plan(*shape, decode_only=True, decode_kernel="cuda-cores")
    assert plan(*shape, decode_only=True, kv_itemsize=1).num_splits == cores.num_splits
    kv = sds((2, 10, 2, 16, 64), FP8)
    q = sds((8, 8, 64), jnp.bfloat16)
    meta = (sds((3, 4), jnp.int32), sds((3,), jnp.int32), sds((4,), jnp.int32))
    cuda_attention.validate_inputs(q, kv, kv, *meta, 0, **SCALES)
    if not _can_lower_for_cuda():
        return
    plan8 = plan(8, 3, 4, 8, 2, 64, 16, 2, decode_only=True, kv_itemsize=1)
    text = (
        jax.jit(
            lambda q, k, v, *m: cuda_attention._rpa_call(
                q,
                kv_quant.to_storage(k),
                kv_quant.to_storage(v),
                *m,
                None,
                plan=plan8,
                sm_scale=0.125 * 0.5,
                window=0,
                decode_only=True,
                decode_kernel="auto",
                out_scale=2.0,
            )
        )  # fmt: skip
        .trace(q, kv, kv, *meta, sds((), jnp.int32))
        .lower(lowering_platforms=("cuda",))
        .as_text()
    )
    calls = [line for line in text.splitlines() if "stablehlo.custom_call" in line]
    assert len(calls) == 1
    for attr in ("tensor<2x10x2x16x64xui8>", "out_scale = 2.000000e+00", "sm_scale = 6.250000e-02"):
        assert attr in calls[0], attr


@pytest.mark.gpu
@pytest.mark.skipif(jax.devices()[0].platform != "gpu", reason="needs an NVIDIA GPU")
@pytest.mark.parametrize(
    "case",
    [
        *CASES,
        Case("fp8-dec-g8-d128-bs16-f16-z3", 8, 128, 16, "float16", True, Hkv=1, splits=3, T=8),
        Case("fp8-dec-g4-d256-bs16-bf16", 4, 256, 16, "bfloat16", True, Hkv=1, T=8),
        Case("fp8-gen-g16-d64-bs16-f32-z2", 16, 64, 16, "float32", False, Hkv=1, splits=2),
    ],
    ids=lambda c: c.id,
)
def test_gpu_backends_match_reference(case):
    """On a GPU: the compiled Pallas kernels and the cuda backend (row and multi-row kernels)."""
    from cuda_ext.attention import ragged_paged_attention_cuda

    check_backend(ragged_paged_attention, case, decode_only=case.decode)
    check_backend(
        ragged_paged_attention_cuda, case, decode_only=case.decode, num_kv_splits=case.splits
    )
