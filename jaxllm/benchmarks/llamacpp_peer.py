"""The llama.cpp peer (`--peer llamacpp`): the same GGUF file through `llama-cpp-python` on the
CPU, timed token by token.

`llama-cpp-python` builds llama.cpp from source when it installs (`bash scripts/setup.sh
--bench-cpu`, a few minutes); it is not a dependency of jaxllm itself. The model must be a GGUF
file (or a built-in name): llama.cpp reads nothing else. One prompt at a time (batch 1): llama.cpp's
`generate` runs one sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from jaxllm.benchmarks.hf_peer import PeerUnavailable


def load_llamacpp_peer(model: str, threads: int, n_ctx: int):
    """`llama_cpp.Llama` over `model`'s GGUF file with `threads` threads (prompt and decode)."""
    from jaxllm.model_loader import resolve_model

    fmt, path = resolve_model(model)
    if fmt != "gguf":
        raise PeerUnavailable(f"{model}: llama.cpp reads GGUF files only (this model is {fmt})")
    try:
        import llama_cpp
    except ImportError as e:
        raise PeerUnavailable(
            f"llama-cpp-python is not installed ({e}); bash scripts/setup.sh --bench-cpu"
        ) from e
    return llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def llamacpp_latency(llm, prompt: Sequence[int], output_len: int) -> dict:
    """Greedy generation of `output_len` tokens after `prompt` (the cache reset first): the time
    to the first token, and the gap before each later one (one decode step each)."""
    times = []
    t0 = time.perf_counter()
    for _token in llm.generate(list(prompt), temp=0.0, top_k=1, reset=True):
        times.append(time.perf_counter())
        if len(times) == output_len:
            break
    if len(times) != output_len:
        raise RuntimeError(f"llama.cpp stopped after {len(times)} of {output_len} tokens")
    return {
        "ttft_s": times[0] - t0,
        "decode_s": [b - a for a, b in zip(times[:-1], times[1:])],
        "total_s": times[-1] - t0,
    }
