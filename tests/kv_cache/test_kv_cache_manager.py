"""KVCacheManager with exact block ids, free-queue orders and reference counts (block_size 4)."""

import pytest
from fake_requests import free_ids, make_request, ref_cnts

from jaxllm.kv_cache import KVCacheManager, hash_request_blocks
from jaxllm.request import RequestStatus

BS = 4


def admit(m, req):
    """What the scheduler does for a waiting request: look up hits, allocate the rest."""
    hits, num_hit = m.get_computed_blocks(req)
    new = m.allocate_slots(req, req.num_tokens - num_hit, hits)
    if new is not None:
        req.num_computed_tokens = req.num_tokens
    return hits, num_hit, new


COMMON = list(range(100, 108))  # two full blocks


def test_allocation_and_caching_of_full_blocks():
    m = KVCacheManager(num_blocks=11, block_size=BS)
    a = make_request("a", COMMON + [1, 2])  # 10 tokens: 2 full blocks + 2
    hits, num_hit, new = admit(m, a)
    assert (hits, num_hit) == ([], 0)
    assert [b.block_id for b in new] == [1, 2, 3]
    assert m.get_block_ids("a") == [1, 2, 3]
    assert m.num_free_blocks == 7 and m.usage == pytest.approx(0.3)
    h = hash_request_blocks(a.all_token_ids, BS)
    assert m.block_pool.get_cached_block(h[0]).block_id == 1
    assert m.block_pool.get_cached_block(h[1]).block_id == 2
    assert m.block_pool.blocks[3].block_hash is None  # partial block, not cached

    # Decode: 2 more tokens fill block 3 (no new block), then the 13th token needs block 4.
    for tok, expect_new in ((3, []), (4, []), (5, [4])):
        a.append_output_token_ids([tok])
        new = m.allocate_slots(a, 1)
        a.num_computed_tokens += 1
        assert [b.block_id for b in new] == expect_new
    # Block 3 is full of prompt + output tokens now, and cached under their chained hash.
    h = hash_request_blocks(a.all_token_ids, BS)
    assert len(h) == 3 and m.block_pool.get_cached_block(h[2]).block_id == 3
    assert m.get_block_ids("a") == [1, 2, 3, 4]


def test_shared_prefix_ref_counts_and_free_order():
    m = KVCacheManager(num_blocks=11, block_size=BS)
    a, b = make_request("a", COMMON + [1, 2]), make_request("b", COMMON + [9, 9, 9])
    admit(m, a)
    hits, num_hit, new = admit(m, b)
    assert [x.block_id for x in hits] == [1, 2] and num_hit == 8
    assert [x.block_id for x in new] == [4]
    assert m.get_block_ids("b") == [1, 2, 4]
    assert ref_cnts(m, [1, 2, 3, 4]) == [2, 2, 1, 1]
    assert free_ids(m) == [5, 6, 7, 8, 9, 10]

    a.status = RequestStatus.FINISHED_STOPPED
    m.free(a)  # only its private tail block is released
    assert free_ids(m) == [5, 6, 7, 8, 9, 10, 3]
    assert ref_cnts(m, [1, 2]) == [1, 1] and m.get_block_ids("a") == []
    b.status = RequestStatus.FINISHED_STOPPED
    m.free(b)  # reverse order: the tail is evicted before the shared prefix
    assert free_ids(m) == [5, 6, 7, 8, 9, 10, 3, 4, 2, 1]
    assert m.num_free_blocks == 10 and m.usage == 0.0


def test_hit_covering_the_whole_prompt_backs_off_one_block():
    m = KVCacheManager(num_blocks=11, block_size=BS)
    admit(m, make_request("a", COMMON + [1, 2]))
    # Prompt == the two cached blocks exactly: the last block is recomputed into a new block.
    c = make_request("c", COMMON)
    hits, num_hit, new = admit(m, c)
    assert [x.block_id for x in hits] == [1] and num_hit == 4
    assert [x.block_id for x in new] == [4] and m.get_block_ids("c") == [1, 4]
    # The recomputed block has the same hash as block 2: both serve hits now.
    h = hash_request_blocks(COMMON, BS)
    assert set(m.block_pool.cached_block_hash_to_block[h[1]]) == {2, 4}
    # One token past the cached blocks: both blocks hit, one token computed.
    d = make_request("d", COMMON + [1])
    hits, num_hit, new = admit(m, d)
    assert [x.block_id for x in hits] == [1, 2] and num_hit == 8
    assert [x.block_id for x in new] == [5]
    assert ref_cnts(m, [1, 2, 3, 4, 5]) == [3, 2, 1, 1, 1]


def test_lru_eviction_order_and_hits_on_free_blocks():
    m = KVCacheManager(num_blocks=7, block_size=BS)  # 6 usable blocks
    a = make_request("a", COMMON + [1, 2, 3, 4])  # 3 full blocks: 1, 2, 3
    b = make_request("b", [50, 51, 52, 53, 54])  # blocks 4, 5
    admit(m, a)
    admit(m, b)
    for r in (a, b):
        r.status = RequestStatus.FINISHED_STOPPED
        m.free(r)
    assert free_ids(m) == [6, 3, 2, 1, 5, 4]
    # A hit on free cached blocks touches them out of the free queue (no eviction).
    e = make_request("e", COMMON + [7])
    hits, num_hit, new = admit(m, e)
    assert [x.block_id for x in hits] == [1, 2] and [x.block_id for x in new] == [6]
    assert free_ids(m) == [3, 5, 4]
    # New blocks come from the head: block 3 (a's third block) is evicted first, then 5.
    f = make_request("f", list(range(200, 208)))
    _, _, new = admit(m, f)
    assert [x.block_id for x in new] == [3, 5] and free_ids(m) == [4]
    a2 = make_request("a2", COMMON + [1, 2, 3, 4, 9])
    hits, num_hit = m.get_computed_blocks(a2)
    assert [x.block_id for x in hits] == [1, 2] and num_hit == 8  # block 3's prefix is gone
    b2 = make_request("b2", [50, 51, 52, 53, 54])
    hits, num_hit = m.get_computed_blocks(b2)
    assert [x.block_id for x in hits] == [4]  # still cached in the free queue


def test_failed_allocation_changes_nothing_and_counts_evictable_hits():
    m = KVCacheManager(num_blocks=5, block_size=BS)  # 4 usable
    a = make_request("a", COMMON)
    admit(m, a)
    a.status = RequestStatus.FINISHED_STOPPED
    m.free(a)
    hog = make_request("hog", [1] * 8)
    admit(m, hog)  # takes blocks 3, 4; blocks 2, 1 remain free and cached
    assert free_ids(m) == [2, 1]
    # 3 blocks needed: 2 hits on free blocks (each takes a free block) + 1 new > 2 free.
    g = make_request("g", COMMON + [5, 6, 7])
    hits, num_hit, new = admit(m, g)
    assert [x.block_id for x in hits] == [1, 2] and num_hit == 8
    assert new is None
    assert free_ids(m) == [2, 1] and ref_cnts(m, [1, 2]) == [0, 0]
    assert m.get_block_ids("g") == []
    # The whole prompt cached: the hit backs off to block 1 and the second block is recomputed
    # into the head of the free queue, block 2 itself (its old cache entry evicted, then re-made).
    g2 = make_request("g2", COMMON)
    hits, num_hit, new = admit(m, g2)
    assert [x.block_id for x in hits] == [1] and num_hit == 4
    assert [x.block_id for x in new] == [2] and m.num_free_blocks == 0
    assert m.block_pool.get_cached_block(hash_request_blocks(COMMON, BS)[1]).block_id == 2


def test_cache_salt_isolates_prefixes():
    m = KVCacheManager(num_blocks=11, block_size=BS)
    admit(m, make_request("a", COMMON + [1], salt="alice"))
    assert m.get_computed_blocks(make_request("b", COMMON + [1]))[1] == 0
    assert m.get_computed_blocks(make_request("c", COMMON + [1], salt="bob"))[1] == 0
    hits, num_hit = m.get_computed_blocks(make_request("d", COMMON + [1], salt="alice"))
    assert [x.block_id for x in hits] == [1, 2] and num_hit == 8


def test_no_hits_when_caching_disabled_or_prompt_logprobs_wanted():
    m = KVCacheManager(num_blocks=11, block_size=BS, enable_caching=False)
    admit(m, make_request("a", COMMON + [1]))
    assert m.get_computed_blocks(make_request("b", COMMON + [1])) == ([], 0)
    assert not m.block_pool.cached_block_hash_to_block
    m = KVCacheManager(num_blocks=11, block_size=BS)
    admit(m, make_request("a", COMMON + [1]))
    assert m.get_computed_blocks(make_request("b", COMMON + [1], prompt_logprobs=1)) == ([], 0)


def test_prefix_cache_stats_count_admitted_requests():
    m = KVCacheManager(num_blocks=11, block_size=BS)
    admit(m, make_request("a", COMMON + [1]))
    admit(m, make_request("b", COMMON + [2, 3]))
    s = m.prefix_cache_stats
    assert (s.requests, s.queries, s.hits) == (2, 9 + 10, 8)
    assert s.hit_rate == pytest.approx(8 / 19)


def test_chunked_allocation_and_bad_arguments():
    m = KVCacheManager(num_blocks=11, block_size=BS)
    r = make_request("r", list(range(10)))
    assert [b.block_id for b in m.allocate_slots(r, 5)] == [1, 2]
    r.num_computed_tokens = 5
    assert [b.block_id for b in m.allocate_slots(r, 5)] == [3]
    with pytest.raises(ValueError, match="num_new_tokens must be >= 1"):
        m.allocate_slots(r, 0)
    with pytest.raises(ValueError, match="exceeds its 10 tokens"):
        m.allocate_slots(r, 6)
    hits, _ = m.get_computed_blocks(make_request("x", list(range(10))))
    with pytest.raises(ValueError, match="already holds blocks"):
        m.allocate_slots(r, 1, hits)
    ids = m.get_block_ids("r")
    ids.append(99)  # a copy: the manager's table is unchanged
    assert m.get_block_ids("r") == [1, 2, 3]


def test_preempted_request_keeps_hashes_and_hits_its_own_blocks():
    m = KVCacheManager(num_blocks=11, block_size=BS)
    r = make_request("r", COMMON + [1])
    admit(m, r)
    r.status = RequestStatus.PREEMPTED
    m.free(r)
    r.num_computed_tokens = 0
    hits, num_hit, new = admit(m, r)  # recompute: its own freed blocks are hits
    assert [x.block_id for x in hits] == [1, 2] and num_hit == 8
    assert [x.block_id for x in new] == [4]  # free queue was [4..10, 3, 2, 1]
    assert m.get_block_ids("r") == [1, 2, 4]
