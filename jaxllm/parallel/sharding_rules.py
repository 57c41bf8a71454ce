"""The one sharding table: logical axis names -> mesh axes, and each parameter's logical axes.

Every parameter leaf of a model's layout has a tuple of logical axis names, one per dimension,
which the model declares (`PARAM_LOGICAL_AXES` of its model module, e.g.
jaxllm/models/llama_layout.py, read through `jaxllm.models.layout`); `LOGICAL_AXIS_RULES` maps
each logical name to a mesh axis (`'model'` splits it over the tensor-parallel devices) or None
(replicated). The KV cache [L, N, Hkv, bs, Dh] is split by KV heads (see heads.py for Hkv < tp).

A logical axis whose dimension the mesh axis does not divide is an error, except the vocabulary
(`REPLICATE_IF_UNEVEN`), which is then replicated (e.g. a vocabulary of 32001).
"""

from __future__ import annotations

from collections.abc import Mapping

from jax.sharding import PartitionSpec

from jaxllm.config import ModelConfig
from jaxllm.layers.moe import expert_axis_rules
from jaxllm.models.layout import stored_leaves
from jaxllm.parallel.mesh import MODEL_AXIS
from jaxllm.quantization.layout import check_tensor_parallel

# logical axis -> mesh axis (None: replicated)
LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "layers": None,  # the stacked layer axis L of nn.scan
    "embed": None,  # hidden size D
    "vocab": MODEL_AXIS,
    "q_heads": MODEL_AXIS,  # Hq * Dh (projection columns / o_proj rows)
    "kv_heads": MODEL_AXIS,  # Hkv * Dh in projections; Hkv in the KV cache
    "mlp": MODEL_AXIS,  # intermediate size F
    "kv_blocks": None,  # KV cache pages
    "block_slots": None,  # tokens within a page
    "head_dim": None,
    "router": None,  # a MoE router's experts E (and the shared expert's gate): replicated
    # a MoE layer's experts E and their width F: set by `jaxllm.layers.moe.expert_axis_rules`
    "experts": None,
    "expert_mlp": MODEL_AXIS,
}


def rules_for(config: ModelConfig) -> dict[str, str | None]:
    """LOGICAL_AXIS_RULES with the experts' axes of `config`."""
    return {**LOGICAL_AXIS_RULES, **expert_axis_rules(config.expert_parallel)}


REPLICATE_IF_UNEVEN = frozenset({"vocab"})

KV_CACHE_LOGICAL_AXES = ("layers", "kv_blocks", "kv_heads", "block_slots", "head_dim")


def logical_to_spec(
    axes: tuple[str, ...],
    shape: tuple[int, ...] | None = None,
    axis_sizes: Mapping[str, int] | None = None,
    what: str = "array",
    rules: Mapping[str, str | None] = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """The PartitionSpec of an array with logical `axes`.

    With `shape` and `axis_sizes` (mesh axis -> size), checks divisibility: an uneven split raises
    a ValueError naming `what`, except for REPLICATE_IF_UNEVEN axes, which are replicated.
    """
    if shape is not None and len(shape) != len(axes):
        raise ValueError(
            f"{what}: {len(axes)} logical axes {axes} for a {len(shape)}-d shape {shape}"
        )
    out = []
    for i, name in enumerate(axes):
        if name not in rules:
            raise ValueError(f"{what}: logical axis {name!r} has no sharding rule")
        mesh_axis = rules[name]
        if mesh_axis is not None and shape is not None and axis_sizes is not None:
            n = int(axis_sizes.get(mesh_axis, 1))
            if shape[i] % n:
                if name in REPLICATE_IF_UNEVEN:
                    mesh_axis = None
                else:
                    raise ValueError(
                        f"{what}: dimension {i} ({name}, size {shape[i]}) does not "
                        f"split evenly over mesh axis {mesh_axis!r} of size {n}"
                    )
        out.append(mesh_axis)
    while out and out[-1] is None:  # P('a', None) == P('a'); keep specs in their short form
        out.pop()
    return PartitionSpec(*out)


def param_logical_axes(config: ModelConfig) -> dict[tuple[str, ...], tuple[str, ...]]:
    """path -> logical axes of every stored leaf of `config` (`jaxllm.models.layout.
    stored_leaves`: quantized leaves take axes derived from their float leaf's); raises if a leaf
    has no entry in the model's table."""
    out = {}
    for path, shape, _, axes in stored_leaves(config, with_axes=True):
        if axes is None:
            raise ValueError(f"parameter {'/'.join(path)} has no entry in PARAM_LOGICAL_AXES")
        if len(axes) != len(shape):
            raise ValueError(
                f"parameter {'/'.join(path)}: logical axes {axes} do not match its shape {shape}"
            )
        out[path] = axes
    return out


def param_partition_specs(
    config: ModelConfig, axis_sizes: Mapping[str, int] | None = None, replicate_kv: bool = False
) -> dict[tuple[str, ...], PartitionSpec]:
    """path -> PartitionSpec of every parameter (`replicate_kv`: k/v projections replicated,
    the layout loaders use before repeating KV heads)."""
    shapes = {path: shape for path, shape, _, _ in stored_leaves(config)}
    rules = rules_for(config)
    tp = int((axis_sizes or {}).get(MODEL_AXIS, 1))
    if config.quantization is not None and tp > 1:
        # a stored format must split the input width of row-parallel kernels (o_proj, down)
        float_leaves = stored_leaves(config.replace(quantization=None), with_axes=True)
        sharded_in = {
            p
            for p, _, _, a in float_leaves
            if p[-1] == "kernel" and a and rules.get(a[-2]) == MODEL_AXIS
        }
        shapes_f = {p: shape for p, shape, _, _ in float_leaves}
        check_tensor_parallel(config.quantization, shapes_f, sharded_in, tp)
    out = {}
    for path, axes in param_logical_axes(config).items():
        r = rules if not (replicate_kv and "kv_heads" in axes) else {**rules, "kv_heads": None}
        out[path] = logical_to_spec(axes, shapes[path], axis_sizes, "/".join(path), r)
    return out
