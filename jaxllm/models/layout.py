"""The parameter layout of a registered model, read from its model module through the registry.

Each model module owns its layout and provides:
- `param_layout(config) -> list[ParamSpec]`: every leaf (path, HF tensor name, shape, transpose);
- `PARAM_LOGICAL_AXES`: leaf path -> logical axis names, one per dimension (jaxllm.parallel maps
  them to mesh axes);
- for GGUF files (optional): `GGUF_ARCHITECTURES` (GGUF `general.architecture` -> (HF
  architecture, q/k rows permuted)), `hf_to_gguf_name(hf_name)` and `gguf_tensor_names(config)`
  (its tensors' names in GGUF files), and `from_gguf_tensor(hf_name, array)` where llama.cpp
  stores a tensor differently from the HF checkpoint. A mixture-of-experts model whose experts
  llama.cpp stacks into one tensor adds `hf_to_gguf_tensor(hf_name) -> (GGUF name, expert index
  or None)`, and `GGUF_MOE_ARCHITECTURES` where its files carry a dense model's architecture
  name with experts (Mixtral's are `llama` files).
The loaders (jaxllm.model_loader) and jaxllm.parallel read these here, by `config.architecture`.
"""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.models.param_spec import ParamSpec, set_path
from jaxllm.models.registry import model_module, model_modules
from jaxllm.quantization.layout import quantized_leaves


def layout_of(config: ModelConfig) -> ModuleType:
    """The model module that owns `config`'s layout (a ValueError for unknown architectures)."""
    return model_module(config.architecture)


def param_layout(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter leaf of the model for `config`, in a fixed order."""
    return list(layout_of(config).param_layout(config))


def quantizable_kernels(config: ModelConfig) -> list[tuple[str, ...]]:
    """Paths of the decoder layers' linear kernels (what int8/fp8 quantize; not the LM head).

    Mixture-of-experts models raise: their expert weights have no quantized format yet."""
    if config.is_moe:
        raise ValueError(
            f"{config.architecture}: int8/fp8 quantization of mixture-of-experts models is not "
            "supported yet (their expert weights have no quantized format); load it unquantized"
        )
    return [
        spec.path
        for spec in param_layout(config)
        if spec.transpose and spec.stacked and spec.path[-1] == "kernel"
    ]


StoredLeaf = tuple[tuple[str, ...], tuple[int, ...], object, tuple[str, ...] | None]


def stored_leaves(config: ModelConfig, with_axes: bool = False) -> list[StoredLeaf]:
    """Every leaf the params hold for `config`: (path, shape, dtype or None for config.dtype,
    logical axes or None). The layout's float leaves, except those `config.quantization` stores
    in a quantized format, which are replaced by that format's leaves (jaxllm.quantization)."""
    table = logical_axes_table(config) if with_axes else {}
    q = config.quantization
    out: list[StoredLeaf] = []
    for spec in param_layout(config):
        axes = table.get(spec.path)
        fmt = q.format_of(spec.path) if q is not None else None
        if fmt is None:
            out.append((spec.path, spec.shape, None, axes))
        else:
            out += quantized_leaves(spec.path, spec.shape, axes, fmt)
    return out


def param_shapes(config: ModelConfig, dtype: str | None = None) -> dict:
    """The parameter pytree as `jax.ShapeDtypeStruct` leaves (float leaves in `dtype`, default
    config.dtype; quantized leaves in their formats' dtypes)."""
    dt = jnp.dtype(dtype or config.dtype)
    tree: dict = {}
    for path, shape, leaf_dtype, _ in stored_leaves(config):
        set_path(tree, path, jax.ShapeDtypeStruct(shape, leaf_dtype or dt))
    return tree


def logical_axes_table(config: ModelConfig) -> dict[tuple[str, ...], tuple[str, ...]]:
    """The model's table: parameter path -> logical axes (a superset of the config's leaves)."""
    return dict(layout_of(config).PARAM_LOGICAL_AXES)


def gguf_architectures(experts: bool = False) -> dict[str, tuple[str, bool]]:
    """GGUF `general.architecture` -> (HF architecture, q/k rows permuted), over every model; with
    `experts`, of files whose layers are mixtures of experts (`{arch}.expert_count` > 0), where
    that names another model (`GGUF_MOE_ARCHITECTURES`: a `llama` file with experts is Mixtral)."""
    modules = model_modules()
    out: dict[str, tuple[str, bool]] = {}
    for module in modules:
        out.update(getattr(module, "GGUF_ARCHITECTURES", {}))
    if experts:
        for module in modules:
            out.update(getattr(module, "GGUF_MOE_ARCHITECTURES", {}))
    return out
