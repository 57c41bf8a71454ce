"""Running a test's worker script in its own Python process (a fresh JAX with its own devices)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxllm.process_lifetime import kill_with_parent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_worker(script: str, args: list[str], env: dict[str, str] | None = None) -> None:
    """Run `script` with `args` from the repository root (importable there, XLA_FLAGS cleared so
    the worker sets its own device count, `env` added); the test fails with its stderr's tail if
    it exits non-zero. The worker dies with the test process."""
    full = dict(os.environ)
    full["PYTHONPATH"] = ROOT + os.pathsep + full.get("PYTHONPATH", "")
    full.pop("XLA_FLAGS", None)
    full.update(env or {})
    proc = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=kill_with_parent,
    )
    if proc.returncode != 0:
        name = os.path.basename(script)
        pytest.fail(f"{name} failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
