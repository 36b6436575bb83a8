"""The collections one server answers for: the one it was started on, the vector stores created over HTTP, and any
other collection of the same database a key may use. Each has its own pipeline sharing the loaded models (and the
caches: their keys hold the model and the content), opened on first use.

Every route names its collection through :meth:`Collections.for_request`, which applies the caller's key: a
collection outside the key's globs is answered exactly as one that does not exist (404), so a key cannot learn
which names exist elsewhere. A vector-store id (``vs_...``) names its collection wherever a collection is named.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Mapping
from typing import Any

from fastapi import Request

from ..store.spec import _check_name
from .error_handlers import HTTPError
from .keys import ANONYMOUS, Principal, Role

logger = logging.getLogger(__name__)


def not_found(name: str) -> HTTPError:
    """The one answer for a collection that does not exist and for one the key may not use."""
    return HTTPError(404, f"collection {name[:100]!r} not found", "not_found_error", code="collection_not_found")


def principal(request: Request) -> Principal:
    return getattr(request.state, "principal", ANONYMOUS)


def need_role(request: Request, role: Role, what: str) -> Principal:
    """The caller, when its key has ``role``; else 403 saying what it may not do."""
    key = principal(request)
    if not key.can(role):
        raise HTTPError(
            403, f"key {key.name!r} ({key.role.name.lower()}) may not {what}: needs {role.name.lower()}",
            "permission_error",
        )  # fmt: skip
    return key


class Collections:
    """Pipelines per collection name over the served one's models and store backend."""

    def __init__(self, default: Any, registry: Any = None) -> None:
        self.default = default
        self.registry = registry
        self._pipelines: dict[str, Any] = {}
        self._writers: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        if default is not None:
            self._pipelines[default.store.collection] = default

    @property
    def default_name(self) -> str | None:
        return self.default.store.collection if self.default is not None else None

    def resolve(self, name: str | None) -> str:
        """A collection's name from a name or a vector-store id (None: the served collection)."""
        if name is None:
            if self.default_name is None:
                raise HTTPError(404, "this server has no collection loaded", "not_found_error")
            return self.default_name
        if self.registry is not None and name.startswith("vs_"):
            found = self.registry.store(name)
            if found is not None:
                return str(found["name"])
        return name

    def writer(self, name: str) -> threading.Lock:
        """The lock a collection's one writer holds (indexing a file, removing one, dropping the collection)."""
        with self._lock:
            return self._writers.setdefault(name, threading.Lock())

    def pipeline(self, name: str, *, options: Mapping[str, Any] | None = None, create: bool = True) -> Any:
        """The pipeline on collection ``name`` (sharing the served pipeline's models); ``options``: a new
        collection's ``dim`` / ``layout``. ``create=False``: only a collection that exists (else 404; nothing is
        kept for a name that does not exist, so asking for many names costs no memory)."""
        with self._lock:
            found = self._pipelines.get(name)
            if found is not None:
                if options and found is not self.default:  # a new collection's dimension and layout
                    found.dim = options.get("dim") or found.dim
                    found.layout = options.get("layout") or found.layout
                return found
            if self.default is None:
                raise HTTPError(404, "this server has no embedding model loaded", "not_found_error")
            try:
                _check_name(name)
            except ValueError:
                raise not_found(name) from None
            store = self.default.store.sibling(name)
            if not create and not store.exists():
                store.close()
                raise not_found(name)
            rag = copy.copy(self.default)  # the same models, settings and caches
            rag.store = store
            rag.timings = []
            rag._owned = set()
            if options:
                rag.dim = options.get("dim") or rag.dim
                rag.layout = options.get("layout") or rag.layout
            self._pipelines[name] = rag
            return rag

    def forget(self, name: str) -> None:
        with self._lock:
            rag = self._pipelines.pop(name, None)
        if rag is not None and rag is not self.default:
            rag.store.close()

    def for_request(self, request: Request, name: str | None, role: Role = Role.READ) -> Any:
        """The pipeline of the collection a request names, when the caller's key may use it (404 otherwise, the
        same as for a collection that does not exist)."""
        key = principal(request)
        resolved = self.resolve(name)
        if not key.may_use(resolved):
            if name is None:  # the served collection, which this key may not use: not named to it either
                raise HTTPError(
                    404, "no collection named: give one this key may use (collection)", "not_found_error",
                    code="collection_not_found",
                )  # fmt: skip
            raise not_found(name)
        rag = self.pipeline(resolved, create=False)
        if rag is not self.default and not rag.store.exists():  # dropped since
            raise not_found(name or resolved)
        if role > Role.READ:
            need_role(request, role, "change this collection")
        return rag

    def hidden(self, rag: Any) -> dict[str, Any] | None:
        """The filter that keeps the points of files still being indexed out of searches of ``rag``'s collection."""
        if self.registry is None:
            return None
        found = self.registry.store(rag.store.collection)
        if found is None:
            return None
        blobs = self.registry.pending_blobs(found["id"])
        return {"$not": {"source": blobs}} if blobs else None

    def close(self) -> None:
        with self._lock:
            others = [rag for rag in self._pipelines.values() if rag is not self.default]
            self._pipelines = {} if self.default is None else {self.default.store.collection: self.default}
        for rag in others:
            try:
                rag.store.close()
            except Exception:  # noqa: BLE001 - closing at shutdown: log and go on
                logger.exception("closing collection %s", rag.store.collection)
