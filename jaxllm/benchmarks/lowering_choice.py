"""Triton vs Mosaic GPU, the two Pallas GPU lowerings, on one attention problem (GPU only).

Issue 4 asks for the Pallas GPU lowering to be chosen by measurement. Our kernels exist only in the
Triton lowering, so this measures what each lowering reaches on the same dense causal prefill
(Llama-3-8B attention: 32 query heads, 8 KV heads, head dim 128; float16 by default, see --dtype)
with JAX's own kernels, beside ours:
  jax-triton  -- `jax.experimental.pallas.ops.gpu.attention.mha` (Triton lowering; no GQA, so K/V
                 are repeated to 32 heads before timing), best of a few block sizes;
  jax-mosaic  -- `jax.experimental.pallas.ops.gpu.attention_mgpu.attention` (Mosaic GPU lowering:
                 TMA, wgmma, warp specialisation; Hopper), best of a few block sizes;
  pallas      -- our general (paged, ragged) kernel, `pallas_kernels.ragged_paged_attention`, on
                 the same tokens in a paged cache (Triton lowering).
Per row: median us per call (block_until_ready, after warm-up) and TFLOP/s of the causal half
(4 * n(n+1)/2 * Hq * D per sequence; with --no-causal, full attention, 4 * n^2 * Hq * D, JAX's two
kernels only), and the max abs error against the first kernel that ran. The decode side of the
question is answered by `jaxllm.benchmarks.kernels`: the Triton decode kernel already moves more
bytes per second than the card's copy (bench/RESULTS.md), so a lowering change cannot make it
faster there.

  python -m jaxllm.benchmarks.lowering_choice [--points 1x2048,4x1024,1x8192] [--iters 20]
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.benchmarks.kernels import LLAMA3_8B, median_call_s

# jaxllm.benchmarks.kernels sets XLA_FLAGS at import, before jax starts its backend
from jaxllm.entrypoints.strict_parser import script_parser
from pallas_kernels import ragged_paged_attention


def _inputs(B: int, n: int, key, dtype=None):
    """Dense q, k, v [B, n, H, D] and the same tokens as our ragged, paged arguments."""
    s = LLAMA3_8B
    dtype = jnp.dtype(dtype or s.dtype)
    k1, k2, k3 = jax.random.split(key, 3)
    q = jax.random.normal(k1, (B, n, s.Hq, s.D), dtype)
    k = jax.random.normal(k2, (B, n, s.Hkv, s.D), dtype)
    v = jax.random.normal(k3, (B, n, s.Hkv, s.D), dtype)
    P = n // s.block_size

    def paged(x):  # [B, n, Hkv, D] -> [1, B * P, Hkv, bs, D], sequence b in pages b*P ... b*P+P-1
        x = x.reshape(B, P, s.block_size, s.Hkv, s.D).transpose(0, 1, 3, 2, 4)
        return x.reshape(1, B * P, s.Hkv, s.block_size, s.D)

    ours = (
        q.reshape(B * n, s.Hq, s.D),
        paged(k),
        paged(v),
        jnp.arange(B * P, dtype=jnp.int32).reshape(B, P),
        jnp.full((B,), n, jnp.int32),
        jnp.arange(B + 1, dtype=jnp.int32) * n,
    )
    return q, k, v, ours


def _best(candidates, args, iters):
    """(us, label, output) of the fastest candidate that runs; failures are listed in the label."""
    best, failed = None, []
    for label, fn in candidates:
        try:
            out = jax.block_until_ready(fn(*args))
            us = median_call_s(fn, args, iters) * 1e6
        except Exception as e:  # noqa: BLE001 -- a config that does not fit: try the next
            failed.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        if best is None or us < best[0]:
            best = (us, label, out)
    if best is None:
        return None, "; ".join(failed), None
    return best


def _ours_configs(text: str):
    """ "tuned,16:4:4:2,32:4:8:3:u" -> [(label, ragged_paged_attention kwargs)]: block_q tokens,
    pages per compute block, warps, stages, and a trailing ":u" for the unmasked prefix."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if item == "tuned":
            out.append(("tuned defaults", {}))
        elif item:
            fields = item.split(":")
            prefix = fields[-1] == "u"
            bq, pp, w, st = (int(x) for x in fields[:4])
            kw = dict(block_q=bq, pages_per_compute_block=pp, num_warps=w, num_stages=st)
            out.append((f"bq{bq} p{pp} w{w} st{st}" + (" unmasked prefix" if prefix else ""),
                        dict(kw, unmasked_prefix=prefix)))  # fmt: skip
    return out


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--points", default="1x2048,4x1024,1x8192", help="BxPROMPT,...")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument(
        "--dtype",
        default="float16",
        choices=("float16", "bfloat16"),
        help="float16 (default): JAX's Mosaic GPU attention in jax 0.11.2 fails on bfloat16 "
        "inputs ('src had type bfloat16 and dst had type float16')",
    )
    ap.add_argument(
        "--ours-configs",
        default="tuned",
        help="our general kernel's configurations, one row each: 'tuned' and/or "
        "BQ:PAGES:WARPS:STAGES[:u] (block_q tokens, pages per compute block, warps, stages; ':u' "
        "visits the KV blocks before each tile without masks)",
    )
    ap.add_argument(
        "--no-causal",
        action="store_true",
        help="full (non-causal) attention for JAX's two kernels; ours is always causal and is "
        "then left out",
    )
    args = ap.parse_args(argv)
    if jax.devices()[0].platform != "gpu":
        print("no GPU: this benchmark compiles both GPU lowerings", file=sys.stderr)
        return 2
    from jax.experimental.pallas.ops.gpu import attention as triton_attention
    from jax.experimental.pallas.ops.gpu import attention_mgpu

    s = LLAMA3_8B
    scale = s.D**-0.5
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind}, jax {jax.__version__}; Hq={s.Hq} Hkv={s.Hkv} D={s.D}")
    print("\n| seqs | prompt | kernel | lowering | config | us/call | TFLOP/s | max abs err |")
    print("|---:|---:|---|---|---|---:|---:|---:|")
    causal = not args.no_causal
    print(f"causal: {causal}, dtype: {args.dtype}")
    for B, n in (tuple(int(x) for x in p.split("x")) for p in args.points.split(",") if p):
        q, k, v, ours = _inputs(B, n, jax.random.key(B * 131 + n), args.dtype)
        pairs = n * (n + 1) // 2 if causal else n * n
        flops = 4 * B * pairs * s.Hq * s.D
        rep = s.Hq // s.Hkv
        k_rep, v_rep = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
        tri = [
            (
                f"bq{bq} bk{bk} w{w} st{st}",
                jax.jit(
                    functools.partial(
                        triton_attention.mha,
                        segment_ids=None,
                        sm_scale=scale,
                        causal=causal,
                        block_sizes=triton_attention.BlockSizes(block_q=bq, block_k=bk),
                        num_warps=w,
                        num_stages=st,
                    )
                ),
            )  # fmt: skip
            for bq, bk, w, st in (
                (128, 64, 4, 2),
                (128, 64, 8, 3),
                (128, 128, 8, 2),
                (64, 64, 4, 3),
            )
            # fmt: skip
        ]
        q_scaled = (q.astype(jnp.float32) * scale).astype(q.dtype)  # the Mosaic op takes no scale
        mos = [
            (
                f"bq{bq} bkv{bkv} steps{st}",
                jax.jit(
                    functools.partial(
                        attention_mgpu.attention,
                        config=attention_mgpu.TuningConfig(
                            block_q=bq, block_kv=bkv, max_concurrent_steps=st, causal=causal
                        ),
                    )
                ),
            )
            for bq, bkv, st in ((64, 128, 2), (64, 64, 2), (64, 256, 2), (64, 128, 4))
        ]
        rows = [
            ("jax-triton", "Triton", *_best(tri, (q, k_rep, v_rep), args.iters)),
            ("jax-mosaic", "Mosaic GPU", *_best(mos, (q_scaled, k, v), args.iters)),
        ]
        for label, kw in _ours_configs(args.ours_configs) if causal else ():
            fn = jax.jit(functools.partial(ragged_paged_attention, **kw))
            rows.append(("pallas (ours)", "Triton", *_best([(label, fn)], ours, args.iters)))
        base = None
        for name, lowering, us, label, out in rows:
            if out is not None:
                out = np.asarray(out.astype(jnp.float32)).reshape(B * n, s.Hq, s.D)
                base = out if base is None else base
            if us is None:
                print(f"| {B} | {n} | {name} | {lowering} | failed: {label} | - | - | - |")
                continue
            err = "-" if out is base else f"{float(np.max(np.abs(out - base))):.1e}"
            tf = flops / (us * 1e-6) / 1e12
            print(f"| {B} | {n} | {name} | {lowering} | {label} | {us:.1f} | {tf:.1f} | {err} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
