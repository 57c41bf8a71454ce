#!/usr/bin/env bash
# The one-card GPU run of a dummy model, bf16 (issue 9: Llama-3-8B; issue 20: Qwen3-8B and
# Gemma-3-12B shapes). MODEL=dummy:NAME picks the preset (default dummy:llama-3-8b).
#   bw:         the card's copy bandwidth and the batch-1 decode floor (weight bytes / copy BW;
#               the bytes of every weight a decode step reads: all but an untied embedding
#               table, of which it gathers only the token's row);
#   latency:    jaxllm.benchmarks.latency, batch-1 decode ms/token (128-token prompt, 128 new
#               tokens);
#   throughput: jaxllm.benchmarks.throughput, N prompts of 512 random tokens, 256 new tokens each,
#               with a prefill budget of 8192 tokens a step; every step shape is compiled before
#               the timed run (--precompile, parallel threads: as vLLM compiles and captures at
#               start-up); with PEER=hf, HF transformers (torch) on the same card and weights in
#               the same process afterwards (JAX then keeps 60% of the card so the peer fits
#               beside it).
# Logs and JSON go to $OUT (else ./out/gpu_llama8b). GEMM autotuning is off and XLA's Triton GEMMs
# with it (cuBLAS's own choices), in XLA_FLAGS and for the step executables
# (JAXLLM_COMPILER_OPTIONS), unless the caller sets them: a shape then compiles in seconds instead
# of tens of seconds, while autotuning off alone fell back to slow Triton GEMMs on the H100 hosts
# (bench/gpu_runs/2026-12-07_h100_session_checks.md).
# EXTRA: more engine flags for latency and throughput (e.g. EXTRA=--async-scheduling; --profile is
# then left out, since it waits for every device step; without EXTRA the --profile runs are
# synchronous, async scheduling's GPU default being turned off for them); TAG: suffix of the log
# and JSON names.
# QUANT=fp8|int8: the floor of those weights (pass --quantization in EXTRA for the runs).
# Mixture-of-experts presets: the floor counts each layer's top-k experts, not all of them.
# LATENCY_TIMEOUT: seconds the latency run may take (default 200).
# Usage: [MODEL=dummy:NAME] [QUANT=fp8] [PEER=hf] [EXTRA=...] [TAG=...] bash scripts/gpu_llama8b_bench.sh [NUM_PROMPTS] [PHASE...]
set -u
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false}"
export JAXLLM_COMPILER_OPTIONS="${JAXLLM_COMPILER_OPTIONS:-xla_gpu_autotune_level=0,xla_gpu_enable_triton_gemm=false,xla_gpu_dot_merger_threshold_mb=0}"
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}." PYTHONUNBUFFERED=1 JAX_LOG_COMPILES=1
PY="${PYTHON:-$(command -v python || command -v python3)}"
D="${OUT:-out/gpu_llama8b}"; mkdir -p "$D"
N="${1:-1000}"; shift || true
PHASES="${*:-bw latency throughput}"
PEER="${PEER:-}"
MODEL="${MODEL:-dummy:llama-3-8b}"; export MODEL
read -r -a extra <<< "${EXTRA:-}"
T="${TAG:-}"
prof=(--profile); [[ " ${EXTRA:-} " == *" --async-scheduling "* ]] && prof=()
compiles() { grep -o "Finished XLA compilation of jit(device_step) in [0-9.]* sec" "$1" | awk '{n++; s+=$(NF-1); if ($(NF-1)>m) m=$(NF-1)} END {printf "step compilations: %d, %.0f s summed, longest %.1f s\n", n, s, m}'; }
for phase in $PHASES; do
  case $phase in
  bw)
    nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee "$D/env.txt"
    "$PY" - <<'PY' 2>&1 | tee -a "$D/env.txt"
import time, jax, jax.numpy as jnp
n = 2 << 30  # bytes of bf16, read + written per pass
x = jnp.ones((n // 2,), jnp.bfloat16)
loop = jax.jit(lambda x: jax.lax.fori_loop(0, 10, lambda _, y: y + 1, x))
loop(x).block_until_ready()
ts = []
for _ in range(10):
    t = time.perf_counter(); loop(x).block_until_ready(); ts.append((time.perf_counter() - t) / 10)
bw = 2 * n / sorted(ts)[len(ts) // 2]
import math, os
from jaxllm.model_loader.dummy import dummy_config
from jaxllm.models.layout import param_shapes, quantizable_kernels
from jaxllm.quantization.layout import weight_only_config
c = dummy_config(os.environ["MODEL"].removeprefix("dummy:"), "bfloat16")
quant = os.environ.get("QUANT") or None
if quant:
    c = c.replace(quantization=weight_only_config(quant, quantizable_kernels(c)))
nbytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(param_shapes(c)))
if not c.tie_word_embeddings:
    nbytes -= c.vocab_size * c.hidden_size * 2  # the embedding is gathered, not read whole
if c.is_moe:  # a batch-1 step reads only its token's top-k experts of each layer
    expert = 3 * c.hidden_size * c.moe_intermediate_size * 2
    nbytes -= c.num_hidden_layers * (c.num_experts - c.num_experts_per_tok) * expert
print(f"model={os.environ['MODEL']} weights={quant or 'bf16'} copy_bw_GBps={bw / 1e9:.1f} "
      f"weight_bytes={nbytes:.3e} floor_ms={nbytes / bw * 1e3:.2f}")
PY
    ;;
  latency)
    timeout "${LATENCY_TIMEOUT:-200}" "$PY" -m jaxllm.benchmarks.latency --model "$MODEL" --dtype bfloat16 --input-len 128 \
      --output-len 128 --num-iters 3 "${prof[@]}" "${extra[@]}" --json "$D/latency$T.json" \
      > "$D/latency$T.log" 2>&1
    echo "latency$T rc=$?"; grep -v "^WARNING\|Finished\|Compiling\|tracing" "$D/latency$T.log" | tail -30
    compiles "$D/latency$T.log"
    ;;
  throughput)
    peer=(); mem=()
    if [ "$PEER" = hf ]; then peer=(--peer hf --hf-batch-size 64); mem=(XLA_PYTHON_CLIENT_MEM_FRACTION=0.6); fi
    env "${mem[@]}" timeout "${THROUGHPUT_TIMEOUT:-540}" "$PY" -m jaxllm.benchmarks.throughput --model "$MODEL" \
      --dtype bfloat16 --num-prompts "$N" --input-len 512 --output-len 256 \
      --max-num-batched-tokens 8192 --precompile "${prof[@]}" "${extra[@]}" "${peer[@]}" \
      --json "$D/throughput$T.json" > "$D/throughput$T.log" 2>&1
    echo "throughput$T rc=$?"; grep -v "^WARNING\|Finished\|Compiling\|tracing" "$D/throughput$T.log" | tail -40
    compiles "$D/throughput$T.log"
    ;;
  *) echo "unknown phase $phase (bw, latency, throughput)"; exit 2 ;;
  esac
done
