"""Tensor and data parallelism over JAX device meshes (see DESIGN.md and README, multi-GPU).

mesh.py: the ('data', 'model') mesh; sharding_rules.py: the one table of logical axes -> mesh axes
(each model declares its parameters' logical axes in its layout, jaxllm.models.layout);
heads.py: how heads split and KV heads are replicated; sharding.py: NamedSharding pytrees and
placing weights into them; multihost.py (import it explicitly): jax.distributed runs in lockstep.
"""

from jaxllm.parallel.heads import (
    check_tensor_parallel,
    expand_kv_heads,
    kv_head_replicas,
    tp_model_config,
)
from jaxllm.parallel.mesh import (
    AXIS_NAMES,
    DATA_AXIS,
    MODEL_AXIS,
    check_mesh,
    make_mesh,
    model_axis_size,
    replica_meshes,
    resolve_mesh,
)
from jaxllm.parallel.sharding import (
    host_placer,
    kv_cache_sharding,
    param_shardings,
    replicated,
    shard_params,
)
from jaxllm.parallel.sharding_rules import (
    LOGICAL_AXIS_RULES,
    logical_to_spec,
    param_logical_axes,
    param_partition_specs,
)

__all__ = [
    "AXIS_NAMES",
    "DATA_AXIS",
    "MODEL_AXIS",
    "LOGICAL_AXIS_RULES",
    "check_mesh",
    "check_tensor_parallel",
    "expand_kv_heads",
    "host_placer",
    "kv_cache_sharding",
    "kv_head_replicas",
    "logical_to_spec",
    "make_mesh",
    "model_axis_size",
    "param_logical_axes",
    "param_partition_specs",
    "param_shardings",
    "replica_meshes",
    "replicated",
    "resolve_mesh",
    "shard_params",
    "tp_model_config",
]
