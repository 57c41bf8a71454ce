#!/usr/bin/env bash
# The one-card GPU run of issue 21 (quantization): Llama-3-8B-shaped dummy weights in bf16, fp8,
# and fp8 + fp8 KV cache, through scripts/gpu_llama8b_bench.sh (its bw, latency and throughput
# phases; GEMM autotuning off as there).
#   check:      the fp8 matmul on this card (native fp8 dot? its error against the same e4m3
#               products in float32), the kept-GGUF SmolLM2 against its dequantized self, and the
#               fp8 KV kernels' GPU tests (tests/kernels/test_kv_fp8.py -m gpu, where pytest is);
#   bw:         the copy bandwidth and the batch-1 floor of bf16 and of fp8 weights;
#   latency:    batch-1 decode ms/token of the three;
#   throughput: 1000 x (512 + 256) output tok/s of the three (each ~4-6 min: split over calls).
# Logs and JSON go to $OUT (else ./out/gpu_quant). Usage: bash scripts/gpu_quant_bench.sh PHASE...
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}." PYTHONUNBUFFERED=1
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false}"
export JAXLLM_COMPILER_OPTIONS="${JAXLLM_COMPILER_OPTIONS:-xla_gpu_autotune_level=0,xla_gpu_enable_triton_gemm=false,xla_gpu_dot_merger_threshold_mb=0}"
export OUT="${OUT:-out/gpu_quant}"; mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python || command -v python3)}"
bench() { bash scripts/gpu_llama8b_bench.sh 1000 "$@"; }
phases=("$@"); [ ${#phases[@]} -eq 0 ] && phases=(check bw latency)
for phase in "${phases[@]}"; do
  case $phase in
  check)
    nvidia-smi --query-gpu=name --format=csv,noheader
    "$PY" - <<'PY'
import jax, jax.numpy as jnp, numpy as np
from jaxllm.quantization.formats import get_format, native_fp8_dot
f = get_format("fp8")
print("native fp8 dot:", native_fp8_dot(), "compute capability", jax.devices()[0].compute_capability)
w = np.random.default_rng(0).standard_normal((4096, 1024)).astype(np.float32)
leaves = f.quantize(w)
x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4096)), jnp.bfloat16)
mm = jax.jit(lambda x, lv: f.matmul(x, lv, 1024, False))
xf = np.asarray(x, np.float32)
s = np.abs(xf).max(-1, keepdims=True) / 448
xq = np.asarray(jnp.asarray(xf / s).astype(jnp.float8_e4m3fn), np.float32) * s
ref = xq @ np.asarray(f.dequantize(leaves))
err = np.abs(np.asarray(mm(x, leaves)) - ref).max() / np.abs(ref).max()
print(f"fp8 matmul max error / max |y|: {err:.2e}")
hlo = mm.lower(x, leaves).compile().as_text()
print("fp8 GEMM custom call:", any("f8e4m3" in l and "custom-call" in l for l in hlo.splitlines()))
PY
    "$PY" -m pytest -q tests/kernels/test_kv_fp8.py -m gpu 2>&1 | tail -3 || true
    ;;
  bw) bench bw | tail -1; QUANT=fp8 bench bw | tail -1 ;;
  latency)
    bench latency | grep -E "rc=|^\| jaxllm|compilations:"
    EXTRA="--quantization fp8" TAG=_fp8 bench latency | grep -E "rc=|^\| jaxllm|compilations:|Error"
    EXTRA="--quantization fp8 --kv-cache-dtype fp8" TAG=_fp8kv bench latency \
      | grep -E "rc=|^\| jaxllm|compilations:|Error"
    grep -h "KV cache:" "$OUT"/latency*.log
    ;;
  throughput) bench throughput ;;
  throughput_fp8) EXTRA="--quantization fp8" TAG=_fp8 bench throughput ;;
  throughput_fp8kv) EXTRA="--quantization fp8 --kv-cache-dtype fp8" TAG=_fp8kv bench throughput ;;
  *) echo "unknown phase $phase (check bw latency throughput throughput_fp8 throughput_fp8kv)"; exit 2 ;;
  esac
done
