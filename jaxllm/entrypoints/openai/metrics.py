"""Prometheus metrics of the server, under vLLM's names so vLLM's dashboards work unchanged.

Naming decision: a metric that vLLM also exports keeps vLLM's name and `vllm:` prefix (labelled
`model_name`, as vLLM's are); metrics vLLM does not have use the `jaxllm:` prefix.

Engine state, read from the async engine's snapshot at scrape time:
    vllm:num_requests_running, vllm:num_requests_waiting    gauges (sequences)
    vllm:kv_cache_usage_perc                                 gauge, 0..1
    vllm:num_preemptions_total                               counter
    vllm:prefix_cache_queries_total, vllm:prefix_cache_hits_total   counters (tokens)
    jaxllm:num_free_gpu_blocks, jaxllm:num_gpu_blocks        gauges (usable KV blocks: free, all;
                                                              equal when no block is held)
    jaxllm:num_requests_pending                              gauge (queued, not yet in the engine)
    jaxllm:num_unfinished_requests                           gauge (requests the engine holds)
    jaxllm:engine_steps_total                                counter
Speculative decoding, only when the engine runs with a speculative_config (as vLLM exports them
only then; the engine's `spec_stats`, summed over data-parallel replicas):
    vllm:spec_decode_num_drafts_total                        counter (requests that verified
                                                              drafts, summed over steps)
    vllm:spec_decode_num_draft_tokens_total                  counter
    vllm:spec_decode_num_accepted_tokens_total               counter
    vllm:spec_decode_num_accepted_tokens_per_pos_total{position="0".."k-1"}   counter (drafts
                                                              accepted at each draft position)
Per request, recorded on the engine thread as outputs appear:
    vllm:prompt_tokens_total, vllm:generation_tokens_total   counters
    vllm:request_success_total{finished_reason=stop|length|abort}   counter, one per sequence
    vllm:time_to_first_token_seconds                         histogram (arrival -> first token)
    vllm:inter_token_latency_seconds                         histogram (between a request's steps
                                                              that produced tokens)
    vllm:request_time_per_output_token_seconds               histogram (a request's mean)
    vllm:e2e_request_latency_seconds                         histogram (arrival -> finished)
    vllm:request_queue_time_seconds                          histogram (arrival -> first scheduled)
    vllm:request_prompt_tokens, vllm:request_generation_tokens   histograms (tokens per request)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from jaxllm.engine.async_engine import EngineStats
from jaxllm.outputs import RequestOutput

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class _EngineStateCollector(Collector):
    def __init__(
        self,
        model_name: str,
        stats: Callable[[], EngineStats],
        num_speculative_tokens: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.stats = stats
        self.num_speculative_tokens = num_speculative_tokens

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["model_name"])
        g.add_metric([self.model_name], value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=["model_name"])
        c.add_metric([self.model_name], value)
        return c

    def collect(self) -> Iterator:
        s = self.stats()
        yield self._gauge(
            "vllm:num_requests_running", "Sequences in the running batch.", s.num_running
        )
        yield self._gauge(
            "vllm:num_requests_waiting",
            "Sequences waiting to be scheduled.",
            s.num_waiting + s.num_pending,
        )
        yield self._gauge(
            "vllm:kv_cache_usage_perc",
            "Fraction of KV-cache blocks in use (0-1).",
            s.kv_cache_usage,
        )
        yield self._counter(
            "vllm:num_preemptions", "Preemptions since start.", s.num_preemptions_total
        )
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            s.prefix_cache_queries,
        )
        yield self._counter(
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            s.prefix_cache_hits,
        )
        yield self._gauge(
            "jaxllm:num_free_gpu_blocks", "Free usable KV-cache blocks.", s.num_free_blocks
        )
        yield self._gauge(
            "jaxllm:num_gpu_blocks",
            "Usable KV-cache blocks (all but the null block).",
            s.num_usable_blocks,
        )
        yield self._gauge(
            "jaxllm:num_requests_pending", "Sequences queued for the engine thread.", s.num_pending
        )
        yield self._gauge(
            "jaxllm:num_unfinished_requests",
            "Requests the engine holds.",
            s.num_unfinished_requests,
        )
        yield self._counter("jaxllm:engine_steps", "Engine steps run.", s.num_steps_total)
        if self.num_speculative_tokens is not None:
            yield from self._spec_decode(s, self.num_speculative_tokens)

    def _spec_decode(self, s: EngineStats, k: int) -> Iterator:
        yield self._counter(
            "vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", s.spec_num_drafts
        )
        yield self._counter(
            "vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", s.spec_num_draft_tokens
        )
        yield self._counter(
            "vllm:spec_decode_num_accepted_tokens",
            "Number of accepted tokens.",
            s.spec_num_accepted_tokens,
        )
        per_pos = CounterMetricFamily(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Accepted tokens per draft position.",
            labels=["model_name", "position"],
        )
        accepted = s.spec_accepted_per_position
        for pos in range(max(k, len(accepted))):  # every position from the start, as vLLM
            per_pos.add_metric(
                [self.model_name, str(pos)], accepted[pos] if pos < len(accepted) else 0
            )
        yield per_pos


@dataclass
class _Timing:
    last_token_time: float | None = None
    tokens_per_seq: dict[int, int] = field(default_factory=dict)


class ServerMetrics:
    """The server's registry and recorder; also the async engine's `StatListener`."""

    def __init__(
        self,
        model_name: str,
        stats: Callable[[], EngineStats],
        num_speculative_tokens: int | None = None,
    ) -> None:
        """`num_speculative_tokens`: the engine's k with speculative decoding on (its counters
        are then exported), None without."""
        self.registry = CollectorRegistry()
        self.model_name = model_name
        r, labels = self.registry, ["model_name"]
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed.", labels, registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated.", labels, registry=r
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Finished sequences by finish reason.",
            labels + ["finished_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Arrival to first token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between a request's token steps.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "A request's mean time per output token after the first.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to finish.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Arrival to first scheduled.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_prompt_tokens = Histogram(
            "vllm:request_prompt_tokens",
            "Prompt tokens per request.",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.request_generation_tokens = Histogram(
            "vllm:request_generation_tokens",
            "Generated tokens per request (all sequences).",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.registry.register(_EngineStateCollector(model_name, stats, num_speculative_tokens))
        # Export every series (zeros) from the start.
        for reason in ("stop", "length", "abort"):
            self.request_success.labels(model_name, reason)
        for metric in (
            self.prompt_tokens,
            self.generation_tokens,
            self.ttft,
            self.itl,
            self.tpot,
            self.e2e,
            self.queue_time,
            self.request_prompt_tokens,
            self.request_generation_tokens,
        ):
            metric.labels(model_name)
        self._timings: dict[str, _Timing] = {}
        self._lock = threading.Lock()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ----- StatListener (engine thread) ---------------------------------------------------------
    def on_outputs(self, outputs: Sequence[RequestOutput], now: float) -> None:
        m = self.model_name
        with self._lock:
            for out in outputs:
                n_new = sum(len(c.token_ids) for c in out.outputs)
                t = self._timings.get(out.request_id)
                if t is None:
                    t = self._timings[out.request_id] = _Timing()
                    self.prompt_tokens.labels(m).inc(len(out.prompt_token_ids or ()))
                    self.request_prompt_tokens.labels(m).observe(len(out.prompt_token_ids or ()))
                    met = out.metrics
                    if met is not None and met.time_in_queue is not None:
                        self.queue_time.labels(m).observe(met.time_in_queue)
                for c in out.outputs:
                    t.tokens_per_seq[c.index] = t.tokens_per_seq.get(c.index, 0) + len(c.token_ids)
                if n_new:
                    self.generation_tokens.labels(m).inc(n_new)
                    if t.last_token_time is None:
                        ttft = out.metrics.time_to_first_token if out.metrics else None
                        self.ttft.labels(m).observe(ttft if ttft is not None else 0.0)
                    else:
                        self.itl.labels(m).observe(now - t.last_token_time)
                    t.last_token_time = now
                if out.finished:
                    self._finish(out, t)

    def _finish(self, out: RequestOutput, t: _Timing) -> None:
        m = self.model_name
        self._timings.pop(out.request_id, None)
        for c in out.outputs:
            self.request_success.labels(m, c.finish_reason or "abort").inc()
        self.request_generation_tokens.labels(m).observe(sum(t.tokens_per_seq.values()))
        met = out.metrics
        if met is None:
            return
        if met.e2e_latency is not None:
            self.e2e.labels(m).observe(met.e2e_latency)
        longest = max(t.tokens_per_seq.values(), default=0)
        if longest > 1 and met.first_token_time is not None and met.last_token_time is not None:
            self.tpot.labels(m).observe(
                (met.last_token_time - met.first_token_time) / (longest - 1)
            )

    def on_abort(self, request_id: str, num_seqs: int, now: float) -> None:
        with self._lock:
            self._timings.pop(request_id, None)
            self.request_success.labels(self.model_name, "abort").inc(num_seqs)
