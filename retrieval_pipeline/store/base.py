"""The interface of a collection, and the algorithm both backends share (filters, delete by filter, paging,
sources, verify)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from ..errors import RAGError, StoreError
from ..layout import (
    DENSE,
    PREFIX,
    SPARSE,
    QueryNode,
    SearchOptions,
    VectorLayout,
    document_sparse,
    query_plan,
)
from ..records import MODALITIES, sources_of, sources_update
from .filters import Clause, _conditions
from .spec import SCROLL_PAGE, VERIFY_SAMPLE, CollectionSpec, Point, StoreAddress, StoredHit

_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)
# The sibling collection a rebuild is built in before it replaces the collection (``index --rebuild``).
REBUILD_SUFFIX = ".rebuilding"
# Filtered HNSW searches explore two hops (ACORN) when the filter keeps at most this share of the points: a filter
# whose matches are too few for the graph's payload links and too many for a plain scan otherwise loses most of its
# true neighbours (benchmarks/bench_million.py, a 10 % filter on 100k 256-d prefixes: recall@10 0.28 without).
ACORN_SELECTIVITY = 0.4


class VectorStore:
    """One collection, whatever holds it. Open one with :func:`open_store`.

    The public methods are the algorithm, written once: filters -> conditions, delete by filter, scroll paging,
    sources (:meth:`points_of_source`, :meth:`remove_source`), :meth:`verify`, :meth:`info`, :meth:`push_to`. A
    backend implements ``open`` / ``exists`` / ``drop`` / ``close`` and the native primitives (``_upsert``,
    ``_retrieve``, ``_set_payload``, ``_delete_ids``, ``_delete_filter``, ``_search``, ``_count``, ``_scroll_page``,
    ``_native_filter``), and runs every engine or client call through :meth:`_call`: whatever the engine raises
    becomes the backend's :class:`StoreError` (:meth:`_store_error`), so a locked, damaged or unreachable store is
    the same error from every operation (exit code 4, HTTP 503)."""

    collection: str
    spec: CollectionSpec | None

    # ------------------------------------------------------------------------------------------------------------
    # what a backend implements

    def open(self, spec: CollectionSpec | None = None, *, create: bool = True) -> CollectionSpec:
        """Open the collection; create it for ``spec`` when missing (``create``), else check ``spec`` matches.

        Returns the collection's own (stored) spec: its id scheme is the one to use for point ids."""
        raise NotImplementedError

    def exists(self) -> bool:
        raise NotImplementedError

    def drop(self) -> None:
        """Delete the whole collection."""
        raise NotImplementedError

    def staging(self) -> VectorStore:
        """A store on the sibling collection where a rebuild of this one is built (``<name>.rebuilding``; what an
        earlier, interrupted rebuild left there is deleted). :meth:`replace_with` puts it in place."""
        name = self.collection + REBUILD_SUFFIX
        staged = self.sibling(name)
        staged.drop()
        return staged

    def sibling(self, collection: str) -> VectorStore:
        """The same backend and options on another collection."""
        return replace(self.address(), collection=collection).connect()

    def replace_with(self, staged: str) -> None:
        """Make the sibling collection named ``staged`` this collection, in place of what it held."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def location(self) -> str:
        raise NotImplementedError

    def address(self) -> StoreAddress:
        """How another process opens this collection (:class:`StoreAddress`); ValueError when it cannot."""
        raise ValueError(f"{type(self).__name__} cannot be opened from another process")

    def _store_error(self, what: str, exc: BaseException) -> StoreError:
        """The error to raise when the native call ``what`` failed with ``exc``."""
        raise NotImplementedError

    def _opened(self) -> bool:
        return self.spec is not None

    def _native_filter(self, clause: Clause) -> Any:
        raise NotImplementedError

    def _upsert(self, points: list[Point]) -> None:
        raise NotImplementedError

    def _retrieve(self, ids: list[str], *, payload: bool, vectors: bool) -> list[Point]:
        raise NotImplementedError

    def _set_payload(self, point: str, values: dict[str, Any]) -> None:
        raise NotImplementedError

    def _delete_ids(self, ids: list[str]) -> None:
        raise NotImplementedError

    def _delete_filter(self, flt: Any) -> None:
        raise NotImplementedError

    def _query(self, plan: QueryNode, flt: Any) -> list[StoredHit]:
        """Run a :func:`~retrieval_pipeline.layout.query_plan` (prefetch stages, fusion) as one native request."""
        raise NotImplementedError

    def _count(self, flt: Any) -> int:
        raise NotImplementedError

    def _scroll_page(self, flt: Any, limit: int, offset: Any, with_vectors: bool) -> tuple[list[Point], Any]:
        """One page of points and the offset of the next one (None: the last page)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------------------
    # one error translation for every native call

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a native call; its failures (Rust panics included: pyo3's PanicException is not an ``Exception``)
        become a :class:`StoreError`. Our own errors and a caller's bad argument (``ValueError``) pass through."""
        try:
            return fn(*args, **kwargs)
        except _FATAL:
            raise
        except (RAGError, ValueError):
            raise
        except BaseException as exc:  # noqa: BLE001 - connection refused, timeouts, auth, locks, damage, panics
            raise self._store_error(what, exc) from None

    def _need(self) -> None:
        if not self._opened():
            self.open(create=False)

    def _filter(self, filters: Mapping[str, Any] | None) -> Any:
        return self._native_filter(_conditions(filters))

    # ------------------------------------------------------------------------------------------------------------
    # the operations

    def upsert(self, points: list[Point]) -> None:
        self._need()
        if points:
            self._upsert(points)

    def existing(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        self._need()
        return {p.id for p in self._retrieve(ids, payload=False, vectors=False)} if ids else set()

    def retrieve(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The payloads of the stored points among ``ids`` (id -> payload)."""
        ids = list(ids)
        self._need()
        return {p.id: p.payload for p in self._retrieve(ids, payload=True, vectors=False)} if ids else {}

    def _vectors(self, ids: list[str]) -> dict[str, list[float]]:
        self._need()
        return {p.id: p.vector for p in self._retrieve(ids, payload=False, vectors=True)} if ids else {}

    def set_payload(self, point: str, values: Mapping[str, Any]) -> None:
        """Set payload keys of one point (the others are kept)."""
        self._need()
        self._set_payload(point, dict(values))

    def delete_ids(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        self._need()
        if ids:
            self._delete_ids(ids)

    def search(
        self,
        vector: list[float],
        *,
        limit: int,
        filters: Mapping[str, Any] | None = None,
        text: str | None = None,
        options: SearchOptions | Mapping[str, Any] | None = None,
    ) -> list[StoredHit]:
        """The ``limit`` nearest points to ``vector`` (matching ``filters``), searched the way the collection's
        layout says: quantized with rescoring, through the funnel, and fused with BM25 on ``text`` (the query's
        text) in a hybrid collection. ``options``: :class:`SearchOptions` (or a dict of them) for this search."""
        if not isinstance(options, SearchOptions):
            options = SearchOptions.from_mapping(options)
        flt = self._filter(filters)
        self._need()
        spec = self.spec or self.open(create=False)
        vector = list(vector)
        if len(vector) != spec.dim:
            raise ValueError(
                f"the query vector has {len(vector)} dimensions; collection {self.collection!r} holds {spec.dim}"
            )
        plan = query_plan(spec.vectors, vector, limit, options.merged(self.search_defaults), text)
        return self._query(plan, flt)

    def explain(
        self, *, limit: int, text: str | None = None, options: SearchOptions | Mapping[str, Any] | None = None
    ) -> list[str]:
        """The stages a search of this collection runs (leaves first), e.g. for ``info``."""
        if not isinstance(options, SearchOptions):
            options = SearchOptions.from_mapping(options)
        self._need()
        spec = self.spec or self.open(create=False)
        plan = query_plan(spec.vectors, [0.0] * spec.dim, limit, options.merged(self.search_defaults), text)
        return plan.stages()

    @property
    def search_defaults(self) -> SearchOptions:
        return getattr(self, "_search_defaults", None) or SearchOptions()

    def _layout_vectors(self, point: Point) -> Any:
        """What the engine stores for ``point`` under the collection's layout: the vector itself (a legacy
        collection), or its named vectors (the dense one, its Matryoshka prefix, the BM25 vector of its text)."""
        layout = (self.spec or self.open(create=False)).vectors
        vector = point.vector if isinstance(point.vector, list) else [float(x) for x in point.vector]
        if not layout.named:
            return vector
        out: dict[str, Any] = {DENSE: vector}
        if layout.prefix_dim:
            out[PREFIX] = vector[: layout.prefix_dim]
        if layout.hybrid:
            sparse = document_sparse(str(point.payload.get("text") or ""))
            if sparse is not None:
                out[SPARSE] = sparse
        return out

    def flush(self) -> None:
        """Make what was written durable now (a store that is durable once a write returns has nothing to do)."""

    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Around a large upload: index once at the end rather than while the points arrive (a server defers its
        HNSW build; the embedded engine only indexes when asked, and :meth:`build_index` runs after)."""
        yield

    def count(self, filters: Mapping[str, Any] | None = None) -> int:
        flt = self._filter(filters)
        self._need()
        return self._count(flt)

    def delete(self, filters: Mapping[str, Any]) -> int:
        """Delete the points matching ``filters`` (e.g. ``{"modality": "video"}``); returns how many."""
        flt = self._filter(filters)
        if flt is None:
            raise ValueError("delete needs a filter (refusing to empty the whole collection)")
        self._need()
        n = self._count(flt)
        self._delete_filter(flt)
        return n

    def scroll(
        self, *, with_vectors: bool = True, page: int = SCROLL_PAGE, filters: Mapping[str, Any] | None = None
    ) -> Iterator[Point]:
        flt = self._filter(filters)
        self._need()
        offset = None
        while True:
            points, offset = self._scroll_page(flt, page, offset, with_vectors)
            yield from points
            if offset is None or not points:
                return

    def points_of_source(self, source: str) -> dict[str, dict[str, Any]]:
        """The points (id -> payload) that list ``source`` among their sources."""
        found: dict[str, dict[str, Any]] = {}
        for key in ("sources", "source"):  # points written before ``sources`` existed only have ``source``
            for p in self.scroll(with_vectors=False, filters={key: source}):
                found[p.id] = p.payload
        return found

    def points_of_sources(self, sources: Iterable[str]) -> dict[str, set[str]]:
        """source -> the ids of the points that list it, for many sources per scroll."""
        wanted = set(sources)
        found: dict[str, set[str]] = {}
        names = sorted(wanted)
        for start in range(0, len(names), SCROLL_PAGE):
            chunk = names[start : start + SCROLL_PAGE]
            for key in ("sources", "source"):  # points written before ``sources`` existed only have ``source``
                for point in self.scroll(filters={key: chunk}, with_vectors=False):
                    for source in sources_of(point.payload):
                        if source in wanted:
                            found.setdefault(source, set()).add(point.id)
        return found

    def remove_source(self, source: str, ids: Iterable[str] | None = None) -> tuple[int, int]:
        """Take ``source`` off its points (only ``ids`` among them when given): a point that no other source holds
        is deleted, the others keep their remaining sources. Returns (points detached, points deleted)."""
        held = self.points_of_source(source)
        wanted = held if ids is None else {i: held[i] for i in ids if i in held}
        doomed: list[str] = []
        detached = 0
        for pid, payload in wanted.items():
            rest = [s for s in sources_of(payload) if s != source]
            if rest:
                files = {s: f for s, f in (payload.get("files") or {}).items() if s != source}
                self.set_payload(pid, sources_update(rest, files))
                detached += 1
            else:
                doomed.append(pid)
        self.delete_ids(doomed)
        return detached, len(doomed)

    def delete_source(self, source: str) -> int:
        """Remove ``source`` from the collection; returns how many points no longer list it (points that only it
        held are deleted; shared ones keep their other sources)."""
        detached, deleted = self.remove_source(source)
        return detached + deleted

    def verify(self, *, sample: int = VERIFY_SAMPLE) -> dict[str, Any]:
        """Check the collection can be read back: count vs scrolled ids, a sample of payloads and vectors.
        Raises :class:`StoreError` naming the problem; returns what was checked."""
        self._need()
        spec = self.spec or self.open(create=False)
        counted = self.count()
        ids = [p.id for p in self.scroll(with_vectors=False)]
        if len(ids) != counted or len(set(ids)) != counted:
            raise StoreError(f"{self.location}: count says {counted} points, a scan finds {len(set(ids))}")
        step = max(1, len(ids) // max(1, sample))
        probe = ids[::step][:sample]
        vectors = self._vectors(probe)
        bad = [i for i in probe if len(vectors.get(i) or []) != spec.dim]
        if bad:
            raise StoreError(f"{self.location}: {len(bad)} of {len(probe)} sampled points have no {spec.dim}-d vector")
        return {"points": counted, "sampled": len(probe)}

    def info(self) -> dict[str, Any]:
        """Backend, location, collection, point count and spec (opens an existing collection; none: 0 points)."""
        if not self._opened() and self.exists():
            self.open(create=False)
        spec = self.spec
        return {
            "backend": type(self).__name__,
            "location": self.location,
            "collection": self.collection,
            "points": self.count() if spec else 0,
            "modalities": {m: n for m in MODALITIES if spec and (n := self.count({"modality": m}))},
            "spec": spec.to_dict() if spec else None,
            "layout": spec.vectors.describe(spec.dim) if spec else None,
            "search": " => ".join(self.explain(limit=10, text="example")) if spec else None,
            "index": self.index_status() if spec else None,
        }

    def index_status(self) -> dict[str, Any]:
        """How much of the collection its vector index covers: ``indexed_vectors``, ``segments``."""
        return {}

    def build_index(self) -> bool:
        """Index what is not indexed yet (the embedded engine has no background optimizer); True when it ran."""
        return False

    def push_to(self, target: VectorStore, *, batch: int = SCROLL_PAGE, layout: VectorLayout | None = None) -> int:
        """Copy every point (same ids, vectors, payloads) into ``target``: laptop -> cluster. The target collection
        gets this one's vector layout (quantization, funnel, BM25) unless ``layout`` says otherwise; the prefix and
        BM25 vectors are derived again from each point's vector and text."""
        from dataclasses import replace

        self._need()
        spec = self.spec or self.open(create=False)
        target.open(replace(spec, layout=layout or spec.layout))
        done, buffer = 0, []
        with target.bulk_load():
            for point in self.scroll(with_vectors=True, page=batch):
                buffer.append(point)
                if len(buffer) >= batch:
                    target.upsert(buffer)
                    done, buffer = done + len(buffer), []
            if buffer:
                target.upsert(buffer)
                done += len(buffer)
        return done

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
