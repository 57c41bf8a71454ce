"""The pool of KV-cache blocks: reference counts, the LRU free queue and the prefix-cache map.

A block is free when no request holds it (ref_cnt == 0). Free blocks wait in a queue whose head is
evicted first; a free block may still hold a cached prefix (it keeps its hash) until it is handed
out again, and a cache hit on it takes it back out of the queue (`touch`). Freed blocks join the
tail, so the least recently used cached blocks are evicted first.

Block 0 is the null block: reserved, never handed out, never freed; the model runner pads block
tables with it. Host side only: no JAX here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from jaxllm.kv_cache.block_hash import BlockHash


class KVCacheBlock:
    """One page of the KV cache: `block_size` token slots in every layer's K and V arrays."""

    __slots__ = (
        "block_id",
        "ref_cnt",
        "block_hash",
        "prev_free_block",
        "next_free_block",
        "is_null",
    )

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None  # set once the block is full and cached
        # Links of the free queue; None when the block is not in it.
        self.prev_free_block: KVCacheBlock | None = None
        self.next_free_block: KVCacheBlock | None = None
        self.is_null = False

    def __repr__(self) -> str:
        h = self.block_hash.hex()[:8] if self.block_hash is not None else None
        return f"KVCacheBlock(id={self.block_id}, ref_cnt={self.ref_cnt}, hash={h})"


def _linked(block: KVCacheBlock | None) -> KVCacheBlock:
    """A link between queued blocks (sentinels included): never None while the queue is intact."""
    if block is None:
        raise RuntimeError("free KV-cache block queue is corrupt: a queued block has no link")
    return block


class FreeKVCacheBlockQueue:
    """Doubly linked list of free blocks with O(1) popleft, append and removal from the middle.

    Head = next to evict. Two sentinel nodes keep the link code free of end cases.
    """

    def __init__(self, blocks: Iterable[KVCacheBlock] = ()) -> None:
        self._head = KVCacheBlock(-1)
        self._tail = KVCacheBlock(-1)
        self._head.next_free_block = self._tail
        self._tail.prev_free_block = self._head
        self.num_free_blocks = 0
        self.append_n(blocks)

    def popleft(self) -> KVCacheBlock:
        block = _linked(self._head.next_free_block)
        if block is self._tail:
            raise ValueError("no free KV-cache blocks")
        self.remove(block)
        return block

    def popleft_n(self, n: int) -> list[KVCacheBlock]:
        if n > self.num_free_blocks:
            raise ValueError(f"asked for {n} free KV-cache blocks, only {self.num_free_blocks}")
        return [self.popleft() for _ in range(n)]

    def remove(self, block: KVCacheBlock) -> None:
        prev, nxt = block.prev_free_block, block.next_free_block
        if prev is None or nxt is None:
            raise ValueError(f"block {block.block_id} is not in the free queue")
        prev.next_free_block = nxt
        nxt.prev_free_block = prev
        block.prev_free_block = block.next_free_block = None
        self.num_free_blocks -= 1

    def append(self, block: KVCacheBlock) -> None:
        if block.prev_free_block is not None or block.next_free_block is not None:
            raise ValueError(f"block {block.block_id} is already in the free queue")
        last = _linked(self._tail.prev_free_block)
        last.next_free_block = block
        block.prev_free_block = last
        block.next_free_block = self._tail
        self._tail.prev_free_block = block
        self.num_free_blocks += 1

    def append_n(self, blocks: Iterable[KVCacheBlock]) -> None:
        for block in blocks:
            self.append(block)

    def get_all_free_blocks(self) -> list[KVCacheBlock]:
        """Head to tail (eviction order). O(n); for tests and debugging."""
        out: list[KVCacheBlock] = []
        block = _linked(self._head.next_free_block)
        while block is not self._tail:
            out.append(block)
            block = _linked(block.next_free_block)
        return out

    def __len__(self) -> int:
        return self.num_free_blocks


@dataclass
class PrefixCacheStats:
    """Counted in tokens, once per admitted request (a resumed, preempted request counts again)."""

    requests: int = 0
    queries: int = 0  # tokens of the requests looked up
    hits: int = 0  # of those, tokens found in the cache

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class BlockPool:
    """All `num_blocks` blocks of the KV cache, block 0 reserved as the null block."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (block 0 is reserved), got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_block_queue = FreeKVCacheBlockQueue(self.blocks)
        self.null_block = self.free_block_queue.popleft()
        self.null_block.is_null = True
        # hash -> {block_id: block}. Several blocks may share a hash when two requests computed
        # the same prefix before either was cached; any of them serves a hit.
        self.cached_block_hash_to_block: dict[BlockHash, dict[int, KVCacheBlock]] = {}
        self.stats = PrefixCacheStats()

    # ----- prefix cache -----------------------------------------------------------------------
    def get_cached_block(self, block_hash: BlockHash) -> KVCacheBlock | None:
        blocks = self.cached_block_hash_to_block.get(block_hash)
        return next(iter(blocks.values())) if blocks else None

    def cache_full_blocks(
        self,
        blocks: list[KVCacheBlock],
        block_hashes: list[BlockHash],
        num_cached_blocks: int,
        num_full_blocks: int,
    ) -> None:
        """Enter blocks[num_cached_blocks:num_full_blocks] of a request into the cache map.

        `blocks` is the request's block table, `block_hashes` its chained block hashes (at least
        `num_full_blocks` long); blocks before `num_cached_blocks` are already cached.
        """
        if not self.enable_caching:
            return
        if len(block_hashes) < num_full_blocks or len(blocks) < num_full_blocks:
            raise ValueError(
                f"cannot cache {num_full_blocks} blocks with {len(block_hashes)} hashes and "
                f"{len(blocks)} blocks"
            )
        for i in range(num_cached_blocks, num_full_blocks):
            block = blocks[i]
            if block.block_hash is not None:
                raise ValueError(f"block {block.block_id} is already cached")
            block.block_hash = block_hashes[i]
            self.cached_block_hash_to_block.setdefault(block_hashes[i], {})[block.block_id] = block

    def _evict_cached_block(self, block: KVCacheBlock) -> None:
        """Drop a block that is being reused from the cache map."""
        if block.block_hash is None:
            return
        same_hash = self.cached_block_hash_to_block[block.block_hash]
        del same_hash[block.block_id]
        if not same_hash:
            del self.cached_block_hash_to_block[block.block_hash]
        block.block_hash = None

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix. Only possible while no request holds a block."""
        if self.num_free_blocks != self.num_blocks - 1:
            return False
        for block in self.blocks:
            block.block_hash = None
        self.cached_block_hash_to_block.clear()
        return True

    # ----- allocation -------------------------------------------------------------------------
    def get_new_blocks(self, n: int) -> list[KVCacheBlock]:
        """Take n blocks from the head of the free queue (evicting their cached prefix)."""
        blocks = self.free_block_queue.popleft_n(n)
        for block in blocks:
            self._evict_cached_block(block)
            block.ref_cnt = 1
        return blocks

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """A cache hit: take the blocks in use (out of the free queue if nobody held them)."""
        for block in blocks:
            if block.is_null:
                raise ValueError("the null block cannot be touched")
            if block.ref_cnt == 0:
                self.free_block_queue.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference from each block; those now unused join the free-queue tail in the
        given order (so the first given is evicted first)."""
        for block in ordered_blocks:
            if block.is_null or block.ref_cnt <= 0:
                raise ValueError(f"block {block.block_id} is not in use and cannot be freed")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_block_queue.append(block)

    @property
    def num_free_blocks(self) -> int:
        return self.free_block_queue.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of the usable blocks (all but the null block) held by requests."""
        return 1.0 - self.num_free_blocks / (self.num_blocks - 1)
