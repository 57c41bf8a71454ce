"""Frozen configuration records shared by the whole engine.

`ModelConfig` describes a decoder-only model (what the Flax model, the loaders and the KV cache
need). `CacheConfig`, `SchedulerConfig`, `ParallelConfig` and `EngineConfig` hold the engine's knobs
with vLLM's names. None of these import JAX, so the host side can use them freely.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# RopeScaling is re-exported (`as`): the rope record is part of the model config
from jaxllm.rope_config import RopeScaling as RopeScaling
from jaxllm.rope_config import rope_scaling_from_hf

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class QuantizationConfig:
    """How a model's weights are stored when not in `ModelConfig.dtype` (jaxllm.quantization).

    `method` is the user-facing name (`int8`, `fp8`, `gguf`); `formats` maps the path of each
    stored-quantized float leaf of the model's layout (a linear `.../kernel` [in, out], or
    `embed_tokens/embedding` [V, D]) to its storage format (`int8`, `fp8`, or a GGUF block type
    such as `q4_1`). Leaves not listed stay in `ModelConfig.dtype`.
    """

    method: str
    formats: tuple[tuple[tuple[str, ...], str], ...] = ()

    def format_of(self, path: tuple[str, ...]) -> str | None:
        return dict(self.formats).get(tuple(path))


# HF activation names the MLP computes: silu; GELU exact (erf) or with the tanh approximation.
HIDDEN_ACTS = ("silu", "gelu", "gelu_pytorch_tanh", "gelu_new")
SLIDING, FULL = "sliding_attention", "full_attention"  # HF `layer_types` entries


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only model (the fields each architecture reads).

    Per-layer attention: with `layer_types` empty every layer attends alike (within
    `sliding_window` when set: Mistral). With `layer_types` (HF's list of "sliding_attention" /
    "full_attention"), sliding layers attend within `sliding_window` and rotate with
    `local_rope_theta` / `local_rope_scaling` where set (Gemma 3), full layers attend to the whole
    context with `rope_theta` / `rope_scaling`.
    """

    architecture: str  # HF `architectures[0]`, e.g. "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    partial_rotary_factor: float = 1.0  # the leading fraction of head_dim that rotates (Phi)
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    mlp_bias: bool = False
    hidden_act: str = "silu"  # one of HIDDEN_ACTS
    sliding_window: int | None = None  # None means full attention
    layer_types: tuple[str, ...] = ()  # per layer SLIDING or FULL; empty: all layers alike
    local_rope_theta: float | None = None  # sliding layers' rope base, when it differs
    local_rope_scaling: RopeScaling | None = None
    qk_norm: bool = False  # per-head RMSNorm of q and k before the rotation (Qwen3, Gemma 3)
    query_pre_attn_scalar: float | None = None  # attention scale is this ** -0.5 (Gemma)
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    dtype: str = "float32"  # compute/parameter dtype
    quantization: QuantizationConfig | None = None  # quantized weight storage (None: all dtype)
    # Per-tensor scales of an fp8 KV cache (CacheConfig.kv_cache_dtype "fp8"): its pages hold
    # K / k_scale and V / v_scale. A checkpoint's calibrated values, else 1.0; static (a change
    # recompiles the step); float caches ignore them.
    k_scale: float = 1.0
    v_scale: float = 1.0
    # Sparse mixture of experts (Mixtral, Qwen3-MoE, Qwen2-MoE): every layer's MLP is
    # `num_experts` experts of width `moe_intermediate_size`, each token routed to the top
    # `num_experts_per_tok` of them by softmax probability (renormalized to sum to one when
    # `norm_topk_prob`), plus a sigmoid-gated shared expert of width
    # `shared_expert_intermediate_size` where that is > 0 (Qwen2-MoE). 0 experts: a dense MLP.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    shared_expert_intermediate_size: int = 0
    # Under tensor parallelism, split the experts over the 'model' devices (whole experts per
    # device) instead of each expert's width (`enable_expert_parallel`); the model runs it.
    expert_parallel: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        for name in ("k_scale", "v_scale"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (ok and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive finite float, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported ({', '.join(HIDDEN_ACTS)})"
            )
        if self.layer_types:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ValueError(
                    f"layer_types has {len(self.layer_types)} entries for "
                    f"{self.num_hidden_layers} layers"
                )
            bad = sorted(set(self.layer_types) - {SLIDING, FULL})
            if bad:
                raise ValueError(f"layer_types {bad} are not supported ({SLIDING}, {FULL})")
        rotary = self.head_dim * self.partial_rotary_factor
        if not 0 < self.partial_rotary_factor <= 1 or rotary != int(rotary) or int(rotary) % 2:
            raise ValueError(
                f"partial_rotary_factor {self.partial_rotary_factor} must give an even rotary "
                f"width of at most head_dim ({self.head_dim})"
            )

        if self.num_experts:
            k, e = self.num_experts_per_tok, self.num_experts
            if not 0 < k <= e:
                raise ValueError(f"num_experts_per_tok ({k}) must be in 1..num_experts ({e})")
            if self.moe_intermediate_size <= 0:
                raise ValueError("a mixture-of-experts config needs moe_intermediate_size > 0")

    @property
    def is_moe(self) -> bool:
        """Is every layer's MLP a sparse mixture of experts?"""
        return self.num_experts > 0

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def rotary_dim(self) -> int:
        """How many leading dims of each head rotate (head_dim unless partial_rotary_factor)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def sm_scale(self) -> float:
        """The attention score scale: query_pre_attn_scalar ** -0.5 where set, else head_dim's."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def is_sliding_layer(self, layer: int) -> bool:
        """Does `layer` attend within `sliding_window` (and rotate with the local rope)?"""
        if self.sliding_window is None:
            return False
        return not self.layer_types or self.layer_types[layer] == SLIDING

    @property
    def uniform_sliding_window(self) -> int | None:
        """The window when every layer attends within it (Mistral, Phi-3), else None (Gemma 3's
        global layers read the whole context)."""
        if self.sliding_window is None or any(
            not self.is_sliding_layer(i) for i in range(self.num_hidden_layers)
        ):
            return None
        return self.sliding_window

    def layer_window(self, layer: int) -> int | None:
        """The attention window of `layer` (None: the whole context)."""
        return self.sliding_window if self.is_sliding_layer(layer) else None

    def layer_rope(self, layer: int) -> tuple[float, RopeScaling | None]:
        """(rope base, scaling) of `layer`."""
        if self.layer_types and self.is_sliding_layer(layer) and self.local_rope_theta:
            return self.local_rope_theta, self.local_rope_scaling
        return self.rope_theta, self.rope_scaling

    def for_max_model_len(self, max_model_len: int) -> ModelConfig:
        """This config for an engine whose sequences reach `max_model_len` tokens (LongRoPE picks
        its factor list by it, see `RopeScaling`)."""
        return self.replace(
            rope_scaling=self.rope_scaling and self.rope_scaling.for_max_model_len(max_model_len),
            local_rope_scaling=(
                self.local_rope_scaling and self.local_rope_scaling.for_max_model_len(max_model_len)
            ),
        )

    @property
    def uniform_layers(self) -> bool:
        """Do all layers share one window and rope (so one scanned layer serves them all)?"""
        kinds = {(self.layer_window(i), self.layer_rope(i)) for i in range(self.num_hidden_layers)}
        return len(kinds) <= 1

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], dtype: str = "float32") -> ModelConfig:
        """Build from a transformers `config.json` dictionary (its `architectures` names the
        model; the loaders fill it from `model_type` where a config lacks it)."""
        archs = hf.get("architectures") or []
        arch = archs[0] if archs else str(hf.get("model_type", "unknown"))
        n_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
        rope = _RopeFields.from_hf(hf)
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        attention_bias = bool(hf.get("attention_bias", False)) or hf.get("model_type") in (
            "qwen2",
            "qwen2_moe",
        )
        sliding = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
        if hf.get("model_type") == "qwen2" and not hf.get("use_sliding_window", False):
            sliding = None
        layer_types = tuple(hf.get("layer_types") or ())
        pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern")
        if not layer_types and pattern and sliding:  # older Gemma 3 configs: every Nth is full
            n = int(pattern)
            layer_types = tuple(
                FULL if (i + 1) % n == 0 else SLIDING for i in range(hf["num_hidden_layers"])
            )
        if layer_types and SLIDING not in layer_types:
            layer_types, sliding = (), None  # all layers full (Qwen3 saves this)
        moe = _moe_fields(hf)
        if hf.get("attn_logit_softcapping"):
            raise ValueError(
                f"attn_logit_softcapping={hf['attn_logit_softcapping']} is not supported"
            )
        return cls(
            architecture=arch,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=n_heads,
            num_key_value_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=head_dim,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=rope.theta,
            rope_scaling=rope.scaling,
            partial_rotary_factor=rope.partial_rotary_factor,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            hidden_act=hf.get("hidden_activation") or hf.get("hidden_act") or "silu",
            sliding_window=sliding,
            layer_types=layer_types,
            local_rope_theta=rope.local_theta if layer_types else None,
            local_rope_scaling=rope.local_scaling if layer_types else None,
            qk_norm=hf.get("model_type") in _QK_NORM_MODEL_TYPES,
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar"),
            final_logit_softcapping=hf.get("final_logit_softcapping"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            dtype=dtype,
            **moe,
        )


# HF model types whose attention normalizes q and k per head (their configs carry no flag)
_QK_NORM_MODEL_TYPES = ("qwen3", "qwen3_moe", "gemma3_text", "gemma3")

# HF mixture-of-experts model type -> (config key of the expert count, of each expert's width,
# top-k weights renormalized: a config key, or True where the model always does)
_MOE_KEYS: dict[str, tuple[str, str, str | bool]] = {
    "mixtral": ("num_local_experts", "intermediate_size", True),
    "qwen3_moe": ("num_experts", "moe_intermediate_size", "norm_topk_prob"),
    "qwen2_moe": ("num_experts", "moe_intermediate_size", "norm_topk_prob"),
}


def _moe_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig's mixture-of-experts fields of an HF config (none for dense models)."""
    keys = _MOE_KEYS.get(hf.get("model_type", ""))
    if keys is None:
        return {}
    count, width, norm = keys
    dense_layers = hf.get("mlp_only_layers") or []
    if dense_layers or int(hf.get("decoder_sparse_step", 1)) != 1:
        raise ValueError(
            f"{hf['model_type']} configs with dense MLP layers among the expert layers "
            f"(mlp_only_layers={dense_layers}, decoder_sparse_step="
            f"{hf.get('decoder_sparse_step', 1)}) are not supported"
        )
    # transformers 5 saves Qwen's expert count as num_local_experts; hub configs say num_experts
    experts = hf.get(count, hf.get("num_local_experts", hf.get("num_experts")))
    if experts is None:
        raise KeyError(count)
    return dict(
        num_experts=int(experts),
        num_experts_per_tok=int(hf["num_experts_per_tok"]),
        moe_intermediate_size=int(hf[width]),
        norm_topk_prob=norm if isinstance(norm, bool) else bool(hf.get(norm, False)),
        shared_expert_intermediate_size=int(hf.get("shared_expert_intermediate_size") or 0),
    )


@dataclass(frozen=True)
class _RopeFields:
    """The rope settings of an HF config, in any of its spellings."""

    theta: float
    scaling: RopeScaling | None
    local_theta: float | None
    local_scaling: RopeScaling | None
    partial_rotary_factor: float

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> _RopeFields:
        theta = hf.get("rope_theta")
        scaling_dict = hf.get("rope_scaling")
        local_theta = hf.get("rope_local_base_freq")
        local_dict: dict | None = None
        partial = hf.get("partial_rotary_factor")
        rp = hf.get("rope_parameters")  # transformers 5.x: theta and scaling live here
        if isinstance(rp, dict) and (FULL in rp or SLIDING in rp):  # one entry per layer type
            full, local = rp.get(FULL) or {}, rp.get(SLIDING) or {}
            theta = full.get("rope_theta", theta)
            scaling_dict = full
            local_theta = local.get("rope_theta", local_theta)
            local_dict = local
            partial = full.get("partial_rotary_factor", partial)
        elif isinstance(rp, dict):
            theta = rp.get("rope_theta", theta)
            if rp.get("rope_type", rp.get("type", "default")) != "default":
                scaling_dict = rp
            partial = rp.get("partial_rotary_factor", partial)
        max_len = hf.get("max_position_embeddings")
        return cls(
            theta=float(theta if theta is not None else 10000.0),
            # Phi-3 keeps original_max_position_embeddings beside the rope dict, and HF prefers
            # it there; it belongs to the global (not per-layer-type local) rope
            scaling=rope_scaling_from_hf(
                scaling_dict,
                max_position_embeddings=max_len,
                original_max_position_embeddings=hf.get("original_max_position_embeddings"),
            ),
            local_theta=None if local_theta is None else float(local_theta),
            local_scaling=rope_scaling_from_hf(local_dict, max_position_embeddings=max_len),
            partial_rotary_factor=float(partial if partial is not None else 1.0),
        )


# CacheConfig.kv_cache_dtype: name -> the dtype of the cache arrays (numpy names; None: the model's)
KV_CACHE_DTYPES = {
    "auto": None,
    "float32": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    # vLLM's names: float8 e4m3 pages with per-tensor scales (ModelConfig.k_scale / v_scale)
    "fp8": "float8_e4m3fn",
    "fp8_e4m3": "float8_e4m3fn",
}


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks: int | None = None  # explicit block count; overrides memory-based sizing
    enable_prefix_caching: bool = True
    # "auto" (the model's dtype), a float dtype, or "fp8" / "fp8_e4m3" (KV_CACHE_DTYPES)
    kv_cache_dtype: str = "auto"
    swap_space: float = 4.0  # GiB of host memory for KV blocks swapped out (preemption_mode="swap")

    def __post_init__(self) -> None:
        if not isinstance(self.kv_cache_dtype, str) or self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype {self.kv_cache_dtype!r} is not supported; choose one of "
                f"{', '.join(KV_CACHE_DTYPES)}"
            )
        if not self.swap_space >= 0:
            raise ValueError(f"swap_space must be >= 0 GiB, got {self.swap_space}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.num_gpu_blocks is not None and self.num_gpu_blocks < 2:
            raise ValueError(f"num_gpu_blocks must be >= 2, got {self.num_gpu_blocks}")

    def cache_dtype(self, model_dtype: str) -> str:
        """The numpy name of the KV cache arrays' dtype for a model computing in `model_dtype`
        (e.g. "float8_e4m3fn" for "fp8")."""
        return KV_CACHE_DTYPES[self.kv_cache_dtype] or model_dtype


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 2048
    enable_chunked_prefill: bool = True
    policy: str = "fcfs"  # "fcfs" or "priority" (lower Request.priority first, then arrival)
    preemption_mode: str = "recompute"  # or "swap": KV to host memory (CacheConfig.swap_space)
    # schedule step N+1 while step N runs on the device (scheduler.py); outputs lag one step().
    # None: on with the GPU kernel backends (pallas, cuda), off on the CPU (LLMEngine decides)
    async_scheduling: bool | None = None

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling policy {self.policy!r} is not supported (fcfs, priority)")
        if self.async_scheduling not in (None, True, False):
            raise ValueError(
                f"async_scheduling must be True, False or None, got {self.async_scheduling!r}"
            )
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(
                f"preemption_mode {self.preemption_mode!r} is not supported (recompute, swap)"
            )


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    # mixture-of-experts models: whole experts split over the tp devices (ModelConfig.
    # expert_parallel, which the loaded model carries)
    enable_expert_parallel: bool = False

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1 or self.data_parallel_size < 1:
            raise ValueError("tensor_parallel_size and data_parallel_size must be >= 1")


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    seed: int = 0
    max_logprobs: int = 20
