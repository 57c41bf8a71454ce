#!/usr/bin/env bash
# Refresh the dependency locks requirements/lock-py311.txt and lock-py312.txt: the newest versions
# that pyproject.toml allows (runtime, the test and bench-cpu extras and both CUDA extras) plus pip and setuptools
# (requirements/build.in), resolved for Linux x86-64 by a pinned uv in a scratch venv. The Python
# 3.12 lock prefers the 3.11 lock's versions, so both describe one tested world. Afterwards run
# `bash scripts/test.sh` (it installs the new lock into .venv) and commit the locks only if it
# passes. Needs PyPI; touches nothing but the two lock files.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"${PYTHON:-python3}" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q "uv==$UV_VERSION"
uv=("$scratch/venv/bin/uv" pip compile pyproject.toml requirements/build.in
  --extra test --extra bench-cpu --extra cuda12 --extra cuda13 --python-platform x86_64-manylinux_2_28
  --custom-compile-command "bash scripts/lock.sh" --quiet)
# --upgrade: ignore the old lock's pins (uv otherwise keeps what the output file already holds).
"${uv[@]}" --upgrade --python-version 3.11 -o requirements/lock-py311.txt
"${uv[@]}" --upgrade --python-version 3.12 -c requirements/lock-py311.txt -o requirements/lock-py312.txt
echo "wrote requirements/lock-py311.txt and requirements/lock-py312.txt; now run: bash scripts/test.sh"
