"""Scheduler: preemption by swap (and its fall back to recompute), n > 1 forks with
copy-on-write, and the priority policy, with exact block ids; then an end-to-end run against a
fake model over a simulated paged KV cache and host swap space."""

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
    caching=True,
    mode="recompute",
    host=0,
    policy="fcfs",
):
    return Scheduler(
        SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=budget,
            max_model_len=max_model_len,
            policy=policy,
            preemption_mode=mode,
        ),
        CacheConfig(block_size=BS, enable_prefix_caching=caching),
        num_blocks,
        num_host_blocks=host,
    )


_next_tok = iter(range(1000, 10**9, 100))


def req(rid, n_prompt, priority=0, arrival=0.0, prompt=None, **params):
    start = next(_next_tok)
    tokens = prompt if prompt is not None else list(range(start, start + n_prompt))
    return Request(
        rid, tokens, Params(**params), eos_token_ids=(EOS,), arrival_time=arrival, priority=priority
    )


def summary(out):
    return [
        (s.request_id, s.num_computed_tokens, s.num_new_tokens, s.block_ids, s.samples)
        for s in out.scheduled
    ]


def rids(reqs):
    return [r.request_id for r in reqs]


def step(sched, tokens=None):
    out = sched.schedule()
    sampled = {
        s.request_id: [(tokens or {}).get(s.request_id, 50)] for s in out.scheduled if s.samples
    }
    sched.update_from_output(out, sampled)
    return out


def free_ids(s):
    q = s.kv_cache_manager.block_pool.free_block_queue
    return [b.block_id for b in q.get_all_free_blocks()]


def three_requests(s):
    r0, r1, r2 = req("r0", 8), req("r1", 7, max_tokens=2), req("r2", 12)
    for r in (r0, r1, r2):
        s.add_request(r)
    assert summary(step(s)) == [
        ("r0", 0, 8, [1, 2], True),
        ("r1", 0, 7, [3, 4], True),
        ("r2", 0, 12, [5, 6, 7], True),
    ]
    return r0, r1, r2


def test_preempt_by_swap_out_and_back_in():
    s = make_scheduler(num_blocks=8, max_model_len=16, mode="swap", host=4)
    r0, r1, r2 = three_requests(s)
    # r0 needs a third block: r2 (newest) is swapped out, its blocks freed tail first, and r0
    # takes the head of the free queue.
    out = step(s)
    assert out.blocks_to_swap_out == [(5, 0), (6, 1), (7, 2)] and out.blocks_to_swap_in == []
    assert summary(out) == [("r0", 8, 1, [1, 2, 7], True), ("r1", 7, 1, [3, 4], True)]
    assert out.preempted == [r2] and rids(s.waiting) == ["r2"]
    assert r2.status == RequestStatus.PREEMPTED and r2.num_computed_tokens == 12
    assert s.kv_cache_manager.get_host_block_ids("r2") == [0, 1, 2]
    assert s.num_swapped_out_total == 1 and s.num_preemptions_total == 1
    assert r1.is_finished() and free_ids(s) == [6, 5, 4, 3]
    # r2 comes back: 3 host blocks into the head of the free queue, 1 more for its 13th token;
    # it computes only that token (no recompute of its 12).
    out = step(s)
    assert out.blocks_to_swap_in == [(0, 6), (1, 5), (2, 4)] and out.blocks_to_swap_out == []
    assert summary(out) == [("r0", 9, 1, [1, 2, 7], True), ("r2", 12, 1, [6, 5, 4, 3], True)]
    assert s.kv_cache_manager.swap_pool.get_free_block_ids() == [3, 0, 1, 2]
    assert r2.output_token_ids == [50, 50] and s.num_prompt_tokens_computed == 27


def test_swap_falls_back_to_recompute_when_the_host_pool_is_full():
    s = make_scheduler(num_blocks=8, max_model_len=16, mode="swap", host=2)
    r0, r1, r2 = three_requests(s)
    out = step(s)  # r2's 3 blocks do not fit in 2 host blocks
    assert out.blocks_to_swap_out == [] and out.preempted == [r2]
    assert r2.num_computed_tokens == 0 and not s.kv_cache_manager.is_swapped("r2")
    assert s.num_swapped_out_total == 0 and s.num_preemptions_total == 1
    out = step(s, {"r2": 60})  # recomputed, with prefix hits on its blocks 5, 6
    assert summary(out) == [("r0", 9, 1, [1, 2, 7], True), ("r2", 8, 5, [5, 6, 4, 3], True)]
    assert out.blocks_to_swap_in == []


def test_swapped_request_resumes_after_the_holder_goes():
    s = make_scheduler(num_blocks=5, max_model_len=16, mode="swap", host=4)
    r0, r1 = req("r0", 8, max_tokens=3), req("r1", 8)
    s.add_request(r0)
    s.add_request(r1)
    step(s)  # r0 [1, 2], r1 [3, 4]; both need a third block next
    out = step(s)  # r1 is swapped out (free queue [4, 3]); r0 takes 4
    assert out.blocks_to_swap_out == [(3, 0), (4, 1)] and summary(out) == [
        ("r0", 8, 1, [1, 2, 4], True)
    ]
    out = step(s)  # no room for r1 yet: it stays swapped
    assert summary(out) == [("r0", 9, 1, [1, 2, 4], True)] and not out.has_block_ops
    s.finish_requests("r0", RequestStatus.FINISHED_ABORTED)  # free queue [3, 4, 2, 1]
    out = step(s)
    assert out.blocks_to_swap_in == [(0, 3), (1, 4)]
    assert summary(out) == [("r1", 8, 1, [3, 4, 2], True)]
    assert not s.kv_cache_manager.is_swapped("r1")
    only_copies = type(out)(blocks_to_swap_out=[(1, 0)])
    assert not only_copies.scheduled and not only_copies.is_empty


def test_fork_prefills_once_then_copy_on_write():
    s = make_scheduler()
    prompt = list(range(300, 306))  # 6 tokens: one full block and a partial one
    p, c1, c2 = (req(r, 0, prompt=prompt) for r in ("p#0", "p#1", "p#2"))
    s.add_request(p, fork_children=[c1, c2])
    assert rids(s.waiting) == ["p#0"] and s.get_num_unfinished_requests() == 3
    out = step(s, {"p#0": 11, "p#1": 12, "p#2": 13})
    assert summary(out) == [
        ("p#0", 0, 6, [1, 2], True),
        ("p#1", 6, 0, [1, 2], True),
        ("p#2", 6, 0, [1, 2], True),
    ]
    assert [x.sample_from for x in out.scheduled] == [None, "p#0", "p#0"]
    assert out.num_batched_tokens == 6 and s.num_prompt_tokens_computed == 6
    assert rids(s.running) == ["p#0", "p#1", "p#2"]
    assert [r.output_token_ids for r in (p, c1, c2)] == [[11], [12], [13]]
    # Each writes position 6 into the shared block 2: the first two copy it, the last keeps it.
    out = step(s)
    assert summary(out) == [
        ("p#0", 6, 1, [1, 3], True),
        ("p#1", 6, 1, [1, 4], True),
        ("p#2", 6, 1, [1, 2], True),
    ]
    assert out.blocks_to_copy == [(2, 3), (2, 4)]
    assert step(s).blocks_to_copy == [] and s.num_prompt_tokens_computed == 6


def test_fork_waits_for_the_last_prompt_chunk_and_for_seats():
    s = make_scheduler(budget=4, max_num_seqs=3)
    s.add_request(req("x", 2))
    prompt = list(range(400, 406))
    p, c = req("p", 0, prompt=prompt), req("c", 0, prompt=prompt)
    s.add_request(p, fork_children=[c])
    out = step(s)  # x (2 tokens), then p's first chunk of 2
    assert summary(out) == [("x", 0, 2, [1], True), ("p", 0, 2, [2], False)]
    s.add_request(req("y", 2))  # 3 seats: x, p and p's pending sample; y waits
    out = step(s)
    assert summary(out) == [("x", 2, 1, [1], True), ("p", 2, 3, [2, 3], False)]
    out = step(s)
    assert summary(out) == [
        ("x", 3, 1, [1], True),
        ("p", 5, 1, [2, 3], True),
        ("c", 6, 0, [2, 3], True),
    ]
    assert rids(s.waiting) == ["y"] and s.num_prompt_tokens_computed == 2 + 6
    with pytest.raises(ValueError, match="exceed max_num_seqs"):
        s.add_request(
            req("g", 0, prompt=[1]), fork_children=[req(f"g{i}", 0, prompt=[1]) for i in range(3)]
        )
    with pytest.raises(ValueError, match="another prompt"):
        s.add_request(req("h", 2), fork_children=[req("h1", 3)])


def test_aborting_a_group_before_its_fork_and_a_lone_parent():
    s = make_scheduler()
    prompt = list(range(500, 510))
    p, c1, c2 = (req(r, 0, prompt=prompt) for r in ("p", "c1", "c2"))
    s.add_request(p, fork_children=[c1, c2])
    assert s.finish_requests(["p", "c1", "c2"], RequestStatus.FINISHED_ABORTED) == [p, c1, c2]
    assert not s.waiting and not s.pending_forks and not s.requests
    # The parent alone goes: its samples prefill the prompt themselves.
    q, d = req("q", 0, prompt=prompt), req("d", 0, prompt=prompt)
    s.add_request(q, fork_children=[d])
    s.finish_requests("q", RequestStatus.FINISHED_ABORTED)
    assert rids(s.waiting) == ["d"]
    assert summary(step(s)) == [("d", 0, 10, [1, 2, 3], True)]


def test_priority_orders_waiting_and_running():
    s = make_scheduler(budget=8, policy="priority")
    a, b, c, d = (
        req("a", 8, priority=1, arrival=1.0),
        req("b", 8, priority=0, arrival=2.0),
        req("c", 8, priority=1, arrival=0.5),
        req("d", 8, priority=0, arrival=2.0),
    )
    for r in (a, b, c, d):
        s.add_request(r)
    assert rids(s.waiting) == ["b", "d", "c", "a"]  # (priority, arrival, order added)
    assert summary(step(s)) == [("b", 0, 8, [1, 2], True)]
    e = req("e", 4, priority=-1, arrival=9.0)
    s.add_request(e)
    assert rids(s.waiting) == ["e", "d", "c", "a"]
    out = step(s)  # b decodes, then e, then a chunk of d in the 3 tokens left
    assert summary(out) == [
        ("b", 8, 1, [1, 2, 3], True),
        ("e", 0, 4, [4], True),
        ("d", 0, 3, [5], False),
    ]
    assert rids(s.running) == ["e", "b", "d"]  # running is kept in priority order too
    with pytest.raises(ValueError, match="policy 'priority'"):
        make_scheduler().add_request(req("z", 4, priority=2))
    with pytest.raises(ValueError, match="priority must be an int"):
        s.add_request(req("z", 4, priority=1.5))


def test_priority_preempts_the_lowest_priority_not_the_newest():
    def run(policy):
        s = make_scheduler(num_blocks=8, max_model_len=16, policy=policy)
        prio = (lambda p: p) if policy == "priority" else (lambda p: 0)
        x, y, z = (
            req("x", 8, priority=prio(0)),
            req("y", 8, priority=prio(2)),
            req("z", 8, priority=prio(1)),
        )
        for r in (x, y, z):
            s.add_request(r)
        step(s)  # fcfs: x [1, 2], y [3, 4], z [5, 6]; one block left (7)
        out = step(s)  # the first to grow takes 7; the next needs a victim
        return s, out

    s, out = run("fcfs")
    assert rids(out.preempted) == ["z"] and summary(out) == [
        ("x", 8, 1, [1, 2, 7], True),
        ("y", 8, 1, [3, 4, 6], True),
    ]
    # By priority, x (0), z (1), y (2) were admitted in that order (x [1, 2], z [3, 4],
    # y [5, 6]) and y, the lowest priority, is the victim.
    s, out = run("priority")
    assert rids(out.preempted) == ["y"] and summary(out) == [
        ("x", 8, 1, [1, 2, 7], True),
        ("z", 8, 1, [3, 4, 6], True),
    ]
    assert rids(s.waiting) == ["y"]


# ----- end to end against a fake model, a simulated paged KV cache and host swap space -------
def fake_next_token(prefix, salt):
    return (sum(prefix) * 31 + len(prefix) * 7 + salt * 13) % 40


def reference_generate(r, salt, max_model_len):
    p, toks, out = r.sampling_params, list(r.prompt_token_ids), []
    while True:
        t = fake_next_token(toks, salt)
        toks.append(t)
        out.append(t)
        if len(toks) >= max_model_len or (p.max_tokens is not None and len(out) >= p.max_tokens):
            return out
        if len(out) >= p.min_tokens and not p.ignore_eos and t == EOS:
            return out


@pytest.mark.parametrize(
    "mode, host, policy, caching",
    [
        ("swap", 64, "fcfs", True),
        ("swap", 3, "priority", True),
        ("swap", 64, "priority", False),
        ("recompute", 0, "fcfs", True),
    ],
)
def test_end_to_end_with_swap_forks_and_priorities(mode, host, policy, caching):
    rng = random.Random(1)
    max_model_len, num_blocks, budget = 32, 14, 16
    s = make_scheduler(
        num_blocks=num_blocks,
        budget=budget,
        max_num_seqs=6,
        max_model_len=max_model_len,
        caching=caching,
        mode=mode,
        host=host,
        policy=policy,
    )
    groups, salts = [], {}
    for i in range(10):
        prompt = [rng.randrange(1, 40) for _ in range(rng.randint(1, 14))]
        n = rng.choice([1, 1, 2, 3])
        prio = rng.randrange(3) if policy == "priority" else 0
        params = Params(max_tokens=rng.choice([2, 6, 12]), ignore_eos=rng.random() < 0.3)
        group = [
            Request(f"q{i}#{j}", prompt, params, eos_token_ids=(EOS,), priority=prio)
            for j in range(n)
        ]
        for j, r in enumerate(group):
            salts[r.request_id] = 7 * i + j
        groups.append(group)
    kv = np.full((num_blocks, BS), -1)
    host_kv = np.full((max(host, 1), BS), -2)
    pending, step_no, copies = list(groups), 0, 0
    while pending or s.has_unfinished_requests():
        for g in pending[:2]:
            s.add_request(g[0], fork_children=g[1:])
        pending = pending[2:]
        out = s.schedule()
        # Block copies first, in the runner's order.
        for d, h in out.blocks_to_swap_out:
            host_kv[h] = kv[d]
        for h, d in out.blocks_to_swap_in:
            kv[d] = host_kv[h]
        for src, dst in out.blocks_to_copy:
            kv[dst] = kv[src]
            copies += 1
        for x in out.scheduled:
            end = x.num_computed_tokens + x.num_new_tokens
            assert 0 not in x.block_ids and len(x.block_ids) == -(-end // BS)
            for pos in range(x.num_computed_tokens, end):
                kv[x.block_ids[pos // BS], pos % BS] = x.request.all_token_ids[pos]
        sampled = {}
        for x in out.scheduled:
            end = x.num_computed_tokens + x.num_new_tokens
            seen = [int(kv[x.block_ids[p // BS], p % BS]) for p in range(end)]
            assert seen == x.request.all_token_ids[:end], x.request_id
            if x.samples:
                sampled[x.request_id] = [fake_next_token(seen, salts[x.request_id])]
        s.update_from_output(out, sampled)
        step_no += 1
        assert step_no < 500
    for g in groups:
        for r in g:
            assert r.output_token_ids == reference_generate(r, salts[r.request_id], max_model_len)
    m = s.kv_cache_manager
    assert m.num_free_blocks == num_blocks - 1
    assert m.swap_pool.num_free_blocks == m.swap_pool.num_blocks
    assert not (m.req_to_blocks or m._req_to_block_hashes or s.requests or s.pending_forks)
    assert s.num_preemptions_total > 0 and copies > 0
    # Every prompt is computed once per group, plus recomputation after preemptions.
    once = sum(g[0].num_prompt_tokens for g in groups)
    assert s.num_prompt_tokens_computed >= once
    if mode == "swap" and host == 64:
        assert s.num_swapped_out_total == s.num_preemptions_total
