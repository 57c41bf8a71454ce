"""Tuned block sizes for the Triton-lowered ragged paged-attention kernels.

One small table keyed by `(head_dim, block_size, dtype name, q heads per KV head)`; `lookup()` falls
back to `default_config()` (a rule of thumb) for keys the table lacks. `choose_num_kv_splits()`
picks the flash-decoding split count from the static batch shape; `one_block_split_plan()` is the
alternative split layout for small grids (JAX's op's: one compute block per split) and
`choose_decode_combine()` picks how the splits are merged (Pallas kernel or XLA-fused jnp). The
fields that switch the last two on (`one_block_max_programs`, `xla_combine_max_programs`) are 0
(off) everywhere: on an H200 (bench/gpu_runs/2026-11-28_h200x2_kernels.md) no such variant beat the
default kernel at batch 1 or 16. `fused_split_plan()` is the small-grid plan whose splits merge
inside the kernel (`fused_max_waves`, on for the Llama-3-8B key: measured on an H200 in
bench/gpu_runs/2026-11-28_h200_session7_fused.md).

STATUS: the decode knobs of `(128, 16, "bfloat16", 4)` (Llama-3-8B attention), its single-pass
knobs (batch 1 x 512 only) and the split rule
(`choose_num_kv_splits` with the `KernelConfig` defaults) were measured on an H100 80GB HBM3
(`python -m jaxllm.benchmarks.kernels --tune`, in-jit-loop time, runs in
`bench/gpu_runs/2026-11-28_h100_*`): pages per compute block 4, 4 warps, 2 stages was best or
within ~3% of best at batch 16-256 x context 512-8192 (exceptions: batch 256 x 2048 liked
(8 pages, 8 warps) by 2%, batch 1 x 512 liked (8 pages, 1 stage) by ~2-3 us). Everything else in
the table (all general-path knobs, other keys) is still the rule of thumb, entered by hand before
any measurement.

This file imports nothing from JAX: values only.
"""

from __future__ import annotations

import dataclasses

MEASURED_ON = (
    "H100 80GB HBM3, jax 0.11.2, 2026-11-28: decode knobs of (128, 16, bfloat16, 4) and the split "
    "rule; H200, jax 0.11.2, 2026-11-28: its fused small-grid plan (fused_max_waves) and its "
    "unmasked prefix; all other values are rule-of-thumb"
)

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
    split_programs_per_sm: the decode grid (sequences x KV heads x splits) stays within this many
        programs per SM.
    combine_num_warps: Triton warps of the kernel that merges the splits.
    single_pass_max_kv_blocks: no KV split (one kernel, no combine) when the longest context needs
        at most this many decode compute blocks.
    single_pass_small_grid_programs, single_pass_pages_per_compute_block, single_pass_num_stages:
        with one split and a grid of at most that many programs (sequences x KV heads; the kernel
        is latency-bound), use these decode knobs instead (0: keep the decode knobs).
    xla_combine_max_programs: with several splits and at most this many (sequence, KV head) pairs,
        merge the splits with jnp ops that XLA fuses into the same jit (`decode_combine="xla"`)
        instead of the Pallas combine kernel, whose grid is only sequences x KV heads programs
        (0: never; see `choose_decode_combine`).
    one_block_max_programs: at most this many (sequence, KV head) pairs and neither the split count
        nor the pages per block given by the caller: take both from `one_block_split_plan` (JAX's
        `paged_attention` layout: up to `one_block_max_splits` splits, each ideally one compute
        block of at most `one_block_max_pages` pages) instead of the split rule (0: never).
    one_block_num_stages: decode pipelining depth under that plan (0: keep the decode knob).
    unmasked_prefix: general kernel: visit the KV blocks that lie wholly before a tile's first
        row without masks, then the diagonal and the tail with them (no sliding window only).
    fused_max_waves: the fused small-grid plan (`fused_split_plan`: one compute block of at least
        the decode pages per split, merged inside the kernel by the last split to finish) applies
        when its grid (sequences x KV heads x splits) is at most this many waves of the card's SMs
        (0: never).
    """

    decode_pages_per_compute_block: int
    decode_num_warps: int
    decode_num_stages: int
    pages_per_compute_block: int
    block_q_rows: int
    num_warps: int
    num_stages: int
    max_kv_splits: int = 32
    min_kv_blocks_per_split: int = 4
    split_programs_per_sm: float = 4.0
    combine_num_warps: int = 4
    single_pass_max_kv_blocks: int = 8
    single_pass_small_grid_programs: int = 16
    single_pass_pages_per_compute_block: int = 0
    single_pass_num_stages: int = 0
    xla_combine_max_programs: int = 0
    one_block_max_programs: int = 0
    one_block_max_splits: int = 16
    one_block_max_pages: int = 8
    one_block_num_stages: int = 0
    fused_max_waves: float = 0.0
    unmasked_prefix: bool = False


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
TUNED: dict[tuple[int, int, str, int], KernelConfig] = {
    # Llama-3-8B / 70B (Hq/Hkv = 4 / 8), Mistral-7B (4), bf16, block 16 and 32.
    # Measured (decode part, H100): (4 pages, 4 warps, 2 stages); splits from the rule, whose
    # defaults (4 programs per SM, >= 4 compute blocks per split, <= 32) pick the best split count
    # or one within ~5% of it at batch >= 16 (e.g. batch 16 x 2048: 4 splits 56 us, 2: 58, 8: 59,
    # 1: 76). At batch 1 the loop timings move by +-3 us between runs, too much to rank the split
    # counts; 1 split beat the rule's 2 at batch 1 x 512 in both runs, by 1-2 us.
    # Single pass (no split, no combine kernel) up to 8 compute blocks (context 512 at 4 pages of
    # 16): 1 split was the fastest split count at batch 1, 16, 64 x context 512 in both H100 runs
    # (batch 1 x 512: 17.6 vs 19.6 us for the rule's 2 splits, run 2); at context 2048 splits win
    # at batch 1 and 16 (1 x 2048: 8 splits 17.9 us, 1 split 43.8-46.7 us). With one split and at
    # most 16 programs, (8 pages, 1 stage): the best knobs at batch 1 x 512 in both runs (14.4 and
    # 14.5 us vs 17.6 and 15.0 for (4 pages, 2 stages)); measured at that point only.
    # Fused small-grid plan (one block of >= 4 pages per split, merged inside the kernel) up to 2
    # waves of programs: H200, 2026-11-28 (bench/gpu_runs/2026-11-28_h200_session7_fused.md), every
    # loop body a CUDA graph, us per call default -> fused: 1 x 512 15.9 -> 8.5 (8 splits of 4
    # pages), 1 x 2048 12.6 -> 10.5 (16 of 8), 4 x 512 16.4 -> 11.5, 2 x 2048 13.8 vs 13.9 (tie);
    # fused lost where the grid is larger (4 x 2048: 21.7 vs 15.6; 16 x 2048: 61.4 vs 44.9) or
    # the table needs several blocks per split (1 x 8192: 20.0 vs 17.2): the rule leaves them out.
    # General path: the unmasked prefix (blocks before a tile's first row without masks), H200,
    # bf16 causal prefill, same record, 10 calls each: 1 x 2048 407.9 -> 371.9 us, 4 x 1024
    # 440.8 -> 347.5 (JAX's own Triton flash attention: 230.6 and 206.6). Its other general knobs
    # (16 tokens x 4 heads, 4 pages, 4 warps, 2 stages) stay: of 8 variants only 32 tokens per
    # tile was close (342.0 and 358.0 us).
    (128, 16, "bfloat16", 4): KernelConfig(
        4,
        4,
        2,
        4,
        64,
        4,
        2,
        single_pass_pages_per_compute_block=8,
        single_pass_num_stages=1,
        fused_max_waves=2.0,
        unmasked_prefix=True,
    ),
    # Not measured (rule of thumb) from here on.
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


def _floor_pow2(x: int) -> int:
    return 1 << (max(1, int(x)).bit_length() - 1)


def choose_num_kv_splits(
    num_seqs: int,
    num_kv_heads: int,
    max_kv_len: int,
    block_k: int,
    cfg: KernelConfig,
    num_sms: int = DEFAULT_NUM_SMS,
) -> int:
    """Flash-decoding split count (a power of two) from static shapes only.

    1 (a single kernel writes the output: no partials, no combine kernel) when `max_kv_len` needs
    at most `cfg.single_pass_max_kv_blocks` compute blocks of `block_k` tokens. Otherwise the
    largest power of two that keeps the decode grid within `cfg.split_programs_per_sm * num_sms`
    programs, no larger than leaves each split `cfg.min_kv_blocks_per_split` compute blocks of
    `max_kv_len`, and at most `cfg.max_kv_splits`; at least 1.
    """
    if -(-max_kv_len // block_k) <= cfg.single_pass_max_kv_blocks:
        return 1
    programs = max(1, num_seqs * num_kv_heads)
    want = _floor_pow2(int(cfg.split_programs_per_sm * num_sms) // programs)
    cap = _floor_pow2(max_kv_len // (block_k * cfg.min_kv_blocks_per_split))
    return int(max(1, min(want, cap, cfg.max_kv_splits)))


def one_block_split_plan(
    max_kv_len: int, block_size: int, min_pages: int, max_splits: int = 16, max_pages: int = 8
) -> tuple[int, int]:
    """(num_kv_splits, pages per compute block) that give each split one compute block where the
    limits allow (the layout of JAX's `paged_attention` op: many splits, one loop step each).

    Pages per block: the smallest power of two >= `pages / max_splits`, clipped to
    [`min_pages`, `max_pages`]; splits: the smallest power of two that covers the pages with such
    blocks, at most `max_splits` (beyond that a split takes several blocks). E.g. block 16,
    `max_splits` 16, `max_pages` 8: context 512 -> (16, 2), 2048 -> (16, 8), 8192 -> (16, 8).
    """
    pages = max(1, -(-int(max_kv_len) // int(block_size)))
    ppcb = max(int(min_pages), min(int(max_pages), _next_pow2(-(-pages // max(1, max_splits)))))
    return int(max(1, min(max_splits, _next_pow2(-(-pages // ppcb))))), int(ppcb)


def fused_split_plan(
    num_seqs: int,
    num_kv_heads: int,
    max_kv_len: int,
    block_size: int,
    min_pages: int,
    cfg: KernelConfig,
    num_sms: int = DEFAULT_NUM_SMS,
) -> tuple[int, int] | None:
    """(num_kv_splits, pages per compute block) of the fused small-grid plan, or None where it does
    not apply. The plan is `one_block_split_plan` with at least `min_pages` pages per block; it
    applies when `cfg.fused_max_waves` is set, it has more than one split, every split gets one
    compute block (the table fits in `one_block_max_splits` blocks of at most `one_block_max_pages`
    pages), and its grid `num_seqs * num_kv_heads * splits` is at most `cfg.fused_max_waves *
    num_sms` programs. The caller merges its splits inside the kernel (`decode_combine="fused"`):
    one launch whose programs each read one block, where the default plan would loop serially in
    few programs or launch a second kernel.
    """
    if cfg.fused_max_waves <= 0:
        return None
    ns, ppcb = one_block_split_plan(
        max_kv_len, block_size, min_pages, cfg.one_block_max_splits, cfg.one_block_max_pages
    )
    one_block_each = ns * ppcb * block_size >= max_kv_len
    programs = num_seqs * num_kv_heads * ns
    if ns > 1 and one_block_each and programs <= cfg.fused_max_waves * num_sms:
        return ns, ppcb
    return None


def choose_decode_combine(
    num_seqs: int, num_kv_heads: int, num_kv_splits: int, cfg: KernelConfig
) -> str:
    """How the decode splits are merged: "xla" (jnp ops fused by XLA into the caller's jit) when
    there are several splits and at most `cfg.xla_combine_max_programs` (sequence, KV head)
    pairs, else "kernel" (the Pallas combine kernel; with one split there is nothing to merge)."""
    small = num_seqs * num_kv_heads <= cfg.xla_combine_max_programs
    return "xla" if num_kv_splits > 1 and small else "kernel"
