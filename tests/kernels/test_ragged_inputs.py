"""The shared input checks and query-tile list of `pallas_kernels.ragged_inputs`, through every
backend's validator (shared, Pallas, CUDA): same bad input, same named error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ragged_batches import GOOD_SHAPES, rng_for, sds

from cuda_ext.attention import validate_inputs as cuda_validate
from pallas_kernels import ragged_inputs
from pallas_kernels.ragged_paged_attention import validate_inputs as pallas_validate

VALIDATORS = {
    "shared": ragged_inputs.validate_inputs,
    "pallas": pallas_validate,
    "cuda": cuda_validate,
}


GOOD = GOOD_SHAPES


@pytest.mark.parametrize("backend", sorted(VALIDATORS))
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(q=sds((8, 64))), r"q must be \[T, Hq, D\]"),
        (dict(k_pages=sds((10, 2, 16, 64))), r"k_pages must be \[L, num_blocks"),
        (dict(v_pages=sds((2, 11, 2, 16, 64))), r"k_pages and v_pages must have the same shape"),
        (dict(q=sds((8, 8, 64), jnp.bfloat16)), r"dtype mismatch: .*q bfloat16, k_pages float32"),
        (dict(q=sds((8, 8, 64), jnp.int32)), r"q dtype int32 unsupported"),
        (dict(q=sds((8, 7, 64))), r"Hq=7 .* must be a multiple of Hkv=2"),
        (dict(q=sds((8, 8, 32))), r"head dim mismatch: q \(8, 8, 32\) has D=32"),
        (
            dict(block_tables=sds((12,), jnp.int32)),
            r"block_tables must be \[S, P\] \(rank 2, non-empty\), got shape \(12,\)",
        ),
        (dict(kv_lens=sds((4,), jnp.int32)), r"kv_lens shape \(4,\) must be \(S,\) = \(3,\)"),
        (
            dict(query_start_loc=sds((3,), jnp.int32)),
            r"query_start_loc shape \(3,\) must be \(S \+ 1,\) = \(4,\)",
        ),
        (dict(block_tables=sds((3, 4), jnp.float32)), r"block_tables must be an integer array"),
    ],
)
def test_shape_errors_name_the_argument(backend, change, message):
    args = {**GOOD, **change}
    with pytest.raises(ValueError, match=message):
        VALIDATORS[backend](*args.values())


@pytest.mark.parametrize("backend", sorted(VALIDATORS))
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layer=2), r"layer=2 out of range for k_pages with L=2"),
        (dict(layer=sds((2,), jnp.int32)), r"layer must be an int or an integer scalar array"),
        (dict(layer=1.0), r"layer must be an int or an integer scalar array"),
        (dict(sliding_window=0), r"sliding_window must be a positive int"),
        (dict(sm_scale=-1.0), r"sm_scale must be a positive float"),
    ],
)
def test_keyword_errors_name_the_argument(backend, kwargs, message):
    kwargs = dict(kwargs)  # the parameter dict is shared across backends
    layer = kwargs.pop("layer", 0)
    with pytest.raises(ValueError, match=message):
        VALIDATORS[backend](*GOOD.values(), layer, **kwargs)


def test_good_inputs_pass_every_validator():
    for fn in VALIDATORS.values():
        fn(*GOOD.values(), sds((), jnp.int32), sm_scale=0.1, sliding_window=5)


def test_decode_only_check():
    ragged_inputs.check_decode_only(jnp.array([0, 1, 1, 2], jnp.int32))
    with pytest.raises(
        ValueError, match=r"decode_only=True needs at most one query row .* \[1, 3, 1\]"
    ):
        ragged_inputs.check_decode_only(np.array([0, 1, 4, 5], np.int32))
    jax.jit(lambda x: ragged_inputs.check_decode_only(x) or x)(
        jnp.array([0, 3], jnp.int32)
    )  # traced: trusted


def _tiles_by_loop(qsl: np.ndarray, block_q: int):
    return [
        (s, i)
        for s in range(len(qsl) - 1)
        for i in range(-(-max(0, qsl[s + 1] - qsl[s]) // block_q))
    ]


@pytest.mark.parametrize("block_q", [1, 3, 8])
def test_query_tiles_match_a_loop(block_q):
    rng = rng_for("tiles", block_q)
    S, T = 7, 40
    W = ragged_inputs.num_query_tiles(T, S, block_q)
    fn = jax.jit(lambda qsl: ragged_inputs.query_tiles(qsl, block_q, W))
    for _ in range(20):
        q_lens = rng.multinomial(int(rng.integers(0, T + 1)), rng.dirichlet(np.ones(S) * 0.5))
        qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        tiles = fn(jnp.asarray(qsl))
        want = _tiles_by_loop(qsl, block_q)
        assert len(want) <= W
        valid = np.asarray(tiles.valid)
        assert valid.sum() == len(want) and valid[: len(want)].all()
        got = list(
            zip(np.asarray(tiles.seq)[valid].tolist(), np.asarray(tiles.index)[valid].tolist())
        )
        assert got == want
        # each sequence's first tile id, and invalid tiles start past their sequence's rows
        firsts = np.asarray(tiles.first_tile)
        for s in range(S):
            ids = [w for w, (ws, _) in enumerate(want) if ws == s]
            if ids:
                assert firsts[s] == ids[0]
        seq, idx = np.asarray(tiles.seq)[~valid], np.asarray(tiles.index)[~valid]
        assert (idx * block_q >= q_lens[seq]).all()
    assert (
        ragged_inputs.num_query_tiles(4, 9, 1) == 4
        and ragged_inputs.num_query_tiles(64, 3, 8) == 11
    )
