"""`jaxllm sweep configs/sweeps/NAME.yaml [--out DIR] [--dry-run] [--no-retry-failed]`.

Exit status: 0 when every point finished, 1 when some failed (their errors are in the results),
2 for a bad sweep file.
"""

from __future__ import annotations

import argparse
import os
import shlex

from jaxllm.entrypoints.cli_args import CLIError

__all__ = ["add_sweep_subcommand", "run_sweep"]


def add_sweep_subcommand(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `sweep` to the `jaxllm` parser."""
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sp = subs.add_parser(
        "sweep",
        help="run a grid of benchmark settings from a YAML file",
        description="Run every point of a sweep file in its own process; write "
        "results.jsonl, results.csv, summary.md and plots/*.png.",
        allow_abbrev=False,
    )
    sp.add_argument(
        "sweep_file", metavar="FILE.yaml", help="the sweep file (configs/sweeps/*.yaml)"
    )
    sp.add_argument(
        "--out",
        metavar="DIR",
        help="results folder (default: sweep_results/<sweep name>); a rerun into the "
        "same folder skips the points that finished",
    )
    sp.add_argument(
        "--no-retry-failed",
        action="store_true",
        help="on a rerun, keep earlier failures instead of running them again",
    )
    sp.add_argument("--no-plots", action="store_true", help="write the tables only")
    sp.add_argument("--dry-run", action="store_true", help="list the points and their commands")
    return sp


def run_sweep(args: argparse.Namespace) -> int:
    from jaxllm.sweep.runner import point_command
    from jaxllm.sweep.runner import run_sweep as run
    from jaxllm.sweep.spec import load_sweep

    try:
        spec = load_sweep(args.sweep_file)
    except ValueError as e:
        raise CLIError(str(e)) from None
    out = args.out or os.path.join("sweep_results", spec.name)
    if args.dry_run:
        print(f"sweep {spec.name}: {len(spec.points)} points -> {out}")
        for p in spec.points:
            json_path = os.path.join(out, "points", p.point_id + ".json")
            print(f"{p.point_id}: {shlex.join(point_command(p, json_path, 'python'))}")
        return 0
    result = run(spec, out, retry_failed=not args.no_retry_failed, plots=not args.no_plots)
    for what, path in result.files.items():
        print(f"  {what}: {path}")
    return 1 if result.num_failed else 0
