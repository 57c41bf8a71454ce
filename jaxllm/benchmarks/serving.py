"""Serving benchmark: streaming /v1/completions requests against a running jaxllm (or any
OpenAI-compatible) server, sent all at once or at a Poisson rate.

    jaxllm serve smollm2-135m --port 8000 &
    jaxllm bench serve --base-url http://127.0.0.1:8000 --num-prompts 200 \
        --request-rate 8 --input-len 64:256 --output-len 32:128

Prompts are seeded random token ids (`--vocab-range`), so input lengths are exact; with
`--ignore-eos` (default) output lengths are exact too. Each request streams with
`stream_options={"include_usage": true, "continuous_usage_stats": true}`, so every chunk tells how
many tokens have arrived: a chunk carrying several tokens (a merged delta) counts them all.

Per request: TTFT = first token-bearing chunk - send time; TPOT = (latency - TTFT) / (output
tokens - 1); ITL = gaps between token-bearing chunks. Printed: request throughput, output tokens/s,
total tokens/s, and mean / p50 / p90 / p99 of TTFT, TPOT, ITL and end-to-end latency (ms).
`--json FILE` writes everything, with the per-request records, this (client) machine and the
package versions.

Only the standard library and httpx (imported when a benchmark runs) are used;
`benchmark(config)` is the importable entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

PERCENTILES = (50, 90, 99)


@dataclass
class BenchConfig:
    base_url: str = "http://127.0.0.1:8000"
    model: str | None = None  # default: the server's first model
    api_key: str | None = None
    num_prompts: int = 100
    request_rate: float = math.inf  # requests/s (Poisson); inf = all at once
    input_len: tuple[int, int] = (128, 128)
    output_len: tuple[int, int] = (64, 64)
    vocab_range: tuple[int, int] = (1000, 20000)
    ignore_eos: bool = True
    temperature: float = 0.0
    max_concurrency: int | None = None
    seed: int = 0
    timeout_s: float = 600.0


@dataclass
class RequestRecord:
    input_len: int
    max_tokens: int
    ok: bool = False
    error: str = ""
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)  # seconds between token-bearing chunks


def parse_range(spec: str, name: str) -> tuple[int, int]:
    """'32:256' -> (32, 256); '128' -> (128, 128)."""
    parts = str(spec).split(":")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or lo < 1 or hi < lo:
        raise ValueError(f"{name} must look like N or LO:HI with 1 <= LO <= HI, got {spec!r}")
    return lo, hi


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """mean and percentiles, in milliseconds."""
    out = {"mean_ms": 1000.0 * sum(values) / len(values) if values else 0.0}
    for q in PERCENTILES:
        out[f"p{q}_ms"] = 1000.0 * percentile(values, q)
    return out


def make_workload(cfg: BenchConfig) -> list[tuple[list[int], int]]:
    """Seeded (prompt token ids, max_tokens) pairs."""
    rng = random.Random(cfg.seed)
    lo, hi = cfg.vocab_range
    work = []
    for _ in range(cfg.num_prompts):
        n_in = rng.randint(*cfg.input_len)
        work.append(([rng.randrange(lo, hi) for _ in range(n_in)], rng.randint(*cfg.output_len)))
    return work


async def _one(
    client: httpx.AsyncClient, cfg: BenchConfig, model: str, prompt: list[int], max_tokens: int
) -> RequestRecord:
    import httpx

    rec = RequestRecord(input_len=len(prompt), max_tokens=max_tokens)
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": cfg.temperature,
        "stream": True,
        "ignore_eos": cfg.ignore_eos,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    start = time.perf_counter()
    last = None
    tokens = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                rec.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode()[:200]}"
                return rec
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    rec.error = chunk["error"].get("message", "error")
                    return rec
                usage = chunk.get("usage") or {}
                now_tokens = usage.get("completion_tokens", tokens)
                if now_tokens > tokens:
                    now = time.perf_counter()
                    if last is None:
                        rec.ttft = now - start
                    else:
                        rec.itl.append(now - last)
                    last = now
                    tokens = now_tokens
        rec.latency = time.perf_counter() - start
        rec.output_tokens = tokens
        rec.ok = True
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        rec.error = f"{type(e).__name__}: {e}"
    return rec


async def _first_model(client: httpx.AsyncClient) -> str:
    resp = await client.get("/v1/models")
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


async def benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; returns the summary dict (with per-request records)."""
    import httpx

    work = make_workload(cfg)
    rng = random.Random(cfg.seed + 1)
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limits = httpx.Limits(
        max_connections=cfg.max_concurrency or max(1, cfg.num_prompts),
        max_keepalive_connections=cfg.max_concurrency or max(1, cfg.num_prompts),
    )
    sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
    async with httpx.AsyncClient(
        base_url=cfg.base_url, headers=headers, limits=limits, timeout=httpx.Timeout(cfg.timeout_s)
    ) as client:
        model = cfg.model or await _first_model(client)

        async def run(prompt: list[int], max_tokens: int) -> RequestRecord:
            if sem is None:
                return await _one(client, cfg, model, prompt, max_tokens)
            async with sem:
                return await _one(client, cfg, model, prompt, max_tokens)

        tasks = []
        t0 = time.perf_counter()
        for prompt, max_tokens in work:
            tasks.append(asyncio.ensure_future(run(prompt, max_tokens)))
            if math.isfinite(cfg.request_rate) and cfg.request_rate > 0:
                await asyncio.sleep(rng.expovariate(cfg.request_rate))
        records = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    return _results(cfg, model, records, duration)


def _results(cfg: BenchConfig, model: str, records: list[RequestRecord], duration: float) -> dict:
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.input_len for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return {
        "model": model,
        "config": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(cfg).items()
            if k != "api_key"
        },
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": sorted({r.error for r in records if not r.ok})[:10],
        "duration_s": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "output_throughput": out_tokens / duration if duration > 0 else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration > 0 else 0.0,
        "ttft": summarize([r.ttft for r in ok]),
        "tpot": summarize(tpot),
        "itl": summarize([x for r in ok for x in r.itl]),
        "e2e_latency": summarize([r.latency for r in ok]),
        "requests": [asdict(r) for r in records],
    }


def format_results(res: dict) -> str:
    rate = res["config"]["request_rate"]
    lines = [
        f"model: {res['model']}   requests: {res['completed']} ok, {res['failed']} failed   "
        f"rate: {'all at once' if not math.isfinite(rate) else f'{rate:g}/s (Poisson)'}",
        f"duration:                 {res['duration_s']:.2f} s",
        f"input / output tokens:    {res['total_input_tokens']} / {res['total_output_tokens']}",
        f"request throughput:       {res['request_throughput']:.2f} req/s",
        f"output token throughput:  {res['output_throughput']:.1f} tok/s",
        f"total token throughput:   {res['total_token_throughput']:.1f} tok/s",
        "",
        f"{'(ms)':<14}{'mean':>10}" + "".join(f"{'p' + str(q):>10}" for q in PERCENTILES),
    ]
    for name, key in (
        ("TTFT", "ttft"),
        ("TPOT", "tpot"),
        ("ITL", "itl"),
        ("E2E latency", "e2e_latency"),
    ):
        s = res[key]
        lines.append(
            f"{name:<14}{s['mean_ms']:>10.1f}"
            + "".join(f"{s[f'p{q}_ms']:>10.1f}" for q in PERCENTILES)
        )
    if res["errors"]:
        lines.append("errors: " + "; ".join(res["errors"]))
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    """The options of `jaxllm bench serve` / `python -m jaxllm.benchmarks.serving`."""
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root (no /v1)")
    p.add_argument("--model", help="model name (default: the server's first)")
    p.add_argument("--api-key", help="Bearer key, if the server wants one")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="requests per second, Poisson arrivals (default inf: all at once)",
    )
    p.add_argument("--input-len", default="128", help="prompt tokens, N or LO:HI (default 128)")
    p.add_argument("--output-len", default="64", help="max_tokens, N or LO:HI (default 64)")
    p.add_argument("--vocab-range", default="1000:20000", help="token ids drawn from [LO, HI)")
    p.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at eos")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-concurrency", type=int, help="most requests in flight at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    p.add_argument(
        "--json", metavar="FILE", help="write the results (and per-request records) here"
    )


def config_from_args(a: argparse.Namespace) -> BenchConfig:
    """The BenchConfig of parsed options; ValueError naming a bad one."""
    if a.num_prompts < 1:
        raise ValueError("--num-prompts must be at least 1")
    if not a.request_rate > 0:
        raise ValueError("--request-rate must be > 0 (inf for all at once)")
    vlo, vhi = parse_range(a.vocab_range, "--vocab-range")
    return BenchConfig(
        base_url=a.base_url.rstrip("/"),
        model=a.model,
        api_key=a.api_key,
        num_prompts=a.num_prompts,
        request_rate=a.request_rate,
        input_len=parse_range(a.input_len, "--input-len"),
        output_len=parse_range(a.output_len, "--output-len"),
        vocab_range=(vlo, vhi + 1 if vhi == vlo else vhi),
        ignore_eos=not a.no_ignore_eos,
        temperature=a.temperature,
        max_concurrency=a.max_concurrency,
        seed=a.seed,
        timeout_s=a.timeout,
    )


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchConfig, str | None]:
    """The benchmark config and the --json path."""
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_args(p)
    a = p.parse_args(argv)
    try:
        cfg = config_from_args(a)
    except ValueError as e:
        p.error(str(e))
    return cfg, a.json


def run(cfg: BenchConfig, path: str | None) -> dict:
    """Run, print the summary, write `path` (with the client machine and package versions)."""
    from jaxllm.benchmarks.common import machine_info, package_versions, write_json

    res = asyncio.run(benchmark(cfg))
    print(format_results(res))
    if path:
        write_json(
            path,
            res
            | {"benchmark": "serving", "machine": machine_info(), "packages": package_versions()},
        )
    return res


def main(argv: Sequence[str] | None = None) -> int:
    cfg, path = parse_args(argv)
    res = run(cfg, path)
    return 0 if res["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
