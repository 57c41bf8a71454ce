"""cpu_ext's grouped (mixture-of-experts) matmul (`cpu_ext.grouped_matmul`) against float64 numpy.

- Ragged groups with empty experts, one expert taking every row, all rows in the last group,
  trailing rows of no group (zero), a partial last strip, row counts off the 4-row tiles and
  groups past one 64-row block, M = 0 and G = 1; inside jit with traced group sizes.
- Bad input: ValueErrors naming the argument, and the kernel's own errors (negative sizes, a sum
  past M).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ragged_batches import rng_for

from cpu_ext import registry

pytestmark = pytest.mark.skipif(
    bool(registry.missing_requirements()),
    reason=f"cpu_ext cannot run here: {registry.missing_requirements()}",
)

from cpu_ext.grouped_matmul import (  # noqa: E402
    grouped_matmul,
    pack_grouped,
    reference_grouped_matmul,
)
from cpu_ext.packed_matmul import pack_kernel  # noqa: E402


@functools.cache
def _grouped(n):
    return jax.jit(functools.partial(grouped_matmul, n=n))


def expected_rows(x, w, sizes) -> np.ndarray:
    """Per expert in float64 numpy; rows of no group 0."""
    y = np.zeros((x.shape[0], w.shape[2]))
    off = 0
    for g, size in enumerate(sizes):
        y[off : off + size] = x[off : off + size].astype(np.float64) @ w[g].astype(np.float64)
        off += size
    return y


def draw(key, M, K, N, G):
    rng = rng_for("grouped", key, M, K, N, G)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((G, K, N)).astype(np.float32)
    return x, w


def assert_close(got, expected, K):
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5 * np.sqrt(K))


@pytest.mark.parametrize(
    "M, K, N, sizes",
    [
        (19, 48, 64, (3, 0, 7, 0, 0, 9)),  # ragged, empty experts, 4-row tiles and tails
        (16, 576, 1536, (2, 2, 0, 5, 1, 0, 4, 2)),  # decode-sized, SmolLM2's MLP width
        (10, 32, 48, (10,)),  # G = 1
        (12, 32, 48, (0, 12, 0)),  # one expert takes every row
        (9, 32, 48, (0, 0, 0, 9)),  # all rows in the last group
        (23, 40, 40, (5, 0, 6)),  # trailing rows (12) zero; partial last strip
        (150, 24, 17, (3, 131, 0, 9)),  # 131 rows: three row blocks; M off the 4-row tiles
        (0, 16, 32, (0, 0)),  # M = 0
    ],
)
def test_grouped_matmul_matches_float64(M, K, N, sizes):
    x, w = draw("match", M, K, N, len(sizes))
    wp = pack_grouped(w)
    got = np.asarray(_grouped(N)(jnp.asarray(x), jnp.asarray(wp), jnp.asarray(sizes, jnp.int32)))
    expected = expected_rows(x, w, sizes)
    assert_close(got, expected, K)
    np.testing.assert_array_equal(got[sum(sizes) :], 0.0)


def test_oracle_pack_and_traced_sizes():
    """pack_grouped is pack_kernel per group (numpy and jnp); the XLA oracle agrees; group sizes
    traced inside one jit, several size vectors through the same compiled call, a poisoned
    weight of an empty group never read."""
    M, K, N, G = 21, 40, 40, 4
    x, w = draw("traced", M, K, N, G)
    wp = pack_grouped(w)
    assert wp.shape == (G, 3, K, 16)
    for g in range(G):
        np.testing.assert_array_equal(wp[g], pack_kernel(w[g]))
    np.testing.assert_array_equal(np.asarray(pack_grouped(jnp.asarray(w))), wp)

    @jax.jit
    def f(x, wp, sizes):
        return grouped_matmul(x, wp, sizes * 1, n=N)  # sizes a traced value

    for sizes in [(4, 0, 9, 8), (0, 21, 0, 0), (1, 2, 3, 4), (0, 0, 0, 0)]:
        wp_poisoned = wp.copy()
        for g in np.flatnonzero(np.array(sizes) == 0):
            wp_poisoned[g] = np.nan
        got = np.asarray(f(jnp.asarray(x), jnp.asarray(wp_poisoned), jnp.array(sizes, jnp.int32)))
        assert_close(got, expected_rows(x, w, sizes), K)
        oracle = reference_grouped_matmul(jnp.asarray(x), jnp.asarray(wp), sizes, n=N)
        assert_close(np.asarray(oracle), expected_rows(x, w, sizes), K)


@pytest.mark.parametrize(
    "x_shape, x_dtype, w_shape, sizes_shape, n, message",
    [
        ((4, 8), jnp.bfloat16, (2, 1, 8, 16), (2,), 16, "float32 only"),
        ((4, 8), jnp.float32, (1, 8, 16), (1,), 16, r"w_packed must be \[G, S, K, 16\]"),
        ((4, 8), jnp.float32, (2, 1, 8, 8), (2,), 8, r"w_packed must be \[G, S, K, 16\]"),
        ((2, 4, 8), jnp.float32, (2, 1, 8, 16), (2,), 16, r"x must be \[M, K\]"),
        ((4, 9), jnp.float32, (2, 1, 8, 16), (2,), 16, r"x must be \[..., 8\]"),
        ((4, 8), jnp.float32, (2, 2, 8, 16), (2,), 16, "n=16 does not fit 2 strips"),
        ((4, 8), jnp.float32, (2, 1, 8, 16), (3,), 16, r"group_sizes must be \[G\] = \[2\]"),
    ],
)
def test_grouped_matmul_bad_input(x_shape, x_dtype, w_shape, sizes_shape, n, message):
    with pytest.raises(ValueError, match=message):
        grouped_matmul(
            jnp.zeros(x_shape, x_dtype),
            jnp.zeros(w_shape, jnp.float32),
            jnp.zeros(sizes_shape, jnp.int32),
            n=n,
        )
    with pytest.raises(ValueError, match="group_sizes must be integers"):
        grouped_matmul(jnp.zeros((4, 8)), jnp.zeros((2, 1, 8, 16)), jnp.zeros((2,)), n=16)
    with pytest.raises(ValueError, match=r"w must be \[G, K, N\]"):
        pack_grouped(np.zeros((3, 4), np.float32))


def test_kernel_checks_group_sizes():
    x, wp = jnp.zeros((6, 8)), jnp.zeros((3, 1, 8, 16))
    f = _grouped(16)
    with pytest.raises(Exception, match=r"group_sizes\[1\]=-2 is negative"):
        f(x, wp, jnp.array([3, -2, 1], jnp.int32)).block_until_ready()
    with pytest.raises(Exception, match=r"sum\(group_sizes\)=7 is more than the M=6 rows"):
        f(x, wp, jnp.array([3, 0, 4], jnp.int32)).block_until_ready()
