"""Runtime imports that only some code paths make are declared as the package's own dependencies.

The test extra (torch and the rest) pulls in more than a plain `scripts/setup.sh` installs, so a
missing dependency of the main job can pass the suite and still fail on a fresh machine: this
happened with jinja2, which transformers imports lazily to render chat templates (`--chat`,
`LLM.chat`) and which torch brings along in the test environment.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}


def test_lazily_imported_runtime_dependencies_are_declared():
    deps = _dependencies()
    # chat templates (transformers.apply_chat_template); the server (FastAPI app and uvicorn);
    # hub ids as models (huggingface_hub)
    names = ("jinja2", "transformers", "fastapi", "uvicorn", "numpy", "gguf", "safetensors")
    for name in (*names, "huggingface-hub"):
        assert name in deps, f"{name} is imported at run time but not in [project].dependencies"


def _requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in specs}


def _lock(pyver: str) -> dict[str, str]:
    """{name: version} of requirements/lock-py{pyver}.txt."""
    pins = {}
    for line in (ROOT / "requirements" / f"lock-py{pyver}.txt").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip() and "[" not in name, f"not an exact pin: {line!r}"
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_the_locks_pin_every_dependency_exactly():
    """Each lock pins (==, no extras: pip constraints) every runtime and test dependency and the
    build tools, so that a fresh `scripts/setup.sh` installs the world CI passed with."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _requirement_names(
        project["dependencies"] + project["optional-dependencies"]["test"] + ["pip", "setuptools"]
    )
    for pyver in ("311", "312"):
        missing = sorted(wanted - set(_lock(pyver)))
        assert not missing, f"requirements/lock-py{pyver}.txt lacks {missing}: bash scripts/lock.sh"


def test_the_checkout_shadows_no_installed_package():
    """No code edits the import path (bench/kernels.py, put there by two tests, once shadowed the
    PyPI package `kernels` that transformers imports), and bench/ holds no Python module."""
    needle = ".".join(("sys", "path"))  # spelled apart so that a grep of the tree finds nothing
    offenders = []
    for folder in ("jaxllm", "tests", "bench", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            if needle in path.read_text(encoding="utf-8"):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"{needle} is used in {offenders}"
    assert not sorted((ROOT / "bench").rglob("*.py"))
