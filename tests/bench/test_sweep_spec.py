"""Sweep files: grid and list expansion, flags of each point, stable point ids, file errors; and
the one-line error of a failed point. No engine runs here."""

from __future__ import annotations

import json
import signal

import pytest

from jaxllm.sweep.runner import error_summary, point_command
from jaxllm.sweep.spec import load_sweep, parse_sweep


def test_grid_is_the_cartesian_product_with_bundles():
    spec = parse_sweep(
        {
            "base": {"model": "dummy:tiny", "num-prompts": 8, "warmup": True},
            "grid": {
                "max_num_seqs": [1, 4],
                "workload": [
                    {"input_len": 16, "output_len": 4},
                    {"input_len": 64, "output_len": 8},
                ],
            },
        },
        name="g",
    )
    got = [
        (p.settings["max_num_seqs"], p.settings["input_len"], p.settings["output_len"])
        for p in spec.points
    ]
    assert got == [(1, 16, 4), (1, 64, 8), (4, 16, 4), (4, 64, 8)]
    assert all(p.bench == "throughput" for p in spec.points)
    assert spec.varied == ["max_num_seqs", "input_len", "output_len"]
    assert spec.points[0].argv == (
        "--model",
        "dummy:tiny",
        "--num-prompts",
        "8",
        "--warmup",
        "--max-num-seqs",
        "1",
        "--input-len",
        "16",
        "--output-len",
        "4",
    )
    assert spec.points[0].label(spec.varied) == "max_num_seqs=1, input_len=16, output_len=4"
    assert len({p.point_id for p in spec.points}) == 4
    assert point_command(spec.points[0], "o.json", "py")[:5] == [
        "py",
        "-m",
        "jaxllm",
        "bench",
        "throughput",
    ]
    assert point_command(spec.points[0], "o.json", "py")[-2:] == ["--json", "o.json"]


def test_listed_points_switches_and_stable_ids():
    data = {
        "bench": "latency",
        "base": {"model": "dummy:tiny", "enable_prefix_caching": False, "peer": "hf"},
        "points": [
            {"batch_size": 1},
            {"batch_size": 4, "profile": False},
            {"bench": "throughput", "num_prompts": 2, "dtype": None},
        ],
        "grid": {"input_len": [32]},
    }
    spec = parse_sweep(data)
    assert [p.bench for p in spec.points] == ["latency", "latency", "throughput"]
    assert spec.points[0].argv == (
        "--model",
        "dummy:tiny",
        "--no-enable-prefix-caching",
        "--peer",
        "hf",
        "--batch-size",
        "1",
        "--input-len",
        "32",
    )
    assert "profile" not in spec.points[1].settings  # false switch: left out
    assert "dtype" not in spec.points[2].settings  # null: the default
    assert spec.varied[0] == "bench" and "batch_size" in spec.varied
    # ids depend only on the point's own benchmark and settings
    ids = [p.point_id for p in spec.points]
    assert ids == [p.point_id for p in parse_sweep(data).points]
    data["points"][1]["batch_size"] = 8
    assert [p.point_id for p in parse_sweep(data).points][::2] == ids[::2]
    assert ids[0].startswith("latency-") and ids[2].startswith("throughput-")


def test_speculative_config_mappings_are_values_not_bundles():
    ngram = {"method": "ngram", "num_speculative_tokens": 4}
    spec = parse_sweep(
        {"base": {"model": "dummy:tiny"}, "grid": {"speculative_config": [None, ngram]}}
    )
    assert [p.settings.get("speculative_config") for p in spec.points] == [None, ngram]
    assert spec.points[0].argv == ("--model", "dummy:tiny")
    flag, text = spec.points[1].argv[-2:]
    assert flag == "--speculative-config" and json.loads(text) == ngram
    in_base = parse_sweep({"base": {"speculative_config": ngram}})
    assert in_base.points[0].argv[-2:] == (flag, text)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"grid": {"max_num_sequences": [1]}}, "unknown setting 'max_num_sequences'"),
        ({"base": {"json": "x.json"}}, "'json' is set by the sweep runner"),
        ({"base": {"max_num_seqs": [1, 2]}}, "must be a single value"),
        ({"base": {"warmup": "yes"}}, "is a switch: true or false"),
        ({"bench": "serve"}, "bench must be one of throughput, latency"),
        ({"points": [{"input_len": 4}, {"input_len": 4}]}, "repeats point 0"),
        (
            {"points": [{"input_len": 4}], "grid": {"input_len": [8]}},
            "'input_len' is also a grid key",
        ),
        ({"grid": {"max_num_seqs": []}}, "empty list"),
        ({"grids": {}}, "unknown top-level key"),
        ({"timeout_s": 0}, "timeout_s must be a positive number"),
        ({"plots": [{"x": "max_num_seqs"}]}, "needs at least 'x' and 'y'"),
        ([1, 2], "holds a mapping"),
    ],
)
def test_bad_sweeps_name_the_problem(data, message):
    with pytest.raises(ValueError, match=message):
        parse_sweep(data)


def test_load_sweep_file_errors(tmp_path):
    with pytest.raises(ValueError, match="sweep file not found"):
        load_sweep(str(tmp_path / "missing.yaml"))
    dup = tmp_path / "dup.yaml"
    dup.write_text("base: {model: a}\nbase: {model: b}\n")
    with pytest.raises(ValueError, match="duplicate key 'base'"):
        load_sweep(str(dup))
    ok = tmp_path / "my_sweep.yaml"
    ok.write_text("grid: {max_num_seqs: [1, 2]}\nenv: {JAX_PLATFORMS: cpu}\n")
    spec = load_sweep(str(ok))
    assert spec.name == "my_sweep" and spec.env == {"JAX_PLATFORMS": "cpu"}
    assert len(spec.points) == 2


def test_shipped_sweep_files_parse():
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cpu = load_sweep(os.path.join(root, "configs", "sweeps", "cpu_smollm2.yaml"))
    gpu = load_sweep(os.path.join(root, "configs", "sweeps", "gpu_llama3_8b.yaml"))
    assert {p.bench for p in cpu.points} == {"throughput", "latency"}
    assert all(p.settings["model"] == "smollm2-135m" for p in cpu.points)
    assert all(
        p.settings["model"] == "dummy:llama-3-8b" and p.settings["dtype"] == "bfloat16"
        for p in gpu.points
    )
    assert "max_num_seqs" in gpu.varied


def test_error_summary():
    tb = (
        'Traceback (most recent call last):\n  File "x.py", line 3, in <module>\n    f()\n'
        "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB\n"
    )
    assert error_summary(tb, 1, False, 60) == (
        "exit status 1: jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: "
        "Out of memory allocating 9 GiB"
    )
    cli = "loading...\njaxllm bench: error: cannot run the benchmark: block_size must be > 0\n"
    assert error_summary(cli, 2, False, 60) == (
        "exit status 2: jaxllm bench: error: cannot run the benchmark: block_size must be > 0"
    )
    assert error_summary("step 3\n", -signal.SIGKILL, False, 60) == (
        "killed by SIGKILL (out of host memory?)"
    )
    assert error_summary("", None, True, 90) == "timed out after 90 s"
    assert error_summary("", 3, False, 60) == "exit status 3: no output"
