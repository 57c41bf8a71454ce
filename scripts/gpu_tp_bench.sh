#!/usr/bin/env bash
# Issue 8's GPU run (run by the lead on a 2- or 4-GPU machine): Llama-3-8B dummy weights, bf16, for
# each tensor-parallel size given: batch-1 decode time (128-token prompt, 128 new tokens; skipped
# with LATENCY=0) and offline throughput (N prompts of 512 random tokens, 256 new tokens, a prefill
# budget of 8192 tokens a step; every step shape compiled first, --precompile). Async scheduling is
# the GPU default. Step compiler options come from JAXLLM_COMPILER_OPTIONS if set (e.g.
# `xla_gpu_autotune_level=0,xla_gpu_enable_triton_gemm=false`: see scripts/gpu_gemm_options_check.py).
# Logs and JSON to $OUT (else ./out/gpu_tp); each log's filtered tail is printed.
# Usage: [LATENCY=0] [THROUGHPUT_TIMEOUT=S] bash scripts/gpu_tp_bench.sh [N] [TP...]
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}." PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python || command -v python3)}"
D="${OUT:-out/gpu_tp}"; mkdir -p "$D"
N="${1:-256}"; shift || true
TPS="${*:-1 2}"
nvidia-smi --query-gpu=index,name,memory.total --format=csv 2>&1 | tee "$D/env.txt"
nvidia-smi topo -m 2>&1 | head -5 | tee -a "$D/env.txt"
show() { grep -v "^WARNING\|Finished XLA\|Compiling \|tracing\|^I0000\|^W0000" "$1" | tail -"${2:-25}"; }
for tp in $TPS; do
  if [ "${LATENCY:-1}" != 0 ]; then
    timeout 150 "$PY" -m jaxllm.benchmarks.latency --model dummy:llama-3-8b --dtype bfloat16 -tp "$tp" \
      --input-len 128 --output-len 128 --num-iters 3 --json "$D/latency_tp$tp.json" \
      > "$D/latency_tp$tp.log" 2>&1
    echo "latency tp=$tp rc=$?"; show "$D/latency_tp$tp.log" 12
  fi
  timeout "${THROUGHPUT_TIMEOUT:-240}" "$PY" -m jaxllm.benchmarks.throughput --model dummy:llama-3-8b \
    --dtype bfloat16 -tp "$tp" --num-prompts "$N" --input-len 512 --output-len 256 \
    --max-num-batched-tokens 8192 --precompile --json "$D/throughput_tp$tp.json" \
    > "$D/throughput_tp$tp.log" 2>&1
  echo "throughput tp=$tp rc=$?"; show "$D/throughput_tp$tp.log" 30
  grep -c "precompiled step shape" "$D/throughput_tp$tp.log"
done
