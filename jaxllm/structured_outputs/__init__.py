"""Structured outputs: grammars (JSON schema, regex, choice, Lark/GBNF grammar, any JSON object)
that a request's output must match, as per-row token masks applied on the device.

- `params.py`: `StructuredOutputsParams`, the request-side description (no grammar library);
- `grammar.py`: compilation with llguidance into matchers, cached and off the engine loop, and the
  packed int32 bitmasks the sampler applies (jaxllm.layers.sampler).

llguidance (Microsoft's Rust grammar engine, the default backend of vLLM's structured outputs
beside xgrammar) is the backend: a dependency-free wheel, where xgrammar requires torch.
"""

from jaxllm.structured_outputs.params import StructuredOutputsParams

__all__ = ["StructuredOutputsParams"]
