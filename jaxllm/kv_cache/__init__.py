"""Paged KV-cache bookkeeping on the host: block pool, block hashes, per-request block tables."""

from jaxllm.kv_cache.block_hash import (
    ROOT_BLOCK_HASH,
    BlockHash,
    extend_block_hashes,
    hash_block_tokens,
    hash_request_blocks,
)
from jaxllm.kv_cache.block_pool import (
    BlockPool,
    FreeKVCacheBlockQueue,
    KVCacheBlock,
    PrefixCacheStats,
)
from jaxllm.kv_cache.kv_cache_manager import KVCacheManager
from jaxllm.kv_cache.swap_pool import HostSwapPool, num_host_blocks

__all__ = [
    "ROOT_BLOCK_HASH",
    "BlockHash",
    "BlockPool",
    "FreeKVCacheBlockQueue",
    "HostSwapPool",
    "KVCacheBlock",
    "KVCacheManager",
    "PrefixCacheStats",
    "extend_block_hashes",
    "hash_block_tokens",
    "hash_request_blocks",
    "num_host_blocks",
]
