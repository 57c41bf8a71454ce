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

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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
    try:
        res = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise RuntimeError(f"cuda_ext: could not run {nvcc} --version: {e}") from e
    if res.returncode != 0:
        raise RuntimeError(f"cuda_ext: {nvcc} --version failed: {res.stderr.strip()}")
    return res.stdout.strip()


def source_files() -> list[Path]:
    return sorted(p for p in CSRC.iterdir() if p.suffix in (".cu", ".cuh", ".h"))


def cache_key(
    sources: dict[str, bytes], nvcc_version_text: str, jax_version: str, flags=NVCC_FLAGS
) -> str:
    """Hex digest over the sources (name and bytes), the nvcc version, the JAX version and flags."""
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name] + b"\0")
    for part in (nvcc_version_text, jax_version, " ".join(flags)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxllm" / "cuda_ext"


def library_path(nvcc: str | None = None) -> Path:
    """Where the library for the current sources/toolchain lives (built or not)."""
    import jax

    nvcc = nvcc or require_nvcc()
    sources = {p.name: p.read_bytes() for p in source_files()}
    key = cache_key(sources, nvcc_version(nvcc), jax.__version__)
    return cache_dir() / f"{LIB_PREFIX}-{key}.so"


def build_library(force: bool = False, verbose: bool = False) -> Path:
    """Compile the library unless the cache already holds it; return its path."""
    import jax

    nvcc = require_nvcc()
    out = library_path(nvcc)
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        tmp_lib = Path(tmp) / out.name
        cmd = [
            nvcc,
            *NVCC_FLAGS,
            f"-I{jax.ffi.include_dir()}",
            f"-I{CSRC}",
            "-o",
            str(tmp_lib),
            str(CSRC / MAIN_SOURCE),
        ]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            raise RuntimeError(f"cuda_ext: could not run nvcc ({nvcc}): {e}") from e
        if verbose and res.stderr:
            print(res.stderr, file=sys.stderr)
        if res.returncode != 0:
            raise RuntimeError(
                f"cuda_ext: nvcc failed (exit {res.returncode}) building {out.name}:\n"
                f"{' '.join(cmd)}\n{res.stderr[-6000:]}"
            )
        os.replace(tmp_lib, out)  # atomic: concurrent builders never see a partial file
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--force", action="store_true", help="rebuild even if the cache holds the library"
    )
    ap.add_argument(
        "--verbose", action="store_true", help="print the nvcc command and its messages"
    )
    args = ap.parse_args(argv)
    try:
        path = build_library(force=args.force, verbose=args.verbose)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
