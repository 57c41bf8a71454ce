"""`build_host_batch` (vectorized) against a plain per-row loop over random scheduler outputs:
prefill chunks, decodes, fork rows of n > 1 requests, prompt-logprob rows, both bucket policies."""

from __future__ import annotations

import numpy as np
import pytest

from jaxllm.engine.batch_builder import build_host_batch
from jaxllm.engine.buckets import StepShapePolicy, accelerator_policy, next_power_of_two
from jaxllm.request import Request
from jaxllm.sampling_params import SamplingParams
from jaxllm.scheduler.output import ScheduledRequest, SchedulerOutput

BS = 16


def _loop_reference(sched, policy, want):
    """The straightforward per-row construction (what the vectorized builder must equal)."""
    reqs = sched.scheduled
    n_tok = sum(r.num_new_tokens for r in reqs)
    T, S, P = policy.shape(n_tok, len(reqs), max(len(r.block_ids) for r in reqs))
    tok, pos_a, slot = np.zeros(T, np.int32), np.zeros(T, np.int32), np.full(T, -1, np.int32)
    table, kv = np.zeros((S, P), np.int32), np.zeros(S, np.int32)
    qsl = np.full(S + 1, n_tok, np.int32)
    qsl[0] = 0
    last = np.zeros(S, np.int32)
    rows, idx, count, cursor, last_row = [], [], 0, 0, {}
    for i, sr in enumerate(reqs):
        start, n = sr.num_computed_tokens, sr.num_new_tokens
        if n == 0:
            qsl[i + 1] = cursor
            last[i] = last_row[sr.sample_from]
            continue
        ids = np.asarray(sr.block_ids, np.int32)
        table[i, : len(ids)] = ids
        p = np.arange(start, start + n)
        tok[cursor : cursor + n] = sr.request.all_token_ids[start : start + n]
        pos_a[cursor : cursor + n] = p
        slot[cursor : cursor + n] = ids[p // BS] * BS + p % BS
        kv[i] = start + n
        qsl[i + 1] = cursor + n
        last[i] = cursor + n - 1
        last_row[sr.request_id] = last[i]
        if sr.request_id in want:
            end = min(start + n, sr.request.num_prompt_tokens - 1)
            if end > start:
                rows.append((i, start, end - start, count))
                idx += list(range(cursor, cursor + end - start))
                count += end - start
        cursor += n
    rp = next_power_of_two(count) if count else 0
    extra = np.zeros(rp, np.int32)
    extra[:count] = idx
    return dict(
        token_ids=tok,
        positions=pos_a,
        slot_mapping=slot,
        block_tables=table,
        kv_lens=kv,
        query_start_loc=qsl,
        logits_indices=np.concatenate([last, extra]),
        decode_only=all(r.num_new_tokens == 1 for r in reqs),
        prompt_logprob_rows=rows,
        num_prompt_logprob_rows=rp,
    )


def _random_step(rng, with_forks):
    scheduled, next_block = [], 1
    for i in range(int(rng.integers(1, 12))):
        prompt = rng.integers(3, 1000, int(rng.integers(1, 90))).tolist()
        req = Request(f"r{i}", prompt, SamplingParams())
        if rng.random() < 0.5:  # decoding: the prompt and some outputs are in the cache
            req.append_output_token_ids(rng.integers(3, 1000, int(rng.integers(1, 20))).tolist())
            start, n = req.num_tokens - 1, 1
        else:  # a prefill chunk
            start = int(rng.integers(0, len(prompt)))
            n = int(rng.integers(1, len(prompt) - start + 1))
        nb = -(-(start + n) // BS)
        ids = list(range(next_block, next_block + nb))
        next_block += nb
        scheduled.append(ScheduledRequest(req, n, start, ids, samples=start + n == req.num_tokens))
    if with_forks:  # fork rows last, sampling from rows that finish their prompt this step
        sources = [s for s in scheduled if s.samples]
        for j, src in enumerate(sources[:3]):
            scheduled.append(
                ScheduledRequest(
                    Request(f"f{j}", src.request.prompt_token_ids, SamplingParams()),
                    0,
                    src.num_computed_tokens,
                    list(src.block_ids),
                    samples=True,
                    sample_from=src.request_id,
                )
            )
    sched = SchedulerOutput(scheduled=scheduled)
    sched.num_batched_tokens = sum(s.num_new_tokens for s in scheduled)
    return sched


@pytest.mark.parametrize("accelerator", [False, True], ids=["cpu-policy", "accelerator-policy"])
def test_vectorized_builder_equals_loop(accelerator):
    rng = np.random.default_rng(0)
    for case in range(150):
        sched = _random_step(rng, with_forks=case % 3 == 0)
        policy = accelerator_policy(512, 16, 8, BS) if accelerator else StepShapePolicy(512, 16, 8)
        want = frozenset(s.request_id for s in sched.scheduled if rng.random() < 0.3)
        got = build_host_batch(sched, block_size=BS, policy=policy, want_prompt_logprobs=want)
        ref = _loop_reference(sched, policy, want)
        for name, value in ref.items():
            g = getattr(got, name)
            if isinstance(value, np.ndarray):
                assert g.dtype == value.dtype and g.shape == value.shape, (case, name)
                np.testing.assert_array_equal(g, value, err_msg=f"case {case}: {name}")
            else:
                assert g == value, (case, name, g, value)


def test_fork_row_before_its_source_is_an_error():
    rng = np.random.default_rng(1)
    sched = _random_step(rng, with_forks=False)
    src = sched.scheduled[0]
    fork = ScheduledRequest(src.request, 0, 0, list(src.block_ids), True, sample_from="nobody")
    sched.scheduled.append(fork)
    with pytest.raises(ValueError, match="fork row .* samples from 'nobody'"):
        build_host_batch(sched, block_size=BS, policy=StepShapePolicy(512, 16, 8))


@pytest.mark.parametrize("accelerator", [False, True], ids=["cpu-policy", "accelerator-policy"])
def test_tokens_in_flight_are_read_from_the_previous_step(accelerator):
    """Asynchronous scheduling: a decode row whose input token is still on the device gets a
    0 in token_ids and the previous step's row in prev_rows; everything else equals the batch
    built once that token is known."""
    rng = np.random.default_rng(2)
    policy = accelerator_policy(512, 16, 8, BS) if accelerator else StepShapePolicy(512, 16, 8)
    for case in range(60):
        sched = _random_step(rng, with_forks=case % 3 == 0)
        pending, late = {}, {}
        for sr in sched.scheduled:
            req = sr.request
            decoding = sr.num_new_tokens == 1 and req.num_output_tokens > 0
            if decoding and sr.num_computed_tokens == req.num_tokens - 1 and rng.random() < 0.6:
                # its last output token is still in flight: take it back out of the request
                late[sr.request_id] = req.output_token_ids.pop()
                req.all_token_ids.pop()
                req.num_output_placeholders = 1
                pending[sr.request_id] = int(rng.integers(0, 16))
        if not late:
            continue
        got = build_host_batch(sched, block_size=BS, policy=policy, pending_rows=pending)
        for sr in sched.scheduled:  # the tokens arrive
            if sr.request_id in late:
                sr.request.append_output_token_ids(late[sr.request_id])
                sr.request.num_output_placeholders = 0
        ref = build_host_batch(sched, block_size=BS, policy=policy)
        flight = got.prev_rows >= 0
        assert flight.sum() == len(late) and (ref.prev_rows == -1).all()
        np.testing.assert_array_equal(got.token_ids[flight], 0)
        np.testing.assert_array_equal(got.token_ids[~flight], ref.token_ids[~flight])
        rows = {sr.request_id: i for i, sr in enumerate(sched.scheduled)}
        for rid, src in pending.items():  # each row's last token reads its own source row
            t = got.query_start_loc[rows[rid] + 1] - 1
            assert got.prev_rows[t] == src and ref.token_ids[t] == late[rid]
        for name in ("positions", "slot_mapping", "block_tables", "kv_lens", "query_start_loc"):
            np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))


def test_a_token_in_flight_without_a_source_row_is_an_error():
    req = Request("r", [5, 6, 7], SamplingParams())
    req.num_output_placeholders = 1
    sched = SchedulerOutput(scheduled=[ScheduledRequest(req, 1, 3, [1], samples=True)])
    with pytest.raises(ValueError, match="'r' has a token in flight"):
        build_host_batch(sched, block_size=BS, policy=StepShapePolicy(512, 16, 8), pending_rows={})
