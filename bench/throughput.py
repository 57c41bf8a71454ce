"""Offline throughput: N requests through `LLM.generate`, optionally against HF transformers.

Every request makes exactly its output_len tokens (`ignore_eos=True`, greedy). Prompts are
random token ids of the model's vocabulary (seeded; `--input-len N` or `--lengths LO:HI`), or a
JSONL `--dataset` ({"prompt": TEXT or "prompt_token_ids": [...], "output_len": N} a line).

    python bench/throughput.py --num-prompts 16 --lengths 32:256 --output-len 128 --warmup --peer hf
    python bench/throughput.py --model dummy:llama-3-8b --dtype bfloat16 --num-prompts 256 --warmup

Prints requests/s, output tokens/s, total tokens/s, elapsed time and the number of compiled step
variants (with `--warmup`: a first run of the same shapes on other random tokens, then the timed
run, each with its own count). `--peer hf` runs HF `generate` on the same prompts and weights in
the same process and prints the ratio; `--json OUT` writes settings, results, machine, device and
package versions; `--profile` splits the timed run's step time into its phases.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (bench/common.py)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    w = p.add_argument_group("workload")
    w.add_argument("--num-prompts", type=int, default=16)
    src = w.add_mutually_exclusive_group()
    src.add_argument("--input-len", type=int, default=None, help="fixed input length (default 128)")
    src.add_argument("--lengths", default=None, help="input lengths drawn from LO:HI (seeded)")
    src.add_argument("--dataset", default=None, help="JSONL file of prompts (see module doc)")
    w.add_argument("--output-len", type=int, default=128, help="new tokens per request "
                   "(the dataset's output_len wins where given)")
    common.add_engine_args(p)
    r = p.add_argument_group("run")
    r.add_argument("--warmup", action="store_true", help="first run the same shapes once, untimed")
    r.add_argument("--peer", choices=("none", "hf"), default="none")
    r.add_argument("--hf-threads", type=int, default=2, help="torch.set_num_threads for the HF peer")
    r.add_argument("--hf-batch-size", type=int, default=None, help="default: the whole set")
    r.add_argument("--profile", action="store_true", help="print a per-phase split of step time")
    r.add_argument("--json", default=None, metavar="OUT")
    args = p.parse_args(argv)
    if args.num_prompts < 1:
        p.error("--num-prompts must be >= 1")
    if args.output_len < 1:
        p.error("--output-len must be >= 1")
    if args.input_len is not None and args.input_len < 1:
        p.error("--input-len must be >= 1")
    if args.hf_batch_size is not None and args.hf_batch_size < 1:
        p.error("--hf-batch-size must be >= 1")
    if args.lengths is not None:
        try:
            common.parse_lengths(args.lengths)
        except ValueError as e:
            p.error(str(e))
    return args


def build_requests(args: argparse.Namespace, loaded) -> list[common.BenchRequest]:
    if args.dataset:
        return common.load_dataset(args.dataset, loaded.tokenizer, args.output_len)
    if args.lengths:
        lo, hi = common.parse_lengths(args.lengths)
    else:
        lo = hi = args.input_len or 128
    return common.synthetic_requests(
        args.num_prompts, lo, hi, args.output_len, loaded.config.vocab_size, args.seed
    )


def run_jaxllm(llm, reqs: list[common.BenchRequest]) -> tuple[float, list]:
    from jaxllm import SamplingParams

    params = [SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True) for r in reqs]
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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    load_before = common.load_average()
    t_load = time.perf_counter()
    loaded = common.load_model_once(args)
    reqs = build_requests(args, loaded)
    summary = common.workload_summary(reqs)
    max_model_len = args.max_model_len or max(r.input_len + r.output_len for r in reqs)
    llm = common.make_llm(args, loaded, max_model_len)
    load_s = time.perf_counter() - t_load
    runner = llm.llm_engine.runner

    warm = None
    if args.warmup:
        # Same lengths, other random tokens: the same step shapes, and no prefix-cache hits.
        warm_prompts = common.random_token_prompts(
            [r.input_len for r in reqs], loaded.config.vocab_size, args.seed + 10_000
        )
        warm_reqs = [common.BenchRequest(p, r.output_len) for p, r in zip(warm_prompts, reqs)]
        warm_elapsed, _ = run_jaxllm(llm, warm_reqs)
        llm.llm_engine.scheduler.reset_prefix_cache()
        warm = {"elapsed_s": warm_elapsed, "compilations": runner.num_compilations}

    profiler = common.StepProfiler(llm) if args.profile else None
    comp_before = runner.num_compilations
    jax_load = [common.load_average()]
    elapsed, outs = run_jaxllm(llm, reqs)
    jax_load.append(common.load_average())
    comp_after = runner.num_compilations
    ttfts = [o.metrics.time_to_first_token for o in outs if o.metrics.time_to_first_token is not None]
    jax_res = rates(elapsed, summary) | {
        "compilations_total": comp_after,
        "compilations_warmup": warm["compilations"] if warm else None,
        "compilations_timed": comp_after - comp_before,
        "warmup_elapsed_s": warm["elapsed_s"] if warm else None,
        "mean_ttft_s": sum(ttfts) / len(ttfts) if ttfts else None,
        "load_s": load_s,
        "load_average_before_after": jax_load,
    }
    profile = None
    if profiler is not None:
        profiler.close()
        profile = profiler.summary()

    hf_res = None
    peer_note = None
    if args.peer == "hf":
        try:
            hf = common.load_hf_peer(args.model, args.dtype, args.hf_threads)
        except common.PeerUnavailable as e:
            peer_note = str(e)
        else:
            if args.warmup:
                common.hf_generate(hf, [common.BenchRequest(reqs[0].prompt_token_ids, 2)], None)
            hf_load = [common.load_average()]
            h = common.hf_generate(hf, reqs, args.hf_batch_size)
            hf_load.append(common.load_average())
            hf_res = rates(h["elapsed_s"], summary) | {
                "threads": args.hf_threads,
                "batch_size": args.hf_batch_size or len(reqs),
                "num_batches": h["num_batches"],
                "device": str(hf.device),
                "load_average_before_after": hf_load,
            }
    load_after = common.load_average()

    record = {
        "benchmark": "throughput",
        "settings": vars(args) | {"max_model_len_used": max_model_len},
        "engine": common.engine_settings(llm),
        "workload": summary,
        "results": {"jaxllm": jax_res, "hf": hf_res},
        "ratio_output_tokens_per_s": (
            jax_res["output_tokens_per_s"] / hf_res["output_tokens_per_s"] if hf_res else None
        ),
        "peer_note": peer_note,
        "profile": profile,
        "load_average": {"before": load_before, "after": load_after},
        "machine": common.machine_info(),
        "device": common.device_info(),
        "packages": common.package_versions(),
    }
    print_report(record)
    if args.json:
        common.write_json(args.json, record)
    return record


def print_report(rec: dict) -> None:
    s, w, e = rec["settings"], rec["workload"], rec["engine"]
    ins = (f"{w['input_len_min']}" if w["input_len_min"] == w["input_len_max"]
           else f"{w['input_len_min']}:{w['input_len_max']} (mean {w['input_len_mean']:.0f})")
    outs = (f"{w['output_len_min']}" if w["output_len_min"] == w["output_len_max"]
            else f"{w['output_len_min']}:{w['output_len_max']}")
    print(f"\n## Throughput: {s['model']} ({e['dtype']}), {w['num_requests']} requests, "
          f"input {ins} tokens, output {outs} tokens\n")
    j, h = rec["results"]["jaxllm"], rec["results"]["hf"]
    comp = (f"{j['compilations_warmup']} warm-up + {j['compilations_timed']} timed"
            if j["compilations_warmup"] is not None else f"{j['compilations_timed']} (no warm-up)")
    rows = [("jaxllm", w["num_requests"], w["input_tokens"], w["output_tokens"], j["elapsed_s"],
             j["requests_per_s"], j["output_tokens_per_s"], j["total_tokens_per_s"], comp)]
    if h:
        rows.append((f"HF transformers ({h['device']}, {h['threads']} threads, batch {h['batch_size']})",
                     w["num_requests"], w["input_tokens"], w["output_tokens"], h["elapsed_s"],
                     h["requests_per_s"], h["output_tokens_per_s"], h["total_tokens_per_s"], "-"))
    print(common.markdown_table(
        ["engine", "requests", "input tokens", "output tokens", "elapsed s", "requests/s",
         "output tok/s", "total tok/s", "XLA compilations"], rows))
    loads = "; ".join(f"{name}: {r['load_average_before_after'][0][0]} -> "
                      f"{r['load_average_before_after'][1][0]}"
                      for name, r in rec["results"].items() if r)
    print(f"\n1-minute load average before -> after each timed run: {loads}")
    if rec["ratio_output_tokens_per_s"] is not None:
        print(f"\njaxllm / HF output tokens/s: {rec['ratio_output_tokens_per_s']:.2f}x")
    if rec["peer_note"]:
        print(f"\nHF peer skipped: {rec['peer_note']}")
    if rec["profile"]:
        print("\nStep-time split of the timed run (jaxllm):\n")
        print(common.profile_table(rec["profile"]))
    print(f"\nengine: max_num_seqs {e['max_num_seqs']}, max_num_batched_tokens "
          f"{e['max_num_batched_tokens']}, max_model_len {e['max_model_len']}, KV blocks "
          f"{e['num_blocks']} x {e['block_size']}, prefix caching {e['enable_prefix_caching']}, "
          f"attention {e['attention_backend']}")
    print(common.machine_line(rec))


if __name__ == "__main__":
    main()
