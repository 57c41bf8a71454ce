#!/usr/bin/env bash
# Set up (with the test extra) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export JAXLLM_COMPILATION_CACHE_DIR=${JAXLLM_COMPILATION_CACHE_DIR:-$PWD/.venv/jax-cache}
exec .venv/bin/python -m pytest -q -ra "$@"
