"""Dynamic batching for servers: concurrent requests merged into model batches.

Requests wait at most ``max_wait_ms`` for company; a batch closes early when it holds ``max_items`` inputs. The
model runs in a worker thread (``executor``), so the event loop keeps accepting requests while a batch computes.
Items should be prepared (loaded, tokenised, checked) before they are submitted, so that a batch holds only model
work. ``run`` may return an exception in place of an item's result: the request owning that item gets it, the
others their results. If a merged batch raises, each of its requests is run alone once, so that only the request
that breaks the model fails; nothing of the others is lost or blamed on them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


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
    ):
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.run = run
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
            self._worker = loop.create_task(self._loop())
        pending = _Pending(list(items), loop.create_future())
        await self._queue.put(pending)
        return await pending.future

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
        try:
            results = await self._call(items)
        except Exception as exc:
            if len(live) == 1:
                if not isinstance(exc, InputError):
                    logger.exception("batch of %d items failed", len(items))
                _resolve(live[0], exc=exc)
                return
            # Which request broke the merged batch is unknown: run each alone once, so that only the culprit
            # fails. Inputs were prepared before they joined; nothing is loaded or fetched again.
            logger.warning("merged batch of %d requests failed (%s); running them one by one", len(live), exc)
            for p in live:
                if p.future.cancelled():
                    continue
                try:
                    _deliver(p, await self._call(p.items))
                except InputError as own:
                    _resolve(p, exc=own)
                except Exception as own:
                    logger.exception("request of %d items failed", len(p.items))
                    _resolve(p, exc=own)
            return
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
