"""Chained hashes of full KV-cache blocks, the keys of the prefix cache.

The hash of block i covers (hash of block i-1, the token ids of block i, extra keys), so equal
hashes mean equal whole prefixes, not just equal blocks. Only full blocks are hashed: a partial
block's KV changes as tokens are appended. The first block also carries the request's cache salt
and its LoRA adapter id, which through the chain isolate every block of salted requests and of
each adapter (an adapter changes every layer's K and V).

Hashes are sha256 digests (32 bytes) over a fixed little-endian encoding, so they are the same in
every process and on every machine (Python's `hash()` of a str is randomized per process).
Host side only: no JAX here.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

BlockHash = bytes  # 32-byte sha256 digest

# Parent of the first block. Fixed, so hashes agree across processes.
ROOT_BLOCK_HASH: BlockHash = hashlib.sha256(b"jaxllm-prefix-cache-root").digest()

ExtraKey = int | str


def _encode_extra_keys(extra_keys: Sequence[ExtraKey]) -> bytes:
    parts = [struct.pack("<I", len(extra_keys))]
    for key in extra_keys:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise ValueError(f"block hash extra keys must be int or str, got {key!r}")
        if isinstance(key, int):
            parts.append(b"i" + struct.pack("<q", key))
        else:
            raw = key.encode("utf-8")
            parts.append(b"s" + struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


def hash_block_tokens(
    parent_hash: BlockHash | None,
    token_ids: Sequence[int],
    extra_keys: Sequence[ExtraKey] = (),
) -> BlockHash:
    """Hash one block given its parent's hash (None for the first block)."""
    parent = ROOT_BLOCK_HASH if parent_hash is None else parent_hash
    n = len(token_ids)
    h = hashlib.sha256(parent)
    h.update(struct.pack(f"<I{n}q", n, *token_ids))
    h.update(_encode_extra_keys(extra_keys))
    return h.digest()


def extend_block_hashes(
    hashes: list[BlockHash],
    token_ids: Sequence[int],
    block_size: int,
    cache_salt: str | None = None,
    lora_int_id: int = 0,
) -> list[BlockHash]:
    """Append to `hashes` (the known hashes of the first blocks of `token_ids`) the hashes of the
    remaining full blocks, in place, and return it.

    A request's tokens only grow, so calling this after each append hashes only new full blocks.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    num_full = len(token_ids) // block_size
    if len(hashes) > num_full:
        raise ValueError(f"{len(hashes)} known block hashes but only {num_full} full blocks")
    parent = hashes[-1] if hashes else None
    for i in range(len(hashes), num_full):
        extra: tuple[ExtraKey, ...] = ()
        if i == 0:  # a str salt and an int adapter id encode apart (_encode_extra_keys)
            extra = (() if cache_salt is None else (cache_salt,)) + (
                (lora_int_id,) if lora_int_id else ()
            )
        parent = hash_block_tokens(parent, token_ids[i * block_size : (i + 1) * block_size], extra)
        hashes.append(parent)
    return hashes


def hash_request_blocks(
    token_ids: Sequence[int],
    block_size: int,
    cache_salt: str | None = None,
    lora_int_id: int = 0,
) -> list[BlockHash]:
    """Hashes of every full block of `token_ids`."""
    return extend_block_hashes([], token_ids, block_size, cache_salt, lora_int_id)
