"""Dynamic batching for servers: concurrent requests merged into model batches.

Requests wait at most ``max_wait_ms`` for company; a batch closes early when it holds ``max_items`` inputs. The
model runs in a worker thread (``executor``), so the event loop keeps accepting requests while a batch computes.
Items should be prepared (loaded, tokenised, checked) before they are submitted, so that a batch holds only model
work. ``run`` may return an exception in place of an item's result: the request owning that item gets it, the
others their results. If a merged batch raises, each of its requests is run alone once, so that only the request
that breaks the model fails; nothing of the others is lost or blamed on them.

What each request lived through is told to :mod:`retrieval_pipeline.observe` in that request's own context, once
its results are in: its wait in the queue (``wait(name)``), the model run of its batch (stage ``name``), the batch
size (``sample("batch_size")``, once per batch, by its first request) and the tokens and pixels of its own items
(``count``). The worker itself runs in an empty context, so no request's scope or span leaks into another's.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from .. import observe
from ..errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # when the model run that answered it began and ended (0: it never ran)
    ended: float = 0.0
    batch: int = 0  # model inputs of that run (rerank: documents)
    reports_batch: bool = False  # the first request of its batch reports the batch's size


class DynamicBatcher:
    """Merge the item lists of concurrent calls into one ``run(items) -> results`` call.

    ``run`` gets the concatenated items and returns one result per item (in order); it runs in a worker
    thread. ``max_wait_ms=0`` turns merging off (each call runs alone, still off the event loop).
    """

    def __init__(
        self,
        run: Callable[[list[Any]], Sequence[Any]],
        *,
        max_items: int = 64,
        max_wait_ms: float = 5.0,
        executor: Executor | None = None,
        name: str = "batch",
    ):
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.run = run
        self.name = name  # the stage the model run is (embed, rerank) and the model label of its counts
        # the model's own thread(s): a slow download or a busy default executor never delays a batch
        self.executor = executor
        self.max_items = max_items
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0  # statistics: model calls made, and the items they carried
        self.items = 0

    async def submit(self, items: list[Any]) -> list[Any]:
        """Results for ``items`` (raises the error of this request's own items)."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.get_loop() is not loop or self._worker.done():
            # first call, or an app driven by another event loop (a test client per request): a worker of its own
            self._queue = asyncio.Queue()
            # created in an empty context: the worker serves every request, it must not carry the first one's
            self._worker = contextvars.Context().run(loop.create_task, self._loop())
        pending = _Pending(list(items), loop.create_future())
        await self._queue.put(pending)
        try:
            results = await pending.future
        except BaseException:
            self._observe(pending, ok=False)
            raise
        self._observe(pending, ok=True)
        return results

    def _observe(self, p: _Pending, ok: bool) -> None:
        """Tell observe what this request lived through (in its own context: its scope, its span)."""
        if not p.ended or not observe.active():
            return
        observe.wait(self.name, p.started - p.enqueued, end=p.started)
        observe.record(self.name, p.ended - p.started, end=p.ended, batch=p.batch)
        if p.reports_batch:
            observe.sample("batch_size", p.batch, model=self.name)
        if ok:
            tokens, pixels = processed(p.items)
            observe.count("tokens", tokens, model=self.name)
            if pixels:
                observe.count("pixels", pixels, model=self.name)

    async def _loop(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            group = [first]
            size = len(first.items)
            if self.max_wait > 0:
                # everything that queued up while the previous batch ran joins at once...
                while size < self.max_items and not self._queue.empty():
                    nxt = self._queue.get_nowait()
                    group.append(nxt)
                    size += len(nxt.items)
                # ...then wait for company until the oldest request has waited max_wait
                deadline = first.enqueued + self.max_wait
                while size < self.max_items:
                    timeout = deadline - time.perf_counter()
                    if timeout <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                    group.append(nxt)
                    size += len(nxt.items)
            await self._run_group(group)

    async def _run_group(self, group: list[_Pending]) -> None:
        live = [p for p in group if not p.future.cancelled()]
        if not live:
            return
        items = [item for p in live for item in p.items]
        started = time.perf_counter()
        try:
            results = await self._call(items)
        except Exception as exc:
            if len(live) == 1:
                if not isinstance(exc, InputError):
                    logger.exception("batch of %d items failed", len(items))
                _stamp(live, started)
                _resolve(live[0], exc=exc)
                return
            # Which request broke the merged batch is unknown: run each alone once, so that only the culprit
            # fails. Inputs were prepared before they joined; nothing is loaded or fetched again.
            logger.warning("merged batch of %d requests failed (%s); running them one by one", len(live), exc)
            for p in live:
                if p.future.cancelled():
                    continue
                alone = time.perf_counter()
                try:
                    results = await self._call(p.items)
                    _stamp([p], alone)
                    _deliver(p, results)
                except InputError as own:
                    _stamp([p], alone)
                    _resolve(p, exc=own)
                except Exception as own:
                    logger.exception("request of %d items failed", len(p.items))
                    _stamp([p], alone)
                    _resolve(p, exc=own)
            return
        _stamp(live, started)
        offset = 0
        for p in live:
            _deliver(p, results[offset : offset + len(p.items)])
            offset += len(p.items)

    async def _call(self, items: list[Any]) -> Sequence[Any]:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.executor, self.run, items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        self.batches += 1
        self.items += len(items)
        return results

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
            self._queue = None


def _inputs(item: Any) -> int:
    """Model inputs of a batch item: a prepared rerank call counts its (query, document) pairs."""
    pairs = getattr(item, "pairs", None)
    return 1 if pairs is None else len(pairs)


def _stamp(group: list[_Pending], started: float) -> None:
    """The run that answered ``group`` began at ``started`` and ended now; the first request reports its size."""
    ended = time.perf_counter()
    size = sum(_inputs(item) for p in group for item in p.items)
    for p in group:
        p.started, p.ended, p.batch = started, ended, size
    group[0].reports_batch = True


# pixels of one vision patch, an image's and a video's (a video patch spans two frames)
PATCH_PIXELS = 16 * 16
VIDEO_PATCH_PIXELS = 2 * PATCH_PIXELS


def processed(items: list[Any]) -> tuple[int, int]:
    """(tokens, pixels) the model reads for prepared items -- each an encoded item (``len`` = tokens,
    ``image_grid_thw`` / ``video_grid_thw`` = patches) or a prepared rerank call (its ``pairs``): what preparation
    already computed, nothing tokenised or decoded again. Anything else counts as nothing."""
    tokens = pixels = 0
    for item in items:
        for enc in getattr(item, "pairs", None) or (item,):
            if not hasattr(enc, "input_ids"):
                continue
            tokens += len(enc)
            for grid, size in ((enc.image_grid_thw, PATCH_PIXELS), (enc.video_grid_thw, VIDEO_PATCH_PIXELS)):
                if grid is not None:
                    pixels += size * sum(t * h * w for t, h, w in grid.tolist())
    return tokens, pixels


def _deliver(p: _Pending, results: Sequence[Any]) -> None:
    """A request's results, or the first error that ``run`` returned in place of one of its items."""
    for result in results:
        if isinstance(result, BaseException):
            _resolve(p, exc=result)
            return
    _resolve(p, result=list(results))


def _resolve(p: _Pending, *, result: Any = None, exc: BaseException | None = None) -> None:
    if p.future.done():
        return
    if exc is not None:
        p.future.set_exception(exc)
    else:
        p.future.set_result(result)
