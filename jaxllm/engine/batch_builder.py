"""Host-side packing of one scheduler step into padded numpy arrays (no JAX).

The arrays match `jaxllm.models.batch.StepBatch` field for field; the model runner moves them to
the device in one transfer. Shapes are bucketed (see buckets.py) so the step compiles a few times.

A fork row (`ScheduledRequest.num_new_tokens == 0`, the fresh samples of an n > 1 request) looks
like a padding row to attention (no query tokens, kv length 0, null block table; fork rows come
last) and takes its logits from the last token of the request it samples from.

Speculative decoding: a row's last `len(spec_token_ids)` new tokens are draft tokens (not yet in
the request). The row's own logits index is its last known token; its drafts' positions follow in
`logits_indices` after the S rows (`spec_rows`), so the step samples one token at each.

Asynchronous scheduling: a decode row's input token may still be on the device (sampled by the
step in flight, a placeholder in the request). Its slot in `token_ids` is 0 and `prev_rows` names
the row of the previous step's sampled tokens that the device substitutes for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain

import numpy as np

from jaxllm.engine.buckets import StepShapePolicy, next_power_of_two
from jaxllm.scheduler.output import SchedulerOutput


@dataclass
class HostBatch:
    """One step's inputs on the host. Row i of the sequence arrays is `scheduled[i]`."""

    token_ids: np.ndarray  # [T] int32
    # [T] int32: -1, or the previous step's sampled-token row that replaces token_ids[t] on the
    # device (a token still in flight; asynchronous scheduling)
    prev_rows: np.ndarray
    positions: np.ndarray  # [T] int32
    slot_mapping: np.ndarray  # [T] int32 (-1 = padding)
    block_tables: np.ndarray  # [S, P] int32 (0 = null block)
    kv_lens: np.ndarray  # [S] int32
    query_start_loc: np.ndarray  # [S + 1] int32
    # [S + E + Rp] int32: the last known token of each sequence, then draft positions (E), then
    # prompt rows
    logits_indices: np.ndarray
    decode_only: bool
    num_seqs: int  # real sequences (rows >= num_seqs are padding)
    num_tokens: int  # real tokens
    # prompt-logprob rows: for each (scheduled row, first prompt position p, count c), logits
    # rows S + offset .. give the distribution of prompt tokens p+1 .. p+c
    prompt_logprob_rows: list[tuple[int, int, int, int]]  # (row, start_pos, count, offset)
    num_prompt_logprob_rows: int  # Rp (padded)
    # draft rows: for each (scheduled row, offset, d), logits rows S + offset .. S + offset + d - 1
    # give the distribution after the row's 1st .. d-th draft token
    spec_rows: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    num_spec_rows: int = 0  # E (padded)


def build_host_batch(
    sched: SchedulerOutput,
    *,
    block_size: int,
    policy: StepShapePolicy,
    want_prompt_logprobs: set[str] | frozenset[str] = frozenset(),
    pending_rows: Mapping[str, int] | None = None,
) -> HostBatch:
    """Vectorized over the scheduled rows: Python touches each row once (its counts, its block
    ids and its new tokens, read through iterators); the rest is numpy. (A per-row loop took
    ~4.5 ms for 256 decode rows: a sixth of a GPU decode step's host time in
    bench/gpu_runs/2026-11-28_h200x2_throughput.md.)

    `pending_rows`: request id -> its row in the previous step's sampled tokens, for requests
    whose last input token is still in flight (`Request.num_output_placeholders`)."""
    reqs = sched.scheduled
    n_seq = len(reqs)
    counts = np.fromiter((r.num_new_tokens for r in reqs), np.int64, n_seq)  # [n_seq]
    starts = np.fromiter((r.num_computed_tokens for r in reqs), np.int64, n_seq)  # [n_seq]
    lens = np.fromiter((len(r.block_ids) for r in reqs), np.int64, n_seq)  # [n_seq]
    drafts = np.fromiter((len(r.spec_token_ids) for r in reqs), np.int64, n_seq)  # [n_seq]
    n_tok = int(counts.sum())
    T, S, P = policy.shape(n_tok, n_seq, int(lens.max()))
    real = counts > 0  # fork rows (0 new tokens) keep a null table and kv length 0
    ends = np.cumsum(counts)  # [n_seq] flat index one past each row's last token
    begins = ends - counts

    # block tables: every real row's ids in one pass, scattered to (row, column)
    table_lens = np.where(real, lens, 0)
    n_ids = int(table_lens.sum())
    block_tables = np.zeros((S, P), np.int32)
    if n_ids:
        flat = np.fromiter(
            chain.from_iterable(r.block_ids for r in reqs if r.num_new_tokens), np.int32, n_ids
        )
        rows = np.repeat(np.arange(n_seq), table_lens)
        cols = np.arange(n_ids) - np.repeat(np.cumsum(table_lens) - table_lens, table_lens)
        block_tables[rows, cols] = flat

    token_ids = np.zeros(T, np.int32)
    prev_rows = np.full(T, -1, np.int32)
    positions = np.zeros(T, np.int32)
    slot_mapping = np.full(T, -1, np.int32)
    if n_tok:
        # tokens past the request's known ones are in flight: the slices below stop short of them
        known = np.fromiter((r.request.num_tokens for r in reqs), np.int64, n_seq)  # [n_seq]
        pending = np.where(real, np.maximum(starts + counts - drafts - known, 0), 0)  # [n_seq]
        host_tokens = np.fromiter(
            chain.from_iterable(
                chain(
                    r.request.all_token_ids[
                        r.num_computed_tokens : r.num_computed_tokens
                        + r.num_new_tokens
                        - len(r.spec_token_ids)
                    ],
                    r.spec_token_ids,
                )
                for r in reqs
            ),
            np.int32,
            n_tok - int(pending.sum()),
        )
        if pending.any():
            if pending.max() > 1:
                raise ValueError("a row has more than one token in flight")
            pend_rows = np.flatnonzero(pending)
            try:
                src = [pending_rows[reqs[i].request_id] for i in pend_rows]  # type: ignore[index]
            except (KeyError, TypeError) as e:
                raise ValueError(
                    f"request {e} has a token in flight that the previous step did not sample"
                ) from None
            flat = ends[pend_rows] - 1  # the last token of each such row
            prev_rows[flat] = src
            on_host = np.ones(n_tok, bool)
            on_host[flat] = False
            token_ids[:n_tok][on_host] = host_tokens
        else:
            token_ids[:n_tok] = host_tokens
        row_of = np.repeat(np.arange(n_seq), counts)  # [n_tok] the row of each token
        pos = np.arange(n_tok) - begins[row_of] + starts[row_of]
        positions[:n_tok] = pos
        slot_mapping[:n_tok] = (
            block_tables[row_of, pos // block_size] * block_size + pos % block_size
        )
    kv_lens = np.zeros(S, np.int32)
    kv_lens[:n_seq] = np.where(real, starts + counts, 0)
    qsl = np.full(S + 1, n_tok, np.int32)
    qsl[0] = 0
    qsl[1 : n_seq + 1] = ends
    last = np.zeros(S, np.int32)
    last[:n_seq] = ends - 1 - drafts
    if not real.all():  # fork rows sample from the last token of the request they name
        row_of_id = {r.request_id: i for i, r in enumerate(reqs) if r.num_new_tokens}
        for i, sr in enumerate(reqs):
            if sr.num_new_tokens:
                continue
            src = row_of_id.get(sr.sample_from)
            if src is None or src > i:
                raise ValueError(
                    f"fork row {sr.request_id!r} samples from {sr.sample_from!r}, which is not "
                    "scheduled before it in this step"
                )
            last[i] = ends[src] - 1

    # prompt-logprob rows: positions p whose next token is a prompt token (p + 1 < prompt length)
    pl_rows: list[tuple[int, int, int, int]] = []
    pl_indices: list[np.ndarray] = []
    pl_count = 0
    if want_prompt_logprobs:
        for i, sr in enumerate(reqs):
            if not sr.num_new_tokens or sr.request.request_id not in want_prompt_logprobs:
                continue
            start, n = sr.num_computed_tokens, sr.num_new_tokens
            end = min(start + n, sr.request.num_prompt_tokens - 1)
            if end > start:
                c = end - start
                pl_rows.append((i, start, c, pl_count))
                pl_indices.append(np.arange(begins[i], begins[i] + c, dtype=np.int32))
                pl_count += c

    spec_rows: list[tuple[int, int, int]] = []
    n_spec = int(drafts.sum())
    E = next_power_of_two(n_spec) if n_spec else 0
    spec_idx = np.zeros(E, np.int32)
    if n_spec:
        off = 0
        for i in np.flatnonzero(drafts):
            d = int(drafts[i])
            spec_rows.append((int(i), off, d))
            spec_idx[off : off + d] = np.arange(ends[i] - d, ends[i], dtype=np.int32)
            off += d

    Rp = next_power_of_two(pl_count) if pl_count else 0
    extra = np.zeros(Rp, np.int32)
    if pl_count:
        extra[:pl_count] = np.concatenate(pl_indices)
    return HostBatch(
        token_ids=token_ids,
        prev_rows=prev_rows,
        positions=positions,
        slot_mapping=slot_mapping,
        block_tables=block_tables,
        kv_lens=kv_lens,
        query_start_loc=qsl,
        logits_indices=np.concatenate([last, spec_idx, extra]),
        decode_only=bool((counts == 1).all()),
        num_seqs=n_seq,
        num_tokens=n_tok,
        prompt_logprob_rows=pl_rows,
        num_prompt_logprob_rows=Rp,
        spec_rows=spec_rows,
        num_spec_rows=E,
    )
