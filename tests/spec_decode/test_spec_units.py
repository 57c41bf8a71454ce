"""Speculative decoding, host side: the n-gram lookup, draft acceptance, the config, and the
scheduler's draft budget, KV slots (exact block ids) and rollback."""

import pytest
from fake_requests import Params

from jaxllm.config import CacheConfig, SchedulerConfig
from jaxllm.request import Request
from jaxllm.scheduler import Scheduler
from jaxllm.spec_decode import NgramProposer, SpecDecodeStats, SpeculativeConfig, accept_drafts

BS = 4


def test_ngram_takes_the_longest_latest_match():
    p = NgramProposer(min_n=1, max_n=3, num_speculative_tokens=3)
    # the suffix [7, 8] occurs twice; the 3-gram [6, 7, 8] once, followed by 1, 2, 3
    tokens = [6, 7, 8, 1, 2, 3, 9, 7, 8, 4, 5, 6, 7, 8]
    assert p.propose(tokens) == [1, 2, 3]
    # no 3-gram match: the 2-gram's latest occurrence wins ([7, 8] -> 4, 5, 6)
    assert p.propose([7, 8, 1, 7, 8, 4, 5, 6, 0, 7, 8]) == [4, 5, 6]
    assert p.propose(tokens, max_tokens=2) == [1, 2]
    assert p.propose([1, 2, 3, 4]) == []  # nothing repeats
    assert p.propose([5]) == []
    # what follows a match may be shorter than k (it runs into the suffix)
    assert NgramProposer(2, 2, 5).propose([1, 2, 1, 2]) == [1, 2]


def test_accept_drafts_keeps_up_to_the_first_mismatch():
    assert accept_drafts([5, 6, 7], [5, 6, 7, 8]) == [5, 6, 7, 8]  # all kept, bonus token
    assert accept_drafts([5, 6, 7], [5, 9, 7, 8]) == [5, 9]  # target's token replaces draft 2
    assert accept_drafts([5, 6, 7], [4, 6, 7, 8]) == [4]
    assert accept_drafts([], [3]) == [3]
    with pytest.raises(ValueError, match="2 drafts need 3"):
        accept_drafts([1, 2], [1, 2])
    stats = SpecDecodeStats()
    stats.observe(3, 2)
    stats.observe(2, 0)
    stats.observe(0, 0)  # no drafts: not counted
    assert (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens) == (2, 5, 2)
    assert stats.accepted_per_position == [1, 1, 0]
    assert stats.acceptance_rate == pytest.approx(0.4)


def test_config_from_vllm_dicts_and_json():
    c = SpeculativeConfig.from_value(
        '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}'
    )
    assert c.ngram_window == (1, 3) and c.num_speculative_tokens == 4
    c = SpeculativeConfig.from_value({"model": "x", "num_speculative_tokens": 2})
    assert c.method == "draft_model"
    assert SpeculativeConfig.from_value(None) is None
    for bad, match in [
        ({"method": "eagle3", "num_speculative_tokens": 2, "model": "x"}, "not supported"),
        ({"method": "ngram"}, "num_speculative_tokens"),
        ({"method": "ngram", "num_speculative_tokens": 0}, ">= 1"),
        ({"method": "ngram", "num_speculative_tokens": 2, "lookup": 1}, "unknown keys"),
        (
            {
                "method": "ngram",
                "num_speculative_tokens": 2,
                "prompt_lookup_min": 4,
                "prompt_lookup_max": 2,
            },
            "min <= max",
        ),
        ({"method": "draft_model", "num_speculative_tokens": 2}, "needs 'model'"),
        ("{not json", "not valid JSON"),
        ({"num_speculative_tokens": 2}, "needs 'method'"),
    ]:
        with pytest.raises(ValueError, match=match):
            SpeculativeConfig.from_value(bad)


def make_scheduler(num_blocks=16, budget=16, max_model_len=32, lookahead=0, caching=True):
    return Scheduler(
        SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=max_model_len),
        CacheConfig(block_size=BS, enable_prefix_caching=caching),
        num_blocks,
        num_lookahead_tokens=lookahead,
    )


def summary(out):
    return [
        (s.request_id, s.num_computed_tokens, s.num_new_tokens, s.block_ids, s.spec_token_ids)
        for s in out.scheduled
    ]


def test_drafts_are_budgeted_verified_and_rolled_back_with_exact_blocks():
    s = make_scheduler()
    a = Request("a", [10, 11, 12, 13, 14], Params(max_tokens=20), eos_token_ids=(0,))
    s.add_request(a)
    out = s.schedule()
    assert summary(out) == [("a", 0, 5, [1, 2], [])]
    s.update_from_output(out, {"a": [20]})  # 6 tokens, 5 computed
    a.spec_token_ids = [21, 22, 23]
    out = s.schedule()
    # the last known token and 3 drafts: positions 5..8, blocks for 9 tokens
    assert summary(out) == [("a", 5, 4, [1, 2, 3], [21, 22, 23])]
    assert out.num_batched_tokens == 4 and a.spec_token_ids == []
    # the target agreed with draft 1 only: tokens 21 (accepted) and 30 (its own) are emitted
    s.update_from_output(out, {"a": [21, 30]})
    assert a.output_token_ids == [20, 21, 30]
    assert a.num_computed_tokens == 7  # drafts 22, 23 rejected: their KV is not the request's
    # all drafts accepted: the bonus token comes too
    a.spec_token_ids = [31, 32]
    out = s.schedule()
    assert summary(out) == [("a", 7, 3, [1, 2, 3], [31, 32])]
    s.update_from_output(out, {"a": [31, 32, 33]})
    assert a.output_token_ids == [20, 21, 30, 31, 32, 33] and a.num_computed_tokens == 10
    assert a.num_tokens == 11


def test_drafts_are_cut_to_budget_max_tokens_and_max_model_len():
    s = make_scheduler(budget=3, max_model_len=12)
    a = Request("a", [10, 11, 12], Params(max_tokens=4), eos_token_ids=(0,))
    s.add_request(a)
    s.update_from_output(s.schedule(), {"a": [20]})
    a.spec_token_ids = [1, 2, 3, 4, 5]
    out = s.schedule()
    # max_tokens 4, 1 out: this step may emit 3 (2 drafts + 1); the budget of 3 allows 2 drafts
    assert summary(out)[0][4] == [1, 2]
    s.update_from_output(out, {"a": [1, 7]})
    b = Request("b", list(range(40, 50)), Params(max_tokens=None), eos_token_ids=(0,))
    s2 = make_scheduler(max_model_len=12)
    s2.add_request(b)
    s2.update_from_output(s2.schedule(), {"b": [20]})  # 11 tokens of max_model_len 12
    b.spec_token_ids = [1, 2, 3]
    out = s2.schedule()
    assert summary(out)[0][4] == [1]  # position 11 is the last one
    # a request still prefilling verifies none (its drafts are dropped)
    s3 = make_scheduler(budget=4)
    c = Request("c", list(range(60, 70)), Params(max_tokens=5), eos_token_ids=(0,))
    s3.add_request(c)
    s3.update_from_output(s3.schedule(), {})
    c.spec_token_ids = [1]
    out = s3.schedule()
    assert summary(out)[0][2:] == (4, [1, 2], [])


def test_lookahead_slots_and_prefix_cache_hash_known_tokens_only():
    s = make_scheduler(lookahead=3)
    a = Request("a", [10, 11, 12, 13, 14, 15, 16], Params(max_tokens=20), eos_token_ids=(0,))
    s.add_request(a)
    out = s.schedule()
    # 7 prompt tokens + 3 lookahead slots: 3 blocks
    assert summary(out) == [("a", 0, 7, [1, 2, 3], [])]
    s.update_from_output(out, {"a": [17]})
    a.spec_token_ids = [18, 19]
    out = s.schedule()  # positions 7..9, then 3 lookahead: 13 slots, 4 blocks
    assert summary(out) == [("a", 7, 3, [1, 2, 3, 4], [18, 19])]
    s.update_from_output(out, {"a": [5]})  # draft 1 rejected: the target's token 5 instead
    assert a.num_computed_tokens == 8 and a.all_token_ids[7:] == [17, 5]
    # only block 1 (tokens 10..13) and block 2 (14, 15, 16, 17) are full of known tokens
    b = Request("b", [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], Params(max_tokens=2), (0,))
    s.add_request(b)
    out = s.schedule()
    row = [r for r in out.scheduled if r.request_id == "b"][0]
    assert (row.num_computed_tokens, row.block_ids[:2]) == (8, [1, 2])


def test_preemption_drops_drafts():
    s = make_scheduler(num_blocks=4, max_model_len=12)
    a = Request("a", [1, 2, 3], Params(max_tokens=20), eos_token_ids=(0,))
    b = Request("b", [4, 5, 6], Params(max_tokens=20), eos_token_ids=(0,))
    s.add_request(a)
    s.add_request(b)
    s.update_from_output(s.schedule(), {"a": [7], "b": [8]})
    a.spec_token_ids, b.spec_token_ids = [9, 9, 9, 9, 9], [9]
    out = s.schedule()  # a's drafts need 2 more blocks, 1 is free: b (the newest) is preempted
    assert [r.request_id for r in out.preempted] == ["b"] and b.spec_token_ids == []
    assert summary(out) == [("a", 3, 6, [1, 3, 2], [9, 9, 9, 9, 9])]
