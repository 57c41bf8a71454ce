#!/usr/bin/env bash
# Issue 9's GPU run (run by the lead on one H100/H200): Llama-3-8B dummy weights, bf16.
#   1. the card's copy bandwidth and the batch-1 decode floor (weight bytes / copy bandwidth);
#   2. bench/latency.py: batch-1 decode ms/token (128-token prompt, 128 new tokens);
#   3. bench/throughput.py: 1,000 prompts of 512 random tokens, 256 new tokens each, beside HF
#      transformers (torch) on the same card and weights in the same process; jaxllm first runs the
#      same shapes once untimed (--warmup: its step variants are compiled before the timed run, as
#      vLLM compiles and captures at start-up) with a prefill budget of 8192 tokens a step.
# Logs and JSON go to $OUT (else ./out/gpu_llama8b). Usage: bash scripts/gpu_llama8b_bench.sh [NUM_PROMPTS]
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}." PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python || command -v python3)}"
D="${OUT:-out/gpu_llama8b}"; mkdir -p "$D"
N="${1:-1000}"
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
# Llama-3-8B bf16 weights read per decode step: every parameter once (8.03e9 params, untied).
params = 8.03e9 - 128256 * 4096  # the embedding is gathered, not read whole
print(f"copy_bw_GBps={bw / 1e9:.1f} weight_bytes={params * 2:.3e} floor_ms={params * 2 / bw * 1e3:.2f}")
PY
timeout 150 "$PY" bench/latency.py --model dummy:llama-3-8b --dtype bfloat16 --input-len 128 \
  --output-len 128 --num-iters 3 --profile --json "$D/latency.json" 2>&1 | tee "$D/latency.log"
# JAX takes 60% of the card so the HF peer (16 GB of weights + its KV) fits beside it.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 timeout 420 "$PY" bench/throughput.py --model dummy:llama-3-8b --dtype bfloat16 --num-prompts "$N" \
  --input-len 512 --output-len 256 --max-num-batched-tokens 8192 --warmup --peer hf \
  --hf-batch-size 64 --profile \
  --json "$D/throughput.json" 2>&1 | tee "$D/throughput.log"
