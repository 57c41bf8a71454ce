"""The verify step's cost as a function of k: what speculative decoding can gain at most.

One engine with speculation on; a proposer that drafts k random tokens for every decoding request
(the target almost never accepts them, so each step still emits one token a request, but computes
1 + k tokens a request and samples after each). For k = 0 (no drafts), then each `--k`, at batch
`--batch-size`, the mean decode step time is measured after a warm-up of the same shapes. The
ceiling is the throughput if every draft were accepted: (1 + k) tokens a request per step.

    python -m jaxllm.benchmarks.spec_verify --model dummy:llama-3-8b --dtype bfloat16 \\
        --batch-size 1 16 --k 1 2 4 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from jaxllm.benchmarks import common
from jaxllm.benchmarks.datasets import random_token_prompts
from jaxllm.benchmarks.engine_setup import add_bench_engine_args, load_model_once, make_llm


class RandomDrafts:
    """Proposes `k` uniformly random draft tokens (at most the room) for every request."""

    num_lookahead_tokens = 0

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        self.k = 0
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(seed)

    def propose(self, sched, requests):
        return {
            r.request_id: self.rng.integers(0, self.vocab_size, min(self.k, room)).tolist()
            for r, room in requests
        }

    def apply_block_ops(self, sched) -> None:
        pass


def decode_steps(engine, prompts: list[list[int]], output_len: int, tag: str) -> list[float]:
    """Seconds of each step after every request has its first token."""
    from jaxllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", p, sp)
    started = False
    times = []
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        engine.step()
        if started:
            times.append(time.perf_counter() - t)
        started = all(r.num_output_tokens > 0 for r in engine.scheduler.running) and bool(
            engine.scheduler.running
        )
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m jaxllm.benchmarks.spec_verify",
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
    )
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 16])
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--json", default=None, metavar="OUT")
    add_bench_engine_args(p, max_num_seqs=None)
    args = p.parse_args(argv)
    if args.max_num_seqs is None:
        args.max_num_seqs = max(args.batch_size)
    loaded = load_model_once(args)
    llm = make_llm(
        args,
        loaded,
        args.input_len + args.output_len + max(args.k) + 8,
        speculative_config={"method": "ngram", "num_speculative_tokens": max(args.k)},
    )
    engine = llm.llm_engine
    drafts = RandomDrafts(loaded.config.vocab_size, args.seed)
    engine.proposer = drafts
    rows = []
    for b in args.batch_size:
        base_ms = None
        for k in [0, *args.k]:
            drafts.k = k
            prompts = random_token_prompts([args.input_len] * b, loaded.config.vocab_size, k)
            decode_steps(engine, prompts, args.output_len, f"warm-{b}-{k}")
            times = decode_steps(engine, prompts, args.output_len, f"run-{b}-{k}")
            ms = statistics.fmean(times) * 1e3
            base_ms = base_ms or ms
            rows.append(
                {
                    "batch": b,
                    "k": k,
                    "step_ms": ms,
                    "vs_k0": ms / base_ms,
                    "ceiling_tok_s": b * (k + 1) / ms * 1e3,
                    "ceiling_speedup": (k + 1) * base_ms / ms,
                }
            )
    print(f"{args.model} ({args.dtype}), {args.input_len}-token prompts, greedy")
    print("| batch | k | verify step ms | vs k=0 | tok/s if all accepted | ceiling speedup |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['batch']} | {r['k']} | {r['step_ms']:.2f} | {r['vs_k0']:.2f}x | "
            f"{r['ceiling_tok_s']:.0f} | {r['ceiling_speedup']:.2f}x |"
        )
    m, d = common.machine_info(), common.device_info()
    print(f"machine: {m['cpu_model']} ({m['cpus_usable']} cores usable), device {d['device_kind']}")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
