"""PNG plots of a sweep's rows (matplotlib, Agg canvas; no display needed).

Each plot draws one metric `y` against one setting `x`, one line per combination of the other
varied settings (its `series`), for the points that finished. Where the rows carry the HF peer's
value of the same metric (`hf_<y>`), it is drawn dashed beside jaxllm's.

Without `plots:` in the sweep file, each benchmark gets its default plots against the first
varied setting of X_PREFERENCE (else the first varied numeric setting): throughput ->
output_tokens_per_s; latency -> decode_ms_per_token_mean and ttft_ms_mean.
"""

from __future__ import annotations

import os
from typing import Any

from jaxllm.sweep.spec import PlotSpec, SweepSpec

__all__ = ["X_PREFERENCE", "DEFAULT_Y", "default_plots", "draw_plots"]

X_PREFERENCE = (
    "max_num_seqs",
    "batch_size",
    "max_num_batched_tokens",
    "num_prompts",
    "input_len",
    "output_len",
    "block_size",
    "request_rate",
)
DEFAULT_Y = {
    "throughput": ("output_tokens_per_s",),
    "latency": ("decode_ms_per_token_mean", "ttft_ms_mean"),
}
Y_LABELS = {
    "output_tokens_per_s": "output tokens/s",
    "total_tokens_per_s": "total tokens/s",
    "requests_per_s": "requests/s",
    "decode_ms_per_token_mean": "decode ms/token (mean)",
    "ttft_ms_mean": "prefill / TTFT ms (mean)",
}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _varies(rows: list[dict], key: str) -> bool:
    return len({repr(r.get(key)) for r in rows}) > 1


def default_plots(spec: SweepSpec, rows: list[dict]) -> list[PlotSpec]:
    out = []
    for bench, ys in DEFAULT_Y.items():
        mine = [r for r in rows if r["bench"] == bench and r["status"] == "ok"]
        if len(mine) < 2:
            continue
        candidates = [k for k in X_PREFERENCE if k in spec.varied and _varies(mine, k)]
        candidates += [
            k
            for k in spec.varied
            if k not in candidates
            and k != "bench"
            and _varies(mine, k)
            and all(_is_num(r.get(k)) for r in mine)
        ]
        if not candidates:
            continue
        out += [PlotSpec(x=candidates[0], y=y, bench=bench) for y in ys]
    return out


def _series_label(keys: list[str], row: dict) -> str:
    return ", ".join(f"{k}={row.get(k)}" for k in keys) or "jaxllm"


def _draw(spec: SweepSpec, plot: PlotSpec, rows: list[dict], path: str) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mine = [
        r
        for r in rows
        if r["status"] == "ok"
        and (plot.bench is None or r["bench"] == plot.bench)
        and r.get(plot.x) is not None
        and _is_num(r.get(plot.y))
    ]
    if not mine:
        return False
    if plot.series is not None:
        series_keys = [k for k in plot.series if k != plot.x]
    else:
        series_keys = [k for k in spec.varied if k not in (plot.x, "bench") and _varies(mine, k)]
    numeric_x = all(_is_num(r[plot.x]) for r in mine)
    categories = sorted({str(r[plot.x]) for r in mine})

    def xpos(r: dict) -> float:
        return float(r[plot.x]) if numeric_x else float(categories.index(str(r[plot.x])))

    groups: dict[str, list[dict]] = {}
    for r in mine:
        groups.setdefault(_series_label(series_keys, r), []).append(r)
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    peer_key = f"hf_{plot.y}"
    for label, members in groups.items():
        members.sort(key=xpos)
        xs = [xpos(r) for r in members]
        line = ax.plot(xs, [r[plot.y] for r in members], marker="o", label=label)[0]
        peer = [(xpos(r), r[peer_key]) for r in members if _is_num(r.get(peer_key))]
        if peer:
            ax.plot(
                [p[0] for p in peer],
                [p[1] for p in peer],
                marker="x",
                linestyle="--",
                color=line.get_color(),
                label=f"HF transformers ({label})",
            )
    if not numeric_x:
        ax.set_xticks(range(len(categories)), categories)
    if plot.logx and numeric_x:
        ax.set_xscale("log", base=2)
    if plot.logy:
        ax.set_yscale("log")
    ax.set_xlabel(plot.x)
    ax.set_ylabel(Y_LABELS.get(plot.y, plot.y))
    ax.set_title(
        plot.title
        or f"{spec.name}: {plot.bench or 'all'} {Y_LABELS.get(plot.y, plot.y)} vs {plot.x}",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    if len(groups) > 1 or any(_is_num(r.get(peer_key)) for r in mine):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


def draw_plots(spec: SweepSpec, rows: list[dict], plot_dir: str) -> dict[str, str]:
    """Draw the sweep's plots (its `plots:` or the defaults); returns {name: PNG path}."""
    plots = spec.plots or default_plots(spec, rows)
    out: dict[str, str] = {}
    if not plots:
        return out
    os.makedirs(plot_dir, exist_ok=True)
    for plot in plots:
        name = f"{plot.bench or 'all'}_{plot.y}_vs_{plot.x}"
        path = os.path.join(plot_dir, name + ".png")
        if _draw(spec, plot, rows, path):
            out[name] = path
    return out
