"""A Qdrant server or cluster through ``qdrant-client`` (URL + API key), with the options that matter at scale;
qdrant-client's local mode (``path=``) speaks the same API and is what the tests use."""

from __future__ import annotations

import contextlib
import logging
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
from .spec import INDEXED_FIELDS, CollectionSpec, Point, StoreAddress, StoredHit, _check_name, _dense

logger = logging.getLogger(__name__)


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
        shard_number: int | None = None,
        replication_factor: int | None = None,
        hnsw_m: int = 16,
        ef_construct: int = 100,
        timeout: float = 30.0,
        client: Any = None,
        search: SearchOptions | None = None,
    ):
        from qdrant_client import QdrantClient

        self.collection = _check_name(collection)
        self.spec: CollectionSpec | None = None
        self._where = url or path or "qdrant-client"
        if client is None and (url is None) == (path is None):
            raise ValueError("pass exactly one of url= (a Qdrant server) or path= (qdrant-client local mode)")
        # how to connect again after close() (None: a client object or memory, which cannot be reopened)
        self._connect = None if client is not None or path == ":memory:" else (url, api_key, path, timeout)
        if client is None and path == ":memory:":
            client = self._call("connect", QdrantClient, location=":memory:")
        self.client = client if client is not None else self._client()
        self._closed = False
        self._options = dict(
            shard_number=shard_number, replication_factor=replication_factor, hnsw_m=hnsw_m, ef_construct=ef_construct
        )
        self._search_defaults = search or SearchOptions()

    def _client(self) -> Any:
        from qdrant_client import QdrantClient

        url, api_key, path, timeout = self._connect
        if url is not None:
            return self._call("connect", QdrantClient, url=url, api_key=api_key, timeout=int(timeout))
        return self._call("connect", QdrantClient, path=path)

    def _opened(self) -> bool:
        return self.spec is not None and not self._closed

    @property
    def location(self) -> str:
        return f"{self._where} / {self.collection}"

    def sibling(self, collection: str) -> VectorStore:
        try:
            return super().sibling(collection)
        except ValueError:  # a client object or memory: the same client
            return ServerStore(collection=collection, client=self.client)

    def address(self) -> StoreAddress:
        if self._connect is None:
            raise ValueError(
                "this collection lives in a client object or in memory, which other processes cannot reach: "
                "pass url= (a Qdrant server) or path= (a folder)"
            )
        url, api_key, path, timeout = self._connect
        options = {k: v for k, v in self._options.items() if v is not None}
        return StoreAddress(
            self.collection,
            url=url,
            path=None if path is None else str(Path(path).expanduser().resolve()),
            api_key=api_key,
            options=tuple({**options, "timeout": timeout}.items()),
        )

    def _store_error(self, what: str, exc: BaseException) -> StoreError:
        # connection refused, timeouts, auth: the caller's language, not a traceback
        return StoreError(f"Qdrant at {self._where}: {what} failed: {exc.__class__.__name__}: {exc}")

    def exists(self) -> bool:
        self._reconnect()
        return bool(self._call("collection_exists", self.client.collection_exists, self.collection))

    def _reconnect(self) -> None:
        """After :meth:`close` (e.g. while another process had the local folder), connect again on use."""
        if self._closed and self._connect is not None:
            self.client, self._closed = self._client(), False

    def open(self, spec: CollectionSpec | None = None, *, create: bool = True) -> CollectionSpec:
        self._reconnect()
        if self.spec is not None:
            if spec is not None:
                spec.check(self.spec, self.collection)
            return self.spec
        if self.exists():
            stored = self._stored_spec()
            if spec is not None:
                spec.check(stored, self.collection)
            self.spec = stored
            return stored
        if spec is None or not create:
            raise CollectionNotFoundError(f"no collection {self.collection!r} at {self._where} (index something first)")
        self.spec = self._create(spec)
        return self.spec

    def index_status(self) -> dict[str, Any]:
        self._need()
        info = self._call("get_collection", self.client.get_collection, self.collection)
        return {
            "indexed_vectors": int(info.indexed_vectors_count or 0),
            "points": int(info.points_count or 0),
            "segments": int(info.segments_count or 0),
            "status": str(getattr(info.status, "value", info.status)),
        }

    def _stored_spec(self) -> CollectionSpec:
        info = self._call("get_collection", self.client.get_collection, self.collection)
        meta = dict(info.config.metadata or {})
        try:
            return CollectionSpec.from_dict(meta, f"collection {self.collection!r} at {self._where}")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CollectionMismatchError):
                raise
            raise CollectionMismatchError(
                f"collection {self.collection!r} at {self._where} was not created by qwen3-vl-rag "
                "(no model/dimension metadata); use another --collection"
            ) from None

    def _create(self, spec: CollectionSpec) -> CollectionSpec:
        from qdrant_client import models

        spec = spec.resolved()
        self._call(
            "create_collection",
            self.client.create_collection,
            self.collection,
            **server_collection_config(spec, **self._options),
        )
        for name in INDEXED_FIELDS:
            self._call(
                "create_payload_index",
                self.client.create_payload_index,
                self.collection,
                field_name=name,
                field_schema=models.PayloadSchemaType.KEYWORD,
            )
        return spec

    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Qdrant's bulk-upload mode: the HNSW graph is not built while points arrive (m=0), and is built once
        after (m restored); the payload indexes exist from creation on. The original setting comes back even when
        the upload fails."""
        self._need()
        self._call("update_collection", self.client.update_collection, self.collection, **bulk_load_diff(True))
        try:
            yield
        finally:
            restore = bulk_load_diff(False, self._options["hnsw_m"])
            self._call("update_collection", self.client.update_collection, self.collection, **restore)

    def drop(self) -> None:
        self.spec = None
        if self.exists():
            self._call("delete_collection", self.client.delete_collection, self.collection)

    def replace_with(self, staged: str) -> None:
        """Make the sibling collection ``staged`` (on the same server) this collection. Qdrant cannot rename a
        collection: this one is recreated with the staged one's spec and every point copied over, then the staged
        one is deleted (until then it holds the new data, should the copy be interrupted)."""
        self._reconnect()
        source = ServerStore(collection=staged, client=self.client)
        spec = source.open(create=False)
        self.drop()
        self.open(spec)
        source.push_to(self)
        source.drop()

    def close(self) -> None:
        with contextlib.suppress(StoreError):  # closing a client that never connected
            self._call("close", self.client.close)
        self._closed = self._connect is not None  # a client given (or in memory) stays as it is

    # ------------------------------------------------------------------------------------------------------------
    # native primitives

    def _native_filter(self, clause: Clause) -> Any:
        return native(clause, _ServerFilters())

    def _upsert(self, points: list[Point]) -> None:
        from qdrant_client import models

        structs = [
            models.PointStruct(id=p.id, vector=_server_vectors(self._layout_vectors(p)), payload=p.payload)
            for p in points
        ]
        self._call("upsert", self.client.upsert, self.collection, points=structs, wait=True)

    def _retrieve(self, ids: list[str], *, payload: bool, vectors: bool) -> list[Point]:
        with_vectors = [DENSE] if vectors and self.spec is not None and self.spec.vectors.named else vectors
        records = self._call(
            "retrieve", self.client.retrieve, self.collection, ids=ids, with_payload=payload, with_vectors=with_vectors
        )
        return [_point(r, vectors) for r in records]

    def _set_payload(self, point: str, values: dict[str, Any]) -> None:
        self._call("set_payload", self.client.set_payload, self.collection, payload=values, points=[point])

    def _delete_ids(self, ids: list[str]) -> None:
        from qdrant_client import models

        selector = models.PointIdsList(points=ids)
        self._call("delete", self.client.delete, self.collection, points_selector=selector, wait=True)

    def _delete_filter(self, flt: Any) -> None:
        from qdrant_client import models

        selector = models.FilterSelector(filter=flt)
        self._call("delete", self.client.delete, self.collection, points_selector=selector, wait=True)

    def _query(self, plan: QueryNode, flt: Any) -> list[StoredHit]:
        request = server_query(plan, flt)
        response = self._call("query_points", self.client.query_points, self.collection, with_payload=True, **request)
        return [StoredHit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def _count(self, flt: Any) -> int:
        return int(self._call("count", self.client.count, self.collection, count_filter=flt, exact=True).count)

    def _scroll_page(self, flt: Any, limit: int, offset: Any, with_vectors: bool) -> tuple[list[Point], Any]:
        records, offset = self._call(
            "scroll",
            self.client.scroll,
            self.collection,
            scroll_filter=flt,
            limit=limit,
            offset=offset,
            with_payload=True,
            with_vectors=[DENSE]
            if with_vectors and self.spec is not None and self.spec.vectors.named
            else with_vectors,
        )
        return [_point(r, with_vectors) for r in records], offset


def _point(record: Any, with_vector: bool) -> Point:
    return Point(str(record.id), _dense(record.vector) if with_vector else [], dict(record.payload or {}))


def server_collection_config(
    spec: CollectionSpec,
    *,
    shard_number: int | None = None,
    replication_factor: int | None = None,
    hnsw_m: int = 16,
    ef_construct: int = 100,
) -> dict[str, Any]:
    """``create_collection`` arguments for ``spec``'s layout on a Qdrant server: the same named vectors, quantization,
    funnel and BM25 (IDF) as the embedded engine, with the server's own optimizer, on-disk originals and sharding."""
    from qdrant_client import models

    layout = spec.vectors
    cosine = models.Distance.COSINE
    quantization = {
        "int8": models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
        ),
        "binary": models.BinaryQuantization(
            binary=models.BinaryQuantizationConfig(
                always_ram=True, query_encoding=models.BinaryQuantizationQueryEncoding.SCALAR8BITS
            )
        ),
    }.get(layout.quantization)
    vectors: Any
    if not layout.named:
        vectors = models.VectorParams(size=spec.dim, distance=cosine)
    elif layout.prefix_dim:
        vectors = {
            DENSE: models.VectorParams(
                size=spec.dim, distance=cosine, on_disk=True, hnsw_config=models.HnswConfigDiff(m=0)
            ),
            PREFIX: models.VectorParams(
                size=layout.prefix_dim, distance=cosine, on_disk=layout.on_disk, quantization_config=quantization
            ),
        }
    else:
        vectors = {
            DENSE: models.VectorParams(
                size=spec.dim, distance=cosine, on_disk=layout.on_disk, quantization_config=quantization
            )
        }
    sparse = {SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)} if layout.hybrid else None
    return dict(
        vectors_config=vectors,
        sparse_vectors_config=sparse,
        hnsw_config=models.HnswConfigDiff(m=hnsw_m, ef_construct=ef_construct),
        shard_number=shard_number,
        replication_factor=replication_factor,
        metadata=spec.to_dict(),
    )


def bulk_load_diff(start: bool, hnsw_m: int = 16) -> dict[str, Any]:
    """``update_collection`` arguments that start (no graph while uploading: m=0) or end (m restored) a bulk load."""
    from qdrant_client import models

    return dict(hnsw_config=models.HnswConfigDiff(m=0 if start else hnsw_m))


def server_query(plan: QueryNode, flt: Any) -> dict[str, Any]:
    """``query_points`` arguments for a :func:`~retrieval_pipeline.layout.query_plan`."""
    from qdrant_client import models

    def stage(node: QueryNode) -> dict[str, Any]:
        if node.fusion:
            query: Any = models.RrfQuery(rrf=models.Rrf(k=RRF_K))
            params = None
        else:
            vector = node.vector
            query = (
                models.SparseVector(indices=vector.indices, values=vector.values)
                if isinstance(vector, SparseQuery)
                else vector
            )
            quantization = (
                models.QuantizationSearchParams(
                    ignore=node.ignore_quantization, rescore=node.rescore, oversampling=node.oversampling
                )
                if node.quantized
                else None
            )
            acorn = (
                models.AcornSearchParams(enable=True, max_selectivity=ACORN_SELECTIVITY) if flt is not None else None
            )
            params = (
                None
                if isinstance(vector, SparseQuery)
                else models.SearchParams(hnsw_ef=node.hnsw_ef, exact=node.exact, quantization=quantization, acorn=acorn)
            )
        out: dict[str, Any] = {"query": query, "using": node.using, "limit": node.limit}
        if node.prefetch:
            out["prefetch"] = [models.Prefetch(filter=flt, **stage(p)) for p in node.prefetch]
        if params is not None:
            out["params"] = params
        return out

    top = stage(plan)
    if "params" in top:
        top["search_params"] = top.pop("params")
    return {**top, "query_filter": flt}


def _server_vectors(vectors: Any) -> Any:
    from qdrant_client import models

    if isinstance(vectors, dict):
        return {
            k: models.SparseVector(indices=v.indices, values=v.values) if isinstance(v, SparseQuery) else v
            for k, v in vectors.items()
        }
    return vectors


class _ServerFilters:
    """Filters in qdrant-client's terms."""

    def condition(self, key: str, match: Any, bounds: Mapping[str, float] | None) -> Any:
        from qdrant_client import models

        if bounds is not None:
            return models.FieldCondition(key=key, range=models.Range(**bounds))
        value = models.MatchAny(any=match) if isinstance(match, list) else models.MatchValue(value=match)
        return models.FieldCondition(key=key, match=value)

    def filter(self, must: list[Any], should: list[Any], must_not: list[Any]) -> Any:
        from qdrant_client import models

        return models.Filter(must=must or None, should=should or None, must_not=must_not or None)
