"""Shared pieces of the offline benchmarks (throughput.py, latency.py).

- workloads: seeded random prompts of the model's vocabulary, `--lengths LO:HI` input ranges, and
  JSONL datasets, all turned into token ids before anything is timed;
- engine flags: one argparse group for every `LLM(...)` knob, and `make_llm(args)`;
- descriptions of the machine (CPU model, cores, memory, load average), the JAX device and the
  package versions, for the results and the `--json` file;
- the HF transformers peer: the same weights in torch (`load_hf_peer`), batched greedy `generate`
  with left padding (`hf_generate`), and per-token timing of one prompt (`hf_latency`);
- `StepProfiler`: wall-clock splits of each engine step (scheduler, host batch building, transfer,
  device step, fetch, bookkeeping) for finding where time goes;
- `markdown_table`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
import time
from typing import Any, Sequence

import numpy as np


# ----- workloads ---------------------------------------------------------------------------------
@dataclasses.dataclass
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int
    prompt: str | None = None  # the text, when the dataset gave text

    @property
    def input_len(self) -> int:
        return len(self.prompt_token_ids)


def parse_lengths(spec: str) -> tuple[int, int]:
    """'32:256' -> (32, 256) (inclusive range); '128' -> (128, 128)."""
    parts = str(spec).split(":")
    try:
        if len(parts) == 1:
            lo = hi = int(parts[0])
        elif len(parts) == 2:
            lo, hi = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"lengths must look like LO:HI or N (e.g. 32:256), got {spec!r}") from None
    if lo < 1 or hi < lo:
        raise ValueError(f"lengths {spec!r}: need 1 <= LO <= HI")
    return lo, hi


def input_lengths(num: int, lo: int, hi: int, seed: int) -> list[int]:
    """`num` input lengths drawn uniformly from [lo, hi] (seeded)."""
    if num < 1:
        raise ValueError(f"number of prompts must be >= 1, got {num}")
    rng = np.random.default_rng(seed)
    return [int(n) for n in rng.integers(lo, hi + 1, size=num)]


def random_token_prompts(lengths: Sequence[int], vocab_size: int, seed: int) -> list[list[int]]:
    """One prompt of random token ids in [0, vocab_size) per length (seeded)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=n).tolist() for n in lengths]


def synthetic_requests(
    num: int, lo: int, hi: int, output_len: int, vocab_size: int, seed: int
) -> list[BenchRequest]:
    lens = input_lengths(num, lo, hi, seed)
    prompts = random_token_prompts(lens, vocab_size, seed + 1)
    return [BenchRequest(p, output_len) for p in prompts]


def load_dataset(path: str, tokenizer: Any, default_output_len: int) -> list[BenchRequest]:
    """A JSONL file: one {"prompt": TEXT or "prompt_token_ids": [...], "output_len": N} a line."""
    reqs = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object")
            out_len = rec.get("output_len", default_output_len)
            if not isinstance(out_len, int) or out_len < 1:
                raise ValueError(f"{path}:{lineno}: output_len must be a positive integer, got {out_len!r}")
            if "prompt_token_ids" in rec:
                ids = rec["prompt_token_ids"]
                if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
                    raise ValueError(f"{path}:{lineno}: prompt_token_ids must be a non-empty list of ints")
                reqs.append(BenchRequest(list(ids), out_len, rec.get("prompt")))
            elif "prompt" in rec:
                if tokenizer is None:
                    raise ValueError(
                        f"{path}:{lineno}: text prompt, but the model has no tokenizer; "
                        "give prompt_token_ids instead"
                    )
                text = rec["prompt"]
                if not isinstance(text, str) or not text:
                    raise ValueError(f"{path}:{lineno}: prompt must be a non-empty string")
                reqs.append(BenchRequest(list(tokenizer.encode(text)), out_len, text))
            else:
                raise ValueError(f"{path}:{lineno}: needs 'prompt' or 'prompt_token_ids'")
    if not reqs:
        raise ValueError(f"{path}: no requests in the dataset")
    return reqs


def workload_summary(reqs: Sequence[BenchRequest]) -> dict:
    ins = [r.input_len for r in reqs]
    outs = [r.output_len for r in reqs]
    return {
        "num_requests": len(reqs),
        "input_tokens": sum(ins),
        "output_tokens": sum(outs),
        "input_len_min": min(ins),
        "input_len_max": max(ins),
        "input_len_mean": sum(ins) / len(ins),
        "output_len_min": min(outs),
        "output_len_max": max(outs),
    }


# ----- engine flags ------------------------------------------------------------------------------
def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--model", default="smollm2-135m", help="smollm2-135m, dummy:NAME, an HF folder or .gguf")
    g.add_argument("--dtype", default="float32", help="auto, float32, bfloat16, float16")
    g.add_argument("--max-num-seqs", type=int, default=256)
    g.add_argument("--max-num-batched-tokens", type=int, default=None)
    g.add_argument("--max-model-len", type=int, default=None,
                   help="default: the longest prompt + output of the workload")
    g.add_argument("--num-gpu-blocks", type=int, default=None, help="KV-cache blocks (override)")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--attention-backend", default=None, choices=("reference", "pallas", "cuda"))
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--seed", type=int, default=0, help="seed of the random prompts")


def load_model_once(args: argparse.Namespace):
    """jaxllm's LoadedModel for `args.model` (loaded once, shared by the engine)."""
    from jaxllm.models.loader import load_model

    return load_model(args.model, dtype=args.dtype)


def make_llm(args: argparse.Namespace, loaded, max_model_len: int):
    from jaxllm import LLM

    return LLM(
        loaded,
        max_model_len=max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_gpu_blocks_override=args.num_gpu_blocks,
        block_size=args.block_size,
        enable_prefix_caching=not args.no_prefix_caching,
        attention_backend=args.attention_backend,
    )


def engine_settings(llm) -> dict:
    """What the engine actually runs with (after its defaults)."""
    cfg = llm.llm_engine.config
    runner = llm.llm_engine.runner
    return {
        "max_num_seqs": cfg.scheduler.max_num_seqs,
        "max_num_batched_tokens": cfg.scheduler.max_num_batched_tokens,
        "max_model_len": cfg.scheduler.max_model_len,
        "block_size": cfg.cache.block_size,
        "num_blocks": runner.num_blocks,
        "enable_prefix_caching": cfg.cache.enable_prefix_caching,
        "attention_backend": runner.backend,
        "dtype": cfg.model.dtype,
    }


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


def machine_line(rec: dict) -> str:
    """One line naming the machine, device, JAX version and load averages of a result record."""
    m, d = rec["machine"], rec["device"]
    simd = ", ".join(m.get("cpu_simd") or []) or "?"
    return (f"machine: {m['cpu_model']} (family/model {m.get('cpu_family_model', '?')}, {simd}; "
            f"{m['cpus_usable']} cores usable, {m['memory_gib']} GiB), device {d['device_kind']} "
            f"({d['backend']}), jax {rec['packages']['jax']}; load average (1, 5, 15 min) before "
            f"{rec['load_average']['before']}, after {rec['load_average']['after']}")


def device_info() -> dict:
    import jax

    devs = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devs[0].device_kind,
        "num_devices": len(devs),
    }


PACKAGES = ("jax", "jaxlib", "flax", "numpy", "transformers", "torch", "gguf", "accelerate")


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
            return f"{v:.3g}" if abs(v) >= 1e4 or abs(v) < 0.01 else f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str, record: dict) -> None:
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=str)
        f.write("\n")


# ----- step profiler -----------------------------------------------------------------------------
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

        self.steps: list[dict] = []  # one record per LLMEngine.step: kind, total, phases (seconds)
        self._cur: dict = {}
        self._undo: list[tuple[Any, str, Any, bool]] = []
        engine = llm.llm_engine
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


# ----- HF transformers peer ----------------------------------------------------------------------
class PeerUnavailable(Exception):
    """The HF peer cannot run this model here (the message says why)."""


def load_hf_peer(model: str, dtype: str, threads: int):
    """The same weights as jaxllm's `model` in HF transformers (torch), eval mode.

    smollm2-135m / .gguf: `from_pretrained(folder, gguf_file=...)` (dequantized, float32);
    an HF folder: `from_pretrained(folder)`; `dummy:NAME`: on a CUDA GPU only, an HF model of the
    preset's config with random weights (speed only).
    """
    from jaxllm.models.loader import resolve_model

    fmt, path = resolve_model(model)
    if fmt == "dummy" and device_info()["backend"] != "gpu":
        raise PeerUnavailable(
            f"{model}: the HF peer of a dummy model runs only on a CUDA GPU (random weights, "
            "speed only); skipped on the CPU"
        )
    import torch
    import transformers

    torch.set_num_threads(threads)
    want = {"auto": torch.float32, "float32": torch.float32, "fp32": torch.float32,
            "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}.get(str(dtype).lower())
    if want is None:
        raise ValueError(f"dtype {dtype!r} is not supported by the HF peer")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if fmt == "gguf":
        folder, name = os.path.split(path)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=want)
    elif fmt == "hf":
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=want)
    elif fmt == "dummy":
        if device != "cuda":
            raise PeerUnavailable(
                f"{model}: the HF peer of a dummy model runs only on a CUDA GPU (random weights, "
                "speed only); skipped on the CPU"
            )
        from jaxllm.models.dummy import PRESETS

        fields = {k: v for k, v in PRESETS[model[len("dummy:"):]].items() if k != "architectures"}
        cfg = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
        with torch.device(device):
            hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=want)
    else:
        raise PeerUnavailable(f"{model}: the HF peer does not load {fmt} checkpoints")
    return hf.to(device).eval()


def _left_pad(batch: Sequence[Sequence[int]], pad_id: int, device: str):
    import torch

    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def _pad_id(hf) -> int:
    gc = hf.generation_config
    for cand in (gc.pad_token_id, gc.eos_token_id, hf.config.eos_token_id, 0):
        if isinstance(cand, list):
            cand = cand[0] if cand else None
        if cand is not None:
            return int(cand)
    return 0


def _sync(hf) -> None:
    import torch

    if hf.device.type == "cuda":
        torch.cuda.synchronize()


def hf_generate(hf, reqs: Sequence[BenchRequest], batch_size: int | None) -> dict:
    """Greedy batched `generate` of every request (left padding + attention mask), exactly
    output_len new tokens each; requests are grouped by output_len, then cut into batches of
    `batch_size` (None: one batch per group). Returns elapsed seconds and token counts."""
    import torch

    pad = _pad_id(hf)
    groups: dict[int, list[BenchRequest]] = {}
    for r in reqs:
        groups.setdefault(r.output_len, []).append(r)
    out_tokens = 0
    elapsed = 0.0
    num_batches = 0
    for out_len, group in sorted(groups.items()):
        bs = batch_size or len(group)
        for i in range(0, len(group), bs):
            chunk = group[i : i + bs]
            ids, mask = _left_pad([r.prompt_token_ids for r in chunk], pad, hf.device)
            _sync(hf)
            t0 = time.perf_counter()
            with torch.no_grad():
                gen = hf.generate(
                    input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                    max_new_tokens=out_len, min_new_tokens=out_len, pad_token_id=pad,
                    temperature=None, top_p=None, top_k=None,
                )
            _sync(hf)
            elapsed += time.perf_counter() - t0
            new = gen.shape[1] - ids.shape[1]
            if new != out_len:
                raise RuntimeError(f"HF generated {new} tokens, expected {out_len}")
            out_tokens += new * len(chunk)
            num_batches += 1
    return {"elapsed_s": elapsed, "output_tokens": out_tokens, "num_batches": num_batches}


def hf_latency(hf, prompt_ids: Sequence[int], output_len: int) -> dict:
    """Batch-1 greedy generate with a timing streamer: the streamer's `put` runs once with the
    prompt, then once per new token, so the gaps between its calls are the per-token times."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class TimingStreamer(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            _sync(hf)
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    ids, mask = _left_pad([list(prompt_ids)], _pad_id(hf), hf.device)
    streamer = TimingStreamer()
    _sync(hf)
    t0 = time.perf_counter()
    with torch.no_grad():
        gen = hf.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
            max_new_tokens=output_len, min_new_tokens=output_len, pad_token_id=_pad_id(hf),
            temperature=None, top_p=None, top_k=None, streamer=streamer,
        )
    end = time.perf_counter()
    if gen.shape[1] - ids.shape[1] != output_len:
        raise RuntimeError("HF generated the wrong number of tokens")
    token_times = streamer.times[1:]  # [0] is the prompt
    return {
        "ttft_s": token_times[0] - t0,
        "decode_s": [b - a for a, b in zip(token_times[:-1], token_times[1:])],
        "total_s": end - t0,
    }
