"""Admission and shutdown of `jaxllm serve` (issue 27, defects 3 and 4), on `dummy:tiny` (random
weights of a two-layer model: steps take milliseconds, so the costs here are process starts and
a few compilations).

- The waiting bound counts a request's own sequences (prompts x n) and holds exactly (at the bound
  admitted, one over refused: 503 + Retry-After, or 400 when the request alone is over it), and a
  refused request is never tokenized (in-process server, a counting tokenizer).
- SIGTERM drains (real `jaxllm serve` processes, started together): with `--shutdown-timeout 2`
  the streams end with a `finish_reason` "abort" chunk and `[DONE]` and the process exits 0
  within 3 s; with a long timeout /health and new requests answer 503 while the streams go on,
  and a second SIGTERM ends the process at once.
- A dead engine ends the process with status 1 (`--exit-on-engine-error`), or leaves it up
  answering 503 (`--no-exit-on-engine-error`): the in-process `ServeServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from jaxllm.entrypoints.cli_args import CLIError  # noqa: E402
from jaxllm.entrypoints.openai.api_server import (  # noqa: E402
    Server,
    ServeServer,
    build_app,
    build_llm,
)
from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser  # noqa: E402
from jaxllm.process_lifetime import kill_with_parent  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MODEL = "dummy:tiny"
PROMPT_IDS = [1, 17, 42, 99, 7]
# in-process: 2 sequences run at once
ENGINE_ARGV = [
    "--max-model-len", "2048", "--max-num-seqs", "2", "--num-gpu-blocks", "300",
    "--block-size", "16", "--max-num-batched-tokens", "64",
]  # fmt: skip
# the `jaxllm serve` processes: streams of a prompt over half the context, so every decode step
# has the same block-table width (one compiled shape once all sequences run) and ~1,000 steps of
# 32 sequences take several seconds
SERVE_ARGV = [
    "--max-model-len", "2048", "--max-num-seqs", "32", "--num-gpu-blocks", "400",
    "--block-size", "128", "--max-num-batched-tokens", "2048",
]  # fmt: skip
LONG_PROMPT_IDS = [3 + (i * 7) % 500 for i in range(1030)]


def _opts(*argv: str):
    return resolve_serve_args(serve_parser().parse_args([MODEL, *argv]))


def test_serve_options_shutdown_and_engine_error():
    opts = _opts()
    assert (opts.shutdown_timeout, opts.exit_on_engine_error) == (0.0, True)
    opts = _opts("--shutdown-timeout", "2.5", "--no-exit-on-engine-error")
    assert (opts.shutdown_timeout, opts.exit_on_engine_error) == (2.5, False)
    with pytest.raises(CLIError, match="--shutdown-timeout"):
        _opts("--shutdown-timeout", "-1")


# ---------------------------------------------------------------------------- in-process server


class CountingTokenizer:
    """Stands in for the tokenizer the dummy model lacks; counts every encode."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.calls += 1
        return [3 + ord(c) % 400 for c in text] or [3]

    def decode(self, ids, **kwargs) -> str:
        return ""


@pytest.fixture(scope="module")
def tiny_llm():
    """The in-process servers' LLM."""
    return build_llm(_opts(*ENGINE_ARGV))


@pytest.fixture
def bounded(tiny_llm):
    """An in-process server where at most 4 sequences wait; a counting tokenizer."""
    app, ctx = build_app(tiny_llm, _opts("--max-waiting-requests", "4"))
    ctx.tokenizer = CountingTokenizer()
    server = Server(app).start()
    try:
        yield server.url, ctx
    finally:
        server.stop()


def _completion(prompt, n: int = 1, stream: bool = False, max_tokens: int = 2) -> dict:
    return {
        "model": MODEL,
        "prompt": prompt,
        "n": n,
        "max_tokens": max_tokens,
        "stream": stream,
        "ignore_eos": True,
    }


def test_admission_counts_the_request_own_sequences_exactly(bounded):
    url, ctx = bounded
    tok, engine = ctx.tokenizer, ctx.engine
    assert engine.max_waiting_requests == 4

    async def wait_for(what, cond) -> None:
        deadline = time.monotonic() + 60
        while not cond(engine.stats()):
            assert time.monotonic() < deadline, f"never {what}: {engine.stats()}"
            await asyncio.sleep(0.02)

    async def run():
        async with (
            httpx.AsyncClient(base_url=url, timeout=60) as client,
            contextlib.AsyncExitStack() as stack,
        ):

            async def open_stream(body):
                resp = await stack.enter_async_context(
                    client.stream("POST", "/v1/completions", json=body)
                )
                assert resp.status_code == 200, await resp.aread()
                return resp

            # idle: 2 prompts x n=2 = 4 sequences fit the bound of 4; 5 never can (400)
            ok = await client.post("/v1/completions", json=_completion(["ab", "cd"], n=2))
            assert ok.status_code == 200, ok.text
            assert len(ok.json()["choices"]) == 4
            encoded = tok.calls
            assert encoded == 2
            for body in (
                _completion(["a", "b", "c", "d", "e"]),
                _completion("abc", n=5),
            ):
                r = await client.post("/v1/completions", json=body)
                assert r.status_code == 400, r.text
                err = r.json()["error"]
                assert (err["code"], err["param"]) == ("too_many_sequences", "n")
                assert "never" in err["message"] and "5 sequences" in err["message"]
            chat = {"model": MODEL, "n": 5, "messages": [{"role": "user", "content": "hi"}]}
            r = await client.post("/v1/chat/completions", json=chat)
            assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_sequences"

            # busy: 2 sequences run, 3 wait, so exactly one more fits
            await open_stream(_completion(PROMPT_IDS, n=2, stream=True, max_tokens=2000))
            await wait_for("2 running", lambda s: s.num_running == 2 and s.num_waiting == 0)
            for n in (2, 1):  # (n is at most max_num_seqs)
                await open_stream(_completion(PROMPT_IDS, n=n, stream=True, max_tokens=2000))
            await wait_for("3 waiting", lambda s: s.num_waiting == 3)
            over = await client.post("/v1/completions", json=_completion(["x", "y"], stream=True))
            assert over.status_code == 503, over.text
            assert over.headers["Retry-After"] == "1"
            assert over.json()["error"]["code"] == "server_overloaded"
            assert tok.calls == encoded  # refused before tokenization
            await open_stream(_completion("z", stream=True, max_tokens=2000))  # 3 + 1 = 4
            assert engine.stats().num_waiting + engine.stats().num_pending == 4
            over = await client.post("/v1/completions", json=_completion([5, 6]))
            assert over.status_code == 503 and over.headers["Retry-After"] == "1"
            assert tok.calls == encoded + 1
            return engine.stats()  # leaving the stack closes the streams (aborts them)

    stats = asyncio.run(run())
    assert stats.num_running == 2


# ---------------------------------------------------------------------------- engine death


def test_a_dead_engine_ends_the_process_unless_told_to_stay_up(tiny_llm):
    """`ServeServer` with --no-exit-on-engine-error stays up after a failed step (503s); with
    --exit-on-engine-error (switched on afterwards) it exits with status 1."""
    app, ctx = build_app(tiny_llm, _opts("--no-exit-on-engine-error"))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
        timeout_graceful_shutdown=ServeServer.CLOSE_GRACE_S,
    )  # fmt: skip
    server = ServeServer(config, exit_on_engine_error=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    def broken_step():
        raise RuntimeError("injected step failure")

    tiny_llm.llm_engine.step = broken_step
    try:
        with httpx.stream(
            "POST", url + "/v1/completions", json=_completion(PROMPT_IDS, stream=True), timeout=60
        ) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][6:])["error"]["code"] == "engine_dead"
        time.sleep(0.5)  # several of uvicorn's ticks
        assert thread.is_alive()
        assert httpx.get(url + "/health", timeout=10).status_code == 503
        r = httpx.post(url + "/v1/completions", json=_completion(PROMPT_IDS), timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
        server.exit_on_engine_error = True
        thread.join(10)
        assert not thread.is_alive()
        assert server.exit_code == 1
    finally:
        del tiny_llm.llm_engine.step
        server.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------------------- SIGTERM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Serve:
    """`jaxllm serve dummy:tiny` in a subprocess (its output in a file)."""

    def __init__(self, log_path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAXLLM_")}
        env.update(
            PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
            JAX_PLATFORMS="cpu",
            JAXLLM_COMPILATION_CACHE_DIR=os.environ.get("JAXLLM_COMPILATION_CACHE_DIR", "off"),
        )
        argv = [
            sys.executable, "-m", "jaxllm", "serve", MODEL, "--port", str(self.port),
            "--no-access-log", "--log-level", "warning", *SERVE_ARGV, *extra,
        ]  # fmt: skip
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=kill_with_parent
            )

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def wait_healthy(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.log()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"not healthy in {timeout} s:\n{self.log()}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Stream(threading.Thread):
    """A streaming completion read in a thread: every `data:` payload, in order."""

    def __init__(self, url: str, n: int) -> None:
        super().__init__(daemon=True)
        self.url, self.n = url, n
        self.events: list[str] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.flowing = threading.Event()  # a few chunks arrived

    def run(self) -> None:
        body = _completion(LONG_PROMPT_IDS, n=self.n, stream=True, max_tokens=1000)
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=body, timeout=60) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        if len(self.events) >= 3:
                            self.flowing.set()
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            self.error = e
        finally:
            self.flowing.set()

    def chunks(self) -> list[dict]:
        """The JSON chunks; the stream must have ended with [DONE] after whole JSON chunks."""
        assert self.error is None and self.status == 200, (self.status, self.error)
        assert self.events and self.events[-1] == "[DONE]", self.events[-3:]
        return [json.loads(e) for e in self.events[:-1]]


def _metric(url: str, name: str) -> float:
    m = re.search(rf"^{name}{{[^}}]*}} (\S+)$", httpx.get(url + "/metrics", timeout=10).text, re.M)
    assert m, name
    return float(m.group(1))


def _start_streams(url: str, count: int, n: int) -> list[_Stream]:
    """`count` streams of `n` sequences each, once all of them decode (no compilation ahead)."""
    streams = [_Stream(url, n) for _ in range(count)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.flowing.wait(120) and s.error is None and s.status == 200, (s.status, s.error)
    deadline = time.monotonic() + 120
    while _metric(url, "vllm:num_requests_running") < count * n:
        assert time.monotonic() < deadline, "the streams never all ran"
        time.sleep(0.05)
    steps = _metric(url, "jaxllm:engine_steps_total")
    while _metric(url, "jaxllm:engine_steps_total") < steps + 3:  # the all-decode step compiled
        assert time.monotonic() < deadline, "the engine stopped stepping"
        time.sleep(0.05)
    return streams


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers started together (their start-up overlaps): a 2 s drain and a 600 s one."""
    folder = tmp_path_factory.mktemp("serve")
    short = _Serve(folder / "short.log", "--shutdown-timeout", "2")
    long = _Serve(folder / "long.log", "--shutdown-timeout", "600")
    try:
        short.wait_healthy()
        long.wait_healthy()
        yield short, long
    finally:
        short.stop()
        long.stop()


def test_sigterm_drains_for_the_timeout_then_aborts_cleanly(servers):
    srv, _ = servers
    streams = _start_streams(srv.url, 4, n=8)
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    health = httpx.get(srv.url + "/health", timeout=5)
    assert health.status_code == 503 and health.json()["error"]["code"] == "shutting_down"
    r = httpx.post(srv.url + "/v1/completions", json=_completion(PROMPT_IDS), timeout=5)
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    rc = srv.proc.wait(timeout=10)
    elapsed = time.monotonic() - t0
    assert rc == 0, srv.log()
    assert 2.0 <= elapsed < 3.0, f"exited {elapsed:.2f} s after SIGTERM"
    for s in streams:
        s.join(5)
        chunks = s.chunks()
        assert not any("error" in c for c in chunks)
        last = {}
        for c in chunks:
            for ch in c["choices"]:
                last[ch["index"]] = ch["finish_reason"]
        assert last == {i: "abort" for i in range(s.n)}, last


def test_long_drain_answers_503_and_a_second_sigterm_exits_at_once(servers):
    _, srv = servers
    streams = _start_streams(srv.url, 2, n=8)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    for _ in range(3):
        health = httpx.get(srv.url + "/health", timeout=5)
        assert health.status_code == 503 and health.json()["error"]["code"] == "shutting_down"
        time.sleep(0.1)
    r = httpx.post(srv.url + "/v1/completions", json=_completion(PROMPT_IDS), timeout=5)
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    seen = [len(s.events) for s in streams]
    deadline = time.monotonic() + 30
    while not all(len(s.events) > k for s, k in zip(streams, seen)):
        assert time.monotonic() < deadline, "the streams stopped while draining"
        time.sleep(0.05)
    assert srv.proc.poll() is None and all(s.is_alive() for s in streams)
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(timeout=10)
    assert time.monotonic() - t0 < 1.0
    assert rc == -signal.SIGTERM, srv.log()
