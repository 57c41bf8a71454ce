#!/usr/bin/env bash
# Set up (with the test extra), run the developer checks (scripts/lint.sh: ruff, ruff format,
# codespell, mypy, clang-format, mkdocs build --strict; any finding fails), then the whole test suite
# on the CPU, listing the 25 slowest tests at the end. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
bash scripts/lint.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export JAXLLM_COMPILATION_CACHE_DIR=${JAXLLM_COMPILATION_CACHE_DIR:-$PWD/.venv/jax-cache}
exec .venv/bin/python -m pytest -q -ra --durations=25 "$@"
