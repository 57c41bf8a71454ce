"""The rows a model-based proposer runs (draft model, EAGLE head) and what it keeps between calls.

A proposer's own step computes, for a request, a run of tokens at positions `start`, `start + 1`,
... in the request's KV blocks (the target's block ids index the proposer's cache too). `draft_row`
makes such a row as a `ScheduledRequest` that `build_host_batch` packs like any other; `Drafting`
holds a request's drafts while the k - 1 one-token steps of `grow_drafts` add to them;
`carried_drafts` keeps the drafts of requests the last step did not schedule;
`mirror_block_mover` gives the proposer's cache swap
space for every host block id the target uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from jaxllm.engine.kv_swap import KVBlockMover
from jaxllm.models.batch import KVCache
from jaxllm.scheduler.output import ScheduledRequest, SchedulerOutput

if TYPE_CHECKING:
    from jaxllm.request import Request


class TokensFrom:
    """A sequence's tokens from position `offset` on: what `build_host_batch` slices of a draft
    row (only the row's new tokens), without copying the request's earlier tokens."""

    def __init__(self, offset: int, token_ids: Sequence[int]) -> None:
        self.offset = offset
        self.token_ids = token_ids

    def __len__(self) -> int:
        return self.offset + len(self.token_ids)

    def __getitem__(self, s: slice) -> Sequence[int]:
        start, stop, _ = s.indices(len(self))
        if start < self.offset:
            raise IndexError(f"tokens before position {self.offset} are not held here")
        return self.token_ids[start - self.offset : stop - self.offset]


@dataclass
class DraftSequence:
    """The stand-in `Request` of one draft row: what `build_host_batch` and the runner read of
    it (no prompt logprobs are asked, no token is in flight)."""

    request_id: str
    all_token_ids: TokensFrom
    num_prompt_tokens: int
    prompt_token_ids: Sequence[int]
    num_output_placeholders: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)


def draft_row(
    request: Request, start: int, token_ids: Sequence[int], block_ids: list[int], samples: bool
) -> ScheduledRequest:
    """A draft row computing `token_ids` at positions start, start + 1, ..."""
    seq = DraftSequence(
        request.request_id,
        TokensFrom(start, token_ids),
        request.num_prompt_tokens,
        request.prompt_token_ids,
    )
    # the runner reads only the fields DraftSequence has
    return ScheduledRequest(cast("Request", seq), len(token_ids), start, block_ids, samples)


@dataclass
class Drafting:
    """A request getting drafts this call: its tokens, the most drafts it may take, and the
    number of positions its block table holds (the proposer writes none past them)."""

    request: Request
    room: int
    block_ids: list[int]
    num_slots: int
    drafts: list[int] = dataclasses.field(default_factory=list)


def grow_drafts(
    drafting: dict[str, Drafting],
    k: int,
    lag: int,
    run: Callable[[list[Drafting], list[ScheduledRequest]], list[int]],
) -> None:
    """Up to k - 1 one-token steps after the first draft: each feeds every request's last draft
    at position `num_tokens + len(drafts) - 1 - lag` (a draft model: right after its tokens and
    earlier drafts; an EAGLE head, whose position i reads token i + 1: one before) while it has
    room and block slots; `run(requests, rows)` runs one step and gives each row's next draft."""
    for _ in range(k - 1):
        step = [
            d
            for d in drafting.values()
            if len(d.drafts) < min(k, d.room)
            and d.request.num_tokens + len(d.drafts) - 1 - lag < d.num_slots
        ]
        if not step:
            return
        rows = [
            draft_row(
                d.request,
                d.request.num_tokens + len(d.drafts) - 1 - lag,
                d.drafts[-1:],
                d.block_ids,
                True,
            )
            for d in step
        ]
        for d, token in zip(step, run(step, rows), strict=True):
            d.drafts.append(token)


def carried_drafts(
    sched: SchedulerOutput,
    requests: list[tuple[Request, int]],
    last: dict[str, list[int]],
) -> dict[str, list[int]]:
    """The drafts of `requests` that `sched` did not schedule: they still hold the same tokens,
    so the drafts last asked for (`last`, request id -> drafts) stand, cut to the room left."""
    scheduled = {sr.request_id for sr in sched.scheduled}
    return {
        r.request_id: last[r.request_id][:room]
        for r, room in requests
        if r.request_id not in scheduled and r.request_id in last
    }


def mirror_block_mover(kv_cache: KVCache, target: KVBlockMover) -> KVBlockMover:
    """A block mover for the proposer's `kv_cache` with room for every host block id the target's
    mover `target` uses (swap preemption), so swap-outs and swap-ins mirror one to one."""
    mover = KVBlockMover(kv_cache, 0.0)
    num_host = target.num_host_blocks
    if num_host:
        mover = KVBlockMover(kv_cache, (num_host + 0.5) * mover.bytes_per_block / 2**30)
        assert mover.num_host_blocks >= num_host
    return mover
