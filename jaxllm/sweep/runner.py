"""Run a sweep: each point in its own process, failures recorded, finished points skipped.

A point runs as `python -m jaxllm bench BENCH FLAGS --json points/ID.json.part`; on exit status 0
the file is renamed to `points/ID.json`, which marks the point finished: a rerun of the sweep
into the same folder reuses it and runs only the rest (failed points are tried again). A point
that fails (an exception, out of memory, a bad setting, a crash, a timeout) leaves
`points/ID.failed.json` with its error, and the sweep goes on. Every attempt's output is in
`points/ID.log`. After each point the tables are rewritten (results.jsonl, results.csv,
summary.md); the plots are drawn at the end (see report.py and plots.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import site
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jaxllm.process_lifetime import kill_with_parent
from jaxllm.sweep.spec import SweepPoint, SweepSpec

__all__ = ["SweepRun", "run_sweep", "point_command", "error_summary"]

_TAIL_CHARS = 4000
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(:|$)")


@dataclass
class SweepRun:
    out_dir: str
    rows: list[dict]  # one per point, in point order (see report.flatten)
    files: dict[str, str] = field(default_factory=dict)  # what -> path

    @property
    def num_failed(self) -> int:
        return sum(r["status"] != "ok" for r in self.rows)


def point_command(point: SweepPoint, json_path: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "jaxllm", "bench", point.bench, *point.argv, "--json", json_path]


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment, the sweep's `env`, and the folder holding this jaxllm on PYTHONPATH
    when it is a checkout (so the child imports the same jaxllm)."""
    env = dict(os.environ)
    env.update(extra)
    import jaxllm

    root = os.path.dirname(os.path.dirname(os.path.abspath(jaxllm.__file__)))
    site_dirs = {os.path.abspath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
    if root not in site_dirs:
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in parts:
            env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return env


def error_summary(log_tail: str, returncode: int | None, timed_out: bool, timeout_s: float) -> str:
    """One line saying why a point failed, from its exit and the end of its output."""
    if timed_out:
        return f"timed out after {timeout_s:g} s"
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    last_error = next(
        (ln for ln in reversed(lines) if ln.startswith("jaxllm bench") and ": error:" in ln), None
    )
    if last_error is None:  # a traceback ends with "SomeError: message"
        last_error = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln)), None)
    if returncode is not None and returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        why = f"killed by {name}"
        if sig == signal.SIGKILL:
            why += " (out of host memory?)"
        return f"{why}: {last_error}" if last_error else why
    detail = last_error or (lines[-1] if lines else "no output")
    return f"exit status {returncode}: {detail}"


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _run_point(
    point: SweepPoint, pdir: str, timeout_s: float, env: dict[str, str], python: str
) -> dict[str, Any]:
    """Run one point; returns {"status", "record" | "error", "wall_s", ...}."""
    done = os.path.join(pdir, f"{point.point_id}.json")
    part = done + ".part"
    failed = os.path.join(pdir, f"{point.point_id}.failed.json")
    log_path = os.path.join(pdir, f"{point.point_id}.log")
    cmd = point_command(point, part, python)
    for stale in (part, failed):
        if os.path.exists(stale):
            os.remove(stale)
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=kill_with_parent,  # a stopped sweep does not leave its point running
        )
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the point's whole process group
            rc = proc.wait()
    wall = time.perf_counter() - t0
    record = _read_json(part) if rc == 0 and not timed_out else None
    if record is not None:
        os.replace(part, done)
        return {"status": "ok", "record": record, "wall_s": wall, "reused": False}
    with open(log_path, encoding="utf-8", errors="replace") as f:
        tail = f.read()[-_TAIL_CHARS:]
    if rc == 0 and not timed_out:
        error = "exit status 0 but no result file was written"
    else:
        error = error_summary(tail, rc, timed_out, timeout_s)
    info = {
        "status": "failed",
        "error": error,
        "returncode": rc,
        "timed_out": timed_out,
        "wall_s": wall,
        "command": cmd,
        "log_tail": tail,
        "reused": False,
    }
    with open(failed, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return info


def run_sweep(
    spec: SweepSpec,
    out_dir: str,
    *,
    retry_failed: bool = True,
    python: str = sys.executable,
    log: Callable[[str], None] = print,
    plots: bool = True,
) -> SweepRun:
    """Run every point of `spec` into `out_dir` (see the module doc) and write the reports."""
    from jaxllm.sweep import report

    pdir = os.path.join(out_dir, "points")
    os.makedirs(pdir, exist_ok=True)
    report.write_spec(spec, out_dir)
    env = _child_env(spec.env)
    outcomes: list[dict[str, Any]] = []
    n = len(spec.points)
    for i, point in enumerate(spec.points):
        label = point.label(spec.varied_in(point.bench)) or "(single point)"
        done = _read_json(os.path.join(pdir, f"{point.point_id}.json"))
        prev_fail = _read_json(os.path.join(pdir, f"{point.point_id}.failed.json"))
        if done is not None:
            log(f"[{i + 1}/{n}] {point.point_id} {label}: finished before, skipped")
            outcome = {"status": "ok", "record": done, "wall_s": None, "reused": True}
        elif prev_fail is not None and not retry_failed:
            log(f"[{i + 1}/{n}] {point.point_id} {label}: failed before, not retried")
            outcome = prev_fail | {"reused": True}
        else:
            log(f"[{i + 1}/{n}] {point.point_id} {label}: running")
            outcome = _run_point(point, pdir, spec.timeout_s, env, python)
            if outcome["status"] == "ok":
                log(f"    ok in {outcome['wall_s']:.1f} s")
            else:
                log(f"    FAILED ({outcome['error']}); log: {pdir}/{point.point_id}.log")
        outcomes.append(outcome)
        rows = [report.flatten(p, o) for p, o in zip(spec.points, outcomes)]
        files = report.write_tables(spec, rows, out_dir)
    result = SweepRun(out_dir=out_dir, rows=rows, files=files)
    if plots:
        from jaxllm.sweep.plots import draw_plots

        pngs = draw_plots(spec, rows, os.path.join(out_dir, "plots"))
        result.files = report.write_tables(spec, rows, out_dir, plot_files=pngs) | pngs
    log(f"{n - result.num_failed}/{n} points ok; results in {out_dir}")
    return result
