"""Per-executable XLA compiler options for the engine's step, from `JAXLLM_COMPILER_OPTIONS`.

The value is a comma-separated list of `name=value` XLA debug options, for example
`JAXLLM_COMPILER_OPTIONS=xla_gpu_autotune_level=0`. They apply to the compiled step executables
only (through `Lowered.compile(compiler_options=...)`), not to the rest of the process the way
`XLA_FLAGS` would. XLA rejects unknown names when the first step compiles.

Measured (bench/gpu_runs/2026-11-28_h200x2_throughput.md, H200, Llama-3-8B bf16 unrolled step):
with `xla_gpu_autotune_level=0` a step shape compiles in 3.5-6.3 s instead of 18-32 s and parallel
precompile threads stop contending for the GPU (23 shapes in 53 s). Not the default: batch-1
decode is ~8% slower without autotuning (5.86 vs 5.44 ms/token, session 4), and one host fell back
to 11-16 TFLOP/s GEMMs with it set process-wide. For quick 1,000-prompt runs,
`xla_gpu_autotune_level=0,xla_gpu_enable_triton_gemm=false` (cuBLAS's own heuristics) compiled the
23 shapes in 21-29 s and kept GEMMs at 440-790 TFLOP/s (`scripts/gpu_gemm_options_check.py`,
bench/gpu_runs/2026-11-28_h200x2_tp_throughput.md).

Unset, the step gets `DEFAULT_OPTIONS` of its backend (the CPU's turns YNNPACK's dots off, the GPU's
turns XLA's dot merger off).
"""

from __future__ import annotations

import os

ENV_VAR = "JAXLLM_COMPILER_OPTIONS"


def parse_compiler_options(text: str | None) -> dict[str, str | int | float | bool]:
    """`"a=0,b=true,c=x"` -> {"a": 0, "b": True, "c": "x"}; empty or None -> {}."""
    out: dict[str, str | int | float | bool] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(
                f"{ENV_VAR}: expected name=value items separated by commas, got {item!r}"
            )
        out[name] = _value(value)
    return out


# The step's options when JAXLLM_COMPILER_OPTIONS is not set, by JAX backend.
# CPU: YNNPACK off (XLA:CPU then runs its dots through Eigen, and its reductions and elementwise
# ops as its own loop fusions). SmolLM2-135M f32 on a 2-core Zen 3
# (`jaxllm.benchmarks.cpu_step_profile`, load ~1.3): batch-16 decode step 197 -> 170 ms (stacked
# params) and 163 -> 134 ms (per-layer, `jaxllm.models.step.step_params`); the 30-layer
# projection chain at 16 rows 78 -> 46 ms; a 2048-token prefill step not slower. Greedy outputs
# still equal HF's (tests/engine/test_llm_vs_hf.py); SmolLM2's logits move closer to HF's
# (position 0: 1.3e-4 -> 3e-5).
# GPU: XLA's dot merger off. Under tensor parallelism it merged the gate and up projections of each
# layer by copying their weight slices every step (3.5 GiB a step at tp = 2 in the HLO of
# `jaxllm.benchmarks.tp_hlo_probe`). H200, Llama-3-8B bf16, async batch-1 decode: tp = 2 6.98 ->
# 5.65 ms/token, tp = 1 5.44 -> 5.45 (bench/gpu_runs/2026-11-28_h200x4_async.md); the 1,000-prompt
# throughput runs of bench/gpu_runs/2026-11-28_h200x2_tp_throughput.md ran with it off.
DEFAULT_OPTIONS: dict[str, dict[str, str | int | float | bool]] = {
    "cpu": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "gpu": {"xla_gpu_dot_merger_threshold_mb": 0},
}


def compiler_options_from_env(backend: str | None = None) -> dict[str, str | int | float | bool]:
    """The options the engine compiles its step with: `JAXLLM_COMPILER_OPTIONS` when set (exactly
    those; set it to any harmless option to drop the defaults), else `DEFAULT_OPTIONS` of
    `backend` (None: JAX's default backend)."""
    text = os.environ.get(ENV_VAR)
    if text is not None and text.strip():
        return parse_compiler_options(text)
    if backend is None:
        import jax

        backend = jax.default_backend()
    return dict(DEFAULT_OPTIONS.get(backend, {}))


def _value(text: str) -> str | int | float | bool:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
