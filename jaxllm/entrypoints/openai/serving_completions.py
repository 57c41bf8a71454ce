"""POST /v1/completions: prompt(s) in, `n` completions each, as one JSON body or as SSE chunks.

Choice `index` is `prompt_index * n + i`. `echo` puts the prompt in front of the text (and, with
`logprobs`, its tokens in front of the logprobs, the first with a null logprob). Usage counts each
prompt once and every generated token of every choice. `response_format`, `structured_outputs`
and the `guided_*` fields hold the text to a grammar (jaxllm.entrypoints.openai.structured).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import Request

from jaxllm.engine.async_engine import EngineDeadError
from jaxllm.entrypoints.openai.errors import OpenAIError, bad_request
from jaxllm.entrypoints.openai.offload import encode_text
from jaxllm.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    PromptTokensDetails,
    UsageInfo,
)
from jaxllm.entrypoints.openai.serving_common import (
    SSE_DONE,
    ServerContext,
    admit_all,
    check_admission,
    check_logprobs,
    check_priority,
    check_token_ids,
    collect,
    final_usage,
    finite,
    merge_streams,
    prompt_logprobs_json,
    resolve_max_tokens,
    sampling_params,
    sse,
    stream_error_event,
    token_text,
    top_entries,
    truncate,
    until_disconnected,
)
from jaxllm.entrypoints.openai.structured import request_structured_outputs
from jaxllm.outputs import Logprob


@dataclass
class _Prompt:
    text: str | None  # None for token-id prompts until echo needs it
    ids: list[int]


def _prompts(ctx: ServerContext, req: CompletionRequest) -> list[_Prompt]:
    """The request's prompts, tokenized and checked (on a worker thread: ctx.pool)."""
    p = req.prompt
    if isinstance(p, str):
        raw: list = [p]
    elif not p:
        raise bad_request("'prompt' is empty.", "prompt")
    elif all(isinstance(x, int) for x in p):
        raw = [list(p)]
    else:
        raw = list(p)
    out = []
    for item in raw:
        if isinstance(item, str):
            if not item:
                raise bad_request("'prompt' holds an empty string.", "prompt")
            tok = ctx.require_tokenizer("prompt")
            ids = encode_text(tok, item, req.add_special_tokens)
            out.append(
                _Prompt(
                    item, check_token_ids(ctx, truncate(ids, req.truncate_prompt_tokens), "prompt")
                )
            )
        else:
            ids = check_token_ids(ctx, truncate(list(item), req.truncate_prompt_tokens), "prompt")
            out.append(_Prompt(None, ids))
    return out


def _num_prompts(req: CompletionRequest) -> int:
    """How many prompts `_prompts` will find (without tokenizing them)."""
    p = req.prompt
    if isinstance(p, str) or not p or all(isinstance(x, int) for x in p):
        return 1
    return len(p)


def _check_request(ctx: ServerContext, req: CompletionRequest) -> None:
    if req.suffix:
        raise bad_request("'suffix' is not supported by this server.", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request(
            f"'best_of' must equal n ({req.n}) on this server, got {req.best_of}.", "best_of"
        )
    if req.stream_options is not None and not req.stream:
        raise bad_request(
            "'stream_options' is only allowed when 'stream' is true.", "stream_options"
        )
    if req.prompt_logprobs is not None and req.stream:
        raise bad_request("'prompt_logprobs' is not available with 'stream'.", "prompt_logprobs")
    check_logprobs(ctx, req.logprobs, "logprobs")
    check_logprobs(ctx, req.prompt_logprobs, "prompt_logprobs")
    check_priority(ctx, req.priority)


class _LogprobFormatter:
    """Builds OpenAI completion logprobs incrementally (text offsets run on across chunks)."""

    def __init__(self, ctx: ServerContext, k: int, offset: int = 0) -> None:
        self.ctx, self.k, self.offset = ctx, k, offset

    def add(self, lp: CompletionLogprobs, token_id: int, entry: dict[int, Logprob] | None) -> None:
        mine = entry.get(token_id) if entry else None
        text = token_text(self.ctx, token_id, mine)
        lp.tokens.append(text)
        lp.text_offset.append(self.offset)
        self.offset += len(text)
        if entry is None:  # first prompt token: nothing predicts it
            lp.token_logprobs.append(None)
            lp.top_logprobs.append(None)
            return
        lp.token_logprobs.append(finite(mine.logprob) if mine is not None else None)
        lp.top_logprobs.append(
            {
                token_text(self.ctx, tid, e): finite(e.logprob)
                for tid, e in top_entries(entry, self.k)
            }
        )


def _echo_text(ctx: ServerContext, p: _Prompt) -> str:
    if p.text is not None:
        return p.text
    return ctx.require_tokenizer("echo").decode(p.ids)


async def create_completion(ctx: ServerContext, req: CompletionRequest, raw: Request) -> Response:
    arrival = time.time()
    model, lora = ctx.resolve_model(req.model)
    _check_request(ctx, req)
    check_admission(ctx, _num_prompts(req) * req.n)  # before any tokenization
    prompts = await ctx.pool.run(_prompts, ctx, req)
    structured, structured_param = request_structured_outputs(
        req, defaults=ctx.structured_outputs_config
    )
    explicit = "max_tokens" in req.model_fields_set and req.max_tokens is not None
    prompt_lp = req.prompt_logprobs
    if req.echo and req.logprobs is not None:
        prompt_lp = max(req.logprobs, prompt_lp or 0)
    items = []
    base_id = f"cmpl-{uuid.uuid4().hex}"
    for i, p in enumerate(prompts):
        max_tokens = resolve_max_tokens(
            ctx, len(p.ids), req.max_tokens, explicit, prompt_param="prompt"
        )
        params = sampling_params(
            req,
            max_tokens=max_tokens,
            logprobs=req.logprobs,
            prompt_logprobs=prompt_lp,
            defaults=ctx.default_sampling,
            structured_outputs=structured,
            rename={"structured_outputs": structured_param or "structured_outputs"},
        )
        rid = base_id if len(prompts) == 1 else f"{base_id}-{i}"
        prompt = {"prompt_token_ids": p.ids}
        if p.text is not None:
            prompt["prompt"] = p.text
        items.append((rid, prompt, params))
    streams = await admit_all(
        ctx, items, arrival, "prompt", req.priority, structured_param, lora_request=lora
    )
    if req.stream:
        return StreamingResponse(
            _stream(ctx, req, model, base_id, prompts, streams), media_type="text/event-stream"
        )
    try:
        finished, outputs = await until_disconnected(raw, _gather(streams))
    finally:
        for s in streams:
            s.abort()
    if not finished:
        return Response(status_code=499)  # nobody is listening; the requests were aborted
    return JSONResponse(_response(ctx, req, model, base_id, prompts, outputs).model_dump())


async def _gather(streams) -> list:
    return [await collect(s) for s in streams]


def _response(
    ctx, req: CompletionRequest, model: str, rid: str, prompts: list[_Prompt], outputs: list
) -> CompletionResponse:
    choices = []
    usage = UsageInfo(prompt_tokens_details=PromptTokensDetails())
    for pi, (p, out) in enumerate(zip(prompts, outputs)):
        usage.prompt_tokens += len(p.ids)
        usage.prompt_tokens_details.cached_tokens += out.num_cached_tokens or 0
        for c in out.outputs:
            usage.completion_tokens += len(c.token_ids)
            text = c.text
            logprobs = None
            if req.logprobs is not None:
                logprobs = CompletionLogprobs()
                fmt = _LogprobFormatter(ctx, req.logprobs)
                if req.echo:
                    for j, tid in enumerate(p.ids):
                        fmt.add(logprobs, tid, (out.prompt_logprobs or [None] * len(p.ids))[j])
                for tid, entry in zip(c.token_ids, c.logprobs or []):
                    fmt.add(logprobs, tid, entry)
            if req.echo:
                text = _echo_text(ctx, p) + text
            choices.append(
                CompletionChoice(
                    index=pi * req.n + c.index,
                    text=text,
                    logprobs=logprobs,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                    prompt_logprobs=prompt_logprobs_json(out.prompt_logprobs)
                    if req.prompt_logprobs is not None
                    else None,
                )
            )
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    return CompletionResponse(id=rid, model=model, choices=choices, usage=usage)


async def _stream(
    ctx, req: CompletionRequest, model: str, rid: str, prompts: list[_Prompt], streams
) -> AsyncIterator[str]:
    n = req.n
    num_choices = n * len(prompts)
    started = [False] * num_choices
    formatters = [_LogprobFormatter(ctx, req.logprobs or 0) for _ in range(num_choices)]
    completion_tokens = [0] * num_choices
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    continuous = bool(req.stream_options and req.stream_options.continuous_usage_stats)
    prompt_tokens = sum(len(p.ids) for p in prompts)
    cached = 0
    try:
        async for pi, out in merge_streams(streams):
            for c in out.outputs:
                idx = pi * n + c.index
                text = c.text
                logprobs = CompletionLogprobs() if req.logprobs is not None else None
                if req.echo and not started[idx]:
                    p = prompts[pi]
                    echo = _echo_text(ctx, p)
                    if logprobs is not None:
                        plp = out.prompt_logprobs or [None] * len(p.ids)
                        for j, tid in enumerate(p.ids):
                            formatters[idx].add(logprobs, tid, plp[j])
                    text = echo + text
                started[idx] = True
                if logprobs is not None:
                    for tid, entry in zip(c.token_ids, c.logprobs or []):
                        formatters[idx].add(logprobs, tid, entry)
                completion_tokens[idx] += len(c.token_ids)
                if not text and not c.token_ids and c.finish_reason is None:
                    continue
                chunk = CompletionResponse(
                    id=rid,
                    model=model,
                    choices=[
                        CompletionChoice(
                            index=idx,
                            text=text,
                            logprobs=logprobs,
                            finish_reason=c.finish_reason,
                            stop_reason=c.stop_reason,
                        )
                    ],
                )
                if continuous:
                    done = sum(completion_tokens)
                    chunk.usage = UsageInfo(
                        prompt_tokens=prompt_tokens,
                        completion_tokens=done,
                        total_tokens=prompt_tokens + done,
                    )
                yield sse(chunk)
            if out.finished:
                cached += out.num_cached_tokens or 0
        if include_usage:
            done = sum(completion_tokens)
            yield sse(
                CompletionResponse(
                    id=rid,
                    model=model,
                    choices=[],
                    usage=final_usage(prompt_tokens, done, cached),
                )
            )
    except (EngineDeadError, OpenAIError) as e:
        yield stream_error_event(e)
    finally:
        for s in streams:
            s.abort()  # no-op for finished requests; frees the rest when the client went away
    yield SSE_DONE
