"""The MoE layer's pieces (jaxllm/layers/moe.py) against per-expert numpy references.

- `grouped_matmul` through jax.lax.ragged_dot and through cpu_ext's kernel (packed strips, where
  it builds) on ragged groups: empty experts, one expert taking every row, rows past the groups;
- routing: top-k by softmax probability, renormalized or not;
- `moe_forward` (route, sort, grouped matmuls, combine) against a loop over tokens and their
  experts, and the expert-parallel path's per-device parts (`local_expert_mlp`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpu_ext import registry
from jaxllm.config import ModelConfig
from jaxllm.layers.moe import (
    expert_mlp,
    grouped_matmul,
    local_expert_mlp,
    moe_forward,
    route,
    sort_by_expert,
)

GROUPS = [
    [3, 0, 5, 2],  # ragged, one expert empty
    [10, 0, 0, 0],  # one expert takes every row
    [0, 0, 0, 10],
    [2, 0, 1, 0],  # rows past the groups
]
IMPLS = ["ragged_dot"] + ([] if registry.missing_requirements() else ["cpu_ext"])


def _per_expert(x, w, sizes):
    out = np.zeros((x.shape[0], w.shape[-1]))
    start = 0
    for g, n in enumerate(sizes):
        out[start : start + n] = x[start : start + n].astype(np.float64) @ w[g]
        start += n
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sizes", GROUPS, ids=["ragged", "one-expert", "last-expert", "short"])
def test_grouped_matmul_equals_per_expert_products(impl, sizes):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 24)).astype(np.float32)
    w = rng.standard_normal((4, 24, 40)).astype(np.float32)
    weights = jnp.asarray(w)
    if impl == "cpu_ext":
        from cpu_ext.grouped_matmul import pack_grouped

        weights = pack_grouped(weights)
    fn = jax.jit(lambda x, w, s: grouped_matmul(x, w, s, 40))
    got = np.asarray(fn(jnp.asarray(x), weights, jnp.asarray(sizes, jnp.int32)))
    np.testing.assert_allclose(got, _per_expert(x, w, sizes), atol=1e-4, rtol=1e-5)


def test_route_picks_the_top_k_probabilities():
    logits = jnp.asarray([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 3.5]])
    weights, experts = route(logits, 2, renormalize=False)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    assert np.asarray(experts).tolist() == [[1, 2], [3, 0]]
    np.testing.assert_allclose(weights, np.take_along_axis(probs, np.asarray(experts), 1))
    renorm, _ = route(logits, 2, renormalize=True)
    np.testing.assert_allclose(np.asarray(renorm).sum(-1), 1.0, rtol=1e-6)


def _config(**kw) -> ModelConfig:
    base = dict(
        architecture="Qwen3MoeForCausalLM",
        vocab_size=16,
        hidden_size=12,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=6,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=8,
        norm_topk_prob=True,
    )
    return ModelConfig(**{**base, **kw})


def _weights(c: ModelConfig, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    E, D, F = c.num_experts, c.hidden_size, c.moe_intermediate_size
    return {
        "gate_proj": rng.standard_normal((E, D, F)).astype(np.float32) * 0.3,
        "up_proj": rng.standard_normal((E, D, F)).astype(np.float32) * 0.3,
        "down_proj": rng.standard_normal((E, F, D)).astype(np.float32) * 0.3,
    }


def _reference(x, logits, w, c: ModelConfig) -> np.ndarray:
    """A loop over tokens and their top-k experts (float64)."""
    out = np.zeros(x.shape)
    for t in range(x.shape[0]):
        p = np.exp(logits[t] - logits[t].max())
        p /= p.sum()
        top = np.argsort(-p, kind="stable")[: c.num_experts_per_tok]
        wt = p[top] / (p[top].sum() if c.norm_topk_prob else 1.0)
        for e, a in zip(top, wt):
            g, u = x[t] @ w["gate_proj"][e], x[t] @ w["up_proj"][e]
            out[t] += a * ((g / (1 + np.exp(-g)) * u) @ w["down_proj"][e])
    return out


@pytest.mark.parametrize("norm", [True, False])
def test_moe_forward_equals_a_loop_over_tokens_and_experts(norm):
    c = _config(norm_topk_prob=norm)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, c.hidden_size)).astype(np.float32)
    logits = rng.standard_normal((9, c.num_experts)).astype(np.float32)
    w = _weights(c)
    got = jax.jit(lambda x, lg, w: moe_forward(x, lg, w, c))(x, logits, w)
    np.testing.assert_allclose(got, _reference(x, logits, w, c), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("devices", [2, 4])
def test_expert_parallel_parts_sum_to_the_whole(devices):
    """Each device's local experts over its rolled rows; the parts (as the psum adds them) equal
    the all-experts product, also where a device's experts have no rows."""
    c = _config(num_experts=8)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((5, c.hidden_size)), jnp.float32)
    logits = np.full((5, 8), -5.0, np.float32)
    logits[:, :2] = rng.standard_normal((5, 2))  # every token routed to experts 0 and 1
    w = {k: jnp.asarray(v) for k, v in _weights(c).items()}
    _, experts = route(jnp.asarray(logits), 2, True)
    order, sizes = sort_by_expert(experts, 8)
    rows = x[order // 2]
    act = jax.nn.silu
    whole = expert_mlp(rows, w, sizes, act, c.moe_intermediate_size)
    local = 8 // devices
    total = jnp.zeros_like(whole)
    for d in range(devices):
        part = {k: v[d * local : (d + 1) * local] for k, v in w.items()}
        first = jnp.int32(d * local)
        total = total + local_expert_mlp(rows, sizes, part, first, act, c.moe_intermediate_size)
    np.testing.assert_allclose(total, whole, atol=1e-5, rtol=1e-5)
