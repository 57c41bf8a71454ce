"""Padded shape buckets: a small, known set of compiled step shapes (host side, no JAX).

A step is padded to (T tokens, S sequences, P block-table columns). Each distinct triple is one
compiled variant of the step, so the policy trades padding against compile count:

- CPU policy (`StepShapePolicy()` defaults): T, S and P each rounded up to a power of two. Padding
  costs the CPU real FLOPs (the reference attention gathers P pages per query row), while a
  variant compiles in seconds.
- Accelerator policy (`accelerator_policy`): S follows T (S = min(T, the sequence cap)) and P is at
  least `ACCELERATOR_MIN_KV_TOKENS` tokens wide. The kernel backends read only the real KV length,
  and an unrolled Llama-3-8B step compiles in 18-32 s on an H200, so there far fewer variants
  (one per T bucket below 1,024-token contexts) beat tighter padding.
"""

from __future__ import annotations

from dataclasses import dataclass

# Accelerator policy: block tables are at least this many tokens wide.
ACCELERATOR_MIN_KV_TOKENS = 1024


def next_power_of_two(n: int, minimum: int = 1) -> int:
    n = max(n, minimum)
    return 1 << (n - 1).bit_length()


def token_bucket(num_tokens: int, max_tokens: int, minimum: int = 1) -> int:
    """Pad a step's token count to a power of two, capped at the (rounded-up) budget."""
    cap = next_power_of_two(max_tokens, minimum)
    return min(next_power_of_two(num_tokens, minimum), cap)


def seq_bucket(num_seqs: int, max_seqs: int, minimum: int = 1) -> int:
    return min(next_power_of_two(num_seqs, minimum), next_power_of_two(max_seqs, minimum))


@dataclass(frozen=True)
class StepShapePolicy:
    """How a step's real sizes map to its padded (T, S, P)."""

    max_num_batched_tokens: int
    max_num_seqs: int
    max_blocks_per_seq: int
    seqs_follow_tokens: bool = False  # S = min(T, sequence cap) instead of its own bucket
    min_table_blocks: int = 1  # P is at least this (capped at max_blocks_per_seq)

    def shape(self, num_tokens: int, num_seqs: int, num_blocks: int) -> tuple[int, int, int]:
        """(T, S, P) for a step of `num_tokens` tokens over `num_seqs` sequences whose longest
        block table has `num_blocks` entries."""
        T = token_bucket(num_tokens, self.max_num_batched_tokens)
        S = seq_bucket(num_seqs, self.max_num_seqs)
        if self.seqs_follow_tokens:
            S = max(S, min(T, next_power_of_two(self.max_num_seqs)))
        P = min(next_power_of_two(max(num_blocks, self.min_table_blocks)), self.max_blocks_per_seq)
        return T, S, max(P, num_blocks)

    def all_shapes(self) -> list[tuple[int, int, int]]:
        """Every (T, S, P) that `shape` returns for steps with at most one sequence per token
        (fork rows of n > 1 requests can add larger S), smallest first."""
        t_cap = token_bucket(self.max_num_batched_tokens, self.max_num_batched_tokens)
        s_cap = next_power_of_two(self.max_num_seqs)
        p_cap = next_power_of_two(self.max_blocks_per_seq)
        first = next_power_of_two(self.min_table_blocks)
        ps = sorted({min(p, self.max_blocks_per_seq) for p in _pow2_upto(first, max(first, p_cap))})
        shapes = []
        for T in _pow2_upto(1, t_cap):
            if self.seqs_follow_tokens:
                seqs = [min(T, s_cap)]
            else:
                seqs = list(_pow2_upto(1, min(T, s_cap)))
            shapes += [(T, S, P) for S in seqs for P in ps]
        return shapes


def accelerator_policy(
    max_num_batched_tokens: int, max_num_seqs: int, max_blocks_per_seq: int, block_size: int
) -> StepShapePolicy:
    return StepShapePolicy(
        max_num_batched_tokens,
        max_num_seqs,
        max_blocks_per_seq,
        seqs_follow_tokens=True,
        min_table_blocks=-(-ACCELERATOR_MIN_KV_TOKENS // block_size),
    )


def _pow2_upto(start: int, stop: int):
    """start, 2 * start, 4 * start, ... while <= stop (start a power of two)."""
    v = start
    while v <= stop:
        yield v
        v *= 2
