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

    A fork row (a sample of an `n` > 1 request forked onto its parent's blocks this step) computes
    nothing (num_new_tokens == 0): it samples its first token, with its own seed, from the logits
    of `sample_from`'s last scheduled token (the parent's last prompt token, scheduled earlier in
    the same step). Fork rows come last in `SchedulerOutput.scheduled`.
    """

    request: Request
    num_new_tokens: int  # tokens computed this step (>= 1; 0 for a fork row)
    num_computed_tokens: int  # tokens already in the KV cache = position of the first new token
    block_ids: list[int]  # the request's whole block table after this step's allocation
    # True when this step computes all the request's known tokens: the runner samples the next
    # token from the last scheduled token's logits. False for a non-final prefill chunk.
    samples: bool
    sample_from: str | None = None  # fork rows: the request id whose logits they sample from
    # speculative decoding: draft tokens verified this step. They are the last len(...) of the
    # num_new_tokens (after all of the request's known tokens); the step samples one token after
    # the last known token and one after each draft.
    spec_token_ids: list[int] = field(default_factory=list)

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
    # KV block copies the model runner does before the step, in this order (each a list of
    # (src, dst) block ids): device -> host for requests preempted by swap, host -> device for
    # swapped requests resumed, then device -> device copy-on-write of shared partial blocks.
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)

    @property
    def has_block_ops(self) -> bool:
        return bool(self.blocks_to_swap_out or self.blocks_to_swap_in or self.blocks_to_copy)

    @property
    def is_empty(self) -> bool:
        """Nothing to run: no request scheduled and no block copies to do."""
        return not self.scheduled and not self.has_block_ops
