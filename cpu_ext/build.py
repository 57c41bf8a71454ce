"""Build (and cache) the CPU shared library of `cpu_ext/csrc`.

    python -m cpu_ext.build [--force] [--verbose]     # prints the library's path

The library is compiled with the system C++ compiler (`$CXX`, else `g++`, else `c++`) for x86-64
with AVX2 and FMA, against the XLA FFI headers of `jax.ffi.include_dir()`. It is cached under
`$JAXLLM_CPU_EXT_CACHE` (else `$XDG_CACHE_HOME/jaxllm/cpu_ext`, else `~/.cache/jaxllm/cpu_ext`) in a
file named after a hash of the sources, the compiler's version, the JAX version and the flags: a
change of any of them rebuilds. A build takes ~3 s; `build_library()` is what the first packed
matmul of a process calls.
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
SOURCES = ("packed_matmul.cc", "paged_attention.cc")
HEADERS = ("ffi_cpu_utils.h",)
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


def compiler_version(cxx: str) -> str:
    try:
        res = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise RuntimeError(f"cpu_ext: could not run {cxx} --version: {e}") from e
    if res.returncode != 0:
        raise RuntimeError(f"cpu_ext: {cxx} --version failed: {res.stderr.strip()}")
    return res.stdout.strip()


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxllm" / "cpu_ext"


def library_path(cxx: str | None = None) -> Path:
    """Where the library for the current sources/toolchain lives (built or not)."""
    import jax

    cxx = cxx or require_cxx()
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    for part in (compiler_version(cxx), jax.__version__, " ".join(CXX_FLAGS)):
        h.update(part.encode() + b"\0")
    return cache_dir() / f"{LIB_PREFIX}-{h.hexdigest()[:24]}.so"


def build_library(force: bool = False, verbose: bool = False) -> Path:
    """Compile the library unless the cache already holds it; return its path."""
    import jax

    cxx = require_cxx()
    out = library_path(cxx)
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        tmp_lib = Path(tmp) / out.name
        cmd = [cxx, *CXX_FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{CSRC}", "-o", str(tmp_lib)]
        cmd += [str(CSRC / name) for name in SOURCES]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            raise RuntimeError(f"cpu_ext: could not run {cxx}: {e}") from e
        if verbose and res.stderr:
            print(res.stderr, file=sys.stderr)
        if res.returncode != 0:
            raise RuntimeError(
                f"cpu_ext: {cxx} failed (exit {res.returncode}) building {out.name}:\n"
                f"{' '.join(cmd)}\n{res.stderr[-6000:]}"
            )
        os.replace(tmp_lib, out)  # atomic: concurrent builders never see a partial file
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache holds it")
    ap.add_argument("--verbose", action="store_true", help="print the command and its messages")
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
