"""Indexing uploaded files in the background: a bounded queue, worker threads, one writer per collection.

A job indexes one file into one vector store's collection through the same :class:`~retrieval_pipeline.ingest.
Indexer` as ``qwen3vl-rag index`` (the same readers, limits and point ids), then sets the file's status: ``completed``
once every point is written, ``failed`` with the reason when any part of it failed (its points are removed then,
so a file is never searchable in part). Searches of the collection leave out the points of files still in progress
(:meth:`Collections.hidden`). A job whose file was removed or cancelled meanwhile removes what it wrote. Jobs
found ``in_progress`` when the server starts (it stopped mid-job) run again; indexing is idempotent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .. import observe
from ..ingest.options import IngestOptions
from .error_handlers import HTTPError

logger = logging.getLogger(__name__)

GROUP_FILES = 32  # queued files of one store indexed in one run (their items share the embedder's batches)
CHARS_PER_TOKEN = 4  # a static chunking strategy's token sizes, in the character chunks the indexer cuts


def ingest_options(chunking: dict[str, Any]) -> IngestOptions:
    """The indexer's options for a file's chunking strategy (``auto``: the indexer's own)."""
    static = chunking.get("static") if chunking.get("type") == "static" else None
    if not static:
        return IngestOptions()
    size = int(static["max_chunk_size_tokens"]) * CHARS_PER_TOKEN
    overlap = int(static["chunk_overlap_tokens"]) * CHARS_PER_TOKEN
    return IngestOptions(chunk_chars=size, chunk_overlap=overlap)


class IndexJobs:
    """The queue of (store id, file id) to index, and its workers."""

    def __init__(self, registry: Any, collections: Any, *, max_queued: int, workers: int = 1) -> None:
        self.registry, self.collections = registry, collections
        self.max_queued = max_queued
        self._queue: deque[tuple[str, str]] = deque()
        self._queued: set[tuple[str, str]] = set()
        self._cond = threading.Condition()
        self._stop = False
        self.running = 0
        self.done = {"completed": 0, "failed": 0}
        self.last_wait = 0.0
        self._enqueued_at: dict[tuple[str, str], float] = {}
        self.scope: Any = None  # a function giving the app's observe scope (metrics and traces of the jobs)
        self._threads = [
            threading.Thread(target=self._work, name=f"index-job-{n}", daemon=True) for n in range(max(1, workers))
        ]

    def start(self) -> None:
        """Start the workers, with what an earlier run left in progress queued first."""
        pending = self.registry.pending()
        for job in pending:
            self._put(job, check=False)
        if pending:
            logger.info("indexing %d uploaded files left in progress by the last run", len(pending))
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the jobs running now (what is queued stays ``in_progress`` and runs at the next start)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def submit(self, store_id: str, file_id: str) -> None:
        self._put((store_id, file_id), check=True)

    def reserve(self, n: int) -> None:
        """429 now when ``n`` more files would not fit the queue (before any of them is registered)."""
        with self._cond:
            if len(self._queue) + n > self.max_queued:
                raise HTTPError(
                    429,
                    f"{len(self._queue)} files are waiting to be indexed (max_queued_files {self.max_queued}): "
                    "retry later",
                    "rate_limit_error",
                    headers={"Retry-After": "5"},
                    limit="max_queued_files",
                )

    def _put(self, job: tuple[str, str], *, check: bool) -> None:
        with self._cond:
            if job in self._queued:
                return
            if check and len(self._queue) >= self.max_queued:
                self.reserve(1)
            self._queue.append(job)
            self._queued.add(job)
            self._enqueued_at[job] = time.monotonic()
            self._cond.notify()

    def counts(self) -> dict[str, int]:
        """Jobs by state: queued, running, and the outcomes since start."""
        with self._cond:
            return {"queued": len(self._queue), "running": self.running, **self.done}

    @property
    def depth(self) -> int:
        return len(self._queue)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                group = self._take_group()
                self.running += len(group)
            store_id = group[0][0]
            token = observe.enter(self.scope()) if self.scope is not None else None
            try:
                observe.wait("index", self.last_wait)
                outcomes = self.run_group(store_id, [file_id for _, file_id in group])
            except Exception:  # noqa: BLE001 - a job's own failure is recorded on its files; the worker goes on
                logger.exception("indexing jobs %s failed", group)
                outcomes = []
            finally:
                if token is not None:
                    observe.leave(token)
                with self._cond:
                    self.running -= len(group)
            for outcome in outcomes:
                if outcome in self.done:
                    self.done[outcome] += 1

    def _take_group(self) -> list[tuple[str, str]]:
        """The next job and the queued ones of the same store behind it (at most :data:`GROUP_FILES`): their
        files are indexed in one run, so their items share the embedder's batches."""
        first = self._queue.popleft()
        group = [first]
        rest: deque[tuple[str, str]] = deque()
        while self._queue and len(group) < GROUP_FILES:
            job = self._queue.popleft()
            (group if job[0] == first[0] else rest).append(job)
        self._queue.extendleft(reversed(rest))
        now = time.monotonic()
        for job in group:
            self._queued.discard(job)
            self.last_wait = now - self._enqueued_at.pop(job, now)
        return group

    def run(self, store_id: str, file_id: str) -> str | None:
        """Index one file into one store; its outcome (None when there was nothing to do)."""
        return self.run_group(store_id, [file_id])[0]

    def run_group(self, store_id: str, file_ids: list[str]) -> list[str | None]:
        """Index files into one store, those with the same attributes and chunking in one indexer run; each
        file's outcome (None when there was nothing to do)."""
        registry = self.registry
        store = registry.store(store_id)
        outcomes: dict[str, str | None] = dict.fromkeys(file_ids)
        if store is None:
            return list(outcomes.values())
        name = store["name"]
        rag = self.collections.pipeline(name, options=_creation(store["options"]))
        with self.collections.writer(name):
            runs: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
            for file_id in file_ids:
                row = registry.store_file(store_id, file_id)
                if row is None or row["status"] != "in_progress":
                    continue  # removed or cancelled while it waited
                file = registry.file(file_id)
                if file is None:
                    registry.finish(store_id, file_id, "failed", error={"code": "invalid_file", "message": "no file"})
                    outcomes[file_id] = "failed"
                    continue
                key = (json.dumps(row["attributes"], sort_keys=True), json.dumps(row["chunking"], sort_keys=True))
                runs.setdefault(key, []).append((row, file))
            for members in runs.values():
                outcomes.update(self._index(rag, store_id, name, members))
        return [outcomes[f] for f in file_ids]

    def _index(
        self, rag: Any, store_id: str, name: str, members: list[tuple[dict[str, Any], dict[str, Any]]]
    ) -> dict[str, str | None]:
        """One indexer run over files of one store (the collection's writer lock held)."""
        registry = self.registry
        row0 = members[0][0]
        blobs = {file["id"]: str(registry.blob_path(file)) for _, file in members}
        errors: dict[str, dict[str, str]] = {}
        try:
            with observe.stage("index", collection=name, files=len(members)):
                report = rag.indexer().index_paths(
                    sorted(set(blobs.values())),
                    options=ingest_options(row0["chunking"]),
                    metadata=row0["attributes"] or None,
                    show_progress_bar=False,
                )
            problems = report.failed + [s for s in report.skipped if s.reason]
            for _, file in members:
                blob = blobs[file["id"]]
                mine = [p.reason for p in problems if Path(blob).name in p.source]
                if mine:
                    reason = "; ".join(mine[:3])
                    code = "unsupported_file" if "unsupported" in reason.lower() else "invalid_file"
                    errors[file["id"]] = {"code": code, "message": f"{file['filename']}: {reason}"[:1000]}
                elif not rag.store.points_of_source(blob):
                    errors[file["id"]] = {"code": "invalid_file", "message": f"{file['filename']}: nothing to index"}
        except Exception as exc:  # noqa: BLE001 - a store or model failure: the files fail, the server goes on
            logger.exception("indexing %d files into %s", len(members), name)
            message = f"indexing failed: {type(exc).__name__}: {exc}"[:1000]
            errors = {file["id"]: {"code": "server_error", "message": message} for _, file in members}
        failed = [file for _, file in members if file["id"] in errors]
        for file in failed:
            remove_points(registry, rag, store_id, file["id"], blobs[file["id"]])
        if len(failed) < len(members):
            rag.store.flush()  # durable before it is said to be complete (a crash after this loses nothing)
        out: dict[str, str | None] = {}
        for _, file in members:
            file_id = file["id"]
            if file_id in errors:
                registry.finish(store_id, file_id, "failed", error=errors[file_id])
                logger.info(
                    "file %s (%s) failed in %s: %s", file_id, file["filename"], name, errors[file_id]["message"]
                )
                out[file_id] = "failed"
            elif registry.finish(store_id, file_id, "completed", usage=int(file["bytes"])):
                out[file_id] = "completed"
            else:  # removed or cancelled meanwhile
                remove_points(registry, rag, store_id, file_id, blobs[file_id])
                out[file_id] = None
        logger.info("indexed %d files into %s (%d failed)", len(members), name, len(failed))
        return out


def remove_points(registry: Any, rag: Any, store_id: str, file_id: str, blob: str) -> None:
    """Take a file's points off a store's collection, unless another file of the store holds the same content."""
    if registry.blob_in_store(store_id, blob, other_than=file_id):
        return
    if rag.store.exists():
        rag.store.remove_source(blob)


def _creation(options: dict[str, Any]) -> dict[str, Any]:
    """A stored vector store's creation options as the pipeline takes them."""
    out: dict[str, Any] = {}
    if options.get("dimensions"):
        out["dim"] = int(options["dimensions"])
    if options.get("layout"):
        out["layout"] = dict(options["layout"])  # the defaults for the dimension, with these overrides
    return out
