"""`--max-request-body-bytes`: request bodies over the limit get a 413 before any of them is
parsed.

A pure ASGI middleware (like APIKeyMiddleware: streaming responses and disconnects pass through).
A `Content-Length` over the limit is answered at once, without reading the body; a body without
one (chunked) is counted as it arrives and refused as soon as it passes the limit. A body within
the limit is handed to the app as one message, then the connection's own messages follow (the
client-disconnect watch of a request sees them as before).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxllm.entrypoints.openai.errors import OpenAIError

__all__ = ["BodySizeLimitMiddleware", "body_too_large"]


def body_too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"The request body is larger than this server's limit of {limit} bytes "
        "(--max-request-body-bytes).",
        code="request_too_large",
    )


class BodySizeLimitMiddleware:
    """413 for HTTP request bodies over `limit()` bytes (None: no limit; read per request)."""

    def __init__(self, app: Any, limit: Callable[[], int | None]) -> None:
        self.app = app
        self._limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        limit = self._limit() if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await body_too_large(limit).response()(scope, receive, send)
            return
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await body_too_large(limit).response()(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return body
            return await receive()

        await self.app(scope, replay, send)
