"""`jaxllm generate` and `jaxllm serve` across processes: --coordinator-address / --num-processes /
--process-id.

The end-to-end test starts two `python -m jaxllm generate` processes over loopback (jax.distributed
with gloo collectives), each with one virtual CPU device, running `dummy:tiny` with -tp 2 across
them; the reference is one `jaxllm generate` process with two virtual devices and the same flags.
Both run the same greedy prompts (token ids: the dummy model has no tokenizer). The flag checks
call the CLI's `main` in this process (they fail before anything is initialized).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from jaxllm.entrypoints.cli import main
from jaxllm.entrypoints.cli_args import (
    MultihostOptions,
    build_parser,
    resolve_generate_args,
    resolve_multihost,
)
from jaxllm.process_lifetime import kill_with_parent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MH_ENV = ("JAXLLM_COORDINATOR_ADDRESS", "JAXLLM_NUM_PROCESSES", "JAXLLM_PROCESS_ID")
PROMPTS = [[5, 17, 99, 3, 250], list(range(40, 61)), [7] * 3 + list(range(100, 130))]
GENERATE = [
    "generate",
    "--model",
    "dummy:tiny",
    "-tp",
    "2",
    "--temperature",
    "0",
    "--max-tokens",
    "6",
    "--ignore-eos",
    "--max-model-len",
    "128",
    "--max-num-seqs",
    "8",
    "--num-gpu-blocks",
    "64",
    "--no-progress",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MH_ENV}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAXLLM_COMPILATION_CACHE_DIR"] = "off"
    env.update(extra)
    return env


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jaxllm", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=kill_with_parent,
    )


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, logs):
        assert p.returncode == 0, f"rc {p.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    return logs


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mh") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt_token_ids": p}) + "\n" for p in PROMPTS))
    return path


@pytest.fixture(scope="module")
def single_process_output(prompts_file, tmp_path_factory):
    """The reference: one `jaxllm generate` process with two virtual devices."""
    single = tmp_path_factory.mktemp("single") / "single.jsonl"
    _finish([_start([*GENERATE, "--prompts-file", str(prompts_file), "-o", str(single)], _env(2))])
    return [json.loads(line) for line in single.read_text().splitlines()]


def test_two_process_generate_writes_what_one_process_writes(
    prompts_file, single_process_output, tmp_path
):
    """Every process runs the same command (the process id comes from JAXLLM_PROCESS_ID); only
    process 0 writes the shared --output path; process 1 follows, prints nothing, exits 0."""

    multi = tmp_path / "multi.jsonl"
    argv = [
        *GENERATE,
        "--prompts-file",
        str(prompts_file),
        "-o",
        str(multi),
        "--coordinator-address",
        f"127.0.0.1:{_free_port()}",
        "--num-processes",
        "2",
    ]
    procs = [_start(argv, _env(1, JAXLLM_PROCESS_ID=str(i))) for i in range(2)]
    logs = _finish(procs)

    want = single_process_output
    got = [json.loads(line) for line in multi.read_text().splitlines()]
    assert [r["prompt_token_ids"] for r in want] == PROMPTS
    assert all(len(r["outputs"][0]["token_ids"]) == 6 for r in want)
    assert got == want
    for stdout, _ in logs:  # the JSONL went to the file only (gloo prints its own status lines)
        assert not any(line.startswith("{") for line in stdout.splitlines()), stdout


def test_two_process_serve_answers_what_one_process_generates(single_process_output):
    """`jaxllm serve` on two processes (-tp 2 across them): process 0 serves, process 1 follows;
    greedy completions of token-id prompts equal the one-process generate; on SIGINT process 0
    shuts down, releases process 1, and both exit 0."""
    import signal
    import time

    import httpx

    port = _free_port()
    argv = [
        "serve", "dummy:tiny", "-tp", "2", "--max-model-len", "128", "--max-num-seqs", "8",
        "--num-gpu-blocks", "64", "--port", str(port), "--no-access-log",
        "--coordinator-address", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
    ]  # fmt: skip
    procs = [_start(argv, _env(1, JAXLLM_PROCESS_ID=str(i))) for i in range(2)]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert all(p.poll() is None for p in procs), [p.poll() for p in procs]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "the two-process server did not come up in 240 s"
            time.sleep(1)
        got = []
        for prompt in PROMPTS:
            body = {
                "model": "dummy:tiny",
                "prompt": prompt,
                "max_tokens": 6,
                "temperature": 0,
                "ignore_eos": True,
                "logprobs": 1,
            }
            r = httpx.post(url + "/v1/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            tokens = r.json()["choices"][0]["logprobs"]["tokens"]  # "token_id:N" (no tokenizer)
            got.append([int(t.split(":")[1]) for t in tokens])
        procs[0].send_signal(signal.SIGINT)
        _finish(procs, timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert got == [r["outputs"][0]["token_ids"] for r in single_process_output]


@pytest.fixture
def no_mh_env(monkeypatch):
    for k in MH_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "flags, env, message",
    [
        (
            [
                "--coordinator-address",
                "127.0.0.1:1234",
                "--num-processes",
                "2",
                "--process-id",
                "2",
            ],
            {},
            "--process-id 2 is outside [0, 2) (--num-processes 2)",
        ),
        (
            ["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2", "--process-id=-1"],
            {},
            "--process-id -1 is outside [0, 2)",
        ),
        (
            ["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2"],
            {"JAXLLM_PROCESS_ID": "3"},
            "JAXLLM_PROCESS_ID 3 is outside [0, 2) (--num-processes 2)",
        ),
        (
            ["--coordinator-address", "10.0.0.1", "--num-processes", "2", "--process-id", "0"],
            {},
            "--coordinator-address must be HOST:PORT, got '10.0.0.1' (no port)",
        ),
        (
            ["--coordinator-address", "10.0.0.1:", "--num-processes", "2", "--process-id", "0"],
            {},
            "--coordinator-address must be HOST:PORT, got '10.0.0.1:' (no port)",
        ),
        (
            ["--coordinator-address", "host:http", "--num-processes", "2", "--process-id", "0"],
            {},
            "--coordinator-address must be HOST:PORT with a port in 1..65535",
        ),
        (
            ["--num-processes", "2", "--process-id", "0"],
            {},
            "--num-processes needs --coordinator-address HOST:PORT",
        ),
        (["--process-id", "1"], {}, "--process-id needs --coordinator-address HOST:PORT"),
        ([], {"JAXLLM_NUM_PROCESSES": "2"}, "JAXLLM_NUM_PROCESSES needs --coordinator-address"),
        (
            ["--coordinator-address", "127.0.0.1:1234", "--process-id", "0"],
            {},
            "--coordinator-address needs --num-processes N",
        ),
        (
            ["--num-processes", "2"],
            {"JAXLLM_COORDINATOR_ADDRESS": "127.0.0.1:1234"},
            "JAXLLM_COORDINATOR_ADDRESS needs --process-id I",
        ),
        (
            [
                "--coordinator-address",
                "127.0.0.1:1234",
                "--num-processes",
                "0",
                "--process-id",
                "0",
            ],
            {},
            "--num-processes must be at least 1, got 0",
        ),
        (
            ["--coordinator-address", "127.0.0.1:1234", "--process-id", "0"],
            {"JAXLLM_NUM_PROCESSES": "two"},
            "JAXLLM_NUM_PROCESSES must be an integer, got 'two'",
        ),
        (
            ["--coordinator-address", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"],
            {},
            "--data-parallel-size above 1 does not combine with a multi-host run",
        ),
    ],
)
def test_bad_multihost_flags_exit_2_naming_the_flag(no_mh_env, capsys, flags, env, message):
    for k, v in env.items():
        no_mh_env.setenv(k, v)
    extra = ["-dp", "2"] if "data-parallel" in message else []
    built = []
    rc = main(["generate", "hi", *extra, *flags], llm_factory=lambda **kw: built.append(kw))
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("jaxllm generate: error: ") and message in err, err
    assert not built  # rejected before any engine (or jax.distributed) starts


def test_flags_override_environment_and_config(no_mh_env, tmp_path):
    no_mh_env.setenv("JAXLLM_COORDINATOR_ADDRESS", "10.0.0.9:9")
    no_mh_env.setenv("JAXLLM_NUM_PROCESSES", "4")
    no_mh_env.setenv("JAXLLM_PROCESS_ID", "3")
    assert resolve_multihost() == MultihostOptions("10.0.0.9:9", 4, 3)
    assert resolve_multihost("[::1]:8476", None, 1) == MultihostOptions("[::1]:8476", 4, 1)
    assert not resolve_multihost().is_leader and resolve_multihost(process_id=0).is_leader
    assert resolve_multihost(environ={}) is None  # no setting at all: a one-process run

    config = tmp_path / "run.yaml"
    config.write_text("coordinator-address: 10.0.0.1:1234\nnum_processes: 2\nprocess-id: 1\n")
    argv = ["generate", "hi", "--config", str(config)]
    opts = resolve_generate_args(build_parser().parse_args(argv))
    assert opts.multihost == MultihostOptions("10.0.0.1:1234", 2, 1)  # the file beats the env
    opts = resolve_generate_args(build_parser().parse_args([*argv, "--process-id", "0"]))
    assert opts.multihost == MultihostOptions("10.0.0.1:1234", 2, 0)  # a flag beats the file
    assert "coordinator_address" not in opts.engine_kwargs  # not an LLM(...) keyword


def test_generate_help_lists_the_multihost_flags(capsys):
    assert main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--coordinator-address HOST:PORT", "--num-processes N", "--process-id I"):
        assert flag in out
    for var in MH_ENV:
        assert var in out


_IDS_MUST = '"prompt_token_ids" must be a non-empty list of non-negative integers,'


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt_token_ids": []}', '"prompt_token_ids" must be a non-empty list'),
        ('{"prompt_token_ids": [1, -2]}', '"prompt_token_ids" must be a non-empty list'),
        ('{"prompt_token_ids": [1, true]}', f"{_IDS_MUST} got [1, True]"),
        ('{"prompt_token_ids": "1 2"}', f"{_IDS_MUST} got '1 2'"),
        ('{"prompt_token_ids": [1], "prompt": "a"}', 'give exactly one of "prompt" and'),
    ],
)
def test_bad_token_id_lines_name_the_line(no_mh_env, tmp_path, capsys, line, message):
    """Token-id prompts (what the dummy models above need) are checked like the other lines."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt_token_ids": [3, 4]}\n' + line + "\n")
    built = []
    assert main(["generate", "--prompts-file", str(path)], llm_factory=built.append) == 2
    err = capsys.readouterr().err
    assert f"p.jsonl:2: {message}" in err and not built


def test_serve_takes_the_same_multihost_flags(no_mh_env):
    from jaxllm.entrypoints.cli_args import CLIError
    from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser

    def opts(*argv):
        return resolve_serve_args(serve_parser().parse_args(list(argv)))

    mh = ["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2"]
    assert opts(*mh, "--process-id", "1").multihost == MultihostOptions("127.0.0.1:1234", 2, 1)
    assert opts().multihost is None
    with pytest.raises(CLIError, match="--process-id 2 is outside"):
        opts(*mh, "--process-id", "2")
    with pytest.raises(CLIError, match="--data-parallel-size above 1 does not combine"):
        opts(*mh, "--process-id", "0", "-dp", "2")
