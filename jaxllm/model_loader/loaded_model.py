"""`LoadedModel`: what every loader returns (weights, config, tokenizer, generation defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxllm.config import ModelConfig


@dataclass
class LoadedModel:
    config: ModelConfig
    params: dict  # the stacked parameter pytree (see jaxllm.models.layout), on the device
    tokenizer: Any  # a transformers tokenizer, or None (dummy models, folders without one)
    generation_config: dict = field(default_factory=dict)
    source: str = ""  # what was loaded: resolved file/folder path or "dummy:NAME"
    chat_template: str | None = None
    format: str = ""  # "hf" | "gguf" | "orbax" | "dummy"
    # the mesh the params are sharded over (None: one device). With a mesh, `config` is the
    # tp-way config the params are laid out for (jaxllm.parallel.tp_model_config: KV heads
    # repeated where the model has fewer than the mesh's 'model' axis).
    mesh: Any = None
