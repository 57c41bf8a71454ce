"""Padded shape buckets: a small, known set of compiled step shapes (host side, no JAX)."""

from __future__ import annotations


def next_power_of_two(n: int, minimum: int = 1) -> int:
    n = max(n, minimum)
    return 1 << (n - 1).bit_length()


def token_bucket(num_tokens: int, max_tokens: int, minimum: int = 1) -> int:
    """Pad a step's token count to a power of two, capped at the (rounded-up) budget."""
    cap = next_power_of_two(max_tokens, minimum)
    return min(next_power_of_two(num_tokens, minimum), cap)


def seq_bucket(num_seqs: int, max_seqs: int, minimum: int = 1) -> int:
    return min(next_power_of_two(num_seqs, minimum), next_power_of_two(max_seqs, minimum))
