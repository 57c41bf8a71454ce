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

`lora_request` (add_request / add_requests; a `LoRARequest`) runs the requests with that LoRA
adapter: it is first read on the engine's LoRA loader thread while this loop serves others, so the
engine thread finds it loaded. `add_lora` / `remove_lora` load and unregister adapters the same
way (the server's /v1/load_lora_adapter and /v1/unload_lora_adapter).

`priority` (add_request / add_requests) goes to `LLMEngine.add_request`: with the engine's
scheduling_policy "priority" lower values are scheduled first; under "fcfs" a non-zero priority is
the engine's ValueError, raised from `add_request` like any other validation error.

A consumer that stops listening (a client that disconnected) must call `stream.abort()` (the
serving layer does so in a `finally`); the abort reaches the engine before its next step.

Admission control: a request is refused with `QueueFullError` when its own sequences (`n` of each
of its prompts) would take the sequences waiting (queued commands not yet seen by the engine +
`scheduler.num_waiting_seqs`, which counts each sample of an n > 1 request) over
`max_waiting_requests`; the server turns that into 503 + Retry-After, or into a 400 when the
request alone is over the bound (`QueueFullError.never_fits`: not even an idle engine would
admit it). `check_admission(num_seqs)` asks the same question before any work is spent on a
request (the server asks it before tokenizing); the answer of `add_requests` is the binding one.

Shutdown: `close_admission()` makes every later `add_requests` raise `ShuttingDownError` (the
requests already queued still run); `abort_all()` then ends every open request as if it finished
with `finish_reason` "abort" (each unfinished sequence gets a last, empty delta with that reason,
so a stream's consumer writes its final chunk as for any other finish).

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
from jaxllm.spec_decode import SpecDecodeStats

logger = logging.getLogger(__name__)

__all__ = [
    "AsyncLLMEngine",
    "EngineDeadError",
    "EngineStats",
    "QueueFullError",
    "RequestStream",
    "ShuttingDownError",
    "StatListener",
    "merge_delta_outputs",
]


class QueueFullError(RuntimeError):
    """The request's sequences do not fit under the waiting bound: try again later, or, when
    `never_fits` (the request alone is over the bound), send a smaller request."""

    def __init__(self, num_waiting: int, bound: int, num_new: int = 0) -> None:
        self.num_waiting = num_waiting
        self.bound = bound
        self.num_new = num_new
        if self.never_fits:
            message = (
                f"this request has {num_new} sequences (its prompts times n), but at most "
                f"{bound} may wait on this server (max_waiting_requests): it can never be "
                "admitted; send fewer prompts or a smaller n"
            )
        else:
            message = (
                f"the server is overloaded: {num_waiting} sequences are waiting and this request "
                f"adds {num_new} (bound {bound}); retry later"
            )
        super().__init__(message)

    @property
    def never_fits(self) -> bool:
        return self.num_new > self.bound


class EngineDeadError(RuntimeError):
    """The engine loop stopped (shut down, or a step raised); no request can be served."""


class ShuttingDownError(EngineDeadError):
    """The engine takes no new requests: the server is shutting down (`close_admission`)."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's state, taken by its thread after each step or command batch."""

    num_running: int = 0  # sequences in the running set
    num_waiting: int = 0  # sequences waiting to be scheduled (an n > 1 request's samples included)
    num_pending: int = 0  # add commands not yet seen by the engine thread
    kv_cache_usage: float = 0.0  # fraction of usable KV blocks held by requests
    num_free_blocks: int = 0
    num_usable_blocks: int = 0  # all blocks but the reserved null block
    num_preemptions_total: int = 0
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache
    prefix_cache_hits: int = 0
    num_unfinished_requests: int = 0  # parent requests the engine still holds
    num_steps_total: int = 0
    # speculative decoding (the engine's `spec_stats`; zeros without it)
    spec_num_drafts: int = 0  # requests that verified drafts, summed over steps
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0
    spec_accepted_per_position: tuple[int, ...] = ()  # [j]: drafts at position j accepted


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
        self._last: RequestOutput | None = None  # engine thread only, as _done
        self._done: set[int] = set()  # indexes of the sequences that finished

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

    # Engine thread only: what abort_all's last output needs (the sequences still running).
    def _seen(self, out: RequestOutput) -> None:
        self._last = out
        self._done.update(c.index for c in out.outputs if c.finish_reason is not None)

    def _abort_output(self) -> RequestOutput:
        last = self._last
        return RequestOutput(
            request_id=self.request_id,
            prompt=last.prompt if last else None,
            prompt_token_ids=last.prompt_token_ids if last else None,
            prompt_logprobs=last.prompt_logprobs if last else None,
            outputs=[
                CompletionOutput(i, "", [], None, None, finish_reason="abort")
                for i in range(self.num_seqs)
                if i not in self._done
            ],
            finished=True,
            num_cached_tokens=last.num_cached_tokens if last else None,
        )

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
    lora_request: Any = None


@dataclass
class _Call:
    """Run fn(engine) on the engine thread; its result or exception goes to `future`."""

    fn: Any
    future: asyncio.Future


@dataclass
class _Abort:
    request_id: str


@dataclass
class _AbortAll:
    pass


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
        self._commands: list[_Add | _Abort | _AbortAll | _Call] = []
        self._num_pending_adds = 0
        self._closed = False  # close_admission() was called
        self._ended = False  # the thread took its last commands: nothing queued now would run
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

    # ----- admission and shutdown (event loop side) ---------------------------------------------
    @property
    def accepting(self) -> bool:
        """False once `close_admission()` was called."""
        return not self._closed

    def close_admission(self) -> None:
        """Refuse every later request with ShuttingDownError (those already queued still run)."""
        with self._lock:
            self._closed = True

    def abort_all(self) -> None:
        """End every request the engine holds or has queued: each unfinished sequence ends with
        finish_reason "abort" (an empty last delta), freeing its KV blocks. Thread-safe."""
        with self._lock:
            self._commands.append(_AbortAll())
        self._wake.set()

    def check_admission(self, num_seqs: int) -> None:
        """Raise what `add_requests` would for a request of `num_seqs` sequences now:
        ShuttingDownError, EngineDeadError or QueueFullError (a cheap early answer: the engine
        may fill up before the request is added, and then `add_requests` refuses it)."""
        with self._lock:
            self._check_admission_locked(num_seqs)

    def _check_admission_locked(self, num_seqs: int) -> None:
        if self._closed:
            raise ShuttingDownError("the server is shutting down: it takes no new requests")
        if self._ended or not self.is_running:
            raise EngineDeadError(self._dead_message())
        bound = self.max_waiting_requests
        if bound is not None:
            waiting = self._num_pending_adds + self._stats.num_waiting
            if waiting + num_seqs > bound:
                raise QueueFullError(waiting, bound, num_seqs)

    # ----- requests (event loop side) -----------------------------------------------------------
    async def add_request(
        self,
        request_id: str,
        prompt: str | Sequence[int] | dict,
        params: SamplingParams,
        *,
        arrival_time: float | None = None,
        priority: int = 0,
        lora_request: Any = None,
    ) -> RequestStream:
        """Queue a request; returns its stream once the engine accepted it.

        Raises ValueError (the engine's validation, e.g. a non-zero `priority` under the "fcfs"
        scheduling policy, or a LoRA adapter that cannot load), QueueFullError or EngineDeadError.
        """
        streams = await self.add_requests(
            [(request_id, prompt, params)],
            arrival_time=arrival_time,
            priority=priority,
            lora_request=lora_request,
        )
        return streams[0]

    async def add_requests(
        self,
        requests: Sequence[tuple[str, str | Sequence[int] | dict, SamplingParams]],
        *,
        arrival_time: float | None = None,
        priority: int = 0,
        lora_request: Any = None,
    ) -> list[RequestStream]:
        """Queue several (request_id, prompt, params) together (they reach the engine before the
        same step), all or none: if one is refused, the others are aborted and the error raised.
        They share `arrival_time`, `priority` and `lora_request`. The waiting bound counts all
        their sequences (the sum of their `n`): QueueFullError when they would take the waiting
        sequences over it; ShuttingDownError after `close_admission()`; EngineDeadError."""
        num_seqs = sum(p.n for _, _, p in requests)
        self.check_admission(num_seqs)  # before any grammar is compiled
        loop = asyncio.get_running_loop()
        now = time.time() if arrival_time is None else arrival_time
        # grammars compile in the engine's pool while this loop serves others; a malformed one is
        # the ValueError (a 400) before anything is queued
        specs = [p.structured_outputs for _, _, p in requests if p.structured_outputs is not None]
        if specs:
            compiler = self.engine.structured_outputs
            await asyncio.gather(*(asyncio.wrap_future(compiler.submit(s)) for s in specs))
        if lora_request is not None:
            await self._prefetch_lora(lora_request)
        cmds = [
            _Add(
                rid,
                prompt,
                params,
                now,
                RequestStream(rid, self, params.n),
                loop.create_future(),
                priority,
                lora_request,
            )
            for rid, prompt, params in requests
        ]
        with self._lock:
            self._check_admission_locked(num_seqs)  # the binding answer
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

    async def add_lora(self, lora_request: Any) -> None:
        """Load a LoRA adapter (read on the engine's loader thread, registered by the engine
        thread between steps). Raises the engine's ValueError naming the problem (a missing
        folder, an unsupported or mismatched adapter, LoRA not enabled) or EngineDeadError."""
        await self._prefetch_lora(lora_request)
        await self._call(lambda engine: engine.add_lora(lora_request))

    async def remove_lora(self, lora_int_id: int) -> bool:
        """Unregister a LoRA adapter (requests already queued with it finish with it); whether
        the engine had it."""
        return bool(await self._call(lambda engine: engine.remove_lora(lora_int_id)))

    async def _prefetch_lora(self, lora_request: Any) -> None:
        """Wait, without holding this loop or the engine thread, for the adapter to be read.
        Its errors are left to the engine thread's add, which raises them as ValueError and
        forgets the failed read."""
        prefetch = getattr(self.engine, "prefetch_lora", None)
        if prefetch is None:
            return
        try:
            future = prefetch(lora_request)
        except ValueError:
            return
        if future is not None:
            # shielded: a caller that goes away must not cancel a read other requests share
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wrap_future(future))

    async def _call(self, fn: Any) -> Any:
        """fn(engine) on the engine thread, between steps; its result, or its exception."""
        cmd = _Call(fn, asyncio.get_running_loop().create_future())
        with self._lock:
            if self._ended or not self.is_running:
                raise EngineDeadError(self._dead_message())
            self._commands.append(cmd)
        self._wake.set()
        return await cmd.future

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
                        stream._seen(out)
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
                elif isinstance(cmd, _AbortAll):
                    self._apply_abort_all(handoff)
                elif isinstance(cmd, _Call):
                    self._apply_call(cmd, handoff)
                else:
                    self._apply_abort(cmd.request_id, handoff)
            if commands:
                self._update_stats()

    def _apply_add(self, cmd: _Add, handoff: list) -> None:
        if cmd.future.cancelled():
            return
        # only when set: engines of tests (and a data-parallel one) take no lora_request
        lora = {} if cmd.lora_request is None else {"lora_request": cmd.lora_request}
        try:
            self.engine.add_request(
                cmd.request_id,
                cmd.prompt,
                cmd.params,
                arrival_time=cmd.arrival_time,
                output_kind="delta",
                priority=cmd.priority,
                **lora,
            )
        except Exception as e:  # ValueError from validation; anything else is reported too
            handoff.append((_set_exception, (cmd.future, e)))
            return
        self._streams[cmd.request_id] = cmd.stream
        handoff.append((_set_result, (cmd.future, None)))

    def _apply_call(self, cmd: _Call, handoff: list) -> None:
        if cmd.future.cancelled():
            return
        try:
            result = cmd.fn(self.engine)
        except Exception as e:
            handoff.append((_set_exception, (cmd.future, e)))
            return
        handoff.append((_set_result, (cmd.future, result)))

    def _apply_abort(self, request_id: str, handoff: list) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return  # finished already (or never accepted)
        self.engine.abort_request(request_id)
        if self.stat_listener is not None:
            self.stat_listener.on_abort(request_id, stream.num_seqs, time.time())
        handoff.append((stream._put, _END))

    def _apply_abort_all(self, handoff: list) -> None:
        now = time.time()
        for rid, stream in list(self._streams.items()):
            self.engine.abort_request(rid)
            final = stream._abort_output()
            if self.stat_listener is not None:
                self.stat_listener.on_abort(rid, len(final.outputs), now)
            handoff.append((stream._put, final))
        self._streams.clear()

    def _update_stats(self) -> None:
        # one engine, or the replicas of a data-parallel engine (summed; usage over all blocks)
        engines = getattr(self.engine, "replicas", None) or [self.engine]
        scheds = [e.scheduler for e in engines]
        usable = [e.runner.num_blocks - 1 for e in engines]
        # a DP engine sums its replicas'; an engine without the attribute (a test's) has none
        spec = getattr(self.engine, "spec_stats", None) or SpecDecodeStats()
        self._stats = EngineStats(
            num_running=sum(s.num_running for s in scheds),
            num_waiting=sum(s.num_waiting_seqs for s in scheds),
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
            spec_num_drafts=spec.num_drafts,
            spec_num_draft_tokens=spec.num_draft_tokens,
            spec_num_accepted_tokens=spec.num_accepted_tokens,
            spec_accepted_per_position=tuple(spec.accepted_per_position),
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
            self._ended = True
        for cmd in commands:
            if isinstance(cmd, _Add | _Call):
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
