"""What one scheduling step decided: the record the model runner consumes.

Host side only: no JAX here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxllm.request import Request


@dataclass
class ScheduledRequest:
    """One request's share of a step.

    The step computes tokens [num_computed_tokens, num_computed_tokens + num_new_tokens) of
    `request.all_token_ids`, at those positions, writing their KV into the slots that `block_ids`
    maps them to.
    """

    request: Request
    num_new_tokens: int  # tokens computed this step (>= 1)
    num_computed_tokens: int  # tokens already in the KV cache = position of the first new token
    block_ids: list[int]  # the request's whole block table after this step's allocation
    # True when this step computes all the request's known tokens: the runner samples the next
    # token from the last scheduled token's logits. False for a non-final prefill chunk.
    samples: bool

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)  # running first, then new
    preempted: list[Request] = field(default_factory=list)  # their KV blocks are gone
    # Requests finished (or aborted) since the previous schedule(): drop their per-request state.
    finished_request_ids: set[str] = field(default_factory=set)
    num_batched_tokens: int = 0  # sum of num_new_tokens

    @property
    def is_empty(self) -> bool:
        return not self.scheduled
