"""Manual check (issue 8): a two-process `jaxllm serve` (-tp 2 across processes, asynchronous
scheduling, CPU, gloo collectives) survives an idle period longer than jax.distributed's 100 s
heartbeat timeout: process 1 waits in its broadcast the whole time, the server answers before and
after, and both processes exit 0 on SIGINT. Too slow for the test suite (it idles).

    .venv/bin/python scripts/multihost_idle_check.py [IDLE_SECONDS=150]

Measured 2026-11-28: 200 s idle, both answers 200, exit codes [0, 0].
"""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGS = os.environ.get("TMPDIR", "/tmp")


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


IDLE = float(sys.argv[1]) if len(sys.argv) > 1 else 150
p = port()
argv = [
    "serve",
    "dummy:tiny",
    "-tp",
    "2",
    "--max-model-len",
    "128",
    "--max-num-seqs",
    "8",
    "--num-gpu-blocks",
    "64",
    "--port",
    str(p),
    "--no-access-log",
    "--async-scheduling",
    "--coordinator-address",
    f"127.0.0.1:{port()}",
    "--num-processes",
    "2",
]
procs = []
for i in range(2):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXLLM_")}
    env.update(
        PYTHONPATH=ROOT,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        JAXLLM_COMPILATION_CACHE_DIR="off",
        JAXLLM_PROCESS_ID=str(i),
    )
    procs.append(
        subprocess.Popen(
            [f"{ROOT}/.venv/bin/python", "-m", "jaxllm", *argv],
            cwd=ROOT,
            env=env,
            stdout=open(os.path.join(LOGS, f"multihost_idle_{i}.log"), "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
    )
url = f"http://127.0.0.1:{p}"
t0 = time.time()
while True:
    assert all(x.poll() is None for x in procs), [x.poll() for x in procs]
    try:
        if httpx.get(url + "/health", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(1)
print("up after", round(time.time() - t0), "s", flush=True)
body = {
    "model": "dummy:tiny",
    "prompt": [5, 6, 7, 8],
    "max_tokens": 6,
    "temperature": 0,
    "ignore_eos": True,
}


def ask():
    r = httpx.post(url + "/v1/completions", json=body, timeout=120)
    return r.status_code, r.text[:200]


print("first", ask(), flush=True)
time.sleep(IDLE)
print("alive after idle:", [x.poll() for x in procs], flush=True)
print("second", ask(), flush=True)
procs[0].send_signal(signal.SIGINT)
for x in procs:
    try:
        x.wait(timeout=60)
    except subprocess.TimeoutExpired:
        x.kill()
print("exit codes", [x.returncode for x in procs], flush=True)
