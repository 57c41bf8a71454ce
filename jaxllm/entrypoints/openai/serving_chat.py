"""POST /v1/chat/completions: messages through the model's chat template, then generation.

The prompt is built exactly as `LLM.chat` builds it (template to text, then encode without special
tokens), so greedy answers equal `LLM.chat`'s. Streaming sends a role chunk per choice first, then
content deltas, a chunk with `finish_reason`, optionally a usage chunk, then `[DONE]`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import Request

from jaxllm.engine.async_engine import EngineDeadError
from jaxllm.entrypoints.openai.errors import OpenAIError, bad_request
from jaxllm.entrypoints.openai.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatLogprobToken,
    ChatMessage,
    ChatResponseMessage,
    ChatTopLogprob,
    DeltaMessage,
    PromptTokensDetails,
    UsageInfo,
)
from jaxllm.entrypoints.openai.serving_common import (
    SSE_DONE,
    ServerContext,
    admit_all,
    check_logprobs,
    check_priority,
    check_token_ids,
    collect,
    final_usage,
    finite,
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
from jaxllm.outputs import Logprob


def messages_to_dicts(messages: list[ChatMessage], param: str = "messages") -> list[dict]:
    """Pydantic messages as the plain dicts chat templates expect (text parts joined)."""
    out = []
    for i, m in enumerate(messages):
        d: dict[str, Any] = dict(m.model_extra or {})
        d["role"] = m.role
        if m.name is not None:
            d["name"] = m.name
        content = m.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise bad_request(
                        f"Only text content parts are supported, got type {part.type!r} in "
                        f"{param}[{i}].content[{j}].",
                        f"{param}.{i}.content.{j}.type",
                    )
                texts.append(part.text)
            content = "\n".join(texts)
        d["content"] = content if content is not None else ""
        out.append(d)
    return out


def apply_chat_template(
    ctx: ServerContext,
    messages: list[ChatMessage],
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template: str | None = None,
    template_kwargs: dict | None = None,
    param: str = "messages",
) -> str:
    tok = ctx.require_tokenizer(param)
    if add_generation_prompt and continue_final_message:
        raise bad_request(
            "'add_generation_prompt' and 'continue_final_message' cannot both be true.",
            "continue_final_message",
        )
    kwargs = dict(template_kwargs or {})
    if continue_final_message:
        kwargs["continue_final_message"] = True
    try:
        return tok.apply_chat_template(
            messages_to_dicts(messages, param),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template or ctx.chat_template,
            **kwargs,
        )
    except OpenAIError:
        raise
    except Exception as e:  # jinja2 errors, missing template, bad kwargs
        raise bad_request(
            f"The chat template could not be applied: {type(e).__name__}: {e}", param
        ) from None


def _check_request(ctx: ServerContext, req: ChatCompletionRequest) -> None:
    if req.tools:
        raise bad_request("'tools' are not supported by this server.", "tools")
    if req.tool_choice not in (None, "none", "auto"):
        raise bad_request("'tool_choice' is not supported by this server.", "tool_choice")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise bad_request("Only 'response_format' of type 'text' is supported.", "response_format")
    if req.stream_options is not None and not req.stream:
        raise bad_request(
            "'stream_options' is only allowed when 'stream' is true.", "stream_options"
        )
    if req.prompt_logprobs is not None and req.stream:
        raise bad_request("'prompt_logprobs' is not available with 'stream'.", "prompt_logprobs")
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs")
    check_logprobs(ctx, req.top_logprobs, "top_logprobs")
    check_logprobs(ctx, req.prompt_logprobs, "prompt_logprobs")
    check_priority(ctx, req.priority)


def _logprobs(ctx: ServerContext, token_ids, entries, k: int) -> ChatLogprobs:
    content = []
    for tid, entry in zip(token_ids, entries or []):
        mine: Logprob | None = entry.get(tid)
        text = token_text(ctx, tid, mine)
        content.append(
            ChatLogprobToken(
                token=text,
                logprob=finite(mine.logprob) if mine is not None else 0.0,
                bytes=list(text.encode("utf-8")),
                top_logprobs=[
                    ChatTopLogprob(
                        token=(t := token_text(ctx, i, e)),
                        logprob=finite(e.logprob),
                        bytes=list(t.encode("utf-8")),
                    )
                    for i, e in top_entries(entry, k)
                ],
            )
        )
    return ChatLogprobs(content=content)


async def create_chat_completion(
    ctx: ServerContext, req: ChatCompletionRequest, raw: Request
) -> Response:
    arrival = time.time()
    model = ctx.check_model(req.model)
    _check_request(ctx, req)
    text = apply_chat_template(
        ctx,
        req.messages,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        chat_template=req.chat_template,
        template_kwargs=req.chat_template_kwargs,
    )
    ids = ctx.tokenizer.encode(text, add_special_tokens=req.add_special_tokens)
    ids = check_token_ids(ctx, truncate(list(ids), req.truncate_prompt_tokens), "messages")
    if req.max_completion_tokens is not None:
        requested, mt_param = req.max_completion_tokens, "max_completion_tokens"
    else:
        requested, mt_param = req.max_tokens, "max_tokens"
    max_tokens = resolve_max_tokens(
        ctx,
        len(ids),
        requested,
        requested is not None,
        prompt_param="messages",
        max_tokens_param=mt_param,
    )
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = sampling_params(
        req,
        max_tokens=max_tokens,
        logprobs=logprobs,
        prompt_logprobs=req.prompt_logprobs,
        rename={"logprobs": "top_logprobs", "max_tokens": mt_param},
        defaults=ctx.default_sampling,
    )
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    streams = await admit_all(
        ctx,
        [(rid, {"prompt": text, "prompt_token_ids": ids}, params)],
        arrival,
        "messages",
        req.priority,
    )
    if req.stream:
        return StreamingResponse(
            _stream(ctx, req, model, rid, len(ids), streams[0]), media_type="text/event-stream"
        )
    try:
        finished, out = await until_disconnected(raw, collect(streams[0]))
    finally:
        streams[0].abort()
    if not finished:
        return Response(status_code=499)
    k = req.top_logprobs or 0
    choices = [
        ChatChoice(
            index=c.index,
            message=ChatResponseMessage(content=c.text),
            logprobs=_logprobs(ctx, c.token_ids, c.logprobs, k) if req.logprobs else None,
            finish_reason=c.finish_reason,
            stop_reason=c.stop_reason,
        )
        for c in out.outputs
    ]
    completion = sum(len(c.token_ids) for c in out.outputs)
    usage = UsageInfo(
        prompt_tokens=len(ids),
        completion_tokens=completion,
        total_tokens=len(ids) + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=out.num_cached_tokens or 0),
    )
    resp = ChatCompletionResponse(
        id=rid,
        model=model,
        choices=choices,
        usage=usage,
        prompt_logprobs=prompt_logprobs_json(out.prompt_logprobs)
        if req.prompt_logprobs is not None
        else None,
    )
    return JSONResponse(resp.model_dump())


async def _stream(
    ctx, req: ChatCompletionRequest, model: str, rid: str, prompt_tokens: int, stream
) -> AsyncIterator[str]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    continuous = bool(req.stream_options and req.stream_options.continuous_usage_stats)
    k = req.top_logprobs or 0
    completion_tokens = 0
    cached = 0
    try:
        for i in range(req.n):
            yield sse(
                ChatCompletionChunk(
                    id=rid,
                    model=model,
                    choices=[
                        ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))
                    ],
                )
            )
        async for out in stream:
            for c in out.outputs:
                completion_tokens += len(c.token_ids)
                if not c.text and not c.token_ids and c.finish_reason is None:
                    continue
                chunk = ChatCompletionChunk(
                    id=rid,
                    model=model,
                    choices=[
                        ChatChunkChoice(
                            index=c.index,
                            delta=DeltaMessage(content=c.text),
                            logprobs=_logprobs(ctx, c.token_ids, c.logprobs, k)
                            if req.logprobs
                            else None,
                            finish_reason=c.finish_reason,
                            stop_reason=c.stop_reason,
                        )
                    ],
                )
                if continuous:
                    chunk.usage = UsageInfo(
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens,
                    )
                yield sse(chunk)
            if out.finished:
                cached = out.num_cached_tokens or 0
        if include_usage:
            yield sse(
                ChatCompletionChunk(
                    id=rid,
                    model=model,
                    choices=[],
                    usage=final_usage(prompt_tokens, completion_tokens, cached),
                )
            )
    except (EngineDeadError, OpenAIError) as e:
        yield stream_error_event(e)
    finally:
        stream.abort()
    yield SSE_DONE
