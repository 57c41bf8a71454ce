"""POST /v1/chat/completions: messages through the model's chat template, then generation.

The prompt is built exactly as `LLM.chat` builds it (template to text, then encode without special
tokens), so greedy answers equal `LLM.chat`'s; both steps run on the server's worker pool, off the
event loop (offload). A request's own `chat_template` needs --trust-request-chat-template.
Streaming sends a role chunk per choice first, then content deltas, a chunk with `finish_reason`,
optionally a usage chunk, then `[DONE]`.

Structured outputs (jaxllm.entrypoints.openai.structured) hold the output to a grammar. Tools
(jaxllm.entrypoints.openai.tool_calls) reach the chat template; the output becomes
`message.tool_calls` (streamed as `delta.tool_calls`: a call's id, type and name, then its
arguments). With `--reasoning-parser`, the thinking goes to `reasoning_content`. Both parse
the text as it streams (reasoning first, then tool calls in the rest), with the same parser the
whole answer goes through, so streamed and whole answers agree.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import Request

from jaxllm.engine.async_engine import EngineDeadError
from jaxllm.entrypoints.openai.errors import OpenAIError, bad_request
from jaxllm.entrypoints.openai.offload import encode_text
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
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    PromptTokensDetails,
    ToolCall,
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
from jaxllm.entrypoints.openai.tool_calls import ToolPlan, new_tool_call_id, plan_tools
from jaxllm.entrypoints.openai.tool_parsers import ToolCallStreamer
from jaxllm.outputs import CompletionOutput, Logprob


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
        if isinstance(d.get("tool_calls"), list):
            d["tool_calls"] = [_template_tool_call(tc) for tc in d["tool_calls"]]
        out.append(d)
    return out


def _template_tool_call(tc: Any) -> Any:
    """An assistant message's tool call for the chat template: OpenAI sends `arguments` as JSON
    text, templates (Qwen's, Llama's) write them with `tojson`, so they get the object."""
    if not isinstance(tc, dict) or not isinstance(tc.get("function"), dict):
        return tc
    fn = dict(tc["function"])
    if isinstance(fn.get("arguments"), str):
        with contextlib.suppress(ValueError):  # not JSON: the template gets the text
            fn["arguments"] = json.loads(fn["arguments"])
    return {**tc, "function": fn}


def apply_chat_template(
    ctx: ServerContext,
    messages: list[ChatMessage],
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template: str | None = None,
    template_kwargs: dict | None = None,
    param: str = "messages",
    tools: list[dict] | None = None,
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
    if tools:
        kwargs["tools"] = tools
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


def check_request_chat_template(
    ctx: ServerContext, chat_template: str | None, template_kwargs: dict | None
) -> None:
    """A request's own chat template (`chat_template`, or `chat_template_kwargs.chat_template`)
    is code the server would run: a 400 naming the field unless the server was started with
    --trust-request-chat-template (vLLM's rule). Other template kwargs are data and pass."""
    if ctx.trust_request_chat_template:
        return
    if chat_template is not None:
        param = "chat_template"
    elif template_kwargs and template_kwargs.get("chat_template") is not None:
        param = "chat_template_kwargs.chat_template"
    else:
        return
    raise bad_request(
        f"'{param}': this server does not run chat templates sent in requests (start it with "
        "--trust-request-chat-template to allow them); leave the field out to use the model's "
        "template.",
        param,
        "untrusted_chat_template",
    )


def _chat_prompt(
    ctx: ServerContext, req: ChatCompletionRequest, tools: list[dict] | None
) -> tuple[str, list[int]]:
    """The request's prompt text and token ids (on a worker thread: ctx.pool)."""
    text = apply_chat_template(
        ctx,
        req.messages,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        chat_template=req.chat_template,
        template_kwargs=req.chat_template_kwargs,
        tools=tools,
    )
    ids = encode_text(ctx.tokenizer, text, req.add_special_tokens)
    return text, check_token_ids(ctx, truncate(ids, req.truncate_prompt_tokens), "messages")


def _check_request(ctx: ServerContext, req: ChatCompletionRequest) -> None:
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
    model, lora = ctx.resolve_model(req.model)
    _check_request(ctx, req)
    check_request_chat_template(ctx, req.chat_template, req.chat_template_kwargs)
    check_admission(ctx, req.n)  # before any templating or tokenization
    plan = plan_tools(req, parser=ctx.tool_parser, enable_auto=ctx.enable_auto_tools)
    structured, structured_param = request_structured_outputs(
        req, defaults=ctx.structured_outputs_config, tool_schema=plan.schema
    )
    text, ids = await ctx.pool.run(_chat_prompt, ctx, req, plan.template_tools)
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
        rename={
            "logprobs": "top_logprobs",
            "max_tokens": mt_param,
            "structured_outputs": structured_param or "structured_outputs",
        },
        defaults=ctx.default_sampling,
        structured_outputs=structured,
    )
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    streams = await admit_all(
        ctx,
        [(rid, {"prompt": text, "prompt_token_ids": ids}, params)],
        arrival,
        "messages",
        req.priority,
        structured_param,
        lora_request=lora,
    )
    output = _OutputParsing(ctx, plan, text)
    if req.stream:
        return StreamingResponse(
            _stream(ctx, req, model, rid, len(ids), streams[0], output),
            media_type="text/event-stream",
        )
    try:
        finished, out = await until_disconnected(raw, collect(streams[0]))
    finally:
        streams[0].abort()
    if not finished:
        return Response(status_code=499)
    k = req.top_logprobs or 0
    choices = []
    for c in out.outputs:
        message, finish_reason = output.message(c)
        choices.append(
            ChatChoice(
                index=c.index,
                message=message,
                logprobs=_logprobs(ctx, c.token_ids, c.logprobs, k) if req.logprobs else None,
                finish_reason=finish_reason,
                stop_reason=c.stop_reason,
            )
        )
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


def _finish_reason(reason: str | None, num_calls: int) -> str | None:
    """The finish_reason "tool_calls" for an output that called tools and ended on its own."""
    return "tool_calls" if num_calls and reason == "stop" else reason


class _OutputParsing:
    """The request's output parsers (reasoning, tool calls): whole answers and per-choice stream
    state."""

    def __init__(self, ctx: ServerContext, plan: ToolPlan, prompt: str) -> None:
        self.reasoning = ctx.reasoning_parser
        self.plan = plan
        self.prompt = prompt

    @property
    def active(self) -> bool:
        return self.reasoning is not None or self.plan.parses

    def message(self, c: CompletionOutput) -> tuple[ChatResponseMessage, str | None]:
        """A whole choice's message and finish_reason."""
        text: str | None = c.text
        reasoning = None
        if self.reasoning is not None:
            r = self.reasoning.parse(c.text, self.prompt)
            reasoning, text = r.reasoning_content, r.content
        calls = None
        if self.plan.parses:
            parsed = self.plan.parse(text or "")
            if parsed.calls:
                text = parsed.content
                calls = [
                    ToolCall(
                        id=new_tool_call_id(),
                        function=FunctionCall(name=t.name, arguments=t.arguments),
                    )
                    for t in parsed.calls
                ]
        message = ChatResponseMessage(content=text, reasoning_content=reasoning, tool_calls=calls)
        return message, _finish_reason(c.finish_reason, len(calls or []))

    def streamer(self) -> _ChoiceStream:
        return _ChoiceStream(
            self.reasoning.streamer(self.prompt) if self.reasoning is not None else None,
            self.plan.streamer(),
        )


@dataclass
class _ChoiceStream:
    """One streamed choice: its parsers' state and the number of tool calls sent so far."""

    reasoning: Any  # a ReasoningStreamer, or None
    tools: ToolCallStreamer | None
    num_calls: int = 0

    def deltas(self, text: str, final: bool) -> list[DeltaMessage]:
        """The delta messages of the next piece of generated text (`final`: the output ended)."""
        out: list[DeltaMessage] = []
        content = text
        if self.reasoning is not None:
            reasoning, content = self.reasoning.feed(text)
            if final:
                r2, c2 = self.reasoning.finish()
                reasoning, content = reasoning + r2, content + c2
            if reasoning:
                out.append(DeltaMessage(reasoning_content=reasoning))
        if self.tools is None:
            if content:
                out.append(DeltaMessage(content=content))
            return out
        events = self.tools.feed(content) if content else []
        if final:
            events += self.tools.finish()
        for ev in events:
            if ev.content:
                last = out[-1] if out else None
                if last is not None and last.content is not None and last.tool_calls is None:
                    last.content += ev.content
                else:
                    out.append(DeltaMessage(content=ev.content))
            elif ev.name is not None:  # a new call: id, type and name, then its arguments
                index, self.num_calls = self.num_calls, self.num_calls + 1
                call = DeltaToolCall(
                    index=index,
                    id=new_tool_call_id(),
                    type="function",
                    function=DeltaFunctionCall(name=ev.name, arguments=""),
                )
                out.append(DeltaMessage(tool_calls=[call]))
                if ev.arguments:
                    out.append(_arguments_delta(index, ev.arguments))
            elif ev.arguments and self.num_calls:
                out.append(_arguments_delta(self.num_calls - 1, ev.arguments))
        return out


def _arguments_delta(index: int, arguments: str) -> DeltaMessage:
    return DeltaMessage(
        tool_calls=[DeltaToolCall(index=index, function=DeltaFunctionCall(arguments=arguments))]
    )


async def _stream(
    ctx,
    req: ChatCompletionRequest,
    model: str,
    rid: str,
    prompt_tokens: int,
    stream,
    output: _OutputParsing,
) -> AsyncIterator[str]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    continuous = bool(req.stream_options and req.stream_options.continuous_usage_stats)
    k = req.top_logprobs or 0
    completion_tokens = 0
    cached = 0
    parsing = {i: output.streamer() for i in range(req.n)} if output.active else None
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
                finish_reason = c.finish_reason
                if parsing is None:
                    deltas = [DeltaMessage(content=c.text)]
                else:
                    state = parsing[c.index]
                    deltas = state.deltas(c.text, final=c.finish_reason is not None)
                    finish_reason = _finish_reason(finish_reason, state.num_calls)
                    if not deltas:
                        if finish_reason is None and not (req.logprobs and c.token_ids):
                            continue  # held back by a parser: nothing to send yet
                        deltas = [DeltaMessage(content="")]
                for j, delta in enumerate(deltas):
                    last = j == len(deltas) - 1
                    chunk = ChatCompletionChunk(
                        id=rid,
                        model=model,
                        choices=[
                            ChatChunkChoice(
                                index=c.index,
                                delta=delta,
                                logprobs=_logprobs(ctx, c.token_ids, c.logprobs, k)
                                if req.logprobs and j == 0
                                else None,
                                finish_reason=finish_reason if last else None,
                                stop_reason=c.stop_reason if last else None,
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
