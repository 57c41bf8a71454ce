"""Device meshes for tensor and data parallelism: a 2-D `('data', 'model')` grid of devices.

`model` is the tensor-parallel axis (attention heads, MLP columns and the vocabulary are split over
it); `data` groups independent engine replicas (each replica runs on one row of the grid, see
`replica_meshes`). A researcher may build their own `jax.sharding.Mesh` with these axis names and
pass it wherever a mesh is accepted; `check_mesh` validates it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

DATA_AXIS = "data"
MODEL_AXIS = "model"
AXIS_NAMES = (DATA_AXIS, MODEL_AXIS)


def make_mesh(
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A `('data', 'model')` mesh of shape (data_parallel_size, tensor_parallel_size).

    `devices` defaults to `jax.devices()`; the first dp * tp of them are used, row-major (the
    devices of one model replica are consecutive, so on one host a replica's devices are
    neighbours on NVLink). Raises ValueError when there are too few devices.
    """
    tp, dp = int(tensor_parallel_size), int(data_parallel_size)
    if tp < 1 or dp < 1:
        raise ValueError(f"tensor_parallel_size ({tp}) and data_parallel_size ({dp}) must be >= 1")
    devices = list(jax.devices() if devices is None else devices)
    need = tp * dp
    if len(devices) < need:
        raise ValueError(
            f"tensor_parallel_size {tp} x data_parallel_size {dp} needs {need} devices, but only "
            f"{len(devices)} are available ({jax.default_backend()}); on the CPU, set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={need} before importing jax"
        )
    grid = np.empty((dp, tp), dtype=object)
    for i, d in enumerate(devices[:need]):
        grid[i // tp, i % tp] = d
    return Mesh(grid, AXIS_NAMES)


def check_mesh(mesh: Mesh) -> Mesh:
    """Raise a ValueError unless `mesh` has exactly the axes ('data', 'model'); returns it."""
    if not isinstance(mesh, Mesh):
        raise ValueError(f"expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    if tuple(mesh.axis_names) != AXIS_NAMES:
        raise ValueError(
            f"mesh axes must be {AXIS_NAMES} (data, then model), got {tuple(mesh.axis_names)}"
        )
    return mesh


def model_axis_size(mesh: Mesh | None) -> int:
    """The tensor-parallel degree of `mesh` (1 for None)."""
    return 1 if mesh is None else int(mesh.shape[MODEL_AXIS])


def replica_meshes(mesh: Mesh) -> list[Mesh]:
    """One `(1, tp)` mesh per row of the `data` axis: the device group of each engine replica."""
    check_mesh(mesh)
    return [Mesh(mesh.devices[i : i + 1], AXIS_NAMES) for i in range(mesh.shape[DATA_AXIS])]


def resolve_mesh(
    mesh: Mesh | None, tensor_parallel_size: int = 1, data_parallel_size: int = 1
) -> Mesh:
    """`mesh` (checked against the sizes) if given, else a new mesh of those sizes."""
    if mesh is None:
        return make_mesh(tensor_parallel_size, data_parallel_size)
    check_mesh(mesh)
    got = (int(mesh.shape[DATA_AXIS]), int(mesh.shape[MODEL_AXIS]))
    if got != (data_parallel_size, tensor_parallel_size):
        raise ValueError(
            f"the given mesh has data={got[0]}, model={got[1]}, but data_parallel_size="
            f"{data_parallel_size} and tensor_parallel_size={tensor_parallel_size} were asked for"
        )
    return mesh
