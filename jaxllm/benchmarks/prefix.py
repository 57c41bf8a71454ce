"""Automatic prefix caching: N requests sharing one long system prompt, caching on vs off.

Every request is the same `--prefix-len`-token system prompt followed by its own `--suffix-len`
distinct tokens (random token ids of the model's vocabulary, seeded), and makes exactly
`--output-len` tokens (greedy, `ignore_eos`). The same workload runs through two engines, prefix
caching on and off, each timed over one `LLM.generate` of all the requests:

    python -m jaxllm.benchmarks.prefix            # 200 requests, 1,000-token prefix
    python -m jaxllm.benchmarks.prefix --num-requests 32 --prefix-len 256 --output-len 8 \\
        --json prefix.json

Prints, per mode: elapsed seconds, output and total tokens/s, the prompt tokens actually
computed (the rest came from the cache), the prefix-cache hit rate (hit tokens / looked-up prompt
tokens) and the XLA compilations of the timed run (`--warmup` first runs the same shapes on other
random tokens, untimed). `--json OUT` writes settings, results, machine, device and packages.
"""

from __future__ import annotations

import argparse
import gc
import time

from jaxllm.benchmarks import common
from jaxllm.benchmarks.datasets import random_token_prompts
from jaxllm.benchmarks.engine_setup import (
    add_bench_engine_args,
    engine_settings,
    load_model_once,
    make_llm,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w = p.add_argument_group("workload")
    w.add_argument("--num-requests", type=int, default=200)
    w.add_argument(
        "--prefix-len", type=int, default=1000, help="tokens of the shared system prompt"
    )
    w.add_argument(
        "--suffix-len", type=int, default=16, help="distinct tokens after it, per request"
    )
    w.add_argument("--output-len", type=int, default=16, help="new tokens per request")
    add_bench_engine_args(p)
    r = p.add_argument_group("run")
    r.add_argument(
        "--modes", default="on,off", help="prefix caching modes to run: on,off / on / off"
    )
    r.add_argument("--warmup", action="store_true", help="first run the same shapes once, untimed")
    r.add_argument("--json", default=None, metavar="OUT")
    args = p.parse_args(argv)
    for name in ("num_requests", "prefix_len", "suffix_len", "output_len"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("on", "off") for m in modes):
        p.error(f"--modes must list on and/or off, got {args.modes!r}")
    args.modes = modes
    return args


def build_prompts(
    n: int, prefix_len: int, suffix_len: int, vocab: int, seed: int
) -> list[list[int]]:
    """One shared prefix + n distinct suffixes (random token ids, seeded)."""
    prefix = random_token_prompts([prefix_len], vocab, seed)[0]
    suffixes = random_token_prompts([suffix_len] * n, vocab, seed + 1)
    return [prefix + s for s in suffixes]


def run_once(llm, prompts: list[list[int]], output_len: int) -> dict:
    from jaxllm import SamplingParams

    engine = llm.llm_engine
    sched = engine.scheduler
    stats = sched.prefix_cache_stats
    q0, h0, c0 = stats.queries, stats.hits, sched.num_prompt_tokens_computed
    comp0 = engine.runner.num_compilations
    sp = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    if out_tokens != output_len * len(prompts):
        raise RuntimeError(f"made {out_tokens} tokens, expected {output_len * len(prompts)}")
    in_tokens = sum(len(p) for p in prompts)
    queries, hits = stats.queries - q0, stats.hits - h0
    return {
        "elapsed_s": elapsed,
        "requests_per_s": len(prompts) / elapsed,
        "output_tokens_per_s": out_tokens / elapsed,
        "total_tokens_per_s": (in_tokens + out_tokens) / elapsed,
        "prompt_tokens": in_tokens,
        "prompt_tokens_computed": sched.num_prompt_tokens_computed - c0,
        "prefix_cache_queries": queries,
        "prefix_cache_hits": hits,
        "hit_rate": hits / queries if queries else 0.0,
        "num_preemptions": sched.num_preemptions_total,
        "compilations_timed": engine.runner.num_compilations - comp0,
        "outputs": [o.outputs[0].token_ids for o in outs],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    load_before = common.load_average()
    loaded = load_model_once(args)
    vocab = loaded.config.vocab_size
    prompts = build_prompts(args.num_requests, args.prefix_len, args.suffix_len, vocab, args.seed)
    max_model_len = args.max_model_len or args.prefix_len + args.suffix_len + args.output_len
    results, engines = {}, {}
    for mode in args.modes:
        args.enable_prefix_caching = mode == "on"
        llm = make_llm(args, loaded, max_model_len)
        engines[mode] = engine_settings(llm)
        warm_s = None
        if args.warmup:
            other = build_prompts(
                args.num_requests, args.prefix_len, args.suffix_len, vocab, args.seed + 10_000
            )
            warm_s = run_once(llm, other, args.output_len)["elapsed_s"]
            llm.llm_engine.scheduler.reset_prefix_cache()
        res = run_once(llm, prompts, args.output_len)
        res["warmup_elapsed_s"] = warm_s
        res["load_average_after"] = common.load_average()
        results[mode] = res
        print(
            f"prefix caching {mode}: {res['elapsed_s']:.2f} s, "
            f"{res['output_tokens_per_s']:.2f} output tok/s, hit rate {res['hit_rate']:.3f}",
            flush=True,
        )
        del llm
        gc.collect()
    same = None
    if len(results) == 2:
        same = results["on"].pop("outputs") == results["off"].pop("outputs")
    else:
        for r in results.values():
            r.pop("outputs")
    speedup = (
        results["on"]["output_tokens_per_s"] / results["off"]["output_tokens_per_s"]
        if len(results) == 2
        else None
    )
    record = {
        "benchmark": "prefix",
        "settings": vars(args) | {"max_model_len_used": max_model_len},
        "engine": engines,
        "workload": {
            "num_requests": args.num_requests,
            "prefix_len": args.prefix_len,
            "suffix_len": args.suffix_len,
            "output_len": args.output_len,
        },
        "results": results,
        "speedup_output_tokens_per_s": speedup,
        "greedy_outputs_identical": same,
    } | common.environment_record(load_before)
    print_report(record)
    if args.json:
        common.write_json(args.json, record)
    return record


def print_report(rec: dict) -> None:
    w = rec["workload"]
    print(
        f"\n## Prefix caching: {rec['settings']['model']}, {w['num_requests']} requests, shared "
        f"prefix {w['prefix_len']} + {w['suffix_len']} own tokens, output {w['output_len']} "
        "tokens\n"
    )
    rows = []
    for mode, r in rec["results"].items():
        rows.append(
            (
                mode,
                r["elapsed_s"],
                r["requests_per_s"],
                r["output_tokens_per_s"],
                r["total_tokens_per_s"],
                r["prompt_tokens"],
                r["prompt_tokens_computed"],
                f"{100 * r['hit_rate']:.1f}%",
                r["num_preemptions"],
                r["compilations_timed"],
            )
        )
    print(
        common.markdown_table(
            [
                "prefix caching",
                "elapsed s",
                "requests/s",
                "output tok/s",
                "total tok/s",
                "prompt tokens",
                "prompt tokens computed",
                "hit rate",
                "preemptions",
                "XLA compilations (timed)",
            ],
            rows,
        )
    )
    if rec["speedup_output_tokens_per_s"] is not None:
        print(
            f"\ncaching on / off, output tokens/s: {rec['speedup_output_tokens_per_s']:.2f}x; "
            f"greedy outputs identical: {rec['greedy_outputs_identical']}"
        )
    e = next(iter(rec["engine"].values()))
    print("\n" + common.engine_line(e, with_prefix_caching=False))  # the run compares on/off
    print(common.machine_line(rec))


if __name__ == "__main__":
    main()
