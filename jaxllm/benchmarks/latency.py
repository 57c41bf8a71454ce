"""Latency: a batch of `--batch-size` prompts (default 1) of `--input-len` tokens, `--output-len`
new tokens each (greedy), sent at once.

jaxllm is driven step by step (`llm_engine.add_request` + `step()`, each step timed with
`time.perf_counter()`):
  - prefill time (TTFT): from add_request to the end of the step after which every request of the
    batch has its first token (one step, or several when --max-num-batched-tokens chunks it);
  - decode time per output token: the duration of each later step (each makes one token for every
    unfinished request), pooled over `--num-iters` runs: mean, p50, p90.
A warm-up run of the same shapes comes first (untimed); each run uses fresh random tokens, so the
prefix cache never hits. `--max-num-seqs` defaults to the batch size.

`--peer hf`: HF transformers `generate` (torch, `--hf-threads`) on the same prompts and weights,
timed with a streamer: `put` is called once with the prompts and once per decoding step, so TTFT
is the time to the second call and the decode time per token is the gap between later calls.
`--peer llamacpp`: llama.cpp (`llama-cpp-python`, `--llamacpp-threads`) on the same GGUF file and
prompts, one prompt at a time (batch 1 only), each generated token timed as it comes.

The record names the parameter bytes on the device (`param_bytes`): with `--quantization` (or a
GGUF file's kept blocks) the quantized weights' real size.

    jaxllm bench latency --input-len 128 --output-len 128 --peer hf
    jaxllm bench latency --model dummy:llama-3-8b --dtype bfloat16 --batch-size 8 --json out.json
    jaxllm bench latency --input-len 32 --output-len 64 --peer llamacpp    # SmolLM2's Q4_1 GGUF
"""

from __future__ import annotations

import argparse
import statistics
import time

from jaxllm.benchmarks import common
from jaxllm.benchmarks.datasets import random_token_prompts
from jaxllm.benchmarks.engine_setup import (
    add_bench_engine_args,
    engine_settings,
    load_model_once,
    make_llm,
    precompile_greedy,
    release_device_memory,
)

__all__ = ["add_args", "check_args", "parse_args", "run", "main", "print_report"]


def add_args(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload")
    w.add_argument("--input-len", type=int, default=128)
    w.add_argument("--output-len", type=int, default=128)
    w.add_argument("--batch-size", type=int, default=1, help="prompts sent at once (default 1)")
    w.add_argument("--num-iters", type=int, default=3, help="timed runs (after one warm-up)")
    add_bench_engine_args(p, max_num_seqs=None)  # default: the batch size
    r = p.add_argument_group("run")
    r.add_argument("--peer", choices=("none", "hf", "llamacpp"), default="none")
    r.add_argument("--hf-threads", type=int, default=2)
    r.add_argument("--llamacpp-threads", type=int, default=2)
    r.add_argument("--profile", action="store_true", help="print a per-phase split of step time")
    r.add_argument("--json", default=None, metavar="OUT", help="write the result record here")


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming the first bad workload flag."""
    for name in ("input_len", "output_len", "num_iters", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.output_len < 2:
        raise ValueError(
            "--output-len must be >= 2 (one prefill token plus at least one decode step)"
        )
    if getattr(args, "speculative_config", None) is not None:
        raise ValueError(
            "--speculative-config: this benchmark times steps of one token per sequence; "
            "measure speculative decoding with `python -m jaxllm.benchmarks.spec_decode`"
        )
    if args.peer == "llamacpp" and args.batch_size != 1:
        raise ValueError(
            f"--peer llamacpp runs one prompt at a time: --batch-size must be 1, got "
            f"{args.batch_size}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_args(p)
    args = p.parse_args(argv)
    try:
        check_args(args)
    except ValueError as e:
        p.error(str(e))
    return args


def run_once(engine, prompts: list[list[int]], output_len: int, tag: str) -> dict:
    """One batch through the engine, step by step. Returns TTFT, per-step decode times, steps."""
    from jaxllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    t0 = time.perf_counter()
    for rid, p in zip(ids, prompts):
        engine.add_request(rid, p, sp, output_kind="delta")
    made = dict.fromkeys(ids, 0)
    ttft = None
    prefill_steps = 0
    decode: list[float] = []
    while engine.has_unfinished_requests():
        running = sum(1 for rid in ids if made[rid] < output_len)
        t_start = time.perf_counter()
        outs = engine.step()
        t_end = time.perf_counter()
        new = 0
        for o in outs:
            if o.request_id in made:
                made[o.request_id] += len(o.outputs[0].token_ids)
                new += len(o.outputs[0].token_ids)
        if ttft is None:
            prefill_steps += 1
            if all(made.values()):
                ttft = t_end - t0
        else:
            if new != running:
                raise RuntimeError(f"a decode step made {new} tokens, expected {running}")
            decode.append(t_end - t_start)
    if any(n != output_len for n in made.values()):
        raise RuntimeError(f"made {sorted(made.values())} tokens, expected {output_len} each")
    return {
        "ttft_s": ttft,
        "decode_s": decode,
        "prefill_steps": prefill_steps,
        "total_s": t_end - t0,
    }


def summarize(runs: list[dict]) -> dict:
    ttfts = [r["ttft_s"] for r in runs]
    decode = [d for r in runs for d in r["decode_s"]]
    return {
        "ttft_ms": common.summarize_ms(ttfts),
        "decode_ms_per_token": common.summarize_ms(decode),
        "total_s_mean": statistics.fmean(r["total_s"] for r in runs),
        "decode_tokens_per_s": len(decode) / sum(decode),  # per sequence
    }


def run_peer(
    args: argparse.Namespace, batches: list[list[list[int]]], jax_backend: str
) -> tuple[dict | None, str | None]:
    """HF transformers on the same batches: (result, None), or (None, why it was skipped)."""
    from jaxllm.benchmarks import hf_peer

    try:
        hf = hf_peer.load_hf_peer(
            args.model, args.dtype, args.hf_threads, jax_backend, getattr(args, "revision", None)
        )
    except hf_peer.PeerUnavailable as e:
        return None, str(e)
    hf_peer.hf_latency(hf, batches[0], min(args.output_len, 8))  # warm-up
    load = [common.load_average()]
    runs = [hf_peer.hf_latency(hf, b, args.output_len) for b in batches[1:]]
    load.append(common.load_average())
    return summarize(runs) | {
        "threads": args.hf_threads,
        "device": str(hf.device),
        "method": "timing streamer (gaps between put calls)",
        "load_average_before_after": load,
    }, None


def run_llamacpp_peer(
    args: argparse.Namespace, batches: list[list[list[int]]]
) -> tuple[dict | None, str | None]:
    """llama.cpp on the same GGUF and prompts: (result, None), or (None, why it was skipped)."""
    from jaxllm.benchmarks import llamacpp_peer

    try:
        llm = llamacpp_peer.load_llamacpp_peer(
            args.model, args.llamacpp_threads, args.input_len + args.output_len + 8
        )
    except llamacpp_peer.PeerUnavailable as e:
        return None, str(e)
    llamacpp_peer.llamacpp_latency(llm, batches[0][0], min(args.output_len, 8))  # warm-up
    load = [common.load_average()]
    runs = [llamacpp_peer.llamacpp_latency(llm, b[0], args.output_len) for b in batches[1:]]
    load.append(common.load_average())
    return summarize(runs) | {
        "threads": args.llamacpp_threads,
        "device": "cpu",
        "method": "time of each token yielded by Llama.generate (greedy)",
        "load_average_before_after": load,
    }, None


def run_engine(args: argparse.Namespace) -> dict:
    """The jaxllm half (every engine object dies with this call, so a peer can then have the
    device memory): the batches of token ids, the engine's settings and its timings."""
    loaded = load_model_once(args)
    vocab = loaded.config.vocab_size
    llm = make_llm(args, loaded, args.input_len + args.output_len)
    precompiled = precompile_greedy(args, llm)
    engine = llm.llm_engine
    runner = engine.runner

    b = args.batch_size
    prompts = random_token_prompts([args.input_len] * (b * (args.num_iters + 1)), vocab, args.seed)
    batches = [prompts[i * b : (i + 1) * b] for i in range(args.num_iters + 1)]
    warm = run_once(engine, batches[0], args.output_len, "warmup")
    comp_warm = runner.num_compilations
    profiler = None
    if args.profile:
        from jaxllm.benchmarks.profiler import StepProfiler

        profiler = StepProfiler(llm)
    jax_load = [common.load_average()]
    runs = [
        run_once(engine, batch, args.output_len, f"run{i}") for i, batch in enumerate(batches[1:])
    ]
    comp_timed = runner.num_compilations - comp_warm
    jax_load.append(common.load_average())
    profile = None
    if profiler is not None:
        profiler.close()
        profile = profiler.summary()
    import jax

    return {
        "batches": batches,
        "engine": engine_settings(llm)
        | {
            "quantization": getattr(loaded.config.quantization, "method", None),
            "param_bytes": sum(a.nbytes for a in jax.tree.leaves(runner.params)),
        },
        "device": common.device_info(),
        "profile": profile,
        "result": summarize(runs)
        | {
            "prefill_steps": runs[0]["prefill_steps"],
            "compilations_warmup": comp_warm,
            "compilations_timed": comp_timed,
            "warmup_total_s": warm["total_s"],
            "precompile": precompiled,  # {"shapes", "seconds"} with --precompile
            "load_average_before_after": jax_load,
        },
    }


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark of parsed `args`; returns the result record (also written to --json)."""
    check_args(args)
    if args.max_num_seqs is None:
        args.max_num_seqs = args.batch_size
    load_before = common.load_average()
    eng = run_engine(args)
    jax_res = eng["result"]
    peer_res, peer_note = None, None
    if args.peer == "hf":
        release_device_memory()  # GPU: JAX's memory pool goes back to the driver for torch
        try:
            peer_res, peer_note = run_peer(args, eng["batches"], eng["device"]["backend"])
        except Exception as e:  # only running out of device memory is kept, as a note
            from jaxllm.benchmarks.hf_peer import is_out_of_memory

            if not is_out_of_memory(e):
                raise
            peer_note = f"the HF peer ran out of device memory: {type(e).__name__}: {e}"
    elif args.peer == "llamacpp":
        peer_res, peer_note = run_llamacpp_peer(args, eng["batches"])
    vs_peer = None
    if peer_res:  # the peer's time / jaxllm's time: > 1 means jaxllm is faster
        vs_peer = {
            "decode_ms_per_token": peer_res["decode_ms_per_token"]["mean_ms"]
            / jax_res["decode_ms_per_token"]["mean_ms"],
            "ttft_ms": peer_res["ttft_ms"]["mean_ms"] / jax_res["ttft_ms"]["mean_ms"],
        }
    record = {
        "benchmark": "latency",
        "settings": vars(args) | {"max_model_len_used": eng["engine"]["max_model_len"]},
        "engine": eng["engine"],
        "results": {"jaxllm": jax_res, (args.peer if args.peer in PEER_NAMES else "hf"): peer_res},
        "peer": args.peer,
        "vs_peer": vs_peer,
        "ratio_decode_ms_per_token": vs_peer["decode_ms_per_token"] if vs_peer else None,
        "peer_note": peer_note,
        "profile": eng["profile"],
    } | common.environment_record(load_before, eng["device"])
    if args.json:
        common.write_json(args.json, record)
    return record


PEER_NAMES = {"hf": "HF transformers", "llamacpp": "llama.cpp"}


def main(argv: list[str] | None = None) -> dict:
    record = run(parse_args(argv))
    print_report(record)
    return record


def print_report(rec: dict) -> None:
    s, e = rec["settings"], rec["engine"]
    print(
        f"\n## Latency: {s['model']} ({e['dtype']}), batch {s['batch_size']}, input "
        f"{s['input_len']} tokens, output {s['output_len']} tokens, {s['num_iters']} timed runs\n"
    )
    rows = []
    for name, r in rec["results"].items():
        if r is None:
            continue
        label = (
            "jaxllm"
            if name == "jaxllm"
            else f"{PEER_NAMES[name]} ({r['device']}, {r['threads']} threads)"
        )
        d = r["decode_ms_per_token"]
        comp = (
            f"{r['compilations_warmup']} warm-up + {r['compilations_timed']} timed"
            if name == "jaxllm"
            else "-"
        )
        rows.append(
            (
                label,
                r["ttft_ms"]["p50_ms"],
                d["mean_ms"],
                d["p50_ms"],
                d["p90_ms"],
                r["decode_tokens_per_s"],
                comp,
            )
        )
    print(
        common.markdown_table(
            [
                "engine",
                "prefill (TTFT) ms, median",
                "decode ms/token mean",
                "p50",
                "p90",
                "decode tok/s",
                "XLA compilations",
            ],
            rows,
        )
    )
    loads = "; ".join(
        f"{name}: {r['load_average_before_after'][0][0]} -> {r['load_average_before_after'][1][0]}"
        for name, r in rec["results"].items()
        if r
    )
    print(f"\n1-minute load average before -> after each timed run: {loads}")
    peer = PEER_NAMES.get(rec["peer"], "HF")
    if rec["ratio_decode_ms_per_token"] is not None:
        print(
            f"\n{peer} / jaxllm decode time per token: {rec['ratio_decode_ms_per_token']:.2f}x "
            "(> 1: jaxllm is faster)"
        )
    if rec["peer_note"]:
        print(f"\n{peer} peer skipped: {rec['peer_note']}")
    if rec["profile"]:
        from jaxllm.benchmarks.profiler import profile_table

        print("\nStep-time split of the timed runs (jaxllm):\n")
        print(profile_table(rec["profile"]))
    print(
        f"\nengine: KV blocks {e['num_blocks']} x {e['block_size']}, max_model_len "
        f"{e['max_model_len']}, attention {e['attention_backend']}; weights "
        f"{e.get('quantization') or e['dtype']}, {e.get('param_bytes', 0) / 2**20:.1f} MiB on "
        "the device; HF decode timing: timing streamer"
    )
    print(common.machine_line(rec))


if __name__ == "__main__":
    main()
