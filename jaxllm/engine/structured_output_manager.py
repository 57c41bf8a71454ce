"""The engine's side of structured outputs: grammars compiled off the engine loop, requests held
until theirs is ready, one matcher per sequence, and each step's token bitmasks.

The engine (jaxllm/engine/llm_engine.py) calls, per request and per step:
- `submit(params)` when a request arrives (a future of its compiled grammar; errors name the
  problem). `LLM.generate` and the async engine wait for it before admitting, so a malformed
  schema is a ValueError (a 400) and nothing else waits on the compilation;
- `hold(request_id, future, seqs)` for a request whose grammar is still compiling: the scheduler
  does not see it until `ready()` hands it back (vLLM's WAITING_FOR_FSM);
- `attach(child_id, grammar)`: the sequence's own matcher;
- `bitmasks(child_ids)` before a step: the allowed next tokens of every sampling row with a
  matcher, [n, ceil(V / 32)] int32, filled by llguidance's threads (the GIL released);
- `consume(child_id, token)` after the step: the matcher advances (False: the token broke the
  grammar, which the mask makes impossible unless the request changed under it).
A step whose rows have matchers must be resolved before the next is scheduled (the next mask needs
this step's token), so under async scheduling such steps run synchronously, as rows with
penalties do.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from jaxllm.structured_outputs.grammar import GrammarCompiler, bitmask_width, fill_bitmasks
from jaxllm.structured_outputs.params import StructuredOutputsParams

logger = logging.getLogger(__name__)


class StructuredOutputManager:
    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]):
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = tuple(eos_token_ids)
        self._compiler: GrammarCompiler | None = None
        self._matchers: dict[str, Any] = {}  # child request id -> llguidance matcher
        self._held: dict[str, tuple[Future, Any]] = {}  # request id -> (grammar, engine payload)

    @property
    def compiler(self) -> GrammarCompiler:
        if self._compiler is None:
            self._compiler = GrammarCompiler(self._tokenizer, self.vocab_size, self._eos)
        return self._compiler

    def submit(self, params: StructuredOutputsParams) -> Future:
        return self.compiler.submit(params)

    def wait_all(self, params: Sequence[StructuredOutputsParams]) -> None:
        """Compile every spec (in parallel); raise the first one's ValueError."""
        for future in [self.submit(p) for p in params]:
            future.result()

    # ----- requests waiting for their grammar ---------------------------------------------------
    def hold(self, request_id: str, future: Future, payload: Any) -> None:
        self._held[request_id] = (future, payload)

    def release(self, request_id: str) -> bool:
        """Forget a held request (aborted); True if it was held."""
        return self._held.pop(request_id, None) is not None

    @property
    def num_held(self) -> int:
        return len(self._held)

    def ready(self, wait_s: float = 0.0) -> list[tuple[str, Future, Any]]:
        """Held requests whose grammar finished compiling (or failed), oldest first; waits up to
        `wait_s` for one when none is."""
        if not self._held:
            return []
        if wait_s > 0 and not any(f.done() for f, _ in self._held.values()):
            concurrent.futures.wait(
                [f for f, _ in self._held.values()],
                timeout=wait_s,
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
        done = [(rid, f, p) for rid, (f, p) in self._held.items() if f.done()]
        for rid, _, _ in done:
            del self._held[rid]
        return done

    # ----- sequences ----------------------------------------------------------------------------
    def attach(self, child_id: str, grammar: Any) -> None:
        self._matchers[child_id] = grammar.new_matcher()

    def detach(self, child_id: str) -> None:
        self._matchers.pop(child_id, None)

    def has_matcher(self, child_id: str) -> bool:
        return child_id in self._matchers

    def bitmasks(self, child_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """child id -> its allowed-token bitmask row [ceil(V / 32)] int32, for the ids with a
        matcher."""
        ids = [c for c in child_ids if c in self._matchers]
        if not ids:
            return {}
        masks = np.zeros((len(ids), bitmask_width(self.vocab_size)), np.int32)
        fill_bitmasks([(self._matchers[c], i) for i, c in enumerate(ids)], masks)
        return {c: masks[i] for i, c in enumerate(ids)}

    def consume(self, child_id: str, token: int) -> bool:
        """Advance the sequence's matcher by its sampled token; False if the grammar refused it."""
        matcher = self._matchers.get(child_id)
        if matcher is None:
            return True
        if matcher.is_stopped():  # complete: only an end token follows, which ends the sequence
            return True
        if matcher.consume_token(int(token)):
            return True
        logger.warning(
            "structured output of %s broke its grammar: %s", child_id, matcher.get_error()
        )
        return False
