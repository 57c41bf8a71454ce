"""The tiled jnp reference equals the naive one (every query row gathers its whole KV)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.reference import (
    ragged_paged_attention_naive,
    ragged_paged_attention_reference,
    write_kv_pages,
)


@pytest.mark.parametrize("trial", range(12))
def test_tiled_reference_equals_naive(trial):
    rng = np.random.default_rng(trial)
    Hkv, G = int(rng.choice([1, 2, 3])), int(rng.choice([1, 2, 4, 8]))
    D, bs, L = 16, int(rng.choice([4, 8, 16])), 2
    S = int(rng.integers(1, 7))
    decode = trial % 3 == 0
    q_lens = np.ones(S, np.int64) if decode else rng.integers(1, 40, S)
    kv_lens = q_lens + rng.integers(0, 50, S)
    P = int(max(-(-kv_lens // bs))) + 1
    N = S * P + 3
    tables = rng.permutation(np.arange(1, N))[: S * P].reshape(S, P)  # garbage in unused pages
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    T = int(qsl[-1]) + int(rng.integers(0, 6))  # padding rows
    q = jnp.asarray(rng.standard_normal((T, Hkv * G, D)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((L, N, Hkv, bs, D)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((L, N, Hkv, bs, D)), jnp.float32)
    args = (
        q,
        k,
        v,
        jnp.asarray(tables, jnp.int32),
        jnp.asarray(kv_lens, jnp.int32),
        jnp.asarray(qsl),
    )
    window = 9 if trial % 4 == 1 else None
    want = jax.jit(functools.partial(ragged_paged_attention_naive, sliding_window=window))(*args, 1)
    tiled = functools.partial(
        ragged_paged_attention_reference,
        sliding_window=window,
        query_block=int(rng.choice([1, 4, 16])),
        decode_only=decode,
    )
    got = jax.jit(tiled)(*args, 1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(got)[qsl[-1] :] == 0)  # padding rows are zeros


def test_write_kv_pages_drops_padding_rows():
    k_pages = jnp.zeros((2, 4, 1, 4, 2))
    k = jnp.arange(6, dtype=jnp.float32).reshape(3, 1, 2) + 1
    slots = jnp.asarray([5, -1, 12], jnp.int32)  # block 1 offset 1; padding; block 3 offset 0
    kp, _ = write_kv_pages(k_pages, k_pages, k, k, slots, 1)
    kp = np.asarray(kp)
    assert np.array_equal(kp[1, 1, 0, 1], [1, 2]) and np.array_equal(kp[1, 3, 0, 0], [5, 6])
    assert np.count_nonzero(kp) == 4 and np.count_nonzero(kp[0]) == 0
