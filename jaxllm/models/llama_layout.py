"""The Llama family's parameter layout: leaf names, shapes, logical sharding axes, and the HF and
GGUF tensor names each leaf is read from.

Layers are stacked along a leading axis L and linear kernels are stored [in, out], the transpose
of HF's `nn.Linear.weight` [out, in] (the module that reads this layout is llama.py). The loaders
(jaxllm.model_loader) and jaxllm.parallel read it through `jaxllm.models.layout`.
"""

from __future__ import annotations

import re

from jaxllm.config import ModelConfig
from jaxllm.models.param_spec import ParamSpec


def param_layout(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter leaf of the Llama-family model for `config`, in a fixed order."""
    return decoder_param_layout(config)


# HF tensor name (suffix after "model.layers.{i}.") of each linear kernel, unfused
UNFUSED_LINEARS = {
    "q_proj": "self_attn.q_proj.weight",
    "k_proj": "self_attn.k_proj.weight",
    "v_proj": "self_attn.v_proj.weight",
    "gate_proj": "mlp.gate_proj.weight",
    "up_proj": "mlp.up_proj.weight",
}


def decoder_param_layout(
    config: ModelConfig,
    *,
    linears: dict[str, tuple[str, tuple[int, int] | None]] | None = None,
    extra_layer_norms: tuple[str, ...] = (),
    dense_mlp: bool = True,
) -> list[ParamSpec]:
    """The layout of a Llama-style decoder, shared by the families built on it.

    `linears`: q/k/v/gate/up projection -> (HF name suffix, rows of that tensor or None), for
    checkpoints that fuse them (default `UNFUSED_LINEARS`). `extra_layer_norms`: more per-layer
    norms, by module name (the HF name is `<name>.weight`; Gemma's sandwich norms).
    `dense_mlp` False leaves out the MLP's kernels (a mixture of experts has its own: moe_layout).
    """
    if config.mlp_bias:
        raise ValueError(f"mlp_bias=True is not supported by jaxllm's {config.architecture} model")
    L, D, V, F = (
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        config.intermediate_size,
    )
    Q = config.num_attention_heads * config.head_dim
    K = config.num_key_value_heads * config.head_dim
    names = {k: (v, None) for k, v in UNFUSED_LINEARS.items()} if linears is None else linears

    def layer(path, hf: str, shape, transpose: bool, rows=None) -> ParamSpec:
        return ParamSpec(
            ("layers",) + path, "model.layers.{i}." + hf, (L,) + shape, transpose, rows
        )

    def linear(module: str, proj: str, shape) -> ParamSpec:
        hf, rows = names[proj]
        return layer((module, proj, "kernel"), hf, shape, True, rows)

    specs = [
        ParamSpec(("embed_tokens", "embedding"), "model.embed_tokens.weight", (V, D), False),
        layer(("input_layernorm", "scale"), "input_layernorm.weight", (D,), False),
        linear("self_attn", "q_proj", (D, Q)),
        linear("self_attn", "k_proj", (D, K)),
        linear("self_attn", "v_proj", (D, K)),
        layer(("self_attn", "o_proj", "kernel"), "self_attn.o_proj.weight", (Q, D), True),
        layer(
            ("post_attention_layernorm", "scale"), "post_attention_layernorm.weight", (D,), False
        ),
        ParamSpec(("norm", "scale"), "model.norm.weight", (D,), False),
    ]
    if dense_mlp:
        specs[-1:-1] = [
            linear("mlp", "gate_proj", (D, F)),
            linear("mlp", "up_proj", (D, F)),
            layer(("mlp", "down_proj", "kernel"), "mlp.down_proj.weight", (F, D), True),
        ]
    specs += [layer((n, "scale"), f"{n}.weight", (D,), False) for n in extra_layer_norms]
    if config.qk_norm:  # one scale per head dim, shared by all heads
        for norm in ("q_norm", "k_norm"):
            specs.append(
                layer(
                    ("self_attn", norm, "scale"),
                    f"self_attn.{norm}.weight",
                    (config.head_dim,),
                    False,
                )
            )
    if config.attention_bias:
        for proj, width in (("q_proj", Q), ("k_proj", K), ("v_proj", K)):
            specs.append(
                layer(("self_attn", proj, "bias"), f"self_attn.{proj}.bias", (width,), False)
            )
    if not config.tie_word_embeddings:
        specs.append(ParamSpec(("lm_head", "kernel"), "lm_head.weight", (D, V), True))
    return specs


# parameter path -> logical axes, one per dimension; jaxllm.parallel.sharding_rules maps each
# logical name to a mesh axis:
# - q/k/v projections are split by output columns (heads), o_proj by input rows (heads): each
#   device computes attention for its own heads and XLA all-reduces o_proj's partial sums;
# - the MLP's gate/up are split by columns, down by rows (one all-reduce per MLP);
# - the embedding table and the LM head are split by vocabulary;
# - norms are replicated.
PARAM_LOGICAL_AXES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("embed_tokens", "embedding"): ("vocab", "embed"),
    ("layers", "input_layernorm", "scale"): ("layers", "embed"),
    ("layers", "self_attn", "q_proj", "kernel"): ("layers", "embed", "q_heads"),
    ("layers", "self_attn", "k_proj", "kernel"): ("layers", "embed", "kv_heads"),
    ("layers", "self_attn", "v_proj", "kernel"): ("layers", "embed", "kv_heads"),
    ("layers", "self_attn", "o_proj", "kernel"): ("layers", "q_heads", "embed"),
    ("layers", "self_attn", "q_proj", "bias"): ("layers", "q_heads"),
    ("layers", "self_attn", "k_proj", "bias"): ("layers", "kv_heads"),
    ("layers", "self_attn", "v_proj", "bias"): ("layers", "kv_heads"),
    ("layers", "post_attention_layernorm", "scale"): ("layers", "embed"),
    ("layers", "self_attn", "q_norm", "scale"): ("layers", "head_dim"),
    ("layers", "self_attn", "k_norm", "scale"): ("layers", "head_dim"),
    ("layers", "mlp", "gate_proj", "kernel"): ("layers", "embed", "mlp"),
    ("layers", "mlp", "up_proj", "kernel"): ("layers", "embed", "mlp"),
    ("layers", "mlp", "down_proj", "kernel"): ("layers", "mlp", "embed"),
    ("norm", "scale"): ("embed",),
    ("lm_head", "kernel"): ("embed", "vocab"),
}

# GGUF `general.architecture` -> (HF architecture, q/k rows permuted by llama.cpp's converter:
# it permutes `llama` models' q/k rows to match its interleaved RoPE; `qwen2` uses NeoX RoPE there)
GGUF_ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "llama": ("LlamaForCausalLM", True),
    "qwen2": ("Qwen2ForCausalLM", False),
}

# HF name (suffix after "model.layers.{i}.") -> GGUF name (suffix after "blk.{i}.")
GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GGUF_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_tensor_in(hf_name: str, layer_names: dict[str, str]) -> tuple[str, int | None]:
    """The GGUF tensor holding HF tensor `hf_name` under a family's per-layer name table, and the
    index into that tensor's leading axis where llama.cpp stacks several HF tensors into one (a
    mixture-of-experts layer's experts: table keys with "experts.{e}." name one expert of the
    stacked tensor); None where the HF tensor is the whole GGUF tensor. A KeyError for names GGUF
    does not have."""
    if hf_name in GGUF_GLOBAL_NAMES:
        return GGUF_GLOBAL_NAMES[hf_name], None
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    if m is None:
        raise KeyError(hf_name)
    suffix, expert = m.group(2), None
    e = re.fullmatch(r"(.+\.experts\.)(\d+)(\..+)", suffix)
    if e is not None:
        suffix, expert = e.group(1) + "{e}" + e.group(3), int(e.group(2))
    if suffix not in layer_names:
        raise KeyError(hf_name)
    return f"blk.{m.group(1)}.{layer_names[suffix]}", expert


def gguf_name_in(hf_name: str, layer_names: dict[str, str]) -> str:
    """The GGUF tensor name of HF tensor `hf_name` under a family's per-layer name table (for one
    expert's tensor, the stacked tensor holding it: `gguf_tensor_in`); a KeyError for names GGUF
    does not have."""
    return gguf_tensor_in(hf_name, layer_names)[0]


def gguf_names_in(config: ModelConfig, layer_names: dict[str, str]) -> set[str]:
    """Every GGUF tensor name a file may hold for `config` under a family's per-layer name table
    (optional ones, such as biases and the untied output, included)."""
    layers = {f"blk.{i}.{s}" for i in range(config.num_hidden_layers) for s in layer_names.values()}
    return set(GGUF_GLOBAL_NAMES.values()) | layers


def hf_to_gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of HF tensor `hf_name` (a KeyError for names GGUF does not have)."""
    return gguf_name_in(hf_name, GGUF_LAYER_NAMES)


def gguf_tensor_names(config: ModelConfig) -> set[str]:
    """Every GGUF tensor name a Llama-family file may hold for `config`."""
    return gguf_names_in(config, GGUF_LAYER_NAMES)
