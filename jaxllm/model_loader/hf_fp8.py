"""Pre-quantized FP8 HF checkpoints: which ones jaxllm reads, and their weights as fp8 leaves.

A checkpoint whose config.json carries a `quantization_config` of one of these kinds loads as
method `fp8` (`jaxllm.quantization.formats.Fp8`: e4m3 [in, out] and a scale per output channel):
- `quant_method: "fp8"` with `activation_scheme: "dynamic"` and no `weight_block_size`
  (AutoFP8 / vLLM's own serialization): `W.weight` e4m3 [out, in] and `W.weight_scale`, one scale
  for the whole tensor;
- `quant_method: "compressed-tensors"` whose config groups quantize the `Linear` weights to 8-bit
  floats with the `channel` or `tensor` strategy and the activations dynamically per token, or
  not at all (llm-compressor's FP8-dynamic and FP8 weight-only): `W.weight` e4m3 [out, in] and
  `W.weight_scale` [out, 1] or a single scale.
The weight is `weight * weight_scale` in both. Other kinds (block-wise scales, static activation
scales, int formats) are refused, naming what the checkpoint has.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCALE_SUFFIXES = (".weight_scale", ".input_scale")


def fp8_checkpoint_kind(qc: dict, source: str) -> str:
    """A description of the supported FP8 kind of `quantization_config` `qc`, or a ValueError
    naming why this one is not read."""
    method = str(qc.get("quant_method", "")).lower()
    if method == "fp8":
        if qc.get("weight_block_size"):
            raise ValueError(
                f"{source}: FP8 with block-wise scales (weight_block_size "
                f"{qc['weight_block_size']}) is not supported; per-tensor and per-channel are"
            )
        if qc.get("activation_scheme", "dynamic") != "dynamic":
            raise ValueError(
                f"{source}: FP8 with static activation scales (activation_scheme "
                f"{qc.get('activation_scheme')!r}) is not supported; dynamic is"
            )
        return "fp8 (per-tensor weight scales, dynamic activations)"
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        if len(groups) != 1:
            raise ValueError(f"{source}: compressed-tensors with {len(groups)} config groups")
        group = next(iter(groups.values()))
        w = group.get("weights") or {}
        a = group.get("input_activations")
        if (w.get("type"), w.get("num_bits")) != ("float", 8) or w.get("strategy") not in (
            "channel",
            "tensor",
        ):
            raise ValueError(
                f"{source}: compressed-tensors weights {w.get('type')}/{w.get('num_bits')} bits "
                f"with strategy {w.get('strategy')!r} are not supported; 8-bit float weights "
                "with the channel or tensor strategy are"
            )
        if a is not None and not a.get("dynamic", False):
            raise ValueError(
                f"{source}: compressed-tensors with static input activation scales is not "
                "supported; dynamic (or weight-only) is"
            )
        return f"compressed-tensors fp8 ({w['strategy']} weight scales)"
    raise ValueError(
        f"{source}: checkpoint quantization {method!r} is not supported; jaxllm reads fp8 and "
        "compressed-tensors FP8 checkpoints (and quantizes float ones with quantization=int8/fp8)"
    )


def fp8_leaves(
    get: Any, weight_name: str, rows: tuple[int, int] | None, out: int
) -> tuple[np.ndarray, np.ndarray]:
    """One layer's (e4m3 [in, out], scale [out] float32) from HF tensor `weight_name` and its
    `weight_scale` (rows [start, stop) of a fused tensor when `rows`)."""
    w = np.asarray(get(weight_name))
    scale = np.asarray(get(weight_name + "_scale"), np.float32)
    if scale.size == 1:
        scale = np.full(w.shape[0], scale.reshape(()), np.float32)
    scale = scale.reshape(-1)
    if scale.shape[0] != w.shape[0]:
        raise ValueError(
            f"{weight_name}_scale has {scale.shape[0]} scales for {w.shape[0]} output rows"
        )
    if rows is not None:
        w, scale = w[rows[0] : rows[1]], scale[rows[0] : rows[1]]
    if w.shape[0] != out:
        raise ValueError(f"{weight_name}: {w.shape[0]} output rows, expected {out}")
    return np.ascontiguousarray(w.T), scale
