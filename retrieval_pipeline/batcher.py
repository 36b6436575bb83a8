"""Dynamic batching for servers: concurrent requests merged into model batches.

Requests wait at most ``max_wait_ms`` for company; a batch closes early when it holds ``max_items`` inputs. The
model runs in a worker thread, so the event loop keeps accepting requests while a batch computes. A request
whose input fails is answered with its own error; the others in the batch are still computed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .media import InputError

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

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], *, max_items: int = 64, max_wait_ms: float = 5.0):
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.run = run
        self.max_items = max_items
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0  # statistics: model calls made, and the items they carried
        self.items = 0

    async def submit(self, items: list[Any]) -> list[Any]:
        """Results for ``items`` (raises the :class:`InputError` of a bad item, indexed within ``items``)."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._queue is None:
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
        while live:
            items = [item for p in live for item in p.items]
            try:
                results = await asyncio.to_thread(self.run, items)
            except InputError as exc:
                if exc.index is None or not isinstance(exc.index, int):
                    for p in live:
                        _resolve(p, exc=exc)
                    return
                # find the request that owns the bad item; fail it alone and run the rest again
                offset = 0
                for p in live:
                    if offset <= exc.index < offset + len(p.items):
                        _resolve(p, exc=_reindex(exc, offset))
                        live = [q for q in live if q is not p]
                        break
                    offset += len(p.items)
                continue
            except Exception as exc:  # a model failure answers every waiting request
                logger.exception("batch of %d items failed", len(items))
                for p in live:
                    _resolve(p, exc=exc)
                return
            self.batches += 1
            self.items += len(items)
            offset = 0
            for p in live:
                _resolve(p, result=list(results[offset : offset + len(p.items)]))
                offset += len(p.items)
            return

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
            self._queue = None


def _reindex(exc: InputError, offset: int) -> InputError:
    return InputError(exc.reason, index=exc.index - offset, field=exc.field, kind=exc.kind)


def _resolve(p: _Pending, *, result: Any = None, exc: BaseException | None = None) -> None:
    if p.future.done():
        return
    if exc is not None:
        p.future.set_exception(exc)
    else:
        p.future.set_result(result)
