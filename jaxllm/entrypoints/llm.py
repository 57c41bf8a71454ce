"""`LLM`: offline batch inference with vLLM's API (`from jaxllm import LLM, SamplingParams`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxllm.config import CacheConfig, EngineConfig, ParallelConfig, SchedulerConfig
from jaxllm.engine.llm_engine import LLMEngine
from jaxllm.lora import LoRARequest
from jaxllm.lora.config import LoRAConfig
from jaxllm.outputs import RequestOutput
from jaxllm.sampling_params import SamplingParams, sampling_defaults_from_generation_config
from jaxllm.spec_decode import SpeculativeConfig

DEFAULT_MODEL = "smollm2-135m"

PromptType = str | Sequence[int] | dict


class LLM:
    """An engine over one model; `generate` and `chat` run requests to completion.

    Args mirror vLLM's: model (an HF folder, a .gguf file, a converted jaxllm folder,
    `dummy:NAME`, a built-in name (`smollm2-135m`, `gemma3-270m`), a Hugging Face hub id such as
    "Qwen/Qwen2.5-0.5B-Instruct" (the local HF cache first, else a download of the files jaxllm
    reads unless HF_HUB_OFFLINE is set), or an already loaded `jaxllm.model_loader.LoadedModel`),
    revision (a hub id's branch, tag or commit hash; default main; the tokenizer comes from the
    same snapshot), dtype ("auto", "float32", "bfloat16"), quantization (None: the checkpoint's,
    i.e. a GGUF file's quantized tensors stay in their blocks; "int8" or "fp8": the decoder's
    linear weights quantized as they load; see `jaxllm.quantization`), max_model_len (default:
    the model's), max_num_seqs, max_num_batched_tokens, block_size, gpu_memory_utilization,
    num_gpu_blocks_override, enable_prefix_caching, swap_space (GiB of host memory for preempted
    KV), kv_cache_dtype ("auto": the model's dtype; a float dtype; "fp8" or "fp8_e4m3": float8
    e4m3 pages with per-tensor scales, twice the blocks of bfloat16 in the same memory),
    preemption_mode ("recompute" or "swap"), scheduling_policy ("fcfs" or "priority"; then
    `generate(..., priority=[...])`), async_scheduling (schedule and build the next step while
    the device runs the current one; same outputs, the host's time hidden behind the device's;
    None: on with the GPU kernel backends, off on the CPU),
    tensor_parallel_size, seed, max_logprobs, attention_backend
    ("reference", "cpu", "pallas", "cuda"; default: automatic), compilation_cache_dir ("off"
    disables the persistent cache), precompile (compile every padded step shape now, in parallel
    threads, for greedy and for plain random sampling, instead of on first use: on a GPU each
    unrolled shape takes seconds to tens of seconds to compile; see `LLMEngine.precompile`),
    generation_config ("auto": the sampling settings of the model's generation_config, such as
    temperature, top_p and max_new_tokens, are the defaults of `get_default_sampling_params()` and
    of `generate(prompts)` without sampling params; "vllm": SamplingParams' own defaults),
    speculative_config (vLLM's dict, or its JSON text: `{"method": "ngram",
    "num_speculative_tokens": k, "prompt_lookup_min": ..., "prompt_lookup_max": ...}` or
    `{"method": "draft_model", "model": ..., "num_speculative_tokens": k}` or `{"method":
    "eagle", "model": EAGLE_HEAD_FOLDER, "num_speculative_tokens": k}`; outputs are those
    without it, the engine then schedules synchronously; see docs/speculative-decoding.md),
    enable_lora (serve PEFT LoRA adapters: `generate(..., lora_request=LoRARequest(...))`),
    max_loras (distinct adapters in one step: device slots), max_lora_rank (the largest adapter
    rank accepted), max_cpu_loras (adapters kept loaded on the host; None: max_loras); see
    docs/lora.md.

    Parallelism: `tensor_parallel_size` (tp) shards the model over tp devices (a
    mixture-of-experts model splits each expert's width, or with `enable_expert_parallel` whole
    experts, E / tp per device); with
    `data_parallel_size` (dp) > 1, dp engine replicas run on disjoint groups of tp devices and
    each request goes to the replica with the fewest unfinished requests. `mesh` (a
    ('data', 'model') jax.sharding.Mesh of shape (dp, tp)) picks the devices; default: the first
    dp * tp of `jax.devices()`.
    """

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        *,
        tokenizer: Any = None,
        revision: str | None = None,
        dtype: str = "auto",
        quantization: str | None = None,
        max_model_len: int | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        block_size: int = 16,
        gpu_memory_utilization: float = 0.9,
        num_gpu_blocks_override: int | None = None,
        enable_prefix_caching: bool = True,
        enable_chunked_prefill: bool = True,
        swap_space: float = 4,
        kv_cache_dtype: str = "auto",
        preemption_mode: str = "recompute",
        scheduling_policy: str = "fcfs",
        async_scheduling: bool | None = None,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        enable_expert_parallel: bool = False,
        mesh: Any = None,
        seed: int = 0,
        max_logprobs: int = 20,
        attention_backend: str | None = None,
        compilation_cache_dir: str | None = None,
        precompile: bool = False,
        generation_config: str = "auto",
        speculative_config: dict | str | SpeculativeConfig | None = None,
        enable_lora: bool = False,
        max_loras: int = 1,
        max_lora_rank: int = 16,
        max_cpu_loras: int | None = None,
    ) -> None:
        if generation_config not in ("auto", "vllm"):
            raise ValueError(
                f"generation_config must be 'auto' (the model's sampling defaults) or 'vllm' "
                f"(SamplingParams' defaults), got {generation_config!r}"
            )
        from jaxllm.model_loader import LoadedModel, load_model
        from jaxllm.parallel import replica_meshes, resolve_mesh

        mesh = resolve_mesh(mesh, tensor_parallel_size, data_parallel_size)
        meshes = replica_meshes(mesh)  # one ('data'=1, 'model'=tp) mesh per engine replica
        loaded = (
            model
            if isinstance(model, LoadedModel)
            else load_model(
                model,
                dtype=dtype,
                mesh=meshes[0],
                revision=revision,
                quantization=quantization,
                enable_expert_parallel=enable_expert_parallel,
            )
        )
        if isinstance(model, LoadedModel) and quantization is not None:
            raise ValueError(
                "quantization applies when LLM loads the model; pass it to load_model instead"
            )
        mc = loaded.config
        if enable_expert_parallel and mc.is_moe and not mc.expert_parallel:
            raise ValueError(
                "enable_expert_parallel applies when LLM loads the model; pass it to load_model "
                "instead"
            )
        if max_model_len is None:
            max_model_len = mc.max_position_embeddings
        elif max_model_len > mc.max_position_embeddings:
            raise ValueError(
                f"max_model_len ({max_model_len}) is longer than the model's "
                f"max_position_embeddings ({mc.max_position_embeddings})"
            )
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 2048
        config = EngineConfig(
            model=mc,
            cache=CacheConfig(
                block_size=block_size,
                gpu_memory_utilization=gpu_memory_utilization,
                num_gpu_blocks=num_gpu_blocks_override,
                enable_prefix_caching=enable_prefix_caching,
                swap_space=swap_space,
                kv_cache_dtype=kv_cache_dtype,
            ),
            scheduler=SchedulerConfig(
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                max_model_len=max_model_len,
                enable_chunked_prefill=enable_chunked_prefill,
                policy=scheduling_policy,
                preemption_mode=preemption_mode,
                async_scheduling=async_scheduling,
            ),
            parallel=ParallelConfig(
                tensor_parallel_size=tensor_parallel_size,
                data_parallel_size=data_parallel_size,
                enable_expert_parallel=mc.expert_parallel,
            ),
            seed=seed,
            max_logprobs=max_logprobs,
        )
        self.tokenizer = tokenizer if tokenizer is not None else loaded.tokenizer
        self.chat_template = loaded.chat_template
        self.model_source = loaded.source
        self.default_sampling_kwargs = (
            sampling_defaults_from_generation_config(loaded.generation_config)
            if generation_config == "auto"
            else {}
        )
        engine_kwargs = dict(
            attention_backend=attention_backend,
            compilation_cache_dir=compilation_cache_dir,
            generation_config=loaded.generation_config,
            precompile=precompile,
            speculative_config=SpeculativeConfig.from_value(speculative_config),
            lora_config=(
                LoRAConfig(max_loras, max_lora_rank, max_cpu_loras) if enable_lora else None
            ),
        )
        if data_parallel_size == 1:
            self.llm_engine = LLMEngine(
                config, loaded.params, self.tokenizer, mesh=meshes[0], **engine_kwargs
            )
        else:
            from jaxllm.engine.dp_engine import DPEngine

            self.llm_engine = DPEngine(
                config, loaded.params, self.tokenizer, meshes, **engine_kwargs
            )
        import jax

        if jax.process_count() > 1 and jax.process_index() == 0:
            from jaxllm.parallel import multihost  # multi-host: followers replay the runner calls

            multihost.lead(self.llm_engine)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams with the model's generation_config settings (generation_config="auto")
        over SamplingParams' defaults; what `generate` uses when given no sampling params."""
        return SamplingParams(**self.default_sampling_kwargs)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in the order of the prompts.

        `prompts`: a string, a list of token ids, a dict ({"prompt": ...} or
        {"prompt_token_ids": [...]}), or a list of any of these. `priority`: one int per prompt
        (scheduling_policy="priority" only; lower runs first). `lora_request`: one LoRA adapter
        for every prompt, or one (or None: the base model) per prompt (enable_lora=True).
        """
        prompt_list = _as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompt_list)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompt_list):
                raise ValueError(
                    f"got {len(params_list)} sampling params for {len(prompt_list)} prompts"
                )
        if priority is not None and len(priority) != len(prompt_list):
            raise ValueError(f"got {len(priority)} priorities for {len(prompt_list)} prompts")
        if lora_request is None or isinstance(lora_request, LoRARequest):
            loras = [lora_request] * len(prompt_list)
        else:
            loras = list(lora_request)
            if len(loras) != len(prompt_list):
                raise ValueError(f"got {len(loras)} LoRA requests for {len(prompt_list)} prompts")
        return self._run(prompt_list, params_list, use_tqdm, priority, loras)

    def chat(
        self,
        messages: list[dict] | Sequence[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them, then generate."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer, so it has no chat template")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        template = chat_template or self.chat_template
        prompts = []
        for conv in conversations:
            text = self.tokenizer.apply_chat_template(
                conv,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                chat_template=template,
            )
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def beam_search(
        self, prompts: PromptType | Sequence[PromptType], params: Any, *, use_tqdm: bool = False
    ) -> list:
        """Beam search (vLLM's `LLM.beam_search`, HF's scoring): one `BeamSearchOutput` a prompt.

        `params` is a `jaxllm.BeamSearchParams`. Each round runs every live beam as a one-token
        request with top logprobs; beams fork onto shared KV blocks through automatic prefix
        caching. Semantics and details: `jaxllm.beam_search`.
        """
        from jaxllm.beam_search import prompt_to_ids, run_beam_search

        engine = self.llm_engine
        prompt_list = [prompt_to_ids(p, engine.tokenize) for p in _as_prompt_list(prompts)]
        tok = self.tokenizer
        return run_beam_search(
            lambda batch, sp: self.generate(batch, sp, use_tqdm=False),
            prompt_list,
            params,
            eos_token_ids=engine.eos_token_ids,
            max_model_len=engine.config.scheduler.max_model_len,
            max_logprobs=engine.config.max_logprobs,
            decode=None if tok is None else tok.decode,
            use_tqdm=use_tqdm,
        )

    def _run(
        self,
        prompts: list,
        params: list[SamplingParams],
        use_tqdm: bool,
        priority: Sequence[int] | None = None,
        loras: Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        engine = self.llm_engine
        ids = []
        priorities = [0] * len(prompts) if priority is None else list(priority)
        # every grammar compiled (in parallel) first: a malformed one refuses the whole batch
        specs = [sp.structured_outputs for sp in params if sp.structured_outputs is not None]
        if specs:
            engine.structured_outputs.wait_all(specs)
        try:
            for p, sp, prio, lora in zip(
                prompts, params, priorities, loras or [None] * len(prompts)
            ):
                kw = {} if lora is None else {"lora_request": lora}
                ids.append(
                    engine.add_request(None, p, sp, output_kind="final", priority=prio, **kw)
                )
        except ValueError:
            engine.abort_request(ids)  # all-or-nothing: a bad prompt queues none of the batch
            raise
        bar = _ProgressBar(len(ids)) if use_tqdm else None
        done: dict[str, RequestOutput] = {}
        wanted = set(ids)
        try:
            while len(done) < len(ids):
                if not engine.has_unfinished_requests():
                    raise RuntimeError("the engine went idle before every request finished")
                for out in engine.step():
                    if out.request_id in wanted and out.finished:
                        done[out.request_id] = out
                        if bar is not None:
                            bar.finished(out)
        except BaseException:
            engine.abort_request([i for i in ids if i not in done])
            raise
        finally:
            if bar is not None:
                bar.close()
        return [done[i] for i in ids]


class _ProgressBar:
    """vLLM's "Processed prompts" bar: finished requests, with the input and output tokens per
    second of the finished requests since the bar started."""

    def __init__(self, total: int) -> None:
        import time

        from tqdm.auto import tqdm

        self._clock = time.perf_counter
        self._start = self._clock()
        self._input_tokens = 0
        self._output_tokens = 0
        self._bar = tqdm(total=total, desc="Processed prompts", dynamic_ncols=True)

    def finished(self, out: RequestOutput) -> None:
        self._input_tokens += len(out.prompt_token_ids or ())
        self._output_tokens += sum(len(c.token_ids) for c in out.outputs)
        elapsed = max(self._clock() - self._start, 1e-9)
        self._bar.set_postfix_str(
            f"est. speed input: {self._input_tokens / elapsed:.2f} toks/s, "
            f"output: {self._output_tokens / elapsed:.2f} toks/s",
            refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    if all(isinstance(t, int) for t in prompts):  # one prompt of token ids
        return [prompts]
    return prompts
