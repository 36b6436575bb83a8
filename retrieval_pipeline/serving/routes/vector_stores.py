"""Documents over HTTP in the OpenAI shape: ``/v1/files`` and ``/v1/vector_stores`` (files, file batches, search),
so an app written against the ``openai`` SDK's ``client.files`` and ``client.vector_stores`` works unchanged.

A vector store is a collection (its ``name``; ``dimensions`` and ``layout`` are this server's extensions at
creation). Uploads are stored by content hash under ``serve --data-dir``; attaching a file queues it for the
background indexer (:mod:`..jobs`), whose status the SDK's ``*_and_poll`` helpers follow. A search is the two
stages: ``ranking_options.ranker: "none"`` skips the reranker, ``score_threshold`` is ``min_score``, attribute
filters (``eq``/``ne``/``gt``/``gte``/``lt``/``lte``/``in``/``nin``, ``and``/``or``) become payload filters on the
file's attributes. Roles: reading needs ``read``, uploading / attaching / deleting files ``write``, creating and
deleting stores ``admin``; a store outside the key is 404, like one that does not exist. A file is visible to the
key that uploaded it (and to keys on every collection with the admin role).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ..collections import need_role, not_found, principal
from ..error_handlers import HTTPError
from ..jobs import remove_points
from ..keys import Principal, Role
from ..schemas import ERRORS
from ..state import ServingState, State

router = APIRouter(tags=["vector stores"])

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_ATTRIBUTES = 16
MAX_BATCH_FILES = 2000
POLL_AFTER_MS = "500"  # the SDK's poll helpers wait this long between looks
_ATTRIBUTE_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")

AttributeValue = StrictStr | StrictBool | StrictInt | StrictFloat
Attributes = dict[str, AttributeValue]


class StaticChunking(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_chunk_size_tokens: int = Field(ge=100, le=4096)
    chunk_overlap_tokens: int = Field(ge=0)


class ChunkingStrategy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["auto", "static"]
    static: StaticChunking | None = None


class LayoutOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quantization: Literal["none", "int8", "binary"] | None = None
    prefix_dim: int | None = Field(default=None, ge=0)
    hybrid: bool | None = None
    on_disk: bool | None = None


class CreateStore(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(default=None, max_length=200)
    file_ids: list[str] | None = Field(default=None, max_length=500)
    metadata: dict[str, StrictStr] | None = None
    chunking_strategy: ChunkingStrategy | None = None
    expires_after: dict[str, Any] | None = None
    dimensions: int | None = Field(default=None, ge=32, description="this server's extension: Matryoshka dimension")
    layout: LayoutOptions | None = Field(default=None, description="this server's extension: the vector layout")


class UpdateStore(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    metadata: dict[str, StrictStr] | None = None
    expires_after: dict[str, Any] | None = None


class AttachFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    file_id: StrictStr
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None


class UpdateFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    attributes: Attributes | None


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    file_ids: list[StrictStr] | None = Field(default=None, max_length=MAX_BATCH_FILES)
    files: list[AttachFile] | None = Field(default=None, max_length=MAX_BATCH_FILES)
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None


class RankingOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ranker: str | None = None
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)


class SearchStore(BaseModel):
    model_config = ConfigDict(extra="ignore")
    query: StrictStr | list[StrictStr]
    filters: dict[str, Any] | None = None
    max_num_results: int = Field(default=10, ge=1, le=50)
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False


# ------------------------------------------------------------------------------------------------------------------
# helpers


def _registry(state: ServingState) -> Any:
    if state.registry is None:
        raise HTTPError(
            404, "documents over HTTP are off on this server (start it with serve --data-dir DIR)", "not_found_error"
        )
    return state.registry


def _file_visible(file: dict[str, Any], key: Principal) -> bool:
    return file["owner"] == key.name or (key.can(Role.ADMIN) and key.collections == ("*",))


def _file(state: ServingState, request: Request, file_id: str) -> dict[str, Any]:
    found = _registry(state).file(file_id)
    if found is None or not _file_visible(found, principal(request)):
        raise HTTPError(404, f"file {file_id[:100]!r} not found", "not_found_error", code="file_not_found")
    return found


def _store(state: ServingState, request: Request, store_id: str, role: Role = Role.READ) -> dict[str, Any]:
    """A vector store the caller's key may use (404 otherwise, as for one that does not exist)."""
    found = _registry(state).store(store_id)
    key = principal(request)
    if found is None or found["id"] != store_id or not key.may_use(found["name"]):
        raise not_found(store_id)
    if role > Role.READ:
        need_role(request, role, "change this vector store" if role is Role.WRITE else "create or delete stores")
    return found


def _chunking(strategy: ChunkingStrategy | None) -> dict[str, Any]:
    if strategy is None or strategy.type == "auto":
        return {"type": "auto"}
    if strategy.static is None:
        raise HTTPError(400, "chunking_strategy: type 'static' needs 'static'", param="chunking_strategy")
    static = strategy.static
    if static.chunk_overlap_tokens * 2 > static.max_chunk_size_tokens:
        raise HTTPError(400, "chunk_overlap_tokens may be at most half of max_chunk_size_tokens", param="chunking")
    return {"type": "static", "static": static.model_dump()}


def _attributes(values: dict[str, Any] | None) -> dict[str, Any]:
    values = dict(values or {})
    if len(values) > MAX_ATTRIBUTES:
        raise HTTPError(400, f"attributes: at most {MAX_ATTRIBUTES} keys", param="attributes")
    for key, value in values.items():
        if not _ATTRIBUTE_KEY.fullmatch(key):
            raise HTTPError(400, f"attributes: key {key[:80]!r} must be 1-64 letters, digits, _ or -", param=key)
        if isinstance(value, str) and len(value) > 512:
            raise HTTPError(400, f"attributes: the value of {key!r} is over 512 characters", param=key)
        if isinstance(value, float) and not math.isfinite(value):
            raise HTTPError(400, f"attributes: the value of {key!r} is not a finite number", param=key)
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise HTTPError(400, f"attributes: the value of {key!r} is outside the 64-bit range", param=key)
    return values


def attribute_filter(spec: Any, depth: int = 0) -> dict[str, Any]:
    """An OpenAI attribute filter as this store's payload filter (attributes live under ``metadata``)."""
    if depth > 8 or not isinstance(spec, dict):
        raise HTTPError(400, "filters: a comparison or compound filter object, nested at most 8 deep", param="filters")
    kind = spec.get("type")
    if kind in ("and", "or"):
        parts = spec.get("filters")
        if not isinstance(parts, list) or not parts:
            raise HTTPError(400, f"filters: {kind!r} needs a non-empty list 'filters'", param="filters")
        return {f"${kind}": [attribute_filter(p, depth + 1) for p in parts]}
    if kind not in ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"):
        raise HTTPError(400, f"filters: unknown type {kind!r}", param="filters")
    key, value = spec.get("key"), spec.get("value")
    if not isinstance(key, str) or not _ATTRIBUTE_KEY.fullmatch(key):
        raise HTTPError(400, f"filters: key {str(key)[:80]!r} is not an attribute name", param="filters")
    return {f"metadata.{key}": {kind: value}}


def _page(data: list[dict[str, Any]], limit: int, order: str, after: str | None, before: str | None) -> dict:
    """OpenAI's cursor list: ``order`` by creation, ``after`` / ``before`` an id, ``limit`` items."""
    items = data if order == "asc" else list(reversed(data))
    ids = [d["id"] for d in items]
    if after is not None and after in ids:
        items = items[ids.index(after) + 1 :]
    if before is not None and before in ids:
        items = items[: [d["id"] for d in items].index(before)]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


Limit = Annotated[int, Query(ge=1, le=100)]
Order = Annotated[Literal["asc", "desc"], Query()]
Status = Literal["in_progress", "completed", "failed", "cancelled"]


@dataclass
class FilesPage:
    """The query of a listing of a store's files (OpenAI's cursor parameters and its status ``filter``)."""

    limit: Limit = 20
    order: Order = "desc"
    after: str | None = None
    before: str | None = None
    filter: Status | None = None  # noqa: A003 - OpenAI's name

    def of(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return _page([store_file_object(r) for r in rows], self.limit, self.order, self.after, self.before)


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def store_object(registry: Any, row: dict[str, Any]) -> dict[str, Any]:
    counts = registry.counts(row["id"])
    return {
        "id": row["id"],
        "object": "vector_store",
        "created_at": row["created_at"],
        "name": row["name"],
        "usage_bytes": registry.usage(row["id"]),
        "file_counts": counts,
        "status": "in_progress" if counts["in_progress"] else "completed",
        "expires_after": None,
        "expires_at": None,
        "last_active_at": row["last_active_at"],
        "metadata": row["metadata"],
    }


def store_file_object(row: dict[str, Any]) -> dict[str, Any]:
    chunking = row["chunking"]
    if chunking.get("type") != "static":
        chunking = {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}
    return {
        "id": row["file_id"],
        "object": "vector_store.file",
        "usage_bytes": row["usage_bytes"],
        "created_at": row["created_at"],
        "vector_store_id": row["store_id"],
        "status": row["status"],
        "last_error": row["last_error"],
        "chunking_strategy": chunking,
        "attributes": row["attributes"],
    }


def batch_object(registry: Any, row: dict[str, Any]) -> dict[str, Any]:
    counts = registry.counts(row["store_id"], row["id"])
    status = "cancelled" if row["cancelled"] else ("in_progress" if counts["in_progress"] else "completed")
    if status == "completed" and counts["failed"] and not counts["completed"]:
        status = "failed"
    return {
        "id": row["id"],
        "object": "vector_store.files_batch",
        "created_at": row["created_at"],
        "vector_store_id": row["store_id"],
        "status": status,
        "file_counts": counts,
    }


def _polled(body: dict[str, Any]) -> Response:
    from fastapi.responses import JSONResponse

    return JSONResponse(body, headers={"openai-poll-after-ms": POLL_AFTER_MS})


# ------------------------------------------------------------------------------------------------------------------
# files


@router.post("/v1/files", responses=ERRORS)
async def upload_file(
    request: Request, state: State, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()] = "assistants"
) -> dict[str, Any]:
    registry = _registry(state)
    key = need_role(request, Role.WRITE, "upload files")
    if purpose not in PURPOSES:
        raise HTTPError(400, f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
    data = await file.read()
    if len(data) > state.config.max_upload_bytes:
        raise HTTPError(
            413, f"the file is over {state.config.max_upload_bytes} bytes (max_upload_bytes)", limit="max_upload_bytes"
        )
    if not data:
        raise HTTPError(400, "the file is empty", param="file")
    row = await state.store_call(registry.add_file, file.filename or "upload", data, purpose, key.name)
    return file_object(row)


@router.get("/v1/files", responses=ERRORS)
async def list_files(
    request: Request,
    state: State,
    purpose: str | None = None,
    limit: Limit = 100,
    order: Order = "desc",
    after: str | None = None,
) -> dict[str, Any]:
    key = principal(request)
    rows = [r for r in _registry(state).files() if _file_visible(r, key) and purpose in (None, r["purpose"])]
    return _page([file_object(r) for r in rows], limit, order, after, None)


@router.get("/v1/files/{file_id}", responses=ERRORS)
async def retrieve_file(file_id: str, request: Request, state: State) -> dict[str, Any]:
    return file_object(_file(state, request, file_id))


@router.get("/v1/files/{file_id}/content", responses=ERRORS)
async def file_content(file_id: str, request: Request, state: State) -> Response:
    row = _file(state, request, file_id)
    data = await state.store_call(_registry(state).blob_path(row).read_bytes)
    return Response(data, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", responses=ERRORS)
async def delete_file(file_id: str, request: Request, state: State) -> dict[str, Any]:
    """The file goes, and with it its points in every store it was in."""
    need_role(request, Role.WRITE, "delete files")
    row = _file(state, request, file_id)
    registry = _registry(state)
    for store_id in registry.stores_of_file(file_id):
        store = registry.store(store_id)
        if store is not None:
            await state.store_call(_detach, state, store, row)
    await state.store_call(registry.delete_file, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


def _detach(state: ServingState, store: dict[str, Any], file: dict[str, Any]) -> None:
    """Take a file out of a store: under the collection's writer lock (after a job indexing it now)."""
    registry = state.registry
    rag = state.collections.pipeline(store["name"])
    with state.collections.writer(store["name"]):
        remove_points(registry, rag, store["id"], file["id"], str(registry.blob_path(file)))
        registry.detach(store["id"], file["id"])


# ------------------------------------------------------------------------------------------------------------------
# vector stores


@router.post("/v1/vector_stores", responses=ERRORS)
async def create_store(body: CreateStore, request: Request, state: State) -> dict[str, Any]:
    registry = _registry(state)
    key = need_role(request, Role.ADMIN, "create vector stores")
    if state.pipeline is None:
        raise HTTPError(404, "this server has no embedding model loaded", "not_found_error")
    name = body.name
    if name is not None:
        from ...store.spec import _check_name

        try:
            _check_name(name)
        except ValueError as exc:
            raise HTTPError(400, f"name: {exc} (a vector store's name is its collection's)", param="name") from None
        if name.startswith("vs_"):
            raise HTTPError(400, "name: 'vs_' starts vector-store ids; choose another name", param="name")
        if not key.may_use(name):
            raise HTTPError(403, f"key {key.name!r} may not create a collection named {name!r}", "permission_error")
        exists = state.collections.pipeline(name).store.exists
        taken = registry.store(name) is not None or await state.store_call(exists)
        if taken:
            raise HTTPError(409, f"a collection named {name!r} exists already", "conflict_error", param="name")
    elif key.collections != ("*",):
        raise HTTPError(403, f"key {key.name!r}: name the vector store (a name its collections allow)", param="name")
    options: dict[str, Any] = {}
    if body.dimensions:
        options["dimensions"] = body.dimensions
    if body.layout is not None:
        options["layout"] = body.layout.model_dump(exclude_none=True)
    chunking = _chunking(body.chunking_strategy)
    files = [_file(state, request, f) for f in body.file_ids or []]
    if files:
        state.jobs.reserve(len(files))
    row = await state.store_call(registry.create_store, name, key.name, dict(body.metadata or {}), options)
    try:
        await state.store_call(_create_collection, state, row)
    except BaseException:
        await state.store_call(registry.delete_store, row["id"])  # no store without its collection
        state.collections.forget(row["name"])
        raise
    for file in files:
        await _attach(state, row, file, {}, chunking)
    return store_object(registry, row)


def _create_collection(state: ServingState, row: dict[str, Any]) -> None:
    """The store's collection, created now with its dimension and layout (so searches answer before any file)."""
    from ..jobs import _creation

    rag = state.collections.pipeline(row["name"], options=_creation(row["options"]))
    rag.indexer()._open()


@router.get("/v1/vector_stores", responses=ERRORS)
async def list_stores(
    request: Request,
    state: State,
    limit: Limit = 20,
    order: Order = "desc",
    after: str | None = None,
    before: str | None = None,
) -> dict[str, Any]:
    registry = _registry(state)
    key = principal(request)
    rows = [store_object(registry, r) for r in registry.stores() if key.may_use(r["name"])]
    return _page(rows, limit, order, after, before)


@router.get("/v1/vector_stores/{store_id}", responses=ERRORS)
async def retrieve_store(store_id: str, request: Request, state: State) -> dict[str, Any]:
    return store_object(state.registry, _store(state, request, store_id))


@router.post("/v1/vector_stores/{store_id}", responses=ERRORS)
async def update_store(store_id: str, body: UpdateStore, request: Request, state: State) -> dict[str, Any]:
    row = _store(state, request, store_id, Role.ADMIN)
    if body.name is not None and body.name != row["name"]:
        raise HTTPError(400, "a vector store's name is its collection's and cannot change", param="name")
    if body.metadata is not None:
        state.registry.update_store(store_id, metadata=dict(body.metadata))
    return store_object(state.registry, state.registry.store(store_id))


@router.delete("/v1/vector_stores/{store_id}", responses=ERRORS)
async def delete_store(store_id: str, request: Request, state: State) -> dict[str, Any]:
    """The store and its collection go (the uploaded files stay, as OpenAI's do)."""
    row = _store(state, request, store_id, Role.ADMIN)
    await state.store_call(_drop, state, row)
    return {"id": store_id, "object": "vector_store.deleted", "deleted": True}


def _drop(state: ServingState, row: dict[str, Any]) -> None:
    rag = state.collections.pipeline(row["name"])
    with state.collections.writer(row["name"]):
        state.registry.delete_store(row["id"])
        rag.store.drop()
        state.collections.forget(row["name"])


# a store's files ------------------------------------------------------------------------------------------------


async def _attach(
    state: ServingState,
    store: dict[str, Any],
    file: dict[str, Any],
    attributes: dict[str, Any],
    chunking: dict[str, Any],
    batch_id: str | None = None,
) -> dict[str, Any]:
    row, new = await state.store_call(
        state.registry.attach, store["id"], file["id"], attributes, chunking, batch_id
    )  # fmt: skip
    if new:
        state.jobs.submit(store["id"], file["id"])
    return row


@router.post("/v1/vector_stores/{store_id}/files", responses=ERRORS)
async def attach_file(store_id: str, body: AttachFile, request: Request, state: State) -> Response:
    store = _store(state, request, store_id, Role.WRITE)
    file = _file(state, request, body.file_id)
    state.jobs.reserve(1)
    row = await _attach(state, store, file, _attributes(body.attributes), _chunking(body.chunking_strategy))
    return _polled(store_file_object(row))


@router.get("/v1/vector_stores/{store_id}/files", responses=ERRORS)
async def list_store_files(
    store_id: str, request: Request, state: State, page: Annotated[FilesPage, Depends()]
) -> dict[str, Any]:
    _store(state, request, store_id)
    return page.of(state.registry.store_files(store_id, status=page.filter))


def _store_file(state: ServingState, store_id: str, file_id: str) -> dict[str, Any]:
    row = state.registry.store_file(store_id, file_id)
    if row is None:
        raise HTTPError(404, f"file {file_id[:100]!r} is not in this vector store", "not_found_error")
    return row


@router.get("/v1/vector_stores/{store_id}/files/{file_id}", responses=ERRORS)
async def retrieve_store_file(store_id: str, file_id: str, request: Request, state: State) -> Response:
    _store(state, request, store_id)
    return _polled(store_file_object(_store_file(state, store_id, file_id)))


@router.post("/v1/vector_stores/{store_id}/files/{file_id}", responses=ERRORS)
async def update_store_file(
    store_id: str, file_id: str, body: UpdateFile, request: Request, state: State
) -> dict[str, Any]:
    """New attributes for a file: its points' ``metadata`` are rewritten (under the collection's writer lock)."""
    store = _store(state, request, store_id, Role.WRITE)
    row = _store_file(state, store_id, file_id)
    file = _file(state, request, file_id)
    attributes = _attributes(body.attributes)
    await state.store_call(_set_attributes, state, store, file, attributes)
    row = _store_file(state, store_id, file_id)
    return store_file_object(row)


def _set_attributes(state: ServingState, store: dict[str, Any], file: dict[str, Any], attributes: dict) -> None:
    registry = state.registry
    rag = state.collections.pipeline(store["name"])
    with state.collections.writer(store["name"]):
        registry.set_attributes(store["id"], file["id"], attributes)
        if rag.store.exists():
            for point in rag.store.points_of_source(str(registry.blob_path(file))):
                rag.store.set_payload(point, {"metadata": attributes})


@router.delete("/v1/vector_stores/{store_id}/files/{file_id}", responses=ERRORS)
async def detach_file(store_id: str, file_id: str, request: Request, state: State) -> dict[str, Any]:
    """The file leaves the store and its points go (the uploaded file stays)."""
    store = _store(state, request, store_id, Role.WRITE)
    _store_file(state, store_id, file_id)
    file = state.registry.file(file_id)
    if file is not None:
        await state.store_call(_detach, state, store, file)
    else:
        state.registry.detach(store_id, file_id)
    return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}


@router.get("/v1/vector_stores/{store_id}/files/{file_id}/content", responses=ERRORS)
async def store_file_content(store_id: str, file_id: str, request: Request, state: State) -> dict[str, Any]:
    """The file's indexed text, chunk by chunk (page by page)."""
    store = _store(state, request, store_id)
    row = _store_file(state, store_id, file_id)
    if row["status"] != "completed":
        return {"object": "vector_store.file_content.page", "data": [], "has_more": False, "next_page": None}
    file = _file(state, request, file_id)
    rag = state.collections.pipeline(store["name"])
    points = await state.store_call(rag.store.points_of_source, str(state.registry.blob_path(file)))
    ordered = sorted(points.values(), key=lambda p: (p.get("page") or 0, p.get("chunk") or 0, p.get("segment") or 0))
    data = [{"type": "text", "text": p.get("text") or ""} for p in ordered]
    return {"object": "vector_store.file_content.page", "data": data, "has_more": False, "next_page": None}


# file batches ---------------------------------------------------------------------------------------------------


@router.post("/v1/vector_stores/{store_id}/file_batches", responses=ERRORS)
async def create_batch(store_id: str, body: CreateBatch, request: Request, state: State) -> Response:
    store = _store(state, request, store_id, Role.WRITE)
    if (body.file_ids is None) == (body.files is None):
        raise HTTPError(400, "give file_ids or files (one of them)", param="file_ids")
    chunking = _chunking(body.chunking_strategy)
    if body.files is not None:
        entries = [(f.file_id, _attributes(f.attributes), _chunking(f.chunking_strategy)) for f in body.files]
    else:
        common = _attributes(body.attributes)
        entries = [(f, common, chunking) for f in body.file_ids or []]
    if not entries:
        raise HTTPError(400, "the batch names no file", param="file_ids")
    files = [(_file(state, request, file_id), attrs, chunks) for file_id, attrs, chunks in entries]
    state.jobs.reserve(len(files))
    batch = await state.store_call(state.registry.create_batch, store_id)
    for file, attrs, chunks in files:
        await _attach(state, store, file, attrs, chunks, batch["id"])
    return _polled(batch_object(state.registry, batch))


def _batch(state: ServingState, store_id: str, batch_id: str) -> dict[str, Any]:
    found = state.registry.batch(store_id, batch_id)
    if found is None:
        raise HTTPError(404, f"file batch {batch_id[:100]!r} not found", "not_found_error")
    return found


@router.get("/v1/vector_stores/{store_id}/file_batches/{batch_id}", responses=ERRORS)
async def retrieve_batch(store_id: str, batch_id: str, request: Request, state: State) -> Response:
    _store(state, request, store_id)
    return _polled(batch_object(state.registry, _batch(state, store_id, batch_id)))


@router.post("/v1/vector_stores/{store_id}/file_batches/{batch_id}/cancel", responses=ERRORS)
async def cancel_batch(store_id: str, batch_id: str, request: Request, state: State) -> dict[str, Any]:
    """Files not indexed yet are cancelled (a file being indexed now finishes, then its points are removed)."""
    _store(state, request, store_id, Role.WRITE)
    _batch(state, store_id, batch_id)
    await state.store_call(state.registry.cancel_batch, store_id, batch_id)
    return batch_object(state.registry, _batch(state, store_id, batch_id))


@router.get("/v1/vector_stores/{store_id}/file_batches/{batch_id}/files", responses=ERRORS)
async def list_batch_files(
    store_id: str, batch_id: str, request: Request, state: State, page: Annotated[FilesPage, Depends()]
) -> dict[str, Any]:
    _store(state, request, store_id)
    _batch(state, store_id, batch_id)
    return page.of(state.registry.store_files(store_id, status=page.filter, batch_id=batch_id))


# search ---------------------------------------------------------------------------------------------------------


@router.post("/v1/vector_stores/{store_id}/search", responses=ERRORS)
async def search_store(store_id: str, body: SearchStore, request: Request, state: State) -> dict[str, Any]:
    """The two stages over the store's completed files."""
    store = _store(state, request, store_id)
    rag = state.collections.for_request(request, store["name"])
    text = body.query if isinstance(body.query, str) else " ".join(body.query)
    if not text.strip():
        raise HTTPError(400, "query is empty", param="query")
    flt = attribute_filter(body.filters) if body.filters else None
    hidden = state.collections.hidden(rag)
    parts = [f for f in (flt, hidden) if f]
    filters = {"$and": parts} if len(parts) > 1 else (parts[0] if parts else None)
    ranking = body.ranking_options or RankingOptions()
    prepared = await state.preparer.query(text)
    hits = await state.store_call(
        rag.search,
        prepared,
        top_k=body.max_num_results,
        filters=filters,
        rerank=ranking.ranker != "none",
        min_score=ranking.score_threshold,
    )
    await state.store_call(state.registry.touch_store, store["id"])
    files = await state.store_call(state.registry.completed_files, store["id"], sorted({h.source for h in hits}))
    data = []
    for hit in hits:
        file = files.get(hit.source)
        if file is None:  # a point of another source (the collection also indexed by hand): named by its name
            continue
        content = hit.text or hit.describe()
        data.append(
            {
                "file_id": file["id"],
                "filename": file["filename"],
                "score": hit.score,
                "attributes": hit.record.metadata or {},
                "content": [{"type": "text", "text": content}],
            }
        )
    return {
        "object": "vector_store.search_results.page",
        "search_query": body.query if isinstance(body.query, list) else [body.query],
        "data": data,
        "has_more": False,
        "next_page": None,
    }


__all__ = ["attribute_filter", "router"]
