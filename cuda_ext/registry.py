"""Load the built library and register its FFI handlers with XLA (once per process).

`ensure_registered()` raises RuntimeError naming what is missing (a CUDA GPU visible to JAX, nvcc)
before it builds anything, so asking for the `cuda` backend on a machine without them fails clearly.
"""

from __future__ import annotations

import ctypes

import jax

import ffi_library

from . import build

# FFI target name -> exported handler symbol.
TARGETS = {
    "jaxllm_ragged_paged_attention": "JaxllmRaggedPagedAttention",
    "jaxllm_ragged_paged_attention_init": "JaxllmRaggedPagedAttentionInit",
}


def cuda_devices() -> list:
    """JAX's CUDA devices ([] when JAX has no CUDA backend)."""
    try:
        return list(jax.devices("cuda"))
    except RuntimeError:
        return []


def missing_requirements() -> list[str]:
    """What the `cuda` backend lacks here, in words (empty when it can run)."""
    missing = []
    if not cuda_devices():
        try:
            have = sorted({d.platform for d in jax.devices()})
        except RuntimeError:
            have = []
        missing.append(
            f"an NVIDIA GPU visible to JAX (JAX sees platforms {have}; install jax[cuda12] or "
            "jax[cuda13] on a machine with an NVIDIA GPU)"
        )
    if build.find_nvcc() is None:
        missing.append(
            "nvcc, the CUDA compiler (looked at $NVCC, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)"
        )
    return missing


_registration = ffi_library.Registration(
    who="cuda_ext",
    what="attention backend 'cuda'",
    hint="Use the 'pallas' or 'reference' backend.",
    targets=TARGETS,
    platform="CUDA",
    build=lambda: build.build_library(),
    missing=lambda: missing_requirements(),
)


def ensure_registered() -> ctypes.CDLL:
    """Build (or take from the cache) the library, load it and register its targets for CUDA."""
    return _registration.ensure()
