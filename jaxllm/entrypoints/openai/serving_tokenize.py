"""POST /tokenize and POST /detokenize (vLLM's shapes), their work off the event loop.

Both routes are open without an API key (as in vLLM), so they take any text up to the body limit:
templating, tokenization, detokenization and the JSON of the answer run on the server's worker
pool (jaxllm.entrypoints.openai.offload).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse, Response

from jaxllm.entrypoints.openai.errors import OpenAIError
from jaxllm.entrypoints.openai.offload import decode_ids, encode_text, json_int_list
from jaxllm.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
)
from jaxllm.entrypoints.openai.serving_chat import apply_chat_template
from jaxllm.entrypoints.openai.serving_common import ServerContext, check_token_ids

__all__ = ["create_detokenize", "create_tokenize"]


async def create_tokenize(ctx: ServerContext, req: TokenizeRequest) -> Response:
    ctx.check_model(req.model)
    ctx.require_tokenizer("prompt")
    if (req.prompt is None) == (req.messages is None):
        raise OpenAIError(
            400,
            "Give exactly one of 'prompt' and 'messages'.",
            param="prompt",
            code="invalid_value",
        )
    body = await ctx.pool.run(_tokenize, ctx, req)
    return Response(body, media_type="application/json")


def _tokenize(ctx: ServerContext, req: TokenizeRequest) -> bytes:
    """The response body (JSON of TokenizeResponse), on a worker thread."""
    if req.messages is not None:
        text = apply_chat_template(
            ctx, req.messages, add_generation_prompt=req.add_generation_prompt
        )
        special = False if req.add_special_tokens is None else req.add_special_tokens
    else:
        text = req.prompt or ""
        special = True if req.add_special_tokens is None else req.add_special_tokens
    ids = encode_text(ctx.tokenizer, text, special)
    # TokenizeResponse's fields, in order; the ids in slices (offload.json_int_list)
    head = f'{{"count":{len(ids)},"max_model_len":{int(ctx.max_model_len)},"tokens":'
    return f"{head}{json_int_list(ids)}}}".encode()


async def create_detokenize(ctx: ServerContext, req: DetokenizeRequest) -> Response:
    ctx.check_model(req.model)
    tok = ctx.require_tokenizer("tokens")

    def detokenize() -> str:
        ids = check_token_ids(ctx, req.tokens, "tokens") if req.tokens else []
        return decode_ids(tok, ids)

    text = await ctx.pool.run(detokenize)
    return JSONResponse(DetokenizeResponse(prompt=text).model_dump())
