"""cpu_ext's C++ FFI kernels on XLA:CPU against their references.

- The packed matmul (`cpu_ext.packed_matmul`) against a float64 numpy product: row counts around
  its 4-row tiles and 64-row blocks, column counts off the 16-column strips, leading batch dims,
  inside jit and a scan, and bad input.
- The ragged attention kernel (`cpu_ext.attention`) against the pure-jnp reference on the poisoned
  random batches of `ragged_batches` (decode batches and mixed prefill chunks, every GQA ratio
  1..8, head dims 64/128, block sizes 16/32, sliding windows, sequences without rows, NaN in every
  slot no sequence owns and in padding rows), engine-style padding, a traced layer, bad input, and
  the jnp fallback for bf16.
- The model: packed params give the unpacked params' logits; the engine packs on the CPU.
Greedy SmolLM2 tokens through these kernels equal HF's in tests/engine/test_llm_vs_hf.py (the
engine's CPU default).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ragged_batches import Case, L, engine_padding_batch, make_batch, reference, rng_for, tolerance

from cpu_ext import registry

pytestmark = pytest.mark.skipif(
    bool(registry.missing_requirements()),
    reason=f"cpu_ext cannot run here: {registry.missing_requirements()}",
)

from cpu_ext.attention import paged_attention, ragged_paged_attention_cpu_ext  # noqa: E402
from cpu_ext.packed_matmul import (  # noqa: E402
    pack_kernel,
    packed_matmul,
    packed_shape,
    reference_matmul,
    unpack_kernel,
)

# ------------------------------------------------------------------------------- packed matmul


@functools.cache
def _matmul(n):
    return jax.jit(functools.partial(packed_matmul, n=n))


@pytest.mark.parametrize(
    "M, K, N",
    [
        (1, 576, 576),
        (3, 64, 16),
        (4, 100, 33),
        (5, 576, 192),
        (16, 576, 1536),
        (16, 1536, 576),
        (17, 24, 1),
        (63, 40, 50),
        (130, 72, 100),  # three 64-row blocks, the last of 2 rows
        (257, 576, 31),
    ],
)
def test_packed_matmul_matches_float64(M, K, N):
    rng = rng_for("matmul", M, K, N)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    wp = pack_kernel(w)
    assert wp.shape == packed_shape(K, N)
    got = np.asarray(_matmul(N)(jnp.asarray(x), jnp.asarray(wp)))
    expected = x.astype(np.float64) @ w.astype(np.float64)
    assert got.shape == (M, N) and got.dtype == np.float32
    # float32 accumulation over K terms of size ~1: error ~ sqrt(K) * 2^-24 * |terms|
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5 * np.sqrt(K))
    np.testing.assert_allclose(
        got,
        np.asarray(reference_matmul(jnp.asarray(x), jnp.asarray(wp), n=N)),
        rtol=1e-5,
        atol=2e-5 * np.sqrt(K),
    )


def test_pack_roundtrip_and_zero_padding():
    w = np.arange(5 * 21, dtype=np.float32).reshape(5, 21)
    wp = pack_kernel(w)
    assert wp.shape == (2, 5, 16)
    np.testing.assert_array_equal(wp[1, :, 5:], 0.0)  # columns past N
    np.testing.assert_array_equal(wp[1, 2, :5], w[2, 16:])
    np.testing.assert_array_equal(unpack_kernel(wp, 21), w)
    np.testing.assert_array_equal(np.asarray(pack_kernel(jnp.asarray(w))), wp)  # jnp too


def test_packed_matmul_leading_dims_and_layers():
    """[B, T, K] inputs; a stack of packed kernels [L, S, K, 16] read in place at a layer index,
    traced under a scan (the stack broadcast whole, as the model's layer scan does) and concrete;
    and sliced by the scan instead (a 3-D kernel a step)."""
    rng = rng_for("matmul-layers")
    x = rng.standard_normal((2, 3, 48)).astype(np.float32)
    ws = rng.standard_normal((3, 48, 40)).astype(np.float32) / 7
    stacked = jnp.stack([jnp.asarray(pack_kernel(w)) for w in ws])  # [3, 3, 48, 16]

    expected = [x.astype(np.float64) @ w for w in ws]
    traced = jax.jit(
        lambda x, st: jax.lax.scan(
            lambda c, li: (c, packed_matmul(x, st, n=40, layer=li)), 0, jnp.arange(3)
        )[1]
    )(jnp.asarray(x), stacked)
    sliced = jax.jit(
        lambda x, st: jax.lax.scan(lambda c, w: (c, packed_matmul(x, w, n=40)), 0, st)[1]
    )(jnp.asarray(x), stacked)
    for li in range(3):
        concrete = packed_matmul(jnp.asarray(x), stacked, n=40, layer=li)
        for got in (traced[li], sliced[li], concrete):
            assert got.shape == (2, 3, 40)
            np.testing.assert_allclose(np.asarray(got), expected[li], rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match=r"layer 3 outside \[0, 3\)"):
        jax.jit(lambda x, st, li: packed_matmul(x, st, n=40, layer=li))(
            jnp.asarray(x), stacked, 3
        ).block_until_ready()


@pytest.mark.parametrize(
    "x_shape, x_dtype, w_shape, n, message",
    [
        ((4, 8), jnp.bfloat16, (1, 8, 16), 16, "float32 only"),
        ((4, 8), jnp.float32, (1, 8, 8), 8, r"must be \[S, K, 16\] or \[L, S, K, 16\]"),
        ((4, 9), jnp.float32, (1, 8, 16), 16, r"x must be \[..., 8\]"),
        ((4, 8), jnp.float32, (2, 8, 16), 16, "n=16 does not fit 2 strips"),
        ((4, 8), jnp.float32, (2, 8, 16), 33, "n=33 does not fit 2 strips"),
        ((4, 8), jnp.float32, (3, 2, 8, 16), 32, "needs `layer`"),
    ],
)
def test_packed_matmul_bad_input(x_shape, x_dtype, w_shape, n, message):
    with pytest.raises(ValueError, match=message):
        packed_matmul(jnp.zeros(x_shape, x_dtype), jnp.zeros(w_shape, jnp.float32), n=n)
    with pytest.raises(ValueError, match="only it takes one"):  # a layer for one kernel
        packed_matmul(jnp.zeros((4, 8)), jnp.zeros((1, 8, 16)), n=16, layer=0)


def test_pack_kernel_needs_a_matrix():
    with pytest.raises(ValueError, match=r"w must be \[K, N\]"):
        pack_kernel(np.zeros((2, 3, 4), np.float32))


# ----------------------------------------------------------------------------------- attention

ATTENTION_CASES = [
    Case("ext-g1-d64-bs16", 1, 64, 16, "float32", True, T=8),
    Case("ext-g2-d128-bs32", 2, 128, 32, "float32", True, layer=0, T=5),
    Case("ext-g3-d64-bs16-window", 3, 64, 16, "float32", True, window=20, T=8),
    Case("ext-g4-d64-bs16", 4, 64, 16, "float32", True, Hkv=3, S=9, T=12),
    Case("ext-g5-d64-bs32", 5, 64, 32, "float32", True, Hkv=1, S=7, T=8, P=5),
    Case("ext-g6-d128-bs16-window", 6, 128, 16, "float32", True, Hkv=1, window=33, T=8),
    Case("ext-g7-d64-bs32", 7, 64, 32, "float32", True, Hkv=1, T=8),
    Case("ext-g8-d128-bs16", 8, 128, 16, "float32", True, Hkv=1, T=5),
    Case("ext-gen-g1-d64-bs16", 1, 64, 16, "float32", False),
    Case("ext-gen-g3-d64-bs16", 3, 64, 16, "float32", False, S=6, T=64, P=6),
    Case("ext-gen-g4-d128-bs32", 4, 128, 32, "float32", False),
    Case("ext-gen-g6-d64-bs32-window", 6, 64, 32, "float32", False, Hkv=1, window=13, P=3),
    Case("ext-gen-g7-d64-bs16", 7, 64, 16, "float32", False, Hkv=1, T=24),
    Case("ext-gen-g8-d128-bs16-window", 8, 128, 16, "float32", False, Hkv=1, window=40),
    Case("ext-gen-g2-d64-bs16-bf16", 2, 64, 16, "bfloat16", False),  # the jnp path
]


@functools.cache
def _attention(window, decode_only):
    return jax.jit(
        functools.partial(
            ragged_paged_attention_cpu_ext, sliding_window=window, decode_only=decode_only
        )
    )


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: c.id)
def test_attention_matches_reference(case):
    fn = _attention(case.window, case.decode)
    for seed in range(3):
        kernel_args, ref_args, n_valid = make_batch(case, seed)
        expected = reference(*ref_args, case.layer, sliding_window=case.window)
        got = np.asarray(fn(*kernel_args, case.layer))
        msg = f"{case.name} batch {seed}"
        assert got.shape == kernel_args[0].shape and np.isfinite(got).all(), msg
        np.testing.assert_allclose(
            got[:n_valid], expected[:n_valid], err_msg=msg, **tolerance(case.dtype)
        )
        np.testing.assert_array_equal(got[n_valid:], 0.0, err_msg=msg)


@pytest.mark.parametrize("decode", [True, False])
def test_attention_engine_padding_and_traced_layer(decode):
    """As the engine pads a batch: sequences with kv_len 0 and no rows (null block 0 in their
    tables, holding stale data), a sequence without rows between two with rows, padding rows; and
    the layer traced under a scan."""
    q_lens = np.array([1, 1, 0, 1, 1, 0, 0, 0]) if decode else np.array([1, 9, 0, 30, 1, 0, 0, 0])
    kv_lens = np.array([41, 1, 7, 3, 64, 0, 0, 0]) + (0 if decode else q_lens - (q_lens > 0))
    rng = rng_for("ext-engine-padding", decode)
    args, n = engine_padding_batch(rng, q_lens, kv_lens, T=8 if decode else 48)

    @jax.jit
    def all_layers(*args):
        step = lambda c, li: (c, paged_attention(*args, li))
        return jax.lax.scan(step, 0, jnp.arange(L, dtype=jnp.int32))[1]

    got = np.asarray(all_layers(*args))
    for layer in range(L):
        expected = reference(*args, layer)
        np.testing.assert_allclose(got[layer, :n], expected[:n], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[layer, n:], 0.0)


def test_attention_bad_input():
    q = jnp.zeros((4, 6, 64), jnp.float32)
    pages = jnp.zeros((2, 10, 2, 16, 64), jnp.float32)
    tables = jnp.zeros((4, 2), jnp.int32)
    lens = jnp.ones((4,), jnp.int32)
    qsl = jnp.arange(5, dtype=jnp.int32)
    with pytest.raises(ValueError, match="q must be float32"):
        paged_attention(q.astype(jnp.bfloat16), pages, pages, tables, lens, qsl, 0)
    with pytest.raises(ValueError, match="at most one query row"):  # concrete rows checked
        ragged_paged_attention_cpu_ext(
            q,
            pages,
            pages,
            tables,
            lens,
            jnp.array([0, 2, 3, 4, 4], jnp.int32),
            0,
            decode_only=True,
        )
    # what only the kernel sees (inside jit): a page id outside the cache, an unsupported group
    with pytest.raises(Exception, match=r"block_tables\[1, 0\]=10 outside \[0, 10\)"):
        jax.jit(paged_attention)(q, pages, pages, tables.at[1, 0].set(10), lens, qsl, 0)
    with pytest.raises(Exception, match="Hq / Hkv <= 16"):
        big = jnp.zeros((4, 34, 64), jnp.float32)
        jax.jit(paged_attention)(big, pages, pages, tables, lens, qsl, 0)
    two_rows = jnp.array([0, 2, 3, 4, 4], jnp.int32)  # sequence 0: 2 rows but 1 key
    with pytest.raises(Exception, match=r"kv_lens\[0\]=1 is shorter than its 2 query rows"):
        jax.jit(paged_attention)(q, pages, pages, tables, lens, two_rows, 0)
    with pytest.raises(Exception, match="query_start_loc must rise"):
        jax.jit(paged_attention)(q, pages, pages, tables, lens, qsl.at[2].set(9), 0)


def test_a_failed_build_falls_back_to_xla_with_a_warning(monkeypatch, caplog, tmp_path):
    """Unset JAXLLM_CPU_KERNELS: a compiler that fails means XLA's ops and one warning; "ext"
    means a ValueError naming the failure."""
    from jaxllm.models import packed_params

    monkeypatch.setattr(registry._registration, "library", None)  # as in a fresh process
    monkeypatch.setattr(packed_params, "_warned", [])
    monkeypatch.setenv("JAXLLM_CPU_EXT_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # on PATH, fails every call
    monkeypatch.delenv("JAXLLM_CPU_KERNELS", raising=False)
    with caplog.at_level("WARNING", logger="jaxllm.models.packed_params"):
        assert packed_params.use_cpu_ext() is False
        assert packed_params.use_cpu_ext() is False
    assert caplog.text.count("cpu_ext is not used") == 1 and "--version failed" in caplog.text
    monkeypatch.setenv("JAXLLM_CPU_KERNELS", "ext")
    with pytest.raises(ValueError, match="JAXLLM_CPU_KERNELS=ext: cpu_ext: .*false --version"):
        packed_params.use_cpu_ext()
