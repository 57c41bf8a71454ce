"""The LoRA term of every token of a ragged batch at once: y += (x @ A[slot]) @ B[slot].

`lora_delta` computes the shrink x @ A against every slot of the table (one einsum, [T, S, r]),
zeroes each token's columns of the slots it does not use (a one-hot mask from its slot; slot -1,
the base model, masks all), and expands with one matmul over the S * r columns. The slots are
data, so a new mix of adapters runs the same executable.

Measured against the alternatives on the CPU (`jaxllm.benchmarks.lora`, docs/lora.md): a gather
of each token's A and B ([T, in, r], [T, r, out]) moves T copies of the adapter through memory and
is several times slower for prefill-sized steps; `jax.lax.ragged_dot` over tokens sorted by slot
(punica's SGMV) needs a sort, a permutation and an un-permutation of the rows, and XLA:CPU lowers
it as one dense dot per group, so it is slower still. The masked dense form costs S times the
shrink's few FLOPs (r is small) and runs as two plain dots.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def lora_delta(
    x: jax.Array,  # [T, in]
    a: jax.Array,  # [S, L, in, r]: the table's A of one projection
    b: jax.Array,  # [S, L, r, out]: its B, scaling folded in
    slots: jax.Array,  # [T] int32: each token's slot, -1 for the base model
    layer: jax.Array | int,  # which layer of the stack
) -> jax.Array:  # [T, out], in x's dtype
    S, _, _, r = a.shape
    T = x.shape[0]
    a_l = a[:, layer].astype(x.dtype)  # [S, in, r]
    b_l = b[:, layer].astype(x.dtype)  # [S, r, out]
    u = jnp.einsum("ti,sir->tsr", x, a_l)  # [T, S, r]
    mask = (slots[:, None] == jnp.arange(S, dtype=slots.dtype)[None, :]).astype(x.dtype)  # [T, S]
    u = (u * mask[:, :, None]).reshape(T, S * r)  # [T, S * r]
    return u @ b_l.reshape(S * r, -1)  # [T, out]


def add_lora(y: jax.Array, x: jax.Array, lora: Any, name: str, layer) -> jax.Array:
    """`y` (a projection's output [T, out] of input `x` [T, in]) plus its LoRA term when the step
    carries LoRA inputs (`jaxllm.lora.step_inputs.LoRAStep`, the table's entry of `name` holding
    "a" and "b"); else `y`."""
    if lora is None or name not in lora.weights:
        return y
    table = lora.weights[name]
    return y + lora_delta(x, table["a"], table["b"], lora.slots, layer).astype(y.dtype)
