"""The native-library builds of cpu_ext and cuda_ext (`ffi_library.compile_sources`) with a
stand-in compiler: the exact command each package runs, the cache, and a failing compiler's error.
Runs anywhere (no nvcc, no GPU, no real C++ build)."""

from __future__ import annotations

import stat

import jax
import pytest

from cpu_ext import build as cpu_build
from cuda_ext import build as cuda_build

# (package build module, compiler env var, its flags, the sources it compiles)
PACKAGES = {
    "cpu_ext": (cpu_build, cpu_build.CXX_ENV, cpu_build.CXX_FLAGS, cpu_build.SOURCES),
    "cuda_ext": (cuda_build, cuda_build.NVCC_ENV, cuda_build.NVCC_FLAGS, (cuda_build.MAIN_SOURCE,)),
}


def _stand_in_compiler(tmp_path, exit_code: int = 0):
    """A shell script: `--version` prints a version; otherwise it records its arguments (one per
    line) and writes a file at the path after `-o`, then exits with `exit_code`."""
    log = tmp_path / "args.txt"
    script = tmp_path / "stand-in-compiler"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "stand-in 1.0"; exit 0; fi\n'
        f'printf "%s\\n" "$@" > "{log}"\n'
        'prev=""; for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done\n'
        'echo library > "$out"\n'
        'echo "stand-in says no" >&2\n'
        f"exit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_build_command_and_cache(package, tmp_path, monkeypatch):
    build, compiler_env, flags, sources = PACKAGES[package]
    compiler, log = _stand_in_compiler(tmp_path)
    monkeypatch.setenv(compiler_env, str(compiler))
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    path = build.build_library()
    assert path.parent == tmp_path / "cache" and path.read_text() == "library\n"
    args = log.read_text().splitlines()
    csrc = build.CSRC
    expected_tail = ["-o", args[args.index("-o") + 1], *(str(csrc / name) for name in sources)]
    assert args == [
        *flags,
        f"-I{jax.ffi.include_dir()}",
        f"-I{csrc}",
        *expected_tail,
    ]
    assert args[args.index("-o") + 1] != str(path)  # written to a temporary name, then moved
    log.unlink()
    assert build.build_library() == path and not log.exists()  # cached: the compiler not run
    build.build_library(force=True)
    assert log.exists()


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_failing_compiler_is_named(package, tmp_path, monkeypatch):
    build, compiler_env, _, _ = PACKAGES[package]
    compiler, _ = _stand_in_compiler(tmp_path, exit_code=1)
    monkeypatch.setenv(compiler_env, str(compiler))
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match=rf"{package}: .*failed \(exit 1\)(.|\n)*stand-in says"):
        build.build_library()
    assert not list((tmp_path / "cache").glob("*.so"))  # no partial library left in the cache
