"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2; Qwen3 and Phi-3 build on it) as a
Flax linen module.

Parameter layout (declared in llama_layout.py, which the loaders fill and jaxllm.parallel shards;
kernels are [in, out]):

    embed_tokens/embedding [V, D]
    layers/input_layernorm/scale [L, D]
    layers/self_attn/{q,k,v}_proj/kernel [L, D, H*Dh] (+ bias [L, H*Dh] when attention_bias)
    layers/self_attn/{q,k}_norm/scale [L, Dh] (when qk_norm: Qwen3)
    layers/self_attn/o_proj/kernel [L, Hq*Dh, D]
    layers/post_attention_layernorm/scale [L, D]
    layers/mlp/{gate,up}_proj/kernel [L, D, F], layers/mlp/down_proj/kernel [L, F, D]
    norm/scale [D]
    lm_head/kernel [D, V] (absent when tie_word_embeddings, unless the CPU layout adds it)

How the layers run (scan, per-layer loop) and the head are shared with the other families:
jaxllm/models/decoder.py.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.layers.activation import activation
from jaxllm.layers.attention import sharded_attention_fn, sharded_kv_write_fn
from jaxllm.layers.moe import SparseMoeBlock
from jaxllm.layers.norms import RMSNorm
from jaxllm.layers.rotary import apply_rotary
from jaxllm.lora.segment_matmul import add_lora
from jaxllm.models.batch import StepBatch

# The shared decoder machinery, re-exported (`as`) under the names its users import from here.
from jaxllm.models.decoder import PER_LAYER_PREFIX as PER_LAYER_PREFIX
from jaxllm.models.decoder import UNROLL_ENV as UNROLL_ENV
from jaxllm.models.decoder import UNROLL_MAX_TOKENS as UNROLL_MAX_TOKENS
from jaxllm.models.decoder import DecoderForCausalLM, dense, packed_kernels
from jaxllm.models.decoder import has_per_layer_params as has_per_layer_params
from jaxllm.models.decoder import stack_layer_params as stack_layer_params
from jaxllm.models.decoder import unstack_layer_params as unstack_layer_params

# The parameter layout this module's class reads, re-exported (`as`) for the registry's readers
# (jaxllm.models.layout: the loaders and jaxllm.parallel).
from jaxllm.models.llama_layout import GGUF_ARCHITECTURES as GGUF_ARCHITECTURES
from jaxllm.models.llama_layout import PARAM_LOGICAL_AXES as PARAM_LOGICAL_AXES
from jaxllm.models.llama_layout import gguf_tensor_names as gguf_tensor_names
from jaxllm.models.llama_layout import hf_to_gguf_name as hf_to_gguf_name
from jaxllm.models.llama_layout import param_layout as param_layout
from pallas_kernels.kv_quant import is_quantized


class Attention(nn.Module):
    """q/k/v projections (q and k normalized per head when `config.qk_norm`), rotation, the paged
    KV write, attention within `window` and the output projection."""

    config: ModelConfig
    backend: str
    mesh: Any = None  # tensor parallelism: attention runs under shard_map over 'model'
    window: int | None = None  # this layer's attention window (None: the whole context)
    norm_class: Any = RMSNorm  # of q_norm / k_norm

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [T, D]
        rope,  # (cos, sin) [T, rotary_dim // 2] float32
        k_pages: jax.Array,  # [L, N, Hkv, bs, Dh]
        v_pages: jax.Array,
        layer,
        batch: StepBatch,
        packed=None,
    ):
        c = self.config
        dt = jnp.dtype(c.dtype)
        T = x.shape[0]
        pk = packed_kernels(packed, layer)
        Hq, Hkv, Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        if packed and "qkv_proj" in packed:  # q, k, v joined in one weight (packed_params)
            qkv = dense((Hq + 2 * Hkv) * Dh, False, dt, "qkv_proj")(x, *pk("qkv_proj"))
            q, k, v = jnp.split(qkv, [Hq * Dh, (Hq + Hkv) * Dh], axis=-1)
        else:
            q = dense(Hq * Dh, c.attention_bias, dt, "q_proj")(x, *pk("q_proj"))
            k = dense(Hkv * Dh, c.attention_bias, dt, "k_proj")(x, *pk("k_proj"))
            v = dense(Hkv * Dh, c.attention_bias, dt, "v_proj")(x, *pk("v_proj"))
        # each token's LoRA adapter (none unless the step carries the adapter table)
        q = add_lora(q, x, batch.lora, "q_proj", layer)
        k = add_lora(k, x, batch.lora, "k_proj", layer)
        v = add_lora(v, x, batch.lora, "v_proj", layer)
        q, k, v = q.reshape(T, Hq, Dh), k.reshape(T, Hkv, Dh), v.reshape(T, Hkv, Dh)
        if c.qk_norm:
            q = self.norm_class(c.rms_norm_eps, dt, name="q_norm")(q)
            k = self.norm_class(c.rms_norm_eps, dt, name="k_norm")(k)
        cos, sin = rope
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        # fp8 pages (kv_cache_dtype="fp8") hold K / k_scale and V / v_scale; float pages ignore
        # the scales
        scales = dict(k_scale=c.k_scale, v_scale=c.v_scale)
        k_pages, v_pages = sharded_kv_write_fn(self.mesh)(
            k_pages, v_pages, k, v, batch.slot_mapping, layer, **scales
        )
        if k_pages.dtype != q.dtype and not is_quantized(k_pages.dtype):
            q = q.astype(k_pages.dtype)  # a float cache of another dtype: attend in its dtype
        o = sharded_attention_fn(self.backend, self.mesh)(
            q,
            k_pages,
            v_pages,
            batch.block_tables,
            batch.kv_lens,
            batch.query_start_loc,
            layer,
            sm_scale=c.sm_scale,
            sliding_window=self.window,
            decode_only=batch.decode_only,
            **scales,
        )
        o = o.reshape(T, Hq * Dh).astype(dt)
        out = dense(c.hidden_size, False, dt, "o_proj")(o, *pk("o_proj"))
        return add_lora(out, o, batch.lora, "o_proj", layer), k_pages, v_pages


class MLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU, or GeGLU with a GELU `hidden_act`."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, layer=None, packed=None, lora=None
    ) -> jax.Array:  # [T, D] -> [T, D]
        """`lora`: the step's LoRA inputs (`StepBatch.lora`), or None."""
        c = self.config
        dt = jnp.dtype(c.dtype)
        pk = packed_kernels(packed, layer)
        F = c.intermediate_size
        if packed and "gate_up_proj" in packed:  # gate and up joined in one weight
            gate, up = jnp.split(
                dense(2 * F, False, dt, "gate_up_proj")(x, *pk("gate_up_proj")), 2, -1
            )
        else:
            gate = dense(F, c.mlp_bias, dt, "gate_proj")(x, *pk("gate_proj"))
            up = dense(F, c.mlp_bias, dt, "up_proj")(x, *pk("up_proj"))
        gate = add_lora(gate, x, lora, "gate_proj", layer)
        up = add_lora(up, x, lora, "up_proj", layer)
        hidden = activation(c.hidden_act)(gate) * up  # [T, F]
        out = dense(c.hidden_size, c.mlp_bias, dt, "down_proj")(hidden, *pk("down_proj"))
        return add_lora(out, hidden, lora, "down_proj", layer)


class DecoderLayer(nn.Module):
    """One pre-norm layer: h + attn(norm(h)), then h + mlp(norm(h)); carry (hidden, k_pages,
    v_pages). The interface of decoder.py's layers."""

    config: ModelConfig
    backend: str
    mesh: Any = None
    window: int | None = None

    @nn.compact
    def __call__(self, carry, layer, rope, batch: StepBatch, packed=None):
        h, k_pages, v_pages = carry
        c = self.config
        dt = jnp.dtype(c.dtype)
        packed = packed or {}  # stacked packed kernels of every layer (packed_params)
        x = RMSNorm(c.rms_norm_eps, dt, name="input_layernorm")(h)
        a, k_pages, v_pages = Attention(c, self.backend, self.mesh, self.window, name="self_attn")(
            x, rope, k_pages, v_pages, layer, batch, packed.get("self_attn")
        )
        h = h + a
        x = RMSNorm(c.rms_norm_eps, dt, name="post_attention_layernorm")(h)
        h = h + self.mlp(x, layer, packed.get("mlp"), batch.lora)
        return (h, k_pages, v_pages), None

    def mlp(self, x: jax.Array, layer, packed, lora=None) -> jax.Array:  # [T, D] -> [T, D]
        """The layer's MLP, named "mlp": dense, or a sparse mixture of experts (config.is_moe;
        no LoRA: the engine refuses adapters for MoE models)."""
        if self.config.is_moe:
            block = SparseMoeBlock(self.config, self.mesh, shared_mlp=MLP, name="mlp")
            return block(x, layer, packed)
        return MLP(self.config, name="mlp")(x, layer, packed, lora)


class LlamaForCausalLM(DecoderForCausalLM):
    """`__call__(kv_cache, batch) -> (kv_cache, logits [R, V] float32)`."""

    layer_class = DecoderLayer
