"""What a search found, for a page to show: ``GET /v1/items/{id}``, its ``/thumbnail`` and its ``/media``.

Only items in the collection, by point id: the file read is the one the stored point names, never a path from the
request. A thumbnail is a JPEG for every visual modality (the image; the rendered PDF page; a video segment's poster
frame at its start); ``/media`` is the item at full size (the image file, the page rendered as PNG, the video file
with HTTP Range support for seeking). A source that can no longer be read (moved, deleted, a URL: the server fetches
nothing for a page) answers a placeholder image with ``X-Placeholder`` saying why, so a result grid never breaks.
The same bearer token as every other endpoint guards them."""

from __future__ import annotations

import mimetypes
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response

from ...errors import CollectionNotFoundError, InputError
from ...media import previews
from ..error_handlers import error_response
from ..schemas import ERRORS
from ..state import State, public_source

router = APIRouter(tags=["items"])

THUMBNAIL_SIDE = 320
MAX_THUMBNAIL_SIDE = 1024
PLACEHOLDER_HEADER = "X-Placeholder"


def _point_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InputError(f"{value[:80]!r} is not a point id (a UUID)", field="id") from None


def _payload(rag: Any, point: str) -> dict[str, Any]:
    found = rag.store.retrieve([_point_id(point)])
    if not found:
        raise CollectionNotFoundError(f"no item {point!r} in collection {rag.store.collection!r}")
    return next(iter(found.values()))


def _local_source(payload: dict[str, Any]) -> tuple[str | None, str | None]:
    """The readable local file the point names, or (None, why not)."""
    source = str(payload.get("source") or "")
    if not source:
        return None, "the item has no source file"
    if "://" in source:
        return None, "the source is a URL (the server fetches nothing for a page)"
    if not os.path.isfile(source) or not os.access(source, os.R_OK):
        return None, "the source file can no longer be read"
    real = os.path.realpath(source)
    folder = os.path.realpath(os.path.dirname(os.path.abspath(source)))
    if not real.startswith(folder + os.sep):  # a link swapped in since indexing, pointing out of the folder
        return None, "the source is now a link out of its folder"
    if not _still_indexed(real, payload):  # a file or a parent folder swapped since indexing (links anywhere)
        return None, "the source file changed since it was indexed"
    return real, None


# Files checked against their points' content hash, by (path, size, modification time): each version read once.
_CHECKED: dict[tuple[str, int, int], str] = {}
_CHECKED_LOCK = threading.Lock()
CHECKED_ENTRIES = 4096


def _still_indexed(path: str, payload: dict[str, Any]) -> bool:
    """The file at ``path`` holds what the point was made from (its ``content_hash``; points without one pass)."""
    from ...ingest import file_digest, indexed_file_hash

    expected = payload.get("content_hash")
    if not expected or payload.get("modality") not in ("image", "pdf-page", "video"):
        return True
    member = payload.get("member")
    if member:  # the item is inside the file: its own bytes were hashed (extracted once per file version)
        from ...media.containers import extracted

        path = str(extracted(path, str(member)))
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _CHECKED_LOCK:
        digest = _CHECKED.get(key)
    if digest is None:
        digest = file_digest(Path(path))
        with _CHECKED_LOCK:
            if len(_CHECKED) >= CHECKED_ENTRIES:
                _CHECKED.clear()
            _CHECKED[key] = digest
    return indexed_file_hash(payload, digest) == expected


def _reason(exc: BaseException, local: str) -> str:
    """Why a source cannot be shown, without the server's paths (the API shows sources relative, or by name)."""
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    name = os.path.basename(local)
    for path in sorted({local, os.path.realpath(local), os.path.dirname(local)}, key=len, reverse=True):
        if path:
            text = text.replace(path, name if path != os.path.dirname(local) else ".")
    return f"the source cannot be decoded: {text[:160]}"


def _highlights(payload: dict[str, Any], local: str | None, q: str) -> list[dict[str, Any]] | None:
    """Where the words of ``q`` are on a page item (None for other items; empty without a text layer)."""
    from ...media.documents import document_pdf, page_highlights, query_terms

    if payload.get("modality") != "pdf-page" or not payload.get("page"):
        return None
    terms = query_terms(q)
    if local is None or not terms or not payload.get("text"):
        return []
    try:
        return page_highlights(document_pdf(local, payload.get("member") or None), int(payload["page"]), terms)
    except (InputError, OSError, ValueError, RuntimeError):
        return []


CollectionParam = Query(
    default=None, max_length=255, description="the item's collection: a name or a vector-store id (default: served)"
)


@router.get("/v1/items/{point}", responses=ERRORS)
async def item(
    point: str,
    state: State,
    request: Request,
    q: str | None = Query(default=None, max_length=2000, description="A query: its words' boxes on a page item"),
    collection: str | None = CollectionParam,
) -> dict[str, Any]:
    rag = state.collections.for_request(request, collection)
    payload = await state.store_call(_payload, rag, point)
    local, why = await state.store_call(_local_source, payload)
    keys = ("modality", "member", "page", "sheet", "segment", "chunk", "duration", "file_name", "metadata")
    data = {k: payload.get(k) for k in keys}
    if q:
        data["highlights"] = await state.store_call(_highlights, payload, local, q)
    data.update(
        id=_point_id(point),
        source=public_source(payload.get("source"), state),
        text=str(payload.get("text") or ""),
        readable=local is not None,
        unreadable_reason=why,
        thumbnail=f"/v1/items/{_point_id(point)}/thumbnail",
        media=f"/v1/items/{_point_id(point)}/media",
    )
    return data


class _EncodedCache:
    """Encoded media by (file, size, modification time, page), within a byte budget (oldest out first): a viewer
    asking for the same large image again costs nothing."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self.items: dict[tuple, tuple[bytes, str]] = {}
        self.lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bytes, str] | None:
        with self.lock:
            return self.items.get(key)

    def put(self, key: tuple, value: tuple[bytes, str]) -> None:
        size = len(value[0])
        if size > self.budget:
            return
        with self.lock:
            while self.items and self.used + size > self.budget:
                oldest = next(iter(self.items))
                self.used -= len(self.items.pop(oldest)[0])
            self.items[key] = value
            self.used += size


def _visual(payload: dict[str, Any], path: str, *, full: bool) -> Any:
    segment = payload.get("segment") or [0.0, 0.0]
    page = int(payload.get("page") or 1)
    member = str(payload.get("member") or "") or None
    return previews.visual(payload.get("modality"), path, page=page, start=float(segment[0]), full=full, member=member)


def _thumbnail(payload: dict[str, Any], side: int) -> tuple[bytes, str | None]:
    local, why = _local_source(payload)
    modality = str(payload.get("modality") or "item")
    if local is None:
        return previews.placeholder(side, modality), why
    try:
        image = _visual(payload, local, full=False)
    except (InputError, OSError, ValueError, RuntimeError) as exc:
        return previews.placeholder(side, modality), _reason(exc, local)
    if image is None:
        return previews.placeholder(side, modality), "text items have no picture: show their text"
    return previews.jpeg(image, side), None


@router.get("/v1/items/{point}/thumbnail", responses=ERRORS)
async def thumbnail(
    point: str,
    state: State,
    request: Request,
    size: int = Query(default=THUMBNAIL_SIDE, ge=16, le=MAX_THUMBNAIL_SIDE),
    collection: str | None = CollectionParam,
) -> Response:
    rag = state.collections.for_request(request, collection)
    payload = await state.store_call(_payload, rag, point)
    data, why = await state.store_call(_thumbnail, payload, size)
    headers = {"Cache-Control": "private, max-age=300"}
    if why:
        headers[PLACEHOLDER_HEADER] = _header(why)
    return Response(data, media_type="image/jpeg", headers=headers)


def _header(text: str | None) -> str:
    """A header value: ASCII, no control characters, no surrounding blanks (HTTP refuses them)."""
    text = (text or "unavailable").encode("ascii", "replace").decode("ascii")
    return " ".join("".join(c if 32 <= ord(c) < 127 else " " for c in text).split()) or "unavailable"


def _placeholder_response(modality: str, why: str | None) -> Response:
    headers = {PLACEHOLDER_HEADER: _header(why)}
    return Response(previews.placeholder(MAX_THUMBNAIL_SIDE, modality), media_type="image/jpeg", headers=headers)


# What /media shows of an image or page: at most this many pixels (a 9400x9400 photo took +676 MiB and 4 s per GET
# at full size), encoded once per file version into a cache of at most MEDIA_CACHE_BYTES.
MEDIA_CACHE_BYTES = 64 * 1024 * 1024
_ENCODED = _EncodedCache(MEDIA_CACHE_BYTES)


def _encoded_media(payload: dict[str, Any], local: str) -> tuple[bytes, str]:
    st = os.stat(local)
    member = str(payload.get("member") or "")
    key = (local, st.st_size, st.st_mtime_ns, payload.get("modality"), payload.get("page"), member)
    cached = _ENCODED.get(key)
    if cached is not None:
        return cached
    image = _visual(payload, local, full=True)
    if payload.get("modality") == "image" and (member or local).lower().endswith((".jpg", ".jpeg")):
        value = (previews.jpeg(previews.bounded(image), 1 << 15), "image/jpeg")
    else:
        value = (previews.png(image), "image/png")
    _ENCODED.put(key, value)
    return value


def _range_refusal(header: str | None, size: int) -> Response | None:
    """A Range header FileResponse would refuse, refused here in the API's error shape (it answers plain text):
    400 for a malformed one, 416 (with ``Content-Range: bytes */size``) for one past the end. Parsed by
    Starlette's own parser, so both agree on what is valid."""
    from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

    if not header:
        return None
    try:
        FileResponse._parse_range_header(header, size)
    except MalformedRangeHeader as exc:
        return error_response(400, f"invalid Range header: {exc.content or 'malformed'}", param="Range")
    except RangeNotSatisfiable:
        response = error_response(416, f"the Range starts past the end of the file ({size} bytes)", param="Range")
        response.headers["Content-Range"] = f"bytes */{size}"
        return response
    return None


@router.get("/v1/items/{point}/media", responses=ERRORS)
async def media(point: str, state: State, request: Request, collection: str | None = CollectionParam) -> Response:
    rag = state.collections.for_request(request, collection)
    payload = await state.store_call(_payload, rag, point)
    local, why = await state.store_call(_local_source, payload)  # may hash the file: off the event loop
    modality = str(payload.get("modality") or "item")
    if local is None:
        return _placeholder_response(modality, why)
    if modality == "video":
        from ...media.containers import extracted
        from ...media.video import probe

        try:  # still a video within the limits (not a file swapped in since indexing)
            if payload.get("member"):  # a video inside a mail or an archive: served from its extracted copy
                local = str(await state.store_call(extracted, local, str(payload["member"])))
            await state.store_call(probe, local)
        except (InputError, OSError, ValueError, RuntimeError) as exc:
            return _placeholder_response(modality, _reason(exc, local))
        kind = mimetypes.guess_type(local)[0] or "video/mp4"
        refusal = _range_refusal(request.headers.get("range"), os.path.getsize(local))
        if refusal is not None:
            return refusal
        # FileResponse answers Range requests (206, Accept-Ranges): a player seeks to the segment
        return FileResponse(local, media_type=kind, filename=None, content_disposition_type="inline")
    if modality in ("image", "pdf-page"):  # decoded (bomb-checked) and encoded again: only ever an image
        try:
            data, kind = await state.store_call(_encoded_media, payload, local)
        except (InputError, OSError, ValueError, RuntimeError) as exc:
            return _placeholder_response(modality, _reason(exc, local))
        return Response(data, media_type=kind, headers={"Cache-Control": "private, max-age=300"})
    text = str(payload.get("text") or "")
    return Response(text, media_type="text/plain; charset=utf-8", headers={"X-Content-Type-Options": "nosniff"})
