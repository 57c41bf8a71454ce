"""EAGLE speculation: a one-layer head over the target's own features drafts the next tokens.

The head (eagle_head.py, loaded by eagle_checkpoint.py) has its own one-layer paged KV cache of
the target's block count and block size, indexed by the target's block ids, like a draft model's
(draft_model_proposer.py); it shares the target's embedding and LM head. The target runner, built
with `return_hidden_states`, keeps each step's final hidden states on the device
(`ModelRunner.last_hidden_states` [T, D], row r the step's r-th token in its flat batch order).

Pairing invariant: the head's position p pairs the target's feature f_p with the token t_{p+1}
and writes the head's KV at position p. After a target step computed positions [start, end) of a
request and kept them (end: its computed count after rollback), every t_{p+1} for p < end is known
(t_end is the next prompt token, or the token the step just emitted), so the step's own hidden
states are all the features the catch-up needs: no feature is kept across steps, nothing is
indexed by a slot of its own. The catch-up runs in the same step for every request, and for one
that samples next its last position (p = end - 1, token t_end, the newest) gives draft 1. Drafts
2..k each feed the previous draft token at the next position with the head's own output f' of
the step before as the feature (the KV it writes there is overwritten by the next catch-up once
the target has computed that position).

After every target step (`propose`), once the step's tokens are applied:
  1. the schedule's block operations are mirrored on the head's cache (as the draft model does);
  2. one catch-up step runs the head over every position the target computed and kept in that
     step (requests finished in the step included), the features gathered on the device from the
     step's hidden states;
  3. k - 1 one-token steps, for the requests that still have room.

As with a draft model, head KV that is wrong (a prefix-cache hit's last cached position was
written with the token that followed it in the earlier request; an n > 1 fork's shared block)
only lowers the acceptance rate: the target verifies every draft.

Refused: multi-host engines, tensor parallelism, targets whose embedding is quantized (GGUF).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import EngineConfig
from jaxllm.engine.batch_builder import build_host_batch
from jaxllm.engine.model_runner import ModelRunner
from jaxllm.models.batch import StepBatch, make_kv_cache
from jaxllm.quantization.formats import EMBEDDING, format_in
from jaxllm.scheduler.output import ScheduledRequest, SchedulerOutput
from jaxllm.spec_decode.config import SpeculativeConfig
from jaxllm.spec_decode.draft_rows import (
    Drafting,
    carried_drafts,
    draft_row,
    grow_drafts,
    mirror_block_mover,
)
from jaxllm.spec_decode.eagle_checkpoint import head_has_fc_bias, load_eagle_head
from jaxllm.spec_decode.eagle_head import EagleHead, eagle_step

if TYPE_CHECKING:
    from jaxllm.request import Request


class EagleProposer:
    """The `Proposer` of `SpeculativeConfig(method="eagle")` for the target in `runner` (which
    must return its hidden states: `ModelRunner(..., return_hidden_states=True)`)."""

    def __init__(
        self, config: SpeculativeConfig, runner: ModelRunner, engine_config: EngineConfig
    ) -> None:
        if config.method != "eagle":
            raise ValueError(f"EagleProposer runs method 'eagle', not {config.method!r}")
        if jax.process_count() > 1 or engine_config.parallel.tensor_parallel_size != 1:
            raise ValueError(
                "speculative method 'eagle' runs on one device without tensor parallelism"
            )
        if not getattr(runner.model, "return_hidden_states", False):
            raise ValueError("method 'eagle' needs a target runner built to return hidden states")
        assert config.model is not None  # SpeculativeConfig checks it
        self.k = config.num_speculative_tokens
        self.num_lookahead_tokens = self.k  # slots the head writes past the verified tokens
        self.runner = runner
        self.block_size = runner.block_size
        target = runner.params
        if format_in(target.get("embed_tokens"), EMBEDDING) is not None:
            raise ValueError("method 'eagle' needs a target with an unquantized embedding")
        dtype = config.draft_dtype or runner.model_config.dtype
        head_config, head_params = load_eagle_head(config.model, runner.model_config, dtype)
        head_config = head_config.for_max_model_len(engine_config.scheduler.max_model_len)
        self.head = EagleHead(head_config, runner.backend, head_has_fc_bias(head_params))
        self.params = {
            "head": head_params,
            "embed": target["embed_tokens"]["embedding"],  # [V, D], the target's own array
            "lm_head": target.get("lm_head"),  # None: tied to the embedding
        }
        self.kv_cache = make_kv_cache(head_config, runner.num_blocks, self.block_size, dtype)
        self.block_mover = mirror_block_mover(self.kv_cache, runner.block_mover)
        self._step = jax.jit(functools.partial(eagle_step, self.head), donate_argnums=(1,))
        # the last drafts of each request asked for: a request the step did not schedule
        # still holds the same tokens, so its drafts stand
        self._last_drafts: dict[str, list[int]] = {}

    def apply_block_ops(self, sched: SchedulerOutput) -> None:
        """Mirror the schedule's swap-outs, swap-ins and copy-on-write copies (in that order)."""
        if sched.has_block_ops:
            self.kv_cache = self.block_mover.apply(self.kv_cache, sched)

    def propose(
        self, sched: SchedulerOutput, requests: list[tuple[Request, int]]
    ) -> dict[str, list[int]]:
        """Block operations, the catch-up step, then k - 1 one-token head steps (module doc)."""
        self.apply_block_ops(sched)
        room_of = {r.request_id: room for r, room in requests}
        rows: list[ScheduledRequest] = []
        feature_rows: list[np.ndarray] = []  # per row: its positions' rows of the target step
        drafting: dict[str, Drafting] = {}
        begin = 0  # the row's first token in the target step's flat batch
        for sr in sched.scheduled:
            first, begin = begin, begin + sr.num_new_tokens
            request = sr.request
            start = sr.num_computed_tokens
            # the positions the target computed and kept, whose next tokens are known
            end = min(
                request.num_computed_tokens, start + sr.num_new_tokens, request.num_tokens - 1
            )
            if sr.num_new_tokens == 0 or end <= start:
                continue
            room = room_of.get(request.request_id, 0)
            samples = room > 0 and end == request.num_tokens - 1
            next_tokens = request.all_token_ids[start + 1 : end + 1]
            rows.append(draft_row(request, start, next_tokens, sr.block_ids, samples))
            feature_rows.append(np.arange(first, first + end - start, dtype=np.int32))
            if samples:
                num_slots = len(sr.block_ids) * self.block_size
                drafting[request.request_id] = Drafting(request, room, sr.block_ids, num_slots)
        out = carried_drafts(sched, requests, self._last_drafts)
        if rows:
            hidden = self.runner.last_hidden_states  # [T, D] of the step `sched` ran
            assert hidden is not None
            sampled, features = self._run(rows, hidden, np.concatenate(feature_rows))
            for i, sr in enumerate(rows):
                if sr.request_id in drafting:
                    drafting[sr.request_id].drafts.append(sampled[i])
            features_of = {sr.request_id: i for i, sr in enumerate(rows)}

            def run(step: list[Drafting], rows: list[ScheduledRequest]) -> list[int]:
                # each draft's feature: the head's own output f' for it in the step before
                nonlocal features, features_of
                src = np.array([features_of[d.request.request_id] for d in step], np.int32)
                sampled, features = self._run(rows, features, src)
                features_of = {d.request.request_id: i for i, d in enumerate(step)}
                return sampled

            # the last draft goes in at the position after the newest token and earlier drafts
            # less one (position i reads token i + 1)
            grow_drafts(drafting, self.k, 1, run)
        for rid, d in drafting.items():
            out[rid] = d.drafts[: d.room]
        self._last_drafts = out
        return out

    def _run(
        self,
        rows: list[ScheduledRequest],
        feature_src: jax.Array,  # [X, D] on the device
        feature_rows: np.ndarray,  # [n] int32: each real token's row of feature_src
    ) -> tuple[list[int], jax.Array]:
        """One head step over `rows`: (the greedy draft of each row's last position, f' [S, D]
        with row i that of rows[i], on the device)."""
        step = SchedulerOutput(
            scheduled=rows, num_batched_tokens=sum(r.num_new_tokens for r in rows)
        )
        hb = build_host_batch(step, block_size=self.block_size, policy=self.runner.shape_policy)
        T = hb.token_ids.shape[0]
        src_rows = np.full(T, -1, np.int32)  # [T]; padding tokens read no feature
        src_rows[: len(feature_rows)] = feature_rows
        batch = StepBatch(
            token_ids=jnp.asarray(hb.token_ids),
            positions=jnp.asarray(hb.positions),
            slot_mapping=jnp.asarray(hb.slot_mapping),
            block_tables=jnp.asarray(hb.block_tables),
            kv_lens=jnp.asarray(hb.kv_lens),
            query_start_loc=jnp.asarray(hb.query_start_loc),
            logits_indices=jnp.asarray(hb.logits_indices),
            decode_only=hb.decode_only,
        )
        self.kv_cache, tokens, features = self._step(
            self.params, self.kv_cache, feature_src, jnp.asarray(src_rows), batch
        )
        return [int(t) for t in np.asarray(tokens)[: len(rows)]], features
