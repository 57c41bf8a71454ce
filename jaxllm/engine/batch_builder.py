"""Host-side packing of one scheduler step into padded numpy arrays (no JAX).

The arrays match `jaxllm.models.batch.StepBatch` field for field; the model runner moves them to
the device in one transfer. Shapes are bucketed (see buckets.py) so the step compiles a few times.

A fork row (`ScheduledRequest.num_new_tokens == 0`, the fresh samples of an n > 1 request) looks
like a padding row to attention (no query tokens, kv length 0, null block table; fork rows come
last) and takes its logits from the last token of the request it samples from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxllm.engine.buckets import StepShapePolicy, next_power_of_two
from jaxllm.scheduler.output import SchedulerOutput


@dataclass
class HostBatch:
    """One step's inputs on the host. Row i of the sequence arrays is `scheduled[i]`."""

    token_ids: np.ndarray  # [T] int32
    positions: np.ndarray  # [T] int32
    slot_mapping: np.ndarray  # [T] int32 (-1 = padding)
    block_tables: np.ndarray  # [S, P] int32 (0 = null block)
    kv_lens: np.ndarray  # [S] int32
    query_start_loc: np.ndarray  # [S + 1] int32
    logits_indices: np.ndarray  # [S + Rp] int32: last token of each sequence, then prompt rows
    decode_only: bool
    num_seqs: int  # real sequences (rows >= num_seqs are padding)
    num_tokens: int  # real tokens
    # prompt-logprob rows: for each (scheduled row, first prompt position p, count c), logits
    # rows S + offset .. give the distribution of prompt tokens p+1 .. p+c
    prompt_logprob_rows: list[tuple[int, int, int, int]]  # (row, start_pos, count, offset)
    num_prompt_logprob_rows: int  # Rp (padded)


def build_host_batch(
    sched: SchedulerOutput,
    *,
    block_size: int,
    policy: StepShapePolicy,
    want_prompt_logprobs: set[str] | frozenset[str] = frozenset(),
) -> HostBatch:
    reqs = sched.scheduled
    n_seq = len(reqs)
    n_tok = sum(r.num_new_tokens for r in reqs)
    T, S, P = policy.shape(n_tok, n_seq, max(len(r.block_ids) for r in reqs))

    token_ids = np.zeros(T, np.int32)
    positions = np.zeros(T, np.int32)
    slot_mapping = np.full(T, -1, np.int32)
    block_tables = np.zeros((S, P), np.int32)
    kv_lens = np.zeros(S, np.int32)
    qsl = np.full(S + 1, n_tok, np.int32)
    qsl[0] = 0
    last = np.zeros(S, np.int32)
    pl_rows: list[tuple[int, int, int, int]] = []
    pl_indices: list[np.ndarray] = []
    pl_count = 0

    cursor = 0
    last_row: dict[str, int] = {}  # request id -> flat index of its last scheduled token
    for i, sr in enumerate(reqs):
        start, n = sr.num_computed_tokens, sr.num_new_tokens
        if n == 0:
            if sr.sample_from not in last_row:
                raise ValueError(
                    f"fork row {sr.request_id!r} samples from {sr.sample_from!r}, which is not "
                    "scheduled before it in this step"
                )
            qsl[i + 1] = cursor
            last[i] = last_row[sr.sample_from]
            continue
        table = np.asarray(sr.block_ids, np.int32)
        block_tables[i, : len(table)] = table
        pos = np.arange(start, start + n, dtype=np.int32)
        token_ids[cursor : cursor + n] = sr.request.all_token_ids[start : start + n]
        positions[cursor : cursor + n] = pos
        slot_mapping[cursor : cursor + n] = table[pos // block_size] * block_size + pos % block_size
        kv_lens[i] = start + n
        qsl[i + 1] = cursor + n
        last[i] = cursor + n - 1
        last_row[sr.request_id] = last[i]
        if sr.request.request_id in want_prompt_logprobs:
            # positions p whose next token is a prompt token: p + 1 < num_prompt_tokens
            end = min(start + n, sr.request.num_prompt_tokens - 1)
            if end > start:
                c = end - start
                pl_rows.append((i, start, c, pl_count))
                pl_indices.append(np.arange(cursor, cursor + c, dtype=np.int32))
                pl_count += c
        cursor += n

    Rp = next_power_of_two(pl_count) if pl_count else 0
    extra = np.zeros(Rp, np.int32)
    if pl_count:
        extra[:pl_count] = np.concatenate(pl_indices)
    return HostBatch(
        token_ids=token_ids,
        positions=positions,
        slot_mapping=slot_mapping,
        block_tables=block_tables,
        kv_lens=kv_lens,
        query_start_loc=qsl,
        logits_indices=np.concatenate([last, extra]),
        decode_only=all(r.num_new_tokens == 1 for r in reqs),
        num_seqs=n_seq,
        num_tokens=n_tok,
        prompt_logprob_rows=pl_rows,
        num_prompt_logprob_rows=Rp,
    )
