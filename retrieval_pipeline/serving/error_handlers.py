"""Every refusal as one JSON shape, ``{"error": {message, type, ...}}``, and the exception handlers that make it.

The library's errors get their status and type from the one table in :mod:`retrieval_pipeline.errors`
(:func:`~retrieval_pipeline.errors.classify`); :class:`HTTPError` is for refusals only the server makes (no model
loaded, an unknown model name, a request over a server limit, a preparation deadline).
"""

from __future__ import annotations

import logging
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError, LimitError, RAGError, StoreError, classify

logger = logging.getLogger(__name__)


class HTTPError(Exception):
    """A refusal of the server's own: ``status``, ``message``, error ``kind`` and extra body fields."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.extra = status, message, kind, extra
        self.headers = headers or {}


def error_response(status: int, message: str, kind: str = "invalid_request_error", **extra: Any) -> JSONResponse:
    """The error body every refusal has; extra fields (``index``, ``param``, ``limit``, ...) only when set."""
    body = {"message": message, "type": kind, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(status_code=status, content={"error": body})


async def _library_error(request: Request, exc: Exception) -> JSONResponse:
    """A :class:`~retrieval_pipeline.errors.RAGError` or ``ValueError``, answered as the error table says. A
    bad input names its item and field, a limit the setting."""
    kind = classify(exc)
    if kind is None or isinstance(exc, pydantic.ValidationError):  # a response the server failed to build: a bug
        return await _server_error(request, exc)
    if isinstance(exc, StoreError):  # the operator's log gets the paths; a client only what it can act on
        logger.error("request to %s: %s", request.url.path, exc)
        busy = "another process has it open" in str(exc)
        reason = "another process has the embedded store open" if busy else "see the server's log"
        return error_response(kind.http_status, f"the collection is unavailable ({reason})", kind.type)
    extra: dict[str, Any] = {}
    if isinstance(exc, InputError):
        extra = {"index": exc.index, "param": exc.field}
    if isinstance(exc, LimitError):
        extra["limit"] = exc.limit
    return error_response(kind.http_status, str(exc), kind.type, **extra)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("request to %s failed", request.url.path, exc_info=exc)
    return error_response(500, "internal server error", "server_error")


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # the most specific problems first (an unknown field beats "not a string" from another union member)
    errors = sorted(exc.errors(), key=lambda e: (e.get("type") != "extra_forbidden", -len(e.get("loc", ()))))
    parts = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return error_response(422, "; ".join(parts) or "invalid request")


async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # unknown routes, wrong methods, unparsable bodies: the same error shape as every other refusal
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(exc.status_code, str(exc.detail), kind)


async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
    response = error_response(exc.status, exc.message, exc.kind, **exc.extra)
    response.headers.update(exc.headers)
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers: bad input is a 4xx naming the item, a limit a 413 naming the limit, a bug a 500
    that says nothing of the server's insides (it is logged)."""
    app.add_exception_handler(StarletteHTTPException, _starlette_error)
    app.add_exception_handler(HTTPError, _http_error)
    app.add_exception_handler(RAGError, _library_error)
    app.add_exception_handler(ValueError, _library_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _server_error)
