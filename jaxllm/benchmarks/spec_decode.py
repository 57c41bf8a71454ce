"""Speculative decoding at batch 1: greedy decode with n-gram (prompt lookup) drafts against the
same engine flags without speculation, in one run, on two workloads:

- `repetitive`: a chat prompt that gives a short Python file and asks for it back with one
  function renamed; the answer copies long runs of the prompt, which prompt lookup finds;
- `random`: random token ids, as many as the repetitive prompt has: the prompt offers nothing to
  look up, so drafts come only from the output repeating itself (a small model's greedy
  continuation of noise soon loops, and then prompt lookup drafts it well).

Both engines live side by side (on one loaded model, each with a KV cache for one sequence).
Each (workload, engine) pair first runs once untimed, which compiles its step shapes (a
speculative step verifies 1 + d tokens of one request: shapes a plain decode never makes), then
`--num-iters` timed runs alternate between the two engines. A run is one request of
`--output-len` tokens (greedy, ignore_eos), driven step by step:
  - output tok/s: output tokens / (first step's start to the last step's end);
  - decode ms/token: (last token time - first token time) / (tokens - 1): prefill left out;
  - acceptance rate: accepted draft tokens / draft tokens proposed;
  - accepted per verification: accepted draft tokens per step that verified drafts (vLLM's "mean
    acceptance length" is this plus one, the token the target adds);
  - tokens per decode step: output tokens after the first / steps after the first, and ms per
    decode step (what verifying 1 + d tokens costs against one token);
  - equal: the speculative engine's tokens are the plain engine's (greedy: they must be).

`--num-speculative-tokens` (k, default 4) and `--prompt-lookup-min/max` build the n-gram config;
`--speculative-config JSON` replaces it (e.g. a draft model). Every other engine flag of
`jaxllm bench` applies to both engines (defaults here: float32, prefix caching off, one sequence).

    python -m jaxllm.benchmarks.spec_decode --output-len 128 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from jaxllm.benchmarks import common
from jaxllm.benchmarks.datasets import random_token_prompts
from jaxllm.benchmarks.engine_setup import (
    add_bench_engine_args,
    engine_settings,
    load_model_once,
    make_llm,
)
from jaxllm.entrypoints.strict_parser import script_parser

__all__ = ["WORKLOADS", "add_args", "check_args", "main", "print_report", "run"]

WORKLOADS = ("repetitive", "random")
ENGINES = ("plain", "speculative")

# The file the repetitive workload asks the model to copy with one name changed.
CODE_FILE = '''import math


def mean(values):
    """The arithmetic mean of a non-empty list of numbers."""
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


def variance(values):
    """The population variance of a non-empty list of numbers."""
    mu = mean(values)
    total = 0.0
    for value in values:
        total += (value - mu) ** 2
    return total / len(values)


def std_dev(values):
    """The population standard deviation of a non-empty list of numbers."""
    return math.sqrt(variance(values))


def normalize(values):
    """The values shifted to mean 0 and scaled to standard deviation 1."""
    mu = mean(values)
    sigma = std_dev(values)
    return [(value - mu) / sigma for value in values]
'''
EDIT_REQUEST = (
    "Here is a Python file:\n\n```python\n{code}```\n\nRewrite the whole file with the function "
    "`mean` renamed to `average`. Reply with the code only."
)


def add_args(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload")
    w.add_argument("--output-len", type=int, default=128, help="tokens per request (default 128)")
    w.add_argument(
        "--num-iters", type=int, default=2, help="timed runs per workload and engine (default 2)"
    )
    w.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: both)",
    )
    s = p.add_argument_group("speculation")
    s.add_argument(
        "--num-speculative-tokens",
        "-k",
        type=int,
        default=4,
        help="n-gram drafts per step (default 4)",
    )
    s.add_argument("--prompt-lookup-min", type=int, help="shortest n-gram looked up (default 1)")
    s.add_argument("--prompt-lookup-max", type=int, help="longest n-gram looked up (default 5)")
    add_bench_engine_args(p, max_num_seqs=1, enable_prefix_caching=False)
    p.add_argument("--json", default=None, metavar="OUT", help="write the result record here")


def _workloads(args: argparse.Namespace) -> list[str]:
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in names if w not in WORKLOADS]
    if bad or not names:
        raise ValueError(f"--workloads: unknown {bad or names}; choose from {', '.join(WORKLOADS)}")
    return names


def speculative_config(args: argparse.Namespace) -> dict:
    """The speculative engine's config: `--speculative-config` if given, else n-gram drafts."""
    if args.speculative_config is not None:
        return dict(args.speculative_config)
    out = {"method": "ngram", "num_speculative_tokens": args.num_speculative_tokens}
    for key in ("prompt_lookup_min", "prompt_lookup_max"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming the first bad flag."""
    from jaxllm.spec_decode import SpeculativeConfig

    if args.output_len < 2:
        raise ValueError(f"--output-len must be >= 2, got {args.output_len}")
    if args.num_iters < 1:
        raise ValueError(f"--num-iters must be >= 1, got {args.num_iters}")
    _workloads(args)
    if args.async_scheduling:
        raise ValueError(
            "--async-scheduling: speculative decoding schedules synchronously, and both engines "
            "must schedule alike to be compared"
        )
    try:
        SpeculativeConfig.from_value(speculative_config(args))
    except ValueError as e:
        raise ValueError(f"speculative settings: {e}") from None


def _repetitive_prompt(tokenizer) -> list[int]:
    if tokenizer is None:
        raise ValueError("the repetitive workload needs a model with a tokenizer")
    msgs = [{"role": "user", "content": EDIT_REQUEST.format(code=CODE_FILE)}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


def _prompts(names: list[str], loaded, seed: int) -> dict[str, list[int]]:
    """Token ids of each workload's prompt (random: as long as the repetitive prompt, or 256
    tokens for a model without a tokenizer)."""
    out = {}
    if "repetitive" in names or loaded.tokenizer is not None:
        out["repetitive"] = _repetitive_prompt(loaded.tokenizer)
    length = len(out["repetitive"]) if out else 256
    out["random"] = random_token_prompts([length], loaded.config.vocab_size, seed)[0]
    return {name: out[name] for name in names}


def run_once(engine, prompt: list[int], output_len: int, tag: str) -> dict:
    """One request through `engine`, step by step: its tokens, times, steps and draft counters."""
    from jaxllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    spec0 = copy.deepcopy(engine.spec_stats)
    t0 = time.perf_counter()
    engine.add_request(tag, prompt, sp)
    steps, first, final = 0, None, None
    while engine.has_unfinished_requests():
        outs = engine.step()
        steps += 1
        for o in outs:
            if o.request_id == tag and o.outputs[0].token_ids:
                if first is None:
                    first = (time.perf_counter(), steps)
                final = o
    t_end = time.perf_counter()
    assert final is not None and first is not None
    tokens = list(final.outputs[0].token_ids)
    if len(tokens) != output_len:
        raise RuntimeError(f"made {len(tokens)} tokens, expected {output_len}")
    spec = engine.spec_stats
    m = final.metrics
    return {
        "token_ids": tokens,
        "total_s": t_end - t0,
        "decode_s": m.last_token_time - m.first_token_time,
        "decode_steps": steps - first[1],
        "num_drafts": spec.num_drafts - spec0.num_drafts,
        "num_draft_tokens": spec.num_draft_tokens - spec0.num_draft_tokens,
        "num_accepted_tokens": spec.num_accepted_tokens - spec0.num_accepted_tokens,
    }


def _summarize(runs: list[dict], output_len: int) -> dict:
    drafts = sum(r["num_drafts"] for r in runs)
    draft_tokens = sum(r["num_draft_tokens"] for r in runs)
    accepted = sum(r["num_accepted_tokens"] for r in runs)
    return {
        "output_tok_s": statistics.fmean(output_len / r["total_s"] for r in runs),
        "decode_ms_per_token": statistics.fmean(
            r["decode_s"] / (output_len - 1) * 1e3 for r in runs
        ),
        "acceptance_rate": accepted / draft_tokens if draft_tokens else None,
        "accepted_per_verification": accepted / drafts if drafts else None,
        "tokens_per_decode_step": sum(output_len - 1 for _ in runs)
        / sum(r["decode_steps"] for r in runs),
        "decode_ms_per_step": sum(r["decode_s"] for r in runs)
        / sum(r["decode_steps"] for r in runs)
        * 1e3,
        "num_drafts": drafts,
        "num_draft_tokens": draft_tokens,
        "num_accepted_tokens": accepted,
        "runs": len(runs),
    }


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark of parsed `args`; returns the result record (also written to --json)."""
    check_args(args)
    load_before = common.load_average()
    names = _workloads(args)
    loaded = load_model_once(args)
    prompts = _prompts(names, loaded, args.seed)
    spec = speculative_config(args)
    k = int(spec["num_speculative_tokens"])
    max_model_len = max(len(p) for p in prompts.values()) + args.output_len + k + 1
    if args.num_gpu_blocks is None:  # one sequence's blocks: both engines fit side by side
        bs = args.block_size or 16
        args.num_gpu_blocks = -(-max_model_len // bs) + 2
    llms = {}
    for name, value in (("plain", None), ("speculative", spec)):
        a = copy.copy(args)
        a.speculative_config = value
        llms[name] = make_llm(a, loaded, max_model_len)
    engines = {name: llm.llm_engine for name, llm in llms.items()}

    t_start = time.perf_counter()
    compiles = {n: e.runner.num_compilations for n, e in engines.items()}
    for w in names:  # untimed: every step shape of both engines compiles here
        for n in ENGINES:
            run_once(engines[n], prompts[w], args.output_len, f"warm-{w}-{n}")
    compiles_warm = {n: e.runner.num_compilations - compiles[n] for n, e in engines.items()}
    warmup_s = time.perf_counter() - t_start

    jax_load = [common.load_average()]
    runs: dict[tuple[str, str], list[dict]] = {(w, n): [] for w in names for n in ENGINES}
    for w in names:
        for i in range(args.num_iters):
            for n in ENGINES:  # alternating, so a change of the machine's load hits both
                runs[w, n].append(run_once(engines[n], prompts[w], args.output_len, f"{w}-{n}-{i}"))
    jax_load.append(common.load_average())
    compiles_timed = {
        n: e.runner.num_compilations - compiles[n] - compiles_warm[n] for n, e in engines.items()
    }

    results = []
    for w in names:
        plain_tokens = runs[w, "plain"][0]["token_ids"]
        for n in ENGINES:
            results.append(
                {"workload": w, "engine": n}
                | _summarize(runs[w, n], args.output_len)
                | {"equal_to_plain": all(r["token_ids"] == plain_tokens for r in runs[w, n])}
            )
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    rec = {
        "settings": settings,
        "speculative_config": spec,
        "prompt_lens": {w: len(p) for w, p in prompts.items()},
        "engine": {n: engine_settings(llm) for n, llm in llms.items()},
        "results": results,
        "compilations_warmup": compiles_warm,
        "compilations_timed": compiles_timed,
        "warmup_s": warmup_s,
        "load_average_timed_before_after": jax_load,
    } | common.environment_record(load_before)
    if args.json:
        common.write_json(args.json, rec)
    return rec


def print_report(rec: dict) -> None:
    s = rec["settings"]
    print(
        f"{s['model']} ({s['dtype']}), batch 1, greedy, {s['output_len']} tokens a request, "
        f"{s['num_iters']} timed runs each; prompts {rec['prompt_lens']} tokens; speculative "
        f"config {rec['speculative_config']}"
    )
    rows = [
        [
            r["workload"],
            r["engine"],
            r["output_tok_s"],
            r["decode_ms_per_token"],
            r["acceptance_rate"],
            r["accepted_per_verification"],
            r["tokens_per_decode_step"],
            r["decode_ms_per_step"],
            "yes" if r["equal_to_plain"] else "NO",
        ]
        for r in rec["results"]
    ]
    headers = [
        "workload",
        "engine",
        "output tok/s",
        "decode ms/token",
        "acceptance rate",
        "accepted / verification",
        "tokens / decode step",
        "ms / decode step",
        "equal to plain",
    ]
    print(common.markdown_table(headers, rows))
    print(common.engine_line(rec["engine"]["speculative"]))
    print(
        f"compilations (warm-up, timed): {rec['compilations_warmup']}, "
        f"{rec['compilations_timed']}; load (1 min) over the timed runs "
        f"{rec['load_average_timed_before_after']}"
    )
    print(common.machine_line(rec))


def main(argv: list[str] | None = None) -> dict:
    p = script_parser(__doc__)
    p.prog = "python -m jaxllm.benchmarks.spec_decode"
    add_args(p)
    args = p.parse_args(argv)
    try:
        check_args(args)
    except ValueError as e:
        p.error(str(e))
    rec = run(args)
    print_report(rec)
    return rec


if __name__ == "__main__":
    main()
