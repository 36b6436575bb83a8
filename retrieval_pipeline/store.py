"""Qdrant storage: one collection per corpus, one dense vector per item in the unified space.

Two backends, one interface and one payload schema, so a corpus indexed on a laptop can be pushed to a cluster:

* :class:`EdgeStore` (default): Qdrant Edge, the in-process Qdrant engine (HNSW, payload indexes, write-ahead
  log). A folder is all it needs: ``<root>/<collection>/`` holds the shard and ``collection.json``.
* :class:`ServerStore`: a Qdrant server or cluster through ``qdrant-client`` (URL + API key), with the options
  that matter at scale (on-disk vectors, int8 scalar quantization, shards, replicas). ``QdrantClient(path=...)``
  (qdrant-client's local mode) works too and is what the tests use.

Every collection records the embedding model, the dimension and the document instruction it was built with;
opening it with a different model or dimension is a :class:`CollectionMismatchError`.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Payload fields with a keyword index (filters on them stay fast at scale).
INDEXED_FIELDS = ("modality", "source", "content_hash")
# Namespace of the content-derived point ids.
POINT_NAMESPACE = uuid.UUID("6c1f0b8e-3a52-4d5e-9f0e-7b0f51a9c2d4")
SCROLL_PAGE = 256


class StoreError(RuntimeError):
    """The store cannot be reached or used (server down, folder unusable, ...)."""


class CollectionMismatchError(ValueError):
    """The collection was built with another embedding model or dimension."""


class CollectionNotFoundError(LookupError):
    """The collection does not exist (index something first)."""


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection's vectors mean: opening it with another model or dimension is refused."""

    model: str
    dim: int
    instruction: str
    distance: str = "cosine"

    def check(self, other: CollectionSpec, collection: str) -> None:
        if (self.model, self.dim) != (other.model, other.dim):
            raise CollectionMismatchError(
                f"collection {collection!r} holds {other.dim}-d vectors of {other.model!r}; it cannot be used with "
                f"{self.dim}-d vectors of {self.model!r}. Use the same --embedding-model / dimension, or another "
                "--collection"
            )


@dataclass
class Point:
    id: str
    vector: list[float]
    payload: dict[str, Any]


@dataclass
class StoredHit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


def point_id(content_key: str, spec: CollectionSpec) -> str:
    """A point id derived from the content and the model + dimension: re-indexing is idempotent."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{spec.model}|{spec.dim}|{content_key}"))


def _conditions(filters: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """``{"modality": "image", "metadata.lang": ["en", "de"]}`` -> [(key, value or list of values)]."""
    if not filters:
        return []
    out = []
    for key, value in filters.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"filter keys are payload field names, got {key!r}")
        if isinstance(value, (list, tuple, set)):
            values = list(value)
            kinds = {type(v) for v in values}
            if not values or not (kinds == {str} or kinds == {int}):
                raise ValueError(f"filter {key!r}: a list filter needs values of one type, str or int; got {value!r}")
            for v in values:
                _check_int(key, v)
            out.append((key, values))
        elif isinstance(value, (str, int, bool)):
            _check_int(key, value)
            out.append((key, value))
        else:
            raise ValueError(f"filter {key!r}: expected a str, int, bool or a list of them, got {value!r}")
    return out


def _check_int(key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValueError(f"filter {key!r}: integer {value} is outside the 64-bit range Qdrant stores")


class VectorStore:
    """The interface both backends implement."""

    collection: str
    spec: CollectionSpec | None

    def open(self, spec: CollectionSpec | None = None, *, create: bool = True) -> CollectionSpec:
        """Open the collection; create it for ``spec`` when missing (``create``), else check ``spec`` matches."""
        raise NotImplementedError

    def upsert(self, points: list[Point]) -> None:
        raise NotImplementedError

    def existing(self, ids: Iterable[str]) -> set[str]:
        raise NotImplementedError

    def search(self, vector: list[float], *, limit: int, filters: Mapping[str, Any] | None = None) -> list[StoredHit]:
        raise NotImplementedError

    def count(self, filters: Mapping[str, Any] | None = None) -> int:
        raise NotImplementedError

    def delete(self, filters: Mapping[str, Any]) -> int:
        """Delete the points matching ``filters`` (e.g. ``{"source": path}``); returns how many."""
        raise NotImplementedError

    def scroll(self, *, with_vectors: bool = True, page: int = SCROLL_PAGE) -> Iterator[Point]:
        raise NotImplementedError

    def exists(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def delete_source(self, source: str) -> int:
        return self.delete({"source": source})

    def info(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "backend": type(self).__name__,
            "location": self.location,
            "collection": self.collection,
            "points": self.count() if spec else 0,
            "spec": asdict(spec) if spec else None,
        }

    @property
    def location(self) -> str:
        raise NotImplementedError

    def push_to(self, target: VectorStore, *, batch: int = SCROLL_PAGE) -> int:
        """Copy every point (same ids, vectors, payloads) into ``target``: laptop -> cluster."""
        if self.spec is None:
            self.open(create=False)
        target.open(self.spec)
        done, buffer = 0, []
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


# ---------------------------------------------------------------------------------------------------------------
# Qdrant Edge (embedded)


class EdgeStore(VectorStore):
    """Embedded Qdrant Edge shard under ``<root>/<collection>/``: nothing to start."""

    def __init__(
        self,
        root: str | Path,
        collection: str = "default",
        *,
        hnsw_m: int = 16,
        ef_construct: int = 100,
        hnsw_ef: int = 128,
    ):
        import qdrant_edge  # noqa: F401 - fail early with the import error if the engine is missing

        self.root = Path(root).expanduser()
        self.collection = _check_name(collection)
        self.folder = self.root / self.collection
        self.spec: CollectionSpec | None = None
        self._shard: Any = None
        self._hnsw = (hnsw_m, ef_construct)
        self.hnsw_ef = hnsw_ef  # search-time beam width (at least the number of results asked for)

    @property
    def location(self) -> str:
        return str(self.folder)

    def exists(self) -> bool:
        return (self.folder / "collection.json").exists()

    def open(self, spec: CollectionSpec | None = None, *, create: bool = True) -> CollectionSpec:
        import qdrant_edge as qe

        if self._shard is not None:
            if spec is not None and self.spec is not None:
                spec.check(self.spec, self.collection)
            return self.spec
        meta_path = self.folder / "collection.json"
        if meta_path.exists():
            stored = CollectionSpec(**json.loads(meta_path.read_text()))
            if spec is not None:
                spec.check(stored, self.collection)
            try:
                self._shard = qe.EdgeShard.load(str(self.folder / "shard"))
            except Exception as exc:
                hint = (
                    " -- another process has it open (an embedded store serves one process: stop the other one, or "
                    "query it through `qwen3vl-rag serve`)"
                    if "WouldBlock" in str(exc)
                    else ""
                )
                raise StoreError(f"cannot open the Qdrant Edge shard at {self.folder}: {exc}{hint}") from None
            self.spec = stored
            return stored
        if spec is None or not create:
            raise CollectionNotFoundError(
                f"no collection {self.collection!r} under {self.root} (index something into it first)"
            )
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(m=self._hnsw[0], ef_construct=self._hnsw[1], full_scan_threshold=10000),
        )
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._shard = qe.EdgeShard.create(str(self.folder / "shard"), config)
            for name in INDEXED_FIELDS:
                self._shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
        except OSError as exc:
            raise StoreError(f"cannot create a Qdrant Edge shard at {self.folder}: {exc}") from None
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(spec), indent=2))
        tmp.replace(meta_path)  # written last: a collection without it is not a collection yet
        self.spec = spec
        return spec

    def _need(self) -> Any:
        if self._shard is None:
            self.open(create=False)
        return self._shard

    def _filter(self, filters: Mapping[str, Any] | None) -> Any:
        import qdrant_edge as qe

        conditions = [
            qe.FieldCondition(key, match=qe.MatchAny(value) if isinstance(value, list) else qe.MatchValue(value))
            for key, value in _conditions(filters)
        ]
        return qe.Filter(must=conditions) if conditions else None

    def upsert(self, points: list[Point]) -> None:
        import qdrant_edge as qe

        if points:
            # Durable once applied: the shard's write-ahead log replays after a crash (flushed on close).
            self._need().update(
                qe.UpdateOperation.upsert_points([qe.Point(p.id, list(p.vector), p.payload) for p in points])
            )

    def existing(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        if not ids:
            return set()
        return {str(r.id) for r in self._need().retrieve(ids, False, False)}

    def search(self, vector: list[float], *, limit: int, filters: Mapping[str, Any] | None = None) -> list[StoredHit]:
        import qdrant_edge as qe

        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(list(vector)),
            with_payload=True,
            filter=self._filter(filters),
            params=qe.SearchParams(hnsw_ef=max(self.hnsw_ef, limit)),
        )
        return [StoredHit(str(p.id), float(p.score), dict(p.payload or {})) for p in self._need().query(request)]

    def count(self, filters: Mapping[str, Any] | None = None) -> int:
        import qdrant_edge as qe

        return int(self._need().count(qe.CountRequest(exact=True, filter=self._filter(filters))))

    def delete(self, filters: Mapping[str, Any]) -> int:
        import qdrant_edge as qe

        flt = self._filter(filters)
        if flt is None:
            raise ValueError("delete needs a filter (refusing to empty the whole collection)")
        n = self.count(filters)
        self._need().update(qe.UpdateOperation.delete_points_by_filter(flt))
        return n

    def scroll(self, *, with_vectors: bool = True, page: int = SCROLL_PAGE) -> Iterator[Point]:
        import qdrant_edge as qe

        offset = None
        while True:
            records, offset = self._need().scroll(
                qe.ScrollRequest(offset=offset, limit=page, with_payload=True, with_vector=with_vectors)
            )
            for r in records:
                yield Point(str(r.id), list(r.vector) if with_vectors and r.vector is not None else [], r.payload or {})
            if offset is None or not records:
                return

    def optimize(self) -> None:
        """Build the HNSW index now (otherwise the engine does it as segments grow)."""
        self._need().optimize()

    def close(self) -> None:
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None


# ---------------------------------------------------------------------------------------------------------------
# Qdrant server / cluster (qdrant-client)


class ServerStore(VectorStore):
    """A collection on a Qdrant server or cluster (``url`` + ``api_key``), or qdrant-client's local mode
    (``path=`` a folder, or ``":memory:"``). The code that talks to the collection is the same in every case."""

    def __init__(
        self,
        url: str | None = None,
        collection: str = "default",
        *,
        api_key: str | None = None,
        path: str | None = None,
        on_disk: bool = False,
        quantization: bool = False,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        timeout: float = 30.0,
        client: Any = None,
    ):
        from qdrant_client import QdrantClient

        if client is None:
            if (url is None) == (path is None):
                raise ValueError("pass exactly one of url= (a Qdrant server) or path= (qdrant-client local mode)")
            if url is not None:
                client = QdrantClient(url=url, api_key=api_key, timeout=int(timeout))
            else:
                client = QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
        self.client = client
        self.collection = _check_name(collection)
        self.spec: CollectionSpec | None = None
        self._where = url or path or "qdrant-client"
        self._options = dict(
            on_disk=on_disk, quantization=quantization, shard_number=shard_number, replication_factor=replication_factor
        )

    @property
    def location(self) -> str:
        return f"{self._where} / {self.collection}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (CollectionMismatchError, CollectionNotFoundError, ValueError):
            raise
        except Exception as exc:  # connection refused, timeouts, auth: the caller's language, not a traceback
            raise StoreError(f"Qdrant at {self._where}: {what} failed: {exc.__class__.__name__}: {exc}") from None

    def exists(self) -> bool:
        return bool(self._call("collection_exists", self.client.collection_exists, self.collection))

    def open(self, spec: CollectionSpec | None = None, *, create: bool = True) -> CollectionSpec:
        from qdrant_client import models

        if self.spec is not None:
            if spec is not None:
                spec.check(self.spec, self.collection)
            return self.spec
        if self.exists():
            info = self._call("get_collection", self.client.get_collection, self.collection)
            meta = dict(info.config.metadata or {})
            try:
                stored = CollectionSpec(**{k: meta[k] for k in ("model", "dim", "instruction", "distance")})
            except KeyError:
                raise CollectionMismatchError(
                    f"collection {self.collection!r} at {self._where} was not created by qwen3-vl-rag "
                    "(no model/dimension metadata); use another --collection"
                ) from None
            if spec is not None:
                spec.check(stored, self.collection)
            self.spec = stored
            return stored
        if spec is None or not create:
            raise CollectionNotFoundError(f"no collection {self.collection!r} at {self._where} (index something first)")
        opts = self._options
        quantization = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
            if opts["quantization"]
            else None
        )
        self._call(
            "create_collection",
            self.client.create_collection,
            self.collection,
            vectors_config=models.VectorParams(size=spec.dim, distance=models.Distance.COSINE, on_disk=opts["on_disk"]),
            quantization_config=quantization,
            shard_number=opts["shard_number"],
            replication_factor=opts["replication_factor"],
            metadata=asdict(spec),
        )
        for name in INDEXED_FIELDS:
            self._call(
                "create_payload_index",
                self.client.create_payload_index,
                self.collection,
                field_name=name,
                field_schema=models.PayloadSchemaType.KEYWORD,
            )
        self.spec = spec
        return spec

    def _need(self) -> None:
        if self.spec is None:
            self.open(create=False)

    def _filter(self, filters: Mapping[str, Any] | None) -> Any:
        from qdrant_client import models

        conditions = [
            models.FieldCondition(
                key=key,
                match=models.MatchAny(any=value) if isinstance(value, list) else models.MatchValue(value=value),
            )
            for key, value in _conditions(filters)
        ]
        return models.Filter(must=conditions) if conditions else None

    def upsert(self, points: list[Point]) -> None:
        from qdrant_client import models

        self._need()
        if points:
            self._call(
                "upsert",
                self.client.upsert,
                self.collection,
                points=[models.PointStruct(id=p.id, vector=list(p.vector), payload=p.payload) for p in points],
                wait=True,
            )

    def existing(self, ids: Iterable[str]) -> set[str]:
        self._need()
        ids = list(ids)
        if not ids:
            return set()
        records = self._call(
            "retrieve", self.client.retrieve, self.collection, ids=ids, with_payload=False, with_vectors=False
        )
        return {str(r.id) for r in records}

    def search(self, vector: list[float], *, limit: int, filters: Mapping[str, Any] | None = None) -> list[StoredHit]:
        self._need()
        response = self._call(
            "query_points",
            self.client.query_points,
            self.collection,
            query=list(vector),
            limit=limit,
            query_filter=self._filter(filters),
            with_payload=True,
        )
        return [StoredHit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def count(self, filters: Mapping[str, Any] | None = None) -> int:
        self._need()
        result = self._call("count", self.client.count, self.collection, count_filter=self._filter(filters), exact=True)
        return int(result.count)

    def delete(self, filters: Mapping[str, Any]) -> int:
        from qdrant_client import models

        flt = self._filter(filters)
        if flt is None:
            raise ValueError("delete needs a filter (refusing to empty the whole collection)")
        n = self.count(filters)
        self._call(
            "delete",
            self.client.delete,
            self.collection,
            points_selector=models.FilterSelector(filter=flt),
            wait=True,
        )
        return n

    def scroll(self, *, with_vectors: bool = True, page: int = SCROLL_PAGE) -> Iterator[Point]:
        self._need()
        offset = None
        while True:
            records, offset = self._call(
                "scroll",
                self.client.scroll,
                self.collection,
                limit=page,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
            for r in records:
                vector = r.vector if isinstance(r.vector, list) else []
                yield Point(str(r.id), list(vector), r.payload or {})
            if offset is None or not records:
                return

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a client that never connected
            pass


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise ValueError(f"invalid collection name {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def default_db() -> str:
    """The embedded store's default folder: ``$XDG_DATA_HOME/qwen3vl-rag`` (``~/.local/share/qwen3vl-rag``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "qwen3vl-rag")


def open_store(
    *,
    db: str | Path | None = None,
    url: str | None = None,
    api_key: str | None = None,
    collection: str = "default",
    **server_options: Any,
) -> VectorStore:
    """``url`` -> :class:`ServerStore`; otherwise an :class:`EdgeStore` under ``db`` (default: :func:`default_db`)."""
    if url:
        return ServerStore(url, collection, api_key=api_key, **server_options)
    return EdgeStore(db if db is not None else default_db(), collection)
