"""Paged-attention kernel benchmark: Llama-3-8B attention (Hq 32, Hkv 8, D 128, bf16, block 16).

Decode at batch {1, 16, 64, 256} x context {512, 2048, 8192}, for three backends on the same inputs
in the same run:
  pallas     -- our Triton-lowered kernel (`pallas_kernels.ragged_paged_attention`, decode path);
  jax-paged  -- JAX's own `jax.experimental.pallas.ops.gpu.paged_attention` (its cache layout
                [Hkv, pages, page_size, D] is a transposed copy of ours);
  reference  -- the pure-jnp oracle (skipped where its gathered copy of the KV would not fit).

Per row: median time per call (N calls after warm-up, each `block_until_ready`), the time per call
inside one jitted loop (no dispatch overhead), achieved bytes/s (KV actually needed + queries read
once + output written, over the in-loop time) and its fraction of the card's copy bandwidth,
measured in the same run with a timed jitted `x + 1` over a 2 GiB bf16 array (bytes read + written).
Also a max-abs-error column against the reference (or against `pallas` where the reference is
skipped), and a small prefill table (general path, causal) in TFLOP/s.

  PYTHONPATH=. python bench/kernels.py            # full grid (GPU)
  PYTHONPATH=. python bench/kernels.py --quick    # reduced grid
  PYTHONPATH=. python bench/kernels.py --tune     # sweep our kernel's knobs, print the best
  PYTHONPATH=. python bench/kernels.py --cpu-smoke  # tiny sizes, interpret=True (checks the script)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import ragged_paged_attention, ragged_paged_attention_reference

warnings.filterwarnings("ignore", message="The Pallas Triton backend is deprecated")


@dataclasses.dataclass(frozen=True)
class Shape:
    Hq: int = 32
    Hkv: int = 8
    D: int = 128
    block_size: int = 16
    dtype: str = "bfloat16"


LLAMA3_8B = Shape()
SMOKE = Shape(Hq=8, Hkv=2, D=64, block_size=16, dtype="float32")

FULL_GRID = dict(batches=(1, 16, 64, 256), contexts=(512, 2048, 8192))
QUICK_GRID = dict(batches=(1, 64, 256), contexts=(512, 8192))
SMOKE_GRID = dict(batches=(1, 3), contexts=(32, 64))
PREFILL_GRID = ((1, 2048), (4, 1024), (16, 256))  # (sequences, prompt length), fresh prompts
PREFILL_SMOKE = ((2, 32),)
REFERENCE_MAX_TOKENS = 64 * 8192  # reference gathers [T, P*bs] KV in f32: skip above this


def _median_call_s(fn, args, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _in_jit_s(attn, args, reps: int, iters: int) -> float:
    """Seconds per call of `attn` run `reps` times in one jitted loop (q depends on the last out)."""

    @jax.jit
    def loop(q, *rest):
        def body(_, q):
            o = attn(q, *rest)
            return (q.astype(jnp.float32) + 1e-6 * o.astype(jnp.float32)).astype(q.dtype)

        return jax.lax.fori_loop(0, reps, body, q)

    return _median_call_s(loop, args, iters, warmup=1) / reps


def measure_copy_bandwidth(nbytes: int, iters: int, reps: int = 10) -> float:
    """Bytes/s of `x + 1` over `nbytes` of bf16 (read + write), `reps` times in one jitted loop,
    so per-call dispatch is not counted (the same way the attention rows are timed)."""
    x = jnp.ones((nbytes // 2,), jnp.bfloat16)
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, reps, lambda _, y: y + 1, x))
    t = _median_call_s(loop, (x,), iters, warmup=1) / reps
    del x
    return 2 * nbytes / t


def _fmt_err(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def _jax_paged_attention_kwargs(pages_per_seq: int) -> dict:
    k_splits = 1
    while k_splits * 2 <= min(16, pages_per_seq) and pages_per_seq % (k_splits * 2) == 0:
        k_splits *= 2
    return dict(k_splits=k_splits, pages_per_compute_block=min(8, pages_per_seq // k_splits))


def decode_table(shape: Shape, grid: dict, *, iters: int, reps: int, interpret: bool, copy_bw: float):
    B_max, C_max = max(grid["batches"]), max(grid["contexts"])
    bs, dtype = shape.block_size, jnp.dtype(shape.dtype)
    G = shape.Hq // shape.Hkv
    n_pages = B_max * C_max // bs  # cache sized to what the grid needs, one layer
    key = jax.random.key(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    cache_shape = (1, n_pages, shape.Hkv, bs, shape.D)
    k_pages = jax.random.normal(k1, cache_shape, dtype)
    v_pages = jax.random.normal(k2, cache_shape, dtype)
    pool = jax.random.permutation(k3, n_pages).astype(jnp.int32)
    jax_layout = None
    try:
        from jax.experimental.pallas.ops.gpu import paged_attention as jax_pa

        jax_layout = (jnp.swapaxes(k_pages[0], 0, 1), jnp.swapaxes(v_pages[0], 0, 1))
    except Exception as e:  # noqa: BLE001 -- report, don't stop
        jax_pa, jax_note = None, f"import failed: {type(e).__name__}"

    rows = []
    for B, ctx in itertools.product(grid["batches"], grid["contexts"]):
        P = ctx // bs
        q = jax.random.normal(jax.random.fold_in(k4, B * 100003 + ctx), (B, shape.Hq, shape.D), dtype)
        bt = pool[: B * P].reshape(B, P)
        kv_lens = jnp.full((B,), ctx, jnp.int32)
        qsl = jnp.arange(B + 1, dtype=jnp.int32)
        itemsize = dtype.itemsize
        nbytes = 2 * B * ctx * shape.Hkv * shape.D * itemsize + 2 * B * shape.Hq * shape.D * itemsize

        ours = functools.partial(ragged_paged_attention, decode_only=True, interpret=interpret)
        backends = {
            "pallas": (
                lambda q, k, v, bt, kl, qsl: ours(q, k, v, bt, kl, qsl, 0),
                (q, k_pages, v_pages, bt, kv_lens, qsl),
            )
        }
        if jax_pa is not None:
            kw = _jax_paged_attention_kwargs(P)
            fn = functools.partial(jax_pa.paged_attention, interpret=interpret, **kw)
            # JAX's kernel applies no softmax scale: hand it q * D**-0.5 (scaled outside the timing).
            q_scaled = (q.astype(jnp.float32) * shape.D**-0.5).astype(dtype)
            backends["jax-paged"] = (
                lambda q, k, v, bt, kl, fn=fn: fn(q, k, v, bt, kl),
                (q_scaled, *jax_layout, bt, kv_lens),
            )
        if B * ctx <= REFERENCE_MAX_TOKENS:
            backends["reference"] = (
                lambda q, k, v, bt, kl, qsl: ragged_paged_attention_reference(q, k, v, bt, kl, qsl, 0),
                (q, k_pages, v_pages, bt, kv_lens, qsl),
            )
        outs = {}
        for name, (fn, args) in backends.items():
            row = dict(batch=B, ctx=ctx, backend=name, note="")
            try:
                jfn = jax.jit(fn)
                outs[name] = np.asarray(jfn(*args).astype(jnp.float32))
                row["call_us"] = _median_call_s(jfn, args, iters) * 1e6
                row["loop_us"] = _in_jit_s(fn, args, reps, max(3, iters // 4)) * 1e6
                row["GBps"] = nbytes / (row["loop_us"] * 1e-6) / 1e9
                row["frac"] = row["GBps"] * 1e9 / copy_bw
            except Exception as e:  # noqa: BLE001 -- e.g. a kernel that fails to lower: note it
                row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
            rows.append(row)
            progress = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}
            print(f"  {progress}", file=sys.stderr, flush=True)
        base = "reference" if "reference" in outs else "pallas"  # what errors are measured against
        for row in rows[-len(backends) :]:
            if row["backend"] != base and row["backend"] in outs and base in outs:
                row["err"] = float(np.max(np.abs(outs[row["backend"]] - outs[base])))
        if "reference" not in backends:
            rows.append(dict(batch=B, ctx=ctx, backend="reference", note="skipped: gathered KV too large"))
        if jax_pa is None:
            rows.append(dict(batch=B, ctx=ctx, backend="jax-paged", note=jax_note))
    del k_pages, v_pages, jax_layout
    return rows


def prefill_table(shape: Shape, grid, *, iters: int, interpret: bool):
    """Fresh prompts through the general (causal) path: time and achieved TFLOP/s."""
    bs, dtype = shape.block_size, jnp.dtype(shape.dtype)
    rows = []
    key = jax.random.key(1)
    for S, n in grid:
        P = -(-n // bs)
        T = S * n
        k1, k2, k3 = jax.random.split(jax.random.fold_in(key, S * 7 + n), 3)
        k_pages = jax.random.normal(k1, (1, S * P, shape.Hkv, bs, shape.D), dtype)
        v_pages = jax.random.normal(k2, (1, S * P, shape.Hkv, bs, shape.D), dtype)
        q = jax.random.normal(k3, (T, shape.Hq, shape.D), dtype)
        bt = jnp.arange(S * P, dtype=jnp.int32).reshape(S, P)
        kv_lens = jnp.full((S,), n, jnp.int32)
        qsl = jnp.arange(S + 1, dtype=jnp.int32) * n
        args = (q, k_pages, v_pages, bt, kv_lens, qsl)
        flops = 4 * S * (n * (n + 1) // 2) * shape.Hq * shape.D  # QK^T and PV over the causal half
        fns = {"pallas": jax.jit(functools.partial(ragged_paged_attention, interpret=interpret))}
        if T * P * bs <= REFERENCE_MAX_TOKENS:
            fns["reference"] = jax.jit(ragged_paged_attention_reference)
        outs = {}
        for name, fn in fns.items():
            row = dict(seqs=S, prompt=n, backend=name, note="")
            try:
                outs[name] = np.asarray(fn(*args).astype(jnp.float32))
                row["call_us"] = _median_call_s(fn, args, iters) * 1e6
                row["TFLOPs"] = flops / (row["call_us"] * 1e-6) / 1e12
            except Exception as e:  # noqa: BLE001
                row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
            rows.append(row)
        if "reference" in outs and "pallas" in outs:
            rows[-2]["err"] = float(np.max(np.abs(outs["pallas"] - outs["reference"])))
        if "reference" not in fns:
            rows.append(dict(seqs=S, prompt=n, backend="reference", note="skipped: gathered KV too large"))
    return rows


def tune(shape: Shape, *, iters: int, reps: int, interpret: bool, copy_bw: float, smoke: bool):
    """Sweep our decode kernel's knobs at a few points, in two stages (block/warps/stages at the
    automatic split count, then the split count at the best of those); print the best per point."""
    bs, dtype = shape.block_size, jnp.dtype(shape.dtype)
    points = ((1, 64), (3, 32)) if smoke else ((1, 8192), (16, 2048), (64, 2048), (256, 512), (256, 8192))
    stage1 = list(itertools.product((1, 2), (4,), (2,))) if smoke else list(
        itertools.product((2, 4, 8), (4, 8), (2, 3))
    )
    split_choices = (1, 2) if smoke else (1, 2, 4, 8, 16, 32)
    lines = [
        "| batch | ctx | best (pages/block, warps, stages, splits) | us in loop | GB/s | frac | default us |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    key = jax.random.key(2)
    for B, ctx in points:
        P = ctx // bs
        k1, k2, k3 = jax.random.split(jax.random.fold_in(key, B * 100003 + ctx), 3)
        k_pages = jax.random.normal(k1, (1, B * P, shape.Hkv, bs, shape.D), dtype)
        v_pages = jax.random.normal(k2, (1, B * P, shape.Hkv, bs, shape.D), dtype)
        q = jax.random.normal(k3, (B, shape.Hq, shape.D), dtype)
        bt = jnp.arange(B * P, dtype=jnp.int32).reshape(B, P)
        kv_lens = jnp.full((B,), ctx, jnp.int32)
        qsl = jnp.arange(B + 1, dtype=jnp.int32)
        args = (q, k_pages, v_pages, bt, kv_lens, qsl)
        nbytes = (2 * B * ctx * shape.Hkv + 2 * B * shape.Hq) * shape.D * dtype.itemsize

        def timed(ppcb, nw, ns, nsplit):
            fn = functools.partial(
                ragged_paged_attention, decode_only=True, interpret=interpret,
                pages_per_compute_block=ppcb, num_warps=nw, num_stages=ns, num_kv_splits=nsplit,
            )
            try:
                attn = lambda q, k, v, bt, kl, qsl: fn(q, k, v, bt, kl, qsl, 0)  # noqa: E731
                return _in_jit_s(attn, args, reps, iters) * 1e6
            except Exception as e:  # noqa: BLE001
                print(f"  {B}x{ctx} {(ppcb, nw, ns, nsplit)}: failed {type(e).__name__}", file=sys.stderr)
                return float("inf")

        default_us = timed(None, None, None, None)
        results = {(*knobs, None): timed(*knobs, None) for knobs in stage1}
        best = min(results, key=results.get)
        results.update({(*best[:3], n): timed(*best[:3], n) for n in split_choices})
        best = min(results, key=results.get)
        gbps = nbytes / (results[best] * 1e-6) / 1e9
        lines.append(
            f"| {B} | {ctx} | {best} | {results[best]:.1f} | {gbps:.4g} | "
            f"{gbps * 1e9 / copy_bw:.2f} | {default_us:.1f} |"
        )
        print(lines[-1], flush=True)
        del k_pages, v_pages
    return "\n".join(lines)


def _decode_markdown(rows, copy_bw) -> str:
    out = [
        f"Decode, copy bandwidth {copy_bw / 1e9:.4g} GB/s (x + 1 in a jitted loop, read + write).",
        "",
        "| batch | ctx | backend | us/call (median) | us/call in jit loop | GB/s | frac of copy BW "
        "| max abs err | note |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "loop_us" in r:
            out.append(
                f"| {r['batch']} | {r['ctx']} | {r['backend']} | {r['call_us']:.1f} | {r['loop_us']:.1f} | "
                f"{r['GBps']:.4g} | {r['frac']:.2f} | {_fmt_err(r.get('err'))} | {r['note']} |"
            )
        else:
            out.append(f"| {r['batch']} | {r['ctx']} | {r['backend']} | - | - | - | - | - | {r['note']} |")
    return "\n".join(out)


def _prefill_markdown(rows) -> str:
    out = [
        "Prefill (fresh prompts, general path, causal).",
        "",
        "| seqs | prompt | backend | us/call (median) | TFLOP/s | max abs err | note |",
        "|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        if "call_us" in r:
            out.append(
                f"| {r['seqs']} | {r['prompt']} | {r['backend']} | {r['call_us']:.1f} | {r['TFLOPs']:.3g} | "
                f"{_fmt_err(r.get('err'))} | {r['note']} |"
            )
        else:
            out.append(f"| {r['seqs']} | {r['prompt']} | {r['backend']} | - | - | - | {r['note']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced grid")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, interpret=True (any backend)")
    ap.add_argument("--tune", action="store_true", help="sweep our decode kernel's knobs instead")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per row (median)")
    ap.add_argument("--reps", type=int, default=None, help="calls per jitted timing loop")
    ap.add_argument("--no-prefill", action="store_true", help="skip the prefill table")
    ap.add_argument("--out", default=None, help="also write the Markdown tables to this file")
    args = ap.parse_args(argv)

    smoke = args.cpu_smoke
    if not smoke and jax.devices()[0].platform != "gpu":
        print("no GPU: run with --cpu-smoke (tiny sizes, interpret mode)", file=sys.stderr)
        return 2
    shape = SMOKE if smoke else LLAMA3_8B
    grid = SMOKE_GRID if smoke else (QUICK_GRID if args.quick else FULL_GRID)
    iters = args.iters or (2 if smoke else 20)
    reps = args.reps or (1 if smoke else 10)
    dev = jax.devices()[0]
    header = (
        f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}; shape Hq={shape.Hq} "
        f"Hkv={shape.Hkv} D={shape.D} block={shape.block_size} {shape.dtype}"
    )
    print(header, flush=True)
    copy_bw = measure_copy_bandwidth((1 << 20) if smoke else (2 << 30), iters)
    print(f"copy bandwidth: {copy_bw / 1e9:.4g} GB/s", flush=True)

    if args.tune:
        text = tune(shape, iters=max(3, iters // 4), reps=reps, interpret=smoke, copy_bw=copy_bw, smoke=smoke)
        sections = [header, text]
    else:
        rows = decode_table(shape, grid, iters=iters, reps=reps, interpret=smoke, copy_bw=copy_bw)
        sections = [header, _decode_markdown(rows, copy_bw)]
        print(sections[-1], flush=True)
        if not args.no_prefill:
            pgrid = PREFILL_SMOKE if smoke else (PREFILL_GRID[:1] if args.quick else PREFILL_GRID)
            sections.append(_prefill_markdown(prefill_table(shape, pgrid, iters=iters, interpret=smoke)))
            print(sections[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
