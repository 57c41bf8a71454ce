"""jaxllm: high-throughput, memory-efficient LLM inference and serving on JAX/XLA.

The public API mirrors vLLM's: `from jaxllm import LLM, SamplingParams`. Names are imported
lazily, so host-side modules (scheduler, KV cache) can be used without importing JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LLM": "jaxllm.entrypoints.llm",
    "LLMEngine": "jaxllm.engine.llm_engine",
    "SamplingParams": "jaxllm.sampling_params",
    "StructuredOutputsParams": "jaxllm.structured_outputs.params",
    "BeamSearchParams": "jaxllm.beam_search",
    "BeamSearchOutput": "jaxllm.beam_search",
    "BeamSearchSequence": "jaxllm.beam_search",
    "RequestOutput": "jaxllm.outputs",
    "CompletionOutput": "jaxllm.outputs",
    "Logprob": "jaxllm.outputs",
    "LoRARequest": "jaxllm.lora.request",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jaxllm' has no attribute {name!r}")
