#!/usr/bin/env bash
# GPU check of the CUDA attention backend (cuda_ext/), on the H100/H200 machine:
#
#   bash scripts/gpu_cuda_check.sh       # from anywhere; jax[cuda], pytest and nvcc preinstalled
#
# 1. builds the library (python -m cuda_ext.build, into a fresh cache) and lists its symbols/arches;
# 2. runs tests/kernels/test_cuda_ext.py (GPU sweep against the reference + the CPU tests);
# 3. runs a small case (python -m cuda_ext.memcheck_case) under compute-sanitizer --tool memcheck
#    (XLA's platform allocator, so every buffer is its own allocation and an out-of-bounds access is
#    caught), under `timeout 120`;
# 4. the decode benchmark of jaxllm.benchmarks.kernels with the cuda and pallas rows (Llama-3-8B
#    shapes).
# Logs go to $OUT if set, else ./out/gpu_cuda_check. Each part has a time limit (build 180 s,
# tests 200 s, memcheck 120 s, bench 150 s), so give the whole script 600 s. It exits non-zero if
# the build, tests or memcheck failed. scripts/gpu_kernels_check.sh runs all of this for both
# backends in one call; this script is the cuda-only subset.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}."
export PYTHONUNBUFFERED=1
export JAXLLM_CUDA_EXT_CACHE="${JAXLLM_CUDA_EXT_CACHE:-/tmp/jaxllm_cuda_ext_cache}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
LOG_DIR="${OUT:-out/gpu_cuda_check}"
mkdir -p "$LOG_DIR"

echo "== environment and build (limit 180 s) =="
{
  date -u
  "$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__); print(jax.devices())"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  command -v nvcc && nvcc --version | tail -2
  start=$(date +%s)
  timeout -k 10 180 "$PY" -m cuda_ext.build --force --verbose
  echo "build rc=$? in $(( $(date +%s) - start )) s"
  lib=$(ls "$JAXLLM_CUDA_EXT_CACHE"/libjaxllm_cuda_ext-*.so 2>/dev/null | head -1)
  [ -n "$lib" ] && nm -D --defined-only "$lib" | grep Jaxllm
  [ -n "$lib" ] && command -v cuobjdump >/dev/null && cuobjdump --list-elf --list-ptx "$lib"
} 2>&1 | tee "$LOG_DIR/build.log"
lib=$(ls "$JAXLLM_CUDA_EXT_CACHE"/libjaxllm_cuda_ext-*.so 2>/dev/null | head -1)
build_rc=0
[ -n "$lib" ] || build_rc=1

echo "== tests (limit 200 s) =="
timeout -k 10 200 "$PY" -m pytest tests/kernels/test_cuda_ext.py -q -rs --durations=8 2>&1 | tee "$LOG_DIR/pytest.log"
tests_rc=${PIPESTATUS[0]}

echo "== compute-sanitizer memcheck (timeout 120 s) =="
XLA_PYTHON_CLIENT_ALLOCATOR=platform XLA_PYTHON_CLIENT_PREALLOCATE=false \
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false" \
  timeout -k 10 120 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
  "$PY" -m cuda_ext.memcheck_case 2>&1 | tee "$LOG_DIR/memcheck.log"
memcheck_rc=${PIPESTATUS[0]}

echo "== decode benchmark (limit 150 s) =="
timeout -k 10 150 "$PY" -m jaxllm.benchmarks.kernels --quick --backends cuda,pallas --no-prefill \
  --out "$LOG_DIR/bench.md" 2>&1 | grep -v "Pallas Triton backend is deprecated" | tee "$LOG_DIR/bench.log"
bench_rc=${PIPESTATUS[0]}

echo "build rc=$build_rc tests rc=$tests_rc memcheck rc=$memcheck_rc bench rc=$bench_rc (124 = time limit); logs in $LOG_DIR" \
  | tee "$LOG_DIR/summary.txt"
[ "$build_rc" -eq 0 ] && [ "$tests_rc" -eq 0 ] && [ "$memcheck_rc" -eq 0 ]
