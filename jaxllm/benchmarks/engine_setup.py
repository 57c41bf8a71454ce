"""Engine flags of the benchmarks and the engine they build.

The flags are the `jaxllm` CLI's own (`cli_args.add_engine_args`: every `LLM(...)` keyword), with
benchmark defaults (float32, `--max-num-seqs 256`, `--seed 0`) and one alias kept from the first
bench scripts: `--no-prefix-caching` = `--no-enable-prefix-caching`. `--seed` seeds both the
engine and the random prompts. The model is loaded once (`load_model_once`) so the workload can
use its vocabulary and tokenizer before the engine is built (`make_llm`).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from jaxllm.entrypoints.cli_args import DEFAULT_MODEL, add_engine_args, split_kwargs

__all__ = [
    "BENCH_ENGINE_DEFAULTS",
    "add_bench_engine_args",
    "engine_kwargs",
    "load_model_once",
    "make_llm",
    "precompile_greedy",
    "engine_settings",
    "release_device_memory",
]

BENCH_ENGINE_DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "dtype": "float32",
    "max_num_seqs": 256,
    "seed": 0,
}


def add_bench_engine_args(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Every engine flag of the CLI, with benchmark defaults (overridable by `defaults`)."""
    add_engine_args(parser)
    parser.add_argument(
        "--no-prefix-caching",
        dest="enable_prefix_caching",
        action="store_false",
        default=None,
        help="same as --no-enable-prefix-caching",
    )
    parser.set_defaults(**(BENCH_ENGINE_DEFAULTS | defaults))


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`LLM(...)` keywords of the engine flags that are set (None: the engine's default)."""
    engine, _, _ = split_kwargs({k: v for k, v in vars(args).items() if v is not None})
    return engine


def load_model_once(args: argparse.Namespace):
    """jaxllm's LoadedModel for `--model` (loaded once, shared by the engine)."""
    from jaxllm.model_loader import load_model

    kw = engine_kwargs(args)
    tp = kw.get("tensor_parallel_size") or 1
    dp = kw.get("data_parallel_size") or 1
    mesh = None
    if tp > 1 and dp == 1:  # weights straight into their shards (dp builds its own replicas)
        from jaxllm.parallel import make_mesh

        mesh = make_mesh(tp)
    return load_model(
        kw["model"],
        dtype=kw.get("dtype", "auto"),
        mesh=mesh,
        revision=kw.get("revision"),
        quantization=kw.get("quantization"),
        enable_expert_parallel=bool(kw.get("enable_expert_parallel")),
    )


def make_llm(args: argparse.Namespace, loaded, max_model_len: int, **overrides: Any):
    """The engine over `loaded` with every engine flag; `--max-model-len` wins over the
    workload's `max_model_len`; `overrides` win over the flags."""
    from jaxllm import LLM

    kw = engine_kwargs(args) | overrides
    kw.pop("model")
    kw.pop("revision", None)  # `loaded` is the model at that revision already
    kw.pop("quantization", None)  # and in that quantization
    kw.pop("enable_expert_parallel", None)  # and laid out for it
    kw.pop("precompile", None)  # `precompile_greedy` does it, for greedy only, timed
    kw.setdefault("max_model_len", max_model_len)
    if getattr(args, "profile", False) and kw.get("async_scheduling") is None:
        kw["async_scheduling"] = False  # --profile times each step to completion (profiler.py)
    return LLM(loaded, **kw)


def precompile_greedy(args: argparse.Namespace, llm) -> dict | None:
    """With `--precompile`: compile every padded step shape for greedy sampling (what the
    benchmarks run) before timing; returns {"shapes", "seconds"} (None without the flag)."""
    if not getattr(args, "precompile", None):
        return None
    from jaxllm import SamplingParams

    # the runner logs one line a compiled shape: show them (stderr) unless logging is set up
    log = logging.getLogger("jaxllm.engine.model_runner")
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)

    t0 = time.perf_counter()
    n = llm.llm_engine.precompile([SamplingParams(temperature=0.0)])
    return {"shapes": n, "seconds": time.perf_counter() - t0}


def engine_settings(llm) -> dict:
    """What the engine actually runs with (after its defaults)."""
    cfg = llm.llm_engine.config
    runner = llm.llm_engine.runner
    return {
        "max_num_seqs": cfg.scheduler.max_num_seqs,
        "max_num_batched_tokens": cfg.scheduler.max_num_batched_tokens,
        "max_model_len": cfg.scheduler.max_model_len,
        "block_size": cfg.cache.block_size,
        "num_blocks": runner.num_blocks,
        "enable_prefix_caching": cfg.cache.enable_prefix_caching,
        "kv_cache_dtype": str(runner.kv_dtype),
        "attention_backend": runner.backend,
        "dtype": cfg.model.dtype,
        "tensor_parallel_size": cfg.parallel.tensor_parallel_size,
        "async_scheduling": cfg.scheduler.async_scheduling,
        "speculative_config": _as_dict(getattr(llm.llm_engine, "speculative_config", None)),
    }


def _as_dict(config: Any) -> dict | None:
    import dataclasses

    return None if config is None else dataclasses.asdict(config)


def release_device_memory() -> bool:
    """Give the GPU memory JAX holds back to the driver, so a peer (torch) on the same card can
    use it: call after every engine object is gone. JAX keeps a preallocated pool (75% of the
    card by default) until its backend is torn down; on the CPU nothing is done. Returns whether
    the backend was cleared. After this, touching JAX starts a fresh backend (and its pool)."""
    import gc

    import jax

    if jax.default_backend() != "gpu":
        return False
    gc.collect()
    jax.clear_caches()
    try:
        from jax.extend.backend import clear_backends
    except ImportError:  # older JAX
        return False
    clear_backends()
    gc.collect()
    return True
