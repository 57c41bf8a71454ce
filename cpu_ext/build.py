"""Build (and cache) the CPU shared library of `cpu_ext/csrc`.

    python -m cpu_ext.build [--force] [--verbose]     # prints the library's path

The library is compiled with the system C++ compiler (`$CXX`, else `g++`, else `c++`) for x86-64
with AVX2, FMA and F16C, against the XLA FFI headers of `jax.ffi.include_dir()`. It is cached under
`$JAXLLM_CPU_EXT_CACHE` (else `$XDG_CACHE_HOME/jaxllm/cpu_ext`, else `~/.cache/jaxllm/cpu_ext`) in a
file named after a hash of the sources, the compiler's version, the JAX version and the flags: a
change of any of them rebuilds. A build takes ~3 s; `build_library()` is what the first packed
matmul of a process calls.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import ffi_library

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("packed_matmul.cc", "grouped_matmul.cc", "paged_attention.cc", "quant_matmul.cc")
HEADERS = ("ffi_cpu_utils.h", "strip_kernel.h")
LIB_PREFIX = "libjaxllm_cpu_ext"
CACHE_ENV = "JAXLLM_CPU_EXT_CACHE"
CXX_ENV = "CXX"

CXX_FLAGS = (
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-mavx2",
    "-mfma",
    "-mf16c",  # float16 -> float32: GGUF block scales, fp8 KV pages (every AVX2 CPU has it)
    "-Wno-return-type",  # the FFI headers' switch-only functions
    "-Wno-attributes",
)


def find_cxx() -> str | None:
    """`$CXX` (a path or a name on PATH), else `g++`, else `c++` on PATH."""
    env = os.environ.get(CXX_ENV)
    if env:
        return shutil.which(env)
    return shutil.which("g++") or shutil.which("c++")


def require_cxx() -> str:
    cxx = find_cxx()
    if cxx is None:
        raise RuntimeError(
            "cpu_ext: no C++ compiler found ($CXX, g++ or c++ on PATH); install one "
            "(Debian: apt-get install g++) or set JAXLLM_CPU_KERNELS=xla"
        )
    return cxx


def cache_dir() -> Path:
    return ffi_library.cache_dir(CACHE_ENV, "cpu_ext")


def library_path(cxx: str | None = None) -> Path:
    """Where the library for the current sources/toolchain lives (built or not)."""
    import jax

    cxx = cxx or require_cxx()
    sources = {name: (CSRC / name).read_bytes() for name in SOURCES + HEADERS}
    version = ffi_library.tool_version(cxx, "cpu_ext")
    key = ffi_library.cache_key(sources, version, jax.__version__, " ".join(CXX_FLAGS))
    return cache_dir() / f"{LIB_PREFIX}-{key}.so"


def build_library(force: bool = False, verbose: bool = False) -> Path:
    """Compile the library unless the cache already holds it; return its path."""
    cxx = require_cxx()
    out = library_path(cxx)
    return ffi_library.compile_sources(
        out, cxx, CXX_FLAGS, CSRC, SOURCES, who="cpu_ext", force=force, verbose=verbose
    )


def main(argv: list[str] | None = None) -> int:
    return ffi_library.build_main(__doc__ or "", build_library, argv)


if __name__ == "__main__":
    raise SystemExit(main())
