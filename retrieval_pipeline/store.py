"""Qdrant storage: one collection per corpus, one dense vector per item in the unified space.

Two backends, one interface and one payload schema, so a corpus indexed on a laptop can be pushed to a cluster:

* :class:`EdgeStore` (default): Qdrant Edge, the in-process Qdrant engine (HNSW, payload indexes, write-ahead
  log). A folder is all it needs: ``<root>/<collection>/`` holds the shard and ``collection.json``.
* :class:`ServerStore`: a Qdrant server or cluster through ``qdrant-client`` (URL + API key), with the options
  that matter at scale (on-disk vectors, int8 scalar quantization, shards, replicas). ``QdrantClient(path=...)``
  (qdrant-client's local mode) works too and is what the tests use.

:func:`open_store` is the front door (``db=`` a folder, or ``url=`` a server). :class:`VectorStore` holds the
algorithm both backends share (filters, delete by filter, paging, sources, verify); the backends only translate
native calls, each through one error translation, so a locked or damaged folder and an unreachable server are the
same :class:`StoreError` from every operation.

Every collection records the embedding model, the dimension and the document instruction it was built with;
opening it with a different model or dimension is a :class:`CollectionMismatchError`. What a point's payload holds
is :mod:`retrieval_pipeline.records`' business.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import CollectionMismatchError, CollectionNotFoundError, RAGError, StoreError
from .layout import (
    DENSE,
    LEGACY,
    PREFIX,
    RRF_K,
    SPARSE,
    QueryNode,
    SearchOptions,
    SparseQuery,
    VectorLayout,
    document_sparse,
    query_plan,
)
from .records import FILE_FIELDS, file_fields, sources_of, sources_update

__all__ = [  # the errors and the payload helpers are re-exported: ``from retrieval_pipeline.store import ...``
    "FILE_FIELDS",
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "CollectionSpec",
    "EdgeStore",
    "Point",
    "ServerStore",
    "StoreError",
    "StoredHit",
    "SearchOptions",
    "VectorLayout",
    "VectorStore",
    "default_db",
    "file_fields",
    "model_fingerprint",
    "open_store",
    "point_id",
    "sources_of",
    "sources_update",
]

logger = logging.getLogger(__name__)

# Payload fields with a keyword index (filters on them stay fast at scale).
INDEXED_FIELDS = ("modality", "source", "sources", "content_hash")
# Namespace of the content-derived point ids.
POINT_NAMESPACE = uuid.UUID("6c1f0b8e-3a52-4d5e-9f0e-7b0f51a9c2d4")
SCROLL_PAGE = 256
# Layout of ``collection.json`` (and of the collection metadata on a server). 0: the first layout (no ``format``
# key; point ids derive from the model name as typed). 1: ``model_id`` (what the model is, see
# :func:`model_fingerprint`) keys the point ids. 2: named vectors laid out as the spec's ``layout`` records
# (:mod:`retrieval_pipeline.layout`); formats 0 and 1 have no ``layout`` and hold one unnamed vector. A later
# layout bumps this; older ones keep opening (no migration: a spec without ``layout`` is read as that).
FORMAT = 2
ID_SCHEMES = {0: "uuid5(model|dim|content_key)", 1: "uuid5(model_id|dim|content_key)"}
ID_SCHEMES[2] = ID_SCHEMES[1]
# Points sampled (payload + vector read back) by a quick :meth:`VectorStore.verify`.
VERIFY_SAMPLE = 1024
# Largest safetensors header read by :func:`model_fingerprint` (real ones are a few MB at most).
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# config.json keys that say where / by what the checkpoint was saved, not what it is.
_CONFIG_NOISE = ("_name_or_path", "transformers_version")


def model_fingerprint(model_name_or_path: str, revision: str | None = None) -> str:
    """What a model *is*, independent of how its name was spelled or where its folder lives.

    A local folder: ``local:weights:`` + a hash of its ``config.json`` (minus the keys that record where it was
    saved) and of every weight file's content (streamed; each file's hash is cached on disk by path, size and
    modification time, so a 4 GB checkpoint is read once). Two copies of one checkpoint at different paths get the
    same fingerprint; two checkpoints of one architecture with different weights do not. Anything else is a hub id:
    ``hub:<id>@<revision or main>``."""
    path = Path(os.path.expanduser(str(model_name_or_path)))
    if path.is_dir():
        real = path.resolve()
        return _folder_fingerprint(str(real), _listing(real))
    return f"hub:{model_name_or_path}@{revision or 'main'}"


def legacy_fingerprint(model_name_or_path: str) -> str | None:
    """The fingerprint of collections created before weights were hashed (``local:`` + config and safetensors
    headers, weight files by name and size): such a collection still opens with the same folder. None: not a
    local folder."""
    path = Path(os.path.expanduser(str(model_name_or_path)))
    if not path.is_dir():
        return None
    real = path.resolve()
    return _headers_fingerprint(str(real), _listing(real))


def _listing(real: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(
            sorted((p.relative_to(real).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in _model_files(real))
        )
    except OSError:
        return ()


def _model_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and (p.name == "config.json" or _is_weights(p))]


def _is_weights(path: Path) -> bool:
    return path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _config_bytes(file: Path) -> bytes:
    config = json.loads(file.read_text(encoding="utf-8"))
    if isinstance(config, dict):
        for key in _CONFIG_NOISE:
            config.pop(key, None)
    return json.dumps(config, sort_keys=True).encode()


@lru_cache(maxsize=64)
def _folder_fingerprint(folder: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256(b"qwen3vl-rag model fingerprint v2\0")
    root = Path(folder)
    for rel, size, mtime in listing:
        file = root / rel
        digest.update(f"{rel}\0".encode())
        try:
            if file.name == "config.json":
                digest.update(_config_bytes(file))
            else:
                digest.update(_content_hash(file, size, mtime).encode())
        except (OSError, ValueError) as exc:  # unreadable: its name and size still count
            digest.update(f"unreadable:{size}:{exc.__class__.__name__}".encode())
    return "local:weights:" + digest.hexdigest()[:32]


# Weight files' content hashes, by resolved path, size and modification time (a file changed in place is hashed
# again). One JSON file under the user's cache folder; a missing or unreadable cache only costs a re-read.
HASH_CACHE_ENV = "QWEN3VL_RAG_HASH_CACHE"
HASH_CHUNK = 8 * 1024 * 1024


def _hash_cache_path() -> Path:
    configured = os.environ.get(HASH_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qwen3vl-rag" / "weight-hashes.json"


def _content_hash(file: Path, size: int, mtime: int) -> str:
    key = f"{file}\0{size}\0{mtime}"
    cache_path = _hash_cache_path()
    try:
        cache = json.loads(cache_path.read_text())
        if isinstance(cache, dict) and isinstance(cache.get(key), str):
            return cache[key]
    except (OSError, ValueError):
        cache = {}
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        cache = cache if isinstance(cache, dict) else {}
        cache = {k: v for k, v in cache.items() if not k.startswith(f"{file}\0")}  # older versions of this file
        cache[key] = value
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)  # concurrent writers: the last one wins, each file whole
    except OSError as exc:
        logger.debug("weight hash cache %s not written: %s", cache_path, exc)
    return value


@lru_cache(maxsize=64)
def _headers_fingerprint(folder: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256(b"qwen3vl-rag model fingerprint v1\0")
    root = Path(folder)
    for rel, size, _mtime in listing:
        file = root / rel
        is_config = file.name == "config.json"
        digest.update(f"{rel}\0{'' if is_config else size}\0".encode())  # a config counts by its content
        try:
            if is_config:
                digest.update(_config_bytes(file))
            elif file.suffix == ".safetensors":
                with open(file, "rb") as fh:
                    head = fh.read(8)
                    (n,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
                    digest.update(fh.read(min(n, MAX_SAFETENSORS_HEADER)))
        except (OSError, ValueError) as exc:  # unreadable: its name and size still count
            digest.update(f"unreadable:{exc.__class__.__name__}".encode())
    return "local:" + digest.hexdigest()[:32]


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection's vectors mean: opening it with another model or dimension is refused.

    ``model`` is the model as given when the collection was created (shown, and loaded by ``search`` when no model
    is named); ``model_id`` is what the model is (:func:`model_fingerprint`) and, from ``format`` 1 on, keys the
    point ids. The id scheme is fixed when a collection is created and never changes for it."""

    model: str
    dim: int
    instruction: str
    distance: str = "cosine"
    model_id: str | None = None
    format: int = FORMAT
    # The dtype the vectors were computed in ("float32", "bfloat16"); None for collections that predate it.
    # Recorded, not enforced: vectors of either dtype answer the same queries (see the README's fidelity table).
    dtype: str | None = None
    # How the vectors are laid out (quantization, funnel, BM25). None in a spec asked for: whatever the collection
    # has (a new one gets :meth:`VectorLayout.choose` for its dimension); a stored spec always has one.
    layout: VectorLayout | None = None

    def __post_init__(self) -> None:
        if self.format >= 1 and self.model_id is None:
            object.__setattr__(self, "model_id", model_fingerprint(self.model))
        if isinstance(self.layout, Mapping):
            object.__setattr__(self, "layout", VectorLayout.from_dict(self.layout))

    @property
    def vectors(self) -> VectorLayout:
        """The layout in force (a spec without one: the layout before layouts existed)."""
        return self.layout or LEGACY

    def resolved(self) -> CollectionSpec:
        """This spec as a new collection records it: its layout chosen when not given."""
        from dataclasses import replace

        # (a spec of an older format, as tests of old collections write, gets the layout of that time)
        layout = self.layout or (VectorLayout.choose(self.dim) if self.format >= FORMAT else LEGACY)
        layout.check(self.dim)
        return replace(self, layout=layout, format=FORMAT if layout.named else min(self.format, 1))

    @property
    def id_key(self) -> str:
        """The model part of the point ids (format 0: the model name as it was typed)."""
        return self.model_id if self.format >= 1 and self.model_id else self.model

    @property
    def id_scheme(self) -> str:
        return ID_SCHEMES.get(self.format, f"format {self.format}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "id_scheme": self.id_scheme}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "the collection") -> CollectionSpec:
        """Read a stored spec; a layout without ``format`` is format 0 (ids from the model name)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a JSON object")
        fmt = data.get("format", 0)
        if not isinstance(fmt, int) or fmt < 0:
            raise ValueError(f"{where}: invalid format {fmt!r}")
        if fmt > FORMAT:
            raise CollectionMismatchError(
                f"{where} was written by a newer qwen3-vl-rag (layout format {fmt}; this version reads up to "
                f"{FORMAT}): upgrade qwen3-vl-rag"
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["format"] = fmt
        values["layout"] = VectorLayout.from_dict(data["layout"]) if "layout" in data else LEGACY
        missing = {"model", "dim", "instruction"} - set(values)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        return cls(**values)

    def same_model(self, stored: CollectionSpec) -> bool:
        """Whether this spec's model is the one ``stored`` was built with (compared by what it is; a collection
        created before weights were hashed is compared by the fingerprint of that time)."""
        mine = self.model_id or model_fingerprint(self.model)
        if stored.format >= 1 and stored.model_id:
            if stored.model_id == mine:
                return True
            legacy = stored.model_id.startswith("local:") and not stored.model_id.startswith("local:weights:")
            return legacy and mine.startswith("local:") and legacy_fingerprint(self.model) == stored.model_id
        return stored.model == self.model or model_fingerprint(stored.model) == mine

    def check(self, other: CollectionSpec, collection: str) -> None:
        if self.layout is not None and other.layout is not None and self.layout != other.layout:
            raise CollectionMismatchError(
                f"collection {collection!r} was created with the vector layout {other.layout.describe(other.dim)!r}; "
                f"it cannot be opened with another one ({'; '.join(self.layout.differences(other.layout))}). "
                "Leave the layout options out to use it as it is, or index into another --collection "
                "(--rebuild recreates it)"
            )
        if self.dim != other.dim or not self.same_model(other):
            raise CollectionMismatchError(
                f"collection {collection!r} holds {other.dim}-d vectors of {other.model!r} "
                f"({other.model_id or 'format 0'}); it cannot be used with {self.dim}-d vectors of {self.model!r} "
                f"({self.model_id or model_fingerprint(self.model)}). Use the same --embedding-model / dimension, "
                "or another --collection"
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


@dataclass(frozen=True)
class StoreAddress:
    """How another process reaches the same collection (picklable): an embedded Edge folder (``root``), a Qdrant
    server or cluster (``url``), or qdrant-client's local mode (``path``). Distributed ingestion hands it to its
    workers; :meth:`connect` opens a store there."""

    collection: str
    root: str | None = None
    url: str | None = None
    path: str | None = None
    api_key: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def single_writer(self) -> bool:
        """Whether only one process at a time may open it (an embedded folder, qdrant-client's local mode): then
        all reads and writes go through the one process that owns it."""
        return self.url is None

    def connect(self) -> VectorStore:
        if self.root is not None:
            return EdgeStore(self.root, self.collection, **dict(self.options))
        return ServerStore(self.url, self.collection, api_key=self.api_key, path=self.path, **dict(self.options))


def point_id(content_key: str, spec: CollectionSpec) -> str:
    """A point id derived from the content and the model + dimension: re-indexing is idempotent.

    The model part is the collection's ``id_key`` (format 1: the model fingerprint, the same on every machine and
    for every spelling of the model; format 0: the model name as typed when the collection was created)."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{spec.id_key}|{spec.dim}|{content_key}"))


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
            if not values:
                raise ValueError(f"filter {key!r}: the list of values is empty (choose at least one)")
            if not (kinds == {str} or kinds == {int}):
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


# ---------------------------------------------------------------------------------------------------------------
# The interface, and the algorithm both backends share

_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)
# The sibling collection a rebuild is built in before it replaces the collection (``index --rebuild``).
REBUILD_SUFFIX = ".rebuilding"


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
        try:
            staged = replace(self.address(), collection=name).connect()
        except ValueError:  # a client object or memory: the same client
            staged = ServerStore(collection=name, client=self.client)  # type: ignore[attr-defined]
        staged.drop()
        return staged

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

    def _native_filter(self, conditions: list[tuple[str, Any]]) -> Any:
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


# ---------------------------------------------------------------------------------------------------------------
# Qdrant Edge (embedded)


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
# Filtered HNSW searches explore two hops (ACORN) when the filter keeps at most this share of the points: a filter
# whose matches are too few for the graph's payload links and too many for a plain scan otherwise loses most of its
# true neighbours (benchmarks/bench_million.py, a 10 % filter on 100k 256-d prefixes: recall@10 0.28 without).
ACORN_SELECTIVITY = 0.4
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

    def _native_filter(self, conditions: list[tuple[str, Any]]) -> Any:
        import qdrant_edge as qe

        must = [
            qe.FieldCondition(key, match=qe.MatchAny(value) if isinstance(value, list) else qe.MatchValue(value))
            for key, value in conditions
        ]
        return qe.Filter(must=must) if must else None

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


def _dense(vector: Any) -> list[float]:
    """The dense vector of a stored record (named or not)."""
    if isinstance(vector, dict):
        vector = vector.get(DENSE)
    return list(vector) if isinstance(vector, (list, tuple)) else []


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

    def _native_filter(self, conditions: list[tuple[str, Any]]) -> Any:
        from qdrant_client import models

        must = [
            models.FieldCondition(
                key=key,
                match=models.MatchAny(any=value) if isinstance(value, list) else models.MatchValue(value=value),
            )
            for key, value in conditions
        ]
        return models.Filter(must=must) if must else None

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


# ---------------------------------------------------------------------------------------------------------------
# The front door


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise ValueError(f"invalid collection name {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def default_db() -> str:
    """The embedded store's default folder: ``$XDG_DATA_HOME/qwen3vl-rag`` (``~/.local/share/qwen3vl-rag``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "qwen3vl-rag")


def open_store(
    db: str | Path | None = None,
    url: str | None = None,
    *,
    collection: str = "default",
    api_key: str | None = None,
    **options: Any,
) -> VectorStore:
    """The one front door to a collection, wherever it lives; the code that uses it does not change.

    * ``open_store(db="./qdrant", collection="docs")``: embedded Qdrant Edge under that folder
      (:class:`EdgeStore`; ``options``: ``hnsw_m``, ``ef_construct``, ``hnsw_ef``).
    * ``open_store(url="http://qdrant:6333", collection="docs", api_key=...)``: a Qdrant server or cluster
      (:class:`ServerStore`; ``options``: ``on_disk``, ``quantization``, ``shard_number``, ``replication_factor``,
      ``timeout``).
    * ``open_store()``: embedded, under :func:`default_db` (where ``qwen3vl-rag index`` puts things).

    Nothing is opened yet (the collection is opened, or created for a spec, by the first operation or
    :meth:`VectorStore.open`). Whichever backend: a store that cannot be reached or used -- a server that is down, a
    folder another process holds, damaged files -- raises :class:`StoreError` from every operation."""
    if db is not None and url:
        raise ValueError("pass db= (an embedded store's folder) or url= (a Qdrant server), not both")
    if url:
        return ServerStore(url, collection, api_key=api_key, **options)
    if api_key is not None:
        raise ValueError("api_key= is for a Qdrant server: pass url= too")
    return EdgeStore(db if db is not None else default_db(), collection, **options)
