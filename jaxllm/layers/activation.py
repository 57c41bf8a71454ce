"""The MLP activations of HF's `hidden_act` names (`jaxllm.config.HIDDEN_ACTS`)."""

from __future__ import annotations

import flax.linen as nn


def activation(name: str):
    """The activation function of HF's `hidden_act` name."""
    if name == "silu":
        return nn.silu
    if name == "gelu":  # exact (erf)
        return lambda x: nn.gelu(x, approximate=False)
    return lambda x: nn.gelu(x, approximate=True)  # gelu_pytorch_tanh, gelu_new
