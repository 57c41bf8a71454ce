"""Where the time of one CPU model step goes: a per-op table of the compiled step, and A/B timing.

Builds the engine's step for a model (dummy weights, by default SmolLM2-135M in float32) the way
the engine runs it (model step + greedy sampler in one jit, KV cache donated, the engine's
compiler options, params laid out by `jaxllm.models.step.step_params`), times it, then traces a
few calls with XLA:CPU's per-thunk trace events (`xla_cpu_enable_xprof_traceme`) and prints:

- per HLO instruction: exclusive ms per step, runs per step (ops in a rolled layer scan run once
  per layer), kind, result shape and the notable ops a fusion holds;
- the same summed per source op over all layers (`layers/mlp/up_proj/dot_general`, ...);
- the same summed per kind (dots, weight-slice copies, KV gathers, reductions, ...).

    python -m jaxllm.benchmarks.cpu_step_profile                  # 16 decode rows, context 208
    python -m jaxllm.benchmarks.cpu_step_profile --params stacked --xla-defaults   # as before
    python -m jaxllm.benchmarks.cpu_step_profile --seqs 16 --query-len 128 --context 128 --iters 3
    python -m jaxllm.benchmarks.cpu_step_profile --kv-cache-dtype fp8   # float8 e4m3 KV pages
    python -m jaxllm.benchmarks.cpu_step_profile --compare "" "xla_cpu_enable_fast_math=true" \
        "model.per_layer_params=0"

Option sets (`--options`, each `--compare` entry) are `JAXLLM_COMPILER_OPTIONS`-style lists
(`name=value,...`) applied on top of the engine's defaults (or XLA's, `--xla-defaults`); `name=`
sets an empty value (`xla_cpu_experimental_ynn_fusion_type=` turns YNNPACK off); items named
`model.ATTR` set an attribute of the model module instead (`model.unroll_layers=1`), and
`model.per_layer_params=0/1` and `model.packed=0/1` override `--params`. `--compare A B ...` times
the sets against each other, alternating them call by call (on a shared machine alternation spreads
load drift over all of them), and prints each one's median; no trace. `--dump FILE` writes the
optimized HLO. The 1-minute load average is printed before and after.

Caveat: with YNNPACK off (the engine's CPU default) XLA:CPU runs dots as Eigen thunks that
complete asynchronously, so their rows show little more than their launch; time them with
`--xla-defaults` (YNNPACK dots are synchronous) or with `--compare`. Thunks that run
concurrently on the two cores are each counted, so the traced total can exceed the wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import CacheConfig
from jaxllm.engine.compiler_options import (
    compiler_options_from_env,
    parse_compiler_options,
)
from jaxllm.layers.sampler import sample
from jaxllm.models.batch import (
    KVCache,
    StepBatch,
    kv_cache_storage,
    kv_cache_view,
    make_kv_cache,
)
from jaxllm.models.step import build_model, step_params
from jaxllm.sampling_metadata import SamplingRow, build_sampling_metadata
from jaxllm.sampling_params import SamplingParams

NOTABLE = (
    "dot",
    "convolution",
    "gather",
    "scatter",
    "dynamic-slice",
    "dynamic-update-slice",
    "reduce",
    "exponential",
    "concatenate",
    "transpose",
    "copy",
    "select",
    "sort",
)


def loadavg() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def step_batch(
    S: int, q_len: int, ctx: int, bs: int, num_blocks: int, vocab: int
) -> tuple[StepBatch, int]:
    """S sequences of `q_len` new tokens each (1: a decode step), all at KV length `ctx`, on
    distinct blocks (wrapping over the cache); T = S * q_len rows, logits of each last row."""
    nb = -(-ctx // bs)
    P = 1 << (nb - 1).bit_length()
    T = S * q_len
    tables = np.zeros((S, P), np.int32)
    for i in range(S):
        tables[i, :nb] = 1 + (np.arange(i * nb, (i + 1) * nb) % (num_blocks - 1))
    pos = np.tile(np.arange(ctx - q_len, ctx, dtype=np.int32), S)  # [T]
    seq = np.repeat(np.arange(S), q_len)
    rng = np.random.default_rng(0)
    batch = StepBatch(
        token_ids=jnp.asarray(rng.integers(0, vocab, T), jnp.int32),
        positions=jnp.asarray(pos),
        slot_mapping=jnp.asarray(tables[seq, pos // bs] * bs + pos % bs),
        block_tables=jnp.asarray(tables),
        kv_lens=jnp.full((S,), ctx, jnp.int32),
        query_start_loc=jnp.arange(S + 1, dtype=jnp.int32) * q_len,
        logits_indices=jnp.arange(1, S + 1, dtype=jnp.int32) * q_len - 1,
        decode_only=q_len == 1,
    )
    return batch, P


BASE_OPTIONS: dict = {}  # what every option set starts from (main() sets it)


def split_options(text: str) -> tuple[dict, dict]:
    """`"a=1,model.b=0"` -> (compiler options: BASE_OPTIONS updated with {a: 1}, model
    attributes {b: False})."""
    opts, attrs = dict(BASE_OPTIONS), {}
    empty = [i.strip()[:-1] for i in text.split(",") if i.strip().endswith("=")]  # name= -> ""
    rest = ",".join(i for i in text.split(",") if not i.strip().endswith("="))
    for k in empty:
        opts[k.strip()] = ""
    for k, v in parse_compiler_options(rest).items():
        if k.startswith("model."):
            attrs[k[len("model.") :]] = bool(v) if v in (0, 1) else v
        else:
            opts[k] = v
    return opts, attrs


_LOADED: dict = {}


def build(args, options: dict, attrs: dict | None = None):
    """(compiled step, params, kv cache, batch, md) for the requested shape and options; `attrs`
    replace attributes of the model module (e.g. unroll_layers)."""
    from jaxllm.model_loader.dummy import load_dummy

    key = (args.model, args.dtype)
    if key not in _LOADED:
        _LOADED[key] = load_dummy(args.model, args.dtype)
    lm = _LOADED[key]
    cfg = lm.config
    model = build_model(cfg, args.backend)
    attrs = dict(attrs or {})
    params = lm.params
    per_layer = attrs.pop("per_layer_params", None)
    if per_layer is None:
        per_layer = args.per_layer
    packed = attrs.pop("packed", None)
    if packed is None:
        packed = args.packed
    params = jax.block_until_ready(
        step_params(params, platform="cpu", per_layer=bool(per_layer), packed=bool(packed))
    )
    if attrs:
        model = model.clone(**attrs)
    batch, P = step_batch(
        args.seqs, args.query_len, args.context, args.block_size, args.num_blocks, cfg.vocab_size
    )
    rows = [SamplingRow(SamplingParams(temperature=0.0), seed=0)] * args.seqs
    md, flags = build_sampling_metadata(rows, vocab_size=cfg.vocab_size, pad_rows_to=args.seqs)
    md = jax.tree.map(jnp.asarray, md)

    kv_dtype = CacheConfig(kv_cache_dtype=args.kv_cache_dtype).cache_dtype(cfg.dtype)

    def step(params, kv, batch, md):  # the cache kept as the engine keeps it (fp8: its bytes)
        kv, logits = model.apply({"params": params}, kv_cache_view(kv, kv_dtype), batch)
        out = sample(logits[: args.seqs], md, flags)
        return kv_cache_storage(kv), out.token_ids, out.logprobs

    kv = make_kv_cache(cfg, args.num_blocks, args.block_size, kv_dtype, storage=True)
    lowered = jax.jit(step, donate_argnums=(1,)).lower(params, kv, batch, md)
    t = time.perf_counter()
    exe = lowered.compile(compiler_options=options or None)
    compile_s = time.perf_counter() - t
    return exe, params, kv, batch, md, P, compile_s, model.backend


def time_calls(exe, params, kv, batch, md, n: int) -> tuple[list[float], KVCache]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        kv, ids, _ = exe(params, kv, batch, md)
        ids.block_until_ready()
        times.append(time.perf_counter() - t)
    return times, kv


# ---------------------------------------------------------------------------------------------
# The optimized HLO: what each instruction is


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+(?:\{[^}]*\})?)\s+([\w\-]+)\(")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"(?:calls|body|condition|to_apply)=%?([\w.\-]+)")


def hlo_index(text: str) -> dict[str, dict]:
    """instruction name -> {opcode, shape, ops: notable opcodes inside the fusions it calls}."""
    comps: dict[str, list[tuple[str, str, str, str]]] = collections.defaultdict(list)
    current = None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m and "=" not in line.split("{")[0].split("(")[0]:
            current = m.group(1)
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            comps[current].append((m.group(1), m.group(2), m.group(3), line))

    def inner_ops(comp: str, seen: set) -> set:
        ops = set()
        for _, _, op, line in comps.get(comp, []):
            if op in NOTABLE:
                ops.add(op)
            if op == "custom-call":
                ops.add("custom-call")
            for c in _CALLS.findall(line):
                if c not in seen:
                    seen.add(c)
                    ops |= inner_ops(c, seen)
        return ops

    index = {}
    for comp, instrs in comps.items():
        for name, shape, op, line in instrs:
            ops = set()
            if op in ("fusion", "call", "custom-call"):
                for c in _CALLS.findall(line):
                    ops |= inner_ops(c, {c})
            m = re.search(r'op_name="([^"]*)"', line)
            index[name] = {
                "op": op,
                "shape": shape,
                "ops": ops,
                "comp": comp,
                "line": line,
                "where": where(m.group(1) if m else ""),
            }
    return index


def where(op_name: str) -> str:
    """An op_name without the jit/scan/layer-index noise, so every layer's copy of an op (rolled
    or unrolled) reads the same: `layers/mlp/up_proj/dot_general`."""
    s = re.sub(r"jit\(step\)/|LlamaForCausalLM/|while/body/|closed_call/|jit\(\w+\)/", "", op_name)
    s = re.sub(r"layers_\d+/", "layers/", s)
    return s or "?"


def kind_of(info: dict | None, name: str) -> str:
    if info is None:
        return "other"
    op, ops = info["op"], info["ops"]
    if op == "dot" or "dot" in ops:
        return "dot"
    if op == "while":
        return "while (container)"
    if op in ("dynamic-slice",) or ops == {"dynamic-slice"}:
        return "dynamic-slice (weight copy)"
    if op in ("gather",) or "gather" in ops:
        return "gather"
    if op in ("scatter",) or "scatter" in ops:
        return "scatter (KV write)"
    if op == "dynamic-update-slice" or "dynamic-update-slice" in ops:
        return "dynamic-update-slice"
    if op in ("copy", "transpose") or ops <= {"copy", "transpose"} and ops:
        return "copy/transpose"
    if op == "reduce" or "reduce" in ops:
        return "reduce (norm/softmax/sampler)"
    return "elementwise/other"


# ---------------------------------------------------------------------------------------------
# Per-thunk trace


def trace_thunks(exe, params, kv, batch, md, n: int):
    """{instruction name: (exclusive seconds total, count)} over n traced calls, and the kv."""
    from jax.profiler import ProfileData

    d = tempfile.mkdtemp(prefix="cpu_step_profile_")
    jax.profiler.start_trace(d)
    for _ in range(n):
        kv, ids, _ = exe(params, kv, batch, md)
        ids.block_until_ready()
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True))[-1]
    pd = ProfileData.from_file(path)
    totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for plane in pd.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if line.name == "python":
                continue
            evs = [
                (e.start_ns, e.start_ns + e.duration_ns, e.name)
                for e in line.events
                if not e.name.startswith(("ThreadpoolListener", "end: ", "ThunkExecutor"))
            ]
            for nm, excl in exclusive_times(evs):
                totals[nm][0] += excl / 1e9
                totals[nm][1] += 1
    return totals, kv


def exclusive_times(evs: list[tuple[float, float, str]]) -> list[tuple[str, float]]:
    """(start, end, name) events of one thread -> (name, duration minus nested events' time)."""
    evs = sorted(evs, key=lambda e: (e[0], -e[1]))
    stack: list[list] = []  # [start, end, name, time of nested events]
    done = []

    def close(until: float) -> None:
        while stack and stack[-1][1] <= until:
            s, e, nm, child = stack.pop()
            done.append((nm, e - s - child))
            if stack:
                stack[-1][3] += e - s

    for s, e, nm in evs:
        close(s)
        stack.append([s, e, nm, 0.0])
    close(float("inf"))
    return done


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="a jaxllm.model_loader.dummy preset")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backend", default=None, help="attention backend (default: the CPU's)")
    ap.add_argument("--seqs", type=int, default=16, help="sequences S")
    ap.add_argument(
        "--query-len", type=int, default=1, help="new tokens per sequence (1: decode; T = S * this)"
    )
    ap.add_argument("--context", type=int, default=208, help="KV length of every sequence")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--num-blocks", type=int, default=385)
    ap.add_argument(
        "--kv-cache-dtype", default="auto", help="KV cache dtype: auto (the model's), a float, fp8"
    )
    ap.add_argument("--iters", type=int, default=15, help="timed calls")
    ap.add_argument("--trace-iters", type=int, default=5, help="traced calls")
    ap.add_argument("--top", type=int, default=25, help="rows of the per-op table")
    ap.add_argument("--options", default="", help="compiler options, name=value,...")
    ap.add_argument("--compare", nargs="+", default=None, help="option sets to time alternately")
    ap.add_argument("--dump", default="", help="write the optimized HLO text here")
    ap.add_argument(
        "--params",
        choices=("stacked", "per-layer", "packed"),
        default="packed",
        help="parameter layout: packed (per-layer with the dense kernels packed for cpu_ext's "
        "matmul: jaxllm.models.step.step_params on the CPU, the default), per-layer (XLA's "
        "dots), stacked (the loaders' layout, a layer scan)",
    )
    ap.add_argument(
        "--xla-defaults",
        action="store_true",
        help="start every option set from XLA's own defaults instead of the engine's "
        "(jaxllm.engine.compiler_options, e.g. YNNPACK off on the CPU)",
    )
    args = ap.parse_args(argv)
    args.per_layer = args.params in ("per-layer", "packed")
    args.packed = args.params == "packed"
    BASE_OPTIONS.update({} if args.xla_defaults else compiler_options_from_env())
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, params {args.params}, base "
        f"options {BASE_OPTIONS or '(XLA defaults)'}; load before {loadavg()}"
    )

    if args.compare:
        built = []
        for text in args.compare:
            exe, params, kv, batch, md, P, cs, backend = build(args, *split_options(text))
            _, kv = time_calls(exe, params, kv, batch, md, 2)
            built.append([text, exe, params, kv, batch, md, [], cs])
        for _ in range(args.iters):
            for b in built:
                t, b[3] = time_calls(b[1], b[2], b[3], b[4], b[5], 1)
                b[6] += t
        print(
            f"\nS={args.seqs} T={args.seqs * args.query_len} context={args.context} P={P} "
            f"attention {backend}"
        )
        print("| options | compile s | median ms | min ms |")
        print("|---|---|---|---|")
        for text, *_, times, cs in built:
            print(
                f"| {text or '(defaults)'} | {cs:.1f} | {statistics.median(times) * 1e3:.1f} | "
                f"{min(times) * 1e3:.1f} |"
            )
        print(f"load after {loadavg()}")
        return

    options, attrs = split_options(args.options)
    exe, params, kv, batch, md, P, compile_s, backend = build(args, options, attrs)
    _, kv = time_calls(exe, params, kv, batch, md, 2)
    times, kv = time_calls(exe, params, kv, batch, md, args.iters)
    med = statistics.median(times)
    text = exe.as_text()
    if args.dump:
        with open(args.dump, "w") as f:
            f.write(text)
    traced = dict(options, xla_cpu_enable_xprof_traceme=True)
    exe_t, *_ = build(args, traced, attrs)
    _, kv = time_calls(exe_t, params, kv, batch, md, 1)
    totals, kv = trace_thunks(exe_t, params, kv, batch, md, args.trace_iters)
    index = hlo_index(exe_t.as_text())
    n = args.trace_iters

    print(
        f"\nS={args.seqs} T={args.seqs * args.query_len} context={args.context} P={P} "
        f"attention {backend}, options "
        f"{args.options or '(defaults)'}: compile {compile_s:.1f} s, step median "
        f"{med * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, {args.iters} calls)"
    )
    rows = sorted(totals.items(), key=lambda kv_: -kv_[1][0])
    traced_total = sum(v[0] for v in totals.values()) / n
    print(f"traced thunks: {traced_total * 1e3:.1f} ms per step (exclusive times summed)\n")
    print("| instruction | kind | runs/step | ms/step | % | shape | contains |")
    print("|---|---|---|---|---|---|---|")
    for name, (sec, cnt) in rows[: args.top]:
        info = index.get(name)
        print(
            f"| {name} | {kind_of(info, name)} | {cnt / n:g} | {sec / n * 1e3:.2f} | "
            f"{100 * sec / n / traced_total:.1f} | {info['shape'] if info else ''} | "
            f"{','.join(sorted(info['ops'])) if info else ''} |"
        )
    groups: dict[str, float] = collections.defaultdict(float)
    sites: dict[tuple[str, str], list] = collections.defaultdict(lambda: [0.0, 0])
    for name, (sec, cnt) in rows:
        info = index.get(name)
        groups[kind_of(info, name)] += sec / n
        site = sites[(info["where"] if info else name, kind_of(info, name))]
        site[0] += sec / n
        site[1] += cnt / n
    print("\n| source op (all layers) | kind | runs/step | ms/step | % |")
    print("|---|---|---|---|---|")
    for (w, k), (sec, cnt) in sorted(sites.items(), key=lambda x: -x[1][0])[: args.top]:
        print(f"| {w} | {k} | {cnt:g} | {sec * 1e3:.2f} | {100 * sec / traced_total:.1f} |")
    print("\n| kind | ms/step | % |")
    print("|---|---|---|")
    for k, sec in sorted(groups.items(), key=lambda x: -x[1]):
        print(f"| {k} | {sec * 1e3:.1f} | {100 * sec / traced_total:.1f} |")
    print(f"\nload after {loadavg()}")


if __name__ == "__main__":
    main()
