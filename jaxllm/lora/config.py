"""`LoRAConfig`: the engine's LoRA settings (`LLM(enable_lora=True, max_loras=..., ...)`)."""

from __future__ import annotations

from dataclasses import dataclass

# The projections an adapter may target (PEFT's module names in Llama-family models).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoRAConfig:
    """`max_loras`: device slots, i.e. distinct adapters in one step; `max_lora_rank`: the largest
    rank accepted (every slot is padded to it); `max_cpu_loras`: adapters kept loaded on the host
    (LRU; None: `max_loras`, and never fewer than it)."""

    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")
        if self.max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be >= 1, got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )

    @property
    def num_cpu_loras(self) -> int:
        return self.max_loras if self.max_cpu_loras is None else self.max_cpu_loras
