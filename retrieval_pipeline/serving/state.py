"""What the routes of one app share (:class:`ServingState`): the models, the pipeline, the thread pools, the
dynamic batchers and the preparer, built once by ``create_app`` and reached from a route as the ``State``
dependency. Also the few checks every route makes: a model is loaded, the requested model name is served.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from .. import observe
from ..caching import RetrievalCaches
from ..errors import InputError
from .batcher import DynamicBatcher
from .config import ServerConfig
from .error_handlers import HTTPError
from .prepare import Preparer

logger = logging.getLogger(__name__)

UNSPECIFIED_MODEL = ("", "default/not-specified")
RERANK_BATCH_SHARE = 8  # a rerank call is many pairs: a merged rerank batch holds 1/8 of batch_items calls


def model_name(component: Any) -> str | None:
    """A model's public name: a hub id as is, a local folder by its name only (never a server path)."""
    if component is None:
        return None
    name = str(component.model_name_or_path)
    return Path(name).name if os.path.isabs(name) or os.path.isdir(name) else name


class GenerationQueue:
    """Chat generations one at a time, in arrival order (the generator holds the device); at most ``max_waiting``
    admitted at once (running or waiting), beyond that 429 with ``Retry-After``. Its single thread runs the
    generator's blocking calls."""

    def __init__(self, max_waiting: int, retry_after_s: int) -> None:
        self.max_waiting, self.retry_after_s = max_waiting, retry_after_s
        self.admitted = 0
        self.generations = 0
        self.completion_tokens = 0
        self._turn: asyncio.Semaphore | None = None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="generate")

    def admit(self) -> _Ticket:
        if self.admitted >= self.max_waiting:
            raise HTTPError(
                429,
                f"{self.admitted} chat generations are running or waiting (max_queued_generations): retry later",
                "rate_limit_error",
                headers={"Retry-After": str(self.retry_after_s)},
                limit="max_queued_generations",
            )
        self.admitted += 1
        return _Ticket(self)

    def turn(self) -> asyncio.Semaphore:
        if self._turn is None:
            self._turn = asyncio.Semaphore(1)
        return self._turn

    async def run(self, fn: Any) -> Any:
        loop = asyncio.get_running_loop()
        ticket = _holding.get()
        if ticket is not None:  # the turn generates: its time is the stage "generate" (observe)
            ticket.generated = True
        return await loop.run_in_executor(self.pool, contextvars.copy_context().run, fn)

    def count(self, result: Any) -> None:
        self.generations += 1
        self.completion_tokens += int(getattr(result, "completion_tokens", 0))


# the ticket whose turn this context holds (GenerationQueue.run marks it as generating)
_holding: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar("generation_ticket", default=None)


class _Ticket:
    """One admitted generation: ``async with ticket`` waits for its turn; leaving (or dropping the ticket) frees its
    place in the queue."""

    def __init__(self, queue: GenerationQueue) -> None:
        self.queue, self.done, self.holding = queue, False, False
        self.generated, self.turn_at = False, 0.0

    async def __aenter__(self) -> _Ticket:
        admitted = time.perf_counter()
        await self.queue.turn().acquire()
        self.holding, self.turn_at = True, time.perf_counter()
        observe.wait("generate", self.turn_at - admitted, end=self.turn_at)
        _holding.set(self)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.holding:
            self.holding = False
            self.queue.turn().release()
            _holding.set(None)
            if self.generated:  # (an /v1/ask turn reports "generate" from the pipeline itself)
                observe.record("generate", time.perf_counter() - self.turn_at)
        self.release()

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.queue.admitted -= 1

    def __del__(self) -> None:  # a stream whose body never ran (the client left before it started)
        self.release()


@dataclass
class ServingState:
    """One app's models, pipeline, preparer, batchers and thread pools (``app.state.serving``)."""

    config: ServerConfig
    embedder: Any
    reranker: Any
    pipeline: Any
    preparer: Preparer
    embed_batcher: DynamicBatcher
    rerank_batcher: DynamicBatcher
    store_pool: ThreadPoolExecutor
    pools: tuple[ThreadPoolExecutor, ...]
    source_root: Path | None
    generation_queue: GenerationQueue
    # query vectors and rerank scores of searches and chat turns (config.query_cache_bytes, rerank_cache_bytes),
    # shared by every pipeline the app serves (the keys name the models; point ids derive from content)
    caches: RetrievalCaches | None = None
    # every collection the app answers for (the served one, vector stores, others a key may use) and, with
    # config.data_dir, the uploaded files' registry and the background indexer
    collections: Any = None
    registry: Any = None
    jobs: Any = None
    watcher: Any = None  # serve --watch: the served collection follows folders

    @classmethod
    def build(cls, config: ServerConfig, embedder: Any, reranker: Any, pipeline: Any) -> ServingState:
        """Threads: preparation (no URLs), preparation of requests with URLs, one per model, and the store."""
        local_pool = ThreadPoolExecutor(config.prepare_workers, thread_name_prefix="prepare")
        remote_pool = ThreadPoolExecutor(config.prepare_workers, thread_name_prefix="prepare-urls")
        embed_pool = ThreadPoolExecutor(1, thread_name_prefix="embed-model")
        rerank_pool = ThreadPoolExecutor(1, thread_name_prefix="rerank-model")
        store_pool = ThreadPoolExecutor(max(2, config.prepare_workers // 2), thread_name_prefix="search")
        wait = config.max_wait_ms if config.dynamic_batching else 0.0
        preparer = Preparer(
            local_pool,
            remote_pool,
            config.fetch_policy(),
            request_timeout=config.request_timeout,
            fetch_timeout=config.fetch_timeout,
            max_fetches=config.max_fetches,
            allow_local_files=config.allow_local_files,
            limits=config.limits,
        )

        def run_embeddings(items: list[Any]) -> list[Any]:
            return list(embedder.embed_prepared(items, normalize=False))  # each request truncates its own

        def run_reranks(prepared: list[Any]) -> list[Any]:
            out: list[Any] = []
            for one in prepared:
                try:
                    out.append(reranker.score_prepared(one))
                except Exception as exc:  # one request's failure is its own
                    if not isinstance(exc, InputError):
                        logger.exception("rerank of %d documents failed", len(one))
                    out.append(exc)
            return out

        generation_queue = GenerationQueue(config.max_queued_generations, config.retry_after_s)
        caches = RetrievalCaches.sized(config.query_cache_bytes, config.rerank_cache_bytes)
        if pipeline is not None:
            pipeline.caches = caches
        embed_batcher = DynamicBatcher(
            run_embeddings, max_items=config.batch_items, max_wait_ms=wait, executor=embed_pool, name="embed"
        )
        rerank_batcher = DynamicBatcher(
            run_reranks,
            max_items=max(1, config.batch_items // RERANK_BATCH_SHARE),
            max_wait_ms=wait,
            executor=rerank_pool,
            name="rerank",
        )
        return cls(
            config=config,
            embedder=embedder,
            reranker=reranker,
            pipeline=pipeline,
            preparer=preparer,
            embed_batcher=embed_batcher,
            rerank_batcher=rerank_batcher,
            store_pool=store_pool,
            pools=(local_pool, remote_pool, embed_pool, rerank_pool, store_pool, generation_queue.pool),
            source_root=Path(config.source_root).expanduser().resolve() if config.source_root else None,
            generation_queue=generation_queue,
            caches=caches,
        )

    def open_documents(self) -> None:
        """The collections, and with ``config.data_dir`` the registry of uploads and its indexer (started)."""
        from .collections import Collections

        if self.config.data_dir and self.pipeline is not None:
            from .jobs import IndexJobs
            from .registry import Registry

            self.registry = Registry(self.config.data_dir)
            self.collections = Collections(self.pipeline, self.registry)
            self.jobs = IndexJobs(self.registry, self.collections, max_queued=self.config.max_queued_files)
            self.jobs.start()
        else:
            self.collections = Collections(self.pipeline)

    def watch(self, watcher: Any) -> None:
        """Keep the served collection synced by ``watcher`` (started with the app), writing under the collection's
        writer lock when the app indexes uploads too."""
        self.watcher = watcher
        if self.collections is not None:
            name = self.pipeline.store.collection
            watcher.writer = lambda: self.collections.writer(name)

    def watch_status(self) -> dict[str, Any] | None:
        """What ``/health`` shows of the watcher: folders by name unless the server exposes paths."""
        if self.watcher is None:
            return None
        status = self.watcher.status()
        status["paths"] = [public_source(p, self) for p in status["paths"]]
        return status

    async def close(self) -> None:
        if self.watcher is not None:  # the sync under way finishes first
            await asyncio.get_running_loop().run_in_executor(None, self.watcher.close)
        if self.jobs is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.jobs.close)
        if self.collections is not None:
            self.collections.close()
        if self.registry is not None:
            self.registry.close()
        await self.embed_batcher.close()
        await self.rerank_batcher.close()
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def need(component: Any, what: str) -> Any:
        """``component``, or a 404 saying this server has no such model."""
        if component is None:
            raise HTTPError(404, f"this server has no {what} model loaded", "not_found_error")
        return component

    def filters(self, filters: dict[str, Any] | None) -> dict[str, Any] | None:
        """A request's payload filters in the server's terms. ``source`` / ``sources`` name files as results show
        them: relative to ``source_root`` (made absolute here), at any depth of ``$and`` / ``$or`` / ``$not`` and
        in comparisons; an absolute path would tell a client whether a server file is indexed, so it is refused
        unless the server exposes paths."""
        if not filters or self.config.expose_paths:
            return filters
        return self._mapped(filters, 0)

    def _mapped(self, filters: Any, depth: int) -> Any:
        if not isinstance(filters, dict) or depth > 16:
            return filters  # the store's own check refuses it with its reason
        out = dict(filters)
        for key, value in filters.items():
            if key in ("$and", "$or") and isinstance(value, list):
                out[key] = [self._mapped(part, depth + 1) for part in value]
            elif key == "$not":
                out[key] = self._mapped(value, depth + 1)
            elif key in ("source", "sources"):
                if isinstance(value, dict):
                    out[key] = {op: self._source(key, v) for op, v in value.items()}
                else:
                    out[key] = self._source(key, value)
        return out

    def _source(self, key: str, value: Any) -> Any:
        if isinstance(value, list):
            return [self._source(key, v) for v in value]
        if self.source_root is None:
            raise HTTPError(400, f"filter {key!r}: this server names no source root (--source-root)", param=key)
        path = Path(str(value))
        if path.is_absolute() or ".." in path.parts:
            raise HTTPError(
                400, f"filter {key!r}: give the path as results show it (relative to the source root)", param=key
            )
        return str(self.source_root / path)

    def search_filters(self, rag: Any, filters: dict[str, Any] | None) -> dict[str, Any] | None:
        """A search's filters in the server's terms (:meth:`filters`), with the points of files still being
        indexed left out."""
        mapped = self.filters(filters)
        hidden = self.collections.hidden(rag) if self.collections is not None else None
        if hidden is None:
            return mapped
        return {"$and": [mapped, hidden]} if mapped else hidden

    def check_model(self, requested: str | None, component: Any) -> None:
        """A request's ``model``, when given, must name the served model (its own name or an alias). Infinity's
        client sends ``default/not-specified`` when its user named none: that names none."""
        if requested is None or requested in UNSPECIFIED_MODEL:
            return
        aliases = self.config.served_model_names
        accepted = {model_name(component), *aliases}
        name = str(component.model_name_or_path)
        if not os.path.isdir(os.path.expanduser(name)):  # a hub id; never a server path (it would tell files apart)
            accepted.add(name)
        if requested not in accepted:
            served = sorted({model_name(component), *aliases})
            raise HTTPError(
                404,
                f"model {requested!r} not found: this endpoint serves {', '.join(repr(m) for m in served)}",
                code="model_not_found",
                param="model",
            )

    async def store_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` (a search, an answer) in the store's threads; its errors reach the handlers."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.store_pool, contextvars.copy_context().run, lambda: fn(*args, **kwargs))


async def get_state(request: Request) -> ServingState:
    return request.app.state.serving


State = Annotated[ServingState, Depends(get_state)]


def public_source(source: str | None, state: ServingState) -> str | None:
    """What a client is told of a hit's source: URLs as they are, never a server path unless allowed."""
    if not source or state.config.expose_paths or source.startswith(("http://", "https://")):
        return source
    path = Path(source)
    if not path.is_absolute():
        return source
    if state.source_root is not None:
        try:
            return path.relative_to(state.source_root).as_posix()
        except ValueError:
            pass
    return path.name
