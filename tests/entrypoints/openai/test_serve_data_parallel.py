"""`jaxllm serve -dp 2 --async-scheduling`: two engine replicas (one virtual CPU device each),
each scheduling its next step while one is in flight, behind one server.

The server runs in a subprocess with two virtual devices; concurrent greedy completions must equal
an offline single-engine synchronous `LLM` on the same model, and /metrics counts both replicas' KV
blocks."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")

from jaxllm import LLM, SamplingParams  # noqa: E402
from jaxllm.process_lifetime import kill_with_parent  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time", "Water boils at"]
BLOCKS = 32  # per replica
NEW = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dp_server(smollm2_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXLLM_")}
    env.update(
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        JAXLLM_COMPILATION_CACHE_DIR=os.environ.get("JAXLLM_COMPILATION_CACHE_DIR", "off"),
    )
    argv = [
        sys.executable, "-m", "jaxllm", "serve", "smollm2-135m", "-dp", "2", "--port", str(port),
        "--max-model-len", "128", "--max-num-seqs", "4", "--max-num-batched-tokens", "64",
        "--num-gpu-blocks", str(BLOCKS), "--no-access-log", "--async-scheduling",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=kill_with_parent,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"jaxllm serve -dp 2 exited with {proc.returncode}:\n{proc.stdout.read()}"
                )
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("jaxllm serve -dp 2 did not become healthy in 240 s")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_dp_server_completions_equal_single_engine(dp_server, smollm2):
    def complete(prompt):
        body = {"model": "smollm2-135m", "prompt": prompt, "max_tokens": NEW, "temperature": 0}
        r = httpx.post(dp_server + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # at once: both replicas get requests
        got = list(pool.map(complete, PROMPTS))
    llm = LLM(smollm2, max_model_len=128, max_num_seqs=4, max_num_batched_tokens=64)
    sp = SamplingParams(temperature=0.0, max_tokens=NEW)
    want = [o.outputs[0].text for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
    assert got == want

    metrics = httpx.get(dp_server + "/metrics", timeout=10).text
    m = re.search(r"^jaxllm:num_gpu_blocks\{[^}]*\} (\S+)$", metrics, re.M)
    assert m and float(m.group(1)) == 2 * (BLOCKS - 1)  # usable blocks of both replicas
