"""Sweep results as rows: results.jsonl (one object a point), results.csv and summary.md.

A row holds the point's id, benchmark, status ("ok" | "failed"), its settings (flag names), the
main metrics of its result record, `wall_s` (the point's process time; empty when reused),
`reused` (true when a previous run had finished it) and `error` (failed points). Host-side: no JAX.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from jaxllm.benchmarks.common import markdown_table
from jaxllm.sweep.spec import SweepPoint, SweepSpec

__all__ = ["METRICS", "flatten", "metrics_of", "write_tables", "write_spec"]

# Row metric names, in table order, with their place in a result record.
METRICS: dict[str, tuple[str, ...]] = {
    "requests_per_s": ("results", "jaxllm", "requests_per_s"),
    "output_tokens_per_s": ("results", "jaxllm", "output_tokens_per_s"),
    "total_tokens_per_s": ("results", "jaxllm", "total_tokens_per_s"),
    "elapsed_s": ("results", "jaxllm", "elapsed_s"),
    "mean_ttft_s": ("results", "jaxllm", "mean_ttft_s"),
    "ttft_ms_mean": ("results", "jaxllm", "ttft_ms", "mean_ms"),
    "ttft_ms_p50": ("results", "jaxllm", "ttft_ms", "p50_ms"),
    "decode_ms_per_token_mean": ("results", "jaxllm", "decode_ms_per_token", "mean_ms"),
    "decode_ms_per_token_p50": ("results", "jaxllm", "decode_ms_per_token", "p50_ms"),
    "decode_ms_per_token_p90": ("results", "jaxllm", "decode_ms_per_token", "p90_ms"),
    "decode_tokens_per_s": ("results", "jaxllm", "decode_tokens_per_s"),
    "compilations_timed": ("results", "jaxllm", "compilations_timed"),
    "hf_output_tokens_per_s": ("results", "hf", "output_tokens_per_s"),
    "hf_decode_ms_per_token_mean": ("results", "hf", "decode_ms_per_token", "mean_ms"),
    "hf_ttft_ms_mean": ("results", "hf", "ttft_ms", "mean_ms"),
    "vs_hf_output_tokens_per_s": ("vs_peer", "output_tokens_per_s"),
    "vs_hf_decode_ms_per_token": ("vs_peer", "decode_ms_per_token"),
    "peer_note": ("peer_note",),
    "num_blocks": ("engine", "num_blocks"),
    "device_kind": ("device", "device_kind"),
}
_TAIL_COLUMNS = ("wall_s", "reused", "error")


def _get(record: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def metrics_of(record: dict) -> dict[str, Any]:
    """The METRICS present (not None) in one result record."""
    out = {}
    for name, path in METRICS.items():
        value = _get(record, path)
        if value is not None:
            out[name] = value
    return out


def flatten(point: SweepPoint, outcome: dict[str, Any]) -> dict[str, Any]:
    """One row of a point and its outcome (see the module doc)."""
    row: dict[str, Any] = {
        "point_id": point.point_id,
        "bench": point.bench,
        "status": outcome["status"],
    }
    row.update(point.settings)
    if outcome["status"] == "ok":
        row.update(metrics_of(outcome["record"]))
    row["wall_s"] = outcome.get("wall_s")
    row["reused"] = bool(outcome.get("reused"))
    row["error"] = outcome.get("error")
    return row


def _columns(spec: SweepSpec, rows: list[dict]) -> list[str]:
    settings = list(dict.fromkeys(k for p in spec.points for k in p.settings))
    present = {k for r in rows for k, v in r.items() if v is not None}
    metrics = [m for m in METRICS if m in present]
    return ["point_id", "bench", "status", *settings, *metrics, *_TAIL_COLUMNS]


def _machine_line(spec: SweepSpec, out_dir: str, rows: list[dict]) -> str | None:
    for r in rows:
        if r["status"] != "ok":
            continue
        path = os.path.join(out_dir, "points", f"{r['point_id']}.json")
        try:
            with open(path, encoding="utf-8") as f:
                rec = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        m, d, pk = rec.get("machine", {}), rec.get("device", {}), rec.get("packages", {})
        return (
            f"Machine: {m.get('cpu_model')} ({m.get('cpus_usable')} cores usable, "
            f"{m.get('memory_gib')} GiB); device: {d.get('device_kind')} ({d.get('backend')}, "
            f"{d.get('num_devices')} device(s)); jax {pk.get('jax')}, jaxllm {pk.get('jaxllm')}."
        )
    return None


def _short(text: Any, n: int = 160) -> Any:
    if not isinstance(text, str):
        return text
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= n else text[: n - 3] + "..."


_SHOWN = (  # (column title, row metric) of the summary tables, where some row has the metric
    ("output tok/s", "output_tokens_per_s"),
    ("total tok/s", "total_tokens_per_s"),
    ("requests/s", "requests_per_s"),
    ("TTFT ms (mean)", "ttft_ms_mean"),
    ("decode ms/token (mean)", "decode_ms_per_token_mean"),
    ("HF output tok/s", "hf_output_tokens_per_s"),
    ("vs HF (tok/s)", "vs_hf_output_tokens_per_s"),
    ("HF decode ms/token", "hf_decode_ms_per_token_mean"),
    ("vs HF (decode)", "vs_hf_decode_ms_per_token"),
)


def summary_markdown(
    spec: SweepSpec, rows: list[dict], out_dir: str, plot_files: dict[str, str] | None = None
) -> str:
    """The Markdown summary: machine, then per benchmark its shared settings and a table of the
    varied settings, status, main metrics and errors; then the plots."""
    ok = sum(r["status"] == "ok" for r in rows)
    lines = [f"# Sweep: {spec.name}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines.append(
        f"{len(rows)} points: {ok} ok, {len(rows) - ok} failed."
        + (f" Sweep file: `{spec.source}`." if spec.source else "")
    )
    machine = _machine_line(spec, out_dir, rows)
    if machine:
        lines += ["", machine]
    for bench in spec.benches():
        mine = [r for r in rows if r["bench"] == bench]
        varied = spec.varied_in(bench)
        shared = spec.shared_in(bench)
        lines += ["", f"## {bench}", ""]
        if shared:
            lines += [
                "Settings of every point: "
                + ", ".join(f"`{k}={v}`" for k, v in shared.items())
                + ".",
                "",
            ]
        shown = [(n, k) for n, k in _SHOWN if any(r.get(k) is not None for r in mine)]
        headers = ["point", *varied, "status", *(n for n, _ in shown), "error"]
        table = [
            [
                r["point_id"],
                *(r.get(k) for k in varied),
                r["status"] + (" (reused)" if r["reused"] else ""),
                *(r.get(k) for _, k in shown),
                _short(r.get("error")),
            ]
            for r in mine
        ]
        lines.append(markdown_table(headers, table))
    if plot_files:
        lines += ["", "## Plots", ""]
        for name, path in plot_files.items():
            rel = os.path.relpath(path, out_dir)
            lines += [f"![{name}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_tables(
    spec: SweepSpec, rows: list[dict], out_dir: str, plot_files: dict[str, str] | None = None
) -> dict[str, str]:
    """Write results.jsonl, results.csv and summary.md; returns {what: path}."""
    files = {
        "jsonl": os.path.join(out_dir, "results.jsonl"),
        "csv": os.path.join(out_dir, "results.csv"),
        "summary": os.path.join(out_dir, "summary.md"),
    }
    with open(files["jsonl"], "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")
    cols = _columns(spec, rows)
    with open(files["csv"], "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    with open(files["summary"], "w", encoding="utf-8") as f:
        f.write(summary_markdown(spec, rows, out_dir, plot_files))
    return files


def write_spec(spec: SweepSpec, out_dir: str) -> str:
    """sweep.json: the expanded points (id, benchmark, settings, flags) of this sweep."""
    path = os.path.join(out_dir, "sweep.json")
    data = {
        "name": spec.name,
        "source": spec.source,
        "description": spec.description,
        "timeout_s": spec.timeout_s,
        "env": spec.env,
        "varied": spec.varied,
        "points": [
            {
                "point_id": p.point_id,
                "bench": p.bench,
                "settings": p.settings,
                "flags": list(p.argv),
            }
            for p in spec.points
        ],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    return path
