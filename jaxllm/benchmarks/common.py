"""What every benchmark result record shares: the machine (CPU model, cores, memory), the JAX
device, package versions and load averages; statistics in milliseconds; Markdown tables; JSON out.

Nothing here imports JAX at module level (`device_info` imports it when called).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np


# ----- machine, device, packages -----------------------------------------------------------------
def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo_fields().get("model name") or platform.processor() or platform.machine()


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def machine_info() -> dict:
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 2**20, 1)
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = _cpuinfo_fields()
    flags = set(info.get("flags", "").split())
    return {
        "cpu_model": cpu_model(),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cpu_simd": [f for f in SIMD_FLAGS if f in flags],
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def engine_line(e: dict, with_prefix_caching: bool = True) -> str:
    """One line of what an engine of a result record ran with (`rec["engine"]` entries)."""
    caching = f"prefix caching {e['enable_prefix_caching']}, " if with_prefix_caching else ""
    return (
        f"engine: max_num_seqs {e['max_num_seqs']}, max_num_batched_tokens "
        f"{e['max_num_batched_tokens']}, max_model_len {e['max_model_len']}, KV blocks "
        f"{e['num_blocks']} x {e['block_size']}, {caching}attention {e['attention_backend']}"
    )


def machine_line(rec: dict) -> str:
    """One line naming the machine, device, JAX version and load averages of a result record."""
    m, d = rec["machine"], rec["device"]
    simd = ", ".join(m.get("cpu_simd") or []) or "?"
    return (
        f"machine: {m['cpu_model']} (family/model {m.get('cpu_family_model', '?')}, {simd}; "
        f"{m['cpus_usable']} cores usable, {m['memory_gib']} GiB), device {d['device_kind']} "
        f"({d['backend']}), jax {rec['packages']['jax']}; load average (1, 5, 15 min) before "
        f"{rec['load_average']['before']}, after {rec['load_average']['after']}"
    )


def device_info() -> dict:
    import jax

    devs = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devs[0].device_kind,
        "num_devices": len(devs),
    }


PACKAGES = (
    "jaxllm",
    "jax",
    "jaxlib",
    "flax",
    "numpy",
    "transformers",
    "torch",
    "gguf",
    "accelerate",
    "matplotlib",
)


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ----- statistics and printing -------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize_ms(values_s: Sequence[float]) -> dict:
    """mean / p50 / p90 / min / max of seconds, in milliseconds."""
    if not values_s:
        return {}
    ms = [v * 1e3 for v in values_s]
    return {
        "mean_ms": statistics.fmean(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "count": len(ms),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return (
                f"{v:.3g}"
                if abs(v) >= 1e4 or abs(v) < 0.01
                else f"{v:.2f}"
                if abs(v) < 100
                else f"{v:.1f}"
            )
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str, record: dict) -> None:
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=str)
        f.write("\n")


def environment_record(load_before: list[float], device: dict | None = None) -> dict:
    """The record fields naming where a result was measured: load averages (before the run and
    now), machine, JAX device (`device`, else asked of JAX now) and package versions."""
    return {
        "load_average": {"before": load_before, "after": load_average()},
        "machine": machine_info(),
        "device": device if device is not None else device_info(),
        "packages": package_versions(),
    }
