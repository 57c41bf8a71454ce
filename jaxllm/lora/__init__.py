"""Multi-LoRA serving: many PEFT LoRA adapters of one base model in one batch (vLLM's semantics).

A request names its adapter with a `LoRARequest`; the engine loads the adapter folder on the host
(`peft_adapter`, kept in an LRU of `max_cpu_loras`), gives it one of `max_loras` slots of a device
table (`adapter_table`: stacked A and B per target projection, zero-padded to `max_lora_rank`, the
scaling folded into B), and each step adds every token's own adapter to the projections
(`segment_matmul`), the slots being data: no recompilation when the mix of adapters changes. The
scheduler runs at most `max_loras` distinct adapters at once and the prefix cache keys carry the
adapter id. See docs/lora.md.

Only `LoRARequest` is imported here: the host side (scheduler, KV cache) stays free of JAX.
"""

from jaxllm.lora.request import LoRARequest

__all__ = ["LoRARequest"]
