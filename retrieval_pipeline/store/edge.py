"""Qdrant Edge: the in-process Qdrant engine (HNSW, payload indexes, write-ahead log). A folder is all it needs:
``<root>/<collection>/`` holds the shard and ``collection.json``; a lock file keeps one process per collection."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import CollectionMismatchError, CollectionNotFoundError, StoreError
from ..layout import (
    DENSE,
    PREFIX,
    RRF_K,
    SPARSE,
    QueryNode,
    SearchOptions,
    SparseQuery,
)
from .base import ACORN_SELECTIVITY, VectorStore
from .filters import Clause, native
from .spec import INDEXED_FIELDS, VERIFY_SAMPLE, CollectionSpec, Point, StoreAddress, StoredHit, _check_name, _dense

logger = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _damaged(folder: Path, detail: str) -> StoreError:
    return StoreError(
        f"the Qdrant Edge store at {folder} is damaged ({detail}). Rebuild it: `qwen3vl-rag index --rebuild PATH...` "
        f"(or delete {folder} and index again)"
    )


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive lock on ``lock_path`` (waits for the holder): creating or dropping a collection is atomic
    between processes."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


_IN_USE = "another process has it open"


class _Holder:
    """An exclusive, non-blocking lock held for as long as a process has a collection open (the engine's own lock
    lives in its write-ahead log, which new collections do not have). Released when the file is closed, so a
    process that dies lets go of it. :data:`HELD_HERE` knows the ones this process holds, to say so."""

    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None

    def held_here(self) -> bool:
        """Another (live) store object of this process holds it."""
        if self._fh is not None:
            return False
        ref = HELD_HERE.get(str(self.path.resolve()))
        other = ref() if ref is not None else None
        return other is not None and other._fh is not None

    def acquire(self) -> bool:
        if self._fh is not None:
            return True
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+b")  # noqa: SIM115 - held open on purpose
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self._fh = fh
        HELD_HERE[str(self.path.resolve())] = weakref.ref(self)
        return True

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            HELD_HERE.pop(str(self.path.resolve()), None)
            fh.close()


# The holder files of the collections this process has open, by path (a holder dropped without release() closes its
# file, hence its lock, when it is collected: the weak reference then says nothing is held).
HELD_HERE: dict[str, weakref.ref] = {}


# Qdrant's default indexing threshold (KB of vectors in a segment before it gets an HNSW index).
EDGE_INDEXING_KB = 10_000
# Longest time writes stay unflushed in a collection without a write-ahead log.
FLUSH_SECONDS = 5.0


class EdgeStore(VectorStore):
    """Embedded Qdrant Edge shard under ``<root>/<collection>/``: nothing to start.

    ``collection.json`` records the spec (written last when a collection is created: without it the folder is not
    a collection). ``state.json`` records the point count at the last clean close: a shard that opens with another
    count was damaged on disk (truncated files lose points silently), and is refused with a way to rebuild it. Every
    engine failure is a :class:`StoreError` (locked by another process, or damaged), never a raw traceback."""

    def __init__(
        self,
        root: str | Path,
        collection: str = "default",
        *,
        hnsw_m: int = 16,
        ef_construct: int = 100,
        hnsw_ef: int = 128,
        indexing_threshold_kb: int | None = None,
        search: SearchOptions | None = None,
    ):
        import qdrant_edge  # noqa: F401 - fail early with the import error if the engine is missing

        self.root = Path(root).expanduser()
        self.collection = _check_name(collection)
        self.folder = self.root / self.collection
        self.spec: CollectionSpec | None = None
        self._shard: Any = None
        self._damaged = False
        self._flushed = time.monotonic()
        self._holder = _Holder(self.root / f".{self.collection}.open")
        self._hnsw = (hnsw_m, ef_construct)
        self.hnsw_ef = hnsw_ef  # search-time beam width (at least the number of results asked for)
        self._search_defaults = search or SearchOptions()
        # Segments smaller than this (KB of vectors) are searched without an index: the engine's default (about
        # 10 MB) unless set here or by QWEN3VL_RAG_INDEXING_THRESHOLD_KB (tests cross it with small data).
        env = os.environ.get("QWEN3VL_RAG_INDEXING_THRESHOLD_KB")
        self.indexing_threshold_kb = (
            indexing_threshold_kb if indexing_threshold_kb is not None else (int(env) if env else None)
        )

    @property
    def location(self) -> str:
        return str(self.folder)

    def address(self) -> StoreAddress:
        options = {"hnsw_m": self._hnsw[0], "ef_construct": self._hnsw[1], "hnsw_ef": self.hnsw_ef}
        if self.indexing_threshold_kb is not None:
            options["indexing_threshold_kb"] = self.indexing_threshold_kb
        return StoreAddress(self.collection, root=str(self.root.resolve()), options=tuple(options.items()))

    @property
    def _meta_path(self) -> Path:
        return self.folder / "collection.json"

    @property
    def _state_path(self) -> Path:
        return self.folder / "state.json"

    @property
    def _lock_path(self) -> Path:
        return self.root / f".{self.collection}.lock"

    def exists(self) -> bool:
        return self._meta_path.exists()

    def _opened(self) -> bool:
        return self._shard is not None

    def _store_error(self, what: str, exc: BaseException) -> StoreError:
        text = _first_line(exc)
        if "WouldBlock" in text:  # the engine's lock: another process has the shard open
            return StoreError(
                f"cannot open the Qdrant Edge shard at {self.folder}: {text} -- {_IN_USE} (an embedded store serves "
                "one process: stop the other one, or query it through `qwen3vl-rag serve`)"
            )
        if what == "create":
            return StoreError(f"cannot create a Qdrant Edge shard at {self.folder}: {text}")
        self._damaged = True
        return _damaged(self.folder, f"{what} failed: {text}")

    # ------------------------------------------------------------------------------------------------------------
    # opening, creating, dropping, closing

    def read_spec(self) -> CollectionSpec | None:
        """The spec ``collection.json`` records (None when missing or unreadable); opens nothing."""
        try:
            return self._read_meta()
        except (StoreError, CollectionMismatchError, OSError):
            return None

    def _read_meta(self) -> CollectionSpec:
        try:
            return CollectionSpec.from_dict(json.loads(self._meta_path.read_text()), str(self._meta_path))
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, CollectionMismatchError):
                raise
            raise _damaged(self.folder, f"collection.json is unreadable: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {self._meta_path}: {exc}") from None

    def open(self, spec: CollectionSpec | None = None, *, create: bool = True) -> CollectionSpec:
        if self._shard is not None:
            if spec is not None and self.spec is not None:
                spec.check(self.spec, self.collection)
            return self.spec
        if not self._meta_path.exists():
            if spec is None or not create:
                raise CollectionNotFoundError(
                    f"no collection {self.collection!r} under {self.root} (index something into it first)"
                )
            try:
                with _locked(self._lock_path):
                    if not self._meta_path.exists():  # another process may have created it while we waited
                        return self._create(spec)
            except OSError as exc:
                raise StoreError(f"cannot create a Qdrant Edge shard at {self.folder}: {exc}") from None
        return self._load(spec)

    def _load(self, spec: CollectionSpec | None) -> CollectionSpec:
        import qdrant_edge as qe

        stored = self._read_meta()
        if spec is not None:
            spec.check(stored, self.collection)
        self._hold()
        try:
            self._shard = self._call("open", qe.EdgeShard.load, str(self.folder / "shard"))
        except StoreError:
            self._holder.release()
            raise
        self.spec = stored
        self._check_state()
        return stored

    def _check_state(self) -> None:
        """Compare the count with the one recorded at the last clean close, then mark the shard in use."""
        import qdrant_edge as qe

        try:
            state = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            state = {}
        try:
            counted = int(self._call("count", self._shard.count, qe.CountRequest(exact=True)))
        except StoreError:
            self._abandon()
            raise
        recorded = state.get("points") if isinstance(state, dict) and state.get("clean") else None
        if isinstance(recorded, int) and recorded != counted:
            self._damaged = True
            self._abandon()
            raise _damaged(self.folder, f"it holds {counted} points, {recorded} were stored at the last clean close")
        self._write_state({"clean": False})

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self._state_path.with_name(f"state.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(state))
            tmp.replace(self._state_path)
        except OSError as exc:
            logger.warning("cannot record the state of %s: %s", self.folder, exc)

    def _edge_config(self, spec: CollectionSpec) -> Any:
        """The engine configuration of a new collection laid out as ``spec.layout`` says."""
        import qdrant_edge as qe

        layout = spec.vectors
        hnsw = qe.HnswIndexConfig(m=self._hnsw[0], ef_construct=self._hnsw[1], full_scan_threshold=10000)
        cold = qe.Memory.Cold  # memory-mapped, read on demand (not loaded when the shard opens)
        quantization = {
            "int8": qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True),
            # asymmetric: the stored vectors in 1 bit per dimension, the query in 8 (recall@10 at 100k 2048-d
            # items, oversampling 4: 0.36 with a binary query, 0.56 with this)
            "binary": qe.BinaryQuantizationConfig(
                always_ram=True, query_encoding=qe.BinaryQuantizationQueryEncoding.Scalar8Bits
            ),
        }.get(layout.quantization)
        vectors: Any
        if not layout.named:
            vectors = qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine)
        elif layout.prefix_dim:
            vectors = {
                # the full vector only rescores the prefix's candidates: on disk, no graph (m=0)
                DENSE: qe.EdgeVectorParams(
                    size=spec.dim,
                    distance=qe.Distance.Cosine,
                    memory=cold,
                    hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=self._hnsw[1], full_scan_threshold=10000),
                ),
                PREFIX: qe.EdgeVectorParams(
                    size=layout.prefix_dim,
                    distance=qe.Distance.Cosine,
                    quantization_config=quantization,
                    memory=cold if layout.on_disk else None,
                ),
            }
        else:
            vectors = {
                DENSE: qe.EdgeVectorParams(
                    size=spec.dim,
                    distance=qe.Distance.Cosine,
                    quantization_config=quantization,
                    memory=cold if layout.on_disk else None,
                )
            }
        sparse = {SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if layout.hybrid else None
        optimizers = (
            qe.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb)
            if self.indexing_threshold_kb is not None
            else None
        )
        # No write-ahead log: the engine keeps the log's retained segments in memory when a shard opens (about
        # 770 MB of heap for 2048-d vectors, measured: 11 MB without one), and writes are flushed instead.
        return qe.EdgeConfig(
            vectors=vectors, sparse_vectors=sparse, hnsw_config=hnsw, optimizers=optimizers, wal_enabled=False
        )

    def _create(self, spec: CollectionSpec) -> CollectionSpec:
        import qdrant_edge as qe

        spec = spec.resolved()
        shard_path = self.folder / "shard"
        if shard_path.exists():  # left by a creation that died before writing collection.json
            logger.warning("removing the unfinished collection at %s", self.folder)
            shutil.rmtree(shard_path)
        config = self._edge_config(spec)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._hold()
        try:
            self._shard = self._call("create", qe.EdgeShard.create, str(shard_path), config)
            for name in INDEXED_FIELDS:
                index = qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword)
                self._call("create", self._shard.update, index)
        except StoreError:
            self._abandon()
            raise
        self._write_state({"clean": False})
        tmp = self._meta_path.with_name(f"collection.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(spec.to_dict(), indent=2))
        tmp.replace(self._meta_path)  # written last: a collection without it is not a collection yet
        self.spec = spec
        return spec

    def _hold(self) -> None:
        if self._holder.held_here():
            raise StoreError(
                f"cannot open the Qdrant Edge shard at {self.folder}: another store object of this process has it "
                "open (use that one, or close it first)"
            )
        if not self._holder.acquire():
            raise StoreError(
                f"cannot open the Qdrant Edge shard at {self.folder}: {_IN_USE} (an embedded store serves one "
                "process: stop the other one, or query it through `qwen3vl-rag serve`)"
            )

    def _abandon(self) -> None:
        """Let go of the shard without writing anything (it is damaged or half made)."""
        shard, self._shard = self._shard, None
        if shard is not None:
            damaged = self._damaged
            with contextlib.suppress(StoreError):
                self._call("close", shard.close)
            self._damaged = damaged
        self._holder.release()

    def drop(self) -> None:
        """Delete the collection's folder (a damaged one too); refused while another process has it open."""
        with self._exclusively():
            with contextlib.suppress(FileNotFoundError):
                self._meta_path.unlink()  # first: from here on the folder is not a collection
            if self.folder.exists():
                shutil.rmtree(self.folder)

    def replace_with(self, staged: str) -> None:
        """Make the sibling collection ``staged`` (under the same root) this collection, in place of what it held:
        the old folder is renamed away, the staged one renamed in (atomic on one filesystem), then the old one
        deleted. Refused while another process has this collection open (the staged one is kept)."""
        source = self.root / _check_name(staged)
        if not (source / "collection.json").exists():
            raise StoreError(f"cannot replace {self.folder}: {source} is not a collection")
        with self._exclusively():
            old = self.root / f".{self.collection}.replaced-{os.getpid()}"
            if self.folder.exists():
                os.replace(self.folder, old)
            os.replace(source, self.folder)
            if old.exists():
                shutil.rmtree(old)
        for leftover in (self.root / f".{staged}.open", self.root / f".{staged}.lock"):
            leftover.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _exclusively(self) -> Iterator[None]:
        """Closed here and held against every other process (the creation lock, the open-holder lock, and the
        engine's own lock for a collection with a write-ahead log), for dropping or replacing the folder."""
        import qdrant_edge as qe

        self._abandon()
        self.spec = None
        with _locked(self._lock_path):
            if not self._holder.acquire():
                raise StoreError(f"cannot rebuild {self.folder}: {_IN_USE} (stop it first)")
            try:
                shard_path = self.folder / "shard"
                wal = shard_path / "wal"
                if wal.exists():  # a collection with a write-ahead log: the engine's lock says whether it is in use
                    try:
                        probe = self._call("open", qe.EdgeShard.load, str(shard_path))
                    except StoreError as exc:  # damaged: nothing to keep
                        if _IN_USE in str(exc):
                            raise StoreError(f"cannot rebuild {self.folder}: {_IN_USE} (stop it first)") from None
                    else:
                        with contextlib.suppress(StoreError):
                            self._call("close", probe.close)
                yield
            finally:
                self._holder.release()
        self._damaged = False

    def close(self) -> None:
        """Flush and close the shard, and record its point count (a damaged shard is let go unwritten)."""
        import qdrant_edge as qe

        if self._shard is None:
            self._holder.release()
            return
        if self._damaged:
            self._abandon()
            return
        shard = self._shard
        try:
            self._call("flush", shard.flush)
            points = int(self._call("count", shard.count, qe.CountRequest(exact=True)))
        except StoreError as exc:
            logger.warning("closing %s: %s", self.folder, exc)
            self._abandon()
            return
        self._shard = None
        try:
            self._call("close", shard.close)
        except StoreError as exc:
            logger.warning("closing %s: %s", self.folder, exc)
            self._holder.release()
            return
        self._write_state({"clean": True, "points": points})
        self._holder.release()

    # ------------------------------------------------------------------------------------------------------------
    # native primitives

    def _native_filter(self, clause: Clause) -> Any:
        return native(clause, _EdgeFilters())

    def _update(self, what: str, operation: Any) -> None:
        # Collections created with a write-ahead log: durable once applied (the log replays after a crash).
        # Without one (new collections, see _edge_config): durable once flushed -- at least every FLUSH_SECONDS
        # while writing, after an index build and on close; a crash loses at most those seconds of writes, which
        # indexing again redoes (point ids derive from the content).
        self._call(what, self._shard.update, operation)
        now = time.monotonic()
        if now - self._flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Make what was written durable now."""
        if self._shard is not None:
            self._call("flush", self._shard.flush)
        self._flushed = time.monotonic()

    def _upsert(self, points: list[Point]) -> None:
        import qdrant_edge as qe

        try:
            operation = qe.UpdateOperation.upsert_points(
                [qe.Point(p.id, _edge_vectors(self._layout_vectors(p)), p.payload) for p in points]
            )
        except (TypeError, ValueError) as exc:  # a payload the engine cannot store (e.g. unencodable text)
            raise ValueError(f"cannot store these points: {str(exc).splitlines()[0]}") from None
        self._update("upsert", operation)

    def _with_vector(self, vectors: bool) -> Any:
        return [DENSE] if vectors and self.spec is not None and self.spec.vectors.named else vectors

    def _retrieve(self, ids: list[str], *, payload: bool, vectors: bool) -> list[Point]:
        records = self._call("retrieve", self._shard.retrieve, ids, payload, self._with_vector(vectors))
        return [Point(str(r.id), _dense(r.vector) if vectors else [], dict(r.payload or {})) for r in records]

    def _set_payload(self, point: str, values: dict[str, Any]) -> None:
        import qdrant_edge as qe

        self._update("set_payload", qe.UpdateOperation.set_payload([point], values))

    def _delete_ids(self, ids: list[str]) -> None:
        import qdrant_edge as qe

        self._update("delete", qe.UpdateOperation.delete_points(ids))

    def _delete_filter(self, flt: Any) -> None:
        import qdrant_edge as qe

        self._update("delete", qe.UpdateOperation.delete_points_by_filter(flt))

    def _query(self, plan: QueryNode, flt: Any) -> list[StoredHit]:
        import qdrant_edge as qe

        query, params = self._edge_stage(plan, flt is not None)
        request = qe.QueryRequest(
            limit=plan.limit,
            query=query,
            prefetches=[self._edge_prefetch(p, flt) for p in plan.prefetch] or None,
            with_payload=True,
            filter=flt,
            params=params,
        )
        found = self._call("search", self._shard.query, request)
        return [StoredHit(str(p.id), float(p.score), dict(p.payload or {})) for p in found]

    def _edge_stage(self, node: QueryNode, filtered: bool) -> tuple[Any, Any]:
        import qdrant_edge as qe

        if node.fusion:
            return qe.Fusion.Rrf(k=RRF_K), None
        vector = node.vector
        if isinstance(vector, SparseQuery):
            return qe.Query.Nearest(qe.SparseVector(vector.indices, vector.values), using=node.using), None
        quantization = (
            qe.QuantizationSearchParams(
                ignore=node.ignore_quantization, rescore=node.rescore, oversampling=node.oversampling
            )
            if node.quantized
            else None
        )
        ef = max(node.hnsw_ef or self.hnsw_ef, node.limit)
        acorn = qe.AcornSearchParams(enable=True, max_selectivity=ACORN_SELECTIVITY) if filtered else None
        params = qe.SearchParams(hnsw_ef=ef, exact=node.exact, quantization=quantization, acorn=acorn)
        return qe.Query.Nearest(vector, using=node.using), params

    def _edge_prefetch(self, node: QueryNode, flt: Any) -> Any:
        import qdrant_edge as qe

        query, params = self._edge_stage(node, flt is not None)
        children = [self._edge_prefetch(p, flt) for p in node.prefetch] or None
        return qe.Prefetch(limit=node.limit, query=query, prefetches=children, params=params, filter=flt)

    def _count(self, flt: Any) -> int:
        import qdrant_edge as qe

        return int(self._call("count", self._shard.count, qe.CountRequest(exact=True, filter=flt)))

    def _scroll_page(self, flt: Any, limit: int, offset: Any, with_vectors: bool) -> tuple[list[Point], Any]:
        import qdrant_edge as qe

        request = qe.ScrollRequest(
            offset=offset, limit=limit, with_payload=True, with_vector=self._with_vector(with_vectors), filter=flt
        )
        records, offset = self._call("scroll", self._shard.scroll, request)
        points = [Point(str(r.id), _dense(r.vector) if with_vectors else [], dict(r.payload or {})) for r in records]
        return points, offset

    def optimize(self) -> None:
        """Build the HNSW index now: Qdrant Edge has no background optimizer, so without this every search of
        a collection is a full scan (fine at 1k points, seconds at a million)."""
        self._need()
        self._call("optimize", self._shard.optimize)
        self.flush()

    def index_status(self) -> dict[str, Any]:
        """Points, segments and, per named vector, how many vectors it holds and how many its index covers.

        The engine reports one total of indexed vectors over every named vector (3,000 points with a dense and a
        prefix vector: 6,000); it is split per vector here. Dense vectors exist for every point and live in the same
        segments (so each has the same share of the total); the BM25 vector exists for points with text (counted)
        and its sparse index is kept from the first write on (it counts as indexed before any build)."""
        import qdrant_edge as qe

        self._need()
        spec = self.spec or self.open(create=False)
        info = self._call("info", self._shard.info)
        points, total = int(info.points_count), int(info.indexed_vectors_count)
        layout = spec.vectors
        dense = [DENSE, PREFIX] if layout.prefix_dim else [DENSE if layout.named else ""]
        held = {name: points for name in dense}
        if layout.hybrid:
            has = qe.Filter(must=[qe.HasVectorCondition(SPARSE)])
            held[SPARSE] = int(self._call("count", self._shard.count, qe.CountRequest(exact=True, filter=has)))
        sparse = held.get(SPARSE, 0)
        each = max(0, min(points, (total - sparse) // len(dense)))
        indexed = {name: (sparse if name == SPARSE else each) for name in held}
        return {
            "points": points,
            "indexed_vectors": total,
            "segments": int(info.segments_count),
            "vectors": {
                name or "(unnamed)": {"held": held[name], "indexed": indexed[name], **self._vector_kind(spec, name)}
                for name in held
            },
            "indexing_threshold_kb": self.indexing_threshold_kb,
            "disk_bytes": _folder_bytes(self.folder),
            "ram_estimate_bytes": ram_estimate(spec, points, held.get(SPARSE, 0), self._hnsw[0]),
        }

    @staticmethod
    def _vector_kind(spec: CollectionSpec, name: str) -> dict[str, Any]:
        layout = spec.vectors
        if name == SPARSE:
            return {"kind": "bm25 sparse (idf)"}
        if layout.prefix_dim and name == DENSE:
            return {"kind": f"{spec.dim}-d float on disk, rescoring only (no graph)"}
        size = layout.prefix_dim if name == PREFIX else spec.dim
        quant = layout.quantization if layout.quantization != "none" else "float"
        return {"kind": f"{size}-d {quant} hnsw" + (", originals on disk" if layout.on_disk else "")}

    def build_index(self) -> bool:
        """Optimize when the points not indexed yet hold more vectors than the indexing threshold (below it the
        engine keeps a segment as a scan anyway, and a scan of it is fast)."""
        status = self.index_status()
        indexed = status["vectors"].get(PREFIX) or next(iter(status["vectors"].values()))
        unindexed = status["points"] - indexed["indexed"]
        spec = self.spec or self.open(create=False)
        dim = spec.vectors.prefix_dim or spec.dim
        threshold_kb = self.indexing_threshold_kb if self.indexing_threshold_kb is not None else EDGE_INDEXING_KB
        if unindexed <= 0 or unindexed * dim * 4 < threshold_kb * 1024:
            return False
        logger.warning(
            "building the search index of %s (%d points, %d indexed so far) ...",
            self.collection,
            status["points"],
            status["indexed_vectors"],
        )
        self.optimize()
        return True

    def verify(self, *, sample: int = VERIFY_SAMPLE) -> dict[str, Any]:
        self._need()
        try:
            return super().verify(sample=sample)
        except StoreError as exc:
            if "is damaged" in str(exc) or _IN_USE in str(exc):
                raise
            self._damaged = True
            raise _damaged(self.folder, str(exc).removeprefix(f"{self.folder}: ")) from None


def _edge_vectors(vectors: Any) -> Any:
    import qdrant_edge as qe

    if isinstance(vectors, dict):
        return {
            k: qe.SparseVector(v.indices, v.values) if isinstance(v, SparseQuery) else v for k, v in vectors.items()
        }
    return vectors


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_blocks * 512  # allocated, not apparent (sparse files)
    return total


def ram_estimate(spec: CollectionSpec, points: int, with_text: int, hnsw_m: int = 16) -> int:
    """What the layout keeps in RAM for ``points`` points, estimated: the searched vector (quantized codes, the
    originals unless on disk), the HNSW graph (level 0: 2m links of 4 bytes), the BM25 postings, the id tracker.
    Memory-mapped files read while searching come on top, in the page cache (the benchmark measures both)."""
    layout = spec.vectors
    size = layout.prefix_dim or spec.dim
    per_point = {"none": 0, "int8": size, "binary": (size + 7) // 8}[layout.quantization]
    if not layout.on_disk:
        per_point += 4 * size
    if layout.prefix_dim == 0 and not layout.named:
        per_point = 4 * size
    per_point += 2 * hnsw_m * 4 + 64  # graph links, id mapping and versions
    sparse = with_text * 40 * 8 if layout.hybrid else 0  # ~40 distinct terms per text, index + weight each
    return points * per_point + sparse


class _EdgeFilters:
    """Filters in Qdrant Edge's terms."""

    def condition(self, key: str, match: Any, bounds: Mapping[str, float] | None) -> Any:
        import qdrant_edge as qe

        if bounds is not None:
            return qe.FieldCondition(key, range=qe.RangeFloat(**bounds))
        return qe.FieldCondition(key, match=qe.MatchAny(match) if isinstance(match, list) else qe.MatchValue(match))

    def filter(self, must: list[Any], should: list[Any], must_not: list[Any]) -> Any:
        import qdrant_edge as qe

        return qe.Filter(must=must or None, should=should or None, must_not=must_not or None)
