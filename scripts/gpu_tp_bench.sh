#!/usr/bin/env bash
# Issue 8's GPU run (run by the lead on a 2-GPU machine): Llama-3-8B dummy weights, bf16, for
# tp = 1 and tp = 2: batch-1 decode time (128-token prompt, 128 new tokens) and offline throughput
# (N prompts of 512 random tokens, 256 new tokens; every step shape compiled first, --precompile).
# Logs and JSON to $OUT (else ./out/gpu_tp). Usage: bash scripts/gpu_tp_bench.sh [N] [TP...]
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}." PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python || command -v python3)}"
D="${OUT:-out/gpu_tp}"; mkdir -p "$D"
N="${1:-256}"; shift || true
TPS="${*:-1 2}"
nvidia-smi --query-gpu=index,name,memory.total --format=csv 2>&1 | tee "$D/env.txt"
nvidia-smi topo -m 2>&1 | head -5 | tee -a "$D/env.txt"
for tp in $TPS; do
  timeout 150 "$PY" bench/latency.py --model dummy:llama-3-8b --dtype bfloat16 -tp "$tp" \
    --input-len 128 --output-len 128 --num-iters 3 --json "$D/latency_tp$tp.json" 2>&1 \
    | grep -v "^WARNING" | tee "$D/latency_tp$tp.log"
  timeout 240 "$PY" bench/throughput.py --model dummy:llama-3-8b --dtype bfloat16 -tp "$tp" \
    --num-prompts "$N" --input-len 512 --output-len 256 --max-num-batched-tokens 8192 --precompile \
    --json "$D/throughput_tp$tp.json" 2>&1 | grep -v "^WARNING" | tee "$D/throughput_tp$tp.log"
done
