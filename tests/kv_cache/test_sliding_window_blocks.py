"""KVCacheManager with a sliding window (every layer): blocks before the next query's window are
freed into the null block's place, with exact block ids, free-queue orders and ref counts
(block_size 4, window 6)."""

import pytest
from fake_requests import free_ids, make_request, run

from jaxllm.kv_cache import KVCacheManager, hash_request_blocks
from jaxllm.request import RequestStatus

BS, W = 4, 6


def decode(m, req, tok):
    req.append_output_token_ids(tok)
    return run(m, req, 1)


def test_blocks_before_the_window_are_freed_and_stay_prefix_hits():
    m = KVCacheManager(num_blocks=12, block_size=BS, sliding_window=W)
    prompt = list(range(100, 114))  # 14 tokens: blocks 1, 2, 3 full, 4 partial
    a = make_request("a", prompt)
    assert run(m, a, 8) == [1, 2]  # chunk 1: positions 0..7
    # chunk 2 starts at position 8, whose window begins at 3: block 1 (0..3) is still read
    assert run(m, a, 6) == [3, 4] and m.get_block_ids("a") == [1, 2, 3, 4]
    # the first decode query (position 14) reads from 9 on: blocks 1 (0..3) and 2 (4..7) go
    assert decode(m, a, 7) == [] and m.get_block_ids("a") == [0, 0, 3, 4]
    assert free_ids(m)[-2:] == [1, 2] and m.num_windowed_out_total == 2
    assert [m.block_pool.blocks[i].ref_cnt for i in (1, 2, 3, 4)] == [0, 0, 1, 1]
    # the freed blocks keep their hashes: the same prompt hits them (taking them back)
    h = hash_request_blocks(a.all_token_ids, BS)
    assert m.block_pool.get_cached_block(h[0]).block_id == 1
    b = make_request("b", prompt)
    hits, num_hit = m.get_computed_blocks(b)
    assert [x.block_id for x in hits] == [1, 2, 3] and num_hit == 12
    assert m.allocate_slots(b, 2, hits) is not None
    b.num_computed_tokens = 14
    assert m.get_block_ids("b") == [1, 2, 3, 5]
    # b's next step frees its own early blocks again; a's table is untouched
    assert decode(m, b, 8) == [] and m.get_block_ids("b") == [0, 0, 3, 5]
    assert m.get_block_ids("a") == [0, 0, 3, 4]
    assert m.block_pool.blocks[3].ref_cnt == 2
    for r in (a, b):  # finishing frees only real blocks (the null block is never freed)
        r.status = RequestStatus.FINISHED_STOPPED
        m.free(r)
    assert m.num_free_blocks == 11 and m.block_pool.null_block.ref_cnt == 0


def test_uncached_blocks_are_not_freed_and_no_window_frees_nothing():
    m = KVCacheManager(num_blocks=12, block_size=BS, sliding_window=W, enable_caching=False)
    a = make_request("a", list(range(100, 114)))
    run(m, a, 14)
    decode(m, a, 7)
    assert m.get_block_ids("a") == [0, 0, 3, 4]  # without caching nothing waits to be cached
    plain = KVCacheManager(num_blocks=12, block_size=BS)
    c = make_request("c", list(range(100, 114)))
    run(plain, c, 14)
    decode(plain, c, 7)
    assert plain.get_block_ids("c") == [1, 2, 3, 4] and plain.num_windowed_out_total == 0


def test_fork_and_swap_with_freed_blocks():
    m = KVCacheManager(num_blocks=12, block_size=BS, sliding_window=W, num_host_blocks=8)
    p = make_request("p", list(range(100, 114)))
    run(m, p, 14)
    decode(m, p, 7)  # 15 tokens, table [0, 0, 3, 4]
    c = make_request("c", list(range(100, 114)))
    c.append_output_token_ids(7)
    m.fork(p, c)  # shares the real blocks only; the null entries stay null
    c.num_computed_tokens = p.num_computed_tokens
    assert m.get_block_ids("c") == [0, 0, 3, 4]
    assert [m.block_pool.blocks[i].ref_cnt for i in (3, 4)] == [2, 2]
    # swapping out copies every computed block (the null ones too) and frees only real ones
    pairs = m.swap_out(c)
    assert pairs is not None and [d for d, _ in pairs] == [0, 0, 3, 4]
    assert [m.block_pool.blocks[i].ref_cnt for i in (3, 4)] == [1, 1]
    c.status = RequestStatus.PREEMPTED
    c.append_output_token_ids(8)
    back = m.swap_in(c, 1)
    assert back is not None and len(back) == 4
    # the swapped-in table is whole again; the next step frees its early blocks once more
    ids = m.get_block_ids("c")
    assert 0 not in ids and len(ids) == 4
    c.num_computed_tokens += 1
    assert len(decode(m, c, 9)) == 1  # the 17th token opens a fifth block
    assert m.get_block_ids("c")[:3] == [0, 0, ids[2]]


def test_bad_window():
    with pytest.raises(ValueError, match="sliding_window must be >= 1"):
        KVCacheManager(num_blocks=4, block_size=BS, sliding_window=0)
