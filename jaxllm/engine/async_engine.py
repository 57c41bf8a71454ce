"""AsyncLLMEngine: the `LLMEngine` loop in its own thread, requests in and outputs out via asyncio.

The engine is not thread-safe, so only its thread touches it. Callers on the event loop hand it
commands through a locked list (add, abort) and wake it with an event; the thread drains the list
between steps, runs `engine.step()` while there is work, and hands each step's delta outputs back
to the loop with one `call_soon_threadsafe`. Each request gets a `RequestStream` (an async
iterator of delta `RequestOutput`s, merged when the consumer falls behind).

    engine = AsyncLLMEngine(llm.llm_engine, max_waiting_requests=1024)
    engine.start()                                  # inside the running event loop
    stream = await engine.add_request("r1", {"prompt_token_ids": ids}, params)  # ValueError,
    async for out in stream: ...                    # QueueFullError or EngineDeadError here
    stream.abort()                                  # idempotent; frees the request's KV blocks

`priority` (add_request / add_requests) goes to `LLMEngine.add_request`: with the engine's
scheduling_policy "priority" lower values are scheduled first; under "fcfs" a non-zero priority is
the engine's ValueError, raised from `add_request` like any other validation error.

A consumer that stops listening (a client that disconnected) must call `stream.abort()` (the
serving layer does so in a `finally`); the abort reaches the engine before its next step.

Admission control: a request is refused with `QueueFullError` when the sequences already waiting
(queued commands not yet seen by the engine + `scheduler.num_waiting`) reach
`max_waiting_requests`; the server turns that into 503 + Retry-After.

Host side: imports no JAX itself (the engine it drives does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jaxllm.outputs import CompletionOutput, RequestOutput
from jaxllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

__all__ = [
    "AsyncLLMEngine",
    "EngineDeadError",
    "EngineStats",
    "QueueFullError",
    "RequestStream",
    "StatListener",
    "merge_delta_outputs",
]


class QueueFullError(RuntimeError):
    """Too many sequences are waiting; try again later."""

    def __init__(self, num_waiting: int, bound: int) -> None:
        super().__init__(
            f"the server is overloaded: {num_waiting} sequences are waiting (bound "
            f"{bound}); retry later"
        )
        self.num_waiting = num_waiting
        self.bound = bound


class EngineDeadError(RuntimeError):
    """The engine loop stopped (shut down, or a step raised); no request can be served."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's state, taken by its thread after each step or command batch."""

    num_running: int = 0  # sequences in the running set
    num_waiting: int = 0  # sequences in the scheduler's waiting queue
    num_pending: int = 0  # add commands not yet seen by the engine thread
    kv_cache_usage: float = 0.0  # fraction of usable KV blocks held by requests
    num_free_blocks: int = 0
    num_usable_blocks: int = 0  # all blocks but the reserved null block
    num_preemptions_total: int = 0
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache
    prefix_cache_hits: int = 0
    num_unfinished_requests: int = 0  # parent requests the engine still holds
    num_steps_total: int = 0


class StatListener(Protocol):
    """Receives every step's outputs on the engine thread (e.g. Prometheus metrics)."""

    def on_outputs(self, outputs: Sequence[RequestOutput], now: float) -> None: ...

    def on_abort(self, request_id: str, num_seqs: int, now: float) -> None: ...


_END = object()  # stream sentinel: the request was aborted / the engine stopped


def merge_delta_outputs(a: RequestOutput, b: RequestOutput) -> RequestOutput:
    """Two consecutive delta outputs of one request as one (b is the later one)."""
    by_index = {c.index: c for c in a.outputs}
    merged = []
    for c in b.outputs:
        prev = by_index.pop(c.index, None)
        if prev is None:
            merged.append(c)
            continue
        logprobs = None
        if prev.logprobs is not None or c.logprobs is not None:
            logprobs = list(prev.logprobs or []) + list(c.logprobs or [])
        merged.append(
            CompletionOutput(
                index=c.index,
                text=prev.text + c.text,
                token_ids=list(prev.token_ids) + list(c.token_ids),
                cumulative_logprob=c.cumulative_logprob,
                logprobs=logprobs,
                finish_reason=c.finish_reason,
                stop_reason=c.stop_reason,
            )
        )
    merged.extend(by_index.values())  # sequences of `a` that `b` did not touch
    merged.sort(key=lambda c: c.index)
    return RequestOutput(
        request_id=b.request_id,
        prompt=b.prompt,
        prompt_token_ids=b.prompt_token_ids,
        prompt_logprobs=b.prompt_logprobs,
        outputs=merged,
        finished=b.finished,
        metrics=b.metrics,
        num_cached_tokens=b.num_cached_tokens,
    )


class RequestStream:
    """Async iterator over one request's delta outputs; ends after the finished one."""

    def __init__(self, request_id: str, engine: AsyncLLMEngine, num_seqs: int = 1) -> None:
        self.request_id = request_id
        self.num_seqs = num_seqs
        self._engine = engine
        self._queue: asyncio.Queue = asyncio.Queue()
        self.finished = False  # the engine sent the finished output (or the stream ended)
        self.aborted = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        # Merge whatever else is already queued: a slow consumer gets fewer, larger deltas.
        while isinstance(item, RequestOutput) and not item.finished and not self._queue.empty():
            nxt = self._queue.get_nowait()
            if not isinstance(nxt, RequestOutput):
                self._queue.put_nowait(nxt)  # keep the sentinel / error for the next call
                break
            item = merge_delta_outputs(item, nxt)
        if item is _END:
            self.finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item

    def abort(self) -> None:
        """Stop the request and free its KV blocks (no-op once finished). Thread-safe, sync."""
        if self.finished or self.aborted:
            return
        self.aborted = True
        self._engine.abort(self.request_id)

    # Called on the event loop by the engine thread's hand-off.
    def _put(self, item: Any) -> None:
        self._queue.put_nowait(item)


@dataclass
class _Add:
    request_id: str
    prompt: Any
    params: SamplingParams
    arrival_time: float
    stream: RequestStream
    future: asyncio.Future
    priority: int = 0


@dataclass
class _Abort:
    request_id: str


class AsyncLLMEngine:
    """Runs `engine` (an `LLMEngine`, or a `DPEngine` of replicas) in a daemon thread; see the
    module docstring.

    max_waiting_requests: refuse new requests while this many sequences wait (None: no bound).
    stat_listener: called on the engine thread with each step's outputs and each abort.
    idle_wait_s: how long the idle thread sleeps between checks when nobody wakes it.
    """

    def __init__(
        self,
        engine: Any,
        *,
        max_waiting_requests: int | None = 1024,
        stat_listener: StatListener | None = None,
        idle_wait_s: float = 0.5,
    ) -> None:
        if max_waiting_requests is not None and max_waiting_requests < 0:
            raise ValueError(
                f"max_waiting_requests must be >= 0 or None, got {max_waiting_requests}"
            )
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests
        self.stat_listener = stat_listener
        self.idle_wait_s = idle_wait_s
        self._lock = threading.Lock()
        self._commands: list[_Add | _Abort] = []
        self._num_pending_adds = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[str, RequestStream] = {}  # engine thread only
        self._error: BaseException | None = None
        self._num_steps = 0
        self._stats = EngineStats()
        self._update_stats()

    # ----- lifecycle ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the engine thread; outputs are delivered on `loop` (default: the running one)."""
        if self._thread is not None:
            raise RuntimeError("the engine loop is already started")
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="jaxllm-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the thread after its current step; open streams end with EngineDeadError."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the engine thread did not stop within %.0f s", timeout)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    @property
    def error(self) -> BaseException | None:
        """The exception that stopped the engine loop, if any."""
        return self._error

    def stats(self) -> EngineStats:
        return self._stats

    # ----- requests (event loop side) -----------------------------------------------------------
    async def add_request(
        self,
        request_id: str,
        prompt: str | Sequence[int] | dict,
        params: SamplingParams,
        *,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> RequestStream:
        """Queue a request; returns its stream once the engine accepted it.

        Raises ValueError (the engine's validation, e.g. a non-zero `priority` under the "fcfs"
        scheduling policy), QueueFullError or EngineDeadError.
        """
        streams = await self.add_requests(
            [(request_id, prompt, params)], arrival_time=arrival_time, priority=priority
        )
        return streams[0]

    async def add_requests(
        self,
        requests: Sequence[tuple[str, str | Sequence[int] | dict, SamplingParams]],
        *,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> list[RequestStream]:
        """Queue several (request_id, prompt, params) together (they reach the engine before the
        same step), all or none: if one is refused, the others are aborted and the error raised.
        They share `arrival_time` and `priority`."""
        if not self.is_running:
            raise EngineDeadError(self._dead_message())
        loop = asyncio.get_running_loop()
        now = time.time() if arrival_time is None else arrival_time
        # grammars compile in the engine's pool while this loop serves others; a malformed one is
        # the ValueError (a 400) before anything is queued
        specs = [p.structured_outputs for _, _, p in requests if p.structured_outputs is not None]
        if specs:
            compiler = self.engine.structured_outputs
            await asyncio.gather(*(asyncio.wrap_future(compiler.submit(s)) for s in specs))
        cmds = [
            _Add(
                rid,
                prompt,
                params,
                now,
                RequestStream(rid, self, params.n),
                loop.create_future(),
                priority,
            )
            for rid, prompt, params in requests
        ]
        num_seqs = sum(c.params.n for c in cmds)
        with self._lock:
            bound = self.max_waiting_requests
            if bound is not None:
                waiting = self._num_pending_adds + self._stats.num_waiting
                if waiting >= bound:
                    raise QueueFullError(waiting, bound)
            self._commands.extend(cmds)
            self._num_pending_adds += num_seqs
        self._wake.set()
        try:
            await asyncio.gather(*(c.future for c in cmds))
        except BaseException:  # refused, or the caller went away: take back every one of them
            for c in cmds:
                c.stream.abort()
            raise
        return [c.stream for c in cmds]

    def abort(self, request_id: str) -> None:
        """Abort a request (thread-safe; unknown or finished ids are ignored)."""
        with self._lock:
            self._commands.append(_Abort(request_id))
        self._wake.set()

    # ----- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stop:
                self._wake.clear()
                accepted: list[tuple[Any, Any]] = []
                self._apply_commands(accepted)
                self._hand_off(accepted)  # admission answers go out before the (slow) step
                handoff: list[tuple[Any, Any]] = []
                if engine.has_unfinished_requests():
                    outputs = engine.step()
                    self._num_steps += 1
                    now = time.time()
                    if self.stat_listener is not None and outputs:
                        self.stat_listener.on_outputs(outputs, now)
                    for out in outputs:
                        stream = self._streams.get(out.request_id)
                        if stream is None:
                            continue
                        if out.finished:
                            del self._streams[out.request_id]
                        handoff.append((stream._put, out))
                self._update_stats()
                self._hand_off(handoff)
                if not engine.has_unfinished_requests() and not self._commands:
                    self._wake.wait(self.idle_wait_s)
        except BaseException as e:  # a failed step leaves the engine in an unknown state
            logger.exception("the engine loop stopped on an error")
            self._error = e
        finally:
            self._close_all()

    def _apply_commands(self, handoff: list) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
            # Apply under the lock, so the waiting count seen by add_request never misses these.
            for cmd in commands:
                if isinstance(cmd, _Add):
                    self._num_pending_adds -= cmd.params.n
                    self._apply_add(cmd, handoff)
                else:
                    self._apply_abort(cmd.request_id, handoff)
            if commands:
                self._update_stats()

    def _apply_add(self, cmd: _Add, handoff: list) -> None:
        if cmd.future.cancelled():
            return
        try:
            self.engine.add_request(
                cmd.request_id,
                cmd.prompt,
                cmd.params,
                arrival_time=cmd.arrival_time,
                output_kind="delta",
                priority=cmd.priority,
            )
        except Exception as e:  # ValueError from validation; anything else is reported too
            handoff.append((_set_exception, (cmd.future, e)))
            return
        self._streams[cmd.request_id] = cmd.stream
        handoff.append((_set_result, (cmd.future, None)))

    def _apply_abort(self, request_id: str, handoff: list) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return  # finished already (or never accepted)
        self.engine.abort_request(request_id)
        if self.stat_listener is not None:
            self.stat_listener.on_abort(request_id, stream.num_seqs, time.time())
        handoff.append((stream._put, _END))

    def _update_stats(self) -> None:
        # one engine, or the replicas of a data-parallel engine (summed; usage over all blocks)
        engines = getattr(self.engine, "replicas", None) or [self.engine]
        scheds = [e.scheduler for e in engines]
        usable = [e.runner.num_blocks - 1 for e in engines]
        self._stats = EngineStats(
            num_running=sum(s.num_running for s in scheds),
            num_waiting=sum(s.num_waiting for s in scheds),
            num_pending=self._num_pending_adds,
            kv_cache_usage=sum(float(s.kv_cache_usage) * u for s, u in zip(scheds, usable))
            / max(sum(usable), 1),
            num_free_blocks=sum(s.kv_cache_manager.num_free_blocks for s in scheds),
            num_usable_blocks=sum(usable),
            num_preemptions_total=sum(s.num_preemptions_total for s in scheds),
            prefix_cache_queries=sum(s.prefix_cache_stats.queries for s in scheds),
            prefix_cache_hits=sum(s.prefix_cache_stats.hits for s in scheds),
            num_unfinished_requests=self.engine.get_num_unfinished_requests(),
            num_steps_total=self._num_steps,
        )

    def _hand_off(self, handoff: list) -> None:
        if not handoff or self._loop is None:
            return
        # RuntimeError: the event loop is closed, nobody is listening any more
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_run_all, handoff)

    def _dead_message(self) -> str:
        if self._error is not None:
            return f"the engine stopped after an error: {self._error!r}"
        return "the engine is not running"

    def _close_all(self) -> None:
        """End every open stream and refuse queued requests (after shutdown or a failed step)."""
        err = EngineDeadError(self._dead_message())
        handoff: list[tuple[Any, Any]] = []
        with self._lock:
            commands, self._commands = self._commands, []
            self._num_pending_adds = 0
        for cmd in commands:
            if isinstance(cmd, _Add):
                handoff.append((_set_exception, (cmd.future, err)))
        for rid, stream in list(self._streams.items()):
            handoff.append((stream._put, err))
            with contextlib.suppress(Exception):  # the engine may be broken; the streams still end
                self.engine.abort_request(rid)
        self._streams.clear()
        with contextlib.suppress(Exception):
            self._update_stats()
        self._hand_off(handoff)


def _set_result(args: tuple) -> None:
    future, value = args
    if not future.done():
        future.set_result(value)


def _set_exception(args: tuple) -> None:
    future, exc = args
    if not future.done():
        future.set_exception(exc)


def _run_all(handoff: list) -> None:
    for fn, arg in handoff:
        fn(arg)
