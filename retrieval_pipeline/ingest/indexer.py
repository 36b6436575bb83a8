"""The indexer: items -> vectors -> the collection, idempotent and resumable, on one process or on Ray."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from ..layout import VectorLayout
from ..media import InputError
from ..media.pdf import PDF_MAX_PIXELS
from ..protocols import Embedder, EmbedderInfo
from ..records import Record, sources_of, sources_update
from ..store import CollectionSpec, Point, StoreError, VectorStore, model_fingerprint, point_id
from .discover import discover, modality_of
from .items import Item, _where, item_for_input, read_file, work_estimate
from .ledger import Ledger, Listing
from .options import IngestOptions
from .report import Failure, IndexReport, ItemFailure, _reason, display_path

logger = logging.getLogger(__name__)


# Runs over at least this many files upload in the store's bulk-load mode (a server defers its HNSW build).
BULK_LOAD_FILES = 1000


# Units embedded and upserted together (also the unit of resumption after an interruption).
GROUP_SIZE = 32


def _progress(done: int, files: int, report: IndexReport) -> str:
    return f"{done}/{files} files, {report.indexed} indexed, {report.present} present, {len(report.failed)} failed"


def dtype_name(dtype: Any) -> str | None:
    """``torch.bfloat16`` -> ``"bfloat16"`` (None stays None)."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


class Indexer:
    """Embeds items and upserts them; skips what the store already holds; attributes every failure to its file;
    keeps each point's list of sources right (changed files lose their old points).

    Where the work runs is the ``executor``'s business: :class:`LocalExecutor` (this process, the default) or
    :class:`~.distributed.RayExecutor` (a Ray Data pipeline). The rules of a run -- sources, per-file fields,
    outdated points -- are the :class:`~.ledger.Ledger`'s, the same for both."""

    def __init__(
        self,
        embedder: EmbedderInfo,
        store: VectorStore,
        *,
        dim: int | None = None,
        instruction: str | None = None,
        group_size: int = GROUP_SIZE,
        layout: VectorLayout | Mapping[str, Any] | None = None,
        executor: Executor | None = None,
    ):
        self.embedder = embedder
        self.store = store
        self.executor: Executor = executor or LocalExecutor()
        from ..ranking import check_matryoshka_dim

        # checked before any collection is created with it (0, negative or over the model's size is an error)
        self.dim = check_matryoshka_dim(dim, embedder.hidden_size) or embedder.hidden_size
        self.instruction = instruction or embedder.default_instruction
        self.group_size = group_size
        name = str(embedder.model_name_or_path)
        local = Path(name).expanduser()
        self.spec = CollectionSpec(
            model=str(local.resolve()) if local.is_dir() else name,  # a folder: loadable from any directory
            dim=self.dim,
            instruction=self.instruction,
            model_id=getattr(embedder, "model_id", None)
            or model_fingerprint(name, getattr(embedder, "revision", None)),
            dtype=getattr(embedder, "quantization", None) or dtype_name(getattr(embedder, "dtype", None)),
            # a new collection's layout: as given, or the default for the dimension with the given overrides
            layout=VectorLayout.choose(self.dim, **layout)
            if isinstance(layout, Mapping) and layout
            else layout or None,
        )

    def _open(self) -> CollectionSpec:
        # The collection's own spec: an existing collection keeps the id scheme it was created with.
        mine = self.spec.dtype
        self.spec = self.store.open(self.spec)
        if mine and self.spec.dtype and mine != self.spec.dtype:
            logger.warning(
                "collection %r holds %s vectors; these are computed in %s (--dtype %s for the same numbers)",
                self.store.collection,
                self.spec.dtype,
                mine,
                self.spec.dtype,
            )
        return self.spec

    def _max_pixels(self) -> int:
        media = getattr(self.embedder, "media", None)
        value = getattr(media, "max_pixels", None)
        return int(value) if isinstance(value, int) and value > 0 else PDF_MAX_PIXELS

    def _options(self, options: IngestOptions | None) -> IngestOptions:
        options = options or IngestOptions()
        return replace(options, pdf_max_pixels=self._max_pixels()) if options.pdf_max_pixels is None else options

    @staticmethod
    def _plan(paths: Sequence[str | Path], options: IngestOptions) -> tuple[IndexReport, list[Path]]:
        """The run's report so far (missing paths failed, unsupported files skipped) and the files to index."""
        files, missing, links = discover(paths, options)
        report = IndexReport(files=len(files), failed=list(missing), skipped=list(links))
        supported = []
        for f in files:
            if modality_of(f) is None:
                report.skipped.append(Failure(display_path(f), f"unsupported file type {f.suffix or '(none)'!r}"))
            else:
                supported.append(f)
        return report, supported

    def index_paths(
        self,
        paths: Sequence[str | Path],
        *,
        options: IngestOptions | None = None,
        metadata: Mapping[str, Any] | None = None,
        show_progress_bar: bool = True,
        prune: bool = False,
    ) -> IndexReport:
        """Index files and folders. ``prune``: afterwards, remove the points of files under ``paths`` that no
        longer exist (deleted or renamed files)."""
        options = self._options(options)
        with self.executor.session(self):
            self._open()
            report, files = self._plan(paths, options)
            self._run(files, options, metadata, report, show_progress_bar)
            if prune:
                self.prune(paths, report)
            if report.indexed:
                self.store.build_index()  # the embedded engine indexes only when asked
        return report

    def index_files(
        self,
        files: Sequence[str | Path],
        *,
        options: IngestOptions | None = None,
        metadata: Mapping[str, Any] | None = None,
        show_progress_bar: bool = False,
    ) -> IndexReport:
        """Index these files, each under exactly the path given (no folder walk, links not resolved: a file found
        through a linked folder keeps the link's path, as the walk of :meth:`index_paths` names it). The report's
        ``failed_files`` lists the files a part of which failed. :class:`~.watch.FolderWatcher` indexes this way."""
        options = self._options(options)
        with self.executor.session(self):
            self._open()
            report = IndexReport(files=len(files))
            paths = [Path(f) for f in files]
            for path in paths:
                if modality_of(path) is None:
                    report.failed.append(
                        Failure(display_path(path), f"unsupported file type {path.suffix or '(none)'!r}")
                    )
                    report.failed_files.append(os.fspath(path))
            self._run([p for p in paths if modality_of(p) is not None], options, metadata, report, show_progress_bar)
            if report.indexed:
                self.store.build_index()
        return report

    def _run(
        self,
        files: list[Path],
        options: IngestOptions,
        metadata: Mapping[str, Any] | None,
        report: IndexReport,
        show_progress_bar: bool,
    ) -> None:
        if not files:
            return
        held_before = self.store.count() > 0  # a new collection has no outdated points to look for
        ledger = Ledger()
        self.executor.run(self, files, options, dict(metadata or {}), report, ledger, show_progress_bar)
        report.failed_files.extend(run.source for run in ledger.files.values() if run.failed)
        if held_before:
            self._remove_outdated(ledger, report)

    def watch(self, paths: Sequence[str | Path], **kwargs: Any) -> Any:
        """A :class:`~.watch.FolderWatcher` keeping this collection equal to ``paths``: use it as a context manager
        and iterate over it for its :class:`~.watch.SyncReport` s (the reconcile first, then one per change), or
        ``start()`` it on a thread of its own. ``kwargs``: ``options``, ``metadata``, ``debounce_ms``, ``settle_s``,
        ``batch_files``, ``max_pending``, ``retry_s``, ``writer``, ``on_report``, ``show_progress_bar``."""
        from .watch import FolderWatcher

        return FolderWatcher(self, paths, **kwargs)

    def _remove_outdated(self, ledger: Ledger, report: IndexReport) -> None:
        """A file indexed again loses the points it no longer holds (its old content). Done at the end of the run:
        a later file may hold the same content (moved, not gone)."""
        for source, stale in ledger.outdated(self.store.points_of_sources(ledger.finished_sources())).items():
            detached, deleted = self.store.remove_source(source, stale)
            report.replaced += detached + deleted
            logger.info("%s changed: %d outdated points removed", display_path(source), detached + deleted)

    def prune(self, roots: Sequence[str | Path], report: IndexReport | None = None) -> IndexReport:
        """Take the files under ``roots`` that no longer exist off their points (a point no other file holds is
        deleted). Roots that do not exist themselves are left alone (an unmounted disk is not a deletion)."""
        report = report if report is not None else IndexReport()
        if self.store.spec is None:
            self._open()
        bases = [Path(r).expanduser().resolve() for r in roots if Path(r).expanduser().exists()]
        prefixes = [(str(b), str(b).rstrip(os.sep) + os.sep) for b in bases]
        gone: dict[str, None] = {}
        for point in self.store.scroll(with_vectors=False):
            for source in sources_of(point.payload):
                if source in gone or not any(source == b or source.startswith(p) for b, p in prefixes):
                    continue
                if not os.path.lexists(source):
                    gone[source] = None
        for source in sorted(gone):
            _, deleted = self.store.remove_source(source)
            report.pruned += deleted
            report.pruned_files.append(display_path(source))
            logger.info("pruned %s (%d points deleted)", display_path(source), deleted)
        return report

    def index_items(
        self,
        items: Iterable[Any],
        *,
        metadata: Mapping[str, Any] | None = None,
        per_item: Sequence[Mapping[str, Any]] | None = None,
        show_progress_bar: bool = False,
    ) -> tuple[IndexReport, list[str | None]]:
        """Index items given directly (in this process, whatever the executor); returns the report and each item's
        point id (None where it failed).

        ``per_item``: metadata of each item (merged over ``metadata``), part of its identity: the same content under
        two dataset ids is two points (:func:`~retrieval_pipeline.evaluate.index_dataset`)."""
        if not isinstance(self.embedder, Embedder):
            raise TypeError(
                f"index_items embeds in this process and needs an embedder model, not {type(self.embedder).__name__}"
            )
        self._open()
        report = IndexReport()
        ids: list[str | None] = []
        units: list[Item] = []
        for n, item in enumerate(items):
            own = per_item[n] if per_item is not None else None
            try:
                unit = item_for_input(item, {**(metadata or {}), **(own or {})})
            except InputError as exc:
                report.failed.append(Failure(f"item {n}", exc.reason))
                ids.append(None)
                continue
            if own:
                unit.content_key += "|" + json.dumps(own, sort_keys=True, default=str)
            units.append(unit)
            ids.append(point_id(unit.content_key, self.spec))
        run = _LocalRun(self, report, Ledger())
        bar = tqdm(total=len(units), desc="indexing", unit="item", disable=not show_progress_bar)
        for start in range(0, len(units), self.group_size):
            run.flush(units[start : start + self.group_size])
            bar.update(len(units[start : start + self.group_size]))
        bar.close()
        if report.indexed:
            self.store.build_index()
        stored = self.store.existing({i for i in ids if i is not None})
        return report, [i if i in stored else None for i in ids]


class Executor(Protocol):
    """Where an :class:`Indexer` run's files are read, embedded and stored."""

    def session(self, indexer: Indexer) -> contextlib.AbstractContextManager[Any]:
        """What the run holds from its start to its end (Ray: the cluster and the store's one writer)."""
        ...

    def run(
        self,
        indexer: Indexer,
        files: list[Path],
        options: IngestOptions,
        metadata: dict[str, Any],
        report: IndexReport,
        ledger: Ledger,
        show_progress_bar: bool,
    ) -> None:
        """Index ``files``: store their new points, count every item in ``report``, tell ``ledger`` each file's
        points and failures, and give every stored point the sources the ledger answers."""
        ...


class LocalExecutor:
    """This process: files read in order, their items embedded in groups across files (``Indexer.group_size``)
    and upserted group by group, so a run killed half way keeps every group it finished."""

    def session(self, indexer: Indexer) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def run(
        self,
        indexer: Indexer,
        files: list[Path],
        options: IngestOptions,
        metadata: dict[str, Any],
        report: IndexReport,
        ledger: Ledger,
        show_progress_bar: bool,
    ) -> None:
        costs = [work_estimate(f, options, getattr(indexer.embedder, "media", None)) for f in files]
        bar = tqdm(
            total=sum(costs),
            desc="indexing",
            unit="tok",
            unit_scale=True,
            disable=not show_progress_bar,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining} left{postfix}]",
        )
        before = len(report.failed)
        run = _LocalRun(indexer, report, ledger)
        bulk = contextlib.ExitStack()
        if len(files) >= BULK_LOAD_FILES:  # a server builds its graph once, after the upload
            bulk.enter_context(indexer.store.bulk_load())
        pending: list[Item] = []
        with bulk:
            for n, (path, cost) in enumerate(zip(files, costs)):
                ledger.file(n, os.fspath(path))
                for seq, unit, pid in read_file(path, options, metadata, indexer.spec):
                    if isinstance(unit, ItemFailure) and unit.skipped:  # a member of a type not indexed
                        report.skipped.append(Failure(unit.where, unit.reason))
                        continue
                    if isinstance(unit, ItemFailure):  # one part of the file (a PDF page), or the file itself
                        run.fail(n, seq, unit.where, unit.reason)
                        continue
                    unit.file, unit.seq = n, seq
                    ledger.holds(n, pid)
                    pending.append(unit)
                    if len(pending) >= indexer.group_size:
                        group, pending = pending, []
                        run.flush(group)
                bar.update(cost)
                bar.set_postfix_str(_progress(n + 1, len(files), report), refresh=False)
            run.flush(pending)
        bar.set_postfix_str(_progress(len(files), len(files), report), refresh=False)  # the real counts
        bar.close()
        # failures in file order (those of reading come as they happen, those of embedding when a group runs)
        failed = report.failed[before:]
        failed.sort(key=lambda f: run.order.get(id(f), (len(files), 0)))
        report.failed[before:] = failed


class _LocalRun:
    """One run in this process: groups of items embedded, stored, counted and accounted for."""

    def __init__(self, indexer: Indexer, report: IndexReport, ledger: Ledger) -> None:
        self.ix = indexer
        self.report = report
        self.ledger = ledger
        self.order: dict[int, tuple[int, int]] = {}  # failure -> (file, item) to list them in file order

    def fail(self, file: int | None, seq: int, where: str, reason: str) -> None:
        failure = Failure(where, reason)
        self.report.failed.append(failure)
        logger.warning("skipping %s: %s", where, reason)
        if file is not None:
            self.ledger.fail(file)
            self.order[id(failure)] = (file, seq)

    def flush(self, units: list[Item]) -> None:
        if not units:
            return
        ix, report = self.ix, self.report
        ids = [point_id(u.content_key, ix.spec) for u in units]
        stored = ix.store.retrieve(set(ids))
        new: dict[str, list[Item]] = {}
        present: dict[str, list[Item]] = {}
        for pid, unit in zip(ids, units):
            (present if pid in stored else new).setdefault(pid, []).append(unit)
        for pid, group in present.items():  # stored points may gain a source, or a file's new fields
            report.present += len(group)
            held = Record.from_payload(stored[pid])
            update = self.ledger.listing(pid, (held.sources, held.files), _items(group))
            if update is not None and update[0]:
                ix.store.set_payload(pid, sources_update(*update))
        order = list(new)
        vectors, failures = embed_isolating(
            ix.embedder, [new[pid][0].input for pid in order], instruction=ix.instruction, dim=ix.dim
        )
        points: list[Point] = []
        for k, pid in enumerate(order):
            group = new[pid]
            reason = failures.get(k)
            payload: dict[str, Any] = {}
            if reason is None:
                try:
                    for unit in group:
                        if unit.verify is not None:
                            unit.verify()
                    payload = point_payload(group, self.ledger.listing(pid, None, _items(group)))
                except Exception as exc:
                    reason = _reason(exc)
            if reason is not None:
                for unit in group:
                    self.fail(unit.file, unit.seq, _where(unit, pid), reason)
                continue
            points.append(Point(pid, vectors[k].tolist(), payload))
            report.present += len(group) - 1  # the same content twice in this group
        self.upsert(points, new)

    def upsert(self, points: list[Point], units: Mapping[str, list[Item]]) -> None:
        """Store the group; when that fails, file by file, so that only the files whose points cannot be stored
        fail. A store that takes nothing at all is broken: that is raised (exit 4), not blamed on files."""
        failed = store_points(self.ix.store, points, {p.id: units[p.id][0].file for p in points})
        self.report.indexed += len(points) - len(failed)
        for pid, reason in failed.items():
            for unit in units[pid]:
                self.fail(unit.file, unit.seq, _where(unit, pid), reason)


def _items(units: Iterable[Item]) -> list[tuple[str, dict[str, Any]]]:
    return [(u.record.source, u.record.file_fields()) for u in units]


def store_points(store: VectorStore, points: list[Point], files: Mapping[str, int | None]) -> dict[str, str]:
    """Upsert ``points``; when the store refuses the group, file by file, so that only the files whose points
    cannot be stored fail (point id -> reason). A store that takes nothing at all is broken: that is raised."""
    if not points:
        return {}
    try:
        store.upsert(points)
        return {}
    except (StoreError, ValueError) as exc:
        first = exc
    by_file: dict[int | None, list[Point]] = {}
    for point in points:
        by_file.setdefault(files[point.id], []).append(point)
    failed: dict[str, str] = {}
    for group in by_file.values():
        try:
            store.upsert(group)
        except (StoreError, ValueError) as exc:
            failed.update({p.id: _reason(exc) for p in group})
    if len(failed) == len(points) and isinstance(first, StoreError):
        raise first
    return failed


def point_payload(units: list[Item], sources: Listing | None) -> dict[str, Any]:
    """The stored payload: the first item's record, listing the sources that hold this content (as the
    :class:`~.ledger.Ledger` answered); checked to be storable."""
    first = units[0]
    sources_, files = sources or ([], {})
    record = replace(first.record, sources=list(sources_), files=dict(files))
    record.content_hash = hashlib.sha256(first.content_key.encode()).hexdigest()
    if sources_:
        record.source = sources_[0]
    payload = record.to_payload()
    try:
        json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InputError(f"its payload cannot be stored as JSON / UTF-8 ({exc})") from None
    return payload


def embed_isolating(embedder: Any, inputs: list[Any], **kwargs: Any) -> tuple[dict[int, Any], dict[int, str]]:
    """Embed ``inputs``; an input that fails is reported (index -> reason) and the others are still embedded.

    An :class:`InputError` that names its input drops that input and retries the rest; any other failure of a group
    (a processor error, ``MemoryError``, ...) falls back to embedding the inputs one by one, so that only the
    inputs that fail on their own are reported."""
    remaining = list(range(len(inputs)))
    failures: dict[int, str] = {}
    while remaining:
        try:
            out = embedder.embed([inputs[i] for i in remaining], **kwargs)
        except InputError as exc:
            if exc.index is not None and 0 <= exc.index < len(remaining):
                failures[remaining.pop(exc.index)] = _reason(exc)
                continue
            error: Exception = exc
        except Exception as exc:  # noqa: BLE001 - attributed below, input by input
            error = exc
        else:
            return {i: out[k] for k, i in enumerate(remaining)}, failures
        if len(remaining) == 1:
            failures[remaining[0]] = _reason(error)
            return {}, failures
        logger.warning("embedding a group of %d failed (%s): embedding them one by one", len(remaining), error)
        vectors: dict[int, Any] = {}
        for i in remaining:
            try:
                vectors[i] = embedder.embed([inputs[i]], **kwargs)[0]
            except Exception as exc:  # noqa: BLE001
                failures[i] = _reason(exc)
        return vectors, failures
    return {}, failures
