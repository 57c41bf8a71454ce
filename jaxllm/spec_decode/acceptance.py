"""Verification of draft tokens against the target's own samples (host side, no JAX).

The target step samples one token at every draft position, each exactly as a step without
speculation would sample it there (same processing, and the same random key: the request's seed
folded with the output index). The drafts are kept up to the first position where the target's
token differs, and the target's token there is emitted in its place; when every draft matches, the
token after the last draft comes free. For a deterministic proposer (a draft is one token, not a
distribution: n-gram lookup, a draft model's greedy choice) this is rejection sampling: a draft x
is accepted with probability p(x), and on rejection the emitted token is distributed as p with x
removed and renormalised, so the output distribution is the target's (and greedy output is the
target's greedy output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def accept_drafts(drafts: Sequence[int], target_tokens: Sequence[int]) -> list[int]:
    """`target_tokens[j]` is the target's token at draft position j (len(drafts) + 1 of them: the
    last follows the last draft). Returns the tokens to emit: the accepted drafts, then the target's
    token at the first mismatch (or the bonus token after all drafts)."""
    if len(target_tokens) != len(drafts) + 1:
        raise ValueError(
            f"{len(drafts)} drafts need {len(drafts) + 1} target tokens, got {len(target_tokens)}"
        )
    out: list[int] = []
    for draft, token in zip(drafts, target_tokens):
        out.append(int(token))
        if int(token) != int(draft):
            return out
    out.append(int(target_tokens[-1]))
    return out


@dataclass
class SpecDecodeStats:
    """Counters over verified drafts (vLLM's `vllm:spec_decode_*` metrics)."""

    num_drafts: int = 0  # requests that verified at least one draft token, summed over steps
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    # accepted drafts by position: [0] counts first drafts accepted, [1] second ones, ...
    accepted_per_position: list[int] = field(default_factory=list)

    def observe(self, num_drafts: int, num_accepted: int) -> None:
        """One request's verification: `num_accepted` of its `num_drafts` drafts were kept."""
        if num_drafts <= 0:
            return
        self.num_drafts += 1
        self.num_draft_tokens += num_drafts
        self.num_accepted_tokens += num_accepted
        if len(self.accepted_per_position) < num_drafts:
            self.accepted_per_position += [0] * (num_drafts - len(self.accepted_per_position))
        for j in range(num_accepted):
            self.accepted_per_position[j] += 1

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0
