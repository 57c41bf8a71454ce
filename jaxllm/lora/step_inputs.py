"""`LoRAStep`: what a model step needs to apply each token's adapter (a JAX pytree)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

# The key of the adapter table in the step's params (`ModelRunner` puts it there; the decoder moves
# it into `StepBatch.lora` for the layers).
LORA_PARAMS = "lora"


@dataclasses.dataclass(frozen=True)
class LoRAStep:
    """`slots` [T] int32: each token's slot in the table (-1: the base model), packed by the host
    with the step's other inputs; `weights`: projection name -> (A [S, L, in, r], B [S, L, r, out]),
    the device table (empty in the host's copy: the table stays on the device)."""

    slots: Any
    weights: dict = dataclasses.field(default_factory=dict)


jax.tree_util.register_dataclass(LoRAStep, data_fields=["slots", "weights"], meta_fields=[])


def token_slots(
    row_slots: np.ndarray,  # [n_seq] int32: each scheduled row's slot (-1: the base model)
    query_start_loc: np.ndarray,  # [S + 1] int32: the step's cumulative query lengths
    num_tokens: int,  # T, the padded token count
) -> np.ndarray:  # [T] int32, -1 for padding tokens
    """Host side: each token's slot, from its row's (rows hold consecutive tokens)."""
    n = len(row_slots)
    counts = np.diff(query_start_loc[: n + 1])  # [n_seq]
    out = np.full(num_tokens, -1, np.int32)
    out[: int(counts.sum())] = np.repeat(row_slots, counts)
    return out
