"""Gemma 3 text (`Gemma3ForCausalLM`, e.g. gemma-3-270m and gemma-3-1b) as a Flax linen module.

What differs from the Llama decoder (llama.py, whose attention and MLP it reuses):
- every norm is Gemma's RMSNorm, scaled by (1 + w) (`GemmaRMSNorm`), q and k are normalized per
  head before the rotation, and each layer has four norms: around the attention (input,
  post-attention) and around the MLP (pre- and post-feedforward), each output norm applied before
  its residual add;
- the MLP is GeGLU (`hidden_activation` gelu_pytorch_tanh);
- the token embeddings are multiplied by sqrt(hidden_size) in the model dtype;
- attention scores are scaled by `query_pre_attn_scalar ** -0.5`;
- sliding-window layers (window `sliding_window`, rope base `rope_local_base_freq`) interleave with
  global layers (the whole context, `rope_theta` and its scaling) by `layer_types`, so each layer
  has its own static window and rope (decoder.py runs such layers as a loop, not a scan);
- the logits are soft-capped where `final_logit_softcapping` is set.
Layout: gemma3_layout.py.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxllm.layers.norms import GemmaRMSNorm
from jaxllm.models.batch import StepBatch
from jaxllm.models.decoder import DecoderForCausalLM

# The layout this module's class reads, re-exported (`as`) for the registry's readers.
from jaxllm.models.gemma3_layout import GGUF_ARCHITECTURES as GGUF_ARCHITECTURES
from jaxllm.models.gemma3_layout import PARAM_LOGICAL_AXES as PARAM_LOGICAL_AXES
from jaxllm.models.gemma3_layout import from_gguf_tensor as from_gguf_tensor
from jaxllm.models.gemma3_layout import gguf_tensor_names as gguf_tensor_names
from jaxllm.models.gemma3_layout import hf_to_gguf_name as hf_to_gguf_name
from jaxllm.models.gemma3_layout import param_layout as param_layout
from jaxllm.models.llama import MLP, Attention, DecoderLayer


class Gemma3DecoderLayer(DecoderLayer):
    """h + post_norm(attn(input_norm(h))), then h + post_ffw_norm(mlp(pre_ffw_norm(h))); Llama's
    layer fields and interface, its own norms."""

    @nn.compact
    def __call__(self, carry, layer, rope, batch: StepBatch, packed=None):
        h, k_pages, v_pages = carry
        c = self.config
        dt = jnp.dtype(c.dtype)
        packed = packed or {}  # stacked packed kernels of every layer (packed_params)

        def norm(name: str):
            return GemmaRMSNorm(c.rms_norm_eps, dt, name=name)

        a, k_pages, v_pages = Attention(
            c, self.backend, self.mesh, self.window, GemmaRMSNorm, name="self_attn"
        )(norm("input_layernorm")(h), rope, k_pages, v_pages, layer, batch, packed.get("self_attn"))
        h = h + norm("post_attention_layernorm")(a)
        m = MLP(c, name="mlp")(
            norm("pre_feedforward_layernorm")(h), layer, packed.get("mlp"), batch.lora
        )
        h = h + norm("post_feedforward_layernorm")(m)
        return (h, k_pages, v_pages), None


class Gemma3ForCausalLM(DecoderForCausalLM):
    """`__call__(kv_cache, batch) -> (kv_cache, logits [R, V] float32)`."""

    layer_class = Gemma3DecoderLayer
    norm_class = GemmaRMSNorm

    def embed_scale(self) -> float | None:
        return float(self.config.hidden_size) ** 0.5
