"""`jaxllm bench throughput|latency|serve ...`: the benchmarks as subcommands of the `jaxllm` CLI.

Each takes the flags of its module (`jaxllm bench throughput --help`); `--json OUT` writes the
result record. Bad flags raise CLIError (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import argparse

from jaxllm.entrypoints.cli_args import CLIError

__all__ = ["BENCHES", "add_bench_subcommand", "run_bench"]

BENCHES = ("throughput", "latency", "serve")


def _module(name: str):
    if name == "throughput":
        from jaxllm.benchmarks import throughput as mod
    elif name == "latency":
        from jaxllm.benchmarks import latency as mod
    elif name == "serve":
        from jaxllm.benchmarks import serving as mod
    else:
        raise CLIError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHES)}")
    return mod


def add_bench_subcommand(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `bench` (with its three subcommands) to the `jaxllm` parser."""
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bench = subs.add_parser(
        "bench",
        help="benchmark the engine (throughput, latency, serve)",
        description="Benchmark the engine; see `jaxllm bench NAME --help`.",
        allow_abbrev=False,
    )
    bsubs = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    helps = {
        "throughput": "offline throughput of N requests through LLM.generate",
        "latency": "prefill time and decode time per token of a batch (default 1)",
        "serve": "streaming requests against a running OpenAI-compatible server",
    }
    for name in BENCHES:
        mod = _module(name)
        sp = bsubs.add_parser(
            name,
            help=helps[name],
            description=mod.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        mod.add_args(sp)
    return bench


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark `args.bench_command` names; returns the exit status."""
    name = getattr(args, "bench_command", None)
    if name is None:
        raise CLIError(f"name a benchmark: jaxllm bench {{{','.join(BENCHES)}}} ...")
    mod = _module(name)
    if name == "serve":
        try:
            cfg = mod.config_from_args(args)
        except ValueError as e:
            raise CLIError(str(e)) from None
        res = mod.run(cfg, args.json)
        return 0 if res["failed"] == 0 else 1
    try:
        mod.check_args(args)
    except ValueError as e:
        raise CLIError(str(e)) from None
    try:
        record = mod.run(args)
    except (ValueError, FileNotFoundError) as e:  # bad settings, missing model or dataset
        raise CLIError(f"cannot run the benchmark: {e}") from None
    mod.print_report(record)
    return 0
