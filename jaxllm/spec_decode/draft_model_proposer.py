"""Draft-model speculation: a smaller model's greedy continuation is the draft.

The draft runs in a second `ModelRunner` over its own weights, with its own KV cache of exactly
the target's block count and block size, indexed by the same block ids: a request's block table
from the target's schedule serves both models, so the draft needs no block manager of its own.
The scheduler gives every sampling request `num_lookahead_tokens` (= k) slots past its verified
tokens, where the draft writes ahead.

After every target step (`propose`), once the step's tokens are applied:
  1. the schedule's block operations (swap-outs, swap-ins, copy-on-write) are mirrored on the
     draft's cache, in the target's order, so a block id holds the same tokens in both caches;
  2. one catch-up step runs the draft over every token the target computed in that step and still
     holds (rejected drafts are not), and, for each request that samples next, also its newest
     token; the draft's greedy token after it is draft token 1;
  3. k - 1 one-token steps each feed the previous draft token at the next position and take the
     draft's greedy choice, for the requests that still have room.

The draft thus processes every token the target computes, at the same positions and in the same
block slots (requests finished in the step included): a prefix-cache hit's blocks, a recomputed
prefill after preemption and a swapped-in request's blocks hold valid draft KV too. Draft KV that
is wrong anyway (a sliding window the draft lacks, the block an n > 1 fork shares for one step)
only lowers the acceptance rate: the target verifies every draft token, so outputs never change.

Fork rows (n > 1 samples forked onto their parent's blocks) get no drafts in their fork step: the
sample's first token would go into the partial block it still shares with its parent and its
siblings, each writing the same slot. From their next step on they draft like any request.

Tensor parallelism: the draft runs on the target's mesh (its heads split the same way; the
loader refuses a draft whose heads do not split). Multi-host engines are refused: their followers
replay only the target runner's calls.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax

from jaxllm.config import EngineConfig
from jaxllm.engine.model_runner import ModelRunner
from jaxllm.models.batch import kv_cache_bytes_per_block
from jaxllm.sampling_metadata import SamplingRow
from jaxllm.sampling_params import SamplingParams
from jaxllm.scheduler.output import ScheduledRequest, SchedulerOutput
from jaxllm.spec_decode.config import SpeculativeConfig
from jaxllm.spec_decode.draft_rows import (
    Drafting,
    carried_drafts,
    draft_row,
    grow_drafts,
    mirror_block_mover,
)

if TYPE_CHECKING:
    from jaxllm.model_loader import LoadedModel
    from jaxllm.request import Request

_GREEDY = SamplingRow(SamplingParams(temperature=0.0), seed=0)


class DraftModelProposer:
    """The `Proposer` of `SpeculativeConfig(method="draft_model")` for the target in `runner`.

    `draft_model`: the draft's LoadedModel (None: load `config.model` in `config.draft_dtype`, by
    default the target's dtype); `mesh`: the target's device mesh (None: the runner's). Raises a
    ValueError for a draft of another vocabulary size, multi-host engines, or a draft KV cache
    that does not fit in the device memory the target left.
    """

    def __init__(
        self,
        config: SpeculativeConfig,
        runner: ModelRunner,
        engine_config: EngineConfig,
        draft_model: LoadedModel | None = None,
        mesh: Any = None,
    ) -> None:
        if config.method != "draft_model":
            raise ValueError(f"DraftModelProposer runs method 'draft_model', not {config.method!r}")
        if jax.process_count() > 1:
            raise ValueError(
                "speculative method 'draft_model' runs on one host: multi-host followers replay "
                "only the target model's steps; use method 'ngram'"
            )
        self.k = config.num_speculative_tokens
        self.num_lookahead_tokens = self.k  # slots the draft writes past the verified tokens
        self.block_size = runner.block_size
        mesh = runner.mesh if mesh is None else mesh
        if draft_model is None:
            from jaxllm.model_loader import load_model

            assert config.model is not None  # SpeculativeConfig checks it for draft_model
            dtype = config.draft_dtype or runner.model_config.dtype
            draft_model = load_model(config.model, dtype=dtype, mesh=mesh)
        target_vocab = runner.model_config.vocab_size
        draft_vocab = draft_model.config.vocab_size
        if draft_vocab != target_vocab:
            raise ValueError(
                f"the draft model {config.model!r} has a vocabulary of {draft_vocab} tokens, the "
                f"target's has {target_vocab}: a draft model must share the target's vocabulary"
            )
        sched = engine_config.scheduler
        model_config = draft_model.config.for_max_model_len(sched.max_model_len)
        kv_dtype = engine_config.cache.cache_dtype(model_config.dtype)
        tp = engine_config.parallel.tensor_parallel_size
        self._check_device_memory(model_config, runner, kv_dtype, tp)
        draft_config = dataclasses.replace(
            engine_config,
            model=model_config,
            # the target's block ids index this cache too; swap space is sized below
            cache=dataclasses.replace(
                engine_config.cache, num_gpu_blocks=runner.num_blocks, swap_space=0.0
            ),
            # the catch-up step holds a step's computed tokens plus one per sampling request
            scheduler=dataclasses.replace(
                sched,
                max_num_batched_tokens=sched.max_num_batched_tokens + sched.max_num_seqs,
                async_scheduling=False,
            ),
        )
        self.runner = ModelRunner(
            model_config, draft_model.params, draft_config, runner.backend, mesh=mesh
        )
        assert self.runner.num_blocks == runner.num_blocks
        # swap preemption: room for every host block id the target uses
        self.runner.block_mover = mirror_block_mover(self.runner.kv_cache, runner.block_mover)
        # the last drafts of each request asked for: a request the step did not schedule
        # still holds the same tokens, so its drafts stand
        self._last_drafts: dict[str, list[int]] = {}

    @staticmethod
    def _check_device_memory(model_config, runner: ModelRunner, kv_dtype: str, tp: int) -> None:
        """On devices that report their memory, refuse a draft KV cache that cannot fit beside
        the target's (which was sized first, from the free memory)."""
        device = next(d for d in runner.mesh.devices.flat if d.process_index == jax.process_index())
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if not stats or "bytes_limit" not in stats:
            return
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        if tp > 1:  # the tp-way config: KV heads repeated where fewer than devices
            from jaxllm.parallel import tp_model_config

            model_config = tp_model_config(model_config, tp)
        per_block = kv_cache_bytes_per_block(model_config, runner.block_size, kv_dtype) // tp
        need = runner.num_blocks * per_block
        if need > free:
            raise ValueError(
                f"the draft model's KV cache ({runner.num_blocks} blocks, {need / 2**30:.2f} GiB "
                f"a device) does not fit in the {free / 2**30:.2f} GiB the target left; lower "
                "gpu_memory_utilization or set num_gpu_blocks_override"
            )

    def apply_block_ops(self, sched: SchedulerOutput) -> None:
        """Mirror the schedule's swap-outs, swap-ins and copy-on-write copies (in that order)."""
        if sched.has_block_ops:
            self.runner.kv_cache = self.runner.block_mover.apply(self.runner.kv_cache, sched)

    def propose(
        self, sched: SchedulerOutput, requests: list[tuple[Request, int]]
    ) -> dict[str, list[int]]:
        """Block operations, the catch-up step, then k - 1 one-token draft steps (module doc)."""
        self.apply_block_ops(sched)
        room_of = {r.request_id: room for r, room in requests}
        rows: list[ScheduledRequest] = []
        drafting: dict[str, Drafting] = {}
        for sr in sched.scheduled:
            if sr.num_new_tokens == 0:
                continue
            request = sr.request
            num_slots = len(sr.block_ids) * self.block_size
            start = sr.num_computed_tokens
            room = room_of.get(request.request_id, 0)
            # what the target computed and kept; a request sampling next adds its newest token
            samples = room > 0 and request.num_tokens <= num_slots
            end = request.num_tokens if samples else request.num_computed_tokens
            end = min(end, request.num_tokens, num_slots)
            if end <= start:
                continue
            rows.append(
                draft_row(request, start, request.all_token_ids[start:end], sr.block_ids, samples)
            )
            if samples:
                drafting[request.request_id] = Drafting(request, room, sr.block_ids, num_slots)
        out = carried_drafts(sched, requests, self._last_drafts)
        if rows:
            sampled = self._run(rows)
            for rid, d in drafting.items():
                d.drafts.append(sampled[rid])
        # the draft's last token goes in at the position after the request's tokens and
        # earlier drafts
        grow_drafts(drafting, self.k, 0, self._run_rows)
        for rid, d in drafting.items():
            out[rid] = d.drafts[: d.room]
        self._last_drafts = out
        return out

    def _run_rows(self, step: list[Drafting], rows: list[ScheduledRequest]) -> list[int]:
        """One draft step over one-token `rows` (`step[i]`'s): each row's greedy token."""
        sampled = self._run(rows)
        return [sampled[d.request.request_id] for d in step]

    def _run(self, rows: list[ScheduledRequest]) -> dict[str, int]:
        """One draft step over `rows`: request id -> greedy token of each sampling row."""
        step = SchedulerOutput(
            scheduled=rows, num_batched_tokens=sum(r.num_new_tokens for r in rows)
        )
        return self.runner.execute(step, [_GREEDY] * len(rows), {}).sampled
