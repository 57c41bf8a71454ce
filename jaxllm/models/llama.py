"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) as a Flax linen module.

The layers are one `nn.scan` over a stacked parameter tree: rolled on the CPU (a 30-layer model
compiles like a 1-layer one), unrolled on accelerators (see `unroll_layers`). Parameter layout
(declared in llama_layout.py, which the loaders fill and jaxllm.parallel shards; kernels are
[in, out]):

    embed_tokens/embedding [V, D]
    layers/input_layernorm/scale [L, D]
    layers/self_attn/{q,k,v}_proj/kernel [L, D, H*Dh] (+ bias [L, H*Dh] when attention_bias)
    layers/self_attn/o_proj/kernel [L, Hq*Dh, D]
    layers/post_attention_layernorm/scale [L, D]
    layers/mlp/{gate,up}_proj/kernel [L, D, F], layers/mlp/down_proj/kernel [L, F, D]
    norm/scale [D]
    lm_head/kernel [D, V] (absent when tie_word_embeddings, unless the CPU layout below adds it)

The model also runs the same parameters unstacked, `layers_0/...` to `layers_{L-1}/...` with the
leading L axis dropped (`unstack_layer_params`): the layers are then a Python loop whose dots read
each layer's kernels where they lie. A rolled scan (and an unrolled one) instead copies every
layer's kernel slices out of the stacked arrays on each step; on XLA:CPU those copies are ~25% of
a SmolLM2 batch-16 decode step (`jaxllm.benchmarks.cpu_step_profile`).
`jaxllm.models.step.step_params` picks the layout for a platform. On the CPU it packs every dense
kernel into 16-column strips for `cpu_ext`'s matmul (`jaxllm.models.packed_params`): stacked
kernels then leave `layers` for `packed_layers`, which the scan broadcasts whole and each layer's
matmul reads in place at its layer index, so the rolled scan copies no weights either; a
tied-embedding model gets a packed `lm_head/kernel` of its own.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.layers.attention import sharded_attention_fn, sharded_kv_write_fn
from jaxllm.layers.embedding import vocab_parallel_embed
from jaxllm.layers.linear import Linear
from jaxllm.layers.norms import RMSNorm
from jaxllm.layers.rotary import apply_rotary, rope_cos_sin, rope_inv_freq
from jaxllm.models.batch import KVCache, StepBatch

# The parameter layout this module's class reads, re-exported (`as`) for the registry's readers
# (jaxllm.models.layout: the loaders and jaxllm.parallel).
from jaxllm.models.llama_layout import GGUF_ARCHITECTURES as GGUF_ARCHITECTURES
from jaxllm.models.llama_layout import PARAM_LOGICAL_AXES as PARAM_LOGICAL_AXES
from jaxllm.models.llama_layout import gguf_tensor_names as gguf_tensor_names
from jaxllm.models.llama_layout import hf_to_gguf_name as hf_to_gguf_name
from jaxllm.models.llama_layout import param_layout as param_layout
from jaxllm.models.packed_params import PACKED_LAYERS

UNROLL_ENV = "JAXLLM_UNROLL_LAYERS"
# Accelerator steps with at least this many (padded) tokens keep the layer scan rolled.
UNROLL_MAX_TOKENS = 4096
PER_LAYER_PREFIX = "layers_"  # unstacked parameters: layers_0, layers_1, ...


def unstack_layer_params(params: dict) -> dict:
    """Stacked `layers/...` [L, ...] -> per-layer trees `layers_0/...` ... `layers_{L-1}/...`
    (every other entry unchanged). Each leaf is a new array: free the stacked tree afterwards."""
    params = dict(params)
    stacked = params.pop("layers")
    L = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(L):
        params[f"{PER_LAYER_PREFIX}{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return params


def stack_layer_params(params: dict) -> dict:
    """The inverse of `unstack_layer_params`."""
    params = dict(params)
    names = [k for k in params if k.startswith(PER_LAYER_PREFIX)]
    names.sort(key=lambda k: int(k[len(PER_LAYER_PREFIX) :]))
    params["layers"] = jax.tree.map(lambda *a: jnp.stack(a), *[params.pop(k) for k in names])
    return params


def _packed_kernels(packed: dict | None, layer):
    """name -> (stacked packed kernel or None, layer) for `Linear`'s extra arguments."""
    return lambda name: (None, None) if not packed else (packed[name], layer)


def has_per_layer_params(params: dict) -> bool:
    return f"{PER_LAYER_PREFIX}0" in params


def _dense(features: int, bias: bool, dtype, name: str) -> Linear:
    return Linear(features, use_bias=bias, dtype=dtype, name=name)


class Attention(nn.Module):
    config: ModelConfig
    backend: str
    mesh: Any = None  # tensor parallelism: attention runs under shard_map over 'model'

    @nn.compact
    def __call__(self, x, cos, sin, k_pages, v_pages, layer, batch: StepBatch, packed=None):
        c = self.config
        dt = jnp.dtype(c.dtype)
        T = x.shape[0]
        pk = _packed_kernels(packed, layer)
        q = _dense(c.num_attention_heads * c.head_dim, c.attention_bias, dt, "q_proj")(
            x, *pk("q_proj")
        )
        k = _dense(c.num_key_value_heads * c.head_dim, c.attention_bias, dt, "k_proj")(
            x, *pk("k_proj")
        )
        v = _dense(c.num_key_value_heads * c.head_dim, c.attention_bias, dt, "v_proj")(
            x, *pk("v_proj")
        )
        q = apply_rotary(q.reshape(T, c.num_attention_heads, c.head_dim), cos, sin)
        k = apply_rotary(k.reshape(T, c.num_key_value_heads, c.head_dim), cos, sin)
        v = v.reshape(T, c.num_key_value_heads, c.head_dim)
        k_pages, v_pages = sharded_kv_write_fn(self.mesh)(
            k_pages, v_pages, k, v, batch.slot_mapping, layer
        )
        o = sharded_attention_fn(self.backend, self.mesh)(
            q,
            k_pages,
            v_pages,
            batch.block_tables,
            batch.kv_lens,
            batch.query_start_loc,
            layer,
            sm_scale=c.head_dim**-0.5,
            sliding_window=c.sliding_window,
            decode_only=batch.decode_only,
        )
        o = o.reshape(T, c.num_attention_heads * c.head_dim)
        return _dense(c.hidden_size, False, dt, "o_proj")(o, *pk("o_proj")), k_pages, v_pages


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, layer=None, packed=None):  # [T, D] -> [T, D]
        c = self.config
        dt = jnp.dtype(c.dtype)
        pk = _packed_kernels(packed, layer)
        gate = _dense(c.intermediate_size, c.mlp_bias, dt, "gate_proj")(x, *pk("gate_proj"))
        up = _dense(c.intermediate_size, c.mlp_bias, dt, "up_proj")(x, *pk("up_proj"))
        return _dense(c.hidden_size, c.mlp_bias, dt, "down_proj")(
            nn.silu(gate) * up, *pk("down_proj")
        )


class DecoderLayer(nn.Module):
    """One layer; scanned over L with carry (hidden, k_pages, v_pages)."""

    config: ModelConfig
    backend: str
    mesh: Any = None

    @nn.compact
    def __call__(self, carry, layer, cos, sin, batch: StepBatch, packed=None):
        h, k_pages, v_pages = carry
        c = self.config
        dt = jnp.dtype(c.dtype)
        packed = packed or {}  # stacked packed kernels of every layer (packed_params)
        x = RMSNorm(c.rms_norm_eps, dt, name="input_layernorm")(h)
        a, k_pages, v_pages = Attention(c, self.backend, self.mesh, name="self_attn")(
            x, cos, sin, k_pages, v_pages, layer, batch, packed.get("self_attn")
        )
        h = h + a
        x = RMSNorm(c.rms_norm_eps, dt, name="post_attention_layernorm")(h)
        h = h + MLP(c, name="mlp")(x, layer, packed.get("mlp"))
        return (h, k_pages, v_pages), None


class LlamaForCausalLM(nn.Module):
    """`__call__(kv_cache, batch) -> (kv_cache, logits [R, V] float32)`."""

    config: ModelConfig
    backend: str = "reference"
    mesh: Any = None  # a ('data', 'model') jax.sharding.Mesh for tensor parallelism, or None
    # Unroll the layer scan? None: on the CPU never; on accelerators for steps of fewer than
    # UNROLL_MAX_TOKENS tokens. A rolled scan slices each layer's weights out of the stacked arrays
    # with a dynamic-slice that XLA materializes: a Llama-3-8B batch-1 decode step then copies the
    # weights (H100: 15.0 ms vs 5.3 ms unrolled, bench/gpu_runs/2026-11-28_h100_llama8b.md;
    # XLA's dynamic-slice fusion does not remove it: 14.4 vs 15.1 ms/token on an H200). But the
    # unrolled step compiles 10-20x slower (H200: 18-32 s vs 1.5-2.7 s a shape,
    # bench/gpu_runs/2026-11-28_h200x2_compile.md). Large steps are compute-bound, so there the
    # copy is a small share and the fast rolled compile wins. On the CPU unrolling is slower
    # outright: SmolLM2 f32, batch-16 decode at context 192, 243 ms rolled vs 370 ms unrolled.
    unroll_layers: bool | None = None

    @nn.compact
    def __call__(self, kv_cache: KVCache, batch: StepBatch):
        c = self.config
        dt = jnp.dtype(c.dtype)
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=dt, param_dtype=dt, name="embed_tokens")
        # [T, D]; vocabulary-parallel under tp (a plain take all-gathers the table on the GPU)
        h = vocab_parallel_embed(embed.embedding.astype(dt), batch.token_ids, self.mesh)
        cos, sin = rope_cos_sin(
            batch.positions, rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling)
        )
        carry = (h, kv_cache.k, kv_cache.v)
        if has_per_layer_params(self.variables.get("params", {})):
            for i in range(c.num_hidden_layers):  # layer i's kernels read in place
                layer = DecoderLayer(c, self.backend, self.mesh, name=f"{PER_LAYER_PREFIX}{i}")
                carry, _ = layer(carry, i, cos, sin, batch)
            return self._head(embed, *carry, batch)
        unroll = self._unroll(batch.token_ids.shape[0])
        layers = nn.scan(
            DecoderLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_hidden_layers,
            unroll=c.num_hidden_layers if unroll else 1,
        )(c, self.backend, self.mesh, name="layers")
        layer_ids = jnp.arange(c.num_hidden_layers, dtype=jnp.int32)
        # cpu_ext's packed kernels [L, ...] (packed_params): broadcast whole, read at each layer
        packed = self.variables.get("params", {}).get(PACKED_LAYERS)
        carry, _ = layers(carry, layer_ids, cos, sin, batch, packed)
        return self._head(embed, *carry, batch)

    def _head(self, embed, h, k, v, batch: StepBatch):
        c = self.config
        dt = jnp.dtype(c.dtype)
        h = RMSNorm(c.rms_norm_eps, dt, name="norm")(h[batch.logits_indices])  # [R, D]
        if c.tie_word_embeddings and "lm_head" not in self.variables.get("params", {}):
            logits = embed.attend(h)
        else:
            logits = _dense(c.vocab_size, False, dt, "lm_head")(h)
        return KVCache(k, v), logits.astype(jnp.float32)

    def _unroll(self, num_tokens: int) -> bool:
        if self.unroll_layers is not None:
            return self.unroll_layers
        env = os.environ.get(UNROLL_ENV, "").strip().lower()
        if env in ("0", "false", "no", "1", "true", "yes"):
            return env in ("1", "true", "yes")
        if env:
            raise ValueError(f"{UNROLL_ENV}={env!r}: use 1 (unrolled) or 0 (rolled scan)")
        return jax.default_backend() != "cpu" and num_tokens < UNROLL_MAX_TOKENS
