"""The stored payload's schema: what one point in the collection says about the item it stands for.

:class:`Record` is the one typed view of a point's payload. Ingestion builds records and stores
:meth:`Record.to_payload`; everything that reads a point back (retriever hits, the generator's prompt, the command
line, the adapters) goes through :meth:`Record.from_payload` and then :meth:`Record.to_input` (the model input the
point stands for), :meth:`Record.describe` (one line naming it) or :meth:`Record.context` (what a generator sees).
Adding a modality means teaching this module its input and description.

Payload layout (every key optional except ``modality``; older payloads without ``sources`` / ``files`` read fine):

* ``modality``: ``text`` | ``image`` | ``video`` | ``pdf-page`` | ``mixed``
* ``source``: the primary file path / URL; ``sources``: every file that holds this content (``source`` first);
  ``files``: per source, its :data:`FILE_FIELDS` (the primary source's are also at the top level)
* ``text``: the text (a chunk, a PDF page's extracted text; empty for images and videos)
* ``file_name``, ``metadata`` (the user's), ``chunk`` + ``span`` (text), ``page`` (PDF, 1-based), ``segment``
  ([start, end] seconds) + ``duration`` (video), ``item`` (a ``mixed`` item as given), ``content_hash``
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import InputError

MODALITIES = ("text", "image", "video", "pdf-page", "mixed")
# Payload fields that describe a point's place in one file (which file, where in it, the user's metadata for it).
# A point whose content several files hold keeps them per source under ``files``; the primary source's (the first
# of ``sources``) are also at the top level, where filters and readers look.
FILE_FIELDS = ("file_name", "metadata", "chunk", "span", "page", "segment")
# The fields a search result shows besides its scores and text (the server's ``SearchHit`` mirrors them).
HIT_FIELDS = ("modality", "source", "page", "segment", "chunk", "metadata")
# What the stored text is called in a generator's prompt when the model input is not that text itself.
TEXT_LABELS = {"pdf-page": "Page text"}

# PDF pages are rendered at this resolution at most ...
PDF_DPI = 144
# ... and at most at the embedder's pixel budget (it downsizes every image to ``max_pixels`` anyway; rendering
# beyond that only costs memory): the scale is chosen from the page size read from the document before rendering.
PDF_MAX_PIXELS = 1800 * 32 * 32
# Hard caps on one rendered page, whatever ``max_pixels`` says: pixels (64 MiB as RGBA) and pixels per side.
PDF_RENDER_PIXELS_CAP = 4096 * 4096
# pdfium is not thread-safe (two renders at once corrupt its heap and kill the process): every use of it in this
# package, ingestion, reranking and the server's thumbnails alike, holds this lock.
PDFIUM_LOCK = threading.RLock()
PDF_RENDER_SIDE_CAP = 32768


@dataclass
class Record:
    """One stored point's payload, typed. Unknown payload keys are kept in ``extra`` and written back as they were."""

    modality: str
    source: str = ""
    text: str = ""
    file_name: str | None = None
    metadata: dict[str, Any] | None = None
    chunk: int | None = None
    span: list[int] | None = None
    page: int | None = None
    segment: list[float] | None = None
    duration: float | None = None
    item: Any = None
    sources: list[str] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    content_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------------------------
    # payload <-> record

    def to_payload(self) -> dict[str, Any]:
        """The dict stored with the point (keys that are unset are left out)."""
        payload: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None or (f.name in ("sources", "files") and not value):
                continue
            payload[f.name] = list(value) if isinstance(value, tuple) else value
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Record:
        """Read a stored payload; tolerates older layouts (no ``sources`` / ``files``) and keeps unknown keys."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in payload.items() if k in known}
        record = cls(**{**values, "modality": str(payload.get("modality") or "")})
        record.source = str(record.source or "")
        record.text = str(record.text or "")
        record.sources = sources_of(payload)
        record.files = {str(k): dict(v) for k, v in (payload.get("files") or {}).items() if isinstance(v, Mapping)}
        record.extra = {k: v for k, v in payload.items() if k not in known}
        return record

    def file_fields(self) -> dict[str, Any]:
        """This record's :data:`FILE_FIELDS` (its place in its primary file)."""
        return file_fields(self.to_payload())

    def hit_fields(self) -> dict[str, Any]:
        """The :data:`HIT_FIELDS` this record has (what a search result shows)."""
        payload = self.to_payload()
        return {k: payload[k] for k in HIT_FIELDS if k in payload}

    # ------------------------------------------------------------------------------------------------------------
    # what the point stands for

    def to_input(self) -> Any:
        """The model input this point stands for (what the reranker and the generator see): a text chunk, an
        image path, a rendered PDF page, a video (segment), or a mixed item as it was given."""
        if self.modality == "text":
            return {"text": self.text}
        if self.modality == "image":
            return {"image": self.source}
        if self.modality == "pdf-page":
            return {"image": render_pdf_page(self.source, int(self.page or 0))}
        if self.modality == "video":
            item: dict[str, Any] = {"video": self.source}
            if self.segment:
                item["video_start"], item["video_end"] = self.segment
            return item
        if self.modality == "mixed" and self.item is not None:
            return self.item
        raise ValueError(f"stored point has no usable item (modality {self.modality!r})")

    def describe(self, *, chunk: bool = True) -> str:
        """One line naming the item: its source and where in it (page, seconds, and the chunk unless ``chunk`` is
        False: a failure names the file, not the chunk)."""
        where = self.source
        if self.page is not None:
            where += f" (page {self.page})"
        if self.segment:
            a, b = self.segment
            where += f" ({a:g}-{b:g}s)"
        if chunk and self.chunk is not None:
            where += f" (chunk {self.chunk})"
        return where

    def context(self, item: Any = None) -> list[Any]:
        """What a generator is shown for this point: the model input (``item`` when already made), then the stored
        text when the input does not already hold it (a PDF page's extracted text)."""
        parts = [self.to_input() if item is None else item]
        if self.text and self.modality not in ("text", "mixed"):
            parts.append({"text": f"{TEXT_LABELS.get(self.modality, 'Text')}: {self.text}"})
        return parts


def item_for(payload: Mapping[str, Any]) -> Any:
    """The model input a stored point stands for: ``Record.from_payload(payload).to_input()``."""
    return Record.from_payload(payload).to_input()


# ----------------------------------------------------------------------------------------------------------------
# sources: which files hold a point's content


def file_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {k: payload[k] for k in FILE_FIELDS if k in payload}


def sources_of(payload: Mapping[str, Any]) -> list[str]:
    """Every source (file path / URL) that holds a point's content; older points only have ``source``."""
    sources = payload.get("sources")
    if isinstance(sources, list) and sources:
        return [str(s) for s in sources]
    source = payload.get("source")
    return [str(source)] if source else []


def sources_update(sources: list[str], files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The payload keys to set when a point's sources change: the list, the primary source and its file fields."""
    update: dict[str, Any] = {"sources": sources, "source": sources[0]}
    if files:  # points written before per-file fields existed have none
        update["files"] = dict(files)
        update.update(files.get(sources[0], {}))
    return update


# ----------------------------------------------------------------------------------------------------------------
# PDF pages: a ``pdf-page`` record's input is the page rendered again from its file


def pdf_render_scale(
    width_pt: float, height_pt: float, dpi: float = PDF_DPI, max_pixels: int = PDF_MAX_PIXELS, page: int = 0
) -> float:
    """The scale (pixels per PDF point) to render a page at: ``dpi`` at most, and at most about ``max_pixels``
    pixels (never above :data:`PDF_RENDER_PIXELS_CAP`, nor :data:`PDF_RENDER_SIDE_CAP` pixels on a side), from the
    page size the document declares -- a 1 KB PDF with a 14,400 pt page renders as small as any other page."""
    where = f"page {page}: " if page else ""
    if not (math.isfinite(width_pt) and math.isfinite(height_pt) and width_pt > 0 and height_pt > 0):
        raise InputError(f"{where}invalid page size {width_pt!r} x {height_pt!r} pt")
    budget = min(max_pixels, PDF_RENDER_PIXELS_CAP)
    scale = min(dpi / 72, math.sqrt(budget / (width_pt * height_pt)), PDF_RENDER_SIDE_CAP / max(width_pt, height_pt))
    if width_pt * scale < 1 or height_pt * scale < 1:
        raise InputError(f"{where}page of {width_pt:g} x {height_pt:g} pt is too elongated to render")
    return scale


def render_pdf_page(path: str | Path, page_number: int, dpi: int = PDF_DPI, *, max_pixels: int = PDF_MAX_PIXELS) -> Any:
    """One page (1-based) of the PDF at ``path`` as a PIL image, rendered at :func:`pdf_render_scale`. A file that
    pdfium cannot read is an :class:`InputError` (the reranker skips such a hit; a thumbnail gets a placeholder)."""
    import pypdfium2 as pdfium

    shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    with PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(str(path))
        except Exception as exc:  # PdfiumError: corrupt, truncated, encrypted
            raise InputError(f"unreadable PDF {shown}: {exc}") from None
        try:
            if not 1 <= page_number <= len(pdf):
                raise InputError(f"{shown} has no page {page_number}")
            return render_page(pdf, page_number - 1, dpi, max_pixels)[0]
        finally:
            pdf.close()


def render_page(pdf: Any, index: int, dpi: int, max_pixels: int, *, with_text: bool = False) -> tuple[Any, str]:
    """The one page renderer (indexing, previews, the reranker's page images): page ``index`` (0-based) of an
    open ``pypdfium2.PdfDocument`` at :func:`pdf_render_scale`, as an RGB PIL image, with the page's text when
    asked. The caller holds :data:`PDFIUM_LOCK`."""
    width_pt, height_pt = pdf.get_page_size(index)
    scale = pdf_render_scale(width_pt, height_pt, dpi, max_pixels, page=index + 1)
    page = pdf[index]
    try:
        image = page.render(scale=scale).to_pil().convert("RGB")
        text = ""
        if with_text:
            textpage = page.get_textpage()
            text = textpage.get_text_bounded().replace("\r\n", "\n").strip()
            textpage.close()
    finally:
        page.close()
    return image, text
