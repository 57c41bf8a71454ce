"""Compatibility shim: the shared benchmark pieces live in the installed package `jaxllm.benchmarks`
(common: machine/device/packages, statistics, tables; datasets: workloads; engine_setup: engine
flags and the engine; profiler: StepProfiler; hf_peer: the HF transformers peer). Scripts that did
`import common` from bench/ keep working through these re-exports."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

from jaxllm.benchmarks.common import *  # noqa: E402,F401,F403
from jaxllm.benchmarks.datasets import *  # noqa: E402,F401,F403
from jaxllm.benchmarks.engine_setup import (  # noqa: E402,F401
    add_bench_engine_args as add_engine_args,
)
from jaxllm.benchmarks.hf_peer import PeerUnavailable, hf_generate, hf_latency, load_hf_peer  # noqa: E402,F401
from jaxllm.benchmarks.profiler import PHASES, STEP_KINDS, StepProfiler, profile_table  # noqa: E402,F401
