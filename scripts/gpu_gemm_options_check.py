"""Time the Llama-3-8B step's GEMM shapes (bf16) under sets of XLA compiler options (GPU).

Why: with `xla_gpu_autotune_level=0` some GEMMs fell back to 11-16 TFLOP/s on an H200 (default
794-892), which made 8,192-token prefill steps crawl; with autotuning on, compiling the engine's 23
step shapes takes ~10 minutes. This checks whether turning XLA's Triton GEMMs off as well (cuBLAS
then picks its algorithm by its own heuristics, no autotuning) gives fast GEMMs that compile fast.

    python scripts/gpu_gemm_options_check.py

Prints one line per (option set, shape): compile seconds and TFLOP/s (median of 10 timed calls).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

OPTION_SETS = {
    "default": {},
    "autotune0": {"xla_gpu_autotune_level": 0},
    "autotune0+no-triton-gemm": {"xla_gpu_autotune_level": 0, "xla_gpu_enable_triton_gemm": False},
}
# (tokens, in, out): q/k/v fused, o, gate+up, down, lm head; prefill steps of 8192 and 256 tokens.
SHAPES = [
    (m, k, n)
    for m in (8192, 256)
    for (k, n) in ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096), (4096, 128256))
]


def main() -> None:
    print(jax.devices()[0].device_kind, jax.__version__)
    for name, opts in OPTION_SETS.items():
        for m, k, n in SHAPES:
            a = jnp.ones((m, k), jnp.bfloat16)
            b = jnp.ones((k, n), jnp.bfloat16)
            t0 = time.perf_counter()
            f = jax.jit(lambda x, y: x @ y).lower(a, b).compile(compiler_options=opts)
            ct = time.perf_counter() - t0
            f(a, b).block_until_ready()
            ts = []
            for _ in range(10):
                t = time.perf_counter()
                f(a, b).block_until_ready()
                ts.append(time.perf_counter() - t)
            med = sorted(ts)[len(ts) // 2]
            tflops = 2 * m * k * n / med / 1e12
            print(f"{name:26s} {m:5d}x{k:5d}x{n:6d} compile {ct:5.2f} s  {tflops:7.1f} TFLOP/s")


if __name__ == "__main__":
    main()
