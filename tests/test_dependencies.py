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
    # chat templates (transformers.apply_chat_template); the server (FastAPI app and uvicorn)
    for name in ("jinja2", "transformers", "fastapi", "uvicorn", "numpy", "gguf", "safetensors"):
        assert name in deps, f"{name} is imported at run time but not in [project].dependencies"
