"""`python -m jaxllm.benchmarks.throughput` and `python -m jaxllm.benchmarks.latency` run end to
end on `dummy:tiny` (tiny sizes), with the flags they always had.

Each module runs as a subprocess, as a user would run it; the test checks the printed Markdown
table and the `--json` record: fields present, rates consistent with the workload, compilations
few and none in the timed run after a warm-up. (`jaxllm bench ...` without warm-up, random
lengths and the HF peer: test_bench_cli.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env() -> dict:
    """The caller's environment on the CPU, importing jaxllm from this checkout."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def _run(bench: str, args: list[str], tmp_path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", f"jaxllm.benchmarks.{bench}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _table_row(stdout: str, first_cell: str) -> list[str]:
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{stdout}")


def _check_common(rec: dict) -> None:
    for key in ("settings", "engine", "results", "machine", "device", "packages", "load_average"):
        assert key in rec, key
    assert rec["machine"]["cpu_model"] and rec["machine"]["cpu_count"] >= 1
    assert rec["device"]["backend"] == "cpu"
    assert rec["packages"]["jax"]
    # the CPU default (JAXLLM_ATTENTION_BACKEND, inherited by the script, overrides it)
    assert rec["engine"]["attention_backend"] == (
        os.environ.get("JAXLLM_ATTENTION_BACKEND") or "cpu"
    )


def test_throughput_smoke(tmp_path):
    out_json = tmp_path / "tp.json"
    data = tmp_path / "prompts.jsonl"
    # a dataset of token ids: 3 requests of different input and output lengths
    data.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"prompt_token_ids": [5, 6, 7, 8, 9], "output_len": 3},
                {"prompt_token_ids": list(range(10, 30)), "output_len": 5},
                {"prompt_token_ids": list(range(40, 52))},  # default --output-len
            ]
        )
        + "\n"
    )
    stdout = _run(
        "throughput",
        [
            "--model",
            "dummy:tiny",
            "--dataset",
            str(data),
            "--output-len",
            "4",
            "--warmup",
            "--max-num-seqs",
            "4",
            "--block-size",
            "32",
            "--peer",
            "hf",
            "--profile",
            "--json",
            str(out_json),
        ],
        tmp_path,
    )
    row = _table_row(stdout, "jaxllm")
    assert row[1:4] == ["3", "37", "12"]  # requests, input tokens, output tokens
    assert float(row[4]) > 0 and float(row[6]) > 0
    assert row[8].endswith("+ 0 timed")
    assert "HF peer skipped" in stdout  # dummy models get no HF peer on the CPU
    assert "device_step" in stdout  # the --profile table

    rec = json.loads(out_json.read_text())
    _check_common(rec)
    w = rec["workload"]
    assert (w["num_requests"], w["input_tokens"], w["output_tokens"]) == (3, 37, 12)
    j = rec["results"]["jaxllm"]
    for key in ("elapsed_s", "requests_per_s", "output_tokens_per_s", "total_tokens_per_s"):
        assert j[key] > 0, key
    assert j["output_tokens_per_s"] == pytest.approx(12 / j["elapsed_s"])
    assert j["total_tokens_per_s"] == pytest.approx(49 / j["elapsed_s"])
    assert 1 <= j["compilations_warmup"] <= 8
    assert j["compilations_timed"] == 0
    assert rec["results"]["hf"] is None and rec["ratio_output_tokens_per_s"] is None
    assert rec["engine"]["block_size"] == 32 and rec["engine"]["max_num_seqs"] == 4
    kinds = {k["kind"]: k for k in rec["profile"]}
    assert set(kinds) == {"prefill", "decode"}
    # prefill steps: one per wave of prompts; decode steps: the rest, up to the longest output - 1
    assert kinds["decode"]["steps"] >= 4 and kinds["prefill"]["steps"] >= 1
    phases = {r["phase"]: r for r in kinds["decode"]["rows"]}
    assert set(phases) >= {"schedule", "build_batch", "device_step", "device_get", "whole step"}
    assert all(r["median_ms"] >= 0 for r in phases.values())
    assert 0 < phases["device_step"]["share"] < 1


def test_throughput_rejects_bad_lengths(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxllm.benchmarks.throughput",
            "--model",
            "dummy:tiny",
            "--lengths",
            "40:4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "LO <= HI" in proc.stderr


def test_latency_smoke(tmp_path):
    """A 40-token prompt under a 16-token budget prefills in 3 steps (16 + 16 + 8); TTFT spans
    them, and each of the output_len - 1 later steps is one timed decode token."""
    out_json = tmp_path / "lat.json"
    stdout = _run(
        "latency",
        [
            "--model",
            "dummy:tiny",
            "--input-len",
            "40",
            "--output-len",
            "6",
            "--num-iters",
            "2",
            "--max-num-batched-tokens",
            "16",
            "--profile",
            "--json",
            str(out_json),
        ],
        tmp_path,
    )
    row = _table_row(stdout, "jaxllm")
    assert all(float(c) > 0 for c in row[1:6])
    assert row[6].endswith("+ 0 timed")
    assert "device_step" in stdout  # the --profile table

    rec = json.loads(out_json.read_text())
    _check_common(rec)
    j = rec["results"]["jaxllm"]
    d = j["decode_ms_per_token"]
    assert d["count"] == 2 * 5  # output_len - 1 decode steps per run, 2 runs
    assert 0 < d["min_ms"] <= d["p50_ms"] <= d["p90_ms"] <= d["max_ms"]
    assert j["ttft_ms"]["count"] == 2 and j["ttft_ms"]["mean_ms"] > 0
    assert j["prefill_steps"] == 3
    assert j["decode_tokens_per_s"] == pytest.approx(1e3 / d["mean_ms"])
    assert 1 <= j["compilations_warmup"] <= 8 and j["compilations_timed"] == 0
    assert rec["engine"]["max_num_seqs"] == 1
