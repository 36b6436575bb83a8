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

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import CollectionMismatchError, CollectionNotFoundError, StoreError

logger = logging.getLogger(__name__)

# Payload fields with a keyword index (filters on them stay fast at scale).
INDEXED_FIELDS = ("modality", "source", "sources", "content_hash")
# Namespace of the content-derived point ids.
POINT_NAMESPACE = uuid.UUID("6c1f0b8e-3a52-4d5e-9f0e-7b0f51a9c2d4")
SCROLL_PAGE = 256
# Layout of ``collection.json`` (and of the collection metadata on a server). 0: the first layout (no ``format``
# key; point ids derive from the model name as typed). 1: ``model_id`` (what the model is, see
# :func:`model_fingerprint`) keys the point ids. A later layout bumps this; older ones keep opening.
FORMAT = 1
ID_SCHEMES = {0: "uuid5(model|dim|content_key)", 1: "uuid5(model_id|dim|content_key)"}
# Points sampled (payload + vector read back) by a quick :meth:`VectorStore.verify`.
VERIFY_SAMPLE = 1024
# Largest safetensors header read by :func:`model_fingerprint` (real ones are a few MB at most).
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# config.json keys that say where / by what the checkpoint was saved, not what it is.
_CONFIG_NOISE = ("_name_or_path", "transformers_version")


def model_fingerprint(model_name_or_path: str, revision: str | None = None) -> str:
    """What a model *is*, independent of how its name was spelled or where its folder lives.

    A local folder: ``local:`` + a hash of its ``config.json`` (minus the keys that record where it was saved),
    the safetensors headers (tensor names, shapes, dtypes, offsets) and every weight file's name and size --
    cheap (no weights are read), and the same for two copies of one checkpoint at different paths. Anything else is
    a hub id: ``hub:<id>@<revision or main>``.
    """
    path = Path(os.path.expanduser(str(model_name_or_path)))
    if path.is_dir():
        real = path.resolve()
        try:
            listing = tuple(
                sorted(
                    (p.relative_to(real).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in _model_files(real)
                )
            )
        except OSError:
            listing = ()
        return _folder_fingerprint(str(real), listing)
    return f"hub:{model_name_or_path}@{revision or 'main'}"


def _model_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and (p.name == "config.json" or _is_weights(p))]


def _is_weights(path: Path) -> bool:
    return path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@lru_cache(maxsize=64)
def _folder_fingerprint(folder: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256(b"qwen3vl-rag model fingerprint v1\0")
    root = Path(folder)
    for rel, size, _mtime in listing:
        file = root / rel
        is_config = file.name == "config.json"
        digest.update(f"{rel}\0{'' if is_config else size}\0".encode())  # a config counts by its content
        try:
            if is_config:
                config = json.loads(file.read_text(encoding="utf-8"))
                if isinstance(config, dict):
                    for key in _CONFIG_NOISE:
                        config.pop(key, None)
                digest.update(json.dumps(config, sort_keys=True).encode())
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

    def __post_init__(self) -> None:
        if self.format >= 1 and self.model_id is None:
            object.__setattr__(self, "model_id", model_fingerprint(self.model))

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
        missing = {"model", "dim", "instruction"} - set(values)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        return cls(**values)

    def same_model(self, stored: CollectionSpec) -> bool:
        """Whether this spec's model is the one ``stored`` was built with (compared by what it is)."""
        mine = self.model_id or model_fingerprint(self.model)
        if stored.format >= 1 and stored.model_id:
            return stored.model_id == mine
        return stored.model == self.model or model_fingerprint(stored.model) == mine

    def check(self, other: CollectionSpec, collection: str) -> None:
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


def point_id(content_key: str, spec: CollectionSpec) -> str:
    """A point id derived from the content and the model + dimension: re-indexing is idempotent.

    The model part is the collection's ``id_key`` (format 1: the model fingerprint, the same on every machine and
    for every spelling of the model; format 0: the model name as typed when the collection was created)."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{spec.id_key}|{spec.dim}|{content_key}"))


# Payload fields that describe a point's place in one file (which file, where in it, the user's metadata for it).
# A point whose content several files hold keeps them per source under ``files``; the primary source's (the first
# of ``sources``) are also at the top level, where filters and readers look.
FILE_FIELDS = ("file_name", "metadata", "chunk", "span", "page", "segment")


def file_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {k: payload[k] for k in FILE_FIELDS if k in payload}


def sources_update(sources: list[str], files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The payload keys to set when a point's sources change: the list, the primary source and its file fields."""
    update: dict[str, Any] = {"sources": sources, "source": sources[0]}
    if files:  # points written before per-file fields existed have none
        update["files"] = dict(files)
        update.update(files.get(sources[0], {}))
    return update


def sources_of(payload: Mapping[str, Any]) -> list[str]:
    """Every source (file path / URL) that holds a point's content; older points only have ``source``."""
    sources = payload.get("sources")
    if isinstance(sources, list) and sources:
        return [str(s) for s in sources]
    source = payload.get("source")
    return [str(source)] if source else []


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
        """Open the collection; create it for ``spec`` when missing (``create``), else check ``spec`` matches.

        Returns the collection's own (stored) spec: its id scheme is the one to use for point ids."""
        raise NotImplementedError

    def upsert(self, points: list[Point]) -> None:
        raise NotImplementedError

    def existing(self, ids: Iterable[str]) -> set[str]:
        raise NotImplementedError

    def retrieve(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The payloads of the stored points among ``ids`` (id -> payload)."""
        raise NotImplementedError

    def set_payload(self, point: str, values: Mapping[str, Any]) -> None:
        """Set payload keys of one point (the others are kept)."""
        raise NotImplementedError

    def delete_ids(self, ids: Iterable[str]) -> None:
        raise NotImplementedError

    def search(self, vector: list[float], *, limit: int, filters: Mapping[str, Any] | None = None) -> list[StoredHit]:
        raise NotImplementedError

    def count(self, filters: Mapping[str, Any] | None = None) -> int:
        raise NotImplementedError

    def delete(self, filters: Mapping[str, Any]) -> int:
        """Delete the points matching ``filters`` (e.g. ``{"modality": "video"}``); returns how many."""
        raise NotImplementedError

    def scroll(
        self, *, with_vectors: bool = True, page: int = SCROLL_PAGE, filters: Mapping[str, Any] | None = None
    ) -> Iterator[Point]:
        raise NotImplementedError

    def exists(self) -> bool:
        raise NotImplementedError

    def drop(self) -> None:
        """Delete the whole collection (``index --rebuild``)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

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

    def _vectors(self, ids: list[str]) -> dict[str, list[float]]:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "backend": type(self).__name__,
            "location": self.location,
            "collection": self.collection,
            "points": self.count() if spec else 0,
            "spec": spec.to_dict() if spec else None,
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

_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


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


class EdgeStore(VectorStore):
    """Embedded Qdrant Edge shard under ``<root>/<collection>/``: nothing to start.

    ``collection.json`` records the spec (written last when a collection is created: without it the folder is not
    a collection). ``state.json`` records the point count at the last clean close: a shard that opens with another
    count was damaged on disk (truncated files lose points silently), and is refused with a way to rebuild it. Every
    engine failure is a :class:`StoreError`, never a raw traceback."""

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
        self._damaged = False
        self._hnsw = (hnsw_m, ef_construct)
        self.hnsw_ef = hnsw_ef  # search-time beam width (at least the number of results asked for)

    @property
    def location(self) -> str:
        return str(self.folder)

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

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        """Run an engine call; its failures (including Rust panics, which are not ``Exception``) -> StoreError."""
        try:
            return fn(*args)
        except _FATAL:
            raise
        except (StoreError, ValueError):
            raise
        except BaseException as exc:  # noqa: BLE001 - pyo3's PanicException derives from BaseException
            self._damaged = True
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise _damaged(self.folder, f"{what} failed: {detail}") from None

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
        try:
            self._shard = qe.EdgeShard.load(str(self.folder / "shard"))
        except _FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001 - a damaged shard can make the engine panic
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            if "WouldBlock" in text:
                raise StoreError(
                    f"cannot open the Qdrant Edge shard at {self.folder}: {text} -- another process has it open (an "
                    "embedded store serves one process: stop the other one, or query it through `qwen3vl-rag serve`)"
                ) from None
            raise _damaged(self.folder, f"cannot open the shard: {text}") from None
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
        counted = int(self._call("count", self._shard.count, qe.CountRequest(exact=True)))
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

    def _create(self, spec: CollectionSpec) -> CollectionSpec:
        import qdrant_edge as qe

        shard_path = self.folder / "shard"
        if shard_path.exists():  # left by a creation that died before writing collection.json
            logger.warning("removing the unfinished collection at %s", self.folder)
            shutil.rmtree(shard_path)
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(m=self._hnsw[0], ef_construct=self._hnsw[1], full_scan_threshold=10000),
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._shard = qe.EdgeShard.create(str(shard_path), config)
            for name in INDEXED_FIELDS:
                self._shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
        except _FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001
            self._abandon()
            raise StoreError(f"cannot create a Qdrant Edge shard at {self.folder}: {exc}") from None
        self._write_state({"clean": False})
        tmp = self._meta_path.with_name(f"collection.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(spec.to_dict(), indent=2))
        tmp.replace(self._meta_path)  # written last: a collection without it is not a collection yet
        self.spec = spec
        return spec

    def _abandon(self) -> None:
        """Let go of the shard without writing anything (it is damaged or half made)."""
        shard, self._shard = self._shard, None
        if shard is not None:
            with contextlib.suppress(BaseException):
                shard.close()

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

    def _update(self, what: str, operation: Any) -> None:
        self._call(what, self._need().update, operation)

    def upsert(self, points: list[Point]) -> None:
        import qdrant_edge as qe

        if points:
            try:
                operation = qe.UpdateOperation.upsert_points(
                    [qe.Point(p.id, list(p.vector), p.payload) for p in points]
                )
            except (TypeError, ValueError) as exc:  # a payload the engine cannot store (e.g. unencodable text)
                raise ValueError(f"cannot store these points: {str(exc).splitlines()[0]}") from None
            # Durable once applied: the shard's write-ahead log replays after a crash (flushed on close).
            self._update("upsert", operation)

    def existing(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        if not ids:
            return set()
        return {str(r.id) for r in self._call("retrieve", self._need().retrieve, ids, False, False)}

    def retrieve(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(ids)
        if not ids:
            return {}
        return {
            str(r.id): dict(r.payload or {}) for r in self._call("retrieve", self._need().retrieve, ids, True, False)
        }

    def _vectors(self, ids: list[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        records = self._call("retrieve", self._need().retrieve, ids, False, True)
        return {str(r.id): list(r.vector) if r.vector is not None else [] for r in records}

    def set_payload(self, point: str, values: Mapping[str, Any]) -> None:
        import qdrant_edge as qe

        self._update("set_payload", qe.UpdateOperation.set_payload([point], dict(values)))

    def delete_ids(self, ids: Iterable[str]) -> None:
        import qdrant_edge as qe

        ids = list(ids)
        if ids:
            self._update("delete", qe.UpdateOperation.delete_points(ids))

    def search(self, vector: list[float], *, limit: int, filters: Mapping[str, Any] | None = None) -> list[StoredHit]:
        import qdrant_edge as qe

        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(list(vector)),
            with_payload=True,
            filter=self._filter(filters),
            params=qe.SearchParams(hnsw_ef=max(self.hnsw_ef, limit)),
        )
        found = self._call("search", self._need().query, request)
        return [StoredHit(str(p.id), float(p.score), dict(p.payload or {})) for p in found]

    def count(self, filters: Mapping[str, Any] | None = None) -> int:
        import qdrant_edge as qe

        return int(self._call("count", self._need().count, qe.CountRequest(exact=True, filter=self._filter(filters))))

    def delete(self, filters: Mapping[str, Any]) -> int:
        import qdrant_edge as qe

        flt = self._filter(filters)
        if flt is None:
            raise ValueError("delete needs a filter (refusing to empty the whole collection)")
        n = self.count(filters)
        self._update("delete", qe.UpdateOperation.delete_points_by_filter(flt))
        return n

    def scroll(
        self, *, with_vectors: bool = True, page: int = SCROLL_PAGE, filters: Mapping[str, Any] | None = None
    ) -> Iterator[Point]:
        import qdrant_edge as qe

        flt = self._filter(filters)
        offset = None
        while True:
            request = qe.ScrollRequest(
                offset=offset, limit=page, with_payload=True, with_vector=with_vectors, filter=flt
            )
            records, offset = self._call("scroll", self._need().scroll, request)
            for r in records:
                yield Point(str(r.id), list(r.vector) if with_vectors and r.vector is not None else [], r.payload or {})
            if offset is None or not records:
                return

    def optimize(self) -> None:
        """Build the HNSW index now (otherwise the engine does it as segments grow)."""
        self._call("optimize", self._need().optimize)

    def verify(self, *, sample: int = VERIFY_SAMPLE) -> dict[str, Any]:
        self._need()
        try:
            return super().verify(sample=sample)
        except StoreError as exc:
            self._damaged = True
            if "is damaged" in str(exc):
                raise
            raise _damaged(self.folder, str(exc).removeprefix(f"{self.folder}: ")) from None

    def drop(self) -> None:
        """Delete the collection's folder (a damaged one too); refused while another process has it open."""
        import qdrant_edge as qe

        self._abandon()
        self.spec = None
        with _locked(self._lock_path):
            shard_path = self.folder / "shard"
            if shard_path.exists():
                try:  # the engine's lock tells whether another process has the shard open
                    probe = qe.EdgeShard.load(str(shard_path))
                except _FATAL:
                    raise
                except BaseException as exc:  # noqa: BLE001 - damaged: nothing to keep
                    if "WouldBlock" in str(exc):
                        raise StoreError(
                            f"cannot rebuild {self.folder}: another process has it open (stop it first)"
                        ) from None
                else:
                    with contextlib.suppress(BaseException):
                        probe.close()
            with contextlib.suppress(FileNotFoundError):
                self._meta_path.unlink()  # first: from here on the folder is not a collection
            if self.folder.exists():
                shutil.rmtree(self.folder)
        self._damaged = False

    def close(self) -> None:
        if self._shard is None:
            return
        if self._damaged:
            self._abandon()
            return
        import qdrant_edge as qe

        shard = self._shard
        try:
            shard.flush()
            points = int(shard.count(qe.CountRequest(exact=True)))
        except _FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001
            logger.warning("closing %s: %s", self.folder, exc)
            self._abandon()
            return
        self._shard = None
        try:
            shard.close()
        except _FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001
            logger.warning("closing %s: %s", self.folder, exc)
            return
        self._write_state({"clean": True, "points": points})


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
                stored = CollectionSpec.from_dict(meta, f"collection {self.collection!r} at {self._where}")
            except (KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, CollectionMismatchError):
                    raise
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
            metadata=spec.to_dict(),
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

    def retrieve(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        self._need()
        ids = list(ids)
        if not ids:
            return {}
        records = self._call(
            "retrieve", self.client.retrieve, self.collection, ids=ids, with_payload=True, with_vectors=False
        )
        return {str(r.id): dict(r.payload or {}) for r in records}

    def _vectors(self, ids: list[str]) -> dict[str, list[float]]:
        self._need()
        if not ids:
            return {}
        records = self._call(
            "retrieve", self.client.retrieve, self.collection, ids=ids, with_payload=False, with_vectors=True
        )
        return {str(r.id): list(r.vector) if isinstance(r.vector, list) else [] for r in records}

    def set_payload(self, point: str, values: Mapping[str, Any]) -> None:
        self._need()
        self._call("set_payload", self.client.set_payload, self.collection, payload=dict(values), points=[point])

    def delete_ids(self, ids: Iterable[str]) -> None:
        from qdrant_client import models

        self._need()
        ids = list(ids)
        if ids:
            self._call(
                "delete",
                self.client.delete,
                self.collection,
                points_selector=models.PointIdsList(points=ids),
                wait=True,
            )

    def drop(self) -> None:
        self.spec = None
        if self.exists():
            self._call("delete_collection", self.client.delete_collection, self.collection)

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

    def scroll(
        self, *, with_vectors: bool = True, page: int = SCROLL_PAGE, filters: Mapping[str, Any] | None = None
    ) -> Iterator[Point]:
        self._need()
        flt = self._filter(filters)
        offset = None
        while True:
            records, offset = self._call(
                "scroll",
                self.client.scroll,
                self.collection,
                scroll_filter=flt,
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
