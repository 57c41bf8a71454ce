"""Which HF `architectures` names jaxllm can run, and the model module for each.

A model module (e.g. jaxllm/models/llama.py) holds the Flax class and owns the parameter layout
its class reads (see jaxllm/models/layout.py for the names it provides).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

# HF architecture name -> (module under jaxllm.models, class name, HF config.json `model_type`)
_MODELS: dict[str, tuple[str, str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM", "llama"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM", "mistral"),
    "Qwen2ForCausalLM": ("llama", "LlamaForCausalLM", "qwen2"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM", "qwen3"),
    "Gemma3ForCausalLM": ("gemma3", "Gemma3ForCausalLM", "gemma3_text"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM", "phi3"),
    "MixtralForCausalLM": ("mixtral", "MixtralForCausalLM", "mixtral"),
    "Qwen3MoeForCausalLM": ("qwen3_moe", "Qwen3MoeForCausalLM", "qwen3_moe"),
    "Qwen2MoeForCausalLM": ("qwen2_moe", "Qwen2MoeForCausalLM", "qwen2_moe"),
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def hf_model_type(architecture: str) -> str:
    """The HF config.json `model_type` of `architecture` (e.g. "qwen2" for Qwen2ForCausalLM)."""
    check_architecture(architecture)
    return _MODELS[architecture][2]


def architecture_for_model_type(model_type: str) -> str | None:
    """The architecture whose configs carry `model_type` (None when no registered one does)."""
    for arch, (_, _, mtype) in _MODELS.items():
        if mtype == model_type:
            return arch
    return None


def model_module_names() -> list[str]:
    """The registered model modules' full names, each once, in registry order."""
    return list(dict.fromkeys(f"jaxllm.models.{module}" for module, _, _ in _MODELS.values()))


def model_modules() -> list[ModuleType]:
    """Every registered model module, each once, in registry order."""
    return [importlib.import_module(name) for name in model_module_names()]


def check_architecture(architecture: str, source: str = "") -> None:
    """Raise a ValueError naming the supported architectures if `architecture` is not one."""
    if architecture not in _MODELS:
        where = f" (in {source})" if source else ""
        raise ValueError(
            f"unsupported model architecture {architecture!r}{where}; supported: "
            + ", ".join(supported_architectures())
        )


def model_module(architecture: str) -> ModuleType:
    """The module implementing `architecture` (imported on first use: host-side code that only
    checks names does not pay for Flax)."""
    check_architecture(architecture)
    return importlib.import_module(f"jaxllm.models.{_MODELS[architecture][0]}")


def get_model_class(architecture: str) -> Any:
    return getattr(model_module(architecture), _MODELS[architecture][1])
