"""packed_transfer: one buffer per dtype on the host, the same pytree back inside jit."""

import jax
import numpy as np
import pytest

from jaxllm.engine.packed_transfer import pack, unpack, unpack_numpy
from jaxllm.models.batch import StepBatch


def _tree(rng, decode_only):
    batch = StepBatch(
        token_ids=rng.integers(0, 1000, 7).astype(np.int32),
        positions=rng.integers(0, 100, 7).astype(np.int32),
        slot_mapping=rng.integers(0, 500, 7).astype(np.int32),
        block_tables=rng.integers(0, 30, (4, 5)).astype(np.int32),
        kv_lens=rng.integers(1, 80, 4).astype(np.int32),
        query_start_loc=np.array([0, 1, 2, 5, 7], np.int32),
        logits_indices=np.array([0, 1, 4, 6], np.int32),
        decode_only=decode_only,
    )
    extra = {
        "temperature": rng.random(4).astype(np.float32),
        "greedy": np.array([True, False, True, True]),
        "empty": np.zeros((0,), np.int32),
        "seeds": rng.integers(0, 2**31, 4).astype(np.uint32),
    }
    return (batch, extra)


@pytest.mark.parametrize("decode_only", [False, True])
def test_round_trip_host_and_jit(decode_only):
    rng = np.random.default_rng(0)
    tree = _tree(rng, decode_only)
    buffers, layout = pack(tree)
    # one buffer per distinct dtype: int32, float32, bool, uint32
    assert len(buffers) == 4 == len(layout.dtypes)
    assert sorted(b.dtype.str for b in buffers) == sorted(layout.dtypes)
    expect = jax.tree_util.tree_leaves(tree)

    host = unpack_numpy(buffers, layout)
    out = jax.jit(unpack, static_argnums=1)(tuple(jax.device_put(b) for b in buffers), layout)
    for got_tree in (host, out):
        assert jax.tree_util.tree_structure(got_tree) == jax.tree_util.tree_structure(tree)
        assert got_tree[0].decode_only is decode_only
        for got, want in zip(jax.tree_util.tree_leaves(got_tree), expect):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(np.asarray(got), want)


def test_layout_is_static_and_hashable():
    rng = np.random.default_rng(1)
    _, a = pack(_tree(rng, False))
    _, b = pack(_tree(rng, False))
    _, c = pack(_tree(rng, True))
    assert a == b and hash(a) == hash(b)  # same shapes: the same compiled variant
    assert a != c  # decode_only is part of the structure


def test_wrong_buffer_count():
    buffers, layout = pack(_tree(np.random.default_rng(2), False))
    with pytest.raises(ValueError, match="expected 4 buffers, got 3"):
        unpack(buffers[:3], layout)
