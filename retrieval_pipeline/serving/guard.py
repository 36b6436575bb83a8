"""The gate in front of every route but the open ones: bearer-token auth, request size (``Content-Length``
required), at most ``max_in_flight`` requests at once (more wait in a bounded queue; 429 with ``Retry-After``
past it), the whole body within
``body_timeout``, and oversized JSON lists refused off the event loop so that ``/health`` stays responsive.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from concurrent.futures import Executor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .config import ServerConfig
from .error_handlers import error_response
from .keys import ANONYMOUS, TOKEN_ADMIN, KeyRing, Principal, RateLimits, Role, retry_after

# Paths anyone may read (the token, when set, guards everything else); they are not counted as in flight.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/"})
# Multipart uploads: their own size limit (max_upload_bytes)
UPLOAD_PATHS = frozenset({"/v1/files"})
# The search page's own files (the shell holds no data; it asks for the token and sends it with every call).
OPEN_PREFIXES = ("/static/",)


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


def principal_of(request: Request, config: ServerConfig, keys: KeyRing | None) -> Principal | None:
    """Who the request comes from: the ``--token`` admin, a ``--keys`` key, anyone on a server without auth; None
    for a missing or wrong key. Secrets are compared in constant time."""
    if keys is None and not config.api_key:
        return ANONYMOUS
    token = bearer(request)
    if not token:
        return None
    if config.api_key and hmac.compare_digest(token.encode(), config.api_key.encode()):
        return TOKEN_ADMIN
    return keys.find(token) if keys is not None else None


def _refusal(
    request: Request, config: ServerConfig, keys: KeyRing | None, limits: RateLimits
) -> tuple[JSONResponse | None, int]:
    """(a refusal from the headers alone, or None; the announced body size). Sets ``request.state.principal``
    and ``request.state.key_name`` (the key's name, for metrics and logs)."""
    principal = principal_of(request, config, keys)
    if principal is None:
        return error_response(
            401, "missing or wrong bearer token (Authorization: Bearer <key>)", "authentication_error"
        ), 0
    request.state.principal = principal
    request.state.key_name = principal.name
    wait = limits.take(principal)
    if wait is not None:
        response = error_response(
            429,
            f"key {principal.name!r} is over its limit of {principal.rpm} requests per minute (rpm); retry later",
            "rate_limit_error",
            limit="rpm",
        )
        response.headers["Retry-After"] = retry_after(wait)
        return response, 0
    if request.url.path == "/metrics" and not principal.can(Role.ADMIN):
        return error_response(403, "/metrics needs an admin key", "permission_error"), 0
    if request.url.path in UPLOAD_PATHS and request.method == "POST" and not principal.can(Role.WRITE):
        # refused before its body is read
        return error_response(403, f"key {principal.name!r} (read) may not upload files", "permission_error"), 0
    if request.method != "POST":
        return None, 0
    length = request.headers.get("content-length")
    if length is None:
        return error_response(411, "send a Content-Length header (chunked request bodies are not accepted)"), 0
    try:
        size = int(length)
    except ValueError:
        return error_response(400, "invalid Content-Length header"), 0
    limit, name = (
        (config.max_upload_bytes, "max_upload_bytes")
        if request.url.path in UPLOAD_PATHS
        else (config.max_request_bytes, "max_request_bytes")
    )
    if size > limit:
        return error_response(
            413, f"request body of {size} bytes exceeds the limit of {limit} ({name})", limit=name
        ), size
    return None, size


def _busy(config: ServerConfig, limit: str, why: str) -> JSONResponse:
    response = error_response(
        429,
        f"the server is busy: {config.max_in_flight} requests in flight and {why}; retry shortly",
        "rate_limit_error",
        limit=limit,
    )
    response.headers["Retry-After"] = str(config.retry_after_s)
    return response


class Admission:
    """``max_in_flight`` slots; a request that finds them taken waits for one, in arrival order, while the queue
    holds fewer than ``max_queued`` requests announcing at most ``max_queued_bytes`` of body, and for at most
    ``queue_timeout`` seconds. A waiting request holds nothing of its body (it is read once admitted)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.slots = asyncio.Semaphore(config.max_in_flight)
        self.in_flight = 0
        self.waiting = 0
        self.waiting_bytes = 0

    async def enter(self, size: int) -> JSONResponse | None:
        """None once a slot is held (release it with :meth:`leave`); else the 429 to answer."""
        config = self.config
        if not self.slots.locked():
            await self.slots.acquire()  # free now: no wait
        else:
            if self.waiting >= config.max_queued:
                return _busy(config, "max_queued", f"{self.waiting} waiting (max_queued)")
            if self.waiting_bytes + size > config.max_queued_bytes:
                return _busy(config, "max_queued_bytes", f"{self.waiting_bytes} bytes waiting (max_queued_bytes)")
            self.waiting += 1
            self.waiting_bytes += size
            try:
                await asyncio.wait_for(self.slots.acquire(), config.queue_timeout)
            except asyncio.TimeoutError:
                return _busy(config, "queue_timeout", f"no slot came within {config.queue_timeout:g} s (queue_timeout)")
            finally:
                self.waiting -= 1
                self.waiting_bytes -= size
        self.in_flight += 1
        return None

    def leave(self) -> None:
        self.in_flight -= 1
        self.slots.release()


async def _body_refusal(request: Request, size: int, config: ServerConfig, pool: Executor) -> JSONResponse | None:
    """The whole body within ``body_timeout`` (a client trickling its upload cannot hold a slot for long); a
    large JSON body is parsed and measured in a worker thread, so that a 2-million-entry list is refused without
    the event loop parsing and validating it."""
    try:
        body = await asyncio.wait_for(request.body(), config.body_timeout)
    except asyncio.TimeoutError:
        return error_response(
            408,
            f"the request body did not arrive within {config.body_timeout:g} s (body_timeout)",
            limit="body_timeout",
        )
    content_type = request.headers.get("content-type", "")
    if size <= PRECHECK_BYTES or (content_type and "json" not in content_type.lower()):
        return None  # (an upload is not JSON: parsing it would cost several times its size for nothing)
    # no JSON list in a request may be longer than this (inputs, documents, a frame list, a text list)
    max_array = max(config.max_items, config.limits.max_frames_per_video or 0)
    problem = await asyncio.get_running_loop().run_in_executor(pool, oversized_array, body, max_array)
    if problem is None:
        return None
    status, message, limit = problem
    return error_response(status, message, limit=limit)


def install_guard(app: FastAPI, config: ServerConfig, pool: Executor) -> None:
    """Add the gate to ``app``; ``pool`` runs the pre-check of large bodies. ``app.state.admission`` counts the
    requests in flight and waiting."""
    admission = app.state.admission = Admission(config)
    keys = app.state.keys = KeyRing(config.keys_file) if config.keys_file else None
    limits = app.state.rate_limits = RateLimits()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or (path == "/metrics" and config.public_metrics):
            return await call_next(request)
        refusal, size = _refusal(request, config, keys, limits)
        if refusal is not None:
            return refusal
        busy = await admission.enter(size)
        if busy is not None:
            return busy
        try:
            if request.method == "POST":
                refusal = await _body_refusal(request, size, config, pool)
                if refusal is not None:
                    return refusal
            return await call_next(request)
        finally:
            admission.leave()


TOKEN_IDS = (
    "input: token ids carry no tokenizer, and embedding them in this model's vocabulary would give wrong vectors; "
    "send the text instead (LangChain's OpenAIEmbeddings: check_embedding_ctx_length=False; LlamaIndex and the "
    "openai SDK send text by default)"
)

# Bodies above this size are pre-checked off the event loop (see the guard middleware).
PRECHECK_BYTES = 64 * 1024


def oversized_array(body: bytes, max_array: int) -> tuple[int, str, str | None] | None:
    """(status, message, limit) for the first JSON array in ``body`` longer than ``max_array`` entries, or a body
    nested too deeply to parse; None otherwise (a body that is not JSON: the route's own validation answers)."""
    try:
        stack = [json.loads(body)]
    except RecursionError:
        return 400, "the JSON body is nested too deeply", None
    except ValueError:
        return None
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            if len(value) > max_array and all(type(v) is int for v in value):
                return 400, TOKEN_IDS, None  # token ids (LangChain's default): say what to send instead
            if len(value) > max_array:
                return (
                    413,
                    f"a list of {len(value)} entries exceeds the limit of {max_array} per list (max_items)",
                    "max_items",
                )
            stack.extend(v for v in value if isinstance(v, (list, dict)))
        elif isinstance(value, dict):
            stack.extend(v for v in value.values() if isinstance(v, (list, dict)))
    return None
