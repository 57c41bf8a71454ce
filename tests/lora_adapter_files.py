"""PEFT LoRA adapter folders written directly (numpy + safetensors, no torch or peft): the files
`save_pretrained` writes, with seeded random A and B (PEFT starts B at zero, a no-op adapter), for
tests that compare jaxllm with itself (the server against `LLM.generate`) rather than with HF."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

_BLOCK = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def write_adapter(
    folder: str | os.PathLike,
    model_config: Any,
    *,
    r: int = 4,
    lora_alpha: float = 8,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
    std: float = 0.2,
) -> str:
    """Write a PEFT adapter for `model_config` (a jaxllm model config) into `folder`; its path.
    B's `std` is large enough for the adapter to change SmolLM2's greedy continuations."""
    from safetensors.numpy import save_file

    from jaxllm.lora.peft_adapter import projection_shapes

    shapes = projection_shapes(model_config)
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(model_config.num_hidden_layers):
        for proj in target_modules:
            d_in, d_out = shapes[proj]
            key = f"base_model.model.model.layers.{layer}.{_BLOCK[proj]}.{proj}"
            a = rng.standard_normal((r, d_in)) / np.sqrt(d_in)
            tensors[f"{key}.lora_A.weight"] = a.astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((d_out, r)) * std).astype(
                np.float32
            )
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": lora_alpha,
        "target_modules": list(target_modules),
        "lora_dropout": 0.0,
        "bias": "none",
    }
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return str(folder)
