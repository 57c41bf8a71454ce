"""Batch-1 decode-like layer stack: does scanning over stacked weights copy each layer's slice?

Llama-3-8B-sized layers (32 of them, bf16: about 14 GB of random weights, meant for a GPU), scanned
vs unrolled, at batch 1 and 64:

    python -m jaxllm.benchmarks.scan_unroll_probe
"""

import os
import time

import jax
import jax.numpy as jnp

from jaxllm.entrypoints.strict_parser import script_parser

L, H, F = 32, 4096, 14336
dt = jnp.bfloat16


def layer(x, w):
    wqkv, wo, wgu, wd = w
    h = x @ wqkv
    x = x + h[:, :4096] @ wo
    g = x @ wgu
    x = x + (jax.nn.silu(g[:, :F]) * g[:, F:]) @ wd
    return x


@jax.jit
def scanned(x, ws):
    return jax.lax.scan(lambda c, w: (layer(c, w), None), x, ws)[0]


@jax.jit
def unrolled_static(x, ws):
    for i in range(L):
        x = layer(x, jax.tree.map(lambda a, i=i: a[i], ws))
    return x


@jax.jit
def unrolled_list(x, wl):
    for w in wl:
        x = layer(x, w)
    return x


def t(f, *a):
    f(*a).block_until_ready()
    ts = []
    for _ in range(20):
        s = time.perf_counter()
        f(*a).block_until_ready()
        ts.append(time.perf_counter() - s)
    return sorted(ts)[10]


def main(argv: list[str] | None = None) -> None:
    script_parser(__doc__).parse_args(argv)  # no flags: --help only
    key = jax.random.PRNGKey(0)
    ks = jax.random.split(key, 4)
    Wqkv = jax.random.normal(ks[0], (L, H, 6144), dt) * 0.01
    Wo = jax.random.normal(ks[1], (L, 4096, H), dt) * 0.01
    Wgu = jax.random.normal(ks[2], (L, H, 2 * F), dt) * 0.01
    Wd = jax.random.normal(ks[3], (L, F, H), dt) * 0.01
    nbytes = sum(a.size * 2 for a in (Wqkv, Wo, Wgu, Wd))
    for B in (1, 64):
        x = jnp.ones((B, H), dt)
        ws = (Wqkv, Wo, Wgu, Wd)
        r = {"scan": t(scanned, x, ws), "unrolled_static_index": t(unrolled_static, x, ws)}
        wl = [tuple(a[i] for a in ws) for i in range(L)]
        r["unrolled_list"] = t(unrolled_list, x, wl)
        del wl
        for k, v in r.items():
            print(
                f"B={B} {k}: {v * 1e3:.2f} ms  {nbytes / v / 1e9:.0f} GB/s  "
                f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}"
            )


if __name__ == "__main__":
    main()
