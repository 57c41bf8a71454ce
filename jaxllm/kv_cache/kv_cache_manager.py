"""Per-request block tables over the block pool, with automatic prefix caching.

Each request owns an append-only list of blocks: block j holds the KV of its tokens
[j * block_size, (j + 1) * block_size). Full blocks are hashed (chained) and entered into the prefix
cache as soon as the step that fills them is scheduled, so later requests with the same prefix
share them (reference counted) instead of recomputing them.

A block entered into the cache this step may be hit by a request admitted in the same step: its KV
is written in this step's forward pass. That is sound because the model writes the new KV of every
scheduled token into the cache before it runs attention, layer by layer (as vLLM relies on).

Three more ways a block table changes, each leaving device copies for the model runner to do
before the step (in this order: swap-outs, swap-ins, copies; see jaxllm/engine/kv_swap.py):
  * `swap_out`: a preempted request's computed blocks go to host blocks (`HostSwapPool`) and its
    device blocks are freed (they keep their hashes: still prefix-cache hits until evicted);
  * `swap_in`: it comes back into fresh device blocks of its own, whose full blocks are entered
    into the prefix cache again;
  * `fork`: a child shares its parent's whole table (ref counts + 1); the partly filled last block
    is copied on write by whichever sharer first appends into it (`allocate_slots`).

Sliding-window models (every layer attends within `sliding_window` tokens): a block whose tokens
all lie before the window of the request's next query is read by no later step, so it is freed
and its table entry becomes the null block (the kernels mask it out), as vLLM's sliding-window
manager does. It keeps its hash, so it stays a prefix-cache hit until it is evicted. Blocks are
freed only once cached (when caching is on), and in the step after the last one that read them:
steps run in order on the device, so a step in flight has read them before a later step writes
a reused block.

Host side only: no JAX here."""

from __future__ import annotations

from jaxllm.kv_cache.block_hash import BlockHash, extend_block_hashes
from jaxllm.kv_cache.block_pool import BlockPool, KVCacheBlock, PrefixCacheStats
from jaxllm.kv_cache.swap_pool import HostSwapPool
from jaxllm.request import Request


class KVCacheManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool = True,
        num_host_blocks: int = 0,
        sliding_window: int | None = None,  # every layer's window, else None
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
        self.block_size = block_size
        self.sliding_window = sliding_window
        # How many leading blocks of each request were freed as outside the window (null now).
        self._num_windowed_out: dict[str, int] = {}
        self.num_windowed_out_total = 0  # blocks freed that way since start (a metric)
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self._req_to_block_ids: dict[str, list[int]] = {}
        # How many leading blocks of each request are in the cache map already.
        self._num_cached_blocks: dict[str, int] = {}
        # Chained hashes of each request's full blocks; kept across preemption, dropped on finish.
        self._req_to_block_hashes: dict[str, list[BlockHash]] = {}
        # Swap space on the host, and the host blocks of each swapped-out request.
        self.swap_pool = HostSwapPool(num_host_blocks)
        self._req_to_host_blocks: dict[str, list[int]] = {}
        # Copy-on-write copies (src, dst) decided since the last take_blocks_to_copy().
        self._blocks_to_copy: list[tuple[int, int]] = []

    # ----- prefix cache -----------------------------------------------------------------------
    def _block_hashes(self, request: Request) -> list[BlockHash]:
        hashes = self._req_to_block_hashes.setdefault(request.request_id, [])
        if len(hashes) < request.num_tokens // self.block_size:
            extend_block_hashes(
                hashes,
                request.all_token_ids,
                self.block_size,
                request.cache_salt,
                request.lora_int_id,
            )
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
        if (
            not self.enable_caching
            or getattr(request.sampling_params, "prompt_logprobs", None) is not None
        ):
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
        num_lookahead_tokens: int = 0,
    ) -> list[KVCacheBlock] | None:
        """Make room for `num_new_tokens` more tokens of the request.

        `num_lookahead_tokens`: slots for tokens past the request's known ones (speculative
        decoding's draft tokens, and the positions a draft model writes ahead); they get blocks
        but are never hashed into the prefix cache, and a rejected draft's slot is simply written
        again later.

        `new_computed_blocks` (only when the request holds no blocks yet) are prefix-cache hits
        from `get_computed_blocks`; their tokens count as computed in addition to
        `request.num_computed_tokens`. Returns the newly allocated blocks (possibly empty), or None
        when there are not enough free blocks, in which case nothing changes. When the first new
        token goes into a partly filled block that others share (after `fork`), that block is
        first replaced by a fresh copy (copy-on-write; see `take_blocks_to_copy`).
        """
        if num_new_tokens < 1:
            raise ValueError(f"num_new_tokens must be >= 1, got {num_new_tokens}")
        rid = request.request_id
        computed = new_computed_blocks or []
        req_blocks = self.req_to_blocks.get(rid)
        if req_blocks and self.sliding_window is not None:
            self._free_blocks_outside_window(rid, request.num_computed_tokens)
        if req_blocks and not computed:
            # Fast path (most decode steps): the new tokens fit in the blocks already held and
            # the first goes into an unshared block (or starts a fresh one): nothing to allocate.
            num_computed_tokens = request.num_computed_tokens
            num_tokens = num_computed_tokens + num_new_tokens
            bs = self.block_size
            if (
                num_tokens <= request.num_tokens_with_placeholders
                and -(-(num_tokens + num_lookahead_tokens) // bs) <= len(req_blocks)
                and (
                    num_computed_tokens % bs == 0
                    or req_blocks[num_computed_tokens // bs].ref_cnt == 1
                )
            ):
                if self.enable_caching:
                    self._cache_full_blocks(request, num_tokens)
                return []
        if computed and req_blocks:
            raise ValueError(f"request {rid!r} already holds blocks; cannot add prefix-cache hits")
        num_computed_tokens = request.num_computed_tokens + len(computed) * self.block_size
        num_tokens = num_computed_tokens + num_new_tokens
        if num_tokens > request.num_tokens_with_placeholders:
            raise ValueError(
                f"request {rid!r}: {num_computed_tokens} computed + {num_new_tokens} new tokens "
                f"exceeds its {request.num_tokens_with_placeholders} tokens"
            )
        if num_lookahead_tokens < 0:
            raise ValueError(f"num_lookahead_tokens must be >= 0, got {num_lookahead_tokens}")
        num_held = len(req_blocks) if req_blocks else 0
        num_required = -(-(num_tokens + num_lookahead_tokens) // self.block_size)
        num_new_blocks = max(0, num_required - num_held - len(computed))
        # Hits on free (evictable) blocks also take blocks out of the free queue.
        num_evictable_hits = sum(1 for b in computed if b.ref_cnt == 0)
        # Appending into a partly filled block that others share (a fork): copy it first.
        cow = None
        if req_blocks and num_computed_tokens % self.block_size:
            j = num_computed_tokens // self.block_size
            if req_blocks[j].ref_cnt > 1:
                cow = j
        num_cow = 0 if cow is None else 1
        if num_new_blocks + num_evictable_hits + num_cow > self.block_pool.num_free_blocks:
            return None
        if cow is not None and req_blocks:  # (cow is set only when req_blocks is non-empty)
            (dst,) = self.block_pool.get_new_blocks(1)
            src = req_blocks[cow]
            req_blocks[cow] = dst
            self._req_to_block_ids[rid][cow] = dst.block_id
            self.block_pool.free_blocks([src])  # still held by the other sharers
            self._blocks_to_copy.append((src.block_id, dst.block_id))

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
        # only blocks of known tokens: a placeholder's value (step in flight) is not hashable yet
        num_full = min(num_tokens, request.num_tokens) // self.block_size
        if num_full <= num_cached:
            return
        self.block_pool.cache_full_blocks(
            self.req_to_blocks[rid], self._block_hashes(request), num_cached, num_full
        )
        self._num_cached_blocks[rid] = num_full

    def _free_blocks_outside_window(self, rid: str, num_computed_tokens: int) -> None:
        """Free the request's leading blocks that no query from `num_computed_tokens` on reads.

        The query at position p reads keys p - sliding_window + 1 .. p, so the next one (at
        `num_computed_tokens`) and every later one read nothing before that first key.
        """
        assert self.sliding_window is not None
        first_read = num_computed_tokens - self.sliding_window + 1
        n = first_read // self.block_size  # blocks wholly before the first key read
        if self.enable_caching:
            n = min(n, self._num_cached_blocks[rid])
        start = self._num_windowed_out.get(rid, 0)
        if n <= start:
            return
        blocks, ids = self.req_to_blocks[rid], self._req_to_block_ids[rid]
        out = blocks[start:n]
        null = self.block_pool.null_block
        blocks[start:n] = [null] * (n - start)
        ids[start:n] = [null.block_id] * (n - start)
        self._num_windowed_out[rid] = n
        self.num_windowed_out_total += n - start
        self.block_pool.free_blocks(out)

    def free(self, request: Request) -> None:
        """Release the request's blocks (device, and host ones if swapped out). Tail blocks join
        the free queue first, so they are evicted before the shared prefix blocks. A finished
        request's hashes are dropped too."""
        rid = request.request_id
        self._free_device_blocks(rid)
        host = self._req_to_host_blocks.pop(rid, None)
        if host:
            self.swap_pool.free(host)
        if request.is_finished():
            self._req_to_block_hashes.pop(rid, None)

    def _free_device_blocks(self, rid: str) -> None:
        blocks = self.req_to_blocks.pop(rid, [])
        self._req_to_block_ids.pop(rid, None)
        self._num_cached_blocks.pop(rid, None)
        self._num_windowed_out.pop(rid, None)
        self.block_pool.free_blocks(b for b in reversed(blocks) if not b.is_null)

    # ----- swap to host memory ----------------------------------------------------------------
    def is_swapped(self, request_id: str) -> bool:
        return request_id in self._req_to_host_blocks

    def get_host_block_ids(self, request_id: str) -> list[int]:
        return list(self._req_to_host_blocks.get(request_id, ()))

    def swap_out(self, request: Request) -> list[tuple[int, int]] | None:
        """Move the KV of the request's computed tokens to host blocks and free its device blocks.

        Returns the (device block id, host block id) copies to do before the next step, or None
        when the host pool lacks room (then nothing changes: preempt by recompute instead).
        """
        rid = request.request_id
        if rid in self._req_to_host_blocks:
            raise ValueError(f"request {rid!r} is already swapped out")
        blocks = self.req_to_blocks.get(rid, [])
        n = -(-request.num_computed_tokens // self.block_size)
        if n > len(blocks):
            raise ValueError(
                f"request {rid!r}: {request.num_computed_tokens} computed tokens but only "
                f"{len(blocks)} blocks"
            )
        host = self.swap_pool.allocate(n)
        if host is None:
            return None
        pairs = [(b.block_id, h) for b, h in zip(blocks[:n], host)]
        self._req_to_host_blocks[rid] = host
        self._free_device_blocks(rid)
        return pairs

    def swap_in(self, request: Request, num_new_tokens: int) -> list[tuple[int, int]] | None:
        """Bring a swapped-out request back: fresh device blocks for its host blocks, plus room for
        `num_new_tokens` more tokens (as `allocate_slots`). Returns the (host block id, device
        block id) copies to do before the step, or None (nothing changes) when blocks are short."""
        rid = request.request_id
        host = self._req_to_host_blocks.get(rid)
        if host is None:
            raise ValueError(f"request {rid!r} is not swapped out")
        if num_new_tokens < 1:
            raise ValueError(f"num_new_tokens must be >= 1, got {num_new_tokens}")
        num_tokens = request.num_computed_tokens + num_new_tokens
        if num_tokens > request.num_tokens:
            raise ValueError(
                f"request {rid!r}: {request.num_computed_tokens} computed + {num_new_tokens} new "
                f"tokens exceeds its {request.num_tokens} tokens"
            )
        if -(-num_tokens // self.block_size) > self.block_pool.num_free_blocks:
            return None
        blocks = self.block_pool.get_new_blocks(len(host))
        self.req_to_blocks[rid] = blocks
        self._req_to_block_ids[rid] = [b.block_id for b in blocks]
        self._num_cached_blocks[rid] = 0  # its full blocks are cached again just below
        del self._req_to_host_blocks[rid]
        self.swap_pool.free(host)  # the copy back is ordered before any later swap-out
        if self.allocate_slots(request, num_new_tokens) is None:  # room was checked above
            raise RuntimeError(f"request {rid!r}: swap-in lost its blocks")
        return [(h, b.block_id) for h, b in zip(host, blocks)]

    # ----- fork and copy-on-write -------------------------------------------------------------
    def fork(self, parent: Request, child: Request) -> None:
        """Give `child` the blocks that hold the parent's tokens, shared (ref counts + 1).

        The child must hold the same tokens as the parent (a sample of the same prompt); the
        shared partial last block is copied on write (see `allocate_slots`). Blocks the parent
        holds past its tokens (lookahead slots for a draft model) stay its own: copy-on-write
        covers only the block of the first new token, so a shared one would be written by both.
        """
        pid, cid = parent.request_id, child.request_id
        if pid not in self.req_to_blocks:
            raise ValueError(f"request {pid!r} holds no blocks to fork")
        if cid in self.req_to_blocks or cid in self._req_to_host_blocks:
            raise ValueError(f"request {cid!r} already holds blocks")
        num_shared = -(-parent.num_tokens // self.block_size)
        blocks = self.req_to_blocks[pid][:num_shared]
        self.block_pool.touch(b for b in blocks if not b.is_null)
        self.req_to_blocks[cid] = list(blocks)
        self._req_to_block_ids[cid] = self._req_to_block_ids[pid][:num_shared]
        self._num_cached_blocks[cid] = min(self._num_cached_blocks[pid], num_shared)
        if pid in self._num_windowed_out:
            self._num_windowed_out[cid] = self._num_windowed_out[pid]
        self._req_to_block_hashes[cid] = list(self._req_to_block_hashes.get(pid, ()))

    def take_blocks_to_copy(self) -> list[tuple[int, int]]:
        """The copy-on-write (src, dst) device copies decided since the last call."""
        out, self._blocks_to_copy = self._blocks_to_copy, []
        return out

    # ----- queries ----------------------------------------------------------------------------
    def get_blocks(self, request_id: str) -> list[KVCacheBlock]:
        return list(self.req_to_blocks.get(request_id, ()))

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table (a copy). It only grows while the request runs, but entries
        before a sliding window turn into the null block's id."""
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
