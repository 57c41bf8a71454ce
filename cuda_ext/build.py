"""Build (and cache) the CUDA shared library of `cuda_ext/csrc`.

    python -m cuda_ext.build [--force] [--verbose]     # prints the library's path

The library is compiled with nvcc for sm_90 (Hopper machine code) plus compute_80 PTX (so other
cards from Ampere on JIT it), against the XLA FFI headers of `jax.ffi.include_dir()`, with the CUDA
runtime linked statically. It is cached under `$JAXLLM_CUDA_EXT_CACHE` (else
`$XDG_CACHE_HOME/jaxllm/cuda_ext`, else `~/.cache/jaxllm/cuda_ext`) in a file named after a hash of
the sources, the nvcc version, the JAX version and the flags: a change of any of them rebuilds.
`build_library()` is what the first use of the `cuda` backend calls.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import ffi_library

CSRC = Path(__file__).resolve().parent / "csrc"
MAIN_SOURCE = "ragged_paged_attention.cu"
LIB_PREFIX = "libjaxllm_cuda_ext"
CACHE_ENV = "JAXLLM_CUDA_EXT_CACHE"
NVCC_ENV = "NVCC"
HANDLER_SYMBOLS = ("JaxllmRaggedPagedAttention", "JaxllmRaggedPagedAttentionInit")

NVCC_FLAGS = (
    "-O3",
    "-std=c++17",
    "--shared",
    "-Xcompiler=-fPIC",
    "-Xcompiler=-Wno-return-type",  # the FFI headers' switch-only functions
    "-diag-suppress=940,2473",
    "-lineinfo",  # source lines in compute-sanitizer / ncu reports
    "--threads=0",
    "-cudart=static",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_80,code=compute_80",
)


def find_nvcc() -> str | None:
    """`$NVCC`, else `nvcc` on PATH, else `$CUDA_HOME/bin/nvcc` or `/usr/local/cuda/bin/nvcc`."""
    env = os.environ.get(NVCC_ENV)
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            cand = os.path.join(root, "bin", "nvcc")
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    return None


def require_nvcc() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError(
            "cuda_ext: nvcc (the CUDA compiler) was not found: looked at $NVCC, PATH, "
            "$CUDA_HOME/bin and /usr/local/cuda/bin. Install the CUDA toolkit (or set "
            "NVCC=/path/to/nvcc), or use the 'pallas' or 'reference' attention backend."
        )
    return nvcc


def nvcc_version(nvcc: str) -> str:
    return ffi_library.tool_version(nvcc, "cuda_ext")


def source_files() -> list[Path]:
    return sorted(p for p in CSRC.iterdir() if p.suffix in (".cu", ".cuh", ".h"))


def cache_key(
    sources: dict[str, bytes], nvcc_version_text: str, jax_version: str, flags=NVCC_FLAGS
) -> str:
    """Hex digest over the sources (name and bytes), the nvcc version, the JAX version and flags."""
    return ffi_library.cache_key(sources, nvcc_version_text, jax_version, " ".join(flags))


def cache_dir() -> Path:
    return ffi_library.cache_dir(CACHE_ENV, "cuda_ext")


def library_path(nvcc: str | None = None) -> Path:
    """Where the library for the current sources/toolchain lives (built or not)."""
    import jax

    nvcc = nvcc or require_nvcc()
    sources = {p.name: p.read_bytes() for p in source_files()}
    key = cache_key(sources, nvcc_version(nvcc), jax.__version__)
    return cache_dir() / f"{LIB_PREFIX}-{key}.so"


def build_library(force: bool = False, verbose: bool = False) -> Path:
    """Compile the library unless the cache already holds it; return its path."""
    nvcc = require_nvcc()
    out = library_path(nvcc)
    return ffi_library.compile_sources(
        out, nvcc, NVCC_FLAGS, CSRC, (MAIN_SOURCE,), who="cuda_ext", force=force, verbose=verbose
    )


def main(argv: list[str] | None = None) -> int:
    return ffi_library.build_main(__doc__ or "", build_library, argv)


if __name__ == "__main__":
    raise SystemExit(main())
