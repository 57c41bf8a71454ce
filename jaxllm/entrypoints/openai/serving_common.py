"""What completions and chat share: the server context, request checks, engine admission, logprob
formatting, server-sent events and client-disconnect handling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from jaxllm.engine.async_engine import (
    AsyncLLMEngine,
    EngineDeadError,
    QueueFullError,
    RequestStream,
    ShuttingDownError,
    merge_delta_outputs,
)
from jaxllm.entrypoints.openai.errors import (
    OpenAIError,
    bad_request,
    context_length_exceeded,
    overloaded,
    param_from_message,
)
from jaxllm.entrypoints.openai.offload import WorkerPool
from jaxllm.entrypoints.openai.protocol import PromptTokensDetails, UsageInfo
from jaxllm.entrypoints.openai.serve_args import StructuredOutputsConfig
from jaxllm.entrypoints.openai.serving_models import ServingModels
from jaxllm.lora import LoRARequest
from jaxllm.outputs import Logprob, RequestOutput
from jaxllm.sampling_params import SamplingParams
from jaxllm.structured_outputs.params import StructuredOutputsParams

NEG_INF_LOGPROB = -9999.0  # JSON has no -inf; OpenAI-style clients expect a number


@dataclass
class ServerContext:
    """Everything a request handler needs (one per server)."""

    engine: AsyncLLMEngine
    tokenizer: Any
    served_model_names: list[str]
    max_model_len: int
    max_logprobs: int
    vocab_size: int
    chat_template: str | None = None
    model_source: str = ""
    retry_after_s: int = 1
    scheduling_policy: str = "fcfs"  # the engine's: "fcfs" or "priority"
    # the model's generation_config sampling settings (LLM.default_sampling_kwargs): the values of
    # the fields a request leaves unset, as vLLM's server applies them
    default_sampling: dict[str, Any] = field(default_factory=dict)
    # --structured-outputs-config; tool calling (--enable-auto-tool-choice, --tool-call-parser);
    # --reasoning-parser (a ToolParser / ReasoningParser of the registries, or None)
    structured_outputs_config: StructuredOutputsConfig = field(
        default_factory=StructuredOutputsConfig
    )
    enable_auto_tools: bool = False
    tool_parser: Any = None
    reasoning_parser: Any = None
    # --trust-request-chat-template, --max-request-body-bytes (None: no limit; read per request)
    trust_request_chat_template: bool = False
    max_request_body_bytes: int | None = None
    # chat templating, tokenization and detokenization of requests, off the event loop (offload)
    pool: WorkerPool = field(default_factory=WorkerPool)
    # the served names and the LoRA adapters (default: the served names, no adapters)
    models: ServingModels | None = None

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = ServingModels(self.served_model_names)

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    def resolve_model(self, name: str | None) -> tuple[str, LoRARequest | None]:
        """The name to report and the LoRA adapter to run with (None: the base model); 404 for
        a model this server does not serve."""
        assert self.models is not None  # set by __post_init__
        return self.models.resolve(name)

    def check_model(self, name: str | None) -> str:
        """The served name to report; 404 for a model this server does not serve."""
        return self.resolve_model(name)[0]

    def require_tokenizer(self, param: str) -> Any:
        if self.tokenizer is None:
            raise bad_request("This model has no tokenizer: send prompts as token ids.", param)
        return self.tokenizer


# ------------------------------------------------------------------------------ prompt and params


def check_token_ids(ctx: ServerContext, ids: Sequence[int], param: str) -> list[int]:
    ids = [int(t) for t in ids]
    if not ids:
        raise bad_request(f"'{param}' is empty: the prompt must hold at least one token.", param)
    bad = next((t for t in ids if not 0 <= t < ctx.vocab_size), None)
    if bad is not None:
        raise bad_request(
            f"Token id {bad} in '{param}' is outside the vocabulary [0, {ctx.vocab_size}).", param
        )
    return ids


def truncate(ids: list[int], keep: int | None, param: str = "truncate_prompt_tokens") -> list[int]:
    """vLLM's truncate_prompt_tokens: keep the last `keep` tokens."""
    if keep is None:
        return ids
    if keep < 1:
        raise bad_request(f"'{param}' must be at least 1, got {keep}.", param)
    return ids[-keep:]


def resolve_max_tokens(
    ctx: ServerContext,
    prompt_len: int,
    requested: int | None,
    explicit: bool,
    *,
    prompt_param: str,
    max_tokens_param: str = "max_tokens",
) -> int:
    """The completion budget. An explicit max_tokens that does not fit is a 400 naming both
    numbers; a default one is cut to the room the prompt leaves."""
    limit = ctx.max_model_len
    if prompt_len >= limit:
        raise context_length_exceeded(
            f"This model's maximum context length is {limit} tokens. However, your prompt is "
            f"{prompt_len} tokens long, which leaves no room for a completion. Please shorten it.",
            prompt_param,
        )
    room = limit - prompt_len
    if not explicit and "max_tokens" in ctx.default_sampling:
        requested = ctx.default_sampling["max_tokens"]  # the model's max_new_tokens
    if requested is None:
        return room
    if requested < 1:
        raise bad_request(
            f"'{max_tokens_param}' must be at least 1, got {requested}.", max_tokens_param
        )
    if explicit and requested > room:
        raise context_length_exceeded(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} in the "
            "completion). Please reduce the length of the prompt or completion.",
            max_tokens_param,
        )
    return min(requested, room)


def check_logprobs(ctx: ServerContext, value: int | None, param: str) -> None:
    if value is None:
        return
    if value < 0 or value > ctx.max_logprobs:
        raise bad_request(
            f"'{param}' must be between 0 and {ctx.max_logprobs} (the server's max_logprobs), "
            f"got {value}.",
            param,
        )


def check_priority(ctx: ServerContext, priority: int) -> int:
    """The request's scheduling priority; a non-zero one needs a server run with the "priority"
    policy (400 naming `priority` otherwise, as vLLM answers)."""
    if priority != 0 and ctx.scheduling_policy != "priority":
        raise bad_request(
            f"'priority' is {priority}, but this server schedules requests by arrival "
            f"(scheduling policy {ctx.scheduling_policy!r}): leave 'priority' at 0, or start the "
            "server with `--scheduling-policy priority`.",
            "priority",
        )
    return priority


def sampling_params(
    req: Any,
    *,
    max_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None,
    rename: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
    structured_outputs: StructuredOutputsParams | None = None,
) -> SamplingParams:
    """SamplingParams from a completion/chat request; a bad value is a 400 naming the field
    (`rename` maps SamplingParams names to the request's, e.g. logprobs -> top_logprobs).
    `defaults` (the model's generation_config settings) fill the fields the request left unset;
    `structured_outputs` (from jaxllm.entrypoints.openai.structured) is passed on."""
    model = defaults or {}

    def pick(value: Any, name: str, default: Any) -> Any:
        return model.get(name, default) if value is None else value

    kwargs = dict(
        n=req.n,
        temperature=pick(req.temperature, "temperature", 1.0),
        top_p=pick(req.top_p, "top_p", 1.0),
        top_k=pick(req.top_k, "top_k", 0),
        min_p=pick(req.min_p, "min_p", 0.0),
        presence_penalty=pick(req.presence_penalty, "presence_penalty", 0.0),
        frequency_penalty=pick(req.frequency_penalty, "frequency_penalty", 0.0),
        repetition_penalty=pick(req.repetition_penalty, "repetition_penalty", 1.0),
        seed=req.seed,
        stop=req.stop,
        stop_token_ids=req.stop_token_ids,
        ignore_eos=req.ignore_eos,
        max_tokens=max_tokens,
        min_tokens=req.min_tokens,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        skip_special_tokens=req.skip_special_tokens,
        spaces_between_special_tokens=req.spaces_between_special_tokens,
        include_stop_str_in_output=req.include_stop_str_in_output,
        logit_bias=req.logit_bias,
        structured_outputs=structured_outputs,
    )
    try:
        return SamplingParams(**kwargs)
    except ValueError as e:
        param = param_from_message(str(e), kwargs)
        if param is not None and rename:
            param = rename.get(param, param)
        raise bad_request(str(e), param) from None


def admission_error(ctx: ServerContext, e: Exception, param: str | None) -> OpenAIError:
    """The HTTP answer to the engine refusing a request: over the waiting bound -> 503 +
    Retry-After (`server_overloaded`), or 400 naming `param` when the request alone has more
    sequences than may wait (`too_many_sequences`: it would never be admitted); shutting down ->
    503 `shutting_down`; engine dead -> 503 `engine_dead`."""
    if isinstance(e, QueueFullError):
        if e.never_fits:
            return bad_request(str(e), param, code="too_many_sequences")
        return overloaded(str(e), ctx.retry_after_s)
    if isinstance(e, ShuttingDownError):
        return OpenAIError(503, str(e), type="server_error", code="shutting_down")
    return OpenAIError(503, str(e), type="server_error", code="engine_dead")


def check_admission(ctx: ServerContext, num_seqs: int, param: str = "n") -> None:
    """Refuse a request of `num_seqs` sequences (its prompts times n) that the engine would
    refuse now (`admission_error`), before any templating or tokenization is spent on it."""
    try:
        ctx.engine.check_admission(num_seqs)
    except (QueueFullError, EngineDeadError) as e:
        raise admission_error(ctx, e, param) from None


def _grammar_error(message: str) -> bool:
    """The engine's words for a structured output that does not compile."""
    return message.startswith("invalid ") or "structured output" in message


async def admit_all(
    ctx: ServerContext,
    items: list[tuple[str, dict, SamplingParams]],
    arrival_time: float,
    prompt_param: str,
    priority: int = 0,
    structured_param: str | None = None,
    lora_request: LoRARequest | None = None,
) -> list[RequestStream]:
    """Hand a request's prompts to the engine together (with the request's scheduling
    `priority` and LoRA adapter), all or none: engine validation errors -> 400 (a structured
    output's grammar that does not compile names `structured_param`, the request field it came
    from; a LoRA adapter that cannot load), over the queue bound, shutting down or engine dead
    -> `admission_error`."""
    try:
        return await ctx.engine.add_requests(
            items, arrival_time=arrival_time, priority=priority, lora_request=lora_request
        )
    except ValueError as e:
        msg = str(e)
        param = param_from_message(
            msg, ("logprobs", "prompt_logprobs", "max_tokens", "n", "priority")
        )
        if param is None and msg.startswith("prompt"):
            param = prompt_param
        if param is None and structured_param is not None and _grammar_error(msg):
            param = structured_param
        raise bad_request(msg, param) from None
    except (QueueFullError, EngineDeadError) as e:
        raise admission_error(ctx, e, "n") from None


# --------------------------------------------------------------------------------------- outputs


def finite(x: float) -> float:
    return x if math.isfinite(x) else NEG_INF_LOGPROB


def token_text(ctx: ServerContext, token_id: int, lp: Logprob | None) -> str:
    if lp is not None and lp.decoded_token is not None:
        return lp.decoded_token
    if ctx.tokenizer is None:
        return f"token_id:{token_id}"
    return ctx.tokenizer.decode([token_id])


def top_entries(entry: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    """The k most likely tokens of one position, by rank."""
    ranked = [(tid, lp) for tid, lp in entry.items() if lp.rank is not None and lp.rank <= k]
    ranked.sort(key=lambda item: item[1].rank or 0)  # rank is set (filtered above)
    return ranked[:k]


def prompt_logprobs_json(plp: list | None) -> list | None:
    """vLLM's prompt_logprobs: [null, {token_id: {logprob, rank, decoded_token}}, ...]."""
    if plp is None:
        return None
    return [
        None
        if entry is None
        else {
            int(tid): {
                "logprob": finite(lp.logprob),
                "rank": lp.rank,
                "decoded_token": lp.decoded_token,
            }
            for tid, lp in entry.items()
        }
        for entry in plp
    ]


def merge_outputs(outputs: Sequence[RequestOutput]) -> RequestOutput:
    total = outputs[0]
    for out in outputs[1:]:
        total = merge_delta_outputs(total, out)
    return total


async def collect(stream: RequestStream) -> RequestOutput:
    """Run a request to the end; its deltas merged into one cumulative output."""
    outputs = [out async for out in stream]
    if not outputs or not outputs[-1].finished:
        raise OpenAIError(
            503, "the request was aborted before it finished", type="server_error", code="aborted"
        )
    return merge_outputs(outputs)


async def merge_streams(
    streams: Sequence[RequestStream],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several streams as (stream index, output), in arrival order."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, s: RequestStream) -> None:
        try:
            async for out in s:
                await queue.put((i, out))
            await queue.put((i, done))
        except BaseException as e:  # hand the error to the consumer
            await queue.put((i, e))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


def sse(payload: Any) -> str:
    """One server-sent event holding a pydantic model or a dict as JSON."""
    if hasattr(payload, "model_dump_json"):
        return f"data: {payload.model_dump_json()}\n\n"
    return f"data: {json.dumps(payload)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def stream_error_event(exc: EngineDeadError | OpenAIError) -> str:
    """The SSE event a stream ends with when the engine died or a request failed mid-stream."""
    if not isinstance(exc, OpenAIError):
        exc = OpenAIError(503, str(exc), type="server_error", code="engine_dead")
    return sse(exc.body())


def final_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> UsageInfo:
    """The `usage` of a stream's last chunk (stream_options.include_usage)."""
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )


async def until_disconnected(request: Request, work: Awaitable[Any]) -> tuple[bool, Any]:
    """Await `work` unless the client disconnects first (then `work` is cancelled, which aborts
    its requests). Returns (finished, result)."""
    task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False, None
