"""A generation request's host-side state: its tokens and a few counters.

The scheduler and the KV-cache manager read and advance this record; the engine creates it. A
request's state is a handful of counters, as in nano-vllm and vLLM v1:

    all_token_ids = prompt_token_ids + output_token_ids
    num_computed_tokens <= num_tokens + num_output_placeholders   (tokens whose KV is in the cache
                                                                   or being computed)

`num_output_placeholders` counts tokens sampled by a step still running on the device (asynchronous
scheduling, see `jaxllm/scheduler/scheduler.py`): their values are not known on the host yet.

`sampling_params` is duck-typed: anything with `max_tokens` (int or None), `min_tokens`,
`ignore_eos` and `stop_token_ids` works (e.g. `jaxllm.sampling_params.SamplingParams`).
Host side only: no JAX here.
"""

from __future__ import annotations

import enum
import numbers
import time
from collections.abc import Sequence
from typing import Any


class RequestStatus(enum.IntEnum):
    """Lifecycle of a request. Every status after PREEMPTED is a finished one."""

    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()

    def is_finished(self) -> bool:
        """`status.is_finished()` or `RequestStatus.is_finished(status)`."""
        return self > RequestStatus.PREEMPTED

    def finish_reason(self) -> str | None:
        """OpenAI/vLLM finish reason: "stop", "length" or "abort"; None while unfinished."""
        return FINISH_REASONS.get(self)


FINISH_REASONS: dict[RequestStatus, str] = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class Request:
    """One sequence being generated.

    Args:
        request_id: unique id (the scheduler rejects duplicates).
        prompt_token_ids: the prompt, at least one token.
        sampling_params: duck-typed, see the module docstring.
        eos_token_ids: end-of-sequence ids from the model/tokenizer (ignored when
            `sampling_params.ignore_eos`).
        arrival_time: wall-clock seconds; defaults to now.
        cache_salt: extra key mixed into the prefix-cache hash, so that requests with different
            salts never share cached KV blocks.
        priority: with the scheduler's "priority" policy, lower values are scheduled first and
            preempted last (ties by arrival time); must be 0 under "fcfs".
        lora_int_id: the LoRA adapter it runs with (`LoRARequest.lora_int_id`; 0: the base
            model). Mixed into the prefix-cache hash like the salt, and counted by the scheduler
            against `max_loras`.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: Any,
        eos_token_ids: Sequence[int] = (),
        arrival_time: float | None = None,
        cache_salt: str | None = None,
        priority: int = 0,
        lora_int_id: int = 0,
    ) -> None:
        if not isinstance(request_id, str):
            raise ValueError(f"request_id must be a str, got {type(request_id).__name__}")
        if len(prompt_token_ids) == 0:
            raise ValueError(f"request {request_id!r}: prompt_token_ids must not be empty")
        for name in ("max_tokens", "min_tokens", "ignore_eos", "stop_token_ids"):
            if not hasattr(sampling_params, name):
                raise ValueError(f"request {request_id!r}: sampling_params lacks {name!r}")
        max_tokens = sampling_params.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"request {request_id!r}: max_tokens must be >= 1, got {max_tokens}")
        if cache_salt is not None and not isinstance(cache_salt, str):
            raise ValueError(f"request {request_id!r}: cache_salt must be a str or None")

        self.request_id = request_id
        self.prompt_token_ids: list[int] = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_ids: tuple[int, ...] = tuple(eos_token_ids)
        self.arrival_time = time.time() if arrival_time is None else arrival_time
        self.cache_salt = cache_salt
        self.priority = priority
        if isinstance(lora_int_id, bool) or not isinstance(lora_int_id, int) or lora_int_id < 0:
            raise ValueError(f"request {request_id!r}: lora_int_id must be an int >= 0")
        self.lora_int_id = lora_int_id

        self.output_token_ids: list[int] = []
        # prompt + output, kept in step with output_token_ids so reads never rebuild a list.
        self._all_token_ids: list[int] = list(self.prompt_token_ids)
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_output_placeholders = 0  # sampled in a step still in flight, values unknown
        # speculative decoding: draft tokens proposed to follow all_token_ids, verified (and
        # cleared) by the next step that schedules the request
        self.spec_token_ids: list[int] = []
        self.num_cached_tokens = -1  # prefix-cache hit tokens at first scheduling
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None

    # ----- token counts -----------------------------------------------------------------------
    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self._all_token_ids)

    @property
    def num_tokens_with_placeholders(self) -> int:
        """Known tokens plus the ones a step in flight is sampling."""
        return len(self._all_token_ids) + self.num_output_placeholders

    @property
    def all_token_ids(self) -> list[int]:
        """prompt + output tokens. The live list: read it, do not mutate it."""
        return self._all_token_ids

    @property
    def max_tokens(self) -> int | None:
        return self.sampling_params.max_tokens

    def append_output_token_ids(self, token_ids: int | Sequence[int]) -> None:
        if isinstance(token_ids, numbers.Integral):
            token_ids = (int(token_ids),)
        else:
            token_ids = [int(t) for t in token_ids]  # plain ints, also from numpy arrays
        self.output_token_ids.extend(token_ids)
        self._all_token_ids.extend(token_ids)

    def truncate_output_token_ids(self, num_output_tokens: int) -> None:
        """Drop output tokens past the first `num_output_tokens` (tokens emitted together with
        the one that completed a stop string, under speculative decoding)."""
        drop = self.num_output_tokens - num_output_tokens
        if drop > 0:
            del self.output_token_ids[num_output_tokens:]
            del self._all_token_ids[len(self._all_token_ids) - drop :]

    # ----- status -----------------------------------------------------------------------------
    def is_finished(self) -> bool:
        return self.status.is_finished()

    @property
    def finish_reason(self) -> str | None:
        return self.status.finish_reason()

    def __repr__(self) -> str:
        return (
            f"Request(id={self.request_id!r}, status={self.status.name}, "
            f"prompt={self.num_prompt_tokens}, output={self.num_output_tokens}, "
            f"computed={self.num_computed_tokens})"
        )
