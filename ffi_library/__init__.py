"""What `cuda_ext` and `cpu_ext` share about their native libraries: a build cached by a hash of
its inputs, an atomic compile, loading the library and registering its XLA FFI handlers, and the
`python -m <package>.build` command line. Standard library only (JAX is imported where needed).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def cache_key(sources: Mapping[str, bytes], *parts: str) -> str:
    """Hex digest over the sources (name and bytes) and the other parts (tool versions, flags)."""
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name] + b"\0")
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:24]


def cache_dir(env_var: str, name: str) -> Path:
    """`$env_var`, else `$XDG_CACHE_HOME/jaxllm/<name>`, else `~/.cache/jaxllm/<name>`."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxllm" / name


def tool_version(tool: str, who: str) -> str:
    """`tool --version`'s output; RuntimeError (prefixed `who: `) when it cannot run."""
    try:
        res = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise RuntimeError(f"{who}: could not run {tool} --version: {e}") from e
    if res.returncode != 0:
        raise RuntimeError(f"{who}: {tool} --version failed: {res.stderr.strip()}")
    return res.stdout.strip()


def compile_library(
    out: Path,
    command: Callable[[Path], list[str]],
    *,
    who: str,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """`out` when the cache holds it (unless `force`); else run `command(tmp_path)` (a compiler
    writing the library to tmp_path) and move the result to `out` atomically, so concurrent
    builders never see a partial file. RuntimeError with the compiler's messages on failure."""
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        tmp_lib = Path(tmp) / out.name
        cmd = command(tmp_lib)
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            raise RuntimeError(f"{who}: could not run {cmd[0]}: {e}") from e
        if verbose and res.stderr:
            print(res.stderr, file=sys.stderr)
        if res.returncode != 0:
            raise RuntimeError(
                f"{who}: {cmd[0]} failed (exit {res.returncode}) building {out.name}:\n"
                f"{' '.join(cmd)}\n{res.stderr[-6000:]}"
            )
        os.replace(tmp_lib, out)
    return out


def compile_sources(
    out: Path,
    compiler: str,
    flags: Sequence[str],
    csrc: Path,
    sources: Sequence[str],
    *,
    who: str,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """`compile_library` of `sources` (names in `csrc`) with `compiler flags -I<XLA FFI headers>
    -I<csrc> -o <out> sources...`: the command both packages build their library with."""
    import jax

    include = [f"-I{jax.ffi.include_dir()}", f"-I{csrc}"]
    paths = [str(csrc / name) for name in sources]
    return compile_library(
        out,
        lambda tmp: [compiler, *flags, *include, "-o", str(tmp), *paths],
        who=who,
        force=force,
        verbose=verbose,
    )


def load_and_register(path: Path, targets: Mapping[str, str], platform: str, who: str):
    """Load the library at `path` and register each FFI target name -> exported handler symbol
    for `platform` ("CUDA", "cpu")."""
    import jax

    try:
        lib = ctypes.cdll.LoadLibrary(str(path))
    except OSError as e:
        raise RuntimeError(f"{who}: could not load {path}: {e}") from e
    for target, symbol in targets.items():
        jax.ffi.register_ffi_target(
            target, jax.ffi.pycapsule(getattr(lib, symbol)), platform=platform
        )
    return lib


class Registration:
    """A native library loaded and registered at most once a process (thread-safe).

    `ensure()` returns the loaded library; on its first call it checks `missing()` (what the
    machine lacks, in words) and raises RuntimeError "<what> is not available: missing A; and B.
    <hint>" before building anything, else builds (`build()` -> the library's path), loads and
    registers `targets` (FFI target name -> exported symbol) for `platform`."""

    def __init__(
        self,
        *,
        who: str,
        what: str,
        hint: str,
        targets: Mapping[str, str],
        platform: str,
        build: Callable[[], Path],
        missing: Callable[[], list[str]],
    ) -> None:
        self.who, self.what, self.hint = who, what, hint
        self.targets, self.platform = dict(targets), platform
        self.build, self.missing = build, missing
        self.library: ctypes.CDLL | None = None
        self._lock = threading.Lock()

    def ensure(self) -> ctypes.CDLL:
        with self._lock:
            if self.library is None:
                missing = self.missing()
                if missing:
                    raise RuntimeError(
                        f"{self.what} is not available: missing {'; and '.join(missing)}. "
                        f"{self.hint}"
                    )
                self.library = load_and_register(
                    self.build(), self.targets, self.platform, self.who
                )
            return self.library


def build_main(description: str, build: Callable[..., Path], argv: list[str] | None) -> int:
    """`python -m <package>.build [--force] [--verbose]`: print the library's path."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--force", action="store_true", help="rebuild even if the cache holds the library"
    )
    ap.add_argument(
        "--verbose", action="store_true", help="print the compiler command and its messages"
    )
    args = ap.parse_args(argv)
    try:
        path = build(force=args.force, verbose=args.verbose)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(path)
    return 0
