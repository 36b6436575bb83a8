"""HTTP API for chatbot backends: embeddings, rerank, search and ask, with dynamic batching.

    qwen3vl-rag serve --embedding-model ... --reranker-model ... [--db PATH | --url URL] [--port 8000]

* ``POST /v1/embeddings`` -- OpenAI-compatible; inputs may also be multimodal objects (``{"text", "image",
  "video"}`` with URLs or data URIs), ``dimensions`` (Matryoshka), ``encoding_format`` float / base64.
* ``POST /v1/rerank`` -- the common rerank shape: ``query``, ``documents``, ``top_n``, ``return_documents`` ->
  ``results[{index, relevance_score}]``.
* ``POST /v1/search``, ``POST /v1/ask`` -- two-stage retrieval over the collection; answer with sources.
* ``GET /health``, ``GET /v1/models``; optional bearer-token auth; request size and item-count limits; bad input
  is a 4xx naming the item, never a 500.

Concurrent embedding requests are merged into model batches (:class:`~retrieval_pipeline.batcher.DynamicBatcher`);
models run in worker threads, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .batcher import DynamicBatcher
from .media import InputError, parse_input
from .retriever import QUERY_INSTRUCTION

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_ITEMS = 256


@dataclass
class ServerConfig:
    api_key: str | None = None  # bearer token; None = no auth
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_items: int = MAX_ITEMS  # inputs per request (embeddings) / documents per request (rerank)
    dynamic_batching: bool = True
    max_wait_ms: float = 5.0  # how long a request waits for others to share its batch
    batch_items: int = 64  # a merged batch closes at this many inputs
    allow_local_files: bool = False  # inputs may name files on the server's disk


# --------------------------------------------------------------------------------------------------------------
# Request and response models


class MultimodalInput(BaseModel):
    """Any of text, image (URL / data URI), video (URL, or a list of frame URLs), with optional settings."""

    model_config = ConfigDict(extra="forbid")
    text: str | list[str] | None = None
    image: str | list[str] | None = None
    video: str | list[str] | list[list[str]] | None = None
    instruction: str | None = None
    fps: float | None = Field(default=None, gt=0)
    max_frames: int | None = Field(default=None, ge=1)
    video_start: float | None = Field(default=None, ge=0)
    video_end: float | None = Field(default=None, ge=0)


InputItem = str | MultimodalInput


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str | list[InputItem] = Field(description="A string, or a list of strings / multimodal objects.")
    model: str | None = Field(default=None, description="Ignored beyond a check: the served model answers.")
    dimensions: int | None = Field(default=None, ge=1, description="Matryoshka dimension.")
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
    model_config = ConfigDict(extra="forbid")
    query: InputItem
    documents: list[InputItem]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    instruction: str | None = None
    model: str | None = None


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: InputItem | None = None


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: dict[str, int]


FilterValue = str | int | bool | list[str] | list[int]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
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
    source: str | None = None
    page: int | None = None
    segment: list[float] | None = None
    chunk: int | None = None
    metadata: dict[str, Any] | None = None
    text: str = ""


class SearchResponse(BaseModel):
    results: list[SearchHit]


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
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
    index: int | str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 411, 413, 503)}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", **extra: Any):
        self.status, self.message, self.kind, self.extra = status, message, kind, extra


# --------------------------------------------------------------------------------------------------------------


def _plain(item: Any) -> Any:
    return item.model_dump(exclude_none=True) if isinstance(item, BaseModel) else item


def _check_sources(items: list[Any], allow_local: bool) -> None:
    """Requests name media by URL or data URI; files on the server's disk only when the server allows it."""
    if allow_local:
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        for key in ("image", "video"):
            refs = item.get(key)
            stack = [refs] if refs is not None else []
            while stack:
                ref = stack.pop()
                if isinstance(ref, list):
                    stack.extend(ref)
                elif isinstance(ref, str) and not ref.startswith(("http://", "https://", "data:")):
                    raise InputError(
                        "local file paths are not accepted; send an http(s) URL or a data URI", index=i, field=key
                    )


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

    def run_embeddings(items: list[Any]) -> list[np.ndarray]:
        return list(embedder.embed(items, normalize=False))

    def run_reranks(requests: list[tuple[Any, list[Any], str | None]]) -> list[Any]:
        out: list[Any] = []
        for query, documents, instruction in requests:
            try:
                out.append(reranker.score(query, documents, instruction=instruction))
            except InputError as exc:  # one bad request must not fail the others in its batch
                out.append(exc)
        return out

    embed_batcher = DynamicBatcher(run_embeddings, max_items=config.batch_items, max_wait_ms=wait)
    rerank_batcher = DynamicBatcher(run_reranks, max_items=max(1, config.batch_items // 8), max_wait_ms=wait)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await embed_batcher.close()
        await rerank_batcher.close()

    app = FastAPI(
        title="qwen3-vl-rag",
        version=__import__("retrieval_pipeline").__version__,
        description="Qwen3-VL embeddings, reranking and two-stage multimodal retrieval over Qdrant.",
        lifespan=lifespan,
    )
    app.state.embed_batcher = embed_batcher
    app.state.rerank_batcher = rerank_batcher

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if config.api_key and request.url.path not in ("/health", "/docs", "/openapi.json"):
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), config.api_key.encode()):
                return _error(
                    401, "missing or wrong bearer token (Authorization: Bearer <key>)", "authentication_error"
                )
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return _error(411, "send a Content-Length header (chunked request bodies are not accepted)")
            try:
                size = int(length)
            except ValueError:
                return _error(400, "invalid Content-Length header")
            if size > config.max_request_bytes:
                return _error(413, f"request body of {size} bytes exceeds the limit of {config.max_request_bytes}")
        return await call_next(request)

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.kind, **exc.extra)

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

    def need(component: Any, what: str) -> Any:
        if component is None:
            raise HTTPError(404, f"this server has no {what} model loaded", "not_found_error")
        return component

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "embedding_model": getattr(embedder, "model_name_or_path", None),
            "reranker_model": getattr(reranker, "model_name_or_path", None),
            "collection": pipeline.store.collection if pipeline is not None else None,
            "batches": {"embeddings": embed_batcher.batches, "embedded_items": embed_batcher.items},
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = []
        for component, kind in ((embedder, "embedding"), (reranker, "rerank")):
            if component is not None:
                data.append(
                    {
                        "id": component.model_name_or_path,
                        "object": "model",
                        "owned_by": "qwen3-vl-rag",
                        "type": kind,
                        "created": 0,
                    }
                )
        return {"object": "list", "data": data}

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS)
    async def embeddings(body: EmbeddingRequest) -> EmbeddingResponse:
        model = need(embedder, "embedding")
        raw = [body.input] if isinstance(body.input, str) else [_plain(i) for i in body.input]
        if not raw:
            raise HTTPError(400, "input is empty", param="input")
        if len(raw) > config.max_items:
            raise HTTPError(413, f"{len(raw)} inputs exceed the limit of {config.max_items} per request", param="input")
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
        _check_sources(items, config.allow_local_files)
        for i, item in enumerate(items):
            parse_input(item, index=i, check_files=config.allow_local_files)
        vectors = await embed_batcher.submit(items)
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
        tokens = _count_tokens(model, items)
        return EmbeddingResponse(
            data=data, model=model.model_name_or_path, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
        )

    @app.post("/v1/rerank", response_model=RerankResponse, responses=ERRORS)
    async def rerank(body: RerankRequest) -> RerankResponse:
        model = need(reranker, "reranker")
        if len(body.documents) > config.max_items:
            raise HTTPError(
                413, f"{len(body.documents)} documents exceed the limit of {config.max_items}", param="documents"
            )
        query = _plain(body.query)
        documents = [_plain(d) for d in body.documents]
        _check_sources([query] + documents, config.allow_local_files)
        if not documents:
            return RerankResponse(model=model.model_name_or_path, results=[], usage={"documents": 0})
        (scores,) = await rerank_batcher.submit([(query, documents, body.instruction)])
        if isinstance(scores, InputError):
            raise scores
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        if body.top_n is not None:
            order = order[: body.top_n]
        results = [
            RerankResult(
                index=i, relevance_score=scores[i], document=body.documents[i] if body.return_documents else None
            )
            for i in order
        ]
        return RerankResponse(model=model.model_name_or_path, results=results, usage={"documents": len(documents)})

    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
    async def search(body: SearchRequest) -> SearchResponse:
        rag = need(pipeline, "collection")
        query = _plain(body.query)
        _check_sources([query], config.allow_local_files)
        hits = await _store_call(rag.search, query, top_k=body.top_k, filters=body.filters, rerank=body.rerank)
        return SearchResponse(results=[SearchHit(**h.to_dict()) for h in hits])

    @app.post("/v1/ask", response_model=AskResponse, responses=ERRORS)
    async def ask(body: AskRequest) -> AskResponse:
        rag = need(pipeline, "collection")
        if body.image is not None:
            _check_sources([{"image": body.image}], config.allow_local_files)
        answer = await _store_call(
            rag.ask, body.question, image=body.image, top_k=body.top_k, filters=body.filters, rerank=body.rerank
        )
        return AskResponse(
            question=body.question, answer=answer.text, sources=[SearchHit(**h.to_dict()) for h in answer.sources]
        )

    return app


async def _store_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from .pipeline import ModelLoadError
    from .store import CollectionMismatchError, CollectionNotFoundError, StoreError

    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
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


def _count_tokens(model: Any, items: list[dict[str, Any]]) -> int:
    """Text tokens of the inputs (what OpenAI clients expect in ``usage``; vision tokens are not counted)."""
    tokenizer = model.processor.tokenizer
    texts = []
    for item in items:
        text = item.get("text")
        texts.extend([text] if isinstance(text, str) else (text or []))
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0


def _error(status: int, message: str, kind: str = "invalid_request_error", **extra: Any) -> JSONResponse:
    body = {"message": message, "type": kind, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(status_code=status, content={"error": body})


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:  # pragma: no cover - CLI entry
    import uvicorn

    logger.info("serving on http://%s:%d", host, port)
    started = time.perf_counter()
    uvicorn.run(app, host=host, port=port, log_level="info")
    logger.info("server stopped after %.0fs", time.perf_counter() - started)
