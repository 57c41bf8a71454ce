"""Which HF `architectures` names jaxllm can run, and the Flax model class for each."""

from __future__ import annotations

from typing import Any

# HF architecture name -> (module under jaxllm.models, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "LlamaForCausalLM"),
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def check_architecture(architecture: str, source: str = "") -> None:
    """Raise a ValueError naming the supported architectures if `architecture` is not one."""
    if architecture not in _MODELS:
        where = f" (in {source})" if source else ""
        raise ValueError(
            f"unsupported model architecture {architecture!r}{where}; supported: "
            + ", ".join(supported_architectures())
        )


def get_model_class(architecture: str) -> Any:
    check_architecture(architecture)
    import importlib

    module_name, class_name = _MODELS[architecture]
    module = importlib.import_module(f"jaxllm.models.{module_name}")
    return getattr(module, class_name)
