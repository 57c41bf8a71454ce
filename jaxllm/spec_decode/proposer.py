"""The proposer interface the engine drives, and the factory for `SpeculativeConfig.method`.

After every step the engine asks the proposer for the draft tokens of the running requests that
will sample next (`propose`); the step's `SchedulerOutput` tells a model-based proposer which
tokens the target computed (to keep its own KV cache in step). Drafts only ever change how many
tokens a step emits, never which: the target verifies every one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from jaxllm.spec_decode.config import SpeculativeConfig
from jaxllm.spec_decode.ngram_proposer import NgramProposer

if TYPE_CHECKING:
    from jaxllm.request import Request
    from jaxllm.scheduler.output import SchedulerOutput


class Proposer(Protocol):
    # KV slots past a sampling request's scheduled tokens the proposer writes (Scheduler)
    num_lookahead_tokens: int

    def propose(
        self, sched: SchedulerOutput, requests: list[tuple[Request, int]]
    ) -> dict[str, list[int]]:
        """Drafts for `requests` (each with the most draft tokens it may take), after the step
        `sched` was verified and its tokens appended; request id -> draft tokens."""
        ...

    def apply_block_ops(self, sched: SchedulerOutput) -> None:
        """A schedule that ran no step but moved KV blocks (swap-outs): mirror them."""
        ...


class NgramSpeculator:
    """Prompt lookup over each request's own tokens (no device work)."""

    num_lookahead_tokens = 0

    def __init__(self, config: SpeculativeConfig) -> None:
        lo, hi = config.ngram_window
        self.lookup = NgramProposer(lo, hi, config.num_speculative_tokens)

    def propose(
        self, sched: SchedulerOutput, requests: list[tuple[Request, int]]
    ) -> dict[str, list[int]]:
        out = {}
        for request, room in requests:
            drafts = self.lookup.propose(request.all_token_ids, room)
            if drafts:
                out[request.request_id] = drafts
        return out

    def apply_block_ops(self, sched: SchedulerOutput) -> None:
        pass


def make_proposer(
    config: SpeculativeConfig, runner: Any, engine_config: Any, draft_model: Any, mesh: Any
) -> Proposer:
    """The proposer of `config.method` for the engine whose target runs in `runner`
    (`draft_model`: an already loaded draft LoadedModel, or None to load `config.model`; the
    "eagle" head is always read from `config.model`)."""
    if config.method == "ngram":
        return NgramSpeculator(config)
    if config.method == "eagle":  # its head comes from config.model; draft_model is unused
        from jaxllm.spec_decode.eagle_proposer import EagleProposer

        return EagleProposer(config, runner, engine_config)
    from jaxllm.spec_decode.draft_model_proposer import DraftModelProposer

    return DraftModelProposer(config, runner, engine_config, draft_model, mesh)
