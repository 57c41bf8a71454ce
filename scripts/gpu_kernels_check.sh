#!/usr/bin/env bash
# ONE GPU call checking both kernel backends (pallas and cuda), on the H100/H200 machine:
#
#   bash scripts/gpu_kernels_check.sh      # from anywhere; jax[cuda], pytest, nvcc preinstalled, no network
#
# 1. env + build of cuda_ext (python -m cuda_ext.build --force, into a fresh cache; symbols, arches);
# 2. the GPU kernel tests: tests/kernels -m gpu (the Pallas sweep compiled through Triton and the
#    cuda sweep; 8 pytest-xdist workers when xdist is installed);
# 3. compute-sanitizer --tool memcheck on a small cuda case (python -m cuda_ext.memcheck_case:
#    single-row kernel with 1 and 2 splits + combine, multi-row kernel), under `timeout 120`;
# 4. python -m jaxllm.benchmarks.kernels: decode, Llama-3-8B attention (Hq 32, Hkv 8, D 128, bf16,
#    block 16), batch 1, 16, 64, 256 x context 512, 2048, 8192, rows pallas / jax-paged / cuda,
#    bytes/s and fraction of the copy bandwidth measured in the same run, then a summary table. The
#    Markdown file is rewritten after every (batch, context) point, so a time limit still leaves
#    the finished rows.
#
# 5. if >= 40 s are left: python -m cuda_ext.benchmark's split-count sweep (cuda, 16/64 x 2048/8192;
#    data for the split rule, not pass/fail).
# Everything goes to $OUT if set, else ./out/gpu_kernels_check: env.txt, build.log, pytest_gpu.log,
# memcheck.log, bench_kernels.md (+ .log), cuda_split_sweep.log, summary.txt. The whole script stays within
# $GPU_CHECK_BUDGET_S (default 560 s; the device call allows 600): build <= 150 s, tests <= 200 s,
# memcheck <= 120 s, the benchmark gets what is left. Exit status non-zero if any part failed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}."
export PYTHONUNBUFFERED=1
export JAXLLM_CUDA_EXT_CACHE="${JAXLLM_CUDA_EXT_CACHE:-/tmp/jaxllm_cuda_ext_cache}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
LOG_DIR="${OUT:-out/gpu_kernels_check}"
BUDGET="${GPU_CHECK_BUDGET_S:-560}"
mkdir -p "$LOG_DIR"
t0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - t0) )); }
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo $(( l > 5 ? l : 5 )); }

echo "== 1. environment and cuda_ext build (limit $(cap 150) s) =="
{
  date -u
  "$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__); print(jax.devices())"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null || true
  command -v nvcc && nvcc --version | tail -2
  command -v compute-sanitizer || echo "compute-sanitizer not on PATH"
} 2>&1 | tee "$LOG_DIR/env.txt"
s=$(date +%s)
timeout -k 10 "$(cap 150)" "$PY" -m cuda_ext.build --force --verbose >"$LOG_DIR/build_path.txt" 2>"$LOG_DIR/build.log"
build_rc=$?
lib=$(tail -1 "$LOG_DIR/build_path.txt")
{
  echo "build rc=$build_rc in $(( $(date +%s) - s )) s: $lib"
  [ -f "$lib" ] && nm -D --defined-only "$lib" | grep Jaxllm
  [ -f "$lib" ] && command -v cuobjdump >/dev/null && cuobjdump --list-elf --list-ptx "$lib"
} 2>&1 | tee -a "$LOG_DIR/build.log"
[ "$build_rc" -eq 0 ] && [ -f "$lib" ] || build_rc=${build_rc/#0/1}

XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
echo "== 2. GPU kernel tests, pallas + cuda (limit $(cap 200) s; ${XDIST:-no xdist}) =="
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -k 10 "$(cap 200)" \
  "$PY" -m pytest tests/kernels -m gpu -q -rs --durations=10 -p no:cacheprovider $XDIST 2>&1 \
  | tee "$LOG_DIR/pytest_gpu.log"
tests_rc=${PIPESTATUS[0]}

echo "== 3. compute-sanitizer memcheck on a small cuda case (timeout 120 s) =="
if command -v compute-sanitizer >/dev/null; then
  XLA_PYTHON_CLIENT_ALLOCATOR=platform XLA_PYTHON_CLIENT_PREALLOCATE=false \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false" \
    timeout -k 10 120 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
    "$PY" -m cuda_ext.memcheck_case 2>&1 | tee "$LOG_DIR/memcheck.log"
  memcheck_rc=${PIPESTATUS[0]}
else
  echo "compute-sanitizer not found" | tee "$LOG_DIR/memcheck.log"
  memcheck_rc=127
fi

sweep_reserve=0
[ "$(left)" -gt 330 ] && sweep_reserve=80
bench_limit=$(( $(left) - 5 - sweep_reserve ))
echo "== 4. kernel benchmark: pallas, jax-paged, cuda (limit ${bench_limit} s) =="
if [ "$bench_limit" -gt 30 ]; then
  timeout -k 5 "$bench_limit" "$PY" -m jaxllm.benchmarks.kernels --backends pallas,jax-paged,cuda --no-prefill \
    --out "$LOG_DIR/bench_kernels.md" 2>&1 | grep -v "Pallas Triton backend is deprecated" \
    | tee "$LOG_DIR/bench_kernels.log"
  bench_rc=${PIPESTATUS[0]}
else
  echo "no time left for the benchmark"
  bench_rc=124
fi

sweep_limit=$(( $(left) - 5 ))
if [ "$sweep_limit" -gt 40 ]; then
  echo "== 5. cuda split-count sweep, for the split rule (limit ${sweep_limit} s; not a pass/fail step) =="
  timeout -k 5 "$sweep_limit" "$PY" -m cuda_ext.benchmark --batches 16 64 --contexts 2048 8192 \
    --splits 1 2 4 8 16 2>&1 | tee "$LOG_DIR/cuda_split_sweep.log"
fi

echo "build rc=$build_rc tests rc=$tests_rc memcheck rc=$memcheck_rc bench rc=$bench_rc" \
  "(124 = time limit, 9 = memcheck errors) in $(( $(date +%s) - t0 )) s; logs in $LOG_DIR" \
  | tee "$LOG_DIR/summary.txt"
[ "$build_rc" -eq 0 ] && [ "$tests_rc" -eq 0 ] && [ "$memcheck_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
