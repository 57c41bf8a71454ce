"""Sweep reports from given result records (no engine): rows carry the records' metrics and the
HF peer's ratio, the summary has one table per benchmark, plots are valid PNGs (peer dashed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from jaxllm.sweep import report
from jaxllm.sweep.plots import default_plots, draw_plots
from jaxllm.sweep.spec import parse_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _throughput_record(seqs: int) -> dict:
    jax_tps, hf_tps = 100.0 * seqs, 40.0 * seqs**0.5
    return {
        "benchmark": "throughput",
        "engine": {"num_blocks": 64 * seqs},
        "device": {"device_kind": "NVIDIA H100 80GB HBM3"},
        "results": {
            "jaxllm": {"output_tokens_per_s": jax_tps, "requests_per_s": seqs / 2.0},
            "hf": {"output_tokens_per_s": hf_tps},
        },
        "vs_peer": {"output_tokens_per_s": jax_tps / hf_tps},
    }


def test_rows_tables_and_plots(tmp_path):
    spec = parse_sweep(
        {
            "base": {"model": "dummy:tiny", "peer": "hf"},
            "points": [
                {"grid": {"max_num_seqs": [1, 4, 16]}},
                {"bench": "latency", "batch_size": 2},
            ],
        },
        name="r",
    )
    outcomes = [{"status": "ok", "record": _throughput_record(s), "wall_s": 1.5} for s in (1, 4)]
    outcomes.append({"status": "failed", "error": "exit status 1: RESOURCE_EXHAUSTED | oom"})
    outcomes.append({"status": "failed", "error": "timed out after 60 s", "reused": True})
    rows = [report.flatten(p, o) for p, o in zip(spec.points, outcomes)]
    assert rows[1]["output_tokens_per_s"] == 400.0 and rows[1]["num_blocks"] == 256
    assert rows[1]["vs_hf_output_tokens_per_s"] == 400.0 / 80.0
    assert rows[1]["device_kind"] == "NVIDIA H100 80GB HBM3"
    assert rows[2]["status"] == "failed" and "output_tokens_per_s" not in rows[2]
    assert rows[3]["reused"] is True and rows[3]["bench"] == "latency"

    files = report.write_tables(spec, rows, str(tmp_path))
    assert [json.loads(x)["point_id"] for x in Path(files["jsonl"]).read_text().splitlines()] == [
        r["point_id"] for r in rows
    ]
    with open(files["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert float(table[0]["hf_output_tokens_per_s"]) == 40.0 and table[2]["error"].endswith("oom")
    md = Path(files["summary"]).read_text()
    assert "## throughput" in md and "## latency" in md and "vs HF (tok/s)" in md
    assert "RESOURCE_EXHAUSTED / oom" in md  # a "|" in an error does not break the table
    assert "`model=dummy:tiny`" in md

    assert [(p.bench, p.x, p.y) for p in default_plots(spec, rows)] == [
        ("throughput", "max_num_seqs", "output_tokens_per_s")
    ]
    pngs = draw_plots(spec, rows, str(tmp_path / "plots"))
    assert list(pngs) == ["throughput_output_tokens_per_s_vs_max_num_seqs"]
    data = Path(pngs["throughput_output_tokens_per_s_vs_max_num_seqs"]).read_bytes()
    assert data[:8] == PNG_MAGIC


def test_explicit_plot_with_categorical_x(tmp_path):
    spec = parse_sweep(
        {
            "grid": {"attention_backend": ["reference", "pallas"]},
            "plots": [{"x": "attention_backend", "y": "output_tokens_per_s", "title": "t"}],
        }
    )
    rows = [
        report.flatten(p, {"status": "ok", "record": _throughput_record(i + 1)})
        for i, p in enumerate(spec.points)
    ]
    pngs = draw_plots(spec, rows, str(tmp_path))
    assert list(pngs) == ["all_output_tokens_per_s_vs_attention_backend"]
    assert Path(next(iter(pngs.values()))).read_bytes()[:8] == PNG_MAGIC
