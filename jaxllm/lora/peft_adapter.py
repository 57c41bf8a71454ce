"""Reading a PEFT LoRA adapter folder into per-projection stacked host arrays (numpy, no JAX).

PEFT stores, for each adapted linear layer, `lora_A.weight` [r, in] and `lora_B.weight` [out, r]
under names like `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`; the layer
computes y = W x + scaling * B (A x) with scaling = lora_alpha / r (`use_rslora`: / sqrt(r)).
Here every target projection becomes A [L, in, r] and B [L, r, out] with the scaling folded into
B; layers the adapter leaves alone hold zeros. Anything this engine does not run (DoRA, biases,
modules_to_save, per-module rank patterns, embeddings or the LM head) is refused by name.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxllm.lora.config import TARGET_MODULES

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\."
    r"(\w+)\.lora_([AB])(?:\.default)?\.weight$"
)


@dataclass
class LoRAAdapter:
    """One loaded adapter: name -> (A [L, in, r] float32, B [L, r, out] float32, scaled)."""

    name: str
    lora_int_id: int
    rank: int
    weights: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def projection_shapes(model_config: Any) -> dict[str, tuple[int, int]]:
    """(in, out) of each target projection of a Llama-family model config."""
    c = model_config
    D, F = c.hidden_size, c.intermediate_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    return {
        "q_proj": (D, q),
        "k_proj": (D, kv),
        "v_proj": (D, kv),
        "o_proj": (q, D),
        "gate_proj": (D, F),
        "up_proj": (D, F),
        "down_proj": (F, D),
    }


def _unsupported(name: str, what: str) -> ValueError:
    return ValueError(f"LoRA adapter {name!r}: {what} is not supported")


def read_adapter_config(path: str, name: str) -> dict:
    """The adapter's config, checked for what this engine supports."""
    if not os.path.isdir(path):
        raise ValueError(f"LoRA adapter {name!r}: no such folder {path!r}")
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise ValueError(f"LoRA adapter {name!r}: {cfg_path!r} is missing")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise _unsupported(name, f"peft_type {cfg.get('peft_type')!r} (only LORA)")
    if cfg.get("use_dora"):
        raise _unsupported(name, "use_dora (DoRA)")
    if cfg.get("bias", "none") != "none":
        raise _unsupported(name, f"bias={cfg.get('bias')!r}")
    if cfg.get("modules_to_save"):
        raise _unsupported(name, f"modules_to_save={cfg['modules_to_save']!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise _unsupported(name, f"{key}={cfg[key]!r}")
    if cfg.get("fan_in_fan_out"):
        raise _unsupported(name, "fan_in_fan_out=True")
    targets = cfg.get("target_modules")
    if isinstance(targets, list):
        bad = [t for t in targets if t.split(".")[-1] not in TARGET_MODULES]
        if bad:
            raise _unsupported(
                name, f"target module(s) {bad} (supported: {', '.join(TARGET_MODULES)})"
            )
    r = cfg.get("r")
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA adapter {name!r}: r must be a positive int, got {r!r}")
    return cfg


def load_peft_adapter(
    path: str, name: str, lora_int_id: int, model_config: Any, max_lora_rank: int
) -> LoRAAdapter:
    """Read and check one adapter folder against the base model's shapes; raises ValueError naming
    the problem (a missing folder or file, an unsupported feature, a rank above `max_lora_rank`,
    tensors of another base model's shapes)."""
    cfg = read_adapter_config(path, name)
    r = int(cfg["r"])
    if r > max_lora_rank:
        raise ValueError(
            f"LoRA adapter {name!r} has rank {r}, above max_lora_rank ({max_lora_rank}); "
            "raise max_lora_rank"
        )
    alpha = float(cfg.get("lora_alpha", r))
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    weights_path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        raise ValueError(f"LoRA adapter {name!r}: {weights_path!r} is missing")
    from safetensors.numpy import load_file

    tensors = load_file(weights_path)
    shapes = projection_shapes(model_config)
    L = model_config.num_hidden_layers
    found: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise _unsupported(name, f"tensor {key!r}")
        layer, proj, ab = int(m.group(1)), m.group(2), m.group(3)
        if proj not in shapes:
            raise _unsupported(name, f"target module {proj!r} (tensor {key!r})")
        if layer >= L:
            raise ValueError(
                f"LoRA adapter {name!r}: tensor {key!r} is for layer {layer}, but the base model "
                f"has {L} layers (an adapter for another base model?)"
            )
        found.setdefault(proj, {}).setdefault(layer, {})[ab] = t
    if not found:
        raise ValueError(f"LoRA adapter {name!r}: {weights_path!r} holds no LoRA tensors")
    weights = {}
    for proj, layers in found.items():
        d_in, d_out = shapes[proj]
        A = np.zeros((L, d_in, r), np.float32)  # [L, in, r]
        B = np.zeros((L, r, d_out), np.float32)  # [L, r, out]
        for layer, ab in layers.items():
            if set(ab) != {"A", "B"}:
                raise ValueError(
                    f"LoRA adapter {name!r}: layer {layer} {proj} has only lora_{''.join(ab)}"
                )
            a, b = ab["A"], ab["B"]
            if a.shape != (r, d_in) or b.shape != (d_out, r):
                raise ValueError(
                    f"LoRA adapter {name!r}: layer {layer} {proj} has lora_A {list(a.shape)} and "
                    f"lora_B {list(b.shape)}; the base model needs [{r}, {d_in}] and "
                    f"[{d_out}, {r}] (an adapter for another base model?)"
                )
            A[layer] = a.astype(np.float32).T
            B[layer] = b.astype(np.float32).T * scaling
        weights[proj] = (A, B)
    return LoRAAdapter(name, lora_int_id, r, weights)
