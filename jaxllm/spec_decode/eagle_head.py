"""The EAGLE-1 draft head (Li et al. 2024) for a Llama-family target, and its one jitted step.

At each position i the head reads the target's feature f_i and the next token t_{i+1}:

    x_i   = fc([embed(t_{i+1}); f_i])                  [2D] -> [D]   (fc: weight + optional bias)
    f'_i+1 = layer(x)_i                                 one Llama decoder layer, causal over the
                                                        head's own paged KV cache at position i
    draft = argmax lm_head(f'_{i+1})                    the target's embedding and LM head

The feature is the target's final hidden state *after* its final norm (the LM head's input), and
the head's output goes to the LM head with no norm: what EAGLE-1 checkpoints were trained on
(EAGLE's training data takes HF's `hidden_states[-1]`, which is normed, and its drafting applies
the LM head straight to the head's output; vLLM's EAGLE-1 Llama head likewise has no final norm and
reads the target's normed output). Layer 0 of EAGLE-1 has no input norm: x enters attention as is
(`x + attn(x)`, then `+ mlp(post_attention_layernorm(.))`). Drafting further steps feeds f' back as
the feature of the next position.

Parameters (kernels [in, out], as the loader lays them out, eagle_checkpoint.py):

    fc/kernel [2D, D], fc/bias [D] (when the checkpoint has one)
    layer/self_attn/{q,k,v}_proj/kernel [D, H*Dh], layer/self_attn/o_proj/kernel [Hq*Dh, D]
    layer/post_attention_layernorm/scale [D]
    layer/mlp/{gate,up}_proj/kernel [D, F], layer/mlp/down_proj/kernel [F, D]
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.layers.linear import Linear
from jaxllm.layers.norms import RMSNorm
from jaxllm.models.batch import KVCache, StepBatch
from jaxllm.models.decoder import dense, rope_tables
from jaxllm.models.llama import MLP, Attention


class EagleLayer(nn.Module):
    """EAGLE-1's decoder layer: a Llama layer without the input norm."""

    config: ModelConfig
    backend: str

    @nn.compact
    def __call__(self, h, k_pages, v_pages, rope, batch: StepBatch):  # h [T, D]
        c = self.config
        dt = jnp.dtype(c.dtype)
        a, k_pages, v_pages = Attention(c, self.backend, name="self_attn")(
            h, rope, k_pages, v_pages, 0, batch
        )
        h = h + a
        x = RMSNorm(c.rms_norm_eps, dt, name="post_attention_layernorm")(h)
        return h + MLP(c, name="mlp")(x), k_pages, v_pages


class EagleHead(nn.Module):
    """`__call__(kv_cache, batch, embed [V, D], features [T, D]) -> (kv_cache, f' [T, D])`:
    `batch.token_ids` holds each position's next token t_{i+1}, `features` its f_i."""

    config: ModelConfig  # the head's: one layer, the target's width
    backend: str
    fc_bias: bool = False

    @nn.compact
    def __call__(self, kv_cache: KVCache, batch: StepBatch, embed: jax.Array, features):
        c = self.config
        dt = jnp.dtype(c.dtype)
        e = embed[batch.token_ids].astype(dt)  # [T, D]
        x = dense(c.hidden_size, self.fc_bias, dt, "fc")(
            jnp.concatenate([e, features.astype(dt)], axis=-1)  # [T, 2D]
        )
        rope = rope_tables(c, batch)[c.layer_rope(0)]
        h, k, v = EagleLayer(c, self.backend, name="layer")(x, kv_cache.k, kv_cache.v, rope, batch)
        return KVCache(k, v), h


def lm_head_logits(lm_head: dict | None, embed: jax.Array, f: jax.Array, dtype) -> jax.Array:
    """The target's LM head over `f` [R, D] -> [R, V] float32: its `lm_head` params in whatever
    layout the target runs them (plain, packed for cpu_ext, quantized: `Linear` reads each), or
    the tied embedding table [V, D] where it has none."""
    if lm_head is None:
        return jnp.dot(f.astype(dtype), embed.astype(dtype).T).astype(jnp.float32)
    V = embed.shape[0]
    return Linear(V, dtype=dtype).apply({"params": lm_head}, f).astype(jnp.float32)


def eagle_step(
    head: EagleHead,
    params: dict,  # {"head": the head's params, "embed": [V, D], "lm_head": target's or None}
    kv_cache: KVCache,  # the head's own, donated
    feature_src: jax.Array,  # [X, D]: the target's hidden states, or the last head step's f'
    feature_rows: jax.Array,  # [T] int32: each token's row of feature_src (-1: padding)
    batch: StepBatch,
):
    """One head step: `(kv_cache, greedy draft token [S] int32, f' [S, D])` at each sequence's
    last token (`batch.logits_indices[:S]`)."""
    dt = jnp.dtype(head.config.dtype)
    feats = feature_src[jnp.maximum(feature_rows, 0)]  # [T, D]
    feats = jnp.where((feature_rows >= 0)[:, None], feats, 0).astype(dt)
    kv_cache, hidden = head.apply(
        {"params": params["head"]}, kv_cache, batch, params["embed"], feats
    )
    S = batch.block_tables.shape[0]
    f = hidden[batch.logits_indices[:S]]  # [S, D]
    logits = lm_head_logits(params["lm_head"], params["embed"], f, dt)  # [S, V]
    return kv_cache, jnp.argmax(logits, axis=-1).astype(jnp.int32), f
