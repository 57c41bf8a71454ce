"""A sparse mixture-of-experts MLP (Mixtral, Qwen3-MoE, Qwen2-MoE): route, group, grouped matmuls,
combine.

One step of a layer, for T tokens, E experts of width F, each token to its top k experts:
1. router logits x @ W_router [T, E]; softmax in float32; the top k probabilities and experts
   [T, k] (`route`), renormalized to sum to one where the model does (Mixtral always, Qwen3-MoE
   by `norm_topk_prob`);
2. the T * k (token, expert) rows sorted by expert (a stable argsort), and the row count of each
   expert (`sort_by_expert`): expert e owns rows [sum(sizes[:e]), sum(sizes[:e + 1]));
3. gate, up and down projections as grouped matmuls over those ragged groups (`grouped_matmul`):
   each row is multiplied by its own expert's weights only, and an expert with no rows costs
   nothing. On the CPU with cpu_ext, float32 experts are packed into strips and run by its
   grouped AVX2 kernel; elsewhere `jax.lax.ragged_dot` (XLA's ragged dot on the GPU; note that
   XLA:CPU expands ragged_dot into a dense product over every expert, which is why the CPU has its
   own kernel);
4. each row scaled by its routing weight and added into its token's output (`combine`).
Qwen2-MoE adds a shared expert (a dense SwiGLU MLP) scaled by sigmoid(x @ W_shared_gate).

Parallelism over the mesh's 'model' axis, by the logical-axis rules (`expert_axis_rules`, which
jaxllm.parallel.sharding_rules applies to the parameters): tensor parallel experts hold every
expert's columns F / tp on each device; expert parallelism (`ModelConfig.expert_parallel`) holds
E / tp whole experts per device. Either way the hidden states are replicated over 'model' (as
after every attention block), so each device computes its part of every token's output and one
all-reduce (psum) sums the parts: the tokens never move, which is the all-to-all's result without
its two exchanges.

Parameters (per layer; stacked over L like every layer parameter):
    gate/kernel [D, E]                                  the router
    experts/{gate_proj,up_proj} [E, D, F], experts/down_proj [E, F, D]
        (cpu_ext strips [E, ceil(N / 16), K, 16] once packed: jaxllm.models.packed_params)
    shared_expert/{gate_proj,up_proj,down_proj}/kernel, shared_expert_gate/kernel [D, 1]
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxllm.config import ModelConfig
from jaxllm.layers.activation import activation
from jaxllm.layers.linear import Linear
from jaxllm.layers.moe_params import EXPERT_PROJECTIONS, EXPERTS

MODEL_AXIS = "model"  # the tensor-parallel mesh axis (jaxllm.parallel.mesh.MODEL_AXIS)
# The GPU's grouped matmul: "mgpu" (JAX's Pallas Mosaic GPU kernel for Hopper,
# jax.experimental.pallas.ops.gpu.ragged_dot_mgpu, at MGPU_BLOCKS = (block_m, block_n, block_k,
# max_concurrent_steps); the default on Hopper, where XLA's ragged dot lowered to a far slower
# loop: bench/gpu_runs/2026-12-07_h100_session_checks.md) or "ragged_dot" (XLA's; the default on
# other GPUs); read when the step is traced.
GPU_KERNEL_ENV = "JAXLLM_MOE_GPU_KERNEL"
MGPU_BLOCKS = (64, 128, 64, 4)


def expert_axis_rules(expert_parallel: bool) -> dict[str, str | None]:
    """The sharding rules of the experts' logical axes (jaxllm.parallel.sharding_rules): tensor
    parallel experts split each expert's width F over 'model'; expert parallelism
    (`ModelConfig.expert_parallel`) splits the experts E instead."""
    if expert_parallel:
        return {"experts": MODEL_AXIS, "expert_mlp": None}
    return {"experts": None, "expert_mlp": MODEL_AXIS}


def route(
    logits: jax.Array,  # [T, E] router logits
    k: int,
    renormalize: bool,
) -> tuple[jax.Array, jax.Array]:  # weights [T, k] float32, experts [T, k] int32
    """The top-k experts of each token by softmax probability, and their weights."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, k)
    if renormalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, experts.astype(jnp.int32)


def sort_by_expert(
    experts: jax.Array,  # [T, k] int32
    num_experts: int,
) -> tuple[jax.Array, jax.Array]:  # order [T * k] int32, group_sizes [E] int32
    """The (token, slot) rows in expert order (row r of the sorted batch is flat row order[r], of
    token order[r] // k) and how many rows each expert has."""
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    sizes = jnp.zeros((num_experts,), jnp.int32).at[flat].add(1)
    return order, sizes


def grouped_matmul(
    x: jax.Array,  # [M, K], rows sorted by group
    w: jax.Array,  # [G, K, N], or cpu_ext strips [G, ceil(N / 16), K, 16] float32
    group_sizes: jax.Array,  # [G] int32, sum <= M
    n: int,
) -> jax.Array:  # [M, n]; rows at or past sum(group_sizes) are zero
    """Rows of group g times W_g, for every group at once."""
    if w.ndim == 4:  # packed strips: cpu_ext's grouped kernel (float32)
        from cpu_ext.grouped_matmul import grouped_matmul as cpu_grouped_matmul

        return cpu_grouped_matmul(x.astype(jnp.float32), w, group_sizes, n=n)
    x = x.astype(w.dtype)
    if jax.default_backend() == "gpu" and _gpu_kernel() == "mgpu":
        return mgpu_grouped_matmul(x, w, group_sizes, MGPU_BLOCKS)
    return jax.lax.ragged_dot(x, w, group_sizes)


def mgpu_grouped_matmul(
    x: jax.Array,  # [M, K], rows sorted by group
    w: jax.Array,  # [G, K, N], x's dtype
    group_sizes: jax.Array,  # [G] int32
    blocks: tuple[int, int, int, int],  # block_m, block_n, block_k, max_concurrent_steps
) -> jax.Array:  # [M, N]
    """JAX's Pallas Mosaic GPU grouped GEMM (Hopper), at the given block configuration."""
    from jax.experimental.pallas.ops.gpu.ragged_dot_mgpu import ragged_dot as mgpu_ragged_dot

    bm, bn, bk, steps = blocks
    return mgpu_ragged_dot(
        x,
        w,
        group_sizes=group_sizes,
        block_m=bm,
        block_n=bn,
        block_k=bk,
        max_concurrent_steps=steps,
        grid_block_n=1,
    )


def _gpu_kernel() -> str:
    """The GPU grouped matmul: `JAXLLM_MOE_GPU_KERNEL`, else mgpu on Hopper (compute capability
    9.x), else ragged_dot."""
    value = os.environ.get(GPU_KERNEL_ENV, "").strip().lower()
    if not value:
        cc = str(getattr(jax.devices()[0], "compute_capability", ""))
        return "mgpu" if cc.startswith("9.") else "ragged_dot"
    if value not in ("ragged_dot", "mgpu"):
        raise ValueError(f"{GPU_KERNEL_ENV}={value!r}: use ragged_dot or mgpu")
    return value


def expert_mlp(
    x: jax.Array,  # [M, D] rows sorted by expert
    weights: dict,  # gate_proj, up_proj [E, D, F]; down_proj [E, F, D] (or packed strips)
    group_sizes: jax.Array,  # [E] int32
    act,
    width: int,  # F (of these weights: F / tp under tensor parallelism)
) -> jax.Array:  # [M, D]
    """down(act(gate(x)) * up(x)) with each row's own expert."""
    gate = grouped_matmul(x, weights["gate_proj"], group_sizes, width)
    up = grouped_matmul(x, weights["up_proj"], group_sizes, width)
    return grouped_matmul(act(gate) * up, weights["down_proj"], group_sizes, x.shape[-1])


def combine(
    y: jax.Array,  # [T * k, D] expert outputs in sorted order
    order: jax.Array,  # [T * k] int32
    weights: jax.Array,  # [T, k] float32 routing weights
) -> jax.Array:  # [T, D] float32
    """Each token's outputs of its k experts, weighted and summed."""
    T, k = weights.shape
    scaled = y.astype(jnp.float32) * weights.reshape(-1)[order][:, None]
    return jnp.zeros((T, y.shape[-1]), jnp.float32).at[order // k].add(scaled)


def local_expert_mlp(
    x: jax.Array,  # [M, D] rows sorted by expert (all E experts)
    group_sizes: jax.Array,  # [E] int32
    local_weights: dict,  # experts [first, first + E_local) of `expert_mlp`'s weights
    first: jax.Array,  # int32, the first local expert
    act,
    width: int,
) -> jax.Array:  # [M, D]: the local experts' rows in place, every other row zero
    """`expert_mlp` over the rows of a device's own experts only (expert parallelism). Their rows
    are rolled to the front (the batch keeps its static size), multiplied, and rolled back."""
    num_local = local_weights["gate_proj"].shape[0]
    shift = jnp.sum(jnp.where(jnp.arange(group_sizes.shape[0]) < first, group_sizes, 0))
    local_sizes = jax.lax.dynamic_slice_in_dim(group_sizes, first, num_local)
    y = expert_mlp(jnp.roll(x, -shift, axis=0), local_weights, local_sizes, act, width)
    valid = jnp.arange(y.shape[0]) < jnp.sum(local_sizes)
    return jnp.roll(jnp.where(valid[:, None], y, 0), shift, axis=0)


def moe_forward(
    x: jax.Array,  # [T, D]
    router_logits: jax.Array,  # [T, E]
    expert_weights: dict,  # the EXPERT_PROJECTIONS of this device (all of them without a mesh)
    config: ModelConfig,
    mesh: Any = None,
) -> jax.Array:  # [T, D] float32
    """The routed experts' output of every token (no shared expert)."""
    E, k = config.num_experts, config.num_experts_per_tok
    weights, experts = route(router_logits, k, config.norm_topk_prob)
    order, sizes = sort_by_expert(experts, E)
    rows = x[order // k]  # [T * k, D]
    act = activation(config.hidden_act)
    tp = 1 if mesh is None else int(mesh.shape[MODEL_AXIS])
    if tp == 1:
        y = expert_mlp(rows, expert_weights, sizes, act, config.moe_intermediate_size)
        return combine(y, order, weights)

    rules = expert_axis_rules(config.expert_parallel)
    on_experts, on_width = rules["experts"], rules["expert_mlp"]
    in_out = P(on_experts, None, on_width)  # gate, up [E, D, F]
    out_in = P(on_experts, on_width, None)  # down [E, F, D]
    specs = {"gate_proj": in_out, "up_proj": in_out, "down_proj": out_in}
    ep = on_experts is not None
    num_local = E // tp if ep else E
    width = config.moe_intermediate_size // (1 if ep else tp)

    def body(rows, sizes, order, weights, local):
        if not ep:  # every expert, F / tp of its columns: partial sums
            y = expert_mlp(rows, local, sizes, act, width)
        else:  # E / tp whole experts: only their rows, the rest zero
            first = jax.lax.axis_index(MODEL_AXIS) * num_local
            y = local_expert_mlp(rows, sizes, local, first, act, width)
        return jax.lax.psum(combine(y, order, weights), MODEL_AXIS)

    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(), {n: specs[n] for n in EXPERT_PROJECTIONS}),
        out_specs=P(),
        check_vma=False,  # cpu_ext's FFI call carries no replication annotation
    )(rows, sizes, order, weights, {n: expert_weights[n] for n in EXPERT_PROJECTIONS})


class SparseMoeBlock(nn.Module):
    """`__call__(x [T, D], layer, packed) -> [T, D]`: the routed experts, plus a shared expert
    gated by sigmoid(x @ shared_expert_gate) where `config.shared_expert_intermediate_size`.

    `shared_mlp`: the model's dense MLP class, built as `shared_mlp(config, name=...)` with the
    config's `intermediate_size` set to the shared expert's width, called `(x, layer, packed)`.
    `packed`: the layer's cpu_ext-packed kernels (router, shared expert) read in place at `layer`
    (jaxllm.models.packed_params)."""

    config: ModelConfig
    mesh: Any = None
    shared_mlp: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, layer=None, packed: dict | None = None) -> jax.Array:
        c = self.config
        dt = jnp.dtype(c.dtype)
        packed = packed or {}

        def linear(features: int, name: str) -> jax.Array:
            args = (packed[name], layer) if name in packed else ()
            return Linear(features, dtype=dt, name=name)(x, *args)

        experts = self.variables.get("params", {}).get(EXPERTS)
        if experts is None:
            raise ValueError("the MoE layer's parameters have no expert weights ('experts')")
        out = moe_forward(x, linear(c.num_experts, "gate"), experts, c, self.mesh)
        if c.shared_expert_intermediate_size:
            if self.shared_mlp is None:
                raise ValueError("a shared expert needs the model's MLP class (shared_mlp)")
            shared_config = c.replace(intermediate_size=c.shared_expert_intermediate_size)
            y = self.shared_mlp(shared_config, name="shared_expert")(
                x, layer, packed.get("shared_expert")
            )
            gate = jax.nn.sigmoid(linear(1, "shared_expert_gate").astype(jnp.float32))
            out = out + gate * y.astype(jnp.float32)
        return out.astype(dt)
