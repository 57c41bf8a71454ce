"""Quick decode benchmark of the `cuda` backend (GPU): Llama-3-8B attention shapes (Hq 32, Hkv 8,
D 128, bf16, block 16), every sequence at the same context, random page tables.

    PYTHONPATH=. python -m cuda_ext.benchmark [--batches 16 64] [--contexts 2048 4096] \
        [--pallas] [--splits 1 4 8] [--cuda-cores]

Per row: time per call among 16 dependent calls unrolled in one jitted function that cycles over 4
cache layers (no dispatch or loop cost, little L2 reuse); the bytes needed (the KV of every
sequence + queries + output) over that time; and its fraction of the card's copy bandwidth measured
in the same run (a jitted `x + 1` over a 2 GiB bf16 array, bytes read + written). `--pallas` adds
the Pallas decode kernel on the same inputs.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from .attention import ragged_paged_attention_cuda

HQ, HKV, D, BS, LAYERS = 32, 8, 128, 16, 4


def _loop_time_s(step, init, reps: int) -> float:
    """Seconds per step of `lax.fori_loop(0, reps, step, init)` (median of 5 timed loops)."""
    fn = jax.jit(lambda x: jax.lax.fori_loop(0, reps, step, x))
    jax.block_until_ready(fn(init))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(init))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / reps


def copy_bandwidth() -> float:
    """Bytes/s of a jitted `x + 1` over 2 GiB of bf16 (read + write)."""
    x = jnp.zeros((1 << 30,), jnp.bfloat16)
    t = _loop_time_s(lambda i, y: y + jnp.bfloat16(1), x, reps=20)
    return 2 * x.size * 2 / t


def decode_inputs(batch: int, context: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    kk, kv_, kq = jax.random.split(jax.random.key(seed), 3)
    pages = -(-context // BS)
    n = batch * pages + 8
    k = jax.random.normal(kk, (LAYERS, n, HKV, BS, D), jnp.bfloat16)
    v = jax.random.normal(kv_, (LAYERS, n, HKV, BS, D), jnp.bfloat16)
    q = jax.random.normal(kq, (batch, HQ, D), jnp.bfloat16)
    bt = jnp.asarray(rng.permutation(n)[: batch * pages].reshape(batch, pages), jnp.int32)
    kv = jnp.full((batch,), context, jnp.int32)
    qsl = jnp.arange(batch + 1, dtype=jnp.int32)
    return q, k, v, bt, kv, qsl


def time_decode(fn, args, calls: int = 16) -> tuple[float, float]:
    """(seconds per call, bytes needed per call) of `fn(q, k, v, bt, kv, qsl, layer)` on
    `args = decode_inputs(...)`: `calls` dependent calls unrolled in one jitted function (cycling
    over the layers), median of 5 runs."""
    batch, context = args[0].shape[0], int(args[4][0])

    @jax.jit
    def chain(q, k, v, bt, kv, qsl):
        x = q
        for i in range(calls):
            out = fn(x, k, v, bt, kv, qsl, i % LAYERS)
            x = (q.astype(jnp.float32) + 1e-6 * out.astype(jnp.float32)).astype(
                q.dtype
            )  # dependency
        return x

    jax.block_until_ready(chain(*args))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(chain(*args))
        times.append(time.perf_counter() - t0)
    q = args[0]
    nbytes = batch * context * HKV * D * 2 * 2 + 2 * q.size * 2
    return float(np.median(times)) / calls, nbytes


def _cuda_splits(num_kv_splits, *a):
    return ragged_paged_attention_cuda(*a, decode_only=True, num_kv_splits=num_kv_splits)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--pallas", action="store_true", help="also time the Pallas decode kernel")
    ap.add_argument(
        "--splits", type=int, nargs="*", default=[], help="also time these fixed KV split counts"
    )
    ap.add_argument(
        "--cuda-cores",
        action="store_true",
        help="also time the CUDA-core row kernel (decode_kernel='cuda-cores', its own split rule)",
    )
    args = ap.parse_args(argv)
    dev = jax.devices()[0]
    bw = copy_bandwidth()
    print(f"device: {dev.device_kind}; copy bandwidth (x + 1, read + write): {bw / 1e12:.2f} TB/s")
    backends = {"cuda": lambda *a: ragged_paged_attention_cuda(*a, decode_only=True)}
    for z in args.splits:
        backends[f"cuda splits={z}"] = functools.partial(_cuda_splits, z)
    if args.cuda_cores:
        backends["cuda-cores"] = lambda *a: ragged_paged_attention_cuda(
            *a, decode_only=True, decode_kernel="cuda-cores"
        )
    if args.pallas:
        from pallas_kernels import ragged_paged_attention

        backends["pallas"] = lambda *a: ragged_paged_attention(*a, decode_only=True)
    print("| backend | batch | context | us/call | TB/s | % of copy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for b in args.batches:
        for c in args.contexts:
            inputs = decode_inputs(b, c)
            for name, fn in backends.items():
                t, nbytes = time_decode(fn, inputs)
                print(
                    f"| {name} | {b} | {c} | {t * 1e6:.1f} | {nbytes / t / 1e12:.2f} | "
                    f"{100 * nbytes / t / bw:.0f}% |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
