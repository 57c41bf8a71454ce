"""`StepProfiler`: wall-clock splits of each engine step (scheduler, host batch building, sampling
metadata, host->device transfer, the jitted device step, device->host transfer, scheduler update,
output processing), for finding where time goes (`--profile`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from jaxllm.benchmarks.common import markdown_table

PHASES = (
    "schedule",  # Scheduler.schedule
    "build_batch",  # batch_builder.build_host_batch
    "sampling_md",  # sampling_metadata.build_sampling_metadata
    "device_put",  # the one host->device transfer
    "device_step",  # the jitted step, until its outputs are ready
    "device_get",  # the one device->host transfer
    "update",  # Scheduler.update_from_output
    "process",  # detokenize, stop checks, RequestOutputs
)
STEP_KINDS = ("decode", "prefill")  # decode: every scheduled sequence has one new token


class StepProfiler:
    """Wraps the engine's per-step phases with perf_counter timers (measurement only).

    The wrappers are set on the engine's own objects and on the names `jaxllm.engine.model_runner`
    looks up, and removed by `close()`. The device step is timed until its outputs are ready, so
    `device_step` is device time plus dispatch; a step's total minus its phases is the rest of the
    Python in `LLMEngine.step`. Each step is recorded as "decode" (every scheduled sequence
    computes one token) or "prefill" (some prompt tokens in the batch).
    """

    def __init__(self, llm) -> None:
        import jax

        import jaxllm.engine.model_runner as mr

        engine = llm.llm_engine
        if getattr(engine, "async_scheduling", False):
            raise ValueError(
                "--profile waits for each device step to finish, which undoes the overlap that "
                "--async-scheduling measures; profile without --async-scheduling"
            )
        self.steps: list[dict] = []  # one record per LLMEngine.step: kind, total, phases (seconds)
        self._cur: dict = {}
        self._undo: list[tuple[Any, str, Any, bool]] = []
        self._wrap(engine, "step", None)
        self._wrap(engine.scheduler, "schedule", "schedule")
        self._wrap(mr, "build_host_batch", "build_batch")
        self._wrap(mr, "build_sampling_metadata", "sampling_md")
        self._wrap(engine.runner, "_step", "device_step", block=jax.block_until_ready)
        self._wrap(engine.scheduler, "update_from_output", "update")
        self._wrap(engine, "_process", "process")
        self._wrap_jax_transfers(mr)

    def _record(self, phase: str | None, seconds: float, out: Any) -> None:
        if phase is None:  # the whole step ends
            if "kind" in self._cur:  # an empty schedule runs no model step: not recorded
                self.steps.append(self._cur | {"total": seconds})
            self._cur = {}
            return
        self._cur[phase] = self._cur.get(phase, 0.0) + seconds
        if phase == "build_batch":
            self._cur["kind"] = "decode" if out.decode_only else "prefill"

    def _wrap(self, obj: Any, name: str, phase: str | None, block=None) -> None:
        had_own = name in getattr(obj, "__dict__", {})
        orig = getattr(obj, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            out = orig(*a, **k)
            if block is not None:
                block(out)
            self._record(phase, time.perf_counter() - t0, out)
            return out

        for attr in ("_cache_size", "lower"):  # keep a jitted function's introspection working
            if hasattr(orig, attr):
                setattr(timed, attr, getattr(orig, attr))
        setattr(obj, name, timed)
        self._undo.append((obj, name, orig, had_own))

    def _wrap_jax_transfers(self, mr) -> None:
        """device_put / device_get are looked up on the `jax` module model_runner imported:
        give model_runner a copy of that module with timed versions (no other code sees it)."""
        import types

        real = mr.jax
        proxy = types.ModuleType("jax_timed")
        proxy.__dict__.update(real.__dict__)

        def device_put(*a, **k):
            t0 = time.perf_counter()
            out = real.device_put(*a, **k)
            real.block_until_ready(out)
            self._record("device_put", time.perf_counter() - t0, out)
            return out

        def device_get(*a, **k):
            t0 = time.perf_counter()
            out = real.device_get(*a, **k)
            self._record("device_get", time.perf_counter() - t0, out)
            return out

        proxy.device_put, proxy.device_get = device_put, device_get
        mr.jax = proxy
        self._undo.append((mr, "jax", real, True))

    def close(self) -> None:
        for obj, name, orig, had_own in reversed(self._undo):
            if had_own:
                setattr(obj, name, orig)
            else:
                delattr(obj, name)
        self._undo.clear()

    def summary(self) -> list[dict]:
        """Per step kind: {"kind", "steps", "total_s", "rows": [{phase, median_ms, share}]}; the
        share is of that kind's summed step time; the last rows are the rest of the engine's
        Python (median ms) and the whole step (median ms)."""
        out = []
        for kind in STEP_KINDS:
            steps = [s for s in self.steps if s["kind"] == kind]
            if not steps:
                continue
            total = sum(s["total"] for s in steps)
            rows = []
            for p in PHASES:
                v = [s.get(p, 0.0) for s in steps]
                rows.append(_row(p, statistics.median(v), sum(v) / total))
            rest = [s["total"] - sum(s.get(p, 0.0) for p in PHASES) for s in steps]
            rows.append(_row("other engine Python", statistics.median(rest), sum(rest) / total))
            rows.append(_row("whole step", statistics.median(s["total"] for s in steps), 1.0))
            out.append({"kind": kind, "steps": len(steps), "total_s": total, "rows": rows})
        return out


def profile_table(summary: Sequence[dict]) -> str:
    """One Markdown table: a column pair (median ms, share) per step kind."""
    if not summary:
        return "(no steps recorded)"
    headers = ["phase"]
    for k in summary:
        headers += [f"{k['kind']} steps ({k['steps']}): median ms", "share"]
    rows = []
    for i, first in enumerate(summary[0]["rows"]):
        row: list[Any] = [first["phase"]]
        for k in summary:
            r = k["rows"][i]
            row += [r["median_ms"], f"{r['share'] * 100:.1f}%"]
        rows.append(row)
    return markdown_table(headers, rows)


def _row(phase: str, median_s: float, share: float) -> dict:
    return {"phase": phase, "median_ms": median_s * 1e3, "share": share}
