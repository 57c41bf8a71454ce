"""KVCacheManager swap out / swap in and fork / copy-on-write, with exact block ids, free-queue
orders and reference counts (block_size 4); HostSwapPool ids."""

import pytest
from fake_requests import free_ids, make_request, ref_cnts, run

from jaxllm.kv_cache import HostSwapPool, KVCacheManager, hash_request_blocks, num_host_blocks

BS = 4


def test_host_pool_ids_and_sizing():
    pool = HostSwapPool(4)
    assert pool.allocate(3) == [0, 1, 2] and pool.num_free_blocks == 1
    assert pool.allocate(2) is None and pool.num_free_blocks == 1  # nothing taken
    pool.free([1, 0])
    assert pool.get_free_block_ids() == [3, 1, 0]
    assert pool.allocate(2) == [3, 1]
    with pytest.raises(ValueError, match="host block 3 is not in use"):
        pool.free([2, 3, 3])
    assert num_host_blocks(1.0, 2**20) == 1024 and num_host_blocks(0, 100) == 0
    with pytest.raises(ValueError, match="swap_space"):
        num_host_blocks(-1.0, 100)
    with pytest.raises(ValueError, match=">= 0"):
        HostSwapPool(-1)


def test_swap_out_and_back_in_exact_ids():
    m = KVCacheManager(num_blocks=9, block_size=BS, num_host_blocks=4)
    a = make_request("a", list(range(100, 110)))  # 10 tokens: blocks 1, 2 full + 3 partial
    b = make_request("b", list(range(200, 205)))
    assert run(m, a, 10) == [1, 2, 3] and run(m, b, 5) == [4, 5]
    a.append_output_token_ids(7)  # sampled, not computed: 11 tokens, 10 computed
    pairs = m.swap_out(a)
    assert pairs == [(1, 0), (2, 1), (3, 2)]
    assert m.is_swapped("a") and m.get_host_block_ids("a") == [0, 1, 2]
    assert m.get_block_ids("a") == []
    # Device blocks freed tail first; the full ones keep their hashes (still cache hits).
    assert free_ids(m) == [6, 7, 8, 3, 2, 1]
    h = hash_request_blocks(a.all_token_ids, BS)
    assert m.block_pool.get_cached_block(h[0]).block_id == 1
    assert m.swap_pool.get_free_block_ids() == [3]
    assert a.num_computed_tokens == 10  # the KV is kept, on the host

    # a comes back: 3 host blocks into 3 fresh device blocks from the head of the free queue,
    # and room for its 11th token (still in its 3rd block).
    pairs = m.swap_in(a, 1)
    assert pairs == [(0, 6), (1, 7), (2, 8)]
    assert m.get_block_ids("a") == [6, 7, 8] and not m.is_swapped("a")
    assert m.swap_pool.get_free_block_ids() == [3, 0, 1, 2]
    assert free_ids(m) == [3, 2, 1]
    # Its full blocks are cached again under the same hashes (beside the old copies).
    assert sorted(m.block_pool.cached_block_hash_to_block[h[0]]) == [1, 6]
    assert sorted(m.block_pool.cached_block_hash_to_block[h[1]]) == [2, 7]
    a.num_computed_tokens += 1
    assert m.prefix_cache_stats.requests == 2  # a swap-in is not a new prefix lookup


def test_swap_out_falls_back_when_host_pool_is_full_and_swap_in_waits_for_blocks():
    m = KVCacheManager(num_blocks=6, block_size=BS, num_host_blocks=2)
    a = make_request("a", list(range(100, 110)))
    run(m, a, 10)
    assert m.swap_out(a) is None  # 3 blocks needed, 2 host blocks
    assert m.get_block_ids("a") == [1, 2, 3] and m.swap_pool.num_free_blocks == 2
    b = make_request("b", list(range(300, 306)))
    run(m, b, 6)  # [4, 5]
    assert m.swap_out(b) == [(4, 0), (5, 1)]
    c = make_request("c", list(range(400, 408)))
    run(m, c, 8)  # takes 5, 4 (head of the free queue)
    assert m.get_block_ids("c") == [5, 4] and m.num_free_blocks == 0
    b.append_output_token_ids(9)
    assert m.swap_in(b, 1) is None  # no free device block: nothing changes
    assert m.is_swapped("b") and m.swap_pool.num_free_blocks == 0
    c.status = type(c.status).FINISHED_STOPPED
    m.free(c)
    assert m.swap_in(b, 1) == [(0, 4), (1, 5)]
    b.status = type(b.status).FINISHED_ABORTED
    m.free(b)
    assert m.swap_pool.num_free_blocks == 2 and free_ids(m) == [5, 4]


def test_free_of_a_swapped_request_returns_its_host_blocks():
    m = KVCacheManager(num_blocks=6, block_size=BS, num_host_blocks=4)
    a = make_request("a", list(range(100, 106)))
    run(m, a, 6)
    m.swap_out(a)
    with pytest.raises(ValueError, match="already swapped out"):
        m.swap_out(a)
    m.free(a)
    assert m.swap_pool.get_free_block_ids() == [2, 3, 0, 1] and not m.is_swapped("a")
    with pytest.raises(ValueError, match="not swapped out"):
        m.swap_in(a, 1)


def test_fork_shares_blocks_and_copy_on_write_of_the_partial_block():
    m = KVCacheManager(num_blocks=10, block_size=BS)
    prompt = list(range(100, 106))  # 6 tokens: block 1 full, block 2 partial
    p, c1, c2 = (make_request(r, prompt) for r in ("p", "c1", "c2"))
    assert run(m, p, 6) == [1, 2]
    m.fork(p, c1)
    m.fork(p, c2)
    for c in (c1, c2):
        c.num_computed_tokens = 6
    assert m.get_block_ids("c1") == m.get_block_ids("c2") == [1, 2]
    assert ref_cnts(m, [1, 2]) == [3, 3] and m.take_blocks_to_copy() == []
    # Each appends its own token at position 6, inside the shared block 2: the first two copy it
    # (new blocks 3, 4), the last one is then its only holder and writes in place.
    for r, tok in ((p, 11), (c1, 12), (c2, 13)):
        r.append_output_token_ids(tok)
    assert run(m, p, 1) == [] and m.get_block_ids("p") == [1, 3]
    assert run(m, c1, 1) == [] and m.get_block_ids("c1") == [1, 4]
    assert run(m, c2, 1) == [] and m.get_block_ids("c2") == [1, 2]
    assert m.take_blocks_to_copy() == [(2, 3), (2, 4)] and m.take_blocks_to_copy() == []
    assert ref_cnts(m, [1, 2, 3, 4]) == [3, 1, 1, 1]
    # Filling the copies caches each under its own chained hash.
    for r, tok in ((p, 21), (c1, 22)):
        r.append_output_token_ids(tok)
        run(m, r, 1)
    hp = hash_request_blocks(p.all_token_ids, BS)
    hc = hash_request_blocks(c1.all_token_ids, BS)
    assert hp[0] == hc[0] and hp[1] != hc[1]
    assert m.block_pool.get_cached_block(hp[1]).block_id == 3
    assert m.block_pool.get_cached_block(hc[1]).block_id == 4
    # Freeing: shared block 1 stays held until its last holder goes.
    for r in (p, c1):
        r.status = type(r.status).FINISHED_STOPPED
        m.free(r)
    assert ref_cnts(m, [1, 2]) == [1, 1]
    assert free_ids(m) == [5, 6, 7, 8, 9, 3, 4]


def test_fork_leaves_the_parents_lookahead_blocks_its_own():
    # A draft model's lookahead slots past the prompt are the parent's: a child sharing them would
    # write its first token into the same slots as the parent (copy-on-write covers only the block
    # of the first new token, and an aligned prompt has none to copy).
    m = KVCacheManager(num_blocks=10, block_size=BS)
    prompt = list(range(100, 108))  # 8 tokens: blocks 1, 2 full
    p, c = make_request("p", prompt), make_request("c", prompt)
    assert [b.block_id for b in m.allocate_slots(p, 8, num_lookahead_tokens=3)] == [1, 2, 3]
    p.num_computed_tokens = 8
    m.fork(p, c)
    c.num_computed_tokens = 8
    assert m.get_block_ids("c") == [1, 2] and ref_cnts(m, [1, 2, 3]) == [2, 2, 1]
    c.append_output_token_ids(9)
    assert run(m, c, 1) == [4] and m.get_block_ids("c") == [1, 2, 4]
    assert m.take_blocks_to_copy() == []


def test_copy_on_write_needs_a_free_block_and_fork_errors():
    m = KVCacheManager(num_blocks=3, block_size=BS)
    p, c = make_request("p", [1, 2, 3, 4, 5]), make_request("c", [1, 2, 3, 4, 5])
    run(m, p, 5)  # [1, 2], no block left
    m.fork(p, c)
    c.num_computed_tokens = 5
    c.append_output_token_ids(9)
    assert m.allocate_slots(c, 1) is None  # the copy needs a block: nothing changes
    assert m.get_block_ids("c") == [1, 2] and ref_cnts(m, [1, 2]) == [2, 2]
    with pytest.raises(ValueError, match="already holds blocks"):
        m.fork(p, c)
    with pytest.raises(ValueError, match="holds no blocks"):
        m.fork(make_request("x", [1]), make_request("y", [1]))
