"""Benchmarks of the engine through its public API (`jaxllm bench ...`, `jaxllm sweep ...`).

- `throughput`: N requests through `LLM.generate` (random, JSONL or ShareGPT prompts);
- `latency`: a batch (default 1) step by step: prefill time and decode time per token;
- `serving`: streaming requests against a running OpenAI-compatible server;
- `datasets`: workloads as token ids; `engine_setup`: engine flags and the engine;
- `hf_peer`: HF transformers on the same prompts and weights (`--peer hf`);
- `profiler`: per-phase step timers (`--profile`); `common`: machine, device, packages, tables;
- `cli`: the `jaxllm bench` subcommands.

Standalone benchmarks and probes, each run as `python -m jaxllm.benchmarks.NAME` (see `--help`):
`kernels` (the paged-attention kernels; `kernel_tuning` holds its --tune/--profile modes),
`lowering_choice` (Triton vs Mosaic GPU on one prefill), `prefix` (prefix caching on vs off),
`spec_decode` (n-gram speculative decoding vs none at batch 1),
`tp_hlo_probe` (what a tensor-parallel step compiles to; `hlo_analysis` reads the HLO),
`cpu_step_profile` (where a CPU step's time goes), `scan_unroll_probe` and `scan_unroll_cpu_probe`
(rolled vs unrolled layers).

The modules behind `jaxllm bench` import JAX only when a benchmark runs, so the CLI parses its flags
cheaply. This file imports nothing: `kernels` sets XLA_FLAGS before JAX is first imported.
"""
