#!/usr/bin/env bash
# GPU check of the Pallas paged-attention kernels (run by the lead on the H100 machine).
#
#   bash scripts/gpu_kernels_check.sh          # from the repo root; jax + pytest preinstalled, no network
#
# 1. the GPU kernel tests (tests/kernels, marker `gpu`): the CPU sweep compiled through Triton, plus
#    longer contexts; 2. bench/kernels.py (Llama-3-8B decode grid + prefill table). Logs and the
#    Markdown tables go to $OUT if set, else ./out/gpu_kernels_check. Each part has its own time limit
#    so the whole script ends within ~8 minutes; it exits non-zero if either part failed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python || command -v python3)}"
LOG_DIR="${OUT:-out/gpu_kernels_check}"
mkdir -p "$LOG_DIR"

{
  date -u
  "$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__); print(jax.devices())"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null || true
} 2>&1 | tee "$LOG_DIR/env.txt"

echo "== GPU kernel tests (limit 180 s) =="
timeout 180 "$PY" -m pytest tests/kernels -m gpu -q -rs --durations=10 2>&1 | tee "$LOG_DIR/pytest_gpu.log"
tests_rc=${PIPESTATUS[0]}

echo "== kernel benchmark (limit 280 s) =="
timeout 280 "$PY" bench/kernels.py --out "$LOG_DIR/bench_kernels.md" 2>&1 | tee "$LOG_DIR/bench_kernels.log"
bench_rc=${PIPESTATUS[0]}

echo "tests rc=$tests_rc (124 = time limit), bench rc=$bench_rc; logs in $LOG_DIR" | tee "$LOG_DIR/summary.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
