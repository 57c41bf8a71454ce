#!/usr/bin/env bash
# The one-card GPU run of issue 22 (mixture of experts): dummy:qwen3-30b-a3b in bf16.
#   layer:      jaxllm.benchmarks.moe_layer: the MoE layer alone and its grouped matmul through
#               XLA's ragged dot, JAX's Pallas Triton ragged dot and a dense einsum, at 1 to 2048
#               tokens (the layer's time x 48 layers is its share of a step);
#   bw:         the copy bandwidth and the batch-1 floor (attention, router, norms, the LM head
#               and each layer's top-8 experts, over the copy bandwidth);
#   latency:    batch-1 decode ms/token (scripts/gpu_llama8b_bench.sh latency);
#   throughput: 1000 x (512 + 256) output tok/s (scripts/gpu_llama8b_bench.sh throughput);
#   latency_ragged, throughput_ragged: the same with JAXLLM_MOE_GPU_KERNEL=ragged_dot (the experts'
#               grouped matmuls through XLA's ragged dot instead of JAX's Pallas Mosaic GPU kernel,
#               the Hopper default).
# GEMM autotuning off as in gpu_llama8b_bench.sh. Logs and JSON go to $OUT (else ./out/gpu_moe).
# Usage: bash scripts/gpu_moe_bench.sh PHASE...   (default: layer bw latency)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}." PYTHONUNBUFFERED=1
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false}"
export JAXLLM_COMPILER_OPTIONS="${JAXLLM_COMPILER_OPTIONS:-xla_gpu_autotune_level=0,xla_gpu_enable_triton_gemm=false,xla_gpu_dot_merger_threshold_mb=0}"
export OUT="${OUT:-out/gpu_moe}" MODEL="${MODEL:-dummy:qwen3-30b-a3b}"; mkdir -p "$OUT"
export LATENCY_TIMEOUT="${LATENCY_TIMEOUT:-420}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
phases=("$@"); [ ${#phases[@]} -eq 0 ] && phases=(layer bw latency)
for phase in "${phases[@]}"; do
  case $phase in
  layer)
    "$PY" -m jaxllm.benchmarks.moe_layer --model "$MODEL" --dtype bfloat16 \
      --tokens 1 16 256 2048 2>&1 | tee "$OUT/moe_layer.log" | grep -v "^WARNING" | tail -30
    ;;
  bw|latency|throughput) bash scripts/gpu_llama8b_bench.sh 1000 "$phase" ;;
  latency_ragged|throughput_ragged)
    JAXLLM_MOE_GPU_KERNEL=ragged_dot TAG=_ragged bash scripts/gpu_llama8b_bench.sh 1000 "${phase%_ragged}" ;;
  *) echo "unknown phase $phase (layer bw latency latency_ragged throughput throughput_ragged)"; exit 2 ;;
  esac
done
