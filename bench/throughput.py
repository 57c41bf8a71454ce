"""`jaxllm bench throughput` as a script run from the checkout (same flags; see `--help`).

The benchmark itself is `jaxllm.benchmarks.throughput` (installed with the package)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

from jaxllm.benchmarks.throughput import main  # noqa: E402

if __name__ == "__main__":
    main()
