"""`jaxllm sweep FILE.yaml`: a grid (or list) of engine settings and workloads, each point run in
its own process, results as JSONL, CSV, a Markdown summary and PNG plots.

- `spec`: the sweep file format and its expansion into points;
- `runner`: one subprocess per point, failures recorded, finished points skipped on a rerun;
- `report`: rows, results.jsonl / results.csv / summary.md; `plots`: PNG plots;
- `cli`: the `jaxllm sweep` subcommand.
"""

from jaxllm.sweep.runner import SweepRun, run_sweep
from jaxllm.sweep.spec import SweepPoint, SweepSpec, load_sweep, parse_sweep

__all__ = ["SweepPoint", "SweepRun", "SweepSpec", "load_sweep", "parse_sweep", "run_sweep"]
