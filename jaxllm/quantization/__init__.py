"""Quantized weights: the methods a user names and the storage formats behind them.

- `formats.py`: each storage format (int8, fp8, the GGUF block types): its leaves, logical axes,
  quantization, dequantization and matmul;
- `gguf_blocks.py`: llama.cpp's block layouts and their jnp dequantization;
- `layout.py`: the quantized parameter layout of a `QuantizationConfig` and quantizing a float
  params tree into it.

Methods (`LLM(quantization=...)`, `--quantization`), as vLLM names them:
- `fp8`: e4m3 weights, per-output-channel scales, activations quantized per token at run time;
  float checkpoints are quantized at load, FP8 checkpoints read as stored
  (jaxllm/model_loader/hf_fp8.py);
- `int8`: int8 weights, per-output-channel scales, weight-only (activations stay in the model
  dtype); float checkpoints are quantized at load;
- `gguf`: a GGUF file's Q8_0/Q4_0/Q4_1/Q4_K/Q6_K tensors kept in their blocks (the default for
  GGUF files).
None (the default) takes what the checkpoint says: GGUF files load as `gguf`, FP8 checkpoints as
`fp8`, others in float.
The decoder layers' linear kernels are quantized; the embedding and the LM head stay float
(as vLLM's fp8 leaves them), except where a GGUF file stores them quantized.
"""

from __future__ import annotations

METHODS: dict[str, str] = {
    "fp8": "float8 e4m3 weights with per-channel scales and dynamic per-token activation scales",
    "int8": "int8 weights with per-channel scales, activations in the model dtype (W8A16)",
    "gguf": "a GGUF file's quantized tensors kept in their blocks",
}


def normalize_method(name: str | None) -> str | None:
    """None/'' -> None; a known method's name (any case) -> it; otherwise a ValueError."""
    if name is None or str(name).strip() == "":
        return None
    key = str(name).strip().lower()
    if key not in METHODS:
        raise ValueError(
            f"quantization {name!r} is not supported; choose one of: "
            + "; ".join(f"{k} ({v})" for k, v in METHODS.items())
        )
    return key
