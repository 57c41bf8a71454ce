"""The parameter layout of a Llama-style decoder whose MLPs are sparse mixtures of experts
(jaxllm/layers/moe.py): the Llama family's attention and norms, and per layer a router, E experts
stacked on the axis after L, and Qwen2-MoE's shared expert where the config has one.

    layers/mlp/gate/kernel [L, D, E]                       HF <block>.gate.weight [E, D]
    layers/mlp/experts/{gate_proj,up_proj} [L, E, D, F]    HF <block>.experts.{e}.<gate|up>.weight
    layers/mlp/experts/down_proj [L, E, F, D]              HF <block>.experts.{e}.<down>.weight
    layers/mlp/shared_expert/{gate,up,down}_proj/kernel    HF mlp.shared_expert.*.weight
    layers/mlp/shared_expert_gate/kernel [L, D, 1]         HF mlp.shared_expert_gate.weight [1, D]

Each family names its block and experts' projections (`MoeNames`); Mixtral's are
`block_sparse_moe` and w1 / w3 / w2.

GGUF files (llama.cpp's converter) hold the router as `blk.{i}.ffn_gate_inp` [E, D] and each
projection's experts stacked in one tensor per layer, `blk.{i}.ffn_{gate,up,down}_exps`
(numpy order [E, out, in]: every expert's HF weight), plus Qwen2-MoE's shared expert
`ffn_{gate,up,down}_shexp` and its gate `ffn_gate_inp_shexp`, which llama.cpp's converter may
store as a vector [D] (HF [1, D]). The names are gguf.constants' TENSOR_NAMES of MODEL_ARCH
QWEN3MOE, QWEN2MOE and LLAMA (Mixtral); tests/models/test_moe_gguf.py checks them against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.layers.moe_params import EXPERTS
from jaxllm.models.llama_layout import GGUF_LAYER_NAMES as LLAMA_GGUF_LAYER_NAMES
from jaxllm.models.llama_layout import PARAM_LOGICAL_AXES as LLAMA_LOGICAL_AXES
from jaxllm.models.llama_layout import decoder_param_layout, gguf_names_in, gguf_tensor_in
from jaxllm.models.param_spec import ParamSpec


@dataclass(frozen=True)
class MoeNames:
    """HF names of a family's MoE block (suffixes after "model.layers.{i}.")."""

    block: str = "mlp"  # the module holding the router and experts
    gate: str = "gate_proj"  # each expert's projections, under <block>.experts.{e}.
    up: str = "up_proj"
    down: str = "down_proj"


MIXTRAL_NAMES = MoeNames(block="block_sparse_moe", gate="w1", up="w3", down="w2")
SHARED_EXPERT_GATE = "mlp.shared_expert_gate.weight"  # HF [1, D]


def moe_param_layout(config: ModelConfig, names: MoeNames) -> list[ParamSpec]:
    """Every parameter leaf of the MoE decoder for `config`, in a fixed order."""
    if not config.is_moe:
        raise ValueError(f"{config.architecture} needs a config with num_experts > 0")
    L, D = config.num_hidden_layers, config.hidden_size
    E, F = config.num_experts, config.moe_intermediate_size
    prefix = "model.layers.{i}."

    def leaf(path, hf: str, shape) -> ParamSpec:
        return ParamSpec(("layers", "mlp") + path, prefix + hf, (L,) + shape, True)

    experts = f"{names.block}.experts.{{e}}."
    specs = decoder_param_layout(config, dense_mlp=False)
    specs += [
        leaf(("gate", "kernel"), f"{names.block}.gate.weight", (D, E)),
        leaf((EXPERTS, "gate_proj"), f"{experts}{names.gate}.weight", (E, D, F)),
        leaf((EXPERTS, "up_proj"), f"{experts}{names.up}.weight", (E, D, F)),
        leaf((EXPERTS, "down_proj"), f"{experts}{names.down}.weight", (E, F, D)),
    ]
    S = config.shared_expert_intermediate_size
    if S:
        shared = "mlp.shared_expert."
        specs += [
            leaf(("shared_expert", "gate_proj", "kernel"), shared + "gate_proj.weight", (D, S)),
            leaf(("shared_expert", "up_proj", "kernel"), shared + "up_proj.weight", (D, S)),
            leaf(("shared_expert", "down_proj", "kernel"), shared + "down_proj.weight", (S, D)),
            leaf(("shared_expert_gate", "kernel"), SHARED_EXPERT_GATE, (D, 1)),
        ]
    return specs


# The Llama family's table plus the MoE leaves. "experts" and "expert_mlp" map to the mesh by
# jaxllm.parallel.sharding_rules.expert_axis_rules (tensor parallel experts split F, expert
# parallelism splits E); the router and the shared expert's gate are replicated ("router").
PARAM_LOGICAL_AXES: dict[tuple[str, ...], tuple[str, ...]] = {
    **LLAMA_LOGICAL_AXES,
    ("layers", "mlp", "gate", "kernel"): ("layers", "embed", "router"),
    ("layers", "mlp", EXPERTS, "gate_proj"): ("layers", "experts", "embed", "expert_mlp"),
    ("layers", "mlp", EXPERTS, "up_proj"): ("layers", "experts", "embed", "expert_mlp"),
    ("layers", "mlp", EXPERTS, "down_proj"): ("layers", "experts", "expert_mlp", "embed"),
    ("layers", "mlp", "shared_expert", "gate_proj", "kernel"): ("layers", "embed", "mlp"),
    ("layers", "mlp", "shared_expert", "up_proj", "kernel"): ("layers", "embed", "mlp"),
    ("layers", "mlp", "shared_expert", "down_proj", "kernel"): ("layers", "mlp", "embed"),
    ("layers", "mlp", "shared_expert_gate", "kernel"): ("layers", "embed", "router"),
}


def _gguf_moe_names(names: MoeNames) -> dict[str, str]:
    """A family's MoE block: HF name (suffix after "model.layers.{i}.", "{e}" for the expert) ->
    GGUF name (suffix after "blk.{i}.")."""
    experts = f"{names.block}.experts.{{e}}."
    return {
        f"{names.block}.gate.weight": "ffn_gate_inp.weight",
        f"{experts}{names.gate}.weight": "ffn_gate_exps.weight",
        f"{experts}{names.up}.weight": "ffn_up_exps.weight",
        f"{experts}{names.down}.weight": "ffn_down_exps.weight",
    }


# HF name (suffix after "model.layers.{i}.") -> GGUF name (suffix after "blk.{i}."), for every MoE
# family (their HF names differ, their GGUF names do not): the Llama family's attention and norms,
# the router and stacked experts, Qwen2-MoE's shared expert.
GGUF_LAYER_NAMES = {
    **{k: v for k, v in LLAMA_GGUF_LAYER_NAMES.items() if not k.startswith("mlp.")},
    **_gguf_moe_names(MoeNames()),
    **_gguf_moe_names(MIXTRAL_NAMES),
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    SHARED_EXPERT_GATE: "ffn_gate_inp_shexp.weight",
}


def hf_to_gguf_tensor(hf_name: str) -> tuple[str, int | None]:
    """The GGUF tensor holding HF tensor `hf_name`, and the expert's index into it for an expert's
    weight (None for the others); a KeyError for names GGUF does not have."""
    return gguf_tensor_in(hf_name, GGUF_LAYER_NAMES)


def hf_to_gguf_name(hf_name: str) -> str:
    """The GGUF tensor holding HF tensor `hf_name` (a KeyError for names GGUF does not have)."""
    return hf_to_gguf_tensor(hf_name)[0]


def gguf_tensor_names(config: ModelConfig) -> set[str]:
    """Every GGUF tensor name a MoE file may hold for `config`."""
    return gguf_names_in(config, GGUF_LAYER_NAMES)


def from_gguf_tensor(hf_name: str, w: np.ndarray) -> np.ndarray:
    """A GGUF tensor (HF layout, float) as the HF checkpoint holds it: the shared expert's gate,
    which llama.cpp may store as a vector [D], back to [1, D]."""
    return w.reshape(1, -1) if hf_name.endswith(SHARED_EXPERT_GATE) else w
