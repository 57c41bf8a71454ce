"""`LLM`: offline batch inference with vLLM's API (`from jaxllm import LLM, SamplingParams`)."""

from __future__ import annotations

from typing import Any, Sequence

from jaxllm.config import CacheConfig, EngineConfig, ParallelConfig, SchedulerConfig
from jaxllm.engine.llm_engine import LLMEngine
from jaxllm.outputs import RequestOutput
from jaxllm.sampling_params import SamplingParams

DEFAULT_MODEL = "smollm2-135m"

PromptType = str | Sequence[int] | dict


class LLM:
    """An engine over one model; `generate` and `chat` run requests to completion.

    Args mirror vLLM's: model (an HF folder, a .gguf file, a converted jaxllm folder,
    `dummy:NAME`, `smollm2-135m`, or an already loaded `jaxllm.models.loader.LoadedModel`), dtype ("auto", "float32", "bfloat16"), max_model_len
    (default: the model's), max_num_seqs, max_num_batched_tokens, block_size,
    gpu_memory_utilization, num_gpu_blocks_override, enable_prefix_caching,
    tensor_parallel_size, seed, max_logprobs, attention_backend ("reference", "pallas",
    "cuda"; default: automatic), compilation_cache_dir ("off" disables the persistent cache).
    """

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        *,
        tokenizer: Any = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        block_size: int = 16,
        gpu_memory_utilization: float = 0.9,
        num_gpu_blocks_override: int | None = None,
        enable_prefix_caching: bool = True,
        enable_chunked_prefill: bool = True,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        max_logprobs: int = 20,
        attention_backend: str | None = None,
        compilation_cache_dir: str | None = None,
    ) -> None:
        from jaxllm.models.loader import LoadedModel, load_model

        loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype)
        mc = loaded.config
        if max_model_len is None:
            max_model_len = mc.max_position_embeddings
        elif max_model_len > mc.max_position_embeddings:
            raise ValueError(
                f"max_model_len ({max_model_len}) is longer than the model's "
                f"max_position_embeddings ({mc.max_position_embeddings})"
            )
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 2048
        if tensor_parallel_size != 1:
            raise ValueError("tensor_parallel_size > 1 is not supported yet (only 1)")
        config = EngineConfig(
            model=mc,
            cache=CacheConfig(
                block_size=block_size,
                gpu_memory_utilization=gpu_memory_utilization,
                num_gpu_blocks=num_gpu_blocks_override,
                enable_prefix_caching=enable_prefix_caching,
            ),
            scheduler=SchedulerConfig(
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                max_model_len=max_model_len,
                enable_chunked_prefill=enable_chunked_prefill,
            ),
            parallel=ParallelConfig(tensor_parallel_size=tensor_parallel_size),
            seed=seed,
            max_logprobs=max_logprobs,
        )
        self.tokenizer = tokenizer if tokenizer is not None else loaded.tokenizer
        self.chat_template = loaded.chat_template
        self.model_source = loaded.source
        self.llm_engine = LLMEngine(
            config,
            loaded.params,
            self.tokenizer,
            attention_backend=attention_backend,
            compilation_cache_dir=compilation_cache_dir,
            generation_config=loaded.generation_config,
        )

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in the order of the prompts.

        `prompts`: a string, a list of token ids, a dict ({"prompt": ...} or
        {"prompt_token_ids": [...]}), or a list of any of these.
        """
        prompt_list = _as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompt_list)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompt_list):
                raise ValueError(
                    f"got {len(params_list)} sampling params for {len(prompt_list)} prompts"
                )
        return self._run(prompt_list, params_list, use_tqdm)

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
                conv, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
            )
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, prompts: list, params: list[SamplingParams], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        ids = []
        try:
            for p, sp in zip(prompts, params):
                ids.append(engine.add_request(None, p, sp, output_kind="final"))
        except ValueError:
            engine.abort_request(ids)  # all-or-nothing: a bad prompt queues none of the batch
            raise
        bar = None
        if use_tqdm and len(ids) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="Processed prompts", dynamic_ncols=True)
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
                            bar.update(1)
        except BaseException:
            engine.abort_request([i for i in ids if i not in done])
            raise
        finally:
            if bar is not None:
                bar.close()
        return [done[i] for i in ids]


def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    if all(isinstance(t, int) for t in prompts):  # one prompt of token ids
        return [prompts]
    return prompts
