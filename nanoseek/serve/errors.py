"""Errors in the OpenAI shape with DeepSeek's status codes.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}``, the body
the ``openai`` SDK reads (it maps the status to its exception class: 400 ``BadRequestError``,
401 ``AuthenticationError``, 422 ``UnprocessableEntityError``, 429 ``RateLimitError``, 5xx
``InternalServerError``; 402 is a plain ``APIStatusError``). DeepSeek's codes
(api-docs.deepseek.com, quick_start/error_codes):

=====  ===================  =====================================================
400    invalid format       body is not JSON / not an object / misses a field
401    authentication fails wrong or missing API key
402    insufficient balance the key's configured budget is spent
422    invalid parameters   a value out of range or of the wrong type
429    rate limit reached   over the configured requests per minute
503    server overloaded    too many requests in flight (``x-should-retry: false``)
=====  ===================  =====================================================

A bad request never gets a 500: the 500 handler is for bugs in the server only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("nanoseek.serve")

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "invalid_request_error",
    403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
    413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
    500: "server_error", 503: "server_error",
}
ERROR_CODES = {
    400: "invalid_request_error", 401: "invalid_api_key", 402: "insufficient_balance",
    404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
    422: "invalid_parameters", 429: "rate_limit_exceeded", 500: "internal_error",
    503: "server_overloaded",
}
# pydantic error types that mean "the body's structure is wrong" (400) rather than "a value is
# wrong" (422).
FORMAT_ERROR_TYPES = frozenset({"json_invalid", "json_type", "missing", "model_type",
                                "model_attributes_type", "dict_type", "list_type",
                                "string_unicode"})


class APIError(Exception):
    """An error answered with ``status`` and the OpenAI error body.

    ``param`` names the request field at fault (or None); ``code`` defaults to DeepSeek's code
    name for the status; ``headers`` are added to the response (``retry-after``, …).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or ERROR_CODES.get(status, "error")
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = "invalid_request_error") -> dict[str, Any]:
    """The OpenAI error object, as the SDK parses it (also sent mid-stream as an SSE event)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_validation_error(error: ValidationError | RequestValidationError) -> APIError:
    """Map a pydantic validation error to a 400 (bad format) or 422 (bad parameter).

    The first error decides; its location (without the ``body`` prefix) becomes ``param``.
    """
    errors = error.errors()
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _is_type_tag(p)]
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    kind = first.get("type", "")
    status = 400 if kind in FORMAT_ERROR_TYPES or (loc[:1] == ["messages"] and len(loc) <= 2) \
        else 422
    if kind == "json_invalid":
        message = f"request body is not valid JSON: {first.get('msg', '')}"
    elif kind == "missing":
        message = f"missing required field {where!r}"
    else:
        message = f"{where}: {first.get('msg', 'invalid value')}"
        if "input" in first and kind not in ("model_type", "dict_type"):
            message += f" (got {_short(first['input'])})"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return APIError(status, message, param=param)


def _is_type_tag(part: Any) -> bool:
    """pydantic names the union member in an error's location (``content.str``); drop it."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "list", "dict")
                                      or "[" in part or part.startswith("function-"))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error raised in ``app`` with the OpenAI error body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        return from_validation_error(error).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return APIError(error.status_code, message,
                        headers=getattr(error, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, f"internal server error ({type(error).__name__}); please retry "
                        "and report it if it persists").response()
