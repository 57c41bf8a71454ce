"""What a tensor-parallel step compiles to: collectives, big copies, aliasing, shardings, timing.

For each tensor-parallel size and step shape, builds the engine's real step (an `LLM`'s model
runner, the GPU's bucket policy, packed inputs), compiles it as the engine does
(`ModelRunner._executable`, so `JAXLLM_COMPILER_OPTIONS` applies) and prints:

- every collective of the optimized HLO (op, result shape, bytes, runs per step: ops in a while
  body, e.g. the rolled layer scan, count once per trip) and their total bytes;
- every large data-movement op (copy, transpose, slice, dynamic-(update-)slice, scatter, gather,
  concatenate, pad, or a fusion so named) whose result is at least `--min-mib` or has the shape of
  a KV-cache array or a parameter (in-place updates of the donated cache are marked);
- `input_output_alias` (is the donated KV cache aliased?), the memory analysis (temp bytes) and
  XLA's cost analysis (flops, bytes accessed per device);
- whether the executable's input shardings equal the arrays' (a mismatch reshards every call);
- with `--time N`: the median of N calls on a real batch (KV length `--context`) and whether the KV
  cache passed in was donated; `--profile DIR` traces those calls (jax.profiler);
- a summary table; `--half N` adds one device running 1/N of the model (one tp = N device's work,
  without collectives); `--allreduce` times chains of [T, D] all-reduces over the tp devices.

CPU (virtual devices; `JAXLLM_UNROLL_LAYERS=1` is the GPU's unrolled program structure,
`JAXLLM_ATTENTION_BACKEND=reference` keeps attention in plain XLA ops):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
    JAXLLM_UNROLL_LAYERS=1 JAXLLM_ATTENTION_BACKEND=reference \\
    .venv/bin/python -m jaxllm.benchmarks.tp_hlo_probe --tp 1 2 --half 2 --time 3

GPU (2 cards, JAX_PLATFORMS unset, the pallas backend; ~16 GB of weights per run):

    XLA_FLAGS=--xla_gpu_autotune_level=0 python -m jaxllm.benchmarks.tp_hlo_probe \\
        --model dummy:llama-3-8b --tp 1 2 --half 2 --time 20 --allreduce \\
        --shapes decode1 decode256 prefill128 --dump out/tp_hlo --profile out/tp_prof

No GPU (`--deviceless h100|h200`): compiles the step for a GPU that is not there, through the
CUDA PJRT plugin's compile-only topology, with abstract weights (nothing allocated; any dummy
model, Llama-3-8B included), and prints the same HLO tables (no timing). The plugin must match
jaxlib's version and be importable, e.g. outside the venv:

    pip install --no-deps --target /tmp/cudaplug jax-cuda13-pjrt==0.10.2 jax-cuda13-plugin==0.10.2
    PYTHONPATH=/tmp/cudaplug:. JAX_PLATFORMS=cpu .venv/bin/python \\
        -m jaxllm.benchmarks.tp_hlo_probe --deviceless h100 --model dummy:llama-3-8b --tp 1 2

(no autotuning there: GEMM tilings are XLA's untuned defaults; the program structure, fusions,
collectives and copies are the GPU compiler's own.)

Shapes (`--shapes`): decode1 / decode16 / decode256 (one new token per sequence, KV length
`--context`), prefill128 (one 128-token prompt), prefill8192 (16 prompts of 512 tokens; on the
GPU >= 4096 tokens keep the layer scan rolled). `--model tiny` (the default) is Llama-3-8B's shape
ratios at small sizes (GQA 4:1 with 16 query / 4 KV heads, F = 3.5 D, V ~ 31.3 D, 4 layers).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import numpy as np

from jaxllm.benchmarks.hlo_analysis import (
    analyze,
    fmt_bytes,
    report_compiled,
)

TINY_NAME = "tp-probe-tiny"
TINY_OVERRIDES = {  # head_dim 32: the smallest the pallas kernels take
    "hidden_size": 512,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 32,
    "intermediate_size": 1792,
    "vocab_size": 16032,
    "num_hidden_layers": 4,
}

# name -> (sequences, new tokens each, KV length after the step; None: --context)
SHAPES = {
    "decode1": (1, 1, None),
    "decode16": (16, 1, None),
    "decode256": (256, 1, None),
    "prefill128": (1, 128, 128),
    "prefill8192": (16, 512, 512),
}
MAX_MODEL_LEN, MAX_NUM_SEQS = 768, 256

# Device facts for compile-only ("deviceless") GPU targets: XLA's GpuDeviceInfoProto fields.
GPU_TARGETS = {
    "h100": ("NVIDIA H100 80GB HBM3", 3352320000000, 52428800, 84978434048),
    "h200": ("NVIDIA H200", 4800000000000, 52428800, 150754820096),
}


def gpu_target_config(name: str) -> str:
    """A GpuTargetConfigProto (text format) for an sm_90 card with 132 SMs."""
    desc, bandwidth, l2, memory = GPU_TARGETS[name]
    return (
        "gpu_device_info {\n"
        "  threads_per_block_limit: 1024\n  threads_per_warp: 32\n"
        "  shared_memory_per_block: 49152\n  shared_memory_per_core: 233472\n"
        "  threads_per_core_limit: 2048\n  core_count: 132\n  fpus_per_core: 128\n"
        "  block_dim_limit_x: 2147483647\n  block_dim_limit_y: 65535\n"
        "  block_dim_limit_z: 65535\n"
        f"  memory_bandwidth: {bandwidth}\n  l2_cache_size: {l2}\n  clock_rate_ghz: 1.98\n"
        f"  device_memory_size: {memory}\n  shared_memory_per_block_optin: 232448\n"
        "  cuda_compute_capability { major: 9 }\n"
        "  registers_per_core_limit: 65536\n  registers_per_block_limit: 65536\n"
        "}\n"
        f'platform_name: "CUDA"\ndevice_description_str: "{desc}"\n'
    )


SUMMARY: list[dict] = []  # one row per (run, shape)


def print_summary() -> None:
    def opt(v, f):
        return "-" if v is None else f(v)

    print("\n## Summary (per device)")
    print(
        "| run | shape | T/S/P | collectives | collective bytes | big moves (not in place) "
        "| KV aliased | shardings match | GFLOP | bytes accessed | KV donated | step ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in SUMMARY:
        moves = f"{r['moves']} ({fmt_bytes(r['move_bytes'])})"
        print(
            f"| {r['label']} | {r['shape']} | {r['TSP']} | {r['coll']} | "
            f"{fmt_bytes(r['coll_bytes'])} | {moves} | {r['aliased']} | "
            f"{opt(r.get('shardings_ok'), str)} | {opt(r['gflop'], lambda v: f'{v:.3f}')} | "
            f"{opt(r['accessed'], fmt_bytes)} | {opt(r.get('donated'), str)} | "
            f"{opt(r.get('ms'), lambda v: f'{v:.2f}')} |"
        )


# ---------------------------------------------------------------------------------------------
# Step inputs


def host_batch(policy, block_size: int, num_blocks: int, vocab: int, shape: str, context: int):
    """A real batch of `shape`: each sequence on its own blocks (wrapping over the cache), padded
    by `policy`. Returns (HostBatch, KV length)."""
    from jaxllm.engine.batch_builder import HostBatch

    num_seqs, q_len, ctx = SHAPES[shape]
    ctx = context if ctx is None else ctx
    bs, nb = block_size, -(-ctx // block_size)
    T, S, P = policy.shape(num_seqs * q_len, num_seqs, nb)
    rng = np.random.default_rng(0)
    token_ids, positions = np.zeros(T, np.int32), np.zeros(T, np.int32)
    slots, kv_lens = np.full(T, -1, np.int32), np.zeros(S, np.int32)
    tables, last = np.zeros((S, P), np.int32), np.zeros(S, np.int32)
    qsl = np.full(S + 1, num_seqs * q_len, np.int32)
    qsl[0] = 0
    for i in range(num_seqs):
        table = 1 + (np.arange(i * nb, (i + 1) * nb) % (num_blocks - 1))
        tables[i, :nb] = table
        pos = np.arange(ctx - q_len, ctx, dtype=np.int32)
        rows = slice(i * q_len, (i + 1) * q_len)
        token_ids[rows] = rng.integers(0, vocab, q_len)
        positions[rows] = pos
        slots[rows] = table[pos // bs] * bs + pos % bs
        kv_lens[i], qsl[i + 1], last[i] = ctx, (i + 1) * q_len, (i + 1) * q_len - 1
    hb = HostBatch(
        token_ids=token_ids,
        prev_rows=np.full(T, -1, np.int32),
        positions=positions,
        slot_mapping=slots,
        block_tables=tables,
        kv_lens=kv_lens,
        query_start_loc=qsl,
        logits_indices=last,
        decode_only=q_len == 1,
        num_seqs=num_seqs,
        num_tokens=num_seqs * q_len,
        prompt_logprob_rows=[],
        num_prompt_logprob_rows=0,
    )
    return hb, ctx


def packed_inputs(hb, vocab: int):
    """(host buffers, PackedLayout, SamplerFlags) of a greedy batch, as the runner packs them."""
    from jaxllm.engine.model_runner import ModelRunner
    from jaxllm.engine.packed_transfer import pack
    from jaxllm.sampling_metadata import SamplingRow, build_sampling_metadata
    from jaxllm.sampling_params import SamplingParams

    S = hb.block_tables.shape[0]
    rows = [SamplingRow(SamplingParams(temperature=0.0), seed=0)] * hb.num_seqs
    md, flags = build_sampling_metadata(rows, vocab_size=vocab, pad_rows_to=S)
    buffers, layout = pack(ModelRunner._host_inputs(hb, md))
    return buffers, layout, flags


def new_row(label: str, shape: str, hb) -> dict:
    T, (S, P) = hb.token_ids.shape[0], hb.block_tables.shape
    return {"label": label, "shape": shape, "TSP": f"{T}/{S}/{P}"}


# ---------------------------------------------------------------------------------------------
# Real devices: the engine's runner


def check_shardings(exe, runner) -> list[str]:
    """Leaves whose compiled input sharding differs from the array's own (each would be resharded
    on every call)."""
    import jax

    bad = []
    in_sh = exe.input_shardings[0]
    for idx, arg in enumerate((runner.params, runner.kv_cache)):
        flat = jax.tree_util.tree_flatten_with_path(arg)[0]
        for (path, leaf), want in zip(flat, jax.tree.leaves(in_sh[idx]), strict=True):
            if not leaf.sharding.is_equivalent_to(want, leaf.ndim):
                bad.append(f"{jax.tree_util.keystr(path)}: array {leaf.sharding} vs {want}")
    return bad


def marked_shapes(kv_global, kv_local, params_local: list[tuple[str, tuple]]) -> dict:
    marked = {tuple(kv_local): "KV cache (per device)", tuple(kv_global): "KV cache (global)"}
    for name, shape in params_local:
        marked.setdefault(tuple(shape), "param " + name)
    return marked


def probe_runner_shape(runner, label: str, shape: str, args) -> None:
    import jax

    cfg = runner.model_config
    hb, ctx = host_batch(
        runner.shape_policy,
        runner.block_size,
        runner.num_blocks,
        cfg.vocab_size,
        shape,
        args.context,
    )
    buffers, layout, flags = packed_inputs(hb, cfg.vocab_size)
    t0 = time.perf_counter()
    exe = runner._executable(layout, flags, -1)
    row = new_row(label, shape, hb)
    print(f"\n### {label} {shape}: T/S/P={row['TSP']} context={ctx} ", end="")
    print(f"(compile {time.perf_counter() - t0:.1f} s)")
    text = exe.as_text()
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        with open(os.path.join(args.dump, f"{label}_{shape}.hlo.txt"), "w") as f:
            f.write(text)
    k = runner.kv_cache.k
    params = [
        ("/".join(str(getattr(p, "key", p)) for p in path), leaf.addressable_shards[0].data.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(runner.params)[0]
    ]
    analyze(
        text, row, marked_shapes(k.shape, k.addressable_shards[0].data.shape, params), args.min_mib
    )
    report_compiled(exe, row)
    bad = check_shardings(exe, runner)
    row["shardings_ok"] = not bad
    print("input shardings == arrays' shardings:", "yes" if not bad else "NO")
    for b in bad:
        print("   ", b)
    SUMMARY.append(row)
    if not args.time:
        return
    dev = jax.device_put(buffers, runner._replicated)
    kv, old = runner.kv_cache, runner.kv_cache.k
    kv, out, _, _ = exe(runner.params, kv, runner._last_tokens, dev)
    jax.block_until_ready(out.token_ids)
    row["donated"] = old.is_deleted()
    trace = os.path.join(args.profile, f"{label}_{shape}") if args.profile else ""
    if trace:
        jax.profiler.start_trace(trace)
    times = []
    for _ in range(args.time):
        t = time.perf_counter()
        kv, out, _, _ = exe(runner.params, kv, runner._last_tokens, dev)
        jax.block_until_ready((kv, out.token_ids))
        times.append(time.perf_counter() - t)
    if trace:
        jax.profiler.stop_trace()
    runner.kv_cache = kv
    row["ms"] = statistics.median(times) * 1e3
    print(
        f"step: median {row['ms']:.2f} ms over {args.time} calls (min {min(times) * 1e3:.2f}); "
        f"KV cache donated: {row['donated']}"
    )


def run_engines(model: str, args) -> None:
    from jaxllm import LLM
    from jaxllm.engine.buckets import accelerator_policy

    runs = [(f"tp{tp}", model, tp) for tp in args.tp]
    if args.half:
        runs.append((f"half{args.half}", half_preset(model, args.half), 1))
    for label, name, tp in runs:
        llm = LLM(
            name,
            dtype=args.dtype,
            tensor_parallel_size=tp,
            num_gpu_blocks_override=args.num_blocks,
            max_model_len=MAX_MODEL_LEN,
            max_num_seqs=MAX_NUM_SEQS,
            max_num_batched_tokens=args.max_num_batched_tokens,
            compilation_cache_dir="off",
        )
        runner = llm.llm_engine.runner
        if args.policy == "accelerator":
            sp = runner.shape_policy
            runner.shape_policy = accelerator_policy(
                sp.max_num_batched_tokens, sp.max_num_seqs, sp.max_blocks_per_seq, runner.block_size
            )
        c, k = runner.model_config, runner.kv_cache.k
        print(
            f"\n## {label} (tp={tp}): {name} {args.dtype}, L={c.num_hidden_layers} "
            f"D={c.hidden_size} Hq={c.num_attention_heads} Hkv={c.num_key_value_heads} "
            f"Dh={c.head_dim} F={c.intermediate_size} V={c.vocab_size}; attention "
            f"{runner.backend}; KV cache {tuple(k.shape)} x2 (per device "
            f"{tuple(k.addressable_shards[0].data.shape)})"
        )
        for shape in args.shapes:
            probe_runner_shape(runner, label, shape, args)
        del llm, runner, k
        gc.collect()


# ---------------------------------------------------------------------------------------------
# No GPU: compile for a compile-only CUDA topology with abstract weights


def runner_step_jit(model, kv_sharding, replicated):
    """The runner's jitted step (`model_runner.device_step` with its donation and output
    shardings) around `model`, without a runner (no arrays behind it)."""
    import functools

    import jax

    from jaxllm.engine.model_runner import device_step
    from jaxllm.models.batch import KVCache

    step = functools.partial(device_step, model)

    return jax.jit(
        step,
        donate_argnums=(1,),
        static_argnames=("layout", "flags", "num_prompt_logprobs"),
        # the last: the hidden states, None (the model is not built to return them)
        out_shardings=(
            KVCache(kv_sharding, kv_sharding),
            replicated,
            replicated,
            replicated,
            None,
        ),
    )


def run_deviceless(model: str, args) -> None:
    import jax
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxllm.engine.buckets import accelerator_policy
    from jaxllm.engine.compiler_options import compiler_options_from_env
    from jaxllm.model_loader.dummy import dummy_config, dummy_param_shapes
    from jaxllm.models.batch import KVCache, kv_cache_shape
    from jaxllm.models.llama import UNROLL_ENV, UNROLL_MAX_TOKENS
    from jaxllm.models.step import build_model
    from jaxllm.parallel import kv_cache_sharding, param_shardings, tp_model_config

    if not model.startswith("dummy:"):
        raise SystemExit("--deviceless needs a dummy: model (weights stay abstract)")
    n = max(args.tp)
    topo = topologies.get_topology_desc(
        "", "cuda", target_config=gpu_target_config(args.deviceless), topology=f"1x1x{n}"
    )
    options = compiler_options_from_env("gpu") or None  # the target's options, not the host's
    base = dummy_config(model[len("dummy:") :], args.dtype)
    backend = os.environ.get("JAXLLM_ATTENTION_BACKEND") or "pallas"
    print(f"deviceless {args.deviceless} x{n}: {topo.devices[0].device_kind}; options {options}")
    for tp in args.tp:
        mesh = Mesh(np.array(topo.devices[:tp]).reshape(1, tp), ("data", "model"))
        cfg = tp_model_config(base, tp)
        model_fn = build_model(cfg, backend, mesh)
        rep, kv_sh = NamedSharding(mesh, P()), kv_cache_sharding(mesh)
        params = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            dummy_param_shapes(cfg),
            param_shardings(cfg, mesh),
        )
        kshape = kv_cache_shape(cfg, args.num_blocks, 16)
        kv = KVCache(*(jax.ShapeDtypeStruct(kshape, cfg.dtype, sharding=kv_sh) for _ in "kv"))

        policy = accelerator_policy(
            args.max_num_batched_tokens, MAX_NUM_SEQS, -(-MAX_MODEL_LEN // 16), 16
        )
        label = f"tp{tp}"
        kv_local = list(kshape)
        kv_local[2] //= tp
        params_local = [
            ("/".join(str(getattr(q, "key", q)) for q in path), sh.shard_shape(leaf.shape))
            for (path, leaf), sh in zip(
                jax.tree_util.tree_flatten_with_path(params)[0],
                jax.tree.leaves(param_shardings(cfg, mesh)),
                strict=True,
            )
        ]
        marked = marked_shapes(kshape, kv_local, params_local)
        print(f"\n## {label} (deviceless {args.deviceless}): {model} {args.dtype}, {backend}")
        for shape in args.shapes:
            hb, ctx = host_batch(policy, 16, args.num_blocks, cfg.vocab_size, shape, args.context)
            buffers, layout, flags = packed_inputs(hb, cfg.vocab_size)
            bufs = tuple(jax.ShapeDtypeStruct(b.shape, b.dtype, sharding=rep) for b in buffers)
            row = new_row(f"{label} ({args.deviceless})", shape, hb)
            # the GPU's unroll rule (the CPU backend here would keep the scan rolled)
            T = hb.token_ids.shape[0]
            unroll = os.environ.get(UNROLL_ENV) or ("1" if T < UNROLL_MAX_TOKENS else "0")
            jitted = runner_step_jit(model_fn.clone(unroll_layers=unroll == "1"), kv_sh, rep)
            t0 = time.perf_counter()
            last = jax.ShapeDtypeStruct((hb.block_tables.shape[0],), np.int32, sharding=rep)
            lowered = jitted.lower(
                params, kv, last, bufs, layout=layout, flags=flags, num_prompt_logprobs=-1
            )
            exe = lowered.compile(compiler_options=options)
            print(f"\n### {label} {shape}: T/S/P={row['TSP']} context={ctx} ", end="")
            print(f"unrolled={unroll == '1'} (compile {time.perf_counter() - t0:.1f} s)")
            text = exe.as_text()
            if args.dump:
                os.makedirs(args.dump, exist_ok=True)
                name = f"{label}_{args.deviceless}_{shape}.hlo.txt"
                with open(os.path.join(args.dump, name), "w") as f:
                    f.write(text)
            analyze(text, row, marked, args.min_mib)
            report_compiled(exe, row)
            SUMMARY.append(row)


# ---------------------------------------------------------------------------------------------
# One device's share of tp = N, and the all-reduce chains


def half_preset(model: str, n: int) -> str:
    """A dummy preset with 1/n of `model`'s query heads, KV heads, MLP width and vocabulary (the
    same head_dim): what one device of tp = n computes. Returns its `dummy:` name."""
    from jaxllm.model_loader import dummy

    if not model.startswith("dummy:"):
        raise ValueError(f"--half needs a dummy: model, got {model!r}")
    base = model[len("dummy:") :]
    hf = dict(dummy.PRESETS[base])
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"):
        if hf[key] % n:
            raise ValueError(f"--half {n}: {key}={hf[key]} does not divide by {n}")
        hf[key] //= n
    hf["head_dim"] = dummy.dummy_config(base).head_dim
    name = f"{base}-1of{n}"
    dummy.PRESETS[name] = hf
    return f"dummy:{name}"


def allreduce_bench(model: str, tp: int, args) -> None:
    """Time chains of dependent all-reduces of [T, D] bf16 over `tp` devices (as the model's
    o_proj / down_proj partial sums are): L and 2L + 1 per chain, for each T of --allreduce."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxllm.model_loader.dummy import dummy_config
    from jaxllm.parallel import make_mesh

    if tp < 2:
        return
    cfg = dummy_config(model[len("dummy:") :])
    D, L = cfg.hidden_size, cfg.num_hidden_layers
    mesh = make_mesh(tp)
    print(f"\n## all-reduce chains over {tp} devices, bf16 [T, {D}] (the model has {L} layers)")
    print("| T | bytes each | chain | median ms | per all-reduce us | algbw GB/s |")
    print("|---|---|---|---|---|---|")
    for T in args.allreduce or [1, 128, 256, 8192]:
        for n in (L, 2 * L + 1):

            def chain(x, n=n):
                for _ in range(n):
                    x = jax.lax.psum(x, "model") * 0.5
                return x

            f = jax.jit(jax.shard_map(chain, mesh=mesh, in_specs=P("model"), out_specs=P("model")))
            x = jax.device_put(jnp.ones((tp * T, D), jnp.bfloat16), NamedSharding(mesh, P("model")))
            f(x).block_until_ready()
            times = []
            for _ in range(max(5, args.time)):
                t = time.perf_counter()
                f(x).block_until_ready()
                times.append(time.perf_counter() - t)
            med, nbytes = statistics.median(times), T * D * 2
            print(
                f"| {T} | {fmt_bytes(nbytes)} | {n} | {med * 1e3:.3f} | {med / n * 1e6:.1f} | "
                f"{nbytes * n / med / 1e9:.1f} |"
            )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="'tiny' or a model LLM accepts (dummy:NAME)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shapes", nargs="+", default=["decode1", "decode16", "prefill128"])
    ap.add_argument("--context", type=int, default=640, help="KV length of decode steps")
    ap.add_argument("--num-blocks", type=int, default=512, help="KV cache blocks")
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument(
        "--policy",
        choices=("accelerator", "runner"),
        default="accelerator",
        help="step shapes: the GPU's bucket policy (S follows T, tables >= 1,024 tokens; the "
        "default) or the runner's own (the CPU policy under the reference backend)",
    )
    ap.add_argument("--min-mib", type=float, default=1.0)
    ap.add_argument("--time", type=int, default=0, help="time N calls of each step")
    ap.add_argument("--dump", default="", help="folder for the optimized HLO texts")
    ap.add_argument("--profile", default="", help="folder for jax.profiler traces of timed calls")
    ap.add_argument(
        "--half",
        type=int,
        default=0,
        help="also run, on ONE device, the model cut to 1/N of the heads, MLP width and vocabulary "
        "(one tp=N device's share of the work, with no collectives; dummy models only)",
    )
    ap.add_argument(
        "--allreduce",
        type=int,
        nargs="*",
        default=None,
        help="also time chains of all-reduces of [T, D] over max(--tp) devices for these T "
        "(default 1 128 256 8192)",
    )
    ap.add_argument(
        "--deviceless",
        choices=sorted(GPU_TARGETS),
        default=None,
        help="compile for this GPU without one (CUDA plugin's compile-only topology; see above)",
    )
    args = ap.parse_args(argv)
    for s in args.shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}; choose from {sorted(SHAPES)}")

    import jax

    from jaxllm.model_loader import dummy

    model = args.model
    if model == "tiny":
        dummy.PRESETS.setdefault(TINY_NAME, {**dummy.PRESETS["llama-3-8b"], **TINY_OVERRIDES})
        model = f"dummy:{TINY_NAME}"
    env = ("JAXLLM_UNROLL_LAYERS", "JAXLLM_ATTENTION_BACKEND", "JAXLLM_COMPILER_OPTIONS")
    print(
        f"backend {jax.default_backend()}, {len(jax.devices())} devices, jax {jax.__version__}; "
        + " ".join(f"{k}={os.environ.get(k, '')!r}" for k in (*env, "XLA_FLAGS"))
    )
    if args.deviceless:
        run_deviceless(model, args)
    else:
        run_engines(model, args)
    print_summary()
    if args.allreduce is not None and not args.deviceless and model.startswith("dummy:"):
        allreduce_bench(model, max(args.tp), args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
