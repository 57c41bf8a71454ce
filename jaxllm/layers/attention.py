"""Attention backend dispatch.

Every backend has the ragged paged-attention signature of
`pallas_kernels.reference.ragged_paged_attention_reference` (see its docstring):

    fn(q [T, Hq, D], k_pages [L, N, Hkv, bs, D], v_pages, block_tables [S, P], kv_lens [S],
       query_start_loc [S + 1], layer, *, sm_scale, sliding_window, decode_only, k_scale,
       v_scale) -> [T, Hq, D]

(`decode_only` is a static promise that every sequence has exactly one query row. The pages are
q's dtype or float8 e4m3 (`kv_cache_dtype="fp8"`), which every backend reads as
`float32(page) * scale` with the static per-tensor `k_scale` / `v_scale`; see
`pallas_kernels.kv_quant`.)

Backends: `reference` (pure jnp, runs anywhere, the oracle), `cpu` (the default on the CPU: float32
queries over float32 or fp8 pages run `cpu_ext`'s C++ kernel where it can run, see
`JAXLLM_CPU_KERNELS`; other dtypes jnp laid out for XLA:CPU, `pallas_kernels.cpu_paged_attention`),
`pallas` (Pallas GPU kernels), `cuda` (XLA FFI custom call from `cuda_ext/`). The environment
variable `JAXLLM_ATTENTION_BACKEND` overrides the automatic choice.

Tensor parallelism: `sharded_attention_fn(name, mesh)` and `sharded_kv_write_fn(mesh)` run the
backend (and the KV-cache write) under `jax.shard_map` over the mesh's 'model' axis, so each device
runs the unchanged kernel on its own query heads and the KV heads they read (q split on Hq, the
cache on Hkv, the batch metadata replicated). With no mesh, or one device on 'model', they return
the plain functions.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
from jax.sharding import PartitionSpec as P

BACKENDS = ("reference", "cpu", "pallas", "cuda")
ENV_VAR = "JAXLLM_ATTENTION_BACKEND"

AttentionFn = Callable[..., jax.Array]


def default_backend() -> str:
    """`JAXLLM_ATTENTION_BACKEND` if set, else `pallas` on NVIDIA GPUs, `cpu` on the CPU, else
    `reference`."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env:
        if env not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={env!r} is not a backend; choose one of {BACKENDS}")
        return env
    if jax.default_backend() == "gpu":
        try:
            import pallas_kernels.ragged_paged_attention  # noqa: F401
        except ImportError:
            return "reference"
        return "pallas"
    if jax.default_backend() == "cpu":
        return "cpu"
    return "reference"


def resolve_backend(name: str | None) -> str:
    """Validate a backend name (None or "auto" picks the default)."""
    if name is None or name == "auto":
        return default_backend()
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    return name


def get_attention_fn(name: str) -> AttentionFn:
    """The attention function of backend `name` (already resolved); for `cpu`, as
    `JAXLLM_CPU_KERNELS` says now."""
    if name == "cpu":
        from jaxllm.models.packed_params import use_cpu_ext

        return _attention_fn(name, use_cpu_ext())
    return _attention_fn(name, False)


@functools.cache
def _attention_fn(name: str, cpu_ext: bool) -> AttentionFn:
    if name == "reference":
        from pallas_kernels.reference import ragged_paged_attention_reference

        return ragged_paged_attention_reference
    if name == "cpu":
        if cpu_ext:  # the C++ kernel for float32 queries, jnp for other dtypes
            from cpu_ext.attention import ragged_paged_attention_cpu_ext

            return ragged_paged_attention_cpu_ext
        from pallas_kernels.cpu_paged_attention import ragged_paged_attention_cpu

        return ragged_paged_attention_cpu
    if name == "pallas":
        from pallas_kernels.ragged_paged_attention import ragged_paged_attention

        return ragged_paged_attention
    if name == "cuda":
        try:
            from cuda_ext.attention import ragged_paged_attention_cuda
        except ImportError as e:
            raise RuntimeError(
                f"attention backend 'cuda' is not available: {e}. Use 'pallas' or 'reference'."
            ) from e
        return ragged_paged_attention_cuda
    raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")


MODEL_AXIS = "model"  # the tensor-parallel mesh axis (jaxllm.parallel.mesh.MODEL_AXIS)
_Q_SPEC = P(None, MODEL_AXIS, None)  # [T, H, D] split on heads
_PAGES_SPEC = P(None, None, MODEL_AXIS, None, None)  # [L, N, Hkv, bs, D] split on KV heads


def _tp(mesh) -> int:
    return 1 if mesh is None else int(mesh.shape[MODEL_AXIS])


def sharded_attention_fn(name: str, mesh=None) -> AttentionFn:
    """Backend `name`'s attention, run per device on its heads under shard_map over 'model'.

    Same signature as the backend; with `mesh` None or of one device on 'model', the backend itself.
    """
    from pallas_kernels.kv_quant import from_storage, to_storage

    fn = get_attention_fn(name)
    if _tp(mesh) == 1:
        return fn

    def attention(q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer, **static):
        dtype = k_pages.dtype  # quantized pages cross the shard_map as their bytes (kv_quant.py)

        def body(q, k, v, *rest):
            return fn(q, from_storage(k, dtype), from_storage(v, dtype), *rest, **static)

        return jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(_Q_SPEC, _PAGES_SPEC, _PAGES_SPEC, P(), P(), P(), P()),
            out_specs=_Q_SPEC,
            check_vma=False,  # kernels (pallas_call, FFI) carry no replication annotations
        )(
            q,
            to_storage(k_pages),
            to_storage(v_pages),
            block_tables,
            kv_lens,
            query_start_loc,
            layer,
        )

    return attention


def sharded_kv_write_fn(mesh=None) -> Callable:
    """`write_kv_pages` (pallas_kernels.reference) run per device on its KV heads: each device
    scatters only its heads' rows into its part of the cache (no gather of the cache). Keyword
    arguments (`k_scale`, `v_scale` of fp8 pages) are static."""
    from pallas_kernels.kv_quant import from_storage, to_storage
    from pallas_kernels.reference import write_kv_pages

    if _tp(mesh) == 1:
        return write_kv_pages

    def write(k_pages, v_pages, k, v, slot_mapping, layer, **static):
        dtype = k_pages.dtype  # quantized pages cross the shard_map as their bytes (kv_quant.py)

        def body(kp, vp, *rest):
            kp, vp = write_kv_pages(
                from_storage(kp, dtype), from_storage(vp, dtype), *rest, **static
            )
            return to_storage(kp), to_storage(vp)

        kp, vp = jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(_PAGES_SPEC, _PAGES_SPEC, _Q_SPEC, _Q_SPEC, P(), P()),
            out_specs=(_PAGES_SPEC, _PAGES_SPEC),
            check_vma=False,
        )(to_storage(k_pages), to_storage(v_pages), k, v, slot_mapping, layer)
        return from_storage(kp, dtype), from_storage(vp, dtype)

    return write
