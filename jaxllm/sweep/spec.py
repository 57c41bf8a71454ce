"""Sweep files: a YAML grid (or list) of benchmark points, expanded into `SweepPoint`s.

    name: cpu_smollm2            # default: the file's stem
    bench: throughput            # default benchmark of every point: throughput | latency
    base:                        # flags of every point (`jaxllm bench BENCH --help`), dashes or
      model: smollm2-135m        #   underscores; true -> `--flag`, false/null -> left out; a
                                 #   JSON-object flag (speculative_config) takes a mapping
      num_prompts: 16
    grid:                        # cartesian product: one point per combination
      max_num_seqs: [1, 4, 16]
      workload:                  # a list of mappings: each is merged into the point
        - {input_len: 64, output_len: 32}
        - {input_len: 256, output_len: 32}
    points:                      # explicit points (each crossed with the grid, if both given);
      - {bench: latency, batch_size: 1}
      - bench: latency           # a point may carry its own grid (crossed with the top one)
        grid: {batch_size: [8, 32]}
    plots:                       # optional; default: one plot per benchmark (see plots.py)
      - {bench: throughput, x: max_num_seqs, y: output_tokens_per_s}
    timeout_s: 1800              # per point (default 3600)
    env: {JAX_PLATFORMS: cpu}    # extra environment of the point processes

A point is `base | listed point | grid combination`; a key set by both a listed point and a grid
(or by two grids) is an error. Keys are checked against the benchmark's own flags before anything
runs (a typo stops the sweep at once); values are not: a bad value fails its point when it runs,
and the sweep records that and goes on. `json` is set by the runner. Host-side: no JAX.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Any

from jaxllm.entrypoints.cli_args import JSONObjectArg

__all__ = [
    "SWEEP_BENCHES",
    "SweepPoint",
    "PlotSpec",
    "SweepSpec",
    "load_sweep",
    "parse_sweep",
    "bench_parser",
]

SWEEP_BENCHES = ("throughput", "latency")
_TOP_KEYS = {"name", "description", "bench", "base", "grid", "points", "plots", "timeout_s", "env"}
_PLOT_KEYS = {"bench", "x", "y", "series", "title", "logx", "logy"}
_RESERVED = {"json", "help"}
DEFAULT_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class SweepPoint:
    bench: str  # "throughput" | "latency"
    settings: dict[str, Any]  # flag dest -> value (None/False flags already dropped)
    argv: tuple[str, ...]  # the benchmark's flags for these settings (without --json)
    point_id: str  # "<bench>-<8 hex digits of the settings' hash>": stable across reruns

    def label(self, keys: list[str]) -> str:
        return ", ".join(f"{k}={self.settings[k]}" for k in keys if k in self.settings)


@dataclass(frozen=True)
class PlotSpec:
    x: str
    y: str
    bench: str | None = None  # None: every benchmark whose rows have `y`
    series: tuple[str, ...] | None = None  # None: every other varied setting
    title: str | None = None
    logx: bool = False
    logy: bool = False


@dataclass
class SweepSpec:
    name: str
    points: list[SweepPoint]
    varied: list[str]  # settings that take more than one value over the points, in first-seen order
    plots: list[PlotSpec] = field(default_factory=list)
    timeout_s: float = DEFAULT_TIMEOUT_S
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def benches(self) -> list[str]:
        return list(dict.fromkeys(p.bench for p in self.points))

    def varied_in(self, bench: str) -> list[str]:
        """The varied settings that differ among the points of one benchmark."""
        pts = [p for p in self.points if p.bench == bench]
        return [
            k
            for k in self.varied
            if k != "bench" and len({json.dumps(p.settings.get(k), default=str) for p in pts}) > 1
        ]

    def shared_in(self, bench: str) -> dict[str, Any]:
        """Settings with one value over every point of one benchmark."""
        pts = [p for p in self.points if p.bench == bench]
        return {
            k: v
            for k, v in pts[0].settings.items()
            if all(k in p.settings and p.settings[k] == v for p in pts)
        }


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def bench_parser(bench: str) -> argparse.ArgumentParser:
    """The argparse parser of `jaxllm bench <bench>` (built once)."""
    if bench not in SWEEP_BENCHES:
        raise ValueError(f"bench must be one of {', '.join(SWEEP_BENCHES)}, got {bench!r}")
    if bench not in _PARSERS:
        if bench == "throughput":
            from jaxllm.benchmarks.throughput import add_args
        else:
            from jaxllm.benchmarks.latency import add_args
        p = argparse.ArgumentParser(allow_abbrev=False, prog=f"jaxllm bench {bench}")
        add_args(p)
        _PARSERS[bench] = p
    return _PARSERS[bench]


def _options(bench: str) -> dict[str, argparse.Action]:
    """'max_num_seqs' -> its action, for every long option of the benchmark."""
    out: dict[str, argparse.Action] = {}
    for action in bench_parser(bench)._actions:  # argparse offers no public listing
        for opt in action.option_strings:
            if opt.startswith("--"):
                out[opt[2:].replace("-", "_")] = action
    return out


def _to_argv(
    bench: str, settings: dict[str, Any], where: str
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(kept settings, flags) of one point; ValueError naming an unknown key or a bad value."""
    options = _options(bench)
    kept: dict[str, Any] = {}
    argv: list[str] = []
    for key, value in settings.items():
        if key in _RESERVED:
            raise ValueError(f"{where}: {key!r} is set by the sweep runner, not the sweep file")
        if key not in options:
            raise ValueError(
                f"{where}: unknown setting {key!r} for `jaxllm bench {bench}` "
                f"(known: {', '.join(sorted(k for k in options if k not in _RESERVED))})"
            )
        action = options[key]
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(action.type, JSONObjectArg):
            argv += [flag, json.dumps(value)]  # a flag whose value is a JSON object
            kept[key] = value
            continue
        if isinstance(value, (list, dict)):
            raise ValueError(
                f"{where}: setting {key!r} must be a single value, got {value!r} "
                "(put lists under `grid`)"
            )
        if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise ValueError(
                    f"{where}: setting {key!r} is a switch: true or false, got {value!r}"
                )
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(flag if value else "--no-" + key.replace("_", "-"))
            elif value:
                argv.append(flag)
            else:
                continue
        else:
            argv += [flag, _text(value)]
        kept[key] = value
    return kept, tuple(argv)


def _text(value: Any) -> str:
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    return str(value)


def _norm_keys(mapping: Any, where: str) -> dict[str, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ValueError(f"{where} must be a mapping of setting names to values, got {mapping!r}")
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        key = str(k).replace("-", "_")
        if key in out:
            raise ValueError(f"{where}: setting {key!r} given twice")
        out[key] = v
    return out


def _json_object_settings() -> set[str]:
    """Settings whose value is a JSON object (`speculative_config`): a mapping under such a
    grid key is one value, not a bundle of keys. Engine flags: the same in every benchmark."""
    return {
        key
        for key, action in _options(SWEEP_BENCHES[0]).items()
        if isinstance(action.type, JSONObjectArg)
    }


def _grid_combinations(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """One mapping per combination; a list item that is a mapping is merged (a bundle of keys),
    except under a key whose value is a JSON object."""
    axes = []
    objects = _json_object_settings()
    for key, values in grid.items():
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise ValueError(f"grid: {key!r} has an empty list")
        axes.append(
            [
                _norm_keys(v, f"grid: {key!r}")
                if isinstance(v, dict) and key not in objects
                else {key: v}
                for v in values
            ]
        )
    combos = []
    for choice in itertools.product(*axes):
        merged: dict[str, Any] = {}
        for part in choice:
            clash = set(part) & set(merged)
            if clash:
                raise ValueError(f"grid: setting {sorted(clash)[0]!r} comes from two grid keys")
            merged.update(part)
        combos.append(merged)
    return combos


def _point_id(bench: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"bench": bench, "settings": settings}, sort_keys=True, default=str)
    return f"{bench}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def _plots(raw: Any) -> list[PlotSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("plots must be a list of {x, y, bench, series, title} mappings")
    out = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict) or "x" not in p or "y" not in p:
            raise ValueError(f"plots[{i}]: needs at least 'x' and 'y'")
        unknown = set(p) - _PLOT_KEYS
        if unknown:
            raise ValueError(f"plots[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        series = p.get("series")
        if series is not None and not isinstance(series, list):
            raise ValueError(f"plots[{i}]: series must be a list of setting names")
        out.append(
            PlotSpec(
                x=str(p["x"]).replace("-", "_"),
                y=str(p["y"]),
                bench=p.get("bench"),
                series=tuple(series) if series is not None else None,
                title=p.get("title"),
                logx=bool(p.get("logx", False)),
                logy=bool(p.get("logy", False)),
            )
        )
    return out


def parse_sweep(data: Any, name: str = "sweep", source: str = "") -> SweepSpec:
    """A SweepSpec from the parsed YAML mapping (see the module doc); ValueError on mistakes."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{source or 'sweep'}: a sweep file holds a mapping (name, base, grid, ...)"
        )
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ValueError(
            f"unknown top-level key(s) {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(sorted(_TOP_KEYS))})"
        )
    base = _norm_keys(data.get("base"), "base")
    grid = _norm_keys(data.get("grid"), "grid")
    listed = data.get("points")
    if listed is not None and (not isinstance(listed, list) or not listed):
        raise ValueError("points must be a non-empty list of mappings")
    listed_points = [_norm_keys(p, f"points[{i}]") for i, p in enumerate(listed or [{}])]
    combos = _grid_combinations(grid) if grid else [{}]
    default_bench = data.get("bench", base.pop("bench", "throughput"))

    points: list[SweepPoint] = []
    seen: dict[str, int] = {}
    for i, listed_point in enumerate(listed_points):
        own_grid = _norm_keys(listed_point.pop("grid", None), f"points[{i}].grid")
        own = _grid_combinations(own_grid) if own_grid else [{}]
        for top, sub in itertools.product(combos, own):
            combo = top | sub
            clash = (set(listed_point) | set(top)) & set(sub) or set(listed_point) & set(top)
            if clash:
                raise ValueError(f"points[{i}]: setting {sorted(clash)[0]!r} is also a grid key")
            settings = base | listed_point | combo
            bench = settings.pop("bench", default_bench)
            where = f"point {len(points)} ({bench})"
            if bench not in SWEEP_BENCHES:
                raise ValueError(
                    f"{where}: bench must be one of {', '.join(SWEEP_BENCHES)}, got {bench!r}"
                )
            kept, argv = _to_argv(bench, settings, where)
            pid = _point_id(bench, kept)
            if pid in seen:
                raise ValueError(f"{where} repeats point {seen[pid]} (same benchmark and settings)")
            seen[pid] = len(points)
            points.append(SweepPoint(bench=bench, settings=kept, argv=argv, point_id=pid))

    values: dict[str, set] = {}
    for p in points:
        for k, v in p.settings.items():
            values.setdefault(k, set()).add(json.dumps(v, default=str))
    keys_in_order = list(dict.fromkeys(k for p in points for k in p.settings))
    varied = [
        k for k in keys_in_order if len(values[k]) > 1 or any(k not in p.settings for p in points)
    ]
    if len({p.bench for p in points}) > 1:
        varied.insert(0, "bench")

    timeout = data.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout!r}")
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise ValueError("env must be a mapping of environment variables to values")
    return SweepSpec(
        name=str(data.get("name", name)),
        points=points,
        varied=varied,
        plots=_plots(data.get("plots")),
        timeout_s=float(timeout),
        env={str(k): str(v) for k, v in env.items()},
        description=str(data.get("description", "")),
        source=source,
    )


def load_sweep(path: str) -> SweepSpec:
    """Read and expand a sweep YAML file; ValueError naming the file on any mistake."""
    from jaxllm.entrypoints.cli_args import _yaml_load_strict  # rejects duplicate keys

    if not os.path.isfile(path):
        raise ValueError(f"sweep file not found: {path}")
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = _yaml_load_strict(f)
    except yaml.YAMLError as e:
        raise ValueError(f"sweep file {path} is not valid YAML: {e}") from None
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        return parse_sweep(data, name=stem, source=os.path.abspath(path))
    except ValueError as e:
        raise ValueError(f"sweep file {path}: {e}") from None
