"""Attention backend dispatch.

Every backend has the ragged paged-attention signature of
`pallas_kernels.reference.ragged_paged_attention_reference` (see its docstring):

    fn(q [T, Hq, D], k_pages [L, N, Hkv, bs, D], v_pages, block_tables [S, P], kv_lens [S],
       query_start_loc [S + 1], layer, *, sm_scale, sliding_window, decode_only) -> [T, Hq, D]

(`decode_only` is a static promise that every sequence has exactly one query row.)

Backends: `reference` (pure jnp, runs anywhere, the oracle), `pallas` (Pallas GPU kernels),
`cuda` (XLA FFI custom call from `cuda_ext/`). The environment variable
`JAXLLM_ATTENTION_BACKEND` overrides the automatic choice.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import jax

BACKENDS = ("reference", "pallas", "cuda")
ENV_VAR = "JAXLLM_ATTENTION_BACKEND"

AttentionFn = Callable[..., jax.Array]


def default_backend() -> str:
    """`JAXLLM_ATTENTION_BACKEND` if set, else `pallas` on NVIDIA GPUs, else `reference`."""
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
    return "reference"


def resolve_backend(name: str | None) -> str:
    """Validate a backend name (None or "auto" picks the default)."""
    if name is None or name == "auto":
        return default_backend()
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    return name


@functools.cache
def get_attention_fn(name: str) -> AttentionFn:
    """The attention function of backend `name` (already resolved)."""
    if name == "reference":
        from pallas_kernels.reference import ragged_paged_attention_reference

        return ragged_paged_attention_reference
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
