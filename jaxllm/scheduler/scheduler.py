"""Continuous batching under one token budget per step (vLLM v1's policy, no prefill/decode phases).

Each `schedule()`:
  1. Running requests, in order, each get min(uncomputed tokens, budget left) new tokens (a decode
     is 1 token; an unfinished prefill continues by a chunk). When the KV cache has no room for
     one, the newest running request is preempted (its blocks freed, recomputed later from the
     front of the waiting queue), repeatedly, until the allocation fits or the request itself is
     the one preempted.
  2. If nothing was preempted, waiting requests are admitted FCFS while budget and max_num_seqs
     allow. Prefix-cache hits count as computed. With chunked prefill a prompt is cut to the budget
     left; without it a prompt that does not fit waits. A request that cannot get blocks waits and
     stops admission for this step.

`update_from_output()` then advances the computed counters, appends sampled tokens, runs the stop
checks and frees finished requests' blocks. Host side only: no JAX here.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Mapping, Sequence

from jaxllm.config import CacheConfig, SchedulerConfig
from jaxllm.kv_cache import KVCacheManager, PrefixCacheStats
from jaxllm.request import Request, RequestStatus
from jaxllm.scheduler.output import ScheduledRequest, SchedulerOutput


class Scheduler:
    def __init__(
        self, scheduler_config: SchedulerConfig, cache_config: CacheConfig, num_blocks: int
    ) -> None:
        self.config = scheduler_config
        self.max_model_len = scheduler_config.max_model_len
        self.block_size = cache_config.block_size
        blocks_per_seq = -(-self.max_model_len // self.block_size)
        if num_blocks - 1 < blocks_per_seq:
            raise ValueError(
                f"KV cache of {num_blocks} blocks (1 reserved) of {self.block_size} tokens cannot "
                f"hold one max_model_len={self.max_model_len} sequence ({blocks_per_seq} blocks); "
                "raise the number of blocks or lower max_model_len"
            )
        if (not scheduler_config.enable_chunked_prefill
                and scheduler_config.max_num_batched_tokens < self.max_model_len):
            raise ValueError(
                f"max_num_batched_tokens ({scheduler_config.max_num_batched_tokens}) is smaller "
                f"than max_model_len ({self.max_model_len}) with chunked prefill off: long "
                "prompts could never be scheduled; raise it or enable chunked prefill"
            )
        self.kv_cache_manager = KVCacheManager(
            num_blocks, self.block_size, enable_caching=cache_config.enable_prefix_caching
        )
        self.requests: dict[str, Request] = {}  # unfinished requests by id
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()  # since the last schedule()
        self.num_preemptions_total = 0

    # ----- requests in and out ----------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        rid = request.request_id
        if rid in self.requests:
            raise ValueError(f"request id {rid!r} is already in the scheduler")
        if request.status != RequestStatus.WAITING or request.num_computed_tokens:
            raise ValueError(f"request {rid!r} is not a fresh request ({request.status.name})")
        if request.num_tokens > self.max_model_len:
            raise ValueError(
                f"request {rid!r}: prompt of {request.num_tokens} tokens is longer than "
                f"max_model_len={self.max_model_len}"
            )
        self.requests[rid] = request
        self.waiting.append(request)

    def finish_requests(
        self, request_ids: str | Iterable[str], finished_status: RequestStatus
    ) -> list[Request]:
        """Finish waiting or running requests from outside (stop strings, aborts). Unknown or
        already finished ids are ignored. Returns the requests finished here."""
        if not RequestStatus.is_finished(finished_status):
            raise ValueError(
                f"finished_status must be a FINISHED_* status, got {finished_status!r}"
            )
        if isinstance(request_ids, str):
            request_ids = (request_ids,)
        finished = [self.requests[r] for r in dict.fromkeys(request_ids) if r in self.requests]
        if not finished:
            return []
        gone = set(finished)
        if any(r.status == RequestStatus.RUNNING for r in finished):
            self.running = [r for r in self.running if r not in gone]
        if any(r.status != RequestStatus.RUNNING for r in finished):
            self.waiting = deque(r for r in self.waiting if r not in gone)
        for request in finished:
            request.status = finished_status
            self._free_request(request)
        return finished

    def _free_request(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        del self.requests[request.request_id]
        self.finished_req_ids.add(request.request_id)

    # ----- one step ---------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        kv = self.kv_cache_manager
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[Request] = []

        # 1. Running requests first, in order.
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new <= 0:  # nothing to compute (not expected with one token per step)
                i += 1
                continue
            new_blocks = kv.allocate_slots(request, num_new)
            while new_blocks is None:
                victim = self.running.pop()  # the newest; never one scheduled above (index < i)
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
                new_blocks = kv.allocate_slots(request, num_new)
            if new_blocks is None:
                break  # the request preempted itself: nothing behind it is left to schedule
            scheduled.append(self._scheduled(request, num_new))
            budget -= num_new
            i += 1

        # 2. Waiting requests, FCFS; none in a step that had to preempt.
        while (not preempted and self.waiting and budget > 0
               and len(self.running) < self.config.max_num_seqs):
            request = self.waiting[0]
            hit_blocks, num_hit = kv.get_computed_blocks(request)
            num_new = request.num_tokens - num_hit
            if num_new > budget and not self.config.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if kv.allocate_slots(request, num_new, hit_blocks) is None:
                break
            self.waiting.popleft()
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_hit
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit
            scheduled.append(self._scheduled(request, num_new))
            budget -= num_new

        out = SchedulerOutput(
            scheduled=scheduled,
            preempted=preempted,
            finished_request_ids=self.finished_req_ids,
            num_batched_tokens=self.config.max_num_batched_tokens - budget,
        )
        self.finished_req_ids = set()
        return out

    def _scheduled(self, request: Request, num_new: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        return ScheduledRequest(
            request=request,
            num_new_tokens=num_new,
            num_computed_tokens=start,
            block_ids=self.kv_cache_manager.get_block_ids(request.request_id),
            samples=start + num_new == request.num_tokens,
        )

    def _preempt(self, request: Request) -> None:
        """Free the request's KV and send it to the front of the waiting queue (recompute)."""
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(request)

    # ----- results of a step ------------------------------------------------------------------
    def update_from_output(
        self, sched_out: SchedulerOutput, sampled: Mapping[str, Sequence[int]]
    ) -> list[Request]:
        """Apply a step's results. `sampled` maps request id -> new token ids (one, or more) for
        every scheduled request with `samples=True`; entries for other requests are ignored.
        Requests finished (e.g. aborted) since the schedule are skipped. Returns the requests
        that got tokens or finished, in scheduled order."""
        updated: list[Request] = []
        any_finished = False
        for sr in sched_out.scheduled:
            request = sr.request
            if request.is_finished():
                continue
            request.num_computed_tokens = sr.num_computed_tokens + sr.num_new_tokens
            if not sr.samples:
                continue
            token_ids = sampled.get(request.request_id)
            if token_ids is None or len(token_ids) == 0:
                raise ValueError(f"no sampled token for request {request.request_id!r}")
            for token_id in token_ids:
                request.append_output_token_ids(token_id)
                if self._check_stop(request):
                    break
            updated.append(request)
            if request.is_finished():
                self._free_request(request)
                any_finished = True
        if any_finished:
            self.running = [r for r in self.running if not r.is_finished()]
        return updated

    def _check_stop(self, request: Request) -> bool:
        """Stop checks after one appended token, vLLM's order: length first, then eos, then stop
        token ids; eos and stop ids only count once min_tokens output tokens exist."""
        params = request.sampling_params
        num_out = request.num_output_tokens
        if request.num_tokens >= self.max_model_len or (
            params.max_tokens is not None and num_out >= params.max_tokens
        ):
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
            return True
        if num_out < (params.min_tokens or 0):
            return False
        last = request.output_token_ids[-1]
        if not params.ignore_eos and last in request.eos_token_ids:
            request.status = RequestStatus.FINISHED_STOPPED
            return True
        if params.stop_token_ids and last in params.stop_token_ids:
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = last
            return True
        return False

    # ----- counters ---------------------------------------------------------------------------
    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def has_finished_requests(self) -> bool:
        """Finished ids not yet reported through a SchedulerOutput."""
        return bool(self.finished_req_ids)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_cache_manager.usage

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self.kv_cache_manager.prefix_cache_stats

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache_manager.reset_prefix_cache()
