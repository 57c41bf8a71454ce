"""BlockPool, FreeKVCacheBlockQueue and block hashing, checked with exact block ids and orders."""

import hashlib
import os
import struct
import subprocess
import sys

import pytest

from jaxllm.kv_cache import (
    ROOT_BLOCK_HASH,
    BlockPool,
    FreeKVCacheBlockQueue,
    KVCacheBlock,
    hash_block_tokens,
    hash_request_blocks,
)
from jaxllm.process_lifetime import kill_with_parent


def ids(blocks):
    return [b.block_id for b in blocks]


def free_ids(pool):
    return ids(pool.free_block_queue.get_all_free_blocks())


# ----- free queue ----------------------------------------------------------------------------
def test_free_queue_popleft_append_remove_middle():
    blocks = [KVCacheBlock(i) for i in range(5)]
    q = FreeKVCacheBlockQueue(blocks)
    assert ids(q.get_all_free_blocks()) == [0, 1, 2, 3, 4] and len(q) == 5
    q.remove(blocks[2])  # from the middle
    assert ids(q.get_all_free_blocks()) == [0, 1, 3, 4]
    assert blocks[2].prev_free_block is None and blocks[2].next_free_block is None
    assert q.popleft() is blocks[0]
    q.remove(blocks[4])  # the last one
    q.append(blocks[2])
    q.append(blocks[0])
    assert ids(q.get_all_free_blocks()) == [1, 3, 2, 0] and q.num_free_blocks == 4
    assert ids(q.popleft_n(3)) == [1, 3, 2]
    assert ids(q.get_all_free_blocks()) == [0]


def test_free_queue_errors():
    blocks = [KVCacheBlock(i) for i in range(2)]
    q = FreeKVCacheBlockQueue(blocks)
    with pytest.raises(ValueError, match="already in the free queue"):
        q.append(blocks[0])
    with pytest.raises(ValueError, match="asked for 3 free"):
        q.popleft_n(3)
    assert len(q) == 2  # a failed popleft_n takes nothing
    q.popleft_n(2)
    with pytest.raises(ValueError, match="no free KV-cache blocks"):
        q.popleft()
    with pytest.raises(ValueError, match="not in the free queue"):
        q.remove(blocks[1])


# ----- pool ----------------------------------------------------------------------------------
def test_pool_reserves_null_block_and_allocates_in_id_order():
    pool = BlockPool(6, enable_caching=True)
    assert pool.null_block.block_id == 0 and pool.null_block.is_null
    assert pool.num_free_blocks == 5 and pool.usage == 0.0
    assert free_ids(pool) == [1, 2, 3, 4, 5]
    got = pool.get_new_blocks(2)
    assert ids(got) == [1, 2] and [b.ref_cnt for b in got] == [1, 1]
    assert pool.num_free_blocks == 3 and pool.usage == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="asked for 4 free"):
        pool.get_new_blocks(4)
    assert pool.num_free_blocks == 3
    with pytest.raises(ValueError, match="num_blocks must be >= 2"):
        BlockPool(1)


def test_free_blocks_appends_in_given_order_and_respects_ref_counts():
    pool = BlockPool(6)
    a, b, c = pool.get_new_blocks(3)
    pool.touch([b])  # a second holder of b
    assert b.ref_cnt == 2
    pool.free_blocks([c, b, a])  # reverse order, as the manager frees a request
    assert free_ids(pool) == [4, 5, 3, 1]  # b still held once
    assert (a.ref_cnt, b.ref_cnt, c.ref_cnt) == (0, 1, 0)
    pool.free_blocks([b])
    assert free_ids(pool) == [4, 5, 3, 1, 2]
    with pytest.raises(ValueError, match="block 2 is not in use"):
        pool.free_blocks([b])
    with pytest.raises(ValueError, match="block 0 is not in use"):
        pool.free_blocks([pool.null_block])
    with pytest.raises(ValueError, match="null block"):
        pool.touch([pool.null_block])


def test_cache_touch_and_lru_eviction():
    pool = BlockPool(5)
    blocks = pool.get_new_blocks(3)  # ids 1, 2, 3
    hashes = hash_request_blocks(list(range(6)), block_size=2)
    pool.cache_full_blocks(blocks, hashes, num_cached_blocks=0, num_full_blocks=2)
    assert pool.get_cached_block(hashes[0]) is blocks[0]
    assert pool.get_cached_block(hashes[1]) is blocks[1]
    assert blocks[2].block_hash is None
    with pytest.raises(ValueError, match="already cached"):
        pool.cache_full_blocks(blocks, hashes, 0, 1)

    pool.free_blocks(reversed(blocks))
    assert free_ids(pool) == [4, 3, 2, 1]
    # A free cached block is still a hit; touching takes it out of the free queue.
    hit = pool.get_cached_block(hashes[0])
    pool.touch([hit])
    assert hit.ref_cnt == 1 and free_ids(pool) == [4, 3, 2]
    # Reuse evicts from the head: 4 and 3 were never cached, then 2 (hashes[1]) is evicted.
    assert ids(pool.get_new_blocks(3)) == [4, 3, 2]
    assert pool.get_cached_block(hashes[1]) is None and blocks[1].block_hash is None
    assert pool.get_cached_block(hashes[0]) is blocks[0]  # held, still cached
    assert pool.num_free_blocks == 0 and pool.usage == 1.0


def test_duplicate_hashes_survive_one_eviction():
    pool = BlockPool(4)
    x, y = pool.get_new_blocks(2)
    h = hash_request_blocks([7, 7], block_size=2)
    pool.cache_full_blocks([x], h, 0, 1)
    pool.cache_full_blocks([y], h, 0, 1)
    assert set(pool.cached_block_hash_to_block[h[0]]) == {1, 2}
    pool.free_blocks([x, y])
    assert ids(pool.get_new_blocks(2)) == [3, 1]  # evicts x only
    assert pool.get_cached_block(h[0]) is y
    assert ids(pool.get_new_blocks(1)) == [2]
    assert h[0] not in pool.cached_block_hash_to_block


def test_caching_disabled_never_caches():
    pool = BlockPool(4, enable_caching=False)
    blocks = pool.get_new_blocks(1)
    pool.cache_full_blocks(blocks, hash_request_blocks([1, 2], 2), 0, 1)
    assert blocks[0].block_hash is None and not pool.cached_block_hash_to_block


def test_reset_prefix_cache_only_when_idle():
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(1)
    h = hash_request_blocks([1, 2], 2)
    pool.cache_full_blocks(blocks, h, 0, 1)
    assert not pool.reset_prefix_cache()
    pool.free_blocks(blocks)
    assert pool.get_cached_block(h[0]) is blocks[0]
    assert pool.reset_prefix_cache()
    assert pool.get_cached_block(h[0]) is None and blocks[0].block_hash is None


# ----- block hashes --------------------------------------------------------------------------
def _reference_hash(parent, tokens, extra=()):
    """The documented encoding, written out independently."""
    data = parent + struct.pack("<I", len(tokens)) + b"".join(struct.pack("<q", t) for t in tokens)
    data += struct.pack("<I", len(extra))
    for k in extra:
        raw = k.encode()
        data += b"s" + struct.pack("<I", len(raw)) + raw
    return hashlib.sha256(data).digest()


def test_block_hashes_are_chained_and_match_the_encoding():
    tokens = [5, 6, 7, 8, 9, 10, 11]  # two full blocks of 3, one partial
    hashes = hash_request_blocks(tokens, 3)
    assert len(hashes) == 2
    h0 = _reference_hash(ROOT_BLOCK_HASH, [5, 6, 7])
    assert hashes == [h0, _reference_hash(h0, [8, 9, 10])]
    # Same block tokens after a different prefix hash differently.
    assert hash_request_blocks([0, 0, 0, 8, 9, 10], 3)[1] != hashes[1]
    # The salt goes into the first block, and through the chain into all.
    salted = hash_request_blocks(tokens, 3, cache_salt="s1")
    assert salted[0] == _reference_hash(ROOT_BLOCK_HASH, [5, 6, 7], ("s1",))
    assert salted[0] != hashes[0] and salted[1] != hashes[1]
    assert hash_request_blocks(tokens, 3, cache_salt="s2")[1] != salted[1]
    with pytest.raises(ValueError, match="extra keys"):
        hash_block_tokens(None, [1], (1.5,))


def test_block_hashes_are_the_same_in_another_process():
    code = (
        "from jaxllm.kv_cache import hash_request_blocks as h;"
        "print(h([1, 2, 3, 4, 5], 2, cache_salt='salt')[-1].hex())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        preexec_fn=kill_with_parent,
    )
    expected = hash_request_blocks([1, 2, 3, 4, 5], 2, cache_salt="salt")[-1].hex()
    assert out.stdout.strip() == expected
