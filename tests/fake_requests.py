"""What the KV-cache and scheduler tests share: requests without an engine, views of the pool."""

from __future__ import annotations

from dataclasses import dataclass

from jaxllm.request import Request


@dataclass
class Params:
    """The SamplingParams fields a Request reads."""

    max_tokens: int | None = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list | None = None
    prompt_logprobs: int | None = None


def make_request(rid, tokens, salt=None, **params) -> Request:
    return Request(
        rid, tokens, Params(**params), eos_token_ids=(0,), arrival_time=0.0, cache_salt=salt
    )


def free_ids(m) -> list[int]:
    """The free queue's block ids, next to evict first."""
    return [b.block_id for b in m.block_pool.free_block_queue.get_all_free_blocks()]


def ref_cnts(m, block_ids) -> list[int]:
    return [m.block_pool.blocks[i].ref_cnt for i in block_ids]


def run(m, req, n) -> list[int]:
    """Allocate and 'compute' n more tokens of a running request; the ids of its new blocks."""
    new = m.allocate_slots(req, n)
    assert new is not None
    req.num_computed_tokens += n
    return [b.block_id for b in new]
