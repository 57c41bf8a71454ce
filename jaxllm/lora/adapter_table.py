"""The device-side adapter table: `max_loras` slots of stacked, zero-padded A and B per target.

Per projection name: A [S, L, in, R] and B [S, L, R, out] (S = max_loras, R = max_lora_rank, the
model's dtype; an adapter of rank r < R fills the first r of R, the rest stay zero, which adds
nothing). Writing an adapter into a slot is one jitted update with the slot as data: loading a new
adapter never recompiles the step, and the arrays keep their shapes. The update makes new arrays
(no donation), so a step still in flight keeps reading the table it was dispatched with.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.lora.config import TARGET_MODULES
from jaxllm.lora.peft_adapter import LoRAAdapter, projection_shapes


@jax.jit
def _write_slot(table: dict, slot: jax.Array, entry: dict) -> dict:
    """`table` with slot `slot` of every projection set to `entry` ([L, in, R], [L, R, out])."""
    return {
        name: {k: t[k].at[slot].set(entry[name][k].astype(t[k].dtype)) for k in ("a", "b")}
        for name, t in table.items()
    }


class AdapterTable:
    def __init__(
        self,
        model_config: Any,
        max_loras: int,
        max_lora_rank: int,
        dtype: Any = None,
        sharding: Any = None,
    ) -> None:
        self.max_loras = max_loras
        self.rank = max_lora_rank
        self.num_layers = model_config.num_hidden_layers
        self.dtype = jnp.dtype(dtype or model_config.dtype)
        self.shapes = projection_shapes(model_config)
        S, L, R = max_loras, self.num_layers, max_lora_rank
        self.sharding = sharding
        table = {}
        for name in TARGET_MODULES:
            d_in, d_out = self.shapes[name]
            table[name] = {
                "a": np.zeros((S, L, d_in, R), self.dtype),  # [S, L, in, R]
                "b": np.zeros((S, L, R, d_out), self.dtype),  # [S, L, R, out]
            }
        self.weights: dict = jax.device_put(table, sharding)

    def write(self, slot: int, adapter: LoRAAdapter | None) -> None:
        """Put `adapter` (None: zeros) into `slot`."""
        if not 0 <= slot < self.max_loras:
            raise ValueError(f"slot {slot} outside [0, {self.max_loras})")
        L, R = self.num_layers, self.rank
        entry = {}
        for name, (d_in, d_out) in self.shapes.items():
            a = np.zeros((L, d_in, R), np.float32)  # [L, in, R]
            b = np.zeros((L, R, d_out), np.float32)  # [L, R, out]
            if adapter is not None and name in adapter.weights:
                aa, bb = adapter.weights[name]
                a[:, :, : aa.shape[2]] = aa
                b[:, : bb.shape[1], :] = bb
            entry[name] = {"a": a, "b": b}
        self.weights = _write_slot(self.weights, np.int32(slot), entry)
