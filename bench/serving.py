"""`jaxllm bench serve` as a script run from the checkout (same flags; see `--help`): streaming
/v1/completions requests against a running OpenAI-compatible server.

The benchmark itself is `jaxllm.benchmarks.serving` (installed with the package); its names are
re-exported here for code that imports this file as `serving`."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

from jaxllm.benchmarks.serving import (  # noqa: E402,F401
    PERCENTILES,
    BenchConfig,
    RequestRecord,
    add_args,
    benchmark,
    config_from_args,
    format_results,
    main,
    make_workload,
    parse_args,
    parse_range,
    percentile,
    run,
    summarize,
)

if __name__ == "__main__":
    sys.exit(main())
