"""What every decoder-only model here shares: running its layers and its LM head.

A model module (llama.py, gemma3.py, ...) defines its decoder layer, a Flax module called as
`layer(carry, layer_index, rope, batch, packed) -> (carry, None)` with carry (hidden [T, D],
k_pages, v_pages) and rope = (cos, sin) [T, rotary_dim // 2], and whose attribute `window` is the
layer's attention window (None: the whole context). `DecoderForCausalLM` embeds the tokens, runs
the layers and applies the final norm and the LM head; a model subclasses it to set its layer
class and, where it differs, its embedding scale and norm.

The layers run in one of three ways, by the parameter layout and the config:
- stacked parameters `layers/...` [L, ...] and layers that all share one window and rope
  (`ModelConfig.uniform_layers`): one `nn.scan`, rolled on the CPU (a 30-layer model compiles like
  a 1-layer one), unrolled on accelerators for small steps (see `unroll_layers`);
- per-layer parameters `layers_0/...` ... `layers_{L-1}/...` (`unstack_layer_params`, the CPU
  layout): a Python loop whose dots read each layer's kernels where they lie. A rolled scan (and an
  unrolled one) instead copies every layer's kernel slices out of the stacked arrays on each step;
  on XLA:CPU those copies are ~25% of a SmolLM2 batch-16 decode step
  (`jaxllm.benchmarks.cpu_step_profile`);
- stacked parameters of a model whose layers differ (Gemma 3's interleaved sliding and global
  layers): a Python loop over the stacked arrays, each layer with its own static window and rope,
  as the unrolled scan would run them.
`jaxllm.models.step.step_params` picks the layout for a platform. On the CPU it packs every dense
kernel into 16-column strips for `cpu_ext`'s matmul (`jaxllm.models.packed_params`): stacked
kernels then leave `layers` for `packed_layers`, which the layers read in place at their index.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig, RopeScaling
from jaxllm.layers.embedding import vocab_parallel_embed
from jaxllm.layers.linear import Linear, use_cpu_kernels
from jaxllm.layers.norms import RMSNorm
from jaxllm.layers.rotary import LENGTH_DEPENDENT_ROPE_TYPES, rotary_cos_sin
from jaxllm.lora.step_inputs import LORA_PARAMS, LoRAStep
from jaxllm.models.batch import KVCache, StepBatch
from jaxllm.models.packed_params import PACKED_LAYERS
from jaxllm.quantization.formats import EMBEDDING, format_in
from jaxllm.quantization.gguf_blocks import dequantize_rows

UNROLL_ENV = "JAXLLM_UNROLL_LAYERS"
# Accelerator steps with at least this many (padded) tokens keep the layer scan rolled.
UNROLL_MAX_TOKENS = 4096
PER_LAYER_PREFIX = "layers_"  # unstacked parameters: layers_0, layers_1, ...

Rope = tuple[jax.Array, jax.Array]  # cos, sin: [T, rotary_dim // 2] float32


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


def has_per_layer_params(params: dict) -> bool:
    return f"{PER_LAYER_PREFIX}0" in params


def packed_kernels(packed: dict | None, layer):
    """name -> (stacked packed kernel or None, layer) for `Linear`'s extra arguments."""
    return lambda name: (None, None) if not packed else (packed[name], layer)


def dense(features: int, bias: bool, dtype, name: str) -> Linear:
    return Linear(features, use_bias=bias, dtype=dtype, name=name)


def token_context_lens(batch: StepBatch) -> jax.Array:  # [T] int32
    """For each token of the step, the context length (kv_len) of its sequence."""
    T = batch.token_ids.shape[0]
    seq = jnp.searchsorted(batch.query_start_loc, jnp.arange(T, dtype=jnp.int32), side="right")
    return batch.kv_lens[jnp.clip(seq - 1, 0, batch.kv_lens.shape[0] - 1)]


def rope_tables(c: ModelConfig, batch: StepBatch) -> dict[tuple, Rope]:
    """cos/sin of every distinct (theta, scaling) among the layers, keyed by `c.layer_rope(i)`."""
    kinds: list[tuple[float, RopeScaling | None]] = list(
        dict.fromkeys(c.layer_rope(i) for i in range(c.num_hidden_layers))
    )
    lengths = batch.positions  # unread by the rope types that do not depend on the length
    if any(s is not None and s.rope_type in LENGTH_DEPENDENT_ROPE_TYPES for _, s in kinds):
        lengths = token_context_lens(batch)
    out = {}
    for theta, scaling in kinds:
        out[(theta, scaling)] = rotary_cos_sin(
            batch.positions,
            lengths,
            rotary_dim=c.rotary_dim,
            theta=theta,
            scaling=scaling,
            max_position_embeddings=c.max_position_embeddings,
        )
    return out


class DecoderForCausalLM(nn.Module):
    """`__call__(kv_cache, batch) -> (kv_cache, logits [R, V] float32)`, and with
    `return_hidden_states` also the final hidden states [T, D] of every token, after the final
    norm (the LM head's input: the features an EAGLE head reads, jaxllm/spec_decode/)."""

    config: ModelConfig
    backend: str = "reference"
    mesh: Any = None  # a ('data', 'model') jax.sharding.Mesh for tensor parallelism, or None
    # Unroll the layer scan? None: on the CPU never; on accelerators for steps of fewer than
    # UNROLL_MAX_TOKENS tokens. A rolled scan slices each layer's weights out of the stacked arrays
    # with a dynamic-slice that XLA materializes, so a batch-1 decode step copies the weights
    # (about 3x slower for Llama-3-8B; bench/gpu_runs/2026-11-28_h100_llama8b.md), but the
    # unrolled step compiles 10-20x slower (bench/gpu_runs/2026-11-28_h200x2_compile.md). Large
    # steps are compute-bound, so there the copy is a small share and the fast rolled compile
    # wins. On the CPU unrolling is slower outright (bench/RESULTS.md).
    unroll_layers: bool | None = None
    # static: also return every token's final hidden state (EAGLE speculation); off, the step
    # traces and returns nothing extra
    return_hidden_states: bool = False

    layer_class: ClassVar[Any] = None  # the model's decoder layer module
    norm_class: ClassVar[Any] = RMSNorm  # the final norm

    def embed_scale(self) -> float | None:
        """A factor the token embeddings are multiplied by (in their dtype), or None."""
        return None

    def _layer(self, i: int | None, name: str | None, **kw):
        c = self.config
        window = c.layer_window(0 if i is None else i)
        return self.layer_class(c, self.backend, self.mesh, window=window, name=name, **kw)

    @nn.compact
    def __call__(self, kv_cache: KVCache, batch: StepBatch):
        c = self.config
        dt = jnp.dtype(c.dtype)
        params = self.variables.get("params", {})
        quantized_embed = format_in(params.get("embed_tokens"), EMBEDDING)
        if quantized_embed is not None:  # GGUF blocks [V, row_bytes]: rows looked up, then unpacked
            embed = params["embed_tokens"][quantized_embed.data_leaf(EMBEDDING)]
            rows = vocab_parallel_embed(embed, batch.token_ids, self.mesh)
            h = dequantize_rows(rows, quantized_embed.name).astype(dt)
        else:
            embed = nn.Embed(
                c.vocab_size, c.hidden_size, dtype=dt, param_dtype=dt, name="embed_tokens"
            )
            # [T, D]; vocabulary-parallel under tp (a plain take all-gathers the table on the GPU)
            h = vocab_parallel_embed(embed.embedding.astype(dt), batch.token_ids, self.mesh)
        lora_table = params.get(LORA_PARAMS)  # the LoRA adapter table, when the engine has one
        if batch.lora is not None and lora_table is not None:
            batch = dataclasses.replace(batch, lora=LoRAStep(batch.lora.slots, lora_table))
        scale = self.embed_scale()
        if scale is not None:
            h = h * jnp.asarray(scale, dt)
        ropes = rope_tables(c, batch)
        carry = (h, kv_cache.k, kv_cache.v)
        # cpu_ext's packed kernels [L, ...] (packed_params): read in place at each layer's index
        packed = params.get(PACKED_LAYERS)
        if has_per_layer_params(params):  # layer i's kernels read in place
            for i in range(c.num_hidden_layers):
                layer = self._layer(i, f"{PER_LAYER_PREFIX}{i}")
                carry, _ = layer(carry, i, ropes[c.layer_rope(i)], batch)
        elif c.uniform_layers:
            unroll = self._unroll(batch.token_ids.shape[0])
            layers = nn.scan(
                self.layer_class,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.num_hidden_layers,
                unroll=c.num_hidden_layers if unroll else 1,
            )(c, self.backend, self.mesh, window=c.layer_window(0), name="layers")
            layer_ids = jnp.arange(c.num_hidden_layers, dtype=jnp.int32)
            carry, _ = layers(carry, layer_ids, ropes[c.layer_rope(0)], batch, packed)
        else:  # layers differ: each runs with its own static window on its slice of the stack
            stacked = params["layers"]
            for i in range(c.num_hidden_layers):
                layer = self._layer(i, None, parent=None)  # unbound: applied to layer i's slice
                carry, _ = layer.apply(
                    {"params": jax.tree.map(lambda a, i=i: a[i], stacked)},
                    carry,
                    i,
                    ropes[c.layer_rope(i)],
                    batch,
                    packed,
                )
        return self._head(embed, *carry, batch)

    def _head(self, embed, h, k, v, batch: StepBatch):
        c = self.config
        dt = jnp.dtype(c.dtype)
        norm = self.norm_class(c.rms_norm_eps, dt, name="norm")
        hidden = None
        if self.return_hidden_states:  # every row normed: the features of every token
            hidden = norm(h)  # [T, D]
            h = hidden[batch.logits_indices]  # [R, D]
        else:
            h = norm(h[batch.logits_indices])  # [R, D]
        if c.tie_word_embeddings and "lm_head" not in self.variables.get("params", {}):
            if isinstance(embed, nn.Embed):
                logits = embed.attend(h)
            else:  # the GGUF table [V, row_bytes] is the LM head's kernel in the file's layout
                fmt = format_in(self.variables["params"]["embed_tokens"], EMBEDDING)
                assert fmt is not None
                head = {fmt.data_leaf(): embed}
                logits = fmt.matmul(h, head, c.vocab_size, use_cpu_kernels())
        else:
            logits = dense(c.vocab_size, False, dt, "lm_head")(h)
        logits = logits.astype(jnp.float32)
        if c.final_logit_softcapping:
            cap = float(c.final_logit_softcapping)
            logits = cap * jnp.tanh(logits / cap)
        if hidden is not None:
            return KVCache(k, v), logits, hidden
        return KVCache(k, v), logits

    def _unroll(self, num_tokens: int) -> bool:
        if self.unroll_layers is not None:
            return self.unroll_layers
        env = os.environ.get(UNROLL_ENV, "").strip().lower()
        if env in ("0", "false", "no", "1", "true", "yes"):
            return env in ("1", "true", "yes")
        if env:
            raise ValueError(f"{UNROLL_ENV}={env!r}: use 1 (unrolled) or 0 (rolled scan)")
        return jax.default_backend() != "cpu" and num_tokens < UNROLL_MAX_TOKENS
