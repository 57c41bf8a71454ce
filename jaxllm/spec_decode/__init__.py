"""Speculative decoding: draft-token proposers and the host side of exact verification.

A proposer guesses up to k next tokens of a request (`ngram`: prompt lookup; `draft_model`: a
smaller model's greedy continuation; `eagle`: an EAGLE-1 head over the target's own hidden
states). The scheduler budgets them, the target model computes the
logits at every draft position in one ragged step, the sampler draws one token at each position
exactly as it would without speculation, and `acceptance.accept_drafts` keeps the drafts up to the
first mismatch plus the target's own token there. See docs/speculative-decoding.md.
"""

from jaxllm.spec_decode.acceptance import SpecDecodeStats, accept_drafts
from jaxllm.spec_decode.config import SpeculativeConfig
from jaxllm.spec_decode.ngram_proposer import NgramProposer

__all__ = ["NgramProposer", "SpecDecodeStats", "SpeculativeConfig", "accept_drafts"]
