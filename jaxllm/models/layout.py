"""The parameter layout of a registered model, read from its model module through the registry.

Each model module owns its layout and provides:
- `param_layout(config) -> list[ParamSpec]`: every leaf (path, HF tensor name, shape, transpose);
- `PARAM_LOGICAL_AXES`: leaf path -> logical axis names, one per dimension (jaxllm.parallel maps
  them to mesh axes);
- for GGUF files (optional): `GGUF_ARCHITECTURES` (GGUF `general.architecture` -> (HF
  architecture, q/k rows permuted)), `hf_to_gguf_name(hf_name)` and `gguf_tensor_names(config)`
  (its tensors' names in GGUF files), and `from_gguf_tensor(hf_name, array)` where llama.cpp
  stores a tensor differently from the HF checkpoint.
The loaders (jaxllm.model_loader) and jaxllm.parallel read these here, by `config.architecture`.
"""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.models.param_spec import ParamSpec, set_path
from jaxllm.models.registry import model_module, model_modules


def layout_of(config: ModelConfig) -> ModuleType:
    """The model module that owns `config`'s layout (a ValueError for unknown architectures)."""
    return model_module(config.architecture)


def param_layout(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter leaf of the model for `config`, in a fixed order."""
    return list(layout_of(config).param_layout(config))


def param_shapes(config: ModelConfig, dtype: str | None = None) -> dict:
    """The parameter pytree as `jax.ShapeDtypeStruct` leaves (dtype defaults to config.dtype)."""
    dt = jnp.dtype(dtype or config.dtype)
    tree: dict = {}
    for spec in param_layout(config):
        set_path(tree, spec.path, jax.ShapeDtypeStruct(spec.shape, dt))
    return tree


def logical_axes_table(config: ModelConfig) -> dict[tuple[str, ...], tuple[str, ...]]:
    """The model's table: parameter path -> logical axes (a superset of the config's leaves)."""
    return dict(layout_of(config).PARAM_LOGICAL_AXES)


def gguf_architectures() -> dict[str, tuple[str, bool]]:
    """GGUF `general.architecture` -> (HF architecture, q/k rows permuted), over every model."""
    out: dict[str, tuple[str, bool]] = {}
    for module in model_modules():
        out.update(getattr(module, "GGUF_ARCHITECTURES", {}))
    return out
