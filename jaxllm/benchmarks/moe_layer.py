"""Time one mixture-of-experts layer (jaxllm/layers/moe.py) alone, and its grouped matmul by
implementation, at a model preset's shapes.

For each token count T: routing, sorting, the three grouped matmuls and the combine as the model
step runs them (`moe_forward`, jitted), and one grouped matmul (the gate projection over the
step's T * k sorted rows) through each implementation this platform has:
- `ragged_dot`: `jax.lax.ragged_dot` as XLA lowers it here (on the GPU XLA's own ragged dot);
- `mgpu bm/bn/bk/steps` (Hopper GPUs): JAX's Pallas Mosaic GPU grouped GEMM
  (`jax.experimental.pallas.ops.gpu.ragged_dot_mgpu`) at a few block configurations;
- `cpu_ext` (CPU, float32): cpu_ext's grouped AVX2 kernel on packed strips;
- `dense`: every expert over every row (`einsum`), the cost a dense fallback would pay.
Each row of the table gives ms per call (median), the bytes of the experts the rows touch
(distinct experts x expert bytes) and those bytes over the time (GB/s), and, for the layer, the
layer's time times the model's layer count (its share of a step: compare with the step's time
from `jaxllm bench latency`). Routing is random (uniform router logits), so the distinct experts
are what a real batch of that size would touch on average, about E * (1 - (1 - k/E)^T).

    python -m jaxllm.benchmarks.moe_layer --model dummy:qwen3-30b-a3b --dtype bfloat16 \
        --tokens 1 16 256 2048
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.layers.moe import mgpu_grouped_matmul, moe_forward, route, sort_by_expert

# (block_m, block_n, block_k, max_concurrent_steps) of the Mosaic GPU kernel to time
MGPU_CONFIGS = ((64, 128, 64, 4), (64, 64, 128, 4), (128, 128, 64, 4))


def _time(fn, *args, iters: int) -> float:
    """Median seconds of `fn(*args)` after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _implementations(platform: str, dtype) -> list[str]:
    out = ["ragged_dot"]
    if platform == "gpu":
        out += [f"mgpu {bm}/{bn}/{bk}/{steps}" for bm, bn, bk, steps in MGPU_CONFIGS]
    if platform == "cpu" and dtype == jnp.float32:
        from cpu_ext import registry

        if not registry.missing_requirements():
            out.append("cpu_ext")
    return out + ["dense"]


def _grouped_fn(impl: str, n: int):
    if impl == "cpu_ext":
        from cpu_ext.grouped_matmul import grouped_matmul

        return jax.jit(lambda x, w, sizes: grouped_matmul(x, w, sizes, n=n))
    if impl.startswith("mgpu"):
        blocks = tuple(int(v) for v in impl.split()[1].split("/"))
        return jax.jit(lambda x, w, sizes: mgpu_grouped_matmul(x, w, sizes, blocks))
    if impl == "dense":
        # every expert over every row, then each row's own expert picked: E times the work
        def dense(x, w, sizes):
            ids = jnp.repeat(jnp.arange(w.shape[0]), sizes, total_repeat_length=x.shape[0])
            return jnp.einsum("mk,ekn->emn", x, w)[ids, jnp.arange(x.shape[0])]

        return jax.jit(dense)
    return jax.jit(lambda x, w, sizes: jax.lax.ragged_dot(x, w, sizes))


def run(model: str, dtype: str, tokens: list[int], iters: int, seed: int) -> list[dict]:
    from jaxllm.model_loader.dummy import dummy_config

    config = dummy_config(model.removeprefix("dummy:"), dtype)
    if not config.is_moe:
        raise SystemExit(f"{model} is not a mixture-of-experts model")
    E, k = config.num_experts, config.num_experts_per_tok
    D, F = config.hidden_size, config.moe_intermediate_size
    dt = jnp.dtype(dtype)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    weights = {
        name: (jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32) * 0.02).astype(dt)
        for i, (name, shape) in enumerate(
            (("gate_proj", (E, D, F)), ("up_proj", (E, D, F)), ("down_proj", (E, F, D)))
        )
    }
    expert_bytes = 3 * D * F * dt.itemsize
    platform = jax.default_backend()
    layer_weights = weights
    if "cpu_ext" in _implementations(platform, dt):  # as the engine lays them out on the CPU
        from cpu_ext.grouped_matmul import pack_grouped

        layer_weights = {name: pack_grouped(w) for name, w in weights.items()}
    layer = jax.jit(lambda x, logits, w: moe_forward(x, logits, w, config))
    rows = []
    for T in tokens:
        x = jnp.asarray(rng.standard_normal((T, D)), dt)
        logits = jnp.asarray(rng.standard_normal((T, E)), jnp.float32)
        _, experts = route(logits, k, config.norm_topk_prob)
        order, sizes = sort_by_expert(experts, E)
        touched = int(np.count_nonzero(np.asarray(sizes)))
        sec = _time(layer, x, logits, layer_weights, iters=iters)
        rows.append(
            dict(
                what="layer",
                tokens=T,
                ms=sec * 1e3,
                experts=touched,
                gbps=touched * expert_bytes / sec / 1e9,
                model_ms=sec * 1e3 * config.num_hidden_layers,
            )
        )
        sorted_x = x[order // k]
        for impl in _implementations(platform, dt):
            if impl == "dense" and T * k * E * D * F > 2e12:
                continue  # minutes of work
            w = weights["gate_proj"]
            if impl == "cpu_ext":
                from cpu_ext.grouped_matmul import pack_grouped

                w = pack_grouped(w)
            try:
                fn = _grouped_fn(impl, F)
                sec = _time(fn, sorted_x, w, sizes, iters=iters)
                if impl != "dense" and T * k * E * D * F <= 2e12:  # right answer?
                    plain = weights["gate_proj"]
                    want = _grouped_fn("dense", F)(sorted_x, plain, sizes)
                    err = float(jnp.max(jnp.abs(fn(sorted_x, w, sizes) - want)))
                    impl += f" (max err {err:.1e})"
            except Exception as e:  # a kernel this card or JAX build cannot run: say so
                print(f"{impl} at {T} tokens: {type(e).__name__}: {str(e)[:300]}")
                continue
            rows.append(
                dict(
                    what=f"gate matmul: {impl}",
                    tokens=T,
                    ms=sec * 1e3,
                    experts=touched,
                    gbps=touched * D * F * dt.itemsize / sec / 1e9,
                    model_ms=None,
                )
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m jaxllm.benchmarks.moe_layer",
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
    )
    p.add_argument("--model", default="dummy:qwen3-30b-a3b", help="a MoE dummy preset")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 2048])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = run(args.model, args.dtype, args.tokens, args.iters, args.seed)
    print(f"{args.model} {args.dtype} on {jax.devices()[0].device_kind}")
    print("| what | tokens | ms | experts touched | expert GB/s | x layers (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        model_ms = "" if r["model_ms"] is None else f"{r['model_ms']:.2f}"
        print(
            f"| {r['what']} | {r['tokens']} | {r['ms']:.3f} | {r['experts']} | "
            f"{r['gbps']:.0f} | {model_ms} |"
        )


if __name__ == "__main__":
    main()
