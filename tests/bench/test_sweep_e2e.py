"""`jaxllm sweep` end to end on `dummy:tiny`: two points that finish and one that fails on purpose
(max_num_seqs 0, which the engine rejects), each in its own process; then a rerun into the same
folder, which must reuse the two finished points and run only the failed one again.

The two good points differ only in max_num_seqs and run one request into a fixed KV cache, so their
step shapes match and the second one compiles from JAX's persistent cache.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from jaxllm.entrypoints.cli import main as cli_main
from jaxllm.process_lifetime import kill_with_parent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SWEEP = """
name: tiny_e2e
description: two good points and one bad one
bench: throughput
base:
  model: "dummy:tiny"
  num-prompts: 1
  input_len: 6
  output_len: 3
  num_gpu_blocks: 8
grid:
  max_num_seqs: [1, 2, 0]
timeout_s: 300
env:
  JAX_PLATFORMS: cpu
"""


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    path = tmp / "tiny.yaml"
    path.write_text(SWEEP)
    out = tmp / "out"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "jaxllm", "sweep", str(path), "--out", str(out)]
    run = dict(capture_output=True, text=True, timeout=600, env=env, cwd=tmp)
    first = subprocess.run(cmd, **run, preexec_fn=kill_with_parent)
    mtimes = {
        p: os.path.getmtime(out / "points" / p)
        for p in os.listdir(out / "points")
        if p.endswith(".json") and not p.endswith(".failed.json")
    }
    second = subprocess.run(cmd, **run, preexec_fn=kill_with_parent)
    return {"out": out, "first": first, "second": second, "mtimes": mtimes}


def _rows(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_sweep_records_ok_and_failed_points(sweep_run):
    first, out = sweep_run["first"], sweep_run["out"]
    assert first.returncode == 1, first.stdout + first.stderr  # one point failed
    rows = _rows(out)
    assert [r["max_num_seqs"] for r in rows] == [1, 2, 0]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    for r in rows[:2]:
        assert r["model"] == "dummy:tiny" and r["num_prompts"] == 1 and r["error"] is None
        assert r["output_tokens_per_s"] > 0 and r["device_kind"] == "cpu"
        rec = json.loads((out / "points" / f"{r['point_id']}.json").read_text())
        assert rec["engine"]["max_num_seqs"] == r["max_num_seqs"]
        assert rec["engine"]["num_blocks"] == 8
        assert rec["workload"]["output_tokens"] == 3
        assert r["output_tokens_per_s"] == pytest.approx(3 / rec["results"]["jaxllm"]["elapsed_s"])
        assert rec["machine"]["cpu_model"] and rec["packages"]["jax"]
    bad = rows[2]
    assert "max_num_seqs" in bad["error"] and "exit status" in bad["error"]
    assert bad.get("output_tokens_per_s") is None
    failed = json.loads((out / "points" / f"{bad['point_id']}.failed.json").read_text())
    assert failed["returncode"] != 0 and failed["error"] == bad["error"]
    assert "--max-num-seqs" in failed["command"] and "0" in failed["command"]
    assert not (out / "points" / f"{bad['point_id']}.json").exists()

    # CSV: the same rows and values
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["status"] for t in table] == ["ok", "ok", "failed"]
    assert [t["max_num_seqs"] for t in table] == ["1", "2", "0"]
    assert float(table[0]["output_tokens_per_s"]) == pytest.approx(rows[0]["output_tokens_per_s"])
    assert table[2]["output_tokens_per_s"] == "" and "max_num_seqs" in table[2]["error"]

    # Markdown: a table row per point, the failure's error text, a link to each plot
    md = (out / "summary.md").read_text()
    assert "# Sweep: tiny_e2e" in md and "2 ok, 1 failed" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| throughput-")]
    assert len(lines) == 3 and "| failed |" in lines[2] and "max_num_seqs" in lines[2]

    # plots: valid PNG files, linked from the summary
    pngs = sorted((out / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["throughput_output_tokens_per_s_vs_max_num_seqs.png"]
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
        assert f"plots/{p.name}" in md
    import matplotlib.image

    assert matplotlib.image.imread(str(pngs[0])).shape[2] in (3, 4)


def test_rerun_skips_finished_points(sweep_run):
    second, out = sweep_run["second"], sweep_run["out"]
    assert second.returncode == 1, second.stdout + second.stderr
    assert second.stdout.count("finished before, skipped") == 2
    assert second.stdout.count(": running") == 1  # only the failed point runs again
    for name, mtime in sweep_run["mtimes"].items():
        assert os.path.getmtime(out / "points" / name) == mtime, name
    rows = _rows(out)
    assert [r["reused"] for r in rows] == [True, True, False]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[0]["wall_s"] is None and rows[2]["wall_s"] > 0


def test_sweep_file_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {model: 'dummy:tiny'}\ngrid: {max_num_sequences: [1, 2]}\n")
    assert cli_main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown setting 'max_num_sequences'" in err and str(bad) in err
    assert not (tmp_path / "o").exists()
