"""Offline throughput: N requests through `LLM.generate`, optionally against HF transformers.

Every request makes exactly its output length (`ignore_eos=True`, greedy). Prompts are random
token ids of the model's vocabulary (seeded; `--input-len N` or `--lengths LO:HI`), or a
`--dataset` file: JSONL ({"prompt": TEXT | "prompt_token_ids": [...] | "input_len": N,
"output_len": N} a line) or ShareGPT JSON (see jaxllm.benchmarks.datasets).

    jaxllm bench throughput --num-prompts 16 --lengths 32:256 --output-len 128 --warmup --peer hf
    jaxllm bench throughput --model dummy:llama-3-8b --dtype bfloat16 --num-prompts 1000 \\
        --input-len 512 --output-len 256 --warmup --peer hf --json out.json

Prints requests/s, output tokens/s, total tokens/s, elapsed time and the number of compiled step
variants (with `--warmup`: a first run of the same shapes on other random tokens, then the timed
run, each with its own count). `--peer hf` runs HF `generate` on the same prompts and weights in
the same process; the record's `vs_peer` holds jaxllm / HF of each rate. `--json OUT` writes
settings, results, machine, device and package versions; `--profile` splits the timed run's step
time into its phases.
"""

from __future__ import annotations

import argparse
import os
import time

from jaxllm.benchmarks import common
from jaxllm.benchmarks.datasets import (
    DATASET_FORMATS,
    BenchRequest,
    load_dataset,
    parse_lengths,
    random_token_prompts,
    synthetic_requests,
    workload_summary,
)
from jaxllm.benchmarks.engine_setup import (
    add_bench_engine_args,
    engine_settings,
    load_model_once,
    make_llm,
    precompile_greedy,
    release_device_memory,
)

__all__ = ["add_args", "check_args", "parse_args", "run", "main", "print_report"]

DEFAULT_NUM_PROMPTS = 16
DEFAULT_INPUT_LEN = 128
DEFAULT_OUTPUT_LEN = 128
RATES = ("requests_per_s", "output_tokens_per_s", "total_tokens_per_s")


def add_args(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload")
    w.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help=f"requests (default {DEFAULT_NUM_PROMPTS}; with --dataset: all of it)",
    )
    src = w.add_mutually_exclusive_group()
    src.add_argument(
        "--input-len",
        type=int,
        default=None,
        help=f"fixed input length (default {DEFAULT_INPUT_LEN})",
    )
    src.add_argument("--lengths", default=None, help="input lengths drawn from LO:HI (seeded)")
    src.add_argument("--dataset", default=None, help="JSONL or ShareGPT JSON file of prompts")
    w.add_argument("--dataset-format", choices=DATASET_FORMATS, default="auto")
    w.add_argument(
        "--output-len",
        type=int,
        default=None,
        help=f"new tokens per request (default {DEFAULT_OUTPUT_LEN}; a JSONL line's "
        "output_len wins; for ShareGPT the reply's length unless this is given)",
    )
    add_bench_engine_args(p)
    r = p.add_argument_group("run")
    r.add_argument("--warmup", action="store_true", help="first run the same shapes once, untimed")
    r.add_argument("--peer", choices=("none", "hf"), default="none")
    r.add_argument(
        "--hf-threads", type=int, default=2, help="torch.set_num_threads for the HF peer"
    )
    r.add_argument("--hf-batch-size", type=int, default=None, help="default: the whole set")
    r.add_argument("--profile", action="store_true", help="print a per-phase split of step time")
    r.add_argument("--json", default=None, metavar="OUT", help="write the result record here")


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming the first bad workload/run flag."""
    for name in ("num_prompts", "output_len", "input_len", "hf_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.lengths is not None:
        parse_lengths(args.lengths)
    if args.dataset is not None and not os.path.isfile(args.dataset):
        raise ValueError(f"dataset file not found: {args.dataset}")


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


def build_requests(args: argparse.Namespace, loaded) -> list[BenchRequest]:
    vocab = loaded.config.vocab_size
    if args.dataset:
        return load_dataset(
            args.dataset,
            loaded.tokenizer,
            args.output_len or DEFAULT_OUTPUT_LEN,
            fmt=args.dataset_format,
            vocab_size=vocab,
            seed=args.seed,
            num=args.num_prompts,
            force_output_len=args.output_len is not None,
        )
    lo, hi = (
        parse_lengths(args.lengths) if args.lengths else (args.input_len or DEFAULT_INPUT_LEN,) * 2
    )
    return synthetic_requests(
        args.num_prompts or DEFAULT_NUM_PROMPTS,
        lo,
        hi,
        args.output_len or DEFAULT_OUTPUT_LEN,
        vocab,
        args.seed,
    )


def run_jaxllm(llm, reqs: list[BenchRequest]) -> tuple[float, list]:
    from jaxllm import SamplingParams

    params = [
        SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True) for r in reqs
    ]
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    for r, o in zip(reqs, outs):
        got = len(o.outputs[0].token_ids)
        if got != r.output_len:
            raise RuntimeError(f"request {o.request_id} made {got} tokens, expected {r.output_len}")
    return elapsed, outs


def rates(elapsed: float, summary: dict) -> dict:
    n, ins, outs = summary["num_requests"], summary["input_tokens"], summary["output_tokens"]
    return {
        "elapsed_s": elapsed,
        "requests_per_s": n / elapsed,
        "output_tokens_per_s": outs / elapsed,
        "total_tokens_per_s": (ins + outs) / elapsed,
    }


def run_peer(
    args: argparse.Namespace, reqs: list[BenchRequest], summary: dict, jax_backend: str
) -> tuple[dict | None, str | None]:
    """HF transformers on the same requests: (result, None), or (None, why it was skipped)."""
    from jaxllm.benchmarks import hf_peer

    try:
        hf = hf_peer.load_hf_peer(
            args.model, args.dtype, args.hf_threads, jax_backend, getattr(args, "revision", None)
        )
    except hf_peer.PeerUnavailable as e:
        return None, str(e)
    if args.warmup:
        hf_peer.hf_generate(hf, [BenchRequest(reqs[0].prompt_token_ids, 2)], None)
    load = [common.load_average()]
    h = hf_peer.hf_generate(hf, reqs, args.hf_batch_size)
    load.append(common.load_average())
    return rates(h["elapsed_s"], summary) | {
        "threads": args.hf_threads,
        "batch_size": args.hf_batch_size or len(reqs),
        "num_batches": h["num_batches"],
        "device": str(hf.device),
        "load_average_before_after": load,
    }, None


def run_engine(args: argparse.Namespace) -> dict:
    """The jaxllm half: load, build the workload and the engine, warm up, time. Every engine
    object dies with this call, so a peer can then have the device memory."""
    t_load = time.perf_counter()
    loaded = load_model_once(args)
    reqs = build_requests(args, loaded)
    summary = workload_summary(reqs)
    llm = make_llm(args, loaded, max(r.input_len + r.output_len for r in reqs))
    load_s = time.perf_counter() - t_load
    precompiled = precompile_greedy(args, llm)
    runner = llm.llm_engine.runner

    warm = None
    if args.warmup:
        # Same lengths, other random tokens: the same step shapes, and no prefix-cache hits.
        warm_prompts = random_token_prompts(
            [r.input_len for r in reqs], loaded.config.vocab_size, args.seed + 10_000
        )
        warm_reqs = [BenchRequest(p, r.output_len) for p, r in zip(warm_prompts, reqs)]
        warm_elapsed, _ = run_jaxllm(llm, warm_reqs)
        llm.llm_engine.scheduler.reset_prefix_cache()
        warm = {"elapsed_s": warm_elapsed, "compilations": runner.num_compilations}

    profiler = None
    if args.profile:
        from jaxllm.benchmarks.profiler import StepProfiler

        profiler = StepProfiler(llm)
    comp_before = runner.num_compilations
    jax_load = [common.load_average()]
    elapsed, outs = run_jaxllm(llm, reqs)
    jax_load.append(common.load_average())
    comp_after = runner.num_compilations
    ttfts = [
        o.metrics.time_to_first_token for o in outs if o.metrics.time_to_first_token is not None
    ]
    profile = None
    if profiler is not None:
        profiler.close()
        profile = profiler.summary()
    return {
        "reqs": reqs,
        "summary": summary,
        "engine": engine_settings(llm),
        "device": common.device_info(),
        "profile": profile,
        "result": rates(elapsed, summary)
        | {
            "compilations_total": comp_after,
            "precompile": precompiled,  # {"shapes", "seconds"} with --precompile
            "compilations_warmup": warm["compilations"] if warm else None,
            "compilations_timed": comp_after - comp_before,
            "warmup_elapsed_s": warm["elapsed_s"] if warm else None,
            "mean_ttft_s": sum(ttfts) / len(ttfts) if ttfts else None,
            "load_s": load_s,
            "load_average_before_after": jax_load,
        },
    }


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark of parsed `args`; returns the result record (also written to --json)."""
    check_args(args)
    load_before = common.load_average()
    eng = run_engine(args)
    jax_res, summary = eng["result"], eng["summary"]
    hf_res, peer_note = None, None
    if args.peer == "hf":
        release_device_memory()  # GPU: JAX's memory pool goes back to the driver for torch
        try:
            hf_res, peer_note = run_peer(args, eng["reqs"], summary, eng["device"]["backend"])
        except Exception as e:  # only running out of device memory is kept, as a note
            from jaxllm.benchmarks.hf_peer import is_out_of_memory

            if not is_out_of_memory(e):
                raise
            peer_note = f"the HF peer ran out of device memory: {type(e).__name__}: {e}"
    vs_peer = {k: jax_res[k] / hf_res[k] for k in RATES} if hf_res else None
    record = {
        "benchmark": "throughput",
        "settings": vars(args) | {"max_model_len_used": eng["engine"]["max_model_len"]},
        "engine": eng["engine"],
        "workload": summary,
        "results": {"jaxllm": jax_res, "hf": hf_res},
        "peer": args.peer,
        "vs_peer": vs_peer,  # jaxllm / HF of each rate: > 1 means jaxllm is faster
        "ratio_output_tokens_per_s": vs_peer["output_tokens_per_s"] if vs_peer else None,
        "peer_note": peer_note,
        "profile": eng["profile"],
    } | common.environment_record(load_before, eng["device"])
    if args.json:
        common.write_json(args.json, record)
    return record


def main(argv: list[str] | None = None) -> dict:
    record = run(parse_args(argv))
    print_report(record)
    return record


def print_report(rec: dict) -> None:
    s, w, e = rec["settings"], rec["workload"], rec["engine"]
    ins = (
        f"{w['input_len_min']}"
        if w["input_len_min"] == w["input_len_max"]
        else f"{w['input_len_min']}:{w['input_len_max']} (mean {w['input_len_mean']:.0f})"
    )
    outs = (
        f"{w['output_len_min']}"
        if w["output_len_min"] == w["output_len_max"]
        else f"{w['output_len_min']}:{w['output_len_max']}"
    )
    print(
        f"\n## Throughput: {s['model']} ({e['dtype']}), {w['num_requests']} requests, "
        f"input {ins} tokens, output {outs} tokens\n"
    )
    j, h = rec["results"]["jaxllm"], rec["results"]["hf"]
    comp = (
        f"{j['compilations_warmup']} warm-up + {j['compilations_timed']} timed"
        if j["compilations_warmup"] is not None
        else f"{j['compilations_timed']} (no warm-up)"
    )
    pre = j.get("precompile")
    if pre:
        comp = f"{pre['shapes']} precompiled ({pre['seconds']:.0f} s), " + comp
    rows = [
        (
            "jaxllm",
            w["num_requests"],
            w["input_tokens"],
            w["output_tokens"],
            j["elapsed_s"],
            j["requests_per_s"],
            j["output_tokens_per_s"],
            j["total_tokens_per_s"],
            comp,
        )
    ]
    if h:
        rows.append(
            (
                f"HF transformers ({h['device']}, {h['threads']} threads, batch {h['batch_size']})",
                w["num_requests"],
                w["input_tokens"],
                w["output_tokens"],
                h["elapsed_s"],
                h["requests_per_s"],
                h["output_tokens_per_s"],
                h["total_tokens_per_s"],
                "-",
            )
        )
    print(
        common.markdown_table(
            [
                "engine",
                "requests",
                "input tokens",
                "output tokens",
                "elapsed s",
                "requests/s",
                "output tok/s",
                "total tok/s",
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
    if rec["ratio_output_tokens_per_s"] is not None:
        print(f"\njaxllm / HF output tokens/s: {rec['ratio_output_tokens_per_s']:.2f}x")
    if rec["peer_note"]:
        print(f"\nHF peer skipped: {rec['peer_note']}")
    if rec["profile"]:
        from jaxllm.benchmarks.profiler import profile_table

        print("\nStep-time split of the timed run (jaxllm):\n")
        print(profile_table(rec["profile"]))
    print("\n" + common.engine_line(e))
    print(common.machine_line(rec))


if __name__ == "__main__":
    main()
