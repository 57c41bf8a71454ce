"""Errors in OpenAI's JSON shape, and the FastAPI handlers that produce them.

Every error the server returns has the body

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

Status codes: 400 invalid parameter (`param` names it), prompt over the context length (code
`context_length_exceeded`, the message gives both numbers), malformed JSON (`invalid_json`) or
unknown argument (`unrecognized_argument`); 401 missing or wrong API key (`invalid_api_key`);
404 unknown model (`model_not_found`) or route; 405 wrong method; 413 a request body over
--max-request-body-bytes (`request_too_large`, from body_limit); 503 + `Retry-After` when the
waiting queue is over its bound (`server_overloaded`), or when the engine loop died (`engine_dead`:
a step raised; the HTTP server stays up and says so); 500 anything else (the server stays up).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jaxllm.engine.async_engine import EngineDeadError

logger = logging.getLogger(__name__)

__all__ = [
    "OpenAIError",
    "bad_request",
    "context_length_exceeded",
    "error_body",
    "install_error_handlers",
    "model_not_found",
    "overloaded",
    "param_from_message",
    "unauthorized",
]


class OpenAIError(Exception):
    """An error to send to the client as OpenAI's JSON error object."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(
    message: str, param: str | None = None, code: str | None = "invalid_value"
) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def context_length_exceeded(message: str, param: str | None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="context_length_exceeded")


def model_not_found(model: str, available: Iterable[str]) -> OpenAIError:
    names = ", ".join(available)
    return OpenAIError(
        404,
        f"The model `{model}` does not exist (this server serves: {names}).",
        param="model",
        code="model_not_found",
    )


def unauthorized(message: str) -> OpenAIError:
    return OpenAIError(401, message, code="invalid_api_key")


def overloaded(message: str, retry_after_s: int) -> OpenAIError:
    return OpenAIError(
        503,
        message,
        type="server_error",
        code="server_overloaded",
        headers={"Retry-After": str(max(1, int(retry_after_s)))},
    )


def param_from_message(message: str, known: Iterable[str]) -> str | None:
    """The parameter a validation message starts with ("top_p must be ...") when it is known."""
    m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", message)
    if m and m.group(1) in set(known):
        return m.group(1)
    return None


# ----------------------------------------------------------------------------- request validation


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    """FastAPI/pydantic body errors (422 by default) as one OpenAI 400 naming the parameter."""
    errors = list(exc.errors())
    if not errors:
        return bad_request("invalid request body", None)
    for err in errors:
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            where = err.get("loc", ())[-1] if err.get("loc") else None
            at = f" at character {where}" if isinstance(where, int) else ""
            return bad_request(
                f"Malformed JSON body{at}: {detail}".rstrip(": "), None, "invalid_json"
            )
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    # Drop pydantic's union-member tags (e.g. "str", "list[int]") from the location.
    loc = [p for p in loc if not re.fullmatch(r"[a-z_]+\[.*\]|str|int|float|bool|function-.*", p)]
    param = ".".join(loc) or None
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return bad_request(
            f"Unrecognized request argument supplied: {param}", param, "unrecognized_argument"
        )
    if kind == "missing":
        if param is None:
            return bad_request(
                "The request body is missing: send a JSON object.", None, "invalid_json"
            )
        return bad_request(
            f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
        )
    if kind in ("model_attributes_type", "dict_type") and param is None:
        return bad_request("The request body must be a JSON object.", None, "invalid_json")
    msg = err.get("msg", "invalid value")
    value = err.get("input")
    shown = json.dumps(value)[:80] if _jsonable(value) else repr(value)[:80]
    return bad_request(f"Invalid value for '{param}': {msg} (got {shown}).", param)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def install_error_handlers(app: FastAPI) -> None:
    """Route every error (ours, validation, routing, unexpected) to OpenAI's error shape."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(EngineDeadError)
    async def _dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        return OpenAIError(503, str(exc), type="server_error", code="engine_dead").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = {
            404: f"Not found: {request.method} {request.url.path}",
            405: f"Method {request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return OpenAIError(
            exc.status_code, message, type=kind, code=None, headers=dict(exc.headers or {})
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return OpenAIError(
            500,
            f"Internal server error: {type(exc).__name__}: {exc}",
            type="server_error",
            code="internal_error",
        ).response()
