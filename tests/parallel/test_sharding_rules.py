"""The sharding rules table, head splitting and KV-head replication (in-process, one device).

References: hand-written expected PartitionSpecs, numpy's `repeat` for replicated KV heads, and
a reference GQA attention in numpy for the equivalence of the replicated model.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxllm.model_loader.dummy import dummy_config
from jaxllm.models.layout import param_layout
from jaxllm.models.llama_layout import PARAM_LOGICAL_AXES
from jaxllm.parallel import (
    check_mesh,
    check_tensor_parallel,
    expand_kv_heads,
    kv_head_replicas,
    logical_to_spec,
    make_mesh,
    param_partition_specs,
    resolve_mesh,
    shard_params,
    tp_model_config,
)
from jaxllm.parallel.heads import replicated_kv_columns

SIZES = {"data": 1, "model": 4}


def _config(**changes):
    return dummy_config("tiny").replace(**changes)  # 4 query heads, 2 KV heads, F=128, V=512


def test_rules_table_specs_by_hand():
    config = _config(attention_bias=True)  # every leaf, biases included
    specs = param_partition_specs(config, SIZES)
    expected = {
        ("embed_tokens", "embedding"): P("model"),
        ("layers", "input_layernorm", "scale"): P(),
        ("layers", "self_attn", "q_proj", "kernel"): P(None, None, "model"),
        ("layers", "self_attn", "k_proj", "kernel"): P(None, None, "model"),
        ("layers", "self_attn", "v_proj", "kernel"): P(None, None, "model"),
        ("layers", "self_attn", "o_proj", "kernel"): P(None, "model"),
        ("layers", "self_attn", "q_proj", "bias"): P(None, "model"),
        ("layers", "self_attn", "k_proj", "bias"): P(None, "model"),
        ("layers", "self_attn", "v_proj", "bias"): P(None, "model"),
        ("layers", "post_attention_layernorm", "scale"): P(),
        ("layers", "mlp", "gate_proj", "kernel"): P(None, None, "model"),
        ("layers", "mlp", "up_proj", "kernel"): P(None, None, "model"),
        ("layers", "mlp", "down_proj", "kernel"): P(None, "model"),
        ("norm", "scale"): P(),
        ("lm_head", "kernel"): P(None, "model"),
    }
    assert specs == expected
    # Per-head q/k norms (Qwen3, Gemma 3) are small and replicated on every device.
    qk_config = config.replace(qk_norm=True)
    qk_specs = param_partition_specs(qk_config, SIZES)
    assert qk_specs == {
        **expected,
        ("layers", "self_attn", "q_norm", "scale"): P(),
        ("layers", "self_attn", "k_norm", "scale"): P(),
    }
    assert set(PARAM_LOGICAL_AXES) == {s.path for s in param_layout(qk_config)}


def test_replicate_kv_option_and_uneven_vocab():
    specs = param_partition_specs(_config(), SIZES, replicate_kv=True)
    assert specs[("layers", "self_attn", "k_proj", "kernel")] == P()
    assert specs[("layers", "self_attn", "q_proj", "kernel")] == P(None, None, "model")
    odd = param_partition_specs(_config(vocab_size=513), SIZES)  # 513 does not split in 4
    assert odd[("embed_tokens", "embedding")] == P()
    assert odd[("lm_head", "kernel")] == P()


def test_uneven_split_of_other_axes_is_an_error():
    with pytest.raises(ValueError, match=r"mlp, size 130.*'model' of size 4"):
        logical_to_spec(("embed", "mlp"), (64, 130), SIZES, "gate")
    with pytest.raises(ValueError, match="no sharding rule"):
        logical_to_spec(("nope",))
    with pytest.raises(ValueError, match="2 logical axes"):
        logical_to_spec(("embed", "mlp"), (64,), SIZES)


@pytest.mark.parametrize(
    "hq,hkv,tp,want_hkv",
    [
        (8, 2, 1, 2),
        (8, 2, 2, 2),
        (8, 2, 4, 4),
        (8, 2, 8, 8),
        (32, 8, 4, 8),
        (32, 8, 16, 16),
        (12, 4, 6, 12),
        (9, 3, 3, 3),
    ],
)
def test_tp_model_config_kv_heads(hq, hkv, tp, want_hkv):
    config = _config(num_attention_heads=hq, num_key_value_heads=hkv, intermediate_size=144)
    got = tp_model_config(config, tp)
    assert got.num_key_value_heads == want_hkv
    assert got.num_key_value_heads % tp == 0
    assert hq % got.num_key_value_heads == 0
    assert tp_model_config(got, tp) == got  # idempotent
    assert kv_head_replicas(config, tp) == want_hkv // hkv


def test_uneven_heads_rejected_with_numbers():
    smollm2 = dummy_config("smollm2-135m")
    with pytest.raises(
        ValueError,
        match=r"tensor_parallel_size 2 does not divide the model's 9 "
        r"query heads \(3 KV heads\).*\[1, 3\]",
    ):
        check_tensor_parallel(smollm2, 2)
    with pytest.raises(ValueError, match="intermediate_size=130"):
        check_tensor_parallel(_config(intermediate_size=130), 4)
    with pytest.raises(ValueError, match=">= 1"):
        check_tensor_parallel(smollm2, 0)
    check_tensor_parallel(smollm2, 3)


def test_expand_kv_heads_is_numpy_repeat_of_heads():
    config = _config()  # 2 KV heads of head_dim 16
    rng = np.random.default_rng(0)
    L, D, Dh, H = 2, 64, config.head_dim, config.num_key_value_heads
    k = rng.standard_normal((L, D, H * Dh)).astype(np.float32)
    b = rng.standard_normal((L, H * Dh)).astype(np.float32)
    params = {
        "layers": {
            "self_attn": {
                "k_proj": {"kernel": k, "bias": b},
                "v_proj": {"kernel": k + 1},
                "q_proj": {"kernel": k},
            }
        }
    }
    out = expand_kv_heads(params, config, 3)
    want = np.repeat(k.reshape(L, D, H, Dh), 3, axis=2).reshape(L, D, 3 * H * Dh)
    np.testing.assert_array_equal(out["layers"]["self_attn"]["k_proj"]["kernel"], want)
    np.testing.assert_array_equal(out["layers"]["self_attn"]["v_proj"]["kernel"], want + 1)
    np.testing.assert_array_equal(
        out["layers"]["self_attn"]["k_proj"]["bias"],
        np.repeat(b.reshape(L, H, Dh), 3, axis=1).reshape(L, -1),
    )
    assert out["layers"]["self_attn"]["q_proj"]["kernel"] is k
    assert list(replicated_kv_columns(2, 2, 2)) == [0, 1, 0, 1, 2, 3, 2, 3]


def test_replicated_kv_heads_give_the_same_gqa_attention():
    # query head i reads KV head i // G; with heads repeated r times and G' = G / r it reads a copy
    rng = np.random.default_rng(1)
    hq, hkv, r, Dh, T = 8, 2, 2, 4, 5
    q = rng.standard_normal((T, hq, Dh))
    k = rng.standard_normal((T, hkv, Dh))
    v = rng.standard_normal((T, hkv, Dh))

    def gqa(q, k, v):
        g = q.shape[1] // k.shape[1]
        kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        s = np.einsum("thd,shd->hts", q, kk)
        p = np.exp(s - s.max(-1, keepdims=True))
        return np.einsum("hts,shd->thd", p / p.sum(-1, keepdims=True), vv)

    np.testing.assert_allclose(gqa(q, np.repeat(k, r, 1), np.repeat(v, r, 1)), gqa(q, k, v))


def test_mesh_construction_and_errors():
    mesh = make_mesh(1)
    assert mesh.axis_names == ("data", "model") and mesh.devices.shape == (1, 1)
    n = len(jax.devices())
    with pytest.raises(ValueError, match=rf"needs {2 * n} devices, but only {n}"):
        make_mesh(2 * n)
    with pytest.raises(ValueError, match="must be >= 1"):
        make_mesh(0)
    with pytest.raises(ValueError, match="mesh axes must be"):
        check_mesh(Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("x", "model")))
    with pytest.raises(ValueError, match="tensor_parallel_size=2 were asked for"):
        resolve_mesh(mesh, 2)
    assert resolve_mesh(mesh, 1) is mesh


def test_shard_params_on_one_device_keeps_arrays():
    from jaxllm.model_loader.dummy import init_dummy_params

    config = _config()
    params = init_dummy_params(config)
    placed, got = shard_params(params, config, make_mesh(1))
    assert got == config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(placed)):
        assert a.unsafe_buffer_pointer() == b.unsafe_buffer_pointer()  # no copy at tp=1


def test_llm_rejects_more_devices_than_present():
    from jaxllm import LLM

    n = len(jax.devices())
    with pytest.raises(ValueError, match=f"needs {2 * n} devices"):
        LLM("dummy:tiny", tensor_parallel_size=2 * n)
    with pytest.raises(ValueError, match="must be >= 1"):
        LLM("dummy:tiny", data_parallel_size=0)


def test_attention_wrappers_are_the_backend_without_tp():
    from jaxllm.layers.attention import get_attention_fn, sharded_attention_fn, sharded_kv_write_fn
    from pallas_kernels.reference import write_kv_pages

    assert sharded_attention_fn("reference", None) is get_attention_fn("reference")
    assert sharded_attention_fn("reference", make_mesh(1)) is get_attention_fn("reference")
    assert sharded_kv_write_fn(None) is write_kv_pages
