"""`dummy:NAME` models: real architectures' shapes with random weights, for benchmarks and tests.

Like vLLM's `--load-format dummy`. The weights are drawn on the device inside one jitted function
(one PRNG key per leaf, normal * 0.02, RMSNorm scales 1) in the target dtype, so nothing of model
size ever exists on the host. The keys use the `unsafe_rbg` generator: statistical quality does not
matter for dummy weights, and it compiles several times faster than threefry.

With a mesh (tensor parallelism) the same function is jitted with the params' shardings as outputs
(KV heads repeated inside it where there are fewer than devices), so each device draws only its
shards (tests/parallel checks, on the CPU, that the values equal the unsharded draw's).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.model_loader.loaded_model import LoadedModel
from jaxllm.models.layout import param_shapes

# HF config.json fields of the real checkpoints (weights are random).
PRESETS: dict[str, dict[str, Any]] = {
    "llama-3-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    },
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": True,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    },
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
    "qwen3-8b": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    "qwen3-0.6b": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": 151936,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    # the text decoder of gemma-3-12b-it (Gemma3ForConditionalGeneration's text_config)
    "gemma-3-12b": {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": 262208,
        "hidden_size": 3840,
        "intermediate_size": 15360,
        "num_hidden_layers": 48,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256,
        "sliding_window": 1024,
        "sliding_window_pattern": 6,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "tie_word_embeddings": True,
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
    },
    "gemma-3-270m": {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": 262144,
        "hidden_size": 640,
        "intermediate_size": 2048,
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
    },
    "phi-3-mini-4k": {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "sliding_window": 2047,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 32000,
    },
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "mixtral-8x7b": {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "qwen3-30b-a3b": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    "tiny": {  # for tests: untied, GQA 2:1
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
}


def dummy_config(name: str, dtype: str | None = None) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown dummy model {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return ModelConfig.from_hf_dict(PRESETS[name], dtype or "float32")


def _init_fn(config: ModelConfig):
    """A function key -> params whose leaves are drawn in config.dtype (to jit or eval_shape)."""
    shapes = param_shapes(config)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)

    def init(key: jax.Array) -> dict:
        keys = jax.random.split(key, len(paths_leaves))
        leaves = []
        for k, (path, s) in zip(keys, paths_leaves):
            if path[-1].key == "scale":  # RMSNorm
                leaves.append(jnp.ones(s.shape, s.dtype))
            else:
                leaves.append(jax.random.normal(k, s.shape, s.dtype) * jnp.asarray(0.02, s.dtype))
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return init


_RNG_IMPL = "unsafe_rbg"


@functools.lru_cache(maxsize=8)
def _jitted_init(config: ModelConfig):
    return jax.jit(_init_fn(config))


def init_dummy_params(
    config: ModelConfig, seed: int = 0, shardings: Any = None, mesh: Any = None
) -> dict:
    """Random params for `config`, created on the device (optionally with output `shardings`).

    With a `mesh`: created in their tensor-parallel shardings, laid out for the tp-way config
    (`jaxllm.parallel.tp_model_config(config, tp)`; KV heads repeated where fewer than devices).
    """
    key = jax.random.key(seed, impl=_RNG_IMPL)
    if mesh is not None:
        from jaxllm.parallel import (
            expand_kv_heads,
            kv_head_replicas,
            model_axis_size,
            param_shardings,
            tp_model_config,
        )

        tp = model_axis_size(mesh)
        r = kv_head_replicas(config, tp)
        init_fn = _init_fn(config)
        sharded = jax.jit(
            lambda k: expand_kv_heads(init_fn(k), config, r, xp=jnp),
            out_shardings=param_shardings(tp_model_config(config, tp), mesh),
        )
        return sharded(key)
    init = (
        _jitted_init(config)
        if shardings is None
        else jax.jit(_init_fn(config), out_shardings=shardings)
    )
    return init(key)


def dummy_param_shapes(config: ModelConfig) -> dict:
    """What `init_dummy_params` would return, as ShapeDtypeStructs (allocates nothing)."""
    return jax.eval_shape(_init_fn(config), jax.random.key(0, impl=_RNG_IMPL))


def load_dummy(
    name: str,
    dtype: str | None = None,
    seed: int = 0,
    mesh: Any = None,
    expert_parallel: bool = False,
):
    """A LoadedModel with random weights of preset `name`; no tokenizer. With a `mesh`, the
    params are created sharded and `config` is the tp-way config they are laid out for (whole
    experts split over it with `expert_parallel`, for mixture-of-experts presets)."""
    config = dummy_config(name, dtype)
    if expert_parallel and config.is_moe and mesh is not None:
        config = config.replace(expert_parallel=True)
    params = init_dummy_params(config, seed, mesh=mesh)
    if mesh is not None:
        from jaxllm.parallel import model_axis_size, tp_model_config

        config = tp_model_config(config, model_axis_size(mesh))
    eos = list(config.eos_token_ids)
    generation_config = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
    }
    return LoadedModel(
        config=config,
        params=params,
        tokenizer=None,
        generation_config=generation_config,
        source=f"dummy:{name}",
        chat_template=None,
        format="dummy",
    )
