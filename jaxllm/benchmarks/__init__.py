"""Benchmarks of the engine through its public API (`jaxllm bench ...`, `jaxllm sweep ...`).

- `throughput`: N requests through `LLM.generate` (random, JSONL or ShareGPT prompts);
- `latency`: a batch (default 1) step by step: prefill time and decode time per token;
- `serving`: streaming requests against a running OpenAI-compatible server;
- `datasets`: workloads as token ids; `engine_setup`: engine flags and the engine;
- `hf_peer`: HF transformers on the same prompts and weights (`--peer hf`);
- `profiler`: per-phase step timers (`--profile`); `common`: machine, device, packages, tables;
- `cli`: the `jaxllm bench` subcommands.

Modules import JAX only when a benchmark runs, so the CLI parses its flags cheaply.
"""
