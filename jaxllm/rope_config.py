"""Rotary-embedding settings of a model, parsed from an HF config (host side: no JAX).

`RopeScaling` is one HF `rope_scaling` / `rope_parameters` entry; `rope_scaling_from_hf` reads it.
The frequencies themselves are computed in `jaxllm.layers.rotary`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# rope types jaxllm computes (HF `rope_type`; the older `type` key is read too)
ROPE_TYPES = ("default", "llama3", "linear")


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3 style rope scaling ("llama3"), or linear scaling. No field applies to plain RoPE."""

    rope_type: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


def rope_scaling_from_hf(rs: dict[str, Any] | None) -> RopeScaling | None:
    """The scaling of one HF rope dict (`rope_scaling`, or a `rope_parameters` entry); None for
    plain RoPE. An unknown type is a ValueError naming the supported ones."""
    if not rs:
        return None
    rtype = rs.get("rope_type", rs.get("type", "default"))
    if rtype not in ROPE_TYPES:
        raise ValueError(
            f"rope scaling type {rtype!r} is not supported ({', '.join(ROPE_TYPES[1:])})"
        )
    if rtype == "default":
        return None
    return RopeScaling(
        rope_type=rtype,
        factor=float(rs.get("factor", 1.0)),
        low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
        high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(rs.get("original_max_position_embeddings", 8192)),
    )


def rope_scaling_to_hf(rs: RopeScaling) -> dict[str, Any]:
    """The HF dict `rope_scaling_from_hf` reads back as `rs`."""
    return {
        "rope_type": rs.rope_type,
        "factor": rs.factor,
        "low_freq_factor": rs.low_freq_factor,
        "high_freq_factor": rs.high_freq_factor,
        "original_max_position_embeddings": rs.original_max_position_embeddings,
    }
