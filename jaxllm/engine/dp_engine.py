"""DPEngine: data-parallel replicas of LLMEngine on disjoint device groups, behind one interface.

Each replica is a whole LLMEngine (its own scheduler, KV cache and params) on one row of the
('data', 'model') mesh (`jaxllm.parallel.replica_meshes`), so it may itself be tensor parallel.
A new request goes to the replica with the fewest unfinished requests (ties: the lowest index);
`step()` steps every replica that has work, concurrently in threads (each replica's device work
runs while the others' Python runs; every replica gets its own copy of the tokenizer, since HF
fast tokenizers are not safe to share between threads), and returns all their outputs.

It offers the LLMEngine methods `LLM` uses: add_request, abort_request, step,
has_unfinished_requests, get_num_unfinished_requests, tokenize; config, model_config,
tokenizer, eos_token_ids, runner, speculative_config (replica 0's, for reporting); and spec_stats
(the replicas' speculative decoding counters, summed).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jaxllm.config import EngineConfig
from jaxllm.engine.llm_engine import LLMEngine
from jaxllm.outputs import RequestOutput
from jaxllm.spec_decode import SpecDecodeStats, SpeculativeConfig

logger = logging.getLogger(__name__)


def _private_copy(tokenizer: Any) -> tuple[Any, bool]:
    """(a copy of `tokenizer` for one thread, whether copying worked)."""
    if tokenizer is None:
        return None, True
    try:
        return copy.deepcopy(tokenizer), True
    except Exception as e:  # some tokenizers cannot be copied: then replicas step one by one
        logger.warning("cannot copy the tokenizer (%s); data-parallel replicas step in turn", e)
        return tokenizer, False


class DPEngine:
    def __init__(
        self,
        engine_config: EngineConfig,
        params: dict,
        tokenizer: Any,
        meshes: Sequence[Any],
        **engine_kwargs: Any,
    ) -> None:
        if len(meshes) < 2:
            raise ValueError(f"DPEngine needs at least 2 replica meshes, got {len(meshes)}")
        self.replicas: list[LLMEngine] = []
        concurrent = True
        for i, mesh in enumerate(meshes):
            tok, ok = (tokenizer, True) if i == 0 else _private_copy(tokenizer)
            concurrent &= ok
            # params live on replica 0's devices; each other runner copies them onto its own
            self.replicas.append(LLMEngine(engine_config, params, tok, mesh=mesh, **engine_kwargs))
        self._pool = ThreadPoolExecutor(len(meshes)) if concurrent else None
        self._owner: dict[str, int] = {}  # request id -> replica index
        self._counter = itertools.count()

    def precompile(self, *args: Any) -> int:
        """`LLMEngine.precompile` on every replica; returns the total compiled."""
        return sum(r.precompile(*args) for r in self.replicas)

    # ----- what LLM and the benchmarks read ------------------------------------------------------
    @property
    def config(self) -> EngineConfig:
        return self.replicas[0].config

    @property
    def model_config(self):
        return self.replicas[0].model_config

    @property
    def tokenizer(self) -> Any:
        return self.replicas[0].tokenizer

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.replicas[0].eos_token_ids

    @property
    def runner(self):
        return self.replicas[0].runner

    @property
    def speculative_config(self) -> SpeculativeConfig | None:
        return self.replicas[0].speculative_config

    @property
    def spec_stats(self) -> SpecDecodeStats:
        """Every replica's counters summed (a new object: reading it changes nothing)."""
        total = SpecDecodeStats()
        for r in self.replicas:
            s = r.spec_stats
            total.num_drafts += s.num_drafts
            total.num_draft_tokens += s.num_draft_tokens
            total.num_accepted_tokens += s.num_accepted_tokens
            per_pos = total.accepted_per_position
            per_pos += [0] * (len(s.accepted_per_position) - len(per_pos))
            for j, n in enumerate(s.accepted_per_position):
                per_pos[j] += n
        return total

    @property
    def data_parallel_size(self) -> int:
        return len(self.replicas)

    def tokenize(self, prompt: str) -> list[int]:
        return self.replicas[0].tokenize(prompt)

    # ----- requests ------------------------------------------------------------------------------
    def pick_replica(self) -> int:
        """The replica with the fewest unfinished requests (lowest index on ties)."""
        loads = [r.get_num_unfinished_requests() for r in self.replicas]
        return loads.index(min(loads))

    def add_request(
        self, request_id: str | None, prompt: Any, params: Any = None, **kwargs: Any
    ) -> str:
        if request_id is None:
            request_id = f"dp{next(self._counter)}"
        if request_id in self._owner:
            raise ValueError(f"request id {request_id!r} is already in use")
        i = self.pick_replica()
        self.replicas[i].add_request(request_id, prompt, params, **kwargs)
        self._owner[request_id] = i
        return request_id

    def abort_request(self, request_id: str | Sequence[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            i = self._owner.pop(rid, None)
            if i is not None:
                self.replicas[i].abort_request(rid)

    def has_unfinished_requests(self) -> bool:
        return any(r.has_unfinished_requests() for r in self.replicas)

    def get_num_unfinished_requests(self) -> int:
        return sum(r.get_num_unfinished_requests() for r in self.replicas)

    # ----- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        busy = [r for r in self.replicas if r.has_unfinished_requests()]
        if self._pool is not None and len(busy) > 1:
            results = list(self._pool.map(lambda r: r.step(), busy))
        else:
            results = [r.step() for r in busy]
        outputs = [out for res in results for out in res]
        for out in outputs:
            if out.finished:
                self._owner.pop(out.request_id, None)
        return outputs

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
