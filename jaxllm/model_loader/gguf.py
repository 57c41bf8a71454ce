"""Load a GGUF file (llama.cpp's format) into jaxllm's parameter pytree.

Metadata becomes an HF-style config dict (then `ModelConfig`); tensors are dequantized with the
`gguf` package, renamed to HF names and handed to the shared assembler in hf.py. The GGUF
architecture and tensor names are the model's (its layout, `jaxllm.models.layout`).

Three things differ from an HF checkpoint:
- GGUF lists shapes fastest-dimension first (ne[0] is the input width); numpy order is the reverse,
  which is HF's [out, in].
- llama.cpp's converter permutes the rows of q/k projections of `llama` models so that its
  interleaved (GPT-J) RoPE matches; jaxllm uses HF's rotate-half RoPE, so those rows are put back.
  `qwen2` models use NeoX RoPE in llama.cpp and are stored unpermuted.
- Mixture-of-experts layers hold each projection's experts in one tensor per layer ([E, out, in]
  in numpy order); the layout maps each HF expert tensor to its slice (`hf_to_gguf_tensor`), and
  each stacked tensor is dequantized once. Expert weights, the router and the shared expert's gate
  are dequantized at load (there is no quantized expert format yet).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import jax
import numpy as np

from jaxllm.config import FULL, SLIDING, QuantizationConfig
from jaxllm.model_loader.gguf_reader import open_gguf
from jaxllm.model_loader.gguf_tokenizer import load_gguf_tokenizer
from jaxllm.model_loader.hf import assemble_params, config_from_hf
from jaxllm.model_loader.loaded_model import LoadedModel
from jaxllm.models.layout import gguf_architectures, layout_of, param_layout
from jaxllm.models.param_spec import set_path
from jaxllm.models.registry import check_architecture, hf_model_type
from jaxllm.quantization.gguf_blocks import GGUF_BLOCKS
from jaxllm.quantization.layout import quantized_leaves

logger = logging.getLogger(__name__)

SUPPORTED_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)

_ROPE_FREQS = "rope_freqs.weight"  # llama 3.x rope scaling factors, one per frequency


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation. w: [n_heads * Dh, ...] (weight rows or bias)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _auto_dtype(tensors: dict[str, Any]) -> str:
    """float32 for quantized files; float16/bfloat16 for files whose matrices are all F16/BF16."""
    kinds = {t.tensor_type.name for t in tensors.values() if len(t.shape) >= 2}
    if kinds == {"F16"}:
        return "float16"
    if kinds == {"BF16"}:
        return "bfloat16"
    return "float32"


def llama3_rope_factors(
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
    head_dim: int,
    theta: float,
) -> np.ndarray:
    """The per-frequency divisors llama 3 rope scaling applies (what rope_freqs.weight stores)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    mid = 1.0 / ((1.0 - smooth) / factor + smooth)
    low_wavelen = original_max_position_embeddings / low_freq_factor
    high_wavelen = original_max_position_embeddings / high_freq_factor
    return np.where(wavelen < high_wavelen, 1.0, np.where(wavelen > low_wavelen, factor, mid))


def _rope_scaling(
    reader: Any, arch: str, tensors: dict[str, Any], head_dim: int, theta: float, path: str
) -> dict | None:
    kind = _field(reader, f"{arch}.rope.scaling.type")
    if kind is not None and kind != "none":
        if kind != "linear":
            raise ValueError(
                f"{path}: rope scaling type {kind!r} is not supported (linear, llama3)"
            )
        return {
            "rope_type": "linear",
            "factor": float(_field(reader, f"{arch}.rope.scaling.factor")),
        }
    if _ROPE_FREQS not in tensors:
        return None
    from gguf.quants import dequantize

    t = tensors[_ROPE_FREQS]
    freqs = dequantize(t.data, t.tensor_type).reshape(-1).astype(np.float64)
    # llama.cpp stores only the factors; recover llama 3's parameters (its defaults) from them.
    guess = {
        "rope_type": "llama3",
        "factor": float(freqs.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    expect = llama3_rope_factors(guess["factor"], 1.0, 4.0, 8192, head_dim, theta)
    if expect.shape == freqs.shape and np.allclose(expect, freqs, rtol=1e-4):
        return guess
    raise ValueError(
        f"{path}: {_ROPE_FREQS} holds rope factors that do not match llama 3 "
        "scaling with its usual parameters; not supported"
    )


def _gemma3_fields(hf: dict, meta: Callable[[str], Any]) -> None:
    """Gemma 3 text. llama.cpp's file stores the window but not what every Gemma 3 shares, which
    transformers takes from `Gemma3TextConfig`'s defaults: GeGLU with tanh-GELU, the local rope
    base 10000 of sliding layers, every 6th layer global, no logit soft-capping."""
    hf["model_type"] = "gemma3_text"
    del hf["hidden_act"]
    hf["hidden_activation"] = "gelu_pytorch_tanh"
    n_layers = hf["num_hidden_layers"]
    pattern = meta("attention.sliding_window_pattern")
    if isinstance(pattern, list):  # per layer: True = sliding
        sliding = [bool(p) for p in pattern]
    else:
        every = int(pattern or 6)
        sliding = [(i + 1) % every != 0 for i in range(n_layers)]
    hf["sliding_window"] = int(meta("attention.sliding_window") or 4096)
    hf["layer_types"] = [SLIDING if s else FULL for s in sliding]
    hf["rope_local_base_freq"] = float(meta("rope.freq_base_swa") or 10000.0)
    scale = meta("attention.scale")
    if scale is not None:
        hf["query_pre_attn_scalar"] = float(scale) ** -2
    elif n_layers == 62:  # Gemma 3 27B scales by hidden / heads (168), the others by head_dim
        hf["query_pre_attn_scalar"] = hf["hidden_size"] // hf["num_attention_heads"]
    else:
        hf["query_pre_attn_scalar"] = hf["head_dim"]
    hf["final_logit_softcapping"] = meta("final_logit_softcapping")
    hf["attn_logit_softcapping"] = meta("attn_logit_softcapping")


# GGUF architecture -> what it sets beyond the fields every architecture shares (llama and qwen2
# need nothing more). Each takes the shared dict and a reader of `{arch}.KEY` metadata (None where
# absent) and updates the dict in place.
ARCH_FIELDS: dict[str, Callable[[dict, Callable[[str], Any]], None]] = {
    "gemma3": _gemma3_fields,
}

# Whether the top-k routing weights are renormalized, by HF model type, where a file does not say
# (`{arch}.expert_weights_norm`, which only newer llama.cpp files carry): Qwen3-MoE's released
# models renormalize (norm_topk_prob true), Qwen1.5/Qwen2-MoE's do not. (Mixtral always does:
# ModelConfig ignores the field for it.)
_NORM_TOPK_DEFAULT = {"qwen3_moe": True, "qwen2_moe": False}


def _expert_fields(hf: dict, llm: Callable[[str], Any], path: str) -> None:
    """The mixture-of-experts fields of a file with experts, as HF configs name them (ModelConfig
    reads them by model type). `llm(key)` reads a gguf.constants `Keys.LLM` key (None where
    absent)."""
    from gguf.constants import ExpertGatingFuncType, Keys

    def need(key: str) -> Any:
        v = llm(key)
        if v is None:
            raise ValueError(f"{path}: GGUF metadata of a mixture-of-experts model lacks {key}")
        return v

    gating = llm(Keys.LLM.EXPERT_GATING_FUNC)
    if gating is not None and int(gating) != ExpertGatingFuncType.SOFTMAX:
        raise ValueError(
            f"{path}: expert gating function {gating} is not supported (jaxllm routes by "
            f"softmax, {int(ExpertGatingFuncType.SOFTMAX)})"
        )
    hf["num_experts"] = int(need(Keys.LLM.EXPERT_COUNT))
    hf["num_experts_per_tok"] = int(need(Keys.LLM.EXPERT_USED_COUNT))
    # each expert's width (Qwen); Mixtral's (a `llama` file) is feed_forward_length
    hf["moe_intermediate_size"] = int(
        llm(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH) or hf["intermediate_size"]
    )
    hf["shared_expert_intermediate_size"] = int(
        llm(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH) or 0
    )
    norm = llm(Keys.LLM.EXPERT_WEIGHTS_NORM)
    default = _NORM_TOPK_DEFAULT.get(hf["model_type"], True)
    hf["norm_topk_prob"] = default if norm is None else bool(norm)


def gguf_to_hf_config(reader: Any, path: str) -> dict:
    """An HF `config.json`-style dict from GGUF metadata: the fields llama-style files share, then
    the architecture's own (ARCH_FIELDS)."""
    from gguf.constants import Keys

    archs = gguf_architectures()
    arch = _field(reader, "general.architecture")
    if arch not in archs:
        check_architecture(str(arch), path)  # raises, naming the supported architectures
        raise ValueError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: {sorted(archs)}"
        )
    tensors = {t.name: t for t in reader.tensors}

    def meta(key: str) -> Any:
        return _field(reader, f"{arch}.{key}")

    def llm(key: str) -> Any:  # a gguf.constants Keys.LLM key, "{arch}.NAME"
        return _field(reader, key.format(arch=arch))

    def need(key: str) -> Any:
        v = meta(key)
        if v is None:
            raise ValueError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return v

    n_heads = int(need("attention.head_count"))
    n_kv = _field(reader, f"{arch}.attention.head_count_kv", n_heads)
    if isinstance(n_kv, list):  # per-layer list in some files
        if len(set(n_kv)) != 1:
            raise ValueError(f"{path}: per-layer KV head counts {n_kv} are not supported")
        n_kv = n_kv[0]
    hidden = int(need("embedding_length"))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // n_heads))
    value_dim = meta("attention.value_length")
    if value_dim is not None and int(value_dim) != head_dim:
        raise ValueError(
            f"{path}: value head dim {value_dim} differs from key head dim {head_dim}; "
            "not supported"
        )
    rope_dim = meta("rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise ValueError(
            f"{path}: partial rotary embeddings (rope dim {rope_dim} of head dim "
            f"{head_dim}) are not supported"
        )
    theta = float(_field(reader, f"{arch}.rope.freq_base", 10000.0))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = meta("vocab_size") or (len(tokens.data) if tokens else None)
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise ValueError(f"{path}: GGUF file has no token_embd.weight tensor")
    if vocab is None or int(vocab) != int(emb.shape[-1]):
        vocab = int(emb.shape[-1])  # the embedding's row count is what the weights need
    eos = [
        int(x)
        for x in (
            _field(reader, "tokenizer.ggml.eos_token_id"),
            _field(reader, "tokenizer.ggml.eot_token_id"),
        )
        if x is not None
    ]
    eos = list(dict.fromkeys(eos))
    experts = int(llm(Keys.LLM.EXPERT_COUNT) or 0)
    hf_arch = gguf_architectures(experts=experts > 0)[arch][0]
    hf: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": hf_model_type(hf_arch),
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(n_kv),
        "head_dim": head_dim,
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 4096)),
        "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": theta,
        "rope_scaling": _rope_scaling(reader, arch, tensors, head_dim, theta, path),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "hidden_act": "silu",
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "torch_dtype": _auto_dtype(tensors),
    }
    if experts:
        _expert_fields(hf, llm, path)
    if arch in ARCH_FIELDS:
        ARCH_FIELDS[arch](hf, meta)
    return hf


def _place_blocks(spec, kind, config, tensors, layout, permuted, params, place) -> None:
    """Put the GGUF blocks of one float leaf (every layer's, stacked) into `params` as its
    quantized leaf [(L,) N, row_bytes] uint8 (q/k rows unpermuted like the float path)."""
    ((leaf_path, shape, _, _),) = quantized_leaves(spec.path, spec.shape, None, kind)
    buf = np.empty(shape, np.uint8)
    layers = range(config.num_hidden_layers) if spec.stacked else [None]
    for i, layer in enumerate(layers):
        name = layout.hf_to_gguf_name(spec.hf_name.format(i=layer))
        rows = np.asarray(tensors[name].data)
        if permuted and ".attn_q." in name:
            rows = unpermute_qk(rows, config.num_attention_heads)
        elif permuted and ".attn_k." in name:
            rows = unpermute_qk(rows, config.num_key_value_heads)
        if spec.hf_rows is not None:
            rows = rows[spec.hf_rows[0] : spec.hf_rows[1]]
        want = shape[len(shape) - 2 :]
        if rows.shape != want:
            raise ValueError(f"{name}: {kind} blocks of shape {rows.shape}, expected {want}")
        buf[i if spec.stacked else ...] = rows
    array = jax.device_put(buf) if place is None else place(SimpleNamespace(path=leaf_path), buf)
    set_path(params, leaf_path, array)


def _check_types(tensors: dict[str, Any], path: str) -> None:
    for name, t in tensors.items():
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise ValueError(
                f"{path}: tensor {name!r} has GGML type {t.tensor_type.name}, which jaxllm cannot "
                f"dequantize; supported types: {', '.join(SUPPORTED_TYPES)}"
            )


# A mixture-of-experts layer's router and its shared expert's gate: small, and kept in float
# (jaxllm/layers/moe.py)
_MOE_GATES = (("mlp", "gate", "kernel"), ("mlp", "shared_expert_gate", "kernel"))


def kept_formats(config, tensors: dict[str, Any], layout: Any) -> dict[tuple[str, ...], str]:
    """Float leaf path -> GGUF block type, for the linear kernels and the embedding whose tensors
    (every layer's, for stacked leaves) share one type that jaxllm multiplies packed
    (jaxllm.quantization.gguf_blocks); the other leaves are dequantized at load, as are a MoE
    layer's experts (no quantized expert format yet), its router and shared-expert gate."""
    out = {}
    for spec in param_layout(config):
        if not (spec.transpose or spec.path == ("embed_tokens", "embedding")):
            continue
        if spec.per_expert or spec.path[-3:] in _MOE_GATES:
            continue
        layers = range(config.num_hidden_layers) if spec.stacked else [None]
        names = [layout.hf_to_gguf_name(spec.hf_name.format(i=i)) for i in layers]
        types = {tensors[n].tensor_type.name.lower() for n in names if n in tensors}
        if len(types) == 1 and (kind := types.pop()) in GGUF_BLOCKS:
            out[spec.path] = kind
    return out


def load_gguf(
    path: str,
    dtype: str | None = None,
    tokenizer: bool = True,
    placer=None,
    keep_quantized: bool = True,
):
    """Load a GGUF file; dtype None means float32 (or F16/BF16 for unquantized files).

    `keep_quantized`: linear kernels and the embedding in Q8_0, Q4_0, Q4_1, Q4_K or Q6_K stay
    in their GGUF blocks on the device (`config.quantization` says which: method "gguf"); the
    other tensors, and all of them when False, are dequantized to `dtype`.
    `placer`: see `hf.assemble_params` (None: each leaf to the default device)."""
    from gguf.quants import dequantize

    path = os.path.abspath(path)
    reader = open_gguf(path)
    hf = gguf_to_hf_config(reader, path)
    config = config_from_hf(hf, dtype or hf["torch_dtype"], path)
    tensors = {t.name: t for t in reader.tensors}
    _check_types(tensors, path)
    archs = gguf_architectures(experts=config.is_moe)
    permuted = archs[_field(reader, "general.architecture")][1]
    layout = layout_of(config)
    from_gguf = getattr(layout, "from_gguf_tensor", None)
    to_gguf = getattr(layout, "hf_to_gguf_tensor", None)

    known = {_ROPE_FREQS} | layout.gguf_tensor_names(config)
    unexpected = sorted(set(tensors) - known)
    if unexpected:
        raise ValueError(
            f"{path}: GGUF tensors jaxllm's layout has no place for: "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )

    def read(name: str) -> np.ndarray:  # one GGUF tensor, dequantized, in numpy order
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"{path}: GGUF file is missing tensor {name!r}")
        try:
            w = dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise ValueError(
                f"{path}: cannot dequantize tensor {name!r} ({t.tensor_type.name}): {e}"
            ) from e
        return w.reshape(tuple(int(n) for n in reversed(t.shape)))  # GGUF ne order -> numpy

    # The stacked expert tensor read last, dequantized: a leaf's tensors are read layer by layer,
    # expert by expert (ParamSpec.hf_tensors), so each stacked tensor is dequantized once.
    stacked: dict[str, np.ndarray] = {}

    def read_expert(name: str, expert: int) -> np.ndarray:
        if name not in stacked:
            stacked.clear()
            w = read(name)
            if w.ndim < 1 or w.shape[0] != config.num_experts:
                raise ValueError(
                    f"{path}: tensor {name!r} has shape {w.shape}, expected "
                    f"{config.num_experts} experts (the file's expert_count) on its first axis"
                )
            stacked[name] = w
        return stacked[name][expert]

    def get_tensor(hf_name: str) -> np.ndarray:
        name, expert = to_gguf(hf_name) if to_gguf else (layout.hf_to_gguf_name(hf_name), None)
        w = read(name) if expert is None else read_expert(name, expert)
        if permuted and ".attn_q." in name:
            w = unpermute_qk(w, config.num_attention_heads)
        elif permuted and ".attn_k." in name:
            w = unpermute_qk(w, config.num_key_value_heads)
        if from_gguf is not None:  # the model's own convention (Gemma's norms store 1 + w)
            w = from_gguf(hf_name, w)
        return w

    kept = kept_formats(config, tensors, layout) if keep_quantized else {}
    params = assemble_params(config, get_tensor, path, placer, skip=frozenset(kept))
    stacked.clear()
    if kept:
        qconfig = QuantizationConfig("gguf", tuple(sorted(kept.items())))
        config = config.replace(quantization=qconfig)
        place = placer(config) if placer is not None else None
        for spec in param_layout(config):
            if spec.path in kept:
                _place_blocks(
                    spec, kept[spec.path], config, tensors, layout, permuted, params, place
                )

    chat_template = _field(reader, "tokenizer.chat_template")
    tok = None
    if tokenizer:
        tok, _ = load_gguf_tokenizer(path, reader)  # torch-free; same as AutoTokenizer's
        if chat_template and not getattr(tok, "chat_template", None):
            tok.chat_template = chat_template
    generation_config = {k: hf[k] for k in ("bos_token_id", "eos_token_id") if hf[k] is not None}
    pad = _field(reader, "tokenizer.ggml.padding_token_id")
    if pad is not None:
        generation_config["pad_token_id"] = int(pad)
    return LoadedModel(
        config=config,
        params=params,
        tokenizer=tok,
        generation_config=generation_config,
        source=path,
        chat_template=chat_template or getattr(tok, "chat_template", None),
        format="gguf",
    )
