"""Rotary-embedding settings of a model, parsed from an HF config (host side: no JAX).

`RopeScaling` is one HF `rope_scaling` / `rope_parameters` entry; `rope_scaling_from_hf` reads it
with transformers' defaults resolved, so the record holds the numbers the frequencies use.
The frequencies themselves are computed in `jaxllm.layers.rotary`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

# rope types jaxllm computes (HF `rope_type`; the older `type` key is read too)
ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "yarn", "longrope")

# types whose dict names the pretraining length (transformers fills it in when it is missing)
_WITH_ORIGINAL_MAX = ("llama3", "yarn", "longrope")


@dataclass(frozen=True)
class RopeScaling:
    """One rope scaling, with every default transformers derives already resolved.

    - linear: frequencies / `factor`.
    - llama3: low frequencies / `factor`, high ones kept, a ramp between (`low_freq_factor`,
      `high_freq_factor`, `original_max_position_embeddings`).
    - dynamic (NTK): for a sequence longer than the model's `max_position_embeddings` the base
      grows with its length (`factor`); that length is the model's, as transformers reads it.
    - yarn: interpolation ramped in by frequency between `beta_fast` and `beta_slow` rotations
      over `original_max_position_embeddings`; cos/sin scaled by `attention_factor`.
    - longrope (Phi-3): per-frequency divisors, `long_factor` where `use_long_factor` else
      `short_factor`; cos/sin scaled by `attention_factor`. transformers picks the list per
      forward pass by the sequence's length (long past `original_max_position_embeddings`), so a
      chunked prompt would hold keys rotated both ways; like vLLM, the engine picks one list for
      every sequence: the long one where its max_model_len exceeds the original length
      (`ModelConfig.for_max_model_len`), the same as transformers' for every sequence that stays
      on one side of that length.
    """

    rope_type: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int = 8192  # llama3, yarn, longrope
    attention_factor: float = 1.0  # cos/sin multiplier (yarn, longrope; 1.0 for the others)
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    mscale: float | None = None  # yarn, as given (already folded into attention_factor)
    mscale_all_dim: float | None = None  # yarn, as given (already folded into attention_factor)
    truncate: bool = True  # yarn: round the ramp's ends outward to whole dims
    short_factor: tuple[float, ...] = ()  # longrope, one divisor per frequency
    long_factor: tuple[float, ...] = ()  # longrope, one divisor per frequency
    use_long_factor: bool = True  # longrope: the list every position rotates with

    def for_max_model_len(self, max_model_len: int) -> RopeScaling:
        """This scaling for an engine whose sequences reach `max_model_len` tokens."""
        if self.rope_type != "longrope":
            return self
        return replace(self, use_long_factor=max_model_len > self.original_max_position_embeddings)


def rope_scaling_from_hf(
    rs: dict[str, Any] | None,
    *,
    max_position_embeddings: int | None = None,
    original_max_position_embeddings: int | None = None,
) -> RopeScaling | None:
    """The scaling of one HF rope dict (`rope_scaling`, or a `rope_parameters` entry); None for
    plain RoPE. An unknown type is a ValueError naming the supported ones.

    `max_position_embeddings` is the model's: transformers derives a missing
    `original_max_position_embeddings` (llama3, yarn, longrope) and a missing `factor` (yarn,
    longrope) from it. `original_max_position_embeddings` is the config's top-level entry (Phi-3
    keeps it there); transformers prefers it to the dict's. A value that needs a missing one of
    these is a ValueError.
    """
    if not rs:
        return None
    rtype = rs.get("rope_type", rs.get("type", "default"))
    # Phi-3 configs name LongRoPE "su" or "yarn" (transformers' Phi3Config reads both as
    # longrope); such a "yarn" dict carries LongRoPE's per-frequency factor lists, a real one not.
    if rtype == "su" or (rtype == "yarn" and "short_factor" in rs):
        rtype = "longrope"
    if rtype not in ROPE_TYPES:
        raise ValueError(
            f"rope scaling type {rtype!r} is not supported ({', '.join(ROPE_TYPES[1:])})"
        )
    if rtype == "default":
        return None
    if rtype in ("linear", "dynamic"):
        return RopeScaling(rope_type=rtype, factor=float(_required(rs, "factor", rtype)))

    original = original_max_position_embeddings or rs.get("original_max_position_embeddings")
    original = original or max_position_embeddings
    if original is None:
        raise ValueError(
            f"rope type {rtype!r} needs original_max_position_embeddings or the model's "
            "max_position_embeddings"
        )
    original = int(original)
    if rtype == "llama3":
        return RopeScaling(
            rope_type=rtype,
            factor=float(_required(rs, "factor", rtype)),
            low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=original,
        )

    factor = rs.get("factor")
    if factor is None:  # the ratio of the extended context to the pretraining one
        if max_position_embeddings is None:
            raise ValueError(f"rope type {rtype!r} without a factor needs max_position_embeddings")
        factor = max_position_embeddings / original
    factor = float(factor)
    attention = rs.get("attention_factor")
    if rtype == "yarn":
        mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
        if attention is None:
            attention = (
                _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
                if mscale and mscale_all_dim
                else _yarn_mscale(factor, 1.0)
            )
        return RopeScaling(
            rope_type=rtype,
            factor=factor,
            original_max_position_embeddings=original,
            attention_factor=float(attention),
            # transformers reads a 0 or null beta as its default too
            beta_fast=float(rs.get("beta_fast") or 32.0),
            beta_slow=float(rs.get("beta_slow") or 1.0),
            mscale=None if mscale is None else float(mscale),
            mscale_all_dim=None if mscale_all_dim is None else float(mscale_all_dim),
            truncate=bool(rs.get("truncate", True)),
        )

    if attention is None:  # longrope
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return RopeScaling(
        rope_type=rtype,
        factor=factor,
        original_max_position_embeddings=original,
        attention_factor=float(attention),
        short_factor=tuple(float(f) for f in _required(rs, "short_factor", rtype)),
        long_factor=tuple(float(f) for f in _required(rs, "long_factor", rtype)),
        # vLLM's choice with its default max_model_len, the model's max_position_embeddings
        use_long_factor=max_position_embeddings is None or max_position_embeddings > original,
    )


def rope_scaling_to_hf(rs: RopeScaling) -> dict[str, Any]:
    """The HF dict `rope_scaling_from_hf` reads back as `rs` (the keys of its type only)."""
    hf: dict[str, Any] = {"rope_type": rs.rope_type, "factor": rs.factor}
    if rs.rope_type == "llama3":
        hf["low_freq_factor"] = rs.low_freq_factor
        hf["high_freq_factor"] = rs.high_freq_factor
    if rs.rope_type in _WITH_ORIGINAL_MAX:
        hf["original_max_position_embeddings"] = rs.original_max_position_embeddings
    if rs.rope_type in ("yarn", "longrope"):
        hf["attention_factor"] = rs.attention_factor
    if rs.rope_type == "yarn":
        hf.update(beta_fast=rs.beta_fast, beta_slow=rs.beta_slow, truncate=rs.truncate)
        for name in ("mscale", "mscale_all_dim"):
            if getattr(rs, name) is not None:
                hf[name] = getattr(rs, name)
    if rs.rope_type == "longrope":
        hf["short_factor"] = list(rs.short_factor)
        hf["long_factor"] = list(rs.long_factor)
    return hf


def _required(rs: dict[str, Any], key: str, rtype: str) -> Any:
    if rs.get(key) is None:
        raise ValueError(f"rope type {rtype!r} needs {key!r}")
    return rs[key]


def _yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN's magnitude correction 0.1 * mscale * ln(factor) + 1 (1 without extension)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0
