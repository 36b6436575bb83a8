"""Result caches for repeated searches: query embeddings and rerank scores, bounded in bytes, least recently used
out first (:class:`BytesLRU`, :class:`RetrievalCaches`), and the keys that make a cached result the fresh one.

A query's key is what the model sees: its content (:func:`content_key`: the text, the pixels of a PIL image, the
bytes of an image or video file or of a data URI, every field of a multimodal dict), the model
(:func:`identity_of`: what the checkpoint is, how it runs and with which settings), the instruction and the
Matryoshka dimension. A rerank score's key adds the stored point (its id derives from its content). A query whose
content cannot be named this way (a media URL, whose bytes may change; an unknown type; a file too large to hash)
is simply not cached. Never loads torch."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from PIL import Image

from .fingerprint import model_fingerprint

logger = logging.getLogger(__name__)

MB = 1024 * 1024
DEFAULT_QUERY_CACHE_BYTES = 64 * MB  # ~8k query vectors of 2048 floats
DEFAULT_RERANK_CACHE_BYTES = 16 * MB  # ~50k (query, document) scores
# A local media file of a query is named by its content up to this size; a larger one is not cached.
MAX_HASHED_FILE_BYTES = 256 * MB
_CHUNK = 4 * MB
# What one entry costs besides its value and key: the dict slot, the tuple, the objects (measured, rounded up).
ENTRY_OVERHEAD = 160
SCALAR_BYTES = 32  # a float, an int, None
ARRAY_OVERHEAD = 112  # a numpy array's object, besides its data


def sizeof(value: Any) -> int:
    """Bytes ``value`` holds, as the caches count them: a numpy array its data, a scalar a fixed small size, a
    string or bytes its length, a tuple its items."""
    if value is None or isinstance(value, (bool, int, float)):
        return SCALAR_BYTES
    if isinstance(value, (str, bytes, bytearray)):
        return 49 + len(value)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return ARRAY_OVERHEAD + nbytes
    if isinstance(value, (tuple, list, frozenset)):
        return 56 + 8 * len(value) + sum(sizeof(v) for v in value)
    return sys.getsizeof(value)


class BytesLRU:
    """A thread-safe mapping bounded in bytes (values and keys, :func:`sizeof`): the least recently used entries
    are evicted to make room; an entry larger than the bound is not stored. ``max_bytes`` 0 switches it off (every
    lookup misses at the cost of one check, nothing is stored or counted)."""

    def __init__(self, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value stored under ``key`` (now the most recently used), else ``default``."""
        if not self.max_bytes:
            return default
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return default
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: Any) -> bool:
        """Store ``value`` under ``key``, evicting the least recently used entries past the bound. False: not
        stored (off, or larger than the whole bound)."""
        if not self.max_bytes:
            return False
        size = ENTRY_OVERHEAD + sizeof(key) + sizeof(value)
        if size > self.max_bytes:
            logger.debug("not cached: an entry of %d bytes is over the bound of %d", size, self.max_bytes)
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            while self._entries and self.bytes + size > self.max_bytes:
                _, (_, freed) = self._entries.popitem(last=False)
                self.bytes -= freed
                self.evictions += 1
            self._entries[key] = (value, size)
            self.bytes += size
        return True

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def stats(self) -> dict[str, int]:
        """``hits``, ``misses``, ``evictions``, ``entries``, ``bytes`` and ``max_bytes``."""
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "entries": len(self._entries),
                "bytes": self.bytes,
                "max_bytes": self.max_bytes,
            }


@dataclass
class RetrievalCaches:
    """The caches of two-stage retrieval: ``query`` (query vectors, by model, instruction, dimension and content)
    and ``rerank`` (rerank scores, by query content, instruction, stored point and reranker). Shared by pipelines on
    several collections of one server: every key names the model, and a point id derives from its content."""

    query: BytesLRU = field(default_factory=lambda: BytesLRU(DEFAULT_QUERY_CACHE_BYTES))
    rerank: BytesLRU = field(default_factory=lambda: BytesLRU(DEFAULT_RERANK_CACHE_BYTES))

    @classmethod
    def sized(cls, query_bytes: int, rerank_bytes: int) -> RetrievalCaches:
        """Caches bounded at these sizes in bytes (0 switches one off)."""
        return cls(BytesLRU(query_bytes), BytesLRU(rerank_bytes))

    def stats(self) -> dict[str, dict[str, int]]:
        return {"query": self.query.stats(), "rerank": self.rerank.stats()}

    def clear(self) -> None:
        self.query.clear()
        self.rerank.clear()


# ------------------------------------------------------------------------------------------------------------------
# what a query is


class _Unnamed(Exception):
    """A query part that cannot be named by its content: the query is not cached."""


def content_key(query: Any) -> str | None:
    """A stable SHA-256 of what the model sees of ``query`` (any input the retriever takes: a text, a PIL image, a
    multimodal dict of texts, images and videos as paths, ``file://`` URLs, bytes, data URIs, PIL images or lists of
    frames, and its instruction, fps, max_frames, segment). Local files count by their bytes and resolved path.
    None when it cannot be named: a media URL, a file over :data:`MAX_HASHED_FILE_BYTES` or unreadable, an unknown
    type. Never raises."""
    digest = hashlib.sha256(b"qwen3vl-rag query v1\0")
    try:
        if isinstance(query, dict):
            digest.update(b"{")
            for name in sorted(query, key=str):
                _feed(digest, b"K", str(name).encode())
                _value(digest, query[name], media=name in ("image", "video"))
        else:
            _value(digest, query, media=False)
    except _Unnamed as exc:
        logger.debug("query not cached: %s", exc)
        return None
    except Exception as exc:  # noqa: BLE001 - an odd input is not cached; the model call reports it
        logger.debug("query not cached (%s: %s)", exc.__class__.__name__, exc)
        return None
    return digest.hexdigest()


def _feed(digest: Any, tag: bytes, data: bytes | memoryview) -> None:
    digest.update(tag + len(data).to_bytes(8, "little"))
    digest.update(data)


def _value(digest: Any, value: Any, *, media: bool) -> None:
    if value is None or isinstance(value, (bool, int, float)):
        _feed(digest, b"N", f"{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, (str, os.PathLike)) and media:
        _media_ref(digest, os.fspath(value))
    elif isinstance(value, str):
        _feed(digest, b"T", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _feed(digest, b"B", hashlib.sha256(value).digest())
    elif isinstance(value, Image.Image):
        _image(digest, value)
    elif isinstance(value, (list, tuple)):
        digest.update(b"[" + len(value).to_bytes(8, "little"))
        for item in value:
            _value(digest, item, media=media)
    else:
        raise _Unnamed(f"a {type(value).__name__} in the query")


def _image(digest: Any, image: Any) -> None:
    """A PIL image by its pixels, mode, size and what else changes its decoding (palette, transparency, EXIF
    orientation)."""
    extras = [image.mode, image.size, image.info.get("transparency")]
    if image.mode in ("P", "PA"):
        extras.append(image.getpalette())
    exif = image.getexif() if hasattr(image, "getexif") else {}
    extras.append(exif.get(0x0112))  # orientation: applied before the model sees it
    _feed(digest, b"I", repr(extras).encode())
    _feed(digest, b"P", hashlib.sha256(image.tobytes()).digest())


def _media_ref(digest: Any, text: str) -> None:
    if text.startswith(("http://", "https://")):
        raise _Unnamed("a media URL (its content may change)")
    if text.startswith("data:"):
        _feed(digest, b"D", hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
        return
    if text.startswith("file://"):
        text = unquote(urlparse(text).path)
    path = os.path.realpath(os.path.expanduser(text))
    _feed(digest, b"F", path.encode("utf-8", "surrogatepass"))
    _feed(digest, b"C", file_digest(path))


def file_digest(path: str, limit: int = MAX_HASHED_FILE_BYTES) -> bytes:
    """SHA-256 of a file's bytes, read in chunks; a file over ``limit`` bytes (or unreadable) is not named."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise _Unnamed(f"a file of {size} bytes (over {limit} hashed)")
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise _Unnamed(f"an unreadable file ({exc.__class__.__name__})") from None
    return digest.digest()


def file_stamp(path: str) -> str:
    """A local file's size, modification time and inode ("" when it is not a local file): a stored item read from
    a file that changed since it was scored keys a new score."""
    if not path or path.startswith(("http://", "https://", "data:")):
        return ""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


# ------------------------------------------------------------------------------------------------------------------
# what a model is


@dataclass(frozen=True)
class ModelIdentity:
    """What a loaded model is, known without calling it: its name as loaded (``model_name_or_path``), the
    ``model_id`` a collection compares, the ``fingerprint`` that keys its cached results (the checkpoint's
    :func:`~retrieval_pipeline.fingerprint.model_fingerprint`, dtype, device and settings) and its ``media``
    settings (the rerank budget reads them)."""

    model_name_or_path: str
    model_id: str | None
    fingerprint: str
    media: Any = None


# per model object: what its checkpoint and settings are (the slow part: a local folder is hashed once)
_KNOWN: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_KNOWN_LOCK = threading.Lock()
_RUNTIME_SETTINGS = ("device", "torch_dtype", "dtype")  # in the fingerprint as resolved, not as asked


def identity_of(model: Any) -> ModelIdentity | None:
    """The :class:`ModelIdentity` of a loaded model (or of a remote one: its server's fingerprint); None when it
    does not say what it is (no ``model_name_or_path``)."""
    name = getattr(model, "model_name_or_path", None)
    if name is None:
        return None
    model_id = getattr(model, "model_id", None)
    try:
        with _KNOWN_LOCK:
            base = _KNOWN.get(model)
    except TypeError:  # not weakly referenceable: computed each time
        base = None
    if base is None:
        base = _checkpoint_and_settings(model, str(name), model_id)
        try:
            with _KNOWN_LOCK:
                _KNOWN[model] = base
        except TypeError:
            pass
    # how it runs now (a staged pipeline moves it; its settings are attributes): read at every call
    device = getattr(model, "device", None)
    media = getattr(model, "media", None)
    runtime = (
        getattr(device, "type", device),
        str(getattr(model, "dtype", None)),
        media,
        getattr(model, "max_length", None),
        getattr(model, "default_instruction", None),
    )
    fingerprint = hashlib.sha256(f"{base}|{runtime!r}".encode()).hexdigest()[:32]
    return ModelIdentity(str(name), model_id, fingerprint, media)


def _checkpoint_and_settings(model: Any, name: str, model_id: str | None) -> str:
    init = dict(getattr(model, "init_kwargs", None) or {})
    checkpoint = model_id or model_fingerprint(name, init.get("revision"))
    settings = sorted((k, repr(v)) for k, v in init.items() if k not in _RUNTIME_SETTINGS)
    return f"{type(model).__name__}|{checkpoint}|{settings!r}"


class LazyModel:
    """A function giving a model when its stage starts (``lazy()``), that remembers what the model it gave is
    (:attr:`identity`, set by a caching retriever): a cached result then needs no model, not even a reload."""

    def __init__(self, get: Any) -> None:
        self._get = get
        self.identity: ModelIdentity | None = None

    def __call__(self) -> Any:
        return self._get()
