#!/usr/bin/env bash
# Does XLA's GEMM autotuning make the unrolled Llama-3-8B step compile slowly? Batch-1 latency
# (Llama-3-8B dummy bf16, 128 + 64 tokens) with --xla_gpu_autotune_level=0, printing each step
# compilation's time; then, if the longest compile is under 10 s, the 1,000-prompt throughput run
# (scripts/gpu_llama8b_bench.sh, PEER=hf) with the same flag. Usage: OUT=dir bash scripts/gpu_autotune_probe.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}." PYTHONUNBUFFERED=1 JAX_LOG_COMPILES=1
PY="${PYTHON:-$(command -v python || command -v python3)}"
D="${OUT:-out/autotune_probe}"; mkdir -p "$D"
export XLA_FLAGS="--xla_gpu_autotune_level=0"
timeout 150 "$PY" -m jaxllm.benchmarks.latency --model dummy:llama-3-8b --dtype bfloat16 --input-len 128 \
  --output-len 64 --num-iters 2 --json "$D/latency_autotune0.json" > "$D/latency_autotune0.log" 2>&1
echo "latency rc=$?"
grep "^| jaxllm" "$D/latency_autotune0.log"
times=$(grep -o "Finished XLA compilation of jit(device_step) in [0-9.]* sec" "$D/latency_autotune0.log" | awk '{print $(NF-1)}')
echo "step compile seconds: $times"
longest=$(printf '%s\n' $times | sort -g | tail -1)
if awk "BEGIN {exit !(${longest:-999} < 10)}"; then
  PEER=hf THROUGHPUT_TIMEOUT="${THROUGHPUT_TIMEOUT:-450}" bash scripts/gpu_llama8b_bench.sh "${N:-1000}" throughput
else
  echo "compile still slow (${longest:-?} s): no throughput run"
fi
