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

The package: ``spec`` (what a collection means, point ids), ``filters``, ``base`` (the interface and the shared
algorithm), ``edge`` and ``server`` (the backends), and this front door (:func:`open_store`). The model fingerprint
is :mod:`retrieval_pipeline.fingerprint`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import CollectionMismatchError, CollectionNotFoundError, StoreError
from ..fingerprint import legacy_fingerprint, model_fingerprint
from ..layout import SearchOptions, VectorLayout
from ..records import FILE_FIELDS, file_fields, sources_of, sources_update
from .base import REBUILD_SUFFIX, VectorStore
from .edge import EdgeStore
from .server import ServerStore
from .spec import FORMAT, POINT_NAMESPACE, SCROLL_PAGE, CollectionSpec, Point, StoreAddress, StoredHit, point_id

__all__ = [  # the errors and the payload helpers are re-exported: ``from retrieval_pipeline.store import ...``
    "FILE_FIELDS",
    "FORMAT",
    "POINT_NAMESPACE",
    "REBUILD_SUFFIX",
    "SCROLL_PAGE",
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "CollectionSpec",
    "EdgeStore",
    "Point",
    "SearchOptions",
    "ServerStore",
    "StoreAddress",
    "StoreError",
    "StoredHit",
    "VectorLayout",
    "VectorStore",
    "default_db",
    "file_fields",
    "legacy_fingerprint",
    "model_fingerprint",
    "open_store",
    "point_id",
    "sources_of",
    "sources_update",
]


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
