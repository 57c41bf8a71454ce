"""jaxllm's converted-model folder: an orbax checkpoint of the params plus HF-style metadata.

Layout of OUT_DIR:
    params/                  orbax checkpoint of the stacked parameter pytree
    config.json              HF-style config (`ModelConfig.from_hf_dict` reads it back)
    generation_config.json
    tokenizer files          `tokenizer.save_pretrained` (chat template included), if any
    jaxllm_converted.json    marker: format, version, dtype, source, chat template

Loading restores the arrays straight onto the device from the abstract pytree the config implies.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax

from jaxllm.config import FULL, SLIDING, ModelConfig
from jaxllm.model_loader.hf import (
    config_from_hf,
    load_tokenizer,
    read_generation_config,
    read_hf_config,
)
from jaxllm.model_loader.loaded_model import LoadedModel
from jaxllm.models.layout import param_shapes
from jaxllm.models.registry import hf_model_type
from jaxllm.rope_config import rope_scaling_to_hf

MARKER = "jaxllm_converted.json"
FORMAT = "jaxllm-orbax"
VERSION = 1


def is_converted_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def config_to_hf_dict(config: ModelConfig) -> dict:
    """An HF `config.json` dict that `ModelConfig.from_hf_dict` maps back to `config`."""
    eos = list(config.eos_token_ids)
    hf: dict[str, Any] = {
        "architectures": [config.architecture],
        "model_type": hf_model_type(config.architecture),
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "mlp_bias": config.mlp_bias,
        "hidden_act": config.hidden_act,
        "sliding_window": config.sliding_window,
        "use_sliding_window": config.sliding_window is not None,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "torch_dtype": config.dtype,
    }
    if config.rope_scaling is not None:
        hf["rope_scaling"] = rope_scaling_to_hf(config.rope_scaling)
    if config.partial_rotary_factor != 1.0:
        hf["partial_rotary_factor"] = config.partial_rotary_factor
    if config.layer_types:
        hf["layer_types"] = list(config.layer_types)
        full = {"rope_theta": config.rope_theta, "rope_type": "default"}
        full.update(rope_scaling_to_hf(config.rope_scaling) if config.rope_scaling else {})
        local = {"rope_theta": config.local_rope_theta or config.rope_theta, "rope_type": "default"}
        local.update(
            rope_scaling_to_hf(config.local_rope_scaling) if config.local_rope_scaling else {}
        )
        hf["rope_parameters"] = {FULL: full, SLIDING: local}
    if config.is_moe:  # both spellings of the expert count (Mixtral's and Qwen's)
        hf["num_local_experts"] = hf["num_experts"] = config.num_experts
        hf["num_experts_per_tok"] = config.num_experts_per_tok
        hf["moe_intermediate_size"] = config.moe_intermediate_size
        hf["norm_topk_prob"] = config.norm_topk_prob
        hf["shared_expert_intermediate_size"] = config.shared_expert_intermediate_size
    for name in ("query_pre_attn_scalar", "final_logit_softcapping"):
        if getattr(config, name) is not None:
            hf[name] = getattr(config, name)
    return hf


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def save_converted(loaded: Any, out_dir: str, *, overwrite: bool = False) -> str:
    """Write `loaded` (a LoadedModel) as a converted folder; returns its absolute path."""
    import orbax.checkpoint as ocp

    if loaded.config.quantization is not None:
        raise ValueError(
            f"a converted folder holds float weights; {loaded.source} is quantized "
            f"({loaded.config.quantization.method}): dequantize it first "
            "(jaxllm.quantization.layout.dequantize_params), as `jaxllm convert` does"
        )
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        if not (overwrite and is_converted_folder(out_dir)):
            raise ValueError(
                f"{out_dir}: output folder exists and is not empty "
                "(overwrite replaces only an earlier jaxllm converted folder)"
            )
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(out_dir, "params"), loaded.params)
    _write_json(os.path.join(out_dir, "config.json"), config_to_hf_dict(loaded.config))
    _write_json(os.path.join(out_dir, "generation_config.json"), loaded.generation_config)
    if loaded.tokenizer is not None:
        if loaded.chat_template and not getattr(loaded.tokenizer, "chat_template", None):
            loaded.tokenizer.chat_template = loaded.chat_template
        loaded.tokenizer.save_pretrained(out_dir)
    # The marker goes last: its presence means the folder is complete.
    _write_json(
        os.path.join(out_dir, MARKER),
        {
            "format": FORMAT,
            "version": VERSION,
            "dtype": loaded.config.dtype,
            "source": loaded.source,
            "chat_template": loaded.chat_template,
            "has_tokenizer": loaded.tokenizer is not None,
        },
    )
    return out_dir


def load_converted(
    folder: str, dtype: str | None = None, tokenizer: bool = True, shardings: Any = None
):
    """Load a converted folder; dtype None keeps the saved dtype. Returns a LoadedModel.

    `shardings` (a pytree of jax.sharding.Sharding matching the params, or a function of the
    saved ModelConfig returning one) places the restored arrays, each device reading only its
    shards; by default they land on the default device.
    """
    import orbax.checkpoint as ocp

    folder = os.path.abspath(folder)
    marker_path = os.path.join(folder, MARKER)
    try:
        with open(marker_path) as f:
            marker = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{marker_path}: cannot read the jaxllm marker file: {e}") from e
    if marker.get("format") != FORMAT or marker.get("version") != VERSION:
        raise ValueError(
            f"{marker_path}: unknown converted format {marker.get('format')!r} "
            f"version {marker.get('version')!r} (expected {FORMAT!r} {VERSION})"
        )
    saved_dtype = marker["dtype"]
    config = config_from_hf(
        read_hf_config(folder), saved_dtype, os.path.join(folder, "config.json")
    )

    target = param_shapes(config)
    if callable(shardings):
        shardings = shardings(config)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), target
        )
    else:
        target = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), target, shardings
        )
    try:
        with ocp.StandardCheckpointer() as ckpt:
            params = ckpt.restore(os.path.join(folder, "params"), target)
    except Exception as e:
        raise ValueError(f"{folder}: cannot restore the orbax params checkpoint: {e}") from e
    if dtype and dtype != saved_dtype:
        params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p))(params)
        config = config.replace(dtype=dtype)

    tok = load_tokenizer(folder) if tokenizer and marker.get("has_tokenizer", True) else None
    chat_template = marker.get("chat_template") or getattr(tok, "chat_template", None)
    if tok is not None and chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = chat_template
    return LoadedModel(
        config=config,
        params=params,
        tokenizer=tok,
        generation_config=read_generation_config(folder),
        source=folder,
        chat_template=chat_template,
        format="orbax",
    )
