"""The model runner: owns the device state (params, KV cache) and runs one jitted step.

Each distinct padded step shape (buckets.py) is one executable, compiled on first use or ahead of
time by `precompile()` (in parallel threads: XLA compiles outside the GIL). Per step: the host
packs the scheduler's output (batch_builder.py) and the sampling rows (sampling_metadata.py) into
numpy arrays, packed into one buffer per dtype (packed_transfer.py); one `jax.device_put` moves
them; one compiled function runs the model, samples on the device and computes logprobs; one
`jax.device_get` brings back the token ids (and logprobs when asked). The KV cache is donated
through the step.

`execute` is `resolve(dispatch(...))`. `dispatch` returns as soon as the step is queued on the
device (JAX dispatches asynchronously), so an engine with asynchronous scheduling builds and
dispatches the next step before it resolves this one. The step keeps its sampled tokens on the
device (`[S_cap]`, one per row); the next step reads from them the input tokens the host does not
know yet (`HostBatch.prev_rows`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import EngineConfig, ModelConfig
from jaxllm.engine.batch_builder import HostBatch, build_host_batch
from jaxllm.engine.buckets import StepShapePolicy, accelerator_policy, next_power_of_two
from jaxllm.engine.compiler_options import ENV_VAR as COMPILER_OPTIONS_ENV
from jaxllm.engine.compiler_options import compiler_options_from_env
from jaxllm.engine.kv_swap import KVBlockMover
from jaxllm.engine.packed_transfer import PackedLayout, pack, unpack
from jaxllm.layers.sampler import compute_logprobs, sample
from jaxllm.lora.step_inputs import LoRAStep
from jaxllm.models.batch import (
    StepBatch,
    kv_cache_bytes_per_block,
    kv_cache_storage,
    kv_cache_view,
    make_kv_cache,
)
from jaxllm.models.step import build_model, step_params
from jaxllm.sampling_metadata import SamplerFlags, SamplingRow, build_sampling_metadata
from jaxllm.sampling_params import SamplingParams
from jaxllm.scheduler.output import SchedulerOutput

logger = logging.getLogger(__name__)

CPU_KV_SPACE_ENV = "JAXLLM_CPU_KVCACHE_SPACE"  # GiB of host memory for the KV cache on the CPU
DEFAULT_CPU_KV_SPACE_GIB = 4.0
# "1": on the CPU without tensor parallelism, the step runs per-layer (unstacked) parameters. With
# XLA's dots (JAXLLM_CPU_KERNELS=xla) their dots read each layer's weights in place instead of
# copying them out of the stacked arrays every step (SmolLM2-135M f32, batch-16 decode step 170 ->
# 134 ms on 2 cores). cpu_ext's packed matmul (the CPU default where it runs) reads the stacked
# kernels in place itself, so there per-layer gains nothing (53-65 ms a step either way) and only
# compiles slower (0.5 -> 2.1 s a step shape; bench/RESULTS.md). Off by default.
PER_LAYER_PARAMS_ENV = "JAXLLM_PER_LAYER_PARAMS"


def _per_layer_params_from_env() -> bool:
    value = os.environ.get(PER_LAYER_PARAMS_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{PER_LAYER_PARAMS_ENV}={value!r}: use 1 (per-layer) or 0 (stacked)")
    return value == "1"


@dataclass
class StepResult:
    """What one step brings back to the host, indexed like `SchedulerOutput.scheduled`."""

    sampled: dict[str, int]  # request_id -> new token (only requests with samples=True)
    # request_id -> (logprob of sampled token, rank, top ids, top logprobs) when logprobs asked
    logprobs: dict[str, tuple[float, int, np.ndarray, np.ndarray]]
    # request_id -> (positions start, [c] target logprobs, [c] ranks, [c, k] top ids,
    #                [c, k] top logprobs)
    prompt_logprobs: dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    # speculative decoding: request_id -> the tokens sampled after each of its draft tokens
    # (`sampled` holds the one after its last known token), and their logprobs when asked
    spec_sampled: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    spec_logprobs: dict[str, list[tuple[float, int, np.ndarray, np.ndarray]]] = dataclasses.field(
        default_factory=dict
    )


@dataclass
class InFlightStep:
    """A dispatched step whose results are still on the device (`ModelRunner.resolve`)."""

    sched: SchedulerOutput
    rows: list[SamplingRow]
    prompt_logprobs: dict[str, int]
    prompt_logprob_rows: list[tuple[int, int, int, int]]  # HostBatch.prompt_logprob_rows
    want_logprobs: bool
    fetch: tuple  # device arrays: token ids [S + E] (and logprobs, their ids, ranks)
    prompt: Any  # device prompt logprobs, or None
    num_rows: int = 0  # S, the padded sequence rows; draft rows follow them
    spec_rows: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)


def choose_num_blocks(
    model_config: ModelConfig, engine_config: EngineConfig, dtype, device: jax.Device, tp: int = 1
) -> int:
    """Blocks for the KV cache: explicit, else from free device memory, else a host budget.

    With tensor parallelism (`tp` devices, `model_config` the tp-way config) each device holds
    1/tp of every block, and `device` is one of them.
    """
    cache = engine_config.cache
    sched = engine_config.scheduler
    if cache.num_gpu_blocks is not None:
        return cache.num_gpu_blocks
    per_block = kv_cache_bytes_per_block(model_config, cache.block_size, dtype) // tp
    needed = sched.max_num_seqs * math.ceil(sched.max_model_len / cache.block_size) + 1
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        limit, used = stats["bytes_limit"], stats.get("bytes_in_use", 0)
        # room for activations and logits of the largest step
        reserve = (
            512 * 2**20
            + sched.max_num_batched_tokens
            * (4 * model_config.intermediate_size + 4 * model_config.vocab_size)
            * 4
        )
        budget = cache.gpu_memory_utilization * limit - used - reserve
    else:
        budget = float(os.environ.get(CPU_KV_SPACE_ENV, DEFAULT_CPU_KV_SPACE_GIB)) * 2**30
    blocks = min(int(budget // per_block), needed)
    if blocks < 2:
        raise ValueError(
            f"not enough memory for the KV cache: {budget / 2**30:.2f} GiB available, one block "
            f"takes {per_block / 2**20:.2f} MiB; lower max_model_len / max_num_seqs or raise "
            "gpu_memory_utilization"
        )
    return blocks


class ModelRunner:
    def __init__(
        self,
        model_config: ModelConfig,
        params: dict,
        engine_config: EngineConfig,
        backend: str | None = None,
        mesh: jax.sharding.Mesh | None = None,
        lora_config: Any = None,  # a jaxllm.lora.config.LoRAConfig: serve LoRA adapters
        # EAGLE speculation: each step also keeps its tokens' final hidden states on the device
        # (`last_hidden_states`); off, the step traces and transfers nothing extra
        return_hidden_states: bool = False,
    ) -> None:
        from jaxllm.parallel import kv_cache_sharding, replicated, resolve_mesh, shard_params

        # tensor parallelism: a ('data'=1, 'model'=tp) mesh; params placed (and KV heads
        # repeated where fewer than devices) by the rules table; model_config is the tp-way one
        tp = engine_config.parallel.tensor_parallel_size
        self.mesh = resolve_mesh(mesh, tp)
        params, model_config = shard_params(params, model_config, self.mesh)
        # CPU without tp: cpu_ext's packed kernels (unless JAXLLM_CPU_KERNELS=xla), per-layer
        # when JAXLLM_PER_LAYER_PARAMS=1; elsewhere unchanged (step_params)
        params = step_params(params, self.mesh, per_layer=_per_layer_params_from_env())
        self.model_config = model_config
        self.config = engine_config
        self.params = params
        self.model = build_model(
            model_config, backend, self.mesh, return_hidden_states=return_hidden_states
        )
        self.backend = self.model.backend
        self.block_size = engine_config.cache.block_size
        self.kv_dtype = jnp.dtype(engine_config.cache.cache_dtype(model_config.dtype))
        device = next(d for d in self.mesh.devices.flat if d.process_index == jax.process_index())
        self.num_blocks = choose_num_blocks(model_config, engine_config, self.kv_dtype, device, tp)
        kv = kv_cache_sharding(self.mesh)
        self._replicated = replicated(self.mesh)
        # LoRA: the adapter table rides in the step's params (jaxllm/lora/); None: no LoRA traced
        self.lora = None
        if lora_config is not None:
            if tp != 1:
                raise ValueError("LoRA adapters with tensor_parallel_size > 1 are not supported")
            from jaxllm.lora.manager import LoRAManager

            self.lora = LoRAManager(lora_config, model_config, self._replicated)
        # quantized (fp8) caches are kept as their bytes between steps (kv_quant.py)
        self.kv_cache = make_kv_cache(
            model_config, self.num_blocks, self.block_size, self.kv_dtype, kv, storage=True
        )
        swap_gib = (
            engine_config.cache.swap_space
            if engine_config.scheduler.preemption_mode == "swap"
            else 0
        )
        self.block_mover = KVBlockMover(
            self.kv_cache, swap_gib
        )  # swap / copy-on-write (kv_swap.py)
        self.max_blocks_per_seq = math.ceil(engine_config.scheduler.max_model_len / self.block_size)
        sched = engine_config.scheduler
        shape_args = (sched.max_num_batched_tokens, sched.max_num_seqs, self.max_blocks_per_seq)
        # kernel backends: few step shapes (their cost follows the real KV lengths; an unrolled
        # accelerator step compiles for tens of seconds); the CPU: tight padding (buckets.py)
        self.shape_policy: StepShapePolicy = (
            accelerator_policy(*shape_args, self.block_size)
            if self.backend in ("pallas", "cuda")
            else StepShapePolicy(*shape_args)
        )
        # Input shardings come from the arrays themselves (params and cache placed above by the
        # rules table, step inputs device_put replicated; jit refuses in_shardings with the
        # static keyword arguments); outputs are pinned so the donated cache keeps its layout.
        self._step_jit = jax.jit(
            functools.partial(device_step, self.model, self.kv_dtype),
            donate_argnums=(1,),
            static_argnames=("layout", "flags", "num_prompt_logprobs"),
            out_shardings=(kv, self._replicated, self._replicated, self._replicated, None),
        )
        # the last dispatched step's final hidden states [T, D] (device; None unless
        # return_hidden_states), row i the step's i-th token in the batch's flat order
        self.last_hidden_states: jax.Array | None = None
        # the last dispatched step's sampled tokens, one per row ([S_cap] int32, on the device),
        # and request id -> row for the rows that sampled
        self._s_cap = next_power_of_two(sched.max_num_seqs)
        self._last_tokens = jax.device_put(np.zeros(self._s_cap, np.int32), self._replicated)
        self._last_rows: dict[str, int] = {}
        logger.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB), attention backend %s",
            self.num_blocks,
            self.block_size,
            self.num_blocks
            * kv_cache_bytes_per_block(model_config, self.block_size, self.kv_dtype)
            / 2**30,
            self.backend,
        )

        # (layout, flags, num_prompt_logprobs) -> compiled step
        self._executables: dict[tuple[PackedLayout, SamplerFlags, int], jax.stages.Compiled] = {}
        self._compile_lock = threading.Lock()
        self._compiler_options = compiler_options_from_env()  # JAXLLM_COMPILER_OPTIONS

    @property
    def num_compilations(self) -> int:
        """How many step variants have been compiled so far."""
        return len(self._executables)

    def _executable(
        self, layout: PackedLayout, flags: SamplerFlags, num_prompt_logprobs: int
    ) -> jax.stages.Compiled:
        """The compiled step for one padded shape, compiling it if needed."""
        key = (layout, flags, num_prompt_logprobs)
        exe = self._executables.get(key)
        if exe is None:
            buffers = tuple(
                jax.ShapeDtypeStruct((n,), np.dtype(dt), sharding=self._replicated)
                for dt, n in zip(layout.dtypes, layout.buffer_sizes(), strict=True)
            )
            lowered = self._step_jit.lower(
                self._step_params(),
                self.kv_cache,
                self._last_tokens,
                buffers,
                layout=layout,
                flags=flags,
                num_prompt_logprobs=num_prompt_logprobs,
            )
            try:
                exe = lowered.compile(compiler_options=self._compiler_options or None)
            except Exception as e:
                if self._compiler_options and "compile option" in str(e):
                    raise ValueError(f"{COMPILER_OPTIONS_ENV}: {e}") from e
                raise
            with self._compile_lock:
                exe = self._executables.setdefault(key, exe)
        return exe

    def _step(self, params, kv_cache, last_tokens, buffers, *, layout, flags, num_prompt_logprobs):
        """Run one step (the KV cache is donated): `(kv_cache, SamplerOutput, prompt logprobs,
        sampled tokens [S_cap], final hidden states [T, D] or None)`."""
        exe = self._executable(layout, flags, num_prompt_logprobs)
        return exe(params, kv_cache, last_tokens, buffers)

    def precompile(
        self,
        sampling_params: Sequence[SamplingParams] = (SamplingParams(),),
        *,
        max_workers: int | None = None,
    ) -> int:
        """Compile every step shape the bucket policy can produce (no prompt logprobs), for the
        sampler flags of each of `sampling_params` (one batch of that kind), `max_workers`
        compilations at a time (default: min(8, CPU count)). Returns how many it compiled.

        Shapes that need more (prompt logprobs, penalties' token windows, min_tokens bans) still
        compile on first use.
        """
        keys = set()
        for T, S, P in self.shape_policy.all_shapes():
            # decode_only is static (the decode attention path): both kinds where T == S
            for decode_only in (False, True) if T == S else (False,):
                for params in sampling_params:
                    rows = [SamplingRow(params, seed=0)]
                    md, flags = build_sampling_metadata(
                        rows, vocab_size=self.model_config.vocab_size, pad_rows_to=S
                    )
                    hb = _empty_host_batch(T, S, P, decode_only)
                    lora = None if self.lora is None else np.full(T, -1, np.int32)
                    _, layout = pack(self._host_inputs(hb, md, lora_slots=lora))
                    keys.add((layout, flags, -1))
        todo = [k for k in keys if k not in self._executables]
        workers = max_workers or min(8, os.cpu_count() or 1)
        t0 = time.perf_counter()

        done = itertools.count(1)

        def compile_one(key) -> None:  # one line a shape: where a slow precompile stands
            t = time.perf_counter()
            self._executable(*key)
            logger.info(
                "precompiled step shape %d of %d in %.1f s (%.1f s since the start)",
                next(done),
                len(todo),
                time.perf_counter() - t,
                time.perf_counter() - t0,
            )

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(compile_one, todo))
        logger.info(
            "precompiled %d step shapes in %.1f s (%d threads)",
            len(todo),
            time.perf_counter() - t0,
            workers,
        )
        return len(todo)

    def _step_params(self) -> dict:
        """The params the step runs with: the model's, and the LoRA adapter table if any."""
        if self.lora is None:
            return self.params
        from jaxllm.lora.step_inputs import LORA_PARAMS

        return {**self.params, LORA_PARAMS: self.lora.table.weights}

    def _lora_token_slots(self, sched: SchedulerOutput, hb: HostBatch) -> np.ndarray | None:
        """[T] int32: each token's adapter slot (-1: the base model), the step's adapters put in
        the table first; None without LoRA."""
        if self.lora is None:
            return None
        from jaxllm.lora.step_inputs import token_slots

        ids = [sr.request.lora_int_id for sr in sched.scheduled]
        slot_of = self.lora.activate(ids)
        rows = np.array([slot_of.get(i, -1) for i in ids], np.int32)  # [n_seq]
        return token_slots(rows, hb.query_start_loc, hb.token_ids.shape[0])

    @staticmethod
    def _host_inputs(
        hb: HostBatch,
        md,
        targets: np.ndarray | None = None,
        lora_slots: np.ndarray | None = None,  # [T] int32, with LoRA
    ):
        """The pytree the step receives (packed into buffers by `pack`)."""
        batch = StepBatch(
            token_ids=hb.token_ids,
            positions=hb.positions,
            slot_mapping=hb.slot_mapping,
            block_tables=hb.block_tables,
            kv_lens=hb.kv_lens,
            query_start_loc=hb.query_start_loc,
            logits_indices=hb.logits_indices,
            decode_only=hb.decode_only,
            lora=None if lora_slots is None else LoRAStep(lora_slots),
        )
        if targets is None:
            targets = np.zeros(hb.num_prompt_logprob_rows, np.int32)
        return batch, md, targets, hb.prev_rows

    def execute(
        self,
        sched: SchedulerOutput,
        rows: list[SamplingRow],
        prompt_logprobs: dict[str, int],
    ) -> StepResult:
        """Run one step and wait for its results: `resolve(dispatch(...))`."""
        return self.resolve(self.dispatch(sched, rows, prompt_logprobs))

    def dispatch(
        self,
        sched: SchedulerOutput,
        rows: list[SamplingRow],
        prompt_logprobs: dict[str, int],
    ) -> InFlightStep:
        """Queue one step on the device and return without waiting. `rows[i]` samples for
        `sched.scheduled[i]`, and the rows after those for the draft tokens of the scheduled
        requests that have them, in scheduled order, one after each draft; `prompt_logprobs` maps
        request ids wanting prompt logprobs to their count. Input tokens still in flight come
        from the previous dispatched step."""
        if sched.has_block_ops:  # swap-outs, swap-ins, copy-on-write: before the step
            self.kv_cache = self.block_mover.apply(self.kv_cache, sched)
        hb: HostBatch = build_host_batch(
            sched,
            block_size=self.block_size,
            policy=self.shape_policy,
            want_prompt_logprobs=frozenset(prompt_logprobs),
            pending_rows=self._last_rows,
        )
        S = hb.block_tables.shape[0]
        n_seq = len(sched.scheduled)
        n_spec = sum(d for _, _, d in hb.spec_rows)
        if len(rows) != n_seq + n_spec:
            raise ValueError(
                f"{len(rows)} sampling rows for {n_seq} scheduled requests and {n_spec} drafts"
            )
        if n_spec:  # padding between the sequence rows and the draft rows (HostBatch order)
            pad = SamplingRow(_PAD_PARAMS, seed=0)
            rows = list(rows[:n_seq]) + [pad] * (S - n_seq) + list(rows[n_seq:])
        md, flags = build_sampling_metadata(
            rows, vocab_size=self.model_config.vocab_size, pad_rows_to=S + hb.num_spec_rows
        )
        targets = np.zeros(hb.num_prompt_logprob_rows, np.int32)
        k_prompt = -1
        for row, start, count, offset in hb.prompt_logprob_rows:
            req = sched.scheduled[row].request
            targets[offset : offset + count] = req.prompt_token_ids[start + 1 : start + 1 + count]
            k_prompt = max(k_prompt, prompt_logprobs[req.request_id])
        host = self._host_inputs(hb, md, targets, self._lora_token_slots(sched, hb))
        # One host->device copy per dtype instead of one per array (packed_transfer.py).
        buffers, layout = pack(host)
        self.kv_cache, out, prompt, self._last_tokens, self.last_hidden_states = self._step(
            self._step_params(),
            self.kv_cache,
            self._last_tokens,
            jax.device_put(buffers, self._replicated),
            layout=layout,
            flags=flags,
            num_prompt_logprobs=k_prompt,
        )
        self._last_rows = {sr.request_id: i for i, sr in enumerate(sched.scheduled) if sr.samples}
        want_lp = flags.num_logprobs > 0 or any(r.params.logprobs is not None for r in rows)
        fetch = (
            (out.token_ids, out.logprobs, out.logprob_token_ids, out.token_ranks)
            if want_lp
            else (out.token_ids,)
        )
        return InFlightStep(
            sched,
            rows,
            prompt_logprobs,
            hb.prompt_logprob_rows,
            want_lp,
            fetch,
            prompt,
            S,
            hb.spec_rows,
        )

    def resolve(self, step: InFlightStep) -> StepResult:
        """Wait for a dispatched step and bring its results to the host (one transfer)."""
        sched, rows, want_lp = step.sched, step.rows, step.want_logprobs
        host_out, host_prompt = jax.device_get((step.fetch, step.prompt))
        token_ids = host_out[0]

        result = StepResult({}, {}, {})

        def logprob_entry(i: int, k: int) -> tuple[float, int, np.ndarray, np.ndarray]:
            _, lps, ids, ranks = host_out
            k = lps.shape[1] - 1 if k == -1 else k
            return float(lps[i, 0]), int(ranks[i]), ids[i, 1 : 1 + k], lps[i, 1 : 1 + k]

        for i, sr in enumerate(sched.scheduled):
            rid = sr.request.request_id
            if not sr.samples:
                continue
            result.sampled[rid] = int(token_ids[i])
            if want_lp and rows[i].params.logprobs is not None:
                result.logprobs[rid] = logprob_entry(i, rows[i].params.logprobs)
        for row, offset, d in step.spec_rows:
            sr = sched.scheduled[row]
            first = step.num_rows + offset
            result.spec_sampled[sr.request_id] = [int(t) for t in token_ids[first : first + d]]
            k = rows[row].params.logprobs
            if want_lp and k is not None:
                result.spec_logprobs[sr.request_id] = [
                    logprob_entry(first + j, k) for j in range(d)
                ]
        if host_prompt is not None:
            p_lps, p_ids, p_ranks = (
                host_prompt.logprobs,
                host_prompt.logprob_token_ids,
                host_prompt.token_ranks,
            )
            for row, start, count, offset in step.prompt_logprob_rows:
                req = sched.scheduled[row].request
                k = step.prompt_logprobs[req.request_id]
                sl = slice(offset, offset + count)
                result.prompt_logprobs[req.request_id] = (
                    start,
                    p_lps[sl, 0],
                    p_ranks[sl],
                    p_ids[sl, 1 : 1 + k],
                    p_lps[sl, 1 : 1 + k],
                )
        return result


def device_step(
    model: Any,
    kv_dtype: Any,  # the cache's dtype: fp8 caches come and go as their bytes
    params: dict,
    kv_cache,
    last_tokens: jax.Array,  # [S_cap] int32: the previous step's sampled tokens
    # packed (StepBatch, SamplingMetadata, targets [Rp], prev_rows [T])
    buffers: tuple[jax.Array, ...],
    *,
    layout: PackedLayout,
    flags: SamplerFlags,
    num_prompt_logprobs: int,
):
    """The runner's device step (jitted with `model` bound by ModelRunner): model forward,
    sampling, prompt logprobs. A function rather than a method so that the jitted step holds the
    model and not the runner: a bound method would tie the runner (its KV cache, its weights) into
    a reference cycle that only the garbage collector frees, long after `del llm`."""
    batch, md, prompt_targets, prev_rows = unpack(buffers, layout)
    # tokens still in flight when the host built the batch come from the previous step
    in_flight = last_tokens[jnp.maximum(prev_rows, 0)]  # [T]
    token_ids = jnp.where(prev_rows >= 0, in_flight, batch.token_ids)
    batch = dataclasses.replace(batch, token_ids=token_ids)
    # (kv_cache, logits [S + Rp, V]), and hidden states [T, D] from a model built to return them
    kv_cache, logits, *hidden = model.apply(
        {"params": params}, kv_cache_view(kv_cache, kv_dtype), batch
    )
    kv_cache = kv_cache_storage(kv_cache)
    S = md.temperature.shape[0]
    out = sample(logits[:S], md, flags)
    prompt = None
    if num_prompt_logprobs >= 0:
        prompt = compute_logprobs(logits[S:], prompt_targets, num_prompt_logprobs)
    n = min(S, last_tokens.shape[0])  # draft rows (after the sequence rows) may pass S_cap
    sampled = jnp.zeros_like(last_tokens).at[:n].set(out.token_ids[:n].astype(jnp.int32))
    return kv_cache, out, prompt, sampled, hidden[0] if hidden else None


_PAD_PARAMS = SamplingParams(temperature=0.0)  # padding rows: greedy, neutral


def _empty_host_batch(T: int, S: int, P: int, decode_only: bool) -> HostBatch:
    """A padding-only batch of shape (T tokens, S sequences, P table columns): for compiling."""
    qsl = np.zeros(S + 1, np.int32)
    return HostBatch(
        token_ids=np.zeros(T, np.int32),
        prev_rows=np.full(T, -1, np.int32),
        positions=np.zeros(T, np.int32),
        slot_mapping=np.full(T, -1, np.int32),
        block_tables=np.zeros((S, P), np.int32),
        kv_lens=np.zeros(S, np.int32),
        query_start_loc=qsl,
        logits_indices=np.zeros(S, np.int32),
        decode_only=decode_only,
        num_seqs=0,
        num_tokens=0,
        prompt_logprob_rows=[],
        num_prompt_logprob_rows=0,
    )
