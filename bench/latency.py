"""Batch-1 latency: one prompt of `--input-len` tokens, `--output-len` new tokens (greedy).

jaxllm is driven step by step (`llm_engine.add_request` + `step()`, each step timed with
`time.perf_counter()`):
  - prefill time (TTFT): from add_request to the end of the step that returns the first token
    (one step, or several when the prompt is chunked by --max-num-batched-tokens);
  - decode time per output token: the duration of each later step (each makes one token),
    pooled over `--num-iters` runs: mean, p50, p90.
A warm-up run of the same shapes comes first (untimed); each run uses fresh random tokens, so
the prefix cache never hits.

`--peer hf`: HF transformers `generate` (torch, `--hf-threads`) on the same prompts and weights,
timed with a streamer: `put` is called once with the prompt and once per new token, so TTFT is
the time to the second call and the decode time per token is the gap between later calls.

    python bench/latency.py --input-len 128 --output-len 128 --peer hf
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (bench/common.py)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    w = p.add_argument_group("workload")
    w.add_argument("--input-len", type=int, default=128)
    w.add_argument("--output-len", type=int, default=128)
    w.add_argument("--num-iters", type=int, default=3, help="timed runs (after one warm-up)")
    common.add_engine_args(p)
    p.set_defaults(max_num_seqs=1)
    r = p.add_argument_group("run")
    r.add_argument("--peer", choices=("none", "hf"), default="none")
    r.add_argument("--hf-threads", type=int, default=2)
    r.add_argument("--profile", action="store_true", help="print a per-phase split of step time")
    r.add_argument("--json", default=None, metavar="OUT")
    args = p.parse_args(argv)
    for name in ("input_len", "output_len", "num_iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.output_len < 2:
        p.error("--output-len must be >= 2 (one prefill token plus at least one decode step)")
    return args


def run_once(engine, prompt_ids: list[int], output_len: int, request_id: str) -> dict:
    """One request through the engine, step by step. Returns TTFT, per-step decode times, steps."""
    from jaxllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    t0 = time.perf_counter()
    engine.add_request(request_id, prompt_ids, sp, output_kind="delta")
    ttft = None
    prefill_steps = 0
    decode: list[float] = []
    tokens = 0
    while engine.has_unfinished_requests():
        ts = time.perf_counter()
        outs = engine.step()
        te = time.perf_counter()
        new = sum(len(o.outputs[0].token_ids) for o in outs if o.request_id == request_id)
        if ttft is None:
            prefill_steps += 1
            if new:
                ttft = te - t0
        else:
            if new != 1:
                raise RuntimeError(f"a decode step made {new} tokens, expected 1")
            decode.append(te - ts)
        tokens += new
    if tokens != output_len:
        raise RuntimeError(f"made {tokens} tokens, expected {output_len}")
    return {"ttft_s": ttft, "decode_s": decode, "prefill_steps": prefill_steps, "total_s": te - t0}


def summarize(runs: list[dict]) -> dict:
    ttfts = [r["ttft_s"] for r in runs]
    decode = [d for r in runs for d in r["decode_s"]]
    return {
        "ttft_ms": common.summarize_ms(ttfts),
        "decode_ms_per_token": common.summarize_ms(decode),
        "total_s_mean": statistics.fmean(r["total_s"] for r in runs),
        "decode_tokens_per_s": len(decode) / sum(decode),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    load_before = common.load_average()
    loaded = common.load_model_once(args)
    vocab = loaded.config.vocab_size
    max_model_len = args.max_model_len or args.input_len + args.output_len
    llm = common.make_llm(args, loaded, max_model_len)
    engine = llm.llm_engine
    runner = engine.runner

    prompts = common.random_token_prompts([args.input_len] * (args.num_iters + 1), vocab, args.seed)
    warm = run_once(engine, prompts[0], args.output_len, "warmup")
    comp_warm = runner.num_compilations
    profiler = common.StepProfiler(llm) if args.profile else None
    jax_load = [common.load_average()]
    runs = [run_once(engine, p, args.output_len, f"run-{i}") for i, p in enumerate(prompts[1:])]
    comp_timed = runner.num_compilations - comp_warm
    jax_load.append(common.load_average())
    profile = None
    if profiler is not None:
        profiler.close()
        profile = profiler.summary()
    jax_res = summarize(runs) | {
        "prefill_steps": runs[0]["prefill_steps"],
        "compilations_warmup": comp_warm,
        "compilations_timed": comp_timed,
        "warmup_total_s": warm["total_s"],
        "load_average_before_after": jax_load,
    }

    hf_res, peer_note = None, None
    if args.peer == "hf":
        try:
            hf = common.load_hf_peer(args.model, args.dtype, args.hf_threads)
        except common.PeerUnavailable as e:
            peer_note = str(e)
        else:
            common.hf_latency(hf, prompts[0], min(args.output_len, 8))  # warm-up
            hf_load = [common.load_average()]
            hf_runs = [common.hf_latency(hf, p, args.output_len) for p in prompts[1:]]
            hf_load.append(common.load_average())
            hf_res = summarize(hf_runs) | {"threads": args.hf_threads, "device": str(hf.device),
                                           "method": "timing streamer (gaps between put calls)",
                                           "load_average_before_after": hf_load}

    record = {
        "benchmark": "latency",
        "settings": vars(args) | {"max_model_len_used": max_model_len},
        "engine": common.engine_settings(llm),
        "results": {"jaxllm": jax_res, "hf": hf_res},
        "ratio_decode_ms_per_token": (
            hf_res["decode_ms_per_token"]["mean_ms"] / jax_res["decode_ms_per_token"]["mean_ms"]
            if hf_res else None
        ),
        "peer_note": peer_note,
        "profile": profile,
        "load_average": {"before": load_before, "after": common.load_average()},
        "machine": common.machine_info(),
        "device": common.device_info(),
        "packages": common.package_versions(),
    }
    print_report(record)
    if args.json:
        common.write_json(args.json, record)
    return record


def print_report(rec: dict) -> None:
    s, e = rec["settings"], rec["engine"]
    print(f"\n## Batch-1 latency: {s['model']} ({e['dtype']}), input {s['input_len']} tokens, "
          f"output {s['output_len']} tokens, {s['num_iters']} timed runs\n")
    rows = []
    for name, r in rec["results"].items():
        if r is None:
            continue
        label = "jaxllm" if name == "jaxllm" else f"HF transformers ({r['device']}, {r['threads']} threads)"
        d = r["decode_ms_per_token"]
        comp = (f"{r['compilations_warmup']} warm-up + {r['compilations_timed']} timed"
                if name == "jaxllm" else "-")
        rows.append((label, r["ttft_ms"]["p50_ms"], d["mean_ms"], d["p50_ms"], d["p90_ms"],
                     r["decode_tokens_per_s"], comp))
    print(common.markdown_table(
        ["engine", "prefill (TTFT) ms, median", "decode ms/token mean", "p50", "p90",
         "decode tok/s", "XLA compilations"], rows))
    loads = "; ".join(f"{name}: {r['load_average_before_after'][0][0]} -> "
                      f"{r['load_average_before_after'][1][0]}"
                      for name, r in rec["results"].items() if r)
    print(f"\n1-minute load average before -> after each timed run: {loads}")
    if rec["ratio_decode_ms_per_token"] is not None:
        print(f"\nHF / jaxllm decode time per token: {rec['ratio_decode_ms_per_token']:.2f}x "
              "(> 1: jaxllm is faster)")
    if rec["peer_note"]:
        print(f"\nHF peer skipped: {rec['peer_note']}")
    if rec["profile"]:
        print("\nStep-time split of the timed runs (jaxllm):\n")
        print(common.profile_table(rec["profile"]))
    print(f"\nengine: KV blocks {e['num_blocks']} x {e['block_size']}, max_model_len "
          f"{e['max_model_len']}, attention {e['attention_backend']}; HF decode timing: timing streamer")
    print(common.machine_line(rec))


if __name__ == "__main__":
    main()
