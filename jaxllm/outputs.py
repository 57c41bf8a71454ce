"""vLLM-compatible output records (host side; never imports JAX).

`LLM.generate` returns one `RequestOutput` per prompt; each holds `n` `CompletionOutput`s. Field
names follow vLLM so that code written against vLLM's outputs reads these unchanged:

    out.request_id, out.prompt, out.prompt_token_ids, out.prompt_logprobs, out.finished,
    out.metrics, out.num_cached_tokens,
    out.outputs[i].index / .text / .token_ids / .cumulative_logprob / .logprobs /
                  .finish_reason / .stop_reason

Logprobs are stored per position as `{token_id: Logprob}` (the sampled token plus the top-k
alternatives), exactly as vLLM's `SampleLogprobs` / `PromptLogprobs`.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field

__all__ = [
    "Logprob",
    "SampleLogprobs",
    "PromptLogprobs",
    "CompletionOutput",
    "RequestMetrics",
    "RequestOutput",
    "FINISH_REASONS",
]

FINISH_REASONS = ("stop", "length", "abort")

_short = reprlib.Repr()
_short.maxlist = 16  # long token id / logprob lists print as "[1, 2, ..., ...]"
_short.maxstring = 200
_short.maxother = 200


@dataclass
class Logprob:
    """Log probability of one token at one position.

    logprob: the (post-processing) log probability; rank: 1-based rank of the token in the
    vocabulary at that position (1 = most likely); decoded_token: its text, when detokenized.
    """

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One dict per generated token: token id -> Logprob (the sampled token and the top-k).
SampleLogprobs = list[dict[int, Logprob]]
# One entry per prompt token; the first is None (nothing predicts the first token).
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class CompletionOutput:
    """One generated sequence of a request (request.outputs[index])."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None (still running)
    # The stop string or stop token id that ended the sequence; None for eos or length.
    stop_reason: int | str | None = None

    def __post_init__(self) -> None:
        if self.finish_reason is not None and self.finish_reason not in FINISH_REASONS:
            raise ValueError(
                f"finish_reason must be one of {FINISH_REASONS} or None, got {self.finish_reason!r}"
            )

    def finished(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:
        return (
            f"CompletionOutput(index={self.index}, text={self.text!r}, "
            f"token_ids={_short.repr(list(self.token_ids))}, "
            f"cumulative_logprob={self.cumulative_logprob}, "
            f"logprobs={_short.repr(self.logprobs)}, "
            f"finish_reason={self.finish_reason}, stop_reason={self.stop_reason!r})"
        )


@dataclass
class RequestMetrics:
    """Wall-clock timestamps (time.time() seconds) of a request's life, as vLLM reports them."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    time_in_queue: float | None = None  # first_scheduled_time - arrival_time
    # speculative decoding: draft tokens verified for the request and how many were accepted,
    # and the accepted ones by draft position (index 0: first drafts)
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0
    spec_accepted_per_position: list[int] = field(default_factory=list)

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from arrival to the first generated token (TTFT), when known."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def e2e_latency(self) -> float | None:
        """Seconds from arrival to finish, when finished."""
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    """Output of one request: the prompt, its `n` completions, and bookkeeping."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    num_cached_tokens: int | None = None  # prompt tokens served from the prefix cache

    def __repr__(self) -> str:
        return (
            f"RequestOutput(request_id={self.request_id!r}, prompt={_short.repr(self.prompt)}, "
            f"prompt_token_ids={_short.repr(self.prompt_token_ids)}, "
            f"prompt_logprobs={_short.repr(self.prompt_logprobs)}, "
            f"outputs={self.outputs!r}, finished={self.finished}, metrics={self.metrics!r}, "
            f"num_cached_tokens={self.num_cached_tokens})"
        )
