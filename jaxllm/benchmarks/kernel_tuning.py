"""The tuning and profiling modes of `jaxllm.benchmarks.kernels`: `tune` (coordinate descent over
the decode kernel's knobs, `--tune`), `profile_runs` (a few calls per split count for ncu / nsys,
`--profile`) and `summarize_ncu_csv` (`--summarize-ncu`). Run them through
`python -m jaxllm.benchmarks.kernels`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import sys
import time

import jax

from jaxllm.benchmarks.kernels import (
    Shape,
    auto_reps,
    decode_inputs,
    in_jit_s,
    jax_paged_attention_kwargs,
)
from pallas_kernels import ragged_paged_attention

# Tuning points, most important first (the targets: batch >= 16 at context >= 2048, and
# the small rows where launches dominate); a time budget may cut the list short.
TUNE_POINTS = (
    (16, 2048),
    (1, 512),
    (64, 2048),
    (16, 8192),
    (256, 2048),
    (1, 8192),
    (64, 8192),
    (256, 8192),
    (1, 2048),
    (16, 512),
    (64, 512),
    (256, 512),
)
TUNE_SMOKE_POINTS = ((1, 64), (3, 32))
SPLIT_CHOICES = (1, 2, 4, 8, 16, 32)


def tune(
    shape: Shape,
    *,
    iters: int,
    reps: int | None,
    interpret: bool,
    copy_bw: float,
    smoke: bool,
    budget_s: float,
    descent_points: int,
    json_path: str | None,
    points=None,
):
    """Sweep our decode kernel's knobs (pages per compute block, warps, stages, splits) point by
    point, by coordinate descent from the table's values: splits, then pages, warps, stages, then
    splits again next to the best. Points past the first `descent_points` get the split sweep only.
    JAX's op and a one-fusion loop (the per-iteration floor) are timed at each point too. Stops
    starting new configurations once `budget_s` seconds have passed."""
    from pallas_kernels import tuned_block_sizes

    t0 = time.perf_counter()
    cfg = tuned_block_sizes.lookup(shape.D, shape.block_size, shape.dtype, shape.Hq // shape.Hkv)
    base = (cfg.decode_pages_per_compute_block, cfg.decode_num_warps, cfg.decode_num_stages)
    points = points or (TUNE_SMOKE_POINTS if smoke else TUNE_POINTS)
    lines = [
        f"table config {cfg}",
        "",
        "| batch | ctx | best (pages/block, warps, stages, splits) | us in loop | GB/s | frac "
        "| table default us (splits) | jax-paged us | floor us | reps |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    record = []
    key = jax.random.key(2)
    try:
        from jax.experimental.pallas.ops.gpu import paged_attention as jax_pa
    except Exception:  # noqa: BLE001
        jax_pa = None
    for i, (B, ctx) in enumerate(points):
        if time.perf_counter() - t0 > budget_s:
            lines.append(f"| {B} | {ctx} | skipped: time budget | | | | | | | |")
            continue
        ours, theirs, nbytes = decode_inputs(shape, B, ctx, key)
        row_reps = reps or auto_reps(nbytes)
        P = ctx // shape.block_size
        cache: dict = {}

        # loop_us and timed are called only in this iteration; their defaults bind this point's
        # values (B, ctx, row_reps, cache, its inputs) so no call can see a later point's.
        def loop_us(attn, args, B=B, ctx=ctx, row_reps=row_reps):
            try:
                return in_jit_s(attn, args, row_reps, iters) * 1e6
            except Exception as e:  # noqa: BLE001
                print(
                    f"  {B}x{ctx}: failed {type(e).__name__}: {str(e).splitlines()[0][:120]}",
                    file=sys.stderr,
                )
                return float("inf")

        def timed(knobs, B=B, ctx=ctx, cache=cache, args=ours):
            if knobs in cache:
                return cache[knobs]
            if time.perf_counter() - t0 > budget_s:
                return float("inf")
            ppcb, nw, nst, nsplit = knobs
            fn = functools.partial(
                ragged_paged_attention,
                decode_only=True,
                interpret=interpret,
                pages_per_compute_block=ppcb,
                num_warps=nw,
                num_stages=nst,
                num_kv_splits=nsplit,
            )
            cache[knobs] = loop_us(
                lambda q, k, v, bt, kl, qsl, fn=fn: fn(q, k, v, bt, kl, qsl, 0), args
            )
            print(f"  {B}x{ctx} {knobs}: {cache[knobs]:.1f} us", file=sys.stderr, flush=True)
            return cache[knobs]

        floor = loop_us(lambda q, *rest: q, ours)
        jax_us = float("nan")
        if jax_pa is not None:
            jfn = functools.partial(
                jax_pa.paged_attention, interpret=interpret, **jax_paged_attention_kwargs(P)
            )
            jax_us = loop_us(lambda q, k, v, bt, kl, fn=jfn: fn(q, k, v, bt, kl), theirs)
        max_split = max(1, ctx // 64)  # a split keeps >= 64 tokens
        auto_split = tuned_block_sizes.choose_num_kv_splits(
            B, shape.Hkv, ctx, cfg.decode_pages_per_compute_block * shape.block_size, cfg
        )
        default_us = timed((*base, auto_split))
        splits = [n for n in SPLIT_CHOICES if n <= max_split] if not smoke else [1, 2]
        for n in splits:
            timed((*base, n))
        best = min(cache, key=cache.get)
        if i < descent_points:
            for pp in (2, 4, 8) if not smoke else (1, 2):
                timed((pp, *best[1:]))
            best = min(cache, key=cache.get)
            for nw in (2, 4, 8) if not smoke else (4,):
                timed((best[0], nw, *best[2:]))
            best = min(cache, key=cache.get)
            for nst in (1, 2, 3, 4) if not smoke else (2,):
                timed((*best[:2], nst, best[3]))
            best = min(cache, key=cache.get)
            for n in (best[3] // 2, best[3] * 2):
                if n in splits:
                    timed((*best[:3], n))
            best = min(cache, key=cache.get)
        gbps = nbytes / (cache[best] * 1e-6) / 1e9
        lines.append(
            f"| {B} | {ctx} | {best} | {cache[best]:.1f} | {gbps:.4g} | "
            f"{gbps * 1e9 / copy_bw:.2f} | {default_us:.1f} ({auto_split}) | {jax_us:.1f} | "
            f"{floor:.1f} | {row_reps} |"
        )
        print(lines[-1], flush=True)
        record.append(
            dict(
                batch=B,
                ctx=ctx,
                reps=row_reps,
                floor_us=floor,
                jax_us=jax_us,
                auto_split=auto_split,
                results=[[*knobs, us] for knobs, us in cache.items()],
            )
        )
        if json_path:
            with open(json_path, "w") as f:
                json.dump(dict(copy_bw=copy_bw, table=dataclasses.asdict(cfg), points=record), f)
        del ours, theirs, timed  # free this point's inputs (timed's default holds them too)
    return "\n".join(lines)


def profile_runs(shape: Shape, points, splits, *, calls: int, interpret: bool) -> None:
    """Run each backend `calls` times per point, untimed, for an external profiler (e.g. Nsight
    Compute: `ncu --metrics gpu__time_duration.sum python -m jaxllm.benchmarks.kernels --profile
    1x512`), which then reports each kernel's device time: ours per split count (main + combine
    kernel) and JAX's op (its kernel + the XLA fusions of its combine)."""
    try:
        from jax.experimental.pallas.ops.gpu import paged_attention as jax_pa
    except Exception:  # noqa: BLE001
        jax_pa = None
    key = jax.random.key(3)
    for B, ctx in points:
        ours, theirs, _ = decode_inputs(shape, B, ctx, key)
        fns = {}
        for n, pp, combine in splits:  # (splits, pages per block (0: table's), decode_combine)
            fn = functools.partial(
                ragged_paged_attention,
                decode_only=True,
                interpret=interpret,
                num_kv_splits=n,
                pages_per_compute_block=pp or None,
                decode_combine=combine,
            )
            fns[f"pallas ns={n} ppcb={pp} combine={combine}"] = (
                jax.jit(lambda q, k, v, bt, kl, qsl, fn=fn: fn(q, k, v, bt, kl, qsl, 0)),
                ours,
            )
        if jax_pa is not None:
            kw = jax_paged_attention_kwargs(ctx // shape.block_size)
            fns["jax-paged"] = (
                jax.jit(functools.partial(jax_pa.paged_attention, interpret=interpret, **kw)),
                theirs,
            )
        for name, (fn, args) in fns.items():
            jax.block_until_ready(fn(*args))  # compile
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
            print(f"profiled {B}x{ctx} {name}: {calls} calls", flush=True)


def summarize_ncu_csv(path: str) -> str:
    """Median device time per kernel name from `ncu --csv --metrics gpu__time_duration.sum` output,
    in launch order (first appearance)."""
    import csv

    times: dict[str, list[float]] = {}
    with open(path) as f:
        lines = [ln for ln in f if ln.startswith('"')]
    for rec in csv.DictReader(lines):
        if rec.get("Metric Name") != "gpu__time_duration.sum":
            continue
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
        value = float(rec["Metric Value"].replace(",", "")) * scale.get(
            rec.get("Metric Unit", "ns"), 1e-3
        )
        name = rec["Kernel Name"][:70] + f" grid{rec.get('Grid Size', '')}"
        times.setdefault(name, []).append(value)
    out = ["| kernel | launches | median us |", "|---|---:|---:|"]
    for name, ts in times.items():
        out.append(f"| {name} | {len(ts)} | {statistics.median(ts):.2f} |")
    return "\n".join(out)
