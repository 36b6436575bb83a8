"""HTTP API for chatbot backends: embeddings, rerank, search and ask, with dynamic batching.

    qwen3vl-rag serve --embedding-model ... --reranker-model ... [--db PATH | --url URL] [--port 8000]

* ``POST /v1/embeddings`` -- OpenAI-compatible; inputs may also be multimodal objects (``{"text", "image",
  "video"}`` with data URIs, or URLs where the operator allows them), ``dimensions`` (Matryoshka),
  ``encoding_format`` float / base64.
* ``POST /v1/rerank`` -- the common rerank shape: ``query``, ``documents``, ``top_n``, ``return_documents`` ->
  ``results[{index, relevance_score}]``.
* ``POST /v1/search``, ``POST /v1/ask`` -- two-stage retrieval over the collection; answer with sources.
* ``GET /health``, ``GET /v1/models``; optional bearer-token auth; bad input is a 4xx naming the item, a limit
  a 413 naming the limit, never a 500.

Serving safely (the rules of ``design.md``):

* Media URLs are fetched only when the operator allows it (``allow_remote_media``, ``fetch_allow``), through
  :mod:`retrieval_pipeline.netfetch` under a strict :class:`~retrieval_pipeline.netfetch.FetchPolicy` (private
  addresses blocked, one resolution, total deadline, byte and count caps, one error text for every failure).
  Files on the server's disk only with ``allow_local_files``.
* Each request is prepared on its own (media loaded, tokenised, checked) in a preparation thread pool under its
  fetch policy and a deadline, before it joins a model batch; requests with URLs use a pool of their own, so slow
  sources only wait on each other. The model runs in its own thread; the batcher gets prepared items only, so a
  bad input is its own request's 4xx and nothing is loaded twice.
* At most ``max_in_flight`` requests are served at once; beyond that 429 with ``Retry-After``. ``/health`` answers
  from the event loop, whatever the workers do.
* ``/health`` shows details only to authorised callers; model names, never folders; search hits name sources
  relative to ``source_root`` (a file name otherwise) unless ``expose_paths``.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..media import SERVER_LIMITS, InputError, InputLimits, LimitError, _download_video, fetch_url, parse_input
from ..netfetch import FetchPolicy, fetch_policy
from ..retriever import QUERY_INSTRUCTION
from .batcher import DynamicBatcher

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_ITEMS = 256
# Paths anyone may read (the token, when set, guards everything else); they are not counted as in flight.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


@dataclass
class ServerConfig:
    api_key: str | None = None  # bearer token; None = no auth. An empty or blank token is refused.
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_items: int = MAX_ITEMS  # inputs per request (embeddings) / documents per request (rerank)
    dynamic_batching: bool = True
    max_wait_ms: float = 5.0  # how long a request waits for others to share its batch
    batch_items: int = 64  # a merged batch closes at this many inputs
    allow_local_files: bool = False  # inputs may name files on the server's disk
    # Media URLs: off by default. allow_remote_media opens public addresses; fetch_allow names hosts (private ones
    # included) that may be reached; with fetch_allow alone only those hosts are.
    allow_remote_media: bool = False
    fetch_allow: tuple[str, ...] = ()
    fetch_max_bytes: int = 64 * 1024 * 1024  # per URL
    fetch_total_bytes: int = 128 * 1024 * 1024  # per request, all URLs together
    fetch_timeout: float = 20.0  # seconds, wall clock, per URL (redirects included)
    max_fetches: int = 16  # URLs (frames included) per request
    max_redirects: int = 3
    request_timeout: float = 60.0  # seconds to prepare one request's inputs (all downloads and decoding)
    body_timeout: float = 15.0  # seconds for a client to send its whole request body
    max_in_flight: int = 16  # requests served at once; beyond: 429 with Retry-After
    retry_after_s: int = 1
    prepare_workers: int = 4  # threads preparing requests (twice: one pool for requests with URLs)
    served_model_names: tuple[str, ...] = ()  # names accepted in a request's "model" (besides the model's own)
    source_root: str | None = None  # search hits name local sources relative to this folder
    expose_paths: bool = False  # True: search hits carry the stored (absolute) source paths
    # characters, images, frames, pixels per item and per request, rerank cost: refusals are 413 naming the limit
    limits: InputLimits = field(default_factory=lambda: SERVER_LIMITS)

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("an empty bearer token would switch authentication off: pass a real token or None")
        if self.max_in_flight < 1 or self.prepare_workers < 1:
            raise ValueError("max_in_flight and prepare_workers must be >= 1")

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy.server(
            allow_remote=self.allow_remote_media,
            allow_hosts=tuple(self.fetch_allow),
            max_bytes=self.fetch_max_bytes,
            deadline=self.fetch_timeout,
            max_redirects=self.max_redirects,
            max_fetches=self.max_fetches,
            max_total_bytes=self.fetch_total_bytes,
        )


# --------------------------------------------------------------------------------------------------------------
# Request and response models


PositiveFloat = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]
Seconds = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]


class MultimodalInput(BaseModel):
    """Any of text, image (URL / data URI), video (URL, or a list of frame URLs), with optional settings."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | list[str] | None = None
    image: str | list[str] | None = None
    video: str | list[str] | list[list[str]] | None = None
    instruction: str | None = None
    fps: PositiveFloat | None = None
    max_frames: PositiveInt | None = None
    video_start: Seconds | None = None
    video_end: Seconds | None = None


InputItem = StrictStr | MultimodalInput


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input: str | list[InputItem] = Field(description="A string, or a list of strings / multimodal objects.")
    model: str | None = Field(
        default=None, description="Checked when given: the served model's name (see /v1/models) or an alias."
    )
    dimensions: PositiveInt | None = Field(default=None, description="Matryoshka dimension.")
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "document"] | None = Field(
        default=None, description="'query' applies the retrieval query instruction."
    )
    instruction: str | None = Field(default=None, description="Instruction for every input (overrides input_type).")
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: InputItem
    documents: list[InputItem]
    top_n: PositiveInt | None = None
    return_documents: bool = False
    instruction: str | None = None
    model: str | None = Field(default=None, description="Checked when given (see /v1/models).")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: InputItem | None = None


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: dict[str, int]


FilterValue = StrictStr | StrictInt | StrictBool | list[StrictStr] | list[StrictInt]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: InputItem
    top_k: int = Field(default=5, ge=1, le=100)
    filters: dict[str, FilterValue] | None = None
    rerank: bool = True


class SearchHit(BaseModel):
    rank: int
    id: str
    score: float
    vector_score: float
    rerank_score: float | None
    modality: str | None = None
    source: str | None = Field(
        default=None, description="URL, or a path relative to the server's source root (a file name otherwise)."
    )
    page: int | None = None
    segment: list[float] | None = None
    chunk: int | None = None
    metadata: dict[str, Any] | None = None
    text: str = ""


class SearchResponse(BaseModel):
    results: list[SearchHit]


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(min_length=1)
    image: str | None = None
    top_k: int = Field(default=3, ge=1, le=20)
    filters: dict[str, FilterValue] | None = None
    rerank: bool = True


class AskResponse(BaseModel):
    question: str
    answer: str
    sources: list[SearchHit]


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None
    index: int | str | None = None
    param: str | None = None
    limit: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 411, 413, 429, 503, 504)}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", **extra: Any):
        self.status, self.message, self.kind, self.extra = status, message, kind, extra


# --------------------------------------------------------------------------------------------------------------


def _plain(item: Any) -> Any:
    return item.model_dump(exclude_none=True) if isinstance(item, BaseModel) else item


def _refs(item: Any) -> list[str]:
    """Every media reference (image, video, frame) of a multimodal object."""
    if not isinstance(item, dict):
        return []
    out: list[str] = []
    for key in ("image", "video"):
        stack = [item[key]] if item.get(key) is not None else []
        while stack:
            ref = stack.pop()
            if isinstance(ref, (list, tuple)):
                stack.extend(ref)
            elif isinstance(ref, str):
                out.append(ref)
    return out


def _has_urls(items: list[Any]) -> bool:
    return any(ref.startswith(("http://", "https://")) for item in items for ref in _refs(item))


def _check_fan_out(items: list[Any], max_fetches: int) -> None:
    """Refuse a request naming more media URLs than it may fetch, before any is fetched."""
    n = sum(ref.startswith(("http://", "https://")) for item in items for ref in _refs(item))
    if n > max_fetches:
        raise LimitError(
            f"{n} media URLs in one request exceed the limit of {max_fetches} (max_fetches)",
            limit="max_fetches",
            value=n,
            maximum=max_fetches,
        )


def _check_sources(items: list[Any], allow_local: bool, *, kinds: list[str] | None = None) -> None:
    """Requests name media by URL or data URI; files on the server's disk only when the server allows it."""
    if allow_local:
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        for key in ("image", "video"):
            if any(not r.startswith(("http://", "https://", "data:")) for r in _refs({key: item.get(key)})):
                kind = kinds[i] if kinds else "input"
                index = None if kind == "query" else (i - 1 if kinds else i)
                raise InputError(
                    "local file paths are not accepted; send an http(s) URL or a data URI",
                    index=index,
                    field=key,
                    kind=kind,
                )


def _materialize(item: Any, timeout: float) -> Any:
    """The item with its media URLs fetched (under the current fetch policy): images and frames as bytes, video
    files as paths in the bounded download cache. What runs later never touches the network."""
    if not isinstance(item, dict):
        return item
    out = dict(item)
    image = out.get("image")
    if image is not None:
        out["image"] = [_fetched(i, timeout) for i in image] if isinstance(image, list) else _fetched(image, timeout)
    video = out.get("video")
    if isinstance(video, str):
        out["video"] = _download_video(video, timeout) if video.startswith(("http://", "https://")) else video
    elif isinstance(video, list):
        out["video"] = [
            [_fetched(f, timeout) for f in v] if isinstance(v, list) else _video_or_frame(v, timeout) for v in video
        ]
    return out


def _fetched(ref: Any, timeout: float) -> Any:
    return fetch_url(ref, timeout) if isinstance(ref, str) and ref.startswith(("http://", "https://")) else ref


def _video_or_frame(ref: Any, timeout: float) -> Any:
    from ..media import _looks_like_frame

    if not (isinstance(ref, str) and ref.startswith(("http://", "https://"))):
        return ref
    return fetch_url(ref, timeout) if _looks_like_frame(ref) else _download_video(ref, timeout)


def _model_name(component: Any) -> str | None:
    """A model's public name: a hub id as is, a local folder by its name only (never a server path)."""
    if component is None:
        return None
    name = str(component.model_name_or_path)
    return Path(name).name if os.path.isabs(name) or os.path.isdir(name) else name


def create_app(
    *,
    embedder: Any = None,
    reranker: Any = None,
    pipeline: Any = None,
    config: ServerConfig | None = None,
) -> FastAPI:
    """The API over loaded models. ``pipeline`` (a :class:`~retrieval_pipeline.pipeline.RAGPipeline`) serves
    ``/v1/search`` and ``/v1/ask``; its embedder / reranker are used when ``embedder`` / ``reranker`` are None."""
    config = config or ServerConfig()
    if pipeline is not None:
        embedder = embedder or pipeline.embedder
        reranker = reranker or (pipeline.reranker if pipeline.reranker_model or pipeline._reranker else None)
    wait = config.max_wait_ms if config.dynamic_batching else 0.0
    policy = config.fetch_policy()
    source_root = Path(config.source_root).expanduser().resolve() if config.source_root else None

    # Threads: preparation (no URLs), preparation of requests with URLs, one per model, and the store.
    local_pool = ThreadPoolExecutor(config.prepare_workers, thread_name_prefix="prepare")
    # no JSON list in a request may be longer than this (inputs, documents, a frame list, a text list)
    max_array = max(config.max_items, config.limits.max_frames_per_video or 0)
    remote_pool = ThreadPoolExecutor(config.prepare_workers, thread_name_prefix="prepare-urls")
    embed_pool = ThreadPoolExecutor(1, thread_name_prefix="embed-model")
    rerank_pool = ThreadPoolExecutor(1, thread_name_prefix="rerank-model")
    store_pool = ThreadPoolExecutor(max(2, config.prepare_workers // 2), thread_name_prefix="search")
    pools = (local_pool, remote_pool, embed_pool, rerank_pool, store_pool)

    def run_embeddings(items: list[Any]) -> list[Any]:
        return list(embedder.embed_prepared(items, normalize=False))

    def run_reranks(prepared: list[Any]) -> list[Any]:
        out: list[Any] = []
        for one in prepared:
            try:
                out.append(reranker.score_prepared(one))
            except Exception as exc:  # one request's failure is its own
                if not isinstance(exc, InputError):
                    logger.exception("rerank of %d documents failed", len(one.pairs))
                out.append(exc)
        return out

    embed_batcher = DynamicBatcher(run_embeddings, max_items=config.batch_items, max_wait_ms=wait, executor=embed_pool)
    rerank_batcher = DynamicBatcher(
        run_reranks, max_items=max(1, config.batch_items // 8), max_wait_ms=wait, executor=rerank_pool
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await embed_batcher.close()
        await rerank_batcher.close()
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="qwen3-vl-rag",
        version=__import__("retrieval_pipeline").__version__,
        description="Qwen3-VL embeddings, reranking and two-stage multimodal retrieval over Qdrant.",
        lifespan=lifespan,
    )
    app.state.embed_batcher = embed_batcher
    app.state.rerank_batcher = rerank_batcher
    app.state.in_flight = 0

    def authorized(request: Request) -> bool:
        if not config.api_key:
            return True
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        return hmac.compare_digest(token.encode(), config.api_key.encode())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if path in OPEN_PATHS:
            return await call_next(request)
        if not authorized(request):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer <key>)", "authentication_error")
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return _error(411, "send a Content-Length header (chunked request bodies are not accepted)")
            try:
                size = int(length)
            except ValueError:
                return _error(400, "invalid Content-Length header")
            if size > config.max_request_bytes:
                return _error(
                    413,
                    f"request body of {size} bytes exceeds the limit of {config.max_request_bytes} (max_request_bytes)",
                    limit="max_request_bytes",
                )
        if app.state.in_flight >= config.max_in_flight:
            response = _error(
                429,
                f"the server is busy: {config.max_in_flight} requests in flight (max_in_flight); retry shortly",
                "rate_limit_error",
                limit="max_in_flight",
            )
            response.headers["Retry-After"] = str(config.retry_after_s)
            return response
        app.state.in_flight += 1
        try:
            if request.method == "POST":
                # The whole body within body_timeout: a client trickling its upload cannot hold a slot for long.
                try:
                    body = await asyncio.wait_for(request.body(), config.body_timeout)
                except asyncio.TimeoutError:
                    return _error(
                        408,
                        f"the request body did not arrive within {config.body_timeout:g} s (body_timeout)",
                        limit="body_timeout",
                    )
            if request.method == "POST" and size > PRECHECK_BYTES:
                # A large JSON body is parsed and measured in a worker thread, so that a 2-million-entry list is
                # refused without the event loop parsing and validating it (/health stays responsive).
                loop = asyncio.get_running_loop()
                problem = await loop.run_in_executor(local_pool, _oversized_array, body, max_array)
                if problem is not None:
                    status, message, limit = problem
                    return _error(status, message, limit=limit)
            return await call_next(request)
        finally:
            app.state.in_flight -= 1

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unknown routes, wrong methods, unparsable bodies: the same error shape as every other refusal
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.kind, **exc.extra)

    @app.exception_handler(LimitError)
    async def limit_error(request: Request, exc: LimitError) -> JSONResponse:
        return _error(413, str(exc), index=exc.index, param=exc.field, limit=exc.limit)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error(400, str(exc), index=exc.index, param=exc.field)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # the most specific problems first (an unknown field beats "not a string" from another union member)
        errors = sorted(exc.errors(), key=lambda e: (e.get("type") != "extra_forbidden", -len(e.get("loc", ()))))
        parts = []
        for err in errors[:3]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("request to %s failed", request.url.path, exc_info=exc)
        return _error(500, "internal server error", "server_error")

    def need(component: Any, what: str) -> Any:
        if component is None:
            raise HTTPError(404, f"this server has no {what} model loaded", "not_found_error")
        return component

    def check_model(requested: str | None, component: Any) -> None:
        if requested is None:
            return
        own = str(component.model_name_or_path)
        accepted = {own, _model_name(component), *config.served_model_names}
        if requested not in accepted:
            served = sorted({_model_name(component), *config.served_model_names})
            raise HTTPError(
                404,
                f"model {requested!r} not found: this endpoint serves {', '.join(repr(m) for m in served)}",
                code="model_not_found",
                param="model",
            )

    async def prepare(fn: Callable[[], Any], *, urls: bool) -> Any:
        """Run one request's preparation in a preparation thread, under the fetch policy and a deadline."""

        def task() -> Any:
            with fetch_policy(policy, deadline=config.request_timeout):
                return fn()

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(remote_pool if urls else local_pool, contextvars.copy_context().run, task)
        try:
            return await asyncio.wait_for(future, config.request_timeout + 1.0)
        except asyncio.TimeoutError:
            raise HTTPError(
                504,
                f"preparing this request's inputs took over {config.request_timeout:g}s (request_timeout)",
                "timeout_error",
                limit="request_timeout",
            ) from None

    def public_source(source: str | None) -> str | None:
        if not source or config.expose_paths or source.startswith(("http://", "https://")):
            return source
        path = Path(source)
        if not path.is_absolute():
            return source
        if source_root is not None:
            try:
                return path.relative_to(source_root).as_posix()
            except ValueError:
                pass
        return path.name

    def hit(h: Any) -> SearchHit:
        data = h.to_dict()
        data["source"] = public_source(data.get("source"))
        return SearchHit(**data)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ok"}
        if authorized(request):
            body.update(
                {
                    "embedding_model": _model_name(embedder),
                    "reranker_model": _model_name(reranker),
                    "collection": pipeline.store.collection if pipeline is not None else None,
                    "batches": {"embeddings": embed_batcher.batches, "embedded_items": embed_batcher.items},
                    "in_flight": app.state.in_flight,
                }
            )
        return body

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = []
        for component, kind in ((embedder, "embedding"), (reranker, "rerank")):
            if component is not None:
                data.append(
                    {
                        "id": _model_name(component),
                        "object": "model",
                        "owned_by": "qwen3-vl-rag",
                        "type": kind,
                        "created": 0,
                        "aliases": list(config.served_model_names),
                    }
                )
        return {"object": "list", "data": data}

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS)
    async def embeddings(body: EmbeddingRequest) -> EmbeddingResponse:
        model = need(embedder, "embedding")
        check_model(body.model, model)
        raw = [body.input] if isinstance(body.input, str) else [_plain(i) for i in body.input]
        if not raw:
            raise HTTPError(400, "input is empty", param="input")
        if len(raw) > config.max_items:
            raise HTTPError(
                413,
                f"{len(raw)} inputs exceed the limit of {config.max_items} per request (max_items)",
                param="input",
                limit="max_items",
            )
        if body.dimensions is not None:
            try:
                model._check_dim(body.dimensions)
            except ValueError as exc:
                raise HTTPError(400, str(exc), param="dimensions") from None
        instruction = body.instruction or (QUERY_INSTRUCTION if body.input_type == "query" else None)
        items = []
        for item in raw:
            item = {"text": item} if isinstance(item, str) else dict(item)
            if instruction and not item.get("instruction"):
                item["instruction"] = instruction
            items.append(item)

        def work() -> list[Any]:
            _check_sources(items, config.allow_local_files)
            return model.prepare(items, limits=config.limits)

        _check_fan_out(items, config.max_fetches)
        encoded = await prepare(work, urls=_has_urls(items))
        vectors = await embed_batcher.submit(encoded)
        data = []
        for i, vec in enumerate(vectors):
            vec = np.asarray(vec, dtype=np.float32)
            if body.dimensions is not None:
                vec = vec[: body.dimensions]
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
            if body.encoding_format == "base64":
                data.append(EmbeddingData(index=i, embedding=base64.b64encode(vec.astype("<f4").tobytes()).decode()))
            else:
                data.append(EmbeddingData(index=i, embedding=vec.tolist()))
        tokens = sum(len(e) for e in encoded)  # what the model read: template, text and vision tokens
        return EmbeddingResponse(
            data=data, model=_model_name(model) or "", usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
        )

    @app.post("/v1/rerank", response_model=RerankResponse, responses=ERRORS)
    async def rerank(body: RerankRequest) -> RerankResponse:
        model = need(reranker, "reranker")
        check_model(body.model, model)
        if len(body.documents) > config.max_items:
            raise HTTPError(
                413,
                f"{len(body.documents)} documents exceed the limit of {config.max_items} (max_items)",
                param="documents",
                limit="max_items",
            )
        query = _plain(body.query)
        documents = [_plain(d) for d in body.documents]
        everything = [query, *documents]
        kinds = ["query"] + ["document"] * len(documents)

        def work() -> Any:
            _check_sources(everything, config.allow_local_files, kinds=kinds)
            if not documents:
                return None
            return model.prepare(query, documents, instruction=body.instruction, limits=config.limits)

        _check_fan_out(everything, config.max_fetches)
        prepared = await prepare(work, urls=_has_urls(everything))
        if prepared is None:
            return RerankResponse(model=_model_name(model) or "", results=[], usage={"documents": 0})
        (scores,) = await rerank_batcher.submit([prepared])
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        if body.top_n is not None:
            order = order[: body.top_n]
        results = [
            RerankResult(
                index=i, relevance_score=scores[i], document=body.documents[i] if body.return_documents else None
            )
            for i in order
        ]
        return RerankResponse(model=_model_name(model) or "", results=results, usage={"documents": len(documents)})

    async def materialized(item: Any) -> Any:
        def work() -> Any:
            _check_sources([item], config.allow_local_files, kinds=["query"])
            try:
                parse_input(item, limits=config.limits)
            except InputError as exc:
                raise exc.at(kind="query") from None
            return _materialize(item, config.fetch_timeout)

        _check_fan_out([item], config.max_fetches)
        return await prepare(work, urls=_has_urls([item]))

    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
    async def search(body: SearchRequest) -> SearchResponse:
        rag = need(pipeline, "collection")
        query = await materialized(_plain(body.query))
        hits = await _store_call(
            store_pool, rag.search, query, top_k=body.top_k, filters=body.filters, rerank=body.rerank
        )
        return SearchResponse(results=[hit(h) for h in hits])

    @app.post("/v1/ask", response_model=AskResponse, responses=ERRORS)
    async def ask(body: AskRequest) -> AskResponse:
        rag = need(pipeline, "collection")
        image = None
        if body.image is not None:
            image = (await materialized({"image": body.image}))["image"]
        answer = await _store_call(
            store_pool, rag.ask, body.question, image=image, top_k=body.top_k, filters=body.filters, rerank=body.rerank
        )
        return AskResponse(question=body.question, answer=answer.text, sources=[hit(h) for h in answer.sources])

    return app


async def _store_call(pool: ThreadPoolExecutor, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from ..pipeline import ModelLoadError
    from ..store import CollectionMismatchError, CollectionNotFoundError, StoreError

    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(pool, contextvars.copy_context().run, lambda: fn(*args, **kwargs))
    except CollectionNotFoundError as exc:
        raise HTTPError(404, str(exc), "not_found_error") from None
    except CollectionMismatchError as exc:
        raise HTTPError(409, str(exc), "conflict_error") from None
    except (StoreError, ModelLoadError) as exc:
        raise HTTPError(503, str(exc), "unavailable_error") from None
    except InputError:
        raise
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None


# Bodies above this size are pre-checked off the event loop (see the guard middleware).
PRECHECK_BYTES = 64 * 1024


def _oversized_array(body: bytes, max_array: int) -> tuple[int, str, str | None] | None:
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


def _error(status: int, message: str, kind: str = "invalid_request_error", **extra: Any) -> JSONResponse:
    body = {"message": message, "type": kind, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(status_code=status, content={"error": body})


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` with uvicorn; the video download cache is removed when the server stops, SIGTERM included
    (uvicorn re-raises a captured SIGTERM after its graceful shutdown, which skips ``atexit``)."""
    import signal
    import threading

    import uvicorn

    from ..media import cleanup_downloads

    def on_sigterm(signum: int, frame: Any) -> None:
        cleanup_downloads()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    logger.info("serving on http://%s:%d", host, port)
    started = time.perf_counter()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        cleanup_downloads()
        logger.info("server stopped after %.0fs", time.perf_counter() - started)
