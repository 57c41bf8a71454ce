"""Per-request block tables over the block pool, with automatic prefix caching.

Each request owns an append-only list of blocks: block j holds the KV of its tokens
[j * block_size, (j + 1) * block_size). Full blocks are hashed (chained) and entered into the prefix
cache as soon as the step that fills them is scheduled, so later requests with the same prefix
share them (reference counted) instead of recomputing them.

A block entered into the cache this step may be hit by a request admitted in the same step: its KV
is written in this step's forward pass. That is sound because the model writes the new KV of every
scheduled token into the cache before it runs attention, layer by layer (as vLLM relies on).

Host side only: no JAX here.
"""

from __future__ import annotations

from jaxllm.kv_cache.block_hash import BlockHash, extend_block_hashes
from jaxllm.kv_cache.block_pool import BlockPool, KVCacheBlock, PrefixCacheStats
from jaxllm.request import Request


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self._req_to_block_ids: dict[str, list[int]] = {}
        # How many leading blocks of each request are in the cache map already.
        self._num_cached_blocks: dict[str, int] = {}
        # Chained hashes of each request's full blocks; kept across preemption, dropped on finish.
        self._req_to_block_hashes: dict[str, list[BlockHash]] = {}

    # ----- prefix cache -----------------------------------------------------------------------
    def _block_hashes(self, request: Request) -> list[BlockHash]:
        hashes = self._req_to_block_hashes.setdefault(request.request_id, [])
        if len(hashes) < request.num_tokens // self.block_size:
            extend_block_hashes(hashes, request.all_token_ids, self.block_size, request.cache_salt)
        return hashes

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """The longest cached prefix of the request's full blocks, and its length in tokens.

        The model must compute at least the last token to get logits, so the hit is capped at
        `num_tokens - 1` tokens, rounded down to whole blocks (vLLM's behaviour): a hit covering the
        whole of a block-aligned prompt backs off one whole block, recomputed into a new block.
        Requests that want prompt logprobs need every prompt position computed: no hit for them.
        The returned blocks are not yet held; pass them to `allocate_slots` before anything else
        allocates.
        """
        if not self.enable_caching or getattr(
            request.sampling_params, "prompt_logprobs", None
        ) is not None:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        hit: list[KVCacheBlock] = []
        for block_hash in self._block_hashes(request)[:max_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            hit.append(block)
        return hit, len(hit) * self.block_size

    # ----- allocation -------------------------------------------------------------------------
    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] | None = None,
    ) -> list[KVCacheBlock] | None:
        """Make room for `num_new_tokens` more tokens of the request.

        `new_computed_blocks` (only when the request holds no blocks yet) are prefix-cache hits
        from `get_computed_blocks`; their tokens count as computed in addition to
        `request.num_computed_tokens`. Returns the newly allocated blocks (possibly empty), or None
        when there are not enough free blocks, in which case nothing changes.
        """
        if num_new_tokens < 1:
            raise ValueError(f"num_new_tokens must be >= 1, got {num_new_tokens}")
        rid = request.request_id
        computed = new_computed_blocks or []
        req_blocks = self.req_to_blocks.get(rid)
        if computed and req_blocks:
            raise ValueError(f"request {rid!r} already holds blocks; cannot add prefix-cache hits")
        num_computed_tokens = request.num_computed_tokens + len(computed) * self.block_size
        num_tokens = num_computed_tokens + num_new_tokens
        if num_tokens > request.num_tokens:
            raise ValueError(
                f"request {rid!r}: {num_computed_tokens} computed + {num_new_tokens} new tokens "
                f"exceeds its {request.num_tokens} tokens"
            )
        num_held = len(req_blocks) if req_blocks else 0
        num_required = -(-num_tokens // self.block_size)
        num_new_blocks = max(0, num_required - num_held - len(computed))
        # Hits on free (evictable) blocks also take blocks out of the free queue.
        num_evictable_hits = sum(1 for b in computed if b.ref_cnt == 0)
        if num_new_blocks + num_evictable_hits > self.block_pool.num_free_blocks:
            return None

        if req_blocks is None:
            req_blocks = self.req_to_blocks[rid] = []
            self._req_to_block_ids[rid] = []
            self._num_cached_blocks[rid] = len(computed)
            if self.enable_caching:
                stats = self.block_pool.stats
                stats.requests += 1
                stats.queries += request.num_tokens
                stats.hits += len(computed) * self.block_size
        self.block_pool.touch(computed)
        new_blocks = self.block_pool.get_new_blocks(num_new_blocks)
        req_blocks.extend(computed)
        req_blocks.extend(new_blocks)
        self._req_to_block_ids[rid].extend(b.block_id for b in computed)
        self._req_to_block_ids[rid].extend(b.block_id for b in new_blocks)

        if self.enable_caching:
            self._cache_full_blocks(request, num_tokens)
        return new_blocks

    def _cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Enter the request's blocks that `num_tokens` tokens fill into the prefix cache."""
        rid = request.request_id
        num_cached = self._num_cached_blocks[rid]
        num_full = num_tokens // self.block_size
        if num_full <= num_cached:
            return
        self.block_pool.cache_full_blocks(
            self.req_to_blocks[rid], self._block_hashes(request), num_cached, num_full
        )
        self._num_cached_blocks[rid] = num_full

    def free(self, request: Request) -> None:
        """Release the request's blocks. Tail blocks join the free queue first, so they are
        evicted before the shared prefix blocks. A finished request's hashes are dropped too."""
        rid = request.request_id
        blocks = self.req_to_blocks.pop(rid, [])
        self._req_to_block_ids.pop(rid, None)
        self._num_cached_blocks.pop(rid, None)
        self.block_pool.free_blocks(reversed(blocks))
        if request.is_finished():
            self._req_to_block_hashes.pop(rid, None)

    # ----- queries ----------------------------------------------------------------------------
    def get_blocks(self, request_id: str) -> list[KVCacheBlock]:
        return list(self.req_to_blocks.get(request_id, ()))

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table (a copy; it only ever grows while the request runs)."""
        return list(self._req_to_block_ids.get(request_id, ()))

    def get_num_blocks(self, request_id: str) -> int:
        return len(self._req_to_block_ids.get(request_id, ()))

    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.block_pool.usage

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self.block_pool.stats

    def reset_prefix_cache(self) -> bool:
        return self.block_pool.reset_prefix_cache()
