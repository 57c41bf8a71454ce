"""LLMEngine: requests in, RequestOutputs out, one scheduler step + one model step at a time.

`add_request` validates and tokenizes (n > 1 fans out into n child sequences of one parent; the
scheduler prefills the prompt once, for the first, and forks the others onto its KV blocks),
`step` schedules, runs the model runner, feeds sampled tokens back to the scheduler, detokenizes
incrementally, applies stop strings, and returns the RequestOutputs that are due.

With asynchronous scheduling (`SchedulerConfig.async_scheduling`, `--async-scheduling`; by default
on with the GPU kernel backends, `pallas` and `cuda`, and off on the CPU) `step`
dispatches the next model step before it waits for the one in flight, so scheduling, batch
building and output processing overlap the device's work; each call returns the outputs of the
previous model step. A step in flight whose sampled rows use penalties (which need every output
token on the host) is waited for before the next is scheduled.

Speculative decoding (`speculative_config`, jaxllm/spec_decode/): after each step a proposer gives
the running requests draft tokens; the next step verifies them (one sampling row after the last
known token and one after each draft, each sampled as it would be without drafts) and keeps the
drafts up to the first mismatch plus the target's token there (`accept_drafts`). The proposer needs
each step's tokens on the host before the next step is scheduled, so the engine then schedules
synchronously.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from jaxllm.config import EngineConfig
from jaxllm.engine.compilation_cache import enable_compilation_cache
from jaxllm.engine.detokenizer import IncrementalDetokenizer
from jaxllm.engine.model_runner import InFlightStep, ModelRunner, StepResult
from jaxllm.engine.structured_output_manager import StructuredOutputManager
from jaxllm.lora import LoRARequest
from jaxllm.lora.config import LoRAConfig
from jaxllm.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from jaxllm.request import Request, RequestStatus
from jaxllm.sampling_metadata import SamplingRow, min_tokens_banned_ids, request_seed
from jaxllm.sampling_params import SamplingParams
from jaxllm.scheduler.scheduler import Scheduler
from jaxllm.spec_decode import SpecDecodeStats, SpeculativeConfig, accept_drafts
from jaxllm.spec_decode.proposer import Proposer, make_proposer

logger = logging.getLogger(__name__)

OUTPUT_KINDS = ("final", "cumulative", "delta")
# Attention backends whose engines schedule asynchronously unless told otherwise: on a GPU the
# host's ~2 ms a step is a third of a batch-1 decode step (Llama-3-8B, H200: 8.96 -> 5.44
# ms/token); on the CPU it is ~2% of a step and the synchronous step() is simpler to drive by hand.
ASYNC_BY_DEFAULT_BACKENDS = ("pallas", "cuda")
# `precompile=True` compiles for these: greedy, and plain random sampling (the API default)
PRECOMPILE_SAMPLING = (SamplingParams(temperature=0.0), SamplingParams())


@dataclass
class _Sequence:
    """Engine-side state of one child sequence (the scheduler holds its `Request`)."""

    request: Request
    index: int
    seed: int
    params: SamplingParams
    detok: IncrementalDetokenizer
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float | None
    sent_tokens: int = 0  # for delta outputs
    sent_logprobs: int = 0


@dataclass
class _Parent:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    output_kind: str
    metrics: RequestMetrics
    seqs: list[_Sequence] = field(default_factory=list)
    prompt_logprobs: list | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(s.request.is_finished() for s in self.seqs)


class LLMEngine:
    def __init__(
        self,
        engine_config: EngineConfig,
        params: dict,
        tokenizer: Any = None,
        *,
        attention_backend: str | None = None,
        compilation_cache_dir: str | None = None,
        generation_config: dict | None = None,
        mesh: Any = None,  # tensor parallelism: the ('data'=1, 'model'=tp) device mesh
        precompile: bool = False,  # compile every step shape now (see `precompile`)
        speculative_config: SpeculativeConfig | None = None,
        draft_model: Any = None,  # draft_model speculation: its LoadedModel (None: load it)
        lora_config: LoRAConfig | None = None,  # serve LoRA adapters (jaxllm/lora/)
    ) -> None:
        enable_compilation_cache(compilation_cache_dir)
        engine_config = dataclasses.replace(
            engine_config,
            model=engine_config.model.for_max_model_len(engine_config.scheduler.max_model_len),
        )
        self.model_config = engine_config.model
        self.tokenizer = tokenizer
        self.runner = ModelRunner(
            self.model_config,
            params,
            engine_config,
            attention_backend,
            mesh=mesh,
            lora_config=lora_config,
            return_hidden_states=speculative_config is not None
            and speculative_config.needs_target_hidden_states,
        )
        self.lora_config = lora_config
        if speculative_config is not None:
            if engine_config.scheduler.async_scheduling:
                raise ValueError(
                    "async scheduling does not run with speculative decoding: the proposer needs "
                    "each step's tokens on the host before the next step is scheduled; leave "
                    "async_scheduling unset or False"
                )
            engine_config = dataclasses.replace(
                engine_config,
                scheduler=dataclasses.replace(engine_config.scheduler, async_scheduling=False),
            )
        if engine_config.scheduler.async_scheduling is None:  # automatic: on for GPU kernels
            auto = self.runner.backend in ASYNC_BY_DEFAULT_BACKENDS
            engine_config = dataclasses.replace(
                engine_config,
                scheduler=dataclasses.replace(engine_config.scheduler, async_scheduling=auto),
            )
        self.config = engine_config
        self.speculative_config = speculative_config
        self.proposer: Proposer | None = None
        if speculative_config is not None:
            self.proposer = make_proposer(
                speculative_config, self.runner, engine_config, draft_model, mesh
            )
        self.spec_stats = SpecDecodeStats()
        self.scheduler = Scheduler(
            engine_config.scheduler,
            engine_config.cache,
            self.runner.num_blocks,
            num_host_blocks=self.runner.block_mover.num_host_blocks,
            sliding_window=self.model_config.uniform_sliding_window,
            num_lookahead_tokens=self.proposer.num_lookahead_tokens if self.proposer else 0,
            max_loras=lora_config.max_loras if lora_config else None,
        )
        capacity = (self.runner.num_blocks - 1) * engine_config.cache.block_size
        if engine_config.scheduler.max_model_len > capacity:
            raise ValueError(
                f"max_model_len ({engine_config.scheduler.max_model_len}) is larger than the KV "
                f"cache can hold ({capacity} tokens in {self.runner.num_blocks - 1} blocks); lower "
                "max_model_len or give the cache more blocks"
            )
        eos = set(self.model_config.eos_token_ids)
        gen_eos = (generation_config or {}).get("eos_token_id")
        if isinstance(gen_eos, int):
            eos.add(gen_eos)
        elif isinstance(gen_eos, list):
            eos.update(gen_eos)
        if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = tuple(sorted(eos))
        self._parents: dict[str, _Parent] = {}
        self._seq_by_child: dict[str, tuple[_Parent, _Sequence]] = {}
        self._counter = itertools.count()
        self.async_scheduling = bool(engine_config.scheduler.async_scheduling)
        self._in_flight: InFlightStep | None = None  # dispatched, not yet resolved
        self._in_flight_needs_history = False  # its sampled rows use penalties or grammars
        self.structured_outputs = StructuredOutputManager(
            tokenizer, self.model_config.vocab_size, self.eos_token_ids
        )
        if precompile:
            self.precompile()

    def precompile(self, sampling_params: Sequence[SamplingParams] = PRECOMPILE_SAMPLING) -> int:
        """Compile every padded step shape now (`ModelRunner.precompile`) for the sampler flags of
        each of `sampling_params`; returns how many shapes it compiled."""
        return self.runner.precompile(sampling_params)

    # ----- requests -----------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass prompt token ids instead of text")
        return list(self.tokenizer.encode(prompt))

    def add_request(
        self,
        request_id: str | None,
        prompt: str | Sequence[int] | dict,
        params: SamplingParams | None = None,
        *,
        arrival_time: float | None = None,
        output_kind: str = "cumulative",
        cache_salt: str | None = None,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> str:
        """Validate and queue a request; raises ValueError naming the problem (nothing is queued).

        `priority` (scheduling_policy "priority" only): lower values are scheduled first and
        preempted last; ties go by arrival. `lora_request`: the LoRA adapter to run with (an
        engine built with a `lora_config`), loaded now unless already loaded."""
        params = params or SamplingParams()
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}, got {output_kind!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority must be an int, got {priority!r}")
        policy = self.config.scheduler.policy
        if priority != 0 and policy != "priority":
            raise ValueError(
                f"priority={priority} needs scheduling_policy='priority' (it is {policy!r})"
            )
        if request_id is None:
            request_id = str(next(self._counter))
        if request_id in self._parents:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, ids = self._prompt_ids(prompt)
        self._validate(ids, params)
        lora_id = self._lora_id(lora_request)
        grammar = None
        if params.structured_outputs is not None:  # compiled off this thread, cached by spec
            grammar = self.structured_outputs.submit(params.structured_outputs)
            if grammar.done() and grammar.exception() is not None:
                raise ValueError(str(grammar.exception()))
        max_len = self.config.scheduler.max_model_len
        now = time.time() if arrival_time is None else arrival_time
        parent = _Parent(
            request_id, text, ids, params, output_kind, RequestMetrics(arrival_time=now)
        )
        if params.prompt_logprobs is not None:
            parent.prompt_logprobs = [None]
        for i in range(params.n):
            child_params = params.clone()
            child_params.n = 1
            if params.seed is not None:
                child_params.seed = params.seed + i
            if child_params.max_tokens is None:
                child_params.max_tokens = max_len - len(ids) if max_len > len(ids) else 1
            child_id = request_id if params.n == 1 else f"{request_id}#{i}"
            req = Request(
                child_id,
                ids,
                child_params,
                self.eos_token_ids,
                now,
                cache_salt,
                priority,
                lora_int_id=lora_id,
            )
            detok = IncrementalDetokenizer.from_sampling_params(self.tokenizer, ids, child_params)
            seq = _Sequence(
                req,
                i,
                request_seed(child_params),
                child_params,
                detok,
                [] if params.logprobs is not None else None,
                0.0 if params.logprobs is not None else None,
            )
            parent.seqs.append(seq)
        self._parents[request_id] = parent
        for seq in parent.seqs:
            self._seq_by_child[seq.request.request_id] = (parent, seq)
        if grammar is not None and not grammar.done():
            self.structured_outputs.hold(request_id, grammar, parent)  # scheduled once compiled
        else:
            self._admit(parent, grammar)
        return request_id

    # ----- LoRA adapters (vLLM's add_lora / remove_lora / list_loras) -------------------------
    def _lora_id(self, lora_request: LoRARequest | None) -> int:
        """The request's adapter id (0: none), its adapter loaded; ValueError when it cannot be."""
        if lora_request is None:
            return 0
        if not isinstance(lora_request, LoRARequest):
            raise ValueError(f"lora_request must be a LoRARequest, got {lora_request!r}")
        if self.runner.lora is None:
            raise ValueError(
                f"LoRA adapter {lora_request.lora_name!r} requested, but LoRA is not enabled "
                "(enable_lora=True)"
            )
        self.runner.lora.ensure_loaded(lora_request)
        return lora_request.lora_int_id

    def prefetch_lora(self, lora_request: LoRARequest) -> Future | None:
        """Start reading an adapter on the LoRA loader thread; its future (None without LoRA).
        Thread-safe (the manager locks its state), so that a caller off this engine's thread
        (the server) can wait for the disk there, and `add_request` / `add_lora` then find the
        adapter loaded instead of reading it on the engine's thread. Errors surface in the
        future and again, as ValueError, from `add_request` / `add_lora`."""
        if self.runner.lora is None or not isinstance(lora_request, LoRARequest):
            return None
        return self.runner.lora.prefetch(lora_request)

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Load an adapter ahead of its requests; raises ValueError when it cannot load."""
        self._lora_id(lora_request)
        return True

    def remove_lora(self, lora_int_id: int) -> bool:
        """Unregister an adapter; requests already queued with it still finish with it."""
        return self.runner.lora is not None and self.runner.lora.remove_adapter(lora_int_id)

    def list_loras(self) -> set[int]:
        return set() if self.runner.lora is None else set(self.runner.lora.list_adapters())

    def _admit(self, parent: _Parent, grammar=None) -> None:
        """Hand a request's sequences to the scheduler (with their matchers, for a grammar)."""
        if grammar is not None:
            for seq in parent.seqs:
                self.structured_outputs.attach(seq.request.request_id, grammar.result())
        first, *others = [seq.request for seq in parent.seqs]
        self.scheduler.add_request(first, fork_children=others)

    def _admit_compiled(self) -> None:
        """Schedule the held requests whose grammar is ready; drop those whose grammar failed
        (only requests added without waiting for it: `LLM` and the server wait first). Waits a
        little for one when nothing else can run."""
        idle = self._in_flight is None and not self.scheduler.has_unfinished_requests()
        for rid, grammar, parent in self.structured_outputs.ready(0.05 if idle else 0.0):
            if grammar.exception() is not None:
                logger.error("request %s: %s", rid, grammar.exception())
                self.abort_request(rid)
            else:
                self._admit(parent, grammar)

    def _prompt_ids(self, prompt: str | Sequence[int] | dict) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            return prompt, self.tokenize(prompt)
        try:
            ids = [int(t) for t in prompt]
        except (TypeError, ValueError) as e:
            raise ValueError(f"prompt must be a string or a list of token ids: {e}") from None
        return None, ids

    def _validate(self, ids: list[int], params: SamplingParams) -> None:
        if not ids:
            raise ValueError("prompt is empty (0 tokens)")
        max_len = self.config.scheduler.max_model_len
        if len(ids) > max_len:
            raise ValueError(
                f"prompt is {len(ids)} tokens long, longer than max_model_len ({max_len})"
            )
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if t < 0 or t >= vocab]
        if bad:
            raise ValueError(f"prompt holds token id {bad[0]}, outside the vocabulary [0, {vocab})")
        max_lp = self.config.max_logprobs
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(params, name)
            if k is not None and (k > max_lp or (k == -1 and vocab > max_lp)):
                raise ValueError(f"{name}={k} is above the configured max_logprobs ({max_lp})")
        for tid in list(params.stop_token_ids or []) + list((params.logit_bias or {}).keys()):
            if not 0 <= int(tid) < vocab:
                raise ValueError(f"token id {tid} in sampling params is outside [0, {vocab})")

    def abort_request(self, request_id: str | Sequence[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            parent = self._parents.pop(rid, None)
            if parent is None:
                continue
            child_ids = [s.request.request_id for s in parent.seqs]
            if not self.structured_outputs.release(rid):  # not held: the scheduler has it
                self.scheduler.finish_requests(child_ids, RequestStatus.FINISHED_ABORTED)
            for cid in child_ids:
                self._seq_by_child.pop(cid, None)
                self.structured_outputs.detach(cid)

    def has_unfinished_requests(self) -> bool:
        return (
            self._in_flight is not None
            or self.scheduler.has_unfinished_requests()
            or self.structured_outputs.num_held > 0
        )

    def get_num_unfinished_requests(self) -> int:
        return len(self._parents)

    # ----- the step -----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        if self._in_flight is not None and self._in_flight_needs_history:
            outputs = self._finish(self._take_in_flight())
        if self.structured_outputs.num_held:
            self._admit_compiled()
        sched = self.scheduler.schedule()
        step = None
        if sched.scheduled:
            rows, prompt_lp = self._sampling_rows(sched)
            step = self.runner.dispatch(sched, rows, prompt_lp)
        elif sched.has_block_ops:  # only block copies (a request swapped out, nothing to run)
            self.runner.kv_cache = self.runner.block_mover.apply(self.runner.kv_cache, sched)
            if self.proposer is not None:
                self.proposer.apply_block_ops(sched)
        if self._in_flight is not None:  # resolve the previous step while this one runs
            outputs += self._finish(self._take_in_flight())
        if step is not None:
            if self.async_scheduling:
                self._in_flight = step
                self._in_flight_needs_history = any(
                    sr.samples and (row.params.uses_penalties or row.allowed_bitmask is not None)
                    for sr, row in zip(sched.scheduled, step.rows)
                )
            else:
                outputs += self._finish(step)
        return outputs

    def _take_in_flight(self) -> InFlightStep:
        step, self._in_flight = self._in_flight, None
        assert step is not None
        return step

    def _sampling_rows(self, sched) -> tuple[list[SamplingRow], dict[str, int]]:
        """One sampling row per scheduled request, and the prompt-logprob counts wanted."""
        now = time.time()
        rows = []
        spec_rows: list[SamplingRow] = []  # after the scheduled rows (ModelRunner.dispatch)
        prompt_lp: dict[str, int] = {}
        masks = self.structured_outputs.bitmasks(
            [sr.request.request_id for sr in sched.scheduled if sr.samples]
        )
        for sr in sched.scheduled:
            parent, seq = self._seq_by_child[sr.request.request_id]
            if parent.metrics.first_scheduled_time is None:
                parent.metrics.first_scheduled_time = now
                parent.metrics.time_in_queue = now - parent.metrics.arrival_time
            req = sr.request
            # tokens sampled by the step in flight (the one this step samples is not counted)
            pending = max(0, req.num_output_placeholders - 1)
            rows.append(
                SamplingRow(
                    seq.params,
                    seq.seed,
                    req.prompt_token_ids,
                    req.output_token_ids,
                    min_tokens_banned_ids(
                        seq.params, req.num_output_tokens + pending, self.eos_token_ids
                    ),
                    num_pending_tokens=pending,
                    allowed_bitmask=masks.get(req.request_id),
                )
            )
            for j in range(1, len(sr.spec_token_ids) + 1):
                # the token after draft j: sampled as if drafts 1..j were output tokens
                history = [*req.output_token_ids, *sr.spec_token_ids[:j]]
                spec_rows.append(
                    SamplingRow(
                        seq.params,
                        seq.seed,
                        req.prompt_token_ids,
                        history,
                        min_tokens_banned_ids(seq.params, len(history), self.eos_token_ids),
                    )
                )
            if (
                seq.index == 0
                and seq.params.prompt_logprobs is not None
                and sr.num_computed_tokens < req.num_prompt_tokens - 1
            ):
                k = seq.params.prompt_logprobs
                prompt_lp[req.request_id] = self.model_config.vocab_size if k == -1 else k
        return rows + spec_rows, prompt_lp

    def _finish(self, step: InFlightStep) -> list[RequestOutput]:
        """Wait for a dispatched step, apply its tokens, return the outputs due."""
        result = self.runner.resolve(step)
        emitted: dict[str, list[int]] = {}
        num_out_before: dict[str, int] = {}
        for sr in step.sched.scheduled:
            rid = sr.request_id
            if rid not in result.sampled:
                continue
            num_out_before[rid] = sr.request.num_output_tokens
            if sr.spec_token_ids:
                targets = [result.sampled[rid], *result.spec_sampled[rid]]
                emitted[rid] = accept_drafts(sr.spec_token_ids, targets)
                self._observe_drafts(rid, len(sr.spec_token_ids), len(emitted[rid]) - 1)
            else:
                emitted[rid] = [result.sampled[rid]]
        updated = self.scheduler.update_from_output(step.sched, emitted)
        # requests finished or aborted while the step was in flight get nothing from it; a stop
        # check may have ended one before all its emitted tokens
        tokens = {r.request_id: r.output_token_ids[num_out_before[r.request_id] :] for r in updated}
        result.prompt_logprobs = {
            k: v for k, v in result.prompt_logprobs.items() if k in self._seq_by_child
        }
        outputs = self._process(step.sched, result, tokens)
        if self.proposer is not None:
            self._propose(step.sched)
        return outputs

    def _observe_drafts(self, rid: str, num_drafts: int, num_accepted: int) -> None:
        self.spec_stats.observe(num_drafts, num_accepted)
        metrics = self._seq_by_child[rid][0].metrics
        metrics.spec_num_draft_tokens += num_drafts
        metrics.spec_num_accepted_tokens += num_accepted
        per_pos = metrics.spec_accepted_per_position
        if len(per_pos) < num_drafts:
            per_pos += [0] * (num_drafts - len(per_pos))
        for j in range(num_accepted):
            per_pos[j] += 1

    def _propose(self, sched) -> None:
        """Draft tokens for the running requests that will sample next step (none for requests
        with a grammar: their next tokens are constrained one at a time)."""
        assert self.proposer is not None
        wanting = []
        for request in self.scheduler.running:
            entry = self._seq_by_child.get(request.request_id)
            if entry is None or entry[1].params.structured_outputs is not None:
                continue
            if request.num_computed_tokens != request.num_tokens - 1:
                continue  # still prefilling: it samples no token next step
            max_tokens = request.sampling_params.max_tokens
            room = self.config.scheduler.max_model_len - request.num_tokens
            if max_tokens is not None:
                room = min(room, max_tokens - request.num_output_tokens - 1)
            if room > 0:
                wanting.append((request, room))
        drafts = self.proposer.propose(sched, wanting)
        for request, _ in wanting:
            request.spec_token_ids = drafts.get(request.request_id, [])

    def _process(
        self, sched, result: StepResult, tokens: dict[str, list[int]]
    ) -> list[RequestOutput]:
        """`tokens`: the tokens each request got from the step (one, or a verified draft run)."""
        now = time.time()
        touched: dict[str, _Parent] = {}
        for rid, (start, lps, ranks, top_ids, top_lps) in result.prompt_logprobs.items():
            parent, _ = self._seq_by_child[rid]
            assert parent.prompt_logprobs is not None  # set at add_request when asked
            targets = parent.prompt_token_ids[start + 1 : start + 1 + len(lps)]
            for j, t in enumerate(targets):
                entry = {int(t): Logprob(float(lps[j]), int(ranks[j]), self._decode_one(int(t)))}
                for tid, lp in zip(top_ids[j], top_lps[j]):
                    entry.setdefault(int(tid), Logprob(float(lp), None, self._decode_one(int(tid))))
                self._rank_top(entry, top_ids[j])
                parent.prompt_logprobs.append(entry)
        for rid, new_tokens in tokens.items():
            if not new_tokens:
                continue
            parent, seq = self._seq_by_child[rid]
            touched[parent.request_id] = parent
            if parent.metrics.first_token_time is None:
                parent.metrics.first_token_time = now
            parent.metrics.last_token_time = now
            if parent.num_cached_tokens == 0 and seq.request.num_cached_tokens > 0:
                parent.num_cached_tokens = seq.request.num_cached_tokens
            step_lps = [result.logprobs.get(rid), *result.spec_logprobs.get(rid, ())]
            for j, token in enumerate(new_tokens):
                if not self.structured_outputs.consume(rid, token):
                    self.scheduler.finish_requests([rid], RequestStatus.FINISHED_ABORTED)
                if j < len(step_lps) and step_lps[j] is not None:
                    lp, rank, top_ids, top_lps = step_lps[j]
                    assert seq.logprobs is not None and seq.cumulative_logprob is not None
                    entry = {token: Logprob(lp, rank, self._decode_one(token))}
                    for tid, tlp in zip(top_ids, top_lps):
                        entry.setdefault(
                            int(tid), Logprob(float(tlp), None, self._decode_one(int(tid)))
                        )
                    self._rank_top(entry, top_ids)
                    seq.logprobs.append(entry)
                    seq.cumulative_logprob += lp
                last = j == len(new_tokens) - 1
                # eos or a stop id ends the request only with its last token
                stop_token = last and seq.request.status == RequestStatus.FINISHED_STOPPED
                stop_str = seq.detok.update([token], stop_terminated=stop_token)
                if stop_str is not None:
                    if not last:  # tokens emitted with it after the stop string are dropped
                        seq.request.truncate_output_token_ids(
                            seq.request.num_output_tokens - (len(new_tokens) - 1 - j)
                        )
                    self.scheduler.finish_requests([rid], RequestStatus.FINISHED_STOPPED)
                    seq.request.stop_reason = stop_str
                    break
        outputs = []
        for parent in touched.values():
            finished = parent.finished
            if finished:
                parent.metrics.finished_time = now
            if parent.output_kind == "final" and not finished:
                continue
            outputs.append(self._make_output(parent, finished))
            if finished:
                self._release(parent)
        return outputs

    def _decode_one(self, token_id: int) -> str | None:
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode([token_id])

    @staticmethod
    def _rank_top(entry: dict[int, Logprob], top_ids) -> None:
        for r, tid in enumerate(top_ids, start=1):
            entry[int(tid)].rank = r

    def _make_output(self, parent: _Parent, finished: bool) -> RequestOutput:
        delta = parent.output_kind == "delta"
        outs = []
        for seq in parent.seqs:
            req = seq.request
            done = req.is_finished()
            text = seq.detok.get_next_output_text(done, delta)
            ids = req.output_token_ids[seq.sent_tokens :] if delta else list(req.output_token_ids)
            lps = seq.logprobs
            if delta and lps is not None:
                lps = lps[seq.sent_logprobs :]
            if delta:
                seq.sent_tokens = req.num_output_tokens
                seq.sent_logprobs = len(seq.logprobs or [])
            outs.append(
                CompletionOutput(
                    index=seq.index,
                    text=text,
                    token_ids=list(ids),
                    cumulative_logprob=seq.cumulative_logprob,
                    logprobs=list(lps) if lps is not None else None,
                    finish_reason=req.finish_reason if done else None,
                    stop_reason=req.stop_reason if done else None,
                )
            )
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            prompt_logprobs=parent.prompt_logprobs,
            outputs=outs,
            finished=finished,
            metrics=parent.metrics,
            num_cached_tokens=parent.num_cached_tokens,
        )

    def _release(self, parent: _Parent) -> None:
        self._parents.pop(parent.request_id, None)
        for seq in parent.seqs:
            self._seq_by_child.pop(seq.request.request_id, None)
            self.structured_outputs.detach(seq.request.request_id)
