"""The indexer: items -> vectors -> the collection, idempotent and resumable, on one process or on Ray."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..layout import VectorLayout
from ..media import InputError
from ..records import (  # noqa: F401 - pdf_render_scale and the PDF constants are part of this module's API
    PDF_DPI,
    PDF_MAX_PIXELS,
    PDF_RENDER_PIXELS_CAP,
    PDF_RENDER_SIDE_CAP,
    PDFIUM_LOCK,
    Record,
    pdf_render_scale,
    render_page,
    sources_of,
    sources_update,
)
from ..store import CollectionSpec, Point, StoreError, VectorStore, model_fingerprint, point_id
from .discover import discover, modality_of
from .options import IngestOptions
from .report import Failure, IndexReport, UnitFailure, _reason, display_path
from .units import Unit, _where, unit_for_item, units_for_file, work_estimate

logger = logging.getLogger(__name__)


logger = logging.getLogger(__name__)


# Runs over at least this many files upload in the store's bulk-load mode (a server defers its HNSW build).
BULK_LOAD_FILES = 1000


# Units embedded and upserted together (also the unit of resumption after an interruption).
GROUP_SIZE = 32


@dataclass
class _FileState:
    """One file's progress through a run: its point ids, its units still in flight, whether it failed."""

    path: Path
    source: str
    index: int = 0  # the file's place in the run
    ids: set[str] = field(default_factory=set)
    claimed: set[str] = field(default_factory=set)  # points whose per-file fields this file has set in this run
    units: int = 0
    pending: int = 0
    done: bool = False
    failed: bool = False
    finished: bool = False

    @property
    def label(self) -> str:
        return display_path(self.source)


def _progress(done: int, files: int, report: IndexReport) -> str:
    return f"{done}/{files} files, {report.indexed} indexed, {report.present} present, {len(report.failed)} failed"


def dtype_name(dtype: Any) -> str | None:
    """``torch.bfloat16`` -> ``"bfloat16"`` (None stays None)."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


class Indexer:
    """Embeds units in groups and upserts them; skips what the store already holds; attributes every failure to
    its file; keeps each point's list of sources right (changed files lose their old points)."""

    def __init__(
        self,
        embedder: Any,
        store: VectorStore,
        *,
        dim: int | None = None,
        instruction: str | None = None,
        group_size: int = GROUP_SIZE,
        layout: VectorLayout | Mapping[str, Any] | None = None,
    ):
        self.embedder = embedder
        self.store = store
        self._order: dict[int, tuple[int, int]] = {}  # a run's failures -> (file, unit) to list them in file order
        self._stale: list[tuple[_FileState, set[str]]] = []  # a run's outdated points, taken off at its end
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
            dtype=dtype_name(getattr(embedder, "dtype", None)),
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
        self._open()
        report, supported = self._plan(paths, options)
        missing = list(report.failed)
        costs = [work_estimate(f, options, getattr(self.embedder, "media", None)) for f in supported]
        bar = tqdm(
            total=sum(costs),
            desc="indexing",
            unit="tok",
            unit_scale=True,
            disable=not show_progress_bar,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining} left{postfix}]",
        )
        pending: list[Unit] = []
        self._order: dict[int, tuple[int, int]] = {}
        self._stale: list[tuple[_FileState, set[str]]] = []
        bulk = contextlib.ExitStack()
        if len(supported) >= BULK_LOAD_FILES:  # a server builds its graph once, after the upload
            bulk.enter_context(self.store.bulk_load())
        with bulk:
            self._index_files(supported, costs, options, metadata, report, bar, pending)
        self._remove_outdated(report)
        bar.close()
        # failures in file order (those of reading come as they happen, those of embedding when a group runs)
        failed = report.failed[len(missing) :]
        failed.sort(key=lambda f: self._order.get(id(f), (len(supported), 0)))
        report.failed[len(missing) :] = failed
        if prune:
            self.prune(paths, report)
        if report.indexed:
            self.store.build_index()  # the embedded engine indexes only when asked
        return report

    def _index_files(
        self,
        supported: list[Path],
        costs: list[int],
        options: IngestOptions,
        metadata: Mapping[str, Any] | None,
        report: IndexReport,
        bar: Any,
        pending: list[Unit],
    ) -> None:
        for n, (path, cost) in enumerate(zip(supported, costs), 1):
            state = _FileState(path, os.fspath(path), index=n - 1)
            units = units_for_file(path, options, metadata or {})
            while True:
                try:
                    unit = next(units)
                    pid = "" if isinstance(unit, UnitFailure) else point_id(unit.content_key, self.spec)
                except StopIteration:
                    break
                except Exception as exc:  # this file only: MemoryError, TypeError, UnicodeError, OSError, ...
                    self._fail(state, None, _reason(exc), report, state.units)
                    units.close()
                    break
                if isinstance(unit, UnitFailure):  # one part of the file (a PDF page); the rest goes on
                    self._fail(state, unit.where, unit.reason, report, state.units)
                    state.units += 1
                    continue
                unit.file, unit.seq = state, state.units
                state.units += 1
                state.ids.add(pid)
                state.pending += 1
                pending.append(unit)
                if len(pending) >= self.group_size:  # outside the try: a group's failures are not this file's
                    group, pending = pending, []
                    self._flush(group, report)
            state.done = True
            self._finish(state, report)
            bar.update(cost)
            bar.set_postfix_str(_progress(n, len(supported), report), refresh=False)
        group, pending = pending, []
        self._flush(group, report)
        bar.set_postfix_str(_progress(len(supported), len(supported), report), refresh=False)  # the real counts

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
        """Index items given directly; returns the report and each item's point id (None where it failed).

        ``per_item``: metadata of each item (merged over ``metadata``), part of its identity: the same content under
        two dataset ids is two points (:func:`~retrieval_pipeline.evaluate.index_dataset`)."""
        self._open()
        report = IndexReport()
        ids: list[str | None] = []
        units: list[Unit] = []
        for n, item in enumerate(items):
            own = per_item[n] if per_item is not None else None
            try:
                unit = unit_for_item(item, {**(metadata or {}), **(own or {})})
            except InputError as exc:
                report.failed.append(Failure(f"item {n}", exc.reason))
                ids.append(None)
                continue
            if own:
                unit.content_key += "|" + json.dumps(own, sort_keys=True, default=str)
            units.append(unit)
            ids.append(point_id(unit.content_key, self.spec))
        bar = tqdm(total=len(units), desc="indexing", unit="item", disable=not show_progress_bar)
        for start in range(0, len(units), self.group_size):
            self._flush(units[start : start + self.group_size], report)
            bar.update(len(units[start : start + self.group_size]))
        bar.close()
        if report.indexed:
            self.store.build_index()
        stored = self.store.existing({i for i in ids if i is not None})
        return report, [i if i in stored else None for i in ids]

    # ----------------------------------------------------------------------------------------------------------

    def _fail(
        self, state: _FileState | None, where: str | None, reason: str, report: IndexReport, seq: int = 0
    ) -> None:
        label = where or (state.label if state is not None else "?")
        failure = Failure(label, reason)
        report.failed.append(failure)
        logger.warning("skipping %s: %s", label, reason)
        if state is not None:
            state.failed = True
            self._order[id(failure)] = (state.index, seq)

    def _finish(self, state: _FileState, report: IndexReport) -> None:
        """When all of a file's units are stored: its old points that it no longer holds lose it."""
        if state.finished or not state.done or state.pending:
            return
        state.finished = True
        if state.failed:
            return  # what it held before stays until it indexes again (or is pruned)
        held = self.store.points_of_source(state.source)
        stale = set(held) - state.ids
        if stale:  # taken off at the end of the run: a later file may hold the same content (moved, not gone)
            self._stale.append((state, stale))

    def _remove_outdated(self, report: IndexReport) -> None:
        for state, stale in self._stale:
            detached, deleted = self.store.remove_source(state.source, stale)
            report.replaced += detached + deleted
            logger.info("%s changed: %d outdated points removed", state.label, detached + deleted)
        self._stale = []

    def _flush(self, units: list[Unit], report: IndexReport) -> None:
        if not units:
            return
        ids = [point_id(u.content_key, self.spec) for u in units]
        stored = self.store.retrieve(set(ids))
        new: dict[str, list[Unit]] = {}
        grown: dict[str, tuple[list[str], dict[str, Any]]] = {}  # stored points that gain or change a source
        for pid, unit in zip(ids, units):
            if pid in stored:
                report.present += 1
                source = unit.record.source
                # a file's fields for a point are those of its first unit with that content (a chunk repeated in
                # one file keeps its first place, run after run)
                first = unit.file is None or pid not in unit.file.claimed
                if unit.file is not None:
                    unit.file.claimed.add(pid)
                if source:
                    if pid not in grown:
                        held = Record.from_payload(stored[pid])
                        grown[pid] = (held.sources, held.files)
                    sources, files = grown[pid]
                    fields = unit.record.file_fields()
                    if source not in sources or (first and files.get(source) != fields):  # a new file, new metadata
                        grown[pid] = (
                            [*sources, source] if source not in sources else sources,
                            {**files, source: fields},
                        )
            else:
                new.setdefault(pid, []).append(unit)
        for pid, (sources, files) in grown.items():
            self.store.set_payload(pid, sources_update(sources, files))
        order = list(new)
        vectors, failures = embed_isolating(
            self.embedder, [new[pid][0].input for pid in order], instruction=self.instruction, dim=self.dim
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
                    payload = _point_payload(group)
                except Exception as exc:
                    reason = _reason(exc)
            if reason is not None:
                for unit in group:
                    self._fail(unit.file, _where(unit, pid), reason, report, unit.seq)
                continue
            for unit in group:
                if unit.file is not None:
                    unit.file.claimed.add(pid)
            points.append(Point(pid, vectors[k].tolist(), payload))
            report.present += len(group) - 1  # the same content twice in this group
        self._upsert(points, new, report)
        for unit in units:
            if unit.file is not None:
                unit.file.pending -= 1
                self._finish(unit.file, report)

    def _upsert(self, points: list[Point], units: Mapping[str, list[Unit]], report: IndexReport) -> None:
        """Store the group; when that fails, file by file, so that only the files whose points cannot be stored
        fail. A store that takes nothing at all is broken: that is raised (exit 4), not blamed on files."""
        if not points:
            return
        try:
            self.store.upsert(points)
            report.indexed += len(points)
            return
        except (StoreError, ValueError) as exc:
            first = exc
        by_file: dict[int, list[Point]] = {}
        for point in points:
            by_file.setdefault(id(units[point.id][0].file), []).append(point)
        errors: list[tuple[list[Point], Exception]] = []
        for group in by_file.values():
            try:
                self.store.upsert(group)
                report.indexed += len(group)
            except (StoreError, ValueError) as exc:
                errors.append((group, exc))
        if len(errors) == len(by_file) and isinstance(first, StoreError):
            raise first
        for group, exc in errors:
            for point in group:
                for unit in units[point.id]:
                    self._fail(unit.file, _where(unit, point.id), _reason(exc), report, unit.seq)


def _point_payload(units: list[Unit]) -> dict[str, Any]:
    """The stored payload: the first unit's record, with every source that holds this content; checked to be
    storable."""
    first = units[0]
    files: dict[str, dict[str, Any]] = {}
    for u in units:
        if u.record.source:
            files.setdefault(u.record.source, u.record.file_fields())
    sources = list(files)
    record = replace(first.record, sources=sources, files=files)
    record.content_hash = hashlib.sha256(first.content_key.encode()).hexdigest()
    if sources:
        record.source = sources[0]
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
