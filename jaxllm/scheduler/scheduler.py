"""Continuous batching under one token budget per step (vLLM v1's policy, no prefill/decode phases).

Each `schedule()`:
  1. Running requests, in order, each get min(uncomputed tokens, budget left) new tokens (a decode
     is 1 token; an unfinished prefill continues by a chunk). When the KV cache has no room for
     one, the last running request is preempted, repeatedly, until the allocation fits or the
     request itself is the one preempted. Preemption by recompute frees its blocks (it restarts
     from the front of the waiting queue, helped by prefix-cache hits); by swap
     (`preemption_mode="swap"`) its computed blocks are copied to host memory and back when it
     resumes, falling back to recompute when the host pool is full.
  2. If nothing was preempted, waiting requests are admitted in queue order while budget and
     max_num_seqs allow. Prefix-cache hits count as computed. With chunked prefill a prompt is cut
     to the budget left; without it a prompt that does not fit waits. A request that cannot get
     blocks waits and stops admission for this step.

Policies: "fcfs" keeps both queues in arrival order, so the victim is the newest running request;
"priority" keeps both sorted by (priority, arrival time, order added), lower first, so the victim
is the lowest-priority request (largest value, latest arrival), as vLLM picks it.

`n` > 1: the first sample is queued with the others as its `fork_children`; in the step that
computes its last prompt token they are forked onto its blocks (see KVCacheManager.fork) and
sample from its logits, so the prompt is prefilled once.

Speculative decoding (synchronous scheduling only): a running request that is caught up verifies
its `spec_token_ids` (drafts) in the same step as its next token; they cost budget like any
token and get KV slots, plus `num_lookahead_tokens` more slots for a draft model to write ahead.
`update_from_output()` rolls `num_computed_tokens` back past the rejected drafts (their slots stay
allocated and are written again by later tokens; the prefix cache only ever hashes known tokens).

`update_from_output()` then advances the computed counters, appends sampled tokens, runs the stop
checks and frees finished requests' blocks. Host side only: no JAX here.

Asynchronous scheduling (`SchedulerConfig.async_scheduling`): the engine schedules step N+1 while
step N still runs on the device, so the host's work hides behind the device's. `schedule()` then
advances `num_computed_tokens` itself and counts each sampled token as an output placeholder (its
value is still on the device; the model runner feeds it to step N+1 from there), and
`update_from_output()` only replaces placeholders by tokens. A request whose tokens in flight
certainly end it by length is not scheduled again. One that ends otherwise (eos, a stop string, an
abort) may have computed one more token in step N+1; that token is dropped. The device runs steps
in order, so blocks freed while a step that writes them is in flight are safe to hand out again.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from jaxllm.config import CacheConfig, SchedulerConfig
from jaxllm.kv_cache import KVCacheBlock, KVCacheManager, PrefixCacheStats
from jaxllm.request import Request, RequestStatus
from jaxllm.scheduler.output import ScheduledRequest, SchedulerOutput


class Scheduler:
    def __init__(
        self,
        scheduler_config: SchedulerConfig,
        cache_config: CacheConfig,
        num_blocks: int,
        num_host_blocks: int = 0,
        sliding_window: int | None = None,
        num_lookahead_tokens: int = 0,
        max_loras: int | None = None,
    ) -> None:
        """`num_host_blocks`: swap space in blocks (used with preemption_mode="swap");
        `sliding_window`: the model's window where every layer has it (blocks before it are
        freed, see `KVCacheManager`); `num_lookahead_tokens`: KV slots past a sampling request's
        scheduled tokens (speculative decoding with a draft model, which writes ahead); `max_loras`:
        with LoRA adapters, the most distinct adapters (`Request.lora_int_id`) among running
        requests (a waiting request of another adapter waits; those behind it may go)."""
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
        if (
            not scheduler_config.enable_chunked_prefill
            and scheduler_config.max_num_batched_tokens < self.max_model_len
        ):
            raise ValueError(
                f"max_num_batched_tokens ({scheduler_config.max_num_batched_tokens}) is smaller "
                f"than max_model_len ({self.max_model_len}) with chunked prefill off: long "
                "prompts could never be scheduled; raise it or enable chunked prefill"
            )
        if num_host_blocks < 0:
            raise ValueError(f"num_host_blocks must be >= 0, got {num_host_blocks}")
        self.swap = scheduler_config.preemption_mode == "swap"
        self.async_scheduling = bool(scheduler_config.async_scheduling)
        if num_lookahead_tokens < 0:
            raise ValueError(f"num_lookahead_tokens must be >= 0, got {num_lookahead_tokens}")
        self.num_lookahead_tokens = num_lookahead_tokens
        if max_loras is not None and max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {max_loras}")
        self.max_loras = max_loras
        self.priority = scheduler_config.policy == "priority"
        self.kv_cache_manager = KVCacheManager(
            num_blocks,
            self.block_size,
            enable_caching=cache_config.enable_prefix_caching,
            num_host_blocks=num_host_blocks if self.swap else 0,
            sliding_window=sliding_window,
        )
        self.requests: dict[str, Request] = {}  # unfinished requests by id
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()  # since the last schedule()
        # n > 1: samples waiting to be forked from their first sample, by its id.
        self.pending_forks: dict[str, list[Request]] = {}
        self._fork_parent: dict[str, str] = {}  # child id -> parent id, while pending
        self._order: dict[str, int] = {}  # tie-breaker after (priority, arrival time)
        self._counter = itertools.count()
        self._blocks_to_swap_out: list[tuple[int, int]] = []
        self._blocks_to_swap_in: list[tuple[int, int]] = []
        self.num_preemptions_total = 0
        self.num_swapped_out_total = 0  # preemptions that went to host memory
        self.num_prompt_tokens_computed = 0  # prompt tokens scheduled for computing (not hits)

    # ----- requests in and out ----------------------------------------------------------------
    def add_request(self, request: Request, fork_children: Sequence[Request] = ()) -> None:
        """Queue a request. `fork_children`: further samples of the same prompt (n > 1), forked
        onto `request`'s blocks once its prompt is computed instead of prefilling it again."""
        group = [request, *fork_children]
        ids = [r.request_id for r in group]
        if len(set(ids)) != len(ids):
            raise ValueError(f"request ids {ids} are not distinct")
        for r in group:
            rid = r.request_id
            if rid in self.requests:
                raise ValueError(f"request id {rid!r} is already in the scheduler")
            if r.status != RequestStatus.WAITING or r.num_computed_tokens:
                raise ValueError(f"request {rid!r} is not a fresh request ({r.status.name})")
            if r.num_tokens > self.max_model_len:
                raise ValueError(
                    f"request {rid!r}: prompt of {r.num_tokens} tokens is longer than "
                    f"max_model_len={self.max_model_len}"
                )
            if isinstance(r.priority, bool) or not isinstance(r.priority, int):
                raise ValueError(f"request {rid!r}: priority must be an int, got {r.priority!r}")
            if r.priority != 0 and not self.priority:
                raise ValueError(
                    f"request {rid!r} has priority {r.priority}, but the scheduling policy is "
                    f"{self.config.policy!r}; use policy 'priority'"
                )
        for child in fork_children:
            if child.prompt_token_ids != request.prompt_token_ids:
                raise ValueError(
                    f"fork child {child.request_id!r} has another prompt than "
                    f"{request.request_id!r}"
                )
            if child.cache_salt != request.cache_salt:
                raise ValueError(f"fork child {child.request_id!r} has another cache_salt")
            if child.lora_int_id != request.lora_int_id:
                raise ValueError(f"fork child {child.request_id!r} has another LoRA adapter")
        if len(group) > self.config.max_num_seqs:
            raise ValueError(
                f"request {request.request_id!r}: {len(group)} samples (n) exceed "
                f"max_num_seqs={self.config.max_num_seqs}"
            )
        for r in group:
            self.requests[r.request_id] = r
            self._order[r.request_id] = next(self._counter)
        if fork_children:
            self.pending_forks[request.request_id] = list(fork_children)
            for child in fork_children:
                self._fork_parent[child.request_id] = request.request_id
        self._enqueue(request)

    def _key(self, request: Request) -> tuple[int, float, int]:
        return (request.priority, request.arrival_time, self._order[request.request_id])

    def _enqueue(self, request: Request, front: bool = False) -> None:
        """Into the waiting queue: FCFS at the back (the front for a preempted request); by
        priority where its key sorts."""
        if self.priority:
            bisect.insort(self.waiting, request, key=self._key)
        elif front:
            self.waiting.appendleft(request)
        else:
            self.waiting.append(request)

    def _add_running(self, request: Request) -> None:
        if self.priority:
            bisect.insort(self.running, request, key=self._key)
        else:
            self.running.append(request)

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
        for request in finished:
            self._free_request(request)
        return finished

    def _free_request(self, request: Request) -> None:
        rid = request.request_id
        request.num_output_placeholders = 0  # a step in flight may still sample it: dropped
        self.kv_cache_manager.free(request)
        del self.requests[rid]
        self._order.pop(rid, None)
        self.finished_req_ids.add(rid)
        parent_id = self._fork_parent.pop(rid, None)
        if parent_id is not None:  # a sample finished (aborted) before its fork
            self.pending_forks[parent_id].remove(request)
            if not self.pending_forks[parent_id]:
                del self.pending_forks[parent_id]
        for child in self.pending_forks.pop(rid, ()):
            # Its parent went before the fork: the sample prefills the prompt itself.
            del self._fork_parent[child.request_id]
            if not child.is_finished():
                self._enqueue(child)

    # ----- one step ---------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        kv = self.kv_cache_manager
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[Request] = []
        forks: list[ScheduledRequest] = []

        # 1. Running requests first, in order.
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_known = request.num_tokens_with_placeholders - request.num_computed_tokens
            num_new = min(num_known, budget)
            if num_new <= 0 or (
                request.num_output_placeholders and self._length_capped_in_flight(request)
            ):  # nothing to compute, or the tokens in flight end it
                i += 1
                continue
            drafts = self._drafts(request, num_new == num_known, budget - num_new)
            lookahead = len(drafts) + (self.num_lookahead_tokens if num_new == num_known else 0)
            new_blocks = kv.allocate_slots(request, num_new, num_lookahead_tokens=lookahead)
            while new_blocks is None:
                victim = self.running.pop()  # the newest; never one scheduled above (index < i)
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
                new_blocks = kv.allocate_slots(request, num_new, num_lookahead_tokens=lookahead)
            if new_blocks is None:
                break  # the request preempted itself: nothing behind it is left to schedule
            scheduled.append(self._scheduled(request, num_new, forks, drafts))
            budget -= num_new + len(drafts)
            i += 1
        for sr in forks:  # forked in step 1; they join the running list behind it
            self._add_running(sr.request)

        # 2. Waiting requests in queue order; none in a step that had to preempt.
        loras = self._running_loras()
        skipped: list[Request] = []  # waiting for a LoRA slot; back to the queue's front below
        while not preempted and self.waiting and budget > 0:
            request = self.waiting[0]
            lora_id = request.lora_int_id
            if (
                loras is not None
                and lora_id
                and lora_id not in loras
                and len(loras) >= (self.max_loras or 0)
            ):  # its adapter would be one too many
                skipped.append(self.waiting.popleft())
                continue
            group = 1 + len(self.pending_forks.get(request.request_id, ()))
            if self._num_seats() + group > self.config.max_num_seqs:
                break
            request.spec_token_ids = []  # drafts only once running (its prompt is computed)
            swapped = kv.is_swapped(request.request_id)
            hit_blocks: list[KVCacheBlock]
            if swapped:
                hit_blocks, num_hit = [], request.num_computed_tokens
            else:
                hit_blocks, num_hit = kv.get_computed_blocks(request)
            num_new = request.num_tokens_with_placeholders - num_hit
            if num_new > budget and not self.config.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if swapped:
                swap_in = kv.swap_in(request, num_new)
                if swap_in is None:
                    break
                self._blocks_to_swap_in.extend(swap_in)
            elif (
                kv.allocate_slots(
                    request,
                    num_new,
                    hit_blocks,
                    num_lookahead_tokens=self._lookahead_after(request, num_hit + num_new),
                )
                is None
            ):
                break
            self.waiting.popleft()
            self._add_running(request)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_hit
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit
            n_forks = len(forks)
            scheduled.append(self._scheduled(request, num_new, forks))
            for sr in forks[n_forks:]:
                self._add_running(sr.request)
            budget -= num_new
            if loras is not None and lora_id:
                loras.add(lora_id)
        self.waiting.extendleft(reversed(skipped))

        out = SchedulerOutput(
            scheduled=scheduled + forks,
            preempted=preempted,
            finished_request_ids=self.finished_req_ids,
            num_batched_tokens=self.config.max_num_batched_tokens - budget,
            blocks_to_swap_out=self._blocks_to_swap_out,
            blocks_to_swap_in=self._blocks_to_swap_in,
            blocks_to_copy=kv.take_blocks_to_copy(),
        )
        self.finished_req_ids = set()
        self._blocks_to_swap_out, self._blocks_to_swap_in = [], []
        if self.async_scheduling:  # the step is in flight from now on
            for sr in out.scheduled:
                sr.request.num_computed_tokens = sr.num_computed_tokens + sr.num_new_tokens
                if sr.samples:
                    sr.request.num_output_placeholders += 1
        return out

    def _running_loras(self) -> set[int] | None:
        """The LoRA adapters of the running requests (None: no `max_loras` limit)."""
        if self.max_loras is None:
            return None
        return {r.lora_int_id for r in self.running if r.lora_int_id}

    def _drafts(self, request: Request, caught_up: bool, budget_left: int) -> list[int]:
        """The draft tokens this step verifies for a running request: its proposed ones, only when
        this step computes all its known tokens, cut to the budget left, to the room before
        max_model_len, and to the tokens max_tokens still allows after the one sampled anyway."""
        drafts = request.spec_token_ids
        if not drafts:
            return drafts
        request.spec_token_ids = []  # verified now, or dropped
        if not caught_up or self.async_scheduling:
            return []
        room = self.max_model_len - request.num_tokens
        max_tokens = request.sampling_params.max_tokens
        if max_tokens is not None:
            room = min(room, max_tokens - request.num_output_tokens - 1)
        return drafts[: max(0, min(budget_left, room))]

    def _lookahead_after(self, request: Request, num_scheduled: int) -> int:
        """Lookahead slots for a request admitted with `num_scheduled` of its tokens computed by
        the end of the step: only when that is all of them (it samples)."""
        if num_scheduled == request.num_tokens_with_placeholders:
            return self.num_lookahead_tokens
        return 0

    def _length_capped_in_flight(self, request: Request) -> bool:
        """Whether the request's tokens in flight certainly end it by length (max_tokens or
        max_model_len), so that scheduling it again would compute a token nobody gets."""
        pending = request.num_output_placeholders
        max_tokens = request.sampling_params.max_tokens
        return request.num_tokens + pending >= self.max_model_len or (
            max_tokens is not None and request.num_output_tokens + pending >= max_tokens
        )

    def _num_seats(self) -> int:
        """Running requests plus the samples still to fork from running ones."""
        return len(self.running) + sum(
            len(children)
            for rid, children in self.pending_forks.items()
            if self.requests[rid].status == RequestStatus.RUNNING
        )

    def _scheduled(
        self,
        request: Request,
        num_new: int,
        forks: list[ScheduledRequest],
        drafts: list[int] | None = None,
    ) -> ScheduledRequest:
        """The request's share of the step (`num_new` known tokens, then `drafts`); when it
        computes its last prompt token and has samples waiting to fork, fork them (their rows go
        to `forks`)."""
        drafts = drafts or []
        start = request.num_computed_tokens
        samples = start + num_new == request.num_tokens_with_placeholders
        self.num_prompt_tokens_computed += max(
            0, min(start + num_new, request.num_prompt_tokens) - start
        )
        if samples and request.request_id in self.pending_forks:
            for child in self.pending_forks.pop(request.request_id):
                del self._fork_parent[child.request_id]
                self.kv_cache_manager.fork(request, child)
                child.status = RequestStatus.RUNNING
                child.num_computed_tokens = request.num_tokens
                child.num_cached_tokens = max(request.num_cached_tokens, 0)
                forks.append(
                    ScheduledRequest(
                        request=child,
                        num_new_tokens=0,
                        num_computed_tokens=request.num_tokens,
                        block_ids=self.kv_cache_manager.get_block_ids(child.request_id),
                        samples=True,
                        sample_from=request.request_id,
                    )
                )
        return ScheduledRequest(
            request=request,
            num_new_tokens=num_new + len(drafts),
            num_computed_tokens=start,
            block_ids=self.kv_cache_manager.get_block_ids(request.request_id),
            samples=samples,
            spec_token_ids=list(drafts),
        )

    def _preempt(self, request: Request) -> None:
        """Swap the request's KV out to host memory (swap mode, when the host pool has room), or
        free it to be recomputed; either way it goes back to the waiting queue (FCFS: its front)."""
        swapped = None
        if self.swap and request.num_computed_tokens > 0:
            swapped = self.kv_cache_manager.swap_out(request)
        if swapped is None:
            self.kv_cache_manager.free(request)
            request.num_computed_tokens = 0
        else:
            self._blocks_to_swap_out.extend(swapped)
            self.num_swapped_out_total += 1
        request.status = RequestStatus.PREEMPTED
        request.spec_token_ids = []
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self._enqueue(request, front=True)

    # ----- results of a step ------------------------------------------------------------------
    def update_from_output(
        self, sched_out: SchedulerOutput, sampled: Mapping[str, Sequence[int]]
    ) -> list[Request]:
        """Apply a step's results. `sampled` maps request id -> new token ids (one, or more) for
        every scheduled request with `samples=True`; entries for other requests are ignored.
        Requests finished (e.g. aborted) since the schedule are skipped. Returns the requests
        that got tokens or finished, in scheduled order.

        With asynchronous scheduling the computed counters moved at `schedule()` (a request may
        even have been preempted since); here each token replaces one placeholder."""
        updated: list[Request] = []
        any_finished = False
        any_waiting_finished = False
        for sr in sched_out.scheduled:
            request = sr.request
            if request.is_finished():
                continue
            token_ids = sampled.get(request.request_id) if sr.samples else None
            if sr.samples and (token_ids is None or len(token_ids) == 0):
                raise ValueError(f"no sampled token for request {request.request_id!r}")
            if not self.async_scheduling:
                # drafts past the first rejected one computed KV that is not the request's
                num_rejected = 0
                if sr.spec_token_ids:
                    num_rejected = len(sr.spec_token_ids) + 1 - len(token_ids or ())
                    if not 0 <= num_rejected <= len(sr.spec_token_ids):
                        raise ValueError(
                            f"request {request.request_id!r} verified "
                            f"{len(sr.spec_token_ids)} drafts but got {len(token_ids or ())} "
                            "tokens"
                        )
                request.num_computed_tokens = (
                    sr.num_computed_tokens + sr.num_new_tokens - num_rejected
                )
            if not sr.samples:
                continue
            assert token_ids is not None
            if self.async_scheduling:
                request.num_output_placeholders -= 1
            waiting = request.status == RequestStatus.PREEMPTED  # preempted while in flight
            for token_id in token_ids:
                request.append_output_token_ids(token_id)
                if self._check_stop(request):
                    break
            updated.append(request)
            if request.is_finished():
                self._free_request(request)
                any_finished = True
                any_waiting_finished |= waiting
        if any_finished:
            self.running = [r for r in self.running if not r.is_finished()]
        if any_waiting_finished:
            self.waiting = deque(r for r in self.waiting if not r.is_finished())
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
        return len(self.requests)  # waiting, running and samples still to fork

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_waiting_seqs(self) -> int:
        """Sequences not yet running: the waiting requests and the samples still to fork from
        them (an n > 1 request waits as one request holding n - 1 samples to fork)."""
        return len(self.waiting) + sum(
            len(children)
            for rid, children in self.pending_forks.items()
            if self.requests[rid].status != RequestStatus.RUNNING
        )

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_cache_manager.usage

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self.kv_cache_manager.prefix_cache_stats

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache_manager.reset_prefix_cache()
