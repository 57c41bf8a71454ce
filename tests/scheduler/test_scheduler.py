"""Scheduler: exact block ids and queue orders through admission, chunking, preemption and
completion, and an end-to-end run against a fake model with a simulated paged KV cache."""

import random

import numpy as np
import pytest
from fake_requests import Params

from jaxllm.config import CacheConfig, SchedulerConfig
from jaxllm.request import Request, RequestStatus
from jaxllm.scheduler import Scheduler

BS = 4
EOS = 0


def make_scheduler(
    num_blocks=32,
    budget=64,
    max_num_seqs=8,
    max_model_len=32,
    chunked=True,
    caching=True,
    async_scheduling=False,
):
    return Scheduler(
        SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=budget,
            max_model_len=max_model_len,
            enable_chunked_prefill=chunked,
            async_scheduling=async_scheduling,
        ),
        CacheConfig(block_size=BS, enable_prefix_caching=caching),
        num_blocks,
    )


_next_tok = iter(range(1000, 10**9, 100))


def req(rid, n_prompt, salt=None, **params):
    """A prompt of distinct tokens (no accidental prefix hits)."""
    start = next(_next_tok)
    return Request(
        rid,
        list(range(start, start + n_prompt)),
        Params(**params),
        eos_token_ids=(EOS,),
        arrival_time=0.0,
        cache_salt=salt,
    )


def summary(out):
    return [
        (s.request_id, s.num_computed_tokens, s.num_new_tokens, s.block_ids, s.samples)
        for s in out.scheduled
    ]


def rids(reqs):
    return [r.request_id for r in reqs]


def step(sched, tokens=None):
    """schedule + update, sampling `tokens[rid]` (default 50) for every request that samples."""
    out = sched.schedule()
    sampled = {
        s.request_id: [(tokens or {}).get(s.request_id, 50)] for s in out.scheduled if s.samples
    }
    sched.update_from_output(out, sampled)
    return out


def test_admission_and_decode_block_growth():
    s = make_scheduler()
    for r in (req("a", 6), req("b", 5), req("c", 3)):
        s.add_request(r)
    out = step(s)
    assert summary(out) == [
        ("a", 0, 6, [1, 2], True),
        ("b", 0, 5, [3, 4], True),
        ("c", 0, 3, [5], True),
    ]
    assert out.num_batched_tokens == 14 and s.num_running == 3 and s.num_waiting == 0
    out = step(s)
    assert summary(out) == [
        ("a", 6, 1, [1, 2], True),
        ("b", 5, 1, [3, 4], True),
        ("c", 3, 1, [5], True),
    ]
    out = step(s)  # c's 5th token opens a new block
    assert summary(out)[2] == ("c", 4, 1, [5, 6], True)
    assert s.requests["c"].output_token_ids == [50, 50, 50]
    assert s.kv_cache_usage == pytest.approx(6 / 31)


def test_chunked_prefill_under_the_token_budget():
    s = make_scheduler(budget=8)
    s.add_request(req("a", 10))
    s.add_request(req("b", 6))
    out = step(s)
    assert summary(out) == [("a", 0, 8, [1, 2], False)]  # budget spent: b waits
    assert s.requests["a"].output_token_ids == [] and rids(s.waiting) == ["b"]
    out = step(s)
    assert summary(out) == [("a", 8, 2, [1, 2, 3], True), ("b", 0, 6, [4, 5], True)]
    s.add_request(req("c", 10))
    out = step(s)  # decodes first, then c is cut to the 6 tokens left
    assert summary(out) == [
        ("a", 10, 1, [1, 2, 3], True),
        ("b", 6, 1, [4, 5], True),
        ("c", 0, 6, [6, 7], False),
    ]
    out = step(s)
    assert summary(out) == [
        ("a", 11, 1, [1, 2, 3], True),
        ("b", 7, 1, [4, 5], True),
        ("c", 6, 4, [6, 7, 8], True),
    ]


def test_without_chunked_prefill_a_prompt_waits_for_a_whole_budget():
    s = make_scheduler(budget=16, max_model_len=16, chunked=False)
    for r in (req("a", 10), req("b", 10), req("c", 3)):
        s.add_request(r)
    out = step(s)
    assert summary(out) == [("a", 0, 10, [1, 2, 3], True)]
    assert rids(s.waiting) == ["b", "c"]  # c does not jump the queue
    out = step(s)
    assert summary(out) == [
        ("a", 10, 1, [1, 2, 3], True),
        ("b", 0, 10, [4, 5, 6], True),
        ("c", 0, 3, [7], True),
    ]
    assert out.num_batched_tokens == 14
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        make_scheduler(budget=8, max_model_len=16, chunked=False)


def test_max_num_seqs_and_finished_ids():
    s = make_scheduler(max_num_seqs=2)
    s.add_request(req("a", 4, max_tokens=1))
    s.add_request(req("b", 4))
    s.add_request(req("c", 4))
    out = step(s)
    assert rids(r.request for r in out.scheduled) == ["a", "b"]
    assert s.requests.get("a") is None and rids(s.running) == ["b"]  # a hit max_tokens
    out = step(s)
    assert summary(out) == [("b", 4, 1, [2, 3], True), ("c", 0, 4, [4], True)]
    assert out.finished_request_ids == {"a"}
    assert step(s).finished_request_ids == set()


def test_preempt_newest_then_recompute_with_prefix_hits():
    s = make_scheduler(num_blocks=8, max_model_len=16)  # 7 usable blocks
    r0, r1, r2 = req("r0", 8), req("r1", 7, max_tokens=2), req("r2", 12)
    for r in (r0, r1, r2):
        s.add_request(r)
    assert summary(step(s)) == [
        ("r0", 0, 8, [1, 2], True),
        ("r1", 0, 7, [3, 4], True),
        ("r2", 0, 12, [5, 6, 7], True),
    ]
    # r0 needs a third block, none is free: the newest (r2) is preempted and r0 gets its tail.
    out = step(s)
    assert summary(out) == [("r0", 8, 1, [1, 2, 7], True), ("r1", 7, 1, [3, 4], True)]
    assert out.preempted == [r2] and rids(s.waiting) == ["r2"] and rids(s.running) == ["r0"]
    assert r2.status == RequestStatus.PREEMPTED and r2.num_computed_tokens == 0
    assert r2.num_preemptions == 1 and s.num_preemptions_total == 1
    assert r1.is_finished()  # max_tokens=2, its blocks 4, 3 went back to the free queue
    # r2 recomputes 12 prompt + 1 output tokens; its blocks 5, 6 are still cached (7 was reused).
    out = step(s, {"r2": 60})
    assert summary(out) == [("r0", 9, 1, [1, 2, 7], True), ("r2", 8, 5, [5, 6, 4, 3], True)]
    assert r2.num_cached_tokens == 0  # recorded at its first scheduling
    assert r2.output_token_ids == [50, 60] and r2.all_token_ids[-2:] == [50, 60]
    assert s.prefix_cache_stats.hits == 8


def test_request_that_cannot_grow_preempts_itself():
    s = make_scheduler(num_blocks=5, max_model_len=16)  # 4 usable blocks
    r0, r1 = req("r0", 7, max_tokens=3), req("r1", 8)
    s.add_request(r0)
    s.add_request(r1)
    step(s)  # r0 [1, 2], r1 [3, 4]
    out = step(s)  # r0 fits its 8th token; r1's 9th needs a block: r1 is the newest
    assert summary(out) == [("r0", 7, 1, [1, 2], True)]
    assert out.preempted == [r1] and rids(s.waiting) == ["r1"] and s.running == [r0]
    # r0 takes block 4 (r1's second block); r1 cannot fit yet and stays waiting.
    out = step(s)
    assert summary(out) == [("r0", 8, 1, [1, 2, 4], True)] and out.preempted == []
    assert r0.finish_reason == "length" and rids(s.waiting) == ["r1"]
    out = step(s)  # hit on block 3 only; 2 new blocks from the head of [3, 4, 2, 1]
    assert summary(out) == [("r1", 4, 5, [3, 4, 2], True)]
    assert out.finished_request_ids == {"r0"}
    while s.has_unfinished_requests():
        step(s)
    assert s.kv_cache_manager.num_free_blocks == 4


@pytest.mark.parametrize(
    "params, sampled, status, n_out, stop_reason",
    [
        (dict(), [9, EOS, 9], RequestStatus.FINISHED_STOPPED, 2, None),
        (dict(stop_token_ids=[7]), [9, 7, 9], RequestStatus.FINISHED_STOPPED, 2, 7),
        (dict(max_tokens=2), [9, 9, 9], RequestStatus.FINISHED_LENGTH_CAPPED, 2, None),
        (dict(max_tokens=None), [9] * 10, RequestStatus.FINISHED_LENGTH_CAPPED, 4, None),
        (dict(min_tokens=2), [EOS, EOS, 9], RequestStatus.FINISHED_STOPPED, 2, None),
        (dict(min_tokens=3, stop_token_ids=[7]), [7, 7, 7], RequestStatus.FINISHED_STOPPED, 3, 7),
        (
            dict(ignore_eos=True, max_tokens=3),
            [EOS] * 4,
            RequestStatus.FINISHED_LENGTH_CAPPED,
            3,
            None,
        ),
        (dict(max_tokens=2), [9, EOS], RequestStatus.FINISHED_LENGTH_CAPPED, 2, None),
    ],
)
def test_stop_conditions(params, sampled, status, n_out, stop_reason):
    s = make_scheduler(max_model_len=12)
    r = req("r", 8, **params)
    s.add_request(r)
    for tok in sampled:
        if not s.has_unfinished_requests():
            break
        step(s, {"r": tok})
    assert r.status == status and r.num_output_tokens == n_out
    assert r.output_token_ids == sampled[:n_out] and r.stop_reason == stop_reason
    assert (
        r.finish_reason
        == {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH_CAPPED: "length"}[
            status
        ]
    )
    assert s.kv_cache_manager.num_free_blocks == 31 and not s.has_unfinished_requests()


def test_several_tokens_in_one_step_stop_at_the_first_stop():
    s = make_scheduler()
    r = req("r", 5)
    s.add_request(r)
    out = s.schedule()
    assert s.update_from_output(out, {"r": [3, EOS, 4]}) == [r]
    assert r.output_token_ids == [3, EOS] and r.status == RequestStatus.FINISHED_STOPPED


def test_finish_requests_waiting_running_and_in_flight():
    s = make_scheduler(max_num_seqs=2)
    a, b, c = req("a", 5), req("b", 6), req("c", 3)
    for r in (a, b, c):
        s.add_request(r)
    step(s)
    assert s.kv_cache_manager.num_free_blocks == 31 - 4
    assert s.finish_requests("c", RequestStatus.FINISHED_ABORTED) == [c]  # waiting
    assert c.finish_reason == "abort" and s.num_waiting == 0
    assert s.finish_requests(["a", "zzz", "a"], RequestStatus.FINISHED_STOPPED) == [a]  # running
    assert rids(s.running) == ["b"] and s.kv_cache_manager.num_free_blocks == 31 - 2
    assert s.finish_requests("a", RequestStatus.FINISHED_ABORTED) == []  # already gone
    out = s.schedule()
    assert out.finished_request_ids == {"a", "c"}
    s.finish_requests("b", RequestStatus.FINISHED_ABORTED)  # aborted while in flight
    assert s.update_from_output(out, {}) == []  # skipped, no sample needed
    assert b.num_output_tokens == 1 and s.get_num_unfinished_requests() == 0
    assert s.kv_cache_manager.num_free_blocks == 31
    with pytest.raises(ValueError, match="FINISHED_"):
        s.finish_requests("b", RequestStatus.RUNNING)


def test_bad_input_is_rejected():
    s = make_scheduler(max_model_len=16)
    s.add_request(req("a", 4))
    with pytest.raises(ValueError, match="already in the scheduler"):
        s.add_request(req("a", 4))
    with pytest.raises(ValueError, match="longer than max_model_len"):
        s.add_request(req("long", 17))
    with pytest.raises(ValueError, match="cannot hold one max_model_len"):
        make_scheduler(num_blocks=4, max_model_len=16)
    with pytest.raises(ValueError, match="no sampled token for request 'a'"):
        s.update_from_output(s.schedule(), {})
    with pytest.raises(ValueError, match="prompt_token_ids must not be empty"):
        Request("e", [], Params())
    with pytest.raises(ValueError, match="lacks 'max_tokens'"):
        Request("e", [1], object())


def test_real_sampling_params_work():
    sp_mod = pytest.importorskip("jaxllm.sampling_params")
    s = make_scheduler()
    r = Request(
        "r",
        [5, 6, 7],
        sp_mod.SamplingParams(max_tokens=5, min_tokens=2, stop_token_ids=[7]),
        eos_token_ids=(EOS,),
    )
    s.add_request(r)
    for tok in (7, 8, 7, 9):
        if s.has_unfinished_requests():
            step(s, {"r": tok})
    assert r.output_token_ids == [7, 8, 7] and r.stop_reason == 7 and r.finish_reason == "stop"


# ----- end to end against a fake model and a simulated paged KV cache -----------------------
def fake_next_token(prefix):
    """A deterministic 'model': the next token depends on the whole prefix."""
    return (sum(prefix) * 31 + len(prefix) * 7) % 40  # 0 (EOS) now and then


def reference_generate(r, max_model_len):
    """Sequential generation with the documented stop rules, one request alone."""
    p, toks, out = r.sampling_params, list(r.prompt_token_ids), []
    while True:
        t = fake_next_token(toks)
        toks.append(t)
        out.append(t)
        if len(toks) >= max_model_len or (p.max_tokens is not None and len(out) >= p.max_tokens):
            return out, "length"
        stops = (not p.ignore_eos and t == EOS) or t in (p.stop_token_ids or ())
        if len(out) >= p.min_tokens and stops:
            return out, "stop"


# (chunked, caching, num_blocks, budget): preemption with and without prefix caching, whole
# prompts only, and a roomy cache
E2E_CONFIGS = [
    (True, True, 12, 16),
    (True, False, 12, 16),
    (False, True, 10, 32),
    (True, True, 64, 64),
]


def e2e_scheduler_and_requests(
    seed, chunked, caching, num_blocks, budget, max_tokens=(1, 4, 12, None), **kw
):
    """A scheduler (max_model_len 32, 6 sequences) and 14 random requests: half share a 9-token
    system prefix, some with a cache salt; random max_tokens, min_tokens, ignore_eos, stop ids."""
    rng = random.Random(seed)
    s = make_scheduler(
        num_blocks=num_blocks,
        budget=budget,
        max_num_seqs=6,
        max_model_len=32,
        chunked=chunked,
        caching=caching,
        **kw,
    )
    system = [rng.randrange(1, 40) for _ in range(9)]
    reqs = []
    for i in range(14):
        own = [rng.randrange(1, 40) for _ in range(rng.randint(1, 14))]
        params = Params(
            max_tokens=rng.choice(max_tokens),
            min_tokens=rng.choice([0, 0, 2]),
            ignore_eos=rng.random() < 0.2,
            stop_token_ids=rng.choice([None, [3, 5]]),
        )
        reqs.append(
            Request(
                f"q{i}",
                (system if i % 2 else []) + own,
                params,
                eos_token_ids=(EOS,),
                cache_salt="x" if i % 4 == 3 else None,
            )
        )
    return s, reqs


@pytest.mark.parametrize("chunked, caching, num_blocks, budget", E2E_CONFIGS)
def test_end_to_end_matches_sequential_generation(chunked, caching, num_blocks, budget):
    max_model_len = 32
    s, reqs = e2e_scheduler_and_requests(0, chunked, caching, num_blocks, budget)
    kv = np.full((num_blocks, BS), -1)  # the simulated cache: one token id per slot
    pending, step_no = list(reqs), 0
    while pending or s.has_unfinished_requests():
        for r in pending[:3]:  # a few arrivals per step
            s.add_request(r)
        pending = pending[3:]
        if step_no == 4:  # abort the oldest unfinished request
            (aborted,) = s.finish_requests(next(iter(s.requests)), RequestStatus.FINISHED_ABORTED)
        out = s.schedule()
        assert out.num_batched_tokens == sum(x.num_new_tokens for x in out.scheduled) <= budget
        assert len(s.running) <= 6
        # Every layer writes all new KV first, then attends: writes, then reads.
        for x in out.scheduled:
            assert x.num_new_tokens >= 1 and 0 not in x.block_ids
            end = x.num_computed_tokens + x.num_new_tokens
            assert len(x.block_ids) == -(-end // BS)
            for pos in range(x.num_computed_tokens, end):
                kv[x.block_ids[pos // BS], pos % BS] = x.request.all_token_ids[pos]
        sampled = {}
        for x in out.scheduled:
            end = x.num_computed_tokens + x.num_new_tokens
            seen = [int(kv[x.block_ids[p // BS], p % BS]) for p in range(end)]
            assert seen == x.request.all_token_ids[:end], x.request_id
            assert x.samples == (end == x.request.num_tokens)
            if x.samples:
                sampled[x.request_id] = [fake_next_token(seen)]
        s.update_from_output(out, sampled)
        step_no += 1
        assert step_no < 500
    for r in reqs:
        if r is aborted:
            assert r.status == RequestStatus.FINISHED_ABORTED
            continue
        assert (r.output_token_ids, r.finish_reason) == reference_generate(r, max_model_len)
    assert s.kv_cache_manager.num_free_blocks == num_blocks - 1
    m = s.kv_cache_manager
    assert not (m.req_to_blocks or m._req_to_block_hashes or s.requests)
    if num_blocks < 16:
        assert s.num_preemptions_total > 0
    if caching:
        assert s.prefix_cache_stats.hits > 0
    else:
        assert s.prefix_cache_stats.queries == 0


# ----- asynchronous scheduling: step N+1 is scheduled while step N is in flight ---------------
def test_async_schedule_counts_placeholders_and_stops_at_length():
    s = make_scheduler(async_scheduling=True)
    a, b = req("a", 6, max_tokens=2), req("b", 3, max_tokens=8)
    s.add_request(a)
    s.add_request(b)
    out1 = s.schedule()  # step 1 in flight: both prompts, each sampling a placeholder
    assert summary(out1) == [("a", 0, 6, [1, 2], True), ("b", 0, 3, [3], True)]
    assert (a.num_computed_tokens, a.num_output_placeholders) == (6, 1)
    assert (b.num_computed_tokens, b.num_output_placeholders) == (3, 1)
    out2 = s.schedule()  # step 2 feeds the in-flight tokens; b's 4th token opens no new block
    assert summary(out2) == [("a", 6, 1, [1, 2], True), ("b", 3, 1, [3], True)]
    assert a.num_output_placeholders == b.num_output_placeholders == 2
    assert a.output_token_ids == [] and b.num_tokens == 3
    assert s.update_from_output(out1, {"a": [11], "b": [21]}) == [a, b]
    assert a.output_token_ids == [11] and a.num_output_placeholders == 1
    # a's token in flight is its 2nd and last (max_tokens=2): a is not scheduled again
    out3 = s.schedule()
    assert summary(out3) == [("b", 4, 1, [3, 4], True)]
    s.update_from_output(out2, {"a": [12], "b": [22]})
    assert a.finish_reason == "length" and a.output_token_ids == [11, 12]
    assert rids(s.running) == ["b"] and s.kv_cache_manager.num_free_blocks == 31 - 2
    s.update_from_output(out3, {"b": [EOS]})
    assert b.finish_reason == "stop" and b.num_output_placeholders == 0
    assert s.schedule().scheduled == [] and not s.has_unfinished_requests()
    assert s.kv_cache_manager.num_free_blocks == 31


def test_async_tokens_of_requests_finished_in_flight_are_dropped():
    s = make_scheduler(async_scheduling=True)
    a, b = req("a", 4), req("b", 4)
    s.add_request(a)
    s.add_request(b)
    out1 = s.schedule()
    out2 = s.schedule()  # both in flight twice
    s.update_from_output(out1, {"a": [EOS], "b": [5]})  # a stops in step 1
    assert a.finish_reason == "stop" and s.kv_cache_manager.req_to_blocks.keys() == {"b"}
    s.finish_requests("b", RequestStatus.FINISHED_ABORTED)  # b aborted with step 2 in flight
    assert s.update_from_output(out2, {"a": [7], "b": [8]}) == []
    assert a.output_token_ids == [EOS] and b.output_token_ids == [5]
    assert s.kv_cache_manager.num_free_blocks == 31 and not s.has_unfinished_requests()


def test_async_preempted_request_finished_by_its_in_flight_token_leaves_the_queue():
    s = make_scheduler(num_blocks=5, budget=64, max_model_len=16, async_scheduling=True)
    a, b = req("a", 4, max_tokens=16), req("b", 4, max_tokens=2)
    s.add_request(a)
    s.add_request(b)
    out1 = s.schedule()  # a [1], b [2]
    s.update_from_output(out1, {"a": [5], "b": [5]})
    out2 = s.schedule()  # both open a second block: a [1, 3], b [2, 4]; pool empty
    assert summary(out2) == [("a", 4, 1, [1, 3], True), ("b", 4, 1, [2, 4], True)]
    # step 3 (step 2 in flight): a needs no block; b is capped (its in-flight token is its last)
    out3 = s.schedule()
    assert summary(out3) == [("a", 5, 1, [1, 3], True)]
    s.update_from_output(out2, {"a": [6], "b": [6]})
    assert b.finish_reason == "length"
    s.update_from_output(out3, {"a": [7]})
    assert a.output_token_ids == [5, 6, 7] and s.kv_cache_manager.num_free_blocks == 2
    # preempt a while a token of it is in flight; that token (eos) then ends it
    out4 = s.schedule()  # position 6
    out5 = s.schedule()  # position 7 (a's token from step 4): still in block 3
    assert summary(out5) == [("a", 7, 1, [1, 3], True)]
    s.update_from_output(out4, {"a": [8]})
    s.kv_cache_manager.block_pool.get_new_blocks(2)  # someone else takes the last free blocks
    out6 = s.schedule()  # position 8 needs a third block: a preempts itself
    assert out6.scheduled == [] and rids(out6.preempted) == ["a"]
    assert rids(s.waiting) == ["a"] and a.num_computed_tokens == 0
    assert a.num_output_placeholders == 1
    s.update_from_output(out5, {"a": [EOS]})
    assert a.finish_reason == "stop" and a.output_token_ids == [5, 6, 7, 8, EOS]
    assert rids(s.waiting) == [] and not s.requests and not s.has_unfinished_requests()


@pytest.mark.parametrize("chunked, caching, num_blocks, budget", E2E_CONFIGS)
def test_async_end_to_end_matches_sequential_generation(chunked, caching, num_blocks, budget):
    """The pipelined loop: schedule N+1, then apply N's tokens. The simulated device runs each
    step in order as it is dispatched and reads tokens in flight from the previous step."""
    max_model_len = 32
    s, reqs = e2e_scheduler_and_requests(
        1,
        chunked,
        caching,
        num_blocks,
        budget,
        max_tokens=(1, 2, 4, 12, None),
        async_scheduling=True,
    )
    kv = np.full((num_blocks, BS), -1)
    pending, step_no, in_flight, prev_sampled = list(reqs), 0, None, {}
    aborted = None
    while pending or s.has_unfinished_requests() or in_flight:
        for r in pending[:3]:
            s.add_request(r)
        pending = pending[3:]
        if step_no == 5:
            (aborted,) = s.finish_requests(next(iter(s.requests)), RequestStatus.FINISHED_ABORTED)
        out = s.schedule()
        sampled = {}
        for x in out.scheduled:  # the device: this step, after every earlier one
            assert x.num_new_tokens >= 1 and 0 not in x.block_ids
            end = x.num_computed_tokens + x.num_new_tokens
            assert len(x.block_ids) == -(-end // BS) and end <= max_model_len
            known = x.request.all_token_ids
            for pos in range(x.num_computed_tokens, end):
                tok = known[pos] if pos < len(known) else prev_sampled[x.request_id]
                assert pos < len(known) + 1
                kv[x.block_ids[pos // BS], pos % BS] = tok
        for x in out.scheduled:
            end = x.num_computed_tokens + x.num_new_tokens
            seen = [int(kv[x.block_ids[p // BS], p % BS]) for p in range(end)]
            assert seen[: x.request.num_tokens] == x.request.all_token_ids[:end]
            if x.samples:
                sampled[x.request_id] = [fake_next_token(seen)]
        if in_flight is not None:  # resolve the previous step while this one "runs"
            s.update_from_output(*in_flight)
        in_flight = (out, sampled) if out.scheduled else None
        prev_sampled = {k: v[0] for k, v in sampled.items()}
        step_no += 1
        assert step_no < 500
    for r in reqs:
        if r is aborted:
            assert r.status == RequestStatus.FINISHED_ABORTED
            continue
        assert (r.output_token_ids, r.finish_reason) == reference_generate(r, max_model_len)
        assert r.num_output_placeholders == 0
    assert s.kv_cache_manager.num_free_blocks == num_blocks - 1
    assert not (s.kv_cache_manager.req_to_blocks or s.requests or s.waiting or s.running)
    if num_blocks < 16:
        assert s.num_preemptions_total > 0
    assert (s.prefix_cache_stats.hits > 0) == caching
