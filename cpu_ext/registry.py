"""Load the built CPU library and register its FFI handlers with XLA (once per process).

`missing_requirements()` says in words what this machine lacks for its kernels (an x86-64 CPU
with AVX2, FMA and F16C, a C++ compiler); `ensure_registered()` raises RuntimeError naming it before
building anything.
"""

from __future__ import annotations

import ctypes
import platform

import ffi_library

from . import build

# FFI target name -> exported handler symbol.
TARGETS = {
    "jaxllm_packed_matmul": "JaxllmPackedMatmul",
    "jaxllm_grouped_matmul": "JaxllmGroupedMatmul",
    "jaxllm_paged_attention": "JaxllmPagedAttention",
    "jaxllm_int8_matmul": "JaxllmInt8Matmul",
    "jaxllm_gguf_matmul": "JaxllmGgufMatmul",
}
REQUIRED_CPU_FLAGS = ("avx2", "fma", "f16c")


def cpu_flags() -> set[str]:
    """The instruction-set flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def missing_requirements() -> list[str]:
    """What the packed matmul lacks here, in words (empty when it can run)."""
    missing = []
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        missing.append(f"an x86-64 CPU (this is {machine or 'unknown'})")
    else:
        lacking = [f for f in REQUIRED_CPU_FLAGS if f not in cpu_flags()]
        if lacking:
            missing.append(f"CPU support for {', '.join(lacking).upper()}")
    if build.find_cxx() is None:
        missing.append("a C++ compiler ($CXX, g++ or c++ on PATH)")
    return missing


_registration = ffi_library.Registration(
    who="cpu_ext",
    what="cpu_ext (the C++ CPU kernels)",
    hint="Set JAXLLM_CPU_KERNELS=xla to use XLA's own ops.",
    targets=TARGETS,
    platform="cpu",
    build=lambda: build.build_library(),
    missing=lambda: missing_requirements(),
)


def ensure_registered() -> ctypes.CDLL:
    """Build (or take from the cache) the library, load it and register its targets for the CPU."""
    return _registration.ensure()
