#!/usr/bin/env bash
# Compile time vs step time of the Llama-3-8B (dummy, bf16) step on one GPU: the layer scan
# unrolled (the GPU default), rolled, and rolled with XLA's dynamic-slice fusion (which lets the
# GEMMs read each layer's weights straight out of the stacked arrays instead of copying them).
# Prints each run's decode ms/token and every "Finished XLA compilation ... in N sec" line.
# Usage: OUT=dir bash scripts/gpu_compile_probe.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}." PYTHONUNBUFFERED=1 JAX_LOG_COMPILES=1
PY="${PYTHON:-$(command -v python || command -v python3)}"
D="${OUT:-out/compile_probe}"; mkdir -p "$D"
run() {  # name, unroll, extra XLA flags
  echo "== $1 (JAXLLM_UNROLL_LAYERS=$2 XLA_FLAGS=$3)"
  local t0=$SECONDS
  JAXLLM_UNROLL_LAYERS=$2 XLA_FLAGS="$3" timeout 200 "$PY" -m jaxllm.benchmarks.latency --model dummy:llama-3-8b \
    --dtype bfloat16 --input-len 128 --output-len 64 --num-iters 2 --json "$D/$1.json" \
    > "$D/$1.log" 2>&1
  echo "rc=$? wall=$((SECONDS - t0)) s"
  grep -o "Finished XLA compilation of [^ ]* in [0-9.]* sec" "$D/$1.log" | sed 's/^/  /'
  grep "^| jaxllm" "$D/$1.log"
}
run unrolled 1 ""
run rolled 0 ""
run rolled_dsfusion 0 "--xla_gpu_enable_dynamic_slice_fusion=true"
