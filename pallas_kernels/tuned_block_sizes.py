"""Tuned block sizes for the Triton-lowered ragged paged-attention kernels.

One small table keyed by `(head_dim, block_size, dtype name, q heads per KV head)`; `lookup()` falls
back to `default_config()` (a rule of thumb) for keys the table lacks. `choose_num_kv_splits()` picks
the flash-decoding split count from the static batch shape.

STATUS: the entries below are the rule-of-thumb values, entered by hand before any measurement; they
get replaced by H100 measurements (`bench/kernels.py --tune` prints the best setting per shape). Keep
`MEASURED_ON` in step with what the numbers came from.

This file imports nothing from JAX: values only.
"""

from __future__ import annotations

import dataclasses

MEASURED_ON = "nothing yet (rule-of-thumb defaults; H100 measurement pending)"

# H100 SXM has 132 SMs; used only to size the flash-decoding split count.
DEFAULT_NUM_SMS = 132


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static tuning knobs of both kernels (all powers of two).

    decode_pages_per_compute_block: KV pages one decode program reads per loop step.
    decode_num_warps / decode_num_stages: Triton launch / software-pipelining depth (decode).
    pages_per_compute_block: KV pages per loop step of the general (prefill + decode) kernel.
    block_q_rows: query rows per general-kernel program, counted as tokens x padded q heads of one
        KV head (so block_q = block_q_rows // next_pow2(G) tokens, at least 1).
    num_warps / num_stages: Triton launch / pipelining depth of the general kernel.
    max_kv_splits: upper bound on flash-decoding splits.
    min_kv_blocks_per_split: a split gets at least this many compute blocks of KV.
    """

    decode_pages_per_compute_block: int
    decode_num_warps: int
    decode_num_stages: int
    pages_per_compute_block: int
    block_q_rows: int
    num_warps: int
    num_stages: int
    max_kv_splits: int = 32
    min_kv_blocks_per_split: int = 2


def _tokens_per_step(head_dim: int, itemsize: int) -> int:
    """KV tokens one loop step reads: ~16 KiB of K (and as much V) per step."""
    return max(16, min(128, (16 * 1024) // (head_dim * itemsize)))


def default_config(head_dim: int, block_size: int, dtype_name: str, q_per_kv: int) -> KernelConfig:
    """Rule of thumb: ~16 KiB K tile per loop step, 64 query rows per general program."""
    itemsize = 4 if dtype_name == "float32" else 2
    tokens = _tokens_per_step(head_dim, itemsize)
    pages = max(1, tokens // block_size)
    return KernelConfig(
        decode_pages_per_compute_block=pages,
        decode_num_warps=4,
        decode_num_stages=2,
        pages_per_compute_block=pages,
        block_q_rows=64 if head_dim <= 128 else 32,
        num_warps=4,
        num_stages=2,
    )


# (head_dim, block_size, dtype name, q heads per KV head) -> KernelConfig.
# Pre-measurement values (same as default_config); to be overwritten from H100 runs.
TUNED: dict[tuple[int, int, str, int], KernelConfig] = {
    # Llama-3-8B / 70B (Hq/Hkv = 4 / 8), Mistral-7B (4), bf16, block 16 and 32.
    (128, 16, "bfloat16", 4): KernelConfig(4, 4, 2, 4, 64, 4, 2),
    (128, 32, "bfloat16", 4): KernelConfig(2, 4, 2, 2, 64, 4, 2),
    (128, 16, "bfloat16", 8): KernelConfig(4, 4, 2, 4, 64, 4, 2),
    (128, 32, "bfloat16", 8): KernelConfig(2, 4, 2, 2, 64, 4, 2),
    # SmolLM2-135M (head_dim 64, 9 q heads / 3 KV heads).
    (64, 16, "bfloat16", 3): KernelConfig(8, 4, 2, 8, 64, 4, 2),
    (64, 16, "float32", 3): KernelConfig(4, 4, 2, 4, 64, 4, 2),
    # Gemma 3 270M (head_dim 256, 4 q heads / 1 KV head).
    (256, 16, "bfloat16", 4): KernelConfig(2, 4, 2, 2, 32, 4, 2),
}


def lookup(head_dim: int, block_size: int, dtype_name: str, q_per_kv: int) -> KernelConfig:
    """The tuned config for this shape, or the rule-of-thumb default."""
    key = (int(head_dim), int(block_size), str(dtype_name), int(q_per_kv))
    cfg = TUNED.get(key)
    return cfg if cfg is not None else default_config(*key)


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def choose_num_kv_splits(
    num_seqs: int,
    num_kv_heads: int,
    max_kv_len: int,
    block_k: int,
    cfg: KernelConfig,
    num_sms: int = DEFAULT_NUM_SMS,
) -> int:
    """Flash-decoding split count (a power of two) from static shapes only.

    Enough programs to fill the card twice over (`2 * num_sms`), but never splits so short that a
    split has fewer than `cfg.min_kv_blocks_per_split` compute blocks of `max_kv_len`.
    """
    programs = max(1, num_seqs * num_kv_heads)
    want = _next_pow2(-(-2 * num_sms // programs))
    by_len = max(1, max_kv_len // (block_k * cfg.min_kv_blocks_per_split))
    cap = 1 << (by_len.bit_length() - 1)  # largest power of two <= by_len
    return int(max(1, min(want, cap, cfg.max_kv_splits)))
