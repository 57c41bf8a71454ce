"""Paged-attention kernel benchmark: Llama-3-8B attention (Hq 32, Hkv 8, D 128, bf16, block 16).

Decode at batch {1, 16, 64, 256} x context {512, 2048, 8192}, for three backends on the same inputs
in the same run:
  pallas     -- our Triton-lowered kernel (`pallas_kernels.ragged_paged_attention`, decode path);
  pallas-xc  -- the same split kernel merged by jnp ops in the same jit (`decode_combine="xla"`)
                instead of the Pallas combine kernel, with JAX's op's split layout (one compute
                block per split where possible: `tuned_block_sizes.one_block_split_plan`); run at
                batch <= 16 only (XC_MAX_BATCH: the variant is for latency-bound small grids).
                `--xc-variants NS:PAGES[:STAGES],...` adds rows `pallas-xc nsNS pPAGES` (explicit
                split count, pages per compute block and stages; same combine; batch <= 16 too);
  pallas-fu  -- the same layout with the fused combine (`decode_combine="fused"`: one kernel, the
                last split of each (sequence, KV head) merges); variants `NS:PAGES[:STAGES]:f`;
  jax-paged  -- JAX's own `jax.experimental.pallas.ops.gpu.paged_attention` (its cache layout
                [Hkv, pages, page_size, D] is a transposed copy of ours);
  cuda       -- our CUDA kernels through XLA FFI (`cuda_ext.attention.ragged_paged_attention_cuda`,
                decode path; skipped with the reason when the cuda backend is unavailable);
  reference  -- the pure-jnp oracle (skipped where its gathered copy of the KV would not fit).
`--backends` picks a subset (e.g. `--backends pallas,jax-paged,cuda`); `--points 1x512,16x2048`
replaces the grid.

Per row: median time per call (N calls after warm-up, each `block_until_ready`), the time per call
inside one jitted loop (reps per loop chosen per row so one loop runs ~10 ms: the loop call's own
dispatch stays under 1 us per call; every loop body runs as a CUDA graph, see XLA_FLAGS below),
achieved bytes/s (KV actually needed + queries read once + output written, over the in-loop
time) and its fraction of the card's copy bandwidth, measured in the same run with a timed jitted
`x + 1` over a 2 GiB bf16 array (bytes read + written). Also a max-abs-error column against the
reference (or against `pallas` where the reference is skipped), the loop floor per batch (the same
loop with a one-fusion body), and a small prefill table (general
path, causal) in TFLOP/s.

  python -m jaxllm.benchmarks.kernels             # full grid (GPU)
  python -m jaxllm.benchmarks.kernels --quick     # reduced grid
  python -m jaxllm.benchmarks.kernels --tune [--tune-points 1x512,16x2048] [--tune-json F]
                                                  # coordinate descent over our decode knobs
  python -m jaxllm.benchmarks.kernels --profile 1x512 --profile-splits 1,8,16:2,16:2x
                                                  # untimed calls, to run under ncu (a trailing
                                                  # x: decode_combine="xla")
  python -m jaxllm.benchmarks.kernels --summarize-ncu F.csv  # per-kernel device time from ncu
  python -m jaxllm.benchmarks.kernels --cpu-smoke  # tiny sizes, interpret=True (checks the script)

Run it from the checkout root or with jaxllm installed (it imports `pallas_kernels`). The --tune,
--profile and --summarize-ncu modes live in `jaxllm.benchmarks.kernel_tuning`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import statistics
import sys
import time
import warnings

# Every timing loop's body runs as a CUDA graph (XLA command buffer), whatever its kernel count.
# XLA's default (`xla_gpu_graph_min_graph_size` 5) captures only bodies of >= 5 kernels: JAX's op
# (its pad, kernel and combine fusions: 6) was replayed as a graph while a one-kernel body was
# launched kernel by kernel from the host, which cost a 1 x 512 row ~6-12 us (H200, 2026-11-28,
# bench/gpu_runs/2026-11-28_h200_session7_fused.md). Set before jax starts; an explicit value in
# XLA_FLAGS wins.
if "xla_gpu_graph_min_graph_size" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_gpu_graph_min_graph_size=1"
    ).strip()

import jax  # noqa: E402 -- after XLA_FLAGS
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxllm.entrypoints.strict_parser import script_parser  # noqa: E402
from pallas_kernels import (  # noqa: E402
    ragged_paged_attention,
    ragged_paged_attention_reference,
    tuned_block_sizes,
)

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


def median_call_s(fn, args, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def auto_reps(nbytes: int, target_s: float = 10e-3, lo: int = 10, hi: int = 200) -> int:
    """Calls per jitted timing loop: enough that one loop runs ~`target_s`, so the host's dispatch
    and completion latency of the loop call itself (tens of us) is spread thin over the calls.
    The per-call estimate assumes 2 TB/s plus 20 us."""
    est = nbytes / 2e12 + 20e-6
    return int(max(lo, min(hi, round(target_s / est))))


def in_jit_s(attn, args, reps: int, iters: int) -> float:
    """Seconds per call of `attn` run `reps` times in one jitted loop (q depends on last out)."""

    @jax.jit
    def loop(q, *rest):
        def body(_, q):
            o = attn(q, *rest)
            return (q.astype(jnp.float32) + 1e-6 * o.astype(jnp.float32)).astype(q.dtype)

        return jax.lax.fori_loop(0, reps, body, q)

    return median_call_s(loop, args, iters, warmup=1) / reps


def measure_copy_bandwidth(nbytes: int, iters: int, reps: int = 10) -> float:
    """Bytes/s of `x + 1` over `nbytes` of bf16 (read + write), `reps` times in one jitted loop,
    so per-call dispatch is not counted (the same way the attention rows are timed)."""
    x = jnp.ones((nbytes // 2,), jnp.bfloat16)
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, reps, lambda _, y: y + 1, x))
    t = median_call_s(loop, (x,), iters, warmup=1) / reps
    del x
    return 2 * nbytes / t


def fmt_err(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def jax_paged_attention_kwargs(pages_per_seq: int) -> dict:
    k_splits = 1
    while k_splits * 2 <= min(16, pages_per_seq) and pages_per_seq % (k_splits * 2) == 0:
        k_splits *= 2
    return dict(k_splits=k_splits, pages_per_compute_block=min(8, pages_per_seq // k_splits))


BACKENDS = ("pallas", "pallas-xc", "pallas-fu", "jax-paged", "cuda", "reference")
XC_MAX_BATCH = 16  # pallas-xc / pallas-fu (and --xc-variants) rows only up to this batch


def xc_plan(ctx: int, block_size: int) -> tuple[int, int]:
    """(num_kv_splits, pages per compute block) of the `pallas-xc` row: JAX's op's layout (up to 16
    splits of one compute block of at most 8 pages), from the library's own rule."""
    return tuned_block_sizes.one_block_split_plan(ctx, block_size, max(1, 16 // block_size))


@functools.cache
def cuda_attention_or_reason():
    """(the cuda backend's attention function, "") when it can run here (building the library on
    first use), else (None, why not)."""
    try:
        from cuda_ext import registry
        from cuda_ext.attention import ragged_paged_attention_cuda

        missing = registry.missing_requirements()
        if missing:
            return None, "cuda backend unavailable: missing " + "; ".join(missing)
        registry.ensure_registered()
    except Exception as e:  # noqa: BLE001 -- report, don't stop
        return None, f"cuda backend unavailable: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
    return ragged_paged_attention_cuda, ""


def decode_table(
    shape: Shape, grid: dict, *, iters: int, reps: int, interpret: bool, copy_bw: float,
    backends_wanted=BACKENDS, on_point=None, xc_variants=(),
):  # fmt: skip
    """Rows of the decode grid; `on_point(rows, floors)` is called after each (batch, ctx) point
    (the caller writes partial tables, so a time limit still leaves the finished rows).
    `xc_variants`: (num_kv_splits, pages per compute block, num_stages or None) timed as extra
    `pallas-xc` rows at batch <= XC_MAX_BATCH. `grid["points"]`, when present, replaces the
    batches x contexts product."""
    points = grid.get("points") or tuple(itertools.product(grid["batches"], grid["contexts"]))
    B_max, C_max = max(b for b, _ in points), max(c for _, c in points)
    bs, dtype = shape.block_size, jnp.dtype(shape.dtype)
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
    floors = {}
    for B, ctx in points:
        P = ctx // bs
        q = jax.random.normal(
            jax.random.fold_in(k4, B * 100003 + ctx), (B, shape.Hq, shape.D), dtype
        )
        bt = pool[: B * P].reshape(B, P)
        kv_lens = jnp.full((B,), ctx, jnp.int32)
        qsl = jnp.arange(B + 1, dtype=jnp.int32)
        itemsize = dtype.itemsize
        nbytes = (
            2 * B * ctx * shape.Hkv * shape.D * itemsize + 2 * B * shape.Hq * shape.D * itemsize
        )

        ours = functools.partial(ragged_paged_attention, decode_only=True, interpret=interpret)
        backends = {}
        if "pallas" in backends_wanted:
            backends["pallas"] = (
                lambda q, k, v, bt, kl, qsl, fn=ours: fn(q, k, v, bt, kl, qsl, 0),
                (q, k_pages, v_pages, bt, kv_lens, qsl),
            )
        xc = []
        if B <= XC_MAX_BATCH:
            for name, combine in (("pallas-xc", "xla"), ("pallas-fu", "fused")):
                if name in backends_wanted:
                    xc.append((name, *xc_plan(ctx, bs), None, combine))
            for n, pp, st, combine in xc_variants:
                label = "pallas-" + ("fu" if combine == "fused" else "xc")
                xc.append((f"{label} ns{n} p{pp}" + (f" st{st}" if st else ""), n, pp, st, combine))
        for label, n, pp, st, combine in xc:
            fn = functools.partial(
                ours, num_kv_splits=n, pages_per_compute_block=pp, num_stages=st,
                decode_combine=combine,
            )  # fmt: skip
            backends[label] = (
                lambda q, k, v, bt, kl, qsl, fn=fn: fn(q, k, v, bt, kl, qsl, 0),
                (q, k_pages, v_pages, bt, kv_lens, qsl),
            )
        if jax_pa is not None and "jax-paged" in backends_wanted:
            kw = jax_paged_attention_kwargs(P)
            fn = functools.partial(jax_pa.paged_attention, interpret=interpret, **kw)
            # JAX's kernel applies no softmax scale: hand it q * D**-0.5 (scaled outside timing).
            q_scaled = (q.astype(jnp.float32) * shape.D**-0.5).astype(dtype)
            backends["jax-paged"] = (
                lambda q, k, v, bt, kl, fn=fn: fn(q, k, v, bt, kl),
                (q_scaled, *jax_layout, bt, kv_lens),
            )
        cuda_skip = None
        if "cuda" in backends_wanted:
            cuda_fn, cuda_skip = cuda_attention_or_reason()
            if cuda_fn is not None:
                backends["cuda"] = (
                    lambda q, k, v, bt, kl, qsl, fn=cuda_fn: fn(
                        q, k, v, bt, kl, qsl, 0, decode_only=True
                    ),
                    (q, k_pages, v_pages, bt, kv_lens, qsl),
                )
        if B * ctx <= REFERENCE_MAX_TOKENS and "reference" in backends_wanted:
            backends["reference"] = (
                lambda q, k, v, bt, kl, qsl: ragged_paged_attention_reference(
                    q, k, v, bt, kl, qsl, 0
                ),
                (q, k_pages, v_pages, bt, kv_lens, qsl),
            )
        if B not in floors:  # the timing loop with a one-fusion body instead of attention
            floors[B] = (
                in_jit_s(lambda q, *rest: q, (q,), reps or auto_reps(nbytes), max(3, iters // 4))
                * 1e6
            )
        outs = {}
        for name, (fn, args) in backends.items():
            row = dict(batch=B, ctx=ctx, backend=name, note="")
            if name in ("pallas-xc", "pallas-fu"):
                row["note"] = "ns{} p{}".format(*xc_plan(ctx, bs))
            try:
                jfn = jax.jit(fn)
                outs[name] = np.asarray(jfn(*args).astype(jnp.float32))
                row["call_us"] = median_call_s(jfn, args, iters) * 1e6
                row_reps = reps or auto_reps(nbytes)
                row["loop_us"] = in_jit_s(fn, args, row_reps, max(3, iters // 4)) * 1e6
                row["reps"] = row_reps
                row["GBps"] = nbytes / (row["loop_us"] * 1e-6) / 1e9
                row["frac"] = row["GBps"] * 1e9 / copy_bw
            except Exception as e:  # noqa: BLE001 -- e.g. a kernel that fails to lower: note it
                row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
            rows.append(row)
            progress = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}
            print(f"  {progress}", file=sys.stderr, flush=True)
        # what errors are measured against: the reference, else pallas, else the first backend
        base = next((b for b in ("reference", "pallas", *outs) if b in outs), None)
        for row in rows[-len(backends) :] if backends else []:
            if row["backend"] != base and row["backend"] in outs and base in outs:
                row["err"] = float(np.max(np.abs(outs[row["backend"]] - outs[base])))
        if "reference" in backends_wanted and "reference" not in backends:
            rows.append(
                dict(batch=B, ctx=ctx, backend="reference", note="skipped: gathered KV too large")
            )
        if jax_pa is None and "jax-paged" in backends_wanted:
            rows.append(dict(batch=B, ctx=ctx, backend="jax-paged", note=jax_note))
        if cuda_skip:
            rows.append(dict(batch=B, ctx=ctx, backend="cuda", note=f"skipped: {cuda_skip}"))
        if on_point is not None:
            on_point(rows, floors)
    del k_pages, v_pages, jax_layout
    return rows, floors


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
                row["call_us"] = median_call_s(fn, args, iters) * 1e6
                row["TFLOPs"] = flops / (row["call_us"] * 1e-6) / 1e12
            except Exception as e:  # noqa: BLE001
                row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
            rows.append(row)
        if "reference" in outs and "pallas" in outs:
            rows[-2]["err"] = float(np.max(np.abs(outs["pallas"] - outs["reference"])))
        if "reference" not in fns:
            rows.append(
                dict(seqs=S, prompt=n, backend="reference", note="skipped: gathered KV too large")
            )
    return rows


def decode_inputs(shape: Shape, B: int, ctx: int, key):
    """Our args, JAX-layout args, and the bytes a decode step must move (KV + q + out)."""
    bs, dtype = shape.block_size, jnp.dtype(shape.dtype)
    P = ctx // bs
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, B * 100003 + ctx), 3)
    k_pages = jax.random.normal(k1, (1, B * P, shape.Hkv, bs, shape.D), dtype)
    v_pages = jax.random.normal(k2, (1, B * P, shape.Hkv, bs, shape.D), dtype)
    q = jax.random.normal(k3, (B, shape.Hq, shape.D), dtype)
    bt = jax.random.permutation(k3, B * P).astype(jnp.int32).reshape(B, P)
    kv_lens = jnp.full((B,), ctx, jnp.int32)
    qsl = jnp.arange(B + 1, dtype=jnp.int32)
    ours = (q, k_pages, v_pages, bt, kv_lens, qsl)
    q_scaled = (q.astype(jnp.float32) * shape.D**-0.5).astype(dtype)
    theirs = (q_scaled, jnp.swapaxes(k_pages[0], 0, 1), jnp.swapaxes(v_pages[0], 0, 1), bt, kv_lens)
    nbytes = (2 * B * ctx * shape.Hkv + 2 * B * shape.Hq) * shape.D * dtype.itemsize
    return ours, theirs, nbytes


def _parse_points(text: str):
    return tuple(tuple(int(x) for x in p.split("x")) for p in text.split(",") if p)


def _parse_xc_variants(text: str) -> tuple[tuple[int, int, int | None, str], ...]:
    """Parse "16:2,8:4:1,16:2:f" -> ((16, 2, None, "xla"), (8, 4, 1, "xla"), (16, 2, None,
    "fused")): splits, pages per block, stages (None: the table's), how the splits merge (a
    trailing ":f": the fused combine, else the XLA one)."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if item:
            fields = item.split(":")
            combine = "fused" if fields[-1] == "f" else "xla"
            if combine == "fused":
                fields = fields[:-1]
            if len(fields) not in (2, 3) or not all(f.isdigit() for f in fields):
                raise ValueError(
                    f"--xc-variants item {item!r} must be NS:PAGES[:STAGES], optionally + ':f'"
                )
            parts = [int(x) for x in fields]
            out.append((parts[0], parts[1], parts[2] if len(parts) == 3 else None, combine))
    return tuple(out)


def _parse_profile_split(text: str) -> tuple[int, int, str]:
    """ "16:2x" -> (16, 2, "xla"); "16:2f" -> (16, 2, "fused"); "8" -> (8, 0, "kernel") (0 pages:
    the table's)."""
    combine = {"x": "xla", "f": "fused"}.get(text[-1:], "kernel")
    n, _, pp = text.rstrip("xf").partition(":")
    return int(n), int(pp or 0), combine


def _decode_markdown(rows, copy_bw, floors) -> str:
    floor_text = ", ".join(f"batch {b}: {us:.1f} us" for b, us in floors.items())
    out = [
        f"Decode, copy bandwidth {copy_bw / 1e9:.4g} GB/s (x + 1 in a jitted loop, read + write).",
        "In-loop time: median over loop calls of (loop time / reps), reps per row so that one loop",
        "runs ~10 ms (the loop call's own dispatch is then < 1 us per call; XLA_FLAGS "
        f"`{os.environ.get('XLA_FLAGS', '')}`). Loop floor (the same",
        f"loop with a one-fusion body instead of attention): {floor_text}.",
        "",
        "| batch | ctx | backend | us/call (median) | us/call in jit loop | GB/s | frac of copy BW "
        "| max abs err | note |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "loop_us" in r:
            out.append(
                f"| {r['batch']} | {r['ctx']} | {r['backend']} | {r['call_us']:.1f} | "
                f"{r['loop_us']:.1f} | {r['GBps']:.4g} | {r['frac']:.2f} | "
                f"{fmt_err(r.get('err'))} | {r['note']} |"
            )
        else:
            out.append(
                f"| {r['batch']} | {r['ctx']} | {r['backend']} | - | - | - | - | - | {r['note']} |"
            )
    return "\n".join(out)


def _summary_markdown(rows) -> str:
    """One line per (batch, ctx): in-loop us and fraction of copy bandwidth of each backend, and
    pallas / cuda time over JAX's op (< 1: faster than JAX's op)."""
    points: dict = {}
    for r in rows:
        if "loop_us" in r:
            points.setdefault((r["batch"], r["ctx"]), {})[r["backend"]] = r
    names = [b for b in BACKENDS if any(b in p for p in points.values())]
    names += sorted({b for p in points.values() for b in p} - set(BACKENDS))  # --xc-variants rows
    head = " | ".join(f"{b} us (frac)" for b in names)
    ratio_of = ("pallas", "pallas-xc", "pallas-fu", "cuda")
    out = [
        "Summary (in-loop us per call, in brackets the fraction of copy bandwidth; ratio = time "
        "over jax-paged's).",
        "",
        f"| batch | ctx | {head} | " + " | ".join(f"{b}/jax" for b in ratio_of) + " |",
        "|---:|---:|" + "---:|" * (len(names) + len(ratio_of)),
    ]
    for (B, ctx), by in points.items():
        cells = [f"{by[b]['loop_us']:.1f} ({by[b]['frac']:.2f})" if b in by else "-" for b in names]
        ratios = []
        for b in ratio_of:
            ok = b in by and "jax-paged" in by
            ratios.append(f"{by[b]['loop_us'] / by['jax-paged']['loop_us']:.2f}" if ok else "-")
        out.append(f"| {B} | {ctx} | " + " | ".join(cells + ratios) + " |")
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
                f"| {r['seqs']} | {r['prompt']} | {r['backend']} | {r['call_us']:.1f} | "
                f"{r['TFLOPs']:.3g} | {fmt_err(r.get('err'))} | {r['note']} |"
            )
        else:
            out.append(
                f"| {r['seqs']} | {r['prompt']} | {r['backend']} | - | - | - | {r['note']} |"
            )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--quick", action="store_true", help="reduced grid")
    ap.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes, interpret=True (any backend)"
    )
    ap.add_argument("--tune", action="store_true", help="sweep our decode kernel's knobs instead")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per row (median)")
    ap.add_argument("--reps", type=int, default=None, help="calls per jitted timing loop")
    ap.add_argument("--no-prefill", action="store_true", help="skip the prefill table")
    ap.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated subset of {','.join(BACKENDS)} (decode table; pallas-xc and "
        f"pallas-fu run at batch <= {XC_MAX_BATCH} only)",
    )
    ap.add_argument(
        "--xc-variants",
        default="",
        help="NS:PAGES[:STAGES][:f],...: extra pallas-xc rows (decode_combine='xla'; with ':f' "
        "pallas-fu rows, decode_combine='fused') with these split counts, pages per compute block "
        f"(and num_stages), labelled 'pallas-xc nsNS pPAGES [stSTAGES]' (batch <= {XC_MAX_BATCH})",
    )
    ap.add_argument(
        "--points",
        default=None,
        help="BxCTX,...: decode points instead of the grid (e.g. 1x512,1x2048,16x2048)",
    )
    ap.add_argument("--out", default=None, help="also write the Markdown tables to this file")
    ap.add_argument("--tune-budget", type=float, default=240.0, help="seconds of tuning (--tune)")
    ap.add_argument("--tune-descent", type=int, default=5, help="points tuned in full (--tune)")
    ap.add_argument("--tune-json", default=None, help="write every tuning timing to this JSON file")
    ap.add_argument(
        "--tune-points", default=None, help="BxCTX,... instead of the built-in list (--tune)"
    )
    ap.add_argument(
        "--profile", default=None, help="BxCTX,...: untimed calls for a profiler, then exit"
    )
    ap.add_argument(
        "--profile-splits",
        default="1,2,4,8",
        help="our split counts, NS or NS:PAGES_PER_BLOCK, a trailing x for decode_combine='xla', "
        "f for 'fused' (--profile)",
    )
    ap.add_argument(
        "--summarize-ncu", default=None, help="print per-kernel medians of an ncu CSV, exit"
    )
    args = ap.parse_args(argv)

    if args.summarize_ncu:
        from jaxllm.benchmarks.kernel_tuning import summarize_ncu_csv

        print(summarize_ncu_csv(args.summarize_ncu))
        return 0
    smoke = args.cpu_smoke
    if not smoke and jax.devices()[0].platform != "gpu":
        print("no GPU: run with --cpu-smoke (tiny sizes, interpret mode)", file=sys.stderr)
        return 2
    shape = SMOKE if smoke else LLAMA3_8B
    grid = SMOKE_GRID if smoke else (QUICK_GRID if args.quick else FULL_GRID)
    if args.points:
        grid = dict(grid, points=_parse_points(args.points))
    iters = args.iters or (2 if smoke else 20)
    reps = args.reps or (1 if smoke else None)  # None: auto_reps per row
    if args.profile:
        from jaxllm.benchmarks.kernel_tuning import profile_runs

        profile_runs(
            shape,
            _parse_points(args.profile),
            [_parse_profile_split(x) for x in args.profile_splits.split(",") if x],
            calls=3 if smoke else 5,
            interpret=smoke,
        )
        return 0
    dev = jax.devices()[0]
    header = (
        f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}; shape Hq={shape.Hq} "
        f"Hkv={shape.Hkv} D={shape.D} block={shape.block_size} {shape.dtype}"
    )
    print(header, flush=True)
    copy_bw = measure_copy_bandwidth((1 << 20) if smoke else (2 << 30), iters)
    print(f"copy bandwidth: {copy_bw / 1e9:.4g} GB/s", flush=True)

    if args.tune:
        from jaxllm.benchmarks.kernel_tuning import tune

        text = tune(
            shape,
            iters=max(3, iters // 4),
            reps=reps,
            interpret=smoke,
            copy_bw=copy_bw,
            smoke=smoke,
            budget_s=args.tune_budget,
            descent_points=args.tune_descent,
            json_path=args.tune_json,
            points=_parse_points(args.tune_points) if args.tune_points else None,
        )
        sections = [header, text]
    else:
        wanted = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        unknown = sorted(set(wanted) - set(BACKENDS))
        if unknown:
            print(f"unknown --backends {unknown}; choose from {BACKENDS}", file=sys.stderr)
            return 2

        def write_partial(rows, floors):
            if args.out:
                with open(args.out, "w") as f:
                    f.write(
                        header
                        + "\n\n"
                        + _decode_markdown(rows, copy_bw, floors)
                        + "\n\n(partial: run in progress)\n"
                    )

        rows, floors = decode_table(
            shape, grid, iters=iters, reps=reps, interpret=smoke, copy_bw=copy_bw,
            backends_wanted=wanted, on_point=write_partial,
            xc_variants=_parse_xc_variants(args.xc_variants),
        )  # fmt: skip
        sections = [header, _decode_markdown(rows, copy_bw, floors), _summary_markdown(rows)]
        print("\n\n".join(sections[1:]), flush=True)
        if not args.no_prefill:
            pgrid = PREFILL_SMOKE if smoke else (PREFILL_GRID[:1] if args.quick else PREFILL_GRID)
            sections.append(
                _prefill_markdown(prefill_table(shape, pgrid, iters=iters, interpret=smoke))
            )
            print(sections[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
