"""Prompt-lookup (n-gram) drafts: host side, numpy only.

For n from `max_n` down to `min_n`, the request's last n tokens are looked for earlier in its own
tokens (prompt and output); at the latest earlier match, the up to k tokens that followed it are
the draft. Nothing found: no draft (the request decodes one token as usual).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class NgramProposer:
    def __init__(self, min_n: int, max_n: int, num_speculative_tokens: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.min_n = min_n
        self.max_n = max_n
        self.k = num_speculative_tokens

    def propose(self, token_ids: Sequence[int], max_tokens: int | None = None) -> list[int]:
        """Up to min(k, max_tokens) draft tokens to follow `token_ids`."""
        k = self.k if max_tokens is None else min(self.k, max_tokens)
        n_tok = len(token_ids)
        if k <= 0 or n_tok < self.min_n + 1:
            return []
        tokens = np.asarray(token_ids, dtype=np.int64)  # [N]
        for n in range(min(self.max_n, n_tok - 1), self.min_n - 1, -1):
            suffix = tokens[n_tok - n :]  # [n]
            # candidate starts i < N - n whose n tokens equal the suffix (the suffix itself is
            # excluded: it has nothing after it)
            windows = np.lib.stride_tricks.sliding_window_view(tokens[: n_tok - 1], n)  # [N-n, n]
            hits = np.flatnonzero((windows == suffix).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n  # the latest match: what followed it
                return [int(t) for t in tokens[start : start + k]]
        return []
