"""The app and how to run it: embeddings, rerank, search and ask over HTTP, with dynamic batching.

    qwen3vl-rag serve --embedding-model ... --reranker-model ... [--db PATH | --url URL] [--port 8000]

* ``POST /v1/embeddings`` -- OpenAI-compatible; inputs may also be multimodal objects (``{"text", "image",
  "video"}`` with data URIs, or URLs where the operator allows them), ``dimensions`` (Matryoshka),
  ``encoding_format`` float / base64.
* ``POST /v1/rerank`` -- the common rerank shape: ``query``, ``documents``, ``top_n``, ``return_documents`` ->
  ``results[{index, relevance_score}]``.
* ``POST /v1/search``, ``POST /v1/ask`` -- two-stage retrieval over the collection; answer with sources.
* ``GET /health``, ``GET /v1/models``; optional bearer-token auth; bad input is a 4xx naming the item, a limit
  a 413 naming the limit, never a 500.
* ``GET /metrics`` (Prometheus; needs a key unless ``--public-metrics``), OpenTelemetry traces
  (``--otlp-endpoint``), one JSON log line per request (``--log-format json``): :mod:`.metrics`, :mod:`.tracing`.

Serving safely (the rules of ``design.md``):

* Media URLs are fetched only when the operator allows it (``allow_remote_media``, ``fetch_allow``), through
  :mod:`retrieval_pipeline.media.fetch` under a strict :class:`~retrieval_pipeline.media.fetch.FetchPolicy` (private
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

Where things live: :mod:`.config` (the settings), :mod:`.schemas` (the wire format), :mod:`.routes` (one router
per resource), :mod:`.guard` (auth, size and concurrency gate), :mod:`.prepare` (per-request preparation),
:mod:`.batcher` (the dynamic batcher), :mod:`.state` (what the routes share), :mod:`.error_handlers` (every
refusal's shape; statuses from :data:`retrieval_pipeline.errors.ERROR_TABLE`).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from .config import MAX_ITEMS, MAX_REQUEST_BYTES, ServerConfig
from .error_handlers import install_error_handlers
from .guard import install_guard
from .metrics import configure_access_log, install_observability
from .routes import ROUTERS
from .state import ServingState

logger = logging.getLogger(__name__)

__all__ = ["MAX_ITEMS", "MAX_REQUEST_BYTES", "ServerConfig", "create_app", "serve"]


def create_app(
    *,
    embedder: Any = None,
    reranker: Any = None,
    pipeline: Any = None,
    config: ServerConfig | None = None,
    tracer_provider: Any = None,
    watcher: Any = None,
) -> FastAPI:
    """The API over loaded models. ``pipeline`` (a :class:`~retrieval_pipeline.pipeline.RAGPipeline`) serves
    ``/v1/search`` and ``/v1/ask``; its embedder / reranker are used when ``embedder`` / ``reranker`` are None.
    ``tracer_provider``: an OpenTelemetry tracer provider for this app's spans (else ``config.otlp_endpoint``'s,
    else no traces); the global one is never set. ``watcher``: a
    :class:`~retrieval_pipeline.ingest.watch.FolderWatcher` on the pipeline's collection (``serve --watch``), run on
    its own thread from start to shutdown, writing under the collection's writer lock; ``/health``, the page and
    ``/metrics`` show its state."""
    config = config or ServerConfig()
    if pipeline is not None:
        from ..pipeline import Staging

        if pipeline.staging is Staging.FREE:  # a server keeps what it serves loaded (no stage-wise residency on a CPU)
            pipeline.offload = False
        embedder = embedder or pipeline.embedder
        reranker = reranker or pipeline.reranker  # None when the pipeline has no reranker
    state = ServingState.build(config, embedder, reranker, pipeline)
    state.open_documents()
    if watcher is not None:
        state.watch(watcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.watcher is not None:
            state.watcher.start()
        yield
        await state.close()
        app.state.observer.close()

    app = FastAPI(
        title="qwen3-vl-rag",
        version=__import__("retrieval_pipeline").__version__,
        description="Qwen3-VL embeddings, reranking and two-stage multimodal retrieval over Qdrant.",
        lifespan=lifespan,
    )
    app.state.serving = state
    app.state.embed_batcher = state.embed_batcher
    app.state.rerank_batcher = state.rerank_batcher
    install_guard(app, config, state.preparer.local_pool)
    observer = install_observability(app, config, tracer_provider)  # after the guard: the outermost, refusals count
    if state.jobs is not None:  # background indexing counts in this app's metrics and traces
        state.jobs.scope = observer.scope
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` with uvicorn until it is stopped. uvicorn re-raises a captured SIGTERM after its graceful
    shutdown: here it becomes ``SystemExit(143)``, so every ``finally`` of the caller runs (the embedded store is
    flushed and closed, the video download cache removed) before the process exits with SIGTERM's status."""
    import signal
    import threading

    import uvicorn

    from ..media import cleanup_downloads

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM while closing ends the process at once
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    logger.info("serving on http://%s:%d", host, port)
    log_format = app.state.serving.config.log_format
    configure_access_log(log_format)  # json: our line per request replaces uvicorn's access log
    started = time.perf_counter()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=log_format != "json")
    finally:
        cleanup_downloads()
        logger.info("server stopped after %.0fs", time.perf_counter() - started)
